"""Optimal transport: entropic OT with Sinkhorn over any ott-jax cost, data-dependent starts, ProgOT.

- :mod:`otdiff.ot.sinkhorn`: the one Sinkhorn path (:func:`solve`, :func:`sweep_epsilon`), the
  entropic map, costs and scales, exact references;
- :mod:`otdiff.ot.initializers`: data-dependent starts (Gaussian, sorting, mixture, subsample);
- :mod:`otdiff.ot.progot`: progressive entropic OT (state, init, step, run, out-of-sample map);
- :mod:`otdiff.ot.multimarginal`: multi-marginal entropic OT over ott-jax's ``MMSinkhorn``, and
  :mod:`otdiff.ot.m3g`: the multi-marginal matching gap :cite:`piran2024m3g` (import both by name);
- :mod:`otdiff.ot.costs`: learnable translation-invariant costs (Mahalanobis, neural), and
  :mod:`otdiff.ot.monge`: cost-parameterized Monge map estimators :cite:`howard2024monge`
  (import both by name).

Test problems with known answers live in :mod:`otdiff.data` (``gaussian_clouds``,
``mixture_clouds``, ``known_map``, ``known_map_problem``, ``mahalanobis_problem``); map errors in :mod:`otdiff.metrics`.

Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
book/ot/04_monge.ipynb, book/ot/05_m3g.ipynb.
"""

from otdiff.ot.initializers import (
    INITIALIZERS,
    GaussianInitializer,
    GaussianMixtureInitializer,
    SortingInitializer,
    make_initializer,
)
from otdiff.ot.progot import (
    ALPHA_SCHEDULES,
    ProgOTOutput,
    ProgOTState,
    alpha_schedule,
    displace,
    elapsed_times,
    epsilon_schedule,
    progot,
    progot_core,
    progot_init,
    progot_step,
    select_end_epsilon,
    transport,
)
from otdiff.ot.sinkhorn import (
    AssignmentOutput,
    SinkhornOutput,
    cost_matrix,
    default_epsilon,
    entropic_map,
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
    "SortingInitializer",
    "make_initializer",
    "ALPHA_SCHEDULES",
    "ProgOTOutput",
    "ProgOTState",
    "alpha_schedule",
    "displace",
    "elapsed_times",
    "epsilon_schedule",
    "progot",
    "progot_core",
    "progot_init",
    "progot_step",
    "select_end_epsilon",
    "transport",
    "AssignmentOutput",
    "SinkhornOutput",
    "cost_matrix",
    "default_epsilon",
    "entropic_map",
    "exact_ot_cost",
    "mean_cost",
    "relative_epsilon",
    "solve",
    "solve_core",
    "sweep_epsilon",
]
