"""The Taylor-mode interpreter behind :func:`jetjax.jet`, and its correct fallback.

``taylor(fun, primals, series, order)`` pushes Taylor series through ``fun`` with a trace of our own,
a subclass of the stock ``JetTrace`` of ``jax.experimental.jet``. Compared with the stock trace it

* keeps zero coefficients symbolic through linear and bilinear primitives and across nested ``jit``
  (a constant weight matrix adds one product per order, not ``O(order)``);
* differentiates the primal function of ``custom_jvp`` / ``custom_vjp`` calls inside the trace (the
  stock trace leaks tracers there: ``jax.nn.relu`` fails);
* broadcasts in the ``min`` rule (``jnp.minimum(x, 0.5)``, ``jnp.clip``) and adds rules for ``tan``,
  ``argmax``, ``argmin``, ``top_k`` and ``sort``.

The stock rule table is read, never modified. Each rule below is a module-level function that can be
called alone on arrays (the tests do).

**Version guards.** The interpreter needs private internals of jax. They are imported once, in one
``try`` below, each line labelled with the jax version it was checked against; a failure is recorded
in :data:`INTERNALS_ERROR` instead of raised, and the definitions that subclass or wrap stock objects
are only made when the imports succeeded. On first use :func:`selected_path` also runs a cheap
self-check (the jet of a small known polynomial, with a nested ``jit`` and a ``custom_jvp`` inside,
against its exact coefficients). When either fails, orders >= 2 use :func:`nested_jvp_taylor`
(nested ``jax.jvp``: public API only, same values, slower to compile) after ONE warning. The choice can
be forced with the environment variable ``JETJAX_TAYLOR`` (``auto`` | ``taylor`` | ``fallback``, read
once at first use) or, in tests, by setting :data:`FORCE`.

Example:
  >>> import numpy as np
  >>> from jetjax.jet import taylor
  >>> x, v = np.float32(1.0), np.float32(2.0)                  # the line t -> 1 + 2 t
  >>> out, coeffs = taylor.nested_jvp_taylor(lambda z: z ** 3, [x], [v], 3)
  >>> float(out), [float(c) for c in coeffs]                    # (1 + 2t)^3 = 1 + 6t + 12t^2 + 8t^3
  (1.0, [6.0, 12.0, 8.0])
  >>> taylor.selected_path() in ("taylor", "fallback")
  True
"""

from __future__ import annotations

import math
import os
import warnings
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "JetRuleError", "TESTED_JAX", "TESTED_RANGE", "ENV_VAR", "FORCE", "FALLBACK_MAX_ORDER", "INTERNALS_ERROR",
    "AVAILABLE",
    "taylor", "nested_jvp_taylor", "selected_path", "reset_path", "self_check", "apply_rule",
    "instantiate", "missing_rule_message", "linear_rule", "bilinear_rule", "min_rule", "zero_rule",
    "tan_rule", "top_k_rule", "sort_rule", "jit_rule", "OVERRIDES", "version_tuple",
]

# jax versions (major, minor) whose internals this module was checked against, and the pip range.
TESTED_JAX = ((0, 10),)
TESTED_RANGE = ">=0.10.2,<0.11"

# Environment variable choosing the path for orders >= 2: auto (default), taylor, fallback.
ENV_VAR = "JETJAX_TAYLOR"
PATH_CHOICES = ("auto", "taylor", "fallback")

# The highest order the nested-jvp fallback accepts (jetjax.jet checks it): its compile time explodes
# with the order (one GPT-2 block, d=128, 2 CPU cores: 4.9 s at order 2, 7.7 s at 4, 41 s at 6).
FALLBACK_MAX_ORDER = 6

# Tests set this to "taylor" or "fallback" (monkeypatch) to force a path on every call; None: decide.
FORCE: str | None = None


class JetRuleError(NotImplementedError):
    """A primitive inside a jetted function has no Taylor-mode rule."""


