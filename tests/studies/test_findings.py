"""The studies behind the demo's findings, checked against independent code on the shipped model.

SmolLM2's figures are asserted in test_real_model.py (on the demo's own run).
"""

import numpy as np
import pytest

import jetjax as jj
from jetjax.studies import findings
from jetjax.io.assets import shipped_text
from jetjax.ngrams import corpus_agreement, sweep_contexts


@pytest.fixture(scope="module")
def shipped():
    return jj.load_shipped()


def test_lens_study_means_equal_the_lens_itself(shipped):
    """Padding and batching change nothing: the study's means equal per-prompt lens metrics."""
    prompts = ["To be, or not to be", "My lord", "KING.\nWhat say you"]
    study = findings.lens_study(shipped, prompts, orders=(0, 1), batch=2)
    for i, k in enumerate((0, 1)):
        per = [jj.iterative_jet_lens(shipped, shipped.tokenize(p), order=k).metrics for p in prompts]
        for name in ("cosine", "kl", "top1"):
            want = np.concatenate([m[name] for m in per], axis=1).mean(1)
            np.testing.assert_allclose(study.metrics[name][i], want, rtol=1e-4, atol=1e-4)
    assert study.n_positions == sum(len(shipped.tokenize(p)) for p in prompts)
    assert study.middle("cosine", 1) == pytest.approx(study.metrics["cosine"][1, 1:4].mean())


def test_bigram_study_agrees_with_the_ngram_sweep(shipped):
    """The study's one-compile path scores equal jet_bigrams' sweep and corpus_agreement."""
    study = findings.bigram_study(shipped, shipped_text(), n_contexts=60, n_top=3)
    for path in ("emb>mlp0>dec", "emb>attn1>dec"):
        table = sweep_contexts(shipped, np.asarray(sorted(_contexts(shipped)), np.int32)[:, None], [path], 5,
                               progress=False)
        ref = corpus_agreement(table, shipped_text(), shipped, min_count=1, n_contexts=60)
        got = study.results[path].agreement
        assert got.top1_hit_rate == pytest.approx(ref.top1_hit_rate)
        assert got.rank_correlation == pytest.approx(ref.rank_correlation, abs=1e-6)
        assert got.kl == pytest.approx(ref.kl, rel=1e-4)
        assert got.support_mass == pytest.approx(ref.support_mass, rel=1e-4)
    # the model on [z]: by definition it agrees with itself
    assert study.results["model [z]"].model_top1 == 1.0
    assert {"mean: attention-free", "mean: all length <= 1", "model [<|endoftext|> z]"} <= set(study.results)
    assert len(study.mlp_layers()) == shipped.config.n_layers


def _contexts(model):
    from jetjax.ngrams import corpus_bigrams

    return corpus_bigrams(shipped_text(), model.tokenizer, model.config.vocab_size, min_count=1,
                          n_contexts=60).contexts


def test_middle_rows():
    assert findings.middle_rows(30) == range(5, 26)
    assert list(findings.middle_rows(4)) == [1, 2, 3]
    assert sum(len(v) for v in findings.PROMPTS.values()) >= 20 and len(findings.PROMPTS) == 5
