"""The paper's recipes (configs/paper_*.toml), one per released model.

Every number is checked against the paper's Appendix F tables (written out below), the
architecture against the registered model; every recipe then runs two steps of its ``runlocal``
variant (small towers, the paper's resolution and options), the ViT-L/14@336px one continuing the
ViT-L/14 run at a higher resolution, as the paper's extra epoch did.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clipforge import families
from clipforge.factory import resolve_config
from clipforge.train.build import model_config
from clipforge.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]

# Radford et al. 2021, arXiv 2103.00020, Appendix F (p. 48). Table 18, common to all models:
COMMON = {"batch": 32768, "epochs": 32, "weight_decay": 0.2, "warmup": 2000, "beta1": 0.9, "max_temperature": 100.0}
ADAM = {"resnet": (0.999, 1e-8), "vit": (0.98, 1e-6)}  # Table 18: (β2, ε) for ResNets and ViTs
# Table 19 (CLIP-ResNet): learning rate, embedding dim, input resolution, blocks, width, text (layers, width, heads)
# Table 20 (CLIP-ViT): learning rate, embedding dim, input resolution, (layers, width, heads), text (layers, width, heads)
PAPER = {
    "RN50": (5e-4, 1024, 224, ((3, 4, 6, 3), 2048), (12, 512, 8)),
    "RN101": (5e-4, 512, 224, ((3, 4, 23, 3), 2048), (12, 512, 8)),
    "RN50x4": (5e-4, 640, 288, ((4, 6, 10, 6), 2560), (12, 640, 10)),
    "RN50x16": (4e-4, 768, 384, ((6, 8, 18, 8), 3072), (12, 768, 12)),
    "RN50x64": (3.6e-4, 1024, 448, ((3, 15, 36, 10), 4096), (12, 1024, 16)),
    "ViT-B/32": (5e-4, 512, 224, (12, 768, 12), (12, 512, 8)),
    "ViT-B/16": (5e-4, 512, 224, (12, 768, 12), (12, 512, 8)),
    "ViT-L/14": (4e-4, 768, 224, (24, 1024, 16), (12, 768, 12)),
    "ViT-L/14@336px": (2e-5, 768, 336, (24, 1024, 16), (12, 768, 12)),
}
FILES = {"RN50": "paper_rn50", "RN101": "paper_rn101", "RN50x4": "paper_rn50x4", "RN50x16": "paper_rn50x16",
         "RN50x64": "paper_rn50x64", "ViT-B/32": "paper_vitb32", "ViT-B/16": "paper_vitb16",
         "ViT-L/14": "paper_vitl14", "ViT-L/14@336px": "paper_vitl14_336px"}


def _recipe(model: str) -> Path:
    return ROOT / "configs" / f"{FILES[model]}.toml"


def _architecture(vision, text, kind):
    """The Table 19/20 columns of a model config."""
    tower = (vision.layers, vision.width * 32) if kind == "resnet" else (vision.layers, vision.width, vision.num_heads)
    return tower, (text.layers, text.width, text.num_heads)


@pytest.mark.parametrize("model", list(PAPER))
def test_recipe_numbers_are_the_papers(model):
    config = load_config(_recipe(model))
    lr, embed, resolution, tower, text = PAPER[model]
    resolved = model_config(config.model)
    kind = resolved.vision.kind
    assert (resolved.embed_dim, resolved.vision.image_size) == (embed, resolution)
    assert _architecture(resolved.vision, resolved.text, kind) == (tower, text)
    assert resolved == resolve_config(model)  # the registered architecture (for 336 px: L/14 continued at 336)
    assert config.optim.lr == lr
    beta2, eps = ADAM[kind]
    assert (config.optim.beta1, config.optim.beta2, config.optim.eps) == (COMMON["beta1"], beta2, eps)
    assert families.of(resolved.vision).adam == (beta2, eps)  # the family declares the same
    assert (config.optim.weight_decay, config.schedule.kind, config.schedule.warmup_steps) == (
        COMMON["weight_decay"], "cosine", COMMON["warmup"])
    assert config.run.global_batch == COMMON["batch"] and config.run.accum_steps == 1
    assert config.run.epochs == (1 if model == "ViT-L/14@336px" else COMMON["epochs"])
    assert config.loss.kind == "clip" and config.loss.max_logit_scale == COMMON["max_temperature"]
    # section 2.5's memory techniques
    assert (config.precision.dtype, config.precision.grad_checkpointing) == ("bf16", True)
    assert (config.optim.moment_dtype, config.precision.text_weights) == ("bf16", "bf16")
    for processes in (1, 8, 64):  # runnable at these scales by changing only the number of processes
        assert COMMON["batch"] % (config.data.batch_size * processes) == 0


def test_the_336px_recipe_continues_the_vitl14_run():
    config = load_config(_recipe("ViT-L/14@336px"))
    assert config.model.pretrained == str(Path(load_config(_recipe("ViT-L/14")).run.out) / "final")
    assert config.model.name == "ViT-L/14" and config.model.vision == {"image_size": 336}


def test_vitl14_positional_embedding_resized_to_the_336px_shape():
    """At full size: ViT-L/14's 1 + 16² positions become 1 + 24², bicubically, the class token kept,
    and the config becomes the registered ViT-L/14@336px."""
    from clipforge.checkpoint import resize_positional_embedding

    torch.manual_seed(0)
    embedding = torch.randn(257, 1024)
    state = {"visual.positional_embedding": embedding.clone()}
    config = resize_positional_embedding(state, resolve_config("ViT-L/14"), 336)
    assert config == resolve_config("ViT-L/14@336px")
    resized = state["visual.positional_embedding"]
    assert resized.shape == (577, 1024) and torch.equal(resized[0], embedding[0])
    grid = embedding[1:].reshape(1, 16, 16, 1024).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(576, 1024)
    torch.testing.assert_close(resized[1:], expected)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipforge.data.synthetic import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig(num_train=64, num_val=0, shard_size=16, eval_per_class=1, num_retrieval=4), workers=1)
    return out


@pytest.fixture(scope="module")
def tokenizer(world):
    from clipforge.train.build import build_tokenizer
    from clipforge.train.config import TokenizerSection

    section = TokenizerSection(source="learn", vocab_size=600, captions=str(world / "train" / "captions.txt"))
    return build_tokenizer(section, 32, echo=lambda message: None)


def _runlocal(model: str, world: Path, out: Path, tokenizer, **more):
    from clipforge.train.loop import Trainer

    overrides = {"data.shards": str(world / "train" / "{00000..00003}.tar"), "run.out": str(out / FILES[model]),
                 "tokenizer.captions": str(world / "train" / "captions.txt"), "run.threads": 1, **more}
    return Trainer(load_config(_recipe(model), overrides, runlocal=True), tokenizer=tokenizer, echo=lambda m: None)


@pytest.mark.slow
def test_every_recipe_runs_two_steps_of_its_runlocal_variant(world, tokenizer, tmp_path, one_thread):
    """Each recipe, runlocal: small towers at the paper's resolution, bf16 autocast, checkpointing, bf16
    statistics and a bf16 text tower, 2 micro-batches a step; ViT-L/14@336px from ViT-L/14's result."""
    import clipforge
    from clipforge.train.lowprec import LowPrecisionAdamW

    for model in PAPER:
        more = {}
        if model == "ViT-L/14@336px":
            more["model.pretrained"] = str(tmp_path / FILES["ViT-L/14"] / "final")
        trainer = _runlocal(model, world, tmp_path, tokenizer, **more)
        if model == "ViT-L/14@336px":
            _assert_interpolated_once_at_load(trainer.clip, tmp_path / FILES["ViT-L/14"] / "final")
        summary = trainer.train()
        assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["loss"])), model
        assert trainer.accum_steps == 2 and isinstance(trainer.optimizer, LowPrecisionAdamW), model
        assert trainer.clip.config.vision.image_size == PAPER[model][2], model
        loaded, _, _ = clipforge.load(tmp_path / FILES[model] / "final")
        assert loaded.config.vision.image_size == PAPER[model][2], model
    assert loaded.visual.positional_embedding.shape == (1 + 24 * 24, 64)  # saved in the 336 px shape


def _assert_interpolated_once_at_load(clip, pretrained: Path) -> None:
    """Before its first step the continuation holds the 224 px run's positional embedding (1 + 16²
    patches of 14 px) bicubically resized to 1 + 24², its class token unchanged."""
    import clipforge

    before, _, _ = clipforge.load(pretrained)
    old = before.visual.positional_embedding.detach()
    assert old.shape == (1 + 16 * 16, 64)
    new = clip.visual.positional_embedding.detach()
    grid = old[1:].reshape(1, 16, 16, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 24), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(576, 64)
    assert torch.equal(new[0], old[0])
    torch.testing.assert_close(new[1:], expected)
