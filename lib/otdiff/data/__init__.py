"""Data with known answers: 2-D densities with exact (noised) log-densities, and 8x8 digits.

- :mod:`otdiff.data.mixtures`: Gaussian mixtures, exact at every diffusion time.
- :mod:`otdiff.data.toy2d`: two moons and a checkerboard, with exact noised densities.
- :mod:`otdiff.data.digits`: scikit-learn's 8x8 digits in ``[-1, 1]``, with labels.
- :mod:`otdiff.data.transport`: point clouds to match, and transport maps known in closed
  form (for the squared Euclidean cost, a Mahalanobis cost and a power of one).
- :mod:`otdiff.data.earth`: world cities weighted by population and a land mask, on the sphere.
- :mod:`otdiff.data.slots`: objects in slots, factorized conditionals with exact noised scores,
  seen through a linear feature map.
- :mod:`otdiff.data.canvas`: objects on a canvas, small images with a blob in some cells.
"""

from otdiff.data.canvas import Canvas, canvas
from otdiff.data.digits import DigitsData, load_digits, load_digits_raw, to_image
from otdiff.data.earth import (
    EarthData,
    LandMask,
    is_land,
    load_cities,
    load_land_mask,
    lonlat_to_xyz,
    sample_land,
    xyz_to_lonlat,
)
from otdiff.data.mixtures import (
    GaussianMixture,
    exact_log_prob,
    exact_score,
    gaussian_mixture,
    grid,
    ring,
)
from otdiff.data.slots import (
    SIGN_PATTERNS,
    Slots,
    SlotScore,
    angled_features,
    random_rotation,
    slots,
)
from otdiff.data.toy2d import Checkerboard, checkerboard, two_moons
from otdiff.data.transport import (
    POWER_POTENTIAL,
    CostMapProblem,
    PowerCostProblem,
    gaussian_clouds,
    known_map,
    known_map_problem,
    mahalanobis_map,
    mahalanobis_matrix,
    mahalanobis_problem,
    mixture_clouds,
    power_inverse_map,
    power_problem,
)

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
    "CostMapProblem",
    "mahalanobis_matrix",
    "mahalanobis_map",
    "mahalanobis_problem",
    "PowerCostProblem",
    "POWER_POTENTIAL",
    "power_inverse_map",
    "power_problem",
    "EarthData",
    "LandMask",
    "load_cities",
    "load_land_mask",
    "is_land",
    "sample_land",
    "lonlat_to_xyz",
    "xyz_to_lonlat",
    "Slots",
    "SlotScore",
    "slots",
    "angled_features",
    "random_rotation",
    "SIGN_PATTERNS",
    "Canvas",
    "canvas",
]
