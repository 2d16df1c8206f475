"""otdiff.data.slots and otdiff.data.canvas: the factorized-conditional test families.

The exact noised scores and densities are checked against the generic Gaussian-mixture formulas
and against a Monte Carlo average over the clean law; the composition with the empty background
against the exact law with objects in the composed slots (Theorem 5.3 of Bradley et al., 2025).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces

from otdiff import config
from otdiff.data import (
    SIGN_PATTERNS,
    angled_features,
    canvas,
    exact_log_prob,
    exact_score,
    random_rotation,
    slots,
)
from otdiff.diffusion import CosineVP, LinearVP
from otdiff.diffusion.composition import bayes, compose

PROCESS = LinearVP()


def _points(key, n, d, scale=3.0):
    return scale * jax.random.normal(key, (n, d))


@pytest.mark.parametrize("which", [(), (1,), (0, 2), "unconditional"])
@pytest.mark.parametrize("angle", [None, 0.6])
def test_slot_score_matches_the_generic_mixture_score(which, angle):
    features = None if angle is None else angled_features(3, angle)
    fam = slots(3, plus_prob=0.3, features=features)
    x = _points(jax.random.key(config.seed(0)), 16, 3)
    law, score = fam.law(which), fam.score(PROCESS, which)
    for t in (1e-3, 0.2, 0.7, 1.0):
        ref = jax.vmap(exact_score(law, PROCESS), in_axes=(0, None))(x, t)
        got = jax.vmap(score, in_axes=(0, None))(x, t)
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4)
        ref_lp = jax.vmap(exact_log_prob(law, PROCESS), in_axes=(0, None))(x, t)
        np.testing.assert_allclose(jax.vmap(score.log_prob, in_axes=(0, None))(x, t), ref_lp,
                                   rtol=1e-4, atol=1e-3)  # fmt: skip


@pytest.mark.statistical
def test_noised_density_matches_monte_carlo():
    """p_t(x) = E_{x0 ~ p}[N(x; alpha_t x0, sigma_t^2 I)], averaged over 100k clean samples
    (relative Monte Carlo error below 1% at these points; tolerance 5%)."""
    fam = slots(2, features=angled_features(2, 1.0))
    key = jax.random.key(config.seed(1))
    x0 = fam.sample(key, 100_000, (0, 1))
    t = 0.4
    a, s = PROCESS.alpha(t), PROCESS.sigma(t)
    score = fam.score(PROCESS, (0, 1))
    points = a * fam.sample(jax.random.fold_in(key, 1), 5, (0, 1))
    for x in points:
        kernel = jnp.exp(-0.5 * jnp.sum((x - a * x0) ** 2, -1) / s**2) / (2 * np.pi * s**2)
        np.testing.assert_allclose(np.log(np.mean(kernel)), score.log_prob(x, t), atol=0.05)


def test_means_and_training_data():
    fam = slots(4, object_mean=2.0, plus_prob=1.0)
    np.testing.assert_allclose(fam.mean((1,)), [0.0, 2.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(fam.mean("unconditional"), np.full(4, 0.5), atol=1e-6)
    np.testing.assert_allclose(fam.mean(), np.zeros(4), atol=1e-6)
    x, c = fam.training_data(jax.random.key(config.seed(2)), 5000)
    assert x.shape == c.shape == (5000, 4)
    assert set(np.unique(np.asarray(c.sum(1)))) == {0.0, 1.0}
    # objects exactly where the condition says (an empty slot passes a/2 = 1 = 3.3 std with
    # probability 1e-3)
    assert float(jnp.mean(jnp.all(fam.occupied(x) == (c > 0), axis=1))) > 0.99
    # the d + 1 conditions are drawn uniformly: each about 1/5
    np.testing.assert_allclose(np.mean(np.asarray(c.sum(1)) == 0), 0.2, atol=0.03)


def test_rotation_is_orthogonal_and_slots_are_read_back():
    R = random_rotation(jax.random.key(config.seed(3)), 5)
    np.testing.assert_allclose(R @ R.T, np.eye(5), atol=1e-5)
    fam = slots(5, features=R)
    x = fam.sample(jax.random.key(config.seed(4)), 500, (1, 3))
    assert float(fam.success(x, (1, 3)).mean()) > 0.99
    np.testing.assert_allclose(fam.to_slots(R[:, 2] * 3.0), np.eye(5)[2] * 3.0, atol=1e-5)


def test_composition_with_the_empty_background_is_the_exact_projective_law():
    """Theorem 5.3: s_b + sum_i (s_i - s_b) is the score of p_S, at every t, for factorized
    conditionals in (rotated) isotropic coordinates; the unconditional background is not."""
    for features in (None, random_rotation(jax.random.key(config.seed(5)), 4)):
        fam = slots(4, features=features)
        S = (0, 2, 3)
        comp = compose([fam.score(PROCESS, (i,)) for i in S], background=fam.score(PROCESS, ()))
        exact = fam.score(PROCESS, S)
        x = _points(jax.random.key(config.seed(6)), 32, 4)
        for t in (1e-3, 0.3, 1.0):
            got = jax.vmap(comp, in_axes=(0, None))(x, t)
            ref = jax.vmap(exact, in_axes=(0, None))(x, t)
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
        bad = bayes([fam.score(PROCESS, (i,)) for i in S], fam.score(PROCESS, "unconditional"))
        diff = jax.vmap(bad, in_axes=(0, None))(x, 0.3) - jax.vmap(exact, in_axes=(0, None))(x, 0.3)
        assert float(jnp.max(jnp.abs(diff))) > 1.0


def test_non_orthogonal_features_break_the_noised_factorization():
    """Lemma 7.2: with an angled feature map the composition is right at t = 0 (the log-densities
    add up to that of p_S, up to a constant) but not at t > 0."""
    fam = slots(2, features=angled_features(2, np.pi / 6))
    comp = compose([fam.score(PROCESS, (i,)) for i in (0, 1)], background=fam.score(PROCESS, ()))
    exact = fam.score(PROCESS, (0, 1))
    x = fam.sample(jax.random.key(config.seed(7)), 64, (0, 1))
    err = lambda t: float(
        jnp.max(
            jnp.abs(
                jax.vmap(comp, in_axes=(0, None))(x, t) - jax.vmap(exact, in_axes=(0, None))(x, t)
            )
        )
    )  # noqa: E731
    # at (nearly) t = 0 the composed score is the projective law's
    assert err(1e-4) < 0.05 * float(jnp.max(jnp.abs(jax.vmap(exact, in_axes=(0, None))(x, 1e-4))))
    assert err(0.3) > 0.5


def test_sign_patterns_and_counts():
    fam = slots(3)
    x = jnp.array([[3.0, 3.0, 0.0], [3.0, -3.0, 0.1], [-3.0, 3.0, 3.0], [-3.0, -3.0, 0.0]])
    np.testing.assert_array_equal(fam.sign_patterns(x), [0, 1, 2, 3])
    assert SIGN_PATTERNS == ("++", "+-", "-+", "--")
    np.testing.assert_array_equal(fam.count(x), [2, 2, 3, 2])
    np.testing.assert_array_equal(fam.success(x, (0, 1)), [True, True, False, True])


def test_family_is_traceable_and_does_not_recompile():
    @jax.jit
    def f(angle, x):
        fam = slots(2, features=angled_features(2, angle))
        return fam.score(CosineVP(), (0, 1))(x, 0.5)

    with traces() as seen:
        f(0.5, jnp.ones(2))
        f(1.2, jnp.ones(2))
    assert seen["f"] == 1


def test_bad_input():
    with pytest.raises(ValueError, match="n_slots"):
        slots(0)
    with pytest.raises(ValueError, match="n_slots"):
        slots(11)
    with pytest.raises(ValueError, match="std"):
        slots(3, std=0.0)
    with pytest.raises(ValueError, match="plus_prob"):
        slots(3, plus_prob=1.5)
    with pytest.raises(ValueError, match="features"):
        slots(3, features=np.eye(2))
    with pytest.raises(ValueError, match="invertible"):
        slots(2, features=[[1.0, 1.0], [1.0, 1.0]])
    fam = slots(3)
    with pytest.raises(ValueError, match="only n_slots=3"):
        fam.conditional((0, 1, 2, 0))
    with pytest.raises(ValueError, match=r"slot indices in \[0, 2\]"):
        fam.conditional((3,))
    with pytest.raises(ValueError, match="repeat"):
        fam.conditional((1, 1))
    with pytest.raises(TypeError, match="integer"):
        fam.conditional((0.5,))
    with pytest.raises(ValueError, match="which"):
        fam.law("everything")
    with pytest.raises(ValueError, match="angle"):
        angled_features(2, 0.0)
    with pytest.raises(ValueError, match="different"):
        angled_features(3, 1.0, 1, 1)


# -- the canvas ------------------------------------------------------------------------------------


def test_canvas_objects_stay_in_their_cells():
    cv = canvas(12, 3)
    x = cv.sample(jax.random.key(config.seed(8)), 200, (0, 4, 8))
    assert x.shape == (200, 144)
    assert float(cv.success(x, (0, 4, 8)).mean()) == 1.0
    # outside the occupied cells only noise: its spread is the pixel noise
    outside = np.asarray(x)[:, ~np.asarray(cv.condition((0, 4, 8)), bool)]
    np.testing.assert_allclose(outside.std(), 0.05, rtol=0.05)
    xt, c = cv.training_data(jax.random.key(config.seed(9)), 1000)
    np.testing.assert_array_equal(np.asarray(cv.detect(xt)), np.asarray(c @ cv.cell_masks().T > 0))
    assert set(np.unique(np.asarray(cv.count(xt)))) == {0, 1}
    assert cv.to_images(x).shape == (200, 12, 12)


def test_canvas_null_condition_replaces_a_share_of_the_conditions():
    cv = canvas(12, 3)
    key = jax.random.key(config.seed(10))
    x0, c0 = cv.training_data(key, 4000)
    x1, c1 = cv.training_data(key, 4000, null_prob=0.25)
    np.testing.assert_array_equal(np.asarray(x0), np.asarray(x1))  # the canvases are kept
    null = np.all(np.asarray(c1) == -1.0, axis=1)
    kept = ~null
    np.testing.assert_array_equal(np.asarray(c1)[kept], np.asarray(c0)[kept])
    # binomial share: standard error sqrt(0.25 * 0.75 / 4000) = 0.007
    assert abs(null.mean() - 0.25) < 0.03
    assert cv.null_condition().shape == (144,)
    # the success measure on real canvases: exactly the composed cells, nothing more or less
    for cells in [(), (2,), (0, 8), (1, 3, 5, 7)]:
        x = cv.sample(jax.random.key(config.seed(11)), 100, cells)
        assert float(cv.success(x, cells).mean()) == 1.0
        assert not bool(cv.success(x, (4,) if cells != (4,) else (5,)).any())
    # a blob at a third of the height is no object
    faint = canvas(12, 3, height=1 / 3).sample(jax.random.key(config.seed(12)), 100, (4,))
    assert not bool(cv.detect(faint).any())


def test_canvas_bad_input():
    with pytest.raises(ValueError, match="multiple"):
        canvas(10, 3)
    with pytest.raises(ValueError, match="width"):
        canvas(12, 3, width=0.0)
    with pytest.raises(ValueError, match="jitter"):
        canvas(12, 3, jitter=-1.0)
    with pytest.raises(ValueError, match="null_prob"):
        canvas(12, 3).training_data(jax.random.key(0), 10, null_prob=1.0)
    with pytest.raises(ValueError, match="only n_slots=9|9"):
        canvas(12, 3).condition(tuple(range(10)))
