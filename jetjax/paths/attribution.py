"""Exhaustive paths at scale: chunked decoding with on-the-fly reduction, sharding, attribution.

:func:`jetjax.expand_all` returns every path's logits, ``P × T × V`` numbers: fine for a 3-layer
toy, out of reach for GPT-2-small (4096 block paths × 16 tokens × 50257 ≈ 13 GB). Here the paths'
residual vectors (``P × T × d``, from :func:`jetjax.path_streams`) are decoded chunk by chunk,
each chunk reduced on device to what is reported (a score and a norm per path, the running sum
that gives the remainder), and only the ``top_k`` paths' logits are kept. The chunk axis can be
spread over the devices of a mesh (:mod:`jetjax._internal.parallel`).
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jetjax._internal.compiled import per_model
from jetjax._internal.checks import (check_direction, check_nonnegative_int, check_path_memory, check_position,
                                     check_positive_int, count_nonfinite, json_safe)
from jetjax._internal.results import ResultIO, check_format, dataframe, decode_array, encode_array
from jetjax.paths.expand import count_paths, decoder_terms, final_norm_jets, path_streams
from jetjax.paths.labels import DEC, extend_label
from jetjax.models.model import Model
from jetjax._internal.parallel import constrain_leading, fetch, mesh_axis, pad_leading, shard_leading
from jetjax._internal.precision import AFFINE_TOL, affine_read, check_compute_dtype, unembedding_operands
from jetjax.paths.results import (EXPLAINED_WARNING, PathAttribution, attribution_from_scores, cancellation,
                                  explained_warning, one_sequence, remainder_ratio, token_id)
from jetjax.paths.frozen import frozen_path_attribution
from jetjax.paths.search import top_paths
from jetjax.paths.spec import UNSET, PathSpec, resolve_spec

__all__ = ["remainder_ratio", "cancellation", "PathScores", "reduce_paths", "PathAttribution", "path_attribution",
           "METHODS", "SEARCH_K", "method_settings", "EXPLAINED_WARNING", "token_id"]


def _cached(model: Model, key, build: Callable):
    return per_model(model, "paths", key, build)


def _norm_score(logits, aux):
    del aux
    return jnp.sqrt(jnp.sum(jnp.square(logits)))


class _TopOfScores:
    """What ``PathScores.top`` gives: called, ``top(n)`` (the best paths); used as an array, the
    deprecated spelling of :attr:`PathScores.top_indices` (with a ``DeprecationWarning``), for one release."""

    def __init__(self, res: "PathScores"):
        self._res = res

    def __call__(self, n: int | None = None) -> list[tuple[str, float]]:
        return self._res._ranked(n)

    def _indices(self) -> np.ndarray:
        warnings.warn("PathScores.top as an array of path indices is deprecated: use PathScores.top_indices "
                      "(top(n) lists the best paths, as on every result type)", DeprecationWarning, stacklevel=3)
        return self._res.top_indices

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._indices(), dtype)

    def __iter__(self):
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())

    def __getitem__(self, i):
        return self._indices()[i]


class _TopDescriptor:
    def __get__(self, obj, cls=None):
        return PathScores._ranked if obj is None else _TopOfScores(obj)


@dataclasses.dataclass(frozen=True)
class PathScores(ResultIO):
    """What :func:`reduce_paths` keeps of every path.

    Attributes:
      labels: every path's label, ``P`` of them, in the order of :func:`jetjax.expand_all`.
      scores: ``[P]``, the score of each path's logits (default: their L2 norm).
      norms: ``[P]``, the L2 norm of each path's logits (over the decoded positions).
      top_indices: indices of the ``top_k`` highest-scoring paths, best first (``top`` as an array is
        its old, deprecated name).
      top_logits: ``[top_k, ..., V]`` (with ``position``) or ``[top_k, ..., T, V]``: their logits.
      remainder: logits − Σ all paths' logits (same shape as one path's logits).
      logits: the model's logits at the decoded positions.
      order, granularity, position: the settings used.

    Measures of faithfulness (properties): :attr:`remainder_ratio` (``‖remainder‖ / ‖logits‖``) and
    :attr:`cancellation` (``Σ_i ‖path_i‖ / ‖Σ_i path_i‖``), both over the decoded logits.
    :meth:`top` ranks the paths by ``scores`` (``ranked`` is its old, deprecated name); ``to_json`` /
    ``load`` write and read every array exactly.
    """

    FORMAT = "jetjax.path_scores"

    labels: tuple[str, ...]
    scores: np.ndarray
    norms: np.ndarray
    top_indices: np.ndarray
    top_logits: np.ndarray
    remainder: np.ndarray
    logits: np.ndarray
    order: int
    granularity: str
    position: int | None

    top = _TopDescriptor()
    """``top(n=None)``: ``(label, score)`` of the ``n`` best paths (all with ``None``), best first."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def remainder_ratio(self) -> float:
        """``‖remainder‖ / ‖model logits‖`` (L2 over the decoded logits): 0 when the paths add up to the
        model exactly; above 0.5 the paths explain less than half of it (see :func:`remainder_ratio`)."""
        return remainder_ratio(np.linalg.norm(self.remainder), np.linalg.norm(self.logits))

    @property
    def cancellation(self) -> float:
        """``Σ_i ‖path_i logits‖ / ‖Σ_i path_i logits‖``: 1 when the paths' logit vectors all point the
        same way, large when they mostly cancel each other (see :func:`cancellation`)."""
        net = float(np.linalg.norm(np.asarray(self.logits, np.float64) - np.asarray(self.remainder, np.float64)))
        size = float(np.sum(self.norms))
        return (1.0 if size == 0 else float("inf")) if net == 0 else size / net

    def _ranked(self, n: int | None = None) -> list[tuple[str, float]]:
        """``(label, score)`` of the ``n`` best paths (all with ``None``), best first: ``PathScores.top(n)``."""
        n = check_nonnegative_int("n", n, optional=True)
        idx = np.argsort(-self.scores, kind="stable")[:n]
        return [(self.labels[i], float(self.scores[i])) for i in idx]

    def ranked(self, n: int | None = None) -> list[tuple[str, float]]:
        """Deprecated name of :meth:`top` (one release)."""
        warnings.warn("PathScores.ranked is deprecated: use PathScores.top (the same list)", DeprecationWarning,
                      stacklevel=2)
        return self._ranked(n)

    def table(self, n: int = 10) -> str:
        """A plain-text table of the ``n`` best paths (score, norm) under a header with the measures."""
        where = "all positions" if self.position is None else f"position {self.position}"
        lines = [f"{len(self)} paths (order {self.order}, {self.granularity}, {where}); ‖remainder‖/‖logits‖ "
                 f"{self.remainder_ratio:.3g}, cancellation {self.cancellation:.3g}",
                 f"{'score':>10} {'norm':>10}  path"]
        index = {lab: i for i, lab in enumerate(self.labels)}
        lines += [f"{score:>+10.4f} {float(self.norms[index[lab]]):>10.4f}  {lab}" for lab, score in self._ranked(n)]
        if explained_warning(self.remainder_ratio):
            lines.append(explained_warning(self.remainder_ratio))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        arrays = ("scores", "norms", "top_indices", "top_logits", "remainder", "logits")
        return {"format": self.FORMAT, "version": 1, "labels": list(self.labels), "order": self.order,
                "granularity": self.granularity, "position": self.position,
                "arrays": {k: encode_array(getattr(self, k)) for k in arrays}}

    @classmethod
    def from_dict(cls, data: dict) -> "PathScores":
        data = check_format(data, cls.FORMAT, "PathScores", required=("labels", "order", "granularity", "arrays"))
        a = {k: decode_array(v) for k, v in data["arrays"].items()}
        return cls(tuple(data["labels"]), a["scores"], a["norms"], a["top_indices"], a["top_logits"],
                   a["remainder"], a["logits"], data["order"], data["granularity"], data.get("position"))

    def to_dataframe(self):
        """One row per path: ``label, score, norm`` (needs pandas)."""
        return dataframe({"label": list(self.labels), "score": np.asarray(self.scores), "norm": np.asarray(self.norms)})


