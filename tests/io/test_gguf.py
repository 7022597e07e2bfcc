"""GGUF loading against transformers' own GGUF loader on the same files, and bad GGUF input.

Tiny random models are written to GGUF in a temp dir (tests/gguf_checkpoints.py) with several
quantization types; jetjax and transformers each read the file, and logits, residual streams and
per-branch deltas must agree. The quantized values are the same for both readers, so the tolerance
is float32 round-off, not quantization error.
"""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj
from jetjax.io import gguf as jgguf
from tests.gguf_checkpoints import (GGUF_CONFIGS, SEQ, byte_level_tokenizer_metadata, finish, make_hf_model,
                                    write_gguf)
from tests.models.test_families import _forward_pieces, _hf_run

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

CASES = [("llama_gqa", "F32"), ("llama_gqa", "Q8_0"), ("llama_gqa", "Q4_0"), ("llama_gqa", "Q5_1"),
         ("llama_k_quants", "Q4_K"), ("llama_k_quants", "Q6_K"), ("llama_k_quants", "BF16"),
         ("qwen2_bias", "F16"), ("qwen2_bias", "Q8_0"), ("gpt2", "F32"), ("gpt2", "Q4_1")]


def _write(directory, name, qtype, **kwargs):
    model = make_hf_model(name, seed=3)
    arch = GGUF_CONFIGS[name][2]
    if arch == "gpt2":  # transformers sizes a GPT-2 vocabulary from the tokenizer metadata
        kwargs.setdefault("tokenizer", byte_level_tokenizer_metadata(model.config.vocab_size))
    path = directory / f"{name}_{qtype}.gguf"
    write_gguf(path, model, arch, qtype, **kwargs)
    return path


def _hf_gguf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    return {(n, q): _write(d, n, q) for n, q in CASES}


@pytest.mark.parametrize("name,qtype", CASES)
def test_gguf_matches_transformers_gguf_loader(files, name, qtype):
    path = files[(name, qtype)]
    hf = _hf_gguf(path)
    model = jj.from_pretrained(path)
    ids = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(2, SEQ)).astype(np.int32)
    logits, hidden, captured = _hf_run(hf, ids)
    ours, streams, mids, normed, attn, mlp, block = _forward_pieces(model, ids)
    scale = np.abs(logits).max()
    assert np.abs(ours - logits).max() <= 1e-5 * scale + 1e-5, (np.abs(ours - logits).max(), scale)
    for layer in range(model.config.n_layers):
        tol = 1e-5 * np.abs(hidden[layer]).max() + 1e-5
        np.testing.assert_allclose(streams[layer], hidden[layer], atol=tol, rtol=0)
        np.testing.assert_allclose(attn[layer], captured[("attn", layer)], atol=tol, rtol=0)
        np.testing.assert_allclose(mlp[layer], captured[("mlp", layer)], atol=tol, rtol=0)
    np.testing.assert_allclose(normed, hidden[-1], atol=1e-5 * np.abs(hidden[-1]).max() + 1e-5, rtol=0)


def test_quantized_files_really_are_quantized(files):
    """The cases exercise the types they name (a writer falling back to F32 would hide a bug)."""
    from gguf import GGUFReader

    for (name, qtype), path in files.items():
        types = {t.tensor_type.name for t in GGUFReader(str(path)).tensors}
        assert qtype in types, (name, qtype, types)


def test_undoing_the_rope_row_order_matters(files, monkeypatch):
    """Loading Llama Q/K rows in llama.cpp's order moves the logits far beyond the tolerance."""
    path = files[("llama_gqa", "F32")]
    good = np.asarray(jj.from_pretrained(path).logits(np.arange(SEQ)))
    arch = jgguf.ARCHITECTURES["llama"]
    monkeypatch.setitem(jgguf.ARCHITECTURES, "llama", jgguf._Arch(**{**arch.__dict__, "fix": lambda n, w, c: w}))
    bad = np.asarray(jj.from_pretrained(path).logits(np.arange(SEQ)))
    assert np.abs(good - bad).max() > 1e-2


def test_dtype_and_tied_output(files):
    model = jj.from_pretrained(files[("llama_k_quants", "BF16")], dtype=jnp.bfloat16)
    assert model.config.tie_embeddings and model.params["embed_tokens"].dtype == jnp.bfloat16
    assert not jj.from_pretrained(files[("llama_gqa", "F32")]).config.tie_embeddings
    with pytest.raises(TypeError, match="int32.*floating"):
        jj.from_pretrained(files[("llama_gqa", "F32")], dtype=jnp.int32)


def test_directory_and_gguf_file_arguments(files, tmp_path):
    src = files[("llama_gqa", "Q8_0")]
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(src, one / "m.gguf")
    ids = np.arange(5)
    ref = np.asarray(jj.from_pretrained(src).logits(ids))
    np.testing.assert_array_equal(np.asarray(jj.from_pretrained(one).logits(ids)), ref)
    shutil.copy(src, one / "n.gguf")
    with pytest.raises(ValueError, match="2 GGUF files.*m.gguf, n.gguf.*gguf_file"):
        jj.from_pretrained(one)
    np.testing.assert_array_equal(np.asarray(jj.from_pretrained(one, gguf_file="n.gguf").logits(ids)), ref)
    with pytest.raises(FileNotFoundError, match="holds no x.gguf"):
        jj.from_pretrained(one, gguf_file="x.gguf")
    with pytest.raises(ValueError, match="file name inside"):
        jj.from_pretrained(one, gguf_file="../m.gguf")


