"""PathSpec: one frozen, hashable value for the path settings, checked before any cache is touched."""

import numpy as np
import pytest

import jetjax as jj
from jetjax._internal.compiled import built
from jetjax.paths.labels import Component
from jetjax.paths.spec import PathSpec


@pytest.fixture(scope="module")
def shipped():
    return jj.load_shipped()


@pytest.mark.parametrize("a,b", [
    (dict(granularity="branch", include=["mlp1", "attn0"]), dict(granularity="branch", include=("attn0", "mlp1"))),
    (dict(granularity="branch", include=("attn0", "mlp1", "mlp1")),
     dict(granularity="branch", include=[Component("mlp", 1), Component("attn", np.int64(0))])),
    (dict(include="block2"), dict(include=["block2"])),
    (dict(max_length=2), dict(max_length=np.int64(2))),
    (dict(order=np.int32(1)), dict(order=1)),
    (dict(exclude=None), dict(exclude=[])),
    (dict(attention_free=np.bool_(True)), dict(attention_free=True)),
    (dict(granularity=np.str_("branch"), weights=np.str_("uniform")), dict(granularity="branch", weights="uniform")),
    ({}, dict(order=0, granularity="block", weights="unit", include=None, exclude=(), max_length=None,
              attention_free=False)),
])
def test_spellings_of_one_setting_are_equal_and_hash_equal(a, b):
    x, y = PathSpec(**a), PathSpec(**b)
    assert x == y and hash(x) == hash(y) and repr(x) == repr(y)
    assert len({x, y}) == 1
    assert type(x.order) is int and (x.max_length is None or type(x.max_length) is int)
    assert x.include is None or all(type(c) is Component for c in x.include)
    assert eval(repr(x), {"PathSpec": PathSpec}) == x      # the repr spells it back


def test_different_settings_differ():
    assert PathSpec(max_length=1) != PathSpec(max_length=2)
    assert PathSpec(include=()) != PathSpec(include=None)    # nothing allowed vs no filter
    assert PathSpec(order=1) != PathSpec(order=0)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(max_length=2.0), ValueError, r"max_length must be a non-negative int or None, got 2\.0"),
    (dict(max_length=True), ValueError, r"max_length must be a non-negative int or None, got True"),
    (dict(max_length=-1), ValueError, r"max_length must be a non-negative int or None, got -1"),
    (dict(granularity="layer"), ValueError, r"granularity must be one of \('block', 'branch'\), got 'layer'"),
    (dict(granularity=["block"]), ValueError, r"granularity must be one of .*, got \['block'\]"),
    (dict(order="1"), TypeError, r"jet order must be a non-negative Python int, got '1'"),
    (dict(order=True), TypeError, r"got True"),
    (dict(order=-1), ValueError, r"order must be >= 0, got -1"),
    (dict(weights="softmax"), ValueError, r"weights must be 'unit' or 'uniform'.*got 'softmax'"),
    (dict(weights=np.ones(2)), ValueError, r"weights must be 'unit' or 'uniform'.*array"),
    (dict(include=["ffn1"]), ValueError, r"include: bad component name: 'ffn1' is not a component"),
    (dict(include=["mlp01"], granularity="branch"), ValueError, r"'mlp01' has a leading zero; write 'mlp1'"),
    (dict(exclude=["mlp1"]), ValueError, r"exclude names mlp1, a branch component, but granularity='block'"),
    (dict(include=3), ValueError, r"include must be a list of component names .*got 3"),
    (dict(attention_free=1), ValueError, r"attention_free must be True or False, got 1"),
    (dict(attention_free="yes"), ValueError, r"attention_free must be True or False, got 'yes'"),
])
def test_invalid_values_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        PathSpec(**kwargs)


def test_frozen_and_validated_against_a_model(shipped):
    spec = PathSpec(granularity="branch", include=["mlp3"])
    with pytest.raises(AttributeError):
        spec.max_length = 3
    assert spec.validate(shipped) is spec and spec.validate(4) is spec
    with pytest.raises(ValueError, match=r"include names mlp7: layer 7 is out of range for a model with 4 layers"):
        PathSpec(granularity="branch", include=["mlp7"]).validate(shipped)
    with pytest.raises(ValueError, match=r"exclude names block4: layer 4 is out of range"):
        jj.count_paths(4, spec=PathSpec(exclude="block4"))
    with pytest.raises(ValueError, match=r"n_layers must be an int >= 1, got 2\.5"):
        spec.validate(2.5)


