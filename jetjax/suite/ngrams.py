"""Full-vocabulary jet bigram sweeps on a GPT-2-small-shaped model, against the machine's best GEMM and torch.

Random weights of GPT-2-small shape (V = 50257, d = 768, 12 layers). Measured, each in its own
subprocess so that its peak resident memory (``ru_maxrss``) is its own:

* ``gemm``: :func:`jetjax.suite.machine.gemm_rates` on the sweep's GEMM, ``[block, d] @ [d, tile]``
  (``--block-rows`` 1024; the vocabulary tile, 4096 capped at V, which the sweep is given
  explicitly): XLA float32, torch float32, XLA bfloat16 × bfloat16 → float32 and torch bfloat16,
  each best of 3 after a warm-up; a reference in a process of its own.
* ``jetjax PATH`` (``emb>dec``, ``emb>mlp5>dec``): ``jet_bigrams(top_k=10, vocab_tile=tile)`` over
  all V rows once per compute dtype (``--compute-dtypes``, default float32 and bfloat16: the
  precision of the unembedding GEMM's operands; accumulation, logsumexp and top-k are float32 under
  both), all in one process. Every step is compiled first (a warm-up sweep of one block per compute
  dtype); then come ``gemm_rates``, the float32 sweep, ``gemm_rates``, the bfloat16 sweep,
  ``gemm_rates``, so that each sweep is compared with the best GEMM of its precision measured just
  before and just after it, under the same load (the mean of the two). The same process compares
  the bfloat16 table with the float32 one (fidelity, below). Its peak RSS covers both sweeps and
  the GEMM measurements (torch loaded, about 0.25 GB).
* ``torch PATH``: the public PyTorch reference's ``eval_over_vocab`` recipe in float32 (batches of
  2000 rows, full softmax over the vocabulary, ``topk``), written here from its description.

Reported per (path, compute dtype): seconds, rows/s, achieved GFLOP/s (the GEMM FLOPs ``2 V² d``,
plus ``16 V d²`` for the MLP path, whose MLP runs in float32 under either compute dtype), the
fraction of the best GEMM rate of that precision (float32: the best of XLA and torch float32;
bfloat16: the best of XLA and torch bfloat16 — on CPUs with AMX torch's bfloat16 is several times
XLA's float32, on AVX2 ones it has no fast kernel), the seconds the FLOPs would take at that rate (a
lower bound), and torch-recipe seconds / jetjax seconds (the float32 recipe, same run). Fidelity of
bfloat16 against float32, per path: the mean over rows of ``|top-10 ids ∩ top-10 ids'| / 10`` (and
its minimum), the fraction of rows with the same top-1 token, the largest ``|Δp|`` rank by rank
over the top 10, the largest ``|Δp|`` of a (row, token) pair in both top-10 lists, the largest
``|Δ logsumexp|``.

The machine (:func:`jetjax.suite.machine.machine`: CPU model, ISA flags, cores, versions, load
average) is recorded with the results. Results go to ``benchmarks/results/ngrams.{json,md}``.

    python benchmarks/ngrams.py [--vocab 50257] [--paths emb>dec emb>mlp5>dec] [--global-k 10] [--skip-torch]
                                [--compute-dtypes float32 bfloat16] [--dtype float32|bfloat16]

Runs accumulate in the results files, one per vocabulary size and set of paths (a new run replaces
the one of the same size and paths). ``--skip-torch`` leaves out the torch recipe and torch's GEMMs.
``--dtype bfloat16`` stores the jetjax model's weights in bfloat16 (the path's activations stay
float32; the unembedding matrix is read off the bf16 weights); results then go to
``ngrams_bfloat16.{json,md}``. The torch recipe stays float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from jetjax.bench import add_dtype_option, dtype_label, result_stem, results_dir
from jetjax.ngrams.settings import COMPUTE_DTYPES
from jetjax.suite.machine import describe, gemm_rates, machine

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()
D, LAYERS, HEADS, TOP_K, TORCH_BATCH, TILE = 768, 12, 12, 10, 2000, 4096
PATHS = {"emb>dec": None, "emb>mlp5>dec": 5}
GEMM_LABELS = {"xla_float32": "XLA float32", "torch_float32": "torch float32",
               "xla_bfloat16": "XLA bf16×bf16→f32", "torch_bfloat16": "torch bf16"}


def flops(vocab: int, mlp_layer) -> float:
    return 2.0 * vocab * vocab * D + (16.0 * vocab * D * D if mlp_layer is not None else 0.0)


def vocab_tile(vocab: int) -> int:
    """The sweep's vocabulary tile: the columns of each of its GEMMs."""
    return min(TILE, vocab)


