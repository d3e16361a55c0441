"""`tokengate sessions list|end`: an account's sessions as a table, ending one through a real Redis (its
refresh tokens die, its sid is published), exit 1 "not found" for another's or an unknown id, and a
memory:// store refused with a clear message."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest

from gateway.cli import main
from gateway.config.load import StoreConfig
from gateway.store import open_store
from gateway.store.base import RefreshRecord, Revocation, SessionInfo
from tests.conftest import ISSUER


@pytest.fixture
def run(capsys):
    def _run(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return _run


def test_a_memory_store_is_refused_with_a_clear_message(run, write_config):
    config = str(write_config(store={"url": "memory://"}))
    for argv in (("list", "alice"), ("end", "alice", "some-id")):
        status, _, err = run("sessions", argv[0], "--config", config, *argv[1:])
        assert status == 1 and "memory://" in err and "Traceback" not in err


def test_unreachable_store_exits_1_naming_it_without_its_password(run, write_config):
    from tests.redisproc import free_port

    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"   # nothing listens there
    status, _, err = run("sessions", "list", "--config", str(write_config(store={"url": url})), "alice")
    assert status == 1 and ":***@127.0.0.1:" in err and "hunter2-secret" not in err and "Traceback" not in err


async def _login(redis_url: str, sub: str, family: str, created: float) -> str:
    store = await open_store(StoreConfig(url=redis_url))
    try:
        token_hash = hashlib.sha256(family.encode()).hexdigest()
        record = RefreshRecord(token_hash, family, sub, time.time() + 3600, {"roles": ["user"]})
        info = SessionInfo(family, created, created, "Firefox/140", "192.0.2.7", "github")
        await store.add_refresh(record, ISSUER, info)
        return record.token_hash
    finally:
        await store.close()


async def _state(redis_url: str, token_hash: str) -> tuple[RefreshRecord | None, list[Revocation]]:
    store = await open_store(StoreConfig(url=redis_url))
    try:
        return await store.find_refresh(token_hash), await store.live_revocations(time.time())
    finally:
        await store.close()


@pytest.mark.integration
def test_sessions_are_listed_and_one_is_ended_through_a_real_redis(run, write_config, redis_url):
    from tests.conftest import flush

    asyncio.run(flush(redis_url))
    config = str(write_config(store={"url": redis_url}))
    mine = asyncio.run(_login(redis_url, "alice", "fam-alice-1", 1_700_000_000.0))
    asyncio.run(_login(redis_url, "bob", "fam-bob-1", 1_700_000_000.0))
    status, out, _ = run("sessions", "list", "--config", config, "alice")
    assert status == 0
    header, *rows = out.splitlines()
    assert header.split()[:2] == ["ID", "METHOD"] and len(rows) == 1
    assert rows[0].split() == ["fam-alice-1", "github", "2023-11-14", "22:13:20Z", "2023-11-14", "22:13:20Z",
                               "192.0.2.7", "Firefox/140"]
    assert run("sessions", "end", "--config", config, "alice", "fam-bob-1")[0] == 1   # bob's: not found
    status, _, err = run("sessions", "end", "--config", config, "alice", "no-such-id")
    assert status == 1 and "not found" in err
    status, _, err = run("sessions", "end", "--config", config, "alice", "fam-alice-1")
    assert status == 0
    (line,) = [json.loads(text) for text in err.splitlines()]   # the operator's session end is audited
    assert {k: line[k] for k in ("logger", "event", "subject", "session", "client", "request_id", "outcome",
                                 "via")} == {
        "logger": "tokengate.audit", "event": "session_end", "subject": "alice", "session": "fam-alice-1",
        "client": None, "request_id": None, "outcome": "success", "via": "cli"}
    record, revoked = asyncio.run(_state(redis_url, mine))
    assert record is None and [(r.kind, r.id) for r in revoked] == [("sid", "fam-alice-1")]
    assert run("sessions", "list", "--config", config, "alice")[1].splitlines()[1:] == []
    assert run("sessions", "end", "--config", config, "alice", "fam-alice-1")[0] == 1   # ended already
