"""Earth data shipped by packages: cities weighted by population, the land mask, conversions."""

import jax
import numpy as np
import pytest

from otdiff import config, data


def test_lonlat_round_trip():
    rng = np.random.default_rng(config.seed(0))
    lon, lat = rng.uniform(-180, 180, 500), rng.uniform(-89.9, 89.9, 500)
    x = data.lonlat_to_xyz(lon, lat)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(data.xyz_to_lonlat(x), np.stack([lon, lat], 1), atol=1e-9)
    np.testing.assert_allclose(data.lonlat_to_xyz(0.0, 90.0), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(data.lonlat_to_xyz(90.0, 0.0), [0, 1, 0], atol=1e-12)


@pytest.mark.statistical
def test_cities_are_weighted_by_population():
    cities = data.load_cities()
    n = cities.x.shape[0]
    assert n > 30_000 and cities.x.shape == (n, 3) and len(cities.names) == n
    np.testing.assert_allclose(np.linalg.norm(cities.x, axis=1), 1.0, atol=1e-6)
    assert abs(cities.weights.sum() - 1.0) < 1e-9 and np.all(cities.weights > 0)
    biggest = {cities.names[i] for i in np.argsort(cities.weights)[-10:]}
    assert any(name.startswith(("Shanghai", "Tokyo", "Delhi", "Beijing")) for name in biggest)
    # most of the population lives in the northern hemisphere
    assert np.sum(cities.weights[cities.lonlat[:, 1] > 0]) > 0.8
    x = cities.sample(jax.random.key(config.seed(0)), 1000)
    assert x.shape == (1000, 3)  # (the share of these draws north of the equator, measured over
    # 10 seed offsets: median 0.845, range [0.844, 0.864]; the weights' share 0.8 is exact)


@pytest.mark.statistical
def test_land_mask_and_land_samples():
    mask = data.load_land_mask()
    assert mask.land.shape == (720, 1440)
    assert 0.26 < mask.land_fraction < 0.32  # about 29% of the Earth's surface is land
    x = data.sample_land(jax.random.key(config.seed(1)), 2000, mask)
    # measured over 10 seed offsets: every draw on land at every offset (rejection sampling)
    assert x.shape == (2000, 3) and np.all(data.is_land(np.asarray(x), mask))
    # Paris is on land, the middle of the Pacific is not
    pts = data.lonlat_to_xyz(np.array([2.35, -150.0]), np.array([48.86, 0.0]))
    np.testing.assert_array_equal(data.is_land(pts, mask), [True, False])
    coarse = data.load_land_mask(1.0)
    assert coarse.land.shape == (180, 360) and abs(coarse.land_fraction - mask.land_fraction) < 0.02


def test_bad_input_is_reported_clearly():
    with pytest.raises(ValueError, match="min_population"):
        data.load_cities(min_population=20_000)
    with pytest.raises(ValueError, match="resolution"):
        data.load_land_mask(0.7)
    with pytest.raises(ValueError, match="resolution"):
        data.load_land_mask(-1.0)
    with pytest.raises(ValueError, match="size 3"):
        data.xyz_to_lonlat(np.ones((4, 2)))
    with pytest.raises(ValueError, match="n"):
        data.sample_land(jax.random.key(config.seed(0)), 0)
