"""otdiff.ot.sinkhorn: entropic OT on ott-jax, checked against independent references.

References used here: a float64 NumPy log-domain Sinkhorn written below (same update order, so
the iterates must agree to rounding), the primal objective recomputed from the coupling, the
coupling's marginals, the product coupling as epsilon grows, brute-force assignment over all
permutations, the sorted matching of the 1-D case, and Danskin's gradient formula.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from otdiff import ot

# -- data and the NumPy reference ------------------------------------------------------------


def clouds(n=24, m=None, d=2, seed=0):
    """A Gaussian blob and a shifted noisy ring, as float32 NumPy arrays."""
    m = n if m is None else m
    rng = np.random.default_rng(seed)
    x = 0.3 * rng.standard_normal((n, d)) - 0.5
    angle = rng.uniform(0, 2 * np.pi, m)
    ring = np.zeros((m, d))
    ring[:, 0], ring[:, 1 % d] = np.cos(angle), np.sin(angle)
    y = 0.4 * ring + 0.5 + 0.03 * rng.standard_normal((m, d))
    return x.astype(np.float32), y.astype(np.float32)


def random_weights(n, seed):
    w = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    return w / w.sum()


def numpy_sinkhorn(x, y, a, b, eps, n_iter):
    """Float64 log-domain Sinkhorn in ott-jax's convention: P = exp((f + g - C) / eps).

    From f = g = 0, ``n_iter`` times: update g, then f (ott-jax's order).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    C = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(n_iter):
        g = eps * np.log(b) - eps * logsumexp((f[:, None] - C) / eps, axis=0)
        f = eps * np.log(a) - eps * logsumexp((g[None, :] - C) / eps, axis=1)
    P = np.exp((f[:, None] + g[None, :] - C) / eps)
    return f, g, P, C


def primal_objective(P, C, a, b, eps):
    """<P, C> + eps KL(P || a b^T) with the generalised KL (sum P log(P/Q) - P + Q)."""
    Q = np.outer(a, b)
    kl = np.sum(P * np.log(P / Q) - P + Q)
    return np.sum(P * C) + eps * kl


def f64(*arrays):
    return [jnp.asarray(np.asarray(v, np.float64)) for v in arrays]


# -- correctness ------------------------------------------------------------------------------


def test_iterates_match_a_float64_numpy_sinkhorn():
    x, y = clouds(20, 15, seed=1)
    a, b = random_weights(20, 2), random_weights(15, 3)
    eps = 0.05
    with jax.enable_x64(True):
        out = ot.solve(*f64(x, y), eps, *f64(a, b), threshold=1e-6)
        n_iter = int(out.n_iterations)
        assert bool(out.converged) and out.f.dtype == jnp.float64
        f, g, P, C = numpy_sinkhorn(x, y, a, b, eps, n_iter)
        np.testing.assert_allclose(out.f, f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out.g, g, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out.coupling, P, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(out.transport_cost, np.sum(P * C), rtol=1e-10)


def test_float32_solution_matches_the_float64_fixed_point():
    n = 20
    x, y = clouds(n, seed=4)
    a = b = np.full(n, 1 / n)
    eps = 0.02
    out = ot.solve(x, y, eps, threshold=1e-5)
    assert out.f.dtype == jnp.float32 and bool(out.converged)
    f, g, P, _ = numpy_sinkhorn(x, y, a, b, eps, 2000)  # run far past convergence
    centred = lambda v: np.asarray(v, np.float64) - np.mean(v)
    np.testing.assert_allclose(centred(out.f), centred(f), atol=1e-4)
    np.testing.assert_allclose(centred(out.g), centred(g), atol=1e-4)
    np.testing.assert_allclose(out.coupling, P, atol=1e-3 / n)


def test_coupling_has_the_right_marginals_and_reg_cost_is_the_primal_objective():
    x, y = clouds(20, 15, seed=5)
    a, b = random_weights(20, 6), random_weights(15, 7)
    eps, threshold = 0.1, 1e-6
    with jax.enable_x64(True):
        out = ot.solve(*f64(x, y), eps, *f64(a, b), threshold=threshold)
        P = np.asarray(out.coupling)
        C = np.asarray(ot.cost_matrix(*f64(x, y)))
        assert np.all(P >= 0)
        assert np.abs(P.sum(0) - b).sum() < threshold
        assert np.abs(P.sum(1) - a).sum() < 1e-12  # exact after the f-update
        np.testing.assert_allclose(out.marginal_error, np.abs(P.sum(0) - b).sum(), atol=1e-12)
        errors = np.asarray(out.errors)
        recorded = errors[errors >= 0]
        assert recorded[-1] < threshold and np.all(errors[len(recorded) :] == -1)
        assert int(out.n_iterations) == 10 * len(recorded)
        # reg_ot_cost (dual value) equals the primal objective at the optimum
        np.testing.assert_allclose(out.reg_ot_cost, primal_objective(P, C, a, b, eps), rtol=1e-6)
        np.testing.assert_allclose(out.transport_cost, np.sum(P * C), rtol=1e-12)
        np.testing.assert_allclose(C, ((x[:, None] - y[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-6)


def test_large_epsilon_gives_the_product_coupling():
    x, y = clouds(20, 15, seed=8)
    a, b = random_weights(20, 1), random_weights(15, 2)
    out = ot.solve(x, y, 1e4, a, b)
    np.testing.assert_allclose(out.coupling, np.outer(a, b), rtol=1e-3)


def test_one_point_each():
    x, y = np.array([[0.0, 1.0]]), np.array([[3.0, 5.0]])
    out = ot.solve(x, y, 0.5)
    np.testing.assert_allclose(out.coupling, [[1.0]], rtol=1e-6)
    np.testing.assert_allclose(out.reg_ot_cost, 25.0, rtol=1e-6)  # KL(P || ab^T) = 0


def test_exact_ot_cost_against_brute_force_and_the_1d_sorted_matching():
    x, y = clouds(6, seed=9)
    C = ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)
    best = min(itertools.permutations(range(6)), key=lambda s: C[range(6), s].sum())
    cost, perm = ot.exact_ot_cost(x, y)
    np.testing.assert_array_equal(perm, best)
    np.testing.assert_allclose(cost, C[range(6), best].mean(), rtol=1e-12)
    # In 1-D the optimal matching pairs the sorted points (quadratic cost is submodular).
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal((40, 1)), 2 + 0.5 * rng.standard_normal((40, 1))
    sorted_cost = np.mean((np.sort(u[:, 0]) - np.sort(v[:, 0])) ** 2)
    np.testing.assert_allclose(ot.exact_ot_cost(u, v).cost, sorted_cost, rtol=1e-12)


EPSILONS = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003]  # one grid for all sweeps: one compilation


def test_reg_cost_tends_to_the_exact_cost_within_eps_log_n():
    n = 20
    x, y = clouds(n, seed=10)
    exact = ot.exact_ot_cost(x, y).cost
    epsilons = np.array(EPSILONS)
    out = ot.sweep_epsilon(x, y, epsilons, threshold=1e-4)
    assert bool(jnp.all(out.converged))
    gaps = np.asarray(out.reg_ot_cost, np.float64) - exact
    # 0 <= OT_eps - OT_0 <= eps log n (KL >= 0; a permutation plan has KL = log n)
    assert np.all(gaps >= -1e-4) and np.all(gaps <= epsilons * np.log(n) + 1e-4)
    assert np.all(np.diff(gaps) < 0)
    assert gaps[-1] < 0.01 * exact
    np.testing.assert_allclose(out.transport_cost[-1], exact, rtol=0.01)


def test_danskin_gradient_of_the_regularised_cost():
    x, y = clouds(20, 15, seed=11)
    eps = 0.1
    grad = jax.grad(lambda x: ot.solve(x, y, eps, threshold=1e-6).reg_ot_cost)(jnp.asarray(x))
    P = np.asarray(ot.solve(x, y, eps, threshold=1e-6).coupling)
    expected = 2 * (P.sum(1)[:, None] * x - P @ y)  # sum_j P_ij grad_x ||x_i - y_j||^2
    np.testing.assert_allclose(grad, expected, atol=1e-4)


def test_relative_epsilon_and_scale_invariance():
    x, y = clouds(20, seed=12)
    C = ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(ot.mean_cost(x, y), C.mean(), rtol=1e-5)
    np.testing.assert_allclose(ot.relative_epsilon(x, y, 0.1), 0.1 * C.mean(), rtol=1e-5)
    s = 3.0
    base = ot.solve(x, y, ot.relative_epsilon(x, y, 0.05))
    scaled = ot.solve(s * x, s * y, ot.relative_epsilon(s * x, s * y, 0.05))
    np.testing.assert_allclose(scaled.coupling, base.coupling, atol=1e-5)


def test_lse_and_kernel_modes_agree_at_moderate_epsilon():
    x, y = clouds(20, seed=13)
    lse = ot.solve(x, y, 0.2, threshold=1e-5)
    kernel = ot.solve(x, y, 0.2, threshold=1e-5, lse_mode=False)
    np.testing.assert_allclose(kernel.coupling, lse.coupling, atol=1e-5)


# -- determinism, jit, vmap, compilation -------------------------------------------------------


def test_determinism():
    x1, y1 = clouds(20, seed=14)
    x2, y2 = clouds(20, seed=14)
    one, two = ot.solve(x1, y1, 0.05), ot.solve(x2, y2, 0.05)
    for u, v in zip(one, two, strict=True):
        np.testing.assert_array_equal(u, v)


def test_solve_is_safe_under_jit():
    x, y = clouds(20, seed=15)
    jitted = jax.jit(lambda x, y, e: ot.solve(x, y, e).reg_ot_cost)
    np.testing.assert_allclose(jitted(x, y, 0.1), ot.solve(x, y, 0.1).reg_ot_cost, rtol=1e-6)


def test_vmap_over_epsilon_matches_single_solves_and_sweep():
    # vmap(solve) runs solve_core under vmap; sweep_epsilon runs it under lax.map, with and
    # without vmapped batches (4 does not divide 6: the remainder path too).
    x, y = clouds(20, seed=16)
    epsilons = jnp.array(EPSILONS)
    via_solve = jax.vmap(lambda e: ot.solve(x, y, e))(epsilons)
    sweep = ot.sweep_epsilon(x, y, epsilons)
    sweep_vmapped = ot.sweep_epsilon(x, y, epsilons, batch_size=4)
    for i, eps in enumerate(np.asarray(epsilons)):
        single = ot.solve(x, y, float(eps))
        for out in (via_solve, sweep, sweep_vmapped):
            assert int(out.n_iterations[i]) == int(single.n_iterations)
            np.testing.assert_allclose(out.reg_ot_cost[i], single.reg_ot_cost, rtol=1e-5)
            np.testing.assert_allclose(out.coupling[i], single.coupling, rtol=1e-3, atol=1e-7)
            np.testing.assert_allclose(out.epsilon[i], eps, rtol=1e-6)
    assert int(sweep.n_iterations[0]) < int(sweep.n_iterations[-1])


def test_changing_epsilon_or_threshold_does_not_recompile():
    x, y = clouds(11, 13, seed=17)  # a shape no other test uses
    ot.solve(x, y, 0.1)
    compiled = ot.solve_core._cache_size()
    for eps in (0.3, np.float32(0.02), jnp.asarray(0.7), np.float64(1.5), 2):
        ot.solve(x, y, eps)
    for threshold in (1e-2, np.float64(1e-4)):
        ot.solve(x, y, 0.1, threshold=threshold)
    assert ot.solve_core._cache_size() == compiled


# -- input validation ----------------------------------------------------------------------------


X, Y = clouds(8, 6, seed=18)
BAD_SOLVE = [
    (dict(epsilon=0.0), ValueError, "epsilon"),
    (dict(epsilon=-1.0), ValueError, "epsilon"),
    (dict(epsilon=float("nan")), ValueError, "epsilon"),
    (dict(epsilon=float("inf")), ValueError, "epsilon"),
    (dict(epsilon="big"), TypeError, "epsilon"),
    (dict(epsilon=np.ones(2)), TypeError, "epsilon"),
    (dict(x=np.where(np.arange(16).reshape(8, 2) == 3, np.nan, X)), ValueError, "x contains NaN"),
    (dict(y=np.ones(6)), ValueError, r"y must have shape \(n, d\)"),
    (dict(y=np.ones((6, 3))), ValueError, "same dimension"),
    (dict(a=np.full(7, 1 / 7)), ValueError, r"a must have shape \(8,\)"),
    (dict(a=np.full(8, 0.2)), ValueError, "a must sum to one"),
    (dict(b=np.array([1.5, -0.5, 0, 0, 0, 0])), ValueError, "b must be non-negative"),
    (dict(threshold=0.0), ValueError, "threshold"),
    (dict(max_iterations=0), ValueError, "max_iterations"),
    (dict(max_iterations=2.5), TypeError, "max_iterations"),
    (dict(max_iterations=True), TypeError, "max_iterations"),
    (dict(max_iterations=105), ValueError, "max_iterations must be a multiple"),
    (dict(inner_iterations=0), ValueError, "inner_iterations"),
    (dict(lse_mode="yes"), TypeError, "lse_mode"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_SOLVE)
def test_solve_rejects_bad_inputs(kwargs, error, match):
    args = dict(x=X, y=Y, epsilon=0.1) | kwargs
    with pytest.raises(error, match=match):
        ot.solve(**args)


@pytest.mark.parametrize(
    ("epsilons", "kwargs", "error", "match"),
    [
        ([], {}, ValueError, "epsilons"),
        ([[0.1, 0.2]], {}, ValueError, "epsilons"),
        ([0.1, -0.2], {}, ValueError, "epsilons"),
        ([0.1, np.nan], {}, ValueError, "epsilons"),
        ([0.1], dict(batch_size=0), ValueError, "batch_size"),
        ([0.1], dict(threshold=-1.0), ValueError, "threshold"),
    ],
)
def test_sweep_rejects_bad_inputs(epsilons, kwargs, error, match):
    with pytest.raises(error, match=match):
        ot.sweep_epsilon(X, Y, epsilons, **kwargs)


def test_helpers_reject_bad_inputs():
    with pytest.raises(ValueError, match="same number of points"):
        ot.exact_ot_cost(X, Y)
    with pytest.raises(ValueError, match="same dimension"):
        ot.exact_ot_cost(X, np.ones((8, 3)))
    with pytest.raises(ValueError, match="fraction"):
        ot.relative_epsilon(X, Y, 0.0)
    with pytest.raises(ValueError, match="y contains NaN"):
        ot.cost_matrix(X, np.full((3, 2), np.nan))
