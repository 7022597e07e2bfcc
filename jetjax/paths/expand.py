"""Algorithm 1 of the paper: expand a function, a residual branch or the decoder at a set of centres.

``expand(fn, centers, variate, order, weights)`` rewrites ``fn(variate)`` as a weighted sum of jets,
one per centre, plus an exact remainder::

    fn(variate) = Σ_c w_c · J^k fn(centers[c])(variate) + remainder

On a model, :func:`expand_block` applies it to one residual branch γ of a layer (producing γ terms
``w_i J^k γ(x_i)(h)`` and identity terms ``w_i J^k id(x_i)(h)``, with ``h`` the true stream that
branch reads), and :func:`expand_decoder` to ``Dec = unembed ∘ final_norm`` at ``h_L``. Terms of one
expansion are valid centres of the next, and labels compose (``emb>attn0>mlp2>dec``).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.compiled import per_model
from jetjax._internal.checks import (MAX_PATHS, check_nonnegative_int, check_order, check_path_count,
                                     check_path_memory, check_positive_int)
from jetjax._internal.results import (ResultIO, check_format, dataframe, decode_array, decode_tree, encode_array,
                                      encode_tree)
from jetjax.jet import jet
from jetjax.paths.labels import DEC, EMB, Component, check_granularity, extend_label, label_length
from jetjax.paths.plan import component_steps
from jetjax.models.model import Model
from jetjax._internal.precision import unembed
from jetjax.paths.spec import UNSET, PathSpec, resolve_spec

__all__ = ["Expansion", "expand", "expand_block", "expand_decoder", "path_streams", "expand_all", "count_paths",
           "jets", "final_norm_jets", "decoder_terms"]

BRANCHES = ("block", "attn", "mlp", "branches")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Expansion(ResultIO):
    """Terms of an expansion, stacked along a leading term axis, with their labels and remainder.

    Attributes:
      terms: pytree whose leaves have a leading axis of length ``len(labels)``; ``terms[i]`` is the
        (weighted) term labelled ``labels[i]``.
      remainder: ``target − Σ_i terms[i]``, exact by construction.
      weights: ``[n_terms]``, the weight each term carries.
      labels: one path label per term, e.g. ``"emb>attn0>dec"``.
      order: the jet order used.
      total (property): ``Σ_i terms[i]``, so ``total + remainder`` is the expanded function's value.

    :meth:`top` ranks the terms by their L2 norm (over every leaf and position); :meth:`table`
    lists them. ``to_json`` / ``load`` write and read every array exactly (terms may be a pytree of
    dicts, lists and tuples of arrays); arrays come back as NumPy arrays.
    """

    FORMAT = "jetjax.expansion"

    terms: Any
    remainder: Any
    weights: jax.Array
    labels: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
    order: int = dataclasses.field(metadata=dict(static=True))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def total(self):
        """``Σ_i terms[i]`` (so ``total + remainder`` is the expanded function's value)."""
        return _sum_terms(self.terms)

    def term(self, label: str):
        """The term with this label."""
        try:
            i = self.labels.index(label)
        except ValueError:
            raise KeyError(f"no term labelled {label!r}; labels: {list(self.labels)}") from None
        return jax.tree_util.tree_map(lambda t: t[i], self.terms)

    @property
    def norms(self) -> np.ndarray:
        """``[n_terms]``: the L2 norm of each term over every leaf and position."""
        sq = sum(np.sum(np.square(np.asarray(t, np.float64).reshape(len(self.labels), -1)), axis=1)
                 for t in jax.tree_util.tree_leaves(self.terms))
        return np.sqrt(sq)

    def top(self, n: int | None = 10) -> list[tuple[str, float]]:
        """``(label, norm)`` of the ``n`` largest terms (all with ``None``), largest first."""
        n = check_nonnegative_int("n", n, optional=True)
        norms = self.norms
        return [(self.labels[i], float(norms[i])) for i in np.argsort(-norms, kind="stable")[:n]]

    def table(self, n: int = 10) -> str:
        """A plain-text table of the ``n`` largest terms (norm, weight) under a header with the remainder."""
        rest = math.sqrt(sum(float(np.sum(np.square(np.asarray(t, np.float64))))
                             for t in jax.tree_util.tree_leaves(self.remainder)))
        weights, index = np.asarray(self.weights), {lab: i for i, lab in enumerate(self.labels)}
        lines = [f"{len(self)} terms of order {self.order}; ‖remainder‖ {rest:.4g}",
                 f"{'norm':>10} {'weight':>8}  term"]
        return "\n".join(lines + [f"{norm:>10.4f} {float(weights[index[lab]]):>8.4g}  {lab}"
                                   for lab, norm in self.top(n)])

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1, "labels": list(self.labels), "order": self.order,
                "weights": encode_array(self.weights), "terms": encode_tree(self.terms),
                "remainder": encode_tree(self.remainder)}

    @classmethod
    def from_dict(cls, data: dict) -> "Expansion":
        data = check_format(data, cls.FORMAT, "Expansion", required=("labels", "order", "weights", "terms"))
        return cls(decode_tree(data["terms"]), decode_tree(data["remainder"]), decode_array(data["weights"]),
                   tuple(data["labels"]), int(data["order"]))

    def to_dataframe(self):
        """One row per term: ``label, weight, norm`` (needs pandas)."""
        return dataframe({"label": list(self.labels), "weight": np.asarray(self.weights), "norm": self.norms})


