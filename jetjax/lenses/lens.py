"""Jet lenses: the logit lens as the order-0 case, the iterative and the joint jet lens.

Streams and rows. ``layer l`` is the residual stream ``h_l`` *entering* block ``l`` (``h_0`` is the
embedding, ``h_L`` the last stream, which the decoder reads). With ``granularity="block"`` a lens has
one row per stream, ``L + 1`` rows labelled ``h0 .. hL``. With ``granularity="branch"`` the streams
between the two branches of each layer are added: ``2L + 1`` rows, in computation order

=========  ==========  ==========================================================
row index  label       centre (stream)
=========  ==========  ==========================================================
0          ``emb``     ``h_0``, the embedding
2l + 1     ``attn{l}`` ``h_l + attn_l(h_l)``: the stream after layer l's attention
2l + 2     ``mlp{l}``  ``h_{l+1}``: the stream after layer l's MLP (the whole block)
=========  ==========  ==========================================================

In parallel-residual models (GPT-NeoX, GPT-J) both branches read ``h_l``; the ``attn{l}`` row is
still ``h_l + attn_l(h_l)``, the stream with only the attention's contribution added.
``rows=`` picks rows by these indices (negative indices count from the end; ``layers=`` is the old
name of that argument and still works, with a ``DeprecationWarning``).

Lenses (``Dec = unembed ∘ final_norm``; ``J^k`` the order-``k`` jet, see :func:`jetjax.jet`):

* :func:`logit_lens`: ``Dec(h_l)``, the final norm recomputed at each stream.
* :func:`iterative_jet_lens`: ``J^k Dec(h_l)(h_L)``, one standalone expansion per row (weight 1).
  Order 0 is the logit lens; at ``l = L`` every order gives the model's logits.
* :func:`joint_jet_lens`: one decoder expansion at ``h_L`` whose centres are the embedding and each
  block's (or branch's) own contribution ``h_{l+1} − h_l``; ``Σ_i w_i J^k Dec(c_i)(h_L)`` with convex
  weights, uniform or fitted per token (Adam on the remainder under the ``UᵀU`` metric).

All of them return a :class:`LensResult` (:mod:`jetjax.lenses.result`: logits plus faithfulness metrics,
top tokens, JSON that loads back; it holds the model's vocabulary, never the model).
Rows are batched with ``vmap`` inside one jitted function per (model, lens kind, order,
granularity) that takes the parameters as an argument, so repeated calls with the same shapes do
not recompile. ``ids`` may be one prompt ``[T]`` or a batch ``[B, T]``.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jetjax._internal.compiled import TRACE_COUNTS, module_jit, per_model
from jetjax._internal.checks import check_nonnegative_int, check_order
from jetjax.lenses.result import METRICS, LensResult
from jetjax.paths.expand import expand_decoder
from jetjax.paths.labels import EMB, check_granularity, model_components
from jetjax.models.model import Model
from jetjax._internal.precision import check_compute_dtype, unembedding_operands

__all__ = ["LensResult", "logit_lens", "iterative_jet_lens", "joint_jet_lens", "METRICS", "row_labels", "token_texts"]

# How many times each lens core was traced (i.e. compiled), by (kind, order, granularity).
# Read by the tests to show that repeated calls reuse the compiled function.


# ---------------------------------------------------------------------------------------------
# Rows

def _n_rows(model: Model, granularity: str) -> int:
    return len(_row_components(model, granularity))


def _row_components(model: Model, granularity: str) -> tuple[str, ...]:
    """Per row, the component whose output completes its stream: ``emb`` then the model's components."""
    return (EMB, *map(str, model_components(model.config.n_layers, check_granularity(granularity))))


def row_labels(model: Model, granularity: str = "block") -> tuple[str, ...]:
    """Labels of all rows of an iterative lens: ``h0..hL`` (block) or ``emb, attn0, mlp0, ...`` (branch).

    Example:
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> row_labels(model), row_labels(model, "branch")
      (('h0', 'h1', 'h2'), ('emb', 'attn0', 'mlp0', 'attn1', 'mlp1'))
    """
    components = _row_components(model, granularity)
    if granularity == "block":
        return tuple(f"h{r}" for r in range(len(components)))
    return components


