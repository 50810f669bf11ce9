"""`clipforge tokenizer {encode,decode,train,download-openai}`: the tokenizer from the shell.

    clipforge tokenizer encode "a photo of a cat"            # OpenAI's ids, one line per text
    clipforge tokenizer train --input captions.txt --vocab-size 4096 --out runs/tok
    clipforge tokenizer encode --vocab runs/tok "a red circle"
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    vocab_help = "a tokenizer directory (tokenizer.json) or a merges file; default: OpenAI's vocabulary"
    enc = sub.add_parser("encode", help="print the ids of each text (no SOT/EOT unless --context-length)")
    enc.add_argument("texts", nargs="+", help="texts to encode")
    enc.add_argument("--vocab", help=vocab_help)
    enc.add_argument("--context-length", type=int, help="print the padded row of this length instead")
    dec = sub.add_parser("decode", help="print the text of a list of ids")
    dec.add_argument("ids", nargs="+", type=int)
    dec.add_argument("--vocab", help=vocab_help)
    train = sub.add_parser("train", help="learn a BPE vocabulary from a caption file (one caption a line)")
    train.add_argument("--input", required=True, help="UTF-8 text file, one caption per line (.gz allowed)")
    train.add_argument("--vocab-size", type=int, required=True, help="ids in all: 512 bytes + merges + SOT + EOT")
    train.add_argument("--out", required=True, help="directory for bpe_merges.txt.gz and tokenizer.json")
    train.add_argument("--min-frequency", type=int, default=2, help="smallest pair count to merge (default 2)")
    train.add_argument("--context-length", type=int, default=77)
    down = sub.add_parser("download-openai", help="download OpenAI's merges file (checksum verified) to the cache")
    down.add_argument("--dir", help="target directory (default: the clipforge cache directory)")


def load_tokenizer(spec: str | None):
    """A tokenizer from a directory, a merges file, or (None) OpenAI's vocabulary."""
    from clipforge.tokenizer import Tokenizer

    if spec is None:
        return Tokenizer.openai()
    path = Path(spec)
    return Tokenizer.from_directory(path) if path.is_dir() else Tokenizer.from_merges(path)


def _read_lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def run(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.vocab)
    if args.context_length:
        rows = tok.tokenize_numpy(args.texts, context_length=args.context_length)
        for row in rows.tolist():
            print(" ".join(map(str, row)))
    else:
        for text in args.texts:
            print(" ".join(map(str, tok.encode(text))))
    return 0


def _decode(args: argparse.Namespace) -> int:
    print(load_tokenizer(args.vocab).decode(args.ids))
    return 0


def _train(args: argparse.Namespace) -> int:
    from clipforge.tokenizer import train_bpe

    start = time.perf_counter()
    captions = _read_lines(args.input)
    tok = train_bpe(captions, args.vocab_size, min_frequency=args.min_frequency, context_length=args.context_length)
    tok.save(args.out)
    report = {
        "out": args.out,
        "captions": len(captions),
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": args.vocab_size,
        "merges": len(tok.vocab.merges),
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(report, indent=2))
    if tok.vocab_size < args.vocab_size:
        print(f"note: no pair occurs {args.min_frequency}+ times any more; the vocabulary stopped at "
              f"{tok.vocab_size} ids", file=sys.stderr)
    return 0


def _download(args: argparse.Namespace) -> int:
    from clipforge.tokenizer import download_openai_vocab

    print(download_openai_vocab(args.dir))
    return 0


_ACTIONS = {"encode": _encode, "decode": _decode, "train": _train, "download-openai": _download}
