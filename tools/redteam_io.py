"""A hostile pass over the loaders (issue 34): checkpoints, GGUF files, tokenizers and LoRA adapters.

Every case is a small broken input built from a checkpoint that loads (``Ctx`` below builds each
base and :func:`check_bases` proves it loads), changed in one way. The outcomes are those of
``tools/redteam_api.py`` (whose :func:`case`, :class:`Ctx` and :func:`run_case` are used here):

* ``good``: an accepted exception class, raised inside jetjax, whose message holds the case's
  ``needle`` substrings (the file entry, metadata key or adapter field at fault), no numpy/jax
  internal phrasing, and no heavy work first;
* ``unclear``: refused, but by the wrong class, from outside jetjax, or blaming the wrong value;
* ``bad``: no error (a silent wrong answer: a file read from outside the checkpoint, text dropped,
  NaN logits) or a hang past the case's timeout.

Classes (the part of a case's name before ``/``): ``security`` (files named by a checkpoint's own
metadata, or reached through symlinks, outside the directory given), ``sizes`` (layer counts and
tensor shapes compared with the file's contents before anything is built or read), ``gguf-meta``
(duplicated keys, zero / non-dividing / mistyped values), ``tokenizer`` (byte-level vocabularies
that would drop text) and ``adapter`` (merges that overflow, malformed ``layers``/``targets``,
shipped names).

Cases that raise :class:`AssertionError` come from a tripwire: "sizes" cases that must be refused
from the tensor table or the safetensors header replace the data readers by a function that raises
``AssertionError`` (never an accepted class), so reading any tensor data first makes them unclear.

Run ``python tools/redteam_io.py`` (``-k SUBSTRING``, ``--all``); it prints the cases that are not
good and the counts per class. ``tests/io/test_reliability_io.py`` asserts every case is good (those
in :data:`KNOWN_IO` are strict xfails: they need a change outside the loaders).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import struct
import sys
import time
import warnings
from pathlib import Path

import numpy as np

_API_PATH = Path(__file__).resolve().parent / "redteam_api.py"
_API_NAME = "jetjax_redteam_api"   # the name tests/test_redteam_api.py registers it under
if _API_NAME in sys.modules:
    api = sys.modules[_API_NAME]
else:
    _spec = importlib.util.spec_from_file_location(_API_NAME, _API_PATH)
    api = importlib.util.module_from_spec(_spec)
    sys.modules[_API_NAME] = api      # dataclasses need the module registered
    _spec.loader.exec_module(api)

case, Ctx, run_case, built = api.case, api.Ctx, api.run_case, api.built
_write = api._write

import jax  # noqa: E402

import jetjax as jj  # noqa: E402
from jetjax.io import adapters as jad  # noqa: E402
from jetjax.io import gguf as jgguf  # noqa: E402
from jetjax.io.gguf_tokenizer import tokenizer_from_gguf  # noqa: E402

CLASSES = ("security", "sizes", "gguf-meta", "tokenizer", "adapter")


# ---------------------------------------------------------------------------------------------
# A GGUF writer of our own: gguf.GGUFWriter refuses (or overwrites) duplicated keys and types every
# value itself; these cases need both under control.

class U64(int):
    """An int written as GGUF uint64."""


class I32(int):
    """An int written as GGUF int32."""


def _gguf_value(value) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, U64):
        return 10, struct.pack("<Q", int(value))
    if isinstance(value, I32) or (isinstance(value, int) and value < 0):
        return 5, struct.pack("<i", int(value))
    if isinstance(value, int):
        return (4, struct.pack("<I", value)) if value < 2**32 else (10, struct.pack("<Q", value))
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        raw = value.encode()
        return 8, struct.pack("<Q", len(raw)) + raw
    if isinstance(value, (list, tuple)):
        items = [_gguf_value(v) for v in value]
        inner = items[0][0] if items else 4
        return 9, struct.pack("<IQ", inner, len(items)) + b"".join(b for _, b in items)
    raise TypeError(f"no GGUF type for {value!r}")


def gguf_bytes(meta: list[tuple[str, object]], tensors: dict[str, np.ndarray]) -> bytes:
    """A GGUF v3 file: ``meta`` in order (a key may repeat), F32 ``tensors`` (numpy shapes)."""
    def s(text):
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(meta))]
    for key, value in meta:
        kind, raw = _gguf_value(value)
        out += [s(key), struct.pack("<I", kind), raw]
    data, offset = [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, np.float32)
        out += [s(name), struct.pack("<I", arr.ndim), b"".join(struct.pack("<Q", n) for n in arr.shape[::-1]),
                struct.pack("<IQ", 0, offset)]
        pad = (-arr.nbytes) % 32
        data.append(arr.tobytes() + b"\0" * pad)
        offset += arr.nbytes + pad
    head = b"".join(out)
    return head + b"\0" * ((-len(head)) % 32) + b"".join(data)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (``bytes_to_unicode``)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def byte_vocab(drop: str = "", drop_bytes: bytes = b"") -> dict:
    """A byte-level (``gpt2``) vocabulary: end-of-text, the 256 byte symbols (less those of the
    characters in ``drop``, as their UTF-8 bytes map, and of ``drop_bytes``), and one merge."""
    symbols = byte_symbols()
    missing = {symbols[b] for b in drop.encode() + drop_bytes}
    alphabet = [a for a in sorted(symbols) if a not in missing]
    merge = ["Ġ t"] if "Ġ" in alphabet and "t" in alphabet else []
    tokens = ["<|endoftext|>"] + alphabet + ["Ġt"] * bool(merge)
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3] + [1] * (len(tokens) - 1), "tokenizer.ggml.merges": merge,
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0}


# The tiny Llama every GGUF case starts from: d=8, 2 heads of 4 (1 KV head), 2 layers, FFN 12.
_LLAMA_META = [
    ("general.architecture", "llama"), ("general.name", "redteam"), ("llama.block_count", 2),
    ("llama.context_length", 64), ("llama.embedding_length", 8), ("llama.feed_forward_length", 12),
    ("llama.attention.head_count", 2), ("llama.attention.head_count_kv", 1), ("llama.rope.freq_base", 10000.0),
    ("llama.attention.layer_norm_rms_epsilon", 1e-5), ("llama.rope.dimension_count", 4),
]


def llama_gguf_tensors(vocab: int, *, layers: int = 2, d: int = 8, q: int = 8, kv: int = 4, ff: int = 12,
                       seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = lambda *shape: (0.3 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    out = {"token_embd.weight": r(vocab, d), "output_norm.weight": 1 + r(d), "output.weight": r(vocab, d)}
    for i in range(layers):
        out.update({f"blk.{i}.attn_norm.weight": 1 + r(d), f"blk.{i}.attn_q.weight": r(q, d),
                    f"blk.{i}.attn_k.weight": r(kv, d), f"blk.{i}.attn_v.weight": r(kv, d),
                    f"blk.{i}.attn_output.weight": r(d, q), f"blk.{i}.ffn_norm.weight": 1 + r(d),
                    f"blk.{i}.ffn_gate.weight": r(ff, d), f"blk.{i}.ffn_up.weight": r(ff, d),
                    f"blk.{i}.ffn_down.weight": r(d, ff)})
    return out


_DROP = object()


def _tripwire(what: str):
    def trip(*args, **kwargs):
        raise AssertionError(f"tripwire: {what} was called before the sizes were checked")
    return trip


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def load_without_data(path: Path):
    """``jj.from_pretrained(path)`` with the tensor-data readers replaced by tripwires: GGUF's
    :func:`jetjax.io.gguf.dequantize` and ``safetensors.safe_open`` (a safetensors header can be read
    as the JSON it is)."""
    import safetensors

    with _patched(jgguf, "dequantize", _tripwire("jetjax.io.gguf.dequantize")), \
            _patched(safetensors, "safe_open", _tripwire("safetensors.safe_open")):
        return jj.from_pretrained(path)


# ---------------------------------------------------------------------------------------------
# The shared context

class IoCtx(Ctx):
    """:class:`Ctx` plus the loaders' bases: a GGUF Llama, a Hugging Face Llama directory, a sharded
    GPT-2 directory and an adapter of ``g``."""

    # -- GGUF --------------------------------------------------------------------------------------
    def gguf(self, *, meta=None, drop=(), add=(), vocab=None, tensors=None, name="m.gguf", arch="llama",
             **tensor_kw) -> Path:
        """The base GGUF with ``meta`` values replaced ({key: value}, :data:`_DROP` removes), keys in
        ``drop`` removed, ``add`` [(key, value)] appended (a repeat makes a duplicate), the tokenizer
        ``vocab`` (default: all 256 byte symbols; ``{}``: none) and ``tensors`` overrides ({name: array
        or _DROP}). ``arch`` renames the ``llama.*`` keys (``general.architecture`` goes in ``meta``)."""
        vocab = byte_vocab() if vocab is None else vocab
        base = _LLAMA_META + ([] if "tokenizer.ggml.tokens" in vocab else [("llama.vocab_size", 13)])
        base = [(k.replace("llama.", arch + ".", 1), v) for k, v in base]
        entries = [(k, v) for k, v in base if k not in drop]
        entries = [(k, (meta or {}).get(k, v)) for k, v in entries]
        entries += [(k, v) for k, v in (meta or {}).items() if k not in dict(base)]
        entries += list(vocab.items()) + list(add)
        entries = [(k, v) for k, v in entries if v is not _DROP]
        n_vocab = len(vocab.get("tokenizer.ggml.tokens", [])) or 13
        arrays = llama_gguf_tensors(n_vocab, **tensor_kw)
        for k, v in (tensors or {}).items():
            if v is _DROP:
                arrays.pop(k, None)
            else:
                arrays[k] = v
        return _write(self.tmp() / name, gguf_bytes(entries, arrays))

    @built
    def gl(self):                     # the base GGUF Llama, loaded (tokenizer with every byte symbol)
        return jj.from_pretrained(self.gguf())

    # -- Hugging Face directories ------------------------------------------------------------------
    @built
    def _llama_dir(self) -> Path:
        return write_hf_checkpoint(self._tmp / "llama", LLAMA_HF)

    def llama_dir(self, **config_changes) -> Path:
        d = self.tmp() / "llama"
        shutil.copytree(self._llama_dir, d)
        if config_changes:
            cfg = json.loads((d / "config.json").read_text())
            cfg.update(config_changes)
            (d / "config.json").write_text(json.dumps(cfg))
        return d

    def sharded(self) -> tuple[Path, Path, dict]:
        """A private GPT-2 directory split into two shards with an index, a folder ``outside`` beside
        it (holding a valid copy of the second shard) and the index's weight map."""
        from safetensors.numpy import load_file, save_file

        root = self.tmp()
        d = root / "ckpt"
        shutil.copytree(self._ckpt, d)
        tensors = load_file(str(d / "model.safetensors"))
        (d / "model.safetensors").unlink()
        names = sorted(tensors)
        half = {1: names[: len(names) // 2], 2: names[len(names) // 2:]}
        weight_map = {}
        outside = root / "outside"
        outside.mkdir()
        for i, part in half.items():
            shard = f"model-0000{i}-of-00002.safetensors"
            save_file({n: tensors[n] for n in part}, str(d / shard))
            weight_map.update({n: shard for n in part})
        shutil.copy(d / "model-00002-of-00002.safetensors", outside / "model-00002-of-00002.safetensors")
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return d, outside, weight_map

    def shard_named(self, name_for: "callable") -> Path:
        """The sharded directory with the second shard's entries renamed to ``name_for(d, outside)``
        (the shard inside is removed, so only the named file could supply those tensors)."""
        d, outside, weight_map = self.sharded()
        second = "model-00002-of-00002.safetensors"
        new = name_for(d, outside)
        (d / second).unlink()
        weight_map = {k: (new if v == second else v) for k, v in weight_map.items()}
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return d

    def linked(self, name: str) -> Path:
        """A private GPT-2 directory whose ``name`` is a symlink to a copy outside the directory."""
        root = self.tmp()
        d = root / "ckpt"
        shutil.copytree(self._ckpt, d)
        (root / "outside").mkdir()
        target = root / "outside" / name
        shutil.move(str(d / name), target)
        (d / name).symlink_to(target)
        return d

    def gguf_linked(self, *, gguf_file: bool) -> Path:
        """A directory whose only GGUF file is a symlink to one outside it."""
        root = self.tmp()
        outside = self.gguf()
        (root / "d").mkdir()
        (root / "d" / "m.gguf").symlink_to(outside)
        return jj.from_pretrained(root / "d", gguf_file="m.gguf" if gguf_file else None)

    # -- adapters ----------------------------------------------------------------------------------
    def adapter(self, *, alpha=16.0, a_scale=1.0, b_value=0.05, rank=2, targets=("attn.c_attn",), layers=None):
        """An adapter of ``g`` (bound to its weights), ``A`` scaled by ``a_scale``, ``B`` all ``b_value``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lora = jad.init_lora(self.g, rank=rank, alpha=16.0, targets=targets, layers=layers)
        a = {k: (v * a_scale).astype(np.float32) for k, v in lora.a.items()}
        b = {k: np.full_like(v, b_value) for k, v in lora.b.items()}
        import dataclasses

        return dataclasses.replace(lora.with_weights(a, b), alpha=alpha)

    def adapter_file(self, adapter=None, **meta_changes) -> Path:
        """``adapter`` (default: :meth:`adapter`) saved, with metadata entries replaced (strings)."""
        from safetensors import safe_open
        from safetensors.numpy import save_file

        path = jad.save_adapter(adapter or self.adapter(), self.tmp() / "lora.safetensors")
        if meta_changes:
            with safe_open(str(path), framework="numpy") as f:
                meta = dict(f.metadata())
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta.update(meta_changes)
            save_file(tensors, str(path), metadata=meta)
        return path


LLAMA_HF = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 12, "vocab_size": 13, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "max_position_embeddings": 64, "rope_theta": 10000.0}


def write_hf_checkpoint(directory: Path, hf_config: dict, seed: int = 0) -> Path:
    """A Hugging Face directory (``config.json``, ``model.safetensors``) of random weights in the
    shapes the family's own weight map asks for."""
    from safetensors.numpy import save_file

    from jetjax.models.family import config_for, family_for
    from jetjax.models.model import abstract_params

    family = family_for(hf_config["model_type"], "redteam")
    config = config_for(family, hf_config, "redteam")
    _, expected = abstract_params(lambda: family.module(config))
    rng = np.random.default_rng(seed)
    tensors = {}
    for hf_name, (ours, transpose) in family.weight_map(config).items():
        shape = expected[ours].shape
        arr = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        tensors["model." + hf_name if not hf_name.startswith("lm_head") else hf_name] = \
            np.ascontiguousarray(arr.T if transpose else arr)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


def _safetensors_with(path: Path, **shapes) -> Path:
    """Rewrite ``path``'s tensors with new shapes ({name: shape}) and random values."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    rng = np.random.default_rng(1)
    for name, shape in shapes.items():
        tensors[name.replace("__", ".")] = rng.standard_normal(shape).astype(np.float32)
    save_file(tensors, str(path))
    return path


def _duplicate_in_shards(c) -> Path:
    """The sharded directory with the first shard's first tensor also written into the second shard."""
    from safetensors.numpy import load_file, save_file

    d, _, _ = c.sharded()
    first, second = d / "model-00001-of-00002.safetensors", d / "model-00002-of-00002.safetensors"
    one, two = load_file(str(first)), load_file(str(second))
    name = sorted(one)[-1]
    save_file({**two, name: one[name]}, str(second))
    return d


def _logits(model):
    """``model.logits`` on a probe: a merged adapter that lets NaN through is bad."""
    out = np.asarray(model.logits(np.arange(4) % model.config.vocab_size))
    if not np.isfinite(out).all():
        return f"logits with {int((~np.isfinite(out)).sum())} non-finite values of {out.size}"
    return out


def _tokenize(model, text):
    """The tokens of ``text`` and whether decoding them gives ``text`` back (a silent drop is bad)."""
    ids = model.tokenize(text, special_tokens=False)
    back = model.detokenize(ids)
    return f"{len(ids)} tokens decoding to {back!r} ({len(back)} of {len(text)} characters)"


# ---------------------------------------------------------------------------------------------
# The cases

V = ValueError
OUTSIDE = "outside"   # every containment refusal says the file lies outside the directory

CASES_IO: list = [
    # -- security: files named by the checkpoint, or linked, outside the directory ----------------
    case("security/index-dotdot",
         lambda c: jj.from_pretrained(c.shard_named(lambda d, o: "../outside/model-00002-of-00002.safetensors")),
         V, ("../outside/model-00002-of-00002.safetensors", OUTSIDE)),
    case("security/index-absolute",
         lambda c: jj.from_pretrained(c.shard_named(lambda d, o: str(o / "model-00002-of-00002.safetensors"))),
         V, ("model-00002-of-00002.safetensors", OUTSIDE)),
    case("security/index-etc-passwd", lambda c: jj.from_pretrained(c.shard_named(lambda d, o: "/etc/passwd")),
         V, ("/etc/passwd", OUTSIDE)),
    case("security/index-symlinked-shard",
         lambda c: jj.from_pretrained(c.shard_named(
             lambda d, o: (d / "link.safetensors").symlink_to(o / "model-00002-of-00002.safetensors")
             or "link.safetensors")),
         V, ("link.safetensors", OUTSIDE)),
    case("security/index-dotdot-inside-then-out",
         lambda c: jj.from_pretrained(c.shard_named(
             lambda d, o: "sub/../../outside/model-00002-of-00002.safetensors")),
         V, ("sub/../../outside", OUTSIDE)),
    case("security/index-symlinked-subdir",
         lambda c: jj.from_pretrained(c.shard_named(
             lambda d, o: (d / "sub").symlink_to(o) or "sub/model-00002-of-00002.safetensors")),
         V, ("sub/model-00002-of-00002.safetensors", OUTSIDE)),
    case("security/index-home-tilde",
         lambda c: jj.from_pretrained(c.shard_named(lambda d, o: "~/model-00002-of-00002.safetensors")),
         (V, FileNotFoundError), "~/model-00002-of-00002.safetensors"),
    case("security/index-name-not-str", lambda c: jj.from_pretrained(c.shard_named(lambda d, o: 7)), V, ("7",)),
    case("security/index-name-nul",
         lambda c: jj.from_pretrained(c.shard_named(lambda d, o: "model\x00.safetensors")), V,
         "model\\x00.safetensors"),
    case("security/index-name-directory", lambda c: jj.from_pretrained(c.shard_named(lambda d, o: ".")), V, "'.'"),
    case("security/index-itself", lambda c: jj.from_pretrained(c.shard_named(
        lambda d, o: "model.safetensors.index.json")), V, "model.safetensors.index.json"),
    case("security/symlinked-model-safetensors", lambda c: jj.from_pretrained(c.linked("model.safetensors")),
         V, ("model.safetensors", OUTSIDE)),
    case("security/symlinked-config", lambda c: jj.from_pretrained(c.linked("config.json")),
         V, ("config.json", OUTSIDE)),
    case("security/symlinked-tokenizer", lambda c: jj.from_pretrained(c.linked("tokenizer.json")),
         V, ("tokenizer.json", OUTSIDE)),
    case("security/gguf-found-in-dir-symlinked", lambda c: c.gguf_linked(gguf_file=False), V, ("m.gguf", OUTSIDE)),
    case("security/gguf_file-symlinked", lambda c: c.gguf_linked(gguf_file=True), V, ("m.gguf", OUTSIDE)),

    # -- sizes: declared counts and shapes against what the file holds, before any work ----------
    case("sizes/config-n_layer-1e9", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=10**9)), V,
         ("n_layer", "1000000000"), timeout=15),
    case("sizes/config-n_layer-2**62", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=2**62)), V,
         ("n_layer", str(2**62)), timeout=15),
    case("sizes/config-n_layer-one-more", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=3)), V, "n_layer"),
    case("sizes/config-num_hidden_layers-1e9", lambda c: jj.from_pretrained(c.llama_dir(num_hidden_layers=10**9)),
         V, ("num_hidden_layers", "1000000000"), timeout=15),
    case("sizes/config-mistral-windows-1e8",
         lambda c: jj.from_pretrained(c.llama_dir(model_type="mistral", sliding_window=4, num_hidden_layers=10**8)),
         V, ("num_hidden_layers", "100000000"), timeout=15),
    case("sizes/config-qwen2-windows-1e8",
         lambda c: jj.from_pretrained(c.llama_dir(model_type="qwen2", use_sliding_window=True, sliding_window=4,
                                                  max_window_layers=0, num_hidden_layers=10**8)),
         V, ("num_hidden_layers", "100000000"), timeout=15),
    case("sizes/config-n_embd-2**20-no-data-read",
         lambda c: load_without_data(c.copy_ckpt(n_embd=2**20, n_head=2)),
         V, ("wte.weight", "1048576")),
    case("sizes/config-vocab-1e9-no-data-read",
         lambda c: load_without_data(c.copy_ckpt(vocab_size=10**9)),
         V, ("wte.weight", "1000000000")),
    case("sizes/safetensors-shape-lie-no-data-read",
         lambda c: load_without_data(_safetensors_with(c.copy_ckpt() / "model.safetensors",
                                                       transformer__h__0__mlp__c_fc__weight=(8, 17)).parent),
         V, ("h.0.mlp.c_fc.weight", "(8, 17)")),
    case("sizes/safetensors-tensor-twice-prefix-no-data-read",
         lambda c: load_without_data(_safetensors_with(c.copy_ckpt() / "model.safetensors",
                                                       h__0__mlp__c_fc__weight=(8, 32)).parent),
         V, ("transformer.h.0.mlp.c_fc.weight", "'h.0.mlp.c_fc.weight'")),
    case("sizes/safetensors-tensor-in-two-shards",
         lambda c: jj.from_pretrained(_duplicate_in_shards(c)), V, ("twice", "model-00002-of-00002.safetensors")),
    case("sizes/gguf-block_count-1e9", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": 10**9})),
         V, ("llama.block_count", "1000000000"), timeout=15),
    case("sizes/gguf-block_count-2**40", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": U64(2**40)})),
         V, ("llama.block_count", str(2**40)), timeout=15),
    case("sizes/gguf-block_count-0", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": 0})),
         V, ("llama.block_count", "0")),
    case("sizes/gguf-block_count-negative", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": -2})),
         V, ("llama.block_count", "-2")),
    case("sizes/gguf-block_count-bool", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": True})),
         V, ("llama.block_count", "True")),
    case("sizes/gguf-block_count-float", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": 2.0})),
         V, ("llama.block_count", "2.0")),
    case("sizes/gguf-block_count-str", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": "2"})),
         V, ("llama.block_count", "'2'")),
    case("sizes/gguf-block_count-one-more", lambda c: jj.from_pretrained(c.gguf(meta={"llama.block_count": 3})),
         V, ("llama.block_count", "3")),
    case("sizes/gguf-gemma3-block_count-2**40",
         lambda c: jj.from_pretrained(c.gguf(arch="gemma3", meta={
             "general.architecture": "gemma3", "gemma3.block_count": U64(2**40),
             "gemma3.attention.sliding_window": 4})),
         V, ("gemma3.block_count", str(2**40)), timeout=15),
    case("sizes/gguf-embedding_length-2**31-no-dequantize",
         lambda c: load_without_data(c.gguf(meta={"llama.embedding_length": 2**31, "llama.attention.key_length": 4})),
         V, ("token_embd.weight", "llama.embedding_length")),
    case("sizes/gguf-shape-lie-no-dequantize",
         lambda c: load_without_data(c.gguf(tensors={"blk.1.ffn_up.weight": np.zeros((13, 8), np.float32)})),
         V, ("blk.1.ffn_up.weight", "(13, 8)")),
    case("sizes/gguf-feed_forward_length-0", lambda c: jj.from_pretrained(c.gguf(
        meta={"llama.feed_forward_length": 0})), V, ("llama.feed_forward_length", "0")),
    case("sizes/gguf-vocab_size-huge-no-dequantize",
         lambda c: load_without_data(c.gguf(meta={"llama.vocab_size": 10**9})),
         V, ("token_embd.weight", "1000000000")),

    # -- GGUF metadata: duplicated keys, values that are zero, do not divide, or have the wrong type -
    case("gguf-meta/duplicate-block_count", lambda c: jj.from_pretrained(c.gguf(add=[("llama.block_count", 1)])),
         V, ("llama.block_count", "twice")),
    case("gguf-meta/duplicate-architecture",
         lambda c: jj.from_pretrained(c.gguf(add=[("general.architecture", "llama")])),
         V, ("general.architecture", "twice")),
    case("gguf-meta/duplicate-tokenizer-tokens",
         lambda c: jj.from_pretrained(c.gguf(add=[("tokenizer.ggml.tokens", byte_vocab()["tokenizer.ggml.tokens"])])),
         V, ("tokenizer.ggml.tokens", "twice")),
    case("gguf-meta/duplicate-read_metadata",
         lambda c: jgguf.read_gguf_metadata(c.gguf(add=[("llama.rope.freq_base", 500.0)])),
         V, ("llama.rope.freq_base", "twice")),
    case("gguf-meta/head_count-0", lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count": 0})),
         V, ("llama.attention.head_count", "0")),
    case("gguf-meta/head_count-not-dividing",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count": 3})),
         V, ("llama.attention.head_count", "3")),
    case("gguf-meta/head_count_kv-0",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count_kv": 0})),
         V, ("llama.attention.head_count_kv", "0")),
    case("gguf-meta/head_count_kv-not-dividing",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count_kv": 3})),
         V, ("llama.attention.head_count_kv", "3")),
    case("gguf-meta/head_count_kv-per-layer-list",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count_kv": [1, 1]})),
         V, ("llama.attention.head_count_kv", "[1, 1]")),
    case("gguf-meta/head_count-bool", lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count": True})),
         V, ("llama.attention.head_count", "True")),
    case("gguf-meta/embedding_length-str",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.embedding_length": "8"})),
         V, ("llama.embedding_length", "'8'")),
    case("gguf-meta/architecture-list",
         lambda c: jj.from_pretrained(c.gguf(meta={"general.architecture": ["llama"]})),
         V, ("general.architecture", "['llama']")),
    case("gguf-meta/tokenizer-model-list",
         lambda c: jj.from_pretrained(c.gguf(vocab={**byte_vocab(), "tokenizer.ggml.model": ["gpt2"]})),
         V, ("tokenizer.ggml.model", "['gpt2']")),
    case("gguf-meta/rope-scaling-type-list",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.rope.scaling.type": ["linear"]})),
         V, ("llama.rope.scaling.type", "['linear']")),
    case("gguf-meta/freq_base-str",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.rope.freq_base": "10000"})),
         V, ("llama.rope.freq_base", "'10000'")),
    case("gguf-meta/freq_base-list",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.rope.freq_base": [1.0, 2.0]})),
         V, ("llama.rope.freq_base", "[1.0, 2.0]")),
    case("gguf-meta/rms-eps-negative",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.layer_norm_rms_epsilon": -1e-5})),
         V, "llama.attention.layer_norm_rms_epsilon"),
    case("gguf-meta/q-rows-not-multiple-of-heads",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.head_count": 4, "llama.attention.key_length": 2,
                                                   "llama.attention.value_length": 2, "llama.rope.dimension_count": 2},
                                             q=10, kv=2)),
         V, ("blk.0.attn_q.weight", "llama.attention.head_count")),
    case("gguf-meta/odd-head-size-rope",
         lambda c: jj.from_pretrained(c.gguf(meta={"llama.attention.key_length": 3, "llama.attention.value_length": 3,
                                                   "llama.rope.dimension_count": 3}, q=6, kv=3)),
         V, ("llama.attention.key_length", "3")),
    case("gguf-meta/no-tokenizer-then-tokenize", lambda c: jj.from_pretrained(c.gguf(vocab={})).tokenize("hi"),
         V, ("tokenizer.ggml", "m.gguf")),

    # -- tokenizers that would drop text ----------------------------------------------------------
    case("tokenizer/most-bytes-missing",
         lambda c: _tokenize(jj.from_pretrained(c.gguf(vocab=byte_vocab(drop="hello wrd"), name="drop.gguf")),
                             "hello world"),
         V, ("'h'", "drop.gguf")),
    case("tokenizer/accent-missing",
         lambda c: _tokenize(jj.from_pretrained(c.gguf(vocab=byte_vocab(drop="é"))), "café"), V, "'é'"),
    case("tokenizer/space-missing",
         lambda c: _tokenize(jj.from_pretrained(c.gguf(vocab=byte_vocab(drop=" "))), "a b"), V, "' '"),
    case("tokenizer/one-byte-of-a-char-missing",
         lambda c: _tokenize(jj.from_pretrained(c.gguf(vocab=byte_vocab(drop_bytes=b"\xa9"))), "café"), V, "'é'"),
    case("tokenizer/encode-direct",
         lambda c: tokenizer_from_gguf(byte_vocab(drop="xyz"), source="meta").encode("xyz").ids, V, ("'x'", "meta")),
    case("tokenizer/encode-batch",
         lambda c: [e.ids for e in tokenizer_from_gguf(byte_vocab(drop="q"), source="meta").encode_batch(["a", "q"])],
         V, "'q'"),

    # -- adapters ---------------------------------------------------------------------------------
    case("adapter/alpha-1e30", lambda c: _logits(jad.merge_adapter(c.g, c.adapter(alpha=1e30))), V, "alpha"),
    case("adapter/alpha-1e30-file", lambda c: _logits(jad.merge_adapter(c.g, c.adapter_file(c.adapter(alpha=1e30)))),
         V, ("alpha", "lora.safetensors")),
    case("adapter/alpha-3e38", lambda c: _logits(jad.merge_adapter(c.g, c.adapter(alpha=3e38))), V, "alpha"),
    case("adapter/alpha-1e300", lambda c: _logits(jad.merge_adapter(c.g, c.adapter(alpha=1e300))), V, "alpha"),
    case("adapter/weights-1e15", lambda c: _logits(jad.merge_adapter(c.g, c.adapter(a_scale=1e15, b_value=1e15))),
         V, ("attn.c_attn", "alpha")),
    case("adapter/from_pretrained-alpha-1e30",
         lambda c: _logits(jj.from_pretrained(c.copy_ckpt(), adapter=c.adapter_file(c.adapter(alpha=1e30)))),
         V, "alpha"),
    case("adapter/layers-repeated", lambda c: jad.load_adapter(c.adapter_file(layers="[0, 0]")), V,
         ("layers", "[0, 0]")),
    case("adapter/layers-bool", lambda c: jad.load_adapter(c.adapter_file(layers="[true, false]")), V,
         ("layers=", "True")),
    case("adapter/layers-float", lambda c: jad.load_adapter(c.adapter_file(layers="[0.0, 1.0]")), V,
         ("layers", "0.0")),
    case("adapter/targets-repeated",
         lambda c: jad.load_adapter(c.adapter_file(targets='["attn.c_attn", "attn.c_attn"]')), V,
         ("targets", "attn.c_attn")),
    case("adapter/targets-bool", lambda c: jad.load_adapter(c.adapter_file(targets="[true]")), V,
         ("targets", "True")),
    case("adapter/targets-empty-name", lambda c: jad.load_adapter(c.adapter_file(targets='[""]')), V,
         ("targets", "''")),
    case("adapter/rank-float-str", lambda c: jad.load_adapter(c.adapter_file(rank="1.5")), V, ("rank", "1.5")),
    case("adapter/n_layers-word", lambda c: jad.load_adapter(c.adapter_file(n_layers="two")), V,
         ("n_layers", "two")),
    case("adapter/alpha-word", lambda c: jad.load_adapter(c.adapter_file(alpha="big")), V, ("alpha", "big")),
    case("adapter/merge-shipped-name", lambda c: jad.merge_adapter(c.g, "shakespeare"), V, ("shakespeare", "llama")),
    case("adapter/merge-unknown-name", lambda c: jad.merge_adapter(c.g, "shakespear"), FileNotFoundError,
         ("shakespear", "shakespeare")),
    case("adapter/load-shipped-name-check", lambda c: jad.check_adapter(c.g, jad.load_adapter("shakespeare")), V,
         "llama"),
]

