"""The browser endpoints: ``GET {prefix}/login`` (the sign-in page), its form post, and delegated login's
``GET {prefix}/oauth/{provider}/start`` and ``/callback``. HTML in and out: every failure is a page that
names the reason in words (BrowserLoginFailed), counted by reason and logged; nothing is issued then.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from aiohttp import web

from ...config.load import AuthConfig, GatewayConfig, GithubProviderConfig
from ...errors import BrowserLoginFailed, DependencyDown, GatewayError, RateLimited
from ...forward.dpop_request import request_base
from ...forward.request_id import request_id_of
from ...logs import LOGIN, LOGIN_FAILED, OAUTH_LOGIN
from ...metrics import METRICS
from ...pipeline import GATEWAY, Gateway
from ...store import store_reachable
from ..accounts.directory import AuthenticatedUser
from ..audit import audit_request
from ..cookies import csrf_token_for, set_session_cookies
from ..endpoints import add_endpoint
from ..ratelimit import RateLimiter, client_address
from ..sessions import origin_of, sessions_of
from .accounts import account_for
from .clients import GithubClient, OidcClient, ProviderClient, with_query
from .forms import (CREATED_FLAG, CREATED_NOTICE, form_refusal, form_token, has_form_token, read_form, set_form_cookie,
                    text_field)
from .pages import Pages, ProviderButton, SignInView
from .pending import PENDING_TTL_S, PendingLogin, Sealer, cookie_name
from .redirects import safe_redirect

log = logging.getLogger("tokengate.oauth")

_STATE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class Delegation:
    """What the browser endpoints need, built from the config's ``auth`` (again after a reload changed it)."""

    auth: AuthConfig
    clients: dict[str, ProviderClient]
    sealer: Sealer | None
    pages: Pages

    @classmethod
    def build(cls, cfg: GatewayConfig, session: aiohttp.ClientSession) -> Delegation:
        clients: dict[str, ProviderClient] = {}
        for name, provider in cfg.auth.providers.items():
            clients[name] = GithubClient(name, provider, session) if isinstance(provider, GithubProviderConfig) \
                else OidcClient(name, provider, session, leeway_s=cfg.tokens.leeway)
        try:
            sealer: Sealer | None = Sealer.from_config(cfg.tokens)
        except ValueError:
            sealer = None   # no key can sign: no login of any kind can finish
        return cls(cfg.auth, clients, sealer, Pages(form_targets=cfg.auth.redirect_allowlist))

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()))


@dataclass
class _Browser:
    session: aiohttp.ClientSession
    current: Delegation | None = None


BROWSER = web.AppKey("browser", _Browser)


def add_browser_routes(app: web.Application, cfg: GatewayConfig) -> None:
    """The OAuth endpoints and what every browser endpoint needs. auth/routes registers ``{prefix}/login``
    (its GET is ``sign_in_page``, its form post ``form_login``) and calls this."""
    prefix = cfg.auth.prefix
    app.cleanup_ctx.append(_browser_context)
    add_endpoint(app, f"{prefix}/oauth/{{provider}}/start", {"GET": start})
    add_endpoint(app, f"{prefix}/oauth/{{provider}}/callback", {"GET": callback})


async def _browser_context(app: web.Application) -> AsyncIterator[None]:
    app[BROWSER] = browser = _Browser(aiohttp.ClientSession(auto_decompress=True))
    yield
    if browser.current is not None:
        await browser.current.close()
    await browser.session.close()


def delegation(request: web.Request) -> Delegation:
    """The Delegation for the config in force (a reload that changed ``auth`` builds a new one)."""
    browser, cfg = request.app[BROWSER], request.app[GATEWAY].config
    current = browser.current
    if current is None or current.auth is not cfg.auth:
        # The clients it replaces hold nothing to release: they use the app's ClientSession.
        current = browser.current = Delegation.build(cfg, browser.session)
    return current


# -- the sign-in page ------------------------------------------------------------------------------------

async def sign_in_page(request: web.Request) -> web.StreamResponse:
    d = delegation(request)
    rd = safe_redirect(request.query.get("rd"), d.auth.redirect_allowlist) or "/"
    return render_sign_in(request, d, rd)


