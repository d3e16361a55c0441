"""``listen.tls`` in the real ``tokengate serve`` process: TLS 1.2+ on the proxy port (the admin port
stays plain HTTP), client certificates requested and verified when given, certificate-bound tokens
(RFC 8705 cnf.x5t#S256) accepted only with their certificate, the certificate header of a trusted
TLS-terminating proxy, and the certificate and key read again on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.steps.binding import X5T_S256, certificate_thumbprint
from tests.conftest import bearer
from tests.integration.gatewayproc import GatewayProcess
from tests.integration.server.test_gateway_process import _until_logged, gateway_config
from tests.tlsfiles import MtlsFiles, write_mtls_files, write_server_cert

pytestmark = pytest.mark.integration
TIMEOUT = aiohttp.ClientTimeout(total=10)
HEADER = "X-Client-Cert"


@pytest.fixture
def certs(tmp_path: Path) -> MtlsFiles:
    return write_mtls_files(tmp_path)


def upstream_url(echo_upstream: TestServer) -> str:
    return str(echo_upstream.make_url("")).rstrip("/")


def der_of(cert_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert_file.read_bytes()).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def bound_mint(mint: Callable[..., str], certs: MtlsFiles) -> Callable[[str], str]:
    """bound_mint(client) -> a token bound to that client's certificate."""
    return lambda client: mint(cnf={X5T_S256: certificate_thumbprint(der_of(certs.clients[client][0]))})


@pytest.fixture
async def mtls_gateway(start_gateway: Callable[..., Any], echo_upstream: TestServer, keys_dir: Path,
                       certs: MtlsFiles) -> GatewayProcess:
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key),
           "client_ca_file": str(certs.client_ca)}
    return await start_gateway(gateway_config(keys_dir, upstream_url(echo_upstream), listen={"tls": tls}))


def https(gw: GatewayProcess, path: str = "/api/orders") -> str:
    return f"https://127.0.0.1:{gw.port}{path}"


