"""Objects in slots: a family of factorized conditionals with exact scores at every diffusion time.

The test family of the projective composition chapter (:cite:`bradley2025projective`). A point
has ``d`` scalar **slots**, :math:`z \\in \\mathbb R^d`; a slot is empty or holds an object:

.. math::

    q_\\emptyset(z_j) = \\mathcal N(z_j; 0, s^2),\\qquad
    q_\\bullet(z_j) = \\pi\\,\\mathcal N(z_j; a, s^2) + (1 - \\pi)\\,\\mathcal N(z_j; -a, s^2)

(defaults :math:`a = 3`, :math:`s = 0.3`, :math:`\\pi = \\tfrac12`; :math:`\\pi = 1` gives
one-signed objects). For a set of slots :math:`S`, :math:`p_S` puts objects in exactly the slots
of :math:`S`:

.. math::

    p_S(z) = \\prod_{j \\in S} q_\\bullet(z_j)\\prod_{j \\notin S} q_\\emptyset(z_j).

The **background** is :math:`p_b = p_\\emptyset` (every slot empty), the **conditionals** are
:math:`p_i = p_{\\{i\\}}` (one object, in slot :math:`i`) and the **unconditional** law is their
uniform mixture :math:`p_u = \\frac1d\\sum_i p_i` (one object, somewhere). With the blocks
:math:`M_i = \\{i\\}`, :math:`p_b` and the :math:`p_i` are *factorized conditionals*: :math:`p_i`
is :math:`p_b` with the coordinates of :math:`M_i` replaced, which is what makes the composition
of :func:`otdiff.diffusion.composition.compose` with the empty background equal to :math:`p_S`.

The points are observed through an invertible linear **feature map** :math:`x = Az`
(``features``, the identity by default): its columns are the directions in which the slots show.
Every :math:`p_S` is then a Gaussian mixture with :math:`2^{|S|}` components
:math:`\\mathcal N(A\\mu_c, s^2AA^\\top)`, one per choice of signs :math:`\\mu_c`, and so is every
noised marginal under a Gaussian process,
:math:`\\mathcal N(\\alpha_t A\\mu_c,\\ \\alpha_t^2 s^2 AA^\\top + \\sigma_t^2 I)`: the scores are
exact at every :math:`t` (:class:`~otdiff.data.mixtures.GaussianMixture`). An orthogonal
:math:`A` keeps the noise isotropic in slot coordinates, so the noised family stays factorized;
:func:`angled_features` tilts one column towards another, the non-orthogonal case where the
sampler fails although the composition at :math:`t = 0` is right.

Every number of a family (``object_mean``, ``std``, ``plus_prob``, ``features``) is a dynamic
leaf: a family built from a traced angle inside ``jit`` works, and a slider over it never
recompiles. Sets of slots are static (tuples of ints).

Taught in: book/diffusion/04_projective_composition.ipynb
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_finite, check_in_range, check_int, check_positive, is_concrete
from otdiff.data.mixtures import GaussianMixture

__all__ = [
    "MAX_SLOTS",
    "Slots",
    "SlotScore",
    "slots",
    "angled_features",
    "random_rotation",
    "check_slot_set",
    "SIGN_PATTERNS",
]

#: The largest number of slots (a distribution with objects in every slot has 2**d components).
MAX_SLOTS = 10

#: The labels of :meth:`Slots.sign_patterns`, in the order of its integer codes 0..3.
SIGN_PATTERNS = ("++", "+-", "-+", "--")


def check_slot_set(which, n_slots: int, name: str = "slots") -> tuple[int, ...]:
    """A set of slots: distinct integers in ``[0, n_slots)``, returned sorted as a tuple.

    Raises:
        TypeError: if ``which`` is not an iterable of integers.
        ValueError: for a slot out of range, a repeated slot, or more slots than ``n_slots``.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    if isinstance(which, int | np.integer) and not isinstance(which, bool):
        which = (which,)
    if not isinstance(which, Iterable) or isinstance(which, str):
        raise TypeError(f"{name} must be a sequence of slot indices, got {which!r}.")
    items = list(which)
    if len(items) > n_slots:
        raise ValueError(
            f"{name} names {len(items)} slots but the family has only n_slots={n_slots}; "
            f"compose at most {n_slots}."
        )
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise TypeError(f"{name} must hold integer slot indices, got {item!r}.")
        if not 0 <= int(item) < n_slots:
            raise ValueError(f"{name} must hold slot indices in [0, {n_slots - 1}], got {item}.")
        out.append(int(item))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a slot, got {items}.")
    return tuple(sorted(out))


