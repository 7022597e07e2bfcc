"""Bad checkpoints and bad inputs fail with specific, readable errors."""

import json
import re
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jetjax as jj
from tests.conftest import GPT2_CONFIGS

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints


@pytest.fixture
def ckpt(gpt2_checkpoints, tmp_path):
    """A private copy of a good checkpoint, free to break."""
    src, _ = gpt2_checkpoints["prime"]
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        jj.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        jj.from_pretrained("./relative/nope")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        jj.from_pretrained(tmp_path)


def test_unsupported_model_type_lists_supported(ckpt):
    _edit_config(ckpt, model_type="bert")
    with pytest.raises(ValueError, match=r"model_type 'bert' is not supported; supported model types: .*gpt2"):
        jj.from_pretrained(ckpt)


def test_unknown_semantic_config_key(ckpt):
    _edit_config(ckpt, use_fancy_attention=True)
    with pytest.raises(ValueError, match=r"unsupported config key\(s\) for gpt2: \['use_fancy_attention'\]"):
        jj.from_pretrained(ckpt)


def test_unsupported_feature_value(ckpt):
    _edit_config(ckpt, add_cross_attention=True)
    with pytest.raises(ValueError, match="add_cross_attention=True"):
        jj.from_pretrained(ckpt)
    _edit_config(ckpt, add_cross_attention=False, activation_function="mish")
    with pytest.raises(ValueError, match="activation_function 'mish'"):
        jj.from_pretrained(ckpt)


def test_metadata_keys_are_ignored(ckpt):
    _edit_config(ckpt, _name_or_path="somewhere", torch_dtype="float32", pad_token_id=3)
    assert jj.from_pretrained(ckpt).config.n_layers == 3


def test_pickle_only_checkpoint_is_refused(ckpt):
    os.remove(ckpt / "model.safetensors")
    (ckpt / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"pytorch_model.bin: a pickle.*save_pretrained"):
        jj.from_pretrained(ckpt)


def test_no_weights(ckpt):
    os.remove(ckpt / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="has no weights"):
        jj.from_pretrained(ckpt)


def _rewrite_tensors(path, fn):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_is_named(ckpt):
    _rewrite_tensors(ckpt, lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(ValueError, match=r"tensor 'h.1.mlp.c_fc.weight' is missing"):
        jj.from_pretrained(ckpt)


def test_wrong_shape_is_named(ckpt):
    def shrink(t):
        t["transformer.h.2.attn.c_proj.weight"] = t["transformer.h.2.attn.c_proj.weight"][:, :-1].copy()
    _rewrite_tensors(ckpt, shrink)
    with pytest.raises(ValueError, match=r"tensor 'h.2.attn.c_proj.weight' has shape \(28, 27\), expected \(28, 28\)"):
        jj.from_pretrained(ckpt)


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        jj.from_pretrained(ckpt)
    f.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        jj.from_pretrained(ckpt)


def test_sharded_checkpoint(gpt2_checkpoints, tmp_path, rng):
    src, hf = gpt2_checkpoints["prime"]
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    model = jj.from_pretrained(tmp_path)
    ids = rng.integers(0, 37, size=8)
    np.testing.assert_allclose(np.asarray(model.logits(ids)),
                               np.asarray(jj.from_pretrained(src).logits(ids)), atol=0)


def test_bad_token_ids(gpt2_checkpoints):
    model = jj.from_pretrained(gpt2_checkpoints["prime"][0])
    n_pos = GPT2_CONFIGS["prime"]["n_positions"]
    with pytest.raises(ValueError, match=r"token id 37 is out of range for a vocabulary of 37"):
        model.logits(np.array([1, 2, 37]))
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        model.residual_stream(np.array([-1, 2]))
    with pytest.raises(ValueError, match=rf"longer than the model's position table \({n_pos}\)"):
        model.logits(np.zeros(n_pos + 1, np.int32))
    with pytest.raises(ValueError, match="T >= 1"):
        model.logits(np.zeros((0,), np.int32))
    with pytest.raises(TypeError, match="integers"):
        model.logits(np.array([0.5, 1.0]))
    with pytest.raises(TypeError, match="tokenize"):
        model.logits("hello")
    with pytest.raises(IndexError, match=r"layer 3 is out of range for a model with 3 layers"):
        model.attn(3, np.zeros((2, 28), np.float32))


def test_tokenizer_from_vocab_and_merges(ckpt):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(["to be or not to be that is the question"] * 20, vocab_size=300,
                            min_frequency=1, show_progress=False)
    tok.save_model(str(ckpt))  # writes vocab.json + merges.txt (no tokenizer.json)
    vocab = json.loads((ckpt / "vocab.json").read_text())
    assert len(vocab) > 37
    _edit_config(ckpt, vocab_size=len(vocab))
    with pytest.raises(ValueError, match="'wte.weight' has shape"):
        jj.from_pretrained(ckpt)  # the vocabulary must match the embedding
    _edit_config(ckpt, vocab_size=37)
    model = jj.from_pretrained(ckpt)
    ids = model.tokenize("to be or not")
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert model.detokenize(ids) == "to be or not"
    assert model.tokenizer.encode("to be or not").ids == list(ids)


def test_hub_id_offline_gives_clear_error(tmp_path):
    code = "import jetjax; jetjax.from_pretrained('gpt2')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "'gpt2' is not a local directory and could not be fetched from the Hugging Face hub" in out.stderr


def test_model_without_tokenizer(gpt2_checkpoints):
    model = jj.from_pretrained(gpt2_checkpoints["prime"][0])
    with pytest.raises(ValueError, match="no tokenizer files"):
        model.tokenize("hi")


def test_import_does_not_pull_torch_or_transformers():
    code = ("import sys, jetjax; bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("key,value,message", [
    ("layer_norm_epsilon", -1e-5, "'layer_norm_epsilon' must be a finite number >= 0.0, got -1e-05"),
    ("layer_norm_epsilon", None, "'layer_norm_epsilon' must be a finite number >= 0.0, got null"),
    ("layer_norm_epsilon", "1e-5", "'layer_norm_epsilon' must be a finite number >= 0.0, got '1e-5'"),
    ("n_layer", 2.5, "'n_layer' must be an int >= 1, got 2.5"),
    ("n_layer", "3", "'n_layer' must be an int >= 1, got '3'"),
    ("n_layer", True, "'n_layer' must be an int >= 1, got True"),
    ("n_layer", 0, "'n_layer' must be an int >= 1, got 0"),
    ("n_head", 0, "'n_head' must be an int >= 1, got 0"),
    ("n_embd", None, "'n_embd' must be an int >= 1, got null"),
    ("vocab_size", -3, "'vocab_size' must be an int >= 1, got -3"),
    ("n_inner", -4, "'n_inner' must be an int >= 1, got -4"),
    ("scale_attn_weights", "yes", "'scale_attn_weights' must be true or false, got 'yes'"),
])
def test_bad_config_values_name_the_file_key_and_value(ckpt, key, value, message):
    from jetjax.models.hf_config import ConfigValueError

    _edit_config(ckpt, **{key: value})
    with pytest.raises(ConfigValueError) as info:
        jj.from_pretrained(ckpt)
    text = str(info.value)
    assert text.startswith(str(ckpt / "config.json") + ": ") and message in text


