"""The heat kernel of S^2: normalisation, truncation error, score, exact samples, the random walk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces
from scipy.special import eval_legendre

from otdiff import config
from otdiff.manifolds import (
    Sphere,
    geodesic_random_walk,
    heat_kernel,
    heat_kernel_cdf,
    heat_kernel_score,
    log_heat_kernel,
    n_terms_for,
    sample_heat_kernel,
    truncation_error,
)

S2 = Sphere(2)
NORTH = jnp.array([0.0, 0.0, 1.0])


def reference_density(u, t, n_terms=4000):
    """The series in float64 with far more terms than needed."""
    deg = np.arange(n_terms)[:, None]
    return np.sum(
        (2 * deg + 1) / (4 * np.pi) * np.exp(-deg * (deg + 1) * t / 2) * eval_legendre(deg, u), 0
    )


def meridian(theta):
    theta = np.asarray(theta)
    return np.stack([np.sin(theta), np.zeros_like(theta), np.cos(theta)], axis=-1)


@pytest.mark.parametrize("t", [0.01, 0.05, 0.3, 2.0])
def test_integrates_to_one(t):
    u, w = np.polynomial.legendre.leggauss(600)  # p depends on u = x . x0; dA = 2 pi du
    p = heat_kernel(
        jnp.asarray(meridian(np.arccos(u)), jnp.float32), NORTH, t, n_terms=n_terms_for(t)
    )
    assert abs(2 * np.pi * np.sum(w * np.asarray(p, np.float64)) - 1.0) < 1e-5


@pytest.mark.parametrize("t", [0.02, 0.2, 1.0])
def test_truncation_error_is_bounded(t):
    theta = np.linspace(0, np.pi, 50)
    ref = reference_density(np.cos(theta), t)
    for n_terms in (3, 8, 20, n_terms_for(t)):
        p = heat_kernel(jnp.asarray(meridian(theta), jnp.float32), NORTH, t, n_terms=n_terms)
        err = np.max(np.abs(np.asarray(p, np.float64) - ref))
        bound = truncation_error(t, n_terms)
        assert err <= bound + 5e-6 * max(1.0, ref.max()), (n_terms, err, bound)
    assert truncation_error(t, n_terms_for(t)) <= 1e-6
    assert truncation_error(t, n_terms_for(t) - 1) > 1e-6


def test_terms_needed_grow_as_time_shrinks():
    counts = [n_terms_for(t) for t in (1.0, 0.1, 0.01, 0.001)]
    assert counts == sorted(counts) and counts[-1] > 5 * counts[1]


def test_small_time_matches_varadhan():
    # p_t ~ (2 pi t)^-1 sqrt(theta / sin theta) exp(-theta^2 / 2t) as t -> 0
    t, theta = 0.004, np.array([0.02, 0.05, 0.1])
    p = np.asarray(
        heat_kernel(jnp.asarray(meridian(theta), jnp.float32), NORTH, t, n_terms=n_terms_for(t))
    )
    approx = np.exp(-(theta**2) / (2 * t)) * np.sqrt(theta / np.sin(theta)) / (2 * np.pi * t)
    np.testing.assert_allclose(p, approx, rtol=0.01)


def test_score_is_the_gradient_of_the_log_density():
    x = S2.random_uniform(jax.random.key(config.seed(0)), 64)
    x0 = S2.random_uniform(jax.random.key(config.seed(1)), 64)
    for t in (0.05, 0.5):
        score = heat_kernel_score(x, x0, t)
        assert np.max(np.abs(np.asarray(jnp.sum(score * x, 1)))) < 1e-4  # tangent
        mask = np.asarray(heat_kernel(x, x0, t)) > 1e-3  # where the log is well resolved
        grad = jax.vmap(jax.grad(lambda y, y0, t=t: log_heat_kernel(y, y0, t)))(x, x0)
        np.testing.assert_allclose(
            np.asarray(score)[mask], np.asarray(S2.to_tangent(x, grad))[mask], rtol=1e-3, atol=1e-3
        )


def test_score_far_away_at_small_time_falls_back_to_varadhan():
    t = 0.01
    x = jnp.asarray(meridian(np.array([2.5])), jnp.float32)
    score = np.asarray(heat_kernel_score(x, NORTH, t))
    expected = np.asarray(S2.log(x, NORTH)) / t
    np.testing.assert_allclose(score, expected, rtol=1e-4)
    assert np.all(np.isfinite(score))


@pytest.mark.statistical
@pytest.mark.parametrize("t", [0.02, 0.3])
def test_exact_samples_have_the_kernel_moments(t):
    # E[P_l(X . x0)] = exp(-l (l + 1) t / 2) for Brownian motion from x0
    x0 = S2.random_uniform(jax.random.key(config.seed(2)), 1)
    x = sample_heat_kernel(
        jax.random.key(config.seed(3)), jnp.tile(x0, (40_000, 1)), t, n_terms=n_terms_for(t)
    )
    np.testing.assert_allclose(np.linalg.norm(np.asarray(x), axis=1), 1.0, atol=1e-6)
    u = np.asarray(x @ x0[0], np.float64)
    for deg in (1, 2, 3):
        assert abs(eval_legendre(deg, u).mean() - np.exp(-deg * (deg + 1) * t / 2)) < 0.01
    # the direction around x0 is uniform: the mean of the tangent part is zero
    tangent = np.asarray(S2.to_tangent(jnp.tile(x0, (40_000, 1)), x))
    np.testing.assert_allclose(tangent.mean(0), 0.0, atol=0.01)


def test_cdf_is_a_distribution_function():
    theta = jnp.linspace(0.0, np.pi, 200)
    for t in (0.02, 0.5):
        f = np.asarray(heat_kernel_cdf(theta, t, n_terms=n_terms_for(t)))
        assert abs(f[0]) < 1e-6 and abs(f[-1] - 1.0) < 1e-5
        assert np.all(np.diff(f) > -1e-6)


@pytest.mark.statistical
def test_a_long_random_walk_matches_the_kernel():
    # 400 small steps of the zero-drift geodesic random walk against the exact law at t = 0.4
    t, n = 0.4, 20_000
    x0 = jnp.tile(NORTH, (n, 1))
    walk = geodesic_random_walk(jax.random.key(config.seed(4)), S2, x0, t, 400, keep_path=False).x
    u_walk = np.asarray(walk[:, 2], np.float64)
    exact = sample_heat_kernel(jax.random.key(config.seed(5)), x0, t)
    u_exact = np.asarray(exact[:, 2], np.float64)
    for deg in (1, 2, 3):
        target = np.exp(-deg * (deg + 1) * t / 2)
        assert abs(eval_legendre(deg, u_walk).mean() - target) < 0.015
        assert abs(eval_legendre(deg, u_exact).mean() - target) < 0.015
    # and the histograms of the distance agree
    bins = np.linspace(0, np.pi, 13)
    h_walk = np.histogram(np.arccos(u_walk), bins)[0] / n
    h_exact = np.histogram(np.arccos(u_exact), bins)[0] / n
    assert np.max(np.abs(h_walk - h_exact)) < 0.015


def test_jit_with_dynamic_time():
    f = jax.jit(lambda k, t: sample_heat_kernel(k, jnp.tile(NORTH, (8, 1)), t))
    with traces() as seen:
        f(jax.random.key(config.seed(0)), 0.1)
        f(jax.random.key(config.seed(0)), 0.7)
    assert seen["<lambda>"] == 1
    per_point = sample_heat_kernel(
        jax.random.key(config.seed(0)), jnp.tile(NORTH, (4, 1)), jnp.array([0.1, 0.2, 0.3, 0.4])
    )
    assert per_point.shape == (4, 3)


def test_bad_input_is_reported_clearly():
    with pytest.raises(ValueError, match=r"t must lie in \(0, inf\]"):
        heat_kernel(NORTH, NORTH, 0.0)
    with pytest.raises(ValueError, match=r"t must lie in \(0, inf\]"):
        sample_heat_kernel(jax.random.key(config.seed(0)), NORTH[None], -1.0)
    with pytest.raises(ValueError, match="size 3"):
        heat_kernel(jnp.ones(4), jnp.ones(4), 0.1)
    with pytest.raises(ValueError, match="n_terms"):
        heat_kernel(NORTH, NORTH, 0.1, n_terms=0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        sample_heat_kernel(jax.random.key(config.seed(0)), NORTH, 0.1)
    with pytest.raises(ValueError, match="t_min"):
        n_terms_for(0.0)
