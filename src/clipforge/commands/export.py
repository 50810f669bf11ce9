"""`clipforge export MODEL --out DIR`: the image and text encoders as ONNX files, checked with onnxruntime."""

from __future__ import annotations

import argparse
import json
import sys
import time

from clipforge.export import ExportConfig, ExportError, check_onnx, export_onnx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint file or directory, or a model name (OpenAI weights are downloaded)")
    parser.add_argument("--out", required=True,
                        help="output directory for image_encoder.onnx, text_encoder.onnx and onnx.json")
    parser.add_argument("--towers", default="image,text", help="comma-separated: image, text (default both)")
    parser.add_argument("--opset", type=int, default=ExportConfig.opset, help="ONNX opset (default %(default)s)")
    parser.add_argument("--random", action="store_true",
                        help="export a randomly initialised model of the registered config MODEL (for testing)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--atol", type=float, default=ExportConfig.check_atol, help="tolerance of the check")


def run(args: argparse.Namespace) -> int:
    config = ExportConfig(opset=args.opset, towers=tuple(t.strip() for t in args.towers.split(",") if t.strip()),
                          check_atol=args.atol)
    model, tokenizer = _load(args.model, args.random)
    start = time.perf_counter()
    try:
        written = export_onnx(model, args.out, config)
    except (ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if tokenizer is not None and hasattr(tokenizer, "save"):
        tokenizer.save(args.out)  # consumers of the text encoder need the same token ids
    report = {"files": {k: str(v) for k, v in written.items()}, "seconds": round(time.perf_counter() - start, 1)}
    if not args.no_check:
        try:
            report["max_abs_diff"] = check_onnx(model, args.out, atol=config.check_atol)
        except ImportError:
            report["check"] = "skipped: onnxruntime is not installed (pip install 'clipforge[onnx]')"
        except ExportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    return 0


def _load(spec: str, random_init: bool):
    if random_init:
        from clipforge.factory import create_model

        return create_model(spec), None
    from clipforge.api import load

    model, _, tokenizer = load(spec)
    return model, tokenizer