# ---------------------------------------------------------------------------------------------

def _sum_terms(terms):
    return jax.tree_util.tree_map(lambda t: jnp.sum(t, axis=0), terms)


def _unpack_centers(centers, labels):
    if isinstance(centers, Expansion):
        return centers.terms, tuple(labels) if labels is not None else centers.labels
    return centers, None if labels is None else tuple(labels)


def _n_centers(centers, variate) -> int:
    c_leaves, c_tree = jax.tree_util.tree_flatten(centers)
    v_leaves, v_tree = jax.tree_util.tree_flatten(variate)
    if c_tree != v_tree:
        raise ValueError(f"centres and variate must have the same structure, got {c_tree} and {v_tree}")
    sizes = set()
    for i, (c, v) in enumerate(zip(c_leaves, v_leaves)):
        c_shape, v_shape = tuple(jnp.shape(c)), tuple(jnp.shape(v))
        if len(c_shape) != len(v_shape) + 1 or c_shape[1:] != v_shape:
            raise ValueError(f"centres must be stacked along a leading centre axis: leaf {i} has shape "
                             f"{c_shape}, expected (n_centers, {', '.join(map(str, v_shape))})")
        sizes.add(c_shape[0])
    if len(sizes) != 1:
        raise ValueError(f"all centre leaves need the same number of centres, got {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("need at least one centre")
    return n


def _weights(weights, n: int, dtype) -> jax.Array:
    if weights is None or (isinstance(weights, str) and weights == "uniform"):
        return jnp.full((n,), 1.0 / n, dtype)
    if isinstance(weights, str):
        if weights == "unit":
            return jnp.ones((n,), dtype)
        raise ValueError(f"weights must be 'uniform', 'unit' or an array of {n} numbers, got {weights!r}")
    w = jnp.asarray(weights)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per centre, got {tuple(w.shape)}")
    if not isinstance(w, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(w))):
        raise ValueError(f"weights must be finite, got {np.asarray(w).tolist()}")
    return w.astype(dtype)


def _labels(labels, n: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(f"c{i}" for i in range(n))
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} centres")
    return tuple(str(x) for x in labels)


def _float_dtype(tree):
    return jax.tree_util.tree_leaves(tree)[0].dtype


def _scale(weights, tree):
    return jax.tree_util.tree_map(lambda t: weights.reshape((-1,) + (1,) * (t.ndim - 1)) * t, tree)


def jets(fn: Callable, centers, variate, order: int):
    """``J^k fn(centers[c])(variate)`` for every centre, stacked along the leading centre axis.

    The unweighted jets of one expansion (:func:`expand` scales them by the weights); ``centers`` is
    ``[C, *variate.shape]`` (or a pytree of such arrays), batched with ``vmap``.

    Example:
      >>> import jax.numpy as jnp
      >>> [float(v) for v in jets(lambda v: v ** 2, jnp.asarray([1.0, 3.0]), jnp.float32(2.0), 1)]
      [3.0, 3.0]
    """
    return jax.vmap(lambda c: jet(fn, c, variate, order))(centers)


