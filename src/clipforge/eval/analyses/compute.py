"""Training compute of a model: FLOPs per sample counted on its architecture, and samples seen.

FLOPs count 2 per multiply-add (the CLIP paper's convention) over the matrix operations (matmul,
convolution, attention, CPU attention kernel included) that ``torch.utils.flop_counter`` sees. A
training sample costs the forward and backward pass of both towers, counted on a freshly built copy
of the architecture (random weights, CPU, eval mode) with an image at the model's resolution and a
caption filling its context (an upper bound when training trims token batches to the longest
caption). It is the work clipforge's towers do: their last block computes only the token they read
(the class token, the end-of-text token), so ViT-B/32 counts 13.8 GFLOP forward per sample (image
8.2, text 5.5) where the full stacks are 14.8 (8.8 + 6.0); tests/test_eval_analyses_stats.py
checks the count against the formula.
Samples seen come from the training run that wrote a checkpoint: its step (the checkpoint's name)
times the global batch (``data.batch_size`` × ``run.accum_steps`` in ``train_config.json`` × the
number of ranks in ``train_state.pt``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

# The blocks' inference path adds each residual in place (``x.addmm_(a, W.t())``); count it as addmm.
if torch.ops.aten.addmm_ not in flop_counter.flop_registry:
    flop_counter.register_flop_formula(torch.ops.aten.addmm_, get_raw=True)(flop_counter.flop_registry[torch.ops.aten.addmm])
# On a CPU, scaled_dot_product_attention runs a kernel of its own that torch's counter does not
# know (it counts the CUDA ones): count it, forward and backward, with the same formulas.
_CPU_ATTENTION = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_ATTENTION is not None and _CPU_ATTENTION not in flop_counter.flop_registry:
    _registry = flop_counter.flop_registry
    flop_counter.register_flop_formula(_CPU_ATTENTION, get_raw=True)(
        _registry[torch.ops.aten._scaled_dot_product_flash_attention])
    flop_counter.register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, get_raw=True)(
        _registry[torch.ops.aten._scaled_dot_product_flash_attention_backward])

_STEP_DIR = re.compile(r"^step_(\d+)$")


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of the matrix ops (matmul, conv, attention) that ``fn`` runs, forward and backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def model_flops_per_sample(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """FLOPs per sample of a CLIP-like model: image and text forward, and a training step's fwd+bwd.

    ``model`` has ``encode_image`` / ``encode_text``; ``images`` [N, 3, S, S], ``tokens`` [N, L]
    (the text cost scales with L: pass the token tensor the workload actually feeds).
    """
    n = images.shape[0]
    with torch.no_grad():
        image = count_flops(lambda: model.encode_image(images))
        text = count_flops(lambda: model.encode_text(tokens))

    def fwd_bwd() -> None:
        loss = model.encode_image(images).float().square().mean() + model.encode_text(tokens).float().square().mean()
        loss.backward()

    train = count_flops(fwd_bwd)
    model.zero_grad(set_to_none=True)
    return {"image_fwd": image / n, "text_fwd": text / n, "fwd": (image + text) / n, "train_step": train / n}


def flops_per_sample(config: Any, batch: int = 2) -> dict[str, float]:
    """:func:`model_flops_per_sample` of the architecture ``config`` (a :class:`~clipforge.config.ModelConfig`),
    built afresh, with images at its resolution and captions filling its context."""
    from clipforge.factory import create_model

    size, context = config.vision.image_size, config.text.context_length
    tokens = torch.ones(batch, context, dtype=torch.long)
    tokens[:, -1] = config.text.vocab_size - 1  # the end-of-text token (the largest id) in the last slot
    return model_flops_per_sample(create_model(config), torch.zeros(batch, 3, size, size), tokens)


def training_record(path: str | Path) -> dict | None:
    """{"steps", "global_batch", "samples_seen", "checkpoint"} of a checkpoint written by ``clipforge
    train`` (a ``final/`` directory, a ``checkpoints/step_N/`` directory or a run directory); None
    when ``path`` is not inside a training run."""
    path = Path(path)
    if not path.is_dir():
        return None
    if _STEP_DIR.match(path.name) and path.parent.name == "checkpoints":
        run_dir, checkpoint = path.parent.parent, path
    else:
        run_dir = path.parent if path.name == "final" else path
        steps = sorted((int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("step_*")
                       if p.is_dir() and (m := _STEP_DIR.match(p.name)))
        checkpoint = steps[-1][1] if steps else None
    config_file = run_dir / "train_config.json"
    if checkpoint is None or not config_file.is_file() or not (checkpoint / "train_state.pt").is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    state = torch.load(checkpoint / "train_state.pt", map_location="cpu", weights_only=True, mmap=True)
    steps = int(_STEP_DIR.match(checkpoint.name).group(1))
    batch = int(config["data"]["batch_size"]) * int(config["run"].get("accum_steps", 1)) * int(state.get("world_size", 1))
    return {"steps": steps, "global_batch": batch, "samples_seen": steps * batch, "checkpoint": str(checkpoint)}
