"""Gaussian mixtures with exact log-densities, scores and noised versions at every diffusion time.

A Gaussian mixture stays one under the VP SDE: if :math:`X_0 \\sim \\sum_k w_k\\,\\mathcal
N(\\mu_k, \\Sigma_k)` then

.. math::

    X_t \\sim \\sum_k w_k\\,\\mathcal N\\big(\\alpha_t\\mu_k,\\ \\alpha_t^2\\Sigma_k + \\sigma_t^2 I\\big),

so :meth:`GaussianMixture.noised` gives the exact marginal :math:`p_t`, and
:func:`exact_score` its score :math:`\\nabla\\log p_t`: the exact teacher that the diffusion
chapters and their tests lean on (:cite:`song2021scorebased`).

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_int, check_points, check_positive, check_weights

__all__ = ["GaussianMixture", "gaussian_mixture", "ring", "grid", "exact_score", "exact_log_prob"]


class GaussianMixture(eqx.Module):
    """A mixture :math:`\\sum_k w_k\\,\\mathcal N(\\mu_k, \\Sigma_k)` in :math:`\\mathbb R^d`.

    Every method takes one point ``x`` of shape ``(d,)`` or a batch ``(..., d)``.

    Attributes:
        means: ``(K, d)`` component means.
        covs: ``(K, d, d)`` component covariances (symmetric positive definite).
        weights: ``(K,)`` mixture weights, summing to one.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    means: jax.Array
    covs: jax.Array
    weights: jax.Array

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def component_log_probs(self, x: jax.Array) -> jax.Array:
        """:math:`\\log w_k + \\log\\mathcal N(x; \\mu_k, \\Sigma_k)` for every component, ``(..., K)``."""
        diff = x[..., None, :] - self.means  # (..., K, d)
        maha = jnp.einsum("...ki,kij,...kj->...k", diff, jnp.linalg.inv(self.covs), diff)
        logdet = jnp.linalg.slogdet(self.covs)[1]
        return jnp.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """The exact log-density :math:`\\log p(x)`."""
        return jax.nn.logsumexp(self.component_log_probs(x), axis=-1)

    def responsibilities(self, x: jax.Array) -> jax.Array:
        """Posterior component probabilities :math:`P(k \\mid x)`, shape ``(..., K)``."""
        return jax.nn.softmax(self.component_log_probs(x), axis=-1)

    def score(self, x: jax.Array) -> jax.Array:
        """The exact score :math:`\\nabla\\log p(x) = -\\sum_k P(k\\mid x)\\,\\Sigma_k^{-1}(x - \\mu_k)`."""
        resp = self.responsibilities(x)  # (..., K)
        diff = x[..., None, :] - self.means  # (..., K, d)
        prec_diff = jnp.einsum("kij,...kj->...ki", jnp.linalg.inv(self.covs), diff)
        return -jnp.einsum("...k,...ki->...i", resp, prec_diff)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples, shape ``(n, d)`` (``n`` is static)."""
        n = check_int(n, "n", low=1)
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.n_components, (n,), p=self.weights)
        z = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z)

    def sample_with_labels(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """``n`` samples and the component each came from."""
        n = check_int(n, "n", low=1)
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.n_components, (n,), p=self.weights)
        z = jax.random.normal(k_noise, (n, self.dim), self.means.dtype)
        chol = jnp.linalg.cholesky(self.covs)
        return self.means[comp] + jnp.einsum("nij,nj->ni", chol[comp], z), comp

    def noised(self, process, t: jax.Array) -> GaussianMixture:
        """The exact marginal at diffusion time ``t`` of the Gaussian ``process`` started from this mixture."""
        alpha, sigma = process.alpha(t), process.sigma(t)
        eye = jnp.eye(self.dim, dtype=self.covs.dtype)
        return GaussianMixture(
            alpha * self.means, alpha**2 * self.covs + sigma**2 * eye, self.weights
        )

    def tempered(self, inverse_temperature: float) -> GaussianMixture:
        """Not exact in general: see the energy chapter. Only for well-separated modes.

        Raising a mixture of well-separated Gaussians to the power :math:`\\gamma` (the
        ``inverse_temperature``) gives, approximately, components with covariance
        :math:`\\Sigma_k/\\gamma` and weights :math:`\\propto w_k^\\gamma\\,|2\\pi\\Sigma_k|^{(1-\\gamma)/2}`.
        """
        check_positive(inverse_temperature, "inverse_temperature")
        gamma = inverse_temperature
        logdet = jnp.linalg.slogdet(2 * jnp.pi * self.covs)[1]
        logw = gamma * jnp.log(self.weights) + 0.5 * (1.0 - gamma) * logdet
        return GaussianMixture(self.means, self.covs / gamma, jax.nn.softmax(logw))


def gaussian_mixture(
    means: Sequence | jax.Array,
    stds: float | Sequence | jax.Array = 1.0,
    weights: Sequence | jax.Array | None = None,
    *,
    covs: jax.Array | None = None,
) -> GaussianMixture:
    """Build and check a mixture from means and isotropic standard deviations (or covariances).

    Args:
        means: ``(K, d)`` component means.
        stds: one standard deviation for all components, or one per component ``(K,)``.
        weights: ``(K,)`` probabilities (uniform if ``None``).
        covs: full ``(K, d, d)`` covariances instead of ``stds``.

    Raises:
        ValueError: on non-finite means, non-positive standard deviations, covariances that are
            not symmetric positive definite, or weights that are negative or do not sum to one.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    means = check_points(means, "means").astype(jnp.result_type(float))
    k, d = means.shape
    if covs is None:
        stds_arr = (
            np.broadcast_to(np.asarray(stds, dtype=float), (k,)) if np.ndim(stds) <= 1 else None
        )
        if stds_arr is None or stds_arr.shape != (k,):
            raise ValueError(f"stds must be a scalar or have shape ({k},), got {np.shape(stds)}.")
        if not np.all(np.isfinite(stds_arr) & (stds_arr > 0)):
            raise ValueError(f"stds must be finite and > 0, got {stds_arr.tolist()}.")
        covs = jnp.asarray(stds_arr, means.dtype)[:, None, None] ** 2 * jnp.eye(
            d, dtype=means.dtype
        )
    else:
        covs = jnp.asarray(covs, means.dtype)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k}, {d}, {d}), got {covs.shape}.")
        c = np.asarray(covs)
        if not np.allclose(c, np.swapaxes(c, 1, 2)) or np.any(np.linalg.eigvalsh(c) <= 0):
            raise ValueError("covs must be symmetric positive definite.")
    weights = check_weights(weights, k, "weights").astype(means.dtype)
    return GaussianMixture(means, covs, weights)


