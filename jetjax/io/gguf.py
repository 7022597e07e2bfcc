"""Load GGUF checkpoints (llama.cpp's format) into a :class:`~jetjax.models.model.Model`.

A GGUF file carries the config (as metadata under llama.cpp's key names), the tokenizer (as
``tokenizer.ggml.*`` metadata) and the weights (often block-quantized). Loading here:

* reads the metadata and the tensor table itself (:func:`open_gguf`, ``struct`` on an ``mmap``: the
  ``gguf`` package's reader needs 15-30 s for a 262k-token vocabulary), leaving the weights mapped;
* translates the metadata into the config a Hugging Face ``config.json`` of the same family would
  hold, so the family's own config parser and weight map (``jetjax.models``) do the rest, exactly
  as for safetensors checkpoints (:func:`gguf_to_hf` shows that config and the tensors);
* dequantizes tensor by tensor with ``gguf.quants`` (every type it implements) into ``dtype``
  (default float32), undoing llama.cpp's layout changes: GGUF lists dimensions innermost first
  (undone here); what its converter changed for one architecture (rotary Llama models store the
  rows of Q and K interleaved for llama.cpp's rope kernel, GPT-2 matrices are stored transposed,
  Gemma's RMS norm gains are stored as ``1 + w``) is undone by that family's ``fix``;
* builds the tokenizer from the metadata (:mod:`jetjax.io.gguf_tokenizer`).

Before anything is built or dequantized, the file is held to what it declares: a metadata key that
appears twice is refused (as llama.cpp refuses it), every count, real number and string the families
read is checked for type and range and the head counts for divisibility (:func:`check_metadata_values`),
``block_count`` must match the layers the tensor table holds, and every tensor's shape in the table
must be the one the metadata gives (:func:`check_tensor_shapes`): each refusal is one line naming the
key or tensor and its value.

This module knows no architecture. Each family declares the GGUF architectures it reads in its
record (:attr:`~jetjax.models.family.Family.gguf`: a :class:`~jetjax.models.family.GgufArch` each,
with the metadata keys, the config builder, the tensor names and the layout fix), and the file's
``general.architecture`` is looked up there (:data:`ARCHITECTURES`, :func:`supported_architectures`):
today Llama (and Mistral written as Llama), Qwen2, GPT-2, Gemma 2 and Gemma 3 (text). Where the
metadata is silent, the family's config builder takes the values llama.cpp's loader hard-codes
(Gemma's sliding-window patterns, local rope base, soft-caps, query scale).

Nothing in the file is executed: the chat template is ignored. Metadata that would change the
computation and that jetjax does not implement (rope scaling types, experts, ...) is refused by
name, never guessed.

Example (a tiny random Llama written to GGUF by ``gguf.GGUFWriter``, as the tests do):
  >>> import jetjax as jj                                          # doctest: +SKIP
  >>> model = jj.from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
  >>> model.config.n_layers, model.config.vocab_size                # doctest: +SKIP
  (30, 49152)
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import struct
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from jetjax.io.checks import check_layer_count
from jetjax.models.family import GGUF_FAMILIES, GgufArch, gguf_need

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# Metadata that describes the file, its provenance or text generation, never the computation.
_IGNORED_PREFIXES = ("general.", "tokenizer.", "GGUF.", "quantize.")


# ---------------------------------------------------------------------------------------------
# Per-architecture translation lives with each family (its `Family.gguf` map: metadata keys,
# config builder, tensor names, layout fix); this module only looks the file's architecture up.

_Arch = GgufArch   # the name the tests (and older callers) know


class _Architectures(MutableMapping):
    """``{GGUF architecture: GgufArch}``, read live from the registered families (a family registered
    later is seen). Setting an entry overrides the family's for this process (tests switch a layout
    fix off this way); setting it back to the family's own entry, or deleting it, ends the override."""

    def __init__(self):
        self._overrides: dict[str, GgufArch] = {}

    def _registered(self, name: str) -> GgufArch | None:
        family = GGUF_FAMILIES.get(name)
        return None if family is None else family.gguf[name]

    def __getitem__(self, name: str) -> GgufArch:
        if name in self._overrides:
            return self._overrides[name]
        entry = self._registered(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def __setitem__(self, name: str, entry: GgufArch) -> None:
        if not isinstance(entry, GgufArch):
            raise TypeError(f"ARCHITECTURES[{name!r}] must be a GgufArch, got {type(entry).__name__}")
        if entry is self._registered(name):
            self._overrides.pop(name, None)
        else:
            self._overrides[name] = entry

    def __delitem__(self, name: str) -> None:
        if name not in self._overrides:
            raise KeyError(f"{name!r}: only overrides can be deleted; families' entries stay registered")
        del self._overrides[name]

    def __iter__(self):
        return iter(sorted(set(GGUF_FAMILIES) | set(self._overrides)))

    def __len__(self) -> int:
        return len(set(GGUF_FAMILIES) | set(self._overrides))

    def __repr__(self) -> str:
        return f"ARCHITECTURES({sorted(self)})"


ARCHITECTURES: MutableMapping[str, GgufArch] = _Architectures()


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values some registered family reads."""
    return sorted(ARCHITECTURES)


# ---------------------------------------------------------------------------------------------

def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


# ---------------------------------------------------------------------------------------------
# Reading the file. ``gguf.GGUFReader`` builds a numpy view per array element, so a 262144-token
# vocabulary (Gemma 3) takes it 15-30 s; this reader walks the same layout with ``struct`` on an
# ``mmap`` (well under a second) and leaves the tensor data memory-mapped.

# GGUF value types (gguf.GGUFValueType) -> struct format, little-endian
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file.

    ``shape`` is in numpy order (outermost first: GGUF lists dimensions innermost first);
    ``data`` its raw bytes, memory-mapped, as uint8 ``shape[:-1] + (bytes per row,)``, the layout
    ``gguf.quants.dequantize`` takes for every type.
    """

    name: str
    tensor_type: int
    shape: tuple[int, ...]
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's metadata (plain Python values, without the ``GGUF.*`` header fields) and tensors."""

    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Little-endian reads from a buffer; running past its end raises ``EOFError``."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise EOFError(f"the file ends at byte {len(self.buf)}, inside a value at byte {self.pos}")
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise EOFError(f"a string of {n} bytes at byte {self.pos} runs past the end ({len(self.buf)} bytes)")
        text = self.buf[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.unpack("IQ")
            if inner in _SCALARS and inner != 7:  # numbers: one numpy read for the whole array
                dtype = np.dtype("<" + _SCALARS[inner])
                if self.pos + count * dtype.itemsize > len(self.buf):
                    raise EOFError(f"an array of {count} values at byte {self.pos} runs past the end")
                out = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * dtype.itemsize
                return out
            return [self.value(inner) for _ in range(count)]
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        raise ValueError(f"unknown GGUF value type {kind} at byte {self.pos}")


class _Refused(ValueError):
    """A well-formed file whose content is refused (not a truncated or corrupt one)."""


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(buf) -> GGUFFile:
    """The metadata and tensor table of a GGUF buffer (version and magic already checked)."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES

    cur = _Cursor(buf)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    meta = {}
    for _ in range(n_kv):
        at = cur.pos
        key = cur.string()
        value = cur.value(cur.unpack("I"))
        if key in meta:   # llama.cpp (and gguf.GGUFReader) refuse such a file: which value is meant?
            raise _Refused(f"metadata key {key!r} appears twice (the second time at byte {at}, with "
                           f"{_brief(value)} after {_brief(meta[key])}); llama.cpp refuses such files, and so "
                           "does jetjax rather than pick one")
        meta[key] = value
    infos = []
    for _ in range(n_tensors):
        name, n_dims = cur.string(), cur.unpack("I")
        if n_dims > _MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [cur.unpack("Q") for _ in range(n_dims)]
        infos.append((name, dims, GGMLQuantizationType(cur.unpack("I")), cur.unpack("Q")))
    align = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment={align!r} is not a power of two")
    start = -(-cur.pos // align) * align
    tensors, seen = [], set()
    for name, dims, qtype, offset in infos:
        if name in seen:
            raise ValueError(f"tensor {name!r} is listed twice")
        seen.add(name)
        block, type_size = GGML_QUANT_SIZES[qtype]
        shape = tuple(int(n) for n in reversed(dims))
        row = shape[-1] if shape else 1
        if row % block:
            raise ValueError(f"tensor {name!r}: rows of {row} values do not fill {qtype.name} blocks of {block}")
        n_rows = math.prod(shape[:-1])
        row_bytes = row // block * type_size
        begin = start + offset
        if begin + n_rows * row_bytes > len(buf):
            raise EOFError(f"tensor {name!r} ends at byte {begin + n_rows * row_bytes}, past the end ({len(buf)})")
        data = np.frombuffer(buf, np.uint8, n_rows * row_bytes, begin).reshape(*shape[:-1], row_bytes)
        tensors.append(GGUFTensor(name, qtype, shape, data))
    return GGUFFile(meta, tensors)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The metadata and (memory-mapped) tensors of the GGUF file at ``path``, with one clear error
    per way to fail."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such GGUF file: {p}")
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{p} is not a GGUF file: it is {len(head)} bytes long")
        if head[:4] != MAGIC:
            raise ValueError(f"{p} is not a GGUF file: it starts with {head[:4]!r}, expected the magic {MAGIC!r}")
        version = int.from_bytes(head[4:8], "little")
        if version not in SUPPORTED_VERSIONS:
            order = " (a big-endian file?)" if version and not version & 0xFFFF else ""
            raise ValueError(f"{p}: GGUF version {version} is not supported{order} (supported: {SUPPORTED_VERSIONS})")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(buf)
    except _Refused as err:
        raise ValueError(f"{p}: {err}") from None
    except (EOFError, ValueError, KeyError, OverflowError, UnicodeDecodeError, struct.error, MemoryError,
            RecursionError) as err:   # RecursionError: arrays nested past Python's stack
        raise ValueError(f"{p} is not a readable GGUF file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err


def read_metadata(gguf_file: GGUFFile) -> dict[str, Any]:
    """The file's metadata as plain Python values (str, int, float, bool, lists of them)."""
    return dict(gguf_file.metadata)


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the GGUF file at ``path`` as plain Python values (tensors are not read)."""
    return read_metadata(open_gguf(path))


def check_metadata(meta: dict, arch: GgufArch, where: str) -> None:
    """Refuse metadata keys of the architecture that jetjax would otherwise silently ignore."""
    a = meta["general.architecture"]
    unknown = []
    for key in meta:
        if key.startswith(_IGNORED_PREFIXES):
            continue
        sub = key[len(a) + 1:] if key.startswith(a + ".") else None
        if sub is None or sub not in arch.handled | arch.ignored:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{where}: unsupported GGUF metadata for {a}: {sorted(unknown)}. It may change the "
                         "computation, so jetjax refuses rather than guess.")


def hf_tensor_names(arch: GgufArch, n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face tensor name (without the family's prefix)."""
    names = dict(arch.global_tensors)
    for i in range(n_layers):
        names.update({g.format(i=i): h.format(i=i) for g, h in arch.layer_tensors.items()})
    return names


def dequantize(tensor, where: str) -> np.ndarray:
    """A :class:`GGUFTensor` as a float32 numpy array of its ``shape`` (outermost first)."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(tensor.tensor_type)
    try:
        out = quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as err:
        raise ValueError(f"{where}: tensor {tensor.name!r} has quantization type {qtype.name}, which "
                         f"gguf.quants cannot dequantize ({err})") from err
    return np.asarray(out, dtype=np.float32).reshape(tensor.shape)


def _translate(gguf_file: GGUFFile, where: str) -> tuple[GgufArch, dict, dict[str, GGUFTensor]]:
    """The file's architecture entry, its config as a ``config.json`` dict and its tensors by
    Hugging Face name; refuses unknown architectures, metadata and tensors by name."""
    meta = gguf_file.metadata
    a = meta.get("general.architecture")
    if a is not None and not isinstance(a, str):
        raise ValueError(f"{where}: general.architecture={_brief(a)} must be a string (the architecture's name)")
    if a not in ARCHITECTURES:
        raise ValueError(f"{where}: GGUF architecture {a!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    arch = ARCHITECTURES[a]
    check_metadata(meta, arch, where)
    check_metadata_values(meta, arch, where)
    tensors = {t.name: t for t in gguf_file.tensors}
    # the layer count against the tensors present, before anything is built or looped per declared layer
    block_count = f"{a}.block_count"
    try:
        n_layers = gguf_need(meta, block_count)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    check_layer_count(block_count, n_layers, tensors, where, pattern=_BLOCK_INDEX, exact=True)
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{where}: the file has a 'rope_freqs' tensor (per-frequency rope scaling, "
                         "e.g. Llama 3.1); jetjax does not read it, so it refuses rather than compute "
                         "without it")
    try:
        hf_cfg = arch.config(meta, set(tensors))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    except (TypeError, KeyError, ZeroDivisionError) as err:   # a value check above should have caught it
        raise ValueError(f"{where}: the {a} metadata does not describe a model jetjax can build "
                         f"({type(err).__name__}: {err})") from None
    names = hf_tensor_names(arch, n_layers)
    unknown = sorted(n for n in tensors if n not in names)
    if unknown:
        raise ValueError(f"{where}: the file has tensors jetjax does not use for {a}: "
                         f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; it may be a different variant")
    return arch, hf_cfg, {names[n]: t for n, t in tensors.items()}


def _weight(arch: GgufArch, hf_name: str, tensor: GGUFTensor, hf_cfg: dict, where: str) -> np.ndarray:
    return arch.fix(hf_name, dequantize(tensor, where), hf_cfg)


# ---------------------------------------------------------------------------------------------
# Metadata values and tensor shapes, checked before anything is built or dequantized

_BLOCK_INDEX = r"^blk\.(\d+)\."   # llama.cpp names every layer tensor blk.{i}.*
# <arch>.* keys every family reads the same way: counts (with their minimum), real numbers, strings
_COUNTS = {"block_count": 1, "embedding_length": 1, "feed_forward_length": 1, "attention.head_count": 1,
           "attention.head_count_kv": 1, "attention.key_length": 1, "attention.value_length": 1,
           "rope.dimension_count": 1, "context_length": 1, "vocab_size": 1, "attention.sliding_window": 0}
_REALS = {"attention.layer_norm_rms_epsilon": 0.0, "attention.layer_norm_epsilon": 0.0, "rope.freq_base": None,
          "rope.scaling.factor": None, "attn_logit_softcapping": 0.0, "final_logit_softcapping": 0.0}
_STRINGS = ("rope.scaling.type",)
_SHAPE_KEYS = ("embedding_length", "attention.head_count", "attention.head_count_kv", "attention.key_length",
               "feed_forward_length", "vocab_size", "context_length")


def check_metadata_values(meta: dict, arch: GgufArch, where: str) -> None:
    """Refuse, naming the key and the value, metadata of the wrong type or out of range, and head
    counts that do not divide: each as one line, before any family reads the values.

    Counts must be integers (not bools, not lists: per-layer values are not supported) of at least 1
    (a sliding window: 0); real numbers finite (epsilons and soft-caps not negative, rope bases and
    factors positive); ``rope.scaling.type`` a string. ``embedding_length`` must split into
    ``attention.head_count`` heads unless ``attention.key_length`` gives the head size,
    ``attention.head_count`` must be a multiple of ``attention.head_count_kv``, and a rotary
    architecture's rotated dimensions must be even.
    """
    a = meta["general.architecture"]
    tok_model = meta.get("tokenizer.ggml.model")
    if tok_model is not None and not isinstance(tok_model, str):
        raise ValueError(f"{where}: tokenizer.ggml.model={_brief(tok_model)} must be a string (the vocabulary kind)")
    for sub, minimum in _COUNTS.items():
        key, value = f"{a}.{sub}", meta.get(f"{a}.{sub}")
        if value is None:
            continue
        if isinstance(value, list):
            raise ValueError(f"{where}: {key}={_brief(value)} is a list (one value per layer); jetjax supports "
                             f"one {sub} for every layer")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{where}: {key}={_brief(value)} must be an integer >= {minimum}")
    for sub, minimum in _REALS.items():
        key, value = f"{a}.{sub}", meta.get(f"{a}.{sub}")
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (minimum is None and value <= 0) or (minimum is not None and value < minimum):
            bound = "> 0" if minimum is None else f">= {minimum}"
            raise ValueError(f"{where}: {key}={_brief(value)} must be a finite number {bound}")
    for sub in _STRINGS:
        key, value = f"{a}.{sub}", meta.get(f"{a}.{sub}")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {key}={_brief(value)} must be a string")
    d, heads = meta.get(f"{a}.embedding_length"), meta.get(f"{a}.attention.head_count")
    kv, key_length = meta.get(f"{a}.attention.head_count_kv"), meta.get(f"{a}.attention.key_length")
    if heads is None:
        return
    if key_length is None and d is not None and d % heads:
        raise ValueError(f"{where}: {a}.embedding_length={d} is not a multiple of {a}.attention.head_count={heads}, "
                         f"and no {a}.attention.key_length gives the head size")
    if kv is not None and heads % kv:
        raise ValueError(f"{where}: {a}.attention.head_count={heads} is not a multiple of "
                         f"{a}.attention.head_count_kv={kv} (each key/value head serves a whole group of heads)")
    rotary = {"rope.dimension_count", "rope.freq_base"} & (arch.handled | arch.ignored)
    head = key_length if key_length is not None else (d // heads if d is not None else None)
    rope_dim = meta.get(f"{a}.rope.dimension_count", head)
    if rotary and rope_dim is not None and rope_dim % 2:
        source = (f"{a}.attention.key_length={key_length}" if key_length is not None
                  else f"{a}.embedding_length / {a}.attention.head_count = {d} / {heads}")
        raise ValueError(f"{where}: {a}.rope.dimension_count={rope_dim} is odd (head size {head}: {source}); "
                         "rotary embeddings turn pairs of dimensions")


def _shape_context(meta: dict) -> str:
    a = meta["general.architecture"]
    parts = [f"{a}.{k}={meta[f'{a}.{k}']}" for k in _SHAPE_KEYS if f"{a}.{k}" in meta]
    if f"{a}.vocab_size" not in meta and isinstance(meta.get("tokenizer.ggml.tokens"), list):
        parts.append(f"{len(meta['tokenizer.ggml.tokens'])} tokenizer.ggml.tokens")
    return f"the metadata ({', '.join(parts)})"


def _fixed_shape(arch: GgufArch, hf_name: str, shape: tuple, hf_cfg: dict):
    """The shape a tensor of file shape ``shape`` has once the family's layout fix has run, found on a
    zero-stride view (no data is read); ``None`` if the fix cannot take that shape."""
    try:
        return tuple(np.shape(arch.fix(hf_name, np.broadcast_to(np.zeros((), np.float32), shape), hf_cfg)))
    except Exception:   # noqa: BLE001 - a reshape the shape does not allow: reported as a shape mismatch
        return None


def check_tensor_shapes(arch: GgufArch, hf_cfg: dict, tensors: dict[str, GGUFTensor], family, config, expected,
                        meta: dict, where: str) -> None:
    """Every tensor the config needs is in the file, with the shape the metadata gives, from the
    tensor table alone: nothing is dequantized before this passes. ``tensors``: by Hugging Face name
    (as :func:`_translate` returns them); ``expected``: the abstract model's parameter shapes."""
    def strip(name):
        return next((name[len(p):] for p in family.strip_prefixes if name.startswith(p)), name)

    declared = {strip(h): (h, t) for h, t in tensors.items()}
    file_names = {strip(h): g for g, h in hf_tensor_names(arch, config.n_layers).items()}
    context = _shape_context(meta)
    for name, (ours, transpose) in family.weight_map(config).items():
        if name not in declared:
            raise ValueError(f"{where}: tensor {name!r} is missing from the checkpoint (needed for {config.arch} "
                             f"with {config.n_layers} layers; the file would name it {file_names.get(name, name)!r})")
        hf_name, t = declared[name]
        want = tuple(expected[ours].shape)
        want = want[::-1] if transpose else want
        if _fixed_shape(arch, hf_name, t.shape, hf_cfg) == want:
            continue
        in_file = next((s for s in (want, want[::-1]) if _fixed_shape(arch, hf_name, s, hf_cfg) == want), want)
        raise ValueError(f"{where}: tensor {t.name!r} has shape {t.shape} in the file, expected {in_file} from "
                         f"{context}")


def gguf_to_hf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``config.json`` dict and float32 state dict (Hugging Face names and layout) that
    :func:`load_gguf` reads out of a GGUF file, before any jetjax family is involved.

    For comparisons with other readers of the same file, e.g. transformers' GGUF loader.
    """
    where = str(path)
    gguf_file = open_gguf(path)
    arch, hf_cfg, tensors = _translate(gguf_file, where)
    _check_before_data(gguf_file, arch, hf_cfg, tensors, where)
    return hf_cfg, {n: _weight(arch, n, t, hf_cfg, where) for n, t in tensors.items()}


def _check_before_data(gguf_file: GGUFFile, arch: GgufArch, hf_cfg: dict, tensors: dict, where: str):
    """The family, config and abstract model of the file, with every tensor's shape checked against
    them (:func:`check_tensor_shapes`) before any data is dequantized."""
    from jetjax.models.family import config_for, family_for
    from jetjax.models.model import abstract_params

    family = family_for(arch.model_type, where)
    config = config_for(family, hf_cfg, where)
    skeleton, expected = abstract_params(lambda: family.module(config))
    check_tensor_shapes(arch, hf_cfg, tensors, family, config, expected, gguf_file.metadata, where)
    return family, config, skeleton, expected


def load_gguf(path: str | os.PathLike, *, dtype=None, check_finite: bool = True):
    """Load a GGUF file as a :class:`~jetjax.models.model.Model` (use :func:`jetjax.from_pretrained`).

    Args:
      path: a ``.gguf`` file.
      dtype: storage dtype of the parameters (default float32; the file's quantized values are
        dequantized exactly to float32 first).
      check_finite: refuse tensors holding NaN or ±inf (see :func:`jetjax.from_pretrained`).
    """
    import jax.numpy as jnp

    from jetjax.models.family import assign_params
    from jetjax.models.model import Model

    where = str(path)
    gguf_file = open_gguf(path)
    arch, hf_cfg, tensors = _translate(gguf_file, where)
    family, config, skeleton, expected = _check_before_data(gguf_file, arch, hf_cfg, tensors, where)
    tokenizer = None  # built before the weights: a bad vocabulary fails before the heavy work
    if "tokenizer.ggml.model" in gguf_file.metadata:
        from jetjax.io.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(gguf_file.metadata, source=where)
    hf_tensors = {n: jnp.asarray(_weight(arch, n, t, hf_cfg, where), dtype=dtype or jnp.float32)
                  for n, t in tensors.items()}
    params = assign_params(config, family, hf_tensors, expected, where, None, check_finite=check_finite)
    return Model(skeleton, params, tokenizer=tokenizer, source=where)


__all__ = ["load_gguf", "gguf_to_hf", "open_gguf", "GGUFFile", "GGUFTensor", "read_metadata", "read_gguf_metadata",
           "is_gguf", "dequantize", "supported_architectures", "ARCHITECTURES", "check_metadata_values",
           "check_tensor_shapes"]
