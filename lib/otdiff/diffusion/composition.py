"""Composition of diffusion models: products, weights, and background-relative combinations.

Scores and energies of noised densities combine linearly: for densities :math:`p_i` with scores
:math:`s_i = \\nabla\\log p_i` and energies :math:`E_i = -\\log p_i`,

* the **weighted product** :math:`\\prod_i p_i^{w_i}` has score :math:`\\sum_i w_i s_i` and energy
  :math:`\\sum_i w_i E_i` (one density with weight :math:`\\beta` is the tempered density
  :math:`p^\\beta`);
* the **composition operator with a background** :math:`p_b` of :cite:`bradley2025projective`
  (their Definition 5.1, with weights) composes conditionals against :math:`p_b`:

  .. math::

      \\mathcal C[\\vec p\\,](x) \\propto p_b(x)\\prod_i\\Big(\\frac{p_i(x)}{p_b(x)}\\Big)^{w_i},\\qquad
      s = s_b + \\sum_i w_i\\,(s_i - s_b),\\qquad E = E_b + \\sum_i w_i\\,(E_i - E_b).

  With :math:`w_i = 1` and the unconditional model as background it is **Bayes composition**,
  :math:`p(x\\mid c_1, \\dots, c_n) \\propto p(x)\\prod_i p(x\\mid c_i)/p(x)` for conditions
  independent given :math:`x` (:func:`bayes`); with one term it is classifier-free guidance,
  :math:`s_u + w(s_c - s_u)` (:func:`guidance`). With a background such that the :math:`p_i` are
  *factorized conditionals* (each :math:`p_i` is :math:`p_b` with the coordinates of its own block
  :math:`M_i` replaced), the operator with unit weights gives
  :math:`p_b(x_{M_b})\\prod_i p_i(x_{M_i})`: every :math:`p_i` shows in its block, a *projective
  composition* (their Theorem 5.3), even where no :math:`p_i` has mass.

:class:`Composition` evaluates any of them for per-point functions ``f(x, t)`` (scores, energies
or log-densities alike), with dynamic weights (a slider over them never recompiles).

A combination of the *noised* scores is the score of the combination of the noised densities at
every :math:`t`, which in general is not the noised version of the combination of the clean
densities: sampling the reverse SDE with it is biased (the energy chapter measures how much, and
corrects it with SMC, :mod:`otdiff.diffusion.energy`). For factorized conditionals in coordinates
where the noise is isotropic (the data's own, or any orthogonal change of them) the noised family
is still factorized, the two agree, and the sampler is exact; the projective composition chapter
shows both cases.

:func:`mean_cosines` and :func:`sample_mean_cosines` compute the heuristic of
:cite:`bradley2025projective` (their Lemma 8.1): under factorized conditionals the differences
:math:`\\mu_i - \\mu_b` of the means lie in disjoint blocks, hence are orthogonal; cosines far from
zero (in some feature space) warn that a composition may fail.

Taught in: book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_finite, check_nonnegative, check_nonnegative_weights, is_concrete

__all__ = [
    "Composition",
    "compose",
    "product",
    "bayes",
    "guidance",
    "mean_cosines",
    "sample_mean_cosines",
]

Fn = Callable[[jax.Array, jax.Array], jax.Array]


def _shape_error(what: str, shape, expected) -> ValueError:
    return ValueError(
        f"{what} returned shape {tuple(shape)}, but the first term returned {tuple(expected)}: "
        "every term (and the background) must be the same kind of function (all scores or all "
        "energies) of the same point."
    )


class Composition(eqx.Module):
    """:math:`f(x, t) = b(x, t) + \\sum_i w_i\\,(f_i(x, t) - b(x, t))`, or :math:`\\sum_i w_i f_i`
    without a background.

    Build one with :func:`compose`, :func:`product`, :func:`bayes` or :func:`guidance` (they check
    the weights). The terms are evaluated at the same ``(x, t)``; their outputs must have one
    shape (checked when traced: a mismatch raises a ``ValueError`` naming the term).

    Attributes:
        fns: the per-point functions :math:`f_i(x, t)` (scores or energies; modules or functions).
        weights: ``(n,)`` weights :math:`w_i` (dynamic).
        background: the background :math:`b(x, t)`, or ``None``.

    Taught in: book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb.
    """

    fns: tuple
    weights: jax.Array
    background: Fn | None = None

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        outputs = [f(x, t) for f in self.fns]
        first = jnp.shape(outputs[0])
        for i, out in enumerate(outputs[1:], start=1):
            if jnp.shape(out) != first:
                raise _shape_error(f"term {i}", jnp.shape(out), first)
        values = jnp.stack(outputs)
        w = self.weights.reshape(self.weights.shape + (1,) * (values.ndim - 1))
        if self.background is None:
            return jnp.sum(w * values, axis=0)
        b = self.background(x, t)
        if jnp.shape(b) != first:
            raise _shape_error("the background", jnp.shape(b), first)
        return b + jnp.sum(w * (values - b), axis=0)


def compose(fns: Fn | Sequence[Fn], weights=None, *, background: Fn | None = None) -> Composition:
    """Combine per-point scores or energies with weights, optionally relative to a background.

    .. math:: f = b + \\sum_i w_i\\,(f_i - b)\\quad\\text{or}\\quad f = \\sum_i w_i f_i .

    Applied to the noised scores at every diffusion time, this is the composition operator of
    :cite:`bradley2025projective` with weights (module docstring).

    Args:
        fns: one function ``f(x, t)`` or a non-empty sequence of them.
        weights: ``(n,)`` weights, finite, >= 0 and not all zero (default: all ones).
        background: a function of the same kind as ``fns`` (the background :math:`b`), or
            ``None`` for the plain weighted sum.

    Raises:
        TypeError: if ``fns`` or ``background`` are not callables.
        ValueError: for weights of the wrong shape, negative, non-finite or all zero.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    fns = (fns,) if callable(fns) else tuple(fns)
    if not fns or not all(callable(f) for f in fns):
        raise TypeError("fns must be a callable or a non-empty sequence of callables.")
    if background is not None and not callable(background):
        raise TypeError(f"background must be a callable f(x, t) or None, got {background!r}.")
    if weights is None:
        weights = jnp.ones((len(fns),))
    return Composition(fns, check_nonnegative_weights(weights, len(fns), "weights"), background)


