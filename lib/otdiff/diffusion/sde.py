"""The variance-preserving (VP) diffusion and its noise schedules.

The forward SDE of :cite:`song2021scorebased` (the continuous limit of DDPM :cite:`ho2020denoising`)

.. math::

    dX_t = -\\tfrac12\\beta(t)\\,X_t\\,dt + \\sqrt{\\beta(t)}\\,dW_t,\\qquad t\\in[0, 1],

has Gaussian marginals given :math:`X_0 = x_0`:

.. math::

    X_t \\mid x_0 \\sim \\mathcal N\\big(\\alpha_t x_0,\\ \\sigma_t^2 I\\big),\\qquad
    \\alpha_t = \\exp\\Big(-\\tfrac12\\int_0^t\\beta(s)\\,ds\\Big),\\qquad
    \\sigma_t^2 = 1 - \\alpha_t^2 .

Two schedules: the **linear** one, :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max} -
\\beta_{\\min})` (default :math:`\\beta_{\\min} = 0.1`, :math:`\\beta_{\\max} = 20`), and the
**cosine** one of Nichol and Dhariwal, :math:`\\alpha_t^2 = \\cos^2\\!\\big(\\tfrac\\pi2
\\tfrac{ct + s}{1 + s}\\big) / \\cos^2\\!\\big(\\tfrac\\pi2\\tfrac{s}{1+s}\\big)`, where ``c``
(slightly below one) keeps :math:`\\beta(1)` finite. The schedule's numbers are dynamic pytree
leaves (a slider over them never recompiles); its kind is static.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_in_range, check_positive, is_concrete

__all__ = ["VPSDE", "vp_linear", "vp_cosine", "SCHEDULES", "make_sde", "check_times"]

SCHEDULES = ("linear", "cosine")


def check_times(t, name: str = "t", *, low: float = 0.0, high: float = 1.0):
    """Diffusion times must lie in ``[low, high]`` (skipped under a transformation)."""
    if is_concrete(t):
        import numpy as np

        arr = np.asarray(t, dtype=float)
        if not np.all(np.isfinite(arr)) or np.any(arr < low) or np.any(arr > high):
            bad = arr[~(np.isfinite(arr) & (arr >= low) & (arr <= high))].ravel()[:3]
            raise ValueError(f"{name} must lie in [{low:g}, {high:g}], got {bad.tolist()}.")
    return t


class VPSDE(eqx.Module):
    """A variance-preserving SDE on ``[0, 1]``: the schedule and its closed-form marginals.

    Build one with :func:`vp_linear` or :func:`vp_cosine` (they check their arguments).

    Attributes:
        kind: ``"linear"`` or ``"cosine"`` (static).
        beta_min, beta_max: the linear schedule's end points (used when ``kind == "linear"``).
        cosine_s, cosine_c: the cosine schedule's offset and time scale.
    """

    kind: str = eqx.field(static=True)
    beta_min: jax.Array
    beta_max: jax.Array
    cosine_s: jax.Array
    cosine_c: jax.Array

    # -- the schedule ---------------------------------------------------------------------

    def _cos_arg(self, t):
        return 0.5 * jnp.pi * (self.cosine_c * t + self.cosine_s) / (1.0 + self.cosine_s)

    def integrated_beta(self, t: jax.Array) -> jax.Array:
        """:math:`B(t) = \\int_0^t \\beta(s)\\,ds`, so that :math:`\\alpha_t = e^{-B(t)/2}`."""
        t = jnp.asarray(t)
        if self.kind == "linear":
            return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        c0 = jnp.cos(self._cos_arg(0.0))
        return -2.0 * (jnp.log(jnp.cos(self._cos_arg(t))) - jnp.log(c0))

    def beta(self, t: jax.Array) -> jax.Array:
        """The noise rate :math:`\\beta(t) = B'(t)`."""
        t = jnp.asarray(t)
        if self.kind == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        scale = jnp.pi * self.cosine_c / (1.0 + self.cosine_s)
        return scale * jnp.tan(self._cos_arg(t))

    def log_alpha(self, t: jax.Array) -> jax.Array:
        """:math:`\\log\\alpha_t = -B(t)/2`."""
        return -0.5 * self.integrated_beta(t)

    def alpha(self, t: jax.Array) -> jax.Array:
        """The signal scale :math:`\\alpha_t`."""
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: jax.Array) -> jax.Array:
        """The noise scale :math:`\\sigma_t = \\sqrt{1 - \\alpha_t^2}` (computed stably)."""
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def snr(self, t: jax.Array) -> jax.Array:
        """The signal-to-noise ratio :math:`\\alpha_t^2/\\sigma_t^2`."""
        return 1.0 / jnp.expm1(self.integrated_beta(t))

    # -- the forward process --------------------------------------------------------------

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Forward drift :math:`f(x, t) = -\\tfrac12\\beta(t)x`."""
        return -0.5 * self.beta(t) * x

    def diffusion(self, t: jax.Array) -> jax.Array:
        """Forward diffusion coefficient :math:`g(t) = \\sqrt{\\beta(t)}`."""
        return jnp.sqrt(self.beta(t))

    def marginal(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean and standard deviation of :math:`X_t \\mid X_0 = x_0`: ``(alpha_t x0, sigma_t)``."""
        return self.alpha(t) * x0, self.sigma(t)

    def sample_marginal(self, key: jax.Array, x0: jax.Array, t: jax.Array):
        """Draw :math:`x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon`; returns ``(x_t, eps)``.

        ``t`` is a scalar or broadcasts against ``x0``'s leading axes (one time per point).
        """
        eps = jax.random.normal(key, jnp.shape(x0), jnp.result_type(x0))
        t = jnp.asarray(t)
        t = t.reshape(t.shape + (1,) * (jnp.ndim(x0) - t.ndim))
        return self.alpha(t) * x0 + self.sigma(t) * eps, eps

    def transition(self, x_s: jax.Array, s: jax.Array, t: jax.Array):
        """Exact forward kernel :math:`X_t \\mid X_s = x_s` for ``s <= t``: ``(mean, std)``.

        .. math:: X_t \\mid x_s \\sim \\mathcal N\\big(\\tfrac{\\alpha_t}{\\alpha_s}x_s,\\
            (1 - \\alpha_t^2/\\alpha_s^2)\\,I\\big).
        """
        log_ratio = self.log_alpha(t) - self.log_alpha(s)
        return jnp.exp(log_ratio) * x_s, jnp.sqrt(-jnp.expm1(2.0 * log_ratio))

    def prior_sample(self, key: jax.Array, shape) -> jax.Array:
        """Samples of the reference :math:`\\mathcal N(0, I)` the reverse process starts from."""
        return jax.random.normal(key, shape)

    def prior_log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density of :math:`\\mathcal N(0, I)` over the last axis."""
        d = x.shape[-1]
        return -0.5 * jnp.sum(x**2, axis=-1) - 0.5 * d * math.log(2 * math.pi)


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0) -> VPSDE:
    """The linear VP schedule :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max}-\\beta_{\\min})`.

    Raises:
        ValueError: unless ``0 < beta_min < beta_max``.
    """
    check_positive(beta_min, "beta_min")
    check_positive(beta_max, "beta_max")
    if is_concrete((beta_min, beta_max)) and not float(beta_min) < float(beta_max):
        raise ValueError(
            f"beta_min must be smaller than beta_max, got beta_min={beta_min!r} >= "
            f"beta_max={beta_max!r}."
        )
    f = jnp.result_type(float)
    return VPSDE(
        "linear",
        jnp.asarray(beta_min, f),
        jnp.asarray(beta_max, f),
        jnp.asarray(0.008, f),
        jnp.asarray(1.0, f),
    )


def vp_cosine(s: float = 0.008, c: float = 0.9946) -> VPSDE:
    """The cosine schedule of Nichol and Dhariwal on ``[0, 1]``.

    ``c`` < 1 stops the schedule short of :math:`\\alpha = 0`: with the defaults
    :math:`\\alpha_1^2 \\approx 7\\times 10^{-5}` and :math:`\\beta(1) \\approx 3.6\\times 10^{2}`.

    Raises:
        ValueError: unless ``s > 0`` and ``0 < c < 1``.
    """
    check_positive(s, "s")
    check_in_range(c, "c", 0.0, 1.0, low_open=True, high_open=True)
    f = jnp.result_type(float)
    return VPSDE(
        "cosine",
        jnp.asarray(0.1, f),
        jnp.asarray(20.0, f),
        jnp.asarray(s, f),
        jnp.asarray(c, f),
    )


def make_sde(kind: str = "linear", **kwargs) -> VPSDE:
    """A VP SDE by name (``"linear"`` or ``"cosine"``), for widgets that choose the schedule."""
    if kind == "linear":
        return vp_linear(**kwargs)
    if kind == "cosine":
        return vp_cosine(**kwargs)
    raise ValueError(f"kind must be one of {SCHEDULES}, got {kind!r}.")
