"""Checkpoint formats (OpenAI TorchScript and state_dicts, open_clip, safetensors, ours), safe loading
(nothing in a file ever runs), clear errors that name the file; and downloads (clipforge.hub) against a
real HTTP server on loopback, never the internet."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import re
import socket
import threading
import warnings
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import clipforge
from clipforge import hub
from clipforge.api import load_model, save
from clipforge.checkpoint import CheckpointError, read_state_dict, read_torchscript
from clipforge.tokenizer import train_bpe


class _Payload:
    """Pickles to a call of os.system: unpickling it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _inputs(model, n_images=2, n_texts=3, length=16):
    gen = torch.Generator().manual_seed(1)
    size, vocab = model.image_size, model.config.text.vocab_size
    images = torch.randn(n_images, 3, size, size, generator=gen)
    tokens = torch.randint(1, vocab - 2, (n_texts, length), generator=gen)
    tokens[:, 0], tokens[:, -1] = vocab - 2, vocab - 1  # start / end of text
    return images, tokens


def _assert_same_outputs(a, b):
    images, tokens = _inputs(a)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), atol=1e-6, rtol=0)
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return clipforge.create_model("tiny-vit")


@pytest.fixture(scope="module")
def torchscript_archive(tiny_vit, tmp_path_factory):
    """A TorchScript archive shaped like OpenAI's released .pt files: the traced CLIP module with
    ``encode_image``/``encode_text`` methods and the extra ``input_resolution``, ``context_length`` and
    ``vocab_size`` entries in its state_dict (which OpenAI's ``build_model`` drops)."""
    model = clipforge.create_model(tiny_vit.config)
    model.load_state_dict(tiny_vit.state_dict())
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        model.register_buffer(name, torch.tensor(value))
    images, tokens = _inputs(tiny_vit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
        traced = torch.jit.trace_module(
            model, {"encode_image": (images,), "encode_text": (tokens,)}, check_trace=False
        )
    path = tmp_path_factory.mktemp("jit") / "ViT-tiny.pt"
    traced.save(str(path))
    return path


def test_torchscript_archive_gives_jit_state_dict_and_same_outputs(torchscript_archive, tiny_vit):
    ours = read_torchscript(torchscript_archive)
    reference = torch.jit.load(str(torchscript_archive)).state_dict()  # our own, trusted file
    assert ours.keys() == reference.keys() and "input_resolution" in ours
    for key in reference:
        assert torch.equal(ours[key], reference[key]), key
    model, preprocess, _ = clipforge.load(torchscript_archive)  # architecture inferred from shapes
    assert model.config == tiny_vit.config and preprocess.image_size == 32
    _assert_same_outputs(model, tiny_vit)


def test_plain_openai_state_dict(tmp_path, tiny_vit):
    path = tmp_path / "openai_state.pt"
    torch.save(tiny_vit.state_dict(), path)
    _assert_same_outputs(load_model(path), tiny_vit)


def test_open_clip_checkpoint_with_module_prefix(tmp_path, tiny_vit):
    path = tmp_path / "epoch_3.pt"
    state = {f"module.{k}": v for k, v in tiny_vit.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)
    _assert_same_outputs(load_model(path), tiny_vit)


def test_safetensors_recognised_by_content_not_name(tmp_path, tiny_vit):
    path = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(path))
    _assert_same_outputs(load_model(path), tiny_vit)


