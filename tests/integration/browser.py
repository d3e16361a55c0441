"""A real headless browser for the tests: Debian's chromium, driven by playwright's async API.

Nothing here downloads a browser (never ``playwright install``): playwright drives the system's
``/usr/bin/chromium`` (``./dev.sh test`` installs Debian's ``chromium`` when it is missing), each time with
a fresh profile in a temporary directory. The browser reaches nothing but loopback: every other host name
resolves to nothing (``--host-resolver-rules``), so a page's outside resources (the test OP's pages import
a web font) fail at once instead of waiting on the network.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import BrowserContext, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)
LAUNCH_TIMEOUT_MS = 30_000   # starting chromium on 2 busy cores
ACTION_TIMEOUT_MS = 15_000   # every click, wait and navigation of a test
CHROMIUM_MISSING = (f"{CHROMIUM} is missing: ./dev.sh test installs Debian's chromium (apt-get install chromium); "
                    "never `playwright install`")


class ChromiumMissing(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def chromium(user_data_dir: Path) -> AsyncIterator[BrowserContext]:
    """Headless chromium with a fresh profile in ``user_data_dir`` (a persistent context: its one page is
    ``context.pages[0]``); closed, and its processes ended, on the way out."""
    if not CHROMIUM.is_file():
        raise ChromiumMissing(CHROMIUM_MISSING)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
            timeout=LAUNCH_TIMEOUT_MS)
        try:
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
            yield context
        finally:
            await context.close()
