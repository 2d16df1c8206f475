"""One cache for every trained artifact: load it if it exists, else build it once and keep it.

A trained *artifact* is any pytree of arrays that takes a while to compute and is fully
determined by a seed, some settings and some code: the weights of a diffusion model, a set of
encoders, the networks of a Schrödinger bridge, a set of ReFlow pairs. :func:`cached` returns it
from the first of three places that holds a sound copy, and builds it otherwise::

    from otdiff import artifacts

    art = artifacts.cached(
        "my_encoders", seed, {"config": cfg._asdict(), "code": [train_encoders]},
        build=lambda progress: (train_encoders(jax.random.key(seed), cfg), {"note": "..."}),
        like=lambda: template_of_the_tree,
    )
    encoders = art.tree

1. **Shipped files**: the folder :func:`shipped_dir` inside the package (``otdiff/zoo_weights``,
   installed with it) holds ``<name>-seed<seed>.ckpt`` for the artifacts the book ships, written
   by ``make zoo`` with the project's own code. A shipped file is used when the fingerprint in its
   header equals the fingerprint of the current inputs and its payload matches the SHA-256 in its
   header. A stale file (the settings or the code changed since ``make zoo``) or a damaged one is
   reported in a :class:`ShippedArtifactWarning` and skipped; it is never modified or deleted.
2. **The user cache**: ``<cache>/<name>-seed<seed>-<fingerprint>.ckpt``, ``cache`` defaulting to
   ``otdiff.config.cache_dir() / "zoo"`` (``$OTDIFF_CACHE_DIR`` moves the root). A damaged file
   there is reported in a warning and rebuilt.
3. **Building**: ``build(progress_path)`` computes the artifact and returns ``(tree, metadata)``;
   the tree is saved to the user cache. A build may save its progress to ``progress_path`` and
   resume from it (:func:`otdiff.train.fit` does, with ``checkpoint_path=progress_path``): an
   interrupted build then continues where it stopped. A damaged or foreign progress file
   (``CorruptCheckpointError``/``CheckpointMismatchError`` from the build) is dropped with a
   warning and the build starts over.

**The fingerprint** (:func:`fingerprint`) is a short SHA-256 of the inputs: JSON-like settings
(dicts, lists, numbers, strings; NamedTuples and dataclasses by their fields), arrays by their
bytes, and functions and classes by their source code with docstrings, comments and formatting
removed (the syntax tree), so editing a docstring keeps the cached files and editing the code
they list rebuilds them. Code a build uses but does not list is not seen: list it, or put a
``"version"`` in the inputs and bump it.

**Safety.** Files are written atomically with a SHA-256 of their payload, pickle-free
(:mod:`otdiff.checkpoint`); a lock file (``filelock``) serialises check-build-save, so two
processes asking for the same artifact build it once; nothing half-written is ever read.

**Shipping.** Inside ``with shipping(folder):`` (what ``make zoo`` runs, through
``python -m otdiff.zoo``) every :func:`cached` call ignores the files that exist, builds afresh
from its seed, and also writes ``<folder>/<name>-seed<seed>.ckpt``, its floating-point arrays
stored as ``storage_dtype`` (``"float16"`` halves the size where the artifact's quality survives
it, which its recipe must have measured). Inside ``with planning() as plan:`` every call only
records what it would load (name, seed, fingerprint, storage dtype) and returns zeros shaped like
the artifact: a test compares that plan with the shipped files.

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import textwrap
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from otdiff import checkpoint, config
from otdiff._checks import check_choice, check_int, check_positive

__all__ = [
    "Artifact",
    "PlannedArtifact",
    "ShippedArtifactWarning",
    "STORAGE_DTYPES",
    "SHIPPED_DIR_VAR",
    "cached",
    "find",
    "fingerprint",
    "shipped_dir",
    "shipped_path",
    "cache_folder",
    "shipping",
    "planning",
    "forget",
]

#: How a shipped file may store its floating-point arrays (besides ``None``: as built).
STORAGE_DTYPES = ("float32", "float16")
#: The environment variable that moves the shipped folder (tests, or ``make zoo`` into a copy).
SHIPPED_DIR_VAR = "OTDIFF_SHIPPED_DIR"


class ShippedArtifactWarning(UserWarning):
    """A shipped file is stale or damaged: it was skipped (and left as it is).

    Taught in: book/diffusion/01_score_based.ipynb.
    """


class Artifact(NamedTuple):
    """What :func:`cached` returns.

    Attributes:
        tree: the artifact, a pytree with the structure, shapes and dtypes of ``like``.
        meta: its metadata: ``name``, ``seed``, ``fingerprint``, ``created``,
            ``build_seconds`` (of the run that built it), ``platform`` and whatever the build
            returned.
        path: the file it was read from or saved to.
        source: ``"shipped"``, ``"cache"`` (the user cache), ``"built"`` (built by this call) or
            ``"planned"`` (inside :func:`planning`: zeros, nothing read).

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    tree: Any
    meta: dict
    path: Path
    source: str


