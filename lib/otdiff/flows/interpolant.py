"""Flow matching with the rectified-flow interpolant: conventions, networks, times and the loss.

**Convention** (that of :cite:`kim2025simplereflow`, used everywhere in :mod:`otdiff.flows`):
:math:`x_0 \\sim P_0` is **data**, :math:`x_1 \\sim P_1 = \\mathcal N(0, I)` is **noise**, and

.. math::

    x_t = (1 - t)\\,x_0 + t\\,x_1,\\qquad t \\in [0, 1],

so sampling integrates the ODE :math:`\\dot x_t = v(x_t, t)` from :math:`t = 1` down to
:math:`t = 0`. Two parameterisations of the same field and the map between them:

.. math::

    v(x, t) = \\mathbb E[X_1 - X_0 \\mid X_t = x],\\qquad
    D(x, t) = \\mathbb E[X_0 \\mid X_t = x],\\qquad
    v = \\frac{x - D}{t},\\quad D = x - t\\,v .

**Training** (flow matching :cite:`lipman2023flow`, rectified flow :cite:`liu2023flow`) regresses
the velocity on the chord of a coupling :math:`Q_{01}` of :math:`P_0` and :math:`P_1`, in the
generalised form of :cite:`kim2025simplereflow` (Eq. 13):

.. math::

    \\mathcal L(\\theta) = \\mathbb E_{t\\sim\\mathbb T}\\,\\mathbb E_{(x_0, x_1)\\sim Q_{01}}\\;
    w\\,\\big\\|\\phi\\big(v_\\theta(x_t, t) - (x_1 - x_0)\\big)\\big\\|^2 .

The independent coupling :math:`P_0\\otimes P_1` gives 1-rectified flow; the coupling of a trained
flow's ODE gives ReFlow (:mod:`otdiff.flows.reflow`). :class:`FlowLoss` holds Simple ReFlow's
switches, each off by default: the loss normalisation :math:`w = 1/(\\mathrm{sg}(\\ell) + c)`
(its gradient is :math:`\\nabla\\log(\\ell + c)`), the time distribution :math:`\\mathbb T`
(uniform, :math:`p(t) \\propto 10^t`, or the U-shaped :math:`p(t)\\propto\\cosh(a(t - 1/2))` in the
spirit of :cite:`lee2024improving`), and a high-pass-filter term :math:`\\phi^\\top\\phi = I +
\\lambda H^\\top H` with the linear filter :func:`high_pass` (linear and invertible, so the optimum
stays the conditional mean; a non-linear :math:`\\phi` such as LPIPS would move it).

Taught in: book/diffusion/05_simple_reflow.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff import nn
from otdiff._checks import (
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_point_batch,
    check_points,
    check_positive,
    check_same_shape,
    check_times,
)

__all__ = [
    "PARAMETERISATIONS",
    "TIME_DISTRIBUTIONS",
    "interpolate",
    "velocity_from_denoiser",
    "denoiser_from_velocity",
    "FlowNet",
    "sample_times",
    "time_density",
    "high_pass",
    "Pairs",
    "FlowLoss",
]

#: What a :class:`FlowNet`'s network outputs: the velocity :math:`v` or the denoiser :math:`D`.
PARAMETERISATIONS = ("velocity", "denoiser")
#: The training time distributions :math:`\mathbb T` (:func:`sample_times`).
TIME_DISTRIBUTIONS = ("uniform", "exp10", "cosh")

#: The smallest time at which a denoiser network's velocity :math:`(x - D)/t` is evaluated.
_T_FLOOR = 1e-4


def _expand(t, x):
    t = jnp.asarray(t)
    return t.reshape(t.shape + (1,) * (jnp.ndim(x) - t.ndim))


def _check_map(
    x: jax.Array, other: jax.Array, t: jax.Array, names: tuple[str, str], *, t_positive=False
):
    """The arguments of a pure map on points: ``x`` and ``other`` of one shape ``(..., d)``, and
    times in ``[0, 1]`` (``(0, 1]`` with ``t_positive``), a scalar or one per leading index."""
    x, other = check_point_batch(x, names[0]), check_point_batch(other, names[1])
    check_same_shape(x, other, names)
    check_times(t, "t", low_open=t_positive)
    t = jnp.asarray(t)
    if t.ndim >= x.ndim or t.shape != x.shape[: t.ndim]:
        raise ValueError(
            f"t must be a scalar or one time per point, of shape {x.shape[:-1]} (or a leading "
            f"part of it), got shape {t.shape}."
        )
    return x, other, t


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
    """:math:`x_t = (1 - t)x_0 + t x_1` (``t`` a scalar or one time per leading index).

    Args:
        x0, x1: data and noise points of one shape ``(..., d)``.
        t: times in :math:`[0, 1]`, a scalar or of a leading part of the shape ``x0.shape[:-1]``.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    x0, x1, t = _check_map(x0, x1, t, ("x0", "x1"))
    t = _expand(t, x0)
    return (1.0 - t) * x0 + t * x1


