"""The freezing hooks (``jetjax.models.layers.freeze``) and the frozen path decomposition (``jetjax.paths.frozen``).

Tiny random models of four architectures: GPT-2 (LayerNorm, gelu), GPT-NeoX (parallel residual,
partial rotary), Llama (RMSNorm, grouped-query heads, gated MLP) and OLMo (non-parametric LayerNorm,
``clip_qkv``), in float32 and float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.frozen import (BIAS, count_frozen_paths, frozen_path_attribution, frozen_path_streams)
from jetjax.models import ModelConfig, random_model
from jetjax.models.layers import ACTIVATIONS, Tape, freeze
from jetjax.models.rope import apply_rotary, rotary_tables

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

CONFIGS = {
    "gpt2": dict(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                 n_positions=8, norm_eps=1e-5, activation="gelu_new"),
    "gpt_neox": dict(arch="gpt_neox", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19,
                     n_positions=None, norm_eps=1e-5, activation="gelu", parallel_residual=True, rope_dim=4,
                     tie_embeddings=False),
    "llama": dict(arch="llama", n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=24, vocab_size=19,
                  n_positions=None, norm_eps=1e-6, activation="silu", n_kv_heads=2, rope_dim=4, norm="rmsnorm",
                  tie_embeddings=False),
    "olmo": dict(arch="olmo", n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=24, vocab_size=19,
                 n_positions=None, norm_eps=1e-5, activation="silu", n_kv_heads=2, rope_dim=4,
                 norm="layernorm_no_affine", clip_qkv=0.3),
}
ARCHS = tuple(CONFIGS)
IDS = np.array([3, 1, 4, 1, 5, 9], np.int32)
TARGET, FOIL = 7, 2


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _model(arch, dtype=jnp.float32):
    return random_model(ModelConfig(**CONFIGS[arch]), scale=0.5, dtype=dtype)


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# -- a direct forward pass, independent of the hooked layers ---------------------------------

def _reference_logits(model, ids):
    """The model's logits in NumPy float64 from its parameters: norms, attention, activations, gates
    and clipping written out here (only the rotary tables and the activation formulas are jetjax's)."""
    c, p = model.config, _np(model.params)
    t = len(ids)

    def lin(x, q):
        return x @ q["kernel"] + q.get("bias", 0.0)

    def norm(x, q):
        if c.norm == "rmsnorm":
            return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + c.norm_eps) * q["scale"]
        xc = x - x.mean(-1, keepdims=True)
        out = xc / np.sqrt(np.mean(xc * xc, -1, keepdims=True) + c.norm_eps)
        return out * q["scale"] + q["bias"] if q else out

    def act(z):
        return np.asarray(ACTIVATIONS[c.activation](jnp.asarray(z)), np.float64)

    def rope(x):
        cos, sin = rotary_tables(c, t, jnp.float64)
        return np.asarray(apply_rotary(jnp.asarray(x), cos, sin), np.float64)

    def attend(q, k, v, scale):
        rep = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * scale
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        return np.einsum("hqk,khd->qhd", w, v).reshape(t, -1)

    if c.arch == "gpt2":
        h = p["wte"][ids] + p["wpe"][:t]
        for i in range(c.n_layers):
            b = p["h"][i]
            q, k, v = np.split(lin(norm(h, b["ln_1"]), b["attn"]["c_attn"]), 3, -1)
            heads = lambda y: y.reshape(t, c.n_heads, c.d_head)  # noqa: E731
            h = h + lin(attend(heads(q), heads(k), heads(v), 1 / np.sqrt(c.d_head)), b["attn"]["c_proj"])
            h = h + lin(act(lin(norm(h, b["ln_2"]), b["mlp"]["c_fc"])), b["mlp"]["c_proj"])
        return norm(h, p["ln_f"]) @ p["wte"].T
    if c.arch == "gpt_neox":
        h = p["embed_in"][ids]
        for i in range(c.n_layers):
            b = p["layers"][i]
            qkv = lin(norm(h, b["input_layernorm"]), b["attention"]["query_key_value"])
            q, k, v = np.split(qkv.reshape(t, c.n_heads, 3 * c.d_head), 3, -1)
            a = lin(attend(rope(q), rope(k), v, 1 / np.sqrt(c.d_head)), b["attention"]["dense"])
            m = lin(act(lin(norm(h, b["post_attention_layernorm"]), b["mlp"]["dense_h_to_4h"])),
                    b["mlp"]["dense_4h_to_h"])
            h = h + a + m
        return lin(norm(h, p["final_layer_norm"]), p["embed_out"])
    h = p["embed_tokens"][ids]
    for i in range(c.n_layers):
        b = p["layers"][i]
        x, att = norm(h, b.get("input_layernorm", {})), b["self_attn"]
        q = lin(x, att["q_proj"]).reshape(t, c.n_heads, c.d_head)
        k, v = (lin(x, att[n]).reshape(t, c.kv_heads, c.d_head) for n in ("k_proj", "v_proj"))
        if c.clip_qkv is not None:
            q, k, v = (np.clip(y, -c.clip_qkv, c.clip_qkv) for y in (q, k, v))
        h = h + lin(attend(rope(q), rope(k), v, 1 / np.sqrt(c.d_head)), att["o_proj"])
        x, mlp = norm(h, b.get("post_attention_layernorm", {})), b["mlp"]
        h = h + lin(act(lin(x, mlp["gate_proj"])) * lin(x, mlp["up_proj"]), mlp["down_proj"])
    h = norm(h, p.get("norm", {}))
    return lin(h, p["lm_head"]) if "lm_head" in p else h @ p["embed_tokens"].T


