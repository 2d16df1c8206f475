"""Shared pieces of the real-browser tests: the ``browser`` marker, Chromium, the network guard.

The tests drive Debian's Chromium (``/usr/bin/chromium``, override with ``$OTDIFF_CHROMIUM``)
through Playwright for Python; ``playwright install`` is never needed. Each test module gets one
browser (a module-scoped persistent context with a fresh profile folder). Every request the
browser makes goes through :class:`NetworkGuard`: requests to the local machine pass, anything
else is recorded and aborted, so a test never hangs offline and can fail on the record.

Run them with ``pytest tests/browser``; leave them out with ``pytest tests -m "not browser"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("OTDIFF_CHROMIUM", "/usr/bin/chromium")
# Flags that keep Chromium quiet offline (no background fetches, no QUIC, no first-run UI).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCAL_SCHEMES = {"file", "data", "blob", "about"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: real-browser tests (Chromium via Playwright); deselect with -m 'not browser'",
    )


def is_local(url: str) -> bool:
    """Whether ``url`` stays on this machine (loopback host, or a file/data/blob/about URL)."""
    parts = urlsplit(url)
    if parts.scheme in LOCAL_SCHEMES:
        return True
    return parts.scheme in {"http", "https", "ws", "wss"} and parts.hostname in LOCAL_HOSTS


class NetworkGuard:
    """Records every request of a browser context and aborts those that leave the machine.

    ``requests`` lists every URL requested (in order); ``external`` the ones that were not local.
    """

    def __init__(self, context) -> None:
        self.is_local = is_local
        self.requests: list[str] = []
        self.external: list[str] = []
        context.on("request", self._record)
        context.route("**/*", self._route)

    def _record(self, request) -> None:
        self.requests.append(request.url)
        if not is_local(request.url) and request.url not in self.external:
            self.external.append(request.url)

    def _route(self, route) -> None:
        if is_local(route.request.url):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    def mark(self) -> int:
        """A position in the record; ``external_since(mark)`` lists what came after it."""
        return len(self.requests)

    def external_since(self, mark: int) -> list[str]:
        return [url for url in self.requests[mark:] if not is_local(url)]


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """One headless Chromium for the whole module, with a fresh profile and a network guard.

    The guard is ``browser_context.guard`` (a :class:`NetworkGuard`).
    """
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python) is not installed: pip install playwright"
    )
    executable = shutil.which(CHROMIUM) or CHROMIUM
    if not os.path.exists(executable):
        pytest.skip(
            f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set "
            "$OTDIFF_CHROMIUM); never run `playwright install`."
        )
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            service_workers="block",
        )
        context.guard = NetworkGuard(context)
        try:
            yield context
        finally:
            context.close()