def final_norm_jets(model: Model, centers, variate, order: int, *, params=None):
    """``J^k final_norm(centers[c])(variate)`` per centre: the decoder's jets before the unembedding.

    ``Dec = unembed ∘ final_norm``; where the unembedding is affine, a decoder term is the
    unembedding of one of these (times its weight): :func:`decoder_terms` and the affine
    reductions of :mod:`jetjax.paths.attribution` use this.
    """
    return jets(lambda x: model.final_norm(x, params=params), centers, variate, order)


def decoder_terms(model: Model, centers, variate, order: int, weight, *, params=None, unembedding=None):
    """The decoder terms' logits ``weight · J^k Dec(centers[c])(variate)`` (``weight`` scalar or ``[C]``).

    An affine unembedding commutes with the jet and the weight, so the jet is taken of the final norm
    alone and each term unembedded (no Taylor series of vocabulary size); ``unembedding=(W, b)``
    (:func:`jetjax._internal.precision.unembedding_operands`) unembeds in ``W``'s precision. A soft-capped
    unembedding (Gemma 2) is not affine: the jet is then taken of the whole decoder, cap included.
    """
    weight = jnp.asarray(weight)
    if not model.config.unembedding_is_affine:
        if unembedding is not None:
            raise ValueError("a compute_dtype unembedding needs an affine unembedding; this model soft-caps its "
                             "logits")
        return _scale(weight, jets(lambda x: model.decode(x, params=params), centers, variate, order))
    normed = _scale(weight, final_norm_jets(model, centers, variate, order, params=params))
    return model.unembed(normed, params=params) if unembedding is None else unembed(normed, *unembedding)


