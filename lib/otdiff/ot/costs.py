r"""Learnable translation-invariant costs :math:`c(x, y) = h(x - y)` as ott-jax ``TICost`` classes.

Two families, both registered JAX pytrees whose parameters are the pytree's children (so that
:func:`otdiff.ot.solve` takes them as dynamic arrays and gradients flow to them):

- :class:`Mahalanobis`: :math:`h(z) = \tfrac12 z^\top M z` with :math:`M = LL^\top + \alpha I`,
  whose Legendre transform is closed-form, :math:`h^*(v) = \tfrac12 v^\top M^{-1} v`;
- :class:`PowerCost`: :math:`h(z) = \tfrac1p (z^\top Q z)^{p/2}`, a fixed cost that is not
  quadratic for :math:`p \ne 2`, with the closed-form :math:`h^*(v) = \tfrac1q (v^\top Q^{-1}
  v)^{q/2}`, :math:`1/p + 1/q = 1` (the true cost of :func:`otdiff.data.power_problem`);
- :class:`NeuralCost`: :math:`h_\theta(z) = \tfrac12\big(\mathrm{ICNN}_\theta(z) +
  \mathrm{ICNN}_\theta(-z)\big) + \tfrac\alpha2\|z\|^2`, a symmetric, :math:`\alpha`-strongly convex
  function built on an input-convex network :class:`ICNN` :cite:`amos2017input`, as in
  :cite:`howard2024monge`. Its :math:`\nabla h^*` is the minimiser of a convex problem, solved by
  optimistix's BFGS and differentiated by the implicit function theorem.

Both expose :meth:`grad_h_legendre` (:math:`\nabla h^*`, the inverse of :math:`\nabla h`), which
:mod:`otdiff.ot.monge` uses for the Gangbo--McCann map :math:`T(x) = x - \nabla h^*(\nabla f(x))`,
and ``h_legendre`` and ``twist_operator`` for ott-jax's own dual potentials.

Taught in: book/ot/04_monge.ipynb.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from ott.geometry import costs

from otdiff import _checks

__all__ = [
    "Mahalanobis",
    "PowerCost",
    "ICNN",
    "NeuralCost",
    "grad_h_legendre",
    "cosine_similarity",
]


def _check_alpha(alpha: Any) -> float:
    """The strong-convexity constant: a finite number > 0 (static)."""
    return float(_checks.check_positive(alpha, "alpha"))


# --------------------------------------------------------------------------------------------
# Mahalanobis
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Mahalanobis(costs.TICost):
    r"""The learnable Mahalanobis cost :math:`h(z) = \tfrac12 z^\top M z`, :math:`M = LL^\top + \alpha I`.

    The factor :math:`L` (a ``(d, d)`` array) is the learnable parameter, the pytree's only
    child; :math:`\alpha > 0` keeps :math:`M` positive definite whatever :math:`L` is (static,
    aux data). The gradient :math:`\nabla h(z) = Mz` is a bijection with inverse
    :math:`\nabla h^*(v) = M^{-1}v`, and

    .. math::

        h^*(v) = \sup_z \langle z, v\rangle - h(z) = \tfrac12 v^\top M^{-1} v.

    With :math:`L = \sqrt{1 - \alpha}\, I` (:meth:`euclidean`) the cost is
    :math:`\tfrac12\|x - y\|^2`, half ott-jax's ``SqEuclidean``.

    Args:
        factor: :math:`L`, shape ``(d, d)``, finite.
        alpha: :math:`\alpha`, a finite number > 0 (default 0.01). Static.

    Taught in: book/ot/04_monge.ipynb.
    """

    def __init__(self, factor: Any, alpha: float = 0.01):
        super().__init__()
        self.factor = factor
        self.alpha = alpha

    @classmethod
    def create(cls, factor: Any, alpha: float = 0.01) -> Mahalanobis:
        """A checked constructor: ``factor`` a finite square matrix, ``alpha`` > 0."""
        factor = _checks.check_finite(jnp.asarray(factor), "factor")
        if factor.ndim != 2 or factor.shape[0] != factor.shape[1] or factor.shape[0] < 1:
            raise ValueError(f"factor must be a square (d, d) matrix, got shape {factor.shape}.")
        if not jnp.issubdtype(factor.dtype, jnp.floating):
            factor = factor.astype(jnp.float32)
        return cls(factor, _check_alpha(alpha))

    @classmethod
    def euclidean(cls, d: int, alpha: float = 0.01, dtype: Any = jnp.float32) -> Mahalanobis:
        r"""The cost :math:`\tfrac12\|z\|^2` (:math:`M = I`) in dimension ``d``: a start for learning."""
        d = _checks.check_int(d, "d", low=1)
        alpha = _check_alpha(alpha)
        if alpha >= 1.0:
            raise ValueError(f"alpha must be < 1 for M = I to be reachable, got {alpha}.")
        return cls(jnp.sqrt(1.0 - alpha) * jnp.eye(d, dtype=dtype), alpha)

    @classmethod
    def from_matrix(cls, matrix: Any, alpha: float = 0.01) -> Mahalanobis:
        r"""The cost with a given :math:`M` (symmetric, :math:`M - \alpha I` positive definite).

        An eager constructor: it checks positive definiteness on the host (a finite Cholesky
        factor), so it cannot be called inside ``jit`` on a traced ``matrix``. Inside ``jit``
        build the cost from its factor, ``Mahalanobis(jnp.linalg.cholesky(matrix - alpha * I),
        alpha)``, and check the matrix before tracing.
        """
        matrix = _checks.check_finite(jnp.asarray(matrix, dtype=float), "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be a square (d, d) matrix, got shape {matrix.shape}.")
        alpha = _check_alpha(alpha)
        shifted = matrix - alpha * jnp.eye(matrix.shape[0], dtype=matrix.dtype)
        factor = jnp.linalg.cholesky(0.5 * (shifted + shifted.T))
        if not bool(jnp.all(jnp.isfinite(factor))):
            raise ValueError(
                f"matrix - alpha * I must be symmetric positive definite (alpha = {alpha})."
            )
        return cls(factor, alpha)

    @property
    def matrix(self) -> jax.Array:
        r""":math:`M = LL^\top + \alpha I`."""
        d = self.factor.shape[-1]
        return self.factor @ self.factor.T + self.alpha * jnp.eye(d, dtype=self.factor.dtype)

    def h(self, z: jax.Array) -> jax.Array:
        r""":math:`h(z) = \tfrac12 z^\top M z`."""
        return 0.5 * z @ (self.matrix @ z)

    def h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`h^*(v) = \tfrac12 v^\top M^{-1} v`."""
        return 0.5 * v @ self.grad_h_legendre(v)

    def grad_h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`\nabla h^*(v) = M^{-1} v` (a linear solve; differentiable in :math:`L`)."""
        return jnp.linalg.solve(self.matrix, v)

    def twist_operator(self, vec: jax.Array, dual_vec: jax.Array, variable: bool) -> jax.Array:
        """ott-jax's twist: ``vec - grad_h_legendre(dual_vec)`` (``h`` is even, both variables)."""
        if variable:
            return vec + self.grad_h_legendre(-dual_vec)
        return vec - self.grad_h_legendre(dual_vec)

    def tree_flatten(self):  # noqa: D102
        return (self.factor,), (self.alpha,)

    @classmethod
    def tree_unflatten(cls, aux_data, children):  # noqa: D102
        return cls(children[0], *aux_data)


