"""A stand-in for github.com and api.github.com, which the tests cannot reach: an aiohttp app (serve it on
loopback with ``aiohttp_server(standin.app())``) that answers GitHub's OAuth app web flow and the two REST
calls a sign-in needs, in the shapes GitHub documents, and records what it received.

It follows these GitHub docs (docs.github.com, checked against the github/docs sources):
- "Authorizing OAuth apps", web application flow: ``GET /login/oauth/authorize`` (client_id, redirect_uri,
  login, scope space-delimited, state, code_challenge + code_challenge_method ``S256`` only, allow_signup,
  prompt) redirects back with ``code`` and ``state``; the code expires after 10 minutes. ``POST
  /login/oauth/access_token`` takes client_id, client_secret, code, redirect_uri and code_verifier and
  answers ``access_token``, ``scope`` (comma-separated, as the docs' example) and ``token_type: bearer``,
  as JSON with ``Accept: application/json``, XML with ``application/xml``, form-encoded otherwise. Its
  "Redirect URLs" rules: host (or a sub-domain of it) and port equal to the registered callback's, the path
  the callback's or below it; on a loopback callback (127.0.0.1, ::1) any port.
- "Troubleshooting authorization request errors": a refusal redirects with ``error`` (access_denied,
  redirect_uri_mismatch), ``error_description``, ``error_uri`` and ``state``.
- "Troubleshooting OAuth app access token request errors": ``{"error", "error_description", "error_uri"}``
  (incorrect_client_credentials, redirect_uri_mismatch, bad_verification_code) -- answered with status 200,
  as github.com does (the docs show only the bodies; the 200 is what clients log in bug reports).
- REST "Get the authenticated user" (``GET /user``, the private-user shape: ``id`` an integer, ``login``,
  ``email`` the public address or null, nulls and a nested ``plan``) and "List email addresses for the
  authenticated user" (``GET /user/emails``: ``[{email, primary, verified, visibility}]``, paginated by
  ``per_page`` (default 30, at most 100) and ``page`` with a ``Link`` header); both take
  ``Authorization: Bearer <token>`` or ``token <token>`` and answer 401 ``Bad credentials`` otherwise.

Not in the docs, so chosen here: HTTP Basic client authentication is accepted too (RFC 6749 2.3.1); a
PKCE mismatch answers ``bad_verification_code`` and a malformed PKCE request ``invalid_request``.

A test chooses who signs in (``standin.user``) and what goes wrong (``deny``, ``token_error``,
``user_status``, ``emails_status``), and reads ``authorizations``, ``token_requests`` and
``api_requests``. Nothing here is shared between tests: each builds its own stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from aiohttp import web

CODE_TTL_S = 600
DOCS = "https://docs.github.com"
_AUTHZ_ERRORS = "/apps/managing-oauth-apps/troubleshooting-authorization-request-errors/"
_TOKEN_ERRORS = "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/"
TOKEN_ERRORS = {   # error -> (error_description, error_uri) as "Troubleshooting ... token request errors" shows
    "incorrect_client_credentials": ("The client_id and/or client_secret passed are incorrect.",
                                     f"{DOCS}{_TOKEN_ERRORS}#incorrect-client-credentials"),
    "redirect_uri_mismatch": ("The redirect_uri MUST match the registered callback URL for this application.",
                              f"{DOCS}{_AUTHZ_ERRORS}#redirect-uri-mismatch2"),
    "bad_verification_code": ("The code passed is incorrect or expired.",
                              f"{DOCS}{_TOKEN_ERRORS}#bad-verification-code"),
    "unverified_user_email": ("The user must have a verified primary email.",
                              f"{DOCS}{_TOKEN_ERRORS}#unverified_user_email"),
}


def email(address: str, *, primary: bool = False, verified: bool = True) -> dict[str, Any]:
    """One entry of ``GET /user/emails``: visibility is "private" or "public" for the primary, else null."""
    return {"email": address, "primary": primary, "verified": verified, "visibility": "private" if primary else None}


@dataclass
class GithubUser:
    """Who signs in. ``public_email`` is the profile's ``email`` in ``GET /user`` (null unless made public)."""

    id: int = 123
    login: str = "octocat"
    name: str | None = "The Octocat"
    public_email: str | None = None
    emails: list[dict[str, Any]] = field(
        default_factory=lambda: [email("octocat@example.test", primary=True),
                                 email("123+octocat@users.noreply.github.com")])

    def profile(self, api: str) -> dict[str, Any]:
        """``GET /user``'s private-user answer (the example of "Get the authenticated user", values ours)."""
        users = f"{api}/users/{self.login}"
        return {"login": self.login, "id": self.id, "node_id": f"U_{self.id}", "avatar_url":
                f"https://avatars.githubusercontent.com/u/{self.id}?v=4", "gravatar_id": "", "url": users,
                "html_url": f"https://github.com/{self.login}", "followers_url": f"{users}/followers",
                "repos_url": f"{users}/repos", "type": "User", "user_view_type": "private", "site_admin": False,
                "name": self.name, "company": None, "blog": "", "location": None, "email": self.public_email,
                "hireable": None, "bio": None, "twitter_username": None, "public_repos": 2, "public_gists": 0,
                "followers": 1, "following": 0, "created_at": "2008-01-14T04:33:35Z",
                "updated_at": "2024-01-15T10:00:00Z", "private_gists": 0, "total_private_repos": 0,
                "owned_private_repos": 0, "disk_usage": 10, "collaborators": 0,
                "two_factor_authentication": True,
                "plan": {"name": "free", "space": 976562499, "private_repos": 10000, "collaborators": 0}}


