"""Phi-3 (``Phi3ForCausalLM``): the Llama block with fused projections.

What differs from :mod:`jetjax.models.llama`, all from ``config.json``:

* **fused query/key/value**: one ``qkv_proj`` whose output is all queries, then all keys, then all
  values (``[n_heads·d_head | kv_heads·d_head | kv_heads·d_head]``; GPT-NeoX interleaves per head);
* **fused gate/up**: one ``gate_up_proj`` whose output is the gate (first half) then the up projection,
  ``down(act(gate) * up)``: a gated MLP like Llama's, with the same frozen factor (the gate);
* **partial rotary** (Phi-4-mini, ``partial_rotary_factor`` in ``rope_parameters``): the first
  ``rope_dim`` dimensions of each head rotate, the rest pass through;
* a sliding window of ``sliding_window`` positions on every layer when the key is set (Phi-3-mini-4k);
* no biases, an untied head by default. ``longrope`` (the 128k Phi-3 and Phi-3.5 models) is refused
  by name (:func:`~jetjax.models.hf_config.rope_from_hf`).

llama.cpp writes these checkpoints as the GGUF architecture ``phi3`` with the same fused tensors
(``attn_qkv``, ``ffn_up`` holding gate and up) in Hugging Face's order; its rope for Phi-3 rotates
halves (no row reordering), and it ignores the sliding window ("Phi SWA is currently disabled"), so
a file is read with global attention, as llama.cpp runs it.

Example (a quarter of each head unrotated, as Phi-4-mini):
  >>> cfg = config_from_hf({"model_type": "phi3", "hidden_size": 16, "num_attention_heads": 2,
  ...                       "num_key_value_heads": 1, "num_hidden_layers": 2, "intermediate_size": 20,
  ...                       "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
  ...                                           "partial_rotary_factor": 0.75}})
  >>> cfg.d_head, cfg.rope_dim, cfg.kv_heads, cfg.qkv_bias
  (8, 6, 1, False)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch, gguf_need, gguf_rope_scaling, gguf_vocab_size, keep_layout
from jetjax.models.hf_config import (ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf,
                                     windows_for)
from jetjax.models.layers import Linear, freeze, make_norm

_CONFIG_KEYS = {"phi3": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "sliding_window",
        "rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor",
    }),
    # dropout (three kinds), initialisation, caching; HF does not enforce the position limit, and
    # original_max_position_embeddings is read only by longrope, which is refused
    ignored=frozenset({"attention_dropout", "resid_pdrop", "embd_pdrop", "initializer_range", "use_cache",
                       "max_position_embeddings", "original_max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 3072), get_int(cfg, "num_attention_heads", 32)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads
    n_layers = get_int(cfg, "num_hidden_layers", 32)
    return ModelConfig(
        arch="phi3",
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 8192),
        vocab_size=get_int(cfg, "vocab_size", 32064),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-5, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        attn_windows=windows_for(n_layers, cfg.get("sliding_window"), range(n_layers)),
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
        norm="rmsnorm",
        **rope_from_hf(cfg, d_head),
    )


class Attention(llama.Attention):
    """Llama's attention reading its queries, keys and values off one fused projection."""

    def __init__(self, c: ModelConfig, dtype):
        q, kv = c.n_heads * c.d_head, c.kv_heads * c.d_head
        self.qkv_proj = Linear(c.d_model, q + 2 * kv, bias=False, dtype=dtype)
        self.o_proj = Linear(q, c.d_model, bias=False, dtype=dtype)

    def project(self, c: ModelConfig, x):
        q, kv = c.n_heads * c.d_head, c.kv_heads * c.d_head
        q, k, v = jnp.split(self.qkv_proj(x), [q, q + kv], axis=-1)
        heads = lambda y, n: y.reshape(*y.shape[:-1], n, c.d_head)  # noqa: E731
        return heads(q, c.n_heads), heads(k, c.kv_heads), heads(v, c.kv_heads)


