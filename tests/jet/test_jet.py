"""jetjax.jet against exact polynomials, analytic derivatives and nested jax.jvp."""

import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import jetjax as jj


def nested_jvp_terms(f, x, y, order):
    """Taylor terms D^j f(x)[v^j]/j! by j nested jax.jvp calls (independent of Taylor mode)."""
    v = jax.tree_util.tree_map(lambda a, b: b - a, x, y)
    terms, g = [], f
    for j in range(order + 1):
        terms.append(jax.tree_util.tree_map(lambda t, j=j: t / math.factorial(j), g(x)))
        g = (lambda h: lambda z: jax.jvp(h, (z,), (v,))[1])(g)
    return terms


def cubic(v):
    a = jnp.asarray([1.5, -2.0, 0.5], v.dtype)
    return jnp.sum(a * v**3) + v[0] * v[1] * v[2] - 2.0 * v[1] ** 2 + v[2]


def test_cubic_exact_at_order_3_and_order_4_equals_order_3():
    x = jnp.asarray([0.3, -0.7, 1.1])
    y = jnp.asarray([-1.2, 0.4, 2.0])
    j3 = jj.jet(cubic, x, y, 3)
    j4, terms4 = jj.jet(cubic, x, y, 4, return_terms=True)
    np.testing.assert_allclose(j3, cubic(y), rtol=1e-5)
    np.testing.assert_allclose(j4, j3, rtol=1e-6)
    assert abs(float(terms4[4])) < 1e-5  # the 4th derivative of a cubic vanishes
    # orders below 3 are genuinely truncated
    assert abs(float(jj.jet(cubic, x, y, 2)) - float(cubic(y))) > 1.0


def test_analytic_hessian_term():
    # f(x) = sin(x0 + 3 x1 + x0^3 x1): the order-2 term is v^T H v / 2 with the analytic Hessian.
    f = lambda x: jnp.sin(x[0] + 3 * x[1] + x[0] ** 3 * x[1])
    with jax.enable_x64(True):
        x = jnp.asarray([0.4, -0.3], jnp.float64)
        y = jnp.asarray([0.9, 0.2], jnp.float64)
        v = np.asarray(y - x)
        x0, x1 = 0.4, -0.3
        u = x0 + 3 * x1 + x0**3 * x1
        du = np.array([1 + 3 * x0**2 * x1, 3 + x0**3])
        d2u = np.array([[6 * x0 * x1, 3 * x0**2], [3 * x0**2, 0.0]])
        grad = np.cos(u) * du
        hess = -np.sin(u) * np.outer(du, du) + np.cos(u) * d2u
        _, terms = jj.jet(f, x, y, 2, return_terms=True)
        np.testing.assert_allclose(float(terms[0]), np.sin(u), rtol=1e-13)
        np.testing.assert_allclose(float(terms[1]), grad @ v, rtol=1e-12)
        np.testing.assert_allclose(float(terms[2]), v @ hess @ v / 2, rtol=1e-12)


def test_pytree_inputs_and_outputs():
    def f(p):
        return {"a": jnp.tanh(p["w"] @ p["x"]), "b": (p["w"] ** 2).sum() * p["x"][0]}

    x = {"w": jnp.asarray([[0.2, -0.1], [0.3, 0.5]]), "x": jnp.asarray([1.0, -0.5])}
    y = {"w": jnp.asarray([[0.1, 0.1], [0.2, 0.4]]), "x": jnp.asarray([0.7, 0.2])}
    for order in (1, 2, 3):
        value, terms = jj.jet(f, x, y, order, return_terms=True)
        ref = nested_jvp_terms(f, x, y, order)
        for t, r in zip(terms, ref):
            for key in ("a", "b"):
                np.testing.assert_allclose(t[key], r[key], rtol=2e-5, atol=1e-6)
        summed = jax.tree_util.tree_map(lambda *ts: sum(ts[1:], ts[0]), *terms)
        np.testing.assert_allclose(value["a"], summed["a"], rtol=1e-6)


def test_order_zero_is_f_at_centre_and_order_one_is_linearisation():
    f = lambda v: jnp.exp(v).sum()
    x, y = jnp.asarray([0.1, 0.2]), jnp.asarray([1.0, -1.0])
    np.testing.assert_allclose(jj.jet(f, x, y, 0), f(x), rtol=1e-7)
    lin = f(x) + jnp.exp(x) @ (y - x)
    np.testing.assert_allclose(jj.jet(f, x, y, 1), lin, rtol=1e-6)


