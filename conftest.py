"""Repository-wide pytest hooks for notebook runs (nbval).

1. Each notebook's execution time, printed after an nbval run. Every chapter's demo preset must
   execute in about 90 seconds on a 2-core CPU so that the whole test run stays well inside CI's
   budget with a dozen chapters; the table makes a slow chapter visible in every test log.
2. ``--store-executed DIR``: every notebook whose cells all passed is written, with the outputs
   nbval just produced, into the jupyter-cache at ``DIR``, the cache the Jupyter Book build reads
   (``execute_notebooks: cache``). ``make test`` runs nbval with it, then builds the HTML from
   those outputs instead of executing every chapter a second time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest

NOTEBOOK_BUDGET_S = 90.0
_notebook_seconds: dict[str, float] = defaultdict(float)
_outputs: dict[Path, dict[int, list]] = defaultdict(dict)
_failed: set[Path] = set()


def pytest_addoption(parser):
    parser.addoption(
        "--store-executed",
        metavar="DIR",
        default=None,
        help="write every notebook that passed, with its outputs, into the jupyter-cache at DIR",
    )


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    cell_num = getattr(item, "cell_num", None)
    if cell_num is not None and str(item.fspath).endswith(".ipynb"):
        path = Path(str(item.fspath)).resolve()
        if report.failed:
            _failed.add(path)
        elif call.when == "call" and report.passed:
            _outputs[path][cell_num] = (item.test_outputs or [], item.cell.get("execution_count"))
    return report


def _suppressed(source: str) -> bool:
    """IPython hides a cell's result when its last line ends with ';' (nbval's kernel does not)."""
    lines = [ln.split("#", 1)[0].rstrip() for ln in source.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    return bool(lines) and lines[-1].endswith(";")


def _store(cache_dir: str) -> list[Path]:
    import platform

    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(cache_dir)
    stored = []
    for path, cells in sorted(_outputs.items()):
        if path in _failed:
            continue
        nb = nbformat.read(path, as_version=4)
        nb.metadata.setdefault(
            "language_info",
            {"name": "python", "pygments_lexer": "ipython3", "version": platform.python_version()},
        )
        code = [c for c in nb.cells if c.cell_type == "code"]
        if set(cells) != set(range(len(code))):
            continue  # not every cell ran (a -k selection, a skipped cell): keep nothing
        for number, cell in enumerate(code, start=1):
            outputs, _ = cells[number - 1]
            cell.outputs = [
                nbformat.from_dict(dict(o))
                for o in outputs
                if not (o.get("output_type") == "execute_result" and _suppressed(cell.source))
            ]
            for out in cell.outputs:
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = number
            cell.execution_count = number
        cache.cache_notebook_bundle(
            CacheBundleIn(nb, uri=str(path), data={"execution_seconds": None}),
            check_validity=False,
            overwrite=True,
        )
        stored.append(path)
    return stored


def pytest_sessionfinish(session):
    target = session.config.getoption("--store-executed", default=None)
    if target and _outputs:
        start = time.perf_counter()
        stored = _store(target)
        session.config._stored_notebooks = (stored, time.perf_counter() - start, target)


def pytest_terminal_summary(terminalreporter, config):
    stored = getattr(config, "_stored_notebooks", None)
    if stored:
        paths, seconds, target = stored
        terminalreporter.write_line(
            f"stored {len(paths)} executed notebook(s) in {target} ({seconds:.1f} s)"
        )
    if not _notebook_seconds:
        return
    terminalreporter.section("notebook execution times")
    for path, seconds in sorted(_notebook_seconds.items()):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}{flag}")
    total = sum(_notebook_seconds.values())
    terminalreporter.write_line(f"{total:7.1f} s  total ({NOTEBOOK_BUDGET_S:.0f} s budget each)")
