"""Checks the loaders make before they read tensor data: where a file may be, and what sizes fit.

* :func:`inside` -- a file a checkpoint names (a shard of ``model.safetensors.index.json``, or one of
  the fixed names: ``config.json``, ``tokenizer.json``, ...) must resolve, symlinks followed, to a
  file inside the directory the loader was given. Nothing in a checkpoint executes, but a loader
  that follows ``../elsewhere`` or ``/etc/passwd`` out of the directory reads what the user never
  meant to hand it. A Hugging Face hub cache snapshot (``.../snapshots/<rev>/``, whose files are
  symlinks into the repository's ``blobs/``) may also point into that ``blobs/`` folder.
* :func:`safetensors_shapes` -- the tensor names and shapes of a safetensors file, read from its
  JSON header only (the data is not touched).
* :func:`layers_present` and :func:`check_layer_count` -- a declared layer count is compared with the
  layer indices in the tensor names before anything is built per declared layer.
* :func:`check_tensor_table` -- every tensor the config needs is present with the shape the config
  gives, checked on the shapes alone, before any data is read or dequantized.

>>> layers_present(["wte.weight", "h.0.ln_1.weight", "h.11.mlp.c_fc.bias"])
12
>>> layers_present(["blk.0.attn_q.weight", "blk.1.ffn_up.weight"], pattern=r"^blk\\.(\\d+)\\.")
2
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping

_LAYER_INDEX = r"(?:^|\.)(\d+)(?:\.|$)"   # an integer path segment: "h.3.attn", "model.layers.12.mlp"
_MAX_HEADER = 100 * 2**20                # safetensors' own limit on the JSON header


def _roots(directory: Path) -> list[Path]:
    """The folders a checkpoint directory's files may resolve into."""
    real = Path(os.path.realpath(directory))
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append(real.parent.parent / "blobs")   # a hub cache snapshot: symlinks into ../../blobs
    return roots


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def inside(directory: str | os.PathLike, name, *, named_by: str | None = None) -> Path:
    """``directory / name`` resolved (symlinks followed), refused unless it lies inside ``directory``.

    ``name``: a relative file name as a checkpoint gives it (``"model-00001-of-00002.safetensors"``,
    ``"config.json"``). ``named_by``: the file whose metadata gave the name (for messages).
    Returns the resolved path; whether it exists is the caller's question.

    Raises:
      ValueError: ``name`` is not a non-empty string without NUL characters, or it (or a symlink on
        the way) leads outside ``directory``, or it names a directory; the message quotes ``name``
        as the checkpoint wrote it.
    """
    directory = Path(directory)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{named_by or directory} names the file {name!r}, which is not a file name: a "
                         "checkpoint's files are named by non-empty strings relative to its directory")
    what = f"{named_by} names the file {name!r}, which" if named_by else str(directory / name)
    target = Path(os.path.realpath(directory / name))
    roots = _roots(directory)
    if not any(_within(target, root) for root in roots):
        via = "" if str(target) == os.path.normpath(os.path.join(str(directory), name)) else " through a symlink"
        raise ValueError(f"{what} resolves{via} to {target}, outside the checkpoint directory {roots[0]}: jetjax "
                         "reads only files inside the directory it is given")
    if target.exists() and not target.is_file():
        raise ValueError(f"{what} is a directory ({target}), not a file")
    return target


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, dtype)}`` from a safetensors file's JSON header, without its data.

    Raises ``ValueError`` naming the file when the header is truncated, too long or not the
    format's JSON (the same file would fail to open in ``safetensors``).
    """
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{p} is not a readable safetensors file (truncated or corrupt?): its header "
                             f"length {n} does not fit the file's {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{p} is not a readable safetensors file (truncated or corrupt?): its header is not "
                         f"JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{p} is not a readable safetensors file: its header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"{p} is not a readable safetensors file: tensor {name!r} has no valid shape "
                             f"in the header ({str(info)[:80]})")
        out[name] = (tuple(shape), str(info.get("dtype")))
    return out


def layers_present(names: Iterable[str], pattern: str = _LAYER_INDEX) -> int:
    """One more than the largest layer index in the tensor ``names`` (0 if none): an upper bound on the
    layers a checkpoint can hold. Every integer segment of a name counts unless ``pattern`` (one group)
    says where the index is."""
    top = -1
    regex = re.compile(pattern)
    for name in names:
        for m in regex.finditer(name):
            top = max(top, int(m.group(1)))
    return top + 1


def check_layer_count(key: str, value, names: Iterable[str], where, *, pattern: str = _LAYER_INDEX,
                      exact: bool = False) -> None:
    """Refuse a layer count ``value`` (config/metadata ``key``) that is not a positive integer or that
    exceeds the layers the tensor ``names`` hold (``exact``: or falls short of them), before anything
    is built or looped per declared layer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: {key}={value!r} must be a positive integer (the number of layers)")
    present = layers_present(names, pattern)
    if value > present or (exact and value < present):
        holds = f"tensors of {present} layer(s) (indices 0 to {present - 1})" if present else "no layer tensors"
        raise ValueError(f"{where}: {key}={value}, but the file holds {holds}; the weights and {key} must agree "
                         f"(set {key}={present} if the weights are right)")


def check_tensor_table(shapes: Mapping[str, tuple[int, ...]], mapping: Mapping, expected: Mapping, where, *,
                       needed_for: str, describe: Callable[[str], str] = repr, context: str = "the config") -> None:
    """Refuse, from shapes alone, a missing tensor or one whose shape is not what the config gives.

    ``shapes``: ``{hf name: shape}`` as the file declares them (after prefixes are stripped and any
    layout change is applied); ``mapping``: the family's weight map ``{hf name: (param path,
    transposed)}``; ``expected``: ``{param path: ShapeDtypeStruct}`` of the abstract model;
    ``needed_for``: the model the tensors are for (``"llama with 2 layers"``); ``describe``: how to
    name a tensor in messages (GGUF: the file's own name); ``context``: what the expected shapes come
    from (GGUF: the metadata keys with their values).
    """
    for hf_name, (ours, transpose) in mapping.items():
        if hf_name not in shapes:
            alias = "" if describe is repr else f"; the file would name it {describe(hf_name)}"
            raise ValueError(f"{where}: tensor {hf_name!r} is missing from the checkpoint (needed for "
                             f"{needed_for}){alias}")
        want = tuple(expected[ours].shape)
        want = want[::-1] if transpose else want
        got = tuple(shapes[hf_name])
        if got != want:
            raise ValueError(f"{where}: tensor {describe(hf_name)} has shape {got}, expected {want} from "
                             f"{context}")


__all__ = ["inside", "safetensors_shapes", "layers_present", "check_layer_count", "check_tensor_table"]
