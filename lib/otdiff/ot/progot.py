r"""Progressive entropic optimal transport (ProgOT) {cite}`kassraie2024progot`.

One entropic OT solve from the source :math:`X` straight to the target :math:`Y` must trade
off bias (a large :math:`\varepsilon` blurs the map towards the mean) against speed and
variance (a small one needs many Sinkhorn iterations and overfits the samples). ProgOT splits
the displacement into :math:`K` steps along an estimated McCann interpolation. With
:math:`x^{(0)} = X`, step sizes :math:`\alpha_k \in (0, 1]`, regularisations
:math:`\varepsilon_k` and tolerances :math:`\tau_k`, step :math:`k = 0, \dots, K-1` solves

.. math::

    (f_k, g_k) = \mathrm{Sinkhorn}\big(x^{(k)}, Y; \varepsilon_k, \tau_k\big), \qquad
    x^{(k+1)} = (1 - \alpha_k)\, x^{(k)} + \alpha_k\, T_k\big(x^{(k)}\big),

where :math:`T_k` is the entropic map of step :math:`k` (see :func:`entropic_map`), and starts
step :math:`k + 1` from :math:`((1 - \alpha_k) f_k, (1 - \alpha_k) g_k)`. After :math:`k`
steps the points have covered the fraction :math:`t_k = 1 - \prod_{j < k}(1 - \alpha_j)` of
the way (:func:`elapsed_times`). The outputs are the coupling of the last step (its rows are the
original points) and the out-of-sample map :math:`T_{\mathrm{Prog}} = S_{K-1} \circ \dots \circ
S_0` with :math:`S_k(z) = (1 - \alpha_k) z + \alpha_k T_k(z)` (:func:`transport`).

*Why not ott-jax's ``ProgOT``.* ott-jax 0.6 ships ``ott.tools.progot``, whose schedules this
module reproduces (:func:`alpha_schedule`, :func:`epsilon_schedule`). Its fitting loop, however,
computes :math:`x^{(k+1)} = (1 - \alpha_k) x^{(0)} + \alpha_k T_k(x^{(k)})`, from the
*original* points (``x`` where ``state.x`` was meant, since ott-jax PR #650), while its
``transport`` replays the recursion above; the fitted potentials and the map disagree. Here
the loop follows the paper, is one ``jax.lax.scan`` under ``jit``, takes per-step
``epsilons`` and ``thresholds`` as dynamic arrays (no recompilation when they change) and
records the trajectory :math:`x^{(0)}, \dots, x^{(K)}`.

Conventions as in :mod:`otdiff.ot.sinkhorn`: the cost is :math:`\|x - y\|^2` (no factor 1/2),
``epsilon`` is absolute, potentials follow ott-jax.

Taught in: book/ot/03_progot.ipynb.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from otdiff import _checks

__all__ = [
    "ALPHA_SCHEDULES",
    "ProgOTOutput",
    "alpha_schedule",
    "elapsed_times",
    "epsilon_schedule",
    "default_epsilon",
    "entropic_map",
    "select_end_epsilon",
    "progot",
    "progot_core",
    "transport",
    "known_map_problem",
    "known_map",
]

#: The step-size schedules :func:`alpha_schedule` accepts (ott-jax's names).
ALPHA_SCHEDULES = ("lin", "exp", "quad")


class ProgOTOutput(NamedTuple):
    r"""What :func:`progot` returns (a pytree of arrays: safe to return from ``jit``/``vmap``).

    Attributes:
        xs: the trajectory :math:`x^{(0)}, \dots, x^{(K)}`, shape ``(K + 1, n, d)``;
            ``xs[0]`` is the source and ``xs[k + 1]`` the points after step ``k``.
        f: the source potential of every step (ott-jax's convention), shape ``(K, n)``.
        g: the target potential of every step, shape ``(K, m)``; with ``y``, ``epsilons``
            and ``alphas`` it defines the out-of-sample map (:func:`transport`).
        y: the target points, shape ``(m, d)``.
        alphas: the step sizes, shape ``(K,)``.
        epsilons: the regularisation of every step, shape ``(K,)``.
        thresholds: the stopping tolerance of every step, shape ``(K,)``.
        n_iterations: the Sinkhorn iterations of every step, shape ``(K,)``.
        converged: whether every step reached its tolerance, shape ``(K,)``.
        reg_ot_cost: ott-jax's ``reg_ot_cost`` of every step, shape ``(K,)``.
        coupling: the coupling :math:`P` of the last step, between :math:`x^{(K-1)}` and
            :math:`Y`; its row ``i`` is the original point ``x[i]``. Shape ``(n, m)``.
        transport_cost: :math:`\sum_{ij} P_{ij}\|x_i - y_j\|^2` for the *original* points:
            the cost of the coupling as a plan between :math:`X` and :math:`Y`.
        marginal_error: :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1` of the last
            step's coupling.
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
    coupling: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array

    @property
    def num_steps(self) -> int:
        """The number of steps :math:`K`."""
        return self.alphas.shape[-1]

    @property
    def total_iterations(self) -> jax.Array:
        """The Sinkhorn iterations summed over the steps."""
        return jnp.sum(self.n_iterations, axis=-1)


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def alpha_schedule(kind: str, num_steps: int) -> jax.Array:
    r"""The step sizes :math:`(\alpha_0, \dots, \alpha_{K-1})` of a named schedule.

    With :math:`t_k = 1 - \prod_{j < k}(1 - \alpha_j)` the fraction of the way covered after
    :math:`k` steps ({cite}`kassraie2024progot`, Section 4; ott-jax's ``get_alpha_schedule``):

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
        num_steps: :math:`K`, an int >= 1. Static.

    Returns:
        A float array of shape ``(K,)`` with entries in :math:`(0, 1]`.

    Raises:
        ValueError, TypeError: for an unknown ``kind`` or ``num_steps < 1``.

    Taught in: book/ot/03_progot.ipynb.
    """
    num_steps = _checks.check_int(num_steps, "num_steps", low=1)
    if kind not in ALPHA_SCHEDULES:
        raise ValueError(f"kind must be one of {ALPHA_SCHEDULES}, got {kind!r}.")
    k = np.arange(num_steps, dtype=np.float64)
    if kind == "lin":
        alphas = 1.0 / (num_steps - k)
    elif kind == "exp":
        alphas = np.full(num_steps, np.exp(-1.0))
    else:
        alphas = (2.0 * k + 3.0) / ((num_steps + 1.0) ** 2 - (k + 1.0) ** 2)
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


def epsilon_schedule(
    alphas: Any, epsilon_start: Any, epsilon_end: Any, *, kind: str = "paper"
) -> jax.Array:
    r"""The regularisation :math:`\varepsilon_k` of every step, tied to the time it starts at.

    ``kind="paper"`` is the rule of {cite}`kassraie2024progot` (their Algorithm 4, ott-jax's
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


def default_epsilon(x: Any, y: Any) -> jax.Array:
    r"""ott-jax's default regularisation: :math:`0.05 \times` the std of :math:`\|x_i - y_j\|^2`.

    The value a ``PointCloud(x, y)`` uses when given no ``epsilon``; the paper's schedules are
    multiples of it.

    Taught in: book/ot/03_progot.ipynb.
    """
    x = _checks.check_points(x, "x")
    y = _checks.check_points(y, "y")
    _checks.check_same_dim(x, y)
    return jnp.asarray(pointcloud.PointCloud(x, y).epsilon)


# --------------------------------------------------------------------------------------------
# The entropic map
# --------------------------------------------------------------------------------------------


def _entropic_map(z, y, g, epsilon):
    cost = pointcloud.PointCloud(z, y).cost_matrix
    weights = jax.nn.softmax((g[None, :] - cost) / epsilon, axis=1)
    return weights @ y


def entropic_map(z: Any, y: Any, g: Any, epsilon: Any) -> jax.Array:
    r"""The entropic map :math:`T_\varepsilon` of a Sinkhorn solution, at new points ``z``.

    For the cost :math:`\|x - y\|^2` the entropic potential extends to any point by the soft
    :math:`c`-transform :math:`f(z) = -\varepsilon\log\sum_j e^{(g_j - \|z - y_j\|^2)/\varepsilon}`,
    and :math:`T_\varepsilon(z) = z - \tfrac12\nabla f(z)` (the entropic map estimator of
    Pooladian and Niles-Weed, 2021):

    .. math::

        T_\varepsilon(z) = \sum_j w_j(z)\, y_j, \qquad
        w(z) = \mathrm{softmax}_j\Big(\frac{g_j - \|z - y_j\|^2}{\varepsilon}\Big),

    the barycentric projection of the conditional law of the coupling. At a training point
    ``x[i]`` it equals :math:`\sum_j P_{ij} y_j / a_i` (exactly, once the row marginal is met).
    ``g`` follows ott-jax's convention (it includes :math:`\varepsilon\log b_j`), so the
    weights of the target need not be passed. Pure and jit-able; nothing is checked.

    Args:
        z: points to map, shape ``(k, d)``.
        y: the target points, shape ``(m, d)``.
        g: the target potential, shape ``(m,)``.
        epsilon: the regularisation the potential was computed with.

    Returns:
        :math:`T_\varepsilon(z)`, shape ``(k, d)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    return _entropic_map(jnp.asarray(z), jnp.asarray(y), jnp.asarray(g), epsilon)


# --------------------------------------------------------------------------------------------
# The pure core
# --------------------------------------------------------------------------------------------


def _sinkhorn(x, y, a, b, epsilon, threshold, init, max_iterations, inner_iterations):
    geom = pointcloud.PointCloud(x, y, epsilon=epsilon)
    problem = linear_problem.LinearProblem(geom, a=a, b=b)
    solver = ott_sinkhorn.Sinkhorn(
        threshold=threshold, max_iterations=max_iterations, inner_iterations=inner_iterations
    )
    return solver(problem, init=init)


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations", "warm_start"))
def progot_core(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array,
    b: jax.Array,
    alphas: jax.Array,
    epsilons: jax.Array,
    thresholds: jax.Array,
    *,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    warm_start: bool = True,
) -> ProgOTOutput:
    r"""The jitted, unchecked core of :func:`progot`: one ``jax.lax.scan`` over the steps.

    ``alphas``, ``epsilons`` and ``thresholds`` are dynamic arrays of shape ``(K,)`` (the
    number of steps is their static length): new values never recompile, and the core can be
    vmapped over them. Each step runs ott-jax's Sinkhorn {cite}`cuturi2022ott`, warm-started
    (``warm_start=True``) from :math:`((1 - \alpha_{k-1}) f_{k-1}, (1 - \alpha_{k-1}) g_{k-1})`
    as in ott-jax, or from zero.

    Nothing is checked here: pass arrays of one floating dtype, weights that sum to one and
    ``max_iterations`` a multiple of ``inner_iterations``, or call :func:`progot`.

    Taught in: book/ot/03_progot.ipynb.
    """
    n, m = x.shape[0], y.shape[0]

    def step(carry, inputs):
        xk, f_init, g_init = carry
        alpha, epsilon, threshold = inputs
        out = _sinkhorn(
            xk, y, a, b, epsilon, threshold, (f_init, g_init), max_iterations, inner_iterations
        )
        x_next = (1.0 - alpha) * xk + alpha * _entropic_map(xk, y, out.g, epsilon)
        if warm_start:
            f_next, g_next = (1.0 - alpha) * out.f, (1.0 - alpha) * out.g
        else:
            f_next, g_next = jnp.zeros_like(out.f), jnp.zeros_like(out.g)
        info = (xk, x_next, out.f, out.g, out.n_iters, out.converged, out.reg_ot_cost)
        return (x_next, f_next, g_next), info

    zeros = (jnp.zeros((n,), x.dtype), jnp.zeros((m,), x.dtype))
    _, (starts, nexts, f, g, n_iters, converged, reg_cost) = jax.lax.scan(
        step, (x, *zeros), (alphas, epsilons, thresholds)
    )
    xs = jnp.concatenate([x[None], nexts], axis=0)
    last = starts[-1]  # x^(K-1): the last step couples it with y
    cost_last = pointcloud.PointCloud(last, y).cost_matrix
    coupling = jnp.exp((f[-1][:, None] + g[-1][None, :] - cost_last) / epsilons[-1])
    marginal_error = jnp.sum(jnp.abs(coupling.sum(axis=1) - a)) + jnp.sum(
        jnp.abs(coupling.sum(axis=0) - b)
    )
    transport_cost = jnp.sum(coupling * pointcloud.PointCloud(x, y).cost_matrix)
    return ProgOTOutput(
        xs=xs,
        f=f,
        g=g,
        y=y,
        alphas=alphas,
        epsilons=epsilons,
        thresholds=thresholds,
        n_iterations=n_iters,
        converged=converged,
        reg_ot_cost=reg_cost,
        coupling=coupling,
        transport_cost=transport_cost,
        marginal_error=marginal_error,
    )


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_alphas(alphas: Any) -> jax.Array:
    try:
        arr = jnp.asarray(alphas)
    except Exception:
        raise TypeError(f"alphas must be a 1-D array of step sizes, got {alphas!r}.") from None
    if arr.ndim != 1:
        raise ValueError(f"alphas must be a 1-D array of shape (K,), got shape {arr.shape}.")
    if arr.shape[0] < 1:
        raise ValueError("alphas must hold at least one step (K >= 1), got an empty array.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if _checks.is_concrete(arr):
        values = np.asarray(arr)
        if not np.all(np.isfinite(values) & (values > 0) & (values <= 1)):
            raise ValueError(f"alphas must all lie in (0, 1], got {values}.")
    return arr


def _check_per_step(value: Any, name: str, num_steps: int, dtype) -> jax.Array:
    arr = jnp.asarray(value)
    if arr.ndim == 0:
        arr = jnp.full((num_steps,), arr)
    if arr.shape != (num_steps,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({num_steps},) (one per step), "
            f"got shape {arr.shape}."
        )
    if not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    if _checks.is_concrete(arr):
        values = np.asarray(arr)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError(f"{name} must all be finite numbers > 0, got {values}.")
    return arr.astype(dtype)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def progot(
    x: Any,
    y: Any,
    a: Any = None,
    b: Any = None,
    *,
    num_steps: int = 8,
    alphas: Any = "lin",
    epsilons: Any = None,
    epsilon_start: Any = None,
    epsilon_end: Any = None,
    epsilon_kind: str = "paper",
    threshold: Any = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    warm_start: bool = True,
) -> ProgOTOutput:
    r"""Progressive entropic OT {cite}`kassraie2024progot` from ``x`` to ``y``.

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
        num_steps: :math:`K`, an int >= 1, used when ``alphas`` is a schedule name. Static.
        alphas: a name of :data:`ALPHA_SCHEDULES` (see :func:`alpha_schedule`) or an array of
            shape ``(K,)`` with entries in :math:`(0, 1]`. Dynamic (its length is static).
        epsilons: the absolute regularisation of every step, shape ``(K,)``, each > 0; or
            ``None`` for :func:`epsilon_schedule` from ``epsilon_start`` (default:
            :func:`default_epsilon` of ``(x, y)``) to ``epsilon_end`` (default:
            :func:`default_epsilon` of ``(y, y)``, the paper's rule with scale one) of kind
            ``epsilon_kind``. Dynamic.
        epsilon_start, epsilon_end: see ``epsilons``; finite and > 0.
        epsilon_kind: ``"paper"`` or ``"geometric"`` (see :func:`epsilon_schedule`).
        threshold: the stopping tolerance on Sinkhorn's marginal error, a scalar or one per
            step, each > 0. Dynamic.
        max_iterations, inner_iterations: Sinkhorn's loop sizes per step (as in
            :func:`otdiff.ot.solve`). Static.
        warm_start: start each step from the previous step's scaled potentials. Static.

    Returns:
        A :class:`ProgOTOutput`; map new points with :func:`transport`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range (``num_steps < 1``,
        ``alphas`` outside :math:`(0, 1]`, ``epsilons`` or ``threshold`` <= 0, mismatched
        lengths, bad points or weights).

    Taught in: book/ot/03_progot.ipynb.
    """
    x, y, a, b = _checks.check_weighted_clouds(x, y, a, b)
    dtype = x.dtype
    if isinstance(alphas, str):
        alphas = alpha_schedule(alphas, num_steps)
    alphas = _check_alphas(alphas).astype(dtype)
    k = alphas.shape[0]
    if epsilons is None:
        for value, name in ((epsilon_start, "epsilon_start"), (epsilon_end, "epsilon_end")):
            if value is not None:
                _checks.check_positive(value, name)
        start = default_epsilon(x, y) if epsilon_start is None else epsilon_start
        end = default_epsilon(y, y) if epsilon_end is None else epsilon_end
        epsilons = epsilon_schedule(alphas, start, end, kind=epsilon_kind)
    epsilons = _check_per_step(epsilons, "epsilons", k, dtype)
    thresholds = _check_per_step(threshold, "threshold", k, dtype)
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    if not isinstance(warm_start, bool | np.bool_):
        raise TypeError(f"warm_start must be a bool, got {warm_start!r}.")
    return progot_core(
        x,
        y,
        a,
        b,
        alphas,
        epsilons,
        thresholds,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        warm_start=bool(warm_start),
    )


def transport(
    output: ProgOTOutput, z: Any, *, num_steps: int | None = None, return_path: bool = False
) -> jax.Array:
    r"""The ProgOT map :math:`T_{\mathrm{Prog}} = S_{K-1}\circ\dots\circ S_0` at new points.

    Replays the fitted steps on ``z``: :math:`z^{(0)} = z` and

    .. math::

        z^{(k+1)} = (1 - \alpha_k)\, z^{(k)} + \alpha_k\, T_k\big(z^{(k)}\big),

    with :math:`T_k` the entropic map of step :math:`k` (:func:`entropic_map` with
    ``output.g[k]`` and ``output.epsilons[k]``). On the training points it retraces
    ``output.xs``. This is the estimator whose consistency {cite}`kassraie2024progot` prove.
    Jit-able (``num_steps`` is static).

    Args:
        output: a :class:`ProgOTOutput`.
        z: points to map, shape ``(k, d)``, finite, the dimension of the fit.
        num_steps: replay only the first ``num_steps`` steps (default: all), an int in
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
    k = k_max if num_steps is None else _checks.check_int(num_steps, "num_steps", low=1, high=k_max)
    z = z.astype(output.y.dtype)

    def step(zk, inputs):
        alpha, epsilon, g = inputs
        z_next = (1.0 - alpha) * zk + alpha * _entropic_map(zk, output.y, g, epsilon)
        return z_next, z_next

    final, path = jax.lax.scan(step, z, (output.alphas[:k], output.epsilons[:k], output.g[:k]))
    if return_path:
        return jnp.concatenate([z[None], path], axis=0)
    return final


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations"))
def _self_map_errors(y, b, y_eval, epsilons, threshold, *, max_iterations, inner_iterations):
    zeros = (jnp.zeros_like(b), jnp.zeros_like(b))

    def error(epsilon):
        out = _sinkhorn(y, y, b, b, epsilon, threshold, zeros, max_iterations, inner_iterations)
        return jnp.linalg.norm(y_eval - _entropic_map(y_eval, y, out.g, epsilon))

    return jax.lax.map(error, epsilons)


def select_end_epsilon(
    y: Any,
    y_eval: Any,
    scales: Any = (0.5, 0.25, 0.125, 0.0625, 0.03125),
    b: Any = None,
    *,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
) -> tuple[jax.Array, jax.Array]:
    r"""The paper's choice of the last regularisation (its Algorithm 4): the best self-map.

    For each scale :math:`s` of the grid, solve entropic OT from the target to itself at
    :math:`\varepsilon = s\,\bar\varepsilon_{YY}` (:math:`\bar\varepsilon_{YY}` =
    :func:`default_epsilon` of ``(y, y)``) and measure how far its entropic map moves held-out
    target points, :math:`\|y_{\mathrm{eval}} - T_\varepsilon(y_{\mathrm{eval}})\|`; return
    the :math:`\varepsilon` of the smallest error {cite}`kassraie2024progot`. A small
    :math:`\varepsilon` overfits the samples of ``y`` (held-out points are snapped to their
    nearest neighbours), a large one shrinks everything towards the mean: the best self-map sits
    in between, and sets the scale at which the target is resolved.

    Args:
        y: target points, shape ``(m, d)``.
        y_eval: held-out target points, shape ``(k, d)``.
        scales: a non-empty 1-D grid of scales > 0.
        b: target weights (``None``: uniform).
        threshold, max_iterations, inner_iterations: Sinkhorn's settings.

    Returns:
        ``(epsilon, errors)``: the chosen absolute :math:`\varepsilon` and the error of every
        scale.

    Taught in: book/ot/03_progot.ipynb.
    """
    y, y_eval, b, _ = _checks.check_weighted_clouds(y, y_eval, b, None)
    scales = jnp.asarray(scales, dtype=y.dtype)
    if scales.ndim != 1 or scales.shape[0] < 1:
        raise ValueError(f"scales must be a non-empty 1-D array, got shape {scales.shape}.")
    if _checks.is_concrete(scales) and not bool(jnp.all(jnp.isfinite(scales) & (scales > 0))):
        raise ValueError(f"scales must all be finite numbers > 0, got {np.asarray(scales)}.")
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    epsilons = scales * default_epsilon(y, y)
    errors = _self_map_errors(
        y,
        b,
        y_eval,
        epsilons,
        jnp.asarray(threshold, y.dtype),
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
    return epsilons[jnp.argmin(errors)], errors


# --------------------------------------------------------------------------------------------
# A test problem with a known transport map
# --------------------------------------------------------------------------------------------


def known_map(x: Any, jump: float = 4.0, width: float = 0.25, shift: float = 1.0) -> jax.Array:
    r"""A transport map known in closed form: the gradient of a convex potential.

    .. math::

        T_0(x) = \nabla\varphi(x) = x + \text{jump}\,\tanh(x_1/\text{width})\, e_1
            + \text{shift}\,\mathbf 1,
        \qquad
        \varphi(x) = \tfrac12\|x\|^2 + \text{jump}\cdot\text{width}\,
            \log\cosh(x_1/\text{width}) + \text{shift}\,\mathbf 1^\top x.

    :math:`\varphi` is convex (:math:`\log\cosh` is), so by Brenier's theorem :math:`T_0` is the
    optimal map for the squared Euclidean cost from any source law with a density to its image.
    It pulls a Gaussian apart along the first axis into two lobes about ``2 * jump`` apart,
    joined by a thin bridge: an entropic map with too large an :math:`\varepsilon` averages the
    two lobes and pulls points towards the mean. The other coordinates are only shifted.

    Taught in: book/ot/03_progot.ipynb.
    """
    x = jnp.asarray(x)
    e1 = jnp.zeros(x.shape[-1], x.dtype).at[0].set(1.0)
    return x + jump * jnp.tanh(x[..., :1] / width) * e1 + shift


@functools.partial(jax.jit, static_argnames=("n", "d", "n_test"))
def known_map_problem(
    key: jax.Array, n: int, d: int, n_test: int = 500
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    r"""Samples for map estimation with the exact answer :func:`known_map` (sizes static).

    Source :math:`x \sim \mathcal N(0, I_d)` (``n`` points), target :math:`y = T_0(x')` for an
    *independent* sample :math:`x'` (``n`` points: the pairing is not given), and ``n_test``
    fresh source points with their exact images.

    Returns:
        ``(x, y, x_test, y_test)`` with ``y_test = known_map(x_test)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    y = known_map(jax.random.normal(ky, (n, d)))
    x_test = jax.random.normal(kt, (n_test, d))
    return x, y, x_test, known_map(x_test)
