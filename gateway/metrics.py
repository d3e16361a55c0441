"""Prometheus metrics on the admin port, at no per-request cost worth the name.

A request pays for one call to ``Recorder.request``: a dict increment and a few bucket increments in
plain lists (1-2 µs), and a ``perf_counter`` stamp where each of its stages ends (pipeline.py, steps/tokencache.py).
prometheus-client's own calls (a ``labels()`` lookup, a lock, in multi-process mode an mmap write)
happen only in ``Exporter.fold``, once a second from the admin app and once more at every scrape and
at shutdown, which moves what was counted since the last fold into the prometheus metrics. Values
that already exist as state (the token cache's hits, the revocation mirror's size and sync, open
connections) are read at fold time, never counted per request.

With ``workers > 1`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` to a private directory before
it spawns the workers: prometheus-client then keeps each worker's values in files there, and a scrape
(answered by whichever worker the kernel picks) adds them up across workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import weakref
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from .logs import UPSTREAM_TRUNCATED, AccessNote

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FOLD_EVERY_S = 1.0
# Bucket upper bounds in milliseconds (what the request path measures); exported in seconds.
UPSTREAM_BOUNDS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0)
GATEWAY_BOUNDS_MS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
# The stages share one histogram, so one set of bounds: microseconds (a cached token, a route match)
# up to an upstream's seconds.
STAGE_BOUNDS_MS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0,
                   1000.0, 2500.0, 10000.0)
STAGES = ("route", "token", "revocation", "upstream")
METHOD_CLASS = {"GET": "read", "HEAD": "read", "OPTIONS": "read",
                "POST": "write", "PUT": "write", "PATCH": "write", "DELETE": "write"}
NO_ROUTE = "none"
AUTH_ACTIONS = ("login", "refresh", "logout")
UPSTREAM_BROKEN = "upstream_broken"   # the outcome of an answer the upstream broke off inside its body


def _histogram_slots(bounds: tuple[float, ...]) -> list[float]:
    """One count a bucket (the last one +Inf), then the sum."""
    return [0] * (len(bounds) + 1) + [0.0]


class Recorder:
    """A worker's counts since the last fold, in plain Python structures (the request path's side)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str | None, str, int, str | None, bool], int] = {}
        self.upstream: dict[str | None, list[float]] = {}
        self.gateway = _histogram_slots(GATEWAY_BOUNDS_MS)
        self.stages = [_histogram_slots(STAGE_BOUNDS_MS) for _ in STAGES]   # in the order of STAGES
        self.auth: dict[tuple[str, str], int] = {}
        self.servers: weakref.WeakSet[web.Server] = weakref.WeakSet()   # the proxy port's, for open connections

    def request(self, method: str, status: int, note: AccessNote, started: float) -> None:
        """One answered request (the proxy port's wrapper calls it once the answer is known, with what
        its ``note`` learnt). ``note.upstream_ms`` is None unless the upstream answered: then the
        request counts as forwarded. ``started``: the request's ``perf_counter`` stamp."""
        total_ms = (time.perf_counter() - started) * 1000.0
        upstream_ms = note.upstream_ms
        key = (note.route, method, status, note.code, upstream_ms is not None)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        routed_at = note.routed_at
        if routed_at:   # the stages, inlined: a call apiece would cost more than the counting
            stage_ms = (routed_at - started) * 1000.0
            slots = self.stages[0]
            slots[bisect_left(STAGE_BOUNDS_MS, stage_ms)] += 1
            slots[-1] += stage_ms
            checked_at = note.checked_at
            if checked_at:
                verified_at = note.verified_at
                if verified_at:   # not on a cache hit, which has no revocation check of its own
                    stage_ms = (checked_at - verified_at) * 1000.0
                    slots = self.stages[2]
                    slots[bisect_left(STAGE_BOUNDS_MS, stage_ms)] += 1
                    slots[-1] += stage_ms
                else:
                    verified_at = checked_at
                stage_ms = (verified_at - routed_at) * 1000.0
                slots = self.stages[1]
                slots[bisect_left(STAGE_BOUNDS_MS, stage_ms)] += 1
                slots[-1] += stage_ms
        if upstream_ms is not None:
            total_ms -= upstream_ms
            slots = self.upstream.get(note.upstream)
            if slots is None:
                slots = self.upstream[note.upstream] = _histogram_slots(UPSTREAM_BOUNDS_MS)
            slots[bisect_left(UPSTREAM_BOUNDS_MS, upstream_ms)] += 1
            slots[-1] += upstream_ms
            slots = self.stages[3]
            slots[bisect_left(STAGE_BOUNDS_MS, upstream_ms)] += 1
            slots[-1] += upstream_ms
            if note.ws_close is not None:   # a WebSocket's time is its session's, not the gateway's
                return
        slots = self.gateway
        slots[bisect_left(GATEWAY_BOUNDS_MS, total_ms)] += 1
        slots[-1] += total_ms

    def auth_action(self, action: str, outcome: str) -> None:
        key = (action, outcome)
        self.auth[key] = self.auth.get(key, 0) + 1

    def take(self) -> tuple[dict[Any, int], dict[str | None, list[float]], list[float], list[list[float]],
                            dict[tuple[str, str], int]]:
        """What was counted since the last call, and start afresh."""
        taken = self.requests, self.upstream, self.gateway, self.stages, self.auth
        self.requests, self.upstream, self.auth = {}, {}, {}
        self.gateway = _histogram_slots(GATEWAY_BOUNDS_MS)
        self.stages = [_histogram_slots(STAGE_BOUNDS_MS) for _ in STAGES]
        return taken


