"""Noise-prediction networks: a time-conditioned MLP and a small convolutional network for 8x8 images.

Both are Equinox modules that predict the noise of one point,
:math:`\\hat\\varepsilon_\\theta(x, t)` with ``x`` of shape ``(d,)`` and a scalar time
:math:`t\\in[0, 1]` (the convention of :func:`otdiff.diffusion.dsm_loss`; callers ``vmap`` over a
batch). The time enters through sinusoidal features :cite:`ho2020denoising`

.. math::

    \\phi(t) = \\big(\\sin(\\omega_k s t),\\ \\cos(\\omega_k s t)\\big)_{k=1}^{m/2},\\qquad
    \\omega_k = \\Omega^{-(k-1)/(m/2-1)},

(frequencies geometric from 1 down to :math:`1/\\Omega`, time scale :math:`s = 1000` as for DDPM's
integer steps), followed by a small learned MLP. :class:`ScoreMLP` adds a learned projection of
the embedding to every hidden layer; :class:`ScoreConvNet` modulates every residual block's
channels with a learned scale and shift of it (FiLM).

An optional input scaling (``data_std``) divides :math:`x_t` by its marginal standard deviation
:math:`\\sqrt{\\alpha_t^2 v + \\sigma_t^2}` for data of per-coordinate variance :math:`v` under the
given VP schedule, so the network sees inputs of unit scale at every time.

The trainable parameters are the floating-point arrays of a module (``eqx.is_inexact_array``);
the frequencies and the schedule used by the input scaling are fixed Python numbers.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_int, check_positive

__all__ = ["TimeEmbedding", "ScoreMLP", "ScoreConvNet", "InputScaling"]


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


class InputScaling(eqx.Module):
    """:math:`c_{\\rm in}(t) = 1/\\sqrt{\\alpha_t^2 v + \\sigma_t^2}` for a linear VP schedule.

    The schedule's numbers are static Python floats (they are not trained).

    Args:
        data_std: the per-coordinate standard deviation :math:`\\sqrt v` of the data (> 0).
        beta_min, beta_max: the linear schedule :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max}-\\beta_{\\min})`.
    """

    data_std: float = eqx.field(static=True)
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)

    def __init__(self, data_std: float, beta_min: float = 0.1, beta_max: float = 20.0):
        self.data_std = float(check_positive(data_std, "data_std"))
        self.beta_min = float(check_positive(beta_min, "beta_min"))
        self.beta_max = float(check_positive(beta_max, "beta_max"))

    def __call__(self, t: jax.Array) -> jax.Array:
        """The scale at time ``t``."""
        b = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        alpha2 = jnp.exp(-b)
        return jax.lax.rsqrt(alpha2 * self.data_std**2 + (1.0 - alpha2))


def _scaling(data_std, sde) -> InputScaling | None:
    if data_std is None:
        return None
    if sde is None:
        return InputScaling(data_std)
    if getattr(sde, "kind", None) != "linear":
        raise ValueError("data_std input scaling supports the linear VP schedule only (sde.kind).")
    return InputScaling(data_std, float(sde.beta_min), float(sde.beta_max))


def time_mlp_layers(dim: int, hidden: Sequence[int], embed_dim: int, out_size, *, key: jax.Array):
    """The layers of a time-conditioned MLP: ``(embedding, layers, time_projections, output)``.

    Shared by :class:`ScoreMLP` and :class:`otdiff.energy.EnergyMLP` (``out_size="scalar"``).
    Each hidden layer computes :math:`h \\leftarrow \\mathrm{SiLU}(W h + b + U\\phi(t))` (see
    :func:`time_mlp_apply`).
    """
    hidden = tuple(check_int(h, "hidden", low=1) for h in hidden)
    if not hidden:
        raise ValueError("hidden must list at least one layer width.")
    keys = jax.random.split(key, 2 * len(hidden) + 2)
    embedding = TimeEmbedding(embed_dim, key=keys[0])
    widths = (dim, *hidden)
    layers = tuple(
        eqx.nn.Linear(widths[i], widths[i + 1], key=keys[1 + i]) for i in range(len(hidden))
    )
    time_projections = tuple(
        eqx.nn.Linear(embed_dim, h, use_bias=False, key=keys[1 + len(hidden) + i])
        for i, h in enumerate(hidden)
    )
    output = eqx.nn.Linear(hidden[-1], out_size, key=keys[-1])
    return embedding, layers, time_projections, output


def time_mlp_apply(module, x: jax.Array, t: jax.Array) -> jax.Array:
    """The forward pass of a module holding :func:`time_mlp_layers`' layers, at one point."""
    emb = jax.nn.silu(module.embedding(t))
    h = x
    for layer, proj in zip(module.layers, module.time_projections, strict=True):
        h = jax.nn.silu(layer(h) + proj(emb))
    return module.output(h)


class ScoreMLP(eqx.Module):
    """An MLP noise predictor :math:`\\hat\\varepsilon_\\theta(x, t)` for points of dimension ``dim``.

    Each hidden layer computes :math:`h \\leftarrow \\mathrm{SiLU}(W h + b + U\\phi(t))` with the
    time embedding :math:`\\phi(t)` projected by its own :math:`U`; a linear layer maps the last
    hidden layer back to ``dim``.

    Args:
        dim: the data dimension ``d`` (static).
        hidden: the widths of the hidden layers (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: if given, the per-coordinate standard deviation of the data: the input is scaled
            by :class:`InputScaling` (under ``sde``'s linear schedule, default ``vp_linear()``).
        sde: the VP SDE the scaling follows (only with ``data_std``).
    """

    dim: int = eqx.field(static=True)
    embedding: TimeEmbedding
    layers: tuple[eqx.nn.Linear, ...]
    time_projections: tuple[eqx.nn.Linear, ...]
    output: eqx.nn.Linear
    scaling: InputScaling | None

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 64,
        key: jax.Array,
        data_std: float | None = None,
        sde=None,
    ):
        self.dim = check_int(dim, "dim", low=1)
        self.embedding, self.layers, self.time_projections, self.output = time_mlp_layers(
            dim, hidden, embed_dim, dim, key=key
        )
        self.scaling = _scaling(data_std, sde)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The predicted noise at one point ``x`` of shape ``(dim,)`` and a scalar time ``t``."""
        if x.shape != (self.dim,):
            raise ValueError(
                f"ScoreMLP expects one point of shape ({self.dim},), got {x.shape}; vmap over a batch."
            )
        if self.scaling is not None:
            x = x * self.scaling(t)
        return time_mlp_apply(self, x, t)


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


class ScoreConvNet(eqx.Module):
    """A small residual convolutional noise predictor for ``side x side`` grey images (8x8 digits).

    The flat input (``side**2``,) is reshaped to one channel, lifted to ``channels`` by a 3x3
    convolution, passed through ``n_blocks`` residual blocks (GroupNorm, SiLU, 3x3 convolution,
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
        data_std: optional input scaling, as for :class:`ScoreMLP`.
        sde: the VP SDE the scaling follows (only with ``data_std``).
    """

    side: int = eqx.field(static=True)
    embedding: TimeEmbedding
    lift: eqx.nn.Conv2d
    blocks: tuple[_ResBlock, ...]
    norm_out: eqx.nn.GroupNorm | None
    project: eqx.nn.Conv2d
    scaling: InputScaling | None

    def __init__(
        self,
        *,
        side: int = 8,
        channels: int = 32,
        n_blocks: int = 2,
        embed_dim: int = 64,
        groups: int = 8,
        key: jax.Array,
        data_std: float | None = None,
        sde=None,
    ):
        side = check_int(side, "side", low=1)
        channels = check_int(channels, "channels", low=1)
        n_blocks = check_int(n_blocks, "n_blocks", low=0)
        groups = check_int(groups, "groups", low=0)
        if groups and channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels}.")
        keys = jax.random.split(key, n_blocks + 3)
        self.side = side
        self.embedding = TimeEmbedding(embed_dim, key=keys[0])
        self.lift = eqx.nn.Conv2d(1, channels, 3, padding="SAME", key=keys[1])
        self.blocks = tuple(
            _ResBlock(channels, embed_dim, groups, key=keys[2 + i]) for i in range(n_blocks)
        )
        self.norm_out = eqx.nn.GroupNorm(groups, channels) if groups else None
        self.project = eqx.nn.Conv2d(channels, 1, 3, padding="SAME", key=keys[-1])
        self.scaling = _scaling(data_std, sde)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The predicted noise at one flat image ``x`` of shape ``(side**2,)`` and a scalar time."""
        n = self.side * self.side
        if x.shape != (n,):
            raise ValueError(
                f"ScoreConvNet expects one flat image of shape ({n},), got {x.shape}; vmap over a batch."
            )
        if self.scaling is not None:
            x = x * self.scaling(t)
        emb = jax.nn.silu(self.embedding(t))
        h = self.lift(x.reshape(1, self.side, self.side))
        for block in self.blocks:
            h = block(h, emb)
        h = h if self.norm_out is None else self.norm_out(h)
        return self.project(jax.nn.silu(h)).reshape(n)