def _path_stage(model: Model, spec: PathSpec, mesh):
    """``(jitted (params, ids, streams) -> path terms, labels function)`` for these settings."""
    constrain = constrain_leading(mesh)
    seen: list[tuple[str, ...]] = []

    def run(params, ids, streams):
        paths = path_streams(model, ids, spec=spec, streams=streams, params=params, constrain=constrain,
                             max_paths=None)   # reduce_paths counted them against its own max_paths
        seen.append(paths.labels)  # labels are static: record them while tracing
        return paths.terms

    compiled = jax.jit(run)

    def labels(params, ids, streams) -> tuple[str, ...]:
        if not seen:
            jax.eval_shape(run, params, ids, streams)
        return seen[-1]

    return compiled, labels


def _decode_stage(model: Model, order: int, score: Callable, mesh):
    """Jitted ``(params, centres chunk, mask, variate, weight, aux, unembedding) -> (scores, norms,
    Σ masked logits)``; ``unembedding`` is ``None`` or ``(W, b)`` in a compute dtype."""

    def chunk(params, centres, mask, variate, weight, aux, unembedding):
        logits = decoder_terms(model, centres, variate, order, weight, params=params, unembedding=unembedding)
        scores = jax.vmap(score, in_axes=(0, None))(logits, aux)
        norms = jnp.sqrt(jnp.sum(jnp.square(logits), axis=tuple(range(1, logits.ndim))))
        keep = mask.reshape((-1,) + (1,) * (logits.ndim - 1))
        return scores, norms, jnp.sum(jnp.where(keep, logits, 0.0), axis=0)

    def run(params, centres, mask, variate, weight, aux, unembedding):
        sharded = shard_leading(lambda c, m, p, v, w, a, u: chunk(p, c, m, v, w, a, u), mesh, n_sharded=2,
                                reduced=(False, False, True))
        return sharded(centres, mask, params, variate, weight, aux, unembedding)

    return jax.jit(run)


