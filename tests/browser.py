"""Headless Chromium for the UI tests: open a page, wait for what a person would see, save a
screenshot.

Playwright is only the protocol client here: the browser is the system's Chromium (Debian's
package, which ``scripts/system-deps.sh`` installs), never one Playwright downloads. Without
them the UI tests skip, saying so; under CI they fail instead.

Screenshots go into each test's tmp folder; with ``LOOPLINE_UPDATE_SCREENSHOTS=1`` they also
replace the user guide's images in ``docs/images/``, so an ordinary run never changes the tree.

The fixtures are registered for the whole session (``pytest_plugins`` in tests/conftest.py):
tests ask for ``browser`` and ``page`` by name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

#: Where the user guide's screenshots live.
DOCS_IMAGES = REPO / "docs" / "images"
#: Set to 1 to rewrite docs/images/ from this run's screenshots.
UPDATE_SCREENSHOTS = os.environ.get("LOOPLINE_UPDATE_SCREENSHOTS") == "1"
#: A laptop-sized window: readable screenshots of a few hundred KB at most.
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}
#: How long to wait for a page to show something (generous: the machine may be busy).
WAIT_MS = 90_000
INSTALL_HINT = "run `bash scripts/system-deps.sh` (or `make system-deps`), which installs chromium"


def chromium_executable() -> Path | None:
    """The system's Chromium: ``LOOPLINE_CHROMIUM`` if set, else ``chromium`` on the PATH."""
    configured = os.environ.get("LOOPLINE_CHROMIUM")
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system's Chromium, headless, driven through Playwright's protocol client; one per
    module that asks for it (only while that module runs: Playwright's sync API keeps an event
    loop of its own, which should not outlive the tests that use it).
    """
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the UI tests need the Python package playwright (pip install -e '.[dev]') "
                    f"and chromium: {INSTALL_HINT}")
    executable = chromium_executable()
    if executable is None:
        pytest.skip(f"chromium is not installed (nor named by LOOPLINE_CHROMIUM): {INSTALL_HINT}")
    with sync_playwright() as playwright:
        try:
            # --no-sandbox: Chromium refuses its sandbox as root (containers, CI); the pages are
            # our own servers' and files. --disable-dev-shm-usage: containers' /dev/shm is tiny.
            launched = playwright.chromium.launch(
                executable_path=str(executable), headless=True,
                args=["--no-sandbox", "--disable-dev-shm-usage"])
        except Error as exc:
            pytest.skip(f"chromium at {executable} does not start ({exc}): {INSTALL_HINT}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own cookies and storage) of ``VIEWPORT`` size."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    try:
        yield tab
    finally:
        context.close()


def wait_for_text(page: Page, text: str, context: str = "", exact: bool = False) -> None:
    """Wait until ``text`` is visible on the page; fail with what the page shows instead and
    ``context`` (server and worker log tails).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text(text, exact=exact).filter(visible=True).first.wait_for(timeout=WAIT_MS)
    except PlaywrightTimeout as exc:
        raise AssertionError(f"{page.url} never showed {text!r}; it shows:\n"
                             f"{visible_text(page)[-4000:]}\n{context}") from exc


def visible_text(page: Page) -> str:
    """The text a person sees on the page (empty if the page has no body yet)."""
    try:
        return page.inner_text("body", timeout=5_000)
    except Exception:  # a page that never loaded: say so instead of hiding the first failure
        return "(no page body)"


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save what the window shows as ``folder/name`` (PNG); with ``LOOPLINE_UPDATE_SCREENSHOTS=1``
    also as ``docs/images/name``. Returns the tmp copy.
    """
    path = folder / name
    page.screenshot(path=str(path))
    if UPDATE_SCREENSHOTS:
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / name)
    return path
