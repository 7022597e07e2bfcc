"""Granite (``GraniteForCausalLM``): the Llama block with four scalar multipliers.

What differs from :mod:`jetjax.models.llama`, all from ``config.json``:

* ``embedding_multiplier``: the token embedding is multiplied by it (``h_0 = m_e · E[ids]``);
* ``attention_multiplier``: attention scores are multiplied by it instead of ``d_head ** -0.5``;
* ``residual_multiplier``: each branch's output is multiplied by it before joining the stream. The
  multiplier belongs to the branch: ``attn(l, h)`` and ``mlp(l, h)`` return the scaled delta;
* ``logits_scaling``: the logits are divided by it (the unembedding stays affine, ``x W / s``).

Everything else (RMS norms, rotary attention with grouped-query heads, SwiGLU, optional
``attention_bias`` / ``mlp_bias``, weight names) is Llama's. llama.cpp writes these checkpoints as
the GGUF architecture ``granite``, with Llama's Q/K row order and the multipliers as
``granite.embedding_scale``, ``granite.attention.scale``, ``granite.residual_scale`` and
``granite.logit_scale``.

Example:
  >>> cfg = config_from_hf({"model_type": "granite", "hidden_size": 16, "num_attention_heads": 4,
  ...                       "num_hidden_layers": 2, "embedding_multiplier": 12.0, "attention_multiplier": 0.0078125,
  ...                       "residual_multiplier": 0.22, "logits_scaling": 8.0})
  >>> cfg.embed_scale, cfg.attn_score_scale, cfg.residual_multiplier, cfg.logits_scale
  (12.0, 0.0078125, 0.22, 8.0)
"""

from __future__ import annotations

import dataclasses

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf

_CONFIG_KEYS = {"granite": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
        "mlp_bias", "embedding_multiplier", "attention_multiplier", "residual_multiplier", "logits_scaling",
        "rope_parameters", "rope_scaling", "rope_theta",
    }),
    # dropout, initialisation, caching; HF does not enforce the position limit either
    ignored=frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 4096), get_int(cfg, "num_attention_heads", 32)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads   # HF reads head_dim when set
    bias = get_bool(cfg, "attention_bias", False)
    return ModelConfig(
        arch="granite",
        n_layers=get_int(cfg, "num_hidden_layers", 32),
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 11008),
        vocab_size=get_int(cfg, "vocab_size", 32000),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-6, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=get_bool(cfg, "mlp_bias", False),
        norm="rmsnorm",
        embed_scale=get_float(cfg, "embedding_multiplier", 1.0, positive=True),
        attn_multiplier=get_float(cfg, "attention_multiplier", 1.0, positive=True),
        residual_multiplier=get_float(cfg, "residual_multiplier", 1.0, positive=True),
        logits_scale=get_float(cfg, "logits_scaling", 1.0, positive=True),
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


class Granite(llama.Llama):
    """Llama with its branch outputs scaled by ``residual_multiplier`` and its logits divided by
    ``logits_scale`` (the embedding and attention multipliers live in Llama's own code paths)."""

    def attn(self, layer, h):
        return self._scaled(super().attn(layer, h))

    def mlp(self, layer, h):
        return self._scaled(super().mlp(layer, h))

    def _scaled(self, out):
        r = self.config.residual_multiplier
        return out if r == 1.0 else out * r

    def unembed(self, x):
        logits = super().unembed(x)
        s = self.config.logits_scale
        return logits if s == 1.0 else logits / s


# ---------------------------------------------------------------------------------------------
# GGUF: llama.cpp's 'granite' is Llama's layout (Q/K rows reordered for its rope) plus four scalars.

_GGUF_SCALES = {"embedding_scale": "embedding_multiplier", "attention.scale": "attention_multiplier",
                "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"}


def _gguf_extra(meta: dict, a: str, names: set) -> dict:
    extra = {"attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": "blk.0.ffn_up.bias" in names}
    for key, hf_key in _GGUF_SCALES.items():
        if f"{a}.{key}" in meta:
            extra[hf_key] = float(meta[f"{a}.{key}"])
    return extra


_GGUF_LAYER = {**llama.GGUF_LAYER, **{f"blk.{{i}}.ffn_{p}.bias": f"layers.{{i}}.mlp.{p}_proj.bias"
                                      for p in ("gate", "up", "down")}}

FAMILY = dataclasses.replace(
    llama.FAMILY, name="granite", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf, module=Granite,
    gguf={"granite": GgufArch("granite", llama.GGUF_KEYS | set(_GGUF_SCALES), llama.GGUF_IGNORED,
                              llama.gguf_config("granite", _gguf_extra), llama.GGUF_GLOBAL, _GGUF_LAYER,
                              llama.gguf_fix)})
