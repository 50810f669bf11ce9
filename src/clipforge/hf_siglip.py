"""Conversion to and from transformers' ``SiglipModel`` (SigLIP, fixed-resolution SigLIP 2) and
``Siglip2Model`` (SigLIP 2 NaFlex, held here at one square resolution).

As in :mod:`clipforge.hf`, the key and config mapping is plain tensor work (reading a ``save_pretrained``
directory needs no transformers install); ``to_hf`` / ``from_hf`` import transformers when called.

Mapping (ours ↔ HF), besides the blocks (``attn.in_proj_*`` split into ``q/k/v_proj`` as for CLIP):
- ``visual.conv1`` ↔ ``vision_model.embeddings.patch_embedding``; ``Siglip2Model`` holds it as a Linear
  over patches flattened (row, column, channel), which is the convolution's weight [W, 3, p, p] permuted
  to [W, p, p, 3] and flattened;
- ``visual.positional_embedding`` [G², W] ↔ ``vision_model.embeddings.position_embedding.weight``; a
  NaFlex model resizes its grid to each image's patch grid, so at ``sqrt(num_patches)`` patches a side
  it uses the stored one unchanged: that is the resolution it converts at;
- ``visual.ln_post`` ↔ ``post_layernorm``; ``visual.head.{probe, attn, ln, mlp.c_fc, mlp.c_proj}`` ↔
  ``vision_model.head.{probe, attention, layernorm, mlp.fc1, mlp.fc2}``;
- ``text.{token_embedding, positional_embedding, ln_final, head}`` ↔ ``text_model.{embeddings.token_embedding,
  embeddings.position_embedding, final_layer_norm, head}``;
- ``logit_scale`` / ``logit_bias``: 0-dim here, shape [1] in HF.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from clipforge.config import ModelConfig, TextConfig, VisionConfig
from clipforge.families.siglip import ACT, SIGLIP_PREPROCESS, default_heads, mlp_ratio
from clipforge.hf import _BLOCK, _block_from_hf, _block_to_hf, _pack_qkv
from clipforge.model import CLIP

MODEL_TYPES = ("siglip", "siglip2")
LAYER_NORM_EPS = 1e-6
_ACTS = {"gelu_pytorch_tanh": ACT, "gelu": "gelu"}  # HF hidden_act → ours
_TOWERS = {"text.transformer.resblocks.": "text_model.encoder.layers.",
           "visual.transformer.resblocks.": "vision_model.encoder.layers."}
_TOP = {
    "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.conv1.bias": "vision_model.embeddings.patch_embedding.bias",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.head.probe": "vision_model.head.probe",
    "visual.head.attn.in_proj_weight": "vision_model.head.attention.in_proj_weight",
    "visual.head.attn.in_proj_bias": "vision_model.head.attention.in_proj_bias",
}
for _leaf in ("weight", "bias"):
    _TOP.update({
        f"text.ln_final.{_leaf}": f"text_model.final_layer_norm.{_leaf}",
        f"text.head.{_leaf}": f"text_model.head.{_leaf}",
        f"visual.ln_post.{_leaf}": f"vision_model.post_layernorm.{_leaf}",
        f"visual.head.attn.out_proj.{_leaf}": f"vision_model.head.attention.out_proj.{_leaf}",
        f"visual.head.ln.{_leaf}": f"vision_model.head.layernorm.{_leaf}",
        f"visual.head.mlp.c_fc.{_leaf}": f"vision_model.head.mlp.fc1.{_leaf}",
        f"visual.head.mlp.c_proj.{_leaf}": f"vision_model.head.mlp.fc2.{_leaf}",
    })
_SCALARS = ("logit_scale", "logit_bias")
_PATCH = "visual.conv1.weight"


def is_siglip_state_dict(state: dict[str, Any]) -> bool:
    return any(k.startswith(("vision_model.head.", "text_model.head.")) for k in state)


def state_to_hf(state: dict[str, torch.Tensor], naflex: bool = False) -> dict[str, torch.Tensor]:
    """Our SigLIP state_dict → a ``SiglipModel`` one (``naflex``: a ``Siglip2Model`` one)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _SCALARS:
            out[key] = value.reshape(1)
        elif key == _PATCH and naflex:  # [W, 3, p, p] → [W, p·p·3], HF's (row, column, channel) order
            out[_TOP[key]] = value.permute(0, 2, 3, 1).reshape(value.shape[0], -1).contiguous()
        elif key in _TOP:
            out[_TOP[key]] = value
        else:
            out.update(_block_to_hf(key, value, _TOWERS))
    return out


