"""SigLIP's chunked loss: the ring exchange over real gloo processes equals one process on the whole
batch (loss, gradients of the features, scale and bias, accuracies), in float64, with 3 ranks (texts
pass through a rank that is neither their sender nor their last holder). Two ranks training a SigLIP
model with it under DDP: tests/test_train_distributed.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.train.losses import siglip_loss
from clipforge.train.losses.ring import ring_siglip_loss

B, D = 4, 8


def _features(world: int):
    g = torch.Generator().manual_seed(world)
    images = torch.nn.functional.normalize(torch.randn(world * B, D, generator=g, dtype=torch.float64), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.8 * torch.randn(world * B, D, generator=g, dtype=torch.float64),
                                          dim=-1)
    return images, texts, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)


def _leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images, texts, scale, bias = _features(world)
        mine = slice(rank * B, (rank + 1) * B)
        image, text, scale, bias = _leaves(images[mine], texts[mine], scale, bias)
        loss, diagnostics = ring_siglip_loss(image, text, scale, bias)
        loss.backward()
        torch.save({"loss": loss.detach(), "diagnostics": diagnostics, "image": image.grad, "text": text.grad,
                    "scale": scale.grad, "bias": bias.grad}, Path(out_dir) / f"{world}_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [3])
def test_ring_exchange_equals_one_process(tmp_path, world):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    images, texts, scale, bias = _leaves(*_features(world))
    ref_loss, ref_diag = siglip_loss(images, texts, scale, bias)  # the whole [N, N] matrix in one process
    ref_loss.backward()
    ranks = [torch.load(tmp_path / f"{world}_{r}.pt", weights_only=True) for r in range(world)]
    # Each rank's loss covers its rows (÷ B); DDP averages gradients over ranks: compare the means.
    assert sum(r["loss"].item() for r in ranks) / world == pytest.approx(ref_loss.item(), abs=1e-12)
    # A feature's gradient lands on its own rank only; the rank-mean of the local losses is the
    # reference loss, so a rank's feature gradient is world × the reference's rows.
    torch.testing.assert_close(torch.cat([r["image"] for r in ranks]) / world, images.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat([r["text"] for r in ranks]) / world, texts.grad, atol=1e-12, rtol=0)
    for name, ref in (("scale", scale.grad), ("bias", bias.grad)):
        torch.testing.assert_close(sum(r[name] for r in ranks) / world, ref, atol=1e-12, rtol=0)
    for name in ("i2t_acc", "t2i_acc"):
        assert sum(r["diagnostics"][name].item() for r in ranks) / world == pytest.approx(ref_diag[name].item())
    assert 0 < ref_diag["i2t_acc"] < 1 and 0 < ref_diag["t2i_acc"] < 1  # the accuracies can tell ranks apart


def test_one_process_ring_is_the_single_block():
    images, texts, scale, bias = _features(1)
    ring, ring_diag = ring_siglip_loss(images, texts, scale, bias)
    full, full_diag = siglip_loss(images, texts, scale, bias)
    torch.testing.assert_close(ring, full, atol=1e-12, rtol=0)
    assert {k: v.item() for k, v in ring_diag.items()} == pytest.approx({k: v.item() for k, v in full_diag.items()})
    with pytest.raises(ValueError, match="same shape"):
        ring_siglip_loss(images, texts[:2], scale, bias)
