"""A headless Chromium page for tests that check what a person's browser does with our HTML.

Uses the system's Chromium (the Debian package) through Playwright's sync API, never a browser
that `playwright install` downloads; a test skips with the install command when it is absent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright `Page` in a fresh headless Chromium, closed on exit (also after a failure)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM}: install it with `apt-get update && apt-get install -y chromium`")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]' adds playwright")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