def velocity_from_denoiser(x: jax.Array, t: jax.Array, denoised: jax.Array) -> jax.Array:
    """:math:`v = (x - D)/t` (``t > 0``).

    Args:
        x, denoised: points and their denoised values, of one shape ``(..., d)``.
        t: times in :math:`(0, 1]`, a scalar or one per leading index.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    x, denoised, t = _check_map(x, denoised, t, ("x", "denoised"), t_positive=True)
    return (x - denoised) / _expand(t, x)


def denoiser_from_velocity(x: jax.Array, t: jax.Array, velocity: jax.Array) -> jax.Array:
    """:math:`D = x - t\\,v`.

    Args:
        x, velocity: points and their velocities, of one shape ``(..., d)``.
        t: times in :math:`[0, 1]`, a scalar or one per leading index.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    x, velocity, t = _check_map(x, velocity, t, ("x", "velocity"))
    return x - _expand(t, x) * velocity


class FlowNet(eqx.Module):
    """A time-conditioned MLP (:class:`otdiff.nn.TimeMLP`) read as a velocity field.

    With ``parameterisation="velocity"`` the network's output is :math:`v_\\theta(x, t)`; with
    ``"denoiser"`` it is :math:`D_\\theta(x, t)` and :math:`v_\\theta = (x - D_\\theta)/\\max(t,
    10^{-4})` (the floor keeps :math:`t = 0` finite). Calling the module returns the velocity of
    one point ``x`` of shape ``(dim,)`` at a scalar time.

    Args:
        dim: the dimension of the points (static).
        key: a JAX random key.
        hidden: the hidden widths (static).
        embed_dim: the time embedding size (static).
        parameterisation: ``"velocity"`` or ``"denoiser"`` (static).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    net: nn.TimeMLP
    parameterisation: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        key: jax.Array,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 32,
        parameterisation: str = "velocity",
    ):
        dim = check_int(dim, "dim", low=1)
        check_choice(parameterisation, "parameterisation", PARAMETERISATIONS)
        self.net = nn.TimeMLP(dim, dim, hidden=hidden, embed_dim=embed_dim, key=key)
        self.parameterisation = parameterisation

    def __call__(
        self, x: jax.Array, t: jax.Array, *, dropout: float = 0.0, key: jax.Array | None = None
    ) -> jax.Array:
        """The velocity :math:`v_\\theta(x, t)`.

        With a ``key`` and ``dropout`` :math:`p > 0` (training only: :class:`FlowLoss` passes
        them), each hidden activation is zeroed with probability :math:`p` and the rest scaled by
        :math:`1/(1 - p)` (inverted dropout, so the expected activation is unchanged); without a
        key the network is deterministic (sampling).
        """
        out = (
            self.net(x, t)
            if key is None or dropout == 0
            else _dropout_mlp(self.net, x, t, dropout, key)
        )
        if self.parameterisation == "velocity":
            return out
        return (x - out) / jnp.maximum(t, _T_FLOOR)

    def denoiser(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The denoiser :math:`D_\\theta(x, t) = x - t\\,v_\\theta(x, t)`."""
        if self.parameterisation == "denoiser":
            return self.net(x, t)
        return x - t * self.net(x, t)


def _dropout_mlp(net: nn.TimeMLP, x: jax.Array, t: jax.Array, rate, key: jax.Array) -> jax.Array:
    # nn.TimeMLP's forward pass with inverted dropout on each hidden layer's activation
    emb = jax.nn.silu(net.embedding(t))
    h = x
    keys = jax.random.split(key, len(net.layers))
    for layer, proj, k in zip(net.layers, net.time_projections, keys, strict=True):
        h = jax.nn.silu(layer(h) + proj(emb))
        keep = jax.random.bernoulli(k, 1.0 - rate, h.shape)
        h = jnp.where(keep, h / (1.0 - rate), 0.0)
    return net.output(h)


