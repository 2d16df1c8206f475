"""Plots on the globe: samples and densities on :math:`S^2`, with land outlines.

Two views, each drawing on a matplotlib ``Axes`` it is given and returning it:

* :func:`plot_lonlat`: the equirectangular map, longitude against latitude (the whole sphere,
  stretched near the poles);
* :func:`plot_orthographic`: the sphere seen from far away above the point ``view = (lon, lat)``
  (one hemisphere, undistorted near its centre).

Both take points ``x`` ``(n, 3)`` on the unit sphere (a scatter) and/or a ``density`` callable
``density(points (m, 3)) -> (m,)`` evaluated on a grid (an image), and draw the coastlines as the
contour of the land mask of :func:`otdiff.data.load_land_mask` (coarsened to half a degree).

Taught in: book/diffusion/06_rdsb.ipynb
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from otdiff._checks import check_sphere_points
from otdiff.data.earth import load_land_mask, lonlat_to_xyz, xyz_to_lonlat

__all__ = ["coastlines", "plot_lonlat", "plot_orthographic", "orthographic_project"]

LAND_COLOR = "0.45"


@functools.lru_cache(maxsize=4)
def coastlines(resolution: float = 0.5) -> tuple[np.ndarray, ...]:
    """Coastlines as polylines of ``(lon, lat)`` in degrees: the 0.5 contour of the land mask.

    The quarter-degree mask is averaged over blocks of ``resolution`` degrees first (a multiple
    of 0.25), which smooths the outline and keeps the number of vertices small.

    Taught in: book/ot/01_sinkhorn.ipynb, book/diffusion/06_rdsb.ipynb.
    """
    import contourpy

    mask = load_land_mask(0.25)
    block = round(resolution / mask.resolution)
    if block < 1 or abs(block * mask.resolution - resolution) > 1e-9:
        raise ValueError(f"resolution must be a multiple of 0.25 degrees, got {resolution!r}.")
    n_lat, n_lon = mask.land.shape[0] // block, mask.land.shape[1] // block
    frac = mask.land[: n_lat * block, : n_lon * block].reshape(n_lat, block, n_lon, block)
    frac = frac.mean(axis=(1, 3))
    lat = mask.lat[: n_lat * block].reshape(n_lat, block).mean(1)
    lon = mask.lon[: n_lon * block].reshape(n_lon, block).mean(1)
    lines = contourpy.contour_generator(lon, lat, frac).lines(0.5)
    return tuple(np.asarray(line) for line in lines if len(line) > 4)


@functools.lru_cache(maxsize=4)
def _joined_coastlines(resolution: float = 0.5) -> np.ndarray:
    """All coastlines in one ``(m, 2)`` array, NaN rows between them: drawn by one ``plot`` call."""
    gap = np.full((1, 2), np.nan)
    return np.concatenate([part for line in coastlines(resolution) for part in (line, gap)])


def _scatter_kwargs(kwargs: dict) -> dict:
    out = {"s": 2.0, "alpha": 0.6, "linewidths": 0, "color": "tab:blue"}
    out.update(kwargs)
    return out


def plot_lonlat(
    ax,
    x=None,
    *,
    density: Callable | None = None,
    land: bool = True,
    resolution: int = 180,
    cmap: str = "magma",
    vmax: float | None = None,
    title: str | None = None,
    **scatter,
):
    """The equirectangular view: points ``x`` ``(n, 3)``, a ``density`` image, coastlines.

    Args:
        ax: a matplotlib ``Axes``.
        x: points on the unit sphere, or ``None``.
        density: ``density(points (m, 3)) -> (m,)``, drawn on a ``resolution x 2*resolution``
            grid of longitudes and latitudes, or ``None``.
        land: draw the coastlines.
        resolution: the latitude rows of the density grid.
        cmap: the density's colour map.
        vmax: the density value at the top of the colour map (default: its maximum); the
            bottom is 0. A shared ``vmax`` makes several panels comparable.
        title: the axes' title.
        **scatter: passed to ``ax.scatter`` (``s``, ``color``, ``alpha``, ...).

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    if density is not None:
        lat = np.linspace(-90, 90, resolution)
        lon = np.linspace(-180, 180, 2 * resolution)
        glon, glat = np.meshgrid(lon, lat)
        values = np.asarray(density(lonlat_to_xyz(glon, glat).reshape(-1, 3).astype(np.float32)))
        ax.imshow(
            values.reshape(glat.shape), origin="lower", extent=(-180, 180, -90, 90),
            cmap=cmap, aspect="auto", interpolation="bilinear", vmin=0.0, vmax=vmax,
        )  # fmt: skip
    if land:
        line = _joined_coastlines()
        ax.plot(line[:, 0], line[:, 1], color=LAND_COLOR if density is None else "w", lw=0.5)
    if x is not None:
        ll = xyz_to_lonlat(np.asarray(x))
        ax.scatter(ll[:, 0], ll[:, 1], **_scatter_kwargs(scatter))
    ax.set(xlim=(-180, 180), ylim=(-90, 90), xticks=range(-180, 181, 60), yticks=range(-90, 91, 30))
    ax.set_aspect("equal")
    ax.grid(alpha=0.2)
    if title:
        ax.set_title(title)
    return ax


