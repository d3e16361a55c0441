"""Denylist, the local revocation mirror, on the embedded store: what it refuses and until when,
full reloads (in slices, with revocations arriving meanwhile) and the listeners it tells."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import DependencyDown, RevokedToken
from gateway.steps import denylist as denylist_module
from gateway.steps.denylist import Denylist
from gateway.steps.identity import Identity
from gateway.store import MemoryStore
from gateway.store.base import Revocation

ISS = "https://auth.example.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def identity(jti: str = "j1", sub: str = "alice", iat: float | None = 1_699_999_000.0) -> Identity:
    return Identity(sub=sub, roles=frozenset(), jti=jti, iss=ISS, exp=1_700_000_900.0, iat=iat, claims={})


def jti_revocation(jti: str, expires_at: float) -> Revocation:
    return Revocation("jti", ISS, jti, expires_at, expires_at)


async def until(predicate: Callable[[], bool], limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[MemoryStore]:
    s = MemoryStore(clock=clock)
    yield s
    await s.close()


@pytest.fixture
async def mirror(store: MemoryStore, clock: FakeClock) -> AsyncIterator[Denylist]:
    d = Denylist(store, clock=clock)
    yield d
    await d.close()


async def started(d: Denylist) -> Denylist:
    await d.start()
    await until(lambda: d.in_sync)
    return d


async def test_out_of_sync_with_on_error_deny_is_dependency_down(mirror: Denylist) -> None:
    with pytest.raises(DependencyDown):
        mirror.check(identity())


async def test_revocations_in_the_store_before_start_are_refused_once_in_sync(
        mirror: Denylist, store: MemoryStore, clock: FakeClock) -> None:
    await store.revoke(jti_revocation("j1", clock.now + 60))
    await store.revoke(Revocation("sub", ISS, "bob", clock.now - 10, clock.now + 600))
    await started(mirror)
    assert len(mirror) == 2
    with pytest.raises(RevokedToken):
        mirror.check(identity("j1"))
    with pytest.raises(RevokedToken):
        mirror.check(identity("j2", sub="bob"))                          # issued before bob's watermark
    mirror.check(identity("j3", sub="bob", iat=clock.now))              # issued after it
    mirror.check(identity("j2"))


async def test_a_revoked_jti_is_refused_until_its_expiry(mirror: Denylist, clock: FakeClock) -> None:
    await started(mirror)
    await mirror.revoke(jti_revocation("j1", clock.now + 30.25))
    with pytest.raises(RevokedToken):
        mirror.check(identity("j1"))
    clock.now += 30.5
    with pytest.raises(RevokedToken):
        mirror.check(identity("j1"))                                     # expiry rounded up, never early
    clock.now += 0.5
    mirror.check(identity("j1"))
    assert len(mirror) == 1                                              # until a purge forgets it
    mirror._purge(clock.now)
    assert len(mirror) == 0


async def test_a_revocation_published_by_another_instance_arrives_by_the_feed(
        mirror: Denylist, store: MemoryStore, clock: FakeClock) -> None:
    await started(mirror)
    await store.revoke(jti_revocation("j1", clock.now + 60))
    await until(lambda: len(mirror) == 1)
    with pytest.raises(RevokedToken):
        mirror.check(identity("j1"))


async def test_listeners_hear_each_revocation_learnt_and_resync_listeners_each_reload(
        mirror: Denylist, store: MemoryStore, clock: FakeClock) -> None:
    heard: list[Revocation] = []
    reloads: list[int] = []
    mirror.add_listener(heard.append)
    mirror.add_resync_listener(lambda: reloads.append(len(mirror)))
    await store.revoke(jti_revocation("before", clock.now + 60))
    await started(mirror)
    assert reloads == [1] and heard == []                                # a reload tells resync listeners only
    revocation = jti_revocation("j1", clock.now + 60)
    await mirror.revoke(revocation)
    await until(lambda: len(heard) == 2)                                 # applied here, then again from the feed
    assert heard == [revocation, revocation]
    for feed in list(store._feeds):                                      # the subscription breaks: reload
        await feed.aclose()
    await until(lambda: len(reloads) == 2)
    assert reloads == [1, 2]


async def test_an_unexpected_error_of_the_store_is_logged_and_retried_never_the_end_of_the_mirror(
        mirror: Denylist, store: MemoryStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Only StoreUnavailable was caught: any other error from the store (a reply it could not read) ended
    the mirror's task for good, and the mirror went on answering from what it had, or never got in sync."""
    real = store.live_revocations
    calls = []

    async def broken_once(now: float) -> list[Revocation]:
        calls.append(now)
        if len(calls) == 1:
            raise ValueError("a reply the store could not read")
        return await real(now)

    monkeypatch.setattr(store, "live_revocations", broken_once)
    await store.revoke(jti_revocation("j1", clock.now + 60))
    with caplog.at_level(logging.ERROR, logger="tokengate.denylist"):
        await started(mirror)   # retried after the error, then in sync
    assert len(calls) == 2 and [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "revocation mirror failed; resynchronising"]
    with pytest.raises(RevokedToken):
        mirror.check(identity("j1"))


