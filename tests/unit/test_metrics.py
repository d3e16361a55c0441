"""The metrics' two halves: the per-request Recorder (plain counts) and the Exporter's fold into prometheus."""

from __future__ import annotations

import time
import timeit
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import AccessNote
from gateway.metrics import GATEWAY_BOUNDS_MS, STAGE_BOUNDS_MS, UPSTREAM_BOUNDS_MS, Exporter, Recorder
from gateway.store.base import StoreUnavailable


def answered(recorder: Recorder, route: str | None, method: str, status: int, code: str | None,
             upstream: str | None, upstream_ms: float | None, started: float, **note: Any) -> None:
    """One request through Recorder.request, its note filled as the pipeline would."""
    recorder.request(method, status, AccessNote(route=route, upstream=upstream, code=code, upstream_ms=upstream_ms,
                                                **note), started)


def samples(exporter: Exporter) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = exporter.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(exporter: Exporter, name: str, **labels: str) -> float:
    return samples(exporter).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def exporter(recorder: Recorder) -> Exporter:
    return Exporter(recorder, multiprocess=False)


def test_requests_are_counted_by_route_method_class_outcome_and_reason(recorder, exporter):
    started = time.perf_counter()
    for _ in range(3):
        answered(recorder, "GET /api/orders", "GET", 200, None, "orders", 2.0, started)
    answered(recorder, "GET /api/orders", "HEAD", 500, None, "orders", 2.0, started)   # the upstream's 500
    answered(recorder, "GET /api/orders", "GET", 401, "token_expired", "orders", None, started)
    answered(recorder, "POST /api/orders", "POST", 403, "forbidden", "orders", None, started)
    answered(recorder, None, "BREW", 404, "no_route", None, None, started)
    answered(recorder, "GET /api/orders", "GET", 502, "upstream_failed", "orders", None, started)
    answered(recorder, None, "POST", 200, None, None, None, started)                  # /auth/login
    exporter.fold()
    name = "tokengate_requests_total"
    assert value(exporter, name, route="GET /api/orders", method="read", outcome="forwarded", reason="") == 4
    assert value(exporter, name, route="GET /api/orders", method="read", outcome="401", reason="token_expired") == 1
    assert value(exporter, name, route="POST /api/orders", method="write", outcome="403", reason="forbidden") == 1
    assert value(exporter, name, route="none", method="other", outcome="404", reason="no_route") == 1
    assert value(exporter, name, route="GET /api/orders", method="read", outcome="502",
                 reason="upstream_failed") == 1
    assert value(exporter, name, route="none", method="write", outcome="answered", reason="") == 1


@pytest.mark.parametrize(("upstream_ms", "le"), [(0.2, "0.001"), (1.0, "0.001"), (1.01, "0.0025"),
                                                 (7.0, "0.01"), (10_000.0, "10.0"), (99_999.0, "+Inf")])
def test_upstream_latency_lands_in_the_first_bucket_it_fits(recorder, exporter, upstream_ms, le):
    answered(recorder, "r", "GET", 200, None, "orders", upstream_ms, time.perf_counter())
    exporter.fold()
    got = samples(exporter)
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items()
               if name == "tokengate_upstream_duration_seconds_bucket"}
    bounds = [f"{b / 1000}" for b in UPSTREAM_BOUNDS_MS] + ["+Inf"]
    first = bounds.index(le)
    assert [buckets[b] for b in bounds] == [0] * first + [1] * (len(bounds) - first)
    assert got[("tokengate_upstream_duration_seconds_sum", frozenset({("upstream", "orders")}))] == \
        pytest.approx(upstream_ms / 1000)


def test_gateway_time_is_the_request_minus_the_upstream_call(recorder, exporter):
    # Started 30 ms ago, of which the upstream took 29.9: the gateway's share is about 0.1 ms.
    answered(recorder, "r", "GET", 200, None, "orders", 29.9, time.perf_counter() - 0.030)
    exporter.fold()
    total = value(exporter, "tokengate_gateway_duration_seconds_sum")
    assert 0.0 < total < 0.030 - 0.0299 + 0.01   # generous: this is placement, not timing
    assert value(exporter, "tokengate_gateway_duration_seconds_count") == 1
    assert len(GATEWAY_BOUNDS_MS) + 1 == sum(1 for (name, _) in samples(exporter)
                                             if name == "tokengate_gateway_duration_seconds_bucket")


