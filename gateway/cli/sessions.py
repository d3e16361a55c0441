"""`tokengate sessions list|end --config C USERNAME [ID]`: an account's live sessions (logins), and ending
one of them through the store, so every gateway instance sharing it refuses its tokens within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from ..auth.sessions import end_session
from ..config.load import GatewayConfig
from ..logs import SESSION_END, operator_audit
from ..store.base import SessionInfo, Store, StoreUnavailable
from .args import add_config_option, config_from, fail

COLUMNS = ("ID", "METHOD", "CREATED", "LAST USED", "CLIENT", "USER AGENT")


def add_sessions_parser(sub: Any) -> None:
    """Register ``sessions list`` and ``sessions end`` on the top-level subparsers of cli._parser()."""
    sessions = sub.add_parser("sessions", help="list or end an account's sessions (needs a Redis store)",
                              description="List the live sessions (logins) of an account, or end one: its "
                                          "refresh tokens die and its access tokens are refused everywhere.")
    actions = sessions.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the account's live sessions, oldest first")
    ending = actions.add_parser("end", help="end one session of the account (exit 1 when it has none such)")
    for parser in (listing, ending):
        add_config_option(parser)
        parser.add_argument("username")
    ending.add_argument("id", help="the session's id (the sid of its tokens), as `sessions list` shows it")
    listing.set_defaults(func=lambda args: _run(args, _list))
    ending.set_defaults(func=lambda args: _run(args, _end))


def _run(args: argparse.Namespace, action: Any) -> int:
    cfg = config_from(args)
    if cfg.store.url.startswith("memory://"):
        return fail("store.url is memory://: sessions live only inside the serving process and cannot be "
                    "reached from here. Use a Redis store (an account can see and end its own sessions with "
                    f"GET and DELETE {cfg.auth.prefix}/sessions)")
    try:
        return asyncio.run(_with_store(cfg, args, action))
    except StoreUnavailable:
        return fail(f"the store {cfg.store.safe_url} cannot be reached; no session was read or ended")


async def _with_store(cfg: GatewayConfig, args: argparse.Namespace, action: Any) -> int:
    from ..store import open_store  # the store backends load only when a command needs them

    store = await open_store(cfg.store)
    try:
        return int(await action(store, cfg, args))
    finally:
        await store.close()


async def _list(store: Store, cfg: GatewayConfig, args: argparse.Namespace) -> int:
    found = await store.list_sessions(cfg.tokens.issuer, args.username)
    print(table(found))
    return 0


async def _end(store: Store, cfg: GatewayConfig, args: argparse.Namespace) -> int:
    access_life_s = cfg.tokens.access_ttl + cfg.tokens.leeway
    if not await end_session(store, cfg.tokens.issuer, args.username, args.id, access_life_s):
        return fail(f"not found: {args.username} has no live session {args.id}")
    operator_audit(cfg.log, SESSION_END, subject=args.username, session=args.id)
    print(f"ended session {args.id} of {args.username}: its refresh tokens are dead and its access tokens "
          "are refused")
    return 0


def table(sessions: list[SessionInfo]) -> str:
    """Aligned columns, a header first; times in UTC."""
    rows = [COLUMNS, *((s.id, s.method or "-", _when(s.created), _when(s.last_used), s.client or "-",
                        s.user_agent or "-") for s in sessions)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
                     for row in rows)


def _when(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch_s)) if epoch_s else "-"