# -- bad input -------------------------------------------------------------------------------

def _bytes_file(tmp_path, data, name="bad.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_truncated_garbage_magic_version(files, tmp_path):
    good = files[("llama_gqa", "F32")].read_bytes()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        jj.from_pretrained(_bytes_file(tmp_path, good[: len(good) // 2], "half.gguf"))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        jj.from_pretrained(_bytes_file(tmp_path, good[:200], "head.gguf"))
    with pytest.raises(ValueError, match="is 3 bytes long"):
        jj.from_pretrained(_bytes_file(tmp_path, b"GGU", "tiny.gguf"))
    with pytest.raises(ValueError, match=r"starts with b'\\x89PNG'.*magic"):
        jj.from_pretrained(_bytes_file(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(100), "png.gguf"))
    with pytest.raises(ValueError, match="GGUF version 99 is not supported"):
        jj.from_pretrained(_bytes_file(tmp_path, b"GGUF" + (99).to_bytes(4, "little") + good[8:], "v99.gguf"))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        jj.from_pretrained(_bytes_file(tmp_path, good[:8] + rng.bytes(4000), "garbage.gguf"))


def test_unknown_architecture(tmp_path):
    from gguf import GGUFWriter

    p = tmp_path / "rwkv.gguf"
    w = GGUFWriter(str(p), "rwkv6")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    finish(w, p)
    with pytest.raises(ValueError, match="architecture 'rwkv6' is not supported; "
                                         "supported: gemma2, gemma3, gpt2, granite, llama, olmo2, phi3, qwen2, qwen3, "
                                         "smollm3, starcoder2"):
        jj.from_pretrained(p)


@pytest.mark.parametrize("extra,match", [
    ({"llama.expert_count": 8}, r"unsupported GGUF metadata for llama: \['llama.expert_count'\]"),
    ({"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}, "rope.scaling.type='yarn'"),
    ({"llama.attention.value_length": 8}, "value_length=8 differs"),
])
def test_metadata_that_changes_the_computation_is_refused(tmp_path, extra, match):
    path = _write(tmp_path, "llama_gqa", "F32", extra_metadata=extra)
    with pytest.raises(ValueError, match=match):
        jj.from_pretrained(path)


def test_tensor_problems(tmp_path):
    for sub in "abc":
        (tmp_path / sub).mkdir()
    missing = _write(tmp_path / "a", "llama_gqa", "F32", drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match="'layers.1.mlp.up_proj.weight' is missing"):
        jj.from_pretrained(missing)
    extra = _write(tmp_path / "b", "llama_gqa", "F32", rename={"output.weight": "output.weight_x"})
    with pytest.raises(ValueError, match=r"tensors jetjax does not use for llama: \['output.weight_x'\]"):
        jj.from_pretrained(extra)
    freqs = _write(tmp_path / "c", "llama_gqa", "F32", rename={"output.weight": "rope_freqs.weight"})
    with pytest.raises(ValueError, match="rope_freqs"):
        jj.from_pretrained(freqs)


def test_unsupported_quantization_type_is_named(tmp_path):
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.constants import GGML_QUANT_SIZES

    path = _write(tmp_path, "llama_gqa", "F32")
    # rewrite with one Q8_1 tensor (gguf.quants cannot dequantize Q8_1)
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    out = tmp_path / "q81.gguf"
    w = GGUFWriter(str(out), "llama")
    for name, field in reader.fields.items():
        if name.startswith("llama."):
            w.add_uint32(name, int(field.contents())) if isinstance(field.contents(), int) else \
                w.add_float32(name, float(field.contents()))
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]
    for t in reader.tensors:
        arr = np.asarray(t.data)
        if t.name == "blk.0.ffn_up.weight":
            rows, cols = arr.shape
            w.add_tensor(t.name, np.zeros((rows, cols // block * size), np.uint8), raw_dtype=GGMLQuantizationType.Q8_1)
        else:
            w.add_tensor(t.name, np.array(arr))
    finish(w, out)
    with pytest.raises(ValueError, match="'blk.0.ffn_up.weight' has quantization type Q8_1"):
        jj.from_pretrained(out)


def test_hf_metadata_keys_starting_with_underscore_are_ignored(gpt2_checkpoints, tmp_path):
    import json

    src, _ = gpt2_checkpoints["prime"]
    d = tmp_path / "m"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["_model_name_or_path"] = "somewhere"
    (d / "config.json").write_text(json.dumps(cfg))
    ids = np.arange(4)
    np.testing.assert_array_equal(np.asarray(jj.from_pretrained(d).logits(ids)),
                                  np.asarray(jj.from_pretrained(src).logits(ids)))


def test_gguf_non_finite_weight_is_refused_by_name(tmp_path):
    import torch

    model = make_hf_model("llama_gqa", seed=3)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[2, 4] = float("nan")
    path = tmp_path / "nan.gguf"
    write_gguf(path, model, GGUF_CONFIGS["llama_gqa"][2], "F32")
    with pytest.raises(ValueError, match=r"non-finite weights in 1 tensor\(s\): 'layers.1.mlp.down_proj.weight' "
                                         r"\(1 NaN, 0 inf of 6144; first at index \(2, 4\)"):
        jj.from_pretrained(path)
    assert np.isnan(np.asarray(jj.from_pretrained(path, check_finite=False).logits(np.array([1, 2])))).any()
