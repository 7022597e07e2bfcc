"""Faithfulness measures of path attributions: hand-built cases and the model's own numbers."""

import json
import math

import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.attribution import PathAttribution, cancellation, remainder_ratio
from jetjax.models import ModelConfig, random_model


def _attribution(scores, total):
    scores = np.asarray(scores, np.float64)
    remainder = total - float(scores.sum())
    mass = abs(remainder) + float(np.abs(scores).sum())
    labels = tuple(f"emb>block{i}>dec" for i in range(len(scores)))
    return PathAttribution(labels, scores, total, remainder, abs(remainder) / mass if mass else 0.0, {}, {},
                           target=1, foil=None, position=0, order=0, granularity="block")


def test_cancelling_paths_are_flagged_though_the_share_looks_fine():
    # the case: 1831 paths summing to -707.54, a remainder of +711.67, model +4.13
    scores = np.concatenate([np.full(1000, 3.0), np.full(831, -(3000.0 + 707.5398) / 831)])
    att = _attribution(scores, 4.1263)
    assert att.remainder_share < 0.2                               # looks fine ...
    assert att.remainder_ratio == pytest.approx(711.6661 / 4.1263, rel=1e-6)   # ... but is not
    assert att.cancellation == pytest.approx((3000 + 3707.5398) / 707.5398, rel=1e-9)
    assert att.warning is not None and "less than half" in att.warning
    table = att.table(3)
    assert att.warning in table.splitlines()
    doc = json.loads(att.to_json())
    assert doc["explains_less_than_half"] is True and doc["remainder_ratio"] == pytest.approx(att.remainder_ratio)


def test_exact_decomposition_has_zero_remainder_and_no_warning():
    att = _attribution([1.5, 2.0, 0.5], 4.0)
    assert att.remainder == 0.0 and att.remainder_ratio == 0.0
    assert att.cancellation == 1.0                                  # all push the same way
    assert att.warning is None and "WARNING" not in att.table()
    assert _attribution([3.0, -1.0], 2.0).cancellation == 2.0


def test_edge_cases_of_the_measures():
    assert remainder_ratio(0.0, 0.0) == 0.0 and math.isinf(remainder_ratio(1.0, 0.0))
    assert cancellation([]) == 1.0 and math.isinf(cancellation([2.0, -2.0]))
    assert remainder_ratio(-3.0, 6.0) == 0.5                          # exactly half: no warning
    assert _attribution([3.0], 6.0).warning is None and _attribution([2.9], 6.0).warning is not None


def test_measures_of_a_real_attribution_against_the_models_logits():
    cfg = ModelConfig(arch="gpt2", n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, scale=0.5)
    ids = [3, 1, 4, 1]
    att = jj.path_attribution(model, ids, target=7, foil=2, granularity="branch", order=1)
    logits = np.asarray(model.logits(np.array(ids)), np.float64)[-1]
    total = logits[7] - logits[2]
    assert att.total == pytest.approx(total, rel=1e-5)
    paths = float(att.scores.sum())
    assert att.remainder_ratio == pytest.approx(abs(total - paths) / abs(total), rel=1e-4, abs=1e-6)
    assert att.cancellation == pytest.approx(np.abs(att.scores).sum() / abs(paths), rel=1e-9)


def test_path_scores_measures_against_expand_all():
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, scale=0.5)
    res = jj.reduce_paths(model, [3, 1, 4], granularity="branch", top_k=1)
    full = jj.expand_all(model, [3, 1, 4], granularity="branch")
    logits = np.asarray(model.logits(np.array([3, 1, 4])), np.float64)
    path_logits = np.asarray(full.terms, np.float64)            # [P, T, V], weighted terms
    assert full.labels == res.labels
    assert res.remainder_ratio == pytest.approx(np.linalg.norm(np.asarray(full.remainder)) / np.linalg.norm(logits),
                                                rel=1e-3)
    expected = sum(np.linalg.norm(p) for p in path_logits) / np.linalg.norm(path_logits.sum(0))
    assert res.cancellation == pytest.approx(expected, rel=1e-3)
    assert res.cancellation >= 1.0


def test_cli_paths_and_attribute_report_the_measures(capsys, tmp_path):
    from jetjax.paths.attribution import remainder_ratio as ratio_of
    from tests.cli.test_cli import run, run_json

    doc, _ = run_json(capsys, tmp_path, "paths", "--text", "To be, or not to be", "--top", "3", "--max-length", "2")
    assert doc["remainder_ratio"] > 0.5 and doc["cancellation"] >= 1.0   # short paths: an incomplete account
    code, out, _ = run(capsys, "paths", "--text", "To be, or not to be", "--top", "3", "--max-length", "2")
    assert code == 0 and "WARNING: the paths explain less than half" in out
    att, _ = run_json(capsys, tmp_path, "attribute", "--text", "To be, or not to be", "--target", " that",
                   "--max-length", "2")
    assert att["remainder_ratio"] == pytest.approx(ratio_of(att["remainder"], att["total"]), rel=1e-9)
    assert att["explains_less_than_half"] == (att["remainder_ratio"] > 0.5)


def test_cli_attribute_frozen_adds_up(capsys, tmp_path):
    from tests.cli.test_cli import run, run_json

    doc, _ = run_json(capsys, tmp_path, "attribute", "--text", "To be, or not to be, that is the", "--target",
                      " question", "--granularity", "branch", "--frozen")
    assert doc["semantics"] == "frozen" and doc["explains_less_than_half"] is False
    assert abs(doc["remainder"]) <= 1e-4 * max(1.0, abs(doc["total"]))     # every path kept: exact
    assert sum(p["score"] for p in doc["paths"]) == pytest.approx(doc["total"], rel=1e-4, abs=1e-4)
    code, _, err = run(capsys, "attribute", "--text", "To be", "--target", " question", "--frozen", "--order", "1")
    assert code == 2 and "--order 1 has no meaning with --method frozen" in err
