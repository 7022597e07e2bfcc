"""Qwen3 (``Qwen3ForCausalLM``): the Qwen2 block with an RMS norm on each query and key head.

What differs from :mod:`jetjax.models.llama`'s Qwen2, all read from ``config.json``:

* ``q_norm`` / ``k_norm``: RMS norms (gain ``w``, eps ``rms_norm_eps``) over each head of the
  queries and keys, before the rotary embedding (the same per-head norms as Gemma 3, without the
  ``1 + w`` gain);
* biases: none by default; ``attention_bias`` puts one on all four attention projections (Qwen2
  has query/key/value biases and none on the output);
* ``head_dim`` is its own key (128 by default), independent of ``hidden_size / num_attention_heads``.

Sliding windows follow Qwen2's keys (``use_sliding_window``, ``max_window_layers``, ``layer_types``).
The module is Llama's; the weight map adds the two norms. llama.cpp writes these checkpoints as the
GGUF architecture ``qwen3`` with Hugging Face's Q/K row order (its rope for Qwen rotates halves).

Example:
  >>> cfg = config_from_hf({"model_type": "qwen3", "hidden_size": 16, "num_attention_heads": 4,
  ...                       "num_key_value_heads": 2, "head_dim": 6, "num_hidden_layers": 2})
  >>> cfg.qk_norm, cfg.qkv_bias, cfg.out_bias, cfg.d_head, cfg.attn_windows
  (True, False, False, 6, None)
"""

from __future__ import annotations

import dataclasses

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch, keep_layout
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf

_CONFIG_KEYS = {"qwen3": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
        "rope_parameters", "rope_scaling", "rope_theta", "use_sliding_window", "sliding_window", "max_window_layers",
        "layer_types",
    }),
    # dropout, initialisation, caching; HF does not enforce the position limit either
    ignored=frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 4096), get_int(cfg, "num_attention_heads", 32)
    d_head = get_int(cfg, "head_dim", 128)
    n_layers = get_int(cfg, "num_hidden_layers", 32)
    bias = get_bool(cfg, "attention_bias", False)
    return ModelConfig(
        arch="qwen3",
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 22016),
        vocab_size=get_int(cfg, "vocab_size", 151936),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-6, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        attn_windows=llama.layer_windows(cfg, "qwen3", n_layers),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=False,
        norm="rmsnorm",
        qk_norm=True,
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Llama's tensor names plus each layer's ``self_attn.q_norm`` / ``self_attn.k_norm`` gains."""
    m = llama.weight_map(c)
    for i in range(c.n_layers):
        for name in ("q_norm", "k_norm"):
            m[f"layers.{i}.self_attn.{name}.weight"] = (("layers", i, "self_attn", name, "scale"), False)
    return m


def _gguf_extra(meta: dict, a: str, names: set) -> dict:
    # llama.cpp reads attention biases of Qwen3 when the file has them; it writes no window keys
    return {"attention_bias": "blk.0.attn_q.bias" in names}


_GGUF_LAYER = {**llama.GGUF_LAYER, "blk.{i}.attn_q_norm.weight": "layers.{i}.self_attn.q_norm.weight",
               "blk.{i}.attn_k_norm.weight": "layers.{i}.self_attn.k_norm.weight"}

FAMILY = dataclasses.replace(
    llama.FAMILY, name="qwen3", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf, weight_map=weight_map,
    # llama.cpp runs Qwen3 with the "rotate half" rope of HF: no row reordering
    gguf={"qwen3": GgufArch("qwen3", llama.GGUF_KEYS, llama.GGUF_IGNORED, llama.gguf_config("qwen3", _gguf_extra),
                            llama.GGUF_GLOBAL, _GGUF_LAYER, keep_layout)})
