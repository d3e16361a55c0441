"""SIGTERM loses no request (issue 16, item 4): the real ``tokengate serve`` process, one worker and
two, stops accepting, answers what is in flight and an idle connection's next request with
``Connection: close``, drains and exits 0, within listen.drain_timeout. The clients are raw sockets
that never retry: a request whose bytes went out and got no whole answer is a lost one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.gatewayproc import GatewayProcess
from tests.integration.server.test_edge_server import Answer, closed_by_server, get, read_answer
from tests.integration.server.test_gateway_process import Recorder, _until_logged, _until_refused, gateway_config, recorder

pytestmark = pytest.mark.integration
__all__ = ["recorder"]   # the fixture, shared with test_gateway_process
BOUND_S = 20.0           # the longest any wait here may take (the recorder holds /slow for 20 s)
EXIT_S = 15.0            # how long a stopped gateway may take to exit
CLIENTS = 6
WARM_ANSWERS = 20        # answers each client has had before the signal


async def exit_status(gw: GatewayProcess, limit_s: float = EXIT_S) -> int:
    try:
        return await asyncio.to_thread(gw.proc.wait, limit_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"tokengate did not exit within {limit_s}s:\n{gw.log()}") from None


def says_close(answer: Answer) -> bool:
    return [v.lower() for v in answer.values("Connection")] == ["close"]


async def open_client(gw: GatewayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port), BOUND_S)


# -- one request in flight, one idle connection ------------------------------------------------------

async def test_a_request_in_flight_at_sigterm_gets_its_whole_answer_with_connection_close(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    gw = await start_gateway(gateway_config(keys_dir, recorder.url))
    reader, writer = await open_client(gw)
    try:
        writer.write(get("/api/public/slow"))
        await asyncio.wait_for(recorder.slow_started.wait(), BOUND_S)
        gw.proc.send_signal(signal.SIGTERM)
        await _until_refused(gw.port)   # draining: the listener is closed
        recorder.release.set()
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.json() == {"ok": True, "path": "/api/public/slow"}, answer
        assert says_close(answer), answer
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert await exit_status(gw) == 0


async def test_an_idle_connection_whose_next_request_follows_sigterm_gets_an_answer_with_connection_close(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    gw = await start_gateway(gateway_config(keys_dir, recorder.url))
    reader, writer = await open_client(gw)
    try:
        writer.write(get("/api/public/first"))
        first = await read_answer(reader)
        assert first.status == 200 and not says_close(first), first   # idle and kept alive
        gw.proc.send_signal(signal.SIGTERM)
        await _until_refused(gw.port)   # draining for sure before the next request goes out
        writer.write(get("/api/public/next"))
        answer = await read_answer(reader)
        assert answer.status == 200 and answer.json()["path"] == "/api/public/next", answer
        assert says_close(answer), answer
        assert await closed_by_server(reader)
    finally:
        writer.close()
    assert await exit_status(gw) == 0


# -- clients that keep asking, a SIGTERM mid-way -------------------------------------------------------

@dataclass
class Exchange:
    path: str
    after_drain: bool          # sent once the port was seen refusing connections (the drain had begun)
    answer: Answer | None = None
    error: str = ""            # why no whole answer came: the request was lost


@dataclass
class Client:
    """Asks on a keep-alive connection, one request at a time, and never retries: a request with no
    whole answer is recorded as lost and the client stops. After an answer that says close it waits
    for the server's close and opens a new connection; a refused connection ends it."""

    number: int
    drain_seen: asyncio.Event   # set once the port refuses connections
    exchanges: list[Exchange] = field(default_factory=list)
    refused: bool = False

    @property
    def answered(self) -> int:
        return sum(e.answer is not None for e in self.exchanges)

    async def run(self, port: int) -> None:
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), BOUND_S)
            except ConnectionRefusedError:   # nothing was sent, nothing is lost
                self.refused = True
                return
            try:
                if not await self._ask_until_close(reader, writer):
                    return
            finally:
                writer.close()

    async def _ask_until_close(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """False once a request was lost (the client gives up: it never retries)."""
        while True:
            exchange = Exchange(f"/api/public/c{self.number}/{len(self.exchanges)}", self.drain_seen.is_set())
            self.exchanges.append(exchange)
            try:
                writer.write(get(exchange.path))
                await writer.drain()
                exchange.answer = await read_answer(reader)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                exchange.error = repr(exc)
                return False
            if says_close(exchange.answer):
                if not await closed_by_server(reader):
                    exchange.error = "the answer said close and the connection stayed open"
                    return False
                return True


async def ask_through_sigterm(gw: GatewayProcess) -> list[Client]:
    """CLIENTS clients ask; once each has WARM_ANSWERS answers the gateway gets SIGTERM; the clients run
    until each is refused a connection (or loses a request)."""
    drain_seen = asyncio.Event()
    clients = [Client(i, drain_seen) for i in range(CLIENTS)]
    tasks = [asyncio.create_task(c.run(gw.port)) for c in clients]
    try:
        async with asyncio.timeout(BOUND_S):
            while any(c.answered < WARM_ANSWERS for c in clients):
                assert not any(t.done() for t in tasks), [c.exchanges[-1] for c in clients]
                await asyncio.sleep(0.01)
            gw.proc.send_signal(signal.SIGTERM)
            await _until_refused(gw.port)
            drain_seen.set()
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return clients


def assert_no_request_lost(clients: list[Client], *, late_answers_close: bool = True) -> None:
    """``late_answers_close``: every answer to a request sent once the port refused says close. Not
    so with workers: a worker keeps connections alive from the close of its listener until every
    worker's is closed (test_no_worker_tells_its_clients_to_reconnect_while_another_still_listens)."""
    failed = [(c.number, e) for c in clients for e in c.exchanges if e.answer is None or e.error]
    assert not failed, failed
    for client in clients:
        assert all(e.answer is not None and e.answer.status == 200
                   and e.answer.json()["path"] == e.path for e in client.exchanges), client.exchanges
        assert client.refused   # its last connection attempt, after the drain began, was refused
        late = [e for e in client.exchanges if e.after_drain]
        assert not late_answers_close or all(e.answer is not None and says_close(e.answer) for e in late), late
        assert says_close(client.exchanges[-1].answer)   # every connection it had ended with a close
    assert sum(c.answered for c in clients) > CLIENTS * WARM_ANSWERS


async def test_clients_asking_on_keep_alive_through_sigterm_lose_no_request_and_are_then_refused(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    gw = await start_gateway(gateway_config(keys_dir, recorder.url))
    clients = await ask_through_sigterm(gw)
    assert_no_request_lost(clients)
    assert await exit_status(gw) == 0


async def test_with_two_workers_sigterm_to_the_supervisor_loses_no_request(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    gw = await start_gateway(gateway_config(keys_dir, recorder.url, listen={"workers": 2}))
    await _until_logged(gw, "tokengate serving on", 2)
    clients = await ask_through_sigterm(gw)
    assert_no_request_lost(clients, late_answers_close=False)
    assert await exit_status(gw) == 0


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port``, from the kernel (/proc/net/tcp, state 0A)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return sum(1 for line in table.readlines()[1:] if line.split()[1] == wanted and line.split()[3] == "0A")


async def until_listeners(port: int, count: int) -> None:
    async with asyncio.timeout(BOUND_S):
        while listeners(port) != count:
            await asyncio.sleep(0.01)


async def test_no_worker_tells_its_clients_to_reconnect_while_another_still_listens(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    """A worker that closed its listener answers on without Connection: close until every worker has
    closed its own: a client told to reconnect could otherwise land in the queue of a listener about
    to close, which the kernel resets. One worker is held (SIGSTOP) with its listener open."""
    gw = await start_gateway(gateway_config(keys_dir, recorder.url, listen={"workers": 2}))
    await _until_logged(gw, "tokengate serving on", 2)
    await until_listeners(gw.port, 2)
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", gw.log())]
    held = pids[0]
    os.kill(held, signal.SIGSTOP)
    try:
        reader, writer = await connection_to_a_running_worker(gw)
        try:
            gw.proc.send_signal(signal.SIGTERM)
            await until_listeners(gw.port, 1)   # the running worker closed its listener; the held one has not
            writer.write(get("/api/public/while-one-listens"))
            answer = await read_answer(reader)
            assert answer.status == 200 and not says_close(answer), answer
            os.kill(held, signal.SIGCONT)
            await until_listeners(gw.port, 0)
            writer.write(get("/api/public/after-all-closed"))
            answer = await read_answer(reader)
            assert answer.status == 200 and says_close(answer), answer
            assert await closed_by_server(reader)
        finally:
            writer.close()
    finally:
        with contextlib.suppress(ProcessLookupError):   # (it has exited when all went well)
            os.kill(held, signal.SIGCONT)
    assert await exit_status(gw) == 0


async def connection_to_a_running_worker(gw: GatewayProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A kept-alive connection that a worker not held has answered on (the kernel picks the listener
    of each new connection; one held never answers)."""
    for _ in range(40):
        reader, writer = await open_client(gw)
        writer.write(get("/api/public/first"))
        try:
            answer = await read_answer_within(reader, 0.5)
        except TimeoutError:
            writer.close()
            continue
        assert answer.status == 200 and not says_close(answer), answer
        return reader, writer
    raise AssertionError("no connection reached the running worker in 40 tries")


async def read_answer_within(reader: asyncio.StreamReader, limit_s: float) -> Answer:
    async with asyncio.timeout(limit_s):
        return await read_answer(reader)


# -- the bound ------------------------------------------------------------------------------------------

async def test_a_request_slower_than_drain_timeout_is_cut_and_the_process_still_exits_0(
        start_gateway: Callable[..., Any], recorder: Recorder, keys_dir: Path) -> None:
    # The upstream holds /slow for 20 s and its timeout is longer: only the drain bound can end it.
    gw = await start_gateway(gateway_config(keys_dir, recorder.url, timeout="60s", listen={"drain_timeout": "1s"}))
    reader, writer = await open_client(gw)
    try:
        writer.write(get("/api/public/slow"))
        await asyncio.wait_for(recorder.slow_started.wait(), BOUND_S)
        gw.proc.send_signal(signal.SIGTERM)
        assert await exit_status(gw) == 0   # well before the upstream would have answered
        assert await closed_by_server(reader)   # cut: no answer at all
        assert not recorder.release.is_set()
    finally:
        writer.close()
        recorder.release.set()
