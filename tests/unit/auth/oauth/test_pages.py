"""gateway.auth.oauth.pages: the structure of the sign-in, signup, forgot-password and error pages (read with
html.parser), every outside value escaped, the CSP's style hash against the style element as rendered, the
security headers, and the checks on URLs and form targets."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web

from gateway.auth.oauth.pages import TEMPLATES, ForgotView, Pages, ProviderButton, SignInView, SignupView

CORP = ProviderButton("corp", "Corp SSO", "/auth/oauth/corp/start?rd=%2Fdashboard")
GITHUB = ProviderButton("github", "GitHub", "/auth/oauth/github/start?rd=%2Fdashboard")
VIEW = SignInView(action="/auth/login", buttons=(CORP, GITHUB), password_form=True, csrf_token="csrf-123",
                  rd="/dashboard")
FULL = replace(VIEW, username="alice", error="Wrong username or password.", signup_url="/auth/signup",
               forgot_url="/auth/forgot-password")
SIGNUP = SignupView(action="/auth/signup", sign_in_url="/auth/login?rd=%2Fdashboard", csrf_token="csrf-123",
                    rd="/dashboard")
SIGNUP_FULL = replace(SIGNUP, username="dave", email="dave@example.test", error="This username is taken.")
FORGOT = ForgotView(action="/auth/forgot-password", sign_in_url="/auth/login?rd=%2Fdashboard", csrf_token="csrf-123",
                    rd="/dashboard")
FORGOT_FULL = replace(FORGOT, email="dave@example.test", error="An e-mail address looks like name@example.com.")
SENT = "If an account has this address, a link to reset the password is on its way."

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='alert(1)",
    "javascript:alert(1)",
    "`'\"<>&",
    "{{ 7*7 }}{% if true %}x{% endif %}{# c #}",
    "&amp;&lt;script&gt;",
    "a\x00b\x1b[31m\x7f\ud800",
    "</style><script>alert(1)</script>",
    "x" * 100_000 + "<b>end</b>",
]
# Paths the URL check lets through, with the characters an attribute must escape.
HOSTILE_PATHS = ['/x?q="><script>alert(1)</script>', "/x?a='b'&c=<i>", "/{{7*7}}", "/javascript:alert(1)"]
NOT_LOCAL = ["javascript:alert(1)", "JavaScript:alert(1)", "data:text/html,<script>alert(1)</script>",
             "https://evil.test/", "//evil.test/", "/\\evil.test", "/\t/evil.test", "/\n/evil.test",
             " /auth/login", "/auth/login ", "auth/login", "", "\x00/", "/a\\b"]


def shown(value: str) -> str:
    """What a value looks like on the page: characters HTML forbids become U+FFFD."""
    return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]", "\ufffd", value)


class Page(HTMLParser):
    """A rendered page as the tests read it: start tags with their attributes (in order), text with the tag
    it follows, the doctype and the text of each style element."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.attr_names: list[str] = []
        self.text: list[tuple[str, str]] = []
        self.styles: list[str] = []
        self.doctype: str | None = None
        self._last = ""
        self.feed(html)
        self.close()

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.attr_names += [name for name, _ in attrs]
        self._last = tag
        if tag == "style":
            self.styles.append("")

    def handle_data(self, data: str) -> None:
        if self._last == "style" and self.styles:
            self.styles[-1] += data
        elif data.strip():
            self.text.append((self._last, data.strip()))

    def handle_endtag(self, tag: str) -> None:
        self._last = ""

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def one(self, tag: str, **attrs: str) -> dict[str, str | None]:
        found = self.find(tag, **attrs)
        assert len(found) == 1, f"{len(found)} <{tag} {attrs}>"
        return found[0]

    def texts(self, tag: str) -> list[str]:
        return [text for t, text in self.text if t == tag]


def render(view: SignInView = FULL, pages: Pages | None = None) -> tuple[web.Response, str, Page]:
    resp = (pages or Pages()).sign_in(view)
    html = resp.body.decode("utf-8")
    return resp, html, Page(html)


