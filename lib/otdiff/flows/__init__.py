"""Flow models: flow matching, rectified flows, ReFlow and Simple ReFlow :cite:`kim2025simplereflow`.

Convention everywhere: :math:`x_t = (1 - t)x_0 + t x_1` with :math:`x_0` data and :math:`x_1`
noise; sampling runs from :math:`t = 1` to :math:`t = 0`.

- :mod:`otdiff.flows.interpolant`: the interpolant, velocity and denoiser parameterisations,
  :class:`FlowNet`, the training time distributions, the high-pass filter and :class:`FlowLoss`.
- :mod:`otdiff.flows.samplers`: Euler and Heun samplers with their NFE, the reference solve.
- :mod:`otdiff.flows.teachers`: a VP diffusion model as a flow (the time change).
- :mod:`otdiff.flows.reflow`: ReFlow pairs (backward, forward, projected), training and caching.

Taught in: book/diffusion/05_simple_reflow.ipynb
"""

from otdiff.flows.interpolant import (
    PARAMETERISATIONS,
    TIME_DISTRIBUTIONS,
    FlowLoss,
    FlowNet,
    Pairs,
    denoiser_from_velocity,
    high_pass,
    interpolate,
    sample_times,
    time_density,
    velocity_from_denoiser,
)
from otdiff.flows.reflow import (
    RING_SWITCHES,
    RING_VARIANTS,
    FlowConfig,
    ReflowPairs,
    RingRun,
    backward_pairs,
    cached_flow,
    cached_pairs,
    chapter_ring,
    forward_pairs,
    make_flow,
    mix_pairs,
    project_pairs,
    ring_switch_grid,
    train_flow,
    training_pairs,
)
from otdiff.flows.samplers import (
    SOLVERS,
    FlowSample,
    euler_step,
    flow_time_grid,
    heun_step,
    nfe,
    path_straightness,
    sample_flow,
    solve_flow,
    steps_for_nfe,
)
from otdiff.flows.teachers import rf_time, vp_time, vp_velocity

__all__ = [
    "PARAMETERISATIONS",
    "TIME_DISTRIBUTIONS",
    "FlowLoss",
    "FlowNet",
    "Pairs",
    "denoiser_from_velocity",
    "high_pass",
    "interpolate",
    "sample_times",
    "time_density",
    "velocity_from_denoiser",
    "RING_SWITCHES",
    "RING_VARIANTS",
    "FlowConfig",
    "ReflowPairs",
    "RingRun",
    "backward_pairs",
    "cached_flow",
    "cached_pairs",
    "chapter_ring",
    "forward_pairs",
    "make_flow",
    "mix_pairs",
    "project_pairs",
    "ring_switch_grid",
    "train_flow",
    "training_pairs",
    "SOLVERS",
    "FlowSample",
    "euler_step",
    "flow_time_grid",
    "heun_step",
    "nfe",
    "path_straightness",
    "sample_flow",
    "solve_flow",
    "steps_for_nfe",
    "rf_time",
    "vp_time",
    "vp_velocity",
]
