"""ConnectionWatcher: long-lived connections end when their token expires or is revoked."""

from __future__ import annotations

import asyncio
import time

from gateway.forward.lifetime import ConnectionWatcher
from gateway.steps.identity import Identity
from gateway.store.base import Revocation

ISS = "https://auth.example.test"


def identity(sub: str = "alice", jti: str = "j1", exp_in_s: float = 300, iat: float | None = None) -> Identity:
    now = time.time()
    return Identity(sub=sub, roles=frozenset(), jti=jti, iss=ISS, exp=now + exp_in_s,
                    iat=now - 10 if iat is None else iat, claims={})


async def test_connection_ends_when_its_token_expires():
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    watcher = ConnectionWatcher()
    with watcher.watch(identity(exp_in_s=0.05), ended.set_result):
        assert await asyncio.wait_for(ended, 5) == "expired"
    assert len(watcher) == 0


async def test_an_already_expired_token_ends_at_once_unless_within_leeway():
    reasons: list[str] = []
    with ConnectionWatcher().watch(identity(exp_in_s=-1), reasons.append):
        assert reasons == ["expired"]
    with ConnectionWatcher(leeway_s=30).watch(identity(exp_in_s=-1), reasons.append):
        assert reasons == ["expired"]


async def test_revoking_the_jti_ends_only_that_tokens_connections():
    reasons: dict[str, list[str]] = {"j1": [], "j2": []}
    watcher = ConnectionWatcher()
    with watcher.watch(identity(jti="j1"), reasons["j1"].append), \
            watcher.watch(identity(jti="j2"), reasons["j2"].append):
        assert watcher.revoke(Revocation("jti", ISS, "j1", 0, time.time() + 60)) == 1
        assert reasons == {"j1": ["revoked"], "j2": []}
        assert watcher.revoke(Revocation("jti", "https://other.test", "j2", 0, time.time() + 60)) == 0


async def test_subject_watermark_ends_tokens_issued_before_it():
    now = time.time()
    old, new = [], []
    watcher = ConnectionWatcher()
    with watcher.watch(identity(jti="old", iat=now - 100), old.append), \
            watcher.watch(identity(jti="new", iat=now + 100), new.append):
        assert watcher.revoke(Revocation("sub", ISS, "alice", now, now + 60)) == 1
    assert (old, new) == (["revoked"], [])


async def past_the_expiry_of(exp_in_s: float) -> None:
    """Return once the loop has run every timer due when a token made now with ``exp_in_s`` expires: a
    token expiring later ends by itself (the loop runs due timers in the order they fall due)."""
    later: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    with ConnectionWatcher().watch(identity(jti="later", exp_in_s=exp_in_s + 0.05), later.set_result):
        assert await asyncio.wait_for(later, 5) == "expired"


async def test_end_is_reported_once_and_never_after_the_connection_closed():
    reasons: list[str] = []
    watcher = ConnectionWatcher()
    with watcher.watch(identity(exp_in_s=0.05), reasons.append):
        watcher.revoke(Revocation("jti", ISS, "j1", 0, time.time() + 60))
        watcher.revoke(Revocation("jti", ISS, "j1", 0, time.time() + 60))
    await past_the_expiry_of(0.05)
    assert reasons == ["revoked"]


async def test_a_connection_closed_before_its_token_expires_is_never_told():
    reasons: list[str] = []
    watcher = ConnectionWatcher()
    with watcher.watch(identity(exp_in_s=0.05), reasons.append):
        pass
    await past_the_expiry_of(0.05)
    assert reasons == [] and len(watcher) == 0
