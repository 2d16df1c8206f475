"""otdiff.diffusion: the VP SDE, DSM, samplers and likelihoods, checked against exact answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from otdiff.data import exact_log_prob, exact_score, gaussian_mixture, ring
from otdiff.diffusion import (
    ddim,
    denoiser,
    dsm_loss,
    eps_from_score,
    euler_maruyama,
    gaussian_log_prob,
    log_likelihood,
    make_sde,
    probability_flow,
    reverse_kernel,
    sample,
    score_from_eps,
    time_grid,
    vp_cosine,
    vp_linear,
)

SDES = [vp_linear(), vp_cosine()]


def _mode_tv(mixture, x):
    labels = np.asarray(mixture.responsibilities(x).argmax(-1))
    occupancy = np.bincount(labels, minlength=mixture.n_components) / len(labels)
    return 0.5 * np.abs(occupancy - np.asarray(mixture.weights)).sum()


# -- the SDE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde", SDES, ids=["linear", "cosine"])
def test_schedule_identities(sde):
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, 1.0, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(sde.integrated_beta))(t), sde.beta(t), rtol=1e-4)
    assert float(sde.alpha(0.0)) == 1.0 and float(sde.alpha(1.0)) < 0.01
    np.testing.assert_allclose(
        sde.snr(t[1:]), (sde.alpha(t[1:]) / sde.sigma(t[1:])) ** 2, rtol=1e-4
    )


def test_linear_schedule_closed_form():
    sde = vp_linear(0.1, 20.0)
    t = 0.4
    expected = np.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))
    np.testing.assert_allclose(float(sde.alpha(t)), expected, rtol=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=["linear", "cosine"])
def test_forward_marginal_moments(sde):
    x0 = jnp.full((200_000, 2), 1.5)
    for t in (0.1, 0.5, 0.9):
        xt, eps = sde.sample_marginal(jax.random.key(0), x0, t)
        np.testing.assert_allclose(xt.mean(0), 1.5 * sde.alpha(t), atol=0.01)
        np.testing.assert_allclose(xt.std(0), sde.sigma(t), rtol=0.01)
        np.testing.assert_allclose(xt, sde.alpha(t) * x0 + sde.sigma(t) * eps, rtol=1e-6)


def test_forward_marginal_matches_simulated_sde():
    """The closed-form marginal against a fine Euler–Maruyama simulation of the forward SDE."""
    sde, n_steps = vp_linear(), 1000
    x0 = jnp.full((50_000, 1), 2.0)

    def step(x, inp):
        k, t = inp
        dt = 0.6 / n_steps
        return x + sde.drift(x, t) * dt + sde.diffusion(t) * jnp.sqrt(dt) * jax.random.normal(
            k, x.shape
        ), None

    ts = jnp.linspace(0.0, 0.6, n_steps + 1)[:-1]
    x, _ = jax.lax.scan(step, x0, (jax.random.split(jax.random.key(0), n_steps), ts))
    mean, std = sde.marginal(2.0, 0.6)
    np.testing.assert_allclose(float(x.mean()), float(mean), atol=0.01)
    np.testing.assert_allclose(float(x.std()), float(std), rtol=0.01)


def test_exact_transition_composes():
    sde = vp_cosine()
    m1, s1 = sde.transition(1.0, 0.2, 0.5)
    m2, s2 = sde.transition(m1, 0.5, 0.8)
    total_var = s1**2 * (m2 / m1) ** 2 + s2**2
    m, s = sde.transition(1.0, 0.2, 0.8)
    np.testing.assert_allclose([m2, total_var], [m, s**2], rtol=1e-5)


def test_sde_validation():
    with pytest.raises(ValueError, match="beta_min must be smaller than beta_max"):
        vp_linear(5.0, 5.0)
    with pytest.raises(ValueError, match="beta_min"):
        vp_linear(-0.1, 20.0)
    with pytest.raises(ValueError, match="c must lie"):
        vp_cosine(c=1.0)
    with pytest.raises(ValueError, match="kind"):
        make_sde("edm")


# -- DSM and Tweedie -----------------------------------------------------------------------------


def test_dsm_is_minimised_by_the_exact_score():
    m, sde = ring(4, radius=2.0, std=0.5), vp_linear()
    eps_exact = eps_from_score(exact_score(m, sde), sde)
    x0 = m.sample(jax.random.key(0), 100_000)
    losses = [
        float(dsm_loss(lambda x, t, c=c: c * eps_exact(x, t), sde, jax.random.key(1), x0))
        for c in (0.9, 1.0, 1.1)
    ]
    assert losses[1] < losses[0] and losses[1] < losses[2]
    assert 0.0 < losses[1] < 1.0  # the irreducible part of the loss
    lk = dsm_loss(eps_exact, sde, jax.random.key(1), x0, weighting="likelihood")
    assert np.isfinite(float(lk))


def test_dsm_validation_and_grad():
    sde = vp_linear()
    x0 = jnp.zeros((8, 2))
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(lambda x, t: x, sde, jax.random.key(0), x0, weighting="snr")
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(lambda x, t: x, sde, jax.random.key(0), jnp.zeros(3))
    with pytest.raises(ValueError, match="t_min"):
        dsm_loss(lambda x, t: x, sde, jax.random.key(0), x0, t_min=0.0)
    g = jax.grad(lambda w: dsm_loss(lambda x, t: w * x, sde, jax.random.key(0), x0 + 1.0))(1.0)
    assert np.isfinite(float(g))


def test_score_eps_roundtrip_and_tweedie_on_a_gaussian():
    """For X0 ~ N(mu, s^2), E[X0 | Xt = x] is known in closed form."""
    mu, s, t = 1.5, 0.4, 0.3
    m, sde = gaussian_mixture([[mu]], s), vp_linear()
    score = exact_score(m, sde)
    np.testing.assert_allclose(
        score_from_eps(eps_from_score(score, sde), sde)(jnp.array([0.3]), t),
        score(jnp.array([0.3]), t),
        rtol=1e-6,
    )
    a, sg = float(sde.alpha(t)), float(sde.sigma(t))
    x = jnp.array([0.7])
    posterior_mean = mu + a * s**2 / (a**2 * s**2 + sg**2) * (0.7 - a * mu)
    np.testing.assert_allclose(denoiser(score, sde)(x, t), [posterior_mean], rtol=1e-5)
    with pytest.raises(ValueError, match="t must lie"):
        denoiser(score, sde)(x, -0.5)


# -- samplers ------------------------------------------------------------------------------------


def test_time_grid_and_validation():
    ts = time_grid(4, 0.01, 1.0)
    np.testing.assert_allclose(ts, [1.0, 0.7525, 0.505, 0.2575, 0.01], rtol=1e-6)
    with pytest.raises(ValueError, match="n_steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="t_min"):
        time_grid(10, t_min=-0.1)
    with pytest.raises(ValueError, match="t_min must be smaller"):
        time_grid(10, t_min=0.5, t_max=0.4)


def test_reverse_kernel_log_density():
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    mean, std = reverse_kernel(score, sde, x, 0.5, 0.49)
    beta = float(sde.beta(0.5))
    np.testing.assert_allclose(
        mean, x + (0.5 * beta * x + beta * jax.vmap(score, (0, None))(x, 0.5)) * 0.01, rtol=1e-5
    )
    np.testing.assert_allclose(float(std), np.sqrt(beta * 0.01), rtol=1e-5)
    y = mean + 0.1
    np.testing.assert_allclose(
        gaussian_log_prob(y, mean, std),
        norm.logpdf(np.asarray(y), np.asarray(mean), float(std)).sum(-1),
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", ["sde", "ddim", "ode"])
def test_samplers_shapes_determinism_jit_vmap(name):
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)

    @jax.jit
    def draw(key):
        return sample(key, score, sde, 64, 2, sampler=name, n_steps=20).x

    a, b = draw(jax.random.key(0)), draw(jax.random.key(0))
    assert a.shape == (64, 2) and bool(jnp.all(a == b)) and bool(jnp.all(jnp.isfinite(a)))
    batch = jax.vmap(draw)(jax.random.split(jax.random.key(1), 3))
    assert batch.shape == (3, 64, 2)
    np.testing.assert_allclose(
        batch[0], draw(jax.random.split(jax.random.key(1), 3)[0]), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="sampler"):
        sample(jax.random.key(0), score, sde, 4, 2, sampler="heun")


def test_exact_score_sampler_reproduces_mode_weights():
    """The issue's claim: with the exact score a few hundred steps get the mode weights right."""
    m = gaussian_mixture(ring(4, radius=3.0).means, 0.3, weights=[0.4, 0.3, 0.2, 0.1])
    sde = vp_linear()
    score = exact_score(m, sde)
    for name in ("sde", "ddim"):
        x = jax.jit(lambda k, n=name: sample(k, score, sde, 4000, 2, sampler=n, n_steps=300).x)(
            jax.random.key(0)
        )
        assert _mode_tv(m, x) < 0.03, name


