"""The heat kernel of Brownian motion on :math:`S^2`: density, score and exact samples.

Brownian motion on a manifold has generator :math:`\\tfrac12\\Delta` (the geodesic random walk of
:mod:`otdiff.manifolds.walk` converges to it). On :math:`S^2` the eigenfunctions of the Laplacian
are the spherical harmonics, with eigenvalues :math:`-l(l+1)`, and the addition theorem sums each
eigenspace into a Legendre polynomial, so the transition density from :math:`x_0` after time
:math:`t` is a function of :math:`u = x\\cdot x_0` only :cite:`debortoli2022riemannian`:

.. math::

    p_t(x \\mid x_0) = \\sum_{l=0}^{\\infty} \\frac{2l+1}{4\\pi}\\,e^{-l(l+1)t/2}\\,P_l(x\\cdot x_0).

**Truncation.** Keeping the terms :math:`l < L` (``n_terms``) errs by at most
:math:`\\varepsilon_L(t) = \\sum_{l \\ge L}\\frac{2l+1}{4\\pi}e^{-l(l+1)t/2}` uniformly in
:math:`x` (since :math:`|P_l| \\le 1`); :func:`truncation_error` evaluates this bound and
:func:`n_terms_for` picks the smallest :math:`L` that meets a tolerance at the smallest time used.
Small times need many terms (:math:`L \\approx \\sqrt{2\\log(1/\\mathrm{tol})/t}`): the series
converges fast for large :math:`t` and slowly as :math:`t \\to 0`.

**Score.** The Riemannian gradient in :math:`x` is

.. math::

    \\nabla_x\\log p_t(x \\mid x_0) = \\frac{\\sum_l c_l P_l'(u)}{\\sum_l c_l P_l(u)}\\,(x_0 - u\\,x),

with the derivatives from :math:`P'_{l+1} = P'_{l-1} + (2l+1)P_l`. Far from :math:`x_0` at small
:math:`t` the density is below float32 resolution of the alternating sum; where the series falls
below ``1e-4`` of the peak density :math:`1/(2\\pi t)` the score switches to Varadhan's leading term
:math:`\\log_x(x_0)/t` (a set of probability below :math:`2\\cdot 10^{-4}` under the kernel).

**Exact samples.** By symmetry :math:`x = u\\,x_0 + \\sqrt{1-u^2}\\,v` with :math:`v` uniform on the
unit circle orthogonal to :math:`x_0`, and the law of :math:`\\theta = \\arccos u` has the
distribution function (from :math:`\\int_u^1 P_l = (P_{l-1}(u) - P_{l+1}(u))/(2l+1)`)

.. math::

    F_t(\\theta) = \\mathbb P(\\Theta \\le \\theta) = \\frac{1 - u}{2}
    + \\frac12\\sum_{l \\ge 1} e^{-l(l+1)t/2}\\,\\big(P_{l-1}(u) - P_{l+1}(u)\\big),

which :func:`sample_heat_kernel` inverts by bisection in :math:`\\theta` (36 halvings: below
float32 resolution). Denoising score matching on :math:`S^2` needs exactly these two pieces.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_int, check_key, check_positive, check_sphere_points, check_times

__all__ = [
    "heat_kernel",
    "log_heat_kernel",
    "heat_kernel_score",
    "sample_heat_kernel",
    "heat_kernel_cdf",
    "truncation_error",
    "n_terms_for",
    "DEFAULT_N_TERMS",
]

#: Terms kept by default: the truncation error is below 1e-6 for t >= 0.0065 (see n_terms_for).
DEFAULT_N_TERMS = 64
_BISECTIONS = 36
_VARADHAN_BELOW = 1e-4


def truncation_error(t: float, n_terms: int) -> float:
    """The bound :math:`\\varepsilon_L(t)` on :math:`|p_t - p_t^{(L)}|` for ``n_terms`` :math:`= L` (float64).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    check_positive(t, "t")
    n_terms = check_int(n_terms, "n_terms", low=1)
    extra = int(60.0 / math.sqrt(t)) + 100  # e^{-l(l+1)t/2} < e^{-1800} beyond, i.e. zero
    deg = np.arange(n_terms, n_terms + extra, dtype=np.float64)
    return float(np.sum((2 * deg + 1) / (4 * np.pi) * np.exp(-deg * (deg + 1) * t / 2)))


