"""Energy-parameterised diffusion models, their distillation, and Feynman-Kac SMC on energies.

**Diffusion as a sequence of energy-based models.** Write the noised marginals of a diffusion as
:math:`p_t(x) = e^{-E_t(x)}/Z_t`; the score is then :math:`\\nabla\\log p_t = -\\nabla_x E_t`.
An energy model learns a scalar :math:`E_\\theta(x, t)` (:class:`EnergyMLP`) and uses
:math:`-\\nabla_x E_\\theta` as its score (:func:`energy_score`). Unlike a score, an energy can
*weigh* a point, not only push it: that is what SMC needs :cite:`thornton2025composition`.

**Distillation** (:func:`distillation_loss`, :func:`distil`). Rather than training the energy by
denoising score matching, fit its gradient to a pretrained score :math:`s_\\phi`:

.. math::

    \\mathcal L(\\theta) = \\mathbb E_{t,\\,x_0,\\,\\varepsilon}\\ \\sigma_t^2\\,
        \\big\\|\\nabla_x E_\\theta(x_t, t) + s_\\phi(x_t, t)\\big\\|^2,\\qquad
    x_t = \\alpha_t x_0 + \\sigma_t\\varepsilon .

At each :math:`t` its minimiser over all energies is the *conservative part* of
:math:`-s_\\phi` in :math:`L^2(p_t)`, the weighted Helmholtz decomposition
:math:`s_\\phi = -\\nabla E^\\star + r` with :math:`\\nabla\\cdot(p_t r) = 0`; replacing
:math:`s_\\phi` by :math:`-\\nabla E^\\star` leaves the marginals of the diffusion unchanged.

**Feynman-Kac model** (:func:`fk_model`, :func:`smc_sample`). For a combined energy
:math:`\\bar E(x, t) = \\sum_j w_j E_j(x, t)` (a product :math:`\\prod_j p_j^{w_j}`; one energy
with :math:`w = \\beta` is low-temperature sampling :math:`p^\\beta`), take the intermediate targets
:math:`\\pi_k \\propto e^{-\\bar E(\\cdot, t_k)}` on the grid :math:`t_K = t_{\\max} > \\dots >
t_0 = t_{\\min}`, the proposal :math:`M_k` one Euler-Maruyama step of the reverse SDE with the
combined score :math:`-\\nabla\\bar E`, and as backward kernel :math:`L_k` the exact forward
transition of the VP SDE. The potentials are

.. math::

    G_K(x) = \\frac{e^{-\\bar E(x, t_K)}}{\\mathcal N(x; 0, I)},\\qquad
    G_k(x, x') = \\frac{e^{-\\bar E(x', t_{k-1})}\\,L_k(x\\mid x')}
                     {e^{-\\bar E(x, t_k)}\\,M_k(x'\\mid x)} ,

so SMC targets :math:`\\pi_0 \\propto \\prod_j p_{j, t_{\\min}}^{w_j}` exactly as the number of
particles grows, whatever the discretisation; additive constants of the energies that depend on
:math:`t` only cancel. ``t_stop`` stops the reweighting (:math:`G_k = 1`) for
:math:`t_{k-1} < t_{\\rm stop}`: a distilled energy does not pin down the offset between
separated modes at small noise (its gradient is only fitted where :math:`p_t` has mass). Each step
costs one ``value_and_grad`` of the energy (the gradient drives the next proposal, the value
weighs): about one extra backward pass over plain sampling.

Temperatures, composition weights, ``t_min``, ``t_stop`` and the ESS threshold are dynamic
(a slider never recompiles); the number of particles, steps and the dimension are static.

Taught in: book/diffusion/02_energy_smc.ipynb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from otdiff import smc
from otdiff._checks import (
    check_in_range,
    check_int,
    check_nonnegative,
    check_points,
    check_positive,
    is_concrete,
)
from otdiff.diffusion.losses import stratified_times
from otdiff.diffusion.networks import InputScaling, TimeEmbedding, time_mlp_apply, time_mlp_layers
from otdiff.diffusion.samplers import gaussian_log_prob, time_grid

__all__ = [
    "EnergyMLP",
    "MixtureEnergy",
    "ComposedEnergy",
    "EnergyParticles",
    "EnergySMCResult",
    "DistilResult",
    "energy_score",
    "compose",
    "combined_score",
    "distillation_loss",
    "distil",
    "relative_score_error",
    "fk_model",
    "smc_sample",
    "tempered_smc",
    "product_smc",
    "check_temperature",
    "check_composition_weights",
]

EnergyFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


# -- checks ---------------------------------------------------------------------------------------


def check_temperature(beta: Any, name: str = "beta") -> Any:
    """An inverse temperature :math:`\\beta` must be a finite number > 0."""
    return check_positive(beta, name)


def check_composition_weights(weights: Any, n: int) -> jax.Array:
    """Composition weights: shape ``(n,)``, finite, non-negative, not all zero."""
    arr = jnp.asarray(weights, dtype=jnp.result_type(float))
    if arr.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), one per energy, got {arr.shape}.")
    if is_concrete(arr):
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)) or np.any(a < 0) or not np.any(a > 0):
            raise ValueError(f"weights must be finite, >= 0 and not all zero, got {a.tolist()}.")
    return arr


# -- energy models --------------------------------------------------------------------------------


class EnergyMLP(eqx.Module):
    """A scalar energy :math:`E_\\theta(x, t)` for points of dimension ``dim``.

    .. math::

        E_\\theta(x, t) = \\tfrac12\\,c_t^2\\|x\\|^2 + f_\\theta(c_t x, t),\\qquad
        c_t = \\big(\\alpha_t^2 v + \\sigma_t^2\\big)^{-1/2},

    with :math:`f_\\theta` a SiLU MLP with a scalar output (smooth activations: the score is its
    gradient, and a ReLU network's gradient is piecewise constant). With ``data_std``
    (:math:`\\sqrt v`), the first term is the energy of the Gaussian with the data's variance noised
    to time :math:`t` (the right tails), and the network sees inputs of unit scale; without it
    :math:`c_t = 1` and the quadratic term is dropped. With ``noise_scaled`` the network term is
    divided by :math:`\\sigma_t` (so that :math:`\\sigma_t\\nabla E_\\theta`, a noise prediction,
    is of order one); on the chapter's 2-D mixtures this amplified the errors of the energy
    offsets between separated modes at small :math:`t`, so it is off by default.

    Args:
        dim: the data dimension (static).
        hidden: hidden widths (static).
        embed_dim: the size of the time embedding (static).
        key: a JAX random key.
        data_std: per-coordinate standard deviation of the data, or ``None``.
        sde: the VP SDE (used by the scaling, and for :math:`\\sigma_t`; default ``vp_linear()``).
        noise_scaled: divide the network term by :math:`\\sigma_t` (static).
    """

    dim: int = eqx.field(static=True)
    embedding: TimeEmbedding
    layers: tuple[eqx.nn.Linear, ...]
    time_projections: tuple[eqx.nn.Linear, ...]
    output: eqx.nn.Linear
    scaling: InputScaling | None
    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    noise_scaled: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (128, 128, 128),
        embed_dim: int = 32,
        key: jax.Array,
        data_std: float | None = None,
        sde=None,
        noise_scaled: bool = False,
    ):
        dim = check_int(dim, "dim", low=1)
        self.noise_scaled = bool(noise_scaled)
        if sde is not None and getattr(sde, "kind", None) != "linear":
            raise ValueError("EnergyMLP supports the linear VP schedule only (sde.kind).")
        self.beta_min = 0.1 if sde is None else float(sde.beta_min)
        self.beta_max = 20.0 if sde is None else float(sde.beta_max)
        self.dim = dim
        self.embedding, self.layers, self.time_projections, self.output = time_mlp_layers(
            dim, hidden, embed_dim, "scalar", key=key
        )
        self.scaling = (
            None if data_std is None else InputScaling(data_std, self.beta_min, self.beta_max)
        )

    def _sigma(self, t):
        b = self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2
        return jnp.sqrt(-jnp.expm1(-b))

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The energy (a scalar) at one point ``x`` of shape ``(dim,)`` and a scalar time ``t``."""
        if x.shape != (self.dim,):
            raise ValueError(
                f"EnergyMLP expects one point of shape ({self.dim},), got {x.shape}; vmap over a batch."
            )
        base = 0.0
        if self.scaling is not None:
            x = x * self.scaling(t)
            base = 0.5 * jnp.sum(x**2)
        out = time_mlp_apply(self, x, t)
        return base + (out / self._sigma(t) if self.noise_scaled else out)


class MixtureEnergy(eqx.Module):
    """The exact energy :math:`E_t = -\\log p_t` of a Gaussian mixture noised by a VP SDE.

    The analytic counterpart of a distilled energy (normalised: :math:`Z_t = 1`).

    Attributes:
        mixture: an :class:`otdiff.data.GaussianMixture`.
        sde: the :class:`otdiff.diffusion.VPSDE`.
    """

    mixture: Any
    sde: Any

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return -self.mixture.noised(self.sde, t).log_prob(x)


class ComposedEnergy(eqx.Module):
    """:math:`\\bar E(x, t) = \\sum_j w_j E_j(x, t)`: the energy of :math:`\\prod_j p_j^{w_j}`.

    Attributes:
        energies: a tuple of per-point energies ``E_j(x, t)`` (Equinox modules or functions).
        weights: ``(J,)`` weights (dynamic).
    """

    energies: tuple
    weights: jax.Array

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        values = jnp.stack([e(x, t) for e in self.energies])
        return jnp.sum(self.weights * values)


def compose(energies: EnergyFn | Sequence[EnergyFn], weights=None) -> ComposedEnergy:
    """Combine energies with weights (default: all ones, the product of the densities).

    A single energy with weight :math:`\\beta` is the tempered density :math:`p^\\beta`.

    Raises:
        ValueError: for weights of the wrong shape, negative, non-finite or all zero.
    """
    energies = (energies,) if callable(energies) else tuple(energies)
    if not energies or not all(callable(e) for e in energies):
        raise TypeError("energies must be a callable or a non-empty sequence of callables.")
    if weights is None:
        weights = jnp.ones((len(energies),))
    weights = jnp.atleast_1d(jnp.asarray(weights, dtype=jnp.result_type(float)))
    return ComposedEnergy(energies, check_composition_weights(weights, len(energies)))


def energy_score(energy: EnergyFn) -> ScoreFn:
    """The score of an energy model, :math:`s(x, t) = -\\nabla_x E(x, t)` (per point)."""
    grad = jax.grad(energy)

    def score(x: jax.Array, t: jax.Array) -> jax.Array:
        return -grad(x, t)

    return score


def combined_score(scores: ScoreFn | Sequence[ScoreFn], weights=None) -> ScoreFn:
    """The *naive* composed score :math:`\\sum_j w_j s_j(x, t)` (what score-only models can do).

    It is the score of :math:`\\prod_j p_{j,t}^{w_j}` at every :math:`t`, which is *not* the
    noised version of :math:`\\prod_j p_{j,0}^{w_j}`: sampling the reverse SDE with it is biased.
    """
    scores = (scores,) if callable(scores) else tuple(scores)
    if weights is None:
        weights = jnp.ones((len(scores),))
    weights = jnp.atleast_1d(jnp.asarray(weights, dtype=jnp.result_type(float)))
    weights = check_composition_weights(weights, len(scores))

    def score(x: jax.Array, t: jax.Array) -> jax.Array:
        return sum(w * s(x, t) for w, s in zip(weights, scores, strict=True))

    return score


# -- distillation ---------------------------------------------------------------------------------


def _noised_batch(key, sde, x0, t_min, off_support, box):
    n, d = x0.shape
    k_t, k_eps, k_box = jax.random.split(key, 3)
    t = stratified_times(k_t, n, t_min)
    xt, _ = sde.sample_marginal(k_eps, x0, t)
    n_off = int(round(off_support * n))
    if n_off:
        if box is None:  # interpolate: noised points on segments between two data points
            k_lam, k_perm, k_noise = jax.random.split(k_box, 3)
            lam = jax.random.uniform(k_lam, (n_off, 1), xt.dtype)
            partner = x0[jax.random.permutation(k_perm, n)[:n_off]]
            mid = lam * x0[:n_off] + (1.0 - lam) * partner
            moved, _ = sde.sample_marginal(k_noise, mid, t[:n_off])
        else:  # uniform points in the box [-box, box]^d
            moved = jax.random.uniform(k_box, (n_off, d), xt.dtype, -1.0, 1.0) * box
        xt = xt.at[:n_off].set(moved)
    return xt, t


def distillation_loss(
    energy: EnergyFn,
    teacher: ScoreFn,
    sde,
    key: jax.Array,
    x0: jax.Array,
    *,
    t_min: float = 1e-3,
    off_support: float = 0.0,
    box: float | None = None,
) -> jax.Array:
    """The distillation loss: fit :math:`-\\nabla_x E` to the teacher's score (conservative part).

    .. math:: \\mathcal L = \\frac1{nd}\\sum_i \\sigma_{t_i}^2\\,
        \\big\\|\\nabla_x E(x_{t_i}, t_i) + s_\\phi(x_{t_i}, t_i)\\big\\|^2 ,

    with stratified times on :math:`[t_{\\min}, 1]` and :math:`x_{t_i}` drawn from the forward
    marginal of the data point :math:`x_0^i`. Its minimiser is the :math:`L^2(p_t)` projection of
    the teacher onto gradient fields (module docstring).

    Args:
        energy: the energy ``E(x, t)`` on one point (an Equinox module; differentiable in its arrays).
        teacher: the pretrained score ``s(x, t)`` on one point.
        sde: the VP SDE.
        key: a JAX random key.
        x0: clean data, ``(n, d)``.
        t_min: the smallest time, in ``(0, 1)``.
        off_support: the fraction of the batch (static, in ``[0, 1)``) replaced by points off
            the data's support, so that the gradient is also fitted between separated modes
            (where :math:`p_t` has almost no mass, and where the energy offsets between modes
            are decided): by default *interpolated* points, :math:`x_t` drawn from the forward
            marginal of :math:`\\lambda x_0^i + (1-\\lambda)x_0^j` with
            :math:`\\lambda\\sim\\mathcal U[0, 1]` and a random partner :math:`j`.
        box: if given, use uniform points in the box :math:`[-b, b]^d` instead.
    """
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    check_in_range(off_support, "off_support", 0.0, 1.0, high_open=True)
    if box is not None:
        check_positive(box, "box")
    if x0.ndim != 2:
        raise ValueError(f"x0 must have shape (n, d), got shape {x0.shape}.")
    xt, t = _noised_batch(key, sde, x0, t_min, off_support, box)
    grad_e = jax.vmap(jax.grad(energy))(xt, t)
    target = jax.vmap(teacher)(xt, t)
    sigma2 = sde.sigma(t)[:, None] ** 2
    return jnp.mean(sigma2 * (grad_e + target) ** 2)


class DistilResult(NamedTuple):
    """What :func:`distil` returns: the trained ``energy`` and the loss of every step."""

    energy: Any
    losses: jax.Array


def distil(
    key: jax.Array,
    energy,
    teacher: ScoreFn,
    data: jax.Array,
    sde,
    *,
    n_steps: int,
    batch_size: int = 256,
    learning_rate: float = 2e-3,
    t_min: float = 1e-3,
    off_support: float = 0.0,
    box: float | None = None,
) -> DistilResult:
    """Train an energy model by distillation from a teacher score, in one jitted ``lax.scan``.

    Adam with gradient clipping, a short warm-up and a cosine decay
    (:func:`otdiff.diffusion.training.make_optimizer`); mini-batches of ``data`` drawn with
    replacement; the loss is :func:`distillation_loss`.

    Args:
        key: a JAX random key.
        energy: the initial energy model (an Equinox module).
        teacher: the teacher score ``s(x, t)`` on one point (a function or module; not trained).
        data: the clean training points, ``(N, d)``.
        sde: the VP SDE.
        n_steps: the number of Adam steps (static).
        batch_size: the mini-batch size (static).
        learning_rate: the peak learning rate (> 0).
        t_min, off_support, box: as :func:`distillation_loss`.
    """
    from otdiff.diffusion.training import make_optimizer

    n_steps = check_int(n_steps, "n_steps", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    check_positive(learning_rate, "learning_rate")
    check_in_range(off_support, "off_support", 0.0, 1.0, high_open=True)
    data = check_points(data, "data")
    optimizer = make_optimizer(learning_rate, n_steps)
    params, static = eqx.partition(energy, eqx.is_inexact_array)
    teacher_params, teacher_static = eqx.partition(teacher, eqx.is_array)

    @jax.jit
    def train(key, params, teacher_params, data):
        teach = eqx.combine(teacher_params, teacher_static)

        def loss_fn(p, k, batch):
            return distillation_loss(
                eqx.combine(p, static),
                teach,
                sde,
                k,
                batch,
                t_min=t_min,
                off_support=off_support,
                box=box,
            )

        def body(carry, k):
            p, opt_state = carry
            k_idx, k_loss = jax.random.split(k)
            batch = data[jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])]
            loss, grads = jax.value_and_grad(loss_fn)(p, k_loss, batch)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), loss

        (p, _), losses = jax.lax.scan(
            body, (params, optimizer.init(params)), jax.random.split(key, n_steps)
        )
        return p, losses

    params, losses = train(key, params, teacher_params, data)
    return DistilResult(eqx.combine(params, static), losses)


