"""otdiff.ot.sinkhorn: entropic OT on ott-jax, checked against independent references.

References used here: a float64 NumPy log-domain Sinkhorn written below (same update order, so
the iterates must agree to rounding), the primal objective recomputed from the coupling, the
coupling's marginals, the product coupling as epsilon grows, brute-force assignment over all
permutations, the sorted matching of the 1-D case, Danskin's gradient formula, a change of
variables that turns a Mahalanobis cost into the squared Euclidean one, ott-jax's dual potentials
and the barycentric projection of the coupling (the entropic map), the dense solver (for the
online one), and XLA's own memory accounting.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces
from _ot_costs import Mahalanobis, NetworkCost
from ott.geometry import costs
from scipy.special import logsumexp

from otdiff import config, ot

# -- data and the NumPy reference ------------------------------------------------------------


def clouds(n=24, m=None, d=2, seed=0):
    """A Gaussian blob and a shifted noisy ring, as float32 NumPy arrays."""
    m = n if m is None else m
    rng = np.random.default_rng(config.seed(seed))
    x = 0.3 * rng.standard_normal((n, d)) - 0.5
    angle = rng.uniform(0, 2 * np.pi, m)
    ring = np.zeros((m, d))
    ring[:, 0], ring[:, 1 % d] = np.cos(angle), np.sin(angle)
    y = 0.4 * ring + 0.5 + 0.03 * rng.standard_normal((m, d))
    return x.astype(np.float32), y.astype(np.float32)


def random_weights(n, seed):
    w = np.random.default_rng(config.seed(seed)).uniform(0.5, 1.5, n)
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
        out = ot.solve(*f64(x, y), eps, *f64(a, b), threshold=1e-6, return_coupling=True)
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
    out = ot.solve(x, y, eps, threshold=1e-5, return_coupling=True)
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
        out = ot.solve(*f64(x, y), eps, *f64(a, b), threshold=threshold, return_coupling=True)
        P = np.asarray(out.coupling)
        C = np.asarray(ot.cost_matrix(*f64(x, y)))
        assert np.all(P >= 0)
        assert np.abs(P.sum(0) - b).sum() < threshold
        assert np.abs(P.sum(1) - a).sum() < 1e-12  # exact after the f-update
        row_error = np.abs(P.sum(1) - a).sum()
        np.testing.assert_allclose(
            out.marginal_error, row_error + np.abs(P.sum(0) - b).sum(), atol=1e-12
        )
        errors = np.asarray(out.errors)
        recorded = errors[errors >= 0]
        assert recorded[-1] < threshold and np.all(errors[len(recorded) :] == -1)
        # the kernel blocks of lse_mode="auto", then ott-jax's checked log-domain iteration(s)
        assert 1 <= int(out.n_iterations) - 10 * len(recorded) <= 10
        log = ot.solve(*f64(x, y), eps, *f64(a, b), threshold=threshold, lse_mode=True)
        log_errors = np.asarray(log.errors)
        assert int(log.n_iterations) == 10 * int(np.sum(log_errors >= 0))
        np.testing.assert_allclose(log.f - log.f[0], out.f - out.f[0], atol=1e-9)
        # reg_ot_cost (dual value) equals the primal objective at the optimum
        np.testing.assert_allclose(out.reg_ot_cost, primal_objective(P, C, a, b, eps), rtol=1e-6)
        np.testing.assert_allclose(out.transport_cost, np.sum(P * C), rtol=1e-12)
        np.testing.assert_allclose(C, ((x[:, None] - y[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-6)


def test_large_epsilon_gives_the_product_coupling():
    x, y = clouds(20, 15, seed=8)
    a, b = random_weights(20, 1), random_weights(15, 2)
    out = ot.solve(x, y, 1e4, a, b, return_coupling=True)
    np.testing.assert_allclose(out.coupling, np.outer(a, b), rtol=1e-3)


def test_one_point_each():
    x, y = np.array([[0.0, 1.0]]), np.array([[3.0, 5.0]])
    out = ot.solve(x, y, 0.5, return_coupling=True)
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
    rng = np.random.default_rng(config.seed(0))
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
    P = np.asarray(ot.solve(x, y, eps, threshold=1e-6, return_coupling=True).coupling)
    expected = 2 * (P.sum(1)[:, None] * x - P @ y)  # sum_j P_ij grad_x ||x_i - y_j||^2
    np.testing.assert_allclose(grad, expected, atol=1e-4)


def test_relative_epsilon_and_scale_invariance():
    x, y = clouds(20, seed=12)
    C = ((x[:, None].astype(np.float64) - y[None]) ** 2).sum(-1)
    np.testing.assert_allclose(ot.mean_cost(x, y), C.mean(), rtol=1e-5)
    np.testing.assert_allclose(ot.relative_epsilon(x, y, 0.1), 0.1 * C.mean(), rtol=1e-5)
    s = 3.0
    base = ot.solve(x, y, ot.relative_epsilon(x, y, 0.05), return_coupling=True)
    scaled = ot.solve(s * x, s * y, ot.relative_epsilon(s * x, s * y, 0.05), return_coupling=True)
    np.testing.assert_allclose(scaled.coupling, base.coupling, atol=1e-5)


def test_lse_and_kernel_modes_agree_at_moderate_epsilon():
    x, y = clouds(20, seed=13)
    lse = ot.solve(x, y, 0.2, threshold=1e-5, return_coupling=True)
    kernel = ot.solve(x, y, 0.2, threshold=1e-5, lse_mode=False, return_coupling=True)
    np.testing.assert_allclose(kernel.coupling, lse.coupling, atol=1e-5)


# -- determinism, jit, vmap, compilation -------------------------------------------------------


def test_determinism():
    x1, y1 = clouds(20, seed=14)
    x2, y2 = clouds(20, seed=14)
    one = ot.solve(x1, y1, 0.05, return_coupling=True)
    two = ot.solve(x2, y2, 0.05, return_coupling=True)
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
    via_solve = jax.vmap(lambda e: ot.solve(x, y, e, return_coupling=True))(epsilons)
    sweep = ot.sweep_epsilon(x, y, epsilons, return_coupling=True)
    sweep_vmapped = ot.sweep_epsilon(x, y, epsilons, batch_size=4, return_coupling=True)
    for i, eps in enumerate(np.asarray(epsilons)):
        single = ot.solve(x, y, float(eps), return_coupling=True)
        for out in (via_solve, sweep, sweep_vmapped):
            assert int(out.n_iterations[i]) == int(single.n_iterations)
            np.testing.assert_allclose(out.reg_ot_cost[i], single.reg_ot_cost, rtol=1e-5)
            np.testing.assert_allclose(out.coupling[i], single.coupling, rtol=1e-3, atol=1e-7)
            np.testing.assert_allclose(out.epsilon[i], eps, rtol=1e-6)
    assert int(sweep.n_iterations[0]) < int(sweep.n_iterations[-1])


def test_changing_epsilon_or_threshold_does_not_recompile():
    x, y = clouds(11, 13, seed=17)  # a shape no other test uses
    ot.solve(x, y, 0.1)
    with traces() as seen:
        for eps in (0.3, np.float32(0.02), jnp.asarray(0.7), np.float64(1.5), 2):
            ot.solve(x, y, eps)
        for threshold in (1e-2, np.float64(1e-4)):
            ot.solve(x, y, 0.1, threshold=threshold)
    assert seen["solve_core"] == 0


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
    (dict(return_coupling=1), TypeError, "return_coupling"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(chunk_size=2.0), TypeError, "chunk_size"),
    (dict(initializer="gaussian"), TypeError, r"make_initializer\('gaussian'\)"),
    (dict(initializer=object()), TypeError, "initializer must be an ott-jax"),
    (dict(initializer=ot.make_initializer("subsample")), ValueError, "pass key="),
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


# -- any cost --------------------------------------------------------------------------------------


class Unregistered(costs.TICost):
    def h(self, z):
        return jnp.sum(z**2)


def spd_matrix(d=2, seed=0):
    A = np.random.default_rng(config.seed(seed)).standard_normal((d, d))
    return (A @ A.T / d + 0.5 * np.eye(d)).astype(np.float32)


def test_a_user_defined_cost_solves_as_its_change_of_variables():
    # h(x - y) = |L^T (x - y)|^2 / 2 for M = L L^T: the problem is the squared Euclidean one on
    # (L^T x, L^T y) at 2 epsilon, with potentials halved.
    x, y = clouds(20, 15, seed=21)
    M = spd_matrix(seed=1)
    L = np.linalg.cholesky(M.astype(np.float64)).astype(np.float32)
    eps = 0.05
    ours = ot.solve(x, y, eps, cost_fn=Mahalanobis(jnp.asarray(M)), threshold=1e-6)
    reference = ot.solve(x @ L, y @ L, 2 * eps, threshold=1e-6)
    centred = lambda v: np.asarray(v) - np.mean(v)
    np.testing.assert_allclose(centred(ours.f), centred(reference.f) / 2, atol=2e-5)
    np.testing.assert_allclose(centred(ours.g), centred(reference.g) / 2, atol=2e-5)
    np.testing.assert_allclose(ours.reg_ot_cost, reference.reg_ot_cost / 2, rtol=1e-5)
    np.testing.assert_allclose(ours.transport_cost, reference.transport_cost / 2, rtol=1e-5)
    C = np.asarray(ot.cost_matrix(x, y, Mahalanobis(jnp.asarray(M))))
    diff = x[:, None] - y[None]
    np.testing.assert_allclose(C, 0.5 * np.einsum("nmi,ij,nmj->nm", diff, M, diff), rtol=1e-5)


def test_gradients_flow_to_the_cost_parameters():
    # Danskin: d OT_eps / dM = sum_ij P_ij (x_i - y_j)(x_i - y_j)^T / 2, the potentials fixed.
    x, y = clouds(20, 15, seed=22)
    M = jnp.asarray(spd_matrix(seed=2))

    def cost(matrix):
        return ot.solve(x, y, 0.1, cost_fn=Mahalanobis(matrix), threshold=1e-6).reg_ot_cost

    grad = jax.grad(cost)(M)
    P = np.asarray(
        ot.solve(x, y, 0.1, cost_fn=Mahalanobis(M), threshold=1e-6, return_coupling=True).coupling
    )
    diff = (x[:, None] - y[None]).astype(np.float64)
    expected = 0.5 * np.einsum("nm,nmi,nmj->ij", P, diff, diff)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)
    # A new matrix is a new value of a dynamic leaf: no new compilation.
    with traces() as seen:
        cost(2.0 * M)
    assert seen["solve_core"] == 0


def test_gradients_flow_to_a_network_inside_the_cost():
    # A cost parameterised by an Equinox module (as an ICNN-based cost is): its weights are
    # pytree leaves; the gradient of OT_eps is Danskin's, sum_ij P_ij grad_theta h(x_i - y_j).
    import equinox as eqx

    x, y = clouds(16, 12, seed=27)
    net = eqx.nn.MLP(2, 1, 8, 1, key=jax.random.key(config.seed(0)))

    def cost(module):
        return ot.solve(x, y, 0.2, cost_fn=NetworkCost(module), threshold=1e-6).reg_ot_cost

    grad = eqx.filter_grad(cost)(net)
    P = ot.solve(x, y, 0.2, cost_fn=NetworkCost(net), threshold=1e-6, return_coupling=True).coupling

    def fixed_plan_cost(module):
        return jnp.sum(P * ot.cost_matrix(x, y, NetworkCost(module)))

    expected = eqx.filter_grad(fixed_plan_cost)(net)
    for ours, reference in zip(jax.tree.leaves(grad), jax.tree.leaves(expected), strict=True):
        assert float(jnp.max(jnp.abs(reference))) > 0
        np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-5)


def test_bad_costs_are_refused_by_name():
    with pytest.raises(TypeError, match="cost_fn must be an ott-jax cost function"):
        ot.solve(X, Y, 0.1, cost_fn="sqeuclidean")
    with pytest.raises(TypeError, match="register_pytree_node_class"):
        ot.solve(X, Y, 0.1, cost_fn=Unregistered())
    with pytest.raises(TypeError, match="leaves that are not arrays"):
        ot.solve(X, Y, 0.1, cost_fn=Mahalanobis(jnp.tanh))
    with pytest.raises(TypeError, match="h_legendre"):
        ot.entropic_map(X, Y, jnp.zeros(6), 0.1, costs.EuclideanP(1.5))
    with pytest.raises(TypeError, match="twist_operator"):
        ot.entropic_map(X, Y, jnp.zeros(6), 0.1, costs.Euclidean())


# -- the entropic map ------------------------------------------------------------------------------


def test_entropic_map_closed_form_matches_ott_dual_potentials():
    x, y = clouds(20, 15, seed=23)
    eps = 0.1
    out = ot.solve(x, y, eps, threshold=1e-6)
    closed = ot.entropic_map(x, y, out.g, eps)
    # The same cost, but as a subclass: entropic_map hands it to ott-jax's dual potentials.
    ti = jax.tree_util.register_pytree_node_class(type("SqEuclideanTI", (costs.SqEuclidean,), {}))
    dual = ot.entropic_map(x, y, out.g, eps, ti())
    np.testing.assert_allclose(dual, closed, atol=1e-5)


@pytest.mark.parametrize("cost", ["sqeuclidean", "mahalanobis"])
def test_entropic_map_is_the_barycentric_projection_for_any_weights(cost):
    # For h(z) = z^T M z / 2 the map z - M^{-1} grad f(z) is again sum_j w_j(z) y_j, so at the
    # training points it is the barycentric projection sum_j P_ij y_j / a_i, whatever b is.
    x, y = clouds(20, 15, seed=24)
    a, b = random_weights(20, 3), random_weights(15, 4)
    cost_fn = None if cost == "sqeuclidean" else Mahalanobis(jnp.asarray(spd_matrix(seed=3)))
    eps = 0.1
    out = ot.solve(x, y, eps, a, b, cost_fn=cost_fn, threshold=1e-6, return_coupling=True)
    projection = (out.coupling @ y) / out.coupling.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ot.entropic_map(x, y, out.g, eps, cost_fn), projection, atol=1e-4)


# -- online mode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["sqeuclidean", "mahalanobis"])
def test_online_and_dense_give_the_same_solution(cost):
    x, y = clouds(40, 33, seed=25)
    a, b = random_weights(40, 5), random_weights(33, 6)
    cost_fn = None if cost == "sqeuclidean" else Mahalanobis(jnp.asarray(spd_matrix(seed=4)))
    dense = ot.solve(x, y, 0.05, a, b, cost_fn=cost_fn, threshold=1e-5, return_coupling=True)
    online = ot.solve(
        x, y, 0.05, a, b, cost_fn=cost_fn, threshold=1e-5, chunk_size=7, return_coupling=True
    )  # 7 does not divide 40: the remainder path too
    # the default dense solve runs the stabilised kernel, then one checked log-domain iteration
    assert 0 <= int(dense.n_iterations) - int(online.n_iterations) <= 1
    np.testing.assert_allclose(online.f, dense.f, atol=1e-5)
    np.testing.assert_allclose(online.g, dense.g, atol=1e-5)
    for field in ("reg_ot_cost", "transport_cost"):
        np.testing.assert_allclose(getattr(online, field), getattr(dense, field), rtol=1e-5)
    np.testing.assert_allclose(online.marginal_error, dense.marginal_error, atol=1e-6)  # ~1e-6
    np.testing.assert_allclose(online.coupling, dense.coupling, atol=1e-7)


def test_online_mode_never_holds_the_cost_matrix():
    # XLA's own accounting of the compiled program: the dense solve holds n x m floats (the cost
    # matrix and its kernel), the online one a few chunks.
    n = 2048
    x = jnp.zeros((n, 2))
    a = jnp.full(n, 1.0 / n)

    def temp_bytes(chunk_size):
        def solve(x, a):
            return ot.solve_core(x, x, a, a, 0.1, 1e-3, chunk_size=chunk_size)

        lowered = jax.jit(solve).lower(x, a)
        return lowered.compile().memory_analysis().temp_size_in_bytes

    matrix, chunk = n * n * 4, 128 * n * 4
    assert temp_bytes(None) >= matrix
    assert temp_bytes(128) <= 4 * chunk < matrix / 2


# -- guards under jit ----------------------------------------------------------------------------


def test_a_jitted_call_with_a_bad_epsilon_raises():
    with pytest.raises(Exception, match="epsilon must be a finite number > 0"):
        jax.block_until_ready(jax.jit(lambda e: ot.solve(X, Y, e).f)(-1.0))
    with pytest.raises(Exception, match="epsilon must be a finite number > 0"):
        jax.block_until_ready(jax.jit(lambda e: ot.solve(X, Y, e).f)(jnp.nan))


def test_jitted_calls_with_nan_points_or_bad_weights_raise():
    n = X.shape[0]
    with pytest.raises(Exception, match="x contains NaN"):
        jax.block_until_ready(
            jax.jit(lambda p: ot.solve(p, Y, 0.1).f)(jnp.asarray(X).at[0, 0].set(jnp.nan))
        )
    with pytest.raises(Exception, match="a must be non-negative and sum to one"):
        jax.block_until_ready(jax.jit(lambda w: ot.solve(X, Y, 0.1, a=w).f)(jnp.full(n, 0.2)))


def test_zero_weights_give_minus_infinite_potentials_and_no_error():
    # ott-jax sets the potential of a zero-weight point to -inf: the guard on non-finite
    # potentials must let that through (it checks points of positive weight only).
    x, y = clouds(20, 15, seed=26)
    a = np.where(np.arange(20) < 3, 0.0, 1 / 17)
    out = jax.jit(lambda w: ot.solve(x, y, 0.1, a=w, return_coupling=True))(jnp.asarray(a))
    assert np.all(np.isneginf(out.f[:3])) and np.all(np.isfinite(out.f[3:]))
    np.testing.assert_allclose(out.coupling[:3], 0.0)
    assert bool(out.converged) and float(out.marginal_error) < 1e-3
