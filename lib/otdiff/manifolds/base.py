"""The interface a manifold implements: an embedded Riemannian manifold :math:`\\mathcal M \\subset \\mathbb R^D`.

Points are arrays of shape ``(..., D)`` in the ambient space (extrinsic coordinates), tangent
vectors at ``x`` are ambient vectors ``v`` with :math:`P_x v = v`, where :math:`P_x` is the
orthogonal projection onto :math:`T_x\\mathcal M`, and the metric is the one induced by the
ambient Euclidean inner product. Everything the diffusion code needs is expressed through:

* :meth:`Manifold.to_tangent` (the projector :math:`P_x`), :meth:`Manifold.projection` (the
  nearest point of :math:`\\mathcal M`);
* :meth:`Manifold.exp` and :meth:`Manifold.log` (the exponential map and its inverse),
  :meth:`Manifold.dist` (the geodesic distance);
* :meth:`Manifold.random_normal_tangent` (a standard Gaussian on :math:`T_x\\mathcal M`),
  :meth:`Manifold.random_uniform` and :meth:`Manifold.log_volume` (the uniform distribution of a
  compact manifold).

From these the base class derives the Riemannian **divergence** of a vector field given by an
ambient formula :math:`v : \\mathbb R^D \\to \\mathbb R^D` that is tangent on :math:`\\mathcal M`:
for an orthonormal basis :math:`(e_i)` of :math:`T_x\\mathcal M`,

.. math::

    \\operatorname{div}_{\\mathcal M} v(x) = \\sum_i \\langle D v(x)\\,e_i, e_i\\rangle
    = \\operatorname{tr}\\big(P_x\\,J_v(x)\\,P_x\\big) = \\operatorname{tr}\\big(P_x\\,J_v(x)\\big),

with :math:`J_v` the ambient Jacobian (only its action on tangent directions matters, so any
smooth extension of the field off the manifold gives the same value). :meth:`Manifold.divergence`
computes it exactly (``D`` forward-mode passes, for small ``D``) or by Hutchinson's unbiased
estimate :math:`z^\\top J_v z` with a tangent probe :math:`z = P_x\\xi`, :math:`\\xi` Rademacher, so
that :math:`\\mathbb E[zz^\\top] = P_x` :cite:`hutchinson1989trace` (one forward-mode pass, for
large ``D``). Score matching on manifolds needs it :cite:`debortoli2022riemannian`.

A new manifold (a torus, SO(3), a product of spheres) subclasses :class:`Manifold`, implements the
abstract methods, and every sampler, loss and bridge of :mod:`otdiff.manifolds` works on it.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_points, is_concrete

__all__ = ["Manifold", "DIVERGENCES"]

#: The two ways :meth:`Manifold.divergence` computes a divergence.
DIVERGENCES = ("exact", "hutchinson")


class Manifold(eqx.Module):
    """An embedded Riemannian manifold (abstract; see the module docstring).

    Subclasses hold only static Python values (their dimensions), so a manifold is a pytree with
    no array leaves: it can be passed to jitted functions and compared for equality.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    #: The intrinsic dimension :math:`d` (a static int).
    dim: eqx.AbstractVar[int]
    #: The dimension :math:`D` of the ambient space the points live in (a static int).
    ambient_dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def projection(self, x: jax.Array) -> jax.Array:
        """The nearest point of the manifold to the ambient point(s) ``x``."""

    @abc.abstractmethod
    def to_tangent(self, x: jax.Array, v: jax.Array) -> jax.Array:
        """:math:`P_x v`: the orthogonal projection of ambient vectors ``v`` onto :math:`T_x\\mathcal M`."""

    @abc.abstractmethod
    def exp(self, x: jax.Array, v: jax.Array) -> jax.Array:
        """The exponential map :math:`\\exp_x(v)`: follow the geodesic from ``x`` with velocity ``v`` for unit time."""

    @abc.abstractmethod
    def log(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The logarithm :math:`\\log_x(y)`: the tangent vector at ``x`` with :math:`\\exp_x(\\log_x y) = y`."""

    @abc.abstractmethod
    def dist(self, x: jax.Array, y: jax.Array) -> jax.Array:
        """The geodesic distance between ``x`` and ``y``."""

    @abc.abstractmethod
    def random_uniform(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` points drawn from the normalised volume measure, shape ``(n, D)``."""

    @abc.abstractmethod
    def log_volume(self) -> float:
        """:math:`\\log \\operatorname{vol}(\\mathcal M)`; the uniform log-density is its negative."""

    # -- derived ---------------------------------------------------------------------------
    def inner(self, x: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
        """The metric :math:`g_x(u, v)`: the ambient inner product of tangent vectors."""
        del x
        return jnp.sum(u * v, axis=-1)

    def squared_norm(self, x: jax.Array, v: jax.Array) -> jax.Array:
        """:math:`\\|v\\|^2_{g_x}`."""
        return self.inner(x, v, v)

    def random_normal_tangent(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """A standard Gaussian vector of :math:`T_x\\mathcal M` for each point of ``x`` (same shape).

        :math:`P_x\\xi` with :math:`\\xi \\sim \\mathcal N(0, I_D)` has covariance :math:`P_x`: the
        standard Gaussian of the tangent space, for an orthogonal projector.
        """
        return self.to_tangent(x, jax.random.normal(key, jnp.shape(x), jnp.result_type(x)))

    def uniform_log_prob(self, x: jax.Array) -> jax.Array:
        """The log-density of the uniform distribution at ``x`` (shape ``x.shape[:-1]``)."""
        return jnp.full(jnp.shape(x)[:-1], -self.log_volume(), jnp.result_type(x))

    def divergence(
        self,
        fn: Callable[[jax.Array], jax.Array],
        x: jax.Array,
        z: jax.Array | None = None,
    ) -> jax.Array:
        """:math:`\\operatorname{div}_{\\mathcal M} v(x)` of a tangent field ``fn`` at one point ``x`` ``(D,)``.

        Args:
            fn: the field's ambient formula ``fn(x) -> (D,)``, tangent on the manifold (project
                a network's output with :meth:`to_tangent` *before* taking the divergence).
            x: one point of the manifold, shape ``(D,)``.
            z: ``None`` for the exact divergence :math:`\\operatorname{tr}(P_x J)`, or a tangent
                probe for Hutchinson's estimate :math:`z^\\top J z` (see
                :meth:`hutchinson_probe`).
        """
        if z is None:
            jac = jax.jacfwd(fn)(x)
            return jnp.sum(self.tangent_projector(x) * jac.T)
        _, jz = jax.jvp(fn, (x,), (z,))
        return jnp.vdot(z, jz)

    def hutchinson_probe(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """A tangent Rademacher probe :math:`z = P_x\\xi`, :math:`\\xi \\in \\{\\pm 1\\}^D`, so :math:`\\mathbb E[zz^\\top] = P_x`."""
        xi = jax.random.rademacher(key, jnp.shape(x), jnp.result_type(x))
        return self.to_tangent(x, xi)

    def tangent_projector(self, x: jax.Array) -> jax.Array:
        """The matrix :math:`P_x` of :meth:`to_tangent` at one point ``x`` ``(D,)``."""
        eye = jnp.eye(self.ambient_dim, dtype=jnp.result_type(x))
        return jax.vmap(lambda e: self.to_tangent(x, e), out_axes=1)(eye)

    def belongs(self, x: jax.Array, atol: float = 1e-4) -> jax.Array:
        """Whether each point of ``x`` lies on the manifold (within ``atol`` of its projection)."""
        return jnp.max(jnp.abs(self.projection(x) - x), axis=-1) <= atol

    def check_points(self, x, name: str, *, atol: float = 1e-4, min_points: int = 1) -> jax.Array:
        """A finite ``(n, D)`` array of points on the manifold, or a ``ValueError`` naming ``name``.

        The distance check runs on concrete values only (outside ``jit``), like every eager check
        of ``otdiff._checks``.
        """
        x = check_points(x, name, min_points=min_points)
        if x.shape[1] != self.ambient_dim:
            raise ValueError(
                f"{name} must have shape (n, {self.ambient_dim}) for {self!r}, got {x.shape}."
            )
        if is_concrete(x):
            with jax.ensure_compile_time_eval():  # concrete input inside a trace: compute now
                projected = np.asarray(self.projection(x))
            gap = np.max(np.abs(projected - np.asarray(x)), axis=-1)
            if np.any(gap > atol):
                worst = float(gap.max())
                raise ValueError(
                    f"{name} must lie on {self!r} (within {atol:g}); {int(np.sum(gap > atol))} "
                    f"point(s) do not, the farthest by {worst:.3g}. Project them first "
                    "(manifold.projection)."
                )
        return x

    def check_tangent(self, x: jax.Array, v, name: str, *, atol: float = 1e-4) -> jax.Array:
        """Vectors ``v`` (same shape as ``x``) tangent at ``x``, or a ``ValueError`` naming ``name``."""
        v = jnp.asarray(v)
        if v.shape != jnp.shape(x):
            raise ValueError(
                f"{name} must have the shape of its base points {jnp.shape(x)}, got {v.shape}."
            )
        if is_concrete(v) and is_concrete(x):
            with jax.ensure_compile_time_eval():
                normal = np.asarray(v) - np.asarray(self.to_tangent(x, v))
            if np.any(~np.isfinite(np.asarray(v))):
                raise ValueError(f"{name} contains NaN or infinite values.")
            if np.any(np.abs(normal) > atol * (1 + np.abs(np.asarray(v)))):
                raise ValueError(f"{name} must be tangent at its base points (P_x v = v).")
        return v
