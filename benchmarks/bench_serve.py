"""Load test of `clipforge serve` on loopback: sustainable throughput, latency percentiles, shedding at
10x load, recovery, and the server's memory.

    python benchmarks/bench_serve.py [--model tiny-vit] [--images 200] [--seconds 10] [--concurrency 2]

Phases (the server runs in its own process, so its RSS is measured alone):
1. baseline: closed loop, ``--clients`` concurrent clients each sending its next text search as soon
   as the previous one is answered: the sustainable throughput X and its latency percentiles;
2. overload: open loop at 10·X requests/s (due on schedule, whatever the answers, over
   ``--connections`` keep-alive connections); the service must answer the excess with 429/503, keep
   serving some requests, and its RSS must stay bounded;
3. recovery: the baseline again; latency must return to the baseline's.
Writes benchmarks/results/serve_<date>.json naming the hardware. The load generator (pre-encoded
requests on raw asyncio streams, far cheaper than an HTTP library) shares the machine with the server:
on a machine of few cores it takes CPU from the server, which the overload figures then include.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MERGES = ROOT.parent / "shared" / "reference" / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
QUERIES = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny-vit", help="registered config (random weights)")
    p.add_argument("--merges", default=str(MERGES), help="BPE merges file for the tokenizer")
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each phase")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients in the baseline")
    p.add_argument("--concurrency", type=int, default=2, help="server --max-concurrency")
    p.add_argument("--queue", type=int, default=16, help="server --max-queue")
    p.add_argument("--connections", type=int, default=96, help="keep-alive connections in the overload phase")
    p.add_argument("--overload", type=float, default=10.0, help="multiple of the sustainable rate offered")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(index: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "clipforge", "serve", "--index", str(index), "--port", str(port),
           "--max-concurrency", str(args.concurrency), "--max-queue", str(args.queue)]
    # The access log goes to a file: a pipe nobody reads fills up and stalls the server.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /v1/health within 120 s")


def request_bytes(port: int) -> list[bytes]:
    """Pre-encoded HTTP/1.1 requests (one per query): the load generator must stay far cheaper than
    the service, or on a small machine it measures itself."""
    out = []
    for query in QUERIES:
        body = json.dumps({"text": query, "k": 10}).encode()
        head = (f"POST /v1/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        out.append(head + body)
    return out


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it (as clients do)."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def send(self, request: bytes) -> int | str:
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.write(request)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout=60)
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            await self.reader.readexactly(int(headers.get("content-length", 0)))
            if headers.get("connection") == "close":
                self.close()
            return int(lines[0].split(" ", 2)[1])
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as err:
            self.close()
            return type(err).__name__

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(port: int, clients: int, seconds: float) -> list:
    """``clients`` connections, each sending its next request when the last is answered."""
    records: list = []
    requests = request_bytes(port)
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        conn = Connection(port)
        while time.perf_counter() < stop:
            start = time.perf_counter()
            status = await conn.send(random.choice(requests))
            records.append((status, time.perf_counter() - start, 0.0))
        conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return records


async def open_loop(port: int, rate: float, seconds: float, pid: int, connections: int) -> tuple[list, list, float]:
    """Requests due at ``rate`` per second, whatever the answers, over a pool of keep-alive connections.

    Latency counts from the time a request was due, so a request that waited for a free connection
    (the client falling behind) is charged that wait; ``lag`` records that wait alone.
    """
    records: list = []
    rss: list = []
    requests = request_bytes(port)
    due: asyncio.Queue = asyncio.Queue()
    start = time.perf_counter()

    async def worker() -> None:
        conn = Connection(port)
        while (scheduled := await due.get()) is not None:
            lag = time.perf_counter() - scheduled
            status = await conn.send(random.choice(requests))
            records.append((status, time.perf_counter() - scheduled, lag))
        conn.close()

    workers = [asyncio.create_task(worker()) for _ in range(connections)]
    sent, next_sample = 0, start
    while (now := time.perf_counter()) < start + seconds:
        for i in range(int((now - start) * rate) - sent):
            due.put_nowait(start + (sent + i) / rate)
        sent = max(sent, int((now - start) * rate))
        if now >= next_sample:
            rss.append(rss_mb(pid))
            next_sample += 0.25
        await asyncio.sleep(0.001)
    offered = sent / (time.perf_counter() - start)
    for _ in workers:
        due.put_nowait(None)
    await asyncio.gather(*workers)
    return records, rss, offered


def summarize(records: list, seconds: float) -> dict:
    statuses: dict = {}
    for status, *_ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = np.array([lat for status, lat, _ in records if status == 200]) * 1000
    shed = np.array([lat for status, lat, _ in records if status in (429, 503)]) * 1000
    lag = np.array([lag for *_, lag in records if lag == lag]) * 1000
    # From the request's write to its answer: the server's part, without the client's own queueing.
    shed_reply = np.array([lat - lag for status, lat, lag in records if status in (429, 503)]) * 1000
    pct = lambda a, q: round(float(np.percentile(a, q)), 2) if len(a) else None  # noqa: E731
    return {"requests": len(records), "statuses": statuses, "ok_per_s": round(len(ok) / seconds, 1),
            "ok_latency_ms": {"p50": pct(ok, 50), "p90": pct(ok, 90), "p99": pct(ok, 99)},
            "shed_latency_ms": {"p50": pct(shed, 50), "p90": pct(shed, 90), "p99": pct(shed, 99)},
            "shed_reply_ms": {"p50": pct(shed_reply, 50), "p99": pct(shed_reply, 99)},
            "client_send_lag_ms": {"p50": pct(lag, 50), "p99": pct(lag, 99)}}


def hardware() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "load_average_at_start": os.getloadavg()}


def main() -> int:
    args = parse_args()
    from clipforge.serve.sample import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        print(f"building the demo index ({args.images} images, {args.model}) ...", flush=True)
        demo = build_demo(tmp, args.merges, images=args.images, model=args.model)
        proc, url = start_server(demo["index"], args, Path(tmp) / "server.log")
        try:
            results = run_phases(url, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    results.update(hardware=hardware(), settings=vars(args), date=datetime.now(timezone.utc).isoformat())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve_{datetime.now().strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"wrote {path}")
    return 0


def run_phases(url: str, pid: int, args: argparse.Namespace) -> dict:
    port = int(url.rsplit(":", 1)[1])
    asyncio.run(closed_loop(port, args.clients, 2.0))  # warm-up: first-call costs, caches
    rss_start = rss_mb(pid)
    print("baseline (closed loop) ...", flush=True)
    baseline = summarize(asyncio.run(closed_loop(port, args.clients, args.seconds)), args.seconds)
    rate = args.overload * baseline["ok_per_s"]
    print(f"overload: offering {rate:.0f} requests/s ...", flush=True)
    records, rss, offered = asyncio.run(open_loop(port, rate, args.seconds, pid, args.connections))
    overload = summarize(records, args.seconds)
    overload.update(target_rate=round(rate, 1), offered_rate=round(offered, 1))
    print("recovery (closed loop) ...", flush=True)
    recovery = summarize(asyncio.run(closed_loop(port, args.clients, args.seconds)), args.seconds)
    return {"baseline": baseline, "overload": overload, "recovery": recovery,
            "rss_mb": {"start": round(rss_start, 1), "peak_overload": round(max(rss), 1),
                       "end": round(rss_mb(pid), 1)}}


def print_table(r: dict) -> None:
    print(f"\n{'phase':<10} {'req':>7} {'ok/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  statuses")
    for phase in ("baseline", "overload", "recovery"):
        s = r[phase]
        lat = s["ok_latency_ms"]
        print(f"{phase:<10} {s['requests']:>7} {s['ok_per_s']:>8} {lat['p50']!s:>8} {lat['p90']!s:>8} "
              f"{lat['p99']!s:>8}  {s['statuses']}")
    o = r["overload"]
    print(f"overload offered {o['offered_rate']} req/s (target {o['target_rate']}); 429/503 latency p50/p99 "
          f"{o['shed_latency_ms']['p50']} / {o['shed_latency_ms']['p99']} ms = waiting for a free client connection "
          f"{o['client_send_lag_ms']['p50']} / {o['client_send_lag_ms']['p99']} ms + the server's reply "
          f"{o['shed_reply_ms']['p50']} / {o['shed_reply_ms']['p99']} ms")
    print(f"server RSS MB: start {r['rss_mb']['start']}, peak under overload {r['rss_mb']['peak_overload']}, "
          f"end {r['rss_mb']['end']}")
    print(f"hardware: {r['hardware']['cpu']}, {r['hardware']['cores']} cores")


if __name__ == "__main__":
    sys.exit(main())
