"""Shared test helpers: test keys, configs written to disk, tokens minted with PyJWT directly, and
real redis-servers.

Redis: a redis-server of our own on a free loopback port for the session, or the one ``REDIS_URL``
names (never stopped by us; its database is FLUSHed before tests that use it, so point it at one you
can lose, like redis://127.0.0.1:6379/15). Fault tests start throwaway servers of their own.
The topology tests (marker ``redis_topology``) also start a 3-master Cluster and a Sentinel setup
(tests/redis_topologies.py), or use REDIS_CLUSTER_URL / REDIS_SENTINEL_URL (flushed too).

Tokens here are built with PyJWT itself (not with the gateway's minting code) so that the
verifier is checked against an independent producer.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from redis.asyncio import Redis

from gateway.config.load import GatewayConfig, load_config
from gateway.store import parse_redis_url
from gateway.store.redis.client import build_client
from tests.redis_topologies import start_cluster, start_sentinel
from tests.redisproc import RedisProc, start_redis

ISSUER = "https://auth.example.test"
# argon2id at almost no cost, for tests that hash many passwords (never for production).
CHEAP_ARGON2 = argon2.Parameters(type=argon2.Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1,
                                 memory_cost=8, parallelism=1)
AUDIENCE = "api"
HS_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"   # 49 bytes: fine for HS256/HS384


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="session")
def private_keys() -> dict[str, Any]:
    """One private key per asymmetric algorithm family, plus a foreign one of each (for forgeries)."""
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
        "foreign_rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "foreign_ec256": ec.generate_private_key(ec.SECP256R1()),
    }


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory, private_keys: dict[str, Any]) -> Path:
    """PEM files: NAME.pem (private) and NAME.pub.pem (public) for every key in private_keys."""
    d = tmp_path_factory.mktemp("keys")
    for name, key in private_keys.items():
        (d / f"{name}.pem").write_bytes(_pem_private(key))
        (d / f"{name}.pub.pem").write_bytes(_pem_public(key))
    return d


def base_config(keys_dir: Path) -> dict[str, Any]:
    """A complete config as plain data: several keys, two upstreams, the routes of DESIGN.md."""
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "tokens": {
            "issuer": ISSUER,
            "audience": [AUDIENCE],
            "leeway": "30s",
            "signing_key": "main",
            "keys": [
                {"kid": "main", "alg": "HS256", "secret": HS_SECRET},
                {"kid": "rsa1", "alg": "RS256", "private_key_file": str(keys_dir / "rsa.pem")},
                {"kid": "ec1", "alg": "ES256", "private_key_file": str(keys_dir / "ec256.pem")},
                {"kid": "ed1", "alg": "EdDSA", "private_key_file": str(keys_dir / "ed.pem")},
            ],
        },
        "upstreams": {"accounts": {"url": "http://127.0.0.1:9001"}, "orders": {"url": "http://127.0.0.1:9002"}},
        "routes": [
            {"path": "/api/public", "upstream": "accounts", "public": True},
            {"path": "/api/admin", "upstream": "accounts", "roles": ["admin"]},
            {"path": "/api/orders", "methods": ["GET"], "upstream": "orders", "roles": ["user", "admin"]},
            {"path": "/api/orders", "methods": ["POST", "DELETE"], "upstream": "orders", "roles": ["admin"]},
            {"path": "/api/accounts/*/profile", "upstream": "accounts"},
        ],
    }


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def write_config(tmp_path: Path, keys_dir: Path) -> Callable[..., Path]:
    """write_config(**sections) -> path of a YAML file: base_config with sections merged in."""

    def write(raw: str | None = None, **overrides: Any) -> Path:
        path = tmp_path / f"config-{uuid.uuid4().hex[:8]}.yaml"
        text = raw if raw is not None else yaml.safe_dump(_merge(base_config(keys_dir), overrides))
        path.write_text(text)
        return path

    return write


@pytest.fixture
def make_config(write_config: Callable[..., Path]) -> Callable[..., GatewayConfig]:
    """make_config(**sections) -> a loaded GatewayConfig (base_config with sections merged in)."""

    def make(**overrides: Any) -> GatewayConfig:
        return load_config(write_config(**overrides))

    return make


@pytest.fixture
def mint(private_keys: dict[str, Any]) -> Callable[..., str]:
    """mint(sub=..., roles=[...], kid="main", **claims) -> a token signed like the gateway would sign it.

    ``kid`` picks the signing key of base_config; ``key``/``alg`` override it (for forgeries);
    ``headers`` adds JOSE header fields; a claim set to None is left out.
    """
    signing = {
        "main": (HS_SECRET, "HS256"),
        "rsa1": (private_keys["rsa"], "RS256"),
        "ec1": (private_keys["ec256"], "ES256"),
        "ed1": (private_keys["ed"], "EdDSA"),
    }

    def _mint(*, kid: str | None = "main", key: Any = None, alg: str | None = None,
              headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 300,
                "jti": uuid.uuid4().hex, "roles": ["user"]}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        default_key, default_alg = signing.get(kid or "main", signing["main"])
        header = {"kid": kid} if kid is not None else {}
        header.update(headers or {})
        return jwt.encode(body, key if key is not None else default_key, algorithm=alg or default_alg,
                          headers=header)

    return _mint


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis: REDIS_URL when set (left running), else our own redis-server."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    proc = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield proc.url
    finally:
        proc.stop()


async def flush(url: str) -> None:
    """Empty the database ``url`` names: every master of a cluster, the current master of a sentinel setup."""
    if "+" not in url.partition("://")[0]:
        async with Redis.from_url(url) as client:
            await client.flushdb()
        return
    client, on_close = build_client(parse_redis_url(url), retries=1)
    try:
        await client.flushdb()   # a cluster client sends it to every primary
    finally:
        for close in (client.aclose, *on_close):
            await close()


def _topology_tools() -> None:
    missing = [tool for tool in ("redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install redis-server and redis-tools (./dev.sh test does)")


def _topology(env: str, start: Callable[[Path], Any], workdir: Path) -> Iterator[str]:
    """The URL in ``env`` when set (left running), else a setup of ours, stopped at the end."""
    if url := os.environ.get(env):
        yield url
        return
    _topology_tools()
    setup = start(workdir)
    try:
        yield setup.url
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A 3-master Redis Cluster on loopback for the session (REDIS_CLUSTER_URL, a redis+cluster:// url, when set)."""
    yield from _topology("REDIS_CLUSTER_URL", start_cluster, tmp_path_factory.mktemp("redis-cluster"))


@pytest.fixture(scope="session")
def redis_sentinel_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A master, a replica and three sentinels on loopback for the session (REDIS_SENTINEL_URL when set)."""
    yield from _topology("REDIS_SENTINEL_URL", start_sentinel, tmp_path_factory.mktemp("redis-sentinel"))


@pytest.fixture
def spawn_redis(tmp_path: Path) -> Iterator[Callable[..., RedisProc]]:
    """spawn_redis(*args) -> a throwaway redis-server of this test's own (fault tests kill it)."""
    procs: list[RedisProc] = []

    def spawn(*extra_args: str) -> RedisProc:
        procs.append(start_redis(tmp_path, *extra_args))
        return procs[-1]

    yield spawn
    for proc in procs:
        proc.stop()
