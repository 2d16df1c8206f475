"""Training noise predictors: a pure optax step with an EMA of the weights, data parallelism, checkpoints.

**The step.** A model is an Equinox module; :func:`split_model` separates its trainable arrays
(``params``, every floating-point array) from the rest (``static``), and a :class:`TrainState`
holds the arrays only. :func:`make_train_step` returns a pure ``step(key, state, data) ->
(state, loss)``: it draws a mini-batch of row indices of ``data`` (shape ``(N, d)``), evaluates
the denoising score-matching loss :func:`otdiff.diffusion.dsm_loss` (:cite:`ho2020denoising`,
:cite:`song2021scorebased`), takes one optax step and updates an exponential moving average
(EMA) of the weights,

.. math::

    \\bar\\theta_{k+1} = \\rho_k\\,\\bar\\theta_k + (1 - \\rho_k)\\,\\theta_{k+1},\\qquad
    \\rho_k = \\min\\Big(\\rho,\\ \\frac{1 + k}{10 + k}\\Big),\\qquad \\bar\\theta_0 = \\theta_0,

whose warm-up :math:`(1+k)/(10+k)` keeps the average from remembering the random initial weights
(a plain :math:`\\rho = 0.999` would need thousands of steps to forget them). Samples are drawn
with the EMA weights. :func:`make_train_chunk` scans ``k`` steps in one ``jax.lax.scan``; the key
of global step :math:`n` is ``fold_in(key, n)``, so the sequence of keys, hence the weights, does
not depend on how training is cut into chunks.

**Data parallelism.** With a :func:`data_parallel_mesh` (a 1-D ``jax.sharding.Mesh`` with axis
``"data"``), the data set and the state are replicated on every device and the mini-batch is
sharded along its first axis (``NamedSharding(mesh, P("data"))``): each device computes the loss
and gradient of its ``batch_size / n_devices`` points, and XLA's partitioner inserts the
all-reduce that sums the gradients, so every device applies the same update. The result is the
one-device step up to the summation order of floats. ``batch_size`` must be a multiple of the
number of devices.

**Checkpoints.** :func:`save_checkpoint` writes one file: the 10 bytes ``OTDIFFCKP1``, the length
of a JSON header as an 8-byte little-endian integer, the header (the caller's metadata, the
shape and dtype of every leaf, the payload's length and SHA-256), then the payload, the leaves in
:func:`equinox.tree_serialise_leaves`'s format (``.npy`` records; no pickle). It writes a
temporary file in the same folder, ``fsync``\\ s it and renames it over the target
(``os.replace``), so a reader sees the old file or the new one, never half of one.
:func:`load_checkpoint` checks the magic, the header and the hash, and raises
:class:`CorruptCheckpointError` naming the file when any of them fails.

:func:`fit` ties it together: training in chunks, a checkpoint after every chunk, and resumption
from the checkpoint (an interrupted run ends with the same weights, bit for bit, as an
uninterrupted one).

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from otdiff._checks import (
    check_in_range,
    check_int,
    check_points,
    check_positive,
    is_concrete,
)
from otdiff.diffusion.losses import WEIGHTINGS, dsm_loss

__all__ = [
    "TrainState",
    "FitResult",
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "split_model",
    "init_train_state",
    "ema_update",
    "make_optimizer",
    "make_train_step",
    "make_train_chunk",
    "data_parallel_mesh",
    "shard_batch",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_metadata",
]

DATA_AXIS = "data"
_MAGIC = b"OTDIFFCKP1"
_FORMAT_VERSION = 1


class TrainState(NamedTuple):
    """The state of training: the arrays of the model, the optimiser's state, their EMA, the step.

    Attributes:
        params: the trainable arrays of the model (see :func:`split_model`).
        opt_state: the optax optimiser state.
        ema_params: the exponential moving average of ``params``.
        step: the number of steps taken (an ``int32`` scalar array).
    """

    params: Any
    opt_state: Any
    ema_params: Any
    step: jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
        model: the trained model (last weights).
        ema_model: the model with the EMA weights (use this one to sample).
        losses: the training loss of every step, shape ``(n_steps,)``.
        state: the final :class:`TrainState`.
    """

    model: Any
    ema_model: Any
    losses: np.ndarray
    state: TrainState


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted or not a checkpoint at all."""


class CheckpointMismatchError(ValueError):
    """A sound checkpoint file that belongs to another model or another training run."""


# -- the pure step ------------------------------------------------------------------------------


def split_model(model) -> tuple[Any, Any]:
    """``(params, static)``: the floating-point arrays of ``model`` and everything else.

    ``eqx.combine(params, static)`` rebuilds the model.
    """
    return eqx.partition(model, eqx.is_inexact_array)


def init_train_state(model, optimizer: optax.GradientTransformation) -> TrainState:
    """The initial :class:`TrainState` of ``model`` (step 0, EMA equal to the weights)."""
    params, _ = split_model(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("model has no floating-point arrays to train.")
    ema = jax.tree_util.tree_map(jnp.copy, params)
    return TrainState(params, optimizer.init(params), ema, jnp.zeros((), jnp.int32))


def ema_update(ema_params, params, step: jax.Array, decay: float):
    """One EMA update :math:`\\bar\\theta \\leftarrow \\rho_k\\bar\\theta + (1-\\rho_k)\\theta`
    with :math:`\\rho_k = \\min(\\rho, (1+k)/(10+k))` at step :math:`k` (see the module docstring)."""
    k = jnp.asarray(step, jnp.float32)
    rho = jnp.minimum(decay, (1.0 + k) / (10.0 + k))
    return jax.tree_util.tree_map(lambda e, p: rho * e + (1.0 - rho) * p, ema_params, params)


def make_optimizer(
    learning_rate: float, n_steps: int, *, warmup_steps: int | None = None, clip_norm: float = 1.0
) -> optax.GradientTransformation:
    """Adam with gradient clipping and a linear warm-up followed by a cosine decay to 1%.

    Args:
        learning_rate: the peak learning rate (> 0).
        n_steps: the total number of steps the schedule spans (static).
        warmup_steps: the warm-up length (default ``min(100, n_steps // 10)``).
        clip_norm: the global gradient norm above which gradients are rescaled (> 0).
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


def _check_mesh(mesh, batch_size: int) -> None:
    if mesh is None:
        return
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see data_parallel_mesh), got {mesh!r}.")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {DATA_AXIS!r}, got {mesh.axis_names}.")
    n_dev = mesh.shape[DATA_AXIS]
    if batch_size % n_dev:
        raise ValueError(
            f"batch_size must be a multiple of the number of devices on the mesh's "
            f"{DATA_AXIS!r} axis ({n_dev}), got {batch_size}."
        )


