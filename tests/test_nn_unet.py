"""Tests of otdiff.nn.UNet: shapes, the zero start, jit and vmap safety, time dependence, and the
argument checks.

A conv net is slow to compile on a CPU, and so is its eager initialisation (one random kernel per
weight shape). So one network is built eagerly and perturbed in NumPy, every number the test
checks comes from one jitted function, compiled once (a single batched forward and backward pass
and one unbatched call; the times are arrays, as a Python float argument of ``eqx.filter_jit`` is
static and would compile again), and the three-level network is built and called under
``eqx.filter_eval_shape``, which compiles nothing.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _jax_traces import traces

from otdiff.nn import UNet

SMALL = {"side": 8, "channels": (4, 8), "n_middle": 1, "embed_dim": 8, "groups": 4}


def small(key=0, **kwargs):
    return UNet(**{**SMALL, **kwargs}, key=jax.random.key(key))


def abstract(**kwargs):
    """A small U-Net's structure and shapes, built without computing (or compiling) anything."""
    return eqx.filter_eval_shape(lambda: small(**kwargs))


def perturbed(net, seed):
    """``net`` with every float array moved by small noise (the zero-initialised layers too),
    in NumPy (no compilation)."""
    params, static = eqx.partition(net, eqx.is_inexact_array)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.normal(size=x.shape).astype(np.float32)),
        params,
    )
    return eqx.combine(params, static)


@eqx.filter_jit
def outputs(net, x, t):
    """One batched pass over the batch ``x``, the batch with image 1 moved, and image 0 at the
    times 0.1 and 0.9 (with the gradient of the batch's squared output), and one unbatched call
    on image 0."""
    xs = jnp.concatenate([x, x.at[1].add(1.0), x[:1], x[:1]])
    ts = jnp.concatenate([t, t, jnp.array([0.1, 0.9])])
    n = x.shape[0]

    def loss(m):
        out = jax.vmap(m)(xs, ts)
        return jnp.sum(out[:n] ** 2), out

    (_, out), grads = eqx.filter_value_and_grad(loss, has_aux=True)(net)
    norms = jnp.stack([jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(grads)])
    return out[:n], out[n : 2 * n], out[2 * n], out[2 * n + 1], net(x[0], t[0]), norms


def test_shapes_zero_start_and_batching():
    x = jax.random.normal(jax.random.key(1), (5, 64))
    t = jnp.linspace(0.1, 0.9, 5)
    fresh = small()
    net = perturbed(fresh, 2)
    # zero-initialised output layer: the network starts as zero
    with traces() as seen:
        np.testing.assert_array_equal(outputs(fresh, x, t)[0], 0.0)
        out, moved, early, late, single, norms = (np.asarray(a) for a in outputs(net, x, t))
    assert seen["outputs"] == 1  # the same shapes: compiled once
    assert out.shape == (5, 64) and np.all(np.isfinite(out))
    # a batched call equals an unbatched one
    np.testing.assert_allclose(out[0], single, rtol=2e-4, atol=2e-5)
    # the time matters, and so does every image of the batch independently
    assert not np.allclose(early, late)
    np.testing.assert_allclose(early, out[0], rtol=2e-4, atol=2e-5)  # t[0] = 0.1
    np.testing.assert_allclose(moved[[0, 2, 3, 4]], out[[0, 2, 3, 4]], rtol=2e-4, atol=2e-5)
    assert not np.allclose(moved[1], out[1])
    # gradients flow to every parameter
    assert np.all(norms > 0)


def test_three_levels_and_bad_arguments():
    three = {"channels": (4, 8, 8), "n_middle": 0}
    net = abstract(**three)
    assert net.channels == (4, 8, 8) and len(net.down_blocks) == 2 and not net.middle
    # built and called under eval_shape: shapes only
    one = eqx.filter_eval_shape(lambda x, t: small(**three)(x, t), jnp.zeros(64), 0.5)
    assert one.shape == (64,) and one.dtype == jnp.float32
    batch = eqx.filter_eval_shape(
        lambda x, t: jax.vmap(small(**three))(x, t), jnp.zeros((3, 64)), jnp.zeros(3)
    )
    assert batch.shape == (3, 64)
    with pytest.raises(ValueError, match="divisible"):
        small(side=7)
    with pytest.raises(ValueError, match="groups"):
        small(groups=3)
    with pytest.raises(ValueError, match="two levels"):
        small(channels=(4,))
    with pytest.raises(ValueError, match="flat image"):
        eqx.filter_eval_shape(lambda x: small()(x, 0.5), jnp.zeros((2, 64)))
