"""Optimal transport: entropic OT with Sinkhorn (built on ott-jax) and exact references.

Taught in: book/ot/01_sinkhorn.ipynb.
"""

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
