"""otdiff.energy: energy models, distillation (the Helmholtz projection) and energy-based SMC."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import energy as en
from otdiff.data import exact_score, gaussian_mixture
from otdiff.diffusion import reverse_kernel, vp_linear
from otdiff.metrics import mode_occupancy


@pytest.fixture(scope="module")
def setup():
    sde = vp_linear()
    mix = gaussian_mixture([[-2.0, 0.0], [2.0, 0.0]], [0.2, 0.6], [0.5, 0.5])
    return sde, mix, en.MixtureEnergy(mix, sde)


def _log_integral_of_square(mix):
    """log of the integral of p^2 for a Gaussian mixture: sum_ij w_i w_j N(mu_i; mu_j, S_i + S_j)."""
    total = 0.0
    for i in range(mix.n_components):
        for j in range(mix.n_components):
            s = np.asarray(mix.covs[i] + mix.covs[j], np.float64)
            d = np.asarray(mix.means[i] - mix.means[j], np.float64)
            dens = math.exp(-0.5 * d @ np.linalg.solve(s, d)) / (
                2 * math.pi * math.sqrt(np.linalg.det(s))
            )
            total += float(mix.weights[i] * mix.weights[j]) * dens
    return math.log(total)


# -- energy models ---------------------------------------------------------------------------------


def test_mixture_energy_gradient_is_minus_the_exact_score(setup):
    sde, mix, energy = setup
    score = en.energy_score(energy)
    ref = exact_score(mix, sde)
    x = jax.random.normal(jax.random.key(0), (20, 2)) * 2
    for t in (0.01, 0.3, 0.9):
        np.testing.assert_allclose(
            jax.vmap(score, (0, None))(x, t), jax.vmap(ref, (0, None))(x, t), rtol=1e-4, atol=1e-4
        )


def test_energy_mlp_is_scalar_smooth_and_checks_its_input():
    sde = vp_linear()
    model = en.EnergyMLP(2, hidden=(16, 16), key=jax.random.key(0), data_std=1.0, sde=sde)
    e = model(jnp.ones(2), 0.5)
    assert e.shape == ()
    g = jax.grad(model)(jnp.ones(2), 0.5)
    assert g.shape == (2,) and bool(jnp.all(jnp.isfinite(g)))
    # double backprop works (what distillation needs)
    loss = lambda m: jnp.sum(jax.grad(m)(jnp.ones(2), 0.5) ** 2)  # noqa: E731
    grads = eqx.filter_grad(loss)(model)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(grads))
    with pytest.raises(ValueError, match="shape"):
        model(jnp.ones((3, 2)), 0.5)
    with pytest.raises(ValueError, match="hidden"):
        en.EnergyMLP(2, hidden=(), key=jax.random.key(0))


def test_compose_weights_and_naive_score(setup):
    sde, mix, energy = setup
    comp = en.compose([energy, energy], [0.5, 1.5])
    x = jnp.array([0.3, -0.2])
    assert float(comp(x, 0.4)) == pytest.approx(2.0 * float(energy(x, 0.4)), rel=1e-5)
    naive = en.combined_score([exact_score(mix, sde)] * 2, [0.5, 1.5])
    np.testing.assert_allclose(naive(x, 0.4), en.energy_score(comp)(x, 0.4), rtol=1e-4, atol=1e-5)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0]):
        with pytest.raises(ValueError, match="weights"):
            en.compose([energy, energy], bad)


# -- distillation ------------------------------------------------------------------------------------


def test_distillation_loss_vanishes_for_the_exact_energy(setup):
    sde, mix, energy = setup
    x0 = mix.sample(jax.random.key(1), 256)
    loss = en.distillation_loss(energy, exact_score(mix, sde), sde, jax.random.key(2), x0)
    assert float(loss) < 1e-8
    wrong = en.distillation_loss(
        lambda x, t: 1.1 * energy(x, t), exact_score(mix, sde), sde, jax.random.key(2), x0
    )
    assert float(wrong) > 1e-3


class _Quadratic(eqx.Module):
    a: jax.Array

    def __call__(self, x, t):
        return 0.5 * self.a * jnp.sum(x**2)


def test_distillation_keeps_only_the_conservative_part():
    """Teacher v(x) = -x + c J x on N(0, I) data at every t (a rotation J: div(p J x) = 0).

    The distillation loss over quadratic energies a|x|^2/2 is minimised at a = 1: the rotational
    part of the teacher is invisible to the energy, its Helmholtz projection is -x.
    """

    class _Fixed:
        """An SDE stub whose marginal at every t is the data itself plus no noise, sigma = 1."""

        def sample_marginal(self, key, x0, t):
            return x0, jnp.zeros_like(x0)

        def sigma(self, t):
            return jnp.ones_like(t)

    j = jnp.array([[0.0, -1.0], [1.0, 0.0]])

    def teacher(x, t):
        return -x + 3.0 * j @ x

    x0 = jax.random.normal(jax.random.key(0), (4096, 2))

    def loss(a):
        return en.distillation_loss(_Quadratic(a), teacher, _Fixed(), jax.random.key(1), x0)

    grid = jnp.linspace(0.5, 1.5, 101)
    values = jax.vmap(loss)(grid)
    assert float(grid[jnp.argmin(values)]) == pytest.approx(1.0, abs=0.02)
    # the residual at the optimum is the rotational part, c^2 E|Jx|^2 / d = 9
    assert float(values.min()) == pytest.approx(9.0, rel=0.1)


def test_distil_reaches_the_teacher_on_a_gaussian():
    """Data N(m, s^2 I): the exact noised score is linear; a small energy MLP learns it."""
    sde = vp_linear()
    mix = gaussian_mixture([[1.0, -0.5]], [0.7])
    teacher = exact_score(mix, sde)
    data = mix.sample(jax.random.key(0), 2048)
    model = en.EnergyMLP(2, hidden=(32, 32), key=jax.random.key(1), data_std=0.8, sde=sde)
    before = en.relative_score_error(en.energy_score(model), teacher, sde, jax.random.key(3), data)
    out = en.distil(
        jax.random.key(2),
        model,
        teacher,
        data,
        sde,
        n_steps=600,
        batch_size=128,
        off_support=0.25,
    )
    after = en.relative_score_error(
        en.energy_score(out.energy), teacher, sde, jax.random.key(3), data
    )
    assert out.losses.shape == (600,)
    assert float(out.losses[-50:].mean()) < float(out.losses[:50].mean())
    assert float(after) < 0.1 < float(before)


def test_distillation_input_checks(setup):
    sde, mix, energy = setup
    x0 = mix.sample(jax.random.key(1), 16)
    score = exact_score(mix, sde)
    with pytest.raises(ValueError, match="off_support"):
        en.distillation_loss(energy, score, sde, jax.random.key(0), x0, off_support=1.0)
    with pytest.raises(ValueError, match="t_min"):
        en.distillation_loss(energy, score, sde, jax.random.key(0), x0, t_min=0.0)
    with pytest.raises(ValueError, match="x0"):
        en.distillation_loss(energy, score, sde, jax.random.key(0), x0[0])
    with pytest.raises(ValueError, match="box"):
        en.distillation_loss(energy, score, sde, jax.random.key(0), x0, off_support=0.5, box=-1.0)


# -- the Feynman-Kac model ------------------------------------------------------------------------------


def test_proposal_is_the_core_reverse_kernel(setup):
    """One FK step moves particles with reverse_kernel's mean and std (the same noise)."""
    sde, mix, energy = setup
    model = en.fk_model(energy, sde, 2, 10)
    particles, _ = model.init(jax.random.key(0), 64)
    t, t_next = model.inputs[0][0], model.inputs[1][0]
    moved, log_g = model.step(jax.random.key(1), particles, (t, t_next))
    mean, std = reverse_kernel(exact_score(mix, sde), sde, particles.x, t, t_next)
    z = jax.random.normal(jax.random.key(1), particles.x.shape)
    np.testing.assert_allclose(moved.x, mean + std * z, rtol=1e-4, atol=1e-4)
    assert log_g.shape == (64,) and bool(jnp.all(jnp.isfinite(log_g)))


