"""The Llama family: Llama (incl. Llama 3 rope scaling), Mistral, Qwen2 and Gemma.

One pre-norm sequential block for all four: RMS norm, rotary attention with grouped-query
heads, gated MLP. What differs is read from config.json into :class:`ModelConfig` fields:

* Llama: optional biases (``attention_bias``, ``mlp_bias``), rope types default/linear/llama3;
* Mistral: a sliding window on every layer;
* Qwen2: query/key/value biases (no output bias), sliding windows on layers ``>= max_window_layers``
  (or as ``layer_types`` says) when ``use_sliding_window``;
* Gemma: the embedding scaled by ``sqrt(d_model)``, norm gain ``1 + w``, GELU (tanh) gate, tied
  unembedding, ``head_dim`` independent of ``d_model / n_heads``.

HF Linear weights are ``(out, in)``: transposed into our ``(in, out)`` kernels on load.

Example (a random Mistral-like model: 4 query heads sharing 2 key/value heads, window 3):
  >>> from jetjax.models import ModelConfig, random_model
  >>> cfg = ModelConfig(arch="mistral", n_layers=2, d_model=12, n_heads=4, d_head=4, d_mlp=20,
  ...                   vocab_size=17, n_positions=None, norm_eps=1e-6, activation="silu",
  ...                   n_kv_heads=2, rope_dim=4, attn_windows=(3, 3), norm="rmsnorm")
  >>> model = random_model(cfg, scale=0.3)
  >>> h = model.residual_stream([1, 2, 3, 4, 5])
  >>> h.shape, model.attn(0, h[0]).shape
  ((3, 5, 12), (5, 12))
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import nnx

from jetjax.models.config import ModelConfig
from jetjax.models.family import Family, GgufArch, gguf_need, gguf_rope_scaling, gguf_vocab_size, keep_layout
from jetjax.models.hf_config import (ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf,
                                     windows_for)
from jetjax.models.layers import (GatedMLP, Linear, RMSNorm, causal_attention, compute_dtype_for, embedding_lookup,
                                  freeze, make_norm)
from jetjax.models.model import ResidualModule
from jetjax.models.rope import apply_rotary, rotary_tables

_COMMON = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "head_dim", "rope_parameters",
    "rope_scaling", "rope_theta",
})
# dropout, initialisation, caching; HF does not enforce the position limit either
_IGNORED = frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"})

_CONFIG_KEYS = {
    # pretraining_tp only changed how training sliced the matmuls, not their result
    "llama": ConfigKeys(_COMMON | {"attention_bias", "mlp_bias"}, _IGNORED | {"pretraining_tp"}),
    "mistral": ConfigKeys(_COMMON | {"sliding_window"}, _IGNORED),
    "qwen2": ConfigKeys(_COMMON | {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"},
                        _IGNORED),
    # transformers v5 reads Gemma's activation from hidden_act only
    "gemma": ConfigKeys(_COMMON | {"attention_bias"}, _IGNORED | {"hidden_activation"},
                        {"use_bidirectional_attention": (None, False)}),
}

_DEFAULT_ACT = {"llama": "silu", "mistral": "silu", "qwen2": "silu", "gemma": "gelu_pytorch_tanh"}


def layer_windows(cfg: dict, model_type: str, n_layers: int):
    """Per-layer windows of a Mistral (every layer) or Qwen2/Qwen3 config (``use_sliding_window``:
    the layers ``layer_types`` marks, else those ``>= max_window_layers``); ``None``: all global."""
    if model_type == "mistral":
        return windows_for(n_layers, cfg.get("sliding_window"), range(n_layers))
    if not cfg.get("use_sliding_window", False):
        return None
    types = cfg.get("layer_types")
    if types is None:
        first = get_int(cfg, "max_window_layers", 28, minimum=0)
        sliding = range(first, n_layers)
    else:
        allowed = {"full_attention", "sliding_attention"}
        if len(types) != n_layers or set(types) - allowed:
            raise ValueError(f"unsupported layer_types {types!r}: expected {n_layers} entries from {sorted(allowed)}")
        sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    return windows_for(n_layers, cfg.get("sliding_window"), sliding)


def _activation(cfg: dict, model_type: str) -> str:
    if model_type == "gemma" and cfg.get("hidden_act") == "gelu":
        # HF reads Gemma's legacy "gelu" as the tanh form its checkpoints were trained with
        return "gelu_pytorch_tanh"
    return activation_from_hf(cfg, "hidden_act", _DEFAULT_ACT[model_type])


def config_from_hf(cfg: dict) -> ModelConfig:
    t = cfg["model_type"]
    d, n_heads = get_int(cfg, "hidden_size", 4096), get_int(cfg, "num_attention_heads", 32)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads
    n_layers = get_int(cfg, "num_hidden_layers", 32)
    n_kv = get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads
    qkv_bias = {"qwen2": True, "mistral": False}.get(t, get_bool(cfg, "attention_bias", False))
    return ModelConfig(
        arch=t,
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 11008),
        vocab_size=get_int(cfg, "vocab_size", 32000),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-6, minimum=0.0),
        activation=_activation(cfg, t),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", t == "gemma"),
        n_kv_heads=n_kv,
        attn_windows=layer_windows(cfg, t, n_layers) if t in ("mistral", "qwen2") else None,
        qkv_bias=qkv_bias,
        out_bias=qkv_bias and t != "qwen2",
        mlp_bias=get_bool(cfg, "mlp_bias", False),
        norm="rmsnorm_plus_one" if t == "gemma" else "rmsnorm",
        embed_scale=float(np.sqrt(d)) if t == "gemma" else 1.0,
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


class Attention(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        q, kv = c.n_heads * c.d_head, c.kv_heads * c.d_head
        self.q_proj = Linear(c.d_model, q, bias=c.qkv_bias, dtype=dtype)
        self.k_proj = Linear(c.d_model, kv, bias=c.qkv_bias, dtype=dtype)
        self.v_proj = Linear(c.d_model, kv, bias=c.qkv_bias, dtype=dtype)
        self.o_proj = Linear(q, c.d_model, bias=c.out_bias, dtype=dtype)
        if c.qk_norm:   # per-head norms of queries and keys (Gemma 3)
            plus_one = c.norm == "rmsnorm_plus_one"
            self.q_norm = RMSNorm(c.d_head, eps=c.norm_eps, plus_one=plus_one, dtype=dtype)
            self.k_norm = RMSNorm(c.d_head, eps=c.norm_eps, plus_one=plus_one, dtype=dtype)

    def project(self, c: ModelConfig, x):
        """Queries, keys and values as heads ``[..., T, heads, d_head]``, q/k norms applied (a family
        whose norms span the whole projection overrides this)."""
        heads = lambda y, n: y.reshape(*y.shape[:-1], n, c.d_head)
        q, k, v = heads(self.q_proj(x), c.n_heads), heads(self.k_proj(x), c.kv_heads), heads(self.v_proj(x), c.kv_heads)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def __call__(self, c: ModelConfig, layer: int, x):
        """The attention of layer ``layer`` on its (already normed) input ``x``, through ``o_proj``."""
        q, k, v = self.project(c, x)
        if c.clip_qkv is not None:
            # q and k only shape the attention pattern (a frozen factor of its own); v is clipped
            # through the freezing hook, so a frozen pass keeps the clipped entries as constants
            q, k = (jnp.clip(y, -c.clip_qkv, c.clip_qkv) for y in (q, k))
            v = freeze.clip(v, c.clip_qkv)
        if c.rotary(layer):   # SmolLM3 leaves some layers without positions (nope_layers)
            cos, sin = rotary_tables(c, x.shape[-2], x.dtype, layer)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = causal_attention(q, k, v, scale=c.attn_score_scale,
                               window=c.window(layer), softcap=c.attn_softcap)
        return self.o_proj(out.reshape(*out.shape[:-2], c.n_heads * c.d_head))


class DecoderLayer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.input_layernorm = make_norm(c, dtype)
        self.self_attn = Attention(c, dtype)
        self.post_attention_layernorm = make_norm(c, dtype)
        self.mlp = GatedMLP(c, dtype)


class Llama(ResidualModule):
    layer_class = DecoderLayer

    def __init__(self, config: ModelConfig, dtype=jnp.float32):
        c = self.config = config
        self.embed_tokens = nnx.Param(jnp.zeros((c.vocab_size, c.d_model), dtype))  # 'VD'
        self.layers = nnx.List([self.layer_class(c, dtype) for _ in range(c.n_layers)])
        self.norm = make_norm(c, dtype)
        self.lm_head = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype)

    def token_embed(self, ids):
        w = self.embed_tokens[...]
        x = embedding_lookup(w, ids).astype(compute_dtype_for(w.dtype))
        if self.config.embed_scale == 1.0:
            return x
        # HF rounds the scale to the weights' dtype first (visible with bf16 weights)
        return x * jnp.asarray(self.config.embed_scale, w.dtype).astype(x.dtype)

    def embed(self, ids):  # positions enter through the rotary embedding, not the stream
        return self.token_embed(ids)

    def attn(self, layer, h):
        block = self.layers[layer]
        return block.self_attn(self.config, layer, block.input_layernorm(h))

    def mlp(self, layer, h):
        block = self.layers[layer]
        return block.mlp(block.post_attention_layernorm(h))

    def final_norm(self, h):
        return self.norm(h)

    def unembed(self, x):
        if self.lm_head is not None:
            return self.lm_head(x)
        return x @ self.embed_tokens[...].astype(x.dtype).T


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``model.`` prefix) -> (our param path, transpose?)."""
    has_gain = c.norm != "layernorm_no_affine"
    m = {"embed_tokens.weight": (("embed_tokens",), False)}
    if has_gain:
        m["norm.weight"] = (("norm", "scale"), False)
    for i in range(c.n_layers):
        if has_gain:
            for ln in ("input_layernorm", "post_attention_layernorm"):
                m[f"layers.{i}.{ln}.weight"] = (("layers", i, ln, "scale"), False)
        for sub, lin, bias in (("self_attn", "q_proj", c.qkv_bias), ("self_attn", "k_proj", c.qkv_bias),
                               ("self_attn", "v_proj", c.qkv_bias), ("self_attn", "o_proj", c.out_bias),
                               ("mlp", "gate_proj", c.mlp_bias), ("mlp", "up_proj", c.mlp_bias),
                               ("mlp", "down_proj", c.mlp_bias)):
            m[f"layers.{i}.{sub}.{lin}.weight"] = (("layers", i, sub, lin, "kernel"), True)
            if bias:
                m[f"layers.{i}.{sub}.{lin}.bias"] = (("layers", i, sub, lin, "bias"), False)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    return m


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's format, read by jetjax.io.gguf): metadata -> config.json, tensor names, layout.

