"""Bilevel training problems for :func:`otdiff.optim.run`: one with a known answer, one on data.

A problem is an Equinox module (a pytree: its arrays are dynamic under ``jit``) with

* ``init_params(key)``: the initial parameters, a pytree of arrays;
* ``sample_batch(key, batch_size)``: a mini-batch (indices drawn with replacement);
* ``main_loss(params, batch)`` and ``aux_loss(params, batch)``: the two mini-batch losses;
* ``evaluate(params)``: a dict of scalar diagnostics on the full data.

:func:`least_squares` builds the known-answer problem: an over-parameterised least-squares main
loss, whose minimisers form an affine subspace, and a quadratic auxiliary loss that picks one
point of it, the bilevel solution, known in closed form. :func:`digits` builds a small MLP
classifier of scikit-learn's 8x8 digits (the book's one split and scaling,
:func:`otdiff.data.load_digits`) with the Lipschitz proxy
:math:`\\log\\prod_l \\|W_l\\|_2` as auxiliary loss, the MNIST experiment of
:cite:`hsieh2024bloop` at a CPU's scale.

Taught in: book/optim/01_bloop.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from otdiff._checks import check_int, check_nonnegative
from otdiff.data.digits import load_digits

__all__ = [
    "LeastSquaresProblem",
    "least_squares",
    "DigitsProblem",
    "digits",
    "mlp_init",
    "mlp_apply",
    "lipschitz_proxy",
    "spectral_norm",
]


def _indices(key: jax.Array, n: int, batch_size: int) -> jax.Array:
    return jax.random.randint(key, (batch_size,), 0, n)


# -- the known-answer problem ----------------------------------------------------------------


class LeastSquaresProblem(eqx.Module):
    """Over-parameterised least squares with a quadratic auxiliary loss (a known answer).

    .. math::

        L_{\\rm main}(\\theta) = \\frac{1}{2n}\\|X\\theta - y\\|^2, \\qquad
        L_{\\rm aux}(\\theta) = \\frac12\\|\\theta - \\theta^\\star\\|^2,

    with :math:`X \\in \\mathbb R^{n\\times d}`, :math:`n < d` and full row rank, so
    :math:`\\arg\\min L_{\\rm main} = \\{\\theta : X\\theta = y\\}` is an affine subspace of dimension
    :math:`d - n`. The bilevel solution is the point of it closest to :math:`\\theta^\\star`,

    .. math::

        \\theta_{\\rm bl} = \\theta^\\star - X^+ (X\\theta^\\star - y),

    and the minimiser of the weighted sum :math:`L_{\\rm main} + \\lambda L_{\\rm aux}` is
    :math:`\\theta_\\lambda = (X^\\top X/n + \\lambda I)^{-1}(X^\\top y/n + \\lambda\\theta^\\star)`
    (:meth:`sum_solution`), which misses the subspace for every :math:`\\lambda > 0`.

    Build it with :func:`least_squares`.

    Attributes:
        X, y: the data, shapes ``(n, d)`` and ``(n,)``.
        theta_star: the auxiliary target :math:`\\theta^\\star`, shape ``(d,)``.
        theta_init: the starting point of training, shape ``(d,)``.
        theta_bilevel: the exact bilevel solution :math:`\\theta_{\\rm bl}`.
        row_basis: an orthonormal basis of the row space of :math:`X`, shape ``(d, n)``: the
            directions in which :math:`L_{\\rm main}` changes.

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """

    X: jax.Array
    y: jax.Array
    theta_star: jax.Array
    theta_init: jax.Array
    theta_bilevel: jax.Array
    row_basis: jax.Array

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def init_params(self, key: jax.Array) -> jax.Array:
        """The fixed starting point ``theta_init`` (``key`` is unused)."""
        del key
        return self.theta_init

    def sample_batch(self, key: jax.Array, batch_size: int) -> jax.Array:
        """``batch_size`` row indices drawn uniformly with replacement."""
        return _indices(key, self.X.shape[0], batch_size)

    def main_loss(self, params: jax.Array, batch: jax.Array | None = None) -> jax.Array:
        """:math:`\\frac{1}{2|B|}\\sum_{i\\in B}(x_i^\\top\\theta - y_i)^2` (all rows if ``batch`` is None)."""
        X, y = (self.X, self.y) if batch is None else (self.X[batch], self.y[batch])
        return 0.5 * jnp.mean((X @ params - y) ** 2)

    def aux_loss(self, params: jax.Array, batch: jax.Array | None = None) -> jax.Array:
        """:math:`\\frac12\\|\\theta - \\theta^\\star\\|^2` (the batch is ignored)."""
        del batch
        return 0.5 * jnp.sum((params - self.theta_star) ** 2)

    def sum_solution(self, lam: float | jax.Array) -> jax.Array:
        """The minimiser :math:`\\theta_\\lambda` of :math:`L_{\\rm main} + \\lambda L_{\\rm aux}`."""
        n, d = self.X.shape
        A = self.X.T @ self.X / n + lam * jnp.eye(d, dtype=self.X.dtype)
        return jnp.linalg.solve(A, self.X.T @ self.y / n + lam * self.theta_star)

    def coordinates(self, params: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(along, off)``: the distances of ``params`` to :math:`\\theta_{\\rm bl}` along the
        solution subspace and to the subspace (null-space and row-space parts of
        :math:`\\theta - \\theta_{\\rm bl}`). Works on a batch of parameters ``(..., d)``."""
        delta = params - self.theta_bilevel
        row = delta @ self.row_basis
        off = jnp.linalg.norm(row, axis=-1)
        along = jnp.sqrt(jnp.maximum(jnp.sum(delta**2, axis=-1) - off**2, 0.0))
        return along, off

    def evaluate(self, params: jax.Array) -> dict[str, jax.Array]:
        """Full main and auxiliary losses, the relative distance
        :math:`\\|\\theta-\\theta_{\\rm bl}\\|/\\|\\theta_{\\rm bl}\\|`, and :meth:`coordinates`."""
        along, off = self.coordinates(params)
        scale = jnp.linalg.norm(self.theta_bilevel)
        distance = jnp.linalg.norm(params - self.theta_bilevel) / scale
        return {
            "main_loss": self.main_loss(params),
            "aux_loss": self.aux_loss(params),
            "distance": distance,
            "along": along,
            "off": off,
        }


