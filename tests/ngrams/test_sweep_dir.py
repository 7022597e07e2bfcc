"""Sweep directories and sweep settings: one writer at a time, damage found at the start and repaired
chunk by chunk, files with the umask, rounding knobs recorded; settings checked before they are keyed;
counts, path spellings, keyword files and vocabularies refused with errors that name them."""

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jetjax._internal import compiled as _compiled
from jetjax.models import ModelConfig, random_model
from jetjax.ngrams import (NGramTable, SweepLockedError, SweepSettings, bigram_candidates, check_paths, diff_tables,
                           jet_bigrams, keyword_mass, read_keywords, sweep_contexts)
from jetjax.ngrams.settings import resolve_settings
from jetjax.ngrams.store import LOCK_FILE
from jetjax.ngrams.table import atomic_write_bytes

OPTS = dict(paths=["emb>dec", "emb>mlp1>dec"], top_k=3, global_k=6, block_rows=4, chunk_rows=7, progress=False)
N_CHUNKS = 5  # 29 rows / 7 per chunk


def _tiny(seed=0, vocab=29):
    cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=12, n_heads=2, d_head=6, d_mlp=19, vocab_size=vocab,
                      n_positions=5, norm_eps=1e-5, activation="gelu_new")
    return random_model(cfg, seed=seed, scale=0.5)


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory):
    """An uninterrupted sweep: its directory's files and its table."""
    out = tmp_path_factory.mktemp("reference") / "sweep"
    table = jet_bigrams(model, out_dir=out, **OPTS)
    return _snapshot(out), table


def _snapshot(directory):
    return {f.name: f.read_bytes() for f in sorted(directory.iterdir())}


