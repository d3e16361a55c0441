"""`python -m loadtests.bench_verify`: µs per token to verify one access token, per algorithm.

Columns, measured in one process, interleaved (every column of every algorithm once per repeat),
best of K repeats, with the garbage collector off while a loop runs (as timeit does):

  crypto    the prepared PyJWT algorithm object's verify(signing input, key, signature bytes)
  bare      the least any verifier must do: split, base64url-decode the three parts, json.loads
            header and payload, and the signature check (the "bare HMAC + base64 + JSON" baseline)
  decode    jwt.decode with the gateway's checks (algorithms, audience, issuer, leeway, require
            exp/sub/jti), given the already loaded key object (no PEM parsing)
  verifier  the gateway's Verifier.verify, cold: each token seen once per repeat, by a Verifier
            built fresh for the repeat (its keys prepared once, before any timing; it parses the
            shared header once, then remembers it, as a running gateway does). All N calls are
            awaited in one coroutine that is driven by coro.send(None), without an event loop:
            verification of our own keys never suspends. Nothing is subtracted.
  cached    a hit in gateway.steps.tokencache (get with the clock read per token) when that module
            exists and has a usable cache class (see ``cached_lookup``), else n/a

Tokens are minted in memory and never printed. Exit 0, or 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib
import inspect
import json
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

from gateway.config.load import IdentityConfig, TokensConfig
from gateway.steps.keys import KeyRing, VerificationKey
from gateway.steps.verify import Verifier

from .arguments import positive

ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "ES384", "EdDSA")
COLUMNS = ("crypto", "bare", "decode", "verifier", "cached")
CACHE_MODULE = "gateway.steps.tokencache"
ISSUER = "https://auth.bench.test"
AUDIENCE = "api"
LEEWAY_S = 30.0
TOKEN_TYP = "at+jwt"
DEFAULT_TOKENS = 1000
DEFAULT_REPEAT = 7
DEFAULT_MAX_SECONDS = 120.0
_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


@dataclass
class Subject:
    """One algorithm's key pair, its prepared verification key and its N tokens (+ pre-split parts)."""

    alg: str
    algorithm: Algorithm
    public: Any                      # what jwt.decode is given: the secret bytes or the public key object
    key: VerificationKey             # prepared once, as the gateway's KeyRing holds it
    tokens: list[str]
    signed: list[tuple[bytes, bytes]] = field(default_factory=list)   # (signing input, signature)


def generate_keys(alg: str) -> tuple[Any, Any]:
    """(signing key, verification key) for ``alg``, made in memory."""
    if alg.startswith("HS"):
        secret = secrets.token_bytes(_HMAC_BYTES[alg])
        return secret, secret
    if alg.startswith(("RS", "PS")):
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg in _CURVES:
        private = ec.generate_private_key(_CURVES[alg]())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown algorithm {alg!r}; choose from {', '.join(ALGORITHMS)}")
    return private, private.public_key()


def mint_tokens(alg: str, private: Any, kid: str, count: int, now: float) -> list[str]:
    """``count`` distinct access tokens shaped like the gateway's own (RFC 9068 typ, kid in the header)."""
    tokens = []
    for i in range(count):
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": f"user-{i:06d}", "iat": int(now), "nbf": int(now),
                  "exp": int(now) + 3600, "jti": uuid.uuid4().hex, "roles": ["user", "orders:read"]}
        tokens.append(jwt.encode(claims, private, algorithm=alg, headers={"kid": kid, "typ": TOKEN_TYP}))
    return tokens


def make_subject(alg: str, count: int) -> Subject:
    private, public = generate_keys(alg)
    algorithm = get_default_algorithms()[alg]
    kid = f"bench-{alg.lower()}"
    key = VerificationKey(kid, alg, algorithm, algorithm.prepare_key(public))
    tokens = mint_tokens(alg, private, kid, count, time.time())
    subject = Subject(alg, algorithm, public, key, tokens)
    for token in tokens:
        signing_input, _, signature = token.rpartition(".")
        subject.signed.append((signing_input.encode("ascii"), _b64decode(signature)))
    return subject


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def tokens_config() -> TokensConfig:
    """The policy every column checks; the Verifier's keys come from the KeyRing, not from here."""
    placeholder = {"kid": "placeholder", "alg": "HS256", "secret": secrets.token_hex(32)}
    return TokensConfig.model_validate({"issuer": ISSUER, "audience": [AUDIENCE], "leeway": f"{int(LEEWAY_S)}s",
                                        "keys": [placeholder]})


# --- the columns: each returns a function that handles every token once ---------------------------

def crypto_pass(subject: Subject) -> Callable[[], None]:
    verify, key, signed = subject.algorithm.verify, subject.key.key, subject.signed

    def run() -> None:
        for signing_input, signature in signed:
            if not verify(signing_input, key, signature):
                raise AssertionError(f"{subject.alg}: a minted signature did not verify")
    return run


