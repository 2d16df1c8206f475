r"""Progressive entropic optimal transport (ProgOT) :cite:`kassraie2024progot`.

One entropic OT solve from the source :math:`X` straight to the target :math:`Y` must trade
off bias (a large :math:`\varepsilon` blurs the map towards the mean) against speed and
variance (a small one needs many Sinkhorn iterations and overfits the samples). ProgOT splits
the displacement into :math:`K` steps along an estimated McCann interpolation. With
:math:`x^{(0)} = X`, step sizes :math:`\alpha_k \in (0, 1]`, regularisations
:math:`\varepsilon_k` and tolerances :math:`\tau_k`, step :math:`k = 0, \dots, K-1` solves

.. math::

    (f_k, g_k) = \mathrm{Sinkhorn}\big(x^{(k)}, Y; \varepsilon_k, \tau_k\big), \qquad
    x^{(k+1)} = S_k\big(x^{(k)}\big) = (1 - \alpha_k)\, x^{(k)} + \alpha_k\, T_k\big(x^{(k)}\big),

where :math:`T_k` is the entropic map of step :math:`k` (:func:`otdiff.ot.entropic_map`), and
starts step :math:`k + 1` from :math:`((1 - \alpha_k) f_k, (1 - \alpha_k) g_k)`. After :math:`k`
steps the points have covered the fraction :math:`t_k = 1 - \prod_{j < k}(1 - \alpha_j)` of
the way (:func:`elapsed_times`). The outputs are the coupling of the last step (its rows are the
original points) and the out-of-sample map :math:`T_{\mathrm{Prog}} = S_{K-1} \circ \dots \circ
S_0` (:func:`transport`).

The algorithm in the house style: a state (:class:`ProgOTState`: the current points and the
warm start), :func:`progot_init`, a pure :func:`progot_step` (one Sinkhorn solve, then
:func:`displace`), and the run :func:`progot_core`, one ``jax.lax.scan`` of the step. The
out-of-sample map replays :func:`displace` with the fitted potentials: fit and map share one
update.

*Why not ott-jax's ``ProgOT``.* ott-jax 0.6 ships ``ott.tools.progot``, whose step-size schedule
this module uses (``get_alpha_schedule``) and whose :math:`\varepsilon` schedule it reproduces
(:func:`epsilon_schedule`). Its fitting loop, however, computes
:math:`x^{(k+1)} = (1 - \alpha_k) x^{(0)} + \alpha_k T_k(x^{(k)})`, from the *original* points
(``x`` where ``state.x`` was meant, since ott-jax PR #650), while its ``transport`` replays the
recursion above; the fitted potentials and the map disagree. Here the loop follows the paper,
takes per-step ``epsilons`` and ``thresholds`` as dynamic arrays (no recompilation when they
change) and records the trajectory :math:`x^{(0)}, \dots, x^{(K)}`.

Conventions as in :mod:`otdiff.ot.sinkhorn`: the cost is ott-jax's ``cost_fn`` (default the
squared Euclidean :math:`\|x - y\|^2`, no factor 1/2; the paper covers translation-invariant
costs :math:`h(x - y)`, for which the step is :math:`z - \alpha_k\nabla h^*(\nabla f_k(z))`),
``epsilon`` is absolute, potentials follow ott-jax.

Taught in: book/ot/03_progot.ipynb.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from ott.geometry import costs
from ott.tools import progot as ott_progot

from otdiff import _checks
from otdiff.ot.sinkhorn import (
    SinkhornOutput,
    _check_chunk_size,
    _check_cost_fn,
    _geometry,
    _guard_inputs,
    _marginal_error,
    _sinkhorn,
    _transport_cost,
    default_epsilon,
    entropic_map,
)

__all__ = [
    "ALPHA_SCHEDULES",
    "ProgOTState",
    "ProgOTOutput",
    "alpha_schedule",
    "elapsed_times",
    "epsilon_schedule",
    "select_end_epsilon",
    "displace",
    "progot_init",
    "progot_step",
    "progot_core",
    "progot",
    "transport",
]

#: The step-size schedules :func:`alpha_schedule` accepts (ott-jax's names).
ALPHA_SCHEDULES = ("lin", "exp", "quad")


class ProgOTState(NamedTuple):
    r"""The state between two ProgOT steps.

    Attributes:
        x: the current points :math:`x^{(k)}`, shape ``(n, d)``.
        f, g: the potentials the next Sinkhorn solve starts from, shapes ``(n,)`` and ``(m,)``
            (:math:`(1 - \alpha_{k-1}) f_{k-1}` with warm starts, zero at first).

    Taught in: book/ot/03_progot.ipynb.
    """

    x: jax.Array
    f: jax.Array
    g: jax.Array


class ProgOTOutput(NamedTuple):
    r"""What :func:`progot` returns (a pytree of arrays: safe to return from ``jit``/``vmap``).

    Attributes:
        xs: the trajectory :math:`x^{(0)}, \dots, x^{(K)}`, shape ``(K + 1, n, d)``;
            ``xs[0]`` is the source and ``xs[k + 1]`` the points after step ``k``.
        f: the source potential of every step (ott-jax's convention), shape ``(K, n)``.
        g: the target potential of every step, shape ``(K, m)``; with ``y``, ``epsilons``,
            ``alphas`` and ``cost_fn`` it defines the out-of-sample map (:func:`transport`).
        y: the target points, shape ``(m, d)``.
        alphas: the step sizes, shape ``(K,)``.
        epsilons: the regularisation of every step, shape ``(K,)``.
        thresholds: the stopping tolerance of every step, shape ``(K,)``.
        n_iterations: the Sinkhorn iterations of every step, shape ``(K,)``.
        converged: whether every step reached its tolerance, shape ``(K,)``.
        reg_ot_cost: ott-jax's ``reg_ot_cost`` of every step, shape ``(K,)``.
        transport_cost: :math:`\sum_{ij} P_{ij}\, c(x_i, y_j)` for the last step's coupling
            :math:`P` (between :math:`x^{(K-1)}` and :math:`Y`) and the *original* points: the
            cost of the coupling as a plan between :math:`X` and :math:`Y`.
        marginal_error: :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1` of the last
            step's coupling.
        cost_fn: the cost (an ott-jax ``CostFn``).
        coupling: the last step's coupling :math:`P`, whose row ``i`` is the original point
            ``x[i]``, shape ``(n, m)``, when asked for (``return_coupling=True``); else ``None``.

    Taught in: book/ot/03_progot.ipynb.
    """

    xs: jax.Array
    f: jax.Array
    g: jax.Array
    y: jax.Array
    alphas: jax.Array
    epsilons: jax.Array
    thresholds: jax.Array
    n_iterations: jax.Array
    converged: jax.Array
    reg_ot_cost: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array
    cost_fn: costs.CostFn
    coupling: jax.Array | None = None

    @property
    def n_steps(self) -> int:
        """The number of steps :math:`K`."""
        return self.alphas.shape[-1]

    @property
    def total_iterations(self) -> jax.Array:
        """The Sinkhorn iterations summed over the steps."""
        return jnp.sum(self.n_iterations, axis=-1)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def alpha_schedule(kind: str, n_steps: int) -> jax.Array:
    r"""The step sizes :math:`(\alpha_0, \dots, \alpha_{K-1})` of a named schedule.

    ott-jax's ``get_alpha_schedule`` :cite:`cuturi2022ott`. With
    :math:`t_k = 1 - \prod_{j < k}(1 - \alpha_j)` the fraction of the way covered after
    :math:`k` steps (:cite:`kassraie2024progot`, Section 4):

    * ``"lin"``, constant speed: :math:`\alpha_k = 1/(K - k)`, so :math:`t_k = k/K`: every step
      moves the points the same distance, and the last one (:math:`\alpha_{K-1} = 1`) lands on
      the target.
    * ``"exp"``, decelerating: :math:`\alpha_k = 1/e`, so :math:`t_k = 1 - (1 - 1/e)^k`: each
      step covers the same *fraction of what is left*, so the distance left decays
      exponentially; it never reaches :math:`t = 1` (:math:`t_4 \approx 0.84`).
    * ``"quad"``, accelerating: :math:`\alpha_k = (2k + 3)/((K + 1)^2 - (k + 1)^2)`, so
      :math:`t_k = k(k + 2)/(K(K + 2))`, short steps first and :math:`t_K = 1`.

    Args:
        kind: one of :data:`ALPHA_SCHEDULES`.
        n_steps: :math:`K`, an int >= 1. Static.

    Returns:
        A float array of shape ``(K,)`` with entries in :math:`(0, 1]`.

    Raises:
        ValueError, TypeError: for an unknown ``kind`` or ``n_steps < 1``.

    Taught in: book/ot/03_progot.ipynb.
    """
    n_steps = _checks.check_int(n_steps, "n_steps", low=1)
    if kind not in ALPHA_SCHEDULES:
        raise ValueError(f"kind must be one of {ALPHA_SCHEDULES}, got {kind!r}.")
    alphas = ott_progot.get_alpha_schedule(kind, num_steps=n_steps)
    return jnp.asarray(alphas, dtype=jnp.result_type(float))


def elapsed_times(alphas: Any) -> jax.Array:
    r"""The times :math:`t_0 = 0, t_1, \dots, t_K` reached by the steps ``alphas``.

    .. math::

        t_{k+1} = t_k + \alpha_k (1 - t_k), \qquad\text{i.e.}\qquad
        1 - t_k = \prod_{j < k} (1 - \alpha_j),

    because a step along the McCann interpolation from time :math:`t_k` covers the fraction
    :math:`\alpha_k` of the remaining way. Shape ``(K + 1,)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    alphas = jnp.asarray(alphas)
    remaining = jnp.cumprod(1.0 - alphas)
    return jnp.concatenate([jnp.zeros((1,), remaining.dtype), 1.0 - remaining])


def _check_alphas(alphas: Any) -> jax.Array:
    return _checks.check_positive_vector(alphas, "alphas", high=1.0)


def epsilon_schedule(
    alphas: Any, epsilon_start: Any, epsilon_end: Any, *, kind: str = "paper"
) -> jax.Array:
    r"""The regularisation :math:`\varepsilon_k` of every step, tied to the time it starts at.

    ``kind="paper"`` is the rule of :cite:`kassraie2024progot` (their Algorithm 4, ott-jax's
    ``get_epsilon_schedule``): step :math:`k` starts at time :math:`t_k` (:func:`elapsed_times`)
    and uses

    .. math::

        \varepsilon_k = (1 - t_k)\,\varepsilon_{\mathrm{start}} + t_k\,\varepsilon_{\mathrm{end}},

    so :math:`\varepsilon_0 = \varepsilon_{\mathrm{start}}` and the last step, which starts
    at :math:`t_{K-1} < 1`, still uses a mixture of the two. The paper picks
    :math:`\varepsilon_{\mathrm{end}}` by :func:`select_end_epsilon`.

    ``kind="geometric"`` is a variant of this book for when the last coupling must be at a
    *prescribed* regularisation (as when ProgOT replaces Sinkhorn at a target
    :math:`\varepsilon`): step :math:`k` uses the value, on a geometric path in time from
    :math:`\varepsilon_{\mathrm{start}}` (at :math:`t = 0`) to :math:`\varepsilon_{\mathrm{end}}`
    (at :math:`t_K`), of the time :math:`t_{k+1}` it *ends* at: with :math:`s_k = t_{k+1}/t_K`,

    .. math::

        \varepsilon_k = \varepsilon_{\mathrm{start}}^{\,1 - s_k}\,
            \varepsilon_{\mathrm{end}}^{\,s_k},

    so the last step solves at exactly :math:`\varepsilon_{\mathrm{end}}` (and with
    :math:`K = 1` the single step does).

    Args:
        alphas: the step sizes, shape ``(K,)``, in :math:`(0, 1]`.
        epsilon_start, epsilon_end: absolute regularisations, finite and > 0. Dynamic.
        kind: ``"paper"`` or ``"geometric"``.

    Returns:
        The schedule, shape ``(K,)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    alphas = _check_alphas(alphas)
    _checks.check_positive(epsilon_start, "epsilon_start")
    _checks.check_positive(epsilon_end, "epsilon_end")
    times = elapsed_times(alphas)
    start = jnp.asarray(epsilon_start, alphas.dtype)
    end = jnp.asarray(epsilon_end, alphas.dtype)
    if kind == "paper":
        t = times[:-1]  # the time each step starts at
        return (1.0 - t) * start + t * end
    if kind == "geometric":
        s = times[1:] / times[-1]  # the time each step ends at, as a fraction of t_K > 0
        return jnp.exp((1.0 - s) * jnp.log(start) + s * jnp.log(end))
    raise ValueError(f"kind must be 'paper' or 'geometric', got {kind!r}.")


# --------------------------------------------------------------------------------------------
# State, init, step, run
# --------------------------------------------------------------------------------------------


def displace(
    z: jax.Array,
    y: jax.Array,
    g: jax.Array,
    epsilon: jax.Array,
    alpha: jax.Array,
    cost_fn: costs.CostFn | None = None,
) -> jax.Array:
    r"""One ProgOT displacement :math:`S_k(z) = (1 - \alpha_k)\, z + \alpha_k\, T_k(z)`.

    :math:`T_k` is the entropic map of the potential ``g`` computed at ``epsilon``
    (:func:`otdiff.ot.entropic_map`): a step of size :math:`\alpha_k` along the estimated McCann
    interpolation :cite:`kassraie2024progot,mccann1997convexity`. The fit (:func:`progot_step`)
    and the out-of-sample map (:func:`transport`) both move points with it. Pure and jit-able.

    Taught in: book/ot/03_progot.ipynb.
    """
    _checks.check_in_range(alpha, "alpha", 0.0, 1.0)
    mapped = entropic_map(z, y, g, epsilon, cost_fn)  # checks z, y, g and epsilon
    return (1.0 - alpha) * jnp.asarray(z, mapped.dtype) + alpha * mapped


def progot_init(x: jax.Array, y: jax.Array) -> ProgOTState:
    """The state before the first step: the source points, and a zero start.

    Taught in: book/ot/03_progot.ipynb.
    """
    x, y = _checks.check_points(x, "x"), _checks.check_points(y, "y")
    _checks.check_same_dim(x, y)
    return ProgOTState(
        x=x, f=jnp.zeros((x.shape[0],), x.dtype), g=jnp.zeros((y.shape[0],), x.dtype)
    )


def progot_step(
    state: ProgOTState,
    alpha: jax.Array,
    epsilon: jax.Array,
    threshold: jax.Array,
    *,
    y: jax.Array,
    a: jax.Array,
    b: jax.Array,
    cost_fn: costs.CostFn | None = None,
    warm_start: bool = True,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    chunk_size: int | None = None,
) -> tuple[ProgOTState, SinkhornOutput]:
    r"""One ProgOT step: solve entropic OT from the current points, then move them.

    .. math::

        (f_k, g_k) = \mathrm{Sinkhorn}\big(x^{(k)}, Y; \varepsilon_k, \tau_k\big)
            \text{ from } (f, g) \text{ of the state}, \qquad
        x^{(k+1)} = S_k\big(x^{(k)}\big) \ \text{(:func:`displace`)},

    and the next start :math:`((1 - \alpha_k) f_k, (1 - \alpha_k) g_k)` (``warm_start``, as in
    ott-jax) or zero :cite:`kassraie2024progot`. Pure and unchecked; ``alpha``, ``epsilon``
    and ``threshold`` are dynamic scalars; the keywords after ``cost_fn`` are static.

    Returns:
        ``(state, info)``: the next :class:`ProgOTState`, and the step's Sinkhorn solution (a
        :class:`otdiff.ot.SinkhornOutput`).

    Taught in: book/ot/03_progot.ipynb.
    """
    out = _sinkhorn(
        state.x,
        y,
        a,
        b,
        epsilon,
        threshold,
        cost_fn=cost_fn,
        init=(state.f, state.g),
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        chunk_size=chunk_size,
    )
    x_next = displace(state.x, y, out.g, epsilon, alpha, cost_fn)
    if warm_start:
        f_next, g_next = (1.0 - alpha) * out.f, (1.0 - alpha) * out.g
    else:
        f_next, g_next = jnp.zeros_like(out.f), jnp.zeros_like(out.g)
    return ProgOTState(x_next, f_next, g_next), out


@functools.partial(
    jax.jit,
    static_argnames=(
        "max_iterations",
        "inner_iterations",
        "warm_start",
        "chunk_size",
        "return_coupling",
    ),
)
@_checks.unguarded()
def progot_core(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array,
    b: jax.Array,
    alphas: jax.Array,
    epsilons: jax.Array,
    thresholds: jax.Array,
    *,
    cost_fn: costs.CostFn | None = None,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    warm_start: bool = True,
    chunk_size: int | None = None,
    return_coupling: bool = False,
) -> ProgOTOutput:
    r"""The run: :func:`progot_init`, then :func:`progot_step` in one ``jax.lax.scan``. Jitted.

    ``alphas``, ``epsilons`` and ``thresholds`` are dynamic arrays of shape ``(K,)`` (the
    number of steps is their static length): new values never recompile, and the core can be
    vmapped over them. Each step runs ott-jax's Sinkhorn :cite:`cuturi2022ott` through the one
    Sinkhorn path of :mod:`otdiff.ot.sinkhorn`. Unchecked and free of run-time guards (so that
    JAX's persistent compilation cache keeps it): pass positive ``epsilons`` and ``thresholds``,
    ``alphas`` in :math:`(0, 1]`, finite points, weights on the simplex, arrays of one floating
    dtype and ``max_iterations`` a multiple of ``inner_iterations``, or call :func:`progot`,
    which checks them (at run time too, inside the caller's ``jit``).

    Taught in: book/ot/03_progot.ipynb.
    """
    cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn

    def step(state, inputs):
        state_next, out = progot_step(
            state,
            *inputs,
            y=y,
            a=a,
            b=b,
            cost_fn=cost_fn,
            warm_start=warm_start,
            max_iterations=max_iterations,
            inner_iterations=inner_iterations,
            chunk_size=chunk_size,
        )
        return state_next, (state.x, state_next.x, out)

    _, (starts, nexts, steps) = jax.lax.scan(
        step, progot_init(x, y), (alphas, epsilons, thresholds)
    )
    f, g = steps.f, steps.g
    # The last step coupled x^(K-1) with y; its rows are the original points.
    last = _geometry(starts[-1], y, epsilons[-1], cost_fn, chunk_size)
    return ProgOTOutput(
        xs=jnp.concatenate([x[None], nexts], axis=0),
        f=f,
        g=g,
        y=y,
        alphas=alphas,
        epsilons=epsilons,
        thresholds=thresholds,
        n_iterations=steps.n_iterations,
        converged=steps.converged,
        reg_ot_cost=steps.reg_ot_cost,
        transport_cost=_transport_cost(last, f[-1], g[-1], x_cost=x),
        marginal_error=_marginal_error(last, f[-1], g[-1], a, b),
        cost_fn=cost_fn,
        coupling=last.transport_from_potentials(f[-1], g[-1]) if return_coupling else None,
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def progot(
    x: Any,
    y: Any,
    a: Any = None,
    b: Any = None,
    *,
    cost_fn: costs.CostFn | None = None,
    n_steps: int = 8,
    alphas: Any = "lin",
    epsilons: Any = None,
    epsilon_start: Any = None,
    epsilon_end: Any = None,
    epsilon_kind: str = "paper",
    threshold: Any = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    warm_start: bool = True,
    chunk_size: int | None = None,
    return_coupling: bool = False,
) -> ProgOTOutput:
    r"""Progressive entropic OT :cite:`kassraie2024progot` from ``x`` to ``y``.

    For :math:`k = 0, \dots, K-1`: solve entropic OT between the current points and the
    target at :math:`\varepsilon_k` to tolerance :math:`\tau_k`, then move the points the
    fraction :math:`\alpha_k` of the way along the entropic map,

    .. math::

        x^{(k+1)} = (1 - \alpha_k)\, x^{(k)} + \alpha_k\, T_k\big(x^{(k)}\big),

    and start the next solve from the scaled potentials (``warm_start``).

    Args:
        x: source points, shape ``(n, d)``, finite.
        y: target points, shape ``(m, d)``, finite, same ``d``.
        a, b: weights (``None``: uniform), non-negative, summing to one.
        cost_fn: an ott-jax cost function (a registered pytree; ``None``: squared Euclidean).
            The entropic map of a translation-invariant cost needs its ``h_legendre``.
        n_steps: :math:`K`, an int >= 1, used when ``alphas`` is a schedule name. Static.
        alphas: a name of :data:`ALPHA_SCHEDULES` (see :func:`alpha_schedule`) or an array of
            shape ``(K,)`` with entries in :math:`(0, 1]`. Dynamic (its length is static).
        epsilons: the absolute regularisation of every step, shape ``(K,)``, each > 0; or
            ``None`` for :func:`epsilon_schedule` from ``epsilon_start`` (default:
            :func:`otdiff.ot.default_epsilon` of ``(x, y)``) to ``epsilon_end`` (default:
            :func:`otdiff.ot.default_epsilon` of ``(y, y)``, the paper's rule with scale one)
            of kind ``epsilon_kind``. Dynamic.
        epsilon_start, epsilon_end: see ``epsilons``; finite and > 0.
        epsilon_kind: ``"paper"`` or ``"geometric"`` (see :func:`epsilon_schedule`).
        threshold: the stopping tolerance on Sinkhorn's marginal error, a scalar or one per
            step, each > 0. Dynamic.
        max_iterations, inner_iterations, chunk_size: Sinkhorn's loop sizes and memory mode per
            step (as in :func:`otdiff.ot.solve`). Static.
        warm_start: start each step from the previous step's scaled potentials. Static.
        return_coupling: also return the last step's :math:`n \times m` coupling. Static.

    Returns:
        A :class:`ProgOTOutput`; map new points with :func:`transport`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range (``n_steps < 1``,
            ``alphas`` outside :math:`(0, 1]`, ``epsilons`` or ``threshold`` <= 0, mismatched
            lengths, bad points, weights or cost).

    Taught in: book/ot/03_progot.ipynb.
    """
    x, y, a, b = _checks.check_weighted_clouds(x, y, a, b)
    cost_fn = _check_cost_fn(cost_fn)
    dtype = x.dtype
    if isinstance(alphas, str):
        alphas = alpha_schedule(alphas, n_steps)
    alphas = _check_alphas(alphas).astype(dtype)
    k = alphas.shape[0]
    if epsilons is None:
        for value, name in ((epsilon_start, "epsilon_start"), (epsilon_end, "epsilon_end")):
            if value is not None:
                _checks.check_positive(value, name)
        start = default_epsilon(x, y, cost_fn) if epsilon_start is None else epsilon_start
        end = default_epsilon(y, y, cost_fn) if epsilon_end is None else epsilon_end
        epsilons = epsilon_schedule(alphas, start, end, kind=epsilon_kind)
    epsilons = _checks.check_positive_vector(epsilons, "epsilons", length=k).astype(dtype)
    thresholds = _checks.check_positive_vector(threshold, "threshold", length=k).astype(dtype)
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    x, y, a, b, epsilons = _guard_inputs(x, y, a, b, epsilons, "epsilons")
    alphas = _checks.guard_in_range(alphas, "alphas", 0.0, 1.0, low_open=True)
    thresholds = _checks.guard_positive(thresholds, "threshold")
    out = progot_core(
        x,
        y,
        a,
        b,
        alphas,
        epsilons,
        thresholds,
        cost_fn=cost_fn,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        warm_start=_checks.check_bool(warm_start, "warm_start"),
        chunk_size=_check_chunk_size(chunk_size),
        return_coupling=_checks.check_bool(return_coupling, "return_coupling"),
    )
    return out._replace(
        f=_checks.guard_potentials(out.f, a, "f"), g=_checks.guard_potentials(out.g, b, "g")
    )


def transport(
    output: ProgOTOutput, z: Any, *, n_steps: int | None = None, return_path: bool = False
) -> jax.Array:
    r"""The ProgOT map :math:`T_{\mathrm{Prog}} = S_{K-1}\circ\dots\circ S_0` at new points.

    Replays the fitted steps on ``z`` with :func:`displace`: :math:`z^{(0)} = z` and

    .. math::

        z^{(k+1)} = (1 - \alpha_k)\, z^{(k)} + \alpha_k\, T_k\big(z^{(k)}\big),

    with :math:`T_k` the entropic map of step :math:`k` (``output.g[k]``, ``output.epsilons[k]``
    and ``output.cost_fn``). On the training points it retraces ``output.xs``. This is the
    estimator whose consistency :cite:`kassraie2024progot` prove. Jit-able (``n_steps`` is
    static).

    Args:
        output: a :class:`ProgOTOutput`.
        z: points to map, shape ``(k, d)``, finite, the dimension of the fit.
        n_steps: replay only the first ``n_steps`` steps (default: all), an int in
            ``[1, K]``. Static.
        return_path: also return every intermediate :math:`z^{(k)}`.

    Returns:
        :math:`z^{(K)}`, shape ``(k, d)``; with ``return_path``, the path
        :math:`z^{(0)}, \dots, z^{(K)}`, shape ``(K + 1, k, d)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    z = _checks.check_points(z, "z")
    _checks.check_same_dim(z, output.y, ("z", "the fitted target"))
    k_max = output.alphas.shape[-1]
    k = k_max if n_steps is None else _checks.check_int(n_steps, "n_steps", low=1, high=k_max)
    z = z.astype(output.y.dtype)

    def step(zk, inputs):
        alpha, epsilon, g = inputs
        z_next = displace(zk, output.y, g, epsilon, alpha, output.cost_fn)
        return z_next, z_next

    final, path = jax.lax.scan(step, z, (output.alphas[:k], output.epsilons[:k], output.g[:k]))
    if return_path:
        return jnp.concatenate([z[None], path], axis=0)
    return final


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations"))
@_checks.unguarded()
def _self_map_errors(
    y, b, y_eval, epsilons, threshold, cost_fn, *, max_iterations, inner_iterations
):
    def error(epsilon):
        out = _sinkhorn(
            y,
            y,
            b,
            b,
            epsilon,
            threshold,
            cost_fn=cost_fn,
            max_iterations=max_iterations,
            inner_iterations=inner_iterations,
        )
        return jnp.linalg.norm(y_eval - entropic_map(y_eval, y, out.g, epsilon, cost_fn))

    return jax.lax.map(error, epsilons)


def select_end_epsilon(
    y: Any,
    y_eval: Any,
    scales: Any = (0.5, 0.25, 0.125, 0.0625, 0.03125),
    b: Any = None,
    *,
    cost_fn: costs.CostFn | None = None,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
) -> tuple[jax.Array, jax.Array]:
    r"""The paper's choice of the last regularisation (its Algorithm 4): the best self-map.

    For each scale :math:`s` of the grid, solve entropic OT from the target to itself at
    :math:`\varepsilon = s\,\bar\varepsilon_{YY}` (:math:`\bar\varepsilon_{YY}` =
    :func:`otdiff.ot.default_epsilon` of ``(y, y)``) and measure how far its entropic map moves
    held-out target points, :math:`\|y_{\mathrm{eval}} - T_\varepsilon(y_{\mathrm{eval}})\|`;
    return the :math:`\varepsilon` of the smallest error :cite:`kassraie2024progot`. A small
    :math:`\varepsilon` overfits the samples of ``y`` (held-out points are snapped to their
    nearest neighbours), a large one shrinks everything towards the mean: the best self-map sits
    in between, and sets the scale at which the target is resolved.

    Args:
        y: target points, shape ``(m, d)``.
        y_eval: held-out target points, shape ``(k, d)``.
        scales: a non-empty 1-D grid of scales > 0.
        b: target weights (``None``: uniform).
        cost_fn: the cost (``None``: squared Euclidean).
        threshold, max_iterations, inner_iterations: Sinkhorn's settings.

    Returns:
        ``(epsilon, errors)``: the chosen absolute :math:`\varepsilon` and the error of every
        scale.

    Taught in: book/ot/03_progot.ipynb.
    """
    y, y_eval, b, _ = _checks.check_weighted_clouds(
        y, y_eval, b, None, ("y", "y_eval", "b", "the weights of y_eval")
    )
    cost_fn = _check_cost_fn(cost_fn)
    scales = _checks.check_positive_vector(scales, "scales").astype(y.dtype)
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    scales = _checks.guard_positive(scales, "scales")
    epsilons = scales * default_epsilon(y, y, cost_fn)
    errors = _self_map_errors(
        y,
        b,
        y_eval,
        epsilons,
        jnp.asarray(threshold, y.dtype),
        cost_fn,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
    return epsilons[jnp.argmin(errors)], errors
