"""Denoising score matching, the score of an epsilon-predictor, and Tweedie's denoiser.

For :math:`x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon`, the conditional score is
:math:`\\nabla\\log p_{t|0}(x_t\\mid x_0) = -\\varepsilon/\\sigma_t`, and :cite:`vincent2011connection`

.. math::

    \\mathbb E\\,\\|s_\\theta(x_t, t) - \\nabla\\log p_t(x_t)\\|^2
    = \\mathbb E\\,\\|s_\\theta(x_t, t) + \\varepsilon/\\sigma_t\\|^2 + \\text{const},

so regressing the noise, :math:`\\hat\\varepsilon_\\theta \\approx \\varepsilon` with
:math:`s_\\theta = -\\hat\\varepsilon_\\theta/\\sigma_t`, learns the score. The loss

.. math::

    \\mathcal L(\\theta) = \\mathbb E_{t, x_0, \\varepsilon}\\ w(t)\\,
    \\|\\hat\\varepsilon_\\theta(\\alpha_t x_0 + \\sigma_t\\varepsilon, t) - \\varepsilon\\|^2

with :math:`w = 1` (``"eps"``, the "simple" loss of :cite:`ho2020denoising`, i.e. score matching
weighted by :math:`\\sigma_t^2`) or :math:`w = g(t)^2/\\sigma_t^2` (``"likelihood"``: score
matching weighted by :math:`g(t)^2`, which bounds the negative log-likelihood
:cite:`song2021scorebased`). Times are drawn stratified on :math:`[t_{\\min}, 1]`.

Tweedie's formula gives the posterior mean of the clean point:
:math:`\\mathbb E[X_0\\mid X_t = x] = (x + \\sigma_t^2\\nabla\\log p_t(x))/\\alpha_t`
(:meth:`otdiff.diffusion.AbstractGaussianProcess.denoise`).

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_choice, check_in_range, check_int, check_times
from otdiff.diffusion.processes import AbstractGaussianProcess

__all__ = [
    "WEIGHTINGS",
    "dsm_loss",
    "EpsScore",
    "score_from_eps",
    "eps_from_score",
    "denoiser",
    "stratified_times",
]

WEIGHTINGS = ("eps", "likelihood")

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def stratified_times(key: jax.Array, n: int, t_min: float = 1e-3) -> jax.Array:
    """``n`` times in :math:`[t_{\\min}, 1]`, one uniform draw in each of ``n`` equal strata.

    A single random shift of an evenly spaced grid (a low-variance stand-in for i.i.d. uniform
    times with the same marginal distribution). ``n`` is static; ``t_min`` in :math:`(0, 1)`.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    n = check_int(n, "n", low=1)
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    u = (jax.random.uniform(key) + jnp.arange(n) / n) % 1.0
    return t_min + (1.0 - t_min) * u


def dsm_loss(
    model: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    x0: jax.Array,
    process: AbstractGaussianProcess,
    *,
    weighting: str = "eps",
    t_min: float = 1e-3,
) -> jax.Array:
    """The denoising score-matching loss of an epsilon-predictor on a batch ``x0`` of shape ``(n, d)``.

    Its first three arguments are those of a loss for :func:`otdiff.train.fit`: train with
    ``jax.tree_util.Partial(dsm_loss, process=process)``.

    Args:
        model: ``model(x, t) -> eps_hat`` on one point ``x`` of shape ``(d,)`` (an Equinox module
            or any function; the loss is differentiable in its arrays).
        key: a JAX random key (the times and the noise).
        x0: clean data, shape ``(n, d)``.
        process: the forward :class:`~otdiff.diffusion.AbstractGaussianProcess`.
        weighting: ``"eps"`` or ``"likelihood"`` (see the module docstring; static).
        t_min: the smallest training time, in ``(0, 1)``.

    Returns:
        The scalar loss (mean over the batch and the dimensions).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    check_choice(weighting, "weighting", WEIGHTINGS)
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (n, d), got shape {x0.shape}.")
    k_t, k_eps = jax.random.split(key)
    t = stratified_times(k_t, x0.shape[0], t_min)
    xt, eps = process.sample_marginal(k_eps, x0, t)
    eps_hat = jax.vmap(model)(xt, t)
    per_point = jnp.mean((eps_hat - eps) ** 2, axis=-1)
    if weighting == "likelihood":
        per_point = per_point * process.diffusion_squared(t) / process.sigma(t) ** 2
    return jnp.mean(per_point)


class EpsScore(eqx.Module):
    """The score :math:`s(x, t) = -\\hat\\varepsilon(x, t)/\\sigma_t` of an epsilon-predictor.

    A module (a pytree): its weights are traced, not baked in, when it is passed to a jitted
    function.

    Attributes:
        model: the noise predictor ``model(x, t)``.
        process: the forward process it was trained for.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    model: Callable
    process: AbstractGaussianProcess

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return -self.model(x, t) / self.process.sigma(t)


def score_from_eps(model: Callable, process: AbstractGaussianProcess) -> EpsScore:
    """The score :math:`s(x, t) = -\\hat\\varepsilon(x, t)/\\sigma_t` of an epsilon-predictor.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    return EpsScore(model, process)


def eps_from_score(score: ScoreFn, process: AbstractGaussianProcess) -> Callable:
    """The noise prediction :math:`\\hat\\varepsilon(x, t) = -\\sigma_t s(x, t)` of a score.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    def eps(x: jax.Array, t: jax.Array) -> jax.Array:
        return -process.sigma(t) * score(x, t)

    return eps


def denoiser(score: ScoreFn, process: AbstractGaussianProcess) -> Callable:
    """Tweedie's denoiser :math:`D(x, t) = (x + \\sigma_t^2 s(x, t))/\\alpha_t = \\mathbb E[X_0\\mid X_t = x]`.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    def denoise(x: jax.Array, t: jax.Array) -> jax.Array:
        check_times(t, "t")
        return process.denoise(x, t, score(x, t))

    return denoise
