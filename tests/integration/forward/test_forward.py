"""Forwarder over real sockets: client -> proxy app -> echo upstream, and back."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from yarl import URL

from gateway.dev.echo import EchoState
from gateway.forward.forwarder import BUFFER_MAX_BYTES
from gateway.server.app import build_app

from ..conftest import MakeProxy

pytestmark = pytest.mark.integration
BOUND_S = 5.0   # no single step of a test may take longer


def seen_headers(seen: dict[str, Any]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in seen["headers"])


async def echoed(proxy: TestClient, method: str = "GET", path: str = "/x", **kwargs: Any) -> dict[str, Any]:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.request(method, path, **kwargs)
        assert resp.status == 200
        return await resp.json()


async def test_method_path_query_and_body_reach_the_upstream_unchanged(proxy: TestClient) -> None:
    url = URL("/a/b%2Fc/~d?x=%20y+z&b=%C3%A9&&c=/?d", encoded=True)
    seen = await echoed(proxy, "PATCH", url, data=b"hello body")
    assert (seen["method"], seen["path"]) == ("PATCH", "/a/b%2Fc/~d")
    assert seen["query"] == "x=%20y+z&b=%C3%A9&&c=/?d"
    assert seen["body"] == "hello body"
    assert seen_headers(seen)["Content-Length"] == "10"


async def test_a_body_sent_after_100_continue_reaches_the_upstream(proxy: TestClient) -> None:
    seen = await echoed(proxy, "POST", "/x", data=b"after continue", expect100=True)
    assert seen["body"] == "after continue" and "Expect" not in seen_headers(seen)


async def test_upstream_base_path_prefixes_the_path(make_proxy: MakeProxy, echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("/base/")))
    assert (await echoed(proxy, path="/x/y?q=1"))["path"] == "/base/x/y"


async def test_large_body_streams_both_ways_byte_exact(proxy: TestClient) -> None:
    body = os.urandom(5 * 1024 * 1024)
    async with asyncio.timeout(BOUND_S * 2):
        resp = await proxy.post("/_echo/stream", data=io.BytesIO(body))   # sent with a Content-Length
        assert resp.status == 200
        assert await resp.read() == body


@pytest.fixture
async def streaming_proxy(make_proxy: MakeProxy, echo_upstream: TestServer) -> TestClient:
    """A proxy that reads no body whole (listen.buffer_body: 100 bytes): bodies beyond it stream."""
    return await make_proxy(str(echo_upstream.make_url("")), listen={"buffer_body": "100B"})


async def test_request_body_is_streamed_not_buffered(streaming_proxy: TestClient) -> None:
    proxy = streaming_proxy
    first_back = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await first_back.wait()   # only comes back if the proxy passed the first part on
        yield b"b" * 1000

    async with asyncio.timeout(BOUND_S):
        resp = await proxy.post("/_echo/stream", data=body())
        assert await resp.content.readexactly(1000) == b"a" * 1000
        first_back.set()
        assert await resp.read() == b"b" * 1000


async def test_a_body_with_a_length_is_streamed_too(streaming_proxy: TestClient) -> None:
    proxy = streaming_proxy
    first_back = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 1000
        await first_back.wait()
        yield b"b" * 1000

    async with asyncio.timeout(BOUND_S):
        resp = await proxy.post("/_echo/stream", data=body(), headers={"Content-Length": "2000"})
        assert await resp.content.readexactly(1000) == b"a" * 1000
        first_back.set()
        assert await resp.read() == b"b" * 1000


async def test_headers_pass_and_host_is_the_upstreams(proxy: TestClient, echo_upstream: TestServer) -> None:
    headers = CIMultiDict([("X-Multi", "1"), ("Cookie", "sid=1"), ("X-Multi", "2"), ("Host", "gw.example.test")])
    seen = seen_headers(await echoed(proxy, headers=headers, skip_auto_headers=["User-Agent", "Accept-Encoding"]))
    assert seen.getall("X-Multi") == ["1", "2"] and seen["Cookie"] == "sid=1"
    assert seen["Host"] == f"127.0.0.1:{echo_upstream.port}"
    assert seen["X-Forwarded-Host"] == "gw.example.test"
    assert "User-Agent" not in seen and "Accept-Encoding" not in seen   # the proxy invents none


async def test_client_cannot_choose_its_own_identity(proxy: TestClient) -> None:
    headers = CIMultiDict([("x-user-id", "mallory"), ("X-USER-ID", "eve"), ("X-User-Roles", "admin")])
    seen = seen_headers(await echoed(proxy, headers=headers))
    assert seen.getall("X-User-Id") == ["alice"]
    assert "X-User-Roles" not in seen


async def test_identity_headers_are_stripped_on_public_routes(make_proxy: MakeProxy,
                                                              echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), identity_headers={})
    seen = seen_headers(await echoed(proxy, headers={"X-User-Id": "mallory", "X-User-Email": "a@b.test"}))
    assert "X-User-Id" not in seen and "X-User-Email" not in seen


@pytest.mark.parametrize(("strip", "kept"), [(True, False), (False, True)])
async def test_authorization_is_stripped_only_when_configured(make_proxy: MakeProxy, echo_upstream: TestServer,
                                                              strip: bool, kept: bool) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), identity={"strip_authorization": strip})
    seen = seen_headers(await echoed(proxy, headers={"Authorization": "Bearer not-a-real-token"}))
    assert ("Authorization" in seen) is kept


SPOOFED_FORWARDING = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https",
                      "X-Forwarded-Host": "evil.test", "Forwarded": "for=1.2.3.4", "Host": "gw.test"}


async def test_forwarding_headers_from_an_untrusted_peer_are_replaced(proxy: TestClient) -> None:
    seen = seen_headers(await echoed(proxy, headers=SPOOFED_FORWARDING))
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert (seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"]) == ("http", "gw.test")
    assert "Forwarded" not in seen


async def test_forwarding_headers_from_a_trusted_proxy_are_extended(make_proxy: MakeProxy,
                                                                    echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), listen={"trusted_proxies": ["127.0.0.0/8"]})
    seen = seen_headers(await echoed(proxy, headers=SPOOFED_FORWARDING))
    assert seen.getall("X-Forwarded-For") == ["1.2.3.4, 127.0.0.1"]
    assert (seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"]) == ("https", "evil.test")
    assert seen["Forwarded"] == "for=1.2.3.4"


@pytest.mark.parametrize(("sent", "kept"), [("trace-42", True), ("bad id!", False), (None, False)])
async def test_request_id_is_kept_or_generated_and_echoed(proxy: TestClient, sent: str | None, kept: bool) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x", headers={"X-Request-Id": sent} if sent else None)
        upstream_id = seen_headers(await resp.json()).getall("X-Request-Id")
    assert len(upstream_id) == 1 and resp.headers.getall("X-Request-Id") == upstream_id
    assert (upstream_id[0] == sent) is kept


async def test_multiple_set_cookie_headers_survive(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/set-cookies")
    assert resp.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/; HttpOnly"]


async def test_hop_by_hop_headers_are_removed_on_the_way_in(proxy: TestClient, forward_path: str) -> None:
    headers = {"Connection": "X-Secret-In, X-User-Id, X-Request-Id, X-Forwarded-For", "X-Secret-In": "1",
               "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eDp5", "X-Kept": "1"}
    seen = seen_headers(await echoed(proxy, headers=headers))
    for name in ("X-Secret-In", "Keep-Alive", "TE", "Proxy-Authorization"):
        assert name not in seen
    # The client's Connection never; aiohttp's path states its own: each of its connections closes.
    assert seen.get("Connection") == (None if forward_path == "lean" else "close")
    assert seen["X-Kept"] == "1" and seen["X-User-Id"] == "alice"
    assert seen["X-Request-Id"] and seen["X-Forwarded-For"] == "127.0.0.1"


async def test_hop_by_hop_headers_are_removed_on_the_way_out(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/hop")
    for name in ("X-Secret", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Connection"):
        assert name not in resp.headers
    assert resp.headers["X-Kept"] == "1"


async def test_status_redirect_and_compressed_bodies_pass_untouched(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        assert (await proxy.get("/_echo/status/404")).status == 404
        assert (await proxy.delete("/_echo/status/204")).status == 204
        redirect = await proxy.get("/_echo/status/302", allow_redirects=False)
        assert (redirect.status, redirect.headers["Location"]) == (302, "/_echo/status/200")
        zipped = await proxy.get("/_echo/gzip")
        assert zipped.headers["Content-Encoding"] == "gzip" and await zipped.read() == b"squeezed " * 100
        head = await proxy.head("/x")
        assert head.status == 200 and await head.read() == b""


async def test_sse_events_arrive_as_they_are_sent(proxy: TestClient, echo_state: EchoState) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/sse?n=2&hold=1")
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.content.readuntil(b"\n\n") == b"id: 0\ndata: event 0\n\n"   # the last is still held
        echo_state.release.set()
        assert await resp.content.readuntil(b"\n\n") == b"id: 1\ndata: event 1\n\n"
        assert await resp.read() == b""


async def test_a_stream_outlives_the_timeout_while_it_keeps_sending(make_proxy: MakeProxy,
                                                                    echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), upstream={"timeout": "500ms"})
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/sse?n=8&interval=0.1")   # 0.7s in all, never silent for 0.5s
        assert (await resp.read()).count(b"data: ") == 8


async def test_chunked_body_passes(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/chunked?n=3")
        assert await resp.read() == b"chunk 0\nchunk 1\nchunk 2\n"
    assert resp.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in resp.headers


async def test_websocket_round_trip(proxy: TestClient, echo_state: EchoState) -> None:
    async with asyncio.timeout(BOUND_S):
        ws = await proxy.ws_connect("/_echo/ws", protocols=["chat"], headers={"X-User-Id": "mallory"})
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes() == b"\x00\x01"
        await ws.close()
    assert seen_headers(echo_state.received[-1]).getall("X-User-Id") == ["alice"]


HOSTILE_WS_HEADERS = {"X_User_Id": "root", "x-user_roles": "admin", "X-Real-IP": "10.0.0.1", "X-Original-URL": "/admin",
                      "X-Forwarded-Prefix": "/admin", "Connection": "Upgrade, X-User-Id, X-Request-Id, Content-Length",
                      "Cookie": "refresh_token=r1; theme=dark", "Content-Length": "0"}


async def test_a_websocket_upgrade_gets_the_same_trust_rules(proxy: TestClient, echo_state: EchoState) -> None:
    """The edge's rules hold for WebSocket handshakes too: no other spelling of an identity header, no
    address or URL header from an untrusted client, no gateway cookie, a Connection that removes
    nothing of the gateway's, one handshake of the gateway's own."""
    async with asyncio.timeout(BOUND_S):
        ws = await proxy.ws_connect("/_echo/ws", headers=HOSTILE_WS_HEADERS)
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
        await ws.close()
    seen = echo_state.received[-1]["headers"]
    folded = CIMultiDict((k.replace("_", "-"), v) for k, v in seen)
    assert folded.getall("X-User-Id") == ["alice"] and "X-User-Roles" not in folded
    assert not {"X-Real-IP", "X-Original-URL", "X-Forwarded-Prefix"} & set(folded)
    assert folded.getall("Content-Length", []) in ([], ["0"])   # the gateway's own, from what it parsed
    assert folded.getall("Cookie") == ["theme=dark"] and len(folded.getall("X-Request-Id")) == 1
    assert len(folded.getall("Sec-WebSocket-Key")) == 1 and folded["Upgrade"].lower() == "websocket"


async def test_websocket_close_from_upstream_reaches_the_client(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        ws = await proxy.ws_connect("/_echo/ws")
        await ws.send_str("close:4001")
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4001, "bye")
        await ws.close()


async def test_websocket_refused_by_the_upstream_gives_502(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await proxy.ws_connect("/not-a-websocket")
    assert refused.value.status == 502


async def test_unreachable_upstream_gives_502(make_proxy: MakeProxy, dead_upstream_url: str) -> None:
    proxy = await make_proxy(dead_upstream_url)
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/x")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"
    assert resp.headers["X-Request-Id"]


async def test_silent_upstream_gives_504(make_proxy: MakeProxy, echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), upstream={"timeout": "200ms"})
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/slow?delay_s=30")
        assert resp.status == 504 and (await resp.json())["code"] == "upstream_timeout"


async def test_upstream_failing_mid_stream_cuts_the_client_off(proxy: TestClient) -> None:
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get(f"/_echo/broken?length={BUFFER_MAX_BYTES + 1}")   # streamed: too big to hold
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_upstream_failing_inside_a_small_answer_gives_502(proxy: TestClient) -> None:
    """A small answer is read whole before anything is sent, so a broken one is an honest 502."""
    async with asyncio.timeout(BOUND_S):
        resp = await proxy.get("/_echo/broken?length=1000")
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"


async def test_client_disconnect_cancels_the_upstream_request(proxy: TestClient, echo_state: EchoState,
                                                              echo_upstream: TestServer) -> None:
    call = asyncio.create_task(proxy.get("/_echo/slow?delay_s=30"))
    async with asyncio.timeout(BOUND_S):
        await echo_state.slow_started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await echo_state.cancelled.wait()
        while echo_upstream.runner.server.connections:   # the proxy closed its upstream connection
            await asyncio.sleep(0.01)


async def test_many_requests_reuse_a_small_pool(make_proxy: MakeProxy, echo_upstream: TestServer) -> None:
    proxy = await make_proxy(str(echo_upstream.make_url("")), upstream={"max_connections": 2})
    async with asyncio.timeout(BOUND_S * 2):
        for i in range(30):
            assert (await echoed(proxy, path=f"/seq/{i}"))["path"] == f"/seq/{i}"
        streams = [proxy.get("/_echo/chunked?n=5") for _ in range(20)]
        for resp in await asyncio.gather(*streams):
            assert (await resp.read()).count(b"chunk") == 5
    # Every answer went back to the pool: nothing beyond the limit was ever opened.
    assert len(echo_upstream.runner.server.connections) <= 2


async def test_concurrent_mixed_requests_each_get_their_own_answer(make_proxy: MakeProxy,
                                                                   echo_upstream: TestServer) -> None:
    """Few connections, many requests of every kind at once: no answer ever reaches another request."""
    proxy = await make_proxy(str(echo_upstream.make_url("")), upstream={"max_connections": 4})

    async def one(i: int) -> None:
        kind = i % 3
        if kind == 0:
            assert (await echoed(proxy, path=f"/mix/{i}?n={i}"))["path"] == f"/mix/{i}"
        elif kind == 1:
            body = bytes([i % 251]) * (i * 997 % 300_000)   # small ones read whole, large ones streamed
            resp = await proxy.post("/_echo/stream", data=body, headers={"X-Seq": str(i)})
            assert resp.status == 200 and await resp.read() == body
        else:
            resp = await proxy.get(f"/_echo/chunked?n={i % 7 + 1}")
            assert (await resp.read()).count(b"chunk") == i % 7 + 1

    async with asyncio.timeout(BOUND_S * 4):
        await asyncio.gather(*(one(i) for i in range(150)))
    assert len(echo_upstream.runner.server.connections) <= 4


# --- path canonicalisation through the whole app (pipeline: normalise -> rules -> forward) -------------

@pytest.fixture
async def gateway_app(make_config: Any, echo_upstream: TestServer, aiohttp_client: Any) -> TestClient:
    """The whole gateway (build_app) with the routes of base_config; "accounts" is the echo upstream."""
    cfg = await asyncio.to_thread(make_config, upstreams={"accounts": {"url": str(echo_upstream.make_url(""))}})
    return await aiohttp_client(build_app(cfg))


async def raw_get(port: int, target: bytes) -> tuple[int, bytes]:
    """GET ``target`` sent byte for byte (no client re-encodes it); the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        answer = await reader.read()   # until the gateway closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("target", [
    b"/api/public/%c0%ae%c0%ae/admin/x",          # overlong "." (a lenient decoder reads "..")
    b"/api/public/%C0%AE%C0%AE/admin/x",
    b"/api/public/%e0%80%ae%e0%80%ae/admin/x",
    b"/api/public/..%c0%afadmin/x",               # overlong "/"
    b"/api/public/%ed%a0%80",                      # a lone surrogate
    b"/api/public/%ff",
])
async def test_a_path_that_is_not_utf8_once_decoded_gets_400_and_never_reaches_the_upstream(
        gateway_app: TestClient, echo_state: EchoState, target: bytes) -> None:
    async with asyncio.timeout(BOUND_S):
        status, body = await raw_get(gateway_app.server.port, target)
        assert (status, json.loads(body)["code"]) == (400, "bad_path")
        status, body = await raw_get(gateway_app.server.port, b"/api/public/caf%c3%a9")   # UTF-8 passes
        assert (status, json.loads(body)["path"]) == (200, "/api/public/caf%C3%A9")
    assert [seen["path"] for seen in echo_state.received] == ["/api/public/caf%C3%A9"]


@pytest.mark.parametrize("target", [b"/api/public/\xc0\xae\xc0\xae/admin/x", b"/api/public/\xed\xa0\x80"])
async def test_raw_bytes_that_are_not_utf8_never_reach_the_upstream(gateway_app: TestClient, echo_state: EchoState,
                                                                    target: bytes) -> None:
    async with asyncio.timeout(BOUND_S):
        status, _ = await raw_get(gateway_app.server.port, target)   # aiohttp's parser refuses raw non-ASCII
    assert status == 400 and not echo_state.received
