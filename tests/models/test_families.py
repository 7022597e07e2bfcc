"""GPT-NeoX, the Llama family (Llama, Mistral, Qwen2, Gemma), GPT-Neo and OLMo against HF transformers.

Every family is checked on tiny random checkpoints (tests/family_checkpoints.py): logits, residual
streams and per-branch deltas against the torch forward; the expansion identities; the ``emb>dec``
bigram row against a formula written here from the torch weights; jets through rotary attention
against nested ``jax.jvp``; and refusal of variants we do not implement.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jetjax as jj
from jetjax.models import FAMILIES
from jetjax.models.model import Model
from tests.family_checkpoints import FAMILY_CONFIGS, SEQ, make_family_checkpoint
from tests.jet.test_jet import nested_jvp_terms

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

NAMES = list(FAMILY_CONFIGS)
# partial rotary + parallel residual; GQA + llama3 rope; clipped qkv + non-parametric norm; post-norms,
# soft-capped scores and logits; q/k norms with a local and a global rope
ROTARY = ["neox_parallel", "llama_gqa_llama3", "olmo_clip", "gemma2_softcap", "gemma3_local_global"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{name: (directory, torch model, jetjax model)}, built once for the module."""
    out = {}
    for i, name in enumerate(NAMES):
        d = tmp_path_factory.mktemp(name)
        hf = make_family_checkpoint(d, name, seed=10 + i)
        out[name] = (d, hf, jj.from_pretrained(d))
    return out


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(7).integers(0, 29, size=(2, SEQ)).astype(np.int32)  # 29: the smallest vocab


