"""The residual-model interface every architecture implements, and the pieces they share.

A model is ``f = Dec ∘ Π_l (id + γ_l) ∘ Enc``. Architectures are Flax NNX modules (one file per
family) that define the *branches*:

* ``embed(ids)``: ``h_0``; ``token_embed(ids)``: the token embedding alone (no positions);
* ``attn(l, h)`` and ``mlp(l, h)``: the delta each residual branch of layer ``l`` adds to the
  stream, with its own pre-norm (never ``h + delta``);
* ``final_norm(h)`` and ``unembed(x)``.

:class:`Model` wraps such a module as a parameter pytree plus pure functions of arrays, and
derives the rest of the interface (``block``, ``decode``, ``logits``, ``residual_stream``) once
for all architectures, so a new family only writes its branches and its weight mapping.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters, in one vocabulary for every family.

    Attributes:
      arch: the family (``"gpt2"``, ...).
      n_layers, d_model, n_heads, d_head, d_mlp, vocab_size: sizes (TransformerLens names:
        ``d_vocab`` is ``vocab_size``).
      n_positions: length of the learned position table, or ``None`` when positions are rotary.
      norm_eps: epsilon of the normalisation layers.
      activation: name of the MLP non-linearity (a key of :data:`ACTIVATIONS`).
      tie_embeddings: whether the unembedding is the transposed token embedding.
      parallel_residual: both branches of a layer read the same stream (GPT-NeoX, GPT-J).
      attn_scale_by_layer: divide attention scores by ``layer + 1`` as well (GPT-2 option).
      attn_scale: scale attention scores by ``1/sqrt(d_head)``.
      n_kv_heads: key/value heads (grouped-query attention when fewer than ``n_heads``; query head
        ``i`` reads key/value head ``i // (n_heads // n_kv_heads)``); ``None``: as many as ``n_heads``.
      rope_dim: how many leading dimensions of each query/key head are rotated (rotary position
        embedding, in the "rotate half" layout); 0: no rotary embedding.
      rope_theta: the rotary base period.
      rope_scaling: ``(("rope_type", "llama3"), ("factor", 8.0), ...)``: a frequency rescaling
        (``"linear"`` or ``"llama3"``, with Hugging Face's parameter names); ``()``: none.
      attn_windows: per layer, the sliding-window length (a query sees the last ``w`` positions,
        itself included) or ``None`` for global causal attention; ``None``: every layer global.
      qkv_bias, out_bias, mlp_bias: whether the query/key/value, attention output and MLP
        projections have biases (families that always have them ignore these).
      norm: ``"layernorm"``, ``"layernorm_no_affine"`` (no gain or bias, OLMo), ``"rmsnorm"`` or
        ``"rmsnorm_plus_one"`` (gain stored as ``w`` and applied as ``1 + w``, Gemma).
      embed_scale: the token embedding is multiplied by this (Gemma: ``sqrt(d_model)``).
      clip_qkv: clip queries, keys and values to ``[-clip_qkv, clip_qkv]`` (OLMo option).
    """

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_positions: int | None
    norm_eps: float
    activation: str
    tie_embeddings: bool = True
    parallel_residual: bool = False
    attn_scale: bool = True
    attn_scale_by_layer: bool = False
    n_kv_heads: int | None = None
    rope_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    attn_windows: tuple[int | None, ...] | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm: str = "layernorm"
    embed_scale: float = 1.0
    clip_qkv: float | None = None

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.rope_dim % 2 or not 0 <= self.rope_dim <= self.d_head:
            raise ValueError(f"rope_dim must be even and at most d_head={self.d_head}, got {self.rope_dim}")
        if self.attn_windows is not None and len(self.attn_windows) != self.n_layers:
            raise ValueError(f"attn_windows needs one entry per layer ({self.n_layers}), got {len(self.attn_windows)}")

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def window(self, layer: int) -> int | None:
        """The sliding-window length of layer ``layer`` (``None``: global causal attention)."""
        return None if self.attn_windows is None else self.attn_windows[layer]