def product(fns: Fn | Sequence[Fn], weights=None) -> Composition:
    """The weighted product :math:`\\prod_i p_i^{w_i}`: :math:`\\sum_i w_i f_i` (scores or energies).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """
    return compose(fns, weights)


def bayes(conditionals: Fn | Sequence[Fn], unconditional: Fn) -> Composition:
    """Bayes composition :math:`p\\prod_i p(\\cdot\\mid c_i)/p`: :math:`f_u + \\sum_i (f_i - f_u)`.

    Taught in: book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb.
    """
    return compose(conditionals, None, background=unconditional)


def guidance(conditional: Fn, unconditional: Fn, weight=1.0) -> Composition:
    """Classifier-free guidance, the one-term case: :math:`f_u + w\\,(f_c - f_u)`.

    :math:`w = 1` is the conditional model itself, :math:`w > 1` sharpens it (the usual guidance
    scales are between 1 and 10), :math:`w = 0` is the unconditional model.

    Args:
        conditional: the conditional score (or energy) ``f_c(x, t)``.
        unconditional: the unconditional one ``f_u(x, t)``.
        weight: the guidance weight :math:`w`, finite and >= 0 (dynamic).

    Taught in: book/diffusion/02_energy_smc.ipynb, book/diffusion/04_projective_composition.ipynb.
    """
    if not callable(conditional):
        raise TypeError(f"conditional must be a callable f(x, t), got {conditional!r}.")
    check_nonnegative(weight, "weight")
    w = jnp.atleast_1d(jnp.asarray(weight, dtype=jnp.result_type(float)))
    if w.shape != (1,):
        raise ValueError(f"weight must be a scalar, got shape {jnp.shape(weight)}.")
    if not callable(unconditional):
        raise TypeError(f"unconditional must be a callable f(x, t), got {unconditional!r}.")
    return Composition((conditional,), w, unconditional)


