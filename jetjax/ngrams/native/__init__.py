"""The sweep's tiles as compiled XLA:CPU kernels (``native/tile_reduce.cc``), built on first use.

A sweep step spends, per vocabulary tile, one GEMM and then the tile's reductions: the online
logsumexp and the running top-k. :func:`tile_reduce` does a tile's reductions in one pass over each
row (vectorized max and exp-sum, then a scan that looks closer only at the 16-column runs holding a
value above the row's current k-th), splitting the rows over the cores. :func:`gemm_reduce` forms
the float32 logits too, with its own register-blocked GEMM (packed operands, a 12 x 32 block of
logits in AVX-512 registers, 6 x 16 with AVX2), and folds each few hundred columns into the row
states while they are still in the L1 cache: one call per step for all tiles. What each of them
gained, measured, is in ``docs/performance.md``.

The kernels hold the rule of the pure-JAX step exactly: the running top k keeps "larger value
first, then lower token id", so on the same logits the ids and top logits are the same; the
logsumexp's summation order differs (last bits, ~1e-6 relative), and :func:`gemm_reduce`'s logits
differ from XLA's GEMM by float32 rounding (each is one multiply-add chain over ``d`` in order;
equal columns of ``W`` give equal logits, so exact ties stay ties). A sweep records which ran
(``tile_reduce`` in its manifest settings: ``"fused"`` or ``"kernel"``; absent for XLA alone), so a
resumed sweep never mixes them.

Where the CPU has AMX (and the OS grants its tile state), :func:`gemm_reduce_bf16` forms bfloat16
logits with AMX's bfloat16 dot products, 32 x 32 at a time, float32 accumulation, and folds them
like :func:`gemm_reduce`.

They are used when the sweep runs on CPU devices, a C++ compiler is found (``$CXX``, else ``c++``,
``g++``, ``clang++``) and the build succeeds: :func:`gemm_reduce` for float32 weights and compute,
:func:`gemm_reduce_bf16` for bfloat16 compute on a CPU with AMX, else :func:`tile_reduce` after
XLA's GEMM. Otherwise the sweep runs the pure-JAX step, after one warning when a build was tried and
failed. The environment variable ``JETJAX_TILE_REDUCE`` (``auto`` | ``kernel`` | ``reduce`` |
``xla``, read at each sweep) forces a choice: ``kernel`` is ``auto`` but makes a failed build an
error instead of a warning (sweeps on GPU/TPU devices still run the pure-JAX step); ``reduce``
never uses :func:`gemm_reduce` or :func:`gemm_reduce_bf16` (XLA's GEMM and :func:`tile_reduce`, as
before the fused kernels existed); ``xla`` never builds them.

The build (about 2 s) is cached under :func:`jetjax.io.assets.cache_dir` ``/ native/<key>/``, the key
hashing the source, the compiler's version, the flags (``-march=native``: the machine's own ISA),
jaxlib's version and the CPU's flags, so a different machine or jaxlib builds its own. The library
is written to a temporary name and moved into place, so concurrent builds never see half a file.

Example (one tile of three columns, ids 10-12, folded into an empty running state; where no C++
compiler can build the kernel, ``available()`` is ``False`` and nothing runs):
  >>> import jax, jax.numpy as jnp
  >>> from jetjax.ngrams import native
  >>> state = (jnp.array([-jnp.inf]), jnp.zeros(1), jnp.full((1, 2), -jnp.inf), jnp.zeros((1, 2), jnp.int32))
  >>> out = jax.jit(native.tile_reduce)(jnp.array([[0.0, 2.0, 1.0]]), jnp.zeros(3), 10, *state) if native.available() else None
  >>> out is None or (out[3].tolist(), round(float(out[0][0] + jnp.log(out[1][0])), 4)) == ([[11, 12]], 2.4076)
  True
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.cache import cache_dir

__all__ = ["available", "mode", "tile_reduce", "gemm_reduce", "gemm_layout", "pack_rows", "pack_tile", "TARGET",
           "GEMM_TARGET", "MODES", "unavailable_reason", "usable_cores", "amx", "gemm_reduce_bf16", "pack_rows_bf16",
           "pack_tile_bf16", "AMX_TARGET", "AMX_BLOCK"]

TARGET = "jetjax_tile_reduce"
"""The name the reduction kernel is registered under with ``jax.ffi``."""

GEMM_TARGET = "jetjax_gemm_reduce"
"""The name the float32 GEMM + reduction kernel is registered under with ``jax.ffi``."""

AMX_TARGET = "jetjax_gemm_reduce_bf16"
"""The name the bfloat16 (AMX) GEMM + reduction kernel is registered under with ``jax.ffi``."""

AMX_BLOCK = 32
"""Rows per strip, columns per panel and ``d`` per step of :func:`gemm_reduce_bf16` (its packings pad to it)."""

MODES = ("auto", "kernel", "reduce", "xla")
SOURCE = Path(__file__).parent / "tile_reduce.cc"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast", "-w")

_lock = threading.Lock()
_state: dict = {}   # "ok": bool, "reason": str once tried


def mode() -> str:
    """``$JETJAX_TILE_REDUCE`` (default ``auto``), checked against :data:`MODES`."""
    value = os.environ.get("JETJAX_TILE_REDUCE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"JETJAX_TILE_REDUCE must be one of {', '.join(MODES)}, got {value!r}")
    return value


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform
    return platform.machine() + platform.processor()


def _build() -> Path:
    """Compile the kernel (or find it built) and return the shared library's path; raises on failure."""
    import jaxlib

    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++, clang++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    include = jax.ffi.include_dir()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), jaxlib.__version__,
                                    _cpu_flags()]).encode()).hexdigest()[:20]
    lib = cache_dir() / "native" / key / "tile_reduce.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        run = subprocess.run([cxx, *FLAGS, f"-I{include}", str(SOURCE), "-o", tmp, "-lpthread"],
                             capture_output=True, text=True, timeout=600)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(cxx).name} failed (exit {run.returncode}): {' | '.join(tail)}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> bool:
    with _lock:
        if "ok" not in _state:
            try:
                lib = ctypes.CDLL(str(_build()))
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JetjaxTileReduce), platform="cpu")
                jax.ffi.register_ffi_target(GEMM_TARGET, jax.ffi.pycapsule(lib.JetjaxGemmReduce), platform="cpu")
                jax.ffi.register_ffi_target(AMX_TARGET, jax.ffi.pycapsule(lib.JetjaxGemmReduceBf16), platform="cpu")
                mr, nr = ctypes.c_int(), ctypes.c_int()
                lib.jetjax_gemm_layout(ctypes.byref(mr), ctypes.byref(nr))
                _state.update(ok=True, reason="", lib=lib, layout=(mr.value, nr.value), amx=lib.jetjax_amx() == 1)
            except Exception as e:  # noqa: BLE001 - any failure means: use the pure-JAX step
                _state.update(ok=False, reason=f"{type(e).__name__}: {e}")
                if mode() == "auto":
                    warnings.warn("jetjax could not build its CPU sweep kernel, so sweeps run the pure-JAX step "
                                  f"(same results, slower): {_state['reason']}", RuntimeWarning, stacklevel=3)
        return _state["ok"]


