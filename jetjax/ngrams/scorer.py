"""Path names for jet n-grams, and the function that turns contexts into next-token scores.

Path names are the labels of :mod:`jetjax.paths.labels` (its grammar and rules, one owner), so every
label :func:`jetjax.expand_all` writes names an n-gram path too::

    path      := "emb" (">" component)* ">dec"
    component := "attn" LAYER | "mlp" LAYER | "block" LAYER

``emb>dec``, ``emb>mlp3>dec``, ``emb>attn0>dec``, ``emb>attn1>mlp1>mlp4>dec``, ``emb>block0>block2>dec``.
Components run in execution order (``attn{l}`` before ``mlp{l}`` before ``attn{l+1}``; ``block{l}``
before ``block{l+1}``), each at most once, and one path never mixes ``block{l}`` with ``attn``/``mlp``.
In parallel-residual models (GPT-NeoX) both branches of a layer read the same stream, so
``attn{l}>mlp{l}`` is not a path there.

What a path computes on a context of token ids ``z_1..z_T`` (``T = 1`` for bigrams): start from the
token embeddings (``model.token_embed``: no positions, as in the paper), apply each component
(``model.attn(l, ·)`` / ``model.mlp(l, ·)`` / ``model.block(l, ·)``: the branch's or whole block's
delta, pre-norms included, *without* the skip connection) to the whole sequence, then
``Dec = unembed ∘ final_norm`` at the last position. On a single-token context attention attends
only to itself, so ``emb>attn{l}>dec`` is exactly ``Dec(model.attn(l, E[z][None]))``: the layer's
value-output map; ``emb>block{l}>dec`` is ``Dec(block_l(E[z]))``.

Order ``k`` (default 0): every component and the final norm is replaced by its order-``k`` jet
(:func:`jetjax.jet`) centred at the path's value so far and evaluated at the stream that component
really reads when the model runs on the context alone (token embeddings, no positions) — the
centre/variate choice of Algorithm 1: ``h_l`` for ``attn{l}`` and ``block{l}``, the mid-block
stream for ``mlp{l}``. At order 0 the variate is unused and a path is the plain composition of its
components.

The score of a path set ``ξ`` is the paper's ``s(x) = Σ_{e∈ξ} e(x) / |ξ|``, the mean of the paths'
logits. The unembedding is affine (``x @ W + b``), so this equals
``(mean of the paths' final-norm outputs) @ W + b``: one GEMM per row block whatever the number of
paths.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.checks import check_order
from jetjax.jet import jet
from jetjax.paths.labels import PATH_FORMS, format_label, parse_label
from jetjax.models.model import Model

__all__ = ["parse_path", "check_paths", "PATH_FORMS", "context_scorer", "LayerShare", "layer_share",
           "shared_scorer"]


def parse_path(name: str, n_layers: int, *, parallel_residual: bool = False) -> tuple[tuple[str, int], ...]:
    """``"emb>attn0>mlp2>dec"`` -> ``(("attn", 0), ("mlp", 2))``, validated against the model's depth.

    The grammar and its errors are :func:`jetjax.paths.labels.parse_label`'s.

    Example:
      >>> parse_path("emb>attn0>mlp2>dec", n_layers=3)
      (('attn', 0), ('mlp', 2))
      >>> parse_path("emb>block0>block2>dec", n_layers=3)
      (('block', 0), ('block', 2))
      >>> parse_path("emb>dec", n_layers=3)
      ()
    """
    comps = parse_label(name, n_layers=n_layers, parallel_residual=parallel_residual)
    return tuple((c.kind, c.layer) for c in comps)


def check_paths(model: Model | None, paths: Sequence[str] | str) -> tuple[str, ...]:
    """Validate path names (for ``model``, or by the grammar alone with ``None``); returns them as a tuple.

    One name alone (a ``str``) is a list of it. Each name is parsed and written back in its one
    canonical spelling (:func:`jetjax.paths.labels.format_label`), and duplicates are found on the parsed
    paths, so no two spellings of one path can count twice: the grammar refuses the others
    (``" emb>dec"``, ``"emb>mlp00>dec"``) with an error naming the canonical one.

    Example:
      >>> check_paths(None, "emb>mlp0>dec")
      ('emb>mlp0>dec',)
      >>> check_paths(None, ["emb>dec", "emb>mlp00>dec"])  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: unknown path name 'emb>mlp00>dec'; ... 'mlp00' has a leading zero; write 'mlp0'
    """
    if isinstance(paths, str):
        paths = (paths,)
    if paths is None or not isinstance(paths, Iterable):
        raise ValueError(f"paths must be a path name or a list of them (valid forms: {'; '.join(PATH_FORMS)}), "
                         f"got {paths!r}")
    paths = tuple(paths)
    if not paths:
        raise ValueError(f"paths must name at least one path; valid forms: {'; '.join(PATH_FORMS)}")
    c = None if model is None else model.config
    seen: dict[tuple, str] = {}
    for p in paths:
        key = parse_label(p, n_layers=None if c is None else c.n_layers,
                          parallel_residual=False if c is None else c.parallel_residual)
        if key in seen:
            raise ValueError(f"paths contains duplicates: {seen[key]!r} and {p!r} are both the path "
                             f"{format_label(key)!r} (paths: {list(paths)})")
        seen[key] = p
    return tuple(format_label(key) for key in seen)


def _token_streams(model: Model, params, x0):
    """The residual streams the model computes on these contexts from token embeddings alone.

    Returns ``(h, mids)``: ``h[l]`` is the stream layer ``l`` reads (``h[L]`` the last), ``mids[l]`` the
    stream layer ``l``'s MLP reads (``h[l]`` for parallel-residual models).
    """
    hs, mids = model.streams_from(x0, params=params, mid=True)
    return hs, (hs[:-1] if model.config.parallel_residual else mids)


def context_scorer(model: Model, paths: Sequence[str], order: int = 0) -> Callable:
    """``fn(params, ctx) -> [N, d]``: the mean final-norm output of ``paths`` at the last position.

    ``ctx`` is ``int [N, T]``. Apply ``@ W + b`` (:meth:`~jetjax.models.model.Model.unembedding_matrix`) for the score ``s(x)``.
    Paths sharing a prefix compute it once.
    """
    paths = check_paths(model, paths)
    order = check_order(order)
    c = model.config
    parsed = [parse_path(p, c.n_layers, parallel_residual=c.parallel_residual) for p in paths]
    return _scorer(model, parsed, order)


def _scorer(model: Model, parsed, order: int, where: tuple | None = None, reps: tuple[int, ...] = ()) -> Callable:
    """``fn(params, ctx, selected=(), layer_ids=None)``: :func:`context_scorer`'s function of parsed paths.

    With ``reps`` (layer sharing, :class:`LayerShare`), the components of layer ``reps[i]`` run on the
    weights ``selected[i]`` (put in its place in the layer table at ``where`` of ``params``), and
    their order-``k`` variates are the streams of layer ``layer_ids[i]`` (a traced index).
    """
    slot = {r: i for i, r in enumerate(reps)}

    def score(params, ctx, selected=(), layer_ids=None):
        weights = _with_layers(params, where, dict(zip(reps, selected))) if reps else params
        x0 = model.token_embed(ctx, params=params)
        hs, mids = _token_streams(model, params, x0) if order > 0 else (None, None)

        def apply(kind, layer, x):
            fn = {"attn": model.attn, "mlp": model.mlp, "block": model.block}[kind]
            if order == 0:
                return fn(layer, x, params=weights)
            at = layer_ids[slot[layer]] if reps else layer
            variate = mids[at] if kind == "mlp" else hs[at]  # the stream this component reads
            return jet(lambda v: fn(layer, v, params=weights), x, variate, order)

        prefixes = {(): x0}
        normed = []
        for comps in parsed:
            for i in range(1, len(comps) + 1):
                if comps[:i] not in prefixes:
                    prefixes[comps[:i]] = apply(*comps[i - 1], prefixes[comps[: i - 1]])
            last = prefixes[comps][:, -1]
            if order == 0:
                normed.append(model.final_norm(last, params=params))
            else:
                normed.append(jet(lambda v: model.final_norm(v, params=params), last, hs[-1][:, -1], order))
        return sum(normed[1:], normed[0]) / len(normed)

    return score


# -- one compiled function for paths that differ only in which layer's weights they read -------------

@dataclasses.dataclass(frozen=True)
class LayerShare:
    """How a path set runs on weights passed as arguments, so that path sets of the same shape share
    one compiled function (:func:`layer_share`).

    The distinct layers the paths read, in ascending order, are its slots: slot ``i`` reads layer
    ``layers[i]`` and is computed as layer ``reps[i]``, a layer whose computation is the same up to
    its weights (the smallest such layer not taken by another slot), fed ``layers[i]``'s weights.
    ``key`` (the paths written with the representatives, and the representatives) is all a compiled
    function depends on; ``layers`` is data, given by :meth:`args`.
    """

    parsed: tuple                 # the paths, each component's layer replaced by its representative
    reps: tuple[int, ...]
    layers: tuple[int, ...]
    where: tuple | None           # key path of the layer table in the params (None: no sharing)

    @property
    def key(self) -> tuple:
        return (self.parsed, self.reps)

    def args(self, params):
        """The argument of :func:`shared_scorer`'s function: ``(params, slot weights, slot layers)``."""
        if self.where is None:
            return params, (), None
        table = _get(params, self.where)
        return params, tuple(table[layer] for layer in self.layers), jnp.asarray(self.layers, jnp.int32)


