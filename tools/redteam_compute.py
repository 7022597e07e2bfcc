"""A hostile pass over jetjax's compute side (issue 34): work sized by unbounded numbers, integrity on read.

Classes (the part of a case's name before the ``/``):

* ``bounds``: path counts, ``k`` and ``beam`` that would enumerate ``2^L``..``4^L`` labels or allocate
  far more than the machine holds; each must be refused from a closed-form count before anything is
  built, with the number and the way out (``max_length=``, ``max_paths=``, ``beam=``, the search).
* ``overflow``: score directions that pass a finiteness check in float64 and overflow (or vanish in)
  the float32 the search and the reductions compute in.
* ``integrity``: sweep chunks and finished tables whose bytes were swapped, edited or flipped, with
  the manifest's checksums updated to match (or a saved table without a manifest).
* ``table``: table files with values no sweep writes (NaN, negative or >1 probabilities, ids outside
  the vocabulary, widths that contradict ``n``, wrong dtypes).
* ``sweep``: sweep settings that size the work (``chunk_rows``, ``block_rows``) and comparisons that
  should be refused before any sweep runs.

Outcomes as in ``tools/redteam_api.py`` (good / unclear / bad). ``python tools/redteam_compute.py``
prints the cases that are not good and the counts per class; it runs the cases under an address-space
limit of ``--memory-gb`` (default 1) above what the set-up took, so a case that tries to allocate
without bound fails there (as ``MemoryError``, counted unclear or bad) instead of taking the machine.
``--json`` prints one JSON object per case (the memory test of ``tests/paths/test_bounds.py`` reads it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import resource
import shutil
import sys
import time
import warnings
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_NAME = "jetjax_redteam_api"
if _NAME in sys.modules:
    _api = sys.modules[_NAME]
else:
    _spec = importlib.util.spec_from_file_location(_NAME, _HERE / "redteam_api.py")
    _api = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _api          # dataclasses need the module registered
    _spec.loader.exec_module(_api)

case, Ctx, run_case, built = _api.case, _api.Ctx, _api.run_case, _api.built

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jetjax as jj  # noqa: E402
from jetjax import ngrams  # noqa: E402
from jetjax.models import random_model  # noqa: E402

DEEP_LAYERS = 32
DEEP = dataclasses.replace(_api.GPT2, n_layers=DEEP_LAYERS)   # d_model 8, V=17: tiny but deep
IDS = [2, 3, 4]
CHUNKED = dict(paths="emb>dec", top_k=3, global_k=5, block_rows=4, chunk_rows=5, progress=False)   # 4 chunks
META_KEY = "jetjax.sweep_chunk"

# Closed forms, independent of jetjax's counting code: 2^(L+1) - 1 frozen block paths (2^L from emb,
# 2^L - 1 from the blocks' constants), 2^(2L+1) - 1 frozen branch paths, 2^L / 4^L jet paths.
FROZEN_BLOCK = 2 ** (DEEP_LAYERS + 1) - 1
FROZEN_BRANCH = 2 ** (2 * DEEP_LAYERS + 1) - 1
JET_BLOCK = 2 ** DEEP_LAYERS
JET_BRANCH = 4 ** DEEP_LAYERS


class ComputeCtx(Ctx):
    """:class:`Ctx` plus a deep tiny model and sweep directories of several chunks."""

    @built
    def deep(self):                    # GPT-2, 32 layers, d_model 8, V=17
        return random_model(DEEP, scale=0.3)

    @built
    def _chunked(self) -> Path:
        d = self._tmp / "chunked"
        ngrams.jet_bigrams(self.g, out_dir=d, **CHUNKED)
        return d

    @built
    def _chunked_other(self) -> Path:  # the same settings, another model's weights
        d = self._tmp / "chunked-other"
        ngrams.jet_bigrams(self.g2, out_dir=d, **CHUNKED)
        return d

    def chunked_copy(self) -> Path:
        d = self.tmp() / "sweep"
        shutil.copytree(self._chunked, d)
        return d

    WARM = {"bounds": ("deep", "g"), "overflow": ("deep", "g"),
            "integrity": ("g", "g2", "table", "_chunked", "_chunked_other", "_sweep"), "table": ("g", "table"),
            "sweep": ("g", "l")}

    def warm(self, classes=None) -> None:
        """Build what the cases of ``classes`` (default all) use, so that a memory limit set after this
        sees only the cases' own work."""
        for cls in self.WARM if classes is None else classes:
            for name in self.WARM[cls]:
                getattr(self, name)
        if classes is None or {"bounds", "overflow"} & set(classes):
            self.deep.logits(IDS)


