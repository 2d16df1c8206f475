"""Trained models shared between chapters: shipped with the book, cached, or trained on first use.

::

    from otdiff import zoo
    from otdiff.diffusion import sample

    ring = zoo.load("ring8")  # read from the weights shipped with the package
    x = sample(key, ring.score, ring.process, 1000, 2).x

A :class:`Recipe` says how to build a model and how to train it: its data, its network, its
forward process (if any), its loss and the training settings of :func:`otdiff.train.fit`. So any
model the book trains with a loss on data (a noise predictor, a velocity field for a flow, a
class-conditional model for composition, a score on the sphere) is cached the same way.
:func:`load` goes through :func:`otdiff.artifacts.cached`, which returns the model from the first
place that holds a sound copy:

1. the weights shipped in the package (``otdiff/zoo_weights/<name>-seed<seed>.ckpt``), when the
   recipe's fingerprint in the file's header equals the current one (a stale or damaged file is
   reported in a warning, left as it is, and skipped);
2. the user cache ``otdiff.config.cache_dir() / "zoo"`` (``$OTDIFF_CACHE_DIR`` moves the root);
3. training, deterministically from the seed (the initial weights and every batch derive from
   it), resumable after an interruption, then cached.

The fingerprint covers the recipe's settings and the code of its functions and of the classes
listed in ``code`` (their syntax trees: a docstring edit changes nothing), so a changed recipe
never loads stale weights. The stored weights are the EMA weights and the per-step losses.

**Shipped models.** ``make zoo`` (``python -m otdiff.zoo``) retrains every model of
:data:`SHIPPED` from its seed and writes the shipped files; a test fails, asking for ``make
zoo``, when a shipped file does not match its recipe. The table names a function per shipped
artifact: a chapter module adds its own artifacts (a set of encoders, the networks of a bridge)
by caching them with :func:`otdiff.artifacts.cached` and adding a line here. Shipped today:
every trained artifact the chapters load under the ``demo`` preset at seed offset 0 (the
models ``"ring8"``, ``"digits_unet"`` and ``"canvas"`` at seed 0, the slot networks of
:func:`chapter_slots_models`, the digits judge :class:`otdiff.metrics.DigitClassifier` and the
artifacts of the Monge, M3G, RDSB and ReFlow chapters), so that a fresh clone runs the book
without training. The ``"digits"`` MLP, which no chapter loads, is trained on first use (2,500 steps
of 30 to 80 ms each on two CPU cores in ``benchmarks/results/train.json``).

Models: ``"ring8"`` (the 2-D ring of eight Gaussians :func:`otdiff.data.ring`, an MLP, linear VP
process), ``"digits"`` (the 8x8 digits of :func:`otdiff.data.load_digits` as 64-d vectors in
[-1, 1], an MLP, cosine VP process :cite:`nichol2021improved`) and ``"digits_unet"`` (the same
digits and process, a small convolutional :class:`otdiff.nn.UNet`). All are noise predictors
trained by denoising score matching :cite:`ho2020denoising`, :cite:`song2021scorebased`. ``"slots_local"`` and ``"slots_mlp"`` are slot-conditional noise predictors
``model(x, t, c)`` (:mod:`otdiff.diffusion.conditional`) trained on the empty and one-object laws
of ``otdiff.data.slots(SLOTS_N_SLOTS)`` for the projective composition chapter; their score for a
condition ``c`` is :class:`otdiff.diffusion.conditional.ConditionalScore`; seeds 0-2 of both
are shipped. ``"canvas"`` (shipped, seed 0) and ``"canvas_full"`` are location-conditioned
cell-local noise predictors (:class:`otdiff.diffusion.conditional.LocalCellNet`, one MLP per
4x4 cell) on the 12x12 canvases of ``otdiff.data.canvas(12, 3)`` (:func:`chapter_canvas_model`),
trained on empty and one-object canvases, a tenth of them with the null condition (the
unconditional law).

Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/04_projective_composition.ipynb
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np

from otdiff import artifacts, checkpoint, config, metrics, nn, train
from otdiff._checks import check_choice, check_int, check_positive
from otdiff.progress import Progress

__all__ = [
    "PARAMETERISATIONS",
    "Recipe",
    "ZooModel",
    "SHIPPED",
    "chapter_slots_models",
    "chapter_canvas_model",
    "chapter_reflow_digits",
    "ReflowDigits",
    "load",
    "register",
    "available",
    "recipe",
    "clear",
    "zoo_dir",
    "training_losses",
    "SLOTS_N_SLOTS",
    "ship",
    "shipping_plan",
    "shipped_status",
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
        version: bump it to invalidate cached files when code the fingerprint cannot see changes.
        code: further functions and classes whose code determines the weights (e.g. the network
            class), part of the fingerprint.
        storage_dtype: how a shipped file stores the weights (``None``: float32 as trained;
            ``"float16"`` where the model's quality survives it, measured). Not part of the
            fingerprint: the user cache keeps float32.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
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
    code: tuple = ()
    storage_dtype: str | None = None

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name):
            raise ValueError(f"name must be letters, digits or '_', got {self.name!r}.")
        check_int(self.n_steps, "n_steps", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_int(self.chunk_size, "chunk_size", low=1)
        check_positive(self.learning_rate, "learning_rate")
        check_choice(self.parameterisation, "parameterisation", PARAMETERISATIONS)
        if self.storage_dtype is not None:
            check_choice(self.storage_dtype, "storage_dtype", artifacts.STORAGE_DTYPES)
        builders = (self.make_data, self.make_model, self.make_loss)
        if not all(callable(f) for f in builders):
            raise TypeError("make_data, make_model and make_loss must be callables.")
        if self.make_process is not None and not callable(self.make_process):
            raise TypeError("make_process must be a callable or None.")
        if not isinstance(self.code, tuple) or not all(callable(c) for c in self.code):
            raise TypeError("code must be a tuple of functions or classes.")

    def process(self):
        """The recipe's forward process (``None`` without one)."""
        return None if self.make_process is None else self.make_process()

    def inputs(self) -> dict:
        """What determines the trained weights besides the seed: every field but the description
        and the storage dtype (functions and classes by their code)."""
        skip = ("description", "storage_dtype")
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
        }

    def fingerprint(self) -> str:
        """A short hash of everything that determines the trained weights (settings and code)."""
        return artifacts.fingerprint(self.inputs())


