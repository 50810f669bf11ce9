"""Model families: every registered one answers what the rest of the code asks, a new family needs
only its own module (tests/toy_family.py), and no code outside the family modules inspects towers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import clipforge
from clipforge import families
from clipforge.config import ModelConfig, TextConfig, VisionConfig
from clipforge.fastpath import optimize_for_inference, trims_exactly
from clipforge.registry import get_config

SRC = Path(__file__).resolve().parents[1] / "src" / "clipforge"
SENTINELS = [r"patch_size is None", r"is_resnet", r"hasattr\([^)]*attnpool", r"[\"'](ModifiedResNet|VisionTransformer|"
             r"ResidualAttentionBlock|Bottleneck|AttentionPool2d)[\"']", r"type\([^)]*\)\.__name__ (==|in)"]


def test_no_code_outside_the_family_modules_asks_what_kind_of_tower_it_holds():
    """The one place a ResNet config is recognised by its missing patch size: reading old config.json files."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name in ("families", "model"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(re.search(p, line) for p in SENTINELS) and "config.json written before" not in line:
                found.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_layer_groups_cover_every_tower_parameter_once(name):
    model = clipforge.create_model(name)
    for config, tower in ((model.config.vision, model.visual), (model.config.text, model)):
        family = families.of(config)
        groups = family.layer_groups(family.tower_module(model) if family.tower == "text" else tower)
        ids = [id(p) for group in groups for item in group
               for p in ([item] if isinstance(item, torch.nn.Parameter) else item.parameters())]
        expected = (tower.parameters() if family.tower == "vision"
                    else (p for n, p in model.named_parameters() if not n.startswith("visual.") and n != "logit_scale"))
        assert sorted(ids) == sorted(id(p) for p in expected) and len(ids) == len(set(ids))
    units = families.shard_units(model)
    assert units and all(isinstance(u, torch.nn.Module) for u in units)


def test_old_config_files_without_kind_load_as_their_family(tmp_path):
    for name, kind in (("tiny-rn", "resnet"), ("tiny-vit", "vit")):
        data = get_config(name).to_dict()
        for part in ("vision", "text"):
            del data[part]["kind"]
        del data["preprocess"]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data))
        config = ModelConfig.load(path)
        assert config.vision.kind == kind and config.text.kind == "causal" and config == get_config(name)


@pytest.fixture
def toy_families():
    import toy_family

    for family in toy_family.FAMILIES:
        families.register(family)
    yield toy_family
    for family in toy_family.FAMILIES:
        del families._FAMILIES[(family.tower, family.kind)]


def _toy_config() -> ModelConfig:
    return ModelConfig(16, VisionConfig(64, width=24, kind="toy_pool"),
                       TextConfig(context_length=8, vocab_size=50, width=12, kind="toy_bag"))


def test_a_new_family_needs_only_its_own_module(toy_families, tmp_path):
    model = clipforge.create_model(_toy_config())
    assert isinstance(model.visual, toy_families.PoolTower) and isinstance(model.text, toy_families.BagTower)
    images, tokens = torch.randint(0, 50, (3, 8)), None
    images, tokens = torch.randn(3, 3, 64, 64), images
    image_features, text_features, scale = model(images, tokens)
    (image_features @ text_features.t() * scale).sum().backward()
    assert model.visual.stem.weight.grad is not None and model.text.embedding.weight.grad is not None
    assert not trims_exactly(model)
    assert [m for m in families.shard_units(model)] == [model.visual.stem, model.text.proj]
    clipforge.save(model, tmp_path / "toy")  # config.json names the families; loading builds them again
    back = clipforge.api.load_model(tmp_path / "toy")
    assert back.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(back.encode_image(images), model.encode_image(images))
        fast = optimize_for_inference(back)
        torch.testing.assert_close(fast.encode_text(tokens), model.encode_text(tokens))
    state = model.state_dict()
    assert families.infer_vision(state, "gelu").kind == "toy_pool"


def test_the_trainer_refuses_token_trimming_where_it_is_not_exact(toy_families, tmp_path, monkeypatch):
    from test_train_faults import TensorLoader, _trainer

    monkeypatch.setattr("clipforge.train.build.model_config",
                        lambda section, vocab_size=None: _toy_config().replace(
                            text={"vocab_size": vocab_size, "context_length": 12}))
    with pytest.raises(ValueError, match="trim_tokens = true.*'toy_bag'"):
        _trainer(tmp_path / "a", TensorLoader(4, 4, 530), [], **{"run.trim_tokens": "true"})
    trainer = _trainer(tmp_path / "b", TensorLoader(4, 4, 530), [])  # unset: not trimmed, and it trains
    assert trainer.step_context.trim_tokens is False
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.95)  # the toy family's Adam β2
    trainer.train()
    assert trainer.step == 6
