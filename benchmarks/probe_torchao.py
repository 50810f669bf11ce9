"""Why clipforge's low-precision AdamW is its own (clipforge.train.lowprec): what torchao's offers.

Checks, with torchao installed beside the CPU torch (``pip install --no-deps torchao==0.18.0``):
1. the dtype of torchao ``_AdamW``'s statistics for float32 parameters (bf16 statistics are what the
   paper kept; torchao's 8/4-bit optimizers quantize blockwise instead, a different technique);
2. the time of its first step on a two-layer model (each parameter's step is torch.compile'd);
3. whether its bf16 stochastic rounding depends on the global RNG: two runs with identical gradients
   but different global seeds (as the trainer seeds each rank for dropout) round differently, so
   data-parallel replicas would drift apart.

    python benchmarks/probe_torchao.py      # result: benchmarks/results/torchao_probe_2026-12-01_cpu2.txt
"""

import time

import torch
from torchao.optim import _AdamW


def main() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    optimizer = _AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 64)).sum().backward()
    start = time.time()
    optimizer.step()
    dtypes = {v["exp_avg"].dtype for v in optimizer.state.values()}
    print(f"float32 parameters: statistics {dtypes}; first step {time.time() - start:.1f} s")

    def run(global_seed: int):
        torch.manual_seed(0)
        layer = torch.nn.Linear(64, 64).bfloat16()
        opt = _AdamW(layer.parameters(), lr=1e-4, bf16_stochastic_round=True)
        layer(torch.randn(4, 64, dtype=torch.bfloat16)).sum().backward()
        torch.manual_seed(global_seed)
        opt.step()
        return layer.weight.detach().clone(), {v["exp_avg"].dtype for v in opt.state.values()}

    a, dtypes = run(1)
    b, _ = run(2)
    print(f"bf16 parameters: statistics {dtypes}; same gradients, different global seeds: "
          f"{(a != b).sum().item()} of {a.numel()} weights differ")


if __name__ == "__main__":
    main()