def test_a_truncated_upstream_body_is_its_own_outcome_and_a_client_that_left_is_not(recorder, exporter):
    started = time.perf_counter()
    answered(recorder, "r", "GET", 200, "upstream_truncated", "orders", 2.0, started)
    answered(recorder, "r", "GET", 200, "client_gone", "orders", 2.0, started)
    answered(recorder, "r", "GET", 200, "client_stalled", "orders", 2.0, started)
    exporter.fold()
    name = "tokengate_requests_total"
    assert value(exporter, name, route="r", method="read", outcome="upstream_broken", reason="upstream_truncated") == 1
    assert value(exporter, name, route="r", method="read", outcome="forwarded", reason="client_gone") == 1
    assert value(exporter, name, route="r", method="read", outcome="forwarded", reason="client_stalled") == 1


def test_a_websocket_session_is_forwarded_and_its_length_is_no_gateway_time(recorder, exporter):
    # The session lasted 5 s; its upstream handshake took 2 ms.
    answered(recorder, "r", "GET", 101, None, "orders", 2.0, time.perf_counter() - 5.0, ws_close=1000)
    exporter.fold()
    assert value(exporter, "tokengate_requests_total", route="r", method="read", outcome="forwarded", reason="") == 1
    assert value(exporter, "tokengate_upstream_duration_seconds_count", upstream="orders") == 1
    assert value(exporter, "tokengate_gateway_duration_seconds_count") == 0


def stage_buckets(exporter: Exporter, stage: str) -> dict[str, float]:
    return {dict(labels)["le"]: v for (name, labels), v in samples(exporter).items()
            if name == "tokengate_stage_duration_seconds_bucket" and dict(labels)["stage"] == stage}


def test_each_stage_a_request_completed_lands_in_its_own_series(recorder, exporter):
    started = time.perf_counter() - 1.0
    # A cache hit: routed 0.02 ms after arrival, token looked up 0.3 ms later, upstream 7 ms.
    answered(recorder, "r", "GET", 200, None, "orders", 7.0, started, routed_at=started + 0.00002,
             checked_at=started + 0.00032)
    # A cache miss: verified 2 ms after its route, its revocation check 0.04 ms after that.
    answered(recorder, "r", "GET", 200, None, "orders", 7.0, started, routed_at=started + 0.00002,
             verified_at=started + 0.00202, checked_at=started + 0.00206)
    answered(recorder, "r", "GET", 401, "token_expired", "orders", None, started, routed_at=started + 0.00002)
    answered(recorder, None, "GET", 404, "no_route", None, None, started)   # never routed: no stage at all
    exporter.fold()
    name = "tokengate_stage_duration_seconds"
    assert value(exporter, f"{name}_count", stage="route") == 3
    assert value(exporter, f"{name}_sum", stage="route") == pytest.approx(0.00006)
    assert value(exporter, f"{name}_count", stage="token") == 2
    assert value(exporter, f"{name}_sum", stage="token") == pytest.approx(0.0023)
    assert value(exporter, f"{name}_count", stage="revocation") == 1
    assert value(exporter, f"{name}_sum", stage="revocation") == pytest.approx(0.00004)
    assert value(exporter, f"{name}_count", stage="upstream") == 2
    assert value(exporter, f"{name}_sum", stage="upstream") == pytest.approx(0.014)
    bounds = [f"{b / 1000}" for b in STAGE_BOUNDS_MS] + ["+Inf"]
    assert stage_buckets(exporter, "route")[bounds[1]] == 0 and stage_buckets(exporter, "route")[bounds[2]] == 3
    assert stage_buckets(exporter, "token")["0.00025"] == 0 and stage_buckets(exporter, "token")["0.0005"] == 1
    assert stage_buckets(exporter, "token")["0.001"] == 1 and stage_buckets(exporter, "token")["0.0025"] == 2
    assert stage_buckets(exporter, "revocation")["2.5e-05"] == 0 and stage_buckets(exporter, "revocation")["5e-05"] == 1
    assert stage_buckets(exporter, "upstream")["0.005"] == 0 and stage_buckets(exporter, "upstream")["0.01"] == 2


