"""The exception tree, and how each error reads as HTTP: its status, JSON body and challenge.
Every error the gateway answers with is here, the proxy's and its own endpoints' alike, so that
one read shows every status and code a client can get. It imports nothing of gateway's; the
middleware that answers with these is in answers.py.

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


class JsonRequired(BadRequest):
    code, description = "json_required", "send the body as JSON (Content-Type: application/json)"


class BodyTooLarge(BadRequest):
    limit = 16 * 1024   # the largest body the gateway's own endpoints read (auth/routes.py MAX_BODY_BYTES)
    status, code, description = 413, "body_too_large", f"the request body exceeds {limit} bytes"


class InvalidAccountField(BadRequest):
    code, description = "invalid_account", "a username or e-mail address breaks the rules"


class WeakPasswordRefused(BadRequest):
    code, description = "weak_password", "the password is too weak"


class InvalidResetToken(BadRequest):
    # One answer for an unknown, used, expired or superseded token.
    code, description = "invalid_reset_token", "the reset token is invalid, expired or used; ask for a new link"


class BadRevokeRequest(BadRequest):
    code = "bad_revoke_request"   # raised with what is wrong


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


class MissingRefreshToken(Unauthenticated):
    """A refresh with no refresh token at all: a missing credential, 401 like a missing access token
    (a browser whose session cookie is gone learns that it is logged out, not that it sent garbage)."""

    error, code = "invalid_request", "missing_refresh_token"
    description = "no refresh token: send the refresh cookie or {\"refresh_token\": ...}"


class InvalidGrant(Unauthenticated):
    error, code, description = "invalid_grant", "invalid_grant", "the grant is invalid"


class InvalidCredentials(InvalidGrant):
    # One answer for a wrong password, an unknown user and a disabled account: no account enumeration.
    code, description = "invalid_credentials", "the username or password is wrong"


class InvalidRefreshToken(InvalidGrant):
    code, description = "invalid_refresh_token", "the refresh token is invalid, expired or revoked"


class RefreshTokenReused(InvalidRefreshToken):
    code = "refresh_token_reused"
    description = "the refresh token was used already; its session has been revoked"

    def __init__(self, description: str | None = None, *, subject: str | None = None,
                 session: str | None = None) -> None:
        super().__init__(description)
        # Whose session died, for the audit line the refresh endpoint writes (never in the answer).
        self.subject, self.session = subject, session


class SessionEnded(InvalidRefreshToken):
    """The token's session was ended on purpose (logout, password reset, revocation): no reuse alarm."""

    code = "session_ended"
    description = "the session of this refresh token has ended; log in again"


class InvalidDpopProof(GatewayError):
    """A DPoP proof (RFC 9449) that fails a check of section 4.3; the description names which.
    400 at the token endpoints (RFC 9449 5); on a proxied request the caller raises ``for_resource()``:
    401 (RFC 9449 7.1), whose answer carries the ``DPoP`` challenge."""

    status, error, code, description = 400, "invalid_dpop_proof", "invalid_dpop_proof", "the DPoP proof is invalid"

    def for_resource(self) -> InvalidDpopProof:
        """The same refusal as a protected resource answers it: 401 (RFC 9449 7.1)."""
        other = type(self)(self.description, headers=self.headers)
        other.status = 401
        return other


class UseDpopNonce(InvalidDpopProof):
    # RFC 9449 8 (token endpoint, 400) and 9 (resource, 401): the caller adds a fresh DPoP-Nonce header.
    error, code, description = "use_dpop_nonce", "use_dpop_nonce", "the DPoP proof needs a fresh server nonce"


class Forbidden(GatewayError):
    status, error, code, description = 403, "insufficient_scope", "forbidden", "a required role is missing"


class CsrfFailed(Forbidden):
    # The names are steps/cookies.py's CSRF_HEADER and CSRF_COOKIE (DESIGN fixes them).
    error, code = "access_denied", "csrf_failed"
    description = "the X-CSRF-Token header must repeat the csrf_token cookie on this method"


class ForeignAccount(Forbidden):
    code, description = "foreign_account", "this token's account is not kept by this gateway"