def least_squares(
    seed: int = 0,
    *,
    n: int = 256,
    d: int = 300,
    noise: float = 1.0,
    target_scale: float = 2.0,
) -> LeastSquaresProblem:
    """The known-answer bilevel problem of :class:`LeastSquaresProblem`.

    ``X`` has i.i.d. standard normal entries; ``y = X w + noise * z`` for a standard normal
    ``w`` and ``z``; the auxiliary target is ``theta_star = target_scale * u`` for a standard
    normal ``u``; training starts at zero. The bilevel solution is computed in float64 with
    NumPy. All sizes are static (they set shapes).

    Args:
        seed: the NumPy seed of the draws (a non-negative int).
        n: the number of equations (rows), ``1 <= n < d``.
        d: the number of parameters.
        noise: the standard deviation of the label noise (>= 0).
        target_scale: the scale of :math:`\\theta^\\star` (>= 0).

    Raises:
        ValueError/TypeError: sizes that are not integers with ``1 <= n < d``, negative scales.

    Taught in: book/optim/01_bloop.ipynb
    """
    seed = check_int(seed, "seed", low=0)
    d = check_int(d, "d", low=2)
    n = check_int(n, "n", low=1, high=d - 1)
    check_nonnegative(noise, "noise")
    check_nonnegative(target_scale, "target_scale")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + noise * rng.standard_normal(n)
    theta_star = target_scale * rng.standard_normal(d)
    theta_bl = theta_star - np.linalg.lstsq(X, X @ theta_star - y, rcond=None)[0]
    row_basis = np.linalg.svd(X, full_matrices=False)[2].T  # (d, n)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return LeastSquaresProblem(
        X=f32(X),
        y=f32(y),
        theta_star=f32(theta_star),
        theta_init=jnp.zeros(d, jnp.float32),
        theta_bilevel=f32(theta_bl),
        row_basis=f32(row_basis),
    )


# -- the digits experiment -------------------------------------------------------------------


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """A multilayer perceptron as a plain pytree: a list of ``{"w": (in, out), "b": (out,)}``.

    Weights are drawn from :math:`\\mathcal N(0, 2/\\text{fan-in})` (He initialisation for ReLU),
    biases start at zero. A plain list keeps every weight matrix in sight, which the Lipschitz
    proxy needs, and any optax transformation works on it as it is.

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """
    sizes = tuple(check_int(s, "sizes", low=1) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output size, got {sizes}.")
    return _mlp_init(key, sizes)


@partial(jax.jit, static_argnames="sizes")
def _mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a),
            "b": jnp.zeros(b),
        }
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """The logits of the MLP: ReLU between layers, none after the last.

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def lipschitz_proxy(params: list[dict[str, jax.Array]]) -> jax.Array:
    """:math:`\\log \\prod_l \\|W_l\\|_2 = \\sum_l \\log \\sigma_{\\max}(W_l)`.

    The product of the layers' spectral norms bounds the Lipschitz constant of a ReLU network;
    the auxiliary loss of the MNIST experiment of :cite:`hsieh2024bloop`.

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """
    return sum(jnp.log(spectral_norm(layer["w"])) for layer in params)


def spectral_norm(w: jax.Array) -> jax.Array:
    """The largest singular value of a matrix, :math:`\\|W\\|_2`.

    Computed as the square root of the largest eigenvalue of the smaller of :math:`W^\\top W`
    and :math:`W W^\\top` with ``eigvalsh``: exact, and its gradient is many times cheaper on a
    CPU than differentiating an SVD.

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return jnp.sqrt(jnp.linalg.eigvalsh(gram)[-1])


