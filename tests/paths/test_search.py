"""Path search (``jetjax.paths.search.top_paths``) against full enumeration of the frozen paths.

The reference is :func:`jetjax.frozen_path_attribution` (every path enumerated and scored) on
10- and 12-layer random models at block granularity and a 5-layer one at branch granularity;
the model's own logits check the exact ``explored + unexplored`` identity.
"""

import json

import jax
import numpy as np
import pytest

import jetjax as jj
from jetjax.paths import search
from jetjax.paths.frozen import frozen_linear, frozen_path_attribution
from jetjax.models import ModelConfig, random_model
from jetjax._internal.parallel import path_mesh
from jetjax.paths.search import TopPaths, top_paths

IDS = [3, 1, 4, 1, 5]
TARGET, FOIL = 7, 2


def _model(n_layers, arch="gpt2", seed=0):
    extra = dict(arch="gpt2", n_positions=8, activation="gelu_new") if arch == "gpt2" else dict(
        arch="gpt_neox", n_positions=None, activation="gelu", parallel_residual=True, rope_dim=4,
        tie_embeddings=False)
    cfg = ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                      norm_eps=1e-5, **extra)
    return random_model(cfg, scale=0.5, seed=seed)


@pytest.fixture(scope="module")
def models():
    return {10: _model(10), 12: _model(12, seed=1), "branch": _model(5, seed=2), "neox": _model(3, "gpt_neox")}


def _direction(score):
    d = np.zeros(19)
    d[TARGET] = 1.0
    if score == "logit_diff":
        d[FOIL] = -1.0
    if score == "centered_logit":
        d -= 1 / 19
    return d


def _enumerated(model, granularity, score, by):
    """Every frozen path's score under ``score``, sorted best first under ``by`` (labels, scores)."""
    d = _direction(score)
    # a direction score is linear in the logits: the sum of the per-token attributions
    parts = {}
    for tok in np.flatnonzero(d):
        att = frozen_path_attribution(model, IDS, target=int(tok), granularity=granularity)
        for lab, s in zip(att.labels, att.scores):
            parts[lab] = parts.get(lab, 0.0) + d[tok] * s
    labels = list(parts)
    scores = np.array([parts[lab] for lab in labels])
    key = {"abs": np.abs(scores), "positive": scores, "negative": -scores}[by]
    order = np.argsort(-key, kind="stable")
    return [labels[i] for i in order], scores[order], parts


def _kwargs(score):
    if score == "logit_diff":
        return dict(target=TARGET, foil=FOIL, score=score)
    if score == "direction":
        return dict(score=_direction("logit_diff"))
    return dict(target=TARGET, score=score)


