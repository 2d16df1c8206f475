"""The sphere :math:`S^d = \\{x \\in \\mathbb R^{d+1} : \\|x\\| = 1\\}`: geometry, uniform and von Mises-Fisher laws.

**Geometry.** With the metric induced by :math:`\\mathbb R^{d+1}`, the tangent space at :math:`x`
is :math:`\\{v : x\\cdot v = 0\\}`, with projector :math:`P_x = I - xx^\\top`. Geodesics are great
circles, so for a tangent :math:`v` and points :math:`x, y`

.. math::

    \\exp_x(v) = \\cos\\|v\\|\\,x + \\frac{\\sin\\|v\\|}{\\|v\\|}\\,v, \\qquad
    \\log_x(y) = \\theta\\,\\frac{y - (x\\cdot y)\\,x}{\\|y - (x\\cdot y)\\,x\\|}, \\qquad
    d(x, y) = \\theta = \\operatorname{atan2}\\big(\\|y - (x\\cdot y)x\\|,\\ x\\cdot y\\big),

(``atan2`` rather than ``arccos``: accurate for nearby points). The logarithm is undefined at the
antipode :math:`y = -x` (every direction is a geodesic); it returns the zero vector there.
:meth:`Sphere.exp` renormalises its result, so points stay on the sphere to float round-off
after any number of steps. The volume is :math:`|S^d| = 2\\pi^{(d+1)/2}/\\Gamma((d+1)/2)`
(:math:`4\\pi` for :math:`S^2`).

**Von Mises-Fisher.** :math:`\\mathrm{vMF}(\\mu, \\kappa)` has density
:math:`C_d(\\kappa)\\,e^{\\kappa\\,\\mu\\cdot x}` with respect to the surface measure, mean direction
:math:`\\mu` and concentration :math:`\\kappa \\ge 0` (uniform at :math:`\\kappa = 0`), and

.. math::

    C_d(\\kappa)^{-1} = |S^{d-1}|\\int_0^\\pi e^{\\kappa\\cos\\varphi}\\sin^{d-1}\\varphi\\,d\\varphi,
    \\qquad C_2(\\kappa) = \\frac{\\kappa}{4\\pi\\sinh\\kappa},\\quad
    C_1(\\kappa) = \\frac{1}{2\\pi I_0(\\kappa)}.

The closed forms are used on :math:`S^1` and :math:`S^2`, a 256-node Gauss-Legendre rule in
:math:`\\varphi` otherwise. Samples follow Wood's algorithm :cite:`wood1994vmf`: the cosine
:math:`w = \\mu\\cdot x` is drawn (in closed form on :math:`S^2`,
:math:`w = 1 + \\kappa^{-1}\\log\\big(u + (1-u)e^{-2\\kappa}\\big)`; by exact rejection sampling
otherwise) and :math:`x = w\\mu + \\sqrt{1 - w^2}\\,v` with :math:`v` uniform on the unit sphere of
:math:`\\mu^\\perp`. :class:`VMFMixture` is a mixture of them with its exact log-density and
Riemannian score :math:`\\nabla_{S^d}\\log p = P_x\\nabla\\log p`.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import i0e, logsumexp

from otdiff._checks import check_int, check_nonnegative, check_weights, is_concrete
from otdiff.manifolds.base import Manifold

__all__ = [
    "Sphere",
    "vmf_log_normalizer",
    "vmf_log_prob",
    "vmf_sample",
    "VMFMixture",
    "vmf_mixture",
    "vmf_kde",
]

_EPS = 1e-12


class Sphere(Manifold):
    """The unit sphere :math:`S^d \\subset \\mathbb R^{d+1}` (see the module docstring).

    Args:
        dim: the intrinsic dimension :math:`d \\ge 1` (static; :math:`S^2` by default).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    dim: int = eqx.field(static=True)

    def __init__(self, dim: int = 2):
        self.dim = check_int(dim, "dim", low=1)

    @property
    def ambient_dim(self) -> int:
        return self.dim + 1

    def projection(self, x):
        x = jnp.asarray(x)
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)

    def to_tangent(self, x, v):
        return v - jnp.sum(x * v, axis=-1, keepdims=True) * x

    def exp(self, x, v):
        norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
        # sin(|v|)/|v| without dividing by zero: jnp.sinc(u) = sin(pi u)/(pi u)
        y = jnp.cos(norm) * x + jnp.sinc(norm / jnp.pi) * v
        return self.projection(y)

    def _normal_part(self, x, y):
        cos = jnp.sum(x * y, axis=-1, keepdims=True)
        return y - cos * x, cos

    def log(self, x, y):
        u, cos = self._normal_part(x, y)
        u = u - jnp.sum(x * u, axis=-1, keepdims=True) * x  # once more: tangent to round-off
        sin = jnp.linalg.norm(u, axis=-1, keepdims=True)
        theta = jnp.arctan2(sin, cos)
        # |u| = sin(theta); below float32 resolution the direction is noise: there theta/sin -> 1
        # for nearby points, and the antipode (every direction a geodesic) gets the zero vector
        small = sin <= 1e-6
        factor = jnp.where(small, jnp.where(cos > 0, 1.0, 0.0), theta / jnp.where(small, 1.0, sin))
        return factor * u

    def dist(self, x, y):
        u, cos = self._normal_part(x, y)
        return jnp.arctan2(jnp.linalg.norm(u, axis=-1), cos[..., 0])

    def random_uniform(self, key, n: int):
        n = check_int(n, "n", low=1)
        return self.projection(jax.random.normal(key, (n, self.ambient_dim)))

    def log_volume(self) -> float:
        p = self.dim + 1
        return math.log(2.0) + 0.5 * p * math.log(math.pi) - math.lgamma(0.5 * p)

    def tangent_projector(self, x):
        return jnp.eye(self.ambient_dim, dtype=jnp.result_type(x)) - jnp.outer(x, x)


