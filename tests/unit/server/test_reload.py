"""The parts of a reload that need no running gateway (server/reload.py): the reading of a file in a reader
process, what a dead reader becomes, which sections a reload keeps, and the routes compiled in
slices that give the event loop back."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config.load import GatewayConfig
from gateway.config.rules import RuleSet
from gateway.pipeline import Gateway
from gateway.server.reload import NEEDS_RESTART, ReadConfig, finish_reader, merged, read_config, start_reader


def test_a_reading_names_the_file_hash_its_reader_and_the_config(write_config: Callable[..., Path]) -> None:
    path = write_config()
    read = read_config(str(path))
    assert read.refused is None and isinstance(read.config, GatewayConfig)
    assert read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert read.read_by == os.getpid() and read.read_ms > 0


def test_a_config_that_does_not_validate_is_a_refusal_with_its_lines(write_config: Callable[..., Path]) -> None:
    path = write_config()
    path.write_text(path.read_text() + "\nunknown_section: 1\n")
    read = read_config(str(path))
    assert read.config is None and "unknown_section" in (read.refused or "") and f"{path}:" in (read.refused or "")


def test_the_reader_process_sends_the_validated_config(write_config: Callable[..., Path]) -> None:
    path = write_config()
    proc, answer = start_reader(str(path))
    read: ReadConfig = pickle.loads(finish_reader(proc, answer, str(path)))
    assert read.config is not None and read.read_by == proc.pid != os.getpid()
    assert proc.exitcode == 0


def test_a_reader_that_dies_without_an_answer_becomes_a_refusal(write_config: Callable[..., Path],
                                                                 tmp_path: Path) -> None:
    # A FIFO nobody writes to: the reader blocks opening it, and is killed as a hung NFS read would be.
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    proc, answer = start_reader(str(fifo))
    try:
        assert not answer.poll(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        read: ReadConfig = pickle.loads(finish_reader(proc, answer, str(fifo)))
    finally:
        if proc.exitcode is None:
            proc.kill()
    assert read.config is None and "ended without an answer" in (read.refused or "")


def test_sections_bound_to_sockets_keep_their_running_values(make_config: Callable[..., GatewayConfig]) -> None:
    running = make_config()
    new = make_config(listen={"host": "127.0.0.1", "port": 1}, routes=[{"path": "/x", "upstream": "accounts"}])
    applied, fixed = merged(running, new)
    assert fixed == ["listen"]
    assert all(getattr(applied, name) == getattr(running, name) for name in NEEDS_RESTART)
    assert applied.routes == new.routes and applied.source == new.source


@pytest.mark.parametrize("per_slice", [1, 7, 100])
async def test_routes_compiled_in_slices_match_as_compiled_at_once(per_slice: int, make_config: Callable[..., Any]
                                                                   ) -> None:
    routes = make_config(routes=[{"path": f"/svc{n}/items/*/detail", "upstream": "accounts", "roles": [f"team{n}"]}
                                 for n in range(250)]).routes
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    try:
        sliced = await RuleSet.compile_in_slices(routes, per_slice)
    finally:
        counter.cancel()
    whole = RuleSet.compile(routes)
    assert turns >= len(routes) // per_slice   # the loop ran between the slices
    for n in (0, 17, 249):
        assert sliced.match("GET", f"/svc{n}/items/x/detail") == whole.match("GET", f"/svc{n}/items/x/detail")
    assert len(sliced) == len(whole) == 250


async def test_the_routes_are_compiled_once_at_load_and_the_gateway_matches_with_that_trie(
        make_config: Callable[..., GatewayConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[int] = []
    original = RuleSet.compile.__func__   # type: ignore[attr-defined]

    def counting(cls: type[RuleSet], routes: Any) -> RuleSet:
        compiled.append(len(routes))
        return original(cls, routes)

    monkeypatch.setattr(RuleSet, "compile", classmethod(counting))
    cfg = make_config()
    assert compiled == [len(cfg.routes)]   # load_config, checking for conflicts
    gw = await Gateway.open(cfg)
    try:
        assert gw.rules is cfg.rules
    finally:
        await gw.close()
    assert compiled == [len(cfg.routes)]   # and never again


async def test_a_pickled_config_leaves_its_trie_behind_and_builds_it_in_slices(
        make_config: Callable[..., GatewayConfig]) -> None:
    cfg = make_config(routes=[{"path": f"/svc{n}/*", "upstream": "accounts"} for n in range(300)])
    assert cfg.rules is cfg.rules
    arrived: GatewayConfig = pickle.loads(pickle.dumps(cfg))
    assert arrived.model_dump() == cfg.model_dump() and arrived._rules is None   # the trie does not travel
    rules = await arrived.rules_in_slices()
    assert arrived.rules is rules and rules.match("GET", "/svc7/x").path == "/svc7/*"
