"""The persistent compilation cache: the first and the second process of ``jetjax`` commands on SmolLM2.

For each command, in one run on one machine: a process with an empty cache directory (cold: it
compiles and writes), then the same command in a new process (warm: it reads). Each process reports
JAX's own counters (``/jax/compilation_cache/compile_requests_use_cache`` and ``.../cache_hits``),
so the table says how many compilations the warm process skipped, not only how long it took. The
load average is recorded before every process: the machine's cores may be shared.

Run on demand (not part of CI; minutes): ``.venv/bin/python benchmarks/compile_cache.py``
(``--commands lens attribute`` for a subset, ``--demo`` to add ``jetjax demo``). It writes
``benchmarks/results/compile_cache.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The capital of France is"
COMMANDS = {
    "lens": ["lens", "--text", PROMPT, "--orders", "0", "1"],
    "attribute": ["attribute", "--text", PROMPT, "--target", " Paris", "--foil", " London"],
    "search": ["search", "--text", PROMPT, "--target", " Paris", "--foil", " London", "--top", "20"],
    "bigrams": ["bigrams", "--paths", "emb>dec", "--top", "10", "--quiet"],
}
# run in the child: count JAX's compilation-cache events around the CLI's main()
PROBE = """
import collections, json, sys, time
t0 = time.perf_counter()
import jax.monitoring as m
events = collections.Counter()
m.register_event_listener(lambda name, **kw: events.update([name]))
from jetjax.cli.app import main
rc = main(sys.argv[1:])
print("@@PROBE " + json.dumps({"rc": rc, "inner_s": time.perf_counter() - t0,
      "requests": events["/jax/compilation_cache/compile_requests_use_cache"],
      "hits": events["/jax/compilation_cache/cache_hits"]}), file=sys.stderr)
"""


def run_once(argv: list[str], cache: Path, out: Path) -> dict:
    env = dict(os.environ, JETJAX_COMPILE_CACHE=str(cache))
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, cwd=out, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    probe = next((json.loads(line[len("@@PROBE "):]) for line in proc.stderr.splitlines()
                  if line.startswith("@@PROBE ")), None)
    if proc.returncode != 0 or probe is None or probe["rc"] != 0:
        raise RuntimeError(f"jetjax {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    entries = sum(1 for p in cache.iterdir() if p.name.endswith("-cache")) if cache.is_dir() else 0
    return {"wall_s": round(wall, 2), "load_1min": round(load, 2), "requests": probe["requests"],
            "hits": probe["hits"], "entries_after": entries}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    ap.add_argument("--demo", action="store_true", help="also time jetjax demo (several minutes per process)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile_cache"))
    args = ap.parse_args(argv)

    from jetjax.bench.machine import machine

    commands = {name: COMMANDS[name] for name in args.commands}
    if args.demo:
        commands["demo"] = ["demo", "--out", "demo-out"]
    info = machine()
    rows = {}
    work = Path(tempfile.mkdtemp(prefix="jetjax-ccbench-"))
    try:
        for name, cmd in commands.items():
            cache = work / f"xla-{name}"
            cold = run_once(cmd, cache, work)
            warm = run_once(cmd, cache, work)
            rows[name] = {"argv": cmd, "cold": cold, "warm": warm,
                          "cache_bytes": sum(p.stat().st_size for p in cache.iterdir())}
            print(f"{name}: cold {cold['wall_s']} s ({cold['requests']} compilations), warm {warm['wall_s']} s "
                  f"({warm['hits']}/{warm['requests']} from the cache)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": info, "load_after": os.getloadavg(), "commands": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(result) + "\n")
    print(f"wrote {out.with_suffix('.md')}")
    return result


def report(result: dict) -> str:
    m = result["machine"]
    isa = ", ".join(f for f, on in m["isa"].items() if on) or "none of " + ", ".join(m["isa"])
    lines = [
        "# Persistent compilation cache: first vs second process (SmolLM2-135M, the default model)",
        "",
        f"Machine: CPU {m['cpu']}, {m['cores']} cores, ISA flags: {isa}; jax {m['jax']}, {m['platform']}.",
        f"Load average (1 min) at the start of each process is in the table; after the run: "
        f"{', '.join(f'{x:.2f}' for x in result['load_after'])} (1/5/15 min). The cores are shared with other "
        "work on this machine, so absolute times are noisy; cold and warm of one command ran back to back.",
        "",
        "Cold: a new process with an empty cache directory (it compiles and writes every entry). Warm: the "
        "same command in a new process reading that directory. Compilations and hits are JAX's own counters "
        "(`/jax/compilation_cache/compile_requests_use_cache`, `/jax/compilation_cache/cache_hits`). Wall time "
        "is the whole process (Python start, imports, model load, the work).",
        "",
        "| command | cold s | warm s | saved | compilations | warm hits | entries | cache size | load (cold, warm) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in result["commands"].items():
        c, w = r["cold"], r["warm"]
        lines.append(f"| `jetjax {' '.join(_quote(a) for a in r['argv'])}` | {c['wall_s']:.1f} | {w['wall_s']:.1f} | "
                     f"{1 - w['wall_s'] / c['wall_s']:.0%} | {c['requests']} | {w['hits']}/{w['requests']} | "
                     f"{c['entries_after']} | {r['cache_bytes'] / 1e6:.1f} MB | {c['load_1min']}, {w['load_1min']} |")
    if "demo" not in result["commands"]:
        lines += ["", "Not in this run: `jetjax demo` (several minutes per process on this machine; "
                      "`--demo` adds it)."]
    lines += ["", "What the cache cannot save: Python start and imports, loading and dequantizing the GGUF "
                  "file, and the computation itself (the bigram sweep is a V×V GEMM, so `bigrams` gains little).",
              "", "Command: `.venv/bin/python benchmarks/compile_cache.py` (raw numbers: `compile_cache.json`)."]
    return "\n".join(lines)


def _quote(a: str) -> str:
    return a if a and all(ch.isalnum() or ch in "-_.>" for ch in a) else repr(a)


if __name__ == "__main__":
    main()