class DigitsProblem(eqx.Module):
    """An MLP on scikit-learn's 8x8 digits, with the Lipschitz proxy as auxiliary loss.

    .. math::

        L_{\\rm main}(\\theta) = \\text{cross-entropy on the training digits}, \\qquad
        L_{\\rm aux}(\\theta) = \\log \\prod_l \\|W_l\\|_2.

    Build it with :func:`digits`.

    Attributes:
        x_train, y_train, x_test, y_test: pixels scaled to [-1, 1] (64 per image) and labels:
            the split of :func:`otdiff.data.load_digits`, the one every chapter uses.
        hidden: the hidden layer widths (static).

    Taught in: book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb, book/optim/01_bloop.ipynb.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    hidden: tuple[int, ...] = eqx.field(static=True)

    def init_params(self, key: jax.Array) -> list[dict[str, jax.Array]]:
        """A fresh MLP ``64 -> hidden -> 10`` (:func:`mlp_init`)."""
        return mlp_init(key, (self.x_train.shape[1], *self.hidden, 10))

    def sample_batch(self, key: jax.Array, batch_size: int) -> jax.Array:
        """``batch_size`` training indices drawn uniformly with replacement."""
        return _indices(key, self.x_train.shape[0], batch_size)

    def main_loss(self, params, batch: jax.Array | None = None) -> jax.Array:
        """The mean cross-entropy on the batch (the whole training set if ``batch`` is None)."""
        if batch is None:
            x, y = self.x_train, self.y_train
        else:
            x, y = self.x_train[batch], self.y_train[batch]
        logits = mlp_apply(params, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def aux_loss(self, params, batch: jax.Array | None = None) -> jax.Array:
        """The Lipschitz proxy :func:`lipschitz_proxy` (the batch is ignored)."""
        del batch
        return lipschitz_proxy(params)

    def evaluate(self, params) -> dict[str, jax.Array]:
        """Training loss, test loss, train and test accuracy, and the auxiliary loss."""
        logits = mlp_apply(params, self.x_test)
        test_loss = optax.softmax_cross_entropy_with_integer_labels(logits, self.y_test).mean()
        train_logits = mlp_apply(params, self.x_train)
        return {
            "main_loss": self.main_loss(params),
            "test_loss": test_loss,
            "train_accuracy": jnp.mean(jnp.argmax(train_logits, -1) == self.y_train),
            "test_accuracy": jnp.mean(jnp.argmax(logits, -1) == self.y_test),
            "aux_loss": self.aux_loss(params),
        }


def digits(
    hidden: Sequence[int] = (64, 64), *, test_fraction: float = 0.2, seed: int = 0
) -> DigitsProblem:
    """The digits problem on the book's split: 1797 images of 8x8 pixels in [-1, 1].

    The images, their scaling and the train/test split are those of
    :func:`otdiff.data.load_digits` with the same arguments, so that with the defaults (20% held
    out, split seed 0) every chapter trains and tests on the same images.

    Args:
        hidden: the hidden layer widths (static), each a positive int.
        test_fraction: the share of images held out for testing, in (0, 1).
        seed: the NumPy seed of the split (a non-negative int).

    Raises:
        ValueError/TypeError: a width that is not a positive int, a fraction outside (0, 1), a
            negative or non-integer seed.

    Taught in: book/optim/01_bloop.ipynb
    """
    hidden = tuple(check_int(h, "hidden", low=1) for h in hidden)
    data = load_digits(test_fraction=test_fraction, seed=seed)
    return DigitsProblem(
        x_train=jnp.asarray(data.train_images),
        y_train=jnp.asarray(data.train_labels),
        x_test=jnp.asarray(data.test_images),
        y_test=jnp.asarray(data.test_labels),
        hidden=hidden,
    )
