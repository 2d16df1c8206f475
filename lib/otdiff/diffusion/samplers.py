"""Samplers of the reverse diffusion: one driver, public step kernels, and the probability-flow ODE.

The time reversal of :cite:`anderson1982reverse`: if :math:`X` solves the forward SDE :math:`dX = f\\,dt + g\\,dW`
with marginals :math:`p_t`, then :math:`Y_s = X_{1-s}` solves

.. math::

    dY = \\big[-f(Y, t) + g(t)^2\\,\\nabla\\log p_t(Y)\\big]\\,ds + g(t)\\,d\\bar W,\\qquad t = 1-s,

and the **probability-flow ODE** :math:`\\dot x = f(x, t) - \\tfrac12 g(t)^2\\nabla\\log p_t(x)`
has the same marginals :cite:`song2021scorebased`. The process supplies both drifts
(:meth:`~otdiff.diffusion.AbstractProcess.reverse_drift`,
:meth:`~otdiff.diffusion.AbstractProcess.ode_drift`); for the VP processes
:math:`f = -\\tfrac12\\beta x`, :math:`g^2 = \\beta`.

**The driver.** :func:`run_sampler` is one ``jax.lax.scan`` over a time grid
:math:`t_0 = t_{\\max} > t_1 > \\dots > t_K = t_{\\min}` (:func:`time_grid`): at every step it
calls a **step kernel** ``step(key, x, t, t_next) -> x`` on the whole batch, then an optional
``hook(x, t_next) -> (x, aux)`` that may modify the state (SPELL's repellency does) and whose
``aux`` comes back stacked over the steps. The step kernels are public and pure:

* :func:`euler_maruyama_step`: the reverse SDE stepped from :math:`t` to :math:`t' = t - \\Delta`,

  .. math:: x' = x - b(x, t)\\,\\Delta + g(t)\\sqrt{\\Delta}\\,z,\\qquad b = f - g^2 s,

  a Gaussian kernel whose mean and standard deviation :func:`reverse_kernel` exposes (the SMC
  chapter weighs particles with its log-density, :func:`gaussian_log_prob`);
* :func:`ddim_step`: DDIM's update (deterministic for ``eta = 0``) through Tweedie's denoiser
  :math:`\\hat x_0 = (x + \\sigma_t^2 s)/\\alpha_t` and :math:`\\hat\\varepsilon = -\\sigma_t s`:
  :math:`x' = \\alpha_{t'}\\hat x_0 + \\sqrt{\\sigma_{t'}^2 - \\eta_t^2}\\,\\hat\\varepsilon + \\eta_t z`.

Bind a kernel's keyword arguments (``functools.partial(euler_maruyama_step, score=...,
process=...)``) to give the driver its ``step``; a Heun step or a geodesic step on a manifold
plugs in the same way. :func:`euler_maruyama` and :func:`ddim` are the driver with these kernels;
:func:`probability_flow` solves the ODE with diffrax (adaptive Tsit5 or fixed-step Heun).

A score is a function ``score(x, t)`` of one point ``x`` of shape ``(d,)`` and a scalar time;
the kernels take a batch ``(n, d)`` and ``vmap`` it. The number of steps is static, every float
(times, ``eta``, the schedule) dynamic. The time grid (``0 < t_min < t_max <= 1``) and the final
samples (no NaN or infinity) are guarded: a bad value raises a ``ValueError``, or an error at run
time inside the caller's ``jit``, instead of returning NaN. The scan itself runs unguarded, so
the programs the driver compiles stay in JAX's persistent compilation cache.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from otdiff._checks import (
    check_choice,
    check_in_range,
    check_int,
    check_key,
    check_nonnegative,
    check_points,
    check_same_shape,
    guard,
    guard_finite,
    guard_in_range,
    guard_less,
    unguarded,
)
from otdiff.diffusion.processes import AbstractGaussianProcess, AbstractProcess

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "time_grid",
    "batch_score",
    "reverse_kernel",
    "gaussian_log_prob",
    "euler_maruyama_step",
    "ddim_step",
    "run_sampler",
    "euler_maruyama",
    "ddim",
    "probability_flow",
    "pf_ode_drift",
    "sample",
]

SAMPLERS = ("sde", "ddim", "ode")

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
Step = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
Hook = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


class SampleResult(NamedTuple):
    """What a sampler returns.

    Attributes:
        x: the final samples, ``(n, d)``.
        trajectory: ``(n_steps + 1, n, d)`` states from the prior to the samples, or ``None``.
        aux: the ``hook``'s outputs stacked over the steps, or ``None``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    x: jax.Array
    trajectory: jax.Array | None
    aux: Any


