"""``make demo`` / ``jetjax demo``: jet expansions of a real LLM, every figure computed as it runs.

On the default model (SmolLM2-135M-Instruct when its wheel is installed, which ``make demo`` does;
otherwise the small Shakespeare GPT-2 shipped with jetjax, or ``--model ...``), the demo shows:

1. lenses: the logit lens (order 0) against the iterative jet lenses ``J^k Dec(h_l)(h_L)`` of
   orders 1 and 2, on every stream, over a fixed set of prompts of five kinds
   (:data:`jetjax.studies.findings.PROMPTS`): faithfulness per layer, and the top token per layer on one prompt;
2. jet bigrams: for ``emb>dec`` and every ``emb>mlp{l}>dec`` (and ``emb>attn{l}>dec``), how well
   the path's next-token table agrees with held-out Shakespeare on its most frequent contexts,
   against the model itself on one-token contexts and the corpus's unigram distribution;
3. the exact attribution graph of the model's prediction at the end of a prompt against a foil
   (:func:`jetjax.attribution_graph`), and the smallest circuit :func:`jetjax.find_circuit` finds that
   carries it in the real model (mean ablation over the other prompts), with its faithfulness.

PNG pictures and ``summary.json`` go to ``./jetjax-demo/``. Run: ``python -m jetjax.demo``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from jetjax.viz import show_token

ATTRIBUTION_PROMPT = "The capital of France is"
ATTRIBUTION_PAIR = (" Paris", " London")
CIRCUIT_FAITHFULNESS = 0.8


def _lens_block(res, tokens, width: int) -> list[str]:
    top = res.top_tokens(1)
    m = res.metrics
    cols = range(max(0, len(tokens) - width), len(tokens))
    lines = [f"{'':>7} " + "".join(f"{show_token(tokens[t], 9):>10}" for t in cols) + "    cos   top1"]
    for r, row in enumerate(res.rows):
        cells = "".join(f"{show_token(top[r][t][0], 9):>10}" for t in cols)
        lines.append(f"{row:>7} {cells}  {m['cosine'][r].mean():5.3f}  {m['top1'][r].mean():5.2f}")
    return lines


def _every(rows, n_layers: int):
    """A readable subset of rows for printing: every third stream, and the first and last."""
    step = max(1, n_layers // 10)
    return sorted({0, n_layers, *range(0, n_layers + 1, step)})


def _attribution_pair(model, ids) -> tuple[int, int]:
    """``(target, foil)``: " Paris" / " London" when both are single tokens, else the model's top two."""
    pair = [model.tokenize(w, special_tokens=False) for w in ATTRIBUTION_PAIR]
    if all(len(t) == 1 for t in pair):
        return int(pair[0][0]), int(pair[1][0])
    logits = np.asarray(model.logits(ids))[-1]
    first, second = np.argsort(-logits)[:2]
    return int(first), int(second)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="jetjax demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="smollm2, gemma3-270m, shakespeare, a GGUF file or an HF directory (default: smollm2 when installed)")
    ap.add_argument("--out", default="jetjax-demo", help="directory for PNGs and summary.json")
    ap.add_argument("--width", type=int, default=8, help="token columns shown in the printed lens table")
    ap.add_argument("--contexts", type=int, default=500, help="most frequent corpus contexts for the bigram study")
    args = ap.parse_args(argv)

    import jetjax as jj
    from jetjax import viz
    from jetjax.studies import findings
    from jetjax.io.assets import load_model, shipped_text

    t0 = time.perf_counter()
    out = Path(args.out)
    try:   # before the model loads: pictures computed for minutes and then not written would be lost
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".jetjax-probe-"):
            pass
    except OSError as e:
        raise ValueError(f"--out {args.out}: cannot write there ({e.strerror or e}); give a writable directory") from None
    model = load_model(args.model)
    n = model.config.n_layers
    summary: dict = {"model": model.source, "config": {"n_layers": n, "d_model": model.config.d_model,
                                                        "vocab_size": model.config.vocab_size}}
    print(f"{model}\n")

    # 1. lenses over the prompt set, and one prompt in detail
    t = time.perf_counter()
    study = findings.lens_study(model, orders=(0, 1, 2))
    mid = findings.middle_rows(n)
    print(f"== 1. lenses: logit lens (order 0) vs iterative jet lenses J^k Dec(h_l)(h_L), k = 1, 2\n"
          f"   mean over {study.n_prompts} prompts ({', '.join(findings.PROMPTS)}), {study.n_positions} positions")
    lines = study.table().splitlines()
    print("\n".join(lines[:2] + [lines[2 + r] for r in _every(study.rows, n)]))
    print(f"   middle streams h{mid.start}..h{mid.stop - 1}: " + "; ".join(
        f"order {k}: cosine {study.middle('cosine', k):.3f}, top-1 {study.middle('top1', k):.3f}"
        for k in study.orders))
    viz.study_curves(study, out / "lens_metrics.png")
    ids = model.tokenize(ATTRIBUTION_PROMPT)
    tokens = model.token_strings(ids)
    for k in (0, 1):
        res = jj.iterative_jet_lens(model, ids, order=k)
        viz.lens_table(res, out / f"lens_order{k}.png")
        if k == 1:
            print(f"\n   iterative jet lens, order 1, on {ATTRIBUTION_PROMPT!r}: top token per stream")
            block = _lens_block(res, tokens, args.width)
            print("\n".join("   " + block[i] for i in [0] + [1 + r for r in _every(res.rows, n)]))
    summary["lens"] = study.to_dict()
    summary["timings_s"] = {"lens": round(time.perf_counter() - t, 1)}

    # 2. bigram paths against held-out Shakespeare
    t = time.perf_counter()
    bigrams = findings.bigram_study(model, shipped_text(), n_contexts=args.contexts)
    print(f"\n== 2. jet bigrams (order 0, one-token contexts, no data in the paths) vs held-out Shakespeare\n"
          f"   its {bigrams.n_contexts} most frequent contexts ({bigrams.n_tokens} tokens). hit@1: the top-1 is a "
          f"most frequent successor;\n   rho: rank correlation with the successor counts; copy: top-1 = the "
          f"context token; =model: top-1 = the model's own on [z]")
    best = sorted(bigrams.mlp_layers(), key=lambda r: -r.agreement.top1_hit_rate)[:4]
    attn = sorted(bigrams.attention_layers(), key=lambda r: -r.agreement.top1_hit_rate)[:2]
    shown = ["emb>dec", *(r.name for r in best), *(r.name for r in attn),
             *(name for name, r in bigrams.results.items() if r.kind in ("mean", "model"))]
    print("\n".join("   " + line for line in bigrams.table(shown).splitlines()))
    top = bigrams.results["emb>mlp0>dec"].top
    print("   emb>mlp0>dec, its most confident non-copy predictions: "
          + ", ".join(f"{show_token(c)!r}→{show_token(nx)!r} {p:.2f}" for c, nx, p in top[:6]))
    viz.bigram_layers(bigrams, out / "bigram_layers.png")
    summary["agreement"] = bigrams.to_dict()
    summary["bigrams"] = [{"context": c, "next": nx, "prob": p} for c, nx, p in top]
    summary["timings_s"]["bigrams"] = round(time.perf_counter() - t, 1)

    # 3. the attribution graph, and a circuit verified in the real model
    t = time.perf_counter()
    target, foil = _attribution_pair(model, ids)
    reference = [p for p in findings.all_prompts() if p != ATTRIBUTION_PROMPT]
    circuit = jj.find_circuit(model, ids, target, foil, faithfulness=CIRCUIT_FAITHFULNESS, mode="mean",
                              reference=reference)
    graph = circuit.graph
    print(f"\n== 3. what computed logit({graph.target_str!r}) − logit({graph.foil_str!r}) = {graph.total:+.3f} "
          f"after {ATTRIBUTION_PROMPT!r}\n   the exact attribution graph of the frozen model (every nonlinear "
          f"factor held at this forward pass): {len(graph)} nodes;\n   its direct effects plus the decoder's "
          f"constant give {graph.value:+.4f}. Largest total effects (TE: the change when a node is replaced "
          f"by its mean\n   output over the demo's other {len(reference)} prompts, in the frozen model):")
    print("\n".join("   " + line for line in graph.table(8).splitlines()[1:]))
    print(f"   verified in the real model: {circuit}")
    print("   circuit: " + ", ".join(f"{n} ({show_token(graph.tokens[int(n.rsplit('@', 1)[1])])})"
                                     for n in circuit.nodes))
    viz.graph_picture(graph, out / "graph.png", highlight=circuit.nodes)
    graph.to_html(out / "graph.html")
    summary["circuit"] = {"prompt": ATTRIBUTION_PROMPT, "target": graph.target_str, "foil": graph.foil_str,
                          "total": graph.total, "frozen_value": graph.value, "n_graph_nodes": len(graph),
                          "nodes": list(circuit.nodes), "n_components": circuit.n_components,
                          "faithfulness": circuit.faithfulness, "target_faithfulness": circuit.target,
                          "forward_passes": circuit.forward_passes, "mode": circuit.mode,
                          "n_reference": len(reference), "top": graph.top(8)}
    summary["timings_s"]["circuit"] = round(time.perf_counter() - t, 1)

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {out}/lens_metrics.png, lens_order0.png, lens_order1.png, bigram_layers.png, graph.png, "
          f"graph.html, summary.json "
          f"({summary['seconds']} s)")
    return summary


if __name__ == "__main__":
    from jetjax._internal.compile_cache import enable_compile_cache

    enable_compile_cache()   # as `jetjax demo` and `make demo`: a second run does not compile again
    main()
