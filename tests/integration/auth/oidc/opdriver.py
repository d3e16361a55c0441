"""A real OpenID Provider for the delegated-login tests, and a user who signs in at it by plain HTTP.

``start_op`` runs ``op/op.js`` (panva's certified ``oidc-provider``, pinned in ``op/package.json``; ``./dev.sh
test`` runs ``npm ci`` there) with Node on a free loopback port, waits until its discovery document answers
and hands back an ``OpenIdProvider``; ``stop()`` ends it by PID. ``sign_in_at_op`` and ``sign_out_at_op``
walk its development login, consent and logout pages as a browser would, and stop at the first redirect
that leaves the provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from loadtests.procs import Child, StartFailed, free_port, spawn, wait_ready

OP_DIR = Path(__file__).resolve().parent / "op"
READY_TIMEOUT_S = 20.0
MIN_NODE = (20, 18)   # oidc-provider 9 uses crypto.hash (Node 20.12) and URL.parse (20.18); it asks for 22 but runs
ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=15)
MAX_STEPS = 12   # requests of one sign-in or sign-out at the provider (a first sign-in takes 7)

CLIENT_ID = "tokengate-test"           # client_secret_basic, or start_op(auth_method=...)
POST_CLIENT_ID = "tokengate-post"      # client_secret_post
PUBLIC_CLIENT_ID = "tokengate-public"  # token_endpoint_auth_method none: PKCE only

# op.js's accounts (the sub of each is its name): what a test may expect in an ID token with the scopes
# openid email profile groups. bob's address is unverified and he has no groups claim; dave's is a string.
# Any other name signs in as an account with no claim but its sub.
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.test", "email_verified": True, "name": "Alice Example",
              "groups": ["gateway-admins"]},
    "bob": {"email": "bob@example.test", "email_verified": False, "name": "Bob Example"},
    "carol": {"email": "carol@example.test", "email_verified": True, "name": "Carol Example",
              "groups": ["staff", "other"]},
    "dave": {"email": "dave@example.test", "email_verified": True, "name": "Dave Example", "groups": "staff"},
}


class OpPageError(AssertionError):
    """The provider answered a page that is neither a redirect nor a form the driver knows (its error page:
    an unregistered redirect_uri, a missing code_challenge ...). ``error`` and ``description`` are the
    OAuth error and its description when the page names them."""

    def __init__(self, url: URL, status: int, error: str | None, description: str | None) -> None:
        super().__init__(f"the provider answered {status} at {url.with_query(None)}: {error}: {description}")
        self.url, self.status, self.error, self.description = url, status, error, description


@dataclass
class OpenIdProvider:
    """A running op.js. ``client_secret`` is the secret of ``tokengate-test`` and ``tokengate-post``."""

    child: Child
    port: int
    client_secret: str = field(repr=False)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    def log(self) -> str:
        return self.child.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        return self.child.stop()

    async def _admin(self, method: str, path: str, body: Mapping[str, Any]) -> Any:
        async with aiohttp.ClientSession(timeout=ADMIN_TIMEOUT) as http, \
                http.request(method, self.url(path), json=body) as resp:
            if resp.status >= 300:
                raise AssertionError(f"{method} {path} at the test OP: {resp.status} {await resp.text()}")
            return await resp.json() if resp.status == 200 else None

    async def discovery(self) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=ADMIN_TIMEOUT) as http, \
                http.get(self.url("/.well-known/openid-configuration")) as resp:
            resp.raise_for_status()
            return dict(await resp.json())

    async def allow_redirect_uris(self, redirect_uris: Iterable[str] = (),
                                  post_logout_redirect_uris: Iterable[str] = ()) -> None:
        """Register exact URIs with every client (added to those already there; no wildcard)."""
        await self._admin("POST", "/test/redirect-uris", {"redirect_uris": list(redirect_uris),
                                                          "post_logout_redirect_uris": list(post_logout_redirect_uris)})

    async def rotate_keys(self, *, retire: bool = False) -> str:
        """A new signing key, whose kid the ID tokens carry from now on; the old keys stay in the JWKS
        (verification only) unless ``retire``. Returns the new kid."""
        return str((await self._admin("POST", "/test/rotate-keys", {"retire": retire}))["kid"])

    async def set_account(self, name: str, claims: Mapping[str, Any]) -> None:
        """Add or replace the account ``name`` (its sub) with these claims (email, email_verified, groups ...)."""
        await self._admin("PUT", f"/test/accounts/{name}", dict(claims))


def start_op(workdir: Path, *, redirect_uris: Iterable[str] = (), post_logout_redirect_uris: Iterable[str] = (),
             auth_method: str = "client_secret_basic", accounts: Mapping[str, Mapping[str, Any]] | None = None,
             name: str = "oidc-op") -> OpenIdProvider:
    """Start op.js on a free loopback port (its log: WORKDIR/NAME.log) and wait until its discovery document
    answers; the caller stops it (``stop()``). ``auth_method``: tokengate-test's token_endpoint_auth_method;
    ``accounts``: added to (or replacing) the default ACCOUNTS."""
    node = shutil.which("node")
    if node is None:
        raise StartFailed("node is missing: ./dev.sh test installs Debian's nodejs and npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    if tuple(int(part) for part in version.lstrip("v").split(".")[:2]) < MIN_NODE:
        raise StartFailed(f"node is {version}: the test OP (oidc-provider 9) needs Node 20.18 or newer")
    if not (OP_DIR / "node_modules" / "oidc-provider").is_dir():
        raise StartFailed(f"{OP_DIR}/node_modules is missing: ./dev.sh test runs `npm ci` there")
    secret = secrets.token_urlsafe(24)
    env = {"OP_CLIENT_SECRET": secret, "OP_AUTH_METHOD": auth_method, "OP_REDIRECT_URIS": " ".join(redirect_uris),
           "OP_POST_LOGOUT_REDIRECT_URIS": " ".join(post_logout_redirect_uris)}
    if accounts:
        env["OP_ACCOUNTS"] = json.dumps(accounts)
    port = free_port()
    child = spawn(name, [node, str(OP_DIR / "op.js"), "--port", str(port)], workdir, env=env)
    try:
        wait_ready(child, port, "/.well-known/openid-configuration", want=200, timeout_s=READY_TIMEOUT_S)
    except BaseException:
        child.stop()
        raise
    return OpenIdProvider(child, port, secret)


def user_agent(*secure_origins: str, timeout_s: float = 20.0) -> aiohttp.ClientSession:
    """A client session that keeps cookies as a browser does on loopback: for IP hosts too (aiohttp's jar
    drops them unless ``unsafe``), and sends ``Secure`` cookies over http to ``secure_origins`` (browsers
    treat http://127.0.0.1 as a secure context; aiohttp only the origins named). The caller closes it."""
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=list(secure_origins) or None)
    return aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=timeout_s))


