"""Interventions in the real (unfrozen) model: ablations, faithfulness of a graph, circuit search.

The frozen model (:mod:`jetjax.paths.graph`) is exact but it is not the model: when a component is
removed, attention patterns, norm scales and gates downstream move. So a graph is judged here, in
the real model: keep some components, replace every other one's output by its baseline (``"zero"``, or
``"mean"``: its mean output over every token of reference texts), run the model on from there, and
read the number again. ``f = (F(C) − F(∅)) / (F(M) − F(∅))`` where ``F(M)`` is the model's number,
``F(∅)`` the number with every component ablated (embeddings kept) and ``F(C)`` with the kept set
``C`` (path patching's, ACDC's and EAP's faithfulness).

Heads (``attn{l}.h{h}@p``) are ablated before the output projection: the head's output ``[d_head]`` at
that position becomes zero or its mean over the reference tokens.
"""

from __future__ import annotations

import dataclasses
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.compiled import per_model
from jetjax.models.layers import edit_heads
from jetjax.models.model import Model
from jetjax.paths.labels import EMB, parse_node
from jetjax.paths.plan import component_steps
from jetjax.paths.results import one_sequence
from jetjax.paths.slots import GraphSlots, check_baseline, reference_ids

__all__ = ["ablate", "faithfulness", "Faithfulness", "Evaluator"]


# -- the real forward pass with ablations ---------------------------------------------------------

def _receivers(model: Model, heads: bool):
    """Per receiver: ``(layer, kind, head or None)`` in execution order, and the slots."""
    slots = GraphSlots.of(model, heads)
    out = []
    for r in slots.receivers:
        node = parse_node(slots.names[r] + "@0")
        out.append((node.layer, node.kind, node.head))
    return slots, out


def _forward(model: Model, params, ids, drop, base, head_base, heads: bool, capture: bool = False):
    """Logits of the real model with receiver ``k``'s output at position ``p`` replaced by its baseline
    where ``drop[k, p] == 1`` (``base[k]``: components' ``[d]``; ``head_base[l, h]``: heads' ``[d_head]``).
    With ``capture``: also each component's output and each head's (pre-projection) output."""
    c = model.config
    h = model.embed(ids, params=params)
    k = 0
    outs, head_outs = [], []
    for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
        x, added = h, []
        for kind in kinds:
            fn = getattr(model, kind)
            if heads and kind == "attn":
                mask = drop[k:k + c.n_heads].T                            # [T, H]

                def edit(o, mask=mask, layer=layer):
                    if capture:
                        head_outs.append(o)
                    m = mask.astype(o.dtype)[..., None]
                    return o + m * (head_base[layer].astype(o.dtype) - o)

                with edit_heads(edit):
                    out = fn(layer, x, params=params)
                k += c.n_heads
            else:
                out = fn(layer, x, params=params)
                if capture:
                    outs.append(out)
                m = drop[k].astype(out.dtype)[:, None]
                out = out + m * (base[k].astype(out.dtype) - out)
                k += 1
            added.append(out)
        h = h + sum(added[1:], added[0])
    logits = model.decode(h, params=params)
    return (logits, outs, head_outs) if capture else logits


def _number_fn(model: Model, heads: bool):
    ref = weakref.ref(model)

    def number(params, ids, direction, drop, base, head_base):
        logits = _forward(ref(), params, ids, drop, base, head_base, heads)
        return jnp.dot(logits[-1], direction)

    return jax.jit(jax.vmap(number, in_axes=(None, None, None, 0, None, None)))


@dataclasses.dataclass(frozen=True)
class _Baselines:
    base: np.ndarray        # [R, d]: per receiver (components; zeros for heads)
    head_base: np.ndarray   # [L, H, d_head]


