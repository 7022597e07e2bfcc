"""Corpus agreement, computed for all contexts at once, against a per-context loop with scipy's own
``spearmanr`` and ``logsumexp`` (the definitions in :func:`jetjax.ngrams.corpus_agreement`'s docstring)."""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import spearmanr

from jetjax.ngrams.agreement import CorpusBigrams


def reference(successors, top1_of, logq_of):
    hits, rhos, kls = [], [], []
    for z1, (nxt, c) in successors.items():
        hits.append(top1_of(z1) in set(nxt[c == c.max()].tolist()))
        logq = np.asarray(logq_of(z1, nxt), np.float64)
        if len(nxt) > 1 and np.ptp(c) > 0 and np.ptp(logq) > 0:
            rhos.append(spearmanr(c, logq).statistic)
        p_hat = c / c.sum()
        kls.append(float(np.sum(p_hat * (np.log(p_hat) - (logq - logsumexp(logq))))))
    return np.mean(hits), (np.mean(rhos) if rhos else np.nan), np.mean(kls)


def corpus(rng, n_ctx, v, *, ties):
    contexts = np.sort(rng.choice(v, n_ctx, replace=False))
    successors = {}
    for z in contexts:
        m = int(rng.integers(1, 9))
        nxt = np.sort(rng.choice(v, m, replace=False))
        counts = rng.integers(1, 4 if ties else 1000, m).astype(np.float64)
        successors[int(z)] = (nxt, counts)
    unigram = rng.integers(1, 50, v).astype(np.float64)
    return CorpusBigrams(n_tokens=1000, min_count=1, contexts=contexts, successors=successors, unigram=unigram)


@pytest.mark.parametrize("ties", [False, True])
def test_all_contexts_at_once_equal_the_per_context_definition(ties):
    rng = np.random.default_rng(3 + ties)
    v = 37
    cb = corpus(rng, 23, v, ties=ties)
    logits = rng.normal(size=(23, v)) * 3
    if ties:   # equal predictions within a context, and one peaked row far below float64's smallest probability
        logits[:, ::2] = np.round(logits[:, ::2])
        logits[5] = np.where(np.arange(v) % 3 == 0, 0.0, -900.0)
    logp = logits - logsumexp(logits, axis=1, keepdims=True)
    top1 = rng.integers(0, v, 23)
    top1[:8] = [cb.successors[int(z)][0][np.argmax(cb.successors[int(z)][1])] for z in cb.contexts[:8]]   # some hits
    row = {int(z): r for r, z in enumerate(cb.contexts)}
    got = cb.agreement(top1, logp.astype(np.float32))
    want = reference(cb.successors, lambda z: int(top1[row[z]]),
                     lambda z, nxt: logp.astype(np.float32)[row[z], nxt])
    assert got.top1_hit_rate == pytest.approx(want[0], abs=0) and got.top1_hit_rate >= 8 / 23
    assert got.rank_correlation == pytest.approx(want[1], rel=1e-12, abs=1e-12)
    assert got.kl == pytest.approx(want[2], rel=1e-12)
    support = np.mean([np.exp(logp.astype(np.float32)[row[z], nxt].astype(np.float64)).sum()
                       for z, (nxt, _) in cb.successors.items()])
    assert got.support_mass == pytest.approx(support, rel=1e-12)
    u = cb.unigram
    base = reference(cb.successors, lambda z: int(np.argmax(u)), lambda z, nxt: np.log(u[nxt] / u.sum()))
    assert [got.unigram[k] for k in ("top1_hit_rate", "rank_correlation", "kl")] == pytest.approx(list(base), rel=1e-12)


def test_no_context_with_varying_counts_gives_nan_correlation():
    cb = CorpusBigrams(n_tokens=10, min_count=1, contexts=np.array([0, 1]),
                       successors={0: (np.array([1]), np.array([3.0])), 1: (np.array([0, 2]), np.array([2.0, 2.0]))},
                       unigram=np.ones(3))
    got = cb.agreement(np.array([1, 2]), np.log(np.full((2, 3), 1 / 3)))
    assert np.isnan(got.rank_correlation) and got.top1_hit_rate == 1.0
    assert got.kl == pytest.approx(0.0, abs=1e-12)    # p̂ and the renormalised prediction are both uniform
