"""The diffusion chapters' networks: noise predictors and an energy, on the time-conditioned blocks of :mod:`otdiff.nn`.

* :class:`ScoreMLP` and :class:`ScoreConvNet` predict the noise of one point,
  :math:`\\hat\\varepsilon_\\theta(x, t)` (the convention of
  :func:`otdiff.diffusion.dsm_loss`; :func:`otdiff.diffusion.score_from_eps` turns one into a
  score);
* :class:`EnergyMLP` is a scalar energy :math:`E_\\theta(x, t)` whose score is
  :math:`-\\nabla_x E_\\theta` (:cite:`thornton2025composition`).

The MLPs are one :class:`otdiff.nn.TimeMLP` each (a vector or a scalar head), the conv net an
:class:`otdiff.nn.TimeConvNet`. An optional input scaling (``data_std``, :class:`InputScaling`)
divides :math:`x_t` by its marginal standard deviation :math:`\\sqrt{\\alpha_t^2 v + \\sigma_t^2}`
under the network's forward process, for data of per-coordinate variance :math:`v`, so the
network sees inputs of unit scale at every time. The process is a fixed part of the network (a
static copy of its numbers), not a trained one.

Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from otdiff._checks import check_int, check_positive, is_concrete
from otdiff.diffusion.processes import AbstractGaussianProcess
from otdiff.nn import TimeConvNet, TimeMLP

__all__ = ["InputScaling", "ScoreMLP", "ScoreConvNet", "EnergyMLP"]


def _frozen(process: AbstractGaussianProcess, name: str = "process") -> AbstractGaussianProcess:
    """A copy of ``process`` with Python floats as leaves: hashable, a static (untrained) field."""
    if not isinstance(process, AbstractGaussianProcess):
        raise TypeError(
            f"{name} must be a Gaussian diffusion process (e.g. otdiff.diffusion.LinearVP()), "
            f"got {type(process).__name__}."
        )
    if not is_concrete(process):
        raise ValueError(f"{name} must hold concrete numbers to build a network (not traced).")
    return jax.tree_util.tree_map(float, process)


class InputScaling(eqx.Module):
    """:math:`c_{\\rm in}(t) = 1/\\sqrt{\\alpha_t^2 v + \\sigma_t^2}` under a Gaussian forward process.

    Args:
        data_std: the per-coordinate standard deviation :math:`\\sqrt v` of the data (> 0).
        process: the forward process (an :class:`~otdiff.diffusion.AbstractGaussianProcess`); a
            static copy is kept.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """

    data_std: float = eqx.field(static=True)
    process: AbstractGaussianProcess = eqx.field(static=True)

    def __init__(self, data_std: float, process: AbstractGaussianProcess):
        self.data_std = float(check_positive(data_std, "data_std"))
        self.process = _frozen(process)

    def __call__(self, t: jax.Array) -> jax.Array:
        """The scale at time ``t``."""
        alpha, sigma = self.process.alpha(t), self.process.sigma(t)
        return jax.lax.rsqrt((alpha * self.data_std) ** 2 + sigma**2)


def _scaling(data_std, process) -> InputScaling | None:
    if data_std is None:
        return None
    if process is None:
        raise ValueError("process is required with data_std (the input scaling follows it).")
    return InputScaling(data_std, process)


class ScoreMLP(eqx.Module):
    """An MLP noise predictor :math:`\\hat\\varepsilon_\\theta(x, t)` for points of dimension ``dim``.

    A :class:`otdiff.nn.TimeMLP` from ``dim`` to ``dim``, its input optionally scaled by
    :class:`InputScaling`.

    Args:
        dim: the data dimension ``d`` (static).
        hidden: the widths of the hidden layers (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: if given, the per-coordinate standard deviation of the data: the input is
            scaled by :class:`InputScaling` under ``process``.
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """

    dim: int = eqx.field(static=True)
    net: TimeMLP
    scaling: InputScaling | None

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 64,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.dim = check_int(dim, "dim", low=1)
        self.net = TimeMLP(dim, dim, hidden=hidden, embed_dim=embed_dim, key=key)
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The predicted noise at one point ``x`` of shape ``(dim,)`` and a scalar time ``t``."""
        if self.scaling is not None:
            x = x * self.scaling(t)
        return self.net(x, t)


class ScoreConvNet(eqx.Module):
    """A residual convolutional noise predictor for ``side x side`` grey images (8x8 digits).

    An :class:`otdiff.nn.TimeConvNet` on the flat image (``side**2``,), its input optionally
    scaled by :class:`InputScaling`.

    Args:
        side, channels, n_blocks, embed_dim, groups: as :class:`otdiff.nn.TimeConvNet` (static).
        key: a JAX random key.
        data_std: optional input scaling, as for :class:`ScoreMLP`.
        process: the forward process the scaling follows (required with ``data_std``).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """

    net: TimeConvNet
    scaling: InputScaling | None

    def __init__(
        self,
        *,
        side: int = 8,
        channels: int = 32,
        n_blocks: int = 2,
        embed_dim: int = 64,
        groups: int = 8,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
    ):
        self.net = TimeConvNet(
            side=side, channels=channels, n_blocks=n_blocks, embed_dim=embed_dim, groups=groups,
            key=key,
        )  # fmt: skip
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The predicted noise at one flat image ``x`` of shape ``(side**2,)`` and a scalar time."""
        if self.scaling is not None:
            x = x * self.scaling(t)
        return self.net(x, t)


class EnergyMLP(eqx.Module):
    """A scalar energy :math:`E_\\theta(x, t)` for points of dimension ``dim``.

    .. math::

        E_\\theta(x, t) = \\tfrac12\\,c_t^2\\|x\\|^2 + f_\\theta(c_t x, t),\\qquad
        c_t = \\big(\\alpha_t^2 v + \\sigma_t^2\\big)^{-1/2},

    with :math:`f_\\theta` a :class:`otdiff.nn.TimeMLP` with a scalar output (smooth activations:
    the score is its gradient). With ``data_std`` (:math:`\\sqrt v`), the first term is the energy
    of the Gaussian with the data's variance noised to time :math:`t` (the right tails), and the
    network sees inputs of unit scale; without it :math:`c_t = 1` and the quadratic term is
    dropped. With ``noise_scaled`` the network term is divided by :math:`\\sigma_t` (so that
    :math:`\\sigma_t\\nabla E_\\theta`, a noise prediction, is of order one); on the chapter's 2-D
    mixtures this amplified the errors of the energy offsets between separated modes at small
    :math:`t`, so it is off by default.

    Args:
        dim: the data dimension (static).
        hidden: hidden widths (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: per-coordinate standard deviation of the data, or ``None``.
        process: the forward process (required with ``data_std`` or ``noise_scaled``).
        noise_scaled: divide the network term by :math:`\\sigma_t` (static).

    Taught in: book/diffusion/02_energy_smc.ipynb.
    """

    dim: int = eqx.field(static=True)
    net: TimeMLP
    scaling: InputScaling | None
    process: AbstractGaussianProcess | None = eqx.field(static=True)
    noise_scaled: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 32,
        key: jax.Array,
        data_std: float | None = None,
        process: AbstractGaussianProcess | None = None,
        noise_scaled: bool = False,
    ):
        self.dim = check_int(dim, "dim", low=1)
        self.noise_scaled = bool(noise_scaled)
        if noise_scaled and process is None:
            raise ValueError("process is required with noise_scaled=True (it divides by sigma_t).")
        self.process = None if process is None else _frozen(process)
        self.net = TimeMLP(dim, "scalar", hidden=hidden, embed_dim=embed_dim, key=key)
        self.scaling = _scaling(data_std, process)

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The energy (a scalar) at one point ``x`` of shape ``(dim,)`` and a scalar time ``t``."""
        base = 0.0
        if self.scaling is not None:
            x = x * self.scaling(t)
            base = 0.5 * jnp.sum(x**2)
        out = self.net(x, t)
        return base + (out / self.process.sigma(t) if self.noise_scaled else out)
