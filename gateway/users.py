"""Accounts: username + password -> AuthenticatedUser, and edits, by where ``auth.users`` keeps them:
StoreUsers (the store), FileUsers (a YAML file, reloaded on SIGHUP), CredentialsUsers (a remote service).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from .config import CredentialsUrlConfig, GatewayConfig, UsersFileConfig
from .errors import DependencyDown
from .passwords import PasswordHasher, is_argon2id
from .store.base import Store, StoreUnavailable, UserRecord

log = logging.getLogger("tokengate")

# Usernames are case-sensitive and compared exactly: "Alice" and "alice" are two accounts, and the
# username is the token's `sub` as written. ASCII letters, digits and . _ - @ only: safe in headers and keys.
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
# Roles travel comma-joined in an identity header: printable ASCII without space or comma.
ROLE = re.compile(r"[!-+\--~]{1,64}")
MAX_PASSWORD_CHARS = 1024
CREDENTIALS_TIMEOUT_S = 5.0
MAX_ANSWER_BYTES = 64 * 1024
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


def check_email(email: Any) -> str | None:
    if email is None:
        return None
    local, at, domain = email.rpartition("@") if isinstance(email, str) else ("", "", "")
    if not (local and at and domain) or len(email) > 254 or not email.isprintable() or " " in email:
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
        valid = isinstance(username, str) and USERNAME.fullmatch(username)
        return await self._find(username) if valid else None

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


@contextlib.contextmanager
def _store_reachable() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable as exc:   # the message would name the store; HTTP clients get no URL
        raise DependencyDown("the account store is unavailable") from exc


class StoreUsers(_RecordDirectory):
    """Accounts in the store (``auth.users: store``), through the Store user methods."""

    def __init__(self, store: Store, hasher: PasswordHasher) -> None:
        super().__init__(hasher)
        self.store = store

    async def _find(self, username: str) -> UserRecord | None:
        with _store_reachable():
            return await self.store.get_user(username)

    async def _all(self) -> list[UserRecord]:
        with _store_reachable():
            return await self.store.list_users()

    async def _insert(self, record: UserRecord) -> bool:
        with _store_reachable():
            return await self.store.add_user(record)

    async def _update(self, username: str, change: Callable[[UserRecord], UserRecord]) -> bool:
        with _store_reachable():
            record = await self.store.get_user(username)
            if record is None:
                return False
            await self.store.put_user(change(record))
            return True

    async def _remove(self, username: str) -> bool:
        with _store_reachable():
            return await self.store.delete_user(username)


class FileUsers(_RecordDirectory):
    """Accounts in a YAML file: a list of {username, password_hash (argon2id), roles, email, disabled}.

    Read when built (UsersFileError if unusable; a missing file counts as empty only with
    ``missing_ok``). ``reload()`` re-reads it and keeps the old accounts when the file is invalid.
    Edits lock the file, re-read it, change one entry and replace the file atomically.
    """

    def __init__(self, path: str | Path, hasher: PasswordHasher, *, missing_ok: bool = False) -> None:
        super().__init__(hasher)
        self.path = Path(path)
        self._missing_ok = missing_ok
        self._accounts = read_users_file(self.path, missing_ok=missing_ok)
        self._edit_lock = asyncio.Lock()

    async def reload(self) -> int:
        """Re-read the file (on SIGHUP); returns how many accounts it holds. UsersFileError: nothing changes."""
        self._accounts = await asyncio.to_thread(read_users_file, self.path, missing_ok=self._missing_ok)
        return len(self._accounts)

    async def _find(self, username: str) -> UserRecord | None:
        return self._accounts.get(username)

    async def _all(self) -> list[UserRecord]:
        return [*self._accounts.values()]

    async def _insert(self, record: UserRecord) -> bool:
        def insert(accounts: dict[str, UserRecord]) -> bool:
            return accounts.setdefault(record.username, record) is record
        return await self._edit(insert)

    async def _update(self, username: str, change: Callable[[UserRecord], UserRecord]) -> bool:
        def update(accounts: dict[str, UserRecord]) -> bool:
            if username not in accounts:
                return False
            accounts[username] = change(accounts[username])
            return True
        return await self._edit(update)

    async def _remove(self, username: str) -> bool:
        return await self._edit(lambda accounts: accounts.pop(username, None) is not None)

    async def _edit(self, change: Callable[[dict[str, UserRecord]], bool]) -> bool:
        async with self._edit_lock:
            self._accounts, changed = await asyncio.to_thread(_edit_users_file, self.path, change)
        return changed


def read_users_file(path: Path, *, missing_ok: bool = False) -> dict[str, UserRecord]:
    """The accounts of a users file, by username, in file order. Raises UsersFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise UsersFileError(f"users file {path} does not exist; create it with `tokengate users add`") from None
    except (OSError, UnicodeError) as exc:
        raise UsersFileError(f"users file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:   # name the line only: the YAML snippet could show a hash
        mark = getattr(exc, "problem_mark", None)
        raise UsersFileError(f"users file {path}{f':{mark.line + 1}' if mark else ''} is not valid YAML "
                             f"({getattr(exc, 'problem', None) or 'syntax error'})") from None
    if data is None:
        return {}
    if not isinstance(data, list):
        raise UsersFileError(f"users file {path} must be a YAML list of accounts, each with {', '.join(FILE_KEYS)}")
    accounts: dict[str, UserRecord] = {}
    for index, raw in enumerate(data):
        record = _parse_entry(f"users file {path}, entry {index + 1}", raw)
        if record.username in accounts:
            raise UsersFileError(f"users file {path}, entry {index + 1}: {record.username!r} appears twice")
        accounts[record.username] = record
    return accounts


def _parse_entry(where: str, raw: Any) -> UserRecord:
    if not isinstance(raw, dict):
        raise UsersFileError(f"{where}: an account is a mapping with {', '.join(FILE_KEYS)}")
    if unknown := sorted(str(k) for k in raw if k not in FILE_KEYS):
        raise UsersFileError(f"{where}: unknown key(s) {', '.join(unknown)}; an account has {', '.join(FILE_KEYS)}")
    try:
        username = check_username(raw.get("username"))
        roles, email = check_roles(raw.get("roles")), check_email(raw.get("email"))
    except InvalidAccount as exc:
        raise UsersFileError(f"{where}: {exc}") from None
    if not is_argon2id(raw.get("password_hash")):
        raise UsersFileError(f"{where} ({username}): password_hash is not an argon2id hash; "
                             "set one with `tokengate users add`")
    if not isinstance(disabled := raw.get("disabled", False), bool):
        raise UsersFileError(f"{where} ({username}): disabled must be true or false")
    return UserRecord(username, raw["password_hash"], roles, email, disabled)


def _edit_users_file(path: Path, change: Callable[[dict[str, UserRecord]], bool]) -> tuple[dict[str, UserRecord], bool]:
    # Re-read under the lock: another editor (the CLI, a signup) may have written since we loaded.
    with _locked(path):
        accounts = read_users_file(path, missing_ok=True)
        changed = change(accounts)
        if changed:
            _write_users_file(path, accounts.values())
    return accounts, changed


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock


def _write_users_file(path: Path, records: Iterable[UserRecord]) -> None:
    """Write a temporary file beside it, then os.replace: readers see the old file or the new one."""
    entries = [{"username": r.username, "password_hash": r.password_hash, "roles": [*r.roles],
                **({"email": r.email} if r.email else {}), "disabled": r.disabled} for r in records]
    text = yaml.safe_dump(entries, sort_keys=False, allow_unicode=True)
    old = os.stat(path) if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")   # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:   # keep the owner (when we may) and the mode the operator chose
            with contextlib.suppress(PermissionError):
                os.chown(tmp, old.st_uid, old.st_gid)
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class CredentialsUsers(UserDirectory):
    """A remote service decides: POST {"username", "password"} as JSON to ``url``.

    200 with {"sub", "roles"?, "email"?} is a yes; 401, 403 and 404 are a no. Any other status, a
    malformed answer, a timeout or no answer raises DependencyDown (503): an outage is never a yes.
    """

    def __init__(self, url: str, session: aiohttp.ClientSession | None = None, *,
                 timeout_s: float = CREDENTIALS_TIMEOUT_S) -> None:
        self.url = url
        self._session, self._owns_session = session, session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def authenticate(self, username: str, password: str) -> AuthenticatedUser | None:
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(self.url, json={"username": username, "password": password},
                                          timeout=self._timeout, allow_redirects=False) as resp:
                if resp.status in (401, 403, 404):
                    return None
                if resp.status != 200:
                    log.warning("credentials service answered %s", resp.status)
                    raise DependencyDown(_SERVICE_DOWN)
                body = await _read_limited(resp.content, MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("credentials service unreachable: %s", type(exc).__name__)
            raise DependencyDown(_SERVICE_DOWN) from exc
        return _parse_answer(body)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _not_editable(self) -> NotEditable:
        return NotEditable(f"accounts are managed by the credentials service at {self.url} "
                           "(auth.users.credentials_url); change them there")


_SERVICE_DOWN = "the credentials service is unavailable"


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes:
    body = bytearray()
    async for chunk in stream.iter_chunked(limit):
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body)


def _parse_answer(body: bytes) -> AuthenticatedUser:
    try:
        data = json.loads(body) if len(body) <= MAX_ANSWER_BYTES else None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        sub = data.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255 or not sub.isprintable():
            raise ValueError("no usable sub")
        return AuthenticatedUser(sub, check_roles(data.get("roles")), check_email(data.get("email")))
    except ValueError as exc:   # InvalidAccount and JSON errors are ValueErrors
        log.warning("credentials service gave a malformed answer")
        raise DependencyDown(_SERVICE_DOWN) from exc


def users_file_path(cfg: GatewayConfig) -> Path:
    """``auth.users.file``; a relative path is relative to the config file's directory, like key files."""
    if not isinstance(cfg.auth.users, UsersFileConfig):
        raise ValueError("auth.users names no file")
    path = cfg.auth.users.file
    return path if path.is_absolute() or not cfg.source else Path(cfg.source).parent / path


def build_directory(cfg: GatewayConfig, store: Store | None, hasher: PasswordHasher,
                    session: aiohttp.ClientSession | None = None) -> UserDirectory:
    """The directory ``auth.users`` asks for. FileUsers reads its file now (UsersFileError)."""
    users = cfg.auth.users
    if isinstance(users, CredentialsUrlConfig):
        return CredentialsUsers(users.credentials_url, session)
    if isinstance(users, UsersFileConfig):
        return FileUsers(users_file_path(cfg), hasher)
    if store is None:
        raise ValueError("auth.users: store needs an open store")
    return StoreUsers(store, hasher)