def _same_table(a: NGramTable, b: NGramTable):
    for name in ("contexts", "probs", "ids", "logsumexp", "global_probs", "global_pairs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta and a.tokens == b.tokens


def _rerun(model, out, **extra):
    """Sweep again into ``out``; returns the table and the chunks computed (via the callback)."""
    seen = []
    table = jet_bigrams(model, out_dir=out, callback=lambda i, n: seen.append(i), **{**OPTS, **extra})
    return table, seen


def _copy_of(reference, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    for name, data in reference[0].items():
        (out / name).write_bytes(data)
    return out


class _Stop(Exception):
    pass


def _stop_after(k):
    def callback(i, n):
        if i == k:
            raise _Stop
    return callback


# ---- one writer at a time ---------------------------------------------------------------------

def test_a_second_writer_is_refused_at_once_and_the_first_finishes_intact(model, reference, tmp_path):
    out = tmp_path / "shared"
    started, tried = threading.Event(), threading.Event()
    result = {}

    def first_writer():
        def callback(i, n):
            if i == 0:
                started.set()
                tried.wait(120)   # hold the directory until the second writer has been answered
        try:
            result["table"] = jet_bigrams(model, out_dir=out, callback=callback, **OPTS)
        except BaseException as err:  # reported by the main thread
            result["error"] = err
            started.set()

    thread = threading.Thread(target=first_writer)
    thread.start()
    try:
        assert started.wait(120) and "error" not in result
        t0 = time.perf_counter()
        with pytest.raises(SweepLockedError, match=rf"another sweep is writing into {out}.*{LOCK_FILE}"):
            jet_bigrams(model, out_dir=out, **{**OPTS, "top_k": 4})  # other settings: it would overwrite chunks
        assert time.perf_counter() - t0 < 10   # refused at once, not after a sweep of its own
    finally:
        tried.set()
        thread.join(300)
    assert "error" not in result, result.get("error")
    assert _snapshot(out) == reference[0]      # the first writer's files: byte for byte an uninterrupted run's
    _same_table(result["table"], reference[1])
    _same_table(jet_bigrams(model, out_dir=out, **OPTS), reference[1])  # and the lock was released


def test_a_lock_held_by_another_process_refuses_and_dies_with_it(model, reference, tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(out / LOCK_FILE)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SweepLockedError, match="refusing to start a second one there"):
            jet_bigrams(model, out_dir=out, **OPTS)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    table, seen = _rerun(model, out)  # a killed holder leaves no stale lock
    assert seen == list(range(N_CHUNKS)) and _snapshot(out) == reference[0]
    _same_table(table, reference[1])


# ---- damage found when a sweep starts, repaired chunk by chunk --------------------------------

def test_a_byte_flipped_chunk_alone_is_recomputed(model, reference, tmp_path):
    out = _copy_of(reference, tmp_path)
    data = bytearray((out / "chunk-00002.safetensors").read_bytes())
    data[-5] ^= 0x40
    (out / "chunk-00002.safetensors").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"chunk-00002\.safetensors \(does not match its checksum in the manifest\)"):
        table, seen = _rerun(model, out)
    assert seen == [2]
    assert _snapshot(out) == reference[0]
    _same_table(table, reference[1])


def test_a_deleted_chunk_alone_is_recomputed_even_in_an_unfinished_sweep(model, reference, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(_Stop):
        jet_bigrams(model, out_dir=out, callback=_stop_after(2), **OPTS)
    (out / "chunk-00001.safetensors").unlink()
    with pytest.warns(UserWarning, match=r"1 recorded chunk\(s\) .* recomputed, alone: chunk-00001\.safetensors "
                                         r"\(is missing\)"):
        table, seen = _rerun(model, out)
    assert seen == [1, 3, 4]
    assert _snapshot(out) == reference[0]
    _same_table(table, reference[1])


def test_a_chunk_damaged_during_the_run_is_named_and_the_next_call_repairs_it(model, reference, tmp_path):
    out = tmp_path / "sweep"

    def damage_chunk_0(i, n):
        if i == 3:
            (out / "chunk-00000.safetensors").write_bytes(b"overwritten by someone")
    with pytest.raises(ValueError, match=r"chunk-00000\.safetensors changed while this sweep ran .* recomputes only "
                                         "the chunks that fail their checksum"):
        jet_bigrams(model, out_dir=out, callback=damage_chunk_0, **OPTS)
    with pytest.warns(UserWarning, match=r"chunk-00000\.safetensors \(does not match its checksum"):
        table, seen = _rerun(model, out)
    assert seen == [0] and _snapshot(out) == reference[0]
    _same_table(table, reference[1])


@pytest.mark.parametrize("broken,why", [
    (b'{"format": "jetjax.ngram_sweep/2", "chun', r"is not valid JSON \(.*\)"),
    (b"[1, 2]", r"holds a JSON list, not an object"),
    (b"\xff\xfe\x00", r"is not valid JSON \(.*codec can.t decode.*\)"),
    (b'{"format": "jetjax.ngram_sweep/2", "chunks": [1]}', r"has a damaged 'chunks' record"),
])
def test_a_broken_manifest_is_named_and_rebuilt_from_the_chunks(model, reference, tmp_path, broken, why):
    out = _copy_of(reference, tmp_path)
    (out / "manifest.json").write_bytes(broken)
    with pytest.warns(UserWarning, match=rf"{out / 'manifest.json'} {why}; rebuilt it from the {N_CHUNKS} intact "
                                         "chunk"):
        table, seen = _rerun(model, out)
    assert seen == []                            # every chunk proved itself part of this sweep
    assert _snapshot(out) == reference[0]
    _same_table(table, reference[1])


def test_a_broken_manifest_with_a_damaged_chunk_recomputes_that_chunk(model, reference, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(_Stop):
        jet_bigrams(model, out_dir=out, callback=_stop_after(2), **OPTS)
    (out / "manifest.json").write_text("{")
    (out / "chunk-00000.safetensors").write_bytes((out / "chunk-00000.safetensors").read_bytes()[:-9])  # truncated
    with pytest.warns(UserWarning, match=r"rebuilt it from the 2 intact chunk\(s\) .* recomputing the damaged "
                                         r"chunk-00000\.safetensors"):
        table, seen = _rerun(model, out)
    assert seen == [0, 3, 4]
    assert _snapshot(out) == reference[0]
    _same_table(table, reference[1])


def test_a_broken_manifest_next_to_another_sweeps_chunks_is_refused_untouched(model, tmp_path):
    out = tmp_path / "sweep"
    jet_bigrams(model, out_dir=out, **{**OPTS, "top_k": 4})
    (out / "manifest.json").write_text("not json")
    before = _snapshot(out)
    with pytest.raises(ValueError, match=rf"{out / 'manifest.json'} is not valid JSON .*; {out}/chunk-00000\."
                                         r"safetensors there was written by a sweep of a different model or settings"
                                         r".*rerun with that model and those settings .* settings\.top_k: 4 there, "
                                         r"3 now"):
        jet_bigrams(model, out_dir=out, **OPTS)
    assert _snapshot(out) == before
    # a stranger's file next to a missing manifest is never written over either
    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_FILE).write_bytes(b"")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"has no manifest\.json, and .* holds files that are not part of a "
                                              r"sweep \(notes\.txt\)"):
        jet_bigrams(model, out_dir=other, **OPTS)
    assert _snapshot(other) == {LOCK_FILE: b"", "notes.txt": b"mine"}


@pytest.mark.parametrize("name,damage", [
    ("table.safetensors", lambda data: data[: len(data) // 2]),          # truncated
    ("table.json", lambda data: b'{"format": "jetjax.ngram_table/1", "me'),  # invalid JSON
    ("table.json", None),                                                 # deleted
])
def test_a_damaged_table_file_is_named_and_rebuilt_from_the_chunks(model, reference, tmp_path, name, damage):
    out = _copy_of(reference, tmp_path)
    if damage is None:
        (out / name).unlink()
        why = "is missing"
    else:
        (out / name).write_bytes(damage((out / name).read_bytes()))
        why = r"is damaged \(it does not match its checksum in the manifest\)"
        with pytest.raises(ValueError, match=rf"{out / name} (is damaged or truncated|is not valid JSON).*rebuilds "
                                             "it from its chunks when the sweep is called again"):
            NGramTable.load(out)
    with pytest.warns(UserWarning, match=rf"{out / name} {why}; rebuilding the table from the chunks"):
        table, seen = _rerun(model, out)
    assert seen == []
    assert _snapshot(out) == reference[0]
    _same_table(table, reference[1])


@pytest.mark.parametrize("manifest,message", [
    (b'{"format": "someone-elses/3"}', r"manifest\.json is not a jetjax sweep manifest \(format 'someone-elses/3'"),
    (b'{"format": "jetjax.ngram_sweep/1", "chunks": {}}', r"written by an earlier jetjax \(jetjax\.ngram_sweep/1\), "
                                                         r"which did not record .* \(block_rows, vocab_tile\)"),
    (b"{", r"is not empty and holds a manifest\.json that is not valid JSON"),
    (None, r"is not empty and holds no sweep manifest"),
])
def test_directories_a_sweep_did_not_make_are_refused_untouched(model, tmp_path, manifest, message):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "data.bin").write_bytes(b"keep")
    if manifest is not None:
        (out / "manifest.json").write_bytes(manifest)
    before = _snapshot(out)
    with pytest.raises((ValueError, FileExistsError), match=message):
        jet_bigrams(model, out_dir=out, **OPTS)
    assert _snapshot(out) == before            # not even a lock file was created


def test_out_dir_that_is_a_file_is_refused(model, tmp_path):
    path = tmp_path / "table"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"out_dir {path} is a file"):
        jet_bigrams(model, out_dir=path, **OPTS)


# ---- files with the umask; rounding knobs recorded ------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_files_are_written_with_the_umask(model, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "sweep"
        jet_bigrams(model, out_dir=out, **OPTS)
        atomic_write_bytes(tmp_path / "one.bin", b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")            # what open() gives every other file
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert (plain.stat().st_mode & 0o777) == want
    assert (tmp_path / "one.bin").stat().st_mode & 0o777 == want
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes) >= {"manifest.json", "table.json", "table.safetensors", "chunk-00000.safetensors", LOCK_FILE}
    assert set(modes.values()) == {want}, modes


def test_a_rerun_with_other_rounding_knobs_is_refused_naming_them(model, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(_Stop):
        jet_bigrams(model, out_dir=out, callback=_stop_after(1), **OPTS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["block_rows"] == 4 and manifest["settings"]["vocab_tile"] == 29
    assert manifest["settings"]["devices"] == len(jax.devices())
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"settings\.block_rows: 4 there, 8 now.*change float rounding"):
        jet_bigrams(model, out_dir=out, **{**OPTS, "block_rows": 8})
    with pytest.raises(ValueError, match=r"settings\.vocab_tile: 29 there, 5 now"):
        jet_bigrams(model, out_dir=out, **OPTS, vocab_tile=5)
    with pytest.raises(ValueError, match=rf"settings\.devices: {len(jax.devices())} there, 1 now"):
        jet_bigrams(model, out_dir=out, devices=jax.devices()[:1], **OPTS)
    assert _snapshot(out) == before
    # equal effective values are equal settings: vocab_tile is capped at V = 29 either way
    table, seen = _rerun(model, out, vocab_tile=8192)
    assert seen == [2, 3, 4] and table.meta["vocab_tile"] == 29


def test_the_default_tile_splits_the_vocabulary_evenly_and_an_old_4096_directory_still_resumes(tmp_path):
    """V = 5003: the default tile is 2512 (two tiles, 21 padding columns rather than 3189 with 4096).
    A directory started with the old default (4096, recorded) is refused by a default rerun, with a
    message naming 4096, and resumes when vocab_tile=4096 is passed."""
    model = _tiny(seed=5, vocab=5003)
    ctx = np.arange(0, 5003, 97, dtype=np.int32)[:, None]                 # 52 rows, 4 chunks of 16
    opts = dict(paths="emb>dec", top_k=3, global_k=4, block_rows=8, chunk_rows=16, progress=False)
    table = sweep_contexts(model, ctx, **opts)
    assert table.meta["vocab_tile"] == 2512
    out = tmp_path / "old"
    with pytest.raises(_Stop):
        sweep_contexts(model, ctx, out_dir=out, vocab_tile=4096, callback=_stop_after(1), **opts)
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"settings\.vocab_tile: 4096 there, 2512 now.*recorded vocab_tile=4096"):
        sweep_contexts(model, ctx, out_dir=out, **opts)
    assert _snapshot(out) == before
    resumed = sweep_contexts(model, ctx, out_dir=out, vocab_tile=4096, **opts)
    assert resumed.meta["vocab_tile"] == 4096
    np.testing.assert_array_equal(resumed.ids, table.ids)
    np.testing.assert_allclose(resumed.logsumexp, table.logsumexp, rtol=2e-6)


# ---- settings: checked before keying --------------------------------------------------------

def test_a_bad_setting_never_poisons_a_later_good_call():
    model = _tiny(seed=3)
    fresh = jet_bigrams(_tiny(seed=3), "emb>mlp0>dec", top_k=2, order=1, progress=False)
    with pytest.raises(ValueError, match=r"top_k must be an int >= 1, got 2\.0"):
        jet_bigrams(model, "emb>mlp0>dec", top_k=2.0, order=1, progress=False)
    with pytest.raises(TypeError, match=r"jet order must be a non-negative Python int, got True"):
        jet_bigrams(model, "emb>mlp0>dec", top_k=2, order=True, progress=False)
    for name in ("block_rows", "chunk_rows", "vocab_tile"):
        with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got True"):
            jet_bigrams(model, "emb>mlp0>dec", top_k=2, order=1, progress=False, **{name: True})
    assert not _compiled.built(model, "ngrams")          # nothing was compiled or cached for them
    good = jet_bigrams(model, "emb>mlp0>dec", top_k=2, order=1, progress=False)
    np.testing.assert_array_equal(good.probs, fresh.probs)
    np.testing.assert_array_equal(good.ids, fresh.ids)
    keys = set(_compiled.built(model, "ngrams"))
    again = jet_bigrams(model, "emb>mlp0>dec", top_k=np.int64(2), order=np.int64(1), progress=False)
    assert set(_compiled.built(model, "ngrams")) == keys    # a NumPy int is the same setting, the same entry
    np.testing.assert_array_equal(again.probs, fresh.probs)


def test_sweep_settings_normalise_and_travel_as_one_value(model):
    s = SweepSettings(paths="emb>mlp1>dec", top_k=np.int64(3), global_k=6, block_rows=4, chunk_rows=7)
    assert s == SweepSettings(paths=("emb>mlp1>dec",), top_k=3, global_k=6, block_rows=4, chunk_rows=7)
    assert hash(s) == hash(SweepSettings(paths=["emb>mlp1>dec"], top_k=3, global_k=6, block_rows=4, chunk_rows=7))
    assert type(s.top_k) is int
    by_settings = jet_bigrams(model, settings=s, progress=False)
    by_keywords = jet_bigrams(model, "emb>mlp1>dec", 3, global_k=6, block_rows=4, chunk_rows=7, progress=False)
    _same_table(by_settings, by_keywords)
    assert by_settings.meta["kind"] == "bigrams" and by_settings.meta["block_rows"] == 4
    assert jet_bigrams(model, settings=s, top_k=3, progress=False).top_k == 3   # a keyword may repeat it
    with pytest.raises(ValueError, match=r"the settings have top_k=3, the keyword gives 4"):
        jet_bigrams(model, settings=s, top_k=4, progress=False)
    with pytest.raises(TypeError, match=r"settings must be a jetjax\.ngrams\.SweepSettings, got dict"):
        jet_bigrams(model, settings={"paths": "emb>dec"}, progress=False)
    with pytest.raises(ValueError, match="name the paths to sweep"):
        resolve_settings(None, top_k=3)
    with pytest.raises(ValueError, match=r"global_k must be a non-negative int, got -1"):
        SweepSettings(paths="emb>dec", global_k=-1)
    with pytest.raises(ValueError, match=r"chunk_rows must be an int >= 1, got 0"):
        sweep_contexts(model, [[1]], "emb>dec", chunk_rows=0, progress=False)
    with pytest.raises(ValueError, match=r"paths must be a path name or a list of them .* got None"):
        jet_bigrams(model, None, progress=False)
    with pytest.raises(ValueError, match=r"kind must be a non-empty word"):
        SweepSettings(paths="emb>dec", kind="")


# ---- counts, spellings, keyword files, vocabularies -----------------------------------------

def test_negative_and_non_int_counts_are_refused(model, reference):
    table = reference[1]
    with pytest.raises(ValueError, match=r"n must be a non-negative int, got -5"):
        table.top(-5)
    with pytest.raises(ValueError, match=r"n must be a non-negative int, got 2\.0"):
        table.top(2.0)
    assert table.top(0) == [] and len(table.top(6)) == 6
    with pytest.raises(ValueError, match=r"n must be a non-negative int, got -3"):
        diff_tables(table, table, n=-3)
    assert diff_tables(table, table, n=2).gained_prob[0]["delta"] == 0.0
    with pytest.raises(ValueError, match=r"per_row must be an int >= 1, got -1"):
        bigram_candidates(table, per_row=-1)
    with pytest.raises(ValueError, match=r"per_row must be an int >= 1, got 2\.0"):
        bigram_candidates(table, per_row=2.0)
    with pytest.raises(ValueError, match=r"top_k must be an int >= 1, got -5"):
        jet_bigrams(model, top_k=-5, progress=False)


def test_two_spellings_of_one_path_never_count_twice(model):
    assert check_paths(model, ["emb>mlp0>dec", "emb>dec"]) == ("emb>mlp0>dec", "emb>dec")
    with pytest.raises(ValueError, match=r"' emb>mlp0>dec'.*contains whitespace; labels have none: 'emb>mlp0>dec'"):
        jet_bigrams(model, ["emb>mlp0>dec", " emb>mlp0>dec"], progress=False)
    with pytest.raises(ValueError, match=r"'mlp00' has a leading zero; write 'mlp0'"):
        jet_bigrams(model, ["emb>mlp0>dec", "emb>mlp00>dec"], progress=False)
    with pytest.raises(ValueError, match=r"paths contains duplicates: 'emb>mlp0>dec' and 'emb>mlp0>dec'"):
        SweepSettings(paths=["emb>mlp0>dec", "emb>dec", "emb>mlp0>dec"])


def test_bad_keyword_files_are_named_before_any_model_work(tmp_path):
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    tok = Tokenizer(tok_models.WordLevel({f"w{i}": i for i in range(5)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    table = NGramTable(contexts=np.arange(5, dtype=np.int32)[:, None], probs=np.full((5, 1), .5, np.float32),
                       ids=np.array([[1], [2], [3], [4], [1]], np.int32), logsumexp=np.zeros(5, np.float32),
                       global_probs=np.zeros(0, np.float32), global_pairs=np.zeros((0, 2), np.int32),
                       meta={"model": {"config": {"vocab_size": 5}}})
    binary, bom, latin1, empty = (tmp_path / n for n in ("bin.txt", "bom.txt", "latin1.txt", "empty.txt"))
    binary.write_bytes(b"w1\n\x00\x01\x02")
    bom.write_bytes("\ufeffw1\nw3\n".encode("utf-8"))
    latin1.write_bytes("w1\ncaf\u00e9\n".encode("latin-1"))
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match=rf"keyword file {binary} is not text \(a NUL byte at offset 3\)"):
        read_keywords(binary)
    with pytest.raises(ValueError, match=rf"keyword file {latin1} is not UTF-8 text \(byte 0xe9 at offset 6\)"):
        read_keywords(latin1)
    with pytest.raises(ValueError, match=rf"keyword file {empty} is empty"):
        read_keywords(empty)
    with pytest.raises(FileNotFoundError, match=rf"keyword file {tmp_path} is not a file"):
        read_keywords(tmp_path)
    with pytest.raises(ValueError, match=r"keywords must be strings, got 3 of type int"):
        read_keywords(["w1", 3])
    assert read_keywords(bom) == ["w1", "w3"]             # the byte-order mark is not part of the first word
    m = keyword_mass(table, bom, tokenizer=tok)
    assert m.token_ids == [1, 3] and m.missing == [] and m.top_k == pytest.approx(.5 * 3 / 5)
    with pytest.raises(ValueError, match=rf"keyword file {binary} is not text"):
        keyword_mass(table, binary, tokenizer=None)     # named before the (missing) tokenizer is asked for


def test_diff_refuses_tables_whose_token_strings_differ(reference):
    a = reference[1]
    tokens = [f"t{i}" for i in range(len(a))]
    a = dataclasses.replace(a, tokens=tokens)
    b = dataclasses.replace(a, tokens=[s.upper() if i in (3, 17) else s for i, s in enumerate(tokens)])
    with pytest.raises(ValueError, match=r"tokenizers differ: 2 of 29 token ids map to different strings "
                                         r"\(id: a vs b: 3: 't3' vs 'T3', 17: 't17' vs 'T17'\)"):
        diff_tables(a, b)
    with pytest.raises(ValueError, match=r"tokenizers differ: 29 vs 28 token strings"):
        diff_tables(a, dataclasses.replace(a, tokens=tokens[:-1]))
    with pytest.warns(UserWarning, match="table b has no token strings"):
        diff_tables(a, dataclasses.replace(a, tokens=None))
    assert diff_tables(a, a, n=1).gained_prob[0]["next"] == a.token(diff_tables(a, a, n=1).gained_prob[0]["next_id"])
