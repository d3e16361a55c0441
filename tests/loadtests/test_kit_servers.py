"""The kit's own servers, as real processes on loopback: the fast upstream answers, echoes
X-Request-Id, answers pipelined requests in order and refuses chunked bodies; the plain proxy
forwards. And the wrk results file becomes the kit's report, attribution by echoed id, latency curve
and answers per second included.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.driver import Plan
from loadtests.procs import Child, free_port, python, spawn, wait_ready
from loadtests.report import CURVE_PERCENTILES
from loadtests.wrkdriver import by_count, to_report, write_inputs

READ_TIMEOUT_S = 5.0


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    child = spawn("upstream", python("loadtests.upstream", "--port", str(port)), tmp_path)
    try:
        wait_ready(child, port)
        yield port
    finally:
        assert child.stop() == 0, child.log_tail()


def _exchange(port: int, raw: bytes, answers: int) -> bytes:
    """Send ``raw`` at once; read until ``answers`` bodies came back or the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as s:
        s.sendall(raw)
        data = b""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while data.count(b"HTTP/1.1 ") < answers or not data.endswith((b"}", b"\r\n\r\n")):
            chunk = s.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            data += chunk
        return data


def test_fast_upstream_answers_and_echoes_the_request_id(upstream: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=READ_TIMEOUT_S)
    for n in range(3):   # one keep-alive connection
        conn.request("POST", f"/api/orders?n={n}", body=b"x" * 1000, headers={"X-Request-Id": f"lt-{n}"})
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.getheader("X-Request-Id")) == (200, b'{"ok":true}', f"lt-{n}")
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("X-Request-Id") is None and resp.read()
    conn.close()


def test_fast_upstream_answers_pipelined_requests_in_order(upstream: int) -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: one\r\n\r\n"
           b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Request-Id: two\r\n\r\nhello"
           b"GET /c HTTP/1.1\r\nHost: x\r\nX-Request-Id: three\r\nConnection: close\r\n\r\n")
    data = _exchange(upstream, raw, 3)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"X-Request-Id: one") < data.index(b"X-Request-Id: two") < data.index(b"X-Request-Id: three")


def test_fast_upstream_refuses_a_chunked_body_and_closes(upstream: int) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    data = _exchange(upstream, raw, 1)
    assert data.startswith(b"HTTP/1.1 501 ") and b"Connection: close" in data


def test_plain_proxy_forwards_method_path_body_and_request_id(upstream: int, tmp_path: Path) -> None:
    port = free_port()
    proxy: Child = spawn("plainproxy", python("loadtests.plainproxy", "--port", str(port), "--upstream",
                                              f"http://127.0.0.1:{upstream}"), tmp_path)
    try:
        wait_ready(proxy, port)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=READ_TIMEOUT_S)
        conn.request("PUT", "/api/x?y=1", body=b"z" * 100, headers={"X-Request-Id": "lt-7", "Connection": "keep-alive"})
        resp = conn.getresponse()
        assert (resp.status, resp.read(), resp.getheader("X-Request-Id")) == (200, b'{"ok":true}', "lt-7")
        conn.close()
    finally:
        assert proxy.stop() == 0, proxy.log_tail()


def _raw(tally: list[list[int]], sent: list[list[int]]) -> dict:
    return {"duration_us": 2_000_000, "requests": 0, "bytes": 0,
            "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0},
            "latency_us": {"min": 100, "mean": 900.0, "max": 5000, "p50": 800, "p90": 1500, "p99": 4000, "p99.9": 5000},
            "latency_curve_us": [[p, 100 + 49 * p] for p in CURVE_PERCENTILES], "per_second": [6, 4],
            "tally": tally, "sent": sent}


def test_wrk_results_become_the_report_with_a_strict_tally() -> None:
    raw = _raw([[0 * 1000 + 200, 5], [1 * 1000 + 401, 4], [1 * 1000 + 200, 1]], [[0, 5], [1, 5]])
    data = to_report(raw, Plan("http://127.0.0.1:1", concurrency=2), ["valid", "expired"], [200, 401])
    assert data["driver"] == "wrk" and data["requests"] == 10 and data["requests_per_s"] == 5.0
    assert data["latency_ms"]["p99"] == 4.0 and data["status"] == {"200": 6, "401": 4}
    assert data["mismatches"] == [{"kind": "expired", "expected": 401, "got": "200", "count": 1}]
    assert data["correct"] is False and "unattributed" not in data
    assert data["throughput_per_s"] == [6, 4] and len(data["latency_curve_ms"]) == len(CURVE_PERCENTILES) + 2
    assert data["latency_curve_ms"][0] == [0, 0.1] and data["latency_curve_ms"][-1] == [100, 5.0]
    assert [50, 2.55] in data["latency_curve_ms"]


def test_wrk_script_gets_the_paths_the_run_length_and_the_curve_grid(tmp_path: Path) -> None:
    _, script, out = write_inputs([{"path": "/api/orders", "token": "t"}], tmp_path, 7)
    lua = script.read_text()
    assert not any(f"@{name}@" in lua for name in ("POOL", "OUT", "SECONDS", "CURVE"))
    assert "local seconds = 7\n" in lua and f"[==[{out}]==]" in lua
    assert "local curve = {1, 2, 3, " in lua and ", 99, 99.5, 99.9, 99.95, 99.99, 99.999}" in lua


def test_answers_without_the_echoed_id_are_checked_by_count_only() -> None:
    raw = _raw([[200, 5], [-401, 5]], [[0, 5], [1, 5]])     # slot 1's answers carried no X-Request-Id
    data = to_report(raw, Plan("http://127.0.0.1:1", concurrency=2), ["valid", "expired"], [200, 401])
    assert data["correct"] is True and data["unattributed"]["consistent_by_count"] is True
    assert data["unattributed"]["status"] == {"401": 5} and set(data["tally"]) == {"valid"}
    wrong = by_count(Counter({200: 5}), Counter({(0, 200): 5}), {0: 5, 1: 5}, [200, 401], slack=2)
    assert wrong["consistent_by_count"] is False   # 200s where only 401s were left: never called correct
