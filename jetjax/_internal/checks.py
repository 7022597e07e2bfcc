"""Argument checks shared across jetjax: the jet order and integer settings, one message each.

Example:
  >>> check_order(2), check_positive_int("top_k", 5, upper=9, what="the vocabulary size")
  (2, 5)
  >>> check_positive_int("top_k", 12, upper=9, what="the vocabulary size")
  Traceback (most recent call last):
  ...
  ValueError: top_k=12 is larger than the vocabulary size (9)
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["check_order", "check_positive_int", "check_nonnegative_int", "json_safe", "count_nonfinite",
           "decode_text_file", "MAX_PATHS", "check_path_count", "check_direction", "DIRECTION_NORM_MAX"]


def check_order(order) -> int:
    """A jet order: a non-negative Python (or NumPy) int, returned as ``int``.

    Raises ``TypeError`` for anything else (``True``, ``1.0``) and ``ValueError`` when negative.
    """
    if isinstance(order, bool) or not isinstance(order, numbers.Integral):
        raise TypeError(f"jet order must be a non-negative Python int, got {order!r} "
                        f"of type {type(order).__name__}")
    if order < 0:
        raise ValueError(f"jet order must be >= 0, got {order}")
    return int(order)


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_positive_int(name: str, value, upper: int | None = None, what: str | None = None, *,
                       optional: bool = False) -> int | None:
    """``value`` as an ``int >= 1`` (and ``<= upper`` when given, ``what`` naming that bound).

    ``optional=True`` lets ``None`` through. ``ValueError`` otherwise, naming ``name``.
    """
    if optional and value is None:
        return None
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{' or None' if optional else ''}, got {value!r}")
    if upper is not None and value > upper:
        bound = f"{what} ({upper})" if what else str(upper)
        raise ValueError(f"{name}={value} is larger than {bound}")
    return int(value)


def check_nonnegative_int(name: str, value, *, optional: bool = False) -> int | None:
    """``value`` as an ``int >= 0``; ``optional=True`` lets ``None`` through. ``ValueError`` otherwise."""
    if optional and value is None:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int{' or None' if optional else ''}, got {value!r}")
    return int(value)


def check_position(position, n_tokens: int, *, optional: bool = False) -> int | None:
    """``position`` (negative: from the end) as a 0-based index into ``n_tokens`` tokens.

    ``TypeError`` when it is not an int (``bool`` included; ``None`` only with ``optional=True``,
    returned as is), ``IndexError`` when it is out of range; both name the value and what is accepted.

    Example:
      >>> check_position(-1, 5), check_position(2, 5), check_position(None, 5, optional=True)
      (4, 2, None)
      >>> check_position(5, 5)
      Traceback (most recent call last):
      ...
      IndexError: position 5 is out of range for a sequence of 5 tokens (valid: -5..4)
    """
    if optional and position is None:
        return None
    if not _is_int(position):
        raise TypeError(f"position must be an int{' (or None for all positions)' if optional else ''}, "
                        f"got {position!r}")
    if not -n_tokens <= position < n_tokens:
        raise IndexError(f"position {position} is out of range for a sequence of {n_tokens} tokens "
                         f"(valid: {-n_tokens}..{n_tokens - 1})")
    return int(position) % n_tokens


def available_memory() -> int | None:
    """Bytes of host memory available now (Linux ``MemAvailable``), or ``None`` where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# Expanding P paths needs several times the P path streams: Algorithm 2 keeps the previous step's
# streams while building the next one, plus their jets (measured ~6x on Gemma-3-270M, 2^18 paths).
EXPANSION_MEMORY_FACTOR = 4


def check_path_memory(n_paths: int, n_positions: int, d_model: int, hint: str, *, itemsize: int = 4,
                      available: int | None = None, width: str = "d") -> None:
    """A ``MemoryError`` before any work when ``n_paths`` streams of ``n_positions × d_model`` values
    cannot be expanded in the host memory available (``available``: bytes, default: measured now);
    ``width`` names ``d_model`` in the message (``"d + V"`` where logits are held too).

    Example:
      >>> check_path_memory(2**18, 6, 640, "narrow them", available=8 * 2**30)
      Traceback (most recent call last):
        ...
      MemoryError: 262144 paths × 6 positions × d=640 take 3.8 GiB as float32 streams, and expanding them needs about 4× that (15.0 GiB), more than the 8.0 GiB of memory available: narrow them
    """
    need = n_paths * n_positions * d_model * itemsize
    available = available_memory() if available is None else available
    if available is not None and EXPANSION_MEMORY_FACTOR * need > available:
        gib = 2.0 ** 30
        raise MemoryError(f"{n_paths} paths × {n_positions} positions × {width}={d_model} take {need / gib:.1f} GiB as "
                          f"float32 streams, and expanding them needs about {EXPANSION_MEMORY_FACTOR}× that "
                          f"({EXPANSION_MEMORY_FACTOR * need / gib:.1f} GiB), more than the {available / gib:.1f} GiB "
                          f"of memory available: {hint}")


MAX_PATHS = 1 << 20
"""The default ``max_paths`` of every function that enumerates paths: more than this many labels (and
``P × T × d`` streams) are refused from the closed-form count, before anything is built."""


