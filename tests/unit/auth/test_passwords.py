"""PasswordHasher: argon2id hashes, verification, the dummy verify, and hashing off the event loop."""

from __future__ import annotations

import asyncio
import threading

import argon2
import pytest

from gateway.auth.accounts.passwords import PasswordHasher, is_argon2id
from tests.conftest import CHEAP_ARGON2 as CHEAP

# Costly enough that 20 hashes take a while, cheap enough for a unit test.
MODERATE = argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=2,
                             memory_cost=4096, parallelism=1)


@pytest.fixture
def hasher():
    h = PasswordHasher(CHEAP)
    yield h
    h.close()


async def test_hash_is_argon2id_and_verifies(hasher):
    password_hash = await hasher.hash("correct horse")
    assert is_argon2id(password_hash)
    assert "correct horse" not in password_hash
    assert await hasher.verify(password_hash, "correct horse")


async def test_wrong_password_does_not_verify(hasher):
    password_hash = await hasher.hash("correct horse")
    assert not await hasher.verify(password_hash, "correct horse ")
    assert not await hasher.verify(password_hash, "")


async def test_two_hashes_of_one_password_differ_by_salt(hasher):
    assert await hasher.hash("same") != await hasher.hash("same")


async def test_unreadable_stored_hash_refuses_instead_of_raising(hasher):
    assert not await hasher.verify("$argon2id$garbage", "x")
    assert not await hasher.verify("plaintext", "plaintext")


async def test_dummy_verify_does_the_work_of_a_real_one_and_grants_nothing(hasher, monkeypatch):
    calls = []
    real_verify = argon2.PasswordHasher.verify
    monkeypatch.setattr(argon2.PasswordHasher, "verify",
                        lambda self, h, p: calls.append(h) or real_verify(self, h, p))
    assert await hasher.verify_dummy("anything") is None
    assert await hasher.verify_dummy("anything else") is None
    assert len(calls) == 2 and is_argon2id(calls[0]) and calls[0] == calls[1]


def test_hash_sync_makes_hashes_the_async_verify_accepts(hasher):
    password_hash = hasher.hash_sync("from the cli")
    assert asyncio.run(hasher.verify(password_hash, "from the cli"))


async def test_needs_rehash_when_parameters_change(hasher):
    old = await hasher.hash("pw")
    assert not hasher.needs_rehash(old)
    stronger = PasswordHasher(MODERATE)
    try:
        assert stronger.needs_rehash(old)
        assert stronger.needs_rehash("not a hash")
    finally:
        stronger.close()


def test_only_argon2id_parameters_are_accepted():
    argon2i = argon2.Parameters(type=argon2.Type.I, version=19, salt_len=16, hash_len=32, time_cost=1,
                                memory_cost=8, parallelism=1)
    with pytest.raises(ValueError):
        PasswordHasher(argon2i)


def test_is_argon2id_refuses_other_schemes():
    argon2i = argon2.PasswordHasher(type=argon2.Type.I, time_cost=1, memory_cost=8, parallelism=1).hash("x")
    assert not is_argon2id(argon2i)
    assert not is_argon2id("$2b$12$abcdefghijklmnopqrstuv")   # bcrypt
    assert not is_argon2id(None)   # type: ignore[arg-type]


async def test_event_loop_keeps_ticking_while_hashes_run_in_a_bounded_pool(monkeypatch):
    hasher = PasswordHasher(MODERATE, max_workers=2)
    threads: set[str] = set()
    real_hash = argon2.PasswordHasher.hash
    monkeypatch.setattr(argon2.PasswordHasher, "hash",
                        lambda self, p: threads.add(threading.current_thread().name) or real_hash(self, p))
    ticks_during_hashing = 0

    async def ticker(work: asyncio.Future) -> None:
        nonlocal ticks_during_hashing
        while not work.done():
            ticks_during_hashing += 1
            await asyncio.sleep(0)

    try:
        work = asyncio.gather(*(hasher.hash(f"pw{i}") for i in range(20)))
        await asyncio.gather(ticker(work), work)
    finally:
        hasher.close()
    assert threading.main_thread().name not in threads
    assert 1 <= len(threads) <= 2
    # Hashing on the loop would allow at most one tick per hash; off the loop it ticks freely.
    assert ticks_during_hashing > 100
