"""Mailer over real SMTP (aiosmtpd on loopback): delivery, login from the url, STARTTLS refusals and a
server that is down. Polling is bounded; nothing sleeps a fixed time."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import unused_port

from gateway.config import MailConfig
from gateway.mail import Mailer
from tests.integration.smtpserver import SMTP_PASSWORD, SmtpServer, smtp_auth_server, smtp_server, text_of

pytestmark = pytest.mark.integration
__all__ = ["smtp_auth_server", "smtp_server"]   # fixtures, found by pytest among this module's globals


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
    m = mailer(smtp_server.url())   # no starttls parameter: TLS when the server offers it
    m.send("alice@example.test", "s", "b")
    await smtp_server.wait_for(1)
    await m.close()


async def test_a_server_that_is_down_gets_bounded_retries_then_a_logged_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    m = mailer(f"smtp://127.0.0.1:{unused_port()}", attempts=3)
    assert m.send("alice@example.test", "s", "https://app.example.test/reset?token=abc")
    await m.close()
    assert (m.delivered, m.failed, m.pending) == (0, 1, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split("(attempt ")[1][:6] for w in warnings] == ["1 of 3", "2 of 3", "3 of 3"]
    assert "token=abc" not in logged(caplog)