class PlannedArtifact(NamedTuple):
    """One entry of a :func:`planning` record: what a :func:`cached` call would load.

    Taught in: book/diffusion/01_score_based.ipynb.
    """

    name: str
    seed: int
    fingerprint: str
    storage_dtype: str | None


# -- fingerprints ---------------------------------------------------------------------------------


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Module = _strip


# Digests already computed, by function or class: reading a class's source searches its whole
# module, and a chapter that loads twenty shipped networks fingerprints the same code each time.
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _code_digest(obj) -> str:
    """The syntax tree of ``obj``'s source without docstrings (raw source if it does not parse).

    Computed once per function or class object (a module reloaded gives new objects, read anew).
    """
    try:
        return _DIGESTS[obj]
    except (KeyError, TypeError):  # not seen yet, or an object without weak references
        pass
    digest = _code_digest_uncached(obj)
    with contextlib.suppress(TypeError):
        _DIGESTS[obj] = digest
    return digest


def _code_digest_uncached(obj) -> str:
    try:
        source = textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        return f"<code {getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}>"
    try:
        # the source rewritten from its syntax tree: comments, docstrings and formatting
        # are gone, and the text is the same on every Python version that reads the file
        return ast.unparse(_StripDocstrings().visit(ast.parse(source)))
    except SyntaxError:  # e.g. a lambda cut out of a longer expression
        return source


