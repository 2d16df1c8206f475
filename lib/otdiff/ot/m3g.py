r"""The multi-marginal matching gap (M3G): contrasting :math:`k` views with multi-marginal OT.

:cite:`piran2024m3g` learn representations of objects seen through :math:`k \ge 2` views. A
batch of :math:`n` objects gives :math:`k` embeddings per object, :math:`\mathcal X =
[z^\ell_i] \in \mathbb R^{k \times n \times d}` on the unit sphere. The *circular variance*
of a :math:`k`-tuple,

.. math::

    c_{\mathrm{cv}}(z^1, \dots, z^k) = 1 - \Big\|\frac1k \sum_{\ell} z^\ell\Big\|^2
    = \frac{1}{k^2} \sum_{\ell < \ell'} \|z^\ell - z^{\ell'}\|^2
    \quad (\|z^\ell\| = 1),

is zero exactly when the :math:`k` embeddings coincide, and the cost tensor
:math:`\mathcal C_{i_1 \dots i_k} = c_{\mathrm{cv}}(z^1_{i_1}, \dots, z^k_{i_k})` scores every
way of picking one embedding per view. The ground truth is the *polymatching*
:math:`\mathcal J = \frac1n \sum_i \delta_{(i, \dots, i)}`; the matching gap compares its cost
with the best (entropic) polymatching,

.. math::

    \mathrm{M3G}_\varepsilon(\mathcal X) = F_\varepsilon(\mathcal J)
        - \min_{\mathcal P \in \mathcal U} F_\varepsilon(\mathcal P) \;\ge\; 0, \qquad
    F_\varepsilon(\mathcal P) = \langle \mathcal P, \mathcal C\rangle
        + \varepsilon\,\mathrm{KL}(\mathcal P \,\|\, \otimes_\ell \tfrac1n\mathbf 1),

i.e. :math:`\mathrm{M3G} = \langle \mathcal J, \mathcal C\rangle + \varepsilon (k - 1)\log n
- \mathrm{OT}_{k,\varepsilon}(\mathcal C)`, where :math:`\mathcal U` is the set of tensors
with uniform marginals and :math:`\mathrm{OT}_{k,\varepsilon}` is the value computed by
:func:`otdiff.ot.multimarginal.solve_multimarginal` (for :math:`k = 2`, the matching gap of two views and
:func:`otdiff.ot.solve`'s ``reg_ot_cost``). Since :math:`F_\varepsilon` is linear in
:math:`\mathcal C` for a fixed :math:`\mathcal P`, Danskin's theorem :cite:`danskin1967theory`
(the Fenchel-Young view :cite:`blondel2020fenchelyoung`) gives its gradient without
differentiating the solver,

.. math::

    \nabla_{\mathcal C}\,\mathrm{M3G}_\varepsilon = \mathcal J - \mathcal P^\star_\varepsilon,
    \qquad
    \nabla_{\mathcal X}\,\mathrm{M3G}_\varepsilon = \big[\partial_{\mathcal X}\mathcal C\big]^*
        (\mathcal J - \mathcal P^\star_\varepsilon).

This module has the loss (:func:`matching_gap`, :func:`m3g_loss`, the gradient through
``jax.lax.stop_gradient`` of the potentials), the two multi-view InfoNCE baselines
:cite:`oord2018cpc,tian2020cmc` (all pairs, and one view against the average of the others),
mild augmentations of 8x8 digits, the training of an encoder onto the sphere
(:class:`otdiff.nn.SphereMLP`) with the book's trainer (:func:`otdiff.train.make_step` and
:func:`otdiff.train.run_steps`, vectorised with ``jax.vmap`` over seeds and
:math:`\varepsilon`), an on-disk cache of trained encoders, and the evaluations: linear probe,
:math:`k`-NN, cross-view retrieval.

Taught in: book/ot/05_m3g.ipynb
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ott.experimental import mmsinkhorn as ott_mms
from ott.geometry import costs

from otdiff import _checks, artifacts, nn
from otdiff import config as _config
from otdiff import train as _train
from otdiff.ot import multimarginal

__all__ = [
    "TRAIN_METHODS",
    "M3GOutput",
    "circular_variance",
    "circular_variance_tensor",
    "matching_gap",
    "m3g_core",
    "m3g_loss",
    "infonce",
    "infonce_pairwise",
    "infonce_one_vs_rest",
    "init_encoder",
    "embed",
    "augment",
    "make_views",
    "TrainConfig",
    "TrainResult",
    "train",
    "train_batch",
    "train_cached",
    "EPS_SWEEP",
    "ChapterEncoders",
    "chapter_encoders",
    "Evaluation",
    "linear_probe",
    "knn_accuracy",
    "cross_view_retrieval",
    "evaluate",
]

#: The training losses :func:`train` knows.
TRAIN_METHODS = ("m3g", "infonce_pairwise", "infonce_one_vs_rest")


# --------------------------------------------------------------------------------------------
# The cost and the loss
# --------------------------------------------------------------------------------------------


def circular_variance(z: Any) -> jax.Array:
    r"""The circular variance :math:`1 - \|\frac1k\sum_\ell z^\ell\|^2` of unit vectors.

    Args:
        z: an array ``(..., k, d)``: ``k`` unit vectors per leading index.

    Returns:
        An array of shape ``z.shape[:-2]``, in :math:`[0, 1]` for unit vectors: 0 when the
        :math:`k` vectors coincide, 1 when they sum to zero.

    Taught in: book/ot/05_m3g.ipynb
    """
    z = _checks._as_array(z, "z", "(..., k, d)")
    if z.ndim < 2 or 0 in z.shape[-2:]:
        raise ValueError(f"z must have shape (..., k, d) with k, d >= 1, got shape {z.shape}.")
    _checks.check_finite(z, "z")
    return 1.0 - jnp.sum(jnp.mean(z, axis=-2) ** 2, axis=-1)


def _check_embeddings(embeddings: Any, name: str = "embeddings") -> jax.Array:
    try:
        z = jnp.asarray(embeddings)
    except Exception:
        raise TypeError(
            f"{name} must be an array of shape (k, n, d), got {type(embeddings).__name__}."
        ) from None
    if z.ndim != 3:
        raise ValueError(
            f"{name} must have shape (k, n, d): k views of the same n objects (a batch of equal "
            f"size for every view), got shape {z.shape}."
        )
    k, n, d = z.shape
    if k < 2:
        raise ValueError(f"{name} must hold k >= 2 views, got k = {k}.")
    if n < 1 or d < 1:
        raise ValueError(f"{name} must hold n >= 1 objects of dimension d >= 1, got {z.shape}.")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        z = z.astype(jnp.result_type(float))
    _checks.check_finite(z, name)
    return z


def _stack_views(embeddings: Any) -> Any:
    """A list of ``k`` arrays ``(n_l, d)`` to one ``(k, n, d)`` array, or a clear error."""
    if isinstance(embeddings, list | tuple):
        shapes = [tuple(np.shape(v)) for v in embeddings]
        if len(set(shapes)) > 1:
            raise ValueError(
                "every view must hold the same number of objects with the same dimension "
                f"(one embedding per object and view), got shapes {shapes}."
            )
        return jnp.stack([jnp.asarray(v) for v in embeddings])
    return embeddings


def circular_variance_tensor(
    embeddings: Any, *, max_entries: int = multimarginal.MAX_TENSOR_ENTRIES
) -> jax.Array:
    r"""The cost tensor :math:`\mathcal C_{i_1\dots i_k} = c_{\mathrm{cv}}(z^1_{i_1}, \dots,
    z^k_{i_k})` of ``k`` views of ``n`` unit embeddings, shape ``(n,) * k``.

    Built as :math:`\frac{1}{k^2}\sum_{\ell<\ell'}\|z^\ell_{i_\ell} - z^{\ell'}_{i_{\ell'}}\|^2`
    (:func:`otdiff.ot.multimarginal.cost_tensor` with the squared Euclidean cost and
    ``cost_scale = 1 / k**2``), which equals the circular variance on the unit sphere and, for
    any vectors, :math:`\frac1k\sum_\ell\|z^\ell\|^2 - \|\frac1k\sum_\ell z^\ell\|^2`.

    Args:
        embeddings: an array ``(k, n, d)`` (or a list of ``k`` arrays ``(n, d)``), ``k >= 2``.
        max_entries: refuse (``ValueError``, before allocating) a tensor with more entries.

    Taught in: book/ot/05_m3g.ipynb
    """
    z = _check_embeddings(_stack_views(embeddings))
    k, n, _ = z.shape
    multimarginal.check_tensor_size((n,) * k, max_entries)
    return multimarginal.cost_tensor(z, costs.SqEuclidean(), cost_scale=1.0 / k**2)


class M3GOutput(NamedTuple):
    r"""What :func:`matching_gap` returns.

    Attributes:
        loss: :math:`\mathrm{M3G}_\varepsilon \ge 0`; its gradient with respect to the
            embeddings is Danskin's, :math:`[\partial\mathcal C]^*(\mathcal J - \mathcal P^\star)`.
        ground_truth_cost: :math:`\langle \mathcal J, \mathcal C\rangle`, the mean circular
            variance of the true tuples.
        reg_ot_cost: :math:`\mathrm{OT}_{k,\varepsilon}(\mathcal C)` (KL to the uniform product).
        coupling: the optimal polymatching :math:`\mathcal P^\star_\varepsilon`, ``(n,) * k``.
        n_iterations: MM-Sinkhorn sweeps run.
        converged: whether the marginal error fell below the threshold.
        marginal_error: :math:`\sum_\ell \|m_\ell(\mathcal P) - \frac1n\mathbf 1\|_1`.
        epsilon: the regularisation, in the units of :math:`c_{\mathrm{cv}}`.

    Taught in: book/ot/05_m3g.ipynb.
    """

    loss: jax.Array
    ground_truth_cost: jax.Array
    reg_ot_cost: jax.Array
    coupling: jax.Array
    n_iterations: jax.Array
    converged: jax.Array
    marginal_error: jax.Array
    epsilon: jax.Array


def m3g_core(
    embeddings: jax.Array,
    epsilon: jax.Array,
    threshold: jax.Array,
    *,
    max_iterations: int = 1000,
    inner_iterations: int = 10,
) -> M3GOutput:
    r"""The unchecked, jit-safe core of :func:`matching_gap`; ``loss`` carries Danskin's gradient.

    MM-Sinkhorn (:func:`otdiff.ot.multimarginal.solve_multimarginal_core`) runs on
    ``jax.lax.stop_gradient(embeddings)``, so no gradient is ever traced through its loop. The
    objective is then rebuilt from the stopped potentials and the *live* cost tensor,

    .. math::

        \mathrm{OT} \approx \sum_\ell \langle f^\ell, \tfrac1n\mathbf 1\rangle
        + \varepsilon\Big(1 - \sum \exp\big((\oplus_\ell f^\ell - \mathcal C)/\varepsilon\big)\Big)
        + \varepsilon k \log n,

    whose derivative in :math:`\mathcal C` is the coupling :math:`\mathcal P` of the
    potentials: the gradient of ``loss`` is :math:`[\partial\mathcal C]^*(\mathcal J -
    \mathcal P)`, exact at convergence. By weak duality the rebuilt value is at most the true
    :math:`\mathrm{OT}`, so ``loss`` is never below the true gap: it stays :math:`\ge 0` even
    when the solver stops early.

    Args:
        embeddings: ``(k, n, d)``, unit vectors (not checked).
        epsilon, threshold: dynamic scalars (> 0).
        max_iterations, inner_iterations: static ints (see
            :func:`otdiff.ot.multimarginal.solve_multimarginal`).

    Taught in: book/ot/05_m3g.ipynb
    """
    k, n, _ = embeddings.shape
    dtype = embeddings.dtype
    scale = jnp.asarray(1.0 / k**2, dtype)
    a_s = tuple(jnp.full((n,), 1.0 / n, dtype) for _ in range(k))
    stopped = jax.lax.stop_gradient(embeddings)
    sol = multimarginal.solve_multimarginal_core(
        tuple(stopped),
        a_s,
        epsilon,
        threshold,
        scale,
        costs.SqEuclidean(),
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )
    potentials = tuple(jax.lax.stop_gradient(f) for f in sol.potentials)
    cost = scale * ott_mms.cost_tensor(tuple(embeddings), costs.SqEuclidean())  # live
    coupling = ott_mms.coupling_tensor(potentials, cost, epsilon)
    log_n = jnp.log(jnp.asarray(n, dtype))
    reg_ot = sum(jnp.mean(f) for f in potentials) + epsilon * (1.0 - jnp.sum(coupling))
    reg_ot = reg_ot + epsilon * k * log_n
    ground_truth = jnp.mean(
        jnp.mean(jnp.sum(embeddings**2, -1), 0) - jnp.sum(jnp.mean(embeddings, 0) ** 2, -1)
    )
    loss = ground_truth + epsilon * (k - 1) * log_n - reg_ot
    return M3GOutput(
        loss=loss,
        ground_truth_cost=ground_truth,
        reg_ot_cost=reg_ot,
        coupling=coupling,
        n_iterations=sol.n_iterations,
        converged=sol.converged,
        marginal_error=sol.marginal_error,
        epsilon=jnp.asarray(epsilon),
    )


def m3g_loss(
    embeddings: jax.Array,
    epsilon: Any,
    *,
    threshold: Any = 1e-3,
    max_iterations: int = 1000,
    inner_iterations: int = 10,
) -> jax.Array:
    r"""The scalar :math:`\mathrm{M3G}_\varepsilon` of ``embeddings`` ``(k, n, d)``, for training.

    ``jax.grad`` of it is Danskin's gradient :math:`[\partial\mathcal C]^*(\mathcal J -
    \mathcal P^\star_\varepsilon)` (see :func:`m3g_core`). Unchecked: use it inside a jitted
    training step; :func:`matching_gap` is the checked version.

    Taught in: book/ot/05_m3g.ipynb
    """
    dtype = embeddings.dtype
    return m3g_core(
        embeddings,
        jnp.asarray(epsilon, dtype),
        jnp.asarray(threshold, dtype),
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    ).loss


@functools.partial(jax.jit, static_argnames=("max_iterations", "inner_iterations"))
def _m3g_jit(embeddings, epsilon, threshold, *, max_iterations, inner_iterations):
    return m3g_core(
        embeddings,
        epsilon,
        threshold,
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )


def matching_gap(
    embeddings: Any,
    epsilon: Any,
    *,
    threshold: float = 1e-3,
    max_iterations: int = 1000,
    inner_iterations: int = 10,
    max_entries: int = multimarginal.MAX_TENSOR_ENTRIES,
) -> M3GOutput:
    r"""The multi-marginal matching gap of ``k`` views of ``n`` objects :cite:`piran2024m3g`.

    .. math::

        \mathrm{M3G}_\varepsilon(\mathcal X) = \langle \mathcal J, \mathcal C\rangle
            + \varepsilon (k - 1) \log n - \mathrm{OT}_{k,\varepsilon}(\mathcal C) \ge 0,

    with the circular-variance cost tensor :math:`\mathcal C` of :func:`circular_variance_tensor`,
    the ground-truth polymatching :math:`\mathcal J = \frac1n\sum_i \delta_{(i,\dots,i)}` and
    :math:`\mathrm{OT}_{k,\varepsilon}` from multi-marginal Sinkhorn (ott-jax's ``MMSinkhorn``).
    Equivalently :math:`F_\varepsilon(\mathcal J) - \min_{\mathcal U} F_\varepsilon` with
    :math:`F_\varepsilon(\mathcal P) = \langle\mathcal P, \mathcal C\rangle + \varepsilon\,
    \mathrm{KL}(\mathcal P\|\otimes_\ell\frac1n\mathbf 1)`: it vanishes only when
    :math:`\mathcal J` is itself optimal, which for :math:`\varepsilon > 0` happens only in the
    limit of views that coincide and objects that are far apart. For ``k = 2`` it is the
    matching gap of two views. The gradient of ``loss`` is Danskin's (no backpropagation
    through the solver); ``epsilon`` and ``threshold`` are dynamic.

    Args:
        embeddings: ``(k, n, d)`` (or a list of ``k`` arrays ``(n, d)``): the embeddings of
            ``n`` objects in ``k >= 2`` views, on the unit sphere (for other vectors the cost
            is the variance of each tuple).
        epsilon: the regularisation, a finite number > 0 in the units of the circular variance
            (which lies in :math:`[0, 1]`).
        threshold: the MM-Sinkhorn tolerance on the marginal errors, > 0.
        max_iterations, inner_iterations: MM-Sinkhorn's loop sizes (static).
        max_entries: refuse (``ValueError``, before allocating) an :math:`n^k` tensor with more
            entries.

    Returns:
        An :class:`M3GOutput`.

    Raises:
        ValueError, TypeError: naming the argument and the accepted range (``k < 2``, views of
            different sizes, ``epsilon <= 0``, a tensor too large).

    Taught in: book/ot/05_m3g.ipynb
    """
    z = _check_embeddings(_stack_views(embeddings))
    k, n, _ = z.shape
    multimarginal.check_tensor_size((n,) * k, max_entries)
    _checks.check_positive(epsilon, "epsilon")
    _checks.check_positive(threshold, "threshold")
    max_iterations, inner_iterations = _checks.check_iterations(max_iterations, inner_iterations)
    return _m3g_jit(
        z,
        jnp.asarray(epsilon, z.dtype),
        jnp.asarray(threshold, z.dtype),
        max_iterations=max_iterations,
        inner_iterations=inner_iterations,
    )


# --------------------------------------------------------------------------------------------
# The InfoNCE baselines
# --------------------------------------------------------------------------------------------


def infonce(u: jax.Array, v: jax.Array, temperature: Any) -> jax.Array:
    r"""The symmetric InfoNCE loss :cite:`oord2018cpc` of two views ``(n, d)`` of ``n`` objects.

    .. math::

        \frac{1}{2n}\sum_i \Big[-\log \frac{e^{\langle u_i, v_i\rangle/\tau}}
            {\sum_j e^{\langle u_i, v_j\rangle/\tau}}
          -\log \frac{e^{\langle u_i, v_i\rangle/\tau}}{\sum_j e^{\langle u_j, v_i\rangle/\tau}}\Big],

    the cross-entropy of recognising each object's other view among the ``n`` of the batch, in
    both directions (as in SimCLR's contrastive loss :cite:`chen2020simclr`). Unchecked
    (used inside jitted training steps); ``temperature`` is dynamic.

    Taught in: book/ot/05_m3g.ipynb
    """
    logits = u @ v.T / temperature
    labels = jnp.arange(u.shape[0])
    forward = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    backward = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    return 0.5 * (jnp.mean(forward) + jnp.mean(backward))


def infonce_pairwise(embeddings: jax.Array, temperature: Any) -> jax.Array:
    r"""The mean of :func:`infonce` over the :math:`k(k-1)/2` pairs of views ``(k, n, d)``.

    The "pairwise" multi-view extension of a two-view loss :cite:`tian2020cmc,piran2024m3g`.

    Taught in: book/ot/05_m3g.ipynb
    """
    k = embeddings.shape[0]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return sum(infonce(embeddings[i], embeddings[j], temperature) for i, j in pairs) / len(pairs)


def infonce_one_vs_rest(embeddings: jax.Array, temperature: Any) -> jax.Array:
    r"""The mean over views :math:`\ell` of :func:`infonce` between view :math:`\ell` and the
    normalised average of the other :math:`k - 1` views, ``embeddings`` ``(k, n, d)``.

    The "one vs. average-of-rest" multi-view extension :cite:`piran2024m3g`.

    Taught in: book/ot/05_m3g.ipynb
    """
    k = embeddings.shape[0]
    total = jnp.sum(embeddings, axis=0)
    losses = []
    for ell in range(k):
        rest = total - embeddings[ell]
        rest = rest / jnp.maximum(jnp.linalg.norm(rest, axis=-1, keepdims=True), 1e-12)
        losses.append(infonce(embeddings[ell], rest, temperature))
    return sum(losses) / k


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


@eqx.filter_jit
def embed(encoder: nn.SphereMLP, images: Any) -> jax.Array:
    """The embeddings of images ``(..., in_size)`` by an encoder onto the sphere
    (:class:`otdiff.nn.SphereMLP`): shape ``(..., dim)``, unit vectors (jitted).

    Taught in: book/ot/05_m3g.ipynb
    """
    images = jnp.asarray(images)
    flat = images.reshape(-1, images.shape[-1])
    return jax.vmap(encoder)(flat).reshape(*images.shape[:-1], -1)


def _side(n_pixels: int) -> int:
    side = math.isqrt(n_pixels)
    if side * side != n_pixels:
        raise ValueError(f"images must be flat square images, got {n_pixels} pixels.")
    return side


def augment(key: Any, image: jax.Array, dropout: Any, noise: Any, *, shift: int = 1) -> jax.Array:
    r"""One random view of a flat square image in :math:`[-1, 1]` (background :math:`-1`).

    Three mild perturbations, in this order: a translation by up to ``shift`` pixels in each
    direction (the uncovered border is background), pixel dropout (each pixel set to the
    background with probability ``dropout``) and additive Gaussian noise of standard deviation
    ``noise``. On 8x8 digits heavier settings (a shift of 2, 40% dropout) destroy the signal
    the views share. ``dropout`` and ``noise`` are dynamic; ``shift`` is static. Unchecked
    (called inside jitted code); see :func:`make_views`.

    Taught in: book/ot/05_m3g.ipynb
    """
    side = _side(image.shape[-1])
    k_shift, k_drop, k_noise = jax.random.split(key, 3)
    img = image.reshape(side, side)
    if shift > 0:
        offset = jax.random.randint(k_shift, (2,), -shift, shift + 1)
        padded = jnp.pad(img, shift, constant_values=-1.0)
        img = jax.lax.dynamic_slice(padded, (shift + offset[0], shift + offset[1]), (side, side))
    img = img.reshape(-1)
    keep = jax.random.bernoulli(k_drop, 1.0 - dropout, img.shape)
    img = jnp.where(keep, img, -1.0)
    return img + noise * jax.random.normal(k_noise, img.shape, img.dtype)


@functools.partial(jax.jit, static_argnames=("n_views", "shift"))
def _views(key, images, dropout, noise, *, n_views: int, shift: int):
    keys = jax.random.split(key, (n_views, images.shape[0]))
    one = functools.partial(augment, dropout=dropout, noise=noise, shift=shift)
    return jax.vmap(lambda ks: jax.vmap(one)(ks, images))(keys)


def _check_images(images: Any, name: str = "images") -> jax.Array:
    x = _checks.check_points(images, name)
    _side(x.shape[1])
    return x.astype(jnp.float32) if x.dtype != jnp.float32 else x


def _check_augmentation(dropout: Any, noise: Any, shift: Any, side: int) -> int:
    _checks.check_in_range(dropout, "dropout", 0.0, 1.0, high_open=True)
    _checks.check_nonnegative(noise, "noise")
    return _checks.check_int(shift, "shift", low=0, high=side - 1)


def make_views(
    key: Any,
    images: Any,
    n_views: int,
    *,
    dropout: float = 0.25,
    noise: float = 0.1,
    shift: int = 1,
) -> jax.Array:
    """``n_views`` independent random views (:func:`augment`) of each image: ``(k, n, pixels)``.

    Args:
        key: a JAX PRNG key.
        images: flat square images ``(n, pixels)`` in ``[-1, 1]`` (e.g. the 8x8 digits).
        n_views: ``k``, an int >= 1.
        dropout: the pixel dropout probability, in ``[0, 1)``.
        noise: the noise standard deviation, >= 0.
        shift: the largest translation in pixels, an int in ``[0, side - 1]``. Static.

    Taught in: book/ot/05_m3g.ipynb
    """
    key = _checks.check_key(key)
    x = _check_images(images)
    n_views = _checks.check_int(n_views, "n_views", low=1)
    shift = _check_augmentation(dropout, noise, shift, _side(x.shape[1]))
    return _views(key, x, jnp.float32(dropout), jnp.float32(noise), n_views=n_views, shift=shift)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class TrainConfig(NamedTuple):
    """The settings of :func:`train` (defaults: the chapter's demo run).

    Attributes:
        method: one of :data:`TRAIN_METHODS`: ``"m3g"``, ``"infonce_pairwise"`` or
            ``"infonce_one_vs_rest"``. Static.
        n_views: ``k``, the views per object, an int >= 2. Static.
        batch_size: ``n``, the objects per batch, an int >= 2 (M3G's tensor has ``n**k``
            entries). Static.
        n_steps: the optimiser steps, an int >= 1. Static.
        learning_rate: Adam's step size, > 0.
        epsilon: M3G's regularisation, > 0, in units of the circular variance.
        temperature: InfoNCE's temperature, > 0.
        dropout, noise, shift: the augmentations (see :func:`augment`); ``shift`` static.
        width, depth, dim: the encoder, an :class:`otdiff.nn.SphereMLP` (static).
        threshold: MM-Sinkhorn's tolerance, > 0.
        max_iterations: MM-Sinkhorn's most sweeps per step, a multiple of 10. Static.

    Taught in: book/ot/05_m3g.ipynb.
    """

    method: str = "m3g"
    n_views: int = 3
    batch_size: int = 32
    n_steps: int = 1000
    learning_rate: float = 1e-3
    epsilon: float = 0.03
    temperature: float = 0.1
    dropout: float = 0.25
    noise: float = 0.1
    shift: int = 1
    width: int = 256
    depth: int = 2
    dim: int = 16
    threshold: float = 1e-3
    max_iterations: int = 1000


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
        encoder: the trained encoder, an :class:`otdiff.nn.SphereMLP`.
        losses: the training loss at every step, ``(n_steps,)``.
        iterations: MM-Sinkhorn sweeps at every step (zeros for InfoNCE), ``(n_steps,)``.

    Taught in: book/ot/05_m3g.ipynb.
    """

    encoder: nn.SphereMLP
    losses: Any
    iterations: Any


def _check_config(cfg: Any, n_images: int, side: int) -> TrainConfig:
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be an m3g.TrainConfig, got {type(cfg).__name__}.")
    if cfg.method not in TRAIN_METHODS:
        raise ValueError(f"method must be one of {TRAIN_METHODS}, got {cfg.method!r}.")
    _checks.check_int(cfg.n_views, "n_views", low=2)
    _checks.check_int(cfg.batch_size, "batch_size", low=2, high=n_images)
    _checks.check_int(cfg.n_steps, "n_steps", low=1)
    for name in ("learning_rate", "epsilon", "temperature", "threshold"):
        _checks.check_positive(getattr(cfg, name), name)
    _check_augmentation(cfg.dropout, cfg.noise, cfg.shift, side)
    for name in ("width", "depth", "dim"):
        _checks.check_int(getattr(cfg, name), name, low=1)
    _checks.check_iterations(cfg.max_iterations, 10)
    if cfg.method == "m3g":
        multimarginal.check_tensor_size((cfg.batch_size,) * cfg.n_views)
    return cfg


class _ViewLoss(eqx.Module):
    """``loss(encoder, key, views) -> (value, sweeps)``: one training loss on a batch of views.

    A pytree (its arrays traced), so that :func:`otdiff.train.make_step` can take it and
    ``jax.vmap`` can map it over the (seed, epsilon) pairs of a group.
    """

    method: str = eqx.field(static=True)
    max_iterations: int = eqx.field(static=True)
    epsilon: jax.Array
    temperature: jax.Array
    threshold: jax.Array

    def __call__(self, encoder, key, views):
        z = jax.vmap(jax.vmap(encoder))(views)  # (k, n, dim)
        if self.method == "m3g":
            out = m3g_core(z, self.epsilon, self.threshold, max_iterations=self.max_iterations)
            return out.loss, out.n_iterations
        contrast = infonce_pairwise if self.method == "infonce_pairwise" else infonce_one_vs_rest
        return contrast(z, self.temperature), jnp.zeros((), jnp.int32)


def init_encoder(key: Any, config: TrainConfig, n_pixels: int = 64) -> nn.SphereMLP:
    """The encoder :func:`train` starts from with ``key``: a :class:`otdiff.nn.SphereMLP` from
    ``n_pixels`` to ``config.dim`` with weights drawn from ``fold_in(key, 0)``.

    The untrained baseline of the chapter (the same initial weights as the trained encoders).

    Taught in: book/ot/05_m3g.ipynb
    """
    key = _checks.check_key(key)
    return nn.SphereMLP(
        n_pixels, config.dim, width=config.width, depth=config.depth, key=jax.random.fold_in(key, 0)
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "method",
        "n_views",
        "batch_size",
        "n_steps",
        "shift",
        "width",
        "depth",
        "dim",
        "max_iterations",
    ),
)
def _train_core(
    keys,
    images,
    epsilons,
    temperature,
    learning_rate,
    dropout,
    noise,
    threshold,
    *,
    method,
    n_views,
    batch_size,
    n_steps,
    shift,
    width,
    depth,
    dim,
    max_iterations,
):
    # A group of runs, one per (key, epsilon), vectorised with jax.vmap over the book's trainer:
    # otdiff.train.make_step (Adam, no EMA, the loss's sweep count as its aux) scanned by
    # otdiff.train.run_steps. Every hyperparameter but the sizes is traced.
    n_images, n_pixels = images.shape
    optimizer = optax.adam(learning_rate)

    def sample_views(key, x):  # batch_size images without replacement, n_views views of each
        k_batch, k_views = jax.random.split(key)
        index = jax.random.choice(k_batch, n_images, (batch_size,), replace=False)
        return _views(k_views, x[index], dropout, noise, n_views=n_views, shift=shift)

    def one(key, epsilon):
        encoder = nn.SphereMLP(
            n_pixels, dim, width=width, depth=depth, key=jax.random.fold_in(key, 0)
        )
        params, static = _train.split(encoder)
        loss = _ViewLoss(method, max_iterations, epsilon, temperature, threshold)
        step = _train.make_step(
            loss, optimizer, static=static, sample_batch=sample_views, ema_decay=None,
            has_aux=True,
        )  # fmt: skip
        state = _train.init(params, optimizer, ema=False)
        state, info = _train.run_steps(step, jax.random.fold_in(key, 1), state, images, n_steps)
        return state.params, info["loss"], info["aux"]

    return jax.vmap(one)(keys, epsilons)


def _static_encoder(images: jax.Array, cfg: TrainConfig):
    like = init_encoder(jax.random.key(0), cfg, images.shape[1])
    return _train.split(like)


def train_batch(
    keys: Any,
    images: Any,
    config: TrainConfig,
    *,
    epsilons: Any = None,
    n_parallel: int = 1,
) -> list:
    r"""Train one encoder per key (and per ``epsilon``) in one compiled program.

    The training of :func:`train`, run on groups of ``n_parallel`` (key, ``epsilon``) pairs
    vectorised by ``jax.vmap`` (the last group is padded), one group after the other: every
    group has the same shapes, so one program is compiled whatever the number of keys, and the
    regularisations are dynamic (a new grid does not recompile). On a CPU keep
    ``n_parallel = 1`` (under ``vmap`` MM-Sinkhorn runs, at every step, until the slowest
    member has converged, and the cores are busy anyway); on a GPU vectorise them all.

    Args:
        keys: JAX PRNG keys, a sequence or a key array of shape ``(s,)``.
        images: the training images ``(N, pixels)`` in ``[-1, 1]``.
        config: a :class:`TrainConfig`.
        epsilons: ``None`` (``config.epsilon`` for all) or ``s`` values > 0.
        n_parallel: the runs vectorised together, an int >= 1. Static.

    Returns:
        A list of ``s`` :class:`TrainResult`.

    Taught in: book/ot/05_m3g.ipynb
    """
    x = _check_images(images)
    cfg = _check_config(config, x.shape[0], _side(x.shape[1]))
    if isinstance(keys, jax.Array) and keys.ndim == 0:
        keys = [keys]
    key_list = [_checks.check_key(k, "keys[i]") for k in list(keys)]
    if not key_list:
        raise ValueError("keys must hold at least one key.")
    if epsilons is None:
        eps = np.full(len(key_list), cfg.epsilon, np.float32)
    else:
        eps = np.asarray(epsilons, np.float32).reshape(-1)
        if eps.shape != (len(key_list),):
            raise ValueError(
                f"epsilons must hold one value per key ({len(key_list)}), got shape {eps.shape}."
            )
        if not np.all(np.isfinite(eps) & (eps > 0)):
            raise ValueError(f"epsilons must all be finite numbers > 0, got {eps}.")
    n_parallel = min(_checks.check_int(n_parallel, "n_parallel", low=1), len(key_list))
    n_runs = len(key_list)
    pad = -n_runs % n_parallel
    all_keys = jnp.stack(key_list + key_list[:1] * pad)
    all_eps = np.concatenate([eps, np.repeat(eps[:1], pad)])
    outputs = []
    for start in range(0, n_runs + pad, n_parallel):
        group = slice(start, start + n_parallel)
        outputs.append(
            _train_core(
                all_keys[group],
                x,
                jnp.asarray(all_eps[group]),
                jnp.float32(cfg.temperature),
                jnp.float32(cfg.learning_rate),
                jnp.float32(cfg.dropout),
                jnp.float32(cfg.noise),
                jnp.float32(cfg.threshold),
                method=cfg.method,
                n_views=cfg.n_views,
                batch_size=cfg.batch_size,
                n_steps=cfg.n_steps,
                shift=cfg.shift,
                width=cfg.width,
                depth=cfg.depth,
                dim=cfg.dim,
                max_iterations=cfg.max_iterations,
            )
        )
    params, losses, iters = jax.tree_util.tree_map(
        lambda *parts: jnp.concatenate(parts)[:n_runs], *outputs
    )
    if not np.all(np.isfinite(np.asarray(losses))):
        bad = [i for i in range(n_runs) if not np.all(np.isfinite(np.asarray(losses[i])))]
        raise ValueError(
            f"training diverged (a non-finite loss) for the run(s) {bad}: lower learning_rate "
            "or raise epsilon (M3G) or temperature (InfoNCE)."
        )
    _, static = _static_encoder(x, cfg)
    return [
        TrainResult(
            encoder=eqx.combine(jax.tree_util.tree_map(lambda p, i=i: p[i], params), static),
            losses=np.asarray(losses[i]),
            iterations=np.asarray(iters[i]),
        )
        for i in range(len(key_list))
    ]


def train(key: Any, images: Any, config: TrainConfig | None = None) -> TrainResult:
    r"""Train an encoder onto the sphere on ``k`` augmented views of ``images`` with one loss.

    Each step draws ``batch_size`` images without replacement, makes ``n_views`` random views
    of each (:func:`augment`), embeds them on the sphere and takes one Adam step (constant
    learning rate, no EMA) on the loss: :func:`m3g_loss` (Danskin's gradient, MM-Sinkhorn on the
    :math:`n^k` tensor), :func:`infonce_pairwise` or :func:`infonce_one_vs_rest`. The step is
    :func:`otdiff.train.make_step`, the loop :func:`otdiff.train.run_steps` (one ``jax.lax.scan``
    under ``jit``). Deterministic given ``key``: the initial weights come from ``fold_in(key, 0)``
    (:func:`init_encoder`) and step ``i``'s batch and views from ``fold_in(fold_in(key, 1), i)``.

    Args:
        key: a JAX PRNG key.
        images: the training images ``(N, pixels)`` in ``[-1, 1]`` (flat squares).
        config: a :class:`TrainConfig` (``None``: the defaults).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError, TypeError: naming the setting and its accepted range.

    Taught in: book/ot/05_m3g.ipynb
    """
    config = TrainConfig() if config is None else config
    return train_batch([_checks.check_key(key)], images, config)[0]


def _code() -> list:
    # The code that runs during training, for the fingerprint of the cached encoders.
    return [
        _train_core,
        _ViewLoss,
        _views,
        augment,
        embed,
        init_encoder,
        nn.SphereMLP,
        _train.split,
        _train.init,
        _train.make_step,
        _train.run_steps,
        m3g_core,
        infonce,
        infonce_pairwise,
        infonce_one_vs_rest,
        multimarginal.solve_multimarginal_core,
    ]


def train_cached(
    seeds: Any,
    images: Any,
    config: TrainConfig,
    *,
    epsilons: Any = None,
    cache: str | os.PathLike | None = None,
    n_parallel: int = 1,
    verbose: bool = True,
    storage_dtype: str | None = None,
) -> list:
    r""":func:`train_batch` for the keys ``jax.random.key(seed)``, cached as trained artifacts.

    Each encoder is an artifact of :func:`otdiff.artifacts.cached` named
    ``m3g_<method>_<hash of the settings>`` at its seed: a shipped file (the chapter's demo
    encoders, :func:`chapter_encoders`), else the user cache, else trained. The fingerprint covers
    the settings, the images and the code that trains; files are written atomically with a
    SHA-256 (no pickle) under a lock. Missing encoders are trained together in one program
    (:func:`train_batch`), so a batch of seeds costs one compilation.

    Args:
        seeds: non-negative ints.
        images, config: as in :func:`train_batch`.
        epsilons: ``None`` or one value > 0 per seed.
        cache: the user cache folder (default ``otdiff.artifacts.cache_folder()``).
        n_parallel: see :func:`train_batch`.
        verbose: print a line when training.
        storage_dtype: how a shipped file stores the weights and losses (``None`` as trained,
            ``"float32"`` or ``"float16"``); the user cache keeps them as trained.

    Returns:
        A list of :class:`TrainResult`, one per seed.

    Taught in: book/ot/05_m3g.ipynb
    """
    seeds = [_checks.check_int(s, "seeds[i]", low=0) for s in np.atleast_1d(seeds).tolist()]
    x = _check_images(images)
    cfg = _check_config(config, x.shape[0], _side(x.shape[1]))
    if epsilons is None:
        eps = [float(cfg.epsilon)] * len(seeds)
    else:
        eps = [float(e) for e in np.atleast_1d(epsilons)]
        if len(eps) != len(seeds):
            raise ValueError(f"epsilons must hold one value per seed ({len(seeds)}).")
        for e in eps:
            _checks.check_positive(e, "epsilons[i]")
    like_params, static = _static_encoder(x, cfg)
    like = {
        "params": like_params,
        "losses": jax.ShapeDtypeStruct((cfg.n_steps,), np.float32),
        "iterations": jax.ShapeDtypeStruct((cfg.n_steps,), np.int32),
    }
    images32 = np.asarray(x, np.float32)
    code = _code()

    def setting(e: float) -> TrainConfig:
        return cfg._replace(epsilon=e) if cfg.method == "m3g" else cfg

    def inputs(e: float) -> dict:
        return {"config": setting(e)._asdict(), "images": images32, "code": code}

    def name(e: float) -> str:
        return f"m3g_{cfg.method}_{artifacts.fingerprint(setting(e)._asdict())}"

    found = [
        artifacts.find(name(e), s, inputs(e), like=like, cache=cache)
        for s, e in zip(seeds, eps, strict=True)
    ]
    todo = [i for i, a in enumerate(found) if a is None]
    trained: dict[int, TrainResult] = {}

    def build(i: int):
        def run(progress):
            if not trained:  # the first missing encoder trains every missing one in one program
                if verbose:
                    print(f"m3g: training {len(todo)} {cfg.method} encoder(s)...", flush=True)
                out = train_batch(
                    [jax.random.key(seeds[j]) for j in todo],
                    x,
                    cfg,
                    epsilons=[eps[j] for j in todo],
                    n_parallel=n_parallel,
                )
                trained.update(zip(todo, out, strict=True))
            r = trained[i]
            tree = {
                "params": _train.split(r.encoder)[0],
                "losses": np.asarray(r.losses, np.float32),
                "iterations": np.asarray(r.iterations, np.int32),
            }
            return tree, {"config": setting(eps[i])._asdict()}

        return run

    for i in todo:
        found[i] = artifacts.cached(
            name(eps[i]), seeds[i], inputs(eps[i]), build=build(i), like=like, cache=cache,
            verbose=False, storage_dtype=storage_dtype,
        )  # fmt: skip
    return [
        TrainResult(
            eqx.combine(a.tree["params"], static),
            np.asarray(a.tree["losses"]),
            np.asarray(a.tree["iterations"]),
        )
        for a in found
    ]


class ChapterEncoders(NamedTuple):
    """The trained encoders of the chapter (what :func:`chapter_encoders` returns).

    Attributes:
        configs: the :class:`TrainConfig` of each method of :data:`TRAIN_METHODS`.
        runs: per method, one :class:`TrainResult` per seed of ``seeds``.
        sweep: per value of ``EPS_SWEEP``, one M3G :class:`TrainResult` per seed of
            ``sweep_seeds``.
        explore: the M3G encoder behind the chapter's explorer (the demo setting, first seed).
        seeds, sweep_seeds: the seeds.

    Taught in: book/ot/05_m3g.ipynb.
    """

    configs: dict
    runs: dict
    sweep: dict
    explore: Any
    seeds: list
    sweep_seeds: list


#: The further M3G regularisations of the chapter's epsilon sweep.
EPS_SWEEP = (0.01, 0.1, 0.3)


def chapter_encoders(
    *, scale: str | None = None, n_parallel: int | None = None, verbose: bool = True
) -> ChapterEncoders:
    r"""The encoders the chapter trains, by :func:`train_cached` (shipped for the demo preset).

    Under the preset ``scale`` (default :func:`otdiff.config.active_scale`): the seeds
    ``config.seeds(5)`` (``10`` under ``full``), ``k = 3`` views (``4``), ``n = 32`` digits per
    batch (``48``), ``1000`` Adam steps (``2000``), M3G with ``epsilon = 0.03`` and the two
    InfoNCE baselines with temperature ``0.1`` on the book's digits; the epsilon sweep
    ``EPS_SWEEP`` on the first ``1`` seed (``3``); the explorer's demo-setting M3G encoder.

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        n_parallel: training runs vectorised together (default 1 under demo, 10 under full).
        verbose: print a line when training.

    Returns:
        A :class:`ChapterEncoders`.

    Taught in: book/ot/05_m3g.ipynb
    """
    from otdiff import data

    scale = _config.active_scale() if scale is None else scale
    choose = functools.partial(_config.choose, scale=scale)
    seeds = _config.seeds(choose(demo=5, full=10))
    sweep_seeds = _config.seeds(choose(demo=1, full=3))
    n_parallel = choose(demo=1, full=10) if n_parallel is None else n_parallel
    images = data.load_digits().train_images
    configs = {
        method: TrainConfig(
            method=method,
            n_views=choose(demo=3, full=4),
            batch_size=choose(demo=32, full=48),
            n_steps=choose(demo=1000, full=2000),
            epsilon=0.03,
            temperature=0.1,
        )
        for method in TRAIN_METHODS
    }
    kw = {"n_parallel": n_parallel, "verbose": verbose}
    runs = {m: train_cached(seeds, images, cfg, **kw) for m, cfg in configs.items()}
    sweep = {
        e: train_cached(sweep_seeds, images, configs["m3g"], epsilons=[e] * len(sweep_seeds), **kw)
        for e in EPS_SWEEP
    }
    if configs["m3g"] == TrainConfig():  # the demo setting: the first seed's M3G encoder
        explore = runs["m3g"][0].encoder
    else:
        explore = train_cached(seeds[:1], images, TrainConfig(), verbose=verbose)[0].encoder
    return ChapterEncoders(configs, runs, sweep, explore, seeds, sweep_seeds)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


class Evaluation(NamedTuple):
    """What :func:`evaluate` returns (floats in ``[0, 1]``).

    Attributes:
        linear_probe: test accuracy of a logistic regression on the embeddings.
        knn: test accuracy of the ``n_neighbors`` nearest training embeddings' vote.
        retrieval: cross-view top-1 retrieval accuracy within batches.

    Taught in: book/ot/05_m3g.ipynb.
    """

    linear_probe: float
    knn: float
    retrieval: float


def _check_labelled(z, y, name):
    z = np.asarray(z, np.float64)
    y = np.asarray(y)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(
            f"{name} embeddings must have shape (n, d) with one label each, got {z.shape} and "
            f"{y.shape}."
        )
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} embeddings contain NaN or infinite values.")
    return z, y


def linear_probe(
    train_z: Any, train_y: Any, test_z: Any, test_y: Any, *, regularization: float = 1.0
) -> float:
    """Test accuracy of a multinomial logistic regression fitted on frozen embeddings.

    scikit-learn's ``LogisticRegression`` (L-BFGS, ``C = regularization``, at most 2,000
    iterations) on the embeddings as they are (unit vectors).

    Taught in: book/ot/05_m3g.ipynb
    """
    from sklearn.linear_model import LogisticRegression

    train_z, train_y = _check_labelled(train_z, train_y, "train")
    test_z, test_y = _check_labelled(test_z, test_y, "test")
    _checks.check_positive(regularization, "regularization")
    model = LogisticRegression(C=regularization, max_iter=2000).fit(train_z, train_y)
    return float(model.score(test_z, test_y))


def knn_accuracy(
    train_z: Any, train_y: Any, test_z: Any, test_y: Any, *, n_neighbors: int = 5
) -> float:
    """Test accuracy of the majority vote of the ``n_neighbors`` most similar training embeddings.

    Similarity is the inner product (cosine on the sphere); ties go to the smallest label.

    Taught in: book/ot/05_m3g.ipynb
    """
    train_z, train_y = _check_labelled(train_z, train_y, "train")
    test_z, test_y = _check_labelled(test_z, test_y, "test")
    n_neighbors = _checks.check_int(n_neighbors, "n_neighbors", low=1, high=len(train_y))
    similarity = test_z @ train_z.T
    if n_neighbors < len(train_y):
        nearest = np.argpartition(-similarity, n_neighbors - 1, axis=1)[:, :n_neighbors]
    else:
        nearest = np.broadcast_to(np.arange(len(train_y)), similarity.shape)
    votes = train_y[nearest]
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    counts = np.stack([np.bincount(v, minlength=n_classes) for v in votes])
    return float(np.mean(counts.argmax(axis=1) == test_y))


def cross_view_retrieval(embeddings: Any, *, batch_size: int = 32) -> float:
    r"""Cross-view top-1 retrieval within batches: how often an object's view finds its own
    other view among ``batch_size`` candidates.

    The ``m`` objects are cut into consecutive batches of ``batch_size`` (a remainder is
    dropped). For every ordered pair of views :math:`(\ell, \ell')` and every object :math:`i`
    of a batch, the retrieved object is :math:`\arg\max_j \langle z^\ell_i, z^{\ell'}_j\rangle`;
    the score is the share of :math:`j = i`, averaged over pairs and batches (chance:
    ``1 / batch_size``).

    Args:
        embeddings: ``(k, m, d)``, ``k >= 2`` views of ``m >= batch_size`` objects.
        batch_size: the candidates per query, an int >= 2.

    Taught in: book/ot/05_m3g.ipynb
    """
    z = _check_embeddings(_stack_views(embeddings))
    k, m, d = z.shape
    batch_size = _checks.check_int(batch_size, "batch_size", low=2, high=m)
    n_batches = m // batch_size
    z = np.asarray(z[:, : n_batches * batch_size]).reshape(k, n_batches, batch_size, d)
    scores = []
    for a in range(k):
        for b in range(k):
            if a != b:
                sim = np.einsum("bid,bjd->bij", z[a], z[b])
                scores.append(np.mean(sim.argmax(axis=-1) == np.arange(batch_size)))
    return float(np.mean(scores))


def evaluate(
    key: Any,
    encoder: nn.SphereMLP,
    data: Any,
    *,
    n_views: int = 3,
    batch_size: int = 32,
    n_neighbors: int = 5,
    dropout: float = 0.25,
    noise: float = 0.1,
    shift: int = 1,
) -> Evaluation:
    r"""The three evaluations of an encoder on a labelled train/test split.

    The linear probe and the :math:`k`-NN vote embed the clean images (the probe is trained on
    the training split, scored on the test split); retrieval embeds ``n_views`` random views of
    the test images, made with ``key`` (use one key for every encoder you compare).

    Args:
        key: a JAX PRNG key for the test views.
        encoder: an encoder onto the sphere (:class:`otdiff.nn.SphereMLP`).
        data: an :class:`otdiff.data.DigitsData` (``train_images``, ``train_labels``,
            ``test_images``, ``test_labels``).
        n_views, batch_size: see :func:`cross_view_retrieval`.
        n_neighbors: see :func:`knn_accuracy`.
        dropout, noise, shift: the test views' augmentations (see :func:`augment`).

    Returns:
        An :class:`Evaluation`.

    Taught in: book/ot/05_m3g.ipynb
    """
    if not isinstance(encoder, nn.SphereMLP):
        raise TypeError(f"encoder must be an otdiff.nn.SphereMLP, got {type(encoder).__name__}.")
    n_views = _checks.check_int(n_views, "n_views", low=2)
    train_z = np.asarray(embed(encoder, _check_images(data.train_images, "train_images")))
    test_images = _check_images(data.test_images, "test_images")
    test_z = np.asarray(embed(encoder, test_images))
    views = make_views(key, test_images, n_views, dropout=dropout, noise=noise, shift=shift)
    return Evaluation(
        linear_probe=linear_probe(train_z, data.train_labels, test_z, data.test_labels),
        knn=knn_accuracy(
            train_z, data.train_labels, test_z, data.test_labels, n_neighbors=n_neighbors
        ),
        retrieval=cross_view_retrieval(embed(encoder, views), batch_size=batch_size),
    )