def shard_batch(batch: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Lay ``batch`` out along the mesh's ``"data"`` axis (its first axis split across devices).

    Inside ``jit`` this is a sharding constraint; outside, a ``device_put``. With ``mesh=None``
    the batch is returned unchanged.
    """
    if mesh is None:
        return batch
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if is_concrete(batch):
        return jax.device_put(batch, sharding)
    return jax.lax.with_sharding_constraint(batch, sharding)


def _replicate(tree, mesh: Mesh | None):
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())
    if is_concrete(tree):
        return jax.device_put(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)


def make_train_step(
    static,
    sde,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    ema_decay: float = 0.999,
    weighting: str = "eps",
    t_min: float = 1e-3,
    mesh: Mesh | None = None,
) -> Callable[[jax.Array, TrainState, jax.Array], tuple[TrainState, jax.Array]]:
    """A pure training step ``step(key, state, data) -> (state, loss)``.

    The step draws ``batch_size`` row indices of ``data`` uniformly (with replacement), computes
    :func:`~otdiff.diffusion.dsm_loss` of the model ``eqx.combine(state.params, static)``, applies
    one update of ``optimizer`` and one EMA update (see the module docstring). It is not jitted:
    wrap it in ``jax.jit`` or use :func:`make_train_chunk`.

    Args:
        static: the non-trainable part of the model (the second output of :func:`split_model`).
        sde: the forward :class:`~otdiff.diffusion.VPSDE`.
        optimizer: an optax transformation (e.g. :func:`make_optimizer`).
        batch_size: the mini-batch size (static int >= 1; a multiple of the number of devices
            with a ``mesh``).
        ema_decay: the EMA decay :math:`\\rho` in ``[0, 1)``.
        weighting: ``"eps"`` or ``"likelihood"`` (static; see ``dsm_loss``).
        t_min: the smallest training time, in ``(0, 1)``.
        mesh: a :func:`data_parallel_mesh` to shard the mini-batch over, or ``None``.
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    check_in_range(ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
    check_in_range(t_min, "t_min", 0.0, 1.0, low_open=True, high_open=True)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax GradientTransformation, got {optimizer!r}.")
    _check_mesh(mesh, batch_size)

    def loss_fn(params, key, batch):
        return dsm_loss(
            eqx.combine(params, static), sde, key, batch, weighting=weighting, t_min=t_min
        )

    def step(key, state: TrainState, data):
        k_idx, k_loss = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch_size,), 0, data.shape[0])
        batch = shard_batch(data[idx], mesh)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, k_loss, batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new = TrainState(params, opt_state, ema, state.step + 1)
        return _replicate(new, mesh), loss

    return step