def test_own_format_round_trip_with_tokenizer(tmp_path):
    """config.json decides the architecture (a GELU model: shapes alone would say QuickGELU) and
    the tokenizer travels with the model."""
    texts = ["a red circle", "a blue square", "two green triangles", "a red square"] * 5
    tokenizer = train_bpe(texts, vocab_size=600, min_frequency=1, context_length=32)
    torch.manual_seed(0)
    model = clipforge.create_model("demo-vit", vision={"act": "gelu"}, text={"act": "gelu", "vocab_size": 600})
    directory = clipforge.api.save(model, tmp_path / "run" / "final", tokenizer=tokenizer)
    assert {p.name for p in directory.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json"}
    loaded, preprocess, loaded_tokenizer = clipforge.load(directory)
    assert loaded.config == model.config and loaded.config.text.act == "gelu"
    assert preprocess.image_size == 64
    torch.testing.assert_close(loaded_tokenizer(texts[:3]), tokenizer(texts[:3]), atol=0, rtol=0)
    _assert_same_outputs(loaded, model)
    assert save is clipforge.api.save


def test_payload_really_runs_when_unpickled(tmp_path):
    """The control: the payload used below does create its marker when unpickled unsafely."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def _assert_nothing_ran(marker: Path):
    assert not marker.exists(), "the payload ran while loading"


@pytest.mark.parametrize("via", ["torch.save", "pickle.dumps"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, via):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pt"
    if via == "torch.save":
        torch.save({"text_projection": torch.zeros(2, 2), "extra": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))  # the protocol torch.load reads
    with pytest.raises(CheckpointError, match=rf"{path}: refused.*(posix|os|nt)\.system"):
        clipforge.load(path)
    _assert_nothing_ran(marker)


def _with_data_pkl(archive: Path, out: Path, data: bytes) -> Path:
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, data if name.endswith("/data.pkl") else src.read(name))
    return out


def test_torchscript_lookalike_with_malicious_data_pkl_is_refused(tmp_path, torchscript_archive):
    """A zip with TorchScript's layout but a data.pkl that calls os.system: our reader refuses the
    global before anything is called (torch.jit.load is never used on a checkpoint)."""
    marker = tmp_path / "PWNED"
    evil = _with_data_pkl(torchscript_archive, tmp_path / "evil_jit.pt", pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(CheckpointError, match=rf"{evil}: refused.*refused global (posix|os|nt)\.system"):
        clipforge.load(evil)
    _assert_nothing_ran(marker)


def test_torch_jit_load_itself_refuses_the_lookalike(tmp_path, torchscript_archive):
    """What torch.jit.load does with the same file (torch 2.x): its unpickler only resolves TorchScript
    type names, so the os.system global is an unknown type. We do not rely on this (see above)."""
    marker = tmp_path / "PWNED"
    evil = _with_data_pkl(torchscript_archive, tmp_path / "evil_jit.pt", pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(RuntimeError, match="system"):
        torch.jit.load(str(evil))
    _assert_nothing_ran(marker)


def _truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("kind", ["safetensors", "torch_zip", "torchscript", "random", "empty", "legacy_torch"])
def test_truncated_or_corrupt_files_name_the_file(tmp_path, tiny_vit, torchscript_archive, kind):
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items()}
    full = tmp_path / f"full.{kind}"
    if kind == "safetensors":
        save_file(state, str(full))
        path = _truncate(full, tmp_path / "cut.safetensors")
    elif kind == "torch_zip":
        torch.save(state, full)
        path = _truncate(full, tmp_path / "cut.pt")
    elif kind == "legacy_torch":
        torch.save(state, full, _use_new_zipfile_serialization=False)
        path = _truncate(full, tmp_path / "cut_legacy.pt")
    elif kind == "torchscript":
        path = _truncate(torchscript_archive, tmp_path / "cut_jit.pt", 0.9)
    elif kind == "random":
        path = tmp_path / "noise.pt"
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes())
    else:
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        clipforge.load(path)


def _as_torch15_archive(archive: Path, out: Path) -> Path:
    """``archive`` as torch <= 1.5 wrote it: its classes list ``__parameters__`` but have no ``__buffers__`` line."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith(".py"):
                data = re.sub(rb"^[ \t]+__buffers__ = \[[^\]]*\]\n", b"", data, flags=re.M)
            dst.writestr(name, data)
    return out


def test_torch15_torchscript_archive_keeps_its_buffers(tmp_path):
    """BatchNorm statistics are buffers, not parameters: an archive without ``__buffers__`` declarations
    must still give them (and the model must compute what the original does in eval mode)."""
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-rn").train()
    with torch.no_grad():
        model.visual(torch.randn(4, 3, 64, 64))  # running statistics away from their initial 0 / 1
    model.eval()
    images, tokens = _inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": (images,), "encode_text": (tokens,)}, check_trace=False)
    traced.save(str(tmp_path / "new.pt"))
    old = _as_torch15_archive(tmp_path / "new.pt", tmp_path / "old.pt")
    with zipfile.ZipFile(old) as archive:
        code = b"".join(archive.read(n) for n in archive.namelist() if n.endswith(".py"))
    assert b"__parameters__" in code and b"__buffers__" not in code
    state = read_torchscript(old)
    assert state.keys() == model.state_dict().keys() and "visual.bn1.running_var" in state
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    _assert_same_outputs(load_model(old), model)


def test_a_load_that_does_not_fit_names_the_missing_and_unexpected_keys(tmp_path):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-rn")
    state = {k: v for k, v in model.state_dict().items() if "running_" not in k}
    state["visual.extra.weight"] = torch.zeros(2)
    state["ln_final.weight"] = torch.ones(3)
    path = tmp_path / "no_bn_stats.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_model(path, model="tiny-rn")
    message = str(err.value)
    assert message.startswith(f"{path}: weights do not fit the architecture (ModifiedResNet 1-1-1-1 w16")
    assert "38 missing keys: visual.bn1.running_mean, visual.bn1.running_var, visual.bn2.running_mean" in message
    assert "... (32 more)" in message and "1 unexpected keys: visual.extra.weight" in message
    assert "1 shapes differ: ln_final.weight [3] (the model's: [64])" in message


def test_torchscript_archive_with_a_missing_tensor_record(tmp_path, torchscript_archive):
    out = tmp_path / "holes.pt"
    with zipfile.ZipFile(torchscript_archive) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if not name.endswith("/data/0"):
                dst.writestr(name, src.read(name))
    with pytest.raises(CheckpointError, match=str(out)):
        read_state_dict(out)


def test_state_dict_that_does_not_fit_names_the_file(tmp_path, tiny_vit):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=rf"{path}: weights do not fit"):
        clipforge.load(path, model="tiny-rn")
    state = {k: v.contiguous() for k, v in tiny_vit.state_dict().items() if k != "ln_final.weight"}
    broken = tmp_path / "no_ln_final.safetensors"
    save_file(state, str(broken))
    with pytest.raises(CheckpointError, match=rf"{broken}: cannot infer the architecture"):
        clipforge.load(broken)
    path2 = tmp_path / "not_clip.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path2))
    with pytest.raises(CheckpointError, match=rf"{path2}: not a CLIP state_dict"):
        clipforge.load(path2)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or directory"):
        clipforge.load(tmp_path / "nope.pt")


