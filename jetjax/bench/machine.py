"""The machine a benchmark runs on, and the fastest GEMM it can do, measured in the benchmark's own run.

A benchmark's speed means little without the machine: the same sweep is GEMM-bound on a 2-core
AVX2 laptop and on a server with AMX, where torch's bfloat16 GEMM runs about four times as fast as
XLA's float32 one. So every benchmark records :func:`machine` (CPU model, ISA features, cores,
library versions, load average), prints :func:`describe` of it, and compares its speed with
:func:`gemm_rates` measured in the same process and run, on the shape class it works in: the
limit of a float32 computation is the best float32 GEMM any library here reaches on this CPU, the
limit of a bfloat16 one the best bfloat16 GEMM, not XLA's own ``dot``.

torch is imported only when these functions run (``import jetjax`` never imports it); without
torch the torch entries are ``None``.
"""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path

__all__ = ["FLAGS", "GEMMS", "machine", "gemm_rates", "describe"]

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
"""ISA features recorded (names as in the ``flags`` line of ``/proc/cpuinfo``)."""

GEMMS = {"xla_float32": "float32", "torch_float32": "float32",
         "xla_bfloat16": "bfloat16", "torch_bfloat16": "bfloat16"}
"""The GEMMs :func:`gemm_rates` measures, each with the precision it stands for."""

_LABELS = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512F", "avx512_bf16": "AVX-512 BF16",
           "amx_tile": "AMX-TILE", "amx_bf16": "AMX-BF16"}
_FAMILIES = {"AVX-512": ("avx512f", "avx512_bf16"), "AMX": ("amx_tile", "amx_bf16")}
_PROBE_ROWS = 16


def _cpuinfo() -> tuple[str, set]:
    """CPU model name and ISA flags of the first processor in ``/proc/cpuinfo`` ("unknown", {} without it)."""
    cpu, flags = "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and cpu == "unknown" and value.strip():
            cpu = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return cpu, flags


def machine() -> dict:
    """The machine and software a benchmark runs on, as a JSON-able dict.

    Keys: ``cpu`` (model name from ``/proc/cpuinfo``, ``"unknown"`` where it cannot be read),
    ``isa`` (``{flag: present}`` for each of :data:`FLAGS`), ``cores`` (``os.cpu_count()``),
    ``backend`` and ``device`` (JAX's default backend and its first device's kind), ``jax``,
    ``jaxlib``, ``numpy``, ``torch`` (versions; ``torch`` is ``None`` when it is not installed),
    ``torch_threads`` (torch's intra-op threads, or ``None``), ``load_average`` (1, 5 and 15-minute
    load averages now, or ``None`` where the OS has none) and ``platform`` (``platform.platform()``).

    Example:
      >>> info = machine()
      >>> sorted(info) == sorted(["cpu", "isa", "cores", "backend", "device", "jax", "jaxlib", "numpy", "torch",
      ...                         "torch_threads", "load_average", "platform"])
      True
      >>> tuple(info["isa"]) == FLAGS and all(isinstance(v, bool) for v in info["isa"].values())
      True
      >>> isinstance(info["cpu"], str) and info["cores"] >= 1 and len(info["load_average"]) == 3
      True
    """
    import jax
    import jaxlib
    import numpy as np

    cpu, flags = _cpuinfo()
    try:
        import torch
    except ImportError:
        torch = None
    try:
        load = tuple(os.getloadavg())
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu, "isa": {f: f in flags for f in FLAGS}, "cores": os.cpu_count(),
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "torch": None if torch is None else torch.__version__,
            "torch_threads": None if torch is None else torch.get_num_threads(),
            "load_average": load, "platform": platform.platform()}


