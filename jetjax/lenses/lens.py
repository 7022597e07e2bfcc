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

All of them return a :class:`LensResult` (logits plus faithfulness metrics, top-k tokens, JSON).
Rows are batched with ``vmap`` inside one jitted function per (model, lens kind, order,
granularity) that takes the parameters as an argument, so repeated calls with the same shapes do
not recompile. ``ids`` may be one prompt ``[T]`` or a batch ``[B, T]``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jetjax._internal.compiled import TRACE_COUNTS, module_jit, per_model
from jetjax._internal.checks import check_nonnegative_int, check_order, count_nonfinite, json_safe
from jetjax.paths.expand import expand_decoder
from jetjax.paths.labels import EMB, check_granularity, model_components
from jetjax.models.model import Model
from jetjax._internal.precision import check_compute_dtype, unembedding_operands

__all__ = ["LensResult", "logit_lens", "iterative_jet_lens", "joint_jet_lens", "METRICS", "row_labels", "token_texts"]

METRICS = ("cosine", "kl", "top1", "rank", "remainder_norm", "entropy")

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


# ---------------------------------------------------------------------------------------------
# Metrics

@module_jit
@jax.jit
def _faithfulness(lens, target) -> dict[str, jax.Array]:
    """Per-position metrics of ``lens`` logits against ``target`` logits (broadcast, last axis V)."""
    log_p = jax.nn.log_softmax(target, axis=-1)
    log_q = jax.nn.log_softmax(lens, axis=-1)
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    cosine = jnp.sum(lens * target, -1) / (jnp.linalg.norm(lens, axis=-1) * jnp.linalg.norm(target, axis=-1))
    top = jnp.argmax(target, axis=-1)
    top_logit = jnp.take_along_axis(lens, jnp.broadcast_to(top, lens.shape[:-1])[..., None], axis=-1)
    return {
        "cosine": cosine,
        "kl": jnp.sum(p * (log_p - log_q), axis=-1),
        "top1": (jnp.argmax(lens, axis=-1) == top).astype(lens.dtype),
        "rank": jnp.sum(lens > top_logit, axis=-1),
        "remainder_norm": jnp.linalg.norm(target - lens, axis=-1),
        "entropy": -jnp.sum(q * log_q, axis=-1),
    }


def token_texts(model: Model | None, ids) -> list[str]:
    """One string per id; ``#id`` where the model has no tokenizer (random models)."""
    flat = np.asarray(ids).reshape(-1)
    if model is not None and model.tokenizer is not None:
        return model.token_strings(flat)
    return [f"#{int(i)}" for i in flat]