@dataclass
class _Form:
    action: str
    method: str
    id: str | None
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    """The forms of a page: action, method, id and the named inputs' values; <pre id=...> texts (the
    test OP's error page: error, error_description)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []
        self.pre: dict[str, str] = {}
        self._pre_id: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("action", ""), a.get("method", "get").lower(), a.get("id")))
        elif tag == "input" and self.forms and "name" in a:
            self.forms[-1].fields[a["name"]] = a.get("value", "")
        elif tag == "pre" and "id" in a:
            self._pre_id = a["id"]
            self.pre[self._pre_id] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre_id = None

    def handle_data(self, data: str) -> None:
        if self._pre_id is not None:
            self.pre[self._pre_id] += data


def _page(html: str) -> _Forms:
    parser = _Forms()
    parser.feed(html)
    parser.close()
    return parser


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _check_jar(http: aiohttp.ClientSession) -> None:
    jar = http.cookie_jar
    if isinstance(jar, aiohttp.CookieJar) and not jar.unsafe:
        raise ValueError("the provider is on 127.0.0.1: give a session whose CookieJar has unsafe=True "
                         "(opdriver.user_agent()), or it drops the provider's cookies")


async def sign_in_at_op(http: aiohttp.ClientSession, authorization_url: str | URL, account: str, *,
                        password: str = "any password", cancel: bool = False) -> URL:
    """Sign ``account`` in at the test OP as a browser would, and return where the OP sends the browser back.

    ``authorization_url`` is the provider's authorization URL with its query (where a gateway's
    ``/oauth/{provider}/start`` redirects). ``http`` is the user's browser: its cookie jar carries the OP's
    session, so a second sign-in with the same jar finds the user signed in and skips the login page (its
    jar must keep cookies of IP hosts: ``user_agent()``).

    The walk, every request with ``allow_redirects=False``: GET the authorization URL; follow each redirect
    (302/303) that stays on the provider's origin (scheme, host, port of ``authorization_url``); on the
    development login page (its form's hidden ``prompt=login``) POST ``prompt=login``, ``login=account``
    and ``password`` to the form's action; on the consent page (``prompt=consent``) POST ``prompt=consent``
    (which grants every scope and claim asked for). With ``cancel``, the first of these pages is left by its
    Cancel link instead (the OP then answers ``error=access_denied`` to the client).

    Returns the first redirect target that leaves the provider (normally the client's ``redirect_uri`` with
    ``code``, ``state`` and ``iss``; or ``error`` and ``state``), WITHOUT requesting it. Raises OpPageError
    when the provider answers anything else (its error page: an unregistered ``redirect_uri``, a missing
    PKCE challenge, an unknown client ...), and AssertionError after MAX_STEPS requests.
    """
    _check_jar(http)
    start = URL(str(authorization_url))
    url, data = start, None
    for _ in range(MAX_STEPS):
        method = "POST" if data is not None else "GET"
        async with http.request(method, url, data=data, allow_redirects=False) as resp:
            status, location, body = resp.status, resp.headers.get("Location"), await resp.text()
        data = None
        if status in (302, 303) and location:
            target = url.join(URL(location))
            if not _same_origin(target, start):
                return target
            url = target
            continue
        page = _page(body)
        form = next((f for f in page.forms if f.fields.get("prompt") in ("login", "consent")), None)
        if status != 200 or form is None:
            raise OpPageError(url, status, page.pre.get("error"), page.pre.get("error_description"))
        if cancel:
            url = url.join(URL(form.action)) / "abort"   # the page's [ Cancel ] link: /interaction/{uid}/abort
            continue
        url = url.join(URL(form.action))
        data = {"prompt": "login", "login": account, "password": password} if form.fields["prompt"] == "login" \
            else {"prompt": "consent"}
    raise AssertionError(f"no redirect off the provider after {MAX_STEPS} requests (last: {url.with_query(None)})")


async def sign_out_at_op(http: aiohttp.ClientSession, end_session_url: str | URL, *, confirm: bool = True) -> URL:
    """RP-initiated logout at the test OP as a browser would; return where it ends.

    GET ``end_session_url`` (the provider's end_session_endpoint with ``id_token_hint``, ``client_id``,
    ``post_logout_redirect_uri`` ..., as a gateway's logout redirects there), following redirects on the
    provider's origin; on its "Do you want to sign out?" page POST the form (its hidden ``xsrf``) with
    ``logout=yes`` (without it when not ``confirm``: the user stays signed in at the OP).

    Returns the first redirect target that leaves the provider (the ``post_logout_redirect_uri``, with
    ``state`` when one was given), WITHOUT requesting it; or, when the provider ends on its own "signed out"
    page (no post_logout_redirect_uri), that page's URL. Raises OpPageError on its error page.
    """
    _check_jar(http)
    start = URL(str(end_session_url))
    url, data = start, None
    for _ in range(MAX_STEPS):
        method = "POST" if data is not None else "GET"
        async with http.request(method, url, data=data, allow_redirects=False) as resp:
            status, location, body = resp.status, resp.headers.get("Location"), await resp.text()
        data = None
        if status in (302, 303) and location:
            target = url.join(URL(location))
            if not _same_origin(target, start):
                return target
            url = target
            continue
        page = _page(body)
        form = next((f for f in page.forms if f.id == "op.logoutForm"), None)
        if status == 200 and form is not None:
            url = url.join(URL(form.action))
            data = {**form.fields, **({"logout": "yes"} if confirm else {})}
            continue
        if status == 200 and 'id="signed-out"' in body:
            return url
        raise OpPageError(url, status, page.pre.get("error"), page.pre.get("error_description"))
    raise AssertionError(f"no end of the logout after {MAX_STEPS} requests (last: {url.with_query(None)})")



@dataclass(frozen=True)
class AuthRequest:
    """An authorization code request with PKCE (S256), as a relying party makes one: ``url`` to send the
    browser to; ``state``, ``nonce`` and ``code_verifier`` to check the answer and redeem the code with."""

    url: URL
    redirect_uri: str
    state: str
    nonce: str
    code_verifier: str = field(repr=False)


def auth_request(op: OpenIdProvider, redirect_uri: str, *, client_id: str = CLIENT_ID,
                 scope: str = "openid email profile groups", **extra: str) -> AuthRequest:
    """A fresh authorization request of ``client_id`` at ``op`` (``extra``: more query parameters)."""
    state, nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    url = URL(op.url("/auth")).with_query({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": scope,
        "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256", **extra})
    return AuthRequest(url, redirect_uri, state, nonce, verifier)
