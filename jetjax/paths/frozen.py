"""The frozen path decomposition: paths linear in their source, from one actual forward pass.

The paper's paths (Algorithm 2 at order 0, unit weights) run each *nonlinear* component on the
path's own vector; on deep pre-norm models they cancel each other and leave a large remainder.
Here every nonlinear factor is instead taken from the actual forward pass on ``ids`` and held fixed
(the way circuit analyses decompose a residual stream; see :data:`jetjax.models.layers.freeze`):
norm scales ``1/sqrt(var + eps)``, attention patterns, MLP activation ratios ``act(z*)/z*``, gates of
gated MLPs, OLMo's value clipping. Every component ``γ`` (``attn{l}``, ``mlp{l}``, or ``block{l}``)
is then affine in its input, ``γ(v) = L_γ(v) + b_γ``, and at the actual stream it gives the
model's own output. So the last stream splits exactly::

    h_L = Σ_paths  L_{γ_k} ∘ … ∘ L_{γ_1} (source)

over paths from a *source* through components in execution order, where a source is the embedding
(``emb``) or the constant ``b_γ`` of one component (its output on a zero input with the factors
frozen: biases, the norms' biases carried through, clipped constants). Labels follow
:mod:`jetjax.paths.labels` for ``emb`` paths; a constant's path starts with ``bias>`` and the component
whose constant it is, which counts towards the path's length::

    emb>attn0>mlp3>dec     the embedding through attn0's then mlp3's linear parts, then decoded
    bias>attn0>mlp3>dec    attn0's constant, through mlp3's linear part, then decoded
    bias>dec               the frozen decoder's own constant (final-norm bias, unembedding bias)

The frozen decoder ``unembed ∘ final_norm`` (its scale from ``h_L``) is affine too, so the logits
split the same way, and a path's score is exact: the scores plus ``bias>dec`` add up to the
model's logit difference. Prefixes are shared as in Algorithm 2 (each component's linear part is
applied to the batch of all current prefixes at once), so memory is ``P × T × d`` for ``P`` paths;
enumeration is exhaustive (or cut by ``max_length``), meant for small models or short paths.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.compiled import per_model
from jetjax._internal.results import ResultIO, check_format, dataframe, decode_array, encode_array
from jetjax.paths.results import PathAttribution, attribution_from_scores, one_sequence, token_id
from jetjax._internal.checks import (MAX_PATHS, check_nonnegative_int, check_path_count, check_path_memory,
                                     check_position, check_positive_int, count_nonfinite)
from jetjax.paths.labels import (BIAS, DEC, EMB, Component, check_granularity, extend_label, format_label,
                                label_length)
from jetjax.models.layers import freeze
from jetjax.models.model import Model
from jetjax.paths.plan import component_steps

__all__ = ["BIAS", "FrozenPaths", "frozen_linear", "frozen_path_streams", "frozen_path_attribution", "count_frozen_paths"]


@dataclasses.dataclass(frozen=True)
class FrozenPaths(ResultIO):
    """Every frozen path's contribution to the last residual stream (see :func:`frozen_path_streams`).

    Attributes:
      labels: ``P`` stream labels (``"emb>attn0>mlp2"``, ``"bias>attn0>mlp2"``, ``"emb"``, …).
      terms: ``[P, ..., T, d]``: path ``i``'s vector in ``h_L``.
      stream: ``h_L`` of the forward pass the factors were frozen on.
      remainder: ``stream − Σ terms``: 0 up to rounding when every path is kept; with ``max_length``
        the exact sum of the dropped paths.
      granularity, max_length: the settings used.
      total (property): ``Σ_i terms[i]``, so ``total + remainder == stream``.

    :meth:`top` ranks the paths by the L2 norm of their vector (over every position); :meth:`table`
    lists them. ``to_json`` / ``load`` write and read every array exactly (the jetjax results
    protocol, :mod:`jetjax._internal.results`); arrays come back as NumPy arrays.
    """

    FORMAT = "jetjax.frozen_paths"

    labels: tuple[str, ...]
    terms: jax.Array
    stream: jax.Array
    remainder: jax.Array
    granularity: str
    max_length: int | None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def total(self) -> jax.Array:
        """``Σ_i terms[i]`` (so ``total + remainder == stream``)."""
        return jnp.sum(self.terms, axis=0)

    def term(self, label: str) -> jax.Array:
        """The path vector labelled ``label``."""
        try:
            return self.terms[self.labels.index(label)]
        except ValueError:
            raise KeyError(f"no path labelled {label!r}") from None

    @property
    def norms(self) -> np.ndarray:
        """``[P]``: the L2 norm of each path's vector over every position."""
        terms = np.asarray(self.terms, np.float64)
        return np.sqrt(np.sum(np.square(terms.reshape(len(self.labels), -1)), axis=1))

    def top(self, n: int | None = 10) -> list[tuple[str, float]]:
        """``(label, norm)`` of the ``n`` paths with the largest vectors (all with ``None``), largest first."""
        n = check_nonnegative_int("n", n, optional=True)
        norms = self.norms
        return [(self.labels[i], float(norms[i])) for i in np.argsort(-norms, kind="stable")[:n]]

    def table(self, n: int = 10) -> str:
        """A plain-text table of the ``n`` largest paths under a header with the settings and the remainder."""
        size = float(np.linalg.norm(np.asarray(self.stream, np.float64)))
        rest = float(np.linalg.norm(np.asarray(self.remainder, np.float64)))
        lines = [f"{len(self)} frozen paths ({self.granularity}, max_length {self.max_length}); ‖h_L‖ {size:.4g}, "
                 f"‖remainder‖ {rest:.3g}", f"{'norm':>10}  path"]
        return "\n".join(lines + [f"{norm:>10.4f}  {label}" for label, norm in self.top(n)])

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1, "labels": list(self.labels), "granularity": self.granularity,
                "max_length": self.max_length,
                "arrays": {k: encode_array(getattr(self, k)) for k in ("terms", "stream", "remainder")}}

    @classmethod
    def from_dict(cls, data: dict) -> "FrozenPaths":
        data = check_format(data, cls.FORMAT, "FrozenPaths", required=("labels", "granularity", "arrays"))
        arrays = {k: decode_array(v) for k, v in data["arrays"].items()}
        return cls(tuple(data["labels"]), arrays["terms"], arrays["stream"], arrays["remainder"],
                   data["granularity"], data.get("max_length"))

    def to_dataframe(self):
        """One row per path: ``label, length`` (components it goes through) ``, norm`` (needs pandas)."""
        return dataframe({"label": list(self.labels), "length": [label_length(lab) for lab in self.labels],
                          "norm": self.norms})


