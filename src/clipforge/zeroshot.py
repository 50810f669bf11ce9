"""Zero-shot classification heads: class names × prompt templates → one unit vector per class.

Prompt ensembling as in the paper (section 3.1.4) and in OpenAI's ImageNet notebook: every prompt
is encoded, each prompt embedding is L2-normalized, the prompts of a class are averaged and the
mean is normalized again. The head is a matrix ``[C, D]``; an image is classified by the cosine
similarity of its normalized embedding to each row (scaled by 100 for logits, which changes no
argmax). CLIP_benchmark and open_clip build their heads the same way, stored transposed ``[D, C]``.

Template files hold one template a line with ``{}`` (OpenAI's spelling) or ``{c}`` (CLIP_benchmark's)
where the class name goes; blank lines and lines starting with ``#`` are skipped. Shipped sets:
``openai_imagenet`` (OpenAI's 80 ImageNet prompts), ``general`` (the 7-prompt subset OpenAI's
notebook selected), ``synthetic`` (for the synthetic shapes world). A template set may also be a
dict ``{class name: [full prompts]}`` (class-specific prompts, e.g. CuPL).

Heads depend only on the text tower, the tokenizer and the prompts, so they are cached on disk
(safetensors) under a key hashing exactly those: the text-tower weights, the token ids of every
prompt and the class/prompt layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from clipforge import paths

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
# CLIP_benchmark and open_clip multiply cosine similarities by 100 to form zero-shot logits.
ZERO_SHOT_LOGIT_SCALE = 100.0

Templates = Sequence[str] | Mapping[str, Sequence[str]]


def available_template_sets() -> list[str]:
    """Names of the template files shipped with clipforge."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def load_templates(name_or_path: str | os.PathLike) -> list[str]:
    """Templates from a shipped set name (``openai_imagenet``, ``general``, ``synthetic``) or a file.

    Raises ValueError naming the file when it holds no template or a line lacks the ``{}``/``{c}``
    placeholder.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = TEMPLATE_DIR / f"{name_or_path}.txt"
        if not shipped.is_file():
            raise FileNotFoundError(
                f"template set {str(name_or_path)!r} is neither a file nor one of {available_template_sets()}"
            )
        path = shipped
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    templates = [line for line in lines if line and not line.startswith("#")]
    if not templates:
        raise ValueError(f"{path}: no templates (one a line, with {{}} where the class name goes)")
    for number, template in enumerate(templates, 1):
        _check_template(template, f"{path}: template {number}")
    return templates


def _check_template(template: str, where: str) -> None:
    if "{}" not in template and "{c}" not in template:
        raise ValueError(f"{where} {template!r} has no '{{}}' or '{{c}}' placeholder for the class name")


def format_prompt(template: str, classname: str) -> str:
    """Fill ``{}`` or ``{c}`` with the class name (a plain replace: other braces stay as they are)."""
    return template.replace("{c}", classname).replace("{}", classname)


def class_prompts(classnames: Sequence[str], templates: Templates) -> list[list[str]]:
    """The prompts of every class, in class order: ``[[prompt, ...] per class]``."""
    if not classnames:
        raise ValueError("no class names given")
    if isinstance(templates, Mapping):
        missing = [c for c in classnames if not templates.get(c)]
        if missing:
            raise ValueError(f"class-specific templates lack prompts for classes {missing[:5]}")
        return [list(templates[c]) for c in classnames]
    if isinstance(templates, str):
        raise TypeError("templates must be a list of strings (use load_templates for a file or set name)")
    if not templates:
        raise ValueError("no templates given")
    for template in templates:
        _check_template(template, "template")
    return [[format_prompt(t, c) for t in templates] for c in classnames]


def tokenize_for(model: Any, tokenizer: Callable[..., torch.Tensor], texts: Sequence[str]) -> torch.Tensor:
    """Token ids [N, L] with the model's context length when the tokenizer accepts one."""
    length = getattr(getattr(getattr(model, "config", None), "text", None), "context_length", None)
    if length is not None and _accepts_context_length(tokenizer):
        return tokenizer(list(texts), context_length=length)
    return tokenizer(list(texts))


def _accepts_context_length(tokenizer: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(tokenizer).parameters
    except (TypeError, ValueError):
        return False
    return "context_length" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for the duration; the model's training flag is restored after."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def encode_texts(model: Any, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Token ids [N, L] → L2-normalized float32 text embeddings [N, D], in batches, on the CPU."""
    device = model_device(model)
    out = []
    with eval_mode(model):
        for start in range(0, len(tokens), batch_size):
            features = model.encode_text(tokens[start : start + batch_size].to(device))
            out.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(out)


def build_classifier(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Templates,
    *,
    batch_size: int = 256,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:
    """The zero-shot head [C, D] (float32, rows unit norm): normalize, average, re-normalize.

    With ``cache_dir`` the head is read from / written to ``cache_dir/<key>.safetensors``, the key
    hashing the text-tower weights, the prompts' token ids and the class layout.
    """
    prompts = class_prompts(classnames, templates)
    flat = [p for per_class in prompts for p in per_class]
    tokens = tokenize_for(model, tokenizer, flat)  # [sum of prompts, L]
    counts = [len(p) for p in prompts]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(model, tokens, counts, classnames)}.safetensors"
        cached = _read_cached(path, len(classnames))
        if cached is not None:
            return cached
    embeddings = encode_texts(model, tokens, batch_size)  # [sum of prompts, D], rows normalized
    rows = [chunk.mean(dim=0) for chunk in torch.split(embeddings, counts)]
    classifier = F.normalize(torch.stack(rows), dim=-1)  # [C, D]
    if path is not None:
        _write_cached(path, classifier, classnames, prompts)
    return classifier


def zero_shot_logits(image_features: torch.Tensor, classifier: torch.Tensor, scale: float = ZERO_SHOT_LOGIT_SCALE):
    """Image features [N, D] (any norm) × head [C, D] → logits [N, C] = scale · cos(image, class)."""
    return scale * F.normalize(image_features.float(), dim=-1) @ classifier.float().t()


# ---- the on-disk cache ------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``zeroshot/`` in the cache directory (``$CLIPFORGE_CACHE``, else ``~/.cache/clipforge``)."""
    return paths.cache_dir() / "zeroshot"


def text_tower_fingerprint(model: Any) -> str:
    """SHA-256 of the tensors a head depends on: all but the image tower and the logit scale (and bias)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual.") or name in ("logit_scale", "logit_bias"):  # none changes a head
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model: Any, tokens: torch.Tensor, counts: Sequence[int], classnames: Sequence[str]) -> str:
    digest = hashlib.sha256(text_tower_fingerprint(model).encode())
    digest.update(tokens.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(json.dumps([list(counts), list(classnames)]).encode())
    return digest.hexdigest()[:32]


def _read_cached(path: Path, num_classes: int) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        classifier = load_file(str(path))["classifier"]
    except (SafetensorError, KeyError, OSError):
        return None  # a damaged cache entry is rebuilt, never trusted
    return classifier if classifier.shape[0] == num_classes else None


def _write_cached(path: Path, classifier: torch.Tensor, classnames: Sequence[str], prompts) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"classnames": json.dumps(list(classnames)), "prompts_per_class": json.dumps([len(p) for p in prompts])}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"classifier": classifier.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


__all__ = [
    "ZERO_SHOT_LOGIT_SCALE",
    "available_template_sets",
    "build_classifier",
    "class_prompts",
    "default_cache_dir",
    "encode_texts",
    "format_prompt",
    "load_templates",
    "text_tower_fingerprint",
    "zero_shot_logits",
]
