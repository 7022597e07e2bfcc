"""The layers families share: activations, norms, causal attention, projections.

All of it is made of primitives that have Taylor-mode rules (no ``custom_jvp``, ``scan`` or
``cond`` on the path a jet takes), so any family built from these pieces can be expanded.

Every nonlinearity of a residual branch goes through one of the :data:`freeze` hooks: outside a
``freeze.record()`` / ``freeze.replay(tape)`` context they compute exactly what they always did (same
operations in the same order, so results are bit for bit those of the plain layers). Under
``freeze.record()`` each hook also writes its nonlinear *factor* from this forward pass onto a
:class:`Tape`, in call order; under ``freeze.replay(tape)`` each hook uses the recorded factor
instead, and the layer becomes affine in its input (:mod:`jetjax.paths.frozen` builds the linearised path
decomposition on this). The factors:

* LayerNorm / RMSNorm: the per-token ``1/sqrt(var + eps)`` (LayerNorm's centring is linear and stays);
* attention: the softmax probabilities (the pattern; queries, keys and rotary no longer matter);
* MLP activations: the ratio ``act(z*)/z*`` per neuron (0 where ``z* == 0``; exact there since every
  activation in :data:`ACTIVATIONS` has ``act(0) == 0``), so ``act(z) := ratio · z`` equals ``act(z*)``
  at the actual input;
* gated MLPs: the gate ``act(gate(x*))`` itself, a constant multiplier of ``up(x)``;
* clipping (OLMo's ``clip_qkv`` on values): the entries clipped in the actual pass become those
  constants, the others pass through unchanged;
* logit soft-capping (Gemma 2's ``c · tanh(z / c)`` on the logits): the ratio ``c·tanh(z*/c)/z*`` per
  logit (1 where ``z* == 0``, its limit), so the frozen decoder stays linear in its input.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

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


# -- freezing hooks -------------------------------------------------------------------------

class Tape:
    """The nonlinear factors of one recorded forward pass, in call order: ``(site, factor)`` pairs.

    ``site`` names the hook (``"layer_norm"``, ``"rms_norm"``, ``"attention"``,
    ``"activation:gelu_new"``, ``"gate:silu"``, ``"clip"``); ``factor`` is an array (a pair of
    arrays for ``"clip"``). Under ``jax.jit`` the factors are tracers of that trace: record and
    replay inside one jitted function.
    """

    def __init__(self, entries=()):
        self.entries: list[tuple[str, Any]] = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site, _ in self.entries)

    def __repr__(self) -> str:
        return f"Tape({list(self.sites)})"


class _Replay:
    def __init__(self, tape: Tape):
        self.tape, self.cursor = tape, 0

    def pop(self, site: str):
        if self.cursor >= len(self.tape):
            raise ValueError(f"freeze.replay: the tape has {len(self.tape)} factors, all used; the replayed "
                             f"computation asked for another ({site!r}): replay the same computation that was "
                             "recorded")
        got, factor = self.tape.entries[self.cursor]
        if got != site:
            raise ValueError(f"freeze.replay: factor {self.cursor} of the tape is {got!r} but the replayed "
                             f"computation asked for {site!r}: replay the same computation that was recorded")
        self.cursor += 1
        return factor


_FREEZE: contextvars.ContextVar = contextvars.ContextVar("jetjax_freeze", default=None)


def _fitted(factor: Array, shape, dtype, site: str) -> Array:
    """``factor`` broadcast to ``shape`` (a replayed input may carry extra leading batch axes)."""
    factor = jnp.asarray(factor)
    try:
        if np.broadcast_shapes(factor.shape, tuple(shape)) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"freeze.replay: the recorded {site!r} factor has shape {tuple(factor.shape)}, which does "
                         f"not broadcast to {tuple(shape)}: replay on inputs shaped like the recorded ones "
                         "(extra leading batch axes are fine)") from None
    return jnp.broadcast_to(factor.astype(dtype), shape)


class Freezing:
    """The freezing hooks: ``record()`` / ``replay(tape)`` contexts and the hooks the layers call.

    Use the module-level instance :data:`freeze`. Contexts do not nest (a second one inside the
    first is an error). Outside any context every hook computes exactly the plain layer.

    Example (a gelu MLP: recorded at ``z*``, replayed it is ``ratio · z``, linear in ``z``):
      >>> z = jnp.array([-1.0, 0.0, 2.0])
      >>> with freeze.record() as tape:
      ...     y = freeze.activation("gelu", z)
      >>> tape.sites, bool(jnp.all(y == ACTIVATIONS["gelu"](z)))
      (('activation:gelu',), True)
      >>> with freeze.replay(tape):
      ...     bool(jnp.allclose(freeze.activation("gelu", 2 * z), 2 * y))
      True
    """

    @property
    def mode(self) -> str | None:
        """``"record"``, ``"replay"`` or ``None`` (plain layers)."""
        state = _FREEZE.get()
        return None if state is None else ("record" if isinstance(state, Tape) else "replay")

    @contextlib.contextmanager
    def record(self) -> Iterator[Tape]:
        """Run the layers as usual and write each nonlinearity's factor onto the yielded :class:`Tape`."""
        self._check_free("record")
        tape = Tape()
        token = _FREEZE.set(tape)
        try:
            yield tape
        finally:
            _FREEZE.reset(token)

    @contextlib.contextmanager
    def replay(self, tape: Tape, *, strict: bool = True) -> Iterator[None]:
        """Run the layers with the factors of ``tape`` in place of their nonlinearities (each layer is
        then affine in its input). ``strict``: on leaving, every factor must have been used."""
        if not isinstance(tape, Tape):
            raise TypeError(f"freeze.replay takes a Tape (from freeze.record()), got {type(tape).__name__}")
        self._check_free("replay")
        state = _Replay(tape)
        token = _FREEZE.set(state)
        try:
            yield
        finally:
            _FREEZE.reset(token)
        if strict and state.cursor != len(tape):
            raise ValueError(f"freeze.replay: only {state.cursor} of the tape's {len(tape)} factors were used: "
                             "replay the same computation that was recorded")

    @staticmethod
    def _check_free(what: str) -> None:
        if _FREEZE.get() is not None:
            raise RuntimeError(f"freeze.{what}() inside another freeze context; they do not nest")

    # -- hooks ---------------------------------------------------------------------------------
    def factor(self, site: str, compute: Callable[[], Array]) -> Array:
        """A factor the layer multiplies by: ``compute()`` (recorded under ``record``), or the recorded
        one under ``replay`` (``compute`` is then only shape-checked, never run)."""
        state = _FREEZE.get()
        if state is None:
            return compute()
        if isinstance(state, Tape):
            value = compute()
            state.entries.append((site, value))
            return value
        recorded = state.pop(site)
        expected = jax.eval_shape(compute)
        return _fitted(recorded, expected.shape, expected.dtype, site)

    def activation(self, name: str, z: Array) -> Array:
        """``ACTIVATIONS[name](z)``; frozen: ``ratio · z`` with ``ratio = act(z*)/z*`` (0 where ``z* == 0``)."""
        act = ACTIVATIONS[name]
        state = _FREEZE.get()
        if state is None:
            return act(z)
        site = f"activation:{name}"
        if isinstance(state, Tape):
            y = act(z)
            zero = z == 0
            state.entries.append((site, jnp.where(zero, jnp.zeros_like(y), y / jnp.where(zero, jnp.ones_like(z), z))))
            return y
        return _fitted(state.pop(site), z.shape, z.dtype, site) * z

    def gate(self, name: str, g: Array) -> Array:
        """``ACTIVATIONS[name](g)``, the gate of a gated MLP; frozen: the recorded ``act(g*)`` itself."""
        return self.factor(f"gate:{name}", lambda: ACTIVATIONS[name](g))

    def softcap(self, z: Array, cap: float) -> Array:
        """``cap · tanh(z / cap)``; frozen: ``ratio · z`` with ``ratio = cap·tanh(z*/cap)/z*`` (1 where ``z* == 0``)."""
        capped = lambda v: cap * jnp.tanh(v / cap)  # noqa: E731
        state = _FREEZE.get()
        if state is None:
            return capped(z)
        if isinstance(state, Tape):
            y = capped(z)
            zero = z == 0
            state.entries.append(("softcap", jnp.where(zero, jnp.ones_like(y), y / jnp.where(zero, jnp.ones_like(z), z))))
            return y
        return _fitted(state.pop("softcap"), z.shape, z.dtype, "softcap") * z

    def clip(self, y: Array, bound: float) -> Array:
        """``clip(y, -bound, bound)``; frozen: the entries clipped in the recorded pass keep their
        clipped value (constants), the others are ``y`` (identity)."""
        state = _FREEZE.get()
        if state is None:
            return jnp.clip(y, -bound, bound)
        if isinstance(state, Tape):
            out = jnp.clip(y, -bound, bound)
            state.entries.append(("clip", (out != y, out)))
            return out
        mask, value = state.pop("clip")
        return jnp.where(_fitted(mask, y.shape, bool, "clip"), _fitted(value, y.shape, y.dtype, "clip"), y)