def test_beta_one_with_exact_energies_is_unweighted_in_the_limit(setup):
    """At beta = 1 the targets are the exact marginals: log Z ~ 0; only the discretisation
    (Euler-Maruyama proposals against the exact backward kernel) costs effective particles."""
    sde, _, energy = setup
    out = en.tempered_smc(jax.random.key(0), energy, sde, 1000, 2, beta=1.0, n_steps=100)
    assert abs(float(out.log_evidence)) < 0.05
    assert float(out.ess.min()) > 0.3 * 1000


def test_low_temperature_mode_weights_and_evidence(setup):
    """beta = 2: SMC recovers the tempered mode weights (0.9, 0.1) and log of int p^2."""
    sde, mix, energy = setup
    target = mix.tempered(2.0).weights
    run = jax.jit(
        jax.vmap(
            lambda k: (
                en.tempered_smc(k, energy, sde, 2000, 2, beta=2.0, n_steps=100)[:3]
                + (en.tempered_smc(k, energy, sde, 2000, 2, beta=2.0, n_steps=100).log_evidence,)
            )
        )
    )
    x, log_w, _, log_z = run(jax.random.split(jax.random.key(0), 4))
    tvs = [
        0.5 * float(jnp.sum(jnp.abs(_weighted_occupancy(mix, x[i], log_w[i]) - target)))
        for i in range(4)
    ]
    assert np.mean(tvs) < 0.05, tvs
    exact = _log_integral_of_square(mix.noised(sde, 1e-3))
    # log Z_hat is noisy (sd about 0.2 per run at 2000 particles) and biased low
    assert abs(float(jnp.mean(jnp.exp(log_z - exact))) - 1.0) < 0.3


