"""The directory of a resumable sweep: locked, checksummed, self-describing, repaired chunk by chunk.

A sweep with ``out_dir`` writes there:

* ``.sweep.lock``: an exclusive, non-blocking ``fcntl.flock`` held for the whole call, so a second
  sweep into the same directory is refused at once (:class:`SweepLockedError`) instead of both
  overwriting each other's chunks. The file stays (removing it would let two writers lock two
  different files); the lock dies with its process, so a killed sweep never leaves it held.
* ``chunk-NNNNN.safetensors``: the rows of one chunk. Each carries, in its safetensors metadata,
  the sweep's header (model fingerprint and settings), its index and a checksum of its arrays, so a
  chunk says by itself which sweep it belongs to and whether it is intact.
* ``manifest.json``: the header, each finished chunk's file and sha256, ``complete``, and at the
  end the sha256 of ``table.safetensors`` and ``table.json``.

Every file is written whole or not at all (temp file, fsync, ``os.replace``) with the process umask.

When a call starts it checks what is there before computing anything:

* every recorded chunk is read and its sha256 compared with the manifest: missing or damaged
  chunks are dropped from it, named in a warning, and recomputed, alone;
* a complete table whose files are missing or fail their checksum is named in a warning and
  rebuilt from the chunks;
* a ``manifest.json`` that is not a JSON object of this format is named; if every chunk there
  describes itself as part of this very sweep (same model and settings) the manifest is rebuilt
  from the intact ones, and if any file says it belongs to another sweep the call is refused,
  naming it and the differences (rerun with those settings, or choose another ``out_dir``).

Nothing here ever deletes a file or advises deleting the directory: a damaged file is worthless
and is overwritten by its recomputation; every other file is either proven part of this sweep
or left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np

from jetjax.ngrams.table import TABLE_FILE, TABLE_META, NGramTable, atomic_write_bytes, check_table_arrays

try:  # POSIX; elsewhere the directory is not locked (and a warning says so)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["ChunkStore", "SweepLockedError", "MANIFEST", "LOCK_FILE", "FORMAT", "chunk_name", "header_differences"]

MANIFEST = "manifest.json"
LOCK_FILE = ".sweep.lock"
FORMAT = "jetjax.ngram_sweep/2"
_OLD_FORMATS = ("jetjax.ngram_sweep/1",)
_CHUNK_RE = re.compile(r"chunk-([0-9]{5,})\.safetensors")
_META_KEY = "jetjax.sweep_chunk"  # one metadata key: safetensors writes several in random order
_ROUNDING = ("block_rows", "vocab_tile", "devices")


class SweepLockedError(RuntimeError):
    """Another sweep holds the output directory's lock."""


def chunk_name(i: int) -> str:
    """The file name of chunk ``i``: ``chunk-00003.safetensors``."""
    return f"chunk-{i:05d}.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _arrays_digest(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def header_differences(mine: dict, theirs: dict) -> list[str]:
    """``part.key: theirs there, mine now`` for every model / settings value that differs."""
    diffs = []
    for part in ("model", "settings"):
        a = mine.get(part, {})
        b = theirs.get(part, {}) if isinstance(theirs.get(part), dict) else {}
        diffs += [f"{part}.{k}: {b.get(k)!r} there, {a.get(k)!r} now"
                  for k in sorted(set(a) | set(b)) if k != "source" and a.get(k) != b.get(k)]
    return diffs


def _difference_message(diffs: list[str]) -> str:
    text = "Differences: " + "; ".join(diffs)
    if any(d.split(":")[0] in {f"settings.{k}" for k in _ROUNDING} for d in diffs):
        text += (" (block_rows, vocab_tile and the number of devices change float rounding, so a sweep is resumed "
                 "with the values it started with; block_rows is recorded rounded up to a multiple of the "
                 "device count and vocab_tile capped at the vocabulary size; a directory started before the default tile "
                 "was fitted to the vocabulary recorded vocab_tile=4096)")
    if any(d.startswith("settings.tile_reduce:") for d in diffs):
        text += (" (tile_reduce is how the tiles were computed, which changes float rounding: 'fused' = jetjax's CPU "
                 "kernel forms and reduces the logits, 'kernel' = XLA's GEMM and the kernel's reduction, "
                 "absent = XLA alone; the environment variable JETJAX_TILE_REDUCE=auto, reduce or xla selects them "
                 "on CPU; a float32 directory started before the fused kernel, or a bfloat16 one started before its "
                 "AMX kernel, recorded 'kernel': resume it with JETJAX_TILE_REDUCE=reduce)")
    return text


