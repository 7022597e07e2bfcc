"""The circuits study (``jetjax.studies.circuits``) on a tiny random llama and synthetic records.

Checked independently: the rule on hand-made records (held-out records cannot move the choice), the
attribution-patching score against central finite differences of a forward pass written here (one
component's output moved by ε, nothing from :mod:`jetjax.paths.ablate`), and an end-to-end run whose
faithfulness figures are recomputed with :func:`jetjax.ablate`.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.plan import component_steps
from jetjax.studies import circuits as cs
from jetjax.studies.faithfulness import Prompt
from jetjax.testing import tiny_model

PROMPTS = [Prompt("a-0", "a", "selection", 7, 2, ids=(3, 1, 4, 1, 5), group="a-0"),
           Prompt("a-1", "a", "heldout", 8, 3, ids=(2, 7, 1, 8, 2), group="a-1"),
           Prompt("b-0", "b", "selection", 5, 9, ids=(1, 2, 3, 5, 8), group="b-0")]
REFERENCE = [[1, 2, 3, 4, 5, 6], [7, 3, 2], [0, 6, 6, 8, 9, 10, 2, 11]]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


# ---- the rule ---------------------------------------------------------------------------------

def _record(split, rows, passes=100, circuit=(0.5, 0.9), prompt="p"):
    """A synthetic record: ``rows[m]`` is a number (f at every grid size) or a list (f per grid size);
    ``circuit``: (fraction, f) of find_circuit's circuit of 100 components."""
    f = {m: list(v) if isinstance(v, list) else [v] * len(cs.FRACTIONS) for m, v in rows.items()}
    return {"prompt": prompt, "split": split, "n_tokens": 5, "k": cs.sizes(100), "f": f,
            "circuit": {"passes": passes, "fraction": circuit[0], "n_nodes": int(100 * circuit[0]), "f": circuit[1],
                        "seconds": 1.0},
            "pruned": [{"fraction": 0.1, "f": 0.5} for _ in cs.PRUNE_THRESHOLDS]}


def _curve(**at):      # f 0 everywhere but at the given grid fractions
    out = [0.0] * len(cs.FRACTIONS)
    for fr, v in at.items():
        out[cs.FRACTIONS.index(float(fr.replace("p", ".")[1:]))] = v
    return out


ROWS = {"te_zero": 0.1, "influence": 0.5,
        "te_mean": _curve(f0p05=0.85, f0p1=0.3),           # reaches 0.8 at 5%, falls again at 10%
        "gradxact": _curve(f0p01=0.7, f0p15=0.95),          # 0.95 only beyond the 10% budget
        "circuit": 0.2}


def test_f_small_is_the_smallest_size_reaching_the_goal_within_the_budget():
    r = _record("selection", ROWS, circuit=(0.05, 0.9))
    assert cs.f_small(r, "te_mean") == 0.85 and cs.f_small(r, "gradxact") == 0.7 and cs.f_small(r, "te_zero") == 0.1
    assert cs.f_small(r, "circuit") == 0.9                                 # its own circuit: one more size
    assert cs.f_small(_record("selection", ROWS, circuit=(0.2, 0.9)), "circuit") == 0.2   # too large: not counted
    assert cs.N_SMALL == 6 and cs.sizes(100)[:cs.N_SMALL] == [1, 2, 3, 5, 8, 10]


def test_choose_highest_median_f_small_on_selection_only():
    sel = [_record("selection", ROWS, circuit=(0.05, 0.9), prompt=f"s{i}") for i in range(3)]
    held = [_record("heldout", dict(ROWS, te_zero=5.0, circuit=0.0), circuit=(0.5, 0.9), prompt=f"h{i}")
            for i in range(5)]
    choice = cs.choose(sel + held)
    assert choice["method"] == "circuit" and choice["tied"] == ["circuit"] and choice["n_selection"] == 3
    assert cs.choose(sel) == choice                                  # held-out records change nothing
    agg = cs.aggregate(sel + held)
    assert agg["heldout"]["methods"]["te_zero"]["f_small"]["median"] == 5.0
    assert agg["heldout"]["methods"]["circuit"]["f_small"]["median"] == 0.0
    assert agg["selection"]["methods"]["te_mean"]["need"] == 0.05
    assert any("`circuit`" in line and "missed by 0.800" in line for line in cs.goal(agg, choice))


def test_choose_ties_go_to_fewer_passes_then_method_order():
    # circuit best by 0.01 (within the tolerance 0.02): te_mean and influence tie with it and cost 9 passes
    rows = dict(ROWS, te_mean=_curve(f0p03=0.85), influence=_curve(f0p1=0.85))
    choice = cs.choose([_record("selection", rows, passes=300, circuit=(0.05, 0.86))])
    assert choice["method"] == "te_mean" and choice["tied"] == ["te_mean", "influence", "circuit"]
    assert {c["method"]: c["passes"] for c in choice["candidates"]} == {"te_zero": 9, "te_mean": 9, "influence": 9,
                                                                        "gradxact": 9, "circuit": 301}
    assert cs.choose([_record("selection", rows, passes=300, circuit=(0.05, 0.9))])["method"] == "circuit"
    assert cs.choose([_record("heldout", ROWS)])["method"] is None


def test_sizes_and_ranking():
    assert cs.sizes(240) == [2, 5, 7, 12, 18, 24, 36, 48, 72, 120]
    assert cs.sizes(20)[0] == 1 and cs.sizes(20)[-1] == 10
    assert cs.ranked({"a": 1.0, "b": -3.0, "c": 1.0}, ["a", "b", "c"]) == ["b", "a", "c"]


