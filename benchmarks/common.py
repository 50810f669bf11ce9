"""Shared helpers for the benchmark scripts: environment, timing, memory, isolation, result files.

Benchmarks are scripts, not tests (speed is never asserted in a unit test). Every script writes
``benchmarks/results/<name>_<YYYY-MM-DD>_<host-kind>.json`` plus a short ``.md`` table naming the
hardware, the torch version, the date and the exact command.

CPU peak memory is the process's resident high-water mark (VmHWM from /proc/self/status), so each
workload runs in a fresh subprocess; rounds alternate the implementations (ours, peer, ours, peer)
so that load from other processes on a shared machine hits both alike.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# ---------------------------------------------------------------------------------------------- env
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def host_kind(device: str) -> str:
    """A short filename-safe hardware tag: ``cpu2`` (2 cores) or ``h100`` / ``h200`` / a GPU name."""
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower()
        for tag in ("h200", "h100", "a100", "l40s", "a10g", "l4", "t4", "v100"):
            if tag in name:
                return tag
        return "".join(c for c in name if c.isalnum())[:16] or "gpu"
    return f"cpu{os.cpu_count()}"


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "host_kind": host_kind(device),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "git_commit": _git_commit(),
        # glibc malloc tunables (MALLOC_MMAP_MAX_=0 ...): they decide whether large activations are
        # page-faulted in afresh on every call, which moves eager CPU throughput by up to 1.6x (open_clip RN50)
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))},
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    for name in ("open_clip", "transformers"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken peers are simply not compared
            env[name] = None
    return env


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------ timing
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_iterations(fn: Callable[[], Any], device: str, warmup: int, iters: int,
                    log: Callable[[str], None] | None = None) -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` timed calls after ``warmup`` untimed ones.

    On CUDA each call is timed with a synchronisation after it (the benchmark's only host syncs).
    """
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        synchronize(device)
        if log:
            log(f"warm-up {i + 1}/{warmup}: {time.perf_counter() - start:.3f} s")
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ------------------------------------------------------------------------------------------ memory
def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """CUDA: the allocator's peak since the last reset. CPU: the process's peak RSS (VmHWM)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return _proc_status_kib("VmHWM") / 1024


def current_rss_mib() -> float:
    return _proc_status_kib("VmRSS") / 1024


def _proc_status_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return float("nan")


# --------------------------------------------------------------------------------------- isolation
# glibc's mmap threshold grows with the allocation history, so a freed block may stay resident or not
# from run to run; a fixed threshold returns every large block at once and makes the RSS peak
# track the live tensors (runs measured ±50 MB apart become identical to the MB).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_isolated(script: Path, args: list[str], timeout: float | None = None,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``script --worker ARGS`` in a fresh interpreter; its last stdout line is a JSON record."""
    cmd = [sys.executable, str(script), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"worker exited {proc.returncode}: " + " | ".join(tail)}
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": "worker printed no JSON record"}
    return json.loads(lines[-1])