def _baselines(model: Model, params, mode: str, reference, heads: bool) -> _Baselines:
    """Zero, or the mean real outputs over every token of ``reference`` (components: after their output
    projection; heads: before it)."""
    slots, recv = _receivers(model, heads)
    c = model.config
    d_head = c.d_head
    if mode == "zero":
        return _Baselines(np.zeros((len(recv), c.d_model)), np.zeros((c.n_layers, c.n_heads, d_head)))
    batch, mask = reference_ids(model, reference)

    def collect(p, ids):
        zeros = jnp.zeros((len(recv), ids.shape[-1]), jnp.float32)
        _, outs, head_outs = _forward(model, p, ids, zeros, jnp.zeros((len(recv), c.d_model)),
                                      jnp.zeros((c.n_layers, c.n_heads, d_head)), heads, capture=True)
        return (jnp.stack(outs) if outs else jnp.zeros((0, ids.shape[-1], c.d_model)),
                jnp.stack(head_outs) if head_outs else jnp.zeros((0, ids.shape[-1], c.n_heads, d_head)))

    fn = per_model(model, "ablate", ("collect", heads), lambda: jax.jit(jax.vmap(collect, in_axes=(None, 0))))
    outs, head_outs = (np.asarray(a, np.float64) for a in fn(params, batch))
    n = mask.sum()
    comp_mean = np.einsum("bt,bktd->kd", mask, outs) / n                  # [components, d]
    base = np.zeros((len(recv), c.d_model))
    head_base = np.zeros((c.n_layers, c.n_heads, d_head))
    if heads:
        head_base[:] = np.einsum("bt,blthd->lhd", mask, head_outs) / n
    i = 0
    for k, (_, kind, head) in enumerate(recv):
        if head is None:
            base[k] = comp_mean[i]
            i += 1
    return _Baselines(base, head_base)


def _drop_masks(model: Model, heads: bool, t: int, keep_sets) -> np.ndarray:
    """``[B, R, T]``: 1 where a receiver at a position is ablated (everything not in the keep set)."""
    slots, recv = _receivers(model, heads)
    index = {slots.names[r]: k for k, r in enumerate(slots.receivers)}
    masks = np.ones((len(keep_sets), len(recv), t))
    for b, keep in enumerate(keep_sets):
        for node in keep:
            n = parse_node(node)
            masks[b, index[n.slot], n.position] = 0.0
    return masks


class Evaluator:
    """The real number for batches of keep sets, counting forward passes."""

    def __init__(self, model: Model, ids, target: int, foil: int | None, mode: str, reference, heads: bool,
                 params=None):
        self.model, self.heads = model, heads
        self.params = model.params if params is None else params
        self.ids = jnp.asarray(ids)
        self.t = int(self.ids.shape[0])
        dtype = model.embed(np.asarray(ids[:1]), params=self.params).dtype
        direction = np.zeros(model.config.vocab_size, dtype)
        direction[target] += 1.0
        if foil is not None:
            direction[foil] -= 1.0
        self.direction = jnp.asarray(direction)
        b = _baselines(model, self.params, mode, reference, heads)
        self.base, self.head_base = jnp.asarray(b.base, dtype), jnp.asarray(b.head_base, dtype)
        self.fn = per_model(model, "ablate", ("number", heads), lambda: _number_fn(model, heads))
        self.passes = 0
        full, empty = self.numbers([None, ()])
        self.full, self.empty = float(full), float(empty)

    def numbers(self, keep_sets) -> np.ndarray:
        """The real number with each keep set (``None``: nothing ablated)."""
        masks = _drop_masks(self.model, self.heads, self.t, [k if k is not None else () for k in keep_sets])
        for b, k in enumerate(keep_sets):
            if k is None:
                masks[b] = 0.0
        self.passes += len(keep_sets)
        out = self.fn(self.params, self.ids, self.direction, jnp.asarray(masks, self.base.dtype), self.base,
                      self.head_base)
        return np.asarray(out, np.float64)

    def f(self, keep_sets) -> np.ndarray:
        span = self.full - self.empty
        return (self.numbers(keep_sets) - self.empty) / span if span else np.full(len(keep_sets), np.nan)


# -- public API ------------------------------------------------------------------------------------

