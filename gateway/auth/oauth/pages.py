"""The gateway's HTML pages: sign-in, signup, forgot-password and the error page, from autoescaped
Jinja2 templates, with one inline style allowed by its hash in a strict CSP. Views in, web.Response out.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

TEMPLATES = Path(__file__).with_name("templates")

# An origin exactly: scheme://host[:port], nothing after it. Anything else could add a directive or a
# source to the CSP (a space, ';', a quote) or widen form-action to a path.
_ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?",
                     re.ASCII | re.IGNORECASE)
# A path on this origin: one '/', then no '/' or '\' (browsers read '//x' and '/\x' as another host),
# and no whitespace or control character anywhere (browsers drop tabs and newlines inside URLs, so
# '/\t/evil.test' would become '//evil.test').
_LOCAL_PATH = re.compile(r"/(?![/\\])[^\x00-\x20\x7f\\]*", re.ASCII)
# Characters HTML forbids in text (NUL, C0/C1 controls but tab/LF/CR) and lone surrogates (not
# encodable as UTF-8): shown as U+FFFD rather than failing the page or feeding a parser quirk.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ProviderButton:
    name: str            # the provider's key in URLs, e.g. "corp"
    display_name: str    # what the button says after "Sign in with", e.g. "Corp SSO"
    start_url: str       # e.g. "/auth/oauth/corp/start?rd=%2Fdashboard", built and URL-encoded by the caller


@dataclass(frozen=True, slots=True)
class SignInView:
    action: str                          # where the password form posts, e.g. "/auth/login"
    buttons: tuple[ProviderButton, ...]
    password_form: bool                  # show the username/password form
    csrf_token: str                      # hidden field `csrf_token` (double submit)
    rd: str                              # hidden field `rd` (checked by the caller; escaped here anyway)
    username: str = ""                   # refilled after a failed login
    error: str | None = None             # a sentence in words, e.g. "Wrong username or password."
    signup_url: str | None = None        # e.g. "/auth/signup?rd=%2Fdashboard"; None: no link
    forgot_url: str | None = None        # e.g. "/auth/forgot-password?rd=%2Fdashboard"; None: no link
    notice: str | None = None            # a fixed sentence of the gateway's, e.g. after a signup


@dataclass(frozen=True, slots=True)
class SignupView:
    action: str                          # where the form posts, e.g. "/auth/signup"
    sign_in_url: str                     # the way back, e.g. "/auth/login?rd=%2Fdashboard"
    csrf_token: str                      # hidden field `csrf_token` (double submit)
    rd: str                              # hidden field `rd`, carried to the sign-in page
    username: str = ""                   # refilled after a refusal (never the password)
    email: str = ""
    error: str | None = None             # a sentence in words, e.g. "This username is taken. ..."


@dataclass(frozen=True, slots=True)
class ForgotView:
    action: str                          # where the form posts, e.g. "/auth/forgot-password"
    sign_in_url: str                     # the way back, e.g. "/auth/login?rd=%2Fdashboard"
    csrf_token: str                      # hidden field `csrf_token` (double submit)
    rd: str                              # hidden field `rd`, carried back to the sign-in page
    email: str = ""                      # refilled after a refusal
    error: str | None = None             # a sentence in words
    sent: bool = False                   # the answer to a post: one sentence, whoever has the address


def check_origin(origin: str) -> str:
    """``origin`` when it is exactly scheme://host[:port] (http or https); ValueError otherwise."""
    if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
        raise ValueError(f"a form target must be an origin such as https://app.example.test: {origin!r}")
    return origin


def check_local_path(field: str, url: str) -> str:
    """``url`` when it is a path on this origin (a single leading '/'); ValueError otherwise.

    The gateway builds these URLs itself; refusing anything else keeps javascript:, data: and
    other-host URLs out of href and action even if a caller gets one wrong."""
    if not isinstance(url, str) or not _LOCAL_PATH.fullmatch(url):
        raise ValueError(f"{field} must be a path starting with a single '/': {url!r}")
    return url