def available() -> bool:
    """Whether the kernel is built and registered (building it on the first call); ``False`` in mode ``xla``."""
    if mode() == "xla":
        return False
    ok = _load()
    if not ok and mode() == "kernel":
        raise RuntimeError(f"JETJAX_TILE_REDUCE=kernel, but the CPU sweep kernel cannot be built: {_state['reason']}")
    return ok


def amx() -> bool:
    """Whether :func:`gemm_reduce_bf16` can run here: the build has AMX (``-march=native`` on a CPU
    with AMX-BF16) and the OS granted this process AMX's tile state. ``False`` without the kernel."""
    return available() and _state.get("amx", False)


def unavailable_reason() -> str:
    """Why the last build failed (empty when it succeeded or was never tried)."""
    return _state.get("reason", "")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def tile_reduce(logits, bias, offset, m, s, top_v, top_i, threads: int = 0):
    """One tile folded into a row block's running ``(max, sum of exps, top values, top ids)``.

    ``logits [B, T]`` and ``bias [T]`` are float32 (the tile's columns ``offset .. offset + T - 1``);
    ``m, s [B]`` float32, ``top_v [B, k]`` float32 (descending), ``top_i [B, k]`` int32. ``threads``:
    the most threads the rows are split over (0, the default: one per usable core; a sweep over
    several CPU devices passes each its share). Call only after :func:`available` returned ``True``,
    inside ``jit`` on CPU.
    """
    call = _state_call(TARGET, 3, m, s, top_v, top_i)
    return call(logits, bias, jnp.asarray(offset, jnp.int32), m, s, top_v, top_i, threads=np.int64(threads))


