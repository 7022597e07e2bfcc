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


def _parse(buf) -> GGUFFile:
    """The metadata and tensor table of a GGUF buffer (version and magic already checked)."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES

    cur = _Cursor(buf)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.unpack("I"))
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
    if a not in ARCHITECTURES:
        raise ValueError(f"{where}: GGUF architecture {a!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    arch = ARCHITECTURES[a]
    check_metadata(meta, arch, where)
    tensors = {t.name: t for t in gguf_file.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{where}: the file has a 'rope_freqs' tensor (per-frequency rope scaling, "
                         "e.g. Llama 3.1); jetjax does not read it, so it refuses rather than compute "
                         "without it")
    hf_cfg = arch.config(meta, set(tensors))
    names = hf_tensor_names(arch, int(gguf_need(meta, f"{a}.block_count")))
    unknown = sorted(n for n in tensors if n not in names)
    if unknown:
        raise ValueError(f"{where}: the file has tensors jetjax does not use for {a}: "
                         f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; it may be a different variant")
    return arch, hf_cfg, {names[n]: t for n, t in tensors.items()}


def _weight(arch: GgufArch, hf_name: str, tensor: GGUFTensor, hf_cfg: dict, where: str) -> np.ndarray:
    return arch.fix(hf_name, dequantize(tensor, where), hf_cfg)


def gguf_to_hf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``config.json`` dict and float32 state dict (Hugging Face names and layout) that
    :func:`load_gguf` reads out of a GGUF file, before any jetjax family is involved.

    For comparisons with other readers of the same file, e.g. transformers' GGUF loader.
    """
    arch, hf_cfg, tensors = _translate(open_gguf(path), str(path))
    return hf_cfg, {n: _weight(arch, n, t, hf_cfg, str(path)) for n, t in tensors.items()}


def load_gguf(path: str | os.PathLike, *, dtype=None, check_finite: bool = True):
    """Load a GGUF file as a :class:`~jetjax.models.model.Model` (use :func:`jetjax.from_pretrained`).

    Args:
      path: a ``.gguf`` file.
      dtype: storage dtype of the parameters (default float32; the file's quantized values are
        dequantized exactly to float32 first).
      check_finite: refuse tensors holding NaN or ±inf (see :func:`jetjax.from_pretrained`).
    """
    import jax.numpy as jnp

    from jetjax.models.family import assign_params, config_for, family_for
    from jetjax.models.model import Model, abstract_params

    where = str(path)
    gguf_file = open_gguf(path)
    arch, hf_cfg, tensors = _translate(gguf_file, where)
    family = family_for(arch.model_type, where)
    config = config_for(family, hf_cfg, where)
    tokenizer = None  # built before the weights: a bad vocabulary fails before the heavy work
    if "tokenizer.ggml.model" in gguf_file.metadata:
        from jetjax.io.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(gguf_file.metadata, source=where)
    hf_tensors = {n: jnp.asarray(_weight(arch, n, t, hf_cfg, where), dtype=dtype or jnp.float32)
                  for n, t in tensors.items()}
    skeleton, expected = abstract_params(lambda: family.module(config))
    params = assign_params(config, family, hf_tensors, expected, where, None, check_finite=check_finite)
    return Model(skeleton, params, tokenizer=tokenizer, source=where)


__all__ = ["load_gguf", "gguf_to_hf", "open_gguf", "GGUFFile", "GGUFTensor", "read_metadata", "read_gguf_metadata",
           "is_gguf", "dequantize", "supported_architectures", "ARCHITECTURES"]
