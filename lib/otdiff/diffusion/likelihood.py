"""Exact log-likelihoods of a diffusion model by the probability-flow ODE.

Along the probability-flow ODE :math:`\\dot x = v(x, t)` the log-density obeys the instantaneous
change of variables, :math:`\\tfrac{d}{dt}\\log p_t(x_t) = -\\nabla\\!\\cdot v(x_t, t)`, so

.. math::

    \\log p_{t_{\\min}}(x) = \\log p_1(x_1) + \\int_{t_{\\min}}^{1}\\nabla\\!\\cdot v(x_t, t)\\,dt,
    \\qquad \\nabla\\!\\cdot v = -\\tfrac12\\beta(t)\\big(d + \\nabla\\!\\cdot s(x, t)\\big),

integrated forwards from the data point :math:`x` at :math:`t_{\\min}` together with
:math:`x_t`, with :math:`p_1 \\approx \\mathcal N(0, I)` :cite:`song2021scorebased`. The
divergence is exact (the trace of the Jacobian, ``d`` forward-mode passes) or Hutchinson's
unbiased estimate :math:`z^\\top (\\partial s/\\partial x) z` with one Rademacher ``z`` per
point, fixed along the path (one forward-mode pass), for high dimension.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp

from otdiff._checks import check_in_range, check_int, check_points

__all__ = ["DIVERGENCES", "log_likelihood", "divergence"]

DIVERGENCES = ("exact", "hutchinson")


def divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array, z: jax.Array | None = None):
    """:math:`\\nabla\\!\\cdot f(x)`: exact if ``z`` is ``None``, else Hutchinson's :math:`z^\\top J z`."""
    if z is None:
        return jnp.trace(jax.jacfwd(fn)(x))
    _, jz = jax.jvp(fn, (x,), (z,))
    return jnp.vdot(z, jz)


def log_likelihood(
    score: Callable[[jax.Array, jax.Array], jax.Array],
    sde,
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
        sde: the :class:`~otdiff.diffusion.VPSDE`.
        x: the points, ``(n, d)``.
        key: required for ``method="hutchinson"`` (the probe vectors).
        method: ``"exact"`` (Jacobian trace) or ``"hutchinson"`` (static).
        t_min: where the ODE starts, in ``(0, 1)``; compare with the data density noised to
            ``t_min`` (for exact mixtures: :func:`otdiff.data.exact_log_prob` at ``t_min``).
        rtol, atol: the adaptive Tsit5 solver's tolerances.
        max_steps: the solver's step budget (static).

    Returns:
        ``(n,)`` log-densities.
    """
    x = check_points(x, "x")
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    if method not in DIVERGENCES:
        raise ValueError(f"method must be one of {DIVERGENCES}, got {method!r}.")
    if method == "hutchinson":
        if key is None:
            raise ValueError("key is required for method='hutchinson' (the probe vectors).")
        probes = jax.random.rademacher(key, x.shape, dtype=x.dtype)
    else:
        probes = jnp.zeros_like(x)
    n, d = x.shape

    def one_point(x0, probe):
        def field(t, state, args):
            y, _ = state
            beta = sde.beta(t)
            div_s = divergence(lambda u: score(u, t), y, None if method == "exact" else probe)
            v = -0.5 * beta * (y + score(y, t))
            return v, -0.5 * beta * (d + div_s)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Tsit5(),
            t0=t_min,
            t1=1.0,
            dt0=None,
            y0=(x0, jnp.zeros((), x0.dtype)),
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=check_int(max_steps, "max_steps", low=1),
        )
        y1, int_div = sol.ys[0][-1], sol.ys[1][-1]
        return sde.prior_log_prob(y1) + int_div

    return jax.vmap(one_point)(x, probes)
