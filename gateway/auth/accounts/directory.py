"""Accounts: username + password -> AuthenticatedUser, and edits, by where ``auth.users`` keeps them:
StoreUsers (the store), FileUsers (a YAML file, reloaded on SIGHUP), CredentialsUsers (a remote service).

The account rules and the UserDirectory interface live in auth/accounts/base.py; every name is importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp

from ...config.load import CredentialsUrlConfig, GatewayConfig, UsersFileConfig
from ...store import store_reachable
from ...store.base import Store, UserRecord
from .base import (DELEGATED_USERNAME, FILE_KEYS, MAX_PASSWORD_CHARS, REFUSED_IN_EMAIL, ROLE, USERNAME,
                   AuthenticatedUser, InvalidAccount, NotEditable, UserDirectory, UsersFileError, _RecordDirectory,
                   check_email, check_password, check_roles, check_username, is_delegated)
from .file import FileUsers, read_users_file, users_file_path
from .passwords import PasswordHasher
from .remote import CredentialsUsers

log = logging.getLogger("tokengate")

__all__ = ["DELEGATED_USERNAME", "FILE_KEYS", "MAX_PASSWORD_CHARS", "REFUSED_IN_EMAIL", "ROLE", "USERNAME",
           "AuthenticatedUser", "CredentialsUsers", "FileUsers", "InvalidAccount", "NotEditable", "StoreUsers",
           "UserDirectory", "UsersFileError", "build_directory", "check_email", "check_password", "check_roles",
           "check_username", "is_delegated", "read_users_file", "users_file_path"]


class StoreUsers(_RecordDirectory):
    """Accounts in the store (``auth.users: store``), through the Store user methods."""

    def __init__(self, store: Store, hasher: PasswordHasher) -> None:
        super().__init__(hasher)
        self.store = store

    async def _find(self, username: str) -> UserRecord | None:
        with store_reachable("the account store"):
            return await self.store.get_user(username)

    async def _all(self) -> list[UserRecord]:
        with store_reachable("the account store"):
            return await self.store.list_users()

    async def _insert(self, record: UserRecord) -> bool:
        with store_reachable("the account store"):
            return await self.store.add_user(record)

    async def _update(self, username: str, change: Callable[[UserRecord], UserRecord]) -> bool:
        with store_reachable("the account store"):
            record = await self.store.get_user(username)
            if record is None:
                return False
            await self.store.put_user(change(record))
            return True

    async def _remove(self, username: str) -> bool:
        with store_reachable("the account store"):
            return await self.store.delete_user(username)


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
