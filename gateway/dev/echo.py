"""A demo and test upstream: answers any request with JSON describing what it received.

Special paths under /_echo/ stream (sse, chunked, stream), stall (slow), break (broken), speak
WebSocket (ws) or send awkward answers (hop, set-cookies, gzip, status/CODE). ``python -m gateway.dev.echo --port 9001`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import logging
from collections import deque
from dataclasses import dataclass, field

import uvloop
from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

HOLD_TIMEOUT_S = 30.0   # a held stream waits at most this long for its release


@dataclass
class EchoState:
    """What tests can watch: requests received, slow handlers started or cancelled; `release` ends holds."""

    received: deque[dict[str, object]] = field(default_factory=lambda: deque(maxlen=100))
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


ECHO = web.AppKey("echo", EchoState)


def describe(request: web.Request, body: str) -> dict[str, object]:
    return {"method": request.method, "path": request.raw_path.partition("?")[0],
            "query": request.rel_url.raw_query_string,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
            "body": body}


async def echo(request: web.Request) -> web.Response:
    body = (await request.read()).decode("utf-8", "replace")
    seen = describe(request, body)
    request.app[ECHO].received.append(seen)
    return web.json_response(seen)


async def stream(request: web.Request) -> web.StreamResponse:
    """Send the request body back chunk by chunk while it is still arriving."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await resp.prepare(request)
    async for chunk in request.content.iter_any():
        await resp.write(chunk)
    return resp


async def sse(request: web.Request) -> web.StreamResponse:
    """n events, `interval` seconds apart; with hold=1 the last one waits for state.release."""
    n, interval = int(request.query.get("n", "3")), float(request.query.get("interval", "0.05"))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    for i in range(n):
        if i == n - 1 and request.query.get("hold") == "1":
            await asyncio.wait_for(request.app[ECHO].release.wait(), HOLD_TIMEOUT_S)
        elif i:
            await asyncio.sleep(interval)
        await resp.write(f"id: {i}\ndata: event {i}\n\n".encode())
    return resp


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(int(request.query.get("n", "3"))):
        await resp.write(f"chunk {i}\n".encode())
    return resp


async def slow(request: web.Request) -> web.Response:
    state = request.app[ECHO]
    state.slow_started.set()
    try:
        await asyncio.sleep(float(request.query.get("delay_s", "2")))
    except asyncio.CancelledError:
        state.cancelled.set()   # the caller went away (aiohttp cancels handlers on disconnect)
        raise
    return web.json_response({"slept": True})


async def broken(request: web.Request) -> web.StreamResponse:
    """Promise `length` bytes (default 1000), send 10, then drop the connection."""
    resp = web.StreamResponse(headers={"Content-Length": str(int(request.query.get("length", "1000")))})
    await resp.prepare(request)
    await resp.write(b"0123456789")
    await resp.drain()
    assert request.transport is not None
    request.transport.close()
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo text and binary; the text `close:CODE` makes the server close with CODE."""
    ws = web.WebSocketResponse(protocols=("echo", "chat"))
    await ws.prepare(request)
    request.app[ECHO].received.append(describe(request, ""))
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
            await ws.close(code=int(msg.data.removeprefix("close:")), message=b"bye")
        elif msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        raise web.HTTPBadRequest(text="status must be 200-599")
    if code in (204, 304):
        return web.Response(status=code)
    headers = {"Location": "/_echo/status/200"} if 300 <= code < 400 else None
    return web.json_response({"status": code}, status=code, headers=headers)


async def gzipped(request: web.Request) -> web.Response:
    """A body that is gzip-encoded on the wire, whatever the client asked for."""
    body = gzip.compress(b"squeezed " * 100)
    return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})


async def set_cookies(request: web.Request) -> web.Response:
    resp = web.json_response({"cookies": 2})
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    return resp


async def hop(request: web.Request) -> web.Response:
    headers = {"Connection": "X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic",
               "Trailer": "X-Trailer", "X-Kept": "1"}
    return web.json_response({"hop": True}, headers=headers)


def build_echo_app() -> web.Application:
    app = web.Application()
    app[ECHO] = EchoState()
    r = app.router
    r.add_route("*", "/_echo/stream", stream)
    r.add_get("/_echo/sse", sse)
    r.add_get("/_echo/chunked", chunked)
    r.add_route("*", "/_echo/slow", slow)
    r.add_get("/_echo/broken", broken)
    r.add_get("/_echo/ws", websocket)
    r.add_route("*", r"/_echo/status/{code:\d+}", status)
    r.add_get("/_echo/gzip", gzipped)
    r.add_get("/_echo/set-cookies", set_cookies)
    r.add_get("/_echo/hop", hop)
    r.add_route("*", "/{tail:.*}", echo)
    return app


class _AccessLogger(AbstractAccessLogger):
    """Method, path and status only: a query string or header may carry a secret."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %.3fs", request.method, request.path, response.status, time)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.dev.echo", description="tokengate's demo upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    web.run_app(build_echo_app(), host=args.host, port=args.port, access_log_class=_AccessLogger,
                handler_cancellation=True, loop=uvloop.new_event_loop())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
