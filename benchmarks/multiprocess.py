"""jetjax's mesh code across several processes on one machine, checked against one process.

``python benchmarks/multiprocess.py`` starts ``--processes`` N (default 2) worker processes of this
script, each holding ``--devices-per-process`` M (default 2) CPU devices, joined by
``jax.distributed.initialize`` over 127.0.0.1 with gloo CPU collectives: the multi-host recipe of
the README, hosts played by processes. The workers run the cases below on a mesh over the N×M
global devices while one process holding N×M local devices runs the same cases on a mesh of the
same size (all N+1 processes at once). The results are compared, a table is printed and
``result.json`` is written to ``--out`` (default: a new temp dir). Exit status: 0 all cases
match, 1 a mismatch or a failed or timed-out process, 2 bad arguments (refused before anything
starts). Any process that fails or outlives ``--timeout`` is killed with the others, and its log
tail is part of the error.

Cases (tiny random GPT-2 with ``--layers`` layers, the same weights in every process; ``weights``
checks their sha256):
  path_attribution  ``jj.path_attribution(..., granularity="branch", mesh=mesh)``: path scores
  reduce_paths      ``jj.reduce_paths(..., top_k=3, mesh=mesh)``: norms, top paths and their logits
  bigrams           ``jj.jet_bigrams(..., devices=mesh devices)`` over the whole vocabulary
  frozen            ``jj.frozen_path_attribution`` (no mesh: every process computes it alone)
  top_paths         ``jj.top_paths(..., beam=8, mesh=mesh)``: labels, scores, explored/unexplored sums

Floats must agree to ``--rtol`` (default 1e-5) relative to the largest magnitude of each array;
ids, labels and path indices exactly. Every worker writes its own ``worker-I.json`` /
``worker-I.npz`` (no pickle) and log; each worker is compared with the one-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

CONFIG = dict(arch="gpt2", n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=61,
              n_positions=16, norm_eps=1e-5, activation="gelu_new")
SEED, SCALE = 0, 0.5
IDS = [3, 1, 4, 1, 5, 9, 2, 6]
TARGET, FOIL = 7, 2
CHUNK = 12  # paths per chunk (a multiple of 4): 16 branch paths (2 layers) or 64 (3); the last chunk is padded
BIGRAM_PATHS = ["emb>dec", "emb>mlp1>dec"]
CASES = ["path_attribution", "reduce_paths", "bigrams", "frozen", "top_paths"]


# ----------------------------------------------------------------------------------------- cases
# Each case returns (arrays, meta) or None (skipped); it runs in every worker and in the one-process
# reference alike. ``mesh`` is a one-axis mesh (jetjax._internal.parallel.path_mesh).

def _attribution_case(jj, model, mesh):
    att = jj.path_attribution(model, IDS, target=TARGET, foil=FOIL, granularity="branch", mesh=mesh,
                              chunk_size=CHUNK, progress=False)
    return ({"scores": att.scores, "total": np.float64(att.total), "remainder": np.float64(att.remainder)},
            {"labels": list(att.labels)})


def _reduce_case(jj, model, mesh):
    res = jj.reduce_paths(model, IDS, granularity="branch", top_k=3, chunk_size=CHUNK, mesh=mesh, progress=False)
    return ({"scores": res.scores, "norms": res.norms, "top": np.asarray(res.top_indices),
             "top_logits": res.top_logits, "remainder": res.remainder},
            {"labels": list(res.labels)})


def _bigram_case(jj, model, mesh):
    # block_rows=16: the 61 rows take 4 steps (the last padded), 4 rows per device each
    table = jj.jet_bigrams(model, BIGRAM_PATHS, top_k=5, global_k=10, order=1, block_rows=16,
                           devices=list(mesh.devices.flat), progress=False)
    return ({"probs": table.probs, "ids": table.ids, "logsumexp": table.logsumexp,
             "global_probs": table.global_probs, "global_pairs": table.global_pairs},
            {"devices": table.meta["devices"]})


def _frozen_case(jj, model, mesh):
    att = jj.frozen_path_attribution(model, IDS, TARGET, FOIL)
    return ({"scores": att.scores, "total": np.float64(att.total), "remainder": np.float64(att.remainder)},
            {"labels": list(att.labels)})


def _search_case(jj, model, mesh):
    # beam 8 over 4 devices: the frontier is split, and 8 is far below the paths, so prefixes are dropped
    res = jj.top_paths(model, IDS, 5, target=TARGET, foil=FOIL, beam=8, mesh=mesh)
    return ({"scores": res.scores, "explored": np.float64(res.explored), "unexplored": np.float64(res.unexplored),
             "bound": np.float64(res.bound), "n_prefixes": np.int64(res.n_prefixes)},
            {"labels": list(res.labels)})


def _run_cases(model, mesh) -> tuple[dict, dict]:
    """``(arrays as {"case/field": array}, {case: status})``; a failing case is recorded, not raised."""
    import jetjax as jj

    runs = {"path_attribution": lambda: _attribution_case(jj, model, mesh),
            "reduce_paths": lambda: _reduce_case(jj, model, mesh),
            "bigrams": lambda: _bigram_case(jj, model, mesh),
            "frozen": lambda: _frozen_case(jj, model, mesh),
            "top_paths": lambda: _search_case(jj, model, mesh)}
    arrays, status = {}, {}
    for name in CASES:
        t0 = time.perf_counter()
        try:
            out = runs[name]()
        except Exception as err:  # recorded with its message and where in jetjax it was raised
            where = [f"{f.filename.split('jetjax/')[-1]}:{f.lineno} {f.line}"
                     for f in traceback.extract_tb(err.__traceback__) if "/jetjax/" in f.filename]
            status[name] = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000],
                            "where": where[-1] if where else None, "seconds": time.perf_counter() - t0}
            print(f"case {name} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            continue
        if out is None:
            status[name] = {"status": "skipped", "seconds": 0.0}
            continue
        values, meta = out
        arrays.update({f"{name}/{k}": np.asarray(v) for k, v in values.items()})
        status[name] = {"status": "ok", "meta": meta, "seconds": time.perf_counter() - t0}
    return arrays, status


# ------------------------------------------------------------------------------- one process side

def _process_main(args) -> None:
    """A worker (``--worker I``) or the one-process reference (``--single``): compute, write files."""
    n, m, k = args.processes, args.devices_per_process, args.mesh_devices
    t_start = time.perf_counter()
    import jax

    if args.worker is not None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=n,
                                   process_id=args.worker, initialization_timeout=max(30, int(args.timeout)))
        if args.inject_failure == args.worker:
            raise RuntimeError(f"injected failure in worker {args.worker} (--inject-failure)")
        expected = (n, n * m, m)
        name = f"worker-{args.worker}"
    else:
        expected = (1, n * m, n * m)
        name = "single"
    got = (jax.process_count(), jax.device_count(), jax.local_device_count())
    if got != expected:
        raise RuntimeError(f"{name}: expected (process_count, device_count, local_device_count) = {expected}, "
                           f"got {got}; is XLA_FLAGS overridden?")

    from jetjax.models import ModelConfig, random_model
    from jetjax.ngrams.sweep import model_fingerprint
    from jetjax._internal.parallel import path_mesh

    # k/n devices from every process: the mesh spans every process equally
    per = k // jax.process_count()
    devices = [d for p in range(jax.process_count())
               for d in [d for d in jax.devices() if d.process_index == p][:per]]
    mesh = path_mesh(devices)
    model = random_model(ModelConfig(**{**CONFIG, "n_layers": args.layers}), seed=SEED, scale=SCALE)
    t_cases = time.perf_counter()
    arrays, status = _run_cases(model, mesh)
    info = {"name": name, "pid": os.getpid(), "process_index": jax.process_index(),
            "process_count": jax.process_count(), "device_count": jax.device_count(),
            "local_device_count": jax.local_device_count(),
            "mesh": [{"id": d.id, "process_index": d.process_index} for d in mesh.devices.flat],
            "weights_sha256": model_fingerprint(model), "jax": jax.__version__, "cases": status,
            "seconds": {"setup": t_cases - t_start, "cases": time.perf_counter() - t_cases}}
    out = Path(args.out)
    np.savez(out / f"{name}.npz", **arrays)
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    print(f"{name}: done in {time.perf_counter() - t_start:.1f} s", flush=True)
    if args.worker is not None:
        jax.distributed.shutdown()


# ------------------------------------------------------------------------------------- launcher

class StageError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n_devices: int, cache_dir: str | None) -> dict:
    """The environment of a process with ``n_devices`` CPU devices (XLA_FLAGS is read at jax import)."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    if cache_dir:  # keyed on the device count too, so it only pays off across reruns
        env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _tail(log: Path, lines: int = 25) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    text = [line for line in text if not line.startswith("[Gloo]")]
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty)"