def test_ddim_with_eta_one_is_stochastic_and_ode_is_deterministic():
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)
    x_init = sde.prior_sample(jax.random.key(0), (32, 2))
    a = ddim(jax.random.key(1), score, sde, x_init, 30).x
    b = ddim(jax.random.key(2), score, sde, x_init, 30).x
    c = ddim(jax.random.key(2), score, sde, x_init, 30, eta=1.0).x
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert float(jnp.abs(a - c).max()) > 1e-2
    # the PF-ODE (adaptive) and DDIM (eta = 0, many steps) transport the same prior points alike
    ode = probability_flow(score, sde, x_init, rtol=1e-5, atol=1e-5).x
    fine = ddim(jax.random.key(1), score, sde, x_init, 1000).x
    assert float(jnp.median(jnp.linalg.norm(ode - fine, axis=1))) < 0.05


def test_hook_modifies_state_and_records_aux():
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)

    def clamp(x, t):
        return jnp.clip(x, -1.0, 1.0), jnp.mean(jnp.abs(x) > 1.0)

    out = euler_maruyama(
        jax.random.key(0),
        score,
        sde,
        sde.prior_sample(jax.random.key(1), (50, 2)),
        25,
        hook=clamp,
        save_trajectory=True,
    )
    assert out.aux.shape == (25,) and out.trajectory.shape == (26, 50, 2)
    assert float(jnp.abs(out.x).max()) <= 1.0


