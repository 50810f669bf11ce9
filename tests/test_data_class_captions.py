"""Training from classification shards: samples with a `.cls` label and no caption get captions
made from the class names and templates (CLIP_benchmark's webdatasets, ImageNet-style shards)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cb_sets import classification_set, encode, shape_images, write_split
from clipforge.data.loader import DataConfig, build_loader
from clipforge.transforms import eval_transform
from test_eval_data import CLASSES

NAMES = [f"{c} {s}" for c, s in CLASSES]
TEMPLATES = ("a photo of a {c}.", "a {c}.")


class Recorder:
    """OpenAI's tokenizer, keeping the captions it was given (to check them)."""

    def __init__(self):
        from clipforge.tokenizer import Tokenizer
        from conftest import REFERENCE_DIR

        self.tokenizer = Tokenizer.from_merges(REFERENCE_DIR / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz")
        self.captions: list[str] = []

    def __call__(self, texts):
        self.captions += texts
        return self.tokenizer(texts)


def _epoch(config: DataConfig, epoch: int = 0) -> tuple[list[str], list[str], object]:
    recorder = Recorder()
    loader = build_loader(config, eval_transform(32), recorder)
    loader.set_epoch(epoch)
    keys = [k for batch in loader for k in batch.keys]
    return recorder.captions, keys, loader.report


def test_cls_samples_get_captions_from_the_sets_class_names_and_templates(tmp_path):
    root = classification_set(tmp_path / "set", per_class=4, templates=TEMPLATES)
    config = DataConfig(shards=str(root / "train" / "{0..2}.tar"), batch_size=6, workers=0, shuffle_buffer=1)
    captions, keys, report = _epoch(config)
    assert len(captions) == 24 and report.errors == 0
    labels = {f"s{i:07d}": i // 4 for i in range(24)}  # classification_set writes class c at 4c..4c+3
    for key, caption in zip(keys, captions):
        name = NAMES[labels[key.split("/")[-1]]]
        assert caption in {t.format(c=name) for t in TEMPLATES}
    again, _, _ = _epoch(config)
    later, _, _ = _epoch(config, epoch=1)
    assert again == captions and later != captions  # drawn per (seed, epoch, sample): reproducible, varied


def test_explicit_class_names_alternatives_and_bad_labels(tmp_path):
    root = tmp_path / "shards"
    images = shape_images([0, 1, 0, 1], seed=0)
    samples = [{"png": encode(im, "png"), "cls": c} for im, c in zip(images, [0, 1, 0, 1])]
    samples.append({"png": encode(images[0], "png"), "cls": 7})  # outside the class list
    samples.append({"png": encode(images[1], "png"), "txt": "a caption of its own"})
    write_split(root, "train", samples, max_count=10)
    names = tmp_path / "names.txt"
    names.write_text("# two classes\ncat | kitty\ndog\n")
    config = DataConfig(shards=str(root / "train" / "0.tar"), batch_size=5, workers=0, classnames=str(names),
                        class_templates="general", error_budget=0.5)
    captions, keys, report = _epoch(config)
    assert len(set(keys)) == 5 and "a caption of its own" in captions  # (batches are filled up by padding)
    assert report.by_reason == {"bad_label": 1} and "outside the 2 classes" in report.samples[0]["detail"]
    assert all(any(n in c for n in ("cat", "kitty", "dog")) for c in captions if c != "a caption of its own")
    with pytest.raises(FileNotFoundError, match="data.classnames nowhere.txt: no such file"):
        build_loader(DataConfig(shards=config.shards, classnames="nowhere.txt", workers=0), eval_transform(32), Recorder())


def test_without_class_names_a_cls_sample_still_lacks_a_caption(tmp_path):
    root = tmp_path / "bare"
    write_split(root, "train", [{"png": encode(im, "png"), "cls": 0} for im in shape_images([0, 0], seed=0)])
    from clipforge.data.report import ErrorBudgetExceeded

    loader = build_loader(DataConfig(shards=str(root / "train" / "0.tar"), batch_size=1, workers=0),
                          eval_transform(32), Recorder())
    with pytest.raises(ErrorBudgetExceeded, match="missing_caption"):
        list(loader)
    assert "a .cls label but no class names" in loader.report.samples[0]["detail"]


@pytest.mark.slow
def test_a_clip_benchmark_set_fine_tunes_as_it_is(tmp_path, one_thread):
    from clipforge.train.config import load_config
    from clipforge.train.logging import read_metrics
    from clipforge.train.loop import Trainer

    root = classification_set(tmp_path / "set", per_class=8, templates=TEMPLATES)
    Recorder().tokenizer.save(tmp_path / "tokenizer")
    recipe = {
        "run": {"steps": 4, "seed": 0, "threads": 1},
        "model": {"name": "tiny-vit"},
        "tokenizer": {"source": str(tmp_path / "tokenizer")},
        "data": {"shards": str(root / "train" / "{0..5}.tar"), "batch_size": 8, "workers": 0},
        "checkpoint": {"every": 0},
        "log": {"every": 100, "tensorboard": False},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    config = load_config(tmp_path / "recipe.json", {"run.out": str(tmp_path / "run")})
    Trainer(config, echo=lambda message: None).train()
    losses = [r["loss"] for r in read_metrics(tmp_path / "run")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    import clipforge

    model, _, _ = clipforge.load(tmp_path / "run" / "final")
    assert isinstance(model.encode_image(torch.zeros(1, 3, 32, 32)), torch.Tensor)