def _nested(flat: list, shape: tuple[int, ...]):
    """A flat list as nested lists of the given shape (for JSON)."""
    if not shape:
        return flat[0]
    step = len(flat) // shape[0]
    return [_nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@dataclasses.dataclass(eq=False)
class LensResult:
    """What a lens saw: per-row logits, the model's own logits, and faithfulness metrics.

    Attributes:
      kind: ``"logit"``, ``"iterative"`` or ``"joint"``.
      order: the jet order ``k``.
      granularity: ``"block"`` or ``"branch"``.
      rows: one label per row (``h3``, ``attn1``, or for the joint lens the centre's components).
      row_indices: the row indices used (see the module docstring); ``layers`` is its old name.
      ids: the input token ids, ``int32 [..., T]``.
      logits: ``[n_rows, ..., T, V]``. Iterative/logit lens: ``J^k Dec(h_l)(h_L)`` per row. Joint
        lens: the *unweighted* jet ``J^k Dec(c_i)(h_L)`` of each centre.
      model_logits: ``[..., T, V]``, ``Dec(h_L)``.
      combined: joint lens only: ``Σ_i weights[i] · logits[i]`` (``[..., T, V]``).
      weights: joint lens only: ``[n_rows, ..., T]``, on the simplex at every token.
      fit_losses: joint lens only: the fitting loss (mean over tokens of the squared logit-space
        remainder norm) before each Adam step and after the last, ``[fit_steps + 1]``.
      model: the model (for token strings); not serialised.
    """

    kind: str
    order: int
    granularity: str
    rows: tuple[str, ...]
    row_indices: tuple[int, ...]
    ids: np.ndarray
    logits: jax.Array
    model_logits: jax.Array
    combined: jax.Array | None = None
    weights: jax.Array | None = None
    fit_losses: np.ndarray | None = None
    model: Model | None = dataclasses.field(default=None, repr=False)
    compute_dtype: str = "float32"

    @property
    def layers(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`row_indices` (the indices pick rows, not layers)."""
        warnings.warn("LensResult.layers is deprecated: use row_indices", DeprecationWarning, stacklevel=2)
        return self.row_indices

    @property
    def remainder(self) -> jax.Array:
        """Joint lens: ``model_logits − combined``; otherwise per row ``model_logits − logits[r]``."""
        if self.combined is not None:
            return self.model_logits - self.combined
        return self.model_logits - self.logits

    @functools.cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        """Per row and position (``[n_rows, ..., T]``), each row's logits against the model's:

        * ``cosine``: cosine similarity of the logit vectors;
        * ``kl``: ``KL(model ‖ lens)`` of the softmax distributions, in nats;
        * ``top1``: 1 where the row's top token is the model's top token, else 0;
        * ``rank``: how many tokens the row scores strictly above the model's top token (0 = top);
        * ``remainder_norm``: ``‖model_logits − row logits‖₂``;
        * ``entropy``: entropy of the row's softmax distribution, in nats.

        A row whose logits hold NaN or ±inf (non-finite weights, or a high-order jet that
        overflowed) gets NaN metrics and a ``RuntimeWarning`` naming it; see :attr:`nonfinite_rows`.
        """
        metrics = {k: np.asarray(v) for k, v in _faithfulness(self.logits, self.model_logits).items()}
        bad = self._nonfinite_rows(metrics)
        model_bad = count_nonfinite(self.model_logits) > 0
        if bad or model_bad:
            where = [f"row(s) {', '.join(bad)}"] if bad else []
            where += ["the model's own logits"] if model_bad else []
            warnings.warn(f"{self.kind} lens (order {self.order}): non-finite logits in {' and '.join(where)}; "
                          "metrics and top tokens computed from them mean nothing (check the weights, or "
                          "lower the order)", RuntimeWarning, stacklevel=2)
        return metrics

    def _nonfinite_rows(self, metrics) -> tuple[str, ...]:
        # The entropy of a row's own softmax is NaN as soon as one of its logits is NaN or ±inf.
        per_row = [np.isfinite(metrics["entropy"][r]).all() for r in range(len(self.rows))]
        return tuple(label for label, ok in zip(self.rows, per_row) if not ok)

    @property
    def nonfinite_rows(self) -> tuple[str, ...]:
        """Labels of the rows whose logits hold NaN or ±inf at some position (empty when all are finite)."""
        return self._nonfinite_rows(self.metrics)

    @functools.cached_property
    def combined_metrics(self) -> dict[str, np.ndarray] | None:
        """Joint lens: the same metrics for the combined logits (``[..., T]``); else ``None``."""
        if self.combined is None:
            return None
        return {k: np.asarray(v) for k, v in _faithfulness(self.combined, self.model_logits).items()}

    def top_k(self, k: int = 5, *, which: str = "rows") -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` token ids and probabilities per cell: ``([..., k] int, [..., k] float)``.

        ``which``: ``"rows"`` (``[n_rows, ..., T, k]``), ``"model"`` or ``"combined"`` (``[..., T, k]``).
        """
        logits = {"rows": self.logits, "model": self.model_logits, "combined": self.combined}.get(which)
        if which not in ("rows", "model", "combined") or logits is None:
            raise ValueError(f"which must be 'rows', 'model' or (joint lens) 'combined', got {which!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= logits.shape[-1]:
            raise ValueError(f"k must be an int in 1..{logits.shape[-1]} (the vocabulary size), got {k!r}")
        probs, ids = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), int(k))
        return np.asarray(ids), np.asarray(probs)

    def top_tokens(self, k: int = 5, *, which: str = "rows") -> list:
        """Top-``k`` token strings per cell, nested like :meth:`top_k` (``#id`` without a tokenizer)."""
        ids, _ = self.top_k(k, which=which)
        return _nested(token_texts(self.model, ids), ids.shape)

    def input_tokens(self) -> list:
        """The input tokens as strings, nested like ``ids``."""
        return _nested(token_texts(self.model, self.ids), self.ids.shape)

    def to_json(self, path=None, *, top_k: int = 5) -> str:
        """Metrics, top-``k`` tokens and probabilities per cell, weights, as JSON (no full logits).

        Non-finite numbers are written as ``null`` and the rows holding them are listed under
        ``nonfinite_rows``, so the text is always valid JSON.

        Writes to ``path`` when given; returns the JSON text either way.
        """
        ids, probs = self.top_k(top_k)
        model_ids, model_probs = self.top_k(top_k, which="model")
        out: dict[str, Any] = {
            "kind": self.kind, "order": self.order, "granularity": self.granularity,
            "compute_dtype": self.compute_dtype,
            "rows": list(self.rows), "row_indices": list(self.row_indices),
            "nonfinite_rows": list(self.nonfinite_rows),
            "model_logits_finite": count_nonfinite(self.model_logits) == 0,
            "input_ids": self.ids.tolist(), "input_tokens": self.input_tokens(),
            "metrics": {k: v.tolist() for k, v in self.metrics.items()},
            "top_k": {"ids": ids.tolist(), "tokens": _nested(token_texts(self.model, ids), ids.shape),
                      "probs": probs.tolist()},
            "model_top_k": {"ids": model_ids.tolist(),
                            "tokens": _nested(token_texts(self.model, model_ids), model_ids.shape),
                            "probs": model_probs.tolist()},
        }
        if self.combined is not None:
            out["weights"] = np.asarray(self.weights).tolist()
            out["combined_metrics"] = {k: v.tolist() for k, v in self.combined_metrics.items()}
            out["fit_losses"] = None if self.fit_losses is None else self.fit_losses.tolist()
        text = json.dumps(json_safe(out), allow_nan=False)   # NaN / inf become null: valid JSON
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text


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
                      model=model, compute_dtype=compute_dtype)


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
                      model=model, compute_dtype=compute_dtype)


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
