"""Notebook hygiene: stripped outputs, the one set-up call, asserted claims, a complete toc."""

import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").rglob("*.ipynb"))
NOTEBOOKS = [nb for nb in NOTEBOOKS if ".ipynb_checkpoints" not in nb.parts]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return files


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
