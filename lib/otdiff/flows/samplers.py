"""ODE samplers of a flow with honest counts of network evaluations (NFE), and a reference solve.

A flow samples by integrating :math:`\\dot x_t = v(x_t, t)` from noise at :math:`t = 1` to data at
:math:`t = 0` (the convention of :mod:`otdiff.flows.interpolant`) on a grid
:math:`1 = t_0 > t_1 > \\dots > t_N = 0` (:func:`flow_time_grid`). Two step kernels, plugged into
the book's sampler driver :func:`otdiff.diffusion.run_sampler`:

* :func:`euler_step`: :math:`x' = x + (t' - t)\\,v(x, t)`, one evaluation;
* :func:`heun_step`: :math:`\\tilde x = x + (t' - t)v(x, t)`,
  :math:`x' = x + \\tfrac12(t' - t)\\big(v(x, t) + v(\\tilde x, t')\\big)`, two evaluations.

:func:`sample_flow` takes Heun steps except for the last, which is an Euler step (the EDM
convention :cite:`karras2022edm`: it never evaluates the field at :math:`t = 0`), so ``N`` Heun
steps cost :math:`2N - 1` evaluations, and the count is returned with the samples (:func:`nfe`):
9 NFE is 5 Heun steps. The grid is :math:`t_k = (1 - k/N)^\\rho`: :math:`\\rho = 1` is uniform and
:math:`\\rho > 1` packs steps near the data (the book's one-parameter family for the sampler's
discretisation, which :cite:`kim2025simplereflow` tunes).

:func:`solve_flow` is the accurate reference: diffrax's adaptive Tsit5 with tight tolerances, used
to generate ReFlow pairs, with its own NFE (one evaluation at the start, six per attempted step:
Tsit5 reuses its last stage).

Taught in: book/diffusion/05_simple_reflow.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from otdiff import metrics
from otdiff._checks import (
    check_callable,
    check_choice,
    check_in_range,
    check_int,
    check_key,
    check_points,
    check_positive,
    check_times,
    guard,
    guard_finite,
    guard_positive,
    unguarded,
)
from otdiff.diffusion import run_sampler

__all__ = [
    "SOLVERS",
    "FlowSample",
    "flow_time_grid",
    "nfe",
    "steps_for_nfe",
    "euler_step",
    "heun_step",
    "sample_flow",
    "solve_flow",
    "path_straightness",
]

#: The fixed-step solvers of :func:`sample_flow`.
SOLVERS = ("euler", "heun")

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


class FlowSample(NamedTuple):
    """What a flow sampler returns.

    Attributes:
        x: the final points ``(n, d)``.
        trajectory: the states on the grid ``(n_steps + 1, n, d)`` (``None`` unless asked).
        nfe: the number of evaluations of the velocity per point (an int, or an int array for
            :func:`solve_flow`).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    x: jax.Array
    trajectory: jax.Array | None
    nfe: int | jax.Array


def flow_time_grid(n_steps: int, rho: float | jax.Array = 1.0) -> jax.Array:
    """The grid :math:`t_k = (1 - k/N)^\\rho`, :math:`k = 0..N`, from 1 down to 0.

    Args:
        n_steps: :math:`N \\ge 1` (static).
        rho: :math:`\\rho > 0` (dynamic; 1 is uniform, larger packs steps near :math:`t = 0`).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)
    rho = guard_positive(rho, "rho")
    return (1.0 - jnp.arange(n_steps + 1) / n_steps) ** rho


def nfe(n_steps: int, solver: str = "euler") -> int:
    """Evaluations per point of :func:`sample_flow`: ``n_steps`` (Euler) or ``2 n_steps - 1`` (Heun).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)
    check_choice(solver, "solver", SOLVERS)
    return n_steps if solver == "euler" else 2 * n_steps - 1


def steps_for_nfe(n_evals: int, solver: str = "euler") -> int:
    """The number of steps of ``solver`` that costs exactly ``n_evals`` evaluations.

    Raises:
        ValueError: for Heun with an even budget (Heun costs ``2N - 1``, always odd).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    n_evals = check_int(n_evals, "n_evals", low=1)
    check_choice(solver, "solver", SOLVERS)
    if solver == "euler":
        return n_evals
    if n_evals % 2 == 0:
        raise ValueError(
            f"Heun costs 2 n_steps - 1 (an odd number) of evaluations, got n_evals={n_evals}."
        )
    return (n_evals + 1) // 2


def _batch(velocity: Velocity):
    return jax.vmap(velocity, in_axes=(0, None))


def _check_field(velocity: Velocity) -> Velocity:
    return check_callable(velocity, "velocity", "velocity(x, t) of one point x (d,)")


def _check_step(key, x, t, t_next, velocity):
    # a step kernel's arguments; inside the driver's scan they are traced: shapes only
    check_key(key)
    x = check_points(x, "x")
    for name, value in (("t", t), ("t_next", t_next)):
        check_times(value, name)
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar time, got shape {jnp.shape(value)}.")
    _check_field(velocity)
    return x


def euler_step(key, x: jax.Array, t: jax.Array, t_next: jax.Array, *, velocity: Velocity):
    """One Euler step :math:`x' = x + (t' - t)\\,v(x, t)` of a batch ``(n, d)`` (``key`` unused).

    Args:
        key: a JAX random key (unused: the step is deterministic; the driver passes one).
        x: the batch ``(n, d)`` at time ``t``.
        t, t_next: the current and the next time, scalars in :math:`[0, 1]`.
        velocity: the per-point field ``velocity(x, t)``.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    x = _check_step(key, x, t, t_next, velocity)
    return x + (t_next - t) * _batch(velocity)(x, t)


