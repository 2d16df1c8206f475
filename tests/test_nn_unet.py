"""Tests of otdiff.nn.UNet: shapes, the zero start, jit and vmap safety, time dependence, and the
argument checks."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff.nn import UNet


def small(key=0, **kwargs):
    settings = {"side": 8, "channels": (4, 8), "n_middle": 1, "embed_dim": 8, "groups": 4}
    return UNet(**{**settings, **kwargs}, key=jax.random.key(key))


def perturbed(net, key):
    """``net`` with every float array moved by small noise (the zero-initialised layers too)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


# Compiled once each: an eager call of a conv net dispatches every operation on its own (minutes).
batched = eqx.filter_jit(lambda net, x, t: jax.vmap(net)(x, t))
single = eqx.filter_jit(lambda net, x, t: net(x, t))


def test_shapes_zero_start_and_batching():
    net = small()
    x = jax.random.normal(jax.random.key(1), (5, 64))
    t = jnp.linspace(0.1, 0.9, 5)
    # zero-initialised output layer: the network starts as zero
    np.testing.assert_array_equal(batched(net, x, t), 0.0)
    net = perturbed(net, 2)
    out = np.asarray(batched(net, x, t))
    assert out.shape == (5, 64) and np.all(np.isfinite(out))
    one_by_one = np.stack([np.asarray(single(net, x[i], t[i])) for i in range(5)])
    np.testing.assert_allclose(out, one_by_one, rtol=2e-4, atol=2e-5)
    # the time matters, and so does every image of the batch independently
    assert not np.allclose(single(net, x[0], 0.1), single(net, x[0], 0.9))
    moved = np.asarray(batched(net, x.at[1].add(1.0), t))
    np.testing.assert_allclose(moved[[0, 2, 3, 4]], out[[0, 2, 3, 4]], rtol=2e-4, atol=2e-5)
    # gradients flow to every parameter
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x, t) ** 2)))(net)
    norms = [float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads)]
    assert all(n > 0 for n in norms)


def test_three_levels_and_bad_arguments():
    net = perturbed(small(channels=(4, 8, 8), n_middle=0), 3)
    assert single(net, jnp.zeros(64), 0.5).shape == (64,)
    with pytest.raises(ValueError, match="divisible"):
        small(side=7)
    with pytest.raises(ValueError, match="groups"):
        small(groups=3)
    with pytest.raises(ValueError, match="two levels"):
        small(channels=(4,))
    with pytest.raises(ValueError, match="flat image"):
        small()(jnp.zeros((2, 64)), 0.5)
