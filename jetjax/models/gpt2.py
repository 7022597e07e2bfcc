"""GPT-2 (``GPT2LMHeadModel``): learned positions, pre-LayerNorm blocks, tied unembedding.

HF stores GPT-2's projections as ``Conv1D`` with weights ``(in, out)`` used as ``x @ W + b``:
they map onto :class:`~jetjax.models.layers.Linear` kernels unchanged.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from flax import nnx

from jetjax.models.config import ModelConfig
from jetjax.models.family import Family, GgufArch, gguf_need, gguf_vocab_size
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int
from jetjax.models.layers import LayerNorm, Linear, causal_attention, compute_dtype_for, embedding_lookup, freeze
from jetjax.models.model import ResidualModule

# config.json keys, the penzai way: what we read, what carries no meaning for the computation,
# and keys that are fine only at one value.
_HANDLED_KEYS = {
    "model_type", "architectures", "n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx",
    "vocab_size", "activation_function", "layer_norm_epsilon", "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx", "tie_word_embeddings",
}
_IGNORED_KEYS = {
    # dropout and initialisation (training only), output heads of other task classes,
    # numerics-only switches
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "initializer_range", "summary_activation",
    "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj",
    "reorder_and_upcast_attn", "use_cache",
}
_REQUIRED_VALUES = {"add_cross_attention": (False,)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d = get_int(cfg, "n_embd", 768)
    n_heads = get_int(cfg, "n_head", 12)
    if d % n_heads:
        raise ValueError(f"n_embd={d} is not divisible by n_head={n_heads}")
    n_positions = get_int(cfg, "n_positions", get_int(cfg, "n_ctx", 1024))
    act = activation_from_hf(cfg, "activation_function", "gelu_new")
    n_inner = get_int(cfg, "n_inner", None, nullable=True)
    return ModelConfig(
        arch="gpt2",
        n_layers=get_int(cfg, "n_layer", 12),
        d_model=d,
        n_heads=n_heads,
        d_head=d // n_heads,
        d_mlp=n_inner if n_inner is not None else 4 * d,
        vocab_size=get_int(cfg, "vocab_size", 50257),
        n_positions=n_positions,
        norm_eps=get_float(cfg, "layer_norm_epsilon", 1e-5, minimum=0.0),
        activation=act,
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", True),
        attn_scale=get_bool(cfg, "scale_attn_weights", True),
        attn_scale_by_layer=get_bool(cfg, "scale_attn_by_inverse_layer_idx", False),
    )


class Attention(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.c_attn = Linear(c.d_model, 3 * c.d_model, dtype=dtype)  # 'D,3D': q | k | v
        self.c_proj = Linear(c.d_model, c.d_model, dtype=dtype)


class MLP(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.c_fc = Linear(c.d_model, c.d_mlp, dtype=dtype)
        self.c_proj = Linear(c.d_mlp, c.d_model, dtype=dtype)


class Block(nnx.Module):
    def __init__(self, c: ModelConfig, dtype, attention=Attention):
        self.ln_1 = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.attn = attention(c, dtype)
        self.ln_2 = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.mlp = MLP(c, dtype)


class GPT2(ResidualModule):
    """GPT-2; also the base of GPT-Neo, which swaps in its own attention module (``ATTENTION``) and ``attn``."""

    ATTENTION = Attention

    def __init__(self, config: ModelConfig, dtype=jnp.float32):
        c = self.config = config
        self.wte = nnx.Param(jnp.zeros((c.vocab_size, c.d_model), dtype))   # 'VD'
        self.wpe = nnx.Param(jnp.zeros((c.n_positions, c.d_model), dtype))  # 'PD'
        self.h = nnx.List([Block(c, dtype, self.ATTENTION) for _ in range(c.n_layers)])
        self.ln_f = LayerNorm(c.d_model, eps=c.norm_eps, dtype=dtype)
        self.lm_head = None if c.tie_embeddings else Linear(c.d_model, c.vocab_size, bias=False, dtype=dtype)

    def token_embed(self, ids):
        wte = self.wte[...]
        return embedding_lookup(wte, ids).astype(compute_dtype_for(wte.dtype))

    def embed(self, ids):
        wpe = self.wpe[...]
        positions = wpe[: ids.shape[-1]].astype(compute_dtype_for(wpe.dtype))
        return self.token_embed(ids) + positions

    def attn(self, layer, h):
        c, block = self.config, self.h[layer]
        x = block.ln_1(h)
        qkv = block.attn.c_attn(x)
        q, k, v = (part.reshape(*part.shape[:-1], c.n_heads, c.d_head)
                   for part in jnp.split(qkv, 3, axis=-1))
        scale = 1.0 / np.sqrt(c.d_head) if c.attn_scale else 1.0
        if c.attn_scale_by_layer:
            scale /= layer + 1
        out = causal_attention(q, k, v, scale=scale)
        return block.attn.c_proj(out.reshape(*out.shape[:-2], c.d_model))

    def mlp(self, layer, h):
        block = self.h[layer]
        x = block.mlp.c_fc(block.ln_2(h))
        return block.mlp.c_proj(freeze.activation(self.config.activation, x))

    def final_norm(self, h):
        return self.ln_f(h)

    def unembed(self, x):
        if self.lm_head is not None:
            return self.lm_head(x)
        return x @ self.wte[...].astype(x.dtype).T


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``transformer.`` prefix) -> (our param path, transpose?)."""
    m = {"wte.weight": (("wte",), False), "wpe.weight": (("wpe",), False),
         "ln_f.weight": (("ln_f", "scale"), False), "ln_f.bias": (("ln_f", "bias"), False)}
    for i in range(c.n_layers):
        for ln in ("ln_1", "ln_2"):
            m[f"h.{i}.{ln}.weight"] = (("h", i, ln, "scale"), False)
            m[f"h.{i}.{ln}.bias"] = (("h", i, ln, "bias"), False)
        for sub, lins in (("attn", ("c_attn", "c_proj")), ("mlp", ("c_fc", "c_proj"))):
            for lin in lins:
                m[f"h.{i}.{sub}.{lin}.weight"] = (("h", i, sub, lin, "kernel"), False)
                m[f"h.{i}.{sub}.{lin}.bias"] = (("h", i, sub, lin, "bias"), False)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)  # torch Linear: (out, in)
    return m


