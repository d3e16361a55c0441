"""authorize(): public rules pass, no roles means any caller, otherwise any-of roles or 403."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.authorize import authorize
from gateway.errors import Forbidden, MissingToken
from gateway.identity import Identity
from gateway.rules import Rule

SECRET_LOOKING_JTI = "jti-0f1e2d3c"


def make_rule(*, public: bool = False, roles: set[str] | None = None) -> Rule:
    return Rule(index=0, path="/api/x", methods=None, upstream="up", public=public,
                roles=frozenset(roles) if roles is not None else None, label="* /api/x")


@pytest.fixture
def identity() -> Callable[..., Identity]:
    def make(*roles: str) -> Identity:
        return Identity(sub="alice", roles=frozenset(roles), jti=SECRET_LOOKING_JTI, iss="https://auth.example.test",
                        exp=2_000_000_000.0, iat=1_900_000_000.0, claims={"sub": "alice", "roles": list(roles)})
    return make


def test_public_rule_lets_anyone_in_even_without_identity() -> None:
    authorize(make_rule(public=True), None)


def test_rule_without_roles_lets_any_authenticated_caller_in(identity: Callable[..., Identity]) -> None:
    authorize(make_rule(), identity())


@pytest.mark.parametrize("roles", [("admin",), ("user", "admin"), ("admin", "auditor", "user")])
def test_caller_with_any_one_of_the_roles_gets_in(identity: Callable[..., Identity], roles: tuple[str, ...]) -> None:
    authorize(make_rule(roles={"admin", "ops"}), identity(*roles))


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
    assert info.value.status == 401