# -- the plan: which prefixes each step extends, and the labels (pure Python, static) ------------

def _plan(n_layers: int, granularity: str, parallel_residual: bool, max_length: int | None):
    """The steps with the prefixes each extends, and the stream labels in output order.

    Prefixes live in blocks, one per step (block 0: ``emb``); step ``s`` extends the selected
    prefixes of all earlier blocks and writes block ``s + 1``:
    ``[L_γ(prefixes) …, b_γ]`` for each kind ``γ`` of the step. The output lists the newest block
    first, as :func:`jetjax.path_streams` lists its terms.
    """
    blocks = [[(EMB, 0)]]
    steps = []
    for layer, kinds in component_steps(n_layers, granularity, parallel_residual):
        sel = [(b, i) for b in reversed(range(len(blocks))) for i, (_, n) in enumerate(blocks[b])
               if max_length is None or n < max_length]
        with_bias = max_length is None or max_length >= 1
        new = []
        for kind in kinds:
            comp = Component(kind, layer)
            new += [(extend_label(blocks[b][i][0], comp), blocks[b][i][1] + 1) for b, i in sel]
            if with_bias:
                new.append((format_label([comp], decoded=False, source=BIAS), 1))
        steps.append((layer, kinds, tuple(sel), with_bias))
        blocks.append(new)
    labels = tuple(lab for blk in reversed(blocks) for lab, _ in blk)
    return steps, labels


