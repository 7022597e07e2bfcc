"""``jetjax demo``: the make-demo tour; its arguments go, unparsed, to ``jetjax.demo``'s own parser."""

from __future__ import annotations

from typing import Sequence

from jetjax.cli.common import add_debug


def register(sub) -> None:
    p = add_debug(sub.add_parser("demo", help="the make-demo tour", add_help=False))
    p.set_defaults(fn=run, passthrough=True)


def run(args, rest: Sequence[str]) -> None:
    from jetjax import demo as tool

    tool.main(list(rest))
