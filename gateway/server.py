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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import uvloop
from aiohttp import web

from .admin import SERVING, build_admin_app
from .app import GatewayRunner, build_app
from .config import GatewayConfig, load_config
from .proxy_headers import is_loopback
from .logs import configure_logging
from .metrics import make_multiprocess_dir, mark_dead, remove_multiprocess_dir
from .reload import reload_config, watch_file
from .pipeline import GATEWAY
from .users import FileUsers, UsersFileError

log = logging.getLogger("tokengate")
RESTARTS_PER_MINUTE = 5


class ListenFailed(Exception):
    """A port could not be bound (in use, no permission, bad address)."""


@dataclass(frozen=True)
class Bind:
    host: str
    port: int


async def serve(cfg: GatewayConfig, main: Bind, admin: Bind, *, reuse_port: bool = False,
                extra_apps: Sequence[tuple[web.Application, Bind]] = ()) -> None:
    """Serve until SIGTERM/SIGINT, then drain and return."""
    main_app = build_app(cfg)
    admin_token = cfg.admin.token.get_secret_value() if cfg.admin.token is not None else None
    admin_app = build_admin_app(main_app, admin_token)
    if admin_token is None and not is_loopback(admin.host):
        log.warning("the admin port listens on %s without admin.token: whoever reaches it can revoke tokens; "
                    "set admin.token or bind it to 127.0.0.1", admin.host)
    runners: list[web.AppRunner] = []
    try:
        for app, bind in [*extra_apps, (main_app, main), (admin_app, admin)]:
            # handler_cancellation: a client that hangs up cancels its upstream call at once.
            runner_class = GatewayRunner if app is main_app else web.AppRunner
            runner = runner_class(app, handle_signals=False, access_log=None, handler_cancellation=True,
                                  shutdown_timeout=cfg.listen.drain_timeout)
            await runner.setup()
            runners.append(runner)
            await _start_site(runner, bind, reuse_port)
        # Everything built so far (config, rules, keys) lives as long as the process: keep it out of
        # the garbage collector's full passes, which would otherwise walk it and stall requests.
        gc.freeze()
        admin_app[SERVING].accepting = True
        log.info("tokengate serving on http://%s:%s, admin on http://%s:%s (pid %s)",
                 main.host, main.port, admin.host, admin.port, os.getpid())
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


async def _start_site(runner: web.AppRunner, bind: Bind, reuse_port: bool) -> None:
    try:
        await web.TCPSite(runner, bind.host, bind.port, reuse_port=reuse_port or None, backlog=1024).start()
    except OSError as exc:
        raise ListenFailed(f"cannot listen on {bind.host}:{bind.port}: {exc.strerror or exc}") from None


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
        raise SystemExit(3) from None


def run(cfg: GatewayConfig, main: Bind, admin: Bind, workers: int) -> int:
    """Serve with ``workers`` processes; returns the exit status."""
    if workers == 1:
        run_one(cfg, main, admin)
        return 0
    if cfg.store.url.startswith("memory://"):
        log.warning("store is memory:// with %d workers: every worker has a store of its own, so a revocation, "
                    "session or account made through one worker is unknown to the others; use Redis", workers)
    return _Supervisor(cfg.source, workers, cfg.listen.drain_timeout).run(main, admin)


def _reserve(bind: Bind) -> tuple[socket.socket, Bind]:
    """Bind (without listening) so port 0 becomes one real port all workers then share."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((bind.host, bind.port))
    except OSError as exc:
        sock.close()
        raise ListenFailed(f"cannot listen on {bind.host}:{bind.port}: {exc.strerror or exc}") from None
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
        main_sock, main = _reserve(main)
        admin_sock, admin = _reserve(admin)
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
