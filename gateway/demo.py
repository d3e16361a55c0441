"""``./dev.sh demo``: the gateway on config/demo.yaml plus the echo upstream, in one process.

Generates an HS256 secret for the run unless TOKENGATE_SECRET is set, mints a token for a
demo user and prints the curl lines to try.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from urllib.parse import urlsplit

import uvloop

from .config import ConfigError, load_config
from .echo import build_echo_app
from .server import Bind, ListenFailed, serve
from .tokens import Minter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokengate-demo", description=__doc__)
    parser.add_argument("--config", default="config/demo.yaml")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENGATE_SECRET", secrets.token_urlsafe(48))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"tokengate demo: the demo config is broken:\n{exc}", file=sys.stderr)
        return 2
    upstream = cfg.upstreams["echo"].url
    echo_port = urlsplit(upstream).port or 80
    token = Minter(cfg.tokens, cfg.identity).mint_access_token("alice", ["user"], ttl_s=3600,
                                                               extra_claims={"email": "alice@example.test"})
    base = f"http://{cfg.listen.host}:{cfg.listen.port}"
    print(_banner(base, upstream, token), flush=True)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(cfg, Bind(cfg.listen.host, cfg.listen.port), Bind(cfg.admin.host, cfg.admin.port),
                             extra_apps=[(build_echo_app(), Bind("127.0.0.1", echo_port))]))
    except ListenFailed as exc:
        print(f"tokengate demo: {exc} (set TOKENGATE_PORT, TOKENGATE_ADMIN_PORT or DEMO_UPSTREAM_PORT "
              "to pick other ports)", file=sys.stderr)
        return 1
    return 0


def _banner(base: str, upstream: str, token: str) -> str:
    return f"""
tokengate demo: gateway on {base}, echo upstream on {upstream}. Ctrl-C stops both.

A token for alice (role "user", valid 1h):
  TOKEN={token}

Try:
  curl -s {base}/api/public/hello                                        # public: no token needed
  curl -s {base}/api/orders -H "Authorization: Bearer $TOKEN"             # 200: alice has role user
  curl -s {base}/api/admin/stats -H "Authorization: Bearer $TOKEN"        # 403: admin role needed
  curl -s {base}/api/orders                                               # 401: no token
  curl -s {base}/api/nowhere -H "Authorization: Bearer $TOKEN"            # 404: no route, never forwarded
"""


if __name__ == "__main__":
    raise SystemExit(main())
