"""Non-finite numbers are never passed on silently: lenses, attribution, their JSON and the CLI say so."""

import json
import warnings

import numpy as np
import pytest

import jetjax as jj
from jetjax.lenses import lens as lenses
from jetjax._internal.checks import count_nonfinite, json_safe
from jetjax.models import ModelConfig, random_model
from jetjax.models.model import Model

CFG = ModelConfig(arch="gpt2", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=11,
                  n_positions=8, norm_eps=1e-5, activation="gelu_new")


def _poisoned(edit):
    """A random model whose parameters ``edit`` changes (in a copy)."""
    base = random_model(CFG, scale=0.5)
    params = {**base.params}
    edit(params)
    return Model(base.module(params), params)


def test_json_safe_and_count_nonfinite():
    assert json.dumps(json_safe([1.5, float("nan"), {"x": np.float32(-np.inf)}, (np.int64(3),)])) == \
        '[1.5, null, {"x": null}, [3]]'
    assert count_nonfinite(np.array([0.0, np.nan, np.inf, -np.inf, 2.0])) == 3
    assert count_nonfinite(np.arange(4)) == 0


def test_lens_with_nan_weight_names_rows_and_writes_valid_json():
    def nan_in_mlp1(p):
        h = dict(p["h"])
        h[1] = {**h[1], "mlp": {**h[1]["mlp"], "c_proj": {**h[1]["mlp"]["c_proj"],
                                                            "bias": h[1]["mlp"]["c_proj"]["bias"].at[0].set(np.nan)}}}
        p["h"] = h
    model = _poisoned(nan_in_mlp1)
    lens = lenses.logit_lens(model, [1, 2, 3])
    with pytest.warns(RuntimeWarning, match=r"logit lens \(order 0\): non-finite logits in row\(s\) h2 and the model's own logits"):
        metrics = lens.metrics
    assert lens.nonfinite_rows == ("h2",)           # h0, h1 are before the NaN, h2 after it
    assert np.isfinite(metrics["entropy"][:2]).all() and not np.isfinite(metrics["entropy"][2]).any()
    text = lens.to_json()
    doc = json.loads(text)                          # valid JSON: no bare NaN
    assert "NaN" not in text and doc["nonfinite_rows"] == ["h2"]
    assert doc["metrics"]["entropy"][2] == [None, None, None] and doc["model_logits_finite"] is False


def test_lens_on_finite_model_warns_nothing():
    lens = lenses.iterative_jet_lens(random_model(CFG), [1, 2, 3], order=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lens.nonfinite_rows == ()
        assert json.loads(lens.to_json())["nonfinite_rows"] == []


def test_attribution_total_is_indexed_not_a_one_hot_dot():
    # An inf in the embedding row of an unrelated token makes that token's logit inf; a dot of the
    # logits with a one-hot direction turned it into NaN (inf * 0). The total is read by indexing.
    model = random_model(CFG, scale=0.5)
    ids = [1, 2, 3]
    att = jj.path_attribution(model, ids, target=4, foil=6)
    logits = np.asarray(model.logits(np.array(ids)))[-1]
    assert att.total == pytest.approx(float(logits[4] - logits[6]), rel=1e-6)
    assert att.total - float(att.scores.sum()) == pytest.approx(att.remainder, abs=1e-9)


def test_attribution_with_nonfinite_scores_warns_and_reports():
    def inf_wte(p):
        p["wte"] = p["wte"].at[3, 0].set(np.inf)   # token 3 is in the prompt: its stream is non-finite
    model = _poisoned(inf_wte)
    with pytest.warns(RuntimeWarning, match=r"path_attribution: \d+ of \d+ path scores and the model total are NaN or inf"):
        att = jj.path_attribution(model, [1, 2, 3], target=4)
    assert att.table().startswith("WARNING: ")
    doc = json.loads(att.to_json())
    assert doc["nonfinite"] >= 1 and "NaN" not in att.to_json()


@pytest.mark.parametrize("n", [-1, -5, 2.0, True])
def test_attribution_counts_must_be_non_negative_ints(n):
    att = jj.path_attribution(random_model(CFG), [1, 2, 3], target=4)
    for method in (att.top, att.bottom, att.table):
        with pytest.raises(ValueError, match=rf"n must be a non-negative int, got {n!r}"):
            method(n)


def test_cli_json_output_stays_valid_json_with_nan(tmp_path, capsys):
    import argparse

    from jetjax.cli import common

    out = tmp_path / "out.json"
    common.emit(argparse.Namespace(json=str(out)), {"kl": [0.5, float("nan")], "x": np.float32(np.inf)})
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kl": [0.5, None], "x": None}


def test_bigram_table_with_inf_embedding_row_warns_naming_contexts():
    from jetjax.ngrams import jet_bigrams

    def inf_wte(p):
        p["wte"] = p["wte"].at[5, 0].set(np.inf)
    # tied embeddings: the inf is also in the unembedding, so token 5's logit is inf in every row
    with pytest.warns(RuntimeWarning, match=r"11 of 11 rows of the bigrams table have non-finite logits "
                                            r"\(first contexts: \[\[0\], \[1\]"):
        table = jet_bigrams(_poisoned(inf_wte), "emb>dec", top_k=2, progress=False)
    assert not np.isfinite(table.logsumexp).any()


def test_bigram_table_of_finite_model_warns_nothing():
    from jetjax.ngrams import jet_bigrams

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        table = jet_bigrams(random_model(CFG), "emb>dec", top_k=2, progress=False)
    assert np.isfinite(table.logsumexp).all()
