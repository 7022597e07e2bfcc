"""``compute_dtype="bfloat16"`` for vocabulary sweeps: the rounding it promises, and nothing else.

Reference: the sweep's own definition written out in float64 NumPy — the path's final-norm output
and the unembedding rounded to bfloat16, then multiplied, softmaxed and ranked exactly — and the
same without rounding for float32. The bfloat16 table must match its reference to float32
accumulation error and be measurably further from the unrounded one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax.cli import app as cli
from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import SweepSettings, jet_bigrams


def _model(vocab=97, d=32):
    cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=d, n_heads=2, d_head=d // 2, d_mlp=2 * d, vocab_size=vocab,
                      n_positions=4, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, seed=3, scale=1.0)


def _bf16(x):
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def _reference(model, rounded: bool):
    """Probabilities ``[V, V]`` of ``emb>dec`` for every one-token context, in float64."""
    v = model.config.vocab_size
    x = model.token_embed(jnp.arange(v)[:, None])[:, -1]
    r = np.asarray(model.final_norm(x), np.float64)
    w, b = (np.asarray(a, np.float64) for a in model.unembedding_matrix())
    if rounded:
        r, w = _bf16(r), _bf16(w)
    logits = r @ w + b
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("block_rows, vocab_tile", [(16, 32), (128, 4096)])
def test_bfloat16_sweep_is_the_rounded_product(block_rows, vocab_tile):
    model = _model()
    k = 5
    opts = dict(top_k=k, global_k=4, block_rows=block_rows, vocab_tile=vocab_tile, progress=False)
    t16 = jet_bigrams(model, "emb>dec", compute_dtype="bfloat16", **opts)
    t32 = jet_bigrams(model, "emb>dec", **opts)
    ref16, ref32 = _reference(model, True), _reference(model, False)
    rows = np.arange(ref16.shape[0])[:, None]
    np.testing.assert_allclose(t16.probs, -np.sort(-ref16, axis=1)[:, :k], atol=1e-5, rtol=0)
    np.testing.assert_allclose(ref16[rows, t16.ids], t16.probs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(t32.probs, -np.sort(-ref32, axis=1)[:, :k], atol=1e-5, rtol=0)
    # the rounding is really there: the bfloat16 table is far closer to its own reference than to float32's
    off16 = np.abs(t16.probs - -np.sort(-ref16, axis=1)[:, :k]).max()
    off32 = np.abs(t16.probs - -np.sort(-ref32, axis=1)[:, :k]).max()
    assert off32 > 10 * off16 and off32 > 1e-3
    assert t16.meta["compute_dtype"] == "bfloat16" and "compute_dtype" not in t32.meta
    assert np.isfinite(t16.logsumexp).all() and t16.logsumexp.dtype == np.float32


def test_settings_normalise_and_refuse_compute_dtypes():
    assert SweepSettings(paths="emb>dec", compute_dtype=jnp.bfloat16) == SweepSettings(paths="emb>dec",
                                                                                       compute_dtype="bfloat16")
    assert SweepSettings(paths="emb>dec", compute_dtype=np.float32).compute_dtype == "float32"
    for bad in ("float16", "bf16", True, 16, None):
        with pytest.raises(ValueError, match=r"compute_dtype must be one of float32, bfloat16, got"):
            SweepSettings(paths="emb>dec", compute_dtype=bad)
    with pytest.raises(ValueError, match="compute_dtype"):
        jet_bigrams(_model(), "emb>dec", compute_dtype="int8", progress=False)


def test_a_sweep_directory_keeps_its_compute_dtype(tmp_path):
    model = _model()
    out = tmp_path / "t"
    jet_bigrams(model, "emb>dec", top_k=3, chunk_rows=50, out_dir=out, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ValueError, match=r"settings.compute_dtype: None there, 'bfloat16' now"):
        jet_bigrams(model, "emb>dec", top_k=3, chunk_rows=50, out_dir=out, progress=False, compute_dtype="bfloat16")
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # and a bfloat16 directory resumes as bfloat16
    out16 = tmp_path / "t16"
    a = jet_bigrams(model, "emb>dec", top_k=3, chunk_rows=50, out_dir=out16, progress=False, compute_dtype="bfloat16")
    b = jet_bigrams(model, "emb>dec", top_k=3, chunk_rows=50, out_dir=out16, progress=False, compute_dtype="bfloat16")
    np.testing.assert_array_equal(a.probs, b.probs)


def test_cli_compute_dtype(capsys, tmp_path):
    from jetjax.training.toy import shipped_model_path

    out = tmp_path / "b.json"
    assert cli.main(["bigrams", "--model", str(shipped_model_path()), "--top-k", "3", "--top", "5", "--quiet",
                     "--compute-dtype", "bfloat16", "--json", str(out)]) == 0
    assert out.stat().st_size > 0
    with pytest.raises(SystemExit) as err:
        cli.main(["bigrams", "--compute-dtype", "float16"])
    assert err.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err


def test_four_devices_give_the_one_device_bfloat16_table():
    model = _model()
    one = jet_bigrams(model, "emb>dec", top_k=4, block_rows=32, progress=False, compute_dtype="bfloat16",
                      devices=jax.devices()[:1])
    four = jet_bigrams(model, "emb>dec", top_k=4, block_rows=32, progress=False, compute_dtype="bfloat16",
                       devices=jax.devices()[:4])
    np.testing.assert_array_equal(one.ids, four.ids)
    np.testing.assert_allclose(one.probs, four.probs, rtol=1e-6, atol=1e-7)


# ---- lenses and path reductions -------------------------------------------------------------

def _deep_model(vocab=97, d=32):
    cfg = ModelConfig(arch="gpt2", n_layers=3, d_model=d, n_heads=2, d_head=d // 2, d_mlp=2 * d, vocab_size=vocab,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, seed=5, scale=0.5)


def _w(model):
    """The tied unembedding ``W [d, V]`` straight from the parameters (GPT-2: ``wte`` transposed, no bias)."""
    return np.asarray(model.params["wte"], np.float64).T


def _rounding_bound(logits32, w):
    """Bound on ``|bf16 logits − float32 logits|`` for ``logits = n W``: each operand off by at most half an ulp
    of bfloat16 (2⁻⁹ relative), so ``|Δ| ≤ (2·2⁻⁹ + 2⁻¹⁸) Σ_i |n_i W_ij|``; ``n`` is recovered from the float32
    logits by least squares (``W`` has full row rank), plus float32 slack."""
    n = np.asarray(logits32, np.float64) @ np.linalg.pinv(w)
    return (2 * 2.0**-9 + 2.0**-18) * (np.abs(n) @ np.abs(w)) * 1.01 + 1e-5


IDS = [3, 14, 15, 92, 65, 35]


def test_bfloat16_logit_lens_is_the_rounded_product():
    from jetjax.lenses import lens as lenses

    model = _deep_model()
    lens = lenses.logit_lens(model, IDS, compute_dtype="bfloat16")
    # reference: each stream's final norm, rounded with W to bfloat16, multiplied exactly
    normed = np.asarray(model.final_norm(model.residual_stream(np.asarray(IDS))), np.float64)
    w = _w(model)
    ref16, ref32 = _bf16(normed) @ _bf16(w), normed @ w
    got = np.asarray(lens.logits, np.float64)
    assert lens.logits.dtype == jnp.float32 and lens.compute_dtype == "bfloat16"
    np.testing.assert_allclose(got, ref16, atol=2e-5 * np.abs(ref16).max(), rtol=0)
    assert np.abs(got - ref32).max() > 20 * np.abs(got - ref16).max()
    # the model's logits, which the metrics compare against, stay float32
    np.testing.assert_allclose(lens.model_logits, model.logits(np.asarray(IDS)), atol=1e-6, rtol=0)
    assert 0.999 < float(lens.metrics["cosine"][-1].min()) < 1.0
    assert '"compute_dtype": "bfloat16"' in lens.to_json()


@pytest.mark.parametrize("kind", ["iterative", "joint"])
def test_bfloat16_jet_lenses_stay_within_the_rounding_bound(kind):
    from jetjax.lenses import lens as lenses

    model = _deep_model()
    fn = lenses.iterative_jet_lens if kind == "iterative" else lenses.joint_jet_lens
    a = fn(model, IDS, order=1, granularity="branch")
    b = fn(model, IDS, order=1, granularity="branch", compute_dtype="bfloat16")
    diff = np.abs(np.asarray(b.logits, np.float64) - np.asarray(a.logits, np.float64))
    assert (diff <= _rounding_bound(a.logits, _w(model))).all()
    assert diff.max() > 1e-4                     # the rounding is really there
    assert a.compute_dtype == "float32" and b.rows == a.rows
    np.testing.assert_array_equal(np.asarray(a.model_logits), np.asarray(b.model_logits))
    with pytest.raises(ValueError, match="compute_dtype must be one of float32, bfloat16, got 'float16'"):
        fn(model, IDS, compute_dtype="float16")


def test_bfloat16_path_reduction_stays_within_the_rounding_bound():
    import jetjax as jj

    model = _deep_model()
    score = lambda logits, aux: jnp.max(logits)      # a callable score: every path is decoded to V logits
    kw = dict(score=score, top_k=3, chunk_size=4, granularity="branch", max_length=2)
    a = jj.reduce_paths(model, IDS, **kw)
    b = jj.reduce_paths(model, IDS, compute_dtype="bfloat16", **kw)
    np.testing.assert_array_equal(a.top_indices, b.top_indices)
    diff = np.abs(np.asarray(b.top_logits, np.float64) - np.asarray(a.top_logits, np.float64))
    assert (diff <= _rounding_bound(a.top_logits, _w(model))).all() and diff.max() > 1e-4
    assert np.abs(a.scores - b.scores).max() < 0.05 * np.abs(a.scores).max()
    np.testing.assert_array_equal(a.logits, b.logits)
    # norm scores never decode to V logits: only the top paths' logits are rounded
    c, d = jj.reduce_paths(model, IDS, top_k=2), jj.reduce_paths(model, IDS, top_k=2, compute_dtype="bfloat16")
    np.testing.assert_array_equal(c.scores, d.scores)
    assert 0 < np.abs(c.top_logits - d.top_logits).max() < 0.05 * np.abs(c.top_logits).max()
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        jj.reduce_paths(model, IDS, compute_dtype="int8")


def test_cli_lens_compute_dtype(tmp_path):
    from jetjax.training.toy import shipped_model_path

    out = tmp_path / "lens.json"
    assert cli.main(["lens", "--model", str(shipped_model_path()), "--text", "To be, or not", "--orders", "1",
                     "--compute-dtype", "bfloat16", "--json", str(out)]) == 0
    import json

    assert json.loads(out.read_text())["lenses"]["order 1"]["compute_dtype"] == "bfloat16"


def test_bfloat16_refuses_a_unembedding_that_is_not_affine():
    from jetjax.lenses import lens as lenses

    model = _deep_model()
    own = model.unembed
    model.unembed = lambda x, params=None: 3.0 * jnp.tanh(own(x, params=params) / 3.0)   # logit soft-capping
    with pytest.raises(ValueError, match=r"compute_dtype='bfloat16' needs an affine unembedding"):
        lenses.iterative_jet_lens(model, IDS, compute_dtype="bfloat16")
    lenses.iterative_jet_lens(model, IDS)          # float32 uses the model's own unembedding as it is
