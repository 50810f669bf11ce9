"""Half-precision Adam statistics and stochastically rounded bf16 weights (clipforge.train.lowprec).

Stochastic rounding is tested statistically: every draw is one of the two neighbours, and the mean of
many draws equals the value within the expected error (the neighbours' gap · sqrt(p(1-p)/n)). The
optimizer is tested against torch.optim.AdamW (bitwise, in float32), against its own float32 run
(half-precision statistics), for the fp16 second moment's range, and for bitwise state round trips.
"""

from __future__ import annotations

import io

import pytest
import torch

from clipforge.train.lowprec import LowPrecisionAdamW, stochastic_round

DRAWS = 2000


def _values(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, generator=g) * torch.logspace(-3, 3, 400)  # six decades, both signs
    if dtype == torch.float16:
        x = torch.cat([x, torch.randn(100, generator=g) * 1e-6])  # fp16 subnormals (below 6.1e-5)
    return x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(dtype):
    x = _values(dtype)
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([stochastic_round(x, dtype, g).float() for _ in range(DRAWS)])  # [DRAWS, N]
    low, high = draws.min(0).values, draws.max(0).values
    nearest = x.to(dtype).float()
    # every draw is x's lower or upper neighbour in dtype (nearest rounding gives one of them)
    assert torch.all((draws == low) | (draws == high))
    assert torch.all((nearest == low) | (nearest == high))
    assert torch.all((low <= x) & (x <= high))
    gap = (high - low).clamp_min(torch.finfo(torch.float32).tiny)
    p = (x - low) / gap  # the probability of rounding up
    sigma = gap * (p * (1 - p) / DRAWS).sqrt()
    error = (draws.mean(0) - x).abs()
    assert torch.all(error <= 5 * sigma + 1e-7 * x.abs()), (error / sigma).max()
    # unbiased on average and far better than nearest rounding: the mean error shrinks as 1/sqrt(draws)
    assert error.mean() < 0.1 * (nearest - x).abs().mean()
    exact = x.to(dtype).float()  # values the dtype holds are returned unchanged
    assert torch.equal(stochastic_round(exact, dtype, g).float(), exact)


def test_stochastic_rounding_keeps_updates_that_nearest_rounding_loses():
    """1 + 1e-4, a thousand times: below half a bf16 step (2^-8), so nearest rounding never moves."""
    g = torch.Generator().manual_seed(2)
    nearest = torch.ones(256, dtype=torch.bfloat16)
    stochastic = torch.ones(256, dtype=torch.bfloat16)
    for _ in range(1000):
        nearest = (nearest.float() + 1e-4).to(torch.bfloat16)
        stochastic = stochastic_round(stochastic.float() + 1e-4, torch.bfloat16, g)
    assert torch.all(nearest == 1.0)
    assert stochastic.float().mean().item() == pytest.approx(1.1, abs=0.01)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def _groups(model: torch.nn.Module) -> list[dict]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.2}, {"params": rest, "weight_decay": 0.0}]


def _train(model, optimizer, steps: int, seed: int = 5, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
        optimizer.zero_grad()
        ((model(x.to(next(model.parameters()).dtype)).float() - y).square().mean() * scale).backward()
        optimizer.step()


def test_float32_statistics_follow_torch_adamw_bitwise():
    ours, theirs = _model(), _model()
    kwargs = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-6)
    _train(theirs, torch.optim.AdamW(_groups(theirs), foreach=True, **kwargs), 6)
    _train(ours, LowPrecisionAdamW(_groups(ours), moment_dtype=torch.float32, **kwargs), 6)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


@pytest.mark.parametrize("moment_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_statistics_track_the_float32_run(moment_dtype):
    reference, ours = _model(), _model()
    kwargs = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-8)
    _train(reference, LowPrecisionAdamW(_groups(reference), moment_dtype=torch.float32, **kwargs), 40)
    optimizer = LowPrecisionAdamW(_groups(ours), moment_dtype=moment_dtype, **kwargs)
    _train(ours, optimizer, 40)
    state = optimizer.state[ours[0].weight]
    assert state["exp_avg"].dtype == moment_dtype
    start = _model()
    for layer in (0, 2):
        moved = (reference[layer].weight - start[layer].weight).abs().mean()
        difference = (reference[layer].weight - ours[layer].weight).abs().mean()
        assert difference < 0.02 * moved  # the runs differ by 2% of how far the weights moved


