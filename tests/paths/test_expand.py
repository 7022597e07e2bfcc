"""Algorithms 1 and 2: generic, block and decoder expansions and all paths, on toy nets and GPT-2."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jetjax as jj
from tests.jet.test_jet import nested_jvp_terms

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints


# ---- toy residual nets ---------------------------------------------------------------------

def _linear_toy(rng, n_layers=3, d=5, d_in=4, d_out=3):
    E = rng.normal(size=(d, d_in))
    A = [0.5 * rng.normal(size=(d, d)) for _ in range(n_layers)]
    U = rng.normal(size=(d_out, d))
    return E, A, U


def _carve(gammas, h0, order, weights):
    """Expand every block in turn: centres of block l are all terms produced so far."""
    exp_terms, labels = h0[None], ("emb",)
    h = h0
    for l, gamma in enumerate(gammas):
        exp = jj.expand(gamma, exp_terms, h, order, weights=weights(len(labels)), labels=labels)
        ident = jj.expand(lambda x: x, exp_terms, h, order, weights=weights(len(labels)), labels=labels)
        exp_terms = jnp.concatenate([exp.terms, ident.terms])
        labels = tuple(f"{lab}>g{l}" for lab in labels) + labels
        h = h + gamma(h)
    return exp_terms, labels, h


def test_linear_toy_order0_unit_weights_gives_all_paths_exactly(rng):
    with jax.enable_x64(True):
        E, A, U = _linear_toy(rng)
        z = rng.normal(size=4)
        gammas = [lambda x, a=jnp.asarray(a): a @ x for a in A]
        h0 = jnp.asarray(E @ z)
        unit = lambda n: "unit"
        terms, labels, h_L = _carve(gammas, h0, 0, unit)
        dec = lambda x: jnp.asarray(U) @ x
        out = jj.expand(dec, terms, h_L, 0, weights="unit", labels=labels)
        assert len(out) == 2 ** len(A) == len(set(out.labels))
        f = U @ np.linalg.multi_dot([np.eye(5) + a for a in A[::-1]]) @ E @ z
        assert float(jnp.abs(out.remainder).max()) < 1e-12
        np.testing.assert_allclose(np.asarray(out.total), f, atol=1e-12)
        # each path is U (Π_{l∈S} A_l) E z, with S read from its label
        for label, term in zip(out.labels, np.asarray(out.terms)):
            path = E @ z
            for l in range(len(A)):
                if f">g{l}" in label:
                    path = A[l] @ path
            np.testing.assert_allclose(term, U @ path, atol=1e-12, err_msg=label)


@pytest.mark.parametrize("weights", ["uniform", "random"])
def test_linear_toy_order1_any_convex_weights_is_exact(rng, weights):
    with jax.enable_x64(True):
        E, A, U = _linear_toy(rng)
        gammas = [lambda x, a=jnp.asarray(a): a @ x for a in A]
        h0 = jnp.asarray(E @ rng.normal(size=4))

        def pick(n):
            if weights == "uniform":
                return None
            w = rng.uniform(0.1, 1.0, size=n)
            return jnp.asarray(w / w.sum())

        terms, labels, h_L = _carve(gammas, h0, 1, pick)
        out = jj.expand(lambda x: jnp.asarray(U) @ x, terms, h_L, 1, weights=pick(len(labels)), labels=labels)
        assert float(jnp.abs(out.remainder).max()) < 1e-12


def test_two_block_toy_two_step_carving():
    # The paper's worked example: f = Dec(x0 + x1 + x2), x0 = Enc, x1 = γ1(x0), x2 = γ2(x0 + x1).
    rng = np.random.default_rng(1)
    d, V = 7, 11
    W1, W2 = (jnp.asarray(rng.normal(size=(d, d)), jnp.float32) for _ in range(2))
    U = jnp.asarray(rng.normal(size=(V, d)), jnp.float32)
    g1 = lambda x: jax.nn.relu(W1 @ x)
    g2 = lambda x: jnp.tanh(W2 @ x)
    ln = lambda x: (x - x.mean()) / jnp.sqrt(((x - x.mean()) ** 2).mean() + 1e-5)
    dec = lambda x: U @ ln(x)
    x0 = jnp.asarray(rng.normal(size=d), jnp.float32)
    x1 = g1(x0)
    x2 = g2(x0 + x1)
    logits = dec(x0 + x1 + x2)
    for order in (0, 1, 2):
        step1 = jj.expand(g2, jnp.stack([x0, x1]), x0 + x1, order, labels=["x0", "x1"])
        centres = jnp.concatenate([jnp.stack([x0, x1]), step1.terms])
        labels = ["x0", "x1", "x0>g2", "x1>g2"]
        step2 = jj.expand(dec, centres, x0 + x1 + x2, order, labels=labels)
        assert len(step2) == 4
        assert step2.labels == ("x0", "x1", "x0>g2", "x1>g2")
        np.testing.assert_allclose(step2.total + step2.remainder, logits, atol=1e-4)
    # at order 0 with unit weights the four paths are Dec∘Enc, Dec∘γ1∘Enc, Dec∘γ2∘Enc, Dec∘γ2∘γ1∘Enc
    step1 = jj.expand(g2, jnp.stack([x0, x1]), x0 + x1, 0, weights="unit")
    step2 = jj.expand(dec, jnp.concatenate([jnp.stack([x0, x1]), step1.terms]), x0 + x1 + x2, 0, weights="unit")
    for got, want in zip(step2.terms, [dec(x0), dec(g1(x0)), dec(g2(x0)), dec(g2(g1(x0)))]):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_generic_expand_terms_are_weighted_jets():
    f = lambda v: jnp.sin(v) * v
    centres = jnp.asarray([[0.1, 0.2], [0.5, -0.3], [1.0, 0.0]])
    y = jnp.asarray([0.4, 0.1])
    w = jnp.asarray([0.2, 0.5, 0.3])
    exp = jj.expand(f, centres, y, 3, weights=w)
    for i in range(3):
        ref = sum(nested_jvp_terms(f, centres[i], y, 3))
        np.testing.assert_allclose(exp.terms[i], w[i] * ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.total + exp.remainder, f(y), atol=1e-6)
    assert exp.labels == ("c0", "c1", "c2") and exp.order == 3
    np.testing.assert_allclose(exp.term("c1"), exp.terms[1])


def test_weights_are_differentiable():
    f = lambda v: jnp.tanh(v) ** 2
    centres = jnp.asarray([[0.1, 0.2], [0.5, -0.3], [1.0, 0.0]])
    y = jnp.asarray([0.4, 0.1])

    def loss(logw):
        return jnp.sum(jj.expand(f, centres, y, 1, weights=jax.nn.softmax(logw)).remainder ** 2)

    logw = jnp.zeros(3)
    g = jax.grad(loss)(logw)
    eps = 1e-3
    fd = [(loss(logw.at[i].add(eps)) - loss(logw.at[i].add(-eps))) / (2 * eps) for i in range(3)]
    np.testing.assert_allclose(g, jnp.asarray(fd), rtol=2e-2, atol=1e-5)
    assert float(jnp.abs(g).max()) > 0


# ---- GPT-2 -----------------------------------------------------------------------------------

@pytest.fixture
def gpt2(gpt2_checkpoints):
    path, hf = gpt2_checkpoints["prime"]
    return jj.from_pretrained(path), hf


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.from_numpy(np.asarray(ids)).long()[None]).logits[0].numpy()


@pytest.mark.parametrize("order", [0, 1, 2])
def test_decoder_expansion_reconstructs_hf_logits(gpt2, order, rng):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=9)
    h = model.residual_stream(ids)
    L = model.config.n_layers
    centres = jnp.stack([h[0], h[1], h[L] - h[L - 1]])
    exp = jj.expand_decoder(model, ids, centres, order, labels=["emb", "h1", f"block{L - 1}"])
    assert exp.labels == ("emb>dec", "h1>dec", f"block{L - 1}>dec")
    assert exp.terms.shape == (3, 9, 37)
    np.testing.assert_allclose(np.asarray(exp.total + exp.remainder), _hf_logits(hf, ids), atol=1e-4)
    # each term is 1/3 of the jet of the full decoder, computed independently by nested jvp
    for i in range(3):
        ref = sum(nested_jvp_terms(model.decode, centres[i], h[L], order)) / 3
        np.testing.assert_allclose(np.asarray(exp.terms[i]), np.asarray(ref), atol=1e-4)


def test_block_then_decoder_composes_labels_and_matches_hf_stream(gpt2, rng):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=7)
    h, mids = model.residual_stream(ids, mid=True)
    with torch.no_grad():
        hidden = hf(torch.from_numpy(ids).long()[None], output_hidden_states=True).hidden_states
    centres = jnp.stack([h[0], h[1] - h[0]])
    exp = jj.expand_block(model, ids, 1, centres, order=1, labels=["emb", "block0"])
    assert exp.labels == ("emb>block1", "block0>block1", "emb", "block0")
    np.testing.assert_allclose(np.asarray(exp.total + exp.remainder), hidden[2][0].numpy(), atol=1e-4)
    for i in range(2):
        ref = sum(nested_jvp_terms(lambda x: model.block(1, x), centres[i], h[1], 1)) / 2
        np.testing.assert_allclose(np.asarray(exp.terms[i]), np.asarray(ref), atol=1e-5)
        np.testing.assert_allclose(np.asarray(exp.terms[2 + i]), np.asarray(h[1]) / 2, atol=1e-6)
    dec = jj.expand_decoder(model, ids, exp, order=0)
    assert dec.labels == ("emb>block1>dec", "block0>block1>dec", "emb>dec", "block0>dec")
    np.testing.assert_allclose(np.asarray(dec.total + dec.remainder), _hf_logits(hf, ids), atol=1e-4)

    # attention then MLP branch of layer 0, at the embedding, order 0, unit weights: exact paths
    a = jj.expand_block(model, ids, 0, h[0][None], 0, "unit", branch="attn", labels=["emb"])
    np.testing.assert_allclose(np.asarray(a.term("emb>attn0")), np.asarray(model.attn(0, h[0])), atol=1e-6)
    assert float(jnp.abs(a.remainder).max()) < 1e-5  # one centre at the true stream: exact
    m = jj.expand_block(model, ids, 0, a, 0, "unit", branch="mlp")
    assert m.labels == ("emb>attn0>mlp0", "emb>mlp0", "emb>attn0", "emb")
    np.testing.assert_allclose(np.asarray(m.term("emb>attn0>mlp0")),
                               np.asarray(model.mlp(0, model.attn(0, h[0]))), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.total + m.remainder), np.asarray(h[1]), atol=1e-5)


@pytest.mark.parametrize("order", [2, 3])
def test_block_terms_order_ge_2_match_nested_jvp(gpt2, order, rng):
    model, _ = gpt2
    ids = rng.integers(0, 37, size=6)
    h, mids = model.residual_stream(ids, mid=True)
    centres = jnp.stack([h[0], mids[0] - h[0]])
    exp = jj.expand_block(model, ids, 0, centres, order, weights=jnp.asarray([0.3, 0.7]), branch="mlp")
    for i, w in enumerate([0.3, 0.7]):
        ref = sum(nested_jvp_terms(lambda x: model.mlp(0, x), centres[i], mids[0], order))
        np.testing.assert_allclose(np.asarray(exp.terms[i]), w * np.asarray(ref), atol=1e-5)


def test_parallel_residual_branches(rng):
    from jetjax.models import ModelConfig, random_model

    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=20, vocab_size=13,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new", parallel_residual=True)
    model = random_model(cfg, seed=2, scale=0.3)
    ids = rng.integers(0, 13, size=5)
    h = model.residual_stream(ids)
    np.testing.assert_allclose(np.asarray(h[1] - h[0]),
                               np.asarray(model.attn(0, h[0]) + model.mlp(0, h[0])), atol=1e-5)
    exp = jj.expand_block(model, ids, 0, h[0][None], 0, "unit", branch="branches", labels=["emb"])
    assert exp.labels == ("emb>attn0", "emb>mlp0", "emb")
    assert float(jnp.abs(exp.remainder).max()) < 1e-5
    with pytest.raises(ValueError, match="parallel-residual"):
        jj.expand_block(model, ids, 0, h[0][None], 0, branch="mlp")


def test_bad_input(gpt2, rng):
    model, _ = gpt2
    ids = rng.integers(0, 37, size=5)
    h = model.residual_stream(ids)
    with pytest.raises(ValueError, match="leading centre axis"):
        jj.expand_decoder(model, ids, h[0], 0)  # missing the centre axis
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        jj.expand_decoder(model, ids, h[:2], 0, weights=jnp.ones(3))
    with pytest.raises(ValueError, match="finite"):
        jj.expand_decoder(model, ids, h[:2], 0, weights=jnp.asarray([0.5, jnp.nan]))
    with pytest.raises(ValueError, match="'uniform', 'unit'"):
        jj.expand_decoder(model, ids, h[:2], 0, weights="softmax")
    with pytest.raises(IndexError, match="layer 3 is out of range"):
        jj.expand_block(model, ids, 3, h[:1], 0)
    with pytest.raises(ValueError, match="order must be >= 0"):
        jj.expand_block(model, ids, 0, h[:1], -1)
    with pytest.raises(ValueError, match="got 1 labels for 2 centres"):
        jj.expand_decoder(model, ids, h[:2], 0, labels=["a"])
    with pytest.raises(ValueError, match="branch must be one of"):
        jj.expand_block(model, ids, 0, h[:1], 0, branch="ffn")
    with pytest.raises(KeyError, match="no term labelled 'zzz'"):
        jj.expand_decoder(model, ids, h[:2], 0).term("zzz")




def _path_by_hand(model, ids, label):
    """A path's logits recomputed from scratch: apply the components its label names, in order."""
    x = model.embed(ids)
    for step in label.split(">")[1:-1]:
        kind, layer = step.rstrip("0123456789"), int(step[len(step.rstrip("0123456789")):])
        x = {"block": model.block, "attn": model.attn, "mlp": model.mlp}[kind](layer, x)
    return model.decode(x)


