"""GET /auth/verify behind a real nginx ``auth_request``: nginx on a free loopback port, in front of a
real ``tokengate serve`` and the echo upstream. What the upstream receives is asserted, never assumed.
The server block is the one README.md shows under "Behind nginx (auth_request)".
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.dev.echo import ECHO, EchoState
from gateway.steps.dpop import thumbprint
from loadtests.procs import free_port, stop_process
from tests.conftest import base_config, bearer
from tests.integration.gatewayproc import GatewayProcess
from tests.unit.steps.dpop_proofs import ath, good_header, key, public_jwk, sign

NGINX = Path("/usr/sbin/nginx")
if not NGINX.exists():
    pytest.skip(f"{NGINX} is missing (Debian package nginx; ./dev.sh test installs it)", allow_module_level=True)

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05

# README.md's snippet, with its two placeholder addresses (tokengate at 127.0.0.1:8080, the upstream at
# 127.0.0.1:9001) put in by server_block(). Keep the two the same.
SERVER_BLOCK = """\
server {
    listen 127.0.0.1:8000;

    location / {
        auth_request /_auth;
        # The identity tokengate decided. proxy_set_header replaces any header of that name the
        # client sent, and an empty value (a public route) sends none at all.
        auth_request_set $user  $upstream_http_x_user_id;
        auth_request_set $roles $upstream_http_x_user_roles;
        auth_request_set $email $upstream_http_x_user_email;
        # A 401's WWW-Authenticate nginx relays itself; the fresh DPoP-Nonce of a DPoP refusal
        # (tokens.dpop.nonce) it must be told to ("" adds no header).
        auth_request_set $dpop_nonce $upstream_http_dpop_nonce;
        add_header DPoP-Nonce $dpop_nonce always;
        proxy_set_header X-User-Id    $user;
        proxy_set_header X-User-Roles $roles;
        proxy_set_header X-User-Email $email;
        proxy_pass http://127.0.0.1:9001;
    }

    location = /_auth {
        internal;
        proxy_pass http://127.0.0.1:8080/auth/verify;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Original-Method $request_method;
        # The scheme and host the client used: a DPoP proof names them (with listen.trusted_proxies).
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host  $http_host;
    }
}
"""


def server_block(port: int, gateway: str, upstream: str) -> str:
    return (SERVER_BLOCK.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            .replace("127.0.0.1:8080", gateway).replace("127.0.0.1:9001", upstream))


def nginx_conf(server: str) -> str:
    """A whole nginx.conf around ``server``; every path it writes is under the -p prefix (Debian's
    compiled-in temp and log paths under /var need root)."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "\n".join(f"    {kind}_temp_path {kind}_temp;" for kind in kinds)
    indented = "\n".join(f"    {line}" if line else "" for line in server.splitlines())
    return (f"worker_processes 1;\nevents {{ worker_connections 64; }}\nhttp {{\n"
            f"    access_log access.log;\n{temp}\n{indented}\n}}\n")


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def spawn_nginx(prefix: Path, port: int, server: str) -> Nginx:
    """Start nginx in the foreground (its master is our child, stopped by PID) on ``server``."""
    (prefix / "nginx.conf").write_text(nginx_conf(server))
    error_log = prefix / "error.log"
    globals_ = f"daemon off; pid {prefix / 'nginx.pid'}; error_log {error_log} info;"
    with open(prefix / "stdout.log", "wb") as out:
        proc = subprocess.Popen([str(NGINX), "-p", f"{prefix}/", "-c", "nginx.conf", "-e", str(error_log),
                                 "-g", globals_], stdout=out, stderr=subprocess.STDOUT)
    return Nginx(proc, port, prefix)


async def wait_for_port(nginx: Nginx, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll until nginx accepts a connection; fail with its error log if it exits or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if nginx.proc.poll() is not None:
            raise AssertionError(f"nginx exited with {nginx.proc.returncode}:\n{nginx.log()}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", nginx.port), 1.0)
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(POLL_S)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"nginx did not listen on {nginx.port} within {timeout_s}s:\n{nginx.log()}")


@dataclass
class Edge:
    """nginx in front of tokengate, and what the upstream behind it has received."""

    http: aiohttp.ClientSession
    nginx: Nginx
    upstream: EchoState

    async def call(self, method: str, path: str, headers: Any = None) -> aiohttp.ClientResponse:
        async with self.http.request(method, self.nginx.url + path, headers=headers) as resp:
            await resp.read()
            return resp

    def received(self, folded_name: str) -> list[list[str]]:
        """Per request the upstream received: the values of headers named ``folded_name`` once case is
        folded and "_" read as "-"."""
        return [[value for name, value in seen["headers"] if name.lower().replace("_", "-") == folded_name]
                for seen in self.upstream.received]


@pytest.fixture
async def edge(start_gateway: Callable[..., Any], echo_upstream: TestServer, keys_dir: Path, tmp_path: Path,
               http: aiohttp.ClientSession) -> AsyncIterator[Edge]:
    upstream = f"127.0.0.1:{echo_upstream.port}"
    cfg = base_config(keys_dir)
    cfg["upstreams"] = {"accounts": {"url": f"http://{upstream}"}, "orders": {"url": f"http://{upstream}"}}
    cfg["listen"]["trusted_proxies"] = ["127.0.0.1/32"]   # nginx: its X-Forwarded-Proto/-Host name the URL
    cfg["tokens"]["dpop"] = {"nonce": True}
    gw: GatewayProcess = await start_gateway(cfg)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    nginx = spawn_nginx(prefix, port, server_block(port, f"127.0.0.1:{gw.port}", upstream))
    try:
        await wait_for_port(nginx)
        yield Edge(http, nginx, echo_upstream.app[ECHO])
    finally:
        await asyncio.to_thread(stop_process, nginx.proc, STOP_TIMEOUT_S)


