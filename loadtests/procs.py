"""Child processes of a run: started on free loopback ports (optionally pinned to CPUs), waited for
until they answer, their CPU time read (with every worker they spawned), and stopped by PID.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
KILL_TIMEOUT_S = 5.0
POLL_S = 0.05


class StartFailed(Exception):
    """A child did not start or did not become ready (the message names it and its log)."""


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, wait at most ``timeout_s``, then SIGKILL (waited for KILL_TIMEOUT_S); the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
    return proc.returncode


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int, taken: Collection[int] = ()) -> list[int]:
    """``count`` free loopback ports, different from each other and from ``taken`` (each is held
    while the next is picked: ports picked one after another can repeat)."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            if (port := int(sock.getsockname()[1])) not in taken:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_s(self) -> float:
        """User + system CPU seconds of this process and every live descendant (the workers)."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue   # a worker that exited between the listing and the read
            total += times.user + times.system
        return total

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL; returns the exit status."""
        return stop_process(self.proc)


def spawn(name: str, argv: Sequence[str], workdir: Path, cpus: Collection[int] | None = None,
          env: dict[str, str] | None = None) -> Child:
    """Start ``argv`` with its output in WORKDIR/NAME.log, on ``cpus`` when given (inherited by its workers)."""
    log_path = workdir / f"{name}.log"

    def pin() -> None:   # runs in the child between fork and exec: the kit has no threads at this point
        if cpus:
            os.sched_setaffinity(0, set(cpus))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, preexec_fn=pin if cpus else None)
    return Child(name, proc, log_path)


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _get_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def wait_ready(child: Child, port: int, path: str = "/", want: int | None = None,
               timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll GET ``path`` on ``port`` until it answers (``want`` when given); StartFailed otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise StartFailed(f"{child.name} exited with status {child.proc.returncode}; "
                              f"its log ({child.log_path}) ends with:\n{child.log_tail()}")
        status = _get_status(port, path)
        if status is not None and (want is None or status == want):
            return
        time.sleep(POLL_S)
    raise StartFailed(f"{child.name} did not answer GET {path} on port {port} within {timeout_s:g}s; "
                      f"its log ({child.log_path}) ends with:\n{child.log_tail()}")
