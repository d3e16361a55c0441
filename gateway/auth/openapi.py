"""GET {auth.prefix}/openapi.json: an OpenAPI 3.1 document of the gateway's own endpoints.

``openapi_document(cfg)`` builds it from the config (prefix, cookie names, browser mode, identity
headers, signup on/off); error answers are derived from the exception classes the handlers raise.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .. import __version__
from ..config.load import CredentialsUrlConfig, GatewayConfig
from ..errors import (BadPath, BadRequest, BodyTooLarge, ConflictingHeaders, CsrfFailed, DependencyDown, ExpiredToken,
                      Forbidden, ForeignAccount, InvalidAccountField, InvalidCredentials, InvalidDpopProof,
                      InvalidRefreshToken, InvalidResetToken, InvalidToken, JsonRequired, MissingRefreshToken,
                      MissingToken, NoRoute, RateLimited, RefreshTokenReused, RevokedToken, SessionEnded,
                      UnknownSession, UseDpopNonce, UsernameTaken, WeakPasswordRefused)
from ..pipeline import GATEWAY, JWKS_PATH
from ..steps.cookies import ACCESS_COOKIE, CSRF_COOKIE, CSRF_HEADER
from .account_routes import MAX_EMAIL_CHARS
from .accounts.directory import MAX_PASSWORD_CHARS, REFUSED_IN_EMAIL, USERNAME
from .accounts.resets import MAX_RESET_TOKEN_CHARS
from .endpoints import add_endpoint
from .oauth.openapi import (browser_paths, form_forgot_password_body, form_forgot_password_responses, form_login_body,
                            form_login_responses, form_signup_body, form_signup_responses)
from .routes import MAX_BODY_BYTES, MAX_USERNAME_CHARS, SESSION_ID
from .sessions import MAX_REFRESH_TOKEN_CHARS, MAX_USER_AGENT_CHARS

OPENAPI_VERSION = "3.1.0"
OPENAPI_PATH = "/openapi.json"          # under auth.prefix
JSON = "application/json"
PUBLIC_CACHE = "public, max-age=300"
OPENAPI_BODY = web.AppKey("openapi_body", bytes)
VERIFY_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
_COOKIE_NAME = re.compile(r"[A-Za-z0-9_-]+")   # names that are safe to put in a pattern as written


class Failure(Protocol):
    """What a documented error answer needs: the class attributes of a GatewayError."""

    status: int
    error: str
    code: str
    description: str


@dataclass(frozen=True)
class AtResource:
    """A proof refusal as a protected resource answers it: 401, not the token endpoints' 400 (RFC 9449 7.1)."""

    status: int
    error: str
    code: str
    description: str

    @classmethod
    def of(cls, failure: Failure) -> AtResource:
        return cls(401, failure.error, failure.code, failure.description)


TOKEN_FAILURES: tuple[Failure, ...] = (MissingToken, InvalidToken, ExpiredToken, RevokedToken, BadRequest,
                                       DependencyDown, AtResource.of(InvalidDpopProof))
# What any JSON-body endpoint may refuse before it looks at the fields' meaning.
BODY_FAILURES: tuple[Failure, ...] = (BadRequest, JsonRequired, BodyTooLarge, DependencyDown)


