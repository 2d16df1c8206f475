"""Training: a train state, a pure step built from any loss, and a chunked, resumable ``fit``.

**The state.** A model is an Equinox module (or a plain pytree of arrays); :func:`split`
separates its trainable arrays (``params``, every floating-point array) from the rest
(``static``), and a :class:`TrainState` holds the arrays only: the parameters, the optax
optimiser's state, an exponential moving average (EMA) of the parameters and the step count.

**The step.** :func:`make_step` turns any loss ``loss(model, key, batch) -> scalar`` into a pure
``step(key, state, data) -> (state, info)``: it draws a mini-batch from ``data``, takes the
gradient of the loss, applies one optax update and one EMA update. Losses whose gradients an
optimiser needs besides the main one (an ``optax.GradientTransformationExtraArgs`` such as
Bloop's gradient surgery, :mod:`otdiff.optim`) are given as ``extra_grads={"aux_grad": aux_loss}``
and passed to ``optimizer.update`` under their names. The EMA of the weights

.. math::

    \\bar\\theta_{k+1} = \\rho_k\\,\\bar\\theta_k + (1 - \\rho_k)\\,\\theta_{k+1},\\qquad
    \\rho_k = \\min\\Big(\\rho,\\ \\frac{1 + k}{10 + k}\\Big),\\qquad \\bar\\theta_0 = \\theta_0,

(``optax.incremental_update``) has a **decay** :math:`\\rho` (0.999: the weight of the old
average; the book's other EMAs, like Bloop's, have a **rate**, the weight of the new value,
:math:`1 - \\rho`). Its warm-up :math:`(1+k)/(10+k)` keeps the average from remembering the random
initial weights (a plain :math:`\\rho = 0.999` would need thousands of steps to forget them).
Samples are drawn with the EMA weights.

**The loop.** :func:`run_steps` scans steps in one ``jax.lax.scan``; the key of global step
:math:`n` is ``fold_in(key, n)``, so the sequence of keys, hence the weights, does not depend on
how training is cut into chunks. :func:`fit` ties it together: training in compiled chunks of
``chunk_size`` steps, a checkpoint after every chunk (:mod:`otdiff.checkpoint`), a callback, and
resumption from the checkpoint (an interrupted run ends with the same weights, bit for bit, as
an uninterrupted one).

**Convolutions on the CPU.** XLA's CPU backend runs a convolution's gradient inside a ``while``
loop (what ``lax.scan`` compiles to) many times slower than the same step compiled on its own: in
our runs (``benchmarks/bench_train.py``) the digits U-Net's step took about twenty times longer
in a scan. So on the CPU, ``fit`` trains a loss whose forward pass convolves with a Python loop over
one compiled step (same keys, same update, one dispatch per step: the weights agree with the
scan's to float32 round-off); every other loss, and every loss on an accelerator, is trained by
one scan per chunk.

**Data parallelism.** With a :func:`data_parallel_mesh` (a 1-D ``jax.sharding.Mesh`` with axis
``"data"``), the data set and the state are replicated on every device and the mini-batch is
sharded along its first axis (``NamedSharding(mesh, P("data"))``): each device computes the loss
and gradient of its ``batch_size / n_devices`` points, and XLA's partitioner inserts the
all-reduce that sums the gradients, so every device applies the same update. The result is the
one-device step up to the summation order of floats. ``batch_size`` must be a multiple of the
number of devices.

Used by the diffusion models (:func:`otdiff.diffusion.dsm_loss`), energy distillation
(:func:`otdiff.diffusion.energy.distil`), the zoo's recipes and Bloop's problems
(:func:`otdiff.optim.run`).

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from otdiff import checkpoint
from otdiff._checks import (
    SHARD_AXIS,
    check_finite,
    check_in_range,
    check_int,
    check_key,
    check_mesh,
    check_positive,
    is_concrete,
)

__all__ = [
    "TrainState",
    "FitResult",
    "split",
    "init",
    "ema_update",
    "make_optimizer",
    "minibatch",
    "make_step",
    "run_steps",
    "make_chunk",
    "data_parallel_mesh",
    "shard_batch",
    "fit",
]

DATA_AXIS = SHARD_AXIS

Loss = Callable[[Any, jax.Array, Any], jax.Array]


class TrainState(NamedTuple):
    """The state of training: the trainable arrays, the optimiser's state, their EMA, the step.

    Attributes:
        params: the trainable arrays of the model (see :func:`split`).
        opt_state: the optax optimiser state.
        ema_params: the exponential moving average of ``params`` (``None`` without an EMA).
        step: the number of steps taken (an ``int32`` scalar array).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """

    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        model: the trained model (last weights).
        ema_model: the model with the EMA weights (use this one to sample), or ``None``.
        losses: the training loss of every step, shape ``(n_steps,)``.
        state: the final :class:`TrainState`.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """

    model: Any
    ema_model: Any
    losses: np.ndarray
    state: TrainState


