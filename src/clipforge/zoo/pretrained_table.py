"""The entries of ``zoo.pretrained`` (sources and the meaning of each column: see that module).

One line per weight set: open_clip's architecture name (with ``-quickgelu`` for QuickGELU weights), the
tag, the Hub repository, the release URL, and the zero-shot ImageNet-1k top-1 (%) with its source.
"""

from __future__ import annotations

from clipforge.hub import OPENAI_URLS
from clipforge.zoo.pretrained import _INCEPTION, _SQUASH, _add

_GH = "https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/"
_FB = "https://dl.fbaipublicfiles.com/MMPT/metaclip/"


def _timm(model: str, tag: str, repo: str, url: str, top1: float | None, **kw) -> None:
    _add(model, tag, f"timm/{repo}", url, top1, **kw)


def _laion(model: str, tag: str, repo: str, top1: float | None, **kw) -> None:
    _add(model, tag, f"laion/{repo}", "", top1, **kw)


def _commonpool(model: str, scale: str, seen: str, top1: dict[str, float]) -> None:
    """DataComp's CommonPool baselines at one scale, by filter ("" = unfiltered); repository names
    spell the samples seen / batch as "s13B-b90K" where tags have "s13b_b90k"."""
    repo_seen = "-".join(part[:-1] + part[-1].upper() for part in seen.split("_"))
    for pool, figure in top1.items():
        tag = f"commonpool_{scale.lower()}{'_' + pool if pool else ''}_{seen}"
        _laion(model, tag, f"CLIP-{model}-CommonPool.{scale}{'.' + pool if pool else ''}-{repo_seen}", figure)


# ---- OpenAI (downloaded from OpenAI's URLs, whose path carries the file's SHA-256) -----------------
for _model, _name, _repo, _top1 in (
    ("RN50-quickgelu", "RN50", "resnet50_clip", 59.82), ("RN101-quickgelu", "RN101", "resnet101_clip", 62.28),
    ("RN50x4-quickgelu", "RN50x4", "resnet50x4_clip", 66.27), ("RN50x16-quickgelu", "RN50x16", "resnet50x16_clip", 70.72),
    ("RN50x64-quickgelu", "RN50x64", "resnet50x64_clip", 73.91),
    ("ViT-B-32-quickgelu", "ViT-B/32", "vit_base_patch32_clip_224", 63.32),
    ("ViT-B-16-quickgelu", "ViT-B/16", "vit_base_patch16_clip_224", 68.34),
    ("ViT-L-14-quickgelu", "ViT-L/14", "vit_large_patch14_clip_224", 75.54),
    ("ViT-L-14-336-quickgelu", "ViT-L/14@336px", "vit_large_patch14_clip_336", 76.56),
):
    _timm(_model, "openai", f"{_repo}.openai", OPENAI_URLS[_name], _top1)

# ---- YFCC-15M, CC12M (open_clip's ResNets, QuickGELU) ----------------------------------------------
_timm("RN50-quickgelu", "yfcc15m", "resnet50_clip.yfcc15m", f"{_GH}rn50-quickgelu-yfcc15m-455df137.pt", 32.75)
_timm("RN50-quickgelu", "cc12m", "resnet50_clip.cc12m", f"{_GH}rn50-quickgelu-cc12m-f000538c.pt", 36.47)
_timm("RN101-quickgelu", "yfcc15m", "resnet101_clip.yfcc15m", f"{_GH}rn101-quickgelu-yfcc15m-3e04b30e.pt", 34.87)

# ---- LAION-400M -----------------------------------------------------------------------------------
_timm("ViT-B-32-quickgelu", "laion400m_e31", "vit_base_patch32_clip_224.laion400m_e31",
      f"{_GH}vit_b_32-quickgelu-laion400m_e31-d867053b.pt", 62.94)
