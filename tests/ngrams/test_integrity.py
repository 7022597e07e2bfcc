"""Integrity on read (issue 34): sweep chunks prove which chunk they are, finished tables their checksums,
table files their dtypes, shapes, ids and probabilities; sweeps refuse splits they cannot afford.

The ``integrity``, ``table`` and ``sweep`` cases of ``tools/redteam_compute.py`` must all be "good";
the direct tests below forge damage the way a careful forger would (the manifest's sha256 updated to
match) and check that each is refused naming the file and the chunk, and that a refused call leaves
every file of the directory as it was.
"""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jetjax import ngrams
from jetjax.ngrams.sweep import MAX_CHUNKS, _check_work_size
from jetjax.ngrams.table import check_table_arrays

ROOT = Path(__file__).resolve().parents[2]
_PATH = ROOT / "tools" / "redteam_compute.py"
_spec = importlib.util.spec_from_file_location("jetjax_redteam_compute", _PATH)
redteam = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = redteam
_spec.loader.exec_module(redteam)

CLASSES = ("integrity", "table", "sweep")
CASES = [c for c in redteam.CASES_COMPUTE if redteam.case_class(c.name) in CLASSES]
CHUNKED = redteam.CHUNKED


@pytest.fixture(scope="module")
def ctx():
    c = redteam.ComputeCtx()
    c.warm(CLASSES)      # set-up is not the cases' time
    yield c
    c.close()


def _param(case):
    marks = ()
    if case.name in redteam.KNOWN:
        marks = pytest.mark.xfail(strict=True, reason=redteam.KNOWN[case.name])
    return pytest.param(case, id=case.name, marks=marks)


def test_there_are_many_cases_in_every_class():
    counts = {}
    for c in redteam.CASES_COMPUTE:
        counts[redteam.case_class(c.name)] = counts.get(redteam.case_class(c.name), 0) + 1
    assert set(counts) == {"bounds", "overflow", "integrity", "table", "sweep"} and sum(counts.values()) >= 25
    assert set(redteam.KNOWN) <= {c.name for c in redteam.CASES_COMPUTE}


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_damaged_files_and_costly_settings_are_refused_clearly(ctx, case):
    result = redteam.run_case(case, ctx)
    slow_only = result.outcome == "unclear" and result.why.startswith("raised after")
    assert result.outcome == "good" or slow_only, f"{result.outcome}: {result.why}\n{result.message}"


def _files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def _refused_untouched(ctx, d: Path, *needles):
    before = _files(d)
    with pytest.raises(ValueError) as err:
        ngrams.jet_bigrams(ctx.g, out_dir=d, **CHUNKED)
    for needle in needles:
        assert needle in str(err.value), str(err.value)
    assert _files(d) == before
    return str(err.value)


def test_a_swapped_chunk_is_refused_naming_the_file_and_both_chunks(ctx):
    d = redteam._swap_chunk(ctx, src=2, dst=1)
    msg = _refused_untouched(ctx, d, str(d / "chunk-00001.safetensors"), "chunk 1 of this sweep, rows 5..9",
                             "records itself as chunk 2 (rows 10..14)")
    assert "\n" not in msg


def test_a_tampered_row_range_is_refused_naming_the_file_and_chunk(ctx):
    d = redteam._rewrite_chunk(ctx, redteam._set("rows", [0, 5]), i=1)
    _refused_untouched(ctx, d, "chunk-00001.safetensors", "chunk 1 of this sweep", "records rows [0, 5], not [5, 10]")
    d = redteam._rewrite_chunk(ctx, redteam._drop_rows, i=3)       # the last chunk: rows 15..16
    _refused_untouched(ctx, d, "chunk-00003.safetensors", "probs holds 1 rows, but this chunk covers rows 15..16")


def test_a_chunk_of_another_model_is_refused_naming_the_file(ctx):
    d = redteam._foreign_chunk(ctx, i=0)
    _refused_untouched(ctx, d, "chunk-00000.safetensors", "records another sweep", "model.fingerprint")


def test_chunks_record_their_index_and_rows(ctx):
    for i, (lo, hi) in enumerate([(0, 5), (5, 10), (10, 15), (15, 17)]):
        data = (ctx._chunked / f"chunk-{i:05d}.safetensors").read_bytes()
        n = int.from_bytes(data[:8], "little")
        record = json.loads(json.loads(data[8:8 + n])["__metadata__"][redteam.META_KEY])
        assert record["index"] == i and record["rows"] == [lo, hi]


