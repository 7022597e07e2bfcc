"""The one cache of compiled functions: built once per model and settings, dropped by ``clear_caches()``.

Every module that compiles a function for a model (lenses, ``expand_all``, path reductions, n-gram
sweeps, the findings) asks :func:`per_model` with a scope and a hashable key of *normalised*
settings, so that a call with equal settings reuses the compiled function and a call with invalid
settings never reaches the cache (validate first, then key).

The table lives on the model object itself, so it goes away with the model (a function that closes
over its model makes a reference cycle the garbage collector frees); a weak set of the models that
have a table lets :func:`clear_caches` reach them all.

``TRACE_COUNTS`` counts how often a body was traced (compiled), by a key its module chooses: tests
use it to show that a second call reuses the compiled function.
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Callable, Hashable

_ATTR = "_jetjax_compiled"
_MODELS: "weakref.WeakSet[Any]" = weakref.WeakSet()
_JITTED: list = []          # module-level jitted functions (their caches are cleared too)

TRACE_COUNTS: collections.Counter = collections.Counter()


def per_model(model, scope: str, key: Hashable, build: Callable[[], Any]):
    """``build()`` for ``(model, scope, key)``, built on first use and reused afterwards."""
    table = model.__dict__.setdefault(_ATTR, {})
    _MODELS.add(model)
    if (scope, key) not in table:
        table[(scope, key)] = build()
    return table[(scope, key)]


def built(model, scope: str) -> dict:
    """What has been built for ``model`` in ``scope``, by key (for tests and introspection)."""
    return {key: value for (s, key), value in model.__dict__.get(_ATTR, {}).items() if s == scope}


def module_jit(fn):
    """Register a module-level ``jax.jit`` function so that :func:`clear_caches` empties it too."""
    _JITTED.append(fn)
    return fn


def clear_caches() -> None:
    """Drop every compiled function jetjax holds: per-model tables, each model's own jitted forward
    and stream functions, and the module-level jitted helpers. The next call compiles again.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(n_layers=1, d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> _ = jj.iterative_jet_lens(model, [1, 2], order=1)
      >>> len(built(model, "lenses")), clear_caches(), len(built(model, "lenses"))
      (1, None, 0)
    """
    for model in list(_MODELS):
        model.__dict__.pop(_ATTR, None)
        for fn in (getattr(model, "_logits_jit", None), getattr(model, "_stream_jit", None)):
            if fn is not None:
                fn.clear_cache()
    _MODELS.clear()
    for fn in _JITTED:
        fn.clear_cache()


__all__ = ["per_model", "built", "module_jit", "clear_caches", "TRACE_COUNTS"]