@pytest.mark.parametrize("name,f", [
    ("relu", lambda v: jax.nn.relu(v) * v),
    ("clip", lambda v: jnp.clip(v, -0.5, 0.5) ** 2),
    ("minimum_scalar", lambda v: jnp.minimum(v, 0.25) * jnp.sin(v)),
    ("gelu", lambda v: jax.nn.gelu(v, approximate=False)),
    ("softmax", lambda v: jax.nn.softmax(v)),
    ("silu", jax.nn.silu),
    ("tan", jnp.tan),
    ("top_k", lambda v: jax.lax.top_k(v**2, 2)[0]),
    ("sort", lambda v: jnp.sort(jnp.sin(v))),
    ("argmax", lambda v: v[jnp.argmax(v)] * v),
])
def test_functions_stock_jet_cannot_handle(name, f):
    x = jnp.asarray([-0.9, -0.2, 0.3, 0.8])
    y = jnp.asarray([-0.7, -0.25, 0.35, 0.6])  # stays on the same side of every kink
    for order in (2, 4):
        _, terms = jj.jet(f, x, y, order, return_terms=True)
        for t, r in zip(terms, nested_jvp_terms(f, x, y, order)):
            np.testing.assert_allclose(t, r, rtol=1e-4, atol=1e-6, err_msg=f"{name} order {order}")


def test_relu_net_is_piecewise_linear():
    w1 = jnp.asarray([[1.0, -2.0], [0.5, 1.0]])
    f = lambda v: jnp.sum(jax.nn.relu(v @ w1))
    x, y = jnp.asarray([1.0, 0.2]), jnp.asarray([1.2, 0.3])  # same activation pattern
    np.testing.assert_allclose(jj.jet(f, x, y, 3), f(y), rtol=1e-6)


def test_jit_vmap_grad():
    f = lambda v: jnp.sum(jnp.sin(v) * jnp.cos(2 * v))
    x = jnp.asarray([0.1, 0.5, -0.3])
    ys = jnp.asarray([[0.2, 0.4, 0.0], [1.0, -1.0, 0.5]])
    eager = jnp.stack([jj.jet(f, x, y, 4) for y in ys])
    jitted = jax.jit(lambda y: jj.jet(f, x, y, 4))
    np.testing.assert_allclose(jnp.stack([jitted(y) for y in ys]), eager, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda y: jj.jet(f, x, y, 4))(ys), eager, rtol=1e-6)
    # gradient with respect to the variate and the centre, against nested-jvp terms
    ref_fn = lambda x_, y_: sum(nested_jvp_terms(f, x_, y_, 4))
    for argnum in (0, 1):
        g = jax.grad(lambda x_, y_: jj.jet(f, x_, y_, 4), argnums=argnum)(x, ys[0])
        g_ref = jax.grad(ref_fn, argnums=argnum)(x, ys[0])
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_nested_jit_inside_jetted_function():
    inner = jax.jit(lambda a, w: jnp.tanh(a @ w))
    w = jnp.asarray([[0.3, -0.2], [0.1, 0.4]])
    f = lambda v: inner(v, w).sum() ** 2
    x, y = jnp.asarray([0.5, 0.1]), jnp.asarray([-0.2, 0.8])
    _, terms = jj.jet(f, x, y, 5, return_terms=True)
    for t, r in zip(terms, nested_jvp_terms(f, x, y, 5)):
        np.testing.assert_allclose(t, r, rtol=1e-4, atol=1e-6)


def _count_dots(jaxpr):
    n = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count_dots(sub)
    return n


@pytest.mark.parametrize("order", [2, 4, 6])
def test_constant_weights_cost_one_matmul_per_order(order):
    # Stock jet instantiates zero series for the weight: (k+1)(k+2)/2 products. We keep k+1
    # (one per Taylor coefficient of tanh(x)), and 2 for a linear map of the input line.
    w = jnp.ones((5, 3))
    cases = [(lambda v: jnp.tanh(v) @ w, order + 1), (jax.jit(lambda v: jnp.tanh(v) @ w), order + 1),
             (lambda v: v @ w, 2)]
    for f, n_dots in cases:
        jaxpr = jax.make_jaxpr(lambda x, y: jj.jet(f, x, y, order))(jnp.ones(5), jnp.ones(5))
        assert _count_dots(jaxpr.jaxpr) == n_dots


def test_missing_rule_names_primitive_and_fix():
    def looped(v):
        return jax.lax.scan(lambda c, _: (jnp.sin(c), None), v, None, length=3)[0]

    with pytest.raises(jj.JetRuleError, match=r"'scan'.*unroll the layer loop"):
        jj.jet(looped, jnp.ones(2), jnp.zeros(2), 2)

    def branchy(v):
        return jax.lax.cond(v[0] > 0, jnp.sin, jnp.cos, v)

    with pytest.raises(jj.JetRuleError, match=r"'cond'.*jnp.where"):
        jj.jet(branchy, jnp.ones(2), jnp.zeros(2), 3)


@pytest.mark.parametrize("order,err", [(-1, ValueError), (1.5, TypeError), (2.0, TypeError),
                                       (True, TypeError), ("2", TypeError)])
