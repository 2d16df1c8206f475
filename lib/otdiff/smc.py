"""Sequential Monte Carlo: log-weights, effective sample size, resampling and Feynman-Kac kernels.

A **Feynman-Kac model** :cite:`delmoral2004feynman` is a Markov chain :math:`X_0, \\dots, X_K`
with initial law :math:`M_0` and kernels :math:`M_k(x_k \\mid x_{k-1})`, reweighted by
non-negative potentials :math:`G_0(x_0)` and :math:`G_k(x_{k-1}, x_k)`. It defines the path
measures

.. math::

    \\mathbb Q_k(dx_{0:k}) = \\frac{1}{Z_k}\\,G_0(x_0)M_0(dx_0)\\prod_{j=1}^{k}
        G_j(x_{j-1}, x_j)\\,M_j(dx_j\\mid x_{j-1}),

and SMC approximates them with :math:`N` weighted particles :cite:`doucet2011tutorial`: propagate
each particle through :math:`M_k`, multiply its weight by :math:`G_k`, and resample when the
weights degenerate. The product of the average incremental weights,

.. math::

    \\hat Z_K = \\prod_{k=0}^{K}\\ \\sum_{i=1}^N W_{k-1}^i\\,G_k^i ,\\qquad
    W_{k-1}^i = \\frac{w_{k-1}^i}{\\sum_j w_{k-1}^j},

is an **unbiased** estimate of the normalising constant :math:`Z_K` (its logarithm, returned
here, is biased low by Jensen's inequality). Everything is computed in log space with
``logsumexp``: a weight is never exponentiated before it is normalised.

The **effective sample size** of normalised weights :math:`W` is
:math:`\\mathrm{ESS} = 1/\\sum_i (W^i)^2 \\in [1, N]`; the kernel resamples before a step when
:math:`\\mathrm{ESS} < \\kappa N` (``ess_threshold`` :math:`\\kappa \\in (0, 1]`; 1 resamples at
every step). A **resampler** is a plain function ``resampler(key, weights, n_samples) ->
indices``; the three here are unbiased (:math:`\\mathbb E[\\#\\text{copies of } i] = N W^i`) and
share one inverse-CDF search, differing in the uniforms they feed it:

* :func:`multinomial`: :math:`N` independent uniforms (sorted draws of the categorical law);
* :func:`stratified`: :math:`u_i = (i + U_i)/N` with independent :math:`U_i`;
* :func:`systematic`: :math:`u_i = (i + U)/N` with a single :math:`U` (lowest variance in practice).

A particle of zero weight is never selected, for any :math:`N`: in float32 the last uniform of a
large system can round up to 1 and the search then runs past the end, so the search maps any
index it lands on to the nearest particle of positive weight.

The house style (blackjax's shape): :func:`init` returns the state, :func:`build_kernel` closes
over the model and the resampler and returns a pure ``kernel(key, state, inputs,
ess_threshold) -> (state, info)``, and :func:`run` scans the kernel with ``jax.lax.scan``; the
random key comes first. The ESS threshold is a dynamic float (a slider over it never recompiles);
the number of particles and of steps are static. The log-weights are guarded at the boundaries
(what :func:`init`, a kernel step and :func:`run` return): a potential that returns NaN raises a
``ValueError``, or an error at run time when the call is traced by the caller's ``jit``; the scan
inside :func:`run` runs unguarded (see ``otdiff._checks``).

Taught in: book/diffusion/02_energy_smc.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import (
    check_int,
    check_log_weights,
    check_mesh,
    check_weights,
    guard_in_range,
    guard_log_weights,
    guard_simplex,
    is_concrete,
    place,
    unguarded,
)

__all__ = [
    "RESAMPLERS",
    "FeynmanKac",
    "SMCState",
    "SMCInfo",
    "SMCResult",
    "normalize_log_weights",
    "ess",
    "multinomial",
    "stratified",
    "systematic",
    "resample_indices",
    "resample",
    "maybe_resample",
    "init",
    "build_kernel",
    "run",
]

Resampler = Callable[[jax.Array, jax.Array, int], jax.Array]


# -- weights --------------------------------------------------------------------------------------


def _checked_log_weights(log_weights, name: str = "log_weights") -> jax.Array:
    """Checked now (shape, NaN, +inf, all -inf) and, when traced, guarded against NaN and +inf."""
    log_weights = check_log_weights(log_weights, name)
    return log_weights if is_concrete(log_weights) else guard_log_weights(log_weights, name)


def _normalize(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log W, logsumexp(log w))`` without checks; uniform weights if every weight is zero."""
    lse = jax.nn.logsumexp(log_weights)
    lse = jnp.where(jnp.any(jnp.isnan(log_weights)), jnp.nan, lse)  # logsumexp may drop NaNs
    n = log_weights.shape[0]
    empty = lse == -jnp.inf  # every weight zero: fall back to uniform (NaN stays NaN)
    normalized = jnp.where(empty, -math.log(n), log_weights - jnp.where(empty, 0.0, lse))
    return normalized, lse


