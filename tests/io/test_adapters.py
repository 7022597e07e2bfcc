"""LoRA adapters: the merge against PEFT's (unmerged) LoRA forward, exact identities, the file
format, the base fingerprint, training determinism, and one clear error per kind of bad input."""

import json

import numpy as np
import pytest
import torch

import jetjax as jj
from jetjax.io.adapters import (LoraAdapter, check_adapter, init_lora, layer_matrices, load_adapter,
                             merge_adapter, save_adapter)
from jetjax.training.lora import train_lora
from jetjax.training.toy import TrainSettings
from tests.conftest import make_gpt2_checkpoint
from tests.family_checkpoints import SEQ, make_family_checkpoint

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

peft = pytest.importorskip("peft")


def _peft_model(hf_model, targets, rank, alpha, fan_in_fan_out=False, seed=1):
    """``hf_model`` wrapped by PEFT with random non-zero A and B (PEFT starts B at zero otherwise)."""
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights=False, fan_in_fan_out=fan_in_fan_out)
    return peft.get_peft_model(hf_model, config).eval()


def _adapter_from_peft(model, peft_model, rank, alpha):
    """The PEFT weights as a jetjax adapter: our A is PEFT's lora_A.weight transposed, B likewise."""
    a, b, targets = {}, {}, set()
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            parts = name.split(".")
            i = next(k for k, p in enumerate(parts) if p.isdigit())
            layer, target = int(parts[i]), ".".join(parts[i + 1:])
            a[(layer, target)] = module.lora_A["default"].weight.detach().numpy().T.copy()
            b[(layer, target)] = module.lora_B["default"].weight.detach().numpy().T.copy()
            targets.add(target)
    c = model.config
    layers = sorted({layer for layer, _ in a})
    return LoraAdapter(rank=rank, alpha=alpha, targets=tuple(sorted(targets)), layers=tuple(layers), a=a, b=b,
                       arch=c.arch, n_layers=c.n_layers, d_model=c.d_model, vocab_size=c.vocab_size,
                       base_fingerprint=jj.ngrams.model_fingerprint(model))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_llama")
    hf = make_family_checkpoint(d, "llama_gqa_llama3", seed=3)
    return d, hf, jj.from_pretrained(d)


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ("gate_proj", "up_proj", "down_proj", "o_proj", "k_proj")])
def test_merged_llama_equals_peft_lora_forward(llama, targets):
    d, hf, model = llama
    rank, alpha = 3, 5.0
    wrapped = _peft_model(hf, targets, rank, alpha)
    adapter = _adapter_from_peft(model, wrapped, rank, alpha)
    assert len(adapter.a) == model.config.n_layers * len(targets)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, SEQ)
    with torch.no_grad():
        want = wrapped(torch.as_tensor(ids[None])).logits[0].numpy()
    got = np.asarray(merge_adapter(model, adapter).logits(ids))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the adapter matters: the base alone is far from it
    plain = np.asarray(model.logits(ids))
    assert np.abs(plain - want).max() > 1e-2
    wrapped.unload()   # give the fixture's model back without LoRA layers for the next case


def test_merged_gpt2_equals_peft_lora_forward(tmp_path):
    hf = make_gpt2_checkpoint(tmp_path, seed=4, n_layer=2, n_embd=24, n_head=3, vocab_size=43, n_positions=16)
    model = jj.from_pretrained(tmp_path)
    assert set(layer_matrices(model)) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    wrapped = _peft_model(hf, ["c_attn", "c_fc"], 2, 7.0, fan_in_fan_out=True)
    adapter = _adapter_from_peft(model, wrapped, 2, 7.0)
    ids = np.arange(9) * 4 % 43
    with torch.no_grad():
        want = wrapped(torch.as_tensor(ids[None])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(merge_adapter(model, adapter).logits(ids)), want, atol=1e-4, rtol=0)
    assert np.abs(np.asarray(model.logits(ids)) - want).max() > 1e-2


def test_zero_adapter_is_the_base_bit_for_bit(llama):
    _, _, model = llama
    adapter = init_lora(model, rank=2, targets=("q_proj", "down_proj"))
    assert all(not np.any(b) for b in adapter.b.values()) and all(np.any(a) for a in adapter.a.values())
    merged = merge_adapter(model, adapter)
    for x, y in zip(jax_leaves(model.params), jax_leaves(merged.params)):
        assert np.array_equal(x, y)
    ids = np.arange(SEQ) % model.config.vocab_size
    assert np.array_equal(np.asarray(merged.logits(ids)), np.asarray(model.logits(ids)))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _trained_like(model, rank=2, targets=("q_proj", "gate_proj"), seed=0):
    adapter = init_lora(model, rank=rank, targets=targets, seed=seed)
    rng = np.random.default_rng(seed + 1)
    return adapter.with_weights(adapter.a, {k: rng.standard_normal(v.shape).astype(np.float32) * 0.3
                                            for k, v in adapter.b.items()})


def test_file_round_trip_and_from_pretrained_adapter(llama, tmp_path):
    d, _, model = llama
    adapter = _trained_like(model)
    adapter = LoraAdapter(**{**adapter.__dict__, "card": {"base_model": "tiny", "steps": 3}})
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    back = load_adapter(path)
    assert (back.rank, back.alpha, back.targets, back.layers, back.base_fingerprint, back.card) == \
        (adapter.rank, adapter.alpha, adapter.targets, adapter.layers, adapter.base_fingerprint, adapter.card)
    for k in adapter.a:
        assert np.array_equal(back.a[k], adapter.a[k]) and np.array_equal(back.b[k], adapter.b[k])
    ids = np.arange(SEQ) % model.config.vocab_size
    want = np.asarray(merge_adapter(model, adapter).logits(ids))
    loaded = jj.from_pretrained(d, adapter=path)
    assert np.array_equal(np.asarray(loaded.logits(ids)), want)
    assert "LoRA" in loaded.source and str(path) in loaded.source