# -- (a) the hooks change nothing by default -------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_default_logits_equal_a_direct_computation(arch, x64):
    model = _model(arch, jnp.float64)
    got = np.asarray(model.logits(IDS))
    np.testing.assert_allclose(got, _reference_logits(model, IDS), rtol=0, atol=1e-12 * np.abs(got).max())


@pytest.mark.parametrize("arch", ARCHS)
def test_recording_leaves_every_value_bit_for_bit(arch):
    model = _model(arch)
    h = model.residual_stream(IDS, params=model.params, _checked=True)
    plain = [model.attn(0, h[0]), model.mlp(1, h[1]), model.decode(h[-1])]
    with freeze.record() as tape:
        recorded = [model.attn(0, h[0]), model.mlp(1, h[1]), model.decode(h[-1])]
    assert freeze.mode is None and len(tape) > 0
    for a, b in zip(plain, recorded):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_olmo_clips_values_in_these_tests():
    """The clip_qkv case is not vacuous: some values are clipped in the actual pass."""
    model = _model("olmo")
    h = model.embed(IDS)
    with freeze.record() as tape:
        model.attn(0, h)
    (mask, _), = [f for site, f in tape if site == "clip"]
    assert 0 < int(np.sum(mask)) < mask.size


# -- (b) replay at the actual input reproduces each branch; (c) frozen branches are affine ---

def _frozen_branch(model, kind, layer, x_star):
    fn = {"attn": model.attn, "mlp": model.mlp, "block": model.block}[kind]
    with freeze.record() as tape:
        out = fn(layer, x_star)

    def frozen(v):
        with freeze.replay(tape):
            return fn(layer, v)

    return out, frozen


def _inputs(model):
    """(kind, layer, the stream the branch reads) for every branch and block."""
    h, mids = model.residual_stream(IDS, mid=True)
    sequential = not model.config.parallel_residual
    for layer in range(model.config.n_layers):
        yield "attn", layer, h[layer]
        yield "mlp", layer, mids[layer] if sequential else h[layer]
        yield "block", layer, h[layer]


@pytest.mark.parametrize("arch", ARCHS)
def test_replay_at_the_actual_input_reproduces_each_branch(arch, x64):
    model = _model(arch, jnp.float64)
    for kind, layer, x in _inputs(model):
        out, frozen = _frozen_branch(model, kind, layer, x)
        np.testing.assert_allclose(np.asarray(frozen(x)), np.asarray(out), rtol=0,
                                   atol=1e-12 * float(jnp.abs(out).max()), err_msg=f"{kind}{layer}")


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_branches_are_affine(arch, x64):
    model = _model(arch, jnp.float64)
    keys = jax.random.split(jax.random.key(1), 2)
    for kind, layer, x in _inputs(model):
        _, g = _frozen_branch(model, kind, layer, x)
        u, v = (jax.random.normal(k, x.shape, jnp.float64) for k in keys)
        a, b = 0.7, -2.3
        c = g(jnp.zeros_like(x))
        lhs, rhs = g(a * u + b * v) - c, a * (g(u) - c) + b * (g(v) - c)
        scale = float(jnp.abs(rhs).max())
        assert scale > 1e-3, f"{kind}{layer}: the linear part vanished"
        np.testing.assert_allclose(np.asarray(lhs), np.asarray(rhs), rtol=0, atol=1e-12 * scale,
                                   err_msg=f"{kind}{layer}")


