"""`clipforge embed` across torchrun ranks (gloo, 2 real processes): the parts equal the one-process
output bitwise, and a rank killed mid-run resumes without redoing finished parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipforge.serve.embed import read_embeddings
from clipforge.serve.embed_ranks import PAUSE_ENV
from clipforge.serve.sample import make_model_dir, make_shape_images

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default too: the same numerics in every process


def _embed(model: Path, images: Path, out: Path, nproc: int, env: dict | None = None) -> subprocess.Popen:
    args = ["-m", "clipforge", "embed", str(model), "--images", str(images), "--out", str(out),
            "--part-size", "5", "--batch-size", "5", "--workers", "1"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc-per-node={nproc}"]
    return subprocess.Popen(launcher + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**ENV, **(env or {})})


def _finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _parts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("part-*"))}


def _rank_parts(folder: Path, rank: int) -> list[str]:
    try:
        return sorted(json.loads((folder / f"manifest-rank-{rank:03d}.json").read_text())["parts"])
    except (OSError, ValueError):
        return []


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_a_killed_rank_resumes(tmp_path, reference_dir):
    model = make_model_dir(tmp_path / "model", "tiny-vit", reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
    images = tmp_path / "images"
    make_shape_images(images, 32)
    (images / "zz_broken.png").write_text("<html>not an image</html>")
    single = _embed(model, images, tmp_path / "single", 1)
    ranked = _embed(model, images, tmp_path / "ranked", 2, {PAUSE_ENV: "1:1:120"})  # rank 1 stops after one part
    code, out = _finish(single)
    assert code == 0, out[-3000:]
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and _rank_parts(tmp_path / "ranked", 1) != ["part-00001"]:
        time.sleep(0.1)
    assert _rank_parts(tmp_path / "ranked", 1) == ["part-00001"], ranked.poll()
    pid = int((tmp_path / "ranked" / ".lock-rank-001").read_text())
    os.kill(pid, signal.SIGKILL)  # rank 1 dies; torchrun ends the job
    code, out = _finish(ranked)
    assert code != 0
    manifest = json.loads((tmp_path / "ranked" / "manifest.json").read_text()) \
        if (tmp_path / "ranked" / "manifest.json").exists() else {"complete": False}
    assert not manifest["complete"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ranked").glob("part-*")}
    assert "part-00001.npy" in before

    code, out = _finish(_embed(model, images, tmp_path / "ranked", 2))
    assert code == 0, out[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ranked").glob("part-*")}
    assert {k: after[k] for k in before} == before  # finished parts were not redone
    assert _parts(tmp_path / "ranked") == _parts(tmp_path / "single")  # bitwise, file by file
    one, two = read_embeddings(tmp_path / "single"), read_embeddings(tmp_path / "ranked")
    assert one.ids == two.ids and (one.vectors == two.vectors).all()
    strip = lambda m: {k: {f: v for f, v in p.items() if f != "written_at"} for k, p in m["parts"].items()}  # noqa: E731
    assert strip(two.manifest) == strip(one.manifest) and two.manifest["rows"] == one.manifest["rows"] == 32
    assert not list((tmp_path / "ranked").glob("*.tmp"))