async def call(url: str, token: str, ssl_context: ssl.SSLContext | bool = True, *,
               local: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection (from ``local``'s address): its status and JSON body."""
    connector = aiohttp.TCPConnector(ssl=ssl_context, local_addr=(local, 0) if local else None, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        async with session.get(url, headers={**bearer(token), **(headers or {})}) as resp:
            return resp.status, await resp.json()


def seen_headers(body: dict[str, Any]) -> dict[str, str]:
    """The echo upstream's answer: the headers it received, lower-cased names."""
    return {name.lower(): value for name, value in body["headers"]}


async def test_unbound_tokens_work_over_tls_without_a_client_certificate(mtls_gateway, certs, mint):
    status, body = await call(https(mtls_gateway), mint(), certs.client_context())
    assert status == 200
    assert seen_headers(body)["x-forwarded-proto"] == "https"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as plain:   # the admin port stays plain HTTP
        async with plain.get(f"{mtls_gateway.admin_url}/healthz") as resp:
            assert resp.status == 200


async def test_a_bound_token_without_a_client_certificate_is_an_invalid_token(mtls_gateway, certs, bound_mint):
    status, body = await call(https(mtls_gateway), bound_mint("alice"), certs.client_context())
    assert (status, body["error"], body["code"]) == (401, "invalid_token", "invalid_token")


async def test_a_bound_token_with_its_certificate_passes_on_every_request_cached_or_not(
        mtls_gateway, certs, bound_mint, echo_state):
    token = bound_mint("alice")
    connector = aiohttp.TCPConnector(ssl=certs.client_context("alice"))
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        for _ in range(3):   # the first verifies, the others come from the verified-token cache
            async with session.get(https(mtls_gateway), headers=bearer(token)) as resp:
                assert resp.status == 200
    received = len(echo_state.received)
    # The cache holds the identity, not the connection: the same token elsewhere is still refused.
    for other in (None, "bob"):
        status, body = await call(https(mtls_gateway), token, certs.client_context(other))
        assert (status, body["code"]) == (401, "invalid_token")
    assert len(echo_state.received) == received   # nothing refused reached the upstream


async def test_another_clients_certificate_from_the_same_ca_does_not_do(mtls_gateway, certs, bound_mint, mint):
    status, body = await call(https(mtls_gateway), bound_mint("alice"), certs.client_context("bob"))
    assert (status, body["code"]) == (401, "invalid_token")
    assert (await call(https(mtls_gateway), mint(), certs.client_context("bob")))[0] == 200


async def test_a_certificate_from_an_unknown_ca_fails_the_handshake(mtls_gateway, certs, mint, echo_state):
    # CERT_OPTIONAL: a certificate need not be given, but one that is given must verify; OpenSSL ends
    # the handshake (with TLS 1.3 the client learns it on its first read), so no request is ever read.
    with pytest.raises(aiohttp.ClientError):
        await call(https(mtls_gateway), mint(), certs.client_context("stranger"))
    assert not echo_state.received


async def test_tls_1_2_is_served_and_older_versions_are_refused(mtls_gateway, certs):
    tls12 = certs.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await handshake_version(mtls_gateway.port, tls12) == "TLSv1.2"
    old = await tls11_client_that_works(certs)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake_version(mtls_gateway.port, old)


async def handshake_version(port: int, ctx: ssl.SSLContext) -> str | None:
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    version = writer.get_extra_info("ssl_object").version()
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return version


async def tls11_client_that_works(certs: MtlsFiles) -> ssl.SSLContext:
    """A TLS 1.1-only client context, proven able to handshake with a server that allows TLS 1.1; the
    test is skipped when this OpenSSL cannot speak TLS 1.1 at all (then it proves nothing here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # ssl.TLSVersion.TLSv1_1 is deprecated: the point
        client, server = certs.client_context(), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            for ctx in (client, server):
                ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")   # OpenSSL 3 refuses TLS < 1.2 at the default level
            client.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError) as exc:
            pytest.skip(f"this OpenSSL cannot make a TLS 1.1 client: {exc}")
    server.load_cert_chain(certs.server_cert, certs.server_key)
    permissive = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server)
    try:
        port = permissive.sockets[0].getsockname()[1]
        try:
            assert await handshake_version(port, client) == "TLSv1.1"
        except (ssl.SSLError, OSError) as exc:
            pytest.skip(f"this OpenSSL does not complete a TLS 1.1 handshake even with itself: {exc}")
    finally:
        permissive.close()
        await permissive.wait_closed()
    return client


@pytest.fixture
async def behind_proxy(start_gateway: Callable[..., Any], echo_upstream: TestServer, keys_dir: Path) -> GatewayProcess:
    """Plain HTTP behind a TLS-terminating proxy at 127.0.0.1, which states the client's certificate."""
    listen = {"trusted_proxies": ["127.0.0.1/32"], "client_cert_header": HEADER}
    return await start_gateway(gateway_config(keys_dir, upstream_url(echo_upstream), listen=listen))


def escaped(cert_file: Path) -> dict[str, str]:
    """The header as nginx's ``proxy_set_header X-Client-Cert $ssl_client_escaped_cert;`` sends it."""
    return {HEADER: quote(cert_file.read_text(), safe="")}


async def test_a_trusted_proxys_certificate_header_binds(behind_proxy, certs, bound_mint):
    url, token = f"{behind_proxy.url}/api/orders", bound_mint("alice")
    status, body = await call(url, token, headers=escaped(certs.clients["alice"][0]))
    assert status == 200
    assert HEADER.lower() in seen_headers(body)   # the proxy's header is passed on
    for other in ({}, escaped(certs.clients["bob"][0])):
        status, body = await call(url, token, headers=other)
        assert (status, body["code"]) == (401, "invalid_token")


async def test_an_untrusted_peers_certificate_header_is_ignored_and_never_forwarded(behind_proxy, certs, bound_mint,
                                                                                    mint):
    url, alice = f"{behind_proxy.url}/api/orders", escaped(certs.clients["alice"][0])
    status, body = await call(url, bound_mint("alice"), local="127.0.0.2", headers=alice)
    assert (status, body["code"]) == (401, "invalid_token")
    status, body = await call(url, mint(), local="127.0.0.2", headers=alice)
    assert status == 200
    assert HEADER.lower() not in seen_headers(body)


async def server_serial(port: int, ctx: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection to ``port`` is shown."""
    async with asyncio.timeout(10):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return x509.load_der_x509_certificate(der).serial_number


async def until_every_new_connection_sees(port: int, ctx: ssl.SSLContext, serial: int, workers: int) -> None:
    """Poll fresh connections until 4 x workers in a row show ``serial`` (any worker may take one)."""
    deadline, streak = time.monotonic() + 10, 0
    while streak < 4 * workers:
        assert time.monotonic() < deadline, f"the certificate with serial {serial} never served every connection"
        streak = streak + 1 if await server_serial(port, ctx) == serial else 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_reads_the_certificate_again_and_keeps_it_when_the_new_file_is_bad(
        start_gateway, echo_upstream, keys_dir, certs, tmp_path, workers):
    tls = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    gw = await start_gateway(gateway_config(keys_dir, upstream_url(echo_upstream), listen={"tls": tls}),
                             "--workers", str(workers))
    await _until_logged(gw, "tokengate serving on https://", workers)
    client = certs.client_context()
    old = await server_serial(gw.port, client)
    assert old == x509.load_pem_x509_certificate(certs.server_cert.read_bytes()).serial_number
    new_cert, new_key = write_server_cert(tmp_path, "server2")
    shutil.copyfile(new_key, certs.server_key)
    shutil.copyfile(new_cert, certs.server_cert)
    new = x509.load_pem_x509_certificate(new_cert.read_bytes()).serial_number
    gw.proc.send_signal(signal.SIGHUP)
    await until_every_new_connection_sees(gw.port, client, new, workers)
    certs.server_cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    gw.proc.send_signal(signal.SIGHUP)
    await _until_logged(gw, "were not reloaded, the old certificate keeps serving", workers)
    await until_every_new_connection_sees(gw.port, client, new, workers)
    assert gw.proc.poll() is None