def render_error(pages: Pages | None = None, **kwargs: Any) -> tuple[web.Response, str, Page]:
    args = {"status": 401, "title": "Sign-in failed", "reason": "The provider refused the sign-in.",
            "sign_in_url": "/auth/login?rd=%2Fdashboard", "request_id": "req-42", **kwargs}
    resp = (pages or Pages()).error(**args)
    html = resp.body.decode("utf-8")
    return resp, html, Page(html)


def render_signup(view: SignupView = SIGNUP_FULL, pages: Pages | None = None) -> tuple[web.Response, str, Page]:
    resp = (pages or Pages()).signup(view)
    html = resp.body.decode("utf-8")
    return resp, html, Page(html)


def render_forgot(view: ForgotView = FORGOT_FULL, pages: Pages | None = None) -> tuple[web.Response, str, Page]:
    resp = (pages or Pages()).forgot(view)
    html = resp.body.decode("utf-8")
    return resp, html, Page(html)


def assert_inert(page: Page) -> None:
    """No element or attribute that could run or load anything, whatever the values were."""
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "svg", "math", "base", "template"}
    assert not [meta for meta in page.find("meta") if "http-equiv" in meta]
    assert not [name for name in page.attr_names if name.startswith("on") or name in ("style", "src", "srcdoc")]
    assert len(page.styles) == 1
    assert len(page.find("main")) == 1


# --- structure --------------------------------------------------------------------------------------

def test_sign_in_page_is_an_html5_document_with_one_main_and_no_script():
    resp, html, page = render()
    assert resp.status == 200
    assert html.startswith("<!doctype html>\n") and page.doctype == "doctype html"
    page.one("html", lang="en")
    page.one("meta", charset="utf-8")
    assert "width=device-width" in (page.one("meta", name="viewport")["content"] or "")
    assert page.texts("title") == ["Sign in"] and page.texts("h1") == ["Sign in"]
    assert_inert(page)


def test_every_field_has_a_label_bound_to_its_id():
    _, _, page = render()
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids))
    labelled = [label["for"] for label in page.find("label")]
    assert labelled == ["username", "password"] and set(labelled) <= set(ids)
    visible = [i for i in page.find("input") if i.get("type") != "hidden"]
    assert [i["id"] for i in visible] == labelled
    assert page.texts("label") == ["Username", "Password"]


def test_password_form_posts_urlencoded_with_the_fields_the_login_route_reads():
    _, _, page = render()
    form = page.one("form")
    assert form["method"] == "post" and form["action"] == "/auth/login" and "enctype" not in form
    assert page.one("input", name="csrf_token")["type"] == "hidden"
    assert page.one("input", name="csrf_token")["value"] == "csrf-123"
    assert page.one("input", name="rd") == {"type": "hidden", "name": "rd", "value": "/dashboard"}
    username = page.one("input", name="username")
    assert username["autocomplete"] == "username" and "required" in username and username["value"] == "alice"
    password = page.one("input", name="password")
    assert password["type"] == "password" and password["autocomplete"] == "current-password"
    assert "required" in password and "value" not in password   # a password is never sent back
    assert page.one("button")["type"] == "submit" and page.texts("button") == ["Sign in"]


def test_provider_buttons_are_links_above_the_form_with_an_or_between():
    _, _, page = render()
    buttons = page.find("a", class_="button")
    assert [b["href"] for b in buttons] == [CORP.start_url, GITHUB.start_url]
    assert page.texts("a")[:2] == ["Sign in with Corp SSO", "Sign in with GitHub"]
    order = [tag for tag, attrs in page.tags if tag == "form" or attrs.get("class") in ("button", "or")]
    assert order == ["a", "a", "p", "form"]
    assert page.one("p", class_="or") is not None and "or" in page.texts("p")


@pytest.mark.parametrize(("buttons", "password_form"), [((CORP, GITHUB), False), ((CORP,), False),
                                                         ((), True), ((CORP,), True), ((), False)])
def test_only_what_is_configured_is_shown(buttons, password_form):
    _, _, page = render(replace(VIEW, buttons=buttons, password_form=password_form))
    assert len(page.find("a", class_="button")) == len(buttons)
    assert len(page.find("form")) == int(password_form)
    assert len(page.find("input")) == (4 if password_form else 0)
    assert len(page.find("p", class_="or")) == int(bool(buttons) and password_form)
    assert not page.find("p", role="alert") and not page.find("p", class_="links")
    if not buttons and not password_form:
        assert "No way to sign in is configured here." in page.texts("p")
    assert_inert(page)


