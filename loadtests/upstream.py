"""The kit's fast upstream: a raw asyncio.Protocol HTTP/1.1 keep-alive server on uvloop that answers
every request with one small fixed 200 JSON body, so that it is never what a load test measures.

`python -m loadtests.upstream --port P [--host 127.0.0.1]`. Pipelined requests are answered in
order; request bodies with a Content-Length are read and discarded; a chunked request body gets 501
and the connection is closed. A client's `X-Request-Id` (visible ASCII, at most 200 characters) is
echoed, so a load driver can tell which request an answer belongs to.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

BODY = b'{"ok":true}'
MAX_HEAD = 64 * 1024
SANE_ID = re.compile(rb"[\x21-\x7e]{1,200}")
BACKLOG = 1024


def answer(status: bytes, body: bytes, request_id: bytes | None, close: bool) -> bytes:
    head = [b"HTTP/1.1 " + status, b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    if request_id is not None:
        head.append(b"X-Request-Id: " + request_id)
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Request:
    """The parts of one request head that the upstream looks at."""

    def __init__(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("bad request line")
        self.method, self.version = parts[0], parts[2]
        self.headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ValueError("bad header line")
            self.headers[name.lower()] = value.strip()

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get(b"connection", b"").lower()
        if self.version == b"HTTP/1.0":
            return connection == b"keep-alive"
        return connection != b"close"

    @property
    def body_length(self) -> int:
        value = self.headers.get(b"content-length", b"0")
        if not value.isdigit():
            raise ValueError("bad Content-Length")
        return int(value)

    @property
    def request_id(self) -> bytes | None:
        value = self.headers.get(b"x-request-id")
        return value if value is not None and SANE_ID.fullmatch(value) else None


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.skip = 0          # body bytes of the current request still to discard
        self.transport: Any = None   # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        close = self._answer_all(out)
        if out:
            self.transport.write(b"".join(out))   # pipelined answers go out in one write, in order
        if close:
            self.transport.close()

    def _answer_all(self, out: list[bytes]) -> bool:
        """Answer every complete request in the buffer; True when the connection must close."""
        while self.buffer:
            if self.skip:
                dropped = min(self.skip, len(self.buffer))
                del self.buffer[:dropped]
                self.skip -= dropped
                continue
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    out.append(answer(b"431 Request Header Fields Too Large", b"", None, close=True))
                    return True
                return False
            head = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            try:
                request = Request(head)
                if b"transfer-encoding" in request.headers:
                    out.append(answer(b"501 Not Implemented", b"", request.request_id, close=True))
                    return True
                self.skip = request.body_length
            except ValueError:
                out.append(answer(b"400 Bad Request", b"", None, close=True))
                return True
            body = b"" if request.method == b"HEAD" else BODY
            out.append(answer(b"200 OK", body, request.request_id, close=not request.keep_alive))
            if not request.keep_alive:
                return True
        return False


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=BACKLOG)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"fast upstream on http://{host}:{bound}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.upstream", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=0, help="default: a free port (printed at start)")
    args = p.parse_args(argv)
    import uvloop

    try:
        uvloop.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