def state_from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``SiglipModel`` / ``Siglip2Model`` state_dict → ours (the inverse of ``state_to_hf``)."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue  # a non-parameter buffer older transformers versions saved
        if key in _SCALARS:
            out[key] = value.reshape(())
        elif key in top:
            out[top[key]] = value
        else:
            _block_from_hf(key, value, block, out, _TOWERS)
    for key in [k for k in out if k.endswith(".attn.q_proj")]:
        _pack_qkv(out, key[: -len("q_proj")])
    patch = out.get(_PATCH)
    if patch is not None and patch.dim() == 2:  # Siglip2Model's Linear over flattened patches
        side = math.isqrt(patch.shape[1] // 3)
        out[_PATCH] = patch.view(patch.shape[0], side, side, 3).permute(0, 3, 1, 2).contiguous()
    return out


def config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """A ``SiglipConfig`` / ``Siglip2Config`` dict (a ``config.json``) → our ModelConfig.

    Missing keys take transformers' defaults (``save_pretrained`` writes only the values that differ).
    Raises for what our towers cannot compute: another activation or LayerNorm ε, a vision tower
    without its head, text features whose size differs from the image features'.
    """
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    for part, cfg in (("text", text), ("vision", vision)):
        if cfg.get("hidden_act", "gelu_pytorch_tanh") not in _ACTS:
            raise ValueError(f"HF {part} hidden_act {cfg['hidden_act']!r} is not supported; expected one of {tuple(_ACTS)}")
        if abs(cfg.get("layer_norm_eps", LAYER_NORM_EPS) - LAYER_NORM_EPS) > 1e-12:
            raise ValueError(f"HF {part} layer_norm_eps {cfg['layer_norm_eps']} differs from SigLIP's {LAYER_NORM_EPS}")
    if not vision.get("vision_use_head", True):
        raise ValueError("HF vision_use_head = false: the image tower has no pooling head to give image features")
    v_width, t_width = vision.get("hidden_size", 768), text.get("hidden_size", 768)
    embed_dim = text.get("projection_size") or t_width
    if embed_dim != v_width:
        raise ValueError(f"HF text projection_size {embed_dim} differs from the vision hidden_size {v_width}: "
                         "image and text features would not share a space")
    patch = vision.get("patch_size", 16)
    image_size = vision.get("image_size", 224)
    if hf.get("model_type") == "siglip2":  # NaFlex: at sqrt(num_patches) patches a side, the stored grid
        image_size = math.isqrt(vision.get("num_patches", 256)) * patch
    v_heads, t_heads = vision.get("num_attention_heads", 12), text.get("num_attention_heads", 12)
    return ModelConfig(
        embed_dim=embed_dim,
        vision=VisionConfig(
            image_size=image_size, layers=vision.get("num_hidden_layers", 12), width=v_width, patch_size=patch,
            heads=None if v_heads == default_heads(v_width) else v_heads,
            mlp_ratio=mlp_ratio(v_width, vision.get("intermediate_size", 3072)),
            act=_ACTS[vision.get("hidden_act", "gelu_pytorch_tanh")], kind="siglip",
        ),
        text=TextConfig(
            context_length=text.get("max_position_embeddings", 64), vocab_size=text.get("vocab_size", 32000),
            width=t_width, heads=None if t_heads == max(1, t_width // 64) else t_heads,
            layers=text.get("num_hidden_layers", 12), mlp_ratio=mlp_ratio(t_width, text.get("intermediate_size", 3072)),
            act=_ACTS[text.get("hidden_act", "gelu_pytorch_tanh")], kind="siglip",
        ),
        init_logit_scale=math.log(10.0), init_logit_bias=-10.0, preprocess=SIGLIP_PREPROCESS,
    )


def hf_config_dict(config: ModelConfig, naflex: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``transformers.SiglipConfig`` (``naflex``: ``Siglip2Config``) for a SigLIP config."""
    v, t = config.vision, config.text
    for part in (v, t):
        if part.kind != "siglip":
            raise ValueError(f"HF SiglipModel holds SigLIP towers only, not a {part.kind!r} {type(part).__name__}")
    _hf_act = {ours: theirs for theirs, ours in _ACTS.items()}
    text = dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=int(t.width * t.mlp_ratio),
                num_hidden_layers=t.layers, num_attention_heads=t.num_heads, max_position_embeddings=t.context_length,
                hidden_act=_hf_act[t.act], layer_norm_eps=LAYER_NORM_EPS, projection_size=config.embed_dim,
                # The tower reads the last position whatever its id: the special ids are the tokenizer's business.
                bos_token_id=None, eos_token_id=None, pad_token_id=None)
    vision = dict(hidden_size=v.width, intermediate_size=int(v.width * v.mlp_ratio), num_hidden_layers=v.layers,
                  num_attention_heads=v.num_heads, patch_size=v.patch_size, num_channels=3,
                  hidden_act=_hf_act[v.act], layer_norm_eps=LAYER_NORM_EPS)
    grid = v.image_size // v.patch_size
    vision.update(num_patches=grid * grid) if naflex else vision.update(image_size=v.image_size)
    return dict(text_config=text, vision_config=vision)


def to_hf(model: CLIP, naflex: bool = False):
    """A SigLIP ``CLIP`` → an equivalent ``transformers.SiglipModel`` (``naflex``: ``Siglip2Model``), float32, eval."""
    import transformers

    config_class, model_class = ((transformers.Siglip2Config, transformers.Siglip2Model) if naflex
                                 else (transformers.SiglipConfig, transformers.SiglipModel))
    hf = model_class(config_class(**hf_config_dict(model.config, naflex)))
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    hf.load_state_dict(state_to_hf(state, naflex), strict=True)
    return hf.eval()
