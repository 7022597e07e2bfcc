"""The layers families share: activations, norms, causal attention, projections.

All of it is made of primitives that have Taylor-mode rules (no ``custom_jvp``, ``scan`` or
``cond`` on the path a jet takes), so any family built from these pieces can be expanded.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jetjax.models.config import ModelConfig

Array = jax.Array


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _gelu_erf(x):
    return 0.5 * x * (1.0 + jax.lax.erf(x / np.sqrt(2.0)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu": _gelu_erf,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "tanh": jnp.tanh,
}


def embedding_lookup(table: Array, ids: Array) -> Array:
    """Rows ``table[ids]``; an id outside ``0..len(table)-1`` (negative ones included) gives a row of NaN.

    Eager calls check ids first (:meth:`jetjax.Model.check_ids`), but under ``jax.jit`` ids are
    traced and cannot be checked; plain indexing would clamp a bad id to the last row and give a
    plausible wrong answer, while a NaN row makes every result from it visibly invalid (and the
    lenses and attribution report non-finite rows).

    Example:
      >>> import jax.numpy as jnp
      >>> embedding_lookup(jnp.eye(3), jnp.array([2, 5, -1]))
      Array([[ 0.,  0.,  1.],
             [nan, nan, nan],
             [nan, nan, nan]], dtype=float32)
    """
    ids = jnp.where(ids < 0, table.shape[0], ids)   # take() would wrap negative ids from the end
    return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


def compute_dtype_for(param_dtype) -> jnp.dtype:
    """Activations are float32 for float32/bf16/fp16 weights, float64 for float64 weights."""
    return jnp.dtype(jnp.float64 if jnp.dtype(param_dtype) == jnp.float64 else jnp.float32)


def layer_norm(x: Array, scale: Array | None, bias: Array | None, eps: float) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    out = centred * jax.lax.rsqrt(var + eps)
    if scale is not None:
        out = out * scale
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def causal_attention(q: Array, k: Array, v: Array, *, scale: float, window: int | None = None) -> Array:
    """Softmax attention with a causal (optionally sliding-window) mask.

    ``q``: ``[..., T, heads, d_head]``; ``k, v``: ``[..., T, kv_heads, d_head]`` where ``kv_heads``
    divides ``heads`` (grouped-query attention: query head ``i`` reads key/value head
    ``i // (heads // kv_heads)``, Hugging Face's ``repeat_kv`` order). With ``window = w`` query
    ``t`` sees keys ``t - w + 1 .. t``.

    Example (uniform scores: each query averages the values it may see):
      >>> q = jnp.zeros((4, 2, 1)); k = jnp.zeros((4, 1, 1)); v = jnp.arange(4.0).reshape(4, 1, 1)
      >>> causal_attention(q, k, v, scale=1.0, window=2)[:, 0, 0].tolist()   # heads share the kv head
      [0.0, 0.5, 1.5, 2.5]
    """
    t, n_heads, d_head = q.shape[-3:]
    n_kv = k.shape[-2]
    grouped = q.reshape(*q.shape[:-2], n_kv, n_heads // n_kv, d_head)       # '...TKGH'
    scores = jnp.einsum("...qkgd,...skd->...kgqs", grouped, k) * scale
    query, key = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = key <= query
    if window is not None:
        visible &= query - key < window
    scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("...kgqs,...skd->...qkgd", probs, v)
    return out.reshape(*out.shape[:-3], n_heads, d_head)


# -- modules ---------------------------------------------------------------------------------

class Linear(nnx.Module):
    """``x @ kernel + bias`` with kernel stored ``(in, out)``; params cast to the compute dtype."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool = True, dtype=jnp.float32):
        self.kernel = nnx.Param(jnp.zeros((d_in, d_out), dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x: Array) -> Array:
        out = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            out = out + self.bias[...].astype(x.dtype)
        return out


class LayerNorm(nnx.Module):
    """Layer norm; ``affine=False`` has neither gain nor bias (OLMo's non-parametric norm)."""

    def __init__(self, d: int, *, eps: float, affine: bool = True, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((d,), dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros((d,), dtype)) if affine else None
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        if self.scale is None:
            return layer_norm(x, None, None, self.eps)
        return layer_norm(x, self.scale[...].astype(x.dtype), self.bias[...].astype(x.dtype), self.eps)


class RMSNorm(nnx.Module):
    """RMS norm with gain ``scale`` (``plus_one``: gain ``1 + scale``, Gemma's parametrisation)."""

    def __init__(self, d: int, *, eps: float, plus_one: bool = False, dtype=jnp.float32):
        self.scale = nnx.Param(jnp.zeros((d,), dtype) if plus_one else jnp.ones((d,), dtype))
        self.eps = eps
        self.plus_one = plus_one

    def __call__(self, x: Array) -> Array:
        gain = self.scale[...].astype(x.dtype)
        return rms_norm(x, 1.0 + gain if self.plus_one else gain, self.eps)


def make_norm(c: ModelConfig, dtype) -> LayerNorm | RMSNorm:
    """The normalisation layer ``c.norm`` names."""
    if c.norm.startswith("layernorm"):
        return LayerNorm(c.d_model, eps=c.norm_eps, affine=c.norm == "layernorm", dtype=dtype)
    return RMSNorm(c.d_model, eps=c.norm_eps, plus_one=c.norm == "rmsnorm_plus_one", dtype=dtype)


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` (SwiGLU / GeGLU), with Hugging Face's Llama names."""

    def __init__(self, c: ModelConfig, dtype):
        self.gate_proj = Linear(c.d_model, c.d_mlp, bias=c.mlp_bias, dtype=dtype)
        self.up_proj = Linear(c.d_model, c.d_mlp, bias=c.mlp_bias, dtype=dtype)
        self.down_proj = Linear(c.d_mlp, c.d_model, bias=c.mlp_bias, dtype=dtype)
        self.activation = c.activation

    def __call__(self, x: Array) -> Array:
        return self.down_proj(ACTIVATIONS[self.activation](self.gate_proj(x)) * self.up_proj(x))


__all__ = ["ACTIVATIONS", "compute_dtype_for", "embedding_lookup", "layer_norm", "rms_norm", "causal_attention", "Linear", "LayerNorm",
           "RMSNorm", "make_norm", "GatedMLP"]