def _scan_steps(step: Callable, key, state: TrainState, data, n_steps: int):
    def body(s, _):
        return step(jax.random.fold_in(key, s.step), s, data)

    return jax.lax.scan(body, state, None, length=n_steps)


def make_train_chunk(step: Callable, n_steps: int) -> Callable:
    """``chunk(key, state, data) -> (state, losses)``: ``n_steps`` steps in one jitted ``lax.scan``.

    Global step ``n`` uses the key ``jax.random.fold_in(key, n)``, so running ``2k`` steps in one
    chunk or in two chunks of ``k`` from the same ``key`` gives the same keys.

    Args:
        step: a step from :func:`make_train_step`.
        n_steps: the chunk length (static int >= 1).
    """
    n_steps = check_int(n_steps, "n_steps", low=1)

    @jax.jit
    def chunk(key, state: TrainState, data):
        return _scan_steps(step, key, state, data, n_steps)

    return chunk


class _ChunkConfig(NamedTuple):
    """The hashable settings of :func:`fit`'s default chunk (a static argument of its jit)."""

    length: int
    n_steps: int
    learning_rate: float
    warmup_steps: int | None
    batch_size: int
    ema_decay: float
    weighting: str
    t_min: float


@eqx.filter_jit
def _default_chunk(key, state, data, static, sde, mesh, cfg: _ChunkConfig):
    # One module-level jit: fits with the same model structure and settings share its compiled
    # program (the model's static part, the mesh and ``cfg`` are hashed; arrays are traced).
    opt = make_optimizer(cfg.learning_rate, cfg.n_steps, warmup_steps=cfg.warmup_steps)
    step = make_train_step(
        static, sde, opt, batch_size=cfg.batch_size, ema_decay=cfg.ema_decay,
        weighting=cfg.weighting, t_min=cfg.t_min, mesh=mesh,
    )  # fmt: skip
    return _scan_steps(step, key, state, data, cfg.length)


def data_parallel_mesh(devices=None) -> Mesh:
    """A one-axis ``Mesh`` named ``"data"`` over ``devices`` (default: every device JAX sees)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must list at least one device.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


# -- checkpoints --------------------------------------------------------------------------------


def _leaf_specs(tree) -> list[list]:
    specs = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array | np.ndarray | np.generic | bool | int | float | complex):
            arr = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
            specs.append([list(arr.shape), str(arr.dtype)])
    return specs


def save_checkpoint(path: str | os.PathLike, tree, metadata: dict | None = None) -> Path:
    """Write the leaves of ``tree`` and a JSON-able ``metadata`` dict to ``path``, atomically.

    The format is described in the module docstring (no pickle). Missing parent folders are
    created. Returns the path.
    """
    path = Path(path)
    metadata = {} if metadata is None else dict(metadata)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, jax.device_get(tree))
    payload = buf.getvalue()
    header = {
        "format": _FORMAT_VERSION,
        "metadata": metadata,
        "leaves": _leaf_specs(tree),
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    try:
        header_bytes = json.dumps(header, sort_keys=True).encode()
    except TypeError as err:
        raise TypeError(f"metadata must be JSON-serialisable: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (best effort; not every platform allows it)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _read(path: Path) -> tuple[dict, bytes]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}.")
    data = path.read_bytes()

    def corrupt(why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"checkpoint file {path} is corrupt or truncated ({why}); delete it to start over."
        )

    if not data.startswith(_MAGIC):
        raise corrupt("it does not start with the otdiff checkpoint marker")
    start = len(_MAGIC) + 8
    if len(data) < start:
        raise corrupt("the header is cut short")
    (n_header,) = struct.unpack("<Q", data[len(_MAGIC) : start])
    if len(data) < start + n_header:
        raise corrupt("the header is cut short")
    try:
        header = json.loads(data[start : start + n_header])
        expected_hash, n_payload = header["sha256"], header["payload_bytes"]
    except (ValueError, KeyError, TypeError):
        raise corrupt("the header is not valid") from None
    payload = data[start + n_header :]
    if len(payload) != n_payload:
        raise corrupt(f"{len(payload)} payload bytes where {n_payload} were written")
    if hashlib.sha256(payload).hexdigest() != expected_hash:
        raise corrupt("the payload's SHA-256 does not match the header")
    return header, payload


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict stored in the checkpoint at ``path`` (after checking the file's hash).

    Raises:
        FileNotFoundError: if there is no file.
        CorruptCheckpointError: if the file is truncated or corrupted.
    """
    return _read(Path(path))[0]["metadata"]


