"""Network blocks: time-conditioned networks (a sinusoidal time embedding, an MLP, a residual conv
net, a U-Net) and an MLP onto the unit sphere.

The building blocks of every network in the book that takes a point and a time, :math:`f_\\theta(x,
t)` with ``x`` of shape ``(d,)`` (or a flat image) and a scalar time :math:`t\\in[0, 1]`: a noise
predictor or an energy (:mod:`otdiff.diffusion.networks`), a velocity field, a tangent field on
the sphere. Callers ``vmap`` over a batch. The time enters through sinusoidal features
:cite:`ho2020denoising`

.. math::

    \\phi(t) = \\big(\\sin(\\omega_k s t),\\ \\cos(\\omega_k s t)\\big)_{k=1}^{m/2},\\qquad
    \\omega_k = \\Omega^{-(k-1)/(m/2-1)},

(frequencies geometric from 1 down to :math:`1/\\Omega`, time scale :math:`s = 1000` as for DDPM's
integer steps), followed by a small learned MLP (:class:`TimeEmbedding`). :class:`TimeMLP` adds
a learned projection of the embedding to every hidden layer; :class:`TimeConvNet` modulates every
residual block's channels with a learned scale and shift of it (FiLM); :class:`UNet` does the same
in a small U-Net :cite:`ronneberger2015unet` with skip connections across resolutions, the
network of :cite:`ho2020denoising` cut down to 8x8 images.

:class:`SphereMLP` is an encoder whose embeddings live on the unit sphere
:math:`S^{m-1}`, :math:`z = h_\\theta(x)/\\|h_\\theta(x)\\|`, as contrastive losses compare them by
their inner products.

The trainable parameters are the floating-point arrays of a module (``eqx.is_inexact_array``);
sizes and the frequencies are static Python numbers.

Taught in: book/diffusion/01_score_based.ipynb, book/ot/05_m3g.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_int, check_positive

__all__ = ["TimeEmbedding", "TimeMLP", "TimeConvNet", "UNet", "SphereMLP"]


def _sinusoids(t: jax.Array, dim: int, max_period: float, time_scale: float) -> jax.Array:
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half) / max(half - 1, 1))
    arg = time_scale * jnp.asarray(t, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class TimeEmbedding(eqx.Module):
    """Sinusoidal features of the time followed by a two-layer SiLU MLP: ``t -> (embed_dim,)``.

    Args:
        embed_dim: the output size (an even integer >= 2; static).
        key: a JAX random key for the MLP's weights.
        n_frequencies: the number of sinusoidal features (even; default ``embed_dim``).
        max_period: the ratio :math:`\\Omega` of the fastest to the slowest frequency.
        time_scale: multiplies ``t`` before the sinusoids (1000: DDPM's step scale).

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/03_progot.ipynb, book/ot/05_m3g.ipynb,
    book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb,
    book/diffusion/03_spell.ipynb, book/appendix/jax_primer.ipynb.
    """

    n_features: int = eqx.field(static=True)
    max_period: float = eqx.field(static=True)
    time_scale: float = eqx.field(static=True)
    layer1: eqx.nn.Linear
    layer2: eqx.nn.Linear

    def __init__(
        self,
        embed_dim: int,
        *,
        key: jax.Array,
        n_frequencies: int | None = None,
        max_period: float = 10_000.0,
        time_scale: float = 1000.0,
    ):
        embed_dim = check_int(embed_dim, "embed_dim", low=2)
        n_features = embed_dim if n_frequencies is None else n_frequencies
        n_features = check_int(n_features, "n_frequencies", low=2)
        if n_features % 2:
            raise ValueError(f"n_frequencies must be even, got {n_features}.")
        check_positive(max_period, "max_period")
        check_positive(time_scale, "time_scale")
        k1, k2 = jax.random.split(key)
        self.n_features = n_features
        self.max_period = float(max_period)
        self.time_scale = float(time_scale)
        self.layer1 = eqx.nn.Linear(n_features, embed_dim, key=k1)
        self.layer2 = eqx.nn.Linear(embed_dim, embed_dim, key=k2)

    def __call__(self, t: jax.Array) -> jax.Array:
        """The embedding of a scalar time ``t``, shape ``(embed_dim,)``."""
        phi = _sinusoids(t, self.n_features, self.max_period, self.time_scale)
        return self.layer2(jax.nn.silu(self.layer1(phi)))


class TimeMLP(eqx.Module):
    """A time-conditioned SiLU MLP :math:`f_\\theta(x, t)` from ``in_size`` to ``out_size``.

    Each hidden layer computes :math:`h \\leftarrow \\mathrm{SiLU}(W h + b + U\\phi(t))` with the
    time embedding :math:`\\phi(t)` (:class:`TimeEmbedding`) projected by its own :math:`U`; a
    linear layer maps the last hidden layer to the output. Smooth activations: a score or an
    energy's gradient is read from it, and a ReLU network's gradient is piecewise constant.

    Args:
        in_size: the input dimension (static).
        out_size: the output dimension, or ``"scalar"`` for a scalar output (static).
        hidden: the widths of the hidden layers (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/03_progot.ipynb, book/ot/05_m3g.ipynb,
    book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb,
    book/diffusion/03_spell.ipynb, book/appendix/jax_primer.ipynb.
    """

    in_size: int = eqx.field(static=True)
    embedding: TimeEmbedding
    layers: tuple[eqx.nn.Linear, ...]
    time_projections: tuple[eqx.nn.Linear, ...]
    output: eqx.nn.Linear

    def __init__(
        self,
        in_size: int,
        out_size: int | str,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 64,
        key: jax.Array,
    ):
        self.in_size = check_int(in_size, "in_size", low=1)
        if out_size != "scalar":
            out_size = check_int(out_size, "out_size", low=1)
        hidden = tuple(check_int(h, "hidden", low=1) for h in hidden)
        if not hidden:
            raise ValueError("hidden must list at least one layer width.")
        keys = jax.random.split(key, 2 * len(hidden) + 2)
        self.embedding = TimeEmbedding(embed_dim, key=keys[0])
        widths = (self.in_size, *hidden)
        self.layers = tuple(
            eqx.nn.Linear(widths[i], widths[i + 1], key=keys[1 + i]) for i in range(len(hidden))
        )
        self.time_projections = tuple(
            eqx.nn.Linear(embed_dim, h, use_bias=False, key=keys[1 + len(hidden) + i])
            for i, h in enumerate(hidden)
        )
        self.output = eqx.nn.Linear(hidden[-1], out_size, key=keys[-1])

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The output at one point ``x`` of shape ``(in_size,)`` and a scalar time ``t``."""
        if x.shape != (self.in_size,):
            raise ValueError(
                f"the network expects one point of shape ({self.in_size},), got {x.shape}; "
                "vmap over a batch."
            )
        emb = jax.nn.silu(self.embedding(t))
        h = x
        for layer, proj in zip(self.layers, self.time_projections, strict=True):
            h = jax.nn.silu(layer(h) + proj(emb))
        return self.output(h)


class _ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm | None
    conv1: eqx.nn.Conv2d
    film: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm | None
    conv2: eqx.nn.Conv2d

    def __init__(self, channels: int, embed_dim: int, groups: int, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1 = eqx.nn.GroupNorm(groups, channels) if groups else None
        self.conv1 = eqx.nn.Conv2d(channels, channels, 3, padding="SAME", key=k1)
        self.film = eqx.nn.Linear(embed_dim, 2 * channels, key=k2)
        self.norm2 = eqx.nn.GroupNorm(groups, channels) if groups else None
        self.conv2 = eqx.nn.Conv2d(channels, channels, 3, padding="SAME", key=k3)

    def __call__(self, h, emb):
        z = h if self.norm1 is None else self.norm1(h)
        z = self.conv1(jax.nn.silu(z))
        scale, shift = jnp.split(self.film(emb), 2)
        z = z * (1.0 + scale[:, None, None]) + shift[:, None, None]
        z = z if self.norm2 is None else self.norm2(z)
        z = self.conv2(jax.nn.silu(z))
        return h + z


class TimeConvNet(eqx.Module):
    """A small residual convolutional network on ``side x side`` grey images, conditioned on time.

    The flat input (``in_channels * side**2``,) is reshaped to ``in_channels`` channels (the
    image, then any conditioning maps), lifted to ``channels`` by a 3x3 convolution, passed through ``n_blocks`` residual blocks (GroupNorm, SiLU, 3x3 convolution,
    FiLM by the time embedding :math:`z \\leftarrow z(1 + a(t)) + b(t)` per channel, GroupNorm,
    SiLU, 3x3 convolution) and projected back to one channel, then flattened. "SAME" padding
    keeps the image size.

    Args:
        side: the image side (static; 8 for the digits).
        channels: the width of the residual blocks (static).
        n_blocks: the number of residual blocks (static).
        embed_dim: the size of the time embedding (static).
        groups: the GroupNorm groups (must divide ``channels``; 0 turns normalisation off).
        key: a JAX random key.
        in_channels: the number of input channels (static; default 1, the image alone).

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/03_progot.ipynb, book/ot/05_m3g.ipynb,
    book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb,
    book/diffusion/03_spell.ipynb, book/appendix/jax_primer.ipynb.
    """

    side: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)
    embedding: TimeEmbedding
    lift: eqx.nn.Conv2d
    blocks: tuple[_ResBlock, ...]
    norm_out: eqx.nn.GroupNorm | None
    project: eqx.nn.Conv2d

    def __init__(
        self,
        *,
        side: int = 8,
        channels: int = 32,
        n_blocks: int = 2,
        embed_dim: int = 64,
        groups: int = 8,
        key: jax.Array,
        in_channels: int = 1,
    ):
        side = check_int(side, "side", low=1)
        self.in_channels = check_int(in_channels, "in_channels", low=1)
        channels = check_int(channels, "channels", low=1)
        n_blocks = check_int(n_blocks, "n_blocks", low=0)
        groups = check_int(groups, "groups", low=0)
        if groups and channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels}.")
        keys = jax.random.split(key, n_blocks + 3)
        self.side = side
        self.embedding = TimeEmbedding(embed_dim, key=keys[0])
        self.lift = eqx.nn.Conv2d(self.in_channels, channels, 3, padding="SAME", key=keys[1])
        self.blocks = tuple(
            _ResBlock(channels, embed_dim, groups, key=keys[2 + i]) for i in range(n_blocks)
        )
        self.norm_out = eqx.nn.GroupNorm(groups, channels) if groups else None
        self.project = eqx.nn.Conv2d(channels, 1, 3, padding="SAME", key=keys[-1])

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The output ``(side**2,)`` at one flat input ``x`` of shape ``(in_channels * side**2,)``
        and a scalar time ``t``."""
        n = self.side * self.side
        if x.shape != (self.in_channels * n,):
            raise ValueError(
                f"the network expects one flat input of shape ({self.in_channels * n},) "
                f"({self.in_channels} channel(s) of {self.side}x{self.side}), got {x.shape}; "
                "vmap over a batch."
            )
        emb = jax.nn.silu(self.embedding(t))
        h = self.lift(x.reshape(self.in_channels, self.side, self.side))
        for block in self.blocks:
            h = block(h, emb)
        h = h if self.norm_out is None else self.norm_out(h)
        return self.project(jax.nn.silu(h)).reshape(n)


# -- convolutions that stay fast inside XLA's CPU while loops -------------------------------------
#
# XLA's CPU backend runs a convolution inside a ``while`` loop (what ``lax.scan`` compiles to,
# hence every sampler) many times slower than the same convolution compiled on its own: in our
# runs (2 shared cores) a 16-channel 3x3 convolution of 256 8x8 images took 1.2 ms on its own and
# 54 ms per iteration of a ``fori_loop``; the digits U-Net's reverse SDE (500 digits, 100 steps)
# took 48 s where 100 separate forward passes take 2.8 s. Written as one matrix product
# followed by shifted sums (:func:`_conv_by_matmul`), the same convolution took 2.0 ms per loop
# iteration. So on the CPU the U-Net's convolutions take that form (``lax.platform_dependent``
# picks it when the program is lowered for the CPU); elsewhere they are XLA's convolutions.


def _conv_by_matmul(layer: eqx.nn.Conv2d, x: jax.Array) -> jax.Array:
    """``layer(x)`` for one image ``x`` ``(C, H, W)`` (no dilation, no groups, zero padding) as
    one product and a sum of shifted slices:

    .. math::

        y_{abo}(u, v) = \\sum_c W_{ocab}\\, x_c(u, v),\\qquad
        \\mathrm{out}_o(i, j) = b_o + \\sum_{a, b} \\tilde y_{abo}(s i + a, s j + b),

    with :math:`\\tilde y` the zero-padded :math:`y` and :math:`s` the stride: the same sum as
    the convolution, in another order (equal to float32 round-off)."""
    k_h, k_w = layer.kernel_size
    s_h, s_w = layer.stride
    (lo_h, hi_h), (lo_w, hi_w) = layer.padding
    _, height, width = x.shape
    out_h = (height + lo_h + hi_h - k_h) // s_h + 1
    out_w = (width + lo_w + hi_w - k_w) // s_w + 1
    if (s_h, s_w) == (1, 1):  # one product at every pixel, then shifted sums of its output
        y = jnp.einsum("chw,ocab->abohw", x, layer.weight)
        y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (lo_h, hi_h), (lo_w, hi_w)))
        out = sum(y[a, b, :, a : a + out_h, b : b + out_w] for a in range(k_h) for b in range(k_w))
    else:  # strided: the input's patches at the output pixels only, then one product
        x = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w)))
        patches = jnp.stack(
            [
                jnp.stack(
                    [
                        x[
                            :,
                            a : a + s_h * (out_h - 1) + 1 : s_h,
                            b : b + s_w * (out_w - 1) + 1 : s_w,
                        ]
                        for b in range(k_w)
                    ]
                )
                for a in range(k_h)
            ]
        )
        out = jnp.einsum("abchw,ocab->ohw", patches, layer.weight)
    return out if layer.bias is None else out + layer.bias


def _conv_transpose_by_matmul(layer: eqx.nn.ConvTranspose2d, x: jax.Array) -> jax.Array:
    """``layer(x)`` for one image ``x`` ``(C, H, W)`` when the kernel equals the stride (no
    padding, no dilation, no groups): each input pixel becomes a ``k x k`` patch,
    :math:`\\mathrm{out}_o(k i + r, k j + q) = b_o + \\sum_c W_{oc,k-1-r,k-1-q}\\, x_c(i, j)`."""
    k_h, k_w = layer.kernel_size
    _, height, width = x.shape
    y = jnp.einsum("chw,ocrq->ohrwq", x, layer.weight[:, :, ::-1, ::-1])
    out = y.reshape(y.shape[0], height * k_h, width * k_w)
    return out if layer.bias is None else out + layer.bias


class _Conv2d(eqx.nn.Conv2d):
    """``equinox.nn.Conv2d`` that is computed by :func:`_conv_by_matmul` on the CPU."""

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        if self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "ZEROS":
            return super().__call__(x)
        return jax.lax.platform_dependent(
            x,
            cpu=lambda x: _conv_by_matmul(self, x),
            default=lambda x: super(_Conv2d, self).__call__(x),
        )


class _ConvTranspose2d(eqx.nn.ConvTranspose2d):
    """``equinox.nn.ConvTranspose2d`` that is computed by :func:`_conv_transpose_by_matmul` on the
    CPU when its kernel equals its stride."""

    def __call__(self, x: jax.Array, *, key=None) -> jax.Array:
        simple = (
            self.kernel_size == self.stride
            and self.padding == ((0, 0), (0, 0))
            and self.output_padding == (0, 0)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "ZEROS"
        )
        if not simple:
            return super().__call__(x)
        return jax.lax.platform_dependent(
            x,
            cpu=lambda x: _conv_transpose_by_matmul(self, x),
            default=lambda x: super(_ConvTranspose2d, self).__call__(x),
        )


def _zeroed(layer: eqx.Module) -> eqx.Module:
    """``layer`` with its weight and bias set to zero (a residual branch that starts as nothing)."""
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros_like(layer.weight))
    if getattr(layer, "bias", None) is not None:
        layer = eqx.tree_at(lambda m: m.bias, layer, jnp.zeros_like(layer.bias))
    return layer


class _UNetBlock(eqx.Module):
    """GroupNorm, SiLU, 3x3 conv; GroupNorm scaled and shifted by the time; SiLU, 3x3 conv; plus
    the input (through a 1x1 conv when the channel count changes)."""

    norm1: eqx.nn.GroupNorm
    conv1: _Conv2d
    film: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: _Conv2d
    skip: _Conv2d | None

    def __init__(self, c_in: int, c_out: int, embed_dim: int, groups: int, *, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(groups, c_in)
        self.conv1 = _Conv2d(c_in, c_out, 3, padding=1, key=k1)
        self.film = eqx.nn.Linear(embed_dim, 2 * c_out, key=k2)
        self.norm2 = eqx.nn.GroupNorm(groups, c_out)
        self.conv2 = _zeroed(_Conv2d(c_out, c_out, 3, padding=1, key=k3))
        self.skip = None if c_in == c_out else _Conv2d(c_in, c_out, 1, key=k4)

    def __call__(self, h: jax.Array, emb: jax.Array) -> jax.Array:
        z = self.conv1(jax.nn.silu(self.norm1(h)))
        scale, shift = jnp.split(self.film(emb), 2)
        z = self.norm2(z) * (1.0 + scale[:, None, None]) + shift[:, None, None]
        z = self.conv2(jax.nn.silu(z))
        return (h if self.skip is None else self.skip(h)) + z


class UNet(eqx.Module):
    """A small time-conditioned U-Net :math:`f_\\theta(x, t)` on ``side x side`` grey images.

    The flat input (``side**2``,) is reshaped to one channel and lifted to ``channels[0]`` by a
    3x3 convolution. Level :math:`l` works at resolution ``side / 2**l`` with ``channels[l]``
    channels: on the way down, one residual block per level, its output kept for the skip
    connection, then a stride-2 3x3 convolution; at the coarsest level, ``n_middle`` residual
    blocks; on the way up, a stride-2 transposed convolution back to the finer resolution, the
    skip concatenated and one residual block. A last GroupNorm, SiLU and 3x3 convolution give one
    channel, flattened. Each residual block is

    .. math::

        z = W_1 * \\mathrm{SiLU}(\\mathrm{GN}(h)),\\qquad
        z \\leftarrow \\mathrm{GN}(z)\\,(1 + a(t)) + b(t),\\qquad
        h \\leftarrow S h + W_2 * \\mathrm{SiLU}(z),

    with :math:`(a, b)` a linear map of the time embedding (the "scale-shift norm" of
    :cite:`nichol2021improved`), :math:`S` the identity or a 1x1 convolution, and :math:`W_2`
    and the output convolution initialised at zero, so the network starts as zero and every
    block as the identity :cite:`ho2020denoising`.

    On the CPU its convolutions are computed as matrix products and shifted sums (the same
    function to float32 round-off): XLA's CPU convolution runs many times slower inside a
    ``while`` loop, which every sampler's ``lax.scan`` is. In our runs (2 shared CPU cores) the
    reverse SDE over 500 digits in 100 steps took 19 s with the product form and 48 s with XLA's
    convolutions.

    Args:
        side: the image side (static; divisible by ``2 ** (len(channels) - 1)``).
        channels: the channels of each level, finest first (static; two levels or more).
        n_middle: the residual blocks at the coarsest level (static, >= 0).
        embed_dim: the size of the time embedding (static).
        groups: the GroupNorm groups (static; divides every entry of ``channels``).
        key: a JAX random key.

    Taught in: book/diffusion/01_score_based.ipynb
    """

    side: int = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)
    embedding: TimeEmbedding
    stem: _Conv2d
    down_blocks: tuple[_UNetBlock, ...]
    downsample: tuple[_Conv2d, ...]
    middle: tuple[_UNetBlock, ...]
    upsample: tuple[_ConvTranspose2d, ...]
    up_blocks: tuple[_UNetBlock, ...]
    norm_out: eqx.nn.GroupNorm
    output: _Conv2d

    def __init__(
        self,
        *,
        side: int = 8,
        channels: Sequence[int] = (32, 64, 64),
        n_middle: int = 2,
        embed_dim: int = 64,
        groups: int = 8,
        key: jax.Array,
    ):
        side = check_int(side, "side", low=1)
        channels = tuple(check_int(c, "channels", low=1) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels must list at least two levels, got {channels}.")
        n_middle = check_int(n_middle, "n_middle", low=0)
        groups = check_int(groups, "groups", low=1)
        if any(c % groups for c in channels):
            raise ValueError(f"groups={groups} must divide every entry of channels={channels}.")
        factor = 2 ** (len(channels) - 1)
        if side % factor:
            raise ValueError(
                f"side must be divisible by 2 ** (len(channels) - 1) = {factor}, got side={side}."
            )
        n_levels = len(channels)
        keys = iter(jax.random.split(key, 4 * n_levels + n_middle + 4))
        self.side, self.channels = side, channels
        self.embedding = TimeEmbedding(embed_dim, key=next(keys))
        self.stem = _Conv2d(1, channels[0], 3, padding=1, key=next(keys))
        fine = range(n_levels - 1)
        self.down_blocks = tuple(
            _UNetBlock(channels[i], channels[i], embed_dim, groups, key=next(keys)) for i in fine
        )
        self.downsample = tuple(
            _Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1, key=next(keys))
            for i in fine
        )
        c_low = channels[-1]
        self.middle = tuple(
            _UNetBlock(c_low, c_low, embed_dim, groups, key=next(keys)) for _ in range(n_middle)
        )
        self.upsample = tuple(
            _ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2, key=next(keys))
            for i in fine
        )
        self.up_blocks = tuple(
            _UNetBlock(2 * channels[i], channels[i], embed_dim, groups, key=next(keys))
            for i in fine
        )
        self.norm_out = eqx.nn.GroupNorm(groups, channels[0])
        self.output = _zeroed(_Conv2d(channels[0], 1, 3, padding=1, key=next(keys)))

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The output at one flat image ``x`` of shape ``(side**2,)`` and a scalar time ``t``."""
        n = self.side * self.side
        if x.shape != (n,):
            raise ValueError(
                f"the network expects one flat image of shape ({n},), got {x.shape}; "
                "vmap over a batch."
            )
        emb = jax.nn.silu(self.embedding(t))
        h = self.stem(x.reshape(1, self.side, self.side))
        skips = []
        for block, down in zip(self.down_blocks, self.downsample, strict=True):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        for block in self.middle:
            h = block(h, emb)
        for i in reversed(range(len(self.up_blocks))):
            h = self.upsample[i](h)
            h = self.up_blocks[i](jnp.concatenate([h, skips[i]]), emb)
        h = jax.nn.silu(self.norm_out(h))
        return self.output(h).reshape(n)


class SphereMLP(eqx.Module):
    """An MLP onto the unit sphere: :math:`x \\mapsto h_\\theta(x) / \\|h_\\theta(x)\\|`.

    :math:`h_\\theta` is an ``equinox.nn.MLP`` with GELU activations from ``in_size`` to
    ``out_size`` (``depth`` hidden layers of ``width``); the output is divided by its norm (floored
    at :math:`10^{-12}`), so every embedding is a unit vector of :math:`\\mathbb R^{\\text{out\\_size}}`.
    One input ``(in_size,)`` in, one unit vector ``(out_size,)`` out: ``jax.vmap`` over a batch.
    The encoder of contrastive learning, whose losses compare embeddings by inner products
    (cosine similarities) :cite:`chen2020simclr`.

    Args:
        in_size: the input dimension (static; 64 for the flat 8x8 digits).
        out_size: the embedding dimension (static).
        width: the width of the hidden layers (static).
        depth: the number of hidden layers (static).
        key: a JAX random key for the initial weights.

    Taught in: book/ot/05_m3g.ipynb
    """

    in_size: int = eqx.field(static=True)
    mlp: eqx.nn.MLP

    def __init__(
        self, in_size: int, out_size: int, *, width: int = 256, depth: int = 2, key: jax.Array
    ):
        self.in_size = check_int(in_size, "in_size", low=1)
        out_size = check_int(out_size, "out_size", low=1)
        width = check_int(width, "width", low=1)
        depth = check_int(depth, "depth", low=0)
        self.mlp = eqx.nn.MLP(self.in_size, out_size, width, depth, activation=jax.nn.gelu, key=key)

    @property
    def out_size(self) -> int:
        """The embedding dimension."""
        return self.mlp.out_size

    def __call__(self, x: jax.Array) -> jax.Array:
        """The unit embedding of one input ``x`` of shape ``(in_size,)``."""
        if x.shape != (self.in_size,):
            raise ValueError(
                f"the network expects one input of shape ({self.in_size},), got {x.shape}; "
                "vmap over a batch."
            )
        z = self.mlp(x)
        return z / jnp.maximum(jnp.linalg.norm(z), 1e-12)
