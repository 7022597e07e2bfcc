"""The path-label grammar (jetjax.paths.labels) and its use wherever a path is written, parsed or named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
import jetjax.paths.labels as jl
from jetjax.paths import frozen
from jetjax.paths.labels import (Component, check_component_names, format_label, label_length, model_components,
                           parse_component, parse_label)
from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import check_paths, jet_bigrams, parse_path


@pytest.fixture(scope="module")
def shipped():
    return jj.load_shipped()


def _parallel_model():
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=20, vocab_size=13,
                      n_positions=8, norm_eps=1e-5, activation="gelu_new", parallel_residual=True)
    return random_model(cfg, seed=1, scale=0.3)


# ---------------------------------------------------------------------------------------------
# (a) every label expand_all emits is a valid path everywhere

@pytest.mark.parametrize("granularity,n_paths", [("block", 16), ("branch", 256)])
def test_expand_all_labels_round_trip_and_name_ngram_paths(shipped, granularity, n_paths):
    ids = shipped.tokenize("To be")
    labels = jj.expand_all(shipped, ids, granularity=granularity).labels
    assert len(labels) == n_paths == len(set(labels))
    kinds = {"block"} if granularity == "block" else {"attn", "mlp"}
    for label in labels:
        comps = parse_label(label, n_layers=4, granularity=granularity)
        assert format_label(comps) == label
        assert format_label(map(str, comps)) == label
        assert {c.kind for c in comps} <= kinds and label_length(label) == len(comps)
        assert parse_path(label, 4) == tuple((c.kind, c.layer) for c in comps)
    assert check_paths(shipped, labels) == labels
    # stream labels (path_streams) are the same paths without ">dec"
    streams = jj.path_streams(shipped, ids, granularity=granularity, max_length=1).labels
    assert [format_label(parse_label(s, decoded=False), decoded=False) for s in streams] == list(streams)


def test_parallel_residual_labels_are_paths_of_that_model():
    model = _parallel_model()
    labels = jj.expand_all(model, [1, 2, 3], granularity="branch").labels
    assert len(labels) == 9 == jj.count_paths(2, "branch", parallel_residual=True)
    assert check_paths(model, labels) == labels
    with pytest.raises(ValueError, match=r"'emb>attn0>mlp0>dec': in a parallel-residual model attn0 and mlp0"):
        check_paths(model, "emb>attn0>mlp0>dec")


def test_component_and_model_components(shipped):
    c = parse_component("mlp3")
    assert c == Component("mlp", 3) and str(c) == "mlp3" and hash(c) == hash(Component("mlp", np.int64(3)))
    assert [str(x) for x in model_components(2, "block")] == ["block0", "block1"]
    assert [str(x) for x in model_components(1, "branch")] == ["attn0", "mlp0"]
    assert jj.lenses.row_labels(shipped, "branch")[1:] == tuple(map(str, model_components(4, "branch")))


# ---------------------------------------------------------------------------------------------
# (b) block paths as jet n-grams

def test_block_bigram_rows_equal_the_block_by_hand(shipped):
    k = 5
    rows = np.asarray([0, 7, 123, 2048, 4095])
    x0 = shipped.token_embed(jnp.asarray(rows[:, None], jnp.int32))         # [N, 1, d], no positions
    b0 = shipped.block(0, x0)
    cases = {"emb>block0>dec": shipped.decode(b0)[:, -1],
             "emb>block0>block1>dec": shipped.decode(shipped.block(1, b0))[:, -1]}
    for path, logits in cases.items():
        table = jet_bigrams(shipped, path, top_k=k, global_k=3, progress=False)
        assert table.meta["paths"] == [path]
        logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
        np.testing.assert_allclose(table.logsumexp[rows], np.asarray(jax.nn.logsumexp(logits, axis=-1)),
                                   atol=1e-4, err_msg=path)
        np.testing.assert_array_equal(table.ids[rows], np.argsort(-logp, axis=1, kind="stable")[:, :k])
        np.testing.assert_allclose(np.log(table.probs[rows]), np.take_along_axis(logp, table.ids[rows], 1),
                                   atol=1e-4, err_msg=path)


def test_block_bigram_order1_jets_at_the_stream_the_block_reads(shipped):
    """At order k > 0 ``block{l}``'s variate is the stream h_l the model computes from E[z] alone."""
    rows = np.asarray([3, 99, 1000])
    x0 = shipped.token_embed(jnp.asarray(rows[:, None], jnp.int32))
    h1 = x0 + shipped.block(0, x0)
    h_last = h1
    for layer in range(1, 4):
        h_last = h_last + shipped.block(layer, h_last)
    centre = jj.jet(lambda v: shipped.block(1, v), x0, h1, 1)                # emb>block1: centre E, variate h_1
    logits = shipped.unembed(jj.jet(shipped.final_norm, centre[:, -1], h_last[:, -1], 1))
    table = jet_bigrams(shipped, "emb>block1>dec", top_k=3, order=1, progress=False)
    np.testing.assert_allclose(table.logsumexp[rows], np.asarray(jax.nn.logsumexp(logits, axis=-1)), atol=1e-4)
    np.testing.assert_array_equal(table.ids[rows], np.argsort(-np.asarray(logits), axis=1, kind="stable")[:, :3])


