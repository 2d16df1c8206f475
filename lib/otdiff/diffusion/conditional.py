"""Conditional noise predictors for composition, and their denoising score-matching loss.

A **conditional** noise predictor :math:`\\hat\\varepsilon_\\theta(x, t, c)` learns one law per
condition :math:`c`. Here the condition says *where* an object is wanted: an indicator over the
slots of :class:`otdiff.data.Slots` (``(d,)``), or a map over the pixels of
:class:`otdiff.data.Canvas` (``(side**2,)``); all zeros is the background (no object). Trained on
the background and one-object laws only, the composition of :cite:`bradley2025projective`

.. math::

    s(x, t) = s_\\theta(x, t, 0) + \\sum_{i\\in S}\\big(s_\\theta(x, t, e_i) - s_\\theta(x, t, 0)\\big),
    \\qquad s_\\theta(x, t, c) = -\\hat\\varepsilon_\\theta(x, t, c)/\\sigma_t,

asks for objects in every slot of :math:`S` at once, a law the model never saw. Whether it gets
them depends on the architecture (the composition chapter measures it):

* :class:`ConditionalMLP` sees every coordinate and the whole condition: nothing ties its output
  for slot :math:`j` to slot :math:`j` alone, so on points with several objects (off its training
  support) the terms need not cancel as the factorized-conditionals argument requires;
* :class:`LocalSlotNet` applies one small network to each slot, seeing only that slot's value,
  the time and whether that slot is targeted: its output for slot :math:`j` cannot depend on the
  other slots, so the learned conditionals are factorized by construction;
* :class:`ConditionalConvNet` is the image version of the plain network: a convolutional network
  on the canvas and the condition map stacked as two channels, the same at every location, but
  each output pixel reads a neighbourhood as wide as the canvas (and GroupNorm pools over all of
  it), so its conditional for one cell also reads the others;
* :class:`LocalCellNet` is the image version of :class:`LocalSlotNet`: one small network applied
  to every cell of the canvas, seeing only that cell's pixels, its condition and the time.

:func:`conditional_dsm_loss` is denoising score matching (:func:`otdiff.diffusion.dsm_loss`) with
the condition passed through; train with
``otdiff.train.fit(key, model, (x, c), jax.tree_util.Partial(conditional_dsm_loss,
process=process), ...)``. :class:`ConditionalScore` is the score of one condition, ready for
:mod:`otdiff.diffusion.composition`; :func:`compose_conditions` builds the composed score of
several conditions of one network against a background condition (or without one: the plain
product).

Taught in: book/diffusion/04_projective_composition.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_choice, check_in_range, check_int
from otdiff.diffusion.composition import Composition, compose
from otdiff.diffusion.losses import WEIGHTINGS, stratified_times
from otdiff.diffusion.networks import InputScaling
from otdiff.diffusion.processes import AbstractGaussianProcess
from otdiff.nn import TimeConvNet, TimeMLP

__all__ = [
    "ConditionalMLP",
    "LocalSlotNet",
    "ConditionalConvNet",
    "LocalCellNet",
    "ConditionalScore",
    "compose_conditions",
    "conditional_dsm_loss",
]


def _scaling(data_std, process) -> InputScaling | None:
    if data_std is None:
        return None
    if process is None:
        raise ValueError("process is required with data_std (the input scaling follows it).")
    return InputScaling(data_std, process)


def _check_call(x, c, dim: int, cond_dim: int):
    if x.shape != (dim,) or c.shape != (cond_dim,):
        raise ValueError(
            f"the network expects one point of shape ({dim},) and one condition of shape "
            f"({cond_dim},), got {x.shape} and {c.shape}; vmap over a batch."
        )


class ConditionalMLP(eqx.Module):
    """A plain conditional MLP :math:`\\hat\\varepsilon_\\theta(x, t, c)` over all slots at once.

    A :class:`otdiff.nn.TimeMLP` from the point and the condition concatenated (``2 * dim``) to
    ``dim``; the point is optionally scaled by :class:`~otdiff.diffusion.networks.InputScaling`.

    Args:
        dim: the dimension ``d`` of a point and of its condition (static).
        hidden: the hidden widths (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: if given, the per-coordinate standard deviation of the data (input scaling).
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    dim: int = eqx.field(static=True)
    net: TimeMLP
    scaling: InputScaling | None

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (256, 256, 256),
        embed_dim: int = 64,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.dim = check_int(dim, "dim", low=1)
        self.net = TimeMLP(2 * dim, dim, hidden=hidden, embed_dim=embed_dim, key=key)
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        """The predicted noise at one point ``x`` ``(d,)``, time ``t`` and condition ``c`` ``(d,)``."""
        _check_call(x, c, self.dim, self.dim)
        if self.scaling is not None:
            x = x * self.scaling(t)
        return self.net(jnp.concatenate([x, c.astype(x.dtype)]), t)


class LocalSlotNet(eqx.Module):
    """A local, weight-shared noise predictor: slot :math:`j` sees only :math:`x_j`, :math:`t`, :math:`c_j`.

    .. math:: \\hat\\varepsilon_\\theta(x, t, c)_j = f_\\theta(x_j, t, c_j),\\qquad j = 1, \\dots, d,

    with one :class:`otdiff.nn.TimeMLP` :math:`f_\\theta` for every slot (``slot_dim + 1`` inputs,
    ``slot_dim`` outputs). Its conditionals factorize over the slots whatever its weights, so the
    factorized-conditionals theorem applies to the learned model, off its training support too.

    Args:
        n_slots: the number of slots ``d`` (static).
        slot_dim: the dimension of one slot (static; 1 for :class:`otdiff.data.Slots`).
        hidden: the hidden widths of :math:`f_\\theta` (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: optional input scaling, as for :class:`ConditionalMLP`.
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    n_slots: int = eqx.field(static=True)
    slot_dim: int = eqx.field(static=True)
    net: TimeMLP
    scaling: InputScaling | None

    def __init__(
        self,
        n_slots: int,
        *,
        slot_dim: int = 1,
        hidden: Sequence[int] = (128, 128),
        embed_dim: int = 32,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.n_slots = check_int(n_slots, "n_slots", low=1)
        self.slot_dim = check_int(slot_dim, "slot_dim", low=1)
        self.net = TimeMLP(slot_dim + 1, slot_dim, hidden=hidden, embed_dim=embed_dim, key=key)
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        """The predicted noise ``(n_slots * slot_dim,)`` at one point, time and condition ``(n_slots,)``."""
        _check_call(x, c, self.n_slots * self.slot_dim, self.n_slots)
        if self.scaling is not None:
            x = x * self.scaling(t)
        per_slot = x.reshape(self.n_slots, self.slot_dim)
        inputs = jnp.concatenate([per_slot, c.astype(x.dtype)[:, None]], axis=1)
        return jax.vmap(self.net, in_axes=(0, None))(inputs, t).reshape(-1)


class ConditionalConvNet(eqx.Module):
    """A conditional convolutional noise predictor for ``side x side`` canvases.

    The canvas and its condition map (which pixels should hold an object) are stacked as two
    channels of an :class:`otdiff.nn.TimeConvNet`: the same local filters at every location.

    Args:
        side, channels, n_blocks, embed_dim, groups: as :class:`otdiff.nn.TimeConvNet` (static).
        key: a JAX random key.
        data_std: optional input scaling of the canvas, as for :class:`ConditionalMLP`.
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    side: int = eqx.field(static=True)
    net: TimeConvNet
    scaling: InputScaling | None

    def __init__(
        self,
        *,
        side: int,
        channels: int = 32,
        n_blocks: int = 2,
        embed_dim: int = 32,
        groups: int = 8,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.side = check_int(side, "side", low=1)
        self.net = TimeConvNet(
            side=side, channels=channels, n_blocks=n_blocks, embed_dim=embed_dim, groups=groups,
            key=key, in_channels=2,
        )  # fmt: skip
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        """The predicted noise at one flat canvas ``x`` ``(side**2,)`` and condition map ``c``."""
        n = self.side * self.side
        _check_call(x, c, n, n)
        if self.scaling is not None:
            x = x * self.scaling(t)
        return self.net(jnp.concatenate([x, c.astype(x.dtype)]), t)


class LocalCellNet(eqx.Module):
    """A cell-local, weight-shared noise predictor for canvases cut into square cells.

    .. math:: \\hat\\varepsilon_\\theta(x, t, c)_{M_m} = f_\\theta(x_{M_m}, t, c_{M_m}),
        \\qquad m = 1, \\dots, (\\text{side}/\\text{cell})^2,

    with :math:`M_m` the pixels of cell :math:`m` of :class:`otdiff.data.Canvas` and one
    :class:`otdiff.nn.TimeMLP` :math:`f_\\theta` for every cell (``2 * cell**2`` inputs, the
    cell's pixels and its condition map; ``cell**2`` outputs): :class:`LocalSlotNet` with the
    cells as slots.

    Why the composition then works: the predicted noise on a cell depends on that cell's pixels
    and condition only, whatever the weights, so for every condition the learned score is
    (where it is a gradient field at all) the score of a noised law that factorizes over the
    cells, :math:`p^t_c(x) = \\prod_m q^t_\\theta(x_{M_m}; c_{M_m})`. The
    condition :math:`e_i` (an object in cell :math:`i`) and the empty one differ on cell
    :math:`i` only, so :math:`p^t_i(x) = q^t_\\theta(x_{M_i}; 1)\\prod_{m\\ne i}
    q^t_\\theta(x_{M_m}; 0)` and :math:`p^t_b(x) = \\prod_m q^t_\\theta(x_{M_m}; 0)`: the
    factorized conditionals of :cite:`bradley2025projective` (their Definition 5.2, the cells as
    the blocks), which their Theorem 5.3 turns into a projective composition at every noise
    level, on canvases with several objects too (never seen in training). A network that reads
    across cells, such as :class:`ConditionalConvNet`, evaluates its one-object conditional on
    canvases whose other cells hold objects, where it was never trained, and nothing makes the
    composed terms cancel there.

    The null condition (-1 everywhere) of this network learns the per-cell marginal of the
    unconditional law (an object in a given cell with probability ``1 / (n_cells + 1)`` for
    :meth:`otdiff.data.Canvas.training_data`), not the dependence between cells: its Bayes
    composition still loses objects as ``k`` grows, since each composed term pulls the other
    cells from that marginal towards "empty".

    Args:
        side: the canvas side in pixels (static).
        cell: the cell side in pixels (static), a divisor of ``side``.
        hidden: the hidden widths of :math:`f_\\theta` (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: optional input scaling of the canvas, as for :class:`ConditionalMLP`.
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    side: int = eqx.field(static=True)
    cell: int = eqx.field(static=True)
    net: TimeMLP
    scaling: InputScaling | None

    def __init__(
        self,
        *,
        side: int,
        cell: int,
        hidden: Sequence[int] = (128, 128),
        embed_dim: int = 32,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.side = check_int(side, "side", low=1)
        self.cell = check_int(cell, "cell", low=1, high=self.side)
        if self.side % self.cell:
            raise ValueError(f"cell must divide side={self.side}, got cell={self.cell}.")
        n = self.cell * self.cell
        self.net = TimeMLP(2 * n, n, hidden=hidden, embed_dim=embed_dim, key=key)
        self.scaling = _scaling(data_std, process)

    def _to_cells(self, v: jax.Array) -> jax.Array:
        # (side**2,) -> (n_cells, cell**2); cell m is row m // g, column m % g of the grid
        g, s = self.side // self.cell, self.cell
        return v.reshape(g, s, g, s).transpose(0, 2, 1, 3).reshape(g * g, s * s)

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        """The predicted noise at one flat canvas ``x`` ``(side**2,)`` and condition map ``c``."""
        n = self.side * self.side
        _check_call(x, c, n, n)
        if self.scaling is not None:
            x = x * self.scaling(t)
        inputs = jnp.concatenate([self._to_cells(x), self._to_cells(c.astype(x.dtype))], axis=1)
        eps = jax.vmap(self.net, in_axes=(0, None))(inputs, t)
        g, s = self.side // self.cell, self.cell
        return eps.reshape(g, g, s, s).transpose(0, 2, 1, 3).reshape(n)


class ConditionalScore(eqx.Module):
    """The score :math:`s(x, t) = -\\hat\\varepsilon_\\theta(x, t, c)/\\sigma_t` of one condition ``c``.

    A module: the network's weights and the condition are traced, not baked in, when it is passed
    to a jitted function (so one compiled sampler serves every condition).

    Attributes:
        model: the conditional noise predictor ``model(x, t, c)``.
        process: the forward process it was trained for.
        condition: the condition ``c``.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    model: Callable
    process: AbstractGaussianProcess
    condition: jax.Array

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return -self.model(x, t, self.condition) / self.process.sigma(t)


def compose_conditions(
    model: Callable,
    process: AbstractGaussianProcess,
    conditions,
    *,
    background,
    weights=None,
) -> Composition:
    """The composed score of one conditional network over several conditions.

    .. math::

        s(x, t) = s_\\theta(x, t, c_b) + \\sum_i w_i\\,\\big(s_\\theta(x, t, c_i) - s_\\theta(x, t, c_b)\\big)
        \\quad\\text{or, with no background,}\\quad s(x, t) = \\sum_i w_i\\, s_\\theta(x, t, c_i),

    with :math:`s_\\theta(x, t, c) = -\\hat\\varepsilon_\\theta(x, t, c)/\\sigma_t`
    (:class:`ConditionalScore`): the composition operator of :cite:`bradley2025projective`
    (their Definition 5.1) applied to the learned noised scores, by
    :func:`otdiff.diffusion.composition.compose`. The background condition is the empty one for
    a projective composition, the unconditional (null) one for the Bayes composition.

    Args:
        model: the conditional noise predictor ``model(x, t, c)`` for one point.
        process: the forward process it was trained for.
        conditions: a non-empty sequence of conditions ``c_i`` (or an array ``(k, ...)``), all of
            one shape.
        background: the background condition ``c_b`` (same shape), or ``None`` for the plain
            product of the conditionals.
        weights: ``(k,)`` weights, finite, >= 0 and not all zero (default: all ones; dynamic).

    Returns:
        A :class:`otdiff.diffusion.composition.Composition`, a per-point score ``s(x, t)``.

    Raises:
        TypeError: if ``model`` is not callable.
        ValueError: for no condition, conditions of different shapes, or bad weights.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    if not callable(model):
        raise TypeError(f"model must be a callable model(x, t, c), got {model!r}.")
    conds = [jnp.asarray(c) for c in conditions]
    if not conds:
        raise ValueError("conditions must hold at least one condition.")
    shapes = {c.shape for c in conds}
    if background is not None:
        background = jnp.asarray(background)
        shapes.add(background.shape)
    if len(shapes) != 1:
        raise ValueError(
            f"conditions and background must all have one shape, got shapes {sorted(shapes)}."
        )
    terms = [ConditionalScore(model, process, c) for c in conds]
    bg = None if background is None else ConditionalScore(model, process, background)
    return compose(terms, weights, background=bg)


def conditional_dsm_loss(
    model: Callable,
    key: jax.Array,
    batch: tuple[jax.Array, jax.Array],
    process: AbstractGaussianProcess,
    *,
    weighting: str = "eps",
    t_min: float = 1e-3,
) -> jax.Array:
    """Denoising score matching for a conditional noise predictor, on a batch ``(x0, c)``.

    .. math::

        \\mathcal L(\\theta) = \\mathbb E_{t, (x_0, c), \\varepsilon}\\ w(t)\\,
        \\|\\hat\\varepsilon_\\theta(\\alpha_t x_0 + \\sigma_t\\varepsilon, t, c) - \\varepsilon\\|^2,

    the loss of :func:`otdiff.diffusion.dsm_loss` with the condition of each point passed to the
    network (its weightings and stratified times).

    Args:
        model: ``model(x, t, c) -> eps_hat`` for one point.
        key: a JAX random key (times and noise).
        batch: ``(x0, c)``: clean points ``(n, d)`` and their conditions ``(n, ...)``.
        process: the forward Gaussian process.
        weighting: ``"eps"`` or ``"likelihood"`` (static).
        t_min: the smallest training time, in ``(0, 1)``.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    check_choice(weighting, "weighting", WEIGHTINGS)
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    x0, c = batch
    if x0.ndim != 2 or c.shape[0] != x0.shape[0]:
        raise ValueError(
            f"batch must be (x0, c) with x0 of shape (n, d) and one condition per row, got "
            f"shapes {x0.shape} and {c.shape}."
        )
    k_t, k_eps = jax.random.split(key)
    t = stratified_times(k_t, x0.shape[0], t_min)
    xt, eps = process.sample_marginal(k_eps, x0, t)
    eps_hat = jax.vmap(model)(xt, t, c)
    per_point = jnp.mean((eps_hat - eps) ** 2, axis=-1)
    if weighting == "likelihood":
        per_point = per_point * process.diffusion_squared(t) / process.sigma(t) ** 2
    return jnp.mean(per_point)