def gguf_config(model_type: str, extra=None):
    """The GGUF metadata -> config.json builder of a Llama-like ``model_type``; ``extra``:
    ``(meta, arch, tensor names) -> dict`` of the keys a family adds (its own metadata, biases)."""
    def build(meta: dict, names: set) -> dict:
        a = meta["general.architecture"]
        key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
        d, heads = gguf_need(meta, f"{a}.embedding_length"), gguf_need(meta, f"{a}.attention.head_count")
        head_dim = key("attention.key_length", d // heads)
        if key("attention.value_length", head_dim) != head_dim:
            raise ValueError(f"{a}.attention.value_length={key('attention.value_length')} differs from the "
                             f"key length {head_dim}; jetjax supports equal key and value head sizes only")
        rope_dim = key("rope.dimension_count", head_dim)
        if rope_dim != head_dim:
            raise ValueError(f"{a}.rope.dimension_count={rope_dim} rotates part of each head (head size "
                             f"{head_dim}); partial rotary embeddings are not supported for {a}")
        cfg = {
            "model_type": model_type,
            "hidden_size": d,
            "num_hidden_layers": gguf_need(meta, f"{a}.block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "intermediate_size": gguf_need(meta, f"{a}.feed_forward_length"),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "vocab_size": gguf_vocab_size(meta, a),
            "tie_word_embeddings": "output.weight" not in names,
            "rope_parameters": {"rope_theta": float(key("rope.freq_base", 10000.0)), **gguf_rope_scaling(meta, a)},
        }
        if model_type == "llama":
            cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        if extra is not None:
            cfg.update(extra(meta, a, names))
        return cfg

    return build


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for Q/K of rotary models.

    llama.cpp's rope kernel rotates adjacent pairs ``(2i, 2i+1)``, the Hugging Face layout rotates
    ``(i, i + d/2)``; its converter reorders each head's rows from ``[first half; second half]`` to
    ``[r0, r_{d/2}, r1, r_{d/2+1}, ...]``. This puts them back.
    """
    rows = w.shape[0]
    per_head = rows // n_heads
    return w.reshape(n_heads, per_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if ".self_attn.q_proj." in hf_name:
        return unpermute_rows(w, cfg["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return unpermute_rows(w, cfg["num_key_value_heads"])
    return w


GGUF_KEYS = frozenset({
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
    "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "vocab_size",
})
#: GGUF metadata of this family (and Gemma's) known not to matter: the position limit is not
#: enforced by HF either; the original context of a rope scaling is only informative for 'linear'.
GGUF_IGNORED = frozenset({"context_length", "rope.scaling.original_context_length"})

GGUF_LAYER = {
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.bias": "layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
GGUF_GLOBAL = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
               "output.weight": "lm_head.weight"}

_GGUF = {
    # llama.cpp writes Mistral checkpoints as 'llama' too (no sliding window in the metadata: a
    # file whose window matters would need 'llama.attention.sliding_window', which is refused)
    "llama": GgufArch("llama", GGUF_KEYS, GGUF_IGNORED, gguf_config("llama"), GGUF_GLOBAL, GGUF_LAYER,
                      gguf_fix),
    # llama.cpp runs Qwen2 with the "rotate half" rope of HF: no row reordering
    "qwen2": GgufArch("qwen2", GGUF_KEYS, GGUF_IGNORED, gguf_config("qwen2"), GGUF_GLOBAL, GGUF_LAYER,
                      keep_layout),
}


FAMILY = Family(
    name="llama",
    config_keys=_CONFIG_KEYS,
    config_from_hf=config_from_hf,
    module=Llama,
    weight_map=weight_map,
    strip_prefixes=("model.",),
    ignored_tensors=(".rotary_emb.inv_freq",),  # a buffer older checkpoints saved; we recompute it
    gguf=_GGUF,
    independent_head_dim=True,  # Gemma's head_dim is its own config key
)
