"""jetjax.jet.taylor: each Taylor-mode rule alone against nested jax.jvp / analytic derivatives, and the
nested-jvp fallback (forced, or chosen when the jax internals drift) against the interpreter."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jetjax as jj
from jetjax.jet import taylor
from tests.jet.test_jet import nested_jvp_terms

needs_internals = pytest.mark.skipif(not taylor.AVAILABLE, reason=f"jax internals: {taylor.INTERNALS_ERROR}")


@pytest.fixture(autouse=True)
def fresh_path(monkeypatch):
    """Each test decides the path afresh and leaves no decision (nor a nested-jit body traced with a
    monkeypatched rule) behind."""
    monkeypatch.delenv(taylor.ENV_VAR, raising=False)
    taylor.reset_path()
    yield
    taylor.reset_path()
    if taylor.AVAILABLE:
        taylor.jet_jaxpr.cache_clear()


def line_coefficients(f, x, series):
    """Taylor coefficients c_1..c_k of t -> f(x + Σ_j s_j t^j) at 0, by nested jvp in the scalar t."""
    k = len(series)
    path = lambda t: f(x + sum(s * t ** (j + 1) for j, s in enumerate(series)))
    out, g = [], path
    for j in range(1, k + 1):
        g = (lambda h: lambda t: jax.jvp(h, (t,), (jnp.ones_like(t),))[1])(g)
        out.append(g(jnp.zeros((), x.dtype)) / math.factorial(j))
    return out


def assert_terms_close(got, want, rtol=1e-5, atol=1e-6):
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want)):
        for gl, wl in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(w)):
            np.testing.assert_allclose(np.asarray(gl), np.asarray(wl), rtol=rtol, atol=atol,
                                       err_msg=f"term {j}")


X = jnp.asarray([-0.9, -0.2, 0.3, 0.8])
V1 = jnp.asarray([0.5, -1.0, 0.25, 2.0])
V2 = jnp.asarray([1.0, 0.3, -0.7, 0.1])


# ---- rules alone ------------------------------------------------------------------------------

@needs_internals
def test_min_rule_broadcasts_against_a_scalar_and_averages_ties():
    x = jnp.asarray([-0.9, 0.25, 0.3, 0.1])
    scalar = jnp.float32(0.25)
    series = [[V1, V2], [jnp.zeros(()), jnp.zeros(())]]
    out, terms = taylor.min_rule([x, scalar], series)
    np.testing.assert_array_equal(out, jnp.minimum(x, 0.25))
    less = np.asarray(x) < 0.25
    tie = np.asarray(x) == 0.25
    for got, v in zip(terms, (V1, V2)):
        want = np.where(less, np.asarray(v), 0.0)
        want[tie] = np.asarray(v)[tie] / 2  # a tie takes the mean of both sides' coefficients
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7)
    # away from the tie, against nested jvp along the line x + t v1 + t^2 v2
    ref = line_coefficients(lambda z: jnp.minimum(z, 0.25), x, [V1, V2])
    np.testing.assert_allclose(np.asarray(terms[0])[~tie], np.asarray(ref[0])[~tie], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(terms[1])[~tie], np.asarray(ref[1])[~tie], rtol=1e-6)


@needs_internals
def test_tan_rule_against_analytic_derivatives_and_nested_jvp():
    with jax.enable_x64(True):
        x = jnp.asarray([-0.9, -0.2, 0.3, 0.8], jnp.float64)
        v = jnp.asarray([0.5, -1.0, 0.25, 2.0], jnp.float64)
        w = jnp.asarray([1.0, 0.3, -0.7, 0.1], jnp.float64)
        zeros = jnp.zeros_like(x)
        out, terms = taylor.tan_rule([x], [[v, zeros, zeros]])
        T = np.tan(np.asarray(x))
        d1 = 1 + T**2                      # tan' = sec^2
        d2 = 2 * T * d1                    # tan''
        d3 = d1 * (2 + 6 * T**2)           # tan'''
        vv = np.asarray(v)
        np.testing.assert_allclose(out, T, rtol=1e-14)
        for got, want in zip(terms, (d1 * vv, d2 * vv**2 / 2, d3 * vv**3 / 6)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
        # a curved input line (two non-zero coefficients), up to order 5
        series = [v, w, zeros, zeros, zeros]
        _, terms = taylor.tan_rule([x], [series])
        assert_terms_close(terms, line_coefficients(jnp.tan, x, series), rtol=1e-11, atol=1e-12)


@needs_internals
def test_sort_rule_carries_every_coefficient_with_the_keys():
    params = dict(dimension=0, is_stable=True, num_keys=1)
    (out,), (terms,) = taylor.sort_rule([X], [[V1, V2]], **params)
    perm = np.argsort(np.asarray(X), kind="stable")
    np.testing.assert_array_equal(out, np.asarray(X)[perm])
    np.testing.assert_array_equal(terms[0], np.asarray(V1)[perm])
    np.testing.assert_array_equal(terms[1], np.asarray(V2)[perm])
    # two operands sorted by the first: the second's coefficients follow the same permutation
    y = jnp.asarray([4.0, 3.0, 2.0, 1.0])
    outs, series = taylor.sort_rule([-X, y], [[V1, V2], [V2, V1]], **params)
    perm = np.argsort(-np.asarray(X), kind="stable")
    np.testing.assert_array_equal(outs[1], np.asarray(y)[perm])
    np.testing.assert_array_equal(series[0][0], np.asarray(V1)[perm])
    np.testing.assert_array_equal(series[1][1], np.asarray(V1)[perm])


@needs_internals
@pytest.mark.parametrize("axis", [-1, 0])
def test_top_k_rule_follows_the_selected_indices_on_either_axis(axis):
    x = jnp.asarray([[0.3, -0.5, 0.9], [0.1, 0.7, -0.2]])
    v = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    w = -2.0 * v
    real_axis = axis % x.ndim
    (values, idx), (terms, idx_terms) = taylor.top_k_rule([x], [[v, w]], k=1, axis=real_axis)
    ref_values, ref_idx = lax.top_k(x, 1, axis=axis)
    np.testing.assert_array_equal(values, ref_values)
    np.testing.assert_array_equal(idx, ref_idx)
    assert idx_terms is taylor.zero_series
    np.testing.assert_array_equal(terms[0], np.take_along_axis(np.asarray(v), np.asarray(idx), axis))
    np.testing.assert_array_equal(terms[1], np.take_along_axis(np.asarray(w), np.asarray(idx), axis))
    # and through jj.jet, against nested jvp (no ties: the selection does not change on the line)
    f = lambda z: lax.top_k(z ** 2, 1, axis=axis)[0]
    _, jet_terms = jj.jet(f, x, x + 0.01 * v, 3, return_terms=True)
    assert_terms_close(jet_terms, nested_jvp_terms(f, x, x + 0.01 * v, 3))


@needs_internals
def test_zero_rule_gives_a_symbolic_zero_series():
    idx, series = taylor.zero_rule(lax.argmax_p, [X], [[V1, V2]], axes=(0,), index_dtype=jnp.int32)
    assert int(idx) == int(jnp.argmax(X))
    assert series is taylor.zero_series


@needs_internals
def test_bilinear_rule_skips_products_with_a_symbolic_zero():
    a, b = jnp.asarray([1.0, 2.0]), jnp.asarray([3.0, -1.0])
    a1 = jnp.asarray([0.5, 0.25])
    z = taylor.zero_term
    order = 3
    # b is a constant (all coefficients zero), a moves along a straight line: a + t a1
    out, terms = taylor.bilinear_rule(lax.mul_p, [a, b], [[a1, z, z], [z, z, z]])
    np.testing.assert_array_equal(out, a * b)
    np.testing.assert_array_equal(terms[0], a1 * b)
    assert terms[1] is z and terms[2] is z  # kept symbolic, not computed as zeros
    # products bound: ours 2 (a·b and a1·b); the stock rule on instantiated zeros (k+1)(k+2)/2
    def count_muls(rule, series):
        jaxpr = jax.make_jaxpr(lambda a_, b_, a1_: rule(lax.mul_p, [a_, b_], series(a1_))[0])(a, b, a1)
        return sum(e.primitive is lax.mul_p for e in jaxpr.jaxpr.eqns)

    ours = count_muls(taylor.bilinear_rule, lambda s: [[s, z, z], [z, z, z]])
    stock = count_muls(taylor.stock_bilinear_rule,
                       lambda s: [[s, jnp.zeros(2), jnp.zeros(2)], [jnp.zeros(2)] * 3])
    assert ours == 2
    assert stock == (order + 1) * (order + 2) // 2
    # same values as the stock rule
    _, stock_terms = taylor.stock_bilinear_rule(lax.mul_p, [a, b], [[a1, jnp.zeros(2), jnp.zeros(2)],
                                                                    [jnp.zeros(2)] * 3])
    assert_terms_close(taylor.instantiate([out], [terms])[0], stock_terms, rtol=0, atol=0)


@needs_internals
def test_linear_rule_keeps_zero_coefficients_symbolic():
    z = taylor.zero_term
    out, terms = taylor.linear_rule(lax.neg_p, [X], [[V1, z, V2]])
    np.testing.assert_array_equal(out, -X)
    np.testing.assert_array_equal(terms[0], -V1)
    assert terms[1] is z
    np.testing.assert_array_equal(terms[2], -V2)
    # add with one constant operand: the zero side is filled only where the other side moves
    out, terms = taylor.linear_rule(lax.add_p, [X, V2], [[V1, z], [z, z]])
    np.testing.assert_array_equal(out, X + V2)
    np.testing.assert_array_equal(terms[0], V1)
    assert terms[1] is z
    # apply_rule sends stock linear rules here
    _, via_apply = taylor.apply_rule(lax.neg_p, [X], [[V1, z, V2]], {})
    assert via_apply[1] is z


@needs_internals
def test_jit_rule_through_nested_jit_keeps_constant_inputs_and_outputs_symbolic():
    w = jnp.asarray([[0.3, -0.2, 0.1, 0.0], [0.1, 0.4, -0.3, 0.2]])
    inner = jax.jit(lambda a, m: jnp.tanh(m @ a))
    outer = jax.jit(lambda a, m: (jnp.sin(inner(a, m)), 2.0 * m))
    eqn = jax.make_jaxpr(outer)(X, w).jaxpr.eqns[0]
    assert eqn.primitive is taylor.jit_p
    z = taylor.zero_term
    (y, m2), (ys, ms) = taylor.jit_rule([X, w], [[V1, z, z, z], [z, z, z, z]], **eqn.params)
    np.testing.assert_allclose(y, jnp.sin(jnp.tanh(w @ X)), rtol=1e-6)
    np.testing.assert_array_equal(m2, 2.0 * w)
    assert ms is taylor.zero_series  # the constant output has no coefficients at all
    ref = line_coefficients(lambda a: jnp.sin(jnp.tanh(w @ a)), X, [V1] + [jnp.zeros(4)] * 3)
    assert_terms_close(ys, ref, rtol=1e-4, atol=1e-6)
    # the constant weight added no input to the Taylor-transformed call: X, w and V1 only
    staged = jax.make_jaxpr(lambda a, m, v: taylor.jit_rule([a, m], [[v, z, z, z], [z, z, z, z]], **eqn.params))
    (call,) = [e for e in staged(X, w, V1).jaxpr.eqns if e.primitive is taylor.jit_p]
    assert len(call.invars) == 3


@needs_internals
def test_apply_rule_names_a_missing_primitive_and_instantiate_fills_zeros():
    with pytest.raises(taylor.JetRuleError, match=r"'while'.*while_loop"):
        taylor.apply_rule(lax.while_p, [X], [[V1]], {})
    assert "jnp.where" in taylor.missing_rule_message(lax.cond_p)
    assert "register a rule" in taylor.missing_rule_message(lax.erfc_p if lax.erfc_p not in taylor.jet_rules
                                                             else "madeup_p")
    (filled,) = taylor.instantiate([jnp.ones((2, 3), jnp.float16)], [[taylor.zero_term, V1]])
    assert filled[0].shape == (2, 3) and filled[0].dtype == jnp.float16 and not filled[0].any()
    assert filled[1] is V1
    assert issubclass(taylor.TaylorTrace, taylor.JetTrace)
    assert jj.JetRuleError is taylor.JetRuleError


@needs_internals
def test_taylor_entry_on_flat_leaves_with_pytree_output():
    def f(a, b):
        return {"p": a * b, "s": jnp.sin(a)}

    z = taylor.zero_term
    out_tree, out, series = taylor.taylor(f, [X, V2], [[V1, z, z], [z, z, z]], 3)
    assert out_tree == jax.tree_util.tree_structure({"p": 0, "s": 0})
    series = taylor.instantiate(out, series)
    by_key = dict(zip(["p", "s"], series))
    ref_p = line_coefficients(lambda a: a * V2, X, [V1, jnp.zeros(4), jnp.zeros(4)])
    ref_s = line_coefficients(jnp.sin, X, [V1, jnp.zeros(4), jnp.zeros(4)])
    assert_terms_close(by_key["p"], ref_p)
    assert_terms_close(by_key["s"], ref_s)


def test_nested_jvp_taylor_on_a_polynomial_and_integer_output():
    # (1 + 2t)^3 = 1 + 6t + 12t^2 + 8t^3; an integer output has zero coefficients of its dtype
    out, coeffs = taylor.nested_jvp_taylor(lambda z: (z ** 3, jnp.argmax(z)), [jnp.float32(1.0)],
                                           [jnp.float32(2.0)], 4)
    assert float(out[0]) == 1.0
    assert [float(c[0]) for c in coeffs] == [6.0, 12.0, 8.0, 0.0]
    assert all(c[1].dtype == out[1].dtype and int(c[1]) == 0 for c in coeffs)


# ---- choosing the path, and the fallback --------------------------------------------------------

def test_self_check_passes_on_the_installed_jax():
    if not taylor.AVAILABLE:
        assert "did not import" in taylor.self_check()
    else:
        assert taylor.self_check() is None
        assert taylor.selected_path() == "taylor"


@needs_internals
def test_first_use_inside_jit_vmap_grad_runs_the_self_check_eagerly():
    f = lambda v: jnp.sum(jnp.sin(v) ** 3)
    x, ys = jnp.asarray([0.1, 0.5]), jnp.asarray([[0.2, 0.4], [1.0, -1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the check passes, so no warning
        grads = jax.jit(jax.vmap(jax.grad(lambda y: jj.jet(f, x, y, 3))))(ys)
    assert taylor.DECISION == "taylor"
    ref = jax.vmap(jax.grad(lambda y: sum(nested_jvp_terms(f, x, y, 3))))(ys)
    np.testing.assert_allclose(grads, ref, rtol=1e-5, atol=1e-6)


@needs_internals
def test_self_check_catches_a_wrong_rule_and_jet_falls_back_once(monkeypatch):
    right = taylor.bilinear_rule

    def wrong(prim, primals, series, **params):  # a drifted rule: every coefficient doubled
        out, terms = right(prim, primals, series, **params)
        return out, [t if t is taylor.zero_term else 2 * t for t in terms]

    monkeypatch.setattr(taylor, "bilinear_rule", wrong)
    assert "instead of" in taylor.self_check()
    f = lambda v: jnp.sum(v * v * v)
    x, y = jnp.asarray([0.2, -0.4]), jnp.asarray([0.5, 0.1])
    drift = rf"jax>=0\.10\.2,<0\.11\) cannot run on the installed jax {jax.__version__}.*nested jax.jvp"
    with pytest.warns(RuntimeWarning, match=drift):
        got = jj.jet(f, x, y, 3)
    np.testing.assert_allclose(got, f(y), rtol=1e-5)  # exact for a cubic: the fallback is right
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        np.testing.assert_allclose(jj.jet(f, x, y, 3), f(y), rtol=1e-5)
    assert taylor.selected_path() == "fallback"


def test_missing_internals_fall_back_with_one_warning_naming_versions(monkeypatch):
    monkeypatch.setattr(taylor, "AVAILABLE", False)
    monkeypatch.setattr(taylor, "INTERNALS_ERROR", "AttributeError: module has no attribute 'JetTrace'")
    monkeypatch.setattr(jax, "__version__", "0.99.1")
    f = lambda v: jnp.tanh(v).sum()
    x, y = jnp.asarray([0.3, -0.1]), jnp.asarray([0.1, 0.2])
    drift = r"jax>=0\.10\.2,<0\.11\) cannot run on the installed jax 0\.99\.1.*'JetTrace'"
    with pytest.warns(RuntimeWarning, match=drift):
        _, terms = jj.jet(f, x, y, 4, return_terms=True)
    assert_terms_close(terms, nested_jvp_terms(f, x, y, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jj.jet(f, x, y, 2)
    with pytest.raises(RuntimeError, match="lacks the internals"):
        taylor.taylor(f, [x], [[y]], 1)


def test_env_var_taylor_turns_drift_into_an_error(monkeypatch):
    monkeypatch.setattr(taylor, "AVAILABLE", False)
    monkeypatch.setattr(taylor, "INTERNALS_ERROR", "ImportError: no module named jet")
    monkeypatch.setenv(taylor.ENV_VAR, "taylor")
    with pytest.raises(RuntimeError, match=r"JETJAX_TAYLOR=taylor.*no module named jet"):
        jj.jet(jnp.sin, jnp.ones(2), jnp.zeros(2), 2)


def test_env_var_fallback_is_silent_and_handles_what_taylor_mode_cannot(monkeypatch):
    monkeypatch.setenv(taylor.ENV_VAR, "Fallback")
    looped = lambda v: lax.scan(lambda c, _: (jnp.sin(c), None), v, None, length=3)[0]
    x, y = jnp.asarray([0.3, -0.2]), jnp.asarray([0.1, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, terms = jj.jet(looped, x, y, 3, return_terms=True)
    assert taylor.selected_path() == "fallback" and taylor.REASON == "JETJAX_TAYLOR=fallback"
    assert_terms_close(terms, nested_jvp_terms(looped, x, y, 3))


def test_fallback_refuses_orders_where_its_compile_time_explodes(monkeypatch):
    from jetjax.jet import FALLBACK_MAX_ORDER

    monkeypatch.setattr(taylor, "FORCE", "fallback")
    calls = []
    f = lambda v: calls.append(1) or jnp.sin(v)
    with pytest.raises(ValueError, match=rf"order {FALLBACK_MAX_ORDER + 1} is above FALLBACK_MAX_ORDER="
                                         rf"{FALLBACK_MAX_ORDER} of the nested-jvp fallback.*jax>=0\.10\.2"):
        jj.jet(f, jnp.ones(2), jnp.zeros(2), FALLBACK_MAX_ORDER + 1)
    assert calls == []
    x, y = jnp.asarray([0.3, -1.0]), jnp.asarray([0.5, -0.8])
    _, terms = jj.jet(jnp.sin, x, y, FALLBACK_MAX_ORDER, return_terms=True)
    assert_terms_close(terms, nested_jvp_terms(jnp.sin, x, y, FALLBACK_MAX_ORDER))


@pytest.mark.parametrize("value", ["nested", "1"])
def test_bad_env_var_or_force_is_named(monkeypatch, value):
    monkeypatch.setenv(taylor.ENV_VAR, value)
    named = rf"JETJAX_TAYLOR='{value}' is not one of 'auto', 'taylor', 'fallback'"
    with pytest.raises(ValueError, match=named):
        jj.jet(jnp.sin, jnp.ones(2), jnp.zeros(2), 2)
    monkeypatch.setattr(taylor, "FORCE", "jvp")
    with pytest.raises(ValueError, match=r"FORCE='jvp'"):
        taylor.selected_path()


def test_untested_jax_version_warns_once(monkeypatch):
    if not taylor.AVAILABLE:
        pytest.skip("needs the internals")
    monkeypatch.setattr(jax, "__version__", "0.10.9" if (0, 10) not in taylor.TESTED_JAX else "0.12.0")
    untested = rf"runs on jax {jax.__version__}, which is untested: its internals import and pass"
    with pytest.warns(RuntimeWarning, match=untested):
        assert taylor.selected_path() == "taylor"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert taylor.selected_path() == "taylor"


def both_paths(monkeypatch, compute):
    """``compute()`` once per path, each traced afresh; a spy proves which path ran."""
    out, calls = {}, []
    real = taylor.nested_jvp_taylor
    monkeypatch.setattr(taylor, "nested_jvp_taylor", lambda *a: calls.append(1) or real(*a))
    for path in ("taylor", "fallback"):
        if path == "taylor" and not taylor.AVAILABLE:
            continue
        monkeypatch.setattr(taylor, "FORCE", path)
        jax.clear_caches()  # a jitted function traced on the other path must not be reused
        before = len(calls)
        out[path] = compute()
        assert (len(calls) > before) == (path == "fallback"), path
    monkeypatch.setattr(taylor, "FORCE", None)
    return out


def test_fallback_equals_taylor_mode_on_pytrees(monkeypatch):
    def f(p):
        return {"a": jnp.tanh(p["w"] @ p["x"]), "b": (jax.nn.relu(p["w"]) ** 2).sum() * p["x"][0]}

    x = {"w": jnp.asarray([[0.2, -0.1], [0.3, 0.5]]), "x": jnp.asarray([1.0, -0.5])}
    y = {"w": jnp.asarray([[0.1, 0.1], [0.2, 0.4]]), "x": jnp.asarray([0.7, 0.2])}
    for order in (2, 3, 5):
        got = both_paths(monkeypatch, lambda: jj.jet(f, x, y, order, return_terms=True))
        ref = nested_jvp_terms(f, x, y, order)
        for path, (value, terms) in got.items():
            assert jax.tree_util.tree_structure(value) == jax.tree_util.tree_structure(ref[0])
            assert_terms_close(terms, ref, rtol=2e-5)
        if len(got) == 2:
            assert_terms_close(got["fallback"][1], got["taylor"][1], rtol=2e-5)


def test_fallback_equals_taylor_mode_under_jit_with_nested_jit(monkeypatch):
    inner = jax.jit(lambda a, m: jnp.tanh(a @ m))
    w = jnp.asarray([[0.3, -0.2], [0.1, 0.4]])
    f = lambda v: jnp.sin(inner(v, w)).sum() ** 2
    x, ys = jnp.asarray([0.5, 0.1]), jnp.asarray([[-0.2, 0.8], [0.3, 0.3]])
    batched = jax.jit(jax.vmap(lambda y: jj.jet(f, x, y, 4, return_terms=True)[1]))
    got = both_paths(monkeypatch, lambda: batched(ys))
    for i, y in enumerate(ys):
        ref = nested_jvp_terms(f, x, y, 4)
        for terms in got.values():
            assert_terms_close([t[i] for t in terms], ref, rtol=1e-4)


@pytest.mark.parametrize("arch,activation", [("gpt2", "gelu_new"), ("llama", "silu")])
def test_fallback_equals_taylor_mode_on_a_transformer_block(monkeypatch, arch, activation):
    from jetjax.models import ModelConfig, random_model

    extra = (dict(n_positions=None, n_kv_heads=1, rope_dim=4, norm="rmsnorm", qkv_bias=False, out_bias=False,
                  mlp_bias=False) if arch == "llama" else dict(n_positions=8))
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=12, n_heads=3, d_head=4, d_mlp=20, vocab_size=13,
                      norm_eps=1e-5, activation=activation, **extra)
    model = random_model(cfg, seed=3, scale=0.3)
    h = model.residual_stream(np.array([1, 5, 2, 7, 3]))
    block = lambda s: model.block(1, s)
    order = 3
    jitted = jax.jit(lambda a, b: jj.jet(block, a, b, order, return_terms=True)[1])
    got = both_paths(monkeypatch, lambda: jitted(h[0], h[1]))
    ref = jax.jit(lambda a, b: nested_jvp_terms(block, a, b, order))(h[0], h[1])  # eagerly: 20 s
    for j in range(order + 1):  # float32: tolerance relative to each term's size
        atol = 2e-5 * float(jnp.abs(ref[j]).max())
        for terms in got.values():
            assert_terms_close([terms[j]], [ref[j]], rtol=1e-3, atol=atol)
        if len(got) == 2:
            assert_terms_close([got["fallback"][j]], [got["taylor"][j]], rtol=1e-3, atol=atol)
