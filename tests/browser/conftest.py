"""Fixtures for the console's browser tests: the mesh, the API with a token, and a headless
Chromium page driven by Playwright (Debian's Chromium, not Playwright's own download)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from noetl.api import ApiServer
from noetl.client import Client
from tests.browser import chromium
from tests.integration.conftest import client, mesh  # noqa: F401  (fixtures)

TOKEN = "console-test-token"
ARTIFACTS = Path(__file__).parent.parent / "artifacts" / "console"


@pytest.fixture
async def server(client: Client) -> AsyncIterator[str]:  # noqa: F811
    """The API (and so the console) on a free port with a token; yields its base URL."""
    api = ApiServer(client, host="127.0.0.1", port=0, token=TOKEN)
    await api.start()
    try:
        yield f"http://127.0.0.1:{api.port}"
    finally:
        await api.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium; fails (never skips) when Chromium or Playwright is missing."""
    executable = chromium.find()
    if executable is None:
        pytest.fail(chromium.HOW_TO_INSTALL)
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: `pip install -e '.[dev]'`")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any, artifacts: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A laptop-sized page that fails the test on any uncaught script error; its last state
    is saved as `last-<test>.png` (what a failed test saw)."""
    context = await browser.new_context(viewport={"width": 1360, "height": 860})
    context.set_default_timeout(60_000)  # the test machine is shared and often loaded
    new_page = await context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield new_page
    finally:
        await new_page.screenshot(path=str(artifacts / f"last-{request.node.name}.png"))
        await context.close()
    assert not errors, f"script errors in the console: {errors}"


@pytest.fixture
def artifacts() -> Path:
    """Where the tests save screenshots (git-ignored)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
