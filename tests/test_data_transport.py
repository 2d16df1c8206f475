"""otdiff.data.transport: the transport test problems against what they promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff.data import gaussian_clouds, known_map, known_map_problem, mixture_clouds


def potential(x, jump=4.0, width=0.25, shift=1.0):
    """The convex potential phi whose gradient the known map claims to be."""
    return 0.5 * jnp.sum(x**2) + jump * width * jnp.log(jnp.cosh(x[0] / width)) + shift * jnp.sum(x)


def test_known_map_is_the_gradient_of_a_convex_potential():
    x = jax.random.normal(jax.random.key(0), (50, 3))
    np.testing.assert_allclose(known_map(x), jax.vmap(jax.grad(potential))(x), atol=1e-5)
    hessians = jax.vmap(jax.hessian(potential))(x)
    assert float(jnp.min(jnp.linalg.eigvalsh(hessians))) >= 1.0 - 1e-5  # phi - |x|^2 / 2 convex


def test_known_map_problem_returns_unpaired_samples_and_exact_test_images():
    x, y, x_test, y_test = known_map_problem(jax.random.key(1), 400, 2, n_test=30)
    assert x.shape == y.shape == (400, 2) and x_test.shape == y_test.shape == (30, 2)
    np.testing.assert_array_equal(y_test, known_map(x_test))
    assert float(jnp.max(jnp.abs(y - known_map(x)))) > 1.0  # the pairing is not given
    # the first coordinate splits into two lobes near -4 and 4 (plus the shift 1)
    assert 0.35 < float(jnp.mean(y[:, 0] > 1.0)) < 0.65


@pytest.mark.parametrize("d", [1, 4])
def test_gaussian_clouds_have_the_stated_means(d):
    x, y = gaussian_clouds(jax.random.key(2), 4000, d)
    assert x.shape == y.shape == (4000, d)
    np.testing.assert_allclose(jnp.mean(x, axis=0), 0.0, atol=0.1)
    np.testing.assert_allclose(jnp.mean(y, axis=0), 1.0, atol=0.1)


def test_mixture_clouds_are_balanced_clusters():
    x, y = mixture_clouds(jax.random.key(3), 300, 2, n_clusters=3)
    assert x.shape == y.shape == (300, 2)
    centres = x[:3]  # points 0, 1, 2 belong to clusters 0, 1, 2
    labels = jnp.argmin(jnp.sum((x[:, None] - centres[None]) ** 2, axis=-1), axis=1)
    np.testing.assert_array_equal(jnp.bincount(labels, length=3), [100, 100, 100])
