"""Two non-Gaussian 2-D densities with exact log-densities, scores and noised marginals.

* :func:`two_moons`: the two interleaved half circles of scikit-learn, blurred by Gaussian noise
  of standard deviation ``noise``. Its density, an integral of Gaussians along each arc, is
  computed by the midpoint rule with ``n_quadrature`` nodes per arc, which makes it a
  :class:`~otdiff.data.mixtures.GaussianMixture` (exact up to the quadrature error, below
  :math:`10^{-3}` in log-density for the defaults), so its noised marginals are exact too.
* :class:`Checkerboard`: the uniform density on the 8 dark squares of a 4x4 board on
  :math:`[-2, 2]^2`. Under the VP SDE each coordinate of each square is a uniform interval
  convolved with a Gaussian, so

  .. math::

      p_t(x) = \\frac18\\sum_{\\text{dark } [a, b]}\\ \\prod_{i=1}^2
      \\frac{\\Phi\\big((x_i - \\alpha_t a_i)/\\sigma_t\\big) - \\Phi\\big((x_i - \\alpha_t b_i)/\\sigma_t\\big)}
      {\\alpha_t (b_i - a_i)}

  in closed form, with scores by automatic differentiation.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from otdiff._checks import check_int, check_positive
from otdiff.data.mixtures import GaussianMixture, gaussian_mixture

__all__ = ["two_moons", "Checkerboard", "checkerboard"]


def two_moons(
    noise: float = 0.1, n_quadrature: int = 256, *, scale: float = 1.5
) -> GaussianMixture:
    """scikit-learn's two moons, centred and scaled by ``scale``, as an arc of Gaussians.

    Args:
        noise: standard deviation of the Gaussian blur (before scaling), > 0.
        n_quadrature: nodes of the midpoint rule along each half circle (static).
        scale: a factor applied to the centred moons (the default gives a spread close to 1).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    check_positive(noise, "noise")
    n_quadrature = check_int(n_quadrature, "n_quadrature", low=2)
    check_positive(scale, "scale")
    theta = np.pi * (np.arange(n_quadrature) + 0.5) / n_quadrature
    outer = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    inner = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)
    means = (np.concatenate([outer, inner]) - np.array([0.5, 0.25])) * scale
    return gaussian_mixture(means, noise * scale)


class Checkerboard(eqx.Module):
    """The uniform density on the dark squares of a board, and its exact noised versions.

    Attributes:
        lows: ``(S, 2)`` lower corners of the dark squares.
        side: the side length of one square.
        alpha, sigma: the signal and noise scale of the marginal (1 and 0 for the data itself).

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    lows: jax.Array
    side: jax.Array
    alpha: jax.Array
    sigma: jax.Array

    def log_prob(self, x: jax.Array) -> jax.Array:
        """The exact log-density (``-inf`` off the board when ``sigma == 0``)."""
        lo = self.alpha * self.lows  # (S, 2)
        hi = self.alpha * (self.lows + self.side)
        xs = x[..., None, :]
        safe_sigma = jnp.where(self.sigma > 0, self.sigma, 1.0)
        u, ll = (xs - lo) / safe_sigma, (xs - hi) / safe_sigma
        # log(Phi(u) - Phi(l)) for l < u, evaluated on the side of zero where it is accurate
        flip = ll > 0
        a = jnp.where(flip, -ll, u)
        b = jnp.where(flip, -u, ll)
        log_cdf_diff = log_ndtr(a) + jnp.log1p(-jnp.exp(log_ndtr(b) - log_ndtr(a)))
        inside = jnp.where((xs >= lo) & (xs <= hi), 0.0, -jnp.inf)
        per_dim = jnp.where(self.sigma > 0, log_cdf_diff, inside)
        log_box = jnp.sum(per_dim - jnp.log(self.alpha * self.side), axis=-1)
        return jax.nn.logsumexp(log_box, axis=-1) - math.log(self.lows.shape[0])

    def score(self, x: jax.Array) -> jax.Array:
        """The exact score, by automatic differentiation of :meth:`log_prob`."""
        grad = jax.grad(lambda y: self.log_prob(y))
        flat = x.reshape(-1, x.shape[-1])
        return jax.vmap(grad)(flat).reshape(x.shape)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` samples of the marginal, shape ``(n, 2)``."""
        n = check_int(n, "n", low=1)
        k_sq, k_u, k_z = jax.random.split(key, 3)
        sq = jax.random.randint(k_sq, (n,), 0, self.lows.shape[0])
        u = jax.random.uniform(k_u, (n, 2), self.lows.dtype)
        x0 = self.lows[sq] + self.side * u
        return self.alpha * x0 + self.sigma * jax.random.normal(k_z, (n, 2), self.lows.dtype)

    def noised(self, process, t: jax.Array) -> Checkerboard:
        """The exact marginal at time ``t`` of the Gaussian ``process`` started from this density."""
        a, s = process.alpha(t), process.sigma(t)
        return Checkerboard(
            self.lows, self.side, a * self.alpha, jnp.sqrt(a**2 * self.sigma**2 + s**2)
        )


def checkerboard(n_per_side: int = 4, side: float = 1.0) -> Checkerboard:
    """The uniform density on the dark squares of an ``n_per_side`` board centred on 0.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    n_per_side = check_int(n_per_side, "n_per_side", low=2)
    check_positive(side, "side")
    ij = np.array(
        [(i, j) for i in range(n_per_side) for j in range(n_per_side) if (i + j) % 2 == 0]
    )
    lows = (ij - n_per_side / 2) * side
    f = jnp.result_type(float)
    return Checkerboard(
        jnp.asarray(lows, f), jnp.asarray(side, f), jnp.asarray(1.0, f), jnp.asarray(0.0, f)
    )