# ---------------------------------------------------------------------------------------------
# (c) bad labels: a ValueError naming the label and the part at fault

@pytest.mark.parametrize("label,message", [
    ("emb>ffn0>dec", r"'emb>ffn0>dec'.*'ffn0' is not a component; components are attn\{l\}, mlp\{l\} or block\{l\}"),
    ("emb>mlp4>dec", r"'emb>mlp4>dec': mlp4: layer 4 is out of range for a model with 4 layers \(valid: 0\.\.3\)"),
    ("emb>block9>dec", r"block9: layer 9 is out of range"),
    ("emb>mlp1>attn1>dec", r"'emb>mlp1>attn1>dec': attn1 cannot follow mlp1; components must be in execution order"),
    ("emb>block2>block1>dec", r"block1 cannot follow block2"),
    ("emb>mlp0>mlp0>dec", r"mlp0 cannot follow mlp0; .* each at most once"),
    ("emb>block0>mlp1>dec", r"'emb>block0>mlp1>dec' mixes block and branch components \(block0 and mlp1\)"),
    ("emb>mlp00>dec", r"'emb>mlp00>dec'.*'mlp00' has a leading zero; write 'mlp0'"),
    ("emb>mlp\u0663>dec", r"'mlp\u0663' is not a component"),                    # a non-ASCII digit
    (" emb>dec", r"' emb>dec'.*contains whitespace; labels have none: 'emb>dec'"),
    ("emb> mlp0>dec", r"contains whitespace; labels have none: 'emb>mlp0>dec'"),
    ("emb>mlp0", r"'emb>mlp0'.*it does not end with '>dec'"),
    ("h1>mlp0>dec", r"it starts with 'h1'; a path starts with 'emb'"),
    ("emb>dec>dec", r"'dec' can only end a path"),
    ("emb>>dec", r"'' is not a component"),
])
def test_bad_labels_name_the_bad_part(shipped, label, message):
    with pytest.raises(ValueError, match=message):
        parse_label(label, n_layers=4)
    with pytest.raises(ValueError, match=message):            # the same error where a path is named
        check_paths(shipped, ["emb>dec", label])


def test_granularity_and_component_lists():
    with pytest.raises(ValueError, match=r"'emb>block0>dec': block0 is a block component, but granularity='branch'"):
        parse_label("emb>block0>dec", granularity="branch")
    with pytest.raises(ValueError, match=r"attn1 is a branch component, but granularity='block'"):
        parse_label("emb>attn1>dec", granularity="block")
    with pytest.raises(ValueError, match="granularity must be one of"):
        parse_label("emb>dec", granularity="layer")
    with pytest.raises(TypeError, match="a path name must be a str"):
        parse_label(["emb", "dec"])
    with pytest.raises(ValueError, match=r"format_label takes a sequence of components, got the single 'mlp0'"):
        format_label("mlp0")
    with pytest.raises(ValueError, match=r"'emb>mlp1>attn0>dec': attn0 cannot follow mlp1"):
        format_label(["mlp1", "attn0"])
    with pytest.raises(ValueError, match=r"bad component name: 'mlp03' has a leading zero; write 'mlp3'"):
        parse_component("mlp03")
    with pytest.raises(ValueError, match=r"bad component name: 'attn 3' contains whitespace; write 'attn3'"):
        parse_component("attn 3")
    with pytest.raises(ValueError, match="component kind must be one of"):
        Component("ffn", 1)
    # filters: parsed, checked against depth and granularity, one name alone is a list of it
    assert check_component_names("mlp1", what="include") == (Component("mlp", 1),)
    assert check_component_names(["mlp2", "attn0", "mlp2"], what="x") == (Component("attn", 0), Component("mlp", 2))
    with pytest.raises(ValueError, match="include must be a list of component names"):
        check_component_names(3, what="include")


