r"""Cost-parameterized Monge map estimators: entropic maps for a learnable cost :cite:`howard2024monge`.

For a translation-invariant cost :math:`c(x, y) = h(x - y)` with :math:`h` strictly convex (the
twist condition: :math:`\nabla h` is injective), the Monge map between laws with densities is
:math:`T(x) = x - \nabla h^*(\nabla f(x))` for the :math:`c`-concave Kantorovich potential
:math:`f` :cite:`gangbo1996geometry`. Its entropic estimator :cite:`cuturi2023monge` replaces
:math:`f` by the soft :math:`c`-transform of the Sinkhorn potential :math:`g`,

.. math::

    f_\varepsilon(x) = -\varepsilon\log\sum_j e^{(g_j - h(x - y_j))/\varepsilon}, \qquad
    \nabla f_\varepsilon(x) = \sum_j p_j(x)\,\nabla h(x - y_j), \qquad
    p(x) = \mathrm{softmax}_j\frac{g_j - h(x - y_j)}{\varepsilon},

    T_\varepsilon(x) = x - \nabla h^*\big(\nabla f_\varepsilon(x)\big),

and the reverse map from the source potential :math:`f`,
:math:`T^{-1}_\varepsilon(y) = y + \nabla h^*\big(\sum_i q_i(y)\nabla h(x_i - y)\big)`,
:math:`q(y) = \mathrm{softmax}_i\,(f_i - h(x_i - y))/\varepsilon`.

Howard et al. :cite:`howard2024monge` learn the cost's parameters :math:`\theta` so that these
maps agree with a few known pairs :math:`(x_k, y_k)`:

.. math::

    \mathcal L(\theta) = \frac{1}{2K}\sum_k \|T_\theta(x_k) - y_k\|^2
        + \frac{1}{2K}\sum_k \|T_\theta^{-1}(y_k) - x_k\|^2
        + \gamma_{\max}\,\mathrm{LSE}_{ij}|C^\theta_{ij}|,

differentiating through the Sinkhorn potentials (implicit differentiation, ott-jax), through the
softmax weights and through :math:`\nabla h^*` (closed form, or the implicit function theorem at
the argmin of a convex problem, :mod:`otdiff.ot.costs`).

Public: :func:`monge_map`, :func:`inverse_monge_map` (checked) and their ``*_core``,
:func:`tuned_map_error`, :func:`pair_loss`, :class:`CostFitState`, :func:`fit_cost_init`, :func:`fit_cost_step`,
:func:`fit_cost_core`, :func:`fit_cost`, :func:`map_error`.

Taught in: book/ot/04_monge.ipynb.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ott.geometry import costs

from otdiff import _checks
from otdiff.ot import costs as ti_costs
from otdiff.ot import sinkhorn

__all__ = [
    "potential_gradient",
    "monge_map",
    "monge_map_core",
    "inverse_monge_map",
    "inverse_monge_map_core",
    "map_error",
    "tuned_map_error",
    "PairLossInfo",
    "pair_loss",
    "CostFitState",
    "fit_cost_init",
    "fit_cost_step",
    "fit_cost_core",
    "fit_cost",
    "DIFFERENTIATIONS",
    "ChapterCosts",
    "chapter_settings",
    "chapter_costs",
    "ChapterNeuralCosts",
    "neural_settings",
    "chapter_neural_costs",
]

#: How gradients pass through Sinkhorn in :func:`pair_loss`: ``"implicit"`` (ott-jax's implicit
#: differentiation at the solution) or ``"unrolled"`` (the fallback: a few log-domain Sinkhorn
#: iterations from the converged potentials, differentiated by autodiff).
DIFFERENTIATIONS = ("implicit", "unrolled")


# --------------------------------------------------------------------------------------------
# The map
# --------------------------------------------------------------------------------------------


def potential_gradient(
    z: jax.Array, y: jax.Array, g: jax.Array, epsilon: Any, cost_fn: costs.TICost
) -> jax.Array:
    r""":math:`\nabla f_\varepsilon(z) = \sum_j p_j(z)\nabla h(z - y_j)` at each row of ``z`` (unchecked).

    ``g`` follows ott-jax's convention (it includes :math:`\varepsilon\log b_j`), so the softmax
    needs no weights. Shape ``(k, d)``.

    Taught in: book/ot/04_monge.ipynb.
    """

    def one(point):
        diffs = point[None, :] - y
        values, grads = jax.vmap(jax.value_and_grad(cost_fn.h))(diffs)
        weights = jax.nn.softmax((g - values) / epsilon)
        return weights @ grads

    return jax.vmap(one)(z)


def monge_map_core(
    z: jax.Array, y: jax.Array, g: jax.Array, epsilon: Any, cost_fn: costs.TICost
) -> jax.Array:
    r"""The entropic Gangbo--McCann map :math:`T_\varepsilon(z) = z - \nabla h^*(\nabla f_\varepsilon(z))`.

    Pure, unchecked, safe under ``jit``/``vmap``/``grad`` (gradients flow to ``g``, ``y`` and the
    cost's parameters). See :func:`monge_map`.

    Taught in: book/ot/04_monge.ipynb.
    """
    return z - ti_costs.grad_h_legendre(cost_fn, potential_gradient(z, y, g, epsilon, cost_fn))


def inverse_monge_map_core(
    w: jax.Array, x: jax.Array, f: jax.Array, epsilon: Any, cost_fn: costs.TICost
) -> jax.Array:
    r"""The reverse map :math:`T^{-1}_\varepsilon(w) = w + \nabla h^*\big(\sum_i q_i(w)\nabla h(x_i - w)\big)`.

    The target potential extends to :math:`g_\varepsilon(w) = -\varepsilon\log\sum_i
    e^{(f_i - h(x_i - w))/\varepsilon}`, the cost seen from the target is
    :math:`\tilde h(z) = h(-z)`, and :math:`\nabla\tilde h^*(v) = -\nabla h^*(-v)`. Pure and
    unchecked. See :func:`inverse_monge_map`.

    Taught in: book/ot/04_monge.ipynb.
    """

    def one(point):
        diffs = x - point[None, :]
        values, grads = jax.vmap(jax.value_and_grad(cost_fn.h))(diffs)
        weights = jax.nn.softmax((f - values) / epsilon)
        return weights @ grads

    return w + ti_costs.grad_h_legendre(cost_fn, jax.vmap(one)(w))


def _check_map_inputs(z, points, potential, epsilon, cost_fn, names):
    z = _checks.check_points(z, names[0])
    points = _checks.check_points(points, names[1])
    _checks.check_same_dim(z, points, (names[0], names[1]))
    potential = _checks.check_potential(
        potential, points.shape[0], names[2], names[1], points.dtype
    )
    _checks.check_positive(epsilon, "epsilon")
    if not isinstance(cost_fn, costs.TICost):
        raise TypeError(
            "cost_fn must be a translation-invariant ott-jax cost (TICost), got "
            f"{type(cost_fn).__name__}."
        )
    return z, points, potential, jnp.asarray(epsilon, dtype=points.dtype)


def monge_map(z: Any, y: Any, g: Any, epsilon: Any, cost_fn: costs.TICost) -> jax.Array:
    r"""The entropic Monge map of a translation-invariant cost, at new points ``z``.

    .. math::

        T_\varepsilon(z) = z - \nabla h^*\Big(\sum_j p_j(z)\,\nabla h(z - y_j)\Big), \qquad
        p(z) = \mathrm{softmax}_j\frac{g_j - h(z - y_j)}{\varepsilon},

    the estimator of :cite:`cuturi2023monge` used by :cite:`howard2024monge`. For
    :math:`h = \tfrac12\|\cdot\|^2` it is the barycentric projection :math:`\sum_j p_j(z)y_j`.

    Args:
        z: points to map, shape ``(k, d)``, finite.
        y: the target points of the solve, shape ``(m, d)``.
        g: the target potential of a solve with ``cost_fn`` (ott-jax's convention), shape
            ``(m,)``.
        epsilon: the absolute regularisation of that solve, > 0.
        cost_fn: a ``TICost`` with ``grad_h_legendre`` or ``h_legendre``.

    Returns:
        :math:`T_\varepsilon(z)`, shape ``(k, d)``.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.

    Taught in: book/ot/04_monge.ipynb.
    """
    z, y, g, epsilon = _check_map_inputs(z, y, g, epsilon, cost_fn, ("z", "y", "g"))
    return _checks.guard_finite(monge_map_core(z, y, g, epsilon, cost_fn), "the mapped points")


def inverse_monge_map(w: Any, x: Any, f: Any, epsilon: Any, cost_fn: costs.TICost) -> jax.Array:
    r"""The entropic reverse map :math:`T^{-1}_\varepsilon` at target points ``w`` (see :func:`inverse_monge_map_core`).

    Args:
        w: target points to map back, shape ``(k, d)``.
        x: the source points of the solve, shape ``(n, d)``.
        f: the source potential of that solve (ott-jax's convention), shape ``(n,)``.
        epsilon: its absolute regularisation, > 0.
        cost_fn: a ``TICost`` with ``grad_h_legendre`` or ``h_legendre``.

    Taught in: book/ot/04_monge.ipynb.
    """
    w, x, f, epsilon = _check_map_inputs(w, x, f, epsilon, cost_fn, ("w", "x", "f"))
    return _checks.guard_finite(inverse_monge_map_core(w, x, f, epsilon, cost_fn), "the points")


def map_error(mapped: Any, target: Any) -> jax.Array:
    r"""The mean squared error :math:`\frac1k\sum_i\|T(x_i) - y_i\|^2` of a map on known pairs.

    Taught in: book/ot/04_monge.ipynb.
    """
    mapped, target = jnp.asarray(mapped), jnp.asarray(target)
    if mapped.shape != target.shape:
        raise ValueError(
            f"mapped and target must have the same shape, got {mapped.shape} and {target.shape}."
        )
    return jnp.mean(jnp.sum((mapped - target) ** 2, axis=-1))


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def _errors_at(cost_fn, x, y, x_eval, y_eval, fraction, threshold, max_iterations):
    n, m = x.shape[0], y.shape[0]
    a, b = jnp.full(n, 1.0 / n, x.dtype), jnp.full(m, 1.0 / m, x.dtype)
    epsilon = fraction * jnp.mean(cost_fn.all_pairs(x, y))
    out = sinkhorn.solve_core(
        x, y, a, b, epsilon, threshold, cost_fn=cost_fn, max_iterations=max_iterations
    )
    return jnp.stack(
        [
            map_error(monge_map_core(z, y, out.g, epsilon, cost_fn), w)
            for z, w in zip(x_eval, y_eval, strict=True)
        ]
    )


def tuned_map_error(
    cost_fn: costs.TICost,
    x: Any,
    y: Any,
    x_pairs: Any,
    y_pairs: Any,
    x_test: Any,
    y_test: Any,
    fractions: tuple = (0.001, 0.003, 0.01, 0.03),
    threshold: float = 1e-3,
    max_iterations: int = 5000,
) -> tuple[jax.Array, float, jax.Array]:
    r"""The held-out error of a cost's entropic map at the :math:`\varepsilon` its labelled pairs choose.

    For each relative :math:`\varepsilon` in ``fractions`` (times the mean cost), a Sinkhorn
    solve between ``x`` and ``y`` and the map :func:`monge_map_core`; the chosen
    :math:`\varepsilon` is the one whose map best fits the labelled pairs, and the returned error
    is that map's on the held-out pairs. Every cost compared this way gets the same information
    (the pairs) and its own best regularisation, so a gain cannot come from
    :math:`\varepsilon` alone. One compiled program per cost type (:math:`\varepsilon` dynamic).

    Args:
        cost_fn: a ``TICost`` with ``grad_h_legendre`` or ``h_legendre``.
        x, y: the clouds of the solve, shapes ``(n, d)``, ``(m, d)``.
        x_pairs, y_pairs: the labelled pairs, shape ``(k, d)`` each.
        x_test, y_test: held-out pairs, shape ``(k', d)`` each.
        fractions: the relative :math:`\varepsilon` tried, each > 0.
        threshold: Sinkhorn's tolerance, > 0.
        max_iterations: Sinkhorn's cap (static; a multiple of 10).

    Returns:
        ``(error, fraction, pair_errors)``: the held-out error at the chosen fraction, that
        fraction (a float), and the pairs' error at every fraction (shape ``(len(fractions),)``).

    Taught in: book/ot/04_monge.ipynb.
    """
    x, y = _checks.check_points(x, "x", min_points=2), _checks.check_points(y, "y", min_points=2)
    names = ("x_pairs", "y_pairs", "x_test", "y_test")
    arrays = [
        _checks.check_points(v, name)
        for v, name in zip((x_pairs, y_pairs, x_test, y_test), names, strict=True)
    ]
    for first, second in ((0, 1), (2, 3)):
        if arrays[first].shape != arrays[second].shape:
            raise ValueError(
                f"{names[first]} and {names[second]} must have the same shape, got "
                f"{arrays[first].shape} and {arrays[second].shape}."
            )
    for fraction in fractions:
        _checks.check_positive(fraction, "fractions")
    _checks.check_positive(threshold, "threshold")
    max_iterations, _ = _checks.check_iterations(max_iterations, 10)
    dtype = x.dtype
    errors = jnp.stack(
        [
            _errors_at(
                cost_fn,
                x,
                y.astype(dtype),
                (arrays[0], arrays[2]),
                (arrays[1], arrays[3]),
                jnp.asarray(f, dtype),
                jnp.asarray(threshold, dtype),
                max_iterations,
            )  # fmt: skip
            for f in fractions
        ]
    )
    best = int(jnp.argmin(errors[:, 0]))
    return errors[best, 1], float(fractions[best]), errors[:, 0]


# --------------------------------------------------------------------------------------------
# Learning the cost from labelled pairs
# --------------------------------------------------------------------------------------------


class PairLossInfo(NamedTuple):
    """What :func:`pair_loss` reports beside the loss.

    Attributes:
        forward: :math:`\\frac1K\\sum_k\\|T(x_k) - y_k\\|^2`.
        reverse: :math:`\\frac1K\\sum_k\\|T^{-1}(y_k) - x_k\\|^2`.
        n_iterations: the Sinkhorn iterations of the solve.
        epsilon: the absolute regularisation used.

    Taught in: book/ot/04_monge.ipynb.
    """

    forward: jax.Array
    reverse: jax.Array
    n_iterations: jax.Array
    epsilon: jax.Array


def _refine(cost, a, b, f, g, epsilon, n_unroll):
    """``n_unroll`` log-domain Sinkhorn iterations from ``(f, g)``, differentiated by autodiff."""

    def body(carry, _):
        f, g = carry
        g = epsilon * jnp.log(b) - epsilon * jax.nn.logsumexp((f[:, None] - cost) / epsilon, 0)
        f = epsilon * jnp.log(a) - epsilon * jax.nn.logsumexp((g[None, :] - cost) / epsilon, 1)
        return (f, g), None

    (f, g), _ = jax.lax.scan(body, (f, g), None, length=n_unroll)
    return f, g


def pair_loss(
    cost_fn: costs.TICost,
    x: jax.Array,
    y: jax.Array,
    x_pairs: jax.Array,
    y_pairs: jax.Array,
    epsilon_fraction: Any,
    gamma_max: Any = 1e-4,
    threshold: Any = 1e-3,
    pair_weights: jax.Array | None = None,
    *,
    max_iterations: int = 1000,
    differentiation: str = "implicit",
    n_unroll: int = 20,
) -> tuple[jax.Array, PairLossInfo]:
    r"""The labelled-pair loss of :cite:`howard2024monge` for the cost ``cost_fn`` (pure, unchecked).

    .. math::

        \mathcal L(\theta) = \tfrac12\,\overline{\|T_\theta(x_k) - y_k\|^2}
            + \tfrac12\,\overline{\|T^{-1}_\theta(y_k) - x_k\|^2}
            + \gamma_{\max}\,\mathrm{LSE}_{ij}|C^\theta_{ij}|,

    with the maps of a Sinkhorn solve between the clouds ``x`` and ``y`` (uniform weights) at
    :math:`\varepsilon = \text{epsilon\_fraction}\times\mathrm{mean}(C^\theta)` (ott-jax's
    ``relative_epsilon="mean"``, differentiated too). Scaling the cost by :math:`s` then scales
    :math:`\varepsilon` and the potentials by :math:`s` and leaves both maps unchanged, so the
    map terms cannot fix the cost's scale; the last term keeps it bounded.

    ``differentiation="implicit"`` differentiates the potentials by ott-jax's implicit
    differentiation; ``"unrolled"`` solves with the cost's parameters held fixed and then
    differentiates ``n_unroll`` further log-domain iterations from the converged potentials
    (a truncated approximation of the implicit gradient, robust where the implicit linear solve
    fails in float32 at small :math:`\varepsilon`).

    Args:
        cost_fn: the ``TICost`` being learned.
        x, y: the clouds, shapes ``(n, d)``, ``(m, d)`` (they usually contain the pairs).
        x_pairs, y_pairs: the labelled pairs, shape ``(k, d)`` each.
        epsilon_fraction: :math:`\varepsilon` relative to the mean cost, > 0. Dynamic.
        gamma_max: the weight :math:`\gamma_{\max} \ge 0`. Dynamic.
        threshold: Sinkhorn's tolerance. Dynamic.
        pair_weights: non-negative weights of the pairs, shape ``(k,)``, not all zero
            (``None``: uniform); the means over pairs become weighted means, so that a mask
            chooses how many pairs count without changing shapes (dynamic).
        max_iterations: Sinkhorn's cap (static).
        differentiation: one of :data:`DIFFERENTIATIONS` (static).
        n_unroll: the iterations unrolled by ``"unrolled"`` (static).

    Returns:
        ``(loss, info)`` with a :class:`PairLossInfo`.

    Taught in: book/ot/04_monge.ipynb.
    """
    n, m = x.shape[0], y.shape[0]
    a = jnp.full(n, 1.0 / n, x.dtype)
    b = jnp.full(m, 1.0 / m, x.dtype)
    cost = cost_fn.all_pairs(x, y)
    epsilon = epsilon_fraction * jnp.mean(cost)
    threshold = jnp.asarray(threshold, x.dtype)
    if differentiation == "implicit":
        out = sinkhorn.solve_core(
            x, y, a, b, epsilon, threshold, cost_fn=cost_fn, max_iterations=max_iterations
        )
        f, g = out.f, out.g
    else:
        out = sinkhorn.solve_core(
            x,
            y,
            a,
            b,
            epsilon,
            threshold,
            cost_fn=jax.lax.stop_gradient(cost_fn),
            max_iterations=max_iterations,
        )
        f, g = jax.lax.stop_gradient((out.f, out.g))
        f, g = _refine(cost, a, b, f, g, epsilon, n_unroll)
    if pair_weights is None:
        pair_weights = jnp.ones(x_pairs.shape[0], x.dtype)
    pair_weights = pair_weights / jnp.sum(pair_weights)
    forward = monge_map_core(x_pairs, y, g, epsilon, cost_fn) - y_pairs
    reverse = inverse_monge_map_core(y_pairs, x, f, epsilon, cost_fn) - x_pairs
    forward = pair_weights @ jnp.sum(forward**2, axis=-1)
    reverse = pair_weights @ jnp.sum(reverse**2, axis=-1)
    spread = jax.nn.logsumexp(jnp.abs(cost))
    loss = 0.5 * forward + 0.5 * reverse + gamma_max * spread
    return loss, PairLossInfo(forward, reverse, out.n_iterations, epsilon)


class CostFitState(NamedTuple):
    """The state of :func:`fit_cost`: the cost (a pytree) and Adam's state.

    Taught in: book/ot/04_monge.ipynb.
    """

    cost_fn: Any
    opt_state: Any


def _optimizer(learning_rate):
    return optax.adam(learning_rate)


def fit_cost_init(cost_fn: costs.TICost, learning_rate: Any = 3e-2) -> CostFitState:
    """The start of :func:`fit_cost`: the cost and a fresh Adam state.

    Taught in: book/ot/04_monge.ipynb.
    """
    return CostFitState(cost_fn, _optimizer(learning_rate).init(cost_fn))


def fit_cost_step(
    state: CostFitState,
    x: jax.Array,
    y: jax.Array,
    x_pairs: jax.Array,
    y_pairs: jax.Array,
    learning_rate: Any,
    epsilon_fraction: Any,
    gamma_max: Any = 1e-4,
    threshold: Any = 1e-3,
    pair_weights: jax.Array | None = None,
    *,
    max_iterations: int = 1000,
    differentiation: str = "implicit",
    n_unroll: int = 20,
) -> tuple[CostFitState, dict]:
    r"""One Adam step on :func:`pair_loss` (pure; no key: the step is deterministic).

    Returns the new state and ``info``: the loss, its forward and reverse parts, the Sinkhorn
    iterations, and ``finite`` (whether every gradient entry was finite).

    Taught in: book/ot/04_monge.ipynb.
    """
    (loss, info), grads = jax.value_and_grad(pair_loss, has_aux=True)(
        state.cost_fn,
        x,
        y,
        x_pairs,
        y_pairs,
        epsilon_fraction,
        gamma_max,
        threshold,
        pair_weights,
        max_iterations=max_iterations,
        differentiation=differentiation,
        n_unroll=n_unroll,
    )
    leaves = jax.tree_util.tree_leaves(grads)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    updates, opt_state = _optimizer(learning_rate).update(grads, state.opt_state, state.cost_fn)
    cost_fn = optax.apply_updates(state.cost_fn, updates)
    info = dict(
        loss=loss,
        forward=info.forward,
        reverse=info.reverse,
        n_iterations=info.n_iterations,
        finite=finite,
    )
    return CostFitState(cost_fn, opt_state), info


@functools.partial(
    jax.jit, static_argnames=("n_steps", "max_iterations", "differentiation", "n_unroll")
)
@_checks.unguarded()
def fit_cost_core(
    cost_fn: costs.TICost,
    x: jax.Array,
    y: jax.Array,
    x_pairs: jax.Array,
    y_pairs: jax.Array,
    learning_rate: Any,
    epsilon_fraction: Any,
    gamma_max: Any,
    threshold: Any,
    pair_weights: jax.Array | None = None,
    *,
    n_steps: int,
    max_iterations: int = 1000,
    differentiation: str = "implicit",
    n_unroll: int = 20,
) -> tuple[costs.TICost, dict]:
    """The jitted core of :func:`fit_cost`: ``n_steps`` of :func:`fit_cost_step` in a ``lax.scan``.

    Pure, unchecked (pass what :func:`fit_cost` checks) and safe under ``vmap`` (e.g. over
    problems drawn with several seeds). Float arguments and ``pair_weights`` are dynamic;
    ``n_steps``, ``max_iterations``, ``differentiation`` and ``n_unroll`` static. Returns the
    learned cost and the per-step ``info`` of :func:`fit_cost_step`, stacked.

    Taught in: book/ot/04_monge.ipynb.
    """

    def body(state, _):
        return fit_cost_step(
            state,
            x,
            y,
            x_pairs,
            y_pairs,
            learning_rate,
            epsilon_fraction,
            gamma_max,
            threshold,
            pair_weights,
            max_iterations=max_iterations,
            differentiation=differentiation,
            n_unroll=n_unroll,
        )

    state, infos = jax.lax.scan(body, fit_cost_init(cost_fn, learning_rate), None, length=n_steps)
    return state.cost_fn, infos


def fit_cost(
    cost_fn: costs.TICost,
    x: Any,
    y: Any,
    x_pairs: Any,
    y_pairs: Any,
    *,
    n_steps: int = 60,
    learning_rate: float = 3e-2,
    epsilon_fraction: float = 0.03,
    gamma_max: float = 1e-4,
    threshold: float = 1e-3,
    max_iterations: int = 1000,
    differentiation: str = "implicit",
    n_unroll: int = 20,
) -> tuple[costs.TICost, dict]:
    r"""Learn a cost's parameters from labelled pairs by Adam on :func:`pair_loss` :cite:`howard2024monge`.

    Pseudo-code (one compiled ``lax.scan``)::

        for step in range(n_steps):
            C = h_theta(x_i - y_j); (f, g) = sinkhorn(C, eps)       # implicit diff
            T(x_k) = x_k - grad h*(sum_j p_j(x_k) grad h(x_k - y_j)) # and T^{-1}(y_k)
            loss = mean|T(x_k) - y_k|^2 / 2 + mean|T^{-1}(y_k) - x_k|^2 / 2 + gamma LSE|C|
            theta <- Adam(grad loss)

    Float hyperparameters are dynamic (no recompilation); ``n_steps``, ``max_iterations``,
    ``differentiation`` and ``n_unroll`` are static.

    If a gradient comes out non-finite (ott-jax's implicit differentiation can, at small
    :math:`\varepsilon` in float32), this raises a ``FloatingPointError`` naming the step and the
    remedies (a larger ``epsilon_fraction``, or ``differentiation="unrolled"``) rather than
    returning a NaN cost.

    Args:
        cost_fn: the starting cost, a ``TICost`` pytree (e.g. :meth:`otdiff.ot.costs.Mahalanobis.euclidean`).
        x, y: the clouds, shapes ``(n, d)`` and ``(m, d)``.
        x_pairs, y_pairs: the labelled pairs, shape ``(k, d)`` each, ``k >= 1``.
        n_steps: Adam steps, an int >= 1 (static).
        learning_rate: Adam's step size, > 0.
        epsilon_fraction: :math:`\varepsilon` relative to the mean cost, > 0.
        gamma_max: the cost-spread penalty, >= 0.
        threshold: Sinkhorn's tolerance, > 0.
        max_iterations: Sinkhorn's cap, an int >= 1 (static; multiple of 10).
        differentiation: one of :data:`DIFFERENTIATIONS` (static); for a
            :class:`~otdiff.ot.costs.NeuralCost` the gradient through :math:`\nabla h^*` is
            implicit either way (optimistix). In float32 the implicit solve through Sinkhorn
            is less robust for the neural cost than for the Mahalanobis one (in our runs, on
            50 points with an ICNN of width 8, finite at ``epsilon_fraction=0.1`` and not at
            0.03, where unrolling is): ``"unrolled"`` is the documented path for it at small
            :math:`\varepsilon`.
        n_unroll: iterations differentiated by ``"unrolled"``, an int >= 1 (static).

    Returns:
        ``(cost_fn, info)``: the learned cost and a dict of per-step arrays (``loss``,
        ``forward``, ``reverse``, ``n_iterations``, ``finite``).

    Raises:
        ValueError, TypeError: naming the argument and the accepted range.
        FloatingPointError: if a gradient was not finite.

    Taught in: book/ot/04_monge.ipynb.
    """
    if not isinstance(cost_fn, costs.TICost):
        raise TypeError(
            f"cost_fn must be a translation-invariant ott-jax cost (TICost), got "
            f"{type(cost_fn).__name__}."
        )
    sinkhorn._check_cost_fn(cost_fn)
    x, y = _checks.check_points(x, "x", min_points=2), _checks.check_points(y, "y", min_points=2)
    _checks.check_same_dim(x, y)
    x_pairs = _checks.check_points(x_pairs, "x_pairs")
    y_pairs = _checks.check_points(y_pairs, "y_pairs")
    if x_pairs.shape != y_pairs.shape:
        raise ValueError(
            f"x_pairs and y_pairs must have the same shape, got {x_pairs.shape} and "
            f"{y_pairs.shape}."
        )
    _checks.check_same_dim(x, x_pairs, ("x", "x_pairs"))
    n_steps = _checks.check_int(n_steps, "n_steps", low=1)
    for value, name in ((learning_rate, "learning_rate"), (epsilon_fraction, "epsilon_fraction")):
        _checks.check_positive(value, name)
    _checks.check_positive(threshold, "threshold")
    _checks.check_nonnegative(gamma_max, "gamma_max")
    max_iterations, _ = _checks.check_iterations(max_iterations, 10)
    _checks.check_choice(differentiation, "differentiation", DIFFERENTIATIONS)
    n_unroll = _checks.check_int(n_unroll, "n_unroll", low=1)
    dtype = x.dtype
    remedy = (
        f"({differentiation} differentiation through Sinkhorn at "
        f"epsilon_fraction={epsilon_fraction}): raise epsilon_fraction (e.g. to 0.03), or pass "
        "differentiation='unrolled'."
    )
    try:
        with _quiet_callback_failures():
            learned, info = _fit(
                cost_fn, x, y, x_pairs, y_pairs, dtype, learning_rate, epsilon_fraction,
                gamma_max, threshold, n_steps, max_iterations, differentiation, n_unroll,
            )  # fmt: skip
    except Exception as err:  # lineax refuses a non-finite linear solve inside the program
        if "non-finite" not in str(err):
            raise
        raise FloatingPointError(
            f"a linear solve of the implicit gradient returned non-finite values {remedy}"
        ) from err
    finite = info["finite"]
    if not finite.all():
        raise FloatingPointError(
            f"the gradient of the pair loss was not finite at step {int(finite.argmin())} {remedy}"
        )
    return learned, info


@contextlib.contextmanager
def _quiet_callback_failures():
    """Drop JAX's log record of a failed host callback while the failure propagates.

    A run-time check inside the compiled program (lineax's refusal of a non-finite linear
    solve, an ``equinox.error_if``) raises from a host callback, and JAX logs the whole
    traceback to stderr before the exception reaches Python; :func:`fit_cost` turns that
    exception into one clear error, so the log is noise. Other records pass.
    """
    logger = logging.getLogger("jax._src.callback")

    def keep(record):
        return record.getMessage() != "jax.pure_callback failed"

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fit(cost_fn, x, y, x_pairs, y_pairs, dtype, learning_rate, epsilon_fraction, gamma_max,
         threshold, n_steps, max_iterations, differentiation, n_unroll):  # fmt: skip
    """Run :func:`fit_cost_core` and bring its per-step records to the host."""
    learned, info = fit_cost_core(
        cost_fn,
        x,
        y.astype(dtype),
        x_pairs.astype(dtype),
        y_pairs.astype(dtype),
        jnp.asarray(learning_rate, dtype),
        jnp.asarray(epsilon_fraction, dtype),
        jnp.asarray(gamma_max, dtype),
        jnp.asarray(threshold, dtype),
        n_steps=n_steps,
        max_iterations=max_iterations,
        differentiation=differentiation,
        n_unroll=n_unroll,
    )
    return learned, jax.device_get(info)


# --------------------------------------------------------------------------------------------
# The chapter's learned costs (shipped for the demo preset)
# --------------------------------------------------------------------------------------------


class ChapterCosts(NamedTuple):
    """The Mahalanobis costs the chapter learns (what :func:`chapter_costs` returns).

    Attributes:
        settings: the sizes and hyperparameters (a dict, see :func:`chapter_settings`).
        seeds: the problems' seeds (``jax.random.key(seed)`` draws each problem).
        factors: the learned factors :math:`L`, shape ``(n_seeds, n_counts, d, d)``: entry
            ``[s, c]`` learned from the first ``settings["pair_counts"][c]`` labelled pairs.
        losses: the training losses, shape ``(n_seeds, n_counts, n_steps)``.

    Taught in: book/ot/04_monge.ipynb.
    """

    settings: dict
    seeds: list
    factors: jax.Array
    losses: jax.Array

    def cost(self, seed_index: int, count_index: int = -1) -> ti_costs.Mahalanobis:
        """The learned cost of one seed and pair count (default: the most pairs)."""
        return ti_costs.Mahalanobis(self.factors[seed_index, count_index], self.settings["alpha"])


def chapter_settings(scale: str | None = None) -> dict:
    """The chapter's sizes under a preset: ``demo`` (default on a CPU) or ``full``.

    Taught in: book/ot/04_monge.ipynb.
    """
    from otdiff import config as _config

    choose = functools.partial(_config.choose, scale=scale)
    return dict(
        n=choose(demo=200, full=1000),  # points per cloud (the labelled ones included)
        n_test=choose(demo=300, full=2000),  # fresh pairs the map error is measured on
        pair_counts=choose(demo=(3, 10, 30), full=(3, 10, 30, 100)),  # labelled pairs used
        n_steps=choose(demo=60, full=200),  # Adam steps
        n_seeds=choose(demo=5, full=10),  # problems drawn
        learning_rate=3e-2,
        epsilon_fraction=0.03,
        gamma_max=1e-4,
        threshold=1e-3,
        alpha=0.01,
    )


def _learn_chapter_costs(seed: int, settings: dict) -> dict:
    from otdiff import data

    counts = settings["pair_counts"]
    k = max(counts)
    problem = data.mahalanobis_problem(jax.random.key(seed), settings["n"], k, settings["n_test"])
    masks = jnp.stack([(jnp.arange(k) < c).astype(problem.x.dtype) for c in counts])
    start = ti_costs.Mahalanobis.euclidean(2, settings["alpha"])
    dtype = problem.x.dtype

    def one(mask):
        return fit_cost_core(
            start,
            problem.x,
            problem.y,
            problem.x[:k],
            problem.y[:k],
            jnp.asarray(settings["learning_rate"], dtype),
            jnp.asarray(settings["epsilon_fraction"], dtype),
            jnp.asarray(settings["gamma_max"], dtype),
            jnp.asarray(settings["threshold"], dtype),
            mask,
            n_steps=settings["n_steps"],
        )

    learned, info = jax.lax.map(one, masks)
    if not bool(jnp.all(info["finite"])):
        raise FloatingPointError(f"non-finite gradients while learning the costs of seed {seed}.")
    return {"factor": learned.factor, "loss": info["loss"]}


def _fitting_code(learners: list, costs: list) -> list:
    # what a chapter's learned costs are fingerprinted on: their learners, the fitting and map
    # code they run, and their cost classes (the order is part of the fingerprint)
    fitting = [
        fit_cost_core, fit_cost_step, fit_cost_init, pair_loss, _refine, monge_map_core,
        inverse_monge_map_core, potential_gradient,
    ]  # fmt: skip
    return [*learners, *fitting, *costs, ti_costs.grad_h_legendre, sinkhorn._sinkhorn]


def _cached_per_seed(name, seeds, settings, code, learn, like, verbose) -> list:
    """``learn(seed, settings)`` for each seed, through the artifact cache ``name`` (shipped or
    user cache, keyed by the settings and the code's fingerprint): the trees, in seed order."""
    from otdiff import artifacts

    return [
        artifacts.cached(
            name,
            seed,
            {"settings": settings, "code": code, "version": 1},
            build=lambda progress, seed=seed: (learn(seed, settings), {}),
            like=like,
            verbose=verbose,
        ).tree
        for seed in seeds
    ]


def chapter_costs(*, scale: str | None = None, verbose: bool = True) -> ChapterCosts:
    r"""The chapter's learned Mahalanobis costs, cached as artifacts (shipped for ``demo``).

    For each seed of ``config.seeds(n_seeds)``: the problem
    :func:`otdiff.data.mahalanobis_problem` and one :func:`fit_cost_core` run per count of
    labelled pairs (a pair-weight mask on the same problem), from :math:`M = I`.

    Taught in: book/ot/04_monge.ipynb.
    """
    from otdiff import config as _config

    settings = chapter_settings(scale)
    seeds = _config.seeds(settings["n_seeds"])
    counts, n_steps = settings["pair_counts"], settings["n_steps"]
    like = {
        "factor": jax.ShapeDtypeStruct((len(counts), 2, 2), jnp.float32),
        "loss": jax.ShapeDtypeStruct((len(counts), n_steps), jnp.float32),
    }
    code = _fitting_code([_learn_chapter_costs], [ti_costs.Mahalanobis])
    trees = _cached_per_seed(
        "monge_mahalanobis", seeds, settings, code, _learn_chapter_costs, like, verbose
    )
    return ChapterCosts(
        settings,
        list(seeds),
        jnp.stack([jnp.asarray(t["factor"]) for t in trees]),
        jnp.stack([jnp.asarray(t["loss"]) for t in trees]),
    )


# --------------------------------------------------------------------------------------------
# The chapter's neural costs, on a problem whose true cost is not quadratic
# --------------------------------------------------------------------------------------------


class ChapterNeuralCosts(NamedTuple):
    """The neural and Mahalanobis costs learned on :func:`otdiff.data.power_problem` (:func:`chapter_neural_costs`).

    Attributes:
        settings: the sizes and hyperparameters (a dict, see :func:`neural_settings`).
        seeds: the problems' seeds (``jax.random.key(seed)`` draws each problem).
        starts: the untrained neural costs, one per seed (each learning run's start).
        neural: the learned :class:`~otdiff.ot.costs.NeuralCost`, one per seed.
        mahalanobis: the learned :class:`~otdiff.ot.costs.Mahalanobis` costs (the quadratic
            baseline), one per seed.
        losses: the neural costs' training losses, shape ``(n_seeds, n_steps)``.

    Taught in: book/ot/04_monge.ipynb.
    """

    settings: dict
    seeds: list
    starts: list
    neural: list
    mahalanobis: list
    losses: jax.Array


def neural_settings(scale: str | None = None) -> dict:
    """The sizes of the chapter's neural-cost experiment under a preset (``demo`` or ``full``).

    Taught in: book/ot/04_monge.ipynb.
    """
    from otdiff import config as _config

    choose = functools.partial(_config.choose, scale=scale)
    return dict(
        n=choose(demo=200, full=1000),  # points per cloud (the labelled ones included)
        n_pairs=30,  # labelled pairs
        n_test=choose(demo=300, full=2000),  # fresh pairs the map error is measured on
        n_steps=choose(demo=150, full=400),  # Adam steps for the neural cost
        n_steps_mahalanobis=60,  # Adam steps for the Mahalanobis baseline
        n_seeds=choose(demo=5, full=10),  # problems drawn
        hidden=(16, 16),  # the ICNN's widths
        alpha=0.01,
        learning_rate=1e-2,
        learning_rate_mahalanobis=3e-2,
        epsilon_fraction=0.01,  # relative epsilon of learning
        gamma_max=1e-4,
        threshold=1e-3,
        differentiation="unrolled",
        n_unroll=50,
    )


def _neural_start(seed: int, settings: dict) -> ti_costs.NeuralCost:
    """The untrained neural cost of one seed (its network drawn from ``fold_in(key(seed), 1)``)."""
    key = jax.random.fold_in(jax.random.key(seed), 1)
    return ti_costs.NeuralCost.create(key, 2, settings["hidden"], settings["alpha"])


def _learn_neural_costs(seed: int, settings: dict) -> dict:
    from otdiff import data

    k = settings["n_pairs"]
    problem = data.power_problem(jax.random.key(seed), settings["n"], k, settings["n_test"])
    dtype = problem.x.dtype

    def fit(start, learning_rate, n_steps):
        return fit_cost_core(
            start,
            problem.x,
            problem.y,
            problem.x[:k],
            problem.y[:k],
            jnp.asarray(learning_rate, dtype),
            jnp.asarray(settings["epsilon_fraction"], dtype),
            jnp.asarray(settings["gamma_max"], dtype),
            jnp.asarray(settings["threshold"], dtype),
            n_steps=n_steps,
            differentiation=settings["differentiation"],
            n_unroll=settings["n_unroll"],
        )

    neural, info = fit(
        _neural_start(seed, settings), settings["learning_rate"], settings["n_steps"]
    )
    start = ti_costs.Mahalanobis.euclidean(2, settings["alpha"])
    quadratic, info_q = fit(
        start, settings["learning_rate_mahalanobis"], settings["n_steps_mahalanobis"]
    )
    if not (bool(jnp.all(info["finite"])) and bool(jnp.all(info_q["finite"]))):
        raise FloatingPointError(f"non-finite gradients while learning the costs of seed {seed}.")
    return {
        "neural": jax.tree_util.tree_leaves(neural),
        "factor": quadratic.factor,
        "loss": info["loss"],
    }


def chapter_neural_costs(*, scale: str | None = None, verbose: bool = True) -> ChapterNeuralCosts:
    r"""The chapter's learned neural costs on a non-quadratic problem, cached as artifacts (shipped for ``demo``).

    For each seed of ``config.seeds(n_seeds)``: the problem :func:`otdiff.data.power_problem`
    (true cost :math:`h(z) = \tfrac34 (z^\top Q z)^{2/3}`), a :class:`~otdiff.ot.costs.NeuralCost`
    learned from its first ``n_pairs`` labelled pairs by :func:`fit_cost_core` (unrolled
    differentiation through Sinkhorn), and a :class:`~otdiff.ot.costs.Mahalanobis` cost learned
    the same way from :math:`M = I` (the best quadratic cost the method finds).

    Taught in: book/ot/04_monge.ipynb.
    """
    from otdiff import config as _config

    settings = neural_settings(scale)
    seeds = _config.seeds(settings["n_seeds"])
    template = _neural_start(0, settings)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    like = {
        "neural": [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves],
        "factor": jax.ShapeDtypeStruct((2, 2), jnp.float32),
        "loss": jax.ShapeDtypeStruct((settings["n_steps"],), jnp.float32),
    }
    costs = [ti_costs.Mahalanobis, ti_costs.NeuralCost, ti_costs.ICNN, ti_costs._neural_h]
    code = _fitting_code([_learn_neural_costs, _neural_start], costs)
    trees = _cached_per_seed(
        "monge_neural", seeds, settings, code, _learn_neural_costs, like, verbose
    )
    return ChapterNeuralCosts(
        settings,
        list(seeds),
        [_neural_start(seed, settings) for seed in seeds],
        [
            jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v) for v in t["neural"]])
            for t in trees
        ],
        [ti_costs.Mahalanobis(jnp.asarray(t["factor"]), settings["alpha"]) for t in trees],
        jnp.stack([jnp.asarray(t["loss"]) for t in trees]),
    )
