"""The persistent compilation cache (issue 36): a second process of a ``jetjax`` command reads what the
first compiled; ``JETJAX_COMPILE_CACHE`` switches it off or moves it; a directory that cannot be used is
one warning line and no cache, never a failure; ``jetjax cache`` shows and clears it.

Every test points the cache at a temporary directory (never the user's ``~/.cache``) and leaves the
process's JAX without a persistent cache afterwards.
"""

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from jetjax._internal import compile_cache as cc
from jetjax.cli import app as cli

LENS = ["lens", "--model", "shakespeare", "--text", "To be, or not", "--orders", "0"]

# A child process: JAX's own counters of compilations that asked the persistent cache, and of its hits.
PROBE = """
import collections, json, sys
import jax.monitoring as m
events = collections.Counter()
m.register_event_listener(lambda name, **kw: events.update([name]))
from jetjax.cli.app import main
rc = main(sys.argv[1:])
print("@@" + json.dumps({"rc": rc, "requests": events["/jax/compilation_cache/compile_requests_use_cache"],
                         "hits": events["/jax/compilation_cache/cache_hits"]}), file=sys.stderr)
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """A fresh user cache under tmp (XDG), no JETJAX_* override, and no persistent cache left behind."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("JETJAX_CACHE", raising=False)
    monkeypatch.delenv(cc.ENV, raising=False)
    yield
    cc.disable_compile_cache()


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*-cache")) if directory.is_dir() else []


def run_child(argv, env_cache, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    env[cc.ENV] = str(env_cache)
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("@@"))
    return json.loads(line[2:]), proc


def test_second_process_reads_every_compilation_from_the_cache(tmp_path):
    cache = tmp_path / "xla"
    first, p1 = run_child(LENS, cache, tmp_path)
    assert first["rc"] == 0, p1.stderr
    written = entries(cache)
    # the first process compiled and wrote: one file per compilation (min compile time 0), none read
    assert first["requests"] > 0 and first["hits"] == 0
    assert len(written) == first["requests"]
    second, p2 = run_child(LENS, cache, tmp_path)
    assert second["rc"] == 0, p2.stderr
    # the second asked for the same compilations and JAX found every one on disk: nothing compiled, nothing new
    assert second["requests"] == first["requests"]
    assert second["hits"] == second["requests"]
    assert entries(cache) == written
    assert p1.stdout == p2.stdout    # same results from the cached executables


