"""Tell a running gateway about the pool's revoked tokens: POST /admin/revoke for each jti of the
pool's sidecar file, a few at a time. Used by `revoke` and by `run --start`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from gateway.config.load import GatewayConfig

from .tokenpool import PoolError, read_jsonl, sidecar_path

REVOKE_CONCURRENCY = 16
ADMIN_TOKEN_VAR = "TOKENGATE_ADMIN_TOKEN"


def revoked_rows(pool: Path) -> list[dict[str, Any]]:
    """The sidecar's rows ({"jti", "iss", "exp"}); PoolError when the pool has no sidecar."""
    side = sidecar_path(pool)
    if not side.exists():
        raise PoolError(f"{side} does not exist: make the pool with `python -m loadtests pool` first")
    return read_jsonl(side)


async def post_all(admin: str, rows: list[dict[str, Any]], token: str | None = None) -> list[str]:
    """Revoke every row at ``admin`` (with the admin bearer ``token`` when the gateway wants one);
    the failures, one line each (no token is ever in them)."""
    failures: list[str] = []
    gate = asyncio.Semaphore(REVOKE_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def one(row: dict[str, Any]) -> None:
            async with gate:
                try:
                    body = {"jti": row["jti"], "iss": row["iss"]}
                    async with session.post(f"{admin}/admin/revoke", json=body) as resp:
                        if resp.status != 200:
                            failures.append(f"jti {row['jti']}: HTTP {resp.status} {await resp.text()}")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    failures.append(f"jti {row['jti']}: {type(exc).__name__} {exc}")

        await asyncio.gather(*(one(row) for row in rows))
    return failures


def revoke(admin: str, rows: list[dict[str, Any]], token: str | None = None) -> list[str]:
    return asyncio.run(post_all(admin, rows, token))


def admin_token(cfg: GatewayConfig | None) -> str | None:
    """The admin port's bearer token: the config's ``admin.token``, else $TOKENGATE_ADMIN_TOKEN."""
    if cfg is not None and cfg.admin.token is not None:
        return cfg.admin.token.get_secret_value()
    return os.environ.get(ADMIN_TOKEN_VAR) or None
