"""``jetjax attribute``: which paths push ``logit(target) − logit(foil)``.

The method rules (which settings belong to which method, the default ``k``) are the library's
(:func:`jetjax.paths.attribution.method_settings`, :data:`~jetjax.paths.attribution.SEARCH_K`); this
module only words them with the command's options.
"""

from __future__ import annotations

import json

from jetjax.cli.common import (MAX_ORDER, TOP, CLIError, add_common, add_position, add_target_foil, check_input,
                               check_position, check_token, emit, input_ids, int_option, load_model,
                               order_option, say)
from jetjax.paths.attribution import METHODS, SEARCH_K, method_settings


def register(sub) -> None:
    p = add_common(sub.add_parser("attribute", help="which paths push logit(target) - logit(foil)"))
    p.add_argument("--order", type=order_option("--order"), default=None,
                   help=f"jet order, 0..{MAX_ORDER} (method jet; default 0)")
    p.add_argument("--granularity", choices=("block", "branch"), default=None,
                   help="default: block for --method jet, branch for frozen and search")
    add_position(p)
    p.add_argument("--max-length", type=int_option("--max-length"), default=None,
                   help="paths through at most this many components")
    p.add_argument("--top", type=TOP, default=10, help="how many paths to print")
    p.add_argument("--method", choices=METHODS, default="auto",
                   help="jet: the paper's paths (Algorithm 2); frozen: every frozen path (they add up "
                        "exactly); search: the --k largest frozen paths by beam search; auto (default): "
                        "jet unless the model has more than 2^20 paths (a deep model), then search")
    p.add_argument("--k", type=int_option("--k", 1), default=None,
                   help=f"method search: how many paths to list (default {SEARCH_K})")
    p.add_argument("--beam", type=int_option("--beam", 1), default=None,
                   help="method search: prefixes kept per step (default 256)")
    add_target_foil(p)
    p.add_argument("--frozen", action="store_true", help="the same as --method frozen")
    p.set_defaults(fn=run)


def _settle_method(args) -> str:
    """The method the options ask for, or a one-line error naming the option that does not belong to it."""
    method = args.method
    if args.frozen:
        if method not in ("auto", "frozen"):
            raise CLIError(f"--frozen is --method frozen; it contradicts --method {method}")
        method = "frozen"
    method, conflict = method_settings(method, order=args.order, max_length=args.max_length, k=args.k,
                                       beam=args.beam)
    k = SEARCH_K if args.k is None else args.k
    if conflict == "order":
        raise CLIError(f"--order {args.order} has no meaning with --method {method} (frozen paths take no jet)")
    if conflict == "max_length":
        raise CLIError("--max-length does not apply to --method search (it searches paths of every length); "
                       "use --method frozen --max-length N")
    if conflict == "k":
        raise CLIError(f"--k and --beam belong to --method search, not --method {method}")
    if conflict == "beam":
        raise CLIError(f"--beam {args.beam} is too small to return --k {k} paths (use --beam >= {k})")
    return method


def run(args) -> None:
    import jetjax as jj

    check_input(args)
    method = _settle_method(args)
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_position(ids, args.position)
    check_token(model, args.target, "--target")
    if args.foil is not None:
        check_token(model, args.foil, "--foil")
    kw = {name: value for name, value in (("order", args.order), ("granularity", args.granularity),
                                          ("max_length", args.max_length), ("k", args.k), ("beam", args.beam))
          if value is not None}
    att = jj.path_attribution(model, ids, args.target, args.foil, position=args.position, method=method, **kw)
    say(args, att.table(args.top))
    emit(args, json.loads(att.to_json()))
