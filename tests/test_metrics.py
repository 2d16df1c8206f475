"""otdiff.metrics: each metric against a case with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import metrics
from otdiff.data import gaussian_mixture, load_digits, ring


def test_mode_occupancy_and_tv():
    m = gaussian_mixture([[-5.0, 0.0], [5.0, 0.0]], 0.5, weights=[0.25, 0.75])
    x = jnp.array([[-5.0, 0.0], [4.0, 1.0], [6.0, 0.0], [5.0, 0.0]])
    np.testing.assert_allclose(metrics.mode_occupancy(m, x), [0.25, 0.75])
    assert float(metrics.mode_tv(m, x)) == 0.0
    np.testing.assert_allclose(float(metrics.mode_tv(m, x, target=[0.5, 0.5])), 0.25)


def test_weighted_occupancy_total_variation_and_diversity():
    m = gaussian_mixture([[-5.0, 0.0], [5.0, 0.0]], 0.5, weights=[0.25, 0.75])
    x = jnp.array([[-5.0, 0.0], [4.0, 1.0], [6.0, 0.0]])
    log_w = jnp.log(jnp.array([0.7, 0.2, 0.1]))
    np.testing.assert_allclose(metrics.mode_occupancy(m, x, log_w), [0.7, 0.3], rtol=1e-6)
    np.testing.assert_allclose(float(metrics.mode_tv(m, x, log_weights=log_w)), 0.45, rtol=1e-5)
    with pytest.raises(ValueError, match="log_weights must have shape"):
        metrics.mode_occupancy(m, x, jnp.zeros(2))
    np.testing.assert_allclose(metrics.total_variation(jnp.eye(3), jnp.ones(3) / 3), [2 / 3] * 3)
    with pytest.raises(ValueError, match="same length"):
        metrics.total_variation(jnp.ones(2), jnp.ones(3))
    centres = ring(8).means
    batch = centres[jnp.array([0, 0, 3, 5])] + 0.1
    assert int(metrics.distinct_modes(batch, centres)) == 3
    stack = jnp.stack([batch, centres[:4]])
    np.testing.assert_array_equal(
        jax.vmap(metrics.distinct_modes, (0, None))(stack, centres), [3, 4]
    )
    pts = jnp.array([[0.0, 0.0], [0.3, 0.0], [5.0, 5.0], [9.0, 9.0]])
    assert float(metrics.crowded_fraction(pts, 0.5)) == 0.5
    assert float(metrics.crowded_fraction(pts, 0.1)) == 0.0
    with pytest.raises(ValueError, match="radius"):
        metrics.crowded_fraction(pts, -1.0)


def test_energy_distance_known_values():
    # one-dimensional point masses: E|X - Y| = |a - b|, within-terms vanish
    x = jnp.zeros((10, 1))
    y = jnp.full((10, 1), 3.0)
    np.testing.assert_allclose(float(metrics.energy_distance(x, y)), 6.0, rtol=1e-5)
    m = ring()
    a, b = m.sample(jax.random.key(0), 1500), m.sample(jax.random.key(1), 1500)
    assert (
        abs(float(metrics.energy_distance(a, b)))
        < 0.01
        < float(metrics.energy_distance(a, 1.2 * b))
    )
    with pytest.raises(ValueError, match="same dimension"):
        metrics.energy_distance(jnp.zeros((3, 2)), jnp.zeros((3, 3)))


def test_sinkhorn_divergence_orders_samples():
    m = ring()
    a, b = m.sample(jax.random.key(0), 500), m.sample(jax.random.key(1), 500)
    near = metrics.sinkhorn_divergence(a, b, epsilon=0.5)
    far = metrics.sinkhorn_divergence(a, b + 1.0, epsilon=0.5)
    assert 0.0 <= float(near) < 0.3 and float(far) > 1.5  # a shift by (1, 1) costs |shift|^2 = 2
    with pytest.raises(ValueError, match="epsilon"):
        metrics.sinkhorn_divergence(a, b, epsilon=0.0)


def test_digit_classifier_judges_real_and_noise():
    clf = metrics.DigitClassifier()
    data = load_digits()
    assert clf.accuracy(data.test_images, data.test_labels) > 0.93
    real = clf.confident_fraction(data.test_images)
    noise = clf.confident_fraction(np.random.default_rng(0).uniform(-1, 1, (300, 64)))
    assert real > 0.85 and noise < 0.4
    with pytest.raises(ValueError, match="images must have shape"):
        clf.probabilities(np.zeros((2, 63)))
    with pytest.raises(ValueError, match="NaN"):
        clf.probabilities(np.full((2, 64), np.nan))
