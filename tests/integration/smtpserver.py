"""A real SMTP server for tests: aiosmtpd on a free loopback port, keeping every message it receives.

Use the ``smtp_server`` fixture (import it into a test module) and wait for mail with
``await smtp_server.wait_for(count)``: bounded polling, never a fixed sleep.
``smtp_tls_server`` offers STARTTLS; ``smtp_peer(greeting)`` is a bare listener for servers that refuse
(a 5xx greeting) or never answer (no greeting at all).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import unused_port
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.tlsfiles import server_context, write_tls_files

WAIT_S = 10.0
SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-secret-Pa55"
TOKEN_IN_LINK = re.compile(r"[?&]token=([^\s&#]+)")


class SmtpSink:
    """The aiosmtpd handler: accepts every message and keeps it (parsed) with its envelope."""

    def __init__(self) -> None:
        self._lock = threading.Lock()   # aiosmtpd runs on a thread of its own
        self._messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self.tls: list[bool] = []   # per message: did its session run TLS (after STARTTLS) when it was sent?

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self._lock:
            self._messages.append(message)   # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.tls.append(session.ssl is not None)   # aiosmtpd fills session.ssl once STARTTLS succeeds
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (SMTP_USER.encode(),
                                                                                 SMTP_PASSWORD.encode())
        if ok:
            with self._lock:
                self.logins.append(SMTP_USER)
        return AuthResult(success=ok)


class SmtpServer:
    def __init__(self, controller: Controller, sink: SmtpSink) -> None:
        self.controller, self.sink = controller, sink
        self.port: int = controller.port

    def url(self, *, credentials: bool = False, query: str = "") -> str:
        userinfo = f"{SMTP_USER}:{SMTP_PASSWORD}@" if credentials else ""
        return f"smtp://{userinfo}127.0.0.1:{self.port}" + (f"?{query}" if query else "")

    @property
    def messages(self) -> list[EmailMessage]:
        return self.sink.messages

    async def wait_for(self, count: int = 1, limit_s: float = WAIT_S) -> list[EmailMessage]:
        """Poll (bounded) until at least ``count`` messages have arrived; all of them."""
        deadline = time.monotonic() + limit_s
        while len(self.sink.messages) < count:
            assert time.monotonic() < deadline, f"{count} mail(s) did not arrive in time"
            await asyncio.sleep(0.02)
        return self.sink.messages


def start_smtp_server(*, auth: bool = False, tls_context: ssl.SSLContext | None = None) -> SmtpServer:
    """Started and answering (Controller.start checks that). ``auth``: AUTH LOGIN/PLAIN without TLS.
    ``tls_context``: the server offers STARTTLS with it (without one it offers no TLS at all)."""
    sink = SmtpSink()
    options: dict[str, Any] = {"authenticator": sink.authenticate, "auth_require_tls": False} if auth else {}
    if tls_context is not None:
        options["tls_context"] = tls_context
    controller = Controller(sink, hostname="127.0.0.1", port=unused_port(), ready_timeout=WAIT_S, **options)
    controller.start()
    return SmtpServer(controller, sink)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = start_smtp_server()
    yield server
    server.controller.stop()


@pytest.fixture
def smtp_auth_server() -> Iterator[SmtpServer]:
    server = start_smtp_server(auth=True)
    yield server
    server.controller.stop()


@pytest.fixture
def smtp_tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """An SMTP server that offers STARTTLS with a certificate for 127.0.0.1 from a test CA, which this
    process trusts for the test (SSL_CERT_FILE: OpenSSL's default trust store, read per new context)."""
    ca, cert, key = write_tls_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    server = start_smtp_server(tls_context=server_context(cert, key))
    yield server
    server.controller.stop()


class SmtpPeer:
    """A bare TCP listener on 127.0.0.1 in the test's loop, for servers that misbehave below what
    aiosmtpd can be told to do: each connection gets ``greeting`` (None: nothing at all, a server that
    accepts and never answers), then the peer reads, answering nothing, until the client hangs up.
    ``accepted`` counts connections (one per delivery attempt); ``open`` those not yet hung up."""

    def __init__(self, greeting: bytes | None) -> None:
        self.greeting = greeting
        self.accepted = self.open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> SmtpPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.open += 1
        try:
            if self.greeting is not None:
                writer.write(self.greeting)
                await writer.drain()
            while await reader.read(4096):   # b"" once the client hangs up
                pass
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self._writers.discard(writer)
            writer.close()
            self._handlers.discard(task)

    async def until(self, check: Callable[[SmtpPeer], bool], what: str, limit_s: float = WAIT_S) -> None:
        """Poll (bounded) until ``check(self)`` holds."""
        deadline = time.monotonic() + limit_s
        while not check(self):
            assert time.monotonic() < deadline, f"{what} did not happen in time"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()   # the handlers' reads end: they return
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=WAIT_S)
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def smtp_peer() -> AsyncIterator[Callable[[bytes | None], Awaitable[SmtpPeer]]]:
    """smtp_peer(greeting) -> a started SmtpPeer (stopped at the end of the test)."""
    peers: list[SmtpPeer] = []

    async def start(greeting: bytes | None) -> SmtpPeer:
        peers.append(await SmtpPeer(greeting).start())
        return peers[-1]

    yield start
    for peer in peers:
        await peer.stop()


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return body.get_content().replace("\r\n", "\n")   # as sent, without SMTP's line ends


def token_in(message: EmailMessage) -> str:
    """The reset token of the link in the mail (URL-unquoted)."""
    found = TOKEN_IN_LINK.search(text_of(message))
    assert found is not None, "no reset link in the mail"
    return unquote(found.group(1))
