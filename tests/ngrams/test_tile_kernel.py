"""The sweep's CPU tile kernels (jetjax/ngrams/native/tile_reduce.cc): the reduction after XLA's GEMM
("kernel") and the fused float32 GEMM + reduction ("fused"). The same ids and top logits as the
pure-JAX step and as one lax.top_k over whole rows (for "fused", wherever float32 rounding of the
GEMM cannot swap two logits), a logsumexp as close to float64 as XLA's, NaN rows passed on as NaN,
the choice recorded in a sweep's manifest and a resume across a change of it refused, the
environment switch checked, a failed build falling back after one warning, and the fused GEMM's
portable builds (AVX2, SSE2) checked against float64 by a small C++ driver."""

import json
import platform
import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import jet_bigrams, native
from jetjax.ngrams.sweep import _step, _tile_unembedding
from jetjax._internal.parallel import path_mesh


@pytest.fixture(scope="module")
def kernel():
    """Skips where no C++ compiler exists; where one does, a kernel that fails to build fails the tests."""
    if native._compiler() is None:
        pytest.skip("no C++ compiler ($CXX, c++, g++, clang++): sweeps run the pure-JAX step here")
    assert native.available(), f"the CPU sweep kernel does not build: {native.unavailable_reason()}"
    return True


def _logsumexp64(logits):
    z = np.asarray(logits, np.float64)
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


def _need_amx(compute_dtype, tiles):
    if compute_dtype == "bfloat16" and tiles == "fused" and not native.amx():
        pytest.skip("no AMX here (or the OS refused its tile state): bfloat16 sweeps use XLA's GEMM")


@pytest.mark.parametrize("compute_dtype, tiles", [("float32", "kernel"), ("float32", "fused"), ("bfloat16", "kernel"),
                                                  ("bfloat16", "fused")])