class ZooModel(NamedTuple):
    """A trained zoo model.

    Attributes:
        model: the trained module with the EMA weights.
        process: the forward process it was trained for (or ``None``).
        score: for a noise predictor, the per-point score ``score(x, t) = -model(x, t) /
            sigma_t`` (:func:`otdiff.diffusion.score_from_eps`); ``None`` otherwise.
        info: a dict: name, seed, description, recipe_hash, path, source (``"shipped"``,
            ``"cache"`` or ``"built"``), trained_now (this call trained it), n_steps,
            final_loss, train_seconds (of the run that built the file), storage_dtype.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
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


def _digits_unet_model(key, process):
    """The ``"digits_unet"`` network: :class:`otdiff.nn.UNet` on the 8x8 digits, two levels of 16
    and 32 channels, one middle block (54,577 weights).

    Its recipe trains it for 3,000 steps of 128 digits with :func:`otdiff.train.fit`, which on
    the CPU runs a convolutional loss as a loop over one compiled step (XLA's ``while`` loop runs
    a convolution's gradient many times slower; ``benchmarks/bench_train.py``). In our runs a
    step took about 81 ms of CPU time; on 2 CPU cores shared with many other jobs (load 17 to
    25, under ``nice -n 10``) the first 1,000 steps took about 28 minutes after a compilation
    of about 6 minutes, and the training loss (0.170 over steps 400 to 500, 0.158 over steps
    900 to 1,000) was already below that of the ``"digits"`` MLP at the end of its 2,500 steps
    of 256 digits (0.189). The remaining 2,000 steps, resumed from that checkpoint on the same
    cores under a lighter load, took 280 s with their compilation; the final loss was 0.140. The
    shipped weights are that run's (a resumed run ends with the same weights as an uninterrupted
    one). Judged by :class:`otdiff.metrics.DigitClassifier` (``benchmarks/bench_digits.py``, the
    reverse SDE with 100 steps, 5 seeds of 500 digits) it samples digits that are recognised
    about 9 times in 10, at a Fréchet distance close to that between two halves of the held-out
    digits, where the ``"digits"`` MLP is recognised about 8 times in 10 at almost three times
    that distance.
    """
    from otdiff.nn import UNet

    return UNet(side=8, channels=(16, 32), n_middle=1, embed_dim=64, groups=8, key=key)


#: The number of slots of the ``"slots_local"`` and ``"slots_mlp"`` models
#: (:func:`otdiff.data.slots` with its other defaults).
SLOTS_N_SLOTS = 5


def _slots_data(seed: int):
    from otdiff.data import slots

    key = jax.random.fold_in(jax.random.key(seed), 17)
    return slots(SLOTS_N_SLOTS).training_data(key, 20_000)


def _conditional_dsm(process):
    from otdiff.diffusion.conditional import conditional_dsm_loss

    return jax.tree_util.Partial(conditional_dsm_loss, process=process)


def _slots_local_model(key, process):
    from otdiff.diffusion.conditional import LocalSlotNet

    return LocalSlotNet(SLOTS_N_SLOTS, hidden=(64, 64), embed_dim=16, key=key)


def _slots_mlp_model(key, process):
    from otdiff.diffusion.conditional import ConditionalMLP

    return ConditionalMLP(SLOTS_N_SLOTS, hidden=(256, 256, 256), embed_dim=32, key=key)


def _canvas_data(seed: int):
    from otdiff.data import canvas

    key = jax.random.fold_in(jax.random.key(seed), 17)
    # empty and one-object 12x12 canvases; one row in ten has the null condition (unconditional)
    return canvas(12, 3).training_data(key, 20_000, null_prob=0.1)


def _canvas_model(key, process):
    from otdiff.diffusion.conditional import LocalCellNet

    # one MLP per 4x4 cell (cell-local: factorized conditionals whatever the weights);
    # data_std: the pixel standard deviation of the training canvases (0.12)
    return LocalCellNet(
        side=12, cell=4, hidden=(128, 128), embed_dim=32, key=key, data_std=0.12,
        process=process,
    )  # fmt: skip


def _canvas_full_model(key, process):
    from otdiff.diffusion.conditional import LocalCellNet

    return LocalCellNet(
        side=12, cell=4, hidden=(256, 256, 256), embed_dim=64, key=key, data_std=0.12,
        process=process,
    )  # fmt: skip


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe, *, overwrite: bool = False) -> Recipe:
    """Add ``recipe`` to the registry (``overwrite=True`` replaces one of the same name).

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
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
register(
    Recipe(
        name="digits_unet",
        make_data=_digits_data,
        make_model=_digits_unet_model,
        make_loss=_dsm,
        make_process=_cosine_vp,
        n_steps=3000,
        batch_size=128,
        learning_rate=2e-3,
        description="8x8 digits as 64-d vectors in [-1, 1], U-Net noise predictor "
        "(otdiff.nn.UNet, channels 16 and 32), cosine VP",
        code=(
            nn.UNet,
            nn._UNetBlock,
            nn._zeroed,
            nn.TimeEmbedding,
            nn._Conv2d,
            nn._ConvTranspose2d,
            nn._conv_by_matmul,
            nn._conv_transpose_by_matmul,
        ),
    )
)
for _name, _make, _what in (
    ("slots_local", _slots_local_model, "local weight-shared per-slot network"),
    ("slots_mlp", _slots_mlp_model, "plain MLP over all slots"),
):
    register(
        Recipe(
            name=_name,
            make_data=_slots_data,
            make_model=_make,
            make_loss=_conditional_dsm,
            make_process=_linear_vp,
            n_steps=3000,
            batch_size=256,
            learning_rate=2e-3,
            parameterisation="other",
            description=f"slot-conditional noise predictor model(x, t, c) on "
            f"otdiff.data.slots({SLOTS_N_SLOTS}), empty and one-object data only, {_what}, "
            "linear VP",
        )
    )
