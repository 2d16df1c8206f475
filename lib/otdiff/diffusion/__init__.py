"""Score-based diffusion: the VP SDE, denoising score matching, samplers and likelihoods.

- :mod:`otdiff.diffusion.sde`: the VP SDE with linear and cosine schedules, closed-form marginals.
- :mod:`otdiff.diffusion.losses`: denoising score matching, epsilon/score conversions, Tweedie.
- :mod:`otdiff.diffusion.samplers`: reverse-SDE Euler–Maruyama (with its Gaussian kernel),
  DDIM and the probability-flow ODE (diffrax).
- :mod:`otdiff.diffusion.likelihood`: log-likelihoods by the instantaneous change of variables.
- :mod:`otdiff.diffusion.networks`: Equinox noise predictors (an MLP, a small convolutional net).
- :mod:`otdiff.diffusion.training`: a pure optax step with an EMA, data parallelism, checkpoints
  and resumable :func:`~otdiff.diffusion.training.fit`.

A score is a function ``score(x, t)`` of one point ``x`` (shape ``(d,)``) and a scalar time.

Taught in: book/diffusion/01_score_based.ipynb
"""

from otdiff.diffusion import networks, training
from otdiff.diffusion.likelihood import DIVERGENCES, divergence, log_likelihood
from otdiff.diffusion.losses import (
    WEIGHTINGS,
    denoiser,
    dsm_loss,
    eps_from_score,
    score_from_eps,
    stratified_times,
)
from otdiff.diffusion.networks import InputScaling, ScoreConvNet, ScoreMLP, TimeEmbedding
from otdiff.diffusion.samplers import (
    SAMPLERS,
    SampleResult,
    batch_score,
    ddim,
    euler_maruyama,
    gaussian_log_prob,
    pf_ode_drift,
    probability_flow,
    reverse_kernel,
    sample,
    time_grid,
)
from otdiff.diffusion.sde import SCHEDULES, VPSDE, check_times, make_sde, vp_cosine, vp_linear
from otdiff.diffusion.training import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    FitResult,
    TrainState,
    data_parallel_mesh,
    fit,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "VPSDE",
    "vp_linear",
    "vp_cosine",
    "make_sde",
    "SCHEDULES",
    "check_times",
    "dsm_loss",
    "WEIGHTINGS",
    "score_from_eps",
    "eps_from_score",
    "denoiser",
    "stratified_times",
    "SAMPLERS",
    "SampleResult",
    "time_grid",
    "batch_score",
    "reverse_kernel",
    "gaussian_log_prob",
    "euler_maruyama",
    "ddim",
    "probability_flow",
    "pf_ode_drift",
    "sample",
    "log_likelihood",
    "divergence",
    "DIVERGENCES",
    "networks",
    "training",
    "TimeEmbedding",
    "InputScaling",
    "ScoreMLP",
    "ScoreConvNet",
    "TrainState",
    "FitResult",
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "data_parallel_mesh",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
]
