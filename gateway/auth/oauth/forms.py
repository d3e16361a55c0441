"""What the gateway's HTML forms share (the sign-in, signup and forgot-password pages): the CSRF double
submit, reading a form post, errors in words, the sign-in page's "account created" flag, and the signup
and forgot-password pages rendered with their token. Requests and forms in, plain values and pages out."""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping
from urllib.parse import quote

from aiohttp import web

from ...config.load import AuthConfig
from ...errors import GatewayError
from ...forward.request_id import request_id_of
from .pages import ForgotView, Pages, SignupView
from .redirects import safe_redirect

FORM_COOKIE = "tokengate_form"        # every page form's CSRF double-submit cookie (one per page path)
FORM_COOKIE_AGE_S = 3600
MAX_FORM_BYTES = 16 * 1024
# ?created=1 on the sign-in page: the fixed notice CREATED_NOTICE, never text from the query.
CREATED_FLAG = "created"
CREATED_NOTICE = "Your account was created. Sign in below."
_FORM_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")   # secrets.token_urlsafe(32)
# The refusals whose own description is not a sentence for people; the others' are (username and
# e-mail rules, the password policy's reason), and are shown as sentences.
_WORDS = {"username_taken": "This username is taken. Please choose another one.",
          "rate_limited": "Too many attempts. Please wait a minute and try again.",
          "store_unavailable": "This is not possible right now. Please try again in a moment.",
          "dependency_unavailable": "This is not possible right now. Please try again in a moment."}


def form_token(request: web.Request) -> str:
    """The page's CSRF token: the one its cookie holds when well formed (the page open in another tab
    keeps working), else a new one."""
    token = request.cookies.get(FORM_COOKIE, "")
    return token if _FORM_TOKEN.fullmatch(token) else secrets.token_urlsafe(32)


def set_form_cookie(resp: web.StreamResponse, auth: AuthConfig, path: str, token: str) -> None:
    """The cookie half of the double submit, sent back only to ``path`` (where the page's form posts).
    HttpOnly: no script needs it; SameSite=Strict: a post from another site arrives without it."""
    resp.set_cookie(FORM_COOKIE, token, max_age=FORM_COOKIE_AGE_S, path=path, httponly=True,
                    secure=auth.refresh_cookie.secure, samesite="Strict")


def has_form_token(request: web.Request, form: Mapping[str, object]) -> bool:
    """Whether the form's ``csrf_token`` field equals the page's cookie (compared in constant time). Only a
    cookie of the shape the gateway sets can match: an empty or odd one matches nothing."""
    field = form.get("csrf_token")
    cookie = request.cookies.get(FORM_COOKIE, "")
    return (isinstance(field, str) and _FORM_TOKEN.fullmatch(cookie) is not None
            and hmac.compare_digest(field.encode("utf-8", "surrogatepass"), cookie.encode()))


async def read_form(request: web.Request) -> Mapping[str, object] | None:
    """The urlencoded form of a page's post; None when it is larger than MAX_FORM_BYTES or is not text
    in its charset (a refusal in words, never a 500)."""
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return None
    try:
        return await request.post()
    except (UnicodeDecodeError, LookupError):   # bytes that are not UTF-8, or a charset Python lacks
        return None


def text_field(form: Mapping[str, object] | None, name: str) -> str:
    """A form field as text; "" when it is missing (or a file, which a urlencoded form cannot hold)."""
    value = form.get(name) if form is not None else None
    return value if isinstance(value, str) else ""


def form_refusal(form: Mapping[str, object] | None) -> str:
    """Why a page's post was refused before its fields were read: unreadable (read_form gave None), or
    without the page's CSRF token (the page expired, or another site posted it)."""
    if form is None:
        return "The form could not be read. Please try again."
    return "The form expired. Please try again."


def in_words(exc: GatewayError) -> str:
    """What a refused form post shows: a sentence for people, from the gateway's own texts only."""
    if exc.code in _WORDS:
        return _WORDS[exc.code]
    text = exc.description.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def page_rd(auth: AuthConfig, rd: str | None) -> str:
    """Where to go after signing in: ``rd`` when it is allowed, else "/"."""
    return safe_redirect(rd, auth.redirect_allowlist) or "/"


def sign_in_url(auth: AuthConfig, rd: str) -> str:
    """The sign-in page, carrying ``rd`` (already checked)."""
    return f"{auth.prefix}/login?rd={quote(rd, safe='')}"


def render_signup(request: web.Request, pages: Pages, auth: AuthConfig, rd: str, *, username: str = "",
                  email: str = "", error: str | None = None, status: int = 200) -> web.Response:
    """The signup page, with its CSRF token in the form and in its cookie."""
    token = form_token(request)
    view = SignupView(action=f"{auth.prefix}/signup", sign_in_url=sign_in_url(auth, rd), csrf_token=token, rd=rd,
                      username=username, email=email, error=error)
    resp = pages.signup(view, status=status)
    set_form_cookie(resp, auth, view.action, token)
    return resp


def render_forgot(request: web.Request, pages: Pages, auth: AuthConfig, rd: str, *, email: str = "",
                  error: str | None = None, status: int = 200, sent: bool = False) -> web.Response:
    """The forgot-password page (the form, or its one answer when ``sent``), with its CSRF token."""
    token = form_token(request)
    view = ForgotView(action=f"{auth.prefix}/forgot-password", sign_in_url=sign_in_url(auth, rd), csrf_token=token,
                      rd=rd, email=email, error=error, sent=sent)
    resp = pages.forgot(view, status=status)
    set_form_cookie(resp, auth, view.action, token)
    return resp


def render_not_editable(request: web.Request, pages: Pages, auth: AuthConfig) -> web.Response:
    """404 for the account pages when a credentials service keeps the accounts."""
    return pages.error(status=404, title="Not found", reason="Accounts are not managed here, so they cannot be "
                       "created or reset on this site.", sign_in_url=f"{auth.prefix}/login",
                       request_id=request_id_of(request))