def test_an_intact_directory_still_resumes_byte_identical(ctx):
    d = ctx.chunked_copy()
    before = _files(d)
    table = ngrams.jet_bigrams(ctx.g, out_dir=d, **CHUNKED)
    assert _files(d) == before and table.probs.shape == (17, 3)


def test_a_flipped_bit_in_a_finished_table_is_refused_naming_the_file(ctx):
    d = redteam._finished_sweep_flipped(ctx)
    flipped = r"table\.safetensors is damaged or truncated: it does not match the sha256 recorded in "
    with pytest.raises(ValueError, match=flipped + r"table\.json"):
        ngrams.NGramTable.load(d)
    # an older table.json without its own record: the manifest's is checked
    doc = json.loads((d / "table.json").read_text())
    del doc["sha256"]
    (d / "table.json").write_text(json.dumps(doc))
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["table"]["table.json"] = hashlib.sha256((d / "table.json").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=flipped + r"manifest\.json"):
        ngrams.NGramTable.load(d)


def test_saved_tables_record_the_sha256_of_their_arrays(ctx):
    d = ctx.saved_table()
    doc = json.loads((d / "table.json").read_text())
    assert doc["sha256"] == hashlib.sha256((d / "table.safetensors").read_bytes()).hexdigest()
    back = ngrams.NGramTable.load(d)
    for name in ("contexts", "probs", "ids", "logsumexp", "global_probs", "global_pairs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ctx.table, name))


def test_table_values_no_sweep_writes_are_refused_by_name():
    ok = {"contexts": np.arange(3, dtype=np.int32)[:, None], "probs": np.array([[.5, .25], [.75, .25], [.5, .5]],
                                                                            np.float32),
          "ids": np.array([[1, 2], [0, 2], [0, 1]], np.int32), "logsumexp": np.zeros(3, np.float32),
          "global_probs": np.array([.75, .5], np.float32), "global_pairs": np.array([[1, 0], [0, 1]], np.int32)}
    meta = {"kind": "bigrams", "model": {"config": {"vocab_size": 3}}}
    check_table_arrays(ok, meta, None, "t")
    bad = [({"probs": np.array([[.5, .6], [.75, .25], [.5, .5]], np.float32)}, "probs of row 0 sum to 1.1"),
           ({"ids": np.array([[1, 3], [0, 2], [0, 1]], np.int32)}, "ids holds token id 3 \\(at \\[0, 1\\]\\)"),
           ({"ids": np.array([[1, -1], [0, 2], [0, 1]], np.int64)}, None),               # a filtered entry
           ({"global_pairs": np.array([[1, 0, 2], [0, 1, 1]], np.int32)}, "global_pairs has shape \\(2, 3\\)"),
           ({"probs": np.array([[np.nan, .25], [.75, .25], [.5, .5]], np.float32)}, "probs holds 1 NaN"),
           ({"logsumexp": np.array([np.nan, 0, 0], np.float32),
             "probs": np.array([[np.nan, np.nan], [.75, .25], [.5, .5]], np.float32)}, "non-finite logsumexp"),
           ({"contexts": np.zeros((3, 2), np.int32)}, "kind is 'bigrams'")]
    for change, match in bad:
        arrays = {**ok, **change}
        if match is None:
            check_table_arrays(arrays, meta, None, "t")
        elif "non-finite" in match:
            with pytest.warns(RuntimeWarning, match=match):
                check_table_arrays(arrays, meta, None, "t")
        else:
            with pytest.raises(ValueError, match=match):
                check_table_arrays(arrays, meta, None, "t")


def test_a_split_into_too_many_chunks_is_refused_at_the_bound():
    s = ngrams.SweepSettings(paths="emb>dec", chunk_rows=1, block_rows=4, vocab_tile=17, top_k=2)
    _check_work_size(s, (MAX_CHUNKS, 1), 8, available=2 ** 40)
    with pytest.raises(ValueError, match=rf"chunk_rows=1 splits the {MAX_CHUNKS + 1} rows into {MAX_CHUNKS + 1} "
                                         r"chunks.*use chunk_rows >= 2"):
        _check_work_size(s, (MAX_CHUNKS + 1, 1), 8, available=2 ** 40)
    # one step: 4 rows x (4 + 4·8 + 12·17 + 16·100) bytes
    _check_work_size(s, (8, 1), 8, available=4 * (4 + 32 + 204 + 1600))
    with pytest.raises(MemoryError, match="block_rows=4 needs about"):
        _check_work_size(s, (8, 1), 8, available=4 * (4 + 32 + 204 + 1600) - 1)
