"""Trained models shared between chapters, trained on first use and cached on disk.

::

    from otdiff import zoo
    from otdiff.diffusion import sample

    ring = zoo.load("ring8")  # trains once (about ten seconds), then loads from the cache
    x = sample(key, ring.score, ring.process, 1000, 2).x

A :class:`Recipe` says how to build a model and how to train it: its data, its network, its
forward process (if any), its loss and the training settings of :func:`otdiff.train.fit`. So any
model the book trains with a loss on data (a noise predictor, a velocity field for a flow, a
class-conditional model for composition, a score on the sphere) is cached the same way.
:func:`load` trains it deterministically from a seed (the data, the initial weights and every
training batch derive from it), and stores the EMA weights in the cache folder
``otdiff.config.cache_dir() / "zoo"`` (``$OTDIFF_CACHE_DIR`` overrides the root). The file name
holds the recipe's name, the seed and a short hash of the recipe (its settings and the source of
its functions), so changing a recipe retrains instead of loading stale weights.

Safety of the cache:

* files are written atomically (temporary file, ``fsync``, rename) and carry a SHA-256 of their
  contents; a half-written or corrupted file is reported in a warning and rebuilt;
* a lock file (``filelock``) serialises check-train-save, so two notebooks asking for the same
  model at once train it once and never write the file twice at the same time;
* an interrupted training run resumes from its last checkpoint (``<file>.train.ckpt``, written
  after every chunk of steps) and ends with the same weights as an uninterrupted one;
* nothing is pickled (see :mod:`otdiff.checkpoint`).

Models: ``"ring8"`` (the 2-D ring of eight Gaussians :func:`otdiff.data.ring`, an MLP, linear VP
process) and ``"digits"`` (the 8x8 digits of :func:`otdiff.data.load_digits` as 64-d vectors in
[-1, 1], an MLP, cosine VP process). Both are noise predictors trained by denoising score
matching :cite:`ho2020denoising`, :cite:`song2021scorebased`.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from otdiff import checkpoint, config, train
from otdiff._checks import check_choice, check_int, check_positive

__all__ = [
    "PARAMETERISATIONS",
    "Recipe",
    "ZooModel",
    "load",
    "register",
    "available",
    "recipe",
    "clear",
    "zoo_dir",
    "training_losses",
]

#: What a model's output means: a noise prediction (``"eps"``, the model has a ``score``) or
#: anything else (``"other"``: a velocity field, an energy, a classifier...).
PARAMETERISATIONS = ("eps", "other")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to build one zoo model and how to train it.

    Attributes:
        name: the model's name (letters, digits, ``_``; used in file names).
        make_data: ``make_data(seed) -> data``, the training set (an array ``(N, ...)`` or a
            pytree of arrays with one row per example).
        make_model: ``make_model(key, process) -> module``, the untrained model (``process`` is
            ``make_process()``, or ``None`` without one).
        make_loss: ``make_loss(process) -> loss``, the loss ``loss(model, key, batch)`` of
            :func:`otdiff.train.fit` (e.g. ``Partial(dsm_loss, process=process)``).
        n_steps, batch_size, learning_rate, ema_decay, chunk_size: the :func:`otdiff.train.fit`
            settings.
        make_process: ``make_process() -> process``, the forward process, or ``None``.
        parameterisation: ``"eps"`` for a noise predictor (the loaded model then has a
            ``score``), ``"other"`` otherwise.
        description: one line for :func:`available` and ``info``.
        version: bump it to invalidate cached files when code the hash cannot see changes.
    """

    name: str
    make_data: Callable[[int], Any]
    make_model: Callable[[jax.Array, Any], Any]
    make_loss: Callable[[Any], Callable]
    n_steps: int
    batch_size: int = 256
    learning_rate: float = 2e-3
    ema_decay: float = 0.999
    chunk_size: int = 500
    make_process: Callable[[], Any] | None = None
    parameterisation: str = "eps"
    description: str = ""
    version: int = 1

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"name must be letters, digits or '_', got {self.name!r}.")
        check_int(self.n_steps, "n_steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_int(self.chunk_size, "chunk_size", low=1)
        check_positive(self.learning_rate, "learning_rate")
        check_choice(self.parameterisation, "parameterisation", PARAMETERISATIONS)
        builders = (self.make_data, self.make_model, self.make_loss)
        if not all(callable(f) for f in builders):
            raise TypeError("make_data, make_model and make_loss must be callables.")
        if self.make_process is not None and not callable(self.make_process):
            raise TypeError("make_process must be a callable or None.")

    def process(self):
        """The recipe's forward process (``None`` without one)."""
        return None if self.make_process is None else self.make_process()

    def fingerprint(self) -> str:
        """A short hash of everything that determines the trained weights (settings and code)."""

        def source(fn) -> str:
            if fn is None:
                return "None"
            try:
                return inspect.getsource(fn)
            except (OSError, TypeError):
                return getattr(fn, "__qualname__", repr(fn))

        code = ("make_data", "make_model", "make_loss", "make_process")
        fields = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in (*code, "description")
        }
        fields.update({name: source(getattr(self, name)) for name in code})
        blob = json.dumps(fields, sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()[:10]


class ZooModel(NamedTuple):
    """A trained zoo model.

    Attributes:
        model: the trained module with the EMA weights.
        process: the forward process it was trained for (or ``None``).
        score: for a noise predictor, the per-point score ``score(x, t) = -model(x, t) /
            sigma_t`` (:func:`otdiff.diffusion.score_from_eps`); ``None`` otherwise.
        info: a dict: name, seed, description, recipe hash, path, n_steps, final_loss,
            train_seconds (of the run that built the file), trained_now (this call trained).
    """

    model: Any
    process: Any
    score: Callable | None
    info: dict


# -- the built-in recipes -------------------------------------------------------------------------


def _linear_vp():
    from otdiff.diffusion import LinearVP

    return LinearVP()


def _cosine_vp():
    from otdiff.diffusion import CosineVP

    return CosineVP()


def _dsm(process):
    from otdiff.diffusion import dsm_loss

    return jax.tree_util.Partial(dsm_loss, process=process)


def _ring_data(seed: int):
    from otdiff.data import ring

    return ring().sample(jax.random.fold_in(jax.random.key(seed), 17), 20_000)


def _ring_model(key, process):
    from otdiff.diffusion import ScoreMLP

    return ScoreMLP(2, hidden=(128, 128, 128), embed_dim=32, key=key)


def _digits_data(seed: int):
    from otdiff.data import load_digits

    return load_digits().train_images  # the book's fixed split; the seed drives training only


def _digits_model(key, process):
    from otdiff.diffusion import ScoreMLP

    return ScoreMLP(64, hidden=(512, 512, 512), embed_dim=64, key=key)


_REGISTRY: dict[str, Recipe] = {}
_MEMORY: dict[str, tuple[int, ZooModel]] = {}


def register(recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Add ``recipe`` to the registry (``overwrite=True`` replaces one of the same name)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a zoo.Recipe, got {type(recipe).__name__}.")
    if recipe.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"a recipe named {recipe.name!r} exists; pass overwrite=True to replace it."
        )
    _REGISTRY[recipe.name] = recipe
    return recipe


register(
    Recipe(
        name="ring8",
        make_data=_ring_data,
        make_model=_ring_model,
        make_loss=_dsm,
        make_process=_linear_vp,
        n_steps=3000,
        batch_size=256,
        learning_rate=2e-3,
        description="ring of 8 Gaussians (otdiff.data.ring()), MLP noise predictor, linear VP",
    )
)
register(
    Recipe(
        name="digits",
        make_data=_digits_data,
        make_model=_digits_model,
        make_loss=_dsm,
        # measured (DDIM, 100 steps, 500 digits): 63% judged confidently with the cosine
        # schedule against 52% with the linear one, for the same network and training budget
        make_process=_cosine_vp,
        n_steps=2500,
        batch_size=256,
        learning_rate=2e-3,
        description="8x8 digits as 64-d vectors in [-1, 1], MLP noise predictor, cosine VP",
    )
)


def available() -> list[str]:
    """The names of the registered recipes."""
    return sorted(_REGISTRY)


def recipe(name: str) -> Recipe:
    """The registered recipe called ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string or a zoo.Recipe, got {type(name).__name__}.")
    if name not in _REGISTRY:
        raise ValueError(f"no zoo model named {name!r}; available: {', '.join(available())}.")
    return _REGISTRY[name]


def zoo_dir(cache: str | os.PathLike | None = None) -> Path:
    """The zoo's folder: ``cache`` if given, else ``otdiff.config.cache_dir() / "zoo"``."""
    return Path(cache).expanduser() if cache is not None else config.cache_dir() / "zoo"


def _paths(rec: Recipe, seed: int, cache) -> tuple[Path, Path, Path]:
    stem = f"{rec.name}-seed{seed}-{rec.fingerprint()}"
    folder = zoo_dir(cache)
    return folder / f"{stem}.ckpt", folder / f"{stem}.train.ckpt", folder / f"{stem}.lock"


def _build(rec: Recipe, trained_params, static, meta: dict, path: Path, now: bool):
    import equinox as eqx

    model = eqx.combine(trained_params, static)
    process = rec.process()
    score = None
    if rec.parameterisation == "eps":
        from otdiff.diffusion import score_from_eps

        score = score_from_eps(model, process)
    info = dict(meta)
    info.update(path=str(path), trained_now=now)
    return ZooModel(model=model, process=process, score=score, info=info)


def _fresh_model(rec: Recipe, seed: int):
    return rec.make_model(jax.random.fold_in(jax.random.key(seed), 0), rec.process())


def _train(rec: Recipe, seed: int, train_path: Path, verbose: bool):
    data = rec.make_data(seed)
    process = rec.process()
    key = jax.random.key(seed)
    model = rec.make_model(jax.random.fold_in(key, 0), process)
    kwargs = dict(
        n_steps=rec.n_steps,
        batch_size=rec.batch_size,
        learning_rate=rec.learning_rate,
        ema_decay=rec.ema_decay,
        chunk_size=rec.chunk_size,
        checkpoint_path=train_path,
    )
    if verbose:
        resumed = " (resuming an interrupted run)" if train_path.exists() else ""
        print(
            f"otdiff.zoo: training {rec.name!r} (seed {seed}) on first use{resumed}...", flush=True
        )
    t0 = time.perf_counter()
    loss = rec.make_loss(process)
    try:
        result = train.fit(jax.random.fold_in(key, 1), model, data, loss, **kwargs)
    except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as err:
        warnings.warn(f"otdiff.zoo: {err} Training {rec.name!r} from scratch.", stacklevel=3)
        train_path.unlink(missing_ok=True)
        result = train.fit(jax.random.fold_in(key, 1), model, data, loss, **kwargs)
    seconds = time.perf_counter() - t0  # recorded in the file's metadata
    if verbose:
        print(f"otdiff.zoo: trained {rec.name!r} in {seconds:.1f} s; cached.", flush=True)
    return result, seconds


def load(
    name: str | Recipe,
    *,
    seed: int = 0,
    retrain: bool = False,
    cache: str | os.PathLike | None = None,
    verbose: bool = True,
    lock_timeout: float = 1800.0,
) -> ZooModel:
    """The trained model ``name`` (a registered name or a :class:`Recipe`), training it if needed.

    Args:
        name: ``"ring8"``, ``"digits"`` (see :func:`available`) or a :class:`Recipe`.
        seed: the seed of the data, the initial weights and the training (an int >= 0).
        retrain: ignore (and replace) a cached file.
        cache: the zoo folder (default :func:`zoo_dir`).
        verbose: print a line when training starts and ends.
        lock_timeout: seconds to wait for another process training the same model (> 0).

    Returns:
        A :class:`ZooModel` whose ``model`` holds the EMA weights.

    Raises:
        ValueError: for an unknown name or a bad seed.
        TimeoutError: if another process holds the lock longer than ``lock_timeout``.
    """
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    rec = name if isinstance(name, Recipe) else recipe(name)
    seed = check_int(seed, "seed", low=0)
    check_positive(lock_timeout, "lock_timeout")
    path, train_path, lock_path = _paths(rec, seed, cache)
    path.parent.mkdir(parents=True, exist_ok=True)

    memo_key = str(path.resolve())
    if not retrain and memo_key in _MEMORY and path.exists():
        mtime, cached = _MEMORY[memo_key]
        if path.stat().st_mtime_ns == mtime:
            return cached._replace(info={**cached.info, "trained_now": False})

    like_params, static = train.split(_fresh_model(rec, seed))
    n = rec.n_steps
    like = {"ema": like_params, "params": like_params, "losses": np.zeros((n,), np.float32)}

    try:
        lock = FileLock(str(lock_path), timeout=lock_timeout)
        lock.acquire()
    except LockTimeout:
        raise TimeoutError(
            f"otdiff.zoo: waited {lock_timeout:g} s for {lock_path} (another process training "
            f"{rec.name!r}?); delete the lock file if no such process exists."
        ) from None
    try:
        if retrain:
            path.unlink(missing_ok=True)
            train_path.unlink(missing_ok=True)
        if path.exists():
            try:
                tree, meta = checkpoint.load(path, like)
                zm = _build(rec, tree["ema"], static, meta, path, now=False)
                _MEMORY[memo_key] = (path.stat().st_mtime_ns, zm)
                return zm
            except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as err:
                warnings.warn(f"otdiff.zoo: {err} Rebuilding it.", stacklevel=2)
                path.unlink(missing_ok=True)
        result, seconds = _train(rec, seed, train_path, verbose)
        p_last, _ = train.split(result.model)
        p_ema = p_last if result.ema_model is None else train.split(result.ema_model)[0]
        meta = {
            "name": rec.name,
            "seed": seed,
            "description": rec.description,
            "recipe_hash": rec.fingerprint(),
            "n_steps": n,
            "batch_size": rec.batch_size,
            "final_loss": float(np.mean(result.losses[-min(n, 100) :])),
            "train_seconds": round(seconds, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tree = {"ema": p_ema, "params": p_last, "losses": np.asarray(result.losses)}
        checkpoint.save(path, tree, meta)
        train_path.unlink(missing_ok=True)
        zm = _build(rec, p_ema, static, meta, path, now=True)
        _MEMORY[memo_key] = (path.stat().st_mtime_ns, zm)
        return zm
    finally:
        lock.release()


def training_losses(name: str | Recipe, *, seed: int = 0, cache: str | os.PathLike | None = None):
    """The per-step training losses stored with a cached model (trains it if needed)."""
    zm = load(name, seed=seed, cache=cache, verbose=False)
    rec = name if isinstance(name, Recipe) else recipe(name)
    params, _ = train.split(zm.model)
    like = {"ema": params, "params": params, "losses": np.zeros((rec.n_steps,), np.float32)}
    tree, _ = checkpoint.load(zm.info["path"], like)
    return np.asarray(tree["losses"])


def clear(name: str | None = None, *, cache: str | os.PathLike | None = None) -> list[Path]:
    """Delete the cached files of model ``name`` (every seed and version), or of all models.

    Returns the deleted paths. Lock files are left in place (they are empty).
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}.")
    folder = zoo_dir(cache)
    if not folder.is_dir():
        return []
    patterns = [f"{name}-seed*", f".{name}-seed*"] if name is not None else ["*"]
    removed = []
    for p in sorted(q for pattern in patterns for q in folder.glob(pattern)):
        if p.is_file() and (p.suffix == ".ckpt" or p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
            removed.append(p)
    for key in [k for k in _MEMORY if Path(k).parent == folder.resolve()]:
        if name is None or Path(key).name.startswith(f"{name}-seed"):
            del _MEMORY[key]
    return removed