# --------------------------------------------------------------------------------------------
# A power of a Mahalanobis norm
# --------------------------------------------------------------------------------------------


def _safe_power(s: jax.Array, power: float) -> jax.Array:
    r""":math:`s^{\text{power}}` for :math:`s \ge 0`, set to 0 at :math:`s = 0` with finite gradients there."""
    positive = s > 0
    return jnp.where(positive, jnp.where(positive, s, 1.0) ** power, 0.0)


@jax.tree_util.register_pytree_node_class
class PowerCost(costs.TICost):
    r"""The cost :math:`h(z) = \tfrac1p\,(z^\top Q z)^{p/2}`, a power :math:`p > 1` of a Mahalanobis norm.

    For :math:`p > 1` and :math:`Q` symmetric positive definite, :math:`h` is strictly convex
    and superlinear, so the twist condition holds. With :math:`q = p / (p - 1)` its Legendre
    transform is closed-form (:math:`h = \phi(\|Q^{1/2}z\|)` with :math:`\phi(r) = r^p/p`,
    whose conjugate is :math:`r^q/q`):

    .. math::

        \nabla h(z) = (z^\top Q z)^{p/2 - 1} Q z, \qquad
        h^*(v) = \tfrac1q\,(v^\top Q^{-1} v)^{q/2}, \qquad
        \nabla h^*(v) = (v^\top Q^{-1} v)^{q/2 - 1} Q^{-1} v.

    :math:`p = 2` gives the Mahalanobis cost :math:`\tfrac12 z^\top Q z`; for :math:`p \ne 2`
    the cost is not quadratic, and no Mahalanobis cost has its optimal maps. It is the true cost
    of :func:`otdiff.data.power_problem`. :math:`Q` is the pytree's child, :math:`p` static
    (aux data); values and gradients at :math:`z = 0` are their limits (0).

    Args:
        matrix: :math:`Q`, symmetric positive definite, shape ``(d, d)``.
        p: the exponent, a finite number > 1 (static).

    Taught in: book/ot/04_monge.ipynb.
    """

    def __init__(self, matrix: Any, p: float = 4.0 / 3.0):
        super().__init__()
        self.matrix = matrix
        self.p = p

    @classmethod
    def create(cls, matrix: Any, p: float = 4.0 / 3.0) -> PowerCost:
        """A checked constructor: ``matrix`` symmetric positive definite, ``p`` a finite number > 1."""
        matrix = _checks.check_finite(jnp.asarray(matrix, dtype=float), "matrix")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
            raise ValueError(f"matrix must be a square (d, d) matrix, got shape {matrix.shape}.")
        symmetric = bool(jnp.allclose(matrix, matrix.T, rtol=1e-5, atol=1e-6))
        if not symmetric or not bool(jnp.all(jnp.linalg.eigvalsh(matrix) > 0)):
            raise ValueError("matrix must be symmetric positive definite.")
        p = float(_checks.check_finite(jnp.asarray(p, dtype=float), "p"))
        if not p > 1.0:
            raise ValueError(f"p must be > 1 (a strictly convex, superlinear cost), got {p}.")
        return cls(matrix, p)

    @property
    def q(self) -> float:
        r"""The conjugate exponent :math:`q = p / (p - 1)`."""
        return self.p / (self.p - 1.0)

    def h(self, z: jax.Array) -> jax.Array:
        r""":math:`h(z) = \tfrac1p (z^\top Q z)^{p/2}`."""
        return _safe_power(z @ (self.matrix @ z), 0.5 * self.p) / self.p

    def h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`h^*(v) = \tfrac1q (v^\top Q^{-1} v)^{q/2}`."""
        return _safe_power(v @ jnp.linalg.solve(self.matrix, v), 0.5 * self.q) / self.q

    def grad_h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`\nabla h^*(v) = (v^\top Q^{-1} v)^{q/2 - 1} Q^{-1} v` (the inverse of :math:`\nabla h`)."""
        w = jnp.linalg.solve(self.matrix, v)
        return _safe_power(v @ w, 0.5 * self.q - 1.0) * w

    def twist_operator(self, vec: jax.Array, dual_vec: jax.Array, variable: bool) -> jax.Array:
        """ott-jax's twist: ``vec - grad_h_legendre(dual_vec)`` (``h`` is even, both variables)."""
        if variable:
            return vec + self.grad_h_legendre(-dual_vec)
        return vec - self.grad_h_legendre(dual_vec)

    def tree_flatten(self):  # noqa: D102
        return (self.matrix,), (self.p,)

    @classmethod
    def tree_unflatten(cls, aux_data, children):  # noqa: D102
        return cls(children[0], *aux_data)


