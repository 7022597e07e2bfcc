"""Iterative jet lens speed: jetjax against one forward pass and against the PyTorch reference algorithm.

A GPT-2-small-shaped random model (12 layers, d=768, 12 heads, V=50257), one prompt of
T=64 tokens, all L+1 = 13 rows, orders 0, 1, 2. For each order we time one call of
``iterative_jet_lens`` after compilation (median over repeats) and compare it with

* (a) one plain forward pass (``model.logits``, jitted);
* (b) the algorithm of the public PyTorch reference (lucfra/JetExpansions, ``IterativeJetLenses``):
  one forward pass for the streams, then for each layer separately the jet of the final layer
  norm centred at ``h_l`` and evaluated at ``h_L`` by k nested ``torch.autograd.functional.jvp``
  calls with ``create_graph=True`` (each order recomputing the nested chain, as the reference
  does), then the unembedding of each term. The layer norm is written out by hand, because torch's
  ``F.layer_norm`` has wrong second derivatives. The torch model is written here from the same
  weights, so the two lenses are also compared for parity.

--dtype is the storage dtype of the jetjax model's weights (default float32). With bfloat16 the
weights take half the memory while activations stay float32 (each weight is cast when used, which
usually costs a little speed on a CPU). The PyTorch reference stays float32 but is given the same
bf16-rounded weights (cast back to float32), so the parity column still compares like with like.

Everything runs in one process, one after the other. Results: benchmarks/results/lenses.{json,md}
(float32) or lenses_bfloat16.{json,md}.

    python benchmarks/lenses.py [--seq 64] [--orders 0,1,2] [--repeats 5] [--torch-repeats 2] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from jetjax.lenses import lens as lenses
from jetjax.bench.runner import (add_dtype_option, dtype_label, median_seconds, result_stem, results_dir,
                                 write_results)
from jetjax.models import ModelConfig, random_model

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()


# ---- the PyTorch reference algorithm, on the same weights ----------------------------------

def layer_norm(x, scale, bias, eps):
    import torch

    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps) * scale + bias


def gelu_tanh(x):
    import torch

    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def torch_streams(p, cfg: ModelConfig, ids):
    """h_0..h_L of GPT-2 from the weights ``p`` (torch tensors, our parameter layout)."""
    import torch

    t = ids.shape[-1]
    h = p["wte"][ids] + p["wpe"][:t]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    streams = [h]
    for layer in range(cfg.n_layers):
        b = p["h"][layer]
        x = layer_norm(h, b["ln_1"]["scale"], b["ln_1"]["bias"], cfg.norm_eps)
        qkv = x @ b["attn"]["c_attn"]["kernel"] + b["attn"]["c_attn"]["bias"]
        q, k, v = (a.reshape(t, cfg.n_heads, cfg.d_head).transpose(0, 1) for a in qkv.split(cfg.d_model, -1))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg.d_head)
        attn = torch.softmax(scores.masked_fill(~causal, torch.finfo(scores.dtype).min), -1) @ v
        h = h + attn.transpose(0, 1).reshape(t, cfg.d_model) @ b["attn"]["c_proj"]["kernel"] + b["attn"]["c_proj"]["bias"]
        x = layer_norm(h, b["ln_2"]["scale"], b["ln_2"]["bias"], cfg.norm_eps)
        hidden = gelu_tanh(x @ b["mlp"]["c_fc"]["kernel"] + b["mlp"]["c_fc"]["bias"])
        h = h + hidden @ b["mlp"]["c_proj"]["kernel"] + b["mlp"]["c_proj"]["bias"]
        streams.append(h)
    return streams


def torch_jet(f, x, y, order):
    """The reference's jet: term j is the j-fold nested jvp (create_graph=True) divided by j!."""
    import torch

    v = (y - x).detach()
    functions, terms = [f], [f(x)]
    for j in range(1, order + 1):
        prev = functions[-1]
        functions.append(lambda z, prev=prev: torch.autograd.functional.jvp(prev, z, v, create_graph=True,
                                                                          strict=False)[1])
        terms.append(functions[j](x) / math.factorial(j))
    return sum(terms[1:], terms[0])


