"""Real Redis topologies for tests, on free loopback ports: a 3-master Cluster and a Sentinel setup.

``start_cluster(tmpdir)`` starts three cluster-enabled redis-servers, joins them with
``redis-cli --cluster create`` and waits (bounded polling) until every node reports cluster_state:ok.
``start_sentinel(tmpdir)`` starts a master, a replica and three sentinels that monitor the master, and
waits until the replica is in sync and every sentinel knows the master and its replica.
Both stop every process by PID with ``stop()``, also when starting fails half-way. The calls block
(subprocess, polling): from async code, run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

from tests.redisproc import RedisProc, free_port

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
READY_TIMEOUT_S = 20.0
SENTINEL_SERVICE = "tokengate"
T = TypeVar("T")


def info(port: int, *args: str) -> dict[str, str]:
    """A command whose reply is a map (INFO, CLUSTER INFO, SENTINEL MASTER ...) as text; {} when it fails."""
    try:
        with redis.Redis(port=port, socket_timeout=1, decode_responses=True) as client:
            reply = client.execute_command(*args)
    except redis.RedisError:
        return {}
    if isinstance(reply, str):   # CLUSTER INFO: "name:value" lines
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)
    if isinstance(reply, list):   # SENTINEL MASTER on RESP2: name, value, name, value ...
        return dict(zip(reply[::2], reply[1::2]))
    return {str(k): str(v) for k, v in reply.items()}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout_s}s")
        time.sleep(0.05)


class Topology:
    """Processes started together and stopped together (by PID)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[RedisProc] = []

    def spawn(self, *extra_args: str, conf: Path | None = None, port: int | None = None) -> RedisProc:
        proc = RedisProc(self.workdir, port or free_port(), extra_args, conf=conf)
        self.procs.append(proc)
        return proc.start()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


class ClusterTopology(Topology):
    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p.port}" for p in self.procs)

    def is_ok(self) -> bool:
        return all(info(p.port, "CLUSTER", "INFO").get("cluster_state") == "ok" for p in self.procs)


class SentinelTopology(Topology):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.master: RedisProc | None = None
        self.replica: RedisProc | None = None
        self.sentinels: list[RedisProc] = []

    @property
    def url(self) -> str:
        return ("redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
                + f"/{SENTINEL_SERVICE}")

    def current_master_port(self) -> int:
        """The master's port as the first sentinel that answers names it (it changes with a failover)."""
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1, decode_responses=True) as client:
                    return int(client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answered")

    def knows_master(self) -> bool:
        assert self.master is not None and self.replica is not None
        for sentinel in self.sentinels:
            master = info(sentinel.port, "SENTINEL", "MASTER", SENTINEL_SERVICE)
            if master.get("flags") != "master" or master.get("port") != str(self.master.port):
                return False
            if master.get("num-slaves") != "1" or master.get("num-other-sentinels") != str(len(self.sentinels) - 1):
                return False
        return info(self.replica.port, "INFO", "replication").get("master_link_status") == "up"


def start_cluster(workdir: Path, masters: int = 3) -> ClusterTopology:
    """``masters`` cluster-enabled servers joined into one cluster that answers (cluster_state:ok)."""
    return _again_on_failure(lambda: _start_cluster(workdir, masters))


def start_sentinel(workdir: Path, sentinels: int = 3, quorum: int = 2) -> SentinelTopology:
    """A master, its replica and ``sentinels`` sentinels monitoring it as SENTINEL_SERVICE."""
    return _again_on_failure(lambda: _start_sentinel(workdir, sentinels, quorum))


def _again_on_failure(start: Callable[[], T], attempts: int = 2) -> T:
    """Most likely someone took one of the free ports before our server bound it: start afresh once."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _start_cluster(workdir: Path, masters: int) -> ClusterTopology:
    cluster = ClusterTopology(workdir)
    try:
        for _ in range(masters):
            port = free_port()
            cluster.spawn("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                          "--cluster-port", str(free_port()), port=port)   # no bus on port + 10000
        nodes = [f"127.0.0.1:{p.port}" for p in cluster.procs]
        joined = subprocess.run([REDIS_CLI, "--cluster", "create", *nodes, "--cluster-replicas", "0",
                                 "--cluster-yes"], capture_output=True, text=True, timeout=READY_TIMEOUT_S)
        if joined.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{joined.stdout}{joined.stderr}")
        wait_for(cluster.is_ok, "the cluster did not report cluster_state:ok")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_sentinel(workdir: Path, sentinels: int, quorum: int) -> SentinelTopology:
    setup = SentinelTopology(workdir)
    try:
        setup.master = setup.spawn("--repl-diskless-sync-delay", "0")   # the replica syncs at once
        setup.replica = setup.spawn("--replicaof", "127.0.0.1", str(setup.master.port))
        for _ in range(sentinels):
            port = free_port()
            conf = workdir / f"sentinel-{port}.conf"   # a sentinel rewrites its config file: one each
            conf.write_text(f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {setup.master.port} {quorum}\n"
                            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                            f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n")
            setup.sentinels.append(setup.spawn("--sentinel", conf=conf, port=port))
        wait_for(setup.knows_master, "the sentinels did not agree on the master and its replica")
    except BaseException:
        setup.stop()
        raise
    return setup