NORMS = ("layernorm", "layernorm_no_affine", "rmsnorm", "rmsnorm_plus_one")


# ---------------------------------------------------------------------------------------------
# Shared maths. All of it is made of primitives that have Taylor-mode rules.

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


# -- rotary position embeddings --------------------------------------------------------------

ROPE_TYPES = ("default", "linear", "llama3")
_ROPE_KEYS = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_frequencies(c: ModelConfig) -> np.ndarray:
    """Inverse frequencies (float64, ``[rope_dim // 2]``) of ``c``'s rotary embedding."""
    dim = c.rope_dim
    inv = 1.0 / c.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    s = dict(c.rope_scaling)
    kind = s.get("rope_type", "default")
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        # Llama 3.1: long wavelengths slowed down by `factor`, short ones kept, a smooth blend between.
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        context = s["original_max_position_embeddings"]
        wavelength = 2 * np.pi / inv
        slowed = np.where(wavelength > context / low, inv / factor, inv)
        blend = (context / wavelength - low) / (high - low)
        smoothed = (1 - blend) * slowed / factor + blend * slowed
        medium = (wavelength >= context / high) & (wavelength <= context / low)
        inv = np.where(medium, smoothed, slowed)
    elif kind != "default":
        raise ValueError(f"unsupported rope_type {kind!r}; supported: {ROPE_TYPES}")
    return inv


def rotary_tables(c: ModelConfig, t: int, dtype) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``[T, rope_dim]``, for positions ``0..T-1``: constants, not traced."""
    angles = np.arange(t, dtype=np.float64)[:, None] * rope_frequencies(c)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return jnp.asarray(np.cos(angles), dtype), jnp.asarray(np.sin(angles), dtype)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the first ``rope_dim`` dims of each head of ``x`` (``[..., T, heads, d_head]``).

    The "rotate half" layout: dimension ``i`` pairs with ``i + rope_dim / 2``; the remaining
    ``d_head - rope_dim`` dimensions pass through (partial rotary, GPT-NeoX).
    """
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return jnp.concatenate([rot * cos + rotated_half * sin, rest], axis=-1)


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


class ResidualModule(nnx.Module):
    """What an architecture module provides. Subclasses define these five branch functions."""

    config: ModelConfig

    def embed(self, ids: Array) -> Array:  # h_0: [..., T, d]
        raise NotImplementedError

    def token_embed(self, ids: Array) -> Array:
        raise NotImplementedError

    def attn(self, layer: int, h: Array) -> Array:
        raise NotImplementedError

    def mlp(self, layer: int, h: Array) -> Array:
        raise NotImplementedError

    def final_norm(self, h: Array) -> Array:
        raise NotImplementedError

    def unembed(self, x: Array) -> Array:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------