def test_the_error_is_an_alert_the_fields_point_at():
    _, _, page = render()
    alert = page.one("p", role="alert")
    assert page.texts("p")[0] == "Wrong username or password."
    assert page.one("input", name="username")["aria-describedby"] == alert["id"]
    assert page.one("input", name="password")["aria-describedby"] == alert["id"]
    _, _, quiet = render(replace(FULL, error=None))
    assert not quiet.find("p", role="alert") and "aria-describedby" not in quiet.attr_names


@pytest.mark.parametrize(("signup", "forgot"), [("/auth/signup", None), (None, "/auth/forgot"), ("/s", "/f")])
def test_signup_and_forgot_links_only_when_given(signup, forgot):
    _, _, page = render(replace(VIEW, signup_url=signup, forgot_url=forgot))
    links = [a["href"] for a in page.find("a") if a.get("class") is None]
    assert links == [url for url in (forgot, signup) if url]


# --- escaping ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["username", "rd", "csrf_token", "error", "display_name"])
def test_hostile_values_are_only_ever_text(field, value):
    view = (replace(FULL, buttons=(ProviderButton("corp", value, CORP.start_url),)) if field == "display_name"
            else replace(FULL, **{field: value}))
    _, html, page = render(view)
    assert_inert(page)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    if field == "display_name":
        assert page.texts("a")[0] == shown(f"Sign in with {value}".strip())
    elif field == "error":
        assert page.texts("p")[0] == shown(value).strip()
    else:
        assert page.one("input", name=field)["value"] == shown(value)


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("field", ["action", "start_url", "signup_url", "forgot_url"])
def test_hostile_paths_stay_inside_their_attribute(field, path):
    view = (replace(FULL, buttons=(ProviderButton("corp", "Corp", path),)) if field == "start_url"
            else replace(FULL, **{field: path}))
    _, html, page = render(view)
    assert_inert(page)
    assert "<script" not in html
    assert path in [attrs.get("href") or attrs.get("action") for _, attrs in page.tags]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_error_page_shows_hostile_values_as_text(value):
    _, html, page = render_error(title=value, reason=value, request_id=value, sign_in_url=HOSTILE_PATHS[0])
    assert_inert(page)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert page.texts("title") == page.texts("h1") == [shown(value).strip()]
    assert page.one("p", class_="reason") is not None
    assert shown(value).strip() in page.texts("p")
    assert f"Request ID: {shown(value)}".strip() in page.texts("p")
    assert page.one("a")["href"] == HOSTILE_PATHS[0]


def test_template_syntax_in_values_is_not_evaluated():
    _, html, page = render(replace(FULL, username="{{ 7*7 }}", error="{{ 7*7 }}"))
    assert page.one("input", name="username")["value"] == "{{ 7*7 }}"
    assert "{{ 7*7 }}" in page.texts("p") and ">49<" not in html


def test_no_template_turns_autoescape_off():
    for template in TEMPLATES.glob("*.html"):
        source = template.read_text()
        assert "|safe" not in source.replace(" ", "") and "autoescape" not in source and "<script" not in source


# --- CSP and headers --------------------------------------------------------------------------------

def style_hash(page: Page) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(page.styles[0].encode("utf-8")).digest()).decode() + "'"


def test_the_csp_allows_exactly_the_rendered_style_element_by_its_hash():
    for resp, _, page in (render(), render(replace(VIEW, buttons=())), render_error(), render_signup(),
                          render_forgot(), render_forgot(replace(FORGOT, sent=True))):
        csp = resp.headers["Content-Security-Policy"]
        assert re.fullmatch(r"default-src 'none'; style-src 'sha256-[A-Za-z0-9+/]{43}='; img-src 'self' data:; "
                            r"form-action 'self'; frame-ancestors 'none'; base-uri 'none'", csp)
        assert f"style-src {style_hash(page)};" in csp
        assert page.styles[0].strip() == (TEMPLATES / "page.css").read_text().strip()


SECURITY_HEADERS = {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
                    "Cache-Control": "no-store", "Content-Type": "text/html; charset=utf-8"}


