"""Accounts, whichever backend keeps them: what a username, role, e-mail address and password may be,
the ``AuthenticatedUser`` a login yields, and the ``UserDirectory`` interface the backends implement
(StoreUsers in auth/accounts/directory.py, FileUsers in auth/accounts/file.py, CredentialsUsers in auth/accounts/remote.py).
"""

from __future__ import annotations

import abc
import dataclasses
import re
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ...store.base import UserRecord
from .passwords import PasswordHasher

# Usernames are case-sensitive and compared exactly: "Alice" and "alice" are two accounts, and the
# username is the token's `sub` as written. ASCII letters, digits and . _ - @ only: safe in headers and keys.
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# An account made by a delegated login: `{provider}:{the provider's subject}`. The colon keeps it apart
# from every local username (and from password logins, which check USERNAME); the subject's characters
# cover numeric ids, UUIDs, e-mail-like and `connection|id` subjects, and stay safe in headers and keys.
DELEGATED_USERNAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}:[A-Za-z0-9._~@+=/|:-]{1,255}")
# Roles travel comma-joined in an identity header: printable ASCII without space or comma.
ROLE = re.compile(r"[!-+\--~]{1,64}")
MAX_PASSWORD_CHARS = 1024
FILE_KEYS = ("username", "password_hash", "roles", "email", "disabled")


class InvalidAccount(ValueError):
    """A username, password, role or e-mail address that breaks the rules; the message says which."""


class NotEditable(Exception):
    """These accounts are managed somewhere else; the message says where."""


class UsersFileError(Exception):
    """The users file cannot be used; the message names the file and the entry (never a hash)."""


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    sub: str
    roles: tuple[str, ...]
    email: str | None = None


def check_username(username: Any) -> str:
    if not isinstance(username, str) or not USERNAME.fullmatch(username):
        raise InvalidAccount("a username is 1-64 characters: letters, digits, '.', '_', '-' or '@'")
    return username


def is_delegated(username: str) -> bool:
    return bool(DELEGATED_USERNAME.fullmatch(username))


def is_account_name(username: Any) -> bool:
    """A local username or a delegated account's name."""
    return isinstance(username, str) and bool(USERNAME.fullmatch(username) or DELEGATED_USERNAME.fullmatch(username))


def check_roles(roles: Any) -> tuple[str, ...]:
    """A list of role names -> a tuple without duplicates (None: no roles)."""
    if roles is None:
        return ()
    if isinstance(roles, str) or not isinstance(roles, (list, tuple)):
        raise InvalidAccount("roles must be a list of role names")
    for role in roles:
        if not isinstance(role, str) or not ROLE.fullmatch(role):
            raise InvalidAccount("a role is 1-64 printable ASCII characters, without spaces or commas")
    return tuple(dict.fromkeys(roles))


# What an e-mail address may not hold, by Unicode general category: controls, format characters
# (invisible ones: zero widths, bidi overrides), surrogates and every separator (any space, line or
# paragraph separator): what could make an address look like another or break a mail header. A rule
# of a few dozen code point runs, which the OpenAPI document states as one short pattern (auth/openapi.py).
# Private-use characters are let through: visible (as a box where no font has them), and the 130k of
# them in planes 15-16 would make that pattern costly to every client that generates from it.
REFUSED_IN_EMAIL = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def check_email(email: Any) -> str | None:
    if email is None:
        return None
    local, at, domain = email.rpartition("@") if isinstance(email, str) else ("", "", "")
    if not (local and at and domain) or len(email) > 254 or any(
            unicodedata.category(c) in REFUSED_IN_EMAIL for c in email):
        raise InvalidAccount("an e-mail address looks like name@example.com")
    return email


def check_password(password: Any) -> str:
    if not isinstance(password, str) or not password:
        raise InvalidAccount("the password must not be empty")
    if len(password) > MAX_PASSWORD_CHARS:
        raise InvalidAccount(f"the password may have at most {MAX_PASSWORD_CHARS} characters")
    return password


