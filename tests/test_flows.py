"""otdiff.flows: the interpolant and its parameterisations, Simple ReFlow's loss switches, the flow
samplers and their NFE, the reference solve, the VP-to-flow time change and ReFlow pairs, checked
against closed forms (the exact flow between Gaussians), scipy's KS test and autodiff."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces
from scipy import stats

from otdiff import config, flows, metrics
from otdiff.diffusion import CosineVP, LinearVP, RectifiedFlow

M = jnp.array([2.0, -1.0])  # data N(M, S^2 I) against noise N(0, I)
S = 0.5


def exact_velocity(x, t):
    """The rectified flow between N(M, S^2 I) (t = 0) and N(0, I) (t = 1), in closed form."""
    var = (1 - t) ** 2 * S**2 + t**2
    return -M + (t - (1 - t) * S**2) / var * (x - (1 - t) * M)


def exact_map(x1):
    """Its ODE map from noise to data (affine, monotone): x0 = M + S x1."""
    return M + S * x1


def vp_gaussian_score(process):
    def score(x, t):
        a, s = process.alpha(t), process.sigma(t)
        return -(x - a * M) / (a**2 * S**2 + s**2)

    return score


# -- the interpolant -------------------------------------------------------------------------------


def test_interpolant_and_parameterisations_round_trip():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x0, x1 = jax.random.normal(k1, (5, 3)), jax.random.normal(k2, (5, 3))
    t = jax.random.uniform(k3, (5,), minval=0.05)
    xt = flows.interpolate(x0, x1, t)
    np.testing.assert_allclose(flows.interpolate(x0, x1, 0.0), x0)
    np.testing.assert_allclose(flows.interpolate(x0, x1, 1.0), x1)
    # the chord velocity x1 - x0 and the denoiser x0 map into each other
    v = x1 - x0
    np.testing.assert_allclose(flows.denoiser_from_velocity(xt, t, v), x0, atol=1e-5)
    np.testing.assert_allclose(flows.velocity_from_denoiser(xt, t, x0), v, atol=1e-4)


def test_rectified_flow_process_is_the_interpolant():
    p = RectifiedFlow()
    t = jnp.linspace(0.01, 0.99, 7)
    np.testing.assert_allclose(p.alpha(t), 1 - t, rtol=1e-6)
    np.testing.assert_allclose(p.sigma(t), t)
    # its probability-flow velocity is the flow's (x - D)/t for any score
    x, s = jnp.array([0.3, -1.2]), jnp.array([0.7, 0.1])
    for ti in (0.2, 0.5, 0.8):
        d = p.denoise(x, ti, s)
        np.testing.assert_allclose(
            p.ode_drift(x, ti, s), flows.velocity_from_denoiser(x, ti, d), rtol=1e-5, atol=1e-6
        )


def test_flownet_parameterisations_agree_on_the_map():
    key = jax.random.key(1)
    for par in flows.PARAMETERISATIONS:
        net = flows.FlowNet(3, key=key, hidden=(16,), embed_dim=8, parameterisation=par)
        x, t = jnp.array([0.1, 0.2, -0.3]), jnp.asarray(0.4)
        np.testing.assert_allclose(
            net.denoiser(x, t), flows.denoiser_from_velocity(x, t, net(x, t)), atol=1e-5
        )


# -- time distributions ---------------------------------------------------------------------------


@pytest.mark.statistical
def test_exp10_times_follow_their_cdf():
    # KS test against (10^t - 1)/9; at n = 20 000 a p-value below 1e-3 would flag a wrong sampler
    t = np.asarray(flows.sample_times(jax.random.key(config.seed(3)), (20_000,), "exp10"))
    assert stats.kstest(t, lambda s: (10.0**s - 1.0) / 9.0).pvalue > 1e-3
    assert stats.kstest(t, "uniform").pvalue < 1e-10  # and it is not the uniform law


@pytest.mark.statistical
@pytest.mark.parametrize("a", [1.0, 4.0])
def test_cosh_times_follow_their_cdf(a):
    t = np.asarray(
        flows.sample_times(jax.random.key(config.seed(4)), (20_000,), "cosh", cosh_scale=a)
    )
    cdf = lambda s: (np.sinh(a * (s - 0.5)) + np.sinh(a / 2)) / (2 * np.sinh(a / 2))  # noqa: E731
    assert stats.kstest(t, cdf).pvalue > 1e-3


@pytest.mark.parametrize("dist", flows.TIME_DISTRIBUTIONS)
def test_time_densities_integrate_to_one(dist):
    t = np.linspace(0, 1, 20_001)
    assert np.trapezoid(np.asarray(flows.time_density(t, dist)), t) == pytest.approx(1, abs=1e-5)


# -- the loss -------------------------------------------------------------------------------------


def _model_and_batch(dim=4):
    key = jax.random.key(2)
    model = flows.FlowNet(dim, key=key, hidden=(16, 16), embed_dim=8)
    k0, k1 = jax.random.split(jax.random.fold_in(key, 1))
    return model, flows.Pairs(jax.random.normal(k0, (32, dim)), jax.random.normal(k1, (32, dim)))


def test_loss_normalisation_gradient_is_that_of_the_mean_log_loss():
    model, batch = _model_and_batch()
    key = jax.random.key(3)
    c = 1e-3
    norm = flows.FlowLoss(normalise=True, norm_floor=c)
    plain = flows.FlowLoss()

    def mean_log(m):
        return jnp.mean(jnp.log(plain.per_sample(m, key, batch) + c))

    g1 = eqx.filter_grad(lambda m: norm(m, key, batch))(model)
    g2 = eqx.filter_grad(mean_log)(model)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_loss_is_the_flow_matching_mse_and_hpf_adds_a_quadratic_term():
    model, batch = _model_and_batch(dim=16)
    key = jax.random.key(4)
    base = flows.FlowLoss()(model, key, batch)
    # by hand: the same times (the loss's first split key)
    t = flows.sample_times(jax.random.split(key)[0], (32,))
    xt = flows.interpolate(batch.x0, batch.x1, t)
    err = jax.vmap(model)(xt, t) - (batch.x1 - batch.x0)
    np.testing.assert_allclose(base, jnp.mean(err**2), rtol=1e-5)
    hpf = flows.FlowLoss(hpf_weight=0.5, image_side=4)(model, key, batch)
    expected = jnp.mean(err**2) + 0.5 * jnp.mean(flows.high_pass(err, 4) ** 2)
    np.testing.assert_allclose(hpf, expected, rtol=1e-5)


def test_high_pass_is_linear_kills_constants_and_keeps_the_optimum():
    k1, k2 = jax.random.split(jax.random.key(5))
    x, y = jax.random.normal(k1, (64,)), jax.random.normal(k2, (64,))
    np.testing.assert_allclose(
        flows.high_pass(2 * x - 3 * y, 8),
        2 * flows.high_pass(x, 8) - 3 * flows.high_pass(y, 8),
        atol=1e-5,
    )
    np.testing.assert_allclose(flows.high_pass(jnp.full((64,), 0.7), 8), 0.0, atol=1e-6)
    # I + lambda H^T H is symmetric positive definite (eigenvalues >= 1): phi is invertible
    h = jax.vmap(lambda e: flows.high_pass(e, 8))(jnp.eye(64)).T
    eig = np.linalg.eigvalsh(np.eye(64) + 2.0 * np.asarray(h.T @ h))
    assert eig.min() >= 1 - 1e-5


def test_one_rf_loss_draws_independent_noise_for_a_data_batch():
    model, batch = _model_and_batch()
    value = flows.FlowLoss()(model, jax.random.key(6), batch.x0)
    assert np.isfinite(float(value)) and float(value) > 0


# -- samplers -------------------------------------------------------------------------------------


def _count_evaluations(velocity):
    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return velocity(x, t)

    return counted, calls


@pytest.mark.parametrize(
    ("solver", "n_steps", "expected"), [("euler", 4, 4), ("heun", 5, 9), ("heun", 1, 1)]
)
def test_nfe_counts_are_the_evaluations_made(solver, n_steps, expected):
    # the callback runs once per evaluation of the whole batch (vmap batches it)
    counted, calls = _count_evaluations(exact_velocity)
    x1 = jnp.zeros((3, 2))
    out = flows.sample_flow(counted, x1, n_steps, solver=solver)
    jax.block_until_ready(out.x)
    jax.effects_barrier()
    assert out.nfe == expected == flows.nfe(n_steps, solver)
    assert len(calls) == expected
    assert flows.steps_for_nfe(expected, solver) == n_steps


def test_heun_converges_at_second_order_and_euler_at_first():
    x1 = jax.random.normal(jax.random.key(7), (256, 2))
    truth = exact_map(x1)
    errs = {}
    for solver in flows.SOLVERS:
        errs[solver] = [
            float(
                jnp.max(jnp.abs(flows.sample_flow(exact_velocity, x1, n, solver=solver).x - truth))
            )
            for n in (16, 32)
        ]
    assert 1.6 < errs["euler"][0] / errs["euler"][1] < 2.4
    # Heun with an Euler last step: the last step's O(h^2) local error dominates, ratio ~4
    assert errs["heun"][0] / errs["heun"][1] > 3.0
    assert errs["heun"][1] < errs["euler"][1]


def test_one_euler_step_of_the_independent_flow_lands_on_the_data_mean():
    x1 = jax.random.normal(jax.random.key(8), (100, 2))
    out = flows.sample_flow(exact_velocity, x1, 1)
    np.testing.assert_allclose(out.x, jnp.broadcast_to(M, out.x.shape), atol=1e-5)


def test_reference_solve_matches_the_exact_map_and_reverses():
    x1 = jax.random.normal(jax.random.key(9), (64, 2))
    back = flows.solve_flow(exact_velocity, x1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back.x, exact_map(x1), atol=1e-4)
    assert int(back.nfe) > 1 and (int(back.nfe) - 1) % 6 == 0
    # forward/backward pair consistency: the forward solve of the backward pair's x0 returns x1
    pairs, _ = flows.backward_pairs(exact_velocity, x1)
    fwd, _ = flows.forward_pairs(exact_velocity, pairs.x0)
    np.testing.assert_allclose(fwd.x1, x1, atol=2e-4)


def test_time_grid_and_no_recompile_along_rho():
    g = flows.flow_time_grid(4, 2.0)
    np.testing.assert_allclose(g, [1.0, 0.5625, 0.25, 0.0625, 0.0])
    x1 = jnp.ones((4, 2))
    f = jax.jit(lambda rho: flows.sample_flow(exact_velocity, x1, 3, solver="heun", rho=rho).x)
    with traces() as seen:
        f(1.0)
        f(2.5)
    assert seen["<lambda>"] == 1


def test_straightness_metric():
    x1 = jax.random.normal(jax.random.key(10), (50, 2))
    # a constant field has straight paths: straightness 0
    assert float(flows.path_straightness(lambda x, t: -M, x1)) == pytest.approx(0, abs=1e-8)
    assert float(flows.path_straightness(exact_velocity, x1)) > 0.1
    with pytest.raises(ValueError, match="velocities"):
        metrics.straightness(jnp.zeros((3, 50)), x1, x1)
    np.testing.assert_allclose(metrics.coupling_cost(x1, x1 + 1.0), 2.0, rtol=1e-6)


# -- the VP teacher as a flow ---------------------------------------------------------------------


@pytest.mark.parametrize("process", [LinearVP(), CosineVP()], ids=["linear", "cosine"])
def test_time_change_inverts_and_vp_velocity_is_the_exact_flow(process):
    t = jnp.linspace(1e-3, 1.0, 11)
    np.testing.assert_allclose(flows.vp_time(process, flows.rf_time(process, t)), t, atol=1e-5)
    vel = flows.vp_velocity(vp_gaussian_score(process), process)
    x = jnp.array([0.5, -0.3])
    for tau in (0.05, 0.3, 0.6, 0.9):
        np.testing.assert_allclose(vel(x, tau), exact_velocity(x, tau), rtol=2e-3, atol=2e-3)


def test_vp_flow_from_pure_noise_is_the_probability_flow_ode_despite_a_score_error():
    # A score with an error: at VP time 1 the denoiser (x + sigma^2 s)/alpha_1 multiplies it by
    # 1/alpha_1 (about 119 for the cosine schedule). Beyond tau(1) the flow must not read it: its
    # ODE from y = x1 at tau = 1 is the probability-flow ODE from the VP sampler's own start.
    from otdiff.diffusion import probability_flow

    process = CosineVP()
    exact = vp_gaussian_score(process)

    def score(x, t):
        return exact(x, t) + 0.05

    vel = flows.vp_velocity(score, process)
    tau_hi = flows.rf_time(process, 1.0)
    y = jnp.array([0.5, -0.3])
    np.testing.assert_allclose(vel(y, 0.5 * (1.0 + tau_hi)), y / (0.5 * (1.0 + tau_hi)), rtol=1e-6)
    x1 = jax.random.normal(jax.random.key(28), (64, 2))
    pf = probability_flow(score, process, x1, rtol=1e-6, atol=1e-6).x
    tau_lo = flows.rf_time(process, 1e-3)
    ode = flows.solve_flow(vel, x1, t_end=float(tau_lo), rtol=1e-6, atol=1e-6).x
    ode = ode * (process.alpha(1e-3) + process.sigma(1e-3))
    # measured: 2e-4 (the start sigma_1 x1 against x1); reading the network at t = 1 beyond
    # tau(1) instead gives about 0.3
    np.testing.assert_allclose(ode, pf, atol=5e-3)


def test_vp_flow_does_not_call_the_network_beyond_the_schedules_end():
    # one Euler step from tau = 1 needs no network (the field is y / tau there); two steps, one
    process = CosineVP()
    calls = []
    exact = vp_gaussian_score(process)

    def score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    vel = flows.vp_velocity(score, process)
    x1 = jax.random.normal(jax.random.key(3), (8, 2))
    for n_steps, called in ((1, False), (2, True)):
        calls.clear()
        x = jax.jit(lambda x1, n=n_steps: flows.sample_flow(vel, x1, n).x)(x1)
        jax.block_until_ready(x)
        jax.effects_barrier()
        assert bool(calls) == called and np.all(np.isfinite(x))


# -- pairs ------------------------------------------------------------------------------------------


def test_projected_pairs_have_exact_marginals_and_follow_the_coupling():
    k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
    x1 = jax.random.normal(k1, (256, 2))
    pairs = flows.Pairs(exact_map(x1), x1)
    data = M + S * jax.random.normal(k2, (256, 2))
    proj = flows.project_pairs(k3, pairs, data, epsilon=0.01, batch_size=128)
    # every x0 is a real data point, every x1 the same noise
    d = jnp.min(jnp.sum((proj.x0[:, None] - data[None]) ** 2, -1), axis=1)
    assert float(jnp.max(d)) < 1e-10
    np.testing.assert_array_equal(proj.x1, x1)
    # and it stays close to the teacher's coupling: far cheaper than a random pairing
    assert float(metrics.coupling_cost(proj.x0, pairs.x0)) < 0.2 * float(
        metrics.coupling_cost(data, pairs.x0)
    )


def test_mix_pairs_takes_the_forward_share():
    a = flows.Pairs(jnp.zeros((10, 2)), jnp.zeros((10, 2)))
    b = flows.Pairs(jnp.ones((10, 2)), jnp.ones((10, 2)))
    m = flows.mix_pairs(a, b, 0.3)
    assert float(jnp.sum(m.x0[:, 0] == 0)) == 3


def test_cached_flow_trains_once_and_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    cfg = flows.FlowConfig(hidden=(16,), embed_dim=8, n_steps=30, batch_size=32)
    data = M + S * jax.random.normal(jax.random.key(12), (200, 2))
    kw = {"data_inputs": "test", "make_data": lambda: data, "verbose": False}
    f1, a1 = flows.cached_flow("test_flow", 0, 2, cfg, **kw)
    f2, a2 = flows.cached_flow("test_flow", 0, 2, cfg, **kw)
    assert a1.source == "built" and a2.source == "cache"
    x = jnp.array([0.1, 0.2])
    np.testing.assert_array_equal(f1(x, 0.5), f2(x, 0.5))
    res = flows.train_flow(
        jax.random.fold_in(jax.random.key(0), 1),
        flows.make_flow(jax.random.fold_in(jax.random.key(0), 0), 2, cfg),
        data,
        cfg,
    )
    np.testing.assert_allclose(res.ema_model(x, 0.5), f1(x, 0.5), rtol=1e-6)


def test_dropout_is_training_only_and_unbiased():
    net = flows.FlowNet(2, key=jax.random.key(20), hidden=(64, 64))
    x, t = jnp.array([0.3, -0.7]), jnp.float32(0.4)
    # off without a key (sampling) or at rate 0: the plain network, exactly
    np.testing.assert_array_equal(net(x, t, dropout=0.3), net(x, t))
    np.testing.assert_array_equal(net(x, t, dropout=0.0, key=jax.random.key(1)), net(x, t))
    # with a key: random, different per key, and the masks reach every hidden layer
    keys = jax.random.split(jax.random.key(21), 4000)
    outs = jax.vmap(lambda k: net(x, t, dropout=0.3, key=k))(keys)
    assert float(jnp.std(outs[:, 0])) > 1e-3
    # one hidden layer: the output is linear in the dropped activation, so inverted dropout
    # keeps the output's expectation (Monte Carlo over 4000 masks; standard error about 0.01)
    one = flows.FlowNet(2, key=jax.random.key(20), hidden=(64,))
    outs = jax.vmap(lambda k: one(x, t, dropout=0.3, key=k))(keys)
    se = jnp.std(outs, axis=0) / np.sqrt(len(keys))
    assert bool(jnp.all(jnp.abs(jnp.mean(outs, axis=0) - one(x, t)) < 5 * se))


def test_flow_loss_with_dropout_uses_the_trainers_key_and_matches_at_rate_zero():
    net = flows.FlowNet(2, key=jax.random.key(22), hidden=(32, 32))
    pairs = flows.Pairs(
        jax.random.normal(jax.random.key(23), (64, 2)),
        jax.random.normal(jax.random.key(24), (64, 2)),
    )
    key = jax.random.key(25)
    plain = flows.FlowLoss()(net, key, pairs)
    assert float(flows.FlowLoss(dropout=0.0)(net, key, pairs)) == float(plain)
    a = flows.FlowLoss(dropout=0.2)(net, key, pairs)
    b = flows.FlowLoss(dropout=0.2)(net, key, pairs)
    c = flows.FlowLoss(dropout=0.2)(net, jax.random.key(26), pairs)
    assert float(a) == float(b) and float(a) != float(plain) and float(c) != float(a)
    cfg = flows.FlowConfig(dropout=0.2)
    assert cfg.check().loss().dropout == 0.2 and cfg.as_dict()["dropout"] == 0.2


def test_cached_pairs_show_progress_per_chunk(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    data = M + S * jax.random.normal(jax.random.key(27), (12, 2))
    out = flows.cached_pairs(
        "test_pairs", 0, exact_velocity, teacher_inputs="exact", data=data, n_pairs=10,
        rtol=1e-5, atol=1e-5, chunk_size=4,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "solving backward and forward pairs for 'test_pairs'" in captured.out
    assert "10 pairs" in captured.out and "duration not known yet" in captured.out
    assert "10/10" in captured.err  # the bar reached its end after three chunks
    np.testing.assert_allclose(out.backward.x0, exact_map(out.backward.x1), atol=1e-3)


def test_ring_switch_grid_trains_every_combination_and_shares_the_ablation_artifacts():
    import itertools

    from otdiff import artifacts

    def students(plan):
        return {
            (p.name, p.seed) for p in plan if p.name not in ("reflow_ring_1rf", "reflow_ring_pairs")
        }

    with artifacts.planning() as plan:
        run, grid = flows.ring_switch_grid(scale="demo", verbose=False)
    assert list(grid) == list(itertools.product(*flows.RING_SWITCHES.values()))
    assert run.seed == 0 and not run.students
    with artifacts.planning() as ablation:
        flows.chapter_ring(scale="demo", seeds=[0], verbose=False)
    # the 2-RF, "+ norm", "+ norm + 10^t", its forward-pairs and its dropout rungs are grid points
    assert len(students(plan)) == 16 and len(students(plan) & students(ablation)) == 5


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: flows.sample_flow(exact_velocity, jnp.ones((2, 2)), 2, solver="rk4"), "solver"),
        (lambda: flows.sample_flow(exact_velocity, jnp.ones((2, 2)), 0), "n_steps"),
        (lambda: flows.sample_flow(exact_velocity, jnp.full((2, 2), jnp.nan), 2), "x1"),
        (lambda: flows.steps_for_nfe(4, "heun"), "odd"),
        (lambda: flows.flow_time_grid(3, -1.0), "rho"),
        (lambda: flows.FlowLoss(time_distribution="beta"), "time_distribution"),
        (lambda: flows.FlowLoss(hpf_weight=1.0), "image_side"),
        (lambda: flows.FlowLoss(norm_floor=0.0), "norm_floor"),
        (lambda: flows.FlowConfig(forward_fraction=1.5).check(), "forward_fraction"),
        (lambda: flows.FlowLoss(dropout=1.0), "dropout"),
        (lambda: flows.FlowConfig(dropout=-0.1).check(), "dropout"),
        (
            lambda: flows.FlowNet(2, key=jax.random.key(0), parameterisation="score"),
            "parameterisation",
        ),
        (lambda: flows.sample_times(jax.random.key(0), (3,), "normal"), "distribution"),
        (lambda: flows.high_pass(jnp.ones(10), 3), "side"),
        (
            lambda: flows.solve_flow(exact_velocity, jnp.ones((2, 2)), t_start=0.5, t_end=0.5),
            "differ",
        ),
        (lambda: flows.solve_flow(exact_velocity, jnp.ones((2, 2)), t_end=-0.1), "t_end"),
        (
            lambda: flows.mix_pairs(
                flows.Pairs(jnp.ones((1, 2)), jnp.ones((1, 2))),
                flows.Pairs(jnp.ones((4, 2)), jnp.ones((4, 2))),
                0.5,
            ),
            "forward pairs",
        ),
        (
            lambda: flows.project_pairs(
                jax.random.key(0),
                flows.Pairs(jnp.ones((6, 2)), jnp.ones((6, 2))),
                jnp.ones((6, 2)),
                batch_size=4,
            ),
            "multiple",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_vp_velocity_refuses_a_non_vp_process():
    with pytest.raises(TypeError, match="VP process"):
        flows.vp_velocity(lambda x, t: x, RectifiedFlow())


def test_solve_flow_reports_running_out_of_steps():
    with pytest.raises(Exception, match="max_steps"):
        flows.solve_flow(lambda x, t: 50 * jnp.sin(50 * x * t), jnp.ones((2, 2)), max_steps=2)


def test_sampler_is_jit_and_vmap_safe():
    x1 = jax.random.normal(jax.random.key(13), (3, 8, 2))
    out = jax.jit(jax.vmap(lambda x: flows.sample_flow(exact_velocity, x, 4, solver="heun").x))(x1)
    np.testing.assert_allclose(
        out[1], flows.sample_flow(exact_velocity, x1[1], 4, solver="heun").x, atol=1e-6
    )
    fn = functools.partial(flows.FlowLoss(normalise=True, time_distribution="exp10"))
    model, batch = _model_and_batch()
    assert np.isfinite(float(jax.jit(fn)(model, jax.random.key(0), batch)))