def _joint_labels(model: Model, rows: Sequence[int], granularity: str) -> tuple[str, ...]:
    """Centre ``i`` is ``stream[rows[i]] − stream[rows[i-1]]``: the components in between."""
    components = _row_components(model, granularity)
    labels, prev = [], -1
    for r in rows:
        first, last = components[prev + 1], components[r]
        labels.append(last if first == last else f"{first}..{last}")
        prev = r
    return tuple(labels)


def _check_rows(rows, n_rows: int, granularity: str) -> tuple[int, ...]:
    valid = (f"0..{n_rows - 1} (streams h_0..h_{n_rows - 1})" if granularity == "block"
             else f"0..{n_rows - 1} (emb, attn0, mlp0, ...: 2 rows per layer)")
    if rows is None:
        return tuple(range(n_rows))
    if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
        rows = [rows]
    if isinstance(rows, (str, bytes)):
        raise TypeError(f"rows must be None, an int or a sequence of ints, got the string {rows!r}")
    try:
        items = list(rows)
    except TypeError:
        raise TypeError(f"rows must be None, an int or a sequence of ints, got {rows!r}") from None
    if not items:
        raise ValueError(f"rows is empty: pick at least one row, valid indices are {valid}")
    out = []
    for row in items:
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row indices must be ints, got {row!r}")
        if not -n_rows <= row < n_rows:
            raise IndexError(f"row {int(row)} is out of range for granularity={granularity!r}: "
                             f"valid indices are {valid}, or negative ones from -{n_rows}")
        out.append(int(row) % n_rows)
    return tuple(out)


_NOT_GIVEN: Any = object()   # the default of the deprecated ``layers=`` keyword


def check_rows(model: Model, rows, granularity: str = "block") -> tuple[int, ...]:
    """The row indices ``rows`` picks on ``model`` at ``granularity`` (``None``: all), resolved to
    non-negative ints; ``TypeError`` / ``IndexError`` / ``ValueError`` naming the bad index otherwise.

    Example:
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> check_rows(model, [0, -1]), check_rows(model, None, "branch")
      ((0, 2), (0, 1, 2, 3, 4))
    """
    return _check_rows(rows, _n_rows(model, granularity), granularity)


def _rows_argument(fn: str, rows, layers):
    """``rows=``, or the same indices under the old keyword ``layers=`` (with a deprecation warning)."""
    if layers is _NOT_GIVEN:
        return rows
    if rows is not None:
        raise TypeError(f"{fn}: pass the row indices as rows= only (layers= is its old name), not both")
    warnings.warn(f"{fn}(layers=...) is deprecated: the indices pick lens rows, so the argument is now "
                  "called rows=", DeprecationWarning, stacklevel=3)
    return layers


# ---------------------------------------------------------------------------------------------
# Compiled cores, one per (model, kind, order, granularity)

def _streams(model: Model, params, ids, granularity: str) -> jax.Array:
    """All row centres ``[R, ..., T, d]`` (see the module docstring); the last one is ``h_L``."""
    h, mids = model.residual_stream(ids, params=params, mid=True)
    if granularity == "block":
        return h
    between = jnp.stack([mids, h[1:]], axis=1)  # [L, 2, ..., T, d]: after attn_l, after mlp_l
    return jnp.concatenate([h[:1], between.reshape((-1,) + h.shape[1:])], axis=0)


def _iterative_core(model_ref, order, granularity, params, ids, rows, unembedding, *, last_pos=None):
    TRACE_COUNTS[("iterative", order, granularity)] += 1
    model = model_ref()
    streams = _streams(model, params, ids, granularity)
    exp = expand_decoder(model, ids, streams[rows], order, weights="unit", streams=streams, params=params,
                         unembedding=unembedding)
    if last_pos is not None and unembedding is None:
        # The row of h_L is J^k Dec(h_L)(h_L): every term past the primal multiplies a zero
        # increment, so it is Dec(h_L) itself; reuse it instead of a 14th vocabulary-sized GEMM.
        return exp.terms, exp.terms[last_pos]
    return exp.terms, model.decode(streams[-1], params=params)


