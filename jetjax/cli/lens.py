"""``jetjax lens``: the logit, iterative jet and joint jet lenses of one input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from jetjax.cli.common import (MAX_ORDER, TOP_K, CLIError, add_common, add_compute_dtype, check_dir_option,
                               check_input, check_top_k, emit, input_ids, int_option, load_model, order_option, say)


def register(sub) -> None:
    p = add_common(sub.add_parser("lens", help="logit / iterative / joint jet lens"))
    p.add_argument("--orders", type=order_option("--orders"), nargs="+", default=[0, 1],
                   help=f"jet orders of the lenses, each in 0..{MAX_ORDER} (0: the logit lens)")
    p.add_argument("--granularity", choices=("block", "branch"), default="block")
    p.add_argument("--rows", "--layers", dest="rows", default=None,
                   help="lens rows, comma-separated indices (default: all; --layers is the old name)")
    p.add_argument("--joint", action="store_true", help="joint jet lens instead of iterative")
    p.add_argument("--fit-steps", type=int_option("--fit-steps"), default=None,
                   help="with --joint: steps fitting the lens weights (default 0)")
    p.add_argument("--top-k", type=TOP_K, default=5, help="top tokens per cell in the JSON")
    p.add_argument("--out", default=None, help="directory for PNGs")
    add_compute_dtype(p, "the rows' unembedding")
    p.set_defaults(fn=run)


def _rows(text: str | None):
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CLIError(f"--rows takes comma-separated integers (row indices, negative ones count from the "
                       f"end), got {text!r}") from None


def run(args) -> None:
    from jetjax.lenses import lens as lenses

    if args.fit_steps is not None and not args.joint:
        raise CLIError("--fit-steps needs --joint (it sets the joint lens's fitting steps)")
    check_input(args)
    check_dir_option(args.out)
    rows = _rows(args.rows)
    orders = list(dict.fromkeys(args.orders))  # a repeated order is computed (and shown) once
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_top_k(model, args.top_k)
    try:   # before any lens runs, and named by its option
        lenses.check_rows(model, rows, args.granularity)
    except (IndexError, ValueError, TypeError) as e:
        raise CLIError(f"--rows {args.rows}: {e}") from None
    results = {}
    for order in orders:
        if args.joint:
            res = lenses.joint_jet_lens(model, ids, rows, order=order, granularity=args.granularity,
                                        fit_steps=args.fit_steps or 0, compute_dtype=args.compute_dtype)
        else:
            res = lenses.iterative_jet_lens(model, ids, rows, order=order, granularity=args.granularity,
                                            compute_dtype=args.compute_dtype)
        results[f"order {order}"] = res
    tokens = model.token_strings(ids)
    lines = []
    for name, res in results.items():
        with warnings.catch_warnings():   # said below, in the output itself
            warnings.simplefilter("ignore", RuntimeWarning)
            m = res.metrics
        top = res.top_tokens(1)
        lines.append(f"{res.kind} lens, {name}: rows = {', '.join(res.rows)}; columns = input tokens")
        if res.nonfinite_rows:
            lines.append(f"  WARNING: non-finite logits (NaN/inf) in row(s) {', '.join(res.nonfinite_rows)}: "
                         "their tokens and metrics mean nothing (non-finite weights, or a jet order too high)")
        lines.append("  " + " | ".join(f"{t!r:>10}" for t in tokens))
        for r, row in enumerate(res.rows):
            cells = " | ".join(f"{top[r][t][0]!r:>10}" for t in range(len(tokens)))
            lines.append(f"  {row:>6}: {cells}   cos {m['cosine'][r].mean():.3f}  top1 {m['top1'][r].mean():.2f}  "
                         f"KL {m['kl'][r].mean():.3f}")
    say(args, *lines)
    if args.out:
        from jetjax import viz

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [viz.lens_table(res, out / f"lens_{name.replace(' ', '')}.png") for name, res in results.items()]
        written.append(viz.metric_curves(results, out / "lens_metrics.png"))
        say(args, *(f"wrote {p}" for p in written))
    emit(args, {"tokens": tokens, "lenses": {name: json.loads(res.to_json(top_k=args.top_k, arrays=False))
                                             for name, res in results.items()}})