# ---- downloads ----------------------------------------------------------------------------------

@pytest.fixture()
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields (base_url, www_dir)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, httpd
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def _publish(www: Path, data: bytes, name: str = "model.pt", sha: str | None = None) -> str:
    sha = sha or hashlib.sha256(data).hexdigest()
    folder = www / "clip" / "models" / sha
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return f"clip/models/{sha}/{name}"


def test_download_verifies_places_atomically_and_reuses_the_cache(server, tmp_path):
    base, www, httpd = server
    data = bytes(range(256)) * 5000
    url = f"{base}/{_publish(www, data)}"
    cache = tmp_path / "cache"
    path = hub.download(url, cache)
    assert path == cache / "model.pt" and path.read_bytes() == data
    assert [p.name for p in cache.iterdir()] == ["model.pt"]  # no temporary file left behind
    httpd.shutdown()  # offline now: the verified copy is used without the network
    assert hub.download(url, cache) == path


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, www, _ = server
    wrong = hashlib.sha256(b"something else").hexdigest()
    url = f"{base}/{_publish(www, b'payload bytes', sha=wrong)}"
    cache = tmp_path / "cache"
    with pytest.raises(hub.DownloadError, match=f"SHA-256 is {hashlib.sha256(b'payload bytes').hexdigest()}"):
        hub.download(url, cache)
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_downloaded_again(server, tmp_path):
    base, www, _ = server
    url = f"{base}/{_publish(www, b'the real bytes')}"
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "model.pt").write_bytes(b"the real by")  # an interrupted copy from elsewhere
    assert hub.download(url, cache).read_bytes() == b"the real bytes"


def test_offline_gives_a_clear_error(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/models/{'0' * 64}/RN50.pt"
    with pytest.raises(hub.DownloadError, match="Are you offline"):
        hub.download(url, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_openai_urls_and_names():
    assert list(hub.OPENAI_URLS) == clipforge.available_models()[:9]
    for name, url in hub.OPENAI_URLS.items():
        sha, filename = url.split("/")[-2:]
        assert url.startswith("https://openaipublic.azureedge.net/clip/models/") and len(sha) == 64
        assert filename == name.replace("/", "-").replace("@336px", "-336px") + ".pt"
    with pytest.raises(hub.DownloadError, match="GELU variants"):
        hub.download_openai("ViT-B-32")
    with pytest.raises(hub.DownloadError, match="no released OpenAI weights"):
        hub.download_openai("demo-rn")
    with pytest.raises(KeyError, match="unknown model"):
        hub.download_openai("ViT-Z/1")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "a"))
    assert hub.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("CLIPFORGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "clipforge"


def test_load_by_name_downloads_then_loads(server, tmp_path, monkeypatch, reference_dir):
    """clipforge.load("ViT-B/32") goes through the hub; here the URL serves the tiny model instead."""
    base, www, _ = server
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit")
    file = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(file))
    monkeypatch.setitem(hub.OPENAI_URLS, "ViT-B/32", f"{base}/{_publish(www, file.read_bytes(), 'ViT-B-32.pt')}")
    # OpenAI's vocabulary comes along (the user is online): the tokenizer's real download, from loopback.
    vocab = reference_dir / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    vocab_url = f"{base}/{_publish(www, vocab.read_bytes(), vocab.name)}"
    monkeypatch.setattr(clipforge.tokenizer, "download_openai_vocab",
                        partial(clipforge.tokenizer.download_openai_vocab, url=vocab_url))
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "tok_cache"))
    monkeypatch.delenv("CLIPFORGE_OPENAI_VOCAB", raising=False)
    loaded, _, tokenizer = clipforge.load("ViT-B-32-quickgelu", download_root=tmp_path / "cache")
    assert (tmp_path / "cache" / "ViT-B-32.pt").is_file()
    assert loaded.config == model.config
    assert (tmp_path / "tok_cache" / vocab.name).is_file()
    assert tokenizer("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    with pytest.raises(clipforge.api.CheckpointError, match="no such file or directory, and not a model name"):
        clipforge.load("no-such-model-or-file")