def test_counts_are_folded_once(recorder, exporter):
    started = time.perf_counter()
    answered(recorder, "r", "GET", 200, None, "orders", 3.0, started)
    recorder.auth_action("login", "success")
    exporter.fold()
    exporter.fold()
    answered(recorder, "r", "GET", 200, None, "orders", 3.0, started)
    exporter.fold()
    exporter.fold()
    assert value(exporter, "tokengate_requests_total", route="r", method="read", outcome="forwarded", reason="") == 2
    assert value(exporter, "tokengate_upstream_duration_seconds_count", upstream="orders") == 2
    assert value(exporter, "tokengate_upstream_duration_seconds_sum", upstream="orders") == pytest.approx(0.006)
    assert value(exporter, "tokengate_gateway_duration_seconds_count") == 2
    assert value(exporter, "tokengate_auth_requests_total", action="login", outcome="success") == 1
    assert recorder.requests == {} and recorder.auth == {}
    assert value(exporter, "tokengate_stage_duration_seconds_count", stage="upstream") == 2


def _gateway(hits: int, misses: int, mirror: int, in_sync: bool, synced_s_ago: float | None,
             cache: Any = None, lag_s: float | None = None) -> SimpleNamespace:
    cache = cache or SimpleNamespace()
    cache.hits, cache.misses = hits, misses
    denylist = SimpleNamespace(in_sync=in_sync, __len__=None, lag_s=lag_s,
                               last_sync_at=None if synced_s_ago is None else time.time() - synced_s_ago)
    return SimpleNamespace(authenticator=SimpleNamespace(cache=cache),
                           denylist=_Sized(denylist, mirror), forwarder=SimpleNamespace(watcher=[1, 2]))


class _Sized(SimpleNamespace):
    def __init__(self, inner: SimpleNamespace, size: int) -> None:
        super().__init__(**vars(inner))
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_state_is_read_at_fold_time_and_cache_counters_take_deltas(exporter):
    cache = SimpleNamespace()
    exporter.fold(_gateway(5, 2, 7, True, 3.0, cache))
    exporter.fold(_gateway(9, 2, 8, False, 4.0, cache, lag_s=0.25))
    assert value(exporter, "tokengate_token_cache_lookups_total", result="hit") == 9
    assert value(exporter, "tokengate_token_cache_lookups_total", result="miss") == 2
    assert value(exporter, "tokengate_revocation_mirror_entries") == 8
    assert value(exporter, "tokengate_revocation_mirror_in_sync") == 0
    assert 4.0 <= value(exporter, "tokengate_revocation_mirror_last_sync_age_seconds") < 60
    assert value(exporter, "tokengate_open_long_lived_connections") == 2
    assert value(exporter, "tokengate_revocation_mirror_lag_seconds") == 0.25
    # A reload brings a new cache that counts from zero: its counts add on, never subtract.
    exporter.fold(_gateway(1, 0, 8, True, None))
    assert value(exporter, "tokengate_token_cache_lookups_total", result="hit") == 10
    assert value(exporter, "tokengate_revocation_mirror_last_sync_age_seconds") == -1
    assert value(exporter, "tokengate_revocation_mirror_lag_seconds") == -1


def test_store_errors_count_every_store_unavailable_made(exporter):
    exporter.fold()
    before = value(exporter, "tokengate_store_errors_total")
    for _ in range(3):
        StoreUnavailable("redis://h:6379", "timed out")
    exporter.fold()
    assert value(exporter, "tokengate_store_errors_total") == before + 3


def test_the_request_hook_costs_about_a_microsecond(recorder):
    """Not a timing assertion (CI machines vary): prints the figure; fails only when far off (> 20 µs)."""
    n = 100_000
    started = time.perf_counter()
    note = AccessNote(route="GET /api/orders", upstream="orders", upstream_ms=2.2, routed_at=started + 1e-5,
                      checked_at=started + 2e-5)
    best = min(timeit.repeat(lambda: recorder.request("GET", 200, note, started),
                             number=n, repeat=3)) / n
    print(f"Recorder.request: {best * 1e6:.2f} µs")
    assert best < 20e-6
