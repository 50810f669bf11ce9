"""CPU inference in pieces on concurrent single-threaded streams (clipforge.fastpath.pieces), which
``optimize_for_inference`` installs on a model (the model itself never splits a batch).

The features are those of the whole batch; pieces are sized and counted as documented; the streams
run on one thread each, leave the caller's and the process's thread counts alone, keep the caller's
grad mode, and pass a piece's exception on to the caller.
"""

from __future__ import annotations

import threading

import pytest
import torch

import clipforge
from clipforge.fastpath import InferenceOptions, optimize_for_inference
from clipforge.fastpath.pieces import piece_sizes


class _Recorder:
    """Wraps a tower's per-piece forward: records each call's batch size, thread name and intra-op threads."""

    def __init__(self, holder, fail_on: int | None = None):
        self.calls: list[tuple[int, str, int]] = []
        method = "forward" if hasattr(holder, "conv1") else "encode_text"
        self._original, self._fail_on = getattr(super(type(holder), holder), method), fail_on
        holder._clipforge_pieces.forward = self

    def __call__(self, x):
        self.calls.append((x.shape[0], threading.current_thread().name, torch.get_num_threads()))
        if self._fail_on is not None and x.shape[0] == self._fail_on:
            raise RuntimeError("piece failed")
        return self._original(x)

    @property
    def sizes(self) -> list[int]:
        return sorted((size for size, _, _ in self.calls), reverse=True)


def _pieced(model, image_rows=None, text_rows=None, streams=None):
    """``model`` with CPU pieces installed (in place; fused blocks off, to test the pieces alone)."""
    fast = optimize_for_inference(model, InferenceOptions(fused_blocks=False, streams=streams), inplace=True)
    if image_rows is not None:
        fast.visual._clipforge_pieces.chunk_rows = image_rows
    if text_rows is not None:
        fast._clipforge_pieces.chunk_rows = text_rows
    return fast


def _set(tower, *, rows="keep", streams="keep"):
    plan = tower._clipforge_pieces
    plan.chunk_rows = plan.chunk_rows if rows == "keep" else rows
    plan.streams = plan.streams if streams == "keep" else streams


def _tiny_vit(pieced: bool = True):
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-vit", text={"vocab_size": 500}).double().eval()
    images = torch.randn(7, 3, model.image_size, model.image_size, dtype=torch.float64)
    tokens = torch.randint(1, 499, (7, 12))
    tokens[:, 0], tokens[:, -1] = 498, 499
    return (_pieced(model) if pieced else model), images, tokens


