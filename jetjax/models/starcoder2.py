"""Starcoder2 (``Starcoder2ForCausalLM``): a pre-norm rotary block with layer norms, biases and a
plain (ungated) MLP.

What differs from :mod:`jetjax.models.llama`, all from ``config.json``:

* **layer norms** with gain and bias (``norm_epsilon``) in place of RMS norms, the final norm too;
* **biases** on every projection (``use_bias``, on by default): query/key/value/output and both MLP
  matrices;
* **a plain MLP**: ``c_proj(act(c_fc(x)))`` (GELU, tanh form, by default), no gate;
* **a sliding window** of ``sliding_window`` positions on every layer when the key is set;
* a tied unembedding by default.

Rotary attention with grouped-query heads is Llama's. llama.cpp writes these checkpoints as the GGUF
architecture ``starcoder2``, with Hugging Face's Q/K row order (its rope for Starcoder2 rotates halves)
and without a window (llama.cpp runs Starcoder2 with global attention, so such a file has none).

Example:
  >>> cfg = config_from_hf({"model_type": "starcoder2", "hidden_size": 16, "num_attention_heads": 4,
  ...                       "num_key_value_heads": 2, "num_hidden_layers": 2, "sliding_window": 5})
  >>> cfg.norm, cfg.attn_windows, cfg.mlp_bias, cfg.activation, cfg.tie_embeddings
  ('layernorm', (5, 5), True, 'gelu_pytorch_tanh', True)
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch, gguf_need, gguf_rope_scaling, gguf_vocab_size, keep_layout
from jetjax.models.hf_config import (ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf,
                                     windows_for)
from jetjax.models.layers import Linear, freeze, make_norm

_CONFIG_KEYS = {"starcoder2": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "norm_epsilon", "tie_word_embeddings", "use_bias",
        "sliding_window", "rope_parameters", "rope_scaling", "rope_theta",
    }),
    # dropout (three kinds), initialisation, caching; HF does not enforce the position limit either
    ignored=frozenset({"attention_dropout", "residual_dropout", "embedding_dropout", "initializer_range",
                       "use_cache", "max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 3072), get_int(cfg, "num_attention_heads", 24)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads
    n_layers = get_int(cfg, "num_hidden_layers", 30)
    bias = get_bool(cfg, "use_bias", True)
    return ModelConfig(
        arch="starcoder2",
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 12288),
        vocab_size=get_int(cfg, "vocab_size", 49152),
        n_positions=None,
        norm_eps=get_float(cfg, "norm_epsilon", 1e-5, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "gelu_pytorch_tanh"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", True),
        n_kv_heads=get_int(cfg, "num_key_value_heads", 2),
        attn_windows=windows_for(n_layers, cfg.get("sliding_window"), range(n_layers)),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=bias,
        norm="layernorm",
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


class MLP(nnx.Module):
    """``c_proj(act(c_fc(x)))``, with Hugging Face's Starcoder2 names."""

    def __init__(self, c: ModelConfig, dtype):
        self.c_fc = Linear(c.d_model, c.d_mlp, bias=c.mlp_bias, dtype=dtype)
        self.c_proj = Linear(c.d_mlp, c.d_model, bias=c.mlp_bias, dtype=dtype)
        self.activation = c.activation

    def __call__(self, x):
        return self.c_proj(freeze.activation(self.activation, self.c_fc(x)))


class DecoderLayer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.input_layernorm = make_norm(c, dtype)
        self.self_attn = llama.Attention(c, dtype)
        self.post_attention_layernorm = make_norm(c, dtype)
        self.mlp = MLP(c, dtype)


class Starcoder2(llama.Llama):
    """Llama's embedding, branches and head over layer norms and a plain MLP."""

    layer_class = DecoderLayer


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``model.`` prefix) -> (our param path, transpose?)."""
    m = {"embed_tokens.weight": (("embed_tokens",), False)}
    norms = [("norm", ("norm",))]
    for i in range(c.n_layers):
        norms += [(f"layers.{i}.{n}", ("layers", i, n)) for n in ("input_layernorm", "post_attention_layernorm")]
        for sub, lin, bias in (("self_attn", "q_proj", c.qkv_bias), ("self_attn", "k_proj", c.qkv_bias),
                               ("self_attn", "v_proj", c.qkv_bias), ("self_attn", "o_proj", c.out_bias),
                               ("mlp", "c_fc", c.mlp_bias), ("mlp", "c_proj", c.mlp_bias)):
            m[f"layers.{i}.{sub}.{lin}.weight"] = (("layers", i, sub, lin, "kernel"), True)
            if bias:
                m[f"layers.{i}.{sub}.{lin}.bias"] = (("layers", i, sub, lin, "bias"), False)
    for name, path in norms:
        m[f"{name}.weight"] = ((*path, "scale"), False)
        m[f"{name}.bias"] = ((*path, "bias"), False)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    return m


# ---------------------------------------------------------------------------------------------
# GGUF: llama.cpp's 'starcoder2' (layer norms with biases, ffn_up/ffn_down, no gate).

def _gguf_config(meta: dict, names: set) -> dict:
    a = meta["general.architecture"]
    key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
    d, heads = gguf_need(meta, f"{a}.embedding_length"), gguf_need(meta, f"{a}.attention.head_count")
    head_dim = key("attention.key_length", d // heads)
    for k, what in (("attention.value_length", "the key length"), ("rope.dimension_count", "the head size")):
        if key(k, head_dim) != head_dim:
            raise ValueError(f"{a}.{k}={key(k)} differs from {what} {head_dim}; jetjax supports {a} only "
                             "with them equal")
    return {
        "model_type": "starcoder2",
        "hidden_size": d,
        "num_hidden_layers": gguf_need(meta, f"{a}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "intermediate_size": gguf_need(meta, f"{a}.feed_forward_length"),
        "norm_epsilon": key("attention.layer_norm_epsilon", 1e-5),
        "vocab_size": gguf_vocab_size(meta, a),
        "tie_word_embeddings": "output.weight" not in names,
        "use_bias": "blk.0.attn_q.bias" in names,
        "hidden_act": "gelu_pytorch_tanh",   # llama.cpp's Starcoder2 FFN: ggml_gelu, the tanh form
        "sliding_window": None,              # llama.cpp attends globally on every layer
        "rope_parameters": {"rope_theta": float(key("rope.freq_base", 10000.0)), **gguf_rope_scaling(meta, a)},
    }


_GGUF_LAYER = {f"blk.{{i}}.{g}.{kind}": f"layers.{{i}}.{h}.{kind}"
               for g, h in (("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"),
                            ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                            ("attn_output", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                            ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
               for kind in ("weight", "bias")}
_GGUF_GLOBAL = {**llama.GGUF_GLOBAL, "output_norm.bias": "norm.bias"}
_GGUF_KEYS = frozenset({
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.layer_norm_epsilon", "rope.freq_base",
    "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "vocab_size",
})

FAMILY = dataclasses.replace(
    llama.FAMILY, name="starcoder2", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf, module=Starcoder2,
    weight_map=weight_map,
    gguf={"starcoder2": GgufArch("starcoder2", _GGUF_KEYS, llama.GGUF_IGNORED, _gguf_config, _GGUF_GLOBAL,
                                 _GGUF_LAYER, keep_layout)})
