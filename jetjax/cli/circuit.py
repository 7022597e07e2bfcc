"""``jetjax circuit``: the smallest set of components found that carries the number in the real model
(:func:`jetjax.find_circuit`)."""

from __future__ import annotations

from jetjax.cli.common import (FOIL_HELP, add_common, add_position, add_reference, add_target_foil, check_input,
                               check_position, check_reference, check_target_foil, emit, fraction_option,
                               input_ids, int_option, library_default, load_model, say, settle_baseline)
from jetjax.paths.circuit import find_circuit
from jetjax.paths.labels import parse_node
from jetjax.paths.slots import BASELINES


def register(sub) -> None:
    p = add_common(sub.add_parser("circuit", help="the smallest set of components that carries the number "
                                                  "(real ablations)"))
    add_target_foil(p, FOIL_HELP)
    add_position(p)
    p.add_argument("--faithfulness", type=fraction_option("--faithfulness"), default=None,
                   help="the real faithfulness to reach, in (0, 1] "
                        f"(default {library_default(find_circuit, 'faithfulness')})")
    p.add_argument("--mode", choices=BASELINES, default=None,
                   help="how components outside the circuit are ablated: zero, or mean (their mean output over "
                        "the --reference texts; needs them). Default: mean with --reference, else zero")
    add_reference(p, "--mode")
    p.add_argument("--heads", action="store_true", help="attention heads as components (instead of whole layers)")
    p.add_argument("--max-passes", type=int_option("--max-passes"), default=None,
                   help=f"forward passes the search may spend (default {library_default(find_circuit, 'max_passes')})")
    p.set_defaults(fn=run)


def run(args) -> None:
    import jetjax as jj

    check_input(args)
    mode = settle_baseline(args.mode, args.reference, "--mode")
    model = load_model(args.model, dtype=args.dtype)
    ids = input_ids(model, args)
    check_position(ids, args.position)
    check_target_foil(model, args)
    check_reference(model, args.reference)
    kw = {name: value for name, value in (("faithfulness", args.faithfulness), ("max_passes", args.max_passes))
          if value is not None}
    circuit = jj.find_circuit(model, ids, args.target, args.foil, mode=mode, reference=args.reference,
                              position=args.position, heads=args.heads, **kw)
    graph = circuit.graph
    te = dict(zip(graph.nodes, graph.te))
    say(args, str(circuit), f"nodes (TE: total effect in the exact graph, {mode} baseline):",
        *(f"  {node:<22} {graph.tokens[parse_node(node).position]!r:<14.14} {te[node]:>+10.4f}"
          for node in circuit.nodes))
    emit(args, {"nodes": list(circuit.nodes), "faithfulness": circuit.faithfulness, "target": circuit.target,
                "forward_passes": circuit.forward_passes, "n_components": circuit.n_components,
                "fraction": circuit.fraction, "mode": circuit.mode, "seconds": circuit.seconds,
                "graph": graph.to_dict()})