def _joint_core(model_ref, order, granularity, params, ids, rows, unembedding):
    TRACE_COUNTS[("joint", order, granularity)] += 1
    model = model_ref()
    streams = _streams(model, params, ids, granularity)
    picked = streams[rows]
    centres = picked - jnp.concatenate([jnp.zeros_like(picked[:1]), picked[:-1]])
    exp = expand_decoder(model, ids, centres, order, weights="unit", streams=streams, params=params,
                         unembedding=unembedding)
    return exp.terms, model.decode(streams[-1], params=params)


def _core(model: Model, kind: str, order: int, granularity: str, last_pos: int | None = None,
          compute_dtype: str = "float32") -> Callable:
    """``(params, ids, rows) -> (row logits, model logits)``, compiled once per settings.

    ``last_pos``: where the last stream ``h_L`` sits among the chosen rows (iterative lens), if it
    does. ``compute_dtype``: the precision of the rows' unembedding (:mod:`jetjax._internal.precision`); the
    model's own logits, which the metrics compare against, are always its float32 ones.
    """
    body = {"iterative": functools.partial(_iterative_core, last_pos=last_pos), "joint": _joint_core}[kind]
    # A weak reference, so that the per-model cache does not keep the model alive.
    fn = per_model(model, "lenses", (kind, order, granularity, last_pos, compute_dtype),
                   lambda: jax.jit(functools.partial(body, weakref.ref(model), order, granularity)))
    if compute_dtype == "float32":
        return lambda params, ids, rows: fn(params, ids, rows, None)
    return lambda params, ids, rows: fn(params, ids, rows, unembedding_operands(model, compute_dtype, params))


@module_jit
@functools.partial(jax.jit, static_argnames="steps")
def _fit_simplex_weights(terms, logits, steps: int, learning_rate):
    """Adam on softmax-parametrised weights ``[n, ..., T]`` minimising the mean squared remainder norm.

    For convex weights the remainder in logit space is ``U r`` (``r``: the remainder after the
    final norm; an unembedding bias cancels), so its squared norm ``rᵀ UᵀU r`` is ``wᵀ G w`` with
    ``G`` the Gram matrix of the per-centre logit errors. Computing ``G`` once makes each Adam
    step cost O(n² T) instead of a pass over the vocabulary.
    """
    errors = terms - logits
    gram = jnp.einsum("i...v,j...v->ij...", errors, errors)
    opt = optax.adam(learning_rate)

    def loss(theta):
        w = jax.nn.softmax(theta, axis=0)
        return jnp.mean(jnp.einsum("i...,ij...,j...->...", w, gram, w))

    def step(carry, _):
        theta, state = carry
        value, grad = jax.value_and_grad(loss)(theta)
        updates, state = opt.update(grad, state)
        return (optax.apply_updates(theta, updates), state), value

    theta = jnp.zeros(gram.shape[1:], gram.dtype)  # uniform weights to start
    # optax mixes its int32 step count with floats, which strict dtype promotion refuses.
    with jax.numpy_dtype_promotion("standard"):
        (theta, _), losses = jax.lax.scan(step, (theta, opt.init(theta)), length=steps)
    return jax.nn.softmax(theta, axis=0), jnp.append(losses, loss(theta))


@module_jit
@jax.jit
def _combine(weights, terms):
    return jnp.einsum("n...,n...v->...v", weights, terms)


def token_texts(model: Model | None, ids) -> list[str]:
    """One string per id; ``#id`` where the model has no tokenizer (random models)."""
    flat = np.asarray(ids).reshape(-1)
    if model is not None and model.tokenizer is not None:
        return model.token_strings(flat)
    return [f"#{int(i)}" for i in flat]


def _vocab(model: Model) -> tuple[str, ...] | None:
    """The model's token strings (index = id) for a :class:`LensResult`, built once per model and tokenizer."""
    if model.tokenizer is None:
        return None
    return per_model(model, "lenses", ("vocab", id(model.tokenizer)),
                     lambda: tuple(model.token_strings(np.arange(model.config.vocab_size))))


# ---------------------------------------------------------------------------------------------
# Public lenses

def _prepare(model: Model, ids, rows, order, granularity, compute_dtype):
    if not isinstance(model, Model):
        raise TypeError(f"expected a jetjax Model, got {type(model).__name__}")
    order = check_order(order)
    rows = _check_rows(rows, _n_rows(model, granularity), granularity)
    return model.check_ids(ids), rows, order, check_compute_dtype(compute_dtype)


