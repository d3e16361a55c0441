"""Run the gateway: one uvloop process, or N worker processes sharing a port (SO_REUSEPORT).

SIGTERM/SIGINT: stop accepting, let requests in flight finish (at most listen.drain_timeout),
then exit 0. With workers > 1 a supervisor restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from .admin import SERVING, build_admin_app
from .app import GatewayRunner, build_app
from .config import GatewayConfig, load_config
from .edge import EdgeRunner, edge_options
from .proxy_headers import is_loopback
from .logs import configure_logging
from .metrics import make_multiprocess_dir, mark_dead, remove_multiprocess_dir
from .reload import reload_config, watch_file
from .pipeline import GATEWAY, Gateway
from .users import FileUsers, UsersFileError

log = logging.getLogger("tokengate")
RESTARTS_PER_MINUTE = 5
# How long serve keeps the proxy port shut waiting for the revocation mirror's first load. A store that
# answers loads 200k revocations in ~2.5 s (measured on 2 busy cores); one that cannot be reached ends the
# wait at once. Past it the port opens anyway: not ready, and store.on_error decides until the mirror is in sync.
FIRST_LOAD_WAIT_S = 10.0
# The ports, as the one-line message of a port that is taken names them.
PROXY, ADMIN, DEMO = "the proxy port, listen.port", "the admin port, admin.port", "a demo port"
LISTEN_FAILED = 3   # a worker's exit status when it cannot listen: restarting it would fail the same way


class ListenFailed(Exception):
    """A port could not be bound (in use, no permission, bad address)."""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int


async def serve(cfg: GatewayConfig, main: Bind, admin: Bind, *, reuse_port: bool = False,
                extra_apps: Sequence[tuple[web.Application, Bind]] = (),
                started: Callable[[web.Application], Awaitable[object]] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return. Raises ListenFailed for a port it cannot have.
    ``started(app)`` (the demo's) is awaited once every port is open, with the gateway's app."""
    main_app = build_app(cfg)
    admin_token = cfg.admin.token.get_secret_value() if cfg.admin.token is not None else None
    admin_app = build_admin_app(main_app, admin_token)
    if admin_token is None and not is_loopback(admin.host):
        log.warning("the admin port listens on %s without admin.token: whoever reaches it can revoke tokens; "
                    "set admin.token or bind it to 127.0.0.1", admin.host)
    ports = [*((app, bind, DEMO) for app, bind in extra_apps), (main_app, main, PROXY), (admin_app, admin, ADMIN)]
    runners: list[web.AppRunner] = []
    try:
        for app, bind, what in ports:
            runner = runner_for(app, cfg, what)
            await runner.setup()
            runners.append(runner)
            if app is main_app:
                await _await_first_revocation_load(main_app[GATEWAY], cfg)
            await _start_site(runner, bind, reuse_port, what)
        # Everything built so far (config, rules, keys) lives as long as the process: keep it out of
        # the garbage collector's full passes, which would otherwise walk it and stall requests.
        gc.freeze()
        admin_app[SERVING].accepting = True
        log.info("tokengate serving on http://%s:%s, admin on http://%s:%s (pid %s)",
                 main.host, main.port, admin.host, admin.port, os.getpid())
        if started is not None:
            await started(main_app)
        watcher = None
        if cfg.reload.watch:
            watcher = asyncio.create_task(watch_file(cfg.source, cfg.reload.interval, lambda: reload(main_app)))
        await _wait_for_stop_signal(lambda: asyncio.ensure_future(reload(main_app)))
        if watcher is not None:
            watcher.cancel()
        admin_app[SERVING].accepting = False
        log.info("stopping: draining requests in flight (at most %gs)", cfg.listen.drain_timeout)
    finally:
        # Stop the gateway first (drains in-flight requests), the admin port last.
        for runner in [*runners[:-1][::-1], *runners[-1:]]:
            await runner.cleanup()


