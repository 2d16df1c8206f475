r"""Sinkhorn's kernel (matrix-scaling) iteration, stabilised by absorption. Private to ``otdiff.ot``.

The log-domain iteration evaluates :math:`2nm` exponentials per iteration; the kernel iteration
:cite:`cuturi2013sinkhorn` replaces them by two matrix-vector products with
:math:`K = e^{-C/\varepsilon}`, but :math:`K` underflows in float32 as soon as
:math:`C_{ij}/\varepsilon > 87`. The *absorption* scheme of Schmitzer
:cite:`schmitzer2019stabilized` keeps the potentials :math:`(f, g)` in the log domain and runs the
kernel iteration on the stabilised kernel

.. math::

    \tilde K_{ij} = \exp\big((f_i + g_j - C_{ij})/\varepsilon\big),

with scalings :math:`u, v` started at one; every ``inner_iterations`` iterations it absorbs them,
:math:`f \leftarrow f + \varepsilon\log u`, :math:`g \leftarrow g + \varepsilon\log v`, and builds
:math:`\tilde K` again (:math:`nm` exponentials per block instead of :math:`2nm` per iteration).

Here each block starts with a log-domain :math:`g`-update fused with the construction of
:math:`\tilde K` (one pass of exponentials), so that :math:`\tilde K` is the current coupling with
its columns summing exactly to :math:`b`: no column of it is zero, and every row keeps at least a
fraction :math:`\min_j b_j` of its mass through the next update, so neither the kernel nor the
scalings underflow or overflow unless a weight is below :math:`10^{-26}` (float32) — the one case
:func:`safe_for_kernel` refuses. The iterates are those of the log-domain iteration, in the same
order (:math:`g` then :math:`f`), up to float rounding.

Taught in: book/ot/01_sinkhorn.ipynb.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 in the matrix-vector products on a GPU


class KernelOutput(NamedTuple):
    """What :func:`kernel_sinkhorn` returns.

    Attributes:
        f, g: the absorbed potentials (ott-jax's convention), shapes ``(n,)`` and ``(m,)``.
        n_iterations: iterations run, a multiple of ``inner_iterations`` (the first is in the
            log domain).
        errors: ``(max_iterations // inner_iterations,)`` the column error
            :math:`\\|P^\\top\\mathbf 1 - b\\|_1` after each block (entry ``k`` after
            iteration ``(k + 1) * inner_iterations``), ``-1`` after the stop.
        error: the last recorded error.
    """

    f: jax.Array
    g: jax.Array
    n_iterations: jax.Array
    errors: jax.Array
    error: jax.Array


def _divide(weights, denominator):
    """``weights / denominator``, zero where the weight is zero (never ``0 / 0``)."""
    positive = weights > 0
    return jnp.where(positive, weights / jnp.where(positive, denominator, 1.0), 0.0)


def safe_for_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    """Whether the stabilised kernel iteration is safe in the weights' dtype (a traced bool).

    Every entry of :math:`\\tilde K` that carries mass is at least about
    :math:`\\min_i a_i \\min_j b_j / \\max(n, m)` after a block's first update; it must stay
    far above the dtype's smallest normal number (a margin of :math:`10^{8}`).
    """
    tiny = jnp.finfo(a.dtype).tiny
    a_min = jnp.min(jnp.where(a > 0, a, 1.0))
    b_min = jnp.min(jnp.where(b > 0, b, 1.0))
    size = max(a.shape[0], b.shape[0])
    return jnp.log(a_min) + jnp.log(b_min) - jnp.log(size) > jnp.log(tiny) + 8 * jnp.log(10.0)


def _c_transform(cost, potential, weights, epsilon, axis):
    """The log-domain update of the other potential: ``g`` from ``f`` (``axis=0``) or ``f``
    from ``g`` (``axis=1``), as in :func:`otdiff.ot.solve`'s update rule."""
    shaped = potential[:, None] if axis == 0 else potential[None, :]
    lse = jax.nn.logsumexp((shaped - cost) / epsilon, axis=axis)
    return jnp.where(weights > 0, epsilon * (jnp.log(weights) - lse), -jnp.inf)


def _first_block(cost, a, b, f0, epsilon, inner_iterations):
    """The first block: one log-domain iteration (afterwards every row of the coupling carries
    its mass :math:`a_i`, which the later blocks keep; from ``f0`` a row far from every target
    point could underflow), then ``inner_iterations - 1`` in the kernel domain."""
    g = _c_transform(cost, f0, b, epsilon, axis=0)
    f = _c_transform(cost, g, a, epsilon, axis=1)
    if inner_iterations > 1:
        return _block(cost, a, b, f, epsilon, inner_iterations - 1)
    column = jnp.exp(jax.nn.logsumexp((f[:, None] + g[None, :] - cost) / epsilon, axis=0))
    return f, g, jnp.sum(jnp.abs(column - b))


def _block(cost, a, b, f, epsilon, inner_iterations):
    """One block: a log-domain ``g``-update building the stabilised kernel, then
    ``inner_iterations`` ``f``-updates and ``inner_iterations - 1`` ``g``-updates in the kernel
    domain, absorbed. Returns ``(f, g, error)``."""
    m = (f[:, None] - cost) / epsilon
    top = jnp.max(m, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    e = jnp.exp(m - top[None, :])
    column_scale = _divide(b, jnp.sum(e, axis=0))  # b_j / sum_i exp(m_ij - top_j)
    kernel = e * column_scale[None, :]  # the coupling of (f, g_new): columns sum to b
    g = epsilon * (jnp.log(column_scale) - top)

    def f_update(v):
        return _divide(a, jnp.matmul(kernel, v, precision=_HIGHEST))

    def g_update(u):
        return _divide(b, jnp.matmul(u, kernel, precision=_HIGHEST))

    def pair(_, carry):
        u, v = carry
        u = f_update(v)
        return u, g_update(u)

    ones_u, ones_v = jnp.ones_like(a), jnp.ones_like(b)
    _, v = jax.lax.fori_loop(0, inner_iterations - 1, pair, (ones_u, ones_v))
    u = f_update(v)
    column = v * jnp.matmul(u, kernel, precision=_HIGHEST)
    error = jnp.sum(jnp.abs(column - b))
    return f + epsilon * jnp.log(u), g + epsilon * jnp.log(v), error


def kernel_sinkhorn(
    cost: jax.Array,
    a: jax.Array,
    b: jax.Array,
    epsilon: jax.Array,
    threshold: jax.Array,
    f0: jax.Array,
    *,
    max_iterations: int,
    inner_iterations: int,
) -> KernelOutput:
    r"""Stabilised kernel Sinkhorn on a dense cost matrix, from the potential ``f0``.

    Runs blocks of ``inner_iterations`` iterations (``max_iterations`` and ``inner_iterations``
    static) until the column error :math:`\|P^\top\mathbf 1 - b\|_1` after a block is below
    ``threshold`` (dynamic), in one ``jax.lax.while_loop`` (under ``vmap`` each member stops on
    its own: the finished ones are frozen). Unchecked; not differentiable (the caller hands the
    result to ott-jax's solver, whose implicit differentiation then applies).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    n_blocks = max_iterations // inner_iterations
    dtype = cost.dtype

    def cond(state):
        f, g, it, errors, error = state
        return (it + inner_iterations <= max_iterations) & (error >= threshold)

    def body(state):
        f, _, it, errors, _ = state
        f, g, error = _block(cost, a, b, f, epsilon, inner_iterations)
        errors = errors.at[it // inner_iterations].set(error)
        return f, g, it + inner_iterations, errors, error

    f, g, error = _first_block(cost, a, b, f0.astype(dtype), epsilon, inner_iterations)
    errors = -jnp.ones((n_blocks,), dtype)
    init = (f, g, jnp.asarray(inner_iterations, jnp.int32), errors.at[0].set(error), error)
    f, g, it, errors, error = jax.lax.while_loop(cond, body, init)
    return KernelOutput(f, g, it, errors, error)
