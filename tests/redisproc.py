"""A throwaway redis-server for tests: started on a free loopback port, stopped by its PID.

``start_redis(tmpdir)`` returns a running RedisProc (``conf``: a config file read first, e.g. a sentinel's); ``kill()`` and ``restart()`` (same port) let fault
tests take it away and bring it back. The calls block (subprocess, polling): from async tests, run them
with ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_ping(port: int, timeout_s: float = 0.2) -> bool:
    """Is a Redis server answering on this port? (-NOAUTH counts: it is up, it wants a password.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class RedisProc:
    def __init__(self, workdir: Path, port: int, extra_args: tuple[str, ...] = (), conf: Path | None = None) -> None:
        self.workdir, self.port, self.extra_args, self.conf = workdir, port, extra_args, conf
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        args = [REDIS_SERVER, *([str(self.conf)] if self.conf else []), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), *self.extra_args]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")   # the child keeps its own copy
        with log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers_ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT_S}s")
            time.sleep(0.02)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal our redis-server (by PID) and wait for it; SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        if sig != signal.SIGKILL:
            os.kill(proc.pid, signal.SIGCONT)   # a frozen server must wake up to handle SIGTERM
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)

    def kill(self) -> None:
        """Take it away at once, as a crash would."""
        self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a hung server or a black-holed link)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> RedisProc:
        self.stop()
        return self.start()


def start_redis(tmpdir: Path, *extra_args: str, attempts: int = 3) -> RedisProc:
    """A redis-server on a free loopback port, answering PING. ``extra_args``: e.g. "--requirepass", "x"."""
    for attempt in range(attempts):
        proc = RedisProc(Path(tmpdir), free_port(), extra_args)
        try:
            return proc.start()
        except RuntimeError:   # most likely someone took the port between free_port() and the bind
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")