class MethodNotAllowed(GatewayError):
    """405 on the gateway's own endpoints for a method they do not have (with Allow)."""

    status, error, code, description = 405, "invalid_request", "method_not_allowed", "method not allowed here"


class MethodRefused(MethodNotAllowed):
    """405 for TRACE and CONNECT, on every path: methods that are never proxied nor served."""

    code, description = "method_refused", "this method is never proxied"


class ExpectationFailed(BadRequest):
    status, code, description = 417, "expectation_failed", "the only expectation understood is 100-continue"


class NoRoute(GatewayError):
    status, error, code, description = 404, "not_found", "no_route", "no route matches this request"


class AccountsNotEditable(NoRoute):
    code = "accounts_not_editable"
    description = "accounts are managed by an outside service (auth.users.credentials_url); this endpoint is off"


class UnknownSession(GatewayError):
    # One answer for an unknown id, an ended session and another user's: no session enumeration.
    status, error, code, description = 404, "not_found", "session_not_found", "no such session"


class UsernameTaken(GatewayError):
    status, error, code, description = 409, "invalid_request", "username_taken", "this username is taken"


class RateLimited(GatewayError):
    status, error, code, description = 429, "rate_limited", "rate_limited", "too many requests"


class DependencyDown(GatewayError):
    status, error, code = 503, "temporarily_unavailable", "dependency_unavailable"
    description = "a dependency of the gateway is unavailable"


class StoreDown(DependencyDown):
    """The admin API's: the store a revocation must be written to is unavailable."""

    code = "store_unavailable"


class UpstreamFailed(GatewayError):
    status, error, code, description = 502, "bad_gateway", "upstream_unavailable", "the upstream is unreachable"


class UpstreamTimeout(UpstreamFailed):
    status, error, code, description = 504, "gateway_timeout", "upstream_timeout", "the upstream did not answer in time"


class BrowserLoginFailed(GatewayError):
    """A browser login (delegated, or the sign-in page's form) that cannot go on. The browser endpoints
    answer it with an HTML page that names the reason in words (auth/oauth), never with JSON; ``code``
    is the reason the metrics count. 400: state, cookie and rd problems; 401: the provider refused, the
    exchange failed, the ID token is invalid; 403: the account may not sign in; 503: the provider is down."""

    status, error, code, description = 401, "access_denied", "login_failed", "the sign-in did not succeed"

    def __init__(self, code: str, description: str, status: int = 401) -> None:
        self.code, self.status = code, status
        super().__init__(description)


class NoSigningKey(GatewayError):
    code, description = "no_signing_key", "this gateway has no key able to sign tokens"


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


def dpop_challenge(exc: GatewayError, algs: str) -> str:
    """RFC 9449 7.1: the ``DPoP`` challenge of a 401 where DPoP-bound tokens are accepted."""
    came = not isinstance(exc, MissingToken) and type(exc) is not Unauthenticated
    if isinstance(exc, InvalidDpopProof) or (came and exc.error == "invalid_token"):
        return f'DPoP error="{exc.error}", algs="{algs}", error_description="{_quote(exc.description)}"'
    return f'DPoP algs="{algs}"'   # no credentials came: no error code (as for Bearer)


def error_response(exc: GatewayError, dpop_algs: str | None = None) -> web.Response:
    """The answer for ``exc``. ``dpop_algs``: the request's route accepts DPoP (RFC 9449), so a 401
    carries a DPoP challenge beside the Bearer one (first when the proof was what failed)."""
    body = {"error": exc.error, "error_description": exc.description, "code": exc.code}
    headers = {"Cache-Control": "no-store", **exc.headers}
    if exc.status in (401, 403):
        headers["WWW-Authenticate"] = challenge(exc)
    resp = web.Response(status=exc.status, text=json.dumps(body), content_type="application/json",
                        headers=headers)
    if dpop_algs is not None and exc.status == 401:
        bearer = resp.headers.popall("WWW-Authenticate")
        dpop = [dpop_challenge(exc, dpop_algs)]
        for value in (dpop + bearer if isinstance(exc, InvalidDpopProof) else bearer + dpop):
            resp.headers.add("WWW-Authenticate", value)
    return resp
