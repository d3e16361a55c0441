"""Accounts in a YAML file (auth.users: {file: ...}): read, reloaded on SIGHUP, edited atomically."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ...config.load import GatewayConfig, UsersFileConfig
from ...store.base import UserRecord
from .base import (FILE_KEYS, InvalidAccount, UsersFileError, _RecordDirectory, check_email, check_roles,
                   check_username, is_delegated)
from .passwords import PasswordHasher, is_argon2id


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
        delegated = isinstance(raw.get("username"), str) and is_delegated(raw["username"])
        username = raw["username"] if delegated else check_username(raw.get("username"))
        roles, email = check_roles(raw.get("roles")), check_email(raw.get("email"))
    except InvalidAccount as exc:
        raise UsersFileError(f"{where}: {exc}") from None
    if delegated and raw.get("password_hash", "") != "":
        raise UsersFileError(f"{where} ({username}): an account of a delegated login has no password; "
                             "leave password_hash empty")
    if not delegated and not is_argon2id(raw.get("password_hash")):
        raise UsersFileError(f"{where} ({username}): password_hash is not an argon2id hash; "
                             "set one with `tokengate users add`")
    if not isinstance(disabled := raw.get("disabled", False), bool):
        raise UsersFileError(f"{where} ({username}): disabled must be true or false")
    return UserRecord(username, raw.get("password_hash", ""), roles, email, disabled)


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


def users_file_path(cfg: GatewayConfig) -> Path:
    """``auth.users.file``; a relative path is relative to the config file's directory, like key files."""
    if not isinstance(cfg.auth.users, UsersFileConfig):
        raise ValueError("auth.users names no file")
    path = cfg.auth.users.file
    return path if path.is_absolute() or not cfg.source else Path(cfg.source).parent / path
