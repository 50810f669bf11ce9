"""`clipforge models`: the registered model configs as a table (or JSON with --json)."""

from __future__ import annotations

import argparse
import functools
import json

import torch

from clipforge import families
from clipforge.config import ModelConfig
from clipforge.model import CLIP
from clipforge.registry import aliases_of, available_models, describe, get_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


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


def run(args: argparse.Namespace) -> int:
    rows = model_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "image tower", "image", "embed", "params", "description")
    table = [header] + [
        (r["name"], r["tower"], str(r["image_size"]), str(r["embed_dim"]), _format_params(r["parameters"]),
         r["description"] + (f" [also: {', '.join(r['aliases'])}]" if r["aliases"] else ""))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0
