"""A small misbehaving OpenID Provider: a stand-in for the misbehaviour a real OP (op/op.js) will not produce
on demand — a wrong nonce, issuer or audience in its ID token, a token signed by a key it does not publish or
with ``alg: none``, a token endpoint that refuses, breaks or hangs, a discovery document that lies.

``RogueOp.app`` is an aiohttp app (serve it on loopback, e.g. with ``aiohttp_server``, then set ``port``) with
discovery, a JWKS, an authorization endpoint that redirects straight back to the ``redirect_uri`` with a
code, the ``state`` and ``iss`` (no login form), and a token endpoint that answers an ID token minted with
PyJWT. Out of the box it behaves; each switch (the attributes below) makes one thing go wrong. It records
what it received: ``authorize_requests`` (the query of each), ``token_requests`` (form and headers of each)
and ``discovery_hits``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus, urlencode

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KID = "rogue-1"
HANG_LIMIT_S = 10.0   # a hanging token endpoint answers after this long at the latest (or when the app stops)
HUGE_BYTES = 2 << 20  # more than the 1 MiB the gateway reads of a provider's answer


class Omit(enum.Enum):
    """A claim or metadata field to leave out (``claims={"nonce": OMIT}``)."""

    OMIT = "omit"


OMIT = Omit.OMIT

Signing = Literal["jwks", "foreign_key", "foreign_key_unknown_kid", "foreign_key_in_header", "none",
                  "hs256_public_key"]
TokenAnswer = Literal["ok", "no_id_token", "invalid_grant", "server_error", "not_json", "huge", "hang"]


@dataclass(frozen=True)
class TokenRequest:
    """One request the token endpoint received."""

    form: dict[str, str]
    headers: dict[str, str]

    @property
    def client_auth(self) -> str:
        """How the client authenticated: client_secret_basic, client_secret_post or none."""
        if self.headers.get("Authorization", "").lower().startswith("basic "):
            return "client_secret_basic"
        return "client_secret_post" if "client_secret" in self.form else "none"

    def basic_credentials(self) -> tuple[str, str]:
        """client_id and secret of the Basic header, each form-decoded (RFC 6749 2.3.1)."""
        raw = base64.b64decode(self.headers["Authorization"].split(" ", 1)[1]).decode()
        client_id, _, secret = raw.partition(":")
        return unquote_plus(client_id), unquote_plus(secret)


def s256(verifier: str) -> str:
    """RFC 7636 4.2: the S256 code_challenge of ``verifier``."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass
