"""Account endpoints under ``auth.prefix``: signup, forgot-password, reset-password, change-password.

JSON in, JSON out, like auth/routes.py; with the sign-in page on, signup and forgot-password also have
pages of their own (GET, HTML) whose urlencoded form posts, with the page's CSRF token, answer HTML.
They need accounts this gateway can edit (``auth.users``: store or file); with a credentials service they
answer 404 ``accounts_not_editable``. Forgot-password answers before it looks anything up: lookup, token
and mail run in the background (no account enumeration).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from ..config.load import GatewayConfig
from ..errors import (AccountsNotEditable, ForeignAccount, GatewayError, InvalidAccountField, InvalidCredentials,
                      InvalidResetToken, NoRoute, UsernameTaken, WeakPasswordRefused)
from ..logs import PASSWORD_CHANGE, PASSWORD_RESET
from ..pipeline import GATEWAY, Gateway
from ..store import store_reachable
from .accounts.directory import MAX_PASSWORD_CHARS, InvalidAccount, UserDirectory, check_email, check_username
from .accounts.policy import PasswordPolicy, WeakPassword
from .accounts.resets import (MAX_RESET_TOKEN_CHARS, BackgroundTasks, hash_reset_token, notify_password_changed,
                              send_reset_links)
from .audit import audit_request
from .endpoints import add_endpoint
from .oauth.forms import (CREATED_FLAG, form_refusal, has_form_token, in_words, page_rd, read_form, render_forgot,
                          render_not_editable, render_signup, text_field)
from .oauth.routes import delegation, found
from .ratelimit import RateLimiter, client_address
from .revocation import apply_revocation, build_revocation
from .routes import FORM_TYPE, NO_STORE, caller, read_json_object, refuse_form_post, string_field, token_response
from .sessions import origin_of, sessions_of

log = logging.getLogger("tokengate.auth")

MAX_USERNAME_CHARS = 255
MAX_EMAIL_CHARS = 254
ACCEPTED = {"status": "accepted"}   # forgot-password: the one answer, whoever the address belongs to
T = TypeVar("T")


@dataclass
class Accounts:
    """What the account endpoints share in one app: the password policy and the background work."""

    policy: PasswordPolicy
    background: BackgroundTasks = field(default_factory=BackgroundTasks)


ACCOUNTS = web.AppKey("accounts", Accounts)


def add_account_routes(app: web.Application, cfg: GatewayConfig) -> None:
    """Register the account endpoints (POST; GET for the signup and forgot-password pages when the
    sign-in page is on; other methods get 405). Call it before the catch-all proxy route and after the
    Gateway's cleanup context: the background work ends before the Gateway."""
    prefix = cfg.auth.prefix
    app.cleanup_ctx.append(_accounts_context)
    pages = cfg.auth.sign_in_page   # the account pages come with the sign-in page they lead back to
    # Without signup, the same answers as a path nothing serves: 404, and 405 method_refused for TRACE/CONNECT.
    add_endpoint(app, f"{prefix}/signup", {**({"GET": signup_page} if pages else {}), "POST": signup}
                 if cfg.auth.signup else {"*": _no_signup})
    add_endpoint(app, f"{prefix}/forgot-password",
                 {**({"GET": forgot_password_page} if pages else {}), "POST": forgot_password})
    add_endpoint(app, f"{prefix}/reset-password", {"POST": reset_password})
    add_endpoint(app, f"{prefix}/change-password", {"POST": change_password})


async def _no_signup(request: web.Request) -> web.StreamResponse:
    raise NoRoute()


async def _accounts_context(app: web.Application) -> AsyncIterator[None]:
    cfg = app[GATEWAY].config
    app[ACCOUNTS] = accounts = Accounts(await asyncio.to_thread(PasswordPolicy.from_config, cfg.auth.password))
    yield
    await accounts.background.close()


