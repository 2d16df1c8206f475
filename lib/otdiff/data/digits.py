"""The 8x8 handwritten digits bundled with scikit-learn, scaled to [-1, 1], with labels.

1,797 grey-level images of 8x8 pixels (values 0 to 16 in the file). Diffusion models work with
flat vectors in :math:`[-1, 1]^{64}`; :func:`to_image` turns them back into 8x8 arrays.

Taught in: book/diffusion/01_score_based.ipynb (and used by the Bloop chapter)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from otdiff._checks import check_in_range, check_int

__all__ = ["DigitsData", "load_digits", "load_digits_raw", "to_image", "N_PIXELS"]

N_PIXELS = 64


class DigitsData(NamedTuple):
    """A seeded train/test split of the digits as flat ``float32`` vectors in ``[-1, 1]``.

    Taught in: book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb,
    book/diffusion/03_spell.ipynb, book/optim/01_bloop.ipynb.
    """

    train_images: np.ndarray  # (n_train, 64)
    train_labels: np.ndarray  # (n_train,)
    test_images: np.ndarray  # (n_test, 64)
    test_labels: np.ndarray  # (n_test,)


def load_digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as ``(pixels / 16, labels)``: pixels in ``[0, 1]``, shape ``(1797, 64)``.

    Reads the CSV file that scikit-learn ships without importing scikit-learn (which takes
    seconds); falls back to ``sklearn.datasets.load_digits`` if the file is not where expected.

    Taught in: book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb,
    book/diffusion/03_spell.ipynb, book/optim/01_bloop.ipynb.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, labels = table[:, :-1], table[:, -1]
    else:  # pragma: no cover - depends on scikit-learn's layout
        from sklearn.datasets import load_digits as sk_load_digits

        data = sk_load_digits()
        pixels, labels = data.data, data.target
    return np.asarray(pixels, np.float32) / 16.0, np.asarray(labels, np.int32)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """The digits scaled to ``[-1, 1]`` and split at random (reproducibly) into train and test.

    Args:
        test_fraction: the share of images held out, in ``(0, 1)``.
        seed: the NumPy seed of the split (a non-negative int).

    Taught in: book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb,
    book/diffusion/03_spell.ipynb.
    """
    check_in_range(test_fraction, "test_fraction", 0.0, 1.0, low_open=True, high_open=True)
    seed = check_int(seed, "seed", low=0)
    pixels, labels = load_digits_raw()
    images = 2.0 * pixels - 1.0
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(test_fraction * len(images)))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(images[train], labels[train], images[test], labels[test])


def to_image(x) -> np.ndarray:
    """Flat vectors ``(..., 64)`` in ``[-1, 1]`` to images ``(..., 8, 8)`` in ``[0, 1]``.

    Taught in: book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb,
    book/diffusion/03_spell.ipynb.
    """
    x = np.asarray(x)
    if x.ndim < 1 or not np.issubdtype(x.dtype, np.number) or x.shape[-1] != N_PIXELS:
        raise ValueError(f"x must have {N_PIXELS} pixels on its last axis, got shape {x.shape}.")
    return np.clip((x.reshape(*x.shape[:-1], 8, 8) + 1.0) / 2.0, 0.0, 1.0)
