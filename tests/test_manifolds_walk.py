"""The geodesic random walk: Brownian motion reaches uniform, a Langevin drift reaches its target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces

from otdiff import config
from otdiff.manifolds import Sphere, geodesic_random_walk, langevin_drift, vmf_log_prob, vmf_sample
from otdiff.metrics import spherical_mmd2

S2 = Sphere(2)
NORTH = jnp.array([0.0, 0.0, 1.0])


@pytest.mark.statistical
def test_zero_drift_reaches_uniform():
    x0 = vmf_sample(jax.random.key(config.seed(0)), NORTH, 50.0, 4000)  # a tight cap
    assert float(spherical_mmd2(x0)) > 0.3
    walk = geodesic_random_walk(jax.random.key(config.seed(1)), S2, x0, 8.0, 100, keep_path=False)
    assert walk.path is None
    # the unbiased MMD^2 to the uniform law: mean 0, standard deviation about 6e-5 at n = 4000
    assert abs(float(spherical_mmd2(walk.x))) < 5e-4
    np.testing.assert_allclose(np.linalg.norm(np.asarray(walk.x), axis=1), 1.0, atol=1e-6)


@pytest.mark.statistical
def test_short_walk_does_not_reach_uniform_and_the_path_is_consistent():
    x0 = vmf_sample(jax.random.key(config.seed(0)), NORTH, 50.0, 2000)
    walk = geodesic_random_walk(jax.random.key(config.seed(1)), S2, x0, 0.2, 20)
    assert walk.path.shape == (21, 2000, 3)
    np.testing.assert_array_equal(np.asarray(walk.path[0]), np.asarray(x0))
    np.testing.assert_array_equal(np.asarray(walk.path[-1]), np.asarray(walk.x))
    np.testing.assert_allclose(np.asarray(walk.times), np.linspace(0, 0.2, 21), atol=1e-7)
    assert float(spherical_mmd2(walk.x)) > 0.05  # the prior mismatch of a short horizon
    # Brownian motion from the north pole: E[x_3] = exp(-t) (the l = 1 eigenvalue of Delta / 2)
    spread = np.mean([np.asarray(walk.path[k, :, 2]) for k in range(21)], axis=1)
    assert np.all(np.diff(spread) < 0.01)


@pytest.mark.statistical
def test_langevin_drift_reaches_its_target():
    kappa = 4.0
    drift = langevin_drift(S2, lambda x: vmf_log_prob(x, NORTH, kappa))
    x0 = S2.random_uniform(jax.random.key(config.seed(2)), 4000)
    walk = geodesic_random_walk(
        jax.random.key(config.seed(3)), S2, x0, 6.0, 300, drift, keep_path=False
    )
    target = vmf_sample(jax.random.key(config.seed(4)), NORTH, kappa, 4000)
    assert abs(float(spherical_mmd2(walk.x, target))) < 2e-3
    assert float(spherical_mmd2(x0, target)) > 0.02


def test_deterministic_and_horizon_is_dynamic():
    x0 = S2.random_uniform(jax.random.key(config.seed(5)), 64)
    a = geodesic_random_walk(jax.random.key(config.seed(6)), S2, x0, 0.3, 10).x
    b = geodesic_random_walk(jax.random.key(config.seed(6)), S2, x0, 0.3, 10).x
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    run = jax.jit(lambda k, h: geodesic_random_walk(k, S2, x0, h, 10).x)
    with traces() as seen:
        run(jax.random.key(config.seed(0)), 0.3)
        run(jax.random.key(config.seed(0)), 1.7)
    assert seen["<lambda>"] == 1


def test_drift_is_projected_and_applied():
    # a constant ambient drift towards the north pole: the walk moves up
    drift = lambda x, t: 5.0 * NORTH
    x0 = S2.random_uniform(jax.random.key(config.seed(7)), 2000)
    walk = geodesic_random_walk(
        jax.random.key(config.seed(8)), S2, x0, 1.0, 50, drift, keep_path=False
    )
    assert float(jnp.mean(walk.x[:, 2])) > 0.8


def test_bad_input_is_reported_clearly():
    x0 = S2.random_uniform(jax.random.key(config.seed(9)), 4)
    with pytest.raises(ValueError, match="must lie on"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, 2.0 * x0, 0.5, 10)
    with pytest.raises(ValueError, match="horizon"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, x0, 0.0, 10)
    with pytest.raises(ValueError, match="horizon"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, x0, -1.0, 10)
    with pytest.raises(ValueError, match="n_steps"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, x0, 0.5, 0)
    with pytest.raises(TypeError, match="n_steps"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, x0, 0.5, 2.5)
    with pytest.raises(TypeError, match="manifold"):
        geodesic_random_walk(jax.random.key(config.seed(0)), "sphere", x0, 0.5, 10)
    with pytest.raises(TypeError, match="drift"):
        geodesic_random_walk(jax.random.key(config.seed(0)), S2, x0, 0.5, 10, drift=3.0)
