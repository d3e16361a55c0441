"""``workers: N``: a supervisor process that starts N workers on one port (SO_REUSEPORT), restarts
a worker that dies, passes SIGTERM on (the workers close their listeners, then drain), and runs
reloads.

Workers are forked from a fork server that imported the gateway once, and get the config already
validated (pickled), so a replacement for a dead worker serves in well under a second: no imports,
no YAML. A reload (SIGHUP to the supervisor or to any worker, or ``reload.watch``) reads the file
once, in a niced reader process (server/reload.py), then hands the result to the workers one after
another: worker 2 is asked only when worker 1 has applied it, so at most one worker at a time
spends its few milliseconds of apply, and the other keeps serving at full speed. A reload asked for
while one runs is done once the current one has ended (several become one).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing import forkserver
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from ..config.load import GatewayConfig
from ..logs import configure_logging
from ..metrics import make_multiprocess_dir, mark_dead, remove_multiprocess_dir
from .reload import READ_TIMEOUT_S, ReadConfig, file_signature, finish_reader, fork_context, merged, start_reader
from .serve import (ADMIN, APPLIED, CLOSE_WAIT_S, CLOSED, DRAIN, HANGUP, LISTEN_FAILED, PROXY, REFUSED, Bind,
                    ListenFailed, reserve, run_one)

log = logging.getLogger("tokengate")
RESTARTS_PER_MINUTE = 5
ACK_TIMEOUT_S = 30.0    # a worker that has not applied a reload by then is skipped (and logged)


def worker_main(cfg: GatewayConfig, main: Bind, admin: Bind, control: Connection) -> None:
    """A worker process (forked from the fork server): serve ``cfg`` until SIGTERM."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # serve() handles it once it runs
    configure_logging(cfg.log)
    try:
        run_one(cfg, main, admin, reuse_port=True, control=control)
    except ListenFailed as exc:
        log.error("%s", exc)
        raise SystemExit(LISTEN_FAILED) from None


