"""Attribution graphs: every frozen path folded into nodes (components at positions) and edges, exactly.

Hold the nonlinear factors of the forward pass on ``ids`` fixed (norm scales, attention patterns,
activation ratios, gates: :mod:`jetjax.paths.frozen`). Every component ``n`` (``attn{l}``, ``mlp{l}``,
or one head ``attn{l}.h{h}``) is then affine in the stream it reads, ``o_n = L_n(h_in(n)) + b_n``,
and the number explained, ``y = logit(target) − logit(foil)`` at ``position`` through the frozen
decoder, is ``u · h_L[position] + c``. One backward pass through the frozen model gives ``g_n@q``, the
gradient of ``y`` with respect to the stream right after ``n`` at position ``q``. Then, exactly:

* ``DE_n@q = u · o_n@q`` at the predicting position (0 elsewhere): the direct effect;
* ``TE_n@q = g_n@q · (o_n@q − baseline_n)``: the change of ``y`` when that one output is replaced by its
  baseline in the frozen model (zero: the sum of every frozen path through the node);
* edge ``w(m@p → n@q) = g_n@q · [L_n(o_m@p placed at p)]_q``: the sum of every frozen path that leaves
  ``m@p`` and goes straight on to ``n@q``;
* the constant ``bias>n@q`` (``b_n@q``, where the component has one) is a source with one edge, into
  ``n@q``, of weight ``g_n@q · b_n@q``.

Identities (each tested): ``y = Σ DE + c``; for every writer ``TE = DE + Σ out-edges``; for every
component ``TE = Σ in-edges`` (its constant's edge included; zero baseline); every cut between steps
partitions ``y``. With ``heads=True`` the attention components split into their heads; the output
projection's own bias, which belongs to no head, is then the writer ``bias>attn{l}@q`` (its TE is
``DE + Σ out-edges`` like any writer).

Cost: one forward pass and one transposed linear map per component and query position (vmapped),
all in one compiled function per (model, length, heads).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.checks import check_position, count_nonfinite, json_safe
from jetjax._internal.compiled import per_model
from jetjax.html import graph_inline_html
from jetjax.models.layers import edit_heads, freeze
from jetjax.models.model import Model
from jetjax.paths.ablate import faithfulness as _faithfulness
from jetjax.paths.graph_view import graph_fields_from_neuronpedia, graph_html, is_neuronpedia, neuronpedia_dict
from jetjax.paths.labels import BIAS, EMB, LOGIT, SEP, parse_node
from jetjax.paths.plan import component_steps
from jetjax.paths.results import one_sequence, token_id
from jetjax.paths.slots import BASELINES, GraphSlots, check_baseline, reference_ids

__all__ = ["AttributionGraph", "attribution_graph", "BASELINES", "JSON_FORMATS"]

JSON_FORMATS = ("jetjax", "neuronpedia")


def _branch(model: Model, kind: str, layer: int, params):
    return lambda x: getattr(model, kind)(layer, x, params=params)


def _head_mask(mask):
    return lambda out: out * mask.astype(out.dtype)[:, None]


def _trace(model: Model, params, ids, heads: bool):
    """The frozen model on ``ids``: ``(outputs [W, T, d], parts)`` where ``parts[r]`` is, for receiver
    ``r`` (slot index), ``(constant [T, d], L, Lᵀ)``; plus the final stream. Runs inside a jit."""
    c = model.config
    h = model.embed(ids, params=params)
    zero = jnp.zeros_like(h)
    outputs, parts = [h], {}
    for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
        x, added = h, []
        for kind in kinds:
            fn = _branch(model, kind, layer, params)
            if heads and kind == "attn":
                n_heads = c.n_heads
                with freeze.record() as tape, edit_heads(None):
                    full = fn(x)

                def frozen(v, mask, fn=fn, tape=tape):
                    with freeze.replay(tape), edit_heads(_head_mask(mask)):
                        return fn(v)

                eye = jnp.eye(n_heads, dtype=h.dtype)
                b_out = frozen(zero, jnp.zeros((n_heads,), h.dtype))
                for head in range(n_heads):
                    const, lin = jax.linearize(lambda v, m=eye[head]: frozen(v, m), zero)
                    lin_t = jax.linear_transpose(lin, zero)
                    parts[len(outputs)] = (const - b_out, lin, lambda w, t=lin_t: t(w)[0])
                    outputs.append(lin(x) + const - b_out)
                outputs.append(b_out)
                added.append(full)
            else:
                with freeze.record() as tape:
                    out = fn(x)

                def frozen(v, fn=fn, tape=tape):
                    with freeze.replay(tape):
                        return fn(v)

                const, lin = jax.linearize(frozen, zero)
                lin_t = jax.linear_transpose(lin, zero)
                parts[len(outputs)] = (const, lin, lambda w, t=lin_t: t(w)[0])
                outputs.append(out)
                added.append(out)
        h = h + sum(added[1:], added[0])
    return outputs, parts, h


def _frozen_decoder(model: Model, params, h_last, position: int, direction):
    """``(c, u)``: the frozen decoder's number ``y(v) = u · v[position] + c`` (u: ``[T, d]``)."""
    with freeze.record() as tape:
        model.decode(h_last, params=params)

    def score(v):
        with freeze.replay(tape):
            return jnp.dot(model.decode(v, params=params)[position], direction)

    return jax.value_and_grad(score)(jnp.zeros_like(h_last))