def normalize_log_weights(log_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalised log-weights and the log of the total weight.

    .. math:: \\log W^i = \\log w^i - \\log\\textstyle\\sum_j w^j ,

    computed with ``logsumexp`` (no weight is exponentiated first).

    Args:
        log_weights: ``(n,)`` unnormalised log-weights (``-inf`` for a zero weight).

    Returns:
        ``(log_W, log_total)``: ``log_W`` sums to one in probability space.

    Raises:
        ValueError: on NaN or ``+inf`` entries, or if every weight is zero.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    return _normalize(check_log_weights(log_weights))


def _ess(log_weights: jax.Array) -> jax.Array:
    return jnp.exp(2.0 * jax.nn.logsumexp(log_weights) - jax.nn.logsumexp(2.0 * log_weights))


def ess(log_weights: jax.Array, *, relative: bool = False) -> jax.Array:
    """The effective sample size of (possibly unnormalised) log-weights.

    .. math:: \\mathrm{ESS} = \\frac{(\\sum_i w^i)^2}{\\sum_i (w^i)^2}
        = \\exp\\big(2\\,\\mathrm{lse}(\\log w) - \\mathrm{lse}(2\\log w)\\big) \\in [1, n].

    Args:
        log_weights: ``(n,)`` log-weights.
        relative: return :math:`\\mathrm{ESS}/n \\in (0, 1]` instead.

    Raises:
        ValueError: on NaN or ``+inf`` entries, or if every weight is zero.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    log_weights = check_log_weights(log_weights)
    value = _ess(log_weights)
    return value / log_weights.shape[0] if relative else value


# -- resampling -----------------------------------------------------------------------------------


def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """For each ``u`` in ``[0, 1]``, the smallest ``i`` with ``cdf_i > u``, never a zero weight.

    ``u`` may reach 1 by float rounding (then the search returns ``n``), and a cumulative sum
    computed in blocks need not repeat its value exactly across a zero weight; either way the
    index found is mapped to the nearest particle of positive weight at or before it (after it,
    for leading zeros). Integer ``cummax``/``cummin`` are exact.
    """
    n = weights.shape[0]
    cdf = jnp.cumsum(weights)
    cdf = cdf / cdf[-1]
    idx = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, n - 1)
    order = jnp.arange(n)
    positive = weights > 0
    last_positive = jax.lax.cummax(jnp.where(positive, order, -1))
    next_positive = jax.lax.cummin(jnp.where(positive, order, n), reverse=True)
    nearest = jnp.where(last_positive >= 0, last_positive, next_positive)
    return nearest[idx]


def _strata(n: int, offsets: jax.Array) -> jax.Array:
    """:math:`u_i = (i + U_i)/n` (to float32's resolution of ``u`` near 1, about :math:`6\\times 10^{-8}`)."""
    return (jnp.arange(n, dtype=offsets.dtype) + offsets) / n


def _prepare(weights, n_samples) -> tuple[jax.Array, int]:
    weights = check_weights(weights, None, "weights")
    weights = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))
    n = weights.shape[0] if n_samples is None else n_samples
    n = check_int(n, "n_samples", low=1)
    if not is_concrete(weights):  # concrete weights were checked above
        weights = guard_simplex(weights, "weights")
    return weights, n