def measure_gemm(vocab: int, block: int, torch_ok: bool) -> dict:
    """The best GEMM rates on the sweep's shape, ``[block, d] @ [d, tile]``."""
    return gemm_rates(block, D, vocab_tile(vocab), torch_ok=torch_ok)


def compute_options(compute_dtype: str) -> dict:
    """The sweep's ``compute_dtype`` keyword, left out for float32 (the default)."""
    return {} if compute_dtype == "float32" else {"compute_dtype": compute_dtype}


def fidelity(ref, other, k: int = TOP_K) -> dict:
    """How far table ``other`` is from table ``ref`` (same rows), over each row's top ``k``.

    Example (two rows, top 2; the second row's tokens swap places and one leaves the top 2):
      >>> from types import SimpleNamespace as Table
      >>> import numpy as np
      >>> ref = Table(ids=np.array([[3, 1], [0, 2]]), probs=np.array([[.5, .25], [.5, .25]]), logsumexp=np.zeros(2))
      >>> bf = Table(ids=np.array([[3, 1], [2, 4]]), probs=np.array([[.5, .25], [.375, .25]]),
      ...            logsumexp=np.array([0, .125]))
      >>> f = fidelity(ref, bf, k=2)
      >>> f["topk_overlap"], f["topk_overlap_min"], f["top1_agreement"], f["max_abs_dprob_by_rank"]
      (0.75, 0.5, 0.5, 0.125)
      >>> f["max_abs_dprob_same_id"], f["max_abs_dlogsumexp"]
      (0.125, 0.125)
    """
    import numpy as np

    ids_r, ids_o = np.asarray(ref.ids[:, :k]), np.asarray(other.ids[:, :k])
    p_r, p_o = np.asarray(ref.probs[:, :k], np.float64), np.asarray(other.probs[:, :k], np.float64)
    same = ids_o[:, :, None] == ids_r[:, None, :]           # [rows, rank in other, rank in ref]
    overlap = same.any(-1).sum(-1) / k
    shared = np.abs(p_o[:, :, None] - p_r[:, None, :])[same]
    lse = np.abs(np.asarray(other.logsumexp, np.float64) - np.asarray(ref.logsumexp, np.float64))
    return {"k": k, "topk_overlap": float(overlap.mean()), "topk_overlap_min": float(overlap.min()),
            "top1_agreement": float((ids_r[:, 0] == ids_o[:, 0]).mean()),
            "max_abs_dprob_by_rank": float(np.abs(p_o - p_r).max()),
            "max_abs_dprob_same_id": float(shared.max()) if shared.size else None,
            "max_abs_dlogsumexp": float(lse.max())}


def measure_jetjax(vocab: int, path: str, block: int, global_k: int, dtype: str = "float32",
                   compute_dtypes=("float32",), torch_ok: bool = True) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from jetjax.models import ModelConfig, random_model
    from jetjax.ngrams import jet_bigrams, sweep_contexts

    cfg = ModelConfig(arch="gpt2", n_layers=LAYERS, d_model=D, n_heads=HEADS, d_head=D // HEADS, d_mlp=4 * D,
                      vocab_size=vocab, n_positions=1024, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, dtype=jnp.dtype(dtype))
    opts = dict(top_k=TOP_K, global_k=global_k, block_rows=block, vocab_tile=vocab_tile(vocab), progress=False)
    one_block = (np.arange(block) % vocab).astype(np.int32)[:, None]
    for cd in compute_dtypes:                                        # compile every step first
        sweep_contexts(model, one_block, [path], **opts, **compute_options(cd))
    # The GEMM rates are measured in this process just before and after each sweep, so that both
    # see the same load on a shared machine.
    gemm = [measure_gemm(vocab, block, torch_ok)]
    sweeps, tables = {}, {}
    for cd in compute_dtypes:
        t0 = time.perf_counter()
        tables[cd] = jet_bigrams(model, path, **opts, **compute_options(cd))
        seconds = time.perf_counter() - t0
        gemm.append(measure_gemm(vocab, block, torch_ok))
        sweeps[cd] = {"seconds": seconds, "rows_per_s": vocab / seconds,
                      "top1_mean_prob": float(tables[cd].probs[:, 0].mean()),
                      "best_gemm_around": [list(g["best"][cd]) for g in gemm[-2:]]}
    both = "float32" in tables and "bfloat16" in tables
    return {"sweeps": sweeps, "gemm_around": gemm,
            "fidelity": fidelity(tables["float32"], tables["bfloat16"]) if both else None}