def test_bad_order(order, err):
    with pytest.raises(err, match="order"):
        jj.jet(jnp.sin, jnp.ones(2), jnp.zeros(2), order)


def test_bad_centre_variate():
    with pytest.raises(ValueError, match="differ"):
        jj.jet(jnp.sin, jnp.ones(2), jnp.zeros(3), 2)
    with pytest.raises(ValueError, match="structure"):
        jj.jet(lambda p: p["a"], {"a": jnp.ones(2)}, {"b": jnp.ones(2)}, 2)
    with pytest.raises(TypeError, match="floating"):
        jj.jet(lambda v: v * 2, jnp.ones(2, jnp.int32), jnp.zeros(2, jnp.int32), 2)


def test_stock_jet_rules_untouched():
    from jax.experimental import jet as stock

    before = dict(stock.jet_rules)
    jj.jet(jax.nn.relu, jnp.ones(2), jnp.zeros(2), 3)
    assert stock.jet_rules == before


def test_order_above_max_order_is_refused_before_f_runs():
    from jetjax.jet import MAX_ORDER

    calls = []
    f = lambda v: calls.append(1) or jnp.sin(v)
    above = rf"order {MAX_ORDER + 1} is above MAX_ORDER={MAX_ORDER}.*compile time"
    with pytest.raises(ValueError, match=above):
        jj.jet(f, jnp.ones(2), jnp.zeros(2), MAX_ORDER + 1)
    with pytest.raises(ValueError, match="order 100 is above MAX_ORDER"):
        jj.jet(f, jnp.ones(2), jnp.zeros(2), 100)
    assert calls == []
    # the limit itself is accepted and accurate: sin's Taylor series at order 16, |v| = 0.5
    x, y = jnp.asarray([0.3, -1.0]), jnp.asarray([0.8, -0.5])
    np.testing.assert_allclose(jj.jet(jnp.sin, x, y, MAX_ORDER), jnp.sin(y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("out,named", [
    ("text", r"str 'text'"),
    (None, r"NoneType None, which holds no array"),
    ({"a": 1.0, "b": "x"}, r"str 'x' at \['b'\]"),
    ([object], r"type <class 'object'> at \[0\]"),
])
def test_f_returning_a_non_array_is_named(order, out, named):
    f = lambda v: (out if not isinstance(out, dict) else {"a": v * out["a"], "b": out["b"]})
    with pytest.raises(TypeError, match=rf"jet: f returned {named}.*array or a pytree of arrays"):
        jj.jet(f, jnp.ones(2), jnp.zeros(2), order)


def test_f_returning_python_numbers_is_a_constant():
    f = lambda v: {"c": 3.0, "v": v ** 2}
    value, terms = jj.jet(f, jnp.ones(2), jnp.full(2, 2.0), 2, return_terms=True)
    assert float(value["c"]) == 3.0 and all(float(t["c"]) == 0.0 for t in terms[1:])
    np.testing.assert_allclose(value["v"], jnp.full(2, 4.0), rtol=1e-6)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_f_branching_in_python_on_a_traced_value_is_named(order):
    branchy = lambda v: jnp.sin(v) if v[0] > 0 else jnp.cos(v)
    to_float = lambda v: v * float(v.sum())
    to_numpy = lambda v: jnp.asarray(np.tanh(np.asarray(v)))
    x = jnp.ones(2)
    # under jit every order traces f abstractly; eagerly, order 1 (jax.jvp) sees concrete values
    runs = [lambda f: jax.jit(lambda a: jj.jet(f, a, 0.5 * a, order))(x)]
    if order >= 2:
        runs.append(lambda f: jj.jet(f, x, 0.5 * x, order))
    for run in runs:
        with pytest.raises(TypeError, match=r"f branched in Python on a traced value.*jnp.where") as info:
            run(branchy)
        assert isinstance(info.value.__cause__, jax.errors.ConcretizationTypeError)
        with pytest.raises(TypeError, match=r"branched in Python.*float\(\)"):
            run(to_float)
        with pytest.raises(TypeError, match=r"converted a traced value to a NumPy array.*jax.numpy"):
            run(to_numpy)
    if order == 1:  # the branch taken is differentiated, as jax.jvp does
        np.testing.assert_allclose(jj.jet(branchy, x, 0.5 * x, 1), jj.jet(jnp.sin, x, 0.5 * x, 1), rtol=1e-6)
    # order 0 on concrete inputs evaluates f as is; under jit it is traced and named the same way
    np.testing.assert_allclose(jj.jet(branchy, x, x, 0), jnp.sin(x))
    with pytest.raises(TypeError, match="f branched in Python"):
        jax.jit(lambda a: jj.jet(branchy, a, a, 0))(x)
