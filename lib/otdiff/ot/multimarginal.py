r"""Multi-marginal entropic optimal transport, over ott-jax's ``MMSinkhorn``.

Given :math:`k` weighted point clouds :math:`x^\ell_1, \dots, x^\ell_{n_\ell}` with weights
:math:`a_\ell \in \Delta_{n_\ell}` (:math:`\ell = 1, \dots, k`), a cost tensor
:math:`\mathcal C \in \mathbb R^{n_1 \times \dots \times n_k}` built from a pairwise cost
:math:`c`,

.. math::

    \mathcal C_{i_1 \dots i_k} = s \sum_{\ell < \ell'} c\big(x^\ell_{i_\ell}, x^{\ell'}_{i_{\ell'}}\big),

and the set :math:`\mathcal U(a_1, \dots, a_k)` of non-negative tensors whose :math:`\ell`-th
marginal (the sum over every index but the :math:`\ell`-th) is :math:`a_\ell`, the entropic
multi-marginal problem :cite:`benamou2015iterative,piran2024m3g` is

.. math::

    \mathrm{OT}_{k,\varepsilon}(\mathcal C) = \min_{\mathcal P \in \mathcal U(a_1, \dots, a_k)}
        \langle \mathcal P, \mathcal C\rangle
        + \varepsilon\, \mathrm{KL}\big(\mathcal P \,\|\, a_1 \otimes \dots \otimes a_k\big).

For :math:`k = 2` it is the problem :func:`otdiff.ot.solve` solves, with the same normalisation
of the entropy, so the two ``reg_ot_cost`` agree. The dual has one potential per marginal, and
the optimal tensor is :math:`\mathcal P = \exp\big((f^1 \oplus \dots \oplus f^k - \mathcal C)
/ \varepsilon\big)`. Multi-marginal Sinkhorn updates each potential in turn so that its marginal
is exact,

.. math::

    f^\ell \leftarrow f^\ell + \varepsilon \log a_\ell
        - \varepsilon \log \sum_{i_{-\ell}}
          \exp\Big(\frac{f^1 \oplus \dots \oplus f^k - \mathcal C}{\varepsilon}\Big),

which is ott-jax's ``ott.experimental.mmsinkhorn.MMSinkhorn`` :cite:`cuturi2022ott` (the
algorithm of :cite:`piran2024m3g`, Algorithm 1). This module wraps it, it does not rewrite it:
it checks the inputs once, outside ``jit``, refuses a tensor that would not fit in memory
*before* allocating it, and runs a jitted core in which ``epsilon``, ``threshold`` and
``cost_scale`` are dynamic scalars (a slider never recompiles).

*Cost.* Every iteration touches the whole tensor: time and memory are :math:`O(n^k)` per
iteration (:math:`k` log-sum-exp reductions over :math:`\prod_\ell n_\ell` entries). ott-jax
builds the tensor from one symmetric ott-jax ``CostFn`` (squared Euclidean by default);
``cost_scale`` multiplies it (the circular variance of :mod:`otdiff.ot.m3g` is the squared
Euclidean tensor times :math:`1/k^2` on the unit sphere).

Taught in: book/ot/05_m3g.ipynb
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ott.experimental import mmsinkhorn as ott_mms
from ott.geometry import costs

from otdiff import _checks

__all__ = [
    "MultiMarginalOutput",
    "MAX_TENSOR_ENTRIES",
    "cost_tensor",
    "tensor_marginals",
    "check_tensor_size",
    "solve_multimarginal",
    "solve_multimarginal_core",
]

#: The default largest number of entries of a cost/coupling tensor (2**27: 512 MiB in float32).
#: MM-Sinkhorn holds a few tensors of that size at once; raise it with ``max_entries`` on a
#: machine with more memory.
MAX_TENSOR_ENTRIES = 2**27


class MultiMarginalOutput(NamedTuple):
    r"""What :func:`solve_multimarginal` returns (a pytree: safe to return from ``jit``).

    The coupling is :math:`\mathcal P = \exp\big((f^1 \oplus \dots \oplus f^k - \mathcal C) /
    \varepsilon\big)`; the potentials are defined up to constants summing to zero.

    Attributes:
        potentials: a tuple of ``k`` arrays, shapes ``(n_1,)``, ..., ``(n_k,)``.
        coupling: the coupling tensor :math:`\mathcal P`, shape ``(n_1, ..., n_k)``.
        cost: the cost tensor :math:`\mathcal C` (``cost_scale`` included), same shape.
        marginals: a tuple of the ``k`` marginals of :math:`\mathcal P`.
        reg_ot_cost: :math:`\mathrm{OT}_{k,\varepsilon}`: the dual objective at the potentials,
            :math:`\sum_\ell \langle f^\ell, a_\ell\rangle + \varepsilon(1 - \sum\mathcal P)
            + \varepsilon \sum_\ell H(a_\ell)`, which equals
            :math:`\langle \mathcal P, \mathcal C\rangle + \varepsilon\,\mathrm{KL}(\mathcal P
            \,\|\, \otimes_\ell a_\ell)` at the optimum (:math:`H` is Shannon's entropy). Its
            gradient holds the potentials fixed (Danskin).
        transport_cost: the linear part :math:`\langle \mathcal P, \mathcal C\rangle`.
        marginal_error: :math:`\sum_\ell \|m_\ell(\mathcal P) - a_\ell\|_1`.
        n_iterations: the iterations run (a multiple of ``inner_iterations``).
        errors: ott-jax's error trace, shape ``(max_iterations // inner_iterations,)``: the
            marginal error after each block of ``inner_iterations``, ``-1`` after the stop.
        converged: whether the error fell below ``threshold``.
        epsilon: the regularisation used.

    Taught in: book/ot/05_m3g.ipynb.
    """

    potentials: tuple[jax.Array, ...]
    coupling: jax.Array
    cost: jax.Array
    marginals: tuple[jax.Array, ...]
    reg_ot_cost: jax.Array
    transport_cost: jax.Array
    marginal_error: jax.Array
    n_iterations: jax.Array
    errors: jax.Array
    converged: jax.Array
    epsilon: jax.Array


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def _entropy(a: jax.Array) -> jax.Array:
    return -jnp.sum(jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1.0)), 0.0))


def tensor_marginals(coupling: jax.Array) -> tuple[jax.Array, ...]:
    r"""The :math:`k` marginals of a tensor: :math:`m_\ell(\mathcal P)_i = \sum_{i_{-\ell}}
    \mathcal P_{\dots i \dots}` (ott-jax's ``tensor_marginals``).

    Taught in: book/ot/05_m3g.ipynb
    """
    return ott_mms.tensor_marginals(jnp.asarray(coupling))


def check_tensor_size(shape: Sequence[int], max_entries: int = MAX_TENSOR_ENTRIES) -> int:
    """The number of entries of a tensor of ``shape``, or a ``ValueError`` if above ``max_entries``.

    Runs on Python integers, before anything is allocated.

    Taught in: book/ot/05_m3g.ipynb
    """
    max_entries = _checks.check_int(max_entries, "max_entries", low=1)
    shape = tuple(int(s) for s in shape)
    entries = math.prod(shape)
    if entries > max_entries:
        dims = " x ".join(str(s) for s in shape)
        raise ValueError(
            f"the cost and coupling tensors would have {dims} = {entries:,} entries "
            f"({4 * entries / 2**30:.3g} GiB each in float32; multi-marginal Sinkhorn holds a few "
            f"at once), above max_entries={max_entries:,}. Use fewer marginals (views) or fewer "
            "points per marginal (a smaller batch), or raise max_entries if the memory is there."
        )
    return entries


def _check_clouds(x_s: Any, name: str = "x_s") -> tuple[jax.Array, ...]:
    if isinstance(x_s, jax.Array | np.ndarray) and np.ndim(x_s) == 3:
        x_s = tuple(x_s)  # a (k, n, d) array: k clouds of the same size
    if not isinstance(x_s, Sequence) or isinstance(x_s, str):
        raise TypeError(
            f"{name} must be a sequence of k point clouds of shapes (n_l, d) or an array of "
            f"shape (k, n, d), got {type(x_s).__name__}."
        )
    k = len(x_s)
    if k < 2:
        raise ValueError(f"{name} must hold k >= 2 point clouds (marginals), got {k}.")
    clouds = tuple(_checks.check_points(x, f"{name}[{i}]") for i, x in enumerate(x_s))
    for i, x in enumerate(clouds[1:], start=1):
        _checks.check_same_dim(clouds[0], x, (f"{name}[0]", f"{name}[{i}]"))
    dtype = jnp.result_type(*[x.dtype for x in clouds])
    return tuple(x.astype(dtype) for x in clouds)


def _check_weights(a_s: Any, clouds: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    k = len(clouds)
    if a_s is None:
        a_s = (None,) * k
    if not isinstance(a_s, Sequence) or len(a_s) != k:
        raise ValueError(f"a_s must be None or a sequence of {k} weight vectors (or None each).")
    dtype = clouds[0].dtype
    return tuple(
        _checks.check_weights(a, x.shape[0], f"a_s[{i}]").astype(dtype)
        for i, (a, x) in enumerate(zip(a_s, clouds, strict=True))
    )


def _check_cost_fn(cost_fn: Any) -> costs.CostFn:
    if cost_fn is None:
        return costs.SqEuclidean()
    if not isinstance(cost_fn, costs.CostFn):
        raise TypeError(
            "cost_fn must be an ott-jax cost (an ott.geometry.costs.CostFn instance, symmetric "
            f"with c(x, x) = 0), got {type(cost_fn).__name__}."
        )
    return cost_fn


def cost_tensor(x_s: Any, cost_fn: Any = None, *, cost_scale: Any = 1.0) -> jax.Array:
    r"""The cost tensor :math:`\mathcal C_{i_1 \dots i_k} = s \sum_{\ell<\ell'}
    c(x^\ell_{i_\ell}, x^{\ell'}_{i_{\ell'}})` of ``k`` point clouds.

    Built by ott-jax's ``cost_tensor`` (one ``PointCloud`` cost matrix per pair of clouds,
    broadcast into the tensor).

    Args:
        x_s: ``k >= 2`` point clouds of shapes ``(n_l, d)``, or an array ``(k, n, d)``.
        cost_fn: a symmetric ott-jax ``CostFn`` (default: squared Euclidean,
            :math:`\|x - y\|^2`).
        cost_scale: :math:`s`, a finite number > 0.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range; a ``ValueError`` if
            the tensor would exceed :data:`MAX_TENSOR_ENTRIES` entries.

    Taught in: book/ot/05_m3g.ipynb
    """
    clouds = _check_clouds(x_s)
    check_tensor_size([x.shape[0] for x in clouds])
    _checks.check_positive(cost_scale, "cost_scale")
    return cost_scale * ott_mms.cost_tensor(clouds, _check_cost_fn(cost_fn))


# --------------------------------------------------------------------------------------------
# The pure core
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations"))
def solve_multimarginal_core(
    x_s: tuple[jax.Array, ...],
    a_s: tuple[jax.Array, ...],
    epsilon: jax.Array,
    threshold: jax.Array,
    cost_scale: jax.Array,
    cost_fn: costs.CostFn,
    *,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
) -> MultiMarginalOutput:
    r"""The jitted, unchecked core of :func:`solve_multimarginal`.

    ``epsilon``, ``threshold`` and ``cost_scale`` are dynamic scalars and ``cost_fn`` a pytree
    argument (two instances of one ott-jax cost class share one compiled program). The problem
    with cost :math:`s\,\mathcal C_0` at :math:`\varepsilon` has the coupling of the problem
    with cost :math:`\mathcal C_0` at :math:`\varepsilon / s`, and potentials and costs
    multiplied by :math:`s`: ott-jax's solver runs on :math:`\mathcal C_0` and the outputs are
    rescaled. Inside ``jit`` a non-positive ``epsilon`` or ``cost_scale``, non-finite points or
    weights off the simplex raise at run time (``otdiff._checks.guard_*``).

    Gradients: ott-jax's ``reg_ot_cost`` holds the potentials fixed (``use_danskin=True``); to
    differentiate a loss through the solution without tracing the loop backwards, solve on
    ``jax.lax.stop_gradient`` inputs and rebuild the objective from the potentials, as
    :func:`otdiff.ot.m3g.m3g_loss` does.

    Taught in: book/ot/05_m3g.ipynb
    """
    epsilon = _checks.guard_positive(epsilon, "epsilon")
    cost_scale = _checks.guard_positive(cost_scale, "cost_scale")
    x_s = _checks.guard_finite(tuple(x_s), "x_s")
    a_s = tuple(_checks.guard_simplex(a, f"a_s[{i}]") for i, a in enumerate(a_s))
    solver = ott_mms.MMSinkhorn(
        threshold=threshold, max_iterations=max_iterations, inner_iterations=inner_iterations
    )
    out = solver(x_s, a_s=a_s, cost_fns=cost_fn, epsilon=epsilon / cost_scale)
    potentials = tuple(cost_scale * f for f in out.potentials)
    cost = cost_scale * ott_mms.cost_tensor(x_s, cost_fn)
    coupling = ott_mms.coupling_tensor(potentials, cost, epsilon)
    marginals = ott_mms.tensor_marginals(coupling)
    marginal_error = sum(jnp.sum(jnp.abs(m - a)) for m, a in zip(marginals, a_s, strict=True))
    reg_ot_cost = cost_scale * out.ent_reg_cost + epsilon * sum(_entropy(a) for a in a_s)
    errors = out.errors[:, 0]
    return MultiMarginalOutput(
        potentials=potentials,
        coupling=coupling,
        cost=cost,
        marginals=marginals,
        reg_ot_cost=reg_ot_cost,
        transport_cost=jnp.sum(coupling * cost),
        marginal_error=marginal_error,
        n_iterations=out.n_iters,
        errors=errors,
        converged=out.converged,
        epsilon=jnp.asarray(epsilon),
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def solve_multimarginal(
    x_s: Any,
    epsilon: Any,
    a_s: Any = None,
    *,
    cost_fn: Any = None,
    cost_scale: Any = 1.0,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
    inner_iterations: int = 10,
    max_entries: int = MAX_TENSOR_ENTRIES,
) -> MultiMarginalOutput:
    r"""Entropic multi-marginal OT between ``k`` weighted point clouds, by MM-Sinkhorn.

    Solves :math:`\min_{\mathcal P \in \mathcal U(a_1,\dots,a_k)} \langle \mathcal P, \mathcal
    C\rangle + \varepsilon\,\mathrm{KL}(\mathcal P \,\|\, \otimes_\ell a_\ell)` for the cost
    tensor of :func:`cost_tensor` with ott-jax's ``MMSinkhorn`` :cite:`cuturi2022ott`
    (:cite:`benamou2015iterative`; :cite:`piran2024m3g`, Algorithm 1): starting from zero
    potentials, each sweep updates :math:`f^1, \dots, f^k` in turn,

    .. math::

        f^\ell \leftarrow f^\ell + \varepsilon \log a_\ell - \varepsilon \log \sum_{i_{-\ell}}
            \exp\big((f^1 \oplus \dots \oplus f^k - \mathcal C)/\varepsilon\big),

    and every ``inner_iterations`` sweeps it stops if :math:`\sum_\ell \|m_\ell(\mathcal P) -
    a_\ell\|_1 < \text{threshold}`. With ``k = 2`` this is the Sinkhorn algorithm of
    :func:`otdiff.ot.solve` (same coupling, same ``reg_ot_cost``).

    Args:
        x_s: ``k >= 2`` point clouds, a sequence of arrays ``(n_l, d)`` (one ``d``), or an array
            ``(k, n, d)``; finite.
        epsilon: the absolute regularisation, a finite number > 0, in the units of the cost
            tensor. Dynamic.
        a_s: ``None`` (uniform weights) or a sequence of ``k`` weight vectors (each ``None``
            or shape ``(n_l,)``, non-negative, summing to one).
        cost_fn: a symmetric ott-jax ``CostFn`` with :math:`c(x, x) = 0` (default squared
            Euclidean). A pytree argument: one compilation per cost class.
        cost_scale: a factor > 0 applied to the cost tensor. Dynamic.
        threshold: the stopping tolerance on the summed marginal errors, > 0. Dynamic.
        max_iterations: the most sweeps, an int >= 1, a multiple of ``inner_iterations``.
            Static.
        inner_iterations: sweeps between two error checks, an int >= 1. Static.
        max_entries: refuse (``ValueError``, before allocating) a tensor with more entries.

    Returns:
        A :class:`MultiMarginalOutput`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range (``k < 2``, clouds
            of different dimensions, ``epsilon <= 0``, bad weights, a tensor too large).

    Taught in: book/ot/05_m3g.ipynb
    """
    clouds = _check_clouds(x_s)
    check_tensor_size([x.shape[0] for x in clouds], max_entries)
    weights = _check_weights(a_s, clouds)
    cost_fn = _check_cost_fn(cost_fn)
    _checks.check_positive(epsilon, "epsilon")
    _checks.check_positive(cost_scale, "cost_scale")
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    dtype = clouds[0].dtype
    return solve_multimarginal_core(
        clouds,
        weights,
        jnp.asarray(epsilon, dtype),
        jnp.asarray(threshold, dtype),
        jnp.asarray(cost_scale, dtype),
        cost_fn,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
