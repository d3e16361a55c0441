"""The browser endpoints in the OpenAPI document (auth/openapi.py): the sign-in, signup and forgot-password
pages, their form posts and delegated login's start and callback. They answer HTML (pages and 302s),
never JSON errors."""

from __future__ import annotations

from typing import Any

from ...config.load import CredentialsUrlConfig, GatewayConfig

HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


def browser_paths(cfg: GatewayConfig) -> dict[str, dict[str, Any]]:
    """{path: {method: operation}} of the browser endpoints this config serves."""
    p = cfg.auth.prefix
    paths: dict[str, dict[str, Any]] = {}
    if cfg.auth.sign_in_page:
        paths[f"{p}/login"] = {"get": _sign_in_page()}
        if not isinstance(cfg.auth.users, CredentialsUrlConfig):   # accounts this gateway can edit
            if cfg.auth.signup:
                paths[f"{p}/signup"] = {"get": _signup_page()}
            paths[f"{p}/forgot-password"] = {"get": _forgot_password_page()}
    if cfg.auth.providers:
        provider = {"name": "provider", "in": "path", "required": True,
                    "schema": {"enum": sorted(cfg.auth.providers)}, "description": "The provider's name."}
        paths[f"{p}/oauth/{{provider}}/start"] = {"get": _start(provider)}
        paths[f"{p}/oauth/{{provider}}/callback"] = {"get": _callback(provider)}
    return paths


def form_login_body() -> dict[str, Any]:
    """The sign-in page's form post, beside the JSON login's body."""
    return {FORM: {"schema": {"type": "object", "properties": {
        "username": {"type": "string"}, "password": {"type": "string"}, "rd": {"type": "string"},
        "csrf_token": _csrf_field("sign-in")}}}}


def form_signup_body() -> dict[str, Any]:
    """The signup page's form post, beside the JSON signup's body."""
    return {FORM: {"schema": {"type": "object", "required": ["csrf_token", "username", "password"], "properties": {
        "username": {"type": "string"}, "password": {"type": "string"},
        "email": {"type": "string", "description": "Optional; empty means none."},
        "rd": {"type": "string", "description": "Carried to the sign-in page."},
        "csrf_token": _csrf_field("signup")}}}}


def form_signup_responses() -> dict[str, Any]:
    return {"302": _redirect("The account exists: to the sign-in page, with rd and the notice that the account "
                             "was created."),
            **{status: _page(text) for status, text in (
                ("400", "The signup page again, naming the error: the form's CSRF token is missing or does not "
                        "match its cookie (the form expired), the username or e-mail address breaks the rules, "
                        "or the password is weak (with the reason)."),
                ("409", "The signup page again: the username is taken."),
                ("429", "The signup page again: too many attempts."),
                ("503", "The signup page again: the accounts cannot be reached."))}}


def form_forgot_password_body() -> dict[str, Any]:
    """The forgot-password page's form post, beside the JSON request's body."""
    return {FORM: {"schema": {"type": "object", "required": ["csrf_token", "email"], "properties": {
        "email": {"type": "string"}, "rd": {"type": "string", "description": "Carried back to the sign-in page."},
        "csrf_token": _csrf_field("forgot-password")}}}}


def form_forgot_password_responses() -> dict[str, Any]:
    return {status: _page(text) for status, text in (
        ("200", "The one answer, whoever the address belongs to: if an account has it, a reset link is on its way."),
        ("400", "The page again, naming the error: the form's CSRF token is missing or does not match its cookie "
                "(the form expired), or the e-mail address is malformed."),
        ("429", "The page again: too many attempts."), ("503", "The page again: the store cannot be reached."))}


def form_login_responses() -> dict[str, Any]:
    return {"302": _redirect("Signed in: the session's cookies are set; to rd."),
            **{status: _page(text) for status, text in (
                ("400", "The form's CSRF token is missing or does not match its cookie (the form expired)."),
                ("401", "The sign-in page again, naming the error."),
                ("429", "Too many attempts."), ("503", "The accounts cannot be reached."))}}


def _sign_in_page() -> dict[str, Any]:
    return {"operationId": "signInPage", "summary": "The sign-in page (HTML)",
            "description": "A button per provider and the username/password form; `rd` is carried through "
                           "when it is a local path or an origin on auth.redirect_allowlist.",
            "parameters": [_query("rd", "Where to go after signing in.")], "security": [],
            "responses": {"200": _page("The sign-in page.")}}


def _signup_page() -> dict[str, Any]:
    return {"operationId": "signupPage", "summary": "The signup page (HTML)",
            "description": "A form (username, optional e-mail, password) posting application/x-www-form-urlencoded "
                           "to this path with the page's CSRF token; `rd` is carried to the sign-in page when it "
                           "is a local path or an origin on auth.redirect_allowlist.",
            "parameters": [_query("rd", "Where to go after signing in.")], "security": [],
            "responses": {"200": _page("The signup page.")}}


def _forgot_password_page() -> dict[str, Any]:
    return {"operationId": "forgotPasswordPage", "summary": "The forgot-password page (HTML)",
            "description": "An e-mail form posting application/x-www-form-urlencoded to this path with the page's "
                           "CSRF token; `rd` is carried back to the sign-in page.",
            "parameters": [_query("rd", "Where to go after signing in.")], "security": [],
            "responses": {"200": _page("The forgot-password page.")}}


def _start(provider: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": "oauthStart", "summary": "Start a delegated login",
            "description": "302 to the provider's authorization endpoint with state, nonce and PKCE S256; the "
                           "login in progress is sealed in a cookie of its own.",
            "parameters": [provider, _query("rd", "Where to go after signing in.")], "security": [],
            "responses": {"302": _redirect("To the provider."),
                          **{status: _page(text) for status, text in (
                              ("400", "rd is not allowed, or the request's Host cannot make a redirect_uri."),
                              ("404", "No such provider."), ("503", "The provider cannot be reached."))}}}


def _callback(provider: dict[str, Any]) -> dict[str, Any]:
    params = [_query(name, text) for name, text in (
        ("state", "The login's state."), ("code", "The authorization code."),
        ("iss", "The provider's issuer (RFC 9207)."), ("error", "The provider's error."))]
    return {"operationId": "oauthCallback", "summary": "Finish a delegated login",
            "description": "Checks the state against its cookie, then iss, then exchanges the code and checks "
                           "the ID token; signs in and answers 302 to rd.",
            "parameters": [provider, *params], "security": [],
            "responses": {"302": _redirect("Signed in: the session's cookies are set; to rd."),
                          **{status: _page(text) for status, text in (
                              ("400", "The state is missing, unknown, expired, used or for another provider."),
                              ("401", "The provider refused, the exchange failed or the ID token is invalid."),
                              ("403", "The account is disabled."), ("404", "No such provider."),
                              ("503", "The provider or the store cannot be reached."))}}}


def _csrf_field(page: str) -> dict[str, Any]:
    return {"type": "string", "description": f"The {page} page's CSRF token (double submit with its cookie)."}


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"},
            "description": description}


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _redirect(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"Location": {"schema": {"type": "string"}, "required": True}}}