def test_integral_float_and_null_n_inner_are_accepted(ckpt):
    good = jj.from_pretrained(ckpt)
    _edit_config(ckpt, n_layer=float(good.config.n_layers), n_inner=None)
    again = jj.from_pretrained(ckpt)
    assert again.config == good.config


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weight_is_refused_by_name(ckpt, bad):
    def poison(t):
        t["transformer.h.1.mlp.c_fc.weight"][3, 5] = bad
    _rewrite_tensors(ckpt, poison)
    kind = "1 NaN, 0 inf" if np.isnan(bad) else "0 NaN, 1 inf"
    with pytest.raises(ValueError, match=rf"non-finite weights in 1 tensor\(s\): 'h.1.mlp.c_fc.weight' \({kind} "
                                         rf"of \d+; first at index \(3, 5\)\).*check_finite=False"):
        jj.from_pretrained(ckpt)
    model = jj.from_pretrained(ckpt, check_finite=False)   # the escape hatch loads it as it is
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)]
    assert sum(int((~np.isfinite(x)).sum()) for x in leaves) == 1


def test_model_config_refuses_bad_fields_by_name():
    from jetjax.models import ModelConfig

    base = dict(arch="gpt2", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=11,
                n_positions=8, norm_eps=1e-5, activation="gelu_new")
    for field, value, message in [("norm_eps", -1.0, "norm_eps must be a finite number >= 0.0, got -1.0"),
                                  ("norm_eps", float("nan"), "norm_eps must be a finite number >= 0.0, got nan"),
                                  ("n_layers", 0, "n_layers must be an int >= 1, got 0"),
                                  ("vocab_size", 11.0, "vocab_size must be an int >= 1, got 11.0"),
                                  ("rope_theta", 0.0, "rope_theta must be a finite number > 0, got 0.0")]:
        with pytest.raises(ValueError, match=re.escape(f"ModelConfig.{message}")):
            ModelConfig(**{**base, field: value})


@pytest.mark.parametrize("content", ['{"version": "1.0", "model": 5}', "not json at all", ""])
def test_invalid_tokenizer_json_names_the_file(ckpt, content):
    (ckpt / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match=re.escape(str(ckpt / "tokenizer.json")) + " is not a valid tokenizer file"):
        jj.from_pretrained(ckpt)
