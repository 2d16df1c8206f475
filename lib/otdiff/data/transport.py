r"""Transport test problems: point clouds to match, and a transport map known in closed form.

- :func:`gaussian_clouds`, :func:`mixture_clouds`: two clouds to match, Gaussian or clustered;
- :func:`known_map`, :func:`known_map_problem`: samples whose optimal map for the squared
  Euclidean cost is known exactly, so that a map estimator's error can be measured.

Every sampler takes the PRNG key first; sizes are shapes, hence static.

Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["gaussian_clouds", "mixture_clouds", "known_map", "known_map_problem"]


@functools.partial(jax.jit, static_argnames=("n", "d"))
def gaussian_clouds(key: jax.Array, n: int, d: int) -> tuple[jax.Array, jax.Array]:
    r"""Two anisotropic Gaussian clouds of ``n`` points in dimension ``d`` (both static).

    :math:`x_i \sim \mathcal N(0, AA^\top)` and :math:`y_j \sim \mathcal N(\mathbf 1, BB^\top)`
    with random :math:`A, B` (standard normal entries divided by :math:`\sqrt d`): the setting in
    which the Gaussian start of Sinkhorn :cite:`thornton2023sinkhorninit` is exact as
    :math:`n \to \infty` and :math:`\varepsilon \to 0`.

    Returns:
        ``(x, y)``, each of shape ``(n, d)``.

    Taught in: book/ot/02_sinkhorn_init.ipynb.
    """
    ka, kb, kx, ky = jax.random.split(key, 4)
    A = jax.random.normal(ka, (d, d)) / jnp.sqrt(d)
    B = jax.random.normal(kb, (d, d)) / jnp.sqrt(d)
    x = jax.random.normal(kx, (n, d)) @ A.T
    y = 1.0 + jax.random.normal(ky, (n, d)) @ B.T
    return x, y


@functools.partial(jax.jit, static_argnames=("n", "d", "n_clusters"))
def mixture_clouds(
    key: jax.Array, n: int, d: int, n_clusters: int = 3
) -> tuple[jax.Array, jax.Array]:
    r"""Two mixtures of ``n_clusters`` well-separated Gaussian clusters, ``n`` points each.

    Cluster centres are drawn uniformly in :math:`[-2, 2]^d` (source) and :math:`[-1, 3]^d`
    (target), each cluster an isotropic Gaussian of standard deviation 0.25 with ``n //
    n_clusters`` or one more points. ``n``, ``d`` and ``n_clusters`` are static.

    Returns:
        ``(x, y)``, each of shape ``(n, d)``.

    Taught in: book/ot/02_sinkhorn_init.ipynb.
    """
    kc, kd, kx, ky, ks = jax.random.split(key, 5)
    cx = jax.random.uniform(kc, (n_clusters, d), minval=-2.0, maxval=2.0)
    cy = jax.random.uniform(kd, (n_clusters, d), minval=-1.0, maxval=3.0)
    lx = jnp.arange(n) % n_clusters
    ly = jax.random.permutation(ks, lx)
    x = cx[lx] + 0.25 * jax.random.normal(kx, (n, d))
    y = cy[ly] + 0.25 * jax.random.normal(ky, (n, d))
    return x, y


def known_map(x: Any, jump: float = 4.0, width: float = 0.25, shift: float = 1.0) -> jax.Array:
    r"""A transport map known in closed form: the gradient of a convex potential.

    .. math::

        T_0(x) = \nabla\varphi(x) = x + \text{jump}\,\tanh(x_1/\text{width})\, e_1
            + \text{shift}\,\mathbf 1,
        \qquad
        \varphi(x) = \tfrac12\|x\|^2 + \text{jump}\cdot\text{width}\,
            \log\cosh(x_1/\text{width}) + \text{shift}\,\mathbf 1^\top x.

    :math:`\varphi` is convex (:math:`\log\cosh` is), so by Brenier's theorem
    :cite:`villani2009optimal` :math:`T_0` is the optimal map for the squared Euclidean cost from
    any source law with a density to its image. It pulls a Gaussian apart along the first axis
    into two lobes about ``2 * jump`` apart, joined by a thin bridge: an entropic map with too
    large an :math:`\varepsilon` averages the two lobes and pulls points towards the mean
    :cite:`kassraie2024progot`. The other coordinates are only shifted. Pure and jit-able.

    Args:
        x: points, shape ``(..., d)``.
        jump, width, shift: the map's constants (``width`` > 0).

    Returns:
        :math:`T_0(x)`, the shape of ``x``.

    Taught in: book/ot/03_progot.ipynb.
    """
    x = jnp.asarray(x)
    e1 = jnp.zeros(x.shape[-1], x.dtype).at[0].set(1.0)
    return x + jump * jnp.tanh(x[..., :1] / width) * e1 + shift


@functools.partial(jax.jit, static_argnames=("n", "d", "n_test"))
def known_map_problem(
    key: jax.Array, n: int, d: int, n_test: int = 500
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Samples for map estimation with the exact answer :func:`known_map` (sizes static).

    Source :math:`x \sim \mathcal N(0, I_d)` (``n`` points), target :math:`y = T_0(x')` for an
    *independent* sample :math:`x'` (``n`` points: the pairing is not given), and ``n_test``
    fresh source points with their exact images.

    Returns:
        ``(x, y, x_test, y_test)`` with ``y_test = known_map(x_test)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    y = known_map(jax.random.normal(ky, (n, d)))
    x_test = jax.random.normal(kt, (n_test, d))
    return x, y, x_test, known_map(x_test)