def relative_score_error(
    score: ScoreFn,
    reference: ScoreFn,
    sde,
    key: jax.Array,
    x0: jax.Array,
    *,
    t_min: float = 1e-3,
) -> jax.Array:
    """The :math:`\\sigma_t^2`-weighted relative error of a score against a reference, on the data.

    .. math:: \\sqrt{\\frac{\\sum_i \\sigma_{t_i}^2\\|s(x_{t_i}, t_i) - r(x_{t_i}, t_i)\\|^2}
        {\\sum_i \\sigma_{t_i}^2\\|r(x_{t_i}, t_i)\\|^2}}

    with stratified times and :math:`x_{t_i}` drawn from the forward marginal of ``x0[i]``: the
    relative error of the implied noise predictions :math:`-\\sigma_t s` on noised data.
    """
    x0 = check_points(x0, "x0")
    xt, t = _noised_batch(key, sde, x0, t_min, 0.0, None)
    a = jax.vmap(score)(xt, t)
    b = jax.vmap(reference)(xt, t)
    w = sde.sigma(t)[:, None] ** 2
    return jnp.sqrt(jnp.sum(w * (a - b) ** 2) / jnp.sum(w * b**2))


# -- the Feynman-Kac model --------------------------------------------------------------------------


class EnergyParticles(NamedTuple):
    """Particles of the energy FK model at time :math:`t_k`.

    Attributes:
        x: positions, ``(n, d)``.
        energy: :math:`\\bar E(x, t_k)`, ``(n,)`` (the value weighs).
        grad: :math:`\\nabla_x\\bar E(x, t_k)`, ``(n, d)`` (the gradient drives the next move).
    """

    x: jax.Array
    energy: jax.Array
    grad: jax.Array


