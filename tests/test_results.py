"""One results protocol (jetjax._internal.results): every result type round-trips through a JSON file into an
equal object, holds no Model, has ``total`` as a value where it has one, and its deprecated spellings warn
and give what the new names give."""

import dataclasses
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import jetjax as jj
from jetjax.models.model import Model
from jetjax.ngrams import NGramTable, diff_tables, keyword_mass
from jetjax.ngrams.analysis import KeywordMass, TableDiff
from jetjax.paths.attribution import PathScores
from jetjax.paths.expand import Expansion
from jetjax.paths.frozen import FrozenPaths
from jetjax.paths.graph import AttributionGraph
from jetjax.paths.results import PathAttribution, TopPaths
from jetjax.studies.diffing import BigramDiff, DataCheck, bigram_diff, data_check
from jetjax.testing import tiny_model

IDS = [3, 1, 4]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def worded():
    """Two tiny models sharing a one-word-per-id tokenizer (``w0 .. w18``)."""
    pair = tiny_model(seed=1), tiny_model(seed=2)
    v = pair[0].config.vocab_size
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(v)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    for m in pair:
        m.tokenizer = tok
    return pair


def _expansion_of_a_pytree():
    centres = {"x": jnp.asarray([[0.1, 0.2, 0.3], [0.5, -0.1, 0.0]], jnp.float32)}
    fn = lambda d: {"sin": jnp.sin(d["x"]), "pair": (d["x"] ** 2, jnp.cos(d["x"]))}   # noqa: E731
    return jj.expand(fn, centres, {"x": jnp.asarray([0.3, 0.1, -0.2], jnp.float32)}, 2)


def _tables(worded):
    return [jj.jet_bigrams(m, "emb>mlp0>dec", top_k=3, progress=False) for m in worded]


BUILDERS = {
    "lens-iterative-batch": lambda m, w: jj.iterative_jet_lens(w[0], [[1, 2, 3], [4, 5, 6]], order=1),
    "lens-joint": lambda m, w: jj.joint_jet_lens(w[0], [1, 2, 3], fit_steps=3),
    "lens-logit-no-tokenizer": lambda m, w: jj.logit_lens(m, IDS, granularity="branch"),
    "attribution-jet": lambda m, w: jj.path_attribution(m, IDS, target=7, foil=2),
    "attribution-search": lambda m, w: jj.path_attribution(m, IDS, target=7, foil=2, method="search", k=3),
    "top-paths": lambda m, w: jj.top_paths(m, IDS, 5, target=7, foil=2),
    "path-scores": lambda m, w: jj.reduce_paths(m, IDS, top_k=2),
    "frozen-paths": lambda m, w: jj.frozen_path_streams(m, IDS),
    "expansion": lambda m, w: jj.expand_all(m, IDS),
    "expansion-pytree": lambda m, w: _expansion_of_a_pytree(),
    "ngram-table": lambda m, w: _tables(w)[0],
    "table-diff": lambda m, w: diff_tables(*_tables(w), n=4, models=w),
    "keyword-mass": lambda m, w: keyword_mass(_tables(w)[0], ["w1", "w5", "nothing here"], model=w[0]),
    "data-check": lambda m, w: data_check(*w, "w1 w2 w3 w1 w2 w4 w5 w1 w3 " * 5, paths=("emb>mlp0>dec",),
                                          min_count=1, n_top=2, n_shuffles=10),
    "bigram-diff": lambda m, w: bigram_diff(*w, ("emb>mlp0>dec",), n=3, top_k=3, progress=False),
    "attribution-graph": lambda m, w: jj.attribution_graph(m, IDS, target=7, foil=2),
    "attribution-graph-heads-mean": lambda m, w: jj.attribution_graph(m, IDS, target=7, foil=2, heads=True,
                                                                      baseline="mean", reference=[[1, 2], [5, 6, 0]]),
}

TYPES = {"lens": jj.LensResult, "attribution": PathAttribution, "top-paths": TopPaths, "path-scores": PathScores,
         "frozen-paths": FrozenPaths, "expansion": Expansion, "ngram-table": NGramTable, "table-diff": TableDiff,
         "keyword-mass": KeywordMass, "data-check": DataCheck, "bigram-diff": BigramDiff,
         "attribution-graph": AttributionGraph}


@pytest.fixture(scope="module")
def built(model, worded):
    cache = {}

    def get(name):
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)     # keyword_mass: a keyword with no token
                cache[name] = BUILDERS[name](model, worded)
        return cache[name]

    return get


