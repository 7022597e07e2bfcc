"""Exhaustive paths: jetjax.reduce_paths vs a naive per-path loop, and how cost grows.

A GPT-2-small-shaped model (d=768, 12 heads, V=50257) with random weights, T=16 tokens.
Every order-0 block path (2^L of them) is decoded to full logits and reduced to its norm (plus
the top-10 paths' logits and the remainder), which is what ``jetjax.reduce_paths`` does by
default. The naive baseline recomputes each path from the embedding with jitted per-block
functions and decodes it, one path at a time; it is timed on a random sample of paths and
reported as paths per second. Its norms are checked against ours on that sample.

--dtype is the storage dtype of the weights (default float32). With bfloat16 the weights take
half the memory (visible in the resident-memory columns) while activations stay float32 (each
weight is cast when used, which usually costs a little speed on a CPU); the naive loop runs on the
same bf16 weights, so the agreement on the sample still checks jetjax against it.

Each measurement runs in its own subprocess so that its peak resident memory can be read.
Results go to benchmarks/results/paths.{json,md} (float32) or paths_bfloat16.{json,md}.

    python benchmarks/paths.py [--layers 12] [--seq 16] [--naive-sample 64] [--quick] [--dtype bfloat16]
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

from jetjax.bench.runner import add_dtype_option, dtype_label, result_stem, results_dir, write_results

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()


def _config(n_layers, vocab):
    from jetjax.models import ModelConfig

    return ModelConfig(arch="gpt2", n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072,
                       vocab_size=vocab, n_positions=1024, norm_eps=1e-5, activation="gelu_new")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jetjax as jj
    from jetjax.models import random_model

    model = random_model(_config(case["layers"], case["vocab"]), seed=0, dtype=jnp.dtype(case["dtype"]))
    ids = np.random.default_rng(0).integers(0, case["vocab"], size=case["seq"]).astype(np.int32)
    jax.block_until_ready(model.params)
    base_mb = _rss_mb()
    out = dict(case)
    if case["kind"] == "jetjax":
        t0 = time.perf_counter()
        res = jj.reduce_paths(model, ids, order=case["order"], top_k=10, chunk_size=case["chunk"], progress=False)
        out["first_call_s"] = time.perf_counter() - t0  # compile + run
        t0 = time.perf_counter()
        res = jj.reduce_paths(model, ids, order=case["order"], top_k=10, chunk_size=case["chunk"], progress=False)
        out["run_s"] = time.perf_counter() - t0
        out["paths"] = len(res)
        out["paths_per_s"] = len(res) / out["run_s"]
        sample = np.random.default_rng(1).choice(len(res), size=min(case["check"], len(res)), replace=False)
        out["sample_norms"] = {res.labels[i]: float(res.norms[i]) for i in sample}
    else:  # naive: every path from the embedding, one at a time
        params = model.params
        block = jax.jit(lambda p, layer, x: model.block(layer, x, params=p), static_argnums=1)
        decode = jax.jit(lambda p, x: jnp.sqrt(jnp.sum(jnp.square(model.decode(x, params=p)))))
        h0 = model.embed(ids)
        labels = case["labels"]

        def one(label):
            x = h0
            for part in label.split(">")[1:-1]:
                x = block(params, int(part[len("block"):]), x)
            return float(decode(params, x))

        for layer in range(case["layers"]):  # compile every block once, outside the timing
            jax.block_until_ready(block(params, layer, h0))
        one("emb>dec")
        t0 = time.perf_counter()
        out["sample_norms"] = {lab: one(lab) for lab in labels}
        out["run_s"] = time.perf_counter() - t0
        out["paths"] = len(labels)
        out["paths_per_s"] = len(labels) / out["run_s"]
    out["base_rss_mb"] = base_mb
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def spawn(case: dict) -> dict:
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, "-m", __spec__.name, "--_case", json.dumps(case)], capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--naive-sample", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    ap.add_argument("--_case", help=argparse.SUPPRESS)
    add_dtype_option(ap)
    args = ap.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(json.loads(args._case))))
        return
    import jax

    if args.quick:
        args.layers, args.vocab, args.naive_sample = 4, 1000, 8
    common = dict(seq=args.seq, vocab=args.vocab, chunk=args.chunk, check=args.naive_sample, dtype=args.dtype)
    main_case = spawn(dict(kind="jetjax", layers=args.layers, order=0, **common))
    naive = spawn(dict(kind="naive", layers=args.layers, order=0, labels=sorted(main_case["sample_norms"]), **common))
    diffs = [abs(naive["sample_norms"][k] - v) / v for k, v in main_case["sample_norms"].items()]
    depth = [spawn(dict(kind="jetjax", layers=n, order=0, **common)) for n in (4, 8) if n < args.layers]
    depth.append(main_case)
    order_layers = min(8, args.layers)
    orders = [next(c for c in depth if c["layers"] == order_layers)] if order_layers in [c["layers"] for c in depth] \
        else [spawn(dict(kind="jetjax", layers=order_layers, order=0, **common))]
    orders += [spawn(dict(kind="jetjax", layers=order_layers, order=k, **common)) for k in (1, 2)]

    device = jax.devices()[0]
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "backend": jax.default_backend(),
        "device_kind": device.device_kind, "jax": jax.__version__, "seq": args.seq, "vocab": args.vocab,
        "layers": args.layers, "chunk": args.chunk, "dtype": args.dtype, "activation_dtype": "float32",
        "jetjax_paths_per_s": main_case["paths_per_s"], "naive_paths_per_s": naive["paths_per_s"],
        "speedup": main_case["paths_per_s"] / naive["paths_per_s"],
        "jetjax_peak_rss_mb": main_case["peak_rss_mb"], "jetjax_base_rss_mb": main_case["base_rss_mb"],
        "naive_peak_rss_mb": naive["peak_rss_mb"], "max_rel_norm_diff_vs_naive": max(diffs),
        "depth": [{k: c[k] for k in ("layers", "order", "paths", "run_s", "first_call_s", "paths_per_s",
                                     "peak_rss_mb")} for c in depth],
        "orders": [{k: c[k] for k in ("layers", "order", "paths", "run_s", "first_call_s", "paths_per_s",
                                      "peak_rss_mb")} for c in orders],
    }
    stem = result_stem("paths", args.dtype)
    lines = [
        f"Exhaustive order-0 block paths, GPT-2-small-shaped random model (d=768, V={args.vocab}), "
        f"T={args.seq}, {dtype_label(args.dtype)}, {summary['machine']}, "
        f"{summary['backend']} ({summary['device_kind']}), "
        f"jax {summary['jax']}", "",
        f"{args.layers} layers, {main_case['paths']} paths: jetjax {main_case['paths_per_s']:.1f} paths/s "
        f"({main_case['run_s']:.1f} s; first call with compilation {main_case['first_call_s']:.1f} s), naive "
        f"per-path loop {naive['paths_per_s']:.2f} paths/s (sample of {naive['paths']}): "
        f"**{summary['speedup']:.1f}x**. Peak RSS {main_case['peak_rss_mb']:.0f} MB "
        f"(model and runtime alone {main_case['base_rss_mb']:.0f} MB); naive {naive['peak_rss_mb']:.0f} MB. "
        f"Largest relative norm difference on the sample: {max(diffs):.1e}.", "",
        "| layers | order | paths | run s | first call s | paths/s | peak RSS MB |", "|---|---|---|---|---|---|---|",
    ]
    seen = set()
    for c in depth + orders:
        key = (c["layers"], c["order"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"| {c['layers']} | {c['order']} | {c['paths']} | {c['run_s']:.2f} | {c['first_call_s']:.1f} | "
                     f"{c['paths_per_s']:.1f} | {c['peak_rss_mb']:.0f} |")
    write_results(stem, summary, "\n".join(lines), out=RESULTS)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
