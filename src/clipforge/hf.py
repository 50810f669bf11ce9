"""Conversion to and from Hugging Face transformers' ``CLIPModel`` (ViT models only); SigLIP models
(``SiglipModel`` / ``Siglip2Model``) are dispatched to :mod:`clipforge.hf_siglip` by their family's ``hf_model``.

The key and config mapping is plain tensor work, so reading an HF checkpoint (a ``save_pretrained``
directory or its state_dict) needs no transformers install; ``to_hf`` / ``from_hf`` build or take a
live ``transformers.CLIPModel`` and import transformers only when called (the ``hf`` extra).

Mapping (OpenAI layout ↔ HF):
- ``attn.in_proj_weight`` [3W, W] ↔ ``self_attn.{q,k,v}_proj.weight`` (split in that order), same for biases;
- ``visual.proj`` [W, E] and ``text_projection`` [W, E] ↔ ``visual_projection.weight`` / ``text_projection.weight``
  [E, W] (transposed: HF stores them as bias-free Linear layers);
- ``visual.ln_pre`` ↔ ``vision_model.pre_layrnorm`` (sic), ``visual.ln_post`` ↔ ``post_layernorm``;
- text pooling: our tower reads out at ``argmax(ids)`` (the end-of-text token has the largest id); HF reads
  out at the first ``eos_token_id``. With ``eos_token_id = vocab_size - 1`` (or HF's legacy value 2, which
  means argmax) both pick the same position for every tokenized text.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from clipforge import families
from clipforge.config import INIT_LOGIT_SCALE, ModelConfig, TextConfig, VisionConfig
from clipforge.model import CLIP

LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, which OpenAI's models use
_ACTS = ("quick_gelu", "gelu")
# Renames inside one transformer block, OpenAI → HF.
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}
# Renames outside the blocks, OpenAI → HF (ViT image tower, text tower).
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_TOWERS = {"transformer.resblocks.": "text_model.encoder.layers.", "visual.transformer.resblocks.": "vision_model.encoder.layers."}


def is_hf_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("text_model.", "vision_model.")) for k in state)


def hf_model_of(config: ModelConfig) -> str | None:
    """The transformers class that holds both towers ("CLIPModel", "SiglipModel"), or None."""
    names = {families.of(config.vision).hf_model, families.of(config.text).hf_model}
    return names.pop() if len(names) == 1 else None


def check_convertible(config: ModelConfig) -> None:
    """Raise unless both towers' families are ones HF's ``CLIPModel`` holds."""
    for family in (families.of(config.vision), families.of(config.text)):
        if family.hf_model != "CLIPModel":
            raise ValueError(f"HF transformers' CLIPModel has no {family.title} {family.tower} tower: "
                             "only ViT models with OpenAI's text tower convert to HF")


def state_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI-layout state_dict of a ViT CLIP → HF ``CLIPModel`` state_dict (check the config with
    :func:`check_convertible` first: keys that have no HF name raise a KeyError naming them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        else:
            out.update(_block_to_hf(key, value))
    return out


def _block_to_hf(key: str, value: torch.Tensor, towers: dict[str, str] = _TOWERS) -> dict[str, torch.Tensor]:
    for ours, theirs in towers.items():
        match = re.fullmatch(re.escape(ours) + r"(\d+)\.(.+)", key)
        if match is None:
            continue
        prefix, rest = f"{theirs}{match[1]}.", match[2]
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            kind = rest.rsplit("_", 1)[1]  # "weight" or "bias"
            q, k, v = value.chunk(3, dim=0)  # the packed projection is [q; k; v] along dim 0
            return {f"{prefix}self_attn.{n}_proj.{kind}": t.contiguous() for n, t in zip("qkv", (q, k, v))}
        module, _, leaf = rest.rpartition(".")
        if module in _BLOCK:
            return {f"{prefix}{_BLOCK[module]}.{leaf}": value}
    raise KeyError(f"no HF name for state_dict key {key!r}")


def state_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` state_dict → OpenAI layout (the inverse of ``state_to_hf``); a SigLIP one → ours."""
    from clipforge import hf_siglip

    if hf_siglip.is_siglip_state_dict(state):
        return hf_siglip.state_from_hf(state)
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a non-parameter buffer older transformers versions saved
        if key in top:
            out[top[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            _block_from_hf(key, value, block, out)
    for key in [k for k in out if k.endswith(".attn.q_proj")]:
        _pack_qkv(out, key[: -len("q_proj")])
    return out


def _block_from_hf(key: str, value: torch.Tensor, block: dict[str, str], out: dict[str, torch.Tensor],
                   towers: dict[str, str] = _TOWERS) -> None:
    for ours, theirs in towers.items():
        match = re.fullmatch(re.escape(theirs) + r"(\d+)\.(.+)", key)
        if match is None:
            continue
        prefix, rest = f"{ours}{match[1]}.", match[2]
        qkv = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
        if qkv:  # collected per block, packed into in_proj_* afterwards
            out.setdefault(f"{prefix}attn.q_proj", {})[(qkv[1], qkv[2])] = value  # type: ignore[index]
            return
        module, _, leaf = rest.rpartition(".")
        if module in block:
            out[f"{prefix}{block[module]}.{leaf}"] = value
            return
    raise KeyError(f"unexpected key {key!r} in an HF state_dict")


def _pack_qkv(out: dict[str, Any], attn: str) -> None:
    parts = out.pop(f"{attn}q_proj")
    for kind in ("weight", "bias"):
        out[f"{attn}in_proj_{kind}"] = torch.cat([parts[(n, kind)] for n in "qkv"], dim=0)  # [3W, ...]


def hf_config_dict(config: ModelConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    """Keyword arguments of ``transformers.CLIPConfig`` for a ViT model config."""
    check_convertible(config)
    v, t = config.vision, config.text
    text = dict(
        vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=int(t.width * t.mlp_ratio),
        num_hidden_layers=t.layers, num_attention_heads=t.num_heads, max_position_embeddings=t.context_length,
        hidden_act=t.act, layer_norm_eps=LAYER_NORM_EPS, projection_dim=config.embed_dim,
        # end/start of text are the two largest ids (OpenAI's vocabulary layout); padding is 0.
        eos_token_id=t.vocab_size - 1 if eos_token_id is None else eos_token_id,
        bos_token_id=t.vocab_size - 2, pad_token_id=0,
    )
    vision = dict(
        hidden_size=v.width, intermediate_size=int(v.width * v.mlp_ratio), num_hidden_layers=v.layers,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size, num_channels=3,
        hidden_act=v.act, layer_norm_eps=LAYER_NORM_EPS, projection_dim=config.embed_dim,
    )
    return dict(text_config=text, vision_config=vision, projection_dim=config.embed_dim,
                logit_scale_init_value=config.init_logit_scale)


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A ``CLIPConfig.to_dict()`` (or an HF ``config.json``) → our ModelConfig. Raises for what we cannot match."""
    from clipforge import hf_siglip

    if hf.get("model_type", "clip") in hf_siglip.MODEL_TYPES:
        return hf_siglip.config_from_hf(hf)
    if hf.get("model_type", "clip") != "clip":
        raise ValueError(f"HF model_type {hf['model_type']!r} is not supported (expected 'clip' or one of "
                         f"{hf_siglip.MODEL_TYPES})")
    text, vision = hf["text_config"], hf["vision_config"]
    for part, cfg in (("text", text), ("vision", vision)):
        if cfg.get("hidden_act", "quick_gelu") not in _ACTS:
            raise ValueError(f"HF {part} hidden_act {cfg['hidden_act']!r} is not supported; expected one of {_ACTS}")
        if abs(cfg.get("layer_norm_eps", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
            raise ValueError(f"HF {part} layer_norm_eps {cfg['layer_norm_eps']} differs from CLIP's {LAYER_NORM_EPS}")
    vocab = text.get("vocab_size", 49408)
    if text.get("eos_token_id", 49407) not in (2, vocab - 1):  # HF's default is OpenAI's 49407
        raise ValueError(
            f"HF text eos_token_id {text['eos_token_id']} is not the largest id ({vocab - 1}): CLIP's text tower "
            "reads out at argmax(ids), so its outputs would differ from this HF model's"
        )
    t_width, v_width = text.get("hidden_size", 512), vision.get("hidden_size", 768)
    t_heads, v_heads = text.get("num_attention_heads", 8), vision.get("num_attention_heads", 12)
    return ModelConfig(
        embed_dim=hf.get("projection_dim", 512),
        vision=VisionConfig(
            image_size=vision.get("image_size", 224), layers=vision.get("num_hidden_layers", 12), width=v_width,
            patch_size=vision.get("patch_size", 32), heads=None if v_heads == v_width // 64 else v_heads,
            mlp_ratio=vision.get("intermediate_size", 3072) / v_width, act=vision.get("hidden_act", "quick_gelu"),
        ),
        text=TextConfig(
            context_length=text.get("max_position_embeddings", 77), vocab_size=vocab, width=t_width,
            heads=None if t_heads == max(1, t_width // 64) else t_heads, layers=text.get("num_hidden_layers", 12),
            mlp_ratio=text.get("intermediate_size", 2048) / t_width, act=text.get("hidden_act", "quick_gelu"),
        ),
        init_logit_scale=hf.get("logit_scale_init_value", INIT_LOGIT_SCALE),
    )


def to_hf(model: CLIP, eos_token_id: int | None = None):
    """A ViT ``CLIP`` → an equivalent ``transformers.CLIPModel`` (float32, eval mode); a SigLIP model
    → a ``SiglipModel`` (:func:`clipforge.hf_siglip.to_hf`)."""
    if hf_model_of(model.config) == "SiglipModel":
        from clipforge import hf_siglip

        return hf_siglip.to_hf(model)
    from transformers import CLIPConfig, CLIPModel

    hf = CLIPModel(CLIPConfig(**hf_config_dict(model.config, eos_token_id)))
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    hf.load_state_dict(state_to_hf(state), strict=True)
    return hf.eval()


def from_hf(hf_model) -> CLIP:
    """A ``transformers.CLIPModel`` (or ``SiglipModel`` / ``Siglip2Model``) → an equivalent ``CLIP``
    (eval mode, the HF model's dtype)."""
    config = config_from_hf(hf_model.config.to_dict())
    state = state_from_hf({k: v.detach() for k, v in hf_model.state_dict().items()})
    model = CLIP(config).to(next(hf_model.parameters()).dtype)
    model.load_state_dict(state, strict=True)
    return model.eval()
