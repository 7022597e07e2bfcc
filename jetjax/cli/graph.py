"""``jetjax graph``: the exact attribution graph of ``logit(target) − logit(foil)``
(:func:`jetjax.attribution_graph`)."""

from __future__ import annotations

from pathlib import Path

from jetjax.cli.common import (FOIL_HELP, TOP, CLIError, add_common, add_position, add_reference, add_target_foil,
                               check_input, check_position, check_reference, check_target_foil, check_writable,
                               fraction_option, input_ids, library_default, load_model, say, settle_baseline,
                               write_json)
from jetjax.paths.graph import JSON_FORMATS, AttributionGraph
from jetjax.paths.slots import BASELINES


def register(sub) -> None:
    p = add_common(sub.add_parser("graph", help="the exact attribution graph: components at positions, and edges"))
    add_target_foil(p, FOIL_HELP)
    add_position(p)
    p.add_argument("--heads", action="store_true", help="split each attention component into its heads")
    p.add_argument("--baseline", choices=BASELINES, default=None,
                   help="what each node's total effect is measured against: zero, or mean (its mean output over "
                        "the --reference texts; needs them). Default: mean with --reference, else zero")
    add_reference(p, "--baseline")
    prune = AttributionGraph.prune
    p.add_argument("--prune", nargs=2, type=fraction_option("--prune", "a threshold"), default=None,
                   metavar=("NODE", "EDGE"),
                   help="keep the nodes holding NODE of the influence on the logit, then the edges carrying EDGE "
                        f"of the flow, each in (0, 1] (the library's defaults: "
                        f"{library_default(prune, 'node_threshold')} {library_default(prune, 'edge_threshold')})")
    p.add_argument("--top", type=TOP, default=None,
                   help=f"how many nodes to print (default {library_default(AttributionGraph.table, 'n')})")
    p.add_argument("--html", default=None, metavar="PATH", help="also write the graph's interactive view (.html)")
    p.add_argument("--json-format", choices=JSON_FORMATS, default=None,
                   help="the schema of --json: jetjax (AttributionGraph.load reads it back) or neuronpedia "
                        "(circuit-tracer's, for its viewer and Neuronpedia); default "
                        f"{library_default(AttributionGraph.to_json, 'format')}")
    p.set_defaults(fn=run)


def _check_html(path: str | None) -> None:
    """``--html``: a .html file whose folder can be made (checked before any work)."""
    if path is None:
        return
    if not path.strip() or not path.lower().endswith((".html", ".htm")):
        raise CLIError(f"--html must name a .html file, got {path!r}")
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"--html {path} is a directory; --html takes a file path")
    for q in p.parents:
        if q.exists():
            if not q.is_dir():
                raise CLIError(f"--html {path}: {q} is a file, not a directory")
            check_writable(path, "--html", q)
            return


def run(args) -> None:
    import jetjax as jj

    check_input(args)
    baseline = settle_baseline(args.baseline, args.reference, "--baseline")
    _check_html(args.html)
    if args.json_format is not None and not args.json:
        raise CLIError(f"--json-format {args.json_format} needs --json PATH (or --json - for stdout)")
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_position(ids, args.position)
    check_target_foil(model, args)
    check_reference(model, args.reference)
    graph = jj.attribution_graph(model, ids, args.target, args.foil, position=args.position, heads=args.heads,
                                 baseline=baseline, reference=args.reference)
    if args.prune is not None:
        graph = graph.prune(*args.prune)
    say(args, graph.table() if args.top is None else graph.table(args.top))
    if args.html is not None:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        graph.to_html(args.html)
        say(args, f"wrote {args.html}")
    if args.json:
        fmt = {} if args.json_format is None else {"format": args.json_format}
        write_json(args, graph.to_json(**fmt))
