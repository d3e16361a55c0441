"""Who a delegated login signs in as (auth/oauth/accounts.py): mapped roles, the {provider}:{sub} account,
linking by a verified address only where allowed and only to exactly one local account."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.accounts.directory import StoreUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.auth.oauth.accounts import account_for, mapped_roles
from gateway.auth.oauth.clients import ProviderUser
from gateway.config.load import GatewayConfig
from gateway.errors import BrowserLoginFailed
from gateway.store.memory import MemoryStore

MAP = {"admins": ("admin",), "staff": ("user", "staff")}


@pytest.mark.parametrize("claims, roles", [
    ({"groups": ["admins"]}, ("admin",)),
    ({"groups": "admins"}, ("admin",)),                          # a string claim
    ({"groups": ["staff", "admins", "staff"]}, ("user", "staff", "admin")),   # in order, no repeats
    ({"groups": ["other"]}, ("default",)),                       # nothing maps: the default
    ({"groups": [1, {"x": 1}, None]}, ("default",)),             # no string in it
    ({}, ("default",)),
    ({"groups": {"admins": True}}, ("default",)),
])
def test_roles_come_from_every_mapped_value_else_the_default(claims: dict[str, Any], roles: tuple[str, ...]) -> None:
    assert mapped_roles("groups", MAP, claims, ("default",)) == roles


@pytest.fixture
async def users() -> Any:
    store = MemoryStore()
    hasher = PasswordHasher()
    yield StoreUsers(store, hasher)
    hasher.close()
    await store.close()


def provider(make_config: Callable[..., GatewayConfig], **fields: Any) -> Any:
    corp = {"issuer": "https://idp.example.test", "client_id": "gw", "client_secret": "s",
            "roles": {"claim": "groups", "map": {"admins": ["admin"]}}, **fields}
    return make_config(auth={"providers": {"corp": corp}}).auth.providers["corp"]


def user(sub: str = "u1", email: str | None = "Carol@Example.test", verified: bool = True,
         **claims: Any) -> ProviderUser:
    return ProviderUser(sub, email, verified, {"sub": sub, **claims})


async def test_a_new_subject_gets_its_own_account_with_mapped_roles_and_a_verified_address(
        make_config: Callable[..., GatewayConfig], users: StoreUsers) -> None:
    cfg = provider(make_config)
    got = await account_for("corp", cfg, user(groups=["admins"]), users, ("user",))
    assert (got.sub, got.roles, got.email) == ("corp:u1", ("admin",), "Carol@Example.test")
    again = await account_for("corp", cfg, user(groups=[], verified=False), users, ("user",))
    assert (again.roles, again.email) == (("user",), None)   # roles refreshed; an unverified address never kept
    record = await users.get("corp:u1")
    assert record is not None and record.roles == ("user",) and record.password_hash == ""


async def test_linking_needs_the_setting_a_verified_address_and_exactly_one_match(
        make_config: Callable[..., GatewayConfig], users: StoreUsers) -> None:
    await users.add("carol", "a long password 123", ["admin"], "carol@example.test")
    linked = await account_for("corp", provider(make_config, link_by_verified_email=True), user(), users, ("user",))
    assert (linked.sub, linked.roles) == ("carol", ("admin",))
    unlinked = await account_for("corp", provider(make_config), user(), users, ("user",))
    assert unlinked.sub == "corp:u1"
    unverified = await account_for("corp", provider(make_config, link_by_verified_email=True),
                                   user(sub="u2", verified=False), users, ("user",))
    assert unverified.sub == "corp:u2"
    await users.add("carol2", "a long password 123", ["admin"], "CAROL@example.test")
    ambiguous = await account_for("corp", provider(make_config, link_by_verified_email=True), user(sub="u3"),
                                  users, ("user",))
    assert ambiguous.sub == "corp:u3"


async def test_a_disabled_account_and_an_unusable_subject_are_refused(make_config: Callable[..., GatewayConfig],
                                                                      users: StoreUsers) -> None:
    cfg = provider(make_config)
    await account_for("corp", cfg, user(), users, ("user",))
    await users.set_disabled("corp:u1", True)
    with pytest.raises(BrowserLoginFailed) as refused:
        await account_for("corp", cfg, user(), users, ("user",))
    assert refused.value.status == 403
    for sub in ("a b", "x\ny", "{tag}", "a" * 300, ""):
        with pytest.raises(BrowserLoginFailed) as unusable:
            await account_for("corp", cfg, user(sub=sub), users, ("user",))
        assert unusable.value.code == "subject_unusable"
