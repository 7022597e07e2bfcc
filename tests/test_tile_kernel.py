"""The sweep's CPU tile kernel (jetjax/ngrams/kernels/tile_reduce.cc): the same ids and top logits as
the pure-JAX step and as one lax.top_k over whole rows, a logsumexp as close to float64 as XLA's,
NaN rows passed on as NaN, the choice recorded in a sweep's manifest and a resume across a change
of it refused, the environment switch checked, and a failed build falling back after one warning."""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import jet_bigrams, native
from jetjax.ngrams.sweep import _step, _tile_unembedding
from jetjax.parallel import path_mesh


@pytest.fixture(scope="module")
def kernel():
    if not native.available():
        pytest.skip(f"the CPU sweep kernel cannot be built here: {native.unavailable_reason()}")
    return True


def _logsumexp64(logits):
    z = np.asarray(logits, np.float64)
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tile, kk", [(1024, 10), (1000, 7), (4096, 1), (48, 40)])
def test_kernel_matches_one_top_k_over_the_row(kernel, tile, kk, compute_dtype):
    """Random rows (some far apart in scale), a vocabulary that is not a multiple of the tile:
    ids equal one lax.top_k over the whole row of the same logits, the pure-JAX step's ids too,
    and both logsumexps within float32 rounding of a float64 one."""
    v, d = 5003, 24
    rng = np.random.default_rng(1)
    w = rng.normal(size=(d, v)).astype(np.float32)
    b = rng.normal(size=v).astype(np.float32)
    x = rng.normal(size=(70, d)).astype(np.float32) * np.geomspace(0.01, 30, 70)[:, None].astype(np.float32)
    mesh = path_mesh(jax.devices()[:1], axis_name="rows")
    tiles = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), tile, compute_dtype)
    ctx = jnp.arange(len(x))[:, None]
    got = _step(lambda p, c: p[c[:, 0]], kk, mesh, compute_dtype, kernel=True)(jnp.asarray(x), *tiles, ctx)
    pure = _step(lambda p, c: p[c[:, 0]], kk, mesh, compute_dtype, kernel=False)(jnp.asarray(x), *tiles, ctx)
    if compute_dtype == "bfloat16":
        xr = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
        wr = np.asarray(jnp.asarray(w).astype(jnp.bfloat16).astype(jnp.float32))
        logits = np.asarray(jnp.dot(jnp.asarray(xr), jnp.asarray(wr), precision="highest")) + b
    else:
        logits = np.asarray(jnp.dot(jnp.asarray(x), jnp.asarray(w), precision="highest")) + b
    want_i = np.argsort(-logits, axis=1, kind="stable")[:, :kk]
    ids = np.asarray(got[1])
    assert (ids == np.asarray(pure[1])).all()
    # the GEMM's own rounding may swap two logits closer than it; everywhere else the order is exact
    gap = np.abs(np.take_along_axis(logits, ids, 1) - np.take_along_axis(logits, want_i, 1)).max()
    assert (ids == want_i).mean() > 0.99 and gap < 1e-4 * np.abs(logits).max()
    lse64 = _logsumexp64(logits)
    scale = np.abs(lse64) + 1
    assert np.max(np.abs(np.asarray(got[2]) - lse64) / scale) < 2e-6
    assert np.max(np.abs(np.asarray(got[2]) - np.asarray(pure[2])) / scale) < 2e-6
    np.testing.assert_allclose(got[0], pure[0], rtol=5e-6, atol=0)


def test_kernel_passes_nan_rows_on_as_nan(kernel):
    """A row whose path output holds NaN (or inf) has NaN logits: its logsumexp and probabilities
    come out NaN, never finite, while the other rows are untouched; a NaN column of the unembedding
    makes every row NaN. The same as the pure-JAX step."""
    v, d = 300, 4
    w = np.tile(np.linspace(-1, 1, v, dtype=np.float32), (d, 1)) * np.arange(1, d + 1, dtype=np.float32)[:, None]
    b = np.zeros(v, np.float32)
    x = np.eye(d, dtype=np.float32)
    x[1, 2], x[2, 3] = np.nan, np.inf
    mesh = path_mesh(jax.devices()[:1], axis_name="rows")
    ctx = jnp.arange(d)[:, None]

    def run(w, kernel):
        tiles = _tile_unembedding(jnp.asarray(w), jnp.asarray(b), 128)
        return [np.asarray(a) for a in _step(lambda p, c: p[c[:, 0]], 3, mesh, kernel=kernel)(jnp.asarray(x), *tiles, ctx)]

    got, pure = run(w, True), run(w, False)
    for out in (got, pure):
        assert np.isnan(out[2][1:3]).all() and np.isnan(out[0][1:3]).all()
    for row in (0, 3):
        assert got[1][row].tolist() == pure[1][row].tolist() == [v - 1, v - 2, v - 3]
        np.testing.assert_allclose(got[2][row], pure[2][row], rtol=2e-6)
    w[0, 17] = np.nan
    got = run(w, True)
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
    table = jet_bigrams(model, out_dir=out, **opts)
    assert table.meta["tile_reduce"] == "kernel"
    assert json.loads((out / "manifest.json").read_text())["settings"]["tile_reduce"] == "kernel"
    np.testing.assert_array_equal(table.ids, pure.ids)
    np.testing.assert_allclose(table.logsumexp, pure.logsumexp, rtol=2e-6)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "xla")
    with pytest.raises(ValueError, match=r"settings\.tile_reduce: 'kernel' there, None now"):
        jet_bigrams(model, out_dir=out, **opts)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_environment_switch_is_checked(monkeypatch):
    monkeypatch.setenv("JETJAX_TILE_REDUCE", "fast")
    with pytest.raises(ValueError, match=r"JETJAX_TILE_REDUCE must be one of auto, kernel, xla, got 'fast'"):
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
