"""Optimal transport: entropic OT with Sinkhorn (built on ott-jax), data-dependent starts, exact references.

Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb.
"""

from otdiff.ot.initializers import (
    INITIALIZERS,
    GaussianInitializer,
    GaussianMixtureInitializer,
    InitializedSolve,
    SortingInitializer,
    gaussian_clouds,
    initial_potential,
    make_initializer,
    mixture_clouds,
    solve_core_with_initializer,
    solve_with_initializer,
)
from otdiff.ot.sinkhorn import (
    AssignmentOutput,
    SinkhornOutput,
    cost_matrix,
    exact_ot_cost,
    mean_cost,
    relative_epsilon,
    solve,
    solve_core,
    sweep_epsilon,
)

__all__ = [
    "INITIALIZERS",
    "GaussianInitializer",
    "GaussianMixtureInitializer",
    "InitializedSolve",
    "SortingInitializer",
    "gaussian_clouds",
    "initial_potential",
    "make_initializer",
    "mixture_clouds",
    "solve_core_with_initializer",
    "solve_with_initializer",
    "AssignmentOutput",
    "SinkhornOutput",
    "cost_matrix",
    "exact_ot_cost",
    "mean_cost",
    "relative_epsilon",
    "solve",
    "solve_core",
    "sweep_epsilon",
]