def _hf_run(hf, ids):
    """HF logits, hidden states, and per-layer outputs of the attention, MLP and whole layer (hooks)."""
    base = hf.base_model
    layers = base.layers if hasattr(base, "layers") else base.h
    captured = {}

    def hook(key):
        def fn(_module, _inputs, output):
            captured[key] = (output[0] if isinstance(output, tuple) else output).detach().numpy()
        return fn

    handles = []
    for i, layer in enumerate(layers):
        attn = next(getattr(layer, n) for n in ("self_attn", "attention", "attn") if hasattr(layer, n))
        mlp = layer.mlp
        if hasattr(layer, "post_feedforward_layernorm"):   # Gemma 2/3: each branch ends in its post-norm
            attn, mlp = layer.post_attention_layernorm, layer.post_feedforward_layernorm
        handles += [attn.register_forward_hook(hook(("attn", i))), mlp.register_forward_hook(hook(("mlp", i))),
                    layer.register_forward_hook(hook(("layer", i)))]
    try:
        with torch.no_grad():
            out = hf(torch.from_numpy(ids).long(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states], captured


def _forward_pieces(model, ids):
    """Logits, streams, mids and every branch delta, in one jitted call (one compile per model)."""

    def pieces(params, ids):
        streams, mids = model.residual_stream(ids, params=params, mid=True)
        mlp_in = streams[:-1] if model.config.parallel_residual else mids  # what HF's MLP branch reads
        branches = [(model.attn(l, streams[l], params=params), model.mlp(l, mlp_in[l], params=params),
                     model.block(l, streams[l], params=params)) for l in range(model.config.n_layers)]
        return (model.logits(ids, params=params), streams, mids, model.final_norm(streams[-1], params=params),
                *(jnp.stack(b) for b in zip(*branches)))

    return [np.asarray(x) for x in jax.jit(pieces)(model.params, ids)]


@pytest.mark.parametrize("name", NAMES)
def test_logits_streams_and_branches_match_hf(checkpoints, ids, name):
    _, hf, model = checkpoints[name]
    c = model.config
    logits, hidden, captured = _hf_run(hf, ids)
    ours, streams, mids, normed, attn, mlp, block = _forward_pieces(model, ids)
    assert ours.shape == logits.shape == (2, SEQ, c.vocab_size)
    np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.logits(ids)), logits, atol=1e-4, rtol=0)  # the public path

    assert streams.shape == (c.n_layers + 1, 2, SEQ, c.d_model)
    # HF returns h_0..h_{L-1} as they are and its last entry after the final norm
    assert len(hidden) == c.n_layers + 1
    for layer in range(c.n_layers):
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=1e-4, rtol=0)
        np.testing.assert_allclose(streams[layer + 1], captured[("layer", layer)], atol=1e-4, rtol=0)
    np.testing.assert_allclose(normed, hidden[-1], atol=1e-4, rtol=0)

    for layer in range(c.n_layers):
        np.testing.assert_allclose(attn[layer], captured[("attn", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mlp[layer], captured[("mlp", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mids[layer], streams[layer] + attn[layer], atol=1e-5, rtol=0)
        # the whole-block gamma is the delta, never h + delta
        np.testing.assert_allclose(block[layer], streams[layer + 1] - streams[layer], atol=1e-4, rtol=0)


def test_configs_cover_the_variants(checkpoints):
    """The checkpoints exercise what the parity test is meant to catch."""
    cfg = {name: checkpoints[name][2].config for name in NAMES}
    assert cfg["neox_parallel"].parallel_residual and not cfg["neox_sequential"].parallel_residual
    assert 0 < cfg["neox_parallel"].rope_dim < cfg["neox_parallel"].d_head  # partial rotary
    assert cfg["llama_gqa_llama3"].kv_heads < cfg["llama_gqa_llama3"].n_heads
    assert cfg["llama_gqa_llama3"].d_head * cfg["llama_gqa_llama3"].n_heads != cfg["llama_gqa_llama3"].d_model
    assert dict(cfg["llama_gqa_llama3"].rope_scaling)["rope_type"] == "llama3"
    assert cfg["mistral_window"].attn_windows == (3, 3) and cfg["gemma_mqa"].kv_heads == 1
    assert cfg["qwen2_sliding_tied"].attn_windows == (None, 4, 4)
    assert cfg["gpt_neo_local"].attn_windows == (None, 3, 3) and not cfg["gpt_neo_local"].attn_scale
    assert cfg["gemma_mqa"].norm == "rmsnorm_plus_one" and cfg["gemma_mqa"].embed_scale == pytest.approx(18 ** 0.5)
    assert cfg["olmo_clip"].norm == "layernorm_no_affine" and cfg["olmo_clip"].clip_qkv == 0.8
    tied = {n for n in NAMES if cfg[n].tie_embeddings}
    assert tied == {"neox_sequential", "qwen2_sliding_tied", "gemma_mqa", "gpt_neo_local", "gemma2_softcap",
                    "gemma3_local_global"}
    g2, g3 = cfg["gemma2_softcap"], cfg["gemma3_local_global"]
    assert g2.attn_windows == (4, None) and g2.attn_softcap == 2.5 and g2.final_softcap == 4.0 and not g2.qk_norm
    assert g2.query_pre_attn_scalar == 13.0 and g2.post_norms and not g2.unembedding_is_affine
    assert g3.attn_windows == (3, None, 3) and g3.qk_norm and g3.post_norms and g3.final_softcap is None
    assert (g3.rope_at(0), g3.rope_at(1)) == ((1e4, ()), (1e6, (("rope_type", "linear"), ("factor", 8.0))))
    assert all(w is None or w < SEQ for c in cfg.values() for w in (c.attn_windows or ()))


@pytest.mark.parametrize("name,change", [
    ("mistral_window", dict(attn_windows=None)),
    ("gpt_neo_local", dict(attn_windows=None)),
    ("llama_gqa_llama3", dict(rope_scaling=())),
    ("neox_parallel", dict(rope_dim=2)),
    ("olmo_clip", dict(clip_qkv=None)),
    ("gemma2_softcap", dict(attn_windows=None)),            # a wrong window
    ("gemma2_softcap", dict(attn_softcap=None)),
    ("gemma2_softcap", dict(final_softcap=None)),
    ("gemma2_softcap", dict(query_pre_attn_scalar=None)),   # the usual 1/sqrt(d_head)
    ("gemma2_softcap", dict(post_norms=False)),
    ("gemma3_local_global", dict(post_norms=False)),
    ("gemma3_local_global", dict(local_rope_theta=None)),   # the global rope on the local layers
    ("gemma3_local_global", dict(rope_theta=1e4, rope_scaling=())),  # the local rope on the global layer
    ("gemma3_local_global", dict(attn_windows=(3, 3, 3))),
])
def test_the_checks_can_fail(checkpoints, ids, name, change):
    """Dropping a feature moves the logits far beyond the 1e-4 tolerance: the parity test has teeth."""
    _, hf, model = checkpoints[name]
    config = dataclasses.replace(model.config, **change)
    wrong = Model(nnx.eval_shape(lambda: FAMILIES[config.arch].module(config)), model.params)
    logits, _, _ = _hf_run(hf, ids)
    assert np.abs(np.asarray(wrong.logits(ids)) - logits).max() > 1e-2


def test_gemma3_qk_norms_matter(checkpoints, ids):
    """Without its per-head query/key norms the Gemma 3 checkpoint's logits move beyond the tolerance."""
    _, hf, model = checkpoints["gemma3_local_global"]
    config = dataclasses.replace(model.config, qk_norm=False)
    params = jax.tree_util.tree_map(lambda x: x, model.params)   # a copy of the nesting, arrays shared
    for layer in params["layers"].values():
        del layer["self_attn"]["q_norm"], layer["self_attn"]["k_norm"]
    wrong = Model(nnx.eval_shape(lambda: FAMILIES[config.arch].module(config)), params)
    logits, _, _ = _hf_run(hf, ids)
    assert np.abs(np.asarray(wrong.logits(ids)) - logits).max() > 1e-2


def _final_norm_reference(hf, x):
    """The HF model's final norm, written out in numpy from its weights."""
    norm = next(getattr(hf.base_model, n) for n in ("norm", "final_layer_norm", "ln_f") if hasattr(hf.base_model, n))
    kind = type(norm).__name__
    if kind == "LayerNorm":                                  # GPT-NeoX, GPT-Neo
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + norm.eps) * norm.weight.detach().numpy() + norm.bias.detach().numpy()
    if kind == "OlmoLayerNorm":                              # no gain, no bias, eps 1e-5
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    w = norm.weight.detach().numpy()
    if kind in ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"):   # gain 1 + w
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + norm.eps) * (1.0 + w)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + norm.variance_epsilon) * w  # Llama-style RMSNorm


@pytest.mark.parametrize("name", NAMES)
def test_emb_dec_bigram_rows_match_formula_from_hf_weights(checkpoints, name):
    _, hf, model = checkpoints[name]
    z = np.arange(model.config.vocab_size, dtype=np.int32)    # every token: the full bigram table
    E = hf.get_input_embeddings().weight.detach().numpy().astype(np.float64)
    U = hf.get_output_embeddings().weight.detach().numpy().astype(np.float64)
    scale = np.sqrt(E.shape[1]) if name.startswith("gemma") else 1.0
    want = _final_norm_reference(hf, E[z] * scale) @ U.T
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap is not None:                                       # Gemma 2 caps its logits
        want = cap * np.tanh(want / cap)
    got = np.asarray(jax.jit(lambda t: model.decode(model.token_embed(t)))(z))
    assert got.shape == (len(z), model.config.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def _arrays(expansion_fn, *args):
    """Run an expansion under one jit; returns (terms, remainder, labels)."""
    labels = []

    def run(*a):
        exp = expansion_fn(*a)
        labels.append(exp.labels)  # static: recorded while tracing
        return exp.terms, exp.remainder

    terms, remainder = jax.jit(run)(*args)
    return np.asarray(terms), np.asarray(remainder), labels[0]


@pytest.mark.parametrize("name", NAMES)
def test_expansion_identities(checkpoints, ids, name):
    _, hf, model = checkpoints[name]
    logits = _hf_run(hf, ids[:1])[0][0]
    toks = ids[0]
    h = model.residual_stream(toks)
    # the iterative lens at l = L (one centre h_L, unit weight) is the model, at any order
    lens = jax.jit(lambda t, c: [(e.terms, e.remainder) for e in
                                 (jj.expand_decoder(model, t, c, k, weights="unit") for k in (0, 1))])
    for terms, remainder in lens(toks, h[-1:]):
        np.testing.assert_allclose(np.asarray(terms[0]), logits, atol=1e-4, rtol=0)
        assert float(jnp.abs(remainder).max()) < 1e-4


@pytest.mark.parametrize("name", [n for n in NAMES if FAMILY_CONFIGS[n][2].get(
    "num_hidden_layers", FAMILY_CONFIGS[n][2].get("num_layers")) == 2])
def test_all_paths_of_two_layer_models(checkpoints, ids, name):
    _, hf, model = checkpoints[name]
    logits = _hf_run(hf, ids[:1])[0][0]
    toks = ids[0]
    terms, remainder, labels = _arrays(lambda t: jj.expand_all(model, t, order=0), toks)
    assert labels == ("emb>block0>block1>dec", "emb>block1>dec", "emb>block0>dec", "emb>dec")
    np.testing.assert_allclose(terms.sum(0) + remainder, logits, atol=1e-4, rtol=0)
    # at order 0 with unit weights each path is the plain composition its label names
    want = jax.jit(lambda h0: [model.decode(model.block(1, model.block(0, h0))), model.decode(model.block(1, h0)),
                               model.decode(model.block(0, h0)), model.decode(h0)])(model.embed(toks))
    for label, got, ref in zip(labels, terms, want):
        np.testing.assert_allclose(got, np.asarray(ref), atol=1e-4, rtol=0, err_msg=label)


@pytest.mark.parametrize("name", ROTARY)
def test_jet_through_rotary_block_matches_nested_jvp(checkpoints, name):
    path = checkpoints[name][0]
    with jax.enable_x64(True):
        model = jj.from_pretrained(path, dtype=jnp.float64)
        toks = np.arange(SEQ, dtype=np.int32) % model.config.vocab_size
        x = model.embed(toks)                                      # centre: the embedding
        y = x + 0.5 * jnp.asarray(np.random.default_rng(3).normal(size=x.shape))  # a nearby variate
        block = lambda s: model.block(0, s)
        _, terms = jax.jit(lambda a, b: jj.jet(block, a, b, 2, return_terms=True))(x, y)
        ref = jax.jit(lambda a, b: nested_jvp_terms(block, a, b, 2))(x, y)
        for j, (t, r) in enumerate(zip(terms, ref)):
            err = float(jnp.linalg.norm(t - r) / jnp.linalg.norm(r))
            assert err < 1e-10, f"term {j}: relative error {err:.2e}"


# ---- variants we do not implement are refused, naming the feature ----------------------------

def _copy_with_config(checkpoints, name, tmp_path, **changes):
    src = checkpoints[name][0]
    dst = tmp_path / name
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


_DROP = object()


@pytest.mark.parametrize("name,changes,match", [
    ("llama_gqa_llama3", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "unsupported rope_type 'yarn'"),
    ("neox_parallel", dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0,
                                            "partial_rotary_factor": 0.4}), "unsupported rope_type 'dynamic'"),
    ("llama_gqa_llama3", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0,
                                               "attention_factor": 0.5}), r"unsupported rope_parameters \['attention_factor'\]"),
    ("llama_gqa_llama3", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
     "rope_type 'llama3' needs rope_parameters"),
    ("mistral_window", dict(hidden_act="mish"), "unsupported hidden_act 'mish'"),
    ("gpt_neo_local", dict(activation_function="mish"), "unsupported activation_function 'mish'"),
    ("gemma_mqa", dict(use_bidirectional_attention=True), "unsupported feature use_bidirectional_attention=True"),
    ("llama_gqa_llama3", dict(sliding_window=4), r"unsupported config key\(s\) for llama: \['sliding_window'\]"),
    ("llama_gqa_llama3", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}),
     "unsupported partial_rotary_factor=0.5"),
    ("neox_parallel", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.3}),
     "unsupported odd rotary dimension 3"),
    ("qwen2_sliding_tied", dict(layer_types=["full_attention", "chunked_attention", "sliding_attention"]),
     "unsupported layer_types"),
    ("gpt_neo_local", dict(attention_layers=["global", "sparse", "local"]), "unsupported attention layers"),
    ("olmo_clip", dict(clip_qkv=-1.0), "config key .clip_qkv. must be a finite number > 0, got -1.0"),
    ("gemma3_local_global", dict(use_bidirectional_attention=True), "unsupported feature use_bidirectional_attention"),
    ("gemma3_local_global", dict(layer_types=["sliding_attention", "chunked_attention", "full_attention"]),
     "unsupported layer_types"),
    ("gemma3_local_global", dict(rope_parameters={"full_attention": {"rope_type": "yarn", "rope_theta": 1e6,
                                                                     "factor": 8.0}}), "unsupported rope_type 'yarn'"),
    ("gemma2_softcap", dict(final_logit_softcapping=0.0), "final_logit_softcapping. must be a finite number > 0"),
    ("gemma2_softcap", dict(altup_num_inputs=4), r"unsupported config key\(s\) for gemma2: \['altup_num_inputs'\]"),
])
def test_unsupported_variants_raise(checkpoints, tmp_path, name, changes, match):
    path = _copy_with_config(checkpoints, name, tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        jj.from_pretrained(path)


def test_legacy_rope_keys_load_the_same_model(checkpoints, tmp_path, ids):
    """Pre-v5 configs (rotary_pct / rotary_emb_base, rope_theta / rope_scaling) mean the same rope."""
    neox = _copy_with_config(checkpoints, "neox_parallel", tmp_path, rope_parameters=_DROP, rotary_pct=0.4,
                             rotary_emb_base=10000.0)
    llama = _copy_with_config(checkpoints, "llama_gqa_llama3", tmp_path, rope_parameters=_DROP, rope_theta=2000.0,
                              rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
    for name, path in (("neox_parallel", neox), ("llama_gqa_llama3", llama)):
        new = checkpoints[name][2]
        old = jj.from_pretrained(path)
        assert old.config == new.config
        np.testing.assert_allclose(np.asarray(old.logits(ids)), np.asarray(new.logits(ids)), atol=1e-6)


def test_random_model_of_every_family_runs():
    from jetjax.models import ModelConfig, random_model

    # one shape set for all (d_model = n_heads * d_head) so random draws compile once; Llama
    # itself runs in llama.py's doctest
    for arch, extra in (("gpt_neox", dict(rope_dim=4, parallel_residual=True)),
                        ("gemma", dict(rope_dim=6, norm="rmsnorm_plus_one", embed_scale=3.0)),
                        ("gpt_neo", dict(n_positions=8, attn_windows=(2,))),
                        ("olmo", dict(rope_dim=6, norm="layernorm_no_affine"))):
        cfg = ModelConfig(arch=arch, n_layers=1, d_model=18, n_heads=3, d_head=6, d_mlp=11, vocab_size=13,
                          n_positions=extra.pop("n_positions", None), norm_eps=1e-5, activation="silu", **extra)
        model = random_model(cfg, seed=1, scale=0.3)
        out = np.asarray(model.logits(np.arange(5) % 13))
        assert out.shape == (5, 13) and np.isfinite(out).all() and out.std() > 1e-3, arch


def test_model_config_rejects_inconsistent_fields():
    from jetjax.models import ModelConfig

    base = dict(arch="llama", n_layers=2, d_model=12, n_heads=4, d_head=3, d_mlp=8, vocab_size=5, n_positions=None,
                norm_eps=1e-6, activation="silu")
    with pytest.raises(ValueError, match="not a multiple of n_kv_heads=3"):
        ModelConfig(**base, n_kv_heads=3)
    with pytest.raises(ValueError, match="rope_dim must be even"):
        ModelConfig(**base, rope_dim=3)
    with pytest.raises(ValueError, match="norm must be one of"):
        ModelConfig(**base, norm="batchnorm")
    with pytest.raises(ValueError, match="one entry per layer"):
        ModelConfig(**base, attn_windows=(3,))