@pytest.mark.parametrize("tile, kk", [(1024, 10), (1000, 7), (4096, 1), (48, 40)])
def test_kernel_matches_one_top_k_over_the_row(kernel, tile, kk, compute_dtype, tiles):
    """Random rows (some far apart in scale; 70, not a multiple of the fused GEMM's strip), a
    vocabulary that is not a multiple of the tile, tiles that are not a multiple of its panel:
    ids equal one lax.top_k over the whole row of the same logits (the fused kernel: wherever the
    float64 logits differ by more than float32 rounding), the pure-JAX step's ids too, and both
    logsumexps within float32 rounding of a float64 one. bfloat16: against the float64 logits of the
    bfloat16-rounded operands (the AMX kernel's too)."""
    _need_amx(compute_dtype, tiles)
    v, d = 5003, 24
    rng = np.random.default_rng(1)
    w = rng.normal(size=(d, v)).astype(np.float32)
    b = rng.normal(size=v).astype(np.float32)
    x = rng.normal(size=(70, d)).astype(np.float32) * np.geomspace(0.01, 30, 70)[:, None].astype(np.float32)
    mesh = path_mesh(jax.devices()[:1], axis_name="rows")
    nr = native.gemm_layout()[1] if tiles == "fused" else 0
    packed = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), tile, compute_dtype, nr)
    plain = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), tile, compute_dtype)
    ctx = jnp.arange(len(x))[:, None]
    got = _step(lambda p, c: p[c[:, 0]], kk, mesh, compute_dtype, tiles)(jnp.asarray(x), *packed, ctx)
    pure = _step(lambda p, c: p[c[:, 0]], kk, mesh, compute_dtype, "xla")(jnp.asarray(x), *plain, ctx)
    if compute_dtype == "bfloat16":
        xr = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
        wr = np.asarray(jnp.asarray(w).astype(jnp.bfloat16).astype(jnp.float32))
        logits = np.asarray(jnp.dot(jnp.asarray(xr), jnp.asarray(wr), precision="highest")) + b
    else:
        logits = np.asarray(jnp.dot(jnp.asarray(x), jnp.asarray(w), precision="highest")) + b
    want_i = np.argsort(-logits, axis=1, kind="stable")[:, :kk]
    ids = np.asarray(got[1])
    # the GEMM's own rounding may swap two logits closer than it; everywhere else the order is exact
    gap = np.abs(np.take_along_axis(logits, ids, 1) - np.take_along_axis(logits, want_i, 1)).max()
    assert (ids == want_i).mean() > 0.99 and gap < 1e-4 * np.abs(logits).max()
    if tiles == "kernel":  # the same logits as the pure step (XLA's GEMM): the very same ids
        assert (ids == np.asarray(pure[1])).all()
    else:  # its own GEMM: a swap only between logits within float32 rounding of each other
        swapped = ids != np.asarray(pure[1])
        close = np.abs(np.take_along_axis(logits, ids, 1) - np.take_along_axis(logits, np.asarray(pure[1]), 1))
        assert (~swapped | (close < 1e-5 * (np.abs(logits).max(1, keepdims=True) + 1))).all()
    lse64 = _logsumexp64(logits)
    scale = np.abs(lse64) + 1
    assert np.max(np.abs(np.asarray(got[2]) - lse64) / scale) < 2e-6
    assert np.max(np.abs(np.asarray(got[2]) - np.asarray(pure[2])) / scale) < 2e-6
    if tiles == "kernel":
        np.testing.assert_allclose(got[0], pure[0], rtol=5e-6, atol=0)
    else:  # log-probabilities within float32 rounding of the row's logits' scale, against float64
        want_logp = np.take_along_axis(logits, ids, 1) - lse64[:, None]
        seen = want_logp > -60  # (smaller probabilities leave float32's normal range)
        err = np.abs(np.log(np.maximum(np.asarray(got[0], np.float64), 1e-300)) - want_logp) / scale[:, None]
        assert seen.mean() > 0.5 and np.max(err[seen]) < 4e-6


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_fused_kernel_skips_a_blocks_padding_rows(kernel, compute_dtype):
    """A padded block (n_valid < rows, as a sweep's last block): the real rows come out bit for bit
    as when every row is computed, on one device and with the rows split over two; the padding
    rows past the last strip (of the GEMM's MR rows; AMX: 32) holding a real row are not computed
    (their state stays empty: logsumexp -inf)."""
    _need_amx(compute_dtype, "fused")
    v, d, kk, rows, n_valid = 700, 20, 5, 64, 29
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(d, v)).astype(np.float32), rng.normal(size=v).astype(np.float32)
    x = jnp.asarray(rng.normal(size=(rows, d)).astype(np.float32))
    ctx = jnp.arange(rows)[:, None]
    packed = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), 256, compute_dtype, nr=native.gemm_layout()[1])
    for devices in (jax.devices()[:1], jax.devices()[:2]):
        step = _step(lambda p, c: p[c[:, 0]], kk, path_mesh(devices, axis_name="rows"), compute_dtype, tiles="fused")
        full = [np.asarray(a) for a in step(x, *packed, ctx)]
        part = [np.asarray(a) for a in step(x, *packed, ctx, n_valid)]
        for a, c in zip(full, part):
            np.testing.assert_array_equal(a[:n_valid], c[:n_valid])
        assert np.isfinite(full[2]).all()
        mr, local = (native.AMX_BLOCK if compute_dtype == "bfloat16" else native.gemm_layout()[0]), rows // len(devices)
        for i in range(len(devices)):   # rows past the last strip holding a real row are never computed
            real = min(max(n_valid - i * local, 0), local)
            assert (part[2][i * local + min(local, -(-real // mr) * mr):(i + 1) * local] == -np.inf).all()
        assert (part[2][n_valid:] == -np.inf).sum() >= rows - n_valid - mr


@pytest.mark.parametrize("compute_dtype, tiles", [("float32", "kernel"), ("float32", "fused"), ("bfloat16", "fused")])
def test_kernel_passes_nan_rows_on_as_nan(kernel, compute_dtype, tiles):
    """A row whose path output holds NaN (or inf) has NaN logits: its logsumexp and probabilities
    come out NaN, never finite, while the other rows are untouched; a NaN column of the unembedding
    makes every row NaN. The same as the pure-JAX step."""
    _need_amx(compute_dtype, tiles)
    v, d = 300, 4
    w = np.tile(np.linspace(-1, 1, v, dtype=np.float32), (d, 1)) * np.arange(1, d + 1, dtype=np.float32)[:, None]
    b = np.zeros(v, np.float32)
    x = np.eye(d, dtype=np.float32)
    x[1, 2], x[2, 3] = np.nan, np.inf
    mesh = path_mesh(jax.devices()[:1], axis_name="rows")
    ctx = jnp.arange(d)[:, None]

    def run(w, mode):
        nr = native.gemm_layout()[1] if mode == "fused" else 0
        packed = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), 128, compute_dtype, nr=nr)
        step = _step(lambda p, c: p[c[:, 0]], 3, mesh, compute_dtype, tiles=mode)
        return [np.asarray(a) for a in step(jnp.asarray(x), *packed, ctx)]

    got, pure = run(w, tiles), run(w, "xla")
    for out in (got, pure):
        assert np.isnan(out[2][1:3]).all() and np.isnan(out[0][1:3]).all()
    for row in (0, 3):
        assert got[1][row].tolist() == pure[1][row].tolist()
        if compute_dtype == "float32":  # (bfloat16 rounding ties some of these columns)
            assert got[1][row].tolist() == [v - 1, v - 2, v - 3]
        np.testing.assert_allclose(got[2][row], pure[2][row], rtol=2e-6)
    w[0, 17] = np.nan
    got = run(w, tiles)
    assert np.isnan(got[2]).all() and np.isnan(got[0]).all()


def _tiny():
    cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=61,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, seed=3, scale=0.5)


def test_manifest_records_the_kernel_and_a_resume_across_the_switch_is_refused(kernel, tmp_path, monkeypatch):
    model = _tiny()
    opts = dict(paths="emb>mlp0>dec", top_k=4, global_k=5, block_rows=16, chunk_rows=32, vocab_tile=32,
                progress=False)
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "xla")
    pure = jet_bigrams(model, **opts)
    assert "tile_reduce" not in pure.meta
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "auto")
    out = tmp_path / "sweep"
    table = jet_bigrams(model, out_dir=out, **opts)                  # float32: the fused kernel
    assert table.meta["tile_reduce"] == "fused"
    assert json.loads((out / "manifest.json").read_text())["settings"]["tile_reduce"] == "fused"
    np.testing.assert_array_equal(table.ids, pure.ids)
    np.testing.assert_allclose(table.logsumexp, pure.logsumexp, rtol=2e-6)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "xla")
    with pytest.raises(ValueError, match=r"settings\.tile_reduce: 'fused' there, None now"):
        jet_bigrams(model, out_dir=out, **opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a float32 directory from before the fused kernel recorded "kernel": refused with the way out
    # named, and resumed with JETJAX_TILE_REDUCE=reduce
    old = tmp_path / "old"
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "reduce")
    first = jet_bigrams(model, out_dir=old, **opts)
    assert first.meta["tile_reduce"] == "kernel"
    np.testing.assert_array_equal(first.ids, pure.ids)
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "auto")
    with pytest.raises(ValueError, match=r"'kernel' there, 'fused' now.*resume it with JETJAX_TILE_REDUCE=reduce"):
        jet_bigrams(model, out_dir=old, **opts)
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "reduce")
    again = jet_bigrams(model, out_dir=old, **opts)
    np.testing.assert_array_equal(again.logsumexp, first.logsumexp)
    # bfloat16: the AMX kernel where the CPU has it, else XLA's GEMM and the reduction kernel; a
    # bfloat16 directory from before the AMX kernel ("kernel") resumes with JETJAX_TILE_REDUCE=reduce
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "auto")
    half = jet_bigrams(model, out_dir=tmp_path / "bf16", compute_dtype="bfloat16", **opts)
    assert half.meta["tile_reduce"] == ("fused" if native.amx() else "kernel")
    assert (half.ids[:, 0] == pure.ids[:, 0]).mean() > 0.9
    if native.amx():
        monkeypatch.setenv("JETJAX_TILE_REDUCE", "reduce")
        old16 = jet_bigrams(model, out_dir=tmp_path / "old16", compute_dtype="bfloat16", **opts)
        assert old16.meta["tile_reduce"] == "kernel"
        monkeypatch.setenv("JETJAX_TILE_REDUCE", "auto")
        with pytest.raises(ValueError, match=r"'kernel' there, 'fused' now.*bfloat16 one started before its AMX"):
            jet_bigrams(model, out_dir=tmp_path / "old16", compute_dtype="bfloat16", **opts)


