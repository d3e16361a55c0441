"""After step 3/4: a certificate-bound token (RFC 8705 section 3) is good only with its certificate.

In: the verified token's claims and the DER bytes of the client certificate the request came with
(None: none). Out: nothing, or InvalidToken. A token without ``cnf.x5t#S256`` passes untouched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidToken

CNF = "cnf"              # RFC 7800 confirmation claim
X5T_S256 = "x5t#S256"    # RFC 8705 3.1: base64url(SHA-256(DER certificate)), no padding
# DESIGN: a 401 invalid_token like any other unusable token; only the description says why.
NOT_PRESENTED = "the access token is bound to a client certificate that this connection did not present"


def certificate_thumbprint(der: bytes) -> str:
    """The ``x5t#S256`` of a certificate given as DER bytes."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode("ascii")


def check_certificate_binding(claims: Mapping[str, Any], presented: bytes | None) -> None:
    """Refuse a token bound to a certificate (``cnf.x5t#S256``) unless ``presented`` (DER) is that
    certificate. Raises InvalidToken (401) for a missing or another certificate, and for a ``cnf``
    that is not a JSON object or an ``x5t#S256`` that is not a string."""
    cnf = claims.get(CNF)
    if cnf is None:
        return
    if not isinstance(cnf, Mapping):
        raise InvalidToken("the access token's cnf claim is not a JSON object")
    bound = cnf.get(X5T_S256)
    if bound is None:
        return   # bound some other way (cnf.jkt: DPoP), or not at all: not this step's business
    if not isinstance(bound, str):
        raise InvalidToken("the access token's cnf.x5t#S256 is not a string")
    if presented is None or not hmac.compare_digest(bound.encode(), certificate_thumbprint(presented).encode()):
        raise InvalidToken(NOT_PRESENTED)
