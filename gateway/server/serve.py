"""Serve the gateway in one uvloop process: a worker of server/supervisor.py, or the whole gateway.

SIGTERM/SIGINT: stop accepting, let requests in flight finish (at most listen.drain_timeout),
then exit 0. A supervisor's worker closes its proxy listener, then waits for its supervisor's word
that every worker has closed its own before it answers anything with Connection: close: each
worker listens on an SO_REUSEPORT socket of its own, and the kernel resets the connections waiting
in the accept queue of a listener that closes, so a client told to reconnect must find every
listener closed, not another worker's about to close. SIGHUP: reload (server/reload.py), and the proxy
port's TLS certificate and key read again (server/tls.py); a supervisor's worker asks its supervisor
instead, which reloads every worker one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import uvloop
from aiohttp import web

from ..admin.routes import SERVING, build_admin_app
from ..auth.accounts.directory import FileUsers, UsersFileError
from ..config.load import GatewayConfig
from ..forward.headers import is_loopback
from ..pipeline import GATEWAY, Gateway
from .app import GatewayRunner, build_app
from .edge import EdgeRunner, edge_options
from .reload import ReadConfig, apply_read, reload_config, watch_file
from .tls import ListenerTls

log = logging.getLogger("tokengate")
# How long serve keeps the proxy port shut waiting for the revocation mirror's first load. A store that
# answers loads 200k revocations in ~2.5 s (measured on 2 busy cores); one that cannot be reached ends the
# wait at once. Past it the port opens anyway: not ready, and store.on_error decides until the mirror is in sync.
FIRST_LOAD_WAIT_S = 10.0
# The ports, as the one-line message of a port that is taken names them.
PROXY, ADMIN, DEMO = "the proxy port, listen.port", "the admin port, admin.port", "a demo port"
LISTEN_FAILED = 3   # a worker's exit status when it cannot listen: restarting it would fail the same way
# A worker's messages to its supervisor (server/supervisor.py) on its control pipe ...
HANGUP, APPLIED, REFUSED, CLOSED = b"hangup", b"applied", b"refused", b"closed"
# ... and the supervisor's to its workers, besides a pickled ReadConfig (which starts with b"\x80").
DRAIN = b"drain"
# How long a stopping worker waits for DRAIN after CLOSED (the supervisor answers once every worker has
# closed its listeners, or when this much has gone by; a worker whose supervisor is gone drains at once).
CLOSE_WAIT_S = 5.0
# multiprocessing's Connection.send_bytes framing (a signed 4-byte big-endian length; messages
# here are far below 2 GiB, where it would add 8 more bytes).
MESSAGE_HEAD = struct.Struct("!i")


class ListenFailed(Exception):
    """A port could not be bound (in use, no permission, bad address)."""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int


async def serve(cfg: GatewayConfig, main: Bind, admin: Bind, *, reuse_port: bool = False,
                extra_apps: Sequence[tuple[web.Application, Bind]] = (),
                started: Callable[[web.Application], Awaitable[object]] | None = None,
                control: Connection | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return. Raises ListenFailed for a port it cannot have.
    ``started(app)`` (the demo's) is awaited once every port is open, with the gateway's app.
    ``control``: a supervisor's worker's pipe to its supervisor, which runs the reloads."""
    main_app = build_app(cfg)
    admin_token = cfg.admin.token.get_secret_value() if cfg.admin.token is not None else None
    admin_app = build_admin_app(main_app, admin_token)
    if admin_token is None and not is_loopback(admin.host):
        log.warning("the admin port listens on %s without admin.token: whoever reaches it can revoke tokens; "
                    "set admin.token or bind it to 127.0.0.1", admin.host)
    ports = [*((app, bind, DEMO) for app, bind in extra_apps), (main_app, main, PROXY), (admin_app, admin, ADMIN)]
    runners: list[web.AppRunner] = []
    tls = await _listener_tls(cfg, main)   # the proxy port's alone: the admin port stays plain HTTP
    try:
        for app, bind, what in ports:
            runner = runner_for(app, cfg, what)
            await runner.setup()
            runners.append(runner)
            if app is main_app:
                await _await_first_revocation_load(main_app[GATEWAY], cfg)
            await _start_site(runner, bind, reuse_port, what,
                              tls.listening if tls is not None and app is main_app else None)
        # Everything built so far (config, rules, keys) lives as long as the process: keep it out of
        # the garbage collector's full passes, which would otherwise walk it and stall requests.
        gc.freeze()
        admin_app[SERVING].accepting = True
        log.info("tokengate serving on %s://%s:%s, admin on http://%s:%s (pid %s)", "https" if tls else "http",
                 main.host, main.port, admin.host, admin.port, os.getpid())
        if started is not None:
            await started(main_app)
        reloads = _Reloads(main_app, control, tls)
        watcher = None
        if cfg.reload.watch and control is None:   # a supervisor watches for its workers
            watcher = asyncio.create_task(watch_file(cfg.source, cfg.reload.interval, reloads.here))
        await _wait_for_stop_signal(reloads.on_hangup)
        admin_app[SERVING].accepting = False
        log.info("stopping: draining requests in flight (at most %gs)", cfg.listen.drain_timeout)
        if watcher is not None:
            watcher.cancel()
        for runner in runners[:-1]:   # no new connection from here on (the admin port drains last)
            for site in list(runner.sites):
                await site.stop()
        await reloads.listeners_closed()
        reloads.close()
    finally:
        # Stop the gateway first (drains in-flight requests), the admin port last.
        for runner in [*runners[:-1][::-1], *runners[-1:]]:
            await runner.cleanup()


