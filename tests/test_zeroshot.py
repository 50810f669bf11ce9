"""clipforge.zeroshot: template files, prompt ensembling, the on-disk head cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.zeroshot import (
    available_template_sets,
    build_classifier,
    class_prompts,
    format_prompt,
    load_templates,
    zero_shot_logits,
)
from test_eval_data import tiny_clip

CLASSES = ["red square", "blue circle", "green triangle"]


@pytest.fixture(scope="module")
def clip():
    model, _, tokenizer = tiny_clip()
    return model, tokenizer


def test_shipped_template_sets():
    assert {"openai_imagenet", "general", "synthetic"} <= set(available_template_sets())
    openai = load_templates("openai_imagenet")
    assert len(openai) == 80 and len(set(openai)) == 80
    assert openai[0] == "a bad photo of a {}." and openai[-1] == "a tattoo of the {}."
    general = load_templates("general")
    assert len(general) == 7 and set(general) <= set(openai)
    assert all("{}" in t for t in load_templates("synthetic"))


def test_template_files_and_errors(tmp_path):
    (tmp_path / "t.txt").write_text("# comment\n\na {c} here.\nthe {}.\n")
    assert load_templates(tmp_path / "t.txt") == ["a {c} here.", "the {}."]
    (tmp_path / "bad.txt").write_text("a photo.\n")
    with pytest.raises(ValueError, match=r"bad.txt: template 1 'a photo.' has no"):
        load_templates(tmp_path / "bad.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="no templates"):
        load_templates(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_templates("nope")


def test_prompts():
    assert format_prompt("a {} photo", "cat") == "a cat photo"
    assert format_prompt("a {c} photo", "cat") == "a cat photo"  # CLIP_benchmark's placeholder
    assert class_prompts(["a", "b"], ["x {}", "y {}"]) == [["x a", "y a"], ["x b", "y b"]]
    assert class_prompts(["a"], {"a": ["only this"]}) == [["only this"]]
    with pytest.raises(ValueError, match="lack prompts"):
        class_prompts(["a", "b"], {"a": ["x"]})
    with pytest.raises(TypeError):
        class_prompts(["a"], "a {}")


def test_head_is_normalize_mean_renormalize(clip):
    model, tokenizer = clip
    templates = load_templates("general")
    head = build_classifier(model, tokenizer, CLASSES, templates, batch_size=5)
    rows = []
    with torch.no_grad():  # one class at a time, as CLIP_benchmark builds it
        for name in CLASSES:
            emb = F.normalize(model.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1).mean(0)
            rows.append(emb / emb.norm())
    torch.testing.assert_close(head, torch.stack(rows), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(head.norm(dim=1), torch.ones(3))
    image_features = torch.randn(4, head.shape[1])
    expected = 100 * F.normalize(image_features, dim=-1) @ torch.stack(rows).t()
    torch.testing.assert_close(zero_shot_logits(image_features, head), expected, atol=1e-4, rtol=1e-5)


def test_head_restores_training_mode_and_needs_no_grad(clip):
    model, tokenizer = clip
    model.train()
    try:
        head = build_classifier(model, tokenizer, CLASSES, ["a {}."])
        assert model.training and not head.requires_grad
    finally:
        model.eval()


def test_cache_hits_and_keys(clip, tmp_path):
    model, tokenizer = clip
    first = build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    # A hit reads the file: overwrite its tensor and see it come back.
    from safetensors.torch import save_file

    save_file({"classifier": torch.zeros_like(first)}, str(files[0]))
    assert build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path).abs().sum() == 0
    # Other templates, other classes → other keys; image-tower weights don't matter.
    build_classifier(model, tokenizer, CLASSES, ["the {}."], cache_dir=tmp_path)
    build_classifier(model, tokenizer, CLASSES[:2], ["a {}."], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path).abs().sum() == 0
    with torch.no_grad():
        model.text_projection.mul_(1.5)  # the text tower changed: a fresh head
    fresh = build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4 and fresh.abs().sum() > 0
    with torch.no_grad():
        model.text_projection.div_(1.5)
        model.visual.proj.sub_(1.0)


def test_damaged_cache_entry_is_rebuilt(clip, tmp_path):
    model, tokenizer = clip
    head = build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path)
    (file,) = tmp_path.glob("*.safetensors")
    file.write_bytes(b"garbage")
    torch.testing.assert_close(build_classifier(model, tokenizer, CLASSES, ["a {}."], cache_dir=tmp_path), head)
