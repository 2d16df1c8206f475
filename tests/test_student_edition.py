"""The student edition (``make student``, ``tools/student.py``): no solution survives, every
exercise stays, and the code exercises keep their checks with a stub in place of the answer.

The edition is written from the source notebooks without executing anything (a few seconds).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import student  # noqa: E402

SOLUTION = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution\}[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
EXERCISE_LABEL = re.compile(r"\{exercise\}[^\n]*\n:label:\s*(\S+)")
CODE_SOLUTION = re.compile(r"# BEGIN SOLUTION\n(?P<body>.*?)# END SOLUTION", re.DOTALL)


def _distinctive(body: str) -> list[str]:
    """Lines of a solution long enough to be its own (not a fence, an option or a blank)."""
    lines = [ln.strip() for ln in body.splitlines()]
    return [ln for ln in lines if len(ln) >= 25 and not ln.startswith((":", "`", "$$"))]


@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    student.write_edition(out, outputs=False)
    return out


def _sources() -> list[Path]:
    return sorted(
        p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )


def _text(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "\n".join(cell.source for cell in nb.cells)


def test_every_chapter_is_written(edition):
    written = {
        p.relative_to(edition / "notebooks") for p in (edition / "notebooks").rglob("*.ipynb")
    }
    expected = {p.relative_to(ROOT / "book") for p in _sources()}
    assert written == expected
    assert (edition / "book" / "_config.yml").is_file() and (
        edition / "book" / "_toc.yml"
    ).is_file()


@pytest.mark.parametrize("source", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_solution_survives_and_every_exercise_stays(edition, source):
    lecturer = _text(source)
    relative = source.relative_to(ROOT / "book")
    copies = [edition / "notebooks" / relative, edition / "book" / "book" / relative]
    secrets = [ln for m in SOLUTION.finditer(lecturer) for ln in _distinctive(m["body"])]
    secrets += [ln for m in CODE_SOLUTION.finditer(lecturer) for ln in _distinctive(m["body"])]
    # A line a solution shares with the chapter's own text (a set-up line it repeats) is no secret.
    public = CODE_SOLUTION.sub("", SOLUTION.sub("", lecturer))
    secrets = [s for s in secrets if s not in public]
    labels = EXERCISE_LABEL.findall(lecturer)
    for copy in copies:
        raw = copy.read_text(encoding="utf-8")  # the whole file: sources, outputs and metadata
        text = _text(copy)
        assert "{solution}" not in raw and "BEGIN SOLUTION" not in raw
        survivors = [s for s in secrets if s in text or s in raw]
        assert not survivors, f"{copy}: solution text survives: {survivors[:3]}"
        assert EXERCISE_LABEL.findall(text) == labels, f"{copy}: an exercise was lost"


def test_code_exercises_keep_their_check_with_a_stub(edition):
    sources = [p for p in _sources() if "# BEGIN SOLUTION" in _text(p)]
    assert sources, "no chapter has a code exercise with a check"
    for source in sources:
        copy = edition / "notebooks" / source.relative_to(ROOT / "book")
        text = _text(copy)
        assert student.STUB in text
        assert "exercise.check(" in text


def test_strip_code_keeps_the_signature_and_indentation():
    source = 'def f(x):\n    """Doc."""\n    # BEGIN SOLUTION\n    return 2 * x\n    # END SOLUTION'
    assert student.strip_code(source) == f'def f(x):\n    """Doc."""\n    {student.STUB}'
    assert student.strip_code("x = 1") is None  # a solution cell without markers goes whole


def test_strip_markdown_removes_every_fence_kind():
    text = (
        "```{exercise}\n:label: a\n\nQ.\n```\n\n"
        "````{solution} a\n:class: dropdown\n\nAnswer.\n```python\ncode\n```\n````\n\n"
        ":::{solution} a\nAnswer two.\n:::\n\nAfter."
    )
    out = student.strip_markdown(text)
    assert "Answer" not in out and "code" not in out and "{solution}" not in out
    assert "Q." in out and "After." in out


def test_the_html_reuses_the_lecturers_outputs_but_not_the_solutions(tmp_path, monkeypatch):
    """With an execution cache (what ``make book``/``make test`` leave), the student tree's
    notebooks carry the lecturer's outputs for the cells they keep, and none for a solution."""
    jupyter_cache = pytest.importorskip("jupyter_cache")
    from jupyter_cache.base import CacheBundleIn

    source = next(p for p in _sources() if "# BEGIN SOLUTION" in _text(p))
    nb = nbformat.read(source, as_version=4)
    executed = nbformat.from_dict(nb)
    for i, cell in enumerate(executed.cells):
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"out {i}\n")]
    cache = jupyter_cache.get_cache(str(tmp_path / "cache"))
    cache.cache_notebook_bundle(
        CacheBundleIn(executed, uri=str(source)), check_validity=False, overwrite=True
    )
    monkeypatch.setattr(student, "CACHE", tmp_path / "cache")
    out = tmp_path / "edition"
    student.write_edition(out, outputs=True)
    html_source = nbformat.read(out / "book" / source.relative_to(ROOT), as_version=4)
    handout = nbformat.read(out / "notebooks" / source.relative_to(ROOT / "book"), as_version=4)
    with_outputs = [c for c in html_source.cells if c.cell_type == "code" and c.outputs]
    assert with_outputs, "the lecturer's outputs were not reused"
    for cell in html_source.cells:
        if cell.cell_type == "code" and student.STUB in cell.source:
            assert not cell.outputs, "a solution cell kept the lecturer's output"
    assert not any(c.get("outputs") for c in handout.cells), "the handouts must be stripped"


def test_no_line_of_a_code_solution_survives_however_short(edition):
    """The distinctive-line test above skips lines under 25 characters (``return -d * (x @ a)``):
    here every solution cell of a handout is exactly its signature, docstring and the stub."""
    checked = 0
    for source in _sources():
        lecturer = nbformat.read(source, as_version=4)
        solutions = [c.source for c in lecturer.cells if student.BEGIN in c.source]
        if not solutions:
            continue
        handout = nbformat.read(
            edition / "notebooks" / source.relative_to(ROOT / "book"), as_version=4
        )
        kept = [c.source for c in handout.cells if student.STUB in c.source]
        assert len(kept) == len(solutions), f"{source}: a solution cell was lost or left whole"
        for solution, cell in zip(solutions, kept, strict=True):
            body = CODE_SOLUTION.search(solution)["body"]
            lines = {ln.strip() for ln in cell.splitlines()}
            survivors = [s for s in (ln.strip() for ln in body.splitlines()) if s and s in lines]
            assert not survivors, f"{source}: solution lines survive: {survivors}"
            assert cell == student.strip_code(solution)
            checked += 1
    assert checked >= 7  # Sinkhorn, Sinkhorn-init, ProgOT, M3G, RDSB, Bloop, the JAX primer