# demo: 2000 steps of 256 canvases (53 s measured on two CPU cores shared with many jobs)
for _name, _make, _n_steps, _batch, _decay, _what in (
    ("canvas", _canvas_model, 2000, 256, 0.995, "hidden (128, 128) (demo)"),
    ("canvas_full", _canvas_full_model, 20_000, 256, 0.999, "hidden (256, 256, 256) (full)"),
):
    register(
        Recipe(
            name=_name,
            make_data=_canvas_data,
            make_model=_make,
            make_loss=_conditional_dsm,
            make_process=_linear_vp,
            n_steps=_n_steps,
            batch_size=_batch,
            learning_rate=2e-3,
            ema_decay=_decay,
            parameterisation="other",
            description="location-conditioned noise predictor model(x, t, c) on the 12x12 "
            "canvases of otdiff.data.canvas(12, 3) (empty and one-object, a tenth with the null "
            f"condition), LocalCellNet (one MLP per 4x4 cell) with {_what}, linear VP",
        )
    )


def available() -> list[str]:
    """The names of the registered recipes.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    return sorted(_REGISTRY)


def recipe(name: str) -> Recipe:
    """The registered recipe called ``name``.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string or a zoo.Recipe, got {type(name).__name__}.")
    if name not in _REGISTRY:
        raise ValueError(f"no zoo model named {name!r}; available: {', '.join(available())}.")
    return _REGISTRY[name]


