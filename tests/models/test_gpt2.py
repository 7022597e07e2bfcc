"""GPT-2 as pure functions: parity with HF transformers (torch) on random checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jetjax as jj
from tests.conftest import GPT2_CONFIGS, make_gpt2_checkpoint
from tests.jet.test_jet import nested_jvp_terms

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

CONFIG_NAMES = list(GPT2_CONFIGS)


def _ids(rng, vocab, t, batch=2):
    return rng.integers(0, vocab, size=(batch, t)).astype(np.int32)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_logits_match_hf(gpt2_checkpoints, name, rng):
    path, hf = gpt2_checkpoints[name]
    model = jj.from_pretrained(path)
    cfg = GPT2_CONFIGS[name]
    ids = _ids(rng, cfg["vocab_size"], cfg["n_positions"])  # full position table
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids).long()).logits.numpy()
    ours = np.asarray(model.logits(ids))
    assert ours.shape == ref.shape == (2, cfg["n_positions"], cfg["vocab_size"])
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # unbatched ids give the first row
    np.testing.assert_allclose(np.asarray(model.logits(ids[0])), ref[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_streams_and_branch_deltas_match_hf_modules(gpt2_checkpoints, name, rng):
    path, hf = gpt2_checkpoints[name]
    model = jj.from_pretrained(path)
    cfg = GPT2_CONFIGS[name]
    n_layers = cfg["n_layer"]
    ids = _ids(rng, cfg["vocab_size"], 11)

    captured = {}

    def hook(key):
        def fn(_module, _inputs, output):
            captured[key] = (output[0] if isinstance(output, tuple) else output).detach().numpy()
        return fn

    handles = []
    for i, block in enumerate(hf.transformer.h):
        handles += [block.attn.register_forward_hook(hook(("attn", i))),
                    block.mlp.register_forward_hook(hook(("mlp", i))),
                    block.register_forward_hook(hook(("block", i)))]
    try:
        with torch.no_grad():
            out = hf(torch.from_numpy(ids).long(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()

    streams, mids = model.residual_stream(ids, mid=True)
    streams, mids = np.asarray(streams), np.asarray(mids)
    assert streams.shape == (n_layers + 1, 2, 11, cfg["n_embd"])
    assert mids.shape == (n_layers, 2, 11, cfg["n_embd"])
    hidden = [h.numpy() for h in out.hidden_states]
    # HF returns h_0..h_{L-1} raw and its last entry after the final LayerNorm.
    for layer in range(n_layers):
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=1e-4, rtol=0)
        np.testing.assert_allclose(streams[layer + 1], captured[("block", layer)], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.final_norm(streams[-1])), hidden[-1], atol=1e-4, rtol=0)

    for layer in range(n_layers):
        h = streams[layer]
        attn = np.asarray(model.attn(layer, h))
        mlp = np.asarray(model.mlp(layer, mids[layer]))
        np.testing.assert_allclose(attn, captured[("attn", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mlp, captured[("mlp", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mids[layer], h + attn, atol=1e-5, rtol=0)
        # the whole-block gamma is the delta, never h + delta
        np.testing.assert_allclose(np.asarray(model.block(layer, h)), streams[layer + 1] - h, atol=1e-4)
    # embedding pieces
    np.testing.assert_allclose(np.asarray(model.embed(ids)), streams[0], atol=1e-6)
    wte = hf.transformer.wte.weight.detach().numpy()
    np.testing.assert_allclose(np.asarray(model.token_embed(ids)), wte[ids], atol=1e-6)
    np.testing.assert_allclose(np.asarray(model.decode(streams[-1])), out.logits.numpy(), atol=1e-4)


def test_bf16_checkpoint_loads_and_runs(tmp_path, rng):
    cfg = GPT2_CONFIGS["prime"]
    hf = make_gpt2_checkpoint(tmp_path, seed=3, dtype=torch.bfloat16, **cfg)
    model = jj.from_pretrained(tmp_path)
    leaves = jax.tree_util.tree_leaves(model.params)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    ids = _ids(rng, cfg["vocab_size"], 9)
    logits = model.logits(ids)
    assert logits.dtype == jnp.float32  # compute is float32 whatever the storage
    with torch.no_grad():
        ref = hf.float()(torch.from_numpy(ids).long()).logits.numpy()  # same bf16-rounded weights
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
    # storage dtype can be chosen at load time
    m32 = jj.from_pretrained(tmp_path, dtype=jnp.float32)
    assert {x.dtype for x in jax.tree_util.tree_leaves(m32.params)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(np.asarray(m32.logits(ids)), np.asarray(logits), atol=1e-6)


def test_params_are_explicit_inputs(gpt2_checkpoints, rng):
    """Residual functions are pure in params: jit with params as an argument, and grad through them."""
    path, _ = gpt2_checkpoints["prime"]
    model = jj.from_pretrained(path)
    ids = _ids(rng, 37, 7)[0]
    f = jax.jit(lambda p, i: model.logits(i, params=p))
    np.testing.assert_allclose(f(model.params, ids), model.logits(ids), atol=1e-6)
    zeroed = jax.tree_util.tree_map(jnp.zeros_like, model.params)
    assert np.allclose(np.asarray(f(zeroed, ids)), 0.0)
    g = jax.grad(lambda p: model.logits(ids, params=p)[-1, 3])(model.params)
    assert float(jnp.abs(g["wte"]).sum()) > 0


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_jet_of_gpt2_block_matches_nested_jvp(gpt2_checkpoints, dtype, tol, rng):
    path, _ = gpt2_checkpoints["odd_mlp"]
    with jax.enable_x64(dtype == "float64"):
        model = jj.from_pretrained(path, dtype=jnp.dtype(dtype))
        ids = _ids(rng, 41, 8)[0]
        streams = model.residual_stream(ids)
        x = streams[1]                              # centre: the stream entering layer 1
        y = streams[1] + 0.5 * (streams[2] - streams[1]) + 0.1 * streams[0]  # a nearby variate
        assert x.dtype == jnp.dtype(dtype)
        block = lambda h: model.block(1, h)
        for order in ((1, 3, 6) if dtype == "float64" else (2, 4)):  # order k checks every term j <= k
            _, terms = jax.jit(lambda a, b: jj.jet(block, a, b, order, return_terms=True))(x, y)
            ref = jax.jit(lambda a, b: nested_jvp_terms(block, a, b, order))(x, y)
            for j, (t, r) in enumerate(zip(terms, ref)):
                err = float(jnp.linalg.norm(t - r) / jnp.linalg.norm(r))
                assert err < tol, f"order {order} term {j}: relative error {err:.2e}"
