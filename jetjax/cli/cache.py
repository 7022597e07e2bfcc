"""``jetjax cache``: where the compilation cache is and what it holds; ``--clear`` empties it.

Every other command (but ``bench``, whose timings include compiling) keeps XLA's compiled
executables there so that the next process does not compile again (see
:mod:`jetjax._internal.compile_cache`); ``JETJAX_COMPILE_CACHE=off`` switches that off,
``JETJAX_COMPILE_CACHE=DIR`` moves it.
"""

from __future__ import annotations

from jetjax.cli.common import add_debug, emit, say


def register(sub) -> None:
    p = add_debug(sub.add_parser("cache", help="the compilation cache: its directory and size; --clear empties it"))
    p.add_argument("--clear", action="store_true", help="delete the compiled executables it holds")
    p.add_argument("--json", default=None, metavar="PATH", help="write the same as JSON (- for stdout)")
    p.set_defaults(fn=run, compile_cache=False)


def run(args) -> None:
    from jetjax._internal import compile_cache as cc

    info = cc.cache_info()
    payload = dict(info)
    lines = [cc.describe(info)]
    if args.clear and info["directory"] is not None:
        removed = cc.clear_compile_cache(info["directory"])
        payload["cleared"] = removed
        lines.append(f"cleared {removed['entries']} entr{'y' if removed['entries'] == 1 else 'ies'} "
                     f"({removed['bytes']} bytes) from {info['directory']}")
    elif args.clear:
        payload["cleared"] = None
        lines.append("nothing to clear: the compilation cache is off")
    lines.append(f"({cc.ENV}=off switches it off, {cc.ENV}=DIR moves it)")
    say(args, *lines)
    emit(args, payload)
