"""The exception tree, and how each error reads as HTTP: its status, JSON body and challenge.
It imports nothing of gateway's; the middleware that answers with these is in answers.py.

Bodies follow DESIGN.md (RFC 6750 shape): ``{"error", "error_description", "code"}`` where
``error`` is the OAuth/RFC 6750 error and ``code`` the gateway's finer reason. A 401 carries a
``WWW-Authenticate: Bearer`` challenge. No description ever contains the token.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web

REALM = "tokengate"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GatewayError(Exception):
    status = 500
    error = "internal_error"
    code = "internal_error"
    description = "internal error"

    def __init__(self, description: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        if description is not None:
            self.description = description
        self.headers = headers or {}
        super().__init__(self.description)


class BadRequest(GatewayError):
    status, error, code, description = 400, "invalid_request", "bad_request", "malformed request"


class ConflictingHeaders(BadRequest):
    code, description = "conflicting_headers", "the request carries conflicting copies of a header"


class RequestTimeout(BadRequest):
    status, code, description = 408, "request_timeout", "the client was too slow sending its request"


class UnknownTransferCoding(BadRequest):
    # RFC 9112 6.1: a transfer coding the gateway does not decode (gzip, ...) would reach the upstream
    # as bytes it cannot know are encoded.
    status, code, description = 501, "unsupported_transfer_coding", "the only transfer coding accepted is chunked"


class BadPath(BadRequest):
    code, description = "bad_path", "the request path is not allowed"


class Unauthenticated(GatewayError):
    status, error, code, description = 401, "invalid_token", "unauthenticated", "authentication required"


class MissingToken(Unauthenticated):
    code, description = "missing_token", "no access token was presented"


class InvalidToken(Unauthenticated):
    code, description = "invalid_token", "the access token is invalid"


class ExpiredToken(InvalidToken):
    code, description = "token_expired", "the access token expired"


class RevokedToken(InvalidToken):
    code, description = "token_revoked", "the access token was revoked"


class Forbidden(GatewayError):
    status, error, code, description = 403, "insufficient_scope", "forbidden", "a required role is missing"


class MethodRefused(GatewayError):
    status, error, code, description = 405, "invalid_request", "method_refused", "this method is never proxied"


class ExpectationFailed(BadRequest):
    status, code, description = 417, "expectation_failed", "the only expectation understood is 100-continue"


class NoRoute(GatewayError):
    status, error, code, description = 404, "not_found", "no_route", "no route matches this request"


class RateLimited(GatewayError):
    status, error, code, description = 429, "rate_limited", "rate_limited", "too many requests"


class DependencyDown(GatewayError):
    status, error, code = 503, "temporarily_unavailable", "dependency_unavailable"
    description = "a dependency of the gateway is unavailable"


class UpstreamFailed(GatewayError):
    status, error, code, description = 502, "bad_gateway", "upstream_unavailable", "the upstream is unreachable"


class UpstreamTimeout(UpstreamFailed):
    status, error, code, description = 504, "gateway_timeout", "upstream_timeout", "the upstream did not answer in time"


def _quote(text: str) -> str:
    # RFC 6750 3: the attribute values are quoted-strings; keep them plain ASCII without quotes.
    return "".join(c for c in text if 0x20 <= ord(c) < 0x7F and c not in '"\\')


def challenge(exc: GatewayError) -> str:
    if isinstance(exc, MissingToken) or type(exc) is Unauthenticated or exc.error not in ("invalid_token",
                                                                                          "insufficient_scope"):
        return f'Bearer realm="{REALM}"'   # RFC 6750 3.1: no error code when no credentials came
    if isinstance(exc, Forbidden):
        return f'Bearer realm="{REALM}", error="insufficient_scope", error_description="{_quote(exc.description)}"'
    return f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quote(exc.description)}"'


def error_response(exc: GatewayError) -> web.Response:
    body = {"error": exc.error, "error_description": exc.description, "code": exc.code}
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.status in (401, 403):
        headers["WWW-Authenticate"] = challenge(exc)
    return web.Response(status=exc.status, text=json.dumps(body), content_type="application/json",
                        headers=headers)
