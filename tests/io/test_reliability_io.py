"""The loaders' hostile pass (issue 34): every case of ``tools/redteam_io.py`` must be "good", plus direct
checks of what the cases cannot see: that no file outside a checkpoint directory is even opened, that
legitimate layouts (hub cache snapshots, symlinks and shards inside the directory) still load, and that
the size checks refuse in little time and memory.

``python tools/redteam_io.py`` prints the same cases as a table with counts per class.
"""

import importlib.util
import json
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import jetjax as jj
from jetjax.io import adapters as jad

_PATH = Path(__file__).resolve().parents[2] / "tools" / "redteam_io.py"
if "jetjax_redteam_io" in sys.modules:
    rt = sys.modules["jetjax_redteam_io"]
else:
    _spec = importlib.util.spec_from_file_location("jetjax_redteam_io", _PATH)
    rt = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = rt      # dataclasses need the module registered
    _spec.loader.exec_module(rt)


@pytest.fixture(scope="module")
def ctx():
    c = rt.IoCtx()
    rt.check_bases(c)   # builds (and compiles) the shared bases up front, outside any case's time limit
    yield c
    c.close()


def _param(case):
    marks = ()
    if case.name in rt.KNOWN_IO:
        marks = pytest.mark.xfail(strict=True, reason=rt.KNOWN_IO[case.name])
    return pytest.param(case, id=case.name, marks=marks)


def test_case_list_covers_every_class(ctx):
    names = [c.name for c in rt.CASES_IO]
    assert len(set(names)) == len(names) >= 25
    assert set(rt.KNOWN_IO) <= set(names)
    for cls in rt.CLASSES:
        assert sum(n.startswith(cls + "/") for n in names) >= 5, cls


def test_bases_load(ctx):
    """Each case breaks one thing in a base that loads and works (else a case could pass by accident)."""
    rt.check_bases(ctx)   # (the fixture ran it once already; this names the test that proves it)


@pytest.mark.parametrize("case", [_param(c) for c in rt.CASES_IO])
def test_bad_input_is_refused_clearly(ctx, case):
    result = rt.run_case(case, ctx)
    # "raised after N s of compiling" depends on the machine's load: reported by the tool, not asserted here
    slow_only = result.outcome == "unclear" and result.why.startswith("raised after")
    assert result.outcome == "good" or slow_only, f"{result.outcome}: {result.why}\n{result.message}"


@pytest.mark.parametrize("case", [c for c in rt.CASES_IO if c.name.startswith("sizes/")], ids=lambda c: c.name)
def test_size_refusals_are_quick_and_small(ctx, case):
    """A declared size the file cannot back is refused in well under 10 s and 100 MB of Python/numpy
    allocations (tracemalloc's peak), however large the number."""
    ctx._ckpt, ctx._llama_dir, ctx.g   # noqa: B018 - the shared bases are set-up, not the case's allocations
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(case.errors):
            case.call(ctx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MB"


# ---------------------------------------------------------------------------------------------
# Containment: what is opened, not only what is refused

class _Opens:
    """Every path opened while active: Python's ``open`` (audit hook) and ``safetensors.safe_open``
    (a Rust reader the audit hook does not see)."""

    def __init__(self, monkeypatch):
        import safetensors

        self.paths: list[Path] = []
        self.active = False   # on only inside ``with``: the test's own set-up writes files outside
        real = safetensors.safe_open

        def spy(filename, *args, **kwargs):
            if self.active:
                self.paths.append(Path(filename))
            return real(filename, *args, **kwargs)

        monkeypatch.setattr(safetensors, "safe_open", spy)
        sys.addaudithook(self._hook)

    def _hook(self, event, args):
        if self.active and event == "open" and args and isinstance(args[0], (str, bytes, Path)):
            self.paths.append(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode(errors="replace")))

    def __enter__(self):
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False

    def under(self, folder: Path) -> list[Path]:
        folder = folder.resolve()
        return [p for p in self.paths if p.resolve() == folder or folder in p.resolve().parents]


