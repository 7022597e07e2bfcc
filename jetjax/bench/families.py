"""Parity and throughput per model family: jetjax vs Hugging Face transformers (torch, CPU).

For every family jetjax loads, a random-init HF model of one fixed small size (d=256, 4 layers,
8 heads (2 key/value heads where the family has GQA), MLP 688, vocabulary 2048) is saved with
``save_pretrained``, loaded with ``jetjax.from_pretrained``, and run on the same random tokens
(batch 4 × 128). Recorded: the largest absolute logit difference to HF (float32), and forward
tokens/s of jetjax (jitted ``model.logits``) and of the HF torch forward (median of repeats,
compile time excluded and reported apart).

--dtype is the storage dtype of the jetjax weights, ``from_pretrained(dir, dtype=...)`` (default
float32). With bfloat16 the weights take half the memory while activations stay float32 (each
weight is cast when used, which usually costs a little speed on a CPU). The HF model stays a
float32 torch model, but its parameters are rounded through bfloat16 first, so the logit
difference still compares the same function (buffers such as RoPE frequencies are left alone:
jetjax computes those in float32 from the config, as HF does).

Written to benchmarks/results/families.{json,md} (float32) or families_bfloat16.{json,md}.

    python benchmarks/families.py [--repeats 5] [--batch 4] [--seq 128] [--only llama,gpt_neox] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jetjax as jj
from jetjax.bench.runner import (add_dtype_option, dtype_label, median_seconds, result_stem, results_dir,
                                 write_results)

# JETJAX_BENCH_RESULTS (set by `jetjax bench --out`) redirects the result files.
RESULTS = results_dir()

D, LAYERS, HEADS, KV, MLP, VOCAB = 256, 4, 8, 2, 688, 2048
_LLAMA_LIKE = dict(hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV,
                   intermediate_size=MLP, vocab_size=VOCAB)
# model_type -> (HF config class, HF model class, config kwargs)
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=D, n_layer=LAYERS, n_head=HEADS, n_inner=MLP,
                                                    vocab_size=VOCAB, n_positions=512)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(
        hidden_size=D, num_layers=LAYERS, num_heads=HEADS, intermediate_size=MLP, vocab_size=VOCAB,
        max_position_embeddings=512, attention_types=[[["global", "local"], LAYERS // 2]], window_size=32)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP, vocab_size=VOCAB)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_LLAMA_LIKE, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_LLAMA_LIKE, sliding_window=32)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _LLAMA_LIKE),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_LLAMA_LIKE, head_dim=D // HEADS)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(_LLAMA_LIKE, clip_qkv=8.0)),
}


def build_hf(model_type: str, directory: str, seed: int = 0):
    import torch
    import transformers

    config_cls, model_cls, kwargs = FAMILIES[model_type]
    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(initializer_range=0.1, bos_token_id=0, eos_token_id=0, **kwargs)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # identity norms and zero biases would hide mapping errors
        for name, p in model.named_parameters():
            if "norm" in name or ".ln" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def run_family(model_type: str, ids: np.ndarray, repeats: int, dtype: str = "float32") -> dict:
    import torch

    with tempfile.TemporaryDirectory() as directory:
        hf = build_hf(model_type, directory)
        model = jj.from_pretrained(directory, dtype=jnp.dtype(dtype))
    if dtype != "float32":  # the reference gets the weights jetjax holds, rounded through the same dtype
        with torch.no_grad():
            for param in hf.parameters():
                param.copy_(param.to(getattr(torch, dtype)).float())
    tokens = ids.size
    with torch.no_grad():
        t_ids = torch.from_numpy(ids).long()
        ref = hf(t_ids).logits.numpy()
        hf_s = median_seconds(lambda: hf(t_ids), repeats)
        ref64 = hf.double()(t_ids).logits.numpy()  # HF's own float32 rounding, for scale

    logits = jax.jit(lambda p, i: model.logits(i, params=p))
    t0 = time.perf_counter()
    compiled = logits.lower(model.params, ids).compile()
    compile_s = time.perf_counter() - t0
    ours = np.asarray(compiled(model.params, ids))
    jj_s = median_seconds(lambda: jax.block_until_ready(compiled(model.params, ids)), repeats)
    c = model.config
    return {
        "model_type": model_type, "n_params": int(sum(x.size for x in jax.tree_util.tree_leaves(model.params))),
        "kv_heads": c.kv_heads, "parallel_residual": c.parallel_residual, "tied": c.tie_embeddings,
        "max_abs_logit_diff": float(np.abs(ours - ref).max()), "max_abs_logit": float(np.abs(ref).max()),
        "hf_fp32_vs_fp64": float(np.abs(ref - ref64).max()),
        "jetjax_tokens_per_s": tokens / jj_s, "hf_torch_tokens_per_s": tokens / hf_s, "jetjax_compile_s": compile_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--only", default=",".join(FAMILIES), help="comma-separated model types")
    add_dtype_option(parser)
    args = parser.parse_args()
    chosen = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(chosen) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown model types {unknown}; choose from {sorted(FAMILIES)}")
    if args.repeats < 1 or args.batch < 1 or not 1 <= args.seq <= 512:
        parser.error("need --repeats >= 1, --batch >= 1 and 1 <= --seq <= 512")

    import torch

    ids = np.random.default_rng(0).integers(0, VOCAB, size=(args.batch, args.seq)).astype(np.int32)
    rows = []
    for t in chosen:
        rows.append(run_family(t, ids, args.repeats, args.dtype))
        r = rows[-1]
        print(f"{t:9s} max|Δlogit| {r['max_abs_logit_diff']:.2e}  jetjax {r['jetjax_tokens_per_s']:9.0f} tok/s  "
              f"HF {r['hf_torch_tokens_per_s']:9.0f} tok/s", flush=True)

    meta = {"d_model": D, "n_layers": LAYERS, "n_heads": HEADS, "kv_heads_gqa": KV, "d_mlp": MLP, "vocab": VOCAB,
            "batch": args.batch, "seq": args.seq, "repeats": args.repeats, "dtype": args.dtype,
            "activation_dtype": "float32", "hf_dtype": "float32",
            "jax": jax.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "load_avg_1min": os.getloadavg()[0],
            "device": str(jax.devices()[0])}
    stem = result_stem("families", args.dtype)
    lines = [
        f"# Families: parity with HF transformers and forward throughput, {dtype_label(args.dtype)}",
        "",
        f"Random-init models, d={D}, {LAYERS} layers, {HEADS} heads (GQA families: {KV} key/value heads), MLP {MLP}, "
        f"vocabulary {VOCAB}; batch {args.batch} × {args.seq} tokens, jetjax {dtype_label(args.dtype)}, "
        f"{meta['device']} "
        f"({meta['cpu_count']} cores, 1-min load average {meta['load_avg_1min']:.1f} when written). "
        f"Tokens/s: median of {args.repeats} forwards; jetjax jitted (compile excluded). "
        "\"HF fp32 vs HF fp64\": the same HF model run in float64 (GPT-Neo casts queries and keys to "
        "float32 even then): the rounding noise float32 itself carries at this size."
        + ("" if args.dtype == "float32" else
           f" The HF model (float32) runs on its parameters rounded through {args.dtype}, the weights jetjax "
           "holds, so the logit difference compares the same function."),
        "",
        "| model_type | params | max abs logit diff to HF | HF fp32 vs HF fp64 | max abs logit | jetjax tokens/s | "
        "HF torch tokens/s | jetjax compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model_type']} | {r['n_params']:,} | {r['max_abs_logit_diff']:.2e} | {r['hf_fp32_vs_fp64']:.2e} | "
                     f"{r['max_abs_logit']:.1f} | "
                     f"{r['jetjax_tokens_per_s']:,.0f} | {r['hf_torch_tokens_per_s']:,.0f} | {r['jetjax_compile_s']:.1f} |")
    write_results(stem, {"meta": meta, "rows": rows}, "\n".join(lines), out=RESULTS)
    print(f"wrote {RESULTS / (stem + '.json')} and {RESULTS / (stem + '.md')}")


if __name__ == "__main__":
    main()
