"""``clipforge demo``: the main job. Generate the synthetic world, learn a BPE vocabulary from its
captions, train a small CLIP from scratch on it, run the evaluation suite, print a summary.

Everything lands in ``--out`` (default ``runs/demo``): ``world/`` (data), ``train/`` (the run
directory: config, metrics, checkpoints, ``final/``), ``report/`` (report.html, report.json,
report.md, plots) and ``summary.json``. The recipe is the packaged ``demo.toml``
(``configs/demo.toml`` in the repository); ``--set`` overrides its keys, and ``world.<key>`` keys
change the world (:class:`clipforge.data.world.WorldConfig`). ``--seed`` seeds all three: the
world (its held-out pairs too), the model's initialisation and the data order.

The recipe trains a fixed number of steps with a fixed number of threads, so the numbers depend on
the seed only; a busy or slow machine takes longer and the summary says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from importlib import resources
from pathlib import Path

RECIPE = "demo.toml"
# Training speed of the packaged recipe on 2 quiet cores of this project's machine (samples/s);
# the summary warns when a run is far below it. See benchmarks/results/demo_recipe_*.md.
EXPECTED_SAMPLES_PER_SECOND = 570.0  # 563 and 576 in two `make demo` runs (demo_recipe_2026-12-02.md section 5)
SLOW_FACTOR = 0.6  # warn below this fraction of the expected speed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", metavar="DIR", help="output directory (default runs/demo)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the world (held-out pairs included), initialisation and data order (default 0)")
    parser.add_argument("--config", metavar="RECIPE", help="a training recipe instead of the packaged demo.toml")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        help="override a recipe key (optim.lr=1e-3) or a world key (world.num_train=5000)")
    parser.add_argument("--suite", default=None, help="evaluation protocols, comma-separated (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating the world (default 2)")


def recipe_path(config: str | None) -> Path:
    if config:
        return Path(config)
    return Path(str(resources.files("clipforge.train.recipes").joinpath(RECIPE)))


def split_overrides(items: list[str], seed: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(world overrides, training overrides) from ``key=value`` items; ``seed`` seeds world, model and data."""
    from clipforge.train.config import parse_overrides

    seeded = [f"{key}={seed}" for key in ("world.seed", "run.seed", "data.seed")] if seed is not None else []
    overrides = parse_overrides(seeded + items)
    world = {k[len("world."):]: v for k, v in overrides.items() if k.startswith("world.")}
    return world, {k: v for k, v in overrides.items() if not k.startswith("world.")}


def world_config(overrides: dict[str, str]):
    from clipforge.data.world import WorldConfig
    from clipforge.train.config import _parse_literal, build

    return build(WorldConfig, {k: _parse_literal(v) for k, v in overrides.items()}, "world")


def _as_json(data: dict) -> dict:
    """``data`` as it reads back from a JSON file (tuples become lists), to compare with one."""
    return json.loads(json.dumps(data))


def make_world(out: Path, config, workers: int) -> tuple[dict, bool]:
    """Generate the world, or reuse one generated before with the same config and format:
    (its manifest, whether it was reused)."""
    from dataclasses import asdict

    from clipforge.data.synthetic import WORLD_FORMAT, generate_world

    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == _as_json(asdict(config)) and manifest.get("format") == WORLD_FORMAT:
            print(f"[1/4] world: reusing {out} ({manifest['splits']['train']['num_samples']} training images)")
            return manifest, True
    print(f"[1/4] world: generating {config.num_train} training images and the evaluation sets into {out}")
    return generate_world(out, config, workers=workers), False


def set_aside_stale_run(config, world_reused: bool) -> Path | None:
    """An interrupted demo resumes its run, but only a run of this recipe on this world: any other
    run directory (another recipe, or a world generated again) is renamed, not resumed or deleted.
    Returns the new name, or None when there was nothing to set aside."""
    run_dir = Path(config.run.out)
    if not run_dir.exists():
        return None
    saved = run_dir / "train_config.json"
    if world_reused and saved.is_file() and json.loads(saved.read_text()) == _as_json(config.to_dict()):
        return None
    n = 1
    while (stale := run_dir.with_name(f"{run_dir.name}.stale{n}")).exists():
        n += 1
    run_dir.rename(stale)
    print(f"[2/4] {run_dir} holds a run of another recipe or world: moved to {stale}, training afresh")
    return stale


def training_overrides(out: Path, world_dir: Path, manifest: dict) -> dict[str, str]:
    """The recipe's paths, pointed at this demo's directories; an interrupted demo continues."""
    sizes = json.loads((world_dir / "train" / "sizes.json").read_text())
    shards = "::".join(str(world_dir / "train" / name) for name in sorted(sizes))
    return {"run.out": str(out / "train"), "checkpoint.resume": "latest", "data.shards": shards,
            "tokenizer.captions": str(world_dir / "train" / "captions.txt"),
            "eval.data": str(world_dir / manifest["tasks"]["heldout"]["path"])}


