"""Forward noising processes: an abstract process and the two variance-preserving (VP) schedules.

A diffusion model reverses a **forward process** :math:`X_t`, :math:`t\\in[0, 1]`, that turns data
into a reference law. Everything the book's samplers, losses, likelihoods, networks and SMC
weights need from it is a method of one object, so no schedule formula and no reverse drift is
written twice. Three levels, in Equinox's abstract-or-final style (abstract classes define the
interface and what follows from it; only final classes hold fields):

* :class:`AbstractProcess`, any process :math:`dX = f(X, t)\\,dt + g(t)\\,dW` on a space where
  the sampler can step (a Euclidean space, or a manifold with its own step kernel). A subclass
  provides ``drift(x, t)``, ``diffusion_squared(t)`` (:math:`g^2`, the form every formula uses),
  ``prior_sample(key, shape)`` and ``prior_log_prob(x)``; it inherits the time reversal of
  :cite:`song2021scorebased`,

  .. math::

      dY = \\big[-f(Y, t) + g(t)^2\\,\\nabla\\log p_t(Y)\\big]\\,ds + g(t)\\,d\\bar W,
      \\qquad \\dot x = f(x, t) - \\tfrac12 g(t)^2\\nabla\\log p_t(x)\\ \\text{(probability flow)},

  as :meth:`~AbstractProcess.reverse_drift` and :meth:`~AbstractProcess.ode_drift`. A Brownian
  motion on the sphere is such a process (no Gaussian marginals: its drift and scores are
  tangent vectors, its prior the uniform law, and it pairs with a geodesic step kernel).
* :class:`AbstractGaussianProcess`, a process with Gaussian conditional marginals
  :math:`X_t\\mid x_0 \\sim \\mathcal N(\\alpha_t x_0, \\sigma_t^2 I)` and reference
  :math:`\\mathcal N(0, I)`. A subclass also provides ``log_alpha(t)`` and ``sigma(t)``; it
  inherits :math:`\\alpha_t`, the marginals and their sampling, Tweedie's denoiser and the prior.
  The rectified-flow interpolant :math:`x_t = (1-t)x_0 + t x_1` (:math:`\\alpha_t = 1-t`,
  :math:`\\sigma_t = t`) is one.
* :class:`AbstractVP`, the variance-preserving processes :math:`\\sigma_t^2 = 1 - \\alpha_t^2`
  of :cite:`song2021scorebased` (the continuous limit of DDPM :cite:`ho2020denoising`),

  .. math::

      dX_t = -\\tfrac12\\beta(t)\\,X_t\\,dt + \\sqrt{\\beta(t)}\\,dW_t,\\qquad
      \\alpha_t = \\exp\\Big(-\\tfrac12\\int_0^t\\beta(s)\\,ds\\Big).

  A subclass provides ``beta(t)`` and ``log_alpha(t)``; it inherits :math:`\\sigma_t`, the SDE
  and the exact transition :math:`X_t\\mid X_s`. Two final classes: :class:`LinearVP`,
  :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max}-\\beta_{\\min})`, and :class:`CosineVP`,
  the cosine schedule of :cite:`nichol2021improved`.

A process is an Equinox module: its numbers are dynamic pytree leaves (a slider over them never
recompiles; ``jax.vmap`` over a batch of schedules works). Constructors check their invariants
(``__check_init__``). Functions of time accept a scalar or an array of times.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_choice, check_in_range, check_positive, is_concrete

__all__ = [
    "AbstractProcess",
    "AbstractGaussianProcess",
    "AbstractVP",
    "LinearVP",
    "CosineVP",
    "RectifiedFlow",
    "PROCESSES",
    "make_process",
]


def _float_array(value) -> jax.Array:
    return jnp.asarray(value, dtype=jnp.result_type(float))


def _standard_normal_log_prob(x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    return -0.5 * jnp.sum(x**2, axis=-1) - 0.5 * d * math.log(2 * math.pi)


class AbstractProcess(eqx.Module, strict=True):
    """A forward process :math:`dX = f(X, t)\\,dt + g(t)\\,dW` on :math:`t\\in[0, 1]`.

    A subclass must provide:

    * ``drift(x, t)``: the forward drift :math:`f(x, t)` (a tangent vector on a manifold);
    * ``diffusion_squared(t)``: the squared scalar diffusion coefficient :math:`g(t)^2`;
    * ``prior_sample(key, shape)``: draws of the reference law at :math:`t = 1`, where the
      reverse process starts (``shape`` is ``(n, d)``);
    * ``prior_log_prob(x)``: its log-density over the last axis.

    It inherits the drifts of the time reversal and of the probability-flow ODE, written once
    here for every sampler.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    @abc.abstractmethod
    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The forward drift :math:`f(x, t)`."""

    @abc.abstractmethod
    def diffusion_squared(self, t: jax.Array) -> jax.Array:
        """The squared forward diffusion coefficient :math:`g(t)^2`."""

    @abc.abstractmethod
    def prior_sample(self, key: jax.Array, shape) -> jax.Array:
        """Samples of the reference law the reverse process starts from."""

    @abc.abstractmethod
    def prior_log_prob(self, x: jax.Array) -> jax.Array:
        """The log-density of the reference law over the last axis."""

    def diffusion(self, t: jax.Array) -> jax.Array:
        """The forward diffusion coefficient :math:`g(t) = \\sqrt{g(t)^2}`."""
        return jnp.sqrt(self.diffusion_squared(t))

    def reverse_drift(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """:math:`b(x, t) = f(x, t) - g(t)^2 s`: the drift of the reverse SDE in forward time.

        The reverse SDE steps backwards: from :math:`t` to :math:`t' < t`,
        :math:`x' = x - b(x, t)(t - t') + g(t)\\sqrt{t - t'}\\,z` (Euler–Maruyama).

        Args:
            x: points ``(..., d)``.
            t: the time (a scalar).
            score: :math:`\\nabla\\log p_t(x)`, the shape of ``x``.
        """
        return self.drift(x, t) - self.diffusion_squared(t) * score

    def ode_drift(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """:math:`v(x, t) = f(x, t) - \\tfrac12 g(t)^2 s`: the probability-flow velocity."""
        return self.drift(x, t) - 0.5 * self.diffusion_squared(t) * score


class AbstractGaussianProcess(AbstractProcess, strict=True):
    """A process with Gaussian conditional marginals :math:`\\mathcal N(\\alpha_t x_0, \\sigma_t^2 I)`.

    A subclass must provide ``log_alpha(t)`` and ``sigma(t)`` (computed without cancellation:
    both are tested against float64 down to :math:`t = 10^{-5}`), and, for the SDE view,
    ``drift`` and ``diffusion_squared``. The reference law is :math:`\\mathcal N(0, I)`.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    @abc.abstractmethod
    def log_alpha(self, t: jax.Array) -> jax.Array:
        """:math:`\\log\\alpha_t`."""

    @abc.abstractmethod
    def sigma(self, t: jax.Array) -> jax.Array:
        """The noise scale :math:`\\sigma_t`."""

    def alpha(self, t: jax.Array) -> jax.Array:
        """The signal scale :math:`\\alpha_t`."""
        return jnp.exp(self.log_alpha(t))

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

    def denoise(self, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
        """Tweedie's formula :cite:`efron2011tweedie`, :math:`\\mathbb E[X_0\\mid X_t = x] = (x + \\sigma_t^2 s)/\\alpha_t`.

        Args:
            x: points at time ``t``.
            t: the time (broadcasts against ``x``'s leading axes).
            score: :math:`\\nabla\\log p_t(x)`, the shape of ``x``.
        """
        return (x + self.sigma(t) ** 2 * score) / self.alpha(t)

    def prior_sample(self, key: jax.Array, shape) -> jax.Array:
        """Samples of the reference :math:`\\mathcal N(0, I)`."""
        return jax.random.normal(key, shape)

    def prior_log_prob(self, x: jax.Array) -> jax.Array:
        """Log-density of :math:`\\mathcal N(0, I)` over the last axis."""
        return _standard_normal_log_prob(x)


class AbstractVP(AbstractGaussianProcess, strict=True):
    """A variance-preserving process: :math:`\\sigma_t^2 = 1 - \\alpha_t^2`, drift :math:`-\\tfrac12\\beta x`.

    A subclass must provide ``beta(t)`` and ``log_alpha(t)`` (accurate at small ``t``: every
    other quantity follows from :math:`\\log\\alpha_t` without cancellation).

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    @abc.abstractmethod
    def beta(self, t: jax.Array) -> jax.Array:
        """The noise rate :math:`\\beta(t) = -2\\,\\tfrac{d}{dt}\\log\\alpha_t`."""

    def sigma(self, t: jax.Array) -> jax.Array:
        """:math:`\\sigma_t = \\sqrt{1 - \\alpha_t^2} = \\sqrt{-\\operatorname{expm1}(2\\log\\alpha_t)}`."""
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def integrated_beta(self, t: jax.Array) -> jax.Array:
        """:math:`B(t) = \\int_0^t\\beta(s)\\,ds = -2\\log\\alpha_t`."""
        return -2.0 * self.log_alpha(t)

    def snr(self, t: jax.Array) -> jax.Array:
        """The signal-to-noise ratio :math:`\\alpha_t^2/\\sigma_t^2 = 1/\\operatorname{expm1}(B(t))`."""
        return 1.0 / jnp.expm1(self.integrated_beta(t))

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Forward drift :math:`f(x, t) = -\\tfrac12\\beta(t)x`."""
        return -0.5 * self.beta(t) * x

    def diffusion_squared(self, t: jax.Array) -> jax.Array:
        """The squared diffusion coefficient :math:`g(t)^2 = \\beta(t)`."""
        return self.beta(t)

    def transition(self, x_s: jax.Array, s: jax.Array, t: jax.Array):
        """Exact forward kernel :math:`X_t \\mid X_s = x_s` for ``s <= t``: ``(mean, std)``.

        .. math:: X_t \\mid x_s \\sim \\mathcal N\\big(\\tfrac{\\alpha_t}{\\alpha_s}x_s,\\
            (1 - \\alpha_t^2/\\alpha_s^2)\\,I\\big).
        """
        log_ratio = self.log_alpha(t) - self.log_alpha(s)
        return jnp.exp(log_ratio) * x_s, jnp.sqrt(-jnp.expm1(2.0 * log_ratio))


class LinearVP(AbstractVP, strict=True):
    """The linear schedule :math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max}-\\beta_{\\min})`.

    .. math:: \\log\\alpha_t = -\\tfrac12\\Big(\\beta_{\\min} t + \\tfrac12(\\beta_{\\max}-\\beta_{\\min})t^2\\Big)

    (a sum of non-negative terms: exact to float32 rounding at every ``t``).

    Args:
        beta_min: :math:`\\beta_{\\min} > 0` (default 0.1).
        beta_max: :math:`\\beta_{\\max} > \\beta_{\\min}` (default 20).

    Raises:
        ValueError: unless ``0 < beta_min < beta_max``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """

    beta_min: jax.Array = eqx.field(default=0.1, converter=_float_array)
    beta_max: jax.Array = eqx.field(default=20.0, converter=_float_array)

    def __check_init__(self):
        check_positive(self.beta_min, "beta_min")
        check_positive(self.beta_max, "beta_max")
        if is_concrete((self.beta_min, self.beta_max)) and not (
            float(self.beta_min) < float(self.beta_max)
        ):
            raise ValueError(
                f"beta_min must be smaller than beta_max, got beta_min={float(self.beta_min)!r} "
                f">= beta_max={float(self.beta_max)!r}."
            )

    def beta(self, t: jax.Array) -> jax.Array:
        """:math:`\\beta(t) = \\beta_{\\min} + t(\\beta_{\\max}-\\beta_{\\min})`."""
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def log_alpha(self, t: jax.Array) -> jax.Array:
        """:math:`\\log\\alpha_t = -\\tfrac12(\\beta_{\\min}t + \\tfrac12(\\beta_{\\max}-\\beta_{\\min})t^2)`."""
        t = jnp.asarray(t)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)


