"""The sphere: exponential and logarithm maps, tangent Gaussians, the Riemannian divergence, vMF laws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces
from scipy.stats import vonmises_fisher

from otdiff import config, manifolds
from otdiff.manifolds import Sphere, vmf_log_normalizer, vmf_log_prob, vmf_mixture, vmf_sample

S2 = Sphere(2)


def random_points(key, n, dim=2):
    return Sphere(dim).random_uniform(key, n)


def random_tangents(key, x, scale=1.0):
    return scale * S2.to_tangent(x, jax.random.normal(key, x.shape))


# -- exp, log, distance -------------------------------------------------------------------------


def test_exp_stays_on_the_sphere_to_1e6():
    x = random_points(jax.random.key(config.seed(0)), 2000)
    v = random_tangents(
        jax.random.key(config.seed(1)), x, scale=3.0
    )  # lengths up to about 10: many turns
    y = S2.exp(x, v)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=1), 1.0, atol=1e-6)
    # and after a thousand small steps
    z = x
    for k in range(1000):
        z = S2.exp(z, random_tangents(jax.random.key(config.seed(10 + k)), z, scale=0.05))
    assert np.max(np.abs(np.linalg.norm(np.asarray(z), axis=1) - 1.0)) < 1e-6


def test_exp_follows_the_great_circle():
    x = jnp.array([1.0, 0.0, 0.0])
    for angle in (0.3, 1.5, 3.0, 2 * np.pi + 0.4):
        y = S2.exp(x, jnp.array([0.0, angle, 0.0]))
        np.testing.assert_allclose(np.asarray(y), [np.cos(angle), np.sin(angle), 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(S2.exp(x, jnp.zeros(3))), np.asarray(x))


def test_log_is_the_inverse_of_exp():
    x = random_points(jax.random.key(config.seed(2)), 1000)
    v = random_tangents(jax.random.key(config.seed(3)), x)
    norms = np.linalg.norm(np.asarray(v), axis=1)
    v = v * jnp.minimum(1.0, 3.0 / norms)[:, None]  # inside the injectivity radius pi
    np.testing.assert_allclose(np.asarray(S2.log(x, S2.exp(x, v))), np.asarray(v), atol=2e-4)
    y = random_points(jax.random.key(config.seed(4)), 1000)
    np.testing.assert_allclose(np.asarray(S2.exp(x, S2.log(x, y))), np.asarray(y), atol=1e-5)


def test_log_is_tangent_and_its_length_is_the_distance():
    x, y = (
        random_points(jax.random.key(config.seed(5)), 500),
        random_points(jax.random.key(config.seed(6)), 500),
    )
    v = S2.log(x, y)
    np.testing.assert_allclose(np.asarray(jnp.sum(v * x, 1)), 0.0, atol=1e-6)
    d = np.arccos(np.clip(np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64), 1), -1, 1))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(v), axis=1), d, atol=1e-5)
    np.testing.assert_allclose(np.asarray(S2.dist(x, y)), d, atol=1e-5)
    # the antipode: undefined direction, zero vector; distance pi
    np.testing.assert_allclose(np.asarray(S2.log(x[0], -x[0])), 0.0)
    assert abs(float(S2.dist(x[0], -x[0])) - np.pi) < 1e-6


def test_distance_is_accurate_for_nearby_points():
    x = jnp.array([0.0, 0.0, 1.0])
    y = jnp.array([1e-4, 0.0, 1.0]) / np.sqrt(1 + 1e-8)
    assert abs(float(S2.dist(x, y)) - 1e-4) < 1e-8


# -- tangent Gaussians and the divergence --------------------------------------------------------


@pytest.mark.statistical
def test_tangent_gaussians_are_orthogonal_to_the_base_point():
    x = random_points(jax.random.key(config.seed(7)), 5000)
    z = S2.random_normal_tangent(jax.random.key(config.seed(8)), x)
    np.testing.assert_allclose(np.asarray(jnp.sum(z * x, axis=1)), 0.0, atol=1e-6)
    # at one point, the covariance is the projector I - x x^T
    x0 = jnp.tile(jnp.array([[0.6, 0.0, 0.8]]), (40_000, 1))
    z0 = np.asarray(S2.random_normal_tangent(jax.random.key(config.seed(9)), x0))
    cov = z0.T @ z0 / len(z0)
    np.testing.assert_allclose(cov, np.eye(3) - np.outer([0.6, 0, 0.8], [0.6, 0, 0.8]), atol=0.03)


@pytest.mark.statistical
def test_divergence_of_a_projected_constant_field_is_minus_two_a_dot_x():
    a = jnp.array([0.3, -1.2, 0.7])
    field = lambda x: S2.to_tangent(x, a)  # (I - x x^T) a
    x = random_points(jax.random.key(config.seed(10)), 200)
    exact = jax.vmap(lambda p: S2.divergence(field, p))(x)
    np.testing.assert_allclose(np.asarray(exact), np.asarray(-2.0 * x @ a), atol=1e-5)
    # Hutchinson: unbiased, so the average over many probes converges to the same value
    p = x[0]
    probes = S2.hutchinson_probe(jax.random.key(config.seed(11)), jnp.tile(p, (20_000, 1)))
    est = jax.vmap(lambda z: S2.divergence(field, p, z))(probes)
    assert abs(float(est.mean()) - float(-2.0 * p @ a)) < 0.05


def test_divergence_on_higher_spheres_is_minus_d_a_dot_x():
    for dim in (1, 3, 5):
        s = Sphere(dim)
        a = jnp.linspace(-1, 1, dim + 1)
        x = s.random_uniform(jax.random.key(config.seed(dim)), 20)
        div = jax.vmap(lambda p, s=s, a=a: s.divergence(lambda y: s.to_tangent(y, a), p))(x)
        np.testing.assert_allclose(np.asarray(div), np.asarray(-dim * x @ a), atol=1e-5)


def test_base_class_projector_matches_the_sphere_closed_form():
    x = random_points(jax.random.key(config.seed(12)), 1)[0]
    generic = manifolds.Manifold.tangent_projector(S2, x)
    np.testing.assert_allclose(np.asarray(generic), np.asarray(S2.tangent_projector(x)), atol=1e-6)


# -- uniform and von Mises-Fisher ----------------------------------------------------------------


@pytest.mark.statistical
def test_uniform_moments_and_volume():
    x = np.asarray(random_points(jax.random.key(config.seed(13)), 100_000), np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(x.T @ x / len(x), np.eye(3) / 3, atol=0.01)
    assert abs(S2.log_volume() - np.log(4 * np.pi)) < 1e-12
    assert abs(Sphere(1).log_volume() - np.log(2 * np.pi)) < 1e-12
    assert abs(Sphere(3).log_volume() - np.log(2 * np.pi**2)) < 1e-12


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
@pytest.mark.parametrize("kappa", [0.0, 0.5, 5.0, 80.0])
def test_vmf_log_prob_matches_scipy(dim, kappa):
    mu = np.zeros(dim + 1)
    mu[-1] = 1.0
    x = np.asarray(Sphere(dim).random_uniform(jax.random.key(config.seed(dim)), 50), np.float64)
    ours = np.asarray(vmf_log_prob(jnp.asarray(x, jnp.float32), jnp.asarray(mu), kappa))
    if kappa == 0.0:
        ref = np.full(50, -Sphere(dim).log_volume())
    else:
        ref = vonmises_fisher(mu, kappa).logpdf(x)
    np.testing.assert_allclose(ours, ref, atol=2e-4 * max(1.0, kappa))


@pytest.mark.statistical
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("kappa", [0.5, 10.0, 200.0])
def test_vmf_samples_have_the_right_mean_resultant_length(dim, kappa):
    mu = jnp.zeros(dim + 1).at[0].set(1.0)
    x = np.asarray(vmf_sample(jax.random.key(config.seed(3)), mu, kappa, 50_000), np.float64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    ref = vonmises_fisher(np.asarray(mu, np.float64), kappa).rvs(
        50_000, random_state=config.seed(0)
    )
    # E[mu . x] = A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa); compared to scipy's sampler
    assert abs(x[:, 0].mean() - ref[:, 0].mean()) < 0.01
    assert abs((x[:, 0] ** 2).mean() - (ref[:, 0] ** 2).mean()) < 0.01
    np.testing.assert_allclose(x[:, 1:].mean(0), 0.0, atol=0.01)


def test_vmf_normaliser_integrates_to_one_on_s2():
    u, w = np.polynomial.legendre.leggauss(400)  # density depends on u = mu . x only
    for kappa in (0.1, 3.0, 60.0):
        log_c = float(vmf_log_normalizer(2, kappa))
        assert abs(2 * np.pi * np.sum(w * np.exp(log_c + kappa * u)) - 1.0) < 1e-4


@pytest.mark.statistical
def test_vmf_mixture_score_is_the_riemannian_gradient():
    mix = vmf_mixture(jnp.eye(3), jnp.array([5.0, 10.0, 20.0]), jnp.array([0.2, 0.3, 0.5]))
    x = random_points(jax.random.key(config.seed(14)), 20)
    grad = jax.vmap(jax.grad(lambda p: mix.log_prob(p)))(x)
    np.testing.assert_allclose(
        np.asarray(mix.score(x)), np.asarray(S2.to_tangent(x, grad)), rtol=1e-4, atol=1e-4
    )
    y = mix.sample(jax.random.key(config.seed(15)), 30_000)
    shares = np.bincount(np.argmax(np.asarray(y), axis=1), minlength=3) / 30_000
    np.testing.assert_allclose(shares, [0.2, 0.3, 0.5], atol=0.02)


def test_jit_and_vmap():
    x = random_points(jax.random.key(config.seed(16)), 8)
    v = random_tangents(jax.random.key(config.seed(17)), x)
    np.testing.assert_allclose(
        np.asarray(jax.jit(S2.exp)(x, v)), np.asarray(jax.vmap(S2.exp)(x, v)), atol=1e-6
    )
    sample = jax.jit(lambda k, kap: vmf_sample(k, jnp.array([0.0, 0.0, 1.0]), kap, 16))
    with traces() as seen:
        a = sample(jax.random.key(config.seed(0)), 4.0)
        b = sample(jax.random.key(config.seed(0)), 4.0)
        sample(jax.random.key(config.seed(0)), 40.0)  # kappa is dynamic
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert seen["<lambda>"] == 1


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_reported_clearly():
    with pytest.raises(ValueError, match="dim"):
        Sphere(0)
    with pytest.raises(ValueError, match="must lie on"):
        S2.check_points(jnp.array([[1.0, 1.0, 0.0]]), "x0")
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        S2.check_points(jnp.ones((4, 2)), "x0")
    with pytest.raises(ValueError, match="NaN"):
        S2.check_points(jnp.array([[jnp.nan, 0.0, 1.0]]), "x0")
    with pytest.raises(ValueError, match="kappa"):
        vmf_sample(jax.random.key(config.seed(0)), jnp.array([0.0, 0.0, 1.0]), -1.0, 4)
    with pytest.raises(ValueError, match="kappa"):
        vmf_mixture(jnp.eye(3), -2.0)
    with pytest.raises(ValueError, match="weights"):
        vmf_mixture(jnp.eye(3), 1.0, jnp.array([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="non-zero"):
        vmf_mixture(jnp.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="tangent"):
        S2.check_tangent(jnp.array([0.0, 0.0, 1.0]), jnp.array([0.0, 0.0, 1.0]), "v")


@pytest.mark.statistical
def test_vmf_kde_is_a_density():
    from otdiff.manifolds import vmf_kde

    pts = vmf_sample(jax.random.key(config.seed(0)), jnp.array([0.0, 0.0, 1.0]), 10.0, 500)
    density = vmf_kde(pts, 30.0)
    u = S2.random_uniform(jax.random.key(config.seed(1)), 200_000)
    # Monte Carlo integral over the sphere: 4 pi times the mean density at uniform points
    assert abs(4 * np.pi * float(density(u).mean()) - 1.0) < 0.03
    with pytest.raises(ValueError, match="points"):
        vmf_kde(jnp.ones(3))