def test_cache_is_on_by_default_in_the_xdg_directory_and_off_with_the_variable(tmp_path, monkeypatch, capsys):
    default = tmp_path / "xdg" / "jetjax" / "xla"
    monkeypatch.setenv(cc.ENV, "off")
    assert cli.main(LENS) == 0
    assert cc.active_compile_cache() is None and not default.exists()
    monkeypatch.setenv(cc.ENV, "")        # empty: the default
    assert cli.main(LENS) == 0
    assert cc.active_compile_cache() == default
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.25)(jnp.arange(7.0))   # a new compilation in this process
    assert len(entries(default)) >= 1
    assert stat.S_IMODE(default.stat().st_mode) & 0o077 == 0      # the user's alone: JAX runs what it finds
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", "no"])
def test_off_values(value, monkeypatch):
    monkeypatch.setenv(cc.ENV, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cc.enable_compile_cache() is None
    assert cc.active_compile_cache() is None


@pytest.fixture
def unwritable(tmp_path):
    """A directory no file can be created in, even by root (read-only mode, else the immutable attribute)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o500)
    if cc._unusable(d) is None:   # root ignores the mode
        d.chmod(0o700)
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("cannot make an unwritable directory here")
    yield d
    subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o700)


def bad_places(tmp_path, unwritable):
    (tmp_path / "afile").write_text("mine")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    return {"a file": (tmp_path / "afile", "is a file, not a directory"),
            "under a file": (tmp_path / "afile" / "xla", "is not a directory"),
            "unwritable": (unwritable, "cannot write into it"),
            "inside unwritable": (unwritable / "xla", "cannot create it"),
            "writable by others": (shared, "others may write into it")}


@pytest.mark.parametrize("case", ["a file", "under a file", "unwritable", "inside unwritable", "writable by others"])
def test_unusable_directory_warns_once_and_the_command_runs(case, tmp_path, unwritable, monkeypatch, capsys):
    where, why = bad_places(tmp_path, unwritable)[case]
    monkeypatch.setenv(cc.ENV, str(where))
    assert cli.main(LENS) == 0
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jetjax lens: warning: no persistent compilation cache: ") and why in lines[0], lines[0]
    assert str(where) in lines[0] and "JETJAX_COMPILE_CACHE" in lines[0]
    assert "lens, order 0" in out          # the work ran and printed its table
    assert cc.active_compile_cache() is None
    assert (tmp_path / "afile").read_text() == "mine"


def test_library_call_warns_and_returns_none(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.warns(cc.CompileCacheWarning, match="is a file, not a directory"):
        assert cc.enable_compile_cache(tmp_path / "afile") is None
    with pytest.raises(ValueError, match="path is empty"):
        cc.enable_compile_cache("  ")
    with pytest.raises(ValueError, match="min_compile_seconds must be a number >= 0, got -1"):
        cc.enable_compile_cache(tmp_path / "ok", min_compile_seconds=-1)


def test_explicit_path_wins_and_moving_the_cache_moves_the_writes(tmp_path, monkeypatch):
    import jetjax as jj

    monkeypatch.setenv(cc.ENV, "off")
    a, b = tmp_path / "a", tmp_path / "b"
    assert jj.enable_compile_cache(a) == a
    jax.jit(lambda x: jnp.cos(x) - 1.5)(jnp.arange(5.0))
    n_a = len(entries(a))
    assert n_a >= 1
    assert jj.enable_compile_cache(b) == b            # JAX reopens its cache in the new directory
    jax.jit(lambda x: jnp.tanh(x) * 0.5)(jnp.arange(9.0))
    assert len(entries(b)) >= 1 and len(entries(a)) == n_a


def test_cache_command_shows_and_clears_only_jax_files(tmp_path, monkeypatch, capsys):
    d = tmp_path / "xla"
    monkeypatch.setenv(cc.ENV, str(d))
    assert cc.enable_compile_cache() == d
    for k in range(3):
        jax.jit(lambda x, k=k: jnp.exp(x) * (k + 2.0))(jnp.arange(4.0 + k))
    cc.disable_compile_cache()
    (d / "notes.txt").write_text("not JAX's")
    n = len(entries(d))
    size = sum(p.stat().st_size for p in d.iterdir() if p.name.endswith(("-cache", "-atime")))
    assert n >= 3
    assert cli.main(["cache", "--json", "-"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["directory"] == str(d) and shown["entries"] == n and shown["bytes"] == size
    assert cli.main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"cleared {n} entries" in out
    assert entries(d) == [] and (d / "notes.txt").read_text() == "not JAX's"
    assert cc.active_compile_cache() is None          # `jetjax cache` itself never switches the cache on
    assert cli.main(["cache"]) == 0
    assert f"compile cache: {d} (0 entries" in capsys.readouterr().out


def test_cache_clear_when_off(monkeypatch, capsys):
    monkeypatch.setenv(cc.ENV, "0")
    assert cli.main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert "compile cache: off (JETJAX_COMPILE_CACHE=0)" in out and "nothing to clear" in out


def test_version_names_the_cache(tmp_path, monkeypatch, capsys):
    d = tmp_path / "somewhere"
    monkeypatch.setenv(cc.ENV, str(d))
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"jetjax {__import__('jetjax').__version__} (jax {jax.__version__})"
    assert out[1] == f"compile cache: {d} (empty)"


def test_bench_runs_without_the_cache():
    from jetjax.cli.app import build_parser

    args, _ = build_parser().parse_known_args(["bench", "--quick"])
    assert args.compile_cache is False
    args, _ = build_parser().parse_known_args(["cache"])
    assert args.compile_cache is False