class Model:
    """A residual language model: config, parameter pytree, tokenizer and pure residual functions.

    Every residual function takes an optional ``params=`` (a pytree shaped like
    :attr:`params`); without it the model's own parameters are used. Pass ``params``
    explicitly inside your own ``jax.jit`` so weights are arguments, not compiled-in constants.

    Shapes: ``ids`` is ``int [..., T]``; streams are ``[..., T, d_model]``; logits
    ``[..., T, vocab]``. Layer indices are 0-based: ``attn(0, h)`` is the first layer's
    attention branch, ``residual_stream(ids)[l]`` is ``h_l`` (``h_0`` = embedding).

    Example:
      >>> import jetjax as jj                                  # doctest: +SKIP
      >>> model = jj.from_pretrained("path/to/hf_dir")         # doctest: +SKIP
      >>> ids = model.tokenize("To be, or not to be")          # doctest: +SKIP
      >>> streams = model.residual_stream(ids)                 # [L+1, T, d]   # doctest: +SKIP
      >>> logits = model.decode(streams[-1])                   # == model.logits(ids)  # doctest: +SKIP
    """

    def __init__(self, module: ResidualModule, params: Any, *, tokenizer=None, source: str | None = None):
        self.config: ModelConfig = module.config
        self.graphdef, _ = nnx.split(module)
        self.params = params
        self.tokenizer = tokenizer
        self.source = source
        self._logits_jit = jax.jit(lambda p, ids: self.logits(ids, params=p, _checked=True))
        self._stream_jit = jax.jit(
            lambda p, ids, mid: self.residual_stream(ids, params=p, mid=mid, _checked=True),
            static_argnums=2,
        )

    def __repr__(self) -> str:
        c = self.config
        return (f"Model(arch={c.arch!r}, n_layers={c.n_layers}, d_model={c.d_model}, "
                f"n_heads={c.n_heads}, vocab_size={c.vocab_size}, source={self.source!r})")

    # -- module binding -----------------------------------------------------------------------
    def module(self, params=None) -> ResidualModule:
        """The NNX module bound to ``params`` (default: the model's own)."""
        return nnx.merge(self.graphdef, self.params if params is None else params)

    @staticmethod
    def _h(h) -> Array:
        h = jnp.asarray(h)
        if not jnp.issubdtype(h.dtype, jnp.inexact):
            raise TypeError(f"residual streams must be floating arrays, got dtype {h.dtype}")
        return h

    # -- the residual interface ---------------------------------------------------------------
    def embed(self, ids, *, params=None) -> Array:
        """``h_0 = Enc(ids)``: token embedding plus absolute positions where the model has them."""
        ids = self.check_ids(ids)
        return self.module(params).embed(ids)

    def token_embed(self, ids, *, params=None) -> Array:
        """The token embedding alone (positions dropped, as jet n-grams need)."""
        ids = self.check_ids(ids, check_length=False)
        return self.module(params).token_embed(ids)

    def attn(self, layer: int, h, *, params=None) -> Array:
        """γ of layer ``layer``'s attention branch: the delta it adds (pre-norm included)."""
        return self.module(params).attn(self._layer(layer), self._h(h))

    def mlp(self, layer: int, h, *, params=None) -> Array:
        """γ of layer ``layer``'s MLP branch: the delta it adds (pre-norm included)."""
        return self.module(params).mlp(self._layer(layer), self._h(h))

    def block(self, layer: int, h, *, params=None) -> Array:
        """The whole-block γ: ``h_{l+1} − h_l`` as a function of ``h_l`` (``l`` = ``layer``)."""
        return self._block_delta(self.module(params), self._layer(layer), self._h(h))[0]

    def final_norm(self, h, *, params=None) -> Array:
        return self.module(params).final_norm(self._h(h))

    def unembed(self, x, *, params=None) -> Array:
        return self.module(params).unembed(self._h(x))

    def decode(self, h, *, params=None) -> Array:
        """``Dec(h) = unembed(final_norm(h))``: logits from a residual stream."""
        m = self.module(params)
        return m.unembed(m.final_norm(self._h(h)))

    def logits(self, ids, *, params=None, _checked: bool = False) -> Array:
        """The model's logits ``[..., T, vocab]`` (float32 unless the params are float64)."""
        if not _checked:
            ids = self.check_ids(ids)
            if params is None:
                return self._logits_jit(self.params, ids)
        m = self.module(params)
        h = m.embed(ids)
        for layer in range(self.config.n_layers):
            h = h + self._block_delta(m, layer, h)[0]
        return m.unembed(m.final_norm(h))

    def residual_stream(self, ids, *, params=None, mid: bool = False, _checked: bool = False):
        """``h_0..h_L`` stacked: ``[L+1, ..., T, d]``, from one forward pass.

        With ``mid=True`` returns ``(streams, mids)`` where ``mids[l] = h_l + attn_l(h_l)`` is the
        stream between layer ``l``'s attention and MLP (``[L, ..., T, d]``; for parallel-residual
        models it is the same quantity, though the MLP does not read it).
        """
        if not _checked:
            ids = self.check_ids(ids)
            if params is None:
                return self._stream_jit(self.params, ids, mid)
        m = self.module(params)
        h = m.embed(ids)
        streams, mids = [h], []
        for layer in range(self.config.n_layers):
            delta, attn_out = self._block_delta(m, layer, h)
            mids.append(h + attn_out)
            h = h + delta
            streams.append(h)
        streams = jnp.stack(streams)
        return (streams, jnp.stack(mids)) if mid else streams

    def _block_delta(self, m: ResidualModule, layer: int, h: Array):
        """(whole-block delta, attention delta) of layer ``layer`` at stream ``h``."""
        a = m.attn(layer, h)
        if self.config.parallel_residual:
            return a + m.mlp(layer, h), a
        return a + m.mlp(layer, h + a), a

    # -- tokens -------------------------------------------------------------------------------
    def tokenize(self, text: str) -> np.ndarray:
        """Token ids (``int32 [T]``) of ``text`` with the checkpoint's tokenizer."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source or 'this model'} has no tokenizer files (tokenizer.json or "
                             "vocab.json + merges.txt); pass token ids instead of text")
        if not isinstance(text, str):
            raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise ValueError("tokenize: the text produced no tokens")
        return np.asarray(ids, dtype=np.int32)

    def detokenize(self, ids) -> str:
        """The text of token ids (a sequence or a 1-D array)."""
        if self.tokenizer is None:
            raise ValueError(f"{self.source or 'this model'} has no tokenizer files")
        return self.tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                     skip_special_tokens=False)

    def token_strings(self, ids) -> list[str]:
        """One string per token id (for tables and pictures)."""
        return [self.detokenize([int(i)]) for i in np.asarray(ids).reshape(-1)]

    # -- validation ---------------------------------------------------------------------------
    def check_ids(self, ids, *, check_length: bool = True):
        """Validate token ids: integer dtype, at least one token, within vocab and position table."""
        if isinstance(ids, str):
            raise TypeError("expected token ids, got a str: use model.tokenize(text) first")
        if isinstance(ids, jax.core.Tracer):
            if not jnp.issubdtype(ids.dtype, jnp.integer):
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            return ids
        arr = np.asarray(ids)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
        if arr.ndim == 0 or arr.shape[-1] == 0:
            raise ValueError(f"token ids must have shape [..., T] with T >= 1, got shape {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        v = self.config.vocab_size
        if lo < 0 or hi >= v:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is out of range for a vocabulary of {v} (valid: 0..{v - 1})")
        n_pos = self.config.n_positions
        if check_length and n_pos is not None and arr.shape[-1] > n_pos:
            raise ValueError(f"sequence of {arr.shape[-1]} tokens is longer than the model's position "
                             f"table ({n_pos}); truncate the input to at most {n_pos} tokens")
        return jnp.asarray(arr, dtype=jnp.int32)

    def _layer(self, layer) -> int:
        n = self.config.n_layers
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise TypeError(f"layer index must be an int, got {layer!r}")
        if not 0 <= layer < n:
            raise IndexError(f"layer {layer} is out of range for a model with {n} layers (valid: 0..{n - 1})")
        return int(layer)


def abstract_params(module_fn: Callable[[], ResidualModule]):
    """``(graph-free module skeleton, {path: ShapeDtypeStruct})`` without allocating weights."""
    abstract = nnx.eval_shape(module_fn)
    _, state = nnx.split(abstract)
    flat = {tuple(path): var for path, var in nnx.to_flat_state(state)}
    return abstract, {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat.items()}


def nest(flat: dict[tuple, Any]) -> dict:
    """``{(a, b, c): x}`` -> ``{a: {b: {c: x}}}`` (the pure-dict form NNX merges)."""
    out: dict = {}
    for path, value in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


# ---------------------------------------------------------------------------------------------
# Reading Hugging Face config.json files: the pieces every family needs.

@dataclasses.dataclass(frozen=True)
class ConfigKeys:
    """A family's config.json allowlist for one ``model_type`` (the penzai way).

    ``handled``: keys the family reads; ``ignored``: keys with no effect on the forward pass
    (dropout, initialisation, caching); ``required``: ``{key: accepted values}`` for features that
    are fine only at some values. Anything else is refused by :func:`jetjax.from_pretrained`.
    """

    handled: frozenset[str]
    ignored: frozenset[str]
    required: dict[str, tuple] = dataclasses.field(default_factory=dict)

    def known(self) -> frozenset[str]:
        return self.handled | self.ignored | frozenset(self.required)


def activation_from_hf(cfg: dict, key: str, default: str) -> str:
    act = cfg.get(key, default)
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported {key} {act!r}; supported: {sorted(ACTIVATIONS)}")
    return act


def rope_from_hf(cfg: dict, d_head: int, *, default_partial: float = 1.0, allow_partial: bool = True) -> dict:
    """``rope_dim``, ``rope_theta``, ``rope_scaling`` from ``rope_parameters`` (transformers v5) or
    the older ``rope_theta`` / ``rope_scaling`` / ``rotary_pct`` / ``rotary_emb_base`` keys.

    Raises ``ValueError`` naming the feature for rope types other than :data:`ROPE_TYPES`, for
    parameters we do not implement, and for odd rotary widths.

    Example:
      >>> rope_from_hf({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, 64)
      {'rope_dim': 64, 'rope_theta': 10000.0, 'rope_scaling': (('rope_type', 'linear'), ('factor', 2.0))}
      >>> rope_from_hf({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, 64)
      Traceback (most recent call last):
        ...
      ValueError: unsupported rope_type 'yarn' in rope_parameters; supported: ('default', 'linear', 'llama3')
    """
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = params.pop("rope_type", params.pop("type", "default"))
    theta = params.pop("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    partial = params.pop("partial_rotary_factor",
                         cfg.get("partial_rotary_factor", cfg.get("rotary_pct", default_partial)))
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {kind!r} in rope_parameters; supported: {ROPE_TYPES}")
    needed = _ROPE_KEYS[kind]
    missing = [k for k in needed if params.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {kind!r} needs rope_parameters {missing}")
    unknown = sorted(k for k in params if k not in needed and params[k] is not None)
    if unknown:
        raise ValueError(f"unsupported rope_parameters {unknown} for rope_type {kind!r} "
                         f"(jetjax implements {list(needed) or 'no extra parameters'})")
    if not allow_partial and float(partial) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor={partial} for {cfg.get('model_type')} (only 1.0)")
    dim = int(d_head * float(partial))
    if dim % 2:
        raise ValueError(f"unsupported odd rotary dimension {dim} (d_head={d_head} × partial_rotary_factor="
                         f"{partial}); rotary embeddings need an even number of dimensions")
    scaling = () if kind == "default" else (("rope_type", kind),) + tuple(
        sorted((k, float(params[k])) for k in needed))
    return dict(rope_dim=dim, rope_theta=float(theta), rope_scaling=scaling)


def windows_for(n_layers: int, window: int | None, sliding_layers) -> tuple[int | None, ...] | None:
    """Per-layer windows: ``window`` on the layers in ``sliding_layers``, global elsewhere."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"sliding_window must be a positive int or null, got {window!r}")
    return tuple(window if layer in sliding_layers else None for layer in range(n_layers))


__all__ = ["ModelConfig", "Model", "ResidualModule", "ACTIVATIONS", "NORMS", "ROPE_TYPES", "layer_norm",
           "rms_norm", "causal_attention", "rope_frequencies", "rotary_tables", "apply_rotary", "Linear",
           "LayerNorm", "RMSNorm", "GatedMLP", "make_norm", "compute_dtype_for", "abstract_params", "nest",
           "ConfigKeys", "activation_from_hf", "rope_from_hf", "windows_for"]
