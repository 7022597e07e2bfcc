"""``jetjax bench``: run the benchmark suite and collect its results, from a checkout or an installed package.

The benchmarks live in :mod:`jetjax.bench` (a checkout's ``benchmarks/*.py`` scripts call them; several
compare against torch, which they import when they run). This runner calls each of them, in its
own process (``python -m jetjax.bench.<name>``), on whatever JAX backend is present, once per parameter dtype (``--dtype``, default float32 and bfloat16), and
writes ``summary.{json,md}`` with the device they ran on and one row per (benchmark, dtype).

dtype is the *parameter storage* dtype, as in ``from_pretrained(dtype=...)``: with bfloat16 the
weights take half the memory, activations are still computed in float32 (each weight is cast
when used, which on a CPU usually costs a little speed). float32 results go to
``<name>.{json,md}``, bfloat16 results to ``<name>_bfloat16.{json,md}``.

    jetjax bench                  # all benchmarks, both dtypes, full sizes (about an hour per dtype on a 2-core CPU)
    jetjax bench --quick          # small sizes: a smoke run, results in ./jetjax-bench/
    jetjax bench --only paths lenses --dtype bfloat16 --out my_results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("jet_order", "paths", "lenses", "ngrams", "families", "real_model", "graph")
DTYPES = ("float32", "bfloat16")
# Small sizes for a smoke run of every script (seconds each on a laptop CPU).
QUICK_ARGS = {
    "jet_order": ["--orders", "1-2", "--repeats", "2", "--seq", "8", "--d-model", "64", "--heads", "4"],
    "paths": ["--quick"],
    "lenses": ["--seq", "8", "--layers", "2", "--d-model", "64", "--vocab", "500", "--repeats", "2",
               "--torch-repeats", "1"],
    "ngrams": ["--vocab", "1000", "--paths", "emb>dec"],
    "families": ["--repeats", "1", "--batch", "1", "--seq", "16"],
    "real_model": ["--quick"],
    "graph": ["--quick"],
}


# ---- conventions shared by the scripts in benchmarks/ ----------------------------------------

def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """The ``--dtype`` option every benchmark script takes: the parameter storage dtype."""
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="parameter storage dtype of the jetjax model (activations stay float32); "
                             "bfloat16 results go to <name>_bfloat16.{json,md}")


def timed(fn) -> float:
    """Seconds one call of ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn, repeats: int) -> float:
    """The median of ``repeats`` timed calls of ``fn()`` (block on JAX results inside ``fn``)."""
    return statistics.median(timed(fn) for _ in range(repeats))


def result_stem(name: str, dtype: str) -> str:
    """File stem of a script's results: ``<name>`` for float32 (the committed figures), else ``<name>_<dtype>``."""
    return name if dtype == "float32" else f"{name}_{dtype}"


def dtype_label(dtype: str) -> str:
    """How a results heading names the dtype."""
    return "float32" if dtype == "float32" else f"{dtype} weights (float32 activations)"


# ---------------------------------------------------------------------------------------------

def _checkout_results() -> Path | None:
    """``benchmarks/results`` of the source checkout this package runs from, if it does."""
    here = Path(__file__).resolve().parents[2] / "benchmarks"
    return here / "results" if here.is_dir() else None


def results_dir() -> Path:
    """Where a benchmark writes: ``JETJAX_BENCH_RESULTS`` (set by ``jetjax bench --out``), else the
    checkout's ``benchmarks/results``, else ``./jetjax-bench`` (an installed package)."""
    env = os.environ.get("JETJAX_BENCH_RESULTS")
    return Path(env) if env else (_checkout_results() or Path("jetjax-bench"))


def write_results(stem: str, data: dict, markdown: str, out: Path | None = None) -> Path:
    """Write a benchmark's ``<stem>.json`` (``data``) and ``<stem>.md`` (``markdown``) into ``out``
    (default :func:`results_dir`), each through a temporary file so a file under its name is always
    whole; returns the Markdown file's path.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_results("demo", {"rate": 1.5}, "| rate |\\n| 1.5 |", out=d).name
    'demo.md'
    >>> json.loads((d / "demo.json").read_text())
    {'rate': 1.5}
    """
    out = results_dir() if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown if markdown.endswith("\n") else markdown + "\n"
    for name, body in ((f"{stem}.json", json.dumps(data, indent=1) + "\n"), (f"{stem}.md", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, out / name)
    return out / f"{stem}.md"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="jetjax bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=None)
    ap.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                    help="parameter dtypes to run each benchmark in (default: both)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--out", default=None, help="results directory (default: benchmarks/results in a checkout, "
                                                "./jetjax-bench when installed or with --quick, so committed "
                                                "figures stay)")
    args = ap.parse_args(argv)
    import jax

    checkout = _checkout_results()
    out = Path(args.out) if args.out else (checkout if checkout and not args.quick else Path("jetjax-bench"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, JETJAX_BENCH_RESULTS=str(out.resolve()))
    device = jax.devices()[0]
    dtypes = list(dict.fromkeys(args.dtype))  # keep the order given, drop repeats
    summary = {"backend": jax.default_backend(), "device_kind": device.device_kind,
               "device_count": jax.device_count(), "machine": f"{platform.machine()} {platform.processor()}".strip(),
               "jax": jax.__version__, "quick": args.quick, "dtypes": dtypes, "runs": []}
    for name in args.only or BENCHMARKS:
        for dtype in dtypes:
            run = {"benchmark": name, "dtype": dtype}
            summary["runs"].append(run)
            extra = [*(QUICK_ARGS.get(name, []) if args.quick else []), "--dtype", dtype]
            print(f"== {name} {' '.join(extra)}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", f"jetjax.bench.{name}", *extra], env=env)
            run["status"] = "ok" if proc.returncode == 0 else f"failed ({proc.returncode})"
            run["wall_s"] = round(time.perf_counter() - t0, 1)
            result = out / f"{result_stem(name, dtype)}.json"
            if proc.returncode == 0 and result.is_file():
                run["result"] = str(result)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"Benchmarks on {summary['backend']} ({summary['device_kind']}, {summary['device_count']} devices), "
             f"jax {summary['jax']}{' (quick sizes)' if args.quick else ''}; dtype = parameter storage dtype "
             "(activations float32)", "",
             "| benchmark | dtype | status | wall s | results |", "|---|---|---|---|---|"]
    for run in summary["runs"]:
        lines.append(f"| {run['benchmark']} | {run['dtype']} | {run['status']} | {run.get('wall_s', '')} | "
                     f"{run.get('result', '')} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


if __name__ == "__main__":
    main()