def zoo_dir(cache: str | os.PathLike | None = None) -> Path:
    """The zoo's user cache: ``cache`` if given, else ``otdiff.config.cache_dir() / "zoo"``.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    return artifacts.cache_folder(cache)


def _is_float_struct(leaf) -> bool:
    return isinstance(leaf, jax.ShapeDtypeStruct) and jax.numpy.issubdtype(
        leaf.dtype, jax.numpy.inexact
    )


def _template(rec: Recipe, seed: int):
    """``(params_like, static)`` of the recipe's model without computing any weights."""
    key = jax.random.fold_in(jax.random.key(seed), 0)
    process = rec.process()  # closed over: a network may need its numbers concrete
    shapes = eqx.filter_eval_shape(lambda k: rec.make_model(k, process), key)
    params, static = eqx.partition(shapes, _is_float_struct)
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(static)):
        # a model with non-float arrays: build it for real to get their values
        return train.split(rec.make_model(key, rec.process()))
    return params, static


def _progress_bar(rec: Recipe, seed: int) -> Progress:
    """A bar over the recipe's steps (updated after every compiled chunk), stating the duration
    of the shipped build of the same recipe when one is shipped (its machine said beside it)."""
    expected, basis = None, None
    for shipped_seed in (seed, 0):
        try:
            meta = checkpoint.read_metadata(artifacts.shipped_path(rec.name, shipped_seed))
        except (OSError, ValueError, checkpoint.CorruptCheckpointError):
            continue
        if meta.get("n_steps") == rec.n_steps and meta.get("build_seconds"):
            expected = float(meta["build_seconds"])
            basis = f"as the shipped build on {meta.get('platform', 'its machine')}"
            break
    return Progress(
        rec.n_steps, f"otdiff.zoo: training {rec.name!r} (seed {seed})",
        expected_seconds=expected, basis=basis,
    )  # fmt: skip