# -- the state and the step -----------------------------------------------------------------------


def split(model) -> tuple[Any, Any]:
    """``(params, static)``: the floating-point arrays of ``model`` and everything else.

    ``eqx.combine(params, static)`` rebuilds the model.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    return eqx.partition(model, eqx.is_inexact_array)


def init(params, optimizer: optax.GradientTransformation, *, ema: bool = True) -> TrainState:
    """The :class:`TrainState` at step 0 of the trainable arrays ``params`` (EMA equal to them).

    Args:
        params: the trainable arrays (the first output of :func:`split`).
        optimizer: an optax transformation.
        ema: keep an EMA of the weights (``False``: ``ema_params`` is ``None``).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("the model has no floating-point arrays to train.")
    ema_params = jax.tree_util.tree_map(jnp.copy, params) if ema else None
    return TrainState(params, optimizer.init(params), ema_params, jnp.zeros((), jnp.int32))


def ema_update(ema_params, params, step: jax.Array, decay: float | jax.Array):
    """One EMA update :math:`\\bar\\theta \\leftarrow \\rho_k\\bar\\theta + (1-\\rho_k)\\theta`
    with :math:`\\rho_k = \\min(\\rho, (1+k)/(10+k))` at step :math:`k` (module docstring).

    The warm-up replaces an Adam-style bias correction :math:`\\bar\\theta/(1 - \\rho^k)`
    (``optax.tree_utils.tree_bias_correction``) on purpose: that one needs an average started at
    zero and divides by :math:`1 - \\rho^k`, which is exactly 0 in float32 when :math:`\\rho` lies
    within :math:`6\\times 10^{-8}` of one (``1 - 1e-8 == 1`` in float32), and the step count
    :math:`k` is exact in float32 up to :math:`2^{24}` steps. The ratio :math:`(1+k)/(10+k)` needs
    no power of :math:`\\rho` and stays in ``[0.1, 1)``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    k = jnp.asarray(step, jnp.float32)
    rho = jnp.minimum(decay, (1.0 + k) / (10.0 + k))
    return optax.incremental_update(params, ema_params, 1.0 - rho)


def make_optimizer(
    learning_rate: float, n_steps: int, *, warmup_steps: int | None = None, clip_norm: float = 1.0
) -> optax.GradientTransformation:
    """Adam with gradient clipping and a linear warm-up followed by a cosine decay to 1%.

    Args:
        learning_rate: the peak learning rate (> 0).
        n_steps: the total number of steps the schedule spans (static).
        warmup_steps: the warm-up length (default ``min(100, n_steps // 10)``).
        clip_norm: the global gradient norm above which gradients are rescaled (> 0).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    check_positive(learning_rate, "learning_rate")
    n_steps = check_int(n_steps, "n_steps", low=1)
    check_positive(clip_norm, "clip_norm")
    if warmup_steps is None:
        warmup_steps = min(100, n_steps // 10)
    warmup_steps = check_int(warmup_steps, "warmup_steps", low=0, high=n_steps)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(n_steps, warmup_steps + 1),
        end_value=0.01 * learning_rate,
    )
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adam(schedule))


def minibatch(batch_size: int) -> Callable[[jax.Array, Any], Any]:
    """``sample_batch(key, data)``: ``batch_size`` rows of ``data`` drawn uniformly with replacement.

    ``data`` is an array or a pytree of arrays with a common leading axis (static ``batch_size``).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    batch_size = check_int(batch_size, "batch_size", low=1)

    def sample_batch(key: jax.Array, data) -> Any:
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        idx = jax.random.randint(key, (batch_size,), 0, n)
        return jax.tree_util.tree_map(lambda leaf: leaf[idx], data)

    return sample_batch


def _check_mesh(mesh, batch_size: int | None) -> None:
    check_mesh(mesh, batch_size, "batch_size")


def _place(tree, mesh: Mesh | None, spec: P):
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, spec)
    if is_concrete(tree):
        return jax.device_put(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)


def shard_batch(batch, mesh: Mesh | None):
    """Lay ``batch`` (an array or pytree) out along the mesh's ``"data"`` axis (first axis split).

    Inside ``jit`` this is a sharding constraint; outside, a ``device_put``. With ``mesh=None``
    the batch is returned unchanged.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    return _place(batch, mesh, P(DATA_AXIS))


def _replicate(tree, mesh: Mesh | None):
    return _place(tree, mesh, P())


def make_step(
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    static=None,
    batch_size: int | None = None,
    sample_batch: Callable[[jax.Array, Any], Any] | None = None,
    ema_decay: float | None = 0.999,
    mesh: Mesh | None = None,
    extra_grads: Mapping[str, Loss] | None = None,
    has_aux: bool = False,
) -> Callable:
    """A pure training step ``step(key, state, data) -> (state, info)`` from any loss.

    The step draws a mini-batch (``sample_batch(key, data)``, by default :func:`minibatch`), computes
    the loss and its gradient at the model ``eqx.combine(state.params, static)`` (``state.params``
    itself if ``static`` is ``None``), the gradients of the ``extra_grads`` losses, applies one
    update of ``optimizer`` and one EMA update (module docstring). It is not jitted: wrap it in
    ``jax.jit``, or run it with :func:`run_steps` or :func:`make_chunk`.

    Args:
        loss: ``loss(model, key, batch) -> scalar``; pass the arrays it closes over with
            ``jax.tree_util.Partial`` (or make it an Equinox module) so they are traced.
        optimizer: an optax transformation (e.g. :func:`make_optimizer`).
        static: the non-trainable part of the model (the second output of :func:`split`).
        batch_size: the mini-batch size for the default sampler (static int >= 1; a multiple of
            the number of devices with a ``mesh``).
        sample_batch: ``sample_batch(key, data) -> batch``, instead of ``batch_size`` rows.
        ema_decay: the EMA decay :math:`\\rho` in ``[0, 1)``, or ``None`` for no EMA (static).
        mesh: a :func:`data_parallel_mesh` to shard the mini-batch over, or ``None``.
        extra_grads: losses (same signature) whose gradients are passed to ``optimizer.update``
            as keyword arguments under their names (an ``optax.GradientTransformationExtraArgs``).
        has_aux: the loss returns ``(value, aux)``, ``aux`` any pytree of arrays computed on the
            way (a solver's iteration count, a metric), as with ``jax.value_and_grad``'s
            ``has_aux``; only ``value`` is differentiated (static).

    Returns:
        The step; its ``info`` is a dict with the mini-batch ``"loss"``, the value of every
        extra loss under its name and, with ``has_aux``, the loss's ``"aux"``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(model, key, batch), got {loss!r}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}.")
    if sample_batch is None:
        if batch_size is None:
            raise ValueError("give batch_size (rows drawn from data) or sample_batch.")
        sample_batch = minibatch(batch_size)
    elif not callable(sample_batch):
        raise TypeError("sample_batch must be callable as sample_batch(key, data).")
    if ema_decay is not None:
        check_in_range(ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
    _check_mesh(mesh, batch_size)
    extra_grads = dict(extra_grads or {})
    for name, fn in extra_grads.items():
        if not callable(fn):
            raise TypeError(f"extra_grads[{name!r}] must be a loss function, got {fn!r}.")

    def as_model(params):
        return params if static is None else eqx.combine(params, static)

    def step(key, state: TrainState, data):
        k_batch, k_loss = jax.random.split(key)
        batch = shard_batch(sample_batch(k_batch, data), mesh)

        def value_and_grad(fn, aux=False):
            return jax.value_and_grad(lambda p: fn(as_model(p), k_loss, batch), has_aux=aux)(
                state.params
            )

        if has_aux:
            (value, aux), grads = value_and_grad(loss, True)
            info = {"loss": value, "aux": aux}
        else:
            value, grads = value_and_grad(loss)
            info = {"loss": value}
        extra = {}
        for name, fn in extra_grads.items():
            info[name], extra[name] = value_and_grad(fn)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, **extra)
        params = optax.apply_updates(state.params, updates)
        ema = None
        if ema_decay is not None:
            ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new = TrainState(params, opt_state, ema, state.step + 1)
        return _replicate(new, mesh), info

    return step


def run_steps(step: Callable, key: jax.Array, state: TrainState, data, n_steps: int):
    """``n_steps`` steps in one ``jax.lax.scan``: ``(state, infos)``, the infos stacked.

    Global step ``n`` (``state.step``) uses the key ``jax.random.fold_in(key, n)``, so running
    ``2k`` steps at once or in two calls of ``k`` from the same ``key`` gives the same keys.
    Pure and not jitted (it runs inside a caller's ``jit``, ``vmap`` or outer ``scan``).

    Args:
        step: a step from :func:`make_step`.
        key: a JAX random key.
        state: the :class:`TrainState` to start from.
        data: what the step draws its batches from.
        n_steps: the number of steps (static int >= 1).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)

    def body(s, _):
        return step(jax.random.fold_in(key, s.step), s, data)

    return jax.lax.scan(body, state, None, length=n_steps)


def make_chunk(step: Callable, n_steps: int) -> Callable:
    """``chunk(key, state, data) -> (state, infos)``: :func:`run_steps` of ``n_steps``, jitted.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)

    @jax.jit
    def chunk(key, state: TrainState, data):
        return run_steps(step, key, state, data, n_steps)

    return chunk


def data_parallel_mesh(devices=None) -> Mesh:
    """A one-axis ``Mesh`` named ``"data"`` over ``devices`` (default: every device JAX sees).

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must list at least one device.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


# -- fit ----------------------------------------------------------------------------------------


class _ChunkSpec(NamedTuple):
    """The hashable settings of one compiled chunk of :func:`fit` (static under ``filter_jit``)."""

    length: int
    n_steps: int
    learning_rate: float
    warmup_steps: int | None
    batch_size: int
    ema_decay: float | None
    mesh: Mesh | None


def _spec_step(loss, extra_grads, static, optimizer, spec: _ChunkSpec) -> Callable:
    if optimizer is None:
        optimizer = make_optimizer(spec.learning_rate, spec.n_steps, warmup_steps=spec.warmup_steps)
    return make_step(
        loss, optimizer, static=static, batch_size=spec.batch_size, ema_decay=spec.ema_decay,
        mesh=spec.mesh, extra_grads=extra_grads,
    )  # fmt: skip


@eqx.filter_jit
def _scan_chunk(key, state, data, loss, extra_grads, static, optimizer, spec: _ChunkSpec):
    # One module-level jit: fits with the same model structure, loss function and settings share
    # its compiled program (static parts are hashed; the arrays of the state, the data and the
    # loss are traced).
    step = _spec_step(loss, extra_grads, static, optimizer, spec)
    return run_steps(step, key, state, data, spec.length)


@eqx.filter_jit
def _one_step(key, state, data, loss, extra_grads, static, optimizer, spec: _ChunkSpec):
    # Global step n of fit with the key fold_in(key, n), as in run_steps, compiled on its own.
    step = _spec_step(loss, extra_grads, static, optimizer, spec)
    return step(jax.random.fold_in(key, state.step), state, data)


def _loop_chunk(key, state, data, loss, extra_grads, static, optimizer, spec: _ChunkSpec):
    # The steps of one chunk as a Python loop over one compiled step (the infos stacked as
    # run_steps stacks them): a dispatch per step instead of XLA's while loop.
    infos = []
    for _ in range(spec.length):
        state, info = _one_step(key, state, data, loss, extra_grads, static, optimizer, spec)
        infos.append(info)
    return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *infos)


