"""``make demo``: what the jet operator does to a transformer, in one screen.

Until the package ships a trained model (see the project issues), the demo builds a small
GPT-2 with random weights and, for every layer l, reads the final logits through the decoder's
jet centred at the residual stream h_l:  J^k Dec(h_l)(h_L).  Order 0 is the logit lens; at
l = L every order gives the model's logits exactly. Run: ``python -m jetjax.demo``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jetjax as jj
from jetjax.models import ModelConfig, random_model


def cosine(a, b):
    a, b = a.reshape(-1), b.reshape(-1)
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--seq", type=int, default=12)
    args = ap.parse_args(argv)

    cfg = ModelConfig(arch="gpt2", n_layers=args.layers, d_model=96, n_heads=4, d_head=24, d_mlp=384,
                      vocab_size=500, n_positions=64, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, seed=0, scale=0.2)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=args.seq)
    t0 = time.perf_counter()
    streams = model.residual_stream(ids)
    h_last = streams[-1]
    logits = model.decode(h_last)  # the model's logits, without a second forward pass

    lens = jax.jit(lambda centre, order: jj.jet(model.decode, centre, h_last, order), static_argnums=1)
    print(f"{model}\nprompt: {args.seq} random token ids\n")
    print("cosine(J^k Dec(h_l)(h_L), logits) and top-1 agreement with the model, per layer l and order k")
    header = "layer " + "".join(f"|   k={k}: cos   top1 " for k in args.orders)
    print(header)
    print("-" * len(header))
    for layer in range(cfg.n_layers + 1):
        cells = []
        for k in args.orders:
            out = lens(streams[layer], k)
            top1 = float(jnp.mean(jnp.argmax(out, -1) == jnp.argmax(logits, -1)))
            cells.append(f"|   {cosine(out, logits):8.4f}  {top1:5.2f} ")
        print(f"h_{layer:<3} " + "".join(cells))
    exact = max(float(jnp.abs(lens(h_last, k) - logits).max()) for k in args.orders)
    print(f"\nat l = L every order reproduces the logits (max |diff| = {exact:.1e});"
          f" k = 0 is the logit lens. ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