_timm("ViT-B-32-quickgelu", "laion400m_e32", "vit_base_patch32_clip_224.laion400m_e32",
      f"{_GH}vit_b_32-quickgelu-laion400m_e32-46683a32.pt", 62.93)
_timm("ViT-B-16", "laion400m_e31", "vit_base_patch16_clip_224.laion400m_e31", f"{_GH}vit_b_16-laion400m_e31-00efa78f.pt", 66.98)
_timm("ViT-B-16", "laion400m_e32", "vit_base_patch16_clip_224.laion400m_e32", f"{_GH}vit_b_16-laion400m_e32-55e67d44.pt", 67.05)
_timm("ViT-B-16-plus-240", "laion400m_e31", "vit_base_patch16_plus_clip_240.laion400m_e31",
      f"{_GH}vit_b_16_plus_240-laion400m_e31-8fb26589.pt", 69.04)
# open_clip 3.3 gives this tag the e31 repository (a copy slip): only the release URL is its own.
_add("ViT-B-16-plus-240", "laion400m_e32", "", f"{_GH}vit_b_16_plus_240-laion400m_e32-699c4b84.pt", 69.19)
_timm("ViT-L-14", "laion400m_e31", "vit_large_patch14_clip_224.laion400m_e31", f"{_GH}vit_l_14-laion400m_e31-69988bb6.pt", 72.71)
_timm("ViT-L-14", "laion400m_e32", "vit_large_patch14_clip_224.laion400m_e32", f"{_GH}vit_l_14-laion400m_e32-3d133497.pt", 72.77)

# ---- LAION-2B -------------------------------------------------------------------------------------
_timm("ViT-B-32", "laion2b_e16", "vit_base_patch32_clip_224.laion2b_e16", f"{_GH}vit_b_32-laion2b_e16-af8dbd0c.pth", 65.65)
_laion("ViT-B-32", "laion2b_s34b_b79k", "CLIP-ViT-B-32-laion2B-s34B-b79K", 66.56)
_laion("ViT-B-16", "laion2b_s34b_b88k", "CLIP-ViT-B-16-laion2B-s34B-b88K", 70.23)
_laion("ViT-L-14", "laion2b_s32b_b82k", "CLIP-ViT-L-14-laion2B-s32B-b82K", 75.25, preprocess=_INCEPTION)
_laion("ViT-H-14", "laion2b_s32b_b79k", "CLIP-ViT-H-14-laion2B-s32B-b79K", 77.96)
_laion("ViT-g-14", "laion2b_s12b_b42k", "CLIP-ViT-g-14-laion2B-s12B-b42K", 76.63)
_laion("ViT-g-14", "laion2b_s34b_b88k", "CLIP-ViT-g-14-laion2B-s34B-b88K", 78.47)
_laion("ViT-bigG-14", "laion2b_s39b_b160k", "CLIP-ViT-bigG-14-laion2B-39B-b160k", 80.09)

# ---- DataComp: DataComp-filtered pools and the CommonPool baselines (DataComp paper, 2023) -----------
_laion("ViT-B-32-256", "datacomp_s34b_b86k", "CLIP-ViT-B-32-256x256-DataComp-s34B-b86K", 72.81)
_laion("ViT-B-32", "datacomp_xl_s13b_b90k", "CLIP-ViT-B-32-DataComp.XL-s13B-b90K", 69.17)
_laion("ViT-B-16", "datacomp_xl_s13b_b90k", "CLIP-ViT-B-16-DataComp.XL-s13B-b90K", 73.49)
_laion("ViT-L-14", "datacomp_xl_s13b_b90k", "CLIP-ViT-L-14-DataComp.XL-s13B-b90K", 79.21)
_commonpool("ViT-L-14", "XL", "s13b_b90k", {"clip": 76.37, "laion": 75.45, "": 72.29})
_laion("ViT-B-16", "datacomp_l_s1b_b8k", "CLIP-ViT-B-16-DataComp.L-s1B-b8K", 63.10)
_commonpool("ViT-B-16", "L", "s1b_b8k", {"clip": 57.77, "laion": 55.26, "image": 57.19, "text": 56.05, "basic": 51.55, "": 45.93})
_laion("ViT-B-32", "datacomp_m_s128m_b4k", "CLIP-ViT-B-32-DataComp.M-s128M-b4K", 29.72)
_commonpool("ViT-B-32", "M", "s128m_b4k", {"clip": 27.25, "laion": 23.04, "image": 26.78, "text": 25.48, "basic": 22.55, "": 17.55})
_laion("ViT-B-32", "datacomp_s_s13m_b4k", "CLIP-ViT-B-32-DataComp.S-s13M-b4K", 3.92)
_commonpool("ViT-B-32", "S", "s13m_b4k", {"clip": 5.05, "laion": 3.05, "image": 3.92, "text": 4.60, "basic": 3.77, "": 2.70})

