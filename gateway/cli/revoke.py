"""`tokengate revoke --config C (--jti ID | --sub ID | --token JWT)`: revoke through the store,
so every gateway instance sharing it refuses the token within a second (pub/sub).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..auth.revocation import NothingToRevoke, apply_revocation, build_revocation
from ..config.load import GatewayConfig
from ..errors import InvalidToken
from ..logs import ADMIN_REVOKE, operator_audit
from ..store.base import StoreUnavailable
from .args import UsageError, add_config_option, config_from, fail


def add_revoke_parser(sub: Any) -> None:
    p = sub.add_parser("revoke", help="revoke a token (by jti or whole token) or every token of a subject",
                       description="Revoke a token by its jti (--iss defaults to tokens.issuer), a whole "
                                   "token (--token -, read from stdin, keeps it out of the process list), "
                                   "or every token and refresh session of a subject issued before now.")
    add_config_option(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--jti")
    target.add_argument("--sub")
    target.add_argument("--token", metavar="JWT", help="the token itself, or - to read it from stdin")
    p.add_argument("--iss", help="issuer of the jti/sub (default: tokens.issuer)")
    p.set_defaults(func=_revoke)


def _revoke(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if cfg.store.url.startswith("memory://"):
        return fail("store.url is memory://: revocations live only inside the serving process. Use "
                    f"POST /admin/revoke on its admin port (http://{cfg.admin.host}:{cfg.admin.port}), "
                    "or a Redis store")
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    try:
        return asyncio.run(_record(cfg, args, token))
    except (ValueError, NothingToRevoke) as exc:
        raise UsageError(str(exc)) from None
    except InvalidToken as exc:
        raise UsageError(f"that token is not one this gateway accepts: {exc.description}") from None
    except StoreUnavailable:
        return fail(f"the store {cfg.store.safe_url} cannot be reached; nothing was revoked")


async def _record(cfg: GatewayConfig, args: argparse.Namespace, token: str | None) -> int:
    from ..store import open_store

    revocation = await build_revocation(cfg, jti=args.jti, sub=args.sub, token=token, iss=args.iss)
    store = await open_store(cfg.store)
    try:
        outcome = await apply_revocation(store, revocation)
    finally:
        await store.close()
    r = outcome.revocation
    operator_audit(cfg.log, ADMIN_REVOKE, subject=r.id if r.kind == "sub" else None, session=None, kind=r.kind,
                   target=r.id)
    print(outcome.describe())
    return 0
