"""A real SMTP server for tests: aiosmtpd on a free loopback port, keeping every message it receives.

Use the ``smtp_server`` fixture (import it into a test module) and wait for mail with
``await smtp_server.wait_for(count)``: bounded polling, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import unused_port
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

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

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        with self._lock:
            self._messages.append(message)   # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
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


def start_smtp_server(*, auth: bool = False) -> SmtpServer:
    """Started and answering (Controller.start checks that). ``auth``: AUTH LOGIN/PLAIN without TLS."""
    sink = SmtpSink()
    options: dict[str, Any] = {"authenticator": sink.authenticate, "auth_require_tls": False} if auth else {}
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


def text_of(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    return body.get_content().replace("\r\n", "\n")   # as sent, without SMTP's line ends


def token_in(message: EmailMessage) -> str:
    """The reset token of the link in the mail (URL-unquoted)."""
    found = TOKEN_IN_LINK.search(text_of(message))
    assert found is not None, "no reset link in the mail"
    return unquote(found.group(1))
