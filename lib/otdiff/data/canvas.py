"""Objects on a canvas: small grey images with a blob in some of a grid of cells.

A stand-in for the CLEVR experiments of :cite:`bradley2025projective` at the size of a laptop.
A canvas is a ``side x side`` image cut into a ``grid x grid`` array of square **cells**. Every
pixel carries independent noise :math:`\\mathcal N(0, s^2)`; an **object** in cell :math:`i` adds
a Gaussian blob

.. math:: b(p) = h\\,\\exp\\Big(-\\frac{\\|p - c_i - u\\|^2}{2w^2}\\Big)\\,\\mathbf 1[p \\in \\text{cell } i],
    \\qquad u \\sim \\mathcal U([-j, j]^2),

of height :math:`h`, width :math:`w` and centre jittered by :math:`u` around the cell's centre
:math:`c_i`, cut to its cell. The background is the empty canvas, a conditional :math:`p_i` has
one object in cell :math:`i`. The blob never leaves its cell and the noise is independent across
pixels, so these are *factorized conditionals* with the cells as blocks: composing the
conditionals of several cells against the empty background asks for a canvas with an object in
each of them, a law no training image follows.

A condition is a map over the pixels (:meth:`Canvas.condition`): 1 on the cells that should
hold an object, 0 elsewhere, the form a convolutional network can read at every location
(:class:`otdiff.diffusion.conditional.ConditionalConvNet`). The map of all zeros asks for the
empty canvas. A third map, -1 everywhere (:meth:`Canvas.null_condition`), asks for nothing: a
network trained with it on a share of the rows (:meth:`Canvas.training_data` with ``null_prob``,
the label dropout of classifier-free guidance) also learns the
**unconditional** law, the mixture of the empty and one-object canvases, the background of the
Bayes composition.

Taught in: book/diffusion/04_projective_composition.ipynb
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff._checks import check_in_range, check_int, check_nonnegative, check_positive
from otdiff.data.slots import check_slot_set

__all__ = ["Canvas", "canvas"]


class Canvas(eqx.Module):
    """The canvas family (module docstring). Build one with :func:`canvas`.

    Attributes:
        side: the image side in pixels (static).
        grid: cells per side (static); ``side`` is a multiple of it.
        height: the blob height :math:`h`.
        width: the blob width :math:`w` in pixels.
        jitter: the largest offset :math:`j` of a blob's centre from its cell's centre, in pixels.
        noise_std: the pixel noise :math:`s`.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """

    side: int = eqx.field(static=True)
    grid: int = eqx.field(static=True)
    height: jax.Array
    width: jax.Array
    jitter: jax.Array
    noise_std: jax.Array

    @property
    def n_cells(self) -> int:
        """The number of cells, ``grid**2``."""
        return self.grid * self.grid

    @property
    def dim(self) -> int:
        """The number of pixels, ``side**2``."""
        return self.side * self.side

    def _cell_of_pixel(self) -> np.ndarray:
        cell = self.side // self.grid
        rows, cols = np.divmod(np.arange(self.dim), self.side)
        return (rows // cell) * self.grid + cols // cell

    def cell_masks(self) -> jax.Array:
        """``(n_cells, side**2)``: the indicator of each cell's pixels (cell ``i`` is row
        ``i // grid``, column ``i % grid``)."""
        return jnp.asarray(
            self._cell_of_pixel()[None, :] == np.arange(self.n_cells)[:, None], float
        )

    def condition(self, cells=()) -> jax.Array:
        """The condition map ``(side**2,)`` asking for objects in ``cells`` (a static tuple)."""
        cells = check_slot_set(cells, self.n_cells, "cells")
        mask = np.isin(self._cell_of_pixel(), cells)
        return jnp.asarray(mask, dtype=float)

    def null_condition(self) -> jax.Array:
        """The condition map ``(side**2,)`` of the unconditional law: -1 on every pixel."""
        return -jnp.ones((self.dim,), dtype=jnp.result_type(float))

    def _blobs(self, key: jax.Array, occupied: jax.Array) -> jax.Array:
        """Blob images for a batch: ``occupied`` ``(n, n_cells)`` in {0, 1} -> ``(n, side**2)``."""
        n = occupied.shape[0]
        cell = self.side // self.grid
        rows, cols = np.divmod(np.arange(self.dim), self.side)
        which = self._cell_of_pixel()
        centre_r = (which // self.grid) * cell + 0.5 * (cell - 1)
        centre_c = (which % self.grid) * cell + 0.5 * (cell - 1)
        offsets = self.jitter * jax.random.uniform(
            key, (n, self.n_cells, 2), minval=-1.0, maxval=1.0
        )
        off = offsets[:, which, :]  # (n, side**2, 2): the offset of each pixel's cell
        d2 = (rows - centre_r - off[..., 0]) ** 2 + (cols - centre_c - off[..., 1]) ** 2
        blob = self.height * jnp.exp(-0.5 * d2 / self.width**2)
        return blob * occupied[:, which]

    def sample(self, key: jax.Array, n: int, cells=()) -> jax.Array:
        """``n`` canvases ``(n, side**2)`` with an object in each of ``cells`` (static)."""
        n = check_int(n, "n", low=1)
        cells = check_slot_set(cells, self.n_cells, "cells")
        occupied = jnp.zeros((n, self.n_cells)).at[:, list(cells)].set(1.0)
        k_blob, k_noise = jax.random.split(key)
        noise = self.noise_std * jax.random.normal(k_noise, (n, self.dim))
        return self._blobs(k_blob, occupied) + noise

    def training_data(
        self, key: jax.Array, n: int, *, null_prob: float = 0.0
    ) -> tuple[jax.Array, jax.Array]:
        """Empty and one-object canvases with their condition maps, ``(x, c)``, both ``(n, side**2)``.

        Each row draws uniformly among "empty" and "an object in cell ``i``" (``n_cells + 1``
        choices). With probability ``null_prob`` a row's condition is replaced by
        :meth:`null_condition` (its canvas is kept), so that one network learns the conditionals
        and the unconditional law (the uniform mixture of the ``n_cells + 1`` laws).

        Args:
            key: a JAX random key.
            n: the number of rows (>= 1).
            null_prob: the share of rows with the null condition, in ``[0, 1)``; with 0 (the
                default) the draws are those of earlier versions.
        """
        n = check_int(n, "n", low=1)
        check_in_range(null_prob, "null_prob", 0.0, 1.0, high_open=True)
        k_label, k_blob, k_noise = jax.random.split(key, 3)
        label = jax.random.randint(k_label, (n,), 0, self.n_cells + 1)  # n_cells: empty
        occupied = jax.nn.one_hot(label, self.n_cells + 1)[:, : self.n_cells]
        noise = self.noise_std * jax.random.normal(k_noise, (n, self.dim))
        x = self._blobs(k_blob, occupied) + noise
        c = occupied @ self.cell_masks()
        if null_prob > 0:
            drop = jax.random.bernoulli(jax.random.fold_in(key, 1), null_prob, (n,))
            c = jnp.where(drop[:, None], self.null_condition(), c)
        return x, c

    def detect(self, x: jax.Array, threshold: float | None = None) -> jax.Array:
        """``(..., n_cells)`` booleans: the brightest pixel of the cell exceeds ``threshold``
        (default half the blob height)."""
        threshold = 0.5 * self.height if threshold is None else threshold
        masks = self.cell_masks().astype(bool)
        peak = jnp.max(jnp.where(masks, x[..., None, :], -jnp.inf), axis=-1)
        return peak > threshold

    def count(self, x: jax.Array, threshold: float | None = None) -> jax.Array:
        """The number of objects detected on each canvas."""
        return jnp.sum(self.detect(x, threshold), axis=-1)

    def success(self, x: jax.Array, cells, threshold: float | None = None) -> jax.Array:
        """``(...,)`` booleans: objects detected in exactly ``cells``."""
        cells = check_slot_set(cells, self.n_cells, "cells")
        target = np.isin(np.arange(self.n_cells), cells)
        return jnp.all(self.detect(x, threshold) == jnp.asarray(target), axis=-1)

    def to_images(self, x: jax.Array) -> np.ndarray:
        """Flat canvases ``(..., side**2)`` as images ``(..., side, side)``."""
        x = np.asarray(x)
        return x.reshape(x.shape[:-1] + (self.side, self.side))


def canvas(
    side: int = 12,
    grid: int = 3,
    *,
    height: float = 1.0,
    width: float = 0.8,
    jitter: float = 0.5,
    noise_std: float = 0.05,
) -> Canvas:
    """The canvas family with its arguments checked.

    Args:
        side: the image side in pixels (static), a multiple of ``grid``.
        grid: cells per side (static), >= 1.
        height: the blob height, > 0.
        width: the blob width in pixels, > 0.
        jitter: the largest offset of a blob's centre from its cell's centre, >= 0 pixels.
        noise_std: the pixel noise, > 0.

    Taught in: book/diffusion/04_projective_composition.ipynb.
    """
    side = check_int(side, "side", low=1)
    grid = check_int(grid, "grid", low=1, high=side)
    if side % grid:
        raise ValueError(f"side must be a multiple of grid, got side={side}, grid={grid}.")
    for value, name in ((height, "height"), (width, "width"), (noise_std, "noise_std")):
        check_positive(value, name)
    check_nonnegative(jitter, "jitter")
    f = jnp.result_type(float)
    return Canvas(
        side, grid, jnp.asarray(height, f), jnp.asarray(width, f), jnp.asarray(jitter, f),
        jnp.asarray(noise_std, f),
    )  # fmt: skip