# -- the orthogonality heuristic ------------------------------------------------------------------


def mean_cosines(conditional_means, background_mean) -> jax.Array:
    """Cosines between the mean differences :math:`\\mu_i - \\mu_b` (the heuristic of Lemma 8.1).

    .. math:: C_{ij} = \\frac{(\\mu_i - \\mu_b)\\cdot(\\mu_j - \\mu_b)}
        {\\|\\mu_i - \\mu_b\\|\\,\\|\\mu_j - \\mu_b\\|}.

    Under factorized conditionals the differences are supported on disjoint blocks of
    coordinates, so :math:`C = I` :cite:`bradley2025projective`. The converse does not hold
    (orthogonal means do not make a family factorized): a cosine far from zero is a warning, not
    a proof, and zero cosines are no guarantee.

    Args:
        conditional_means: ``(k, d)`` the means :math:`\\mu_i` (in data or feature space), k >= 2.
        background_mean: ``(d,)`` the background's mean :math:`\\mu_b`.

    Returns:
        The ``(k, k)`` matrix of cosines (ones on the diagonal).

    Raises:
        ValueError: for mismatched shapes, non-finite values, or a mean equal to the background's
            (its direction is undefined).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    means = jnp.asarray(conditional_means, dtype=jnp.result_type(float))
    mu_b = jnp.asarray(background_mean, dtype=means.dtype)
    if means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(
            f"conditional_means must have shape (k, d) with k >= 2, got {means.shape}."
        )
    if mu_b.shape != means.shape[1:]:
        raise ValueError(
            f"background_mean must have shape ({means.shape[1]},) to match the means, "
            f"got {mu_b.shape}."
        )
    check_finite(means, "conditional_means")
    check_finite(mu_b, "background_mean")
    diff = means - mu_b
    norms = jnp.linalg.norm(diff, axis=1)
    if is_concrete(norms) and np.any(
        np.asarray(norms) <= 1e-12 * (1 + np.abs(np.asarray(mu_b)).max())
    ):
        bad = np.flatnonzero(np.asarray(norms) <= 1e-12 * (1 + np.abs(np.asarray(mu_b)).max()))
        raise ValueError(
            f"conditional_means {bad.tolist()} equal the background mean: the direction of "
            "mu_i - mu_b is undefined (with symmetric objects, whose mean is zero, use one-signed "
            "ones or a feature space where the means differ)."
        )
    unit = diff / norms[:, None]
    return unit @ unit.T


def sample_mean_cosines(conditional_samples, background_samples, features=None) -> jax.Array:
    """:func:`mean_cosines` of the empirical means of samples (Monte Carlo).

    Args:
        conditional_samples: a sequence of ``k >= 2`` arrays ``(n_i, d)`` (or one array
            ``(k, n, d)``), samples of each :math:`p_i`.
        background_samples: ``(n_b, d)`` samples of the background.
        features: an optional per-point feature map ``phi(x) -> (m,)`` applied before the
            means are taken (the paper uses image embeddings); ``None`` for the points themselves.

    Returns:
        The ``(k, k)`` cosines of :math:`\\bar\\phi_i - \\bar\\phi_b`.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    if isinstance(conditional_samples, jax.Array | np.ndarray):
        groups = list(conditional_samples)
    else:
        groups = list(conditional_samples)
    if len(groups) < 2:
        raise ValueError(f"conditional_samples must hold k >= 2 groups, got {len(groups)}.")
    if features is not None and not callable(features):
        raise TypeError(f"features must be a callable phi(x) or None, got {features!r}.")

    def embed(x, name):
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {x.shape}.")
        return x if features is None else jax.vmap(features)(x)

    means = [jnp.mean(embed(g, f"conditional_samples[{i}]"), axis=0) for i, g in enumerate(groups)]
    if len({m.shape for m in means}) != 1:
        raise ValueError("conditional_samples must all have the same dimension.")
    return mean_cosines(
        jnp.stack(means), jnp.mean(embed(background_samples, "background_samples"), 0)
    )
