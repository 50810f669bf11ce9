"""Checkpoint directory layouts and the Hugging Face Hub resolver (``hf-hub:ORG/NAME``): open_clip's Hub
layout read from local folders and from huggingface_hub's cache with HF_HUB_OFFLINE=1, and the
download path against a Hub-compatible server on 127.0.0.1 (only the files a layout needs, resumed
after a dropped connection, the SHA-256 checked). Nothing is downloaded from the internet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import clipforge
from clipforge import hub, layouts
from clipforge.api import load_model, resolve_checkpoint
from clipforge.checkpoint import CheckpointError
from hub_fixtures import FakeHub, pickle_bytes, safetensors_bytes, write_hf_cache

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "openclip" / "reduced"


def _variant(stem: str):
    """open_clip's config file, the weights and the expected outputs of one reduced fixture (GELU)."""
    with safe_open(str(FIXTURES / f"{stem}.safetensors"), "pt") as f:
        config = f.metadata()["open_clip_config"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k[len("state."):]: v.float() if v.is_floating_point() else v for k, v in tensors.items() if k.startswith("state.")}
    return config, state, tensors


def _assert_outputs(model, tensors, act="gelu"):
    with torch.no_grad():
        image, text = model.encode_image(tensors["images"].float()), model.encode_text(tensors["tokens"])
    for ours, key in ((image, f"{act}.image_features"), (text, f"{act}.text_features")):
        assert float((ours - tensors[key]).abs().max() / tensors[key].abs().max()) < 1e-5


@pytest.fixture(scope="module")
def tiny_vit_state(reference_dir):
    from safetensors.torch import load_file

    return load_file(str(reference_dir / "parity" / "tiny_vit.safetensors"))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """clipforge's cache in tmp_path, huggingface_hub told to stay offline."""
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub.hub_cache()


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_open_clip_hub_directory_loads_with_its_config_and_preprocessing(tmp_path, weights):
    config_text, state, tensors = _variant("H-14")  # its preprocess_cfg: mean/std 0.5, bilinear, squash
    (tmp_path / "open_clip_config.json").write_text(config_text)
    (tmp_path / weights).write_bytes(safetensors_bytes(state) if weights.endswith("safetensors") else pickle_bytes(state))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "text_config": {}}))  # LAION repos hold both
    assert layouts.of(tmp_path).name == "open_clip"
    model = load_model(tmp_path)
    assert model.config.vision.heads == 16 and model.config.text.num_heads == 16
    p = model.config.preprocess
    assert (p.mean, p.std, p.resize, p.interpolation) == ((0.5,) * 3, (0.5,) * 3, "squash", "bilinear")
    _assert_outputs(model, tensors)


