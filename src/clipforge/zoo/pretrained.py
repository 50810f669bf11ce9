"""Pretrained tags: every released weight set for a registered architecture, as open_clip names them.

``clipforge.load("ViT-H-14", pretrained="laion2b_s32b_b79k")`` finds the entry here, downloads its
weights (``clipforge.hub``) and builds the architecture they were trained as, with the preprocessing
they expect. A tag names weights, and weights fix the activation: ``load("ViT-H-14",
pretrained="dfn5b")`` builds ViT-H-14-quickgelu, as DFN trained it (open_clip 3.3 lists the tag under
both names, builds GELU for the plain one and warns).

Sources, as of open_clip 3.3.0 (``src/open_clip/pretrained.py``; tests/test_pretrained.py checks every
entry against open_clip's table): the Hub repository and the original URL of each weight set, its
preprocessing (mean/std, resize mode) and its activation. Zero-shot ImageNet-1k top-1, in percent:

* ``open_clip``: mlfoundations/open_clip ``docs/openclip_results.csv`` (commit f862f86), column
  "ImageNet 1k", evaluated by the open_clip team with CLIP_benchmark (for OpenAI's weights a
  re-evaluation: OpenAI's paper gives slightly different figures).
* ``metaclip``: facebookresearch/MetaCLIP ``README.md``, table "Pre-trained Models", "IN ZS Acc.".
* ``dfn``: the model card of apple/DFN2B-CLIP-ViT-L-14-39B on the Hugging Face Hub, "ImageNet 1k".

Where open_clip's table is wrong, this one says so: ``ViT-B-16-plus-240`` / ``laion400m_e32`` points
at the e31 repository there; here it has only its release URL, so it is listed but not downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipforge.config import PreprocessConfig
from clipforge.hub import HUB_PREFIX, OPENAI_URLS
from clipforge.registry import canonical_name

SOURCES = {
    "open_clip": "mlfoundations/open_clip docs/openclip_results.csv (f862f86), ImageNet 1k",
    "metaclip": "facebookresearch/MetaCLIP README.md, Pre-trained Models, IN ZS Acc.",
    "dfn": "huggingface.co/apple/DFN2B-CLIP-ViT-L-14-39B model card, ImageNet 1k",
}
_INCEPTION = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_SQUASH = PreprocessConfig(resize="squash")


@dataclass(frozen=True)
class Pretrained:
    """One released weight set. ``model`` is open_clip's name of the architecture it was trained as."""

    model: str
    tag: str
    hf_hub: str = ""  # "ORG/NAME": a Hub repository in open_clip's layout ("ORG/NAME/FILE" names the file)
    url: str = ""  # where the weights were first released
    imagenet_top1: float | None = None  # zero-shot, percent, as ``reported_by`` reports it
    reported_by: str = "open_clip"  # a key of SOURCES
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    @property
    def architecture(self) -> str:
        """The registered model the weights load into (``ViT-B-32-quickgelu`` → ``ViT-B/32``)."""
        return canonical_name(self.model)

    @property
    def source(self) -> str:
        """Where ``load`` gets the weights: OpenAI's checksummed URL, else the Hub repository, else (not
        downloadable here) the release URL."""
        if self.url in OPENAI_URLS.values() or not self.hf_hub:
            return self.url
        return f"{HUB_PREFIX}{self.hf_hub}"


_TAGS: dict[tuple[str, str], Pretrained] = {}


def register_pretrained(entry: Pretrained) -> Pretrained:
    canonical_name(entry.model)  # the architecture must be registered
    key = (entry.architecture, entry.tag)
    if key in _TAGS:
        raise ValueError(f"pretrained tag {entry.tag!r} of {entry.model} is already registered")
    _TAGS[key] = entry
    return entry


def list_pretrained() -> list[Pretrained]:
    return list(_TAGS.values())


def tags_of(name: str) -> list[str]:
    """The tags ``get_pretrained(name, tag)`` accepts for a model name."""
    return [e.tag for e in _TAGS.values() if _names(e, name)]


def get_pretrained(name: str, tag: str) -> Pretrained:
    """The entry for (model name, tag): under its own architecture's names, or open_clip's name
    without ``-quickgelu`` for QuickGELU weights (``("ViT-H-14", "dfn5b")``)."""
    tag = tag.lower().replace("-", "_")  # open_clip's normalisation of tags
    for entry in _TAGS.values():
        if entry.tag == tag and _names(entry, name):
            return entry
    known = tags_of(name)
    raise KeyError(f"no pretrained tag {tag!r} for {name!r}; " + (f"its tags: {', '.join(known)}" if known else
                   "it has none (`clipforge models --pretrained` lists every tag)"))


def _names(entry: Pretrained, name: str) -> bool:
    try:
        if canonical_name(name) == entry.architecture:
            return True
    except KeyError:
        return False
    return name == entry.model.removesuffix("-quickgelu")


def _add(model: str, tag: str, hf_hub: str, url: str, top1: float | None, reported_by: str = "open_clip",
         preprocess: PreprocessConfig = PreprocessConfig()) -> None:
    register_pretrained(Pretrained(model, tag, hf_hub, url, top1, reported_by, preprocess))


from clipforge.zoo import pretrained_table  # noqa: E402,F401  (the entries register themselves)
