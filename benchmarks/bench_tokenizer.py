"""Tokenizer throughput: clipforge's fast path beside OpenAI's pure-Python algorithm and peers.

Two workloads of N texts (default 20,000): short synthetic captions, and a mixed-Unicode corpus
(scripts, emoji, entities, mojibake, control characters). Each implementation turns the whole list
into the [N, 77] LongTensor; captions/s = N / seconds (median over rounds, implementations
alternating so background load hits all alike). Every output is compared row by row with the
reference, a line-by-line port of OpenAI's tokenizer (clipforge.tokenizer.reference).

    python benchmarks/bench_tokenizer.py                        # OpenAI vocab via $CLIPFORGE_OPENAI_VOCAB
    python benchmarks/bench_tokenizer.py --vocab ../shared/reference/tokenizer/bpe_simple_vocab_16e6.txt.gz \
        --open-clip-file /tmp/open_clip/tokenizer.py            # open_clip's tokenizer.py, imported by path

Implementations: ours (cold caches: a fresh Tokenizer each round), ours (warm: same texts again),
the reference path, open_clip's SimpleTokenizer and OpenAI's clip.simple_tokenizer when importable,
and a Hugging Face `tokenizers` CLIP tokenizer (Rust, no ftfy: what transformers' CLIPTokenizerFast
runs) when transformers is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from clipforge.tokenizer import Tokenizer, resolve_openai_vocab  # noqa: E402
from clipforge.tokenizer.reference import ReferenceTokenizer  # noqa: E402
from clipforge.tokenizer.samples import mixed_unicode_texts, synthetic_captions  # noqa: E402

CONTEXT = 77
Impl = Callable[[list[str]], torch.Tensor]


def reference_impl(vocab: Path) -> Impl:
    ref = ReferenceTokenizer(vocab)

    def run(texts: list[str]) -> torch.Tensor:  # as open_clip's __call__: rows filled one by one
        out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
        for i, text in enumerate(texts):
            tokens = ref.tokens(text, CONTEXT)
            out[i, : len(tokens)] = torch.tensor(tokens)
        return out

    return run


def ours_cold(vocab: Path) -> Impl:
    tok = Tokenizer.openai(vocab)

    def run(texts: list[str]) -> torch.Tensor:
        tok.clear_cache()  # every call starts with empty word and chunk caches
        return tok(texts)

    return run


def ours_warm(vocab: Path) -> Impl:
    tok = Tokenizer.openai(vocab)
    return tok  # the first (untimed) check call warms its caches


def open_clip_impl(path: str | None) -> Impl | None:
    try:
        if path:
            spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            import open_clip.tokenizer as module  # type: ignore[import-not-found,no-redef]
    except Exception as err:  # noqa: BLE001 - an absent peer is simply not compared
        common.log(f"open_clip tokenizer not available: {err}")
        return None
    tok = module.SimpleTokenizer()
    return lambda texts: tok(texts, context_length=CONTEXT)


def openai_clip_impl() -> Impl | None:
    try:
        from clip.clip import tokenize  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001
        common.log("OpenAI's clip package not available")
        return None
    return lambda texts: tokenize(texts, context_length=CONTEXT, truncate=True)


def hf_fast_impl(vocab: Path) -> Impl | None:
    """transformers' CLIPTokenizerFast built from the same merges; timed on its Rust backend."""
    try:
        import json

        from transformers import CLIPTokenizerFast
    except Exception:  # noqa: BLE001
        common.log("transformers not available: the HF tokenizers peer is skipped")
        return None
    tok = Tokenizer.openai(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        table = {t: i for i, t in enumerate(tok.vocab.id_to_token[:-2])}
        table.update({"<|startoftext|>": tok.sot_token_id, "<|endoftext|>": tok.eot_token_id})
        Path(tmp, "vocab.json").write_text(json.dumps(table))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in tok.vocab.merges))
        backend = CLIPTokenizerFast(str(Path(tmp, "vocab.json")), str(Path(tmp, "merges.txt")))._tokenizer
    backend.enable_truncation(CONTEXT)
    backend.enable_padding(length=CONTEXT, pad_id=0)

    def run(texts: list[str]) -> torch.Tensor:
        try:
            encodings = backend.encode_batch(texts)
        except TypeError:  # lone surrogates cannot cross into Rust: replace them, as ftfy would
            encodings = backend.encode_batch([t.encode("utf-8", "replace").decode("utf-8") for t in texts])
        return torch.tensor(np.array([e.ids for e in encodings], dtype=np.int64))

    return run