async def signup(request: web.Request) -> web.StreamResponse:
    """The signup page's form post (HTML, with its CSRF token) or the JSON signup."""
    if is_page_form(request):
        return await form_signup(request)
    return await json_signup(request)


async def json_signup(request: web.Request) -> web.StreamResponse:
    """POST {"username", "password", "email"?} -> 201 {"username", "roles"}; 400 invalid_account,
    weak_password; 409 username_taken; 429; 503."""
    gw = request.app[GATEWAY]
    users = editable(gw)
    await _limit(request, gw, "signup", gw.config.auth.rate_limits.signup)
    refuse_form_post(request)
    body = await read_json_object(request)
    username = await create_account(request, gw, users, body)
    roles = gw.config.auth.default_roles
    return web.json_response({"username": username, "roles": list(roles)}, status=201, headers=NO_STORE)


async def create_account(request: web.Request, gw: Gateway, users: UserDirectory, fields: dict[str, Any]) -> str:
    """Signup's checks on ``fields`` (username, password, email?), then the account with the default
    roles; its username. Raises BadRequest, InvalidAccountField, WeakPasswordRefused, UsernameTaken."""
    username = _account_field(check_username, string_field(fields, "username", MAX_USERNAME_CHARS))
    email = _account_field(check_email, fields.get("email"))
    password = string_field(fields, "password", MAX_PASSWORD_CHARS)
    check_new_password(request, password, username, email)
    if not await users.add(username, password, gw.config.auth.default_roles, email):
        raise UsernameTaken()
    log.info("signup", extra={"sub": username})
    return username


async def forgot_password(request: web.Request) -> web.StreamResponse:
    """The forgot-password page's form post (HTML, with its CSRF token) or the JSON request."""
    if is_page_form(request):
        return await form_forgot_password(request)
    return await json_forgot_password(request)


async def json_forgot_password(request: web.Request) -> web.StreamResponse:
    """POST {"email"} -> 202 {"status": "accepted"}, whether or not an account has that address;
    400 for a malformed address; 429 per client address and per e-mail address; 503."""
    gw = request.app[GATEWAY]
    editable(gw)
    await _limit(request, gw, "forgot-password", gw.config.auth.rate_limits.forgot_password)
    refuse_form_post(request)
    body = await read_json_object(request)
    await request_reset(request, gw, string_field(body, "email", MAX_EMAIL_CHARS))
    return web.json_response(ACCEPTED, status=202, headers=NO_STORE)


async def request_reset(request: web.Request, gw: Gateway, email: str) -> None:
    """The per-address limit, then lookup, token and mail in the background: the answer neither waits
    for them nor tells whether an account has ``email``. Raises InvalidAccountField, RateLimited."""
    email = _account_field(check_email, email)
    await RateLimiter(gw.store).hit("forgot-password", "email:" + email.lower(),
                                    gw.config.auth.rate_limits.forgot_password)
    work = send_reset_links(gw.store, gw.users, gw.mailer, gw.config.auth, email)
    request.app[ACCOUNTS].background.spawn(work, name="password reset request")


async def reset_password(request: web.Request) -> web.StreamResponse:
    """POST {"token", "new_password"} -> 204: new password set, every session of the account revoked.
    400 invalid_reset_token (unknown, used, expired, superseded), weak_password (the token stays
    usable); 503."""
    gw = request.app[GATEWAY]
    users = editable(gw)
    refuse_form_post(request)
    body = await read_json_object(request)
    token_hash = hash_reset_token(string_field(body, "token", MAX_RESET_TOKEN_CHARS))
    new_password = string_field(body, "new_password", MAX_PASSWORD_CHARS)
    with store_reachable():
        username = await gw.store.find_reset(token_hash, time.time())
    account = await users.get(username) if username else None
    if account is None or account.disabled:
        raise InvalidResetToken()
    check_new_password(request, new_password, account.username, account.email)   # before the token is spent
    with store_reachable():
        if await gw.store.take_reset(token_hash, time.time()) != account.username:
            raise InvalidResetToken()   # spent by a concurrent request since we looked
    if not await users.set_password(account.username, new_password):
        raise InvalidResetToken()   # the account was deleted meanwhile
    await end_every_session(gw, account.username)
    notify_password_changed(gw.mailer, account.username, account.email)
    log.info("password reset", extra={"sub": account.username})
    audit_request(request, gw, PASSWORD_RESET, subject=account.username, session=None)
    return web.Response(status=204, headers=NO_STORE)


