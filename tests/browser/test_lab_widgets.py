"""Live widgets in a real JupyterLab: run a chapter, move its explorer's slider, see the plot change.

For each target chapter the test starts ``jupyter lab`` from this virtual environment (so the
``python3`` kernel is this venv's Python) on 127.0.0.1 with a random port and token, in its own
process group, with a temporary folder holding a copy of the notebook as its root. Chromium opens
the copy, runs all cells through the app's command registry (``--LabApp.expose_app_in_browser``),
waits for the ``otdiff.ui.Explorer`` widget (``.otdiff-explorer``) to draw its figure, moves the
named slider with the keyboard (its ``continuous_update=False`` fires on a key press too) and
checks the image changed. The server and its kernel are stopped at teardown.

Configuration (environment variables):
    OTDIFF_LAB_NOTEBOOK: run the test on this notebook instead of the default chapters.
    OTDIFF_LAB_SLIDER: the slider to move there (default ``epsilon``).
    OTDIFF_LAB_RUN_TIMEOUT: seconds allowed for "run all cells" (default 150).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # the environment running pytest runs the server too


@dataclass(frozen=True)
class Target:
    notebook: Path  # a chapter with an otdiff.ui Explorer(...).widget() cell
    slider: str  # the label of the slider to move


# Chapters whose explorer the test drives; add one line per chapter with live widgets.
TARGETS = [Target(REPO / "book/ot/01_sinkhorn.ipynb", "epsilon")]
if os.environ.get("OTDIFF_LAB_NOTEBOOK"):
    TARGETS = [
        Target(
            Path(os.environ["OTDIFF_LAB_NOTEBOOK"]).resolve(),
            os.environ.get("OTDIFF_LAB_SLIDER", "epsilon"),
        )
    ]

SERVER_START_S = 90
PAGE_TIMEOUT_MS = 60_000
KERNEL_TIMEOUT_MS = 90_000
RUN_ALL_TIMEOUT_MS = int(float(os.environ.get("OTDIFF_LAB_RUN_TIMEOUT", 150)) * 1000)
REDRAW_TIMEOUT_MS = 60_000


# -- the server ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """``jupyter lab`` on 127.0.0.1 in its own process group, isolated in ``workdir``."""

    def __init__(self, workdir: Path, root: Path) -> None:
        self.port = _free_port()
        self.token = os.urandom(24).hex()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "jupyterlab.log"
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        env.update(
            OTDIFF_SCALE="demo",
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            # Fresh settings and workspaces: no tabs restored from another session.
            JUPYTER_CONFIG_DIR=str(workdir / "config"),
            JUPYTER_RUNTIME_DIR=str(workdir / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(workdir / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(workdir / "workspaces"),
            IPYTHONDIR=str(workdir / "ipython"),
        )
        jupyter = VENV_BIN / "jupyter"
        if not jupyter.exists():
            pytest.skip(f"no jupyter in {VENV_BIN}: install the test extra (jupyterlab)")
        command = [
            str(jupyter),
            "lab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",  # no PyPI queries from the server
        ]
        self._log = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children: set[int] = set()

    def log_tail(self, n: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-n:]

    def wait_ready(self, timeout: float = SERVER_START_S) -> None:
        # No proxy: the server is on the loopback interface.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            try:
                request = urllib.request.Request(
                    f"{self.url}/api/status", headers={"Authorization": f"token {self.token}"}
                )
                with opener.open(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"jupyter lab not ready after {timeout} s:\n{self.log_tail()}")

    def processes(self) -> list | None:
        """The server's descendant processes (its kernels) as psutil objects; None without psutil."""
        try:
            import psutil
        except ImportError:
            return None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self) -> None:
        """SIGTERM the process group (the server shuts its kernels down), then SIGKILL."""
        self._children |= {p.pid for p in self.processes() or []}
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
        # Kernels run in their own sessions: end any the server left behind, by PID.
        for pid in self._children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()


@pytest.fixture(params=TARGETS, ids=lambda t: t.notebook.stem)
def lab(request, tmp_path):
    """A running JupyterLab whose root holds a copy of the target notebook and of the benchmark
    results it may read (chapters find ``benchmarks/results`` above their folder, as in a clone)."""
    target: Target = request.param
    if not target.notebook.is_file():
        pytest.skip(
            f"{target.notebook} does not exist yet: the live-widget test needs a chapter "
            f"with an otdiff.ui Explorer(...).widget() cell"
        )
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(target.notebook, root / target.notebook.name)
    shutil.copytree(REPO / "benchmarks" / "results", root / "benchmarks" / "results")
    server = JupyterLab(tmp_path, root)
    try:
        server.wait_ready()
        yield server, target
    finally:
        server.stop()


# -- the browser side ---------------------------------------------------------------------------
NOTEBOOK_READY_JS = """
(name) => {
  const app = window.jupyterapp;
  const widget = app && app.shell.currentWidget;
  if (!widget || !widget.context || widget.context.path !== name) return false;
  const session = widget.sessionContext;
  return !!(session && session.isReady && session.session && session.session.kernel
            && session.session.kernel.status === "idle");
}
"""

RUN_ALL_JS = """
() => {
  const app = window.jupyterapp;
  app.shell.activateById(app.shell.currentWidget.id);
  window.__otdiffRunAll = undefined;
  app.commands.execute("notebook:run-all-cells").then(
    (ok) => { window.__otdiffRunAll = ok === false ? "failed" : "done"; },
    (error) => { window.__otdiffRunAll = "error: " + error; });
}
"""