def check_path_count(n_paths: int, max_paths, what: str, hint: str) -> None:
    """Refuse ``n_paths`` (a closed-form count, computed before any enumeration) above ``max_paths``.

    ``max_paths`` is an int >= 1 or ``None`` (no limit: the caller has checked, or the memory check
    alone bounds the work). The message is one line: the number, the limit and ``hint``, the way out.

    Example:
      >>> check_path_count(2 ** 40, 1 << 20, "these settings", "pass max_length=")
      Traceback (most recent call last):
      ...
      ValueError: these settings give 1099511627776 paths, more than max_paths=1048576; pass max_length=
    """
    if max_paths is None:
        return
    max_paths = check_positive_int("max_paths", max_paths, optional=True)
    if n_paths > max_paths:
        raise ValueError(f"{what} give {n_paths} paths, more than max_paths={max_paths}; {hint}")


DIRECTION_NORM_MAX = 1e18
"""The largest L2 norm of a score direction: scores are dot products with it and the search squares
them and their bounds in float32 (largest finite value 3.4e38); scores are linear in the direction,
so a larger one can always be scaled down and the scores scaled back."""


def check_direction(score, vocab_size: int, what: str = "the score direction") -> np.ndarray:
    """A direction in logit space ``[V]`` as float64, refused (``ValueError``, naming the values) when it
    is not finite, overflows or vanishes in float32 (where the searches and reductions use it), or is
    too large for its squares (:data:`DIRECTION_NORM_MAX`).

    Example:
      >>> check_direction([1.0, -1.0, 0.0], 3).tolist()
      [1.0, -1.0, 0.0]
      >>> check_direction([1e39, 0.0, 0.0], 3)
      Traceback (most recent call last):
      ...
      ValueError: the score direction overflows float32 (1 entry beyond ±3.4e+38, the largest 1e+39), the precision the scores are computed in; scores are linear in the direction: divide it by its largest |entry| and multiply the scores back
    """
    d = np.asarray(score, np.float64)
    if d.shape != (vocab_size,):
        raise ValueError(f"{what} must have shape ({vocab_size},) (the vocabulary), got {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{what} has {count_nonfinite(d)} NaN/inf entries; it must be finite")
    scale = "scores are linear in the direction: divide it by its largest |entry| and multiply the scores back"
    big = np.abs(d) > np.finfo(np.float32).max
    if big.any():
        raise ValueError(f"{what} overflows float32 ({int(big.sum())} entr{'y' if big.sum() == 1 else 'ies'} beyond "
                         f"±3.4e+38, the largest {float(np.abs(d).max()):.3g}), the precision the scores are "
                         f"computed in; {scale}")
    norm = float(np.sqrt(np.sum(np.square(d / max(np.abs(d).max(), 1e-300))))) * float(np.abs(d).max())
    if norm > DIRECTION_NORM_MAX:
        raise ValueError(f"{what} has norm {norm:.3g}: scores and their bounds would overflow float32 (squares up "
                         f"to {norm ** 2:.3g}, the largest float32 is 3.4e+38; at most {DIRECTION_NORM_MAX:.0e} is "
                         f"accepted); {scale}")
    if not np.any(d.astype(np.float32)):
        tiny = float(np.abs(d).max())
        raise ValueError(f"{what} is zero in float32 (its largest |entry| is {tiny:.3g}): every path would "
                         "score 0; " + ("pick a non-zero direction" if tiny == 0 else
                                        "scores are linear in the direction: scale it up"))
    return d


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, ±inf) replaced by ``None``, so ``json.dumps`` writes
    valid JSON (``null``) instead of the bare ``NaN`` / ``Infinity`` most JSON readers reject.

    Lists, tuples and dicts are walked; NumPy scalars and arrays become Python values.

    Example:
      >>> import json, numpy as np
      >>> json.dumps(json_safe({"a": [1.0, float("nan")], "b": np.float32(np.inf), "c": np.arange(2)}))
      '{"a": [1.0, null], "b": null, "c": [0, 1]}'
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def count_nonfinite(values) -> int:
    """How many entries of ``values`` (an array or array-like) are NaN or ±inf."""
    arr = np.asarray(values)
    if "float" in arr.dtype.name and arr.dtype.kind not in "fc":   # bfloat16 and other ml_dtypes floats
        arr = arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.inexact):
        return 0
    return int(arr.size - np.count_nonzero(np.isfinite(arr)))


def decode_text_file(data: bytes, what: str, accepted: str) -> str:
    """The text of a file's bytes, which must be UTF-8 (a leading byte-order mark is dropped).

    ``what`` names the file in messages (e.g. ``"keyword file words.txt"``), ``accepted`` says what
    is wanted. A NUL byte (a binary file) or bytes that are not UTF-8 are a ``ValueError`` naming the
    offset, so a wrong file is refused before any work that would read it.

    Example:
      >>> decode_text_file(b"\\xef\\xbb\\xbfwar\\npeace", "keyword file k.txt", "one word per line")
      'war\\npeace'
      >>> decode_text_file(b"ab\\x00c", "--corpus c.txt", "a UTF-8 text file")
      Traceback (most recent call last):
      ...
      ValueError: --corpus c.txt is not text (a NUL byte at offset 2); a UTF-8 text file
    """
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"{what} is not text (a NUL byte at offset {nul}); {accepted}")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0   # a UTF-8 byte-order mark is not part of the text
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = bom + err.start
        raise ValueError(f"{what} is not UTF-8 text (byte {data[at]:#04x} at offset {at}); {accepted}") from None
