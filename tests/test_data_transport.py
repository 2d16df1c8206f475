"""otdiff.data.transport: the transport test problems against what they promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import config
from otdiff.data import gaussian_clouds, known_map, known_map_problem, mixture_clouds


def potential(x, jump=4.0, width=0.25, shift=1.0):
    """The convex potential phi whose gradient the known map claims to be."""
    return 0.5 * jnp.sum(x**2) + jump * width * jnp.log(jnp.cosh(x[0] / width)) + shift * jnp.sum(x)


def test_known_map_is_the_gradient_of_a_convex_potential():
    x = jax.random.normal(jax.random.key(config.seed(0)), (50, 3))
    np.testing.assert_allclose(known_map(x), jax.vmap(jax.grad(potential))(x), atol=1e-5)
    hessians = jax.vmap(jax.hessian(potential))(x)
    assert float(jnp.min(jnp.linalg.eigvalsh(hessians))) >= 1.0 - 1e-5  # phi - |x|^2 / 2 convex


def test_known_map_problem_returns_unpaired_samples_and_exact_test_images():
    x, y, x_test, y_test = known_map_problem(jax.random.key(config.seed(1)), 400, 2, n_test=30)
    assert x.shape == y.shape == (400, 2) and x_test.shape == y_test.shape == (30, 2)
    np.testing.assert_array_equal(y_test, known_map(x_test))
    assert float(jnp.max(jnp.abs(y - known_map(x)))) > 1.0  # the pairing is not given
    # the first coordinate splits into two lobes near -4 and 4 (plus the shift 1)
    assert 0.35 < float(jnp.mean(y[:, 0] > 1.0)) < 0.65


@pytest.mark.parametrize("d", [1, 4])
def test_gaussian_clouds_have_the_stated_means(d):
    x, y = gaussian_clouds(jax.random.key(config.seed(2)), 4000, d)
    assert x.shape == y.shape == (4000, d)
    np.testing.assert_allclose(jnp.mean(x, axis=0), 0.0, atol=0.1)
    np.testing.assert_allclose(jnp.mean(y, axis=0), 1.0, atol=0.1)


def test_mixture_clouds_are_balanced_clusters():
    x, y = mixture_clouds(jax.random.key(config.seed(3)), 300, 2, n_clusters=3)
    assert x.shape == y.shape == (300, 2)
    centres = x[:3]  # points 0, 1, 2 belong to clusters 0, 1, 2
    labels = jnp.argmin(jnp.sum((x[:, None] - centres[None]) ** 2, axis=-1), axis=1)
    np.testing.assert_array_equal(jnp.bincount(labels, length=3), [100, 100, 100])


# -- the known map for a power of a Mahalanobis norm ------------------------------------------


def _power_h(z, matrix, p):
    """h(z) = (z^T Q z)^(p/2) / p in numpy (float64), independent of the library's cost."""
    return np.einsum("...i,ij,...j->...", z, matrix, z) ** (p / 2) / p


def test_power_map_is_the_minimiser_of_the_c_transform():
    # T(x) = argmin_y h(x - y) + y^T B y / 2, found by scipy in float64, inverts the closed form
    # x = y + grad h*(B y): so T pushes the source (the closed form's image of N(0, I)) to N(0, I)
    from scipy.optimize import minimize

    from otdiff.data import POWER_POTENTIAL, mahalanobis_matrix, power_problem

    problem = power_problem(jax.random.key(config.seed(20)), 20, 20, n_test=10)
    matrix, potential, p = np.asarray(mahalanobis_matrix(), float), np.array(POWER_POTENTIAL), 4 / 3
    for x, y in zip(
        np.asarray(problem.x_test, float), np.asarray(problem.y_test, float), strict=True
    ):

        def objective(v, x=x):
            return _power_h(x - v, matrix, p) + 0.5 * v @ potential @ v

        found = minimize(objective, np.zeros(2), method="Nelder-Mead",
                         options=dict(xatol=1e-10, fatol=1e-14, maxiter=20000)).x  # fmt: skip
        np.testing.assert_allclose(found, y, atol=2e-4)


def test_power_map_is_optimal_for_its_cost_and_not_for_the_squared_euclidean_one():
    # exact discrete OT between 300 sampled pairs (uniform weights: an assignment problem): for
    # the true cost the identity is optimal; for the squared Euclidean cost most points are
    # matched elsewhere, to targets far from their true images (0.23 in mean squared distance
    # at n = 400 in our runs). The Mahalanobis cost with the same Q keeps the identity at this n
    # (its optimal map is close to the true one, 0.004 at n = 1200): not asserted.
    from scipy.optimize import linear_sum_assignment

    from otdiff.data import mahalanobis_matrix, power_problem

    problem = power_problem(jax.random.key(config.seed(21)), 300, 300, n_test=1)
    x, y = np.asarray(problem.x, float), np.asarray(problem.y, float)
    diffs = x[:, None, :] - y[None, :, :]
    true_cost = _power_h(diffs, np.asarray(mahalanobis_matrix(), float), 4 / 3)
    rows, cols = linear_sum_assignment(true_cost)
    np.testing.assert_array_equal(cols, rows)
    rows, cols = linear_sum_assignment(0.5 * np.sum(diffs**2, axis=-1))
    assert float(np.mean(cols != rows)) > 0.5
    assert float(np.mean(np.sum((y[cols] - y) ** 2, axis=-1))) > 0.1


def test_power_problem_shapes_pairs_and_validation():
    from otdiff.data import power_inverse_map, power_problem

    problem = power_problem(jax.random.key(config.seed(22)), 50, 10, n_test=7)
    assert problem.x.shape == problem.y.shape == (50, 2)
    assert problem.x_test.shape == problem.y_test.shape == (7, 2)
    labelled = power_inverse_map(problem.y[:10], problem.matrix, problem.potential, problem.p)
    np.testing.assert_allclose(problem.x[:10], labelled, rtol=1e-6)
    unpaired = power_inverse_map(problem.y[10:], problem.matrix, problem.potential, problem.p)
    assert float(jnp.max(jnp.abs(problem.x[10:] - unpaired))) > 1.0  # the pairing is not given
    with pytest.raises(ValueError, match="p must be > 1"):
        power_problem(jax.random.key(0), 10, 2, p=1.0)
    with pytest.raises(ValueError, match="matrix must be symmetric positive definite"):
        power_problem(jax.random.key(0), 10, 2, matrix=jnp.diag(jnp.array([1.0, 0.0])))
    with pytest.raises(ValueError, match="potential must be symmetric positive semi-definite"):
        power_problem(jax.random.key(0), 10, 2, potential=jnp.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="n_pairs"):
        power_problem(jax.random.key(0), 10, 11)