def test_a_failed_call_does_not_poison_a_later_valid_one(shipped):
    ids = shipped.tokenize("To be")
    before = dict(built(shipped, "expand_all"))
    for bad in (True, 2.0, -1):
        with pytest.raises(ValueError, match=f"max_length must be a non-negative int or None, got {bad}"):
            jj.expand_all(shipped, ids, max_length=bad)
    assert dict(built(shipped, "expand_all")) == before     # refused before any cache was touched
    one = jj.expand_all(shipped, ids, max_length=1)
    assert sorted(one.labels) == sorted([f"emb>block{l}>dec" for l in range(4)] + ["emb>dec"])
    np.testing.assert_allclose(np.asarray(one.total + one.remainder), np.asarray(shipped.logits(ids)), atol=1e-4)
    # the spec is the cache key: True == 1 in Python, but True never gets that far
    assert PathSpec(max_length=1) in built(shipped, "expand_all")


def test_spec_and_keywords_give_identical_results(shipped):
    ids = shipped.tokenize("To be, or")
    kw = dict(order=1, granularity="branch", weights="uniform", exclude=["mlp1"], max_length=2)
    spec = PathSpec(**kw)
    a, b = jj.expand_all(shipped, ids, **kw), jj.expand_all(shipped, ids, spec=spec)
    assert a.labels == b.labels and a.order == b.order == 1
    np.testing.assert_array_equal(np.asarray(a.terms), np.asarray(b.terms))
    np.testing.assert_array_equal(np.asarray(a.remainder), np.asarray(b.remainder))
    assert [key for key in built(shipped, "expand_all") if key == spec] == [spec]   # one compiled function
    s1, s2 = jj.path_streams(shipped, ids, **kw), jj.path_streams(shipped, ids, spec=spec)
    assert s1.labels == s2.labels and np.array_equal(np.asarray(s1.terms), np.asarray(s2.terms))
    assert s1.labels == tuple(label[:-len(">dec")] for label in a.labels)
    n = jj.count_paths(4, "branch", exclude=["mlp1"], max_length=2)
    assert n == jj.count_paths(4, spec=spec) == len(a)
    r1 = jj.reduce_paths(shipped, ids, top_k=3, chunk_size=8, **kw)
    r2 = jj.reduce_paths(shipped, ids, top_k=3, chunk_size=8, spec=spec)
    assert r1.labels == r2.labels == a.labels
    np.testing.assert_array_equal(r1.scores, r2.scores)
    np.testing.assert_array_equal(r1.remainder, r2.remainder)
    target, foil = int(ids[1]), int(ids[2])
    t1 = jj.path_attribution(shipped, ids, target, foil, **kw)
    t2 = jj.path_attribution(shipped, ids, target, foil, spec=spec)
    assert t1.labels == t2.labels and t1.granularity == t2.granularity == "branch"
    np.testing.assert_array_equal(t1.scores, t2.scores)


def test_spec_with_conflicting_keywords_is_refused(shipped):
    ids = shipped.tokenize("To be")
    spec = PathSpec(granularity="branch", include=["mlp1"], max_length=1)
    with pytest.raises(ValueError, match=r"disagree: the spec has max_length=1, the keyword gives 2"):
        jj.expand_all(shipped, ids, spec=spec, max_length=2)
    with pytest.raises(ValueError, match=r"the spec has granularity='branch', the keyword gives 'block'"):
        jj.expand_all(shipped, ids, spec=spec, granularity="block")   # the keyword's default, said explicitly
    with pytest.raises(ValueError, match=r"the spec has order=0, the keyword gives 1"):
        jj.expand_all(shipped, ids, 1, spec=spec)
    with pytest.raises(ValueError, match=r"the spec has include=\('mlp1',\), the keyword gives \['mlp2'\]"):
        jj.path_streams(shipped, ids, spec=spec, include=["mlp2"])
    with pytest.raises(ValueError, match=r"the spec has attention_free=False, the keyword gives True"):
        jj.count_paths(4, spec=spec, attention_free=True)
    with pytest.raises(ValueError, match=r"the spec has weights='unit', the keyword gives 'uniform'"):
        jj.reduce_paths(shipped, ids, spec=spec, weights="uniform")
    with pytest.raises(ValueError, match=r"the spec has exclude=\(\), the keyword gives \['mlp0'\]"):
        jj.path_attribution(shipped, ids, target=3, spec=spec, exclude=["mlp0"])
    with pytest.raises(TypeError, match="spec must be a jetjax.PathSpec, got dict"):
        jj.expand_all(shipped, ids, spec={"max_length": 1})
    # keywords that repeat the spec (however spelled) are fine
    same = jj.expand_all(shipped, ids, spec=spec, granularity="branch", include="mlp1", max_length=np.int64(1))
    assert same.labels == ("emb>mlp1>dec", "emb>dec")