def test_replay_takes_a_leading_batch_axis(x64):
    model = _model("llama", jnp.float64)
    h = model.embed(IDS)
    _, g = _frozen_branch(model, "block", 0, h)
    batch = jnp.stack([h, 2 * h, jnp.zeros_like(h)])
    with freeze.record() as tape:
        model.block(0, h)
    with freeze.replay(tape):
        got = model.block(0, batch)
    np.testing.assert_allclose(np.asarray(got), np.stack([np.asarray(g(v)) for v in batch]), atol=1e-12)


def test_replay_misuse_is_named():
    model = _model("gpt2")
    h = model.embed(IDS)
    with freeze.record() as tape:
        model.attn(0, h)
    assert tape.sites == ("layer_norm", "attention")
    with pytest.raises(ValueError, match="asked for 'activation:gelu_new'"):
        with freeze.replay(tape):
            model.mlp(0, h)
    with pytest.raises(ValueError, match="only 2 of the tape's 3 factors"):
        with freeze.replay(Tape(tape.entries + [("layer_norm", tape.entries[0][1])])):
            model.attn(0, h)
    with pytest.raises(ValueError, match="all used"):
        with freeze.replay(tape):
            model.attn(0, h)
            model.attn(0, h)
    with pytest.raises(ValueError, match="does not broadcast"):
        with freeze.replay(tape):
            model.attn(0, h[:3])
    with pytest.raises(RuntimeError, match="do not nest"):
        with freeze.record():
            with freeze.replay(tape):
                pass
    with pytest.raises(TypeError, match="takes a Tape"):
        with freeze.replay([]):
            pass
    assert freeze.mode is None


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_vanishes_at_zero(name):
    """What makes ``ratio = 0`` exact where ``z* == 0``."""
    assert float(ACTIVATIONS[name](jnp.zeros(()))) == 0.0


# -- (d) the frozen paths add up exactly -----------------------------------------------------

def _tol(dtype):
    return 1e-10 if dtype == jnp.float64 else 1e-4


# every family and granularity in float64 (to 1e-10); float32 (to 1e-4) on one family per kind of residual
@pytest.mark.parametrize("arch,granularity,dtype", [
    *[(a, g, jnp.float64) for a in ARCHS for g in ("block", "branch")],
    ("llama", "branch", jnp.float32), ("gpt_neox", "block", jnp.float32)],
    ids=lambda v: getattr(v, "__name__", str(v)))
def test_all_frozen_paths_add_up_to_the_model(arch, granularity, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        model = _model(arch, dtype)
        c = model.config
        paths = frozen_path_streams(model, IDS, granularity=granularity)
        assert len(paths) == count_frozen_paths(c.n_layers, granularity, parallel_residual=c.parallel_residual)
        assert len(set(paths.labels)) == len(paths) and paths.terms.dtype == dtype
        h_last = np.asarray(model.residual_stream(IDS)[-1], np.float64)
        total = np.asarray(paths.terms, np.float64).sum(0)
        scale = np.abs(h_last).max()
        np.testing.assert_allclose(total, h_last, rtol=0, atol=_tol(dtype) * scale)

        att = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity=granularity)
        logits = np.asarray(model.logits(IDS), np.float64)[-1]
        assert att.total == pytest.approx(logits[TARGET] - logits[FOIL], rel=1e-12 if dtype == jnp.float64 else 1e-5)
        mass = float(np.abs(att.scores).sum())
        assert abs(att.remainder) <= _tol(dtype) * mass
        assert att.labels[:-1] == tuple(f"{lab}>dec" for lab in paths.labels) and att.labels[-1] == "bias>dec"


