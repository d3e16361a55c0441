"""What `run --start` starts and stops: the fast upstream, the plain proxy (for --compare), one
`tokengate serve` per worker count on a copy of the config pointed at the fast upstream, and a
redis-server when several workers would otherwise each hold their own memory:// store.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .procs import Child, StartFailed, free_port, free_ports, python, spawn, wait_ready

REDIS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Pinning:
    """--cpus PROXY:LOAD: the proxy under test on one set of CPUs, the load (and upstream) on another."""

    proxy: frozenset[int]
    load: frozenset[int]


@dataclass
class Target:
    name: str
    url: str
    process: Child           # whose CPU time (with its workers) is the target's cost
    gateway: bool = False
    workers: int | None = None
    admin_url: str | None = None


def gateway_config(original: Path, upstream: str, port: int, admin_port: int, workers: int,
                   store_url: str | None) -> dict[str, Any]:
    """The config as written, with loopback ports, ``workers`` and every upstream URL replaced."""
    raw = yaml.safe_load(original.read_text()) or {}
    raw["listen"] = {**(raw.get("listen") or {}), "host": "127.0.0.1", "port": port, "workers": workers}
    raw["admin"] = {**(raw.get("admin") or {}), "host": "127.0.0.1", "port": admin_port}
    raw["upstreams"] = {name: {**(entry if isinstance(entry, dict) else {}), "url": upstream}
                        for name, entry in (raw.get("upstreams") or {}).items()}
    if store_url is not None:
        raw["store"] = {**(raw.get("store") or {}), "url": store_url}
    return raw


def write_private(path: Path, data: dict[str, Any]) -> None:
    path.touch(mode=0o600)   # it may hold a secret written inline in the original
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Stack:
    """A context manager: everything started on entry is stopped by PID on exit, whatever happened."""

    def __init__(self, config: Path, workers: list[int], plain_proxy: bool, pinning: Pinning | None,
                 workdir: Path, shared_store: bool) -> None:
        self.config, self.workers, self.plain_proxy = config, workers, plain_proxy
        self.pinning, self.workdir, self.shared_store = pinning, workdir, shared_store
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self._exit = ExitStack()

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _child(self, name: str, argv: list[str], cpus: Collection[int] | None) -> Child:
        child = spawn(name, argv, self.workdir, cpus)
        self._exit.callback(child.stop)
        return child

    def _start(self) -> None:
        proxy_cpus = self.pinning.proxy if self.pinning else None
        load_cpus = self.pinning.load if self.pinning else None
        port = free_port()
        upstream = self._child("upstream", python("loadtests.upstream", "--port", str(port)), load_cpus)
        wait_ready(upstream, port)
        upstream_url = f"http://127.0.0.1:{port}"
        self.targets.append(Target("upstream (direct)", upstream_url, upstream))
        if self.plain_proxy:
            pport = free_port()
            plain = self._child("plainproxy", python("loadtests.plainproxy", "--port", str(pport),
                                                     "--upstream", upstream_url), proxy_cpus)
            wait_ready(plain, pport)
            self.targets.append(Target("plain proxy", f"http://127.0.0.1:{pport}", plain))
        store_url = self._start_redis(load_cpus) if self.shared_store else None
        for workers in self.workers:
            self.targets.append(self._start_gateway(upstream_url, workers, store_url, proxy_cpus))

    def _start_redis(self, cpus: Collection[int] | None) -> str:
        server = shutil.which("redis-server")
        if server is None:
            raise StartFailed("several workers on a memory:// config need a shared store: install redis-server "
                              "(apt-get install redis-server) or give a config whose store is redis://")
        port = free_port()
        child = self._child("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)], cpus)
        deadline = time.monotonic() + REDIS_TIMEOUT_S
        while not _answers_ping(port):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise StartFailed(f"redis-server did not start; its log ends with:\n{child.log_tail()}")
            time.sleep(0.05)
        self.notes.append(f"the config's store is memory://, so every gateway here uses a redis-server "
                          f"the kit started (redis://127.0.0.1:{port}): workers must share revocations")
        return f"redis://127.0.0.1:{port}/0"

    def _start_gateway(self, upstream: str, workers: int, store_url: str | None,
                       cpus: Collection[int] | None) -> Target:
        port, admin_port = free_ports(2)
        copy = self.config.parent / f".loadtest-{os.getpid()}-{port}.yaml"   # key paths stay relative to it
        self._exit.callback(copy.unlink, missing_ok=True)
        try:
            write_private(copy, gateway_config(self.config, upstream, port, admin_port, workers, store_url))
        except OSError as exc:
            raise StartFailed(f"cannot write the config copy {copy}: {exc.strerror or exc}") from None
        child = self._child(f"gateway-w{workers}", python("gateway", "serve", "--config", str(copy)), cpus)
        wait_ready(child, admin_port, "/readyz", want=200)
        name = f"gateway, {workers} worker{'s' if workers > 1 else ''}"
        return Target(name, f"http://127.0.0.1:{port}", child, gateway=True, workers=workers,
                      admin_url=f"http://127.0.0.1:{admin_port}")
