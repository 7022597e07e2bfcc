"""OLMo (``OlmoForCausalLM``): the Llama block with a non-parametric layer norm (no gain, no
bias, eps 1e-5) in place of RMS norm, and optional clipping of queries, keys and values.

Everything else (rotary attention, grouped-query heads, SwiGLU, weight names) is the Llama
family's, so this file only reads the config.

Example:
  >>> cfg = config_from_hf({"model_type": "olmo", "hidden_size": 16, "num_attention_heads": 2,
  ...                       "num_hidden_layers": 2, "clip_qkv": 8.0})
  >>> cfg.norm, cfg.norm_eps, cfg.clip_qkv, cfg.rope_dim
  ('layernorm_no_affine', 1e-05, 8.0, 8)
"""

from __future__ import annotations

import dataclasses

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf

_CONFIG_KEYS = {"olmo": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
        "vocab_size", "hidden_act", "tie_word_embeddings", "attention_bias", "clip_qkv", "rope_parameters",
        "rope_scaling", "rope_theta",
    }),
    ignored=frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 4096), get_int(cfg, "num_attention_heads", 32)
    if d % n_heads:
        raise ValueError(f"hidden_size={d} is not divisible by num_attention_heads={n_heads}")
    bias = get_bool(cfg, "attention_bias", False)
    clip = get_float(cfg, "clip_qkv", None, positive=True, nullable=True)
    return ModelConfig(
        arch="olmo",
        n_layers=get_int(cfg, "num_hidden_layers", 32),
        d_model=d,
        n_heads=n_heads,
        d_head=d // n_heads,
        d_mlp=get_int(cfg, "intermediate_size", 11008),
        vocab_size=get_int(cfg, "vocab_size", 50304),
        n_positions=None,
        norm_eps=1e-5,  # fixed in OLMo, not a config key
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=False,
        norm="layernorm_no_affine",
        clip_qkv=clip,
        **rope_from_hf(cfg, d // n_heads, allow_partial=False),
    )


# Llama's module, weight map and tensor names; only the config differs. No GGUF reader, and
# d_head = d_model / n_heads (the config has no head_dim)
FAMILY = dataclasses.replace(llama.FAMILY, name="olmo", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf,
                             gguf={}, independent_head_dim=False)