def test_sampler_validation():
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)
    with pytest.raises(ValueError, match="x_init"):
        euler_maruyama(jax.random.key(0), score, sde, jnp.zeros(3), 10)
    with pytest.raises(ValueError, match="x_init contains NaN"):
        euler_maruyama(jax.random.key(0), score, sde, jnp.full((3, 2), jnp.nan), 10)
    with pytest.raises(ValueError, match="eta"):
        ddim(jax.random.key(0), score, sde, jnp.zeros((3, 2)), 10, eta=-1.0)
    with pytest.raises(ValueError, match="n_steps is required"):
        probability_flow(score, sde, jnp.zeros((3, 2)), solver="heun")


# -- likelihoods ---------------------------------------------------------------------------------


def test_log_likelihood_matches_exact_density():
    m, sde = ring(), vp_linear()
    score = exact_score(m, sde)
    x = m.sample(jax.random.key(0), 64)
    exact = exact_log_prob(m, sde)(x, 1e-3)
    ll = jax.jit(lambda y: log_likelihood(score, sde, y))(x)
    np.testing.assert_allclose(ll, exact, atol=5e-3)
    hutch = log_likelihood(score, sde, x, key=jax.random.key(1), method="hutchinson")
    assert abs(float(jnp.mean(hutch - exact))) < 0.3  # unbiased, with per-point noise
    with pytest.raises(ValueError, match="key is required"):
        log_likelihood(score, sde, x, method="hutchinson")
    with pytest.raises(ValueError, match="method"):
        log_likelihood(score, sde, x, method="skilling")
