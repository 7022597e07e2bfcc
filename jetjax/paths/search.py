"""Path search: the top-k frozen paths of a deep model without enumerating ``2^L``–``4^L`` of them.

In the frozen decomposition (:mod:`jetjax.paths.frozen`) every component is affine,
``γ(v) = L_γ(v) + b_γ``, and the score (a logit, a logit difference, any direction in logit space)
of the frozen decoder is linear in the last stream, ``score(h) = ⟨u, h⟩ + c``. A path's score is
``⟨u, L_{γ_k} ∘ … ∘ L_{γ_1}(source)⟩``. Two exact facts make a search possible:

* **Subtree sums.** All completions of a prefix ``p`` (a source pushed through the components it
  names, up to step ``s``) add up to ``⟨g_s, p⟩``, where ``g_s = (I + L_{s+1})ᵀ ⋯ (I + L_S)ᵀ u`` is
  one backward pass through the frozen model. So what the paths never looked at add up, exactly, to
  the sum of ``⟨g_s, p⟩`` over the dropped prefixes (minus the one completion of each that is
  scored: the prefix itself, decoded directly).
* **Bounds.** Any completion of ``p`` scores at most ``‖p‖ · β_s`` in absolute value, with
  ``β_S = ‖u‖`` and ``β_{s-1} = max(1, ‖L_s‖) · β_s`` (operator norms of the frozen linear parts);
  a completion through at least one more component, at most ``‖p‖ · γ_s`` with ``γ_S = 0`` and
  ``γ_{s-1} = max(γ_s, ‖L_s‖ · β_s)``.

:func:`top_paths` runs a beam over steps in execution order: every prefix in the beam either skips
the step's component or goes through it (and the component's constant starts a new ``bias`` path);
the ``beam`` prefixes of highest priority (:data:`PRIORITIES`) go on, the others are dropped after
their direct completion is scored and their subtree's exact sum added to ``unexplored``. Memory is
``beam × T × d`` (times the components per step), whatever the depth. When the largest bound over
everything dropped is below the k-th score found, no unexplored path can enter the top ``k``: the result is *certified*
equal to what enumerating every path would give.
"""

from __future__ import annotations

import math
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.compiled import per_model
from jetjax.paths.results import TopPaths, one_sequence, token_id
from jetjax._internal.checks import (available_memory, check_direction, check_position, check_positive_int,
                                     count_nonfinite)
from jetjax.paths.frozen import count_frozen_paths, frozen_linear
from jetjax.paths.plan import component_steps
from jetjax.paths.labels import BIAS, EMB, check_granularity, format_label
from jetjax.models.layers import freeze
from jetjax.models.model import Model
from jetjax._internal.parallel import constrain_leading, fetch, mesh_axis

__all__ = ["TopPaths", "top_paths", "default_beam", "SCORES", "RANKINGS", "PRIORITIES"]

SCORES = ("logit_diff", "logit", "centered_logit")
"""Named scores: ``logit(target) − logit(foil)``; ``logit(target)``; ``logit(target) − mean logit``
(the softmax-invariant version of the target's logit). An array ``[V]`` is also accepted: the
score is then ``⟨logits, direction⟩``."""

RANKINGS = ("abs", "positive", "negative")
PRIORITIES = ("product", "norm", "effect")
"""Which prefixes stay in the beam: the largest ``‖p‖`` (``"norm"``: the factor of the certifying bound),
the largest effect ``|⟨g_s, p⟩| + |⟨u, p⟩|`` (``"effect"``: what all completions of ``p`` add to the
score, and what ``p`` adds decoded directly), or the largest product of the two (``"product"``,
the default: on SmolLM2, top-100 at beam 512 for two prompts, it found paths with the largest
``Σ|score|``: 14.1 and 12.9 against 11.2 and 10.9 for ``"norm"`` and 13.6 and 10.5 for
``"effect"``)."""
"""What "top" means: the largest ``|score|``, the most positive, or the most negative scores."""

EXACT_NORM_SIZE = 2048
"""Operator norms are computed exactly (SVD of the materialised ``Td × Td`` map) up to this ``T·d``;
above it, by power iteration (see :data:`NORM_MARGIN`)."""