def load_checkpoint(path: str | os.PathLike, like) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tree, metadata)``.

    Args:
        path: the file.
        like: a pytree of the same structure, shapes and dtypes (e.g. a freshly initialised
            state); its leaves are replaced by the stored ones.

    Raises:
        FileNotFoundError: if there is no file.
        CorruptCheckpointError: if the file is truncated or corrupted.
        CheckpointMismatchError: if the stored leaves do not match ``like``'s shapes and dtypes.
    """
    path = Path(path)
    header, payload = _read(path)
    stored, wanted = header["leaves"], _leaf_specs(like)
    if stored != wanted:
        diff = next(
            (
                f"leaf {i}: stored {s}, expected {w}"
                for i, (s, w) in enumerate(zip(stored, wanted, strict=False))
                if s != w
            ),
            f"{len(stored)} leaves stored, {len(wanted)} expected",
        )
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match the expected structure ({diff})."
        )
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as err:  # the hash matched, so this is a format problem
        raise CorruptCheckpointError(f"checkpoint file {path} could not be decoded: {err}") from err
    return tree, header["metadata"]


# -- fit ----------------------------------------------------------------------------------------


def _fingerprint(key, data: np.ndarray, config: dict) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(jax.random.key_data(key)).tobytes())
    h.update(str(data.shape).encode() + str(data.dtype).encode())
    h.update(np.ascontiguousarray(data).tobytes())
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


def fit(
    key: jax.Array,
    model,
    data,
    sde,
    *,
    n_steps: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    ema_decay: float = 0.999,
    weighting: str = "eps",
    t_min: float = 1e-3,
    chunk_size: int = 500,
    warmup_steps: int | None = None,
    optimizer: optax.GradientTransformation | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
    callback: Callable[[int, float], Any] | None = None,
) -> FitResult:
    """Train the noise predictor ``model`` on ``data`` by denoising score matching.

    Training runs in chunks of ``chunk_size`` steps (one compiled ``lax.scan`` each; a shorter
    last chunk compiles once more). After every chunk, if ``checkpoint_path`` is given, the
    :class:`TrainState` and the losses so far are saved there atomically, then ``callback(step,
    mean_loss_of_the_chunk)`` is called. If the file already exists, training resumes from it:
    because step ``n`` always uses the key ``fold_in(key, n)``, an interrupted and resumed run
    ends with the same weights, bit for bit, as an uninterrupted one (same ``chunk_size``). A
    checkpoint written by a run with another key, data or settings is refused.

    Args:
        key: a JAX random key (the batches, times and noises of every step derive from it).
        model: an Equinox noise predictor ``model(x, t) -> eps_hat`` on one point of shape ``(d,)``.
        data: the training set, shape ``(N, d)`` (cast to ``float32``).
        sde: the forward :class:`~otdiff.diffusion.VPSDE`.
        n_steps: the total number of steps (static int >= 1).
        batch_size: the mini-batch size (static).
        learning_rate: the peak learning rate of :func:`make_optimizer` (ignored with ``optimizer``).
        ema_decay: the EMA decay in ``[0, 1)``.
        weighting: ``"eps"`` or ``"likelihood"``.
        t_min: the smallest training time.
        chunk_size: steps per compiled chunk and between checkpoints (static).
        warmup_steps: the learning-rate warm-up of :func:`make_optimizer`.
        optimizer: an optax transformation to use instead of :func:`make_optimizer`.
        checkpoint_path: a file to save to after every chunk and to resume from.
        mesh: a :func:`data_parallel_mesh` for data-parallel training, or ``None``.
        callback: called as ``callback(step, loss)`` after every chunk.

    Returns:
        A :class:`FitResult` (last and EMA models, per-step losses, final state).

    Raises:
        CorruptCheckpointError: if ``checkpoint_path`` holds a damaged file.
        CheckpointMismatchError: if it holds the checkpoint of a different run.
        ValueError, TypeError: for bad arguments.
    """
    n_steps = check_int(n_steps, "n_steps", low=1)
    chunk_size = check_int(chunk_size, "chunk_size", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    check_positive(learning_rate, "learning_rate")
    data = np.asarray(check_points(data, "data"), np.float32)
    if not isinstance(model, eqx.Module) and not callable(model):
        raise TypeError(f"model must be an Equinox module, got {type(model).__name__}.")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable or None.")
    d = data.shape[1]
    try:
        out = eqx.filter_eval_shape(model, jax.ShapeDtypeStruct((d,), jnp.float32), jnp.zeros(()))
    except Exception as err:
        raise ValueError(
            f"model cannot be called on one point of shape ({d},) of data: {err}"
        ) from err
    if getattr(out, "shape", None) != (d,):
        raise ValueError(
            f"model(x, t) must return shape ({d},) like x, got {getattr(out, 'shape', out)}."
        )
    custom_optimizer = optimizer is not None
    if optimizer is None:
        optimizer = make_optimizer(learning_rate, n_steps, warmup_steps=warmup_steps)

    params, static = split_model(model)
    step = make_train_step(
        static, sde, optimizer, batch_size=batch_size, ema_decay=ema_decay,
        weighting=weighting, t_min=t_min, mesh=mesh,
    )  # fmt: skip
    state = init_train_state(model, optimizer)
    losses = np.full((n_steps,), np.nan, np.float32)

    config = {
        "n_steps": n_steps, "batch_size": batch_size, "learning_rate": float(learning_rate),
        "ema_decay": float(ema_decay), "weighting": weighting, "t_min": float(t_min),
        "chunk_size": chunk_size, "warmup_steps": warmup_steps,
        "custom_optimizer": custom_optimizer,
    }  # fmt: skip
    fingerprint = _fingerprint(key, data, config)
    if checkpoint_path is not None:
        checkpoint_path = Path(checkpoint_path)
        if checkpoint_path.exists():
            meta = read_checkpoint_metadata(checkpoint_path)
            if meta.get("fingerprint") != fingerprint:
                raise CheckpointMismatchError(
                    f"checkpoint {checkpoint_path} was written by a different training run "
                    f"(another key, data set or settings; stored {meta.get('config')}); "
                    "delete it or choose another checkpoint_path."
                )
            (state, losses), _ = load_checkpoint(checkpoint_path, (state, losses))
            losses = np.asarray(losses)

    data_dev = _replicate(jnp.asarray(data), mesh)
    state = _replicate(state, mesh)
    chunks: dict[int, Callable] = {}
    done = int(state.step)
    if done > n_steps:
        raise ValueError(
            f"checkpoint {checkpoint_path} is at step {done}, beyond n_steps={n_steps}."
        )
    while done < n_steps:
        length = min(chunk_size, n_steps - done)
        if custom_optimizer:
            if length not in chunks:
                chunks[length] = make_train_chunk(step, length)
            state, chunk_losses = chunks[length](key, state, data_dev)
        else:
            cfg = _ChunkConfig(
                length, n_steps, float(learning_rate), warmup_steps, batch_size,
                float(ema_decay), weighting, float(t_min),
            )  # fmt: skip
            state, chunk_losses = _default_chunk(key, state, data_dev, static, sde, mesh, cfg)
        chunk_losses = np.asarray(chunk_losses)
        losses[done : done + length] = chunk_losses
        done += length
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                (state, losses),
                {"fingerprint": fingerprint, "config": config, "step": done},
            )
        if callback is not None:
            callback(done, float(np.mean(chunk_losses)))

    state = jax.device_get(state)
    state = TrainState(*jax.tree_util.tree_map(jnp.asarray, tuple(state)))
    return FitResult(
        model=eqx.combine(state.params, static),
        ema_model=eqx.combine(state.ema_params, static),
        losses=losses,
        state=state,
    )