def _kill(proc: subprocess.Popen) -> None:
    """Kill a process and its group (each child leads its own session), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _run_all(jobs: list[tuple[str, list[str], dict]], out: Path, deadline: float, record: list) -> None:
    """Start every ``(name, command, env)`` at once, each in its own session with its log in
    ``out/logs/NAME.log``; return when all have exited 0. At the first failure, or at ``deadline``,
    raise StageError with the failing (or hung) processes' log tails; every process still running
    is killed (with its process group) before this returns or raises."""
    procs, first = [], len(record)
    try:
        for name, cmd, env in jobs:
            with open(out / "logs" / f"{name}.log", "wb") as fh:
                procs.append((name, subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, start_new_session=True)))
            record.append({"name": name, "pid": procs[-1][1].pid})
        while True:
            codes = [p.poll() for _, p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if not failed and all(c == 0 for c in codes):
                return
            if failed or time.monotonic() > deadline:
                bad = failed or [i for i, c in enumerate(codes) if c is None]
                raise StageError("; ".join(
                    f"{procs[i][0]} (pid {procs[i][1].pid}) "
                    + (f"exited with status {codes[i]}" if failed else "was still running at the timeout")
                    + f", log {out / 'logs' / (procs[i][0] + '.log')}:\n{_tail(out / 'logs' / (procs[i][0] + '.log'))}"
                    for i in bad))
            time.sleep(0.1)
    finally:
        for rec, (_, p) in zip(record[first:], procs):
            _kill(p)
            rec["returncode"] = p.returncode


def _load(out: Path, name: str) -> tuple[dict, dict]:
    info = json.loads((out / f"{name}.json").read_text())
    with np.load(out / f"{name}.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return info, arrays


def _compare_case(name: str, ref: tuple, runs: list[tuple], rtol: float) -> dict:
    """One case of the reference against every worker: status, max |Δ|, max relative Δ, pass."""
    ref_info, ref_arrays = ref
    states = [ref_info["cases"][name]["status"]] + [info["cases"][name]["status"] for info, _ in runs]
    if "error" in states:
        by_error: dict[str, list[str]] = {}  # the same error in several processes is said once
        for info, _ in [ref] + runs:
            case = info["cases"][name]
            if case["status"] == "error":
                where = f"at {case['where']}: " if case["where"] else ""
                by_error.setdefault(where + case["error"], []).append(info["name"])
        errors = [f"{', '.join(who)}: {text}" for text, who in by_error.items()]
        return {"case": name, "status": "error", "ok": False, "errors": errors}
    if set(states) == {"skipped"}:
        return {"case": name, "status": "skipped", "ok": True}
    if len(set(states)) > 1:
        return {"case": name, "status": "error", "ok": False, "errors": [f"statuses differ: {states}"]}
    keys = sorted(k for k in ref_arrays if k.startswith(name + "/"))
    max_abs, max_rel, problems = 0.0, 0.0, []
    identical = True
    for info, arrays in runs:
        if info["cases"][name]["meta"] != ref_info["cases"][name]["meta"]:
            problems.append(f"{info['name']}: labels/meta differ from the one-process run")
        if sorted(k for k in arrays if k.startswith(name + "/")) != keys:
            problems.append(f"{info['name']}: fields differ")
            continue
        for key in keys:
            a, b = ref_arrays[key], arrays[key]
            if a.shape != b.shape:
                problems.append(f"{info['name']}: {key} has shape {b.shape}, one process {a.shape}")
                continue
            identical &= bool(np.array_equal(a, b))
            if a.dtype.kind in "iub":
                if not np.array_equal(a, b):
                    problems.append(f"{info['name']}: {key} differs in {int((a != b).sum())} entries")
                continue
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
            scale = float(np.max(np.abs(a), initial=0.0)) or 1.0
            max_abs, max_rel = max(max_abs, diff), max(max_rel, diff / scale)
            if not diff <= rtol * scale:  # also catches NaN
                problems.append(f"{info['name']}: {key} max |Δ| {diff:.3g} > {rtol:g} × {scale:.3g}")
    return {"case": name, "status": "compared", "ok": not problems, "max_abs": max_abs, "max_rel": max_rel,
            "bitwise_equal": identical, "problems": problems}


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    """Refuse impossible layouts by name, before any process starts."""
    n, m = args.processes, args.devices_per_process
    if n < 1 or m < 1:
        parser.error(f"--processes and --devices-per-process must be at least 1, got {n} and {m}")
    if args.mesh_devices is None:
        args.mesh_devices = n * m
    k = args.mesh_devices
    if k < 1:
        parser.error(f"--mesh-devices must be at least 1, got {k}")
    if k > n * m:
        parser.error(f"--mesh-devices {k} asks for a mesh over {k} devices, but {n} processes × {m} devices "
                     f"per process give only {n * m}")
    if k % n:
        parser.error(f"--mesh-devices {k} does not split evenly over --processes {n}: every process must "
                     f"hold the same number of the mesh's devices ({k} is not a multiple of {n})")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.layers < 1:
        parser.error(f"--layers must be at least 1, got {args.layers}")
    if args.worker is not None and (not 0 <= args.worker < n or args.port is None):
        parser.error(f"--worker {args.worker} needs --port and must be in 0..{n - 1} for --processes {n}")


def _launch(args) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="jetjax-multiprocess-"))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    n, m, k = args.processes, args.devices_per_process, args.mesh_devices
    names = [f"worker-{i}" for i in range(n)]
    for stale in ["single", *names]:
        for suffix in (".json", ".npz"):
            (out / (stale + suffix)).unlink(missing_ok=True)
    base = [sys.executable, os.path.abspath(__file__), "--out", str(out), "--processes", str(n),
            "--devices-per-process", str(m), "--mesh-devices", str(k), "--timeout", str(args.timeout),
            "--layers", str(args.layers)]
    if args.inject_failure is not None:
        base += ["--inject-failure", str(args.inject_failure)]
    port = _free_port()
    jobs = [("single", base + ["--single"], _env(n * m, args.cache_dir))]
    jobs += [(w, base + ["--worker", str(i), "--port", str(port)], _env(m, args.cache_dir))
             for i, w in enumerate(names)]
    result = {"ok": False, "out": str(out), "processes": n, "devices_per_process": m, "mesh_devices": k,
              "rtol": args.rtol, "model": {**CONFIG, "n_layers": args.layers}, "ids": IDS, "target": TARGET,
              "foil": FOIL, "pids": [], "seconds": {}, "cases": [], "error": None}
    t0 = time.monotonic()
    print(f"jetjax multiprocess check: {n} processes × {m} CPU devices (gloo, port {port}) and one process × "
          f"{n * m}, mesh over {k} devices; files in {out}", flush=True)
    try:
        _run_all(jobs, out, t0 + args.timeout, result["pids"])
        ref = _load(out, "single")
        runs = [_load(out, w) for w in names]
        result["runs"] = [{key: info[key] for key in ("name", "pid", "process_index", "process_count",
                                                       "device_count", "local_device_count", "mesh",
                                                       "weights_sha256", "seconds")}
                          for info, _ in [ref] + runs]
        sha = {info["weights_sha256"] for info, _ in [ref] + runs}
        topo = [(info["process_count"], info["device_count"]) for info, _ in runs]
        rows = [{"case": "weights", "status": "compared", "ok": len(sha) == 1,
                 "problems": [] if len(sha) == 1 else [f"weights differ between runs: {sorted(sha)}"]},
                {"case": "topology", "status": "compared", "ok": all(t == (n, n * m) for t in topo),
                 "problems": [] if all(t == (n, n * m) for t in topo) else
                 [f"workers saw (process_count, device_count) {topo}, expected {(n, n * m)}"]}]
        rows += [_compare_case(name, ref, runs, args.rtol) for name in CASES]
        result["cases"] = rows
        result["ok"] = all(r["ok"] for r in rows)
    except StageError as err:
        result["error"] = str(err)
    except (OSError, ValueError, KeyError) as err:  # a process exited 0 but its files are missing or bad
        result["error"] = f"reading the processes' files in {out}: {type(err).__name__}: {err}"
    finally:
        result["seconds"]["total"] = time.monotonic() - t0
        (out / "result.json").write_text(json.dumps(result, indent=1))

    if result["error"]:
        print(f"FAILED: {result['error']}\nresult: {out / 'result.json'}", file=sys.stderr)
        return 1
    print(f"\n{'case':<18} {'max |Δ|':>10} {'max rel':>10}  result")
    for r in result["cases"]:
        if r["status"] == "compared" and "max_abs" in r:
            nums = f"{r['max_abs']:>10.2e} {r['max_rel']:>10.2e}"
        else:
            nums = f"{'-':>10} {'-':>10}"
        verdict = {"skipped": "skipped", "error": "FAIL (error)"}.get(r["status"], "pass" if r["ok"] else "FAIL")
        print(f"{r['case']:<18} {nums}  {verdict}")
        for line in r.get("problems", []) + r.get("errors", []):
            print(f"    {line[:400]}")
    took = ", ".join(f"{r['name']} {sum(r['seconds'].values()):.1f} s" for r in result["runs"])
    print(f"\nwall {result['seconds']['total']:.1f} s (in-process: {took}); result: {out / 'result.json'}")
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--devices-per-process", type=int, default=2, help="CPU devices in each (default 2)")
    parser.add_argument("--mesh-devices", type=int, default=None,
                        help="devices of the mesh, the same number from each process (default: all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the whole run (default 300)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="allowed |Δ| relative to each array's max")
    parser.add_argument("--out", default=None, help="directory for result.json, per-process files and logs")
    parser.add_argument("--layers", type=int, default=3, help="layers of the random model (default 3)")
    parser.add_argument("--cache-dir", default=None,
                        help="persistent XLA compilation cache for every process (faster reruns)")
    # internal: how the launcher starts its processes
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inject-failure", type=int, default=None, help=argparse.SUPPRESS)  # for the tests
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.worker is not None or args.single:
        try:
            _process_main(args)
        except BaseException:
            # Leave at once: jax.distributed's exit hook waits at a barrier for the other processes,
            # which may never arrive, so a failed worker would hang instead of exiting.
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 0
    # SIGTERM unwinds like Ctrl-C, so the finally blocks kill the children
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return _launch(args)


if __name__ == "__main__":
    sys.exit(main())
