"""Step 6 for WebSocket upgrades: open the upstream socket first, then answer the client's upgrade
and pump text, binary and close frames both ways until either side closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..errors import BadRequest, UpstreamFailed, UpstreamTimeout
from ..logs import ACCESS_NOTE
from .lifetime import Lifetime
from .request_id import REQUEST_ID

log = logging.getLogger("tokengate.forward")

# The handshake belongs to each leg: aiohttp builds its own towards the upstream.
WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                          "sec-websocket-protocol", "sec-websocket-accept"})
# Close codes that describe a dead connection and may not be sent in a close frame (RFC 6455 7.4.1).
_UNSENDABLE = {1005: 1000, 1006: 1011, 1015: 1011}
_CLOSE_TIMEOUT_S = 5.0
ABNORMAL_CLOSURE = 1006   # RFC 6455 7.1.5: the connection ended without a close frame (the access line's ws_close)
POLICY_VIOLATION = 1008   # RFC 6455 7.4.1: the close code when the token expires or is revoked
GOING_AWAY = 1001


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").strip().lower() == "websocket"


def requested_protocols(request: web.BaseRequest) -> list[str]:
    """The subprotocols the client offers, in its order."""
    values = request.headers.getall("Sec-WebSocket-Protocol", [])
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


async def proxy_websocket(request: web.Request, session: aiohttp.ClientSession, url: URL,
                          headers: CIMultiDict[str], request_id: str, lifetime: Lifetime) -> web.WebSocketResponse:
    """Proxy one WebSocket session; ``request_id`` goes on the client's 101 answer.
    When the token expires or is revoked, the client gets close code 1008 and the upstream 1001.

    Raises BadRequest for a malformed upgrade, UpstreamFailed/UpstreamTimeout if the upstream refuses.
    """
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise BadRequest("a malformed WebSocket upgrade")
    note = request.get(ACCESS_NOTE)
    sent_at = time.perf_counter()
    upstream = await _connect(session, url, headers, requested_protocols(request))
    if note is not None:   # the upstream's 101: counted as forwarded, its handshake as the upstream's time
        note.upstream_ms = (time.perf_counter() - sent_at) * 1000
    client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else ())
    client.headers[REQUEST_ID] = request_id
    closes: list[int] = []   # each leg's close code as its pump ends: the first is how the session ended
    try:
        await client.prepare(request)
        if note is not None:
            note.request_id = request_id
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        with lifetime.on_end(lambda reason: ended.done() or ended.set_result(reason)):
            await _pump_both(client, upstream, ended, closes)
    except ConnectionError:
        pass   # the client left during the handshake: nothing to answer
    finally:
        # Also when cancelled: aiohttp cancels this handler as soon as the client's connection closes,
        # often before it returns, so the access line learns the session from the note.
        if note is not None and client.prepared:
            note.ws_close = closes[0] if closes else ABNORMAL_CLOSURE
        await upstream.close()
    return client


async def _connect(session: aiohttp.ClientSession, url: URL, headers: CIMultiDict[str],
                   protocols: list[str]) -> aiohttp.ClientWebSocketResponse:
    leg_headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in WS_HANDSHAKE)
    try:
        return await session.ws_connect(url, headers=leg_headers, protocols=protocols,
                                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_CLOSE_TIMEOUT_S))
    except asyncio.TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except aiohttp.ClientError as exc:   # refused, or answered without switching protocols
        raise UpstreamFailed() from exc


async def _pump_both(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                     ended: asyncio.Future[str], closes: list[int]) -> None:
    tasks = [asyncio.create_task(_pump(client, upstream, closes)),
             asyncio.create_task(_pump(upstream, client, closes))]
    pumps = asyncio.gather(*tasks, return_exceptions=True)
    try:
        await asyncio.wait([pumps, ended], return_when=asyncio.FIRST_COMPLETED)
        if ended.done() and not pumps.done():
            # Stop both pumps first: a pump still reading (or closing on its own) would race the
            # close frames below, and the client could see the connection drop (1006), not 1008.
            closes.insert(0, POLICY_VIOLATION)
            await _stop(tasks)
            reason = f"token {ended.result()}".encode()
            await asyncio.gather(client.close(code=POLICY_VIOLATION, message=reason),
                                 upstream.close(code=GOING_AWAY), return_exceptions=True)
            return
        for result in pumps.result():
            if isinstance(result, Exception):   # the 101 is sent: nothing to answer, only to end
                log.info("websocket pump failed", extra={"error": type(result).__name__})
    finally:
        await _stop(tasks)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:   # let both finish before anyone closes the sockets
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _pump(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse, closes: list[int]) -> None:
    """Copy messages from src to dst; when src closes, close dst with the same code and reason
    (and add src's code to ``closes``)."""
    reason = b""
    try:
        while True:
            msg = await src.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type is aiohttp.WSMsgType.CLOSE:
                reason = (msg.extra or "").encode()
                break
            elif msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
    except ConnectionError:
        pass   # dst went away; its own pump closes the other side
    code = src.close_code or 1000
    closes.append(code)
    await dst.close(code=_UNSENDABLE.get(code, code), message=reason)
