"""Combinations of config keys that cannot work, refused when a recipe is read, naming the keys.

Each section checks its own keys' types; what is checked here spans sections: the low-precision
options against the optimizer, the precision and the distributed strategy; the batch arithmetic;
a change of resolution against the image tower's family.
"""

from __future__ import annotations

from typing import Any

from clipforge.train.lowprec import DTYPES
from clipforge.train.precision import WEIGHT_DTYPES

MOMENT_DTYPES = tuple(DTYPES)
ROUNDINGS = (None, "stochastic", "nearest")


def problems(config: Any) -> list[str]:
    """Every problem of a :class:`~clipforge.train.config.TrainConfig`, one sentence each."""
    found = _values(config)
    if found:
        return found  # the combinations below assume known values
    return _low_precision(config) + _batch(config.run, config.data) + _resolution(config.model)


def _values(config: Any) -> list[str]:
    optim, precision = config.optim, config.precision
    found = []
    if optim.moment_dtype not in MOMENT_DTYPES:
        found.append(f"optim.moment_dtype = {optim.moment_dtype!r}: expected one of {', '.join(MOMENT_DTYPES)}")
    for key in ("text_weights", "vision_weights"):
        if getattr(precision, key) not in WEIGHT_DTYPES:
            found.append(f"precision.{key} = {getattr(precision, key)!r}: expected one of {', '.join(WEIGHT_DTYPES)} "
                         "(half-precision weights are bf16: fp16 ones would also need loss scaling of the update)")
    if optim.rounding not in ROUNDINGS:
        found.append(f"optim.rounding = {optim.rounding!r}: expected 'stochastic' or 'nearest'")
    if config.run.processes < 1:
        found.append(f"run.processes = {config.run.processes}: expected 1 or more")
    return found


def _bf16_towers(precision: Any) -> list[str]:
    return [f"precision.{key} = 'bf16'" for key in ("text_weights", "vision_weights") if getattr(precision, key) == "bf16"]


def _low_precision(config: Any) -> list[str]:
    optim, precision, run = config.optim, config.precision, config.run
    towers = _bf16_towers(precision)
    half = towers + ([f"optim.moment_dtype = {optim.moment_dtype!r}"] if optim.moment_dtype != "fp32" else [])
    found = []
    if optim.rounding is not None and not half:
        found.append(f"optim.rounding = {optim.rounding!r}, but nothing is stored in half precision to round: "
                     "precision.text_weights and precision.vision_weights are 'fp32' and optim.moment_dtype is 'fp32'")
    if optim.fused and half:
        found.append(f"optim.fused = true with {' and '.join(half)}: PyTorch's fused AdamW keeps its statistics in "
                     "each parameter's dtype and rounds to nearest; leave optim.fused unset to get the low-precision AdamW")
    if towers and precision.dtype != "bf16":
        found.append(f"{' and '.join(towers)} with precision.dtype = {precision.dtype!r}: bf16 weights are computed "
                     "in bf16 autocast (the loss in float32); set precision.dtype = 'bf16'")
    if run.distributed == "fsdp" and len(towers) == 1:
        found.append(f"run.distributed = 'fsdp' with {towers[0]} only: FSDP2 shards each unit in one dtype and its "
                     "root unit holds parameters of both towers; set both precision.text_weights and "
                     "precision.vision_weights to 'bf16', or use run.distributed = 'ddp'")
    if run.distributed == "fsdp" and optim.moment_dtype == "fp16":
        found.append("run.distributed = 'fsdp' with optim.moment_dtype = 'fp16': fp16 statistics keep a per-tensor "
                     "scale, which FSDP's shards cannot hold; use optim.moment_dtype = 'bf16'")
    return found


def _batch(run: Any, data: Any) -> list[str]:
    if run.global_batch is None:
        return []
    found = []
    if run.accum_steps != 1:
        found.append(f"run.global_batch = {run.global_batch} and run.accum_steps = {run.accum_steps}: set one of them "
                     "(with run.global_batch, accumulation = global_batch / (data.batch_size × processes))")
    per_step = data.batch_size * run.processes
    if run.global_batch % per_step:
        found.append(f"run.global_batch = {run.global_batch} is not a multiple of data.batch_size × run.processes = "
                     f"{data.batch_size} × {run.processes}")
    return found


def _resolution(model: Any) -> list[str]:
    """A resolution the named model's image tower cannot take, e.g. a 336 px continuation of a ResNet."""
    size = model.vision.get("image_size")
    if size is None:
        return []
    from clipforge import families
    from clipforge.factory import resolve_config

    try:
        vision = resolve_config(model.name, vision=dict(model.vision)).vision
    except (KeyError, ValueError, TypeError):
        return []  # an unknown name or field is reported, with its own message, when the model is built
    family = families.of(vision)
    try:
        family.check_image_size(vision, size)
    except ValueError as err:
        what = f"continuing model.pretrained = {model.pretrained!r} at" if model.pretrained else "training at"
        return [f"model.vision.image_size = {size} for model.name = {model.name!r} ({family.title}): {what} "
                f"{size} px is not possible: {err}"]
    return []