@pytest.mark.parametrize("make", [render, render_error, render_signup, render_forgot])
def test_every_page_carries_the_security_headers(make):
    pages = Pages(form_targets=["https://app.example.test"])
    resp, _, _ = make(pages=pages)
    assert {k: resp.headers[k] for k in SECURITY_HEADERS} == SECURITY_HEADERS
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Content-Security-Policy"] == pages.headers["Content-Security-Policy"]
    csp = pages.headers["Content-Security-Policy"]
    assert dict(pages.headers) == {**SECURITY_HEADERS, "Content-Security-Policy": csp}
    with pytest.raises(TypeError):
        pages.headers["X-Frame-Options"] = "ALLOW"   # type: ignore[index]


@pytest.mark.parametrize("make", [render, render_error, render_signup, render_forgot])
def test_the_page_loads_nothing_from_elsewhere(make):
    _, html, page = make(pages=Pages(form_targets=["https://app.example.test"]))
    assert not re.search(r"https?:|//[a-z]", html, re.IGNORECASE)
    urls = [v for _, attrs in page.tags for k, v in attrs.items() if k in ("href", "action", "src")]
    assert all(url == "data:," or (url or "").startswith("/") and not (url or "").startswith("//") for url in urls)
    assert page.one("link") == {"rel": "icon", "href": "data:,"}   # the only link: no stylesheet, no font


def test_form_targets_join_form_action_once_each_in_order():
    pages = Pages(form_targets=["https://app.example.test", "http://127.0.0.1:8080", "https://[::1]:8443",
                                "https://app.example.test"])
    assert ("; form-action 'self' https://app.example.test http://127.0.0.1:8080 https://[::1]:8443; "
            in pages.headers["Content-Security-Policy"])


@pytest.mark.parametrize("target", ["https://app.example.test/", "https://app.example.test/path", "app.example.test",
                                    "https://a.test; script-src *", "https://a.test 'unsafe-inline'", "https://a.test'",
                                    "https://a.test\n", "*", "https://*.example.test", "'self'", "javascript:alert(1)",
                                    "ftp://a.test", "data:", "", "https://", "https://a.test:x"])
def test_a_form_target_that_is_not_an_origin_is_refused(target):
    with pytest.raises(ValueError, match="origin"):
        Pages(form_targets=[target])


def test_form_targets_as_one_string_is_refused():
    with pytest.raises(ValueError):
        Pages(form_targets="https://app.example.test")


# --- URL checks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", NOT_LOCAL)
@pytest.mark.parametrize("field", ["action", "start_url", "signup_url", "forgot_url", "sign_in_url"])
def test_a_url_that_is_not_a_local_path_is_refused(field, url):
    pages = Pages()
    with pytest.raises(ValueError, match="single '/'"):
        if field == "sign_in_url":
            pages.error(status=400, title="t", reason="r", sign_in_url=url)
        elif field == "start_url":
            pages.sign_in(replace(VIEW, buttons=(ProviderButton("corp", "Corp", url),)))
        else:
            pages.sign_in(replace(VIEW, **{field: url}))


# --- the error page ---------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [400, 401, 403, 429, 500, 503])
def test_error_page_has_the_status_the_title_the_reason_and_a_way_back(status):
    resp, _, page = render_error(status=status, title="Sign-in failed", reason="The state did not match.")
    assert resp.status == status
    assert page.texts("title") == page.texts("h1") == ["Sign-in failed"]
    assert "The state did not match." in page.texts("p")
    assert page.one("a", class_="button primary")["href"] == "/auth/login?rd=%2Fdashboard"
    assert page.texts("a") == ["Back to sign in"]
    assert "Request ID: req-42" in page.texts("p")
    assert_inert(page)


def test_error_page_without_request_id_has_no_small_print():
    _, html, page = render_error(request_id=None)
    assert not page.find("p", class_="small") and "Request ID" not in html


# --- the sign-in page's notice ------------------------------------------------------------------------

