"""Sessions on the embedded store (no sockets): opaque refresh tokens, sealing, rotation, reuse, grace,
accounts that went away, logout and logout-all."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import jwt
import pytest

from gateway.auth.accounts.directory import AuthenticatedUser, CredentialsUsers, StoreUsers
from gateway.auth.accounts.passwords import PasswordHasher
from gateway.auth.revocation import apply_revocation
from gateway.auth.sessions import (SESSION_CLAIM, Sessions, TokenPair, hash_refresh_token, new_refresh_token, seal,
                                   unseal)
from gateway.config.load import GatewayConfig
from gateway.errors import DependencyDown, InvalidRefreshToken, RefreshTokenReused, RevokedToken, SessionEnded
from gateway.steps.denylist import Denylist
from gateway.steps.tokens import Minter
from gateway.steps.verify import Verifier
from gateway.store import MemoryStore, Revocation, StoreUnavailable
from tests.conftest import CHEAP_ARGON2 as CHEAP, HS_SECRET, ISSUER

ALICE = AuthenticatedUser("alice", ("user",), "alice@example.test")


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, cfg: GatewayConfig, clock: FakeClock) -> None:
        self.cfg, self.clock = cfg, clock
        self.store = MemoryStore(clock=clock)
        self.hasher = PasswordHasher(CHEAP)
        self.users = StoreUsers(self.store, self.hasher)
        self.denylist = Denylist(self.store, clock=clock)
        self.minter = Minter(cfg.tokens, cfg.identity)

    def sessions(self, grace_s: float = 0.0, users: Any = None) -> Sessions:
        return Sessions(self.store, self.minter, users or self.users, self.denylist, self.cfg.tokens,
                        grace_s=grace_s, clock=self.clock)


@pytest.fixture
async def world(make_config: Callable[..., GatewayConfig]) -> AsyncIterator[World]:
    w = World(make_config(), FakeClock())
    await w.users.add("alice", "pw-alice-123", roles=["user"], email="alice@example.test")
    await w.denylist.start()
    deadline = time.monotonic() + 5
    while not w.denylist.in_sync:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    yield w
    await w.denylist.close()
    await w.store.close()
    w.hasher.close()


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, HS_SECRET, algorithms=["HS256"], audience="api", issuer=ISSUER)


# --- tokens and sealing ---------------------------------------------------------------------------

def test_refresh_tokens_are_long_random_and_stored_as_sha256() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 43 for t in tokens)
    token = tokens.pop()
    assert len(hash_refresh_token(token)) == 64 and hash_refresh_token(token) == hash_refresh_token(token)
    assert token not in hash_refresh_token(token)


def pair() -> TokenPair:
    return TokenPair("header.payload.sig", 1000.0, new_refresh_token(), 2000.0, "family-1")


def test_a_sealed_pair_opens_only_with_its_token() -> None:
    token, p = new_refresh_token(), pair()
    sealed = seal(token, p)
    assert p.refresh_token.encode() not in sealed and p.access_token.encode() not in sealed
    assert unseal(token, sealed) == p
    with pytest.raises(ValueError):
        unseal(new_refresh_token(), sealed)
    with pytest.raises(ValueError):
        unseal(token, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(ValueError):
        unseal(token, b"")


def test_token_answer_counts_expiry_from_now() -> None:
    body = pair().body(now=100.0)
    assert body == {"access_token": "header.payload.sig", "token_type": "Bearer", "expires_in": 900,
                    "refresh_token": body["refresh_token"]}


# --- rotation -------------------------------------------------------------------------------------

async def test_issue_then_rotate(world: World) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    claims = claims_of(first.access_token)
    assert claims["sub"] == "alice" and claims["roles"] == ["user"] and claims[SESSION_CLAIM] == first.family
    second = await sessions.rotate(first.refresh_token)
    assert second.family == first.family and second.refresh_token != first.refresh_token
    assert await world.store.find_refresh(hash_refresh_token(first.refresh_token)) is None
    assert await world.store.find_refresh(hash_refresh_token(second.refresh_token)) is not None


async def test_reuse_kills_the_family(world: World) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    second = await sessions.rotate(first.refresh_token)
    with pytest.raises(RefreshTokenReused):
        await sessions.rotate(first.refresh_token)
    with pytest.raises(RefreshTokenReused):
        await sessions.rotate(second.refresh_token)


def alarms(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tokengate.sessions" and r.levelno >= logging.WARNING]


async def test_reuse_is_a_warning_and_a_later_logout_does_not_hide_it(world: World,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    second = await sessions.rotate(first.refresh_token)
    with caplog.at_level(logging.INFO, logger="tokengate.sessions"), pytest.raises(RefreshTokenReused):
        await sessions.rotate(first.refresh_token)
    assert [r.getMessage() for r in alarms(caplog)] == ["refresh token reused; session revoked"]
    await sessions.logout(await identity_of(world, second.access_token), second.refresh_token)
    with pytest.raises(RefreshTokenReused):   # the family died of reuse first: that is what it says
        await sessions.rotate(second.refresh_token)


async def test_unknown_and_expired_tokens(world: World) -> None:
    sessions = world.sessions()
    with pytest.raises(InvalidRefreshToken) as caught:
        await sessions.rotate(new_refresh_token())
    assert type(caught.value) is InvalidRefreshToken
    first = await sessions.issue(ALICE)
    world.clock.now += world.cfg.tokens.refresh_ttl + 1
    with pytest.raises(InvalidRefreshToken):
        await sessions.rotate(first.refresh_token)


async def test_concurrent_rotations_have_one_winner(world: World) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    outcomes = await asyncio.gather(*(sessions.rotate(first.refresh_token) for _ in range(20)),
                                    return_exceptions=True)
    assert sum(isinstance(o, TokenPair) for o in outcomes) == 1
    assert all(isinstance(o, (TokenPair, InvalidRefreshToken)) for o in outcomes)


async def test_grace_replays_the_same_pair_then_expires(world: World) -> None:
    sessions = world.sessions(grace_s=5.0)
    first = await sessions.issue(ALICE)
    second = await sessions.rotate(first.refresh_token)
    world.clock.now += 4.0
    assert await sessions.rotate(first.refresh_token) == second
    world.clock.now += 1.5
    with pytest.raises(RefreshTokenReused):
        await sessions.rotate(first.refresh_token)
    with pytest.raises(RefreshTokenReused):
        await sessions.rotate(second.refresh_token)


async def test_a_rotation_without_a_sealed_reply_is_not_replayed(world: World) -> None:
    first = await world.sessions().issue(ALICE)
    await world.sessions(grace_s=0.0).rotate(first.refresh_token)   # an instance without grace won
    with pytest.raises(RefreshTokenReused):
        await world.sessions(grace_s=5.0).rotate(first.refresh_token)


@pytest.mark.parametrize("change", ["disable", "delete"])
async def test_an_account_that_went_away_ends_its_sessions(world: World, change: str) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    if change == "disable":
        await world.users.set_disabled("alice", True)
    else:
        await world.users.delete("alice")
    with pytest.raises(InvalidRefreshToken):
        await sessions.rotate(first.refresh_token)
    assert await world.store.find_refresh(hash_refresh_token(first.refresh_token)) is None
    with pytest.raises(SessionEnded):   # presented again: the session was ended, nothing was stolen
        await sessions.rotate(first.refresh_token)


async def test_a_remote_directory_keeps_the_records_roles(world: World) -> None:
    remote = CredentialsUsers("http://127.0.0.1:1/check")
    sessions = world.sessions(users=remote)
    first = await sessions.issue(AuthenticatedUser("ext-7", ("reader", "writer"), None))
    second = await sessions.rotate(first.refresh_token)
    assert claims_of(second.access_token)["roles"] == ["reader", "writer"]
    await remote.close()


# --- logout ---------------------------------------------------------------------------------------

async def identity_of(world: World, token: str) -> Any:
    verifier = Verifier(world.cfg.tokens, world.cfg.identity)
    return await verifier.verify(token)


async def test_logout_kills_the_family_named_by_sid_and_denies_the_jti(world: World) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    identity = await identity_of(world, first.access_token)
    await sessions.logout(identity, None)
    with pytest.raises(RevokedToken):
        world.denylist.check(identity)
    with pytest.raises(SessionEnded):
        await sessions.rotate(first.refresh_token)
    (revocation,) = await world.store.live_revocations(world.clock())
    assert revocation.expires_at == identity.exp + world.cfg.tokens.leeway


async def test_logout_all_kills_every_family_and_sets_a_watermark(world: World) -> None:
    sessions = world.sessions()
    pairs = [await sessions.issue(ALICE) for _ in range(3)]
    identity = await identity_of(world, pairs[0].access_token)
    assert await sessions.logout_all(identity) == 3
    for p in pairs:
        with pytest.raises(SessionEnded):
            await sessions.rotate(p.refresh_token)
    with pytest.raises(RevokedToken):
        world.denylist.check(identity)


@pytest.mark.parametrize("grace_s", [0.0, 5.0])
async def test_a_refresh_after_logout_is_session_ended_at_info_never_a_reuse_alarm(
        world: World, caplog: pytest.LogCaptureFixture, grace_s: float) -> None:
    sessions = world.sessions(grace_s=grace_s)
    first = await sessions.issue(ALICE)
    second = await sessions.rotate(first.refresh_token)
    await sessions.logout(await identity_of(world, second.access_token), second.refresh_token)
    with caplog.at_level(logging.INFO, logger="tokengate.sessions"):
        for token in (second.refresh_token, first.refresh_token):   # the live one, and one rotated away (in grace)
            with pytest.raises(SessionEnded) as caught:
                await sessions.rotate(token)
            assert (caught.value.status, caught.value.error, caught.value.code) == (401, "invalid_grant",
                                                                                    "session_ended")
    assert alarms(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == \
        ["refresh token of an ended session presented"] * 2


async def test_a_revoked_subject_or_a_password_reset_ends_sessions_without_an_alarm(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    now = world.clock()
    # What `tokengate revoke --sub`, `users disable/delete/set-password` and a password reset do.
    outcome = await apply_revocation(world.store, Revocation("sub", ISSUER, "alice", now, now + 3600))
    assert outcome.families_killed == 1
    with caplog.at_level(logging.INFO, logger="tokengate.sessions"), pytest.raises(SessionEnded):
        await sessions.rotate(first.refresh_token)
    assert alarms(caplog) == []


@pytest.mark.parametrize("failing", ["revoke", "end_session"])
async def test_a_session_end_cut_short_by_the_store_can_be_retried_and_leaves_no_token_alive(
        world: World, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """Ending a session is two store steps (deny the sid, end the family). When the store fails at
    either, the caller gets a 503 and asks again; the retry must still find the session and end it,
    and no access token of it may stay valid in between."""
    sessions = world.sessions()
    pair = await sessions.issue(ALICE)
    identity = await identity_of(world, pair.access_token)
    real = getattr(world.store, failing)

    async def down_once(*args: Any) -> Any:
        monkeypatch.setattr(world.store, failing, real)
        raise StoreUnavailable("memory://", "the store went away")

    monkeypatch.setattr(world.store, failing, down_once)
    with pytest.raises(DependencyDown):
        await sessions.end(identity, identity.sid)
    assert await sessions.end(identity, identity.sid) is True
    with pytest.raises(RevokedToken):
        world.denylist.check(identity)
    with pytest.raises(SessionEnded):
        await sessions.rotate(pair.refresh_token)
    assert await sessions.list_of(identity) == []
    assert await sessions.end(identity, identity.sid) is False


async def test_store_down_is_dependency_down(world: World) -> None:
    sessions = world.sessions()
    first = await sessions.issue(ALICE)
    await world.store.close()
    with pytest.raises(DependencyDown):
        await sessions.rotate(first.refresh_token)
    with pytest.raises(DependencyDown):
        await sessions.issue(ALICE)


# --- config ---------------------------------------------------------------------------------------

def test_refresh_grace_defaults_to_off_and_is_bounded(make_config: Callable[..., GatewayConfig]) -> None:
    from gateway.config.load import ConfigError

    assert make_config().auth.refresh_grace == 0.0
    assert make_config(auth={"refresh_grace": "10s"}).auth.refresh_grace == 10.0
    with pytest.raises(ConfigError):
        make_config(auth={"refresh_grace": "61s"})