METRICS = web.AppKey("metrics", Recorder)   # on the main app with admin.metrics (build_app)


def counted(action: str) -> Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]],
                                     Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Count an auth endpoint's answers by outcome: ``success``, or the refusal's error code."""
    from .errors import GatewayError

    def wrap(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
             ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def counting(request: web.Request) -> web.StreamResponse:
            recorder = request.app.get(METRICS)
            if recorder is None:   # an app built without metrics
                return await handler(request)
            try:
                resp = await handler(request)
            except GatewayError as exc:
                recorder.auth_action(action, exc.code)
                raise
            recorder.auth_action(action, "success")
            return resp
        return counting
    return wrap


def _outcome(status: int, forwarded: bool, code: str | None) -> str:
    if forwarded:   # a WebSocket session too (101); a streamed answer the client left is still forwarded
        return UPSTREAM_BROKEN if code == UPSTREAM_TRUNCATED else "forwarded"
    return "answered" if status < 400 else str(status)


class Exporter:
    """The prometheus metrics, and the fold that feeds them from a Recorder. Multi-process: one
    Exporter a worker (the admin app's), whose values prometheus-client keeps in the worker's files."""

    def __init__(self, recorder: Recorder, *, multiprocess: bool | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from .store.base import StoreUnavailable

        self.recorder = recorder
        self.multiprocess = MULTIPROC_ENV in os.environ if multiprocess is None else multiprocess
        # Multi-process: the values live in files; a scrape reads every worker's through its own registry.
        own = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        self.registry = own
        self.requests = Counter("tokengate_requests", "Requests on the proxy port by route, method class "
                                "(read, write, other), outcome and refusal code",
                                ["route", "method", "outcome", "reason"], registry=own)
        self.upstream_seconds = Histogram("tokengate_upstream_duration_seconds",
                                          "Time from sending a request upstream to its answer's headers",
                                          ["upstream"], buckets=[b / 1000 for b in UPSTREAM_BOUNDS_MS], registry=own)
        self.gateway_seconds = Histogram("tokengate_gateway_duration_seconds",
                                         "Time a request spent in the gateway outside the upstream call "
                                         "(the whole request when it was not forwarded; WebSocket sessions "
                                         "are left out)",
                                         buckets=[b / 1000 for b in GATEWAY_BOUNDS_MS], registry=own)
        self.stage_seconds = Histogram("tokengate_stage_duration_seconds",
                                       "Time a proxied request spent in each stage it completed: route (from "
                                       "its arrival to its route matched: path normalisation and the rule "
                                       "match), token (extraction and verification, or the cache lookup of a "
                                       "token seen before), revocation (the revocation check of a token that "
                                       "was not in the cache; a cached token has none of its own, as its entry "
                                       "dies when it is revoked), upstream (from sending the request upstream "
                                       "to its answer's headers). Authorization, identity headers and relaying "
                                       "the answer are not measured apart",
                                       ["stage"], buckets=[b / 1000 for b in STAGE_BOUNDS_MS], registry=own)
        self.auth = Counter("tokengate_auth_requests", "Login, refresh and logout answers by outcome "
                            "(success or the error code)", ["action", "outcome"], registry=own)
        self.cache_lookups = Counter("tokengate_token_cache_lookups", "Verified-token cache lookups",
                                     ["result"], registry=own)
        self.store_errors = Counter("tokengate_store_errors", "Store calls that failed: the store was "
                                    "unreachable or did not answer in time", registry=own)
        self.mirror_size = Gauge("tokengate_revocation_mirror_entries", "Revocations in the local mirror "
                                 "(summed over workers)", registry=own, multiprocess_mode="livesum")
        self.mirror_in_sync = Gauge("tokengate_revocation_mirror_in_sync", "1 when the revocation mirror "
                                    "is in sync with the store (the lowest over workers)",
                                    registry=own, multiprocess_mode="livemin")
        self.mirror_age = Gauge("tokengate_revocation_mirror_last_sync_age_seconds", "Seconds since the "
                                "revocation mirror last loaded from the store (the highest over workers)",
                                registry=own, multiprocess_mode="livemax")
        self.mirror_lag = Gauge("tokengate_revocation_mirror_lag_seconds", "Delay between a revocation's "
                                "publication by the store and its arrival in this mirror, for the last one "
                                "(the highest over workers; -1 before the first)", registry=own,
                                multiprocess_mode="livemax")
        self.connections = Gauge("tokengate_open_connections", "Client connections open on the proxy port",
                                 registry=own, multiprocess_mode="livesum")
        self.long_lived = Gauge("tokengate_open_long_lived_connections", "WebSockets and streamed answers "
                                "open with a token (they end when it expires or is revoked)",
                                registry=own, multiprocess_mode="livesum")
        self._children: dict[Any, Any] = {}
        self._cache: Any = None
        self._cache_seen = (0, 0)
        self._store_seen = StoreUnavailable.raised   # this process's count: only the rise from now on is ours
        self._scrape_registry: Any = None

    def fold(self, gateway: Any = None) -> None:
        """Move the recorder's counts into the metrics and read the gateway's state (None: no gateway yet)."""
        requests, upstream, gateway_slots, stage_slots, auth = self.recorder.take()
        children = self._children
        for key, n in requests.items():
            child = children.get(key)
            if child is None:
                route, method, status, code, forwarded = key
                child = children[key] = self.requests.labels(
                    route if route is not None else NO_ROUTE, METHOD_CLASS.get(method, "other"),
                    _outcome(status, forwarded, code), code or "")
            child.inc(n)
        for name, slots in upstream.items():
            _add_histogram(self.upstream_seconds.labels(name if name is not None else NO_ROUTE), slots)
        _add_histogram(self.gateway_seconds, gateway_slots)
        for stage, slots in zip(STAGES, stage_slots):
            _add_histogram(self.stage_seconds.labels(stage), slots)
        for (action, outcome), n in auth.items():
            self.auth.labels(action, outcome).inc(n)
        self._fold_store_errors()
        self.connections.set(sum(len(server.connections) for server in list(self.recorder.servers)))
        if gateway is not None:
            self._fold_gateway(gateway)

    def _fold_store_errors(self) -> None:
        from .store.base import StoreUnavailable

        raised = StoreUnavailable.raised
        if raised > self._store_seen:
            self.store_errors.inc(raised - self._store_seen)
        self._store_seen = raised

    def _fold_gateway(self, gw: Any) -> None:
        cache = gw.authenticator.cache
        if cache is not self._cache:   # a new Gateway (reload): its cache counts from zero
            self._cache, self._cache_seen = cache, (0, 0)
        hits, misses = cache.hits, cache.misses
        seen_hits, seen_misses = self._cache_seen
        if hits > seen_hits:
            self.cache_lookups.labels("hit").inc(hits - seen_hits)
        if misses > seen_misses:
            self.cache_lookups.labels("miss").inc(misses - seen_misses)
        self._cache_seen = (hits, misses)
        denylist = gw.denylist
        self.mirror_size.set(len(denylist))
        self.mirror_in_sync.set(1 if denylist.in_sync else 0)
        last = denylist.last_sync_at
        self.mirror_age.set(time.time() - last if last is not None else -1)
        self.mirror_lag.set(denylist.lag_s if denylist.lag_s is not None else -1)
        self.long_lived.set(len(gw.forwarder.watcher))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Every worker's metrics, and the content type: the text format, or OpenMetrics when the
        scraper's ``Accept`` header prefers it (as Prometheus' does)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = self.registry
        if registry is None:
            if self._scrape_registry is None:
                self._scrape_registry = CollectorRegistry()
                MultiProcessCollector(self._scrape_registry)
            registry = self._scrape_registry
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type


def _add_histogram(histogram: Any, slots: list[float]) -> None:
    """Add counted bucket counts (milliseconds) to a prometheus Histogram: its per-bucket values are
    not cumulative (it sums them when collected), as here."""
    if not any(slots[:-1]):
        return
    for i, n in enumerate(slots[:-1]):
        if n:
            histogram._buckets[i].inc(n)
    histogram._sum.inc(slots[-1] / 1000.0)


def add_metrics(admin: web.Application, recorder: Recorder, gateway_of: Callable[[], Any]) -> None:
    """``/metrics`` on the admin app, and the fold of ``recorder``: every FOLD_EVERY_S, at each
    scrape, at shutdown."""
    exp = Exporter(recorder)

    async def metrics(request: web.Request) -> web.Response:
        exp.fold(gateway_of())
        body, content_type = exp.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def folding(app: web.Application) -> AsyncIterator[None]:
        exp.fold(gateway_of())   # at once: a worker's gauges count from its start
        task = asyncio.create_task(_fold_every(exp, gateway_of))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        exp.fold(gateway_of())   # the admin app stops last: every request has been counted by now

    admin.router.add_get("/metrics", metrics)
    admin.cleanup_ctx.append(folding)


async def _fold_every(exp: Exporter, gateway_of: Callable[[], Any]) -> None:
    while True:
        await asyncio.sleep(FOLD_EVERY_S)
        exp.fold(gateway_of())


def mark_dead(pids: Iterable[int]) -> None:
    """The supervisor's part when workers end: their live gauges stop counting (their counters stay)."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    for pid in pids:
        multiprocess.mark_process_dead(pid, path)


def make_multiprocess_dir() -> str:
    """The supervisor's part before it spawns workers: a fresh private directory for their values,
    named in the environment the workers inherit (prometheus-client reads it when first imported)."""
    import tempfile

    path = tempfile.mkdtemp(prefix="tokengate-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    import shutil

    if os.environ.get(MULTIPROC_ENV) == path:
        del os.environ[MULTIPROC_ENV]
    shutil.rmtree(path, ignore_errors=True)
