"""What every benchmark writes: the machine it ran on, its settings and its rows, as JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import jax

from otdiff.progress import Progress


def machine(**versions: str | None) -> dict[str, Any]:
    """The platform, the CPU count, JAX's version and device, and any extra versions given."""
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "jax_device": f"{device.platform}: {device.device_kind}",
        **versions,
    }


RESULTS_DIR_VAR = "OTDIFF_BENCH_RESULTS"


def _progress(repeats: int, what: str, first_s: float, unit: str = "call") -> Progress:
    """A bar over the timed repeats, stating at the start what they should take at most: the
    first (untimed) call's time per repeat, compilation included."""
    expected = None if first_s != first_s else first_s * max(repeats, 1)  # nan: no warm-up
    return Progress(
        max(repeats, 1),
        f"timing {what}",
        unit=unit,
        expected_seconds=expected,
        basis="at most: the first call's time, compilation included" if expected else None,
    )


def write(path: Path, name: str, settings: dict, results: list, **versions: str | None) -> None:
    """Write ``{benchmark, date, machine, settings, results}`` to ``path`` and say so.

    With ``$OTDIFF_BENCH_RESULTS`` set, the file goes into that folder instead, under the same
    name (the GPU runbook, ``benchmarks/gpu.sh``, writes its results beside the CPU ones so).
    """
    if os.environ.get(RESULTS_DIR_VAR):
        path = Path(os.environ[RESULTS_DIR_VAR]) / Path(path).name
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(**versions),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


def median_time(fn, *args, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` over ``repeats`` calls after one warm-up call (compiles)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times = []
    with _progress(repeats, getattr(fn, "__name__", "a call"), time.perf_counter() - start) as bar:
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - start)
            bar.advance()
    return statistics.median(times)


def _names(calls: dict) -> str:
    """The rows timed together, for a bar's description (a name may be a tuple: bench_bloop's)."""
    names = [" ".join(map(str, n)) if isinstance(n, tuple) else str(n) for n in calls]
    return ", ".join(names) if len(names) <= 4 else f"{len(names)} functions, interleaved"


def median_seconds(calls: dict, repeats: int) -> dict:
    """Median wall time of each ``fn(*args)`` in ``calls`` (name -> (fn, args)).

    Every function is compiled and run once first; the timed repeats are interleaved (one call of
    each function per round), so a change of machine load affects all rows alike.
    """
    start = time.perf_counter()
    for fn, fn_args in calls.values():
        jax.block_until_ready(fn(*fn_args))
    first = time.perf_counter() - start
    times = {name: [] for name in calls}
    with _progress(repeats, _names(calls), first, unit="round") as bar:
        for _ in range(repeats):
            for name, (fn, fn_args) in calls.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(*fn_args))
                times[name].append(time.perf_counter() - start)
            bar.advance()
    return {name: statistics.median(t) for name, t in times.items()}


class Timing(NamedTuple):
    """What :func:`timed` measures: seconds of the first call, median and fastest of the rest."""

    first_s: float
    median_s: float
    min_s: float
    result: Any


def timed(fn, repeats: int, *, warmup: bool = True) -> Timing:
    """Time ``fn()`` (no arguments): a first call (compilation included; ``nan`` without
    ``warmup``), then ``repeats`` calls, each ended by ``block_until_ready``; the last result.

    ``first_s - median_s`` estimates the compile time of a jitted ``fn``.
    """
    first = float("nan")
    if warmup:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - start
    times, result = [], None
    with _progress(repeats, getattr(fn, "__name__", "a call"), first) as bar:
        for _ in range(repeats):
            start = time.perf_counter()
            result = jax.block_until_ready(fn())
            times.append(time.perf_counter() - start)
            bar.advance()
    return Timing(first, statistics.median(times), min(times), result)