def count_frozen_paths(n_layers: int, granularity: str = "block", *, parallel_residual: bool = False,
                       max_length: int | None = None) -> int:
    """How many paths :func:`frozen_path_streams` returns (``bias`` paths included, ``bias>dec`` not).

    Counted in closed form (nothing is enumerated): with ``S`` steps of ``w`` components each
    (``w = 2`` for the two branches of a parallel-residual layer, else 1), a path takes at most one
    component per step, so there are ``Σ_j C(S, j) w^j`` embedding paths and, for the constant of each
    component of step ``s``, ``Σ_j C(S−1−s, j) w^j`` more (``j`` up to the length limit).

    Example:
      >>> count_frozen_paths(2), count_frozen_paths(2, "branch"), count_frozen_paths(30, "branch", max_length=2)
      (7, 31, 3661)
      >>> count_frozen_paths(30, "branch") == 2 ** 61 - 1
      True
    """
    check_granularity(granularity)
    n_layers = check_nonnegative_int("n_layers", n_layers)
    max_length = check_nonnegative_int("max_length", max_length, optional=True)
    steps = component_steps(n_layers, granularity, parallel_residual)
    n, w = len(steps), (2 if granularity == "branch" and parallel_residual else 1)

    def chains(after: int, most: int | None) -> int:   # ways to pick ≤ most of the next `after` steps
        top = after if most is None else min(after, most)
        return sum(math.comb(after, j) * w ** j for j in range(top + 1)) if top >= 0 else 0

    longest = None if max_length is None else max_length - 1
    return chains(n, max_length) + sum(w * chains(n - 1 - s, longest) for s in range(n))


# -- the traced computation ------------------------------------------------------------------

def _branch(model: Model, kind: str, layer: int, params):
    return lambda x: getattr(model, kind)(layer, x, params=params)


def frozen_linear(fn, x_star):
    """``fn`` with its nonlinear factors frozen at ``x_star``: ``(fn(x_star), b, L, Lᵀ)`` where the frozen
    ``fn(v) = L(v) + b`` (``L`` and its transpose ``Lᵀ`` act on one ``[..., T, d]`` vector; ``jax.vmap``
    them for a batch).

    Example:
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(n_layers=1, d_model=8, d_head=4, d_mlp=16, vocab_size=11)
      >>> x = model.embed(jnp.asarray([1, 2, 3]))
      >>> out, b, lin, lin_t = frozen_linear(lambda v: model.mlp(0, v), x)
      >>> bool(jnp.allclose(lin(x) + b, out, atol=1e-5))   # at the actual input: the model's own output
      True
    """
    with freeze.record() as tape:
        out = fn(x_star)

    def frozen(v):
        with freeze.replay(tape):
            return fn(v)

    bias, lin = jax.linearize(frozen, jnp.zeros_like(x_star))
    lin_t = jax.linear_transpose(lin, x_star)
    return out, bias, lin, lambda w: lin_t(w)[0]


def _frozen_terms(model: Model, granularity: str, max_length: int | None, params, ids):
    """``(terms [P, ..., T, d], h_L)`` with the factors of the forward pass on ``ids``."""
    c = model.config
    steps, _ = _plan(c.n_layers, granularity, c.parallel_residual, max_length)
    h = model.embed(ids, params=params)
    blocks = [h[None]]
    for layer, kinds, sel, with_bias in steps:
        prefixes = None
        if sel:
            by_block: dict[int, list[int]] = {}
            for b, i in sel:
                by_block.setdefault(b, []).append(i)
            prefixes = jnp.concatenate([blocks[b][np.asarray(ix)] for b, ix in by_block.items()], axis=0)
        x_star, outs, new = h, [], []
        for kind in kinds:
            out, bias, lin, _ = frozen_linear(_branch(model, kind, layer, params), x_star)
            lin = jax.vmap(lin)
            outs.append(out)
            if prefixes is not None:
                new.append(lin(prefixes))
            if with_bias:
                new.append(bias[None])
        h = h + sum(outs[1:], outs[0])   # parallel branches: h + (attn + mlp), as the model adds them
        blocks.append(jnp.concatenate(new, axis=0) if new else jnp.zeros((0,) + h.shape, h.dtype))
    return jnp.concatenate(blocks[::-1], axis=0), h


def _streams_fn(model: Model, granularity: str, max_length: int | None):
    ref = weakref.ref(model)
    return jax.jit(lambda p, ids: _frozen_terms(ref(), granularity, max_length, p, ids))


def _attribution_fn(model: Model, granularity: str, max_length: int | None):
    ref = weakref.ref(model)

    def run(params, ids, direction):
        m = ref()
        terms, h_last = _frozen_terms(m, granularity, max_length, params, ids)
        with freeze.record() as tape:   # the whole decoder: a soft-capped unembedding has a factor too
            m.decode(h_last, params=params)

        def score(v):   # logit(target) − logit(foil) at the last position, frozen decoder: affine in v
            with freeze.replay(tape):
                return jnp.dot(m.decode(v, params=params)[-1], direction)

        bias_score, u = jax.value_and_grad(score)(jnp.zeros_like(h_last))
        scores = jnp.einsum("pd,d->p", terms[:, -1], u[-1])
        return scores, bias_score

    return jax.jit(run)