def render_sign_in(request: web.Request, d: Delegation, rd: str, *, username: str = "", error: str | None = None,
                   status: int = 200) -> web.Response:
    prefix = d.auth.prefix
    token = form_token(request)
    buttons = tuple(ProviderButton(name, _display_name(name, d), f"{prefix}/oauth/{name}/start?rd={quote(rd, safe='')}")
                    for name in d.clients)
    # The notice is a fixed sentence: the query only says whether to show it.
    notice = CREATED_NOTICE if request.query.get(CREATED_FLAG) == "1" else None
    view = SignInView(action=f"{prefix}/login", buttons=buttons, password_form=True, csrf_token=token, rd=rd,
                      username=username, error=error, notice=notice, **_account_links(request, d, rd))
    resp = d.pages.sign_in(view, status=status)
    set_form_cookie(resp, d.auth, f"{prefix}/login", token)
    return resp


def _account_links(request: web.Request, d: Delegation, rd: str) -> dict[str, str | None]:
    """The signup and forgot-password pages' links (rd carried), when this gateway serves those pages:
    accounts it can edit, and for signup ``auth.signup``."""
    if not request.app[GATEWAY].users.editable:
        return {"signup_url": None, "forgot_url": None}
    back = quote(rd, safe="")
    return {"signup_url": f"{d.auth.prefix}/signup?rd={back}" if d.auth.signup else None,
            "forgot_url": f"{d.auth.prefix}/forgot-password?rd={back}"}


def _display_name(name: str, d: Delegation) -> str:
    provider = d.auth.providers[name]
    if provider.display_name:
        return provider.display_name
    return "GitHub" if isinstance(provider, GithubProviderConfig) else name.replace("-", " ").replace("_", " ").title()


async def form_login(request: web.Request) -> web.StreamResponse:
    """The sign-in page's form post: CSRF double submit, then the password login; 302 to ``rd`` with the
    session's cookies, or the page again with the error."""
    gw, d = request.app[GATEWAY], delegation(request)
    form = await read_form(request)   # None: too large, or not text in its charset
    if form is None:
        return _failed(request, d, BrowserLoginFailed("form_unreadable", form_refusal(form), 400),
                       action="form_login")
    rd = safe_redirect(text_field(form, "rd"), d.auth.redirect_allowlist) or "/"
    if not has_form_token(request, form):
        return _failed(request, d, BrowserLoginFailed("form_expired", "The sign-in form expired. Please sign "
                                                      "in again.", 400), action="form_login")
    username, password = text_field(form, "username")[:255], text_field(form, "password")[:1024]
    cfg = gw.config
    try:
        limiter = RateLimiter(gw.store)
        rate = cfg.auth.rate_limits.login
        await limiter.hit("login", "ip:" + client_address(request, cfg.listen.trusted_proxies), rate)
        await limiter.hit("login", "user:" + username, rate)
        user = await gw.users.authenticate(username, password) if username and password else None
    except (RateLimited, DependencyDown) as exc:
        return _failed(request, d, BrowserLoginFailed(exc.code, _WORDS.get(exc.code, exc.description), exc.status),
                       action="form_login")
    if user is None:
        _count(request, "form_login", "invalid_credentials")
        log.info("login refused", extra={"code": "invalid_credentials"})
        audit_request(request, gw, LOGIN_FAILED, subject=username, session=None, outcome="invalid_credentials")
        return render_sign_in(request, d, rd, username=username, error="Wrong username or password.", status=401)
    return await _signed_in(request, gw, user, rd, "form_login", {})


_WORDS = {"rate_limited": "Too many sign-in attempts. Please wait a minute and try again.",
          "store_unavailable": "Signing in is not possible right now. Please try again in a moment.",
          "dependency_unavailable": "Signing in is not possible right now. Please try again in a moment."}


# -- delegated login -------------------------------------------------------------------------------------

