"""open_clip's model config (``open_clip_config.json`` on the Hub, or a ``model_configs/*.json``) → ModelConfig.

open_clip writes ``{"model_cfg": {...}, "preprocess_cfg": {...}}`` beside its weights
(``push_to_hf_hub.save_config_for_hf``). The keys clipforge's towers have are mapped; an option they
lack is accepted only at open_clip's default value (the option is off) and refused otherwise, naming
the key, so a model that would compute something else never loads silently.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clipforge import families
from clipforge.config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig

# Options open_clip has and clipforge's towers do not: accepted at these (open_clip's default) values.
_VISION_OFF = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None, "attn_pooler_queries": ..., "attn_pooler_heads": ...,
    "timm_model_pretrained": ..., "timm_pool": ..., "timm_proj": ..., "timm_proj_bias": ..., "timm_drop": ...,
    "timm_drop_path": ...,
}  # ...: any value (the option only matters when another one above is on)
_TEXT_OFF = {
    "hf_tokenizer_name": None, "tokenizer_mode": None, "tokenizer_kwargs": None, "ls_init_value": None,
    "embed_cls": False, "pad_id": 0, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
    "proj_bias": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None, "norm_kwargs": None,
    "block_type": None, "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "hf_model_name": None, "eos_id": ..., "hf_model_pretrained": ...,
    "hf_proj_type": ..., "hf_pooler_type": ...,
}
_MODEL_OFF = {"custom_text": False, "init_logit_bias": None, "nonscalar_logit_scale": False, "cast_dtype": ...,
              "output_dict": ...}  # cast_dtype: a precision to load in; output_dict: the forward's return type
_PREPROCESS_OFF = {"mode": "RGB", "fill_color": 0, "size": ...}  # size: the model's image size


def config_from_openclip(data: dict[str, Any]) -> ModelConfig:
    """``open_clip_config.json`` contents (or a bare model config) → ModelConfig. Raises ValueError."""
    model = data.get("model_cfg", data)
    _check_off(model, _MODEL_OFF, "model_cfg", mapped={"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale"})
    act = "quick_gelu" if model.get("quick_gelu") else "gelu"
    vision = _vision(dict(model["vision_cfg"]), act)
    text = _text(dict(model["text_cfg"]), act)
    extra = {"init_logit_scale": float(model["init_logit_scale"])} if model.get("init_logit_scale") is not None else {}
    return ModelConfig(int(model["embed_dim"]), vision, text, preprocess=_preprocess(data.get("preprocess_cfg") or {}),
                       **extra)


def _vision(cfg: dict[str, Any], act: str) -> VisionConfig:
    _check_off(cfg, _VISION_OFF, "vision_cfg", mapped={"image_size", "layers", "width", "head_width", "mlp_ratio",
                                                        "patch_size", "patch_dropout"})
    size = cfg.get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"vision_cfg.image_size {size}: only square inputs are supported")
        size = size[0]
    layers, width, head_width = cfg.get("layers", 12), cfg.get("width", 768), cfg.get("head_width", 64)
    if isinstance(layers, (list, tuple)):  # open_clip's ModifiedResNet: four block counts
        config = VisionConfig(int(size), tuple(layers), width, patch_size=None, act=act, kind="resnet")
        heads = width * 32 // head_width  # open_clip's attention-pool heads
    else:
        config = VisionConfig(int(size), int(layers), width, patch_size=cfg.get("patch_size", 16),
                              mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=act,
                              patch_dropout=float(cfg.get("patch_dropout", 0.0)))
        heads = width // head_width
    # Heads are written out only where they differ from the family's rule, as in the registered configs.
    return config if heads == families.of(config).default_heads(config) else dataclasses.replace(config, heads=heads)


def _text(cfg: dict[str, Any], act: str) -> TextConfig:
    _check_off(cfg, _TEXT_OFF, "text_cfg", mapped={"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"})
    width, heads = cfg.get("width", 512), cfg.get("heads", 8)  # open_clip's defaults
    config = TextConfig(context_length=cfg.get("context_length", 77), vocab_size=cfg.get("vocab_size", 49408), width=width,
                        layers=cfg.get("layers", 12), mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=act)
    return config if heads == config.num_heads else dataclasses.replace(config, heads=heads)


def _preprocess(cfg: dict[str, Any]) -> PreprocessConfig:
    _check_off(cfg, _PREPROCESS_OFF, "preprocess_cfg", mapped={"mean", "std", "interpolation", "resize_mode"})
    default = PreprocessConfig()
    resize, interpolation = cfg.get("resize_mode", default.resize), cfg.get("interpolation", default.interpolation)
    if resize not in ("shortest", "squash") or interpolation not in ("bicubic", "bilinear"):
        raise ValueError(f"preprocess_cfg: resize_mode {resize!r} / interpolation {interpolation!r} are not supported "
                         "(supported: shortest, squash / bicubic, bilinear)")
    mean, std = tuple(cfg.get("mean", default.mean)), tuple(cfg.get("std", default.std))
    return PreprocessConfig(mean=mean, std=std, resize=resize, interpolation=interpolation)  # type: ignore[arg-type]


def _check_off(cfg: dict[str, Any], off: dict[str, Any], where: str, mapped: set[str] = frozenset()) -> None:
    for key, value in cfg.items():
        if key in mapped:
            continue
        if key not in off:
            raise ValueError(f"{where}.{key} is an open_clip option clipforge does not know")
        if off[key] is not ... and value != off[key]:
            raise ValueError(f"{where}.{key} = {value!r} is not supported (clipforge builds it as {off[key]!r})")