def test_fp16_statistics_keep_the_second_moment_of_tiny_gradients():
    """A gradient of 1e-6 has a second moment of 1e-12, far below fp16's smallest subnormal (6e-8):
    stored plainly it would be 0 and the step lr·m/ε = 100·lr. The scaled, square-rooted storage keeps
    Adam's normalised step of about lr."""
    steps = []
    for moment_dtype in (torch.float32, torch.float16):
        param = torch.nn.Parameter(torch.zeros(64))
        optimizer = LowPrecisionAdamW([param], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                                      moment_dtype=moment_dtype)
        for _ in range(3):
            param.grad = torch.full_like(param, 1e-6)
            optimizer.step()
        steps.append(-param.detach().clone())
    assert optimizer.state[param]["exp_avg"].dtype == torch.float16
    assert torch.tensor(1e-12).to(torch.float16).item() == 0.0  # what plain fp16 storage would hold
    torch.testing.assert_close(steps[1], steps[0], rtol=2e-3, atol=0)
    assert steps[0].mean().item() == pytest.approx(3 * 1e-3 / (1 + 1e-2), rel=1e-3)


@pytest.mark.parametrize("moment_dtype", [torch.bfloat16, torch.float16])
def test_bf16_weights_and_half_statistics_resume_bitwise(moment_dtype):
    """Stop after 3 steps, save the state, load it into a fresh optimizer: the next steps (stochastic
    rounding included) are bitwise those of the uninterrupted run; the statistics keep their dtype."""
    def make():
        model = _model().to(torch.bfloat16)
        return model, LowPrecisionAdamW(_groups(model), lr=1e-2, moment_dtype=moment_dtype, seed=7)

    full, full_opt = make()
    _train(full, full_opt, 3)
    _train(full, full_opt, 3, seed=9)
    part, part_opt = make()
    _train(part, part_opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": part.state_dict(), "optimizer": part_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = make()
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    assert {v["exp_avg"].dtype for v in resumed_opt.state.values()} == {moment_dtype}
    _train(resumed, resumed_opt, 3, seed=9)
    assert all(p.dtype == torch.bfloat16 for p in resumed.parameters())
    assert all(torch.equal(a, b) for a, b in zip(full.parameters(), resumed.parameters()))


def test_rounding_streams_depend_on_the_seed_only():
    """Two optimizers with the same seed round identically (data-parallel replicas stay equal); another
    seed rounds differently."""
    runs = []
    for seed in (3, 3, 4):
        model = _model().to(torch.bfloat16)
        _train(model, LowPrecisionAdamW(_groups(model), lr=1e-3, seed=seed), 2)
        runs.append(torch.cat([p.detach().float().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# ---- the options in a recipe: refused combinations, the trainer, resume -------------------------------

@pytest.mark.parametrize("overrides, named", [
    ({"optim.rounding": "stochastic"}, ["optim.rounding", "precision.text_weights", "optim.moment_dtype"]),
    ({"optim.fused": "true", "optim.moment_dtype": "bf16"}, ["optim.fused", "optim.moment_dtype"]),
    ({"precision.text_weights": "bf16"}, ["precision.text_weights", "precision.dtype"]),
    ({"precision.text_weights": "fp16", "precision.dtype": "bf16"}, ["precision.text_weights"]),
    ({"precision.dtype": "bf16", "precision.text_weights": "bf16", "run.distributed": "fsdp"},
     ["run.distributed", "precision.text_weights", "precision.vision_weights"]),
    ({"optim.moment_dtype": "fp16", "run.distributed": "fsdp"}, ["run.distributed", "optim.moment_dtype"]),
    ({"optim.moment_dtype": "fp8"}, ["optim.moment_dtype"]),
    ({"run.global_batch": "64", "run.accum_steps": "2"}, ["run.global_batch", "run.accum_steps"]),
    ({"run.global_batch": "100", "data.batch_size": "64"}, ["run.global_batch", "data.batch_size"]),
    ({"model.name": "RN50", "model.pretrained": "runs/rn50/final", "model.vision.image_size": "336"},
     ["model.vision.image_size", "model.name", "model.pretrained", "multiple of 32"]),
    ({"model.name": "ViT-B/32", "model.vision.image_size": "300"}, ["model.vision.image_size", "patch size 32"]),
])
def test_bad_combinations_are_refused_when_the_config_is_read(overrides, named):
    from clipforge.train.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    for key in named:
        assert key in str(err.value)


def test_good_combinations_are_accepted():
    from clipforge.train.config import load_config

    config = load_config(None, {"precision.dtype": "bf16", "precision.text_weights": "bf16",
                                "precision.vision_weights": "bf16", "run.distributed": "fsdp",
                                "optim.moment_dtype": "bf16", "optim.rounding": "nearest",
                                "model.name": "ViT-L/14", "model.pretrained": "x", "model.vision.image_size": "336"})
    assert config.optim.rounding == "nearest" and config.model.vision == {"image_size": 336}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipforge.data.synthetic import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig(num_train=96, num_val=0, shard_size=48, eval_per_class=1, num_retrieval=4), workers=1)
    return out


def _run(world, out, stop_at=None, resume=False, **changes):
    from clipforge.train.config import load_config
    from clipforge.train.loop import Trainer

    overrides = {
        "run.steps": 6, "run.seed": 1, "run.threads": 1, "run.global_batch": 16, "run.out": str(out),
        "model.name": "tiny-vit", "model.text.context_length": 24,
        "tokenizer.source": "learn", "tokenizer.vocab_size": 600, "tokenizer.captions": str(world / "train" / "captions.txt"),
        "data.shards": str(world / "train" / "{00000..00001}.tar"), "data.batch_size": 8, "data.workers": 0,
        "optim.lr": 3e-3, "schedule.warmup_steps": 2, "precision.dtype": "bf16",
        "checkpoint.every": 0, "log.every": 100, "log.tensorboard": False, **changes,
    }
    if resume:
        overrides["checkpoint.resume"] = "latest"
    trainer = Trainer(load_config(None, overrides), echo=lambda message: None)
    trainer.train(stop_at=stop_at)
    return trainer


@pytest.mark.slow
def test_trainer_low_precision_run_resumes_bitwise_and_tracks_float32(world, tmp_path, one_thread):
    """bf16 statistics and a bf16 text tower (stochastic rounding), 2 micro-batches a step: stopped at
    step 3 and resumed, the run repeats the uninterrupted one bit for bit; its losses track those of
    the same run with float32 weights and statistics."""
    from clipforge.train.logging import read_metrics
    from clipforge.train.lowprec import LowPrecisionAdamW
    from safetensors.torch import load_file

    low = {"optim.moment_dtype": "bf16", "precision.text_weights": "bf16"}
    full = _run(world, tmp_path / "full", **low)
    assert isinstance(full.optimizer, LowPrecisionAdamW) and full.accum_steps == 2
    assert full.clip.token_embedding.weight.dtype == torch.bfloat16 and full.clip.visual.proj.dtype == torch.float32
    assert {s["exp_avg"].dtype for s in full.optimizer.state.values()} == {torch.bfloat16}
    _run(world, tmp_path / "part", stop_at=3, **low)
    _run(world, tmp_path / "part", resume=True, **low)
    losses = [r["loss_hex"] for r in read_metrics(tmp_path / "full")]
    assert len(losses) == 6 and [r["loss_hex"] for r in read_metrics(tmp_path / "part")] == losses
    a, b = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("full", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["token_embedding.weight"].dtype == torch.bfloat16

    _run(world, tmp_path / "fp32")
    reference = [r["loss"] for r in read_metrics(tmp_path / "fp32")]
    ours = [r["loss"] for r in read_metrics(tmp_path / "full")]
    assert ours != reference  # the options changed the run ...
    assert ours == pytest.approx(reference, abs=0.05)  # ... and it tracks the float32 one