async def start(request: web.Request) -> web.StreamResponse:
    """302 to the provider with state, nonce and PKCE S256; the login sealed in its own cookie."""
    d = delegation(request)
    name = request.match_info["provider"]
    try:
        client = _client(d, name)
        rd = safe_redirect(request.query.get("rd", "/"), d.auth.redirect_allowlist)
        if rd is None:
            raise BrowserLoginFailed("rd_refused", "The address to return to after signing in is not allowed.", 400)
        if d.sealer is None:
            raise BrowserLoginFailed("no_signing_key", "This gateway cannot sign in anyone: it has no signing key.",
                                     503)
        pending = PendingLogin.begin(name, redirect_uri(request, d.auth, name), rd, time.time())
        location = await client.authorization_url(pending)
    except BrowserLoginFailed as exc:
        return _failed(request, d, exc, action="oauth_start")
    resp = found(location)
    resp.set_cookie(cookie_name(pending.state), d.sealer.seal(pending), max_age=PENDING_TTL_S,
                    path=_callback_path(d.auth, name), httponly=True, secure=d.auth.refresh_cookie.secure,
                    samesite="Lax")   # Lax: Strict would drop it on the way back from the provider
    return resp


async def callback(request: web.Request) -> web.StreamResponse:
    """The checks of DESIGN in order: state (before any call to the provider), then the provider's
    (``iss``, the code exchange, the ID token), then the account; 302 to ``rd`` with the session's cookies."""
    gw, d = request.app[GATEWAY], delegation(request)
    name = request.match_info["provider"]
    state = request.query.get("state", "")
    try:
        pending = await _take_pending(request, d, name, state)
        client = _client(d, name)
        user = await client.finish(pending, request.query)
        account = await account_for(name, d.auth.providers[name], user, gw.users, d.auth.default_roles)
    except BrowserLoginFailed as exc:
        resp = _failed(request, d, exc, action="oauth_login", provider=name)
        _forget_pending(resp, d.auth, name, state)
        return resp
    except GatewayError as exc:   # the accounts or the store are down
        resp = _failed(request, d, BrowserLoginFailed(exc.code, _WORDS.get(exc.code, exc.description), exc.status),
                       action="oauth_login", provider=name)
        _forget_pending(resp, d.auth, name, state)
        return resp
    data = {"provider": name, **({"id_token": user.id_token} if user.id_token else {})}
    rd = safe_redirect(pending.rd, d.auth.redirect_allowlist) or "/"   # again: a reload may have narrowed it
    resp = await _signed_in(request, gw, account, rd, "oauth_login", data, provider=name)
    _forget_pending(resp, d.auth, name, state)
    return resp


async def _take_pending(request: web.Request, d: Delegation, name: str, state: str) -> PendingLogin:
    """The login this callback finishes, opened once. BrowserLoginFailed (400) for every state problem."""
    if not state or len(state) > 128 or not set(state) <= _STATE:
        raise BrowserLoginFailed("state_missing", "The sign-in answer is incomplete. Please start again.", 400)
    sealed = request.cookies.get(cookie_name(state))
    if not sealed or d.sealer is None:
        raise BrowserLoginFailed("state_unknown", "This sign-in has expired or was started in another browser. "
                                 "Please start again.", 400)
    try:
        pending = d.sealer.open(state, sealed, time.time())
    except ValueError:
        raise BrowserLoginFailed("state_invalid", "This sign-in has expired or cannot be read. Please start "
                                 "again.", 400) from None
    if pending.provider != name:   # mix-up: a callback for one provider never finishes another's login
        raise BrowserLoginFailed("provider_mismatch", "The answer came from another provider than the one the "
                                 "sign-in started with.", 400)
    key = "login:" + hashlib.sha256(state.encode()).hexdigest()
    with store_reachable():
        first = await request.app[GATEWAY].store.claim_once(key, pending.expires_at)
    if not first:
        raise BrowserLoginFailed("state_used", "This sign-in was already used. Please start again.", 400)
    return pending


def _client(d: Delegation, name: str) -> ProviderClient:
    client = d.clients.get(name)
    if client is None:
        raise BrowserLoginFailed("unknown_provider", "There is no such sign-in provider here.", 404)
    return client


def _callback_path(auth: AuthConfig, name: str) -> str:
    return f"{auth.prefix}/oauth/{name}/callback"


