"""otdiff.metrics, the transport-map section: known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import metrics


def test_map_error_known_values():
    truth = jax.random.normal(jax.random.key(0), (500, 3))
    assert float(metrics.map_error(truth, truth)) == 0.0
    mean_map = jnp.broadcast_to(jnp.mean(truth, axis=0), truth.shape)
    np.testing.assert_allclose(metrics.map_error(mean_map, truth), 1.0, rtol=1e-5)
    # a shift by s in every coordinate costs d s^2 over tr Cov
    expected = 3 * 0.25 / float(jnp.sum(jnp.var(truth, axis=0)))
    np.testing.assert_allclose(metrics.map_error(truth + 0.5, truth), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="pred and truth must have the same shape"):
        metrics.map_error(truth[:10], truth)


def test_spread_ratio_known_values():
    truth = jax.random.normal(jax.random.key(1), (500, 2))
    np.testing.assert_allclose(metrics.spread_ratio(0.5 * truth + 3.0, truth), 0.25, rtol=1e-5)
    assert float(jax.jit(metrics.spread_ratio)(truth, truth)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same dimension"):
        metrics.spread_ratio(truth, jnp.zeros((5, 3)))