def fk_model(
    energy: EnergyFn,
    sde,
    dim: int,
    n_steps: int,
    *,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    t_stop: float = 0.0,
) -> smc.FeynmanKac:
    """The Feynman-Kac model of :cite:`thornton2025composition` for the energy ``energy``.

    Targets :math:`\\pi_k \\propto e^{-\\bar E(\\cdot, t_k)}`, Euler-Maruyama proposals with the
    score :math:`-\\nabla\\bar E`,

    .. math:: M_k(x'\\mid x) = \\mathcal N\\Big(x';\\ x + \\big[\\tfrac12\\beta(t_k)x
        - \\beta(t_k)\\nabla\\bar E(x, t_k)\\big]\\Delta_k,\\ \\beta(t_k)\\Delta_k I\\Big),

    (:func:`otdiff.diffusion.reverse_kernel` with that score), the exact forward kernel
    :math:`L_k(x\\mid x') = \\mathcal N(x; \\tfrac{\\alpha_{t_k}}{\\alpha_{t_{k-1}}}x',
    (1 - \\tfrac{\\alpha_{t_k}^2}{\\alpha_{t_{k-1}}^2})I)` (``sde.transition``) as backward
    kernel, and the potentials of the module docstring (all in log space).

    Args:
        energy: the combined energy :math:`\\bar E(x, t)` on one point (see :func:`compose`).
        sde: the VP SDE.
        dim: the dimension (static).
        n_steps: the number of reverse steps :math:`K` (static).
        t_min, t_max: the time interval (dynamic).
        t_stop: no reweighting below this time (dynamic, ``>= 0``).

    Returns:
        An :class:`otdiff.smc.FeynmanKac` whose particles are :class:`EnergyParticles`.
    """
    dim = check_int(dim, "dim", low=1)
    ts = time_grid(n_steps, t_min, t_max)
    check_nonnegative(t_stop, "t_stop")
    value_and_grad = jax.vmap(jax.value_and_grad(energy), in_axes=(0, None))

    def init(key, n):
        x = sde.prior_sample(key, (n, dim))
        e, g = value_and_grad(x, ts[0])
        return EnergyParticles(x, e, g), -e - sde.prior_log_prob(x)

    def step(key, p: EnergyParticles, inputs):
        t, t_next = inputs
        dt = t - t_next
        beta = sde.beta(t)
        mean = p.x + (0.5 * beta * p.x - beta * p.grad) * dt
        std = jnp.sqrt(beta * dt)
        x_new = mean + std * jax.random.normal(key, p.x.shape, p.x.dtype)
        e_new, g_new = value_and_grad(x_new, t_next)
        log_m = gaussian_log_prob(x_new, mean, std)
        back_mean, back_std = sde.transition(x_new, t_next, t)
        log_l = gaussian_log_prob(p.x, back_mean, back_std)
        log_g = (p.energy - e_new) + (log_l - log_m)
        log_g = jnp.where(t_next >= t_stop, log_g, 0.0)
        return EnergyParticles(x_new, e_new, g_new), log_g

    return smc.FeynmanKac(init, step, (ts[:-1], ts[1:]))


