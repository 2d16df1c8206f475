r"""Entropic optimal transport between point clouds with the Sinkhorn algorithm, over any cost.

This module wraps ott-jax's solver :cite:`cuturi2022ott` (``ott.solvers.linear.sinkhorn.Sinkhorn``
on an ``ott.geometry.pointcloud.PointCloud``) in the house style: a public function that checks
its inputs once, outside ``jit``, and a pure jitted core in which ``epsilon`` and ``threshold``
are *dynamic* scalars, so that moving a slider never recompiles and ``jax.vmap`` over a grid of
``epsilon`` works. Every solve of the package (:func:`solve`, the data-dependent starts of
:mod:`otdiff.ot.initializers`, each step of :mod:`otdiff.ot.progot`) runs through one private
function of this module, which builds the geometry, the problem and the solver.

For weights :math:`a \in \Delta_n`, :math:`b \in \Delta_m` on points :math:`x_i, y_j` and the cost
:math:`C_{ij} = c(x_i, y_j)`, the entropic problem :cite:`cuturi2013sinkhorn` is

.. math::

    \mathrm{OT}_\varepsilon(a, b) = \min_{P \in U(a, b)}
        \langle P, C\rangle + \varepsilon\, \mathrm{KL}(P \,\|\, a b^\top),
    \qquad U(a, b) = \{P \geq 0 : P\mathbf 1 = a,\ P^\top \mathbf 1 = b\}.

*Costs.* ``cost_fn`` is any ott-jax cost function (``ott.geometry.costs.CostFn``); the default is
ott-jax's squared Euclidean cost :math:`c(x, y) = \|x - y\|^2` (no factor 1/2). A
translation-invariant cost :math:`c(x, y) = h(x - y)` subclasses ``costs.TICost``; to solve with
it, register the class as a JAX pytree (``@jax.tree_util.register_pytree_node_class``, as
ott-jax's costs are) and return its parameters as the children of ``tree_flatten``: they are then
dynamic arrays (new values never recompile, and gradients flow to them), while the class itself
and its aux data are static (a new class compiles again). The children must be arrays (ott-jax
traces them all); a cost built on an Equinox network returns the network's arrays as children
and the rest as aux data (``equinox.partition(network, equinox.is_array)``).

*Memory.* By default the :math:`n \times m` cost matrix is computed once and kept; with
``chunk_size`` it is recomputed ``chunk_size`` rows at a time in every iteration (ott-jax's
*online* mode), so that memory grows like :math:`(n + m)\,\text{chunk}` and problems whose matrix
would not fit still solve. The coupling itself is :math:`n \times m`: it is returned only when
asked for (``return_coupling=True``).

*Conventions.* ``epsilon`` is **absolute**: it is compared with the cost itself. (ott-jax's
``PointCloud`` reads ``epsilon`` as absolute unless it is given ``relative_epsilon="mean"`` or
``"std"``; with ``epsilon=None`` it defaults to ``0.05 * std(C)``, :func:`default_epsilon`.) Use
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
from ott.geometry import costs, pointcloud
from ott.initializers.linear import initializers as ott_init
from ott.problems.linear import linear_problem, potentials
from ott.solvers.linear import sinkhorn as ott_sinkhorn

from otdiff import _checks
from otdiff.ot import (
    _compat,  # noqa: F401  (ott-jax's online mode under JAX >= 0.9)
    _scaling,
)

__all__ = [
    "SinkhornOutput",
    "AssignmentOutput",
    "solve",
    "solve_core",
    "sweep_epsilon",
    "entropic_map",
    "cost_matrix",
    "mean_cost",
    "default_epsilon",
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
    :math:`(f + c, g - c)`. A point of zero weight has the potential :math:`-\infty`.

    Attributes:
        f: the source potential, shape ``(n,)``.
        g: the target potential, shape ``(m,)``.
        f0: the start :math:`f^{(0)}` of the iterations (zero, or the initializer's; ``g``
            starts anywhere: the first update overwrites it), shape ``(n,)``.
        reg_ot_cost: ott-jax's ``reg_ot_cost``, the dual objective at ``(f, g)``,

            .. math::

                \langle \hat f, a\rangle + \langle \hat g, b\rangle
                + \varepsilon\Big(1 - \sum_{ij} P_{ij}\Big),

            which equals :math:`\langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\,\|\,ab^\top)`
            at the optimum, i.e. :math:`\mathrm{OT}_\varepsilon(a, b)`. For uniform weights with
            ``n == m`` it lies within :math:`[\mathrm{OT}_0, \mathrm{OT}_0 + \varepsilon\log n]`.
        transport_cost: the linear part :math:`\langle P, C\rangle` of the returned coupling.
        marginal_error: :math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1`.
        n_iterations: the Sinkhorn iterations run (a multiple of ``inner_iterations``; with
            ``lse_mode="auto"`` on a stored cost matrix, plus the last checked iterations).
        errors: ott-jax's error trace, shape ``(max_iterations // inner_iterations,)``: entry
            ``k`` is :math:`\|P^\top \mathbf 1 - b\|_1` after iteration
            ``(k + 1) * inner_iterations``, and ``-1`` once the loop has stopped.
        converged: whether the last recorded error is below ``threshold``.
        epsilon: the (absolute) regularisation used.
        coupling: the transport plan :math:`P`, shape ``(n, m)``, when asked for
            (``return_coupling=True``); ``None`` otherwise.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """

    f: jax.Array
    g: jax.Array
    f0: jax.Array
    reg_ot_cost: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array
    n_iterations: jax.Array
    errors: jax.Array
    converged: jax.Array
    epsilon: jax.Array
    coupling: jax.Array | None = None


