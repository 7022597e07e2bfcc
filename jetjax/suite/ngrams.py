"""Full-vocabulary jet bigram sweeps on a GPT-2-small-shaped model, against the matmul rate and a torch baseline.

Random weights of GPT-2-small shape (V = 50257, d = 768, 12 layers). Measured, each in its own
subprocess so that its peak resident memory (``ru_maxrss``) is its own:

* ``matmul``: the machine's float32 rate on a plain ``jnp.dot`` of the sweep's shape
  (``[block, d] @ [d, V]``), the ceiling of a sweep;
* ``jetjax emb>dec`` / ``jetjax emb>mlp5>dec``: ``jet_bigrams(top_k=10)`` over all V rows (compile
  excluded by a warm-up on one block; the step is cached per model);
* ``torch emb>dec`` / ``torch emb>mlp5>dec``: the public PyTorch reference's ``eval_over_vocab`` recipe
  (batches of 2000 rows, full softmax over the vocabulary, ``topk``), written here from its description.

Achieved FLOP/s count the GEMM (``2 V² d``) plus, for the MLP path, ``16 V d²``. Results go to
``benchmarks/results/ngrams.{json,md}``.

    python benchmarks/ngrams.py [--vocab 50257] [--paths emb>dec emb>mlp5>dec] [--global-k 10] [--skip-torch]
                                [--dtype float32|bfloat16]

Runs of different vocabulary sizes / paths accumulate in the results files. ``--dtype bfloat16``
stores the jetjax model's weights in bfloat16 (jetjax computes activations, and so the sweep's GEMM,
in float32 either way; the unembedding matrix is read off the bf16 weights); results then go to
``ngrams_bfloat16.{json,md}``. The matmul rate and the torch baseline stay float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from jetjax.bench import add_dtype_option, dtype_label, result_stem, results_dir

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()
D, LAYERS, HEADS, TOP_K, TORCH_BATCH = 768, 12, 12, 10, 2000
PATHS = {"emb>dec": None, "emb>mlp5>dec": 5}


def flops(vocab: int, mlp_layer) -> float:
    return 2.0 * vocab * vocab * D + (16.0 * vocab * D * D if mlp_layer is not None else 0.0)


def measure_matmul(vocab: int, block: int) -> dict:
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (block, D), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (D, vocab), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(x, w).block_until_ready()
    times = []
    for _ in range(12):
        t0 = time.perf_counter()
        dot(x, w).block_until_ready()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"seconds_per_block": best, "gflops": 2.0 * block * D * vocab / best / 1e9}


def measure_jetjax(vocab: int, path: str, block: int, global_k: int, dtype: str = "float32") -> dict:
    import jax.numpy as jnp
    import numpy as np

    from jetjax.models import ModelConfig, random_model
    from jetjax.ngrams import jet_bigrams, sweep_contexts

    cfg = ModelConfig(arch="gpt2", n_layers=LAYERS, d_model=D, n_heads=HEADS, d_head=D // HEADS, d_mlp=4 * D,
                      vocab_size=vocab, n_positions=1024, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, dtype=jnp.dtype(dtype))
    opts = dict(top_k=TOP_K, global_k=global_k, block_rows=block, progress=False)
    sweep_contexts(model, (np.arange(block) % vocab).astype(np.int32)[:, None], [path], **opts)  # compile
    # The matmul rate is measured in the same process just before and after the sweep, so that both
    # see the same load on a shared machine.
    before = measure_matmul(vocab, block)["gflops"]
    t0 = time.perf_counter()
    table = jet_bigrams(model, path, **opts)
    seconds = time.perf_counter() - t0
    after = measure_matmul(vocab, block)["gflops"]
    return {"seconds": seconds, "rows_per_s": vocab / seconds, "top1_mean_prob": float(table.probs[:, 0].mean()),
            "matmul_gflops_around": [before, after]}


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
    if kind == "matmul":
        out = measure_matmul(args.vocab, args.block_rows)
    elif kind == "jetjax":
        out = measure_jetjax(args.vocab, path, args.block_rows, args.global_k, args.dtype)
    else:
        out = measure_torch(args.vocab, PATHS[path])
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(json.dumps(out))


def run_child(name: str, args) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--measure", name, "--vocab", str(args.vocab), "--block-rows",
           str(args.block_rows), "--global-k", str(args.global_k), "--dtype", args.dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--block-rows", type=int, default=1024)
    ap.add_argument("--global-k", type=int, default=10, help="global top pairs kept (per-row top-k is max(10, this))")
    ap.add_argument("--skip-torch", action="store_true")
    add_dtype_option(ap)
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        return child(args)

    matmul = run_child("matmul", args)
    print(f"matmul: {matmul['gflops']:.1f} GFLOP/s", flush=True)
    rows = []
    for path in args.paths:
        mlp_layer = PATHS[path]
        ours = run_child(f"jetjax:{path}", args)
        ref = None if args.skip_torch else run_child(f"torch:{path}", args)
        gflops = flops(args.vocab, mlp_layer) / ours["seconds"] / 1e9
        row = {"path": path, "jetjax": ours, "torch_reference": ref, "achieved_gflops": gflops,
               "fraction_of_matmul": gflops / (sum(ours["matmul_gflops_around"]) / 2),
               "speedup_vs_torch": None if ref is None else ref["seconds"] / ours["seconds"]}
        rows.append(row)
        print(json.dumps(row), flush=True)

    import jax
    import torch

    result = {"vocab": args.vocab, "d_model": D, "dtype": args.dtype, "top_k": TOP_K, "global_k": args.global_k,
              "block_rows": args.block_rows, "matmul": matmul, "sweeps": rows,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "jax": jax.__version__, "torch": torch.__version__, "devices": str(jax.devices()),
                          "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]},
              "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    RESULTS.mkdir(exist_ok=True)
    stem = result_stem("ngrams", args.dtype)
    store = RESULTS / f"{stem}.json"
    runs = json.loads(store.read_text()).get("runs", []) if store.is_file() else []
    key = lambda run: (run["vocab"], [r["path"] for r in run["sweeps"]])  # noqa: E731
    runs = [r for r in runs if key(r) != key(result)] + [result]
    store.write_text(json.dumps({"runs": runs}, indent=1))
    (RESULTS / f"{stem}.md").write_text("\n\n".join(markdown(r) for r in runs))
    print(markdown(result))


def markdown(result: dict) -> str:
    matmul, rows = result["matmul"], result["sweeps"]
    dtype = result.get("dtype", "float32")
    lines = [f"## Jet bigram sweeps, V = {result['vocab']}, d = {D}, top-{TOP_K} per row "
             f"(global top {result['global_k']}), jetjax {dtype_label(dtype)}", "",
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
