"""Password hashing with argon2id (argon2-cffi), run in a bounded thread pool off the event loop.

Used by the account directories (auth/accounts/base.py): hash on signup/edit, verify on login, and a dummy verify for unknown users.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("tokengate")

# RFC 9106's second recommended profile (t=3, m=64 MiB, p=4): argon2-cffi's own default.
DEFAULT_PARAMETERS = argon2.profiles.RFC_9106_LOW_MEMORY
DEFAULT_WORKERS = 4
ARGON2ID_PREFIX = "$argon2id$"
T = TypeVar("T")


def is_argon2id(password_hash: str) -> bool:
    """True for a well-formed argon2id hash string (PHC format, as argon2-cffi writes it)."""
    if not isinstance(password_hash, str) or not password_hash.startswith(ARGON2ID_PREFIX):
        return False
    try:
        argon2.extract_parameters(password_hash)
    except InvalidHashError:
        return False
    return True


class PasswordHasher:
    """argon2id hashing and verification in a dedicated pool of ``max_workers`` threads.

    The pool is bounded so that a login storm queues up instead of starving the process, and
    the event loop never runs a hash itself. ``parameters`` defaults to RFC 9106's low-memory
    profile; tests pass cheap ones. Passwords and hashes are never logged.
    """

    def __init__(self, parameters: argon2.Parameters | None = None, *, max_workers: int = DEFAULT_WORKERS) -> None:
        params = parameters or DEFAULT_PARAMETERS
        if params.type is not argon2.Type.ID:
            raise ValueError("only argon2id parameters are accepted")
        self._argon = argon2.PasswordHasher.from_parameters(params)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="argon2")
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self._off_loop(self._argon.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when ``password`` matches; False on a mismatch or an unreadable stored hash."""
        return await self._off_loop(self._verify_sync, password_hash, password)

    async def verify_dummy(self, password: str) -> None:
        """Spend what a real verify costs, for an unknown user, so timing does not reveal who exists."""
        if self._dummy_hash is None:
            # Same parameters as real hashes, so that both paths cost the same.
            self._dummy_hash = await self.hash(secrets.token_urlsafe(24))
        await self._off_loop(self._verify_sync, self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than this hasher's."""
        try:
            return self._argon.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def hash_sync(self, password: str) -> str:
        """Hash in the calling thread: for the command line, where no event loop runs."""
        return self._argon.hash(password)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._argon.verify(password_hash, password)
        except InvalidHashError:
            log.warning("a stored password hash is not a readable argon2 hash; login refused")
            return False
        except VerificationError:   # VerifyMismatchError and other failed checks
            return False

    async def _off_loop(self, func: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