# --------------------------------------------------------------------------------------------
# An input-convex network and the neural cost
# --------------------------------------------------------------------------------------------


class ICNN(eqx.Module):
    r"""An input-convex neural network :cite:`amos2017input`: a scalar function convex in its input.

    .. math::

        u_1 = \sigma(W_0 z + b_0), \qquad
        u_{k+1} = \sigma\big(\mathrm{softplus}(V_k)\, u_k + W_k z + b_k\big), \qquad
        \mathrm{ICNN}(z) = \mathrm{softplus}(v)^\top u_K + w^\top z,

    with :math:`\sigma` = CELU (convex and non-decreasing). Each :math:`u_{k+1}` is convex in
    :math:`z`: a non-negative combination of convex functions plus an affine one, passed through
    a convex non-decreasing activation. The weights on the hidden path are kept non-negative by
    the softplus (the official code of :cite:`howard2024monge` uses ott-jax's flax ICNN with
    positive weights; this is an Equinox one).

    Args:
        key: a JAX PRNG key (first, never defaulted).
        d: the input dimension (static).
        hidden: the widths of the hidden layers, a tuple of ints >= 1 (static).

    Taught in: book/ot/04_monge.ipynb.
    """

    skips: list
    hiddens: list
    biases: list
    out_hidden: jax.Array
    out_skip: jax.Array

    def __init__(self, key: jax.Array, d: int, hidden: tuple[int, ...] = (32, 32)):
        key = _checks.check_key(key)
        d = _checks.check_int(d, "d", low=1)
        hidden = tuple(_checks.check_int(w, "hidden", low=1) for w in hidden)
        if not hidden:
            raise ValueError("hidden must hold at least one layer width.")
        keys = jax.random.split(key, 2 * len(hidden) + 2)
        self.skips = [
            jax.random.normal(keys[k], (w, d)) / jnp.sqrt(d) for k, w in enumerate(hidden)
        ]
        self.hiddens = [
            jax.random.normal(keys[len(hidden) + k], (w, w_in)) / w_in - 1.0
            for k, (w_in, w) in enumerate(zip(hidden[:-1], hidden[1:], strict=True))
        ]
        self.biases = [jnp.zeros(w) for w in hidden]
        self.out_hidden = jax.random.normal(keys[-2], (hidden[-1],)) / hidden[-1] - 1.0
        self.out_skip = jnp.zeros(d)

    def __call__(self, z: jax.Array) -> jax.Array:
        """The network's value at one point ``z`` of shape ``(d,)``: a scalar."""
        u = jax.nn.celu(self.skips[0] @ z + self.biases[0])
        for v, w, b in zip(self.hiddens, self.skips[1:], self.biases[1:], strict=True):
            u = jax.nn.celu(jax.nn.softplus(v) @ u + w @ z + b)
        return jax.nn.softplus(self.out_hidden) @ u + self.out_skip @ z