def _guard_interval(t_min, t_max):
    """Checked now (concrete) or guarded (traced): ``0 < t_min < t_max <= 1``."""
    t_min = guard_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    t_max = guard_in_range(t_max, "t_max", 0.0, 1.0, low_open=True)
    return guard_less(t_min, t_max, ("t_min", "t_max"))


def time_grid(n_steps: int, t_min: float = 1e-3, t_max: float = 1.0) -> jax.Array:
    """``n_steps + 1`` evenly spaced times from ``t_max`` down to ``t_min`` (``n_steps`` static).

    Raises:
        ValueError: unless ``0 < t_min < t_max <= 1`` (at run time, too, when the times are
            traced).

    Taught in: book/diffusion/03_spell.ipynb.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)
    t_min, t_max = _guard_interval(t_min, t_max)
    return jnp.linspace(t_max, t_min, n_steps + 1)


def batch_score(score: ScoreFn) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A per-point score ``score(x, t)`` mapped over a batch ``x`` of shape ``(n, d)``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    return jax.vmap(score, in_axes=(0, None))


def reverse_kernel(
    process: AbstractProcess, x: jax.Array, t: jax.Array, t_next: jax.Array, score: jax.Array
):
    """Mean and standard deviation of one Euler–Maruyama step of the reverse SDE, ``t -> t_next``.

    .. math:: x' \\sim \\mathcal N\\Big(x - b(x, t)\\,\\Delta,\\ g(t)^2\\Delta\\,I\\Big),\\qquad
        b = f - g^2 s,\\qquad \\Delta = t - t' > 0;

    for the VP processes the mean is :math:`x + [\\tfrac12\\beta(t)x + \\beta(t)s]\\Delta`.

    Args:
        process: the forward process.
        x: a batch ``(n, d)``.
        t, t_next: the current and the next (smaller) time.
        score: the score at ``(x, t)``, shape ``(n, d)`` (e.g. ``batch_score(s)(x, t)``, or
            :math:`-\\nabla E` of an energy).

    Returns:
        ``(mean, std)``: ``mean`` of shape ``(n, d)``, ``std`` a scalar.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    x = check_points(x, "x")
    score = check_points(score, "score")
    check_same_shape(x, score, ("x", "score"))
    dt = t - t_next
    mean = x - process.reverse_drift(x, t, score) * dt
    return mean, jnp.sqrt(process.diffusion_squared(t) * dt)


