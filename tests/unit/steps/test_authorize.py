"""authorize(): public rules pass, no roles means any caller, otherwise any-of roles or 403."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.config.rules import Rule
from gateway.errors import Forbidden, GatewayError, MissingToken
from gateway.steps.authorize import authorize
from gateway.steps.identity import Identity

SECRET_LOOKING_JTI = "jti-0f1e2d3c"
ALLOWED = "allowed"


def make_rule(*, public: bool = False, roles: set[str] | None = None) -> Rule:
    return Rule(index=0, path="/api/x", methods=None, upstream="up", public=public,
                roles=frozenset(roles) if roles is not None else None, label="* /api/x")


@pytest.fixture
def identity() -> Callable[..., Identity]:
    def make(*roles: str) -> Identity:
        return Identity(sub="alice", roles=frozenset(roles), jti=SECRET_LOOKING_JTI, iss="https://auth.example.test",
                        exp=2_000_000_000.0, iat=1_900_000_000.0, claims={"sub": "alice", "roles": list(roles)})
    return make


def outcome(rule: Rule, identity: Identity | None) -> str | int:
    """"allowed" when authorize() lets the caller through, else the status of what it raised."""
    try:
        result = authorize(rule, identity)
    except GatewayError as exc:
        return exc.status
    assert result is None
    return ALLOWED


def test_public_rule_lets_anyone_in_even_without_identity() -> None:
    assert outcome(make_rule(public=True), None) == ALLOWED
    assert outcome(make_rule(public=True, roles={"admin"}), None) == ALLOWED   # public wins over roles
    assert outcome(make_rule(), None) == 401                                   # the flag is what let it in


def test_rule_without_roles_lets_any_authenticated_caller_in(identity: Callable[..., Identity]) -> None:
    assert outcome(make_rule(), identity()) == ALLOWED
    assert outcome(make_rule(roles={"admin"}), identity()) == 403              # the same caller, a rule with roles


@pytest.mark.parametrize("roles", [("admin",), ("user", "admin"), ("admin", "auditor", "user")])
def test_caller_with_any_one_of_the_roles_gets_in(identity: Callable[..., Identity], roles: tuple[str, ...]) -> None:
    assert outcome(make_rule(roles={"admin", "ops"}), identity(*roles)) == ALLOWED
    assert outcome(make_rule(roles={"ops"}), identity(*roles)) == 403           # it is the shared role that counts


@pytest.mark.parametrize("roles", [(), ("user",), ("Admin",), ("admins",)])
def test_caller_without_the_roles_gets_403(identity: Callable[..., Identity], roles: tuple[str, ...]) -> None:
    with pytest.raises(Forbidden) as info:
        authorize(make_rule(roles={"admin", "ops"}), identity(*roles))
    assert (info.value.status, info.value.code, info.value.error) == (403, "forbidden", "insufficient_scope")


def test_forbidden_names_the_roles_needed_but_nothing_about_the_token(identity: Callable[..., Identity]) -> None:
    with pytest.raises(Forbidden) as info:
        authorize(make_rule(roles={"admin", "ops"}), identity("user"))
    assert "admin" in info.value.description and "ops" in info.value.description
    assert SECRET_LOOKING_JTI not in info.value.description and "alice" not in info.value.description


@pytest.mark.parametrize("roles", [None, {"admin"}])
def test_protected_rule_without_identity_fails_closed_with_401(roles: set[str] | None) -> None:
    with pytest.raises(MissingToken) as info:
        authorize(make_rule(roles=roles), None)
    assert (info.value.status, info.value.code) == (401, "missing_token")
