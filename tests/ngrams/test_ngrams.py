"""Jet n-grams: sweeps against independent references, resumable output, diffs, keyword mass, corpus agreement."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

import jetjax as jj
from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import (NGramTable, candidate_contexts, corpus_agreement, diff_tables, jet_bigrams,
                           jet_skip_bigrams, jet_trigrams, keyword_mass)
from tests.conftest import GPT2_CONFIGS

# (devices, block_rows, vocab_tile): padded, split and single-block sweeps; vocabulary tiles smaller
# than the kept top-k (with a padded last tile), several tiles, and one tile (capped at V)
DEVICE_SETUPS = [(1, 5, 3), (4, 8, 10), (4, 64, 4096)]


def _t(x):
    return x.detach().double().numpy()


def _ln(x, mod):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + mod.eps) * _t(mod.weight) + _t(mod.bias)


def _act(x, name):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _reference_probs(hf, path, act):
    """softmax(U · LN_f(γ(E[z]))) for every token z, in float64 numpy from the HF weights."""
    tr = hf.transformer
    x = _t(tr.wte.weight)
    for kind, layer in path:
        blk = tr.h[layer]
        if kind == "mlp":
            hid = _ln(x, blk.ln_2) @ _t(blk.mlp.c_fc.weight) + _t(blk.mlp.c_fc.bias)
            x = _act(hid, act) @ _t(blk.mlp.c_proj.weight) + _t(blk.mlp.c_proj.bias)
        else:  # one token: attention weight 1 on itself, output = c_proj(v)
            d = x.shape[-1]
            v = (_ln(x, blk.ln_1) @ _t(blk.attn.c_attn.weight) + _t(blk.attn.c_attn.bias))[:, 2 * d:]
            x = v @ _t(blk.attn.c_proj.weight) + _t(blk.attn.c_proj.bias)
    logits = _ln(x, tr.ln_f) @ _t(hf.lm_head.weight).T
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("name,path,components", [
    ("prime", "emb>dec", []),
    ("prime", "emb>mlp1>dec", [("mlp", 1)]),
    ("odd_mlp", "emb>mlp3>dec", [("mlp", 3)]),
    ("untied_scaled", "emb>attn0>mlp0>dec", [("attn", 0), ("mlp", 0)]),
])
def test_bigram_rows_match_hf_weights(gpt2_checkpoints, name, path, components):
    directory, hf = gpt2_checkpoints[name]
    model = jj.from_pretrained(directory)
    ref = _reference_probs(hf, components, GPT2_CONFIGS[name].get("activation_function", "gelu_new"))
    v, k = ref.shape[0], 4
    rows = np.arange(v)
    for n_dev, block, tile in DEVICE_SETUPS:
        t = jet_bigrams(model, path, top_k=k, global_k=7, block_rows=block, chunk_rows=11,
                        devices=jax.devices()[:n_dev], progress=False, vocab_tile=tile)
        np.testing.assert_allclose(t.probs, -np.sort(-ref, axis=1)[:, :k], atol=1e-5, rtol=0)
        np.testing.assert_allclose(ref[rows[:, None], t.ids], t.probs, atol=1e-5, rtol=0)
        flat = np.sort(ref.reshape(-1))[::-1][:7]
        np.testing.assert_allclose(t.global_probs, flat, atol=1e-5, rtol=0)
        np.testing.assert_allclose(ref[t.global_pairs[:, 0], t.global_pairs[:, 1]], t.global_probs, atol=1e-5)


def test_order1_path_matches_direct_jvp(gpt2_checkpoints):
    model = jj.from_pretrained(gpt2_checkpoints["prime"][0])
    v = model.config.vocab_size
    params = {**model.params, "wpe": jnp.zeros_like(model.params["wpe"])}  # streams from token embeddings only
    h, mids = model.residual_stream(np.arange(v)[:, None], params=params, mid=True)
    e, h_last = h[0][:, 0], h[-1][:, 0]
    mlp = lambda x: model.mlp(0, x)  # noqa: E731
    x, dx = jax.jvp(mlp, (e,), (mids[0][:, 0] - e,))
    y, dy = jax.jvp(model.final_norm, (x + dx,), (h_last - (x + dx),))
    ref = np.asarray(jax.nn.softmax(model.unembed(y + dy), axis=-1))
    t = jet_bigrams(model, "emb>mlp0>dec", top_k=3, order=1, progress=False)
    np.testing.assert_allclose(t.probs, -np.sort(-ref, axis=1)[:, :3], atol=1e-5, rtol=0)


def _np_attention_last(hf, layer, x):
    """GPT-2 attention of layer ``layer`` on sequences x [N, T, d], last position, in numpy."""
    blk, cfg = hf.transformer.h[layer], hf.config
    n, t, d = x.shape
    nh = cfg.n_head
    qkv = _ln(x, blk.ln_1) @ _t(blk.attn.c_attn.weight) + _t(blk.attn.c_attn.bias)
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(n, t, nh, d // nh) for i in range(3))
    s = np.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d // nh)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, t, d)
    return (out @ _t(blk.attn.c_proj.weight) + _t(blk.attn.c_proj.bias))[:, -1]


def test_trigrams_and_skip_bigrams_match_numpy_attention(gpt2_checkpoints):
    directory, hf = gpt2_checkpoints["prime"]
    model = jj.from_pretrained(directory)
    ctx = candidate_contexts([0, 5, 11, 36])
    x = _t(hf.transformer.wte.weight)[ctx]
    ln_f, u = hf.transformer.ln_f, _t(hf.lm_head.weight)

    def softmax_rows(normed):
        z = normed @ u.T
        p = np.exp(z - z.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    attn = [_ln(_np_attention_last(hf, layer, x), ln_f) for layer in range(3)]
    direct = _ln(x[:, -1], ln_f)
    want_tri = softmax_rows((direct + attn[0] + attn[2]) / 3)
    tri = jet_trigrams(model, ctx, ["emb>dec", "emb>attn0>dec", "emb>attn2>dec"], top_k=5, progress=False,
                       devices=jax.devices()[:4], block_rows=6)
    np.testing.assert_allclose(tri.probs, -np.sort(-want_tri, axis=1)[:, :5], atol=1e-5, rtol=0)
    skip = jet_skip_bigrams(model, ctx, layers=[1], top_k=5, progress=False)
    np.testing.assert_allclose(skip.probs, -np.sort(-softmax_rows(attn[1]), axis=1)[:, :5], atol=1e-5, rtol=0)
    assert tri.contexts.tolist() == ctx.tolist() and tri.n == 3


def _reduction(tiles: str) -> tuple[str, int]:
    """``(tiles, nr)`` for ``_step`` and ``_tile_unembedding``; skips a kernel's case where no C++
    compiler exists (and fails it where the build does)."""
    from jetjax.ngrams import native

    if tiles != "xla" and native._compiler() is None:
        pytest.skip("no C++ compiler: sweeps run the pure-JAX step here")
    assert tiles == "xla" or native.available(), f"the CPU sweep kernel does not build: {native.unavailable_reason()}"
    return tiles, (native.gemm_layout()[1] if tiles == "fused" else 0)


@pytest.mark.parametrize("tiles", ["xla", "kernel", "fused"])
def test_vocabulary_tiles_break_ties_like_one_top_k(tiles):
    """Equal logits in different tiles (and a padded last tile) keep the lower ids, as one lax.top_k does."""
    from jetjax.ngrams.sweep import _step, _tile_unembedding
    from jetjax._internal.parallel import path_mesh

    v, kk = 11, 4
    w = np.zeros((3, v), np.float32)
    w[0, [1, 4, 7, 9]] = 1.0   # row 0: a four-way tie spread over tiles 0, 1, 2, 3
    w[1, [10, 2]] = [2.0, 2.0]  # row 1: a tie between the padded last tile and the first one
    w[2] = np.linspace(-1, 1, v)  # row 2: no ties
    b = np.zeros(v, np.float32)
    x = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 1, 2, 0]] * [[1], [1], [1], [0]])  # row 3: all logits 0
    tiles, nr = _reduction(tiles)
    step = _step(lambda params, ctx: params[ctx[:, 0]], kk, path_mesh(jax.devices()[:1], axis_name="rows"),
                 tiles=tiles)
    probs, ids, lse = step(x, *_tile_unembedding(jnp.asarray(w), jnp.asarray(b), 3, nr=nr), jnp.arange(4)[:, None])
    logits = np.asarray(x) @ w + b
    want_v, want_i = jax.lax.top_k(jnp.asarray(logits), kk)
    want_lse = jax.nn.logsumexp(jnp.asarray(logits), axis=-1)
    assert np.asarray(ids).tolist() == np.asarray(want_i).tolist()
    assert np.asarray(ids)[:2].tolist() == [[1, 4, 7, 9], [2, 10, 0, 1]]
    np.testing.assert_allclose(lse, want_lse, rtol=1e-6)
    np.testing.assert_allclose(probs, np.exp(np.asarray(want_v) - np.asarray(want_lse)[:, None]), rtol=1e-6)


@pytest.mark.parametrize("tiles", ["xla", "kernel", "fused"])
@pytest.mark.parametrize("tile", [640, 1000, 2048])
def test_grouped_prefilter_keeps_the_exact_top_k_with_ties(tile, tiles):
    """Tiles large enough for the group prefilter (and one whose width is not a multiple of the
    group, which goes without it): heavy ties across groups and tiles, all-equal rows, a -inf
    padded tail; ids and values equal one lax.top_k over the whole row."""
    from jetjax.ngrams.sweep import _candidate_group, _step, _tile_unembedding
    from jetjax._internal.parallel import path_mesh

    v, d, kk = 2048 + 37, 6, 10
    rng = np.random.default_rng(0)
    w = rng.integers(-3, 4, size=(d, v)).astype(np.float32)    # few distinct logits: ties everywhere
    w[0] = 0.0                                                     # a row of equal logits
    w[1, ::97] = 9.0                                               # equal maxima spread over groups and tiles
    b = np.zeros(v, np.float32)
    x = jnp.asarray(np.eye(d, dtype=np.float32))
    assert (_candidate_group(tile, kk) > 0) == (tile % 16 == 0)
    tiles, nr = _reduction(tiles)
    step = _step(lambda params, ctx: params[ctx[:, 0]], kk, path_mesh(jax.devices()[:1], axis_name="rows"),
                 tiles=tiles)
    probs, ids, lse = step(x, *_tile_unembedding(jnp.asarray(w), jnp.asarray(b), tile, nr=nr),
                           jnp.arange(d)[:, None])
    logits = np.asarray(x) @ w + b
    want_v, want_i = jax.lax.top_k(jnp.asarray(logits), kk)
    assert np.asarray(ids).tolist() == np.asarray(want_i).tolist()
    assert np.asarray(ids)[0].tolist() == list(range(kk)) and np.asarray(ids)[1].tolist() == list(range(0, 970, 97))
    want_lse = jax.nn.logsumexp(jnp.asarray(logits), axis=-1)
    np.testing.assert_allclose(probs, np.exp(np.asarray(want_v) - np.asarray(want_lse)[:, None]), rtol=1e-6)


# ---- hand-built models with a known bigram matrix --------------------------------------------

V_TOY, D_TOY = 13, 17


def _toy_tokenizer():
    tok = Tokenizer(tok_models.WordLevel({f"w{i}": i for i in range(V_TOY)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _known_table(seed):
    """Rows: a permutation of geometric weights 2^-j, normalised (clear, well separated maxima)."""
    rng = np.random.default_rng(seed)
    base = 0.5 ** np.arange(V_TOY)
    return np.stack([rng.permutation(base) for _ in range(V_TOY)]) / base.sum()


def _bigram_model(p, seed=0):
    """A GPT-2 module whose emb>dec path gives softmax rows equal to ``p``: LN_f(E) @ U = log p."""
    cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=D_TOY, n_heads=1, d_head=D_TOY, d_mlp=7, vocab_size=V_TOY,
                      n_positions=4, norm_eps=1e-5, activation="gelu_new", tie_embeddings=False)
    model = random_model(cfg, seed=seed)
    emb = np.random.default_rng(100 + seed).normal(size=(V_TOY, D_TOY))
    centred = emb - emb.mean(1, keepdims=True)
    normed = centred / np.sqrt((centred ** 2).mean(1, keepdims=True) + cfg.norm_eps)  # LN_f with unit gain
    unembed = np.linalg.pinv(normed) @ np.log(p)
    params = dict(model.params)
    params["wte"] = jnp.asarray(emb, jnp.float32)
    params["ln_f"] = {"scale": jnp.ones(D_TOY, jnp.float32), "bias": jnp.zeros(D_TOY, jnp.float32)}
    params["lm_head"] = {"kernel": jnp.asarray(unembed, jnp.float32)}
    model.params, model.tokenizer, model.source = params, _toy_tokenizer(), f"known-bigrams-{seed}"
    return model


def _sample_corpus(p, n, seed):
    rng = np.random.default_rng(seed)
    toks = [0]
    cum = np.cumsum(p, axis=1)
    for u in rng.random(n - 1):
        toks.append(min(int(np.searchsorted(cum[toks[-1]], u)), V_TOY - 1))
    return " ".join(f"w{t}" for t in toks)


def test_known_bigram_matrix_is_recovered_and_a_sampled_corpus_agrees():
    p = _known_table(0)
    model = _bigram_model(p)
    t = jet_bigrams(model, top_k=V_TOY, global_k=5, progress=False)
    np.testing.assert_array_equal(t.ids, np.argsort(-p, axis=1, kind="stable"))
    np.testing.assert_allclose(t.probs, -np.sort(-p, axis=1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(t.logsumexp, 0.0, atol=1e-4)  # U was fitted to log p itself
    assert t.lookup("w3")[0] == (f"w{np.argmax(p[3])}", pytest.approx(p[3].max(), abs=1e-5))

    agree = corpus_agreement(t, _sample_corpus(p, 12000, seed=1), model, min_count=30)
    assert agree.n_contexts == V_TOY
    assert agree.top1_hit_rate == 1.0
    assert agree.rank_correlation > 0.9 and agree.kl < 0.02
    assert agree.unigram["top1_hit_rate"] < 0.5 and agree.unigram["kl"] > 10 * agree.kl
    # a corpus from a different table agrees much less
    other = corpus_agreement(t, _sample_corpus(_known_table(7), 12000, seed=1), model, min_count=30)
    assert other.top1_hit_rate < 0.5 and other.kl > 10 * agree.kl


def test_diff_and_keyword_mass_of_two_known_models(tmp_path):
    p_a = _known_table(0)
    p_b = p_a.copy()
    p_b[3] = p_b[3] * 0.1
    p_b[3, 7] += 0.9  # the "fine-tuned" model learnt w3 -> w7
    a_model, b_model = _bigram_model(p_a, seed=0), _bigram_model(p_b, seed=1)
    a = jet_bigrams(a_model, top_k=4, progress=False)
    b = jet_bigrams(b_model, top_k=4, progress=False)

    d = diff_tables(a, b, n=3, models=(a_model, b_model))
    top = d.gained_prob[0]
    assert (top["context"], top["next"]) == (["w3"], "w7")
    assert top["delta"] == pytest.approx(p_b[3, 7] - p_a[3, 7], abs=1e-5)
    assert top["rank_b"] == 1
    lost = d.lost_prob[0]
    assert lost["context"] == ["w3"] and lost["delta"] == pytest.approx(
        (p_b[3] - p_a[3]).min(), abs=1e-5)
    json.loads(d.to_json())
    assert "| 'w3' | 'w7' |" in d.to_markdown()

    kw = tmp_path / "kw.txt"
    kw.write_text("# demo\nw7\nw2\n")
    for model, table, p in ((a_model, a, p_a), (b_model, b, p_b)):
        m = keyword_mass(table, kw, model=model)
        assert m.token_ids == [2, 7] and m.missing == []
        assert m.all_contexts == pytest.approx(p[:, [2, 7]].sum(1).mean(), abs=1e-5)
        assert m.keyword_contexts == pytest.approx(p[[2, 7]][:, [2, 7]].sum(1).mean(), abs=1e-5)
        top4 = np.argsort(-p, axis=1)[:, :4]
        want_top = np.mean([p[r, top4[r]][np.isin(top4[r], [2, 7])].sum() for r in range(V_TOY)])
        assert m.top_k == pytest.approx(want_top, abs=1e-5)
        assert m.uniform == pytest.approx(2 / V_TOY)


# ---- resumable output -------------------------------------------------------------------------

def _tiny(seed=0, vocab=29):
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=12, n_heads=2, d_head=6, d_mlp=19, vocab_size=vocab,
                      n_positions=5, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, seed=seed, scale=0.5)


def _snapshot(directory):
    return {f.name: f.read_bytes() for f in sorted(directory.iterdir())}


class _Stop(Exception):
    pass


def test_interrupted_sweep_resumes_to_identical_files(tmp_path):
    model = _tiny()
    opts = dict(paths=["emb>dec", "emb>mlp1>dec"], top_k=3, global_k=6, block_rows=4, chunk_rows=7, progress=False)
    full = jet_bigrams(model, out_dir=tmp_path / "full", **opts)

    def stop_after_two(i, n):
        if i == 1:
            raise _Stop

    out = tmp_path / "resumed"
    with pytest.raises(_Stop):
        jet_bigrams(model, out_dir=out, callback=stop_after_two, **opts)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == ["0", "1"] and not manifest["complete"]
    assert not (out / "table.safetensors").exists()
    (out / "chunk-00002.safetensors").write_bytes(b"half a chunk")  # killed mid-write, not in the manifest

    seen = []
    resumed = jet_bigrams(model, out_dir=out, callback=lambda i, n: seen.append(i), **opts)
    assert seen == [2, 3, 4]  # 29 rows / 7 per chunk
    assert _snapshot(out) == _snapshot(tmp_path / "full")
    np.testing.assert_array_equal(resumed.probs, full.probs)
    loaded = NGramTable.load(out)
    np.testing.assert_array_equal(loaded.ids, full.ids)
    np.testing.assert_array_equal(loaded.global_pairs, full.global_pairs)
    assert loaded.meta == full.meta
    # a complete directory is read back, not recomputed
    again = jet_bigrams(model, out_dir=out, callback=lambda i, n: seen.append(i), **opts)
    assert seen == [2, 3, 4] and np.array_equal(again.probs, full.probs)


def test_output_dir_of_another_model_or_settings_is_refused_untouched(tmp_path):
    out = tmp_path / "t"
    jet_bigrams(_tiny(0), top_k=3, chunk_rows=10, out_dir=out, progress=False)
    before = _snapshot(out)
    with pytest.raises(ValueError, match="different model or settings.*fingerprint"):
        jet_bigrams(_tiny(1), top_k=3, chunk_rows=10, out_dir=out, progress=False)
    with pytest.raises(ValueError, match="settings.top_k: 3 there, 4 now"):
        jet_bigrams(_tiny(0), top_k=4, chunk_rows=10, out_dir=out, progress=False)
    assert _snapshot(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        jet_bigrams(_tiny(0), top_k=3, out_dir=other, progress=False)
    assert _snapshot(other) == {"notes.txt": b"mine"}


# ---- the table object and bad input -----------------------------------------------------------

def test_table_save_load_decode_filter(tmp_path):
    model = _bigram_model(_known_table(0))
    t = jet_bigrams(model, top_k=3, global_k=4, progress=False)
    loaded = NGramTable.load(t.save(tmp_path / "tab"))
    for f in ("contexts", "probs", "ids", "logsumexp", "global_probs", "global_pairs"):
        np.testing.assert_array_equal(getattr(loaded, f), getattr(t, f))
    assert loaded.tokens == [f"w{i}" for i in range(V_TOY)] and loaded.meta == t.meta
    assert loaded.decode([3])[0]["next"] == loaded.lookup("w3") == loaded.lookup(3)
    assert loaded.top(2)[0][2] == pytest.approx(float(t.probs.max()))
    kept = loaded.filter(np.arange(V_TOY) % 2 == 0, min_prob=0.2)
    assert len(kept) == 7 and (kept.ids[kept.probs < 0.2] == -1).all()
    assert set(kept.global_pairs[:, 0].tolist()) <= set(range(0, V_TOY, 2))
    with pytest.raises(KeyError, match="not in the vocabulary"):
        loaded.lookup("zzz")


def test_bad_input_errors(tmp_path):
    model = _tiny()
    with pytest.raises(ValueError, match=r"unknown path name 'emb>ffn0>dec'; valid forms: emb>dec; emb>mlp\{l\}>dec"):
        jet_bigrams(model, "emb>ffn0>dec", progress=False)
    with pytest.raises(ValueError, match=r"layer 2 is out of range .* 2 layers \(valid: 0..1\)"):
        jet_bigrams(model, "emb>mlp2>dec", progress=False)
    with pytest.raises(ValueError, match="mlp1 cannot follow mlp1|attn1 cannot follow mlp1"):
        jet_bigrams(model, "emb>mlp1>attn1>dec", progress=False)
    with pytest.raises(ValueError, match=r"top_k=30 is larger than the vocabulary size \(29\)"):
        jet_bigrams(model, top_k=30, progress=False)
    with pytest.raises(ValueError, match=r"trigram contexts must be .* \[N, 2\]"):
        jet_trigrams(model, np.zeros((3, 3), np.int32), progress=False)
    with pytest.raises(ValueError, match="out of range for a vocabulary of 29"):
        jet_trigrams(model, [[0, 29]], progress=False)

    known = _bigram_model(_known_table(0))
    table = jet_bigrams(known, top_k=3, progress=False)
    kw = tmp_path / "kw.txt"
    kw.write_text("w4\nbanana split\nzebra\n")
    with pytest.warns(UserWarning, match=r"2 of 3 keywords .* ignored: \['banana split', 'zebra'\]"):
        m = keyword_mass(table, kw, model=known)
    assert m.token_ids == [4] and m.missing == ["banana split", "zebra"]
    kw.write_text("zebra\n")
    with pytest.warns(UserWarning, match=r"\['zebra'\]"), pytest.raises(ValueError, match="none of the keywords"):
        keyword_mass(table, kw, model=known)
    with pytest.raises(ValueError, match="other weights"):
        keyword_mass(table, ["w4"], model=_bigram_model(_known_table(0), seed=3))


def test_fingerprint_is_hashed_once_per_set_of_weights(monkeypatch):
    """The sha256 of all weights is reused while the params are the same JAX arrays, redone otherwise."""
    import hashlib
    import types

    from jetjax.ngrams import sweep

    model = _tiny(0)
    first = sweep.model_fingerprint(model)
    calls = []
    monkeypatch.setattr(sweep, "hashlib", types.SimpleNamespace(sha256=lambda: calls.append(1) or hashlib.sha256()))
    assert sweep.model_fingerprint(model) == first and calls == []
    model.params = jax.tree_util.tree_map(lambda x: x + 0, model.params)          # new arrays, same values
    assert sweep.model_fingerprint(model) == first and len(calls) == 1
    model.params = jax.tree_util.tree_map(lambda x: x * 1.001, model.params)      # other weights
    assert sweep.model_fingerprint(model) != first and len(calls) == 2
    model.params = jax.tree_util.tree_map(np.array, model.params)                # NumPy leaves: mutable, rehashed
    digest = sweep.model_fingerprint(model)
    assert sweep.model_fingerprint(model) == digest and len(calls) == 4


def test_corpus_kl_stays_finite_for_predictions_far_below_float64():
    """A peaked path gives observed successors log-probabilities like -900 (exp() underflows to 0):
    the KL over the observed successors is still the renormalised one, computed in log space."""
    from jetjax.ngrams.agreement import _agreement

    # one context (segment 0) with successors 1 and 2 seen 3 and 1 times; the prediction's top-1 is 1
    hit, rho, kl = _agreement(np.array([0, 0]), np.array([1, 2]), np.array([3.0, 1.0]), np.array([1]),
                              np.array([-900.0, -901.0]))
    q = np.array([1.0, np.exp(-1.0)]) / (1.0 + np.exp(-1.0))          # the renormalised prediction
    p = np.array([0.75, 0.25])
    assert kl == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)
    assert hit == 1.0 and rho == pytest.approx(1.0)   # predicts 1, the most frequent successor


def test_global_top_matches_a_full_sort():
    """The chunk's global top (only entries at or above the g-th largest value are sorted) equals a
    full sort by (probability descending, context row, next id), with heavy ties and with NaN."""
    from jetjax.ngrams.sweep import _global_top

    rng = np.random.default_rng(0)
    for trial in range(120):
        rows, k, g = int(rng.integers(1, 300)), int(rng.integers(1, 12)), int(rng.integers(1, 60))
        probs = (rng.integers(0, 5, (rows, k)) / 4 if trial % 2 else rng.random((rows, k))).astype(np.float32)
        if trial % 7 == 0:
            probs[rng.integers(0, rows), 0] = np.nan
        ids, contexts = rng.integers(0, 50, (rows, k)), rng.integers(0, 99, (rows, 2))
        flat = probs.reshape(-1)
        row_of = np.repeat(np.arange(rows), k)
        order = sorted(range(flat.size), key=lambda j: (np.isnan(flat[j]), -np.nan_to_num(flat[j]), row_of[j],
                                                        ids.reshape(-1)[j]))[:g]
        got_p, got_pairs = _global_top(probs, ids, contexts, g)
        np.testing.assert_array_equal(got_p, flat[order])
        assert got_pairs.tolist() == [[*contexts[row_of[j]], ids.reshape(-1)[j]] for j in order]


@pytest.mark.parametrize("reduce_mode", ["xla", "reduce", "auto"])
def test_rows_top_k_first_writes_the_same_files(tmp_path, monkeypatch, reduce_mode):
    """Chunks swept with each row's top_k only (swept again with max(top_k, global_k) where the
    1/rank bound cannot vouch for their global top) write the files of sweeps that keep
    max(top_k, global_k) per row throughout, byte for byte: flat rows (a constant embedding is a
    uniform row) fail the bound, peaked ones pass it, a one-row chunk has too few entries."""
    from jetjax._internal.compiled import built
    from jetjax.ngrams import sweep

    if reduce_mode != "xla":
        _reduction("kernel")  # skips without a compiler, fails where the build does
    monkeypatch.setenv("JETJAX_TILE_REDUCE", reduce_mode)
    model = _tiny()
    params = jax.tree_util.tree_map(np.asarray, model.params)
    params["wpe"] = np.zeros_like(params["wpe"])
    params["wte"] = np.array(params["wte"])
    params["wte"][:7] = np.arange(1, 8)[:, None]        # chunk 0: constant rows, uniform next-token rows
    params["ln_f"] = {"scale": np.full(12, 30.0, np.float32), "bias": np.zeros(12, np.float32)}
    model.params = jax.tree_util.tree_map(jnp.asarray, params)
    decided = []
    real = sweep._rows_suffice
    monkeypatch.setattr(sweep, "_rows_suffice", lambda *a: decided.append(real(*a)) or decided[-1])
    opts = dict(paths=["emb>dec"], top_k=3, global_k=6, block_rows=4, chunk_rows=7, progress=False)
    first = jet_bigrams(model, out_dir=tmp_path / "rows_first", **opts)
    # chunk 0 fails (tried with top_k); 1 (tried with kk) would pass, so 2 and 3 are tried with top_k
    # and pass; chunk 4 holds one row: 3 entries cannot vouch for a global top 6
    assert decided == [False, True, True, True, False]
    steps = sorted(key[3] for key in built(model, "ngrams") if key[0] == "step")
    assert steps == [3, 6]
    monkeypatch.setattr(sweep, "_ROWS_FIRST", False)
    full = jet_bigrams(model, out_dir=tmp_path / "full", **opts)
    assert _snapshot(tmp_path / "rows_first") == _snapshot(tmp_path / "full")
    np.testing.assert_array_equal(first.global_probs, full.global_probs)
    np.testing.assert_array_equal(first.global_pairs, full.global_pairs)
    assert first.probs[:7].max() < 0.04 and first.probs[7:, 0].min() > 0.5  # the rows are as described


def test_rows_suffice_needs_the_bound_passed_with_slack():
    from jetjax.ngrams.sweep import ROW_SLACK, _rows_suffice

    lse = np.zeros(5, np.float32)
    bound = ROW_SLACK / 4  # k_rows = 3: a dropped entry has probability <= 1/4
    g_probs = np.array([0.9, 0.8, bound * 1.001], np.float32)
    assert _rows_suffice(g_probs, lse, 15, 3, 3)
    assert not _rows_suffice(np.array([0.9, 0.8, bound * 0.999], np.float32), lse, 15, 3, 3)
    assert not _rows_suffice(np.array([0.9, 0.8, 0.26], np.float32), lse, 15, 3, 3)  # above 1/4, within slack
    assert not _rows_suffice(g_probs, lse, 2, 3, 3)                                     # fewer kept than g
    assert not _rows_suffice(g_probs[:2], lse, 15, 3, 3)
    assert not _rows_suffice(g_probs, np.array([0, np.nan], np.float32), 15, 3, 3)
    assert not _rows_suffice(g_probs, np.array([0, 2e5], np.float32), 15, 3, 3)
    assert not _rows_suffice(np.array([0.9, np.nan, 0.8], np.float32), lse, 15, 3, 3)


def test_global_top_of_blocks_of_different_widths():
    """Blocks of a chunk kept with different k give the top of their concatenated entries, ordered
    by (probability descending, row of the chunk, next id)."""
    from jetjax.ngrams.sweep import _global_top

    rng = np.random.default_rng(1)
    for trial in range(40):
        widths = rng.integers(1, 9, int(rng.integers(1, 5)))
        rows = rng.integers(1, 40, len(widths))
        probs = [(rng.integers(0, 4, (r, k)) / 3).astype(np.float32) for r, k in zip(rows, widths)]
        ids = [rng.integers(0, 50, (r, k)) for r, k in zip(rows, widths)]
        contexts = rng.integers(0, 99, (int(rows.sum()), 1))
        g = int(rng.integers(1, 30))
        entries = [(-float(p[i, j]), int(r0 + i), int(n[i, j]))
                   for p, n, r0 in zip(probs, ids, np.cumsum([0, *rows[:-1]])) for i in range(p.shape[0])
                   for j in range(p.shape[1])]
        want = sorted(entries)[:g]
        got_p, got_pairs = _global_top(probs, ids, contexts, g)
        assert got_p.tolist() == [np.float32(-e[0]) for e in want]
        assert got_pairs.tolist() == [[int(contexts[e[1], 0]), e[2]] for e in want]
