"""The jet operator: truncated Taylor polynomials of a function, in Taylor mode.

``jet(f, x, y, k)`` is the order-``k`` jet of ``f`` centred at ``x`` and evaluated at the variate ``y``::

    J^k f(x)(y) = sum_{j=0..k} D^j f(x)[(y - x)^{⊗j}] / j!

Orders 0 and 1 take the short roads (``f(x)`` and one ``jax.jvp``). Higher orders push the
straight line ``t -> x + t (y - x)`` through ``f`` with the Taylor-mode interpreter of
``jax.experimental.jet``, whose output coefficients are exactly the terms above.

We drive that interpreter with a trace of our own (a subclass of its ``JetTrace``) because the
stock entry point

* fails on every ``custom_jvp`` / ``custom_vjp`` function (``jax.nn.relu``, ...): it calls the
  primal function outside the jet trace, which leaks tracers;
* fails on ``jnp.minimum(x, scalar)`` / ``jnp.clip``: its ``min`` rule does not broadcast;
* has no rules for ``argmax``, ``argmin``, ``sort``, ``top_k``, ``tan``;
* materialises a zero Taylor series for every constant operand (each weight matrix), so a
  matmul at order k costs O(k^2) products instead of k + 1.

Our trace keeps zero coefficients symbolic through linear and bilinear primitives and through
nested ``jit`` calls, and uses the fixed rules above. The stock rule table (``jet_rules``) is
read, never modified: importing jetjax changes nothing for other users of
``jax.experimental.jet``.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jetjax.checks import check_order

__all__ = ["jet", "JetRuleError"]

# jax versions whose ``jax.experimental.jet`` internals we checked this module against.
_TESTED_JAX = ((0, 10),)


class JetRuleError(NotImplementedError):
    """A primitive inside a jetted function has no Taylor-mode rule."""


# Primitives users meet most often without a rule, with what to do about them.
_HINTS = {
    "scan": "lax.scan (also nnx.scan / fori_loop with static bounds) inside a jetted function: "
    "unroll the layer loop into a Python for-loop",
    "while": "lax.while_loop / fori_loop inside a jetted function: unroll it into a Python loop",
    "cond": "lax.cond / lax.switch inside a jetted function: compute both branches and pick with jnp.where",
    "checkpoint": "jax.checkpoint / nnx.remat inside a jetted function: drop rematerialisation there",
    "remat": "jax.checkpoint / nnx.remat inside a jetted function: drop rematerialisation there",
    "shard_map": "shard_map inside a jetted function: put the jet innermost and shard_map outside it",
    "pmap": "pmap inside a jetted function: put the jet innermost and pmap outside it",
    "custom_lin": "a custom differentiation rule that jet cannot see through",
}


def _version_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# The Taylor-mode interpreter, built once on first use (so `import jetjax` stays cheap and a
# future JAX that moved these internals fails with a clear message at the first jet call).

class _Internals:
    """Our trace, rules and entry point, bound to the installed ``jax.experimental.jet``."""

    def __init__(self):
        try:
            from jax.experimental import jet as stock
            from jax._src import api_util, core
            from jax._src import linear_util as lu
            from jax._src import sharding_impls
            from jax._src.interpreters import partial_eval as pe
            from jax._src.util import unzip2, weakref_lru_cache

            names = ("JetTrace", "JetTracer", "jet_rules", "zero_term", "zero_series",
                     "linear_prop", "_bilinear_taylor_rule", "traceable", "jet2")
            missing = [n for n in names if not hasattr(stock, n)]
            if missing:
                raise AttributeError("jax.experimental.jet lacks " + ", ".join(missing))
            for n in ("take_current_trace", "set_current_trace", "TraceTag", "jaxpr_as_fun",
                      "ClosedJaxpr", "typeof", "shaped_abstractify"):
                if not hasattr(core, n):
                    raise AttributeError(f"jax._src.core lacks {n}")
            jit_p = jax._src.pjit.jit_p
        except (ImportError, AttributeError) as err:
            raise RuntimeError(
                f"jetjax's Taylor-mode interpreter was written against the internals of jax "
                f"{' / '.join('.'.join(map(str, v)) + '.x' for v in _TESTED_JAX)}; the installed jax "
                f"{jax.__version__} changed them ({err}). Install a tested jax "
                f"(pip install 'jax>=0.10.2,<0.11') or update jetjax/jet.py."
            ) from err
        if _version_tuple(jax.__version__) not in _TESTED_JAX:
            warnings.warn(
                f"jetjax.jet was tested with jax {_TESTED_JAX}, not {jax.__version__}; "
                "its internals look compatible, and the test suite checks the results.",
                stacklevel=3,
            )

        self.stock, self.core, self.lu = stock, core, lu
        zero_term, zero_series = stock.zero_term, stock.zero_series
        self.zero_term, self.zero_series = zero_term, zero_series
        internals = self

        class Trace(stock.JetTrace):
            """Stock JetTrace with symbolic zeros, fixed custom-derivative handling, our rules."""

            def process_primitive(self, primitive, tracers, params, /):
                order = self.order
                primals_in, series_in = unzip2(map(self.to_primal_terms_pair, tracers))
                if all(s is zero_series for s in series_in):
                    avals = tuple(core.typeof(x) for x in primals_in)
                    out = primitive.bind_with_trace(self.parent_trace, primals_in, avals, params)
                    if primitive.multiple_results:
                        return [stock.JetTracer(self, p, zero_series) for p in out]
                    return stock.JetTracer(self, out, zero_series)
                series_in = [[zero_term] * order if s is zero_series else list(s) for s in series_in]
                with core.set_current_trace(self.parent_trace):
                    primal_out, terms_out = internals.apply_rule(primitive, primals_in, series_in, params)
                if not primitive.multiple_results:
                    return stock.JetTracer(self, primal_out, _as_series(terms_out))
                terms_out = ([zero_series] * len(primal_out) if terms_out is zero_series else terms_out)
                return [stock.JetTracer(self, p, _as_series(t)) for p, t in zip(primal_out, terms_out)]

            def process_call(self, call_primitive, f, tracers, params, /):
                raise JetRuleError(internals.missing_rule_message(call_primitive))

            # The stock trace calls these without making itself the current trace, so the
            # primal function's operations escape it (UnexpectedTracerError). We ignore the
            # custom rule (as the stock trace means to) and differentiate the primal function.
            def process_custom_jvp_call(self, primitive, fun, jvp, tracers, /, *, symbolic_zeros):
                with core.set_current_trace(self):
                    return fun.call_wrapped(*tracers)

            def process_custom_vjp_call(self, primitive, fun, fwd, bwd, tracers, /, *,
                                        out_trees, symbolic_zeros):
                with core.set_current_trace(self):
                    return fun.call_wrapped(*tracers)

        def _as_series(terms):
            return terms if terms is zero_series else list(terms)

        @lu.transformation2
        def subtrace(f, tag, order, primals, series):
            with core.take_current_trace() as parent_trace:
                trace = Trace(tag, parent_trace, order)
                in_tracers = [stock.JetTracer(trace, p, list(s)) for p, s in zip(primals, series)]
                with core.set_current_trace(trace):
                    ans = f(*in_tracers)
                out_primals, out_terms = unzip2(map(trace.to_primal_terms_pair, ans))
                return out_primals, out_terms

        @lu.transformation2
        def jet_fun(f, order, primals, series):
            out_primals, out_terms = f(core.TraceTag(), order, primals, series)
            out_terms = [[zero_term] * order if s is zero_series else list(s) for s in out_terms]
            return out_primals, out_terms

        @lu.transformation_with_aux2
        def flatten_output(f, store, *args):
            out, tree = jax.tree_util.tree_flatten(f(*args))
            store.store(tree)
            return out

        def taylor(fun, primals, series, order):
            """Taylor coefficients (non-factorial-scaled) of ``fun(*primals)`` along ``series``."""
            wrapped = lu.wrap_init(fun, debug_info=api_util.debug_info("jetjax.jet", fun, primals, {}))
            f, out_tree = flatten_output(wrapped)
            out_primals, out_terms = jet_fun(subtrace(f), order).call_wrapped(primals, series)
            return out_tree(), out_primals, out_terms

        self.taylor = taylor
        self.Trace = Trace

        # ---- rules -------------------------------------------------------------------------
        def zeros_like(x):
            return jnp.zeros(np.shape(x), dtype=jnp.result_type(x))

        def instantiate(primals, series):
            return [[zeros_like(x) if t is zero_term else t for t in s] for x, s in zip(primals, series)]

        def linear_rule(prim, primals, series, **params):
            primal_out = prim.bind(*primals, **params)
            order = len(series[0])
            outs = []
            for j in range(order):
                terms = [s[j] for s in series]
                if all(t is zero_term for t in terms):
                    out = ([zero_term] * len(primal_out)) if prim.multiple_results else zero_term
                else:
                    out = prim.bind(*[zeros_like(x) if t is zero_term else t
                                      for x, t in zip(primals, terms)], **params)
                outs.append(out)
            if prim.multiple_results:
                return primal_out, [list(ts) for ts in zip(*outs)]
            return primal_out, outs

        def bilinear_rule(prim, primals, series, **params):
            op = partial(prim.bind, **params)
            u = [primals[0]] + list(series[0])
            w = [primals[1]] + list(series[1])
            v = []
            for k in range(len(u)):
                parts = [op(u[j], w[k - j]) for j in range(k + 1)
                         if u[j] is not zero_term and w[k - j] is not zero_term]
                v.append(sum(parts[1:], parts[0]) if parts else zero_term)
            return v[0], v[1:]

        def min_rule(primals, series):
            # The stock rule forgets to broadcast, so jnp.minimum(x, 0.5) fails.
            x, y = jnp.broadcast_arrays(*primals)
            less, equal = x < y, x == y
            out = []
            for tx, ty in zip(*series):
                tx, ty = jnp.broadcast_arrays(tx, ty)
                out.append(lax.select(equal, (tx + ty) / 2, lax.select(less, tx, ty)))
            return lax.select(less, x, y), out

        def zero_rule(prim, primals, series, **params):
            return prim.bind(*primals, **params), zero_series

        def tan_rule(primals, series, **_):
            return stock.jet2(lambda x: lax.sin(x) / lax.cos(x), primals, series)

        def top_k_rule(primals, series, **params):
            values, idx = lax.top_k_p.bind(*primals, **params)
            terms = [jnp.take_along_axis(t, idx, axis=-1) for t in series[0]]
            return (values, idx), [terms, zero_series]

        def sort_rule(primals, series, *, dimension, is_stable, num_keys):
            n = len(primals)
            sort = partial(lax.sort_p.bind, dimension=dimension, is_stable=is_stable, num_keys=num_keys)
            primal_out = sort(*primals)
            order = len(series[0])
            # Carry each operand's coefficient along with the keys: the same permutation.
            terms_out = [[sort(*primals, series[i][j])[n] for j in range(order)] for i in range(n)]
            return primal_out, terms_out

        @weakref_lru_cache
        def jet_jaxpr(jaxpr, order, avals, in_tree):
            f = lu.wrap_init(core.jaxpr_as_fun(jaxpr), debug_info=jaxpr.jaxpr.debug_info.with_unknown_names())
            f_jet, out_tree = stock.traceable(jet_fun(subtrace(f), order), in_tree)
            jaxpr_jet, _, consts = pe.trace_to_jaxpr_dynamic(f_jet, avals)
            return core.ClosedJaxpr(jaxpr_jet, consts), out_tree

        def jit_rule(primals, series, **params):
            # Like the stock rule, but zero coefficients stay symbolic across the call boundary
            # (a weight passed into a jitted function adds no inputs), and the body is traced
            # with our trace, so our fixes apply inside nested jit too.
            order = len(series[0])
            flat, in_tree = jax.tree_util.tree_flatten((list(primals), series))
            avals = tuple(core.shaped_abstractify(x) for x in flat)
            closed, out_tree_thunk = jet_jaxpr(params["jaxpr"], order, avals, in_tree)
            out_tree = out_tree_thunk()
            n_in_extra = len(flat) - len(primals)
            n_out_extra = out_tree.num_leaves - len(params["out_shardings"])
            new_params = {
                **params,
                "jaxpr": closed,
                "in_shardings": params["in_shardings"] + (sharding_impls.UNSPECIFIED,) * n_in_extra,
                "out_shardings": params["out_shardings"] + (sharding_impls.UNSPECIFIED,) * n_out_extra,
                "in_layouts": params["in_layouts"] + (None,) * n_in_extra,
                "out_layouts": params["out_layouts"] + (None,) * n_out_extra,
                "donated_invars": params["donated_invars"] + (False,) * n_in_extra,
            }
            result = jit_p.bind(*flat, **new_params)
            primals_out, series_out = jax.tree_util.tree_unflatten(out_tree, result)
            series_out = [zero_series if all(t is zero_term for t in s) else s for s in series_out]
            return primals_out, series_out

        self.overrides: dict[Any, Callable] = {
            lax.min_p: min_rule,
            lax.tan_p: tan_rule,
            lax.argmax_p: partial(zero_rule, lax.argmax_p),
            lax.argmin_p: partial(zero_rule, lax.argmin_p),
            lax.top_k_p: top_k_rule,
            lax.sort_p: sort_rule,
            jit_p: jit_rule,
        }

        def apply_rule(prim, primals, series, params):
            rule = self.overrides.get(prim)
            if rule is not None:
                if prim is not jit_p:  # only the jit rule keeps zeros symbolic
                    series = instantiate(primals, series)
                return rule(primals, series, **params)
            stock_rule = stock.jet_rules.get(prim)
            if stock_rule is None:
                raise JetRuleError(self.missing_rule_message(prim))
            if isinstance(stock_rule, partial) and stock_rule.func is stock.linear_prop:
                return linear_rule(stock_rule.args[0], primals, series, **params)
            if isinstance(stock_rule, partial) and stock_rule.func is stock._bilinear_taylor_rule:
                return bilinear_rule(stock_rule.args[0], primals, series, **params)
            return stock_rule(primals, instantiate(primals, series), **params)

        self.apply_rule = apply_rule
        self.instantiate = instantiate

    def missing_rule_message(self, prim) -> str:
        name = getattr(prim, "name", str(prim))
        hint = _HINTS.get(name)
        hint = hint or "rewrite that step with primitives jet supports, or register a rule for it"
        return (f"jetjax.jet: no Taylor-mode (jet) rule for the primitive '{name}'. "
                f"Likely cause and fix: {hint}.")


_INTERNALS: _Internals | None = None


def _internals() -> _Internals:
    global _INTERNALS
    if _INTERNALS is None:
        _INTERNALS = _Internals()
    return _INTERNALS


# --------------------------------------------------------------------------------------------
# Public operator

def _tree_sum(trees):
    return jax.tree_util.tree_map(lambda *xs: sum(xs[1:], xs[0]), *trees)


def jet(f: Callable, x, y, order: int, *, return_terms: bool = False):
    r"""The order-``k`` jet of ``f`` at centre ``x``, evaluated at variate ``y``.

    ``J^k f(x)(y) = Σ_{j=0..k} D^j f(x)[(y − x)^{⊗j}] / j!``

    Args:
      f: a function of one argument (an array or a pytree of arrays) returning an array or a
        pytree of arrays. Everything it does must have a Taylor-mode rule; Python loops are
        fine, ``lax.scan``/``cond``/``while_loop`` are not (a clear error names them).
      x: the centre; an array or pytree of floating arrays.
      y: the variate, same structure, shapes and dtypes as ``x``.
      order: ``k``, a non-negative int. ``0`` evaluates ``f(x)`` only (``y`` is not used),
        ``1`` takes one ``jax.jvp``, higher orders run Taylor mode.
      return_terms: also return the ``k + 1`` terms ``D^j f(x)[(y − x)^{⊗j}] / j!``.

    Returns:
      ``J^k f(x)(y)`` with the structure of ``f``'s output; with ``return_terms=True`` a pair
      ``(value, terms)`` where ``terms`` is a list of ``k + 1`` such outputs summing to ``value``.

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
    order = check_order(order)
    x_leaves, x_tree = jax.tree_util.tree_flatten(x)
    if order == 0:
        value = f(x)
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

    if order == 1:
        tangent = jax.tree_util.tree_unflatten(x_tree, directions)
        f0, d1 = jax.jvp(f, (centre,), (tangent,))
        terms = [f0, d1]
    else:
        it = _internals()

        def flat_f(*leaves):
            return f(jax.tree_util.tree_unflatten(x_tree, leaves))

        # The line t -> x + t·v has Taylor coefficients (v, 0, 0, ...); the zeros stay symbolic.
        series = [[v] + [it.zero_term] * (order - 1) for v in directions]
        out_tree, out_primals, out_series = it.taylor(flat_f, x_leaves, series, order)
        out_series = it.instantiate(out_primals, out_series)
        terms = [jax.tree_util.tree_unflatten(out_tree, out_primals)]
        for j in range(order):
            terms.append(jax.tree_util.tree_unflatten(out_tree, [s[j] for s in out_series]))
    value = _tree_sum(terms)
    return (value, terms) if return_terms else value