def _trainer(rec: Recipe, seed: int, verbose: bool) -> Callable[[Path], tuple[Any, dict]]:
    def build(progress: Path):
        data = rec.make_data(seed)
        process = rec.process()
        key = jax.random.key(seed)
        model = rec.make_model(jax.random.fold_in(key, 0), process)
        bar = _progress_bar(rec, seed) if verbose else None
        try:
            result = train.fit(
                jax.random.fold_in(key, 1), model, data, rec.make_loss(process),
                n_steps=rec.n_steps, batch_size=rec.batch_size, learning_rate=rec.learning_rate,
                ema_decay=rec.ema_decay, chunk_size=rec.chunk_size, checkpoint_path=progress,
                **({} if bar is None else {"callback": bar}),
            )  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        last = result.model if result.ema_model is None else result.ema_model
        losses = np.asarray(result.losses, np.float32)
        meta = {
            "description": rec.description,
            "n_steps": rec.n_steps,
            "batch_size": rec.batch_size,
            "final_loss": float(np.mean(losses[-min(rec.n_steps, 100) :])),
        }
        return {"ema": train.split(last)[0], "losses": losses}, meta

    return build


def _artifact(rec: Recipe, seed: int, **kwargs) -> tuple[artifacts.Artifact, Any]:
    params_like, static = _template(rec, seed)
    like = {"ema": params_like, "losses": jax.ShapeDtypeStruct((rec.n_steps,), np.float32)}
    art = artifacts.cached(
        rec.name, seed, rec.inputs(), build=_trainer(rec, seed, kwargs.get("verbose", True)),
        like=like, storage_dtype=rec.storage_dtype, **kwargs,
    )  # fmt: skip
    return art, static


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
        seed: the seed of the initial weights and the training (an int >= 0; the shipped
            weights are those of seed 0).
        retrain: ignore the shipped and cached files, train afresh and replace the cached one.
        cache: the user cache folder (default :func:`zoo_dir`).
        verbose: print a line when training starts and ends.
        lock_timeout: seconds to wait for another process training the same model (> 0).

    Returns:
        A :class:`ZooModel` whose ``model`` holds the EMA weights.

    Raises:
        ValueError: for an unknown name or a bad seed.
        TimeoutError: if another process holds the lock longer than ``lock_timeout``.

    Taught in: book/diffusion/01_score_based.ipynb, book/diffusion/03_spell.ipynb.
    """
    rec = name if isinstance(name, Recipe) else recipe(name)
    seed = check_int(seed, "seed", low=0)
    art, static = _artifact(
        rec, seed, retrain=retrain, cache=cache, verbose=verbose, lock_timeout=lock_timeout
    )
    model = eqx.combine(art.tree["ema"], static)
    process = rec.process()
    score = None
    if rec.parameterisation == "eps":
        from otdiff.diffusion import score_from_eps

        score = score_from_eps(model, process)
    meta = art.meta
    info = {
        "name": rec.name,
        "seed": seed,
        "description": rec.description,
        "recipe_hash": meta.get("fingerprint"),
        "path": str(art.path),
        "source": art.source,
        "trained_now": art.source == "built",
        "n_steps": meta.get("n_steps"),
        "final_loss": meta.get("final_loss"),
        "train_seconds": meta.get("build_seconds"),
        "storage_dtype": meta.get("storage_dtype"),
    }
    return ZooModel(model=model, process=process, score=score, info=info)


def training_losses(name: str | Recipe, *, seed: int = 0, cache: str | os.PathLike | None = None):
    """The per-step training losses stored with a model (trains it if needed).

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    rec = name if isinstance(name, Recipe) else recipe(name)
    art, _ = _artifact(rec, check_int(seed, "seed", low=0), cache=cache, verbose=False)
    return np.asarray(art.tree["losses"])