def test_filters_and_path_names_are_checked_at_the_entry_points(shipped):
    ids = shipped.tokenize("To be")
    with pytest.raises(ValueError, match=r"exclude: bad component name: 'ffn1' is not a component"):
        jj.expand_all(shipped, ids, granularity="branch", exclude=["ffn1"])
    with pytest.raises(ValueError, match=r"include names mlp7: layer 7 is out of range for a model with 4 layers"):
        jj.count_paths(4, "branch", include=["mlp7"])
    with pytest.raises(ValueError, match=r"exclude names mlp1, a branch component, but granularity='block'"):
        jj.reduce_paths(shipped, ids, granularity="block", exclude=["mlp1"])
    with pytest.raises(ValueError, match=r"include: bad component name: 'mlp01' has a leading zero"):
        jj.path_attribution(shipped, ids, target=5, include=["mlp01"])
    # a bare name is a list of one, and spelling order does not matter
    one = jj.expand_all(shipped, ids, granularity="branch", include="mlp1", max_length=1)
    assert one.labels == jj.expand_all(shipped, ids, granularity="branch", include=["mlp1"], max_length=1).labels
    assert one.labels == ("emb>mlp1>dec", "emb>dec")
    assert jj.count_paths(4, "branch", include=["mlp2", "attn0"]) == 4
    assert jj.count_paths(4, "branch", include=("attn0", "mlp2", "mlp2")) == 4
    # n-gram path lists: duplicates are found on the parsed paths; an empty list is refused
    with pytest.raises(ValueError, match=r"paths contains duplicates: 'emb>block0>dec' and 'emb>block0>dec'"):
        check_paths(shipped, ["emb>block0>dec", "emb>dec", "emb>block0>dec"])
    with pytest.raises(ValueError, match="paths must name at least one path"):
        check_paths(shipped, [])


# ---------------------------------------------------------------------------------------------
# (d) bias labels: the sources of the frozen decomposition

@pytest.mark.parametrize("granularity", ["block", "branch"])
@pytest.mark.parametrize("parallel_residual", [False, True])
def test_frozen_plan_labels_round_trip(granularity, parallel_residual):
    for n_layers in (1, 2, 3):
        for max_length in (None, 1, 2):
            _, labels = frozen._plan(n_layers, granularity, parallel_residual, max_length)
            assert len(labels) == len(set(labels)) == frozen.count_frozen_paths(
                n_layers, granularity, parallel_residual=parallel_residual, max_length=max_length)
            decoded = [jl.extend_label(lab, jl.DEC) for lab in labels] + [format_label([], source=jl.BIAS)]
            for lab in labels + tuple(decoded):
                is_path = lab.endswith(">dec")
                source, comps = jl.parse_path(lab, n_layers=n_layers, granularity=granularity,
                                              parallel_residual=parallel_residual, decoded=is_path)
                assert source == lab.split(">")[0] and source in jl.SOURCES
                assert format_label(comps, decoded=is_path, source=source) == lab
                assert format_label(map(str, comps), decoded=is_path, source=source) == lab
                assert label_length(lab) == len(comps) <= (max_length if max_length is not None else len(comps))
                assert comps or lab in ("emb", "emb>dec", "bias>dec")
                if source == jl.EMB:
                    assert parse_label(lab, decoded=is_path) == comps
                else:
                    with pytest.raises(ValueError, match=r"bias paths exist only in the frozen decomposition"):
                        parse_label(lab, decoded=is_path)
                    assert parse_label(lab, decoded=is_path, sources=jl.SOURCES) == comps


def test_frozen_attribution_labels_are_bias_or_emb_paths_of_that_model():
    model = _parallel_model()
    att = jj.frozen_path_attribution(model, [1, 2, 3], target=4, granularity="branch")
    assert att.labels[-1] == "bias>dec" and jj.paths.frozen.BIAS is jl.BIAS == "bias"
    parsed = [jl.parse_path(lab, n_layers=2, granularity="branch", parallel_residual=True) for lab in att.labels]
    assert [format_label(c, source=s) for s, c in parsed] == list(att.labels)
    assert {s for s, _ in parsed} == set(jl.SOURCES)


