"""The token pool: N tokens for one gateway config, in a chosen mix of kinds, each labelled with
the status the gateway must answer. Revoked tokens also go to a sidecar file for `revoke`.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.config.load import GatewayConfig
from gateway.config.rules import Rule, RuleSet
from gateway.steps.tokens import ACCESS_TOKEN_TYP, Minter

from .proofs import DPOP_KINDS, key_thumbprint, new_client_key, target_uri

BEARER_KINDS = ("valid", "expired", "revoked", "bad_signature", "wrong_audience", "unknown_kid", "wrong_role")
KINDS = (*BEARER_KINDS, *DPOP_KINDS)
DEFAULT_MIX = {"valid": 70, "expired": 5, "revoked": 5, "bad_signature": 5, "wrong_audience": 5,
               "unknown_kid": 5, "wrong_role": 5}
EXPECT = {"valid": 200, "wrong_role": 403, "dpop": 200}   # every other kind: 401
OTHER_AUDIENCE = "loadtest-not-this-gateway"
NO_ROLE = "loadtest-no-such-role"


class PoolError(Exception):
    """The pool cannot be made for this config / path / mix (a message for people)."""


@dataclass(frozen=True)
class Entry:
    token: str
    kind: str
    expect: int
    path: str
    jti: str
    exp: int
    dpop_key: dict[str, Any] | None = None   # the client's private JWK, for the driver's proofs
    htu: str | None = None                   # the proofs' htu when the config sets auth.public_url

    def line(self) -> str:
        row: dict[str, Any] = {"token": self.token, "kind": self.kind, "expect": self.expect, "path": self.path}
        if self.dpop_key is not None:
            row["dpop_key"] = self.dpop_key
        if self.htu is not None:
            row["htu"] = self.htu
        return json.dumps(row)


def parse_mix(text: str) -> dict[str, int]:
    """`valid=70,expired=5` -> {"valid": 70, "expired": 5}. Raises PoolError."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in KINDS:
            raise PoolError(f"unknown token kind {name!r}; kinds: {', '.join(KINDS)}")
        if not weight.isdigit():
            raise PoolError(f"write each kind as KIND=WEIGHT with a whole number, not {part!r}")
        mix[name] = int(weight)
    if not any(mix.values()):
        raise PoolError("the mix has no kind with a weight above 0")
    return mix


def split_count(count: int, mix: Mapping[str, int]) -> dict[str, int]:
    """``count`` split by weight (largest remainder), so the counts add up to ``count`` exactly."""
    total = sum(mix.values())
    exact = {kind: count * weight / total for kind, weight in mix.items()}
    counts = {kind: int(share) for kind, share in exact.items()}
    left = count - sum(counts.values())
    for kind in sorted(exact, key=lambda k: counts[k] - exact[k])[:left]:
        counts[kind] += 1
    return {kind: n for kind, n in counts.items() if n}


def sidecar_path(pool: Path) -> Path:
    """pool.jsonl -> pool.revoke.jsonl (the jtis the gateway must be told about)."""
    stem = pool.name.removesuffix(".jsonl")
    return pool.with_name(f"{stem}.revoke.jsonl")


