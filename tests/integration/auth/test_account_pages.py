"""The signup and forgot-password pages (HTML, JavaScript off) over real sockets, on the embedded store and
on a real Redis, with a real SMTP server: the links of the sign-in page, the forms' CSRF double submit,
an account created through the form, its refusals in words, and the one answer of the forgot-password form."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp.test_utils import unused_port

from gateway.auth.accounts.remote import CredentialsUsers
from gateway.auth.accounts.resets import RESET_SUBJECT
from gateway.auth.oauth.forms import FORM_COOKIE
from tests.integration.auth import test_account_routes as accounts_shared, test_auth_routes as shared
from tests.integration.auth.test_account_routes import NEW_PASSWORD, MakeAccounts, mail_with_subject, settled
from tests.integration.auth.test_auth_routes import PASSWORD, Auth, error_code
from tests.integration.smtpserver import SmtpServer, smtp_server
from tests.unit.auth.oauth.test_pages import Page

# The shared fixtures, by name: pytest finds fixtures among a module's globals.
backend, make_auth, store_url = shared.backend, shared.make_auth, shared.store_url
accounts, make_accounts = accounts_shared.accounts, accounts_shared.make_accounts
__all__ = ["smtp_server"]

pytestmark = pytest.mark.integration

CREATED = "Your account was created. Sign in below."
SENT = "If an account has this address, a link to reset the password is on its way."
FORM = "application/x-www-form-urlencoded"


async def open_page(auth: Auth, path: str, **query: str) -> tuple[Page, str]:
    """GET a page: the page (parsed) and its CSRF token, checked to be both the hidden field and the cookie."""
    resp = await auth.client.get(f"{auth.cfg.auth.prefix}/{path}", params=query)
    assert resp.status == 200 and resp.content_type == "text/html", await resp.text()
    cookie = resp.cookies[FORM_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == f"/auth/{path}"
    page = Page(await resp.text())
    assert page.one("input", name="csrf_token")["value"] == cookie.value
    return page, cookie.value


async def post_form(auth: Auth, path: str, token: str | None, cookie: str | None = None,
                    **fields: str) -> aiohttp.ClientResponse:
    """The page's form post: the token in the field and (``cookie``, by default the same) in the cookie."""
    cookie = token if cookie is None else cookie
    headers = {"Cookie": f"{FORM_COOKIE}={cookie}"} if cookie else {}
    data = {**({"csrf_token": token} if token is not None else {}), **fields}
    return await auth.client.post(f"{auth.cfg.auth.prefix}/{path}", data=data, headers=headers,
                                  allow_redirects=False)


async def sign_up(auth: Auth, **fields: str) -> aiohttp.ClientResponse:
    _, token = await open_page(auth, "signup", rd="/after")
    return await post_form(auth, "signup", token, **{"username": "dave", "password": NEW_PASSWORD, "rd": "/after",
                                                     **fields})


def links(page: Page) -> list[str | None]:
    return [a["href"] for a in page.find("a") if a.get("class") is None]


async def html_of(resp: aiohttp.ClientResponse) -> Page:
    assert resp.content_type == "text/html"
    return Page(await resp.text())


# --- the pages and the sign-in page's links -----------------------------------------------------------

async def test_the_sign_in_page_links_to_signup_and_forgot_password(accounts: Auth) -> None:
    page, _ = await open_page(accounts, "login", rd="/after")
    assert links(page) == ["/auth/forgot-password?rd=%2Fafter", "/auth/signup?rd=%2Fafter"]
    assert page.texts("a")[-2:] == ["Forgot your password?", "Create an account"]


