"""The student edition: every chapter with its solutions removed and every exercise kept.

``make student`` runs ``python tools/student.py``, which writes

- ``_build/student/notebooks/``: the chapters as notebooks to hand out, outputs stripped;
- ``_build/student/book/``: a book source tree (``_config.yml``, ``_toc.yml``, ``book/``) with the
  same chapters, filled with the lecturer's executed outputs when ``make book`` or ``make test``
  left them in ``_build/.jupyter_cache`` (nothing is executed again), and built into
  ``_build/student/html/`` with ``--build`` (``jupyter-book build``, ``-W``).

What is removed: every ``{solution}`` block of a markdown cell (backtick or colon fences, any
length), and, in a code cell tagged ``solution``, the lines between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` (replaced by ``raise NotImplementedError``; the cell keeps the function's
signature and docstring). A code cell tagged ``solution`` without the markers is removed whole.
The exercises' checks (:func:`otdiff.exercise.check`) then report "not attempted yet".
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "_build" / "student"
CACHE = ROOT / "_build" / ".jupyter_cache"

SOLUTION = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution\}[^\n]*\n.*?^(?P=fence)[ \t]*\n?",
    re.MULTILINE | re.DOTALL,
)
BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
STUB = 'raise NotImplementedError("Write your solution here.")'


def strip_markdown(text: str) -> str:
    """``text`` without its ``{solution}`` blocks (and without the blank lines they leave)."""
    return re.sub(r"\n{3,}", "\n\n", SOLUTION.sub("", text)).rstrip() + "\n"


def strip_code(source: str) -> str | None:
    """A solution cell's code with the solution replaced by a stub (``None``: drop the cell)."""
    lines, out, inside = source.split("\n"), [], False
    for line in lines:
        if line.strip() == BEGIN:
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif line.strip() == END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) if len(out) < len(lines) else None


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` with every solution removed (see the module docstring)."""
    nb = nbformat.from_dict(nb)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and "{solution}" in cell.source:
            cell.source = strip_markdown(cell.source)
        elif cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
            source = strip_code(cell.source)
            if source is None:
                continue
            cell.source = source
            cell.outputs, cell.execution_count = [], None
            cell.metadata["tags"] = [t for t in cell.metadata["tags"] if t != "solution"]
        cells.append(cell)
    nb.cells = cells
    return nb


def toc_files(toc: dict | None = None) -> list[str]:
    """Every page of the book (``root`` and each ``file`` of ``toc``, default ``_toc.yml``), in order."""
    if toc is None:
        toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    files.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(toc)
    return files


def _executed(path: Path) -> nbformat.NotebookNode | None:
    """The lecturer's executed copy of ``path`` from the book's execution cache, if current."""
    if not CACHE.is_dir():
        return None
    from jupyter_cache import get_cache

    cache = get_cache(str(CACHE))
    nb = nbformat.read(path, as_version=4)
    try:
        record = cache.match_cache_notebook(nb)
    except KeyError:
        return None
    return cache.get_cache_bundle(record.pk).nb


def _with_outputs(student: nbformat.NotebookNode, executed: nbformat.NotebookNode | None):
    """``student`` with the outputs of the executed lecturer's cells whose code it keeps as is."""
    if executed is None:
        return student
    done = {c.source: c for c in executed.cells if c.cell_type == "code"}
    for cell in student.cells:
        if cell.cell_type == "code" and cell.source in done:
            cell.outputs = done[cell.source].outputs
            cell.execution_count = done[cell.source].get("execution_count")
    return student


def write_edition(out: Path = OUT, *, outputs: bool = True) -> list[Path]:
    """Write the student notebooks and the book source tree under ``out``; return the notebooks."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    if out.exists():
        shutil.rmtree(out)
    written = []
    for entry in toc_files(toc):
        for suffix in (".ipynb", ".md"):
            source = ROOT / (entry + suffix)
            if source.is_file():
                break
        else:
            continue
        target = out / "book" / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".md":
            target.write_text(strip_markdown(source.read_text()))
            continue
        nb = student_notebook(nbformat.read(source, as_version=4))
        handout = out / "notebooks" / source.relative_to(ROOT / "book")
        handout.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, handout)
        written.append(handout)
        executed = _executed(source) if outputs else None
        nbformat.write(_with_outputs(nb, executed), target)
    for name in ("book/references.bib",):
        shutil.copy(ROOT / name, out / "book" / name)
    # The performance appendix reads the benchmarks' results files.
    shutil.copytree(ROOT / "benchmarks" / "results", out / "book" / "benchmarks" / "results")
    if (ROOT / "book" / "_ext").is_dir():
        shutil.copytree(ROOT / "book" / "_ext", out / "book" / "book" / "_ext")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["title"] = config.get("title", "") + " (student edition)"
    # The outputs are the lecturer's, already in the notebooks: nothing is executed again.
    config["execute"]["execute_notebooks"] = "off"
    (out / "book" / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "book" / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return written


def build_html(out: Path = OUT) -> None:
    """``jupyter-book build`` of the student tree into ``out/html`` (``-W``, as the book)."""
    html = out / "html"
    command = [
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(out / "book"),
        "--path-output",
        str(out / "site"),
        "--builder",
        "html",
        "--warningiserror",
        "--nitpick",
        "--keep-going",
    ]
    subprocess.run(command, check=True)
    if html.exists():
        shutil.rmtree(html)
    shutil.move(out / "site" / "_build" / "html", html)
    shutil.rmtree(out / "site")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--build", action="store_true", help="also build the HTML")
    parser.add_argument("--no-outputs", action="store_true", help="ignore the execution cache")
    args = parser.parse_args(argv)
    notebooks = write_edition(args.out, outputs=not args.no_outputs)
    print(f"wrote {len(notebooks)} student notebooks under {args.out / 'notebooks'}")
    if args.build:
        build_html(args.out)
        print(f"The student edition: file://{(args.out / 'html' / 'index.html').resolve()}")


if __name__ == "__main__":
    main()