_names = [c.name for c in CASES_IO]
assert len(set(_names)) == len(_names), sorted({n for n in _names if _names.count(n) > 1})
assert all(n.split("/")[0] in CLASSES for n in _names)

#: Cases that are not good and cannot be made good inside the loaders: name -> why (the test marks
#: them strict xfails, so a fix elsewhere shows up as an XPASS to remove from this list).
KNOWN_IO: dict[str, str] = {}


def check_bases(ctx: IoCtx) -> None:
    """Every base the cases break must itself load and work (else a case could pass by accident)."""
    g = jj.from_pretrained(ctx.gguf())
    assert np.isfinite(np.asarray(g.logits(g.tokenize("hello world")))).all()
    assert g.detokenize(g.tokenize("café ☃ <|endoftext|>", special_tokens=False)) == "café ☃ <|endoftext|>"
    jj.from_pretrained(ctx.llama_dir())
    jj.from_pretrained(ctx.llama_dir(model_type="mistral", sliding_window=4))
    d, _, _ = ctx.sharded()
    jj.from_pretrained(d)
    jj.from_pretrained(ctx.copy_ckpt())
    merged = jad.merge_adapter(ctx.g, ctx.adapter_file())
    assert np.isfinite(np.asarray(merged.logits([1, 2, 3]))).all()
    for shape in (dict(meta={"llama.attention.head_count": 4, "llama.attention.key_length": 2,
                             "llama.attention.value_length": 2, "llama.rope.dimension_count": 2}, q=8, kv=2),):
        jj.from_pretrained(ctx.gguf(**shape))