def runner_for(app: web.Application, cfg: GatewayConfig, port: str) -> web.AppRunner:
    """The runner ``serve`` gives the app of ``port`` (PROXY, ADMIN or DEMO): the proxy's behind its
    FrontDoor, the admin's with the same edge (edge.py: head and idle timeouts, no lingering,
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


async def _start_site(runner: web.AppRunner, bind: Bind, reuse_port: bool, what: str) -> None:
    try:
        await web.TCPSite(runner, bind.host, bind.port, reuse_port=reuse_port or None, backlog=1024).start()
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


def run_one(cfg: GatewayConfig, main: Bind, admin: Bind, *, reuse_port: bool = False) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # until serve() handles it: a reload must never kill us
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(cfg, main, admin, reuse_port=reuse_port))


def _worker(config_path: str, main: Bind, admin: Bind) -> None:
    cfg = load_config(config_path)
    configure_logging(cfg.log)
    try:
        run_one(cfg, main, admin, reuse_port=True)
    except ListenFailed as exc:
        log.error("%s", exc)
        raise SystemExit(LISTEN_FAILED) from None


def run(cfg: GatewayConfig, main: Bind, admin: Bind, workers: int) -> int:
    """Serve with ``workers`` processes; returns the exit status."""
    if workers == 1:
        run_one(cfg, main, admin)
        return 0
    if cfg.store.url.startswith("memory://"):
        log.warning("store is memory:// with %d workers: every worker has a store of its own, so a revocation, "
                    "session or account made through one worker is unknown to the others; use Redis", workers)
    return _Supervisor(cfg.source, workers, cfg.listen.drain_timeout).run(main, admin)


def _reserve(bind: Bind, what: str) -> tuple[socket.socket, Bind]:
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


class _Supervisor:
    def __init__(self, config_path: str, workers: int, drain_timeout_s: float) -> None:
        self.config_path = str(Path(config_path).resolve())
        self.workers = workers
        self.drain_timeout_s = drain_timeout_s
        self.ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.hangups = 0
        self.restarts: list[float] = []

    def run(self, main: Bind, admin: Bind) -> int:
        main_sock, main = _reserve(main, PROXY)
        try:
            admin_sock, admin = _reserve(admin, ADMIN)
        except ListenFailed:
            main_sock.close()
            raise
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        metrics_dir = make_multiprocess_dir()   # /metrics adds up every worker's values from there
        try:
            procs = [self._spawn(main, admin) for _ in range(self.workers)]
            return self._supervise(procs, main, admin, wake_r)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for s in (main_sock, admin_sock, wake_r, wake_w):
                s.close()
            remove_multiprocess_dir(metrics_dir)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.hangups += 1      # passed on to every worker by the supervising loop
        else:
            self.stopping = True

    def _spawn(self, main: Bind, admin: Bind) -> multiprocessing.process.BaseProcess:
        proc = self.ctx.Process(target=_worker, args=(self.config_path, main, admin), daemon=False)
        # An ignored SIGHUP survives exec: a reload sent while the worker still starts cannot kill it.
        previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGHUP, previous)
        return proc

    def _supervise(self, procs: list, main: Bind, admin: Bind, wake: socket.socket) -> int:
        wake.setblocking(False)
        while not self.stopping:
            if wake in wait([p.sentinel for p in procs] + [wake], timeout=None):
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)   # the signal's wake-up bytes: drained, or wait() would spin
            if self.stopping:
                break
            self._pass_on_hangups(procs)
            for i, proc in enumerate(procs):
                if proc.exitcode is None:
                    continue
                if proc.exitcode == LISTEN_FAILED:   # it logged which port and why
                    self._stop(procs)
                    return 1
                if not self._may_restart():
                    log.error("workers keep dying (last exit status %s); stopping", proc.exitcode)
                    self._stop(procs)
                    return 1
                log.warning("worker pid %s exited with %s; starting a new one", proc.pid, proc.exitcode)
                mark_dead([proc.pid])   # its live gauges stop counting; its counters stay in the sums
                procs[i] = self._spawn(main, admin)
        return self._stop(procs)

    def _pass_on_hangups(self, procs: list) -> None:
        if self.hangups:
            self.hangups = 0
            for proc in procs:
                if proc.exitcode is None and proc.pid is not None:
                    os.kill(proc.pid, signal.SIGHUP)

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        return len(self.restarts) <= RESTARTS_PER_MINUTE

    def _stop(self, procs: list) -> int:
        for proc in procs:
            if proc.exitcode is None:
                proc.terminate()          # SIGTERM: each worker drains on its own
        status = 0
        deadline = time.monotonic() + self.drain_timeout_s + 10
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                log.error("worker pid %s did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.join()
            status = status or (0 if proc.exitcode in (0, -signal.SIGTERM) else 1)
        return status
