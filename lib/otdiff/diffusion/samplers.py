"""Samplers of the reverse diffusion: pure, jitted functions over a score function.

Anderson's time reversal: if :math:`X` solves the forward SDE :math:`dX = f\\,dt + g\\,dW`
with marginals :math:`p_t`, then :math:`Y_s = X_{1-s}` solves

.. math::

    dY = \\big[-f(Y, t) + g(t)^2\\,\\nabla\\log p_t(Y)\\big]\\,ds + g(t)\\,d\\bar W,\\qquad t = 1-s,

and the **probability-flow ODE** :math:`\\dot x = f(x, t) - \\tfrac12 g(t)^2\\nabla\\log p_t(x)`
has the same marginals :cite:`song2021scorebased`. For the VP SDE,
:math:`f = -\\tfrac12\\beta x`, :math:`g^2 = \\beta`.

* :func:`euler_maruyama`: the reverse SDE stepped from :math:`t` to :math:`t' = t - \\Delta`,

  .. math:: x' = x + \\big[\\tfrac12\\beta(t)x + \\beta(t)s(x, t)\\big]\\Delta + \\sqrt{\\beta(t)\\Delta}\\,z,

  a Gaussian kernel whose mean and standard deviation :func:`reverse_kernel` exposes (the SMC
  chapter weighs particles with its log-density, :func:`gaussian_log_prob`).
* :func:`ddim`: DDIM's update (deterministic for ``eta = 0``) through the denoiser
  :math:`\\hat x_0 = (x - \\sigma_t\\hat\\varepsilon)/\\alpha_t`:
  :math:`x' = \\alpha_{t'}\\hat x_0 + \\sqrt{\\sigma_{t'}^2 - \\eta_t^2}\\,\\hat\\varepsilon + \\eta_t z`.
* :func:`probability_flow`: the ODE, solved by diffrax (adaptive Tsit5 or fixed-step Heun).

A score is a function ``score(x, t)`` of one point ``x`` of shape ``(d,)`` and a scalar time;
the samplers take a batch ``(n, d)`` and ``vmap`` it. The step loops are ``lax.scan``; the
number of steps is static, every float (times, ``eta``, the schedule) dynamic. A ``hook(x, t)
-> (x, aux)`` runs on the whole batch after every step: it can modify the state (the SPELL
chapter's repellency does) and its ``aux`` outputs come back stacked over the steps.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from otdiff._checks import check_in_range, check_int, check_nonnegative, check_points

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "time_grid",
    "batch_score",
    "reverse_kernel",
    "gaussian_log_prob",
    "euler_maruyama",
    "ddim",
    "probability_flow",
    "pf_ode_drift",
    "sample",
]

SAMPLERS = ("sde", "ddim", "ode")

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
Hook = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


class SampleResult(NamedTuple):
    """What a sampler returns.

    Attributes:
        x: the final samples, ``(n, d)``.
        trajectory: ``(n_steps + 1, n, d)`` states from the prior to the samples, or ``None``.
        aux: the ``hook``'s outputs stacked over the steps, or ``None``.
    """

    x: jax.Array
    trajectory: jax.Array | None
    aux: Any


def _check_times(t_min, t_max):
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    check_in_range(t_max, "t_max", 0.0, 1.0, low_open=True)
    if not isinstance(t_min, jax.core.Tracer) and not isinstance(t_max, jax.core.Tracer):
        if float(t_min) >= float(t_max):
            raise ValueError(f"t_min must be smaller than t_max, got {t_min!r} >= {t_max!r}.")


def time_grid(n_steps: int, t_min: float = 1e-3, t_max: float = 1.0) -> jax.Array:
    """``n_steps + 1`` evenly spaced times from ``t_max`` down to ``t_min`` (``n_steps`` static)."""
    n_steps = check_int(n_steps, "n_steps", low=1)
    _check_times(t_min, t_max)
    return jnp.linspace(t_max, t_min, n_steps + 1)


def batch_score(score: ScoreFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A per-point score ``score(x, t)`` mapped over a batch ``x`` of shape ``(n, d)``."""
    return jax.vmap(score, in_axes=(0, None))


def reverse_kernel(score: ScoreFn, sde, x: jax.Array, t: jax.Array, t_next: jax.Array):
    """Mean and standard deviation of one Euler–Maruyama step of the reverse SDE, ``t -> t_next``.

    .. math:: x' \\sim \\mathcal N\\Big(x + \\big[\\tfrac12\\beta(t)x + \\beta(t)s(x, t)\\big]\\Delta,\\
        \\beta(t)\\Delta\\,I\\Big),\\qquad \\Delta = t - t' > 0 .

    Args:
        score: per-point score ``score(x, t)``.
        sde: the :class:`~otdiff.diffusion.VPSDE`.
        x: a batch ``(n, d)``.
        t, t_next: the current and the next (smaller) time.

    Returns:
        ``(mean, std)``: ``mean`` of shape ``(n, d)``, ``std`` a scalar.
    """
    dt = t - t_next
    beta = sde.beta(t)
    mean = x + (0.5 * beta * x + beta * batch_score(score)(x, t)) * dt
    return mean, jnp.sqrt(beta * dt)


