"""Password reset tokens: made for the accounts of an e-mail address, mailed as a link, redeemed once.

A token is 256 random bits (``secrets.token_urlsafe(32)``). The store keeps only its SHA-256 hash, one
per account (a newer reset replaces the older one), until ``auth.reset_ttl`` has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import quote

from ...config.auth import AuthConfig
from ...config.durations import format_duration
from ...errors import DependencyDown
from ...store import store_reachable
from ...store.base import Store, UserRecord
from .directory import UserDirectory
from .mail import Mailer

log = logging.getLogger("tokengate.auth")

RESET_TOKEN_BYTES = 32            # 256 bits
MAX_RESET_TOKEN_CHARS = 512
RESET_SUBJECT = "Reset your password"


def new_reset_token() -> str:
    return secrets.token_urlsafe(RESET_TOKEN_BYTES)


def hash_reset_token(token: str) -> str:
    """SHA-256, hex: the token has 256 random bits, so no salt or slow hash is needed."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def reset_link(template: str, token: str) -> str:
    """``auth.mail.reset_url`` with ``{token}`` replaced by the URL-quoted token."""
    return template.replace("{token}", quote(token, safe=""))


def reset_mail_body(username: str, link: str, ttl_s: float) -> str:
    return (f"Someone asked to reset the password of the account {username}.\n\n"
            f"To choose a new password, open this link within {format_duration(ttl_s)}:\n\n{link}\n\n"
            "The link works once. If you did not ask for this, ignore this mail: your password stays "
            "as it is.\n")



async def accounts_with_email(users: UserDirectory, email: str) -> list[UserRecord]:
    """The enabled accounts whose address is ``email``, ignoring case. A scan of ``users.list()``: the
    file and store directories have no e-mail index, and are meant for small deployments."""
    wanted = email.lower()
    return [record for record in await users.list()
            if record.email is not None and record.email.lower() == wanted and not record.disabled]


async def send_reset_links(store: Store, users: UserDirectory, mailer: Mailer, auth: AuthConfig,
                           email: str) -> int:
    """For each enabled account of ``email``: a new reset token (killing the older one) and a mail
    with its link, to the address the account holds. Returns how many were mailed."""
    accounts = await accounts_with_email(users, email)
    for account in accounts:
        token = new_reset_token()
        with store_reachable():
            await store.put_reset(account.username, hash_reset_token(token), time.time() + auth.reset_ttl)
        link = reset_link(auth.mail.reset_url, token)
        mailer.send(account.email or email, RESET_SUBJECT, reset_mail_body(account.username, link, auth.reset_ttl),
                    secrets=(token, quote(token, safe="")))   # the log backend shows the link, token masked
        log.info("password reset mailed", extra={"sub": account.username})
    return len(accounts)


CHANGED_SUBJECT = "Your password was changed"


def notify_password_changed(mailer: Mailer, username: str, email: str | None) -> None:
    """OWASP: tell the account holder their password changed, so a takeover does not go unnoticed."""
    if email:
        mailer.send(email, CHANGED_SUBJECT,
                    f"The password of the account {username} was just changed, and every session of it "
                    "was ended. If this was not you, ask for a password reset now.\n")


class BackgroundTasks:
    """Work that must not delay (or show in the timing of) the answer. Failures are logged, not raised."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, DependencyDown):
            log.warning("%s failed: %s", task.get_name(), exc.description)
        elif exc is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let running work finish for at most ``timeout_s``, then cancel it."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
