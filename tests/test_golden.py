"""A stored loss curve: a short deterministic CPU run must repeat it to the bit.

Resume and rank tests compare two runs of the current code, so a change to the numerics (a layer,
the loss, the optimizer, the schedule, the data order) moves both sides and passes them; this curve
was written by the code of its commit and catches that. Regenerate it, after checking that a change
of numbers is intended, with ``.venv/bin/python tests/test_golden.py --write``.

Bits depend on the CPU's vector instructions and the torch build, so the curve is checked exactly
where both match the machine that wrote it, and to 1e-5 relative elsewhere (the message says which).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "loss_curve_tiny_vit.json"
STEPS = 8


def _environment() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def run_curve(tmp_path: Path) -> dict:
    """Train tiny-vit (CLIP loss, AdamW, cosine schedule with warm-up) for STEPS steps on one thread."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_train_faults import TensorLoader, _trainer

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = _trainer(tmp_path, TensorLoader(STEPS, 8, 530), [], **{
            "model.name": "tiny-vit", "model.vision.image_size": "64", "run.steps": str(STEPS),
            "schedule.warmup_steps": "3", "optim.lr": "1e-3", "run.seed": "3"})
        trainer.train()
    finally:
        torch.set_num_threads(previous)
    from clipforge.train.logging import read_metrics

    records = [r for r in read_metrics(tmp_path / "run") if r.get("kind") == "train"]
    weights = sum(float(v.double().sum()) for v in trainer.clip.state_dict().values())
    return {"loss_hex": [r["loss_hex"] for r in records], "loss": [r["loss"] for r in records],
            "weights_sum": weights.hex(), **_environment()}


def test_the_loss_curve_repeats_the_stored_one(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    curve = run_curve(tmp_path)
    assert len(curve["loss"]) == STEPS
    same_machine = all(golden[k] == v for k, v in _environment().items())
    if same_machine:
        assert curve["loss_hex"] == golden["loss_hex"], (
            f"the loss curve changed: {curve['loss']} != stored {golden['loss']} (torch {curve['torch']}, "
            f"{curve['cpu_capability']}): a numerics change; if intended, rewrite {GOLDEN.name}")
        assert curve["weights_sum"] == golden["weights_sum"]
    else:
        assert curve["loss"] == pytest.approx(golden["loss"], rel=1e-5), (
            f"stored on torch {golden['torch']} {golden['cpu_capability']}, run on {curve['torch']} "
            f"{curve['cpu_capability']}: compared to 1e-5, not bitwise")


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run_curve(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {GOLDEN}: losses {result['loss']}")