def shared_scorer(model: Model, share: LayerShare, order: int = 0) -> Callable:
    """``fn(share.args(params), ctx) -> [N, d]``: :func:`context_scorer`'s function for the path set
    ``share`` stands for, with the selected layers' weights (and, at order ``k > 0``, their
    indices) as arguments: one function serves every path set with the same ``share.key``."""
    score = _scorer(model, share.parsed, check_order(order), share.where, share.reps if share.where else ())
    return lambda args, ctx: score(args[0], ctx, args[1], args[2])


def layer_share(model: Model, paths: Sequence[str], context_len: int = 1, *, share: bool = True) -> LayerShare:
    """The :class:`LayerShare` of ``paths`` on contexts of ``context_len`` tokens.

    Two layers share a representative when nothing but their weights tells their components apart:
    the same shapes and dtypes of weights and, for attention (and whole blocks), the same sliding
    window, rotary embedding (on or off, base and scaling: Gemma's local and global layers differ)
    and score scale (GPT-2's ``scale_attn_by_inverse_layer_idx`` makes every layer its own). That is
    then checked, not assumed: the component's jaxpr on a context of this length, with the weights
    as its inputs, must be the same for both layers (constants included), else the layer is its own
    representative. ``share=False`` makes every layer its own representative (one compiled function
    per layer, as before sharing).
    """
    paths = check_paths(model, paths)
    c = model.config
    parsed = [parse_path(p, c.n_layers, parallel_residual=c.parallel_residual) for p in paths]
    kinds: dict[int, set] = {}
    for comps in parsed:
        for kind, layer in comps:
            kinds.setdefault(layer, set()).add(kind)
    layers = tuple(sorted(kinds))
    where = _layer_table(model)
    if where is None:
        return LayerShare(tuple(tuple(p) for p in parsed), layers, layers, None)
    table = _get(model.params, where)
    reps: list[int] = []
    for layer in layers:
        rep = layer
        if share:
            sig = _signature(model, table, layer, kinds[layer])
            rep = next(r for r in range(c.n_layers)
                       if r not in reps and (r == layer or _signature(model, table, r, kinds[layer]) == sig))
            if rep != layer and not _same_computation(model, where, kinds[layer], rep, layer, context_len):
                rep = layer
        reps.append(rep)
    rep_of = dict(zip(layers, reps))
    relabelled = tuple(tuple((kind, rep_of[layer]) for kind, layer in comps) for comps in parsed)
    return LayerShare(relabelled, tuple(reps), layers, where)


