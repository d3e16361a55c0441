"""The gateway's own endpoints under ``auth.prefix``: login, refresh, logout, logout-all, sessions, verify.

JSON in, JSON out; failures are GatewayErrors (answers.py answers them). Token answers are never cached.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy

from ..config.load import GatewayConfig
from ..errors import (BadRequest, BodyTooLarge, ConflictingHeaders, InvalidCredentials, JsonRequired,
                      MissingRefreshToken, RefreshTokenReused, UnknownSession)
from ..forward.client_cert import client_certificate
from ..forward.dpop_request import DPOP_ALGS, NONCE_HEADER, RENEWED_NONCE, bound_key
from ..forward.headers import fold
from ..logs import LOGIN, LOGIN_FAILED, LOGOUT, LOGOUT_ALL, REFRESH, REFRESH_REUSE, SESSION_END
from ..metrics import counted
from ..paths import normalise
from ..pipeline import GATEWAY, Gateway
from ..steps.authorize import authorize
from ..steps.binding import CNF, check_certificate_binding
from ..steps.cookies import extract_presented_token
from ..steps.extract import BEARER
from ..steps.identity import Identity
from ..store.base import SessionInfo
from .accounts.directory import MAX_PASSWORD_CHARS
from .audit import audit_request
from .cookies import clear_session_cookies, csrf_token_for, read_refresh_cookie, set_session_cookies
from .endpoints import add_endpoint
from .oauth.routes import add_browser_routes, end_session_url, form_login, found, sign_in_page
from .ratelimit import RateLimiter, client_address
from .sessions import MAX_REFRESH_TOKEN_CHARS, TokenPair, origin_of, sessions_of

log = logging.getLogger("tokengate.auth")

MAX_BODY_BYTES = BodyTooLarge.limit
MAX_USERNAME_CHARS = 255
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}   # RFC 6749 5.1
# Forward-auth: what the proxy asks about (Traefik/Envoy set X-Forwarded-*, nginx setups X-Original-*).
# Folded names (case folded, "_" read as "-"): every spelling of either family is a copy of one header.
FORWARDED_METHOD = frozenset({"x-forwarded-method", "x-original-method"})
FORWARDED_URI = frozenset({"x-forwarded-uri", "x-original-uri"})
# What an HTML form on another site can send without a CORS preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
FORM_TYPE = "application/x-www-form-urlencoded"   # what the sign-in page posts (with its own CSRF token)
# What a session id can be (Sessions mints token_urlsafe ids): anything else is unknown without a store lookup.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def add_auth_routes(app: web.Application, cfg: GatewayConfig) -> None:
    """Register the endpoints under ``cfg.auth.prefix``; call it before the catch-all proxy route.
    Any other method on these paths gets 405, never the proxy."""
    prefix = cfg.auth.prefix
    add_endpoint(app, f"{prefix}/login", {**({"GET": sign_in_page} if cfg.auth.sign_in_page else {}), "POST": login})
    for path, handler in ((f"{prefix}/refresh", refresh), (f"{prefix}/logout", logout),
                          (f"{prefix}/logout-all", logout_all)):
        add_endpoint(app, path, {"POST": handler})
    add_endpoint(app, f"{prefix}/sessions", {"GET": list_sessions})
    add_endpoint(app, f"{prefix}/sessions/{{id}}", {"DELETE": end_session})
    add_browser_routes(app, cfg)
    # Every method: nginx's auth_request subrequest keeps the original request's method.
    add_endpoint(app, f"{prefix}/verify", {"*": verify})


async def login(request: web.Request) -> web.StreamResponse:
    """The sign-in page's form post (HTML, with its CSRF token) or the JSON login."""
    if request.app[GATEWAY].config.auth.sign_in_page and request.content_type == FORM_TYPE:
        return await form_login(request)
    return await json_login(request)


@counted("login")
async def json_login(request: web.Request) -> web.StreamResponse:
    """POST {"username", "password"} (+ a DPoP proof: bound tokens) -> 200 token answer + cookies; 400,
    401 invalid_grant, 429, 503."""
    gw = request.app[GATEWAY]
    cfg = gw.config
    limiter = RateLimiter(gw.store)
    await limiter.hit("login", "ip:" + client_address(request, cfg.listen.trusted_proxies), cfg.auth.rate_limits.login)
    refuse_form_post(request)
    jkt = await gw.dpop.key_to_bind(request)                     # a DPoP proof: bound tokens (400 if bad)
    body = await read_json_object(request)
    username = string_field(body, "username", MAX_USERNAME_CHARS)
    password = string_field(body, "password", MAX_PASSWORD_CHARS)
    await limiter.hit("login", "user:" + username, cfg.auth.rate_limits.login)
    user = await gw.users.authenticate(username, password)
    if user is None:
        audit_request(request, gw, LOGIN_FAILED, subject=username, session=None, outcome=InvalidCredentials.code)
        raise InvalidCredentials()
    pair = await sessions_of(gw).issue(user, origin=origin_of(request, cfg), jkt=jkt)
    audit_request(request, gw, LOGIN, subject=user.sub, session=pair.family)
    log.info("login", extra={"sub": user.sub})
    return token_response(request, cfg, pair)


