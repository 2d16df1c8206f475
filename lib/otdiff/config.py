"""Scale presets, the device report and the one-call notebook set-up.

Every chapter starts with::

    from otdiff import config
    config.setup_notebook()
    N = config.choose(demo=500, full=20_000)

The preset is ``demo`` on a CPU (each chapter runs in about 90 seconds on two cores) and
``full`` when JAX sees an accelerator (the sizes the papers' claims need). The environment
variable ``OTDIFF_SCALE=demo|full`` overrides the choice.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "SCALES",
    "ENV_VAR",
    "SEED_OFFSET_VAR",
    "BOOK_STYLE",
    "default_device_kind",
    "active_scale",
    "choose",
    "seed_offset",
    "seed",
    "seeds",
    "cache_dir",
    "benchmark_results",
    "enable_compilation_cache",
    "device_report",
    "setup_notebook",
    "unguarded",
]

SCALES = ("demo", "full")
ENV_VAR = "OTDIFF_SCALE"
SEED_OFFSET_VAR = "OTDIFF_SEED_OFFSET"

T = TypeVar("T")


def default_device_kind() -> str:
    """The platform of JAX's default backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    import jax

    return jax.default_backend()


def active_scale() -> str:
    """The active preset: ``$OTDIFF_SCALE`` if set, else ``full`` on an accelerator, else ``demo``.

    Raises:
        ValueError: if ``OTDIFF_SCALE`` is set to anything but ``demo`` or ``full``.

    Taught in: book/ot/03_progot.ipynb, book/ot/05_m3g.ipynb.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value:
        if value not in SCALES:
            raise ValueError(
                f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a scale preset; "
                f"accepted values are {', '.join(SCALES)}."
            )
        return value
    return "demo" if default_device_kind() == "cpu" else "full"


def choose(*, demo: T, full: T, scale: str | None = None) -> T:
    """Return ``demo`` or ``full`` according to the active preset (or ``scale`` if given).

    Chapters read their sizes from one place at the top with this helper, e.g.
    ``n = choose(demo=500, full=20_000)``.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    scale = active_scale() if scale is None else scale
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}.")
    return demo if scale == "demo" else full


def seed_offset() -> int:
    """The shift ``$OTDIFF_SEED_OFFSET`` applies to every seed of the tests and chapters (default 0).

    A statistical claim must hold for any draw, not for one lucky seed: running the tests and the
    chapters with offsets 0, 1, 2, ... (``make robust``) checks that it does.

    Raises:
        ValueError: if the variable is set to anything but a non-negative integer.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    value = os.environ.get(SEED_OFFSET_VAR, "").strip()
    if not value:
        return 0
    try:
        offset = int(value)
    except ValueError:
        offset = -1
    if offset < 0:
        raise ValueError(
            f"{SEED_OFFSET_VAR}={os.environ[SEED_OFFSET_VAR]!r} is not a seed offset; "
            "accepted values are non-negative integers."
        )
    return offset


def seed(base: int = 0) -> int:
    """``base`` shifted by :func:`seed_offset`: how chapters and tests spell a seed.

    ``jax.random.key(config.seed(3))`` is ``jax.random.key(3)`` by default and
    ``jax.random.key(3 + k)`` under ``OTDIFF_SEED_OFFSET=k``.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/appendix/jax_primer.ipynb.
    """
    return _shift(base, "base")


def _shift(base, name: str) -> int:
    if isinstance(base, bool) or not isinstance(base, int | np.integer) or base < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {base!r}.")
    return int(base) + seed_offset()


def seeds(n: int, start: int = 0) -> list[int]:
    """``n`` consecutive seeds from ``start``, shifted by :func:`seed_offset` (for averaging).

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/06_rdsb.ipynb,
    book/optim/01_bloop.ipynb.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    return [seed(start + i) for i in range(int(n))]