def clear(name: str | None = None, *, cache: str | os.PathLike | None = None) -> list[Path]:
    """Delete the user-cache files of artifact ``name`` (every seed and version), or of all.

    The shipped files are never touched. Returns the deleted paths. Lock files are left in place
    (they are empty).

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {type(name).__name__}.")
    folder = zoo_dir(cache)
    if not folder.is_dir():
        return []
    patterns = [f"{name}-seed*", f".{name}-seed*"] if name is not None else ["*"]
    removed = []
    for p in sorted({q for pattern in patterns for q in folder.glob(pattern)}):
        if p.is_file() and (p.suffix == ".ckpt" or p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
            artifacts.forget(p)
            removed.append(p)
    return removed


# -- shipped artifacts ----------------------------------------------------------------------------


#: The artifacts shipped in the package: a name and a function that loads (or, inside
#: :func:`otdiff.artifacts.shipping`, builds) every artifact it ships through
#: :func:`otdiff.artifacts.cached`. ``make zoo`` runs them all.
SHIPPED: dict[str, Callable[[], Any]] = {
    "ring8": lambda: load("ring8", seed=0),
    "digits_unet": lambda: load("digits_unet", seed=0),
    "m3g": lambda: _chapter("otdiff.ot.m3g", "chapter_encoders"),
    "monge": lambda: _chapter("otdiff.ot.monge", "chapter_costs"),
    "monge_neural": lambda: _chapter("otdiff.ot.monge", "chapter_neural_costs"),
    "rdsb": lambda: _chapter("otdiff.manifolds.bridge", "chapter_bridges"),
    "slots": lambda: chapter_slots_models(scale="demo"),
    "canvas": lambda: chapter_canvas_model(scale="demo"),
    "judge": lambda: metrics.DigitClassifier(),
    "reflow_ring": lambda: (
        _chapter("otdiff.flows.reflow", "chapter_ring"),
        _chapter("otdiff.flows.reflow", "ring_switch_grid"),
    ),
    "reflow_digits": lambda: chapter_reflow_digits(scale="demo"),
}


#: The zoo model the Simple ReFlow chapter distils (:func:`chapter_reflow_digits`).
REFLOW_DIGITS_TEACHER = "digits_unet"


class ReflowDigits(NamedTuple):
    """The digits experiment of the Simple ReFlow chapter (:func:`chapter_reflow_digits`).

    Attributes:
        teacher: the zoo's ``"digits_unet"`` model (a VP diffusion model).
        velocity: the teacher as a flow, :func:`otdiff.flows.vp_velocity`.
        students: the ReFlow students (:class:`otdiff.flows.FlowNet`), one per seed.
        seeds: their training seeds.
        config: their :class:`otdiff.flows.FlowConfig`.
        n_pairs: the number of backward pairs they were trained on.

    Taught in: book/diffusion/05_simple_reflow.ipynb.
    """

    teacher: ZooModel
    velocity: Callable
    students: list
    seeds: list
    config: Any
    n_pairs: int


def chapter_reflow_digits(*, scale: str | None = None, verbose: bool = True) -> ReflowDigits:
    """The Simple ReFlow chapter's digits students: 2-RF flows distilled from the U-Net.

    The teacher is the zoo's ``"digits_unet"`` VP model turned into a rectified flow by the time
    change of :func:`otdiff.flows.vp_velocity`. Its ODE, solved to tolerance :math:`10^{-4}`
    from ``16 384`` noise draws (``65 536`` under ``full``; seed ``config.seed(0)``), gives
    backward pairs, whose data ends are clipped to the data range :math:`[-1, 1]` (the teacher's
    final samples clipped, as image samplers do; the chapter clips every sampler's final samples
    alike). A :class:`otdiff.flows.FlowNet` with three hidden layers of 256 (``512``) is trained
    on them for ``12 000`` steps (``20 000``) from fresh weights with two of Simple ReFlow's
    switches, the loss normalisation and the :math:`10^t` time law, at the seeds
    ``config.seeds(5)``. The pairs are solved only when a student must be trained (about five
    minutes on two CPU cores, then 20 s per student); the ``demo`` students are shipped
    (float16). In our runs 4,096 pairs were too few: students of three layers of 256 or 512
    recognised less often in one step than on 16,384 pairs, the larger ones overfitting. A new
    ``"digits_unet"`` model changes the teacher's fingerprint, hence the students'.

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        verbose: print a line when training.

    Taught in: book/diffusion/05_simple_reflow.ipynb
    """
    from otdiff import flows

    scale = config.active_scale() if scale is None else scale
    choose = lambda demo, full: config.choose(demo=demo, full=full, scale=scale)  # noqa: E731
    teacher = load(REFLOW_DIGITS_TEACHER, seed=0, verbose=verbose)
    velocity = flows.vp_velocity(teacher.score, teacher.process)
    n_pairs = choose(16_384, 65_536)
    pair_seed = config.seed(0)
    cfg = flows.FlowConfig(
        hidden=(choose(256, 512),) * 3, embed_dim=32, n_steps=choose(12_000, 20_000),
        batch_size=256, learning_rate=1e-3, normalise=True, time_distribution="exp10",
    )  # fmt: skip
    name = REFLOW_DIGITS_TEACHER
    teacher_inputs = {
        "zoo": name, "fingerprint": recipe(name).fingerprint(), "seed": 0,
        "flow": [flows.vp_velocity, flows.vp_time, flows.rf_time],
    }  # fmt: skip
    pair_inputs = {
        "teacher": teacher_inputs, "n_pairs": n_pairs, "seed": pair_seed, "tol": 1e-4,
        "clip": [-1.0, 1.0],
    }  # fmt: skip

    @functools.cache  # solved (or read) once for all the students
    def pairs():
        out = flows.cached_pairs(
            "reflow_digits_pairs", pair_seed, velocity, teacher_inputs=teacher_inputs,
            data=np.zeros((n_pairs, 64), np.float32), n_pairs=n_pairs, rtol=1e-4, atol=1e-4,
            chunk_size=1024, with_forward=False, verbose=verbose,
        )  # fmt: skip
        return flows.Pairs(jax.numpy.clip(out.backward.x0, -1.0, 1.0), out.backward.x1)

    seeds = config.seeds(5)
    students = [
        flows.cached_flow(
            f"reflow_digits_{artifacts.fingerprint(cfg.as_dict())}", s, 64, cfg,
            data_inputs=pair_inputs, make_data=pairs, verbose=verbose, storage_dtype="float16",
        )[0]
        for s in seeds
    ]  # fmt: skip
    return ReflowDigits(teacher, velocity, students, seeds, cfg, n_pairs)


def chapter_slots_models(*, scale: str | None = None, verbose: bool = True) -> dict:
    """The slot-conditional networks of the projective composition chapter: ``"slots_local"``
    and ``"slots_mlp"`` at the seeds ``config.seeds(3)`` (``config.seeds(8)`` under the ``full``
    preset), as lists of :class:`ZooModel` (those of the ``demo`` preset are shipped).

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        verbose: print a line when training.

    Taught in: book/diffusion/04_projective_composition.ipynb
    """
    seeds = config.seeds(config.choose(demo=3, full=8, scale=scale))
    return {
        name: [load(name, seed=s, verbose=verbose) for s in seeds]
        for name in ("slots_local", "slots_mlp")
    }


def chapter_canvas_model(*, scale: str | None = None, verbose: bool = True) -> ZooModel:
    """The location-conditioned canvas network of the projective composition chapter:
    ``"canvas"`` under the ``demo`` preset (shipped), ``"canvas_full"`` under ``full``, at seed 0.

    The seed is 0 whatever ``OTDIFF_SEED_OFFSET`` says (like ``load("digits")``): the network is
    trained once and shipped, and the offset moves the chapter's sampling seeds only (training
    it afresh takes about a minute on two CPU cores).

    Its conditions are maps over the pixels of ``otdiff.data.canvas(12, 3)``:
    ``Canvas.condition(cells)`` for one cell (or ``()``, the empty canvas) and
    ``Canvas.null_condition()`` for the unconditional law.

    Args:
        scale: ``"demo"``, ``"full"`` or ``None`` (the active preset).
        verbose: print a line when training.

    Taught in: book/diffusion/04_projective_composition.ipynb
    """
    name = config.choose(demo="canvas", full="canvas_full", scale=scale)
    return load(name, seed=0, verbose=verbose)


def _chapter(module: str, function: str):
    # A chapter module's demo artifacts, imported on use (the chapter modules are heavy).
    import importlib

    return getattr(importlib.import_module(module), function)(scale="demo")


def _selected(names) -> list[str]:
    names = list(SHIPPED) if not names else list(names)
    unknown = [n for n in names if n not in SHIPPED]
    if unknown:
        raise ValueError(f"no shipped artifact named {unknown}; shipped: {', '.join(SHIPPED)}.")
    return names


def ship(names=None, *, folder: str | os.PathLike | None = None) -> list[Path]:
    """Retrain the shipped artifacts (all, or those of :data:`SHIPPED` named in ``names``) from
    their seeds and write the shipped files (into ``folder``, default the package's). What
    ``make zoo`` runs. Returns the files written.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    if config.seed_offset() != 0:
        raise ValueError(
            f"the shipped files are those of seed offset 0; unset {config.SEED_OFFSET_VAR} "
            f"(it is {config.seed_offset()})."
        )
    written, built = [], set()  # one run: a model several artifacts need is trained once
    for name in _selected(names):
        t0 = time.perf_counter()
        print(f"== otdiff.zoo: shipping {name!r}", flush=True)
        with artifacts.shipping(folder, built=built) as files:
            SHIPPED[name]()
        # an artifact built only to build another (the ReFlow pairs of a student) is not shipped
        planned = {(e.name, e.seed) for e in shipping_plan([name])}
        for path in files:
            if _name_and_seed(path) in planned:
                written.append(path)
            else:
                path.unlink(missing_ok=True)
                artifacts.forget(path)
        print(f"== {name!r} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return written


def _name_and_seed(path: Path) -> tuple[str, int]:
    stem, _, seed = path.stem.rpartition("-seed")
    return stem, int(seed)


def shipping_plan(names=None) -> list[artifacts.PlannedArtifact]:
    """What the shipped files must hold for the current recipes (name, seed, fingerprint,
    storage dtype), computed without reading or training anything.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    plan: list[artifacts.PlannedArtifact] = []
    for name in _selected(names):
        with artifacts.planning() as entries:
            SHIPPED[name]()
        plan += entries
    return plan


def shipped_status(names=None) -> list[tuple[artifacts.PlannedArtifact, str]]:
    """For each planned shipped file, ``"ok"``, ``"missing"``, ``"stale"`` or ``"damaged"``.

    Taught in: book/diffusion/01_score_based.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb.
    """
    from otdiff import checkpoint

    out = []
    for entry in shipping_plan(names):
        path = artifacts.shipped_path(entry.name, entry.seed)
        if not path.is_file():
            out.append((entry, "missing"))
            continue
        try:
            meta = checkpoint.read_metadata(path)
        except checkpoint.CorruptCheckpointError:
            out.append((entry, "damaged"))
            continue
        fresh = meta.get("fingerprint") == entry.fingerprint and (
            meta.get("storage_dtype") == entry.storage_dtype
        )
        out.append((entry, "ok" if fresh else "stale"))
    return out


def main(argv=None) -> int:
    """``python -m otdiff.zoo [--check] [--folder F] [NAME ...]``: ship (or check) artifacts."""
    parser = argparse.ArgumentParser(prog="python -m otdiff.zoo", description=main.__doc__)
    parser.add_argument("names", nargs="*", help=f"shipped artifacts ({', '.join(SHIPPED)})")
    parser.add_argument("--folder", help="write the shipped files here instead of the package")
    parser.add_argument("--check", action="store_true", help="only report the shipped files")
    args = parser.parse_args(argv)
    if args.check:
        status = shipped_status(args.names)
        for entry, state in status:
            print(f"{entry.name}-seed{entry.seed}: {state} (fingerprint {entry.fingerprint})")
        return 0 if all(state == "ok" for _, state in status) else 1
    t0 = time.perf_counter()
    for path in ship(args.names, folder=args.folder):
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(f"otdiff.zoo: shipped in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover - `make zoo`
    from otdiff.zoo import main as _main  # the registry lives in the imported module

    sys.exit(_main())
