"""`clipforge convert SRC --to {clipforge,hf,openai} --out PATH`: between checkpoint formats.

SRC is any checkpoint clipforge reads (OpenAI TorchScript or state_dict, open_clip, safetensors, an HF
``save_pretrained`` directory, our directory) or an OpenAI model name (downloaded). Targets:
- ``clipforge``: our directory (model.safetensors, config.json, tokenizer files when known);
- ``hf``: a transformers ``save_pretrained`` directory of a ``CLIPModel`` (ViT models) or a ``SiglipModel``
  (SigLIP models, with their tokenizer files);
- ``openai``: a safetensors file with OpenAI's state_dict keys (what ``clip.model.build_model`` takes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clipforge.api import load_model, resolve_checkpoint, tokenizer_for
from clipforge.checkpoint import CheckpointError, save_directory, save_state_dict
from clipforge.hub import DownloadError

TARGETS = ("clipforge", "hf", "openai")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="checkpoint file or directory, or an OpenAI model name")
    parser.add_argument("--to", required=True, choices=TARGETS, help="output format")
    parser.add_argument("--out", required=True, type=Path, help="output directory (clipforge, hf) or file (openai)")
    parser.add_argument("--model", default=None,
                        help="architecture name when the shapes are ambiguous (e.g. ViT-B-32 for a GELU checkpoint)")
    parser.add_argument("--image-size", type=int, default=None, help="interpolate the positional embedding to this size")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        path = resolve_checkpoint(args.src)
        model = load_model(path, model=args.model, image_size=args.image_size)
        written = _write(model, path, args.to, args.out)
    except (CheckpointError, DownloadError, ValueError, KeyError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.src} -> {written} ({args.to}; {params:,} parameters; {time.perf_counter() - start:.1f} s)")
    return 0


def _write(model, src: Path, target: str, out: Path) -> Path:
    if target == "clipforge":
        tokenizer = tokenizer_for(src, model.config)
        if tokenizer is None:
            print("note: OpenAI's vocabulary file is not available here, so no tokenizer files were written; "
                  "clipforge.load falls back to OpenAI's tokenizer for this model", file=sys.stderr)
        return save_directory(model, out, tokenizer)
    if target == "hf":
        try:
            from clipforge.hf import hf_model_of, to_hf

            hf = to_hf(model)
        except ImportError as err:
            raise ImportError(f"--to hf needs transformers: pip install 'clipforge[hf]' ({err})") from err
        hf.save_pretrained(out)
        if hf_model_of(model.config) == "SiglipModel":  # transformers' SigLIP folders hold the tokenizer's files too
            try:
                tokenizer_for(src, model.config).save(out)
            except CheckpointError as err:
                print(f"note: no tokenizer files written ({err})", file=sys.stderr)
        return out
    file = out / "model.safetensors" if out.is_dir() else out
    if model.config.text.act != "quick_gelu":
        print(f"note: OpenAI's format does not record the activation; load {file} with model=<a GELU config>",
              file=sys.stderr)
    return save_state_dict(model.state_dict(), file)
