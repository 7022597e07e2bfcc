"""Functions compiled once per model and settings, shared by the modules that need them.

The table is keyed weakly by the model, so dropping a model frees its functions, as long as what
``build`` returns does not hold the model strongly (close over ``weakref.ref(model)`` instead).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable

# model -> {(scope, settings): built value}
_TABLE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def per_model(model, scope: str, key: Hashable, build: Callable[[], Any]):
    """``build()`` for ``(model, scope, key)``, built on first use and reused afterwards."""
    table = _TABLE.setdefault(model, {})
    if (scope, key) not in table:
        table[(scope, key)] = build()
    return table[(scope, key)]


def built(model, scope: str) -> dict:
    """What has been built for ``model`` in ``scope``, by key (for tests and introspection)."""
    return {key: value for (s, key), value in _TABLE.get(model, {}).items() if s == scope}