class PoolMaker:
    """Makes tokens of every kind for one config, one path and one role."""

    def __init__(self, cfg: GatewayConfig, path: str, role: str, ttl_s: float | None = None) -> None:
        self.cfg, self.path, self.role = cfg, path, role
        self.ttl_s = ttl_s if ttl_s is not None else cfg.tokens.access_ttl
        self.rule = _protected_rule(cfg, path)
        if self.rule.roles is not None and role not in self.rule.roles:
            raise PoolError(f"{path} needs one of the roles {', '.join(sorted(self.rule.roles))}, not {role!r}")
        self.minter = Minter(cfg.tokens, cfg.identity)
        if not self.minter.can_sign:
            raise PoolError("this config has no key that can sign tokens")
        self._throwaway = secrets.token_bytes(48)
        self._foreign_kid = f"loadtest-unknown-{secrets.token_hex(4)}"

    def make(self, kind: str, n: int) -> Entry:
        if kind in DPOP_KINDS:
            return self._dpop_entry(kind, f"loadtest-{n}")
        token = getattr(self, f"_{kind}")(f"loadtest-{n}")
        return self._entry(token, kind)

    def _entry(self, token: str, kind: str, **dpop: Any) -> Entry:
        claims = jwt.decode(token, options={"verify_signature": False})
        return Entry(token, kind, EXPECT.get(kind, 401), self.path, claims["jti"], int(claims["exp"]), **dpop)

    def _valid(self, sub: str) -> str:
        return self.minter.mint_access_token(sub, [self.role], ttl_s=self.ttl_s)

    _revoked = _valid

    def _expired(self, sub: str) -> str:
        back = self.ttl_s + self.cfg.tokens.leeway + 120
        minter = Minter(self.cfg.tokens, self.cfg.identity, clock=lambda: time.time() - back)
        return minter.mint_access_token(sub, [self.role], ttl_s=self.ttl_s)

    def _bad_signature(self, sub: str) -> str:
        head, payload, sig = self._valid(sub).split(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{head}.{payload}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}"

    def _wrong_audience(self, sub: str) -> str:
        tokens = self.cfg.tokens.model_copy(update={"audience": (OTHER_AUDIENCE,)})
        return Minter(tokens, self.cfg.identity).mint_access_token(sub, [self.role], ttl_s=self.ttl_s)

    def _unknown_kid(self, sub: str) -> str:
        now = int(time.time())
        aud = self.cfg.tokens.audience[0]
        claims = {"iss": self.cfg.tokens.issuer, "aud": aud, "sub": sub, "iat": now, "nbf": now,
                  "exp": now + int(self.ttl_s), "jti": uuid.uuid4().hex,
                  self.cfg.identity.roles_claim: [self.role]}
        return jwt.encode(claims, self._throwaway, algorithm="HS256",
                          headers={"kid": self._foreign_kid, "typ": ACCESS_TOKEN_TYP})

    def _wrong_role(self, sub: str) -> str:
        if self.rule.roles is None:
            raise PoolError(f"{self.path} lets any authenticated caller in, so no token has a wrong role; "
                            "pick a --path whose route names roles, or leave wrong_role out of the mix")
        return self.minter.mint_access_token(sub, [NO_ROLE], ttl_s=self.ttl_s)

    def _dpop_entry(self, kind: str, sub: str) -> Entry:
        """A token bound to a fresh client key (cnf.jkt, RFC 9449 6.1). `dpop`: the pool keeps that key;
        `dpop_wrong_key`: another one, so every proof is good but by the wrong key; `dpop_replay`: no
        key, the driver resends a proof the gateway has accepted (its token is never sent)."""
        key = new_client_key()
        token = self.minter.mint_access_token(sub, [self.role], ttl_s=self.ttl_s,
                                              extra_claims={"cnf": {"jkt": key_thumbprint(key)}})
        kept = key if kind == "dpop" else new_client_key() if kind == "dpop_wrong_key" else None
        htu = target_uri(self.cfg.auth.public_url, self.path) if self.cfg.auth.public_url and kept else None
        return self._entry(token, kind, dpop_key=kept, htu=htu)


def _protected_rule(cfg: GatewayConfig, path: str) -> Rule:
    found = RuleSet.compile(cfg.routes).explain("GET", path)
    if found.rule is None:
        raise PoolError(f"GET {path}: {found.reason}")
    if found.rule.public:
        raise PoolError(f"GET {path} is public: pick a --path whose route needs a token")
    return found.rule


def generate(maker: PoolMaker, count: int, mix: Mapping[str, int], seed: int | None = None) -> list[Entry]:
    """``count`` entries in ``mix``, shuffled so that every kind is spread over the pool."""
    if mix.get("dpop_replay") and not mix.get("dpop"):
        raise PoolError("dpop_replay resends proofs of accepted dpop requests: give dpop a weight too")
    kinds = [kind for kind, n in split_count(count, mix).items() for _ in range(n)]
    random.Random(seed).shuffle(kinds)
    return [maker.make(kind, n) for n, kind in enumerate(kinds)]


def write_pool(entries: list[Entry], out: Path, issuer: str) -> Path:
    """Write the pool (mode 0600: it holds live tokens) and its revoke sidecar; returns the sidecar."""
    side = sidecar_path(out)
    _write_private(out, (e.line() for e in entries))
    revoked = (json.dumps({"jti": e.jti, "iss": issuer, "exp": e.exp}) for e in entries if e.kind == "revoked")
    _write_private(side, revoked)
    return side


def _write_private(path: Path, lines: Iterator[str]) -> None:
    path.touch(mode=0o600)
    path.chmod(0o600)
    with path.open("w") as f:
        for line in lines:
            f.write(line + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line. Raises PoolError naming the bad line."""
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise PoolError(f"{path}:{number}: not a JSON line") from None
    return rows


def read_pool(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not {"token", "kind", "expect", "path"} <= set(row):
            raise PoolError(f"{path}: entry {number} needs token, kind, expect and path")
    if not rows:
        raise PoolError(f"{path} holds no tokens")
    return rows
