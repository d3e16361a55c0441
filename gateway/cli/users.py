"""``tokengate users add|list|disable|enable|delete|set-password``: edit the accounts of ``auth.users``
(the users file, or the store when it is Redis). Passwords come from stdin, never from argv, and
pass the policy signup applies (auth/accounts/policy.py) or are refused with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..auth.accounts.directory import (FileUsers, InvalidAccount, StoreUsers, UserDirectory, UsersFileError,
                                       check_email, check_roles, check_username, is_delegated, users_file_path)
from ..auth.accounts.passwords import PasswordHasher
from ..auth.accounts.policy import PasswordPolicy, WeakPassword
from ..config.load import CredentialsUrlConfig, GatewayConfig, UsersFileConfig
from ..errors import DependencyDown
from ..logs import ADMIN_REVOKE, operator_audit
from ..store.base import StoreUnavailable
from .args import UsageError, add_config_option, config_from, fail

Action = Callable[[UserDirectory, argparse.Namespace], Awaitable[int]]


class OutOfReach(Exception):
    """The accounts cannot be edited from here; the message says why."""


def add_users_parser(sub: Any) -> None:
    """Register ``users`` and its actions on the top-level subparsers of cli._parser()."""
    users = sub.add_parser("users", help="manage accounts (auth.users: store or file)",
                           description="Manage the accounts of auth.users: a users file, or the store (Redis).")
    actions = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    def action(name: str, func: Action, help_: str, username: bool = True) -> argparse.ArgumentParser:
        ap = actions.add_parser(name, help=help_, description=help_)
        add_config_option(ap)
        if username:
            ap.add_argument("username")
        ap.set_defaults(func=lambda args: _run(args, func))
        return ap

    add = action("add", _add, "add an account; the password is the first line of stdin (prompted on a tty)")
    add.add_argument("--role", action="append", default=[], dest="roles", metavar="ROLE")
    add.add_argument("--email")
    action("list", _list, "list the accounts (never their hashes)", username=False)
    action("disable", _disable, "refuse logins for an account (existing tokens live until they expire)")
    action("enable", _enable, "allow logins for a disabled account again")
    action("delete", _delete, "delete an account")
    action("set-password", _set_password, "replace an account's password (read like `add` does)")


def read_password(stdin: Any = None) -> str:
    """The first line of stdin; on a terminal, asked twice with getpass (no echo). UsageError if empty."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != password:
            raise UsageError("the two passwords differ; nothing was changed")
    else:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise UsageError("empty password refused: write the password as the first line of stdin")
    return password


def _check_name(username: str, action: Action) -> None:
    """A local username, or, where the command may act on one, a delegated login's account
    ({provider}:{subject}: disable, enable, delete). Those have no password: add and set-password refuse them."""
    if is_delegated(username) and action in (_disable, _enable, _delete):
        return
    if is_delegated(username):
        raise InvalidAccount(f"{username} is the account of a delegated login: it signs in at its provider and "
                             "has no password here")
    check_username(username)


def _check_new_password(policy: PasswordPolicy, password: str, username: str, email: str | None) -> str:
    """``password`` when signup would accept it for this account; else UsageError (exit 2) saying why."""
    try:
        return policy.check(password, username=username, email=email)
    except WeakPassword as exc:
        raise UsageError(f"weak password refused: {exc}; nothing was changed") from None


def _run(args: argparse.Namespace, action: Action) -> int:
    cfg = config_from(args)
    if action in (_add, _set_password):   # the policy signup applies (auth.password, the common list)
        args.policy = PasswordPolicy.from_config(cfg.auth.password)
    try:
        if getattr(args, "username", None) is not None:
            _check_name(args.username, action)
        status = asyncio.run(_with_directory(cfg, args, action))
    except OutOfReach as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"{exc.filename or 'the users file'}: {exc.strerror or exc}")
    except (InvalidAccount, UsersFileError) as exc:   # bad input, like a bad config file
        raise UsageError(str(exc)) from None
    except (StoreUnavailable, DependencyDown):
        return fail(f"the store {cfg.store.safe_url} cannot be reached; no account was read or changed")
    if status == 0 and action in (_disable, _delete, _set_password):
        return asyncio.run(_end_sessions(cfg, args.username))
    return status


