"""The protocol every jetjax result type follows, and the helpers behind it.

A result (:class:`~jetjax.LensResult`, :class:`~jetjax.PathAttribution`, :class:`~jetjax.TopPaths`,
:class:`~jetjax.PathScores`, :class:`~jetjax.FrozenPaths`, :class:`~jetjax.Expansion`,
:class:`~jetjax.ngrams.NGramTable`, the diffing results; :class:`~jetjax.AttributionGraph` is the model
they follow) is a frozen dataclass of arrays and metadata, never a ``Model``, with

* ``top(n)``: the ``n`` largest entries of the one ranking the type is about (its docstring says which);
* ``table(n)``: a plain-text report of them;
* ``to_json(path=None) -> str`` (written to ``path`` when given), ``from_json(text)`` and ``load(path)``,
  which give back an equal object (arrays equal, dtypes included);
* ``to_dataframe()``: one row per entry (needs pandas, imported only then).

Arrays are written exactly as ``{"dtype", "shape", "hex"}``: their little-endian bytes in hexadecimal
(so NaN and ±inf survive, and the text never holds a bare ``NaN``). Plain floats go through
:func:`jetjax._internal.checks.json_safe`: a non-finite one is written ``null`` and read back as NaN.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import numpy as np

from jetjax._internal.checks import json_safe

__all__ = ["ResultIO", "encode_array", "decode_array", "encode_tree", "decode_tree", "check_format", "dataframe",
           "float_or_nan", "load_json", "write_text"]


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:                     # bfloat16 and other ml_dtypes types
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def encode_array(a) -> dict | None:
    """``{"dtype", "shape", "hex"}`` of an array (NumPy, JAX or nested lists); ``None`` stays ``None``.

    Example:
      >>> d = encode_array(np.array([1.5, np.nan], np.float32))
      >>> d["dtype"], d["shape"], np.testing.assert_array_equal(decode_array(d), [1.5, np.nan])
      ('float32', [2], None)
    """
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype == object:
        raise TypeError("an object array cannot be written as JSON bytes")
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False) if arr.dtype.byteorder == ">" else arr
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "hex": np.ascontiguousarray(little).tobytes().hex()}


def decode_array(d: dict | None) -> np.ndarray | None:
    """The array :func:`encode_array` wrote (a fresh, writable NumPy array); ``None`` stays ``None``."""
    if d is None:
        return None
    try:
        dtype = _dtype(d["dtype"]).newbyteorder("<")
        return np.frombuffer(bytes.fromhex(d["hex"]), dtype).reshape(d["shape"]).astype(dtype.newbyteorder("="))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not an array written by jetjax ({{'dtype', 'shape', 'hex'}}): {err}") from None


def encode_tree(tree) -> Any:
    """A pytree of arrays (dicts with string keys, lists, tuples, ``None``) as JSON-able data."""
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {"dict": {str(k): encode_tree(v) for k, v in tree.items()}}
    if isinstance(tree, (list, tuple)):
        return {"tuple" if isinstance(tree, tuple) else "list": [encode_tree(v) for v in tree]}
    return {"array": encode_array(tree)}


def decode_tree(data) -> Any:
    """The pytree :func:`encode_tree` wrote, with NumPy arrays as leaves."""
    if data is None:
        return None
    (kind, value), = data.items()
    if kind == "dict":
        return {k: decode_tree(v) for k, v in value.items()}
    if kind in ("list", "tuple"):
        out = [decode_tree(v) for v in value]
        return out if kind == "list" else tuple(out)
    return decode_array(value)


def float_or_nan(x) -> float:
    """A float read back from JSON: ``null`` (a non-finite number when written) is NaN."""
    return float("nan") if x is None else float(x)


def check_format(data, fmt: str, what: str, *, required: tuple[str, ...] = ()) -> dict:
    """``data`` when it is a dict of format ``fmt`` (or of no stated format, as older files) holding
    ``required``; a ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"not a jetjax {what}: expected a JSON object, got {type(data).__name__}")
    if data.get("format", fmt) != fmt:
        raise ValueError(f"not a jetjax {what}: its 'format' is {data.get('format')!r}, expected {fmt!r}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"not a complete jetjax {what}: the JSON misses {missing}")
    return data


def write_text(text: str, path) -> str:
    """``text``, written to ``path`` first when one is given (a directory is an ``IsADirectoryError``)."""
    if path is not None:
        with open(path, "w", encoding="utf-8") as f:   # builtin open: the error is raised from jetjax's frame
            f.write(text)
    return text


def load_json(cls, path):
    """``cls.from_json`` of the file at ``path``; a ``ValueError`` names the file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return cls.from_json(text)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def dataframe(columns: dict):
    """A ``pandas.DataFrame`` of ``columns`` (pandas imported here, so only ``to_dataframe`` needs it)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas (pip install pandas); to_json, table and top do not") from None
    return pd.DataFrame(columns)


class ResultIO:
    """``to_json(path=None)``, ``from_json(text)`` and ``load(path)`` on top of a type's ``to_dict`` and
    ``from_dict``; by default every dataclass field as it is (JSON-able values) under ``FORMAT``."""

    FORMAT: ClassVar[str] = ""

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict):
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = check_format(data, cls.FORMAT, cls.__name__, required=names)
        return cls(**{name: data[name] for name in names})

    def to_json(self, path=None) -> str:
        """This result as JSON (see :meth:`from_json`), written to ``path`` when given; returned either way."""
        return write_text(json.dumps(json_safe(self.to_dict()), allow_nan=False, ensure_ascii=False), path)

    @classmethod
    def from_json(cls, text: str):
        """The result :meth:`to_json` wrote, from its text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path):
        """The result :meth:`to_json` wrote to ``path``."""
        return load_json(cls, path)