def sample_times(
    key: jax.Array, shape, distribution: str = "uniform", *, cosh_scale: float = 4.0
) -> jax.Array:
    """Training times drawn from :math:`\\mathbb T` by inverting its CDF at :math:`u\\sim U(0,1)`.

    * ``"uniform"``: :math:`t = u`;
    * ``"exp10"``: :math:`p(t) = \\frac{\\ln 10}{9}10^t`, CDF :math:`(10^t - 1)/9`, so
      :math:`t = \\log_{10}(1 + 9u)` :cite:`kim2025simplereflow` (more weight near the noise);
    * ``"cosh"``: :math:`p(t) \\propto \\cosh(a(t - \\tfrac12))` (U-shaped: weight at both ends,
      :cite:`lee2024improving`), :math:`t = \\tfrac12 + \\operatorname{asinh}((2u - 1)\\sinh(a/2))/a`.

    Args:
        key: a JAX random key.
        shape: the shape of the output (static).
        distribution: one of :data:`TIME_DISTRIBUTIONS` (static).
        cosh_scale: :math:`a > 0` of ``"cosh"`` (dynamic).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    check_choice(distribution, "distribution", TIME_DISTRIBUTIONS)
    check_positive(cosh_scale, "cosh_scale")
    u = jax.random.uniform(key, shape)
    if distribution == "uniform":
        return u
    if distribution == "exp10":
        return jnp.log10(1.0 + 9.0 * u)
    a = jnp.asarray(cosh_scale, u.dtype)
    return 0.5 + jnp.arcsinh((2.0 * u - 1.0) * jnp.sinh(0.5 * a)) / a


def time_density(t: jax.Array, distribution: str = "uniform", *, cosh_scale: float = 4.0):
    """The density :math:`p(t)` on :math:`[0, 1]` of :func:`sample_times`' distribution.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    check_choice(distribution, "distribution", TIME_DISTRIBUTIONS)
    check_positive(cosh_scale, "cosh_scale")
    check_times(t, "t")
    t = jnp.asarray(t, jnp.float32)
    if distribution == "uniform":
        return jnp.ones_like(t)
    if distribution == "exp10":
        return math.log(10.0) / 9.0 * 10.0**t
    a = jnp.asarray(cosh_scale, t.dtype)
    return a * jnp.cosh(a * (t - 0.5)) / (2.0 * jnp.sinh(0.5 * a))


def high_pass(x: jax.Array, side: int) -> jax.Array:
    """The linear high-pass filter :math:`Hx = x - Bx` of flat ``side x side`` images.

    :math:`B` is the separable binomial blur :math:`\\tfrac14(1, 2, 1)` along each axis with
    edge-replicating borders, so :math:`H` removes the smooth part of an image and keeps its
    edges. Being linear, :math:`\\phi^\\top\\phi = I + \\lambda H^\\top H` is symmetric positive
    definite for every :math:`\\lambda \\ge 0`: :math:`\\phi` is invertible and the minimiser of
    :math:`\\mathbb E\\|\\phi(v_\\theta - (x_1 - x_0))\\|^2` is still
    :math:`\\mathbb E[X_1 - X_0 \\mid x_t]`.

    Args:
        x: images ``(..., side * side)``.
        side: the image side (static).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    side = check_int(side, "side", low=2)
    x = check_point_batch(x, "x")
    if x.shape[-1] != side * side:
        raise ValueError(
            f"x's last axis must have side * side = {side * side} entries, got {x.shape}."
        )
    img = x.reshape(x.shape[:-1] + (side, side))

    def blur(a, axis):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (1, 1)
        p = jnp.pad(a, pad, mode="edge")
        lo = jax.lax.slice_in_dim(p, 0, side, axis=axis)
        mid = jax.lax.slice_in_dim(p, 1, side + 1, axis=axis)
        hi = jax.lax.slice_in_dim(p, 2, side + 2, axis=axis)
        return 0.25 * lo + 0.5 * mid + 0.25 * hi

    smooth = blur(blur(img, img.ndim - 2), img.ndim - 1)
    return (img - smooth).reshape(x.shape)


class Pairs(eqx.Module):
    """A coupling given by samples: ``x0`` (data side) and ``x1`` (noise side), row by row.

    A pytree of two arrays ``(n, d)``; :func:`otdiff.train.minibatch` draws rows of both.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    x0: jax.Array
    x1: jax.Array

    def __init__(self, x0: jax.Array, x1: jax.Array):
        # n = 0 is a coupling with no rows (cached_pairs' forward pairs with with_forward=False)
        self.x0 = check_points(x0, "x0", min_points=0)
        self.x1 = check_points(x1, "x1", min_points=0)
        check_same_shape(self.x0, self.x1, ("x0", "x1"))