async def _end_sessions(cfg: GatewayConfig, username: str) -> int:
    """A disabled or deleted account, or a changed password, ends the user's sessions everywhere."""
    if cfg.store.url.startswith("memory://"):
        print(f"note: {username}'s tokens stay valid until they expire: the store is memory://, which only "
              "the serving process can reach (POST /admin/revoke on its admin port ends them)")
        return 0
    from ..auth.revocation import apply_revocation, build_revocation
    from ..store import open_store

    store = await open_store(cfg.store)
    try:
        outcome = await apply_revocation(store, await build_revocation(cfg, sub=username))
    except StoreUnavailable:
        return fail(f"the account was changed, but the store {cfg.store.safe_url} cannot be reached to end "
                    f"{username}'s sessions; run `tokengate revoke --sub {username}` once it is back")
    finally:
        await store.close()
    operator_audit(cfg.log, ADMIN_REVOKE, subject=username, session=None, kind="sub", target=username)
    print(outcome.describe())
    return 0


async def _with_directory(cfg: GatewayConfig, args: argparse.Namespace, action: Action) -> int:
    hasher = PasswordHasher()
    try:
        users = cfg.auth.users
        if isinstance(users, UsersFileConfig):
            return await action(FileUsers(users_file_path(cfg), hasher, missing_ok=True), args)
        if isinstance(users, CredentialsUrlConfig):
            raise OutOfReach(f"accounts are managed by the credentials service at {users.credentials_url} "
                             "(auth.users.credentials_url); tokengate users cannot change them")
        return await _with_store(cfg, hasher, args, action)
    finally:
        hasher.close()


async def _with_store(cfg: GatewayConfig, hasher: PasswordHasher, args: argparse.Namespace, action: Action) -> int:
    if cfg.store.url.startswith("memory://"):
        raise OutOfReach("auth.users is `store` and store.url is memory://: the accounts live only inside the "
                         "serving process and cannot be reached from here. Use a Redis store, or "
                         "auth.users: {file: users.yaml}")
    from ..store import open_store  # the store backends load only when a command needs them

    store = await open_store(cfg.store)
    try:
        await store.ping()
        return await action(StoreUsers(store, hasher), args)
    finally:
        await store.close()


async def _add(users: UserDirectory, args: argparse.Namespace) -> int:
    check_roles(args.roles)   # bad input is refused before the password is asked
    check_email(args.email)
    password = _check_new_password(args.policy, read_password(), args.username, args.email)
    if not await users.add(args.username, password, args.roles, args.email):
        return fail(f"user {args.username!r} already exists (taken); nothing was changed")
    print(f"added {args.username} (roles: {', '.join(args.roles) or 'none'})")
    return 0


async def _list(users: UserDirectory, args: argparse.Namespace) -> int:
    rows = [("USERNAME", "ROLES", "EMAIL", "DISABLED")]
    rows += [(u.username, ",".join(u.roles) or "-", u.email or "-", "yes" if u.disabled else "no")
             for u in await users.list()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[3]]))
    return 0


async def _disable(users: UserDirectory, args: argparse.Namespace) -> int:
    return _done(await users.set_disabled(args.username, True), args.username, "disabled")


async def _enable(users: UserDirectory, args: argparse.Namespace) -> int:
    return _done(await users.set_disabled(args.username, False), args.username, "enabled")


async def _delete(users: UserDirectory, args: argparse.Namespace) -> int:
    return _done(await users.delete(args.username), args.username, "deleted")


async def _set_password(users: UserDirectory, args: argparse.Namespace) -> int:
    account = await users.get(args.username)
    if account is None:   # before asking for a password nobody will use
        return _done(False, args.username, "")
    password = _check_new_password(args.policy, read_password(), account.username, account.email)
    return _done(await users.set_password(args.username, password), args.username, "password changed for")


def _done(found: bool, username: str, what: str) -> int:
    if not found:
        return fail(f"no user {username!r} (not found); nothing was changed")
    print(f"{what} {username}")
    return 0
