"""The jet operator: truncated Taylor polynomials of a function, in Taylor mode.

``jet(f, x, y, k)`` is the order-``k`` jet of ``f`` centred at ``x`` and evaluated at the variate ``y``::

    J^k f(x)(y) = sum_{j=0..k} D^j f(x)[(y - x)^{⊗j}] / j!

Orders 0 and 1 take the short roads (``f(x)`` and one ``jax.jvp``). Higher orders push the
straight line ``t -> x + t (y - x)`` through ``f`` with the Taylor-mode interpreter of
:mod:`jetjax.jet.taylor` (our trace over ``jax.experimental.jet``, with fixed and extra rules), whose
output coefficients are exactly the terms above.

**JAX versions.** The interpreter uses private jax internals; it is tested with
``jax>=0.10.2,<0.11`` (:data:`jetjax.jet.taylor.TESTED_RANGE`). On another jax whose internals moved or
fail a one-time self-check, orders >= 2 fall back to nested ``jax.jvp`` (same values, slower to
compile) after one warning; ``JETJAX_TAYLOR=fallback`` forces that path, ``JETJAX_TAYLOR=taylor``
makes a drift an error instead (see :func:`jetjax.jet.taylor.selected_path`).

**High orders.** Compile time grows fast with the order (one GPT-2 block, d=128, 16 tokens, on 2 CPU
cores: order 2 compiles in 2.8 s, 4 in 3.9 s, 8 in 8.4 s, 12 in 17.5 s, 16 in 37 s), and the
terms of a network grow geometrically with the order until float32 overflows (near order 40 rows
became NaN). ``jet`` refuses orders above :data:`MAX_ORDER` (and above :data:`FALLBACK_MAX_ORDER` on
the nested-jvp fallback, which compiles in 41 s at order 6 on that block). It does not check its output for
non-finite values: under ``jax.jit`` that needs a host round trip on every call, so callers that
need the guarantee (the lenses) check the values they read.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jetjax.jet import taylor
from jetjax._internal.checks import check_order
from jetjax.jet.taylor import FALLBACK_MAX_ORDER, JetRuleError

__all__ = ["jet", "JetRuleError", "MAX_ORDER", "FALLBACK_MAX_ORDER"]

# The highest order ``jet`` accepts: compile time roughly doubles every 4 orders (37 s at 16 on
# one small GPT-2 block on 2 CPU cores) and float32 terms overflow near order 40.
MAX_ORDER = 16


# --------------------------------------------------------------------------------------------
# Public operator

def _tree_sum(trees):
    return jax.tree_util.tree_map(lambda *xs: sum(xs[1:], xs[0]), *trees)


def _describe(value) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _checked_output(out):
    """``f``'s output with numeric leaves as arrays; ``TypeError`` naming anything that is not one."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(out)
    if not leaves:
        raise TypeError(f"jet: f returned {_describe(out)}, which holds no array; f must return an "
                        "array or a pytree of arrays")
    fixed = []
    for path, leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            fixed.append(leaf)
        elif isinstance(leaf, numbers.Number):
            fixed.append(jnp.asarray(leaf))
        else:
            where = f" at {jax.tree_util.keystr(path)}" if path else ""
            raise TypeError(f"jet: f returned {_describe(leaf)}{where}; f must return an array or a "
                            "pytree of arrays (numbers and arrays only)")
    return jax.tree_util.tree_unflatten(tree, fixed)


def jet(f: Callable, x, y, order: int, *, return_terms: bool = False):
    r"""The order-``k`` jet of ``f`` at centre ``x``, evaluated at variate ``y``.

    ``J^k f(x)(y) = Σ_{j=0..k} D^j f(x)[(y − x)^{⊗j}] / j!``

    Args:
      f: a function of one argument (an array or a pytree of arrays) returning an array or a
        pytree of arrays. Everything it does must have a Taylor-mode rule; Python loops are
        fine, ``lax.scan``/``cond``/``while_loop`` are not (a clear error names them), and it
        must not branch in Python on its input's values (use ``jnp.where``).
      x: the centre; an array or pytree of floating arrays.
      y: the variate, same structure, shapes and dtypes as ``x``.
      order: ``k``, an int in ``0..MAX_ORDER`` (16). ``0`` evaluates ``f(x)`` only (``y`` is not
        used), ``1`` takes one ``jax.jvp``, higher orders run Taylor mode (tested with
        ``jax>=0.10.2,<0.11``; on another jax whose internals differ, nested ``jax.jvp`` after one
        warning).
      return_terms: also return the ``k + 1`` terms ``D^j f(x)[(y − x)^{⊗j}] / j!``.

    Returns:
      ``J^k f(x)(y)`` with the structure of ``f``'s output; with ``return_terms=True`` a pair
      ``(value, terms)`` where ``terms`` is a list of ``k + 1`` such outputs summing to ``value``.
      Values are not checked for NaN/inf (see the module docstring): check what you read.

    Raises:
      ValueError: ``order`` above :data:`MAX_ORDER`, or ``x`` and ``y`` that differ in structure,
        shape or dtype. TypeError: a non-floating leaf, ``f`` returning something other than arrays,
        or ``f`` branching in Python on a traced value. JetRuleError: a primitive without a rule.

    Works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.

    Example:
      >>> import jax.numpy as jnp, jetjax as jj
      >>> cube = lambda v: v ** 3
      >>> float(jj.jet(cube, jnp.float32(1.0), jnp.float32(2.0), order=3))  # exact: 2**3
      8.0
      >>> value, terms = jj.jet(cube, jnp.float32(1.0), jnp.float32(2.0), order=1, return_terms=True)
      >>> [float(t) for t in terms]  # f(1), f'(1)·(2 − 1)
      [1.0, 3.0]
    """
    if not callable(f):
        raise TypeError(f"jet: f must be a function of one argument (the centre), got {_describe(f)}")
    try:
        inspect.signature(f).bind(None)
    except TypeError:
        raise TypeError(f"jet: f must take exactly one argument (the centre, an array or pytree), but "
                        f"{getattr(f, '__name__', 'f')}{inspect.signature(f)} does not") from None
    except ValueError:   # no signature to read (some builtins): let the call tell
        pass
    _check_point_leaves("x (the centre)", x)
    if order != 0:
        _check_point_leaves("y (the variate)", y)
    order = check_order(order)
    if order > MAX_ORDER:
        raise ValueError(f"jet: order {order} is above MAX_ORDER={MAX_ORDER}: compile time roughly "
                         f"doubles every 4 orders (37 s at order 16 on one small GPT-2 block) and "
                         f"float32 terms overflow to inf/NaN near order 40; use an order <= {MAX_ORDER}")
    try:
        return _jet(f, x, y, order, return_terms)
    except jax.errors.ConcretizationTypeError as err:
        raise TypeError(
            f"jet: f branched in Python on a traced value (if/while/bool()/int()/float() on an array "
            f"that depends on the input), which jet cannot follow; use jnp.where / jnp.select / "
            f"lax.select instead of Python control flow. JAX said: {_first_line(err)}") from err
    except jax.errors.TracerArrayConversionError as err:
        raise TypeError(
            "jet: f converted a traced value to a NumPy array (np.asarray / np.* on its input), which "
            f"jet cannot follow; use jax.numpy instead of numpy inside f. JAX said: {_first_line(err)}"
        ) from err