def multinomial(key: jax.Array, weights: jax.Array, n_samples: int | None = None) -> jax.Array:
    """Multinomial resampling: ``n_samples`` i.i.d. draws of the categorical law ``weights``.

    Args:
        key: a JAX random key.
        weights: ``(n,)`` probabilities (non-negative, summing to one).
        n_samples: how many indices (static; default ``n``).

    Returns:
        ``(n_samples,)`` ancestor indices in increasing order.

    Raises:
        ValueError: for weights that are negative, non-finite or do not sum to one (at run time
            too under ``jit``), or ``n_samples < 1``.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    weights, n = _prepare(weights, n_samples)
    u = jnp.sort(jax.random.uniform(key, (n,), weights.dtype))
    return _inverse_cdf(weights, u)


def stratified(key: jax.Array, weights: jax.Array, n_samples: int | None = None) -> jax.Array:
    """Stratified resampling: one uniform in each stratum :math:`[i/N, (i+1)/N)`.

    .. math:: u_i = (i + U_i)/N,\\quad U_i \\sim \\mathcal U[0, 1)\\ \\text{i.i.d.},\\qquad
        a_i = \\min\\{j : \\textstyle\\sum_{l\\le j} W^l > u_i\\}.

    Arguments, return value and errors as :func:`multinomial`.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    weights, n = _prepare(weights, n_samples)
    return _inverse_cdf(weights, _strata(n, jax.random.uniform(key, (n,), weights.dtype)))


def systematic(key: jax.Array, weights: jax.Array, n_samples: int | None = None) -> jax.Array:
    """Systematic resampling: one uniform shared by all strata.

    .. math:: u_i = (i + U)/N,\\quad U \\sim \\mathcal U[0, 1),\\qquad
        a_i = \\min\\{j : \\textstyle\\sum_{l\\le j} W^l > u_i\\}.

    Each particle is copied :math:`\\lfloor NW^i\\rfloor` or :math:`\\lceil NW^i\\rceil` times.
    Arguments, return value and errors as :func:`multinomial`.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    weights, n = _prepare(weights, n_samples)
    return _inverse_cdf(weights, _strata(n, jax.random.uniform(key, (), weights.dtype)))


#: The resamplers by name, for widgets that choose one.
RESAMPLERS = {"systematic": systematic, "stratified": stratified, "multinomial": multinomial}


def _check_resampler(resampler) -> Resampler:
    if not callable(resampler):
        raise TypeError(
            "resampler must be a function resampler(key, weights, n_samples) -> indices "
            f"(e.g. otdiff.smc.systematic), got {resampler!r}."
        )
    return resampler


def resample_indices(
    key: jax.Array,
    log_weights: jax.Array,
    n_samples: int | None = None,
    *,
    resampler: Resampler = systematic,
) -> jax.Array:
    """Ancestor indices drawn from (unnormalised) log-weights with ``resampler``.

    Args:
        key: a JAX random key.
        log_weights: ``(n,)`` log-weights.
        n_samples: how many indices (static; default ``n``).
        resampler: :func:`systematic`, :func:`stratified`, :func:`multinomial` or any function
            with their signature (static).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    _check_resampler(resampler)
    log_weights = _checked_log_weights(log_weights)
    n = log_weights.shape[0] if n_samples is None else n_samples
    n = check_int(n, "n_samples", low=1)
    normalized, _ = _normalize(log_weights)
    return resampler(key, jnp.exp(normalized), n)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, idx, axis=0), tree)


