"""The built book in a real browser: pages load, math renders offline, figures and players work.

The pages are those of the table of contents (``_toc.yml``: the root and every ``file:`` entry),
so a new chapter is covered as soon as it is listed. ``_build/html`` is served by a local HTTP
server on 127.0.0.1; every request the browser makes is recorded and any that would leave the
machine is aborted and reported (the book must work without a network).

Configuration (environment variables):
    OTDIFF_BOOK_HTML: the built HTML folder (default ``<repo>/_build/html``).
    OTDIFF_BOOK_ROOT: the book's source folder holding ``_toc.yml`` (default: two levels above
        OTDIFF_BOOK_HTML if ``_toc.yml`` is there, else the repository).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
BOOK_HTML = Path(os.environ.get("OTDIFF_BOOK_HTML", REPO / "_build" / "html")).resolve()
_default_root = BOOK_HTML.parent.parent
BOOK_ROOT = Path(
    os.environ.get(
        "OTDIFF_BOOK_ROOT", _default_root if (_default_root / "_toc.yml").is_file() else REPO
    )
).resolve()


LOAD_TIMEOUT_MS = 30_000
MATHJAX_TIMEOUT_MS = 30_000
SOURCE_SUFFIXES = (".ipynb", ".md", ".rst")


# -- the pages of the table of contents ---------------------------------------------------------
@dataclass(frozen=True)
class Chapter:
    docname: str  # e.g. "book/ot/01_sinkhorn"
    source: Path | None  # the notebook or markdown file it is built from

    @property
    def html(self) -> Path:
        return BOOK_HTML / f"{self.docname}.html"

    @property
    def source_text(self) -> str:
        return self.source.read_text(encoding="utf-8") if self.source else ""

    @property
    def code(self) -> str:
        """The code a reader runs: notebook code cells, or the whole text of a page."""
        if self.source is None:
            return ""
        if self.source.suffix == ".ipynb":
            cells = json.loads(self.source_text).get("cells", [])
            return "\n".join(
                "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                for c in cells
                if c.get("cell_type") == "code"
            )
        return self.source_text

    @property
    def has_sweep(self) -> bool:
        return ".sweep(" in self.code


def _toc_docnames(toc: dict) -> list[str]:
    names: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    names.append(node[key])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    for entry in _glob_entries(toc):
        names += sorted(
            str(p.relative_to(BOOK_ROOT).with_suffix(""))
            for suffix in SOURCE_SUFFIXES
            for p in BOOK_ROOT.glob(entry + suffix)
        )
    docnames = []
    for name in names:
        name = re.sub(r"\.(ipynb|md|rst)$", "", name.strip("/"))
        if name not in docnames:
            docnames.append(name)
    return docnames


def _glob_entries(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["glob"]] if isinstance(node.get("glob"), str) else []
        for value in node.values():
            found += _glob_entries(value)
        return found
    if isinstance(node, list):
        return [g for child in node for g in _glob_entries(child)]
    return []


def _chapters() -> list[Chapter]:
    if not (BOOK_ROOT / "_toc.yml").is_file():
        return []
    toc = yaml.safe_load((BOOK_ROOT / "_toc.yml").read_text(encoding="utf-8"))
    chapters = []
    for name in _toc_docnames(toc):
        sources = [BOOK_ROOT / f"{name}{s}" for s in SOURCE_SUFFIXES]
        chapters.append(Chapter(name, next((p for p in sources if p.is_file()), None)))
    return chapters


CHAPTERS = _chapters()
IDS = [c.docname for c in CHAPTERS]


@pytest.fixture(scope="module", autouse=True)
def built_book() -> Path:
    """Skips every test here when there is no build (``make book`` builds it)."""
    if not (BOOK_HTML / "index.html").is_file():
        pytest.skip(
            f"no built book at {BOOK_HTML}/index.html: build it first (make html, or "
            f"jupyter-book build .), or point OTDIFF_BOOK_HTML at a build"
        )
    return BOOK_HTML


# -- a local web server for the build -----------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


@pytest.fixture(scope="module")
def server() -> str:
    handler = functools.partial(_QuietHandler, directory=str(BOOK_HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# -- one visit per page, shared by the checks ---------------------------------------------------
# Text that MathJax should have replaced: $$, \begin{...}, \frac{, \sum_, \(, \[, $..\x..$.
RAW_TEX = re.compile(
    r"\$\$|\\(?:begin|end)\{|\\[A-Za-z]+\s*[{_^]|\\[()\[\]]|\$[^$\s][^$\n]{0,200}?[\\^_][^$\n]*?\$"
)

PAGE_FACTS_JS = r"""
() => {
  const main = document.querySelector("main") || document.querySelector("article");
  const skip = "pre, code, script, style, textarea, noscript, mjx-container, .highlight";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement && !node.parentElement.closest(skip)) texts.push(node.nodeValue);
  }
  const math = [...document.querySelectorAll(".math")];
  const resourceSelectors = "script[src], img[src], iframe[src], source[src], video[src], " +
    "audio[src], embed[src], object[data], link[href]";
  const loadingRels = /(^|\s)(stylesheet|preload|modulepreload|prefetch|icon|manifest|preconnect|dns-prefetch)(\s|$)/i;
  const resources = [...document.querySelectorAll(resourceSelectors)]
    .filter(el => el.tagName !== "LINK" || loadingRels.test(el.rel))
    .map(el => el.src || el.href || el.data);
  return {
    title: document.title,
    h1: [...document.querySelectorAll("main h1, article h1")].map(h => h.innerText.trim()),
    mainText: main ? main.innerText.trim().length : 0,
    text: texts.join("\u241f"),
    mathCount: math.length,
    mathUnrendered: math.filter(el => !el.querySelector("mjx-container"))
                        .map(el => el.textContent.trim().slice(0, 120)),
    mjxCount: document.querySelectorAll("mjx-container").length,
    hasMathJaxScript: !!document.querySelector("script[src*='mathjax' i]"),
    resources,
  };
}
"""

IMAGES_JS = """
() => [...document.images].map(img => ({
  src: (img.currentSrc || img.src || "").slice(0, 160),
  alt: img.alt,
  complete: img.complete,
  width: img.naturalWidth,
}))
"""

PLAYERS_JS = """
() => [...document.querySelectorAll(".otdiff-player")].map(p => {
  const img = p.querySelector("img");
  const slider = p.querySelector("input[type=range]");
  return {
    parameter: p.dataset.parameter || "",
    imgOk: !!img && img.complete && img.naturalWidth > 0,
    imgSrc: img ? img.src.slice(0, 40) : "",
    buttons: [...p.querySelectorAll("button")].map(b => b.title || b.getAttribute("aria-label")),
    // Buttons whose icon did not render (no SVG, no icon-font glyph): e.g. a blocked CDN font.
    blankButtons: [...p.querySelectorAll("button")].filter(b => {
      if (b.getBoundingClientRect().width === 0) return true;
      if (b.querySelector("svg") || b.innerText.trim()) return false;
      const i = b.querySelector("i");
      const glyph = i ? getComputedStyle(i, "::before").content : "none";
      return !glyph || glyph === "none" || glyph === "normal" || glyph === '""';
    }).map(b => b.title),
    frames: slider ? Number(slider.max) + 1 : 0,
  };
})
"""


# Console errors that come from the toolchain, not from the book, and break nothing.
KNOWN_HARMLESS_ERRORS = re.compile(
    # Sphinx 7.4 writes an inline script registered by an extension twice (its dedup compares
    # filename None with ""), so sphinx-thebe's `const THEBE_JS_URL = ...` is declared twice and
    # the second copy throws. The first copy defines it; thebe is never launched in this book.
    r"Identifier 'THEBE_JS_URL' has already been declared"
    # pydata-sphinx-theme logs this as an error on the first page a fresh browser profile opens
    # (no theme mode stored yet) and then uses its default, "auto": which page that is depends
    # only on the order the tests visit pages in.
    r"|Got invalid theme mode: \. Resetting to auto"
)


@dataclass
class PageReport:
    url: str = ""
    status: int | None = None
    final_url: str = ""
    facts: dict = field(default_factory=dict)
    mathjax_error: str = ""
    images: list = field(default_factory=list)
    players: list = field(default_factory=list)
    player_steps: list = field(default_factory=list)  # (src before, src after) per player
    console_errors: list = field(default_factory=list)
    failed_requests: list = field(default_factory=list)
    external_requests: list = field(default_factory=list)
    remote_resources: list = field(default_factory=list)


def _digest(src: str | None) -> str:
    return hashlib.sha1((src or "").encode()).hexdigest()


def _src_shape(src: str | None) -> tuple[int, str]:
    src = src or ""
    return len(src), src[-200:]


def _visit(context, base: str, chapter: Chapter) -> PageReport:
    report = PageReport(url=f"{base}/{chapter.docname}.html")
    page = context.new_page()
    page.set_default_timeout(LOAD_TIMEOUT_MS)
    page.on(
        "console",
        lambda m: m.type == "error" and report.console_errors.append(f"{m.text} @ {m.location}"),
    )
    page.on("pageerror", lambda e: report.console_errors.append(f"uncaught: {e}"))
    page.on(  # local files only: non-local requests are aborted and reported on their own
        "requestfailed",
        lambda r: (
            context.guard.is_local(r.url)
            and report.failed_requests.append(f"{r.url} ({r.failure})")
        ),
    )
    page.on(
        "response",
        lambda r: r.status >= 400 and report.failed_requests.append(f"{r.url} (HTTP {r.status})"),
    )
    mark = context.guard.mark()
    try:
        response = page.goto(report.url, wait_until="load")
        report.status = response.status if response else None
        report.final_url = page.url
        if page.evaluate("() => !!document.querySelector('.math, script[src*=\"mathjax\" i]')"):
            try:
                # tex-chtml.js is a deferred script: after "load" it has run, or it never will.
                page.wait_for_function(
                    "() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                    timeout=5_000,
                )
                page.evaluate(
                    "() => { MathJax.startup.promise.then("
                    "() => { window.__otdiffMathJax = 'done'; },"
                    "(e) => { window.__otdiffMathJax = 'failed: ' + e; }); }"
                )
                state = page.wait_for_function(
                    "() => window.__otdiffMathJax", timeout=MATHJAX_TIMEOUT_MS
                ).json_value()
                if state != "done":
                    report.mathjax_error = f"MathJax typesetting {state}"
            except Exception as error:  # reported by test_math_is_rendered
                report.mathjax_error = f"MathJax did not finish: {error}"
        # Make lazy images load, then wait (bounded) until every image has settled.
        page.evaluate("() => document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        try:
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete)", timeout=LOAD_TIMEOUT_MS
            )
        except Exception:
            pass  # the images test reports the ones that did not finish
        report.facts = page.evaluate(PAGE_FACTS_JS)
        report.images = page.evaluate(IMAGES_JS)
        report.players = page.evaluate(PLAYERS_JS)
        for player in page.locator(".otdiff-player").all():
            img = player.locator("img").first
            src = img.get_attribute("src")
            before, shape = _digest(src), _src_shape(src)
            player.locator("button[title='Next frame'], button[aria-label='Next frame']").click()
            try:
                page.wait_for_function(
                    "([el, n, tail]) => (el.getAttribute('src') || '').length !== n"
                    " || (el.getAttribute('src') || '').slice(-200) !== tail",
                    arg=[img.element_handle(), *shape],
                    timeout=5_000,
                )
            except Exception:
                pass  # test_sweep_players reports an unchanged frame
            report.player_steps.append((before, _digest(img.get_attribute("src"))))
        page.wait_for_timeout(200)  # let late console messages arrive
    finally:
        page.close()
    report.external_requests = context.guard.external_since(mark)
    report.remote_resources = [
        u for u in report.facts.get("resources", []) if not context.guard.is_local(u)
    ]
    return report


@pytest.fixture(scope="module")
def visit(browser_context, server):
    """``visit(chapter)`` loads the page once and returns its :class:`PageReport`."""
    cache: dict[str, PageReport | Exception] = {}

    def get(chapter: Chapter) -> PageReport:
        if chapter.docname not in cache:
            try:
                cache[chapter.docname] = _visit(browser_context, server, chapter)
            except Exception as error:  # every check of this page fails with the same cause
                cache[chapter.docname] = error
        result = cache[chapter.docname]
        if isinstance(result, Exception):
            raise AssertionError(f"visiting {chapter.docname} failed: {result}") from result
        return result

    return get


# -- the checks ---------------------------------------------------------------------------------
def test_toc_pages_are_built():
    assert CHAPTERS, f"no pages found in {BOOK_ROOT / '_toc.yml'}"
    missing = [str(c.html) for c in CHAPTERS if not c.html.is_file()]
    assert not missing, f"pages listed in _toc.yml but not built: {missing}"


def test_index_redirects_to_the_root_page(browser_context, server):
    page = browser_context.new_page()
    try:
        page.goto(f"{server}/index.html", wait_until="load", timeout=LOAD_TIMEOUT_MS)
        page.wait_for_url(f"**/{CHAPTERS[0].docname}.html", timeout=LOAD_TIMEOUT_MS)
    finally:
        page.close()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_page_loads(visit, chapter):
    if not chapter.html.is_file():
        pytest.fail(f"{chapter.html} was not built")
    report = visit(chapter)
    assert report.status == 200, f"{report.url} answered HTTP {report.status}"
    assert report.facts["title"].strip(), f"{report.url} has no <title>"
    assert report.facts["h1"], f"{report.url} has no heading in its main content"
    assert report.facts["mainText"] > 100, f"{report.url}: the main content is (nearly) empty"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_math_is_rendered(visit, chapter):
    report = visit(chapter)
    facts = report.facts
    if facts["mathCount"] or facts["hasMathJaxScript"]:
        assert not report.mathjax_error, report.mathjax_error
        assert facts["mjxCount"] > 0, f"{report.url}: MathJax rendered nothing"
        assert not facts["mathUnrendered"], (
            f"{report.url}: {len(facts['mathUnrendered'])} of {facts['mathCount']} math "
            f"elements not rendered by MathJax, e.g. {facts['mathUnrendered'][:3]}"
        )
    text = facts["text"]
    raw = [
        " ".join(text[max(0, m.start() - 40) : m.end() + 40].replace("\u241f", " ").split())
        for m in RAW_TEX.finditer(text)
    ]
    assert not raw, f"{report.url}: raw TeX left in the visible text: {raw[:5]}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_images_load(visit, chapter):
    report = visit(chapter)
    url = report.url
    broken = [img for img in report.images if not (img["complete"] and img["width"] > 0)]
    assert not broken, f"{url}: images that did not load: {broken}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_no_request_leaves_the_machine(visit, chapter):
    report = visit(chapter)
    url, requested, referenced = report.url, report.external_requests, report.remote_resources
    assert not requested, f"{url} requested (the test aborted them) non-local URLs: {requested}"
    assert not referenced, f"{url} references non-local resources: {referenced}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_local_requests_succeed(visit, chapter):
    report = visit(chapter)
    url, failed = report.url, report.failed_requests
    assert not failed, f"{url}: requests that failed (missing files?): {failed}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_no_console_errors(visit, chapter):
    report = visit(chapter)
    url, errors = report.url, report.console_errors
    errors = [e for e in errors if not KNOWN_HARMLESS_ERRORS.search(e)]
    assert not errors, f"{url}: console errors: {errors}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=IDS)
def test_sweep_players(visit, chapter):
    report = visit(chapter)
    if not chapter.has_sweep:
        pytest.skip(f"{chapter.docname} has no sweep player")
    assert report.players, (
        f"{report.url}: the source calls .sweep( but the page has no .otdiff-player "
        f"(is the player cell's output removed, or its HTML not displayed?)"
    )
    for i, (player, (before, after)) in enumerate(
        zip(report.players, report.player_steps, strict=True)
    ):
        where = f"{report.url}: player {i} ({player['parameter']!r})"
        assert player["parameter"], f"{where} has no data-parameter"
        assert player["imgOk"], f"{where}: its frame image did not load ({player['imgSrc']!r})"
        assert {"Play", "Next frame", "Previous frame"} <= set(player["buttons"]), (
            f"{where}: play buttons missing, found {player['buttons']}"
        )
        assert not player["blankButtons"], (
            f"{where}: buttons without a visible icon: {player['blankButtons']}"
        )
        assert player["frames"] >= 2, f"{where} has {player['frames']} frame(s)"
        assert before != after, f"{where}: 'Next frame' did not change the displayed frame"


# -- the appendices: the API reference, the performance page, the download button -----------------
def _page(docname: str) -> Chapter:
    chapter = next((c for c in CHAPTERS if c.docname == docname), None)
    if chapter is None:
        pytest.skip(f"{docname} is not in this book's toc")
    return chapter


def test_api_reference_renders_its_math(visit):
    """The docstrings' ``.. math::`` blocks are typeset offline on the API pages."""
    report = visit(_page("book/api/ot"))
    assert report.facts["mathCount"] > 0, "the API page of otdiff.ot shows no math"
    assert report.facts["mjxCount"] > 0 and not report.facts["mathUnrendered"]
    assert not report.external_requests