@pytest.mark.parametrize("granularity,n_paths", [("block", 8), ("branch", 64)])
def test_expand_all_paths(gpt2, rng, granularity, n_paths):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=6)
    hf_logits = _hf_logits(hf, ids)
    paths = jj.expand_all(model, ids, order=0, granularity=granularity)
    assert len(paths) == n_paths == len(set(paths.labels))
    assert paths.terms.shape == (n_paths, 6, 37)
    assert all(lab.startswith("emb>") and lab.endswith(">dec") for lab in paths.labels)
    np.testing.assert_allclose(np.asarray(paths.total + paths.remainder), hf_logits, atol=1e-4)
    for label, term in zip(paths.labels, paths.terms):
        np.testing.assert_allclose(np.asarray(term), np.asarray(_path_by_hand(model, ids, label)),
                                   atol=1e-4, err_msg=label)
    # other orders and convex weights: still an exact decomposition
    for order, weights in [(1, "uniform"), (2, "unit")]:
        other = jj.expand_all(model, ids, order=order, granularity=granularity, weights=weights)
        assert other.labels == paths.labels
        np.testing.assert_allclose(np.asarray(other.total + other.remainder), hf_logits, atol=1e-4)
    # one compiled function per (model, settings): another prompt of the same length reuses it
    from jetjax._internal.compiled import built

    sizes = {key: f._cache_size() for key, f in built(model, "expand_all").items()}
    assert sizes
    again = jj.expand_all(model, rng.integers(0, 37, size=6), order=0, granularity=granularity)
    assert again.labels == paths.labels and not np.allclose(np.asarray(again.terms), np.asarray(paths.terms))
    assert {key: f._cache_size() for key, f in built(model, "expand_all").items()} == sizes
    with pytest.raises(ValueError, match="granularity"):
        jj.expand_all(model, ids, granularity="layer")
    with pytest.raises(ValueError, match="max_length must be a non-negative int"):
        jj.expand_all(model, ids, max_length=-1)
    with pytest.raises(ValueError, match="'unit' or 'uniform'"):
        jj.expand_all(model, ids, weights=jnp.ones(2))


