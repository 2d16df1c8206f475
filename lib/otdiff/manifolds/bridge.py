"""Riemannian diffusion Schrödinger bridges by iterative proportional fitting (RDSB).

**The problem.** Given two laws :math:`\\pi_0` (the data) and :math:`\\pi_T` (the uniform law for
generation, or a second data set for interpolation) on a manifold :math:`\\mathcal M`, and a
reference path measure :math:`Q` (Brownian motion on :math:`\\mathcal M` over :math:`[0, T]`), the
Schrödinger bridge is

.. math::

    P^\\star = \\arg\\min\\{\\mathrm{KL}(P \\,\\|\\, Q) : P_0 = \\pi_0,\\ P_T = \\pi_T\\}.

**IPF** :cite:`kullback1968probability`, :cite:`debortoli2021diffusion` alternates the two
half-constraints, :math:`P^{2n+1} = \\arg\\min\\{\\mathrm{KL}(P\\|P^{2n}) : P_T = \\pi_T\\}` and
:math:`P^{2n+2} = \\arg\\min\\{\\mathrm{KL}(P\\|P^{2n+1}) : P_0 = \\pi_0\\}`, starting from
:math:`P^0 = Q`. Each half-step is a **time reversal**: :math:`P^{2n+1}` is the reversal of the
forward process :math:`P^{2n}` started from :math:`\\pi_T` at time :math:`T` instead of from its own
terminal law. The first one, :math:`P^1`, is exactly a Riemannian score-based generative model
:cite:`debortoli2022riemannian`; RDSB :cite:`thornton2022rdsb` goes on reversing.

**Discretisation and the time indexing of the reversal.** Both directions are geodesic random
walks with :math:`K` steps of size :math:`\\gamma = T/K` (:mod:`otdiff.manifolds.walk`). The
forward walk uses :math:`F_k(x) = f(x, t_k)` at its times :math:`t_k = k\\gamma`,
:math:`X_{k+1} = \\exp_{X_k}(\\gamma F_k(X_k) + \\sqrt\\gamma Z_k)`, :math:`X_0 \\sim \\pi_0`; the
backward walk uses :math:`B_j(y) = b(y, s_j)` at the backward times :math:`s_j = j\\gamma`
(:math:`s = T - t`), :math:`Y_{j+1} = \\exp_{Y_j}(\\gamma B_j(Y_j) + \\sqrt\\gamma Z'_j)`,
:math:`Y_0 \\sim \\pi_T`, so that :math:`Y_j` plays the role of :math:`X_{K-j}`. Backward step
:math:`j` undoes forward step :math:`k = K - 1 - j`, and the reversal formula of an SDE,
:math:`b(y, s) = -f(y, T - s) + \\nabla\\log p_{T-s}(y)`, reads in the discrete indices

.. math::

    B_j(x) \\approx -F_{K-1-j}(x) + \\nabla_{\\mathcal M}\\log p_{K-j}(x),\\qquad
    F_k(x) \\approx -B_{K-1-k}(x) + \\nabla_{\\mathcal M}\\log q_{K-k}(x),

with :math:`p_k` the law of :math:`X_k` and :math:`q_j` that of :math:`Y_j` (the second line
reverses the backward process: the forward half-step). The scores are only needed at the states
the walk has *moved to* (:math:`p_1, \\dots, p_K` and :math:`q_1, \\dots, q_K`), never at the
empirical starting laws.

**Score matching on the manifold.** The new drift network :math:`g_\\theta(x, \\tau_i)`
(:math:`\\tau_i = i/K`) is fitted so that :math:`u_i = g_\\theta(\\cdot, \\tau_i) + h_{K-1-i}`, with
:math:`h` the other direction's drift, matches the score of the other direction's marginal at
index :math:`K - i`, by **implicit score matching** :cite:`hyvarinen2005estimation` on the
trajectories of the other direction (:func:`ism_loss`):

.. math::

    \\mathcal L(\\theta) = \\mathbb E_{i,\\ x \\sim \\text{law}(W_{K-i})}
    \\Big[\\tfrac12\\|u_i(x)\\|^2 + \\operatorname{div}_{\\mathcal M} u_i(x)\\Big],

which equals :math:`\\tfrac12\\mathbb E\\|u_i - \\nabla\\log p\\|^2` up to a constant and needs no
transition density, so it works for any drift. The divergence is exact (a :math:`3\\times3`
Jacobian on :math:`S^2`) or Hutchinson's estimate (:meth:`~otdiff.manifolds.Manifold.divergence`);
the other direction's drift and divergence are evaluated once on its cached trajectories. For the
first half-step with the Brownian reference (:math:`F = 0`) the transition density is the heat
kernel, so **denoising score matching** :cite:`vincent2011connection` with exact heat-kernel samples
and scores applies instead (:func:`heat_dsm_loss`, :mod:`otdiff.manifolds.heat`), as in RSGM.

**Algorithm** (:func:`ipf`; iteration :math:`n = 1, 2, \\dots` pairs the forward drift
:math:`f^{n-1}` with the backward drift :math:`b^{n-1}` fitted to reverse it; :math:`f^0` is the
reference)::

    for n = 0, ..., L-1:
        X = forward walk from pi_0 with f^n          # K+1 states of N particles, cached
        b^n = fit the reversal of X                   # DSM with the heat kernel if n = 0 and f^0 = 0, else ISM
        if n < L-1:
            Y = backward walk from pi_T with b^n      # cached
            f^{n+1} = fit the reversal of Y           # ISM
    generate: backward walk from pi_T with b^{L-1}

Each network starts from the previous one of its direction (``warm_start``) or afresh, and is
fitted with the book's trainer, :func:`otdiff.train.fit` (Adam with clipping, a warm-up and a
cosine decay to 10%, no EMA; mini-batches of cached (step, particle) pairs drawn uniformly).

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from otdiff import artifacts, checkpoint, train
from otdiff import config as _config
from otdiff._checks import check_int, check_positive, check_weights, guard_finite
from otdiff.manifolds.base import DIVERGENCES, Manifold
from otdiff.manifolds.heat import heat_kernel_score, n_terms_for, sample_heat_kernel
from otdiff.manifolds.walk import Drift, WalkResult, geodesic_random_walk
from otdiff.nn import TimeMLP
from otdiff.progress import Progress

__all__ = [
    "BridgeConfig",
    "Bridge",
    "DriftNet",
    "FIRST_LOSSES",
    "make_drift_network",
    "empirical",
    "ism_loss",
    "heat_dsm_loss",
    "reversal_targets",
    "ipf",
    "forward_drift",
    "backward_drift",
    "sample_forward",
    "sample_backward",
    "cached_ipf",
    "CHAPTER_HORIZON",
    "ChapterBridges",
    "chapter_tasks",
    "chapter_bridges",
]

#: How the first backward half-step with the Brownian reference is fitted.
FIRST_LOSSES = ("heat", "implicit")


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
    """The settings of an RDSB run (hashable; every field is static).

    Attributes:
        horizon: the time :math:`T > 0` of the bridge.
        n_steps: the geodesic random walk's steps :math:`K` (``gamma = horizon / n_steps``).
        n_particles: the trajectories simulated and cached per half-step.
        train_steps: Adam steps per half-step (one compiled chunk of :func:`otdiff.train.fit`).
        batch_size: (time, particle) pairs per step.
        learning_rate: the peak learning rate (warm-up then cosine decay to 10%).
        hidden: the widths of the drift networks' hidden layers.
        embed_dim: the size of their time embedding.
        warm_start: start each network from the previous one of its direction.
        first_loss: ``"heat"`` (denoising score matching with the heat kernel, :math:`S^2` and a
            Brownian reference only) or ``"implicit"`` for the first backward half-step.
        divergence: ``"exact"`` or ``"hutchinson"`` in the implicit score-matching loss.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    horizon: float = 0.2
    n_steps: int = 10
    n_particles: int = 2000
    train_steps: int = 600
    batch_size: int = 256
    learning_rate: float = 2e-3
    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 32
    warm_start: bool = True
    first_loss: str = "heat"
    divergence: str = "exact"

    def __post_init__(self):
        check_positive(self.horizon, "horizon")
        check_int(self.n_steps, "n_steps", low=1)
        check_int(self.n_particles, "n_particles", low=2)
        check_int(self.train_steps, "train_steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_positive(self.learning_rate, "learning_rate")
        object.__setattr__(
            self, "hidden", tuple(check_int(h, "hidden", low=1) for h in self.hidden)
        )
        if not self.hidden:
            raise ValueError("hidden must list at least one layer width.")
        check_int(self.embed_dim, "embed_dim", low=2)
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even, got {self.embed_dim}.")
        if self.first_loss not in FIRST_LOSSES:
            raise ValueError(f"first_loss must be one of {FIRST_LOSSES}, got {self.first_loss!r}.")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {self.divergence!r}.")
        if not isinstance(self.warm_start, bool):
            raise TypeError(f"warm_start must be a bool, got {self.warm_start!r}.")

    @property
    def gamma(self) -> float:
        """The step size :math:`\\gamma = T/K`."""
        return self.horizon / self.n_steps

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# -- the drift networks (the one place that uses otdiff's time-conditioned MLP) -------------------


class DriftNet(eqx.Module):
    """A tangent drift :math:`g(x, \\tau) = P_x\\,\\mathrm{MLP}(x, \\tau)` of a point and a time fraction.

    Attributes:
        net: the time-conditioned MLP (input the ambient point, output an ambient vector).
        manifold: the manifold whose tangent projector is applied to the output.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    net: eqx.Module
    manifold: Manifold

    def __call__(self, x: jax.Array, tau: jax.Array) -> jax.Array:
        """The drift at one point ``x`` ``(D,)`` and a time fraction ``tau`` in ``[0, 1]``."""
        return self.manifold.to_tangent(x, self.net(x, tau))


def make_drift_network(
    key: jax.Array, manifold: Manifold, hidden=(128, 128), embed_dim: int = 32
) -> DriftNet:
    """A fresh :class:`DriftNet`: an :class:`otdiff.nn.TimeMLP` from and to the ambient coordinates.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    d = manifold.ambient_dim
    net = TimeMLP(d, d, hidden=tuple(hidden), embed_dim=embed_dim, key=key)
    return DriftNet(net, manifold)


class _Timed(eqx.Module):
    """``drift(x, t) = net(x, t / horizon)``: a drift network in absolute time (arrays traced)."""

    net: DriftNet
    horizon: jax.Array

    def __call__(self, x, t):
        return self.net(x, t / self.horizon)


# -- the bridge ----------------------------------------------------------------------------------


class Bridge(NamedTuple):
    """The drifts of an RDSB run after ``n_iterations`` IPF iterations.

    Attributes:
        manifold: the manifold.
        config: the :class:`BridgeConfig`.
        forward: ``(f^1, ..., f^{L-1})``: the forward drift networks of iterations 2 to L
            (iteration 1 runs the reference).
        backward: ``(b^0, ..., b^{L-1})``: the backward drift networks of iterations 1 to L.
        reference: the reference drift ``f^0(x, t)``, or ``None`` for Brownian motion.
        losses: the training losses of every half-step in the order they ran
            (``b^0, f^1, b^1, ...``), each ``(train_steps,)``.
        seconds: the wall-clock time of each half-step (simulation and training).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    manifold: Manifold
    config: BridgeConfig
    forward: tuple[DriftNet, ...]
    backward: tuple[DriftNet, ...]
    reference: Drift | None
    losses: tuple[np.ndarray, ...]
    seconds: tuple[float, ...]

    @property
    def n_iterations(self) -> int:
        return len(self.backward)


def _check_iteration(bridge: Bridge, iteration: int) -> int:
    if not isinstance(bridge, Bridge):
        raise TypeError(f"bridge must be an otdiff.manifolds.Bridge, got {type(bridge).__name__}.")
    return check_int(iteration, "iteration", low=1, high=bridge.n_iterations)


def forward_drift(bridge: Bridge, iteration: int) -> Drift | None:
    """The forward drift ``f(x, t)`` of IPF iteration ``iteration`` (1 = the reference).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    iteration = _check_iteration(bridge, iteration)
    if iteration == 1:
        return bridge.reference
    return _Timed(bridge.forward[iteration - 2], jnp.asarray(bridge.config.horizon, jnp.float32))


def backward_drift(bridge: Bridge, iteration: int) -> Drift:
    """The backward drift ``b(y, s)`` (backward time ``s``) of IPF iteration ``iteration``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    iteration = _check_iteration(bridge, iteration)
    return _Timed(bridge.backward[iteration - 1], jnp.asarray(bridge.config.horizon, jnp.float32))


def sample_forward(
    key, bridge: Bridge, x0, iteration: int, *, n_steps: int | None = None, keep_path: bool = False
) -> WalkResult:
    """The forward process of IPF iteration ``iteration`` from the points ``x0`` (samples of :math:`\\pi_0`).

    ``n_steps`` (static) defaults to the training grid; a finer grid evaluates the drift network
    at times it was not trained on.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    drift = forward_drift(bridge, iteration)
    n = bridge.config.n_steps if n_steps is None else n_steps
    return geodesic_random_walk(
        key, bridge.manifold, x0, bridge.config.horizon, n, drift, keep_path=keep_path
    )


def sample_backward(
    key, bridge: Bridge, y0, iteration: int, *, n_steps: int | None = None, keep_path: bool = False
) -> WalkResult:
    """The backward (generative) process of IPF iteration ``iteration`` from ``y0`` (samples of :math:`\\pi_T`).

    Its state at backward index ``j`` (``path[j]``) approximates the forward marginal at
    :math:`t = T - s_j`; ``x`` approximates :math:`\\pi_0`.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    drift = backward_drift(bridge, iteration)
    n = bridge.config.n_steps if n_steps is None else n_steps
    return geodesic_random_walk(
        key, bridge.manifold, y0, bridge.config.horizon, n, drift, keep_path=keep_path
    )


def empirical(points, weights=None) -> Callable[[jax.Array, int], jax.Array]:
    """``sample(key, n)``: ``n`` draws with replacement from weighted points ``(m, D)``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    points = jnp.asarray(points)
    if points.ndim != 2 or points.shape[0] < 1:
        raise ValueError(f"points must have shape (m, D), got {points.shape}.")
    p = check_weights(weights, points.shape[0], "weights")

    def sample(key, n):
        return points[jax.random.choice(key, points.shape[0], (n,), p=p)]

    return sample


# -- the losses ----------------------------------------------------------------------------------


def ism_loss(
    manifold: Manifold,
    drift: DriftNet,
    x: jax.Array,
    tau: jax.Array,
    other: jax.Array,
    other_div: jax.Array,
    key: jax.Array | None = None,
) -> jax.Array:
    """Implicit score matching of :math:`u = g(\\cdot, \\tau) + h` on a batch (see the module docstring).

    .. math::

        \\frac1B\\sum_{b} \\tfrac12\\|u(x_b)\\|^2 + \\operatorname{div}_{\\mathcal M} g(x_b, \\tau_b)
        + \\operatorname{div}_{\\mathcal M} h(x_b),\\qquad u = g + h.

    Args:
        manifold: the manifold.
        drift: the network :math:`g` being fitted.
        x: points ``(B, D)``; ``tau``: their time fractions ``(B,)``.
        other: the other direction's drift :math:`h` at those points ``(B, D)`` (zero for the
            Brownian reference); ``other_div``: its divergence ``(B,)`` (a constant for the fit).
        key: ``None`` for the exact divergence, else a key for Hutchinson's tangent probes.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    u = jax.vmap(drift)(x, tau) + other
    if key is None:
        div = jax.vmap(lambda xb, tb: manifold.divergence(lambda y: drift(y, tb), xb))(x, tau)
    else:
        z = manifold.hutchinson_probe(key, x)
        div = jax.vmap(lambda xb, tb, zb: manifold.divergence(lambda y: drift(y, tb), xb, zb))(
            x, tau, z
        )
    return jnp.mean(0.5 * manifold.squared_norm(x, u) + div + other_div)


def heat_dsm_loss(
    drift: DriftNet, x0: jax.Array, tau: jax.Array, t: jax.Array, key: jax.Array, n_terms: int
) -> jax.Array:
    """Denoising score matching with the heat kernel of :math:`S^2` (the first half-step, RSGM).

    .. math::

        \\frac1B\\sum_b \\tfrac12\\big\\|g(x_b, \\tau_b) - \\nabla_x\\log p_{t_b}(x_b \\mid x_{0,b})\\big\\|^2,
        \\qquad x_b \\sim p_{t_b}(\\cdot \\mid x_{0,b}),

    with exact heat-kernel samples and scores (:mod:`otdiff.manifolds.heat`).

    Args:
        drift: the backward network :math:`g`.
        x0: data points ``(B, 3)``; ``tau``: the backward time fractions ``(B,)``; ``t``: the
            matching forward times ``(B,)`` (> 0).
        key: a key for the heat-kernel samples.
        n_terms: the series' terms (static).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    x = sample_heat_kernel(key, x0, t, n_terms=n_terms)
    target = heat_kernel_score(x, x0, t, n_terms=n_terms)
    g = jax.vmap(drift)(x, tau)
    return jnp.mean(0.5 * jnp.sum((g - target) ** 2, axis=-1))


@eqx.filter_jit
def reversal_targets(manifold: Manifold, path: jax.Array, other, horizon: jax.Array):
    """What fitting the reversal of a cached walk needs: points, the other drift, its divergence.

    Args:
        manifold: the manifold.
        path: the other direction's states ``(K + 1, N, D)`` (index = its own step).
        other: the other direction's drift ``h(x, t)`` in its own absolute time, or ``None``.
        horizon: :math:`T` (an array).

    Returns:
        ``(points, drift, div)`` of shapes ``(K, N, D)``, ``(K, N, D)``, ``(K, N)``: entry ``i``
        holds the states :math:`W_{K-i}` (where the new network's step ``i`` starts) and
        :math:`h_{K-1-i}` and its divergence there (see the module docstring).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    k_steps = path.shape[0] - 1
    idx = jnp.arange(k_steps)
    points = path[k_steps - idx]
    if other is None:
        zeros = jnp.zeros(points.shape[:2], points.dtype)
        return points, jnp.zeros_like(points), zeros
    t_other = horizon * (k_steps - 1 - idx) / k_steps

    def at(x, t):
        fn = lambda y: manifold.to_tangent(y, other(y, t))
        return fn(x), manifold.divergence(fn, x)

    values, div = jax.vmap(lambda xs, t: jax.vmap(lambda x: at(x, t))(xs))(points, t_other)
    return points, values, div


# -- training: otdiff.train.fit with the two losses ----------------------------------------------


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float, n_steps: int) -> optax.GradientTransformation:
    """Adam, gradients clipped at norm 1, a linear warm-up over ``min(100, n_steps/10)`` steps (from
    ``learning_rate / warm-up``), then a cosine decay to 10% at ``n_steps``.

    One object per setting (cached), so that :func:`otdiff.train.fit`, which hashes its optimiser,
    compiles one program per loss and setting.
    """
    warmup = min(100.0, n_steps / 10.0)

    def schedule(count):
        c = jnp.asarray(count, jnp.float32)
        rise = jnp.minimum(1.0, (c + 1.0) / max(warmup, 1.0))
        frac = jnp.clip((c - warmup) / max(n_steps - warmup, 1.0), 0.0, 1.0)
        return learning_rate * rise * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

    return optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(schedule),
    )


class _ISMLoss(eqx.Module):
    """:func:`ism_loss` on a mini-batch of cached states (``train.fit``'s ``loss(model, key, batch)``)."""

    manifold: Manifold
    hutchinson: bool = eqx.field(static=True)

    def __call__(self, model, key, batch):
        x, tau, other, other_div = batch
        probe = key if self.hutchinson else None
        return ism_loss(self.manifold, model, x, tau, other, other_div, probe)


class _HeatLoss(eqx.Module):
    """:func:`heat_dsm_loss` on a mini-batch of data points, at a uniform backward step."""

    horizon: jax.Array
    k_steps: int = eqx.field(static=True)
    n_terms: int = eqx.field(static=True)

    def __call__(self, model, key, x0):
        k_i, k_x = jax.random.split(key)
        i = jax.random.randint(k_i, (x0.shape[0],), 0, self.k_steps)
        tau = i.astype(x0.dtype) / self.k_steps
        t = self.horizon * (self.k_steps - i).astype(x0.dtype) / self.k_steps  # step i <-> p_{K-i}
        return heat_dsm_loss(model, x0, tau, t, k_x, self.n_terms)


def _fit(key, model, data, loss, cfg: BridgeConfig):
    """``cfg.train_steps`` steps of :func:`otdiff.train.fit` (no EMA, one compiled chunk):
    ``(model, losses)``."""
    result = train.fit(
        key, model, data, loss, n_steps=cfg.train_steps, batch_size=cfg.batch_size,
        optimizer=_optimizer(float(cfg.learning_rate), cfg.train_steps), ema_decay=None,
        chunk_size=cfg.train_steps,
    )  # fmt: skip
    params, static = train.split(result.model)
    params = guard_finite(params, "the trained drift's weights")
    return eqx.combine(params, static), result.losses


def _train_ism(key, model, manifold, points, other, other_div, cfg: BridgeConfig):
    """Fit ``model`` by implicit score matching on the cached states: mini-batches of (step,
    particle) pairs drawn uniformly, i.e. rows of the flattened ``(K * N)`` cache."""
    k_steps, n = points.shape[:2]
    tau = jnp.broadcast_to(
        (jnp.arange(k_steps, dtype=points.dtype) / k_steps)[:, None], (k_steps, n)
    )
    rows = lambda a: a.reshape(k_steps * n, *a.shape[2:])  # noqa: E731
    data = (rows(points), rows(tau), rows(other), rows(other_div))
    loss = _ISMLoss(manifold, cfg.divergence == "hutchinson")
    return _fit(key, model, data, loss, cfg)


def _train_heat(key, model, data, cfg: BridgeConfig, n_terms: int):
    """Fit ``model`` by denoising score matching with the heat kernel from the data points."""
    loss = _HeatLoss(jnp.asarray(cfg.horizon, data.dtype), cfg.n_steps, n_terms)
    return _fit(key, model, data, loss, cfg)


# -- IPF -----------------------------------------------------------------------------------------


def ipf(
    key: jax.Array,
    manifold: Manifold,
    sample_start: Callable[[jax.Array, int], jax.Array],
    sample_end: Callable[[jax.Array, int], jax.Array],
    config: BridgeConfig,
    n_iterations: int,
    *,
    reference: Drift | None = None,
    start: Bridge | None = None,
    verbose: bool = False,
) -> Bridge:
    """Iterative proportional fitting of a Riemannian diffusion Schrödinger bridge (see the module docstring).

    Args:
        key: a JAX random key; half-step ``h`` (0, 1, 2, ... in the order ``b^0, f^1, b^1``)
            uses ``fold_in(key, h)``, so continuing a run (``start``) gives the same networks as
            running all iterations at once.
        manifold: the manifold.
        sample_start: ``sample_start(key, n) -> (n, D)``: draws of :math:`\\pi_0` (the data; see
            :func:`empirical`).
        sample_end: draws of :math:`\\pi_T` (e.g. ``manifold.random_uniform``).
        config: a :class:`BridgeConfig`.
        n_iterations: the IPF iterations :math:`L \\ge 1` (iteration 1 is the score-based model).
        reference: the reference drift ``f^0(x, t)`` (``None``: Brownian motion).
        start: a bridge from an earlier call with the same arguments, to continue from.
        verbose: print one line per half-step.

    Returns:
        A :class:`Bridge` with ``n_iterations`` backward networks.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    if not isinstance(manifold, Manifold):
        raise TypeError(f"manifold must be an otdiff.manifolds.Manifold, got {manifold!r}.")
    if not isinstance(config, BridgeConfig):
        raise TypeError(f"config must be a BridgeConfig, got {type(config).__name__}.")
    n_iterations = check_int(n_iterations, "n_iterations", low=1)
    if not callable(sample_start) or not callable(sample_end):
        raise TypeError("sample_start and sample_end must be callables sample(key, n).")
    use_heat = reference is None and config.first_loss == "heat"
    if use_heat and manifold.ambient_dim != 3:
        raise ValueError("first_loss='heat' needs the heat kernel of S^2; use 'implicit' here.")
    if start is None:
        bridge = Bridge(manifold, config, (), (), reference, (), ())
    else:
        if not isinstance(start, Bridge) or start.config != config or start.manifold != manifold:
            raise ValueError("start must be a Bridge made with the same manifold and config.")
        if start.n_iterations > n_iterations:
            raise ValueError(f"start already has {start.n_iterations} > {n_iterations} iterations.")
        bridge = start._replace(reference=reference)
    horizon = jnp.asarray(config.horizon, jnp.float32)
    n_terms = n_terms_for(config.gamma, 1e-6)

    def new_net(k, previous):
        if config.warm_start and previous is not None:
            return previous
        return make_drift_network(k, manifold, config.hidden, config.embed_dim)

    def record(bridge, which, net, losses, seconds):
        losses = np.asarray(losses)
        if verbose:
            h = len(bridge.losses)
            print(
                f"otdiff.manifolds.ipf: half-step {h} ({which}) in {seconds:.1f} s, "
                f"final loss {np.mean(losses[-50:]):.4g}",
                flush=True,
            )
        fields = {which: getattr(bridge, which) + (net,)}
        return bridge._replace(
            **fields, losses=bridge.losses + (losses,), seconds=bridge.seconds + (seconds,)
        )

    while bridge.n_iterations < n_iterations:
        n = bridge.n_iterations
        # backward half-step: reverse the forward process of iteration n + 1
        if n == 0 or len(bridge.forward) == n:
            h = 2 * n
            k = jax.random.fold_in(key, h)
            t0 = time.perf_counter()
            x0 = manifold.projection(sample_start(jax.random.fold_in(k, 0), config.n_particles))
            net = new_net(jax.random.fold_in(k, 2), bridge.backward[-1] if n else None)
            if n == 0 and use_heat:
                net, losses = _train_heat(jax.random.fold_in(k, 3), net, x0, config, n_terms)
            else:
                f = reference if n == 0 else _Timed(bridge.forward[n - 1], horizon)
                path = geodesic_random_walk(
                    jax.random.fold_in(k, 1), manifold, x0, config.horizon, config.n_steps, f
                ).path
                pts, other, div = reversal_targets(manifold, path, f, horizon)
                net, losses = _train_ism(
                    jax.random.fold_in(k, 3), net, manifold, pts, other, div, config
                )
            jax.block_until_ready(losses)
            bridge = record(bridge, "backward", net, losses, time.perf_counter() - t0)
        if bridge.n_iterations >= n_iterations:
            break
        # forward half-step: reverse the backward process of iteration n + 1
        n = bridge.n_iterations
        h = 2 * n - 1
        k = jax.random.fold_in(key, h)
        t0 = time.perf_counter()
        y0 = manifold.projection(sample_end(jax.random.fold_in(k, 0), config.n_particles))
        b = _Timed(bridge.backward[-1], horizon)
        path = geodesic_random_walk(
            jax.random.fold_in(k, 1), manifold, y0, config.horizon, config.n_steps, b
        ).path
        pts, other, div = reversal_targets(manifold, path, b, horizon)
        net = new_net(jax.random.fold_in(k, 2), bridge.forward[-1] if bridge.forward else None)
        net, losses = _train_ism(jax.random.fold_in(k, 3), net, manifold, pts, other, div, config)
        jax.block_until_ready(losses)
        bridge = record(bridge, "forward", net, losses, time.perf_counter() - t0)
    return bridge


# -- a cache of trained bridges -------------------------------------------------------------------

_CACHE_VERSION = 3  # 3: trained with otdiff.train.fit


def _code() -> list:
    # The code that trains a bridge, for the fingerprint of the cached ones.
    return [
        ipf, _fit, _train_ism, _train_heat, _optimizer, _ISMLoss, _HeatLoss, ism_loss,
        heat_dsm_loss, reversal_targets, DriftNet, make_drift_network, _Timed,
        geodesic_random_walk, heat_kernel_score, sample_heat_kernel, train.fit,
    ]  # fmt: skip


def _ipf_progress(
    name: str, prefix: str, seed: int, done: int, n_iterations: int, cache=None
) -> Progress:
    """A bar over the IPF iterations ``done + 1, ..., n_iterations`` of :func:`cached_ipf`.

    The expected duration is that of the same half-steps in an earlier run of the same settings
    (a shipped one, else one in the user cache ``cache``; this seed's first; a half-step that run
    lacks counts as the mean of its score-matching half-steps), with its machine said beside it;
    unknown when there is none.
    """
    todo = range(max(2 * done - 1, 0), 2 * n_iterations - 1)  # half-steps h = 0, 1, 2, ...
    expected, basis = None, None
    pattern = f"{prefix}-it*-seed*.ckpt"

    def other_seed(path) -> bool:  # sorts this seed's files first
        return f"-seed{seed}." not in path.name and f"-seed{seed}-" not in path.name

    earlier = [
        (path, where)
        for folder, where in (
            (artifacts.shipped_dir(), "the shipped run of these settings"),
            (artifacts.cache_folder(cache), "an earlier run of these settings, cached"),
        )
        for path in sorted(folder.glob(pattern), key=lambda p: (other_seed(p), p.name))
    ]
    for path, where in earlier:
        try:
            meta = checkpoint.read_metadata(path)
        except (OSError, ValueError, checkpoint.CorruptCheckpointError):
            continue
        seconds = [float(s) for s in meta.get("seconds", ())]
        if seconds:
            later = seconds[1:] or seconds
            expected = sum(seconds[h] if h < len(seconds) else np.mean(later) for h in todo)
            basis = f"as {where}, on {meta.get('platform', 'its machine')}"
            break
    what = f"continuing from {done}" if done else "training"
    return Progress(
        n_iterations - done,
        f"otdiff.manifolds.cached_ipf: {what} {name!r} (seed {seed}, cached afterwards)",
        unit="IPF iteration", expected_seconds=expected, basis=basis,
    )  # fmt: skip


def _is_float_spec(leaf) -> bool:
    # a floating-point leaf of a network built by eqx.filter_eval_shape (eqx.is_inexact_array
    # for the real network)
    return isinstance(leaf, jax.ShapeDtypeStruct) and jnp.issubdtype(leaf.dtype, jnp.inexact)


def cached_ipf(
    name: str,
    seed: int,
    manifold: Manifold,
    sample_start: Callable,
    sample_end: Callable,
    config: BridgeConfig,
    n_iterations: int,
    *,
    tag: str = "",
    cache: str | os.PathLike | None = None,
    verbose: bool = True,
    retrain: bool = False,
) -> Bridge:
    """:func:`ipf` from ``jax.random.key(seed)``, trained once and then loaded.

    The bridge is the artifact ``<name>-<hash of config>-it<L>`` at ``seed`` of :func:`otdiff.artifacts.cached`:
    a shipped file (the chapter's demo bridges, :func:`chapter_bridges`), else the user cache
    (``cache``, default ``otdiff.artifacts.cache_folder()``), else trained and cached, every
    network's weights in the pickle-free format of :mod:`otdiff.checkpoint`, written atomically
    under a lock. The fingerprint covers ``config``, the manifold, ``tag``, the code that trains
    and a version: pass a ``tag`` that changes whenever ``sample_start``/``sample_end`` change
    (they cannot be hashed). A cached run with fewer iterations is continued rather than
    retrained. Only Brownian references are cached. With ``verbose``, training shows a progress
    bar per IPF iteration (:class:`otdiff.progress.Progress`) that states at the start the
    duration of an earlier run of the same settings (shipped, or in the cache), where there is one.

    Returns:
        The :class:`Bridge`; ``seconds`` holds the training times of the run that made the file.

    Taught in: book/diffusion/06_rdsb.ipynb
    """
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(f"name must be letters, digits, '_' or '-', got {name!r}.")
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a string, got {type(tag).__name__}.")
    seed = check_int(seed, "seed", low=0)
    n_iterations = check_int(n_iterations, "n_iterations", low=1)
    code = _code()
    # the settings' hash in the name: a shipped demo bridge is not stale under another preset
    prefix = f"{name}-{artifacts.fingerprint(config.as_dict())}"

    def inputs(iters):
        return {
            "config": config.as_dict(), "manifold": repr(manifold), "tag": tag,
            "v": _CACHE_VERSION, "iterations": iters, "code": code,
        }  # fmt: skip

    def skeleton():  # the network's structure, shapes and dtypes, without computing its weights
        return eqx.filter_eval_shape(
            make_drift_network, jax.random.key(0), manifold, config.hidden, config.embed_dim
        )

    def like(iters):
        params = eqx.filter(skeleton(), _is_float_spec)
        return {"forward": [params] * (iters - 1), "backward": [params] * iters}

    def to_bridge(art, iters) -> Bridge:
        _, static = eqx.partition(skeleton(), _is_float_spec)
        nets = {k: tuple(eqx.combine(p, static) for p in v) for k, v in art.tree.items()}
        # (an artifact planned by otdiff.artifacts.planning has zeros and no metadata)
        losses = tuple(np.asarray(x, np.float32) for x in art.meta.get("losses", ()))
        return Bridge(
            manifold, config, nets["forward"], nets["backward"], None, losses,
            tuple(art.meta.get("seconds", ())),
        )  # fmt: skip

    def build(progress):
        start = None
        if not retrain:
            for iters in range(n_iterations - 1, 0, -1):  # continue the longest shorter run
                found = artifacts.find(
                    f"{prefix}-it{iters}", seed, inputs(iters),
                    like=functools.partial(like, iters), cache=cache,
                )  # fmt: skip
                if found is not None:
                    start = to_bridge(found, iters)
                    break
        done = 0 if start is None else start.n_iterations
        bar = _ipf_progress(name, prefix, seed, done, n_iterations, cache) if verbose else None
        bridge = start
        try:  # one IPF iteration per call: continuing a run gives the same networks
            for iters in range(done + 1, n_iterations + 1):
                bridge = ipf(
                    jax.random.key(seed), manifold, sample_start, sample_end, config, iters,
                    start=bridge,
                )  # fmt: skip
                if bar is not None:
                    bar.advance()
        finally:
            if bar is not None:
                bar.close()
        params = lambda nets: [eqx.filter(m, eqx.is_inexact_array) for m in nets]  # noqa: E731
        tree = {"forward": params(bridge.forward), "backward": params(bridge.backward)}
        meta = {
            "config": config.as_dict(),
            "tag": tag,
            "losses": [np.asarray(x).tolist() for x in bridge.losses],
            "seconds": [round(s, 3) for s in bridge.seconds],
        }
        return tree, meta

    art = artifacts.cached(
        f"{prefix}-it{n_iterations}", seed, inputs(n_iterations), build=build,
        like=functools.partial(like, n_iterations), cache=cache, retrain=retrain, verbose=False,
    )  # fmt: skip
    return to_bridge(art, n_iterations)


class ChapterBridges(NamedTuple):
    """The trained bridges of the chapter (what :func:`chapter_bridges` returns).

    Attributes:
        config: the :class:`BridgeConfig` of the IPF bridges.
        baseline: the one-iteration (RSGM) baseline's, with 3x the Adam steps.
        vmf: per seed, the bridge from the three-mode von Mises-Fisher mixture to the uniform
            law (three IPF iterations for the first seed, two for the others).
        rsgm: per seed, the baseline on the same task (one iteration).
        cities: per seed, the bridge from the world's cities (drawn by population) to the
            uniform law (two iterations).
        land: the first seed's bridge from the cities to the uniform law on land (three
            iterations).
        seeds: the seeds.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    config: BridgeConfig
    baseline: BridgeConfig
    vmf: dict
    rsgm: dict
    cities: dict
    land: Bridge
    seeds: list


#: The chapter's bridge horizon ``T``: deliberately short, far from mixing on the sphere.
CHAPTER_HORIZON = 0.2


def chapter_tasks():
    """The chapter's laws on the sphere: ``(sphere, vmf3, cities, land)``, the unit sphere, the
    mixture of three von Mises-Fisher laws (``kappa = 25``, means the axes), and the samplers
    ``(key, n) -> points`` of the cities by population and of the uniform law on land.

    Taught in: book/diffusion/06_rdsb.ipynb
    """
    from otdiff import data
    from otdiff.manifolds.sphere import Sphere, vmf_mixture

    land_mask = data.load_land_mask()
    return (
        Sphere(2),
        vmf_mixture(jnp.eye(3), 25.0),
        data.load_cities().sample,
        lambda key, n: data.sample_land(key, n, land_mask),
    )


def chapter_bridges(*, scale: str | None = None, verbose: bool = True) -> ChapterBridges:
    r"""The bridges the chapter trains, by :func:`cached_ipf` (shipped for the demo preset).

    Under the preset ``scale`` (default :func:`otdiff.config.active_scale`): horizon
    ``CHAPTER_HORIZON``, ``20`` walk steps (``50`` under ``full``), ``2,000`` particles
    (``20,000``), ``400`` Adam steps per half-step (``4,000``), hidden layers ``(64, 64)``
    (``(256, 256, 256)``), the seeds ``config.seeds(5)``; the tasks of :func:`chapter_tasks`.

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        verbose: print a line when training.

    Returns:
        A :class:`ChapterBridges`.

    Taught in: book/diffusion/06_rdsb.ipynb
    """
    scale = _config.active_scale() if scale is None else scale
    choose = functools.partial(_config.choose, scale=scale)
    sphere, vmf3, cities, land = chapter_tasks()
    seeds = _config.seeds(5)
    cfg = BridgeConfig(
        horizon=CHAPTER_HORIZON,
        n_steps=choose(demo=20, full=50),
        n_particles=choose(demo=2_000, full=20_000),
        train_steps=choose(demo=400, full=4_000),
        hidden=choose(demo=(64, 64), full=(256, 256, 256)),
    )
    baseline = BridgeConfig(**{**cfg.as_dict(), "train_steps": 3 * cfg.train_steps})
    uniform = sphere.random_uniform
    run = functools.partial(cached_ipf, manifold=sphere, verbose=verbose)
    vmf = {
        s: run("vmf3", s, sample_start=vmf3.sample, sample_end=uniform, config=cfg,
               n_iterations=3 if s == seeds[0] else 2, tag="vmf3-kappa25")
        for s in seeds
    }  # fmt: skip
    rsgm = {
        s: run("vmf3-rsgm", s, sample_start=vmf3.sample, sample_end=uniform, config=baseline,
               n_iterations=1, tag="vmf3-kappa25")
        for s in seeds
    }  # fmt: skip
    city = {
        s: run("cities", s, sample_start=cities, sample_end=uniform, config=cfg, n_iterations=2,
               tag="cities15000")
        for s in seeds
    }  # fmt: skip
    land_bridge = run("cities-land", seeds[0], sample_start=cities, sample_end=land, config=cfg,
                      n_iterations=3, tag="cities15000-land0.25")  # fmt: skip
    return ChapterBridges(cfg, baseline, vmf, rsgm, city, land_bridge, seeds)
