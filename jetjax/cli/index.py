"""``jetjax index``: the keyword mass of jet bigrams, for one model or several."""

from __future__ import annotations

from pathlib import Path

from jetjax.cli.common import (CLIError, add_common, add_ngram_options, check_paths, check_source, check_top_k,
                               emit, load_adapter_option, load_model, say, with_adapter)


def register(sub) -> None:
    p = add_common(sub.add_parser("index", help="keyword-mass index of jet bigrams"), text=False)
    p.add_argument("--keywords", nargs="+", required=True, help="keyword files, one word or phrase per line")
    p.add_argument("--compare", nargs="*", help="more models to index")
    p.add_argument("--adapter", default=None,
                   help="also index --model with this LoRA adapter merged (file, or 'shakespeare')")
    add_ngram_options(p)
    p.set_defaults(fn=run)


def run(args) -> None:
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
        check_source(src, option)
    adapter = load_adapter_option(args.adapter) if args.adapter is not None else None
    if adapter is not None:
        sources.insert(1, (args.model, "--adapter"))
    out, tuned = {}, None
    for src, option in sources:
        if option == "--adapter":
            model = tuned
        else:
            model = load_model(src, option, dtype=args.dtype)
            if option == "--model" and adapter is not None:   # a wrong base is refused before any sweep
                tuned = with_adapter(model, adapter[1], adapter[0])
        check_paths(model, args.paths, f"{option} {src}")
        check_top_k(model, args.top_k, name=f"{option} {src}")
        table = jet_bigrams(model, args.paths, top_k=args.top_k, progress=not args.quiet)
        name = (src or "default") + (f" + {args.adapter}" if option == "--adapter" else "")
        out[name] = {f: keyword_mass(table, f, model=model).to_dict() for f in args.keywords}
        for f, km in out[name].items():
            say(args, f"{name}  {f}: all contexts {km['all_contexts']}, keyword contexts {km['keyword_contexts']}, "
                      f"top-{args.top_k} {km['top_k']} (uniform baseline {km['uniform']})")
    emit(args, {"paths": list(args.paths), "models": out})
