"""One suite, every backend: what gateway code may rely on from any Store (memory and Redis)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import Counter

import pytest

from gateway.store import RefreshRecord, Revocation, SessionInfo, Store, UserRecord

from .conftest import ISS, Clock, MakeStore


def refresh(family: str = "", sub: str = "alice", exp: float = 0.0, now: float = 0.0) -> RefreshRecord:
    return RefreshRecord(secrets.token_hex(32), family or secrets.token_hex(8), sub, exp or now + 3600,
                         {"roles": ["user"]})


def user(name: str = "alice", **fields: object) -> UserRecord:
    return UserRecord(**{"username": name, "password_hash": "$argon2id$v=19$x", "roles": ("user",),
                         "email": f"{name}@example.test", "created_at": 1700000000.5, **fields})


# -- revocations -------------------------------------------------------------------------------------

async def test_revoked_jti_is_live_until_its_expiry(store: Store, clock: Clock):
    now = clock()
    revocation = Revocation("jti", ISS, "j1", now + 60, now + 60)
    await store.revoke(revocation)
    assert await store.live_revocations(now) == [revocation]
    assert await store.live_revocations(now + 61) == []


async def test_a_revocation_that_has_expired_already_is_ignored(store: Store, clock: Clock):
    now = clock()
    await store.revoke(Revocation("jti", ISS, "old", now - 1, now - 1))
    assert await store.live_revocations(now - 10) == []


async def test_subject_watermark_only_moves_forward(store: Store, clock: Clock):
    now = clock()
    await store.revoke(Revocation("sub", ISS, "alice", now, now + 900))
    await store.revoke(Revocation("sub", ISS, "alice", now - 50, now + 850))
    assert await store.live_revocations(now) == [Revocation("sub", ISS, "alice", now, now + 900)]
    await store.revoke(Revocation("sub", ISS, "alice", now + 10, now + 910))
    assert await store.live_revocations(now) == [Revocation("sub", ISS, "alice", now + 10, now + 910)]


async def test_live_revocations_lists_every_kind_and_issuer_once(store: Store, clock: Clock):
    now = clock()
    wanted = {Revocation("jti", ISS, "j1", now + 60, now + 60), Revocation("jti", "https://other", "j1", now + 90,
                                                                        now + 90),
              Revocation("sub", ISS, "j1", now, now + 900), Revocation("jti", ISS, 'odd|"id"}{', now + 5, now + 5)}
    for revocation in wanted:
        await store.revoke(revocation)
    await store.revoke(Revocation("jti", ISS, "j1", now + 60, now + 60))   # twice: still one entry
    found = await store.live_revocations(now)
    assert len(found) == len(wanted) and set(found) == wanted


async def test_revocation_events_carry_a_revoke_made_through_another_store(make_store: MakeStore, clock: Clock):
    listener, writer = await make_store(), await make_store()
    revocation = Revocation("jti", ISS, "j1", clock() + 60, clock() + 60)
    async with listener.revocation_events() as feed:
        await writer.revoke(revocation)
        assert await asyncio.wait_for(anext(feed), 5) == revocation


async def test_revocation_feed_stops_when_closed(store: Store, clock: Clock):
    feed = store.revocation_events()
    await feed.ready()
    waiting = asyncio.create_task(anext(feed, None))
    await asyncio.sleep(0)   # let it wait for a message
    await feed.aclose()
    assert await asyncio.wait_for(waiting, 5) is None
    assert [r async for r in feed] == []


# -- refresh tokens ----------------------------------------------------------------------------------

async def test_rotation_turns_the_live_token_into_its_successor(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS)
    assert await store.find_refresh(first.token_hash) == first
    successor = refresh(first.family, now=now)
    rotation = await store.rotate_refresh(first.token_hash, successor, now)
    assert (rotation.outcome, rotation.record, rotation.sealed_reply) == ("ok", first, b"")
    assert await store.find_refresh(first.token_hash) is None
    assert await store.find_refresh(successor.token_hash) == successor


async def test_successor_joins_the_presented_tokens_family(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS)
    successor = refresh("some-other-family", now=now)
    assert (await store.rotate_refresh(first.token_hash, successor, now)).outcome == "ok"
    found = await store.find_refresh(successor.token_hash)
    assert found is not None and found.family == first.family


async def test_reusing_a_rotated_token_kills_the_family_newest_token_too(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS)
    second = refresh(first.family, now=now)
    await store.rotate_refresh(first.token_hash, second, now)
    rotation = await store.rotate_refresh(first.token_hash, refresh(first.family, now=now), now + 1)
    assert (rotation.outcome, rotation.record) == ("reused", first)
    assert await store.find_refresh(second.token_hash) is None
    assert (await store.rotate_refresh(second.token_hash, refresh(now=now), now + 2)).outcome == "reused"


async def test_unknown_or_expired_token_is_unknown(store: Store, clock: Clock):
    now = clock()
    assert (await store.rotate_refresh("0" * 64, refresh(now=now), now)).outcome == "unknown"
    token = refresh(exp=now + 60)
    await store.add_refresh(token, ISS)
    rotation = await store.rotate_refresh(token.token_hash, refresh(now=now), now + 61)
    assert (rotation.outcome, rotation.record) == ("unknown", None)
    assert await store.find_refresh("0" * 64) is None


async def test_find_refresh_forgets_a_token_once_it_expires(store: Store, clock: Clock):
    token = refresh(exp=clock() + 1)
    await store.add_refresh(token, ISS)
    assert await store.find_refresh(token.token_hash) == token

    async def forgotten() -> bool:
        return await store.find_refresh(token.token_hash) is None

    await clock.expire(forgotten, at=token.exp)


async def test_grace_window_hands_out_the_winners_sealed_reply(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS)
    second = refresh(first.family, now=now)
    assert (await store.rotate_refresh(first.token_hash, second, now, 30, b"sealed-1")).outcome == "ok"
    again = await store.rotate_refresh(first.token_hash, refresh(now=now), now + 5, 30, b"sealed-2")
    assert (again.outcome, again.record, again.sealed_reply) == ("grace", first, b"sealed-1")
    assert await store.find_refresh(second.token_hash) == second   # nothing changed
    late = await store.rotate_refresh(first.token_hash, refresh(now=now), now + 31, 30, b"sealed-3")
    assert late.outcome == "reused"
    assert await store.find_refresh(second.token_hash) is None


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
async def test_concurrent_rotations_of_one_token_give_exactly_one_ok(make_store: MakeStore, clock: Clock,
                                                                     grace_s: float):
    stores, now = [await make_store(), await make_store()], clock()
    first = refresh(now=now)
    await stores[0].add_refresh(first, ISS)
    successors = [refresh(first.family, now=now) for _ in range(20)]
    rotations = await asyncio.gather(*(
        stores[i % 2].rotate_refresh(first.token_hash, s, now, grace_s, f"reply-{i}".encode())
        for i, s in enumerate(successors)))
    outcomes = Counter(r.outcome for r in rotations)
    winner = next(i for i, r in enumerate(rotations) if r.outcome == "ok")
    winners_successor = await stores[0].find_refresh(successors[winner].token_hash)
    if grace_s:
        assert outcomes == {"ok": 1, "grace": 19}
        assert {r.sealed_reply for r in rotations if r.outcome == "grace"} == {f"reply-{winner}".encode()}
        assert winners_successor == successors[winner]
    else:
        assert outcomes == {"ok": 1, "reused": 19}
        assert winners_successor is None   # reuse killed the family, the newest token too
    for i, successor in enumerate(successors):
        assert i == winner or await stores[1].find_refresh(successor.token_hash) is None


async def test_kill_family_ends_every_token_of_it(store: Store, clock: Clock):
    now = clock()
    token = refresh(sub="bob", now=now)
    await store.add_refresh(token, ISS)
    assert await store.kill_family(token.family) == "bob"
    assert await store.find_refresh(token.token_hash) is None
    assert (await store.rotate_refresh(token.token_hash, refresh(now=now), now)).outcome == "ended"
    assert await store.kill_family("no-such-family") is None


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
async def test_a_family_ended_on_purpose_says_ended_for_its_live_and_rotated_tokens(store: Store, clock: Clock,
                                                                                    grace_s: float):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS)
    second = refresh(first.family, now=now)
    assert (await store.rotate_refresh(first.token_hash, second, now, grace_s, b"sealed")).outcome == "ok"
    await store.kill_family(first.family)   # logout
    for presented in (second, first):
        rotation = await store.rotate_refresh(presented.token_hash, refresh(now=now), now + 1, grace_s)
        assert (rotation.outcome, rotation.record, rotation.sealed_reply) == ("ended", presented, b"")
    await store.kill_family(first.family, "reused")   # dead already: the first reason stands
    assert (await store.rotate_refresh(second.token_hash, refresh(now=now), now + 2)).outcome == "ended"


async def test_kill_families_of_ends_them_on_purpose(store: Store, clock: Clock):
    now = clock()
    token = refresh(sub="alice", now=now)
    await store.add_refresh(token, ISS)
    assert await store.kill_families_of(ISS, "alice") == 1
    assert (await store.rotate_refresh(token.token_hash, refresh(now=now), now)).outcome == "ended"


async def test_a_family_killed_for_reuse_stays_reused_whatever_ends_it_later(store: Store, clock: Clock):
    now = clock()
    first, other = refresh(sub="carol", now=now), refresh(sub="carol", now=now)
    await store.add_refresh(first, ISS)
    await store.add_refresh(other, ISS)
    second = refresh(first.family, now=now)
    await store.rotate_refresh(first.token_hash, second, now)
    assert (await store.rotate_refresh(first.token_hash, refresh(now=now), now + 1)).outcome == "reused"
    assert await store.kill_family(other.family, "reused") == "carol"
    await store.kill_family(first.family)             # a logout after the alarm
    assert await store.kill_families_of(ISS, "carol") == 0   # both dead already
    for token in (second, other):
        rotation = await store.rotate_refresh(token.token_hash, refresh(now=now), now + 2)
        assert (rotation.outcome, rotation.record) == ("reused", token)


async def test_kill_families_of_ends_every_family_of_that_subject_only(store: Store, clock: Clock):
    now = clock()
    alice = [refresh(sub="alice", now=now) for _ in range(2)]
    bob, other_issuer = refresh(sub="bob", now=now), refresh(sub="alice", now=now)
    for token in alice + [bob]:
        await store.add_refresh(token, ISS)
    await store.add_refresh(other_issuer, "https://other")
    assert await store.kill_families_of(ISS, "alice") == 2
    assert [await store.find_refresh(t.token_hash) for t in alice] == [None, None]
    assert await store.find_refresh(bob.token_hash) == bob
    assert await store.find_refresh(other_issuer.token_hash) == other_issuer
    assert await store.kill_families_of(ISS, "alice") == 0


# -- sessions ----------------------------------------------------------------------------------------

def started(token: RefreshRecord, created: float, **fields: str) -> SessionInfo:
    return SessionInfo(token.family, created, created, **{"user_agent": "curl/8", "client": "192.0.2.7",
                                                          "method": "password", **fields})


async def test_a_new_family_lists_as_a_session_with_what_its_login_recorded(store: Store, clock: Clock):
    now = clock()
    token = refresh(sub="alice", now=now)
    await store.add_refresh(token, ISS, started(token, now - 5, method="github"))
    await store.add_refresh(refresh(sub="bob", now=now), ISS, started(refresh(), now))
    await store.add_refresh(refresh(sub="alice", now=now), "https://other", started(refresh(), now))
    assert await store.list_sessions(ISS, "alice") == [started(token, now - 5, method="github")]
    assert await store.list_sessions(ISS, "nobody") == []


async def test_rotation_moves_last_used_and_keeps_the_rest(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS, started(first, now - 60))
    successor = refresh(first.family, now=now)
    assert (await store.rotate_refresh(first.token_hash, successor, now)).outcome == "ok"
    assert await store.list_sessions(ISS, "alice") == [dataclasses.replace(started(first, now - 60), last_used=now)]


async def test_a_token_added_to_a_live_family_does_not_restart_its_session(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS, started(first, now - 60))
    await store.add_refresh(refresh(first.family, now=now), ISS, started(first, now, user_agent="other"))
    assert await store.list_sessions(ISS, "alice") == [started(first, now - 60)]


async def test_sessions_list_oldest_first_and_leave_out_ended_ones(store: Store, clock: Clock):
    now = clock()
    tokens = [refresh(now=now) for _ in range(4)]
    for age, token in zip((10, 30, 20, 40), tokens):
        await store.add_refresh(token, ISS, started(token, now - age))
    await store.kill_family(tokens[3].family)                               # logout
    await store.rotate_refresh(tokens[2].token_hash, refresh(now=now), now)
    await store.rotate_refresh(tokens[2].token_hash, refresh(now=now), now + 1)   # reuse: dead
    assert [s.id for s in await store.list_sessions(ISS, "alice")] == [tokens[1].family, tokens[0].family]
    await store.kill_families_of(ISS, "alice")
    assert await store.list_sessions(ISS, "alice") == []


async def test_a_family_without_session_details_still_lists(store: Store, clock: Clock):
    token = refresh(now=clock())
    await store.add_refresh(token, ISS)
    assert await store.list_sessions(ISS, "alice") == [SessionInfo(token.family)]


async def test_an_expired_session_is_not_listed(store: Store, clock: Clock):
    token = refresh(exp=clock() + 1)
    await store.add_refresh(token, ISS, started(token, clock()))

    async def forgotten() -> bool:
        return await store.list_sessions(ISS, "alice") == []

    await clock.expire(forgotten, at=token.exp)


async def test_end_session_ends_one_live_family_of_that_subject_only(store: Store, clock: Clock):
    now = clock()
    mine, other, bobs = refresh(sub="alice", now=now), refresh(sub="alice", now=now), refresh(sub="bob", now=now)
    for token in (mine, other, bobs):
        await store.add_refresh(token, ISS, started(token, now))
    assert await store.end_session(ISS, "bob", mine.family) is False         # not bob's
    assert await store.end_session("https://other", "alice", mine.family) is False
    assert await store.end_session(ISS, "alice", "no-such-family") is False
    assert await store.end_session(ISS, "alice", mine.family) is True
    assert await store.end_session(ISS, "alice", mine.family) is False       # ended already
    assert (await store.rotate_refresh(mine.token_hash, refresh(now=now), now)).outcome == "ended"
    assert [s.id for s in await store.list_sessions(ISS, "alice")] == [other.family]
    assert await store.find_refresh(other.token_hash) == other
    assert await store.find_refresh(bobs.token_hash) == bobs


async def test_a_session_killed_for_reuse_cannot_be_ended(store: Store, clock: Clock):
    now = clock()
    first = refresh(now=now)
    await store.add_refresh(first, ISS, started(first, now))
    await store.rotate_refresh(first.token_hash, refresh(now=now), now)
    await store.rotate_refresh(first.token_hash, refresh(now=now), now + 1)
    assert await store.end_session(ISS, "alice", first.family) is False
    assert (await store.rotate_refresh(first.token_hash, refresh(now=now), now + 2)).outcome == "reused"


async def test_of_concurrent_ends_of_one_session_exactly_one_wins(store: Store, clock: Clock):
    token = refresh(now=clock())
    await store.add_refresh(token, ISS, started(token, clock()))
    results = await asyncio.gather(*(store.end_session(ISS, "alice", token.family) for _ in range(10)))
    assert Counter(results) == {True: 1, False: 9}


async def test_a_revoked_sid_is_live_until_its_expiry_and_published(store: Store, clock: Clock):
    now = clock()
    revocation = Revocation("sid", ISS, "fam-1", now, now + 60)
    async with store.revocation_events() as feed:
        await store.revoke(revocation)
        assert await asyncio.wait_for(anext(feed), 5) == revocation
    assert await store.live_revocations(now) == [revocation]
    assert await store.live_revocations(now + 61) == []


# -- users -------------------------------------------------------------------------------------------

async def test_users_can_be_added_read_replaced_listed_and_deleted(store: Store):
    alice, bob = user("alice"), user("bob", roles=("admin", "user"), email=None, disabled=True)
    assert await store.add_user(alice) and await store.add_user(bob)
    assert await store.get_user("alice") == alice
    assert await store.add_user(user("alice", password_hash="other")) is False
    assert await store.get_user("alice") == alice
    await store.put_user(user("alice", email=None, disabled=True))
    assert await store.get_user("alice") == user("alice", email=None, disabled=True)
    assert await store.list_users() == [user("alice", email=None, disabled=True), bob]
    assert await store.delete_user("alice") is True
    assert await store.delete_user("alice") is False
    assert await store.get_user("alice") is None
    assert await store.list_users() == [bob]


async def test_concurrent_signups_for_one_name_let_exactly_one_win(make_store: MakeStore):
    stores = [await make_store(), await make_store()]
    added = await asyncio.gather(*(stores[i % 2].add_user(user("carol", password_hash=f"h{i}"))
                                   for i in range(20)))
    assert added.count(True) == 1
    winner = added.index(True)
    assert (await stores[1].get_user("carol")).password_hash == f"h{winner}"
    assert [u.username for u in await stores[0].list_users()] == ["carol"]


# -- rate limits -------------------------------------------------------------------------------------

async def test_hits_over_the_limit_get_the_seconds_until_the_window_ends(store: Store, clock: Clock):
    now = clock()
    assert [await store.hit("login:1.2.3.4", 3, 60, now) for _ in range(3)] == [0, 0, 0]
    retry_after = await store.hit("login:1.2.3.4", 3, 60, now)
    assert 0 < retry_after <= 60
    assert await store.hit("login:5.6.7.8", 3, 60, now) == 0


async def test_the_window_opens_again_once_it_has_passed(store: Store, clock: Clock):
    now = clock()
    assert await store.hit("refresh:alice", 1, 1, now) == 0
    assert await store.hit("refresh:alice", 1, 1, now) > 0

    async def allowed() -> bool:
        return await store.hit("refresh:alice", 1, 1, clock()) == 0

    await clock.expire(allowed, at=now + 1)


# -- password reset tokens ---------------------------------------------------------------------------

def reset_hash() -> str:
    return secrets.token_hex(32)


async def test_a_reset_token_is_found_then_taken_exactly_once(store: Store, clock: Clock):
    now, token = clock(), reset_hash()
    await store.put_reset("alice", token, now + 900)
    assert await store.find_reset(token, now) == "alice"
    assert await store.find_reset(token, now) == "alice"   # finding changes nothing
    assert await store.take_reset(token, now) == "alice"
    assert await store.take_reset(token, now) is None
    assert await store.find_reset(token, now) is None


async def test_an_unknown_reset_token_is_neither_found_nor_taken(store: Store, clock: Clock):
    assert await store.find_reset(reset_hash(), clock()) is None
    assert await store.take_reset(reset_hash(), clock()) is None


async def test_an_expired_reset_token_is_dead_and_taking_it_consumes_nothing_else(store: Store, clock: Clock):
    now, token = clock(), reset_hash()
    await store.put_reset("alice", token, now + 60)
    assert await store.find_reset(token, now + 60) is None
    assert await store.take_reset(token, now + 61) is None
    assert await store.take_reset(token, now) is None   # the expired take deleted it


async def test_a_reset_token_expires_in_the_store_too(store: Store, clock: Clock):
    token = reset_hash()
    await store.put_reset("alice", token, clock() + 1)

    async def forgotten() -> bool:
        return await store.find_reset(token, clock()) is None

    await clock.expire(forgotten, at=clock() + 1)
    assert await store.take_reset(token, clock()) is None


async def test_a_newer_reset_kills_the_older_token_of_that_user_only(store: Store, clock: Clock):
    now = clock()
    older, newer, bobs = reset_hash(), reset_hash(), reset_hash()
    await store.put_reset("alice", older, now + 900)
    await store.put_reset("bob", bobs, now + 900)
    await store.put_reset("alice", newer, now + 900)
    assert await store.find_reset(older, now) is None
    assert await store.take_reset(older, now) is None
    assert await store.take_reset(newer, now) == "alice"   # taking the dead one left the live one alone
    assert await store.take_reset(bobs, now) == "bob"


async def test_concurrent_takes_of_one_reset_token_give_the_name_once(make_store: MakeStore, clock: Clock):
    stores, now, token = [await make_store(), await make_store()], clock(), reset_hash()
    await stores[0].put_reset("alice", token, now + 900)
    taken = await asyncio.gather(*(stores[i % 2].take_reset(token, now) for i in range(20)))
    assert taken.count("alice") == 1 and taken.count(None) == 19


# -- single-use values ---------------------------------------------------------------------------------

async def test_a_value_is_claimed_once_until_it_expires(store: Store, clock: Clock):
    key = secrets.token_hex(16)
    assert await store.claim_once(key, clock() + 1) is True
    assert await store.claim_once(key, clock() + 600) is False
    assert await store.claim_once(secrets.token_hex(16), clock() + 600) is True   # another key is its own

    async def free_again() -> bool:
        return await store.claim_once(key, clock() + 600)

    await clock.expire(free_again, at=clock() + 1)


async def test_of_concurrent_claims_of_one_value_exactly_one_wins(store: Store, clock: Clock):
    key = secrets.token_hex(16)
    won = await asyncio.gather(*(store.claim_once(key, clock() + 600) for _ in range(20)))
    assert won.count(True) == 1