# -- damage, done the way a careful forger would: checksums updated to match ---------------------

def _manifest_resync(d: Path, *indices: int) -> Path:
    manifest = json.loads((d / "manifest.json").read_text())
    import hashlib

    for i in indices:
        entry = manifest["chunks"][str(i)]
        entry["sha256"] = hashlib.sha256((d / entry["file"]).read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return d


def _swap_chunk(c, src: int = 2, dst: int = 1) -> Path:
    d = c.chunked_copy()
    (d / f"chunk-{dst:05d}.safetensors").write_bytes((d / f"chunk-{src:05d}.safetensors").read_bytes())
    return _manifest_resync(d, dst)


def _foreign_chunk(c, i: int = 1) -> Path:
    d = c.chunked_copy()
    name = f"chunk-{i:05d}.safetensors"
    (d / name).write_bytes((c._chunked_other / name).read_bytes())
    return _manifest_resync(d, i)


def _rewrite_chunk(c, edit, i: int = 1) -> Path:
    """Chunk ``i`` rewritten with ``edit(record, arrays)`` applied, its own digest and the manifest updated."""
    from safetensors.numpy import load, save

    from jetjax.ngrams.store import _arrays_digest

    d = c.chunked_copy()
    path = d / f"chunk-{i:05d}.safetensors"
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    record = json.loads(json.loads(data[8:8 + n])["__metadata__"][META_KEY])
    arrays = dict(load(data))
    edit(record, arrays)
    record["data_sha256"] = _arrays_digest(arrays)
    path.write_bytes(save(arrays, metadata={META_KEY: json.dumps(record, sort_keys=True)}))
    return _manifest_resync(d, i)


def _set(key, value):
    def edit(record, arrays):
        record[key] = value
    return edit


def _drop_rows(record, arrays):
    for name in ("probs", "ids", "logsumexp"):
        arrays[name] = arrays[name][:-1].copy()


def _scale_probs(record, arrays):
    arrays["probs"] = (arrays["probs"] * 3).astype(np.float32)


def _flip_bit(path: Path, array: str = "probs") -> Path:
    """Flip the lowest exponent-adjacent bit of the first float of ``array`` (0.2 -> 0.8)."""
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    begin = json.loads(data[8:8 + n])[array]["data_offsets"][0]
    data[8 + n + begin + 3] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def _finished_sweep_flipped(c) -> Path:
    d = c.sweep_copy()
    _flip_bit(d / "table.safetensors")
    return d


def _saved_flipped(c) -> Path:
    d = c.saved_table()
    _flip_bit(d / "table.safetensors")
    return d


def _bad_table(c, as_json: bool = False, meta=None, **arrays) -> Path:
    """``c.table`` with some arrays replaced, written by ``save`` (or ``to_json``) without any check."""
    t = c.table
    t = dataclasses.replace(t, **arrays, meta=t.meta if meta is None else meta)
    if as_json:
        path = c.tmp() / "table.json"
        t.to_json(path)
        return path
    return t.save(c.tmp() / "table")


def _probs_with(c, value, row: int = 3):
    p = np.array(c.table.probs, copy=True)
    p[row, 0] = value
    return p


def _ids_with(c, value, name: str = "ids"):
    a = np.array(getattr(c.table, name), copy=True)
    a[2, 0] = value
    return a


def _diff_before_sweeping(c):
    """bigram_diff of two models of different vocabularies, with any sweep turned into an error."""
    from jetjax.studies import diffing

    saved = ngrams.jet_bigrams

    def no_sweep(*a, **k):
        raise AssertionError("bigram_diff swept a model before comparing the vocabularies")

    ngrams.jet_bigrams = no_sweep
    try:
        return diffing.bigram_diff(c.g, c.l, progress=False)
    finally:
        ngrams.jet_bigrams = saved


V = _api.GPT2.vocab_size
BOUND = (ValueError, MemoryError)

CASES_COMPUTE = [
    # -- bounds: closed-form counts before anything is enumerated ------------------------------
    case("bounds/frozen-attribution-deep", lambda c: jj.frozen_path_attribution(c.deep, IDS, target=5),
         BOUND, (str(FROZEN_BRANCH), "max_length=")),
    case("bounds/frozen-attribution-deep-block",
         lambda c: jj.frozen_path_attribution(c.deep, IDS, target=5, granularity="block"),
         BOUND, (str(FROZEN_BLOCK), "max_length=")),
    case("bounds/frozen-streams-deep", lambda c: jj.frozen_path_streams(c.deep, IDS), BOUND,
         (str(FROZEN_BLOCK), "max_length=")),
    case("bounds/frozen-streams-deep-branch", lambda c: jj.frozen_path_streams(c.deep, IDS, granularity="branch"),
         BOUND, (str(FROZEN_BRANCH), "max_length=")),
    case("bounds/frozen-max_length-beyond-depth",
         lambda c: jj.frozen_path_attribution(c.deep, IDS, target=5, max_length=100), BOUND,
         (str(FROZEN_BRANCH), "max_length=")),
    case("bounds/frozen-max_length-6", lambda c: jj.frozen_path_attribution(c.deep, IDS, target=5, max_length=6),
         BOUND, ("max_length=6", "max_paths=")),
    case("bounds/frozen-max_paths-1", lambda c: jj.frozen_path_streams(c.g, IDS, max_paths=1), BOUND,
         ("max_paths=1", "7")),
    case("bounds/frozen-max_paths-str", lambda c: jj.frozen_path_streams(c.g, IDS, max_paths="all"), ValueError,
         "max_paths"),
    case("bounds/path_attribution-frozen-deep",
         lambda c: jj.path_attribution(c.deep, IDS, target=5, method="frozen"), BOUND,
         (str(FROZEN_BRANCH), "max_length=")),
    case("bounds/expand_all-deep", lambda c: jj.expand_all(c.deep, IDS), BOUND, (str(JET_BLOCK), "max_length=")),
    case("bounds/expand_all-deep-branch", lambda c: jj.expand_all(c.deep, IDS, granularity="branch"), BOUND,
         (str(JET_BRANCH), "max_length=")),
    case("bounds/expand_all-max_paths-1", lambda c: jj.expand_all(c.g, IDS, max_paths=1), BOUND,
         ("max_paths=1", "4")),
    case("bounds/path_streams-deep", lambda c: jj.path_streams(c.deep, IDS), BOUND, (str(JET_BLOCK), "max_length=")),
    case("bounds/expand_all-order-100", lambda c: jj.expand_all(c.g, IDS, order=100), ValueError, "100"),
    case("bounds/reduce_paths-max_paths-huge", lambda c: jj.reduce_paths(c.deep, IDS, max_paths=2 ** 62), BOUND,
         (str(JET_BLOCK), "max_length=")),
    case("bounds/top_paths-k-huge-deep", lambda c: jj.top_paths(c.deep, IDS, 10 ** 9, target=5), BOUND,
         ("k=1000000000", "beam")),
    case("bounds/top_paths-beam-huge-deep", lambda c: jj.top_paths(c.deep, IDS, 5, target=5, beam=10 ** 12), BOUND,
         ("beam=1000000000000",)),
    case("bounds/top_paths-beam-int32-deep", lambda c: jj.top_paths(c.deep, IDS, 5, target=5, beam=2 ** 31), BOUND,
         ("beam=2147483648",)),
    case("bounds/top_paths-beam-numpy-deep", lambda c: jj.top_paths(c.deep, IDS, 5, target=5, beam=np.int64(2 ** 40)),
         BOUND, ("beam=1099511627776",)),
    case("bounds/top_paths-k-huge-tiny", lambda c: jj.top_paths(c.g, IDS, 10 ** 9, target=5), BOUND,
         "k=1000000000", warn="exceeds"),
    case("bounds/search-attribution-k-huge",
         lambda c: jj.path_attribution(c.deep, IDS, target=5, method="search", k=10 ** 8), BOUND,
         ("k=100000000", "beam")),

    # -- overflow: directions finite in float64, not in the float32 they are used in -------------
    case("overflow/search-direction-1e39", lambda c: jj.top_paths(c.g, IDS, 3, score=np.full(V, 1e39)), ValueError,
         ("float32", "1e+39")),
    case("overflow/search-direction-norm", lambda c: jj.top_paths(c.g, IDS, 3, score=np.full(V, 1e30)), ValueError,
         "float32"),
    case("overflow/search-direction-zero", lambda c: jj.top_paths(c.g, IDS, 3, score=np.zeros(V)), ValueError,
         "zero"),
    case("overflow/search-direction-underflow", lambda c: jj.top_paths(c.g, IDS, 3, score=np.full(V, 1e-50)),
         ValueError, ("float32", "zero")),
    case("overflow/reduce-direction-1e39", lambda c: jj.reduce_paths(c.g, IDS, score=np.full(V, 1e39)), ValueError,
         ("float32", "1e+39")),
    case("overflow/search-attribution-direction-big",
         lambda c: jj.top_paths(c.deep, IDS, 3, score=np.full(V, -3e38)), ValueError, "float32"),

    # -- integrity: sweep chunks and finished tables -------------------------------------------
    case("integrity/swapped-chunk", lambda c: ngrams.jet_bigrams(c.g, out_dir=_swap_chunk(c), **CHUNKED), ValueError,
         ("chunk-00001.safetensors", "chunk 2")),
    case("integrity/swapped-chunk-load", lambda c: ngrams.jet_bigrams(c.g, out_dir=_swap_chunk(c, 3, 0), **CHUNKED),
         ValueError, ("chunk-00000.safetensors", "chunk 3")),
    case("integrity/foreign-chunk", lambda c: ngrams.jet_bigrams(c.g, out_dir=_foreign_chunk(c), **CHUNKED),
         ValueError, ("chunk-00001.safetensors", "fingerprint")),
    case("integrity/chunk-index-edited",
         lambda c: ngrams.jet_bigrams(c.g, out_dir=_rewrite_chunk(c, _set("index", 3)), **CHUNKED), ValueError,
         ("chunk-00001.safetensors", "chunk 3")),
    case("integrity/chunk-rows-edited",
         lambda c: ngrams.jet_bigrams(c.g, out_dir=_rewrite_chunk(c, _set("rows", [0, 5])), **CHUNKED), ValueError,
         ("chunk-00001.safetensors", "rows")),
    case("integrity/chunk-row-dropped",
         lambda c: ngrams.jet_bigrams(c.g, out_dir=_rewrite_chunk(c, _drop_rows), **CHUNKED), ValueError,
         ("chunk-00001.safetensors", "rows")),
    case("integrity/chunk-probs-scaled",
         lambda c: ngrams.jet_bigrams(c.g, out_dir=_rewrite_chunk(c, _scale_probs), **CHUNKED), ValueError,
         ("chunk-00001.safetensors", "probs")),
    case("integrity/table-flipped-bit", lambda c: ngrams.NGramTable.load(_finished_sweep_flipped(c)), ValueError,
         ("table.safetensors", "sha256")),
    case("integrity/table-flipped-bit-resume",
         lambda c: ngrams.jet_bigrams(c.g, "emb>dec", top_k=3, global_k=5, progress=False,
                                      out_dir=_finished_sweep_flipped(c)), ValueError, "table.safetensors",
         warn="table.safetensors"),
    case("integrity/saved-table-flipped-bit", lambda c: ngrams.NGramTable.load(_saved_flipped(c)), ValueError,
         ("table.safetensors", "sha256")),

    # -- table: values no sweep writes ---------------------------------------------------------
    case("table/probs-nan", lambda c: ngrams.NGramTable.load(_bad_table(c, probs=_probs_with(c, np.nan))),
         ValueError, ("probs", "NaN")),
    case("table/probs-negative", lambda c: ngrams.NGramTable.load(_bad_table(c, probs=_probs_with(c, -0.25))),
         ValueError, ("probs", "-0.25")),
    case("table/probs-above-one", lambda c: ngrams.NGramTable.load(_bad_table(c, probs=_probs_with(c, 1.5))),
         ValueError, ("probs", "1.5")),
    case("table/probs-nan-json",
         lambda c: ngrams.NGramTable.load(_bad_table(c, as_json=True, probs=_probs_with(c, np.nan))), ValueError,
         ("probs", "NaN")),
    case("table/global-probs-above-one",
         lambda c: ngrams.NGramTable.load(_bad_table(c, global_probs=np.full_like(c.table.global_probs, 2.0))),
         ValueError, ("global_probs", "2")),
    case("table/ids-outside-vocab", lambda c: ngrams.NGramTable.load(_bad_table(c, ids=_ids_with(c, 99))),
         ValueError, ("ids", "99")),
    case("table/ids-negative", lambda c: ngrams.NGramTable.load(_bad_table(c, ids=_ids_with(c, -5))), ValueError,
         ("ids", "-5")),
    case("table/contexts-outside-vocab",
         lambda c: ngrams.NGramTable.load(_bad_table(c, contexts=_ids_with(c, 40, "contexts"))), ValueError,
         ("contexts", "40")),
    case("table/global-pairs-outside-vocab",
         lambda c: ngrams.NGramTable.load(_bad_table(c, global_pairs=_ids_with(c, 17, "global_pairs"))), ValueError,
         ("global_pairs", "17")),
    case("table/global-pairs-width",
         lambda c: ngrams.NGramTable.load(_bad_table(c, global_pairs=np.zeros((5, 3), np.int32))), ValueError,
         ("global_pairs", "(5, 3)")),
    case("table/contexts-width-vs-kind",
         lambda c: ngrams.NGramTable.load(_bad_table(c, contexts=np.zeros((V, 2), np.int32),
                                                     global_pairs=np.zeros((5, 3), np.int32))), ValueError,
         ("contexts", "bigrams")),
    case("table/probs-int-dtype",
         lambda c: ngrams.NGramTable.load(_bad_table(c, probs=np.zeros(c.table.probs.shape, np.int32))), ValueError,
         ("probs", "int32")),
    case("table/ids-float-dtype",
         lambda c: ngrams.NGramTable.load(_bad_table(c, ids=c.table.ids.astype(np.float32))), ValueError,
         ("ids", "float32")),
    case("table/logsumexp-inf", lambda c: ngrams.NGramTable.load(_bad_table(
        c, logsumexp=np.where(np.arange(V) == 4, np.inf, c.table.logsumexp).astype(np.float32))), ValueError,
         ("logsumexp", "inf"), warn="non-finite"),
    case("table/logsumexp-wrong-length",
         lambda c: ngrams.NGramTable.load(_bad_table(c, logsumexp=np.zeros(V + 1, np.float32))), ValueError,
         "logsumexp"),

    # -- sweep: settings that size the work; comparisons refused before sweeping -----------------
    case("sweep/chunk_rows-1-many-rows",
         lambda c: ngrams.sweep_contexts(c.g, (np.arange(6000) % V)[:, None], "emb>dec", top_k=2, chunk_rows=1,
                                         progress=False, out_dir=c.tmp() / "sweep"), ValueError,
         ("chunk_rows=1", "6000")),
    case("sweep/chunk_rows-1-many-rows-no-dir",
         lambda c: ngrams.sweep_contexts(c.g, (np.arange(6000) % V)[:, None], "emb>dec", top_k=2, chunk_rows=1,
                                         progress=False), ValueError, ("chunk_rows=1", "6000")),
    case("sweep/block_rows-huge", lambda c: ngrams.jet_bigrams(c.g, block_rows=10 ** 9, progress=False), BOUND,
         "block_rows=1000000000"),
    case("sweep/block_rows-2^40", lambda c: ngrams.jet_bigrams(c.g, block_rows=2 ** 40, progress=False), BOUND,
         "block_rows=1099511627776"),
    case("sweep/order-100", lambda c: ngrams.jet_bigrams(c.g, order=100, progress=False), ValueError, "100"),
    case("sweep/bigram_diff-vocabularies-first", _diff_before_sweeping, ValueError, ("17", "13")),
]

_names = [c.name for c in CASES_COMPUTE]
assert len(set(_names)) == len(_names), sorted({n for n in _names if _names.count(n) > 1})

# Cases not "good" today because the fix lies outside this tool's owners' files (the test marks them
# strict xfail): name -> what is missing.
KNOWN: dict[str, str] = {}


def case_class(name: str) -> str:
    return name.split("/", 1)[0]


def limit_memory(extra_bytes: int) -> int:
    """Cap this process's address space at its current size plus ``extra_bytes``; returns the cap."""
    size = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = size + int(extra_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return cap


def _row(r) -> dict:
    return {"name": r.case.name, "outcome": r.outcome, "why": r.why, "seconds": r.seconds, "message": r.message[:400]}


def _isolated(name: str, memory_gb: float) -> dict:
    """One case in a fresh process under the memory limit; a crash (LLVM or XLA aborting when the
    address space runs out) or a timeout is a bad outcome."""
    import subprocess

    cmd = [sys.executable, __file__, "--name", name, "--json", "--memory-gb", str(memory_gb)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return {"name": name, "outcome": "bad", "why": "process hung (> 300 s)", "seconds": 300.0, "message": ""}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    tail = " ".join(out.stderr.strip().splitlines()[-2:])
    return {"name": name, "outcome": "bad", "why": f"the process died (exit {out.returncode})", "seconds": 0.0,
            "message": tail[-300:]}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--all", action="store_true", help="list good cases too")
    parser.add_argument("--memory-gb", type=float, default=1.0,
                        help="address space the cases may add to the set-up's (0: no limit)")
    parser.add_argument("--json", action="store_true", help="one JSON object per case")
    parser.add_argument("--name", default=None, help="only the case of exactly this name")
    parser.add_argument("--isolate", action="store_true",
                        help="each case in its own process (a case that crashes the process counts as bad)")
    args = parser.parse_args(argv)
    jax.config.update("jax_numpy_dtype_promotion", "strict")   # as the test suite runs
    warnings.simplefilter("ignore")
    cases = [c for c in CASES_COMPUTE if args.k in c.name and args.name in (None, c.name)]
    t0 = time.perf_counter()
    if args.isolate:
        rows = [_isolated(c.name, args.memory_gb) for c in cases]
    else:
        ctx = ComputeCtx()
        try:
            ctx.warm({case_class(c.name) for c in cases})
            if args.memory_gb > 0:
                limit_memory(args.memory_gb * 2 ** 30)
            t0 = time.perf_counter()
            rows = [_row(run_case(c, ctx)) for c in cases]
        finally:
            ctx.close()
    counts: dict[str, dict[str, int]] = {}
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        per = counts.setdefault(case_class(r["name"]), {"good": 0, "unclear": 0, "bad": 0})
        per[r["outcome"]] += 1
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["outcome"] != "good" or args.all:
            print(f"{r['name']:<{width}}  {r['outcome']:<7}  {r['seconds']:5.1f}s  {_api._one_line(r['why'], 60)}")
            print(f"{'':<{width}}  {'':<7}          {_api._one_line(r['message'], 160)}")
    if not args.json:
        print(f"\n{len(rows)} cases in {time.perf_counter() - t0:.0f} s"
              + (f" (address space limited to the set-up's + {args.memory_gb:g} GB)" if args.memory_gb > 0 else ""))
        print(f"{'class':<10} {'good':>5} {'unclear':>8} {'bad':>5}")
        for name, per in counts.items():
            print(f"{name:<10} {per['good']:>5} {per['unclear']:>8} {per['bad']:>5}")
        total = {k: sum(p[k] for p in counts.values()) for k in ("good", "unclear", "bad")}
        print(f"{'all':<10} {total['good']:>5} {total['unclear']:>8} {total['bad']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
