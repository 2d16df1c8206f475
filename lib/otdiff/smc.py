"""Sequential Monte Carlo: log-weights, effective sample size, resampling and a Feynman-Kac sampler.

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
:math:`\\mathrm{ESS} = 1/\\sum_i (W^i)^2 \\in [1, N]`; the sampler resamples before a step when
:math:`\\mathrm{ESS} < \\kappa N` (``ess_threshold`` :math:`\\kappa \\in (0, 1]`; 1 resamples at
every step). Three unbiased resampling schemes (:math:`\\mathbb E[\\#\\text{copies of } i] = N W^i`)
share one inverse-CDF search and differ in the uniforms they feed it:

* multinomial: :math:`N` independent uniforms (sorted draws of the categorical law);
* stratified: :math:`u_i = (i + U_i)/N` with independent :math:`U_i`;
* systematic: :math:`u_i = (i + U)/N` with a single :math:`U` (lowest variance in practice).

The house style: the state is a NamedTuple (:class:`SMCState`), :func:`init` and :func:`step`
are pure, :func:`run` is a ``jax.lax.scan``; the random key comes first. The ESS threshold is a
dynamic float (a slider over it never recompiles); the number of particles and of steps are
static.

Taught in: book/diffusion/02_energy_smc.ipynb
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_in_range, check_int, is_concrete

__all__ = [
    "RESAMPLING",
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
    "step",
    "run",
    "check_ess_threshold",
]

RESAMPLING = ("systematic", "stratified", "multinomial")


# -- input checks -------------------------------------------------------------------------------


def check_ess_threshold(ess_threshold: Any) -> Any:
    """The ESS threshold :math:`\\kappa` must lie in ``(0, 1]`` (skipped under a transformation)."""
    return check_in_range(ess_threshold, "ess_threshold", 0.0, 1.0, low_open=True)


def _check_log_weights(log_weights: Any, name: str = "log_weights") -> jax.Array:
    arr = jnp.asarray(log_weights)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n,) with n >= 1, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        a = np.asarray(arr)
        if np.any(np.isnan(a)):
            raise ValueError(f"{name} contains NaN: every log-weight must be a number or -inf.")
        if np.any(a == np.inf):
            raise ValueError(f"{name} contains +inf: log-weights must be finite or -inf.")
        if np.all(a == -np.inf):
            raise ValueError(f"{name} are all -inf: at least one particle needs positive weight.")
    return arr


def _check_weights(weights: Any) -> jax.Array:
    arr = jnp.asarray(weights)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"weights must have shape (n,) with n >= 1, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if is_concrete(arr):
        a = np.asarray(arr, np.float64)
        if np.any(~np.isfinite(a)):
            raise ValueError("weights contain NaN or infinite values.")
        if np.any(a < 0):
            raise ValueError("weights must be non-negative.")
        if abs(a.sum() - 1.0) > 1e-3:
            raise ValueError(f"weights must sum to one (within 1e-3), got a sum of {a.sum():.6g}.")
    return arr


def _check_method(method: str) -> str:
    if method not in RESAMPLING:
        raise ValueError(f"method must be one of {RESAMPLING}, got {method!r}.")
    return method


# -- weights --------------------------------------------------------------------------------------


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
    """
    return _normalize(_check_log_weights(log_weights))


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
    """
    log_weights = _check_log_weights(log_weights)
    value = _ess(log_weights)
    return value / log_weights.shape[0] if relative else value


# -- resampling -----------------------------------------------------------------------------------


def _search(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Inverse CDF: for each ``u`` in [0, 1), the smallest ``i`` with ``cdf_i > u``."""
    cdf = jnp.cumsum(weights)
    cdf = cdf / cdf[-1]  # exactly one at the end, whatever the float32 round-off
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.clip(idx, 0, weights.shape[0] - 1)


def _uniforms(key: jax.Array, method: str, num_samples: int, dtype) -> jax.Array:
    if method == "systematic":
        return (jnp.arange(num_samples, dtype=dtype) + jax.random.uniform(key, (), dtype)) / (
            num_samples
        )
    if method == "stratified":
        u = jax.random.uniform(key, (num_samples,), dtype)
        return (jnp.arange(num_samples, dtype=dtype) + u) / num_samples
    return jnp.sort(jax.random.uniform(key, (num_samples,), dtype))


def _indices(key, weights, num_samples, method):
    weights = weights.astype(jnp.result_type(weights.dtype, jnp.float32))
    return _search(weights, _uniforms(key, method, num_samples, weights.dtype))


def _resampler(method: str):
    def resampler(key: jax.Array, weights: jax.Array, num_samples: int | None = None) -> jax.Array:
        weights = _check_weights(weights)
        n = weights.shape[0] if num_samples is None else num_samples
        n = check_int(n, "num_samples", low=1)
        return _indices(key, weights, n, method)

    return resampler