def _check_nodes(model: Model, nodes, t: int, heads: bool, what: str = "nodes") -> tuple[str, ...]:
    slots, _ = _receivers(model, heads)
    names = {slots.names[r] for r in slots.receivers}
    out = []
    for node in nodes:
        n = parse_node(node)
        if n.slot not in names:
            kinds = "attn{l}.h{h}@p and mlp{l}@p" if heads else "attn{l}@p and mlp{l}@p"
            raise ValueError(f"{what}: {node!r} cannot be ablated: this model's {'head-level ' if heads else ''}"
                             f"components are {kinds} with l in 0..{model.config.n_layers - 1}"
                             + (f", h in 0..{model.config.n_heads - 1}" if heads else ""))
        if n.position >= t:
            raise IndexError(f"{what}: {node!r} is at position {n.position}, out of range for {t} tokens")
        out.append(str(n))
    return tuple(out)


def ablate(model: Model, ids, *, nodes=(), edges=(), mode: str = "zero", reference=None, params=None):
    """Logits ``[T, V]`` of the real model with ``nodes`` (``"attn3@5"``, ``"mlp0@2"``, ``"attn3.h2@5"``)
    replaced by their baseline, everything downstream recomputed; and ``edges`` (``("mlp0@2", "attn3@5")``
    pairs, source then receiver) cut: the receiver at its position reads the stream without the
    source's output (replaced by its baseline), while every other reader still sees it (path patching).

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model()
      >>> logits = jj.ablate(model, [3, 1, 4], nodes=["mlp0@1"])
      >>> bool(jnp.allclose(logits[0], model.logits([3, 1, 4])[0])), bool(jnp.allclose(logits[1], model.logits([3, 1, 4])[1]))
      (True, False)
    """
    ids = one_sequence(model, ids, "ablate")
    mode = check_baseline(mode, reference)
    t = int(ids.shape[0])
    heads = any(parse_node(n).head is not None for n in nodes)
    nodes = _check_nodes(model, nodes, t, heads)
    edges = tuple(edges)
    if edges and heads:
        raise ValueError("edges cannot be combined with head nodes (attn{l}.h{h}@p) yet: ablate heads in a "
                         "separate call, or ablate whole attention components (attn{l}@p) with the edges")
    component_slots = GraphSlots.of(model, False)
    step = dict(zip(component_slots.names, component_slots.steps))      # emb: -1; a parallel layer: one step
    for pair in edges:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"edges are (source, receiver) pairs of node ids, got {pair!r}")
        src, dst = (parse_node(x) for x in pair)
        if src.head is not None or dst.head is not None:
            raise ValueError(f"edge {pair!r}: edges between heads are not ablatable yet; ablate the head's node")
        if src.slot != EMB:
            _check_nodes(model, [pair[0]], t, False, "edges")
        _check_nodes(model, [pair[1]], t, False, "edges")
        if src.position > dst.position:
            raise ValueError(f"edge {pair!r}: a receiver at position {dst.position} cannot read position "
                             f"{src.position} (the model is causal)")
        if step[src.slot] >= step[dst.slot]:
            raise ValueError(f"edge {pair!r}: {dst.slot} does not read {src.slot}'s output (a source must run "
                             "in an earlier step than its receiver; in parallel-residual models a layer's attn "
                             "and mlp read the same stream)")
    params = model.params if params is None else params
    b = _baselines(model, params, mode, reference, heads)
    masks = _drop_masks(model, heads, t, [()])[0] * 0.0
    for node in nodes:
        slots, _ = _receivers(model, heads)
        index = {slots.names[r]: k for k, r in enumerate(slots.receivers)}
        n = parse_node(node)
        masks[index[n.slot], n.position] = 1.0
    if not edges:
        dtype = model.embed(np.asarray(ids[:1]), params=params).dtype
        return _forward(model, params, jnp.asarray(ids), jnp.asarray(masks, dtype), jnp.asarray(b.base, dtype),
                        jnp.asarray(b.head_base, dtype), heads)
    return _forward_with_edges(model, params, jnp.asarray(ids), masks, b, edges)