# -- public API ------------------------------------------------------------------------------

def _settings(granularity, max_length):
    check_granularity(granularity)
    return check_nonnegative_int("max_length", max_length, optional=True)


def _check_size(model: Model, granularity: str, max_length: int | None, max_paths, n_tokens: int) -> None:
    """Refuse, from :func:`count_frozen_paths` (closed form), settings with more than ``max_paths`` paths
    or whose ``P × T × d`` path vectors cannot be held, before any label is built."""
    max_paths = check_positive_int("max_paths", max_paths, optional=True)
    c = model.config

    def count(m):
        return count_frozen_paths(c.n_layers, granularity, parallel_residual=c.parallel_residual, max_length=m)

    n = count(max_length)
    fits = [(m, count(m)) for m in range(1, min(2 * c.n_layers, 8) + 1)]
    fits = [(m, k) for m, k in fits if k <= (n if max_paths is None else max_paths) and m != max_length]
    m, k = fits[-1] if fits else (1, count(1))
    shorter = f"max_length={m} gives {k} paths here"
    hint = (f"narrow them with max_length= ({shorter}), raise max_paths=, or use jj.top_paths / "
            "path_attribution(method='search'), which finds the largest paths without enumerating them")
    check_path_count(n, max_paths, f"frozen paths at granularity={granularity!r}, max_length={max_length} on "
                                   f"{c.n_layers} layers", hint)
    if jax.default_backend() == "cpu":
        check_path_memory(n, n_tokens, c.d_model, hint)


def frozen_path_streams(model: Model, ids, *, granularity: str = "block", max_length: int | None = None,
                        params=None, max_paths: int | None = MAX_PATHS) -> FrozenPaths:
    """Every frozen path's vector in ``h_L``: the analogue of :func:`jetjax.path_streams`.

    With the nonlinear factors (norm scales, attention patterns, activation ratios, gates, clipping)
    taken from the forward pass on ``ids``, each component is affine, ``γ(v) = L_γ(v) + b_γ``, and
    ``h_L = Σ_i terms[i]`` exactly (to float rounding), where path ``i`` starts at a source (``emb``, or
    ``bias>γ``: the constant ``b_γ``) and applies the linear parts ``L`` of the components it names,
    in order. ``granularity``: ``"block"`` (whole layers, ``block{l}``) or ``"branch"`` (``attn{l}``,
    ``mlp{l}``); ``max_length``: at most this many components per path (a ``bias`` path's own
    component counts), the rest summed exactly in ``remainder``. Paths are listed newest step first,
    as :func:`jetjax.path_streams` lists them; :func:`count_frozen_paths` gives their number, and
    more than ``max_paths`` (default 2^20; ``None``: no limit but memory) are refused before any is built.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> paths = frozen_path_streams(tiny_model(), [3, 1, 4])
      >>> paths.labels
      ('emb>block0>block1', 'bias>block0>block1', 'emb>block1', 'bias>block1', 'emb>block0', 'bias>block0', 'emb')
      >>> float(jnp.max(jnp.abs(paths.remainder))) < 1e-4
      True
    """
    max_length = _settings(granularity, max_length)
    ids = model.check_ids(ids)
    _check_size(model, granularity, max_length, max_paths, int(np.prod(ids.shape)))
    c = model.config
    _, labels = _plan(c.n_layers, granularity, c.parallel_residual, max_length)
    fn = per_model(model, "frozen", ("streams", granularity, max_length),
                   lambda: _streams_fn(model, granularity, max_length))
    terms, h_last = fn(model.params if params is None else params, ids)
    return FrozenPaths(labels, terms, h_last, h_last - jnp.sum(terms, axis=0), granularity, max_length)