multinomial = _resampler("multinomial")
multinomial.__name__ = multinomial.__qualname__ = "multinomial"
multinomial.__doc__ = """Multinomial resampling: ``num_samples`` i.i.d. draws of the categorical law ``weights``.

Args:
    key: a JAX random key.
    weights: ``(n,)`` probabilities (non-negative, summing to one).
    num_samples: how many indices (static; default ``n``).

Returns:
    ``(num_samples,)`` ancestor indices in increasing order.
"""

stratified = _resampler("stratified")
stratified.__name__ = stratified.__qualname__ = "stratified"
stratified.__doc__ = """Stratified resampling: one uniform in each stratum :math:`[i/N, (i+1)/N)`.

.. math:: u_i = (i + U_i)/N,\\quad U_i \\sim \\mathcal U[0, 1)\\ \\text{i.i.d.},\\qquad
    a_i = \\min\\{j : \\textstyle\\sum_{l\\le j} W^l > u_i\\}.

Arguments and return value as :func:`multinomial`.
"""

systematic = _resampler("systematic")
systematic.__name__ = systematic.__qualname__ = "systematic"
systematic.__doc__ = """Systematic resampling: one uniform shared by all strata.

.. math:: u_i = (i + U)/N,\\quad U \\sim \\mathcal U[0, 1),\\qquad
    a_i = \\min\\{j : \\textstyle\\sum_{l\\le j} W^l > u_i\\}.

Each particle is copied :math:`\\lfloor NW^i\\rfloor` or :math:`\\lceil NW^i\\rceil` times.
Arguments and return value as :func:`multinomial`.
"""


def resample_indices(
    key: jax.Array, log_weights: jax.Array, num_samples: int | None = None, *, method="systematic"
) -> jax.Array:
    """Ancestor indices drawn from (unnormalised) log-weights with the named scheme.

    Args:
        key: a JAX random key.
        log_weights: ``(n,)`` log-weights.
        num_samples: how many indices (static; default ``n``).
        method: ``"systematic"``, ``"stratified"`` or ``"multinomial"`` (static).
    """
    _check_method(method)
    log_weights = _check_log_weights(log_weights)
    n = log_weights.shape[0] if num_samples is None else num_samples
    n = check_int(n, "num_samples", low=1)
    normalized, _ = _normalize(log_weights)
    return _indices(key, jnp.exp(normalized), n, method)


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, idx, axis=0), tree)


def resample(key: jax.Array, particles, log_weights: jax.Array, *, method: str = "systematic"):
    """Resample ``particles`` (a pytree of arrays with leading axis ``n``) by their log-weights.

    Returns:
        ``(particles, ancestors)``: the selected particles (equally weighted) and their indices.
    """
    idx = resample_indices(key, log_weights, method=method)
    return _take(particles, idx), idx


def maybe_resample(
    key: jax.Array,
    particles,
    log_weights: jax.Array,
    ess_threshold: float = 0.5,
    *,
    method: str = "systematic",
):
    """Adaptive resampling: resample only when :math:`\\mathrm{ESS} < \\kappa n`.

    Args:
        key: a JAX random key.
        particles: a pytree of arrays with leading axis ``n``.
        log_weights: ``(n,)`` normalised log-weights.
        ess_threshold: :math:`\\kappa \\in (0, 1]` (dynamic).
        method: the resampling scheme (static).

    Returns:
        ``(particles, log_weights, ancestors, resampled)``; after a resampling the log-weights
        are uniform, :math:`-\\log n`.
    """
    _check_method(method)
    check_ess_threshold(ess_threshold)
    log_weights = _check_log_weights(log_weights)
    return _maybe_resample(key, particles, log_weights, ess_threshold, method)


def _maybe_resample(key, particles, log_weights, ess_threshold, method):
    n = log_weights.shape[0]
    do = _ess(log_weights) < ess_threshold * n
    identity = jnp.arange(n)

    def yes(_):
        normalized, _lse = _normalize(log_weights)
        return _indices(key, jnp.exp(normalized), n, method), jnp.full((n,), -math.log(n))

    def no(_):
        return identity, log_weights

    idx, new_log_weights = jax.lax.cond(do, yes, no, None)
    return _take(particles, idx), new_log_weights.astype(log_weights.dtype), idx, do