KERNEL_IDLE_JS = """
() => {
  const widget = window.jupyterapp.shell.currentWidget;
  const kernel = widget.sessionContext.session && widget.sessionContext.session.kernel;
  return window.__otdiffRunAll !== undefined && !!kernel && kernel.status === "idle";
}
"""

ERRORS_JS = """
() => [...document.querySelectorAll(
    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")]
  .map(e => e.textContent.slice(-1500))
"""

PLOT_IMG = ".jp-OutputArea-output img, .widget-output img"


def _explorer_and_slider(page, label: str):
    """The first explorer with a slider labelled ``label``, and that slider.

    Falls back to the first explorer and its first slider when no label matches.
    """
    named_slider = page.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=label)
    )
    explorers = page.locator(".otdiff-explorer")
    explorer = explorers.filter(has=named_slider)
    if not explorer.count():
        explorer = explorers
    explorer = explorer.first
    slider = explorer.locator(".widget-slider").filter(
        has=page.locator(".widget-label", has_text=label)
    )
    if not slider.count():
        slider = explorer.locator(".widget-slider")
    return explorer, slider.first


def test_explorer_slider_redraws_the_plot(browser_context, lab):
    server, target = lab
    name = target.notebook.name
    page = browser_context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    mark = browser_context.guard.mark()
    started = time.monotonic()

    def context() -> str:
        return (
            f"\n-- page errors: {page_errors[-5:]}\n-- cell errors: "
            f"{page.evaluate(ERRORS_JS)[-3:]}\n-- server log:\n{server.log_tail(2500)}"
        )

    try:
        page.goto(f"{server.url}/lab/tree/{name}?token={server.token}", wait_until="load")
        page.wait_for_function("() => !!window.jupyterapp", timeout=PAGE_TIMEOUT_MS)
        try:
            page.wait_for_function(NOTEBOOK_READY_JS, arg=name, timeout=KERNEL_TIMEOUT_MS)
        except Exception as error:
            pytest.fail(f"the notebook or its kernel did not become ready: {error}{context()}")

        # The kernel is this venv's Python (a child process of the server).
        children = server.processes()
        if children is not None:
            kernels = [" ".join(p.cmdline()) for p in children]
            kernels = [c for c in kernels if "ipykernel" in c]
            assert kernels and all(c.startswith(str(VENV_BIN)) for c in kernels), (
                f"the kernel is not the venv's Python ({VENV_BIN}): {kernels}"
            )

        page.evaluate(RUN_ALL_JS)
        try:
            page.wait_for_function(KERNEL_IDLE_JS, timeout=RUN_ALL_TIMEOUT_MS, polling=500)
        except Exception:
            pytest.fail(
                f"run all cells did not finish within {RUN_ALL_TIMEOUT_MS / 1000:.0f} s{context()}"
            )
        run_all = page.evaluate("() => window.__otdiffRunAll")
        assert run_all == "done", f"run all cells: {run_all}{context()}"
        ran_s = time.monotonic() - started

        try:
            page.locator(f".otdiff-explorer :is({PLOT_IMG})").first.wait_for(
                state="visible", timeout=REDRAW_TIMEOUT_MS
            )
        except Exception:
            pytest.fail(f"no .otdiff-explorer with a plot image in {name}{context()}")
        explorer, slider = _explorer_and_slider(page, target.slider)
        # JupyterLab skips rendering cells out of view (content-visibility): scroll to it first.
        explorer.scroll_into_view_if_needed()
        image = explorer.locator(PLOT_IMG).first
        image.wait_for(state="visible", timeout=REDRAW_TIMEOUT_MS)
        before = image.get_attribute("src")
        assert before, "the explorer's plot image has no src"

        readout = slider.locator(".widget-readout")
        value_before = readout.text_content().strip()
        handle = slider.locator(".noUi-handle").first
        handle.focus()
        for key in ("End", "Home"):  # Home if the slider sits at its maximum already
            page.keyboard.press(key)
            try:
                page.wait_for_function(
                    "([el, before]) => el.textContent.trim() !== before",
                    arg=[readout.element_handle(), value_before],
                    timeout=5_000,
                )
                break
            except Exception:
                continue
        value_after = readout.text_content().strip()
        assert value_after != value_before, (
            f"the {target.slider!r} slider did not move with the keyboard ({value_before})"
        )
        try:
            page.wait_for_function(
                """([explorer, selector, before]) => {
                     const img = explorer.querySelector(selector);
                     return img && img.complete && img.naturalWidth > 0
                       && img.getAttribute("src") !== before;
                   }""",
                arg=[explorer.element_handle(), PLOT_IMG, before],
                timeout=REDRAW_TIMEOUT_MS,
            )
        except Exception:
            pytest.fail(
                f"moving {target.slider} from {value_before} to {value_after} did not "
                f"redraw the plot within {REDRAW_TIMEOUT_MS / 1000:.0f} s{context()}"
            )
        after = explorer.locator(PLOT_IMG).first.get_attribute("src")
        assert after != before
        print(
            f"\n{name}: ran all cells in {ran_s:.0f} s; {target.slider} {value_before} -> "
            f"{value_after} redrew the plot ({time.monotonic() - started:.0f} s in all)"
        )
    finally:
        page.close()
        external = browser_context.guard.external_since(mark)
        if external:
            warnings.warn(
                f"JupyterLab page requested non-local URLs (aborted): {external}", stacklevel=1
            )
