"""Training configuration: recipes, typed overrides, errors naming the key, the short --help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clipforge.cli import build_parser
from clipforge.train.cli import config_keys
from clipforge.train.config import ConfigError, TrainConfig, load_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_every_recipe_in_configs_loads_and_the_packaged_demo_is_the_same_file():
    recipes = sorted((ROOT / "configs").glob("*.toml"))
    assert {p.name for p in recipes} >= {"demo.toml", "cc3m_b32.toml", "paper_vitb32.toml"}
    for recipe in recipes:
        load_config(recipe)
    packaged = ROOT / "src" / "clipforge" / "train" / "recipes" / "demo.toml"
    assert packaged.read_text() == (ROOT / "configs" / "demo.toml").read_text()


def test_paper_recipe_has_the_paper_batch_and_optimizer():
    config = load_config(ROOT / "configs" / "paper_vitb32.toml")
    assert config.run.global_batch == 32768 and config.run.accum_steps == 1  # accumulation follows the processes
    from clipforge.train.build import accumulation

    assert config.data.batch_size * accumulation(config.run, config.data.batch_size, 8) * 8 == 32768
    assert (config.optim.lr, config.optim.weight_decay, config.schedule.warmup_steps) == (5e-4, 0.2, 2000)


def test_overrides_are_typed_by_the_field():
    config = load_config(None, parse_overrides([
        "optim.lr=1e-3", "run.steps=7", "run.steps=none", "precision.compile=true", "run.crop_scale=[0.5, 1]",
        "model.vision.layers=[2, 2, 2, 2]", "model.text.width=64", "data.shards=a/{0..3}.tar", "data.decode.max_pixels=10",
        "run.out=123",
    ]))
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.run.steps is None and config.precision.compile is True
    assert config.run.crop_scale == (0.5, 1.0)
    assert config.model.vision == {"layers": (2, 2, 2, 2)} and config.model.text == {"width": 64}
    assert config.data.shards == "a/{0..3}.tar" and config.data.decode.max_pixels == 10
    assert config.run.out == "123"  # a str field keeps a value that looks like a number


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    ("optimizer.lr=1", "unknown config key 'optimizer'"),
    ("optim.lr=fast", "config key 'optim.lr': expected float"),
    ("run.steps=1.5", "config key 'run.steps'"),
    ("precision.compile=1", "config key 'precision.compile'"),
    ("model.vision.widht=3", "unknown config key 'model.vision.widht' (did you mean 'width'?)"),
    ("run.seed.x=1", "'run.seed' has no sub-keys"),
    ("lr=1", "expected section.key"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, parse_overrides([override]))
    assert message in str(err.value)


def test_recipe_errors_name_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nlr = "fast"\n')
    with pytest.raises(ConfigError, match="config key 'optim.lr': expected float"):
        load_config(bad)
    bad.write_text("[optim]\nwarmup = 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.warmup'"):
        load_config(bad)
    bad.write_text("[optim\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_resolved_config_round_trips_as_a_json_recipe(tmp_path):
    config = load_config(ROOT / "configs" / "demo.toml", {"optim.lr": "3e-3", "model.vision.width": "16"})
    config.save(tmp_path / "train_config.json")
    assert load_config(tmp_path / "train_config.json") == config
    assert TrainConfig.from_dict(json.loads((tmp_path / "train_config.json").read_text())) == config


def test_every_key_is_a_hidden_cli_option_and_help_stays_short():
    keys = config_keys()
    assert {"optim.lr", "run.accum_steps", "model.vision.width", "data.decode.max_pixels", "eval.every"} <= set(keys)
    parser, _ = build_parser(["train"])
    args = parser.parse_args(["train", "--optim.lr", "1e-3", "--set", "run.steps=3", "--model.text.layers=2"])
    from clipforge.train.cli import overrides_from

    assert overrides_from(args) == {"run.steps": "3", "optim.lr": "1e-3", "model.text.layers": "2"}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--optim.l", "1e-3"])  # no abbreviations
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert len(help_text.splitlines()) < 20
    assert not [key for key in keys if f"--{key}" in help_text and key != "optim.lr"]  # the example only


def test_cli_reports_a_mistyped_value_and_exits_2(capsys):
    from clipforge.cli import main

    assert main(["train", "--optim.lr", "fast", "--print-config"]) == 2
    assert "config key 'optim.lr': expected float, got 'fast'" in capsys.readouterr().err
    assert main(["train", "--optim.lr", "3e-4", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 3e-4