class AssignmentOutput(NamedTuple):
    """What :func:`exact_ot_cost` returns.

    Attributes:
        cost: the unregularised OT cost :math:`\\frac1n\\sum_i c(x_i, y_{\\sigma(i)})` (a Python
            float; computed in float64 for the squared Euclidean cost).
        permutation: :math:`\\sigma`, an integer array: ``x[i]`` is sent to ``y[permutation[i]]``.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """

    cost: float
    permutation: np.ndarray


# --------------------------------------------------------------------------------------------
# The one Sinkhorn path: geometry, problem, solver (private; every solve of otdiff.ot uses it)
# --------------------------------------------------------------------------------------------


def _geometry(x, y, epsilon, cost_fn, chunk_size) -> pointcloud.PointCloud:
    """The point-cloud geometry of every solve: ``chunk_size`` rows at a time when given."""
    cost_fn = costs.SqEuclidean() if cost_fn is None else cost_fn
    return pointcloud.PointCloud(x, y, cost_fn=cost_fn, epsilon=epsilon, batch_size=chunk_size)


def _problem(x, y, a, b, epsilon, cost_fn, chunk_size) -> linear_problem.LinearProblem:
    """The balanced linear problem between the weighted clouds (``None`` weights: uniform)."""
    return linear_problem.LinearProblem(_geometry(x, y, epsilon, cost_fn, chunk_size), a=a, b=b)


def _marginal_error(geom, f, g, a, b) -> jax.Array:
    r""":math:`\|P\mathbf 1 - a\|_1 + \|P^\top\mathbf 1 - b\|_1`, without forming :math:`P`."""
    rows = geom.marginal_from_potentials(f, g, axis=1)
    columns = geom.marginal_from_potentials(f, g, axis=0)
    return jnp.sum(jnp.abs(rows - a)) + jnp.sum(jnp.abs(columns - b))


def _transport_cost(geom, f, g, x_cost=None) -> jax.Array:
    r""":math:`\sum_{ij} P_{ij}\, c(x'_i, y_j)` for the coupling :math:`P` of ``(f, g)`` on ``geom``.

    ``x_cost`` (default: the geometry's own points) are the points the cost is measured from
    (ProgOT measures its last coupling from the original points). Online geometries are summed
    ``batch_size`` rows at a time, so :math:`P` is never formed.
    """
    x_cost = geom.x if x_cost is None else x_cost
    if not geom.is_online:
        cost = geom.cost_matrix if x_cost is geom.x else geom.cost_fn.all_pairs(x_cost, geom.y)
        return jnp.sum(geom.transport_from_potentials(f, g) * cost)

    def row(inputs):
        x_i, x_cost_i, f_i = inputs
        c = geom.cost_fn.all_pairs(x_i[None], geom.y)[0]
        c_cost = c if x_cost is geom.x else geom.cost_fn.all_pairs(x_cost_i[None], geom.y)[0]
        return jnp.sum(jnp.exp((f_i + g - c) / geom.epsilon) * c_cost)

    return jnp.sum(jax.lax.map(row, (geom.x, x_cost, f), batch_size=geom.batch_size))


