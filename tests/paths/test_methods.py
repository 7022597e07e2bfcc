"""``jj.path_attribution(method=...)``: the three ways of attributing, and the deep-model default.

References: ``method="jet"`` against the same call before methods existed (the jet path code under
its own settings), ``"frozen"`` against :func:`jetjax.frozen_path_attribution`, ``"search"``
against full enumeration of the frozen paths and against the model's own logits (the listed,
unlisted and unexplored parts must add up to the model's logit difference). The default on
SmolLM2 is checked in tests/test_real_model.py, on the demo's own run.
"""

import json

import numpy as np
import pytest

import jetjax as jj
from jetjax.cli import app as cli
from jetjax.paths.frozen import frozen_path_attribution
from jetjax.models import ModelConfig, random_model

IDS = [3, 1, 4, 1, 5]
TARGET, FOIL = 7, 2


def _model(n_layers, seed=0):
    cfg = ModelConfig(arch="gpt2", n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, scale=0.5, seed=seed)


@pytest.fixture(scope="module")
def model():
    return _model(4)


def _model_diff(model, ids, target, foil):
    logits = np.asarray(model.logits(np.asarray(ids)), np.float64)[-1]
    return float(logits[target] - logits[foil])


def test_auto_is_jet_on_a_shallow_model(model):
    auto = jj.path_attribution(model, IDS, TARGET, FOIL)
    jet = jj.path_attribution(model, IDS, TARGET, FOIL, method="jet")
    assert auto.method == jet.method == "jet" and auto.semantics == "jet"
    assert auto.labels == jet.labels and len(auto.labels) == jj.count_paths(4)
    np.testing.assert_array_equal(auto.scores, jet.scores)
    assert auto.search is None and auto.unlisted == 0.0 and auto.unexplored == 0.0


def test_auto_searches_when_enumeration_is_out_of_reach(model):
    # 2^4 = 16 block paths > max_paths=8: the model counts as deep, so "auto" searches (branch, k=20)
    att = jj.path_attribution(model, IDS, TARGET, FOIL, max_paths=8)
    assert att.method == "search" and att.semantics == "frozen" and att.granularity == "branch"
    assert len(att.labels) == 20 and att.search.beam == 256
    # the listed paths are the 20 largest |score| of full enumeration (certified on this small model)
    full = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity="branch")
    order = np.argsort(-np.abs(full.scores), kind="stable")[:20]
    assert att.search.certified
    assert set(att.labels) == {full.labels[i] for i in order}
    by_label = dict(zip(full.labels, full.scores))
    np.testing.assert_allclose(att.scores, [by_label[lab] for lab in att.labels], rtol=1e-4, atol=1e-5)
    # listed + unlisted + unexplored == the model's own number
    total = _model_diff(model, IDS, TARGET, FOIL)
    assert att.total == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert float(att.scores.sum()) + att.unlisted + att.unexplored == pytest.approx(total, rel=1e-4, abs=1e-4)
    assert att.remainder == pytest.approx(att.unlisted + att.unexplored + att.search.residual, abs=1e-9)
    # components over the listed paths; direct = one-component emb paths among them
    for name, value in att.direct.items():
        assert by_label[f"emb>{name}>dec"] == pytest.approx(value, rel=1e-4, abs=1e-5)
    text = att.table(5)
    assert "listed frozen paths" in text and "other scored paths" in text and "unexplored" in text
    d = json.loads(att.to_json())
    assert d["method"] == "search" and d["search"]["certified"] is True
    assert d["unexplored"] == pytest.approx(att.unexplored)


def test_jet_settings_keep_auto_on_jet(model):
    # any jet setting under "auto" means the paper's paths, even where a search would be chosen
    for kw in ({"max_length": 1}, {"order": 0, "max_length": 1}, {"weights": "unit", "max_length": 1}):
        att = jj.path_attribution(model, IDS, TARGET, FOIL, max_paths=8, **kw)
        assert att.method == "jet" and len(att.labels) == 1 + 4, kw
    with pytest.raises(ValueError, match="more than max_paths=8"):     # jet was chosen, and it has 16 paths
        jj.path_attribution(model, IDS, TARGET, FOIL, max_paths=8, order=0)