async def change_password(request: web.Request) -> web.StreamResponse:
    """Bearer access token + POST {"current_password", "new_password"} -> 200 a new token pair (as
    login); every other session of the account ends. 401 (token, or invalid_credentials for a wrong
    current password), 400 weak_password, 403 foreign_account, 429 (like login), 503."""
    gw = request.app[GATEWAY]
    users = editable(gw)
    identity = await caller(request, gw)
    if identity.iss != gw.config.tokens.issuer:   # another issuer's "alice" is not our alice
        raise ForeignAccount()
    await _limit(request, gw, "change-password", gw.config.auth.rate_limits.login)
    await RateLimiter(gw.store).hit("change-password", "user:" + identity.sub, gw.config.auth.rate_limits.login)
    refuse_form_post(request)
    body = await read_json_object(request)
    current = string_field(body, "current_password", MAX_PASSWORD_CHARS)
    new_password = string_field(body, "new_password", MAX_PASSWORD_CHARS)
    user = await users.authenticate(identity.sub, current)
    if user is None:
        audit_request(request, gw, PASSWORD_CHANGE, subject=identity.sub, session=identity.sid,
                      outcome=InvalidCredentials.code)
        raise InvalidCredentials()
    check_new_password(request, new_password, user.sub, user.email)
    await users.set_password(user.sub, new_password)
    sessions = sessions_of(gw)
    await sessions.logout_all(identity)   # every session, this one too; then a new one for the caller
    # Waits out the watermark's second, so the new pair is alive.
    pair = await sessions.issue(user, origin=origin_of(request, gw.config))
    notify_password_changed(gw.mailer, user.sub, user.email)
    log.info("password changed", extra={"sub": user.sub})
    audit_request(request, gw, PASSWORD_CHANGE, subject=user.sub, session=identity.sid, new_session=pair.family)
    return token_response(request, gw.config, pair)


def editable(gw: Gateway) -> UserDirectory:
    """The accounts, when this gateway can change them; else AccountsNotEditable (404)."""
    if not gw.users.editable:
        raise AccountsNotEditable()
    return gw.users


def check_new_password(request: web.Request, password: str, username: str, email: str | None) -> None:
    try:
        request.app[ACCOUNTS].policy.check(password, username=username, email=email)
    except WeakPassword as exc:
        raise WeakPasswordRefused(str(exc)) from None


async def end_every_session(gw: Gateway, username: str) -> None:
    """Every access token of the account issued before now is revoked (the subject's watermark) and
    every refresh family of it dies: what `tokengate revoke --sub` does."""
    revocation = await build_revocation(gw.config, sub=username)
    with store_reachable():
        await apply_revocation(gw.store, revocation, gw.denylist.revoke)


async def _limit(request: web.Request, gw: Gateway, name: str, rate: tuple[int, int]) -> None:
    address = client_address(request, gw.config.listen.trusted_proxies)
    await RateLimiter(gw.store).hit(name, "ip:" + address, rate)


def _account_field(check: Callable[[Any], T], value: Any) -> T:
    try:
        return check(value)
    except InvalidAccount as exc:
        raise InvalidAccountField(str(exc)) from None


# -- the signup and forgot-password pages (HTML; they work with JavaScript off) ---------------------------