def _sinkhorn(
    x,
    y,
    a,
    b,
    epsilon,
    threshold,
    *,
    cost_fn=None,
    initializer=None,
    key=None,
    init=None,
    max_iterations: int,
    inner_iterations: int,
    lse_mode: bool = True,
    chunk_size: int | None = None,
    return_coupling: bool = False,
    mesh=None,
) -> SinkhornOutput:
    """Build the geometry, the problem and the solver; start, solve, summarise. Unchecked.

    The start is ``init`` (potentials ``(f, g)``) if given, else ``initializer`` (an ott-jax
    initializer, zero by default) with the PRNG ``key``. The public functions guard what goes in
    and what comes out (``_guard_inputs``, ``_guard_potentials``).
    """
    initializer = ott_init.DefaultInitializer() if initializer is None else initializer
    if init is None:
        _check_key(initializer, key)
    if mesh is not None:  # source points (rows of the cost) split across devices
        x, a = _checks.place((x, a), mesh, True)
        y, b = _checks.place((y, b), mesh, False)
    problem = _problem(x, y, a, b, epsilon, cost_fn, chunk_size)
    geom = problem.geom
    kernel = lse_mode == "auto" and not geom.is_online  # the stabilised kernel iteration
    log_domain = lse_mode is True or lse_mode == "auto"
    if init is None:
        f0, g0 = initializer(problem, lse_mode=log_domain, rng=key)
    else:
        f0, g0 = init
        if not log_domain:
            f0, g0 = geom.scaling_from_potential(f0), geom.scaling_from_potential(g0)
    if kernel:
        return _kernel_then_polish(
            problem, f0, g0, threshold, max_iterations, inner_iterations, return_coupling
        )
    solver = ott_sinkhorn.Sinkhorn(
        lse_mode=log_domain,
        threshold=threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
    out = solver(problem, init=(f0, g0))
    return _summary(
        problem, out, f0 if log_domain else geom.potential_from_scaling(f0), return_coupling
    )


def _summary(problem, out, f0, return_coupling, **fields) -> SinkhornOutput:
    """A :class:`SinkhornOutput` from ott-jax's output (``fields`` override its entries)."""
    geom, a, b = problem.geom, problem.a, problem.b
    f, g = out.f, out.g
    summary = dict(
        f=f,
        g=g,
        f0=f0,
        reg_ot_cost=out.reg_ot_cost,
        transport_cost=_transport_cost(geom, f, g),
        marginal_error=_marginal_error(geom, f, g, a, b),
        n_iterations=out.n_iters,
        errors=out.errors,
        converged=out.converged,
        epsilon=jnp.asarray(geom.epsilon),
        coupling=geom.transport_from_potentials(f, g) if return_coupling else None,
    )
    return SinkhornOutput(**(summary | fields))


def _kernel_then_polish(
    problem, f0, g0, threshold, max_iterations, inner_iterations, return_coupling
) -> SinkhornOutput:
    """``lse_mode="auto"`` on a dense geometry: the stabilised kernel iteration to ``threshold``
    (:mod:`otdiff.ot._scaling`), then ott-jax's log-domain solver from its potentials, checking
    the error after every iteration (one iteration when the kernel run has converged). ott-jax's
    solve gives the outputs their implicit gradients; it also takes over from ``(f0, g0)`` when
    the weights are too small for the kernel in this dtype or the kernel run failed (a kernel
    run that reached ``max_iterations`` unconverged gets one more iteration, no more)."""
    geom, a, b = problem.geom, problem.a, problem.b
    cost, a_, b_, f0_ = jax.lax.stop_gradient((geom.cost_matrix, a, b, f0))
    eps, tol = jax.lax.stop_gradient((jnp.asarray(geom.epsilon, cost.dtype), threshold))
    n_blocks = max_iterations // inner_iterations

    def run_kernel(_):
        return _scaling.kernel_sinkhorn(
            cost, a_, b_, eps, tol, f0_,
            max_iterations=max_iterations, inner_iterations=inner_iterations,
        )  # fmt: skip

    def skip(_):
        minus = -jnp.ones((n_blocks,), cost.dtype)
        return _scaling.KernelOutput(
            f0_, jnp.zeros_like(b_), jnp.asarray(0, jnp.int32), minus, minus[0]
        )

    k = jax.lax.cond(_scaling.safe_for_kernel(a_, b_), run_kernel, skip, None)
    finite = jnp.all(jnp.isfinite(k.f) | (a_ <= 0)) & jnp.all(jnp.isfinite(k.g) | (b_ <= 0))
    ok = finite & (k.n_iterations > 0)
    start = (jnp.where(ok, k.f, f0), jnp.where(ok, k.g, g0))
    # a kernel run that used its whole budget gets one more iteration, not a second budget
    out_of_budget = ok & (k.error >= tol)
    polish = ott_sinkhorn.Sinkhorn(
        lse_mode=True,
        threshold=jnp.where(out_of_budget, jnp.inf, threshold),
        max_iterations=max_iterations,
        inner_iterations=1,
    )
    out = polish(problem, init=jax.lax.stop_gradient(start))
    last_error = out.errors[jnp.maximum(out.n_iters - 1, 0)]
    log_errors = out.errors[inner_iterations - 1 :: inner_iterations]  # the log run's trace
    return _summary(
        problem,
        out,
        f0,
        return_coupling,
        n_iterations=jnp.where(ok, k.n_iterations, 0) + out.n_iters,
        errors=jnp.where(ok, k.errors, log_errors),
        converged=last_error < threshold,
    )


def _guard_inputs(x, y, a, b, epsilon, name: str = "epsilon"):
    """The boundary guards of a solve: ``epsilon`` > 0, finite points, weights on the simplex
    (checked now when concrete, at run time when traced; see ``otdiff._checks``)."""
    epsilon = _checks.guard_positive(epsilon, name)
    if not _checks.is_concrete((x, y, a, b)):  # concrete ones were checked eagerly
        x, y = _checks.guard_finite(x, "x"), _checks.guard_finite(y, "y")
        a, b = _checks.guard_simplex(a, "a"), _checks.guard_simplex(b, "b")
    return x, y, a, b, epsilon


def _guard_potentials(out, a, b):
    """The solution's potentials, guarded to be finite where the weight is positive."""
    return out._replace(
        f=_checks.guard_potentials(out.f, a, "f"), g=_checks.guard_potentials(out.g, b, "g")
    )


# --------------------------------------------------------------------------------------------
# The pure core
# --------------------------------------------------------------------------------------------

_STATIC = (
    "max_iterations",
    "inner_iterations",
    "lse_mode",
    "chunk_size",
    "return_coupling",
    "mesh",
)


@functools.partial(jax.jit, static_argnames=_STATIC)
@_checks.unguarded()
def solve_core(
    x: jax.Array,
    y: jax.Array,
    a: jax.Array,
    b: jax.Array,
    epsilon: jax.Array,
    threshold: jax.Array,
    *,
    cost_fn: costs.CostFn | None = None,
    initializer: Any = None,
    key: jax.Array | None = None,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool | str = "auto",
    chunk_size: int | None = None,
    return_coupling: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> SinkhornOutput:
    r"""The jitted core of :func:`solve`: pure, and safe under ``vmap`` and ``grad``.

    ``epsilon`` and ``threshold`` are dynamic scalars: changing them does not recompile (the
    tests count the programs JAX traces), and the core can be vmapped over a grid of
    regularisations::

        jax.vmap(solve_core, in_axes=(None, None, None, None, 0, None))(x, y, a, b, eps, tol)

    ``cost_fn`` and ``initializer`` are pytrees: their classes and settings are static, array
    parameters of a cost dynamic. Under ``vmap`` the batch runs until its slowest member stops;
    members that have converged are frozen, so each keeps its own potentials, errors and
    iteration count. Gradients with respect to ``x``, ``y``, ``a``, ``b`` and the cost's
    parameters use ott-jax's implicit differentiation: they flow through the optimality
    conditions at the solution, not through the iterations or the start, and the gradient of
    ``reg_ot_cost`` is Danskin's (the potentials held fixed).

    Unchecked, and free of run-time guards (so that JAX's persistent compilation cache keeps
    it): pass a positive ``epsilon``, finite points, weights on the simplex, arrays of one
    floating dtype and ``max_iterations`` a multiple of ``inner_iterations``, or call
    :func:`solve`, which checks them (at run time too, inside the caller's ``jit``).

    Args:
        x, y: the point clouds, shapes ``(n, d)`` and ``(m, d)``.
        a, b: the weights, shapes ``(n,)`` and ``(m,)``.
        epsilon: the absolute regularisation, a scalar array. Dynamic.
        threshold: the stopping tolerance, a scalar array. Dynamic.
        cost_fn, initializer, key: see :func:`solve`.
        max_iterations, inner_iterations, lse_mode, chunk_size, return_coupling, mesh: static
            (see :func:`solve`).

    Returns:
        A :class:`SinkhornOutput`.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    return _sinkhorn(
        x,
        y,
        a,
        b,
        epsilon,
        threshold,
        cost_fn=cost_fn,
        initializer=initializer,
        key=key,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=lse_mode,
        chunk_size=chunk_size,
        return_coupling=return_coupling,
        mesh=mesh,
    )


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def _check_cost_fn(cost_fn: Any) -> costs.CostFn:
    """An ott-jax cost function that JAX can trace (a registered pytree); ``None``: squared
    Euclidean."""
    if cost_fn is None:
        return costs.SqEuclidean()
    if not isinstance(cost_fn, costs.CostFn):
        raise TypeError(
            f"cost_fn must be an ott-jax cost function (ott.geometry.costs.CostFn), got "
            f"{type(cost_fn).__name__}."
        )
    leaves = jax.tree_util.tree_leaves(cost_fn)
    if len(leaves) == 1 and leaves[0] is cost_fn:
        raise TypeError(
            f"cost_fn of type {type(cost_fn).__name__} is not a registered JAX pytree: decorate "
            "the class with @jax.tree_util.register_pytree_node_class (as ott-jax's costs are) "
            "and return its parameters from tree_flatten."
        )
    scalar_or_array = jax.Array | np.ndarray | np.generic | int | float
    if not all(isinstance(leaf, scalar_or_array) for leaf in leaves):
        raise TypeError(
            f"cost_fn of type {type(cost_fn).__name__} has leaves that are not arrays (ott-jax "
            "traces every leaf): return only arrays as the children of tree_flatten and the "
            "rest as its aux data, e.g. equinox.partition(network, equinox.is_array)."
        )
    return cost_fn


def _check_lse_mode(lse_mode: Any) -> bool | str:
    """``True`` (log domain), ``False`` (ott-jax's kernel mode) or ``"auto"``."""
    if isinstance(lse_mode, str) and lse_mode == "auto":
        return "auto"
    if not isinstance(lse_mode, bool | np.bool_):
        raise TypeError(f"lse_mode must be True, False or 'auto', got {lse_mode!r}.")
    return bool(lse_mode)


def _check_chunk_size(chunk_size: Any) -> int | None:
    """``None`` (keep the cost matrix) or the rows per block of the online mode, an int >= 1."""
    return None if chunk_size is None else _checks.check_int(chunk_size, "chunk_size", low=1)


def _check_options(
    x,
    y,
    a,
    b,
    *,
    cost_fn,
    initializer,
    key,
    threshold,
    max_iterations,
    inner_iterations,
    lse_mode,
    chunk_size,
    return_coupling,
) -> tuple:
    """Check a problem and the solver's options; return the arrays and the core's keywords."""
    x, y, a, b = _checks.check_weighted_clouds(x, y, a, b)
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    options = dict(
        cost_fn=_check_cost_fn(cost_fn),
        initializer=_check_initializer(initializer, key, x, y, a, b),
        key=key,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=_check_lse_mode(lse_mode),
        chunk_size=_check_chunk_size(chunk_size),
        return_coupling=_checks.check_bool(return_coupling, "return_coupling"),
    )
    return x, y, a, b, jnp.asarray(threshold, dtype=x.dtype), options


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
    cost_fn: costs.CostFn | None = None,
    initializer: Any = None,
    key: jax.Array | None = None,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool | str = "auto",
    chunk_size: int | None = None,
    return_coupling: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> SinkhornOutput:
    r"""Entropic OT between two weighted point clouds with the log-domain Sinkhorn algorithm.

    Solves :math:`\min_{P \in U(a,b)} \langle P, C\rangle + \varepsilon\,\mathrm{KL}(P\|ab^\top)`
    with :math:`C_{ij} = c(x_i, y_j)` by ott-jax's ``Sinkhorn`` :cite:`cuturi2022ott`: from the
    start :math:`f^{(0)}` (zero, or a data-dependent start :cite:`thornton2023sinkhorninit`), it
    alternates the exact maximisations of the dual in :math:`g` and in :math:`f`
    :cite:`cuturi2013sinkhorn,peyre2019computational`,

    .. math::

        g_j \leftarrow \varepsilon \log b_j
            - \varepsilon \log \sum_i \exp\big((f_i - C_{ij})/\varepsilon\big), \qquad
        f_i \leftarrow \varepsilon \log a_i
            - \varepsilon \log \sum_j \exp\big((g_j - C_{ij})/\varepsilon\big),

    the log-domain form of Sinkhorn-Knopp matrix scaling :cite:`sinkhorn1967concerning`, which
    converges linearly :cite:`franklin1989scaling`. Every ``inner_iterations`` iterations it
    records :math:`\|P^\top\mathbf 1 - b\|_1` (the row marginal is exact after an
    :math:`f`-update) and stops once it is below ``threshold``.

    The inputs are checked here, outside ``jit``; then the jitted :data:`solve_core` runs with
    ``epsilon`` and ``threshold`` as dynamic scalars: changing them never recompiles. The
    function is also safe to call inside ``jit``/``vmap``: the eager value checks are then
    skipped, and guards added to the caller's program raise at run time for a bad ``epsilon``,
    NaNs, weights off the simplex or potentials that came out NaN.

    Args:
        x: source points, shape ``(n, d)``, finite.
        y: target points, shape ``(m, d)``, finite, same ``d``.
        epsilon: the absolute entropic regularisation, a finite number > 0 (in the units of
            the cost; see :func:`relative_epsilon`). Dynamic.
        a: source weights, shape ``(n,)``, non-negative, summing to one; ``None`` is uniform.
        b: target weights, shape ``(m,)``, likewise.
        cost_fn: an ott-jax cost function, a registered pytree (see the module docstring);
            ``None`` is ott-jax's squared Euclidean cost :math:`\|x - y\|^2`.
        initializer: the start, an ott-jax initializer (:func:`otdiff.ot.make_initializer`
            builds one by name); ``None`` is the zero start.
        key: a JAX PRNG key, required by the starts that draw random numbers (subsample,
            mixture) and unused otherwise.
        threshold: the stopping tolerance on :math:`\|P^\top\mathbf 1 - b\|_1`, > 0. Dynamic.
        max_iterations: the most iterations run, an int >= 1, a multiple of
            ``inner_iterations``. Static (sets the length of ``errors``).
        inner_iterations: iterations between two error checks, an int >= 1. Static.
        lse_mode: ``"auto"`` (the default) runs the kernel iteration, stabilised by
            absorption :cite:`schmitzer2019stabilized` (two matrix-vector products per iteration
            and one pass of exponentials every ``inner_iterations``, against two passes per
            iteration in the log domain), on a stored cost matrix, and the log domain in the
            online mode (``chunk_size``); it then hands its potentials to ott-jax's log-domain
            solver for a last checked iteration (which gives the outputs their gradients, and
            takes over from the start should the kernel run fail). ``True``: log-sum-exp updates
            of the potentials throughout (ott-jax's ``lse_mode``); ``False``: ott-jax's plain
            kernel mode, whose kernel :math:`e^{-C/\varepsilon}` underflows in float32 once
            :math:`C_{ij}/\varepsilon > 87`. The three run the same iterates up to float
            rounding. Static.
        chunk_size: ``None`` keeps the :math:`n \times m` cost matrix in memory; an int >= 1
            recomputes it that many rows at a time in every iteration (ott-jax's online mode:
            slower per iteration, memory :math:`O((n + m)\cdot\text{chunk})`). Same iterates
            either way. Static.
        return_coupling: also return the :math:`n \times m` coupling. Static.
        mesh: ``None`` (one device), or a ``jax.sharding.Mesh`` with a ``"data"`` axis
            (:func:`otdiff.train.data_parallel_mesh`): the source points, their weights and
            the rows of the cost matrix are split across its devices
            (``NamedSharding(mesh, P("data"))``), the target replicated, and XLA adds the
            reductions across devices that the :math:`g`-update needs. ``n`` must be a
            multiple of the number of devices. Same iterates as on one device, up to the
            order of float additions. Static.

    Returns:
        A :class:`SinkhornOutput`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb.
    """
    x, y, a, b, threshold, options = _check_options(
        x,
        y,
        a,
        b,
        cost_fn=cost_fn,
        initializer=initializer,
        key=key,
        threshold=threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=lse_mode,
        chunk_size=chunk_size,
        return_coupling=return_coupling,
    )
    _checks.check_positive(epsilon, "epsilon")  # a scalar (guard_positive takes arrays too)
    options["mesh"] = _checks.check_mesh(mesh, x.shape[0], "the number of source points n")
    x, y, a, b, epsilon = _guard_inputs(x, y, a, b, epsilon)
    if mesh is not None:
        x, a = _checks.place((x, a), mesh, True)
        y, b = _checks.place((y, b), mesh, False)
    out = solve_core(x, y, a, b, jnp.asarray(epsilon, dtype=x.dtype), threshold, **options)
    return _guard_potentials(out, a, b)


@functools.partial(jax.jit, static_argnames=(*_STATIC, "batch_size"))
@_checks.unguarded()
def _sweep_core(x, y, a, b, epsilons, threshold, *, batch_size, **options):
    def one(epsilon):
        return solve_core(x, y, a, b, epsilon, threshold, **options)

    return jax.lax.map(one, epsilons, batch_size=batch_size)


def sweep_epsilon(
    x: Any,
    y: Any,
    epsilons: Any,
    a: Any = None,
    b: Any = None,
    *,
    cost_fn: costs.CostFn | None = None,
    initializer: Any = None,
    key: jax.Array | None = None,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    lse_mode: bool | str = "auto",
    chunk_size: int | None = None,
    return_coupling: bool = False,
    batch_size: int | None = None,
) -> SinkhornOutput:
    r"""Solve the same problem for every ``epsilon`` of a grid, in one compiled program.

    The result is a :class:`SinkhornOutput` whose fields carry a leading axis of length
    ``len(epsilons)``: ``out.n_iterations`` is the iterations-to-``threshold`` curve, and
    ``out.reg_ot_cost`` the path :math:`\varepsilon \mapsto \mathrm{OT}_\varepsilon`
    :cite:`peyre2019computational`. The number of iterations Sinkhorn needs grows as
    :math:`\varepsilon` shrinks (the contraction rate of the iterations tends to one
    :cite:`franklin1989scaling`).

    The grid is mapped with ``jax.lax.map``: ``batch_size=None`` solves one ``epsilon`` after
    the other, each stopping at its own iteration count (the cheapest on a CPU); an integer
    ``batch_size`` solves that many at once with ``jax.vmap`` (best on a GPU, e.g.
    ``batch_size=len(epsilons)``), at the price that a batch runs until its slowest member stops.

    Args:
        x, y, a, b, cost_fn, initializer, key, threshold, max_iterations, inner_iterations,
            lse_mode, chunk_size, return_coupling: as in :func:`solve`.
        epsilons: a non-empty 1-D array of absolute regularisations, each finite and > 0.
        batch_size: ``None`` or an int >= 1, the number of ``epsilon`` solved together. Static.

    Returns:
        A :class:`SinkhornOutput` with a leading ``epsilon`` axis.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    x, y, a, b, threshold, options = _check_options(
        x,
        y,
        a,
        b,
        cost_fn=cost_fn,
        initializer=initializer,
        key=key,
        threshold=threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
        lse_mode=lse_mode,
        chunk_size=chunk_size,
        return_coupling=return_coupling,
    )
    epsilons = _checks.check_positive_vector(epsilons, "epsilons")
    if batch_size is not None:
        batch_size = _checks.check_int(batch_size, "batch_size", low=1)
    x, y, a, b, epsilons = _guard_inputs(x, y, a, b, epsilons, "epsilons")
    out = _sweep_core(
        x, y, a, b, epsilons.astype(x.dtype), threshold, batch_size=batch_size, **options
    )
    return _guard_potentials(out, a, b)


# --------------------------------------------------------------------------------------------
# The entropic map
# --------------------------------------------------------------------------------------------


def _check_map_cost(cost_fn: costs.CostFn) -> None:
    if isinstance(cost_fn, costs.TICost):
        if type(cost_fn).h_legendre is costs.TICost.h_legendre:
            raise TypeError(
                f"cost_fn {type(cost_fn).__name__} must implement h_legendre (the Legendre "
                "transform of h, whose gradient inverts that of h) for the entropic map."
            )
    elif type(cost_fn).twist_operator is costs.CostFn.twist_operator:
        raise TypeError(
            f"cost_fn {type(cost_fn).__name__} must implement twist_operator (the inverse of "
            "the gradient of the cost) for the entropic map."
        )


def entropic_map(
    z: Any, y: Any, g: Any, epsilon: Any, cost_fn: costs.CostFn | None = None
) -> jax.Array:
    r"""The entropic map :math:`T_\varepsilon` of a Sinkhorn solution, at new points ``z``.

    The entropic potential extends to any point by the soft :math:`c`-transform
    :math:`f(z) = -\varepsilon\log\sum_j e^{(g_j - c(z, y_j))/\varepsilon}`, and for a
    translation-invariant cost :math:`c(x, y) = h(x - y)` the map is
    :math:`T_\varepsilon(z) = z - \nabla h^*\big(\nabla f(z)\big)` :cite:`pooladian2021entropic,cuturi2022ott`.
    For the squared Euclidean cost :math:`\|x - y\|^2` (the default) it has the closed form

    .. math::

        T_\varepsilon(z) = \sum_j w_j(z)\, y_j, \qquad
        w(z) = \mathrm{softmax}_j\Big(\frac{g_j - \|z - y_j\|^2}{\varepsilon}\Big),

    the barycentric projection of the conditional law of the coupling: at a training point
    ``x[i]`` it equals :math:`\sum_j P_{ij} y_j / a_i` (exactly, once the row marginal is met).
    Any other cost goes to ott-jax's dual potentials (``DualPotentials.transport``, which needs
    the cost's ``h_legendre`` or ``twist_operator``). ``g`` follows ott-jax's convention (it
    includes :math:`\varepsilon\log b_j`), so the weights of the target are not passed: the
    potential function is built with uniform weights. (ott-jax 0.6's
    ``SinkhornOutput.to_dual_potentials`` weights the soft :math:`c`-transform by :math:`b`
    again, which moves the map away from the barycentric projection when :math:`b` is not
    uniform.) Pure and jit-able; nothing is checked but the cost's type.

    Args:
        z: points to map, shape ``(k, d)``.
        y: the target points, shape ``(m, d)``.
        g: the target potential, shape ``(m,)``.
        epsilon: the regularisation the potential was computed with.
        cost_fn: the cost the potential was computed with (``None``: squared Euclidean).

    Returns:
        :math:`T_\varepsilon(z)`, shape ``(k, d)``.

    Taught in: book/ot/03_progot.ipynb.
    """
    z, y = _checks.check_points(z, "z"), _checks.check_points(y, "y")
    _checks.check_same_dim(z, y, ("z", "y"))
    g = _checks.check_potential(g, y.shape[0], "g", "y", y.dtype)
    _checks.check_positive(epsilon, "epsilon")
    if cost_fn is None or type(cost_fn) is costs.SqEuclidean:
        cost = _geometry(z, y, None, None, None).cost_matrix
        return jax.nn.softmax((g[None, :] - cost) / epsilon, axis=1) @ y
    _check_map_cost(cost_fn)
    problem = _problem(y, y, None, None, epsilon, cost_fn, None)
    f_fn = problem.potential_fn_from_dual_vec(g, epsilon=epsilon, axis=1)
    return potentials.DualPotentials(f_fn, None, cost_fn=cost_fn).transport(z)


# --------------------------------------------------------------------------------------------
# Costs and scales
# --------------------------------------------------------------------------------------------


def _check_pair(x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
    x = _checks.check_points(x, "x")
    y = _checks.check_points(y, "y")
    _checks.check_same_dim(x, y)
    return x, y


def cost_matrix(x: Any, y: Any, cost_fn: costs.CostFn | None = None) -> jax.Array:
    r"""The cost matrix :math:`C_{ij} = c(x_i, y_j)`, shape ``(n, m)``.

    The same matrix the solver uses; by default ott-jax's squared Euclidean cost, computed as
    :math:`\|x_i\|^2 + \|y_j\|^2 - 2\langle x_i, y_j\rangle` (note: no factor 1/2).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    x, y = _check_pair(x, y)
    return _geometry(x, y, None, _check_cost_fn(cost_fn), None).cost_matrix


def mean_cost(x: Any, y: Any, cost_fn: costs.CostFn | None = None) -> jax.Array:
    r"""The mean :math:`\frac{1}{nm}\sum_{ij} c(x_i, y_j)` of the cost matrix.

    This is the scale ott-jax multiplies ``epsilon`` by when ``relative_epsilon="mean"``.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    return jnp.mean(cost_matrix(x, y, cost_fn))


def default_epsilon(x: Any, y: Any, cost_fn: costs.CostFn | None = None) -> jax.Array:
    r"""ott-jax's default regularisation: :math:`0.05 \times` the std of :math:`c(x_i, y_j)`.

    The value a ``PointCloud(x, y)`` uses when given no ``epsilon``; the ProgOT schedules of
    :cite:`kassraie2024progot` are multiples of it.

    Taught in: book/ot/03_progot.ipynb.
    """
    x, y = _check_pair(x, y)
    return jnp.asarray(_geometry(x, y, None, _check_cost_fn(cost_fn), None).epsilon)


def relative_epsilon(
    x: Any, y: Any, fraction: Any, cost_fn: costs.CostFn | None = None
) -> jax.Array:
    r"""The absolute ``epsilon`` equal to ``fraction`` times the mean cost.

    .. math::

        \varepsilon = \text{fraction} \times \frac{1}{nm}\sum_{ij} c(x_i, y_j),

    the value ott-jax's ``PointCloud(x, y, epsilon=fraction, relative_epsilon="mean")`` uses.
    For the squared Euclidean cost a relative ``epsilon`` is invariant to rescaling the data:
    the coupling of :math:`(sx, sy)` at :math:`s^2\varepsilon` equals that of :math:`(x, y)` at
    :math:`\varepsilon`.

    Args:
        x, y: the point clouds, shapes ``(n, d)`` and ``(m, d)``.
        fraction: a finite number > 0 (typical values: 1e-3 to 1).
        cost_fn: the cost (``None``: squared Euclidean).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    _checks.check_positive(fraction, "fraction")
    return fraction * mean_cost(x, y, cost_fn)


def exact_ot_cost(x: Any, y: Any, cost_fn: costs.CostFn | None = None) -> AssignmentOutput:
    r"""The unregularised OT cost between two uniform clouds of equal size, exactly.

    Between :math:`\frac1n\sum_i \delta_{x_i}` and :math:`\frac1n\sum_j \delta_{y_j}` the
    Kantorovich linear program has a permutation matrix among its solutions (the vertices of
    the Birkhoff polytope are the permutations), so

    .. math::

        \mathrm{OT}_0 = \min_{\sigma \in S_n} \frac1n \sum_{i=1}^n c(x_i, y_{\sigma(i)}),

    an assignment problem, solved here by ``scipy.optimize.linear_sum_assignment`` (a
    shortest-augmenting-path variant of the Hungarian method :cite:`kuhn1955hungarian`; see also
    :cite:`villani2009optimal`). It is the :math:`\varepsilon \to 0` limit of
    :attr:`SinkhornOutput.reg_ot_cost`. Runs in :math:`O(n^3)` time on the CPU, outside JAX. The
    squared Euclidean cost (the default) is computed in float64; any other ``cost_fn`` in JAX's
    default precision.

    Args:
        x: source points, shape ``(n, d)``, finite.
        y: target points, shape ``(n, d)``, finite: the same number of points.
        cost_fn: the cost (``None``: squared Euclidean).

    Returns:
        An :class:`AssignmentOutput` ``(cost, permutation)``.

    Raises:
        ValueError: if the clouds differ in size or dimension, or hold NaNs.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    points = _check_pair(x, y)
    if points[0].shape[0] != points[1].shape[0]:
        raise ValueError(
            "x and y must hold the same number of points for the assignment problem "
            f"(uniform weights), got {points[0].shape[0]} and {points[1].shape[0]}; use solve() "
            "for unequal sizes."
        )
    if cost_fn is None:  # from the caller's arrays: no float32 detour
        cost = cdist(np.asarray(x, np.float64), np.asarray(y, np.float64), "sqeuclidean")
    else:
        cost = np.asarray(cost_matrix(*points, cost_fn), np.float64)
    rows, cols = linear_sum_assignment(cost)
    permutation = np.empty(len(rows), dtype=np.int64)
    permutation[rows] = cols
    return AssignmentOutput(float(cost[rows, cols].mean()), permutation)


# --------------------------------------------------------------------------------------------
# Starts. An initializer may declare ``needs_key = True`` (it draws random numbers) and a
# ``check_problem(x, y, a, b)`` method that refuses problems it cannot start (see
# ``otdiff.ot.initializers``); the core knows nothing else about them.
# --------------------------------------------------------------------------------------------


def _check_key(initializer: ott_init.SinkhornInitializer, key: jax.Array | None) -> None:
    """A start that draws random numbers needs a key: never a silent default (ott-jax's is 0)."""
    random = getattr(
        initializer, "needs_key", isinstance(initializer, ott_init.SubsampleInitializer)
    )
    if random and key is None:
        raise ValueError(
            f"initializer {type(initializer).__name__} draws random numbers: pass key= (a JAX "
            "PRNG key)."
        )


def _check_initializer(initializer, key, x, y, a, b) -> ott_init.SinkhornInitializer:
    """An ott-jax initializer that can start this problem, with a key if it needs one."""
    if initializer is None:
        return ott_init.DefaultInitializer()
    if isinstance(initializer, str):
        raise TypeError(
            f"initializer must be an ott-jax initializer object, got the name {initializer!r}: "
            f"use otdiff.ot.make_initializer({initializer!r})."
        )
    if not isinstance(initializer, ott_init.SinkhornInitializer):
        raise TypeError(
            "initializer must be an ott-jax SinkhornInitializer (e.g. from make_initializer), "
            f"got {type(initializer).__name__}."
        )
    _check_key(initializer, key)
    check = getattr(initializer, "check_problem", None)
    if check is not None:
        check(x, y, a, b)
    return initializer
