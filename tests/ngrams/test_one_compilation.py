"""One compiled sweep step for path sets that differ only in which layers' weights they read.

The step takes the selected layers' weights as arguments (:func:`jetjax.ngrams.scorer.layer_share`):
``emb>mlp{l}>dec`` for every ``l`` compiles once, and its tables are bitwise those of a step compiled
for one layer; a model with local and global attention layers compiles once per kind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax._internal.compiled import TRACE_COUNTS, clear_caches
from jetjax.models import random_model
from jetjax.models.gemma3 import config_from_hf
from jetjax.ngrams import jet_bigrams, native, sweep, sweep_contexts
from jetjax.ngrams.scorer import _same_computation, context_scorer, layer_share
from jetjax._internal.parallel import path_mesh
from jetjax.testing import tiny_model

OPTS = dict(top_k=4, global_k=6, progress=False)


def _traces() -> int:
    return sum(n for key, n in TRACE_COUNTS.items() if isinstance(key, tuple) and key[0] == "ngrams_step")


def _assert_same(a, b):
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.logsumexp, b.logsumexp)


@pytest.fixture(autouse=True)
def _fresh():
    clear_caches()
    yield
    clear_caches()


def _model(arch="llama", n_layers=4):
    return tiny_model(arch, n_layers=n_layers, vocab_size=23)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_all_layers_compile_once(arch, monkeypatch):
    model = _model(arch)
    n = model.config.n_layers
    monkeypatch.setattr(sweep, "_SHARE_LAYERS", False)      # one step per layer, as before sharing
    before = _traces()
    per_layer = [jet_bigrams(model, f"emb>mlp{l}>dec", **OPTS) for l in range(n)]
    assert _traces() - before == n                          # the counter sees every compilation
    clear_caches()
    monkeypatch.setattr(sweep, "_SHARE_LAYERS", True)
    before = _traces()
    shared = [jet_bigrams(model, f"emb>mlp{l}>dec", **OPTS) for l in range(n)]
    assert _traces() - before == 1
    for a, b in zip(shared, per_layer):
        _assert_same(a, b)
    assert not all(np.array_equal(shared[0].ids, t.ids) for t in shared[1:])  # the layers do differ


def _direct_step_tables(model, path, k, block_rows=1024):
    """The table of ``path`` from a step compiled from :func:`context_scorer` alone (the per-layer
    scorer reading the layer out of the whole params), the sweep's tiles and unembedding."""
    mesh = path_mesh(jax.devices()[:1], axis_name="rows")
    tiles = sweep._tile_mode(model, mesh, "float32")
    nr = native.gemm_layout()[1] if tiles == "fused" else 0
    v = model.config.vocab_size
    w, b = jax.jit(lambda p: sweep._tile_unembedding(*model.unembedding_matrix(params=p), v, "float32", nr))(
        model.params)
    ctx = np.zeros((block_rows, 1), np.int32)
    ctx[:v, 0] = np.arange(v)
    step = sweep._step(context_scorer(model, [path]), k, mesh, "float32", tiles)
    probs, ids, lse = (np.asarray(x)[:v] for x in step(model.params, w, b, jnp.asarray(ctx), v))
    return probs, ids, lse


