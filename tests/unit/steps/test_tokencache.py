"""The verified-token cache: bounded, keyed by the exact token, entries die when the verifier would
refuse the token, and a revocation or a mirror reload takes effect on cached tokens at once. A
property test drives the same operations through a cached and an uncached Authenticator and
requires the same answer every time: the cache never widens what is accepted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from gateway.config.load import GatewayConfig
from gateway.errors import DependencyDown, ExpiredToken, GatewayError, InvalidToken, RevokedToken
from gateway.steps.denylist import Denylist
from gateway.steps.identity import Identity
from gateway.steps.tokencache import Authenticator, TokenCache
from gateway.steps.verify import Verifier
from gateway.store import MemoryStore
from gateway.store.base import Revocation
from tests.conftest import ISSUER

SYNC_TIMEOUT_S = 5.0


class CountingVerifier(Verifier):
    """The real verifier, counting how often it is asked (a cache hit must not ask it)."""

    calls = 0

    async def verify(self, token: str) -> Identity:
        self.calls += 1
        return await super().verify(token)


async def _in_sync(denylist: Denylist) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while not denylist.in_sync:
        assert time.monotonic() < deadline, "the revocation mirror never came in sync"
        await asyncio.sleep(0.01)


@pytest.fixture
async def world(make_config: Callable[..., GatewayConfig]) -> AsyncIterator[Callable[..., Any]]:
    """world(cache_size) -> (Authenticator, Denylist, CountingVerifier) on one started memory store."""
    cfg = make_config()
    opened: list[tuple[Denylist, MemoryStore]] = []

    async def make(cache_size: int = 100, store: MemoryStore | None = None) -> tuple[Authenticator, Denylist,
                                                                                    CountingVerifier]:
        store = store or MemoryStore()
        denylist = Denylist(store)
        await denylist.start()
        opened.append((denylist, store))
        await _in_sync(denylist)
        verifier = CountingVerifier(cfg.tokens, cfg.identity)
        return Authenticator(verifier, denylist, TokenCache(cache_size, cfg.tokens.leeway)), denylist, verifier

    yield make
    for denylist, store in opened:
        await denylist.close()
        await store.close()


async def test_a_second_sight_is_answered_from_the_cache(world: Callable[..., Any],
                                                          mint: Callable[..., str]) -> None:
    auth, _, verifier = await world()
    token = mint(sub="alice")
    first = await auth.authenticate(token)
    second = await auth.authenticate(token)
    assert second is first and second.identity.sub == "alice"
    assert verifier.calls == 1 and (auth.cache.hits, auth.cache.misses) == (1, 1)


async def test_an_expired_token_is_refused_again_without_the_verifier(world: Callable[..., Any],
                                                                      mint: Callable[..., str]) -> None:
    auth, _, verifier = await world()
    expired = mint(exp=int(time.time()) - 3600)
    for _ in range(3):
        with pytest.raises(ExpiredToken, match="expired"):
            await auth.authenticate(expired)
    assert verifier.calls == 1 and len(auth.cache) == 0   # remembered as refused, never as accepted


@pytest.mark.parametrize("kind", ["bad_signature", "unknown_kid", "not_yet_valid", "wrong_audience"])
async def test_other_refusals_are_checked_again_every_time(world: Callable[..., Any], mint: Callable[..., str],
                                                           kind: str) -> None:
    auth, _, verifier = await world()
    token = {"bad_signature": lambda: mint()[:-2] + "AA", "unknown_kid": lambda: mint(kid="nope"),
             "not_yet_valid": lambda: mint(nbf=int(time.time()) + 3600),   # valid once its time comes
             "wrong_audience": lambda: mint(aud="elsewhere")}[kind]()
    for _ in range(2):
        with pytest.raises(InvalidToken):
            await auth.authenticate(token)
    assert verifier.calls == 2


async def test_a_revoked_token_is_refused_again_without_the_verifier(world: Callable[..., Any],
                                                                     mint: Callable[..., str]) -> None:
    auth, denylist, verifier = await world()
    token = mint()
    identity = (await auth.authenticate(token)).identity
    await denylist.revoke(Revocation("jti", ISSUER, identity.jti, identity.exp, identity.exp + 30))
    for _ in range(3):
        with pytest.raises(RevokedToken, match="revoked"):
            await auth.authenticate(token)
    assert verifier.calls == 2   # the first sight, and once more to learn it is revoked
    denylist.in_sync = False     # out of sync: the full path, as without any cache (on_error decides)
    with pytest.raises(DependencyDown):
        await auth.authenticate(token)


def test_a_revoked_refusal_ends_when_the_token_would_be_refused_as_expired() -> None:
    cache = TokenCache(10, leeway_s=30)
    cache.refuse("t", RevokedToken("the access token was revoked"), until=1030.0)
    refusal = cache.refusal("t", 1029.9)
    assert isinstance(refusal, RevokedToken) and refusal.description == "the access token was revoked"
    assert cache.refusal("t", 1030.0) is None and cache.refusal("t", 0) is None   # gone: checked afresh


def test_refusals_are_bounded_and_cleared_with_the_cache() -> None:
    cache = TokenCache(2, leeway_s=0)
    for n in range(4):
        cache.refuse(f"t{n}", ExpiredToken("the access token expired"))
    assert [cache.refusal(f"t{n}", 1e12) is not None for n in range(4)] == [False, False, True, True]
    cache.clear()   # a mirror reload: the store may have lost revocations
    assert cache.refusal("t3", 0) is None
    off = TokenCache(0, leeway_s=0)
    off.refuse("t", ExpiredToken("the access token expired"))
    assert off.refusal("t", 0) is None


async def test_revoking_a_cached_token_refuses_it_at_once(world: Callable[..., Any],
                                                           mint: Callable[..., str]) -> None:
    auth, denylist, _ = await world()
    token, other = mint(sub="alice"), mint(sub="alice")
    identity = (await auth.authenticate(token)).identity
    await auth.authenticate(other)
    await denylist.revoke(Revocation("jti", ISSUER, identity.jti, identity.exp, identity.exp + 30))
    with pytest.raises(RevokedToken):
        await auth.authenticate(token)
    assert (await auth.authenticate(other)).identity.sub == "alice"   # only that token id


async def test_ending_a_subjects_sessions_refuses_its_cached_tokens(world: Callable[..., Any],
                                                                     mint: Callable[..., str]) -> None:
    auth, denylist, _ = await world()
    alice, bob = mint(sub="alice", iat=int(time.time()) - 5), mint(sub="bob", iat=int(time.time()) - 5)
    await auth.authenticate(alice)
    await auth.authenticate(bob)
    now = time.time()
    await denylist.revoke(Revocation("sub", ISSUER, "alice", now, now + 3600))
    with pytest.raises(RevokedToken):
        await auth.authenticate(alice)
    assert (await auth.authenticate(bob)).identity.sub == "bob"


async def test_a_revocation_from_another_instance_reaches_the_cache(world: Callable[..., Any],
                                                                     mint: Callable[..., str]) -> None:
    store = MemoryStore()
    auth, _, _ = await world(store=store)
    token = mint()
    identity = (await auth.authenticate(token)).identity
    await store.revoke(Revocation("jti", ISSUER, identity.jti, identity.exp, identity.exp + 30))   # the feed
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while len(auth.cache):
        assert time.monotonic() < deadline, "the cached token outlived its revocation"
        await asyncio.sleep(0.01)
    with pytest.raises(RevokedToken):
        await auth.authenticate(token)


async def test_out_of_sync_mirror_takes_the_full_path(world: Callable[..., Any], mint: Callable[..., str]) -> None:
    auth, denylist, verifier = await world()
    token = mint()
    await auth.authenticate(token)
    denylist.in_sync = False   # what the mirror does when it loses the store (on_error: deny)
    with pytest.raises(DependencyDown):
        await auth.authenticate(token)
    assert verifier.calls == 2


async def test_a_mirror_reload_empties_the_cache(world: Callable[..., Any], mint: Callable[..., str]) -> None:
    auth, denylist, _ = await world()
    await auth.authenticate(mint())
    await denylist._replace([], time.time())   # what a resync after a lost store connection does
    assert len(auth.cache) == 0


def _identity(n: int, exp: float, iss: str = ISSUER, sub: str = "alice") -> Identity:
    return Identity(sub=sub, roles=frozenset(), jti=f"j{n}", iss=iss, exp=exp, iat=None, claims={})


def test_an_entry_dies_when_the_verifier_would_refuse_it() -> None:
    cache = TokenCache(10, leeway_s=30)
    cache.put("t", _identity(1, exp=1000.0))
    assert cache.get("t", 1029.999) is not None
    assert cache.get("t", 1030.0) is None and len(cache) == 0   # exp + leeway, as Verifier._identity


def test_the_cache_is_bounded_and_the_oldest_goes_first() -> None:
    cache = TokenCache(3, leeway_s=0)
    for n in range(5):
        cache.put(f"t{n}", _identity(n, exp=1e12))
    assert len(cache) == 3
    assert [cache.get(f"t{n}", 0) is not None for n in range(5)] == [False, False, True, True, True]
    assert TokenCache(0, leeway_s=0).put("t", _identity(1, exp=1e12)) is None   # size 0: off


def test_indexes_forget_evicted_and_dropped_tokens() -> None:
    cache = TokenCache(2, leeway_s=0)
    for n in range(50):
        cache.put(f"t{n}", _identity(n, exp=1e12, sub=f"s{n % 3}"))
    assert len(cache._index) == 2
    by_subject = [cache._index.touched_by(Revocation("sub", ISSUER, f"s{n}", 0, 1)) for n in range(3)]
    assert sorted(t for found in by_subject for t in found) == ["t48", "t49"]
    cache.clear()
    assert cache._index.is_empty()


def test_replaced_issuer_keys_drop_only_that_issuers_tokens() -> None:
    cache = TokenCache(10, leeway_s=0)
    cache.put("ours", _identity(1, exp=1e12))
    cache.put("theirs", _identity(2, exp=1e12, iss="https://idp.example.test"))
    assert cache.drop_issuer("https://idp.example.test") == 1
    assert cache.get("ours", 0) is not None and cache.get("theirs", 0) is None


# -- the cache never widens what is accepted ---------------------------------------------------------

_OPS = st.lists(st.one_of(st.tuples(st.just("auth"), st.integers(0, 7)),
                          st.tuples(st.just("revoke_jti"), st.integers(0, 7)),
                          st.tuples(st.just("revoke_sub"), st.sampled_from(["alice", "bob"])),
                          st.tuples(st.just("resync"), st.just(0))), max_size=30)


def _pool(mint: Callable[..., str]) -> list[str]:
    now = int(time.time())
    return [mint(sub="alice", iat=now - 5), mint(sub="alice", iat=now + 20),   # +20: survives a watermark at now
            mint(sub="bob", iat=now - 5), mint(sub="bob", roles=["admin"]),
            mint(sub="alice", exp=now - 3600), mint(kid="nope"),
            mint(sub="bob", aud="elsewhere"), mint(sub="alice", jti=uuid.uuid4().hex)[:-2] + "AA"]


async def _answer(auth: Authenticator, token: str) -> str:
    try:
        return (await auth.authenticate(token)).identity.jti
    except GatewayError as exc:
        return exc.code


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS)
@example(ops=[("auth", 0), ("revoke_jti", 0), ("auth", 0)])
@example(ops=[("auth", 0), ("auth", 1), ("revoke_sub", "alice"), ("auth", 0), ("auth", 1), ("auth", 2)])
async def test_cached_and_uncached_answers_agree(world: Callable[..., Any], mint: Callable[..., str],
                                                 ops: list[tuple[str, Any]]) -> None:
    store = MemoryStore()
    cached, denylist, _ = await world(cache_size=4, store=store)
    plain, plain_denylist, _ = await world(cache_size=0, store=store)
    pool = _pool(mint)
    for op, arg in ops:
        if op == "auth":
            assert await _answer(cached, pool[arg]) == await _answer(plain, pool[arg])
        elif op == "revoke_jti":
            try:
                identity = await plain.verifier.verify(pool[arg])
            except (InvalidToken, ExpiredToken):
                continue
            await denylist.revoke(Revocation("jti", ISSUER, identity.jti, identity.exp, identity.exp + 30))
        elif op == "revoke_sub":
            now = time.time()
            await denylist.revoke(Revocation("sub", ISSUER, arg, now, now + 3600))
        else:
            await denylist._replace(await store.live_revocations(time.time()), time.time())
        await _caught_up(plain_denylist, denylist)
    for opened in (denylist, plain_denylist):
        await opened.close()


async def _caught_up(follower: Denylist, leader: Denylist) -> None:
    """The second instance has learnt every revocation the first one made (over the store's feed)."""
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while len(follower) != len(leader):
        assert time.monotonic() < deadline, "the second mirror did not catch up"
        await asyncio.sleep(0.005)


async def test_ending_a_session_refuses_its_cached_tokens_only(world: Callable[..., Any],
                                                               mint: Callable[..., str]) -> None:
    auth, denylist, _ = await world()
    first, second, other = mint(sid="s1"), mint(sid="s1"), mint(sid="s2")
    for token in (first, second, other):
        await auth.authenticate(token)
    now = time.time()
    await denylist.revoke(Revocation("sid", ISSUER, "s1", now, now + 3600))
    for token in (first, second):
        with pytest.raises(RevokedToken):
            await auth.authenticate(token)
    assert (await auth.authenticate(other)).identity.sid == "s2"


def test_a_sid_revocation_drops_exactly_the_cached_tokens_of_that_session() -> None:
    cache = TokenCache(10, leeway_s=30)
    exp = time.time() + 600
    for n, sid in enumerate(("s1", "s1", "s2", None)):
        ident = _identity(n, exp)
        cache.put(f"t{n}", Identity(**{**{f: getattr(ident, f) for f in ident.__slots__},
                                       "claims": {"sid": sid} if sid else {}}))
    assert cache.revoke(Revocation("sid", ISSUER, "s1", 0.0, exp)) == 2
    assert sorted(t for t in ("t0", "t1", "t2", "t3") if cache.get(t, time.time())) == ["t2", "t3"]
