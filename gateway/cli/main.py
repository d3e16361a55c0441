"""The ``tokengate`` command: serve | check-config | mint | explain | keys generate | jwks | users | revoke |
sessions.

Bad input of any kind ends with a clear message on stderr and a non-zero status, never a
traceback (set TOKENGATE_DEBUG=1 to see one for an unexpected error).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import traceback
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config.durations import parse_duration_s
from ..config.load import ConfigError, GatewayConfig
from .args import EXIT_BAD_INPUT, UsageError, add_config_option, config_from, print_error
from .keygen import GENERATABLE, KeyExists, default_kid, generate_key
from .revoke import add_revoke_parser
from .sessions import add_sessions_parser
from .users import add_users_parser

EXIT_NO_MATCH = 1
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print_error(f"{len(exc.problems)} problem(s) in the config:\n{exc}")
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print_error(str(exc))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if os.environ.get("TOKENGATE_DEBUG"):
            traceback.print_exc()
        print_error(f"unexpected error ({type(exc).__name__}): {exc}. Set TOKENGATE_DEBUG=1 for details.")
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokengate", description="Async JWT edge gateway and reverse proxy.")
    p.add_argument("--version", action="version", version=f"tokengate {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help_: str, config: bool = True) -> argparse.ArgumentParser:
        cp = sub.add_parser(name, help=help_, description=help_)
        if config:
            add_config_option(cp)
        cp.set_defaults(func=func)
        return cp

    s = command("serve", _serve, "run the gateway")
    s.add_argument("--host")
    s.add_argument("--port", type=_port)
    s.add_argument("--workers", type=_workers)
    command("check-config", _check_config, "validate a config file and summarise it")
    m = command("mint", _mint, "mint an access token signed with the config's signing key")
    m.add_argument("--sub", required=True)
    m.add_argument("--role", action="append", default=[], dest="roles")
    m.add_argument("--ttl", help="lifetime like 15m (default: tokens.access_ttl)")
    m.add_argument("--claim", action="append", default=[], metavar="K=V",
                   help="extra claim; V is read as JSON when it parses, else as a string")
    m.add_argument("--cnf-x5t", type=Path, metavar="CERTFILE",
                   help="bind the token to this client certificate (PEM): cnf.x5t#S256, RFC 8705")
    e = command("explain", _explain, "show which route a request matches and what it needs")
    e.add_argument("method")
    e.add_argument("urlpath")
    command("jwks", _jwks, "print the public JWKS")
    add_users_parser(sub)
    add_revoke_parser(sub)
    add_sessions_parser(sub)
    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_command", required=True)
    g = keys.add_parser("generate", help="generate a signing key")
    g.add_argument("--alg", required=True, choices=GENERATABLE)
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--kid", type=_kid)
    g.set_defaults(func=_keys_generate)
    return p


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker count (1-256)")
    return int(text)


def _kid(text: str) -> str:
    if not _KID.match(text):
        raise argparse.ArgumentTypeError("a kid is 1-64 characters of letters, digits, '.', '_' or '-'")
    return text


def _serve(args: argparse.Namespace) -> int:
    from ..logs import configure_logging
    from ..server.serve import Bind, ListenFailed
    from ..server.supervisor import run

    cfg = config_from(args)
    configure_logging(cfg.log)
    main = Bind(args.host or cfg.listen.host, cfg.listen.port if args.port is None else args.port)
    admin = Bind(cfg.admin.host, cfg.admin.port)
    try:
        return run(cfg, main, admin, args.workers or cfg.listen.workers)
    except ListenFailed as exc:
        print_error(str(exc))
        return 1


def _check_config(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    signer = cfg.tokens.signer
    print(f"{cfg.source}: OK: {len(cfg.routes)} routes, {len(cfg.upstreams)} upstreams, "
          f"{len(cfg.tokens.keys)} keys (signing: {signer.kid if signer else 'none'}), "
          f"{len(cfg.tokens.trusted_issuers)} trusted issuers, store {cfg.store.safe_url}")
    return 0


def _mint(args: argparse.Namespace) -> int:
    from ..steps.tokens import Minter

    cfg = config_from(args)
    if cfg.tokens.signer is None:
        raise UsageError("the config has no key that can sign (only public keys); add a secret or private key")
    try:
        ttl_s = parse_duration_s(args.ttl) if args.ttl else None
    except ValueError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    claims = dict(_claim(c) for c in args.claim)
    if args.cnf_x5t is not None:
        claims["cnf"] = _bound_to_certificate(claims.get("cnf"), args.cnf_x5t)
    try:
        token = Minter(cfg.tokens, cfg.identity).mint_access_token(args.sub, args.roles, ttl_s=ttl_s,
                                                                   extra_claims=claims)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(token)
    return 0


def _claim(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--claim takes K=V, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _bound_to_certificate(cnf: Any, cert_file: Path) -> dict[str, Any]:
    """``cnf`` (from --claim, or None) with the ``x5t#S256`` of the PEM certificate in ``cert_file``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from ..steps.binding import X5T_S256, certificate_thumbprint

    if cnf is not None and not isinstance(cnf, dict):
        raise UsageError("--claim cnf=... must be a JSON object to take --cnf-x5t as well")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())   # the first, when the file holds a chain
    except OSError as exc:
        raise UsageError(f"--cnf-x5t: cannot read {str(cert_file)!r}: {exc.strerror or exc}") from None
    except ValueError:
        raise UsageError(f"--cnf-x5t: {str(cert_file)!r} holds no PEM certificate") from None
    return {**(cnf or {}), X5T_S256: certificate_thumbprint(cert.public_bytes(serialization.Encoding.DER))}


