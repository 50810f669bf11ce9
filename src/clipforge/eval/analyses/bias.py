"""The bias probe (``--suite bias``): how a zero-shot label set treats groups of images.

Reproduces the protocol of Radford et al. 2021, §7.1 (Tables 6 and 7): FairFace images classified
zero-shot over the set's own classes plus labels marked harmful ("thief", "criminal", "suspicious
person": crime-related; "animal", "gorilla", "chimpanzee", "orangutan": non-human). The paper reports
per race, gender and age group the share of images given a harmful label (4.9% non-human overall,
interval 4.6–5.4%; 'Black' images about 14%, 12.6–16.4%; 16.5% of male vs 9.8% of female images
crime-related), then adds the benign label 'child' and shows the rates of people under 20 collapse
(Table 7: 0–2 year olds from 30.3% to 2.3%).

Here, for every task with a groups file beside it (:mod:`~clipforge.eval.analyses.sidecars`) and
every group attribute: per group the accuracy, the top-1 distribution over the label set, the rate
of each harmful label and category, each with a percentile-bootstrap interval; the disparity
between groups (highest minus lowest rate, bootstrap over groups resampled separately); and with
``added`` labels the paired change of every rate when they join the label set. The label set comes
from ``bias_labels.json`` beside the set or :attr:`BiasConfig.labels`; without one the probe reports
accuracy and top-1 distributions per group (the paper's Tables 3–5). On the synthetic world the
groups are nuisance attributes (object size, background kind and tone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.eval.analyses import sidecars, stats
from clipforge.eval.analyses.common import interval_text, logits_over, single_label_tasks
from clipforge.eval.report import _table

PAPER = "Radford et al. 2021, §7.1, Tables 3-7 (FairFace: harmful-label rates per group, the 'child' label added)"


@dataclass(frozen=True)
class BiasConfig:
    labels: str | None = None  # a bias_labels.json for every task (default: the file beside each set)
    resamples: int = stats.BOOTSTRAP_RESAMPLES
    confidence: float = stats.CONFIDENCE
    seed: int = 0
    max_groups: int = 50  # an attribute with more distinct values is an identifier, not a group


def bias_tasks(layout: Any) -> list[str]:
    return [n for n, spec in layout.classification.items() if sidecars.sidecar(spec, *sidecars.GROUP_FILES)]


def available(layout: Any, config: Any) -> str | None:
    return None if set(bias_tasks(layout)) & set(layout.base_tasks()) else f"no set with a groups file ({' or '.join(sidecars.GROUP_FILES)}) beside it"


def run(suite: Any) -> dict:
    out = {}
    tasks = set(bias_tasks(suite.layout))
    for name in [n for n in single_label_tasks(suite) if n in tasks]:  # in-distribution sets (shifts: adaptation)
        out[name] = probe_task(suite, name)
    return {"paper": PAPER, "tasks": out}


def _label_spec(suite: Any, name: str, classnames: tuple[str, ...]) -> dict:
    c = suite.config.analyses.bias
    spec = suite.layout.classification[name]
    path = Path(c.labels) if c.labels else sidecars.sidecar(spec, sidecars.BIAS_FILE)
    if path is None:
        return {"harmful": {}, "added": [], "groups": None, "source": None}
    return {**sidecars.read_bias_labels(path, classnames), "source": str(path)}


def probe_task(suite: Any, name: str) -> dict:
    suite.features(name)  # reads the set (unreadable images dropped) before its labels are used
    task, spec = suite.task(name), suite.layout.classification[name]
    classnames = task.eval_set.classnames
    labels_spec = _label_spec(suite, name, classnames)
    harmful_labels = [x for v in labels_spec["harmful"].values() for x in v]
    labels = [*classnames, *[x for x in dict.fromkeys(harmful_labels) if x not in classnames]]
    groups = sidecars.align_groups(sidecars.sidecar(spec, *sidecars.GROUP_FILES), task.eval_set, Path(spec.path))
    wanted = labels_spec["groups"] or list(groups)
    unknown = sorted(set(wanted) - set(groups))
    if unknown:
        raise ValueError(f"task {name}: group attributes {unknown} are not in its groups file ({sorted(groups)})")
    before = logits_over(suite, name, labels).argmax(axis=1)
    after = None
    if labels_spec["added"]:
        after = logits_over(suite, name, labels + labels_spec["added"]).argmax(axis=1)
    categories = {c: [labels.index(x) for x in v] for c, v in labels_spec["harmful"].items()}
    probe = _Probe(suite.config.analyses.bias, task.eval_set.labels, labels, categories, before, after)
    result = {"labels": labels, "harmful": labels_spec["harmful"], "added": labels_spec["added"],
              "label_source": labels_spec["source"], "n": int(len(before)), "overall": probe.summary(np.arange(len(before))),
              "attributes": {}}
    for attribute in wanted:
        values = groups[attribute]
        names = sorted({v for v in values if v is not None})
        if len(names) > probe.config.max_groups:
            suite.notes[f"{name}: bias {attribute}"] = f"{len(names)} distinct values: an identifier, not a group; left out"
            continue
        result["attributes"][attribute] = probe.by_group({g: np.flatnonzero(values == g) for g in names})
        result["attributes"][attribute]["without_value"] = int(sum(v is None for v in values))
    return result


class _Probe:
    """Rates over rows of one task's predictions: ``before`` over the label set, ``after`` with the added labels."""

    def __init__(self, config: BiasConfig, truth: np.ndarray, labels: list[str], categories: dict[str, list[int]],
                 before: np.ndarray, after: np.ndarray | None):
        self.config, self.truth, self.labels, self.categories = config, truth, labels, categories
        self.before, self.after = before, after
        self.kw = {"n_resamples": config.resamples, "confidence": config.confidence, "seed": config.seed}

    def hits(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """0/1 indicators over ``rows``: correct, and one per harmful category."""
        out = {"accuracy": (self.before[rows] == self.truth[rows]).astype(np.float64)}
        for category, columns in self.categories.items():
            out[category] = np.isin(self.before[rows], columns).astype(np.float64)
        return out

    def summary(self, rows: np.ndarray) -> dict:
        hits = self.hits(rows)
        rates = {k: stats.rate_with_interval(v, **self.kw) for k, v in hits.items()}
        shares = stats.distribution(self.before[rows], len(self.labels))
        harmful = {self.labels[i]: float(shares[i]) for cols in self.categories.values() for i in cols}
        out = {"n": int(len(rows)), "rates": rates, "harmful_labels": harmful,
               "top1": {self.labels[i]: float(s) for i, s in enumerate(shares) if s > 0}}
        if self.after is not None:
            out["add_label"] = {c: stats.paired_change(hits[c], np.isin(self.after[rows], cols).astype(np.float64),
                                                       **self.kw) for c, cols in self.categories.items()}
        return out

    def by_group(self, groups: dict[str, np.ndarray]) -> dict:
        per_group = {g: self.summary(rows) for g, rows in groups.items()}
        hits = {g: self.hits(rows) for g, rows in groups.items()}
        disparity = {k: stats.disparity({g: h[k] for g, h in hits.items()}, **self.kw) for k in ["accuracy", *self.categories]}
        return {"groups": per_group, "disparity": disparity}


# ---- report --------------------------------------------------------------------------------------


def section(result: dict, report: dict) -> list[str]:
    lines = ["## Bias probe: labels per group", "",
             f"Reproduces {result['paper']}. Rates in %, 95% percentile-bootstrap intervals in brackets; "
             "disparity = highest minus lowest group rate.", ""]
    for name, r in result["tasks"].items():
        categories = list(r["harmful"])
        source = f"label set from `{r['label_source']}`" if r["label_source"] else "no harmful labels given"
        lines += [f"### `{name}` ({r['n']} images, {len(r['labels'])} labels; {source})", ""]
        for attribute, a in r["attributes"].items():
            header = [attribute, "images", "accuracy", *[f"{c} rate" for c in categories], "most frequent label"]
            rows = [[g, str(s["n"]), *[interval_text(s["rates"][k]["rate"], s["rates"][k]["ci"]) for k in ["accuracy", *categories]],
                     max(s["top1"], key=s["top1"].get) if s["top1"] else "–"] for g, s in a["groups"].items()]
            d = a["disparity"]
            rows.append(["**disparity**", "", *[interval_text(d[k]["difference"], d[k]["ci"]) for k in ["accuracy", *categories]], ""])
            lines += _table(header, rows) + [""]
            if r["added"]:
                lines += _added_table(attribute, a, categories, r["added"]) + [""]
    return lines


def _added_table(attribute: str, a: dict, categories: list[str], added: list[str]) -> list[str]:
    header = [attribute, *[f"{c}: before → after (change)" for c in categories]]
    rows = [[g, *[f"{100 * s['add_label'][c]['before']:.1f} → {100 * s['add_label'][c]['after']:.1f} "
                  f"({interval_text(s['add_label'][c]['change'], s['add_label'][c]['ci'])})" for c in categories]]
            for g, s in a["groups"].items()]
    return [f"Adding {', '.join(repr(x) for x in added)} to the label set (the paper's Table 7):", ""] + _table(header, rows)


def plot(plt, result: dict, out_dir: Path) -> list[str]:
    """Per task: for each attribute, the rate of each harmful category (or accuracy) per group with
    its interval; with added labels, the rate after adding them beside it (hatched)."""
    from clipforge.eval.plots import finish

    files = []
    for name, r in result["tasks"].items():
        attributes = list(r["attributes"].items())
        if not attributes:
            continue
        keys = list(r["harmful"]) or ["accuracy"]
        fig, axes = plt.subplots(1, len(attributes), figsize=(4.5 * len(attributes), 3.8), squeeze=False)
        for ax, (attribute, a) in zip(axes[0], attributes):
            _bars(ax, a, keys, bool(r["added"]) and keys != ["accuracy"])
            ax.set(title=f"{name}: by {attribute}", ylabel="% of the group's images", ylim=(0, 1.4 * ax.get_ylim()[1]))
            ax.grid(alpha=0.3)
        files.append(finish(plt, fig, axes[0][-1], out_dir / f"bias_{name}.png", "upper right"))
    return files


def _bars(ax, a: dict, keys: list[str], with_after: bool) -> None:
    groups = list(a["groups"])
    x = np.arange(len(groups))
    width = 0.8 / (len(keys) * (2 if with_after else 1))
    for k, key in enumerate(keys):
        rates = [a["groups"][g]["rates"][key] for g in groups]
        values = np.array([100 * r["rate"] for r in rates])
        errors = np.array([[100 * (r["rate"] - r["ci"][0]), 100 * (r["ci"][1] - r["rate"])] if r["ci"] else [0, 0]
                           for r in rates]).T
        slot = k * (2 if with_after else 1)
        ax.bar(x + (slot + 0.5) * width - 0.4, values, width, yerr=errors, capsize=2, color=f"C{k}", label=key)
        if with_after:
            after = [100 * a["groups"][g]["add_label"][key]["after"] for g in groups]
            ax.bar(x + (slot + 1.5) * width - 0.4, after, width, color=f"C{k}", alpha=0.45, hatch="//",
                   label=f"{key}, label added")
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