def openapi_document(cfg: GatewayConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the auth endpoints, JWKS and this document, for this config.
    No ``servers``: paths are relative to wherever the gateway is reached."""
    p = cfg.auth.prefix
    paths: dict[str, Any] = {
        f"{p}/login": {"post": _login(cfg)},
        f"{p}/refresh": {"post": _refresh(cfg)},
        f"{p}/logout": {"post": _logout(cfg)},
        f"{p}/logout-all": {"post": _logout_all(cfg)},
        f"{p}/sessions": {"get": _list_sessions(cfg)},
        f"{p}/sessions/{{id}}": {"delete": _end_session(cfg)},
    }
    # Accounts kept by a credentials service cannot be changed here: those endpoints answer 404 alone.
    if not isinstance(cfg.auth.users, CredentialsUrlConfig):
        if cfg.auth.signup:
            paths[f"{p}/signup"] = {"post": _signup(cfg)}
        paths[f"{p}/forgot-password"] = {"post": _forgot_password(cfg)}
        paths[f"{p}/reset-password"] = {"post": _reset_password()}
        paths[f"{p}/change-password"] = {"post": _change_password(cfg)}
    # Forward-auth answers every method but TRACE and CONNECT (nginx's auth_request keeps the original
    # request's method): every other one OpenAPI 3.1 has a name for.
    paths[f"{p}/verify"] = {method: _verify(cfg, method) for method in VERIFY_METHODS}
    for path, operations in browser_paths(cfg).items():
        paths.setdefault(path, {}).update(operations)
    paths[JWKS_PATH] = {"get": _jwks()}
    paths[f"{p}{OPENAPI_PATH}"] = {"get": _openapi()}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "tokengate auth endpoints", "version": __version__,
                 "description": "The gateway's own endpoints: sessions, accounts, forward-auth and public keys. "
                                "Every error answer is JSON: {error, error_description, code}, but those of "
                                "the browser endpoints (the sign-in, signup and forgot-password pages, their "
                                "form posts, the OAuth start and callback), which are HTML pages."},
        "paths": paths,
        "components": {"schemas": _schemas(cfg), "headers": _headers(cfg),
                       "securitySchemes": _security_schemes(cfg)},
    }


async def serve_openapi(request: web.Request) -> web.Response:
    """The document as JSON; public, cacheable for 5 minutes (it changes only with the config)."""
    body = request.app.get(OPENAPI_BODY)
    if body is None:
        body = _encode(openapi_document(request.app[GATEWAY].config))
    return web.Response(body=body, content_type=JSON, headers={"Cache-Control": PUBLIC_CACHE})


def add_openapi_route(app: web.Application, cfg: GatewayConfig) -> None:
    """Register GET (and HEAD) {prefix}/openapi.json; call it before the catch-all proxy route.
    Other methods get 405 with Allow, like the other auth endpoints."""
    app[OPENAPI_BODY] = _encode(openapi_document(cfg))
    add_endpoint(app, f"{cfg.auth.prefix}{OPENAPI_PATH}", {"GET": serve_openapi, "HEAD": serve_openapi})


def _encode(document: Mapping[str, Any]) -> bytes:
    # UTF-8 as it is: the e-mail patterns list thousands of characters, under half the size of \u escapes.
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


# --- operations ----------------------------------------------------------------------------------

def _login(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "login", "Log in with a username and password",
        "Starts a session: an access token and a refresh token (in the body unless "
        "auth.refresh_token_in_body is false, and always in the HttpOnly refresh cookie). A wrong password, "
        "an unknown user and a disabled account get the same 401. Bodies a cross-site HTML form could post "
        "(multipart or text/plain content types) are refused with json_required; a form post "
        "(application/x-www-form-urlencoded) is the sign-in page's, answered in HTML, and needs the page's CSRF "
        "token. Rate limited per client address "
        "and per username.",
        body=_with_form_body(cfg, _body("LoginRequest"), form_login_body()), parameters=[_dpop_param()],
        responses=_with_form_answers(cfg, {"200": _tokens(cfg),
                                           **_failures(*BODY_FAILURES, *_proof_failures(cfg), InvalidCredentials,
                                                       RateLimited)},
                                     form_login_responses()))


def _with_form_body(cfg: GatewayConfig, body: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
    """The page's urlencoded form beside the JSON body, when the pages are on (their posts answer HTML)."""
    if not cfg.auth.sign_in_page:
        return body
    return {**body, "content": {**body["content"], **form},
            "description": f"{body['description']} Or the page's urlencoded form, with its CSRF token."}


def _with_form_answers(cfg: GatewayConfig, responses: dict[str, Any], form: dict[str, Any]) -> dict[str, Any]:
    """The form post's HTML answers beside the JSON ones: a status both give has both content types."""
    if not cfg.auth.sign_in_page:
        return responses
    merged = dict(responses)
    for status, answer in form.items():
        if status in merged:
            mine = merged[status]
            merged[status] = {**mine, "description": f"{mine['description']} Form post: {answer['description']}",
                              "content": {**mine.get("content", {}), **answer.get("content", {})}}
        else:
            merged[status] = answer
    return merged


def _refresh(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "refresh", "Rotate a refresh token",
        "Takes the refresh token from the JSON body, else from the refresh cookie (the body wins when both "
        "come) and answers a new pair; the presented token dies (rotation). Presenting a dead one again ends "
        "its whole session (refresh_token_reused). A DPoP-bound refresh token needs a DPoP proof by its key "
        "(invalid_dpop_proof otherwise, and the token stays usable). Rate limited per client address.",
        body=_body("RefreshRequest", required=False), parameters=[_dpop_param()],
        security=[{"refreshCookie": []}, {}],
        responses={"200": _tokens(cfg),
                   **_failures(BadRequest, *_proof_failures(cfg), MissingRefreshToken, InvalidRefreshToken,
                               RefreshTokenReused, SessionEnded, BodyTooLarge, RateLimited, DependencyDown)})


def _logout(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "logout", "End this session",
        "The access token's jti is denied until it expires and its session (refresh family) dies; a "
        "refresh token in the body or cookie of the same subject is ended too. Clears the session cookies.",
        body=_body("RefreshRequest", required=False),
        security=_access_security(cfg),
        responses={"204": _ended(),
                   **_failures(*_token_failures(cfg), BodyTooLarge, *_csrf(cfg))})


def _logout_all(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "logoutAll", "End every session of the caller",
        "Every token of the access token's subject issued before now is dead, and every refresh family of "
        "the subject. The request body is not read. Clears the session cookies.",
        security=_access_security(cfg),
        responses={"204": _ended(), **_failures(*_token_failures(cfg), *_csrf(cfg))})


def _list_sessions(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "listSessions", "The caller's sessions",
        "Every live session (login) of the access token's subject, oldest first: ended ones are not listed. "
        "`current` marks the session of the token presented.",
        security=_access_security(cfg),
        responses={"200": {"description": "The sessions.", "headers": _no_store_headers(),
                           "content": {JSON: {"schema": _ref("SessionList")}}},
                   **_failures(*_token_failures(cfg))})


def _end_session(cfg: GatewayConfig) -> dict[str, Any]:
    session_id = {"name": "id", "in": "path", "required": True, "description": "A session's id (`sid`).",
                  "schema": {"type": "string", "pattern": f"^{SESSION_ID.pattern}$"}}
    return _operation(
        "endSession", "End one of the caller's sessions",
        "Its refresh tokens die (a refresh answers session_ended) and its access tokens are refused on every "
        "instance. An unknown id, an ended session and another user's session answer the same 404. Ending "
        "the caller's own session also clears the session cookies.",
        parameters=[session_id], security=_access_security(cfg),
        responses={"204": {"description": "The session has ended.", "headers": _no_store_headers()},
                   # NoRoute: an id that is no path segment (a slash in it) names another path.
                   **_failures(*_token_failures(cfg), *_csrf(cfg), UnknownSession, NoRoute)})


def _signup(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "signup", "Create an account",
        "The account gets auth.default_roles. Present while auth.signup is true (otherwise the path answers "
        "404 like one nothing serves). Rate limited per client address. Multipart and text/plain bodies are "
        "refused with json_required"
        + ("; a form post (application/x-www-form-urlencoded) is the signup page's, answered in HTML, and "
           "needs the page's CSRF token." if cfg.auth.sign_in_page else "."),
        body=_with_form_body(cfg, _body("SignupRequest"), form_signup_body()),
        responses=_with_form_answers(cfg, {"201": {"description": "The account exists.",
                                                   "headers": _no_store_headers(pragma=True),
                                                   "content": {JSON: {"schema": _ref("Account")}}},
                                           **_failures(*BODY_FAILURES, InvalidAccountField, WeakPasswordRefused,
                                                       UsernameTaken, RateLimited)},
                                     form_signup_responses()))


def _forgot_password(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "forgotPassword", "Ask for a password reset mail",
        "202 whether or not an account has this address (no account enumeration); when one does, a "
        "single-use reset link is mailed, valid auth.reset_ttl. Rate limited per client address and per "
        "e-mail address. Multipart and text/plain bodies are refused with json_required"
        + ("; a form post (application/x-www-form-urlencoded) is the forgot-password page's, answered in "
           "HTML (200, the same page whoever has the address), and needs the page's CSRF token."
           if cfg.auth.sign_in_page else "."),
        body=_with_form_body(cfg, _body("ForgotPasswordRequest"), form_forgot_password_body()),
        responses=_with_form_answers(cfg, {"202": {"description": "Accepted, whoever the address belongs to.",
                                                   "headers": _no_store_headers(pragma=True),
                                                   "content": {JSON: {"schema": _ref("Accepted")}}},
                                           **_failures(*BODY_FAILURES, InvalidAccountField, RateLimited)},
                                     form_forgot_password_responses()))


def _reset_password() -> dict[str, Any]:
    return _operation(
        "resetPassword", "Set a new password with a reset token",
        "The token works once; after a weak_password refusal it still works. Every session of the account "
        "is revoked.",
        body=_body("ResetPasswordRequest"),
        responses={"204": {"description": "The password is changed; every session of the account has ended.",
                           "headers": _no_store_headers(pragma=True)},
                   **_failures(*BODY_FAILURES, InvalidResetToken, WeakPasswordRefused)})


def _change_password(cfg: GatewayConfig) -> dict[str, Any]:
    return _operation(
        "changePassword", "Change the caller's password",
        "Needs the access token and the current password. Every session of the account ends and a new "
        "token pair is answered, like login. Only for tokens this gateway issued (foreign_account). Rate "
        "limited like login, per client address and per account.",
        body=_body("ChangePasswordRequest"),
        security=_access_security(cfg),
        responses={"200": _tokens(cfg),
                   **_failures(*_token_failures(cfg), *_csrf(cfg), ForeignAccount, *BODY_FAILURES, InvalidCredentials,
                               WeakPasswordRefused, RateLimited)})


def _verify(cfg: GatewayConfig, method: str) -> dict[str, Any]:
    # X-Original-Method/-URI are the same two inputs under nginx's names, so they are said in words: a
    # parameter list would make each header a free choice, and copies that disagree are refused.
    return _operation(
        f"verify{method.capitalize()}", "Forward-auth: may this request pass?",
        "For nginx auth_request, Traefik ForwardAuth and Envoy ext_authz. The request to judge is described "
        "by X-Forwarded-Method (else this request's method) and X-Forwarded-Uri (else /). nginx setups may "
        "send them as X-Original-Method and X-Original-URI instead, read the same way; copies of one that "
        "disagree (both names, or one sent twice) get 400 conflicting_headers whatever the token. Every "
        "method but TRACE and CONNECT (405 method_refused) is answered alike. 200 carries the identity "
        "headers the upstream would receive (none for a public route).",
        parameters=[_header_param("X-Forwarded-Method", "The method of the request to judge.", {"type": "string"}),
                    _header_param("X-Forwarded-Uri", "The path and query of the request to judge. The path is "
                                  "normalised like a proxied one (bad_path: no leading /, an encoded / or "
                                  "\\, a ; parameter, a control character, a malformed or double-encoded escape, "
                                  "bytes that are not UTF-8, .. above the root); the pattern is the part of "
                                  "that a regular expression can say.", {"type": "string", "pattern": _uri_pattern()})],
        security=[*_access_security(cfg), {}],
        responses={"200": {"description": "Allowed.",
                           "headers": {**_no_store_headers(pragma=True), **_identity_headers(cfg),
                                       **_renewed_nonce(cfg)}},
                   **_failures(*_token_failures(cfg), ConflictingHeaders, BadPath, Forbidden, *_csrf(cfg), NoRoute)})


def _uri_pattern() -> str:
    """paths.normalise's paths, as far as a regular expression can tell them (how far `..` climbs is
    counting): printable ASCII but \\ ; and %, escapes of printable ASCII but . / % ; and \\, no `..`
    segment; then anything after ? or #. An empty value is /."""
    raw = _char_class(sorted(set(range(0x20, 0x7F)) - set(map(ord, "\\;%?#./"))))
    escape = "%(?:2[0-46-9A-Da-d]|3[0-9AC-Fac-f]|[46][0-9A-Fa-f]|5[0-9ABD-Fabd-f]|7[0-9A-Ea-e])"
    plain = f"(?:[{raw}]|{escape})"
    segment = rf"(?:\.*{plain}(?:{plain}|\.)*|\.(?:\.\.+)?)"   # a plain character, or ., ..., ....
    return rf"^(?:(?:/{segment}?)+(?:[?#].*)?)?$"


def _jwks() -> dict[str, Any]:
    return _operation(
        "jwks", "The gateway's public keys (RFC 7517)",
        "HMAC secrets never appear here.",
        responses={"200": {"description": "The JWK Set.", "headers": _public_cache_headers(),
                           "content": {"application/jwk-set+json": {"schema": _ref("JwkSet")}}}})


def _openapi() -> dict[str, Any]:
    return _operation(
        "openapi", "This document", "",
        responses={"200": {"description": "The OpenAPI 3.1 document.", "headers": _public_cache_headers(),
                           "content": {JSON: {"schema": {"type": "object", "required": ["openapi", "paths"]}}}}})


def _operation(operation_id: str, summary: str, description: str, *, responses: dict[str, Any],
               body: dict[str, Any] | None = None, parameters: list[dict[str, Any]] | None = None,
               security: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    op["security"] = security or []
    op["responses"] = dict(sorted(responses.items()))
    return op


# --- pieces of operations ------------------------------------------------------------------------

def _body(schema: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {JSON: {"schema": _ref(schema)}},
            "description": f"A JSON object of at most {MAX_BODY_BYTES} bytes."}


def _header_param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def _dpop_param() -> dict[str, Any]:
    return _header_param("DPoP", "A DPoP proof (RFC 9449) for this request, without ath: the tokens answered are "
                                 "bound to its key (token_type DPoP, cnf.jkt); a bad or replayed proof is a 400 "
                                 "invalid_dpop_proof.",
                         {"type": "string", "pattern": r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"})


def _access_security(cfg: GatewayConfig) -> list[dict[str, list[str]]]:
    # A DPoP-bound token comes with its proof. Browser mode: the access cookie works too, with the CSRF
    # double-submit header on unsafe methods.
    return [{"bearerAuth": []}, {"dpopAuth": [], "dpopProof": []},
            *([{"accessCookie": [], "csrfHeader": []}] if cfg.auth.access_cookie else [])]


def _token_failures(cfg: GatewayConfig) -> tuple[Failure, ...]:
    """What an endpoint that takes an access token may refuse: the token, or its DPoP proof."""
    return (*TOKEN_FAILURES, *((AtResource.of(UseDpopNonce),) if cfg.tokens.dpop.nonce else ()))


def _proof_failures(cfg: GatewayConfig) -> tuple[Failure, ...]:
    """What login and refresh may refuse of a DPoP proof (400, RFC 9449 5 and 8)."""
    return (InvalidDpopProof, *((UseDpopNonce,) if cfg.tokens.dpop.nonce else ()))


def _csrf(cfg: GatewayConfig) -> tuple[Failure, ...]:
    return (CsrfFailed,) if cfg.auth.access_cookie else ()


def _tokens(cfg: GatewayConfig) -> dict[str, Any]:
    return {"description": "A token answer (RFC 6749 5.1); the refresh token is also set as an HttpOnly cookie"
                           + (", and in browser mode the access and CSRF cookies." if cfg.auth.access_cookie else "."),
            "headers": {**_no_store_headers(pragma=True), "Set-Cookie": _ref("SetSessionCookies", "headers"),
                        **_renewed_nonce(cfg)},
            "content": {JSON: {"schema": _ref("TokenResponse")}}}


def _renewed_nonce(cfg: GatewayConfig) -> dict[str, Any]:
    """A success answer's DPoP-Nonce, when nonces are on (the proof carried the previous slot's)."""
    return {"DPoP-Nonce": _ref("DPoPNonce", "headers")} if cfg.tokens.dpop.nonce else {}


def _ended() -> dict[str, Any]:
    return {"description": "The session has ended; the session cookies are cleared (Max-Age=0).",
            "headers": {**_no_store_headers(pragma=True), "Set-Cookie": _ref("ClearSessionCookies", "headers")}}


def _no_store_headers(*, pragma: bool = False) -> dict[str, Any]:
    headers = {"Cache-Control": _ref("NoStore", "headers")}
    if pragma:   # success answers also say Pragma: no-cache (RFC 6749 5.1); error answers do not
        headers["Pragma"] = _ref("Pragma", "headers")
    return headers


def _public_cache_headers() -> dict[str, Any]:
    return {"Cache-Control": _ref("PublicCache", "headers")}


def _identity_headers(cfg: GatewayConfig) -> dict[str, Any]:
    ident = cfg.identity
    named = {header: f"The {claim} claim of the caller." for claim, header in ident.headers.items()}
    if ident.claims_header:
        named[ident.claims_header] = "base64url(JSON of every verified claim)."
    if ident.assertion_header:
        named[ident.assertion_header] = "A short-lived JWT the gateway signed for the route's upstream."
    return {name: {"description": text, "schema": {"type": "string"}} for name, text in named.items()}


def _failures(*failures: Failure) -> dict[str, Any]:
    """Error answers by status, each pinning the ``error`` and ``code`` values its failures can give;
    401 and 403 carry the Bearer challenge, 429 Retry-After."""
    by_status: dict[int, list[Failure]] = {}
    for failure in failures:
        by_status.setdefault(failure.status, []).append(failure)
    return {str(status): _failure_response(status, group) for status, group in by_status.items()}


def _failure_response(status: int, group: Iterable[Failure]) -> dict[str, Any]:
    group = list(dict.fromkeys(group))
    lines = [": ".join(part for part in (f.code, f.description) if part) for f in group]
    pinned = {"error": {"enum": sorted({f.error for f in group})}, "code": {"enum": sorted({f.code for f in group})}}
    schema = {"allOf": [_ref("Error"), {"properties": pinned}]}
    headers = _no_store_headers()
    if status in (401, 403):
        headers["WWW-Authenticate"] = _ref("WWWAuthenticate", "headers")
    if any(f.code == UseDpopNonce.code for f in group):
        headers["DPoP-Nonce"] = _ref("DPoPNonce", "headers")
    if status == 429:
        headers["Retry-After"] = _ref("RetryAfter", "headers")
    return {"description": "; ".join(lines), "headers": headers, "content": {JSON: {"schema": schema}}}


def _ref(name: str, kind: str = "schemas") -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# --- components ----------------------------------------------------------------------------------

def _string(max_chars: int, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "description": description, **extra}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    # A request body: the handlers ignore fields they do not know, and additionalProperties says so.
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": True}


def _schemas(cfg: GatewayConfig) -> dict[str, Any]:
    refresh = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_REFRESH_TOKEN_CHARS,
               "description": "A refresh token; absent or null: the refresh cookie is used."}
    return {
        "Error": {"type": "object", "required": ["error", "error_description", "code"],
                  "additionalProperties": False,
                  "properties": {"error": {"type": "string", "description": "OAuth 2.0 / RFC 6750 error."},
                                 "error_description": {"type": "string", "description": "Why; never the token."},
                                 "code": {"type": "string", "description": "The gateway's finer reason."}}},
        "TokenResponse": _token_response(cfg),
        "LoginRequest": _object({"username": _string(MAX_USERNAME_CHARS, "Case-sensitive."),
                                 "password": _string(MAX_PASSWORD_CHARS, "The password.")}, ["username", "password"]),
        "RefreshRequest": _object({"refresh_token": refresh}, []),
        **_session_schemas(),
        **_account_schemas(cfg),
        "JwkSet": {"type": "object", "required": ["keys"], "additionalProperties": False,
                   "properties": {"keys": {"type": "array", "items": _ref("Jwk")}}},
        "Jwk": {"type": "object", "required": ["kty", "kid", "alg", "use"],
                "properties": {"kty": {"enum": ["RSA", "EC", "OKP"]}, "kid": {"type": "string"},
                               "alg": {"type": "string"}, "use": {"const": "sig"},
                               **{k: {"type": "string"} for k in ("n", "e", "crv", "x", "y")}},
                # Public keys only: never a private or symmetric member (RFC 7518 6.2.2, 6.3.2, 6.4.1).
                "not": {"anyOf": [{"required": [k]} for k in ("d", "p", "q", "dp", "dq", "qi", "k")]}},
    }


def _session_schemas() -> dict[str, Any]:
    seconds = {"type": "integer", "minimum": 0, "description": "Epoch seconds."}
    session = {"type": "object", "additionalProperties": False,
               "required": ["id", "created", "last_used", "user_agent", "client", "current", "method"],
               "properties": {"id": {"type": "string", "description": "The session's id: the sid of its tokens."},
                              "created": seconds, "last_used": {**seconds, "description": "Epoch seconds of "
                                                                "its latest refresh (else its login)."},
                              "user_agent": {"type": "string", "maxLength": MAX_USER_AGENT_CHARS,
                                             "description": "The login's User-Agent, without control characters."},
                              "client": {"type": "string", "description": "The login's client address."},
                              "current": {"type": "boolean", "description": "The session of this access token."},
                              "method": {"type": "string", "description": "password, or the provider's name."}}}
    return {"Session": session,
            "SessionList": {"type": "object", "required": ["sessions"], "additionalProperties": False,
                            "properties": {"sessions": {"type": "array", "items": _ref("Session")}}}}


def _account_schemas(cfg: GatewayConfig) -> dict[str, Any]:
    policy = cfg.auth.password
    new_password = {"type": "string", "minLength": policy.min_length, "maxLength": policy.max_length,
                    "description": "A new password: auth.password's lengths (characters), not a common password, "
                                   "not the username or e-mail address; else weak_password."}
    return {
        "SignupRequest": _object({"username": {"type": "string", "pattern": f"^{USERNAME.pattern}$",
                                               "description": "Case-sensitive: letters, digits and ._-@"},
                                  "password": new_password,
                                  "email": _email("Where reset links go:", nullable=True)},
                                 ["username", "password"]),
        "Account": {"type": "object", "required": ["username", "roles"], "additionalProperties": False,
                    "properties": {"username": {"type": "string"},
                                   "roles": {"type": "array", "items": {"type": "string"}}}},
        "ForgotPasswordRequest": _object({"email": _email("The account's e-mail address:")}, ["email"]),
        "Accepted": {"type": "object", "required": ["status"], "additionalProperties": False,
                     "properties": {"status": {"const": "accepted"}}},
        "ResetPasswordRequest": _object({"token": _string(MAX_RESET_TOKEN_CHARS, "The token of the reset link."),
                                         "new_password": new_password}, ["token", "new_password"]),
        "ChangePasswordRequest": _object({"current_password": _string(MAX_PASSWORD_CHARS, "The password now."),
                                          "new_password": new_password}, ["current_password", "new_password"]),
    }


def _email(description: str, *, nullable: bool = False) -> dict[str, Any]:
    # accounts.check_email: the last @ splits the address and neither side is empty (an inner @, and none
    # at the end), no character of a refused Unicode category.
    refused = _email_refused_class()
    return {"type": ["string", "null"] if nullable else "string", "maxLength": MAX_EMAIL_CHARS,
            "pattern": f"^[^{refused}]+@[^{refused}]+$",
            "not": {"type": "string", "pattern": "@$"},
            "description": f"{description} name@domain, without controls, format characters or separators "
                           f"of any kind (Unicode {unicodedata.unidata_version}: "
                           f"categories {', '.join(sorted(REFUSED_IN_EMAIL))}); the last @ splits it."}


@functools.cache
def _email_refused_class() -> str:
    """The inside of a [...] class of the characters accounts.check_email refuses. Surrogates are left
    out: no valid Unicode text holds one, and a pattern cannot name them in every engine."""
    return _char_class(c for c in range(0x110000) if unicodedata.category(chr(c)) in REFUSED_IN_EMAIL
                       and not 0xD800 <= c <= 0xDFFF)


def _char_class(code_points: Iterable[int]) -> str:
    """The inside of a [...] class of these code points (ascending), as runs, spelled alike for ECMA-262
    (unicode mode), Python and Rust: printable characters and those above U+FFFF (which no \\u escape
    reaches in all three) as themselves, the others as \\u escapes."""
    runs: list[list[int]] = []
    for c in code_points:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(_class_char(a) if a == b else f"{_class_char(a)}{'' if b == a + 1 else '-'}{_class_char(b)}"
                   for a, b in runs)


def _class_char(c: int) -> str:
    char = chr(c)
    if char in "\\]^-[":
        return "\\" + char
    return char if (char.isprintable() and char != " ") or c > 0xFFFF else f"\\u{c:04X}"


def _token_response(cfg: GatewayConfig) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "access_token": {"type": "string", "description": "A JWT (compact JWS)."},
        "token_type": {"enum": ["Bearer", "DPoP"], "description": "DPoP when a DPoP proof came (RFC 9449 5)."},
        "expires_in": {"type": "integer", "minimum": 0, "description": "Seconds until the access token expires."},
    }
    required = ["access_token", "token_type", "expires_in"]
    if cfg.auth.refresh_token_in_body:
        properties["refresh_token"] = {"type": "string", "minLength": 43, "description": "Opaque, single-use."}
        required.append("refresh_token")
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _headers(cfg: GatewayConfig) -> dict[str, Any]:
    name = cfg.auth.refresh_cookie.name
    starts = {"pattern": f"^{name}="} if _COOKIE_NAME.fullmatch(name) else {}
    return {
        "NoStore": {"required": True, "schema": {"const": "no-store"}},
        "PublicCache": {"required": True, "schema": {"const": PUBLIC_CACHE}},
        "Pragma": {"required": True, "schema": {"const": "no-cache"}},
        "RetryAfter": {"required": True, "description": "Seconds to wait.",
                       "schema": {"type": "integer", "minimum": 1}},
        "WWWAuthenticate": {"required": True, "description": "RFC 6750 Bearer challenge; where a DPoP-bound "
                                                             "token is taken, also a DPoP challenge (RFC 9449 7.1: "
                                                             "algs), first when the proof is what failed.",
                            "schema": {"type": "string", "pattern": '^(Bearer realm="[^"]*"|DPoP )'}},
        "DPoPNonce": {"required": False, "description": "The nonce the next DPoP proof must carry (RFC 9449 8 "
                                                        "and 9): sent with use_dpop_nonce, and on a success "
                                                        "answer to a proof that carried the previous one.",
                      "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"}},
        "SetSessionCookies": {"required": True, "schema": {"type": "string", **starts},
                              "description": f"{name} (HttpOnly) first; in browser mode also {ACCESS_COOKIE} "
                                             f"(HttpOnly) and {CSRF_COOKIE} (readable by scripts)."},
        "ClearSessionCookies": {"required": True, "schema": {"type": "string", **starts},
                                "description": f"{name} with Max-Age=0 (and the browser-mode cookies)."},
    }


def _security_schemes(cfg: GatewayConfig) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        "dpopAuth": {"type": "http", "scheme": "dpop",
                     "description": "A DPoP-bound access token (RFC 9449: Authorization: DPoP), never as Bearer."},
        "dpopProof": {"type": "apiKey", "in": "header", "name": "DPoP",
                      "description": "The DPoP proof of this request: htm, htu, iat, a new jti and ath, signed by "
                                     "the key the token is bound to (cnf.jkt)."},
        "refreshCookie": {"type": "apiKey", "in": "cookie", "name": cfg.auth.refresh_cookie.name},
    }
    if cfg.auth.access_cookie:
        schemes["accessCookie"] = {"type": "apiKey", "in": "cookie", "name": ACCESS_COOKIE}
        schemes["csrfHeader"] = {"type": "apiKey", "in": "header", "name": CSRF_HEADER,
                                 "description": f"Repeats the {CSRF_COOKIE} cookie (double submit)."}
    return schemes
