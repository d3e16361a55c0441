"""Accounts checked by a remote service (auth.users: {credentials_url: ...})."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp

from ...errors import DependencyDown
from .base import AuthenticatedUser, NotEditable, UserDirectory, check_email, check_roles

log = logging.getLogger("tokengate")
CREDENTIALS_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 64 * 1024

class CredentialsUsers(UserDirectory):
    """A remote service decides: POST {"username", "password"} as JSON to ``url``.

    200 with {"sub", "roles"?, "email"?} is a yes; 401, 403 and 404 are a no. Any other status, a
    malformed answer, a timeout or no answer raises DependencyDown (503): an outage is never a yes.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession | None = None, *,
                 timeout_s: float = CREDENTIALS_TIMEOUT_S) -> None:
        self.url = url
        self._session, self._owns_session = session, session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def authenticate(self, username: str, password: str) -> AuthenticatedUser | None:
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(self.url, json={"username": username, "password": password},
                                          timeout=self._timeout, allow_redirects=False) as resp:
                if resp.status in (401, 403, 404):
                    return None
                if resp.status != 200:
                    log.warning("credentials service answered %s", resp.status)
                    raise DependencyDown(_SERVICE_DOWN)
                body = await _read_limited(resp.content, MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("credentials service unreachable: %s", type(exc).__name__)
            raise DependencyDown(_SERVICE_DOWN) from exc
        return _parse_answer(body)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _not_editable(self) -> NotEditable:
        return NotEditable(f"accounts are managed by the credentials service at {self.url} "
                           "(auth.users.credentials_url); change them there")


_SERVICE_DOWN = "the credentials service is unavailable"


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    body = bytearray()
    async for chunk in stream.iter_chunked(limit):
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body)


def _parse_answer(body: bytes) -> AuthenticatedUser:
    try:
        data = json.loads(body) if len(body) <= MAX_ANSWER_BYTES else None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        sub = data.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255 or not sub.isprintable():
            raise ValueError("no usable sub")
        return AuthenticatedUser(sub, check_roles(data.get("roles")), check_email(data.get("email")))
    except ValueError as exc:   # InvalidAccount and JSON errors are ValueErrors
        log.warning("credentials service gave a malformed answer")
        raise DependencyDown(_SERVICE_DOWN) from exc