def torch_iterative_lens(p, cfg: ModelConfig, ids, order):
    import torch

    with torch.no_grad():
        streams = torch_streams(p, cfg, ids)
    final = lambda h: layer_norm(h, p["ln_f"]["scale"], p["ln_f"]["bias"], cfg.norm_eps)
    rows = []
    for centre in streams:  # one layer at a time, as the reference
        normed = torch_jet(final, centre, streams[-1], order)
        rows.append((normed @ p["wte"].T).detach())
    return torch.stack(rows)


# ---------------------------------------------------------------------------------------------

def _fidelity(a, b, k: int = 10) -> dict:
    """bfloat16 lens ``b`` against float32 lens ``a`` (both ``[rows, T, V]``): per cell, the share of
    float32's top-``k`` ids also in bfloat16's top-``k`` (mean and worst cell), max |Δ probability|,
    max |Δ logit| and the largest |logit|.

    Example (one row, two positions, V = 12, top 10; position 1 swaps the 10th and 11th tokens):
      >>> a = np.arange(24, dtype=np.float32).reshape(1, 2, 12)
      >>> b = a.copy(); b[0, 1, 1] += 1.5
      >>> f = _fidelity(a, b)
      >>> f["top10_overlap"], f["top10_overlap_min"], f["max_abs_dlogit"], f["max_abs_logit"]
      (0.95, 0.9, 1.5, 23.0)
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    top_a = np.argpartition(-a, k, axis=-1)[..., :k]
    top_b = np.argpartition(-b, k, axis=-1)[..., :k]
    overlap = (top_a[..., :, None] == top_b[..., None, :]).any(-1).mean(-1)
    pa, pb = (np.asarray(jax.nn.softmax(jnp.asarray(x), axis=-1)) for x in (a, b))
    return dict(top10_overlap=float(overlap.mean()), top10_overlap_min=float(overlap.min()),
                max_abs_dprob=float(np.abs(pa - pb).max()), max_abs_dlogit=float(np.abs(a - b).max()),
                max_abs_logit=float(np.abs(a).max()))


def main():
    import torch

    from jetjax.paths.expand import final_norm_jets
    from jetjax._internal.precision import unembed, unembedding_operands
    from jetjax.bench.machine import describe, gemm_rates, machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--orders", default="0,1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-repeats", type=int, default=2)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=50257)
    add_dtype_option(ap)
    args = ap.parse_args()
    orders = [int(k) for k in args.orders.split(",")]

    info = machine()
    print(describe(info), flush=True)
    d = args.d_model
    cfg = ModelConfig(arch="gpt2", n_layers=args.layers, d_model=d, n_heads=d // 64, d_head=64, d_mlp=4 * d,
                      vocab_size=args.vocab, n_positions=max(1024, args.seq), norm_eps=1e-5,
                      activation="gelu_new")
    model = random_model(cfg, seed=0, dtype=jnp.dtype(args.dtype))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=args.seq).astype(np.int32)
    n_rows = cfg.n_layers + 1
    t = args.seq

    def timed_ms(fn):
        jax.block_until_ready(fn())
        return 1e3 * median_seconds(lambda: jax.block_until_ready(fn()), args.repeats)

    forward_ms = timed_ms(lambda: model.logits(ids))
    # Where a lens's time goes: the streams (a forward pass without its unembedding), the jets of the
    # final norm at every row, and the rows' unembeddings, each timed alone, jitted, on the same inputs.
    stream_fn = jax.jit(lambda p, x: model.residual_stream(x, params=p))
    streams_ms = timed_ms(lambda: stream_fn(model.params, ids))
    streams = stream_fn(model.params, ids)
    unembed_fn = jax.jit(lambda p, x: model.unembed(x, params=p))
    unembed_ms = timed_ms(lambda: unembed_fn(model.params, streams))
    w16, b16 = unembedding_operands(model, "bfloat16")
    unembed16_fn = jax.jit(unembed)
    unembed16_ms = timed_ms(lambda: unembed16_fn(streams, w16, b16))
    print(f"forward {forward_ms:.1f} ms; streams {streams_ms:.1f} ms; unembedding {n_rows} rows: float32 "
          f"{unembed_ms:.1f} ms, bfloat16 {unembed16_ms:.1f} ms", flush=True)
    # the best GEMM of this machine on the rows' unembedding, [rows * T, d] @ [d, V]
    gemm = gemm_rates(n_rows * t, d, cfg.vocab_size)
    unembed_gflop = 2.0 * n_rows * t * d * cfg.vocab_size / 1e9
    print("GEMM GFLOP/s:", {k: None if v is None else round(v, 1) for k, v in gemm["gflops"].items()}, flush=True)

    # float32 copies of our (possibly bf16-rounded) weights: the reference computes in float32 on the same values
    p = jax.tree_util.tree_map(lambda a: torch.from_numpy(np.array(a, dtype=np.float32)), model.params)
    t_ids = torch.from_numpy(ids.astype(np.int64))
    rows = []
    for k in orders:
        jets_fn = jax.jit(lambda p_, s_, k=k: final_norm_jets(model, s_, s_[-1], k, params=p_))
        jets_ms = timed_ms(lambda: jets_fn(model.params, streams))
        call = lambda k=k, cd="float32": lenses.iterative_jet_lens(model, ids, order=k, compute_dtype=cd).logits
        t0 = time.perf_counter()
        ours = np.asarray(jax.block_until_ready(call()))
        first_s = time.perf_counter() - t0
        ours_ms = timed_ms(call)
        ours16 = np.asarray(jax.block_until_ready(call(cd="bfloat16")))
        ours16_ms = timed_ms(lambda: call(cd="bfloat16"))
        ref = torch_iterative_lens(p, cfg, t_ids, k).numpy()
        torch_ms = 1e3 * median_seconds(lambda k=k: torch_iterative_lens(p, cfg, t_ids, k), args.torch_repeats)
        floor_ms = streams_ms + unembed_ms
        row = dict(order=k, rows=n_rows, first_call_s=first_s, lens_ms=ours_ms, lens_bf16_ms=ours16_ms,
                   streams_ms=streams_ms, jets_ms=jets_ms, unembed_ms=unembed_ms, floor_ms=floor_ms,
                   lens_over_floor=ours_ms / floor_ms, lens_over_unembed=ours_ms / unembed_ms,
                   forward_ms=forward_ms, lens_over_forward=ours_ms / forward_ms, torch_ms=torch_ms,
                   torch_over_lens=torch_ms / ours_ms, torch_over_floor=torch_ms / floor_ms,
                   max_abs_diff_vs_torch=float(np.abs(ours - ref).max()), max_abs_logit=float(np.abs(ref).max()),
                   bf16=_fidelity(ours, ours16))
        rows.append(row)
        print(" ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()),
              flush=True)

    # GEMM FLOPs (2 per multiply-add). A forward pass: the blocks' weights (12 d² per layer in GPT-2),
    # attention scores and mixing (2 · 2 T² d per layer) and one unembedding; the lens needs the streams
    # (the forward pass without its unembedding) plus one unembedding per row.
    n_layers = cfg.n_layers
    one_unembed = 2.0 * t * d * cfg.vocab_size
    forward_flops = n_layers * (2.0 * t * 12 * d * d + 4.0 * t * t * d) + one_unembed
    lens_flops = forward_flops + n_layers * one_unembed
    # the best float32 rate seen in this run: gemm_rates' best, or the rows' unembedding itself when
    # that ran faster (the rate of this shared machine moves from minute to minute)
    best32 = max([tuple(gemm["best"]["float32"]), ("the rows' unembedding", unembed_gflop / (unembed_ms / 1e3))],
                 key=lambda item: item[1])
    bound_ms = 1e3 * lens_flops / (best32[1] * 1e9)   # every GEMM of the lens at the best float32 rate
    meta = dict(machine=info, gemm=gemm, forward_ms=forward_ms, streams_ms=streams_ms, unembed_all_rows_ms=unembed_ms,
                unembed_all_rows_bf16_ms=unembed16_ms, unembed_gflop=unembed_gflop,
                unembed_gflops_achieved=unembed_gflop / (unembed_ms / 1e3),
                forward_gflop=forward_flops / 1e9, lens_gflop=lens_flops / 1e9,
                lens_over_forward_flops=lens_flops / forward_flops, arithmetic_bound_ms=bound_ms, best_float32_gemm=list(best32),
                backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                torch=torch.__version__, torch_threads=torch.get_num_threads(), platform=platform.machine(),
                cpu_count=os.cpu_count(), n_layers=cfg.n_layers, d_model=d, vocab_size=cfg.vocab_size, seq=t,
                batch=1, repeats=args.repeats, torch_repeats=args.torch_repeats, dtype=args.dtype,
                activation_dtype="float32", torch_dtype="float32")
    stem = result_stem("lenses", args.dtype)
    g = gemm["gflops"]
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
    lines = [f"Iterative jet lens, all {n_rows} rows, GPT-2-small-shaped random model "
             f"(L={cfg.n_layers}, d={d}, V={cfg.vocab_size}), T={t}, {dtype_label(args.dtype)}, "
             f"{meta['backend']}, jax {jax.__version__}, torch {torch.__version__}"
             + ("" if args.dtype == "float32" else " (the reference in float32 on the same bf16-rounded weights)"),
             "", describe(info), "",
             f"Where the time goes, each part timed alone: the streams (a forward pass without its unembedding) "
             f"{streams_ms:.1f} ms; unembedding the {n_rows} rows {unembed_ms:.1f} ms in float32 "
             f"({unembed_gflop:.1f} GFLOP at {meta['unembed_gflops_achieved']:.0f} GFLOP/s), {unembed16_ms:.1f} ms in "
             f"bfloat16; the jets of the final norm: the `jets ms` column. One forward pass: {forward_ms:.1f} ms. "
             f"The floor for any lens returning every row's logits is streams + unembeddings = "
             f"{streams_ms + unembed_ms:.1f} ms; at the best float32 GEMM rate seen in this run on the rows' unembedding "
             f"({best32[1]:.0f} GFLOP/s, {best32[0]}) all of the lens's {lens_flops / 1e9:.1f} GFLOP of GEMMs take "
             f"{bound_ms:.1f} ms at least.",
             "", f"GEMM rates in this run on [{n_rows * t}, {d}] @ [{d}, {cfg.vocab_size}], GFLOP/s: XLA float32 "
             f"{fmt(g['xla_float32'])}, torch float32 {fmt(g['torch_float32'])}, XLA bfloat16 "
             f"{fmt(g['xla_bfloat16'])}, torch bfloat16 {fmt(g['torch_bfloat16'])}.", "",
             "| k | lens ms | jets ms | lens / floor | lens / unembeddings | bfloat16 lens ms | reference ms | "
             "reference / jetjax | reference / floor | first call s | max abs diff vs reference (max abs logit) | "
             "bf16: top-10 overlap (worst cell) | bf16: max abs Δp | bf16: max abs Δlogit |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["bf16"]
        lines.append(f"| {r['order']} | {r['lens_ms']:.1f} | {r['jets_ms']:.1f} | {r['lens_over_floor']:.2f}x | "
                     f"{r['lens_over_unembed']:.2f}x | {r['lens_bf16_ms']:.1f} | {r['torch_ms']:.1f} | "
                     f"{r['torch_over_lens']:.1f}x | {r['torch_over_floor']:.1f}x | {r['first_call_s']:.1f} | "
                     f"{r['max_abs_diff_vs_torch']:.1e} ({r['max_abs_logit']:.1f}) | "
                     f"{f['top10_overlap']:.4f} ({f['top10_overlap_min']:.1f}) | {f['max_abs_dprob']:.1e} | "
                     f"{f['max_abs_dlogit']:.1e} |")
    lines += ["", "`reference / floor` is the most any implementation returning every row's float32 logits could "
              "gain over the reference on this machine: the reference's time over the streams plus the "
              "unembeddings, both measured here."]
    write_results(stem, dict(meta=meta, rows=rows), "\n".join(lines), out=RESULTS)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
