"""Cookies as a request brings them: which ones are the gateway's (the refresh cookie; in browser
mode, ``auth.access_cookie``, the access and CSRF cookies), and the access cookie as a credential.
A login sets them and a logout clears them in auth/cookies.py.

``extract_access_token`` is step 2 for callers that accept the access cookie: the Authorization header
when there is one, else the cookie, which on unsafe methods needs the CSRF double-submit header.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Protocol

from multidict import MultiMapping

from ..config.load import AuthConfig, GatewayConfig
from ..errors import CsrfFailed, MissingToken
from .extract import AUTHORIZATION, BEARER, bearer_credentials, token_credentials

ACCESS_COOKIE = "access_token"
CSRF_COOKIE = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})   # RFC 9110 9.2.1


class Asking(Protocol):
    """What the cookie and bearer checks read of a request (an aiohttp request has it)."""

    @property
    def headers(self) -> MultiMapping[str]: ...
    @property
    def cookies(self) -> Mapping[str, str]: ...
    @property
    def method(self) -> str: ...


def gateway_cookies(auth: AuthConfig) -> frozenset[str]:
    """The cookies that carry the caller's credentials (the refresh cookie; in browser mode the access
    and CSRF cookies): the gateway reads them, no upstream ever gets them (forward/headers.py)."""
    names = {auth.refresh_cookie.name}
    if auth.access_cookie:
        names |= {ACCESS_COOKIE, CSRF_COOKIE}
    return frozenset(names)


def extract_cookie_token(request: Asking, cfg: GatewayConfig) -> str | None:
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


def extract_access_token(request: Asking, cfg: GatewayConfig, method: str | None = None) -> str:
    """The bearer token when an Authorization header came, else the access cookie (browser mode,
    CSRF-checked for ``method``, the request's own by default). Raises MissingToken, BadRequest
    (bearer_credentials) or CsrfFailed. The token's syntax is left to Authenticator.authenticate."""
    if AUTHORIZATION in request.headers:
        return bearer_credentials(request.headers)
    token = check_cookie_token(request.cookies, request.headers, method or request.method, cfg.auth)
    if token is None:
        raise MissingToken()
    return token


def extract_presented_token(request: Asking, cfg: GatewayConfig, method: str | None = None) -> tuple[str, str]:
    """(scheme, token): ``Authorization: Bearer`` or ``DPoP`` (RFC 9449 7.1), else the access cookie as
    BEARER (a cookie is a bearer credential). Raises as ``extract_access_token``."""
    if AUTHORIZATION in request.headers:
        return token_credentials(request.headers)
    return BEARER, extract_access_token(request, cfg, method)


def _check_csrf(cookie: str, sent: list[str]) -> None:
    if not cookie or len(sent) != 1:
        raise CsrfFailed()
    # Constant time: the comparison must not reveal how much of the secret a guess got right.
    if not hmac.compare_digest(sent[0].encode("utf-8", "surrogateescape"), cookie.encode("utf-8", "surrogateescape")):
        raise CsrfFailed()