def _best_seconds(run, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _rate(make, m: int, k: int, n: int, repeats: int, max_call_s: float) -> tuple[float, int]:
    """(GFLOP/s, rows measured) of the GEMM ``make(rows)`` runs, ``[rows, k] @ [k, n]``.

    Probes first, from :data:`_PROBE_ROWS` rows up, each probe warmed up and timed once, the next one
    sized to take about ``max_call_s / 2``. As soon as a full call is estimated within ``max_call_s``
    the full shape is warmed up and timed best of ``repeats``. When probes stop growing (a GEMM
    without a fast kernel on this CPU, such as torch's bfloat16 without AVX-512 BF16 or AMX: a
    hundred times slower), the last probe's rows are timed instead, as many times as fit in
    ``max_call_s`` (at least once, at most ``repeats``).
    """
    rows = min(m, _PROBE_ROWS)
    run = make(rows)
    run()
    t = _best_seconds(run, 1)
    while rows < m and t * m / rows > max_call_s:
        grown = min(m, int(rows * max_call_s / 2 / max(t, 1e-9)) // _PROBE_ROWS * _PROBE_ROWS)
        if grown < 2 * rows:
            more = max(1, min(repeats, int(max_call_s / max(t, 1e-9)))) - 1
            best = min(t, _best_seconds(run, more)) if more else t
            return 2.0 * rows * k * n / best / 1e9, rows
        rows = grown
        run = make(rows)
        run()
        t = _best_seconds(run, 1)
    if rows < m:
        run = make(m)
        run()
        best = _best_seconds(run, repeats)
    else:
        best = min(t, _best_seconds(run, repeats - 1)) if repeats > 1 else t
    return 2.0 * m * k * n / best / 1e9, m


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def gemm_rates(m: int, k: int, n: int, *, repeats: int = 3, torch_ok: bool = True, max_call_s: float = 1.0) -> dict:
    """GFLOP/s of ``[m, k] @ [k, n]`` by each library and precision this process can run, best of ``repeats``.

    The GEMMs (:data:`GEMMS`): ``xla_float32`` (``jax.jit(jnp.dot)`` on float32), ``xla_bfloat16``
    (bfloat16 operands, ``jnp.dot(..., preferred_element_type=jnp.float32)``: float32 products and
    sums), ``torch_float32`` and ``torch_bfloat16`` (``torch.matmul`` on float32 / bfloat16 tensors
    under ``torch.no_grad()``, torch's default threads). Each is warmed up once, then timed best of
    ``repeats`` (JAX results waited for with ``block_until_ready``). A GEMM with no fast kernel on
    this CPU (a single call estimated over ``max_call_s``: torch's bfloat16 on CPUs without native
    bfloat16 runs at well under 1 GFLOP/s) is timed on fewer rows, as many as take about
    ``max_call_s / 2``, so that a call of this function takes a few seconds (about 4 s on
    ``[1024, 768] @ [768, 4096]`` on 2 AVX2 cores); ``rows`` says how many rows each rate was
    measured on.
    The torch entries are ``None`` when torch is not installed or ``torch_ok`` is false.

    Returns ``{"shape": [m, k, n], "gflops": {name: rate or None}, "rows": {name: rows or None},
    "best": {"float32": (name, rate), "bfloat16": (name, rate)}, "repeats": repeats}``, ``best``
    being the fastest available GEMM of each precision: the limit for a computation in it.

    Example:
      >>> g = gemm_rates(32, 16, 48, repeats=2, torch_ok=False)
      >>> g["shape"], g["gflops"]["torch_bfloat16"], g["best"]["float32"][0]
      ([32, 16, 48], None, 'xla_float32')
      >>> g["gflops"]["xla_bfloat16"] > 0 and g["best"]["bfloat16"][1] == g["gflops"]["xla_bfloat16"]
      True
    """
    m, k, n, repeats = (_positive_int(name, v) for name, v in (("m", m), ("k", k), ("n", n), ("repeats", repeats)))
    if not max_call_s > 0:
        raise ValueError(f"max_call_s must be a positive number of seconds, got {max_call_s!r}")
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    dots = {"xla_float32": (jax.jit(jnp.dot), jnp.float32),
            "xla_bfloat16": (jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32)), jnp.bfloat16)}

    def xla(dot, dtype):
        wd = w.astype(dtype).block_until_ready()

        def make(rows):
            a = x[:rows].astype(dtype).block_until_ready()
            return lambda: dot(a, wd).block_until_ready()
        return make

    gflops = {name: None for name in GEMMS}
    rows = dict(gflops)
    for name, (dot, dtype) in dots.items():
        gflops[name], rows[name] = _rate(xla(dot, dtype), m, k, n, repeats, max_call_s)
    torch = None
    if torch_ok:
        try:
            import torch
        except ImportError:
            torch = None
    if torch is not None:
        gen = torch.Generator().manual_seed(0)
        tx, tw = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)

        def torch_gemm(dtype):
            wd = tw.to(dtype)

            def make(r):
                a = tx[:r].to(dtype).contiguous()
                return lambda: torch.matmul(a, wd)
            return make

        with torch.no_grad():
            for name, dtype in (("torch_float32", torch.float32), ("torch_bfloat16", torch.bfloat16)):
                gflops[name], rows[name] = _rate(torch_gemm(dtype), m, k, n, repeats, max_call_s)
    best = {}
    for precision in ("float32", "bfloat16"):
        available = [(name, rate) for name, rate in gflops.items() if GEMMS[name] == precision and rate is not None]
        best[precision] = max(available, key=lambda item: item[1])
    return {"shape": [m, k, n], "gflops": gflops, "rows": rows, "best": best, "repeats": repeats}