def resample(key: jax.Array, particles, log_weights: jax.Array, *, resampler=systematic):
    """Resample ``particles`` (a pytree of arrays with leading axis ``n``) by their log-weights.

    Returns:
        ``(particles, ancestors)``: the selected particles (equally weighted) and their indices.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    idx = resample_indices(key, log_weights, resampler=resampler)
    _check_particles(particles, idx.shape[0])
    return _take(particles, idx), idx


def _check_particles(particles, n: int) -> None:
    """A pytree of arrays whose leaves all hold one row per log-weight (``n``)."""
    leaves = jax.tree_util.tree_leaves(particles)
    if not leaves or not all(hasattr(leaf, "shape") for leaf in leaves):
        raise TypeError(
            f"particles must be an array or a pytree of arrays, got {type(particles).__name__}."
        )
    rows = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if rows != {n}:
        raise ValueError(
            f"particles must have one row per log-weight: log_weights has {n} entries, the "
            f"particles' leading sizes are {sorted(rows, key=str)}."
        )


def _maybe_resample(key, particles, log_weights, ess_threshold, resampler):
    n = log_weights.shape[0]
    do = _ess(log_weights) < ess_threshold * n
    identity = jnp.arange(n)

    def yes(_):
        normalized, _lse = _normalize(log_weights)
        return resampler(key, jnp.exp(normalized), n), jnp.full((n,), -math.log(n))

    def no(_):
        return identity, log_weights

    idx, new_log_weights = jax.lax.cond(do, yes, no, None)
    return _take(particles, idx), new_log_weights.astype(log_weights.dtype), idx, do


def maybe_resample(
    key: jax.Array,
    particles,
    log_weights: jax.Array,
    ess_threshold: float = 0.5,
    *,
    resampler: Resampler = systematic,
):
    """Adaptive resampling: resample only when :math:`\\mathrm{ESS} < \\kappa n`.

    Args:
        key: a JAX random key.
        particles: a pytree of arrays with leading axis ``n``.
        log_weights: ``(n,)`` normalised log-weights.
        ess_threshold: :math:`\\kappa \\in (0, 1]` (dynamic).
        resampler: the resampling function (static).

    Returns:
        ``(particles, log_weights, ancestors, resampled)``; after a resampling the log-weights
        are uniform, :math:`-\\log n`.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    _check_resampler(resampler)
    ess_threshold = _guard_threshold(ess_threshold)
    log_weights = _checked_log_weights(log_weights)
    _check_particles(particles, log_weights.shape[0])
    with unguarded():
        return _maybe_resample(key, particles, log_weights, ess_threshold, resampler)


def _guard_threshold(ess_threshold):
    return guard_in_range(ess_threshold, "ess_threshold", 0.0, 1.0, low_open=True)


# -- Feynman-Kac models and their kernel ---------------------------------------------------------


class FeynmanKac(NamedTuple):
    """A Feynman-Kac model: the initial law and potential, and the propagate-and-weigh step.

    Attributes:
        init: ``init(key, n) -> (particles, log_g0)``: ``n`` draws of :math:`M_0` (a pytree of
            arrays with leading axis ``n``) and their log-potentials :math:`\\log G_0`, ``(n,)``.
        step: ``step(key, particles, inputs) -> (particles, log_g)``: move every particle with
            the kernel :math:`M_k` and return the log-potentials :math:`\\log G_k(x_{k-1}, x_k)`.
            Fusing the two lets a potential reuse what the proposal computed (a mean, a
            gradient).
        inputs: a pytree of arrays with leading axis ``K``, one slice per step (times, data).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """

    init: Callable[[jax.Array, int], tuple[Any, jax.Array]]
    step: Callable[[jax.Array, Any, Any], tuple[Any, jax.Array]]
    inputs: Any


class SMCState(NamedTuple):
    """The particle system between two steps.

    Attributes:
        particles: a pytree of arrays with leading axis ``n``.
        log_weights: ``(n,)`` normalised log-weights (``logsumexp == 0``).
        log_evidence: the running estimate :math:`\\log\\hat Z_k`.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """

    particles: Any
    log_weights: jax.Array
    log_evidence: jax.Array


class SMCInfo(NamedTuple):
    """What one kernel step reports.

    Attributes:
        ess: the effective sample size after the reweighting, in ``[1, n]``.
        resampled: whether the step resampled before moving.
        log_increment: :math:`\\log\\sum_i W^i_{k-1} G^i_k`, this step's factor of :math:`\\hat Z`.
        ancestors: ``(n,)`` the index of each particle's parent (identity without resampling).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """

    ess: jax.Array
    resampled: jax.Array
    log_increment: jax.Array
    ancestors: jax.Array