def test_attribution_scores_are_the_paths_decoded(x64):
    """Each score is the path vector through the frozen decoder, as a logit difference."""
    model = _model("llama", jnp.float64)
    paths = frozen_path_streams(model, IDS, granularity="branch")
    att = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity="branch")
    h_last = model.residual_stream(IDS)[-1]
    with freeze.record() as tape:
        model.final_norm(h_last)

    def dec(v):
        with freeze.replay(tape):
            return model.decode(v)

    const = dec(jnp.zeros_like(h_last))
    lin = jax.vmap(lambda v: dec(v) - const)(paths.terms)[:, -1]
    want = np.append(np.asarray(lin[:, TARGET] - lin[:, FOIL]), float(const[-1, TARGET] - const[-1, FOIL]))
    np.testing.assert_allclose(att.scores, want, rtol=1e-10, atol=1e-12)
    assert att.direct.keys() == {"attn0", "mlp0", "attn1", "mlp1"}


def test_position_and_foil_free_target(x64):
    model = _model("gpt2", jnp.float64)
    att = frozen_path_attribution(model, IDS, TARGET, position=2, granularity="block")
    logits = np.asarray(model.logits(IDS))[2]
    assert att.position == 2 and att.foil is None
    assert att.total == pytest.approx(float(logits[TARGET]), abs=1e-12)
    assert abs(att.remainder) < 1e-10 * np.abs(att.scores).sum()


def test_bad_settings_are_named():
    model = _model("gpt2")
    with pytest.raises(ValueError, match="granularity"):
        frozen_path_streams(model, IDS, granularity="layer")
    with pytest.raises(ValueError, match="max_length"):
        frozen_path_attribution(model, IDS, TARGET, max_length=-1)
    with pytest.raises(IndexError, match="position 6 is out of range for a sequence of 6 tokens"):
        frozen_path_attribution(model, IDS, TARGET, position=6)
    with pytest.raises(TypeError, match="position must be an int, got 1.5"):
        frozen_path_attribution(model, IDS, TARGET, position=1.5)
    with pytest.raises(ValueError, match="one sequence"):
        frozen_path_attribution(model, np.stack([IDS, IDS]), TARGET)
    with pytest.raises(ValueError, match="out of range"):
        frozen_path_attribution(model, IDS, 19)


# -- (e) max_length: the remainder is exactly the dropped paths ------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox"])
def test_max_length_remainder_is_the_dropped_paths(arch, x64):
    model = _model(arch, jnp.float64)
    full = frozen_path_streams(model, IDS, granularity="branch")
    full_att = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity="branch")
    for max_length in (0, 1, 2):
        cut = frozen_path_streams(model, IDS, granularity="branch", max_length=max_length)
        att = frozen_path_attribution(model, IDS, TARGET, FOIL, granularity="branch", max_length=max_length)
        lengths = {lab: len(lab.split(">")) - 1 for lab in full.labels}
        kept = {lab for lab, n in lengths.items() if n <= max_length}
        assert set(cut.labels) == kept and len(cut) <= len(full)
        for lab in cut.labels:   # a kept path is the same vector as in the full enumeration
            np.testing.assert_allclose(np.asarray(cut.term(lab)), np.asarray(full.term(lab)), atol=1e-12)
        dropped = sum(np.asarray(full.term(lab)) for lab in full.labels if lab not in kept)
        np.testing.assert_allclose(np.asarray(cut.remainder), dropped, atol=1e-10)
        score = dict(zip(full_att.labels, full_att.scores))
        dropped_score = sum(s for lab, s in score.items() if lab not in set(att.labels))
        assert att.remainder == pytest.approx(dropped_score, abs=1e-10)
        assert count_frozen_paths(2, "branch", parallel_residual=model.config.parallel_residual,
                                  max_length=max_length) == len(cut)
    assert all(lab.startswith(("emb", BIAS)) for lab in full.labels)


def test_compiled_once_per_setting():
    model = _model("gpt2")
    frozen_path_attribution(model, IDS, TARGET, granularity="block")
    frozen_path_attribution(model, IDS[:4], TARGET, granularity="block")
    from jetjax._internal.compiled import built
    assert set(built(model, "frozen")) == {("attribution", "block", None)}


# The frozen decomposition on SmolLM2 itself is checked in tests/test_real_model.py, through the
# default attribution (the path search over frozen paths), whose parts must add up to the model.