POWER_ITERATIONS = 40
NORM_MARGIN = 1.05
"""Power iteration approaches an operator norm from below; its estimate is multiplied by this."""


def default_beam(k: int) -> int:
    """The beam :func:`top_paths` keeps for ``k`` paths when none is given: ``max(256, 8k)``."""
    return max(256, 8 * k)


# -- the frozen model as linear maps ----------------------------------------------------------

def _component_names(n_layers, granularity, parallel_residual):
    return tuple(f"{kind}{layer}" for layer, kinds in component_steps(n_layers, granularity, parallel_residual)
                 for kind in kinds)


def _op_norm(lin, lin_t, like, exact: bool):
    n = like.size
    if exact:
        basis = jnp.eye(n, dtype=like.dtype).reshape((n,) + like.shape)
        mat = jax.vmap(lin)(basis).reshape(n, n)
        return jnp.linalg.norm(mat, 2)
    v0 = jax.random.normal(jax.random.PRNGKey(0), like.shape, like.dtype)

    def it(_, v):
        w = lin_t(lin(v))
        return w / (jnp.linalg.norm(w) + 1e-30)

    v = jax.lax.fori_loop(0, POWER_ITERATIONS, it, v0 / jnp.linalg.norm(v0))
    return jnp.linalg.norm(lin(v)) * NORM_MARGIN


def _rank_key(s, by):
    return jnp.abs(s) if by == "abs" else (s if by == "positive" else -s)


