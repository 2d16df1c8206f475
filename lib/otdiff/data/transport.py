r"""Transport test problems: point clouds to match, and a transport map known in closed form.

- :func:`gaussian_clouds`, :func:`mixture_clouds`: two clouds to match, Gaussian or clustered;
- :func:`known_map`, :func:`known_map_problem`: samples whose optimal map for the squared
  Euclidean cost is known exactly, so that a map estimator's error can be measured;
- :func:`mahalanobis_problem`, :func:`power_problem`: the same for a Mahalanobis cost and for
  a power of a Mahalanobis norm (a cost that is not quadratic).

Every sampler takes the PRNG key first; sizes are shapes, hence static.

Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from otdiff._checks import check_finite, check_int, check_key

__all__ = [
    "gaussian_clouds",
    "mixture_clouds",
    "known_map",
    "known_map_problem",
    "CostMapProblem",
    "mahalanobis_matrix",
    "mahalanobis_map",
    "mahalanobis_problem",
    "PowerCostProblem",
    "POWER_POTENTIAL",
    "power_inverse_map",
    "power_problem",
]


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
    return _gaussian_clouds(check_key(key), check_int(n, "n", low=1), check_int(d, "d", low=1))


@functools.partial(jax.jit, static_argnames=("n", "d"))
def _gaussian_clouds(key, n, d):
    ka, kb, kx, ky = jax.random.split(key, 4)
    A = jax.random.normal(ka, (d, d)) / jnp.sqrt(d)
    B = jax.random.normal(kb, (d, d)) / jnp.sqrt(d)
    x = jax.random.normal(kx, (n, d)) @ A.T
    y = 1.0 + jax.random.normal(ky, (n, d)) @ B.T
    return x, y


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
    n, d = check_int(n, "n", low=1), check_int(d, "d", low=1)
    return _mixture_clouds(check_key(key), n, d, check_int(n_clusters, "n_clusters", low=1))


@functools.partial(jax.jit, static_argnames=("n", "d", "n_clusters"))
def _mixture_clouds(key, n, d, n_clusters):
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
    try:
        arr = jnp.asarray(x)
    except Exception:
        arr = None
    if arr is None or not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"x must be an array of points of shape (..., d), got {type(x).__name__}.")
    x = arr
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (..., d) with d >= 1, got shape {x.shape}.")
    check_finite(x, "x")
    e1 = jnp.zeros(x.shape[-1], x.dtype).at[0].set(1.0)
    return x + jump * jnp.tanh(x[..., :1] / width) * e1 + shift


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
    n, d = check_int(n, "n", low=1), check_int(d, "d", low=1)
    return _known_map_problem(check_key(key), n, d, check_int(n_test, "n_test", low=1))


@functools.partial(jax.jit, static_argnames=("n", "d", "n_test"))
def _known_map_problem(key, n, d, n_test):
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    y = known_map(jax.random.normal(ky, (n, d)))
    x_test = jax.random.normal(kt, (n_test, d))
    return x, y, x_test, known_map(x_test)


# --------------------------------------------------------------------------------------------
# A known map for a known cost other than the squared Euclidean one
# --------------------------------------------------------------------------------------------


class CostMapProblem(NamedTuple):
    r"""Samples of a map that is optimal for a known Mahalanobis cost (what :func:`mahalanobis_problem` returns).

    Attributes:
        x: source points, shape ``(n, d)``; the first ``n_pairs`` are labelled.
        y: target points, shape ``(n, d)``; ``y[:n_pairs]`` are the images of ``x[:n_pairs]``,
            the rest are images of *independent* source points (their pairing is not given).
        x_test: fresh source points, shape ``(n_test, d)``.
        y_test: their exact images, shape ``(n_test, d)``.
        matrix: the true cost's matrix :math:`A`, shape ``(d, d)``.

    Taught in: book/ot/04_monge.ipynb.
    """

    x: jax.Array
    y: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    matrix: jax.Array


def mahalanobis_matrix(angle: float = jnp.pi / 6, eigenvalues: tuple = (1.0, 9.0)) -> jax.Array:
    r"""The 2-D cost matrix :math:`A = R\,\mathrm{diag}(\lambda_1, \lambda_2)\,R^\top`, :math:`R` a rotation by ``angle``.

    Taught in: book/ot/04_monge.ipynb.
    """
    c, s = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.array([[c, -s], [s, c]])
    return rotation @ jnp.diag(jnp.asarray(eigenvalues, dtype=rotation.dtype)) @ rotation.T


def mahalanobis_map(
    x: Any,
    matrix: Any,
    shift: tuple = (2.0, 1.0),
    jump: float = 1.5,
    width: float = 0.2,
) -> jax.Array:
    r"""A map that is optimal for the cost :math:`h_A(z) = \tfrac12 z^\top A z`, in closed form.

    In the whitened coordinates :math:`u = A^{1/2}x` the cost is :math:`\tfrac12\|u - v\|^2`, so
    any gradient of a convex function there is optimal (Brenier); we take

    .. math::

        T_A(x) = A^{-1/2}\,\nabla\varphi(A^{1/2}x), \qquad
        \nabla\varphi(u) = u + \text{shift} + \text{jump}\,\tanh(u / \text{width}),

    a monotone map (coordinate-wise :math:`\tanh`) that splits each whitened axis in two. Written
    as Gangbo--McCann's :math:`T_A(x) = x - A^{-1}\nabla f(x)`, its potential
    :math:`f(x) = -\langle \text{shift}, u\rangle - \text{jump}\cdot\text{width}\sum_k
    \log\cosh(u_k/\text{width})` is concave, hence :math:`h_A`-concave :cite:`howard2024monge`.
    The same map is *not* optimal for the squared Euclidean cost unless :math:`A \propto I`.

    Args:
        x: points, shape ``(..., d)``.
        matrix: :math:`A`, symmetric positive definite, shape ``(d, d)``.
        shift, jump, width: the map's constants (``width`` > 0).

    Returns:
        :math:`T_A(x)`, the shape of ``x``.

    Taught in: book/ot/04_monge.ipynb.
    """
    x, matrix = jnp.asarray(x), jnp.asarray(matrix)
    eigenvalues, vectors = jnp.linalg.eigh(matrix)
    root = (vectors * jnp.sqrt(eigenvalues)) @ vectors.T
    inverse_root = (vectors / jnp.sqrt(eigenvalues)) @ vectors.T
    u = x @ root
    return (u + jnp.asarray(shift, x.dtype) + jump * jnp.tanh(u / width)) @ inverse_root


def mahalanobis_problem(
    key: jax.Array, n: int, n_pairs: int, n_test: int = 500, matrix: Any = None
) -> CostMapProblem:
    r"""Map estimation with a known map (:func:`mahalanobis_map`) for a known cost (sizes static).

    Source :math:`x \sim \mathcal N(0, I_2)`; ``n`` source and ``n`` target points, of which the
    first ``n_pairs`` are labelled pairs :math:`(x_i, T_A(x_i))`, the others images of an
    independent sample; and ``n_test`` fresh pairs to measure the error on. ``matrix`` is
    :math:`A` (default :func:`mahalanobis_matrix`, :math:`R\,\mathrm{diag}(1, 9)R^\top`).

    Returns:
        A :class:`CostMapProblem`.

    Taught in: book/ot/04_monge.ipynb.
    """
    n = check_int(n, "n", low=2)
    n_pairs = check_int(n_pairs, "n_pairs", low=0, high=n)
    n_test = check_int(n_test, "n_test", low=1)
    matrix = mahalanobis_matrix() if matrix is None else jnp.asarray(matrix)
    if matrix.shape != (2, 2):
        raise ValueError(f"matrix must have shape (2, 2), got {matrix.shape}.")
    check_finite(matrix, "matrix")
    return _mahalanobis_problem(check_key(key), matrix, n, n_pairs, n_test)


@functools.partial(jax.jit, static_argnames=("n", "n_pairs", "n_test"))
def _mahalanobis_problem(key, matrix, n, n_pairs, n_test):
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, 2))
    x_other = jax.random.normal(ky, (n, 2))
    y = mahalanobis_map(jnp.concatenate([x[:n_pairs], x_other[n_pairs:]]), matrix)
    x_test = jax.random.normal(kt, (n_test, 2))
    return CostMapProblem(x, y, x_test, mahalanobis_map(x_test, matrix), matrix)


# --------------------------------------------------------------------------------------------
# A known map for a cost that is not quadratic
# --------------------------------------------------------------------------------------------


class PowerCostProblem(NamedTuple):
    r"""Samples of a map optimal for a power of a Mahalanobis norm (what :func:`power_problem` returns).

    Attributes:
        x: source points, shape ``(n, d)``; the first ``n_pairs`` are labelled.
        y: target points, shape ``(n, d)``; ``y[:n_pairs]`` are the images of ``x[:n_pairs]``,
            the rest are images of *independent* source points (their pairing is not given).
        x_test: fresh source points, shape ``(n_test, d)``.
        y_test: their exact images, shape ``(n_test, d)``.
        matrix: the true cost's matrix :math:`Q`, shape ``(d, d)``.
        potential: the matrix :math:`B` of the target potential, shape ``(d, d)``.
        p: the true cost's exponent, a scalar array.

    Taught in: book/ot/04_monge.ipynb.
    """

    x: jax.Array
    y: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    matrix: jax.Array
    potential: jax.Array
    p: jax.Array


#: The default target potential's matrix :math:`B` of :func:`power_problem`.
POWER_POTENTIAL = ((2.0, 0.0), (0.0, 0.4))


def power_inverse_map(y: Any, matrix: Any, potential: Any, p: Any = 4.0 / 3.0) -> jax.Array:
    r"""The inverse of a map optimal for :math:`h(z) = \tfrac1p (z^\top Q z)^{p/2}`, in closed form.

    Take the concave target potential :math:`g(y) = -\tfrac12 y^\top B y` (:math:`B`
    symmetric positive semi-definite) and its :math:`c`-transform
    :math:`f(x) = \min_y h(x - y) - g(y)`, :math:`c`-concave by construction. The minimised
    function is strictly convex in :math:`y`, so it has one minimiser :math:`T(x)`, where
    :math:`\nabla h(x - y) = By`, i.e. :math:`x = y + \nabla h^*(By)`:

    .. math::

        T^{-1}(y) = y + \nabla h^*(By) = y + (y^\top B Q^{-1} B y)^{q/2 - 1}\,Q^{-1}By,
        \qquad q = \frac{p}{p - 1}.

    Since :math:`f(x) + g(y) \le h(x - y)` everywhere, with equality at :math:`y = T(x)`,
    the coupling :math:`(\mathrm{id}, T)_\sharp\mu` is optimal for the cost :math:`h` from any
    source law :math:`\mu` to :math:`T_\sharp\mu` (Kantorovich duality; this is the
    Gangbo--McCann map :math:`T(x) = x - \nabla h^*(\nabla f(x))` :cite:`gangbo1996geometry`).
    For :math:`p \ne 2` its Jacobian is not symmetric, so :math:`T` is not the gradient of a
    convex function: it is not the squared Euclidean (Brenier) map between the same laws.
    Pure and jit-able.

    Args:
        y: target points, shape ``(..., d)``.
        matrix: :math:`Q`, symmetric positive definite, shape ``(d, d)``.
        potential: :math:`B`, symmetric positive semi-definite, shape ``(d, d)``.
        p: the exponent, > 1.

    Returns:
        :math:`T^{-1}(y)`, the shape of ``y``.

    Taught in: book/ot/04_monge.ipynb.
    """
    y, matrix = jnp.asarray(y), jnp.asarray(matrix, dtype=jnp.asarray(y).dtype)
    potential = jnp.asarray(potential, dtype=y.dtype)
    q = p / (p - 1.0)
    v = y @ potential  # B y (B symmetric)
    w = v @ jnp.linalg.inv(matrix)  # Q^{-1} B y (Q symmetric)
    s = jnp.sum(v * w, axis=-1, keepdims=True)
    positive = s > 0
    scale = jnp.where(positive, jnp.where(positive, s, 1.0) ** (0.5 * q - 1.0), 0.0)
    return y + scale * w


def power_problem(
    key: jax.Array,
    n: int,
    n_pairs: int,
    n_test: int = 500,
    p: float = 4.0 / 3.0,
    matrix: Any = None,
    potential: Any = None,
) -> PowerCostProblem:
    r"""Map estimation with a known map for a known cost that is not quadratic (sizes static).

    The target is :math:`y \sim \mathcal N(0, I_2)` and the source its image by
    :func:`power_inverse_map`, so that the optimal map for :math:`h(z) = \tfrac1p(z^\top Q
    z)^{p/2}` from the source to the target is known exactly at every sampled point: ``n``
    source and ``n`` target points, of which the first ``n_pairs`` are labelled pairs, the
    others images of an independent sample; and ``n_test`` fresh pairs to measure errors on.

    Defaults: :math:`p = 4/3` (:math:`q = 4`: :math:`\nabla h^*` is cubic), :math:`Q` =
    :func:`mahalanobis_matrix` (:math:`R\,\mathrm{diag}(1, 9)R^\top`) and :math:`B` =
    :data:`POWER_POTENTIAL` (:math:`\mathrm{diag}(2, 0.4)`): displacements that grow with the
    cube of :math:`By`, so that neither the squared Euclidean cost nor a Mahalanobis one gives
    the map.

    Args:
        key: a JAX PRNG key.
        n: points per cloud, an int >= 2 (static).
        n_pairs: labelled pairs, an int in ``[0, n]`` (static).
        n_test: fresh pairs, an int >= 1 (static).
        p: the cost's exponent, a finite number > 1.
        matrix: :math:`Q`, symmetric positive definite, ``(2, 2)``.
        potential: :math:`B`, symmetric positive semi-definite, ``(2, 2)``.

    Returns:
        A :class:`PowerCostProblem`.

    Taught in: book/ot/04_monge.ipynb.
    """
    n = check_int(n, "n", low=2)
    n_pairs = check_int(n_pairs, "n_pairs", low=0, high=n)
    n_test = check_int(n_test, "n_test", low=1)
    p = float(check_finite(jnp.asarray(p, dtype=float), "p"))
    if not p > 1.0:
        raise ValueError(f"p must be > 1 (a strictly convex, superlinear cost), got {p}.")
    matrix = mahalanobis_matrix() if matrix is None else jnp.asarray(matrix, dtype=float)
    potential = jnp.asarray(POWER_POTENTIAL if potential is None else potential, dtype=float)
    for value, name, strict in ((matrix, "matrix", True), (potential, "potential", False)):
        if value.shape != (2, 2):
            raise ValueError(f"{name} must have shape (2, 2), got {value.shape}.")
        check_finite(value, name)
        eigenvalues = jnp.linalg.eigvalsh(0.5 * (value + value.T))
        low = float(jnp.min(eigenvalues))
        if (
            not bool(jnp.allclose(value, value.T, rtol=1e-5, atol=1e-6))
            or low < 0
            or (strict and low <= 0)
        ):
            kind = "positive definite" if strict else "positive semi-definite"
            raise ValueError(f"{name} must be symmetric {kind}.")
    return _power_problem(check_key(key), matrix, potential, jnp.asarray(p), n, n_pairs, n_test)


@functools.partial(jax.jit, static_argnames=("n", "n_pairs", "n_test"))
def _power_problem(key, matrix, potential, p, n, n_pairs, n_test):
    ky, ko, kt = jax.random.split(key, 3)
    y = jax.random.normal(ky, (n, 2))
    y_other = jax.random.normal(ko, (n, 2))
    x = power_inverse_map(jnp.concatenate([y[:n_pairs], y_other[n_pairs:]]), matrix, potential, p)
    y_test = jax.random.normal(kt, (n_test, 2))
    x_test = power_inverse_map(y_test, matrix, potential, p)
    return PowerCostProblem(x, y, x_test, y_test, matrix, potential, p)