_CONV_PRIMITIVES = frozenset({"conv_general_dilated"})


def _primitives(jaxpr) -> set[str]:
    """The names of the primitives of a (closed) jaxpr and of every jaxpr nested in it."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else (param,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names |= _primitives(sub)
    return names


def _scan_is_slow(key, state, data, loss, static, spec: _ChunkSpec) -> bool:
    """Whether ``fit`` should run a chunk as a loop of compiled steps instead of one ``lax.scan``.

    On the CPU, XLA runs a convolution's gradient inside a ``while`` loop (``lax.scan``) many
    times slower than the same step compiled on its own (about twenty times for the digits U-Net,
    ``benchmarks/bench_train.py``), so a loss whose forward pass convolves takes the loop on the
    CPU; every other loss, and every loss on an accelerator, keeps the scan.
    """
    devices = spec.mesh.devices.flat if spec.mesh is not None else jax.devices()[:1]
    if any(d.platform != "cpu" for d in devices):
        return False
    batch = jax.eval_shape(lambda k, d: minibatch(spec.batch_size)(k, d), key, data)
    params = state.params

    def forward(p, k, b):
        return loss(p if static is None else eqx.combine(p, static), k, b)

    jaxpr = jax.make_jaxpr(forward)(params, key, batch)
    return bool(_primitives(jaxpr) & _CONV_PRIMITIVES)


def _chunk(key, state, data, loss, extra_grads, static, optimizer, spec: _ChunkSpec):
    # fit's chunk: one compiled lax.scan (one program per model structure, loss and settings),
    # or, for a convolutional loss on the CPU, a loop over one compiled step (_scan_is_slow).
    if _scan_is_slow(key, state, data, loss, static, spec):
        return _loop_chunk(key, state, data, loss, extra_grads, static, optimizer, spec)
    return _scan_chunk(key, state, data, loss, extra_grads, static, optimizer, spec)


def _digest(tree, h) -> None:
    """Feed the leaves of ``tree`` (arrays by value, functions by name) into the hash ``h``."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array | np.ndarray | np.generic):
            arr = np.asarray(leaf)
            h.update(f"{arr.shape}{arr.dtype}".encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        elif callable(leaf):
            h.update(
                f"{getattr(leaf, '__module__', '')}.{getattr(leaf, '__qualname__', '')}".encode()
            )
        else:
            h.update(repr(leaf).encode())


def _name(fn) -> str:
    fn = getattr(fn, "func", fn)  # a jax.tree_util.Partial or functools.partial
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', '') or type(fn).__module__}.{qualname}"


def _fingerprint(key, data, config: dict, loss, extra_grads) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(jax.random.key_data(key)).tobytes())
    _digest(data, h)
    h.update(json.dumps(config, sort_keys=True).encode())
    for name, fn in [("loss", loss), *sorted(extra_grads.items())]:
        h.update(f"{name}={_name(fn)}".encode())
        _digest(fn, h)
    return h.hexdigest()[:16]


