"""SIGHUP: read the config file again and apply what can change while serving.

Routes, upstreams, identity headers and ``tokens`` (keys, issuers, audiences, lifetimes) are
swapped in at once (Gateway.apply); a config that does not validate is refused, its errors logged,
and the old one keeps serving. The sections bound to sockets and stores (listen, admin, store,
auth, log) need a restart: a change there is logged and not applied.
"""

from __future__ import annotations

import asyncio
import logging

from .config import ConfigError, load_config
from .pipeline import Gateway

log = logging.getLogger("tokengate")
NEEDS_RESTART = ("listen", "admin", "store", "auth", "log")


async def reload_config(gw: Gateway) -> bool:
    """True when the new config was applied; False (logged) when it was refused."""
    path = gw.config.source
    try:
        new = await asyncio.to_thread(load_config, path)   # file and key reads stay off the event loop
    except ConfigError as exc:
        log.error("SIGHUP: the config was not reloaded, the old one keeps serving: %s", exc)
        return False
    fixed = [name for name in NEEDS_RESTART if getattr(new, name) != getattr(gw.config, name)]
    if fixed:
        log.warning("SIGHUP: %s changed; these sections apply only after a restart and keep their old values",
                    ", ".join(fixed))
    applied = new.model_copy(update={name: getattr(gw.config, name) for name in NEEDS_RESTART})
    try:
        gw.apply(applied)
    except ValueError as exc:
        log.error("SIGHUP: the config was not reloaded, the old one keeps serving: %s", exc)
        return False
    log.info("SIGHUP: config reloaded from %s: %d routes, %d upstreams, %d keys (signing: %s)", path,
             len(applied.routes), len(applied.upstreams), len(applied.tokens.keys),
             applied.tokens.signer.kid if applied.tokens.signer else "none")
    return True