# -- the Feynman-Kac sampler ---------------------------------------------------------------------


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
    """

    particles: Any
    log_weights: jax.Array
    log_evidence: jax.Array


class SMCInfo(NamedTuple):
    """What one step reports.

    Attributes:
        ess: the effective sample size after the reweighting, in ``[1, n]``.
        resampled: whether the step resampled before moving.
        log_increment: :math:`\\log\\sum_i W^i_{k-1} G^i_k`, this step's factor of :math:`\\hat Z`.
        ancestors: ``(n,)`` the index of each particle's parent (identity without resampling).
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
    """

    particles: Any
    log_weights: jax.Array
    log_evidence: jax.Array
    ess: jax.Array
    resampled: jax.Array
    ancestors: jax.Array | None


def _reweight(log_weights, log_g):
    """Fold ``log_g`` into normalised ``log_weights``: ``(new normalised, log increment)``."""
    unnorm = log_weights + log_g
    normalized, lse = _normalize(unnorm)
    return normalized, lse


def init(key: jax.Array, model: FeynmanKac, n_particles: int) -> tuple[SMCState, jax.Array]:
    """Draw ``n_particles`` (static) from :math:`M_0` and weigh them by :math:`G_0`.

    Returns:
        ``(state, ess)``.
    """
    n_particles = check_int(n_particles, "n_particles", low=1)
    particles, log_g = model.init(key, n_particles)
    uniform = jnp.full((n_particles,), -math.log(n_particles), jnp.result_type(log_g))
    log_weights, log_z = _reweight(uniform, log_g)
    return SMCState(particles, log_weights, log_z), _ess(log_weights)


def step(
    key: jax.Array,
    state: SMCState,
    model: FeynmanKac,
    inputs: Any,
    ess_threshold: float = 0.5,
    *,
    method: str = "systematic",
) -> tuple[SMCState, SMCInfo]:
    """One SMC step: resample if the ESS is below :math:`\\kappa n`, propagate, reweight.

    .. math::

        a^i \\sim \\mathrm{Resample}(W_{k-1}) \\text{ if } \\mathrm{ESS} < \\kappa n,\\quad
        x_k^i \\sim M_k(\\cdot\\mid x_{k-1}^{a^i}),\\quad
        W_k^i \\propto W_{k-1}^{a^i} G_k(x_{k-1}^{a^i}, x_k^i),

    and :math:`\\log\\hat Z_k = \\log\\hat Z_{k-1} + \\log\\sum_i W_{k-1}^{a^i}G_k^i`.
    """
    k_resample, k_move = jax.random.split(key)
    particles, log_weights, ancestors, resampled = _maybe_resample(
        k_resample, state.particles, state.log_weights, ess_threshold, method
    )
    particles, log_g = model.step(k_move, particles, inputs)
    log_weights, log_increment = _reweight(log_weights, log_g)
    new = SMCState(particles, log_weights, state.log_evidence + log_increment)
    return new, SMCInfo(_ess(log_weights), resampled, log_increment, ancestors)


def run(
    key: jax.Array,
    model: FeynmanKac,
    n_particles: int,
    *,
    ess_threshold: float = 0.5,
    method: str = "systematic",
    return_ancestors: bool = False,
) -> SMCResult:
    """Run the SMC sampler of a Feynman-Kac model over all its steps in one ``jax.lax.scan``.

    Args:
        key: a JAX random key.
        model: the :class:`FeynmanKac` model.
        n_particles: the number of particles :math:`n` (static int >= 1).
        ess_threshold: resample before a step when :math:`\\mathrm{ESS} < \\kappa n`,
            :math:`\\kappa \\in (0, 1]` (dynamic).
        method: ``"systematic"``, ``"stratified"`` or ``"multinomial"`` (static).
        return_ancestors: also return the ``(K, n)`` parent indices (static).

    Returns:
        An :class:`SMCResult`: the final weighted particles, the ESS history and
        :math:`\\log\\hat Z`.

    Raises:
        ValueError: for ``n_particles < 1``, an ``ess_threshold`` outside ``(0, 1]``, an unknown
            ``method``, or (when called outside ``jit``) if a potential produced NaN weights.
    """
    n_particles = check_int(n_particles, "n_particles", low=1)
    check_ess_threshold(ess_threshold)
    _check_method(method)
    k_init, k_run = jax.random.split(key)
    state, ess0 = init(k_init, model, n_particles)
    n_steps = jax.tree_util.tree_leaves(model.inputs)[0].shape[0]
    keys = jax.random.split(k_run, n_steps)

    def body(s, xs):
        k, inp = xs
        s, info = step(k, s, model, inp, ess_threshold, method=method)
        return s, info

    state, infos = jax.lax.scan(body, state, (keys, model.inputs))
    result = SMCResult(
        state.particles,
        state.log_weights,
        state.log_evidence,
        jnp.concatenate([ess0[None], infos.ess]),
        infos.resampled,
        infos.ancestors if return_ancestors else None,
    )
    _check_result(result)
    return result


def _check_result(result: SMCResult) -> None:
    if is_concrete(result.log_weights) and bool(jnp.any(jnp.isnan(result.log_weights))):
        raise ValueError(
            "log_weights became NaN: a potential returned NaN (check the model's step for "
            "inf - inf or an overflow; potentials should be computed in log space)."
        )