def _as_float(value) -> jax.Array:
    return jnp.asarray(value, dtype=jnp.result_type(float))


class Slots(eqx.Module):
    """The slots family: ``n_slots`` slots, each empty or holding a (signed) object.

    Build one with :func:`slots` (which checks its arguments). See the module docstring for the
    densities.

    Attributes:
        n_slots: the number of slots ``d`` (static).
        object_mean: :math:`a > 0`, where an object sits (at :math:`\\pm a`).
        std: :math:`s > 0`, the spread of an empty slot and of an object.
        plus_prob: :math:`\\pi \\in [0, 1]`, the probability that an object sits at :math:`+a`.
        features: the ``(d, d)`` invertible feature map :math:`A`, :math:`x = Az`.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    n_slots: int = eqx.field(static=True)
    object_mean: jax.Array
    std: jax.Array
    plus_prob: jax.Array
    features: jax.Array

    # -- the laws as Gaussian mixtures -------------------------------------------------------------
    def _components(self, which: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Slot-space means ``(2**k, d)`` and weights ``(2**k,)`` of :math:`p_S`, ``S = which``."""
        d = self.n_slots
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(which))), dtype=float)
        signs = signs.reshape(len(signs), len(which))
        means = np.zeros((len(signs), d))
        means[:, list(which)] = signs  # unit signs; scaled by a below (a may be traced)
        n_plus = (signs > 0).sum(axis=1)
        pi = self.plus_prob
        weights = pi**n_plus * (1.0 - pi) ** (len(which) - n_plus)
        return self.object_mean * jnp.asarray(means), jnp.asarray(weights)

    def _mixture(self, means_z: jax.Array, weights: jax.Array) -> GaussianMixture:
        A = self.features
        cov = self.std**2 * A @ A.T
        covs = jnp.broadcast_to(cov, (means_z.shape[0], *cov.shape))
        return GaussianMixture(means_z @ A.T, covs, weights)

    def conditional(self, which=()) -> GaussianMixture:
        """:math:`p_S` in feature space: objects in exactly the slots ``which`` (a static tuple).

        ``conditional(())`` is the background, ``conditional((i,))`` the conditional
        :math:`p_i`, and ``conditional(S)`` the projective composition of the :math:`p_i`,
        :math:`i \\in S` (what composing with the empty background samples).
        """
        which = check_slot_set(which, self.n_slots, "which")
        return self._mixture(*self._components(which))

    def background(self) -> GaussianMixture:
        """:math:`p_b`: every slot empty (one Gaussian)."""
        return self.conditional(())

    def unconditional(self) -> GaussianMixture:
        """:math:`p_u = \\frac1d\\sum_i p_i`: one object, in a slot chosen uniformly."""
        parts = [self._components((i,)) for i in range(self.n_slots)]
        means = jnp.concatenate([m for m, _ in parts])
        weights = jnp.concatenate([w for _, w in parts]) / self.n_slots
        return self._mixture(means, weights)

    def law(self, which) -> GaussianMixture:
        """A law by name: ``"background"``, ``"unconditional"``, or a tuple of slots."""
        if isinstance(which, str):
            if which == "background":
                return self.background()
            if which == "unconditional":
                return self.unconditional()
            raise ValueError(
                f"which must be 'background', 'unconditional' or a tuple of slots, got {which!r}."
            )
        return self.conditional(which)

    def score(self, process, which=()) -> SlotScore:
        """The exact noised score ``score(x, t)`` of :meth:`law` ``(which)`` under ``process``.

        A :class:`SlotScore` (a module: the family's numbers stay traced under ``jit``).
        """
        m = self.law(which)
        lam, basis = jnp.linalg.eigh(self.std**2 * self.features @ self.features.T)
        return SlotScore(m.means, jnp.log(m.weights), basis, lam, process)

    def mean(self, which=()) -> jax.Array:
        """The exact mean of :meth:`law` ``(which)`` in feature space, shape ``(d,)``.

        :math:`\\mathbb E_{p_S}[x] = A m_S` with :math:`(m_S)_j = (2\\pi - 1)a` for
        :math:`j \\in S` and 0 elsewhere; the unconditional mean is the average over the slots.
        """
        m = self.law(which)
        return jnp.einsum("k,kd->d", m.weights, m.means)

    # -- sampling and reading the slots ----------------------------------------------------------
    def sample(self, key: jax.Array, n: int, which=()) -> jax.Array:
        """``n`` exact samples ``(n, d)`` of :meth:`law` ``(which)`` (``n`` static)."""
        n = check_int(n, "n", low=1)
        return self.law(which).sample(key, n)

    def to_slots(self, x: jax.Array) -> jax.Array:
        """The slot coordinates :math:`z = A^{-1}x` of points ``(..., d)``."""
        return jnp.asarray(x) @ jnp.linalg.inv(self.features).T

    def occupied(self, x: jax.Array, threshold: float | None = None) -> jax.Array:
        """Which slots hold an object, ``(..., d)`` booleans: :math:`|z_j| >` ``threshold``
        (default :math:`a/2`, halfway between an empty slot and an object)."""
        threshold = 0.5 * self.object_mean if threshold is None else threshold
        return jnp.abs(self.to_slots(x)) > threshold

    def count(self, x: jax.Array, threshold: float | None = None) -> jax.Array:
        """The number of objects in each point, ``(...,)`` integers."""
        return jnp.sum(self.occupied(x, threshold), axis=-1)

    def success(self, x: jax.Array, which, threshold: float | None = None) -> jax.Array:
        """``(...,)`` booleans: objects in exactly the slots ``which`` (the composition's goal)."""
        which = check_slot_set(which, self.n_slots, "which")
        target = np.zeros(self.n_slots, dtype=bool)
        target[list(which)] = True
        return jnp.all(self.occupied(x, threshold) == jnp.asarray(target), axis=-1)

    def sign_patterns(self, x: jax.Array, i: int = 0, j: int = 1) -> jax.Array:
        """The signs of slots ``i`` and ``j`` as codes 0..3 for ``++, +-, -+, --``
        (:data:`SIGN_PATTERNS`), ``(...,)`` integers."""
        i = check_int(i, "i", low=0, high=self.n_slots - 1)
        j = check_int(j, "j", low=0, high=self.n_slots - 1)
        z = self.to_slots(x)
        return 2 * (z[..., i] < 0).astype(jnp.int32) + (z[..., j] < 0).astype(jnp.int32)

    def training_data(self, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        """Data to train a conditional model on the background and one-object laws only.

        Each row draws its condition uniformly among "empty" and "an object in slot ``i``"
        (``d + 1`` choices), then a point of that law.

        Returns:
            ``(x, c)``: points ``(n, d)`` and conditions ``(n, d)``, the indicator of the
            targeted slot (all zeros for the background).
        """
        n = check_int(n, "n", low=1)
        k_cond, k_x = jax.random.split(key)
        d = self.n_slots
        label = jax.random.randint(k_cond, (n,), 0, d + 1)  # d: the background
        c = jax.nn.one_hot(label, d + 1)[:, :d]
        z_empty = self.std * jax.random.normal(k_x, (n, d))
        k_sign = jax.random.fold_in(k_x, 1)
        sign = jnp.where(jax.random.uniform(k_sign, (n, 1)) < self.plus_prob, 1.0, -1.0)
        z = z_empty + c * sign * self.object_mean
        return z @ self.features.T, c


class SlotScore(eqx.Module):
    """The exact noised score of a Gaussian mixture whose components share one covariance.

    Every law of the slots family is such a mixture, :math:`\\sum_k w_k\\mathcal N(m_k, C)` with
    :math:`C = s^2AA^\\top = V\\operatorname{diag}(\\lambda)V^\\top`. Its noised marginal under a
    Gaussian process has components :math:`\\mathcal N(\\alpha_t m_k, C_t)`,
    :math:`C_t = V\\operatorname{diag}(\\alpha_t^2\\lambda + \\sigma_t^2)V^\\top`, so in the
    eigenbasis (:math:`y = V^\\top x`, :math:`c_t = \\alpha_t^2\\lambda + \\sigma_t^2`)

    .. math::

        \\nabla\\log p_t(x) = -V\\,\\frac{y - \\sum_k r_k(x)\\,\\alpha_t V^\\top m_k}{c_t},\\qquad
        r_k(x) \\propto w_k\\exp\\Big(-\\tfrac12\\sum_j\\frac{(y - \\alpha_t V^\\top m_k)_j^2}{c_{t,j}}\\Big),

    one eigendecomposition for all times instead of a matrix inverse at every step (the same
    numbers as :func:`otdiff.data.exact_score` of the mixture, to float32 rounding).

    Attributes:
        means: ``(K, d)`` component means :math:`m_k`.
        log_weights: ``(K,)`` log-weights (``-inf`` for a weight of zero).
        basis: the eigenvectors :math:`V` of the shared covariance, ``(d, d)``.
        eigenvalues: its eigenvalues :math:`\\lambda`, ``(d,)``.
        process: the forward Gaussian process.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    means: jax.Array
    log_weights: jax.Array
    basis: jax.Array
    eigenvalues: jax.Array
    process: object

    def _terms(self, x, t):
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        c = alpha**2 * self.eigenvalues + sigma**2
        y = x @ self.basis
        m = alpha * (self.means @ self.basis)  # (K, d)
        logits = self.log_weights - 0.5 * jnp.sum((y - m) ** 2 / c, axis=-1)
        return y, m, c, logits

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The score at one point ``x`` of shape ``(d,)`` and a scalar time ``t``."""
        y, m, c, logits = self._terms(x, t)
        r = jax.nn.softmax(logits)
        return self.basis @ (-(y - r @ m) / c)

    def log_prob(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The exact noised log-density at one point ``x`` and a scalar time ``t``."""
        _, _, c, logits = self._terms(x, t)
        d = c.shape[0]
        return jax.nn.logsumexp(logits) - 0.5 * (jnp.sum(jnp.log(c)) + d * np.log(2 * np.pi))


def slots(
    n_slots: int = 4,
    *,
    object_mean: float = 3.0,
    std: float = 0.3,
    plus_prob: float = 0.5,
    features=None,
) -> Slots:
    """The slots family (module docstring), with its arguments checked.

    Args:
        n_slots: the number of slots ``d`` (static), 1 to :data:`MAX_SLOTS`.
        object_mean: :math:`a > 0`.
        std: :math:`s > 0`.
        plus_prob: :math:`\\pi \\in [0, 1]` (1: objects always at :math:`+a`).
        features: the ``(d, d)`` invertible feature map :math:`A` (default: the identity), e.g.
            :func:`angled_features` or :func:`random_rotation`.

    Raises:
        ValueError: for a bad size, a non-positive scale, ``plus_prob`` outside ``[0, 1]``, or
            features of the wrong shape, non-finite or singular (checked when concrete).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    n_slots = check_int(n_slots, "n_slots", low=1, high=MAX_SLOTS)
    check_positive(object_mean, "object_mean")
    check_positive(std, "std")
    check_in_range(plus_prob, "plus_prob", 0.0, 1.0)
    A = jnp.eye(n_slots) if features is None else _as_float(features)
    if A.shape != (n_slots, n_slots):
        raise ValueError(
            f"features must have shape ({n_slots}, {n_slots}) for n_slots={n_slots}, got {A.shape}."
        )
    if is_concrete(A):
        check_finite(A, "features")
        cond = np.linalg.cond(np.asarray(A, dtype=np.float64))
        if not np.isfinite(cond) or cond > 1e6:
            raise ValueError(
                f"features must be invertible (condition number below 1e6), got {cond:.3g}."
            )
    return Slots(n_slots, _as_float(object_mean), _as_float(std), _as_float(plus_prob), A)


def angled_features(n_slots: int, angle, i: int = 0, j: int = 1) -> jax.Array:
    """The identity with column ``j`` turned to make the angle ``angle`` (radians) with column ``i``.

    .. math:: a_j = \\cos\\theta\\,e_i + \\sin\\theta\\,e_j,

    so slot ``j`` shows along a direction at angle :math:`\\theta` to slot ``i``'s
    (:math:`\\theta = \\pi/2`: the identity, orthogonal). ``angle`` may be traced; keep it in
    ``(0, pi)`` (at 0 or pi the map is singular).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    n_slots = check_int(n_slots, "n_slots", low=2, high=MAX_SLOTS)
    i = check_int(i, "i", low=0, high=n_slots - 1)
    j = check_int(j, "j", low=0, high=n_slots - 1)
    if i == j:
        raise ValueError(f"i and j must be two different slots, got i = j = {i}.")
    check_in_range(angle, "angle", 0.0, float(np.pi), low_open=True, high_open=True)
    angle = _as_float(angle)
    A = jnp.eye(n_slots)
    column = jnp.zeros(n_slots).at[i].set(jnp.cos(angle)).at[j].set(jnp.sin(angle))
    return A.at[:, j].set(column)


def random_rotation(key: jax.Array, n_slots: int) -> jax.Array:
    """A random orthogonal ``(d, d)`` matrix (Haar measure: QR of a Gaussian, signs fixed).

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    n_slots = check_int(n_slots, "n_slots", low=1, high=MAX_SLOTS)
    q, r = jnp.linalg.qr(jax.random.normal(key, (n_slots, n_slots)))
    return q * jnp.sign(jnp.diag(r))