@dataclass
class TokenRequest:
    """One ``POST /login/oauth/access_token``: its form, how the client authenticated, what it got back."""

    form: dict[str, str]
    client_auth: str | None          # "client_secret_post", "client_secret_basic" or None
    basic: tuple[str, str] | None    # the Basic header's (client_id, client_secret)
    accept: str
    status: int
    answer: dict[str, str]


@dataclass
class ApiRequest:
    path: str
    query: dict[str, str]
    authorization: str
    headers: dict[str, str]
    status: int


@dataclass
class _Grant:
    user: GithubUser
    redirect_uri: str
    challenge: str | None
    scopes: tuple[str, ...]
    expires_at: float


class GithubStandIn:
    """One registered OAuth app (``client_id``, ``client_secret``, ``callback_url``) and the user at the
    browser, who approves every authorization unless ``deny``."""

    def __init__(self, client_id: str, client_secret: str, callback_url: str) -> None:
        self.client_id, self.client_secret, self.callback_url = client_id, client_secret, callback_url
        self.url = ""                          # where it is served: set by whoever serves app()
        self.user = GithubUser()
        self.deny = False                      # the user presses Cancel: error=access_denied
        self.token_error: str | None = None    # the token endpoint answers this error (status 200)
        self.user_status: int | None = None    # GET /user answers this status
        self.emails_status: int | None = None  # GET /user/emails answers this status
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[TokenRequest] = []
        self.api_requests: list[ApiRequest] = []
        self.tokens: dict[str, tuple[GithubUser, tuple[str, ...]]] = {}
        self._grants: dict[str, _Grant] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        app.router.add_get("/user", self._user)
        app.router.add_get("/user/emails", self._emails)
        return app

    # -- github.com ---------------------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.authorizations.append(query)
        if query.get("client_id") != self.client_id:
            return web.Response(status=404, text="<h1>404</h1>", content_type="text/html")
        redirect_uri = query.get("redirect_uri") or self.callback_url
        back = {"state": query["state"]} if "state" in query else {}
        if not redirect_uri_allowed(redirect_uri, self.callback_url):
            return _redirect(self.callback_url, _refusal("redirect_uri_mismatch", "The redirect_uri MUST match the "
                             "registered callback URL for this application.", "redirect-uri-mismatch") | back)
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method")
        if (challenge is None) != (method is None) or (method is not None and method != "S256") \
                or (challenge is not None and len(challenge) != 43):
            return _redirect(redirect_uri, {"error": "invalid_request", "error_description":
                                            "code_challenge_method must be S256 with a 43-character challenge"} | back)
        if self.deny:
            return _redirect(redirect_uri, _refusal("access_denied", "The user has denied your application access.",
                                                    "access-denied") | back)
        code = secrets.token_hex(10)
        self._grants[code] = _Grant(self.user, query.get("redirect_uri", ""), challenge,
                                    tuple(query.get("scope", "").split()), time.monotonic() + CODE_TTL_S)
        return _redirect(redirect_uri, {"code": code} | back)

    async def _access_token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        basic = _basic_credentials(request.headers.get("Authorization", ""))
        client_auth = "client_secret_basic" if basic else "client_secret_post" if "client_secret" in form else None
        client_id, secret = basic if basic else (form.get("client_id"), form.get("client_secret"))
        answer = self._exchange(form, client_id, secret, both=basic is not None and "client_secret" in form)
        status = 200   # errors too: github.com answers them with 200
        accept = request.headers.get("Accept", "")
        self.token_requests.append(TokenRequest(form, client_auth, basic, accept, status, answer))
        if "application/json" in accept:
            return web.json_response(answer, status=status, content_type="application/json")
        if "application/xml" in accept:
            xml = "".join(f"<{k}>{v}</{k}>" for k, v in answer.items())
            return web.Response(status=status, text=f"<OAuth>{xml}</OAuth>", content_type="application/xml")
        return web.Response(status=status, text=urlencode(answer), content_type="application/x-www-form-urlencoded")

    def _exchange(self, form: dict[str, str], client_id: str | None, secret: str | None, *, both: bool
                  ) -> dict[str, str]:
        if both or client_id != self.client_id or secret is None \
                or not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            return _token_error("incorrect_client_credentials")
        grant = self._grants.pop(form.get("code", ""), None)   # a code is redeemed once
        if grant is None or time.monotonic() > grant.expires_at:
            return _token_error("bad_verification_code")
        redirect_uri = form.get("redirect_uri")
        if redirect_uri is not None and (not redirect_uri_allowed(redirect_uri, self.callback_url)
                                         or grant.redirect_uri and redirect_uri != grant.redirect_uri):
            return _token_error("redirect_uri_mismatch")
        if grant.challenge is not None and not _pkce_matches(form.get("code_verifier"), grant.challenge):
            return _token_error("bad_verification_code")
        if self.token_error is not None:
            return _token_error(self.token_error)
        token = "gho_" + secrets.token_hex(18)
        self.tokens[token] = (grant.user, grant.scopes)
        return {"access_token": token, "scope": ",".join(grant.scopes), "token_type": "bearer"}

    # -- api.github.com -----------------------------------------------------------------------------------

    async def _user(self, request: web.Request) -> web.Response:
        user = self._caller(request, self.user_status)
        if isinstance(user, web.Response):
            return user
        api = f"{request.scheme}://{request.host}"
        return self._answer(request, 200, user.profile(api))

    async def _emails(self, request: web.Request) -> web.Response:
        user = self._caller(request, self.emails_status)
        if isinstance(user, web.Response):
            return user
        try:
            per_page = min(max(int(request.query.get("per_page", "30")), 1), 100)
            page = max(int(request.query.get("page", "1")), 1)
        except ValueError:
            return self._answer(request, 400, {"message": "Invalid request.", "status": "400"})
        pages = max(1, -(-len(user.emails) // per_page))
        headers = {}
        if pages > 1:
            base = f"{request.scheme}://{request.host}/user/emails?per_page={per_page}&page="
            rels = ([f'<{base}{page - 1}>; rel="prev"', f'<{base}1>; rel="first"'] if page > 1 else []) + \
                ([f'<{base}{page + 1}>; rel="next"', f'<{base}{pages}>; rel="last"'] if page < pages else [])
            headers["Link"] = ", ".join(rels)
        return self._answer(request, 200, user.emails[(page - 1) * per_page:page * per_page], headers)

    def _caller(self, request: web.Request, forced: int | None) -> GithubUser | web.Response:
        """The user the request's token belongs to, or the error answer (401 for no or an unknown token)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        held = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        status = 401 if held is None else forced
        if held is not None and status is None:
            return held[0]
        message = {401: "Bad credentials", 403: "Forbidden", 404: "Not Found"}.get(status or 401, "Server Error")
        return self._answer(request, status or 401, {"message": message, "documentation_url": f"{DOCS}/rest",
                                                     "status": str(status or 401)})

    def _answer(self, request: web.Request, status: int, body: Any, headers: dict[str, str] | None = None
                ) -> web.Response:
        self.api_requests.append(ApiRequest(request.path, dict(request.query), request.headers.get("Authorization", ""),
                                            dict(request.headers), status))
        return web.Response(status=status, text=json.dumps(body), content_type="application/json", charset="utf-8",
                            headers={"X-GitHub-Media-Type": "github.v3; format=json", **(headers or {})})


def redirect_uri_allowed(redirect_uri: str, callback_url: str) -> bool:
    """"Redirect URLs" of "Authorizing OAuth apps": the host (or a sub-domain) and the port of the callback
    URL, its path or a path below it; on a loopback callback URL any port."""
    given, registered = urlsplit(redirect_uri), urlsplit(callback_url)
    host, home = given.hostname or "", registered.hostname or ""
    loopback = home in ("127.0.0.1", "::1")
    return (given.scheme == registered.scheme and (host == home or host.endswith("." + home))
            and (loopback or given.port == registered.port)
            and (given.path == registered.path or given.path.startswith(registered.path.rstrip("/") + "/")))


def challenge_of(verifier: str) -> str:
    """RFC 7636 4.2: BASE64URL(SHA256(ASCII(code_verifier))), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def _pkce_matches(verifier: str | None, challenge: str) -> bool:
    if not verifier or not verifier.isascii():
        return False
    return hmac.compare_digest(challenge_of(verifier).encode(), challenge.encode())


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """RFC 6749 2.3.1: Basic base64(urlencoded id ":" urlencoded secret)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except ValueError:
        return None
    return (unquote(client_id), unquote(secret)) if sep else None


def _token_error(error: str) -> dict[str, str]:
    description, uri = TOKEN_ERRORS.get(error, ("The request failed.", f"{DOCS}{_TOKEN_ERRORS}"))
    return {"error": error, "error_description": description, "error_uri": uri}


def _refusal(error: str, description: str, anchor: str) -> dict[str, str]:
    return {"error": error, "error_description": description, "error_uri": f"{DOCS}{_AUTHZ_ERRORS}#{anchor}"}


def _redirect(url: str, params: dict[str, str]) -> web.Response:
    location = url + ("&" if "?" in url else "?") + urlencode(params)
    return web.Response(status=302, headers={"Location": location})
