"""``NGramTable``: the top next tokens of every context, saved as safetensors + JSON (no pickle)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jetjax._internal.checks import check_nonnegative_int
from jetjax.html import ngram_html
from jetjax._internal.results import check_format, dataframe, decode_array, encode_array, load_json, write_text

__all__ = ["NGramTable", "atomic_write_bytes", "TABLE_FILE", "TABLE_META", "check_table_arrays"]

TABLE_FILE, TABLE_META = "table.safetensors", "table.json"
_ARRAYS = ("contexts", "probs", "ids", "logsumexp", "global_probs", "global_pairs")
_INTS, _FLOATS = ("contexts", "ids", "global_pairs"), ("probs", "logsumexp", "global_probs")
PROB_TOL = 1e-5
"""How far above 1 a stored probability (or a row's sum of them) may be: float32 rounding of
``exp(logit − logsumexp)``, never more."""
_WIDTHS = {"bigrams": 1, "skip_bigrams": 1, "trigrams": 2}   # context tokens per row, by the sweep's kind


def _first(mask: np.ndarray) -> str:
    at = np.argwhere(mask)[0]
    return ", ".join(map(str, at.tolist()))


def check_table_arrays(arrays: dict, meta: dict | None, tokens, where: str, *, rows: tuple[int, int] | None = None,
                       top_k: int | None = None, vocab_size: int | None = None) -> None:
    """Refuse (``ValueError`` naming ``where`` and the array) arrays that no sweep writes.

    Dtypes (ints for ids, floats for probabilities), shapes (``[R, n-1]`` contexts, ``[R, k]``
    probs / ids, ``[R]`` logsumexp, ``[G]`` / ``[G, n]`` global top), widths against the sweep's
    ``kind`` and ``context_len`` in ``meta``, ids within the vocabulary (``meta``'s model config or
    the token strings; ``-1`` marks an entry :meth:`NGramTable.filter` dropped), and probabilities in
    ``[0, 1]`` whose row sums are at most 1 (to :data:`PROB_TOL`). NaN is accepted only in rows
    whose ``logsumexp`` is not finite, as a sweep of a model with NaN weights writes them (with a
    warning there, and again here). ``rows``/``top_k`` (a chunk's): the rows and entries expected;
    only the arrays present are checked.

    Example:
      >>> check_table_arrays({"probs": np.array([[0.5, 0.75]], np.float32)}, {}, None, "t.safetensors")
      Traceback (most recent call last):
      ...
      ValueError: t.safetensors: probs of row 0 sum to 1.25, more than 1: not a table of probabilities
    """
    meta = meta if isinstance(meta, dict) else {}
    if vocab_size is None:
        model = meta.get("model")
        config = model.get("config") if isinstance(model, dict) else None
        vocab_size = config.get("vocab_size") if isinstance(config, dict) else None
        if vocab_size is None and tokens is not None:
            vocab_size = len(tokens)
    for name, arr in arrays.items():
        kind = "integer" if name in _INTS else "floating"
        if name in _INTS + _FLOATS and not np.issubdtype(np.asarray(arr).dtype, getattr(np, kind)):
            raise ValueError(f"{where}: {name} has dtype {np.asarray(arr).dtype}; a table stores {kind} {name}")
    a = {name: np.asarray(arr) for name, arr in arrays.items()}
    want = {"contexts": 2, "probs": 2, "ids": 2, "logsumexp": 1, "global_probs": 1, "global_pairs": 2}
    for name, arr in a.items():
        if name in want and arr.ndim != want[name]:
            raise ValueError(f"{where}: {name} has shape {arr.shape}; a table stores it with {want[name]} axes")
    n_rows = a["probs"].shape[0] if "probs" in a else None
    if rows is not None:
        lo, hi = rows
        for name in ("probs", "ids", "logsumexp"):
            if name in a and a[name].shape[0] != hi - lo:
                raise ValueError(f"{where}: {name} holds {a[name].shape[0]} rows, but this chunk covers rows "
                                 f"{lo}..{hi - 1} ({hi - lo} rows)")
    if top_k is not None:
        for name in ("probs", "ids"):
            if name in a and a[name].shape[1] != top_k:
                raise ValueError(f"{where}: {name} keeps {a[name].shape[1]} entries per row; this sweep keeps "
                                 f"top_k={top_k}")
    if n_rows is not None:
        for name, shape in (("ids", a["probs"].shape), ("logsumexp", (n_rows,))):
            if name in a and a[name].shape != shape:
                raise ValueError(f"{where}: {name} has shape {a[name].shape}, probs {a['probs'].shape}: "
                                 f"{name} must have shape {shape}")
    width = a["contexts"].shape[1] if "contexts" in a else None
    if "contexts" in a and (width < 1 or (n_rows is not None and a["contexts"].shape[0] != n_rows)):
        raise ValueError(f"{where}: contexts has shape {a['contexts'].shape}, probs {a['probs'].shape}: one "
                         "context of at least one token per row")
    expected = _WIDTHS.get(meta.get("kind"))
    if width is not None and expected is not None and width != expected:
        raise ValueError(f"{where}: contexts are {width} tokens wide (n={width + 1}), but the table's kind is "
                         f"{meta.get('kind')!r}, whose contexts are {expected} token(s) wide")
    if width is not None and isinstance(meta.get("context_len"), int) and width != meta["context_len"]:
        raise ValueError(f"{where}: contexts are {width} tokens wide, but the table records context_len="
                         f"{meta['context_len']}")
    if "global_pairs" in a and ("global_probs" in a and a["global_pairs"].shape[0] != a["global_probs"].shape[0]
                                or width is not None and a["global_pairs"].shape[1] != width + 1):
        raise ValueError(f"{where}: global_pairs has shape {a['global_pairs'].shape}; with "
                         f"{a['global_probs'].shape[0] if 'global_probs' in a else 'G'} global entries and contexts "
                         f"{width} wide it must be ({a['global_probs'].shape[0] if 'global_probs' in a else 'G'}, "
                         f"{'n' if width is None else width + 1})")
    for name, low in (("contexts", 0), ("ids", -1), ("global_pairs", 0)):
        if name not in a or a[name].size == 0:
            continue
        out = (a[name] < low) | (a[name] >= vocab_size if vocab_size is not None else False)
        if out.any():
            bad = a[name][out].reshape(-1)[0]
            accepted = f"0..{vocab_size - 1}" if vocab_size is not None else "ids >= 0"
            raise ValueError(f"{where}: {name} holds token id {int(bad)} (at [{_first(out)}]), outside the vocabulary "
                             f"({accepted}{', or -1 for a filtered entry' if name == 'ids' else ''})")
    lse_ok = np.isfinite(a["logsumexp"]) if "logsumexp" in a else None
    for name in ("probs", "global_probs"):
        if name not in a or a[name].size == 0:
            continue
        p = a[name]
        nan = np.isnan(p)
        allowed = np.asarray(~lse_ok[:, None] if name == "probs" and lse_ok is not None
                             and lse_ok.shape == (p.shape[0],) else (lse_ok is not None and not lse_ok.all()), bool)
        if (nan & ~allowed).any():
            raise ValueError(f"{where}: {name} holds {int(nan.sum())} NaN (first at [{_first(nan & ~allowed)}]) in "
                             "rows whose logsumexp is finite: not a table of probabilities")
        out = (p < 0) | (p > 1 + PROB_TOL)    # False where NaN
        if out.any():
            raise ValueError(f"{where}: {name} holds {float(p[out][0]):g} (at [{_first(out)}]), outside [0, 1]: not "
                             "a probability")
        if name == "probs":
            sums = (np.where(nan, 0, p) if nan.any() else p).sum(axis=1, dtype=np.float64)
            if (sums > 1 + PROB_TOL).any():
                r = int(np.argmax(sums > 1 + PROB_TOL))
                raise ValueError(f"{where}: probs of row {r} sum to {sums[r]:.6g}, more than 1: not a table of "
                                 "probabilities")
    if lse_ok is not None and not lse_ok.all() and rows is None:
        import warnings

        warnings.warn(f"{where}: {int((~lse_ok).sum())} of {len(lse_ok)} rows have a non-finite logsumexp (first rows "
                      f"{np.flatnonzero(~lse_ok)[:5].tolist()}): their probabilities mean nothing (a sweep of a model "
                      "with NaN/inf weights writes such rows)", RuntimeWarning, stacklevel=4)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The file gets the mode any new file of this process gets (``0o666`` less the umask), as with
    ``open(path, "wb")``; the data and the rename are flushed to disk before this returns.

    Example:
      >>> import tempfile
      >>> with tempfile.TemporaryDirectory() as d:
      ...     atomic_write_bytes(Path(d) / "x.bin", b"abc")
      ...     (Path(d) / "x.bin").read_bytes(), sorted(p.name for p in Path(d).iterdir())
      (b'abc', ['x.bin'])
    """
    path = Path(path)
    # Not mkstemp: it creates 0600 files. O_EXCL with a unique name is as safe, and the kernel applies the umask.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True, eq=False)
class NGramTable:
    """Next-token distributions of a set of contexts, kept as their top ``k`` entries.

    Attributes:
      contexts: ``int32 [R, n-1]``: the context of each row (bigrams: ``[[0], [1], ..., [V-1]]``).
      probs, ids: ``[R, k]``: the ``k`` most probable next tokens of each row, most probable first.
      logsumexp: ``[R]``: log of the softmax denominator of each row's score (so any next token's
        probability is ``exp(score − logsumexp)``).
      global_probs, global_pairs: the highest-probability ``(context..., next)`` entries over all
        rows: ``[G]`` and ``[G, n]``, most probable first.
      meta: JSON-able settings and provenance (paths, order, model fingerprint, vocab size, ...).
      tokens: optional token strings of the vocabulary (index = id), for decoding and lookup.
      top_k (property): ``k``, how many next tokens each row keeps (an int, as the ``top_k=`` of a sweep).

    :meth:`top` ranks ``(context, next)`` entries over the whole table by probability. A table is
    saved as a directory (:meth:`save`: safetensors + JSON) or as one JSON file (:meth:`to_json`);
    :meth:`load` reads either.

    Example:
      >>> t = NGramTable(contexts=np.arange(3, dtype=np.int32)[:, None],
      ...                probs=np.array([[.75, .25], [.5, .25], [.875, .125]], np.float32),
      ...                ids=np.array([[1, 2], [0, 2], [0, 1]], np.int32),
      ...                logsumexp=np.zeros(3, np.float32), global_probs=np.array([.875, .75], np.float32),
      ...                global_pairs=np.array([[2, 0], [0, 1]], np.int32), meta={}, tokens=["a", "b", "c"])
      >>> t.top(2)
      [(('c',), 'a', 0.875), (('a',), 'b', 0.75)]
      >>> t.lookup("b")
      [('a', 0.5), ('c', 0.25)]
    """

    contexts: np.ndarray
    probs: np.ndarray
    ids: np.ndarray
    logsumexp: np.ndarray
    global_probs: np.ndarray
    global_pairs: np.ndarray
    meta: dict[str, Any]
    tokens: Sequence[str] | None = None

    def __post_init__(self):
        r, k = self.probs.shape
        if self.ids.shape != (r, k) or self.contexts.shape[0] != r or self.logsumexp.shape != (r,):
            raise ValueError(f"inconsistent table arrays: contexts {self.contexts.shape}, probs {self.probs.shape}, "
                             f"ids {self.ids.shape}, logsumexp {self.logsumexp.shape}")

    def __len__(self) -> int:
        return self.probs.shape[0]

    def __repr__(self) -> str:
        return (f"NGramTable(rows={len(self)}, n={self.n}, top_k={self.top_k}, "
                f"paths={self.meta.get('paths')}, order={self.meta.get('order')})")

    def _repr_html_(self) -> str:
        """The top entries as a notebook shows them (:func:`jetjax.html.ngram_html`)."""
        return ngram_html(self)

    @property
    def n(self) -> int:
        """The ``n`` of the n-grams (2 for bigrams)."""
        return self.contexts.shape[1] + 1

    @property
    def top_k(self) -> int:
        return self.probs.shape[1]

    # -- strings ------------------------------------------------------------------------------
    def token(self, i: int) -> str:
        return self.tokens[int(i)] if self.tokens is not None else str(int(i))

    def decode(self, rows: Sequence[int] | None = None) -> list[dict]:
        """Rows as ``{"context": (str, ...), "next": [(str, prob), ...]}``."""
        rows = range(len(self)) if rows is None else rows
        return [{"context": tuple(self.token(t) for t in self.contexts[r]),
                 "next": self._row_entries(r)} for r in rows]

    def _row_entries(self, r: int) -> list[tuple[str, float]]:
        return [(self.token(i), float(p)) for i, p in zip(self.ids[r], self.probs[r]) if i >= 0]

    def top(self, n: int = 20) -> list[tuple[tuple[str, ...], str, float]]:
        """The ``n`` most probable ``(context, next token, prob)`` entries over the whole table."""
        n = check_nonnegative_int("n", n)
        if n > len(self.global_probs):
            raise ValueError(f"top({n}): the table keeps only the global top {len(self.global_probs)} "
                             "(raise global_k when sweeping)")
        return [(tuple(self.token(t) for t in pair[:-1]), self.token(pair[-1]), float(p))
                for pair, p in zip(self.global_pairs[:n], self.global_probs[:n])]

    def table(self, n: int = 20) -> str:
        """A plain-text table of the :meth:`top` ``n`` entries under a header with the settings."""
        n = min(check_nonnegative_int("n", n), len(self.global_probs))
        lines = [f"{len(self)} contexts, n={self.n}, top {self.top_k} next tokens per row "
                 f"(paths {self.meta.get('paths')}, order {self.meta.get('order')})",
                 f"{'prob':>8}  context -> next"]
        return "\n".join(lines + [f"{p:>8.4f}  {' '.join(map(repr, ctx))} -> {nxt!r}" for ctx, nxt, p in self.top(n)])

    def to_dataframe(self):
        """One row per stored entry: ``row, context, rank, next_id, next, prob`` (needs pandas); entries
        :meth:`filter` dropped (id −1) are left out."""
        rows, ranks = np.nonzero(self.ids >= 0)
        return dataframe({"row": rows, "context": [tuple(self.token(t) for t in self.contexts[r]) for r in rows],
                          "rank": ranks + 1, "next_id": self.ids[rows, ranks],
                          "next": [self.token(i) for i in self.ids[rows, ranks]], "prob": self.probs[rows, ranks]})

    def _token_id(self, token) -> int:
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            return int(token)
        if self.tokens is None:
            raise ValueError("this table has no token strings; look up by token id")
        hits = [i for i, s in enumerate(self.tokens) if s == token]
        if len(hits) != 1:
            raise KeyError(f"token string {token!r} matches {len(hits)} vocabulary entries "
                           f"{hits[:10]}; look up by id instead" if hits else
                           f"token string {token!r} is not in the vocabulary (mind the leading space)")
        return hits[0]

    def row_of(self, context) -> int:
        """The row of a context: a token id or string (bigrams) or a sequence of them.

        Raises ``KeyError`` (as a mapping does) naming the context when the table has no such row.
        """
        ctx = [context] if isinstance(context, (str, int, np.integer)) else list(context)
        want = np.asarray([self._token_id(t) for t in ctx], np.int32)
        if want.shape != (self.n - 1,):
            raise ValueError(f"a context of this table has {self.n - 1} token(s), got {list(ctx)!r}")
        hit = np.flatnonzero((self.contexts == want).all(axis=1))
        if hit.size == 0:
            raise KeyError(f"context {list(ctx)!r} is not a row of this table")
        return int(hit[0])

    def lookup(self, context) -> list[tuple[str, float]]:
        """The top next tokens (string, prob) of a context given by token string(s) or id(s).

        Raises ``KeyError`` naming the context when it is not a row (or a string not in the vocabulary).
        """
        return self._row_entries(self.row_of(context))

    def filter(self, rows=None, *, min_prob: float = 0.0) -> "NGramTable":
        """A table of the selected rows (indices or boolean mask); entries below ``min_prob`` get id −1, prob 0.

        Global pairs are kept when their context row is kept and their probability ``>= min_prob``.
        """
        keep = np.arange(len(self)) if rows is None else np.asarray(rows)
        if keep.dtype == bool:
            if keep.shape != (len(self),):
                raise ValueError(f"a boolean row mask needs shape ({len(self)},), got {keep.shape}")
            keep = np.flatnonzero(keep)
        elif keep.dtype == object or not np.issubdtype(keep.dtype, np.integer) or keep.ndim != 1:
            raise TypeError(f"rows must be row indices (1-D ints) or a boolean mask, got {keep.dtype} {keep.shape}")
        elif keep.size and (keep.min() < -len(self) or keep.max() >= len(self)):
            bad = int(keep.max()) if keep.max() >= len(self) else int(keep.min())
            raise IndexError(f"row {bad} is out of range for a table of {len(self)} rows")
        if isinstance(min_prob, bool) or not isinstance(min_prob, (int, float, np.integer, np.floating)) \
                or not np.isfinite(min_prob):
            raise TypeError(f"min_prob must be a finite number, got {min_prob!r}")
        small = self.probs[keep] < min_prob
        kept_ctx = {tuple(c) for c in self.contexts[keep].tolist()}
        g = [i for i, pair in enumerate(self.global_pairs.tolist())
             if tuple(pair[:-1]) in kept_ctx and self.global_probs[i] >= min_prob]
        return dataclasses.replace(
            self, contexts=self.contexts[keep], probs=np.where(small, 0, self.probs[keep]).astype(np.float32),
            ids=np.where(small, -1, self.ids[keep]).astype(np.int32), logsumexp=self.logsumexp[keep],
            global_probs=self.global_probs[g], global_pairs=self.global_pairs[g].reshape(len(g), self.n),
            meta={**self.meta, "filtered": True})

    # -- files --------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        """Write ``table.safetensors`` and ``table.json`` into ``directory`` (each atomically)."""
        from safetensors.numpy import save

        d = Path(directory)
        if d.exists() and not d.is_dir():
            raise FileExistsError(f"{d} is a file; NGramTable.save writes a directory (table.safetensors, table.json)")
        d.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAYS}
        data = save(arrays)
        atomic_write_bytes(d / TABLE_FILE, data)
        # the arrays' file's checksum, verified by load (a flipped bit there is otherwise a valid table)
        doc = {"format": "jetjax.ngram_table/1", "meta": self.meta,
               "tokens": list(self.tokens) if self.tokens is not None else None,
               "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_bytes(d / TABLE_META, json.dumps(doc, ensure_ascii=False).encode())
        return d

    def to_dict(self) -> dict:
        """The table as one JSON-able document: ``table.json``'s fields and every array (exact bytes)."""
        return {"format": "jetjax.ngram_table/1", "meta": self.meta,
                "tokens": list(self.tokens) if self.tokens is not None else None,
                "arrays": {name: encode_array(getattr(self, name)) for name in _ARRAYS}}

    def to_json(self, path=None) -> str:
        """The table as one JSON file (see :meth:`to_dict`), written to ``path`` when given; returned either way.
        :meth:`load` reads it back (as it reads a :meth:`save` directory)."""
        return write_text(json.dumps(self.to_dict(), ensure_ascii=False), path)

    @classmethod
    def from_dict(cls, data: dict) -> "NGramTable":
        data = check_format(data, "jetjax.ngram_table/1", "n-gram table", required=("meta", "arrays"))
        missing = [name for name in _ARRAYS if name not in data["arrays"]]
        if missing:
            raise ValueError(f"the n-gram table JSON misses the arrays {missing}")
        arrays = {name: decode_array(data["arrays"][name]) for name in _ARRAYS}
        check_table_arrays(arrays, data["meta"], data.get("tokens"), "the n-gram table JSON")
        return cls(**arrays, meta=data["meta"], tokens=data.get("tokens"))

    @classmethod
    def from_json(cls, text: str) -> "NGramTable":
        """The table :meth:`to_json` wrote, from its text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, directory) -> "NGramTable":
        """Read a table written by :meth:`save` (or by a completed sweep's ``out_dir``), or a JSON file
        written by :meth:`to_json`.

        Verified on read: ``table.safetensors`` against the sha256 that ``table.json`` records (and,
        in a sweep's directory, both files against ``manifest.json``), then every array's dtype,
        shape, ids and probabilities (:func:`check_table_arrays`); a failure is a ``ValueError``
        naming the file. For a 49152-row, top-10 table (a 4.3 MB file) the sha256 costs 2.4 ms and
        the value checks 1.6 ms, the whole load 5 to 9 ms (measured on a shared 2-core AMD EPYC).
        """
        from safetensors.numpy import load

        d = Path(directory)
        if d.is_file():
            return load_json(cls, d)
        if not (d / TABLE_FILE).is_file() or not (d / TABLE_META).is_file():
            raise FileNotFoundError(f"{d} holds no complete n-gram table ({TABLE_FILE} + {TABLE_META}); "
                                    "an unfinished sweep is resumed by calling the sweep again with this out_dir")
        resume = ("; a sweep's out_dir rebuilds it from its chunks when the sweep is called again"
                  if (d / "manifest.json").is_file() else "")
        try:
            doc = json.loads((d / TABLE_META).read_bytes())
        except ValueError as err:
            raise ValueError(f"{d / TABLE_META} is not valid JSON ({err}){resume}") from None
        if not isinstance(doc, dict) or doc.get("format") != "jetjax.ngram_table/1":
            fmt = doc.get("format") if isinstance(doc, dict) else None
            raise ValueError(f"{d / TABLE_META}: not a jetjax n-gram table (format {fmt!r}){resume}")
        data = (d / TABLE_FILE).read_bytes()
        _verify_checksums(d, data, doc, resume)
        try:
            arrays = load(data)
            missing = [name for name in _ARRAYS if name not in arrays]
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{d / TABLE_FILE} is damaged or truncated ({err}){resume}") from None
        if missing or not isinstance(doc.get("meta"), dict):
            raise ValueError(f"{d}: the table misses {missing or ['meta']}{resume}")
        arrays = {name: arrays[name] for name in _ARRAYS}
        check_table_arrays(arrays, doc["meta"], doc.get("tokens"), str(d / TABLE_FILE))
        return cls(**arrays, meta=doc["meta"], tokens=doc.get("tokens"))


def _verify_checksums(d: Path, data: bytes, doc: dict, resume: str) -> None:
    """``table.safetensors``'s bytes against the sha256 ``table.json`` records, and both files against a
    sweep manifest's record of them; a mismatch names the file."""
    digest = hashlib.sha256(data).hexdigest()
    recorded = {}
    manifest = d / "manifest.json"
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_bytes())
            table = found.get("table") if isinstance(found, dict) and found.get("complete") else None
            recorded = table if isinstance(table, dict) else {}
        except ValueError:
            recorded = {}   # a damaged manifest is the sweep's to repair; table.json's own record still holds
    checks = [(TABLE_FILE, digest, doc.get("sha256"), TABLE_META)]
    if recorded.get(TABLE_FILE) is not None:
        checks.append((TABLE_FILE, digest, recorded[TABLE_FILE], "manifest.json"))
    if recorded.get(TABLE_META) is not None:
        meta_digest = hashlib.sha256((d / TABLE_META).read_bytes()).hexdigest()
        checks.append((TABLE_META, meta_digest, recorded[TABLE_META], "manifest.json"))
    for name, have, want, where in checks:
        if want is not None and have != want:
            raise ValueError(f"{d / name} is damaged or truncated: it does not match the sha256 recorded in {where} "
                             f"({have[:12]}… vs {str(want)[:12]}…), so it changed after it was written{resume}")