def _search_fn(model: Model, granularity: str, beam: int, k: int, by: str, priority: str, mesh):
    ref = weakref.ref(model)
    constrain = constrain_leading(mesh) or (lambda x: x)

    def run(params, ids, direction):
        m = ref()
        c = m.config
        plan = component_steps(c.n_layers, granularity, c.parallel_residual)
        n_comp = sum(len(kinds) for _, kinds in plan)
        h = h0 = m.embed(ids, params=params)
        exact = h.size <= EXACT_NORM_SIZE
        steps = []   # per step: [(component index, bias, L, Lᵀ, ‖L‖)]
        ci = 0
        for layer, kinds in plan:
            x_star, outs, parts = h, [], []
            for kind in kinds:
                fn = (lambda kd, ly: (lambda x: getattr(m, kd)(ly, x, params=params)))(kind, layer)
                out, bias, lin, lin_t = frozen_linear(fn, x_star)
                parts.append((ci, bias, lin, lin_t, _op_norm(lin, lin_t, x_star, exact)))
                outs.append(out)
                ci += 1
            h = h + sum(outs[1:], outs[0])
            steps.append(parts)
        with freeze.record() as tape:   # the whole decoder: a soft-capped unembedding has a factor too
            m.decode(h, params=params)

        def score(v):   # the frozen decoder's score at the last position: affine in v
            with freeze.replay(tape):
                return jnp.dot(m.decode(v, params=params)[-1], direction)

        dec_const, u = jax.value_and_grad(score)(jnp.zeros_like(h))
        # backward vectors g (all completions' sum) and bounds β after each step, last step first
        # (β: any completion, the empty one included; γ: completions through at least one more component,
        # the only ones a dropped prefix leaves unexplored)
        g_after, gamma_after = [None] * len(steps), [None] * len(steps)
        g, beta, gamma = u, jnp.linalg.norm(u), jnp.zeros((), u.dtype)
        for s in reversed(range(len(steps))):
            g_after[s], gamma_after[s] = g, gamma
            g = g + sum(lt(g) for _, _, _, lt, _ in steps[s])
            widest = jnp.max(jnp.stack([nm for *_, nm in steps[s]]))
            gamma = jnp.maximum(gamma, widest * beta)
            beta = beta * jnp.maximum(1.0, widest)

        def dots(vec, w):
            return jnp.einsum("btd,td->b", vec, w)

        def merge(top, cand_score, cand_mask, cand_src, cand_ok):
            t_score, t_mask, t_src, t_key = top
            key = jnp.where(cand_ok, _rank_key(cand_score, by), -jnp.inf)
            all_key = jnp.concatenate([t_key, key])
            best_key, idx = jax.lax.top_k(all_key, k)
            pick = lambda a, b: jnp.concatenate([a, b])[idx]
            return pick(t_score, cand_score), pick(t_mask, cand_mask), pick(t_src, cand_src), best_key

        dt = h.dtype
        vec = constrain(jnp.zeros((beam,) + h.shape, dt).at[0].set(h0))
        mask = jnp.zeros((beam, n_comp), bool)
        src = jnp.full((beam,), -1, jnp.int32)
        ok = jnp.zeros((beam,), bool).at[0].set(True)
        top = (jnp.zeros((k,), dt), jnp.zeros((k, n_comp), bool), jnp.zeros((k,), jnp.int32),
               jnp.full((k,), -jnp.inf, dt))
        explored = jnp.zeros((), dt)
        unexplored = jnp.zeros((), dt)
        bound = jnp.zeros((), dt)
        n_prefixes = jnp.zeros((), jnp.int32)
        n_scored = jnp.zeros((), jnp.int32)
        for s, parts in enumerate(steps):
            c_vec, c_mask, c_src, c_ok = [vec], [mask], [src], [ok]
            for comp, bias, lin, _, _ in parts:
                c_vec.append(jax.vmap(lin)(vec))
                c_mask.append(mask.at[:, comp].set(True))
                c_src.append(src)
                c_ok.append(ok)
            for comp, bias, _, _, _ in parts:
                c_vec.append(bias[None])
                c_mask.append(jnp.zeros((1, n_comp), bool).at[0, comp].set(True))
                c_src.append(jnp.full((1,), comp, jnp.int32))
                c_ok.append(jnp.ones((1,), bool))
            c_vec, c_mask = jnp.concatenate(c_vec), jnp.concatenate(c_mask)
            c_src, c_ok = jnp.concatenate(c_src), jnp.concatenate(c_ok)
            n_prefixes += jnp.sum(c_ok)
            norm = jnp.sqrt(jnp.einsum("btd,btd->b", c_vec, c_vec))
            stop = dots(c_vec, u)
            subtree = dots(c_vec, g_after[s])
            effect = jnp.abs(subtree) + jnp.abs(stop)
            prio = {"norm": norm, "effect": effect, "product": norm * effect}[priority]
            _, keep = jax.lax.top_k(jnp.where(c_ok, prio, -1.0), beam)
            dropped = c_ok.at[keep].set(False)
            explored += jnp.sum(jnp.where(dropped, stop, 0))
            unexplored += jnp.sum(jnp.where(dropped, subtree - stop, 0))
            n_scored += jnp.sum(dropped)
            # a step that drops nothing adds nothing (0, even where γ overflowed to inf on a deep model
            # with large operator norms: 0 · inf would make the whole bound NaN)
            widest_dropped = jnp.max(jnp.where(dropped, norm, 0))
            bound = jnp.maximum(bound, jnp.where(widest_dropped > 0, widest_dropped * gamma_after[s], 0))
            top = merge(top, stop, c_mask, c_src, dropped)
            vec, mask, src, ok = constrain(c_vec[keep]), c_mask[keep], c_src[keep], c_ok[keep]
        final = dots(vec, u)
        explored += jnp.sum(jnp.where(ok, final, 0)) + dec_const
        n_scored += jnp.sum(ok) + 1
        top = merge(top, final, mask, src, ok)
        top = merge(top, dec_const[None], jnp.zeros((1, n_comp), bool), jnp.full((1,), -2, jnp.int32),
                    jnp.ones((1,), bool))
        return top, explored, unexplored, bound, n_prefixes, n_scored

    return jax.jit(run)


def _label(names, mask_row, src) -> str:
    """A path's label from its source (-1: ``emb``, -2: the decoder's constant, else a component's
    constant) and the components it goes through."""
    comps = [] if src == -2 else [n for n, on in zip(names, mask_row) if on]
    return format_label(comps, source=EMB if src == -1 else BIAS)


# -- public API ------------------------------------------------------------------------------

