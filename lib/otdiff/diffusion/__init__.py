"""Score-based diffusion: forward processes, denoising score matching, samplers and likelihoods.

The core:

- :mod:`otdiff.diffusion.processes`: the abstract process and the linear and cosine VP schedules.
- :mod:`otdiff.diffusion.losses`: denoising score matching, epsilon/score conversions, Tweedie.
- :mod:`otdiff.diffusion.samplers`: the sampler driver and its step kernels (Euler–Maruyama with
  its Gaussian kernel, DDIM), and the probability-flow ODE (diffrax).
- :mod:`otdiff.diffusion.likelihood`: log-likelihoods by the instantaneous change of variables.
- :mod:`otdiff.diffusion.networks`: noise predictors (an MLP, a small conv net) and an energy MLP.

The papers built on it, each in its own module (import them by name):

- :mod:`otdiff.diffusion.composition`: products, weights and background-relative composition of
  scores and energies.
- :mod:`otdiff.diffusion.energy`: energy distillation and the Feynman-Kac SMC model of
  :cite:`thornton2025composition`.
- :mod:`otdiff.diffusion.spell`: sparse repellency for shielded generation
  :cite:`kirchhof2024spell`.

Training is :func:`otdiff.train.fit` with the loss :func:`dsm_loss`. A score is a function
``score(x, t)`` of one point ``x`` (shape ``(d,)``) and a scalar time.

Taught in: book/diffusion/01_score_based.ipynb
"""

from otdiff.diffusion import networks
from otdiff.diffusion.likelihood import DIVERGENCES, divergence, log_likelihood
from otdiff.diffusion.losses import (
    WEIGHTINGS,
    EpsScore,
    denoiser,
    dsm_loss,
    eps_from_score,
    score_from_eps,
    stratified_times,
)
from otdiff.diffusion.networks import EnergyMLP, InputScaling, ScoreConvNet, ScoreMLP
from otdiff.diffusion.processes import (
    PROCESSES,
    AbstractGaussianProcess,
    AbstractProcess,
    AbstractVP,
    CosineVP,
    LinearVP,
    RectifiedFlow,
    make_process,
)
from otdiff.diffusion.samplers import (
    SAMPLERS,
    SampleResult,
    batch_score,
    ddim,
    ddim_step,
    euler_maruyama,
    euler_maruyama_step,
    gaussian_log_prob,
    pf_ode_drift,
    probability_flow,
    reverse_kernel,
    run_sampler,
    sample,
    time_grid,
)

__all__ = [
    "AbstractProcess",
    "AbstractGaussianProcess",
    "AbstractVP",
    "LinearVP",
    "CosineVP",
    "RectifiedFlow",
    "PROCESSES",
    "make_process",
    "dsm_loss",
    "WEIGHTINGS",
    "EpsScore",
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
    "euler_maruyama_step",
    "ddim_step",
    "run_sampler",
    "euler_maruyama",
    "ddim",
    "probability_flow",
    "pf_ode_drift",
    "sample",
    "log_likelihood",
    "divergence",
    "DIVERGENCES",
    "networks",
    "InputScaling",
    "ScoreMLP",
    "ScoreConvNet",
    "EnergyMLP",
]
