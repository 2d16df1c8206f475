"""Data with known answers: 2-D densities with exact (noised) log-densities, and 8x8 digits.

- :mod:`otdiff.data.mixtures`: Gaussian mixtures, exact at every diffusion time.
- :mod:`otdiff.data.toy2d`: two moons and a checkerboard, with exact noised densities.
- :mod:`otdiff.data.digits`: scikit-learn's 8x8 digits in ``[-1, 1]``, with labels.
- :mod:`otdiff.data.transport`: point clouds to match, and a transport map known in closed form.
"""

from otdiff.data.digits import DigitsData, load_digits, load_digits_raw, to_image
from otdiff.data.mixtures import (
    GaussianMixture,
    exact_log_prob,
    exact_score,
    gaussian_mixture,
    grid,
    ring,
)
from otdiff.data.toy2d import Checkerboard, checkerboard, two_moons
from otdiff.data.transport import gaussian_clouds, known_map, known_map_problem, mixture_clouds

__all__ = [
    "GaussianMixture",
    "gaussian_mixture",
    "ring",
    "grid",
    "exact_score",
    "exact_log_prob",
    "two_moons",
    "Checkerboard",
    "checkerboard",
    "DigitsData",
    "load_digits",
    "load_digits_raw",
    "to_image",
    "gaussian_clouds",
    "mixture_clouds",
    "known_map",
    "known_map_problem",
]
