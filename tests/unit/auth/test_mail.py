"""gateway.auth.accounts.mail without sockets: smtp urls, the message, masking, the log backend, the queue and the
worker's guard. Delivery, retries and close() against real servers (one that accepts, refuses, is down or
never answers) are in tests/integration/auth/test_mail_smtp.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from gateway.auth.accounts.mail import Mail, Mailer, build_message, mask
from gateway.auth.accounts.resets import new_reset_token
from gateway.config.load import ConfigError, GatewayConfig, MailConfig
from gateway.config.smtp_url import SmtpTarget, parse_smtp_url

TOKEN = new_reset_token()
LINK = f"https://app.example.test/reset?token={TOKEN}"


def mailer(**mail: Any) -> Mailer:
    return Mailer(MailConfig(**{"backend": "log", **mail}), backoff_s=0.001)


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


# --- smtp urls --------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, target", [
    ("smtp://mail.test", SmtpTarget("mail.test", 25)),
    ("smtp://127.0.0.1:1025", SmtpTarget("127.0.0.1", 1025)),
    ("smtp://mail.test?starttls=true", SmtpTarget("mail.test", 587, starttls=True)),
    ("smtp://mail.test:2525/?starttls=false", SmtpTarget("mail.test", 2525, starttls=False)),
    ("smtps://mail.test", SmtpTarget("mail.test", 465, implicit_tls=True, starttls=False)),
    ("smtp://me%40corp:p%40ss%3Aw@mail.test:587", SmtpTarget("mail.test", 587, username="me@corp", password="p@ss:w")),
])
def test_smtp_urls_name_host_port_tls_and_credentials(url: str, target: SmtpTarget) -> None:
    parsed = parse_smtp_url(url)
    assert parsed == target and parsed.password == target.password


@pytest.mark.parametrize("url", ["http://mail.test", "smtp://", "smtp://mail.test:port",
                                 "smtps://mail.test?starttls=true", "smtp://mail.test?tls=yes",
                                 "smtp://mail.test?starttls=maybe", "smtp://mail.test/x",
                                 "smtp://user@mail.test", "smtp://:hunter2-secret@mail.test"])
def test_bad_smtp_urls_are_refused_without_showing_the_password(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_smtp_url(url)
    assert "hunter2" not in str(caught.value)


def test_the_smtp_target_never_shows_its_password() -> None:
    target = parse_smtp_url("smtp://me:hunter2-secret@mail.test")
    assert "hunter2" not in repr(target) and target.address == "mail.test:25"


# --- config -----------------------------------------------------------------------------------------

def test_mail_defaults_to_smtp_with_bounded_attempts(make_config: Callable[..., GatewayConfig]) -> None:
    mail = make_config().auth.mail
    assert (mail.backend, mail.timeout, mail.attempts) == ("smtp", 10.0, 3)
    assert make_config(auth={"mail": {"backend": "log"}}).auth.mail.backend == "log"


@pytest.mark.parametrize("mail, key", [({"backend": "sendmail"}, "auth.mail.backend"),
                                       ({"smtp_url": "smtp://m.test?tls=1"}, "auth.mail.smtp_url"),
                                       ({"timeout": "0s"}, "auth.mail.timeout"),
                                       ({"attempts": 0}, "auth.mail.attempts"),
                                       ({"attempts": 11}, "auth.mail.attempts")])
def test_bad_mail_settings_are_config_errors(make_config: Callable[..., GatewayConfig], mail: dict[str, Any],
                                             key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(auth={"mail": mail})
    assert [p.key for p in caught.value.problems] == [key]


def test_a_bad_smtp_url_with_a_password_is_reported_without_it(make_config: Callable[..., GatewayConfig]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(auth={"mail": {"smtp_url": "smtps://me:hunter2-secret@m.test?starttls=true"}})
    assert "hunter2" not in str(caught.value)


# --- the message and masking ------------------------------------------------------------------------

def test_the_message_is_plain_text_from_the_configured_sender() -> None:
    message = build_message("Tokengate <no-reply@example.test>", Mail("alice@example.test", "Reset", "Hello\n"))
    assert message["From"] == "Tokengate <no-reply@example.test>" and message["To"] == "alice@example.test"
    assert message["Subject"] == "Reset" and message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@example.test>") and message["Date"]
    assert message.get_content_type() == "text/plain" and message.get_content() == "Hello\n"


def test_a_recipient_cannot_smuggle_a_header() -> None:
    with pytest.raises(ValueError):
        build_message("no-reply@example.test", Mail("a@example.test\nBcc: evil@example.test", "Reset", "x"))


def test_mask_hides_named_secrets_and_anything_token_like() -> None:
    masked = mask(f"open {LINK} now; code {new_reset_token()}", [LINK])
    assert masked == "open *** now; code ***"
    assert mask("hello alice, see https://app.example.test/reset") == "hello alice, see https://app.example.test/reset"


# --- the log backend and the queue ------------------------------------------------------------------

async def test_the_log_backend_writes_the_mail_with_its_token_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    m = mailer()
    assert m.send("alice@example.test", "Reset your password", f"Open {LINK}\n", secrets=[TOKEN, LINK])
    await m.close()
    assert m.delivered == 1 and m.pending == 0
    assert "alice@example.test" in logged(caplog) and "Reset your password" in logged(caplog)
    assert TOKEN not in logged(caplog) and "***" in logged(caplog)


async def test_send_queues_and_returns_at_once() -> None:
    m = mailer()
    assert m.send("a@example.test", "s", "b") and m.pending == 1 and m.delivered == 0   # nothing ran yet
    await m.close()
    assert m.delivered == 1


async def test_a_full_queue_drops_the_mail_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    m = Mailer(MailConfig(backend="log"), queue_size=1)
    assert m.send("a@example.test", "s", "b") is True
    assert m.send("b@example.test", "s", "b") is False
    await m.close()
    assert m.delivered == 1 and "dropped" in logged(caplog)


async def test_nothing_is_queued_once_closed() -> None:
    m = mailer()
    await m.close()
    assert m.send("a@example.test", "s", "b") is False


async def test_a_bug_in_one_delivery_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in, because no real peer can do this: aiosmtplib turns whatever a server answers (garbage,
    overlong lines, unknown codes, silence) into an SMTPException or a timeout, which are retried, not bugs.
    The one unexpected error real input causes (a recipient with a line break: ValueError while building
    the message; test_mail_smtp.py meets it over real SMTP) carries no text of the mail, so only an
    error that does (the body, token and all) shows that the log names the error's type alone."""
    m = mailer()
    real = m._deliver

    async def broken_once(mail: Mail) -> None:
        if mail.to == "bug@example.test":
            raise KeyError(mail.body)
        await real(mail)

    monkeypatch.setattr(m, "_deliver", broken_once)
    m.send("bug@example.test", "s", LINK, secrets=[LINK])
    m.send("ok@example.test", "s", "fine")
    await m.close()
    assert (m.delivered, m.failed) == (1, 1) and "KeyError" in logged(caplog) and TOKEN not in logged(caplog)