# -- von Mises-Fisher ----------------------------------------------------------------------------

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(256)


def vmf_log_normalizer(dim: int, kappa) -> jax.Array:
    """:math:`\\log C_d(\\kappa)` of the vMF density on :math:`S^d` (see the module docstring).

    Args:
        dim: the sphere's intrinsic dimension :math:`d \\ge 1` (static).
        kappa: concentration(s) :math:`\\ge 0` (a dynamic scalar or array).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    dim = check_int(dim, "dim", low=1)
    kappa = jnp.asarray(kappa, jnp.result_type(float))
    if dim == 1:
        return -math.log(2 * math.pi) - jnp.log(i0e(kappa)) - kappa
    if dim == 2:
        k = jnp.maximum(kappa, 1e-6)  # C_2 -> 1/(4 pi) as kappa -> 0; the error below 1e-6
        return jnp.log(k) - math.log(2 * math.pi) - k - jnp.log(-jnp.expm1(-2.0 * k))
    phi = 0.5 * math.pi * (_GL_NODES + 1.0)  # Gauss-Legendre on [0, pi]
    w = 0.5 * math.pi * _GL_WEIGHTS
    log_sphere = math.log(2.0) + 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim)  # |S^{d-1}|
    integrand = kappa[..., None] * (jnp.cos(phi) - 1.0) + (dim - 1) * jnp.log(jnp.sin(phi))
    return -log_sphere - kappa - logsumexp(integrand, b=w, axis=-1)


def vmf_log_prob(x, mu, kappa) -> jax.Array:
    """The vMF log-density at the points ``x`` ``(..., d+1)`` with mean direction ``mu`` ``(d+1,)``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    x, mu = jnp.asarray(x), jnp.asarray(mu)
    dim = x.shape[-1] - 1
    return vmf_log_normalizer(dim, kappa) + kappa * jnp.sum(x * mu, axis=-1)