def bare_pass(subject: Subject) -> Callable[[], None]:
    verify, key, tokens = subject.algorithm.verify, subject.key.key, subject.tokens
    decode, loads = base64.urlsafe_b64decode, json.loads

    def run() -> None:
        for token in tokens:
            h64, p64, s64 = token.split(".")
            loads(decode(h64 + "=" * (-len(h64) % 4)))
            loads(decode(p64 + "=" * (-len(p64) % 4)))
            signature = decode(s64 + "=" * (-len(s64) % 4))
            if not verify(token[: len(h64) + 1 + len(p64)].encode(), key, signature):
                raise AssertionError(f"{subject.alg}: a minted signature did not verify")
    return run


def decode_pass(subject: Subject) -> Callable[[], None]:
    decode, key, tokens, algorithms = jwt.decode, subject.public, subject.tokens, [subject.alg]
    options = {"require": ["exp", "sub", "jti"]}

    def run() -> None:
        for token in tokens:
            decode(token, key, algorithms=algorithms, audience=AUDIENCE, issuer=ISSUER, leeway=LEEWAY_S,
                   options=options)
    return run


def verifier_pass(subject: Subject, tokens_cfg: TokensConfig, identity_cfg: IdentityConfig) -> Callable[[], None]:
    keyring = KeyRing([subject.key], [])
    tokens = subject.tokens

    def run() -> None:
        verifier = Verifier(tokens_cfg, identity_cfg, keyring=keyring)   # fresh: nothing remembered
        drive(_verify_all(verifier.verify, tokens))
    return run


async def _verify_all(verify: Callable[[str], Awaitable[Any]], tokens: Sequence[str]) -> None:
    for token in tokens:
        await verify(token)


def drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends, without an event loop; refuse one that does."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("verification suspended (it waited for I/O): it cannot be timed without a loop")


def cached_lookup(subject: Subject, tokens_cfg: TokensConfig,
                  identity_cfg: IdentityConfig) -> tuple[Callable[[], None] | None, str]:
    """The "cached" column's hook: a pass of cache hits in ``gateway.steps.tokencache``, or (None, why not).

    Used when the module has a class with ``get(token[, now])`` and ``put(token, identity)`` whose
    constructor needs nothing, or only parameters named in ``CACHE_ARGUMENTS``. The cache is filled
    with each token's Identity (from the Verifier) first; a timed hit reads the clock, as a request
    would, and must find its entry."""
    try:
        module = importlib.import_module(CACHE_MODULE)
    except ImportError:
        return None, f"{CACHE_MODULE} does not exist"
    for cls in _cache_classes(module):
        arguments = _constructor_arguments(cls, len(subject.tokens))
        if arguments is None:
            continue
        cache = cls(**arguments)
        with_clock = _takes(cls.get, 2)
        return _cache_hits(cache, with_clock, subject, tokens_cfg, identity_cfg), f"{CACHE_MODULE}.{cls.__name__}"
    return None, f"{CACHE_MODULE} has no class with get(token[, now]) and put(token, identity)"


def _cache_classes(module: Any) -> list[type]:
    found = []
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if cls.__module__ != module.__name__:
            continue
        get, put = getattr(cls, "get", None), getattr(cls, "put", None)
        if callable(get) and callable(put) and (_takes(get, 1) or _takes(get, 2)) and _takes(put, 2):
            found.append(cls)
    return found


def _constructor_arguments(cls: type, count: int) -> dict[str, Any] | None:
    """Keyword arguments for ``cls``'s required parameters, or None when one is unknown to us."""
    known = {"max_entries": count, "maxsize": count, "capacity": count, "leeway_s": LEEWAY_S, "clock": time.time}
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    arguments = {}
    for p in parameters:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in known or p.kind is p.POSITIONAL_ONLY:
            return None
        arguments[p.name] = known[p.name]
    return arguments


def _takes(method: Callable[..., Any], count: int) -> bool:
    """Can ``method`` (unbound) be called with ``count`` positional arguments after self?"""
    try:
        inspect.signature(method).bind(None, *range(count))
    except (TypeError, ValueError):
        return False
    return True


def _cache_hits(cache: Any, with_clock: bool, subject: Subject, tokens_cfg: TokensConfig,
                identity_cfg: IdentityConfig) -> Callable[[], None]:
    verifier = Verifier(tokens_cfg, identity_cfg, keyring=KeyRing([subject.key], []))
    get, clock, tokens = cache.get, time.time, subject.tokens
    for token in tokens:
        cache.put(token, drive(verifier.verify(token)))

    def run() -> None:
        for token in tokens:
            entry = get(token, clock()) if with_clock else get(token)
            if entry is None:
                raise AssertionError(f"{subject.alg}: a cached token was not found in the cache")
    return run


# --- measuring ------------------------------------------------------------------------------------