def ring(n_modes: int = 8, radius: float = 3.0, std: float = 0.3, weights=None) -> GaussianMixture:
    """``n_modes`` equal Gaussians evenly spaced on a circle in the plane.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/03_spell.ipynb.
    """
    n_modes = check_int(n_modes, "n_modes", low=1)
    check_positive(radius, "radius")
    check_positive(std, "std")
    angles = 2 * np.pi * np.arange(n_modes) / n_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return gaussian_mixture(means, std, weights)


def grid(n_per_side: int = 3, spacing: float = 2.0, std: float = 0.3) -> GaussianMixture:
    """An ``n_per_side x n_per_side`` grid of equal Gaussians centred on the origin.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    n_per_side = check_int(n_per_side, "n_per_side", low=1)
    check_positive(spacing, "spacing")
    check_positive(std, "std")
    c = spacing * (np.arange(n_per_side) - (n_per_side - 1) / 2)
    means = np.stack(np.meshgrid(c, c, indexing="ij"), axis=-1).reshape(-1, 2)
    return gaussian_mixture(means, std)


def exact_log_prob(mixture: GaussianMixture, process):
    """The exact noised log-density ``log_prob(x, t)`` of ``mixture`` under the Gaussian ``process``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    def log_prob(x: jax.Array, t: jax.Array) -> jax.Array:
        return mixture.noised(process, t).log_prob(x)

    return log_prob


def exact_score(mixture: GaussianMixture, process):
    """The exact noised score ``score(x, t)`` :math:`= \\nabla_x\\log p_t(x)` of ``mixture``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/03_spell.ipynb.
    """

    def score(x: jax.Array, t: jax.Array) -> jax.Array:
        return mixture.noised(process, t).score(x)

    return score
