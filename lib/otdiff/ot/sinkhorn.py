r"""Entropic optimal transport between point clouds with the Sinkhorn algorithm.

This module wraps ott-jax's solver {cite}`cuturi2022ott` (``ott.solvers.linear.sinkhorn.Sinkhorn``
on an ``ott.geometry.pointcloud.PointCloud`` with the squared Euclidean cost) in the house style:
a public function that checks its inputs once, outside ``jit``, and a pure jitted core in which
``epsilon`` and ``threshold`` are *dynamic* scalars, so that moving a slider never recompiles
and ``jax.vmap`` over a grid of ``epsilon`` works.

For weights :math:`a \in \Delta_n`, :math:`b \in \Delta_m` on points :math:`x_i, y_j` and the cost
:math:`C_{ij} = \|x_i - y_j\|^2`, the entropic problem {cite}`cuturi2013sinkhorn` is

.. math::

    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in U(a, b)}
        \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P \,\|\, a b^\top),
    \qquad U(a, b) = \{P \geq 0 : P\mathbf 1 = a,\ P^\top \mathbf 1 = b\}.

*Conventions.* ``epsilon`` is **absolute**: it is compared with the cost itself, in the units of
:math:`\|x - y\|^2`. (ott-jax's ``PointCloud`` reads ``epsilon`` as absolute unless it is given
``relative_epsilon="mean"`` or ``"std"``, in which case it multiplies the mean or standard
deviation of the cost matrix; with ``epsilon=None`` it defaults to ``0.05 * std(C)``.) Use
:func:`relative_epsilon` to turn a fraction of the mean cost into the absolute value this module
expects. The dual potentials follow ott-jax's convention (see :class:`SinkhornOutput`).

Taught in: book/ot/01_sinkhorn.ipynb.
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
    "SinkhornOutput",
    "AssignmentOutput",
    "solve",
    "solve_core",
    "sweep_epsilon",
    "cost_matrix",
    "mean_cost",
    "relative_epsilon",
    "exact_ot_cost",
]


class SinkhornOutput(NamedTuple):
    r"""What :func:`solve` returns (a pytree of arrays: safe to return from ``jit``/``vmap``).

    The potentials follow ott-jax's convention, in which the coupling is

    .. math::

        P_{ij} = \exp\big((f_i + g_j - C_{ij}) / \varepsilon\big).

    They equal :math:`\hat f_i + \varepsilon \log a_i` and :math:`\hat g_j + \varepsilon \log b_j`
    for the potentials :math:`\hat f, \hat g` of the textbook dual with kernel
    :math:`a_i b_j e^{-C_{ij}/\varepsilon}`; both pairs are defined up to
    :math:`(f + c, g - c)`.

    Attributes:
        f: the source potential, shape ``(n,)``.
        g: the target potential, shape ``(m,)``.
        coupling: the transport plan :math:`P`, shape ``(n, m)``.
        reg_ot_cost: ott-jax's ``reg_ot_cost``, the dual objective at ``(f, g)``,

            .. math::

                \langle \hat f, a\rangle + \langle \hat g, b\rangle
                + \varepsilon\Big(1 - \sum_{ij} P_{ij}\Big),

            which equals :math:`\langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,ab^\top)`
            at the optimum, i.e. :math:`\mathrm{OT}_\varepsilon(a, b)`. For uniform weights with
            ``n == m`` it lies within :math:`[\mathrm{OT}_0, \mathrm{OT}_0 + \varepsilon\log n]`.
        transport_cost: the linear part :math:`\langle P, C\rangle` of the returned coupling.
        marginal_error: :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1`.
        n_iterations: the Sinkhorn iterations run (a multiple of ``inner_iterations``).
        errors: ott-jax's error trace, shape ``(max_iterations // inner_iterations,)``: entry
            ``k`` is :math:`\|P^\top \mathbf 1 - b\|_1` after iteration
            ``(k + 1) * inner_iterations``, and ``-1`` once the loop has stopped.
        converged: whether the last recorded error is below ``threshold``.
        epsilon: the (absolute) regularisation used.
    """

    f: jax.Array
    g: jax.Array
    coupling: jax.Array
    reg_ot_cost: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array
    n_iterations: jax.Array
    errors: jax.Array
    converged: jax.Array
    epsilon: jax.Array


class AssignmentOutput(NamedTuple):
    """What :func:`exact_ot_cost` returns.

    Attributes:
        cost: the unregularised OT cost :math:`\\frac1n\\sum_i \\|x_i - y_{\\sigma(i)}\\|^2`
            (a Python float, computed in float64).
        permutation: :math:`\\sigma`, an integer array: ``x[i]`` is sent to ``y[permutation[i]]``.
    """

    cost: float
    permutation: np.ndarray


# --------------------------------------------------------------------------------------------
# The pure core
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations", "lse_mode"))
def solve_core(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array,
    b: jax.Array,
    epsilon: jax.Array,
    threshold: jax.Array,
    *,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool = True,
) -> SinkhornOutput:
    r"""The jitted, unchecked core of :func:`solve`: pure, and safe under ``vmap`` and ``grad``.

    ``epsilon`` and ``threshold`` are dynamic scalars: changing them does not recompile
    (``solve_core._cache_size()`` counts the compiled programs), and the core can be vmapped
    over a grid of regularisations::

        jax.vmap(solve_core, in_axes=(None, None, None, None, 0, None))(x, y, a, b, eps, tol)

    Under ``vmap`` the batch runs until its slowest member stops; members that have converged
    are frozen, so each keeps its own potentials, errors and iteration count. Gradients with
    respect to ``x``, ``y``, ``a``, ``b`` use ott-jax's implicit differentiation, and the
    gradient of ``reg_ot_cost`` is Danskin's: the potentials are held fixed.

    Nothing is checked here: pass arrays of one floating dtype, weights that sum to one and
    ``max_iterations`` a multiple of ``inner_iterations``, or call :func:`solve`.

    Args:
        x, y: the point clouds, shapes ``(n, d)`` and ``(m, d)``.
        a, b: the weights, shapes ``(n,)`` and ``(m,)``.
        epsilon: the absolute regularisation, a scalar array. Dynamic.
        threshold: the stopping tolerance, a scalar array. Dynamic.
        max_iterations, inner_iterations: static ints (see :func:`solve`).
        lse_mode: static bool (see :func:`solve`).

    Returns:
        A :class:`SinkhornOutput`.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    geom = pointcloud.PointCloud(x, y, epsilon=epsilon)  # absolute epsilon
    problem = linear_problem.LinearProblem(geom, a=a, b=b)
    solver = ott_sinkhorn.Sinkhorn(
        lse_mode=lse_mode,
        threshold=threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
    out = solver(problem)
    coupling = out.matrix
    cost = geom.cost_matrix
    marginal_error = jnp.sum(jnp.abs(coupling.sum(axis=1) - a)) + jnp.sum(
        jnp.abs(coupling.sum(axis=0) - b)
    )
    return SinkhornOutput(
        f=out.f,
        g=out.g,
        coupling=coupling,
        reg_ot_cost=out.reg_ot_cost,
        transport_cost=jnp.sum(coupling * cost),
        marginal_error=marginal_error,
        n_iterations=out.n_iters,
        errors=out.errors,
        converged=out.converged,
        epsilon=jnp.asarray(geom.epsilon),
    )


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_problem(x, y, a, b, threshold, max_iterations, inner_iterations, lse_mode):
    x, y, a, b = _checks.check_weighted_clouds(x, y, a, b)
    dtype = x.dtype
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    if not isinstance(lse_mode, bool | np.bool_):
        raise TypeError(f"lse_mode must be a bool, got {lse_mode!r}.")
    threshold = jnp.asarray(threshold, dtype=dtype)
    return x, y, a, b, threshold, dtype, max_iterations, inner_iterations, bool(lse_mode)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def solve(
    x: Any,
    y: Any,
    epsilon: Any,
    a: Any = None,
    b: Any = None,
    *,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool = True,
) -> SinkhornOutput:
    r"""Entropic OT between two weighted point clouds with the log-domain Sinkhorn algorithm.

    Solves :math:`\min_{P \in U(a,b)} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\|ab^\top)`
    with :math:`C_{ij} = \|x_i - y_j\|^2` by ott-jax's ``Sinkhorn`` {cite}`cuturi2022ott`:
    starting from :math:`f = g = 0`, it alternates the exact maximisations of the dual in
    :math:`g` and in :math:`f` {cite}`cuturi2013sinkhorn,peyre2019computational`,

    .. math::

        g_j \leftarrow \varepsilon \log b_j
            - \varepsilon \log \sum_i \exp\big((f_i - C_{ij})/\varepsilon\big), \qquad
        f_i \leftarrow \varepsilon \log a_i
            - \varepsilon \log \sum_j \exp\big((g_j - C_{ij})/\varepsilon\big),

    the log-domain form of Sinkhorn-Knopp matrix scaling {cite}`sinkhorn1967concerning`, which
    converges linearly {cite}`franklin1989scaling`. Every ``inner_iterations`` iterations it
    records :math:`\|P^\top\mathbf 1 - b\|_1` (the row marginal is exact after an
    :math:`f`-update) and stops once it is below ``threshold``.

    The inputs are checked here, outside ``jit``; then the jitted :data:`solve_core` runs with
    ``epsilon`` and ``threshold`` as dynamic scalars: changing them never recompiles. The
    function is also safe to call inside ``jit``/``vmap`` (value checks are then skipped).

    Args:
        x: source points, shape ``(n, d)``, finite.
        y: target points, shape ``(m, d)``, finite, same ``d``.
        epsilon: the absolute entropic regularisation, a finite number > 0 (in the units of
            the squared distances; see :func:`relative_epsilon`). Dynamic.
        a: source weights, shape ``(n,)``, non-negative, summing to one; ``None`` is uniform.
        b: target weights, shape ``(m,)``, likewise.
        threshold: the stopping tolerance on :math:`\|P^\top\mathbf 1 - b\|_1`, > 0. Dynamic.
        max_iterations: the most iterations run, an int >= 1, a multiple of
            ``inner_iterations``. Static (sets the length of ``errors``).
        inner_iterations: iterations between two error checks, an int >= 1. Static.
        lse_mode: ``True`` for log-sum-exp updates of the potentials (stable for any
            ``epsilon``), ``False`` for multiplicative updates of the scalings
            :math:`e^{f/\varepsilon}` (faster, but the kernel :math:`e^{-C/\varepsilon}`
            underflows for small ``epsilon``). Static.

    Returns:
        A :class:`SinkhornOutput`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    x, y, a, b, threshold, dtype, max_iterations, inner_iterations, lse_mode = _check_problem(
        x, y, a, b, threshold, max_iterations, inner_iterations, lse_mode
    )
    _checks.check_positive(epsilon, "epsilon")
    epsilon = jnp.asarray(epsilon, dtype=dtype)
    return solve_core(
        x,
        y,
        a,
        b,
        epsilon,
        threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=lse_mode,
    )


@functools.partial(
    jax.jit,
    static_argnames=("max_iterations", "inner_iterations", "lse_mode", "batch_size"),
)
def _sweep_core(
    x, y, a, b, epsilons, threshold, *, max_iterations, inner_iterations, lse_mode, batch_size
):
    def one(epsilon):
        return solve_core(
            x,
            y,
            a,
            b,
            epsilon,
            threshold,
            max_iterations=max_iterations,
            inner_iterations=inner_iterations,
            lse_mode=lse_mode,
        )

    return jax.lax.map(one, epsilons, batch_size=batch_size)


def sweep_epsilon(
    x: Any,
    y: Any,
    epsilons: Any,
    a: Any = None,
    b: Any = None,
    *,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool = True,
    batch_size: int | None = None,
) -> SinkhornOutput:
    r"""Solve the same problem for every ``epsilon`` of a grid, in one compiled program.

    The result is a :class:`SinkhornOutput` whose fields carry a leading axis of length
    ``len(epsilons)``: ``out.n_iterations`` is the iterations-to-``threshold`` curve, and
    ``out.reg_ot_cost`` the path :math:`\varepsilon \mapsto \mathrm{OT}_\varepsilon`
    {cite}`peyre2019computational`. The number of iterations Sinkhorn needs grows as
    :math:`\varepsilon` shrinks (the contraction rate of the iterations tends to one
    {cite}`franklin1989scaling`).

    The grid is mapped with ``jax.lax.map``: ``batch_size=None`` solves one ``epsilon`` after
    the other, each stopping at its own iteration count (the cheapest on a CPU); an integer
    ``batch_size`` solves that many at once with ``jax.vmap`` (best on a GPU, e.g.
    ``batch_size=len(epsilons)``), at the price that a batch runs until its slowest member stops.

    Args:
        x, y, a, b, threshold, max_iterations, inner_iterations, lse_mode: as in :func:`solve`.
        epsilons: a non-empty 1-D array of absolute regularisations, each finite and > 0.
        batch_size: ``None`` or an int >= 1, the number of ``epsilon`` solved together. Static.

    Returns:
        A :class:`SinkhornOutput` with a leading ``epsilon`` axis.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    x, y, a, b, threshold, dtype, max_iterations, inner_iterations, lse_mode = _check_problem(
        x, y, a, b, threshold, max_iterations, inner_iterations, lse_mode
    )
    epsilons = jnp.asarray(epsilons)
    if epsilons.ndim != 1 or epsilons.shape[0] < 1:
        raise ValueError(f"epsilons must be a non-empty 1-D array, got shape {epsilons.shape}.")
    if not jnp.issubdtype(epsilons.dtype, jnp.number):
        raise TypeError(f"epsilons must hold real numbers, got dtype {epsilons.dtype}.")
    if _checks.is_concrete(epsilons) and not bool(jnp.all(jnp.isfinite(epsilons) & (epsilons > 0))):
        raise ValueError(f"epsilons must all be finite numbers > 0, got {np.asarray(epsilons)}.")
    if batch_size is not None:
        batch_size = _checks.check_int(batch_size, "batch_size", low=1)
    return _sweep_core(
        x,
        y,
        a,
        b,
        epsilons.astype(dtype),
        threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=lse_mode,
        batch_size=batch_size,
    )


def cost_matrix(x: Any, y: Any) -> jax.Array:
    r"""The squared Euclidean cost matrix :math:`C_{ij} = \|x_i - y_j\|^2`, shape ``(n, m)``.

    The same matrix the solver uses (ott-jax's ``SqEuclidean`` cost, computed as
    :math:`\|x_i\|^2 + \|y_j\|^2 - 2\langle x_i, y_j\rangle`; note: no factor 1/2).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    x = _checks.check_points(x, "x")
    y = _checks.check_points(y, "y")
    _checks.check_same_dim(x, y)
    return pointcloud.PointCloud(x, y).cost_matrix


def mean_cost(x: Any, y: Any) -> jax.Array:
    r"""The mean :math:`\frac{1}{nm}\sum_{ij} \|x_i - y_j\|^2` of the cost matrix.

    This is the scale ott-jax multiplies ``epsilon`` by when ``relative_epsilon="mean"``.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    return jnp.mean(cost_matrix(x, y))


def relative_epsilon(x: Any, y: Any, fraction: Any) -> jax.Array:
    r"""The absolute ``epsilon`` equal to ``fraction`` times the mean cost.

    .. math::

        \varepsilon = \text{fraction} \times \frac{1}{nm}\sum_{ij} \|x_i - y_j\|^2,

    the value ott-jax's ``PointCloud(x, y, epsilon=fraction, relative_epsilon="mean")`` uses.
    A relative ``epsilon`` is invariant to rescaling the data: the coupling of
    :math:`(sx, sy)` at :math:`s^2\varepsilon` equals that of :math:`(x, y)` at
    :math:`\varepsilon`.

    Args:
        x, y: the point clouds, shapes ``(n, d)`` and ``(m, d)``.
        fraction: a finite number > 0 (typical values: 1e-3 to 1).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    _checks.check_positive(fraction, "fraction")
    return fraction * mean_cost(x, y)


def exact_ot_cost(x: Any, y: Any) -> AssignmentOutput:
    r"""The unregularised OT cost between two uniform clouds of equal size, exactly.

    Between :math:`\frac1n\sum_i \delta_{x_i}` and :math:`\frac1n\sum_j \delta_{y_j}` the
    Kantorovich linear program has a permutation matrix among its solutions (the vertices of
    the Birkhoff polytope are the permutations), so

    .. math::

        \mathrm{OT}_0 = \min_{\sigma \in S_n} \frac1n \sum_{i=1}^n \|x_i - y_{\sigma(i)}\|^2,

    an assignment problem, solved here in float64 by ``scipy.optimize.linear_sum_assignment``
    (a shortest-augmenting-path variant of the Hungarian method {cite}`kuhn1955hungarian`;
    see also {cite}`villani2009optimal`). It is the :math:`\varepsilon \to 0` limit of
    :attr:`SinkhornOutput.reg_ot_cost`. Runs in :math:`O(n^3)` time on the CPU, outside JAX.

    Args:
        x: source points, shape ``(n, d)``, finite.
        y: target points, shape ``(n, d)``, finite: the same number of points.

    Returns:
        An :class:`AssignmentOutput` ``(cost, permutation)``.

    Raises:
        ValueError: if the clouds differ in size or dimension, or hold NaNs.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    _checks.check_same_dim(_checks.check_points(x, "x"), _checks.check_points(y, "y"))
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)  # no float32 detour
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            "x and y must hold the same number of points for the assignment problem "
            f"(uniform weights), got {x.shape[0]} and {y.shape[0]}; use solve() for "
            "unequal sizes."
        )
    cost = cdist(x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    permutation = np.empty(len(rows), dtype=np.int64)
    permutation[rows] = cols
    return AssignmentOutput(float(cost[rows, cols].mean()), permutation)