def iterative_jet_lens(model: Model, ids, rows=None, order: int = 1, *,
                       granularity: str = "block", compute_dtype: str = "float32",
                       layers=_NOT_GIVEN) -> LensResult:
    """The iterative jet lens: ``J^k Dec(h_l)(h_L)`` for each chosen row, each one standalone.

    Args:
      model: a :class:`~jetjax.Model`.
      ids: token ids ``[T]`` or a batch ``[B, T]``.
      rows: row indices (default: all rows; see the module docstring for what each row is).
      layers: the old name of ``rows`` (deprecated).
      order: the jet order ``k`` (0 is the logit lens).
      granularity: ``"block"`` (rows ``h_0..h_L``) or ``"branch"`` (adds the mid-block streams).
      compute_dtype: the precision of the rows' unembedding, ``"float32"`` (default) or
        ``"bfloat16"`` (bfloat16 operands, float32 accumulation; see :mod:`jetjax._internal.precision`). The
        model's logits the metrics compare against stay float32. Measured on a GPT-2-small-shaped
        model (``benchmarks/results/lenses.md``): a cell's top-10 tokens overlap float32's by
        99.4-99.6% on average; faster only where the hardware multiplies bfloat16 natively.

    Returns:
      a :class:`LensResult` with ``logits`` ``[n_rows, ..., T, V]``.

    Example:
      >>> import jetjax.lenses.lens as lenses
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> lens = lenses.iterative_jet_lens(model, [1, 2, 3], order=1)
      >>> lens.rows, lens.logits.shape, lens.metrics["cosine"].shape
      (('h0', 'h1', 'h2'), (3, 3, 11), (3, 3))
      >>> bool(abs(lens.metrics["cosine"][-1] - 1).max() < 1e-5)   # the last row is the model
      True
    """
    rows = _rows_argument("iterative_jet_lens", rows, layers)
    ids, rows, order, compute_dtype = _prepare(model, ids, rows, order, granularity, compute_dtype)
    last = _n_rows(model, granularity) - 1
    last_pos = rows.index(last) if last in rows else None
    logits, model_logits = _core(model, "iterative", order, granularity, last_pos, compute_dtype)(
        model.params, ids, jnp.asarray(rows, jnp.int32))
    labels = row_labels(model, granularity)
    return LensResult("logit" if order == 0 else "iterative", order, granularity,
                      tuple(labels[r] for r in rows), rows, np.asarray(ids), logits, model_logits,
                      compute_dtype=compute_dtype, vocab=_vocab(model))


def logit_lens(model: Model, ids, rows=None, *, granularity: str = "block", compute_dtype: str = "float32",
               layers=_NOT_GIVEN) -> LensResult:
    """The logit lens, ``Dec(h_l)`` per row: the iterative jet lens of order 0.

    The final norm is recomputed at each stream (not borrowed from the last layer).
    ``compute_dtype`` as in :func:`iterative_jet_lens`.

    Example:
      >>> import jetjax.lenses.lens as lenses
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> lens = lenses.logit_lens(model, [[1, 2, 3], [4, 5, 6]], rows=[0, -1])
      >>> lens.kind, lens.rows, lens.logits.shape
      ('logit', ('h0', 'h2'), (2, 2, 3, 11))
    """
    rows = _rows_argument("logit_lens", rows, layers)
    return iterative_jet_lens(model, ids, rows, order=0, granularity=granularity, compute_dtype=compute_dtype)


