"""The attribution graph against exact identities and against enumerated frozen paths.

References are independent of the graph code: the model's own logits, :func:`jetjax.frozen_path_attribution`
(which enumerates every frozen path), and the flow identities of a linear DAG.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.labels import SEP, parse_node
from jetjax.testing import tiny_model

IDS = [3, 1, 4, 1, 5]
MODELS = {  # name -> kwargs of tiny_model
    "gpt2": dict(arch="gpt2"),
    "gpt2_parallel": dict(arch="gpt2", parallel_residual=True),
    "llama": dict(arch="llama"),
}


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@functools.lru_cache(maxsize=None)
def _model(name="gpt2", x64=False):
    """One model per setting for the whole module, so its compiled graph functions are shared."""
    return tiny_model(**MODELS[name], dtype=jnp.float64 if x64 else jnp.float32)


def _roles(graph):
    return graph._roles()


def _check_identities(graph, tol):
    roles = _roles(graph)
    out_flow, in_flow = graph.edges.sum(axis=0), graph.edges.sum(axis=1)
    scale = max(1.0, float(np.abs(graph.te).max()))
    # the number = Σ DE + c, and it is the model's own number
    assert abs(graph.de.sum() + graph.constant - graph.total) < tol * scale
    for i, role in enumerate(roles):
        if role != "constant":       # every writer: TE = DE + Σ out-edges
            assert abs(graph.te[i] - graph.de[i] - out_flow[i]) < tol * scale, graph.nodes[i]
        if role == "component":      # TE = Σ in-edges (its constant's edge included)
            assert abs(graph.te[i] - in_flow[i]) < tol * scale, graph.nodes[i]
        if role == "constant":       # one edge at most (0 where the component cannot reach the logit), into its own component
            assert [graph.nodes[j] for j in np.flatnonzero(graph.edges[:, i])] in ([], [graph.nodes[i][len("bias>"):]])
            assert graph.te[i] == graph.edges[graph.node(graph.nodes[i][len("bias>"):]), i]
    # the sources carry the whole number
    sources = sum(graph.te[i] for i, r in enumerate(roles) if r != "component")
    assert abs(sources + graph.constant - graph.total) < tol * scale
    # every cut between steps partitions it: the edges from writers before the cut into readers after it,
    # their direct edges, and what the sources after the cut add
    steps = [_step(n) for n in graph.nodes]
    for cut in sorted(set(steps)):
        crossing = sum(graph.de[i] for i, s in enumerate(steps) if s <= cut and roles[i] != "constant")
        for j, sj in enumerate(steps):
            if sj > cut:
                crossing += sum(graph.edges[j, i] for i in np.flatnonzero(graph.edges[j])
                                if steps[i] <= cut and roles[i] != "constant")
                if roles[j] == "component":
                    crossing += sum(graph.edges[j, i] for i in np.flatnonzero(graph.edges[j]) if roles[i] == "constant")
                if roles[j] == "source":     # an output projection's bias after the cut: a source of its own
                    crossing += graph.te[j]
        assert abs(crossing + graph.constant - graph.total) < tol * scale, cut


def _step(node):
    n = parse_node(node)
    if n.kind == "emb":
        return -1
    return 2 * n.layer + (n.kind == "mlp")


@pytest.mark.parametrize("heads", [False, True], ids=["components", "heads"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_identities_float64(x64, name, heads):
    model = _model(name, True)
    graph = jj.attribution_graph(model, IDS, target=5, foil=2, heads=heads)
    assert graph.de.dtype == np.float64
    logits = np.asarray(model.logits(IDS), np.float64)[-1]
    assert graph.total == pytest.approx(logits[5] - logits[2], abs=1e-12)
    _check_identities(graph, 1e-10)


@pytest.mark.parametrize("heads", [False, True], ids=["components", "heads"])
def test_identities_float32(heads):
    graph = jj.attribution_graph(_model("llama"), IDS, target=5, foil=2, heads=heads, position=3)
    assert graph.position == 3 and len(graph.tokens) == 4
    _check_identities(graph, 2e-5)


def test_parallel_residual_steps_do_not_read_each_other(x64):
    graph = jj.attribution_graph(_model("gpt2_parallel", True), IDS, 5, 2)
    i, j = graph.node("attn0@2"), graph.node("mlp0@2")
    assert graph.edges[j, i] == 0 and graph.edges[i, j] == 0
    assert graph.edges[graph.node("attn1@4"), i] != 0      # the next step reads it (mlp1@2 cannot reach position 4)
    # its own identities with attn and mlp in one step
    roles = _roles(graph)
    out_flow = graph.edges.sum(axis=0)
    for k, role in enumerate(roles):
        if role != "constant":
            assert abs(graph.te[k] - graph.de[k] - out_flow[k]) < 1e-10


def _sum(att, keep):
    return sum(s for label, s in zip(att.labels, att.scores) if keep(label.split(SEP)))


@pytest.mark.parametrize("name", ["gpt2", "gpt2_parallel", "llama"])
def test_edges_and_effects_equal_enumerated_frozen_paths(x64, name):
    """Summed over positions, an edge m→n is every frozen path with n right after m; a node's TE every path
    through it; its DE every path that ends on it (jj.frozen_path_attribution enumerates them all)."""
    model = _model(name, True)
    graph = jj.attribution_graph(model, IDS, target=5, foil=2)
    att = jj.frozen_path_attribution(model, IDS, target=5, foil=2, granularity="branch")
    assert att.remainder_ratio < 1e-10
    slots = sorted({parse_node(n).slot for n in graph.nodes}, key=lambda s: graph.nodes.index(s + "@0"))
    by_slot = {s: [i for i, n in enumerate(graph.nodes) if parse_node(n).slot == s] for s in slots}
    comps = [s for s in slots if not s.startswith("bias>") and s != "emb"]
    checked = 0
    for m in slots:
        for n in comps:
            w = graph.edges[np.ix_(by_slot[n], by_slot[m])].sum()
            if m.startswith("bias>"):
                expected = _sum(att, lambda p: p[0] == "bias" and p[1] == n) if m == "bias>" + n else 0.0
            else:
                expected = _sum(att, lambda p: any(a == m and b == n for a, b in zip(p, p[1:])))
            assert w == pytest.approx(expected, abs=1e-9), (m, n)
            checked += expected != 0
    assert checked > len(comps)
    for n in comps:
        te = graph.te[by_slot[n]].sum()
        assert te == pytest.approx(_sum(att, lambda p: n in p[1:-1]), abs=1e-9), n
        de = graph.de[by_slot[n]].sum()
        assert de == pytest.approx(_sum(att, lambda p: p[-2] == n), abs=1e-9), n
    assert graph.de[by_slot["emb"]].sum() == pytest.approx(_sum(att, lambda p: p == ["emb", "dec"]), abs=1e-9)
    assert graph.constant == pytest.approx(_sum(att, lambda p: p == ["bias", "dec"]), abs=1e-9)


def _frozen_number(model, ids, replace=None):
    """logit(5) − logit(2) at the last position of the frozen model, written out by hand: one recorded
    forward pass, then a replay with the output of ``replace = (kind, layer, position, vector)`` swapped."""
    from jetjax.models.layers import freeze

    def run(swap):
        h = model.embed(ids)
        for layer in range(model.config.n_layers):
            for kind in ("attn", "mlp"):
                out = getattr(model, kind)(layer, h)
                if swap is not None and swap[:2] == (kind, layer):
                    out = out.at[swap[2]].set(swap[3])
                h = h + out
        logits = model.decode(h)
        return float(logits[-1, 5] - logits[-1, 2])

    with freeze.record() as tape:      # the factors of the actual forward pass
        plain = run(None)
    if replace is None:
        return plain
    with freeze.replay(tape):
        return run(replace)


def test_mean_baseline_te_is_the_frozen_change_of_replacing_one_output(x64):
    """TE against the mean baseline = the change of the frozen number when that one output is replaced by
    its mean over every reference token (the frozen model rerun by hand; the mean from the model's own
    streams)."""
    model = _model("llama", True)
    reference = [[7, 8, 9, 10], [11, 12, 13]]
    graph = jj.attribution_graph(model, IDS, 5, 2, baseline="mean", reference=reference)
    zero = jj.attribution_graph(model, IDS, 5, 2)
    np.testing.assert_allclose(graph.edges, zero.edges, atol=1e-12)       # edges do not depend on the baseline
    np.testing.assert_allclose(graph.de, zero.de, atol=1e-12)
    base = _frozen_number(model, IDS)
    assert base == pytest.approx(graph.total, abs=1e-10)
    for kind, layer, q in (("mlp", 0, 2), ("attn", 1, 4), ("mlp", 1, 0)):
        outs = []
        for ids in reference:
            streams, mids = model.residual_stream(ids, mid=True)
            outs.append(np.asarray(model.mlp(layer, mids[layer]) if kind == "mlp" else model.attn(layer, streams[layer])))
        mean = jnp.asarray(np.concatenate(outs).mean(axis=0))
        changed = _frozen_number(model, IDS, (kind, layer, q, mean))
        assert graph.te[graph.node(f"{kind}{layer}@{q}")] == pytest.approx(base - changed, abs=1e-9)
        changed0 = _frozen_number(model, IDS, (kind, layer, q, jnp.zeros_like(mean)))
        assert zero.te[zero.node(f"{kind}{layer}@{q}")] == pytest.approx(base - changed0, abs=1e-9)


def test_prune_keeps_the_strongest_and_its_value_is_exact(x64):
    model = _model("llama", True)
    graph = jj.attribution_graph(model, IDS, 5, 2)
    assert graph.value == pytest.approx(graph.total, abs=1e-10)
    full = graph.prune(1.0, 1.0)
    assert full.value == pytest.approx(graph.total, abs=1e-10)
    small = graph.prune(0.5, 0.9)
    assert len(small) < len(graph)
    assert all(n in graph.nodes for n in small.nodes)
    assert all(n in small.nodes for n in graph.nodes if n.startswith("emb@"))
    infl = graph.influence()
    kept = [infl[graph.node(n)] for n in small.components]
    dropped = [infl[i] for i, n in enumerate(graph.nodes) if n in graph.components and n not in small.nodes]
    assert min(kept) >= max(dropped)


def test_pruned_value_is_the_sum_of_the_frozen_paths_it_keeps(x64):
    """Dropping every position of some components: the kept graph's frozen value is the sum of the
    enumerated frozen paths that avoid them (independent: jj.frozen_path_attribution)."""
    model = _model("gpt2", True)
    graph = jj.attribution_graph(model, IDS, 5, 2)
    att = jj.frozen_path_attribution(model, IDS, target=5, foil=2, granularity="branch")
    for dropped in (["attn0"], ["mlp0", "attn1"], ["mlp1"]):
        keep = np.array([parse_node(n).receiver not in dropped for n in graph.nodes])
        edges = np.where(keep[:, None] & keep[None, :], graph.edges, 0.0)
        value = graph._frozen_value(edges, keep, model)
        expected = _sum(att, lambda p: not set(p) & set(dropped))
        assert value == pytest.approx(expected, abs=1e-9), dropped


def test_influence_of_sources_adds_up_to_one(x64):
    graph = jj.attribution_graph(_model("gpt2", True), IDS, 5, 2, heads=True)
    infl = graph.influence()
    roles = _roles(graph)
    assert sum(infl[i] for i, r in enumerate(roles) if r != "component") == pytest.approx(1.0, abs=1e-9)
    assert (infl >= 0).all()


def test_json_round_trip(tmp_path):
    graph = jj.attribution_graph(_model("llama"), IDS, 5, 2, heads=True)
    path = tmp_path / "g.json"
    graph.to_json(path)
    back = jj.AttributionGraph.load(path)
    assert back.nodes == graph.nodes and back.tokens == graph.tokens and back.heads
    np.testing.assert_array_equal(back.edges, graph.edges)
    np.testing.assert_array_equal(back.te, graph.te)
    np.testing.assert_array_equal(back.de, graph.de)
    assert (back.total, back.constant, back.target, back.foil) == (graph.total, graph.constant, 5, 2)
    assert np.isnan(back.prune(0.5, 0.9).value)      # no model to recompute the exact value with
    data = json.loads(path.read_text())
    data["edges"][0]["source"] = "mlp9@0"
    with pytest.raises(ValueError, match="mlp9@0"):
        jj.AttributionGraph.from_dict(data)


def test_table_and_top():
    graph = jj.attribution_graph(_model(), IDS, 5, 2)
    top = graph.top(3)
    assert [abs(v) for _, v in top] == sorted((abs(v) for v in graph.te), reverse=True)[:3]
    text = graph.table(3)
    assert top[0][0] in text and f"{graph.total:+.4f}" in text


@pytest.mark.parametrize("call, match", [
    (lambda m: jj.attribution_graph(m, IDS, 5, 2, position=5), "position 5 is out of range"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 5), "same token"),
    (lambda m: jj.attribution_graph(m, IDS, 19, 2), "target token id 19 is out of range"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2, baseline="mean"), "needs reference texts"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2, baseline="median"), "'zero', 'mean'"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2).prune(0.0), r"node_threshold must be a number in \(0, 1\]"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2).prune(0.8, 1.5), r"edge_threshold must be a number in \(0, 1\]"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2).node("mlp7@0"), "not a node of this graph"),
    (lambda m: jj.attribution_graph(m, IDS, 5, 2).node("mlp 0@0"), "not a node id"),
])
def test_bad_input(call, match):
    with pytest.raises((ValueError, IndexError, KeyError, TypeError), match=match):
        call(_model())
