"""Gradient surgery for an auxiliary objective, as optax gradient transformations.

Training on a *main* loss :math:`L_{\\rm main}` while nudging the parameters towards a small
*auxiliary* loss :math:`L_{\\rm aux}` is the bilevel problem

.. math::

    \\min_\\theta\\ L_{\\rm aux}(\\theta)
    \\quad\\text{subject to}\\quad \\theta \\in \\arg\\min L_{\\rm main}.

This module builds the update directions of four methods that tackle it from a main gradient
:math:`g` and an auxiliary gradient :math:`a` computed on the same mini-batch:

* :func:`weighted_sum`: :math:`d = g + \\lambda a` (mixed training; minimises the sum, not the
  bilevel problem);
* :func:`projected`: :math:`d = g + \\lambda\\,\\pi(a; g)`, the auxiliary gradient projected
  orthogonally to the *current* batch's main gradient;
* :func:`pcgrad`: PCGrad :cite:`yu2020pcgrad` with the two tasks :math:`g` and :math:`\\lambda a`;
* :func:`bloop`: Bloop :cite:`hsieh2024bloop`, the projection on an exponential moving average
  (EMA) of past main gradients, which removes the bias that mini-batch noise puts into the
  projection.

Here :math:`\\pi(u; v) = u - \\frac{\\langle u, v\\rangle}{\\|v\\|^2 + \\delta}\\,v`, with inner
products summed over all leaves of the parameter pytree (:func:`tree_project`, on
``optax.tree_utils``).

Each is an ``optax.GradientTransformationExtraArgs``: ``update`` receives the main gradient as
``updates`` and the auxiliary gradient as the keyword argument ``aux_grad``, and returns a
direction with the parameters' structure, so it chains with any optax optimiser::

    tx = optax.chain(bloop(lam=0.1, ema_rate=0.01), optax.adam(1e-3))
    state = tx.init(params)
    updates, state = tx.update(g_main, state, params, aux_grad=g_aux)

Put the surgery first in the chain: it must see raw gradients. ``lam`` and ``ema_rate`` may be
Python floats or JAX scalars (traced values under ``jit``/``vmap``, or hyperparameters of
``optax.inject_hyperparams``), so a slider that moves them never recompiles.

The EMA has a **rate** :math:`\\rho` (``ema_rate``, the weight of the new gradient, 0.01 in the
paper), as in :cite:`hsieh2024bloop`; the book's weight averages (:mod:`otdiff.train`) have a
**decay**, the weight of the old average: a rate :math:`\\rho` is a decay :math:`1 - \\rho`.

:func:`run` trains a :mod:`otdiff.optim.problems` problem with any of the methods: the training
step and loop are :func:`otdiff.train.make_step` and :func:`otdiff.train.run_steps` (the
auxiliary gradient reaches the surgery through the step's ``extra_grads``), all in one jitted
``jax.lax.scan``.

Taught in: book/optim/01_bloop.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.tree_utils import tree_add_scale, tree_vdot

from otdiff import train
from otdiff._checks import (
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative,
    check_positive,
)

__all__ = [
    "METHODS",
    "DEFAULT_EPS",
    "BloopState",
    "SurgeryState",
    "tree_project",
    "bloop",
    "weighted_sum",
    "projected",
    "pcgrad",
    "surgery",
    "run",
]

#: The four update directions, by the names :func:`surgery` and :func:`run` accept.
METHODS = ("sum", "project", "pcgrad", "bloop")

#: Default guard added to squared norms in the projections.
DEFAULT_EPS = 1e-8

PyTree = Any


class BloopState(NamedTuple):
    """State of :func:`bloop`.

    Attributes:
        ema: the exponential moving average of the past main gradients, with the parameters'
            structure. It starts at zero and is *not* bias-corrected in storage; :func:`bloop`
            divides by :math:`1 - (1-\\rho)^t` when it uses it.
        count: the number of updates so far (an int32 scalar).

    Taught in: book/optim/01_bloop.ipynb.
    """

    ema: PyTree
    count: jax.Array


class SurgeryState(NamedTuple):
    """State of the memoryless directions (:func:`weighted_sum`, :func:`projected`,
    :func:`pcgrad`): only the number of updates so far.

    Taught in: book/optim/01_bloop.ipynb.
    """

    count: jax.Array


# -- pytree algebra --------------------------------------------------------------------------


def tree_project(u: PyTree, v: PyTree, eps: float | jax.Array = DEFAULT_EPS) -> PyTree:
    """The component of ``u`` orthogonal to ``v``: :math:`\\pi(u; v)`.

    .. math::

        \\pi(u; v) = u - \\frac{\\langle u, v\\rangle}{\\|v\\|^2 + \\delta}\\, v

    Args:
        u, v: pytrees of arrays with the same structure.
        eps: a guard > 0 against division by zero; when :math:`\\|v\\|^2 \\ll \\delta` the
            projection leaves ``u`` unchanged.

    Returns:
        A pytree like ``u``; :math:`\\langle \\pi(u; v), v\\rangle = \\delta\\langle u, v\\rangle
        / (\\|v\\|^2+\\delta)`, zero up to the guard.

    Taught in: book/optim/01_bloop.ipynb.
    """
    coef = tree_vdot(u, v) / (tree_vdot(v, v) + eps)
    return tree_add_scale(u, -coef, v)


# -- checks ----------------------------------------------------------------------------------


def _check_hyperparameters(lam=0.0, ema_rate=1.0, eps=DEFAULT_EPS) -> None:
    check_nonnegative(lam, "lam")
    check_in_range(ema_rate, "ema_rate", 0.0, 1.0, low_open=True)
    check_positive(eps, "eps")


def _check_aux(updates: PyTree, aux_grad: PyTree, name: str) -> None:
    if aux_grad is None:
        raise TypeError(
            f"{name}.update needs the auxiliary gradient as the keyword argument aux_grad, "
            f"e.g. tx.update(g_main, state, params, aux_grad=g_aux)."
        )
    s_main = jax.tree_util.tree_structure(updates)
    s_aux = jax.tree_util.tree_structure(aux_grad)
    if s_main != s_aux:
        raise ValueError(
            f"aux_grad must have the same pytree structure as the main gradient (updates); "
            f"got {s_aux} and {s_main}."
        )
    for path_leaf, a in zip(
        jax.tree_util.tree_leaves_with_path(updates),
        jax.tree_util.tree_leaves(aux_grad),
        strict=True,
    ):
        path, g = path_leaf
        if jnp.shape(g) != jnp.shape(a):
            raise ValueError(
                f"aux_grad must have the shapes of the main gradient (updates); at "
                f"{jax.tree_util.keystr(path) or 'the root'} got {jnp.shape(a)} and {jnp.shape(g)}."
            )


def _count_init() -> jax.Array:
    return jnp.zeros((), jnp.int32)


# -- the directions as pure functions ---------------------------------------------------------


def _sum_direction(g, a, lam):
    return tree_add_scale(g, lam, a)


def _projected_direction(g, a, lam, eps):
    return tree_add_scale(g, lam, tree_project(a, g, eps))


def _pcgrad_direction(g, a, lam, eps):
    conflict = lam * tree_vdot(g, a) < 0  # no conflict with a zero auxiliary task
    surgery_dir = tree_add_scale(tree_project(g, a, eps), lam, tree_project(a, g, eps))
    plain = tree_add_scale(g, lam, a)
    return optax.tree_utils.tree_where(conflict, surgery_dir, plain)


def _bloop_direction(g, a, state: BloopState, lam, ema_rate, eps):
    """``g + lam * pi(a; m_hat)`` with the bias-corrected EMA of the past main gradients."""
    rate = jnp.asarray(ema_rate, jnp.float32)
    started = state.count > 0
    # The bias correction 1 - (1 - rate)^t, as -expm1(t * log1p(-rate)). Not optax's
    # tree_bias_correction(m, 1 - rate, t): that computes 1 - decay^t with decay = 1 - rate, and
    # in float32 1 - 1e-8 == 1, so for rates below about 6e-8 it divides by zero (and loses
    # most digits for small rates); log1p/expm1 keep every digit at any rate in (0, 1].
    log_decay = jnp.log1p(-rate) * state.count.astype(jnp.float32)
    correction = jnp.where(started, -jnp.expm1(jnp.where(started, log_decay, -1.0)), 1.0)
    ema_hat = jax.tree_util.tree_map(
        lambda m: jnp.where(started, m / correction.astype(m.dtype), jnp.zeros_like(m)),
        state.ema,
    )
    return tree_add_scale(g, lam, tree_project(a, ema_hat, eps))


def _ema_update(ema, g, ema_rate):
    """:math:`m \\leftarrow (1 - \\rho)m + \\rho g` (``optax.incremental_update`` with step ``rate``)."""
    return optax.incremental_update(g, ema, jnp.asarray(ema_rate, jnp.float32))


# -- the four directions ---------------------------------------------------------------------


def bloop(
    lam: float | jax.Array = 0.1,
    ema_rate: float | jax.Array = 0.01,
    eps: float | jax.Array = DEFAULT_EPS,
) -> optax.GradientTransformationExtraArgs:
    """Bloop :cite:`hsieh2024bloop`: project the auxiliary gradient on an EMA of the main one.

    At step :math:`t`, with the mini-batch gradients :math:`g_t` (main, passed as ``updates``) and
    :math:`a_t` (auxiliary, passed as ``aux_grad``), and :math:`m_t` the EMA of the *past* main
    gradients :math:`g_0, \\dots, g_{t-1}`:

    .. math::

        d_t &= g_t + \\lambda\\, \\pi\\big(a_t;\\ \\hat m_t\\big),
        \\qquad \\hat m_t = \\frac{m_t}{1 - (1-\\rho)^t},\\\\
        m_{t+1} &= (1-\\rho)\\, m_t + \\rho\\, g_t, \\qquad m_0 = 0,

    where :math:`\\pi(u; v) = u - \\frac{\\langle u,v\\rangle}{\\|v\\|^2+\\delta} v`
    (:func:`tree_project`).

    The order follows Algorithm 1 of the paper: project on the EMA of past batches, *then* fold
    the current batch into it. Because :math:`\\hat m_t` does not depend on the current batch,
    the expected direction given the past is linear in the batch gradients,
    :math:`\\mathbb E[d_t \\mid \\hat m_t] = \\nabla L_{\\rm main} + \\lambda\\,\\pi(\\nabla L_{\\rm aux};
    \\hat m_t)`, whereas projecting on the current batch's own :math:`g_t` (:func:`projected`) is
    biased towards the plain sum. At :math:`t = 0` the EMA is empty and the step is the plain sum
    :math:`g_0 + \\lambda a_0`. The bias correction by :math:`1 - (1-\\rho)^t` does not change the
    direction (a projection ignores the scale of :math:`v`); it only keeps the meaning of ``eps``
    fixed over time.

    Args:
        lam: the weight :math:`\\lambda \\ge 0` of the auxiliary gradient. A float or a JAX scalar
            (dynamic: changing it under ``jit`` does not recompile).
        ema_rate: the EMA rate :math:`\\rho \\in (0, 1]`; 1 means no averaging (project on the
            previous batch's main gradient). The paper's default is 0.01; its convergence
            theorem takes :math:`\\rho` larger than the step size. A float or a JAX scalar
            (dynamic).
        eps: the guard :math:`\\delta > 0` added to :math:`\\|\\hat m_t\\|^2`: when the main
            gradient vanishes the projection fades out instead of dividing by zero.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None,
        *, aux_grad)`` returns :math:`d_t` with the structure of ``updates``; the state is a
        :class:`BloopState`.

    Raises:
        ValueError: ``lam < 0``, ``ema_rate`` outside (0, 1], ``eps <= 0``; at ``update``, an
            ``aux_grad`` whose pytree structure or shapes differ from the main gradient's.

    Example::

        tx = optax.chain(bloop(lam=0.1, ema_rate=0.01), optax.sgd(1e-2))
        updates, state = tx.update(g_main, state, params, aux_grad=g_aux)

    Taught in: book/optim/01_bloop.ipynb
    """
    _check_hyperparameters(lam, ema_rate, eps)

    def init_fn(params):
        return BloopState(ema=optax.tree_utils.tree_zeros_like(params), count=_count_init())

    def update_fn(updates, state, params=None, *, aux_grad=None, **extra_args):
        del params, extra_args
        _check_aux(updates, aux_grad, "bloop")
        direction = _bloop_direction(updates, aux_grad, state, lam, ema_rate, eps)
        ema = _ema_update(state.ema, updates, ema_rate)
        return direction, BloopState(ema=ema, count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _stateless(name: str, direction: Callable[[PyTree, PyTree], PyTree]):
    """A surgery whose direction depends on the current batch only (its state counts steps)."""

    def init_fn(params):
        del params
        return SurgeryState(count=_count_init())

    def update_fn(updates, state, params=None, *, aux_grad=None, **extra_args):
        del params, extra_args
        _check_aux(updates, aux_grad, name)
        return direction(updates, aux_grad), SurgeryState(optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def weighted_sum(lam: float | jax.Array = 0.1) -> optax.GradientTransformationExtraArgs:
    """Mixed training: the gradient of :math:`L_{\\rm main} + \\lambda L_{\\rm aux}`.

    .. math::

        d_t = g_t + \\lambda\\, a_t

    The baseline of :cite:`hsieh2024bloop`. It converges to a minimiser of the weighted sum,
    which trades main loss for auxiliary loss at every :math:`\\lambda > 0`.

    Args:
        lam: the weight :math:`\\lambda \\ge 0` (float or JAX scalar; dynamic).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` (``update(..., *, aux_grad)``) with a
        :class:`SurgeryState`.

    Raises:
        ValueError: ``lam < 0``; at ``update``, a mismatched ``aux_grad``.

    Taught in: book/optim/01_bloop.ipynb
    """
    _check_hyperparameters(lam)

    return _stateless("weighted_sum", lambda g, a: _sum_direction(g, a, lam))


def projected(
    lam: float | jax.Array = 0.1, eps: float | jax.Array = DEFAULT_EPS
) -> optax.GradientTransformationExtraArgs:
    """Projection without the EMA: project on the *current* batch's main gradient.

    .. math::

        d_t = g_t + \\lambda\\, \\pi(a_t;\\ g_t)

    With exact gradients this is the direction of Eq. (3) of :cite:`hsieh2024bloop`. With
    mini-batch gradients the projection is taken on a noisy :math:`g_t`, and
    :math:`\\mathbb E[\\pi(a_t; g_t)] \\ne \\pi(\\nabla L_{\\rm aux}; \\nabla L_{\\rm main})`: in the
    high-noise limit in dimension :math:`p` the expected direction is
    :math:`\\nabla L_{\\rm main} + \\lambda (1 - 1/p) \\nabla L_{\\rm aux}`, the mixed method.

    Args:
        lam: the weight :math:`\\lambda \\ge 0` (float or JAX scalar; dynamic).
        eps: the guard :math:`\\delta > 0` added to :math:`\\|g_t\\|^2`.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` (``update(..., *, aux_grad)``) with a
        :class:`SurgeryState`.

    Raises:
        ValueError: ``lam < 0``, ``eps <= 0``; at ``update``, a mismatched ``aux_grad``.

    Taught in: book/optim/01_bloop.ipynb
    """
    _check_hyperparameters(lam, eps=eps)

    return _stateless("projected", lambda g, a: _projected_direction(g, a, lam, eps))


def pcgrad(
    lam: float | jax.Array = 0.1, eps: float | jax.Array = DEFAULT_EPS
) -> optax.GradientTransformationExtraArgs:
    """PCGrad :cite:`yu2020pcgrad` for the two tasks :math:`g_t` and :math:`\\lambda a_t`.

    When the two gradients conflict, each is projected on the normal plane of the other;
    otherwise they are summed:

    .. math::

        d_t = \\begin{cases}
            \\pi(g_t;\\ a_t) + \\lambda\\, \\pi(a_t;\\ g_t)
                & \\text{if } \\lambda\\langle g_t, a_t\\rangle < 0,\\\\
            g_t + \\lambda\\, a_t & \\text{otherwise.}
        \\end{cases}

    (A projection ignores the scale of the vector it projects on, so :math:`\\lambda` only weighs
    the auxiliary part.) Like :func:`projected`, it uses the current batch only; the paper finds
    it behaves like mixed training under mini-batch noise :cite:`hsieh2024bloop`.

    Args:
        lam: the weight :math:`\\lambda \\ge 0` (float or JAX scalar; dynamic).
        eps: the guard :math:`\\delta > 0` added to the squared norms.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` (``update(..., *, aux_grad)``) with a
        :class:`SurgeryState`.

    Raises:
        ValueError: ``lam < 0``, ``eps <= 0``; at ``update``, a mismatched ``aux_grad``.

    Taught in: book/optim/01_bloop.ipynb
    """
    _check_hyperparameters(lam, eps=eps)

    return _stateless("pcgrad", lambda g, a: _pcgrad_direction(g, a, lam, eps))


def surgery(
    method: str,
    lam: float | jax.Array = 0.1,
    ema_rate: float | jax.Array = 0.01,
    eps: float | jax.Array = DEFAULT_EPS,
) -> optax.GradientTransformationExtraArgs:
    """One of the four directions by name (``"sum"``, ``"project"``, ``"pcgrad"``, ``"bloop"``).

    ``ema_rate`` is used (and checked) only by ``"bloop"``, ``eps`` by all but ``"sum"``.

    Raises:
        ValueError: an unknown ``method``, or an invalid hyperparameter.

    Taught in: book/optim/01_bloop.ipynb
    """
    check_choice(method, "method", METHODS)
    if method == "sum":
        return weighted_sum(lam)
    if method == "project":
        return projected(lam, eps)
    if method == "pcgrad":
        return pcgrad(lam, eps)
    return bloop(lam, ema_rate, eps)


def _switched_surgery(index, lam, ema_rate, eps) -> optax.GradientTransformationExtraArgs:
    """All four directions in one program, the one used picked by a dynamic ``index`` into
    :data:`METHODS`: :func:`run` compiles once for every method. The state is a
    :class:`BloopState` for all (the EMA is kept, and ignored, by the memoryless methods)."""

    def init_fn(params):
        return BloopState(ema=optax.tree_utils.tree_zeros_like(params), count=_count_init())

    def update_fn(updates, state, params=None, *, aux_grad=None, **extra_args):
        del params, extra_args
        _check_aux(updates, aux_grad, "surgery")
        g, a = updates, aux_grad
        branches = [
            lambda: _sum_direction(g, a, lam),
            lambda: _projected_direction(g, a, lam, eps),
            lambda: _pcgrad_direction(g, a, lam, eps),
            lambda: _bloop_direction(g, a, state, lam, ema_rate, eps),
        ]
        direction = jax.lax.switch(index, branches)
        ema = _ema_update(state.ema, g, ema_rate)
        return direction, BloopState(ema=ema, count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# -- training --------------------------------------------------------------------------------


def _optimizer(optimizer: str | optax.GradientTransformation, learning_rate) -> Any:
    if isinstance(optimizer, str):
        check_choice(
            optimizer, "optimizer ('sgd', 'adam' or an optax transformation)", ("sgd", "adam")
        )
        return optax.sgd(learning_rate) if optimizer == "sgd" else optax.adam(learning_rate)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be 'sgd', 'adam' or an optax GradientTransformation, got {optimizer!r}."
        )
    return optimizer


@partial(
    jax.jit,
    static_argnames=("optimizer", "n_steps", "batch_size", "record_every"),
)
def _run(
    key,
    problem,
    params,
    lam,
    ema_rate,
    eps,
    learning_rate,
    method_index,
    *,
    optimizer,
    n_steps,
    batch_size,
    record_every,
):
    direction = _switched_surgery(method_index, lam, ema_rate, eps)
    tx = optax.chain(direction, _optimizer(optimizer, learning_rate))
    key, init_key = jax.random.split(key)
    if params is None:
        params = problem.init_params(init_key)
    step = train.make_step(
        lambda p, k, batch: problem.main_loss(p, batch),
        tx,
        sample_batch=lambda k, prob: prob.sample_batch(k, batch_size),
        ema_decay=None,
        extra_grads={"aux_grad": lambda p, k, batch: problem.aux_loss(p, batch)},
    )
    state = train.init(params, tx, ema=False)

    def block(state, _):
        state, _ = train.run_steps(step, key, state, problem, record_every)
        return state, problem.evaluate(state.params)

    state, rest = jax.lax.scan(block, state, None, length=n_steps // record_every)
    history = jax.tree_util.tree_map(
        lambda first, later: jnp.concatenate([first[None], later]), problem.evaluate(params), rest
    )
    history["step"] = jnp.arange(n_steps // record_every + 1) * record_every
    return state.params, history


def run(
    key: jax.Array,
    problem: Any,
    *,
    method: str = "bloop",
    lam: float | jax.Array = 0.1,
    ema_rate: float | jax.Array = 0.01,
    eps: float | jax.Array = DEFAULT_EPS,
    optimizer: str | optax.GradientTransformation = "sgd",
    learning_rate: float | jax.Array = 0.01,
    n_steps: int = 1000,
    batch_size: int = 16,
    record_every: int = 100,
    params: PyTree | None = None,
) -> tuple[PyTree, dict[str, jax.Array]]:
    """Train ``problem`` with one of the four directions, in one jitted ``jax.lax.scan``.

    Each step draws a mini-batch, computes :math:`g_t = \\nabla L^{b}_{\\rm main}` and
    :math:`a_t = \\nabla L^{b}_{\\rm aux}`, forms the direction of ``method`` (:func:`surgery`) and
    feeds it to the optimiser: ``optax.chain(surgery(method, lam, ema_rate, eps), optimizer)``.
    The step is :func:`otdiff.train.make_step` (its ``extra_grads`` carry :math:`a_t`), the loop
    :func:`otdiff.train.run_steps`: step :math:`n` uses the key ``fold_in(key, n)``.

    The function is pure: the same key gives the same result. ``lam``, ``ema_rate``, ``eps`` and
    ``learning_rate`` are dynamic (a float or a JAX scalar; changing them does not recompile, and
    ``jax.vmap`` over them trains a batch of runs at once). The four methods share one compiled
    program (a ``jax.lax.switch`` picks the direction), so changing ``method`` does not recompile
    either; the sizes and the optimiser are static.

    Args:
        key: a JAX random key (the mini-batches; and the initial parameters if ``params`` is
            ``None``).
        problem: the problem to train; see :mod:`otdiff.optim.problems` for the interface
            (``init_params``, ``sample_batch``, ``main_loss``, ``aux_loss``, ``evaluate``).
        method: ``"sum"``, ``"project"``, ``"pcgrad"`` or ``"bloop"``.
        lam: the weight :math:`\\lambda \\ge 0` of the auxiliary gradient.
        ema_rate: Bloop's EMA rate :math:`\\rho \\in (0, 1]` (ignored by the other methods).
        eps: the projection guard :math:`\\delta > 0`.
        optimizer: ``"sgd"``, ``"adam"`` (both with ``learning_rate``) or any optax
            transformation (static; hashed by identity, so build it once).
        learning_rate: the step size of ``"sgd"``/``"adam"`` (> 0).
        n_steps: the number of optimisation steps (static), a multiple of ``record_every``.
        batch_size: the mini-batch size (static; sets shapes).
        record_every: evaluate ``problem.evaluate`` every this many steps (static).
        params: the initial parameters (default ``problem.init_params(key)``).

    Returns:
        ``(params, history)``: the final parameters and a dict of arrays of length
        ``n_steps // record_every + 1`` (step 0 included): every entry of
        ``problem.evaluate`` and ``"step"``.

    Raises:
        ValueError/TypeError: invalid hyperparameters, sizes or ``method``.

    Taught in: book/optim/01_bloop.ipynb
    """
    check_choice(method, "method", METHODS)
    _check_hyperparameters(lam, ema_rate, eps)
    check_positive(learning_rate, "learning_rate")
    n_steps = check_int(n_steps, "n_steps", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    record_every = check_int(record_every, "record_every", low=1, high=n_steps)
    if n_steps % record_every:
        raise ValueError(
            f"n_steps must be a multiple of record_every, got {n_steps} and {record_every}."
        )
    _optimizer(optimizer, 1.0)  # validates the choice
    f = jnp.float32
    return _run(
        key,
        problem,
        params,
        jnp.asarray(lam, f),
        jnp.asarray(ema_rate, f),
        jnp.asarray(eps, f),
        jnp.asarray(learning_rate, f),
        jnp.asarray(METHODS.index(method), jnp.int32),
        optimizer=optimizer,
        n_steps=n_steps,
        batch_size=batch_size,
        record_every=record_every,
    )
