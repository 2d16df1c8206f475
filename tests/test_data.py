"""otdiff.data: exact densities and scores against autodiff, samplers against moments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import config
from otdiff.data import (
    checkerboard,
    exact_log_prob,
    exact_score,
    gaussian_mixture,
    grid,
    load_digits,
    ring,
    to_image,
    two_moons,
)
from otdiff.diffusion import CosineVP, LinearVP


def _mixture_full_cov():
    covs = jnp.array(
        [[[0.5, 0.2], [0.2, 0.3]], [[0.1, 0.0], [0.0, 0.4]], [[0.2, -0.1], [-0.1, 0.2]]]
    )
    return gaussian_mixture(
        [[0.0, 1.0], [2.0, -1.0], [-2.0, 0.5]], weights=[0.5, 0.3, 0.2], covs=covs
    )


def test_log_prob_matches_scipy():
    from scipy.stats import multivariate_normal

    m = _mixture_full_cov()
    x = np.random.default_rng(config.seed(0)).normal(size=(20, 2))
    ref = np.log(
        sum(
            float(w) * multivariate_normal(np.asarray(mu), np.asarray(c)).pdf(x)
            for w, mu, c in zip(m.weights, m.means, m.covs, strict=True)
        )
    )
    np.testing.assert_allclose(np.asarray(m.log_prob(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde", [LinearVP(), CosineVP()], ids=["linear", "cosine"])
@pytest.mark.parametrize("t", [0.0, 1e-3, 0.2, 0.7, 1.0])
def test_exact_score_is_gradient_of_exact_log_prob(sde, t):
    for m in (_mixture_full_cov(), ring(), two_moons(n_quadrature=32)):
        x = m.sample(jax.random.key(config.seed(1)), 16) * 1.3
        auto = jax.vmap(jax.grad(exact_log_prob(m, sde)), in_axes=(0, None))(x, t)
        np.testing.assert_allclose(exact_score(m, sde)(x, t), auto, rtol=1e-4, atol=1e-4)


@pytest.mark.statistical
def test_noised_mixture_matches_forward_samples():
    m, sde, t = ring(), LinearVP(), 0.3
    x0 = m.sample(jax.random.key(config.seed(0)), 200_000)
    xt, _ = sde.sample_marginal(jax.random.key(config.seed(1)), x0, t)
    noised = m.noised(sde, t)
    mean = jnp.einsum("k,kd->d", noised.weights, noised.means)
    second = jnp.einsum("k,kij->ij", noised.weights, noised.covs) + jnp.einsum(
        "k,ki,kj->ij", noised.weights, noised.means, noised.means
    )
    # measured over 10 seed offsets: largest |mean error| median 0.0023, range [0.0005, 0.0060];
    # threshold 0.02; largest second-moment error median 0.0071, range [0.0046, 0.0125];
    # threshold 0.03
    np.testing.assert_allclose(xt.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(xt.T @ xt / len(xt), second, atol=0.03)


@pytest.mark.statistical
def test_mixture_sampler_weights_and_moments():
    m = _mixture_full_cov()
    x, lab = m.sample_with_labels(jax.random.key(config.seed(0)), 100_000)
    # measured over 10 seed offsets: largest weight error median 0.0011, range [0.0001, 0.0026];
    # threshold 0.01; largest covariance error median 0.0019, range [0.0009, 0.0077]; threshold 0.02
    np.testing.assert_allclose(np.bincount(lab) / len(lab), m.weights, atol=0.01)
    sel = np.asarray(x[lab == 0])
    np.testing.assert_allclose(np.cov(sel.T), m.covs[0], atol=0.02)


def test_builders_and_validation():
    assert ring(6).means.shape == (6, 2) and grid(3).means.shape == (9, 2)
    np.testing.assert_allclose(jnp.linalg.norm(ring(radius=2.0).means, axis=1), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="stds"):
        gaussian_mixture([[0.0, 0.0]], stds=-1.0)
    with pytest.raises(ValueError, match="weights"):
        gaussian_mixture([[0.0], [1.0]], weights=[0.7, 0.7])
    with pytest.raises(ValueError, match="means"):
        gaussian_mixture([[np.nan, 0.0]])
    with pytest.raises(ValueError, match="means"):
        gaussian_mixture([0.0, 1.0])
    with pytest.raises(ValueError, match="covs"):
        gaussian_mixture([[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match="n_modes"):
        ring(0)


def test_two_moons_density_normalised_and_matches_samples():
    m = two_moons()
    g = np.linspace(-3, 3, 301)
    pts = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    mass = float(jnp.exp(m.log_prob(pts)).sum()) * (g[1] - g[0]) ** 2
    assert abs(mass - 1.0) < 1e-3
    # a finer quadrature changes the log-density by less than 1e-3 where the mass is
    fine = two_moons(n_quadrature=2048)
    x = m.sample(jax.random.key(config.seed(0)), 500)
    assert float(jnp.max(jnp.abs(m.log_prob(x) - fine.log_prob(x)))) < 1e-3


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5])
def test_checkerboard_exact_noised_density(t):
    c, sde = checkerboard(), LinearVP()
    noised = c.noised(sde, t)
    g = np.linspace(-4, 4, 641)
    pts = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    mass = float(jnp.exp(noised.log_prob(pts)).sum()) * (g[1] - g[0]) ** 2
    # at t = 0 the grid's points on the squares' edges count twice
    assert abs(mass - 1.0) < (3e-2 if t == 0.0 else 2e-3)
    if t == 0.0:
        x = c.sample(jax.random.key(config.seed(0)), 100)
        np.testing.assert_allclose(c.log_prob(x), np.log(1 / 8), rtol=1e-6)
        assert float(c.log_prob(jnp.array([0.5, -0.5]))) == -np.inf  # a light square
    else:
        x = noised.sample(jax.random.key(config.seed(0)), 64)
        auto = jax.vmap(jax.grad(lambda y: noised.log_prob(y)))(x)
        np.testing.assert_allclose(exact_score(c, sde)(x, t), auto, rtol=1e-5, atol=1e-5)
        # the exact noised density agrees with a histogram of forward samples
        xs = np.asarray(
            sde.sample_marginal(
                jax.random.key(config.seed(2)), c.sample(jax.random.key(config.seed(1)), 400_000), t
            )[0]
        )
        h, ex, ey = np.histogram2d(
            xs[:, 0], xs[:, 1], bins=16, range=[[-2, 2], [-2, 2]], density=True
        )
        centres = jnp.asarray(
            np.stack(np.meshgrid((ex[1:] + ex[:-1]) / 2, (ey[1:] + ey[:-1]) / 2, indexing="ij"), -1)
        )
        dens = np.asarray(jnp.exp(noised.log_prob(centres.reshape(-1, 2)))).reshape(16, 16)
        h = h * ((xs[:, 0] >= -2) & (xs[:, 0] <= 2) & (xs[:, 1] >= -2) & (xs[:, 1] <= 2)).mean()
        assert np.abs(h - dens).max() < 0.02


def test_digits():
    data = load_digits()
    assert data.train_images.shape[1] == 64
    assert data.train_images.shape[0] + data.test_images.shape[0] == 1797
    assert data.train_images.min() == -1.0 and data.train_images.max() == 1.0
    assert to_image(data.test_images[:3]).shape == (3, 8, 8)
    assert load_digits(seed=0).test_labels.tolist() == data.test_labels.tolist()
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match="64"):
        to_image(np.zeros((2, 63)))