def gemm_layout() -> tuple[int, int]:
    """``(MR, NR)``: rows per packed strip and columns per packed panel of :func:`gemm_reduce`'s GEMM
    (12 and 32 where the build has AVX-512, else 6 and 16). Call only after :func:`available`."""
    return _state["layout"]


def pack_rows(r, mr: int):
    """``r [B, d]`` -> ``[ceil(B / mr), d, mr]``, zero rows appended: the row strips of :func:`gemm_reduce`."""
    rows, d = r.shape
    strips = -(-rows // mr)
    r = jnp.pad(r, ((0, strips * mr - rows), (0, 0)))
    return r.reshape(strips, mr, d).transpose(0, 2, 1)


def pack_tile(w, nr: int):
    """``w [..., d, T]`` -> ``[..., ceil(T / nr), d, nr]``, zero columns appended: :func:`gemm_reduce`'s panels."""
    *lead, d, t = w.shape
    panels = -(-t // nr)
    w = jnp.pad(w, [(0, 0)] * len(lead) + [(0, 0), (0, panels * nr - t)])
    w = w.reshape(*lead, d, panels, nr)
    return jnp.moveaxis(w, -2, -3)


def gemm_reduce(a, w, bias, offset, m, s, top_v, top_i, valid=None, threads: int = 0):
    """Tiles of float32 logits ``A W + bias``, formed and folded into the running state in one call.

    ``a`` is the block's rows packed by :func:`pack_rows` (``[strips, d, MR]``), ``w`` the tiles packed
    by :func:`pack_tile` (``[n, panels, d, NR]``), ``bias [n, T]`` their bias (tile ``i`` holds the
    columns ``offset + i T .. offset + (i + 1) T - 1``; panel columns past ``T`` are ignored), and the
    state as in :func:`tile_reduce`, for ``strips * MR`` rows. Each logit is one fused multiply-add
    chain over ``d`` in order, the same for every row and column (equal columns give equal logits),
    and folded while still in cache; the reduction is :func:`tile_reduce`'s, a few hundred columns of
    a tile at a time. The rows are split over the cores; each core walks all the tiles for its rows.
    ``valid`` (int32, default: all rows): rows from it on are padding, skipped, their state returned
    as it came. ``threads`` as in :func:`tile_reduce` (the results do not depend on it). Call only after :func:`available` returned ``True``, inside ``jit`` on CPU.

    Example (two rows, one tile of three columns, the top 1 of each row; where no C++ compiler can
    build the kernel, nothing runs):
      >>> import jax, jax.numpy as jnp
      >>> ids = [1, 0]
      >>> if available():
      ...     mr, nr = gemm_layout()
      ...     a = pack_rows(jnp.array([[1.0, 0.0], [0.0, 1.0]]), mr)
      ...     w = pack_tile(jnp.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]]), nr)
      ...     n = a.shape[0] * mr
      ...     state = (jnp.full(n, -jnp.inf), jnp.zeros(n), jnp.full((n, 1), -jnp.inf), jnp.zeros((n, 1), jnp.int32))
      ...     ids = jax.jit(gemm_reduce)(a, w, jnp.zeros((1, 3)), 0, *state)[3][:2, 0].tolist()
      >>> ids
      [1, 0]
    """
    return _gemm_call(GEMM_TARGET, a, w, bias, offset, m, s, top_v, top_i, valid, threads)


def _state_call(target: str, n_before: int, m, s, top_v, top_i):
    """The ``jax.ffi`` call of a kernel whose operands end with the running state ``(m, s, top_v,
    top_i)`` after ``n_before`` others, and whose results are that state updated (aliased to it, so
    the kernel writes in place)."""
    outs = (jax.ShapeDtypeStruct(m.shape, jnp.float32), jax.ShapeDtypeStruct(s.shape, jnp.float32),
            jax.ShapeDtypeStruct(top_v.shape, jnp.float32), jax.ShapeDtypeStruct(top_i.shape, jnp.int32))
    return jax.ffi.ffi_call(target, outs, input_output_aliases={n_before + i: i for i in range(4)})


def _gemm_call(target, a, w, bias, offset, m, s, top_v, top_i, valid, threads):
    call = _state_call(target, 5, m, s, top_v, top_i)
    valid = m.shape[0] if valid is None else valid
    return call(a, w, bias, jnp.asarray(valid, jnp.int32), jnp.asarray(offset, jnp.int32), m, s, top_v, top_i,
                threads=np.int64(threads))


def pack_rows_bf16(r):
    """``r [B, d]`` -> bfloat16 bits ``uint16 [B', d']``, ``B'`` and ``d'`` rounded up to
    :data:`AMX_BLOCK` with zeros: the rows of :func:`gemm_reduce_bf16`."""
    rows, d = r.shape
    r = jnp.pad(r.astype(jnp.bfloat16), ((0, -rows % AMX_BLOCK), (0, -d % AMX_BLOCK)))
    return jax.lax.bitcast_convert_type(r, jnp.uint16)


def pack_tile_bf16(w):
    """``w [..., d, T]`` -> bfloat16 bits ``uint16 [..., T' / 32, d' / 2, 32, 2]`` (``T'``, ``d'`` rounded
    up to :data:`AMX_BLOCK`, zeros): panels of 32 columns in AMX's pair layout, entry
    ``[q, p, j, e] = w[2 p + e, 32 q + j]``; :func:`gemm_reduce_bf16`'s tiles."""
    *lead, d, t = w.shape
    w = jnp.pad(w.astype(jnp.bfloat16), [(0, 0)] * len(lead) + [(0, -d % AMX_BLOCK), (0, -t % AMX_BLOCK)])
    dp, tp = w.shape[-2:]
    w = w.reshape(*lead, dp // 2, 2, tp // AMX_BLOCK, AMX_BLOCK)
    w = jnp.moveaxis(w, -2, -4)                     # [..., panels, d'/2, 2, 32]
    w = jnp.swapaxes(w, -1, -2)                     # [..., panels, d'/2, 32, 2]
    return jax.lax.bitcast_convert_type(w, jnp.uint16)


def gemm_reduce_bf16(a, w, bias, offset, m, s, top_v, top_i, valid=None, threads: int = 0):
    """:func:`gemm_reduce` in bfloat16 on AMX: logits ``A W + bias`` from bfloat16 operands, float32
    accumulation (AMX's dot products of bfloat16 pairs), folded into the running state in one call.

    ``a`` from :func:`pack_rows_bf16` (``[B', d']``), ``w`` from :func:`pack_tile_bf16`
    (``[n, panels, d' / 2, 32, 2]``), ``bias [n, T]`` float32, the state for ``B'`` rows; ``valid``
    and ``threads`` as in :func:`gemm_reduce`. Each logit is formed the same way for every row,
    column and thread count (equal columns give equal logits; the summation order within the dot
    products is the hardware's). Call only where :func:`amx` is ``True``, inside ``jit`` on CPU.

    Example (two rows, one tile of three columns, the top 1 of each row; without AMX nothing runs):
      >>> import jax, jax.numpy as jnp
      >>> ids = [1, 0]
      >>> if amx():
      ...     a = pack_rows_bf16(jnp.array([[1.0, 0.0], [0.0, 1.0]]))
      ...     w = pack_tile_bf16(jnp.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]]))
      ...     n = a.shape[0]
      ...     state = (jnp.full(n, -jnp.inf), jnp.zeros(n), jnp.full((n, 1), -jnp.inf), jnp.zeros((n, 1), jnp.int32))
      ...     ids = jax.jit(gemm_reduce_bf16)(a, w, jnp.zeros((1, 3)), 0, *state)[3][:2, 0].tolist()
      >>> ids
      [1, 0]
    """
    return _gemm_call(AMX_TARGET, a, w, bias, offset, m, s, top_v, top_i, valid, threads)
