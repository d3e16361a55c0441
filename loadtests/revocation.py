"""Tell a running gateway about the pool's revoked tokens: POST /admin/revoke for each jti of the
pool's sidecar file, a few at a time. Used by `revoke` and by `run --start`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from .tokenpool import PoolError, read_jsonl, sidecar_path

REVOKE_CONCURRENCY = 16


def revoked_rows(pool: Path) -> list[dict[str, Any]]:
    """The sidecar's rows ({"jti", "iss", "exp"}); PoolError when the pool has no sidecar."""
    side = sidecar_path(pool)
    if not side.exists():
        raise PoolError(f"{side} does not exist: make the pool with `python -m loadtests pool` first")
    return read_jsonl(side)


async def post_all(admin: str, rows: list[dict[str, Any]]) -> list[str]:
    """Revoke every row at ``admin``; the failures, one line each (no token is ever in them)."""
    failures: list[str] = []
    gate = asyncio.Semaphore(REVOKE_CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

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


def revoke(admin: str, rows: list[dict[str, Any]]) -> list[str]:
    return asyncio.run(post_all(admin, rows))
