"""The one cache of compiled functions: reuse, clearing, and no model kept alive by it."""

import gc
import weakref

import numpy as np

from jetjax.lenses import lens as lenses
from jetjax._internal import compiled as _compiled
from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import jet_bigrams

CFG = ModelConfig(arch="gpt2", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=13,
                  n_positions=8, norm_eps=1e-5, activation="gelu_new")


def test_reuse_then_clear_then_recompile():
    model = random_model(CFG, seed=1)
    key = ("iterative", 1, "block")
    before = lenses.TRACE_COUNTS[key]
    first = lenses.iterative_jet_lens(model, [1, 2, 3], order=1).logits
    lenses.iterative_jet_lens(model, [1, 2, 3], order=1)
    assert lenses.TRACE_COUNTS[key] == before + 1                     # compiled once, reused
    jet_bigrams(model, "emb>mlp0>dec", top_k=2, progress=False)
    assert _compiled.built(model, "lenses") and _compiled.built(model, "ngrams")

    _compiled.clear_caches()
    assert not _compiled.built(model, "lenses") and not _compiled.built(model, "ngrams")
    assert model._logits_jit._cache_size() == 0
    again = lenses.iterative_jet_lens(model, [1, 2, 3], order=1).logits
    assert lenses.TRACE_COUNTS[key] == before + 2                     # compiled anew
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))


def test_the_cache_does_not_keep_a_model_alive():
    model = random_model(CFG, seed=2)
    lenses.iterative_jet_lens(model, [1, 2], order=0)
    jet_bigrams(model, "emb>dec", top_k=2, progress=False)            # its builders close over the model
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_the_kept_unembedding_follows_the_weights():
    """A sweep keeps its tiled unembedding for the next sweep of the same weights (one, the latest);
    new ``model.params`` (or a NumPy leaf, mutable in place) are never swept with the old one."""
    model, other = random_model(CFG, seed=3), random_model(CFG, seed=4)
    first = jet_bigrams(model, "emb>dec", top_k=3, progress=False)
    memo = _compiled.built(model, "ngrams")[("fingerprint",)]
    kept = [k for k in memo if isinstance(k, tuple) and k[0] == "unembedding"]
    assert len(kept) == 1
    held = memo[kept[0]]
    assert jet_bigrams(model, "emb>mlp1>dec", top_k=3, progress=False).ids.shape == (13, 3)
    assert memo[kept[0]] is held                                          # reused, not rebuilt
    jet_bigrams(model, "emb>dec", top_k=3, progress=False, compute_dtype="bfloat16")
    assert [k for k in memo if isinstance(k, tuple) and k[0] == "unembedding"] != kept   # replaced: one kept
    model.params = other.params
    swapped = jet_bigrams(model, "emb>dec", top_k=3, progress=False)
    want = jet_bigrams(other, "emb>dec", top_k=3, progress=False)
    np.testing.assert_array_equal(swapped.ids, want.ids)
    np.testing.assert_array_equal(swapped.probs, want.probs)
    assert not np.array_equal(swapped.probs, first.probs)
    import jax
    model.params = jax.tree_util.tree_map(np.asarray, other.params)       # NumPy leaves: never kept
    jet_bigrams(model, "emb>dec", top_k=3, progress=False)
    memo = _compiled.built(model, "ngrams")[("fingerprint",)]
    assert not [k for k in memo if isinstance(k, tuple) and k[0] == "unembedding"]