def runner_for(app: web.Application, cfg: GatewayConfig, port: str) -> web.AppRunner:
    """The runner ``serve`` gives the app of ``port`` (PROXY, ADMIN or DEMO): the proxy's behind its
    FrontDoor, the admin's with the same edge (server/edge.py: head and idle timeouts, no lingering,
    X-Request-Id, no Server header); a demo app (not the gateway) as aiohttp serves it."""
    # handler_cancellation: a client that hangs up cancels its upstream call at once.
    common: dict[str, Any] = {"handle_signals": False, "access_log": None, "handler_cancellation": True,
                              "shutdown_timeout": cfg.listen.drain_timeout}
    if port == PROXY:
        return GatewayRunner(app, **common)
    if port == ADMIN:
        return EdgeRunner(app, **edge_options(cfg.listen), **common)
    return web.AppRunner(app, **common)


async def _await_first_revocation_load(gw: Gateway, cfg: GatewayConfig) -> None:
    """Hold the proxy port shut until the revocation mirror is loaded, so that a new instance never
    answers 503 while its store is fine; at most FIRST_LOAD_WAIT_S. A store that cannot be reached
    ends the wait at once: serve starts, reports not ready and store.on_error applies (DESIGN)."""
    if await gw.denylist.first_load(FIRST_LOAD_WAIT_S):
        return
    if gw.denylist.tried:
        log.warning("the store %s cannot be reached: serving anyway, not ready; store.on_error (%s) applies "
                    "until it connects", cfg.store.safe_url, cfg.store.on_error)
    else:
        log.warning("the revocation mirror is still loading after %gs: serving anyway; store.on_error (%s) "
                    "applies until it is in sync", FIRST_LOAD_WAIT_S, cfg.store.on_error)


async def _listener_tls(cfg: GatewayConfig, main: Bind) -> ListenerTls | None:
    """``listen.tls``'s context, each worker its own. The files were checked when the config loaded;
    one that changed since then is a port that cannot serve (ListenFailed: restarting would not help)."""
    if cfg.listen.tls is None:
        return None
    try:
        return await ListenerTls.open(cfg.listen.tls)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ListenFailed(f"cannot serve TLS on {main.host}:{main.port} ({PROXY}): {exc}") from None


async def _start_site(runner: web.AppRunner, bind: Bind, reuse_port: bool, what: str,
                      ssl_context: ssl.SSLContext | None = None) -> None:
    try:
        await web.TCPSite(runner, bind.host, bind.port, reuse_port=reuse_port or None, backlog=1024,
                          ssl_context=ssl_context).start()
    except OSError as exc:
        raise ListenFailed(_cannot_listen(bind, what, exc)) from None


