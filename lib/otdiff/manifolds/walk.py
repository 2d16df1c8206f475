"""The geodesic random walk: Euler-Maruyama for an SDE on a manifold, as one ``lax.scan``.

An SDE on a Riemannian manifold :math:`\\mathcal M`,

.. math::

    dX_t = f(X_t, t)\\,dt + dB^{\\mathcal M}_t, \\qquad t \\in [0, T],

with :math:`B^{\\mathcal M}` Brownian motion (generator :math:`\\tfrac12\\Delta_{\\mathcal M}`) and a
tangent drift :math:`f`, is discretised with :math:`K` steps of size :math:`\\gamma = T/K` by the
geodesic random walk :cite:`jorgensen1975central`, :cite:`debortoli2022riemannian`:

.. math::

    X_{k+1} = \\exp_{X_k}\\big(\\gamma\\,f(X_k, t_k) + \\sqrt{\\gamma}\\,Z_k\\big),
    \\qquad t_k = k\\gamma, \\qquad Z_k \\sim \\mathcal N(0, I_{T_{X_k}\\mathcal M}),

the Euclidean Euler-Maruyama step taken in the tangent space and mapped back by the exponential
map, so every iterate lies on the manifold. It converges weakly to the SDE as :math:`\\gamma \\to 0`
(first order). A walk with zero drift is Brownian motion; on a compact manifold its law tends to
the uniform distribution.

The same function runs a *backward* process: the drift is then the backward drift
:math:`b(y, s)` in the backward time :math:`s = T - t` (see :mod:`otdiff.manifolds.bridge`).
:func:`langevin_drift` builds the drift :math:`\\tfrac12\\nabla_{\\mathcal M}\\log\\pi` of the
Riemannian Langevin process whose invariant law is :math:`\\pi`, a reference process with a
chosen limit.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_int, check_positive, guard_finite, guard_positive
from otdiff.manifolds.base import Manifold

__all__ = ["WalkResult", "geodesic_random_walk", "time_grid", "langevin_drift"]

Drift = Callable[[jax.Array, jax.Array], jax.Array]


class WalkResult(NamedTuple):
    """A geodesic random walk.

    Attributes:
        x: the final points, ``(n, D)``.
        path: every state ``(n_steps + 1, n, D)`` (index ``k`` at time ``t_k``), or ``None``
            when ``keep_path=False``.
        times: the grid :math:`t_k = kT/K`, ``(n_steps + 1,)``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    x: jax.Array
    path: jax.Array | None
    times: jax.Array


def time_grid(horizon, n_steps: int) -> jax.Array:
    """The walk's times :math:`t_k = k\\,T/K`, :math:`k = 0, \\dots, K` (``n_steps`` :math:`= K` static).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    check_positive(horizon, "horizon")
    n_steps = check_int(n_steps, "n_steps", low=1)
    return jnp.asarray(horizon, jnp.result_type(float)) * jnp.arange(n_steps + 1) / n_steps


def geodesic_random_walk(
    key: jax.Array,
    manifold: Manifold,
    x0: jax.Array,
    horizon,
    n_steps: int,
    drift: Drift | None = None,
    *,
    keep_path: bool = True,
) -> WalkResult:
    """Simulate :math:`K` = ``n_steps`` steps of the geodesic random walk from every point of ``x0``.

    Args:
        key: a JAX random key; step ``k`` uses ``fold_in(key, k)``.
        manifold: the :class:`~otdiff.manifolds.Manifold`.
        x0: starting points ``(n, D)`` on the manifold.
        horizon: the final time :math:`T > 0` (dynamic: a slider move does not recompile).
        n_steps: the number of steps :math:`K \\ge 1` (static: it sets the path's shape).
        drift: ``drift(x, t) -> (D,)`` at one point ``x`` ``(D,)`` and a scalar time (projected
            onto the tangent space by the walk); ``None`` for Brownian motion.
        keep_path: return every state (``path``) or only the last (static).

    Returns:
        A :class:`WalkResult`.

    Raises:
        ValueError: for points off the manifold, ``horizon <= 0`` or ``n_steps < 1``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    if not isinstance(manifold, Manifold):
        raise TypeError(f"manifold must be an otdiff.manifolds.Manifold, got {manifold!r}.")
    x0 = manifold.check_points(x0, "x0")
    check_positive(horizon, "horizon")
    n_steps = check_int(n_steps, "n_steps", low=1)
    if drift is not None and not callable(drift):
        raise TypeError(f"drift must be a callable drift(x, t) or None, got {drift!r}.")
    # arrays are traced (a new horizon or new network weights never recompile); the manifold,
    # n_steps, a plain-function drift and keep_path are static
    horizon = jnp.asarray(horizon, x0.dtype)
    return _walk(key, manifold, x0, horizon, n_steps, drift, keep_path)


@eqx.filter_jit
def _walk(key, manifold, x0, horizon, n_steps, drift, keep_path):
    horizon = guard_positive(jnp.asarray(horizon, x0.dtype), "horizon")
    gamma = horizon / n_steps
    times = time_grid(horizon, n_steps).astype(x0.dtype)
    batch_drift = None if drift is None else jax.vmap(drift, in_axes=(0, None))

    def step(x, k):
        noise = manifold.random_normal_tangent(jax.random.fold_in(key, k), x)
        v = jnp.sqrt(gamma) * noise
        if batch_drift is not None:
            v = v + gamma * manifold.to_tangent(x, batch_drift(x, times[k]))
        x = manifold.exp(x, v)
        return x, (x if keep_path else None)

    x, path = jax.lax.scan(step, x0, jnp.arange(n_steps))
    x = guard_finite(x, "the walk's final points")
    if keep_path:
        path = jnp.concatenate([x0[None], path], axis=0)
    return WalkResult(x, path if keep_path else None, times)


def langevin_drift(manifold: Manifold, log_prob: Callable[[jax.Array], jax.Array]) -> Drift:
    """The drift :math:`f(x, t) = \\tfrac12\\nabla_{\\mathcal M}\\log\\pi(x)` of the Langevin process
    :math:`dX = \\tfrac12\\nabla_{\\mathcal M}\\log\\pi(X)\\,dt + dB^{\\mathcal M}` (invariant law
    :math:`\\pi`), from an ambient formula ``log_prob(x)`` of one point (differentiated by JAX).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    if not isinstance(manifold, Manifold):
        raise TypeError(f"manifold must be an otdiff.manifolds.Manifold, got {manifold!r}.")
    grad = jax.grad(log_prob)

    def drift(x, t):
        del t
        return 0.5 * manifold.to_tangent(x, grad(x))

    return drift