def own_cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the data workers), user + system."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(CPU time every program on the machine has used since boot, of which the host's steal time):
    Linux ``/proc/stat``; steal is time a virtual CPU wanted to run and the hypervisor ran something
    else. None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def cpu_meter() -> tuple[float, tuple[float, float] | None]:
    return own_cpu_seconds(), machine_cpu_seconds()


def others_cores(before: tuple[float, tuple[float, float] | None], seconds: float) -> dict[str, float | None]:
    """Cores' worth of CPU since ``before`` that other programs used (``others_cores``) and that the
    virtual machine's host took (``steal_cores``); None where unknown."""
    own, machine = cpu_meter()
    if before[1] is None or machine is None or seconds <= 0:
        return {"others_cores": None, "steal_cores": None}
    steal = max(0.0, machine[1] - before[1][1])
    others = max(0.0, (machine[0] - before[1][0]) - steal - (own - before[0]))
    return {"others_cores": others / seconds, "steal_cores": steal / seconds}


def run(args: argparse.Namespace) -> int:
    from clipforge.train.config import ConfigError, load_config
    from clipforge.train.launch import LaunchError

    start, out = time.perf_counter(), Path(args.out)
    try:
        world_overrides, train_overrides = split_overrides(args.set, args.seed)
        world = world_config(world_overrides)
        load_config(recipe_path(args.config), train_overrides)  # check before spending minutes on the world
    except (ConfigError, FileNotFoundError) as err:
        print(f"clipforge demo: error: {err}", file=sys.stderr)
        return 2
    times = {}
    manifest, reused = make_world(out / "world", world, args.workers)
    times["world"] = time.perf_counter() - start
    config = load_config(recipe_path(args.config), {**training_overrides(out, out / "world", manifest), **train_overrides})
    set_aside_stale_run(config, reused)
    meter, train_start = cpu_meter(), time.perf_counter()
    try:
        summary = train(config)
    except LaunchError as err:  # a training process failed and said why
        print(f"clipforge demo: error: {err}", file=sys.stderr)
        return err.exit_code
    times["train"] = time.perf_counter() - train_start  # the processes' start-up and the vocabulary included
    summary.update(others_cores(meter, times["train"]))
    report_start = time.perf_counter()
    report = evaluate(Path(config.run.out) / "final", out / "world", out / "report", args.suite)
    result = summarize(out, manifest, config, summary, report)
    write_html(out, config, result)  # part of the evaluation step: the report a person opens
    times["evaluate"] = time.perf_counter() - report_start
    times["total"] = time.perf_counter() - start
    write_summary(out, config, result, times)
    return 0


def train(config) -> dict:
    from clipforge.train import launch
    from clipforge.train.distributed import destroy_distributed
    from clipforge.train.loop import Trainer

    run = config.run
    print(f"[2/4] vocabulary and training: {run.steps} steps of {config.data.batch_size * run.processes} pairs, "
          f"model {config.model.name}, {run.processes} process(es) of {run.threads or 'default'} thread(s), "
          f"run directory {run.out}")
    if launch.launches(config):
        return launch.launch(config)
    try:
        return Trainer(config).train()
    finally:
        destroy_distributed()


def evaluate(model_dir: Path, world_dir: Path, report_dir: Path, suite: str | None) -> dict:
    import clipforge
    from clipforge.eval import EvalConfig, run_suite

    print(f"[3/4] evaluation suite on {world_dir / 'eval'}")
    model, preprocess, tokenizer = clipforge.load(model_dir)
    model = clipforge.optimize_for_inference(model, inplace=True)
    return run_suite(model, preprocess, tokenizer, world_dir, report_dir, suite, EvalConfig(progress=False),
                     model_name="clipforge demo")


def headline(report: dict) -> dict[str, dict[str, float]]:
    """Zero-shot top-1 against chance for the in-distribution and held-out tasks."""
    rows = {}
    for task, result in report.get("zeroshot", {}).items():
        if "_shift_" not in task:
            rows[task] = {"acc1": result["acc1"], "chance": 1.0 / result["num_classes"]}
    return rows


def expected_rate(config) -> float | None:
    """The packaged recipe's speed on 2 quiet cores, when ``config`` trains the same work per sample."""
    from clipforge.train.config import load_config

    packaged = load_config(recipe_path(None))
    same = (config.model == packaged.model and config.data.batch_size == packaged.data.batch_size
            and config.run.threads == packaged.run.threads and config.run.processes == packaged.run.processes)
    return EXPECTED_SAMPLES_PER_SECOND if same else None


