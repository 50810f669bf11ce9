"""Captions for classification shards: a class label becomes "a photo of a {class name}." text.

Shards that carry an integer ``.cls`` and no caption (CLIP_benchmark's webdatasets, ImageNet-style
shard sets) train a CLIP model as they are: each sample's caption is one of the templates filled
with its class name, the template (and, for a class with several names ``"happy | smiling"``,
the name) drawn afresh every epoch from the sample's own generator, so runs are reproducible
and resume exactly. A sample with a caption keeps it.

Where the names and templates come from (``DataConfig.classnames`` / ``class_templates``):

- class names: the file given, else ``classnames.txt`` in the shards' folder or its parent
  (CLIP_benchmark's layout: ``root/classnames.txt`` beside ``root/train/0.tar``), one a line in
  label order;
- templates: the set name or file given, else ``zeroshot_classification_templates.txt`` beside the
  class names, else OpenAI's 80 ImageNet templates.
"""

from __future__ import annotations

import posixpath
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipforge.data.decode import BadSample

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


@dataclass(frozen=True)
class ClassCaptions:
    """Class names (label order, each a tuple of alternative names) and prompt templates."""

    names: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    source: str  # the class-name file, for messages

    def caption(self, data: bytes, rng: np.random.Generator) -> str:
        """The caption of a sample whose ``.cls`` member holds ``data``; BadSample when unusable."""
        text = data.decode("utf-8", "replace").strip()
        try:
            label = int(text)
        except ValueError:
            raise BadSample("bad_label", f".cls holds {text[:20]!r}, not an integer") from None
        if not 0 <= label < len(self.names):
            raise BadSample("bad_label", f"label {label} outside the {len(self.names)} classes of {self.source}")
        alternatives = self.names[label]
        name = alternatives[int(rng.integers(len(alternatives)))]
        template = self.templates[int(rng.integers(len(self.templates)))]
        return template.replace("{c}", name).replace("{}", name)


def caption_from_label(captions: ClassCaptions | None, data: bytes, rng: np.random.Generator) -> str:
    """A ``.cls`` sample's caption; BadSample ``missing_caption`` when no class names are known."""
    if captions is None:
        raise BadSample("missing_caption", "a .cls label but no class names (classnames.txt beside the shards, "
                                           "or data.classnames)")
    return captions.caption(data, rng)


def caption_rng(seed: int, epoch: int, shard: str, key: str, pass_index: int) -> np.random.Generator:
    """A sample's template draw: its identity, like its augmentation, but a stream of its own."""
    return np.random.default_rng([seed, epoch, zlib.crc32(f"{shard}/{key}".encode()), pass_index, 1])


def _local_dirs(urls: list[str]) -> list[Path]:
    """The shards' folder and its parent, for local shards (where CLIP_benchmark keeps classnames.txt)."""
    dirs: list[Path] = []
    for url in urls[:1]:
        if "://" in url and not url.startswith("file://") or url.startswith("pipe:"):
            continue
        folder = Path(posixpath.dirname(url.removeprefix("file://")) or ".")
        dirs += [folder, folder.parent]
    return dirs


def find_classnames_file(urls: list[str]) -> Path | None:
    """``classnames.txt`` in the (local) shards' folder or its parent, if there is one."""
    return next((d / CLASSNAMES_FILE for d in _local_dirs(urls) if (d / CLASSNAMES_FILE).is_file()), None)


def _read_names(path: Path) -> tuple[tuple[str, ...], ...]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = tuple(tuple(a.strip() for a in line.split(" | ")) for line in lines if line and not line.startswith("#"))
    if not names:
        raise ValueError(f"{path}: no class names (one a line, in label order)")
    return names


def load_class_captions(classnames: str | None, templates: str | None, urls: list[str]) -> ClassCaptions | None:
    """The class captions configured or found beside the shards; None when there are no class names."""
    from clipforge.zeroshot import load_templates

    if classnames is not None:
        names_file = Path(classnames)
        if not names_file.is_file():
            raise FileNotFoundError(f"data.classnames {classnames}: no such file")
    else:
        names_file = find_classnames_file(urls)
        if names_file is None:
            return None
    if templates is None:
        beside = names_file.parent / TEMPLATES_FILE
        templates = str(beside) if beside.is_file() else "openai_imagenet"
    return ClassCaptions(_read_names(names_file), tuple(load_templates(templates)), str(names_file))
