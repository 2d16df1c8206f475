"""Every chapter's explorer, driven the way a reader drives it: each slider to both ends.

A chapter tags with ``explorer`` the code cells that build its explorer (set-up, sizes, data,
``compute``/``plot``); this test runs just those cells, then calls the explorer's callback at
every slider's extreme values and every option, and checks that moving a float slider never
compiles again.
"""

from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest

from otdiff import ui

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = [
    nb
    for nb in sorted((ROOT / "book").rglob("*.ipynb"))
    if any("explorer" in c.metadata.get("tags", []) for c in nbformat.read(nb, 4).cells)
]


def _explorers(path: Path) -> dict[str, ui.Explorer]:
    cells = [
        c.source
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "code" and "explorer" in c.metadata.get("tags", [])
    ]
    namespace: dict = {"__name__": "__chapter__"}
    for source in cells:
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102
    plt.close("all")
    return {k: v for k, v in namespace.items() if isinstance(v, ui.Explorer)}


def test_every_chapter_with_a_sweep_tags_its_explorer():
    for nb in sorted((ROOT / "book").rglob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(nb, 4).cells if c.cell_type == "code")
        if ".sweep(" in code:
            assert nb in CHAPTERS, f"{nb.name}: tag the cells that build its explorer 'explorer'"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_callbacks_at_extremes_without_recompiling(path, monkeypatch):
    monkeypatch.setenv("OTDIFF_SCALE", "demo")
    explorers = _explorers(path)
    assert explorers, f"{path.name}: the cells tagged 'explorer' build no ui.Explorer"
    for name, ex in explorers.items():
        for values in ex.extremes():
            plt.close(ex.callback(**values))
        compiled = ex.compilations()
        static = [p for p in ex.params.values() if p.static]
        expected_max = int(np.prod([len(p.options) or 2 for p in static])) + 1 if static else 1
        assert compiled <= expected_max, f"{name}: {compiled} compilations for the extremes"
        # Float sliders are dynamic: sweeping them end to end adds no compilation.
        for p in ex.params.values():
            if not p.static:
                for value in p.grid(4):
                    plt.close(ex.callback(**{p.name: value}))
        assert ex.compilations() == compiled, f"{name}: a float slider move recompiled"
