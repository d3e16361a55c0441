"""Cookies: the refresh cookie, and in browser mode (``auth.access_cookie``) the access and CSRF cookies.

``extract_access_token`` is step 2 for callers that accept the access cookie: the Authorization header
when there is one, else the cookie, which on unsafe methods needs the CSRF double-submit header.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping

from aiohttp import web
from multidict import MultiMapping

from ..config.load import AuthConfig, GatewayConfig
from ..errors import Forbidden, MissingToken
from .extract import AUTHORIZATION, bearer_credentials
from ..auth.sessions import TokenPair

ACCESS_COOKIE = "access_token"
CSRF_COOKIE = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})   # RFC 9110 9.2.1
CSRF_TOKEN_BYTES = 32
_CSRF_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")   # secrets.token_urlsafe(32)


class CsrfFailed(Forbidden):
    error, code = "access_denied", "csrf_failed"
    description = f"the {CSRF_HEADER} header must repeat the {CSRF_COOKIE} cookie on this method"


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


def gateway_cookies(auth: AuthConfig) -> frozenset[str]:
    """The cookies that carry the caller's credentials (the refresh cookie; in browser mode the access
    and CSRF cookies): the gateway reads them, no upstream ever gets them (forward/headers.py)."""
    names = {auth.refresh_cookie.name}
    if auth.access_cookie:
        names |= {ACCESS_COOKIE, CSRF_COOKIE}
    return frozenset(names)


def read_refresh_cookie(request: web.Request, auth: AuthConfig) -> str | None:
    return request.cookies.get(auth.refresh_cookie.name) or None


def csrf_token_for(request: web.Request) -> str:
    """The CSRF cookie the client holds when it is well formed (kept across refreshes, so that
    requests already in flight in other tabs still match), else a new one."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if _CSRF_TOKEN.fullmatch(current):
        return current
    return secrets.token_urlsafe(CSRF_TOKEN_BYTES)


def extract_cookie_token(request: web.Request, cfg: GatewayConfig) -> str | None:
    """The access cookie (browser mode), or None when browser mode is off or there is no cookie.

    On an unsafe method the ``X-CSRF-Token`` header must equal the CSRF cookie, else CsrfFailed (403).
    Never reads the query string. Call it only when the request has no Authorization header.
    """
    return check_cookie_token(request.cookies, request.headers, request.method, cfg.auth)


def check_cookie_token(cookies: Mapping[str, str], headers: MultiMapping[str], method: str,
                       auth: AuthConfig) -> str | None:
    """extract_cookie_token on plain values; ``method`` is the one to judge (forward-auth passes
    the forwarded method)."""
    if not auth.access_cookie:
        return None
    token = cookies.get(ACCESS_COOKIE)
    if not token:
        return None
    if method.upper() not in SAFE_METHODS:
        _check_csrf(cookies.get(CSRF_COOKIE, ""), headers.getall(CSRF_HEADER, []))
    return token


def extract_access_token(request: web.Request, cfg: GatewayConfig, method: str | None = None) -> str:
    """The bearer token when an Authorization header came, else the access cookie (browser mode,
    CSRF-checked for ``method``, the request's own by default). Raises MissingToken, BadRequest
    (bearer_credentials) or CsrfFailed. The token's syntax is left to Authenticator.authenticate."""
    if AUTHORIZATION in request.headers:
        return bearer_credentials(request.headers)
    token = check_cookie_token(request.cookies, request.headers, method or request.method, cfg.auth)
    if token is None:
        raise MissingToken()
    return token


def _check_csrf(cookie: str, sent: list[str]) -> None:
    if not cookie or len(sent) != 1:
        raise CsrfFailed()
    # Constant time: the comparison must not reveal how much of the secret a guess got right.
    if not hmac.compare_digest(sent[0].encode("utf-8", "surrogateescape"), cookie.encode("utf-8", "surrogateescape")):
        raise CsrfFailed()