def gaussian_log_prob(y: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Log-density of :math:`\\mathcal N(\\text{mean}, \\text{std}^2 I)` at ``y``, summed over the last axis."""
    d = y.shape[-1]
    return -0.5 * jnp.sum(((y - mean) / std) ** 2, axis=-1) - d * (
        jnp.log(std) + 0.5 * math.log(2 * math.pi)
    )


def _no_hook(x, t):
    return x, None


def _scan_steps(step, key, x_init, ts, hook, save_trajectory):
    n_steps = ts.shape[0] - 1
    keys = jax.random.split(key, n_steps)
    is_last = jnp.arange(n_steps) == n_steps - 1
    hook = _no_hook if hook is None else hook

    def body(x, inputs):
        k, t, t_next, last = inputs
        x = step(k, x, t, t_next, last)
        x, aux = hook(x, t_next)
        return x, (x if save_trajectory else None, aux)

    x, (traj, aux) = jax.lax.scan(body, x_init, (keys, ts[:-1], ts[1:], is_last))
    if save_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)
    return SampleResult(x, traj, aux)


def _check_init(x_init):
    return check_points(x_init, "x_init")


def euler_maruyama(
    key: jax.Array,
    score: ScoreFn,
    sde,
    x_init: jax.Array,
    n_steps: int,
    *,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    hook: Hook | None = None,
    save_trajectory: bool = False,
) -> SampleResult:
    """Sample the reverse SDE by Euler–Maruyama from ``x_init`` at ``t_max`` down to ``t_min``.

    The last step adds no noise (it returns the kernel's mean), the usual choice that removes a
    :math:`\\sqrt{\\beta\\Delta}` blur from the samples.

    Args:
        key: a JAX random key.
        score: per-point score ``score(x, t)``.
        sde: the :class:`~otdiff.diffusion.VPSDE`.
        x_init: the starting batch ``(n, d)``, usually ``sde.prior_sample(key, (n, d))``.
        n_steps: the number of steps (static).
        t_min, t_max: the time interval, ``0 < t_min < t_max <= 1``.
        hook: optional ``hook(x, t) -> (x, aux)`` run on the batch after every step.
        save_trajectory: also return every intermediate state (static).
    """
    x_init = _check_init(x_init)
    ts = time_grid(n_steps, t_min, t_max)

    def step(k, x, t, t_next, last):
        mean, std = reverse_kernel(score, sde, x, t, t_next)
        z = jax.random.normal(k, x.shape, x.dtype)
        return mean + jnp.where(last, 0.0, std) * z

    return _scan_steps(step, key, x_init, ts, hook, save_trajectory)


def ddim(
    key: jax.Array,
    score: ScoreFn,
    sde,
    x_init: jax.Array,
    n_steps: int,
    *,
    eta: float = 0.0,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    hook: Hook | None = None,
    save_trajectory: bool = False,
) -> SampleResult:
    """DDIM sampling (Song, Meng and Ermon, 2021) over the VP schedule.

    .. math::

        \\hat\\varepsilon = -\\sigma_t s(x, t),\\quad
        \\hat x_0 = \\frac{x - \\sigma_t\\hat\\varepsilon}{\\alpha_t},\\quad
        \\eta_t = \\eta\\,\\frac{\\sigma_{t'}}{\\sigma_t}\\sqrt{1 - \\frac{\\alpha_t^2}{\\alpha_{t'}^2}},\\quad
        x' = \\alpha_{t'}\\hat x_0 + \\sqrt{\\sigma_{t'}^2 - \\eta_t^2}\\,\\hat\\varepsilon + \\eta_t z.

    ``eta = 0`` is the deterministic sampler (a discretisation of the probability-flow ODE);
    ``eta = 1`` matches DDPM's ancestral sampler. Arguments as :func:`euler_maruyama`.
    """
    x_init = _check_init(x_init)
    check_nonnegative(eta, "eta")
    ts = time_grid(n_steps, t_min, t_max)
    scores = batch_score(score)

    def step(k, x, t, t_next, last):
        a, s = sde.alpha(t), sde.sigma(t)
        a_next, s_next = sde.alpha(t_next), sde.sigma(t_next)
        eps_hat = -s * scores(x, t)
        x0_hat = (x - s * eps_hat) / a
        eta_t = eta * (s_next / s) * jnp.sqrt(jnp.clip(1.0 - (a / a_next) ** 2, 0.0))
        eta_t = jnp.where(last, 0.0, eta_t)
        z = jax.random.normal(k, x.shape, x.dtype)
        direction = jnp.sqrt(jnp.clip(s_next**2 - eta_t**2, 0.0))
        return a_next * x0_hat + direction * eps_hat + eta_t * z

    return _scan_steps(step, key, x_init, ts, hook, save_trajectory)


def pf_ode_drift(score: ScoreFn, sde) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The probability-flow velocity :math:`v(x, t) = -\\tfrac12\\beta(t)\\,(x + s(x, t))` of one point."""

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        return -0.5 * sde.beta(t) * (x + score(x, t))

    return velocity


def _ode_solver(solver: str):
    if solver == "tsit5":
        return diffrax.Tsit5()
    if solver == "heun":
        return diffrax.Heun()
    raise ValueError(f"solver must be 'tsit5' or 'heun', got {solver!r}.")


def probability_flow(
    score: ScoreFn,
    sde,
    x_init: jax.Array,
    *,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    solver: str = "tsit5",
    n_steps: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
    save_trajectory: int | None = None,
) -> SampleResult:
    """Solve the probability-flow ODE backwards from ``t_max`` to ``t_min`` with diffrax.

    Args:
        score: per-point score ``score(x, t)``.
        sde: the :class:`~otdiff.diffusion.VPSDE`.
        x_init: the starting batch ``(n, d)``.
        solver: ``"tsit5"`` (adaptive, tolerances ``rtol``/``atol``) or ``"heun"``.
        n_steps: fixed step count instead of adaptive steps (static; required for ``"heun"``).
        max_steps: the adaptive solver's step budget (static).
        save_trajectory: the number of evenly spaced times to save (static), or ``None``.

    Returns:
        A :class:`SampleResult` (``aux`` holds the number of solver steps taken).
    """
    x_init = _check_init(x_init)
    _check_times(t_min, t_max)
    check_positive_tol = check_in_range
    check_positive_tol(rtol, "rtol", 0.0, 1.0, low_open=True)
    check_positive_tol(atol, "atol", 0.0, 1.0, low_open=True)
    if solver == "heun" and n_steps is None:
        raise ValueError("n_steps is required with solver='heun' (a fixed-step method).")
    velocity = jax.vmap(pf_ode_drift(score, sde), in_axes=(0, None))
    term = diffrax.ODETerm(lambda t, x, args: velocity(x, t))
    if n_steps is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        dt0 = None
    else:
        n_steps = check_int(n_steps, "n_steps", low=1)
        controller = diffrax.ConstantStepSize()
        dt0 = (t_min - t_max) / n_steps
    if save_trajectory is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        save_trajectory = check_int(save_trajectory, "save_trajectory", low=2)
        saveat = diffrax.SaveAt(ts=jnp.linspace(t_max, t_min, save_trajectory))
    sol = diffrax.diffeqsolve(
        term,
        _ode_solver(solver),
        t0=t_max,
        t1=t_min,
        dt0=dt0,
        y0=x_init,
        stepsize_controller=controller,
        saveat=saveat,
        max_steps=check_int(max_steps, "max_steps", low=1),
    )
    ys = sol.ys
    x = ys[-1]
    return SampleResult(x, ys if save_trajectory is not None else None, sol.stats["num_steps"])


def sample(
    key: jax.Array,
    score: ScoreFn,
    sde,
    n_samples: int,
    dim: int,
    *,
    sampler: str = "sde",
    n_steps: int = 200,
    t_min: float = 1e-3,
    **kwargs,
) -> SampleResult:
    """Draw ``n_samples`` points in dimension ``dim`` with the named ``sampler`` (``"sde"``,
    ``"ddim"`` or ``"ode"``; the ODE uses ``n_steps`` fixed Heun steps), starting from the prior.
    """
    n_samples = check_int(n_samples, "n_samples", low=1)
    dim = check_int(dim, "dim", low=1)
    k_init, k_run = jax.random.split(key)
    x_init = sde.prior_sample(k_init, (n_samples, dim))
    if sampler == "sde":
        return euler_maruyama(k_run, score, sde, x_init, n_steps, t_min=t_min, **kwargs)
    if sampler == "ddim":
        return ddim(k_run, score, sde, x_init, n_steps, t_min=t_min, **kwargs)
    if sampler == "ode":
        if "hook" in kwargs:
            raise ValueError("hook is not supported by sampler='ode' (use 'sde' or 'ddim').")
        return probability_flow(
            score, sde, x_init, t_min=t_min, solver="heun", n_steps=n_steps, **kwargs
        )
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
