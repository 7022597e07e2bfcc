"""The families of issue 36 (Qwen3, OLMo-2, Starcoder2, Granite, Phi-3, SmolLM3) against HF transformers.

Each family is checked on tiny random 2-layer checkpoints (``NEW_FAMILY_CONFIGS`` in
tests/family_checkpoints.py): logits, residual streams and per-branch deltas against the torch forward
(float32 and float64); one frozen identity (every frozen path adds up to HF's logit difference and HF's
last stream); jet identities (all order-0 paths of the 2-layer model plus the remainder are HF's logits,
and an order-2 jet of one block equals nested ``jax.jvp``); the config allowlist (an unknown key is
refused by name); switching the family's own feature off moves the logits (the checks have teeth);
and GGUF files written the way llama.cpp lays these architectures out.
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
from jetjax.paths.frozen import frozen_path_attribution, frozen_path_streams
from tests.family_checkpoints import NEW_FAMILY_CONFIGS, SEQ, make_family_checkpoint
from tests.jet.test_jet import nested_jvp_terms
from tests.models.test_families import _forward_pieces, _hf_run

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

NAMES = list(NEW_FAMILY_CONFIGS)
VOCAB = min(kw["vocab_size"] for _, _, kw in NEW_FAMILY_CONFIGS.values())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{name: (directory, torch model, jetjax model)}, built once for the module."""
    out = {}
    for i, name in enumerate(NAMES):
        d = tmp_path_factory.mktemp(name)
        hf = make_family_checkpoint(d, name, seed=40 + i)
        out[name] = (d, hf, jj.from_pretrained(d))
    return out


@pytest.fixture(scope="module")
def ids():
    return np.random.default_rng(11).integers(0, VOCAB, size=(2, SEQ)).astype(np.int32)