class EnergySMCResult(NamedTuple):
    """What :func:`smc_sample` returns.

    Attributes:
        x: the final particles at :math:`t_{\\min}`, ``(n, d)``.
        log_weights: their normalised log-weights, ``(n,)``.
        samples: ``x`` resampled (systematic) to equal weights, ``(n, d)``.
        ess: ``(K + 1,)`` the effective sample size after each weighting.
        resampled: ``(K,)`` whether each step resampled.
        log_evidence: :math:`\\log\\hat Z`, an estimate of
            :math:`\\log\\int e^{-\\bar E(x, t_{\\min})}dx` (the integral of the target).
    """

    x: jax.Array
    log_weights: jax.Array
    samples: jax.Array
    ess: jax.Array
    resampled: jax.Array
    log_evidence: jax.Array


@eqx.filter_jit
def _smc_sample(key, energy, sde, n_particles, dim, n_steps, t_min, t_stop, ess_threshold, method):
    model = fk_model(energy, sde, dim, n_steps, t_min=t_min, t_stop=t_stop)
    k_run, k_final = jax.random.split(key)
    out = smc.run(k_run, model, n_particles, ess_threshold=ess_threshold, method=method)
    idx = smc.resample_indices(k_final, out.log_weights, method=method)
    x = out.particles.x
    return EnergySMCResult(x, out.log_weights, x[idx], out.ess, out.resampled, out.log_evidence)