def _isa_text(isa: dict) -> str:
    """"AVX2, FMA; no AVX-512, no AMX": the flags present, then those absent (a family absent as a whole once)."""
    present = [_LABELS.get(f, f) for f, on in isa.items() if on]
    absent = []
    for f, on in isa.items():
        family = next((name for name, flags in _FAMILIES.items() if f in flags), None)
        if family is not None and not any(isa.get(g) for g in _FAMILIES[family]):
            label = family
        else:
            label = _LABELS.get(f, f)
        if not on and label not in absent:
            absent.append(label)
    return "; ".join(part for part in (", ".join(present), ", ".join(f"no {a}" for a in absent)) if part) \
        or "ISA flags unknown"


def describe(info: dict) -> str:
    """One markdown line about the machine of :func:`machine` ``info``, starting with ``"CPU:"``.

    Example:
      >>> info = {"cpu": "AMD EPYC", "cores": 2, "isa": {"avx2": True, "fma": True, "avx512f": False,
      ...         "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}, "backend": "cpu",
      ...         "jax": "0.10.2", "jaxlib": "0.10.2", "numpy": "2.3.5", "torch": "2.13.0+cpu",
      ...         "torch_threads": 2, "load_average": (0.43, 1.3, 1.15)}
      >>> print(describe(info))
      CPU: AMD EPYC, 2 cores; AVX2, FMA; no AVX-512, no AMX; backend cpu; jax 0.10.2, jaxlib 0.10.2, numpy 2.3.5, torch 2.13.0+cpu (2 threads); load average 0.43 / 1.30 / 1.15 (1 / 5 / 15 min).
      >>> line = describe(dict(info, isa={**info["isa"], "avx512f": True}, torch=None, load_average=None))
      >>> line.split("; ")[1:3]
      ['AVX2, FMA, AVX-512F', 'no AVX-512 BF16, no AMX']
      >>> line.endswith("torch not installed; load average unknown.")
      True
    """
    torch = "torch not installed" if info.get("torch") is None else (
        f"torch {info['torch']}" + (f" ({info['torch_threads']} threads)" if info.get("torch_threads") else ""))
    load = info.get("load_average")
    load = ("load average " + " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)") if load \
        else "load average unknown"
    versions = ", ".join(f"{lib} {info[lib]}" for lib in ("jax", "jaxlib", "numpy") if info.get(lib))
    return (f"CPU: {info.get('cpu', 'unknown')}, {info.get('cores')} cores; {_isa_text(info.get('isa', {}))}; "
            f"backend {info.get('backend', '?')}; {versions}, {torch}; {load}.")