def assert_same(a, b, where="result"):
    """Field by field (recursing into dataclasses, dicts, lists, tuples): arrays equal with their dtype
    (NaN equal to NaN), everything else ``==``."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            if f.compare:       # a compare=False field is not part of the value (the graph's weak link to its model)
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, (np.ndarray, jnp.ndarray)) and not np.isscalar(a):
        assert isinstance(b, (np.ndarray, jnp.ndarray)), where
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b and type(a) is type(b), f"{where}: {a!r} vs {b!r}"


def _holds_model(value) -> bool:
    if isinstance(value, Model):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_holds_model(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return any(_holds_model(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_model(v) for v in value)
    return False


@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip_through_a_file(built, tmp_path, name):
    res = built(name)
    cls = TYPES[max((k for k in TYPES if name.startswith(k)), key=len)]
    assert type(res) is cls
    assert not _holds_model(res)
    path = tmp_path / "result.json"
    text = res.to_json(path)
    assert path.read_text(encoding="utf-8") == text and "NaN" not in text.replace('"NaN"', "")
    loaded = cls.load(path)
    assert_same(res, loaded)
    assert_same(res, cls.from_json(text))
    assert loaded.to_json() == text                      # and it writes the same file again
    assert isinstance(res.table(3), str) and res.table(3) == loaded.table(3)
    if hasattr(cls, "top"):
        assert loaded.top(3) == res.top(3) if not isinstance(res, jj.LensResult) else \
            all(np.array_equal(x, y) for x, y in zip(loaded.top(3), res.top(3)))


@pytest.mark.parametrize("name", ["attribution-jet", "top-paths", "frozen-paths", "expansion", "expansion-pytree"])
def test_total_is_a_value(built, name):
    res = built(name)
    assert not callable(res.total)
    if isinstance(res, (PathAttribution, TopPaths)):      # the model's own number
        assert isinstance(res.total, float)
    else:                                                 # Σ terms, a pytree like one term
        leaves = jax.tree_util.tree_leaves(res.total)
        assert len(leaves) == len(jax.tree_util.tree_leaves(res.terms))
        for got, terms in zip(leaves, jax.tree_util.tree_leaves(res.terms)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(terms).sum(0), rtol=1e-5, atol=1e-6)


def test_frozen_and_expanded_totals_add_up(model):
    paths = jj.frozen_path_streams(model, IDS)
    np.testing.assert_allclose(np.asarray(paths.total + paths.remainder), np.asarray(paths.stream), atol=1e-5)
    exp = jj.expand_all(model, IDS)
    np.testing.assert_allclose(np.asarray(exp.total + exp.remainder), np.asarray(model.logits(jnp.asarray(IDS))),
                               atol=1e-4)


def test_top_ranks_what_the_docstrings_say(built):
    scores = built("path-scores")
    assert scores.top(2) == [(scores.labels[i], float(scores.scores[i])) for i in scores.top_indices[:2]]
    frozen = built("frozen-paths")
    norms = [float(np.linalg.norm(np.asarray(frozen.term(lab), np.float64))) for lab, _ in frozen.top(None)]
    assert norms == sorted(norms, reverse=True) and len(norms) == len(frozen)
    lens = built("lens-joint")
    ids, probs = lens.top(2, which="combined")
    assert ids.shape == probs.shape == (3, 2) and (probs[..., 0] >= probs[..., 1]).all()
    check = built("data-check")
    rhos = [rho for _, rho in check.top(10)]
    assert rhos == sorted(rhos, reverse=True)
    diff = built("table-diff")
    assert [d for *_, d in diff.top(4)] == [r["delta"] for r in diff.gained_prob[:4]]


def test_deprecated_spellings_warn_and_agree(built):
    scores = built("path-scores")
    with pytest.warns(DeprecationWarning, match="PathScores.top"):
        assert scores.ranked(3) == scores.top(3)
    with pytest.warns(DeprecationWarning, match="top_indices"):
        np.testing.assert_array_equal(np.asarray(scores.top), scores.top_indices)
    with pytest.warns(DeprecationWarning, match="top_indices"):
        assert [int(i) for i in scores.top] == scores.top_indices.tolist()
    lens = built("lens-joint")
    with pytest.warns(DeprecationWarning, match=r"LensResult.top\(n\)"):
        old = lens.top_k(3, which="model")
    for x, y in zip(old, lens.top(3, which="model")):
        np.testing.assert_array_equal(x, y)
    with pytest.warns(DeprecationWarning, match="row_indices"):
        assert lens.layers == lens.row_indices


def test_lens_keeps_the_vocabulary_not_the_model(built):
    lens = built("lens-iterative-batch")
    assert lens.vocab[:3] == ("w0", "w1", "w2") and lens.input_tokens()[1] == ["w4", "w5", "w6"]
    assert built("lens-logit-no-tokenizer").top_tokens(1)[0][0][0].startswith("#")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lens.kind = "joint"


def test_lens_summary_json_is_the_command_s_and_does_not_load(built):
    lens = built("lens-joint")
    summary = json.loads(lens.to_json(arrays=False))
    full = json.loads(lens.to_json())
    assert set(full) - set(summary) == {"format", "version", "arrays", "vocab"}
    assert all(full[k] == summary[k] for k in summary)
    with pytest.raises(ValueError, match="without its arrays"):
        jj.LensResult.from_dict(summary)


def test_loading_the_wrong_file_says_so(built, tmp_path):
    path = tmp_path / "scores.json"
    built("path-scores").to_json(path)
    with pytest.raises(ValueError, match="not a jetjax FrozenPaths"):
        FrozenPaths.load(path)
    table = built("ngram-table")
    saved = NGramTable.load(table.save(tmp_path / "dir"))        # a directory still loads as before
    assert_same(table, saved)


@pytest.mark.parametrize("name", ["lens-joint", "attribution-jet", "top-paths", "path-scores", "frozen-paths",
                                  "expansion", "ngram-table", "table-diff", "keyword-mass", "data-check",
                                  "bigram-diff", "attribution-graph"])
def test_to_dataframe(built, name):
    res = built(name)
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pandas"):
            res.to_dataframe()
        return
    frame = res.to_dataframe()
    assert len(frame) > 0
