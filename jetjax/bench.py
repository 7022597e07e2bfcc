"""``jetjax bench``: run the benchmark scripts of a source checkout and collect their results.

The scripts live in ``benchmarks/`` at the repository root (they import torch for baselines, so
they are not part of the installed package). Each writes ``benchmarks/results/<name>.{json,md}``;
this runner calls them in turn on whatever JAX backend is present and writes
``benchmarks/results/summary.{json,md}`` with the device they ran on.

    jetjax bench                  # all benchmarks, full sizes (tens of minutes on a laptop CPU)
    jetjax bench --quick          # small sizes: a smoke run, results in ./jetjax-bench/
    jetjax bench --only paths lenses --out my_results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("jet_order", "paths", "lenses", "ngrams", "families")
# Small sizes for a smoke run of every script (seconds each on a laptop CPU).
QUICK_ARGS = {
    "jet_order": ["--orders", "1-2", "--repeats", "2", "--seq", "8", "--d-model", "64", "--heads", "4"],
    "paths": ["--quick"],
    "lenses": ["--seq", "8", "--layers", "2", "--d-model", "64", "--vocab", "500", "--repeats", "2",
               "--torch-repeats", "1"],
    "ngrams": ["--vocab", "1000", "--paths", "emb>dec"],
    "families": ["--repeats", "1", "--batch", "1", "--seq", "16"],
}


def benchmarks_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    if not here.is_dir():
        raise FileNotFoundError("the benchmark scripts come with a source checkout of jetjax "
                                f"(expected {here}); clone the repository and run `make bench`")
    return here


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="jetjax bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=None, help="results directory (default: benchmarks/results, or "
                                                "./jetjax-bench with --quick so committed figures stay)")
    args = ap.parse_args(argv)
    import jax

    root = benchmarks_dir()
    out = Path(args.out) if args.out else (Path("jetjax-bench") if args.quick else root / "results")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JETJAX_BENCH_RESULTS=str(out.resolve()))
    device = jax.devices()[0]
    summary = {"backend": jax.default_backend(), "device_kind": device.device_kind,
               "device_count": jax.device_count(), "machine": f"{platform.machine()} {platform.processor()}".strip(),
               "jax": jax.__version__, "quick": args.quick, "runs": {}}
    for name in args.only or BENCHMARKS:
        script = root / f"{name}.py"
        if not script.is_file():
            summary["runs"][name] = {"status": "missing"}
            continue
        extra = QUICK_ARGS.get(name, []) if args.quick else []
        print(f"== {name} {' '.join(extra)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(script), *extra], env=env)
        run = {"status": "ok" if proc.returncode == 0 else f"failed ({proc.returncode})",
               "wall_s": round(time.perf_counter() - t0, 1)}
        result = out / f"{name}.json"
        if proc.returncode == 0 and result.is_file():
            run["result"] = str(result)
        summary["runs"][name] = run
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Benchmarks on {summary['backend']} ({summary['device_kind']}, {summary['device_count']} devices), "
             f"jax {summary['jax']}{' (quick sizes)' if args.quick else ''}", "",
             "| benchmark | status | wall s | results |", "|---|---|---|---|"]
    for name, run in summary["runs"].items():
        lines.append(f"| {name} | {run['status']} | {run.get('wall_s', '')} | {run.get('result', '')} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
