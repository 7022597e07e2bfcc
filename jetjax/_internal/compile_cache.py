"""JAX's persistent compilation cache for jetjax: a second process does not compile again.

XLA compiles every jitted function the first time a process runs it (on SmolLM2, most of the time
a short ``jetjax attribute`` takes). JAX can keep the compiled executables in a directory and read
them back in the next process; :func:`enable_compile_cache` switches that on, in
``$XDG_CACHE_HOME/jetjax/xla`` (``~/.cache/jetjax/xla``; under ``$JETJAX_CACHE`` when that is set)
unless told otherwise. The ``jetjax`` command and ``make demo`` switch it on by default.

The environment variable ``JETJAX_COMPILE_CACHE`` decides where the command (and a call without a
``path``) keeps it: unset or empty, the default directory; ``0``, ``off``, ``false`` or ``no``: no
persistent cache; anything else: that directory. A directory that cannot be used (a file is there,
it cannot be created or written, or others may write into it: JAX runs what it finds there) gives a
warning and no cache, never an error: the work runs as it would without one.

Only files JAX itself names (``*-cache``, ``*-atime``, its ``.lockfile``) are ever counted or
deleted here, so a cache pointed at a directory holding other files never loses them.

Example:
  >>> import os, tempfile
  >>> from jetjax._internal import compile_cache
  >>> d = os.path.join(tempfile.mkdtemp(), "xla")
  >>> str(compile_cache.enable_compile_cache(d)) == d
  True
  >>> compile_cache.cache_info(d)["entries"] >= 0
  True
  >>> compile_cache.disable_compile_cache()
"""

from __future__ import annotations

import os
import stat
import tempfile
import warnings
from pathlib import Path

from jetjax._internal.cache import cache_dir

__all__ = ["ENV", "OFF", "CompileCacheWarning", "default_compile_cache_dir", "compile_cache_setting",
           "enable_compile_cache", "disable_compile_cache", "active_compile_cache", "cache_info",
           "clear_compile_cache", "describe"]

ENV = "JETJAX_COMPILE_CACHE"
"""The environment variable: ``0``/``off``/``false``/``no`` switches the cache off, a path moves it."""
OFF = ("0", "off", "false", "no")
# JAX's own file names in a cache directory (jax._src.lru_cache): entries, access times, the lock
_ENTRY_SUFFIXES = ("-cache", "-atime")
_LOCK = ".lockfile"
# compilations faster than this are not written (JAX's default is 1 s, which leaves out most of
# jetjax's many small jitted functions; each entry is read back in milliseconds)
MIN_COMPILE_SECONDS = 0.0


class CompileCacheWarning(UserWarning):
    """The persistent compilation cache could not be used; the work goes on without it."""


def default_compile_cache_dir() -> Path:
    """``<jetjax cache>/xla``: ``$JETJAX_CACHE/xla``, else ``$XDG_CACHE_HOME/jetjax/xla``, else
    ``~/.cache/jetjax/xla``.

    Example:
      >>> import os
      >>> from unittest import mock
      >>> with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/tmp/xdg", "JETJAX_CACHE": ""}):
      ...     print(default_compile_cache_dir())
      /tmp/xdg/jetjax/xla
    """
    return cache_dir() / "xla"