@pytest.fixture
def opens(monkeypatch):
    yield _Opens(monkeypatch)   # audit hooks cannot be removed; outside ``with`` this one is quiet


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked-folder"])
def test_index_naming_a_file_outside_is_refused_unopened(ctx, opens, how):
    d, outside, _ = ctx.sharded()
    shard = "model-00002-of-00002.safetensors"
    weight_map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    (d / shard).unlink()
    if how == "dotdot":
        name = f"../outside/{shard}"
    elif how == "absolute":
        name = str(outside / shard)
    elif how == "symlink":
        (d / "link.safetensors").symlink_to(outside / shard)
        name = "link.safetensors"
    else:
        (d / "sub").symlink_to(outside)
        name = f"sub/{shard}"
    weight_map = {k: (name if v == shard else v) for k, v in weight_map.items()}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with opens, pytest.raises(ValueError, match="outside the checkpoint directory") as info:
        jj.from_pretrained(d)
    assert repr(name) in str(info.value)
    assert opens.under(outside) == [], opens.under(outside)


def test_etc_passwd_is_never_opened(ctx, opens):
    d = ctx.shard_named(lambda d, o: "/etc/passwd")
    with opens, pytest.raises(ValueError, match=r"'/etc/passwd'.*outside the checkpoint directory"):
        jj.from_pretrained(d)
    assert opens.under(Path("/etc/passwd")) == []


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_fixed_name_symlinked_outside_is_refused_unopened(ctx, opens, name):
    d = ctx.linked(name)
    with opens, pytest.raises(ValueError, match="through a symlink to .*outside the checkpoint directory"):
        jj.from_pretrained(d)
    assert opens.under(d.parent / "outside") == []


@pytest.mark.parametrize("gguf_file", [False, True])
def test_gguf_symlinked_outside_a_directory_is_refused(ctx, gguf_file):
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        ctx.gguf_linked(gguf_file=gguf_file)
    # the file itself, given directly, is the user's choice and loads
    jj.from_pretrained(ctx.gguf())


def test_layouts_inside_the_directory_still_load(ctx):
    ref = np.asarray(jj.from_pretrained(ctx.copy_ckpt()).logits([1, 2, 3]))
    # shards in a subfolder, the index naming them with ./ and a harmless ..
    d, _, weight_map = ctx.sharded()
    (d / "shards").mkdir()
    for shard in set(weight_map.values()):
        shutil.move(str(d / shard), d / "shards" / shard)
    names = {k: f"./shards/../shards/{v}" for k, v in weight_map.items()}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    np.testing.assert_array_equal(np.asarray(jj.from_pretrained(d).logits([1, 2, 3])), ref)
    # a symlink to a file inside the directory
    d = ctx.copy_ckpt()
    (d / "weights").mkdir()
    shutil.move(str(d / "model.safetensors"), d / "weights" / "real.safetensors")
    (d / "model.safetensors").symlink_to(Path("weights") / "real.safetensors")
    np.testing.assert_array_equal(np.asarray(jj.from_pretrained(d).logits([1, 2, 3])), ref)


def test_hub_cache_snapshot_symlinks_into_its_blobs_load(ctx):
    """The hub cache's layout: ``snapshots/<rev>/<file>`` are symlinks to ``../../blobs/<sha>``."""
    repo = ctx.tmp() / "models--someone--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(ctx.copy_ckpt().iterdir())):
        shutil.copy(f, repo / "blobs" / f"blob{i}")
        (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / f"blob{i}")
    model = jj.from_pretrained(snap)
    assert np.isfinite(np.asarray(model.logits([1, 2]))).all()
    # ... but not anywhere else in the cache
    (repo / "elsewhere").mkdir()
    target = snap / "config.json"
    shutil.copy(target, repo / "elsewhere" / "config.json")
    target.unlink()
    target.symlink_to(Path("..") / ".." / "elsewhere" / "config.json")
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        jj.from_pretrained(snap)