def test_performance_page_shows_a_chart_per_results_file(visit):
    report = visit(_page("book/appendix/performance"))
    sys.path.insert(0, str(REPO / "book" / "_ext"))
    import otdiff_bench  # the page's own directive: which results files have timings to chart

    files = otdiff_bench.results_files(REPO / "benchmarks" / "results")
    n_timed = sum(otdiff_bench.figure_png(otdiff_bench.load(f)) is not None for f in files)
    charts = [img for img in report.images if "timings, log scale" in (img.get("alt") or "")]
    assert len(charts) == n_timed, f"{len(charts)} charts for {n_timed} timed results files"
    assert all(img["complete"] and img["width"] > 0 for img in charts)
    assert not report.external_requests


def test_download_button_offers_the_notebook(browser_context, server):
    """Each chapter page links its source notebook (the theme's download button), served locally."""
    chapter = next((c for c in CHAPTERS if c.source and c.source.suffix == ".ipynb"), None)
    if chapter is None:
        pytest.skip("no notebook chapter in this book")
    page = browser_context.new_page()
    try:
        page.goto(f"{server}/{chapter.docname}.html", wait_until="load", timeout=LOAD_TIMEOUT_MS)
        link = page.locator("a[href$='.ipynb']").first
        href = link.get_attribute("href")
        assert href and "_sources" in href, "no download link to the page's notebook"
        response = page.request.get(page.url.rsplit("/", 1)[0] + "/" + href)
        assert response.status == 200, f"{href}: HTTP {response.status}"
        assert "cells" in json.loads(response.text()), f"{href} is not a notebook"
    finally:
        page.close()