# ---- attribution patching against finite differences ------------------------------------------------

def _moved(model, ids, target, foil, k, p, v):
    """The real number with component ``k``'s output at position ``p`` moved by ``v`` (written out here)."""
    c = model.config
    h = model.embed(jnp.asarray(ids))
    i = 0
    for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
        added = []
        for kind in kinds:
            out = getattr(model, kind)(layer, h)
            if i == k:
                out = out.at[p].add(jnp.asarray(v, out.dtype))
            added.append(out)
            i += 1
        h = h + sum(added[1:], added[0])
    logits = np.asarray(model.decode(h)[-1], np.float64)
    return logits[target] - logits[foil]


def test_gradxact_is_the_directional_derivative_towards_the_baseline(model):
    ids = np.array([3, 1, 4, 1, 5, 9], np.int32)
    rng = np.random.default_rng(0)
    n_comp = 2 * model.config.n_layers
    base = rng.normal(size=(n_comp, model.config.d_model))
    scores, number = cs.gradxact(model, ids, 7, 2, base)
    logits = np.asarray(model.logits(ids)[-1], np.float64)
    assert number == pytest.approx(logits[7] - logits[2], rel=1e-5)
    assert scores.shape == (n_comp, len(ids))
    # the last layer's outputs reach the last position only from there; layer 0's from everywhere
    assert np.all(scores[2:, :-1] == 0) and np.all(scores[2:, -1] != 0) and np.all(scores[:2] != 0)
    # each component's own output, recomputed here: the derivative is taken towards o − base
    c = model.config
    h = model.embed(jnp.asarray(ids))
    outs = []
    for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
        added = [getattr(model, kind)(layer, h) for kind in kinds]
        outs += [np.asarray(a, np.float64) for a in added]
        h = h + sum(added[1:], added[0])
    eps = 1e-2
    for k, p in [(0, 0), (1, 3), (2, 5), (3, 5)]:
        v = outs[k][p] - base[k]
        fd = (_moved(model, ids, 7, 2, k, p, eps * v) - _moved(model, ids, 7, 2, k, p, -eps * v)) / (2 * eps)
        assert scores[k, p] == pytest.approx(fd, rel=2e-2, abs=2e-4), (k, p)
    assert cs.component_nodes(model, 2) == ["attn0@0", "attn0@1", "mlp0@0", "mlp0@1",
                                            "attn1@0", "attn1@1", "mlp1@0", "mlp1@1"]


# ---- end to end -------------------------------------------------------------------------------------

def _number(logits, target, foil):
    x = np.asarray(logits[-1], np.float64)
    return x[target] - x[foil]


def test_study_end_to_end_recomputed_with_ablate(model, tmp_path):
    png = tmp_path / "curve.png"
    result = cs.run_study(model, PROMPTS, reference=REFERENCE, out_dir=tmp_path, png=png, model_name="tiny",
                          info={"cpu": "test"}, log=lambda _: None)
    assert png.stat().st_size > 0
    saved = json.loads((tmp_path / "circuits.json").read_text())
    assert [r["prompt"] for r in saved["records"]] == ["a-0", "a-1", "b-0"]
    assert "## Choice" in (tmp_path / "circuits.md").read_text()
    assert result["choice"]["method"] in cs.METHODS and result["choice"]["n_selection"] == 2
    rec = saved["records"][1]
    ids = np.asarray(PROMPTS[1].ids, np.int32)
    nodes = cs.component_nodes(model, len(ids))
    assert rec["n_components"] == len(nodes) == 20 and rec["k"] == cs.sizes(20)
    full = _number(model.logits(ids), 8, 3)
    empty = _number(jj.ablate(model, ids, nodes=nodes, mode="mean", reference=REFERENCE), 8, 3)
    assert rec["full"] == pytest.approx(full, rel=1e-4) and rec["empty"] == pytest.approx(empty, rel=1e-4, abs=1e-5)
    graph = jj.attribution_graph(model, ids, 8, 3, baseline="mean", reference=REFERENCE)
    te = dict(zip(graph.nodes, graph.te))
    top = sorted(graph.components, key=lambda n: -abs(te[n]))
    for j in (0, 5, 9):     # f of te_mean's top k, recomputed: ablate everything else
        k = rec["k"][j]
        kept = _number(jj.ablate(model, ids, nodes=[n for n in nodes if n not in top[:k]], mode="mean",
                                 reference=REFERENCE), 8, 3)
        assert rec["f"]["te_mean"][j] == pytest.approx((kept - empty) / (full - empty), rel=1e-3, abs=1e-4)
    circuit = rec["circuit"]
    assert circuit["f"] >= cs.GOAL_F and circuit["n_nodes"] == len(circuit["nodes"])
    assert saved["records"][0]["circuit"]["seconds_first"] is not None   # a-0 ran first (all have T = 5)
    assert saved["records"][2]["circuit"]["seconds_first"] is None
    # the circuit's own nodes lead its ranking, so its f at k = |circuit| is the circuit's f
    assert rec["top5"]["circuit"][0] in circuit["nodes"]
    assert [p["n_kept"] for p in rec["pruned"]] == sorted(p["n_kept"] for p in rec["pruned"])
    again = cs.run_study(model, PROMPTS, reference=REFERENCE, out_dir=tmp_path, model_name="tiny", resume=True,
                         info={"cpu": "test"}, log=lambda _: None)
    assert [r["prompt"] for r in again["records"]] == ["a-0", "a-1", "b-0"]   # nothing ran again