def test_open_clip_config_refuses_options_clipforge_does_not_build(tmp_path):
    config_text, state, _ = _variant("B-32")
    data = json.loads(config_text)
    data["model_cfg"]["vision_cfg"]["no_ln_pre"] = True
    (tmp_path / "open_clip_config.json").write_text(json.dumps(data))
    (tmp_path / "open_clip_model.safetensors").write_bytes(safetensors_bytes(state))
    with pytest.raises(CheckpointError, match=r"open_clip_config\.json: invalid model config .*vision_cfg\.no_ln_pre = True"):
        load_model(tmp_path)
    data["model_cfg"]["vision_cfg"].pop("no_ln_pre")
    data["model_cfg"]["text_cfg"]["hf_model_name"] = "xlm-roberta-base"
    (tmp_path / "open_clip_config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"text_cfg\.hf_model_name"):
        load_model(tmp_path)


def test_hf_hub_name_loads_from_the_cache_offline(offline_cache):
    config_text, state, tensors = _variant("bigG-14")
    write_hf_cache(offline_cache, "test-org/bigG-reduced", {
        "open_clip_config.json": config_text.encode(), "open_clip_model.safetensors": safetensors_bytes(state)})
    directory = resolve_checkpoint("hf-hub:test-org/bigG-reduced")
    assert directory.parent.name == "snapshots" and layouts.of(directory).name == "open_clip"
    _assert_outputs(load_model(directory), tensors)


def test_full_load_of_a_hub_repository_with_tokenizer(offline_cache, monkeypatch, reference_dir, tiny_vit_state):
    """clipforge.load("hf-hub:...") returns model, preprocess and OpenAI's tokenizer (the vocabulary
    file from ../shared/reference, so nothing is fetched)."""
    monkeypatch.setenv("CLIPFORGE_OPENAI_VOCAB", str(reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"))
    open_clip_config = {"model_cfg": {"embed_dim": 64, "quick_gelu": True,
                                      "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
                                      "text_cfg": {"width": 128, "heads": 2, "layers": 2}}}
    write_hf_cache(offline_cache, "test-org/tiny-vit", {
        "open_clip_config.json": json.dumps(open_clip_config).encode(),
        "open_clip_pytorch_model.bin": pickle_bytes(tiny_vit_state)})
    model, preprocess, tokenizer = clipforge.load("hf-hub:test-org/tiny-vit")
    assert model.config == clipforge.registry.get_config("tiny-vit")  # the same architecture, read from open_clip's file
    assert preprocess.image_size == 32 and tokenizer(["a photo of a cat"]).shape == (1, 77)
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_vit_state[key]), key


def test_hf_hub_transformers_clip_repository_dispatches_on_its_layout(offline_cache, tiny_vit_state):
    """A transformers CLIPModel repository (config.json model_type "clip"): the same resolver, HF's layout."""
    from clipforge import hf

    config = clipforge.registry.get_config("tiny-vit")
    write_hf_cache(offline_cache, "test-org/hf-clip", {
        "config.json": json.dumps(hf.hf_config_dict(config)).encode(),
        "model.safetensors": safetensors_bytes(hf.state_to_hf(tiny_vit_state))})
    directory = resolve_checkpoint("hf-hub:test-org/hf-clip")
    assert layouts.of(directory).name == "hf"
    model = load_model(directory)
    assert model.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_vit_state[key]), key


def test_missing_weights_offline_name_the_files(offline_cache):
    config_text, _, _ = _variant("B-32")
    write_hf_cache(offline_cache, "test-org/config-only", {"open_clip_config.json": config_text.encode()})
    with pytest.raises(hub.DownloadError, match=r"hf-hub:test-org/config-only: none of open_clip_model\.safetensors, "
                                                r"open_clip_pytorch_model\.bin in the cache \(HF_HUB_OFFLINE"):
        clipforge.load("hf-hub:test-org/config-only")
    with pytest.raises(hub.DownloadError, match="hf-hub:test-org/absent: could not fetch"):
        clipforge.load("hf-hub:test-org/absent")


def test_verify_blob_checks_the_sha256_the_cache_names_a_file_by(tmp_path):
    good = tmp_path / hashlib.sha256(b"weights").hexdigest()
    good.write_bytes(b"weights")
    hub.verify_blob(good)
    bad = tmp_path / hashlib.sha256(b"other").hexdigest()
    bad.write_bytes(b"weights")
    with pytest.raises(hub.DownloadError, match="SHA-256 .* but the Hub published"):
        hub.verify_blob(bad)
    assert not bad.exists()  # removed: the next call downloads it again
    small = tmp_path / "3b18e512dba79e4c8300dd08aeb37f8e728b8dad"  # a Git blob hash: not checked
    small.write_bytes(b"{}")
    hub.verify_blob(small)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A FakeHub factory; huggingface_hub pointed at it, clipforge's cache in tmp_path, online."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 16)  # resume granularity: 64 KiB, not 10 MiB
    servers = []

    def start(repos, **options):
        server = FakeHub(repos, **options).__enter__()
        servers.append(server)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        return server

    yield start
    for server in servers:
        server.__exit__()


@pytest.mark.slow  # a server thread, and huggingface_hub's one-second pause before it resumes
def test_download_fetches_only_what_the_layout_needs_and_resumes(served):
    config_text, state, tensors = _variant("L-14")
    weights = safetensors_bytes(state)
    server = served({"test-org/served": {
        "open_clip_config.json": config_text.encode(), "open_clip_model.safetensors": weights,
        "open_clip_pytorch_model.bin": b"not needed" * 1000, "model.safetensors": b"the HF copy, not needed",
        "config.json": json.dumps({"model_type": "clip"}).encode(), "README.md": b"# a model card"}},
        cut_first_get="open_clip_model.safetensors")
    _assert_outputs(load_model(resolve_checkpoint("hf-hub:test-org/served")), tensors)
    fetched = {path.rsplit("/", 1)[-1] for method, path, _ in server.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {"open_clip_config.json", "config.json", "open_clip_model.safetensors"}
    ranges = [r for method, path, r in server.requests if method == "GET" and path.endswith("open_clip_model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None  # the dropped transfer was resumed, not restarted:
    assert 0 < int(ranges[1].removeprefix("bytes=").rstrip("-")) <= len(weights) // 2
    blob = Path(hub.hub_cache()).glob("models--test-org--served/blobs/*")
    assert hashlib.sha256(weights).hexdigest() in {p.name for p in blob}


@pytest.mark.slow
def test_download_with_a_wrong_checksum_is_refused_and_removed(served):
    config_text, state, _ = _variant("B-16")
    served({"test-org/corrupt": {"open_clip_config.json": config_text.encode(),
                                 "open_clip_model.safetensors": safetensors_bytes(state)}},
           wrong_etag="open_clip_model.safetensors")
    with pytest.raises(hub.DownloadError, match="but the Hub published 0{64}; removed"):
        clipforge.load("hf-hub:test-org/corrupt")
    assert not list(Path(hub.hub_cache()).glob("models--test-org--corrupt/blobs/" + "0" * 64))