def gaussian_log_prob(y: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Log-density of :math:`\\mathcal N(\\text{mean}, \\text{std}^2 I)` at ``y``, summed over the last axis.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    d = y.shape[-1]
    return -0.5 * jnp.sum(((y - mean) / std) ** 2, axis=-1) - d * (
        jnp.log(std) + 0.5 * math.log(2 * math.pi)
    )


def euler_maruyama_step(
    key: jax.Array,
    x: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    *,
    score: ScoreFn,
    process: AbstractProcess,
    noise: float | jax.Array = 1.0,
) -> jax.Array:
    """One Euler–Maruyama step of the reverse SDE on a batch: :func:`reverse_kernel`'s mean plus
    ``noise`` times its standard deviation times :math:`z \\sim \\mathcal N(0, I)`.

    Args:
        key: a JAX random key.
        x: the batch ``(n, d)`` at time ``t``.
        t, t_next: the current and the next (smaller) time.
        score: per-point score ``score(x, t)``.
        process: the forward process.
        noise: a factor on the noise (dynamic; 0 returns the kernel's mean).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    key = check_key(key)
    x = check_points(x, "x")
    mean, std = reverse_kernel(process, x, t, t_next, batch_score(score)(x, t))
    return mean + noise * std * jax.random.normal(key, x.shape, x.dtype)


def ddim_step(
    key: jax.Array,
    x: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    *,
    score: ScoreFn,
    process: AbstractGaussianProcess,
    eta: float | jax.Array = 0.0,
) -> jax.Array:
    """One DDIM step :cite:`song2021ddim` of a Gaussian process, ``t -> t_next``.

    .. math::

        \\hat\\varepsilon = -\\sigma_t s(x, t),\\quad
        \\hat x_0 = \\frac{x + \\sigma_t^2 s(x, t)}{\\alpha_t},\\quad
        \\eta_t = \\eta\\,\\frac{\\sigma_{t'}}{\\sigma_t}\\sqrt{1 - \\frac{\\alpha_t^2}{\\alpha_{t'}^2}},\\quad
        x' = \\alpha_{t'}\\hat x_0 + \\sqrt{\\sigma_{t'}^2 - \\eta_t^2}\\,\\hat\\varepsilon + \\eta_t z.

    ``eta = 0`` is the deterministic sampler (a discretisation of the probability-flow ODE);
    ``eta = 1`` matches DDPM's ancestral sampler. Arguments as :func:`euler_maruyama_step`.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    key = check_key(key)
    x = check_points(x, "x")
    check_nonnegative(eta, "eta")
    s = batch_score(score)(x, t)
    sigma, sigma_next = process.sigma(t), process.sigma(t_next)
    a, a_next = process.alpha(t), process.alpha(t_next)
    eps_hat = -sigma * s
    x0_hat = process.denoise(x, t, s)
    eta_t = eta * (sigma_next / sigma) * jnp.sqrt(jnp.clip(1.0 - (a / a_next) ** 2, 0.0))
    z = jax.random.normal(key, x.shape, x.dtype)
    direction = jnp.sqrt(jnp.clip(sigma_next**2 - eta_t**2, 0.0))
    return a_next * x0_hat + direction * eps_hat + eta_t * z


def _no_hook(x, t):
    return x, None


def run_sampler(
    key: jax.Array,
    step: Step,
    x_init: jax.Array,
    times: jax.Array,
    *,
    hook: Hook | None = None,
    save_trajectory: bool = False,
) -> SampleResult:
    """The sampler driver: ``step`` over the time grid ``times`` in one ``jax.lax.scan``.

    .. math:: x_{k+1} = \\mathrm{step}(\\kappa_k, x_k, t_k, t_{k+1}),\\qquad
        (x_{k+1}, a_k) = \\mathrm{hook}(x_{k+1}, t_{k+1}),

    with the keys :math:`\\kappa_k` split from ``key``.

    Args:
        key: a JAX random key.
        step: a step kernel ``step(key, x, t, t_next) -> x`` on the whole batch (e.g.
            ``functools.partial(euler_maruyama_step, score=score, process=process)``).
        x_init: the starting batch at ``times[0]``.
        times: the grid, shape ``(n_steps + 1,)`` (e.g. :func:`time_grid`).
        hook: optional ``hook(x, t) -> (x, aux)`` run on the batch after every step.
        save_trajectory: also return every intermediate state (static).

    Returns:
        A :class:`SampleResult`. The final samples are guarded: NaN or infinite values raise
        (at run time under ``jit``).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    n_steps = times.shape[0] - 1
    if n_steps < 1:
        raise ValueError(f"times must hold at least two times, got shape {times.shape}.")
    keys = jax.random.split(key, n_steps)
    hook = _no_hook if hook is None else hook

    def body(x, inputs):
        k, t, t_next = inputs
        x = step(k, x, t, t_next)
        x, aux = hook(x, t_next)
        return x, (x if save_trajectory else None, aux)

    with unguarded():
        x, (traj, aux) = jax.lax.scan(body, x_init, (keys, times[:-1], times[1:]))
    x = guard_finite(x, "the sampler's samples")
    if save_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)
    return SampleResult(x, traj, aux)


def euler_maruyama(
    key: jax.Array,
    score: ScoreFn,
    process: AbstractProcess,
    x_init: jax.Array,
    n_steps: int,
    *,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    hook: Hook | None = None,
    save_trajectory: bool = False,
) -> SampleResult:
    """Sample the reverse SDE by Euler–Maruyama from ``x_init`` at ``t_max`` down to ``t_min``.

    :func:`run_sampler` with :func:`euler_maruyama_step`. The last step adds no noise (it returns
    the kernel's mean), the usual choice that removes a :math:`g\\sqrt{\\Delta}` blur from the
    samples.

    Args:
        key: a JAX random key.
        score: per-point score ``score(x, t)``.
        process: the forward process.
        x_init: the starting batch ``(n, d)``, usually ``process.prior_sample(key, (n, d))``.
        n_steps: the number of steps (static).
        t_min, t_max: the time interval, ``0 < t_min < t_max <= 1``.
        hook: optional ``hook(x, t) -> (x, aux)`` run on the batch after every step.
        save_trajectory: also return every intermediate state (static).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb.
    """
    x_init = check_points(x_init, "x_init")
    ts = time_grid(n_steps, t_min, t_max)

    def step(k, x, t, t_next):
        noise = jnp.where(t_next == ts[-1], 0.0, 1.0)
        return euler_maruyama_step(k, x, t, t_next, score=score, process=process, noise=noise)

    return run_sampler(key, step, x_init, ts, hook=hook, save_trajectory=save_trajectory)


def ddim(
    key: jax.Array,
    score: ScoreFn,
    process: AbstractGaussianProcess,
    x_init: jax.Array,
    n_steps: int,
    *,
    eta: float = 0.0,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    hook: Hook | None = None,
    save_trajectory: bool = False,
) -> SampleResult:
    """DDIM sampling: :func:`run_sampler` with :func:`ddim_step` (no noise at the last step).

    Arguments as :func:`euler_maruyama`, plus ``eta >= 0`` (dynamic).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    x_init = check_points(x_init, "x_init")
    check_nonnegative(eta, "eta")
    ts = time_grid(n_steps, t_min, t_max)

    def step(k, x, t, t_next):
        eta_k = jnp.where(t_next == ts[-1], 0.0, eta)
        return ddim_step(k, x, t, t_next, score=score, process=process, eta=eta_k)

    return run_sampler(key, step, x_init, ts, hook=hook, save_trajectory=save_trajectory)


def pf_ode_drift(
    score: ScoreFn, process: AbstractProcess
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The probability-flow velocity :math:`v(x, t) = f(x, t) - \\tfrac12 g(t)^2 s(x, t)` of one point.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
        return process.ode_drift(x, t, score(x, t))

    return velocity


def _ode_solver(solver: str):
    check_choice(solver, "solver", ("tsit5", "heun"))
    return diffrax.Tsit5() if solver == "tsit5" else diffrax.Heun()


def probability_flow(
    score: ScoreFn,
    process: AbstractProcess,
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
        process: the forward process.
        x_init: the starting batch ``(n, d)``.
        solver: ``"tsit5"`` (adaptive, tolerances ``rtol``/``atol``) or ``"heun"``.
        n_steps: fixed step count instead of adaptive steps (static; required for ``"heun"``).
        max_steps: the adaptive solver's step budget (static).
        save_trajectory: the number of evenly spaced times to save (static), or ``None``.

    Returns:
        A :class:`SampleResult` (``aux`` holds the number of solver steps taken).

    Raises:
        ValueError: for bad arguments, if the adaptive solver runs out of ``max_steps``, or if
            the samples hold NaN (at run time inside the caller's ``jit``).

    The solve runs on the normalised time :math:`u \\in [0, 1]`,
    :math:`t = t_{\\max} + u\\,(t_{\\min} - t_{\\max})` (the same ODE, its velocity scaled by
    :math:`t_{\\min} - t_{\\max}`): diffrax's checks on a traced time interval and its error on a
    failed solve are host callbacks, which JAX never stores in its persistent compilation cache;
    on a fixed interval they are decided when the program is traced, and the solver's status is
    checked here instead. (A ``save_trajectory`` still brings diffrax's check on the saved times.)

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    x_init = check_points(x_init, "x_init")
    check_in_range(rtol, "rtol", 0.0, 1.0, low_open=True)
    check_in_range(atol, "atol", 0.0, 1.0, low_open=True)
    ode_solver = _ode_solver(solver)
    if solver == "heun" and n_steps is None:
        raise ValueError("n_steps is required with solver='heun' (a fixed-step method).")
    t_min, t_max = _guard_interval(t_min, t_max)
    velocity = jax.vmap(pf_ode_drift(score, process), in_axes=(0, None))
    span = jnp.asarray(t_min, x_init.dtype) - jnp.asarray(t_max, x_init.dtype)
    term = diffrax.ODETerm(lambda u, x, args: velocity(x, t_max + u * span) * span)
    if n_steps is None:
        controller = diffrax.PIDController(rtol=rtol, atol=atol)
        du0 = None
    else:
        n_steps = check_int(n_steps, "n_steps", low=1)
        controller = diffrax.ConstantStepSize()
        du0 = 1.0 / n_steps
    if save_trajectory is None:
        saveat = diffrax.SaveAt(t1=True)
    else:
        save_trajectory = check_int(save_trajectory, "save_trajectory", low=2)
        saveat = diffrax.SaveAt(ts=jnp.linspace(0.0, 1.0, save_trajectory))
    with unguarded():
        sol = diffrax.diffeqsolve(
            term,
            ode_solver,
            t0=0.0,
            t1=1.0,
            dt0=du0,
            y0=x_init,
            stepsize_controller=controller,
            saveat=saveat,
            max_steps=check_int(max_steps, "max_steps", low=1),
            throw=False,
        )
    ys = _guard_solved(sol, "probability_flow")
    x = guard_finite(ys[-1], "the sampler's samples")
    return SampleResult(x, ys if save_trajectory is not None else None, sol.stats["num_steps"])


def _guard_solved(sol: diffrax.Solution, name: str) -> Any:
    """The saved states ``sol.ys`` of a diffrax solve run with ``throw=False``, guarded to come
    from a successful solve (a ``ValueError`` now, or an error at run time when traced)."""
    failed = sol.result != diffrax.RESULTS.successful
    return guard(
        sol.ys,
        failed,
        f"{name}: the ODE solver stopped early (max_steps reached, or a non-finite step); raise "
        "max_steps or loosen rtol/atol.",
    )


def sample(
    key: jax.Array,
    score: ScoreFn,
    process: AbstractProcess,
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

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/03_spell.ipynb.
    """
    n_samples = check_int(n_samples, "n_samples", low=1)
    dim = check_int(dim, "dim", low=1)
    check_choice(sampler, "sampler", SAMPLERS)
    k_init, k_run = jax.random.split(key)
    x_init = process.prior_sample(k_init, (n_samples, dim))
    if sampler == "sde":
        return euler_maruyama(k_run, score, process, x_init, n_steps, t_min=t_min, **kwargs)
    if sampler == "ddim":
        return ddim(k_run, score, process, x_init, n_steps, t_min=t_min, **kwargs)
    if "hook" in kwargs:
        raise ValueError("hook is not supported by sampler='ode' (use 'sde' or 'ddim').")
    return probability_flow(
        score, process, x_init, t_min=t_min, solver="heun", n_steps=n_steps, **kwargs
    )
