"""Bad arguments to the Python API fail with errors that name the value and what is accepted."""

import jax
import numpy as np
import pytest

import jetjax as jj
from jetjax.models import ModelConfig, random_model
from jetjax._internal.parallel import path_mesh

CFG = ModelConfig(arch="gpt2", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=11,
                  n_positions=8, norm_eps=1e-5, activation="gelu_new")


@pytest.fixture(scope="module")
def model():
    return random_model(CFG)


@pytest.mark.parametrize("ids,error,message", [
    ([[1, 2], [3]], ValueError, r"rectangular array .* got sequences of lengths \[2, 1\]"),
    (np.zeros((0, 3), np.int64), ValueError, r"at least one sequence, got an empty array of shape \(0, 3\)"),
    ([], ValueError, r"empty array of shape \(0,\)"),
    ([[]], ValueError, r"empty array of shape \(1, 0\)"),
    ([1.0, 2.0], TypeError, "token ids must be integers, got dtype float64"),
    ([True, False], TypeError, "token ids must be integers, got dtype bool"),
    ([1, 11], ValueError, r"token id 11 is out of range for a vocabulary of 11 \(valid: 0..10\)"),
])
def test_bad_token_ids(model, ids, error, message):
    with pytest.raises(error, match=message):
        model.logits(ids)


def test_out_of_range_id_under_jit_is_visibly_invalid_not_clamped(model):
    # Eager calls refuse the id; under jit it cannot be checked, and the row must not be the
    # last token's (the clamped, plausible answer) but NaN.
    good = np.asarray(jax.jit(model.logits)(np.array([1, 10])))
    bad = np.asarray(jax.jit(model.logits)(np.array([1, 50])))
    assert np.isfinite(good).all()
    assert np.isnan(bad[1]).all()   # (the NaN key also reaches position 0 through the masked scores)
    assert np.isnan(np.asarray(jax.jit(model.logits)(np.array([-1, 2])))).all()


@pytest.mark.parametrize("score,error,message", [
    ("l3", TypeError, "got the string 'l3'"),
    (np.ones(5), ValueError, r"an array of shape \(11,\)\) or a callable .*; got an array of shape \(5,\)"),
    (np.full(11, np.nan), ValueError, "holds 11 NaN/inf value"),
    ({"a": 1}, TypeError, "got dict"),
])
def test_reduce_paths_bad_score(model, score, error, message):
    with pytest.raises(error, match=message):
        jj.reduce_paths(model, [1, 2], score=score)


@pytest.mark.parametrize("devices,error,message", [
    (["cpu"], TypeError, "got 'cpu' \\(str\\); a platform name is not a device"),
    ("cpu", TypeError, "must be a list of jax devices"),
    ([], ValueError, "devices is empty"),
    (5, TypeError, "must be a list of jax devices"),
])
def test_path_mesh_bad_devices(devices, error, message):
    with pytest.raises(error, match=message):
        path_mesh(devices)


def test_path_mesh_repeated_device():
    d = jax.devices()[0]
    with pytest.raises(ValueError, match="more than once"):
        path_mesh([d, d])


def test_bigram_sweep_bad_devices_fail_before_work(model):
    from jetjax.ngrams import jet_bigrams

    with pytest.raises(TypeError, match="a platform name is not a device"):
        jet_bigrams(model, "emb>dec", devices=["cpu"], progress=False)


def test_corpus_agreement_bad_text(model):
    from jetjax.ngrams import corpus_agreement, jet_bigrams

    table = jet_bigrams(model, "emb>dec", top_k=2, progress=False)
    with pytest.raises(TypeError, match=r"text must be a str, got bytes \(decode bytes first"):
        corpus_agreement(table, b"to be or not", model)
    with pytest.raises(ValueError, match="text is empty"):
        corpus_agreement(table, "  \n", model)