def test_environment_switch_is_checked(monkeypatch):
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "fast")
    with pytest.raises(ValueError, match=r"JETJAX_TILE_REDUCE must be one of auto, kernel, reduce, xla, got 'fast'"):
        native.mode()
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "xla")
    assert native.available() is False


def test_a_failed_build_warns_once_and_falls_back(tmp_path, monkeypatch):
    """A compiler that fails: one RuntimeWarning naming it, sweeps still run (pure JAX), and mode
    ``kernel`` raises with the reason instead."""
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'no such luck' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setattr(native, "_compiler", lambda: str(broken))
    monkeypatch.setenv("JETJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "auto")
    with pytest.warns(RuntimeWarning, match=r"could not build its CPU sweep kernel.*broken-c\+\+ failed \(exit 3\)"):
        assert native.available() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.available() is False                      # told once, not at every sweep
        table = jet_bigrams(_tiny(), "emb>dec", top_k=2, progress=False)
    assert "tile_reduce" not in table.meta and np.isfinite(table.logsumexp).all()
    assert not list((tmp_path / "cache").rglob("*.so"))          # nothing half-built left behind
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "kernel")
    with pytest.raises(RuntimeError, match=r"JETJAX_TILE_REDUCE=kernel, but .*no such luck"):
        native.available()


