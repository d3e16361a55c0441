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
    samesite = page_samesite(auth)
    resp.set_cookie(ACCESS_COOKIE, pair.access_token, max_age=max(0, round(pair.access_exp - now)), path="/",
                    secure=rc.secure, httponly=True, samesite=samesite)
    # Readable by the page's scripts on purpose: they copy it into X-CSRF-Token (double submit).
    resp.set_cookie(CSRF_COOKIE, csrf_token, max_age=refresh_age, path="/", secure=rc.secure,
                    httponly=False, samesite=samesite)


def page_samesite(auth: AuthConfig) -> str:
    """SameSite of the access and CSRF cookies: Lax where the refresh cookie is Strict. A browser drops
    Strict cookies on every request of a navigation that began on another site, so the page a provider's
    login (or a link in a mail) lands on would answer 401. Lax still keeps them off cross-site POSTs,
    and an unsafe method needs the CSRF header anyway. The refresh cookie (path auth.prefix, sent by the
    page's own scripts) keeps its Strict."""
    return "Lax" if auth.refresh_cookie.samesite == "Strict" else auth.refresh_cookie.samesite


def clear_session_cookies(resp: web.StreamResponse, auth: AuthConfig) -> None:
    """Max-Age=0 for every cookie set_session_cookies may have set."""
    rc = auth.refresh_cookie
    resp.del_cookie(rc.name, path=rc.path, secure=rc.secure, httponly=True, samesite=rc.samesite)
    if auth.access_cookie:
        resp.del_cookie(ACCESS_COOKIE, path="/", secure=rc.secure, httponly=True, samesite=page_samesite(auth))
        resp.del_cookie(CSRF_COOKIE, path="/", secure=rc.secure, samesite=page_samesite(auth))


def read_refresh_cookie(request: web.Request, auth: AuthConfig) -> str | None:
    return request.cookies.get(auth.refresh_cookie.name) or None


def csrf_token_for(request: web.Request) -> str:
    """The CSRF cookie the client holds when it is well formed (kept across refreshes, so that
    requests already in flight in other tabs still match), else a new one."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _CSRF_TOKEN.fullmatch(current):
        return current
    return secrets.token_urlsafe(CSRF_TOKEN_BYTES)