def compile_cache_setting() -> tuple[Path | None, str]:
    """What ``$JETJAX_COMPILE_CACHE`` asks for: ``(directory, why)``, the directory ``None`` when it is off.

    Example:
      >>> import os
      >>> from unittest import mock
      >>> with mock.patch.dict(os.environ, {"JETJAX_COMPILE_CACHE": "off"}):
      ...     compile_cache_setting()
      (None, 'JETJAX_COMPILE_CACHE=off')
      >>> with mock.patch.dict(os.environ, {"JETJAX_COMPILE_CACHE": "/tmp/xla"}):
      ...     compile_cache_setting()
      (PosixPath('/tmp/xla'), 'JETJAX_COMPILE_CACHE=/tmp/xla')
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return default_compile_cache_dir(), "the default"
    if value.lower() in OFF:
        return None, f"{ENV}={value}"
    return Path(value).expanduser(), f"{ENV}={value}"


def _unusable(path: Path) -> str | None:
    """Why ``path`` cannot hold the cache (creating it if need be), or ``None`` when it can."""
    for q in (path, *path.parents):   # a file on the way: say which
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                return f"{q} is a file, not a directory" if q == path else f"{q} (in {path}) is not a directory"
            break
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        return f"cannot create it ({e.strerror or e})"
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH:
        return ("others may write into it, and JAX runs the compiled code it finds there (make it yours "
                "alone: chmod o-w)")
    try:   # a real write: os.access says yes to root on a read-only mount
        with tempfile.NamedTemporaryFile(dir=path, prefix=".jetjax-probe-"):
            pass
    except OSError as e:
        return f"cannot write into it ({e.strerror or e})"
    return None


def _jax_cache_module():
    try:
        from jax._src import compilation_cache
    except ImportError:   # a jax that moved it: the config alone still works for a fresh process
        return None
    return compilation_cache


def enable_compile_cache(path: str | os.PathLike | None = None, *,
                         min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Path | None:
    """Keep XLA's compiled executables in ``path`` so that the next process reads them instead of compiling.

    Args:
      path: the cache directory (created, private to the user). ``None``: what ``$JETJAX_COMPILE_CACHE``
        says (``0``/``off``: no cache, and ``None`` is returned without a warning; a path: that
        directory), else ``$XDG_CACHE_HOME/jetjax/xla`` (``~/.cache/jetjax/xla``).
      min_compile_seconds: compilations faster than this are not written (JAX's own default is 1 s).

    Returns:
      the directory in use, or ``None`` when there is no persistent cache: switched off, or the
      directory cannot be used (a file, not creatable, not writable, writable by others); then a
      :class:`CompileCacheWarning` says why, and everything runs as without a cache.

    Call it before the first computation: functions compiled earlier in the process are not written.

    Example:
      >>> import jetjax as jj, tempfile
      >>> where = jj.enable_compile_cache(tempfile.mkdtemp())
      >>> where is not None and where.is_dir()
      True
      >>> from jetjax._internal.compile_cache import disable_compile_cache
      >>> disable_compile_cache()
    """
    import jax

    if path is None:
        where, why = compile_cache_setting()
        if where is None:
            return None
    else:
        if not str(os.fspath(path)).strip():
            raise ValueError("path is empty; give a directory for the compilation cache (or None for the default)")
        where, why = Path(os.fspath(path)).expanduser(), f"path={os.fspath(path)!r}"
    if isinstance(min_compile_seconds, bool) or not isinstance(min_compile_seconds, (int, float)) \
            or not min_compile_seconds >= 0:
        raise ValueError(f"min_compile_seconds must be a number >= 0, got {min_compile_seconds!r}")
    where = where.absolute()
    problem = _unusable(where)
    if problem is not None:
        warnings.warn(f"no persistent compilation cache: {where} ({why}): {problem}; every process compiles "
                      f"afresh (set {ENV}=off to silence this, or {ENV}=DIR for another directory)",
                      CompileCacheWarning, stacklevel=2)
        return None
    cc = _jax_cache_module()
    if active_compile_cache() not in (None, where) and cc is not None:
        cc.reset_cache()   # JAX opens its directory once per process: let it open the new one
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_enable_compilation_cache", True)
    return where


def disable_compile_cache() -> None:
    """No persistent cache from now on in this process (what :func:`enable_compile_cache` switched on).

    Example:
      >>> disable_compile_cache()
      >>> active_compile_cache() is None
      True
    """
    import jax

    cc = _jax_cache_module()
    if cc is not None and active_compile_cache() is not None:
        cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", None)


def active_compile_cache() -> Path | None:
    """The directory this process's JAX writes compiled executables to, or ``None``."""
    import jax

    d = jax.config.values.get("jax_compilation_cache_dir")
    return Path(d) if d and jax.config.values.get("jax_enable_compilation_cache", True) else None


def _entries(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_file() and (p.name.endswith(_ENTRY_SUFFIXES) or p.name == _LOCK)]
    except OSError:
        return []


def cache_info(path: str | os.PathLike | None = None) -> dict:
    """``{"directory", "setting", "exists", "entries", "bytes"}`` of the cache directory (default: what
    ``$JETJAX_COMPILE_CACHE`` says, ``directory`` ``None`` when it is off); ``entries`` counts compiled
    executables, ``bytes`` what JAX's files there hold.

    Example:
      >>> import tempfile
      >>> cache_info(tempfile.mkdtemp())["entries"]
      0
    """
    if path is None:
        where, why = compile_cache_setting()
    else:
        where, why = Path(os.fspath(path)).expanduser(), "given"
    info = {"directory": None if where is None else str(where), "setting": why,
            "exists": bool(where is not None and where.is_dir()), "entries": 0, "bytes": 0}
    if info["exists"]:
        files = _entries(where)
        info["entries"] = sum(p.name.endswith("-cache") for p in files)
        info["bytes"] = sum(p.stat().st_size for p in files)
    return info


def clear_compile_cache(path: str | os.PathLike | None = None) -> dict:
    """Delete the compiled executables in the cache directory (default: what ``$JETJAX_COMPILE_CACHE``
    says); other files there are left alone, and the directory itself is removed when that leaves it
    empty. Returns ``{"directory", "entries", "bytes"}``: what was removed.

    Example:
      >>> import tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "abc-cache").write_bytes(b"xx"), (d / "notes.txt").write_text("mine")
      >>> clear_compile_cache(d)["entries"], sorted(p.name for p in d.iterdir())
      (1, ['notes.txt'])
    """
    info = cache_info(path)
    removed = {"directory": info["directory"], "entries": 0, "bytes": 0}
    if not info["exists"]:
        return removed
    where = Path(info["directory"])
    for p in _entries(where):
        size = p.stat().st_size
        try:
            p.unlink()
        except FileNotFoundError:   # another process evicted it meanwhile
            continue
        removed["entries"] += p.name.endswith("-cache")
        removed["bytes"] += size
    try:
        where.rmdir()   # only when empty
    except OSError:
        pass
    return removed


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def describe(info: dict | None = None) -> str:
    """One line: where the cache is and what it holds, or why there is none.

    Example:
      >>> describe({"directory": None, "setting": "JETJAX_COMPILE_CACHE=0", "exists": False,
      ...           "entries": 0, "bytes": 0})
      'compile cache: off (JETJAX_COMPILE_CACHE=0)'
      >>> describe({"directory": "/c/xla", "setting": "the default", "exists": True, "entries": 3,
      ...           "bytes": 2_500_000})
      'compile cache: /c/xla (3 entries, 2.5 MB)'
    """
    info = cache_info() if info is None else info
    if info["directory"] is None:
        return f"compile cache: off ({info['setting']})"
    if not info["exists"]:
        return f"compile cache: {info['directory']} (empty)"
    entries = f"{info['entries']} entr{'y' if info['entries'] == 1 else 'ies'}"
    return f"compile cache: {info['directory']} ({entries}, {_size(info['bytes'])})"
