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

from typing import Callable, Iterable, Sequence

from jetjax._internal.checks import check_order
from jetjax.jet import jet
from jetjax.paths.labels import PATH_FORMS, format_label, parse_label
from jetjax.models.model import Model

__all__ = ["parse_path", "check_paths", "PATH_FORMS", "context_scorer"]


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

    def score(params, ctx):
        x0 = model.token_embed(ctx, params=params)
        hs, mids = _token_streams(model, params, x0) if order > 0 else (None, None)

        def apply(kind, layer, x):
            fn = {"attn": model.attn, "mlp": model.mlp, "block": model.block}[kind]
            if order == 0:
                return fn(layer, x, params=params)
            variate = mids[layer] if kind == "mlp" else hs[layer]  # the stream this component reads
            return jet(lambda v: fn(layer, v, params=params), x, variate, order)

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