class RogueOp:
    """The provider, its switches and what it received. ``key`` signs (and is the JWKS), ``foreign_key``
    signs forgeries. Set ``port`` once the app is served."""

    key: rsa.RSAPrivateKey
    foreign_key: rsa.RSAPrivateKey
    port: int = 0

    # -- switches (the defaults behave) --
    discovery_status: int = 200                  # e.g. 503: discovery answers an HTML error page
    discovery_issuer: str | None = None          # the issuer the document names (default: its own)
    metadata: dict[str, Any] = field(default_factory=dict)   # merged into the document; OMIT removes a field
    callback_iss: str | Omit | None = None       # the `iss` parameter of the answer (None: its issuer; OMIT: none)
    callback_error: dict[str, str] | None = None  # answer `error` (and these params) in place of a code
    claims: dict[str, Any] = field(default_factory=dict)     # merged into the ID token's claims; OMIT removes
                                                 # a claim; a callable is called with the minting time
    signing: Signing = "jwks"                    # how the ID token is signed (mint_id_token)
    token_answer: TokenAnswer = "ok"             # the token endpoint: an ID token, or refuses, breaks, hangs

    # -- what it received --
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[TokenRequest] = field(default_factory=list)
    discovery_hits: int = 0

    app: web.Application = field(init=False, repr=False)
    _codes: dict[str, dict[str, str]] = field(default_factory=dict, init=False, repr=False)   # code -> its request
    _release: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)   # ends a hang

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/.well-known/openid-configuration", self._discovery)
        self.app.router.add_get("/jwks", self._jwks)
        self.app.router.add_get("/authorize", self._authorize)
        self.app.router.add_post("/token", self._token)
        self.app.on_shutdown.append(self._release_hanging)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.discovery_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "authorization_response_iss_parameter_supported": True,
        }
        for name, value in self.metadata.items():
            if value is OMIT:
                doc.pop(name, None)
            else:
                doc[name] = value
        return doc

    def mint_id_token(self, code_params: Mapping[str, str]) -> str:
        """The ID token for the login ``code_params`` (the authorization request's query) started."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": code_params.get("client_id", ""), "sub": "rogue-user",
                                  "nonce": code_params.get("nonce", ""), "iat": now, "exp": now + 300,
                                  "email": "rogue@example.test", "email_verified": True}
        for name, value in self.claims.items():
            if value is OMIT:
                claims.pop(name, None)
            else:
                claims[name] = value(now) if callable(value) else value
        if self.signing == "jwks":
            return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})
        if self.signing == "foreign_key":   # a key it does not publish, under the kid of one it does
            return jwt.encode(claims, self.foreign_key, algorithm="RS256", headers={"kid": KID})
        if self.signing == "foreign_key_unknown_kid":
            return jwt.encode(claims, self.foreign_key, algorithm="RS256", headers={"kid": "rogue-unknown"})
        if self.signing == "foreign_key_in_header":   # the token brings its own key (RFC 7515 `jwk`)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.foreign_key.public_key()))
            return jwt.encode(claims, self.foreign_key, algorithm="RS256", headers={"jwk": jwk})
        if self.signing == "none":
            return jwt.encode(claims, None, algorithm="none")
        # Algorithm confusion: HS256 with the published public key (PEM) as the HMAC secret. PyJWT refuses to
        # build such a token, so it is put together by hand.
        public_pem = self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": KID}).encode())
        body = _b64(json.dumps(claims).encode())
        signature = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    # -- endpoints --

    async def _discovery(self, request: web.Request) -> web.Response:
        self.discovery_hits += 1
        if self.discovery_status != 200:
            return web.Response(status=self.discovery_status, text="<h1>unavailable</h1>", content_type="text/html")
        return web.json_response(self.document())

    async def _jwks(self, request: web.Request) -> web.Response:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]})

    async def _authorize(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        self.authorize_requests.append(params)
        answer: dict[str, str] = {}
        if self.callback_error is not None:
            answer.update(self.callback_error)
        else:
            code = secrets.token_urlsafe(16)
            self._codes[code] = params
            answer["code"] = code
        answer["state"] = params.get("state", "")
        if self.callback_iss is not OMIT:
            answer["iss"] = self.callback_iss or self.issuer
        return web.Response(status=302, headers={"Location": f"{params['redirect_uri']}?{urlencode(answer)}"})

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.token_requests.append(TokenRequest(form, dict(request.headers)))
        if self.token_answer == "hang":
            try:
                await asyncio.wait_for(self._release.wait(), HANG_LIMIT_S)
            except asyncio.TimeoutError:
                pass
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        if self.token_answer == "invalid_grant":
            return web.json_response({"error": "invalid_grant", "error_description": "<script>x</script>"},
                                     status=400)
        if self.token_answer == "server_error":
            return web.Response(status=500, text="<h1>internal error</h1>", content_type="text/html")
        if self.token_answer == "not_json":
            return web.Response(status=200, text="<html>not json</html>", content_type="application/json")
        if self.token_answer == "huge":
            padding = "x" * HUGE_BYTES
            return web.json_response({"access_token": "a", "token_type": "Bearer", "padding": padding})
        params = self._codes.pop(form.get("code", ""), None)
        if params is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        answer = {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300}
        if self.token_answer != "no_id_token":
            answer["id_token"] = self.mint_id_token(params)
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    async def _release_hanging(self, app: web.Application) -> None:
        self._release.set()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