def measure_torch(vocab: int, mlp_layer) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    wte = 0.02 * torch.randn(vocab, D)
    ln = lambda x: F.layer_norm(x, (D,), 1 + 0.02 * torch.randn(D), 0.02 * torch.randn(D))  # noqa: E731
    w_fc, w_proj = 0.02 * torch.randn(D, 4 * D), 0.02 * torch.randn(4 * D, D)
    t0 = time.perf_counter()
    with torch.no_grad():
        probs, ids = [], []
        for start in range(0, vocab, TORCH_BATCH):
            x = wte[start:start + TORCH_BATCH]
            if mlp_layer is not None:
                x = F.gelu(ln(x) @ w_fc, approximate="tanh") @ w_proj
            p = torch.softmax(ln(x) @ wte.T, dim=-1)
            top = torch.topk(p, TOP_K, dim=-1)
            probs.append(top.values)
            ids.append(top.indices)
        torch.cat(probs), torch.cat(ids)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows_per_s": vocab / seconds, "threads": torch.get_num_threads()}


def child(args) -> None:
    kind, path = args.measure.split(":", 1) if ":" in args.measure else (args.measure, None)
    if kind == "gemm":
        out = measure_gemm(args.vocab, args.block_rows, not args.skip_torch)
    elif kind == "jetjax":
        out = measure_jetjax(args.vocab, path, args.block_rows, args.global_k, args.dtype, args.compute_dtypes,
                             not args.skip_torch)
    elif kind == "torch":
        out = measure_torch(args.vocab, PATHS[path])
    else:
        raise SystemExit(f"unknown measurement {args.measure!r}: expected gemm, jetjax:PATH or torch:PATH")
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps(out))


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--measure", name, "--vocab", str(args.vocab), "--block-rows",
           str(args.block_rows), "--global-k", str(args.global_k), "--dtype", args.dtype,
           "--compute-dtypes", *args.compute_dtypes] + (["--skip-torch"] if args.skip_torch else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {name} measurement failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep_rows(path: str, vocab: int, ours: dict, ref: dict | None) -> list[dict]:
    """One result row per compute dtype of a path's jetjax child (and the torch recipe's time)."""
    rows = []
    for cd, sweep in ours["sweeps"].items():
        gflops = flops(vocab, PATHS[path]) / sweep["seconds"] / 1e9
        (before_name, before), (after_name, after) = sweep["best_gemm_around"]
        best = (before + after) / 2
        rows.append({"path": path, "compute_dtype": cd, "seconds": sweep["seconds"],
                     "rows_per_s": sweep["rows_per_s"], "achieved_gflops": gflops,
                     "best_gemm": {"names": [before_name, after_name], "gflops_around": [before, after],
                                   "gflops": best},
                     "fraction_of_best_gemm": gflops / best, "at_best_gemm_s": sweep["seconds"] * gflops / best,
                     "torch_seconds": None if ref is None else ref["seconds"],
                     "torch_over_jetjax": None if ref is None else ref["seconds"] / sweep["seconds"],
                     "top1_mean_prob": sweep["top1_mean_prob"], "peak_rss_gb": ours["peak_rss_gb"],
                     "torch_peak_rss_gb": None if ref is None else ref["peak_rss_gb"]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--block-rows", type=int, default=1024)
    ap.add_argument("--global-k", type=int, default=10, help="global top pairs kept (per-row top-k is max(10, this))")
    ap.add_argument("--skip-torch", action="store_true", help="no torch recipe and no torch GEMM rates")
    add_dtype_option(ap)
    ap.add_argument("--compute-dtypes", nargs="+", default=list(COMPUTE_DTYPES), choices=COMPUTE_DTYPES,
                    help="precisions of the sweep's unembedding GEMM to measure (default: both)")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.compute_dtypes = list(dict.fromkeys(args.compute_dtypes))
    if args.measure:
        return child(args)

    info = machine()
    print(describe(info), flush=True)
    gemm = run_child("gemm", args)
    print("GEMM " + ", ".join(f"{GEMM_LABELS[k]} {v:.1f}" for k, v in gemm["gflops"].items() if v is not None)
          + " GFLOP/s", flush=True)
    rows, jetjax, torch_ref, fid = [], {}, {}, {}
    for path in args.paths:
        jetjax[path] = run_child(f"jetjax:{path}", args)
        torch_ref[path] = None if args.skip_torch else run_child(f"torch:{path}", args)
        fid[path] = jetjax[path]["fidelity"]
        for row in sweep_rows(path, args.vocab, jetjax[path], torch_ref[path]):
            rows.append(row)
            print(json.dumps(row), flush=True)
        if fid[path] is not None:
            print(json.dumps({"path": path, "bfloat16_vs_float32": fid[path]}), flush=True)

    result = {"format": 2, "vocab": args.vocab, "d_model": D, "dtype": args.dtype,
              "compute_dtypes": args.compute_dtypes, "top_k": TOP_K, "global_k": args.global_k,
              "block_rows": args.block_rows, "vocab_tile": vocab_tile(args.vocab), "machine": info,
              "load_average_end": list(os.getloadavg()), "gemm": gemm, "sweeps": rows, "fidelity": fid,
              "jetjax": jetjax, "torch_reference": torch_ref, "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = result_stem("ngrams", args.dtype)
    store = RESULTS / f"{stem}.json"
    runs = json.loads(store.read_text()).get("runs", []) if store.is_file() else []
    key = lambda run: (run["vocab"], list(dict.fromkeys(r["path"] for r in run["sweeps"])))  # noqa: E731
    runs = [r for r in runs if key(r) != key(result)] + [result]
    store.write_text(json.dumps({"runs": runs}, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n\n".join(markdown(r) for r in runs))
    print(markdown(result))


def _num(value, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def markdown(result: dict) -> str:
    if result.get("format", 1) < 2:
        return markdown_earlier(result)
    gemm, rows = result["gemm"], result["sweeps"]
    m, k, n = gemm["shape"]
    rates = []
    for name, rate in gemm["gflops"].items():
        if rate is None:
            rates.append(f"{GEMM_LABELS[name]} —")
            continue
        fewer = gemm["rows"][name] != m
        rates.append(f"{GEMM_LABELS[name]} {rate:.1f}" + (f" (on {gemm['rows'][name]} rows: no fast kernel)"
                                                         if fewer else ""))
    best = "; ".join(f"best {p} **{rate:.1f}** ({GEMM_LABELS[name]})" for p, (name, rate) in gemm["best"].items())
    lines = [f"## Jet bigram sweeps, V = {result['vocab']}, d = {D}, top-{TOP_K} per row "
             f"(global top {result['global_k']}), jetjax {dtype_label(result['dtype'])}", "",
             describe(result["machine"]), "",
             f"GEMM rates on the sweep's GEMM [{m}, {k}] @ [{k}, {n}] (block rows × vocabulary tile), in a process "
             f"of its own, best of {gemm.get('repeats', 3)}, GFLOP/s: " + ", ".join(rates) + f"; {best}. "
             f"Peak RSS {gemm['peak_rss_gb']:.2f} GB.", "",
             "'best GEMM' is the best rate of the sweep's compute precision (float32: XLA or torch float32; "
             "bfloat16: XLA or torch bfloat16), measured in the sweep's own process just before and after it "
             "(the mean of the two); 'at best GEMM s' is the sweep's FLOPs at that rate, a lower bound for any "
             "implementation in that precision. 'torch / jetjax' is the float32 torch recipe's time over "
             "jetjax's, in the same run. Peak RSS of jetjax covers all its compute dtypes and the GEMM "
             "measurements (torch loaded).", "",
             "| path | compute | jetjax s | rows/s | GFLOP/s | best GEMM GFLOP/s | of best GEMM | at best GEMM s "
             "| torch ref s | torch / jetjax | peak RSS jetjax / torch GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["best_gemm"]
        lines.append(f"| `{r['path']}` | {r['compute_dtype']} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | "
                     f"{r['achieved_gflops']:.1f} | {b['gflops']:.1f} ({' / '.join(GEMM_LABELS[x] for x in dict.fromkeys(b['names']))}) | "
                     f"{100 * r['fraction_of_best_gemm']:.0f}% | {r['at_best_gemm_s']:.1f} | "
                     f"{_num(r['torch_seconds'], '.1f')} | {_num(r['torch_over_jetjax'], '.2f')}"
                     f"{'' if r['torch_over_jetjax'] is None else '×'} | {r['peak_rss_gb']:.2f} / "
                     f"{_num(r['torch_peak_rss_gb'], '.2f')} |")
    fid = {path: f for path, f in result["fidelity"].items() if f is not None}
    if fid:
        lines += ["", f"bfloat16 against float32 (same model, same process), over each row's top {TOP_K}:", "",
                  f"| path | top-{TOP_K} overlap mean / min | same top-1 | max \\|Δp\\| rank by rank "
                  "| max \\|Δp\\| same token | max \\|Δ logsumexp\\| |",
                  "|---|---:|---:|---:|---:|---:|"]
        for path, f in fid.items():
            lines.append(f"| `{path}` | {f['topk_overlap']:.4f} / {f['topk_overlap_min']:.1f} | "
                         f"{100 * f['top1_agreement']:.2f}% | {f['max_abs_dprob_by_rank']:.2e} | "
                         f"{_num(f['max_abs_dprob_same_id'], '.2e')} | {f['max_abs_dlogsumexp']:.2e} |")
    end = result["load_average_end"]
    lines += ["", f"{result['time']}; load average at the end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} "
              "(shared machine)."]
    return "\n".join(lines) + "\n"


def markdown_earlier(result: dict) -> str:
    """A run stored before the GEMM rates and compute dtypes (kept in the results until replaced)."""
    matmul, rows = result["matmul"], result["sweeps"]
    dtype = result.get("dtype", "float32")
    lines = [f"## Jet bigram sweeps, V = {result['vocab']}, d = {D}, top-{TOP_K} per row "
             f"(global top {result['global_k']}), jetjax {dtype_label(dtype)} (earlier format)", "",
             f"float32 `jnp.dot` [{result['block_rows']}, {D}] @ [{D}, {result['vocab']}] in its own process: "
             f"**{matmul['gflops']:.1f} GFLOP/s** (peak RSS {matmul['peak_rss_gb']:.2f} GB). "
             "'of matmul' compares with the rate measured around each sweep, in the sweep's process.", "",
             "'GEMM-only s' is the sweep's arithmetic at that matmul rate, a lower bound for any implementation "
             "(the torch baseline included, which does the same GEMMs); 'bound on speed-up' is torch's time over it.",
             "",
             "| path | jetjax s | rows/s | GFLOP/s | of matmul | GEMM-only s | torch ref s | speed-up "
             "| bound on speed-up | peak RSS jetjax / torch GB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = r["torch_reference"]
        gemm_s = r["jetjax"]["seconds"] * r["fraction_of_matmul"]  # the FLOPs at the matmul rate around it
        ref_s, speedup, bound, ref_mem = ("—",) * 4
        if ref is not None:
            ref_s, speedup = f"{ref['seconds']:.1f}", f"{r['speedup_vs_torch']:.2f}×"
            bound, ref_mem = f"{ref['seconds'] / gemm_s:.2f}×", f"{ref['peak_rss_gb']:.2f}"
        lines.append(f"| `{r['path']}` | {r['jetjax']['seconds']:.1f} | {r['jetjax']['rows_per_s']:.0f} | "
                     f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_matmul']:.0f}% | {gemm_s:.1f} | {ref_s} | "
                     f"{speedup} | {bound} | {r['jetjax']['peak_rss_gb']:.2f} / {ref_mem} |")
    m = result["machine"]
    lines += ["", f"Machine: {m['platform']}, jax {m['jax']}, torch {m['torch']}, {result['time']}, "
              f"1-minute load average {m['load_average']:.1f} on {m['cpus']} CPUs (shared with other processes)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
