"""Book hygiene: stripped outputs, the one set-up call, a complete toc, the chapter template.

The chapter template (CONTRIBUTING.md, "Writing a chapter") is enforced here where a test can see
it: every chapter opens with learning objectives and prerequisites, asserts its claims, closes
with a summary, at least two exercises (each with a difficulty level and a solution) and its
references; and no page of the book speaks of anything its reader does not have (issues, notes,
goals, briefs, to-do items).
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import student  # noqa: E402  (tools/student.py: the book's pages, from _toc.yml)

NOTEBOOKS = sorted((ROOT / "book").rglob("*.ipynb"))
NOTEBOOKS = [nb for nb in NOTEBOOKS if ".ipynb_checkpoints" not in nb.parts]
PAGES = NOTEBOOKS + sorted(
    p for p in (ROOT / "book").rglob("*.md") if ".ipynb_checkpoints" not in p.parts
)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _with_known_failures(paths, known: dict[str, str]):
    """Parameters for ``paths``; those listed in ``known`` are expected to fail (strict: the test
    fails once the page is fixed, so that the mark goes with the fix)."""
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=known[_rel(p)]))
        if _rel(p) in known
        else p
        for p in paths
    ]


def _toc_files() -> list[str]:
    return student.toc_files()


def _source(path: Path) -> Path | None:
    for suffix in (".ipynb", ".md"):
        candidate = ROOT / (path.as_posix() + suffix)
        if candidate.exists():
            return candidate
    return None


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebook under book/"


def test_every_toc_entry_exists_and_every_notebook_is_in_the_toc():
    files = _toc_files()
    missing = [f for f in files if _source(Path(f)) is None]
    assert not missing, f"_toc.yml names files that do not exist: {missing}"
    listed = {(ROOT / f).with_suffix("").as_posix() for f in files}
    orphans = [
        nb.relative_to(ROOT) for nb in NOTEBOOKS if nb.with_suffix("").as_posix() not in listed
    ]
    assert not orphans, f"notebooks missing from _toc.yml: {orphans}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
class TestNotebook:
    def test_outputs_are_stripped(self, path):
        nb = nbformat.read(path, as_version=4)
        dirty = [
            i
            for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and (c.outputs or c.execution_count)
        ]
        assert not dirty, f"cells {dirty} have outputs or execution counts: strip them"
        assert "widgets" not in nb.metadata, "notebook metadata holds saved widget state"

    def test_valid_and_python3_kernel(self, path):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.get("kernelspec", {}).get("name") == "python3"

    def test_first_code_cell_sets_up_the_notebook(self, path):
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "setup_notebook(" in first.source, (
            "the first code cell must call config.setup_notebook()"
        )

    def test_claims_are_asserted(self, path):
        nb = nbformat.read(path, as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert any(re.search(r"^\s*assert\b", src, re.M) for src in code), "no assert cell"

    def test_chapter_has_exercises_and_references(self, path):
        text = "\n".join(
            c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"
        )
        assert "{exercise}" in text and "{solution}" in text, "exercises with solutions are missing"
        # Per-page references: {footcite} + {footbibliography}. A {bibliography} directive per
        # page would repeat keys across pages, which sphinxcontrib-bibtex warns about (-W fails).
        assert "{footbibliography}" in text, (
            "the references section ({footbibliography}) is missing"
        )
        assert "{bibliography}" not in text, "use {footcite}/{footbibliography}, not {bibliography}"

    def test_sizes_come_from_the_preset(self, path):
        nb = nbformat.read(path, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "config.choose(" in code or "choose(" in code, "sizes must come from config.choose"


# -- the book speaks to its reader only ------------------------------------------------------------

# Words that only make sense to the people who wrote the book. Case-insensitive, whole words.
# ("Note that" is fine; "notes" is not: the reader has no notes. Say "in our runs", cite the paper,
# or call a heuristic the book's own.)
AUTHORING_WORDS = {
    "the issue": r"\bthe issue\b",
    "issue's": r"\bissue'?s\b",
    "issue N": r"\bissues?\s*#?\d+",
    "notes": r"\bnotes\b",
    "Goal 1/2": r"\bgoals?\s*[12]\b",
    "brief": r"\b(?:the|this|that|your|my|our)\s+brief\b|\bbriefs\b",
    "the lead": r"\bthe lead\b",
    "TODO": r"\b(?:todo|fixme|xxx)\b",
}
_AUTHORING = re.compile("|".join(f"(?:{p})" for p in AUTHORING_WORDS.values()), re.IGNORECASE)

# Pages that still speak of authoring matters on main (each is being revised by its owner).
AUTHORING_KNOWN_FAILURES: dict[str, str] = {}


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(where, text) pairs: every cell of a notebook (markdown and code), or a page's lines."""
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        return [(f"cell {i}", c.source) for i, c in enumerate(cells)]
    return [(f"line {i}", line) for i, line in enumerate(path.read_text().splitlines(), 1)]


