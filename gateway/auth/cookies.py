"""The cookies a login sets and a logout clears (refresh; in browser mode access and CSRF), and the
refresh cookie a refresh reads. Reading the access cookie and checking CSRF is a step of every
request: steps/cookies.py."""

from __future__ import annotations

import re
import secrets

from aiohttp import web

from ..config.load import AuthConfig
from ..steps.cookies import ACCESS_COOKIE, CSRF_COOKIE
from .sessions import TokenPair

CSRF_TOKEN_BYTES = 32
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")   # secrets.token_urlsafe(32)


def set_session_cookies(resp: web.StreamResponse, auth: AuthConfig, pair: TokenPair, now: float,
                        csrf_token: str) -> None:
    """The refresh cookie; in browser mode also the access cookie and the (script-readable) CSRF cookie."""
    rc = auth.refresh_cookie
    refresh_age = max(0, round(pair.refresh_exp - now))
    resp.set_cookie(rc.name, pair.refresh_token, max_age=refresh_age, path=rc.path, secure=rc.secure,
                    httponly=True, samesite=rc.samesite)
    if not auth.access_cookie:
        return
    resp.set_cookie(ACCESS_COOKIE, pair.access_token, max_age=max(0, round(pair.access_exp - now)), path="/",
                    secure=rc.secure, httponly=True, samesite=rc.samesite)
    # Readable by the page's scripts on purpose: they copy it into X-CSRF-Token (double submit).
    resp.set_cookie(CSRF_COOKIE, csrf_token, max_age=refresh_age, path="/", secure=rc.secure,
                    httponly=False, samesite=rc.samesite)


def clear_session_cookies(resp: web.StreamResponse, auth: AuthConfig) -> None:
    """Max-Age=0 for every cookie set_session_cookies may have set."""
    rc = auth.refresh_cookie
    resp.del_cookie(rc.name, path=rc.path, secure=rc.secure, httponly=True, samesite=rc.samesite)
    if auth.access_cookie:
        resp.del_cookie(ACCESS_COOKIE, path="/", secure=rc.secure, httponly=True, samesite=rc.samesite)
        resp.del_cookie(CSRF_COOKIE, path="/", secure=rc.secure, samesite=rc.samesite)


def read_refresh_cookie(request: web.Request, auth: AuthConfig) -> str | None:
    return request.cookies.get(auth.refresh_cookie.name) or None


def csrf_token_for(request: web.Request) -> str:
    """The CSRF cookie the client holds when it is well formed (kept across refreshes, so that
    requests already in flight in other tabs still match), else a new one."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _CSRF_TOKEN.fullmatch(current):
        return current
    return secrets.token_urlsafe(CSRF_TOKEN_BYTES)