def _printable(value: Any) -> Any:
    """Jinja's finalize: runs on every {{ }} value before autoescape; our own Markup passes untouched."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _UNPRINTABLE.sub("\ufffd", value)
    return value


def _load_style() -> Markup:
    css = (TEMPLATES / "page.css").read_text(encoding="utf-8").strip()
    if "<" in css:   # '</style' would end the element early; the stylesheet needs no '<' at all
        raise ValueError("page.css must not contain '<'")
    return Markup(f"\n{css}\n")   # ours, from the package: the only value not escaped


def _style_hash(style: str) -> str:
    digest = hashlib.sha256(style.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


class Pages:
    """Templates loaded once (autoescape for every template, StrictUndefined), the CSP built once."""

    def __init__(self, *, form_targets: Sequence[str] = ()) -> None:
        """form_targets: extra origins the password form's answer may redirect to (the redirect
        allowlist's origins): Chrome applies CSP form-action to the redirects after a form post, so
        they go into form-action. ValueError when one is not an origin."""
        if isinstance(form_targets, str):   # a lone string would be read as its characters
            raise ValueError("form_targets is a sequence of origins, not one string")
        targets = list(dict.fromkeys(check_origin(t) for t in form_targets))
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                 undefined=jinja2.StrictUndefined, finalize=_printable, auto_reload=False,
                                 trim_blocks=True, lstrip_blocks=True)
        self._sign_in = env.get_template("sign_in.html")
        self._signup = env.get_template("signup.html")
        self._forgot = env.get_template("forgot.html")
        self._error = env.get_template("error.html")
        self._style = _load_style()
        csp = "; ".join([
            "default-src 'none'",   # no script, font, frame or fetch of any kind
            f"style-src {_style_hash(self._style)}",
            "img-src 'self' data:",
            " ".join(["form-action 'self'", *targets]),
            "frame-ancestors 'none'",   # no clickjacking of the password form
            "base-uri 'none'",
        ])
        self._headers = MappingProxyType({
            "Content-Security-Policy": csp,
            "X-Frame-Options": "DENY",   # frame-ancestors for browsers without CSP level 2
            "Referrer-Policy": "no-referrer",   # the page's URL carries rd; keep it from the providers
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",   # a CSRF token and a username: never from a shared cache
            "Content-Type": "text/html; charset=utf-8",
        })

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers every page carries: the CSP, the other security headers and the Content-Type."""
        return self._headers

    def sign_in(self, view: SignInView, *, status: int = 200) -> web.Response:
        """The sign-in page; ValueError when a URL of the view is not a local path."""
        check_local_path("action", view.action)
        for button in view.buttons:
            check_local_path(f"start_url of {button.name!r}", button.start_url)
        for field in ("signup_url", "forgot_url"):
            if getattr(view, field) is not None:
                check_local_path(field, getattr(view, field))
        return self._render(self._sign_in, status, view=view)

    def signup(self, view: SignupView, *, status: int = 200) -> web.Response:
        """The signup page; ValueError when a URL of the view is not a local path."""
        check_local_path("action", view.action)
        check_local_path("sign_in_url", view.sign_in_url)
        return self._render(self._signup, status, view=view)

    def forgot(self, view: ForgotView, *, status: int = 200) -> web.Response:
        """The forgot-password page: the e-mail form, or (``sent``) the one answer to it; ValueError
        when a URL of the view is not a local path."""
        check_local_path("action", view.action)
        check_local_path("sign_in_url", view.sign_in_url)
        return self._render(self._forgot, status, view=view)

    def error(self, *, status: int, title: str, reason: str, sign_in_url: str,
              request_id: str | None = None) -> web.Response:
        """An error page that names the reason in words and links back to the sign-in page;
        ValueError when sign_in_url is not a local path."""
        check_local_path("sign_in_url", sign_in_url)
        return self._render(self._error, status, title=title, reason=reason, sign_in_url=sign_in_url,
                            request_id=request_id)

    def _render(self, template: jinja2.Template, status: int, **context: Any) -> web.Response:
        html = template.render(style=self._style, **context)
        return web.Response(body=html.encode("utf-8"), status=status, headers=self._headers)
