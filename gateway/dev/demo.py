"""``./dev.sh demo``: the gateway on config/demo.yaml plus the echo upstream, in one process.

It logs as ``tokengate serve`` does (the config's ``log``: JSON lines on stderr), generates an HS256
secret for the run unless TOKENGATE_SECRET is set, and once every port is open creates two accounts
(alice: user, admin: admin) with passwords of this run, then prints the banner: the accounts, a token,
the secret and the lines to try. The banner (stdout) is the only place those appear, never the log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvloop
from aiohttp import web

from ..config.load import ConfigError, GatewayConfig, load_config
from ..logs import configure_logging
from ..pipeline import GATEWAY
from ..server.serve import Bind, ListenFailed, serve
from .echo import build_echo_app

log = logging.getLogger("tokengate.demo")
TOKEN_TTL_S = 3600
END = "Ctrl-C stops the demo.\n"   # the banner's last line (tests read up to it)


class DemoFailed(Exception):
    """The demo cannot set up its accounts; the message says why."""


@dataclass(frozen=True)
class DemoAccount:
    username: str
    role: str
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12), repr=False)   # per run

    @property
    def email(self) -> str:
        return f"{self.username}@example.test"


@dataclass
class Demo:
    """What the banner needs; ``start`` is serve's ``started`` hook."""

    cfg: GatewayConfig
    config_path: str
    generated_secret: str | None    # None: TOKENGATE_SECRET came from the environment
    accounts: tuple[DemoAccount, ...] = (DemoAccount("alice", "user"), DemoAccount("admin", "admin"))

    async def start(self, app: web.Application) -> None:
        """Create the accounts in the running gateway's directory (with memory:// they exist only in this
        process, so only the gateway itself can create them), then print the banner."""
        gw = app[GATEWAY]
        if not gw.users.editable:
            raise DemoFailed("this config's accounts (auth.users) cannot be edited here; use auth.users: store")
        for account in self.accounts:
            if not await gw.users.add(account.username, account.password, [account.role], email=account.email):
                raise DemoFailed(f"the account {account.username!r} exists already; the demo needs a fresh store")
        log.info("demo accounts created", extra={"accounts": [a.username for a in self.accounts]})
        alice = self.accounts[0]
        token = gw.minter.mint_access_token(alice.username, [alice.role], ttl_s=TOKEN_TTL_S,
                                            extra_claims={"email": alice.email})
        print(self.banner(token), end="", flush=True)

    def banner(self, token: str) -> str:
        base = f"http://{self.cfg.listen.host}:{self.cfg.listen.port}"
        admin = f"http://{self.cfg.admin.host}:{self.cfg.admin.port}"
        accounts = "\n".join(f"  {a.username:<6} password {a.password}   role {a.role}" for a in self.accounts)
        store = self.cfg.store.safe_url
        kept = f"in the {store} store: they end with the demo" if store.startswith("memory:") else f"in {store}"
        return _BANNER.format(base=base, admin=admin, upstream=self.cfg.upstreams["echo"].url, accounts=accounts,
                              kept=kept, cwd=os.getcwd(), secret_line=self._secret_line(), token=token,
                              admin_password=self.accounts[1].password, cli=_cli_command(),
                              config=shlex.quote(self.config_path), auth=self.cfg.auth.prefix, end=END)

    def _secret_line(self) -> str:
        if self.generated_secret is None:
            return "# TOKENGATE_SECRET is the one of your environment: export the same one here"
        return (f"export TOKENGATE_SECRET='{self.generated_secret}'   # this run's signing key: "
                "`tokengate mint` signs with it")