def _weighted_occupancy(mix, x, log_w):
    labels = jnp.argmax(mix.responsibilities(x), -1)
    return jnp.zeros(mix.n_components).at[labels].add(jnp.exp(log_w))


def test_product_beats_naive_score_sum():
    sde = vp_linear()
    p1 = gaussian_mixture([[-2.0, 0.0], [2.0, 0.0]], 0.3)
    p2 = gaussian_mixture([[1.0, 0.0]], 1.5)
    # exact product weights: w_k N(mu_k; m, S_k + S)
    s = 0.3**2 + 1.5**2
    w = np.exp(-0.5 * np.array([9.0, 1.0]) / s)
    target = jnp.asarray(w / w.sum())
    energies = [en.MixtureEnergy(p1, sde), en.MixtureEnergy(p2, sde)]
    out = en.product_smc(jax.random.key(0), energies, sde, 2000, 2, n_steps=100)
    tv = 0.5 * float(jnp.sum(jnp.abs(_weighted_occupancy(p1, out.x, out.log_weights) - target)))
    assert tv < 0.06
    assert out.samples.shape == (2000, 2)
    assert float(jnp.sum(mode_occupancy(p1, out.samples))) == pytest.approx(1.0)


@pytest.mark.parametrize("beta", [0.25, 0.5, 4.0, 8.0])
def test_no_nan_weights_at_extreme_temperatures(setup, beta):
    sde, _, energy = setup
    for kappa in (0.05, 1.0):
        out = en.tempered_smc(
            jax.random.key(1), energy, sde, 300, 2, beta=beta, n_steps=50, ess_threshold=kappa
        )
        assert bool(jnp.all(jnp.isfinite(out.log_weights) | (out.log_weights == -jnp.inf)))
        assert bool(jnp.all(jnp.isfinite(out.x)))
        assert np.isfinite(float(out.log_evidence))


def test_t_stop_switches_the_reweighting_off(setup):
    sde, _, energy = setup
    out = en.tempered_smc(
        jax.random.key(0),
        energy,
        sde,
        200,
        2,
        beta=2.0,
        n_steps=20,
        t_stop=1.0,
        ess_threshold=1e-6,  # never resample
    )
    # only the initial weight pi_K / N(0, I) remains (same keys as smc_sample and smc.run)
    model = en.fk_model(en.compose(energy, [2.0]), sde, 2, 20)
    k_run = jax.random.split(jax.random.key(0))[0]
    _, log_g0 = model.init(jax.random.split(k_run)[0], 200)
    from otdiff import smc

    np.testing.assert_allclose(out.log_weights, smc.normalize_log_weights(log_g0)[0], atol=1e-4)


def test_energy_smc_is_jit_safe_without_recompiling(setup):
    sde, _, energy = setup

    @jax.jit
    def f(beta, kappa, t_stop):
        return en.tempered_smc(
            jax.random.key(0),
            energy,
            sde,
            100,
            2,
            beta=beta,
            n_steps=10,
            ess_threshold=kappa,
            t_stop=t_stop,
        ).log_evidence

    f(1.0, 0.5, 0.0)
    f(3.0, 0.9, 0.1)
    assert f._cache_size() == 1


def test_bad_inputs_raise(setup):
    sde, _, energy = setup
    key = jax.random.key(0)
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            en.tempered_smc(key, energy, sde, 10, 2, beta=beta)
    for kappa in (0.0, 1.5):
        with pytest.raises(ValueError, match="ess_threshold"):
            en.tempered_smc(key, energy, sde, 10, 2, beta=1.0, ess_threshold=kappa)
    with pytest.raises(ValueError, match="n_particles"):
        en.tempered_smc(key, energy, sde, 0, 2, beta=1.0)
    with pytest.raises(ValueError, match="t_stop"):
        en.tempered_smc(key, energy, sde, 10, 2, beta=1.0, t_stop=-0.1)
    with pytest.raises(ValueError, match="method"):
        en.tempered_smc(key, energy, sde, 10, 2, beta=1.0, method="residual")
    with pytest.raises(ValueError, match="weights"):
        en.product_smc(key, [energy, energy], sde, 10, 2, weights=[0.0, 0.0])


def test_nan_energy_raises_a_clear_error(setup):
    sde, _, _ = setup
    with pytest.raises(ValueError, match="NaN"):
        en.smc_sample(jax.random.key(0), lambda x, t: jnp.nan * jnp.sum(x), sde, 10, 2, n_steps=5)