@pytest.mark.parametrize("path", _with_known_failures(PAGES, AUTHORING_KNOWN_FAILURES), ids=_rel)
def test_the_book_speaks_to_its_reader_only(path):
    found = [
        f"{where}: ...{text[max(m.start() - 40, 0) : m.end() + 20]!r}..."
        for where, text in _blocks(path)
        for m in _AUTHORING.finditer(text)
    ]
    assert not found, (
        "authoring words a reader cannot follow (cite the paper, say 'in our runs', or call a "
        "heuristic the book's own):\n" + "\n".join(found)
    )


def test_the_authoring_words_are_caught():
    for text in (
        "the setting of the issue",
        "the issue's sizes",
        "see issue 14",
        "the project's notes measured",
        "(notes: 0.91)",
        "Goal 1",
        "as the brief says",
        "TODO: rerun",
        "ask the lead",
    ):
        assert _AUTHORING.search(text), text
    for text in ("Note that", "a brief look", "the footnotes", "denote", "notebook", "issued"):
        assert not _AUTHORING.search(text), text


# -- the chapter template ---------------------------------------------------------------------------

OBJECTIVES = re.compile(r"you\s+will\s+be\s+able\s+to|learning\s+objectives", re.IGNORECASE)
PREREQUISITES = re.compile(r"\bprerequisites?\b", re.IGNORECASE)
SUMMARY = re.compile(r"^#{2,4}[ \t]+(?:\d+\.[ \t]*)?summary\b", re.IGNORECASE | re.MULTILINE)
REFERENCES = re.compile(r"^#{2,4}[ \t]+(?:\d+\.[ \t]*)?references\b", re.IGNORECASE | re.MULTILINE)
EXERCISE = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{exercise\}[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
SOLUTION = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution\}[ \t]+(?P<label>\S+)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
# The first line of every exercise's body, written the same way in every chapter.
DIFFICULTY = re.compile(
    r"\*\*Difficulty:\*\* (?:★☆☆ \(warm-up\)|★★☆ \(standard\)|★★★ \(challenge\))"
)
MIN_EXERCISES = 2

_TEMPLATE_TODO = "written before the chapter template"
OPENING_KNOWN_FAILURES: dict[str, str] = {}
SUMMARY_KNOWN_FAILURES = {nb: f"{_TEMPLATE_TODO}: no summary" for nb in OPENING_KNOWN_FAILURES}
EXERCISES_KNOWN_FAILURES = {
    nb: f"{_TEMPLATE_TODO}: exercises without a difficulty level" for nb in OPENING_KNOWN_FAILURES
}