def redirect_uri(request: web.Request, auth: AuthConfig, name: str) -> str:
    """``{auth.public_url}{prefix}/oauth/{name}/callback``, else from the request's scheme and Host
    (X-Forwarded-Proto/-Host only from trusted proxies)."""
    return public_base(request, auth) + _callback_path(auth, name)


def public_base(request: web.Request, auth: AuthConfig) -> str:
    """How the browser reached the gateway (forward/dpop_request.request_base); a page when it cannot be told."""
    base = request_base(request, auth.public_url, request.app[GATEWAY].config.listen.trusted_proxies)
    if base is None:
        raise BrowserLoginFailed("bad_host", "The gateway cannot tell its own address from this request.", 400)
    return base


def _forget_pending(resp: web.StreamResponse, auth: AuthConfig, name: str, state: str) -> None:
    if state and set(state) <= _STATE and len(state) <= 128:
        resp.del_cookie(cookie_name(state), path=_callback_path(auth, name), secure=auth.refresh_cookie.secure,
                        httponly=True, samesite="Lax")


async def end_session_url(request: web.Request, kept: dict[str, str]) -> str | None:
    """Where RP-initiated logout sends the browser for a session from a provider: its end_session_endpoint
    with id_token_hint, client_id and post_logout_redirect_uri; None for a password session, a provider
    without one, or one that cannot be reached now (the gateway's own logout has happened either way)."""
    d = delegation(request)
    client = d.clients.get(kept.get("provider", ""))
    if not isinstance(client, OidcClient):
        return None
    try:
        endpoint = (await client.metadata()).end_session_endpoint
        after = d.auth.post_logout_url or public_base(request, d.auth) + f"{d.auth.prefix}/login"
    except BrowserLoginFailed:
        return None
    if endpoint is None:
        return None
    params = {**({"id_token_hint": kept["id_token"]} if "id_token" in kept else {}),
              "client_id": client.cfg.client_id, "post_logout_redirect_uri": after}
    return with_query(endpoint, params)


# -- answers ---------------------------------------------------------------------------------------------

async def _signed_in(request: web.Request, gw: Gateway, user: AuthenticatedUser, rd: str, action: str,
                     data: dict[str, str], provider: str | None = None) -> web.StreamResponse:
    """Issue the session exactly as a password login does, then 302 to ``rd``."""
    pair = await sessions_of(gw).issue(user, data, origin_of(request, gw.config))
    now = time.time()
    resp = found(rd)
    cfg = gw.config
    set_session_cookies(resp, cfg.auth, pair, now, csrf_token_for(request) if cfg.auth.access_cookie else "")
    _count(request, action, "success")
    log.info("login", extra={"sub": user.sub, "provider": provider or "password"})
    audit_request(request, gw, OAUTH_LOGIN if provider else LOGIN, subject=user.sub, session=pair.family,
                  **({"provider": provider} if provider else {}))
    return resp


def _failed(request: web.Request, d: Delegation, exc: BrowserLoginFailed, *, action: str = "oauth_login",
            provider: str | None = None) -> web.Response:
    _count(request, action, exc.code)
    log.info("browser login failed", extra={"code": exc.code, "provider": provider, "status": exc.status})
    if action == "oauth_login":   # a delegated login that did not finish (a form's refusals are no login tried)
        audit_request(request, request.app[GATEWAY], OAUTH_LOGIN, subject=None, session=None, outcome=exc.code,
                      provider=provider)
    titles = {400: "Sign-in could not continue", 401: "Sign-in failed", 403: "Sign-in refused",
              404: "Not found", 429: "Too many attempts", 503: "Sign-in unavailable"}
    return d.pages.error(status=exc.status, title=titles.get(exc.status, "Sign-in failed"), reason=exc.description,
                         sign_in_url=f"{d.auth.prefix}/login", request_id=request_id_of(request))


def found(location: str) -> web.Response:
    """302 to ``location`` (checked by the caller), never cached."""
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store"})


def _count(request: web.Request, action: str, outcome: str) -> None:
    recorder = request.app.get(METRICS)
    if recorder is not None:
        recorder.auth_action(action, outcome)
