"""Exact log-likelihoods of a diffusion model by the probability-flow ODE.

Along the probability-flow ODE :math:`\\dot x = v(x, t)`, :math:`v = f - \\tfrac12 g^2 s`
(:meth:`otdiff.diffusion.AbstractProcess.ode_drift`), the log-density obeys the instantaneous
change of variables, :math:`\\tfrac{d}{dt}\\log p_t(x_t) = -\\nabla\\!\\cdot v(x_t, t)`, so

.. math::

    \\log p_{t_{\\min}}(x) = \\log p_1(x_1) + \\int_{t_{\\min}}^{1}\\nabla\\!\\cdot v(x_t, t)\\,dt,

integrated forwards from the data point :math:`x` at :math:`t_{\\min}` together with
:math:`x_t`, with :math:`p_1` the process's reference law :cite:`song2021scorebased` (for the VP
processes :math:`\\nabla\\!\\cdot v = -\\tfrac12\\beta(t)(d + \\nabla\\!\\cdot s)`). The
divergence of the whole velocity is exact (the trace of its Jacobian, ``d`` forward-mode passes)
or Hutchinson's unbiased estimate :math:`z^\\top (\\partial v/\\partial x) z` with one
Rademacher ``z`` per point, fixed along the path (one forward-mode pass), for high dimension.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from otdiff._checks import (
    check_choice,
    check_int,
    check_key,
    check_points,
    guard_finite,
    guard_in_range,
    unguarded,
)
from otdiff.diffusion.processes import AbstractProcess
from otdiff.diffusion.samplers import _guard_solved

__all__ = ["DIVERGENCES", "log_likelihood", "divergence"]

DIVERGENCES = ("exact", "hutchinson")


def divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array, z: jax.Array | None = None):
    """:math:`\\nabla\\!\\cdot f(x)`: exact if ``z`` is ``None``, else Hutchinson's :math:`z^\\top J z`.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    if z is None:
        return jnp.trace(jax.jacfwd(fn)(x))
    _, jz = jax.jvp(fn, (x,), (z,))
    return jnp.vdot(z, jz)


def log_likelihood(
    score: Callable[[jax.Array, jax.Array], jax.Array],
    process: AbstractProcess,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    method: str = "exact",
    t_min: float = 1e-3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> jax.Array:
    """The model's log-density at the points ``x`` (shape ``(n, d)``), at time ``t_min``.

    Args:
        score: per-point score ``score(x, t)``.
        process: the forward process.
        x: the points, ``(n, d)``.
        key: required for ``method="hutchinson"`` (the probe vectors).
        method: ``"exact"`` (Jacobian trace) or ``"hutchinson"`` (static).
        t_min: where the ODE starts, in ``(0, 1)``; compare with the data density noised to
            ``t_min`` (for exact mixtures: :func:`otdiff.data.exact_log_prob` at ``t_min``).
        rtol, atol: the adaptive Tsit5 solver's tolerances.
        max_steps: the solver's step budget (static).

    Returns:
        ``(n,)`` log-densities.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    x = check_points(x, "x")
    t_min = guard_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    check_choice(method, "method", DIVERGENCES)
    max_steps = check_int(max_steps, "max_steps", low=1)
    if key is not None:
        check_key(key)
    if method == "hutchinson":
        if key is None:
            raise ValueError("key is required for method='hutchinson' (the probe vectors).")
        probes = jax.random.rademacher(key, x.shape, dtype=x.dtype)
    else:
        probes = jnp.zeros_like(x)

    def one_point(x0, probe):
        def field(t, state, args):
            y, _ = state

            def velocity(u):
                return process.ode_drift(u, t, score(u, t))

            div_v = divergence(velocity, y, None if method == "exact" else probe)
            return velocity(y), div_v

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            t0=t_min,
            t1=1.0,
            dt0=None,
            y0=(x0, jnp.zeros((), x0.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=max_steps,
            throw=False,  # checked below, outside the solve: see probability_flow
        )
        return sol

    with unguarded():
        sol = jax.vmap(one_point)(x, probes)
    y1, int_div = (ys[:, -1] for ys in _guard_solved(sol, "log_likelihood"))
    return guard_finite(process.prior_log_prob(y1) + int_div, "the log-likelihoods")
