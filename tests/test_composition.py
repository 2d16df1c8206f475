"""otdiff.diffusion.composition: weighted products and background-relative combinations, checked
against the exact scores and energies of Gaussians (whose products and ratios are Gaussian)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces

from otdiff.data import exact_score, gaussian_mixture
from otdiff.diffusion import LinearVP
from otdiff.diffusion import energy as en
from otdiff.diffusion.composition import (
    Composition,
    bayes,
    compose,
    guidance,
    mean_cosines,
    product,
    sample_mean_cosines,
)

PROCESS = LinearVP()


def _gaussian(mean, std):
    return gaussian_mixture([mean], std)


def test_product_of_gaussians_is_the_gaussian_product():
    """N(m1, s1^2) N(m2, s2^2) is N(m, s^2) with precision 1/s1^2 + 1/s2^2: the score of the
    product at t = 0 (noise-free) is the sum of the scores."""
    g1, g2 = _gaussian([1.0, 0.0], 0.5), _gaussian([-1.0, 2.0], 1.0)
    prec = 1 / 0.25 + 1.0
    mean = (np.array([1.0, 0.0]) / 0.25 + np.array([-1.0, 2.0])) / prec
    composed = product([lambda x, t: g1.score(x), lambda x, t: g2.score(x)])
    x = jnp.array([0.3, -0.4])
    np.testing.assert_allclose(composed(x, 0.0), -(np.asarray(x) - mean) * prec, rtol=1e-5)


def test_weights_temper_a_density():
    g = _gaussian([0.5], 0.8)
    tempered = product(lambda x, t: g.score(x), [3.0])
    x = jnp.array([1.7])
    np.testing.assert_allclose(tempered(x, 0.0), 3.0 * g.score(x), rtol=1e-6)


def test_background_relative_and_bayes():
    """s_b + sum w_i (s_i - s_b); Bayes composition is the case w_i = 1."""
    scores = [exact_score(_gaussian([m, 0.0], 1.0), PROCESS) for m in (-1.0, 2.0)]
    background = exact_score(_gaussian([0.0, 0.0], 2.0), PROCESS)
    x, t = jnp.array([0.4, 1.1]), 0.3
    s1, s2, sb = (f(x, t) for f in (*scores, background))
    weighted = compose(scores, [0.5, 2.0], background=background)
    np.testing.assert_allclose(weighted(x, t), sb + 0.5 * (s1 - sb) + 2.0 * (s2 - sb), rtol=1e-5)
    np.testing.assert_allclose(bayes(scores, background)(x, t), s1 + s2 - sb, rtol=1e-5)
    # energies compose the same way (scalars): -grad of the composed energy is the composed score
    energies = [en.MixtureEnergy(_gaussian([m, 0.0], 1.0), PROCESS) for m in (-1.0, 2.0)]
    e_b = en.MixtureEnergy(_gaussian([0.0, 0.0], 2.0), PROCESS)
    composed_energy = compose(energies, [0.5, 2.0], background=e_b)
    assert composed_energy(x, t).shape == ()
    np.testing.assert_allclose(
        en.energy_score(composed_energy)(x, t), weighted(x, t), rtol=1e-4, atol=1e-5
    )


def test_weights_are_dynamic_and_checked():
    scores = [exact_score(_gaussian([m, 0.0], 1.0), PROCESS) for m in (-1.0, 2.0)]
    f = jax.jit(lambda w, x: product(scores, w)(x, 0.5))
    with traces() as seen:
        f(jnp.array([1.0, 1.0]), jnp.ones(2))
        f(jnp.array([0.3, 2.0]), jnp.ones(2))
    assert seen["<lambda>"] == 1
    assert isinstance(product(scores), Composition)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0]):
        with pytest.raises(ValueError, match="weights"):
            product(scores, bad)
    with pytest.raises(TypeError, match="fns"):
        product([])
    with pytest.raises(TypeError, match="background"):
        compose(scores, background=3.0)


def test_guidance_is_the_one_term_case():
    cond = exact_score(_gaussian([1.0, 0.0], 1.0), PROCESS)
    unc = exact_score(_gaussian([0.0, 0.0], 2.0), PROCESS)
    x, t = jnp.array([0.4, 1.1]), 0.3
    np.testing.assert_allclose(
        guidance(cond, unc, 3.0)(x, t), unc(x, t) + 3.0 * (cond(x, t) - unc(x, t)), rtol=1e-5
    )
    np.testing.assert_allclose(guidance(cond, unc, 1.0)(x, t), cond(x, t), rtol=1e-5)
    with pytest.raises(ValueError, match="weight"):
        guidance(cond, unc, -1.0)
    with pytest.raises(TypeError, match="unconditional"):
        guidance(cond, None)


def test_mismatched_score_shapes_raise_clearly():
    two = exact_score(_gaussian([1.0, 0.0], 1.0), PROCESS)
    three = exact_score(_gaussian([1.0, 0.0, 0.0], 1.0), PROCESS)
    with pytest.raises(ValueError, match="term 1"):
        product([lambda x, t: two(x[:2], t), lambda x, t: three(x, t)])(jnp.ones(3), 0.5)
    with pytest.raises(ValueError, match="background"):
        compose([lambda x, t: two(x[:2], t)], background=three)(jnp.ones(3), 0.5)


def test_mean_cosines_closed_form_and_monte_carlo():
    """Lemma 8.1 of Bradley et al. (2025): with the empty background the mean differences of the
    one-object laws are orthogonal; against the unconditional law their cosines are -1/(d-1)."""
    from otdiff import config
    from otdiff.data import slots

    d = 4
    fam = slots(d, plus_prob=1.0)
    means = jnp.stack([fam.mean((i,)) for i in range(d)])
    off = ~np.eye(d, dtype=bool)
    np.testing.assert_allclose(mean_cosines(means, fam.mean())[off], 0.0, atol=1e-6)
    np.testing.assert_allclose(
        mean_cosines(means, fam.mean("unconditional"))[off], -1 / (d - 1), atol=1e-6
    )
    key = jax.random.key(config.seed(0))
    groups = [fam.sample(jax.random.fold_in(key, i), 4000, (i,)) for i in range(d)]
    mc_empty = sample_mean_cosines(groups, fam.sample(jax.random.fold_in(key, 9), 4000))
    mc_unc = sample_mean_cosines(
        groups, fam.sample(jax.random.fold_in(key, 10), 4000, "unconditional")
    )
    # Monte Carlo error of a cosine ~ s / (a sqrt(n)) ~ 0.002 here; tolerance 0.03
    np.testing.assert_allclose(np.asarray(mc_empty)[off], 0.0, atol=0.03)
    np.testing.assert_allclose(np.asarray(mc_unc)[off], -1 / (d - 1), atol=0.03)
    with pytest.raises(ValueError, match="equal the background"):
        mean_cosines(means, means[0] * 0 + means[1])
    with pytest.raises(ValueError, match="k >= 2"):
        mean_cosines(means[:1], fam.mean())
    with pytest.raises(ValueError, match="background_mean"):
        mean_cosines(means, jnp.zeros(3))
    with pytest.raises(ValueError, match="k >= 2"):
        sample_mean_cosines(groups[:1], groups[0])