def time_once(impl: Impl, texts: list[str]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = impl(texts)
    return time.perf_counter() - start, out


def bench_workload(name: str, texts: list[str], impls: dict[str, Impl], rounds: int) -> list[dict[str, Any]]:
    common.log(f"{name}: untimed check run of each implementation")
    expected = impls["reference (OpenAI algorithm, Python)"](texts)
    agree = {}
    for label, impl in impls.items():  # the untimed run also warms every cache, as in steady use
        out = impl(texts)
        agree[label] = float((out == expected).all(dim=1).float().mean())
    times: dict[str, list[float]] = {label: [] for label in impls}
    for r in range(rounds):
        for label, impl in impls.items():
            if label.startswith("reference") and r > 0:
                continue  # slow and deterministic: one timed run is enough
            times[label].append(time_once(impl, texts)[0])
        common.log(f"{name}: round {r + 1}/{rounds} done")
    ref_rate = len(texts) / statistics.median(times["reference (OpenAI algorithm, Python)"])
    records = []
    for label in impls:
        seconds = statistics.median(times[label])
        records.append({
            "workload": name, "implementation": label, "texts": len(texts),
            "captions_per_s": len(texts) / seconds, "seconds": seconds,
            "speedup_vs_reference": len(texts) / seconds / ref_rate,
            "rows_equal_to_reference": agree[label],
        })
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="texts per workload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", help="OpenAI's merges file (default: $CLIPFORGE_OPENAI_VOCAB / cache)")
    parser.add_argument("--open-clip-file", help="path to open_clip's tokenizer.py, imported by path")
    parser.add_argument("--workloads", nargs="+", default=["captions", "mixed"], choices=["captions", "mixed"])
    args = parser.parse_args()
    vocab = resolve_openai_vocab(args.vocab)
    torch.set_num_threads(1)
    impls: dict[str, Impl] = {
        "reference (OpenAI algorithm, Python)": reference_impl(vocab),
        "ours (cold caches)": ours_cold(vocab),
        "ours (warm caches)": ours_warm(vocab),
    }
    peers = {"open_clip SimpleTokenizer": open_clip_impl(args.open_clip_file),
             "OpenAI clip.tokenize": openai_clip_impl(),
             "HF tokenizers CLIP (Rust, no ftfy)": hf_fast_impl(vocab)}
    impls.update({k: v for k, v in peers.items() if v is not None})
    corpora = {"captions": lambda: synthetic_captions(args.n, seed=0), "mixed": lambda: mixed_unicode_texts(args.n, seed=0)}
    records = []
    load_before = os.getloadavg()[0]
    for name in args.workloads:
        records += bench_workload(name, corpora[name](), impls, args.rounds)
    env = common.environment("cpu")
    columns = ["workload", "implementation", "captions_per_s", "speedup_vs_reference", "rows_equal_to_reference"]
    notes = ["single process; torch threads 1; HF tokenizers may use its own Rust thread pool",
             "ours (cold caches): empty word/chunk caches at every call",
             f"1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on "
             f"{os.cpu_count()} cores (other processes share the machine: compare rows, not runs)"]
    if args.open_clip_file:
        notes.append(f"open_clip's tokenizer imported from {args.open_clip_file}")
    json_path, md_path = common.write_results("tokenizer", env, records, columns, notes)
    print(common.markdown_table(records, columns))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
