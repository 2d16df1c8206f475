"""The performance appendix (book/appendix/performance.md) covers every results file, and no
chapter types a benchmark's number into its text.

The page is generated at build time by the book's own directive (``book/_ext/otdiff_bench.py``):
one section per ``benchmarks/results/*.json`` (and ``gpu/*.json``), with the machine, the table and
a chart. The convention for chapters: a number measured by a benchmark is read from its results
file in a code cell (and printed or asserted there), never copied into the prose, so that the
number a reader sees is always the file's. A markdown cell that names a results file or a
benchmark script must therefore hold no timing or speed ratio.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import otdiff_bench  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FILES = otdiff_bench.results_files(RESULTS)
CHAPTERS = sorted(
    p for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
)
# A reference to a benchmark: its results file or its script.
BENCHMARK = re.compile(r"(?:results/[\w/]+\.json|bench_\w+\.py)")
# A measured quantity in prose: a number with a unit of time, or a "times"/"x" ratio.
QUOTED = re.compile(r"(?<![\w.$\\{^_])\d+(?:[.,]\d+)*\s*(?:ms|µs|us|s|seconds|×|x|times)(?![\w])")
# Chapters written before the convention, still to be converted (strict: fails once fixed).
KNOWN_FAILURES: dict[str, str] = {}


def test_there_are_results_and_the_page_is_in_the_book():
    assert FILES, "no benchmarks/results/*.json"
    page = (ROOT / "book" / "appendix" / "performance.md").read_text()
    assert ".. otdiff-benchmarks:: benchmarks/results" in page
    assert "book/appendix/performance" in (ROOT / "_toc.yml").read_text()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(RESULTS).as_posix())
def test_every_results_file_has_a_section(path):
    """What the directive writes for the file: the machine, a table row per result, a chart."""
    record = otdiff_bench.load(path)
    assert record["rows"], f"{path.name}: no result rows found"
    machine = record["machine"]
    assert any("jax" in k for k in machine), f"{path.name}: the JAX version is not recorded"
    assert any("device" in k for k in machine), f"{path.name}: the device is not recorded"
    timed = any(otdiff_bench._is_time(k) for row in record["rows"] for k in row)
    png = otdiff_bench.figure_png(record)
    if timed:  # a benchmark of quality only (e.g. digits.json) has its table and no chart
        assert png is not None and png.startswith(b"\x89PNG"), f"{path.name}: no chart"
    else:
        assert png is None


def test_the_built_page_has_every_section():
    html = ROOT / "_build" / "html" / "book" / "appendix" / "performance.html"
    if not html.is_file():
        pytest.skip("the book is not built (make html)")
    text = html.read_text(encoding="utf-8")
    for path in FILES:
        assert f"({path.relative_to(RESULTS.parent).as_posix()})" in text, path.name
    assert text.count('class="otdiff-benchmark"') == len(FILES)


def _quoted(path: Path) -> list[str]:
    found = []
    for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "markdown" and BENCHMARK.search(cell.source):
            found += [f"cell {i}: {m.group(0)!r}" for m in QUOTED.finditer(cell.source)]
    return found


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[rel]))
        if (rel := p.relative_to(ROOT).as_posix()) in KNOWN_FAILURES
        else p
        for p in CHAPTERS
    ],
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_no_chapter_types_a_benchmark_number(path):
    quoted = _quoted(path)
    assert not quoted, (
        "a markdown cell that cites a benchmark quotes measured numbers in its text; read them "
        "from benchmarks/results/<name>.json in a code cell instead: " + "; ".join(quoted[:5])
    )


def test_the_pattern_catches_a_typed_number():
    assert QUOTED.search("SMC took 1.21 times as long")
    assert QUOTED.search("about 12 ms per call")
    assert not QUOTED.search("with 1,000 and 4,000 particles, 5 repeats")