def _forward_with_edges(model: Model, params, ids, drop, b: _Baselines, edges):
    """Component-level forward with node ablations and edge cuts (eager: edges are few)."""
    c = model.config
    h = model.embed(ids, params=params)
    outputs = {EMB: h}
    base = {}
    by_receiver: dict[str, list] = {}
    for src, dst in edges:
        by_receiver.setdefault(parse_node(dst).slot, []).append((parse_node(src), parse_node(dst)))
    k = 0
    for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
        x, added = h, []
        for kind in kinds:
            name = f"{kind}{layer}"
            fn = getattr(model, kind)
            out = fn(layer, x, params=params)
            for q in sorted({dst.position for _, dst in by_receiver.get(name, [])}):
                cut = x
                for src, dst in by_receiver[name]:
                    if dst.position == q:
                        src_base = base.get(src.slot, jnp.zeros_like(h[0]))
                        cut = cut.at[src.position].add(src_base - outputs[src.slot][src.position])
                out = out.at[q].set(fn(layer, cut, params=params)[q])
            out = out + jnp.asarray(drop[k], out.dtype)[:, None] * (jnp.asarray(b.base[k], out.dtype) - out)
            outputs[name], base[name] = out, jnp.asarray(b.base[k], out.dtype)
            k += 1
            added.append(out)
        h = h + sum(added[1:], added[0])
    return model.decode(h, params=params)


@dataclasses.dataclass(frozen=True)
class Faithfulness:
    """How much of the number a graph's components carry in the real model (see :func:`faithfulness`).

    Attributes:
      f: ``(F(C) − F(∅)) / (F(M) − F(∅))``; full, empty, kept: ``F(M)``, ``F(∅)``, ``F(C)``.
      n_kept, n_components: components kept, components in the model's graph (positions up to the
        predicting one).
      checked, frozen_te, real_effect: the largest nodes by ``|TE|``, their frozen TE and the real
        effect of ablating each alone (``F(M) − F(M without it)``).
      sign_agreement: the share of ``checked`` whose real effect has the sign of its TE;
      spearman: rank correlation of the two.
    """

    f: float
    full: float
    empty: float
    kept: float
    n_kept: int
    n_components: int
    mode: str
    checked: tuple[str, ...]
    frozen_te: np.ndarray
    real_effect: np.ndarray
    sign_agreement: float
    spearman: float

    def __str__(self) -> str:
        return (f"faithfulness f = {self.f:.3f} ({self.mode} ablation): F(M) {self.full:+.4f}, F(∅) "
                f"{self.empty:+.4f}, F(C) {self.kept:+.4f} with {self.n_kept} of {self.n_components} components; "
                f"top {len(self.checked)} nodes: sign agreement {self.sign_agreement:.2f}, Spearman "
                f"{self.spearman:.2f}")


def _graph_components(model: Model, heads: bool, t: int) -> list[str]:
    slots, _ = _receivers(model, heads)
    return [f"{slots.names[r]}@{p}" for r in slots.receivers for p in range(t)]


def faithfulness(model: Model, graph, *, mode: str = "mean", reference=None,
                 n_checked: int = 20) -> Faithfulness:
    """The real-model faithfulness of ``graph``'s components (module docstring), and for its
    ``n_checked`` largest nodes by ``|TE|`` the real effect of ablating each one alone."""
    mode = check_baseline(mode, reference)
    ev = Evaluator(model, np.asarray(graph.ids), graph.target, graph.foil, mode, reference, graph.heads)
    kept = graph.components
    te = dict(zip(graph.nodes, graph.te))
    checked = sorted(kept, key=lambda n: -abs(te[n]))[:n_checked]
    everything = _graph_components(model, graph.heads, ev.t)
    keep_all_but = [tuple(x for x in everything if x != n) for n in checked]
    values = ev.numbers([tuple(kept)] + keep_all_but)
    span = ev.full - ev.empty
    f = (values[0] - ev.empty) / span if span else float("nan")
    real = ev.full - values[1:]
    frozen = np.array([te[n] for n in checked])
    agree = float(np.mean(np.sign(real) == np.sign(frozen))) if checked else float("nan")
    if len(checked) > 2:
        from scipy.stats import spearmanr

        rho = float(spearmanr(frozen, real).statistic)
    else:
        rho = float("nan")
    return Faithfulness(float(f), ev.full, ev.empty, float(values[0]), len(kept), len(everything), mode,
                        tuple(checked), frozen, real, agree, rho)
