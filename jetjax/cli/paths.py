"""``jetjax paths``: the exhaustive jet paths of one input, ranked by logit norm."""

from __future__ import annotations

from jetjax.cli.common import (MAX_ORDER, TOP, add_common, add_position, check_input, check_position, emit,
                               input_ids, int_option, load_model, order_option, say)


def register(sub) -> None:
    p = add_common(sub.add_parser("paths", help="exhaustive paths, ranked by logit norm"))
    p.add_argument("--order", type=order_option("--order"), default=0, help=f"jet order, 0..{MAX_ORDER}")
    p.add_argument("--granularity", choices=("block", "branch"), default="block")
    add_position(p)
    p.add_argument("--max-length", type=int_option("--max-length"), default=None,
                   help="paths through at most this many components")
    p.add_argument("--top", type=TOP, default=10, help="how many paths to print")
    p.add_argument("--attention-free", action="store_true")
    p.set_defaults(fn=run)


def run(args) -> None:
    import jetjax as jj

    check_input(args)
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_position(ids, args.position)
    res = jj.reduce_paths(model, ids, order=args.order, granularity=args.granularity, position=args.position,
                          top_k=args.top, max_length=args.max_length, attention_free=args.attention_free)
    pos = res.position
    say(args, f"{len(res)} paths (order {args.order}, {args.granularity}); the {len(res.top_indices)} with the largest "
              f"logit norm at position {pos} and their top token:")
    ranked = []
    for rank, i in enumerate(res.top_indices):
        tok = int(res.top_logits[rank].argmax())
        ranked.append({"label": res.labels[i], "norm": float(res.norms[i]), "top_token": tok,
                       "top_token_str": model.detokenize([tok]) if model.tokenizer else None})
        say(args, f"  {res.norms[i]:10.3f}  {res.labels[i]:<40} -> {ranked[-1]['top_token_str']!r}")
    rem = float((res.remainder ** 2).sum() ** 0.5)
    say(args, f"remainder norm {rem:.3f} (model logits norm {float((res.logits ** 2).sum() ** 0.5):.3f}); "
              f"‖remainder‖/‖logits‖ {res.remainder_ratio:.3g}, cancellation Σ‖path‖/‖Σ paths‖ {res.cancellation:.3g}")
    if res.remainder_ratio > 0.5:
        say(args, f"WARNING: the paths explain less than half of the model's logits (‖remainder‖/‖logits‖ = "
                  f"{res.remainder_ratio:.3g} > 0.5): read them as an incomplete account")
    emit(args, {"n_paths": len(res), "order": args.order, "granularity": args.granularity, "position": pos,
                "top": ranked, "remainder_norm": rem, "remainder_ratio": res.remainder_ratio,
                "cancellation": res.cancellation})
