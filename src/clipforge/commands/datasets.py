"""`clipforge datasets`: the dataset zoo as a table (or JSON with --json).

One row per dataset: name, task, class count, template count, the paper's metric, whether it is
one of the CLIP paper's 27, and where it downloads from; then the named collections.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
    parser.add_argument("--paper", action="store_true", help="only the 27 datasets of the CLIP paper")


def _table(rows: list[dict]) -> list[str]:
    header = ["name", "task", "classes", "templates", "metric", "paper", "source"]
    cells = [[r["name"], r["task"], "-" if r["classes"] is None else str(r["classes"]),
              "-" if r["templates"] is None else str(r["templates"]), r["metric"], "yes" if r["paper"] else "",
              f"hf:{r['source']}" if r["source"] else "local only"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *cells]]


def run(args: argparse.Namespace) -> int:
    from clipforge.eval import dataset_zoo as zoo

    rows = [r for r in zoo.listing() if r["paper"] or not args.paper]
    if args.json:
        print(json.dumps({"datasets": rows, "collections": {k: list(v) for k, v in zoo.collections().items()}}, indent=1))
        return 0
    print("\n".join(_table(rows)))
    print("\n'-' classes/templates: read from the set's own classnames.txt / zeroshot_classification_templates.txt")
    print("collections: " + "; ".join(f"{k} ({len(v)})" for k, v in zoo.collections().items()))
    return 0
