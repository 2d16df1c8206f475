"""Diffusion on Riemannian manifolds and Schrödinger bridges between distributions on them.

- :mod:`otdiff.manifolds.base`: the :class:`Manifold` interface (embedded manifolds: tangent
  projection, exponential and logarithm maps, tangent Gaussians, the Riemannian divergence).
- :mod:`otdiff.manifolds.sphere`: the sphere :math:`S^d`, uniform and von Mises-Fisher laws.
- :mod:`otdiff.manifolds.walk`: the geodesic random walk (Euler-Maruyama on a manifold).
- :mod:`otdiff.manifolds.heat`: the heat kernel of :math:`S^2` (density, score, exact samples).
- :mod:`otdiff.manifolds.bridge`: score matching on manifolds and the Riemannian diffusion
  Schrödinger bridge by iterative proportional fitting :cite:`thornton2022rdsb`.
- :mod:`otdiff.manifolds.viz`: plots on the globe.

Taught in: book/diffusion/06_rdsb.ipynb
"""

from otdiff.manifolds.base import DIVERGENCES, Manifold
from otdiff.manifolds.bridge import (
    FIRST_LOSSES,
    Bridge,
    BridgeConfig,
    ChapterBridges,
    DriftNet,
    backward_drift,
    cached_ipf,
    chapter_bridges,
    chapter_tasks,
    empirical,
    forward_drift,
    heat_dsm_loss,
    ipf,
    ism_loss,
    make_drift_network,
    reversal_targets,
    sample_backward,
    sample_forward,
)
from otdiff.manifolds.heat import (
    heat_kernel,
    heat_kernel_cdf,
    heat_kernel_score,
    log_heat_kernel,
    n_terms_for,
    sample_heat_kernel,
    truncation_error,
)
from otdiff.manifolds.sphere import (
    Sphere,
    VMFMixture,
    vmf_kde,
    vmf_log_normalizer,
    vmf_log_prob,
    vmf_mixture,
    vmf_sample,
)
from otdiff.manifolds.walk import WalkResult, geodesic_random_walk, langevin_drift, time_grid

__all__ = [
    "Manifold",
    "DIVERGENCES",
    "Sphere",
    "VMFMixture",
    "vmf_mixture",
    "vmf_sample",
    "vmf_log_prob",
    "vmf_log_normalizer",
    "vmf_kde",
    "WalkResult",
    "geodesic_random_walk",
    "time_grid",
    "langevin_drift",
    "heat_kernel",
    "log_heat_kernel",
    "heat_kernel_score",
    "heat_kernel_cdf",
    "sample_heat_kernel",
    "truncation_error",
    "n_terms_for",
    "BridgeConfig",
    "Bridge",
    "DriftNet",
    "FIRST_LOSSES",
    "make_drift_network",
    "empirical",
    "ism_loss",
    "heat_dsm_loss",
    "reversal_targets",
    "ipf",
    "forward_drift",
    "backward_drift",
    "sample_forward",
    "sample_backward",
    "cached_ipf",
    "ChapterBridges",
    "chapter_bridges",
    "chapter_tasks",
]