def _decode_logits(model: Model, order: int):
    def run(params, centres, variate, weight, unembedding):
        return decoder_terms(model, centres, variate, order, weight, params=params, unembedding=unembedding)

    return jax.jit(run)


def _affine_stage(model: Model, order: int, mesh):
    """Jitted chunk step when the unembedding is affine, ``logits = n W + b``.

    A path's logit norm then needs only its normed vector ``n``:
    ``‖n W + b‖² = n (WᵀW) nᵀ + 2 n·(W b) + b·b`` (a ``d × d`` Gram matrix instead of a ``d × V``
    product), a linear score ``logits·u`` is ``n·(W u) + b·u``, and the sum of the paths' logits
    is ``(Σ n) W + P b``: the chunk returns ``Σ n``.
    """

    def chunk(params, centres, mask, variate, weight, gram, wb, bb, wu, bu):
        n = weight * final_norm_jets(model, centres, variate, order, params=params)
        axes = tuple(range(1, n.ndim))  # everything but the path axis
        sq = jnp.einsum("p...i,ij,p...j->p...", n, gram, n) + 2.0 * (n @ wb) + bb
        norms = jnp.sqrt(jnp.maximum(jnp.sum(sq, axis=axes[:-1]) if n.ndim > 2 else sq, 0.0))
        lin = n @ wu + bu
        scores = jnp.sum(lin, axis=axes[:-1]) if n.ndim > 2 else lin
        keep = mask.reshape((-1,) + (1,) * (n.ndim - 1))
        return scores, norms, jnp.sum(jnp.where(keep, n, 0.0), axis=0)

    def run(params, centres, mask, variate, weight, gram, wb, bb, wu, bu):
        sharded = shard_leading(lambda c, m, *rest: chunk(rest[0], c, m, *rest[1:]), mesh, n_sharded=2,
                                reduced=(False, False, True))
        return sharded(centres, mask, params, variate, weight, gram, wb, bb, wu, bu)

    return jax.jit(run)


def _affine_unembedding(model: Model, params, d: int, dtype):
    """``(W [d, V], b [V], W Wᵀ, W b, b·b)`` with ``unembed(x) = x W + b``; ``None`` if not affine."""
    w, b, err = affine_read(model, params, dtype)
    if err > AFFINE_TOL:
        return None
    return w, b, w @ w.T, w @ b, b @ b