def test_frozen_method_is_frozen_path_attribution(model):
    att = jj.path_attribution(model, IDS, TARGET, FOIL, method="frozen", max_length=2)
    ref = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity="branch", max_length=2)
    assert att.method == "frozen" and att.labels == ref.labels
    np.testing.assert_array_equal(att.scores, ref.scores)
    full = jj.path_attribution(model, IDS, TARGET, FOIL, method="frozen", granularity="block")
    assert len(full.labels) == 2 * 2 ** 4   # 16 emb paths, 15 bias>… paths and bias>dec
    assert float(full.scores.sum()) == pytest.approx(_model_diff(model, IDS, TARGET, FOIL), rel=1e-4, abs=1e-4)


def test_search_method_with_k_beam_and_block(model):
    att = jj.path_attribution(model, IDS, TARGET, FOIL, method="search", k=3, beam=8, granularity="block")
    assert att.method == "search" and len(att.labels) == 3 and att.search.beam == 8
    assert all(lab.split(">")[1].startswith("block") or lab.startswith("bias>dec") for lab in att.labels)
    total = _model_diff(model, IDS, TARGET, FOIL)
    assert float(att.scores.sum()) + att.unlisted + att.unexplored == pytest.approx(total, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "magic"}, "unknown method='magic'; accepted: auto, jet, frozen, search"),
    ({"method": "jet", "k": 5}, "k= and beam= belong to method='search'"),
    ({"method": "frozen", "beam": 64}, "k= and beam= belong to method='search'"),
    ({"method": "search", "order": 1}, "order= set(s) the jet paths"),
    ({"method": "frozen", "weights": "uniform"}, "weights= set(s) the jet paths"),
    ({"method": "search", "max_length": 2}, "max_length= does not apply to method='search'"),
    ({"method": "search", "k": 30, "beam": 10}, "beam=10 is too small to return k=30"),
    ({"method": "search", "k": 0}, "k must be"),
])
def test_bad_method_arguments(model, kwargs, message):
    with pytest.raises((ValueError, TypeError)) as err:
        jj.path_attribution(model, IDS, TARGET, FOIL, **kwargs)
    assert message in str(err.value)


def test_jet_on_a_deep_model_still_refuses_enumeration():
    deep = _model(11)    # 4^11 branch paths
    with pytest.raises(ValueError, match="more than max_paths"):
        jj.path_attribution(deep, IDS, TARGET, FOIL, method="jet", granularity="branch")


@pytest.mark.parametrize("args, message", [
    (["--method", "jet", "--k", "5"], "--k and --beam belong to --method search"),
    (["--method", "search", "--order", "1"], "--order 1 has no meaning with --method search"),
    (["--frozen", "--method", "jet"], "--frozen is --method frozen"),
    (["--method", "search", "--max-length", "2"], "--max-length does not apply to --method search"),
    (["--beam", "5"], "--beam 5 is too small to return --k 20"),
])
def test_cli_method_errors_before_loading(capsys, monkeypatch, args, message):
    def refuse(*a, **k):
        pytest.fail("a model was loaded before the bad argument was reported")
    monkeypatch.setattr("jetjax.cli.attribute.load_model", refuse)
    rc = cli.main(["attribute", "--model", "/nonexistent/model", "--text", "x", "--target", "1"] + args)
    assert rc == 2
    assert message in capsys.readouterr().err


def test_auto_searches_when_the_path_streams_would_not_fit(monkeypatch):
    """``auto`` enumerates jet paths only when their streams fit AUTO_JET_BYTES; otherwise it searches,
    and an explicit ``method="jet"`` past the machine's memory is refused before any work."""
    from jetjax.paths import attribution
    from jetjax._internal import checks
    from jetjax.models import ModelConfig, random_model

    cfg = ModelConfig(arch="gpt2", n_layers=3, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new")
    model = random_model(cfg, scale=0.5)
    ids = [3, 1, 4, 1]
    assert jj.path_attribution(model, ids, target=7, foil=2).method == "jet"      # 8 paths x 4 x 16 floats
    monkeypatch.setattr(attribution, "AUTO_JET_BYTES", 8 * 4 * 16 * 4 - 1)        # one byte short
    assert jj.path_attribution(model, ids, target=7, foil=2).method == "search"
    monkeypatch.setattr(checks, "available_memory", lambda: 4 * 8 * 4 * 16 * 4 - 1)
    with pytest.raises(MemoryError, match=r"8 paths × 4 positions × d=16 .* method='search'"):
        jj.path_attribution(model, ids, target=7, foil=2, method="jet")