def _canonical(obj) -> Any:
    """A JSON-able, deterministic description of ``obj`` (see :func:`fingerprint`)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, jax.Array | np.ndarray):
        arr = np.ascontiguousarray(jax.device_get(obj))
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        return {"array": [list(arr.shape), str(arr.dtype), digest]}
    if isinstance(obj, Path):
        return str(obj)
    wrapped = getattr(obj, "__wrapped__", None)  # jax.jit, eqx.filter_jit, functools.wraps
    if wrapped is not None and callable(obj) and not inspect.isclass(obj):
        return _canonical(inspect.unwrap(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, tuple) and hasattr(obj, "_asdict"):  # a NamedTuple
        return {type(obj).__name__: _canonical(obj._asdict())}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {type(obj).__name__: _canonical(fields)}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    func = getattr(obj, "func", None)  # functools.partial, jax.tree_util.Partial
    if func is not None and callable(func) and hasattr(obj, "args"):
        return {
            "partial": _canonical(func),
            "args": _canonical(list(obj.args)),
            "keywords": _canonical(dict(getattr(obj, "keywords", None) or {})),
        }
    if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
        return {"code": _code_digest(obj)}
    text = repr(obj)
    if " at 0x" in text:
        raise TypeError(
            f"fingerprint inputs must be settings, arrays, functions or classes; "
            f"{type(obj).__name__} has no stable description ({text[:60]}...): pass its settings."
        )
    return {"repr": text}


def fingerprint(inputs: Any) -> str:
    """A short hash (12 hex digits) of everything that determines an artifact.

    Args:
        inputs: settings (dicts, lists, tuples, numbers, strings, ``None``; NamedTuples and
            dataclasses by their fields), arrays (by shape, dtype and bytes), functions and
            classes (by their source's syntax tree, docstrings and formatting ignored; a
            jitted or otherwise wrapped function by the function it wraps), and partials of
            functions (the function and its arguments).

    Raises:
        TypeError: for an object with no stable description (its ``repr`` holds an address).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    blob = json.dumps(_canonical(inputs), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# -- folders --------------------------------------------------------------------------------------


def shipped_dir() -> Path:
    """The folder of shipped artifacts: ``otdiff/zoo_weights`` in the package, or
    ``$OTDIFF_SHIPPED_DIR``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    override = os.environ.get(SHIPPED_DIR_VAR)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent / "zoo_weights"


def shipped_path(name: str, seed: int) -> Path:
    """The shipped file of artifact ``name`` at ``seed``: ``shipped_dir() / f"{name}-seed{seed}.ckpt"``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    return shipped_dir() / f"{_check_name(name)}-seed{check_int(seed, 'seed', low=0)}.ckpt"


def cache_folder(cache: str | os.PathLike | None = None) -> Path:
    """The user cache of artifacts: ``cache`` if given, else ``otdiff.config.cache_dir() / "zoo"``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    return Path(cache).expanduser() if cache is not None else config.cache_dir() / "zoo"


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
        raise ValueError(
            f"name must be a non-empty string of letters, digits, '_' or '-', got {name!r}."
        )
    return name


# -- shipping and planning ------------------------------------------------------------------------


class _Shipping(NamedTuple):
    folder: Path
    written: list
    built: set  # (name, seed, fingerprint) built afresh by this shipping run (maybe shared)


class _Planning(list):
    """The :class:`PlannedArtifact` entries recorded inside :func:`planning`."""


_MODE: list = []  # the active shipping or planning context (innermost last)


@contextlib.contextmanager
def shipping(
    folder: str | os.PathLike | None = None, *, built: set | None = None
) -> Iterator[list[Path]]:
    """Inside this context every :func:`cached` call builds afresh and writes a shipped file.

    An artifact is built once per shipping run: a second call for the same name, seed and
    fingerprint (a model another artifact is trained from) reads the copy just built.

    Args:
        folder: where to write ``<name>-seed<seed>.ckpt`` (default :func:`shipped_dir`).
        built: a set shared by several contexts that form one run (what ``make zoo`` does); it
            collects ``(name, seed, fingerprint)`` of the artifacts built so far.

    Yields:
        The list of the files written so far (filled as the calls run).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    folder = Path(folder) if folder is not None else shipped_dir()
    state = _Shipping(folder, [], built if built is not None else set())
    _MODE.append(state)
    try:
        yield state.written
    finally:
        _MODE.remove(state)


@contextlib.contextmanager
def planning() -> Iterator[list[PlannedArtifact]]:
    """Inside this context :func:`cached` reads and builds nothing: it records a
    :class:`PlannedArtifact` per call and returns zeros shaped like the artifact.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    plan = _Planning()
    _MODE.append(plan)
    try:
        yield plan
    finally:
        _MODE.remove(plan)


# -- reading and writing --------------------------------------------------------------------------


_MEMORY: dict[str, tuple[int, Artifact]] = {}


def forget(path: str | os.PathLike | None = None) -> None:
    """Drop the in-memory copy of the artifact read from ``path`` (of every artifact if ``None``).

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    if path is None:
        _MEMORY.clear()
    else:
        _MEMORY.pop(str(Path(path).resolve()), None)


def _is_float(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | jax.ShapeDtypeStruct) and jnp.issubdtype(
        leaf.dtype, jnp.floating
    )


def _as_dtype(tree, dtype):
    """``tree`` with its floating-point leaves (arrays or shape structs) cast to ``dtype``."""

    def cast(leaf):
        if not _is_float(leaf):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, dtype)
        return np.asarray(jax.device_get(leaf)).astype(dtype)

    return jax.tree_util.tree_map(cast, tree)


def _restore_dtypes(tree, like):
    return jax.tree_util.tree_map(
        lambda x, ref: jnp.asarray(x, ref.dtype) if _is_float(ref) else x, tree, like
    )


