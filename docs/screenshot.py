"""Draw docs/sign-in.png, the README's picture of the sign-in page. Run by hand (no test runs it):

    .venv/bin/python docs/screenshot.py            # writes docs/sign-in.png
    .venv/bin/python docs/screenshot.py --out /tmp/sign-in.png

It serves the demo's gateway (config/demo.yaml, with two providers added: "Corp SSO", any OpenID Provider,
and GitHub; the password form comes with the demo's accounts in the store) on a free loopback port, opens
``/auth/login`` in headless chromium (Debian's, driven by playwright as the tests do: tests/integration/
browser.py; nothing leaves loopback, and no provider is contacted to draw the page), and saves a PNG of
the page in the light colour scheme. Run it again when the sign-in page's look changes.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # the tests' chromium launcher, and the gateway when it is not installed

from gateway.config.load import load_config  # noqa: E402
from gateway.server.app import GatewayRunner, build_app  # noqa: E402
from tests.integration.browser import chromium  # noqa: E402

VIEWPORT = {"width": 480, "height": 720}
PROVIDERS: dict[str, Any] = {
    "corp": {"issuer": "https://sso.example.test", "client_id": "tokengate-demo",
             "client_secret": "${CORP_CLIENT_SECRET}", "display_name": "Corp SSO"},
    "github": {"type": "github", "client_id": "tokengate-demo", "client_secret": "${GITHUB_CLIENT_SECRET}",
               "display_name": "GitHub"},
}


def write_config(workdir: Path) -> Path:
    """config/demo.yaml with the two providers added, written to ``workdir``."""
    data = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text(encoding="utf-8"))
    data["auth"]["providers"] = PROVIDERS
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


async def draw(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tokengate-screenshot-") as tmp:
        workdir = Path(tmp)
        environ = {name: secrets.token_urlsafe(48)
                   for name in ("TOKENGATE_SECRET", "CORP_CLIENT_SECRET", "GITHUB_CLIENT_SECRET")}
        cfg = load_config(write_config(workdir), environ)
        runner = GatewayRunner(build_app(cfg))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            async with chromium(workdir / "chromium-profile") as context:
                page = context.pages[0]
                await page.set_viewport_size(VIEWPORT)
                await page.emulate_media(color_scheme="light", reduced_motion="reduce")
                resp = await page.goto(f"http://127.0.0.1:{port}{cfg.auth.prefix}/login")
                if resp is None or resp.status != 200:
                    raise SystemExit(f"the sign-in page answered {resp.status if resp else 'nothing'}")
                await page.get_by_role("link", name="Sign in with GitHub").wait_for()
                await page.screenshot(path=str(out), animations="disabled", caret="hide")
        finally:
            await runner.cleanup()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sign-in.png", help="where the PNG goes")
    asyncio.run(draw(parser.parse_args().out))


if __name__ == "__main__":
    main()