def test_bias_label_lengths_and_formatting():
    assert [label_length(x) for x in ("bias>dec", "bias>attn0>dec", "bias>attn0>mlp3>dec", "bias>block0",
                                      "bias>block0>block2")] == [0, 1, 2, 1, 2]
    assert format_label(["attn0", Component("mlp", 3)], source="bias") == "bias>attn0>mlp3>dec"
    assert format_label(["block1"], source="bias", decoded=False) == "bias>block1"
    assert jl.extend_label(jl.extend_label("bias", "attn0"), "mlp3") == "bias>attn0>mlp3"
    assert jl.parse_path("emb>dec") == ("emb", ()) and jl.parse_path("bias>dec") == ("bias", ())
    with pytest.raises(ValueError, match=r"paths start at 'emb' or 'bias', got 'bais'"):
        format_label(["attn0"], source="bais")
    with pytest.raises(ValueError, match=r"'bias' names no component: a 'bias' path starts at the constant of its"):
        format_label([], source="bias", decoded=False)
    with pytest.raises(ValueError, match=r"'bias>mlp0>attn0>dec': attn0 cannot follow mlp0"):
        format_label(["mlp0", "attn0"], source="bias")
    with pytest.raises(ValueError, match=r"sources must name one or more of \('emb', 'bias'\), got \(\)"):
        jl.parse_path("emb>dec", sources=())
    with pytest.raises(ValueError, match=r"sources must name one or more of"):
        parse_label("emb>dec", sources=("emb", "h"))


@pytest.mark.parametrize("label,kwargs,message", [
    ("bias>dec>x", {}, r"'bias>dec>x'.*it does not end with '>dec'"),
    ("bias", {}, r"it does not end with '>dec'"),
    ("bias", {"decoded": False}, r"'bias' names no component.*only 'bias>dec', the decoder's own constant"),
    ("bias>dec", {"decoded": False}, r"a stream label ends at the last residual stream, without '>dec'"),
    ("bias>>dec", {}, r"'' is not a component"),
    ("Bias>attn0>dec", {}, r"it starts with 'Bias'; a path starts with 'emb' or 'bias' \(write 'bias>attn0>dec'\)"),
    ("bais>attn0>dec", {}, r"valid forms: .*bias>dec\. Here it starts with 'bais'; a path starts with 'emb' or 'bias'"),
    (" bias>attn0>dec", {}, r"contains whitespace; labels have none: 'bias>attn0>dec'"),
    ("bias>mlp0>attn0>dec", {}, r"'bias>mlp0>attn0>dec': attn0 cannot follow mlp0; components must be in execution"),
    ("bias>block0>mlp1>dec", {}, r"'bias>block0>mlp1>dec' mixes block and branch components \(block0 and mlp1\)"),
    ("bias>attn1>dec", {"granularity": "block"}, r"attn1 is a branch component, but granularity='block'"),
    ("bias>attn0>mlp0>dec", {"parallel_residual": True}, r"in a parallel-residual model attn0 and mlp0"),
    ("bias>mlp4>dec", {}, r"mlp4: layer 4 is out of range for a model with 4 layers"),
    ("bias>mlp00>dec", {}, r"'mlp00' has a leading zero; write 'mlp0'"),
    ("emb>bias>dec", {}, r"'bias' can only start a path"),
    ("bias>emb>dec", {}, r"'emb' can only start a path"),
])
def test_bad_bias_labels_name_the_bad_part(label, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jl.parse_path(label, n_layers=4, **kwargs)


def test_emb_only_callers_refuse_bias_paths(shipped):
    """Callers that take emb paths only (n-gram paths, parse_label's default) say where bias paths live."""
    refusal = r"it starts with 'bias': bias paths exist only in the frozen decomposition \(jj.frozen_path_attribution\)"
    with pytest.raises(ValueError, match=refusal):
        parse_label("bias>mlp0>dec")
    with pytest.raises(ValueError, match=refusal):
        parse_path("bias>dec", 4)
    with pytest.raises(ValueError, match=refusal):              # not taken for emb>mlp0>dec's duplicate
        check_paths(shipped, ["emb>mlp0>dec", "bias>mlp0>dec"])
    with pytest.raises(ValueError, match=r"it starts with 'Bias'; a path starts with 'emb'"):
        parse_label("Bias>mlp0>dec")
