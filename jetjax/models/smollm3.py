"""SmolLM3 (``SmolLM3ForCausalLM``): the Llama block with some layers' attention left without
rotary embedding ("NoPE" layers).

What differs from :mod:`jetjax.models.llama`, all from ``config.json``:

* ``no_rope_layers``: one flag per layer, 1 where the attention rotates queries and keys, 0 where it
  does not (no position information at all in that layer). Without the list, every
  ``no_rope_layer_interval``-th layer (the 4th, 8th, ...) goes without;
* sliding windows (``use_sliding_window``, ``sliding_window``) on the layers ``layer_types`` marks
  ``"sliding_attention"``;
* optional biases (``attention_bias`` on all four attention projections, ``mlp_bias``), ``head_dim``
  when set, a tied unembedding by default.

llama.cpp writes these checkpoints as the GGUF architecture ``smollm3``: Llama's tensor names and Q/K
row order, and a NoPE layer every fourth layer, which it hard-codes (the metadata says nothing).

Example:
  >>> cfg = config_from_hf({"model_type": "smollm3", "hidden_size": 16, "num_attention_heads": 4,
  ...                       "num_hidden_layers": 8})
  >>> cfg.nope_layers, [cfg.rotary(layer) for layer in range(4)]
  ((3, 7), [True, True, True, False])
"""

from __future__ import annotations

import dataclasses

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch
from jetjax.models.hf_config import (ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf,
                                     windows_for)

_CONFIG_KEYS = {"smollm3": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
        "mlp_bias", "no_rope_layers", "no_rope_layer_interval", "use_sliding_window", "sliding_window",
        "layer_types", "rope_parameters", "rope_scaling", "rope_theta",
    }),
    # dropout, initialisation, caching; HF does not enforce the position limit either
    ignored=frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"}),
)}


def _nope_layers(cfg: dict, n_layers: int) -> tuple[int, ...]:
    flags = cfg.get("no_rope_layers")
    if flags is None:
        interval = get_int(cfg, "no_rope_layer_interval", 4)
        return tuple(i for i in range(n_layers) if (i + 1) % interval == 0)
    if not isinstance(flags, list) or len(flags) != n_layers or any(f not in (0, 1) or isinstance(f, float)
                                                                    for f in flags):
        raise ValueError(f"unsupported no_rope_layers {flags!r}: expected {n_layers} flags, each 0 or 1")
    return tuple(i for i, f in enumerate(flags) if not f)


def _windows(cfg: dict, n_layers: int):
    types = cfg.get("layer_types")
    if types is None:
        return None
    allowed = {"full_attention", "sliding_attention"}
    if not isinstance(types, list) or len(types) != n_layers or set(types) - allowed:
        raise ValueError(f"unsupported layer_types {types!r}: expected {n_layers} entries from {sorted(allowed)}")
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if sliding and not (get_bool(cfg, "use_sliding_window", False) and cfg.get("sliding_window") is not None):
        # transformers masks such layers with the model-wide sliding mask but gives the attention no
        # window: a configuration it does not define consistently
        raise ValueError("unsupported layer_types: sliding_attention layers without use_sliding_window=true "
                         "and a sliding_window")
    return windows_for(n_layers, cfg.get("sliding_window"), sliding) if sliding else None


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 2048), get_int(cfg, "num_attention_heads", 16)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads
    n_layers = get_int(cfg, "num_hidden_layers", 36)
    bias = get_bool(cfg, "attention_bias", False)
    return ModelConfig(
        arch="smollm3",
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 11008),
        vocab_size=get_int(cfg, "vocab_size", 128256),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-6, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", True),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or 4,
        attn_windows=_windows(cfg, n_layers),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=get_bool(cfg, "mlp_bias", False),
        norm="rmsnorm",
        nope_layers=_nope_layers(cfg, n_layers),
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


def _gguf_extra(meta: dict, a: str, names: set) -> dict:
    # llama.cpp: n_no_rope_layer_step = 4 for every SmolLM3 file
    return {"no_rope_layer_interval": 4, "attention_bias": "blk.0.attn_q.bias" in names,
            "mlp_bias": "blk.0.ffn_up.bias" in names}


_GGUF_LAYER = {**llama.GGUF_LAYER, **{f"blk.{{i}}.ffn_{p}.bias": f"layers.{{i}}.mlp.{p}_proj.bias"
                                      for p in ("gate", "up", "down")}}

# Llama's module (its attention skips the rotary embedding on nope_layers) and weight map
FAMILY = dataclasses.replace(
    llama.FAMILY, name="smollm3", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf,
    gguf={"smollm3": GgufArch("smollm3", llama.GGUF_KEYS, llama.GGUF_IGNORED, llama.gguf_config("smollm3", _gguf_extra),
                              llama.GGUF_GLOBAL, _GGUF_LAYER, llama.gguf_fix)})