def frozen_path_attribution(model: Model, ids, target, foil=None, position: int = -1, *,
                            granularity: str = "branch", max_length: int | None = None,
                            params=None, max_paths: int | None = MAX_PATHS) -> PathAttribution:
    """Which frozen paths push ``logit(target) − logit(foil)`` at ``position``; they add up exactly.

    **What one path's number means.** Hold every nonlinear factor of the model at its value in the
    actual forward pass on ``ids`` (each norm's ``1/sqrt(var + eps)`` per token, each attention
    pattern, each MLP neuron's ratio ``act(z)/z``, each gate, the final norm's scale). The model is
    then affine, and ``scores[i]`` is the part of ``logit(target) − logit(foil)`` at ``position`` that
    path ``i``'s source carries through the linear parts of the components it names and the frozen
    decoder: for ``emb>attn0>mlp3>dec``, the embedding (all positions) through attention 0 with its
    pattern fixed, then MLP 3 with its neurons' ratios fixed, then the final norm with its scale
    fixed and the unembedding. ``bias>γ>…`` paths start at component ``γ``'s constant (its output on a
    zero input with the factors frozen: its biases, the norms' biases it carries, clipped constants);
    ``bias>dec`` is the decoder's own constant. Unlike the paper's paths (:func:`jetjax.path_attribution`)
    no component sees the path's own vector nonlinearly: a path's number depends on the forward pass
    through the frozen factors, and the numbers of all paths add up to the model's.

    ``remainder = total − Σ scores``: 0 up to float rounding when every path is kept
    (``max_length=None``); with ``max_length`` it is exactly what the dropped paths add up to.
    ``order`` is reported as 0 (there is no jet order here). Only positions up to ``position`` are
    computed (the model is causal).

    Args:
      model: the model; ``ids``: one sequence ``[T]`` or a string to tokenize.
      target, foil: token ids or one-token strings; without ``foil`` the target's logit is attributed.
      position: the predicting position (default the last).
      granularity: ``"branch"`` (``attn{l}``, ``mlp{l}``) or ``"block"``.
      max_length: at most this many components per path (``None``: all paths; their number is
        :func:`count_frozen_paths`, which grows as ``2^L``, ``3^L`` or ``4^L``).
      max_paths: refuse settings with more paths than this (default 2^20; ``None``: no limit but the
        memory available), from the closed-form count, before any is built; deeper models need
        ``max_length`` or :func:`jetjax.top_paths`, which finds the largest paths without enumerating them.
      params: parameters to use instead of the model's own.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> att = frozen_path_attribution(tiny_model(), [3, 1, 4], target=7, foil=2)
      >>> len(att.labels), att.labels[-1], att.remainder_ratio < 1e-4
      (32, 'bias>dec', True)
    """
    max_length = _settings(granularity, max_length)
    ids = one_sequence(model, ids, "frozen_path_attribution")
    t = int(ids.shape[0])
    position = check_position(position, t)
    _check_size(model, granularity, max_length, max_paths, position + 1)
    target, target_str = token_id(model, target, "target")
    foil, foil_str = (None, None) if foil is None else token_id(model, foil, "foil")
    if foil == target:
        raise ValueError(f"foil and target are the same token ({target}); every path's score would be 0: pick "
                         "another foil, or none to attribute the target's logit")
    params = model.params if params is None else params
    dtype = model.embed(ids[:1], params=params).dtype
    direction = np.zeros(model.config.vocab_size, dtype)
    direction[target] += 1.0
    if foil is not None:
        direction[foil] -= 1.0
    c = model.config
    _, labels = _plan(c.n_layers, granularity, c.parallel_residual, max_length)
    labels = tuple(extend_label(lab, DEC) for lab in labels) + (format_label([], source=BIAS),)
    fn = per_model(model, "frozen", ("attribution", granularity, max_length),
                   lambda: _attribution_fn(model, granularity, max_length))
    scores, bias_score = fn(params, ids[: position + 1], jnp.asarray(direction))
    scores = np.append(np.asarray(scores, np.float64), float(bias_score))
    own = model.logits(ids) if params is model.params else model.logits(ids, params=params)  # the first is jitted
    logits = np.asarray(own[position], np.float64)
    total = float(logits[target] - (logits[foil] if foil is not None else 0.0))
    if count_nonfinite(scores) or not np.isfinite(total):
        warnings.warn(f"frozen_path_attribution: {count_nonfinite(scores)} of {len(scores)} path scores and "
                      f"{'the' if not np.isfinite(total) else 'not the'} model total are NaN or inf",
                      RuntimeWarning, stacklevel=2)
    return attribution_from_scores(labels, scores, total, target=target, foil=foil, position=position, order=0,
                                   granularity=granularity, target_str=target_str, foil_str=foil_str,
                                   semantics="frozen", method="frozen")
