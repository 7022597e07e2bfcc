"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): rotary positions on part of each head, a fused
query/key/value projection laid out per head, parallel or sequential residual, untied unembedding.

With ``use_parallel_residual`` (Pythia's default) both branches read the same stream:
``h' = h + attn(h) + mlp(h)``; otherwise ``h_mid = h + attn(h)``, ``h' = h_mid + mlp(h_mid)``.
HF Linear weights are ``(out, in)``: transposed into our ``(in, out)`` kernels on load.

Example (Pythia's config keys: a quarter of each head rotated, parallel residual):
  >>> cfg = config_from_hf({"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8,
  ...                       "num_hidden_layers": 6, "intermediate_size": 2048, "vocab_size": 50304,
  ...                       "rotary_pct": 0.25, "rotary_emb_base": 10000})
  >>> cfg.d_head, cfg.rope_dim, cfg.parallel_residual, cfg.tie_embeddings
  (64, 16, True, False)
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import nnx

from jetjax.models.config import ModelConfig
from jetjax.models.family import Family
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf
from jetjax.models.layers import LayerNorm, Linear, causal_attention, compute_dtype_for, embedding_lookup, freeze
from jetjax.models.model import ResidualModule
from jetjax.models.rope import apply_rotary, rotary_tables

_CONFIG_KEYS = {"gpt_neox": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
        "hidden_act", "layer_norm_eps", "tie_word_embeddings", "use_parallel_residual", "attention_bias",
        "rope_parameters", "rope_scaling", "rotary_pct", "rotary_emb_base", "rope_theta",
        "partial_rotary_factor",
    }),
    ignored=frozenset({
        # dropout, initialisation, caching; the position limit is not enforced by HF either
        "attention_dropout", "hidden_dropout", "classifier_dropout", "attention_probs_dropout_prob",
        "hidden_dropout_prob", "initializer_range", "use_cache", "max_position_embeddings",
    }),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 6144), get_int(cfg, "num_attention_heads", 64)
    if d % n_heads:
        raise ValueError(f"hidden_size={d} is not divisible by num_attention_heads={n_heads}")
    bias = get_bool(cfg, "attention_bias", True)
    return ModelConfig(
        arch="gpt_neox",
        n_layers=get_int(cfg, "num_hidden_layers", 44),
        d_model=d,
        n_heads=n_heads,
        d_head=d // n_heads,
        d_mlp=get_int(cfg, "intermediate_size", 24576),
        vocab_size=get_int(cfg, "vocab_size", 50432),
        n_positions=None,
        norm_eps=get_float(cfg, "layer_norm_eps", 1e-5, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "gelu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        parallel_residual=get_bool(cfg, "use_parallel_residual", True),
        qkv_bias=bias,
        out_bias=bias,
        **rope_from_hf(cfg, d // n_heads, default_partial=0.25),
    )


class Attention(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        # 'D,N(3H)': per head, its query | key | value (not all queries first, as GPT-2)
        self.query_key_value = Linear(c.d_model, 3 * c.d_model, bias=c.qkv_bias, dtype=dtype)
        self.dense = Linear(c.d_model, c.d_model, bias=c.out_bias, dtype=dtype)


class MLP(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.dense_h_to_4h = Linear(c.d_model, c.d_mlp, dtype=dtype)
        self.dense_4h_to_h = Linear(c.d_mlp, c.d_model, dtype=dtype)


class Layer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.input_layernorm = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.attention = Attention(c, dtype)
        self.post_attention_layernorm = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.mlp = MLP(c, dtype)


class GPTNeoX(ResidualModule):
    def __init__(self, config: ModelConfig, dtype=jnp.float32):
        c = self.config = config
        self.embed_in = nnx.Param(jnp.zeros((c.vocab_size, c.d_model), dtype))  # 'VD'
        self.layers = nnx.List([Layer(c, dtype) for _ in range(c.n_layers)])
        self.final_layer_norm = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.embed_out = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype)

    def token_embed(self, ids):
        w = self.embed_in[...]
        return embedding_lookup(w, ids).astype(compute_dtype_for(w.dtype))

    def embed(self, ids):  # positions enter through the rotary embedding, not the stream
        return self.token_embed(ids)

    def attn(self, layer, h):
        c, block = self.config, self.layers[layer]
        qkv = block.attention.query_key_value(block.input_layernorm(h))
        qkv = qkv.reshape(*qkv.shape[:-1], c.n_heads, 3 * c.d_head)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        cos, sin = rotary_tables(c, h.shape[-2], h.dtype)
        out = causal_attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v,
                               scale=1.0 / np.sqrt(c.d_head))
        return block.attention.dense(out.reshape(*out.shape[:-2], c.d_model))

    def mlp(self, layer, h):
        block = self.layers[layer]
        x = block.mlp.dense_h_to_4h(block.post_attention_layernorm(h))
        return block.mlp.dense_4h_to_h(freeze.activation(self.config.activation, x))

    def final_norm(self, h):
        return self.final_layer_norm(h)

    def unembed(self, x):
        if self.embed_out is not None:
            return self.embed_out(x)
        return x @ self.embed_in[...].astype(x.dtype).T


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``gpt_neox.`` prefix) -> (our param path, transpose?)."""
    m = {"embed_in.weight": (("embed_in",), False),
         "final_layer_norm.weight": (("final_layer_norm", "scale"), False),
         "final_layer_norm.bias": (("final_layer_norm", "bias"), False)}
    for i in range(c.n_layers):
        for ln in ("input_layernorm", "post_attention_layernorm"):
            m[f"layers.{i}.{ln}.weight"] = (("layers", i, ln, "scale"), False)
            m[f"layers.{i}.{ln}.bias"] = (("layers", i, ln, "bias"), False)
        for sub, lin, bias in (("attention", "query_key_value", c.qkv_bias), ("attention", "dense", c.out_bias),
                               ("mlp", "dense_h_to_4h", True), ("mlp", "dense_4h_to_h", True)):
            m[f"layers.{i}.{sub}.{lin}.weight"] = (("layers", i, sub, lin, "kernel"), True)
            if bias:
                m[f"layers.{i}.{sub}.{lin}.bias"] = (("layers", i, sub, lin, "bias"), False)
    if not c.tie_embeddings:
        m["embed_out.weight"] = (("embed_out", "kernel"), True)
    return m


FAMILY = Family(
    name="gpt_neox",
    config_keys=_CONFIG_KEYS,
    config_from_hf=config_from_hf,
    module=GPTNeoX,
    weight_map=weight_map,
    strip_prefixes=("gpt_neox.",),
    # buffers that older checkpoints saved: masks and rotary tables (we recompute them)
    ignored_tensors=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
)