def speed(config, summary: dict) -> dict:
    """Samples/s, how busy other programs (and the host, on a VM) kept the machine, and a warning when
    the run was slow."""
    threads = config.run.threads or os.cpu_count() or 1
    rate, others, steal = summary["samples_per_second"], summary.get("others_cores"), summary.get("steal_cores")
    expected, warning = expected_rate(config), None
    if expected is not None and 0 < rate < SLOW_FACTOR * expected:  # 0: nothing left to train (a finished run)
        warning = (f"training ran at {rate:.0f} samples/s, {expected / rate:.1f}x slower than on 2 quiet cores "
                   f"(about {expected:.0f}): {slow_cause(others, steal)}. The accuracies are unaffected: the recipe "
                   "trains a fixed number of steps, so a slow machine only takes longer.")
    return {"samples_per_second": round(rate, 1), "expected_samples_per_second": expected,
            "others_cores": None if others is None else round(others, 2),
            "steal_cores": None if steal is None else round(steal, 2), "threads": threads, "warning": warning}


def slow_cause(others: float | None, steal: float | None) -> str:
    """Why a run was slow, from what else took the cores meanwhile."""
    causes = []
    if others is not None and others >= 0.25:
        causes.append(f"other programs kept {others:.1f} of the {os.cpu_count()} cores busy meanwhile")
    if steal is not None and steal >= 0.25:
        causes.append(f"the virtual machine's host took {steal:.1f} of its {os.cpu_count()} cores for other "
                      "machines (steal time)")
    return " and ".join(causes) or "this CPU is slower than the reference machine's"


def summarize(out: Path, manifest: dict, config, summary: dict, report: dict) -> dict:
    """The summary's numbers (``seconds`` is filled in by :func:`write_summary`)."""
    pace = speed(config, summary)
    return {"zero_shot": headline(report), "seconds": {},
            "train": {"step": summary["step"], "loss": summary["loss"],
                      "batch_size": config.data.batch_size * config.run.processes, "processes": config.run.processes,
                      "seed": config.run.seed, **pace},
            "heldout_pairs": manifest.get("heldout_pairs"), "report": str(out / "report")}


def write_summary(out: Path, config, result: dict, times: dict) -> None:
    """Write summary.json and print the summary: each number with what it means, the speed, the times."""
    from clipforge.eval.html_report import meaning

    result["seconds"] = {k: round(v, 1) for k, v in times.items()}
    rows, pace = result["zero_shot"], result["train"]
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[4/4] summary: seed {config.run.seed}, {pace['step']} steps of {pace['batch_size']} pairs "
          "(a fixed amount of work: the same seed gives the same numbers on any machine)")
    for task, row in rows.items():
        print(f"  zero-shot {task:<8} {100 * row['acc1']:5.1f}%  (chance {100 * row['chance']:4.1f}%)  {meaning(task)}")
    expected = f", about {pace['expected_samples_per_second']:.0f} expected on 2 quiet cores" \
        if pace["expected_samples_per_second"] else ""
    others = "" if pace["others_cores"] is None else \
        f"; other programs used {pace['others_cores']:.1f} of {os.cpu_count()} cores meanwhile"
    if (pace.get("steal_cores") or 0) >= 0.05:
        others += f", the virtual machine's host {pace['steal_cores']:.1f} (steal time)"
    workers = f"{pace['processes']} processes of {pace['threads']} thread(s)" if pace["processes"] > 1 \
        else f"{pace['threads']} thread(s)"
    print(f"  speed: {pace['samples_per_second']:.0f} samples/s in training on {workers}{expected}{others}")
    print(f"  time: world {times['world']:.0f} s, training {times['train']:.0f} s, evaluation {times['evaluate']:.0f} s, "
          f"total {times['total']:.0f} s")
    if pace["warning"]:
        print(f"  warning: {pace['warning']}")
    print(f"  report: {out / 'report' / 'report.html'} (and report.md); model: {out / 'train' / 'final'}")


def write_html(out: Path, config, result: dict) -> Path:
    from clipforge.eval.html_report import write_html as write

    train = result["train"]
    notes = [f"The clipforge demo: {config.model.name} trained from scratch on the synthetic world for {train['step']} "
             f"steps of {train['batch_size']} image-caption pairs (seed {train['seed']}) at {train['samples_per_second']:.0f} "
             f"samples/s; held-out pairs: {', '.join(' '.join(p) for p in result['heldout_pairs'] or [])}."]
    if train["warning"]:
        notes.append(f"Warning: {train['warning']}")
    return write(out / "report", Path(config.run.out), notes)
