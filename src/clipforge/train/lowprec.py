"""AdamW with half-precision statistics and stochastically rounded bf16 weights (paper, section 2.5).

The paper fit a batch of 32,768 on V100s with, among other things, "half-precision Adam statistics"
and "half-precision stochastically rounded text encoder weights". :class:`LowPrecisionAdamW` does
both, one parameter at a time:

* the first and second moments are *stored* in bf16 (8 bits of mantissa, float32's range) or fp16
  (11 bits, but a narrow range: the second moment of a gradient of 1e-5 is 1e-10, below fp16's
  smallest subnormal). fp16 moments are kept with a per-tensor power-of-two scale, and for the second
  moment its square root is stored, which halves the range in decades that must fit;
* parameters stored in bf16 (a tower cast by :func:`clipforge.train.precision.store_towers`) have no
  float32 master copy: each update is computed in float32 and rounded back to bf16;
* the update itself is always computed in float32, with the arithmetic of ``torch.optim.AdamW``.

Rounding back is stochastic by default: a value between two representable neighbours goes to the
upper one with probability proportional to its distance from the lower one, so E[round(x)] = x. With
round-to-nearest an update smaller than half a bf16 step (0.2% of the value) is lost every time:
with β2 = 0.999 the second moment changes by 0.1% a step and would freeze, and a weight whose updates
are below 0.2% of its size would never move. Stochastic rounding keeps both right on average.

The random numbers of one parameter's rounding are a function of (``seed``, the parameter's index,
its step count and, for a sharded parameter, the rank): nothing random is stored, a resumed run rounds
exactly as the uninterrupted one, and data-parallel replicas (which apply the same update) stay equal.

Why not an existing implementation (checked with torchao 0.18 and torch 2.13; the probe is
``benchmarks/probe_torchao.py``, its result ``benchmarks/results/torchao_probe_2026-12-01_cpu2.txt``):
``torch.optim.AdamW`` keeps its statistics in each parameter's dtype and rounds to nearest; torchao's
``_AdamW(bf16_stochastic_round=True)`` likewise ties the statistics' dtype to the parameter's (no bf16
statistics for float32 weights; its 8/4-bit optimizers quantize blockwise instead, a different
technique), draws its rounding noise from the global RNG (which the trainer seeds per rank for dropout,
so DDP replicas would round differently and drift apart), and compiles every parameter's step with
torch.compile (54 s for the first step of a two-layer model on this 2-core CPU).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_MASK64 = (1 << 64) - 1
PIECE = 1 << 20  # elements updated at once: float32 temporaries of 4 MiB


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` (float32) rounded to ``dtype`` (bf16 or fp16) to one of its two neighbours, unbiased.

    The upper neighbour is chosen with probability (x - lower) / (upper - lower), so E[result] = x.
    Values ``dtype`` holds exactly are returned unchanged; ±inf and (canonical) NaN are kept.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"stochastic_round: no stochastic rounding to {dtype} (bf16 or fp16)")
    out = torch.empty_like(x, dtype=dtype)
    round_into(out, x, True, generator)
    return out


def round_into(out: torch.Tensor, x: torch.Tensor, stochastic: bool, generator: torch.Generator | None) -> None:
    """Write ``x`` (float32) into ``out`` (its dtype), stochastically rounded or to nearest."""
    if x.dtype != torch.float32:
        raise ValueError(f"rounding expects a float32 tensor, got {x.dtype}")
    if not stochastic or out.dtype == torch.float32:
        out.copy_(x)
    elif out.dtype == torch.bfloat16:
        _round_bf16_into(out, x, generator)
    elif out.dtype == torch.float16:
        out.copy_(_round_fp16(x, generator))
    else:
        raise ValueError(f"no stochastic rounding to {out.dtype} (bf16 or fp16)")


def _round_bf16_into(out: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None) -> None:
    # bf16 is the upper half of float32. Adding a uniform 16-bit integer to the bit pattern carries
    # into the upper half (one bf16 step away from zero) with probability (lower half) / 2^16, which
    # is the distance to the lower neighbour over the step; clearing the lower half then leaves a
    # float32 that bf16 holds exactly. ±inf and canonical NaNs keep their pattern. One int32
    # temporary: the optimizer runs this on its largest tensors.
    bits = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits.add_(x.contiguous().view(torch.int32)).bitwise_and_(-65536)
    out.copy_(bits.view(torch.float32))


def _round_fp16(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # fp16 is not a truncation of float32, so: round to nearest, find the neighbour on x's other
    # side (one step of the integer bit pattern: +1 moves away from zero, -1 towards it), and move
    # there with probability (distance to the nearest) / (distance between the two).
    near = x.to(torch.float16)
    error = x - near.float()  # exact in float32
    bits = near.view(torch.int16)
    away_from_zero = (error > 0) ^ (bits < 0)  # the sign bit makes the int16 negative
    other = (bits + torch.where(away_from_zero, 1, -1).to(torch.int16)).view(torch.float16)
    probability = error / (other.float() - near.float())
    uniform = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where((error != 0) & (uniform < probability), other, near)


def _fp16_scale(amax: torch.Tensor) -> torch.Tensor:
    """A power of two s with amax / s in [2^14, 2^15): the tensor's largest value well inside fp16's
    range (max 65504, so rounding up cannot overflow), its others down to 2^-24 · amax representable."""
    _, exponent = torch.frexp(amax)  # amax = m · 2^e, m in [0.5, 1)
    return torch.ldexp(torch.ones_like(amax), exponent - 15)


def _seed(base: int, index: int, step: int, rank: int) -> int:
    """A 64-bit seed from four integers (splitmix64's mixing, so nearby inputs give unrelated seeds)."""
    z = base & _MASK64
    for value in (index, step, rank):
        z = (z + 0x9E3779B97F4A7C15 + value) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z


def _adamw(weight: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hyper: tuple) -> None:
    """One AdamW step in place on float32 tensors, in torch.optim.AdamW's order of operations."""
    lr, beta1, beta2, eps, weight_decay, step = hyper
    weight.mul_(1 - lr * weight_decay)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = v.sqrt().div_((1 - beta2 ** step) ** 0.5).add_(eps)
    weight.addcdiv_(m, denom, value=-lr / (1 - beta1 ** step))


def _pieces(tensors: list[torch.Tensor], size: int = PIECE) -> list[list[torch.Tensor]]:
    """Equal slices of same-shaped tensors (flat views): the update is elementwise, and its float32
    temporaries then stay at ``size`` elements however large the tensor (a vocabulary embedding)."""
    if tensors[0].numel() <= size or not all(t.is_contiguous() for t in tensors):
        return [tensors]
    flat = [t.view(-1) for t in tensors]
    return [[f[i:i + size] for f in flat] for i in range(0, flat[0].numel(), size)]


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor (a view: in-place changes reach the DTensor), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


class LowPrecisionAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) with statistics stored in ``moment_dtype`` and bf16 parameters
    updated without a float32 copy; float32 parameters with float32 statistics follow
    ``torch.optim.AdamW``'s arithmetic exactly. ``stochastic``: round stored values stochastically
    (unbiased) rather than to nearest. ``seed``: the rounding's random streams (see the module doc).
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, moment_dtype: torch.dtype = torch.bfloat16, stochastic: bool = True,
                 seed: int = 0):
        if moment_dtype not in DTYPES.values():
            raise ValueError(f"moment_dtype {moment_dtype}: expected float32, bfloat16 or float16")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.moment_dtype, self.stochastic, self.seed = moment_dtype, stochastic, seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, local: torch.Tensor, index: int, step: int, sharded: bool) -> torch.Generator | None:
        """The seeded generator of one parameter's step; None when nothing is rounded stochastically."""
        if not self.stochastic or (local.dtype == torch.float32 and self.moment_dtype == torch.float32):
            return None
        device = local.device
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        rank = torch.distributed.get_rank() + 1 if sharded and torch.distributed.is_initialized() else 0
        return self._generators[device].manual_seed(_seed(self.seed, index, step, rank))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102  (torch.optim.Optimizer's)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            for param in group["params"]:
                index += 1
                if param.grad is not None:
                    self._update(param, group, index)
        return loss

    def _init_state(self, param: torch.Tensor) -> dict[str, torch.Tensor]:
        state = self.state[param]
        if not state:
            # "step" on the host, as torch's AdamW keeps it: reading it costs no device synchronisation.
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param, dtype=self.moment_dtype, memory_format=torch.preserve_format)
            second = "exp_avg_sq_root" if self.moment_dtype == torch.float16 else "exp_avg_sq"
            state[second] = torch.zeros_like(param, dtype=self.moment_dtype, memory_format=torch.preserve_format)
            if self.moment_dtype == torch.float16:
                if hasattr(param, "to_local"):
                    raise ValueError("fp16 statistics keep a per-tensor scale, which FSDP's shards cannot hold: use bf16")
                state["exp_avg_scale"] = torch.ones((), device=param.device)
                state["exp_avg_sq_root_scale"] = torch.ones((), device=param.device)
        return state

    def _update(self, param: torch.Tensor, group: dict[str, Any], index: int) -> None:
        """One AdamW step for one parameter (its local shard), computed in float32."""
        state = self._init_state(param)
        # A new tensor, not += 1: a loaded state may share one "step" tensor between parameters.
        state["step"] = state["step"] + 1
        step = int(state["step"].item())  # a host tensor: no device read
        hyper = (group["lr"], *group["betas"], group["eps"], group["weight_decay"], step)
        local = _local(param)
        generator = self._generator(local, index, step, sharded=hasattr(param, "to_local"))
        if self.moment_dtype == torch.float16:
            self._update_fp16(local, _local(param.grad), state, hyper, generator)
            return
        tensors = [local, _local(param.grad), _local(state["exp_avg"]), _local(state["exp_avg_sq"])]
        for weight, grad, m, v in _pieces(tensors):
            self._update_piece(weight, grad, m, v, hyper, generator)

    def _update_piece(self, stored: torch.Tensor, grad: torch.Tensor, m_stored: torch.Tensor, v_stored: torch.Tensor,
                      hyper: tuple, generator: torch.Generator | None) -> None:
        """float32 copies of what is stored in half precision, the update, the stored values rounded back."""
        weight, m, v = (t if t.dtype == torch.float32 else t.float() for t in (stored, m_stored, v_stored))
        _adamw(weight, grad.float(), m, v, hyper)
        for target, value in ((m_stored, m), (v_stored, v), (stored, weight)):
            if target is not value:
                round_into(target, value, self.stochastic, generator)

    def _update_fp16(self, stored: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
                     hyper: tuple, generator: torch.Generator | None) -> None:
        """fp16 statistics: m / s and sqrt(v) / s' stored, s and s' powers of two set from the tensor's
        largest value (so the whole tensor at once: its maximum decides the scale)."""
        m = _local(state["exp_avg"]).float().mul_(state["exp_avg_scale"])
        v = _local(state["exp_avg_sq_root"]).float().mul_(state["exp_avg_sq_root_scale"]).square_()
        weight = stored if stored.dtype == torch.float32 else stored.float()
        _adamw(weight, grad.float(), m, v, hyper)
        for key, value in (("exp_avg", m), ("exp_avg_sq_root", v.sqrt_())):
            scale = _fp16_scale(value.abs().amax())
            state[f"{key}_scale"].copy_(scale)
            round_into(_local(state[key]), value.div_(scale), self.stochastic, generator)
        if weight is not stored:
            round_into(stored, weight, self.stochastic, generator)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As ``Optimizer.load_state_dict``, but the statistics keep the dtype they were saved in (the
        base class casts them to each parameter's dtype, and fp16 → bf16 would lose bits)."""
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        fp16 = self.moment_dtype == torch.float16
        for saved_id, param in zip(saved_ids, params):
            saved = state_dict["state"].get(saved_id, {})
            if saved and ("exp_avg_sq_root" in saved) != fp16:
                stored = "fp16" if "exp_avg_sq_root" in saved else "bf16 or fp32"
                raise ValueError(f"the checkpoint's Adam statistics are stored in {stored}: resume with that "
                                 "optim.moment_dtype")
            for key, value in saved.items():
                if key != "step" and isinstance(value, torch.Tensor):
                    dtype = value.dtype if key.endswith("_scale") else self.moment_dtype
                    # a copy: the statistics are updated in place, and the caller's dict may be live state
                    self.state[param][key] = value.to(device=param.device, dtype=dtype, copy=True)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors (the local shards for FSDP)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                local = _local(value)
                total += local.numel() * local.element_size()
    return total


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters (local shards for FSDP)."""
    return sum(_local(p).numel() * _local(p).element_size() for p in module.parameters())
