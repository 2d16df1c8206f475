"""otdiff.metrics: each metric against a case with a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import config, metrics
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


@pytest.mark.statistical
def test_energy_distance_known_values():
    # one-dimensional point masses: E|X - Y| = |a - b|, within-terms vanish
    x = jnp.zeros((10, 1))
    y = jnp.full((10, 1), 3.0)
    np.testing.assert_allclose(float(metrics.energy_distance(x, y)), 6.0, rtol=1e-5)
    m = ring()
    a, b = (
        m.sample(jax.random.key(config.seed(0)), 1500),
        m.sample(jax.random.key(config.seed(1)), 1500),
    )
    # measured over 10 seed offsets: |same law| median 0.0018, range [0.0002, 0.0081]; scaled by
    # 1.2: median 0.095, range [0.089, 0.113]; threshold 0.02 between them (0.01 was within a
    # fifth of the largest same-law value)
    assert (
        abs(float(metrics.energy_distance(a, b)))
        < 0.02
        < float(metrics.energy_distance(a, 1.2 * b))
    )
    with pytest.raises(ValueError, match="same dimension"):
        metrics.energy_distance(jnp.zeros((3, 2)), jnp.zeros((3, 3)))


@pytest.mark.statistical
def test_sinkhorn_divergence_orders_samples():
    m = ring()
    a, b = (
        m.sample(jax.random.key(config.seed(0)), 500),
        m.sample(jax.random.key(config.seed(1)), 500),
    )
    near = metrics.sinkhorn_divergence(a, b, epsilon=0.5)
    far = metrics.sinkhorn_divergence(a, b + 1.0, epsilon=0.5)
    # a shift by (1, 1) costs |shift|^2 = 2; two draws of 500 points differ in their mode counts,
    # which the divergence sees. Measured over 10 seed offsets: near median 0.27, range
    # [0.09, 0.60]; far median 2.34, range [1.62, 2.92]; thresholds 0.8 and 1.2.
    assert 0.0 <= float(near) < 0.8 and float(far) > 1.2
    with pytest.raises(ValueError, match="epsilon"):
        metrics.sinkhorn_divergence(a, b, epsilon=0.0)


def test_digit_classifier_judges_real_and_noise():
    clf = metrics.DigitClassifier()
    data = load_digits()
    assert clf.accuracy(data.test_images, data.test_labels) > 0.93
    real = clf.confident_fraction(data.test_images)
    noise = clf.confident_fraction(np.random.default_rng(config.seed(0)).uniform(-1, 1, (300, 64)))
    assert real > 0.85 and noise < 0.4
    with pytest.raises(ValueError, match="images must have shape"):
        clf.probabilities(np.zeros((2, 63)))
    with pytest.raises(ValueError, match="NaN"):
        clf.probabilities(np.full((2, 64), np.nan))


# -- the spherical-kernel MMD -----------------------------------------------------------------------


@pytest.mark.statistical
def test_spherical_mmd_uniform_term_is_exact():
    from otdiff.manifolds import Sphere, vmf_sample
    from otdiff.metrics import _uniform_kernel_mean, spherical_mmd2

    for kappa in (1.0, 10.0):
        assert abs(_uniform_kernel_mean(kappa, 2) - (1 - np.exp(-2 * kappa)) / (2 * kappa)) < 1e-12
    for dim in (1, 2, 3):
        s = Sphere(dim)
        u = np.asarray(s.random_uniform(jax.random.key(config.seed(dim)), 200_000), np.float64)
        mc = np.mean(np.exp(10.0 * (u[:, 0] - 1.0)))
        # measured over 10 seed offsets, d = 1, 2, 3: median 5e-4, 2e-4, 2e-4, largest 1.1e-3
        # (d = 1); threshold 3e-3
        assert abs(_uniform_kernel_mean(10.0, dim) - mc) < 3e-3
    # uniform samples: unbiased estimate centred on zero; a concentrated law: clearly positive
    vals = [
        float(spherical_mmd2(Sphere(2).random_uniform(jax.random.key(config.seed(s)), 1000)))
        for s in range(8)
    ]
    # measured over 10 seed offsets: |mean| median 9e-5, range [5e-5, 1.3e-4]; threshold 2e-4
    assert abs(np.mean(vals)) < 2e-4
    cap = vmf_sample(jax.random.key(config.seed(0)), jnp.array([0.0, 0.0, 1.0]), 20.0, 1000)
    # measured over 10 seed offsets: median 0.452, range [0.440, 0.470]; threshold 0.1
    assert float(spherical_mmd2(cap)) > 0.1
    # against a uniform *sample* it agrees with the closed form up to noise
    u2 = Sphere(2).random_uniform(jax.random.key(config.seed(9)), 3000)
    # measured over 10 seed offsets: median 0.0041, range [0.0020, 0.0072]; threshold 0.01 (5e-3
    # failed at 2 of 10 offsets)
    assert abs(float(spherical_mmd2(cap, u2)) - float(spherical_mmd2(cap))) < 1e-2


@pytest.mark.statistical
def test_spherical_mmd_two_samples():
    from otdiff.manifolds import vmf_sample
    from otdiff.metrics import spherical_mmd2

    north = jnp.array([0.0, 0.0, 1.0])
    a = vmf_sample(jax.random.key(config.seed(0)), north, 10.0, 1500)
    b = vmf_sample(jax.random.key(config.seed(1)), north, 10.0, 1500)
    c = vmf_sample(jax.random.key(config.seed(2)), jnp.array([1.0, 0.0, 0.0]), 10.0, 1500)
    same, different = float(spherical_mmd2(a, b)), float(spherical_mmd2(a, c))
    # measured over 10 seed offsets: |same| median 3.5e-4, range [2e-5, 1.02e-3]; different
    # median 0.658, range [0.641, 0.670]; thresholds 3e-3 and 0.1 (1e-3 failed at one offset)
    assert abs(same) < 3e-3 and different > 0.1
    # the V-statistic's upward bias, (1 - E k) / n: measured 8.8e-4 at every offset
    assert float(spherical_mmd2(a, b, unbiased=False)) > same
    np.testing.assert_allclose(float(spherical_mmd2(a, c)), float(spherical_mmd2(c, a)), rtol=1e-5)
    # blocks: a sample larger than one block gives the same value as a direct computation
    big = vmf_sample(jax.random.key(config.seed(3)), north, 3.0, 2500)
    k = lambda x, y: np.exp(10.0 * (np.asarray(x, np.float64) @ np.asarray(y, np.float64).T - 1))
    kxx = k(big, big)
    direct = (kxx.sum() - np.trace(kxx)) / (2500 * 2499) - (1 - np.exp(-20)) / 20
    assert abs(float(spherical_mmd2(big)) - direct) < 1e-5


def test_spherical_mmd_bad_input():
    from otdiff.metrics import spherical_mmd2

    with pytest.raises(ValueError, match="unit sphere"):
        spherical_mmd2(jnp.ones((10, 3)))
    with pytest.raises(ValueError, match="kappa"):
        spherical_mmd2(jnp.eye(3), kappa=0.0)
    with pytest.raises(ValueError, match="same dimension"):
        spherical_mmd2(jnp.eye(3), jnp.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        spherical_mmd2(jnp.eye(3)[:1])