def _vmf_cosine(key, kappa, n: int, dim: int):
    """``n`` draws of :math:`w = \\mu\\cdot x` for vMF(mu, kappa) on S^dim (Wood 1994)."""
    kappa = jnp.asarray(kappa, jnp.result_type(float))
    if dim == 2:
        u = jax.random.uniform(key, (n,), minval=1e-12, maxval=1.0)
        k = jnp.maximum(kappa, 1e-6)
        w = 1.0 + jnp.log(u + (1.0 - u) * jnp.exp(-2.0 * k)) / k
        return jnp.clip(w, -1.0, 1.0)
    m = dim  # = p - 1 for the ambient dimension p
    b = m / (2.0 * kappa + jnp.sqrt(4.0 * kappa**2 + m**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * jnp.log(1.0 - x0**2)

    def propose(k):
        kz, ku = jax.random.split(k)
        z = jax.random.beta(kz, 0.5 * m, 0.5 * m, (n,))
        w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = jax.random.uniform(ku, (n,))
        ok = kappa * w + m * jnp.log(1.0 - x0 * w) - c >= jnp.log(u)
        return w, ok

    def cond(state):
        return ~jnp.all(state[2])

    def body(state):
        i, w, ok = state
        w_new, ok_new = propose(jax.random.fold_in(key, i))
        take = ~ok & ok_new
        return i + 1, jnp.where(take, w_new, w), ok | ok_new

    w0, ok0 = propose(jax.random.fold_in(key, 0))
    _, w, _ = jax.lax.while_loop(cond, body, (jnp.asarray(1), w0, ok0))
    return jnp.clip(w, -1.0, 1.0)


def vmf_sample(key, mu, kappa, n: int) -> jax.Array:
    """``n`` samples of :math:`\\mathrm{vMF}(\\mu, \\kappa)` on :math:`S^d`, shape ``(n, d+1)``.

    Args:
        key: a JAX random key.
        mu: the mean direction, a unit vector ``(d+1,)`` (normalised here).
        kappa: the concentration :math:`\\ge 0` (dynamic).
        n: the number of samples (static).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    n = check_int(n, "n", low=1)
    mu = jnp.asarray(mu)
    if mu.ndim != 1 or mu.shape[0] < 2:
        raise ValueError(f"mu must be a vector of shape (d+1,) with d >= 1, got shape {mu.shape}.")
    check_nonnegative(kappa, "kappa")
    mu = mu / jnp.linalg.norm(mu)
    kw, kv = jax.random.split(key)
    w = _vmf_cosine(kw, kappa, n, mu.shape[0] - 1)
    xi = jax.random.normal(kv, (n, mu.shape[0]))
    v = xi - (xi @ mu)[:, None] * mu
    v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), _EPS)
    x = w[:, None] * mu + jnp.sqrt(jnp.maximum(1.0 - w**2, 0.0))[:, None] * v
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class VMFMixture(eqx.Module):
    """A mixture of von Mises-Fisher laws on :math:`S^d`: exact samples, log-density and score.

    Attributes:
        means: the unit mean directions, ``(K, d+1)``.
        kappas: the concentrations, ``(K,)``.
        weights: the mixture weights, ``(K,)``, summing to one.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    means: jax.Array
    kappas: jax.Array
    weights: jax.Array

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def sphere(self) -> Sphere:
        return Sphere(self.means.shape[1] - 1)

    def component_log_probs(self, x) -> jax.Array:
        """``log w_k + log vMF(x; mu_k, kappa_k)`` for every point and component, ``(..., K)``."""
        x = jnp.asarray(x)
        dim = self.means.shape[1] - 1
        return (
            jnp.log(self.weights)
            + vmf_log_normalizer(dim, self.kappas)
            + self.kappas * (x @ self.means.T)
        )

    def log_prob(self, x) -> jax.Array:
        """The mixture's log-density at ``x`` ``(..., d+1)`` (w.r.t. the surface measure)."""
        return logsumexp(self.component_log_probs(x), axis=-1)

    def score(self, x) -> jax.Array:
        """The Riemannian score :math:`P_x\\nabla\\log p(x)` at one point or a batch ``(..., d+1)``."""
        resp = jax.nn.softmax(self.component_log_probs(x), axis=-1)
        grad = (resp * self.kappas) @ self.means
        return self.sphere.to_tangent(x, grad)

    def sample(self, key, n: int) -> jax.Array:
        """``n`` exact samples, shape ``(n, d+1)``."""
        n = check_int(n, "n", low=1)
        k_comp, k_draw = jax.random.split(key)
        comp = jax.random.choice(k_comp, self.n_components, (n,), p=self.weights)
        keys = jax.random.split(k_draw, self.n_components)
        draws = jax.vmap(lambda k, mu, kap: vmf_sample(k, mu, kap, n))(
            keys, self.means, self.kappas
        )  # (K, n, d+1): every component drawn n times, one kept per point
        return draws[comp, jnp.arange(n)]


def vmf_mixture(means, kappa, weights=None) -> VMFMixture:
    """A :class:`VMFMixture` with checked inputs.

    Args:
        means: mean directions ``(K, d+1)`` (each normalised to unit length).
        kappa: one concentration for all components or one per component, each :math:`\\ge 0`.
        weights: mixture weights ``(K,)`` summing to one (uniform by default).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    means = jnp.asarray(means, jnp.result_type(float))
    if means.ndim != 2 or means.shape[1] < 2:
        raise ValueError(f"means must have shape (K, d+1) with d >= 1, got {means.shape}.")
    norms = jnp.linalg.norm(means, axis=1, keepdims=True)
    if is_concrete(norms) and np.any(np.asarray(norms) < 1e-8):
        raise ValueError("means must be non-zero vectors (mean directions).")
    kappas = jnp.broadcast_to(jnp.asarray(kappa, means.dtype), (means.shape[0],))
    if is_concrete(kappas):
        arr = np.asarray(kappas)
        if not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise ValueError(f"kappa must be finite and >= 0, got {kappa!r}.")
    w = check_weights(weights, means.shape[0], "weights").astype(means.dtype)
    return VMFMixture(means / norms, kappas, w)


def vmf_kde(points, kappa: float = 20.0):
    """A kernel density estimate on :math:`S^d` with the vMF kernel: ``density(x) -> (m,)``.

    .. math::

        \\hat p(x) = \\frac1n\\sum_{i=1}^n C_d(\\kappa)\\,e^{\\kappa\\,x\\cdot x_i},

    a probability density on the sphere (each kernel integrates to one); :math:`\\kappa^{-1/2}` is
    the angular bandwidth. Used to draw samples as densities on the globe.

    Args:
        points: the sample ``(n, d+1)`` on the unit sphere.
        kappa: the kernel's concentration (> 0).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[0] < 1:
        raise ValueError(f"points must have shape (n, d+1), got {points.shape}.")
    check_nonnegative(kappa, "kappa")
    log_c = vmf_log_normalizer(points.shape[1] - 1, kappa)

    def density(x):
        x = jnp.asarray(x, points.dtype)
        return jnp.mean(jnp.exp(log_c + kappa * (x @ points.T)), axis=-1)

    return density
