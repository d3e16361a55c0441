"""Mail, off the request path: ``Mailer.send()`` queues a message and returns at once; a worker task
delivers it over SMTP (aiosmtplib) or writes it to the log, retrying a few times with backoff.

Delivery failures are logged (never a message's body, token or link) and never reach an HTTP caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING

import aiosmtplib

from ...config.smtp_url import parse_smtp_url

if TYPE_CHECKING:
    from ...config.auth import MailConfig

log = logging.getLogger("tokengate.mail")

QUEUE_SIZE = 1000          # mails waiting for delivery; beyond this send() drops them (and logs it)
BACKOFF_S = 1.0            # the wait before the second attempt; it doubles for each further one
MAX_BACKOFF_S = 30.0
CLOSE_TIMEOUT_S = 5.0      # how long close() lets queued mails go out
MASK = "***"
# What a token from secrets.token_urlsafe looks like: masked in logged mails even when not named.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{32,}")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret (and anything that looks like a random token) replaced by ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _TOKEN_LIKE.sub(MASK, text)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str
    secrets: tuple[str, ...] = field(default=(), repr=False)   # masked wherever the mail is logged


class Mailer:
    """Queues mails and delivers them in the background: ``backend`` smtp (to ``smtp_url``) or log.

    ``send`` never blocks and never raises for a delivery problem; ``close`` lets the queue drain
    for at most ``close_timeout_s``, then drops what is left (and logs how many).
    """

    def __init__(self, cfg: MailConfig, *, backoff_s: float = BACKOFF_S, queue_size: int = QUEUE_SIZE,
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self.backend = cfg.backend
        self.sender = cfg.from_
        self.target = parse_smtp_url(cfg.smtp_url)
        self.timeout_s, self.attempts = cfg.timeout, cfg.attempts
        self.backoff_s, self.close_timeout_s = backoff_s, close_timeout_s
        self._queue: asyncio.Queue[Mail] = asyncio.Queue(maxsize=queue_size)
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self.delivered = self.failed = 0
        self.pending = 0   # mails queued or being delivered

    def send(self, to: str, subject: str, body: str, *, secrets: Iterable[str] = ()) -> bool:
        """Queue a mail; False when it was dropped (queue full, or closed). Name in ``secrets`` what
        must never be logged (a token, a link): the log backend masks it."""
        if self._closed:
            log.warning("mail dropped: the mailer is closed")
            return False
        try:
            self._queue.put_nowait(Mail(to, subject, body, tuple(secrets)))
        except asyncio.QueueFull:
            log.warning("mail dropped: %d mails are waiting already", self._queue.qsize())
            return False
        self.pending += 1
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="mailer")
        return True

    async def close(self) -> None:
        self._closed = True
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), self.close_timeout_s)
        except TimeoutError:
            log.warning("mailer closed with %d mails undelivered", self.pending)
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker

    async def _work(self) -> None:
        while True:
            mail = await self._queue.get()
            try:
                await self._deliver_with_retries(mail)
            except Exception as exc:   # a bug must not stop the worker; the mail's text stays out of the log
                log.error("mail not delivered: %s", type(exc).__name__)
                self.failed += 1
            finally:
                self.pending -= 1
                self._queue.task_done()

    async def _deliver_with_retries(self, mail: Mail) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                await self._deliver(mail)
                self.delivered += 1
                return
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                log.warning("mail delivery to %s failed (attempt %d of %d): %s", self.target.address, attempt,
                            self.attempts, describe_failure(exc))
            if attempt < self.attempts:
                await asyncio.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        self.failed += 1
        log.error("mail not delivered after %d attempts", self.attempts)

    async def _deliver(self, mail: Mail) -> None:
        if self.backend == "log":
            log.info("mail (log backend, not sent) to %s, subject %r:\n%s", mail.to, mail.subject,
                     mask(mail.body, mail.secrets))
            return
        t = self.target
        client = aiosmtplib.SMTP(hostname=t.host, port=t.port, username=t.username, password=t.password,
                                 use_tls=t.implicit_tls, start_tls=t.starttls, timeout=self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s), client:
                await client.send_message(build_message(self.sender, mail))
        finally:
            # Also when cancelled while connecting: `async with client` never entered, and the
            # half-open connection would otherwise be left to the garbage collector.
            client.close()


def build_message(sender: str, mail: Mail) -> EmailMessage:
    """A plain-text message. ValueError for a header that would smuggle a line break."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, mail.to, mail.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=domain)   # with a domain: no blocking getfqdn() on the loop
    message["Auto-Submitted"] = "auto-generated"        # RFC 3834: no auto-replies to this
    message.set_content(mail.body)
    return message


def describe_failure(exc: BaseException) -> str:
    """The error's type and SMTP code: enough to act on, without any text a server echoed back."""
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}" + (f" (SMTP {code})" if isinstance(code, int) and code > 0 else "")