class UserDirectory(abc.ABC):
    """Where accounts live. Any method raises DependencyDown when the accounts cannot be reached.

    Edits raise InvalidAccount for bad input and NotEditable where accounts are managed elsewhere
    (``editable`` is False there).
    """

    editable = False

    @abc.abstractmethod
    async def authenticate(self, username: str, password: str) -> AuthenticatedUser | None:
        """The account for these credentials, or None: unknown user, wrong password and disabled
        account get the same answer, after the same amount of hashing work."""

    async def add(self, username: str, password: str, roles: Iterable[str] = (), email: str | None = None) -> bool:
        """False when the username is taken."""
        raise self._not_editable()

    async def get(self, username: str) -> UserRecord | None:
        raise self._not_editable()

    async def list(self) -> list[UserRecord]:
        """Every account, by username."""
        raise self._not_editable()

    async def set_disabled(self, username: str, disabled: bool) -> bool:
        """False when there is no such account."""
        raise self._not_editable()

    async def upsert_delegated(self, username: str, roles: Iterable[str], email: str | None) -> UserRecord | None:
        """The account of a delegated login (``{provider}:{subject}``, no password): created at its first
        login, its roles and e-mail address replaced at each one; as it is now. None where accounts cannot
        be kept here (they live behind a credentials service): the login goes on with what it was given."""
        return None

    async def delete(self, username: str) -> bool:
        raise self._not_editable()

    async def set_password(self, username: str, password: str) -> bool:
        raise self._not_editable()

    async def close(self) -> None:
        """Release what the directory opened itself (never the store or hasher it was given)."""

    def _not_editable(self) -> NotEditable:
        return NotEditable("these accounts cannot be edited here")


class _RecordDirectory(UserDirectory):
    """Accounts kept as UserRecords with argon2id hashes: the store and the file share this logic."""

    editable = True

    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher

    async def authenticate(self, username: str, password: str) -> AuthenticatedUser | None:
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        record = await self._find(username) if USERNAME.fullmatch(username) else None
        if record is None:
            await self._hasher.verify_dummy(password)
            return None
        # A disabled account is verified too: its refusal must cost what any other refusal costs.
        matched = await self._hasher.verify(record.password_hash, password)
        if not matched or record.disabled:
            return None
        return AuthenticatedUser(record.username, record.roles, record.email)

    async def add(self, username: str, password: str, roles: Iterable[str] = (), email: str | None = None) -> bool:
        name, checked_roles, checked_email = check_username(username), check_roles(roles), check_email(email)
        password_hash = await self._hasher.hash(check_password(password))
        return await self._insert(UserRecord(name, password_hash, checked_roles, checked_email,
                                             created_at=time.time()))

    async def get(self, username: str) -> UserRecord | None:
        return await self._find(username) if is_account_name(username) else None

    async def upsert_delegated(self, username: str, roles: Iterable[str], email: str | None) -> UserRecord | None:
        if not DELEGATED_USERNAME.fullmatch(username):
            raise InvalidAccount("a delegated account is named {provider}:{subject}")
        fresh = UserRecord(username, "", check_roles(list(roles)), check_email(email), created_at=time.time())
        if await self._insert(fresh):
            return fresh
        updated: list[UserRecord] = []

        def change(record: UserRecord) -> UserRecord:
            updated.append(dataclasses.replace(record, roles=fresh.roles, email=fresh.email))
            return updated[-1]

        await self._update(username, change)
        return updated[-1] if updated else fresh   # deleted meanwhile: this login still goes on

    async def list(self) -> list[UserRecord]:
        return sorted(await self._all(), key=lambda record: record.username)

    async def set_disabled(self, username: str, disabled: bool) -> bool:
        return await self._update(username, lambda r: dataclasses.replace(r, disabled=bool(disabled)))

    async def delete(self, username: str) -> bool:
        return await self._remove(username)

    async def set_password(self, username: str, password: str) -> bool:
        password_hash = await self._hasher.hash(check_password(password))
        return await self._update(username, lambda r: dataclasses.replace(r, password_hash=password_hash))

    @abc.abstractmethod
    async def _find(self, username: str) -> UserRecord | None: ...

    @abc.abstractmethod
    async def _all(self) -> list[UserRecord]: ...

    @abc.abstractmethod
    async def _insert(self, record: UserRecord) -> bool: ...

    @abc.abstractmethod
    async def _update(self, username: str, change: Callable[[UserRecord], UserRecord]) -> bool: ...

    @abc.abstractmethod
    async def _remove(self, username: str) -> bool: ...
