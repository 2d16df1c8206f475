"""ReFlow: pairs from a trained flow's ODE, Simple ReFlow's switches, and cached training.

**Rectification** :cite:`liu2023flow`. A flow :math:`v` defines a deterministic coupling: its ODE
maps noise to data, :math:`x_0 = \\mathrm{ODE}_{1\\to0}(x_1)`. Training a new flow on the pairs
:math:`Q_{01} = \\mathrm{Law}(\\mathrm{ODE}_{1\\to0}(X_1), X_1)` (**backward pairs**) instead of the
independent coupling keeps both marginals (if the teacher's are right), does not increase any
convex transport cost, and straightens the paths: the new flow's one-step Euler map is close to
the coupling itself. :cite:`kim2025simplereflow` adds **forward pairs**
:math:`(x_0, \\mathrm{ODE}_{0\\to1}(x_0))` from real data (exact data marginal, teacher's errors
moved to the noise side) and **projected pairs** (the coupling moved into
:math:`\\Pi(P_0, P_1)`). Here a projection is computed within mini-batches: real data
:math:`x_0^j` and noise :math:`x_1^i` are re-paired by the entropic OT plan of the cost
:math:`\\|x_0^j - \\mathrm{ODE}_{1\\to0}(x_1^i)\\|^2` (:func:`otdiff.ot.solve`), i.e. the coupling
with exact marginals closest to the teacher's (the book's version of the paper's penalised
projection, App. D.3).

Pairs are solved accurately (:func:`otdiff.flows.solve_flow`) and cached with their NFE; flows
are trained by :func:`otdiff.train.fit` with :class:`otdiff.flows.FlowLoss`, configured by a
:class:`FlowConfig` whose Simple ReFlow switches all default to off, and cached through
:func:`otdiff.artifacts.cached` (:func:`cached_flow`). :func:`chapter_ring` builds the chapter's
2-D experiment (the shipped ``demo`` artifacts).

Taught in: book/diffusion/05_simple_reflow.ipynb
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from otdiff import artifacts, checkpoint, nn, train
from otdiff import config as _config
from otdiff._checks import (
    check_bool,
    check_callable,
    check_choice,
    check_in_range,
    check_int,
    check_key,
    check_nonnegative,
    check_points,
    check_positive,
    check_same_dim,
)
from otdiff.flows.interpolant import (
    PARAMETERISATIONS,
    TIME_DISTRIBUTIONS,
    FlowLoss,
    FlowNet,
    Pairs,
    high_pass,
    interpolate,
    sample_times,
)
from otdiff.flows.samplers import solve_flow
from otdiff.progress import Progress

__all__ = [
    "FlowConfig",
    "RING_SWITCHES",
    "ring_switch_grid",
    "ReflowPairs",
    "backward_pairs",
    "forward_pairs",
    "project_pairs",
    "mix_pairs",
    "make_flow",
    "train_flow",
    "training_pairs",
    "cached_flow",
    "cached_pairs",
    "RING_VARIANTS",
    "RingRun",
    "chapter_ring",
]


class FlowConfig(NamedTuple):
    """How to build and train one flow; every Simple ReFlow switch defaults to off.

    Attributes:
        hidden, embed_dim: the :class:`~otdiff.flows.FlowNet`'s widths and time embedding.
        parameterisation: ``"velocity"`` or ``"denoiser"``.
        n_steps, batch_size, learning_rate, ema_decay: :func:`otdiff.train.fit`'s settings.
        time_distribution: :math:`\\mathbb T`: ``"uniform"`` (off), ``"exp10"`` or ``"cosh"``.
        normalise: the loss normalisation :math:`1/(\\mathrm{sg}(\\ell) + c)` (off).
        norm_floor: :math:`c`.
        hpf_weight: the high-pass term's weight :math:`\\lambda` (0: off).
        image_side: the image side for the high-pass filter (``None`` for points).
        forward_fraction: the share of forward pairs in the training pairs (0: backward only).
        projected: re-pair by mini-batch entropic OT (:func:`project_pairs`; off).
        projection_epsilon: the projection's entropic regularisation, relative to the mean cost.
        dropout: the network's dropout rate in training (:class:`~otdiff.flows.FlowLoss`; 0: off).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    hidden: tuple = (128, 128, 128)
    embed_dim: int = 32
    parameterisation: str = "velocity"
    n_steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 2e-3
    ema_decay: float = 0.999
    time_distribution: str = "uniform"
    normalise: bool = False
    norm_floor: float = 1e-3
    hpf_weight: float = 0.0
    image_side: int | None = None
    forward_fraction: float = 0.0
    projected: bool = False
    projection_epsilon: float = 0.01
    dropout: float = 0.0

    def check(self) -> FlowConfig:
        """This config, or a ``ValueError``/``TypeError`` naming the bad field."""
        for h in self.hidden:
            check_int(h, "hidden", low=1)
        check_int(self.embed_dim, "embed_dim", low=2)
        check_choice(self.parameterisation, "parameterisation", PARAMETERISATIONS)
        check_int(self.n_steps, "n_steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_positive(self.learning_rate, "learning_rate")
        check_in_range(self.ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        check_choice(self.time_distribution, "time_distribution", TIME_DISTRIBUTIONS)
        check_bool(self.normalise, "normalise")
        check_positive(self.norm_floor, "norm_floor")
        check_nonnegative(self.hpf_weight, "hpf_weight")
        check_in_range(self.forward_fraction, "forward_fraction", 0.0, 1.0)
        check_bool(self.projected, "projected")
        check_positive(self.projection_epsilon, "projection_epsilon")
        check_in_range(self.dropout, "dropout", 0.0, 1.0, high_open=True)
        FlowLoss(**self._loss_kwargs())
        return self

    def _loss_kwargs(self) -> dict:
        return {
            "time_distribution": self.time_distribution,
            "normalise": bool(self.normalise),
            "norm_floor": float(self.norm_floor),
            "hpf_weight": float(self.hpf_weight),
            "image_side": self.image_side,
            "dropout": float(self.dropout),
        }

    def loss(self) -> FlowLoss:
        """The :class:`~otdiff.flows.FlowLoss` of these settings."""
        return FlowLoss(**self._loss_kwargs())

    def as_dict(self) -> dict:
        """The settings as a JSON-able dict (for fingerprints and metadata)."""
        d = self._asdict()
        d["hidden"] = list(self.hidden)
        return d


def _check_config(cfg: Any) -> FlowConfig:
    """``cfg`` checked (:meth:`FlowConfig.check`), or a ``TypeError`` if it is not a FlowConfig."""
    if not isinstance(cfg, FlowConfig):
        raise TypeError(f"cfg must be an otdiff.flows.FlowConfig, got {type(cfg).__name__}.")
    return cfg.check()


def _check_field(velocity) -> None:
    check_callable(velocity, "velocity", "velocity(x, t) of one point x (d,)")


def _check_pairs(pairs: Any, name: str) -> Pairs:
    if not isinstance(pairs, Pairs):
        raise TypeError(f"{name} must be otdiff.flows.Pairs, got {type(pairs).__name__}.")
    return pairs


class ReflowPairs(NamedTuple):
    """The pairs a teacher flow generates, with their cost.

    Attributes:
        backward: :class:`~otdiff.flows.Pairs` :math:`(\\mathrm{ODE}_{1\\to0}(x_1), x_1)`.
        forward: :class:`~otdiff.flows.Pairs` :math:`(x_0, \\mathrm{ODE}_{0\\to1}(x_0))`.
        nfe_backward, nfe_forward: evaluations per pair of the solves (int arrays).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    backward: Pairs
    forward: Pairs
    nfe_backward: jax.Array
    nfe_forward: jax.Array


def backward_pairs(velocity, x1: jax.Array, *, rtol: float = 1e-5, atol: float = 1e-5):
    """Backward pairs ``(Pairs(ODE_{1->0}(x1), x1), nfe)`` by the reference solve.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    x1 = check_points(x1, "x1")
    out = solve_flow(velocity, x1, t_start=1.0, t_end=0.0, rtol=rtol, atol=atol)
    return Pairs(out.x, x1), out.nfe


def forward_pairs(velocity, x0: jax.Array, *, rtol: float = 1e-5, atol: float = 1e-5):
    """Forward pairs ``(Pairs(x0, ODE_{0->1}(x0)), nfe)`` by the reference solve.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    x0 = check_points(x0, "x0")
    out = solve_flow(velocity, x0, t_start=0.0, t_end=1.0, rtol=rtol, atol=atol)
    return Pairs(x0, out.x), out.nfe


_backward_jit = eqx.filter_jit(backward_pairs)
_forward_jit = eqx.filter_jit(forward_pairs)


def project_pairs(
    key: jax.Array,
    pairs: Pairs,
    data: jax.Array,
    *,
    epsilon: float = 0.01,
    batch_size: int = 256,
) -> Pairs:
    """Backward pairs re-paired with real data by mini-batch entropic OT (module docstring).

    In each block of ``batch_size`` rows, the noise :math:`x_1^i` is paired with the real point
    :math:`x_0^{j}`, :math:`j` drawn from row :math:`i` of the entropic plan of the cost
    :math:`C_{ij} = \\|\\hat x_0^i - x_0^j\\|^2` (:math:`\\hat x_0` the teacher's image of
    :math:`x_1`), with :math:`\\varepsilon` = ``epsilon`` times the block's mean cost. Both
    marginals of the result are then exact (real data and real noise) up to the plan's
    entropic blur.

    Args:
        key: a JAX random key (the draws from the plan's rows).
        pairs: backward pairs ``(n, d)``.
        data: real data, at least ``n`` rows ``(m, d)`` (the first ``n`` are used).
        epsilon: the relative regularisation (> 0, dynamic).
        batch_size: the block size (static; ``n`` must be a multiple of it).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    key = check_key(key)
    _check_pairs(pairs, "pairs")
    data = check_points(data, "data")
    n, d = pairs.x0.shape
    batch_size = check_int(batch_size, "batch_size", low=2)
    check_positive(epsilon, "epsilon")
    if data.shape[0] < n or data.shape[1] != d:
        raise ValueError(f"data must hold at least {n} points of dimension {d}, got {data.shape}.")
    if n % batch_size:
        raise ValueError(
            f"the number of pairs ({n}) must be a multiple of batch_size={batch_size}."
        )
    blocks = n // batch_size
    gen = pairs.x0.reshape(blocks, batch_size, d)
    real = data[:n].reshape(blocks, batch_size, d)
    x0 = _project_blocks(jax.random.split(key, blocks), gen, real, jnp.asarray(epsilon, gen.dtype))
    return Pairs(x0.reshape(n, d), pairs.x1)


@jax.jit
def _project_blocks(keys, gen, real, epsilon):
    # One compiled program per block shape: vmap over blocks of the Sinkhorn solve and the draws.
    from otdiff import ot

    m = gen.shape[1]
    w = jnp.full(m, 1.0 / m, gen.dtype)

    def one(k, g, r):
        cost = jnp.sum((g[:, None, :] - r[None, :, :]) ** 2, axis=-1)
        out = ot.solve_core(g, r, w, w, epsilon * jnp.mean(cost), 1e-3, return_coupling=True)
        logits = jnp.log(jnp.maximum(out.coupling, 1e-30))
        return r[jax.random.categorical(k, logits, axis=-1)]

    return jax.vmap(one)(keys, gen, real)


def mix_pairs(forward: Pairs, backward: Pairs, forward_fraction: float) -> Pairs:
    """``round(f n)`` forward pairs then ``n - round(f n)`` backward ones (``n`` backward rows).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_pairs(forward, "forward")
    _check_pairs(backward, "backward")
    check_same_dim(forward.x0, backward.x0, ("forward", "backward"))
    check_in_range(forward_fraction, "forward_fraction", 0.0, 1.0)
    n = backward.x0.shape[0]
    k = int(round(float(forward_fraction) * n))
    if forward.x0.shape[0] < k:
        raise ValueError(
            f"forward_fraction={forward_fraction} needs {k} forward pairs, got {forward.x0.shape[0]}."
        )
    return Pairs(
        jnp.concatenate([forward.x0[:k], backward.x0[k:]]),
        jnp.concatenate([forward.x1[:k], backward.x1[k:]]),
    )


def make_flow(key: jax.Array, dim: int, cfg: FlowConfig) -> FlowNet:
    """An untrained :class:`~otdiff.flows.FlowNet` of dimension ``dim`` with ``cfg``'s network.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    cfg = _check_config(cfg)
    return FlowNet(
        dim, key=key, hidden=tuple(cfg.hidden), embed_dim=cfg.embed_dim,
        parameterisation=cfg.parameterisation,
    )  # fmt: skip


def train_flow(key: jax.Array, model: FlowNet, data, cfg: FlowConfig, **fit_kwargs):
    """Train ``model`` on ``data`` (points: 1-RF; :class:`Pairs`: ReFlow) with :func:`otdiff.train.fit`.

    Returns :func:`otdiff.train.fit`'s :class:`~otdiff.train.FitResult`.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    cfg = _check_config(cfg)
    return train.fit(
        key, model, data, cfg.loss(), n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, ema_decay=cfg.ema_decay, **fit_kwargs,
    )  # fmt: skip


def training_pairs(key: jax.Array, pairs: ReflowPairs, data: jax.Array, cfg: FlowConfig) -> Pairs:
    """The training coupling of ``cfg``: backward pairs, projected if ``cfg.projected``, with a
    share ``cfg.forward_fraction`` replaced by forward pairs.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    key = check_key(key)
    if not isinstance(pairs, ReflowPairs):
        raise TypeError(f"pairs must be otdiff.flows.ReflowPairs, got {type(pairs).__name__}.")
    data = check_points(data, "data")
    check_same_dim(pairs.backward.x0, data, ("pairs", "data"))
    cfg = _check_config(cfg)
    backward = pairs.backward
    if cfg.projected:
        backward = project_pairs(key, backward, data, epsilon=cfg.projection_epsilon)
    return mix_pairs(pairs.forward, backward, cfg.forward_fraction)


def _code() -> list:
    # The code that determines the cached flows and pairs, for their fingerprints.
    return [
        FlowNet, FlowLoss, Pairs, sample_times, interpolate, high_pass, nn.TimeMLP,
        nn.TimeEmbedding, train.fit, train.make_step, train.run_steps, train.make_optimizer,
        train.ema_update, solve_flow, backward_pairs, forward_pairs, project_pairs, _project_blocks,
        mix_pairs,
        training_pairs, make_flow, train_flow, cached_flow, cached_pairs,
    ]  # fmt: skip


def cached_flow(
    name: str,
    seed: int,
    dim: int,
    cfg: FlowConfig,
    *,
    data_inputs: Any,
    make_data: Callable[[], Any],
    init: Callable[[], FlowNet] | None = None,
    init_inputs: Any = None,
    verbose: bool = True,
    storage_dtype: str | None = None,
) -> tuple[FlowNet, artifacts.Artifact]:
    """A flow trained by :func:`train_flow`, shipped, cached or trained now (:func:`otdiff.artifacts.cached`).

    Args:
        name: the artifact's name.
        seed: the training seed (initial weights ``fold_in(key(seed), 0)``, batches ``1``).
        dim: the points' dimension.
        cfg: the :class:`FlowConfig`.
        data_inputs: what determines the training data (for the fingerprint; not the arrays).
        make_data: ``make_data() -> data``, called only when training.
        init: ``init() -> FlowNet`` to start from (e.g. the teacher, as ReFlow does), or ``None``
            for fresh weights.
        init_inputs: what determines ``init``'s weights (for the fingerprint).
        verbose: print a line when training.
        storage_dtype: how a shipped file stores the weights.

    Returns:
        ``(flow, artifact)``: the EMA weights and the artifact (its ``tree["losses"]``).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    cfg = _check_config(cfg)
    seed = check_int(seed, "seed", low=0)
    key = jax.random.key(seed)
    params_like, static = train.split(make_flow(jax.random.fold_in(key, 0), dim, cfg))
    like = {"params": params_like, "losses": jax.ShapeDtypeStruct((cfg.n_steps,), np.float32)}
    inputs = {
        "config": cfg.as_dict(), "dim": dim, "data": data_inputs, "init": init_inputs,
        "code": _code(), "version": 1,
    }  # fmt: skip

    def build(progress):
        model = make_flow(jax.random.fold_in(key, 0), dim, cfg) if init is None else init()
        if verbose:
            print(
                f"otdiff.flows: training {name!r} (seed {seed}, {cfg.n_steps} steps)...", flush=True
            )
        res = train_flow(
            jax.random.fold_in(key, 1), model, make_data(), cfg, checkpoint_path=progress
        )
        tree = {
            "params": train.split(res.ema_model)[0],
            "losses": np.asarray(res.losses, np.float32),
        }
        return tree, {"config": cfg.as_dict()}

    art = artifacts.cached(
        name, seed, inputs, build=build, like=like, verbose=verbose, storage_dtype=storage_dtype
    )
    return eqx.combine(art.tree["params"], static), art


def _pairs_progress(name: str, seed: int, n_pairs: int, chunk_size: int, kinds: str) -> Progress:
    """A bar over the pairs (updated after each solved chunk) that states at its start the
    duration of the shipped build of the same artifact (this seed, else any shipped seed),
    scaled to ``n_pairs``, or says that it is not known yet."""
    expected, basis = None, None
    shipped = [artifacts.shipped_path(name, seed)]
    shipped += sorted(artifacts.shipped_dir().glob(f"{name}-seed*.ckpt"))
    for path in shipped:
        try:
            meta = checkpoint.read_metadata(path)
        except (OSError, ValueError, checkpoint.CorruptCheckpointError):
            continue
        if meta.get("build_seconds") and meta.get("n_pairs"):
            expected = float(meta["build_seconds"]) * n_pairs / float(meta["n_pairs"])
            basis = f"as the shipped build on {meta.get('platform', 'its machine')}"
            break
    return Progress(
        n_pairs, f"otdiff.flows: solving {kinds} pairs for {name!r} (seed {seed}, chunks of "
        f"{chunk_size})", unit="pair", expected_seconds=expected, basis=basis,
    )  # fmt: skip


def cached_pairs(
    name: str,
    seed: int,
    velocity,
    *,
    teacher_inputs: Any,
    data: jax.Array,
    n_pairs: int,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    chunk_size: int = 4096,
    with_forward: bool = True,
    verbose: bool = True,
    storage_dtype: str | None = None,
) -> ReflowPairs:
    """Backward and forward pairs of a teacher flow, shipped, cached or solved now.

    Backward pairs start from ``n_pairs`` noise points drawn from ``fold_in(key(seed), 2)``;
    forward pairs from the first ``n_pairs`` rows of ``data``. Solved in chunks of
    ``chunk_size`` points by :func:`otdiff.flows.solve_flow`.

    Args:
        name, seed: the artifact's name and seed.
        velocity: the teacher's per-point field (flow convention).
        teacher_inputs: what determines the teacher (for the fingerprint).
        data: real data ``(m, d)``, ``m >= n_pairs``.
        n_pairs: the number of pairs of each kind (static).
        rtol, atol: the solver's tolerances.
        chunk_size: points per solve (static).
        with_forward: also solve the forward pairs (``False``: ``forward`` holds no rows and
            ``nfe_forward`` is 0; half the cost).
        verbose: show a progress bar over the pairs while solving (:class:`otdiff.progress.Progress`,
            one update per chunk, the expected duration stated at its start when a shipped build
            of the same artifact measured it).
        storage_dtype: how a shipped file stores the pairs.

    Returns:
        :class:`ReflowPairs` (``nfe_*``: the mean evaluations per pair over the chunks).

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    _check_field(velocity)
    seed = check_int(seed, "seed", low=0)
    n_pairs = check_int(n_pairs, "n_pairs", low=1)
    check_positive(rtol, "rtol")
    check_positive(atol, "atol")
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    data = check_points(data, "data")
    if data.shape[0] < n_pairs:
        raise ValueError(f"data must hold at least n_pairs={n_pairs} rows, got {data.shape[0]}.")
    with_forward = check_bool(with_forward, "with_forward")
    d = data.shape[1]
    pts = jax.ShapeDtypeStruct((n_pairs, d), np.float32)
    fpts = jax.ShapeDtypeStruct((n_pairs if with_forward else 0, d), np.float32)
    like = {
        "backward": {"x0": pts, "x1": pts}, "forward": {"x0": fpts, "x1": fpts},
        "nfe": jax.ShapeDtypeStruct((2,), np.float32),
    }  # fmt: skip
    data = jnp.asarray(data[:n_pairs], jnp.float32)
    inputs = {
        "teacher": teacher_inputs, "data": np.asarray(data), "n_pairs": n_pairs, "rtol": rtol,
        "atol": atol, "code": _code(), "version": 1, "with_forward": with_forward,
    }  # fmt: skip
    if not with_forward:
        del inputs["data"]

    def build(progress):
        kinds = "backward and forward" if with_forward else "backward"
        bar = _pairs_progress(name, seed, n_pairs, chunk_size, kinds) if verbose else None
        x1 = jax.random.normal(jax.random.fold_in(jax.random.key(seed), 2), (n_pairs, d))
        # the velocity is an argument (a module's arrays traced): one compilation for every
        # teacher of the same structure
        back = functools.partial(_backward_jit, velocity, rtol=rtol, atol=atol)
        fwd = functools.partial(_forward_jit, velocity, rtol=rtol, atol=atol)
        outs_b, outs_f, nfe_b, nfe_f = [], [], [], []
        try:
            for i in range(0, n_pairs, chunk_size):
                pb, nb = back(x1[i : i + chunk_size])
                outs_b.append(pb)
                nfe_b.append(float(nb))
                if with_forward:
                    pf, nf = fwd(data[i : i + chunk_size])
                    outs_f.append(pf.x1)
                    nfe_f.append(float(nf))
                if bar is not None:
                    bar.advance(min(chunk_size, n_pairs - i))
        finally:
            if bar is not None:
                bar.close()
        fwd_x0 = np.asarray(data) if with_forward else np.zeros((0, d), np.float32)
        fwd_x1 = np.concatenate(outs_f) if with_forward else np.zeros((0, d), np.float32)
        tree = {
            "backward": {"x0": np.concatenate([p.x0 for p in outs_b]), "x1": np.asarray(x1)},
            "forward": {"x0": fwd_x0, "x1": fwd_x1},
            "nfe": np.asarray([np.mean(nfe_b), np.mean(nfe_f) if nfe_f else 0.0], np.float32),
        }
        return tree, {"n_pairs": n_pairs}

    art = artifacts.cached(
        name, seed, inputs, build=build, like=like, verbose=verbose, storage_dtype=storage_dtype
    )
    t = art.tree
    return ReflowPairs(
        Pairs(jnp.asarray(t["backward"]["x0"]), jnp.asarray(t["backward"]["x1"])),
        Pairs(jnp.asarray(t["forward"]["x0"]), jnp.asarray(t["forward"]["x1"])),
        jnp.asarray(t["nfe"][0]),
        jnp.asarray(t["nfe"][1]),
    )


# -- the chapter's 2-D experiment -------------------------------------------------------------------

#: The training variants of the ring experiment: 2-RF (plain ReFlow) and Simple ReFlow's switches
#: on top of it, as :class:`FlowConfig` overrides.
RING_VARIANTS: dict[str, dict] = {
    "2-RF": {},
    "+ norm": {"normalise": True},
    "+ norm + 10^t": {"normalise": True, "time_distribution": "exp10"},
    "+ norm + 10^t + fwd": {
        "normalise": True,
        "time_distribution": "exp10",
        "forward_fraction": 0.5,
    },
    "+ norm + 10^t + proj": {"normalise": True, "time_distribution": "exp10", "projected": True},
    "+ norm + 10^t, dropout 0.1": {
        "normalise": True,
        "time_distribution": "exp10",
        "dropout": 0.1,
    },
}

#: The switches of :func:`ring_switch_grid`, each with its off and on values: every combination is
#: one trained student (16).
RING_SWITCHES: dict[str, tuple] = {
    "time_distribution": ("uniform", "exp10"),
    "normalise": (False, True),
    "forward_fraction": (0.0, 0.5),
    "dropout": (0.0, 0.1),
}


class RingRun(NamedTuple):
    """One seed of the ring experiment.

    Attributes:
        seed: the seed.
        teacher: the 1-rectified flow trained on the independent coupling.
        pairs: its :class:`ReflowPairs`.
        students: the ReFlow students by variant name (:data:`RING_VARIANTS`).
        data: the teacher's training data.
        held_out: fresh data for the metrics.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    seed: int
    teacher: FlowNet
    pairs: ReflowPairs
    students: dict
    data: jax.Array
    held_out: jax.Array


def _ring_settings(scale: str) -> dict:
    choose = functools.partial(_config.choose, scale=scale)
    return {
        "n_data": choose(demo=20_000, full=100_000),
        "n_pairs": choose(demo=4096, full=65_536),
        "n_ablation": choose(demo=2, full=10),
        "teacher": FlowConfig(hidden=(64, 64, 64), n_steps=choose(demo=2000, full=20_000)),
        "student": FlowConfig(hidden=(64, 64, 64), n_steps=choose(demo=1000, full=10_000)),
    }


def chapter_ring(
    *, scale: str | None = None, seeds=None, variants=None, verbose: bool = True
) -> list[RingRun]:
    """The ring experiment of the chapter: 1-RF teachers, their pairs and ReFlow students.

    Under the preset ``scale`` (default the active one): the ring of eight Gaussians
    (:func:`otdiff.data.ring`), ``20 000`` training points (``100 000`` under ``full``), a
    :class:`FlowNet` with three hidden layers of 64 trained ``2000`` steps (``20 000``) as the
    1-RF teacher, ``4096`` backward and forward pairs (``65 536``) solved to tolerance
    :math:`10^{-4}`, and ReFlow students trained from the teacher's weights for ``1000`` steps
    (``10 000``): plain 2-RF at every seed, every variant of :data:`RING_VARIANTS` at the first
    ``2`` seeds (all ``10``); seeds ``config.seeds(5)`` (``10`` under ``full``). The ``demo``
    artifacts are shipped in float16 (measured: the one-step energy distances of the students
    move by less than the spread between seeds).

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        seeds: the seeds (default above).
        variants: names from :data:`RING_VARIANTS` (default all).
        verbose: print a line when training.

    Returns:
        A list of :class:`RingRun`, one per seed.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    scale = _config.active_scale() if scale is None else scale
    s = _ring_settings(scale)
    seeds = _config.seeds(_config.choose(demo=5, full=10, scale=scale)) if seeds is None else seeds
    variants = list(RING_VARIANTS) if variants is None else list(variants)
    for v in variants:
        check_choice(v, "variants", RING_VARIANTS)
    runs = []
    for seed in seeds:
        names = variants if len(runs) < s["n_ablation"] else [v for v in variants if v == "2-RF"]
        overrides = {v: RING_VARIANTS[v] for v in names}
        runs.append(_ring_run(check_int(seed, "seed", low=0), s, overrides, verbose))
    return runs


def ring_switch_grid(
    *, scale: str | None = None, seed: int = 0, verbose: bool = True
) -> tuple[RingRun, dict]:
    """The ring's ReFlow students for every combination of the switches of :data:`RING_SWITCHES`.

    The teacher, pairs and training settings are those of :func:`chapter_ring` at ``seed``
    (default 0, whatever ``OTDIFF_SEED_OFFSET`` says: the grid is what the chapter's explorer
    shows, shipped for the ``demo`` preset, and no claim rests on it); the 16 students share
    their artifacts with :func:`chapter_ring`'s ablation where the settings coincide.

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        seed: the seed.
        verbose: print a line when training.

    Returns:
        ``(run, students)``: the seed's :class:`RingRun` (its ``students`` empty) and a dict from
        ``(time_distribution, normalise, forward_fraction, dropout)`` to the trained
        :class:`~otdiff.flows.FlowNet`.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """
    import itertools

    scale = _config.active_scale() if scale is None else scale
    s = _ring_settings(scale)
    seed = check_int(seed, "seed", low=0)
    combos = list(itertools.product(*RING_SWITCHES.values()))
    overrides = {c: dict(zip(RING_SWITCHES, c, strict=True)) for c in combos}
    run = _ring_run(seed, s, overrides, verbose)
    return run._replace(students={}), run.students


def _ring_run(seed: int, s: dict, overrides: dict, verbose: bool) -> RingRun:
    # One seed of the ring: the teacher, its pairs, and one student per FlowConfig override.
    from otdiff.data import ring

    law = ring()
    base = jax.random.key(seed)
    data = law.sample(jax.random.fold_in(base, 17), s["n_data"])
    held_out = law.sample(jax.random.fold_in(base, 18), 4096)
    data_inputs = {"law": "ring()", "n": s["n_data"], "key": "fold_in(seed, 17)"}
    teacher, _ = cached_flow(
        "reflow_ring_1rf", seed, 2, s["teacher"], data_inputs=data_inputs,
        make_data=lambda data=data: data, verbose=verbose, storage_dtype="float16",
    )  # fmt: skip
    teacher_inputs = {"config": s["teacher"].as_dict(), "data": data_inputs, "seed": seed}
    fresh = law.sample(jax.random.fold_in(base, 19), s["n_pairs"])
    pairs = cached_pairs(
        "reflow_ring_pairs", seed, teacher, teacher_inputs=teacher_inputs, data=fresh,
        n_pairs=s["n_pairs"], rtol=1e-4, atol=1e-4, verbose=verbose, storage_dtype="float16",
    )  # fmt: skip
    pair_inputs = {"teacher": teacher_inputs, "n_pairs": s["n_pairs"], "key": "fold_in(seed, 2)"}
    students = {}
    for label, over in overrides.items():
        cfg = s["student"]._replace(**over)
        students[label] = cached_flow(
            f"reflow_ring_{artifacts.fingerprint(cfg.as_dict())}", seed, 2, cfg,
            data_inputs=pair_inputs,
            make_data=lambda cfg=cfg: training_pairs(
                jax.random.fold_in(base, 3), pairs, fresh, cfg
            ),
            init=lambda: teacher, init_inputs=teacher_inputs, verbose=verbose,
            storage_dtype="float16",
        )[0]  # fmt: skip
    return RingRun(seed, teacher, pairs, students, data, held_out)