def _cannot_listen(bind: Bind, what: str, exc: OSError) -> str:
    """One line that names the port and why (asyncio's own message repeats the address)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return f"cannot listen on {bind.host}:{bind.port} ({what}): {reason}"


async def _wait_for_stop_signal(on_hangup: Callable[[], object]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


class _Reloads:
    """SIGHUP in this process. Alone, it reloads itself, one reload at a time. A supervisor's worker
    asks its supervisor (which has the file read once and asks each worker in turn) and applies what
    comes on ``control``, answering APPLIED or REFUSED.

    ``control`` is read with asyncio streams, never with Connection.recv_bytes: the loop may only
    wait for bytes, and a reading of a 1,000-route config (~90 KB) arrives in several pieces. The
    framing is Connection.send_bytes', which the supervisor uses (MESSAGE_HEAD)."""

    def __init__(self, app: web.Application, control: Connection | None, tls: ListenerTls | None = None) -> None:
        self.app = app
        self.tls = tls   # listen.tls: its files are read again on every reload
        self.supervised = control is not None
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writer: asyncio.StreamWriter | None = None
        self.drain = asyncio.Event()   # the supervisor's DRAIN came (or the supervisor is gone)
        if control is not None:
            self._start(self._follow(control))

    def on_hangup(self) -> None:
        if self.supervised:
            self._tell(HANGUP)
        else:
            self._start(self.here())

    async def listeners_closed(self) -> None:
        """A supervised worker tells its supervisor that its listeners are closed and waits (at most
        CLOSE_WAIT_S) until every worker's are; alone, there is nobody to wait for."""
        if not self.supervised:
            return
        self._tell(CLOSED)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT_S):
                await self.drain.wait()

    async def here(self) -> None:
        async with self.lock:
            await reload(self.app)
            if self.tls is not None:
                await self.tls.reload()

    async def _follow(self, control: Connection) -> None:
        sock = socket.socket(fileno=os.dup(control.fileno()))   # the Connection's socketpair end
        control.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=sock)
        while True:
            try:
                (size,) = MESSAGE_HEAD.unpack(await reader.readexactly(MESSAGE_HEAD.size))
                message = await reader.readexactly(size)
            except (asyncio.IncompleteReadError, OSError):   # the supervisor is gone: serve on as we are
                self.drain.set()
                return
            if message == DRAIN:
                self.drain.set()
                continue
            arrived = time.perf_counter()
            async with self.lock:
                gw = self.app.get(GATEWAY)
                read: ReadConfig = pickle.loads(message)
                applied = gw is not None and await apply_read(gw, read, arrived)
                await reload_accounts(self.app)
                if self.tls is not None:
                    await self.tls.reload()
            self._tell(APPLIED if applied else REFUSED)

    def _tell(self, message: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(MESSAGE_HEAD.pack(len(message)) + message)

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.writer is not None:
            self.writer.close()


async def reload(app: web.Application) -> None:
    """SIGHUP: the config (routes, upstreams, identity, keys), then the users file."""
    gw = app.get(GATEWAY)
    if gw is not None:
        await reload_config(gw)
    await reload_accounts(app)


async def reload_accounts(app: web.Application) -> None:
    """SIGHUP: re-read the users file (auth.users: {file: ...}); a broken file keeps the old accounts."""
    gw = app.get(GATEWAY)
    if gw is None or not isinstance(gw.users, FileUsers):
        return
    try:
        count = await gw.users.reload()
    except UsersFileError as exc:
        log.error("SIGHUP: the users file was not reloaded, the old accounts stay: %s", exc)
        return
    log.info("SIGHUP: reloaded %d accounts from %s", count, gw.users.path)


def run_one(cfg: GatewayConfig, main: Bind, admin: Bind, *, reuse_port: bool = False,
            control: Connection | None = None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # until serve() handles it: a reload must never kill us
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(cfg, main, admin, reuse_port=reuse_port, control=control))


def reserve(bind: Bind, what: str) -> tuple[socket.socket, Bind]:
    """Bind (without listening) so port 0 becomes one real port all workers then share.

    The bind itself is made without SO_REUSEPORT, so it fails when anyone else holds the port, even
    a listener that allows sharing (another tokengate's workers, nginx with reuseport): the kernel
    would otherwise spread connections between them and us without a word. SO_REUSEPORT is set only
    afterwards, for our own workers to join."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as exc:
        sock.close()
        raise ListenFailed(_cannot_listen(bind, what, exc)) from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock, Bind(bind.host, sock.getsockname()[1])
