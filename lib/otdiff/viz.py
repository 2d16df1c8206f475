"""Plots the chapters share: weighted point clouds, couplings, trajectories, convergence curves.

Every function draws on a matplotlib ``Axes`` it is given and returns it, so chapters compose
them into their own figures and the explorers of :mod:`otdiff.ui` can redraw them frame by frame.
Points in more than two dimensions are drawn by their first two coordinates.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "SOURCE_COLOR",
    "TARGET_COLOR",
    "point_cloud",
    "point_clouds",
    "coupling_lines",
    "coupling_matrix",
    "trajectories",
    "convergence",
]

SOURCE_COLOR = "#1f77b4"
TARGET_COLOR = "#d62728"


def _points(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"{name} must have shape (n, d) with d >= 2, got shape {x.shape}.")
    return x


def _weights(w, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=float)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the points, got {w.shape}.")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"{name} must be finite and non-negative.")
    return w


def point_cloud(ax, x, weights=None, *, color=SOURCE_COLOR, label=None, size=30.0, **kwargs):
    """A point cloud, each marker's area proportional to its weight (``size`` at uniform weight).

    Taught in: book/ot/01_sinkhorn.ipynb, book/diffusion/06_rdsb.ipynb.
    """
    x = _points(x, "x")
    w = _weights(weights, len(x), "weights")
    ax.scatter(
        x[:, 0],
        x[:, 1],
        s=size * w * len(x),
        color=color,
        label=label,
        edgecolors="white",
        linewidths=0.4,
        **kwargs,
    )
    ax.set_aspect("equal", adjustable="datalim")
    return ax


def point_clouds(ax, x, y, a=None, b=None, *, labels=("source", "target"), size=30.0):
    """Source ``x`` (weights ``a``) and target ``y`` (weights ``b``) in two colours.

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    point_cloud(ax, x, a, color=SOURCE_COLOR, label=labels[0], size=size)
    point_cloud(ax, y, b, color=TARGET_COLOR, label=labels[1], size=size, marker="s")
    if labels[0] or labels[1]:
        ax.legend(loc="best")
    return ax


def coupling_lines(ax, x, y, coupling, *, max_lines: int = 400, color="0.3", linewidth=1.0):
    """A coupling as segments x_i -- y_j, opacity proportional to P_ij / max P.

    Only the ``max_lines`` heaviest entries are drawn (a dense coupling has n*m of them).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb

    x, y = _points(x, "x"), _points(y, "y")
    P = np.asarray(coupling, dtype=float)
    if P.shape != (len(x), len(y)):
        raise ValueError(f"coupling must have shape ({len(x)}, {len(y)}), got {P.shape}.")
    if not isinstance(max_lines, int) or max_lines < 1:
        raise ValueError(f"max_lines must be a positive integer, got {max_lines!r}.")
    flat = P.ravel()
    k = min(max_lines, flat.size)
    idx = np.argpartition(-flat, k - 1)[:k]
    i, j = np.unravel_index(idx, P.shape)
    alpha = np.clip(flat[idx] / max(flat.max(), 1e-300), 0.0, 1.0)
    segments = np.stack([x[i, :2], y[j, :2]], axis=1)
    rgba = np.zeros((k, 4))
    rgba[:, :3] = to_rgb(color)
    rgba[:, 3] = alpha
    ax.add_collection(LineCollection(segments, colors=rgba, linewidths=linewidth, zorder=0))
    ax.autoscale_view()
    return ax


def coupling_matrix(ax, coupling, *, log: bool = False, cmap="magma_r", colorbar: bool = False):
    """A coupling as an image (rows: source points, columns: target points).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    P = np.asarray(coupling, dtype=float)
    if P.ndim != 2:
        raise ValueError(f"coupling must be a 2-D matrix, got shape {P.shape}.")
    shown = np.log10(np.maximum(P, P.max() * 1e-12)) if log else P
    image = ax.imshow(shown, cmap=cmap, aspect="auto", interpolation="nearest")
    ax.set_xlabel("target index j")
    ax.set_ylabel("source index i")
    ax.grid(False)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="log10 P_ij" if log else "P_ij")
    return ax


def trajectories(
    ax, paths, *, color=SOURCE_COLOR, alpha=0.35, max_paths: int = 200, endpoints=True
):
    """Paths of shape (steps, n, d): one line per particle, with start and end marked.

    Taught in: book/ot/01_sinkhorn.ipynb, book/diffusion/06_rdsb.ipynb.
    """
    from matplotlib.collections import LineCollection

    paths = np.asarray(paths)
    if paths.ndim != 3 or paths.shape[2] < 2:
        raise ValueError(f"paths must have shape (steps, n, d) with d >= 2, got {paths.shape}.")
    if not isinstance(max_paths, int) or max_paths < 1:
        raise ValueError(f"max_paths must be a positive integer, got {max_paths!r}.")
    shown = paths[:, :max_paths, :2]
    ax.add_collection(
        LineCollection(np.transpose(shown, (1, 0, 2)), colors=color, alpha=alpha, linewidths=0.8)
    )
    if endpoints:
        ax.scatter(*shown[0].T, s=8, color=color, label="start")
        ax.scatter(*shown[-1].T, s=8, color=TARGET_COLOR, label="end")
    ax.autoscale_view()
    return ax


def convergence(
    ax,
    errors,
    *,
    label=None,
    tolerance=None,
    xlabel="iteration",
    ylabel="marginal error",
    every: int = 1,
):
    """An error curve on a log scale; entries that are negative (ott-jax's padding) are dropped.

    Args:
        errors: the error after each recorded iteration.
        tolerance: if given, drawn as a dashed horizontal line.
        every: iterations between two recorded errors (ott-jax records every ``inner_iterations``).

    Taught in: book/ot/01_sinkhorn.ipynb.
    """
    if isinstance(every, bool) or not isinstance(every, int | np.integer) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}.")
    e = np.asarray(errors, dtype=float).ravel()
    keep = np.isfinite(e) & (e > 0)
    steps = (np.arange(e.size) + 1) * every
    ax.semilogy(steps[keep], e[keep], label=label)
    if tolerance is not None:
        ax.axhline(tolerance, ls="--", color="0.5", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if label:
        ax.legend(loc="best")
    return ax