freeze = Freezing()
"""The freezing hooks every layer calls (see :class:`Freezing` and the module docstring)."""


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
    out = centred * freeze.factor(
        "layer_norm", lambda: jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps))
    if scale is not None:
        out = out * scale
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x: Array, scale: Array, eps: float) -> Array:
    return x * freeze.factor("rms_norm", lambda: jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)) * scale


def causal_attention(q: Array, k: Array, v: Array, *, scale: float, window: int | None = None,
                     softcap: float | None = None) -> Array:
    """Softmax attention with a causal (optionally sliding-window) mask.

    ``q``: ``[..., T, heads, d_head]``; ``k, v``: ``[..., T, kv_heads, d_head]`` where ``kv_heads``
    divides ``heads`` (grouped-query attention: query head ``i`` reads key/value head
    ``i // (heads // kv_heads)``, Hugging Face's ``repeat_kv`` order). With ``window = w`` query
    ``t`` sees keys ``t - w + 1 .. t``. With ``softcap = c`` the scaled scores ``s`` become
    ``c · tanh(s / c)`` before the mask (Gemma 2).

    Example (uniform scores: each query averages the values it may see):
      >>> q = jnp.zeros((4, 2, 1)); k = jnp.zeros((4, 1, 1)); v = jnp.arange(4.0).reshape(4, 1, 1)
      >>> causal_attention(q, k, v, scale=1.0, window=2)[:, 0, 0].tolist()   # heads share the kv head
      [0.0, 0.5, 1.5, 2.5]
    """
    t, n_heads, d_head = q.shape[-3:]
    n_kv = k.shape[-2]
    query, key = np.arange(t)[:, None], np.arange(t)[None, :]
    visible = key <= query
    if window is not None:
        visible &= query - key < window

    def pattern():
        grouped = q.reshape(*q.shape[:-2], n_kv, n_heads // n_kv, d_head)       # '...TKGH'
        scores = jnp.einsum("...qkgd,...skd->...kgqs", grouped, k) * scale
        if softcap is not None:
            scores = softcap * jnp.tanh(scores / softcap)
        scores = jnp.where(visible, scores, jnp.finfo(scores.dtype).min)
        return jax.nn.softmax(scores, axis=-1)

    probs = freeze.factor("attention", pattern)
    out = jnp.einsum("...kgqs,...skd->...qkgd", probs, v)
    return _edited_heads(out.reshape(*out.shape[:-3], n_heads, d_head))


# -- per-head interventions ------------------------------------------------------------------

_HEAD_EDITS: contextvars.ContextVar = contextvars.ContextVar("jetjax_head_edits", default=None)


class _HeadEdits:
    def __init__(self, edits):
        self.edits, self.used = list(edits), 0


@contextlib.contextmanager
def edit_heads(*edits: Callable[[Array], Array] | None) -> Iterator[None]:
    """Pass the per-head outputs of the attention calls made inside the context through ``edits``.

    The ``i``-th call of :func:`causal_attention` in the context hands its output ``[..., T, heads,
    d_head]`` (the heads before the output projection) to ``edits[i]`` and returns what that gives
    (``None``: unchanged). This is how a graph names one head's output and how an ablation replaces
    it. On leaving, every edit must have been used: a family whose attention does not go through
    :func:`causal_attention` has no per-head outputs here, and this says so instead of ignoring them.

    Example (silence the second of two heads):
      >>> q = jnp.zeros((3, 2, 1)); k = jnp.zeros((3, 1, 1)); v = jnp.ones((3, 1, 1))
      >>> with edit_heads(lambda out: out * jnp.array([1.0, 0.0])[:, None]):
      ...     out = causal_attention(q, k, v, scale=1.0)
      >>> out[:, :, 0].tolist()
      [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    """
    if _HEAD_EDITS.get() is not None:
        raise RuntimeError("edit_heads() inside another edit_heads() context; they do not nest")
    state = _HeadEdits(edits)
    token = _HEAD_EDITS.set(state)
    try:
        yield
    finally:
        _HEAD_EDITS.reset(token)
    if state.used != len(state.edits):
        raise ValueError(f"edit_heads: {len(state.edits)} head edits were given but the computation made "
                         f"{state.used} attention calls through causal_attention: this family does not expose "
                         "per-head outputs there")


def _edited_heads(out: Array) -> Array:
    state = _HEAD_EDITS.get()
    if state is None:
        return out
    if state.used >= len(state.edits):
        raise ValueError(f"edit_heads: the computation made more attention calls than the {len(state.edits)} "
                         "head edits given")
    edit = state.edits[state.used]
    state.used += 1
    return out if edit is None else edit(out)


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
        return self.down_proj(freeze.gate(self.activation, self.gate_proj(x)) * self.up_proj(x))


__all__ = ["ACTIVATIONS", "Tape", "Freezing", "freeze",
           "compute_dtype_for", "embedding_lookup", "layer_norm", "rms_norm", "causal_attention", "Linear", "LayerNorm",
           "RMSNorm", "make_norm", "GatedMLP", "edit_heads"]
