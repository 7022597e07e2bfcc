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
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jetjax import lenses
from jetjax.bench import add_dtype_option, dtype_label, median_seconds, result_stem, results_dir
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

def main():
    import torch

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

    d = args.d_model
    cfg = ModelConfig(arch="gpt2", n_layers=args.layers, d_model=d, n_heads=d // 64, d_head=64, d_mlp=4 * d,
                      vocab_size=args.vocab, n_positions=max(1024, args.seq), norm_eps=1e-5,
                      activation="gelu_new")
    model = random_model(cfg, seed=0, dtype=jnp.dtype(args.dtype))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=args.seq).astype(np.int32)
    load_before = os.getloadavg()

    jax.block_until_ready(model.logits(ids))
    forward_s = median_seconds(lambda: jax.block_until_ready(model.logits(ids)), args.repeats)
    print(f"forward: {1e3 * forward_s:.1f} ms", flush=True)
    # The floor for any lens over all rows: unembedding L+1 streams (no norm, no jet).
    unembed = jax.jit(lambda params, x: model.unembed(x, params=params))
    streams = model.residual_stream(ids)
    jax.block_until_ready(unembed(model.params, streams))
    floor_s = median_seconds(lambda: jax.block_until_ready(unembed(model.params, streams)), args.repeats)
    print(f"unembedding all {cfg.n_layers + 1} streams: {1e3 * floor_s:.1f} ms", flush=True)

    # float32 copies of our (possibly bf16-rounded) weights: the reference computes in float32 on the same values
    p = jax.tree_util.tree_map(lambda a: torch.from_numpy(np.array(a, dtype=np.float32)), model.params)
    t_ids = torch.from_numpy(ids.astype(np.int64))
    rows = []
    for k in orders:
        call = lambda k=k: jax.block_until_ready(lenses.iterative_jet_lens(model, ids, order=k).logits)
        t0 = time.perf_counter()
        ours = np.asarray(call())
        first_s = time.perf_counter() - t0
        ours_s = median_seconds(call, args.repeats)
        ref = torch_iterative_lens(p, cfg, t_ids, k).numpy()
        torch_s = median_seconds(lambda k=k: torch_iterative_lens(p, cfg, t_ids, k), args.torch_repeats)
        err = float(np.abs(ours - ref).max())
        row = dict(order=k, rows=cfg.n_layers + 1, first_call_s=first_s, lens_ms=1e3 * ours_s,
                   forward_ms=1e3 * forward_s, lens_over_forward=ours_s / forward_s, torch_ms=1e3 * torch_s,
                   torch_over_lens=torch_s / ours_s, max_abs_diff_vs_torch=err,
                   max_abs_logit=float(np.abs(ref).max()))
        rows.append(row)
        print(" ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()),
              flush=True)

    # GEMM FLOPs (2 per multiply-add). A forward pass: the blocks' weights (12 d² per layer in GPT-2),
    # attention scores and mixing (2 · 2 T² d per layer) and one unembedding; the lens needs the streams
    # (the forward pass without its unembedding) plus one unembedding per row (the h_L row is the model's
    # own logits), so (L + 1) unembeddings in all: the ratio below bounds lens / forward from below
    # for any implementation that returns every row's logits and runs its GEMMs no faster than the
    # forward pass runs its own.
    t, n_layers = args.seq, cfg.n_layers
    unembed_flops = 2.0 * t * d * cfg.vocab_size
    forward_flops = n_layers * (2.0 * t * 12 * d * d + 4.0 * t * t * d) + unembed_flops
    lens_flops = forward_flops + n_layers * unembed_flops
    print(f"GEMM FLOPs: forward {forward_flops / 1e9:.2f} G, lens {lens_flops / 1e9:.2f} G "
          f"({lens_flops / forward_flops:.2f}x)", flush=True)
    meta = dict(forward_ms=1e3 * forward_s, unembed_all_rows_ms=1e3 * floor_s, forward_gflop=forward_flops / 1e9,
                lens_gflop=lens_flops / 1e9, lens_over_forward_flops=lens_flops / forward_flops, backend=jax.default_backend(), device=str(jax.devices()[0].device_kind), jax=jax.__version__,
                torch=torch.__version__, torch_threads=torch.get_num_threads(), machine=platform.machine(),
                cpu_count=os.cpu_count(), load_average_before=load_before, load_average_after=os.getloadavg(),
                n_layers=cfg.n_layers, d_model=d, vocab_size=cfg.vocab_size, seq=args.seq, batch=1,
                repeats=args.repeats, torch_repeats=args.torch_repeats, dtype=args.dtype,
                activation_dtype="float32", torch_dtype="float32")
    stem = result_stem("lenses", args.dtype)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    lines = [f"Iterative jet lens, all {cfg.n_layers + 1} rows, GPT-2-small-shaped random model "
             f"(L={cfg.n_layers}, d={d}, V={cfg.vocab_size}), T={args.seq}, {dtype_label(args.dtype)}, "
             f"{meta['backend']} "
             f"({meta['cpu_count']} cores; load average {load_before[0]:.1f} before, "
             f"{meta['load_average_after'][0]:.1f} after), jax {jax.__version__}, torch {torch.__version__}"
             + ("" if args.dtype == "float32" else " (the reference in float32 on the same bf16-rounded weights)"),
             "", f"One forward pass (model.logits): {1e3 * forward_s:.1f} ms. Unembedding the {cfg.n_layers + 1} "
             f"streams alone (the floor for any lens that returns all rows' logits): {1e3 * floor_s:.1f} ms. "
             f"GEMM FLOPs: forward {forward_flops / 1e9:.1f} G, lens over all rows {lens_flops / 1e9:.1f} G "
             f"(streams + {n_layers + 1} unembeddings): the lens does {lens_flops / forward_flops:.2f}x the "
             "arithmetic of a forward pass.", "",
             "| k | jetjax lens ms | lens / forward | PyTorch reference ms | reference / jetjax | "
             "first call s (compile) | max abs diff vs reference (max abs logit) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['order']} | {r['lens_ms']:.1f} | {r['lens_over_forward']:.2f}x | {r['torch_ms']:.1f} | "
                     f"{r['torch_over_lens']:.1f}x | {r['first_call_s']:.1f} | "
                     f"{r['max_abs_diff_vs_torch']:.1e} ({r['max_abs_logit']:.1f}) |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