# ---- DFN (Apple; QuickGELU except the 39B-sample ViT-L) ----------------------------------------------
_add("ViT-B-16-quickgelu", "dfn2b", "apple/DFN2B-CLIP-ViT-B-16", "", 76.24)
_add("ViT-L-14-quickgelu", "dfn2b", "apple/DFN2B-CLIP-ViT-L-14", "", 81.41)
_add("ViT-L-14", "dfn2b_s39b", "apple/DFN2B-CLIP-ViT-L-14-39B", "", 82.19, reported_by="dfn")
_add("ViT-H-14-quickgelu", "dfn5b", "apple/DFN5B-CLIP-ViT-H-14", "", 83.44, preprocess=_SQUASH)
_add("ViT-H-14-378-quickgelu", "dfn5b", "apple/DFN5B-CLIP-ViT-H-14-378", "", 84.37, preprocess=_SQUASH)

# ---- MetaCLIP (Meta; QuickGELU except v1.2 "altogether"); "fullcc" is MetaCLIP's 2.5B set -------------
_timm("ViT-B-32-quickgelu", "metaclip_400m", "vit_base_patch32_clip_224.metaclip_400m", f"{_FB}b32_400m.pt", 65.58)
_timm("ViT-B-32-quickgelu", "metaclip_fullcc", "vit_base_patch32_clip_224.metaclip_2pt5b", f"{_FB}b32_fullcc2.5b.pt", 67.66)
_timm("ViT-B-16-quickgelu", "metaclip_400m", "vit_base_patch16_clip_224.metaclip_400m", f"{_FB}b16_400m.pt", 70.80)
_timm("ViT-B-16-quickgelu", "metaclip_fullcc", "vit_base_patch16_clip_224.metaclip_2pt5b", f"{_FB}b16_fullcc2.5b.pt", 72.12)
_timm("ViT-L-14-quickgelu", "metaclip_400m", "vit_large_patch14_clip_224.metaclip_400m", f"{_FB}l14_400m.pt", 76.20)
_timm("ViT-L-14-quickgelu", "metaclip_fullcc", "vit_large_patch14_clip_224.metaclip_2pt5b", f"{_FB}l14_fullcc2.5b.pt", 79.17)
_timm("ViT-H-14-quickgelu", "metaclip_fullcc", "vit_huge_patch14_clip_224.metaclip_2pt5b", f"{_FB}h14_fullcc2.5b.pt", 80.51)
_timm("ViT-H-14", "metaclip_altogether", "vit_huge_patch14_clip_224.metaclip_altogether", f"{_FB}h14_v1.2_altogether.pt",
      82.0, reported_by="metaclip")
_timm("ViT-bigG-14-quickgelu", "metaclip_fullcc", "vit_gigantic_patch14_clip_224.metaclip_2pt5b", f"{_FB}G14_fullcc2.5b.pt",
      82.1, reported_by="metaclip")

del _model, _name, _repo, _top1