def joint_jet_lens(model: Model, ids, rows=None, order: int = 1, *, granularity: str = "block",
                   weights=None, fit_steps: int = 0, learning_rate: float = 0.05,
                   compute_dtype: str = "float32", layers=_NOT_GIVEN) -> LensResult:
    """The joint jet lens: one decoder expansion at ``h_L`` centred at each component's contribution.

    For chosen rows ``r_0 < r_1 < ...`` (default: all) the centres are ``c_0 = stream[r_0]`` and
    ``c_i = stream[r_i] − stream[r_{i-1}]``: with all rows, the embedding and each block's (or,
    with ``granularity="branch"``, each attention's and MLP's) own contribution, which sum to
    ``h_L``. The lens is ``combined = Σ_i w_i J^k Dec(c_i)(h_L)`` and
    ``remainder = Dec(h_L) − combined`` (exact for any weights).

    Args:
      model, ids, order, granularity: as in :func:`iterative_jet_lens`.
      rows: increasing row indices whose streams delimit the centres.
      layers: the old name of ``rows`` (deprecated).
      weights: ``None`` (uniform ``1/n``, or fitted when ``fit_steps > 0``), or explicit weights
        of shape ``[n]`` or ``[n, ..., T]`` (used as given).
      fit_steps: Adam steps fitting per-token weights on the simplex (softmax parametrisation,
        starting from uniform) to minimise the squared remainder norm in logit space, i.e. under
        the ``UᵀU`` metric after the final norm, as in the paper.
      learning_rate: Adam's step size for the fit.
      compute_dtype: the precision of the centres' unembedding, as in :func:`iterative_jet_lens`.

    Returns:
      a :class:`LensResult` with per-centre ``logits`` ``[n, ..., T, V]`` (unweighted jets),
      ``combined``, ``weights`` ``[n, ..., T]``, ``remainder`` and, when fitted, ``fit_losses``.

    Example:
      >>> import jetjax.lenses.lens as lenses
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> lens = lenses.joint_jet_lens(model, [1, 2, 3], order=1, fit_steps=20)
      >>> lens.rows, lens.weights.shape, lens.combined.shape
      (('emb', 'block0', 'block1'), (3, 3), (3, 11))
      >>> bool(lens.fit_losses[-1] < lens.fit_losses[0])
      True
    """
    rows = _rows_argument("joint_jet_lens", rows, layers)
    ids, rows, order, compute_dtype = _prepare(model, ids, rows, order, granularity, compute_dtype)
    if any(b <= a for a, b in zip(rows, rows[1:])):
        raise ValueError(f"joint_jet_lens needs strictly increasing rows (after resolving negative "
                         f"indices), got {list(rows)}")
    fit_steps = check_nonnegative_int("fit_steps", fit_steps)
    if fit_steps and weights is not None:
        raise ValueError("pass either explicit weights or fit_steps > 0 (fitting starts from uniform), not both")
    if not _positive_number(learning_rate):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}")

    terms, model_logits = _core(model, "joint", order, granularity, compute_dtype=compute_dtype)(
        model.params, ids, jnp.asarray(rows, jnp.int32))
    n, token_shape = len(rows), tuple(ids.shape)
    losses = None
    if weights is None and fit_steps:
        w, losses = _fit_simplex_weights(terms, model_logits, int(fit_steps), jnp.asarray(learning_rate, terms.dtype))
        losses = np.asarray(losses)
    elif weights is None:
        w = jnp.full((n,) + token_shape, 1.0 / n, terms.dtype)
    else:
        w = _check_weights(weights, n, token_shape, terms.dtype)
    return LensResult("joint", order, granularity, _joint_labels(model, rows, granularity), rows, np.asarray(ids),
                      terms, model_logits, combined=_combine(w, terms), weights=w, fit_losses=losses,
                      compute_dtype=compute_dtype, vocab=_vocab(model))


def _positive_number(x) -> bool:
    return (not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))
            and bool(np.isfinite(x)) and x > 0)


def _check_weights(weights, n: int, token_shape: tuple[int, ...], dtype) -> jax.Array:
    try:
        w = np.asarray(weights)
    except ValueError:
        raise ValueError(f"weights must be a rectangular array of shape ({n},) or {(n,) + token_shape}, got a "
                         "ragged nesting") from None
    if w.dtype == object or not np.issubdtype(w.dtype, np.number):
        raise TypeError(f"weights must be numbers, got dtype {w.dtype}")
    if w.shape == (n,):
        w = w.reshape((n,) + (1,) * len(token_shape))
    elif w.shape != (n,) + token_shape:
        raise ValueError(f"weights must have shape ({n},) or {(n,) + token_shape} (one per centre, "
                         f"optionally per token), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    return jnp.broadcast_to(jnp.asarray(w, dtype), (n,) + token_shape)