class SMCResult(NamedTuple):
    """What :func:`run` returns.

    Attributes:
        particles: the final particles (a pytree, leading axis ``n``).
        log_weights: their normalised log-weights, ``(n,)``.
        log_evidence: :math:`\\log\\hat Z_K`, the log normalising-constant estimate.
        ess: ``(K + 1,)`` the ESS after the initial weighting and after every step.
        resampled: ``(K,)`` booleans, whether step ``k`` resampled first.
        ancestors: ``(K, n)`` parent indices (``None`` unless requested).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """

    particles: Any
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array | None


def _reweight(log_weights, log_g):
    """Fold ``log_g`` into normalised ``log_weights``: ``(new normalised, log increment)``."""
    return _normalize(log_weights + log_g)


def _guard_state(state: SMCState) -> SMCState:
    """A particle system's log-weights and log-evidence, guarded against NaN and ``+inf``."""
    return state._replace(
        log_weights=guard_log_weights(state.log_weights, "the log-weights"),
        log_evidence=guard_log_weights(state.log_evidence, "the log-evidence"),
    )


def init(key: jax.Array, model: FeynmanKac, n_particles: int) -> SMCState:
    """Draw ``n_particles`` (static) from :math:`M_0` and weigh them by :math:`G_0`.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    return _guard_state(_init(key, model, check_int(n_particles, "n_particles", low=1)))


def _init(key, model, n_particles, mesh=None):
    particles, log_g = model.init(key, n_particles)
    uniform = jnp.full((n_particles,), -math.log(n_particles), jnp.result_type(log_g))
    log_weights, log_z = _reweight(uniform, place(log_g, mesh, False))
    return SMCState(particles, log_weights, log_z)


def _shard(state: SMCState, mesh) -> SMCState:
    """Particles and log-weights split across the mesh's devices (``mesh=None``: unchanged)."""
    if mesh is None:
        return state
    particles, log_weights = place((state.particles, state.log_weights), mesh, True)
    return state._replace(particles=particles, log_weights=log_weights)


