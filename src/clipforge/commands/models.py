"""`clipforge models`: the registered model configs as a table (or JSON with --json); with --pretrained,
every known (architecture, tag) with its source and reported zero-shot ImageNet top-1."""

from __future__ import annotations

import argparse
import functools
import json

import torch

from clipforge import families
from clipforge.config import ModelConfig, PreprocessConfig
from clipforge.model import CLIP
from clipforge.registry import aliases_of, available_models, describe, get_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--pretrained", action="store_true",
                        help="list the pretrained tags (clipforge.load(NAME, pretrained=TAG)) instead of the architectures")


def model_rows() -> list[dict]:
    """One row per registered model: name, aliases, tower, image size, embed dim, parameter count."""
    return [
        {
            "name": name,
            "aliases": aliases_of(name),
            "tower": _tower(get_config(name)),
            "image_size": get_config(name).vision.image_size,
            "embed_dim": get_config(name).embed_dim,
            "parameters": count_parameters(get_config(name)),
            "description": describe(name),
        }
        for name in available_models()
    ]


@functools.lru_cache(maxsize=None)  # configs are frozen, so hashable
def count_parameters(config: ModelConfig) -> int:
    """Parameter count of a config, built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(config).parameters())


def _tower(config: ModelConfig) -> str:
    return families.of(config.vision).describe(config.vision)


def _format_params(n: int) -> str:
    return f"{n / 1e6:,.1f}M" if n >= 1e6 else f"{n / 1e3:,.0f}K"


def pretrained_rows() -> list[dict]:
    """One row per pretrained tag: open_clip's architecture name, tag, source, reported ImageNet top-1."""
    from clipforge.zoo.pretrained import SOURCES, list_pretrained

    return [
        {"model": e.model, "tag": e.tag, "architecture": e.architecture, "source": e.source, "url": e.url,
         "imagenet_zeroshot_top1": e.imagenet_top1, "reported_by": SOURCES[e.reported_by],
         "preprocess": "" if e.preprocess == PreprocessConfig() else _describe_preprocess(e.preprocess)}
        for e in list_pretrained()
    ]


def _describe_preprocess(p: PreprocessConfig) -> str:
    default = PreprocessConfig()
    parts = [f"mean {p.mean} std {p.std}"] if (p.mean, p.std) != (default.mean, default.std) else []
    return ", ".join(parts + [v for v, d in ((p.resize, default.resize), (p.interpolation, default.interpolation)) if v != d])


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        rows = pretrained_rows()
        header = ("architecture", "tag", "ImageNet top-1", "source")
        table = [(r["model"], r["tag"], "-" if r["imagenet_zeroshot_top1"] is None else f"{r['imagenet_zeroshot_top1']:.2f}%",
                  r["source"] + (f" (preprocess: {r['preprocess']})" if r["preprocess"] else "")) for r in rows]
        footer = ["", "ImageNet top-1: zero-shot, as reported by " + "; ".join(sorted({r["reported_by"] for r in rows}))]
    else:
        rows = model_rows()
        header = ("name", "image tower", "image", "embed", "params", "description")
        table = [(r["name"], r["tower"], str(r["image_size"]), str(r["embed_dim"]), _format_params(r["parameters"]),
                  r["description"] + (f" [also: {', '.join(r['aliases'])}]" if r["aliases"] else "")) for r in rows]
        footer = []
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [header, *table]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    for line in footer:
        print(line)
    return 0
