"""Optimisers: gradient surgery for auxiliary objectives (Bloop and its baselines).

* :mod:`otdiff.optim.bloop`: the four update directions as optax transformations
  (:func:`bloop`, :func:`weighted_sum`, :func:`projected`, :func:`pcgrad`) and :func:`run`,
  which trains a problem with any of them in one ``jax.lax.scan`` (on :mod:`otdiff.train`'s
  step and loop).
* :mod:`otdiff.optim.problems`: the known-answer least-squares problem and the digits MLP.

Taught in: book/optim/01_bloop.ipynb
"""

from otdiff.optim.bloop import (
    DEFAULT_EPS,
    METHODS,
    BloopState,
    SurgeryState,
    bloop,
    pcgrad,
    projected,
    run,
    surgery,
    tree_project,
    weighted_sum,
)
from otdiff.optim.problems import (
    DigitsProblem,
    LeastSquaresProblem,
    digits,
    least_squares,
    lipschitz_proxy,
    mlp_apply,
    mlp_init,
    spectral_norm,
)

__all__ = [
    "DEFAULT_EPS",
    "METHODS",
    "BloopState",
    "SurgeryState",
    "bloop",
    "pcgrad",
    "projected",
    "run",
    "surgery",
    "tree_project",
    "weighted_sum",
    "DigitsProblem",
    "LeastSquaresProblem",
    "digits",
    "least_squares",
    "lipschitz_proxy",
    "mlp_apply",
    "mlp_init",
    "spectral_norm",
]
