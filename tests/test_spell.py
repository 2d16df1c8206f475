"""SPELL's sparse repellency: the term, its chunked scan, the sampler hook and the input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces

from otdiff import config
from otdiff.data import exact_score, ring
from otdiff.diffusion import LinearVP, euler_maruyama, spell


def brute_force(x, z, r, valid=None):
    """Direct differences in float64: the sum of ReLU(r/|x - z| - 1)(x - z) over valid z."""
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    diff = x[:, None, :] - z[None, :, :]
    dist = np.linalg.norm(diff, axis=-1)
    valid = np.ones(dist.shape, bool) if valid is None else np.broadcast_to(valid, dist.shape)
    w = np.where(valid & (dist < r) & (dist > 0), r / np.where(dist > 0, dist, 1) - 1, 0)
    delta = np.einsum("nk,nkd->nd", w, diff)
    nearest = np.min(np.where(valid, dist, np.inf), axis=1)
    return delta, (w > 0).sum(1), nearest


@pytest.fixture(scope="module")
def ring_setup():
    mixture = ring()
    process = LinearVP()
    return mixture, process, exact_score(mixture, process)


# -- the term ---------------------------------------------------------------------------------


def test_zero_outside_the_radius():
    z = jnp.array([[0.0, 0.0], [5.0, 0.0]])
    x = jnp.array([[1.5, 0.0], [0.0, -2.0], [5.0, 1.01], [2.5, 0.0]])
    rep = spell.repellency(x, z, 1.0)
    np.testing.assert_array_equal(np.asarray(rep.delta), 0.0)
    np.testing.assert_array_equal(np.asarray(rep.n_active), 0)
    np.testing.assert_allclose(rep.nearest, [1.5, 2.0, 1.01, 2.5], rtol=1e-5)


def test_a_prediction_inside_one_ball_is_projected_onto_its_sphere():
    key_z, key_x = jax.random.split(jax.random.key(config.seed(0)))
    z = 3.0 * jax.random.normal(key_z, (1, 16))
    directions = jax.random.normal(key_x, (50, 16))
    directions /= jnp.linalg.norm(directions, axis=1, keepdims=True)
    r = 2.0
    x = z + directions * jnp.linspace(0.05, 1.99, 50)[:, None]  # all strictly inside
    rep = spell.repellency(x, z, r)
    landed = np.linalg.norm(np.asarray(x + rep.delta - z), axis=1)
    np.testing.assert_allclose(landed, r, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(rep.n_active), 1)
    # the move is radial: the corrected point is on the ray from z through x
    cos = jnp.sum((x - z) * (x + rep.delta - z), 1) / (
        jnp.linalg.norm(x - z, axis=1) * jnp.linalg.norm(x + rep.delta - z, axis=1)
    )
    np.testing.assert_allclose(cos, 1.0, atol=1e-5)


def test_disjoint_balls_each_point_lands_on_its_own_sphere():
    z = jnp.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = jnp.array([[0.3, 0.1], [9.5, 0.5], [0.2, 10.9], [5.0, 5.0]])
    rep = spell.repellency(x, z, 1.0)
    own = jnp.array([0, 1, 2])
    landed = jnp.linalg.norm(x[:3] + rep.delta[:3] - z[own], axis=1)
    np.testing.assert_allclose(landed, 1.0, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(rep.n_active), [1, 1, 1, 0])
    np.testing.assert_array_equal(np.asarray(rep.delta[3]), 0.0)


def test_matches_the_brute_force_sum_with_overlapping_balls():
    kx, kz = jax.random.split(jax.random.key(config.seed(1)))
    z = jax.random.normal(kz, (300, 5))
    x = jax.random.normal(kx, (40, 5))
    rep = spell.repellency(x, z, 1.2)
    delta, count, nearest = brute_force(x, z, 1.2)
    assert count.max() > 1  # several balls active at once
    np.testing.assert_allclose(rep.delta, delta, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(rep.n_active), count)
    np.testing.assert_allclose(rep.nearest, nearest, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_refs", [5, 40])
def test_exact_near_duplicates_few_and_many_overlapping_balls(n_refs):
    # far from the origin, near-duplicates: the fast |x|^2 + |z|^2 - 2 x.z screen alone would
    # lose the distances; with more than 16 candidate balls per row the whole block is exact
    kx, kz = jax.random.split(jax.random.key(config.seed(15)))
    centre = 20.0 * jnp.ones((1, 6))
    z = centre + 0.05 * jax.random.normal(kz, (n_refs, 6))
    x = centre + 0.05 * jax.random.normal(kx, (8, 6))
    for chunk in (None, 7):
        rep = spell.repellency(x, z, 0.2, chunk_size=chunk)
        delta, count, nearest = brute_force(x, z, 0.2)
        np.testing.assert_allclose(rep.delta, delta, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(rep.n_active), count)
        np.testing.assert_allclose(rep.nearest, nearest, rtol=1e-3)


def test_radius_zero_switches_the_term_off():
    x = jax.random.normal(jax.random.key(config.seed(2)), (10, 3))
    rep = spell.repellency(x, x[:4] + 1e-3, 0.0)
    np.testing.assert_array_equal(np.asarray(rep.delta), 0.0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 999, 1000, 5000])
def test_chunked_equals_unchunked(chunk_size):
    kx, kz = jax.random.split(jax.random.key(config.seed(3)))
    z = jax.random.uniform(kz, (1000, 8), minval=-1, maxval=1)
    x = jax.random.uniform(kx, (32, 8), minval=-1, maxval=1)
    full = spell.repellency(x, z, 0.9)
    chunked = spell.repellency(x, z, 0.9, chunk_size=chunk_size)
    assert int(full.n_active.sum()) > 32  # the test exercises active terms
    np.testing.assert_allclose(chunked.delta, full.delta, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(chunked.n_active), np.asarray(full.n_active))
    np.testing.assert_allclose(chunked.nearest, full.nearest, rtol=1e-6)


@pytest.mark.parametrize("chunk_size", [160, 200])
def test_last_block_counts_each_reference_once(chunk_size):
    """When the chunk does not divide K, the last block is read back from the set's end and
    skips the sub-blocks of references already screened: every reference counts once."""
    kx, kz = jax.random.split(jax.random.key(config.seed(6)))
    z = jax.random.uniform(kz, (1008, 6), minval=-1, maxval=1)  # 1008 = 63 sub-blocks of 16
    x = jnp.concatenate([jax.random.uniform(kx, (24, 6), minval=-1, maxval=1), z[-40:] + 0.01])
    mask = jnp.arange(1008) % 5 != 0
    delta, count, nearest = brute_force(x, z, 0.7, valid=np.asarray(mask))
    assert count[-40:].min() > 0  # the points near the set's end, in the overlap, are active
    rep = spell.repellency(x, z, 0.7, protected_mask=mask, chunk_size=chunk_size)
    np.testing.assert_array_equal(np.asarray(rep.n_active), count)
    np.testing.assert_allclose(rep.delta, delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rep.nearest, nearest, rtol=1e-5, atol=1e-6)


def test_mask_ignores_rows():
    kx, kz = jax.random.split(jax.random.key(config.seed(4)))
    z = jax.random.normal(kz, (50, 3))
    x = jax.random.normal(kx, (20, 3))
    mask = jnp.arange(50) % 3 == 0
    masked = spell.repellency(x, z, 1.0, protected_mask=mask, chunk_size=16)
    subset = spell.repellency(x, z[mask], 1.0)
    np.testing.assert_allclose(masked.delta, subset.delta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(masked.nearest, subset.nearest, rtol=1e-6)


def test_batch_repellency_excludes_self():
    x = jax.random.normal(jax.random.key(config.seed(5)), (12, 2))
    rep = spell.batch_repellency(x, 0.8)
    delta, count, nearest = brute_force(x, x, 0.8, valid=~np.eye(12, dtype=bool))
    np.testing.assert_allclose(rep.delta, delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(rep.n_active), count)
    np.testing.assert_allclose(rep.nearest, nearest, rtol=1e-4)
    # two close points are pushed apart symmetrically, each to distance r from the other's
    # current position
    pair = jnp.array([[0.0, 0.0], [0.4, 0.0]])
    rep = spell.batch_repellency(pair, 1.0)
    np.testing.assert_allclose(rep.delta, [[-0.6, 0.0], [0.6, 0.0]], atol=1e-6)
    # a lone point is never repelled by itself
    assert float(jnp.abs(spell.batch_repellency(pair[:1], 1.0).delta).max()) == 0.0


def test_nearest_distance_and_in_shield():
    kx, kz = jax.random.split(jax.random.key(config.seed(6)))
    z = jax.random.normal(kz, (257, 4))
    x = jax.random.normal(kx, (9, 4))
    _, _, nearest = brute_force(x, z, 0.0)
    np.testing.assert_allclose(spell.nearest_distance(x, z, chunk_size=50), nearest, rtol=1e-4)
    np.testing.assert_array_equal(
        np.asarray(spell.in_shield(x, z, 1.0, chunk_size=50)), nearest <= 1.0
    )


# -- the hook -----------------------------------------------------------------------------------


def test_hook_applies_strength_times_delta_at_the_denoised_prediction(ring_setup):
    mixture, process, score = ring_setup
    from otdiff.diffusion import denoiser

    x = jax.random.normal(jax.random.key(config.seed(7)), (64, 2)) * 3.0
    t = jnp.asarray(0.3)
    z = mixture.means[:3]
    hook = spell.repellency_hook(score, process, z, radius=1.5, strength=1.6)
    x_new, info = jax.jit(hook)(x, t)
    x0 = jax.vmap(denoiser(score, process), in_axes=(0, None))(x, t)
    rep = spell.repellency(x0, z, 1.5)
    np.testing.assert_allclose(x_new, x + 1.6 * rep.delta, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(info.active), np.asarray(rep.n_active > 0))
    assert 0 < float(info.active_fraction) < 1
    np.testing.assert_allclose(
        info.correction_norm, 1.6 * jnp.linalg.norm(rep.delta, axis=1), rtol=1e-6
    )


def test_dynamic_hook_adds_the_batch_term_to_the_bank(ring_setup):
    _, process, score = ring_setup
    from otdiff.diffusion import denoiser

    x = jax.random.normal(jax.random.key(config.seed(8)), (16, 2))
    bank = jax.random.normal(jax.random.key(config.seed(9)), (30, 2)) * 2
    t = jnp.asarray(0.05)
    hook = spell.repellency_hook(score, process, bank, radius=0.7, strength=1.0, mode="dynamic")
    x_new, _ = jax.jit(hook)(x, t)
    x0 = jax.vmap(denoiser(score, process), in_axes=(0, None))(x, t)
    expected = spell.repellency(x0, bank, 0.7).delta + spell.batch_repellency(x0, 0.7).delta
    np.testing.assert_allclose(x_new - x, expected, rtol=1e-4, atol=1e-5)
    # and with no bank, only the batch term
    hook = spell.repellency_hook(score, process, radius=0.7, strength=1.0, mode="dynamic")
    x_only, _ = jax.jit(hook)(x, t)
    np.testing.assert_allclose(
        x_only - x, spell.batch_repellency(x0, 0.7).delta, rtol=1e-4, atol=1e-5
    )


def test_radius_zero_reproduces_the_plain_sampler(ring_setup):
    _, process, score = ring_setup
    key = jax.random.key(config.seed(10))
    k_init, k_run = jax.random.split(key)
    x_init = process.prior_sample(k_init, (64, 2))
    plain = euler_maruyama(k_run, score, process, x_init, 50)
    shielded = spell.sample(
        key, score, process, 64, 2, radius=0.0, protected=x_init[:3], n_steps=50
    )
    np.testing.assert_allclose(shielded.x, plain.x, rtol=1e-6, atol=1e-6)
    assert float(shielded.aux.active_fraction.max()) == 0.0


@pytest.mark.statistical
def test_static_shield_empties_the_protected_modes(ring_setup):
    mixture, process, score = ring_setup
    protected = mixture.means[:2]
    key = jax.random.key(config.seed(11))
    res = spell.sample(key, score, process, 400, 2, radius=1.0, protected=protected, n_steps=60)
    assert res.aux.active.shape == (60, 400)
    assert res.aux.t.shape == (60,)
    inside = float(jnp.mean(spell.in_shield(res.x, protected, 1.0)))
    # measured over 10 seed offsets: inside 0 at every offset; threshold 0.01
    assert inside < 0.01
    # precision: the samples still land near some mode
    near = jnp.min(jnp.linalg.norm(res.x[:, None] - mixture.means, axis=-1), axis=1) <= 1.0
    # measured over 10 seed offsets: median 0.968, range [0.950, 0.975]; threshold 0.9
    assert float(jnp.mean(near)) > 0.9


def test_ddim_accepts_the_hook(ring_setup):
    mixture, process, score = ring_setup
    protected = mixture.means[:2]
    res = spell.sample(
        jax.random.key(config.seed(12)), score, process, 200, 2, radius=1.0, protected=protected, sampler="ddim",
        n_steps=40,
    )  # fmt: skip
    # measured over 10 seed offsets: 0 at every offset; threshold 0.02
    assert float(jnp.mean(spell.in_shield(res.x, protected, 1.0))) < 0.02


@pytest.mark.statistical
def test_dynamic_batches_spread_over_modes(ring_setup):
    mixture, process, score = ring_setup
    keys = jax.random.split(jax.random.key(config.seed(13)), 32)

    def distinct(r):
        xs = jax.vmap(
            lambda k: spell.sample(k, score, process, 8, 2, radius=r, mode="dynamic", n_steps=60).x
        )(keys)
        labels = jnp.argmin(jnp.linalg.norm(xs[..., None, :] - mixture.means, axis=-1), -1)
        return float(
            jnp.mean(jax.vmap(lambda lab: jnp.sum(jnp.bincount(lab, length=8) > 0))(labels))
        )

    # measured over 10 seed offsets: distinct modes per batch of 8 without SPELL median 5.22,
    # range [5.09, 5.41]; with r = 1 median 6.98, range [6.84, 7.06]; gain median 1.67, range
    # [1.59, 1.91]; threshold 1.0
    assert distinct(1.0) > distinct(0.0) + 1.0


@pytest.mark.statistical
def test_sample_batches_repels_earlier_batches(ring_setup):
    _, process, score = ring_setup

    def close_to_earlier(radius):
        res = spell.sample_batches(
            jax.random.key(config.seed(14)), score, process, 4, 6, 2, radius=radius, n_steps=40
        )
        assert res.x.shape == (4, 6, 2)
        assert res.aux.active.shape == (4, 40, 6)
        x = res.x.reshape(-1, 2)
        batch = jnp.arange(24) // 6
        d = jnp.linalg.norm(x[:, None] - x[None], axis=-1)
        to_earlier = jnp.min(jnp.where(batch[None, :] < batch[:, None], d, jnp.inf), axis=1)
        return float(jnp.mean(to_earlier[6:] < 0.55))

    # the share of later samples within 0.55 of an earlier one, measured over 10 seed offsets:
    # without SPELL median 0.56, range [0.39, 0.83]; threshold 0.3; with r = 0.6 median 0,
    # range [0, 0.056]; threshold 0.15
    assert close_to_earlier(0.0) > 0.3
    assert close_to_earlier(0.6) < 0.15


def test_radius_is_dynamic_no_recompilation(ring_setup):
    mixture, process, score = ring_setup
    protected = mixture.means[:2]
    run = jax.jit(
        lambda r, s: spell.sample(
            jax.random.key(config.seed(0)), score, process, 16, 2, radius=r, strength=s, protected=protected,
            n_steps=10,
        ).x
    )  # fmt: skip
    with traces() as seen:
        for r, s in [(0.5, 1.0), (1.0, 1.6), (2.0, 0.0)]:
            run(r, s)
    assert seen["<lambda>"] == 1


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(ring_setup):
    _, process, score = ring_setup
    x = jnp.zeros((4, 2))
    z = jnp.ones((3, 2))
    with pytest.raises(ValueError, match="radius"):
        spell.repellency(x, z, -1.0)
    with pytest.raises(ValueError, match="radius"):
        spell.repellency_hook(score, process, z, radius=-0.1)
    with pytest.raises(ValueError, match="strength"):
        spell.repellency_hook(score, process, z, radius=1.0, strength=-1.0)
    with pytest.raises(ValueError, match="same dimension"):
        spell.repellency(x, jnp.ones((3, 5)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        spell.repellency(x, jnp.zeros((0, 2)), 1.0)
    with pytest.raises(ValueError, match="empty"):
        spell.repellency_hook(score, process, jnp.zeros((0, 2)), radius=1.0)
    with pytest.raises(ValueError, match="protected is required"):
        spell.repellency_hook(score, process, radius=1.0)
    with pytest.raises(ValueError, match="mode"):
        spell.repellency_hook(score, process, z, radius=1.0, mode="both")
    with pytest.raises(ValueError, match="chunk_size"):
        spell.repellency(x, z, 1.0, chunk_size=0)
    with pytest.raises(ValueError, match="protected_mask"):
        spell.repellency(x, z, 1.0, protected_mask=jnp.ones(5, bool))
    with pytest.raises(ValueError, match="dim"):
        spell.sample(
            jax.random.key(config.seed(0)),
            score,
            process,
            4,
            2,
            radius=1.0,
            protected=jnp.ones((3, 5)),
        )
    with pytest.raises(ValueError, match="sampler"):
        spell.sample(
            jax.random.key(config.seed(0)),
            score,
            process,
            4,
            2,
            radius=1.0,
            protected=z,
            sampler="ode",
        )
    with pytest.raises(ValueError, match="NaN"):
        spell.repellency(x, jnp.full((3, 2), jnp.nan), 1.0)
    # a hook whose protected set does not match the sampler's dimension
    hook = spell.repellency_hook(score, process, jnp.ones((3, 5)), radius=1.0)
    with pytest.raises(ValueError, match="same dimension"):
        euler_maruyama(jax.random.key(config.seed(0)), score, process, x, 5, hook=hook)
    with pytest.raises(ValueError, match="t_min"):
        spell.sample(
            jax.random.key(config.seed(0)), score, process, 4, 2, radius=1.0, protected=z, t_min=1.5
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(radius=-1.0), "radius must be a finite number >= 0"),
        (dict(strength=-1.0), "strength must be a finite number >= 0"),
        (dict(t_min=1.5), "t_min must lie"),
    ],
)
def test_a_jitted_spell_sampler_with_a_bad_value_raises(ring_setup, kwargs, match):
    """Under jit the eager checks see tracers; the guards raise at run time instead of NaN."""
    mixture, process, score = ring_setup
    values = dict(radius=1.0, strength=1.6, t_min=1e-3) | kwargs
    draw = jax.jit(
        lambda radius, strength, t_min: spell.sample(
            jax.random.key(config.seed(0)), score, process, 8, 2, radius=radius, strength=strength,
            protected=mixture.means[:2], n_steps=5, t_min=t_min,
        ).x
    )  # fmt: skip
    with pytest.raises(Exception, match=match):
        jax.block_until_ready(draw(**values))