def test_the_notice_is_a_status_above_the_form_and_absent_by_default():
    _, _, page = render(replace(FULL, notice="Your account was created. Sign in below."))
    status = page.one("p", role="status")
    assert "class" not in status and page.texts("p")[0] == "Your account was created. Sign in below."
    order = [tag for tag, attrs in page.tags if tag == "form" or attrs.get("role") in ("status", "alert")]
    assert order == ["p", "p", "form"]   # the notice, then the error, then the form
    _, _, quiet = render(FULL)
    assert not quiet.find("p", role="status")


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_notice_is_only_ever_text(value):
    _, html, page = render(replace(FULL, notice=value))
    assert_inert(page)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert page.texts("p")[0] == shown(value).strip()


# --- the signup page ------------------------------------------------------------------------------------

def test_signup_page_is_a_form_of_username_email_and_new_password():
    resp, html, page = render_signup()
    assert resp.status == 200 and html.startswith("<!doctype html>\n")
    assert page.texts("title") == page.texts("h1") == ["Create an account"]
    form = page.one("form")
    assert form["method"] == "post" and form["action"] == "/auth/signup" and "enctype" not in form
    assert page.one("input", name="csrf_token") == {"type": "hidden", "name": "csrf_token", "value": "csrf-123"}
    assert page.one("input", name="rd") == {"type": "hidden", "name": "rd", "value": "/dashboard"}
    username = page.one("input", name="username")
    assert (username["type"], username["autocomplete"], username["value"]) == ("text", "username", "dave")
    assert "required" in username
    email = page.one("input", name="email")
    assert (email["type"], email["autocomplete"], email["value"]) == ("email", "email", "dave@example.test")
    assert "required" not in email   # optional
    password = page.one("input", name="password")
    assert (password["type"], password["autocomplete"]) == ("password", "new-password")
    assert "required" in password and "value" not in password   # a password is never sent back
    assert page.one("button")["type"] == "submit" and page.texts("button") == ["Create account"]
    assert page.one("a")["href"] == "/auth/login?rd=%2Fdashboard"
    assert_inert(page)


def test_signup_fields_have_labels_bound_to_their_ids():
    _, _, page = render_signup()
    ids = [attrs["id"] for _, attrs in page.tags if "id" in attrs]
    assert len(ids) == len(set(ids))
    labelled = [label["for"] for label in page.find("label")]
    assert labelled == ["username", "email", "password"]
    assert [i["id"] for i in page.find("input") if i.get("type") != "hidden"] == labelled
    assert page.texts("label")[0] == "Username" and page.texts("label")[2] == "Password"
    assert page.texts("label")[1].startswith("E-mail") and "optional" in page.texts("label")[1]


def test_signup_error_is_an_alert_the_fields_point_at():
    _, _, page = render_signup()
    alert = page.one("p", role="alert")
    assert page.texts("p")[0] == "This username is taken."
    assert all(page.one("input", name=n)["aria-describedby"] == alert["id"] for n in ("username", "email", "password"))
    _, _, quiet = render_signup(SIGNUP)
    assert not quiet.find("p", role="alert") and "aria-describedby" not in quiet.attr_names
    assert quiet.one("input", name="username")["value"] == "" and quiet.one("input", name="email")["value"] == ""


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["username", "email", "rd", "csrf_token", "error"])
def test_hostile_values_on_the_signup_page_are_only_ever_text(field, value):
    _, html, page = render_signup(replace(SIGNUP_FULL, **{field: value}))
    assert_inert(page)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    if field == "error":
        assert page.texts("p")[0] == shown(value).strip()
    else:
        assert page.one("input", name=field)["value"] == shown(value)


# --- the forgot-password page ---------------------------------------------------------------------------

def test_forgot_page_is_an_email_form_with_a_way_back():
    resp, _, page = render_forgot(FORGOT)
    assert resp.status == 200
    assert page.texts("title") == page.texts("h1") == ["Reset your password"]
    form = page.one("form")
    assert form["method"] == "post" and form["action"] == "/auth/forgot-password" and "enctype" not in form
    assert page.one("input", name="csrf_token") == {"type": "hidden", "name": "csrf_token", "value": "csrf-123"}
    assert page.one("input", name="rd") == {"type": "hidden", "name": "rd", "value": "/dashboard"}
    email = page.one("input", name="email")
    assert (email["type"], email["autocomplete"], email["value"]) == ("email", "email", "")
    assert "required" in email and email["aria-describedby"] == "hint"
    assert [label["for"] for label in page.find("label")] == ["email"] and page.texts("label") == ["E-mail"]
    assert page.one("button")["type"] == "submit"
    assert page.one("a")["href"] == "/auth/login?rd=%2Fdashboard" and page.texts("a") == ["Back to sign in"]
    assert not page.find("p", role="alert") and SENT not in page.texts("p")
    assert_inert(page)