def _graph_fn(model: Model, slots: GraphSlots, heads: bool, position: int):
    ref = weakref.ref(model)
    steps = np.asarray(slots.steps)

    def run(params, ids, direction, baseline):
        m = ref()
        outputs, parts, h_last = _trace(m, params, ids, heads)
        c, u = _frozen_decoder(m, params, h_last, position, direction)
        t = ids.shape[-1]
        # backward through the frozen model: g after each step
        grads = [None] * len(outputs)
        g = u
        for s in range(int(steps.max()), -1, -1):
            members = [i for i in range(len(outputs)) if steps[i] == s]
            for i in members:
                grads[i] = g
            g = g + sum(parts[i][2](g) for i in members if i in parts)
        grads[0] = g
        out = jnp.stack(outputs)                                        # [W, T, d]
        grad = jnp.stack(grads)
        de = jnp.einsum("td,wtd->wt", u, out)
        te = jnp.einsum("wtd,wtd->wt", grad, out - baseline[:, None, :])
        onehots = jnp.eye(t, dtype=out.dtype)
        edges, const_edges = [], []
        for r in slots.receivers:
            const, _, lin_t = parts[r]
            reads = jax.vmap(lambda e: lin_t(grads[r] * e[:, None]))(onehots)   # [T(q), T(p), d]
            edges.append(jnp.einsum("qpd,wpd->qwp", reads, out))
            const_edges.append(jnp.einsum("td,td->t", grads[r], const))
        return dict(de=de, te=te, edges=jnp.stack(edges), const_edges=jnp.stack(const_edges), constant=c,
                    consts=jnp.stack([parts[r][0] for r in slots.receivers]))

    return jax.jit(run)


def _value_fn(model: Model, slots: GraphSlots, heads: bool, position: int):
    """The frozen number of a subgraph: every writer recomputed from the in-edges it keeps."""
    ref = weakref.ref(model)
    steps = np.asarray(slots.steps)
    receivers = {r: k for k, r in enumerate(slots.receivers)}

    def run(params, ids, direction, keep_edges, keep_consts, keep_direct):
        m = ref()
        outputs, parts, h_last = _trace(m, params, ids, heads)
        c, u = _frozen_decoder(m, params, h_last, position, direction)
        new = [outputs[0]]
        for i in range(1, len(outputs)):
            if i not in receivers:                 # a source (the output projection's bias)
                new.append(outputs[i])
                continue
            k = receivers[i]
            const, lin, _ = parts[i]
            earlier = jnp.stack(new)                                        # [i, T, d]
            allowed = jnp.asarray(steps[:i] < steps[i], earlier.dtype)[None, :, None]
            streams = jnp.einsum("qwp,wpd->qpd", keep_edges[k][:, :i] * allowed, earlier)  # per reader q
            own = jax.vmap(lin)(streams)                                    # [T(q), T, d]
            new.append(jnp.diagonal(own, axis1=0, axis2=1).T + keep_consts[k][:, None] * const)
        return jnp.einsum("wt,td,wtd->", keep_direct, u, jnp.stack(new)) + c

    return jax.jit(run)