# Primitives users meet most often without a rule, with what to do about them.
HINTS = {
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


def version_tuple(v: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string.

    >>> version_tuple("0.10.2"), version_tuple("0.11.0rc1"), version_tuple("1.2.dev3")
    ((0, 10), (0, 11), (1, 2))
    """
    out = []
    for part in v.split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Version-labelled guards: every private name we use, fetched once. Nothing here raises at import.

INTERNALS_ERROR: str | None = None
try:
    from jax.experimental import jet as stock            # jax 0.10: module jax/experimental/jet.py
    from jax._src import api_util                        # jax 0.10: debug_info(name, fun, args, kwargs)
    from jax._src import core                            # jax 0.10: stackless tracing (set_current_trace)
    from jax._src import linear_util as lu               # jax 0.10: transformation2 / _with_aux2, wrap_init
    from jax._src import sharding_impls                  # jax 0.10: UNSPECIFIED
    from jax._src.interpreters import partial_eval as pe  # jax 0.10: trace_to_jaxpr_dynamic(f, avals)
    from jax._src.pjit import jit_p                      # jax 0.10: params jaxpr, in/out_shardings, ...
    from jax._src.util import unzip2, weakref_lru_cache  # jax 0.10

    JetTrace = stock.JetTrace                 # jax 0.10: (tag, parent_trace, order), to_primal_terms_pair
    JetTracer = stock.JetTracer               # jax 0.10: JetTracer(trace, primal, terms)
    JetTrace.to_primal_terms_pair             # jax 0.10: val -> (primal, terms | zero_series)
    jet_rules = stock.jet_rules               # jax 0.10: primitive -> rule(primals, series, **params)
    zero_term = stock.zero_term               # jax 0.10: a registered empty pytree
    zero_series = stock.zero_series           # jax 0.10: a registered empty pytree
    linear_prop = stock.linear_prop           # jax 0.10: rules are partial(linear_prop, prim)
    stock_bilinear_rule = stock._bilinear_taylor_rule  # jax 0.10: partial(_bilinear_taylor_rule, prim)
    core.take_current_trace, core.set_current_trace, core.TraceTag  # jax 0.10
    core.jaxpr_as_fun, core.ClosedJaxpr, core.typeof, core.shaped_abstractify  # jax 0.10
    lu.transformation2, lu.transformation_with_aux2, lu.wrap_init  # jax 0.10
    UNSPECIFIED = sharding_impls.UNSPECIFIED  # jax 0.10
    trace_to_jaxpr_dynamic = pe.trace_to_jaxpr_dynamic  # jax 0.10: -> (jaxpr, out_avals, consts)
except (ImportError, AttributeError) as err:  # a jax whose internals moved: the fallback takes over
    INTERNALS_ERROR = f"{type(err).__name__}: {err}"

AVAILABLE = INTERNALS_ERROR is None


def missing_rule_message(prim) -> str:
    """What to tell a user whose function uses ``prim``, which has no Taylor-mode rule.

    >>> missing_rule_message(jax.lax.cond_p)[:60]
    "jetjax.jet: no Taylor-mode (jet) rule for the primitive 'con"
    """
    name = getattr(prim, "name", str(prim))
    hint = HINTS.get(name) or "rewrite that step with primitives jet supports, or register a rule for it"
    return (f"jetjax.jet: no Taylor-mode (jet) rule for the primitive '{name}'. "
            f"Likely cause and fix: {hint}.")


# --------------------------------------------------------------------------------------------
# Rules. Each takes the primal inputs and one list of ``order`` Taylor coefficients per input
# (``zero_term`` marks a known zero) and returns ``(primal_out, coefficients_out)``; coefficients
# are not factorial-scaled: x(t) = x0 + Σ_j c_j t^j.

def zeros_like(x):
    return jnp.zeros(np.shape(x), dtype=jnp.result_type(x))


def instantiate(primals, series):
    """Replace every symbolic ``zero_term`` by an array of zeros shaped like its primal."""
    return [[zeros_like(x) if t is zero_term else t for t in s] for x, s in zip(primals, series)]


def linear_rule(prim, primals, series, **params):
    """A linear primitive: each coefficient goes through ``prim``; all-zero coefficients stay symbolic."""
    primal_out = prim.bind(*primals, **params)
    order = len(series[0])
    outs = []
    for j in range(order):
        terms = [s[j] for s in series]
        if all(t is zero_term for t in terms):
            out = ([zero_term] * len(primal_out)) if prim.multiple_results else zero_term
        else:
            out = prim.bind(*[zeros_like(x) if t is zero_term else t for x, t in zip(primals, terms)], **params)
        outs.append(out)
    if prim.multiple_results:
        return primal_out, [list(ts) for ts in zip(*outs)]
    return primal_out, outs


def bilinear_rule(prim, primals, series, **params):
    """A bilinear primitive (mul, dot_general): the Cauchy product, skipping products with a zero factor."""
    op = partial(prim.bind, **params)
    u = [primals[0]] + list(series[0])
    w = [primals[1]] + list(series[1])
    v = []
    for k in range(len(u)):
        parts = [op(u[j], w[k - j]) for j in range(k + 1)
                 if u[j] is not zero_term and w[k - j] is not zero_term]
        v.append(sum(parts[1:], parts[0]) if parts else zero_term)
    return v[0], v[1:]


def min_rule(primals, series, **_):
    """``lax.min`` with broadcasting (the stock rule fails on ``jnp.minimum(x, 0.5)``); ties average."""
    x, y = jnp.broadcast_arrays(*primals)
    less, equal = x < y, x == y
    out = []
    for tx, ty in zip(*series):
        tx, ty = jnp.broadcast_arrays(tx, ty)
        out.append(lax.select(equal, (tx + ty) / 2, lax.select(less, tx, ty)))
    return lax.select(less, x, y), out


def zero_rule(prim, primals, series, **params):
    """A piecewise-constant primitive (argmax, argmin): the output's coefficients are all zero."""
    return prim.bind(*primals, **params), zero_series


def tan_rule(primals, series, **_):
    """``tan`` by the recurrence of ``t' = (1 + t^2) u'``: with ``s = 1 + t^2``,
    ``t_k = (1/k) Σ_{j=1..k} j u_j s_{k-j}`` and ``s_k = Σ_{j=0..k} t_j t_{k-j}``."""
    (x,), (u_terms,) = primals, series
    u = [x] + list(u_terms)
    t = [lax.tan(x)]
    s = [1 + t[0] * t[0]]
    for k in range(1, len(u)):
        t.append(sum(j * u[j] * s[k - j] for j in range(1, k + 1)) / k)
        s.append(sum(t[j] * t[k - j] for j in range(k + 1)))
    return t[0], t[1:]


def top_k_rule(primals, series, **params):
    """``lax.top_k``: the values' coefficients follow the selected indices; the indices have none.
    (jax 0.10 added an ``axis`` parameter; older ones select along the last axis.)"""
    values, idx = lax.top_k_p.bind(*primals, **params)
    axis = params.get("axis", -1)
    terms = [jnp.take_along_axis(t, idx, axis=axis) for t in series[0]]
    return (values, idx), [terms, zero_series]


def sort_rule(primals, series, *, dimension, is_stable, num_keys):
    """``lax.sort``: every operand's coefficient is carried along with the keys (one permutation)."""
    n = len(primals)
    sort = partial(lax.sort_p.bind, dimension=dimension, is_stable=is_stable, num_keys=num_keys)
    primal_out = sort(*primals)
    order = len(series[0])
    terms_out = [[sort(*primals, series[i][j])[n] for j in range(order)] for i in range(n)]
    return primal_out, terms_out


def jit_rule(primals, series, **params):
    """A nested ``jit`` call: its body is traced with our trace into a new jitted call whose extra
    inputs and outputs are the non-zero coefficients (zeros stay symbolic across the boundary)."""
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
        "in_shardings": params["in_shardings"] + (UNSPECIFIED,) * n_in_extra,
        "out_shardings": params["out_shardings"] + (UNSPECIFIED,) * n_out_extra,
        "in_layouts": params["in_layouts"] + (None,) * n_in_extra,
        "out_layouts": params["out_layouts"] + (None,) * n_out_extra,
        "donated_invars": params["donated_invars"] + (False,) * n_in_extra,
    }
    result = jit_p.bind(*flat, **new_params)
    primals_out, series_out = jax.tree_util.tree_unflatten(out_tree, result)
    series_out = [zero_series if all(t is zero_term for t in s) else s for s in series_out]
    return primals_out, series_out


OVERRIDES: dict[Any, Callable] = {}


def apply_rule(prim, primals, series, params):
    """Our rule for ``prim`` when we have one, else the stock rule (linear and bilinear stock rules
    are replaced by ours, which keep zeros symbolic). ``JetRuleError`` when there is none."""
    rule = OVERRIDES.get(prim)
    if rule is not None:
        if rule is not jit_rule:  # only the jit rule takes symbolic zeros
            series = instantiate(primals, series)
        return rule(primals, series, **params)
    stock_rule = jet_rules.get(prim)
    if stock_rule is None:
        raise JetRuleError(missing_rule_message(prim))
    if isinstance(stock_rule, partial) and stock_rule.func is linear_prop:
        return linear_rule(stock_rule.args[0], primals, series, **params)
    if isinstance(stock_rule, partial) and stock_rule.func is stock_bilinear_rule:
        return bilinear_rule(stock_rule.args[0], primals, series, **params)
    return stock_rule(primals, instantiate(primals, series), **params)


def as_series(terms):
    return terms if terms is zero_series else list(terms)


# --------------------------------------------------------------------------------------------
# The trace and its entry points: only where the stock classes imported.

if AVAILABLE:
    OVERRIDES.update({
        lax.min_p: min_rule,
        lax.tan_p: tan_rule,
        lax.argmax_p: partial(zero_rule, lax.argmax_p),
        lax.argmin_p: partial(zero_rule, lax.argmin_p),
        lax.top_k_p: top_k_rule,
        lax.sort_p: sort_rule,
        jit_p: jit_rule,
    })

    class TaylorTrace(JetTrace):
        """The stock ``JetTrace`` with symbolic zeros, custom-derivative calls traced inside, our rules."""

        def process_primitive(self, primitive, tracers, params, /):
            order = self.order
            primals_in, series_in = unzip2(map(self.to_primal_terms_pair, tracers))
            if all(s is zero_series for s in series_in):
                avals = tuple(core.typeof(x) for x in primals_in)
                out = primitive.bind_with_trace(self.parent_trace, primals_in, avals, params)
                if primitive.multiple_results:
                    return [JetTracer(self, p, zero_series) for p in out]
                return JetTracer(self, out, zero_series)
            series_in = [[zero_term] * order if s is zero_series else list(s) for s in series_in]
            with core.set_current_trace(self.parent_trace):
                primal_out, terms_out = apply_rule(primitive, primals_in, series_in, params)
            if not primitive.multiple_results:
                return JetTracer(self, primal_out, as_series(terms_out))
            terms_out = [zero_series] * len(primal_out) if terms_out is zero_series else terms_out
            return [JetTracer(self, p, as_series(t)) for p, t in zip(primal_out, terms_out)]

        def process_call(self, call_primitive, f, tracers, params, /):
            raise JetRuleError(missing_rule_message(call_primitive))

        # The stock trace calls these without making itself the current trace, so the primal
        # function's operations escape it (UnexpectedTracerError). We ignore the custom rule (as the
        # stock trace means to) and differentiate the primal function inside our trace.
        def process_custom_jvp_call(self, primitive, fun, jvp, tracers, /, *, symbolic_zeros):
            with core.set_current_trace(self):
                return fun.call_wrapped(*tracers)

        def process_custom_vjp_call(self, primitive, fun, fwd, bwd, tracers, /, *, out_trees, symbolic_zeros):
            with core.set_current_trace(self):
                return fun.call_wrapped(*tracers)

    @lu.transformation2
    def subtrace(f, tag, order, primals, series):
        """Run ``f`` on tracers of a fresh :class:`TaylorTrace`; return primals and coefficients."""
        with core.take_current_trace() as parent_trace:
            trace = TaylorTrace(tag, parent_trace, order)
            in_tracers = [JetTracer(trace, p, list(s)) for p, s in zip(primals, series)]
            with core.set_current_trace(trace):
                ans = f(*in_tracers)
            return unzip2(map(trace.to_primal_terms_pair, ans))

    @lu.transformation2
    def jet_fun(f, order, primals, series):
        """A fresh trace tag per call; output series of constants become ``order`` zero terms."""
        out_primals, out_terms = f(core.TraceTag(), order, primals, series)
        return out_primals, [[zero_term] * order if s is zero_series else list(s) for s in out_terms]

    @lu.transformation_with_aux2
    def flatten_output(f, store, *args):
        """Flatten ``f``'s output pytree, storing its structure."""
        out, tree = jax.tree_util.tree_flatten(f(*args))
        store.store(tree)
        return out

    @lu.transformation_with_aux2
    def flatten_io(f, store, in_tree, *flat):
        """``f(primals, series)`` as a function of flat leaves (symbolic zeros are empty pytrees)."""
        primals, series = jax.tree_util.tree_unflatten(in_tree, flat)
        out_flat, out_tree = jax.tree_util.tree_flatten(f(primals, series))
        store.store(out_tree)
        return out_flat

    @weakref_lru_cache
    def jet_jaxpr(jaxpr, order, avals, in_tree):
        """The jaxpr of a ``jit`` body, Taylor-transformed by our trace (cached per body and signature)."""
        f = lu.wrap_init(core.jaxpr_as_fun(jaxpr), debug_info=jaxpr.jaxpr.debug_info.with_unknown_names())
        f_jet, out_tree = flatten_io(jet_fun(subtrace(f), order), in_tree)
        jaxpr_jet, _, consts = trace_to_jaxpr_dynamic(f_jet, avals)
        return core.ClosedJaxpr(jaxpr_jet, consts), out_tree


def taylor(fun: Callable, primals, series, order: int):
    """Taylor coefficients of ``fun(*primals)`` along input coefficients ``series``, by our trace.

    ``primals`` is a list of arrays, ``series`` one list of ``order`` coefficients per primal
    (``zero_term`` for known zeros). Returns ``(out_tree, out_primals, out_series)``: ``fun``'s output
    structure, its flat leaves and one list of ``order`` coefficients per leaf (possibly
    ``zero_term``; :func:`instantiate` makes them arrays). Needs :data:`AVAILABLE`.

    >>> import numpy as np
    >>> if AVAILABLE:
    ...     line = [[np.float32(2.0), zero_term, zero_term]]                 # 1 + 2t
    ...     _, out, coeffs = taylor(lambda z: z ** 3, [np.float32(1.0)], line, 3)
    ...     print([float(c) for c in instantiate(out, coeffs)[0]])
    ... else:
    ...     print([6.0, 12.0, 8.0])
    [6.0, 12.0, 8.0]
    """
    if not AVAILABLE:
        raise RuntimeError(f"jetjax.jet.taylor: jax {jax.__version__} lacks the internals the Taylor-mode "
                           f"interpreter needs ({INTERNALS_ERROR}); use nested_jvp_taylor")
    wrapped = lu.wrap_init(fun, debug_info=api_util.debug_info("jetjax.jet", fun, primals, {}))
    f, out_tree = flatten_output(wrapped)
    out_primals, out_terms = jet_fun(subtrace(f), order).call_wrapped(primals, series)
    return out_tree(), out_primals, out_terms


# --------------------------------------------------------------------------------------------
# The fallback: nested jax.jvp, public API only.

def nested_jvp_taylor(fun: Callable, primals, directions, order: int):
    """Taylor coefficients of ``t -> fun(*(p + t·d))`` at ``t = 0`` by ``order`` nested ``jax.jvp``.

    Returns ``(out, coeffs)``: ``fun(*primals)`` (any pytree) and a list of ``order`` pytrees of that
    structure, ``coeffs[j-1] = D^j fun[d^j] / j!``. Same values as :func:`taylor` on the line
    ``series = [[d, 0, 0, ...]]``; slower to compile (each level differentiates the one below).
    """
    primals, directions = tuple(primals), tuple(directions)

    def differentiate(h):
        def g(*zs):
            outs, tangents = jax.jvp(h, zs, directions)
            return outs + (tangents[-1],)
        return g

    g = lambda *zs: (fun(*zs),)
    for _ in range(order):
        g = differentiate(g)
    derivs = g(*primals)
    out = derivs[0]

    def scale(j):
        def leaf(d, p):
            if d.dtype == jax.dtypes.float0:  # an integer output: its coefficients are zero
                return zeros_like(p)
            return d / math.factorial(j)
        return leaf

    return out, [jax.tree_util.tree_map(scale(j), derivs[j], out) for j in range(1, order + 1)]


# --------------------------------------------------------------------------------------------
# Which path: decided once, at first use.

DECISION: str | None = None  # "taylor" or "fallback" once decided
REASON: str | None = None    # why the fallback was chosen


def self_check() -> str | None:
    """``None`` when our interpreter gives the exact Taylor coefficients of a small polynomial with a
    nested ``jit``, ``custom_jvp`` (relu), ``dot_general``, ``mul`` and ``integer_pow`` inside; otherwise
    the reason. Runs eagerly even inside an outer trace; costs a few milliseconds."""
    if not AVAILABLE:
        return f"its internals did not import ({INTERNALS_ERROR})"
    x = np.array([0.5, -1.0, 2.0], np.float32)
    v = np.array([1.0, 2.0, -0.5], np.float32)
    a = np.array([1.5, -2.0, 0.25], np.float32)
    m = np.array([[1.0, 0.5, 0.0], [0.0, -1.0, 2.0], [0.25, 0.0, 1.0]], np.float32)
    inner = jax.jit(lambda z, w: z @ (w @ z))

    def f(z):
        return jnp.sum(a * z ** 3) + inner(z, m) + jnp.sum(jax.nn.relu(z) * z)

    # Exact coefficients of p(t) = f(x + t v) in float64 (relu(z) z = z^2 where x > 0, 0 elsewhere).
    x64, v64, a64, m64 = (np.asarray(arr, np.float64) for arr in (x, v, a, m))
    want = np.zeros(5)
    want[:4] += [a64 @ x64 ** 3, 3 * a64 @ (x64 ** 2 * v64), 3 * a64 @ (x64 * v64 ** 2), a64 @ v64 ** 3]
    want[:3] += [x64 @ m64 @ x64, v64 @ m64 @ x64 + x64 @ m64 @ v64, v64 @ m64 @ v64]
    pos = x64 > 0
    want[:3] += [x64[pos] @ x64[pos], 2 * x64[pos] @ v64[pos], v64[pos] @ v64[pos]]
    try:
        with jax.ensure_compile_time_eval():
            _, out, coeffs = taylor(f, [x], [[v, zero_term, zero_term, zero_term]], 4)
            got = np.array([float(out[0])] + [float(c) for c in instantiate(out, coeffs)[0]])
    except Exception as err:  # any failure of the internals means: do not trust them
        return f"its self-check raised {type(err).__name__}: {err}"
    if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
        return f"its self-check gave Taylor coefficients {got.tolist()} instead of {want.tolist()}"
    return None


def reset_path() -> None:
    """Forget the path decided at first use (tests; after changing ``JETJAX_TAYLOR``)."""
    global DECISION, REASON
    DECISION = REASON = None


def selected_path() -> str:
    """``"taylor"`` (our interpreter) or ``"fallback"`` (nested ``jax.jvp``) for orders >= 2.

    :data:`FORCE` wins when set. Otherwise decided once from ``JETJAX_TAYLOR``: ``auto`` (default)
    uses the interpreter when its internals import and :func:`self_check` passes, else warns once
    and falls back; ``taylor`` raises ``RuntimeError`` instead of falling back (for CI on a new jax);
    ``fallback`` always falls back, silently. On a jax outside :data:`TESTED_JAX` whose internals
    pass, one warning says so.
    """
    global DECISION, REASON
    if FORCE is not None:
        if FORCE not in ("taylor", "fallback"):
            raise ValueError(f"jetjax.jet.taylor.FORCE={FORCE!r} is not one of 'taylor', 'fallback', None")
        if FORCE == "taylor" and not AVAILABLE:
            raise RuntimeError(f"jetjax.jet.taylor.FORCE='taylor' but jax {jax.__version__} lacks the "
                               f"interpreter's internals ({INTERNALS_ERROR})")
        return FORCE
    if DECISION is not None:
        return DECISION
    raw = os.environ.get(ENV_VAR, "auto")
    mode = raw.strip().lower() or "auto"
    if mode not in PATH_CHOICES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not one of {', '.join(map(repr, PATH_CHOICES))}")
    if mode == "fallback":
        DECISION, REASON = "fallback", f"{ENV_VAR}=fallback"
        return DECISION
    problem = self_check()
    tested = f"jetjax's Taylor-mode interpreter (tested with jax{TESTED_RANGE})"
    # stacklevel 4: selected_path <- jet internals <- jj.jet <- the caller's line
    if problem is not None:
        if mode == "taylor":
            raise RuntimeError(f"{ENV_VAR}=taylor, but {tested} cannot run on the installed jax "
                               f"{jax.__version__}: {problem}")
        warnings.warn(f"{tested} cannot run on the installed jax {jax.__version__}: {problem}. "
                      f"jetjax.jet orders >= 2 now use nested jax.jvp (same values, slower to compile, "
                      f"orders <= {FALLBACK_MAX_ORDER}). Install 'jax{TESTED_RANGE}' for speed, or set "
                      f"{ENV_VAR}=fallback to silence this warning.", RuntimeWarning, stacklevel=4)
        DECISION, REASON = "fallback", problem
        return DECISION
    if version_tuple(jax.__version__) not in TESTED_JAX:
        warnings.warn(f"{tested} runs on jax {jax.__version__}, which is untested: its internals import "
                      f"and pass jetjax's self-check, so it is used.", RuntimeWarning, stacklevel=4)
    DECISION = "taylor"
    return DECISION
