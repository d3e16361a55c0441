"""gateway.auth.accounts.policy: length bounds, the shipped common list, the account's own names; and the
auth settings that go with accounts (auth.password, default_roles, reset_ttl, rate_limits.signup)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.accounts.policy import PasswordPolicy, WeakPassword, load_common_passwords
from gateway.config.auth import PasswordConfig
from gateway.config.load import ConfigError, GatewayConfig

COMMON = load_common_passwords()
POLICY = PasswordPolicy.from_config(PasswordConfig())


def test_the_shipped_list_holds_thousands_of_lowercased_passwords() -> None:
    assert len(COMMON) >= 5000
    assert {"123456", "password", "qwerty", "iloveyou", "password1"} <= COMMON
    assert all(word == word.lower() and word.strip() == word and word for word in COMMON)


@pytest.mark.parametrize("password", ["x7#kQ!m2", "correct horse battery staple", "ß" * 8, "p" * 127 + "q"])
def test_good_passwords_pass(password: str) -> None:
    assert POLICY.check(password, username="alice", email="alice@example.test") == password


@pytest.mark.parametrize("password, reason", [
    ("x7#kQ!m", "at least 8"), ("x" * 129, "at most 128"),
    ("password1", "common"), ("PassWord123", "common"), ("Sunshine1", "common"), ("qwertyuiop", "common"),
    ("Alice.Smith", "username"), ("ALICE.SMITH@EXAMPLE.TEST", "username"), ("alice.smith", "username"),
])
def test_weak_passwords_are_refused_with_the_reason(password: str, reason: str) -> None:
    with pytest.raises(WeakPassword) as caught:
        POLICY.check(password, username="alice.smith", email="Alice.Smith@example.test")
    assert reason in str(caught.value) and password not in str(caught.value)


def test_lengths_follow_the_config() -> None:
    policy = PasswordPolicy.from_config(PasswordConfig(min_length=12, max_length=12))
    assert policy.check("x7#kQ!m2x7#k", username="alice") == "x7#kQ!m2x7#k"
    for password in ("x7#kQ!m2x7#", "x7#kQ!m2x7#kQ"):
        with pytest.raises(WeakPassword):
            policy.check(password, username="alice")


def test_no_email_means_only_the_username_is_compared() -> None:
    assert POLICY.check("bobs-own-pw!", username="bob", email=None) == "bobs-own-pw!"


# --- config -----------------------------------------------------------------------------------------

def test_account_settings_have_safe_defaults(make_config: Callable[..., GatewayConfig]) -> None:
    auth = make_config().auth
    assert (auth.password.min_length, auth.password.max_length) == (8, 128)
    assert auth.default_roles == ("user",) and auth.reset_ttl == 900.0 and auth.rate_limits.signup == (5, 60)


def test_account_settings_are_read(make_config: Callable[..., GatewayConfig]) -> None:
    auth = make_config(auth={"password": {"min_length": 12, "max_length": 64}, "default_roles": ["member", "member"],
                             "reset_ttl": "30m", "rate_limits": {"signup": "2/h"}}).auth
    assert (auth.password.min_length, auth.password.max_length) == (12, 64)
    assert auth.default_roles == ("member",) and auth.reset_ttl == 1800.0 and auth.rate_limits.signup == (2, 3600)


@pytest.mark.parametrize("auth, key", [
    ({"password": {"min_length": 0}}, "auth.password.min_length"),
    ({"password": {"max_length": 5000}}, "auth.password.max_length"),
    ({"password": {"min_length": 20, "max_length": 10}}, "auth.password.min_length"),
    ({"password": {"min": 8}}, "auth.password.min"),
    ({"default_roles": ["has space"]}, "auth.default_roles"),
    ({"reset_ttl": "2d"}, "auth.reset_ttl"), ({"reset_ttl": "500ms"}, "auth.reset_ttl"),
    ({"rate_limits": {"signup": "lots"}}, "auth.rate_limits.signup"),
])
def test_bad_account_settings_are_config_errors(make_config: Callable[..., GatewayConfig], auth: dict[str, Any],
                                                key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(auth=auth)
    assert [p.key for p in caught.value.problems] == [key]