def _relative_error(ours, theirs) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("name", NAMES)
def test_logits_streams_and_branches_match_hf(checkpoints, ids, name):
    _, hf, model = checkpoints[name]
    c = model.config
    logits, hidden, captured = _hf_run(hf, ids)
    ours, streams, mids, normed, attn, mlp, block = _forward_pieces(model, ids)
    assert ours.shape == logits.shape == (2, SEQ, c.vocab_size)
    np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=0)
    assert len(hidden) == c.n_layers + 1
    for layer in range(c.n_layers):
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=1e-4, rtol=0)
        np.testing.assert_allclose(streams[layer + 1], captured[("layer", layer)], atol=1e-4, rtol=0)
    np.testing.assert_allclose(normed, hidden[-1], atol=1e-4, rtol=0)   # HF's last entry: after the final norm
    # Granite scales each branch's output by residual_multiplier before adding it: our delta includes it
    scale = getattr(hf.config, "residual_multiplier", 1.0)
    for layer in range(c.n_layers):
        np.testing.assert_allclose(attn[layer], scale * captured[("attn", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mlp[layer], scale * captured[("mlp", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mids[layer], streams[layer] + attn[layer], atol=1e-5, rtol=0)
        np.testing.assert_allclose(block[layer], streams[layer + 1] - streams[layer], atol=1e-4, rtol=0)


def _float64_rotary(hf):
    """A forward for HF's rotary module in float64. HF computes the rotary angles in float32 even in a
    double model (about 1e-7 off), which would hide float64 parity; these angles come from the
    config's ``default`` / ``linear`` rope in float64."""
    rope = hf.config.rope_parameters
    dim = getattr(hf.config, "head_dim", None) or hf.config.hidden_size // hf.config.num_attention_heads
    dim = int(dim * rope.get("partial_rotary_factor", 1.0))
    assert rope.get("rope_type", "default") in ("default", "linear")
    inv = 1.0 / rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim) / rope.get("factor", 1.0)

    def forward(x, position_ids):
        angles = position_ids[..., None].double() * inv
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos(), angles.sin()

    return forward


def _rms_norm64(norm):
    def forward(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight

    return forward


def _hf_float64_logits(hf, ids):
    """HF's logits with the model in double precision, where HF itself keeps float32 (rotary angles,
    RMS norms) patched to compute in float64."""
    patched = [(hf.base_model.rotary_emb, _float64_rotary(hf))]
    patched += [(m, _rms_norm64(m)) for m in hf.modules() if type(m).__name__.endswith("RMSNorm")]
    for module, forward in patched:
        module.forward = forward
    try:
        return hf.double()(torch.from_numpy(ids).long()).logits.numpy()
    finally:
        for module, _ in patched:
            del module.forward
        hf.float()


@pytest.mark.parametrize("name", NAMES)
def test_parity_in_float32_and_float64(checkpoints, ids, name):
    """max |Δlogit| / max |logit| against transformers: float32 to 1e-5, float64 to 1e-12 (the
    figures in docs/adding_an_architecture.md are these numbers)."""
    path, hf, model = checkpoints[name]
    with torch.no_grad():
        want32 = hf(torch.from_numpy(ids).long()).logits.numpy().astype(np.float64)
        want64 = _hf_float64_logits(hf, ids)
    err32 = _relative_error(model.logits(ids), want32)
    with jax.enable_x64(True):
        model64 = jj.from_pretrained(path, dtype=jnp.float64)
        got64 = model64.logits(ids)
        assert got64.dtype == jnp.float64
        err64 = _relative_error(got64, want64)
    print(f"\nparity {name}: float32 {err32:.1e}, float64 {err64:.1e}")
    assert err32 < 1e-5 and err64 < 1e-12, (err32, err64)


@pytest.mark.parametrize("name", NAMES)
def test_frozen_paths_add_up_to_hf(checkpoints, ids, name):
    """Frozen identity: every frozen path of the model together is HF's last stream and HF's logit
    difference (the remainder is rounding)."""
    _, hf, model = checkpoints[name]
    toks = ids[0]
    logits, _, captured = _hf_run(hf, ids[:1])
    target, foil = int(np.argmax(logits[0, -1])), int(np.argmin(logits[0, -1]))
    att = frozen_path_attribution(model, toks, target, foil, granularity="branch")
    assert att.total == pytest.approx(float(logits[0, -1, target] - logits[0, -1, foil]), abs=1e-4)
    assert abs(att.remainder) <= 1e-5 * float(np.abs(att.scores).sum())
    paths = frozen_path_streams(model, toks, granularity="branch")
    np.testing.assert_allclose(np.asarray(paths.total), captured[("layer", model.config.n_layers - 1)][0],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_jet_paths_add_up_to_hf(checkpoints, ids, name):
    """Jet identity: the order-0 paths of the 2-layer model plus the remainder are HF's logits, each
    path the composition its label names; the decoder jet at h_L is the logits."""
    _, hf, model = checkpoints[name]
    logits = _hf_run(hf, ids[:1])[0][0]
    toks = ids[0]
    labels = []

    def run(t):
        exp = jj.expand_all(model, t, order=0)
        labels.append(exp.labels)
        return exp.terms, exp.remainder

    terms, remainder = (np.asarray(x) for x in jax.jit(run)(toks))
    assert labels[0] == ("emb>block0>block1>dec", "emb>block1>dec", "emb>block0>dec", "emb>dec")
    np.testing.assert_allclose(terms.sum(0) + remainder, logits, atol=1e-4, rtol=0)
    want = jax.jit(lambda h0: [model.decode(model.block(1, model.block(0, h0))), model.decode(model.block(1, h0)),
                               model.decode(model.block(0, h0)), model.decode(h0)])(model.embed(toks))
    for label, got, ref in zip(labels[0], terms, want):
        np.testing.assert_allclose(got, np.asarray(ref), atol=1e-4, rtol=0, err_msg=label)
    h = model.residual_stream(toks)
    exp = jax.jit(lambda t, c: jj.expand_decoder(model, t, c, 1, weights="unit"))(toks, h[-1:])
    np.testing.assert_allclose(np.asarray(exp.terms[0]), logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_jet_through_a_block_matches_nested_jvp(checkpoints, name):
    path = checkpoints[name][0]
    with jax.enable_x64(True):
        model = jj.from_pretrained(path, dtype=jnp.float64)
        toks = np.arange(SEQ, dtype=np.int32) % model.config.vocab_size
        x = model.embed(toks)
        y = x + 0.5 * jnp.asarray(np.random.default_rng(3).normal(size=x.shape))
        block = lambda s: model.block(0, s)   # noqa: E731
        _, terms = jax.jit(lambda a, b: jj.jet(block, a, b, 2, return_terms=True))(x, y)
        ref = jax.jit(lambda a, b: nested_jvp_terms(block, a, b, 2))(x, y)
        for j, (t, r) in enumerate(zip(terms, ref)):
            err = float(jnp.linalg.norm(t - r) / jnp.linalg.norm(r))
            assert err < 1e-10, f"term {j}: relative error {err:.2e}"


# ---- what each family needed matters: dropping it breaks parity -------------------------------

def _without(model, change, drop=()):
    """``model`` rebuilt with ``ModelConfig`` fields changed and the parameters at the paths in ``drop``
    (under each layer) removed."""
    config = dataclasses.replace(model.config, **change)
    params = jax.tree_util.tree_map(lambda x: x, model.params)   # a copy of the nesting, arrays shared
    for layer in params["layers"].values():
        for path in drop:
            node = layer
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
    return Model(nnx.eval_shape(lambda: FAMILIES[config.arch].module(config)), params)


_QK_NORMS = (("self_attn", "q_norm"), ("self_attn", "k_norm"))
_ATTN_BIASES = tuple(("self_attn", p, "bias") for p in ("q_proj", "k_proj", "v_proj", "o_proj"))


@pytest.mark.parametrize("name,change,drop", [
    ("qwen3_window", dict(qk_norm=False), _QK_NORMS),
    ("qwen3_window", dict(attn_windows=None), ()),
    ("qwen3_bias_tied", dict(qkv_bias=False, out_bias=False), _ATTN_BIASES),
    ("olmo2_gqa", dict(post_norms=False), ()),
    ("olmo2_gqa", dict(qk_norm=False), _QK_NORMS),
    ("starcoder2_window", dict(attn_windows=None), ()),
    ("starcoder2_window", dict(mlp_bias=False), (("mlp", "c_fc", "bias"), ("mlp", "c_proj", "bias"))),
    ("granite_multipliers", dict(embed_scale=1.0), ()),
    ("granite_multipliers", dict(attn_multiplier=None), ()),   # the usual 1/sqrt(d_head)
    ("granite_multipliers", dict(residual_multiplier=1.0), ()),
    ("granite_multipliers", dict(logits_scale=1.0), ()),
    ("phi3_partial_window", dict(rope_dim=8), ()),              # the whole head rotated
    ("phi3_partial_window", dict(attn_windows=None), ()),
    ("smollm3_nope", dict(nope_layers=()), ()),                 # rotary on every layer
    ("smollm3_nope", dict(attn_windows=None), ()),
])
def test_the_checks_can_fail(checkpoints, ids, name, change, drop):
    """Dropping a feature moves the logits far beyond the 1e-4 tolerance: the parity tests have teeth."""
    _, hf, model = checkpoints[name]
    wrong = _without(model, change, drop)
    logits, _, _ = _hf_run(hf, ids)
    assert np.abs(np.asarray(wrong.logits(ids)) - logits).max() > 1e-2


# ---- the allowlist: unknown semantic keys and unsupported values are refused by name ---------------

def _copy_with_config(checkpoints, name, tmp_path, **changes):
    src = checkpoints[name][0]
    dst = tmp_path / name
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("name,changes,match", [
    *[(n, dict(attention_sink_size=4), r"unsupported config key\(s\) for \w+: \['attention_sink_size'\]")
      for n in NAMES],
    ("qwen3_window", dict(layer_types=["full_attention", "chunked_attention"]), "unsupported layer_types"),
    ("qwen3_window", dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     "unsupported rope_type 'yarn'"),
    ("phi3_partial_window", dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 3,
                                                  "long_factor": [1.0] * 3, "partial_rotary_factor": 0.75}),
     "unsupported rope_type 'longrope'"),
    ("smollm3_nope", dict(no_rope_layers=[1, 2]), "unsupported no_rope_layers"),
    ("smollm3_nope", dict(use_sliding_window=False), "sliding_attention layers without use_sliding_window"),
    ("granite_multipliers", dict(logits_scaling=0), "logits_scaling. must be a finite number > 0"),
    ("starcoder2_window", dict(sliding_window=0), "sliding_window must be a positive int"),
])
def test_unknown_config_keys_are_refused(checkpoints, tmp_path, name, changes, match):
    path = _copy_with_config(checkpoints, name, tmp_path, **changes)
    with pytest.raises(ValueError, match=match):
        jj.from_pretrained(path)


# ---- GGUF: files laid out as llama.cpp's converter writes these architectures ----------------------
# Written here from llama.cpp's tensor names (gguf-py's constants) and converter, independently of the
# families' GgufArch records: HF layer tensor (without "model.layers.{i}.") -> GGUF name (without "blk.{i}.").

_GGUF_LAYERS = {
    "qwen3": {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
              "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_norm.weight": "attn_q_norm.weight",
              "self_attn.k_norm.weight": "attn_k_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"},
    "olmo2": {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
              "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
              "post_attention_layernorm.weight": "post_attention_norm.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight", "post_feedforward_layernorm.weight": "post_ffw_norm.weight"},
    "granite": {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                **{f"mlp.{p}_proj.{kind}": f"ffn_{p}.{kind}" for p in ("gate", "up", "down")
                   for kind in ("weight", "bias")}},
    "phi3": {"input_layernorm.weight": "attn_norm.weight", "self_attn.qkv_proj.weight": "attn_qkv.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"},
    "smollm3": {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                "mlp.down_proj.weight": "ffn_down.weight"},
    "starcoder2": {f"{h}.{kind}": f"{g}.{kind}" for h, g in (
        ("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("post_attention_layernorm", "ffn_norm"),
        ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down")) for kind in ("weight", "bias")},
}
# case -> (GGUF architecture, checkpoint, config overrides: what that architecture has no metadata for)
GGUF_CASES = {
    "qwen3": ("qwen3", "qwen3_window", dict(use_sliding_window=False)),
    "olmo2": ("olmo2", "olmo2_gqa", {}),
    "granite": ("granite", "granite_multipliers", {}),
    # llama.cpp ignores Phi-3's window; full rotary and rope base 1e4 as transformers' GGUF reader assumes
    # (its cross-check below), then partial rotary read from rope.dimension_count
    "phi3": ("phi3", "phi3_partial_window", dict(sliding_window=None,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "phi3_partial": ("phi3", "phi3_partial_window", dict(sliding_window=None)),
    # llama.cpp hard-codes a NoPE layer every fourth layer and reads no window: 4 layers, the default interval
    "smollm3": ("smollm3", "smollm3_nope", dict(num_hidden_layers=4, no_rope_layers=None, use_sliding_window=False,
                                                sliding_window=None)),
    # rope base 1e4: transformers' Starcoder2 GGUF reader ignores rope.freq_base (its cross-check below)
    "starcoder2": ("starcoder2", "starcoder2_window", dict(
        sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
}


def _write_gguf(path, hf, arch):
    from gguf import GGUFWriter

    from tests.gguf_checkpoints import _add_value, _permute_rows, byte_level_tokenizer_metadata, finish

    cfg = hf.config
    sd = {k: v.detach().float().numpy() for k, v in hf.state_dict().items()}
    tensors = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if "model.norm.bias" in sd:
        tensors["output_norm.bias"] = sd["model.norm.bias"]
    if not cfg.tie_word_embeddings:
        tensors["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        for name, gname in _GGUF_LAYERS[arch].items():
            tensors[f"blk.{i}.{gname}"] = sd[f"model.layers.{i}.{name}"]
        if arch in ("granite", "smollm3"):   # llama.cpp's rope pairs adjacent rows: its converter reorders Q and K
            for g, heads in (("attn_q", cfg.num_attention_heads), ("attn_k", cfg.num_key_value_heads)):
                tensors[f"blk.{i}.{g}.weight"] = _permute_rows(tensors[f"blk.{i}.{g}.weight"], heads)
    w = GGUFWriter(str(path), arch)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(256)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    if hasattr(cfg, "norm_epsilon"):   # layer norms (Starcoder2)
        w.add_layer_norm_eps(cfg.norm_epsilon)
    else:
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    rope = cfg.rope_parameters
    w.add_rope_dimension_count(int(head_dim * rope.get("partial_rotary_factor", 1.0)))
    if arch == "granite":
        w.add_embedding_scale(cfg.embedding_multiplier)
        w.add_attention_scale(cfg.attention_multiplier)
        w.add_residual_scale(cfg.residual_multiplier)
        w.add_logit_scale(cfg.logits_scaling)
    if arch == "starcoder2":   # transformers' GGUF reader takes the vocabulary size from the tokenizer
        for key, value in byte_level_tokenizer_metadata(cfg.vocab_size).items():
            _add_value(w, key, value)
    if arch == "phi3":   # token ids inside the tiny vocabulary (transformers' defaults are Phi-3's, 32000)
        for key in ("bos", "eos", "padding"):
            _add_value(w, f"tokenizer.ggml.{key}_token_id", 0)
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    return finish(w, path)


@pytest.mark.parametrize("case", list(GGUF_CASES))
def test_gguf_file_matches_the_hf_model(tmp_path, ids, case):
    arch, name, overrides = GGUF_CASES[case]
    hf = make_family_checkpoint(None, name, seed=5, **overrides)
    path = _write_gguf(tmp_path / f"{arch}.gguf", hf, arch)
    model = jj.from_pretrained(path)
    logits, hidden, captured = _hf_run(hf, ids)
    ours, streams, _, normed, attn, mlp, _ = _forward_pieces(model, ids)
    np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=0)
    scale = getattr(hf.config, "residual_multiplier", 1.0)
    for layer in range(model.config.n_layers):
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=1e-4, rtol=0)
        np.testing.assert_allclose(attn[layer], scale * captured[("attn", layer)], atol=1e-4, rtol=0)
        np.testing.assert_allclose(mlp[layer], scale * captured[("mlp", layer)], atol=1e-4, rtol=0)
    np.testing.assert_allclose(normed, hidden[-1], atol=1e-4, rtol=0)
    # transformers reads Starcoder2 and Phi-3 GGUF files too (its Qwen3 reader ignores
    # attention.key_length and takes head_dim 128 from the config class: it cannot read a tiny Qwen3 file)
    if case in ("starcoder2", "phi3"):
        from transformers import AutoModelForCausalLM

        theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
        with torch.no_grad():
            np.testing.assert_allclose(ours, theirs(torch.from_numpy(ids).long()).logits.numpy(), atol=1e-4, rtol=0)
