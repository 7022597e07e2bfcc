"""``jetjax bigrams``: the jet bigram table of some paths over the whole vocabulary."""

from __future__ import annotations

from jetjax.cli.common import (MAX_ORDER, TOP, CLIError, add_common, add_compute_dtype, add_ngram_options,
                               check_dir_option, check_paths, check_top_k, emit, load_model, order_option, say)


def register(sub) -> None:
    p = add_common(sub.add_parser("bigrams", help="jet bigram table over the whole vocabulary"), text=False)
    add_ngram_options(p)
    p.add_argument("--order", type=order_option("--order"), default=0, help=f"jet order, 0..{MAX_ORDER}")
    p.add_argument("--top", type=TOP, default=20,
                   help="how many (context, next) pairs to print (above 100 the sweep keeps that many global "
                        "pairs: a table in --out swept for another number is not reused)")
    p.add_argument("--out", default=None, help="directory for the table (resumable)")
    add_compute_dtype(p, "the unembedding GEMM")
    p.set_defaults(fn=run)


def _global_k(top: int) -> dict:
    """The sweep keeps the global top 100 pairs by default; ``--top`` above that asks it for more."""
    return {"global_k": top} if top > 100 else {}


def run(args) -> None:
    from jetjax.ngrams import jet_bigrams

    check_dir_option(args.out)
    model = load_model(args.model, dtype=args.dtype)
    check_paths(model, args.paths)
    check_top_k(model, args.top_k)
    v = model.config.vocab_size
    if args.top > v * args.top_k:
        raise CLIError(f"--top {args.top} is more than the table holds ({v} contexts x --top-k {args.top_k})")
    table = jet_bigrams(model, args.paths, top_k=args.top_k, order=args.order, out_dir=args.out,
                        progress=not args.quiet, compute_dtype=args.compute_dtype, **_global_k(args.top))
    top = table.top(min(args.top, len(table.global_probs)))  # a table from --out may keep more
    say(args, f"top jet bigrams of {' + '.join(args.paths)} (order {args.order}):",
        *(f"  {prob:.4f}  {ctx!r} -> {nxt!r}" for ctx, nxt, prob in
          ((''.join(c), n, p) for c, n, p in top)))
    emit(args, {"paths": list(args.paths), "order": args.order, "top_k": args.top_k,
                "top": [{"context": list(c), "next": n, "prob": p} for c, n, p in top]})
