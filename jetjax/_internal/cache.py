"""Where jetjax keeps the files it builds (assembled model files, its compiled CPU kernel).

A module of its own, importing nothing from jetjax, so that any part of the package can use it.

Example:
  >>> import os
  >>> from unittest import mock
  >>> from jetjax._internal.cache import cache_dir
  >>> with mock.patch.dict(os.environ, {"JETJAX_CACHE": "/tmp/jj-cache"}):
  ...     print(cache_dir())
  /tmp/jj-cache
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """Where jetjax keeps files it builds from installed packages: ``$JETJAX_CACHE``, else
    ``$XDG_CACHE_HOME/jetjax``, else ``~/.cache/jetjax`` (created on first use, never inside site-packages)."""
    if os.environ.get("JETJAX_CACHE"):
        return Path(os.environ["JETJAX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jetjax"