def test_shared_step_bitwise_and_reference(monkeypatch):
    model = _model("llama")
    monkeypatch.setattr(sweep, "_ROWS_FIRST", False)        # every row keeps max(top_k, global_k)
    kk = max(OPTS["top_k"], OPTS["global_k"])
    v = model.config.vocab_size
    before = _traces()
    tables = [jet_bigrams(model, f"emb>mlp{l}>dec", **OPTS) for l in range(model.config.n_layers)]
    assert _traces() - before == 1
    ids = jnp.arange(v, dtype=jnp.int32)[:, None]
    for layer, table in enumerate(tables):
        assert table.meta["vocab_tile"] == v
        probs, top, lse = _direct_step_tables(model, f"emb>mlp{layer}>dec", kk)
        np.testing.assert_array_equal(table.probs, probs[:, :OPTS["top_k"]])
        np.testing.assert_array_equal(table.ids, top[:, :OPTS["top_k"]])
        np.testing.assert_array_equal(table.logsumexp, lse)
        # float64 reference from the model's own functions
        logits = np.asarray(model.decode(model.mlp(layer, model.token_embed(ids)))[:, -1], np.float64)
        ref_lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        ref_p = np.exp(logits - ref_lse[:, None])
        np.testing.assert_allclose(table.logsumexp, ref_lse, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(table.probs, np.take_along_axis(ref_p, table.ids, 1), rtol=1e-5, atol=1e-6)
        ref_sorted = -np.sort(-ref_p, axis=1)[:, :OPTS["top_k"]]
        np.testing.assert_allclose(table.probs, ref_sorted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", [0, 1])
def test_multi_component_paths_share_by_kind(order, monkeypatch):
    model = _model("llama", n_layers=4)
    monkeypatch.setattr(sweep, "_ROWS_FIRST", False)        # one k per sweep: one step each
    # slots (ascending layers) read as attn, mlp, mlp in both: the same shape, other layers
    groups = [["emb>attn1>mlp2>dec", "emb>mlp3>dec"], ["emb>attn0>mlp1>dec", "emb>mlp3>dec"]]
    assert layer_share(model, groups[0]).key == layer_share(model, groups[1]).key
    contexts = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], np.int32)
    before = _traces()
    shared = [sweep_contexts(model, contexts, g, order=order, **OPTS) for g in groups]
    assert _traces() - before == 1
    clear_caches()
    monkeypatch.setattr(sweep, "_SHARE_LAYERS", False)
    before = _traces()
    alone = [sweep_contexts(model, contexts, g, order=order, **OPTS) for g in groups]
    assert _traces() - before == 2
    for a, b in zip(shared, alone):
        _assert_same(a, b)


def _gemma(n_layers=4, window=2):
    types = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"][:n_layers]
    cfg = config_from_hf({"model_type": "gemma3_text", "hidden_size": 12, "num_hidden_layers": n_layers,
                          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                          "intermediate_size": 20, "vocab_size": 17, "sliding_window": window,
                          "query_pre_attn_scalar": 8, "layer_types": types})
    assert cfg.attn_windows == (window, window, None, window)
    return random_model(cfg, scale=0.3)


def test_local_and_global_layers_compile_once_per_kind(monkeypatch):
    model = _gemma()
    monkeypatch.setattr(sweep, "_ROWS_FIRST", False)
    contexts = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)   # longer than the window
    share = [layer_share(model, [f"emb>attn{l}>dec"], contexts.shape[1]) for l in range(4)]
    assert [s.reps for s in share] == [(0,), (0,), (2,), (0,)]
    assert layer_share(model, ["emb>mlp2>dec"], 4).reps == (0,)            # MLPs are one kind
    # the check behind the config: the jaxprs of a local and a global layer differ, two local ones agree
    assert _same_computation(model, ("layers",), {"attn"}, 0, 3, 4)
    assert not _same_computation(model, ("layers",), {"attn"}, 0, 2, 4)
    before = _traces()
    shared = [sweep_contexts(model, contexts, [f"emb>attn{l}>dec"], **OPTS) for l in range(4)]
    assert _traces() - before == 2                                          # local, global
    clear_caches()
    monkeypatch.setattr(sweep, "_SHARE_LAYERS", False)
    before = _traces()
    alone = [sweep_contexts(model, contexts, [f"emb>attn{l}>dec"], **OPTS) for l in range(4)]
    assert _traces() - before == 4
    for layer, (a, b) in enumerate(zip(shared, alone)):
        _assert_same(a, b)
        # and right: the layer's own attention on the whole context, decoded at the last position
        logits = np.asarray(model.decode(model.attn(layer, model.token_embed(jnp.asarray(contexts))))[:, -1],
                            np.float64)
        ref_lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        np.testing.assert_allclose(a.logsumexp, ref_lse, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.probs, np.exp(np.take_along_axis(logits, a.ids, 1) - ref_lse[:, None]),
                                   rtol=1e-5, atol=1e-6)
    # local and global layers really compute differently on these contexts
    assert not np.array_equal(shared[0].logsumexp, shared[2].logsumexp)
