"""Model diffing (jetjax.studies.diffing) on a tiny Llama and the same model with an MLP LoRA adapter:
every figure against a by-hand computation from the residual functions (not the sweep or scorer)."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from tokenizers import Tokenizer, models, pre_tokenizers

from jetjax.io.adapters import init_lora, merge_adapter
from jetjax.studies.diffing import bigram_diff, data_check
from jetjax.models import ModelConfig, random_model

V = 23


@pytest.fixture(scope="module")
def pair():
    cfg = ModelConfig(arch="llama", n_layers=2, d_model=12, n_heads=2, d_head=6, d_mlp=17, vocab_size=V,
                      n_positions=32, n_kv_heads=1, norm_eps=1e-5, activation="silu")
    base = random_model(cfg, seed=3, scale=0.3)
    adapter = init_lora(base, rank=2, targets=("gate_proj", "down_proj"), seed=1)
    rng = np.random.default_rng(2)
    adapter = adapter.with_weights(adapter.a, {k: rng.standard_normal(b.shape).astype(np.float32) * 0.5
                                               for k, b in adapter.b.items()})
    tuned = merge_adapter(base, adapter)
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(V)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    base.tokenizer = tuned.tokenizer = tok
    return base, tuned


def _jet_logp(model, layer):
    """log P(z2 | z1) of emb>mlp{layer}>dec for every z1 (rows), composed by hand."""
    z = np.arange(V)[:, None]
    logits = np.asarray(model.decode(model.mlp(layer, model.token_embed(z))), np.float64)[:, -1]
    return logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)


def _model_logp(model):
    logits = np.asarray(model.logits(np.arange(V)[:, None]), np.float64)[:, -1]
    m = logits.max(1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))


def test_data_check_equals_a_by_hand_computation(pair):
    base, tuned = pair
    rng = np.random.default_rng(0)
    ids = rng.choice(V, size=600, p=np.arange(1, V + 1) / np.arange(1, V + 1).sum())
    text = " ".join(f"w{i}" for i in ids)
    check = data_check(base, tuned, text, paths=("emb>mlp1>dec",), n_contexts=10, min_count=3, n_top=8,
                       n_shuffles=200)
    # by hand: the 10 most frequent contexts, every observed successor, once each
    counts = np.bincount(ids[:-1], minlength=V)
    ctx = np.sort(np.argsort(-counts, kind="stable")[:10])
    pairs = sorted({(int(a), int(b)) for a, b in zip(ids[:-1], ids[1:]) if a in ctx})
    rows, nxt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    assert check.n_pairs == len(pairs) and check.n_contexts == 10
    d_jet = (_jet_logp(tuned, 1) - _jet_logp(base, 1))[rows, nxt]
    d_model = (_model_logp(tuned) - _model_logp(base))[rows, nxt]
    assert check.spearman_dlogp == pytest.approx(spearmanr(d_jet, d_model).statistic, abs=1e-6)
    dp_jet = (np.exp(_jet_logp(tuned, 1)) - np.exp(_jet_logp(base, 1)))[rows, nxt]
    dp_model = (np.exp(_model_logp(tuned)) - np.exp(_model_logp(base)))[rows, nxt]
    assert check.spearman_dp == pytest.approx(spearmanr(dp_jet, dp_model).statistic, abs=1e-6)
    top = lambda d: set(np.argsort(-d)[:8].tolist())  # noqa: E731
    assert check.top_overlap == len(top(dp_jet) & top(dp_model)) / 8
    # single paths: emb>dec has no MLP, so the adapter cannot move it
    assert check.per_path["emb>dec"] is None
    d0 = (_jet_logp(tuned, 0) - _jet_logp(base, 0))[rows, nxt]
    assert check.per_path["emb>mlp0>dec"] == pytest.approx(spearmanr(d0, d_model).statistic, abs=1e-6)
    # chance level: |rho| of shuffled pairs is small on average, and below the 95th percentile it reports
    mean, p95 = check.shuffled["spearman_dlogp"]
    assert 0 <= mean < p95 < 1
    assert "Spearman" in check.to_markdown()


def test_bigram_diff_against_full_tables_by_hand(pair):
    base, tuned = pair
    res = bigram_diff(base, tuned, ("emb>mlp1>dec",), n=5, top_k=3, progress=False)
    pa, pb = np.exp(_jet_logp(base, 1)), np.exp(_jet_logp(tuned, 1))
    assert res.top1_changed == pytest.approx(np.mean(pa.argmax(1) != pb.argmax(1)))
    best = res.diff.gained_prob[0]
    # the largest gain among entries in either table's top 3, as diff_tables defines its candidates
    top3 = lambda p: {(r, c) for r in range(V) for c in np.argsort(-p[r])[:3]}  # noqa: E731
    cands = top3(pa) | top3(pb)
    want = max(cands, key=lambda rc: pb[rc] - pa[rc])
    assert (best["context_ids"][0], best["next_id"]) == want
    assert best["delta"] == pytest.approx(pb[want] - pa[want], abs=1e-5)
    same = bigram_diff(base, tuned, ("emb>dec",), n=3, top_k=2, progress=False)
    assert same.top1_changed == 0.0 and all(r["delta"] == 0 for r in same.diff.gained_prob)
    assert "top-1 next token changed" in res.to_markdown()


def test_ngram_dynamics_by_hand(pair):
    import jetjax as jj
    from jetjax.ngrams import ngram_dynamics

    base, tuned = pair
    k = 12
    tables = [jj.jet_bigrams(m, "emb>mlp1>dec", top_k=2, global_k=k, progress=False) for m in (base, tuned)]
    dyn = ngram_dynamics(tables, k=k, models=[base, tuned], labels=["base", "tuned"])
    pa, pb = np.exp(_jet_logp(base, 1)), np.exp(_jet_logp(tuned, 1))
    top = lambda p: set(np.argsort(-p.reshape(-1), kind="stable")[:k].tolist())  # noqa: E731
    assert dyn.hit_ratio == [len(top(pa) & top(pb)) / k, 1.0]
    assert dyn.own_mass[0] == pytest.approx(np.sort(pa.reshape(-1))[-k:].sum() / k, abs=1e-5)
    final_top = np.array(sorted(top(pb)))
    assert dyn.final_mass[0] == pytest.approx(pa.reshape(-1)[final_top].sum() / k, abs=1e-5)
    assert dyn.final_mass[1] == pytest.approx(dyn.own_mass[1], abs=1e-5)
    with pytest.raises(ValueError, match="keep fewer than k=13 global pairs"):
        ngram_dynamics(tables, k=13)
