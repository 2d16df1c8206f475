"""Tests of otdiff.metrics' sample comparisons: the Fréchet distance against scipy's matrix square
root and a closed form, nearest distances against brute force, the memorisation share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.distance import cdist

from otdiff import metrics


def frechet_reference(x, y):
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    cross = linalg.sqrtm(cx @ cy).real
    return float(np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * cross))


def test_frechet_distance_matches_scipy_and_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    y = rng.normal(size=(300, 5)) * 2.0 + 1.0
    assert metrics.frechet_distance(x, y) == pytest.approx(frechet_reference(x, y), rel=1e-4)
    assert abs(metrics.frechet_distance(x, x)) < 1e-3
    # y = 2z + 1 for the same sample: |m + 1|^2 + tr(C + 4C - 4C) = |m + 1|^2 + tr(C)
    z = rng.normal(size=(500, 3))
    expected = np.sum((z.mean(0) + 1.0) ** 2) + np.trace(np.cov(z, rowvar=False))
    assert metrics.frechet_distance(z, 2.0 * z + 1.0) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="dimension"):
        metrics.frechet_distance(x, y[:, :4])


def test_nearest_distance_and_memorised_fraction():
    rng = np.random.default_rng(1)
    train, held_out, x = (
        rng.normal(size=(300, 4)),
        rng.normal(size=(200, 4)),
        rng.normal(size=(50, 4)),
    )
    got = metrics.nearest_distance(x, train, chunk_size=7)
    np.testing.assert_allclose(got, cdist(x, train).min(axis=1), rtol=1e-5)
    assert metrics.memorised_fraction(train[:40] + 1e-4, train, held_out) == 1.0
    assert metrics.memorised_fraction(held_out, train, held_out, quantile=0.2) == pytest.approx(
        0.2, abs=0.01
    )
    with pytest.raises(ValueError, match="quantile"):
        metrics.memorised_fraction(x, train, held_out, quantile=1.0)