def toy_config(*, vocab_size: int, n_layers: int = 4, d_model: int = 128, n_heads: int = 4,
               n_positions: int = 128) -> ModelConfig:
    """A small GPT-2 :class:`ModelConfig` to train from scratch (MLP width 4·d, tanh GELU, tied embeddings).

    Example:
      >>> toy_config(vocab_size=300, n_layers=1, d_model=16, n_heads=2, n_positions=8).d_head
      8
    """
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
    return ModelConfig(arch="gpt2", n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                       d_head=d_model // n_heads, d_mlp=4 * d_model, vocab_size=vocab_size,
                       n_positions=n_positions, norm_eps=1e-5, activation="gelu_new")


def config_to_hf(config: ModelConfig, **extra) -> dict:
    """The ``config.json`` dict of ``GPT2LMHeadModel`` for ``config`` (the inverse of :func:`config_from_hf`),
    dropout off, with ``extra`` keys (token ids) added.

    Example:
      >>> cfg = config_to_hf(toy_config(vocab_size=300, n_layers=1, d_model=16, n_heads=2), eos_token_id=0)
      >>> config_from_hf(cfg) == toy_config(vocab_size=300, n_layers=1, d_model=16, n_heads=2)
      True
    """
    if FAMILY.config_keys.get(config.arch) is None:
        raise ValueError(f"config_to_hf writes GPT-2 configs, got arch {config.arch!r}")
    return {
        "model_type": config.arch, "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.n_positions, "n_embd": config.d_model,
        "n_layer": config.n_layers, "n_head": config.n_heads, "n_inner": config.d_mlp,
        "activation_function": config.activation, "layer_norm_epsilon": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "scale_attn_weights": config.attn_scale,
        "scale_attn_by_inverse_layer_idx": config.attn_scale_by_layer,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's format, read by jetjax.io.gguf): metadata -> config.json, tensor names, layout.

def _gguf_config(meta: dict, names: set) -> dict:
    return {
        "model_type": "gpt2",
        "n_embd": gguf_need(meta, "gpt2.embedding_length"),
        "n_layer": gguf_need(meta, "gpt2.block_count"),
        "n_head": gguf_need(meta, "gpt2.attention.head_count"),
        "n_inner": gguf_need(meta, "gpt2.feed_forward_length"),
        "n_positions": gguf_need(meta, "gpt2.context_length"),
        "layer_norm_epsilon": meta.get("gpt2.attention.layer_norm_epsilon", 1e-5),
        "vocab_size": gguf_vocab_size(meta, "gpt2"),
        "tie_word_embeddings": "output.weight" not in names,
    }


def _gguf_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    # HF GPT-2 stores Conv1D weights (in, out); llama.cpp's converter transposed them to (out, in)
    if w.ndim == 2 and hf_name.startswith("h.") and hf_name.endswith(".weight"):
        return w.T
    return w


_GGUF_LAYER = {
    f"blk.{{i}}.{g}.{p}": f"h.{{i}}.{h}.{p}"
    for g, h in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                 ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
    for p in ("weight", "bias")
}
_GGUF_GLOBAL = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
                "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias",
                "output.weight": "lm_head.weight"}
_GGUF_KEYS = frozenset({"block_count", "embedding_length", "feed_forward_length", "attention.head_count",
                        "attention.layer_norm_epsilon", "context_length", "vocab_size"})


FAMILY = Family(
    name="gpt2",
    config_keys={"gpt2": ConfigKeys(frozenset(_HANDLED_KEYS), frozenset(_IGNORED_KEYS), _REQUIRED_VALUES)},
    config_from_hf=config_from_hf,
    module=GPT2,
    weight_map=weight_map,
    strip_prefixes=("transformer.",),
    ignored_tensors=(".attn.bias", ".attn.masked_bias"),  # mask buffers, not weights
    gguf={"gpt2": GgufArch("gpt2", _GGUF_KEYS, frozenset(), _gguf_config, _GGUF_GLOBAL, _GGUF_LAYER, _gguf_fix)},
)
