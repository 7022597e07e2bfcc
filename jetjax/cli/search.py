"""``jetjax search``: the top frozen paths of a deep model, by beam search (:func:`jetjax.top_paths`)."""

from __future__ import annotations

import json

from jetjax.cli.common import (CLIError, add_common, add_position, add_target_foil, check_input, check_position,
                               check_token, emit, input_ids, int_option, load_model, say)
from jetjax.paths.search import PRIORITIES, RANKINGS, SCORES, default_beam


def register(sub) -> None:
    p = add_common(sub.add_parser("search", help="the top frozen paths of a deep model, by beam search"))
    add_target_foil(p)
    p.add_argument("--score", choices=SCORES, default=None,
                   help="what paths contribute to (default: logit_diff with --foil, else logit)")
    p.add_argument("--by", choices=RANKINGS, default="abs", help="ranking")
    p.add_argument("--granularity", choices=("block", "branch"), default="branch")
    add_position(p)
    p.add_argument("--top", type=int_option("--top", 1), default=20, help="how many paths to find")
    p.add_argument("--beam", type=int_option("--beam", 1), default=None,
                   help="prefixes kept per step (default max(256, 8 x --top)); more: slower, surer")
    p.add_argument("--priority", choices=PRIORITIES, default="product",
                   help="which prefixes the beam keeps (see jetjax.paths.search.PRIORITIES)")
    p.set_defaults(fn=run)


def run(args) -> None:
    import jetjax as jj

    check_input(args)
    beam = args.beam if args.beam is not None else default_beam(args.top)
    if beam < args.top:
        raise CLIError(f"--beam {beam} is too small to return --top {args.top} paths (use --beam >= {args.top})")
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_position(ids, args.position)
    check_token(model, args.target, "--target")
    if args.foil is not None:
        check_token(model, args.foil, "--foil")
    say(args, f"searching the frozen paths ({args.granularity}, beam {beam}); the first call compiles")
    res = jj.top_paths(model, ids, args.top, target=args.target, foil=args.foil, score=args.score, by=args.by,
                       position=args.position, granularity=args.granularity, beam=beam,
                       priority=args.priority)
    say(args, res.table(args.top))
    emit(args, json.loads(res.to_json()))
