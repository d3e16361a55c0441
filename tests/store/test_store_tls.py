"""rediss://: the Redis store over TLS, against a real redis-server with a test CA."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.config.load import StoreConfig
from gateway.store import StoreUnavailable, open_store
from gateway.store.base import Revocation
from tests.redisproc import free_port
from tests.tlsfiles import write_tls_files

pytestmark = pytest.mark.integration
ISS = "https://auth.example.test"


@pytest.fixture
def tls_redis(spawn_redis, tmp_path: Path) -> tuple[int, Path]:
    ca, cert, key = write_tls_files(tmp_path)
    tls_port = free_port()
    spawn_redis("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no")
    return tls_port, ca


async def test_rediss_store_works_over_tls(tls_redis):
    port, ca = tls_redis
    store = await open_store(StoreConfig(url=f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"))
    try:
        await store.ping()
        now = time.time()
        await store.revoke(Revocation("jti", ISS, "j-tls", now + 60, now + 60))
        assert [r.id for r in await store.live_revocations(now)] == ["j-tls"]
    finally:
        await store.close()


async def test_rediss_refuses_a_server_it_cannot_verify(tls_redis):
    port, _ = tls_redis   # no CA given: the test CA is not trusted, so the handshake must fail
    store = await open_store(StoreConfig(url=f"rediss://127.0.0.1:{port}/0"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
