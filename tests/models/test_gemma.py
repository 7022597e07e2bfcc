"""Gemma 2's soft-capped logits through the tools that expand the decoder.

With ``final_logit_softcapping`` the unembedding is ``c · tanh((x W) / c)``, not affine: a decoder jet
must be taken through the cap, the frozen decoder freezes the cap's ratio, and what needs the matrix
``W`` (n-gram sweeps, bfloat16 operands) refuses the model by name. References here are written
independently: ``jax.jvp`` of the model's own ``decode``, its logits, and its decode of token embeddings.
(HF parity of both families: tests/models/test_families.py; GGUF: tests/io/test_gguf_gemma.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.expand import final_norm_jets
from jetjax.models import random_model
from jetjax.models.gemma3 import config_from_hf

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

IDS = np.array([3, 1, 4, 1, 5, 9, 2], np.int32)


def _gemma(model_type, **extra):
    cfg = config_from_hf({"model_type": model_type, "hidden_size": 12, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 6, "intermediate_size": 17,
                          "vocab_size": 23, "sliding_window": 3, "query_pre_attn_scalar": 5, **extra})
    return random_model(cfg, seed=4, scale=0.4)


@pytest.fixture(scope="module")
def capped():
    model = _gemma("gemma2", attn_logit_softcapping=3.0, final_logit_softcapping=2.0)
    assert not model.config.unembedding_is_affine
    return model


@pytest.fixture(scope="module")
def gemma3():
    return _gemma("gemma3_text", layer_types=["sliding_attention", "full_attention"])


def test_order_one_decoder_terms_are_jets_through_the_cap(capped):
    h = capped.residual_stream(IDS)
    centres = h[:2]
    exp = jax.jit(lambda c: jj.expand_decoder(capped, IDS, c, order=1, weights="unit"))(centres)
    for i in range(2):
        primal, tangent = jax.jvp(capped.decode, (centres[i],), (h[-1] - centres[i],))
        np.testing.assert_allclose(np.asarray(exp.terms[i]), np.asarray(primal + tangent), atol=1e-5, rtol=0)
    # the cap matters here: unembedding the final norm's jet (right only for an affine head) is far off
    normed = final_norm_jets(capped, centres, h[-1], 1)
    wrong = capped.unembed(normed)
    assert float(jnp.abs(wrong - exp.terms).max()) > 1e-2


def test_iterative_lens_and_bf16_refusal(capped):
    lens = jj.iterative_jet_lens(capped, IDS, order=1)
    np.testing.assert_allclose(lens.logits[-1], np.asarray(capped.logits(IDS)), atol=1e-5, rtol=0)
    assert np.abs(lens.model_logits).max() < 2.0   # capped at c = 2
    with pytest.raises(ValueError, match="soft-caps its logits"):
        jj.iterative_jet_lens(capped, IDS, order=1, compute_dtype="bfloat16")


def test_frozen_paths_and_search_add_up_to_the_capped_logits(capped):
    logits = np.asarray(capped.logits(IDS))[-1]
    total = float(logits[7] - logits[11])
    att = jj.frozen_path_attribution(capped, IDS, 7, 11, granularity="branch")
    assert att.total == pytest.approx(total, abs=1e-5)
    assert float(np.sum(att.scores)) == pytest.approx(total, abs=1e-4)   # frozen paths are exact
    top = jj.top_paths(capped, IDS, k=5, target=7, foil=11, beam=8)
    assert top.explored + top.unexplored == pytest.approx(total, abs=1e-4)
    ranked = np.sort(np.abs(att.scores))[::-1][:5]
    if top.certified:
        np.testing.assert_allclose(np.sort(np.abs(top.scores))[::-1], ranked, atol=1e-5)


def test_jet_path_attribution_matches_decoded_jets(capped):
    """Order-1 path scores through a soft-capped head against jvp of decode on each path's stream."""
    att = jj.path_attribution(capped, IDS, 7, 11, method="jet", order=0, weights="unit", max_length=1,
                              granularity="block")
    h0 = capped.embed(IDS)
    want = {"emb>dec": capped.decode(h0)[-1],
            "emb>block0>dec": capped.decode(capped.block(0, h0))[-1],
            "emb>block1>dec": capped.decode(capped.block(1, h0))[-1]}
    for label, logits in want.items():
        got = att.scores[att.labels.index(label)]
        assert got == pytest.approx(float(logits[7] - logits[11]), abs=1e-5), label


def test_ngram_sweeps_refuse_a_capped_head_before_any_work(capped, tmp_path):
    out = tmp_path / "table"
    with pytest.raises(ValueError, match=r"jet n-gram sweeps .* soft-caps its logits \(final_logit_softcapping=2.0\)"):
        jj.jet_bigrams(capped, out_dir=out, progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="unembedding_matrix needs an affine unembedding"):
        capped.unembedding_matrix()


def test_gemma3_bigram_rows_are_the_decoded_embeddings(gemma3):
    table = jj.jet_bigrams(gemma3, top_k=4, progress=False)
    v = gemma3.config.vocab_size
    logp = jax.nn.log_softmax(gemma3.decode(gemma3.token_embed(jnp.arange(v))), axis=-1)
    want = np.argsort(-np.asarray(logp), axis=-1, kind="stable")[:, :4]
    np.testing.assert_array_equal(np.sort(table.ids, axis=1), np.sort(want, axis=1))
    np.testing.assert_allclose(table.probs, np.take_along_axis(np.exp(np.asarray(logp)), table.ids, 1), atol=1e-5)