def _explain(args: argparse.Namespace) -> int:
    from ..errors import BadPath
    from ..paths import normalise
    from ..pipeline import REFUSED_METHODS

    cfg = config_from(args)
    raw, method = args.urlpath.partition("?")[0], args.method.upper()
    if method in REFUSED_METHODS:   # refused before the path is read, as the proxy does
        print(f"path:     {raw}\nrefused:  405 {method} is never proxied")
        return EXIT_NO_MATCH
    try:
        path = normalise(raw)
    except BadPath as exc:
        print(f"path:     {raw}\nrefused:  400 {exc.description}")
        return EXIT_NO_MATCH
    found = cfg.rules.explain(method, path)
    print(f"path:     {path}")
    if found.rule is None:
        print(f"no route: 404 ({found.reason})")
    else:
        rule = found.rule
        base = cfg.upstreams[rule.upstream].url.rstrip("/")
        print(f"route:    routes[{rule.index}] {rule.label}")
        print(f"upstream: {rule.upstream} -> {base}{path}")
        print(f"needs:    {_needs(rule)}")
    if len(found.routes) > 1:
        print("\n".join(_methods_block(cfg, found.routes, REFUSED_METHODS)))
    return EXIT_NO_MATCH if found.rule is None else 0


def _methods_block(cfg: GatewayConfig, routes: Sequence[Any], refused: Collection[str]) -> list[str]:
    """`explain`'s lines for a path several routes share: which route serves each method there, and
    what the methods none of them lists get (404: a less specific route never picks them up)."""
    rows = [(method, f"routes[{rule.index}] {rule.label}")   # in the file's order
            for rule in routes for method in cfg.routes[rule.index].methods or ("other",) if method not in refused]
    if all(rule.methods is not None for rule in routes):
        rows.append(("other", f"404 (no route of {routes[0].path} lists it; a less specific one never "
                              "picks it up)"))
    rows += [(method, "405 (never proxied, whatever the routes say)") for method in sorted(refused)]
    width = max(len(method) for method, _ in rows)
    head = f"methods:  {len(routes)} routes share {routes[0].path}; each method is served by one of them"
    return [head, *(f"  {method.ljust(width)}  {served}" for method, served in rows)]


def _needs(rule: Any) -> str:
    if rule.public:
        return "nothing (public route; no token needed)"
    if rule.roles is None:
        return "a valid token (any role)"
    return f"a valid token with one of the roles: {', '.join(sorted(rule.roles))}"


def _jwks(args: argparse.Namespace) -> int:
    from ..steps.keys import KeyRing

    print(json.dumps(KeyRing.from_config(config_from(args).tokens).public_jwks(), indent=2))
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    kid = args.kid or default_kid(args.alg)
    try:
        files, snippet = generate_key(args.alg, args.out, kid)
    except KeyExists as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot write to {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {', '.join(str(f) for f in files)}")
    print("add to tokens.keys:")
    print(snippet)
    return 0
