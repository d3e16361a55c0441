"""The browser endpoints in the OpenAPI document (auth/openapi.py): the sign-in page, its form post and
delegated login's start and callback. They answer HTML (pages and 302s), never JSON errors."""

from __future__ import annotations

from typing import Any

from ...config.load import GatewayConfig

HTML = "text/html"
FORM = "application/x-www-form-urlencoded"


def browser_paths(cfg: GatewayConfig) -> dict[str, dict[str, Any]]:
    """{path: {method: operation}} of the browser endpoints this config serves."""
    p = cfg.auth.prefix
    paths: dict[str, dict[str, Any]] = {}
    if cfg.auth.sign_in_page:
        paths[f"{p}/login"] = {"get": _sign_in_page()}
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
        "csrf_token": {"type": "string", "description": "The sign-in page's CSRF token (double submit with "
                                                        "its cookie)."}}}}}


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


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"},
            "description": description}


def _page(description: str) -> dict[str, Any]:
    return {"description": description, "content": {HTML: {"schema": {"type": "string"}}}}


def _redirect(description: str) -> dict[str, Any]:
    return {"description": description, "headers": {"Location": {"schema": {"type": "string"}, "required": True}}}
