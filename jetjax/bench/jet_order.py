"""Jet order sweep: jetjax.jet vs k nested jax.jvp on a GPT-2-small-shaped block.

A block of d=768, 12 heads, T=64, random weights (passed as jit arguments, not compiled-in
constants). For each order k the jet terms J^k block(x)(y) are computed both ways, under jax.jit
(and, for runtime only, through the stock jax.experimental.jet); we record compile time, the median
runtime over repeats, and the largest relative difference between the two results.

--dtype is the storage dtype of the block's weights (default float32). With bfloat16 the weights
take half the memory but the inputs, the series and every activation stay float32 (each weight is
cast when used, which usually costs a little speed on a CPU); all three computations use the same
bf16-rounded weights, so the difference column still measures jet against nested jvp.
Written to benchmarks/results/jet_order.{json,md} (float32) or jet_order_bfloat16.{json,md}.

    python benchmarks/jet_order.py [--orders 1-8] [--repeats 10] [--seq 64] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import jetjax as jj
from jetjax.bench.runner import add_dtype_option, dtype_label, result_stem, results_dir, write_results
from jetjax.models import ModelConfig, random_model

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()


def nested_jvp_terms(f, x, y, order):
    v = y - x
    terms, g = [], f
    for j in range(order + 1):
        terms.append(g(x) / math.factorial(j))
        g = (lambda h: lambda z: jax.jvp(h, (z,), (v,))[1])(g)
    return terms


def stock_jet_terms(f, x, y, order):
    """The same terms through jax.experimental.jet as shipped (zero series materialised)."""
    from jax.experimental.jet import jet

    v = y - x
    series = [v] + [jnp.zeros_like(v)] * (order - 1)
    primal, derivs = jet(f, (x,), (series,))
    return [primal] + [d / math.factorial(j + 1) for j, d in enumerate(derivs)]


def timed(fn, *args, repeats):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), out


def parse_orders(text: str) -> list[int]:
    if "-" in text:
        lo, hi = map(int, text.split("-"))
        return list(range(lo, hi + 1))
    return [int(t) for t in text.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", default="1-8")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    add_dtype_option(ap)
    args = ap.parse_args()

    d = args.d_model
    cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=d, n_heads=args.heads, d_head=d // args.heads,
                      d_mlp=4 * d, vocab_size=64, n_positions=max(args.seq, 64), norm_eps=1e-5,
                      activation="gelu_new")
    model = random_model(cfg, seed=0, dtype=jnp.dtype(args.dtype))
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (args.seq, d), jnp.float32)
    y = x + 0.5 * jax.random.normal(ky, (args.seq, d), jnp.float32)

    rows = []
    for k in parse_orders(args.orders):
        def ours(p, a, b, k=k):
            return jj.jet(lambda h: model.block(0, h, params=p), a, b, k, return_terms=True)[1]

        def stock(p, a, b, k=k):
            return stock_jet_terms(lambda h: model.block(0, h, params=p), a, b, k)

        def nested(p, a, b, k=k):
            return nested_jvp_terms(lambda h: model.block(0, h, params=p), a, b, k)

        c_ours, r_ours, t_ours = timed(ours, model.params, x, y, repeats=args.repeats)
        c_ref, r_ref, t_ref = timed(nested, model.params, x, y, repeats=args.repeats)
        _, r_stock, _ = timed(stock, model.params, x, y, repeats=args.repeats)
        rel = max(float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)) for a, b in zip(t_ours, t_ref))
        row = dict(order=k, jet_compile_s=c_ours, jvp_compile_s=c_ref, jet_run_ms=1e3 * r_ours,
                   jvp_run_ms=1e3 * r_ref, stock_jet_run_ms=1e3 * r_stock, compile_ratio=c_ref / c_ours, run_ratio=r_ours / r_ref,
                   max_rel_diff=rel)
        rows.append(row)
        print(" ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()),
              flush=True)

    meta = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
                jax=jax.__version__, machine=platform.machine(), cpu_count=__import__("os").cpu_count(),
                d_model=d, heads=args.heads, seq=args.seq, repeats=args.repeats, dtype=args.dtype,
                activation_dtype="float32")
    stem = result_stem("jet_order", args.dtype)
    lines = [f"GPT-2-small-shaped block, T={args.seq}, {dtype_label(args.dtype)}, {meta['device']} ({meta['backend']}), "
             f"jax {jax.__version__}",
             "", "| k | jet compile s | nested-jvp compile s | compile ratio (jvp/jet) | jet run ms | nested-jvp run ms | stock jet run ms | run ratio (jet/jvp) | max rel diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['order']} | {r['jet_compile_s']:.2f} | {r['jvp_compile_s']:.2f} | {r['compile_ratio']:.1f}x | "
                     f"{r['jet_run_ms']:.1f} | {r['jvp_run_ms']:.1f} | {r['stock_jet_run_ms']:.1f} | {r['run_ratio']:.2f} | {r['max_rel_diff']:.1e} |")
    write_results(stem, dict(meta=meta, rows=rows), "\n".join(lines), out=RESULTS)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
