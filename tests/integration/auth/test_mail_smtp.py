"""Mailer over real SMTP (aiosmtpd on loopback): delivery, login from the url, STARTTLS (required,
opportunistic), a server that is down, one that refuses, one that never answers, and a mail that cannot be
built. Polling is bounded; nothing sleeps a fixed time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from gateway.auth.accounts.mail import Mailer
from gateway.auth.accounts.resets import new_reset_token
from gateway.config.load import MailConfig
from tests.integration.smtpserver import (SMTP_PASSWORD, WAIT_S, SmtpPeer, SmtpServer, smtp_auth_server, smtp_peer,
                                          smtp_server, smtp_tls_server, text_of)

pytestmark = pytest.mark.integration
# fixtures, found by pytest among this module's globals
__all__ = ["smtp_auth_server", "smtp_peer", "smtp_server", "smtp_tls_server"]

TOKEN = new_reset_token()
LINK = f"https://app.example.test/reset?token={TOKEN}"
REFUSAL = b"554 5.3.2 no mail service here\r\n"   # RFC 5321 3.1: a server that will not take mail says so first
StartPeer = Callable[[bytes | None], Awaitable[SmtpPeer]]


def mailer(url: str, **mail: Any) -> Mailer:
    cfg = MailConfig(**{"smtp_url": url, "from": "Tokengate <no-reply@example.test>", "timeout": "2s", **mail})
    return Mailer(cfg, backoff_s=0.01)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def test_a_queued_mail_arrives_over_smtp(smtp_server: SmtpServer) -> None:
    m = mailer(smtp_server.url())
    m.send("alice@example.test", "Reset your password", "Open the link.\n")
    [message] = await smtp_server.wait_for(1)
    await m.close()
    assert message["From"] == "Tokengate <no-reply@example.test>" and message["To"] == "alice@example.test"
    assert message["Subject"] == "Reset your password" and text_of(message) == "Open the link.\n"
    assert smtp_server.sink.envelopes == [("no-reply@example.test", ["alice@example.test"])]
    assert m.delivered == 1


async def test_credentials_in_the_url_log_in(smtp_auth_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    m = mailer(smtp_auth_server.url(credentials=True))
    m.send("alice@example.test", "s", "b")
    await smtp_auth_server.wait_for(1)
    await m.close()
    assert smtp_auth_server.sink.logins == ["mailer"]
    assert SMTP_PASSWORD not in logged(caplog)


async def test_required_starttls_is_never_skipped(smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    m = mailer(smtp_server.url(query="starttls=true"), attempts=2)
    m.send("alice@example.test", "s", "b")
    await m.close()
    assert (m.delivered, m.failed) == (0, 1) and smtp_server.messages == []
    assert "attempt 2 of 2" in logged(caplog)


async def test_opportunistic_starttls_sends_in_the_clear_when_not_offered(smtp_server: SmtpServer) -> None:
    m = mailer(smtp_server.url())   # no starttls parameter: TLS when the server offers it; this one offers none
    m.send("alice@example.test", "s", "b")
    await m.close()   # returns once the queue is empty
    assert (m.delivered, m.failed) == (1, 0) and len(smtp_server.messages) == 1
    assert smtp_server.sink.tls == [False]   # the server took it over a session that never turned TLS


async def test_opportunistic_starttls_uses_tls_when_offered(smtp_tls_server: SmtpServer) -> None:
    m = mailer(smtp_tls_server.url())
    m.send("alice@example.test", "s", "b")
    await m.close()
    assert (m.delivered, m.failed) == (1, 0) and len(smtp_tls_server.messages) == 1
    assert smtp_tls_server.sink.tls == [True]


async def test_a_server_that_is_down_gets_bounded_retries_then_a_logged_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    m = mailer(f"smtp://127.0.0.1:{unused_port()}", attempts=3)
    assert m.send("alice@example.test", "s", "https://app.example.test/reset?token=abc")
    await m.close()
    assert (m.delivered, m.failed, m.pending) == (0, 1, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split("(attempt ")[1][:6] for w in warnings] == ["1 of 3", "2 of 3", "3 of 3"]
    assert "token=abc" not in logged(caplog)


async def test_a_refusing_server_gets_the_configured_attempts_and_no_more(
        smtp_peer: StartPeer, caplog: pytest.LogCaptureFixture) -> None:
    peer = await smtp_peer(REFUSAL)
    m = mailer(peer.url(), attempts=3)
    assert m.send("alice@example.test", "Reset", f"Open {LINK}\n", secrets=[LINK])
    await asyncio.wait_for(m.close(), WAIT_S)
    assert peer.accepted == 3   # counted by the server: one connection per attempt
    assert (m.delivered, m.failed, m.pending) == (0, 1, 0)
    warnings = [r for r in caplog.records if "failed (attempt" in r.getMessage()]
    assert [r.levelname for r in warnings] == ["WARNING"] * 3
    assert all("(SMTP 554)" in r.getMessage() for r in warnings)   # the refusal itself, not a timeout
    assert "attempt 3 of 3" in logged(caplog) and "not delivered after 3 attempts" in logged(caplog)
    assert TOKEN not in logged(caplog)


async def test_close_gives_up_on_a_delivery_stuck_on_a_silent_server(
        smtp_peer: StartPeer, caplog: pytest.LogCaptureFixture) -> None:
    peer = await smtp_peer(None)   # accepts, never greets
    cfg = MailConfig(smtp_url=peer.url(), timeout="60s")   # the attempt's own timeout is far away
    m = Mailer(cfg, close_timeout_s=0.05)
    m.send("alice@example.test", "s", "b")
    await peer.until(lambda p: p.accepted == 1, "the delivery's connection")
    await asyncio.wait_for(m.close(), WAIT_S)   # returns: close() does not wait for the stuck attempt
    assert "1 mails undelivered" in logged(caplog) and m.delivered == 0
    await peer.until(lambda p: p.open == 0, "the abandoned attempt hanging up")   # no connection left behind


async def test_a_mail_that_cannot_be_built_fails_alone_and_the_next_is_delivered(
        smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    """The worker's guard against the unexpected, met for real: a recipient with a line break makes the
    message's construction raise ValueError mid-delivery, neither an SMTP nor a network error."""
    m = mailer(smtp_server.url())
    m.send("bug@example.test\nBcc: evil@example.test", "s", "x")
    m.send("ok@example.test", "s", "fine")
    await asyncio.wait_for(m.close(), WAIT_S)
    assert (m.delivered, m.failed) == (1, 1)
    assert smtp_server.sink.envelopes == [("no-reply@example.test", ["ok@example.test"])]
    assert "mail not delivered: ValueError" in logged(caplog)