def heun_step(key, x: jax.Array, t: jax.Array, t_next: jax.Array, *, velocity: Velocity):
    """One Heun step (explicit trapezoid) of a batch ``(n, d)`` (``key`` unused; two evaluations).

    Arguments as :func:`euler_step`.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    x = _check_step(key, x, t, t_next, velocity)
    v = _batch(velocity)(x, t)
    x_pred = x + (t_next - t) * v
    return x + 0.5 * (t_next - t) * (v + _batch(velocity)(x_pred, t_next))


def sample_flow(
    velocity: Velocity,
    x1: jax.Array,
    n_steps: int,
    *,
    solver: str = "euler",
    rho: float | jax.Array = 1.0,
    save_trajectory: bool = False,
) -> FlowSample:
    """Integrate the flow from ``x1`` at :math:`t = 1` to :math:`t = 0` with fixed steps.

    Args:
        velocity: the per-point field ``velocity(x, t)`` (e.g. a :class:`~otdiff.flows.FlowNet`).
        x1: the starting batch ``(n, d)`` (noise).
        n_steps: the number of steps (static); Heun's last step is an Euler step.
        solver: ``"euler"`` or ``"heun"`` (static).
        rho: the grid's exponent (:func:`flow_time_grid`, dynamic).
        save_trajectory: also return the states on the grid (static).

    Returns:
        A :class:`FlowSample` with ``nfe = nfe(n_steps, solver)``.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    x1 = check_points(x1, "x1")
    check_choice(solver, "solver", SOLVERS)
    times = flow_time_grid(n_steps, rho)
    euler = jax.tree_util.Partial(euler_step, velocity=velocity)
    if solver == "euler" or n_steps == 1:
        out = run_sampler(jax.random.key(0), euler, x1, times, save_trajectory=save_trajectory)
        return FlowSample(out.x, out.trajectory, nfe(n_steps, solver))
    heun = jax.tree_util.Partial(heun_step, velocity=velocity)
    first = run_sampler(jax.random.key(0), heun, x1, times[:-1], save_trajectory=save_trajectory)
    last = run_sampler(
        jax.random.key(0), euler, first.x, times[-2:], save_trajectory=save_trajectory
    )
    traj = None
    if save_trajectory:
        traj = jnp.concatenate([first.trajectory, last.trajectory[1:]], axis=0)
    return FlowSample(last.x, traj, nfe(n_steps, solver))


def solve_flow(
    velocity: Velocity,
    x: jax.Array,
    *,
    t_start: float = 1.0,
    t_end: float = 0.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> FlowSample:
    """The accurate reference solve of the flow ODE from ``t_start`` to ``t_end`` (diffrax Tsit5).

    Backwards (``t_start = 1``, ``t_end = 0``: noise to data) or forwards (data to noise). The
    step size is adaptive (PID controller, tolerances ``rtol``/``atol``), started at
    :math:`|t_{\\rm end} - t_{\\rm start}|/64`.

    Returns:
        A :class:`FlowSample` (no trajectory) whose ``nfe`` is :math:`1 + 6\\times` the number
        of attempted steps (accepted and rejected).

    Raises:
        ValueError: for bad arguments, or if the solver stops early (``max_steps`` reached or a
            non-finite step), at run time when traced.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    x = check_points(x, "x")
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        check_in_range(value, name, 0.0, 1.0)
    if float(t_start) == float(t_end):
        raise ValueError(f"t_start and t_end must differ, got {t_start!r} twice.")
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    max_steps = check_int(max_steps, "max_steps", low=1)
    field = _batch(velocity)
    term = diffrax.ODETerm(lambda t, y, args: field(y, t))
    with unguarded():
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Tsit5(),
            t0=float(t_start),
            t1=float(t_end),
            dt0=(float(t_end) - float(t_start)) / 64.0,
            y0=x,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=max_steps,
            throw=False,
        )
    ys = guard(
        sol.ys,
        sol.result != diffrax.RESULTS.successful,
        "solve_flow: the ODE solver stopped early (max_steps reached, or a non-finite step); "
        "raise max_steps or loosen rtol/atol.",
    )
    out = guard_finite(ys[-1], "solve_flow's output")
    return FlowSample(out, None, 1 + 6 * sol.stats["num_steps"])


def path_straightness(velocity: Velocity, x1: jax.Array, n_steps: int = 64) -> jax.Array:
    """:func:`otdiff.metrics.straightness` of the flow's paths from ``x1``, on a fine Euler grid.

    The paths are integrated with ``n_steps`` uniform Euler steps (static) and the velocity is
    read at every step's start, so the Riemann sum uses the same ``n_steps`` evaluations.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    x1 = check_points(x1, "x1")
    times = flow_time_grid(n_steps)
    field = _batch(velocity)

    def body(x, ts):
        t, t_next = ts
        v = field(x, t)
        return x + (t_next - t) * v, v

    x0, vels = jax.lax.scan(body, x1, (times[:-1], times[1:]))
    return metrics.straightness(vels, x1, x0)