@jax.tree_util.register_pytree_node_class
class NeuralCost(costs.TICost):
    r"""The neural cost :math:`h_\theta(z) = \tfrac12(\mathrm{ICNN}_\theta(z) + \mathrm{ICNN}_\theta(-z)) + \tfrac\alpha2\|z\|^2`.

    Symmetric and :math:`\alpha`-strongly convex, so :math:`\nabla h_\theta` is a bijection
    (the twist condition holds) and the Gangbo--McCann map exists :cite:`howard2024monge`. Its
    inverse gradient has no closed form:

    .. math::

        \nabla h_\theta^*(v) = z^\star(v, \theta)
            = \arg\min_z\ h_\theta(z) - \langle z, v\rangle,

    found by optimistix's BFGS from :math:`z = v / (1 + \alpha)`. Its derivatives come from the
    implicit function theorem at the optimum, where :math:`\nabla_z h_\theta(z^\star) = v`:

    .. math::

        \partial_\theta z^\star = -\big[\nabla^2_z h_\theta(z^\star)\big]^{-1}
            \partial_\theta \nabla_z h_\theta(z^\star), \qquad
        \partial_v z^\star = \big[\nabla^2_z h_\theta(z^\star)\big]^{-1}

    (optimistix's ``ImplicitAdjoint``): neither the BFGS iterations nor a stopped gradient
    (ott-jax's ``h_transform`` stops it, and so cannot learn :math:`\theta`).

    The pytree's children are the network's arrays; the rest of the network, :math:`\alpha` and
    the solver's settings are aux data (static). The split is made once, at construction, and
    ``tree_flatten`` never re-partitions: JAX rebuilds a pytree with placeholder leaves (the
    check of a custom VJP's output, as in ott-jax's implicit differentiation through Sinkhorn)
    and flattens it again, and the structure must survive that.

    Args:
        network: an :class:`ICNN` (or any Equinox module mapping ``(d,)`` to a convex scalar).
        alpha: :math:`\alpha`, a finite number > 0 (default 0.01, the official code's). Static.
        rtol, atol: BFGS tolerances (static).
        max_steps: the most BFGS steps per point (static).

    Taught in: book/ot/04_monge.ipynb.
    """

    def __init__(
        self,
        network: Any,
        alpha: float = 0.01,
        rtol: float = 1e-6,
        atol: float = 1e-6,
        max_steps: int = 100,
    ):
        super().__init__()
        # The split into arrays (children) and the rest (aux data) is made once, here, and
        # kept: JAX rebuilds pytrees with placeholder leaves (a custom VJP's check unflattens
        # the primal structure with ``object()`` sentinels and flattens it again), so
        # re-partitioning by ``eqx.is_array`` inside ``tree_flatten`` would change the tree.
        self._params, self._rest = eqx.partition(network, eqx.is_array)
        self.alpha = alpha
        self.rtol, self.atol, self.max_steps = rtol, atol, max_steps

    @property
    def network(self) -> Any:
        """The network (its arrays, the pytree's children, combined with the rest)."""
        return eqx.combine(self._params, self._rest)

    @classmethod
    def create(
        cls,
        key: jax.Array,
        d: int,
        hidden: tuple[int, ...] = (32, 32),
        alpha: float = 0.01,
        max_steps: int = 100,
    ) -> NeuralCost:
        """A checked constructor: a fresh :class:`ICNN` of the given widths."""
        max_steps = _checks.check_int(max_steps, "max_steps", low=1)
        return cls(ICNN(key, d, hidden), _check_alpha(alpha), max_steps=max_steps)

    def h(self, z: jax.Array) -> jax.Array:
        r""":math:`h_\theta(z)`."""
        return _neural_h(self.network, z, self.alpha)

    def grad_h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`\nabla h_\theta^*(v)` by BFGS, with implicit derivatives in :math:`v` and :math:`\theta`."""
        solver = optx.BFGS(rtol=self.rtol, atol=self.atol)
        params, rest = self._params, self._rest
        alpha = self.alpha

        def objective(z, args):
            params, v = args
            return _neural_h(eqx.combine(params, rest), z, alpha) - z @ v

        solution = optx.minimise(
            objective,
            solver,
            v / (1.0 + alpha),
            args=(params, v),
            max_steps=self.max_steps,
            throw=False,
            adjoint=optx.ImplicitAdjoint(),
        )
        return solution.value

    def h_legendre(self, v: jax.Array) -> jax.Array:
        r""":math:`h_\theta^*(v) = \langle z^\star, v\rangle - h_\theta(z^\star)` (Danskin: :math:`z^\star` held fixed)."""
        z = jax.lax.stop_gradient(self.grad_h_legendre(v))
        return z @ v - self.h(z)

    def twist_operator(self, vec: jax.Array, dual_vec: jax.Array, variable: bool) -> jax.Array:
        """ott-jax's twist, through :meth:`grad_h_legendre` (``h`` is even: both variables)."""
        if variable:
            return vec + self.grad_h_legendre(-dual_vec)
        return vec - self.grad_h_legendre(dual_vec)

    def tree_flatten(self):  # noqa: D102
        return (self._params,), (self._rest, self.alpha, self.rtol, self.atol, self.max_steps)

    @classmethod
    def tree_unflatten(cls, aux_data, children):  # noqa: D102
        rest, alpha, rtol, atol, max_steps = aux_data
        cost = object.__new__(cls)
        cost._params, cost._rest = children[0], rest
        cost.alpha, cost.rtol, cost.atol, cost.max_steps = alpha, rtol, atol, max_steps
        return cost