def is_page_form(request: web.Request) -> bool:
    """A urlencoded post with the sign-in page on: one of the gateway's own pages posted it, or nobody did
    (then its CSRF token is missing or wrong, and the answer is an HTML refusal). Multipart and text/plain
    go the JSON way, to its json_required refusal."""
    return request.app[GATEWAY].config.auth.sign_in_page and request.content_type == FORM_TYPE


async def signup_page(request: web.Request) -> web.StreamResponse:
    """GET: the signup form; ``?rd=`` is carried to the sign-in page afterwards."""
    d = delegation(request)
    if not request.app[GATEWAY].users.editable:
        return render_not_editable(request, d.pages, d.auth)
    return render_signup(request, d.pages, d.auth, page_rd(d.auth, request.query.get("rd")))


async def form_signup(request: web.Request) -> web.StreamResponse:
    """The signup page's form post: CSRF double submit, then exactly the JSON signup's checks and limit;
    302 to the sign-in page with the created notice and ``rd``, or the form again naming the error with
    the JSON endpoint's status (400, 409, 429, 503)."""
    gw, d = request.app[GATEWAY], delegation(request)
    if not gw.users.editable:
        return render_not_editable(request, d.pages, d.auth)
    form = await read_form(request)
    rd = page_rd(d.auth, text_field(form, "rd"))
    if form is None or not has_form_token(request, form):   # a cross-site post, or an expired page
        log.info("signup refused", extra={"code": "form_expired"})
        return render_signup(request, d.pages, d.auth, rd, error=form_refusal(form), status=400)
    username, email = text_field(form, "username"), text_field(form, "email")
    fields = {"username": username, "password": text_field(form, "password"), "email": email or None}
    try:
        await _limit(request, gw, "signup", gw.config.auth.rate_limits.signup)
        await create_account(request, gw, gw.users, fields)
    except GatewayError as exc:
        log.info("signup refused", extra={"code": exc.code})
        resp = render_signup(request, d.pages, d.auth, rd, username=username, email=email, error=in_words(exc),
                             status=exc.status)
        resp.headers.update(exc.headers)   # Retry-After of a 429
        return resp
    return found(f"{d.auth.prefix}/login?{CREATED_FLAG}=1&rd={quote(rd, safe='')}")


async def forgot_password_page(request: web.Request) -> web.StreamResponse:
    """GET: the forgot-password form; ``?rd=`` is carried back to the sign-in page."""
    d = delegation(request)
    if not request.app[GATEWAY].users.editable:
        return render_not_editable(request, d.pages, d.auth)
    return render_forgot(request, d.pages, d.auth, page_rd(d.auth, request.query.get("rd")))


async def form_forgot_password(request: web.Request) -> web.StreamResponse:
    """The forgot-password page's form post: CSRF double submit, then exactly what the JSON request does;
    one page whoever has the address, or the form again naming a refusal (400, 429, 503)."""
    gw, d = request.app[GATEWAY], delegation(request)
    if not gw.users.editable:
        return render_not_editable(request, d.pages, d.auth)
    form = await read_form(request)
    rd = page_rd(d.auth, text_field(form, "rd"))
    if form is None or not has_form_token(request, form):   # a cross-site post, or an expired page
        log.info("password reset refused", extra={"code": "form_expired"})
        return render_forgot(request, d.pages, d.auth, rd, error=form_refusal(form), status=400)
    email = text_field(form, "email")
    try:
        await _limit(request, gw, "forgot-password", gw.config.auth.rate_limits.forgot_password)
        await request_reset(request, gw, string_field({"email": email}, "email", MAX_EMAIL_CHARS))
    except GatewayError as exc:
        log.info("password reset refused", extra={"code": exc.code})
        resp = render_forgot(request, d.pages, d.auth, rd, email=email, error=in_words(exc), status=exc.status)
        resp.headers.update(exc.headers)   # Retry-After of a 429
        return resp
    return render_forgot(request, d.pages, d.auth, rd, sent=True)
