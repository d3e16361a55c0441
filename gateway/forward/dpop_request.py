"""DPoP (RFC 9449) at the request: the URL the client used (``htu``), the ``DPoP`` header it sent, and
the checks of the token endpoints (login, refresh: which key to bind to), of proxied requests (a
bound token needs a fresh proof by its key) and of forward-auth (the proof names the request a trusted
proxy asks about), with server nonces when ``tokens.dpop.nonce`` is on. Out:
a key thumbprint, nothing, or InvalidDpopProof / UseDpopNonce (with a fresh DPoP-Nonce header) /
InvalidToken. The proof and the token are never logged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from ..config.load import GatewayConfig
from ..errors import InvalidDpopProof, InvalidToken, UseDpopNonce
from ..steps.binding import CNF
from ..steps.dpop import DpopProof, check_binding, check_proof
from ..steps.dpop_nonce import NonceMaker
from ..steps.extract import DPOP
from ..steps.proofreplay import ProofReplay
from ..store.base import Store
from .headers import is_trusted

DPOP_HEADER = "DPoP"   # RFC 9449 4.1: the proof's request header
NONCE_HEADER = "DPoP-Nonce"   # RFC 9449 8.1 and 9: a server nonce the next proof must carry
JKT = "jkt"            # RFC 9449 6.1: cnf member, the thumbprint of the key a token is bound to
_BAD_HOST = frozenset("/\\@?# ")
# Set on a request whose route accepts DPoP: the algorithms its 401 answers' DPoP challenge names.
DPOP_ALGS = web.RequestKey("dpop_algs", str)
# The current nonce, for the success answer of a request whose proof carried the previous slot's: good
# for at most one more slot, so the client gets the next one before it needs it (RFC 9449 8.2, 9).
RENEWED_NONCE = web.RequestKey("dpop_renewed_nonce", str)


def request_base(request: web.BaseRequest, public_url: str | None, trusted: Any) -> str | None:
    """``scheme://host`` the client used: ``public_url`` when set, else the request's scheme and Host
    (X-Forwarded-Proto/-Host believed only from ``trusted`` proxies); None when it cannot be told."""
    if public_url:
        return public_url.rstrip("/")
    scheme, host = request.scheme, request.headers.get("Host", "")
    if is_trusted(request.remote, trusted):
        scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip() or scheme
        host = request.headers.get("X-Forwarded-Host", host).split(",")[0].strip() or host
    if scheme not in ("http", "https") or not host or any(c in _BAD_HOST for c in host):
        return None
    return f"{scheme}://{host}"


def bound_key(claims: Mapping[str, Any]) -> str | None:
    """The ``cnf.jkt`` a token is bound to, None for an unbound token; InvalidToken for a bad one."""
    cnf = claims.get(CNF)
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise InvalidToken("the access token's cnf claim is not a JSON object")
    jkt = cnf.get(JKT)
    if jkt is not None and not isinstance(jkt, str):
        raise InvalidToken("the access token's cnf.jkt is not a string")
    return jkt


class DpopGuard:
    """The DPoP checks of one config: proofs checked (steps/dpop.py) and spent once fleet-wide (ProofReplay)."""

    def __init__(self, cfg: GatewayConfig, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        dpop = cfg.tokens.dpop
        self._max_age_s, self._algorithms, self.required = dpop.max_age, frozenset(dpop.algorithms), dpop.required
        self.algs = " ".join(dpop.algorithms)   # the challenge's algs="..." (RFC 9449 7.1)
        self._public_url, self._trusted = cfg.auth.public_url, cfg.listen.trusted_proxies
        self._replay = ProofReplay(store, dpop.max_age)
        self._clock = clock
        # tokens.dpop.nonce: proofs must carry a nonce of ours (RFC 9449 8, 9); None: no nonces.
        self.nonces = NonceMaker.from_config(cfg.tokens, clock=clock) if dpop.nonce else None

    async def key_to_bind(self, request: web.BaseRequest) -> str | None:
        """At login or refresh: the thumbprint of the key of the request's valid proof, None when no
        proof came. Raises InvalidDpopProof (400) for a bad or replayed proof, DependencyDown (503)."""
        text = _proof_text(request)
        if text is None:
            return None
        proof = self._check(request, text, None, request.method, request.raw_path)
        await self._replay.check_unused(proof)
        return proof.jkt

    async def check_resource(self, request: web.BaseRequest, scheme: str, token: str,
                             claims: Mapping[str, Any], required: bool) -> None:
        """A proxied request: a bound token only as ``DPoP`` with a fresh proof by its key for this
        request; an unbound one only as Bearer, and not where DPoP is ``required``. Raises InvalidToken
        or InvalidDpopProof (401; UseDpopNonce with a fresh DPoP-Nonce header), DependencyDown (503)."""
        await self._check_presented(request, scheme, token, claims, required, (request.method, request.raw_path))

    async def check_forwarded(self, request: web.BaseRequest, scheme: str, token: str, claims: Mapping[str, Any],
                              required: bool, method: str, uri: str) -> None:
        """Forward-auth ({prefix}/verify): as ``check_resource``, but the proof must name the request the
        proxy asks about, ``method`` on ``uri`` (its X-Forwarded-/X-Original- Method and URI), at the URL
        base the client used (``auth.public_url``, else X-Forwarded-Proto/-Host). Only a peer in
        ``listen.trusted_proxies`` is believed about that request: from any other, a bound token is
        refused (InvalidDpopProof, 401), since its proof could not be held to the request it is for."""
        target = (method, uri) if is_trusted(request.remote, self._trusted) else None
        await self._check_presented(request, scheme, token, claims, required, target)

    async def _check_presented(self, request: web.BaseRequest, scheme: str, token: str, claims: Mapping[str, Any],
                               required: bool, target: tuple[str, str] | None) -> None:
        """``target``: (method, raw URI) the proof must name; None when no one believed says which."""
        jkt = bound_key(claims)
        if jkt is None:
            if scheme == DPOP:
                raise InvalidToken("the access token is not DPoP-bound; present it as a Bearer token")
            if required or self.required:
                raise InvalidToken("only DPoP-bound access tokens are accepted here")
            return
        if scheme != DPOP:   # RFC 9449 7.2: a bound token presented as Bearer is refused
            raise InvalidToken("the access token is DPoP-bound; present it with Authorization: DPoP and a proof")
        try:
            text = _proof_text(request)
            if text is None:
                raise InvalidDpopProof("no DPoP proof came with the DPoP-bound access token")
            if target is None:
                raise InvalidDpopProof("forward-auth checks a DPoP proof only for a proxy in listen.trusted_proxies")
            proof = self._check(request, text, token, *target)
            check_binding(jkt, proof)
            await self._replay.check_unused(proof)
        except InvalidDpopProof as exc:
            raise exc.for_resource() from exc

    def _check(self, request: web.BaseRequest, text: str, token: str | None, method: str, uri: str) -> DpopProof:
        """The proof ``text`` checked against ``method`` on ``uri`` (raw, as sent: its path is the htu's)
        at the URL base this request names (``request_base``)."""
        base = request_base(request, self._public_url, self._trusted)
        if base is None:
            raise InvalidDpopProof("the gateway cannot tell the URL this request was sent to")
        url = base + uri.partition("?")[0].partition("#")[0]   # RFC 9449 4.3 step 9: no query, no fragment
        nonces = self.nonces
        if nonces is None:
            return check_proof(text, method=method, url=url, now=self._clock(), max_age_s=self._max_age_s,
                               algorithms=self._algorithms, access_token=token)
        carried: list[str] = []

        def nonce_ok(nonce: str) -> bool:
            carried.append(nonce)
            return nonces.accepts(nonce)

        try:
            proof = check_proof(text, method=method, url=url, now=self._clock(), max_age_s=self._max_age_s,
                                algorithms=self._algorithms, access_token=token, nonce_ok=nonce_ok)
        except UseDpopNonce as exc:   # RFC 9449 8 and 9: the refusal hands out the nonce to use
            raise UseDpopNonce(exc.description, headers={NONCE_HEADER: nonces.fresh()}) from exc
        fresh = nonces.fresh()
        if carried != [fresh]:   # the previous slot's nonce: the answer hands out the current one
            request[RENEWED_NONCE] = fresh
        return proof


def _proof_text(request: web.BaseRequest) -> str | None:
    values = request.headers.getall(DPOP_HEADER, [])
    if not values:
        return None
    if len(values) > 1:   # RFC 9449 4.3 step 1: exactly one DPoP header
        raise InvalidDpopProof("more than one DPoP header")
    return values[0].strip()
