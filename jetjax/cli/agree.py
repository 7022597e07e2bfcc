"""``jetjax agree``: how well jet bigrams agree with a corpus's bigrams."""

from __future__ import annotations

from pathlib import Path

from jetjax.cli.common import (CLIError, add_common, add_ngram_options, check_paths, check_top_k, emit, int_option,
                               load_model, say)


def register(sub) -> None:
    p = add_common(sub.add_parser("agree", help="agreement of jet bigrams with a corpus's bigrams"), text=False)
    p.add_argument("--corpus", default=None, help="text file (default: the shipped held-out Shakespeare)")
    p.add_argument("--min-count", type=int_option("--min-count", 1), default=1,
                   help="contexts seen fewer times are skipped")
    p.add_argument("--contexts", type=int_option("--contexts"), default=500,
                   help="the N most frequent contexts (0: all)")
    add_ngram_options(p)
    p.set_defaults(fn=run)


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


def run(args) -> None:
    from jetjax.ngrams import corpus_agreement, jet_bigrams

    text = _read_text(args.corpus)
    model = load_model(args.model, dtype=args.dtype)
    check_paths(model, args.paths)
    check_top_k(model, args.top_k)
    if len(model.tokenize(text)) < 2:
        raise CLIError(f"--corpus {args.corpus} has fewer than two tokens; agreement needs bigrams")
    table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
    agr = corpus_agreement(table, text, model, min_count=args.min_count, n_contexts=args.contexts or None)
    d = agr.to_dict()
    say(args, *(f"  {k}: {v}" for k, v in d.items()))
    emit(args, d)