def _zeros_like(like):
    return jax.tree_util.tree_map(
        lambda leaf: (
            jnp.zeros(leaf.shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf
        ),
        like,
    )


def _read(path: Path, like, source: str) -> Artifact:
    """The artifact in ``path`` (its float leaves stored in any dtype, returned as ``like``'s)."""
    meta = checkpoint.read_metadata(path)
    stored = meta.get("storage_dtype")
    wanted = like if stored is None else _as_dtype(like, stored)
    tree, meta = checkpoint.load(path, wanted)
    if stored is not None:
        tree = _restore_dtypes(tree, like)
    art = Artifact(tree=tree, meta=meta, path=path, source=source)
    _MEMORY[str(path.resolve())] = (path.stat().st_mtime_ns, art)
    return art


def _remembered(path: Path) -> Artifact | None:
    hit = _MEMORY.get(str(path.resolve()))
    if hit is None or not path.exists() or path.stat().st_mtime_ns != hit[0]:
        return None
    return hit[1]


def _save(path: Path, tree, meta: dict, storage_dtype: str | None) -> None:
    if storage_dtype is not None:
        tree = _as_dtype(tree, storage_dtype)
    checkpoint.save(path, tree, {**meta, "storage_dtype": storage_dtype})


def _try_shipped(name: str, seed: int, fp: str, like_fn) -> Artifact | None:
    path = shipped_dir() / f"{name}-seed{seed}.ckpt"
    if not path.is_file():
        return None
    hit = _remembered(path)
    if hit is not None and hit.meta.get("fingerprint") == fp:
        return hit
    try:
        stored_fp = checkpoint.read_metadata(path).get("fingerprint")
        if stored_fp != fp:
            warnings.warn(
                f"otdiff: the shipped file {path} is stale (fingerprint {stored_fp}, the current "
                f"settings and code give {fp}); it is left as it is and {name!r} comes from the "
                "user cache or is built on first use. Run `make zoo` to refresh the shipped files.",
                ShippedArtifactWarning,
                stacklevel=4,
            )
            return None
        return _read(path, like_fn(), "shipped")
    except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as err:
        warnings.warn(
            f"otdiff: {err} The shipped file is left as it is and {name!r} comes from the user "
            "cache or is built on first use. Run `make zoo` to rewrite the shipped files.",
            ShippedArtifactWarning,
            stacklevel=4,
        )
        return None


def _build(name, seed, fp, build, progress: Path, verbose: bool) -> tuple[Any, dict, float]:
    if verbose:
        resumed = " (resuming an interrupted run)" if progress.exists() else ""
        print(f"otdiff: building {name!r} (seed {seed}) on first use{resumed}...", flush=True)
    t0 = time.perf_counter()
    try:
        out = build(progress)
    except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as err:
        warnings.warn(f"otdiff: {err} Building {name!r} from scratch.", stacklevel=4)
        progress.unlink(missing_ok=True)
        out = build(progress)
    seconds = time.perf_counter() - t0
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise TypeError(f"build must return (tree, metadata_dict), got {type(out).__name__}.")
    tree, extra = out
    meta = {
        **extra,
        "name": name,
        "seed": seed,
        "fingerprint": fp,
        "build_seconds": round(seconds, 2),
        "platform": f"{jax.default_backend()} (jax {jax.__version__})",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if verbose:
        print(f"otdiff: built {name!r} in {seconds:.1f} s; cached.", flush=True)
    return tree, meta, seconds


def find(
    name: str,
    seed: int,
    inputs: Any,
    *,
    like: Any,
    cache: str | os.PathLike | None = None,
) -> Artifact | None:
    """The artifact ``name`` at ``seed`` if a sound copy is shipped or in the user cache, else
    ``None``; nothing is built or written.

    For a build that can start from a related artifact (a run continued from a shorter cached
    one, a set of models trained together in one program when several are missing). Arguments
    as in :func:`cached`. Inside :func:`shipping` or :func:`planning` it returns ``None`` (a
    shipped file is always built from its seed). A stale or damaged shipped file is reported
    as in :func:`cached`; a damaged cached file is ignored.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    name = _check_name(name)
    seed = check_int(seed, "seed", low=0)
    if _MODE:
        return None
    like_fn = like if callable(like) else (lambda: like)
    fp = fingerprint(inputs)
    art = _try_shipped(name, seed, fp, like_fn)
    if art is not None:
        return art
    path = cache_folder(cache) / f"{name}-seed{seed}-{fp}.ckpt"
    hit = _remembered(path)
    if hit is not None:
        return hit._replace(source="cache")
    if not path.is_file():
        return None
    try:
        return _read(path, like_fn(), "cache")
    except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError):
        return None


def cached(
    name: str,
    seed: int,
    inputs: Any,
    *,
    build: Callable[[Path], tuple[Any, dict]],
    like: Any,
    cache: str | os.PathLike | None = None,
    retrain: bool = False,
    verbose: bool = True,
    lock_timeout: float = 1800.0,
    storage_dtype: str | None = None,
) -> Artifact:
    """The artifact ``name`` at ``seed``: shipped, cached, or built now (module docstring).

    Args:
        name: the artifact's name (letters, digits, ``_``, ``-``; used in file names).
        seed: the seed it is built from (an int >= 0; part of the file name).
        inputs: everything else that determines it, for :func:`fingerprint` (settings, arrays,
            the functions and classes of its code). The seed need not be repeated.
        build: ``build(progress_path) -> (tree, metadata)``: computes the artifact (a pytree of
            arrays) and a JSON-able dict; it may save and resume its progress at
            ``progress_path``.
        like: a pytree with the artifact's structure, shapes and dtypes (arrays or
            ``jax.ShapeDtypeStruct``), or a function of no argument returning one (called only
            when a file is read).
        cache: the user cache folder (default :func:`cache_folder`).
        retrain: ignore the shipped file and the cached one, build afresh and replace the cached
            one.
        verbose: print a line when a build starts and ends.
        lock_timeout: seconds to wait for another process building the same artifact (> 0).
        storage_dtype: how a shipped file stores the floating-point arrays (``None`` as built,
            ``"float32"`` or ``"float16"``); the user cache always keeps them as built.

    Returns:
        An :class:`Artifact`.

    Raises:
        ValueError: for a bad name, seed or storage dtype.
        TimeoutError: if another process holds the lock longer than ``lock_timeout``.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    from filelock import FileLock
    from filelock import Timeout as LockTimeout

    name = _check_name(name)
    seed = check_int(seed, "seed", low=0)
    check_positive(lock_timeout, "lock_timeout")
    if storage_dtype is not None:
        check_choice(storage_dtype, "storage_dtype", STORAGE_DTYPES)
    if not callable(build):
        raise TypeError(f"build must be callable as build(progress_path), got {build!r}.")
    like_fn = like if callable(like) else (lambda: like)
    fp = fingerprint(inputs)
    mode = _MODE[-1] if _MODE else None
    if isinstance(mode, _Planning):
        mode.append(PlannedArtifact(name, seed, fp, storage_dtype))
        path = shipped_dir() / f"{name}-seed{seed}.ckpt"
        return Artifact(_zeros_like(like_fn()), {"name": name, "seed": seed}, path, "planned")
    shipping_to = mode.folder if isinstance(mode, _Shipping) else None
    # inside a shipping run: built afresh, once (then the user cache holds this run's build)
    built_now = shipping_to is not None and (name, seed, fp) in mode.built
    fresh = retrain or (shipping_to is not None and not built_now)

    if not fresh and not built_now:
        art = _try_shipped(name, seed, fp, like_fn)
        if art is not None:
            return art
    folder = cache_folder(cache)
    stem = f"{name}-seed{seed}-{fp}"
    path, progress = folder / f"{stem}.ckpt", folder / f"{stem}.train.ckpt"
    if not fresh:
        hit = _remembered(path)
        if hit is not None:
            return hit._replace(source="cache")
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{stem}.lock"), timeout=lock_timeout)
    try:
        lock.acquire()
    except LockTimeout:
        raise TimeoutError(
            f"otdiff: waited {lock_timeout:g} s for {lock.lock_file} (another process building "
            f"{name!r}?); delete the lock file if no such process exists."
        ) from None
    try:
        if fresh:
            path.unlink(missing_ok=True)
            progress.unlink(missing_ok=True)
            forget(path)
        if path.exists():
            try:
                return _read(path, like_fn(), "cache")
            except (checkpoint.CorruptCheckpointError, checkpoint.CheckpointMismatchError) as err:
                warnings.warn(f"otdiff: {err} Rebuilding it.", stacklevel=2)
                path.unlink(missing_ok=True)
        tree, meta, _ = _build(name, seed, fp, build, progress, verbose)
        _save(path, tree, meta, None)
        progress.unlink(missing_ok=True)
        if shipping_to is not None:
            target = shipping_to / f"{name}-seed{seed}.ckpt"
            _save(target, tree, meta, storage_dtype)
            forget(target)
            mode.written.append(target)
            mode.built.add((name, seed, fp))
            if verbose:
                size = target.stat().st_size / 1e6
                print(f"otdiff: shipped {target} ({size:.2f} MB)", flush=True)
        art = Artifact(tree=tree, meta={**meta, "storage_dtype": None}, path=path, source="built")
        _MEMORY[str(path.resolve())] = (path.stat().st_mtime_ns, art)
        return art
    finally:
        lock.release()
