"""The auth section: where accounts live, cookies, rate limits and the reset mail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import CredentialsUrlConfig, GatewayConfig, MailConfig, UsersFileConfig
from tests.unit.config.config_checks import line_in, problems_of, single, write_raw

__all__ = ["write_raw"]   # a fixture, imported for pytest


# --- auth.users ------------------------------------------------------------------------------------

def test_users_default_to_the_store(make_config: Callable[..., GatewayConfig]) -> None:
    assert make_config().auth.users == "store"
    assert make_config(auth={"users": "store"}).auth.users == "store"


def test_users_from_a_file(make_config: Callable[..., GatewayConfig]) -> None:
    users = make_config(auth={"users": {"file": "config/users.yaml"}}).auth.users
    assert isinstance(users, UsersFileConfig) and users.file == Path("config/users.yaml")


def test_users_from_a_credentials_service(make_config: Callable[..., GatewayConfig]) -> None:
    users = make_config(auth={"users": {"credentials_url": "http://127.0.0.1:9100/check"}}).auth.users
    assert isinstance(users, CredentialsUrlConfig) and users.credentials_url == "http://127.0.0.1:9100/check"


@pytest.mark.parametrize("users, key, needle", [
    ("ldap", "auth.users", "users:"),
    ("Store", "auth.users", "users:"),
    (["store"], "auth.users", "users:"),
    ({}, "auth.users.file", "users:"),   # a required key that is not there: its mapping's line
    ({"file": "u.yaml", "extra": 1}, "auth.users.extra", "extra:"),
    ({"file": "u.yaml", "credentials_url": "http://a.test"}, "auth.users.file", "file: u.yaml"),
    ({"credentials_url": "ftp://users.test"}, "auth.users.credentials_url", "credentials_url:"),
    ({"credentials_url": "/check"}, "auth.users.credentials_url", "credentials_url:"),
])
def test_invalid_users(write_config: Callable[..., Path], users: Any, key: str, needle: str) -> None:
    path = write_config(auth={"users": users})
    found = single(problems_of(path))
    assert (found.key, found.line) == (key, line_in(path, needle))


def test_users_error_in_a_flow_mapping_points_at_the_key(write_raw: Callable[[str], Path]) -> None:
    path = write_raw("""\
        tokens:
          issuer: https://auth.example.test
          audience: api
          keys: [{kid: main, alg: HS256, secret: "0123456789abcdef0123456789abcdef"}]
        auth:
          users: {file: users.yaml,
                  extra: 1}
        upstreams: {app: {url: "http://127.0.0.1:9001"}}
        routes: [{path: /, upstream: app}]
        """)
    found = single(problems_of(path))
    assert (found.key, found.line) == ("auth.users.extra", line_in(path, "extra: 1"))


# --- auth.mail -------------------------------------------------------------------------------------

def test_mail_from_is_written_as_from(make_config: Callable[..., GatewayConfig]) -> None:
    mail = make_config(auth={"mail": {"from": "Tokengate <auth@example.test>"}}).auth.mail
    assert mail.from_ == "Tokengate <auth@example.test>"
    assert MailConfig(from_="a@b.test").from_ == MailConfig(**{"from": "a@b.test"}).from_   # in code, either


def test_unknown_key_gets_a_suggestion(write_config: Callable[..., Path]) -> None:
    found = single(problems_of(write_config(auth={"mail": {"form": "a@b.test"}})))
    assert found.key == "auth.mail.form" and "`from`" in found.message


@pytest.mark.parametrize("mail, key", [
    ({"reset_url": "https://app.test/reset"}, "auth.mail.reset_url"),
    ({"reset_url": "https://app.test/reset?token={tok}"}, "auth.mail.reset_url"),
    ({"reset_url": "app.test/reset?t={token}"}, "auth.mail.reset_url"),
    ({"from": "nobody"}, "auth.mail.from"),
    ({"smtp_url": "http://mail.test"}, "auth.mail.smtp_url"),
    ({"smtp_url": "smtp://mail.test:port"}, "auth.mail.smtp_url"),
    ({"sender": "a@b.test"}, "auth.mail.sender"),
    ({"from_": "a@b.test"}, "auth.mail.from_"),   # the Python name is not a key of the file
])
def test_invalid_mail(write_config: Callable[..., Path], mail: dict[str, Any], key: str) -> None:
    path = write_config(auth={"mail": mail})
    found = single(problems_of(path))
    assert (found.key, found.line) == (key, line_in(path, f"  {key.rsplit('.', 1)[1]}:"))


def test_reset_url_keeps_its_query_and_placeholder(make_config: Callable[..., GatewayConfig]) -> None:
    url = "https://app.test/reset?lang=en&token={token}"
    assert make_config(auth={"mail": {"reset_url": url}}).auth.mail.reset_url == url


# --- auth.rate_limits ------------------------------------------------------------------------------

@pytest.mark.parametrize("rate, parsed", [("5/min", (5, 60)), ("3/h", (3, 3600)), ("30 / minute", (30, 60)),
                                          ("100/s", (100, 1)), ("1000/day", (1000, 86400))])
def test_rates(make_config: Callable[..., GatewayConfig], rate: str, parsed: tuple[int, int]) -> None:
    assert make_config(auth={"rate_limits": {"login": rate}}).auth.rate_limits.login == parsed


@pytest.mark.parametrize("rate", ["0/min", "abc", "5", 5, "5/fortnight", "-1/min", "5/MIN", "1.5/min", ""])
def test_bad_rate(write_config: Callable[..., Path], rate: Any) -> None:
    path = write_config(auth={"rate_limits": {"forgot_password": rate}})
    found = single(problems_of(path))
    assert (found.key, found.line) == ("auth.rate_limits.forgot_password", line_in(path, "forgot_password:"))


def test_unknown_rate_limit_name(write_config: Callable[..., Path]) -> None:
    path = write_config(auth={"rate_limits": {"logn": "5/min"}})
    assert single(problems_of(path)).key == "auth.rate_limits.logn"


# --- cookies and the prefix ------------------------------------------------------------------------

@pytest.mark.parametrize("written, stored", [("strict", "Strict"), ("LAX", "Lax"), ("None", "None")])
def test_samesite_is_case_insensitive(make_config: Callable[..., GatewayConfig], written: str, stored: str) -> None:
    cookie = make_config(auth={"refresh_cookie": {"samesite": written}}).auth.refresh_cookie
    assert cookie.samesite == stored


@pytest.mark.parametrize("cookie, key", [
    ({"samesite": "None", "secure": False}, "auth.refresh_cookie.secure"),
    ({"samesite": "sometimes"}, "auth.refresh_cookie.samesite"),
    ({"name": "refresh token"}, "auth.refresh_cookie.name"),
    ({"path": "auth"}, "auth.refresh_cookie.path"),
    ({"path": "/elsewhere"}, "auth.refresh_cookie.path"),
])
def test_invalid_refresh_cookie(write_config: Callable[..., Path], cookie: dict[str, Any], key: str) -> None:
    assert single(problems_of(write_config(auth={"refresh_cookie": cookie}))).key == key


@pytest.mark.parametrize("prefix, cookie_path", [("/auth", "/"), ("/api/auth", "/api"), ("/id", "/id")])
def test_cookie_path_covering_the_prefix(make_config: Callable[..., GatewayConfig], prefix: str,
                                         cookie_path: str) -> None:
    auth = make_config(auth={"prefix": prefix, "refresh_cookie": {"path": cookie_path}}).auth
    assert (auth.prefix, auth.refresh_cookie.path) == (prefix, cookie_path)


@pytest.mark.parametrize("prefix", ["auth", "/", "/auth/", "/a b", "/auth/..", "//auth", "/auth?x", ""])
def test_invalid_prefix(write_config: Callable[..., Path], prefix: str) -> None:
    path = write_config(auth={"prefix": prefix, "refresh_cookie": {"path": "/"}})
    assert single(problems_of(path)).key == "auth.prefix"


@pytest.mark.parametrize("field", ["signup", "access_cookie"])
def test_switches_are_booleans(write_config: Callable[..., Path], field: str) -> None:
    assert single(problems_of(write_config(auth={field: "sometimes"}))).key == f"auth.{field}"