def _check_point_leaves(what: str, point) -> None:
    """Every leaf of ``point`` is an array or a number: ``TypeError`` naming the first that is not."""
    leaves = jax.tree_util.tree_flatten_with_path(point)[0]
    if not leaves:
        raise TypeError(f"jet: {what} is {_describe(point)}, which holds no array; pass an array or a pytree "
                        "of floating arrays")
    for path, leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) or (
                isinstance(leaf, numbers.Number) and not isinstance(leaf, bool)):
            continue
        where = f" at {jax.tree_util.keystr(path)}" if path else ""
        raise TypeError(f"jet: {what} holds {_describe(leaf)}{where}; pass an array or a pytree of floating arrays")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _jet(f, x, y, order, return_terms):
    g = lambda z: _checked_output(f(z))
    x_leaves, x_tree = jax.tree_util.tree_flatten(x)
    if order == 0:
        value = g(x)
        return (value, [value]) if return_terms else value

    y_leaves, y_tree = jax.tree_util.tree_flatten(y)
    if x_tree != y_tree:
        raise ValueError(f"jet: centre and variate must have the same structure, got {x_tree} and {y_tree}")
    x_leaves = [jnp.asarray(a) for a in x_leaves]
    y_leaves = [jnp.asarray(a) for a in y_leaves]
    for i, (a, b) in enumerate(zip(x_leaves, y_leaves)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"jet: centre and variate leaf {i} differ: {a.dtype}{list(a.shape)} "
                             f"vs {b.dtype}{list(b.shape)}; they must match")
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            raise TypeError(f"jet: leaf {i} has dtype {a.dtype}; jets need floating inputs "
                            "(integer inputs such as token ids belong outside the jetted function)")
    directions = [b - a for a, b in zip(x_leaves, y_leaves)]
    centre = jax.tree_util.tree_unflatten(x_tree, x_leaves)

    def flat_g(*leaves):
        return g(jax.tree_util.tree_unflatten(x_tree, leaves))

    if order == 1:
        tangent = jax.tree_util.tree_unflatten(x_tree, directions)
        f0, d1 = jax.jvp(g, (centre,), (tangent,))
        terms = [f0, d1]
    elif taylor.selected_path() == "fallback":
        if order > FALLBACK_MAX_ORDER:
            raise ValueError(
                f"jet: order {order} is above FALLBACK_MAX_ORDER={FALLBACK_MAX_ORDER} of the nested-jvp "
                f"fallback in use ({taylor.REASON or 'forced'}), whose compile time explodes with the "
                f"order (41 s at order 6 on one small GPT-2 block); use an order <= "
                f"{FALLBACK_MAX_ORDER}, or install 'jax{taylor.TESTED_RANGE}' for Taylor mode (orders <= "
                f"{MAX_ORDER})")
        out, coeffs = taylor.nested_jvp_taylor(flat_g, x_leaves, directions, order)
        terms = [out] + coeffs
    else:
        # The line t -> x + t·v has Taylor coefficients (v, 0, 0, ...); the zeros stay symbolic.
        series = [[v] + [taylor.zero_term] * (order - 1) for v in directions]
        out_tree, out_primals, out_series = taylor.taylor(flat_g, x_leaves, series, order)
        out_series = taylor.instantiate(out_primals, out_series)
        terms = [jax.tree_util.tree_unflatten(out_tree, out_primals)]
        for j in range(order):
            terms.append(jax.tree_util.tree_unflatten(out_tree, [s[j] for s in out_series]))
    for i, leaf in enumerate(jax.tree_util.tree_leaves(terms[0])):
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(f"jet: output leaf {i} of f has dtype {leaf.dtype}; jets of order >= 1 need floating "
                            "outputs (an integer output has no derivatives: compute it outside the jet)")
    value = _tree_sum(terms)
    return (value, terms) if return_terms else value