@pytest.mark.parametrize("layers,granularity,score,by,k,certifies", [
    (10, "block", "logit_diff", "abs", 10, True),
    (12, "block", "direction", "negative", 5, None),
    ("branch", "branch", "centered_logit", "positive", 7, None),
])
def test_search_equals_enumeration(models, layers, granularity, score, by, k, certifies):
    model = models[layers]
    ref_labels, ref_scores, parts = _enumerated(model, granularity, "logit_diff" if score == "direction" else score,
                                                by)
    assert len(ref_labels) == jj.count_frozen_paths(model.config.n_layers, granularity) + 1
    # a beam of a quarter of the paths, and the exhaustive beam
    for beam in (len(ref_labels) // 4, len(ref_labels)):
        res = top_paths(model, IDS, k, granularity=granularity, by=by, beam=beam, **_kwargs(score))
        assert isinstance(res, TopPaths) and len(res) == k and res.n_paths == len(ref_labels)
        for lab, s in res.top():   # every returned score is the enumerated one, certified or not
            assert s == pytest.approx(parts[lab], abs=2e-5)
        assert abs(res.residual) < 1e-4 * max(1.0, abs(res.total))
        if beam == len(ref_labels):
            assert res.certified and res.bound == 0.0 and res.unexplored == 0.0
        elif certifies:   # this case is known to certify with the small beam, while scoring fewer paths
            assert res.certified and res.bound <= abs(res.scores[-1]) and res.n_scored < len(ref_labels)
        if res.certified:
            assert list(res.labels) == ref_labels[:k]
            np.testing.assert_allclose(res.scores, ref_scores[:k], atol=2e-5)


def test_uncertified_search_adds_up_and_says_so(models):
    """A beam of 4 on 12 layers proves nothing, but what it scored plus the exact unexplored sum is the model."""
    model = models[12]
    res = top_paths(model, IDS, 3, target=TARGET, foil=FOIL, granularity="block", beam=4)
    assert not res.certified and res.bound > abs(res.scores[-1])
    logits = np.asarray(model.logits(np.asarray(IDS)), np.float64)[-1]
    assert res.total == pytest.approx(logits[TARGET] - logits[FOIL], rel=1e-5)
    assert res.explored + res.unexplored == pytest.approx(res.total, abs=1e-4)
    assert res.unexplored != 0.0
    assert "NOT certified" in res.table()
    assert json.loads(res.to_json())["certified"] is False


def test_parallel_residual_and_position(models):
    model = models["neox"]
    ref_labels, ref_scores, _ = _enumerated(model, "branch", "logit_diff", "abs")
    res = top_paths(model, IDS, 6, target=TARGET, foil=FOIL, beam=len(ref_labels))
    assert list(res.labels) == ref_labels[:6]
    att = frozen_path_attribution(model, IDS, target=TARGET, foil=FOIL, position=2)
    res = top_paths(model, IDS, 4, target=TARGET, foil=FOIL, position=2, beam=len(att.labels))
    best = sorted(zip(att.labels, att.scores), key=lambda p: -abs(p[1]))[:4]
    assert list(res.labels) == [lab for lab, _ in best]


def test_operator_norm_estimate_covers_the_exact_norm():
    """Power iteration (times the margin) is not below the exact operator norm of a frozen component."""
    import jax.numpy as jnp
    model = _model(2)
    x = model.embed(jnp.asarray(IDS))
    for kind in ("attn", "mlp"):
        _, _, lin, lin_t = frozen_linear(lambda v: getattr(model, kind)(1, v), x)
        exact = float(search._op_norm(lin, lin_t, x, exact=True))
        est = float(search._op_norm(lin, lin_t, x, exact=False))
        mat = np.asarray(jax.vmap(lin)(jnp.eye(x.size).reshape((x.size,) + x.shape))).reshape(x.size, x.size)
        assert exact == pytest.approx(np.linalg.svd(mat, compute_uv=False)[0], rel=1e-4)
        assert exact <= est <= exact * search.NORM_MARGIN * 1.001


def test_mesh_gives_the_same_result(models):
    model = models[10]
    one = top_paths(model, IDS, 5, target=TARGET, foil=FOIL, granularity="block", beam=64)
    four = top_paths(model, IDS, 5, target=TARGET, foil=FOIL, granularity="block", beam=64,
                     mesh=path_mesh(jax.devices()[:4]))
    assert one.labels == four.labels
    np.testing.assert_allclose(four.scores, one.scores, atol=1e-5)
    assert four.unexplored == pytest.approx(one.unexplored, abs=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=0), "k must be an int >= 1, got 0"),
    (dict(k=2.5), "k must be"),
    (dict(k=True), "k must be"),
    (dict(score="logprob"), "unknown score 'logprob'"),
    (dict(by="largest"), "unknown ranking"),
    (dict(priority="random"), "unknown priority='random'"),
    (dict(k=50, beam=10), "beam=10 is too small to return k=50"),
    (dict(beam=0), "beam must be an int >= 1"),
    (dict(score=np.ones(5), target=None, foil=None), r"shape \(19,\)"),
    (dict(score=np.ones(19), foil=None), "target/foil go with a named score"),
    (dict(score="logit_diff", foil=None), "needs a foil"),
    (dict(score="logit"), "takes no foil"),
    (dict(foil=TARGET), "same token"),
    (dict(target=None, foil=None), "needs a target"),
    (dict(position=5), "position 5 is out of range for a sequence of 5 tokens"),
    (dict(position=True), "position must be an int, got True"),
    (dict(granularity="layer"), "granularity"),
])
def test_bad_input_is_refused_before_work(kwargs, match):
    model = _model(2)
    args = dict(k=3, target=TARGET, foil=FOIL)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError, IndexError), match=match):
        top_paths(model, IDS, **args)


def test_k_above_the_number_of_paths_returns_all_with_a_warning():
    model = _model(1)
    with pytest.warns(UserWarning, match="exceeds the 4 paths"):
        res = top_paths(model, IDS, 9, target=TARGET, foil=FOIL, granularity="block", beam=16)
    assert len(res) == 4 and res.certified
    assert sorted(res.labels) == sorted(["emb>block0>dec", "bias>block0>dec", "emb>dec", "bias>dec"])


def test_closed_form_path_count_matches_the_plan():
    """count_frozen_paths no longer enumerates labels; its closed form equals the plan's length."""
    from jetjax.paths import frozen
    for layers in range(5):
        for granularity in ("block", "branch"):
            for parallel in (False, True):
                for max_length in (None, 0, 1, 2, 3):
                    plan = frozen._plan(layers, granularity, parallel, max_length)[1]
                    assert frozen.count_frozen_paths(layers, granularity, parallel_residual=parallel,
                                                     max_length=max_length) == len(plan)
    assert frozen.count_frozen_paths(30, "branch") == 2 ** 61 - 1   # 4^30 + (4^30 - 1): instant


def test_cli_search_on_the_shipped_model(capsys, tmp_path):
    from jetjax.cli import app as cli

    out_json = tmp_path / "search.json"
    code = cli.main(["search", "--model", "shakespeare", "--text", "To be, or not to", "--target", " be",
                     "--foil", " do", "--top", "5", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    got = json.loads(out_json.read_text())
    assert len(got["paths"]) == 5 and got["score"] == "logit_diff" and got["n_paths"] == 512
    assert got["explored"] + got["unexplored"] == pytest.approx(got["total"], abs=1e-4)
    assert got["paths"][0]["label"] in out and "certified" in out
    code = cli.main(["search", "--model", "no/such/model", "--text", "To be", "--target", " be", "--top", "50",
                     "--beam", "10"])   # refused before any model is looked for
    assert code == 2 and "--beam 10 is too small to return --top 50" in capsys.readouterr().err