def _check_data(data):
    leaves = jax.tree_util.tree_leaves(data)
    if not leaves:
        raise ValueError("data must be an array or a pytree of arrays, got no arrays.")
    arrays = []
    for leaf in leaves:
        try:
            arr = jnp.asarray(leaf)
        except TypeError:
            raise TypeError(f"data must hold arrays, got {type(leaf).__name__}.") from None
        if arr.ndim < 1 or arr.shape[0] < 1:
            raise ValueError(
                f"data must have a leading axis of length >= 1, got shape {arr.shape}."
            )
        if jnp.issubdtype(arr.dtype, jnp.inexact):
            check_finite(arr, "data")
        arrays.append(arr)
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("data's arrays must share their leading axis (one row per example).")
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(data), arrays)


def fit(
    key: jax.Array,
    model,
    data,
    loss: Loss,
    *,
    n_steps: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    ema_decay: float | None = 0.999,
    chunk_size: int = 500,
    checkpoint_path: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
    callback: Callable[[int, float], Any] | None = None,
    extra_grads: Mapping[str, Loss] | None = None,
) -> FitResult:
    """Train ``model`` on ``data`` by minimising ``loss`` with mini-batches.

    Training runs in chunks of ``chunk_size`` steps (one compiled ``lax.scan`` each; a shorter
    last chunk compiles once more; on the CPU, a convolutional loss runs each chunk as a loop
    over one compiled step, see the module docstring). After every chunk, if
    ``checkpoint_path`` is given, the :class:`TrainState` and the losses so far are saved there
    atomically, then ``callback(step, mean_loss_of_the_chunk)`` is called. If the file already
    exists, training resumes from it: because step ``n`` always uses the key ``fold_in(key,
    n)``, an interrupted and resumed run ends with the same weights, bit for bit, as an
    uninterrupted one (same ``chunk_size``). A checkpoint written by a run with another key,
    data, loss or settings is refused.

    Args:
        key: a JAX random key (the batches and the loss's randomness derive from it).
        model: an Equinox module (or a pytree of arrays) whose floating-point arrays are trained.
        data: the training set: an array or a pytree of arrays with one row per example.
        loss: ``loss(model, key, batch) -> scalar``, e.g.
            ``jax.tree_util.Partial(otdiff.diffusion.dsm_loss, process=process)``.
        n_steps: the total number of steps (static int >= 1).
        batch_size: the mini-batch size (static).
        learning_rate: the peak learning rate of :func:`make_optimizer` (ignored with ``optimizer``).
        warmup_steps: the learning-rate warm-up of :func:`make_optimizer`.
        optimizer: an optax transformation to use instead of :func:`make_optimizer`.
        ema_decay: the EMA decay in ``[0, 1)``, or ``None`` for no EMA.
        chunk_size: steps per compiled chunk and between checkpoints (static).
        checkpoint_path: a file to save to after every chunk and to resume from.
        mesh: a :func:`data_parallel_mesh` for data-parallel training, or ``None``.
        callback: called as ``callback(step, loss)`` after every chunk.
        extra_grads: as :func:`make_step`.

    Returns:
        A :class:`FitResult` (last and EMA models, per-step losses, final state).

    Raises:
        otdiff.checkpoint.CorruptCheckpointError: if ``checkpoint_path`` holds a damaged file.
        otdiff.checkpoint.CheckpointMismatchError: if it holds the checkpoint of another run.
        ValueError, TypeError: for bad arguments, or a loss that fails on a batch of ``data``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb.
    """
    check_key(key)
    n_steps = check_int(n_steps, "n_steps", low=1)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    check_positive(learning_rate, "learning_rate")
    if ema_decay is not None:
        check_in_range(ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None.")
    if not callable(loss):
        raise TypeError(f"loss must be callable as loss(model, key, batch), got {loss!r}.")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}.")
    _check_mesh(mesh, batch_size)
    extra_grads = dict(extra_grads or {})
    data = _check_data(data)
    params, static = split(model)
    example = jax.eval_shape(lambda k, d: minibatch(batch_size)(k, d), key, data)
    try:
        out = eqx.filter_eval_shape(loss, model, key, example)
    except Exception as err:
        raise ValueError(f"loss(model, key, batch) fails on a mini-batch of data: {err}") from err
    if getattr(out, "shape", None) != ():
        raise ValueError(f"loss must return a scalar, got {getattr(out, 'shape', out)}.")

    state = init(
        params, optimizer or make_optimizer(learning_rate, n_steps), ema=ema_decay is not None
    )
    losses = np.full((n_steps,), np.nan, np.float32)
    config = {
        "n_steps": n_steps, "batch_size": batch_size, "learning_rate": float(learning_rate),
        "ema_decay": None if ema_decay is None else float(ema_decay), "chunk_size": chunk_size,
        "warmup_steps": warmup_steps, "custom_optimizer": optimizer is not None,
    }  # fmt: skip
    fingerprint = _fingerprint(key, data, config, loss, extra_grads)
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        if checkpoint_path.exists():
            meta = checkpoint.read_metadata(checkpoint_path)
            if meta.get("fingerprint") != fingerprint:
                raise checkpoint.CheckpointMismatchError(
                    f"checkpoint {checkpoint_path} was written by a different training run "
                    f"(another key, data set, loss or settings; stored {meta.get('config')}); "
                    "delete it or choose another checkpoint_path."
                )
            (state, losses), _ = checkpoint.load(checkpoint_path, (state, losses))
            losses = np.asarray(losses)

    data_dev = _replicate(data, mesh)
    state = _replicate(state, mesh)
    done = int(state.step)
    if done > n_steps:
        raise ValueError(
            f"checkpoint {checkpoint_path} is at step {done}, beyond n_steps={n_steps}."
        )
    while done < n_steps:
        length = min(chunk_size, n_steps - done)
        spec = _ChunkSpec(
            length, n_steps, float(learning_rate), warmup_steps, batch_size,
            None if ema_decay is None else float(ema_decay), mesh,
        )  # fmt: skip
        state, infos = _chunk(key, state, data_dev, loss, extra_grads, static, optimizer, spec)
        chunk_losses = np.asarray(infos["loss"])
        losses[done : done + length] = chunk_losses
        done += length
        if checkpoint_path is not None:
            checkpoint.save(
                checkpoint_path,
                (state, losses),
                {"fingerprint": fingerprint, "config": config, "step": done},
            )
        if callback is not None:
            callback(done, float(np.mean(chunk_losses)))

    state = jax.tree_util.tree_map(jnp.asarray, jax.device_get(state))
    return FitResult(
        model=eqx.combine(state.params, static),
        ema_model=None if state.ema_params is None else eqx.combine(state.ema_params, static),
        losses=losses,
        state=state,
    )