def _check_beam_size(k: int, beam: int, n_tokens: int, d_model: int, width: int, n_comp: int,
                     available: int | None = None) -> None:
    """Refuse a beam whose step would not fit, from its closed-form size, before anything is traced.

    A step holds the beam's prefixes and their ``width`` extensions (``(1 + width)·beam + width``
    candidates of ``T × d`` floats, and their images under the components' linear parts) and one
    mask of components per candidate; ``lax.top_k`` indexes the candidates in int32.
    """
    cands = (1 + width) * beam + width
    way_out = f"lower beam= (default max(256, 8·k)) or k=; for k={k}, beam={max(k, 1)} is the least"
    if cands >= 2 ** 31:
        raise ValueError(f"top_paths: k={k} with beam={beam} ranks {cands} candidate prefixes per step, more than "
                         f"the 2^31 - 1 an int32 index reaches; {way_out}")
    need = cands * (2 * n_tokens * d_model * 4 + n_comp) + 3 * k * (n_comp + 8)
    available = available_memory() if available is None else available
    if available is not None and need > available:
        gib = 2.0 ** 30
        raise MemoryError(f"top_paths: k={k} with beam={beam} holds {cands} prefixes of {n_tokens}×{d_model} "
                          f"floats per step, about {need / gib:.1f} GiB, more than the {available / gib:.1f} GiB "
                          f"of memory available; {way_out}")


def _direction(model: Model, score, target, foil):
    """``(name, direction [V], target id, foil id)`` for ``score``, checked before any work."""
    vocab = model.config.vocab_size
    if not isinstance(score, str):
        try:
            np.asarray(score, np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"score must be one of {SCORES} or an array [V] of V={vocab} numbers, got "
                            f"{type(score).__name__}") from None
        d = check_direction(score, vocab, "a score direction")
        if target is not None or foil is not None:
            raise ValueError("target/foil go with a named score; a direction array is the score itself")
        return "direction", d, None, None
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; accepted: {', '.join(SCORES)} or an array [V]")
    if target is None:
        raise ValueError(f"score={score!r} needs a target token (id or one-token string)")
    t, _ = token_id(model, target, "target")
    d = np.zeros(vocab)
    if score == "logit_diff":
        if foil is None:
            raise ValueError("score='logit_diff' needs a foil token; use score='logit' for the target alone")
        f, _ = token_id(model, foil, "foil")
        if f == t:
            raise ValueError(f"foil and target are the same token ({t}); every path would score 0")
        d[t], d[f] = 1.0, -1.0
        return score, d, t, f
    if foil is not None:
        raise ValueError(f"score={score!r} takes no foil (got {foil!r}); use score='logit_diff'")
    d[t] = 1.0
    if score == "centered_logit":
        d -= 1.0 / vocab
    return score, d, t, None


