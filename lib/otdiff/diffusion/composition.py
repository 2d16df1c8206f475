"""Composition of diffusion models: products, weights, and background-relative combinations.

Scores and energies of noised densities combine linearly: for densities :math:`p_i` with scores
:math:`s_i = \\nabla\\log p_i` and energies :math:`E_i = -\\log p_i`,

* the **weighted product** :math:`\\prod_i p_i^{w_i}` has score :math:`\\sum_i w_i s_i` and energy
  :math:`\\sum_i w_i E_i` (one density with weight :math:`\\beta` is the tempered density
  :math:`p^\\beta`);
* the **background-relative** combination of :cite:`bradley2025projective` composes conditionals
  against a background :math:`p_b` (for instance the unconditional model):

  .. math::

      p_b\\prod_i\\Big(\\frac{p_i}{p_b}\\Big)^{w_i},\\qquad
      s = s_b + \\sum_i w_i\\,(s_i - s_b),\\qquad E = E_b + \\sum_i w_i\\,(E_i - E_b);

  with :math:`w_i = 1` and the unconditional model as background it is **Bayes composition**,
  :math:`p(x\\mid c_1, \\dots, c_n) \\propto p(x)\\prod_i p(x\\mid c_i)/p(x)` for conditions
  independent given :math:`x`.

:class:`Composition` evaluates any of them for per-point functions ``f(x, t)`` (scores or
energies alike), with dynamic weights (a slider over them never recompiles).

A combination of the *noised* scores is the score of the combination of the noised densities at
every :math:`t`, which is not the noised version of the combination of the clean densities:
sampling the reverse SDE with it is biased (the energy chapter measures how much, and corrects it
with SMC, :mod:`otdiff.diffusion.energy`; when it is exact is the subject of the projective
composition chapter).

Taught in: book/diffusion/02_energy_smc.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_nonnegative_weights

__all__ = ["Composition", "compose", "product", "bayes"]

Fn = Callable[[jax.Array, jax.Array], jax.Array]


class Composition(eqx.Module):
    """:math:`f(x, t) = b(x, t) + \\sum_i w_i\\,(f_i(x, t) - b(x, t))`, or :math:`\\sum_i w_i f_i`
    without a background.

    Build one with :func:`compose`, :func:`product` or :func:`bayes` (they check the weights).

    Attributes:
        fns: the per-point functions :math:`f_i(x, t)` (scores or energies; modules or functions).
        weights: ``(n,)`` weights :math:`w_i` (dynamic).
        background: the background :math:`b(x, t)`, or ``None``.
    """

    fns: tuple
    weights: jax.Array
    background: Fn | None = None

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        values = jnp.stack([f(x, t) for f in self.fns])
        w = self.weights.reshape(self.weights.shape + (1,) * (values.ndim - 1))
        if self.background is None:
            return jnp.sum(w * values, axis=0)
        b = self.background(x, t)
        return b + jnp.sum(w * (values - b), axis=0)


def compose(fns: Fn | Sequence[Fn], weights=None, *, background: Fn | None = None) -> Composition:
    """Combine per-point scores or energies with weights, optionally relative to a background.

    Args:
        fns: one function ``f(x, t)`` or a non-empty sequence of them.
        weights: ``(n,)`` weights, finite, >= 0 and not all zero (default: all ones).
        background: a function of the same kind as ``fns`` (the background :math:`b`), or
            ``None`` for the plain weighted sum.

    Raises:
        TypeError: if ``fns`` or ``background`` are not callables.
        ValueError: for weights of the wrong shape, negative, non-finite or all zero.
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
    """The weighted product :math:`\\prod_i p_i^{w_i}`: :math:`\\sum_i w_i f_i` (scores or energies)."""
    return compose(fns, weights)


def bayes(conditionals: Fn | Sequence[Fn], unconditional: Fn) -> Composition:
    """Bayes composition :math:`p\\prod_i p(\\cdot\\mid c_i)/p`: :math:`f_u + \\sum_i (f_i - f_u)`."""
    return compose(conditionals, None, background=unconditional)
