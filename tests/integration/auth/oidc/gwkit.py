"""A gateway app on a loopback socket, as the delegated-login tests drive it: its URL, its callback for a
provider, and the outcomes its browser endpoints counted."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.config.load import GatewayConfig
from gateway.metrics import METRICS


@dataclass
class Gw:
    server: TestServer
    cfg: GatewayConfig
    provider: str = "corp"                     # the provider a test signs in with, unless it names another
    ua: aiohttp.ClientSession | None = None    # the user's browser, where a test keeps one

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def callback(self, provider: str | None = None) -> str:
        return f"{self.url}/auth/oauth/{provider or self.provider}/callback"

    def counted(self, outcome: str, action: str = "oauth_login") -> int:
        """How often the browser endpoints counted this outcome (the app's METRICS recorder, unfolded here)."""
        return self.server.app[METRICS].auth.get((action, outcome), 0)

    def reasons(self) -> dict[tuple[str, str], int]:
        """Every outcome counted so far (a failed assertion shows why a login failed)."""
        return dict(self.server.app[METRICS].auth)
