"""Score matching on the sphere and the Schrödinger bridge by IPF: losses, time indexing, runs, cache."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import artifacts, checkpoint, config
from otdiff import manifolds as M
from otdiff.manifolds import bridge as B
from otdiff.progress import describe_seconds

S2 = M.Sphere(2)
MIX = M.vmf_mixture(jnp.eye(3), 8.0)
TINY = M.BridgeConfig(
    horizon=0.3,
    n_steps=4,
    n_particles=64,
    train_steps=100,
    batch_size=32,
    hidden=(16,),
    embed_dim=8,
)


@pytest.mark.statistical
def test_ism_equals_the_explicit_score_matching_loss_up_to_a_constant():
    # E[1/2 |u|^2 + div u] = E[1/2 |u - s|^2] - E[1/2 |s|^2] for x ~ p with score s
    net = M.make_drift_network(jax.random.key(config.seed(0)), S2, (32, 32), 8)
    x = MIX.sample(jax.random.key(config.seed(1)), 100_000)
    tau = jnp.full((x.shape[0],), 0.3)
    zeros = jnp.zeros_like(x)
    ism = float(M.ism_loss(S2, net, x, tau, zeros, jnp.zeros(x.shape[0])))
    u, s = jax.vmap(net)(x, tau), MIX.score(x)
    explicit = float(jnp.mean(0.5 * jnp.sum((u - s) ** 2, 1)) - jnp.mean(0.5 * jnp.sum(s**2, 1)))
    assert abs(ism - explicit) < 0.05 * (1 + abs(explicit))
    # Hutchinson's estimate has the same mean
    hutch = float(
        M.ism_loss(S2, net, x, tau, zeros, jnp.zeros(x.shape[0]), jax.random.key(config.seed(2)))
    )
    assert abs(hutch - ism) < 0.05 * (1 + abs(ism))


@pytest.mark.statistical
def test_ism_with_another_drift_matches_its_explicit_form():
    # u = g + h with a fixed h: the loss includes h's divergence, passed in as a constant
    net = M.make_drift_network(jax.random.key(config.seed(3)), S2, (16,), 8)
    a = jnp.array([0.5, -1.0, 2.0])
    x = MIX.sample(jax.random.key(config.seed(4)), 50_000)
    tau = jnp.zeros(x.shape[0])
    h = S2.to_tangent(x, a)
    ism = float(M.ism_loss(S2, net, x, tau, h, -2.0 * x @ a))
    u, s = jax.vmap(net)(x, tau) + h, MIX.score(x)
    explicit = float(jnp.mean(0.5 * jnp.sum((u - s) ** 2, 1)) - jnp.mean(0.5 * jnp.sum(s**2, 1)))
    assert abs(ism - explicit) < 0.05 * (1 + abs(explicit))


def test_heat_dsm_is_minimised_by_the_true_score():
    # for data concentrated at one point the marginal score is the heat-kernel score itself
    north = jnp.array([0.0, 0.0, 1.0])
    x0 = jnp.tile(north, (512, 1))

    class Exact(M.DriftNet):
        def __call__(self, x, tau):
            t = 0.3 * (1.0 - tau)
            return M.heat_kernel_score(x, north, t)

    exact = Exact(None, S2)
    zero = lambda x, tau: jnp.zeros_like(x)
    tau = jnp.linspace(0.0, 0.75, 512)
    t = 0.3 * (1.0 - tau)
    at_exact = float(M.heat_dsm_loss(exact, x0, tau, t, jax.random.key(config.seed(0)), 64))
    at_zero = float(M.heat_dsm_loss(zero, x0, tau, t, jax.random.key(config.seed(0)), 64))
    assert at_exact < 1e-6 < at_zero


def test_reversal_targets_index_the_reversal_explicitly():
    # h(x, t) = t * e1 tangentialised: entry i must hold W_{K-i} and h at time t_{K-1-i}
    k_steps, horizon = 5, 0.5
    e1 = jnp.array([1.0, 0.0, 0.0])
    h = lambda x, t: t * e1
    path = jnp.stack(
        [S2.random_uniform(jax.random.key(config.seed(k)), 7) for k in range(k_steps + 1)]
    )
    pts, other, div = M.reversal_targets(S2, path, h, jnp.asarray(horizon))
    assert pts.shape == (k_steps, 7, 3) and other.shape == (k_steps, 7, 3) and div.shape == (5, 7)
    for i in range(k_steps):
        np.testing.assert_array_equal(np.asarray(pts[i]), np.asarray(path[k_steps - i]))
        t_other = horizon * (k_steps - 1 - i) / k_steps
        expected = S2.to_tangent(path[k_steps - i], t_other * e1)
        np.testing.assert_allclose(np.asarray(other[i]), np.asarray(expected), atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(div[i]), np.asarray(-2.0 * t_other * path[k_steps - i] @ e1), atol=1e-5
        )
    # the Brownian reference contributes nothing
    _, zero, zero_div = M.reversal_targets(S2, path, None, jnp.asarray(horizon))
    assert float(jnp.abs(zero).max()) == 0.0 and float(jnp.abs(zero_div).max()) == 0.0


def test_ipf_runs_is_deterministic_and_continues_exactly():
    run = lambda n, start=None: M.ipf(
        jax.random.key(config.seed(0)), S2, MIX.sample, S2.random_uniform, TINY, n, start=start
    )
    two = run(2)
    assert two.n_iterations == 2 and len(two.forward) == 1 and len(two.losses) == 3
    assert all(
        loss.shape == (TINY.train_steps,) and np.all(np.isfinite(loss)) for loss in two.losses
    )
    again = run(2)
    one_then_two = run(2, start=run(1))
    for a, b in [(two, again), (two, one_then_two)]:
        for na, nb in zip(two.backward + two.forward, b.backward + b.forward, strict=True):
            pa, pb = (
                jax.tree_util.tree_leaves(eqx_params(na)),
                jax.tree_util.tree_leaves(eqx_params(nb)),
            )
            for la, lb in zip(pa, pb, strict=True):
                np.testing.assert_array_equal(np.asarray(la), np.asarray(lb))
        del a
    # sampling with each iteration's drifts
    x0 = MIX.sample(jax.random.key(config.seed(1)), 32)
    for it in (1, 2):
        fwd = M.sample_forward(jax.random.key(config.seed(2)), two, x0, it, keep_path=True)
        bwd = M.sample_backward(jax.random.key(config.seed(3)), two, x0, it)
        assert fwd.path.shape == (TINY.n_steps + 1, 32, 3) and bwd.x.shape == (32, 3)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(bwd.x), axis=1), 1.0, atol=1e-5)
    assert M.forward_drift(two, 1) is None  # the Brownian reference


def eqx_params(module):
    import equinox as eqx

    return eqx.filter(module, eqx.is_inexact_array)


def test_implicit_first_step_and_hutchinson_run():
    cfg = M.BridgeConfig(**{**TINY.as_dict(), "first_loss": "implicit", "divergence": "hutchinson"})
    bridge = M.ipf(jax.random.key(config.seed(1)), S2, MIX.sample, S2.random_uniform, cfg, 1)
    assert bridge.n_iterations == 1 and np.all(np.isfinite(bridge.losses[0]))
    # a Langevin reference (non-zero f^0) needs implicit score matching, and works
    ref = M.langevin_drift(S2, lambda x: M.vmf_log_prob(x, jnp.array([0.0, 0.0, 1.0]), 2.0))
    bridge = M.ipf(
        jax.random.key(config.seed(1)), S2, MIX.sample, S2.random_uniform, TINY, 2, reference=ref
    )
    assert M.forward_drift(bridge, 1) is ref and len(bridge.forward) == 1


def test_cached_ipf_trains_once_and_reads_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(artifacts.SHIPPED_DIR_VAR, str(tmp_path / "shipped"))
    kwargs = dict(tag="test", cache=tmp_path, verbose=False)
    first = M.cached_ipf(
        "tiny", config.seed(3), S2, MIX.sample, S2.random_uniform, TINY, 1, **kwargs
    )
    files = list(tmp_path.glob(f"tiny-*-it1-seed{config.seed(3)}-*.ckpt"))
    assert len(files) == 1
    again = M.cached_ipf(
        "tiny", config.seed(3), S2, MIX.sample, S2.random_uniform, TINY, 1, **kwargs
    )
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx_params(first.backward[0])),
        jax.tree_util.tree_leaves(eqx_params(again.backward[0])),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(again.losses[0], first.losses[0])
    # two iterations continue from the cached one and equal a fresh two-iteration run, under a
    # bar that states the duration of the cached run's half-steps (half-steps 1 and 2, which the
    # cached run lacks, count as its own)
    seconds = checkpoint.read_metadata(files[0])["seconds"]
    capsys.readouterr()
    two = M.cached_ipf(
        "tiny", config.seed(3), S2, MIX.sample, S2.random_uniform, TINY, 2,
        **{**kwargs, "verbose": True},
    )  # fmt: skip
    out = capsys.readouterr()
    opening = (
        f"continuing from 1 'tiny' (seed {config.seed(3)}, cached afterwards): 1 IPF iteration"
    )
    expected = f"expected about {describe_seconds(2 * seconds[0])}"
    assert opening in out.out and "1/1" in out.err
    assert f"{expected} (as an earlier run of these settings, cached, on cpu" in out.out
    # a shipped run of the same settings comes first
    (tmp_path / "shipped").mkdir()
    shutil.copy(files[0], tmp_path / "shipped" / (files[0].name.rsplit("-", 1)[0] + ".ckpt"))
    prefix = files[0].name.split("-it1-")[0]
    B._ipf_progress("tiny", prefix, config.seed(3), 1, 2, cache=tmp_path).close()
    assert f"{expected} (as the shipped run of these settings, on cpu" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "shipped")
    fresh = M.ipf(jax.random.key(config.seed(3)), S2, MIX.sample, S2.random_uniform, TINY, 2)
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx_params(two.backward[1])),
        jax.tree_util.tree_leaves(eqx_params(fresh.backward[1])),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # a corrupted file is rebuilt
    files[0].write_bytes(b"garbage")
    rebuilt = M.cached_ipf(
        "tiny", config.seed(3), S2, MIX.sample, S2.random_uniform, TINY, 1, **kwargs
    )
    assert rebuilt.n_iterations == 1


def test_bad_configs_and_arguments_are_reported_clearly():
    with pytest.raises(ValueError, match="horizon"):
        M.BridgeConfig(horizon=0.0)
    with pytest.raises(ValueError, match="horizon"):
        M.BridgeConfig(horizon=-1.0)
    with pytest.raises(ValueError, match="n_steps"):
        M.BridgeConfig(n_steps=0)
    with pytest.raises(ValueError, match="train_steps"):
        M.BridgeConfig(train_steps=0)
    with pytest.raises(ValueError, match="first_loss"):
        M.BridgeConfig(first_loss="denoising")
    with pytest.raises(ValueError, match="divergence"):
        M.BridgeConfig(divergence="trace")
    with pytest.raises(ValueError, match="n_iterations"):
        M.ipf(jax.random.key(config.seed(0)), S2, MIX.sample, S2.random_uniform, TINY, 0)
    with pytest.raises(TypeError, match="config"):
        M.ipf(
            jax.random.key(config.seed(0)), S2, MIX.sample, S2.random_uniform, {"horizon": 1.0}, 1
        )
    with pytest.raises(ValueError, match="heat kernel of S"):
        M.ipf(jax.random.key(config.seed(0)), M.Sphere(3), MIX.sample, S2.random_uniform, TINY, 1)
    bridge = M.ipf(jax.random.key(config.seed(0)), S2, MIX.sample, S2.random_uniform, TINY, 1)
    with pytest.raises(ValueError, match="iteration"):
        M.sample_backward(
            jax.random.key(config.seed(0)), bridge, MIX.sample(jax.random.key(config.seed(0)), 4), 2
        )
    with pytest.raises(ValueError, match="must lie on"):
        M.sample_backward(jax.random.key(config.seed(0)), bridge, jnp.ones((4, 3)), 1)
    with pytest.raises(ValueError, match="name"):
        M.cached_ipf("a/b", config.seed(0), S2, MIX.sample, S2.random_uniform, TINY, 1)
    assert B.FIRST_LOSSES == ("heat", "implicit")


def test_the_chapter_bridges_are_shipped(monkeypatch, tmp_path):
    # the demo bridges load from the package, whatever the user cache holds: nothing trains
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(config.SEED_OFFSET_VAR, raising=False)  # the shipped seeds
    # (ipf itself is part of the fingerprint: replacing it would make the shipped files stale)
    monkeypatch.setattr(artifacts, "_build", lambda *a, **k: pytest.fail("trained a bridge"))
    chapter = M.chapter_bridges(scale="demo", verbose=False)
    assert chapter.vmf[chapter.seeds[0]].n_iterations == 3 and chapter.land.n_iterations == 3
    assert all(chapter.cities[s].n_iterations == 2 for s in chapter.seeds)
    assert all(chapter.rsgm[s].n_iterations == 1 for s in chapter.seeds)
    assert not list(tmp_path.rglob("*.ckpt"))