def _chunk_record(data: bytes) -> tuple[dict | None, dict | None]:
    """``(self-description, arrays)`` of a chunk file's bytes; ``(None, None)`` when it is damaged."""
    from safetensors.numpy import load

    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        record = json.loads(meta[_META_KEY])
        arrays = load(data)
    except Exception:  # any damage: truncated, flipped, not a safetensors file at all
        return None, None
    if not isinstance(record, dict) or record.get("data_sha256") != _arrays_digest(arrays):
        return None, None
    return record, arrays


class ChunkStore:
    """The chunks of one sweep, in ``out_dir`` (locked while the store is open) or in memory.

    Use as a context manager: entering takes the lock and checks the directory (see the module
    docstring); leaving releases the lock.
    """

    def __init__(self, out_dir, header: dict, n_chunks: int):
        self.header, self.n_chunks = header, n_chunks
        self.memory: dict[int, dict] = {}
        self.chunks: dict[str, dict] = {}
        self.table: dict[str, str] = {}
        self.complete = False
        self.dir = None if out_dir is None else Path(out_dir)
        self._lock_fd = None

    # -- opening ----------------------------------------------------------------------------
    def __enter__(self) -> "ChunkStore":
        if self.dir is None:
            return self
        d = self.dir
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"out_dir {d} is a file; a resumable sweep writes a directory (choose a new or "
                                     "empty directory path)")
        if d.is_dir() and not (d / LOCK_FILE).exists() and any(d.iterdir()):
            # Every sweep creates its lock file first, so this directory was not made by one (or by an
            # earlier jetjax): say what it holds without creating anything in it.
            found, problem = self._read_manifest(d / MANIFEST)
            if found is None:
                what = "holds no sweep manifest" if problem is None else f"holds a {MANIFEST} that {problem}"
                raise FileExistsError(f"{d} is not empty and {what}; refusing to write into it (choose an empty "
                                      "or new directory)")
        d.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(f"cannot lock {self.dir} on this platform: do not run two sweeps into it at once",
                          stacklevel=4)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SweepLockedError(f"another sweep is writing into {self.dir} (it holds the lock {path}); "
                                       "refusing to start a second one there: wait for it to finish, or choose "
                                       "another out_dir") from None
        self._lock_fd = fd

    def _open(self) -> None:
        manifest = self.dir / MANIFEST
        found, problem = self._read_manifest(manifest)
        if found is None:
            self._recover(manifest, problem)
            return
        diffs = header_differences(self.header, found)
        if diffs:
            raise ValueError(f"{self.dir} holds a table of a different model or settings; refusing to overwrite "
                             f"it (use another out_dir). {_difference_message(diffs)}")
        self.chunks, self.complete = dict(found["chunks"]), bool(found.get("complete"))
        self.table = dict(found.get("table") or {})
        self._verify_chunks()

    def _read_manifest(self, manifest: Path) -> tuple[dict | None, str | None]:
        """The manifest as a dict, or ``(None, why not)`` when it is missing or damaged."""
        if not manifest.exists():
            return None, None
        try:
            found = json.loads(manifest.read_bytes())
        except (ValueError, OSError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return None, f"is not valid JSON ({err})"
        if not isinstance(found, dict):
            return None, f"holds a JSON {type(found).__name__}, not an object"
        fmt = found.get("format")
        if fmt in _OLD_FORMATS:
            raise ValueError(f"{manifest} was written by an earlier jetjax ({fmt}), which did not record the "
                             "settings that change float rounding (block_rows, vocab_tile); its chunks cannot be "
                             "resumed safely. A complete table there still loads with "
                             f"NGramTable.load({str(self.dir)!r}); for a new sweep choose another out_dir")
        if fmt != FORMAT:
            raise ValueError(f"{manifest} is not a jetjax sweep manifest (format {fmt!r}, expected {FORMAT!r}); "
                             f"refusing to touch {self.dir}")
        chunks = found.get("chunks")
        if not isinstance(chunks, dict) or not all(
                isinstance(k, str) and k.isdigit() and isinstance(e, dict) and isinstance(e.get("file"), str)
                and isinstance(e.get("sha256"), str) for k, e in chunks.items()):
            return None, "has a damaged 'chunks' record"
        if not isinstance(found.get("table", {}), dict):
            return None, "has a damaged 'table' record"
        return found, None

    def rows(self, i: int) -> tuple[int, int] | None:
        """The rows ``[lo, hi)`` chunk ``i`` holds, from the header's ``n_rows`` and ``chunk_rows``."""
        s = self.header.get("settings", {})
        if not isinstance(s.get("n_rows"), int) or not isinstance(s.get("chunk_rows"), int):
            return None
        lo = i * s["chunk_rows"]
        return lo, min(lo + s["chunk_rows"], s["n_rows"])

    def _check_chunk(self, i: int, path: Path, data: bytes) -> dict | None:
        """Chunk ``i``'s arrays, ``None`` when its bytes are damaged (they fail their own digest); a
        ``ValueError`` naming the file when they are intact but are not chunk ``i`` of this sweep.

        A chunk's record names its sweep (the header), its index and its rows; its arrays must have
        those rows and hold probabilities and ids a sweep writes. Both checksums pass on such a file, so
        it was copied or edited, not damaged: it is refused rather than overwritten."""
        record, arrays = _chunk_record(data)
        if record is None:
            return None
        rows = self.rows(i)
        where = f"{path} (chunk {i} of this sweep{'' if rows is None else f', rows {rows[0]}..{rows[1] - 1}'})"
        way_out = ("its checksums match, so it was copied or edited rather than damaged: restore this chunk's own "
                   "file, or choose another out_dir")
        if record.get("header") != self.header:
            diffs = header_differences(self.header, record.get("header") or {})
            raise ValueError(f"{where} records another sweep: {_difference_message(diffs)}; {way_out}")
        if record.get("index") != i:
            theirs = self.rows(record["index"]) if isinstance(record.get("index"), int) else None
            span = "" if theirs is None else f" (rows {theirs[0]}..{theirs[1] - 1})"
            raise ValueError(f"{where} records itself as chunk {record.get('index')!r}{span}: its bytes come from "
                             f"another chunk; {way_out}")
        if "rows" in record and rows is not None and list(record["rows"]) != list(rows):
            raise ValueError(f"{where} records rows {record['rows']!r}, not {list(rows)}; {way_out}")
        s = self.header.get("settings", {})
        try:
            check_table_arrays(arrays, s, None, where, rows=rows, top_k=s.get("top_k"),
                               vocab_size=self.header.get("model", {}).get("config", {}).get("vocab_size"))
        except ValueError as err:
            raise ValueError(f"{err}; {way_out}") from None
        return arrays

    def _verify_chunks(self) -> None:
        bad = []
        for key, entry in sorted(self.chunks.items(), key=lambda kv: int(kv[0])):
            path = self.dir / entry["file"]
            if int(key) >= self.n_chunks or entry["file"] != chunk_name(int(key)):
                why = "is not a chunk of this sweep's layout"
            elif not path.is_file():
                why = "is missing"
            elif _sha256(data := path.read_bytes()) != entry["sha256"]:
                why = "does not match its checksum in the manifest"
            elif self._check_chunk(int(key), path, data) is None:
                why = "fails its own checksum"
            else:
                continue
            bad.append(f"{entry['file']} ({why})")
            del self.chunks[key]
        if bad:
            warnings.warn(f"{self.dir}: {len(bad)} recorded chunk(s) are damaged or missing and will be recomputed, "
                          f"alone: {', '.join(bad)}", stacklevel=4)
            self.complete = False
            self._write_manifest()

    def _recover(self, manifest: Path, problem: str | None) -> None:
        """No usable manifest: keep the chunks that prove they are this sweep's; refuse if any is another's."""
        strangers, foreign, damaged, adopted = [], [], [], {}
        for path in sorted(self.dir.iterdir()):
            name = path.name
            if name in (LOCK_FILE, MANIFEST, TABLE_FILE) or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if name == TABLE_META:
                try:
                    meta = json.loads(path.read_bytes())["meta"]
                    theirs = {"model": meta["model"], "settings": {k: v for k, v in meta.items() if k != "model"}}
                except Exception:
                    continue  # damaged: rebuilt from the chunks
                if header_differences(self.header, theirs):
                    foreign.append((name, header_differences(self.header, theirs)))
                continue
            match = _CHUNK_RE.fullmatch(name)
            if match is None or not path.is_file():
                strangers.append(name)
                continue
            data = path.read_bytes()
            record, _ = _chunk_record(data)
            if record is None:
                damaged.append(name)
            elif record.get("header") != self.header:
                foreign.append((name, header_differences(self.header, record.get("header") or {})))
            elif record.get("index") == int(match.group(1)) < self.n_chunks:
                self._check_chunk(record["index"], path, data)   # its rows and values too, or refused by name
                adopted[str(record["index"])] = {"file": name, "sha256": _sha256(data)}
            else:
                damaged.append(name)
        where = f"{manifest} {problem}" if problem else f"{self.dir} has no {MANIFEST}"
        if strangers:
            raise FileExistsError(f"{where}, and {self.dir} holds files that are not part of a sweep "
                                  f"({', '.join(strangers[:10])}); refusing to write into it (choose an empty or "
                                  "new directory)")
        if foreign:
            name, diffs = foreign[0]
            raise ValueError(f"{where}; {self.dir / name} there was written by a sweep of a different model or "
                             f"settings, so it is not overwritten: rerun with that model and those settings to "
                             f"resume that sweep (its chunks are kept), or choose another out_dir. "
                             f"{_difference_message(diffs)}")
        if problem:
            warnings.warn(f"{where}; rebuilt it from the {len(adopted)} intact chunk(s) there, each of which records "
                          "this sweep's model and settings in its own metadata"
                          + (f"; recomputing the damaged {', '.join(damaged)}" if damaged else ""), stacklevel=4)
        elif damaged:
            warnings.warn(f"{self.dir}: recomputing the damaged {', '.join(damaged)}", stacklevel=4)
        self.chunks, self.complete, self.table = adopted, False, {}
        self._write_manifest()

    # -- chunks -----------------------------------------------------------------------------
    def is_done(self, i: int) -> bool:
        return i in self.memory or str(i) in self.chunks

    def write(self, i: int, arrays: dict) -> None:
        if self.dir is None:
            self.memory[i] = arrays
            return
        from safetensors.numpy import save

        record = {"header": self.header, "index": i, "data_sha256": _arrays_digest(arrays)}
        if self.rows(i) is not None:
            record["rows"] = list(self.rows(i))
        data = save(arrays, metadata={_META_KEY: json.dumps(record, sort_keys=True)})
        atomic_write_bytes(self.dir / chunk_name(i), data)
        self.chunks[str(i)] = {"file": chunk_name(i), "sha256": _sha256(data)}
        self._write_manifest()

    def read(self, i: int) -> dict:
        if self.dir is None:
            return self.memory[i]
        entry = self.chunks[str(i)]
        data = (self.dir / entry["file"]).read_bytes()
        arrays = self._check_chunk(i, self.dir / entry["file"], data) if _sha256(data) == entry["sha256"] else None
        if arrays is None:
            raise ValueError(f"{self.dir / entry['file']} changed while this sweep ran (it no longer matches its "
                             "checksum in the manifest); call the sweep again with the same out_dir: it recomputes "
                             "only the chunks that fail their checksum")
        return arrays

    def _write_manifest(self) -> None:
        chunks = dict(sorted(self.chunks.items(), key=lambda kv: int(kv[0])))  # the same bytes however it got here
        doc = {**self.header, "chunks": chunks, "complete": self.complete, "table": self.table}
        atomic_write_bytes(self.dir / MANIFEST, json.dumps(doc, indent=1).encode())

    # -- the table ----------------------------------------------------------------------------
    def complete_table(self) -> NGramTable | None:
        """The finished table, when the manifest says so and both its files pass their checksums."""
        if self.dir is None or not self.complete:
            return None
        for name in (TABLE_FILE, TABLE_META):
            path = self.dir / name
            if not path.is_file():
                why = "is missing"
            elif _sha256(path.read_bytes()) != self.table.get(name):
                why = "is damaged (it does not match its checksum in the manifest)"
            else:
                continue
            warnings.warn(f"{path} {why}; rebuilding the table from the chunks", stacklevel=4)
            self.complete = False
            return None
        return NGramTable.load(self.dir)

    def finish(self, table: NGramTable) -> None:
        if self.dir is None:
            return
        table.save(self.dir)
        self.table = {name: _sha256((self.dir / name).read_bytes()) for name in (TABLE_FILE, TABLE_META)}
        self.complete = True
        self._write_manifest()
