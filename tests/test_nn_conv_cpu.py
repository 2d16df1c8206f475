"""Tests of the U-Net's CPU convolutions (otdiff.nn._Conv2d, _ConvTranspose2d): on the CPU they are
computed as matrix products and shifted sums, which XLA runs fast inside a ``while`` loop, where
its own convolution is many times slower. Checked against XLA's convolution (equinox's layers) to
float32 round-off, on random layers and on the shipped ``"digits_unet"`` weights, whose file must
hold the very weights it was trained with.
"""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from otdiff import artifacts, checkpoint, nn, zoo

# The SHA-256 of the shipped digits_unet weights (the file's payload) as trained, under the
# fingerprint 216e3055d179: re-fingerprinting the file must not change a byte of them.
DIGITS_UNET_PAYLOAD_SHA256 = "dc73e4a43294e03152c3cdb785dd3d08a2f46e297cd4105f4ad722958e10cbb5"


def xla(layer, x):
    """``layer(x)`` by XLA's convolution (equinox's own ``__call__``)."""
    base = eqx.nn.ConvTranspose2d if isinstance(layer, eqx.nn.ConvTranspose2d) else eqx.nn.Conv2d
    return base.__call__(layer, x)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "side"),
    [
        (16, 16, 3, 1, 1, 8),  # a residual block's convolution
        (16, 32, 3, 2, 1, 8),  # the U-Net's downsampling
        (32, 16, 1, 1, 0, 8),  # a 1x1 skip
        (1, 16, 3, 1, 1, 8),  # the stem
        (3, 5, 3, 2, 0, 7),  # strided, unpadded, odd side
        (4, 6, 3, 1, ((0, 1), (2, 0)), 6),  # asymmetric padding
        (2, 3, 5, 3, 2, 9),  # larger kernel and stride
    ],
)
def test_conv_by_matmul_matches_xla(c_in, c_out, kernel, stride, padding, side):
    key_w, key_x = jax.random.split(jax.random.key(0))
    layer = nn._Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, key=key_w)
    x = jax.random.normal(key_x, (5, c_in, side, side))
    ref = jax.jit(jax.vmap(lambda v: xla(layer, v)))(x)
    fast = jax.jit(jax.vmap(lambda v: nn._conv_by_matmul(layer, v)))(x)
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))
    # the layer itself (on the CPU: the product form), jitted and vmapped, and its gradient
    np.testing.assert_allclose(jax.jit(jax.vmap(layer))(x), ref, rtol=1e-5, atol=1e-5)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(jax.vmap(layer)(v)))))(x)
    grad_ref = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(jax.vmap(lambda u: xla(layer, u))(v)))))(
        x
    )
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("c_in", "c_out", "kernel"), [(32, 16, 2), (3, 4, 3)])
def test_conv_transpose_by_matmul_matches_xla(c_in, c_out, kernel):
    key_w, key_x = jax.random.split(jax.random.key(1))
    layer = nn._ConvTranspose2d(c_in, c_out, kernel, stride=kernel, key=key_w)
    x = jax.random.normal(key_x, (5, c_in, 4, 4))
    ref = jax.jit(jax.vmap(lambda v: xla(layer, v)))(x)
    np.testing.assert_allclose(jax.jit(jax.vmap(layer))(x), ref, rtol=1e-5, atol=1e-5)


def test_other_transposed_convolutions_keep_xla():
    # kernel != stride: the product form does not apply, the layer is equinox's
    layer = nn._ConvTranspose2d(3, 4, 3, stride=2, padding=1, key=jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (3, 4, 4))
    np.testing.assert_array_equal(layer(x), xla(layer, x))


def test_the_cpu_program_has_no_convolution():
    """Lowered for the CPU, the U-Net's forward pass holds no convolution op (the form XLA runs
    slowly inside a loop); the other platforms keep XLA's convolutions."""
    net = nn.UNet(side=8, channels=(4, 8), n_middle=1, embed_dim=8, groups=4, key=jax.random.key(0))
    x, t = jnp.zeros((2, 64)), jnp.zeros(2)
    text = jax.jit(jax.vmap(net)).lower(x, t).as_text()
    assert "convolution" not in text
    assert "dot_general" in text


def test_shipped_digits_unet_weights_are_unchanged_and_give_the_same_outputs(monkeypatch):
    path = artifacts.shipped_path("digits_unet", 0)
    header, _ = checkpoint._read(Path(path))
    assert header["sha256"] == DIGITS_UNET_PAYLOAD_SHA256
    model = zoo.load("digits_unet").model
    x = jax.random.normal(jax.random.key(4), (64, 64))
    t = jax.random.uniform(jax.random.key(5), (64,), minval=1e-3, maxval=1.0)
    fast = jax.jit(jax.vmap(model))(x, t)
    monkeypatch.setattr(nn._Conv2d, "__call__", eqx.nn.Conv2d.__call__)
    monkeypatch.setattr(nn._ConvTranspose2d, "__call__", eqx.nn.ConvTranspose2d.__call__)
    plain = jax.jit(jax.vmap(model))(x, t)
    scale = float(jnp.abs(plain).max())
    assert scale > 1.0  # a trained network, not zeros
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * scale)