async def test_a_revocation_applied_while_a_reload_runs_survives_the_swap(
        mirror: Denylist, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(denylist_module, "LOAD_CHUNK", 2)                 # the reload yields after each 2 ids
    live = [jti_revocation(f"old{i}", clock.now + 60) for i in range(9)]
    reloading = asyncio.create_task(mirror._replace(live, clock.now))
    await asyncio.sleep(0)
    assert not reloading.done()
    mirror._apply(jti_revocation("during", clock.now + 60))
    mirror._apply(Revocation("sub", ISS, "bob", clock.now, clock.now + 60))
    await reloading
    mirror.in_sync = True
    for jti in ["during", *(f"old{i}" for i in range(9))]:
        with pytest.raises(RevokedToken):
            mirror.check(identity(jti))
    with pytest.raises(RevokedToken):
        mirror.check(identity("x", sub="bob"))
    assert len(mirror) == 11


class CountedList(list):
    """A list that counts the entries handed out, by iteration or by slice."""

    handed_out = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for item in super().__iter__():
            self.handed_out += 1
            yield item

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        got = super().__getitem__(index)
        self.handed_out += len(got) if isinstance(index, slice) else 1
        return got


async def test_a_reload_lets_the_loop_run_before_it_has_read_more_than_a_slice(
        mirror: Denylist, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even one plain pass over a million revocations stalls the loop for 0.3-0.8 s (bench_mirror saw 1 s
    stalls), so the reload reads its list in slices too, not only hashes them in slices."""
    monkeypatch.setattr(denylist_module, "LOAD_CHUNK", 4)
    live = CountedList([jti_revocation(f"j{i}", clock.now + 60) if i % 3 else
                        Revocation("sid", ISS, f"s{i}", clock.now, clock.now + 60) for i in range(40)])
    reloading = asyncio.create_task(mirror._replace(live, clock.now))
    await asyncio.sleep(0)   # the reload's first turn, up to its first yield
    assert not reloading.done() and live.handed_out <= 4
    await reloading
    mirror.in_sync = True
    assert len(mirror) == 40


class Page(list):
    """A page of the store's revocations that a weak reference can watch."""


async def test_a_reload_holds_one_page_of_the_stores_revocations_at_a_time(
        mirror: Denylist, store: MemoryStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a million revocations the list the store handed over took ~430 MB (the mirror itself 12): the
    mirror reads the store's pages and lets each go before the next."""
    seen: list[weakref.ref[Page]] = []
    held: list[int] = []

    async def pages(now: float) -> AsyncIterator[list[Revocation]]:
        for number in range(5):
            gc.collect()
            held.append(sum(ref() is not None for ref in seen))
            page = Page(jti_revocation(f"p{number}-{i}", clock.now + 60) for i in range(20))
            seen.append(weakref.ref(page))
            yield page

    async def whole_list(now: float) -> list[Revocation]:
        raise AssertionError("a reload reads pages, never the whole list")

    monkeypatch.setattr(store, "live_revocation_pages", pages)
    monkeypatch.setattr(store, "live_revocations", whole_list)
    await started(mirror)
    assert held == [0, 1, 1, 1, 1]   # the page before at most (the generator's own reference), never more
    assert len(mirror) == 100


async def test_a_reload_drops_what_is_no_longer_live_and_keeps_the_latest_expiry(
        mirror: Denylist, clock: FakeClock) -> None:
    await mirror._replace([jti_revocation("gone", clock.now + 60)], clock.now)
    await mirror._replace([jti_revocation("a", clock.now + 10), jti_revocation("a", clock.now + 90),
                           jti_revocation("expired", clock.now - 1)], clock.now)
    mirror.in_sync = True
    assert len(mirror) == 1
    mirror.check(identity("gone"))
    clock.now += 60
    with pytest.raises(RevokedToken):
        mirror.check(identity("a"))


async def test_the_mirror_measures_how_late_a_published_revocation_arrives(mirror: Denylist, store: MemoryStore,
                                                                           clock: FakeClock) -> None:
    await started(mirror)
    assert mirror.lag_s is None
    await store.revoke(jti_revocation("late", clock() + 600))   # stamped with the store's clock
    clock.now += 0.5                                           # before the mirror's task gets its turn
    await until(lambda: mirror.lag_s is not None)
    assert mirror.lag_s == 0.5


def test_feed_messages_carry_their_publication_time_and_old_ones_still_decode() -> None:
    from gateway.store.redis.feed import decode_revocation, encode_revocation

    r = jti_revocation("j9", 2_000_000_000.0)
    stamped = decode_revocation(encode_revocation(r, now=1_800_000_000.0))
    assert stamped == r and stamped is not None and stamped.published_at == 1_800_000_000.0
    old = decode_revocation(b'{"kind":"jti","iss":"i","id":"j","value":1,"expires_at":2}')
    assert old is not None and old.published_at is None


# -- ended sessions (sid) ---------------------------------------------------------------------------

def of_session(sid: str, jti: str = "j-any", **claims: object) -> Identity:
    return Identity(sub="alice", roles=frozenset(), jti=jti, iss=ISS, exp=1_700_000_900.0, iat=1_699_999_000.0,
                    claims={"sid": sid, **claims})


async def test_an_ended_session_refuses_every_token_naming_it_until_its_expiry(mirror: Denylist,
                                                                             clock: FakeClock) -> None:
    await mirror.start()
    await until(lambda: mirror.in_sync)
    await mirror.revoke(Revocation("sid", ISS, "s1", clock.now, clock.now + 60))
    for jti in ("j1", "j2"):
        with pytest.raises(RevokedToken):
            mirror.check(of_session("s1", jti))
    mirror.check(of_session("s2"))                  # another session
    mirror.check(identity(jti="s1"))                # a token id equal to the sid is another thing
    mirror.check(Identity(sub="alice", roles=frozenset(), jti="j1", iss="https://other", exp=0.0, iat=None,
                          claims={"sid": "s1"}))    # another issuer's session
    clock.now += 61
    mirror.check(of_session("s1"))


async def test_a_sid_revoked_as_a_jti_refuses_no_session(mirror: Denylist, clock: FakeClock) -> None:
    await mirror.start()
    await until(lambda: mirror.in_sync)
    await mirror.revoke(jti_revocation("s1", clock.now + 60))
    mirror.check(of_session("s1"))


async def test_ended_sessions_survive_a_reload_and_arrive_by_the_feed(mirror: Denylist, store: MemoryStore,
                                                                      clock: FakeClock) -> None:
    await store.revoke(Revocation("sid", ISS, "before", clock.now, clock.now + 60))
    await mirror.start()
    await until(lambda: mirror.in_sync)
    await store.revoke(Revocation("sid", ISS, "after", clock.now, clock.now + 60))   # as another instance would
    await until(lambda: len(mirror) == 2)
    await mirror._replace(await store.live_revocations(clock.now), clock.now)
    for sid in ("before", "after"):
        with pytest.raises(RevokedToken):
            mirror.check(of_session(sid))
