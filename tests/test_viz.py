"""The shared plots draw what they are given and reject malformed input."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from otdiff import config, viz


@pytest.fixture
def ax():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_point_clouds_and_coupling(ax):
    rng = np.random.default_rng(config.seed(0))
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(4, 3))
    P = rng.random((5, 4))
    viz.point_clouds(ax, x, y, a=np.full(5, 0.2))
    viz.coupling_lines(ax, x, y, P, max_lines=6)
    (lines,) = ax.collections[2:]
    assert len(lines.get_segments()) == 6
    alphas = lines.get_colors()[:, 3]
    assert alphas.max() == pytest.approx(1.0) and alphas.min() > 0


def test_matrix_trajectories_convergence(ax):
    viz.coupling_matrix(ax, np.eye(3), log=True, colorbar=True)
    viz.trajectories(ax, np.zeros((5, 3, 2)))
    viz.convergence(ax, [1.0, 0.1, 0.01, -1.0, -1.0], tolerance=1e-2, every=10)
    (curve,) = ax.lines[:1]
    np.testing.assert_allclose(curve.get_xdata(), [10, 20, 30])


def test_bad_shapes_are_named(ax):
    with pytest.raises(ValueError, match=r"x must have shape \(n, d\) with d >= 2"):
        viz.point_cloud(ax, np.ones(3))
    with pytest.raises(ValueError, match=r"coupling must have shape \(2, 2\)"):
        viz.coupling_lines(ax, np.ones((2, 2)), np.ones((2, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        viz.point_cloud(ax, np.ones((2, 2)), weights=np.ones(3))
    with pytest.raises(ValueError, match=r"paths must have shape \(steps, n, d\)"):
        viz.trajectories(ax, np.ones((2, 2)))
    with pytest.raises(ValueError, match="every must be a positive integer"):
        viz.convergence(ax, [1.0], every=0)
    with pytest.raises(ValueError, match="max_paths must be a positive integer"):
        viz.trajectories(ax, np.ones((2, 2, 2)), max_paths=0)
