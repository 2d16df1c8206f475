"""Atomic, pickle-free checkpoints of pytrees.

:func:`save` writes one file: the 10 bytes ``OTDIFFCKP1``, the length of a JSON header as an
8-byte little-endian integer, the header (the caller's metadata, the shape and dtype of every
leaf, the payload's length and SHA-256), then the payload, the leaves in
:func:`equinox.tree_serialise_leaves`'s format (``.npy`` records; no pickle, so loading a file
never runs code). It writes a temporary file in the same folder, ``fsync``\\ s it and renames it
over the target (``os.replace``), so a reader sees the old file or the new one, never half of one.
:func:`load` checks the magic, the header and the hash, and raises :class:`CorruptCheckpointError`
naming the file when any of them fails, or :class:`CheckpointMismatchError` when a sound file
holds leaves of other shapes than expected.

Used by :func:`otdiff.train.fit` (resumable training) and :mod:`otdiff.zoo` (the model cache).

Taught in: book/diffusion/01_score_based.ipynb
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import numpy as np

__all__ = [
    "CorruptCheckpointError",
    "CheckpointMismatchError",
    "save",
    "load",
    "read_metadata",
]

_MAGIC = b"OTDIFFCKP1"
_FORMAT_VERSION = 1


class CorruptCheckpointError(ValueError):
    """A checkpoint file is truncated, corrupted or not a checkpoint at all.

    Taught in: book/diffusion/01_score_based.ipynb.
    """


class CheckpointMismatchError(ValueError):
    """A sound checkpoint file that belongs to another model or another training run.

    Taught in: book/diffusion/01_score_based.ipynb.
    """


def _leaf_specs(tree) -> list[list]:
    specs = []
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.ShapeDtypeStruct):  # a template (jax.eval_shape) in ``like``
            specs.append([list(leaf.shape), str(np.dtype(leaf.dtype))])
        elif isinstance(leaf, jax.Array | np.ndarray | np.generic | bool | int | float | complex):
            arr = np.asarray(leaf) if not isinstance(leaf, jax.Array) else leaf
            specs.append([list(arr.shape), str(arr.dtype)])
    return specs


def save(path: str | os.PathLike, tree, metadata: dict | None = None) -> Path:
    """Write the leaves of ``tree`` and a JSON-able ``metadata`` dict to ``path``, atomically.

    The format is described in the module docstring (no pickle). Missing parent folders are
    created. Returns the path.

    Raises:
        TypeError: if ``metadata`` is not JSON-serialisable (the old file, if any, is kept).

    Taught in: book/diffusion/01_score_based.ipynb.
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


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict stored in the checkpoint at ``path`` (after checking the file's hash).

    Raises:
        FileNotFoundError: if there is no file.
        CorruptCheckpointError: if the file is truncated or corrupted.

    Taught in: book/diffusion/01_score_based.ipynb.
    """
    return _read(Path(path))[0]["metadata"]


def load(path: str | os.PathLike, like) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save`: ``(tree, metadata)``.

    Args:
        path: the file.
        like: a pytree of the same structure, shapes and dtypes (e.g. a freshly initialised
            state, or its ``jax.eval_shape``: ``jax.ShapeDtypeStruct`` leaves are read as JAX
            arrays); its leaves are replaced by the stored ones.

    Raises:
        FileNotFoundError: if there is no file.
        CorruptCheckpointError: if the file is truncated or corrupted.
        CheckpointMismatchError: if the stored leaves do not match ``like``'s shapes and dtypes.

    Taught in: book/diffusion/01_score_based.ipynb.
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