_DRIVER = r"""
// Runs the fused kernel's GEMM + reduction (gemm_reduce_strips) outside XLA: reads rows, d, v,
// tile, k, then x [rows, d], w [d, v], b [v] (float32) from argv[1]; packs them the way the build's
// kMR / kNR say; writes m, s, top values, top ids per row to argv[2].
#include KERNEL
#include <cstdio>
int main(int argc, char** argv) {
  FILE* f = std::fopen(argv[1], "rb");
  int64_t h[5];
  if (!f || std::fread(h, 8, 5, f) != 5) return 2;
  int64_t rows = h[0], d = h[1], v = h[2], tile = h[3], k = h[4];
  std::vector<float> x(rows * d), w(d * v), b(v);
  if (std::fread(x.data(), 4, x.size(), f) != x.size() || std::fread(w.data(), 4, w.size(), f) != w.size() ||
      std::fread(b.data(), 4, b.size(), f) != b.size()) return 3;
  std::fclose(f);
  int64_t strips = (rows + kMR - 1) / kMR, n_tiles = (v + tile - 1) / tile, panels = (tile + kNR - 1) / kNR;
  std::vector<float> a(strips * d * kMR, 0.f), wp(n_tiles * panels * d * kNR, 0.f), bp(n_tiles * tile, -INFINITY);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t p = 0; p < d; ++p) a[((r / kMR) * d + p) * kMR + r % kMR] = x[r * d + p];
  for (int64_t j = 0; j < v; ++j) {
    int64_t t = j / tile, c = j % tile;
    bp[j] = b[j];
    for (int64_t p = 0; p < d; ++p) wp[((t * panels + c / kNR) * d + p) * kNR + c % kNR] = w[p * v + j];
  }
  int64_t n = strips * kMR;
  std::vector<float> m(n, -INFINITY), s(n, 0.f), tv(n * k, -INFINITY);
  std::vector<int32_t> ti(n * k, 0);
  parallel_for(strips, 1, 0, [&](int64_t lo, int64_t hi) {
    for (int64_t t = 0; t < n_tiles; ++t)
      gemm_reduce_strips(a.data(), wp.data() + t * panels * d * kNR, bp.data() + t * tile, d, tile,
                         static_cast<int32_t>(t * tile), k, lo, hi, m.data(), s.data(), tv.data(), ti.data());
  });
  FILE* o = std::fopen(argv[2], "wb");
  std::fwrite(m.data(), 4, rows, o);
  std::fwrite(s.data(), 4, rows, o);
  std::fwrite(tv.data(), 4, rows * k, o);
  std::fwrite(ti.data(), 4, rows * k, o);
  std::fclose(o);
  std::printf("%d %d\n", kMR, kNR);
  return 0;
}
"""


def _cpu_has(flag: str) -> bool:
    return flag in native._cpu_flags().split()  # the flags line the kernel's cache key hashes too