def n_terms_for(t_min: float, tol: float = 1e-6) -> int:
    """The smallest ``n_terms`` whose :func:`truncation_error` is at most ``tol`` for all ``t >= t_min``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    check_positive(t_min, "t_min")
    check_positive(tol, "tol")
    n = 1
    while truncation_error(t_min, n) > tol:
        n += max(1, n // 8)
    while n > 1 and truncation_error(t_min, n - 1) <= tol:
        n -= 1
    return n


def _check_times(t, name: str = "t"):
    """Times > 0 (a scalar or an array; values checked on concrete input only)."""
    return check_times(t, name, high=math.inf, low_open=True)


def _check_s2(x, name):
    """Finite points of S^2, any batch shape ``(..., 3)``."""
    return check_sphere_points(x, name, batch=True)


def _sums(u, t, n_terms: int):
    """:math:`\\sum_l c_l P_l(u)`, :math:`\\sum_l c_l P_l'(u)` with :math:`c_l = (2l+1)/(4\\pi) e^{-l(l+1)t/2}`,
    and :math:`\\sum_{l\\ge1} e^{-l(l+1)t/2}(P_{l-1} - P_{l+1})(u)`, by the three-term recurrences."""
    u = jnp.asarray(u)
    t = jnp.asarray(t, u.dtype)
    ones, zeros = jnp.ones_like(u), jnp.zeros_like(u)
    c0 = 1.0 / (4 * math.pi)

    def body(carry, deg):
        p_prev, p, dp_prev, dp, s, ds, tail = carry  # P_{l-1}, P_l, P'_{l-1}, P'_l at u, l = deg
        decay = jnp.exp(-deg * (deg + 1) * t / 2)
        p_next = ((2 * deg + 1) * u * p - deg * p_prev) / (deg + 1)
        dp_next = dp_prev + (2 * deg + 1) * p
        c = (2 * deg + 1) / (4 * math.pi) * decay
        s, ds = s + c * p, ds + c * dp
        tail = tail + decay * (p_prev - p_next)
        return (p, p_next, dp, dp_next, s, ds, tail), None

    # l = 0 by hand (P_{-1} is not needed there), then l = 1 .. n_terms - 1 in the scan
    init = (ones, u, zeros, ones, c0 * ones, zeros, zeros)
    ls = jnp.arange(1, n_terms, dtype=u.dtype)
    (_, _, _, _, s, ds, tail), _ = jax.lax.scan(body, init, ls)
    return s, ds, tail


def _cosine(x, x0):
    return jnp.clip(jnp.sum(x * x0, axis=-1), -1.0, 1.0)


def heat_kernel(x, x0, t, *, n_terms: int = DEFAULT_N_TERMS) -> jax.Array:
    """The density :math:`p_t(x \\mid x_0)` on :math:`S^2`, for points ``x`` and ``x0`` ``(..., 3)``
    (broadcast) and a time ``t > 0`` (dynamic; broadcast against the points' batch shape).

    ``n_terms`` (static) sets the truncation; see :func:`truncation_error`.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    _check_s2(x, "x")
    _check_s2(x0, "x0")
    _check_times(t)
    n_terms = check_int(n_terms, "n_terms", low=1)
    u = _cosine(jnp.asarray(x), jnp.asarray(x0))
    s, _, _ = _sums(u, jnp.broadcast_to(t, u.shape), n_terms)
    return s


def log_heat_kernel(x, x0, t, *, n_terms: int = DEFAULT_N_TERMS) -> jax.Array:
    """:math:`\\log p_t(x \\mid x_0)`, floored at the float32 resolution of the series.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    p = heat_kernel(x, x0, t, n_terms=n_terms)
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def heat_kernel_score(x, x0, t, *, n_terms: int = DEFAULT_N_TERMS) -> jax.Array:
    """:math:`\\nabla_x\\log p_t(x \\mid x_0)`, tangent at ``x`` (shape of ``x`` and ``x0`` broadcast).

    Varadhan's :math:`\\log_x(x_0)/t` replaces the series where the density is below ``1e-4`` of
    its peak (see the module docstring).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    _check_s2(x, "x")
    _check_s2(x0, "x0")
    _check_times(t)
    n_terms = check_int(n_terms, "n_terms", low=1)
    x, x0 = jnp.broadcast_arrays(jnp.asarray(x), jnp.asarray(x0))
    u = _cosine(x, x0)
    t = jnp.broadcast_to(jnp.asarray(t, u.dtype), u.shape)
    s, ds, _ = _sums(u, t, n_terms)
    direction = x0 - u[..., None] * x  # the Riemannian gradient of u = x . x0
    reliable = s > _VARADHAN_BELOW / (2 * math.pi * t)
    ratio = jnp.where(reliable, ds / jnp.where(reliable, s, 1.0), 0.0)
    series = ratio[..., None] * direction
    # Varadhan: log_x(x0) / t, with log_x(x0) = theta * direction / |direction|
    sin = jnp.linalg.norm(direction, axis=-1, keepdims=True)
    theta = jnp.arctan2(sin, u[..., None])
    varadhan = (
        jnp.where(sin > 1e-12, theta / jnp.maximum(sin, 1e-12), 0.0) * direction / t[..., None]
    )
    return jnp.where(reliable[..., None], series, varadhan)


def heat_kernel_cdf(theta, t, *, n_terms: int = DEFAULT_N_TERMS) -> jax.Array:
    """:math:`F_t(\\theta) = \\mathbb P(d(X_t, x_0) \\le \\theta)` for Brownian motion on :math:`S^2`.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    _check_times(t)
    n_terms = check_int(n_terms, "n_terms", low=1)
    theta = jnp.asarray(theta, jnp.result_type(float))
    u = jnp.cos(theta)
    _, _, tail = _sums(u, jnp.broadcast_to(jnp.asarray(t, u.dtype), u.shape), n_terms)
    return jnp.sin(0.5 * theta) ** 2 + 0.5 * tail  # (1 - u)/2 = sin^2(theta/2), exactly


def sample_heat_kernel(key, x0, t, *, n_terms: int = DEFAULT_N_TERMS) -> jax.Array:
    """Exact samples of Brownian motion on :math:`S^2` at time ``t`` started from each point of ``x0``.

    Args:
        key: a JAX random key.
        x0: starting points ``(n, 3)`` on the sphere.
        t: the time, a scalar or one per point ``(n,)``, > 0 (dynamic).
        n_terms: terms of the series (static).

    Returns:
        ``(n, 3)`` points: the distance to ``x0`` inverts :func:`heat_kernel_cdf` by bisection,
        the direction is uniform.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    key = check_key(key)
    x0 = check_sphere_points(x0, "x0")
    _check_times(t)
    n_terms = check_int(n_terms, "n_terms", low=1)
    n = x0.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, x0.dtype), (n,))
    k_u, k_v = jax.random.split(key)
    target = jax.random.uniform(k_u, (n,), x0.dtype)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = heat_kernel_cdf(mid, t, n_terms=n_terms) < target
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(
        0, _BISECTIONS, bisect, (jnp.zeros((n,), x0.dtype), jnp.full((n,), math.pi, x0.dtype))
    )
    theta = 0.5 * (lo + hi)
    xi = jax.random.normal(k_v, x0.shape, x0.dtype)
    v = xi - jnp.sum(xi * x0, axis=-1, keepdims=True) * x0
    v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    x = jnp.cos(theta)[:, None] * x0 + jnp.sin(theta)[:, None] * v
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)