def build_kernel(
    model: FeynmanKac, resampler: Resampler = systematic, *, mesh: Any = None
) -> Callable:
    """The SMC kernel of ``model``: ``kernel(key, state, inputs, ess_threshold=0.5) -> (state, info)``.

    One step: resample if the ESS is below :math:`\\kappa n`, propagate, reweight,

    .. math::

        a^i \\sim \\mathrm{Resample}(W_{k-1}) \\text{ if } \\mathrm{ESS} < \\kappa n,\\quad
        x_k^i \\sim M_k(\\cdot\\mid x_{k-1}^{a^i}),\\quad
        W_k^i \\propto W_{k-1}^{a^i} G_k(x_{k-1}^{a^i}, x_k^i),

    and :math:`\\log\\hat Z_k = \\log\\hat Z_{k-1} + \\log\\sum_i W_{k-1}^{a^i}G_k^i`.

    Args:
        model: the :class:`FeynmanKac` model (its ``step`` is the move and the potential).
        resampler: ``resampler(key, weights, n_samples) -> indices`` (e.g. :func:`systematic`).

    Returns:
        The pure kernel; ``inputs`` is the step's slice of ``model.inputs``, ``ess_threshold``
        :math:`\\kappa \\in (0, 1]` is dynamic. The new state's log-weights are guarded (a
        ``ValueError`` on NaN, or a run-time error when the kernel is traced). With a ``mesh``
        (see :func:`run`) the new state's particles and log-weights are split across its
        devices.

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    kernel = _build_kernel(model, resampler, check_mesh(mesh))

    def guarded_kernel(key: jax.Array, state: SMCState, inputs: Any, ess_threshold: float = 0.5):
        ess_threshold = _guard_threshold(ess_threshold)
        with unguarded():
            new, info = kernel(key, state, inputs, ess_threshold)
        return _guard_state(_shard(new, mesh)), info

    return guarded_kernel


def _build_kernel(model: FeynmanKac, resampler: Resampler, mesh=None) -> Callable:
    if not isinstance(model, FeynmanKac):
        raise TypeError(f"model must be an otdiff.smc.FeynmanKac, got {type(model).__name__}.")
    _check_resampler(resampler)

    def kernel(key: jax.Array, state: SMCState, inputs: Any, ess_threshold: float = 0.5):
        k_resample, k_move = jax.random.split(key)
        # On a mesh the particles stay split across devices; the (n,) log-weights are
        # gathered on every device, so that the normalisation, the ESS and the cumulative
        # weights of the resampling are computed over all particles, in one order: the same
        # numbers as on one device.
        particles, log_weights, ancestors, resampled = _maybe_resample(
            k_resample, state.particles, place(state.log_weights, mesh, False), ess_threshold,
            resampler,
        )  # fmt: skip
        particles, log_g = model.step(k_move, particles, inputs)
        log_weights, log_increment = _reweight(log_weights, place(log_g, mesh, False))
        new = SMCState(particles, log_weights, state.log_evidence + log_increment)
        return new, SMCInfo(_ess(log_weights), resampled, log_increment, ancestors)

    return kernel


def run(
    key: jax.Array,
    model: FeynmanKac,
    n_particles: int,
    *,
    resampler: Resampler = systematic,
    ess_threshold: float = 0.5,
    return_ancestors: bool = False,
    mesh: Any = None,
) -> SMCResult:
    """Run the SMC sampler of a Feynman-Kac model over all its steps in one ``jax.lax.scan``.

    Args:
        key: a JAX random key.
        model: the :class:`FeynmanKac` model.
        n_particles: the number of particles :math:`n` (static int >= 1).
        resampler: the resampling function (static; default :func:`systematic`).
        ess_threshold: resample before a step when :math:`\\mathrm{ESS} < \\kappa n`,
            :math:`\\kappa \\in (0, 1]` (dynamic).
        return_ancestors: also return the ``(K, n)`` parent indices (static).
        mesh: ``None`` (one device), or a ``jax.sharding.Mesh`` with a ``"data"`` axis
            (:func:`otdiff.train.data_parallel_mesh`): the particles and their log-weights are
            split across its devices (``NamedSharding(mesh, P("data"))``) after the start and
            after every step; ``n_particles`` must be a multiple of the number of devices
            (static). Resampling stays global: the normalisation, the ESS and the cumulative
            weights of the inverse-CDF search run over all particles (XLA adds the reductions
            and the exchange of the selected particles across devices), so a run gives the
            same estimates as on one device for the same key, up to the order of float
            additions.

    Returns:
        An :class:`SMCResult`: the final weighted particles, the ESS history and
        :math:`\\log\\hat Z`.

    Raises:
        ValueError: for ``n_particles < 1`` or an ``ess_threshold`` outside ``(0, 1]``; if a
            potential produces NaN weights (at run time under ``jit``).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    n_particles = check_int(n_particles, "n_particles", low=1)
    mesh = check_mesh(mesh, n_particles, "n_particles")
    ess_threshold = _guard_threshold(ess_threshold)
    _build_kernel(model, resampler, mesh)  # checks the model and the resampler now
    ess_threshold = jnp.asarray(ess_threshold, jnp.result_type(float))
    final, ess, resampled, ancestors = _run(
        key, model, n_particles, resampler, ess_threshold, bool(return_ancestors), mesh
    )
    final = _guard_state(final)
    return SMCResult(
        final.particles, final.log_weights, final.log_evidence, ess, resampled, ancestors
    )


@eqx.filter_jit
@unguarded()
def _run(key, model, n_particles, resampler, ess_threshold, return_ancestors, mesh):
    """:func:`run`'s loop, compiled once per model, size and resampler (the threshold is
    dynamic): run eagerly, a ``lax.scan`` whose body is a new closure at every call would be
    compiled again at every call."""
    kernel = _build_kernel(model, resampler, mesh)
    k_init, k_run = jax.random.split(key)
    state = _shard(_init(k_init, model, n_particles, mesh), mesh)
    n_steps = jax.tree_util.tree_leaves(model.inputs)[0].shape[0]
    keys = jax.random.split(k_run, n_steps)

    def body(s, xs):
        k, inp = xs
        new, info = kernel(k, s, inp, ess_threshold)
        return _shard(new, mesh), info

    final, infos = jax.lax.scan(body, state, (keys, model.inputs))
    ess = jnp.concatenate([_ess(state.log_weights)[None], infos.ess])
    return final, ess, infos.resampled, infos.ancestors if return_ancestors else None