def _signature(model: Model, table, layer: int, kinds) -> tuple:
    """What the config says distinguishes layer ``layer``'s components ``kinds``, its weights' shapes
    and dtypes included."""
    c = model.config
    sig = []
    for kind in sorted(kinds):
        if kind == "mlp":
            sig.append((kind,))
        else:  # attention, alone or in a block
            rotary = c.rotary(layer)
            sig.append((kind, c.window(layer), rotary, c.rope_at(layer) if rotary else None,
                        layer + 1 if c.attn_scale_by_layer else None))
    leaves, tree = jax.tree_util.tree_flatten(table[layer])
    return tuple(sig), tree, tuple((tuple(jnp.shape(x)), jnp.result_type(x)) for x in leaves)


def _same_computation(model: Model, where: tuple, kinds, rep: int, layer: int, context_len: int) -> bool:
    """Whether running layer ``rep``'s components ``kinds`` on layer ``layer``'s weights computes what
    layer ``layer`` computes: equal jaxprs and constants, on one context of ``context_len`` tokens,
    with every weight an input (abstract: the jaxprs depend on shapes, dtypes and the config alone)."""
    from jetjax._internal.compiled import per_model

    memo = per_model(model, "ngrams", ("same_layer_computation",), dict)
    leaves, tree = jax.tree_util.tree_flatten(model.params)
    avals = (tree, tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
    if memo.get("avals") != avals:   # new weights of other shapes: trace again
        memo.clear()
        memo["avals"] = avals
    params = jax.tree_util.tree_unflatten(tree, [jax.ShapeDtypeStruct(*a) for a in avals[1]])
    if ("x", context_len) not in memo:
        memo["x", context_len] = jax.eval_shape(
            lambda p: model.token_embed(jnp.zeros((1, context_len), jnp.int32), params=p), params)
    x = memo["x", context_len]

    def traced(kind, at):  # layer `at`'s component, its weights as inputs
        if (kind, at, context_len) not in memo:
            fn = {"attn": model.attn, "mlp": model.mlp, "block": model.block}[kind]
            closed = jax.make_jaxpr(lambda p, w, h: fn(at, h, params=_with_layers(p, where, {at: w})))(
                params, _get(params, where)[at], x)
            memo[kind, at, context_len] = str(closed.jaxpr), closed.consts
        return memo[kind, at, context_len]

    def same(a, b):
        (text_a, consts_a), (text_b, consts_b) = a, b
        return text_a == text_b and len(consts_a) == len(consts_b) and all(
            u is v or (np.shape(u) == np.shape(v) and np.asarray(u).dtype == np.asarray(v).dtype
                       and np.array_equal(np.asarray(u), np.asarray(v), equal_nan=True))
            for u, v in zip(consts_a, consts_b))

    # The two layers' weights have the same shapes and dtypes (their signatures agree), so each layer
    # is traced on its own: one trace of `rep` serves every layer it stands for.
    return all(same(traced(kind, rep), traced(kind, layer)) for kind in sorted(kinds))


def _layer_table(model: Model) -> tuple | None:
    """The key path, in the params, of the dict holding one subtree per layer (keys ``0..L-1``)."""
    todo = [((), model.params)]
    while todo:
        path, node = todo.pop(0)
        if isinstance(node, dict):
            if set(node) == set(range(model.config.n_layers)):
                return path
            todo.extend((path + (k,), v) for k, v in node.items())
    return None


def _get(params, where: tuple):
    for k in where:
        params = params[k]
    return params


def _with_layers(params, where: tuple, layers: dict):
    """``params`` with the layer table's entries ``layers`` (index -> weights) replaced; new dicts along
    the way, the arrays shared, not copied."""
    if not where:
        return {**params, **layers}
    return {**params, where[0]: _with_layers(params[where[0]], where[1:], layers)}
