"""Chunked, sharded path evaluation and path attribution, checked against from-scratch paths and HF."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax._internal.parallel import path_mesh
from tests.paths.test_expand import _hf_logits, _path_by_hand, gpt2  # noqa: F401  (gpt2: the shared fixture)

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints


def _by_hand(model, ids, labels):
    return np.stack([np.asarray(_path_by_hand(model, ids, lab)) for lab in labels])


@pytest.mark.parametrize("granularity,filters", [("block", {}), ("branch", {"max_length": 2})])
def test_reduce_paths_matches_from_scratch_paths(gpt2, rng, granularity, filters):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=7)
    res = jj.reduce_paths(model, ids, granularity=granularity, top_k=5, chunk_size=3, **filters)
    assert len(res) == jj.count_paths(3, granularity, **filters)
    paths = _by_hand(model, ids, res.labels)                       # [P, T, V], independent recomputation
    np.testing.assert_allclose(res.norms, np.sqrt((paths.astype(np.float64) ** 2).sum((1, 2))), rtol=1e-5)
    np.testing.assert_allclose(res.scores, res.norms)              # default score: the norm
    np.testing.assert_allclose(res.remainder, _hf_logits(hf, ids) - paths.sum(0), atol=1e-4)
    expected_top = np.argsort(-res.norms, kind="stable")[:5]
    np.testing.assert_array_equal(res.top_indices, expected_top)
    np.testing.assert_allclose(res.top_logits, paths[expected_top], atol=1e-4)
    assert res.top(2) == [(res.labels[i], float(res.scores[i])) for i in expected_top[:2]]

    # one position only: the same paths sliced there
    at = jj.reduce_paths(model, ids, granularity=granularity, position=-2, top_k=2, chunk_size=4, **filters)
    assert at.position == 5 and at.labels == res.labels
    np.testing.assert_allclose(at.norms, np.sqrt((paths[:, 5].astype(np.float64) ** 2).sum(-1)), rtol=1e-5)
    np.testing.assert_allclose(at.remainder, res.remainder[5], atol=1e-4)


def test_reduce_paths_custom_score_and_higher_orders(gpt2, rng):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=5)
    for order, weights, max_length in [(1, "uniform", None), (2, "unit", 1)]:
        full = jj.expand_all(model, ids, order=order, weights=weights, max_length=max_length)
        res = jj.reduce_paths(model, ids, order=order, weights=weights, chunk_size=3, top_k=3, max_length=max_length,
                              score=lambda logits, aux: logits[..., aux].sum(), score_aux=jnp.int32(11))
        assert res.labels == full.labels
        np.testing.assert_allclose(res.scores, np.asarray(full.terms[..., 11].sum(-1)), atol=1e-4)
        np.testing.assert_allclose(res.remainder, np.asarray(full.remainder), atol=1e-4)
        np.testing.assert_allclose(res.remainder + np.asarray(full.terms).sum(0), _hf_logits(hf, ids), atol=1e-4)


@pytest.mark.parametrize("granularity,order", [("block", 1), ("branch", 0)])
def test_sharded_equals_unsharded(gpt2, rng, granularity, order):
    model, _ = gpt2
    assert len(jax.devices()) == 4, "conftest sets up 4 fake CPU devices"
    ids = rng.integers(0, 37, size=6)
    one = jj.reduce_paths(model, ids, granularity=granularity, order=order, top_k=4, chunk_size=6)
    single = jj.reduce_paths(model, ids, granularity=granularity, order=order, top_k=4, chunk_size=6,
                             mesh=path_mesh(jax.devices()[:1]))
    four = jj.reduce_paths(model, ids, granularity=granularity, order=order, top_k=4, chunk_size=6,
                           mesh=path_mesh())  # 6 rounds up to 8 on 4 devices; last chunk padded
    for other in (single, four):
        assert other.labels == one.labels
        np.testing.assert_allclose(other.scores, one.scores, rtol=1e-5)
        np.testing.assert_allclose(other.remainder, one.remainder, atol=1e-4)
        np.testing.assert_allclose(other.top_logits, one.top_logits, atol=1e-4)
    att1 = jj.path_attribution(model, ids, target=3, foil=5, granularity=granularity)
    att4 = jj.path_attribution(model, ids, target=3, foil=5, granularity=granularity, mesh=path_mesh(),
                               chunk_size=5)
    np.testing.assert_allclose(att4.scores, att1.scores, atol=1e-5)


def test_path_attribution(gpt2, rng):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=8)
    hf_logits = _hf_logits(hf, ids)
    att = jj.path_attribution(model, ids, target=4, foil=9, position=6, granularity="branch", chunk_size=16)
    paths = _by_hand(model, ids, att.labels)[:, 6]                 # [P, V] at position 6
    np.testing.assert_allclose(att.scores, paths[:, 4] - paths[:, 9], atol=1e-4)
    assert att.total == pytest.approx(float(hf_logits[6, 4] - hf_logits[6, 9]), abs=1e-4)
    assert att.total == pytest.approx(float(att.scores.sum()) + att.remainder, abs=1e-5)
    mass = abs(att.remainder) + np.abs(att.scores).sum()
    assert att.remainder_share == pytest.approx(abs(att.remainder) / mass)
    # ranking, components (sum over the paths through each) and direct one-component paths
    top = att.top(3)
    assert [s for _, s in top] == sorted(att.scores, reverse=True)[:3]
    assert att.bottom(1)[0][1] == pytest.approx(float(att.scores.min()))
    for name in ("attn0", "mlp2"):
        through = [s for lab, s in zip(att.labels, att.scores) if name in lab.split(">")]
        assert len(through) == 32
        assert att.components[name] == pytest.approx(float(np.sum(through)), abs=1e-5)
        assert att.direct[name] == pytest.approx(float(att.scores[att.labels.index(f"emb>{name}>dec")]))
    assert "remainder" in att.table(3) and len(att.to_json()) > 100
    # without a foil the target's logit is attributed; default position is the last token
    plain = jj.path_attribution(model, ids, target=4, granularity="branch")
    last = _by_hand(model, ids, plain.labels)[:, -1, 4]
    np.testing.assert_allclose(plain.scores, last, atol=1e-4)
    assert plain.position == 7 and plain.foil is None


def test_affine_unembedding_detection(gpt2):
    from jetjax.paths.attribution import _affine_unembedding

    model, _ = gpt2
    w, b, gram, _, _ = _affine_unembedding(model, model.params, 28, jnp.float32)
    np.testing.assert_allclose(np.asarray(gram), np.asarray(w) @ np.asarray(w).T, rtol=1e-5, atol=1e-5)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 28)), jnp.float32)
    np.testing.assert_allclose(np.asarray(x @ w + b), np.asarray(model.unembed(x)), atol=1e-5)
    plain = model.unembed
    model.unembed = lambda x, params=None: jnp.tanh(plain(x, params=params))  # not affine: must be noticed
    try:
        assert _affine_unembedding(model, model.params, 28, jnp.float32) is None
    finally:
        del model.unembed


def test_bad_input(gpt2, rng):
    model, _ = gpt2
    ids = rng.integers(0, 37, size=5)
    with pytest.raises(IndexError, match="position 5 is out of range"):
        jj.reduce_paths(model, ids, position=5)
    with pytest.raises(ValueError, match="64 paths, more than max_paths=10"):
        jj.reduce_paths(model, ids, granularity="branch", max_paths=10)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        jj.reduce_paths(model, ids, chunk_size=0)
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        jj.reduce_paths(model, ids, mesh="cpu")
    with pytest.raises(ValueError, match="one sequence"):
        jj.path_attribution(model, np.stack([ids, ids]), target=1)
    with pytest.raises(ValueError, match="target token id 37 is out of range"):
        jj.path_attribution(model, ids, target=37)
    with pytest.raises(TypeError, match="foil must be a token id"):
        jj.path_attribution(model, ids, target=1, foil=2.5)
    with pytest.raises(ValueError, match="no tokenizer"):
        jj.path_attribution(model, ids, target="hello")
