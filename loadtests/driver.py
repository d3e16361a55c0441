"""The built-in load driver: asyncio + aiohttp on uvloop, one keep-alive connector, cycling
through the pool at full speed or at a fixed rate, bounded in request count and in time. DPoP-bound
tokens go with a fresh proof each (proofs.py); `dpop_replay` resends an accepted one.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

import aiohttp

from gateway.forward.headers import is_loopback

from .proofs import DPOP_HEADER, DPOP_KINDS, signer_for

ERROR = -1            # status recorded for a connection error or a timeout
REQUEST_TIMEOUT_S = 10.0
GRACE_S = 10.0        # the hard cap is the duration plus this
DEFAULT_CAP_S = 120.0 # the hard cap of a run bounded by a request count only
PROGRESS_EVERY_S = 0.25


class RemoteTarget(Exception):
    """The target is not a loopback address and --allow-remote was not given."""


def check_target(url: str, allow_remote: bool = False) -> str:
    """``url`` without its trailing slash; RemoteTarget unless it is loopback (or allowed)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RemoteTarget(f"{url!r} is not an http:// or https:// URL with a host")
    if not allow_remote and not is_loopback(parts.hostname):
        raise RemoteTarget(f"refusing to load {parts.hostname}: it is not a loopback address "
                           "(127.0.0.0/8, ::1, localhost); pass --allow-remote if you own that host")
    return url.rstrip("/")


@dataclass(frozen=True)
class Plan:
    url: str
    requests: int | None = None      # stop after this many
    duration_s: float | None = None  # stop starting requests after this long
    concurrency: int = 64
    rate: float | None = None        # requests per second; None: full speed
    progress: bool = True
    max_time_s: float | None = None  # hard cap; default: the duration + GRACE_S, or DEFAULT_CAP_S

    @property
    def hard_cap_s(self) -> float:
        if self.max_time_s is not None:
            return self.max_time_s
        return self.duration_s + GRACE_S if self.duration_s else DEFAULT_CAP_S


@dataclass
class Results:
    """One row per answered or failed request, in compact arrays (latency in ms)."""

    kinds: list[str]
    started: array[float] = field(default_factory=lambda: array("d"))
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("h"))
    slot: array[int] = field(default_factory=lambda: array("l"))   # index into the pool
    error_types: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cut_short: bool = False

    def add(self, started: float, latency_ms: float, status: int, slot: int) -> None:
        self.started.append(started)
        self.latency_ms.append(latency_ms)
        self.status.append(status)
        self.slot.append(slot)

    @property
    def errors(self) -> int:
        return sum(self.error_types.values())


class Pacer:
    """Token bucket: one request per 1/rate s, with a burst of at most ``burst`` after a stall."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.burst = burst
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(self.next, now - self.burst * self.interval)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Driver:
    def __init__(self, plan: Plan, pool: Sequence[dict[str, Any]], out: TextIO = sys.stderr) -> None:
        self.plan, self.pool, self.out = plan, pool, out
        self.headers = [{"Authorization": f"{_scheme(row)} {row['token']}"} for row in pool]
        self.urls = [plan.url + row["path"] for row in pool]
        self.signers = [signer_for(row, plan.url) for row in pool]
        self.results = Results(kinds=[row["kind"] for row in pool])
        self.spent: tuple[str, dict[str, str]] | None = None   # the last dpop request accepted
        self.spent_ready = asyncio.Event()
        self.issued = 0
        self.pacer = Pacer(plan.rate) if plan.rate else None

    async def run(self) -> Results:
        self.t0 = time.monotonic()
        self.stop_at = self.t0 + min(self.plan.duration_s or math.inf, self.plan.hard_cap_s)
        connector = aiohttp.TCPConnector(limit=self.plan.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            workers = [asyncio.create_task(self._worker(session)) for _ in range(self.plan.concurrency)]
            progress = asyncio.create_task(self._progress()) if self.plan.progress else None
            done, pending = await asyncio.wait(workers, timeout=self.plan.hard_cap_s)
            self.results.cut_short = bool(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()
            self.results.elapsed_s = time.monotonic() - self.t0
            if progress is not None:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                self._show(final=True)
        return self.results

    def _next_slot(self) -> int | None:
        limit = self.plan.requests
        if (limit is not None and self.issued >= limit) or time.monotonic() >= self.stop_at:
            return None
        self.issued += 1
        return (self.issued - 1) % len(self.pool)

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while True:
            if self.pacer is not None:
                await self.pacer.wait()
            slot = self._next_slot()
            if slot is None:
                return
            await self._one(session, slot)

    async def _one(self, session: aiohttp.ClientSession, slot: int) -> None:
        url, headers = await self._request(slot)   # proofs are signed before the clock starts
        start = time.perf_counter()
        started = time.monotonic() - self.t0
        try:
            if not url:
                raise NothingToReplay()
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, NothingToReplay) as exc:
            name = type(exc).__name__
            self.results.error_types[name] = self.results.error_types.get(name, 0) + 1
            status = ERROR
        self.results.add(started, (time.perf_counter() - start) * 1000.0, status, slot)
        if self.results.kinds[slot] == "dpop":
            if status == 200:
                self.spent = (url, headers)
            self.spent_ready.set()   # answered: a replay need not wait any longer

    async def _request(self, slot: int) -> tuple[str, dict[str, str]]:
        """The URL and headers of one request: with a fresh proof for a bound token; for `dpop_replay`
        the last accepted `dpop` request once more, waiting (bounded) until a first `dpop` one is
        answered; ("", {}) when none was accepted."""
        signer = self.signers[slot]
        if signer is not None:
            return self.urls[slot], {**self.headers[slot], DPOP_HEADER: signer.proof()}
        if self.results.kinds[slot] != "dpop_replay":
            return self.urls[slot], self.headers[slot]
        if not self.spent_ready.is_set():
            try:
                await asyncio.wait_for(self.spent_ready.wait(), REQUEST_TIMEOUT_S)
            except asyncio.TimeoutError:
                self.spent_ready.set()   # wait once, not on every replay
        return self.spent or ("", {})

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._show()

    def _show(self, final: bool = False) -> None:
        done = len(self.results.status)
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        line = f"\r{done} requests  {done / elapsed:,.0f} req/s  {self.results.errors} errors  {elapsed:.1f}s"
        self.out.write(line.ljust(72) + ("\n" if final else ""))
        self.out.flush()


class NothingToReplay(Exception):
    """A `dpop_replay` request found no accepted `dpop` request to resend (counted as an error)."""


def _scheme(row: dict[str, Any]) -> str:
    return "DPoP" if row["kind"] in DPOP_KINDS else "Bearer"


def run_load(plan: Plan, pool: Sequence[dict[str, Any]]) -> Results:
    """Run the plan on a fresh uvloop event loop."""
    import uvloop

    return uvloop.run(Driver(plan, pool).run())
