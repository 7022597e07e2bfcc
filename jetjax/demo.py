"""``make demo`` / ``jetjax demo``: jet expansions of a small real language model, in one screen.

On the Shakespeare GPT-2 shipped with the package (trained by us, see its model card) and a line of
verse, the demo shows:

1. the logit lens (order 0) and the order-1 iterative jet lens ``J^1 Dec(h_l)(h_L)``: the top token
   each layer predicts at each position, and how faithful each layer's lens is to the model;
2. the top jet bigrams of the ``emb>mlp0>dec`` path over the whole vocabulary (no data involved;
   ``emb>dec`` alone maps most tokens to themselves, since the model ties its embeddings);
3. the block paths (embedding → blocks → decoder, each the plain composition its label names) that
   push the model's prediction at the last position against its runner-up;
4. how well the jet bigrams agree with the bigram statistics of held-out Shakespeare, against a
   unigram baseline.

PNG pictures and a JSON summary go to ``./jetjax-demo/``. Run: ``python -m jetjax.demo``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PROMPT = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
BIGRAM_PATH = "emb>mlp0>dec"


def _show(tok: str) -> str:
    return tok.replace("\n", "↵").replace(" ", "·")


def _lens_block(model, res, tokens, width: int) -> list[str]:
    top = res.top_tokens(1)
    m = res.metrics
    cols = range(max(0, len(tokens) - width), len(tokens))
    head = f"{'':>7} " + "".join(f"{_show(tokens[t])[:9]:>10}" for t in cols) + "    cos   top1    KL"
    lines = [head]
    for r, row in enumerate(res.rows):
        cells = "".join(f"{_show(top[r][t][0])[:9]:>10}" for t in cols)
        lines.append(f"{row:>7} {cells}  {m['cosine'][r].mean():5.3f}  {m['top1'][r].mean():5.2f}  "
                     f"{m['kl'][r].mean():5.2f}")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="jetjax demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF directory or hub id (default: the shipped model)")
    ap.add_argument("--text", default=PROMPT)
    ap.add_argument("--out", default="jetjax-demo", help="directory for PNGs and summary.json")
    ap.add_argument("--width", type=int, default=8, help="token columns shown in the printed lens tables")
    args = ap.parse_args(argv)

    import jetjax as jj
    from jetjax import viz
    from jetjax.cli import load_model
    from jetjax.ngrams import corpus_agreement, jet_bigrams
    from jetjax.train import shipped_model_path

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    ids = model.tokenize(args.text)[-(model.config.n_positions or 10**9):]
    tokens = model.token_strings(ids)
    summary: dict = {"model": str(args.model or shipped_model_path()), "text": args.text, "n_tokens": len(tokens)}
    print(f"{model}\nprompt ({len(tokens)} tokens): {args.text!r}\n")

    # 1. lenses
    lenses = {k: jj.iterative_jet_lens(model, ids, order=k) for k in (0, 1)}
    for k, res in lenses.items():
        name = "logit lens (order 0)" if k == 0 else f"iterative jet lens, order {k}: J^{k} Dec(h_l)(h_L)"
        print(f"== {name}; top token per layer (last {args.width} positions), faithfulness over all positions")
        print("\n".join(_lens_block(model, res, tokens, args.width)), "\n")
        viz.lens_table(res, out / f"lens_order{k}.png")
    viz.metric_curves({f"order {k}": r for k, r in lenses.items()}, out / "lens_metrics.png")
    summary["lens"] = {f"order{k}": {name: [float(v) for v in r.metrics[name].mean(-1)]
                                     for name in ("cosine", "kl", "top1")} for k, r in lenses.items()}
    mid = range(1, model.config.n_layers)
    c0, c1 = (np.mean([lenses[k].metrics["cosine"][l].mean() for l in mid]) for k in (0, 1))
    print(f"middle layers h_1..h_{model.config.n_layers - 1}: mean cosine with the logits "
          f"{c0:.3f} (logit lens) vs {c1:.3f} (order-1 jet lens)\n")

    # 2. jet bigrams
    table = jet_bigrams(model, BIGRAM_PATH, top_k=10, progress=False)
    print(f"== top jet bigrams of the path {BIGRAM_PATH} (all {model.config.vocab_size} one-token contexts, no data)")
    top = table.top(12)
    for ctx, nxt, prob in top:
        print(f"  {prob:6.3f}  {_show(''.join(ctx)):>14} → {_show(nxt)}")
    summary["bigrams"] = [{"context": "".join(c), "next": n, "prob": float(p)} for c, n, p in top]

    # 3. path attribution at the last position: the prediction against the runner-up
    logits = np.asarray(model.logits(ids))[-1]
    first, second = (int(i) for i in np.argsort(-logits)[:2])
    att = jj.path_attribution(model, ids, target=first, foil=second)
    print(f"\n== which of the {len(att.labels)} block paths (order 0: each a plain composition) push "
          f"{_show(model.detokenize([first]))!r} over {_show(model.detokenize([second]))!r} after the prompt")
    print(att.table(6), "\n")
    summary["attribution"] = {"target": att.target_str, "foil": att.foil_str, "total": att.total,
                              "remainder": att.remainder, "top": att.top(6), "bottom": att.bottom(6)}

    # 4. agreement of jet bigrams with held-out Shakespeare
    text = (shipped_model_path() / "validation.txt").read_text(encoding="utf-8")
    agree = corpus_agreement(table, text, model, min_count=1, n_contexts=500)
    print(f"== jet bigrams ({BIGRAM_PATH}) vs the bigrams of held-out Shakespeare ({agree.n_tokens} tokens, "
          f"its {agree.n_contexts} most frequent contexts)")
    print(f"  top-1 hit rate {agree.top1_hit_rate:.3f} (unigram baseline {agree.unigram['top1_hit_rate']:.3f}); "
          f"rank correlation {agree.rank_correlation:.3f} (unigram {agree.unigram['rank_correlation']:.3f})")
    summary["agreement"] = agree.to_dict()

    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {out}/lens_order0.png, lens_order1.png, lens_metrics.png, summary.json "
          f"({summary['seconds']} s)")
    return summary


if __name__ == "__main__":
    main()
