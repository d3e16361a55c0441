"""SIGHUP: read the config file again and apply what can change while serving.

Routes, upstreams, identity headers and ``tokens`` (keys, issuers, audiences, lifetimes) are
swapped in at once (Gateway.apply); a config that does not validate is refused, its errors logged,
and the old one keeps serving. The sections bound to sockets and stores (listen, admin, store,
auth, log, reload) need a restart: a change there is logged and not applied. With
``reload.watch`` the same happens when the file changes on disk.

The file is never read on an event loop: a short-lived reader process (forked from the fork
server, which has the gateway imported, and niced so that serving workers keep the CPU) reads and
validates it and sends the validated config back pickled (~90 KB for 1,000 routes). A worker only
unpickles and applies it (tens of milliseconds). With ``workers: N`` the supervisor has the file
read once per reload and hands the result to the workers one after another (server/supervisor.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from ..config.load import ConfigError, GatewayConfig, load_config
from ..pipeline import Gateway

log = logging.getLogger("tokengate")
NEEDS_RESTART = ("listen", "admin", "store", "auth", "log", "reload")
# The lowest priority: on a saturated machine a reload takes seconds longer rather than CPU from requests.
READER_NICENESS = 19
READ_TIMEOUT_S = 60.0     # a reader that has not answered by then is killed and the reload refused
# What the fork server imports once, so that a worker or a reader forked from it starts warm.
FORK_SERVER_PRELOAD = ["gateway.server.supervisor"]


@dataclass(frozen=True)
class ReadConfig:
    """One reading of the config file: the validated config, or why it was refused."""

    config: GatewayConfig | None
    refused: str | None      # the problems (file:line each) when the config does not validate
    sha256: str              # of the file's bytes; "" when it could not be read
    read_ms: float
    read_by: int             # the pid of the process that read it


def fork_context() -> multiprocessing.context.ForkServerContext:
    """The start method of workers and readers: forked from a server that imported the gateway once
    (a worker serves in well under a second instead of re-importing everything)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORK_SERVER_PRELOAD)
    return ctx


def read_config(path: str) -> ReadConfig:
    """Read and validate ``path`` (in the reader process)."""
    started = time.perf_counter()
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        digest = ""
    try:
        config, refused = load_config(path), None
    except ConfigError as exc:
        config, refused = None, str(exc)
    return ReadConfig(config, refused, digest, (time.perf_counter() - started) * 1000, os.getpid())


def _reader(path: str, out: Connection) -> None:
    with contextlib.suppress(OSError):
        os.nice(READER_NICENESS)
    out.send_bytes(pickle.dumps(read_config(path), protocol=pickle.HIGHEST_PROTOCOL))
    out.close()


def start_reader(path: str) -> tuple[BaseProcess, Connection]:
    """Start a reader of ``path``; its answer (a pickled ReadConfig) comes on the returned connection."""
    ctx = fork_context()
    answer, out = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_reader, args=(path, out), daemon=True, name="tokengate-config-reader")
    try:
        proc.start()
    finally:
        out.close()
    return proc, answer


def finish_reader(proc: BaseProcess, answer: Connection, path: str, wait_s: float = READ_TIMEOUT_S) -> bytes:
    """The reader's answer, pickled, once it comes (blocking, at most ``wait_s``; a supervisor, which
    waits for it elsewhere, passes 0); a reader that dies or hangs becomes a refusal that says so."""
    try:
        if answer.poll(wait_s):
            return answer.recv_bytes()
        why = f"reading it took longer than {READ_TIMEOUT_S:g}s"
    except (EOFError, OSError):
        why = "the process reading it ended without an answer"
    finally:
        answer.close()
        proc.join(1.0)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
    return pickle.dumps(ReadConfig(None, f"{path}: {why}", "", 0.0, proc.pid or 0))


async def read_off_loop(path: str) -> ReadConfig:
    """Read ``path`` in a reader process; the loop only waits (and unpickles the answer)."""
    proc, answer = await asyncio.to_thread(start_reader, path)   # the first start waits for the fork server
    data = await asyncio.to_thread(finish_reader, proc, answer, path)
    return pickle.loads(data)


def merged(current: GatewayConfig, new: GatewayConfig) -> tuple[GatewayConfig, list[str]]:
    """``new`` with the sections that need a restart kept as in ``current``; and which of them changed."""
    fixed = [name for name in NEEDS_RESTART if getattr(new, name) != getattr(current, name)]
    return new.model_copy(update={name: getattr(current, name) for name in NEEDS_RESTART}), fixed


async def reload_config(gw: Gateway) -> bool:
    """SIGHUP in a single process: read the file off the loop, then apply it."""
    return await apply_read(gw, await read_off_loop(gw.config.source))


async def apply_read(gw: Gateway, read: ReadConfig, started: float | None = None) -> bool:
    """Apply one reading of the config; True when applied, False (logged) when it was refused.
    The routes are compiled in slices, between which requests are served; the swap itself is one
    step. The log line names this worker, the file's hash and what the reload cost: ``apply_ms``
    from ``started`` (perf_counter; when the pickled reading arrived) to the swap, which bounds
    the time the loop spent on it."""
    where = {"worker_pid": os.getpid(), "config_sha256": read.sha256, "read_ms": round(read.read_ms, 1),
             "read_by_pid": read.read_by}
    if read.config is None:
        log.error("config reload: the config was not reloaded, the old one keeps serving: %s", read.refused,
                  extra=where)
        return False
    started = time.perf_counter() if started is None else started
    applied, fixed = merged(gw.config, read.config)
    if fixed:
        log.warning("config reload: %s changed; these sections apply only after a restart and keep their old values",
                    ", ".join(fixed))
    await applied.rules_in_slices()   # validated by the reader: no conflict here
    try:
        gw.apply(applied)
    except ValueError as exc:
        log.error("config reload: the config was not reloaded, the old one keeps serving: %s", exc, extra=where)
        return False
    apply_ms = (time.perf_counter() - started) * 1000
    log.info("config reload: reloaded from %s: %d routes, %d upstreams, %d keys (signing: %s); worker pid %d, "
             "config sha256 %s, read in %.0f ms by pid %d, applied in %.1f ms", applied.source,
             len(applied.routes), len(applied.upstreams), len(applied.tokens.keys),
             applied.tokens.signer.kid if applied.tokens.signer else "none", where["worker_pid"], read.sha256[:16],
             read.read_ms, read.read_by, apply_ms, extra={**where, "apply_ms": round(apply_ms, 1)})
    return True


def file_signature(path: str) -> tuple[int, int, int] | None:
    """What tells a changed file: its modification time, size and inode (a Kubernetes ConfigMap
    update swaps a symlink); None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


async def watch_file(path: str, interval_s: float, on_change: Callable[[], Awaitable[object]]) -> None:
    """Call ``on_change`` whenever the file at ``path`` changes. Runs until cancelled; a file that
    is missing for a while is waited for."""
    seen = await asyncio.to_thread(file_signature, path)
    while True:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(file_signature, path)
        if now is not None and now != seen:
            seen = now
            log.info("config file %s changed: reloading", path)
            try:
                await on_change()
            except Exception:   # a bug in a reload must not end the watching
                log.exception("reloading after a change of %s failed", path)