# ---------------------------------------------------------------------------------------------
# GGUF duplicates, as the reference reader sees them

def test_gguf_reader_also_refuses_duplicate_keys(ctx):
    from gguf import GGUFReader

    path = ctx.gguf(add=[("llama.block_count", 2)])
    with pytest.raises(KeyError, match="Duplicate llama.block_count"):
        GGUFReader(str(path))
    with pytest.raises(ValueError, match=r"'llama.block_count' appears twice"):
        jj.from_pretrained(path)


# ---------------------------------------------------------------------------------------------
# Tokenizers: refuse what would be dropped, keep everything else

def test_full_byte_vocabulary_is_a_plain_tokenizer(ctx):
    from tokenizers import Tokenizer

    assert type(ctx.gl.tokenizer) is Tokenizer


def test_partial_byte_vocabulary_encodes_what_it_can_and_refuses_the_rest(ctx):
    from jetjax.io.gguf_tokenizer import ByteCheckedTokenizer

    model = jj.from_pretrained(ctx.gguf(vocab=rt.byte_vocab(drop="xyzé")))
    assert isinstance(model.tokenizer, ByteCheckedTokenizer)
    text = "the cat sat <|endoftext|>"
    assert model.detokenize(model.tokenize(text, special_tokens=False)) == text
    for bad in ("xylophone", "café", ["ok", "zz"]):
        with pytest.raises(ValueError, match="would silently drop"):
            model.tokenizer.encode_batch(bad) if isinstance(bad, list) else model.tokenize(bad)
    # everything else is the wrapped tokenizer's own
    assert model.tokenizer.token_to_id("<|endoftext|>") == 0
    assert model.tokenizer.get_vocab_size() == len(rt.byte_vocab(drop="xyzé")["tokenizer.ggml.tokens"])


def test_bytes_that_never_occur_in_utf8_may_be_missing(ctx):
    from tokenizers import Tokenizer

    model = jj.from_pretrained(ctx.gguf(vocab=rt.byte_vocab(drop_bytes=bytes([0xC0, 0xC1, 0xF5, 0xFF]))))
    assert type(model.tokenizer) is Tokenizer
    text = "any text at all, even ☃ and 𝄞"
    assert model.detokenize(model.tokenize(text, special_tokens=False)) == text


# ---------------------------------------------------------------------------------------------
# Adapters

def test_enormous_alpha_is_refused_and_check_scale_false_shows_why(ctx):
    lora = ctx.adapter(alpha=1e30)
    with pytest.raises(ValueError, match=r"alpha=1e\+30 \(scale alpha / rank = 5e\+29\)"):
        jad.merge_adapter(ctx.g, lora)
    forced = jad.merge_adapter(ctx.g, lora, check_scale=False)
    assert not np.isfinite(np.asarray(forced.logits([1, 2, 3]))).any()   # what the check prevents


def test_ordinary_adapters_pass_the_scale_check(ctx):
    for alpha, b in ((16.0, 0.05), (1.0, 1.0), (64.0, 0.5)):
        merged = jad.merge_adapter(ctx.g, ctx.adapter(alpha=alpha, b_value=b))
        assert np.isfinite(np.asarray(merged.logits([1, 2, 3]))).all()


def test_shipped_adapter_name_works_everywhere_a_path_does(ctx):
    assert jad.load_adapter("shakespeare").rank == jad.load_adapter(jad.adapter_path("shakespeare")).rank
    with pytest.raises(ValueError, match=r"^shakespeare: this adapter was made for a llama model"):
        jad.merge_adapter(ctx.g, "shakespeare")
    with pytest.raises(FileNotFoundError, match=r"shipped adapter's name \('shakespeare'\)"):
        jad.load_adapter("shakespear")