def time_pass(run: Callable[[], None], count: int) -> float:
    """µs per token of one pass over ``count`` tokens, with the collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run()
        elapsed = time.perf_counter_ns() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / count / 1000.0


@dataclass
class Row:
    alg: str
    us: dict[str, float | None]
    cache_note: str

    def ratio(self, top: str, bottom: str) -> float | None:
        a, b = self.us.get(top), self.us.get(bottom)
        return a / b if a is not None and b else None

    def as_dict(self) -> dict[str, Any]:
        return {"alg": self.alg, "us_per_token": dict(self.us), "cached_by": self.cache_note,
                "verifier_over_bare": self.ratio("verifier", "bare"),
                "verifier_over_crypto": self.ratio("verifier", "crypto"),
                "decode_over_verifier": self.ratio("decode", "verifier"),
                "cached_over_verifier": self.ratio("cached", "verifier")}


def measure(algs: Sequence[str], count: int, repeat: int, max_seconds: float,
            progress: Callable[[str], None] = lambda _: None) -> tuple[list[Row], int]:
    """Rows of best-of-``repeat`` µs per token, and the number of repeats done (fewer when the
    time budget ran out; always at least one)."""
    tokens_cfg, identity_cfg = tokens_config(), IdentityConfig()
    passes: dict[str, dict[str, Callable[[], None]]] = {}
    rows = []
    for alg in algs:
        subject = make_subject(alg, count)
        cached, note = cached_lookup(subject, tokens_cfg, identity_cfg)
        passes[alg] = {"crypto": crypto_pass(subject), "bare": bare_pass(subject), "decode": decode_pass(subject),
                       "verifier": verifier_pass(subject, tokens_cfg, identity_cfg)}
        if cached is not None:
            passes[alg]["cached"] = cached
        for run in passes[alg].values():
            run()   # warm up, and prove every column accepts every token
        rows.append(Row(alg, dict.fromkeys(COLUMNS), note))
    deadline = time.monotonic() + max_seconds
    done = 0
    while done < repeat and (done == 0 or time.monotonic() < deadline):
        for row in rows:
            for column, run in passes[row.alg].items():
                us = time_pass(run, count)
                best = row.us[column]
                row.us[column] = us if best is None else min(best, us)
        done += 1
        progress(f"repeat {done}/{repeat} done")
    return rows, done


# --- output ---------------------------------------------------------------------------------------

def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(rows: Sequence[Row], count: int, repeats: int) -> str:
    head = ("alg", *COLUMNS, "verifier/bare", "verifier/crypto", "decode/verifier")
    lines = [f"µs per token, best of {repeats} repeat(s) over {count} distinct tokens "
             f"(verifier: cold, driven by coro.send without an event loop)",
             "  ".join(f"{h:>15}" if i else f"{h:<6}" for i, h in enumerate(head))]
    for row in rows:
        cells = [row.alg, *(_cell(row.us[c]) for c in COLUMNS), _cell(row.ratio("verifier", "bare"), 2),
                 _cell(row.ratio("verifier", "crypto"), 2), _cell(row.ratio("decode", "verifier"), 2)]
        lines.append("  ".join(f"{c:>15}" if i else f"{c:<6}" for i, c in enumerate(cells)))
    notes = sorted({row.cache_note for row in rows})
    lines.append("cached: " + "; ".join(notes))
    return "\n".join(lines)


def report(rows: Sequence[Row], count: int, repeats: int) -> dict[str, Any]:
    return {"unit": "us_per_token", "tokens": count, "repeats": repeats, "columns": list(COLUMNS),
            "verifier_driven_by": "coro.send(None), no event loop; a fresh Verifier per repeat",
            "python": sys.version.split()[0], "pyjwt": jwt.__version__,
            "results": [row.as_dict() for row in rows]}


# --- command line ---------------------------------------------------------------------------------

def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError("the time budget must be above 0 seconds")
    return seconds


def _algs(value: str) -> list[str]:
    algs = [a.strip() for a in value.split(",") if a.strip()]
    unknown = [a for a in algs if a not in get_default_algorithms() or a == "none"]
    if not algs or unknown:
        raise argparse.ArgumentTypeError(f"unknown algorithm(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(ALGORITHMS)} (and RS/PS/ES 384, 512)")
    return list(dict.fromkeys(algs))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_verify", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algs", type=_algs, default=list(ALGORITHMS), help="comma-separated (default: %(default)s)")
    p.add_argument("--tokens", type=positive, default=DEFAULT_TOKENS, help="distinct tokens per algorithm")
    p.add_argument("--repeat", type=positive, default=DEFAULT_REPEAT, help="passes per column; the best counts")
    p.add_argument("--max-seconds", type=_seconds, default=DEFAULT_MAX_SECONDS,
                   help="stop repeating after this long (at least one repeat always runs)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        print(f"cannot write {str(args.json)!r}: its directory does not exist", file=sys.stderr)
        return 2
    say = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rows, repeats = measure(args.algs, args.tokens, args.repeat, args.max_seconds, say)
    print(render(rows, args.tokens, repeats))
    if args.json is not None:
        args.json.write_text(json.dumps(report(rows, args.tokens, repeats), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