def _frame(view) -> np.ndarray:
    """Rows: the screen's right, up and towards-viewer unit vectors for a view above (lon, lat)."""
    lon, lat = view
    centre = lonlat_to_xyz(lon, lat)
    east = np.array([-np.sin(np.radians(lon)), np.cos(np.radians(lon)), 0.0])
    north = np.cross(centre, east)
    return np.stack([east, north, centre])


def orthographic_project(x, view=(0.0, 20.0)) -> tuple[np.ndarray, np.ndarray]:
    """Screen coordinates ``(n, 2)`` of points ``(n, 3)`` seen from above ``view`` and whether each is visible.

    Taught in: book/ot/01_sinkhorn.ipynb, book/diffusion/06_rdsb.ipynb.
    """
    check_sphere_points(x, "x")
    return _project(x, view)


def _project(x, view) -> tuple[np.ndarray, np.ndarray]:
    """:func:`orthographic_project` unchecked (the coastlines hold NaN rows between lines)."""
    p = np.asarray(x, np.float64) @ _frame(view).T
    return p[:, :2], p[:, 2] >= 0.0


def plot_orthographic(
    ax,
    x=None,
    *,
    view=(0.0, 20.0),
    density: Callable | None = None,
    land: bool = True,
    resolution: int = 200,
    cmap: str = "magma",
    vmax: float | None = None,
    title: str | None = None,
    **scatter,
):
    """The orthographic view from above ``view = (lon, lat)`` (degrees): the visible hemisphere.

    Arguments as in :func:`plot_lonlat`; ``resolution`` is the side of the density image.

    Taught in: book/diffusion/06_rdsb.ipynb.
    """
    from matplotlib.patches import Circle

    frame = _frame(view)
    if density is not None:
        u = np.linspace(-1, 1, resolution)
        gu, gv = np.meshgrid(u, u)
        inside = gu**2 + gv**2 <= 1.0
        w = np.sqrt(np.clip(1.0 - gu**2 - gv**2, 0.0, None))
        pts = np.stack([gu, gv, w], -1)[inside] @ frame  # screen -> world
        image = np.full(gu.shape, np.nan)
        image[inside] = np.asarray(density(pts.astype(np.float32)))
        ax.imshow(
            image, origin="lower", extent=(-1, 1, -1, 1), cmap=cmap, interpolation="bilinear",
            vmin=0.0, vmax=vmax,
        )  # fmt: skip
    if land:
        line = _joined_coastlines()
        screen, front = _project(lonlat_to_xyz(line[:, 0], line[:, 1]), view)
        seg = np.where(front[:, None], screen, np.nan)  # hidden parts (and the gaps) break the line
        ax.plot(seg[:, 0], seg[:, 1], color=LAND_COLOR if density is None else "w", lw=0.5)
    if x is not None:
        screen, front = orthographic_project(x, view)
        ax.scatter(screen[front, 0], screen[front, 1], **_scatter_kwargs(scatter))
    ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.3", lw=0.8))
    ax.set(xlim=(-1.02, 1.02), ylim=(-1.02, 1.02), xticks=[], yticks=[])
    ax.set_aspect("equal")
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return ax