def counts(results) -> dict[str, dict[str, int]]:
    out = {k: {"good": 0, "unclear": 0, "bad": 0} for k in CLASSES}
    for r in results:
        out[r.case.name.split("/")[0]][r.outcome] += 1
    return out


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--all", action="store_true", help="list good cases too")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="address-space limit for the run (RLIMIT_AS; 0: none), so a case that allocates per "
                             "declared layer fails with MemoryError rather than taking the machine")
    args = parser.parse_args(argv)
    if args.memory_gb:
        import resource

        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    jax.config.update("jax_numpy_dtype_promotion", "strict")   # as the test suite runs
    warnings.simplefilter("ignore")
    cases = [c for c in CASES_IO if args.k in c.name]
    t0 = time.perf_counter()
    ctx = IoCtx()
    try:
        check_bases(ctx)
        results = [run_case(c, ctx) for c in cases]
    finally:
        ctx.close()
    width = max(len(r.case.name) for r in results)
    for r in results:
        if r.outcome != "good" or args.all:
            print(f"{r.case.name:<{width}}  {r.outcome:<7}  {r.seconds:5.1f}s  {api._one_line(r.why, 60)}")
            print(f"{'':<{width}}  {'':<7}          {api._one_line(r.message, 200)}")
    table = counts(results)
    print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s")
    print(f"{'class':<10} {'good':>5} {'unclear':>8} {'bad':>4}")
    for k, v in table.items():
        print(f"{k:<10} {v['good']:>5} {v['unclear']:>8} {v['bad']:>4}")
    total = {o: sum(v[o] for v in table.values()) for o in ("good", "unclear", "bad")}
    print(f"{'all':<10} {total['good']:>5} {total['unclear']:>8} {total['bad']:>4}")
    changed = [r.case.name for r in results if (r.outcome != "good") != (r.case.name in KNOWN_IO)]
    if changed:
        print("differ from KNOWN_IO:", ", ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
