"""SIGHUP: read the config file again and apply what can change while serving.

Routes, upstreams, identity headers and ``tokens`` (keys, issuers, audiences, lifetimes) are
swapped in at once (Gateway.apply); a config that does not validate is refused, its errors logged,
and the old one keeps serving. The sections bound to sockets and stores (listen, admin, store,
auth, log, reload) need a restart: a change there is logged and not applied. With
``reload.watch`` the same happens when the file changes on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from .config import ConfigError, load_config
from .pipeline import Gateway

log = logging.getLogger("tokengate")
NEEDS_RESTART = ("listen", "admin", "store", "auth", "log", "reload")


async def reload_config(gw: Gateway) -> bool:
    """True when the new config was applied; False (logged) when it was refused."""
    path = gw.config.source
    try:
        new = await asyncio.to_thread(load_config, path)   # file and key reads stay off the event loop
    except ConfigError as exc:
        log.error("config reload: the config was not reloaded, the old one keeps serving: %s", exc)
        return False
    fixed = [name for name in NEEDS_RESTART if getattr(new, name) != getattr(gw.config, name)]
    if fixed:
        log.warning("config reload: %s changed; these sections apply only after a restart and keep their old values",
                    ", ".join(fixed))
    applied = new.model_copy(update={name: getattr(gw.config, name) for name in NEEDS_RESTART})
    try:
        gw.apply(applied)
    except ValueError as exc:
        log.error("config reload: the config was not reloaded, the old one keeps serving: %s", exc)
        return False
    log.info("config reload: reloaded from %s: %d routes, %d upstreams, %d keys (signing: %s)", path,
             len(applied.routes), len(applied.upstreams), len(applied.tokens.keys),
             applied.tokens.signer.kid if applied.tokens.signer else "none")
    return True


async def watch_file(path: str, interval_s: float, on_change: Callable[[], Awaitable[object]]) -> None:
    """Call ``on_change`` whenever the file at ``path`` changes (its modification time, size or inode:
    a Kubernetes ConfigMap update swaps a symlink). Runs until cancelled; a file that is missing
    for a while is waited for."""
    seen = await _signature(path)
    while True:
        await asyncio.sleep(interval_s)
        now = await _signature(path)
        if now is not None and now != seen:
            seen = now
            log.info("config file %s changed: reloading", path)
            try:
                await on_change()
            except Exception:   # a bug in a reload must not end the watching
                log.exception("reloading after a change of %s failed", path)


async def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = await asyncio.to_thread(os.stat, path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