def test_adapter_on_another_base_is_refused(llama, tmp_path):
    d, _, model = llama
    adapter = _trained_like(model)
    other_dir = tmp_path / "other"
    make_family_checkpoint(other_dir, "llama_gqa_llama3", seed=4)   # same shapes, other weights
    other = jj.from_pretrained(other_dir)
    with pytest.raises(ValueError, match="trained on other weights"):
        merge_adapter(other, adapter)
    merge_adapter(other, adapter, check_base=False)   # the explicit override works
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="trained on other weights"):
        jj.from_pretrained(other_dir, adapter=path)


def test_adapter_for_another_architecture_is_refused(llama, tmp_path):
    _, _, model = llama
    make_gpt2_checkpoint(tmp_path, seed=0, n_layer=3, n_embd=30, n_head=3, vocab_size=37, n_positions=16)
    gpt2 = jj.from_pretrained(tmp_path)
    adapter = init_lora(gpt2, rank=2, targets=("c_attn",))
    with pytest.raises(ValueError, match="made for a gpt2 model .* the model is llama"):
        merge_adapter(model, adapter)


def _rewrite(path, out, *, drop=None, replace=None, meta=None):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        m = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if drop:
        del tensors[drop]
    tensors.update(replace or {})
    m.update(meta or {})
    save_file(tensors, str(out), metadata=m)
    return out


def test_bad_adapter_files_each_get_one_clear_error(llama, tmp_path):
    _, _, model = llama
    adapter = _trained_like(model)
    good = save_adapter(adapter, tmp_path / "good.safetensors")
    key_a = "layers.1.self_attn.q_proj.lora_a"
    cases = {
        "missing": (dict(drop=key_a), f"tensor {key_a} is missing"),
        "wrong rank in a tensor": (dict(replace={key_a: np.zeros((30, 5), np.float32)}), r"shape \(30, 5\); a rank-2"),
        "wrong rank in metadata": (dict(meta={"rank": "4"}), "a rank-4 adapter needs"),
        "extra tensor": (dict(replace={"layers.0.mlp.up_proj.lora_a": np.zeros((30, 2), np.float32)}),
                         "unexpected tensors"),
        "not finite": (dict(replace={key_a: np.full((30, 2), np.nan, np.float32)}), "NaN or infinite"),
        "other format": (dict(meta={"format": "peft"}), "not a jetjax LoRA adapter"),
        "bad json": (dict(meta={"targets": "[q_proj"}), "malformed metadata"),
        "layer out of range": (dict(meta={"layers": "[0, 1, 9]"}), "below n_layers=3"),
    }
    for name, (edit, message) in cases.items():
        bad = _rewrite(good, tmp_path / f"{name}.safetensors", **edit)
        with pytest.raises(ValueError, match=message):
            load_adapter(bad)
    # a well-formed file whose d_in disagrees with the model: refused at merge, naming both shapes
    wrong_shape = LoraAdapter(**{**adapter.__dict__, "a": {**adapter.a, (0, "self_attn.q_proj"): np.zeros((29, 2), np.float32)}})
    with pytest.raises(ValueError, match=r"shape \(29, 2\); this model needs \(30, 2\)"):
        check_adapter(model, wrong_shape)
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_adapter(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapter(tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="end in .safetensors"):
        save_adapter(adapter, tmp_path / "a.bin")


def test_bad_lora_settings(llama):
    _, _, model = llama
    with pytest.raises(ValueError, match="'w_q' is not a weight matrix .* self_attn.q_proj"):
        init_lora(model, targets=("w_q",))
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        init_lora(model, rank=0)
    with pytest.raises(ValueError, match="exceeds the smallest dimension"):
        init_lora(model, rank=40, targets=("q_proj",))
    with pytest.raises(ValueError, match="layer 3 is not a layer index"):
        init_lora(model, layers=[0, 3])
    with pytest.raises(ValueError, match="alpha"):
        init_lora(model, alpha=float("nan"))
    with pytest.raises(TypeError, match="list of matrix names"):
        init_lora(model, targets="q_proj")


def test_training_is_deterministic_and_learns(llama):
    _, _, model = llama
    v = model.config.vocab_size
    tokens = np.tile(np.array([1, 5, 2, 7, 3], np.int32), 60) % v   # a pattern to learn
    settings = TrainSettings(steps=12, batch_size=4, seq_len=8, lr=3e-2, warmup=1, weight_decay=0.0, seed=7)
    start = init_lora(model, rank=2, targets=("gate_proj", "down_proj", "q_proj"), seed=7)
    one, losses = train_lora(model, tokens, start, settings, log=None)
    two, _ = train_lora(model, tokens, start, settings, log=None)
    for k in one.a:
        assert np.array_equal(one.a[k], two.a[k]) and np.array_equal(one.b[k], two.b[k])
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    seen = []
    train_lora(model, tokens, start, settings, log=None, checkpoint_every=5,
               on_checkpoint=lambda step, a: seen.append((step, a.n_params)))
    assert [s for s, _ in seen] == [5, 10]
    with pytest.raises(ValueError, match="token ids must lie in"):
        train_lora(model, tokens + v, start, settings, log=None)


def test_card_survives_json(llama, tmp_path):
    _, _, model = llama
    card = {"base_model": "tiny", "held_out_loss_after": 1.25, "train_loss": [3.0, 2.5]}
    adapter = LoraAdapter(**{**init_lora(model, rank=1).__dict__, "card": card})
    back = load_adapter(save_adapter(adapter, tmp_path / "c.safetensors"))
    assert back.card == json.loads(json.dumps(card))
