"""``jetjax bench``: run the benchmark suite; its arguments go, unparsed, to ``jetjax.bench.runner``'s own parser."""

from __future__ import annotations

from typing import Sequence

from jetjax.cli.common import add_debug


def register(sub) -> None:
    p = add_debug(sub.add_parser("bench", help="run the benchmark suite", add_help=False))
    # no persistent compilation cache: the suite's timings include compiling
    p.set_defaults(fn=run, passthrough=True, compile_cache=False)


def run(args, rest: Sequence[str]) -> None:
    from jetjax.bench import runner as tool

    tool.main(list(rest))