def cache_dir() -> Path:
    """The user cache folder of the book (``$XDG_CACHE_HOME/otdiff`` or ``~/.cache/otdiff``).

    ``$OTDIFF_CACHE_DIR`` overrides it.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    override = os.environ.get("OTDIFF_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "otdiff"


def benchmark_results(name: str, *, start: str | os.PathLike | None = None) -> dict:
    """The record ``benchmarks/results/<name>.json`` that ``benchmarks/bench_<...>.py`` wrote.

    Each record holds the date, the machine (device, CPU count, JAX version), the settings and
    the measured rows; the chapters quote them instead of timing inside the notebook.

    Args:
        name: the record's name, without ``.json`` (e.g. ``"reflow"``, ``"scaling"``).
        start: the folder to look from (default the working directory); the project is the first
            of it and its parents that holds a ``benchmarks`` folder.

    Raises:
        FileNotFoundError: outside the project (no ``benchmarks`` folder above ``start``), or when
            the record was not written; the message names the file and the benchmarks' README.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/04_monge.ipynb, book/ot/05_m3g.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/03_spell.ipynb, book/diffusion/05_simple_reflow.ipynb,
    book/optim/01_bloop.ipynb.
    """
    import json

    if not isinstance(name, str) or not name or "/" in name or name.endswith(".json"):
        raise ValueError(f"name must be a record name such as 'reflow' (no '.json'), got {name!r}.")
    here = Path(start if start is not None else Path.cwd()).resolve()
    root = next((p for p in [here, *here.parents] if (p / "benchmarks").is_dir()), None)
    if root is None:
        raise FileNotFoundError(
            f"no 'benchmarks' folder in {here} or above it: the benchmark records live in the "
            "book's repository (benchmarks/results/); run this from inside it."
        )
    path = root / "benchmarks" / "results" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: write it with the benchmark that records {name!r} "
            "(benchmarks/README.md lists them)."
        )
    return json.loads(path.read_text())


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Turn on JAX's persistent compilation cache, small programs included.

    JAX only caches programs that took at least one second to compile and are at least a few
    kilobytes, unless both thresholds are lowered: a chapter's many small kernels then load from
    disk on the second run instead of compiling again.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    import jax

    folder = Path(path) if path is not None else cache_dir() / "jax"
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def unguarded():
    """Trace ``otdiff``'s functions without their run-time guards (a context manager or decorator).

    A public function of ``otdiff`` called inside a ``jax.jit`` (or ``vmap``) of yours cannot
    check its traced arguments when it is called, so it adds run-time checks to your program
    (``equinox.error_if``: a negative ``epsilon`` raises instead of returning NaN). Those checks
    are host callbacks, and JAX never stores a program with a host callback in its persistent
    compilation cache: it compiles again in every new session. When the traced values are your
    own checked constants, trace without the checks and keep the program in the cache::

        @jax.jit
        @config.unguarded()
        def run(keys, beta):
            ...

    Eager calls need nothing: they check their arguments at once and their compiled programs
    hold no callback. :class:`otdiff.ui.Explorer` traces its compute function this way (its
    sliders are range-checked).

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    from otdiff._checks import unguarded as _unguarded

    return _unguarded()


def device_report() -> str:
    """A one-line description of the devices JAX sees and the active preset.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    return (
        f"otdiff: JAX {jax.__version__} on {len(devices)} x {', '.join(kinds)} "
        f"({jax.default_backend()}); preset '{active_scale()}'"
    )


BOOK_STYLE: dict[str, Any] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 90,
    "savefig.dpi": 90,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "animation.embed_limit": 40.0,  # MB, for the sweep players
}


def setup_notebook(seed: int = 0, *, quiet: bool = False, compilation_cache: bool = True) -> str:
    """The one call at the top of every chapter.

    Seeds Python's and NumPy's generators with ``seed(seed)`` (shifted by ``$OTDIFF_SEED_OFFSET``;
    JAX's randomness is explicit: chapters make their keys with ``jax.random.key(config.seed(k))``), applies the book's matplotlib style, enables JAX's persistent
    compilation cache in the user cache folder, and prints a one-line banner naming the device
    and the preset.

    Args:
        seed: the seed for Python's ``random`` and NumPy's global generator; a non-negative int.
        quiet: if true, do not print the banner.
        compilation_cache: if false, leave JAX's compilation cache untouched.

    Returns:
        The active preset, ``"demo"`` or ``"full"``.

    Taught in: book/ot/01_sinkhorn.ipynb, book/ot/02_sinkhorn_init.ipynb, book/ot/03_progot.ipynb,
    book/ot/05_m3g.ipynb, book/diffusion/01_score_based.ipynb, book/diffusion/02_energy_smc.ipynb,
    book/diffusion/04_projective_composition.ipynb, book/diffusion/03_spell.ipynb,
    book/diffusion/06_rdsb.ipynb, book/optim/01_bloop.ipynb, book/appendix/jax_primer.ipynb.
    """
    shifted = _shift(seed, "seed")
    import matplotlib as mpl

    random.seed(shifted)
    np.random.seed(shifted)  # noqa: NPY002 (seeds the legacy global generator on purpose)
    mpl.rcParams.update(BOOK_STYLE)
    if compilation_cache:
        enable_compilation_cache()
    scale = active_scale()
    if not quiet:
        offset = seed_offset()
        print(device_report() + (f"; seeds shifted by {offset}" if offset else ""))
    return scale
