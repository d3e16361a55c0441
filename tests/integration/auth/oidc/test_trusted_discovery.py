"""A trusted issuer configured by its issuer alone: the gateway finds its keys through discovery at the
real OP, accepts the OP's access tokens (JWTs for the resource tokengate-api) as bearer tokens
(subject_prefix applied), and follows a key rotation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config.load import GatewayConfig
from gateway.dev.echo import EchoState
from gateway.server.app import build_app
from gateway.steps import keys

from .opdriver import OpenIdProvider
from .test_op import callback, sign_in_and_redeem

pytestmark = pytest.mark.integration
__all__ = ["callback"]   # a fixture, imported for pytest

UserAgent = Callable[..., aiohttp.ClientSession]


async def gateway_trusting(make_config: Callable[..., GatewayConfig], aiohttp_server: Any, echo_upstream: TestServer,
                           op: OpenIdProvider, **issuer: Any) -> TestServer:
    upstream = str(echo_upstream.make_url("")).rstrip("/")
    trusted = {"issuer": op.issuer, "audience": ["tokengate-api"], "roles_claim": "groups", **issuer}
    cfg = make_config(tokens={"trusted_issuers": [trusted]},
                      upstreams={"accounts": {"url": upstream}, "orders": {"url": upstream}})
    return await aiohttp_server(build_app(cfg))


async def test_an_issuer_alone_is_trusted_through_its_discovery_document(
        make_config: Callable[..., GatewayConfig], aiohttp_server: Any, echo_upstream: TestServer,
        echo_state: EchoState, oidc_op: OpenIdProvider, make_user_agent: UserAgent, callback: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An unknown kid refetches the keys at most every 30 s (no kid spray hammers the issuer); here at once.
    monkeypatch.setattr(keys, "REFETCH_INTERVAL_S", 0.0)
    gw = await gateway_trusting(make_config, aiohttp_server, echo_upstream, oidc_op, subject_prefix="op:")
    tokens = await sign_in_and_redeem(make_user_agent(), oidc_op, callback, "alice")
    async with aiohttp.ClientSession() as http:
        resp = await http.get(gw.make_url("/api/accounts/7/profile"),
                              headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert resp.status == 200, await resp.text()
        seen = dict(echo_state.received[-1]["headers"])
        assert seen["X-User-Id"] == "op:alice" and seen["X-User-Roles"] == "gateway-admins"

        await oidc_op.rotate_keys(retire=True)   # new ID tokens carry a kid the gateway has not seen
        rotated = await sign_in_and_redeem(make_user_agent(), oidc_op, callback, "carol")
        resp = await http.get(gw.make_url("/api/accounts/7/profile"),
                              headers={"Authorization": f"Bearer {rotated['access_token']}"})
        assert resp.status == 200 and dict(echo_state.received[-1]["headers"])["X-User-Id"] == "op:carol"