class CosineVP(AbstractVP, strict=True):
    """The cosine schedule of :cite:`nichol2021improved` on ``[0, 1]``.

    .. math::

        \\alpha_t = \\frac{\\cos\\phi_t}{\\cos\\phi_0},\\qquad
        \\phi_t = \\frac\\pi2\\,\\frac{ct + s}{1 + s},\\qquad
        \\beta(t) = \\frac{\\pi c}{1 + s}\\tan\\phi_t .

    ``c`` < 1 stops the schedule short of :math:`\\alpha = 0`: with the defaults
    :math:`\\alpha_1^2 \\approx 7\\times 10^{-5}` and :math:`\\beta(1) \\approx 3.6\\times 10^{2}`.

    **Precision.** Writing :math:`\\log\\alpha_t = \\log\\cos\\phi_t - \\log\\cos\\phi_0` cancels
    catastrophically at small :math:`t` (in float32, :math:`\\sigma_t` then has a relative error
    of about :math:`10^{-2}` at :math:`t = 10^{-4}`). With :math:`\\delta = \\phi_t - \\phi_0 =
    \\frac\\pi2\\frac{ct}{1+s}`, the addition formula gives
    :math:`\\alpha_t = \\cos\\delta - \\tan\\phi_0\\sin\\delta`, so

    .. math::

        \\log\\alpha_t = \\operatorname{log1p}\\big(-2\\sin^2(\\delta/2) - \\tan\\phi_0\\sin\\delta\\big),

    a sum of two non-positive terms, used while :math:`\\alpha_t > 1/2`; beyond, where
    :math:`\\log\\alpha_t < -\\log 2` no longer cancels, :math:`\\log\\sin\\psi_t - \\log\\sin\\psi_0`
    with :math:`\\psi_t = \\frac\\pi2 - \\phi_t = \\frac\\pi2\\frac{(1 - c) + c(1 - t)}{1 + s}`
    (computed from small positive terms, accurate as :math:`t \\to 1`).

    Args:
        s: the offset :math:`s > 0` (default 0.008).
        c: the time scale :math:`c \\in (0, 1)` (default 0.9946).

    Raises:
        ValueError: unless ``s > 0`` and ``0 < c < 1``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    s: jax.Array = eqx.field(default=0.008, converter=_float_array)
    c: jax.Array = eqx.field(default=0.9946, converter=_float_array)

    def __check_init__(self):
        check_positive(self.s, "s")
        check_in_range(self.c, "c", 0.0, 1.0, low_open=True, high_open=True)

    def _psi(self, t: jax.Array) -> jax.Array:
        """:math:`\\psi_t = \\pi/2 - \\phi_t`, from the non-negative terms ``1 - c`` and ``c (1 - t)``."""
        return 0.5 * jnp.pi * ((1.0 - self.c) + self.c * (1.0 - t)) / (1.0 + self.s)

    def beta(self, t: jax.Array) -> jax.Array:
        """:math:`\\beta(t) = \\frac{\\pi c}{1+s}\\tan\\phi_t`, as :math:`1/\\tan\\psi_t` once
        :math:`\\phi_t > \\pi/4` (each form from a small, accurate angle)."""
        t = jnp.asarray(t)
        phi = 0.5 * jnp.pi * (self.c * t + self.s) / (1.0 + self.s)
        tan_phi = jnp.where(phi < 0.25 * jnp.pi, jnp.tan(phi), 1.0 / jnp.tan(self._psi(t)))
        return jnp.pi * self.c / (1.0 + self.s) * tan_phi

    def log_alpha(self, t: jax.Array) -> jax.Array:
        """:math:`\\log\\alpha_t`, free of cancellation at every ``t`` (see the class docstring)."""
        t = jnp.asarray(t)
        phi0 = 0.5 * jnp.pi * self.s / (1.0 + self.s)
        delta = 0.5 * jnp.pi * self.c * t / (1.0 + self.s)
        small = -2.0 * jnp.sin(0.5 * delta) ** 2 - jnp.tan(phi0) * jnp.sin(delta)
        from_small = jnp.log1p(jnp.maximum(small, -0.5))  # the clamp keeps the unused branch finite
        from_large = jnp.log(jnp.sin(self._psi(t))) - jnp.log(jnp.sin(self._psi(0.0)))
        return jnp.where(small > -0.5, from_small, from_large)


class RectifiedFlow(AbstractGaussianProcess, strict=True):
    """The rectified-flow interpolant :math:`x_t = (1-t)x_0 + t x_1`, :math:`x_1\\sim\\mathcal N(0, I)`.

    :math:`x_0` is data and :math:`x_1` noise (the convention of :cite:`liu2023flow` and
    :cite:`kim2025simplereflow`): :math:`\\alpha_t = 1 - t`, :math:`\\sigma_t = t`, so the
    reference law is reached exactly at :math:`t = 1`. As a process it has the SDE

    .. math::

        f(x, t) = -\\frac{x}{1 - t},\\qquad g(t)^2 = \\frac{2t}{1 - t}

    (:math:`f = \\dot\\alpha_t/\\alpha_t\\,x`, :math:`g^2 = \\dot{\\sigma_t^2} - 2\\sigma_t^2\\dot\\alpha_t/\\alpha_t`),
    both singular at :math:`t = 1`; its probability-flow velocity is the flow-matching velocity
    :math:`v = (x - D)/t` of :mod:`otdiff.flows`. A final class without parameters.

    Taught in: book/diffusion/05_simple_reflow.ipynb
    """

    def log_alpha(self, t: jax.Array) -> jax.Array:
        """:math:`\\log\\alpha_t = \\log(1 - t)` (``log1p(-t)``)."""
        return jnp.log1p(-jnp.asarray(t))

    def sigma(self, t: jax.Array) -> jax.Array:
        """:math:`\\sigma_t = t`."""
        return jnp.asarray(t, jnp.result_type(float))

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Forward drift :math:`f(x, t) = -x/(1-t)`."""
        return -x / (1.0 - t)

    def diffusion_squared(self, t: jax.Array) -> jax.Array:
        """:math:`g(t)^2 = 2t/(1-t)`."""
        t = jnp.asarray(t)
        return 2.0 * t / (1.0 - t)


#: The VP schedules by name, for widgets that choose one.
PROCESSES = {"linear": LinearVP, "cosine": CosineVP}


def make_process(kind: str = "linear", **kwargs) -> AbstractVP:
    """A VP process by name (``"linear"`` or ``"cosine"``) with its keyword arguments.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    check_choice(kind, "kind", PROCESSES)
    return PROCESSES[kind](**kwargs)
