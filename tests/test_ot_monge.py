"""Tests for otdiff.ot.costs and otdiff.ot.monge: learnable TI costs and their entropic maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import costs as ott_costs

from otdiff import config, data
from otdiff.ot import costs as tc
from otdiff.ot import monge, sinkhorn


def _spd(key, d):
    a = jax.random.normal(key, (d, d))
    return a @ a.T + 0.5 * jnp.eye(d)


def _directional_derivatives(loss, params, direction, *, step):
    """The derivative of ``loss`` at ``params`` along ``direction`` (pytrees of one structure):
    by ``jax.grad`` and by central finite differences of size ``step``."""
    grad = jax.grad(loss)(params)
    leaves = jax.tree_util.tree_leaves
    analytic = sum(jnp.sum(g * d) for g, d in zip(leaves(grad), leaves(direction), strict=True))
    plus = jax.tree_util.tree_map(lambda p, d: p + step * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - step * d, params, direction)
    return analytic, (loss(plus) - loss(minus)) / (2 * step)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ----------------------------------------------------------------------------- costs


def test_mahalanobis_legendre_closed_form_against_numerical_sup():
    key = jax.random.PRNGKey(config.seed(0))
    matrix = _spd(key, 3)
    cost = tc.Mahalanobis.from_matrix(matrix, alpha=0.1)
    np.testing.assert_allclose(cost.matrix, matrix, rtol=1e-5, atol=1e-5)
    v = jax.random.normal(jax.random.PRNGKey(config.seed(1)), (3,))
    z = jnp.linalg.solve(matrix, v)  # the maximiser of <z, v> - h(z)
    np.testing.assert_allclose(cost.h_legendre(v), z @ v - cost.h(z), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(cost.h)(cost.grad_h_legendre(v)), v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("p", [4.0 / 3.0, 3.0])
def test_power_cost_legendre_closed_form_against_numerical_sup(x64, p):
    from scipy.optimize import minimize

    matrix = _spd(jax.random.PRNGKey(config.seed(30)), 2)
    cost = tc.PowerCost.create(matrix, p)
    v = jax.random.normal(jax.random.PRNGKey(config.seed(31)), (2,), dtype=jnp.float64)
    # sup_z <z, v> - h(z) by scipy, independent of the closed form
    found = minimize(lambda z: float(cost.h(jnp.asarray(z)) - jnp.asarray(z) @ v), np.zeros(2),
                     method="Nelder-Mead", options=dict(xatol=1e-12, fatol=1e-14, maxiter=20000))  # fmt: skip
    np.testing.assert_allclose(cost.h_legendre(v), -found.fun, rtol=1e-7)
    np.testing.assert_allclose(cost.grad_h_legendre(v), found.x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jax.grad(cost.h)(cost.grad_h_legendre(v)), v, rtol=1e-10)
    np.testing.assert_allclose(jax.grad(cost.h_legendre)(v), cost.grad_h_legendre(v), rtol=1e-10)
    for fn in (cost.h, cost.h_legendre, cost.grad_h_legendre, jax.grad(cost.h)):  # finite at 0
        assert bool(jnp.all(jnp.isfinite(fn(jnp.zeros(2)))))
    half_mahalanobis = tc.PowerCost(matrix, 2.0)  # p = 2: z^T Q z / 2
    z = jnp.array([0.3, -1.1])
    np.testing.assert_allclose(half_mahalanobis.h(z), 0.5 * z @ matrix @ z, rtol=1e-12)


def test_power_cost_rejects_bad_input():
    with pytest.raises(ValueError, match="p must be > 1"):
        tc.PowerCost.create(jnp.eye(2), 1.0)
    with pytest.raises(ValueError, match="matrix must be symmetric positive definite"):
        tc.PowerCost.create(-jnp.eye(2), 1.5)
    with pytest.raises(ValueError, match="matrix must be a square"):
        tc.PowerCost.create(jnp.ones((2, 3)), 1.5)
    with pytest.raises(ValueError, match="p"):
        tc.PowerCost.create(jnp.eye(2), float("nan"))


def test_neural_cost_conjugate_inverts_the_gradient_and_is_convex():
    cost = tc.NeuralCost.create(jax.random.PRNGKey(config.seed(2)), 2, (16, 16))
    v = jax.random.normal(jax.random.PRNGKey(config.seed(3)), (8, 2))
    z = tc.grad_h_legendre(cost, v)
    np.testing.assert_allclose(jax.vmap(jax.grad(cost.h))(z), v, atol=1e-4)
    # Fenchel-Young with equality at the argmin, and h symmetric
    np.testing.assert_allclose(
        jax.vmap(cost.h_legendre)(v), jnp.sum(z * v, 1) - jax.vmap(cost.h)(z), atol=1e-5
    )
    np.testing.assert_allclose(cost.h(z[0]), cost.h(-z[0]), rtol=1e-6)
    hess = jax.hessian(cost.h)(z[1])
    assert np.linalg.eigvalsh(np.asarray(hess)).min() >= cost.alpha * 0.99


def test_neural_conjugate_implicit_gradient_matches_finite_differences(x64):
    cost = tc.NeuralCost.create(jax.random.PRNGKey(config.seed(4)), 2, (8,))
    cost = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cost)
    cost = tc.NeuralCost(cost.network, cost.alpha, rtol=1e-12, atol=1e-12, max_steps=500)
    v = jnp.array([0.7, -0.3])
    direction = jax.tree_util.tree_map(jnp.ones_like, cost)

    def loss(c):
        return jnp.sum(c.grad_h_legendre(v) ** 2)

    analytic, numeric = _directional_derivatives(loss, cost, direction, step=1e-5)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_cost_bad_inputs():
    with pytest.raises(ValueError, match="alpha"):
        tc.Mahalanobis.create(jnp.eye(2), alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        tc.Mahalanobis.euclidean(2, alpha=-1.0)
    with pytest.raises(ValueError, match="square"):
        tc.Mahalanobis.create(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="positive definite"):
        tc.Mahalanobis.from_matrix(-jnp.eye(2))
    with pytest.raises(ValueError, match="alpha"):
        tc.NeuralCost.create(jax.random.PRNGKey(0), 2, alpha=0.0)
    with pytest.raises(TypeError, match="TICost"):
        tc.grad_h_legendre(ott_costs.Cosine(), jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="shape"):
        tc.cosine_similarity(jnp.eye(2), jnp.eye(3))


# ----------------------------------------------------------------------------- the map


def _solve(x, y, cost, fraction=0.05):
    eps = fraction * sinkhorn.mean_cost(x, y, cost)
    return sinkhorn.solve(x, y, eps, cost_fn=cost, threshold=1e-5), eps


def test_map_for_half_squared_euclidean_equals_the_existing_entropic_map():
    key1, key2 = jax.random.split(jax.random.PRNGKey(config.seed(5)))
    x = jax.random.normal(key1, (60, 2))
    y = jax.random.normal(key2, (50, 2)) + 1.0
    cost = tc.Mahalanobis.euclidean(2)  # h = |z|^2 / 2
    out, eps = _solve(x, y, cost)
    mapped = monge.monge_map(x[:10], y, out.g, eps, cost)
    # the same solve with ott-jax's SqEuclidean |z|^2 at 2 eps has the same coupling
    reference = sinkhorn.solve(x, y, 2 * eps, threshold=1e-5)
    expected = sinkhorn.entropic_map(x[:10], y, reference.g, 2 * eps)
    np.testing.assert_allclose(mapped, expected, atol=1e-4)
    # and ott-jax's dual potentials (through the cost's twist operator) agree
    np.testing.assert_allclose(
        sinkhorn.entropic_map(x[:10], y, out.g, eps, cost), mapped, atol=1e-4
    )


def test_mahalanobis_map_general_path_equals_closed_form_path():
    key1, key2 = jax.random.split(jax.random.PRNGKey(config.seed(6)))
    x = jax.random.normal(key1, (40, 2))
    y = jax.random.normal(key2, (40, 2)) * 2.0
    matrix = data.mahalanobis_matrix()
    closed = tc.Mahalanobis.from_matrix(matrix)
    out, eps = _solve(x, y, closed)
    # the general path: grad h* as the argmin of a convex problem (a NeuralCost-like solve)
    z = jax.vmap(jax.grad(closed.h))(x[:5] - y[:5])
    np.testing.assert_allclose(tc.grad_h_legendre(closed, z), x[:5] - y[:5], atol=1e-4)
    mapped = monge.monge_map(x, y, out.g, eps, closed)
    ott = sinkhorn.entropic_map(x, y, out.g, eps, closed)
    np.testing.assert_allclose(mapped, ott, atol=1e-4)
    # at the training points the map is the M-weighted barycentric projection: sum_j P_ij y_j / a_i
    plan = sinkhorn.solve(x, y, eps, cost_fn=closed, threshold=1e-6, return_coupling=True)
    barycentric = (plan.coupling @ y) / plan.coupling.sum(1, keepdims=True)
    np.testing.assert_allclose(monge.monge_map(x, y, plan.g, eps, closed), barycentric, atol=1e-3)


def test_inverse_map_is_the_map_of_the_swapped_problem():
    key1, key2 = jax.random.split(jax.random.PRNGKey(config.seed(7)))
    x = jax.random.normal(key1, (30, 2))
    y = jax.random.normal(key2, (35, 2)) + 2.0
    cost = tc.Mahalanobis.from_matrix(data.mahalanobis_matrix())
    out, eps = _solve(x, y, cost)
    backward = monge.inverse_monge_map(y[:7], x, out.f, eps, cost)
    swapped = sinkhorn.solve(y, x, eps, cost_fn=cost, threshold=1e-5)
    np.testing.assert_allclose(backward, monge.monge_map(y[:7], x, swapped.g, eps, cost), atol=2e-3)


def test_map_implicit_gradient_matches_finite_differences_float64(x64):
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(8)), 40, 5, 5)
    x, y = p.x.astype(jnp.float64), p.y.astype(jnp.float64)
    cost = tc.Mahalanobis.create(jnp.array([[1.0, 0.0], [0.3, 2.0]]))

    def loss(factor):
        value, _ = monge.pair_loss(
            tc.Mahalanobis(factor, cost.alpha), x, y, x[:5], y[:5], 0.1, 0.0, 1e-10,
            max_iterations=5000,
        )  # fmt: skip
        return value

    grad = jax.grad(loss)(cost.factor)
    direction = jnp.array([[0.3, -0.2], [0.5, 0.1]])
    step = 1e-5
    numeric = (loss(cost.factor + step * direction) - loss(cost.factor - step * direction)) / (
        2 * step
    )
    np.testing.assert_allclose(jnp.sum(grad * direction), numeric, rtol=1e-4)


def test_map_bad_inputs():
    x = jnp.zeros((4, 2))
    cost = tc.Mahalanobis.euclidean(2)
    with pytest.raises(ValueError, match="epsilon"):
        monge.monge_map(x, x, jnp.zeros(4), 0.0, cost)
    with pytest.raises(ValueError, match="dimension|dim"):
        monge.monge_map(jnp.zeros((4, 3)), x, jnp.zeros(4), 0.1, cost)
    with pytest.raises(ValueError, match="g must have shape"):
        monge.monge_map(x, x, jnp.zeros(3), 0.1, cost)
    with pytest.raises(TypeError, match="TICost"):
        monge.monge_map(x, x, jnp.zeros(4), 0.1, ott_costs.Cosine())
    with pytest.raises(ValueError, match="x_pairs and y_pairs"):
        monge.fit_cost(cost, x, x, x[:2], x[:3])
    with pytest.raises(ValueError, match="epsilon_fraction"):
        monge.fit_cost(cost, x, x, x[:2], x[:2], epsilon_fraction=-1.0)
    with pytest.raises(ValueError, match="differentiation"):
        monge.fit_cost(cost, x, x, x[:2], x[:2], differentiation="magic")


# ----------------------------------------------------------------------------- learning


@pytest.mark.statistical
def test_fit_cost_learns_the_true_direction_and_beats_squared_euclidean():
    # in our runs (seeds 0-4, 60 steps): cosine 0.97-0.99; test error ratio 0.4-0.6
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(9)), 200, 30, 300)
    start = tc.Mahalanobis.euclidean(2)
    learned, info = monge.fit_cost(start, p.x, p.y, p.x[:30], p.y[:30], n_steps=40)
    assert bool(info["finite"].all())
    assert float(tc.cosine_similarity(learned.matrix, p.matrix)) > 0.9

    def error(cost):
        out, eps = _solve(p.x, p.y, cost, 0.03)
        return monge.map_error(monge.monge_map(p.x_test, p.y, out.g, eps, cost), p.y_test)

    assert error(learned) < 0.8 * error(start)


def test_fit_cost_implicit_nan_is_a_clear_error_and_unrolled_is_the_fallback(caplog):
    # in float32 at epsilon = 0.001 x mean cost, the implicit linear solve returns non-finite values
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(10)), 100, 20, 10)
    start = tc.Mahalanobis.euclidean(2)
    pairs = (p.x[:20], p.y[:20])
    with pytest.raises(FloatingPointError, match="differentiation='unrolled'"):
        monge.fit_cost(start, p.x, p.y, *pairs, n_steps=2, epsilon_fraction=0.001)
    # the clear error comes alone: JAX's log of the failed host callback (lineax's traceback)
    # is dropped
    assert "pure_callback failed" not in caplog.text
    learned, info = monge.fit_cost(
        start, p.x, p.y, *pairs, n_steps=2, epsilon_fraction=0.001, differentiation="unrolled"
    )
    assert bool(info["finite"].all()) and np.isfinite(np.asarray(learned.factor)).all()


def test_mahalanobis_problem_map_is_optimal_for_its_cost():
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(11)), 64, 64, 4)
    cost = tc.Mahalanobis.from_matrix(p.matrix)
    # all pairs labelled: the identity pairing is optimal for the true cost (up to ties)
    exact = sinkhorn.exact_ot_cost(p.x, p.y, cost)
    np.testing.assert_array_equal(exact.permutation, np.arange(64))
    euclid = sinkhorn.exact_ot_cost(p.x, p.y)
    assert not np.array_equal(euclid.permutation, np.arange(64))
    with pytest.raises(ValueError, match="n_pairs"):
        data.mahalanobis_problem(jax.random.PRNGKey(0), 10, 11)


def test_fit_neural_cost_implicit_and_unrolled():
    # implicit differentiation through Sinkhorn works for the neural cost (its pytree keeps one
    # structure when JAX rebuilds it with placeholder leaves, as custom_vjp's check does)
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(12)), 50, 10, 10)
    cost = tc.NeuralCost.create(jax.random.PRNGKey(config.seed(13)), 2, (8,))
    treedef = jax.tree_util.tree_structure(cost)
    placeholder = jax.tree_util.tree_unflatten(treedef, [object()] * treedef.num_leaves)
    assert jax.tree_util.tree_structure(placeholder) == treedef
    # in float32 the implicit linear solve through Sinkhorn is not finite at 0.03 x the mean
    # cost on this problem (a clear FloatingPointError, as for the Mahalanobis cost at smaller
    # epsilon); at 0.1 it is, and unrolling is finite at 0.03
    for how, fraction in (("implicit", 0.1), ("unrolled", 0.03)):
        fitted, info = monge.fit_cost(
            cost,
            p.x,
            p.y,
            p.x[:10],
            p.y[:10],
            n_steps=2,
            epsilon_fraction=fraction,
            differentiation=how,
        )
        assert bool(info["finite"].all())
        assert jax.tree_util.tree_structure(fitted) == treedef


def test_neural_cost_implicit_gradient_of_the_pair_loss_matches_finite_differences(x64):
    # the whole chain: Sinkhorn (ott-jax's implicit differentiation), the softmax weights and
    # grad h* (optimistix's implicit adjoint through BFGS), in float64
    p = data.mahalanobis_problem(jax.random.PRNGKey(config.seed(16)), 24, 4, 4)
    x, y = p.x.astype(jnp.float64), p.y.astype(jnp.float64)
    cost = tc.NeuralCost.create(jax.random.PRNGKey(config.seed(17)), 2, (4,))
    cost = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cost)
    cost = tc.NeuralCost(cost.network, cost.alpha, rtol=1e-14, atol=1e-14, max_steps=2000)
    leaves, treedef = jax.tree_util.tree_flatten(cost)
    keys = jax.random.split(jax.random.PRNGKey(config.seed(18)), len(leaves))
    direction = jax.tree_util.tree_unflatten(
        treedef,
        [jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, leaves, strict=True)],
    )

    @jax.jit
    def loss(c):
        return monge.pair_loss(c, x, y, x[:4], y[:4], 0.1, 1e-4, 1e-13, max_iterations=20000)[0]

    analytic, numeric = _directional_derivatives(loss, cost, direction, step=1e-4)
    # measured: relative gap 3e-5 at step 1e-4 (8e-5 at 1e-3, 5e-5 at 1e-5): the finite
    # difference's own noise, set by BFGS's residual |grad h(z*) - v| ~ 1e-9 in float64
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)


def test_tuned_map_error_picks_the_fraction_its_pairs_prefer():
    # the returned error is the held-out error of a direct solve at the chosen fraction, and
    # that fraction minimises the pairs' error over the grid
    problem = data.power_problem(jax.random.key(config.seed(40)), 80, 10, n_test=20)
    cost = tc.PowerCost(problem.matrix, float(problem.p))
    pairs = (problem.x[:10], problem.y[:10])
    fractions = (0.003, 0.03, 0.3)
    error, fraction, pair_errors = monge.tuned_map_error(
        cost, problem.x, problem.y, *pairs, problem.x_test, problem.y_test, fractions
    )
    assert pair_errors.shape == (3,) and float(fraction) == fractions[int(jnp.argmin(pair_errors))]
    eps = sinkhorn.relative_epsilon(problem.x, problem.y, float(fraction), cost)
    out = sinkhorn.solve(problem.x, problem.y, eps, cost_fn=cost, max_iterations=5000)
    direct = monge.map_error(
        monge.monge_map(problem.x_test, problem.y, out.g, eps, cost), problem.y_test
    )
    np.testing.assert_allclose(error, direct, rtol=1e-4)
    assert float(pair_errors[-1]) > float(jnp.min(pair_errors))  # the grid matters here
    with pytest.raises(ValueError, match="x_test and y_test must have the same shape"):
        monge.tuned_map_error(
            cost, problem.x, problem.y, *pairs, problem.x_test, problem.y_test[:5]
        )
    with pytest.raises(ValueError, match="fractions"):
        monge.tuned_map_error(cost, problem.x, problem.y, *pairs, *pairs, (0.01, -1.0))
