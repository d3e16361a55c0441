"""Fixtures of the delegated-login tests: a real OpenID Provider (op/op.js, panva's oidc-provider in Node),
a browser-like HTTP client for it, and a real headless chromium (playwright).

- ``oidc_op`` (session): one OP for the whole run, started on first use and stopped by PID at the end.
  Tests register their gateway's exact callback URLs with ``await oidc_op.allow_redirect_uris([...],
  [...post-logout URIs])``; keys rotated or accounts set by one test stay for the next: assert on what
  the test itself made (``kid = await oidc_op.rotate_keys()``), never on the OP's starting state.
- ``start_oidc_op`` (function): ``await start_oidc_op(**options)`` -> an OP of the test's own (options of
  ``opdriver.start_op``: redirect_uris, post_logout_redirect_uris, auth_method, accounts), stopped at the end.
- ``make_user_agent`` (function): ``make_user_agent(*secure_origins)`` -> an aiohttp session that keeps
  cookies as a browser does on loopback (``opdriver.user_agent``), closed at the end. Pass it to
  ``opdriver.sign_in_at_op`` / ``sign_out_at_op``.
- ``browser_context`` / ``browser_page`` (function): headless chromium with a fresh profile
  (``tests/integration/browser.py``), closed at the end. A missing chromium fails the test, never skips it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import BrowserContext, Page

from ...browser import CHROMIUM, CHROMIUM_MISSING, chromium
from .opdriver import OpenIdProvider, start_op, user_agent


@pytest.fixture(scope="session")
def oidc_op(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProvider]:
    """The run's OpenID Provider (started once; its log is in the fixture's temporary directory)."""
    op = start_op(tmp_path_factory.mktemp("oidc-op"))
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
async def start_oidc_op(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[OpenIdProvider]]]:
    """start_oidc_op(**start_op options) -> an OP of this test's own, stopped by PID at the end."""
    started: list[OpenIdProvider] = []

    async def start(**options: Any) -> OpenIdProvider:
        op = await asyncio.to_thread(start_op, tmp_path, name=f"oidc-op-{len(started)}", **options)
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            await asyncio.to_thread(op.stop)


@pytest.fixture
async def make_user_agent() -> AsyncIterator[Callable[..., aiohttp.ClientSession]]:
    """make_user_agent(*secure_origins) -> a browser-like aiohttp session (cookies of IP hosts kept,
    Secure cookies sent over http to ``secure_origins``), closed at the end."""
    sessions: list[aiohttp.ClientSession] = []

    def make(*secure_origins: str) -> aiohttp.ClientSession:
        sessions.append(user_agent(*secure_origins))
        return sessions[-1]

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()


@pytest.fixture
async def browser_context(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """Headless chromium (playwright) with a fresh profile under tmp_path, closed at the end."""
    if not CHROMIUM.is_file():
        pytest.fail(CHROMIUM_MISSING, pytrace=False)   # a failure, not a skip: ./dev.sh test installs it
    async with chromium(tmp_path / "chromium-profile") as context:
        yield context


@pytest.fixture
def browser_page(browser_context: BrowserContext) -> Page:
    """The browser's one page (tab)."""
    return browser_context.pages[0]