# Every line that runs something ends with "# <status>: ..." (tests/integration/dev/test_demo.py runs each one
# and expects that status). The refresh token travels in the JSON body (auth.refresh_token_in_body): the
# refresh cookie is Secure, and curl sends no Secure cookie back over plain http://.
_BANNER = """
tokengate demo: gateway on {base} (admin port {admin}), echo upstream on {upstream}.

Accounts of this run ({kept}):
{accounts}

In another shell, in {cwd}, paste these three lines first:
  {secret_line}
  TOKEN='{token}'   # alice (role user), valid 1h, minted by the demo
  field() {{ python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }}   # a field of a JSON answer

Then try (the comment says the status to expect):
  curl -si {base}/api/public/hello   # 200: public, no token needed
  curl -si {base}/api/orders -H "Authorization: Bearer $TOKEN"   # 200: alice has role user
  curl -si {base}/api/admin/stats -H "Authorization: Bearer $TOKEN"   # 403: the admin role is needed
  curl -si {base}/api/orders   # 401: no token
  curl -si {base}/api/nowhere -H "Authorization: Bearer $TOKEN"   # 404: no route, never forwarded

Log in as admin, use the token, refresh it, log out:
  LOGIN=$(curl -s {base}{auth}/login -H 'Content-Type: application/json' -d '{{"username": "admin", "password": "{admin_password}"}}')   # 200: access_token and refresh_token
  ADMIN=$(echo "$LOGIN" | field access_token); REFRESH=$(echo "$LOGIN" | field refresh_token)
  curl -si {base}/api/admin/stats -H "Authorization: Bearer $ADMIN"   # 200: admin has role admin
  LOGIN=$(curl -s {base}{auth}/refresh -H 'Content-Type: application/json' -d "{{\\"refresh_token\\": \\"$REFRESH\\"}}")   # 200: a new pair; the old refresh token is dead
  ADMIN=$(echo "$LOGIN" | field access_token); REFRESH=$(echo "$LOGIN" | field refresh_token)
  curl -si {base}{auth}/logout -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d "{{\\"refresh_token\\": \\"$REFRESH\\"}}"   # 204: this token and its refresh family are dead
  curl -si {base}/api/admin/stats -H "Authorization: Bearer $ADMIN"   # 401: revoked by the logout

Mint a token with the command line (it signs with TOKENGATE_SECRET):
  MINTED=$({cli} mint --config {config} --sub bob --role admin)
  curl -si -X DELETE {base}/api/orders/7 -H "Authorization: Bearer $MINTED"   # 200: DELETE needs the admin role

{end}"""


def _cli_command() -> str:
    """The ``tokengate`` command of this interpreter's installation, as short as it can be written."""
    script = Path(sys.executable).parent / "tokengate"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    relative = os.path.relpath(command[0])
    if not relative.startswith(".."):
        command[0] = relative if os.sep in relative else f".{os.sep}{relative}"
    return shlex.join(command)


def _ensure_secret() -> str | None:
    """Generate TOKENGATE_SECRET for this run unless the environment has one; the generated one, or None."""
    if os.environ.get("TOKENGATE_SECRET"):
        return None
    secret = secrets.token_urlsafe(48)
    os.environ["TOKENGATE_SECRET"] = secret
    return secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokengate-demo", description=__doc__)
    parser.add_argument("--config", default="config/demo.yaml")
    args = parser.parse_args(argv)
    generated_secret = _ensure_secret()
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"tokengate demo: the demo config is broken:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.log)   # as `tokengate serve` does
    demo = Demo(cfg, args.config, generated_secret)
    echo_port = urlsplit(cfg.upstreams["echo"].url).port or 80
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(cfg, Bind(cfg.listen.host, cfg.listen.port), Bind(cfg.admin.host, cfg.admin.port),
                             extra_apps=[(build_echo_app(), Bind("127.0.0.1", echo_port))], started=demo.start))
    except ListenFailed as exc:
        print(f"tokengate demo: {exc} (set TOKENGATE_PORT, TOKENGATE_ADMIN_PORT or DEMO_UPSTREAM_PORT "
              "to pick other ports)", file=sys.stderr)
        return 1
    except DemoFailed as exc:
        print(f"tokengate demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