def smc_sample(
    key: jax.Array,
    energy: EnergyFn,
    sde,
    n_particles: int,
    dim: int,
    *,
    n_steps: int = 100,
    t_min: float = 1e-3,
    t_stop: float = 0.0,
    ess_threshold: float = 0.5,
    method: str = "systematic",
) -> EnergySMCResult:
    """SMC sampling of :math:`\\pi_0 \\propto e^{-\\bar E(\\cdot, t_{\\min})}` (jitted; see :func:`fk_model`).

    Args:
        key: a JAX random key.
        energy: the combined energy (:func:`compose`), an Equinox module or a function.
        sde: the VP SDE.
        n_particles: the number of particles (static int >= 1).
        dim: the dimension (static).
        n_steps: the number of reverse steps (static).
        t_min: the final time (dynamic).
        t_stop: no reweighting below this time (dynamic).
        ess_threshold: resample when :math:`\\mathrm{ESS} < \\kappa n`, :math:`\\kappa\\in(0, 1]`.
        method: the resampling scheme (static).

    Raises:
        ValueError: for ``n_particles < 1``, an ``ess_threshold`` outside ``(0, 1]``, a negative
            ``t_stop``, or NaN weights (outside ``jit``).
    """
    n_particles = check_int(n_particles, "n_particles", low=1)
    dim = check_int(dim, "dim", low=1)
    n_steps = check_int(n_steps, "n_steps", low=1)
    smc.check_ess_threshold(ess_threshold)
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    check_nonnegative(t_stop, "t_stop")
    if method not in smc.RESAMPLING:
        raise ValueError(f"method must be one of {smc.RESAMPLING}, got {method!r}.")
    f = jnp.result_type(float)
    out = _smc_sample(
        key,
        energy,
        sde,
        n_particles,
        dim,
        n_steps,
        jnp.asarray(t_min, f),
        jnp.asarray(t_stop, f),
        jnp.asarray(ess_threshold, f),
        method,
    )
    smc._check_result(smc.SMCResult(None, out.log_weights, None, None, None, None))
    return out


def tempered_smc(
    key: jax.Array, energy: EnergyFn, sde, n_particles: int, dim: int, *, beta: float, **kwargs
) -> EnergySMCResult:
    """Low-temperature sampling of :math:`p^\\beta` with SMC (``beta`` dynamic, > 0).

    Raises:
        ValueError: for ``beta <= 0`` (and as :func:`smc_sample`).
    """
    check_temperature(beta)
    return smc_sample(key, compose(energy, jnp.atleast_1d(beta)), sde, n_particles, dim, **kwargs)


def product_smc(
    key: jax.Array,
    energies: Sequence[EnergyFn],
    sde,
    n_particles: int,
    dim: int,
    *,
    weights=None,
    **kwargs,
) -> EnergySMCResult:
    """Composition ("AND"): SMC sampling of :math:`\\prod_j p_j^{w_j}` (weights dynamic, >= 0)."""
    return smc_sample(key, compose(energies, weights), sde, n_particles, dim, **kwargs)
