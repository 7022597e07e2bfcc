"""``jetjax diff``: bigram changes between two models sharing a tokenizer (or one model and a LoRA adapter)."""

from __future__ import annotations

import json
from pathlib import Path

from jetjax.cli.common import (TOP, CLIError, add_common, add_ngram_options, check_output_file, check_paths,
                               check_source, check_top_k, emit, load_adapter_option, load_model, say, with_adapter)


def register(sub) -> None:
    p = add_common(sub.add_parser("diff", help="bigram changes between two models sharing a tokenizer"), text=False)
    p.add_argument("--model-b", default=None, help="the other model (e.g. the fine-tuned one)")
    p.add_argument("--adapter", default=None,
                   help="instead of --model-b: --model with this LoRA adapter merged (a .safetensors file, or "
                        "'shakespeare': the SmolLM2 adapter jetjax ships)")
    add_ngram_options(p)
    p.add_argument("--top", type=TOP, default=20, help="how many changes to list per kind")
    p.add_argument("--png", default=None, help="also draw the most gained and lost bigrams as bars into this PNG")
    p.set_defaults(fn=run)


def _check_same_vocabulary(model_a, model_b) -> None:
    """Refuse (before any sweep) two models whose token ids mean different strings."""
    import numpy as np

    va, vb = model_a.config.vocab_size, model_b.config.vocab_size
    if va != vb:
        raise CLIError(f"--model has {va} tokens and --model-b {vb}: diff compares models that share a tokenizer")
    if model_a.tokenizer is None or model_b.tokenizer is None:
        return  # nothing to compare: ids are all there is
    ta, tb = model_a.token_strings(np.arange(va)), model_b.token_strings(np.arange(vb))
    differ = [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y]
    if differ:
        shown = ", ".join(f"{i}: {ta[i]!r} vs {tb[i]!r}" for i in differ[:3])
        raise CLIError(f"--model and --model-b have different tokenizers: {len(differ)} of {va} token ids map to "
                       f"different strings ({shown}{', ...' if len(differ) > 3 else ''}); diff compares models "
                       "that share a tokenizer")


def run(args) -> None:
    from jetjax.ngrams import diff_tables, jet_bigrams

    if (args.model_b is None) == (args.adapter is None):
        raise CLIError("diff needs exactly one of --model-b (another model) and --adapter (the model with a LoRA "
                       "adapter merged, e.g. --adapter shakespeare)")
    check_source(args.model, "--model")
    if args.png is not None and not args.png.endswith(".png"):
        raise CLIError(f"--png must name a .png file, got {args.png!r}")
    if args.png is not None:
        check_output_file(args.png, "--png")
    if args.adapter is not None:
        where, adapter = load_adapter_option(args.adapter)
        model_a = load_model(args.model, dtype=args.dtype)
        model_b = with_adapter(model_a, adapter, where)
    else:
        check_source(args.model_b, "--model-b")
        model_a = load_model(args.model, dtype=args.dtype)
        model_b = load_model(args.model_b, "--model-b", dtype=args.dtype)
    for model, name in ((model_a, "--model"), (model_b, "--model-b")):
        check_paths(model, args.paths, name)
        check_top_k(model, args.top_k, name=name)
    _check_same_vocabulary(model_a, model_b)
    tables = [jet_bigrams(m, args.paths, top_k=args.top_k, progress=not args.quiet) for m in (model_a, model_b)]
    diff = diff_tables(*tables, n=args.top, models=(model_a, model_b))
    say(args, diff.to_markdown())
    if args.png is not None:
        from jetjax import viz

        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        title = f"{' + '.join(args.paths)}: b = {'the adapter' if args.adapter else args.model_b} vs a = the base"
        say(args, f"wrote {viz.diff_bars(diff, args.png, n=min(args.top, 15) or 15, title=title)}")
    emit(args, json.loads(diff.to_json()))
