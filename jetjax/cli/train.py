"""``jetjax train``: train a small GPT-2; its arguments go, unparsed, to ``jetjax.training.toy``'s own parser."""

from __future__ import annotations

from typing import Sequence

from jetjax.cli.common import add_debug


def register(sub) -> None:
    p = add_debug(sub.add_parser("train", help="train a small GPT-2 (python -m jetjax.training.toy)", add_help=False))
    p.set_defaults(fn=run, passthrough=True)


def run(args, rest: Sequence[str]) -> None:
    from jetjax.training import toy as tool

    tool.main(list(rest))
