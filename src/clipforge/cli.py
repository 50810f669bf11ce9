"""`clipforge <command>`: each command is a thin layer over the Python API.

Commands live in their own modules and are imported only when chosen, so `clipforge --help`
stays fast and a missing optional dependency only affects the command that needs it.
Each command module defines ``add_arguments(parser)`` and ``run(args) -> int | None``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("clipforge.commands.models", "list the registered model configs"),
    "demo": ("clipforge.commands.demo", "train a small CLIP on the synthetic world, then evaluate it"),
    "tokenizer": ("clipforge.commands.tokenizer", "tokenize text, or train a BPE vocabulary"),
    "data": ("clipforge.data.cli", "generate the synthetic world, convert CSV/folders to shards"),
    "train": ("clipforge.train.cli", "train a CLIP model (torchrun for several processes)"),
    "eval": ("clipforge.eval.cli", "evaluate a model: zero-shot, linear probe, few-shot, retrieval, ..."),
    "benchmark": ("clipforge.eval.benchmark_cli", "models x datasets x tasks: resumable grid, one table, plots"),
    "datasets": ("clipforge.commands.datasets", "list the dataset zoo: names, class and template counts, sources"),
    "convert": ("clipforge.commands.convert", "convert checkpoints between OpenAI, open_clip, HF and ours"),
    "embed": ("clipforge.serve.embed_cli", "embed images or texts to numpy/parquet files"),
    "index": ("clipforge.serve.index_cli", "build a vector index over image embeddings"),
    "search": ("clipforge.serve.search_cli", "search an index by text or image"),
    "serve": ("clipforge.serve.server_cli", "run the HTTP service and its search page"),
    "export": ("clipforge.commands.export", "export the encoders to ONNX"),
}


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, str | None]:
    parser = argparse.ArgumentParser(prog="clipforge", description="CLIP: models, training, evaluation, serving.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # import only the command that runs
            importlib.import_module(module).add_arguments(p)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        code = module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `clipforge models | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