# -- the result --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class AttributionGraph:
    """An exact attribution graph of ``logit(target) − logit(foil)`` at ``position`` (see
    :func:`attribution_graph`; the module docstring has the definitions).

    Attributes:
      nodes: node ids in execution order (``emb@p``, ``bias>attn0@p``, ``attn0@p``, ``mlp0@p``, ...).
      de, te: ``[N]`` direct and total effect of each node on the number (float64).
      edges: ``[N, N]``, ``edges[j, i]`` the weight of the edge ``nodes[i] → nodes[j]`` (0 where none).
      total: the model's own number (real, unfrozen forward pass).
      constant: the frozen decoder's constant ``c`` (final-norm and unembedding biases).
      value: the frozen number of what the graph keeps (for a full graph ``Σ DE + c``, equal to
        ``total`` up to rounding; after :meth:`prune`, the exact value of the kept nodes and edges).
      direct: ``[N]`` bool, which direct edges (``node → logit``) the graph keeps.
      ids, tokens: the token ids up to ``position`` and their strings.
      target, foil, target_str, foil_str, position, baseline, heads: the settings.
    """

    nodes: tuple[str, ...]
    de: np.ndarray
    te: np.ndarray
    edges: np.ndarray
    direct: np.ndarray
    total: float
    constant: float
    value: float
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    target: int
    foil: int | None
    position: int
    baseline: str
    heads: bool
    target_str: str | None = None
    foil_str: str | None = None
    reference: tuple[str, ...] | None = None
    _source: object = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def node(self, node_id: str) -> int:
        """The index of ``node_id``; a ``KeyError`` naming the graph's kinds of node when absent."""
        parse_node(node_id)
        try:
            return self.index[node_id]
        except KeyError:
            raise KeyError(f"{node_id!r} is not a node of this graph ({len(self.nodes)} nodes, positions "
                           f"0..{self.position}, e.g. {self.nodes[:3]})") from None

    @property
    def components(self) -> tuple[str, ...]:
        """The nodes an ablation can remove: components and heads (not ``emb`` or constants)."""
        return tuple(n for n, role in zip(self.nodes, self._roles()) if role == "component")

    def in_edges(self, node_id: str) -> dict[str, float]:
        j = self.node(node_id)
        return {self.nodes[i]: float(self.edges[j, i]) for i in np.flatnonzero(self.edges[j])}

    def out_edges(self, node_id: str) -> dict[str, float]:
        i = self.node(node_id)
        out = {self.nodes[j]: float(self.edges[j, i]) for j in np.flatnonzero(self.edges[:, i])}
        if self.direct[i] and self.de[i] != 0:
            out[f"{LOGIT}@{self.position}"] = float(self.de[i])
        return out

    def top(self, n: int = 20) -> list[tuple[str, float]]:
        """The ``n`` nodes with the largest ``|TE|``, as ``(node, TE)``."""
        order = np.argsort(-np.abs(self.te), kind="stable")[:n]
        return [(self.nodes[i], float(self.te[i])) for i in order]

    def table(self, n: int = 20) -> str:
        """A text table of the ``n`` largest nodes (TE, DE) under a header with the number explained."""
        foil = f" − logit({self.foil_str!r})" if self.foil is not None else ""
        lines = [f"logit({self.target_str!r}){foil} at position {self.position} = {self.total:+.4f}; "
                 f"frozen value of this graph {self.value:+.4f} ({len(self.nodes)} nodes, "
                 f"{int(np.count_nonzero(self.edges))} edges, baseline {self.baseline})",
                 f"{'node':<22} {'token':<14} {'TE':>10} {'DE':>10}"]
        index = self.index
        for node, te in self.top(n):
            i = index[node]
            tok = self.tokens[parse_node(node).position]
            lines.append(f"{node:<22} {tok!r:<14.14} {te:>+10.4f} {self.de[i]:>+10.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        """The interactive page inline, as a notebook shows it (:func:`jetjax.html.graph_inline_html`)."""
        return graph_inline_html(self)

    # -- influence and pruning --------------------------------------------------------------
    def influence(self) -> np.ndarray:
        """Each node's share of the influence on the logit node, summing over every route.

        The edges into each node are normalised to sum to 1 in absolute value (``A[n, m] = |w(m→n)| /
        Σ_m' |w(m'→n)|``), the direct edges likewise (``l_m = |DE_m| / Σ |DE|``); a node's influence is
        ``l_m + Σ_n infl_n A[n, m]``: the share of the logit that flows through it, every route
        counted (circuit-tracer's definition, on the exact edges). Sources' influences add up to 1.
        """
        a = np.abs(self.edges)
        rows = a.sum(axis=1, keepdims=True)
        a = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
        d = np.abs(np.where(self.direct, self.de, 0.0))
        d = d / d.sum() if d.sum() > 0 else d
        infl = d.copy()
        for j in range(len(self.nodes) - 1, -1, -1):   # nodes are in execution order: edges go forward
            if infl[j]:
                infl[:j] += infl[j] * a[j, :j]
        return infl

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98, *, model: Model | None = None
              ) -> "AttributionGraph":
        """The smallest set of nodes holding ``node_threshold`` of the influence (:meth:`influence`) on the
        logit, then of their edges those carrying ``edge_threshold`` of the flow (an edge's flow is its
        receiver's influence times its normalised weight; a direct edge's, its ``l``). ``emb`` nodes are
        always kept; a constant is kept with its component. ``value`` of the result is the exact
        frozen number of what it keeps (recomputed in the model: ``model=``, default the graph's own
        while it is alive; ``nan`` for a loaded graph without one). ``te`` and ``de`` stay those of the
        full graph.

        Example:
          >>> import jetjax as jj
          >>> from jetjax.testing import tiny_model
          >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
          >>> small = graph.prune(0.5, 0.9)
          >>> len(small) < len(graph), abs(graph.value - graph.total) < 1e-4
          (True, True)
        """
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
        infl = self.influence()
        role = self._roles()
        ranked = [i for i in np.argsort(-infl, kind="stable") if role[i] == "component"]
        total = float(sum(infl[i] for i in ranked))
        keep = np.array([r == "source" for r in role])
        acc = 0.0
        for i in ranked:
            if total <= 0 or acc >= node_threshold * total:
                break
            keep[i] = True
            acc += infl[i]
        index = self.index
        for i in np.flatnonzero(np.array(role) == "constant"):   # a constant follows its component
            keep[i] = keep[index[self.nodes[i][len(BIAS + SEP):]]]
        # edges among kept nodes, by flow
        a = np.abs(self.edges)
        rows = a.sum(axis=1, keepdims=True)
        flow = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0) * infl[:, None]
        flow *= keep[:, None] & keep[None, :]
        d = np.abs(np.where(self.direct & keep, self.de, 0.0))
        dflow = d / d.sum() if d.sum() > 0 else d
        flows = np.concatenate([flow.ravel(), dflow])
        order = np.argsort(-flows, kind="stable")
        cum = np.cumsum(flows[order])
        n_keep = int(np.searchsorted(cum, edge_threshold * cum[-1] * (1 - 1e-12))) + 1 if cum[-1] > 0 else 0
        kept = np.zeros(flows.shape, bool)
        kept[order[:n_keep]] = True
        kept &= flows > 0
        edge_keep = kept[:flow.size].reshape(flow.shape)
        direct_keep = kept[flow.size:]
        sel = np.flatnonzero(keep)
        edges = np.where(edge_keep, self.edges, 0.0)
        value = self._frozen_value(edges, direct_keep, model)
        return dataclasses.replace(self, nodes=tuple(self.nodes[i] for i in sel), de=self.de[sel], te=self.te[sel],
                                   edges=edges[np.ix_(sel, sel)], direct=direct_keep[sel], value=value)

    def _roles(self) -> list[str]:
        """Per node: ``"component"`` (what ablations remove), ``"constant"`` (a component's constant,
        which feeds only it) or ``"source"`` (``emb``, and with heads the output projections' biases)."""
        index = self.index
        roles = []
        for n in self.nodes:
            if n.startswith(BIAS + SEP):
                roles.append("constant" if n[len(BIAS + SEP):] in index else "source")
            else:
                roles.append("source" if n.startswith(EMB + "@") else "component")
        return roles

    def _frozen_value(self, edges: np.ndarray, direct: np.ndarray, model: Model | None) -> float:
        model = model if model is not None else (self._source() if self._source is not None else None)
        if model is None:
            return float("nan")
        return _subgraph_value(model, self, edges != 0, direct)

    # -- ablations in the real model -------------------------------------------------------
    def faithfulness(self, mode: str = "mean", reference=None, *, model: Model | None = None, n_checked: int = 20):
        """How much of the number the graph's components carry in the **real** model: keep them,
        ablate every other component (``mode``: ``"zero"`` or ``"mean"`` over ``reference`` texts),
        ``f = (F(C) − F(∅)) / (F(M) − F(∅))``; and, for the ``n_checked`` largest nodes, the real effect
        of ablating each alone beside its frozen TE. See :func:`jetjax.paths.ablate.faithfulness`."""
        model = self._model(model)
        return _faithfulness(model, self, mode=mode, reference=reference, n_checked=n_checked)

    def _model(self, model: Model | None) -> Model:
        model = model if model is not None else (self._source() if self._source is not None else None)
        if model is None:
            raise ValueError("this graph's model is gone (a loaded graph, or the model was deleted): pass model=")
        return model

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        src, dst = np.nonzero(self.edges.T)
        return json_safe({
            "format": "jetjax.attribution_graph", "version": 1,
            "settings": {"target": self.target, "foil": self.foil, "target_str": self.target_str,
                         "foil_str": self.foil_str, "position": self.position, "baseline": self.baseline,
                         "heads": self.heads, "reference": list(self.reference) if self.reference else None},
            "total": self.total, "constant": self.constant, "value": self.value,
            "ids": list(self.ids), "tokens": list(self.tokens),
            "nodes": [{"id": n, "de": float(de), "te": float(te), "direct": bool(d)}
                      for n, de, te, d in zip(self.nodes, self.de, self.te, self.direct)],
            "edges": [{"source": self.nodes[i], "target": self.nodes[j], "weight": float(self.edges[j, i])}
                      for i, j in zip(src, dst)],
        })

    def to_json(self, path=None, *, format: str = "jetjax") -> str:
        """The graph as JSON (written to ``path`` when given; returned either way). ``format="jetjax"`` is
        jetjax's own; ``format="neuronpedia"`` is the schema circuit-tracer writes (its local server and
        Neuronpedia load it; :func:`jetjax.paths.graph_view.neuronpedia_dict`), with jetjax's values in
        fields the frontend ignores. Both round-trip through :meth:`load`."""
        if format not in JSON_FORMATS:
            raise ValueError(f"format must be one of {JSON_FORMATS}, got {format!r}")
        data = self.to_dict() if format == "jetjax" else neuronpedia_dict(self)
        text = json.dumps(data, allow_nan=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_html(self, path) -> Path:
        """Write the graph as one self-contained HTML page (no server, no network) to ``path`` and return
        it: positions as columns, layers as rows, sliders for the pruning thresholds
        (:func:`jetjax.paths.graph_view.graph_html`)."""
        path = Path(path)
        path.write_text(graph_html(self), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "AttributionGraph":
        """The graph of :meth:`to_dict`, or of :func:`~jetjax.paths.graph_view.neuronpedia_dict` (recognised
        by its top-level keys ``metadata``, ``qParams``, ``nodes``, ``links``; read by
        :func:`~jetjax.paths.graph_view.graph_fields_from_neuronpedia`)."""
        if is_neuronpedia(data):
            return cls(**graph_fields_from_neuronpedia(data))
        if not isinstance(data, dict) or data.get("format") != "jetjax.attribution_graph":
            raise ValueError("not a jetjax attribution graph (its 'format' must be 'jetjax.attribution_graph', "
                             "or a Neuronpedia graph's keys metadata, qParams, nodes, links)")
        nodes = tuple(n["id"] for n in data["nodes"])
        for n in nodes:
            parse_node(n)
        index = {n: i for i, n in enumerate(nodes)}
        if len(index) != len(nodes):
            raise ValueError("an attribution graph file lists a node twice")
        edges = np.zeros((len(nodes), len(nodes)))
        for e in data["edges"]:
            try:
                edges[index[e["target"]], index[e["source"]]] = float(e["weight"])
            except KeyError as err:
                raise ValueError(f"an edge names {err.args[0]!r}, which is not a node of the file") from None
        s = data["settings"]
        return cls(nodes=nodes, de=np.array([n["de"] for n in data["nodes"]], np.float64),
                   te=np.array([n["te"] for n in data["nodes"]], np.float64), edges=edges,
                   direct=np.array([n["direct"] for n in data["nodes"]], bool), total=float(data["total"]),
                   constant=float(data["constant"]), value=float(data["value"]) if data["value"] is not None
                   else float("nan"), ids=tuple(data["ids"]), tokens=tuple(data["tokens"]), target=s["target"],
                   foil=s["foil"], position=s["position"], baseline=s["baseline"], heads=s["heads"],
                   target_str=s["target_str"], foil_str=s["foil_str"],
                   reference=tuple(s["reference"]) if s["reference"] else None)

    @classmethod
    def from_json(cls, text: str) -> "AttributionGraph":
        """The graph of a :meth:`to_json` string, in either format (``"jetjax"`` or ``"neuronpedia"``)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON, so not an attribution graph: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path) -> "AttributionGraph":
        """A graph written by :meth:`to_json`, in either format (``"jetjax"`` or ``"neuronpedia"``)."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dataframe(self):
        """One row per node: ``node, position, token, de, te, influence`` (needs pandas)."""
        import pandas as pd

        positions = [parse_node(n).position for n in self.nodes]
        return pd.DataFrame({"node": self.nodes, "position": positions,
                             "token": [self.tokens[p] for p in positions], "de": self.de, "te": self.te,
                             "influence": self.influence()})


# -- building ----------------------------------------------------------------------------------

def _direction(model: Model, target: int, foil: int | None, dtype) -> np.ndarray:
    direction = np.zeros(model.config.vocab_size, dtype)
    direction[target] += 1.0
    if foil is not None:
        direction[foil] -= 1.0
    return direction


def _layout(slots: GraphSlots, consts: np.ndarray, t: int):
    """Node ids and, per node, ``(role, slot, position)``: role ``w`` (writer) or ``c`` (constant of a
    receiver). A receiver's constant gets nodes only where it is not identically zero."""
    ids, where = [], []
    receivers = {r: k for k, r in enumerate(slots.receivers)}
    for i, name in enumerate(slots.names):
        if i in receivers and np.any(consts[receivers[i]] != 0):
            for q in range(t):
                ids.append(f"{BIAS}{SEP}{name}@{q}")
                where.append(("c", i, q))
        for p in range(t):
            ids.append(f"{name}@{p}")
            where.append(("w", i, p))
    return tuple(ids), where


def _assemble(slots: GraphSlots, raw: dict, t: int):
    """Dense node arrays from the slot arrays of :func:`_graph_fn`."""
    raw = {k: np.asarray(v, np.float64) for k, v in raw.items()}
    nodes, where = _layout(slots, raw["consts"], t)
    receivers = {r: k for k, r in enumerate(slots.receivers)}
    n = len(nodes)
    writer_index = {(i, p): k for k, (role, i, p) in enumerate(where) if role == "w"}
    de, te, edges = np.zeros(n), np.zeros(n), np.zeros((n, n))
    steps = np.asarray(slots.steps)
    w_rows = np.array([writer_index[(i, p)] for i in range(len(slots.names)) for p in range(t)])
    for k, (role, i, p) in enumerate(where):
        if role == "w":
            de[k], te[k] = raw["de"][i, p], raw["te"][i, p]
            if i in receivers:
                r = receivers[i]
                src = raw["edges"][r, p] * (steps < steps[i])[:, None]          # [W, T]
                edges[k, w_rows] = src.ravel()
        else:
            r = receivers[i]
            te[k] = raw["const_edges"][r, p]
            edges[writer_index[(i, p)], k] = te[k]
    return nodes, where, de, te, edges


def _mean_outputs(model: Model, params, reference, slots: GraphSlots, heads: bool) -> np.ndarray:
    """``[W, d]``: each writer's output averaged over every token of the reference texts."""
    batch, mask = reference_ids(model, reference)
    fn = per_model(model, "graph", ("outputs", heads),
                   lambda: jax.jit(jax.vmap(lambda p, ids: jnp.stack(_trace(model, p, ids, heads)[0]),
                                            in_axes=(None, 0))))
    outs = np.asarray(fn(params, batch), np.float64)                    # [B, W, T, d]
    w = mask[:, None, :, None]
    mean = (outs * w).sum(axis=(0, 2)) / w.sum(axis=(0, 2))
    mean[0] = 0.0     # the embedding's baseline is zero: embeddings are always kept
    return mean


def attribution_graph(model: Model, ids, target, foil=None, *, position: int = -1, heads: bool = False,
                      baseline: str = "zero", reference=None, params=None) -> AttributionGraph:
    """The exact attribution graph of ``logit(target) − logit(foil)`` at ``position`` (module docstring).

    Args:
      model: the model; ``ids``: one sequence ``[T]`` or a string to tokenize.
      target, foil: token ids or one-token strings (without ``foil`` the target's logit).
      position: the predicting position (default the last); only positions up to it are nodes.
      heads: split each attention component into its heads (``attn{l}.h{h}@p``).
      baseline: ``"zero"`` or ``"mean"`` (the mean output of each component over every token of the
        ``reference`` texts): what ``te`` measures the change against. Edges and ``de`` do not depend
        on it.
      params: parameters to use instead of the model's own.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
      >>> graph.nodes[:4], graph.nodes[-1]
      (('emb@0', 'emb@1', 'emb@2', 'emb@3'), 'mlp1@3')
      >>> abs(float(graph.de.sum()) + graph.constant - graph.total) < 1e-4   # the number = Σ DE + c
      True
    """
    ids = one_sequence(model, ids, "attribution_graph")
    position = check_position(position, int(ids.shape[0]))
    if not isinstance(heads, bool):
        raise TypeError(f"heads must be True or False, got {heads!r}")
    baseline = check_baseline(baseline, reference)
    target, target_str = token_id(model, target, "target")
    foil, foil_str = (None, None) if foil is None else token_id(model, foil, "foil")
    if foil == target:
        raise ValueError(f"foil and target are the same token ({target}): the number would be 0")
    params = model.params if params is None else params
    ids = np.asarray(ids[: position + 1])
    t = int(ids.shape[0])
    slots = per_model(model, "graph", ("slots", heads), lambda: GraphSlots.of(model, heads))
    dtype = model.embed(ids[:1], params=params).dtype
    base = (_mean_outputs(model, params, reference, slots, heads) if baseline == "mean"
            else np.zeros((len(slots.names), model.config.d_model)))
    fn = per_model(model, "graph", ("graph", heads, t - 1), lambda: _graph_fn(model, slots, heads, t - 1))
    raw = fn(params, jnp.asarray(ids), jnp.asarray(_direction(model, target, foil, dtype)), jnp.asarray(base, dtype))
    constant = float(raw.pop("constant"))
    nodes, _, de, te, edges = _assemble(slots, raw, t)
    names = set(nodes)
    silent = np.array([n.startswith(BIAS + SEP) and n[len(BIAS + SEP):] not in names and de[i] == 0 and te[i] == 0
                       and not edges[:, i].any() for i, n in enumerate(nodes)])
    if silent.any():     # heads of a family without output-projection biases: no such sources
        sel = np.flatnonzero(~silent)
        nodes, de, te, edges = tuple(nodes[i] for i in sel), de[sel], te[sel], edges[np.ix_(sel, sel)]
    logits = np.asarray(model.logits(ids) if params is model.params else model.logits(ids, params=params),
                        np.float64)[-1]
    total = float(logits[target] - (logits[foil] if foil is not None else 0.0))
    bad = count_nonfinite(de) + count_nonfinite(te) + count_nonfinite(edges)
    if bad or not math.isfinite(total):
        warnings.warn(f"attribution_graph: {bad} node or edge values are NaN or inf (model total {total})",
                      RuntimeWarning, stacklevel=2)
    tokens = tuple(model.token_strings(ids)) if model.tokenizer is not None else tuple(str(int(i)) for i in ids)
    return AttributionGraph(nodes=nodes, de=de, te=te, edges=edges, direct=np.ones(len(nodes), bool), total=total,
                            constant=constant, value=float(de.sum()) + constant, ids=tuple(int(i) for i in ids),
                            tokens=tokens, target=target, foil=foil, position=t - 1, baseline=baseline, heads=heads,
                            target_str=target_str, foil_str=foil_str,
                            reference=tuple(reference) if reference else None, _source=weakref.ref(model))


def _subgraph_value(model: Model, graph: AttributionGraph, edge_keep: np.ndarray, direct_keep: np.ndarray) -> float:
    """The frozen number of ``graph``'s nodes with only the edges ``edge_keep`` (``[N, N]`` over
    ``graph.nodes``) and direct edges ``direct_keep``: every frozen path that uses only those."""
    ids = np.asarray(graph.ids)
    t = len(ids)
    slots = per_model(model, "graph", ("slots", graph.heads), lambda: GraphSlots.of(model, graph.heads))
    receivers = {r: k for k, r in enumerate(slots.receivers)}
    slot_of = {name: i for i, name in enumerate(slots.names)}
    w, r = len(slots.names), len(slots.receivers)
    keep_edges = np.zeros((r, t, w, t))
    keep_consts = np.zeros((r, t))
    keep_direct = np.zeros((w, t))
    parsed = [parse_node(n) for n in graph.nodes]
    for j, nj in enumerate(parsed):
        if nj.slot not in slot_of:        # a receiver's constant: its one edge is read below
            continue
        sj = slot_of[nj.slot]
        if direct_keep[j]:
            keep_direct[sj, nj.position] = 1.0
        if sj not in receivers:
            continue
        for i in np.flatnonzero(edge_keep[j]):
            ni = parsed[i]
            if ni.slot not in slot_of:
                keep_consts[receivers[sj], nj.position] = 1.0
            else:
                keep_edges[receivers[sj], nj.position, slot_of[ni.slot], ni.position] = 1.0
    fn = per_model(model, "graph", ("value", graph.heads, t - 1),
                   lambda: _value_fn(model, slots, graph.heads, t - 1))
    dtype = model.embed(ids[:1]).dtype
    direction = _direction(model, graph.target, graph.foil, dtype)
    value = fn(model.params, jnp.asarray(ids), jnp.asarray(direction), jnp.asarray(keep_edges, dtype),
               jnp.asarray(keep_consts, dtype), jnp.asarray(keep_direct, dtype))
    return float(value)