async def test_a_valid_token_reaches_the_upstream_with_the_gateways_identity(edge: Edge,
                                                                           mint: Callable[..., str]) -> None:
    token = mint(sub="alice", roles=["user"], email="alice@example.test")
    resp = await edge.call("GET", "/api/orders/7?x=1", bearer(token))
    assert resp.status == 200
    assert [seen["path"] for seen in edge.upstream.received] == ["/api/orders/7"]
    assert edge.received("x-user-id") == [["alice"]] and edge.received("x-user-roles") == [["user"]]
    assert edge.received("x-user-email") == [["alice@example.test"]]


async def test_no_token_is_401_and_never_reaches_the_upstream(edge: Edge) -> None:
    resp = await edge.call("GET", "/api/orders/7")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="tokengate"')   # nginx relays the challenge
    assert not edge.upstream.received


async def test_a_client_x_forwarded_uri_does_not_open_an_admin_route(edge: Edge) -> None:
    """Before the fix the gateway judged the client's /api/public: 200, the DELETE reached the upstream."""
    assert (await edge.call("DELETE", "/api/admin/users")).status == 401
    resp = await edge.call("DELETE", "/api/admin/users", {"X-Forwarded-Uri": "/api/public"})
    assert resp.status == 500   # nginx: any auth answer but 2xx/401/403 (here the gateway's 400) is an error
    assert not edge.upstream.received


async def test_a_client_x_forwarded_method_does_not_turn_a_403_into_a_200(edge: Edge, mint: Callable[..., str]) -> None:
    """Before the fix the gateway judged the client's GET: 200, a user's DELETE reached the upstream."""
    token = bearer(mint(sub="alice", roles=["user"]))
    assert (await edge.call("DELETE", "/api/orders/7", token)).status == 403
    resp = await edge.call("DELETE", "/api/orders/7", {**token, "X-Forwarded-Method": "GET"})
    assert resp.status == 500
    assert not edge.upstream.received


@pytest.mark.parametrize("spelling", ["X-User-Id", "x-user-id", "X_User_Id", "x_user_id"])
async def test_a_client_sent_user_id_never_reaches_the_upstream(edge: Edge, mint: Callable[..., str],
                                                                spelling: str) -> None:
    token = mint(sub="alice", roles=["user"])
    assert (await edge.call("GET", "/api/orders/7", {**bearer(token), spelling: "admin"})).status == 200
    assert (await edge.call("GET", "/api/public/x", {spelling: "admin"})).status == 200   # no token needed
    # The first carries the gateway's subject alone; the public one carries no identity at all.
    assert edge.received("x-user-id") == [["alice"], []]


def dpop_headers(edge: Edge, token: str, method: str, path: str, **changes: Any) -> dict[str, str]:
    """``Authorization: DPoP`` and a fresh proof for ``method`` on nginx's ``path`` (the URL the client uses)."""
    claims = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": f"{edge.nginx.url}{path}",
              "iat": int(time.time()), "ath": ath(token), **changes}
    return {"Authorization": f"DPoP {token}", "DPoP": sign(good_header("ec256"), claims, key("ec256"), "ES256")}


async def test_a_dpop_request_passes_once_and_its_replay_gets_the_dpop_challenge(edge: Edge,
                                                                                mint: Callable[..., str]) -> None:
    """Before forward-auth checked proofs against the proxied request: every bound token was a 401."""
    token = mint(sub="alice", roles=["user"], cnf={"jkt": thumbprint(public_jwk(key("ec256")))})
    # tokens.dpop.nonce: the first proof is refused with a nonce, which nginx passes back to the client.
    first = await edge.call("GET", "/api/orders/7?x=1", dpop_headers(edge, token, "GET", "/api/orders/7"))
    assert first.status == 401
    assert first.headers["WWW-Authenticate"].startswith('DPoP error="use_dpop_nonce"')
    nonce = first.headers["DPoP-Nonce"]
    headers = dpop_headers(edge, token, "GET", "/api/orders/7", nonce=nonce)
    ok = await edge.call("GET", "/api/orders/7?x=1", headers)
    assert ok.status == 200 and "DPoP-Nonce" not in ok.headers
    assert edge.received("x-user-id") == [["alice"]]
    replay = await edge.call("GET", "/api/orders/7?x=1", headers)
    assert replay.status == 401
    assert replay.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    wrong_method = await edge.call("DELETE", "/api/orders/7", dpop_headers(edge, token, "GET", "/api/orders/7",
                                                                             nonce=nonce))
    assert wrong_method.status == 401
    assert wrong_method.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    assert len(edge.upstream.received) == 1


def test_the_readme_shows_this_very_server_block() -> None:
    readme = Path(__file__).resolve().parents[3] / "README.md"
    assert SERVER_BLOCK in readme.read_text()