def run_rounds(script: Path, worker_args: list[str], variants: list[str], rounds: int, isolate: bool,
               in_process: Callable[[str], dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """Run every variant ``rounds`` times, alternating; each run is one record (or ``{"error": ...}``).

    ``isolate``: each run is ``script --worker WORKER_ARGS --variant V`` in a fresh interpreter (CPU
    peak RSS is per process); otherwise ``in_process(variant)`` (CUDA, where the allocator's peak
    is reset per run). One failing variant never loses the others' numbers.
    """
    records = []
    if isolate:  # one short run per variant for the memory figure (see MEMORY_ENV), not timed
        for variant in variants:
            log(f"{label} {variant} memory run")
            rec = run_isolated(script, [*_short(worker_args), "--variant", variant], env=MEMORY_ENV)
            rec.update(variant=variant, memory_only=True)
            log(f"  peak {rec.get('peak_mib', float('nan')):,.0f} MiB" if "error" not in rec else f"  {rec['error'][-300:]}")
            records.append(rec)
    for r in range(rounds):
        for variant in variants:
            log(f"{label} {variant} round {r + 1}/{rounds}")
            if isolate:
                rec = run_isolated(script, [*worker_args, "--variant", variant])
            else:
                try:
                    rec = in_process(variant)
                except Exception as exc:  # noqa: BLE001
                    rec = {"error": f"{type(exc).__name__}: {exc}"}
            rec.setdefault("variant", variant)
            rec["round"] = r
            if "error" in rec:
                log(f"  error: {rec['error'][-400:]}")
            else:
                log(f"  {rec['batch'] / median(rec['times_s']):,.1f} samples/s, peak {rec['peak_mib']:,.0f} MiB")
            records.append(rec)
    return records


def _short(worker_args: list[str]) -> list[str]:
    """The worker arguments with one warm-up step and one timed step."""
    out = list(worker_args)
    for flag, value in (("--warmup", "1"), ("--iters", "1")):
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


def summarise(records: list[dict[str, Any]], keys: tuple[str, ...], peak_tflops: float | None,
              flops_of: Callable[[dict[str, Any]], float | None]) -> list[dict[str, Any]]:
    """One row per (model, variant): median samples/s over every timed iteration of every round,
    the largest peak memory, FLOP/s and utilisation (``flops_of(row)`` = FLOPs per sample), and the
    ratio to the model's plain open_clip row (else the plain ``ours:`` row): of the medians
    (``speedup``) and, per round, median (min–max) (``speedup_rounds``)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        key = (rec.get("model"), rec["variant"])
        if "error" in rec:
            rows.setdefault(key, {"model": key[0], "variant": key[1], "error": rec["error"][-400:]})
            continue
        row = rows.get(key)
        if row is None or "error" in row:
            row = rows[key] = {**{k: rec[k] for k in keys if k in rec}, "times_s": [], "peak_mib": 0.0}
        if rec.get("memory_only"):
            row["memory_run_peak_mib"] = rec["peak_mib"]
            continue
        row["times_s"] += rec["times_s"]
        row.setdefault("round_rates", {})[rec.get("round", 0)] = rec["batch"] / median(rec["times_s"])
        row["peak_mib"] = max(row["peak_mib"], rec["peak_mib"])
    out = list(rows.values())
    for row in out:
        if "error" in row or not row["times_s"]:
            continue
        if "memory_run_peak_mib" in row:  # the reproducible figure; the timed runs' peak stays in the JSON
            row["timed_runs_peak_mib"], row["peak_mib"] = row["peak_mib"], row.pop("memory_run_peak_mib")
        row["samples_per_s"] = row["batch"] / median(row["times_s"])
        flops = flops_of(row)
        if flops:
            row["gflop_per_sample"] = flops / 1e9
            row["tflops"] = row["samples_per_s"] * flops / 1e12
            row["utilisation"] = row["tflops"] / peak_tflops if peak_tflops else None
    for row in out:
        peers = [r for r in out if r["model"] == row["model"] and "samples_per_s" in r]
        base = next((r for r in peers if r["variant"] == "open_clip:"), None) or \
            next((r for r in peers if r["variant"] == "ours:"), None)
        if base and "samples_per_s" in row:
            row["vs"] = base["variant"]
            row["speedup"] = row["samples_per_s"] / base["samples_per_s"]
            # Per round (both ran within minutes of each other): robust to the machine's drift.
            per_round = sorted(rate / base["round_rates"][r] for r, rate in row.get("round_rates", {}).items()
                               if r in base.get("round_rates", {}))
            if per_round:
                row["speedup_rounds"] = f"{median(per_round):.2f} ({per_round[0]:.2f}–{per_round[-1]:.2f})"
            row["mem_ratio"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] else None
    return out


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- results
def result_paths(name: str, env: dict[str, Any], out_dir: Path | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_{env['date'][:10]}_{env['host_kind']}"
    return out_dir / f"{stem}.json", out_dir / f"{stem}.md"


def write_results(name: str, env: dict[str, Any], records: list[dict[str, Any]], columns: list[str],
                  notes: list[str] = (), out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write the JSON (environment + every record) and a markdown table of ``columns``."""
    json_path, md_path = result_paths(name, env, out_dir)
    json_path.write_text(json.dumps({"environment": env, "results": records, "notes": list(notes)}, indent=2) + "\n")
    lines = [f"# {name} — {env['date'][:10]} — {env.get('gpu') or env['cpu']} ({env['host_kind']})", "",
             f"torch {env['torch']}, {env['cpu_cores']} CPU cores, device {env['device']}; "
             f"open_clip {env.get('open_clip')}, transformers {env.get('transformers')}; "
             f"malloc {' '.join(f'{k}={v}' for k, v in env.get('malloc_env', {}).items()) or 'glibc defaults'}", "",
             f"Command: `{env['command']}`", "", markdown_table(records, columns), ""]
    lines += [f"- {n}" for n in notes]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def markdown_table(records: list[dict[str, Any]], columns: list[str]) -> str:
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for rec in records:
        rows.append("| " + " | ".join(_fmt(rec.get(c)) for c in columns) + " |")
    return "\n".join(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