@pytest.mark.parametrize("granularity,filters", [
    ("block", {}), ("branch", {}), ("block", {"max_length": 1}), ("branch", {"attention_free": True}),
    ("branch", {"max_length": 2, "exclude": ["mlp1"]}), ("branch", {"include": ["attn0", "mlp2", "mlp0"]}),
])
def test_filters_and_path_counts(gpt2, rng, granularity, filters):
    model, hf = gpt2
    ids = rng.integers(0, 37, size=5)
    paths = jj.expand_all(model, ids, granularity=granularity, **filters)
    assert len(paths) == jj.count_paths(3, granularity, **filters)
    # every path respects the filters, and enumerating by hand finds the same label set
    steps = [f"block{l}" for l in range(3)] if granularity == "block" else \
        [f"{b}{l}" for l in range(3) for b in ("attn", "mlp")]
    expected = set()
    for r in range(len(steps) + 1):
        for combo in itertools.combinations(steps, r):
            if filters.get("attention_free") and any(c.startswith("attn") for c in combo):
                continue
            if any(c in filters.get("exclude", ()) for c in combo):
                continue
            if "include" in filters and any(c not in filters["include"] for c in combo):
                continue
            if "max_length" in filters and r > filters["max_length"]:
                continue
            expected.add(">".join(["emb", *combo, "dec"]))
    assert set(paths.labels) == expected
    np.testing.assert_allclose(np.asarray(paths.total + paths.remainder), _hf_logits(hf, ids), atol=1e-4)
    for label, term in zip(paths.labels, paths.terms):  # filtered paths are still the plain compositions
        np.testing.assert_allclose(np.asarray(term), np.asarray(_path_by_hand(model, ids, label)), atol=1e-4)


def test_parallel_path_count(rng):
    from jetjax.models import ModelConfig, random_model

    cfg = ModelConfig(arch="gpt2", n_layers=3, d_model=12, n_heads=3, d_head=4, d_mlp=20, vocab_size=13,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new", parallel_residual=True)
    model = random_model(cfg, seed=4, scale=0.3)
    ids = rng.integers(0, 13, size=4)
    paths = jj.expand_all(model, ids, granularity="branch")
    assert len(paths) == 27 == jj.count_paths(3, "branch", parallel_residual=True)
    np.testing.assert_allclose(np.asarray(paths.total + paths.remainder), np.asarray(model.logits(ids)), atol=1e-5)
    assert jj.count_paths(3, "branch", parallel_residual=True, max_length=1) == 7


def test_count_paths_formulas():
    from math import comb

    for L in range(1, 7):
        assert jj.count_paths(L) == 2 ** L
        assert jj.count_paths(L, "branch") == 4 ** L
        assert jj.count_paths(L, "branch", parallel_residual=True) == 3 ** L
        assert jj.count_paths(L, "branch", max_length=2) == sum(comb(2 * L, j) for j in range(3))
    with pytest.raises(ValueError, match="granularity"):
        jj.count_paths(3, "layer")