def _markdown(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def _opening(path: Path) -> str:
    """The markdown before the first code cell: the chapter's opening."""
    cells = nbformat.read(path, as_version=4).cells
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    return "\n\n".join(c.source for c in cells[:first_code] if c.cell_type == "markdown")


@pytest.mark.parametrize("path", _with_known_failures(NOTEBOOKS, OPENING_KNOWN_FAILURES), ids=_rel)
def test_chapter_opens_with_objectives_and_prerequisites(path):
    opening = _opening(path)
    assert OBJECTIVES.search(opening), (
        "the markdown before the first code cell must list learning objectives "
        "('you will be able to ...')"
    )
    assert PREREQUISITES.search(opening), (
        "the markdown before the first code cell must name the prerequisites "
        "(earlier chapters, the mathematics)"
    )


@pytest.mark.parametrize("path", _with_known_failures(NOTEBOOKS, SUMMARY_KNOWN_FAILURES), ids=_rel)
def test_chapter_closes_with_a_summary_and_references(path):
    text = "\n\n".join(_markdown(path))
    summary, references = SUMMARY.search(text), REFERENCES.search(text)
    assert summary, "a '## Summary' section is missing"
    assert references, "a '## References' section is missing"
    assert summary.start() < references.start(), "the summary comes before the references"
    assert "{footbibliography}" in text[references.end() :], (
        "the references section must hold the {footbibliography} directive"
    )


@pytest.mark.parametrize(
    "path", _with_known_failures(NOTEBOOKS, EXERCISES_KNOWN_FAILURES), ids=_rel
)
def test_exercises_have_a_difficulty_and_a_solution(path):
    text = "\n\n".join(_markdown(path))
    exercises = list(EXERCISE.finditer(text))
    assert len(exercises) >= MIN_EXERCISES, (
        f"{len(exercises)} exercise(s); a chapter has at least {MIN_EXERCISES}"
    )
    solutions = {m["label"]: m["body"] for m in SOLUTION.finditer(text)}
    for exercise in exercises:
        lines = [ln.strip() for ln in exercise["body"].splitlines() if ln.strip()]
        options = [ln for ln in lines if ln.startswith(":")]
        body = [ln for ln in lines if not ln.startswith(":")]
        label = next((ln.split(None, 1)[1] for ln in options if ln.startswith(":label:")), None)
        assert label, f"an exercise has no :label: ({exercise.group(0)[:80]!r})"
        assert body and DIFFICULTY.fullmatch(body[0]), (
            f"exercise {label}: the first line of its body must be the difficulty, one of "
            "'**Difficulty:** ★☆☆ (warm-up)', '★★☆ (standard)', '★★★ (challenge)'"
        )
        assert label in solutions, f"exercise {label} has no {{solution}} {label}"
        answer = [
            ln for ln in solutions[label].splitlines() if ln.strip() and not ln.startswith(":")
        ]
        assert answer, f"the solution of {label} is empty"


# A line that starts with "+ " or "- " is a list item in Markdown, even inside a formula that
# runs over several lines: the formula is cut in two and its TeX shows raw on the page. Break such
# a formula after the operator instead ("a +" / "b").
def _inline_math_cut_by_a_list_marker(text: str) -> list[str]:
    """Lines that start with "+ \\" or "- \\" while an inline formula ($...$) of the line before
    is still open (display formulas, $$...$$, are parsed before lists and are safe)."""
    found, in_display, previous = [], False, ""
    for number, line in enumerate(text.split("\n"), 1):
        if not in_display and re.match(r"[+-] \\", line) and previous.count("$") % 2 == 1:
            found.append(f"line {number}: {line[:40]!r}")
        in_display ^= line.count("$$") % 2 == 1
        previous = line.replace("$$", "")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_no_formula_line_starts_with_a_list_marker(path):
    found = [
        f"cell {i}, {where}"
        for i, text in enumerate(_markdown(path))
        for where in _inline_math_cut_by_a_list_marker(text)
    ]
    assert not found, (
        "a line of an inline formula starts with '+ ' or '- ', which Markdown reads as a list "
        "item (the formula shows as raw TeX): break the line after the operator instead\n"
        + "\n".join(found)
    )
