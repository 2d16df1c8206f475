"""Every chapter's explorer, driven the way a reader drives it, under both presets.

A chapter tags with ``explorer`` the code cells that build its explorer (set-up, sizes, data,
``compute``/``plot``) and everything its sweep players' arguments need; these tests run just
those cells.

* Under ``demo`` they call the explorer's callback at every slider's extreme values and every
  option, and check that moving a float slider never compiles again.
* Under ``full`` (the default on a GPU, which CI does not have) they build the explorers only:
  each slider must take the value the chapter gives it under that preset, and each sweep the
  chapter plays (every ``<explorer>.sweep(...)`` call in the notebook, tagged or not) must build
  its grid inside the slider's range. Nothing is computed: ``Explorer.evaluate`` and the batched
  sweep are replaced by dry runs that only check their arguments.
"""

import ast
from pathlib import Path

import jax
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

# Chapters whose explorer is known not to build under `full` on main, each with what is wrong.
# strict: the test fails as soon as the chapter is fixed, so that the mark is removed with it.
FULL_PRESET_KNOWN_FAILURES: dict[str, str] = {}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _with_known_failures(paths, known):
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=known[_rel(p)]))
        if _rel(p) in known
        else p
        for p in paths
    ]


def _code_cells(path: Path, *, tagged: bool):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code" and (not tagged or "explorer" in cell.metadata.get("tags", [])):
            yield cell.source


def _run_explorer_cells(path: Path) -> dict:
    namespace: dict = {"__name__": "__chapter__"}
    for source in _code_cells(path, tagged=True):
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102
    plt.close("all")
    return namespace


def _explorers(namespace: dict) -> dict[str, ui.Explorer]:
    return {k: v for k, v in namespace.items() if isinstance(v, ui.Explorer)}


def _python_source(source: str) -> str:
    """A cell's source without IPython magics and shell escapes, so that ``ast`` can parse it."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )


def _sweep_calls(path: Path) -> list[tuple[str, ast.Call]]:
    """Every ``<name>.sweep(...)`` call in the notebook, with its source text."""
    calls = []
    for source in _code_cells(path, tagged=False):
        code = _python_source(source)
        for node in ast.walk(ast.parse(code)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "sweep"
                and isinstance(node.func.value, ast.Name)
            ):
                calls.append((ast.get_source_segment(code, node), node))
    return calls


def test_every_chapter_with_a_sweep_tags_its_explorer():
    for nb in sorted((ROOT / "book").rglob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(nb, 4).cells if c.cell_type == "code")
        if ".sweep(" in code:
            assert nb in CHAPTERS, f"{nb.name}: tag the cells that build its explorer 'explorer'"


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_callbacks_at_extremes_without_recompiling(path, monkeypatch):
    monkeypatch.setenv("OTDIFF_SCALE", "demo")
    explorers = _explorers(_run_explorer_cells(path))
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


def _dry_evaluate(self, **values):
    """What ``Explorer.evaluate`` checks, without computing: the values, resolved and in range."""
    return self._resolve(values)


def _dry_batched_frames(compute, name, grid, base, params, fixed, batch_size):
    return [None] * len(grid)


# Under `full` a chapter's explorer may stand on models trained at that preset's sizes (hours on
# a CPU). The dry run builds them untrained, with the structure the trained ones would have.
def _dry_cached_ipf(name, seed, manifold, sample_start, sample_end, config, n_iterations, **_):
    from otdiff.manifolds import bridge

    def net(i):
        return bridge.make_drift_network(
            jax.random.key(i), manifold, config.hidden, config.embed_dim
        )

    forward = tuple(net(100 + i) for i in range(n_iterations - 1))
    backward = tuple(net(i) for i in range(n_iterations))
    return bridge.Bridge(manifold, config, forward, backward, None, (), ())


def _dry_train_cached(seeds, images, config, **_):
    from otdiff.ot import m3g

    n_pixels = np.shape(images)[-1]
    return [
        m3g.TrainResult(m3g.init_encoder(jax.random.key(s), config, n_pixels), None, None)
        for s in np.atleast_1d(seeds)
    ]


def _dry_cached_flow(name, seed, dim, cfg, **_):
    from otdiff import flows

    return flows.make_flow(jax.random.key(seed), dim, cfg), None


def _dry_cached_pairs(name, seed, velocity, *, data, n_pairs, **_):
    from otdiff import flows

    pts = jax.numpy.zeros((n_pairs, np.shape(data)[1]))
    return flows.ReflowPairs(flows.Pairs(pts, pts), flows.Pairs(pts, pts), 0, 0)


def _dry_trainers(monkeypatch):
    from otdiff import manifolds
    from otdiff.flows import reflow
    from otdiff.manifolds import bridge
    from otdiff.ot import m3g

    for module in (manifolds, bridge):
        monkeypatch.setattr(module, "cached_ipf", _dry_cached_ipf)
    monkeypatch.setattr(m3g, "train_cached", _dry_train_cached)
    monkeypatch.setattr(reflow, "cached_flow", _dry_cached_flow)
    monkeypatch.setattr(reflow, "cached_pairs", _dry_cached_pairs)


@pytest.mark.parametrize(
    "path", _with_known_failures(CHAPTERS, FULL_PRESET_KNOWN_FAILURES), ids=_rel
)
def test_explorers_and_sweeps_build_under_the_full_preset(path, monkeypatch):
    monkeypatch.setenv("OTDIFF_SCALE", "full")
    monkeypatch.setattr(ui.Explorer, "evaluate", _dry_evaluate)
    monkeypatch.setattr(ui, "_batched_frames", _dry_batched_frames)
    _dry_trainers(monkeypatch)
    try:
        namespace = _run_explorer_cells(path)
    except ValueError as error:  # a slider given a value outside its range, for one
        pytest.fail(f"{_rel(path)}: the explorer cells do not build under full: {error}")
    explorers = _explorers(namespace)
    assert explorers, f"{path.name}: the cells tagged 'explorer' build no ui.Explorer"
    for name, ex in explorers.items():
        for p in ex.params.values():
            try:
                p.check(p.value)  # the value the control starts at, under this preset
            except ValueError as error:
                pytest.fail(f"{_rel(path)}: {name}: {error}")
    sweeps = [(text, node) for text, node in _sweep_calls(path) if node.func.value.id in explorers]
    for text, node in sweeps:
        try:
            player = eval(  # noqa: S307
                compile(ast.Expression(node), str(path), "eval"), namespace
            )
        except NameError as error:
            pytest.fail(
                f"{_rel(path)}: `{text}` needs a name that no cell tagged 'explorer' defines "
                f"({error}); tag the cell that defines it"
            )
        except ValueError as error:
            pytest.fail(f"{_rel(path)}: `{text}` does not build under full: {error}")
        assert isinstance(player, ui.Player) and len(player) >= 2, text