def top_paths(model: Model, ids, k: int = 20, *, target=None, foil=None, score: str | None = None,
              by: str = "abs", position: int = -1, granularity: str = "branch", beam: int | None = None,
              priority: str = "product", mesh=None, params=None) -> TopPaths:
    """The ``k`` frozen paths that contribute most to a logit score, found by beam search.

    Paths and their scores are those of :func:`jetjax.frozen_path_attribution` (every nonlinear
    factor held at its value in the forward pass on ``ids``; the scores of all paths add up to the
    model's score exactly), but the ``2^L`` (block) to ``4^L`` (branch) paths are never enumerated:
    a beam of prefixes walks the components in execution order, keeping the ``beam`` prefixes of
    highest ``priority``; every dropped prefix's direct path is scored and the exact sum of its other
    completions goes into ``unexplored`` (see the module docstring). ``certified`` says whether the
    result provably equals full enumeration's top ``k``.

    Args:
      model, ids: the model; one sequence ``[T]`` or a string.
      k: how many paths to return (a positive int, at most ``beam``).
      target, foil: token ids or one-token strings for a named ``score``.
      score: ``"logit_diff"`` (default with a foil), ``"logit"`` (default without), ``"centered_logit"``,
        or an array ``[V]``: a direction in logit space (then no target/foil).
      by: ``"abs"`` (largest ``|score|``, default), ``"positive"`` or ``"negative"``.
      position: the predicting position (default the last; only positions up to it are computed).
      granularity: ``"branch"`` (``attn{l}``, ``mlp{l}``; default) or ``"block"``.
      beam: prefixes kept per step (default ``max(256, 8k)``; at most the number of paths, which a beam
        never exceeds; rounded up to a multiple of the mesh's devices). Memory is about
        ``2 (1 + components per step) · beam · T · d`` floats: a beam (or ``k``) that cannot fit in the
        memory available, or whose candidates exceed int32 indexing, is refused before any work.
      priority: which prefixes the beam keeps (:data:`PRIORITIES`); the result is exact and its
        certificate valid under each, only what is found differs.
      mesh: a one-axis mesh (:func:`jetjax._internal.parallel.path_mesh`) to spread the beam over devices.
      params: parameters to use instead of the model's own.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(n_layers=4)
      >>> res = top_paths(model, [3, 1, 4], 5, target=7, foil=2, by="positive", beam=192)
      >>> len(res), res.n_paths, abs(res.residual) < 1e-3
      (5, 512, True)
      >>> full = jj.frozen_path_attribution(model, [3, 1, 4], target=7, foil=2)
      >>> res.certified, res.labels == tuple(lab for lab, _ in full.top(5))   # full.top: most positive first
      (True, True)
    """
    k = check_positive_int("k", k)
    if by not in RANKINGS:
        raise ValueError(f"unknown ranking by={by!r}; accepted: {', '.join(RANKINGS)}")
    if priority not in PRIORITIES:
        raise ValueError(f"unknown priority={priority!r}; accepted: {', '.join(PRIORITIES)}")
    check_granularity(granularity)
    _, _, n_dev = mesh_axis(mesh)
    if beam is None:
        beam = default_beam(k)
    beam = check_positive_int("beam", beam)
    if beam < k:
        raise ValueError(f"beam={beam} is too small to return k={k} paths: the beam must hold at least k "
                         f"prefixes (use beam >= {k}, e.g. {default_beam(k)})")
    if score is None:
        score = "logit_diff" if foil is not None else "logit"
    name, direction, target_id, foil_id = _direction(model, score, target, foil)
    ids = one_sequence(model, ids, "top_paths")
    t = int(ids.shape[0])
    position = check_position(position, t)
    c = model.config
    n_paths = count_frozen_paths(c.n_layers, granularity, parallel_residual=c.parallel_residual) + 1
    if k > n_paths:
        warnings.warn(f"k={k} exceeds the {n_paths} paths of this model at granularity={granularity!r}; "
                      f"returning all {n_paths}", stacklevel=2)
    # every prefix is itself a path: a beam of n_paths never drops one, a larger one only adds padding
    beam, k = -(-min(beam, n_paths) // n_dev) * n_dev, min(k, n_paths)
    _check_beam_size(k, beam, position + 1, c.d_model, len(component_steps(1, granularity, c.parallel_residual)[0][1]),
                     len(_component_names(c.n_layers, granularity, c.parallel_residual)))
    params = model.params if params is None else params
    dtype = model.embed(ids[:1], params=params).dtype
    fn = per_model(model, "search", (granularity, beam, k, by, priority, mesh),
                   lambda: _search_fn(model, granularity, beam, k, by, priority, mesh))
    (t_score, t_mask, t_src, t_key), explored, unexplored, bound, n_pref, n_scored = fn(
        params, ids[: position + 1], jnp.asarray(direction, dtype))
    t_score, t_mask, t_src, t_key = map(fetch, (t_score, t_mask, t_src, t_key))
    explored, unexplored, bound, n_pref, n_scored = map(fetch, (explored, unexplored, bound, n_pref, n_scored))
    found = np.isfinite(t_key)
    names = _component_names(c.n_layers, granularity, c.parallel_residual)
    labels = tuple(_label(names, t_mask[i], int(t_src[i])) for i in np.flatnonzero(found))
    scores = t_score[found].astype(np.float64)
    own = model.logits(ids) if params is model.params else model.logits(ids, params=params)
    total = float(np.asarray(own[position], np.float64) @ direction)
    explored, unexplored, bound = float(explored), float(unexplored), float(bound)
    kth = float(t_key[found][-1]) if found.any() else -math.inf
    if count_nonfinite(scores) or not np.isfinite(total) or not np.isfinite(unexplored):
        warnings.warn("top_paths: NaN or inf in the path scores, the unexplored sum or the model's total",
                      RuntimeWarning, stacklevel=2)
    return TopPaths(labels, scores, total, explored, unexplored, total - explored - unexplored, n_paths,
                    int(n_pref), int(n_scored), bound, bool(bound <= kth), (position + 1) * c.d_model <= EXACT_NORM_SIZE,
                    name, by, beam, granularity, position, target_id, foil_id)