def test_forgot_error_is_an_alert_the_field_points_at():
    _, _, page = render_forgot()
    alert = page.one("p", role="alert")
    assert page.texts("p")[0] == "An e-mail address looks like name@example.com."
    assert alert["id"] in (page.one("input", name="email")["aria-describedby"] or "").split()
    assert page.one("input", name="email")["value"] == "dave@example.test"


def test_forgot_answer_says_one_sentence_and_shows_no_form_nor_the_address():
    _, html, page = render_forgot(replace(FORGOT_FULL, sent=True, error=None))
    assert page.one("p", role="status") is not None and page.texts("p") == [SENT]
    assert not page.find("form") and not page.find("input") and "dave@example.test" not in html
    assert page.one("a", class_="button primary")["href"] == "/auth/login?rd=%2Fdashboard"
    assert_inert(page)


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", ["email", "rd", "csrf_token", "error"])
def test_hostile_values_on_the_forgot_page_are_only_ever_text(field, value):
    _, html, page = render_forgot(replace(FORGOT_FULL, **{field: value}))
    assert_inert(page)
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    if field == "error":
        assert page.texts("p")[0] == shown(value).strip()
    else:
        assert page.one("input", name=field)["value"] == shown(value)


# --- the account pages' URLs ----------------------------------------------------------------------------

ACCOUNT_PAGES = {"signup": (render_signup, SIGNUP_FULL), "forgot": (render_forgot, FORGOT_FULL),
                 "forgot-sent": (render_forgot, replace(FORGOT_FULL, sent=True))}


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("field", ["action", "sign_in_url"])
@pytest.mark.parametrize("which", sorted(ACCOUNT_PAGES))
def test_hostile_paths_stay_inside_their_attribute_on_the_account_pages(which, field, path):
    make, view = ACCOUNT_PAGES[which]
    _, html, page = make(replace(view, **{field: path}))
    assert_inert(page)
    assert "<script" not in html
    if which != "forgot-sent" or field == "sign_in_url":   # the answer has no form, so no action
        assert path in [attrs.get("href") or attrs.get("action") for _, attrs in page.tags]


@pytest.mark.parametrize("url", NOT_LOCAL)
@pytest.mark.parametrize("field", ["action", "sign_in_url"])
@pytest.mark.parametrize("which", sorted(ACCOUNT_PAGES))
def test_an_account_page_url_that_is_not_a_local_path_is_refused(which, field, url):
    make, view = ACCOUNT_PAGES[which]
    with pytest.raises(ValueError, match="single '/'"):
        make(replace(view, **{field: url}))


# --- looks --------------------------------------------------------------------------------------------

def luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colours_meet_wcag_aa_contrast(scheme):
    css = (TEMPLATES / "page.css").read_text()
    light, _, dark = css.partition("@media (prefers-color-scheme: dark)")
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", light if scheme == "light" else dark))
    text = [("fg", "bg"), ("fg", "card"), ("muted", "card"), ("accent", "card"), ("accent-fg", "accent"),
            ("accent-fg", "accent-hover"), ("error", "error-bg")]   # text: 4.5:1 (1.4.3)
    edges = [("field", "card"), ("focus", "card"), ("focus", "bg")]            # controls, focus: 3:1 (1.4.11)
    assert all(contrast(colours[a], colours[b]) >= 4.5 for a, b in text), scheme
    assert all(contrast(colours[a], colours[b]) >= 3 for a, b in edges), scheme


def test_the_stylesheet_is_short_with_visible_focus_and_narrow_width_support():
    css = (TEMPLATES / "page.css").read_text()
    assert len(css.splitlines()) < 80
    assert ":focus-visible" in css and "outline" in css and "max-width" in css and "width: 100%" in css
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