def _ensure_fork_server() -> None:
    """Start the fork server (or again, if it died) with SIGHUP ignored: it keeps that across exec,
    and so does every process it forks, so a SIGHUP to the whole process group while a worker
    starts cannot kill it. Only the fork server's own start (a fork and exec, milliseconds; its
    imports run afterwards, in it) has SIGHUP ignored here: a reload asked for then would be lost."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


@dataclass
class _Worker:
    proc: BaseProcess
    control: Connection      # reload messages out, HANGUP/APPLIED/REFUSED in


@dataclass
class _Handoff:
    """One reload being handed to the workers, one at a time."""

    message: bytes                      # the pickled ReadConfig, as the reader sent it
    read: ReadConfig
    waiting: deque[_Worker] = field(default_factory=deque)
    asked: _Worker | None = None
    deadline: float = 0.0


def _send(worker: _Worker, message: bytes) -> None:
    with contextlib.suppress(OSError):   # it is ending
        worker.control.send_bytes(message)


def run(cfg: GatewayConfig, main: Bind, admin: Bind, workers: int) -> int:
    """Serve with ``workers`` processes; returns the exit status."""
    if workers == 1:
        run_one(cfg, main, admin)
        return 0
    if cfg.store.url.startswith("memory://"):
        log.warning("store is memory:// with %d workers: every worker has a store of its own, so a revocation, "
                    "session or account made through one worker is unknown to the others; use Redis", workers)
    return Supervisor(cfg, workers).run(main, admin)


class Supervisor:
    def __init__(self, cfg: GatewayConfig, workers: int) -> None:
        self.started_with = cfg
        self.config = cfg          # what a new worker starts with: the last config a worker applied
        self.path = cfg.source
        self.count = workers
        self.pool: list[_Worker] = []
        self.ctx = fork_context()
        self.stopping = False
        self.hangup_asked = False
        self.restarts: list[float] = []
        self.reading: tuple[BaseProcess, Connection] | None = None
        self.reading_until = 0.0
        self.handoff: _Handoff | None = None
        self.watched = file_signature(self.path) if cfg.reload.watch else None
        self.next_watch = time.monotonic() + cfg.reload.interval

    def run(self, main: Bind, admin: Bind) -> int:
        main_sock, main = reserve(main, PROXY)
        try:
            admin_sock, admin = reserve(admin, ADMIN)
        except ListenFailed:
            main_sock.close()
            raise
        self.main, self.admin = main, admin
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        metrics_dir = make_multiprocess_dir()   # /metrics adds up every worker's values from there
        try:
            self.pool = [self._spawn() for _ in range(self.count)]
            return self._supervise(wake_r)
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            for s in (main_sock, admin_sock, wake_r, wake_w):
                s.close()
            remove_multiprocess_dir(metrics_dir)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            self.hangup_asked = True
        else:
            self.stopping = True

    def _spawn(self) -> _Worker:
        ours, theirs = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(self.config, self.main, self.admin, theirs), daemon=False)
        _ensure_fork_server()
        try:
            proc.start()
        finally:
            theirs.close()
        return _Worker(proc, ours)

    def _supervise(self, wake: socket.socket) -> int:
        wake.setblocking(False)
        while not self.stopping:
            ready = wait(self._waitables(wake), timeout=self._timeout())
            if wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)   # the signal's wake-up bytes: drained, or wait() would spin
            if self.stopping:
                break
            for worker in self.pool:
                if worker.control in ready:
                    self._from_worker(worker)
            self._watch()
            if self.reading is not None and (self.reading[1] in ready or time.monotonic() >= self.reading_until):
                self._read_done()
            self._hand_on()
            if self.hangup_asked and self.reading is None and self.handoff is None:
                self.hangup_asked = False
                _ensure_fork_server()
                self.reading = start_reader(self.path)
                self.reading_until = time.monotonic() + READ_TIMEOUT_S
            for i, worker in enumerate(self.pool):
                if worker.proc.exitcode is None:
                    continue
                status = self._replace(i)
                if status is not None:
                    self._stop()
                    return status
        return self._stop()

    def _waitables(self, wake: socket.socket) -> list:
        found: list = [wake]
        for worker in self.pool:
            found += [worker.proc.sentinel, worker.control]
        if self.reading is not None:
            found.append(self.reading[1])
        return found

    def _timeout(self) -> float | None:
        deadlines = []
        if self.handoff is not None and self.handoff.asked is not None:
            deadlines.append(self.handoff.deadline)
        if self.reading is not None:
            deadlines.append(self.reading_until)
        if self.started_with.reload.watch:
            deadlines.append(self.next_watch)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _from_worker(self, worker: _Worker) -> None:
        try:
            message = worker.control.recv_bytes()
        except (EOFError, OSError):
            return   # it is ending; its sentinel tells the rest
        if message == HANGUP:
            self.hangup_asked = True
        elif message == CLOSED:   # one worker stopping on its own (SIGTERM to it alone): it may drain now
            _send(worker, DRAIN)
        elif message in (APPLIED, REFUSED) and self.handoff is not None and self.handoff.asked is worker:
            if message == APPLIED and self.handoff.read.config is not None:
                self.config = merged(self.started_with, self.handoff.read.config)[0]
            self.handoff.asked = None

    def _watch(self) -> None:
        if not self.started_with.reload.watch or time.monotonic() < self.next_watch:
            return
        self.next_watch = time.monotonic() + self.started_with.reload.interval
        now = file_signature(self.path)
        if now is not None and now != self.watched:
            self.watched = now
            log.info("config file %s changed: reloading", self.path)
            self.hangup_asked = True

    def _read_done(self) -> None:
        assert self.reading is not None
        proc, answer = self.reading
        self.reading = None
        message = finish_reader(proc, answer, self.path, wait_s=0.0)
        self.handoff = _Handoff(message, pickle.loads(message))
        self.handoff.waiting.extend(self.live)

    def _hand_on(self) -> None:
        """Ask the next worker to apply the reload once the previous one has (or has timed out)."""
        handoff = self.handoff
        if handoff is None:
            return
        if handoff.asked is not None:
            if handoff.asked.proc.exitcode is not None:   # it died before answering; its replacement is asked later
                handoff.asked = None
            elif time.monotonic() < handoff.deadline:
                return
            else:
                log.warning("config reload: worker pid %s did not apply the new config within %gs; going on without it",
                            handoff.asked.proc.pid, ACK_TIMEOUT_S)
                handoff.asked = None
        while handoff.waiting:
            worker = handoff.waiting.popleft()
            if worker.proc.exitcode is not None:
                continue
            try:
                worker.control.send_bytes(handoff.message)
            except OSError:
                continue   # it is ending
            handoff.asked, handoff.deadline = worker, time.monotonic() + ACK_TIMEOUT_S
            return
        self.handoff = None

    def _replace(self, i: int) -> int | None:
        """A worker has exited: start another, or the exit status to stop with."""
        old = self.pool[i]
        if old.proc.exitcode == LISTEN_FAILED:   # it logged which port and why
            return 1
        if not self._may_restart():
            log.error("workers keep dying (last exit status %s); stopping", old.proc.exitcode)
            return 1
        log.warning("worker pid %s exited with %s; starting a new one", old.proc.pid, old.proc.exitcode)
        mark_dead([old.proc.pid])   # its live gauges stop counting; its counters stay in the sums
        old.control.close()
        self.pool[i] = self._spawn()
        if self.handoff is not None:   # it started with the config of before the reload in progress
            self.handoff.waiting.append(self.pool[i])
        return None

    def _until_all_closed(self) -> None:
        """Wait until every live worker has said CLOSED (or exited), at most CLOSE_WAIT_S."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        open_ones = {w.control: w for w in self.live}
        while open_ones and (left := deadline - time.monotonic()) > 0:
            for control in wait(list(open_ones), timeout=left):
                try:
                    message = control.recv_bytes()
                except (EOFError, OSError):   # it exited
                    message = CLOSED
                if message == CLOSED:
                    del open_ones[control]

    @property
    def live(self) -> list[_Worker]:
        return [w for w in self.pool if w.proc.exitcode is None]

    def _may_restart(self) -> bool:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60] + [now]
        return len(self.restarts) <= RESTARTS_PER_MINUTE

    def _stop(self) -> int:
        for worker in self.pool:
            if worker.proc.exitcode is None:
                worker.proc.terminate()          # SIGTERM: each worker closes its listeners ...
        self._until_all_closed()
        for worker in self.pool:                 # ... and only then drains (server/serve.py says why)
            _send(worker, DRAIN)
        status = 0
        deadline = time.monotonic() + self.started_with.listen.drain_timeout + 10
        for worker in self.pool:
            worker.proc.join(max(0.0, deadline - time.monotonic()))
            if worker.proc.exitcode is None:
                log.error("worker pid %s did not stop in time; killing it", worker.proc.pid)
                worker.proc.kill()
                worker.proc.join()
            worker.control.close()
            status = status or (0 if worker.proc.exitcode in (0, -signal.SIGTERM) else 1)
        return status
