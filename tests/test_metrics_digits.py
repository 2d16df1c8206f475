"""Tests of otdiff.metrics' sample comparisons: the Fréchet distance against scipy's matrix square
root and a closed form, nearest distances against brute force, the memorisation share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial.distance import cdist

from otdiff import config, metrics


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


# -- the digits judge (the shipped weights) ---------------------------------------------------------


@pytest.fixture(scope="module")
def judge():
    from otdiff import artifacts

    artifacts.forget()
    return metrics.DigitClassifier(verbose=False)


@pytest.fixture(scope="module")
def digits():
    from otdiff.data import load_digits

    return load_digits()


def test_the_shipped_judge_loads_without_training(judge, monkeypatch):
    from otdiff import train

    assert judge.info["source"] == "shipped"
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained the shipped judge"))
    from otdiff.data import load_digits

    data = load_digits()
    again = metrics.DigitClassifier(data.train_images, data.train_labels, verbose=False)
    assert again.info["source"] == "shipped"


@pytest.mark.statistical
def test_the_judge_rejects_noise_and_accepts_real_digits(judge, digits):
    # measured with the shipped judge: 98% of the 359 test digits recognised, accuracy 99%;
    # 0 of 1,000 uniform, Gaussian or half-scale Gaussian noise images at three seeds
    assert judge.confident_fraction(digits.test_images) > 0.9
    assert judge.accuracy(digits.test_images, digits.test_labels) > 0.95
    rng = np.random.default_rng(config.seed(5))
    for noise in (
        rng.uniform(-1, 1, (1000, 64)),
        rng.normal(size=(1000, 64)),
        0.5 * rng.normal(size=(1000, 64)),
    ):
        assert judge.confident_fraction(noise) < 0.05
    probs = judge.probabilities(digits.test_images[:7])
    assert probs.shape == (7, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_the_judge_feature_space(judge, digits):
    test, train = digits.test_images, digits.train_images
    feats = judge.features(test[:11])
    assert feats.shape == (11, metrics.JUDGE_SETTINGS["feature_dim"]) and np.all(np.isfinite(feats))
    a, b = test[:180], test[180:]
    real = judge.frechet_distance(b, a)
    assert real == pytest.approx(metrics.frechet_distance(judge.features(b), judge.features(a)))
    # uniform noise is far from the digits in the judge's features
    noise = np.random.default_rng(config.seed(6)).uniform(-1, 1, (len(b), 64))
    assert judge.frechet_distance(noise, a) > 10 * real
    # copies of training digits are memorised, held-out digits score the quantile
    assert judge.memorised_fraction(train[:50], train, test) == 1.0
    assert judge.memorised_fraction(test, train, test, quantile=0.2) == pytest.approx(0.2, abs=0.01)


def test_the_judge_checks_its_inputs(judge, digits):
    with pytest.raises(ValueError, match=r"shape \(n, 64\)"):
        judge.probabilities(np.zeros((3, 63)))
    with pytest.raises(ValueError, match="NaN"):
        judge.confident_fraction(np.full((2, 64), np.nan))
    with pytest.raises(ValueError, match="threshold"):
        judge.confident_fraction(digits.test_images, threshold=1.0)
    with pytest.raises(ValueError, match="both"):
        metrics.DigitClassifier(digits.train_images)
    with pytest.raises(ValueError, match="labels"):
        metrics.DigitClassifier(digits.train_images, digits.train_labels[:-1])
    with pytest.raises(ValueError, match="0..9"):
        metrics.DigitClassifier(digits.train_images, digits.train_labels + 1)


def test_a_stale_shipped_judge_is_rebuilt_with_a_warning(monkeypatch, tmp_path):
    from otdiff import artifacts

    shipped = artifacts.shipped_path("digit_judge", 0)
    before = shipped.read_bytes()
    monkeypatch.setenv("OTDIFF_CACHE_DIR", str(tmp_path))
    # other settings: the shipped file no longer matches them
    monkeypatch.setitem(metrics.JUDGE_SETTINGS, "n_steps", 20)
    with pytest.warns(artifacts.ShippedArtifactWarning):
        rebuilt = metrics.DigitClassifier(verbose=False)
    assert rebuilt.info["source"] == "built"
    assert rebuilt.probabilities(np.zeros((2, 64))).shape == (2, 10)
    assert shipped.read_bytes() == before  # left as it is
