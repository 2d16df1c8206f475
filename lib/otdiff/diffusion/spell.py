"""SPELL: sparse repellency, to steer a diffusion sampler away from a protected set.

Kirchhof et al. :cite:`kirchhof2024spell` protect a set of points :math:`z_1, \\dots, z_K` (training
images to avoid copying, or the other samples of a batch to avoid duplicates) by a *shield*, the
union of the balls :math:`B_k = \\{x : \\|x - z_k\\| \\le r\\}`. After every reverse step the
sampler predicts where the trajectory will land, Tweedie's denoiser
:math:`\\hat x_0 = D(x_t, t) = (x_t + \\sigma_t^2 s(x_t, t))/\\alpha_t`, and, only if that
prediction falls inside some ball, pushes the state out:

.. math::

    \\Delta(\\hat x_0) = \\sum_{k=1}^K \\operatorname{ReLU}\\Big(\\frac{r}{\\|\\hat x_0 - z_k\\|}
        - 1\\Big)\\,(\\hat x_0 - z_k), \\qquad x_t \\leftarrow x_t + \\lambda\\,\\Delta(\\hat x_0).

For a single ball containing :math:`\\hat x_0`, :math:`\\hat x_0 + \\Delta` is the radial projection
of :math:`\\hat x_0` onto the sphere of radius :math:`r` around :math:`z_k` (the smallest move that
leaves the ball); outside every ball the term is exactly zero, hence *sparse*. The
over-compensation :math:`\\lambda` (1.6 in the paper) makes up for the fact that moving the state
:math:`x_t` by :math:`\\Delta` moves the prediction :math:`\\hat x_0` by only
:math:`J\\Delta`, :math:`J = \\partial\\hat x_0/\\partial x_t`: close to the data
:math:`J \\approx I/\\alpha_t \\approx I` and the step lands the prediction at distance
:math:`r + (\\lambda - 1)(r - \\|\\hat x_0 - z_k\\|)` (past the sphere), while early in sampling
:math:`J` is much smaller than :math:`I` (the prediction is an average over many data points), so
the term fires again at the next steps until the prediction has left the shield.

Two reference sets:

* **static**: a fixed protected set (``protected``, possibly 10^5 to 10^6 points, scanned in
  chunks of ``chunk_size`` so that memory stays :math:`O(n\\cdot\\text{chunk})`);
* **dynamic**: the predictions :math:`\\hat x_0` of the *other* members of the batch (self
  excluded), plus an optional bank of earlier batches' samples passed as ``protected``
  (:func:`sample_batches` keeps that bank across batches).

:func:`repellency_hook` returns a ``hook(x, t) -> (x, SpellInfo)`` for the sampler driver
(:func:`otdiff.diffusion.run_sampler`, through :func:`otdiff.diffusion.euler_maruyama` or
:func:`otdiff.diffusion.ddim`), which runs it after every step: the samplers are not copied. ``radius`` and ``strength`` are dynamic (a slider move never
recompiles; inside the caller's ``jit`` a negative value raises at run time); ``mode`` and
``chunk_size`` are static. The hook records, at every step, which
trajectories were corrected (:class:`SpellInfo`). The static set is searched in two loops: a
screen whose cost per block is one matrix product, then the exact terms on the candidate pairs
only, in rounds (a ``jax.lax.while_loop``: under ``jax.vmap`` every batch runs as many rounds as
the one with the most candidates).

Taught in: book/diffusion/03_spell.ipynb
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import (
    SHARD_AXIS,
    check_choice,
    check_int,
    check_mask,
    check_mesh,
    check_points,
    check_same_dim,
    guard_finite,
    guard_in_range,
    guard_nonnegative,
    unguarded,
)
from otdiff.diffusion.losses import denoiser
from otdiff.diffusion.processes import AbstractGaussianProcess
from otdiff.diffusion.samplers import SampleResult, ddim, euler_maruyama

__all__ = [
    "MODES",
    "SAMPLERS",
    "DEFAULT_STRENGTH",
    "Repellency",
    "SpellInfo",
    "repellency",
    "batch_repellency",
    "repellency_hook",
    "sample",
    "sample_batches",
    "nearest_distance",
    "in_shield",
]

MODES = ("static", "dynamic")
SAMPLERS = ("sde", "ddim")
DEFAULT_STRENGTH = 1.6  # the paper's over-compensation lambda

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 matmuls in the distances
_CANDIDATES = 16  # pairs per row recomputed exactly in a block of the dynamic (batch) term
_SLACK = 1e-5  # a generous bound on the relative float32 error of the screen's distances
_SUB = 16  # references per sub-block: the screen ranks sub-blocks, the exact pass gathers them
_ROUND = 512  # candidate (row, sub-block) pairs gathered in one round of the exact pass


class Repellency(NamedTuple):
    """The repellency of a batch of predictions against a reference set.

    Attributes:
        delta: ``(n, d)`` the sparse correction :math:`\\Delta(\\hat x_0)` (zero outside the shield).
        n_active: ``(n,)`` the number of balls that contain each prediction.
        nearest: ``(n,)`` the distance to the nearest reference (``inf`` if there is none).

    Taught in: book/diffusion/03_spell.ipynb.
    """

    delta: jax.Array
    n_active: jax.Array
    nearest: jax.Array


class SpellInfo(NamedTuple):
    """What :func:`repellency_hook` records at each step (stacked over steps by the sampler).

    Attributes:
        t: the time of the step's prediction (the sampler's ``t_next``).
        active: ``(n,)`` whether the term fired for each trajectory.
        active_fraction: the fraction of trajectories where it fired.
        correction_norm: ``(n,)`` the norm of the applied correction :math:`\\lambda\\|\\Delta\\|`.
        nearest: ``(n,)`` the distance of each prediction to its nearest reference.

    Taught in: book/diffusion/03_spell.ipynb.
    """

    t: jax.Array
    active: jax.Array
    active_fraction: jax.Array
    correction_norm: jax.Array
    nearest: jax.Array


# --------------------------------------------------------------------------------------------
# checks (outside jit; shapes are static, so they also work while tracing)


def _check_chunk(chunk_size) -> int | None:
    return None if chunk_size is None else check_int(chunk_size, "chunk_size", low=1)


def _check_protected(protected, name: str = "protected", *, dim: int | None = None) -> jax.Array:
    """A non-empty ``(K, d)`` protected set (with ``d == dim`` when ``dim`` is given)."""
    try:
        arr = jnp.asarray(protected)
    except Exception:
        raise TypeError(f"{name} must be an array of shape (K, d).") from None
    if arr.ndim == 2 and arr.shape[0] == 0:
        raise ValueError(
            f"{name} is empty (shape {arr.shape}): give at least one protected point, or use "
            "mode='dynamic' with protected=None to repel only the other members of the batch."
        )
    arr = check_points(arr, name)
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have dimension dim={dim}, got shape {arr.shape}.")
    return arr


def _guard_radius_strength(radius, strength) -> tuple:
    """Checked now (concrete) or guarded (traced): both finite and >= 0."""
    return guard_nonnegative(radius, "radius"), guard_nonnegative(strength, "strength")


# --------------------------------------------------------------------------------------------
# the kernel


def _terms(diff, valid, radius):
    """The ReLU weights and the correction from exact differences ``diff = x - z`` (n, m, d)."""
    d2 = jnp.sum(diff * diff, axis=-1)
    dist = jnp.sqrt(d2)
    inside = valid & (dist < radius) & (d2 > 0.0)
    # ReLU(r / |x - z| - 1): positive exactly when |x - z| < r.
    w = jnp.where(inside, radius / jnp.where(inside, dist, 1.0) - 1.0, 0.0)
    delta = jnp.einsum("nm,nmd->nd", w, diff, precision=_HIGHEST)
    count = jnp.sum(inside, axis=1, dtype=jnp.int32)
    return delta, count, jnp.min(jnp.where(valid, d2, jnp.inf), axis=1)


def _block_terms(x, x_sq, z, valid, radius):
    """Repellency of ``x`` (n, d) against one block of references ``z`` (C, d).

    ``valid`` is ``(C,)`` or ``(n, C)``. A screen computes the squared distances as
    ``|x|^2 + |z|^2 - 2 x.z`` (one matrix product). That formula loses precision when a distance
    is small next to the norms, so the pairs that may lie inside a ball are recomputed exactly
    from their differences ``x - z``: the ``_CANDIDATES`` nearest references of each row (a
    gather, cheap) when no row has more candidates than that, the whole block otherwise (rare:
    many overlapping balls). A block with no candidate only updates the nearest distances.
    """
    n, c = x.shape[0], z.shape[0]
    valid = jnp.broadcast_to(valid, (n, c))
    z_sq = jnp.sum(z * z, axis=-1)
    norms = x_sq[:, None] + z_sq[None, :]
    d2_fast = jnp.maximum(norms - 2.0 * jnp.matmul(x, z.T, precision=_HIGHEST), 0.0)
    # a generous bound on the float32 error of the screen (relative 1e-5 of the norms)
    maybe = valid & (d2_fast < radius**2 + _SLACK * norms + 1e-30)
    n_maybe = jnp.sum(maybe, axis=1)
    m = min(_CANDIDATES, c)

    def screened_out(_):
        count = jnp.zeros((n,), jnp.int32)
        return jnp.zeros_like(x), count, jnp.min(jnp.where(valid, d2_fast, jnp.inf), axis=1)

    def candidates(_):
        _, idx = jax.lax.top_k(jnp.where(valid, -d2_fast, -jnp.inf), m)  # (n, m)
        diff = x[:, None, :] - z[idx]
        return _terms(diff, jnp.take_along_axis(valid, idx, axis=1), radius)

    def whole_block(_):
        return _terms(x[:, None, :] - z[None, :, :], valid, radius)

    branch = jnp.where(jnp.any(maybe), jnp.where(jnp.max(n_maybe) <= m, 1, 2), 0)
    return jax.lax.switch(branch, (screened_out, candidates, whole_block), None)


def _scan_references(x, protected, mask, radius, chunk_size):
    """Sum of the terms over ``protected`` (K, d), screened ``chunk_size`` references at a time.

    Two loops, neither with a per-block gather, sort or branch:

    1. **Screen** (``lax.scan`` over blocks of ``chunk_size`` references, each read in place from
       ``protected``: the set is not copied or augmented, and padded only when ``K`` is not a
       multiple of ``_SUB``): one matrix product per block gives the keys :math:`s_k = \\|z_k\\|^2 - 2 x\\cdot z_k` (the squared distance less
       the row's :math:`\\|x\\|^2`; the block's norms are computed from the block itself, masked
       references have :math:`\\|z\\|^2 = \\infty`), reduced to their minimum over sub-blocks of
       ``_SUB`` consecutive references. A pair may lie inside a ball only if its key is below
       :math:`r^2 - \\|x\\|^2` plus a slack for the float error of the screen (relative
       ``_SLACK`` of :math:`\\|x\\|^2` plus the block's largest :math:`\\|z\\|^2`); the block
       records, per row, which sub-blocks may (one bit each) and the nearest distance among
       those that may not. When ``chunk_size`` does not divide ``K``, the last block ends at
       ``K`` and skips the sub-blocks that the one before it already screened.
    2. **Exact terms on the candidates** (``lax.while_loop``, ``_ROUND`` candidate (row,
       sub-block) pairs per round, as many rounds as there are candidates, each found by a
       binary search in the running count of the screen's bits, computed once): the candidates'
       references are gathered and their terms computed from the differences ``x - z``, so
       that the precision the screen loses never reaches the correction, the counts or the
       nearest distance. This work grows with the number of candidates, not with ``K``.
    """
    n, d = x.shape
    k = protected.shape[0]
    sub = min(_SUB, k if chunk_size is None else chunk_size, k)
    z = protected.astype(x.dtype)
    valid = jnp.ones((k,), bool) if mask is None else mask
    pad = -k % sub
    if pad:  # a whole number of sub-blocks (a copy of the set, only for such sizes)
        z = jnp.pad(z, ((0, pad), (0, 0)))
        valid = jnp.pad(valid, (0, pad))  # padded rows are never valid
    k_padded = k + pad
    chunk = k_padded if chunk_size is None else min(-(-chunk_size // sub) * sub, k_padded)
    n_chunks = -(-k_padded // chunk)
    n_sub = chunk // sub
    # block i reads [start_i, start_i + chunk): i * chunk, except the last, moved back to end at
    # the set's end (its sub-blocks below (n_chunks - 1) * chunk are the block before's)
    starts = jnp.minimum(jnp.arange(n_chunks, dtype=jnp.int32) * chunk, k_padded - chunk)
    x_sq = jnp.sum(x * x, axis=-1)
    x_m2 = -2.0 * x  # exact: a power of two
    sub_offsets = jnp.arange(n_sub, dtype=jnp.int32) * sub

    def screen(far, i):
        start = starts[i]
        zc = jax.lax.dynamic_slice_in_dim(z, start, chunk)
        vc = jax.lax.dynamic_slice_in_dim(valid, start, chunk)
        z_sq = jnp.where(vc, jnp.sum(zc * zc, axis=-1), jnp.inf)
        key = jnp.matmul(x_m2, zc.T, precision=_HIGHEST) + z_sq[None, :]  # (n, chunk)
        sub_min = jnp.min(key.reshape(n, n_sub, sub), axis=-1)
        fresh = start + sub_offsets >= i * chunk  # not screened by the block before
        sub_min = jnp.where(fresh[None, :], sub_min, jnp.inf)
        # below this key a pair may lie inside a ball: the slack bounds the screen's float error
        z_sq_max = jnp.max(jnp.where(vc, z_sq, 0.0))
        bound = (radius**2 - x_sq + _SLACK * (x_sq + z_sq_max) + 1e-30)[:, None]
        maybe = sub_min < bound
        return jnp.minimum(far, jnp.min(jnp.where(maybe, jnp.inf, sub_min), axis=1)), maybe

    blocks = jnp.arange(n_chunks, dtype=jnp.int32)
    far, maybe = jax.lax.scan(screen, jnp.full((n,), jnp.inf, x.dtype), blocks)
    min_d2 = jnp.maximum(far + x_sq, 0.0)  # the screen's nearest distance, outside the candidates

    maybe = maybe.reshape(-1)  # (n_chunks * n * n_sub,): block, row, sub-block
    # rank[p]: the candidates at positions <= p; the q-th candidate (from 0) is at the first
    # position whose rank exceeds q, found by binary search: one pass over the bits in all
    rank = jnp.cumsum(maybe, dtype=jnp.int32)
    n_candidates = rank[-1]
    per_round = min(_ROUND, maybe.shape[0])
    z_sub = z.reshape(k_padded // sub, sub, d)
    valid_sub = valid.reshape(k_padded // sub, sub)
    first_sub = starts // sub  # each block's first sub-block

    def candidate_round(state):
        j, (delta, count, low) = state
        q = j * per_round + jnp.arange(per_round, dtype=jnp.int32)
        taken = q < n_candidates
        flat = jnp.where(taken, jnp.searchsorted(rank, q, side="right", method="scan"), 0)
        block, rest = jnp.divmod(flat, n * n_sub)
        row, sub_block = jnp.divmod(rest, n_sub)
        ids = first_sub[block] + sub_block
        ok = taken[:, None] & valid_sub[ids]  # (per_round, sub)
        diff = x[row][:, None, :] - z_sub[ids]  # (per_round, sub, d)
        d2 = jnp.sum(diff * diff, axis=-1)
        dist = jnp.sqrt(d2)
        inside = ok & (dist < radius) & (d2 > 0.0)
        w = jnp.where(inside, radius / jnp.where(inside, dist, 1.0) - 1.0, 0.0)
        move = jnp.einsum("ps,psd->pd", w, diff, precision=_HIGHEST)
        carry = (
            delta.at[row].add(move),
            count.at[row].add(jnp.sum(inside, axis=1, dtype=jnp.int32)),
            low.at[row].min(jnp.min(jnp.where(ok, d2, jnp.inf), axis=1)),
        )
        return j + 1, carry

    rounds = -(-n_candidates // per_round)
    zero = (jnp.zeros_like(x), jnp.zeros((n,), jnp.int32), jnp.full((n,), jnp.inf, x.dtype))
    _, (delta, count, low) = jax.lax.while_loop(
        lambda state: state[0] < rounds, candidate_round, (0, zero)
    )
    return delta, count, jnp.minimum(min_d2, low)


def _within_batch(x, radius):
    """Terms against the other members of the batch (the diagonal, self, excluded)."""
    n = x.shape[0]
    valid = ~jnp.eye(n, dtype=bool)
    return _block_terms(x, jnp.sum(x * x, axis=-1), x, valid, radius)


def _repel(x, protected, mask, radius, *, mode, chunk_size):
    radius = jnp.asarray(radius, x.dtype)
    n = x.shape[0]
    delta = jnp.zeros_like(x)
    count = jnp.zeros((n,), jnp.int32)
    min_d2 = jnp.full((n,), jnp.inf, x.dtype)
    if protected is not None:
        delta, count, min_d2 = _scan_references(x, protected, mask, radius, chunk_size)
    if mode == "dynamic":
        db, cb, mb = _within_batch(x, radius)
        delta, count, min_d2 = delta + db, count + cb, jnp.minimum(min_d2, mb)
    return Repellency(delta, count, jnp.sqrt(min_d2))


_repel_jit = jax.jit(_repel, static_argnames=("mode", "chunk_size"))


def _repel_sharded(x, protected, mask, radius, *, chunk_size, mesh):
    """:func:`_repel` (static mode) with the protected set split across ``mesh``'s devices.

    Each device scans its own part of the set (``jax.shard_map``); the corrections and counts
    are summed across devices (``psum``), the nearest distances reduced by ``pmin``: the same
    sums as on one device, in another order.
    """
    from jax.sharding import PartitionSpec as P

    radius = jnp.asarray(radius, x.dtype)
    valid = jnp.ones((protected.shape[0],), bool) if mask is None else mask

    def local(x, z, v, r):
        delta, count, min_d2 = _scan_references(x, z, v, r, chunk_size)
        return (
            jax.lax.psum(delta, SHARD_AXIS),
            jax.lax.psum(count, SHARD_AXIS),
            jax.lax.pmin(min_d2, SHARD_AXIS),
        )

    split = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(SHARD_AXIS), P(SHARD_AXIS), P()),
        out_specs=(P(), P(), P()),
        check_vma=False,  # the scan's branches mix per-device and replicated values
    )
    delta, count, min_d2 = split(x, protected, valid, radius)
    return Repellency(delta, count, jnp.sqrt(min_d2))


_repel_sharded_jit = jax.jit(_repel_sharded, static_argnames=("chunk_size", "mesh"))


def repellency(
    x0_hat: jax.Array,
    protected: jax.Array,
    radius: float,
    *,
    protected_mask: jax.Array | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Repellency:
    """SPELL's sparse correction of predictions ``x0_hat`` against a static ``protected`` set.

    .. math::

        \\Delta(\\hat x_0) = \\sum_{k} \\operatorname{ReLU}\\Big(\\frac{r}{\\|\\hat x_0 - z_k\\|}
            - 1\\Big)(\\hat x_0 - z_k).

    Zero unless ``x0_hat`` lies strictly inside some ball of radius ``r``; with one ball active,
    ``x0_hat + delta`` lies exactly on the sphere of radius ``r`` around its centre
    :cite:`kirchhof2024spell`. The sum over references is a plain sum over chunks, so any
    ``chunk_size`` gives the same result up to the order of float additions.
    Each block is screened with one matrix product; the pairs that may be active (those in a
    sub-block of 16 references whose screened distance may be below the radius) are then
    recomputed exactly from their differences, however many there are.

    Args:
        x0_hat: ``(n, d)`` predicted samples.
        protected: ``(K, d)`` the protected points (``K >= 1``).
        radius: the shield radius ``r >= 0`` (dynamic).
        protected_mask: optional ``(K,)`` booleans; ``False`` rows are ignored (a bank being
            filled).
        chunk_size: references per block (static); ``None`` processes all ``K`` at once. The
            screen's products take ``O(n * chunk_size)`` memory whatever ``K``; its record takes
            five bytes (a bit stored as a byte and a 32-bit running count) per row and sub-block
            of ``_SUB`` references, ``O(n * K / _SUB)``.
        mesh: ``None`` (one device), or a ``jax.sharding.Mesh`` with a ``"data"`` axis
            (:func:`otdiff.train.data_parallel_mesh`): the protected set (and its mask) is split
            across the devices (``NamedSharding(mesh, P("data"))``), each scans its part in
            blocks of ``chunk_size``, and the corrections are summed across devices; the
            predictions are replicated. ``K`` must be a multiple of the number of devices.
            Static.

    Returns:
        A :class:`Repellency` (``delta``, ``n_active``, ``nearest``).

    Raises:
        ValueError: for a negative radius, an empty protected set, mismatched dimensions or a
            ``chunk_size`` below one.

    Taught in: book/diffusion/03_spell.ipynb
    """
    x0_hat = check_points(x0_hat, "x0_hat")
    protected = _check_protected(protected)
    check_same_dim(x0_hat, protected, ("x0_hat", "protected"))
    radius = guard_nonnegative(radius, "radius")
    mask = check_mask(protected_mask, protected.shape[0], "protected_mask")
    chunk_size = _check_chunk(chunk_size)
    mesh = check_mesh(mesh, protected.shape[0], "the number of protected points K")
    if mesh is None:
        return _repel_jit(x0_hat, protected, mask, radius, mode="static", chunk_size=chunk_size)
    return _repel_sharded_jit(x0_hat, protected, mask, radius, chunk_size=chunk_size, mesh=mesh)


def batch_repellency(x0_hat: jax.Array, radius: float) -> Repellency:
    """The dynamic (intra-batch) term: each prediction against the *other* predictions of the batch.

    Args:
        x0_hat: ``(n, d)`` predicted samples of one batch.
        radius: the shield radius ``r >= 0`` (dynamic).

    Taught in: book/diffusion/03_spell.ipynb
    """
    x0_hat = check_points(x0_hat, "x0_hat")
    radius = guard_nonnegative(radius, "radius")
    return _repel_jit(x0_hat, None, None, radius, mode="dynamic", chunk_size=None)


# --------------------------------------------------------------------------------------------
# the hook for the core samplers


def repellency_hook(
    score: Callable,
    process: AbstractGaussianProcess,
    protected: jax.Array | None = None,
    *,
    radius: float,
    strength: float = DEFAULT_STRENGTH,
    mode: str = "static",
    chunk_size: int | None = None,
    protected_mask: jax.Array | None = None,
) -> Callable:
    """A sampler hook that applies SPELL after every reverse step (Algorithm 1 of the paper).

    .. math::

        \\hat x_0 = D(x_{t'}, t'),\\qquad x_{t'} \\leftarrow x_{t'} + \\lambda\\,\\Delta(\\hat x_0),

    with :math:`D` Tweedie's denoiser at the post-step time :math:`t'` and :math:`\\Delta` as in
    :func:`repellency`. The correction is added to the *state*: it moves the prediction by about
    :math:`\\lambda J\\Delta` with :math:`J = \\partial\\hat x_0/\\partial x_{t'}` (close to
    :math:`I/\\alpha_{t'}` near the data, much smaller early on), so the prediction lands exactly on
    the sphere of radius ``r`` only when ``strength * J = I``; early on the term re-fires at later
    steps until the prediction has left the shield, and at the last step (:math:`\\alpha \\approx
    1`) it overshoots the sphere by the factor ``strength``.

    Args:
        score: per-point score ``score(x, t)``.
        process: the forward :class:`~otdiff.diffusion.AbstractGaussianProcess`.
        protected: ``(K, d)`` the protected set. Required in ``"static"`` mode; optional in
            ``"dynamic"`` mode (earlier batches' samples).
        radius: the shield radius ``r >= 0`` (dynamic; ``0`` switches the term off).
        strength: the over-compensation :math:`\\lambda \\ge 0` (dynamic; the paper uses 1.6).
        mode: ``"static"`` (repel from ``protected``) or ``"dynamic"`` (also repel each
            trajectory from the other members of its batch); static.
        chunk_size: references per block of the protected-set scan (static, ``None``: one block).
        protected_mask: optional ``(K,)`` booleans marking the valid rows of ``protected``.

    Returns:
        ``hook(x, t) -> (x, SpellInfo)`` for :func:`otdiff.diffusion.run_sampler` (or
        :func:`otdiff.diffusion.euler_maruyama`, :func:`otdiff.diffusion.ddim`; their ``aux`` is
        then a :class:`SpellInfo` stacked over the steps).

    Taught in: book/diffusion/03_spell.ipynb
    """
    check_choice(mode, "mode", MODES)
    radius, strength = _guard_radius_strength(radius, strength)
    chunk_size = _check_chunk(chunk_size)
    if protected is None:
        if mode == "static":
            raise ValueError(
                "protected is required in mode='static' (use mode='dynamic' to repel the batch)."
            )
        mask = None
    else:
        protected = _check_protected(protected)
        mask = check_mask(protected_mask, protected.shape[0], "protected_mask")
    denoise = jax.vmap(denoiser(score, process), in_axes=(0, None))

    def hook(x: jax.Array, t: jax.Array):
        if protected is not None:
            check_same_dim(x, protected, ("the sampler's state", "protected"))
        x0_hat = denoise(x, t)
        rep = _repel(x0_hat, protected, mask, radius, mode=mode, chunk_size=chunk_size)
        correction = jnp.asarray(strength, x.dtype) * rep.delta
        active = rep.n_active > 0
        info = SpellInfo(
            t=jnp.asarray(t),
            active=active,
            active_fraction=jnp.mean(active.astype(x.dtype)),
            correction_norm=jnp.linalg.norm(correction, axis=-1),
            nearest=rep.nearest,
        )
        return x + correction, info

    return hook


def _run_sampler(sampler, key, score, process, x_init, n_steps, hook, t_min, save_trajectory):
    run = euler_maruyama if sampler == "sde" else ddim
    return run(
        key, score, process, x_init, n_steps, t_min=t_min, hook=hook,
        save_trajectory=save_trajectory,
    )  # fmt: skip


def _check_sampler(sampler: str) -> str:
    return check_choice(sampler, "sampler (the samplers with a step hook)", SAMPLERS)


@eqx.filter_jit
@unguarded()
def _sample(
    key,
    score,
    process,
    protected,
    mask,
    radius,
    strength,
    n_samples,
    dim,
    mode,
    chunk_size,
    sampler,
    n_steps,
    t_min,
    save_trajectory,
):
    k_init, k_run = jax.random.split(key)
    x_init = process.prior_sample(k_init, (n_samples, dim))
    hook = repellency_hook(
        score,
        process,
        protected,
        radius=radius,
        strength=strength,
        mode=mode,
        chunk_size=chunk_size,
        protected_mask=mask,
    )
    return _run_sampler(
        sampler, k_run, score, process, x_init, n_steps, hook, t_min, save_trajectory
    )


def sample(
    key: jax.Array,
    score: Callable,
    process: AbstractGaussianProcess,
    n_samples: int,
    dim: int,
    *,
    radius: float,
    protected: jax.Array | None = None,
    strength: float = DEFAULT_STRENGTH,
    mode: str = "static",
    chunk_size: int | None = None,
    protected_mask: jax.Array | None = None,
    sampler: str = "sde",
    n_steps: int = 100,
    t_min: float = 1e-3,
    save_trajectory: bool = False,
) -> SampleResult:
    """Draw ``n_samples`` with SPELL: the core sampler with :func:`repellency_hook` (jitted).

    In ``"dynamic"`` mode the ``n_samples`` form one batch that repels itself. Floats
    (``radius``, ``strength``, ``t_min``) are dynamic; sizes, ``mode``, ``chunk_size`` and
    ``sampler`` static. Arguments as :func:`repellency_hook` and
    :func:`otdiff.diffusion.euler_maruyama`; ``sampler`` is ``"sde"`` or ``"ddim"``.

    Returns:
        A :class:`~otdiff.diffusion.SampleResult` whose ``aux`` is a :class:`SpellInfo` stacked
        over the ``n_steps`` steps.

    Taught in: book/diffusion/03_spell.ipynb
    """
    n_samples = check_int(n_samples, "n_samples", low=1)
    dim = check_int(dim, "dim", low=1)
    n_steps = check_int(n_steps, "n_steps", low=1)
    t_min = guard_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    check_choice(mode, "mode", MODES)
    sampler = _check_sampler(sampler)
    radius, strength = _guard_radius_strength(radius, strength)
    chunk_size = _check_chunk(chunk_size)
    mask = None
    if protected is not None:
        protected = _check_protected(protected, dim=dim)
        mask = check_mask(protected_mask, protected.shape[0], "protected_mask")
    elif mode == "static":
        raise ValueError("protected is required in mode='static'.")
    dtype = jnp.result_type(float)
    out = _sample(
        key,
        score,
        process,
        protected,
        mask,
        jnp.asarray(radius, dtype),
        jnp.asarray(strength, dtype),
        n_samples,
        dim,
        mode,
        chunk_size,
        sampler,
        n_steps,
        jnp.asarray(t_min, dtype),
        bool(save_trajectory),
    )
    return out._replace(x=guard_finite(out.x, "the sampler's samples"))


@eqx.filter_jit
@unguarded()
def _sample_batches(
    key,
    score,
    process,
    protected,
    radius,
    strength,
    n_batches,
    batch_size,
    dim,
    chunk_size,
    sampler,
    n_steps,
    t_min,
):
    n_bank = n_batches * batch_size
    offset = 0 if protected is None else protected.shape[0]
    dtype = radius.dtype
    bank = jnp.zeros((offset + n_bank, dim), dtype)
    valid = jnp.zeros((offset + n_bank,), bool)
    if protected is not None:
        bank = bank.at[:offset].set(protected.astype(dtype))
        valid = valid.at[:offset].set(True)

    def one_batch(carry, inputs):
        bank, valid = carry
        key, i = inputs
        k_init, k_run = jax.random.split(key)
        x_init = process.prior_sample(k_init, (batch_size, dim))
        hook = repellency_hook(
            score,
            process,
            bank,
            radius=radius,
            strength=strength,
            mode="dynamic",
            chunk_size=chunk_size,
            protected_mask=valid,
        )
        res = _run_sampler(sampler, k_run, score, process, x_init, n_steps, hook, t_min, False)
        start = offset + i * batch_size
        bank = jax.lax.dynamic_update_slice(bank, res.x, (start, 0))
        valid = jax.lax.dynamic_update_slice(valid, jnp.ones((batch_size,), bool), (start,))
        return (bank, valid), (res.x, res.aux)

    keys = jax.random.split(key, n_batches)
    _, (xs, aux) = jax.lax.scan(one_batch, (bank, valid), (keys, jnp.arange(n_batches)))
    return SampleResult(xs, None, aux)


def sample_batches(
    key: jax.Array,
    score: Callable,
    process: AbstractGaussianProcess,
    n_batches: int,
    batch_size: int,
    dim: int,
    *,
    radius: float,
    strength: float = DEFAULT_STRENGTH,
    protected: jax.Array | None = None,
    chunk_size: int | None = None,
    sampler: str = "sde",
    n_steps: int = 100,
    t_min: float = 1e-3,
) -> SampleResult:
    """Dynamic SPELL over consecutive batches: each batch repels itself *and* all earlier batches.

    The batches run one after the other in a ``jax.lax.scan``; a bank of fixed size
    ``n_batches * batch_size`` (plus the optional static ``protected`` set) collects the final
    samples, with a mask marking the rows already filled, so nothing recompiles as it grows.

    Args:
        n_batches, batch_size, dim: sizes (static).
        radius, strength: as :func:`repellency_hook` (dynamic).
        protected: an optional static protected set ``(K, dim)`` added to the bank.
        chunk_size: references per block of the bank scan (static).

    Returns:
        A :class:`~otdiff.diffusion.SampleResult` with ``x`` of shape
        ``(n_batches, batch_size, dim)`` and ``aux`` a :class:`SpellInfo` with leading axes
        ``(n_batches, n_steps)``.

    Taught in: book/diffusion/03_spell.ipynb
    """
    n_batches = check_int(n_batches, "n_batches", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    dim = check_int(dim, "dim", low=1)
    n_steps = check_int(n_steps, "n_steps", low=1)
    t_min = guard_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    sampler = _check_sampler(sampler)
    radius, strength = _guard_radius_strength(radius, strength)
    chunk_size = _check_chunk(chunk_size)
    if protected is not None:
        protected = _check_protected(protected, dim=dim)
    dtype = jnp.result_type(float)
    out = _sample_batches(
        key,
        score,
        process,
        protected,
        jnp.asarray(radius, dtype),
        jnp.asarray(strength, dtype),
        n_batches,
        batch_size,
        dim,
        chunk_size,
        sampler,
        n_steps,
        jnp.asarray(t_min, dtype),
    )
    return out._replace(x=guard_finite(out.x, "the sampler's samples"))


# --------------------------------------------------------------------------------------------
# metrics


def nearest_distance(
    x: jax.Array, protected: jax.Array, *, chunk_size: int | None = None
) -> jax.Array:
    """Distance from each point of ``x`` ``(n, d)`` to its nearest protected point, chunked.

    Taught in: book/diffusion/03_spell.ipynb
    """
    x = check_points(x, "x")
    protected = _check_protected(protected)
    check_same_dim(x, protected, ("x", "protected"))
    chunk_size = _check_chunk(chunk_size)
    return _repel_jit(x, protected, None, 0.0, mode="static", chunk_size=chunk_size).nearest


def in_shield(
    x: jax.Array, protected: jax.Array, radius: float, *, chunk_size: int | None = None
) -> jax.Array:
    """Whether each point of ``x`` lies within ``radius`` of some protected point (``(n,)`` bool).

    Taught in: book/diffusion/03_spell.ipynb
    """
    radius = guard_nonnegative(radius, "radius")
    return nearest_distance(x, protected, chunk_size=chunk_size) <= radius