@counted("refresh")
async def refresh(request: web.Request) -> web.StreamResponse:
    """POST with the refresh cookie or {"refresh_token"} (the body wins when both come) -> 200 as login."""
    gw = request.app[GATEWAY]
    cfg = gw.config
    limiter = RateLimiter(gw.store)
    await limiter.hit("refresh", "ip:" + client_address(request, cfg.listen.trusted_proxies),
                      cfg.auth.rate_limits.refresh)
    token = await presented_refresh_token(request, cfg)
    if token is None:
        raise MissingRefreshToken()
    jkt = await gw.dpop.key_to_bind(request)   # a bound refresh token needs a proof by its key (400)
    try:
        pair = await sessions_of(gw).rotate(token, jkt)
    except RefreshTokenReused as exc:   # the family is dead now: a thief or its victim presented it
        audit_request(request, gw, REFRESH_REUSE, subject=exc.subject, session=exc.session, outcome=exc.code)
        raise
    audit_request(request, gw, REFRESH, subject=pair.subject, session=pair.family)
    return token_response(request, cfg, pair)


@counted("logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """POST with the access token (+ refresh cookie/body) -> 204: its jti denied, its family dead. With
    ``Accept: text/html`` and a session from a provider that has an end_session_endpoint: 302 there
    (OpenID Connect RP-Initiated Logout)."""
    gw = request.app[GATEWAY]
    identity = await caller(request, gw)
    kept = await sessions_of(gw).logout(identity, await presented_refresh_token(request, gw.config))
    audit_request(request, gw, LOGOUT, subject=identity.sub, session=identity.sid)
    if "text/html" in request.headers.get("Accept", ""):   # a browser: end the provider's session too
        location = await end_session_url(request, kept)
        if location is not None:
            resp = found(location)
            clear_session_cookies(resp, gw.config.auth)
            return resp
    return _ended(gw.config)


async def logout_all(request: web.Request) -> web.StreamResponse:
    """POST with the access token -> 204: every token of its subject issued before now is dead."""
    gw = request.app[GATEWAY]
    identity = await caller(request, gw)
    await sessions_of(gw).logout_all(identity)
    audit_request(request, gw, LOGOUT_ALL, subject=identity.sub, session=identity.sid)
    return _ended(gw.config)


async def list_sessions(request: web.Request) -> web.StreamResponse:
    """GET with the access token -> 200 {"sessions": [...]}: the caller's live sessions, oldest first."""
    gw = request.app[GATEWAY]
    identity = await caller(request, gw)
    found = await sessions_of(gw).list_of(identity)
    return web.json_response({"sessions": [session_body(s, s.id == identity.sid) for s in found]}, headers=NO_STORE)


async def end_session(request: web.Request) -> web.StreamResponse:
    """DELETE {prefix}/sessions/{id} with the access token -> 204: that session of the caller ends
    everywhere. 404 session_not_found for an unknown id, an ended session or another user's alike."""
    gw = request.app[GATEWAY]
    identity = await caller(request, gw)
    sid = request.match_info["id"]
    if not SESSION_ID.fullmatch(sid) or not await sessions_of(gw).end(identity, sid):
        raise UnknownSession()
    log.info("session ended", extra={"sub": identity.sub})
    audit_request(request, gw, SESSION_END, subject=identity.sub, session=sid)
    if sid == identity.sid:   # the caller ended its own session: a browser's cookies go with it
        return _ended(gw.config)
    return web.Response(status=204, headers=NO_STORE)


def session_body(session: SessionInfo, current: bool) -> dict[str, Any]:
    """One session as GET {prefix}/sessions lists it (times in whole epoch seconds)."""
    return {"id": session.id, "created": int(session.created), "last_used": int(session.last_used),
            "user_agent": session.user_agent, "client": session.client, "current": current,
            "method": session.method}


async def verify(request: web.Request) -> web.StreamResponse:
    """Forward-auth: may the request described by X-Forwarded-Method/-Uri (or X-Original-*) pass?
    200 + identity headers; 400 (conflicting headers, bad path), 401, 403, 404 (no route), 503.
    A DPoP-bound token needs a proof for that request, not for this one (DpopGuard.check_forwarded)."""
    # First, before any token check: nginx passes the client's headers on with its own X-Original-*,
    # so a copy that disagrees with the proxy's is a client asking to have another request judged.
    method = (_one_of(request.headers, FORWARDED_METHOD) or request.method).upper()   # ConflictingHeaders -> 400
    uri = _one_of(request.headers, FORWARDED_URI) or "/"                              # ConflictingHeaders -> 400
    gw = request.app[GATEWAY]
    path = normalise(uri.partition("?")[0].partition("#")[0])     # BadPath -> 400
    rule = gw.rules.match(method, path)                             # NoRoute -> 404
    if rule.public:
        return web.Response(status=200, headers=NO_STORE)
    request[DPOP_ALGS] = gw.dpop.algs                               # its 401s carry a DPoP challenge too
    scheme, token = extract_presented_token(request, gw.config, method)   # MissingToken, BadRequest, CsrfFailed
    identity = (await gw.authenticator.authenticate(token)).identity      # InvalidToken, RevokedToken -> 401; 503
    if CNF in identity.claims:   # a certificate-bound token: the certificate nginx's client presented
        check_certificate_binding(identity.claims, client_certificate(request, gw.config.listen))
    if CNF in identity.claims or scheme != BEARER or rule.dpop_required or gw.dpop.required:
        # RFC 9449, as on a proxied request, but the proof names the request the proxy asks about (401)
        await gw.dpop.check_forwarded(request, scheme, token, identity.claims, rule.dpop_required, method, uri)
    authorize(rule, identity)                                       # Forbidden -> 403
    return web.Response(status=200, headers=with_renewed_nonce(request, {**NO_STORE, **gw.passport.headers_for(
        identity, rule.upstream)}))


async def caller(request: web.Request, gw: Gateway, method: str | None = None) -> Identity:
    """The verified, unrevoked identity of the request's access token (bearer, DPoP with its proof, or the
    cookie in browser mode) at the gateway's own endpoints, whose proofs name the endpoint's own URL. A
    DPoP-bound token is never taken as a bare bearer token here either: a copy of it could otherwise end
    its owner's sessions. (Forward-auth checks its proofs against the proxied request: see ``verify``.)"""
    scheme, token = extract_presented_token(request, gw.config, method)
    identity = (await gw.authenticator.authenticate(token)).identity
    if scheme != BEARER or bound_key(identity.claims) is not None:
        await gw.dpop.check_resource(request, scheme, token, identity.claims, required=False)
    return identity


def token_response(request: web.Request, cfg: GatewayConfig, pair: TokenPair) -> web.Response:
    now = time.time()
    body = pair.body(now)
    if not cfg.auth.refresh_token_in_body:   # browsers: script on the page never sees it
        del body["refresh_token"]
    resp = web.json_response(body, headers=with_renewed_nonce(request, NO_STORE))
    set_session_cookies(resp, cfg.auth, pair, now, csrf_token_for(request) if cfg.auth.access_cookie else "")
    return resp


def with_renewed_nonce(request: web.Request, headers: dict[str, str]) -> dict[str, str]:
    """``headers``, and the current DPoP nonce when the request's proof carried the previous one."""
    nonce = request.get(RENEWED_NONCE)
    return headers if nonce is None else {**headers, NONCE_HEADER: nonce}


def _ended(cfg: GatewayConfig) -> web.Response:
    resp = web.Response(status=204, headers=NO_STORE)
    clear_session_cookies(resp, cfg.auth)
    return resp


async def presented_refresh_token(request: web.Request, cfg: GatewayConfig) -> str | None:
    """``refresh_token`` from a JSON body, else the refresh cookie. An explicit body wins over the
    cookie a browser sends on its own. Raises BadRequest for a malformed body or field."""
    body = await read_json_object(request, optional=True)
    if body.get("refresh_token") is not None:
        return string_field(body, "refresh_token", MAX_REFRESH_TOKEN_CHARS)
    return read_refresh_cookie(request, cfg.auth)


def refuse_form_post(request: web.Request) -> None:
    """JsonRequired for a body a cross-site form could have posted: no login CSRF (an attacker's
    page logging the victim's browser into the attacker's account)."""
    if request.headers.get("Content-Type") and request.content_type in FORM_TYPES:
        raise JsonRequired()


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """The body as a JSON object. Raises BadRequest (not JSON, not an object, missing when not
    ``optional``) or BodyTooLarge. Read once per request: later calls see an empty body."""
    raw = await _read_body(request)
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("the request body must be a JSON object")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise BadRequest("the request body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BodyTooLarge()
    body = bytearray()
    async for chunk in request.content.iter_chunked(8192):
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge()
    return bytes(body)


def string_field(body: dict[str, Any], name: str, max_chars: int) -> str:
    """A required non-empty string field of at most ``max_chars``; else BadRequest naming the field."""
    value = body.get(name)
    if value is None or value == "":
        raise BadRequest(f"{name} is missing")
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    if len(value) > max_chars:
        raise BadRequest(f"{name} is longer than {max_chars} characters")
    try:
        value.encode("utf-8")   # JSON can spell a lone surrogate ("\ud800"); no password hash can take it
    except UnicodeEncodeError:
        raise BadRequest(f"{name} is not valid Unicode text") from None
    return value


def _one_of(headers: CIMultiDictProxy[str], names: frozenset[str]) -> str | None:
    """The one value that every header whose folded name is in ``names`` carries, or None when none
    came. Raises ConflictingHeaders when two copies differ (compared as sent): which of them a proxy,
    the gateway or a CGI-style reader would pick is unknowable, so none is believed."""
    values = {value for name, value in headers.items() if fold(name) in names}
    if len(values) > 1:
        raise ConflictingHeaders()
    return values.pop() if values else None

