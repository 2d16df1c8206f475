"""otdiff.diffusion.composition: weighted products and background-relative combinations, checked
against the exact scores and energies of Gaussians (whose products and ratios are Gaussian)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff.data import exact_score, gaussian_mixture
from otdiff.diffusion import LinearVP
from otdiff.diffusion import energy as en
from otdiff.diffusion.composition import Composition, bayes, compose, product

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
    f(jnp.array([1.0, 1.0]), jnp.ones(2))
    f(jnp.array([0.3, 2.0]), jnp.ones(2))
    assert f._cache_size() == 1
    assert isinstance(product(scores), Composition)
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0]):
        with pytest.raises(ValueError, match="weights"):
            product(scores, bad)
    with pytest.raises(TypeError, match="fns"):
        product([])
    with pytest.raises(TypeError, match="background"):
        compose(scores, background=3.0)