def _check_score(score, vocab_size: int) -> None:
    """``score`` is None, a callable or a finite direction of shape ``[V]``: refused by name otherwise."""
    if callable(score):
        try:
            inspect.signature(score).bind(None, None)
        except TypeError:
            raise TypeError(f"a callable score is called as score(logits, score_aux) and must return a scalar; "
                            f"{getattr(score, '__name__', 'score')}{inspect.signature(score)} does not take two "
                            "arguments") from None
        except ValueError:
            pass
        return
    if score is None:
        return
    accepted = ("score must be None (the L2 norm of each path's logits), a direction in logit space "
                f"(an array of shape ({vocab_size},)) or a callable score(logits, score_aux)")
    if isinstance(score, (str, bytes)):
        raise TypeError(f"{accepted}; got the string {score!r}")
    try:
        arr = np.asarray(score, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{accepted}; got {type(score).__name__} {score!r:.80}") from None
    if arr.shape != (vocab_size,):
        raise ValueError(f"{accepted}; got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"the score direction holds {count_nonfinite(arr)} NaN/inf value(s); it must be finite")
    check_direction(arr, vocab_size)   # and usable in float32


def reduce_paths(model: Model, ids, *, order: int = UNSET, granularity: str = UNSET, weights: str = UNSET,
                 score: Callable | None = None, score_aux: Any = None, position: int | None = None,
                 top_k: int = 10, chunk_size: int = 256, mesh=None, include: Sequence[str] | None = UNSET,
                 exclude: Sequence[str] = UNSET, max_length: int | None = UNSET, attention_free: bool = UNSET,
                 max_paths: int = 1 << 20, progress: bool | None = None,
                 spec: PathSpec | None = None, compute_dtype: str = "float32") -> PathScores:
    """Every path of :func:`jetjax.expand_all`, decoded in chunks and reduced on the fly.

    Memory holds the paths' residual vectors (``P × T × d``), one chunk of logits
    (``chunk_size × T × V``) and the ``top_k`` paths' logits, never ``P × T × V``.

    Args:
      model, ids, order, granularity, weights, include, exclude, max_length, attention_free, spec:
        as in :func:`jetjax.expand_all` (the path settings, as keywords or one :class:`jetjax.PathSpec`).
      score: what paths are ranked by. ``None``: the L2 norm of their logits. An array ``[V]``: the
        direction ``u`` in logit space, score ``Σ_positions logits·u`` (e.g. ``e_t − e_f`` for a
        logit difference). A callable ``score(logits, score_aux) -> scalar`` of one path's logits
        (``[..., V]`` with ``position``, else ``[..., T, V]``). For ``None`` and directions, when
        the unembedding is affine (``x W + b``, as in every family we ship) no path is decoded to
        ``V`` logits: norms use the ``d × d`` Gram matrix ``WᵀW`` and directions ``W u``, which
        makes them ``V / d`` times cheaper than decoding; a callable needs every path's logits.
      score_aux: an array pytree passed to ``score`` (traced, so changing it does not recompile).
      position: decode only this token position (negative counts from the end); cheaper by ``T``.
      top_k: how many of the best paths keep their logits.
      chunk_size: paths decoded at once (rounded up to a multiple of the mesh size).
      mesh: a one-axis :class:`jax.sharding.Mesh` (:func:`jetjax._internal.parallel.path_mesh`): the path
        axis of both stages is spread over its devices.
      max_paths: refuse settings that would produce more paths than this (the count comes from
        :func:`jetjax.count_paths` before anything is computed).
      progress: show a progress bar over chunks (default: when there are more than 8 chunks).
      compute_dtype: the precision of every vocabulary-sized product, ``"float32"`` (default) or
        ``"bfloat16"`` (bfloat16 operands, float32 accumulation; :mod:`jetjax._internal.precision`): the
        paths' logits under a callable score, and the ``top_k`` paths' logits. Norm and direction
        scores on an affine unembedding never decode to ``V`` logits (see ``score``) and stay
        float32. The model's logits stay float32, so the remainder includes the rounding.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(n_layers=3)
      >>> res = jj.reduce_paths(model, [3, 1, 4], top_k=2, chunk_size=3)
      >>> len(res), res.top_logits.shape
      (8, (2, 3, 19))
      >>> full = jj.expand_all(model, [3, 1, 4])      # the same paths, all logits held
      >>> bool(jnp.allclose(res.remainder, full.remainder, atol=1e-4))
      True
    """
    # checked and normalised once: the cache keys do not depend on how the settings are spelled
    spec = resolve_spec(spec, order=order, granularity=granularity, weights=weights, include=include,
                        exclude=exclude, max_length=max_length, attention_free=attention_free).validate(model)
    ids = model.check_ids(ids)
    max_paths = check_positive_int("max_paths", max_paths)
    n_paths = count_paths(model.config.n_layers, parallel_residual=model.config.parallel_residual, spec=spec)
    if n_paths > max_paths:
        raise ValueError(f"these settings give {n_paths} paths, more than max_paths={max_paths}; narrow them "
                         "with max_length=, include=/exclude= or attention_free=True, or raise max_paths")
    if jax.default_backend() == "cpu":
        check_path_memory(n_paths, int(np.prod(ids.shape)), model.config.d_model,
                          "narrow the paths with max_length=, include=/exclude= or attention_free=True, or use "
                          "path_attribution(..., method='search'), which never holds them all")
    top_k = check_nonnegative_int("top_k", top_k)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    compute_dtype = check_compute_dtype(compute_dtype)
    position = check_position(position, ids.shape[-1], optional=True)
    mesh, _, n_dev = mesh_axis(mesh)
    _check_score(score, model.config.vocab_size)
    if callable(score):   # a scalar per path, checked on the shapes before anything is compiled
        v = model.config.vocab_size
        one = jax.ShapeDtypeStruct((ids.shape[:-1] + (v,)) if position is not None else (ids.shape + (v,)),
                                   jnp.float32)
        try:
            out = jax.eval_shape(score, one, score_aux)
        except Exception as err:  # whatever the user's function raised, said with its name
            raise TypeError(f"the score function failed on one path's logits of shape {one.shape}: "
                            f"{type(err).__name__}: {err}") from err
        if not (hasattr(out, "shape") and out.shape == ()):
            raise ValueError(f"a callable score must return a scalar per path; on logits of shape {one.shape} it "
                             f"returned {getattr(out, 'shape', type(out).__name__)}")

    params = model.params
    streams = model.residual_stream(ids, mid=True)
    paths_fn, labels_fn = _cached(model, ("paths", spec, mesh), lambda: _path_stage(model, spec, mesh))
    terms = paths_fn(params, ids, streams)
    labels = tuple(extend_label(lab, DEC) for lab in labels_fn(params, ids, streams))
    variate = streams[0][-1]
    logits = model.decode(variate)
    if position is not None:
        terms, variate, logits = terms[..., position, :], variate[..., position, :], logits[..., position, :]
    p = terms.shape[0]
    weight = jnp.asarray(1.0 if spec.weights == "unit" else 1.0 / p, variate.dtype)

    chunk = -(-min(chunk_size, p) // n_dev) * n_dev
    direction = None if score is None or callable(score) else jnp.asarray(score, variate.dtype)
    if direction is not None and direction.shape != (model.config.vocab_size,):
        raise ValueError(f"an array score is a direction in logit space of shape ({model.config.vocab_size},), "
                         f"got {tuple(direction.shape)}")
    # keyed on the params object too: W and its d x d Gram matrix are computed once per weights
    affine = None if callable(score) else _cached(
        model, ("affine", variate.dtype.name, id(params)),
        lambda: _affine_unembedding(model, params, variate.shape[-1], variate.dtype))
    if affine is not None:
        w, b, gram, wb, bb = affine
        u = jnp.zeros_like(b) if direction is None else direction
        extra = (gram, wb, bb, w @ u, b @ u)
        step = _cached(model, ("affine_step", spec.order, mesh), lambda: _affine_stage(model, spec.order, mesh))
    else:
        if callable(score):
            score_fn, aux = score, score_aux
        else:
            score_fn, aux = (_norm_score, None) if direction is None else (_direction_score, direction)
        extra = (aux, _operands(model, params, compute_dtype))
        step = _cached(model, ("decode", spec.order, score_fn, mesh),
                       lambda: _decode_stage(model, spec.order, score_fn, mesh))
    scores, norms = np.empty(p, np.float64), np.empty(p, np.float64)
    total = None
    starts = range(0, p, chunk)
    show = progress if progress is not None else len(starts) > 8
    for s in tqdm(starts, desc="paths", unit="chunk", disable=not show):
        block = terms[s:s + chunk]
        n = block.shape[0]
        mask = jnp.arange(chunk) < n
        sc, nr, part = step(params, pad_leading(block, chunk), mask, variate, weight, *extra)
        scores[s:s + n], norms[s:s + n] = fetch(sc)[:n], fetch(nr)[:n]
        total = part if total is None else total + part
    if affine is not None:  # Σ paths' logits = (Σ n) W + P b = unembed(Σ n) + (P − 1) b
        total = model.unembed(total, params=params) + (p - 1) * affine[1]
    if score is None:
        scores = norms.copy()

    k = min(top_k, p)
    top = np.argsort(-scores, kind="stable")[:k]
    top_logits = _cached(model, ("logits", spec.order), lambda: _decode_logits(model, spec.order))(
        params, terms[jnp.asarray(top, jnp.int32)], variate, weight,
        _operands(model, params, compute_dtype)) if k else np.zeros((0,) + logits.shape)
    return PathScores(labels, scores, norms, top, fetch(top_logits), fetch(logits - total),
                      np.asarray(logits), spec.order, spec.granularity, position)


def _operands(model: Model, params, compute_dtype: str):
    """``None`` (the model's own unembedding) for float32, else ``(W, b)`` in ``compute_dtype``."""
    return None if compute_dtype == "float32" else unembedding_operands(model, compute_dtype, params)


def _direction_score(logits, direction):
    return jnp.sum(logits * direction)


METHODS = ("auto", "jet", "frozen", "search")
AUTO_JET_BYTES = 1 << 30
"""``method="auto"`` enumerates jet paths only when their streams take at most this many bytes."""
"""How :func:`path_attribution` chooses and scores paths (see its docstring)."""

SEARCH_K = 20
"""How many paths ``method="search"`` lists when ``k`` is not given (the faithfulness study's setting)."""

_JET_ONLY = ("order", "weights", "include", "exclude", "attention_free", "spec")


def method_settings(method: str = "auto", *, order=None, max_length=None, k=None, beam=None) -> tuple[str, str | None]:
    """``(method, conflict)``: the method asked for, as far as the settings alone (no model) settle it,
    and the first setting that does not belong to it (``None`` when all do).

    ``k`` or ``beam`` with ``"auto"`` ask for ``"search"``; ``"auto"`` otherwise stays ``"auto"`` (the
    model decides, see :func:`path_attribution`). ``conflict`` is ``"order"`` (a jet order with
    ``"frozen"`` or ``"search"``: frozen paths take no jet), ``"max_length"`` (with ``"search"``: it
    searches paths of every length), ``"k"`` (``k`` or ``beam`` without ``"search"``) or ``"beam"`` (a
    beam smaller than ``k``, default :data:`SEARCH_K`). For callers that word the errors themselves
    (the ``jetjax attribute`` command) before any model is loaded; ``None`` means "not given".
    """
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}; accepted: {', '.join(METHODS)}")
    searching = k is not None or beam is not None
    if method == "auto" and searching:
        method = "search"
    if method in ("frozen", "search") and order is not None:
        return method, "order"
    if method == "search" and max_length is not None:
        return method, "max_length"
    if method != "search" and searching:
        return method, "k"
    if beam is not None and beam < (SEARCH_K if k is None else k):
        return method, "beam"
    return method, None


def path_attribution(model: Model, ids, target, foil=None, position: int = -1, order: int = UNSET, *,
                     method: str = "auto", k: int | None = None, beam: int | None = None,
                     granularity: str = UNSET, weights: str = UNSET, chunk_size: int = 256, mesh=None,
                     include: Sequence[str] | None = UNSET, exclude: Sequence[str] = UNSET,
                     max_length: int | None = UNSET, attention_free: bool = UNSET,
                     max_paths: int = 1 << 20, progress: bool | None = None,
                     spec: PathSpec | None = None) -> PathAttribution:
    """Which paths push ``logit(target) − logit(foil)`` at ``position``, and what they leave out.

    Three methods, chosen by ``method``:

    * ``"jet"`` — the paper's paths (Algorithm 2): every path of :func:`jetjax.expand_all` with the
      same ``order``, ``granularity``, ``weights`` and filters, each scored at ``position`` through
      ``W (e_target − e_foil)`` when the unembedding is affine. Each path applies the jets of its
      components to its own vector, so on deep pre-norm models the paths need not add up to the
      model (read ``remainder_ratio``); the remainder is exact.
    * ``"frozen"`` — every frozen path (:func:`jetjax.frozen_path_attribution`, up to ``max_length``
      components): all nonlinear factors held at the forward pass, so the paths add up exactly.
    * ``"search"`` — the ``k`` frozen paths of largest ``|score|`` found by :func:`jetjax.top_paths`
      (beam ``beam``, default 256) among all ``2^L``–``4^L`` frozen paths; the remainder is the sum
      of the other paths it scored (``unlisted``) plus the exact sum of those it never scored
      (``unexplored``), and ``search`` holds the search's own report (certificate included).
    * ``"auto"`` (default) — ``"jet"`` when any jet setting (``order``, ``weights``, filters,
      ``max_length``, ``spec``) is given or when the model has at most ``max_paths`` paths at the
      granularity whose streams take at most :data:`AUTO_JET_BYTES` (1 GiB; so every result jetjax
      gave before stays the same); otherwise (a deep model: SmolLM2's 30 layers have ``2^30`` block
      paths, Gemma-3-270M's 18 have ``2^18``, 4 GiB of streams on a 6-token prompt) ``"search"`` at ``granularity="branch"``,
      ``k=20``, beam 256. That is the setting that explained SmolLM2 best in the faithfulness study
      (``docs/faithfulness.md``: median ``|unexplored| / |total|`` 0.60 on the prompts it was chosen
      on, 0.71 on held-out prompts; every jet setting left remainders 1 to 1000 times the total).

    **What one path's number means under the default on a deep model** (``method="search"``): hold
    every nonlinear factor of the model at its value in the forward pass on ``ids`` (each norm's
    scale per token, each attention pattern, each MLP neuron's ``act(z)/z``, each gate); the model is
    then affine, and the score of ``emb>mlp0>attn23>dec`` is the part of ``logit(target) −
    logit(foil)`` that the token embeddings carry through MLP 0's linear part, then attention 23's
    (its pattern fixed), then the frozen final norm and the unembedding. ``bias>…`` paths start at a
    component's constant. The scores of all frozen paths add up to the model's number; the listed
    ``k`` are the largest ones found, and typically carry a small part of it — the table says how much
    sits in the other scored paths and how much (exactly) in the paths never scored.

    Args:
      model: the model; ``ids``: one sequence of token ids ``[T]`` (or a string to tokenize).
      target, foil: token ids or one-token strings; without ``foil`` the target's logit is attributed.
      position: the predicting position (default: the last token).
      method: one of :data:`METHODS` (above).
      k, beam: for ``"search"``: how many paths to list (default 20) and the beam (default 256).
      order, weights, filters, spec, chunk_size, mesh, max_paths, progress: for ``"jet"``, as in
        :func:`reduce_paths` (``max_length`` and ``max_paths`` also for ``"frozen"``; ``mesh`` also for
        ``"search"``).
      granularity: ``"block"`` or ``"branch"`` (default ``"block"`` for ``"jet"``, ``"branch"`` for
        ``"frozen"`` and ``"search"``).

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model()
      >>> att = jj.path_attribution(model, [3, 1, 4], target=7, foil=2)      # 2 layers: "auto" is "jet"
      >>> att.method, len(att.labels), sorted(att.components), att.top(1)[0][0] in att.labels
      ('jet', 4, ['block0', 'block1'], True)
      >>> s = jj.path_attribution(model, [3, 1, 4], target=7, foil=2, method="search", k=3)
      >>> s.method, len(s.labels), bool(abs(s.total - s.scores.sum() - s.unlisted - s.unexplored) < 1e-4)
      ('search', 3, True)
    """
    if method not in METHODS:
        raise ValueError(f"unknown method={method!r}; accepted: {', '.join(METHODS)}")
    given = {"order": order, "weights": weights, "include": include, "exclude": exclude,
             "attention_free": attention_free, "spec": spec}
    jet_given = [name for name, value in given.items() if value is not UNSET and not (name == "spec" and value is None)]
    if method == "auto":
        if jet_given or max_length is not UNSET:
            method = "jet"
        else:
            c = model.config
            n = count_paths(c.n_layers, granularity, parallel_residual=c.parallel_residual)
            # enumerate only what fits comfortably in memory (Gemma-3-270M's 2^18 block paths do not)
            n_tokens = len(model.tokenize(ids)) if isinstance(ids, str) else int(np.prod(np.shape(ids)))
            fits = n * n_tokens * c.d_model * 4 <= AUTO_JET_BYTES
            method = "jet" if n <= max_paths and fits else "search"
    if method != "search" and (k is not None or beam is not None):
        raise ValueError(f"k= and beam= belong to method='search' (method={method!r} lists every path of its "
                         "settings)")
    if method in ("frozen", "search"):
        if jet_given:
            raise ValueError(f"{', '.join(f'{n}=' for n in jet_given)} set(s) the jet paths of method='jet'; "
                             f"method={method!r} has frozen paths (no jet order, weights or filters)")
        gran = "branch" if granularity is UNSET else granularity
        if method == "frozen":
            return frozen_path_attribution(model, ids, target, foil, position, granularity=gran,
                                           max_length=None if max_length is UNSET else max_length,
                                           max_paths=max_paths)
        if max_length is not UNSET:
            raise ValueError("max_length= does not apply to method='search' (it searches paths of every length); "
                             "use method='frozen' with max_length=")
        k = SEARCH_K if k is None else k
        return _search_attribution(model, ids, target, foil, position, gran, k, beam, mesh)
    return _jet_attribution(model, ids, target, foil, position, order, granularity=granularity, weights=weights,
                            chunk_size=chunk_size, mesh=mesh, include=include, exclude=exclude,
                            max_length=max_length, attention_free=attention_free, max_paths=max_paths,
                            progress=progress, spec=spec)


def _search_attribution(model: Model, ids, target, foil, position, granularity, k, beam, mesh) -> PathAttribution:
    res = top_paths(model, ids, k, target=target, foil=foil, position=position, granularity=granularity,
                    beam=beam, mesh=mesh)
    target_id, target_str = token_id(model, target, "target")
    foil_id, foil_str = (None, None) if foil is None else token_id(model, foil, "foil")
    return attribution_from_scores(res.labels, np.asarray(res.scores, np.float64), res.total, target=target_id,
                                   foil=foil_id, position=res.position, order=0, granularity=granularity,
                                   target_str=target_str, foil_str=foil_str, semantics="frozen", method="search",
                                   search=res)


def _jet_attribution(model: Model, ids, target, foil=None, position: int = -1, order: int = UNSET, *,
                     granularity: str = UNSET, weights: str = UNSET, chunk_size: int = 256, mesh=None,
                     include: Sequence[str] | None = UNSET, exclude: Sequence[str] = UNSET,
                     max_length: int | None = UNSET, attention_free: bool = UNSET,
                     max_paths: int = 1 << 20, progress: bool | None = None,
                     spec: PathSpec | None = None) -> PathAttribution:
    spec = resolve_spec(spec, order=order, granularity=granularity, weights=weights, include=include,
                        exclude=exclude, max_length=max_length, attention_free=attention_free).validate(model)
    ids = one_sequence(model, ids, "path_attribution")
    target, target_str = token_id(model, target, "target")
    foil, foil_str = (None, None) if foil is None else token_id(model, foil, "foil")
    if foil == target:
        raise ValueError(f"foil and target are the same token ({target}); logit(target) − logit(foil) is 0 for "
                         "every path: pick another foil, or none to attribute the target's logit")
    direction = np.zeros(model.config.vocab_size, np.float32)
    direction[target] += 1.0
    if foil is not None:
        direction[foil] -= 1.0
    res = reduce_paths(model, ids, spec=spec, score=direction, position=position, top_k=0, chunk_size=chunk_size,
                       mesh=mesh, max_paths=max_paths, progress=progress)
    # The model's own total by indexing: a dot with a one-hot vector turns one inf logit anywhere
    # in the vocabulary into NaN (inf × 0).
    logits = np.asarray(res.logits, np.float64)
    total = float(logits[target] - (logits[foil] if foil is not None else 0.0))
    bad = count_nonfinite(res.scores) + (0 if np.isfinite(total) else 1)
    if bad:
        warnings.warn(f"path_attribution: {count_nonfinite(res.scores)} of {len(res.scores)} path scores and "
                      f"{'the' if not np.isfinite(total) else 'not the'} model total are NaN or inf: the "
                      "weights or the jet overflowed (check the model's parameters, or lower the order)",
                      RuntimeWarning, stacklevel=2)
    return attribution_from_scores(res.labels, res.scores, total, target=target, foil=foil, position=res.position,
                                   order=res.order, granularity=spec.granularity, target_str=target_str,
                                   foil_str=foil_str)