@pytest.mark.parametrize("streams, image_sizes, text_sizes", [
    (1, [3, 2, 2], [2, 2, 2, 1]),  # ≤ 3 images, ≤ 2 captions per piece, as even as can be
    (2, [2, 2, 2, 1], [2, 2, 2, 1]),  # and a multiple of the streams, so that none idles
    (3, [3, 2, 2], [2, 1, 1, 1, 1, 1]),
])
def test_pieces_give_the_whole_batch_features(streams, image_sizes, text_sizes):
    model, images, tokens = _tiny_vit(pieced=False)
    with torch.no_grad():
        whole_image, whole_text = model.encode_image(images), model.encode_text(tokens)  # the plain model
        image_tokens = (model.image_size // model.visual.patch_size) ** 2 + 1
        model = _pieced(model, 3 * image_tokens, 2 * 12, streams)
        image, text = _Recorder(model.visual), _Recorder(model)
        torch.testing.assert_close(model.encode_image(images), whole_image, rtol=0, atol=1e-12)
        torch.testing.assert_close(model.encode_text(tokens), whole_text, rtol=0, atol=1e-12)
    assert image.sizes == image_sizes and text.sizes == text_sizes
    threads = {name for _, name, _ in image.calls + text.calls}
    if streams == 1:  # one after another, on the caller's thread and threads
        assert threads == {threading.current_thread().name}
        assert {n for _, _, n in image.calls} == {torch.get_num_threads()}
    else:  # on the streams, one intra-op thread each
        assert all(name.startswith("clipforge-stream") for name in threads)
        assert {n for _, _, n in image.calls + text.calls} == {1}


@torch.no_grad()
def test_a_small_batch_is_split_across_the_streams():
    model, images, _ = _tiny_vit()
    plan = model.visual._clipforge_pieces
    _set(model.visual, streams=2)
    assert plan.chunk_rows == 1024  # the ViT family's size
    assert piece_sizes(model.visual, plan, images) == [4, 3]  # fits one piece of 1024 rows
    assert piece_sizes(model.visual, plan, images[:1]) is None
    _set(model.visual, streams=1)
    assert piece_sizes(model.visual, plan, images) is None
    _set(model.visual, rows=None, streams=2)
    assert piece_sizes(model.visual, plan, images) is None  # pieces off


def test_training_autograd_and_autocast_run_whole_on_the_callers_thread():
    model, images, _ = _tiny_vit()
    _set(model.visual, rows=17, streams=2)  # one image (17 tokens) per piece
    recorder = _Recorder(model.visual)
    model.requires_grad_(True)
    features = model.encode_image(images)  # autograd on: feature gradients
    assert features.requires_grad
    model.train()
    with torch.no_grad():
        model.encode_image(images)  # BatchNorm / patch dropout would see only a piece
    model.eval().float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.encode_image(images.float())  # autocast state is per thread
    assert recorder.sizes == [7, 7, 7]
    assert {name for _, name, _ in recorder.calls} == {threading.current_thread().name}


def test_streams_leave_thread_counts_and_grad_mode_as_they_were():
    model, images, _ = _tiny_vit()
    _set(model.visual, streams=2)
    before = torch.get_num_threads()
    with torch.no_grad():
        out = model.encode_image(images)
    assert not out.requires_grad and not out.is_inference()  # no_grad, not inference mode, in the streams
    with torch.inference_mode():
        assert model.encode_image(images).is_inference()
    assert torch.get_num_threads() == before
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # adopts the process default
    fresh.start()
    fresh.join()
    assert seen == [before]


def test_a_failing_piece_raises_in_the_caller():
    model, images, _ = _tiny_vit()
    _set(model.visual, rows=3 * 17, streams=2)  # 2 + 2 + 2 + 1 images
    _Recorder(model.visual, fail_on=2)
    with torch.no_grad(), pytest.raises(RuntimeError, match="piece failed"):
        model.encode_image(images)


def test_resnet_pieces_and_training_mode_runs_whole():
    torch.manual_seed(0)
    model = clipforge.create_model("tiny-rn", text={"vocab_size": 500}).double().eval()
    images = torch.randn(5, 3, model.image_size, model.image_size, dtype=torch.float64)
    with torch.no_grad():
        whole = model.encode_image(images)
        # ≤ 2 images per piece; BatchNorm kept (folding it changes rounding, tested in test_fastpaths)
        model = optimize_for_inference(model, InferenceOptions(fold_batchnorm=False, channels_last=False, streams=2),
                                       inplace=True)
        assert model.visual._clipforge_pieces.chunk_rows == 8192  # the ResNet family's size
        _set(model.visual, rows=2 * (model.image_size // 4) ** 2)
        recorder = _Recorder(model.visual)
        torch.testing.assert_close(model.encode_image(images), whole, rtol=0, atol=1e-12)
        assert recorder.sizes == [2, 1, 1, 1]  # 3 pieces rounded up to a multiple of 2 streams
        recorder.calls.clear()
        model.train()  # BatchNorm uses batch statistics: pieces would change them
        model.encode_image(images)
    assert recorder.sizes == [5]


def test_forward_hooks_see_the_pieces_in_order_on_the_callers_thread():
    """Feature extractors hook a submodule and concatenate what it sees: with a hook, no streams."""
    model, images, _ = _tiny_vit()
    _set(model.visual, rows=17, streams=2)  # one image per piece
    seen = []
    handle = model.visual.ln_post.register_forward_hook(
        lambda m, i, out: seen.append((out, threading.current_thread().name)))
    with torch.no_grad():
        features = model.encode_image(images)
    handle.remove()
    assert {name for _, name in seen} == {threading.current_thread().name}
    torch.testing.assert_close(torch.cat([out for out, _ in seen]) @ model.visual.proj, features, rtol=0, atol=1e-12)


def test_optimize_for_inference_keeps_the_state_dict_and_the_original_model():
    model, images, tokens = _tiny_vit(pieced=False)
    fast = optimize_for_inference(model)  # a copy: the original is untouched
    assert type(model) is clipforge.model.CLIP and type(model.visual).__name__ == "VisionTransformer"
    assert isinstance(fast, clipforge.model.CLIP) and type(fast.visual).__name__ == "PiecedVisionTransformer"
    assert list(fast.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_image(images), model.encode_image(images), rtol=0, atol=1e-12)
        torch.testing.assert_close(fast.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=1e-12)
    again = optimize_for_inference(fast)  # applying it twice keeps one pieces layer
    assert type(again.visual) is type(fast.visual)


@pytest.mark.slow
def test_importing_clipforge_starts_no_threads_and_registers_no_fork_handler():
    """Nothing runs at import: the stream pool and its fork handler appear with the first pieces."""
    import subprocess
    import sys

    code = ("import threading, clipforge, clipforge.fastpath.pieces as p; "
            "print(threading.active_count(), p._FORK_RESET, p._HEAP_SETTLED)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]