@pytest.mark.parametrize("march, layout", [("native", None), ("x86-64-v3", (6, 16)), ("x86-64", (6, 16))])
def test_fused_gemm_builds_for_other_cpus_agree_with_float64(tmp_path, march, layout):
    """The fused GEMM's code paths for other machines (AVX2 + FMA: x86-64-v3; the SSE2 baseline),
    built and run here: ids, top logits and logsumexp against float64, with exact ties (equal
    columns of W) going to the lower id; rows, tile and vocabulary not multiples of the blocking."""
    cxx = native._compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    if march != "native" and (platform.machine() not in ("x86_64", "AMD64") or
                              (march == "x86-64-v3" and not (_cpu_has("avx2") and _cpu_has("fma")))):
        pytest.skip(f"-march={march} cannot run on this CPU")
    rows, d, v, tile, k = 29, 37, 301, 70, 6
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, d)).astype(np.float32)
    w = rng.normal(size=(d, v)).astype(np.float32)
    w[:, 250] = w[:, 3]           # an exact tie across tiles: id 3 ranks first
    w[:, 139] = w[:, 138]         # and one inside a tile
    b = rng.normal(size=v).astype(np.float32)
    b[250], b[139] = b[3], b[138]
    x[5] = 0.0                    # a row of logits = bias
    (tmp_path / "in.bin").write_bytes(np.array([rows, d, v, tile, k], np.int64).tobytes() + x.tobytes() +
                                      w.tobytes() + b.tobytes())
    src = tmp_path / "driver.cc"
    src.write_text(_DRIVER)
    flags = [f for f in native.FLAGS if f not in ("-shared", "-fPIC")]
    flags = [f"-march={march}" if f == "-march=native" else f for f in flags]
    build = subprocess.run([cxx, *flags, f'-DKERNEL="{native.SOURCE}"', f"-I{jax.ffi.include_dir()}", str(src),
                            "-o", str(tmp_path / "driver"), "-lpthread"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(tmp_path / "driver"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    if layout is not None:
        assert tuple(map(int, run.stdout.split())) == layout
    out = np.fromfile(tmp_path / "out.bin", np.float32)
    m, s, tv = out[:rows], out[rows:2 * rows], out[2 * rows:2 * rows + rows * k].reshape(rows, k)
    ti = out[2 * rows + rows * k:].view(np.int32).reshape(rows, k)
    logits = x.astype(np.float64) @ w.astype(np.float64) + b
    want = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    assert (ti == want).all()
    np.testing.assert_allclose(tv, np.take_along_axis(logits, want, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m + np.log(s), _logsumexp64(logits), rtol=2e-6)
    top3 = np.flatnonzero((ti == 3).any(1))
    assert all(list(ti[r]).index(3) < list(ti[r]).index(250) for r in top3 if 250 in ti[r])
    assert ti[5].tolist() == want[5].tolist()


def test_results_do_not_depend_on_the_thread_count(kernel):
    """Both kernels split rows over threads (``threads``: 1, 3, all cores): the outputs are bitwise equal."""
    rng = np.random.default_rng(11)
    rows, d, tile, k = 150, 33, 200, 7
    x = rng.normal(size=(rows, d)).astype(np.float32)
    w = rng.normal(size=(2, d, tile)).astype(np.float32)
    bias = rng.normal(size=(2, tile)).astype(np.float32)
    mr, nr = native.gemm_layout()
    n = -(-rows // mr) * mr

    def state(r):
        return (jnp.full(r, -jnp.inf), jnp.zeros(r), jnp.full((r, k), -jnp.inf), jnp.zeros((r, k), jnp.int32))

    fused = {t: [np.asarray(o) for o in jax.jit(lambda a, w, b, t=t: native.gemm_reduce(
        a, w, b, 5, *state(n), threads=t))(native.pack_rows(jnp.asarray(x), mr), native.pack_tile(jnp.asarray(w), nr),
                                           jnp.asarray(bias))] for t in (1, 3, 0)}
    logits = jnp.asarray(x) @ jnp.asarray(w[0])
    reduced = {t: [np.asarray(o) for o in jax.jit(lambda l, b, t=t: native.tile_reduce(
        l, b, 5, *state(rows), threads=t))(logits, jnp.asarray(bias[0]))] for t in (1, 3, 0)}
    runs = [fused, reduced]
    if native.amx():
        runs.append({t: [np.asarray(o) for o in jax.jit(lambda a, w, b, t=t: native.gemm_reduce_bf16(
            a, w, b, 5, *state(a.shape[0]), threads=t))(native.pack_rows_bf16(jnp.asarray(x)),
                                                        native.pack_tile_bf16(jnp.asarray(w)), jnp.asarray(bias))]
                     for t in (1, 3, 0)})
    for outs in runs:
        for t in (3, 0):
            for a, b in zip(outs[1], outs[t]):
                np.testing.assert_array_equal(a, b)
        assert np.isfinite(outs[1][0][:rows]).all() and (outs[1][3][:rows] >= 5).all()
