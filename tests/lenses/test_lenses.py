"""Jet lenses: logit / iterative / joint lens against independent references, metrics, errors, pictures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jetjax as jj
from jetjax.lenses import lens as lenses
from tests.jet.test_jet import nested_jvp_terms

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

T = 7  # odd, and not a size of any model axis


@pytest.fixture(scope="module")
def hf_model(gpt2_checkpoints):
    """(jetjax model, HF torch model) of the 3-layer, d=28, V=37 random GPT-2 checkpoint."""
    path, torch_model = gpt2_checkpoints["prime"]
    return jj.from_pretrained(path), torch_model


def _ids(rng, model, shape):
    return rng.integers(0, model.config.vocab_size, size=shape).astype(np.int32)


def _hf_logits(torch_model, ids):
    with torch.no_grad():
        return torch_model(torch.as_tensor(np.asarray(ids), dtype=torch.long)).logits.numpy()


def _row_streams(model, ids, granularity):
    """Row centres written out from residual_stream: h_l, or emb, mid_0, h_1, mid_1, ..."""
    h, mids = (np.asarray(a) for a in model.residual_stream(ids, mid=True))
    if granularity == "block":
        return list(h)
    rows = [h[0]]
    for layer in range(model.config.n_layers):
        rows += [mids[layer], h[layer + 1]]
    return rows


def _decoder_jet(model, centres, variate, order):
    """J^k Dec(c)(variate) for stacked centres, by nested jax.jvp of unembed ∘ final_norm."""
    @jax.jit
    def run(p, cs, y):
        def one(c):
            terms = nested_jvp_terms(lambda x: model.unembed(model.final_norm(x, params=p), params=p), c, y, order)
            return sum(terms[1:], terms[0])
        return jax.vmap(one)(cs)

    return np.asarray(run(model.params, jnp.asarray(np.stack(centres)), jnp.asarray(variate)))


# ---- logit lens and iterative lens ---------------------------------------------------------

def test_logit_lens_is_decode_of_each_stream_and_order0_iterative(hf_model, rng):
    model, torch_model = hf_model
    ids = _ids(rng, model, (2, T))
    lens = lenses.logit_lens(model, ids)
    assert lens.rows == ("h0", "h1", "h2", "h3") and lens.logits.shape == (4, 2, T, 37)
    for l, h in enumerate(_row_streams(model, ids, "block")):
        np.testing.assert_allclose(np.asarray(lens.logits[l]), np.asarray(model.decode(h)), rtol=0, atol=1e-5)
    # the order-0 iterative lens is the logit lens, bit for bit
    it0 = lenses.iterative_jet_lens(model, ids, order=0)
    np.testing.assert_array_equal(np.asarray(it0.logits), np.asarray(lens.logits))
    # the last row is the model's own output, checked against HF torch
    np.testing.assert_allclose(np.asarray(lens.logits[-1]), _hf_logits(torch_model, ids), atol=1e-4)


@pytest.mark.parametrize("granularity", ["block", "branch"])
@pytest.mark.parametrize("order", [1, 2])
def test_iterative_lens_matches_nested_jvp(hf_model, rng, order, granularity):
    model, torch_model = hf_model
    ids = _ids(rng, model, (2, T))
    lens = lenses.iterative_jet_lens(model, ids, order=order, granularity=granularity)
    rows = _row_streams(model, ids, granularity)
    assert lens.logits.shape == (len(rows), 2, T, 37)
    expected = _decoder_jet(model, rows, rows[-1], order)
    for r in range(len(rows)):
        np.testing.assert_allclose(np.asarray(lens.logits[r]), expected[r], atol=1e-4, err_msg=lens.rows[r])
    # at the last stream the jet is the model's output, checked against HF torch
    np.testing.assert_allclose(np.asarray(lens.logits[-1]), _hf_logits(torch_model, ids), atol=1e-4)
    # away from the last stream the jet really differs from the logit lens
    assert not np.allclose(np.asarray(lens.logits[0]), np.asarray(model.decode(rows[0])), atol=1e-3)
    # model_logits is the model's output whether or not the last stream is among the rows (with it,
    # the lens reuses that row; without it, it decodes h_L separately)
    hf = _hf_logits(torch_model, ids)
    np.testing.assert_allclose(np.asarray(lens.model_logits), hf, atol=1e-4)
    without_last = lenses.iterative_jet_lens(model, ids, rows=[1, 0], order=order, granularity=granularity)
    np.testing.assert_allclose(np.asarray(without_last.model_logits), hf, atol=1e-4)
    last_first = lenses.iterative_jet_lens(model, ids, rows=[-1, 1], order=order, granularity=granularity)
    np.testing.assert_allclose(np.asarray(last_first.model_logits), hf, atol=1e-4)
    np.testing.assert_allclose(np.asarray(last_first.logits[1]), expected[1], atol=1e-4)


def test_branch_granularity_rows(hf_model, rng):
    model, _ = hf_model
    ids = _ids(rng, model, (T,))
    lens = lenses.logit_lens(model, ids, granularity="branch")
    assert lens.rows == ("emb", "attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2")
    h, mids = model.residual_stream(ids, mid=True)
    for layer in range(3):
        np.testing.assert_allclose(np.asarray(lens.logits[2 * layer + 1]), np.asarray(model.decode(mids[layer])),
                                   atol=1e-5)
        np.testing.assert_allclose(np.asarray(lens.logits[2 * layer + 2]), np.asarray(model.decode(h[layer + 1])),
                                   atol=1e-5)


def test_repeated_calls_do_not_retrace(hf_model, rng):
    model, _ = hf_model
    key = ("iterative", 2, "branch")
    before = lenses.TRACE_COUNTS[key]
    first = lenses.iterative_jet_lens(model, _ids(rng, model, (1, 5)), rows=[0, 2], order=2, granularity="branch")
    assert lenses.TRACE_COUNTS[key] == before + 1
    # same shapes, another prompt and another choice of two rows: the compiled function is reused
    second = lenses.iterative_jet_lens(model, _ids(rng, model, (1, 5)), rows=[1, -3], order=2,
                                       granularity="branch")
    assert lenses.TRACE_COUNTS[key] == before + 1
    assert second.rows == ("attn0", "mlp1") and second.row_indices == (1, 4)
    assert not np.allclose(first.logits, second.logits)
    joint_key = ("joint", 1, "block")
    ids = _ids(rng, model, (1, 5))
    lenses.joint_jet_lens(model, ids, order=1, fit_steps=3)
    n = lenses.TRACE_COUNTS[joint_key]
    lenses.joint_jet_lens(model, ids[:, ::-1], order=1, fit_steps=3, learning_rate=0.1)
    assert lenses.TRACE_COUNTS[joint_key] == n


# ---- joint lens ----------------------------------------------------------------------------

def test_joint_lens_terms_combined_and_remainder(hf_model, rng):
    model, torch_model = hf_model
    ids = _ids(rng, model, (2, T))
    h = _row_streams(model, ids, "block")
    w = rng.uniform(-0.5, 1.5, size=(4, 2, T)).astype(np.float32)  # any weights, not only convex ones
    lens = lenses.joint_jet_lens(model, ids, order=1, weights=w)
    assert lens.rows == ("emb", "block0", "block1", "block2")
    terms = _decoder_jet(model, [h[0]] + [h[l + 1] - h[l] for l in range(3)], h[-1], 1)
    for i, expected in enumerate(terms):
        np.testing.assert_allclose(np.asarray(lens.logits[i]), expected, atol=1e-4, err_msg=lens.rows[i])
    combined = sum(w[i][..., None] * terms[i] for i in range(4))
    np.testing.assert_allclose(np.asarray(lens.combined), combined, atol=1e-4)
    hf = _hf_logits(torch_model, ids)
    np.testing.assert_allclose(np.asarray(lens.combined + lens.remainder), hf, atol=1e-4)
    np.testing.assert_allclose(np.asarray(lens.remainder), hf - combined, atol=2e-4)


def test_joint_lens_uniform_default_and_selected_layers(hf_model, rng):
    model, _ = hf_model
    ids = _ids(rng, model, (T,))
    h = _row_streams(model, ids, "block")
    lens = lenses.joint_jet_lens(model, ids, rows=[1, 3], order=0)
    assert lens.rows == ("emb..block0", "block1..block2")
    np.testing.assert_allclose(np.asarray(lens.weights), 0.5)
    # order 0: the centres h_1 and h_3 − h_1 decoded as they are
    np.testing.assert_allclose(np.asarray(lens.logits[1]), np.asarray(model.decode(h[3] - h[1])), atol=1e-5)
    branch = lenses.joint_jet_lens(model, ids, order=1, granularity="branch")
    assert branch.rows == ("emb", "attn0", "mlp0", "attn1", "mlp1", "attn2", "mlp2")


def test_fitting_lowers_remainder_and_keeps_weights_on_simplex(hf_model, rng):
    model, _ = hf_model
    ids = _ids(rng, model, (2, T))
    logits = np.asarray(model.logits(ids))
    for order in (0, 1):
        uniform = lenses.joint_jet_lens(model, ids, order=order)
        fitted = lenses.joint_jet_lens(model, ids, order=order, fit_steps=50)
        w = np.asarray(fitted.weights)
        assert w.shape == (4, 2, T)
        assert (w >= 0).all()
        np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-5)
        assert not np.allclose(w, 0.25, atol=1e-3)
        # the remainder norm, recomputed here from the per-centre logits and the model's logits
        terms = np.asarray(fitted.logits)
        norm = lambda weights: np.linalg.norm(logits - np.einsum("n...,n...v->...v", weights, terms), axis=-1)
        before, after = norm(np.asarray(uniform.weights)), norm(w)
        assert after.mean() < 0.9 * before.mean(), (order, before.mean(), after.mean())
        np.testing.assert_allclose(np.asarray(fitted.combined_metrics["remainder_norm"]), after, rtol=1e-3, atol=1e-4)
        # the loss is the mean squared remainder norm
        assert fitted.fit_losses.shape == (51,)
        np.testing.assert_allclose(fitted.fit_losses[0], (before ** 2).mean(), rtol=1e-3)
        np.testing.assert_allclose(fitted.fit_losses[-1], (after ** 2).mean(), rtol=1e-3)


# ---- metrics, tokens, JSON -----------------------------------------------------------------

def _reference_metrics(lens_logits, target):
    lens_logits, target = lens_logits.astype(np.float64), target.astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(target), log_softmax(lens_logits)
    top = target.argmax(-1)
    top_val = np.take_along_axis(lens_logits, np.broadcast_to(top, lens_logits.shape[:-1])[..., None], -1)
    return {
        "cosine": (lens_logits * target).sum(-1) / np.linalg.norm(lens_logits, axis=-1) / np.linalg.norm(target, axis=-1),
        "kl": (np.exp(lp) * (lp - lq)).sum(-1),
        "top1": (lens_logits.argmax(-1) == top).astype(float),
        "rank": (lens_logits > top_val).sum(-1),
        "remainder_norm": np.linalg.norm(target - lens_logits, axis=-1),
        "entropy": -(np.exp(lq) * lq).sum(-1),
    }


def test_metrics_match_direct_formulas(hf_model, rng):
    model, _ = hf_model
    ids = _ids(rng, model, (2, T))
    lens = lenses.iterative_jet_lens(model, ids, order=1)
    expected = _reference_metrics(np.asarray(lens.logits), np.asarray(lens.model_logits))
    assert set(lens.metrics) == set(lenses.METRICS)
    for name, value in lens.metrics.items():
        assert value.shape == (4, 2, T), name
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # the first row of a random model disagrees with it somewhere, the last agrees everywhere
    assert lens.metrics["rank"][0].max() > 0 and (lens.metrics["rank"][-1] == 0).all()
    assert (lens.metrics["top1"][-1] == 1).all() and np.abs(lens.metrics["kl"][-1]).max() < 1e-5


def test_top_tokens_and_json(hf_model, rng, tmp_path):
    model, _ = hf_model
    ids = _ids(rng, model, (1, 5))
    lens = lenses.joint_jet_lens(model, ids, order=1, fit_steps=3)
    top_ids, probs = lens.top(3)
    assert top_ids.shape == probs.shape == (4, 1, 5, 3)
    np.testing.assert_array_equal(top_ids[..., 0], np.asarray(lens.logits).argmax(-1))
    assert (np.diff(probs, axis=-1) <= 0).all()
    strings = lens.top_tokens(3)
    assert strings[1][0][4][0] == f"#{top_ids[1, 0, 4, 0]}"  # this checkpoint has no tokenizer
    data = json.loads(lens.to_json(tmp_path / "lens.json", top_k=2))
    assert json.loads((tmp_path / "lens.json").read_text()) == data
    assert data["rows"] == ["emb", "block0", "block1", "block2"] and data["input_ids"] == ids.tolist()
    assert np.asarray(data["metrics"]["kl"]).shape == (4, 1, 5)
    assert np.asarray(data["top_k"]["probs"]).shape == (4, 1, 5, 2)
    assert np.asarray(data["weights"]).shape == (4, 1, 5) and len(data["fit_losses"]) == 4
    np.testing.assert_allclose(data["combined_metrics"]["cosine"], lens.combined_metrics["cosine"])
    with pytest.raises(ValueError, match=r"n must be an int in 1\.\.37"):
        lens.top(0)
    with pytest.raises(ValueError, match="which must be"):
        lens.top(2, which="layers")


# ---- bad input -----------------------------------------------------------------------------

def test_bad_input_errors(hf_model):
    model, _ = hf_model
    ids = [1, 2, 3]
    with pytest.raises(IndexError, match=r"row 4 is out of range.*0\.\.3"):
        lenses.logit_lens(model, ids, rows=[0, 4])
    with pytest.raises(IndexError, match=r"row -8 is out of range.*0\.\.6"):
        lenses.iterative_jet_lens(model, ids, rows=-8, granularity="branch")
    with pytest.raises(IndexError, match=r"row 4 is out of range"):
        lenses.joint_jet_lens(model, ids, rows=[1, 4])
    with pytest.raises(ValueError, match="rows is empty"):
        lenses.iterative_jet_lens(model, ids, rows=[])
    with pytest.raises(TypeError, match="row indices must be ints"):
        lenses.iterative_jet_lens(model, ids, rows=[1.0])
    with pytest.raises(ValueError, match=r"T >= 1"):
        lenses.logit_lens(model, np.zeros((0,), np.int32))
    with pytest.raises(ValueError, match=r"T >= 1"):
        lenses.joint_jet_lens(model, np.zeros((2, 0), np.int32))
    with pytest.raises(ValueError, match="order must be >= 0"):
        lenses.iterative_jet_lens(model, ids, order=-1)
    with pytest.raises(ValueError, match="order must be >= 0"):
        lenses.joint_jet_lens(model, ids, order=-2)
    with pytest.raises(ValueError, match="granularity must be one of"):
        lenses.logit_lens(model, ids, granularity="head")
    with pytest.raises(ValueError, match="out of range for a vocabulary of 37"):
        lenses.logit_lens(model, [1, 37])
    with pytest.raises(ValueError, match="strictly increasing"):
        lenses.joint_jet_lens(model, ids, rows=[2, 1])
    with pytest.raises(ValueError, match="fit_steps must be a non-negative int"):
        lenses.joint_jet_lens(model, ids, fit_steps=-1)
    with pytest.raises(ValueError, match="learning_rate must be a positive"):
        lenses.joint_jet_lens(model, ids, fit_steps=2, learning_rate=0.0)
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\) or \(4, 3\)"):
        lenses.joint_jet_lens(model, ids, weights=np.ones(5))
    with pytest.raises(ValueError, match="either explicit weights or fit_steps"):
        lenses.joint_jet_lens(model, ids, weights=np.ones(4) / 4, fit_steps=2)


# ---- pictures ------------------------------------------------------------------------------

def _png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image[..., :3].std() > 0.05  # not a blank canvas
    return image.shape[:2]


def test_pictures_are_written(hf_model, rng, tmp_path):
    from jetjax import viz

    model, _ = hf_model
    ids = _ids(rng, model, (2, T))
    runs = [lenses.iterative_jet_lens(model, ids, order=k) for k in (0, 1)]
    joint = lenses.joint_jet_lens(model, ids, order=1, fit_steps=50)
    viz.lens_table(runs[1], tmp_path / "full.png", batch=1)
    viz.lens_table(runs[1], tmp_path / "narrow.png", positions=slice(0, 3))
    viz.lens_table(joint, tmp_path / "joint.png")
    full, narrow, (joint_h, _) = (_png(tmp_path / f"{n}.png") for n in ("full", "narrow", "joint"))
    assert narrow[1] < full[1] and narrow[0] == full[0]  # fewer columns, same rows
    assert joint_h > full[0]  # an extra "combined" row
    viz.metric_curves({"k=0": runs[0], "k=1": runs[1]}, tmp_path / "curves.png", metrics=lenses.METRICS)
    curves = _png(tmp_path / "curves.png")
    assert curves[0] > curves[1] / 4  # six metrics: two rows of panels
    viz.joint_weights(joint, tmp_path / "weights.png")
    _png(tmp_path / "weights.png")
    with pytest.raises(ValueError, match="this result is a iterative lens"):
        viz.joint_weights(runs[1], tmp_path / "x.png")
    with pytest.raises(IndexError, match=r"batch must be an int in 0\.\.1"):
        viz.lens_table(runs[0], tmp_path / "x.png", batch=2)
    with pytest.raises(ValueError, match="unknown metrics"):
        viz.metric_curves(runs, tmp_path / "x.png", metrics=["accuracy"])
    with pytest.raises(ValueError, match="same rows"):
        viz.metric_curves([runs[0], joint], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_rows_argument_and_its_deprecated_name_layers(hf_model):
    model, _ = hf_model
    ids = [1, 2, 3]
    new = lenses.iterative_jet_lens(model, ids, rows=[0, -1], order=1)
    with pytest.warns(DeprecationWarning, match=r"layers=.*rows="):
        old = lenses.iterative_jet_lens(model, ids, layers=[0, -1], order=1)
    assert new.row_indices == old.row_indices == (0, 3)
    np.testing.assert_array_equal(np.asarray(new.logits), np.asarray(old.logits))
    with pytest.warns(DeprecationWarning, match="row_indices"):
        assert old.layers == (0, 3)
    with pytest.warns(DeprecationWarning):
        assert lenses.logit_lens(model, ids, layers=[2]).rows == ("h2",)
    with pytest.warns(DeprecationWarning):
        assert lenses.joint_jet_lens(model, ids, layers=[0, 2]).row_indices == (0, 2)
    with pytest.raises(TypeError, match="not both"):
        lenses.logit_lens(model, ids, rows=[1], layers=[1])
    with pytest.raises(TypeError, match="got the string '0,1'"):
        lenses.logit_lens(model, ids, rows="0,1")
    assert json.loads(new.to_json())["row_indices"] == [0, 3]