def _neural_h(network, z, alpha):
    return 0.5 * (network(z) + network(-z)) + 0.5 * alpha * (z @ z)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def grad_h_legendre(cost_fn: costs.TICost, v: jax.Array) -> jax.Array:
    r""":math:`\nabla h^*(v)` for a batch ``v`` of shape ``(k, d)``, for any ``TICost``.

    The cost's own ``grad_h_legendre`` when it has one (:class:`Mahalanobis`,
    :class:`NeuralCost`), else the gradient of its ``h_legendre`` (ott-jax's costs); a cost
    with neither raises a ``TypeError``.

    Taught in: book/ot/04_monge.ipynb.
    """
    own = getattr(cost_fn, "grad_h_legendre", None)
    if own is not None:
        return jax.vmap(own)(v)
    if not isinstance(cost_fn, costs.TICost):
        raise TypeError(
            f"cost_fn must be a translation-invariant ott-jax cost (TICost), got "
            f"{type(cost_fn).__name__}."
        )
    if type(cost_fn).h_legendre is costs.TICost.h_legendre:
        raise TypeError(
            f"cost_fn {type(cost_fn).__name__} must implement h_legendre (or grad_h_legendre)."
        )
    return jax.vmap(jax.grad(cost_fn.h_legendre))(v)


def cosine_similarity(a: Any, b: Any) -> jax.Array:
    r"""The cosine :math:`\langle A, B\rangle_F / (\|A\|_F\|B\|_F)` between two matrices.

    A learned cost is identified only up to scale; this compares directions (1: proportional).

    Taught in: book/ot/04_monge.ipynb.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}.")
    return jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