class MLP(nnx.Module):
    """``down(act(gate) * up)`` with ``gate | up`` one fused projection, Hugging Face's Phi-3 names."""

    def __init__(self, c: ModelConfig, dtype):
        self.gate_up_proj = Linear(c.d_model, 2 * c.d_mlp, bias=False, dtype=dtype)
        self.down_proj = Linear(c.d_mlp, c.d_model, bias=False, dtype=dtype)
        self.activation = c.activation

    def __call__(self, x):
        gate, up = jnp.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(freeze.gate(self.activation, gate) * up)


class DecoderLayer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.input_layernorm = make_norm(c, dtype)
        self.self_attn = Attention(c, dtype)
        self.post_attention_layernorm = make_norm(c, dtype)
        self.mlp = MLP(c, dtype)


class Phi3(llama.Llama):
    """Llama's embedding, branches and head over fused projections."""

    layer_class = DecoderLayer


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``model.`` prefix) -> (our param path, transpose?)."""
    m = {"embed_tokens.weight": (("embed_tokens",), False), "norm.weight": (("norm", "scale"), False)}
    for i in range(c.n_layers):
        for ln in ("input_layernorm", "post_attention_layernorm"):
            m[f"layers.{i}.{ln}.weight"] = (("layers", i, ln, "scale"), False)
        for sub, lin in (("self_attn", "qkv_proj"), ("self_attn", "o_proj"), ("mlp", "gate_up_proj"),
                         ("mlp", "down_proj")):
            m[f"layers.{i}.{sub}.{lin}.weight"] = (("layers", i, sub, lin, "kernel"), True)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    return m


# ---------------------------------------------------------------------------------------------
# GGUF: llama.cpp's 'phi3'.

def _gguf_config(meta: dict, names: set) -> dict:
    a = meta["general.architecture"]
    key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
    d, heads = gguf_need(meta, f"{a}.embedding_length"), gguf_need(meta, f"{a}.attention.head_count")
    head_dim = key("attention.key_length", d // heads)
    if key("attention.value_length", head_dim) != head_dim:
        raise ValueError(f"{a}.attention.value_length={key('attention.value_length')} differs from the key "
                         f"length {head_dim}; jetjax supports equal key and value head sizes only")
    rope_dim = key("rope.dimension_count", head_dim)
    return {
        "model_type": "phi3",
        "hidden_size": d,
        "num_hidden_layers": gguf_need(meta, f"{a}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "intermediate_size": gguf_need(meta, f"{a}.feed_forward_length"),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-5),
        "vocab_size": gguf_vocab_size(meta, a),
        "tie_word_embeddings": "output.weight" not in names,
        "sliding_window": None,   # llama.cpp disables Phi-3's window (see the module docstring)
        "rope_parameters": {"rope_theta": float(key("rope.freq_base", 10000.0)),
                            "partial_rotary_factor": rope_dim / head_dim, **gguf_rope_scaling(meta, a)},
    }


_GGUF_LAYER = {f"blk.{{i}}.{g}.weight": f"layers.{{i}}.{h}.weight"
               for g, h in (("attn_norm", "input_layernorm"), ("attn_qkv", "self_attn.qkv_proj"),
                            ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                            ("ffn_up", "mlp.gate_up_proj"), ("ffn_down", "mlp.down_proj"))}
_GGUF_KEYS = llama.GGUF_KEYS
# the window is ignored as llama.cpp ignores it; the original context matters only to longrope, whose
# rope_factors tensors no entry maps (such a file is refused by tensor name)
_GGUF_IGNORED = llama.GGUF_IGNORED | {"attention.sliding_window", "rope.scaling.original_context_length"}

FAMILY = dataclasses.replace(
    llama.FAMILY, name="phi3", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf, module=Phi3,
    weight_map=weight_map,
    gguf={"phi3": GgufArch("phi3", _GGUF_KEYS, _GGUF_IGNORED, _gguf_config, llama.GGUF_GLOBAL, _GGUF_LAYER,
                           keep_layout)})