class FlowLoss(eqx.Module):
    """The (generalised) flow-matching loss ``loss(model, key, batch)`` for :func:`otdiff.train.fit`.

    For a mini-batch :math:`(x_0^i, x_1^i)` and times :math:`t_i \\sim \\mathbb T`,

    .. math::

        e_i = v_\\theta(x_{t_i}, t_i) - (x_1^i - x_0^i),\\qquad
        \\ell_i = \\tfrac1d\\big(\\|e_i\\|^2 + \\lambda\\|He_i\\|^2\\big),\\qquad
        \\mathcal L = \\frac1n\\sum_i w_i\\,\\ell_i,

    with :math:`w_i = 1` or, with ``normalise``, :math:`w_i = 1/(\\mathrm{sg}(\\ell_i) + c)`
    :cite:`kim2025simplereflow` (Sec. 4.1). A ``batch`` that is an array is a batch of data
    :math:`x_0` and the noise :math:`x_1` is drawn here (the independent coupling: 1-rectified
    flow); a :class:`Pairs` batch is a given coupling (ReFlow).

    Attributes:
        time_distribution: one of :data:`TIME_DISTRIBUTIONS` (static; default uniform).
        normalise: use the normalised weight (static; default off).
        norm_floor: :math:`c > 0`, keeps the weight finite as :math:`\\ell \\to 0`.
        hpf_weight: :math:`\\lambda \\ge 0` of the high-pass term (0: off).
        image_side: the side of square images for :func:`high_pass` (static; required when
            ``hpf_weight > 0``).
        cosh_scale: :math:`a` of the ``"cosh"`` time distribution.
        dropout: the dropout rate :math:`p \\in [0, 1)` of the network during training
            (static; default 0: off). Each sample's network call gets its own key, folded from
            the loss's key, so dropout is active only in training; sampling calls the network
            without a key.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    time_distribution: str = eqx.field(default="uniform", static=True)
    normalise: bool = eqx.field(default=False, static=True)
    norm_floor: float = eqx.field(default=1e-3, static=True)
    hpf_weight: float = eqx.field(default=0.0, static=True)
    image_side: int | None = eqx.field(default=None, static=True)
    cosh_scale: float = eqx.field(default=4.0, static=True)
    dropout: float = eqx.field(default=0.0, static=True)

    def __check_init__(self):
        check_choice(self.time_distribution, "time_distribution", TIME_DISTRIBUTIONS)
        if not isinstance(self.normalise, bool):
            raise TypeError(f"normalise must be a bool, got {self.normalise!r}.")
        check_positive(self.norm_floor, "norm_floor")
        check_nonnegative(self.hpf_weight, "hpf_weight")
        check_positive(self.cosh_scale, "cosh_scale")
        check_in_range(self.dropout, "dropout", 0.0, 1.0, high_open=True)
        if self.hpf_weight > 0:
            if self.image_side is None:
                raise ValueError("image_side is required when hpf_weight > 0.")
            check_int(self.image_side, "image_side", low=2)

    def per_sample(self, model, key: jax.Array, batch) -> jax.Array:
        """The per-sample losses :math:`\\ell_i` (before the weights), shape ``(n,)``."""
        k_t, k_noise = jax.random.split(key)
        if isinstance(batch, Pairs):
            x0, x1 = batch.x0, batch.x1
        else:
            x0 = batch
            x1 = jax.random.normal(k_noise, x0.shape, x0.dtype)
        t = sample_times(k_t, x0.shape[:1], self.time_distribution, cosh_scale=self.cosh_scale)
        xt = interpolate(x0, x1, t)
        if self.dropout > 0:
            keys = jax.random.split(jax.random.fold_in(key, 2), x0.shape[0])
            call = lambda x, t, k: model(x, t, dropout=self.dropout, key=k)  # noqa: E731
            pred = jax.vmap(call)(xt, t, keys)
        else:
            pred = jax.vmap(model)(xt, t)
        err = pred - (x1 - x0)
        loss = jnp.mean(err**2, axis=-1)
        if self.hpf_weight > 0:
            loss = loss + self.hpf_weight * jnp.mean(high_pass(err, self.image_side) ** 2, axis=-1)
        return loss

    def __call__(self, model, key: jax.Array, batch) -> jax.Array:
        """The mini-batch loss :math:`\\mathcal L`."""
        loss = self.per_sample(model, key, batch)
        if self.normalise:
            loss = loss / (jax.lax.stop_gradient(loss) + self.norm_floor)
        return jnp.mean(loss)