def _subtract(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def expand(fn: Callable, centers, variate, order: int = 0, weights=None, *,
           labels: Sequence[str] | None = None) -> Expansion:
    """Expand ``fn(variate)`` at each centre: ``terms[c] = w_c · J^k fn(centers[c])(variate)``.

    Args:
      fn: a function of one array (or pytree) built from jet-supported operations.
      centers: the centres stacked along a leading axis (``[C, *variate.shape]``, or a pytree of
        such arrays), or an :class:`Expansion` whose terms become the centres (and labels).
      variate: the point where every jet is evaluated (usually the true input of ``fn``).
      order: the jet order ``k`` (>= 0).
      weights: ``None``/``"uniform"`` (``1/C`` each, convex, as in the paper), ``"unit"`` (all 1),
        or ``C`` numbers (any values; differentiable).
      labels: names of the centres (default: ``c0, c1, ...`` or the Expansion's labels).

    Returns:
      an :class:`Expansion` with ``C`` terms and ``remainder = fn(variate) − Σ_c terms[c]``.

    Example:
      >>> import jax.numpy as jnp, jetjax as jj
      >>> f = lambda v: v ** 2
      >>> exp = jj.expand(f, jnp.asarray([1.0, 3.0]), jnp.float32(2.0), order=1)
      >>> [float(t) for t in exp.terms], float(exp.remainder)   # (1 + 2·1)/2, (9 + 6·(−1))/2
      ([1.5, 1.5], 1.0)
    """
    order = check_order(order)
    centers, given = _unpack_centers(centers, labels)
    n = _n_centers(centers, variate)
    w = _weights(weights, n, _float_dtype(variate))
    terms = _scale(w, jets(fn, centers, variate, order))
    remainder = _subtract(fn(variate), _sum_terms(terms))
    return Expansion(terms, remainder, w, _labels(given, n), order)


def _identity_jet(centers, variate, order):
    """``J^k id(x)(y)``: ``x`` at order 0, ``y`` at any order >= 1."""
    if order == 0:
        return centers
    return jnp.broadcast_to(variate, centers.shape)


def expand_block(model: Model, ids, layer: int, centers, order: int = 0, weights=None, *,
                 branch: str = "block", labels: Sequence[str] | None = None, streams=None,
                 gamma_centers: dict[str, Sequence[int]] | None = None, params=None) -> Expansion:
    """Algorithm 1 at a residual branch of layer ``layer`` (0-based).

    The branch's γ is jetted at each centre ``x_i`` and evaluated at the stream the branch really
    reads; the skip connection contributes identity terms. For centres ``x_1..x_C`` the result has
    the terms ``w_i J^k γ(x_i)(h)`` (labelled ``"<label_i>>attn3"`` etc.) followed by
    ``w_i J^k id(x_i)(h)`` (labelled ``"<label_i>"``), and
    ``remainder = (stream after the branch) − Σ terms``.

    Args:
      model: the model; ``ids`` its token ids (``[..., T]``).
      layer: which layer.
      centers: ``[C, ..., T, d]`` arrays (or an :class:`Expansion` of streams).
      order, weights, labels: as in :func:`expand`.
      branch: ``"block"`` (the whole-layer γ, ``h_l -> h_{l+1}``), ``"attn"`` (``h_l -> h_mid``),
        ``"mlp"`` (``h_mid -> h_{l+1}``; sequential blocks only) or ``"branches"`` (attention and MLP
        jetted separately at the same centres, for parallel-residual blocks whose branches both
        read ``h_l``).
      streams: optional ``model.residual_stream(ids, mid=True)`` to reuse.
      gamma_centers: ``{"attn": [0, 2], ...}``: expand that γ only at these centre indices (the
        others keep their identity term; what their γ terms would have carried goes to the
        remainder). Default: every γ at every centre. Used by path filters.
      params: parameters to use instead of the model's own (pass them inside your own ``jax.jit``).

    Example (centres: the embedding and the first block's own contribution):
      >>> exp = jj.expand_block(model, ids, 1, jnp.stack([h[0], h[1] - h[0]]), order=1,
      ...                       labels=["emb", "block0"])                     # doctest: +SKIP
      >>> exp.labels                                                          # doctest: +SKIP
      ('emb>block1', 'block0>block1', 'emb', 'block0')
    """
    order = check_order(order)
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    layer = model.check_layer(layer)
    parallel = model.config.parallel_residual
    if branch == "mlp" and parallel:
        raise ValueError("branch='mlp' needs a sequential block; in a parallel-residual model both branches "
                         "read h_l: use branch='branches' (or 'block')")
    if branch == "branches" and not parallel:
        raise ValueError("branch='branches' is for parallel-residual models; expand a sequential block "
                         "with branch='attn' then branch='mlp' (or 'block')")
    h, mids = streams if streams is not None else model.residual_stream(ids, mid=True, params=params)
    centers, given = _unpack_centers(centers, labels)
    variate = mids[layer] if branch == "mlp" else h[layer]
    target = mids[layer] if branch == "attn" else h[layer + 1]
    n = _n_centers(centers, variate)
    names = _labels(given, n)
    w = _weights(weights, n, variate.dtype)

    gammas = {"block": [("block", model.block)], "attn": [("attn", model.attn)],
              "mlp": [("mlp", model.mlp)], "branches": [("attn", model.attn), ("mlp", model.mlp)]}[branch]
    parts, out_labels, out_weights = [], [], []
    for name, fn in gammas:
        sel = np.arange(n) if gamma_centers is None else np.asarray(gamma_centers.get(name, []), int)
        if sel.size == 0:
            continue
        parts.append(_scale(w[sel], jets(lambda x, fn=fn: fn(layer, x, params=params), centers[sel], variate,
                                         order)))
        out_labels += [extend_label(names[i], Component(name, layer)) for i in sel]
        out_weights.append(w[sel])
    parts.append(_scale(w, _identity_jet(centers, variate, order)))
    out_labels += list(names)
    out_weights.append(w)
    terms = jnp.concatenate(parts, axis=0)
    weights_out = jnp.concatenate(out_weights)
    return Expansion(terms, target - jnp.sum(terms, 0), weights_out, tuple(out_labels), order)


def expand_decoder(model: Model, ids, centers, order: int = 0, weights=None, *,
                   labels: Sequence[str] | None = None, streams=None, params=None,
                   unembedding=None) -> Expansion:
    """Algorithm 1 at the decoder (the paper's ``l = L + 1``): ``w_i J^k Dec(x_i)(h_L)``.

    ``Dec = unembed ∘ final_norm``, expanded by :func:`decoder_terms`. Terms are logits ``[C, ..., T, V]`` labelled ``"<label_i>>dec"``;
    ``remainder = logits − Σ terms``.

    ``unembedding``: optional ``(W, b)`` from :func:`jetjax._internal.precision.unembedding_operands`; the
    terms are then ``n W + b`` in ``W``'s precision with float32 accumulation (``compute_dtype``),
    while the model's logits (and so the remainder) stay those of its own unembedding.

    Example (order 0 at the stream ``h_1`` with weight 1 is the logit lens at layer 1):
      >>> h = model.residual_stream(ids)                                     # doctest: +SKIP
      >>> lens = jj.expand_decoder(model, ids, h[1:2], order=0, weights="unit", labels=["h1"])  # doctest: +SKIP
      >>> lens.labels                                                        # doctest: +SKIP
      ('h1>dec',)
    """
    order = check_order(order)
    h = streams[0] if isinstance(streams, tuple) else streams
    if h is None:
        h = model.residual_stream(ids, params=params)
    centers, given = _unpack_centers(centers, labels)
    variate = h[-1]
    n = _n_centers(centers, variate)
    w = _weights(weights, n, variate.dtype)
    terms = decoder_terms(model, centers, variate, order, w, params=params, unembedding=unembedding)
    logits = model.decode(variate, params=params)
    labels_out = tuple(extend_label(lab, DEC) for lab in _labels(given, n))
    return Expansion(terms, logits - jnp.sum(terms, 0), w, labels_out, order)


def _steps(n_layers: int, granularity: str, parallel_residual: bool):
    """The expansion steps of Algorithm 2: ``(layer, branch mode, component kinds)`` in order."""
    check_granularity(granularity)
    return [(layer, kinds[0] if len(kinds) == 1 else "branches", list(kinds))
            for layer, kinds in component_steps(n_layers, granularity, parallel_residual)]


def _check_size(model: Model, spec: PathSpec, max_paths, n_tokens: int, n_logits: int = 0) -> None:
    """Refuse, from :func:`count_paths` (closed form), settings with more than ``max_paths`` paths or whose
    ``P × T × (d + n_logits)`` numbers cannot be held, before any label or term is built."""
    max_paths = check_positive_int("max_paths", max_paths, optional=True)
    c = model.config
    n = count_paths(c.n_layers, parallel_residual=c.parallel_residual, spec=spec)
    hint = ("narrow them with max_length=, include=/exclude= or attention_free=True, raise max_paths=, or use "
            "jj.reduce_paths (decodes in chunks) or path_attribution(method='search'), which never holds them all")
    check_path_count(n, max_paths, f"{spec.granularity} paths with max_length={spec.max_length} on {c.n_layers} "
                                   "layers", hint)
    if jax.default_backend() == "cpu":
        check_path_memory(n, n_tokens, c.d_model + n_logits, hint, width="d + V" if n_logits else "d")


def path_streams(model: Model, ids, order: int = UNSET, *, granularity: str = UNSET, weights: str = UNSET,
                 include: Sequence[str] | None = UNSET, exclude: Sequence[str] = UNSET,
                 max_length: int | None = UNSET, attention_free: bool = UNSET, streams=None, params=None,
                 constrain: Callable | None = None, spec: PathSpec | None = None,
                 max_paths: int | None = MAX_PATHS) -> Expansion:
    """Algorithm 2 up to the last residual stream: every path's contribution to ``h_L``.

    The same paths as :func:`expand_all` (labels without the final ``">dec"``), as residual
    vectors ``[P, ..., T, d]`` rather than logits, with ``remainder = h_L − Σ paths``. Holding
    ``P × T × d`` is cheap where ``P × T × V`` logits are not: :func:`jetjax.paths.attribution.reduce_paths`
    decodes these in chunks. The path settings (``order``, ``granularity``, ``weights`` and the
    filters, or ``spec=``) are those of :func:`expand_all`.

    ``constrain`` (optional) is applied to the stacked terms after each step; the sharded
    evaluation uses it to lay the path axis out over devices. ``max_paths``: as in :func:`expand_all`.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> paths = jj.path_streams(tiny_model(scale=0.02), [3, 1, 4])
      >>> paths.labels, paths.terms.shape
      (('emb>block0>block1', 'emb>block1', 'emb>block0', 'emb'), (4, 3, 16))
    """
    spec = resolve_spec(spec, order=order, granularity=granularity, weights=weights, include=include,
                        exclude=exclude, max_length=max_length, attention_free=attention_free).validate(model)
    ids = model.check_ids(ids)
    _check_size(model, spec, max_paths, int(np.prod(ids.shape)))
    return _path_streams(model, spec, ids, streams, params, constrain)


def _path_streams(model: Model, spec: PathSpec, ids, streams, params, constrain=None) -> Expansion:
    streams = streams if streams is not None else model.residual_stream(ids, mid=True, params=params)
    current = Expansion(streams[0][0][None], jnp.zeros_like(streams[0][0]),
                        jnp.ones((1,), streams[0].dtype), (EMB,), spec.order)
    for layer, branch, kinds in _steps(model.config.n_layers, spec.granularity, model.config.parallel_residual):
        short = [i for i, lab in enumerate(current.labels)
                 if spec.max_length is None or label_length(lab) < spec.max_length]
        select = {kind: short if spec.allows(Component(kind, layer)) else [] for kind in kinds}
        current = expand_block(model, ids, layer, current, spec.order, spec.weights, branch=branch,
                               streams=streams, gamma_centers=select, params=params)
        if constrain is not None:
            current = dataclasses.replace(current, terms=constrain(current.terms))
    return current


def expand_all(model: Model, ids, order: int = UNSET, *, granularity: str = UNSET, weights: str = UNSET,
               include: Sequence[str] | None = UNSET, exclude: Sequence[str] = UNSET,
               max_length: int | None = UNSET, attention_free: bool = UNSET, streams=None,
               params=None, spec: PathSpec | None = None, max_paths: int | None = MAX_PATHS) -> Expansion:
    """Algorithm 2: every input→output path of the model, plus the remainder.

    Algorithm 1 is applied to each layer in turn, the centres of layer ``l`` being all the terms
    produced so far (each distinct path prefix is therefore computed once, batched along the term
    axis: about ``2^L`` block evaluations at order 0), and finally to the decoder.

    * ``order`` (default 0): the jet order of every expansion.
    * ``granularity="block"`` (default): one γ per layer: ``2^L`` paths, labelled e.g.
      ``"emb>block0>block2>dec"``.
    * ``granularity="branch"``: attention and MLP as separate γs: ``4^L = 2^(2L)`` paths for
      sequential blocks (``"emb>attn0>mlp1>dec"``); ``3^L`` for parallel-residual blocks, whose two
      branches read the same stream and so cannot follow each other within a layer.
    * ``weights="unit"`` (default; each expansion's weights are 1; at order 0 every path is then the
      plain composition of its components) or ``"uniform"`` (``1/C`` at each expansion, as the paper).
    * Filters (paths they drop are not computed; what they carried goes to the remainder):
      ``include`` / ``exclude`` component names (``"attn0"``, ``"mlp3"``, ``"block2"``; spelled and
      checked against the model's depth and ``granularity`` by :mod:`jetjax.paths.labels`; one name alone
      counts as a list of it), ``max_length`` (at most this many components per path),
      ``attention_free`` (no ``attn*``).
      :func:`count_paths` gives the number of paths without computing them.
    * ``spec``: all of the above as one :class:`jetjax.PathSpec`, instead of the keywords (a keyword
      given next to it must agree with it).
    * ``max_paths`` (default 2^20; ``None``: no limit but memory): settings with more paths, counted in
      closed form (:func:`count_paths`), or whose paths' streams and logits cannot be held in the memory
      available, are refused before anything is built.

    Returns an :class:`Expansion` of logits ``[P, ..., T, V]`` with ``remainder = logits − Σ paths``.
    Runs as one compiled function per (model, :class:`~jetjax.PathSpec`); later calls with the same
    shapes reuse it. This holds all paths' logits in memory: meant for shallow models and small
    vocabularies; for deep models use :func:`jetjax.reduce_paths` / :func:`jetjax.path_attribution`,
    which decode in chunks and keep only what they report.

    Example:
      >>> paths = jj.expand_all(model, ids, granularity="block")    # doctest: +SKIP
      >>> len(paths), paths.labels[0], paths.labels[-1]              # doctest: +SKIP
      (8, 'emb>block0>block1>block2>dec', 'emb>dec')
      >>> same = jj.expand_all(model, ids, spec=jj.PathSpec(granularity="block"))   # doctest: +SKIP
    """
    # checked and normalised before any cache is touched: a bad setting never reaches a compiled
    # function, and two spellings of one setting share one
    spec = resolve_spec(spec, order=order, granularity=granularity, weights=weights, include=include,
                        exclude=exclude, max_length=max_length, attention_free=attention_free).validate(model)
    ids = model.check_ids(ids)
    _check_size(model, spec, max_paths, int(np.prod(ids.shape)), model.config.vocab_size)
    # One compiled function per (model, spec), taking params, ids and streams as arguments; it
    # holds the model weakly, so the per-model cache does not keep the model alive.
    ref = weakref.ref(model)
    fn = per_model(model, "expand_all", spec,
                   lambda: jax.jit(lambda p, i, s: _expand_all(ref(), spec, p, i, s)))
    return fn(model.params if params is None else params, ids, streams)


def _expand_all(model: Model, spec: PathSpec, params, ids, streams) -> Expansion:
    streams = streams if streams is not None else model.residual_stream(ids, mid=True, params=params)
    current = _path_streams(model, spec, ids, streams, params)
    return expand_decoder(model, ids, current, spec.order, spec.weights, streams=streams, params=params)


def count_paths(n_layers: int, granularity: str = UNSET, *, parallel_residual: bool = False,
                include: Sequence[str] | None = UNSET, exclude: Sequence[str] = UNSET,
                max_length: int | None = UNSET, attention_free: bool = UNSET,
                spec: PathSpec | None = None) -> int:
    """How many paths :func:`expand_all` produces, without computing them.

    A path is an ordered choice of components, at most one per expansion step:

    * ``"block"``: steps ``block0..block{L-1}``, each taken or not: ``2^L`` paths;
    * ``"branch"``, sequential blocks: steps ``attn0, mlp0, attn1, ...``: ``2^(2L) = 4^L``;
    * ``"branch"``, parallel-residual blocks: per layer none, ``attn`` or ``mlp``: ``3^L``.

    With ``max_length = m`` only paths of at most ``m`` components count (for the first two cases
    ``Σ_{j≤m} C(n, j)`` with ``n`` the number of allowed components); filters remove components.
    The settings are those of :func:`expand_all` (as keywords or ``spec=``); the jet order does not
    change the count (each expansion yields one term per centre and γ).

    Example:
      >>> from jetjax import count_paths
      >>> count_paths(12), count_paths(12, "branch"), count_paths(3, "branch", parallel_residual=True)
      (4096, 16777216, 27)
      >>> count_paths(12, "branch", attention_free=True, max_length=2)  # 1 + 12 + C(12, 2)
      79
    """
    if not isinstance(parallel_residual, (bool, np.bool_)):
        raise TypeError(f"parallel_residual must be True or False, got {parallel_residual!r}")
    spec = resolve_spec(spec, granularity=granularity, include=include, exclude=exclude, max_length=max_length,
                        attention_free=attention_free).validate(n_layers)
    # by_length[j] = number of path prefixes with j components
    by_length = [1]
    for layer, _, kinds in _steps(n_layers, spec.granularity, parallel_residual):
        k = sum(spec.allows(Component(kind, layer)) for kind in kinds)
        nxt = by_length + [0]
        for j, count in enumerate(by_length):
            nxt[j + 1] += k * count
        by_length = nxt
    if spec.max_length is not None:
        by_length = by_length[: spec.max_length + 1]
    return int(sum(by_length))