async def test_without_signup_only_the_forgot_password_link_and_no_signup_page(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(signup=False)
    page, _ = await open_page(auth, "login")
    assert links(page) == ["/auth/forgot-password?rd=%2F"]
    resp = await auth.client.get("/auth/signup")
    assert resp.status == 404 and await error_code(resp) == "no_route"   # as a path nothing serves
    await open_page(auth, "forgot-password")


async def test_accounts_kept_elsewhere_get_no_links_and_html_404_pages(accounts: Auth) -> None:
    accounts.gw.users = CredentialsUsers(f"http://127.0.0.1:{unused_port()}/check")
    page, _ = await open_page(accounts, "login")
    assert links(page) == [] and not page.find("p", class_="links")
    for path in ("signup", "forgot-password"):
        resp = await accounts.client.get(f"/auth/{path}")
        assert resp.status == 404 and [a["href"] for a in (await html_of(resp)).find("a")] == ["/auth/login"]
        posted = await post_form(accounts, path, "x" * 43, username="dave", password=NEW_PASSWORD, email="a@b.test")
        assert posted.status == 404 and posted.content_type == "text/html"


async def test_without_the_sign_in_page_there_are_no_account_pages(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(sign_in_page=False)
    for path in ("signup", "forgot-password"):
        resp = await auth.client.get(f"/auth/{path}")
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        posted = await post_form(auth, path, "x" * 43, username="dave", password=NEW_PASSWORD, email="a@b.test")
        assert posted.status == 400 and await error_code(posted) == "json_required"


async def test_the_signup_page_carries_an_allowed_rd_and_replaces_another(accounts: Auth) -> None:
    page, _ = await open_page(accounts, "signup", rd="/after")
    assert page.one("input", name="rd")["value"] == "/after"
    assert page.one("a")["href"] == "/auth/login?rd=%2Fafter"
    page, _ = await open_page(accounts, "signup", rd="https://evil.test/")
    assert page.one("input", name="rd")["value"] == "/"
    page, _ = await open_page(accounts, "forgot-password", rd="//evil.test")
    assert page.one("input", name="rd")["value"] == "/"


# --- signup through the form --------------------------------------------------------------------------

async def test_a_form_signup_creates_the_account_and_goes_to_the_sign_in_page_with_the_notice(accounts: Auth) -> None:
    resp = await sign_up(accounts, email="dave@example.test")
    assert resp.status == 302 and resp.headers["Location"] == "/auth/login?created=1&rd=%2Fafter"
    assert resp.headers["Cache-Control"] == "no-store" and not resp.cookies   # nobody is signed in yet
    record = await accounts.gw.users.get("dave")
    assert record is not None and record.roles == ("user",) and record.email == "dave@example.test"
    page, _ = await open_page(accounts, "login", created="1", rd="/after")
    assert page.texts("p")[0] == CREATED and page.one("p", role="status") is not None
    assert page.one("input", name="rd")["value"] == "/after"
    assert (await accounts.login("dave", NEW_PASSWORD)).status == 200


async def test_a_form_signup_without_an_email_and_with_the_configured_roles(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(default_roles=["member"])
    assert (await sign_up(auth, email="")).status == 302
    record = await auth.gw.users.get("dave")
    assert record is not None and record.email is None and record.roles == ("member",)


@pytest.mark.parametrize("created", ["", "0", "yes", "<script>alert(1)</script>", "1 "])
async def test_the_notice_is_shown_only_for_the_flag_and_is_never_text_from_the_query(accounts: Auth,
                                                                                      created: str) -> None:
    resp = await accounts.client.get("/auth/login", params={"created": created})
    html = await resp.text()
    assert resp.status == 200 and CREATED not in html and "<script>alert" not in html


@pytest.mark.parametrize("case", ["no field", "no cookie", "wrong field", "neither", "a pair not of the page"])
async def test_a_form_signup_without_the_pages_token_creates_nothing(accounts: Auth, case: str) -> None:
    _, token = await open_page(accounts, "signup")
    field, cookie = {"no field": (None, token), "no cookie": (token, ""), "wrong field": ("y" * 43, token),
                     "neither": (None, ""), "a pair not of the page": ("abc", "abc")}[case]
    resp = await post_form(accounts, "signup", field, cookie, username="dave", password=NEW_PASSWORD)
    assert resp.status == 400 and "Location" not in resp.headers
    page = await html_of(resp)
    assert page.texts("p")[0] == "The form expired. Please try again."
    assert page.one("input", name="username")["value"] == ""   # a post we cannot trust fills in nothing
    assert await accounts.gw.users.get("dave") is None


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x"])
async def test_other_form_types_keep_the_json_required_refusal(accounts: Auth, content_type: str) -> None:
    for path in ("signup", "forgot-password"):
        resp = await accounts.post(path, data=json.dumps({"username": "dave", "password": NEW_PASSWORD,
                                                          "email": "alice@example.test"}),
                                   headers={"Content-Type": content_type})
        assert resp.status == 400 and await error_code(resp) == "json_required"
    assert await accounts.gw.users.get("dave") is None


@pytest.mark.parametrize("password, reason", [("short1!", "The password must have at least"),
                                              ("iloveyou", "among the most common ones"),
                                              ("Dave.Smith", "must not be the username")])
async def test_a_weak_password_shows_the_form_again_with_the_reason(accounts: Auth, password: str,
                                                                    reason: str) -> None:
    resp = await sign_up(accounts, username="dave.smith", email="dave.smith@example.test", password=password)
    assert resp.status == 400
    page = await html_of(resp)
    alert = page.one("p", role="alert")
    assert reason in page.texts("p")[0] and alert["id"] == "error"
    assert page.one("input", name="username")["value"] == "dave.smith"
    assert page.one("input", name="email")["value"] == "dave.smith@example.test"
    assert "value" not in page.one("input", name="password") and password not in await resp.text()
    assert await accounts.gw.users.get("dave.smith") is None


async def test_a_taken_username_shows_the_form_again_with_409(accounts: Auth) -> None:
    resp = await sign_up(accounts, username="alice")
    assert resp.status == 409
    assert (await html_of(resp)).texts("p")[0] == "This username is taken. Please choose another one."
    assert (await accounts.login("alice", PASSWORD)).status == 200   # the account is untouched


@pytest.mark.parametrize("fields, words", [({"username": "has space"}, "A username is 1-64 characters"),
                                           ({"email": "not-an-address"}, "An e-mail address looks like"),
                                           ({"username": ""}, "Username is missing.")])
async def test_an_invalid_username_or_email_shows_the_form_again_with_400(accounts: Auth, fields: dict[str, str],
                                                                          words: str) -> None:
    resp = await sign_up(accounts, **fields)
    assert resp.status == 400
    assert (await html_of(resp)).texts("p")[0].startswith(words)
    assert await accounts.gw.users.get("dave") is None


async def test_form_signups_share_the_signup_rate_limit(make_accounts: MakeAccounts) -> None:
    auth = await make_accounts(rate_limits={"signup": "2/min"})
    assert [(await sign_up(auth, username=f"user{i}")).status for i in range(2)] == [302, 302]
    resp = await sign_up(auth, username="user9")
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await html_of(resp)).texts("p")[0].startswith("Too many attempts")
    json_signup = await auth.post("signup", json={"username": "user10", "password": NEW_PASSWORD})
    assert json_signup.status == 429
    assert await auth.gw.users.get("user9") is None


# --- forgot-password through the form -----------------------------------------------------------------

async def test_the_forgot_password_form_says_the_same_whoever_has_the_address(accounts: Auth,
                                                                             smtp_server: SmtpServer) -> None:
    answers = []
    for email in ("nobody@example.test", "ALICE@example.test"):
        _, token = await open_page(accounts, "forgot-password", rd="/after")
        resp = await post_form(accounts, "forgot-password", token, email=email, rd="/after")
        shown = await html_of(resp)
        answers.append((resp.status, shown.texts("p"), [a["href"] for a in shown.find("a")]))
        assert email not in await resp.text() and not shown.find("form")
    assert answers[0] == answers[1] == (200, [SENT], ["/auth/login?rd=%2Fafter"])
    mail = await mail_with_subject(smtp_server, RESET_SUBJECT, after=0)
    assert mail["To"] == "alice@example.test"
    await settled(accounts)
    assert [m["To"] for m in smtp_server.messages] == ["alice@example.test"]


async def test_the_forgot_password_form_without_the_pages_token_sends_nothing(accounts: Auth,
                                                                             smtp_server: SmtpServer) -> None:
    resp = await post_form(accounts, "forgot-password", "x" * 43, "y" * 43, email="alice@example.test")
    assert resp.status == 400
    page = await html_of(resp)
    assert page.texts("p")[0] == "The form expired. Please try again." and page.find("form")
    await settled(accounts)
    assert smtp_server.messages == []


async def test_a_malformed_address_shows_the_forgot_form_again(accounts: Auth, smtp_server: SmtpServer) -> None:
    _, token = await open_page(accounts, "forgot-password")
    resp = await post_form(accounts, "forgot-password", token, email="not-an-address")
    assert resp.status == 400
    page = await html_of(resp)
    assert page.texts("p")[0].startswith("An e-mail address looks like")
    assert page.one("input", name="email")["value"] == "not-an-address"
    await settled(accounts)
    assert smtp_server.messages == []


async def test_forgot_password_forms_share_the_forgot_password_limits(make_accounts: MakeAccounts,
                                                                smtp_server: SmtpServer) -> None:
    auth = await make_accounts(rate_limits={"forgot_password": "1/min"})
    _, token = await open_page(auth, "forgot-password")
    first = await post_form(auth, "forgot-password", token, email="alice@example.test")
    again = await post_form(auth, "forgot-password", token, email="alice@example.test")
    assert (first.status, again.status) == (200, 429) and int(again.headers["Retry-After"]) >= 1
    await smtp_server.wait_for(1)

