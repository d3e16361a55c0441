"""Steps 2-5 of a request, between matching its route and forwarding it.

extract (the bearer token; header syntax), cookies (the gateway's cookies: browser-mode access token
and CSRF), tokencache (verified tokens remembered until they expire or are revoked), verify (the JWT
against the key ring), keys (the key ring: own keys and trusted issuers' JWKS), tokens (minting with
the key ring), denylist and revoked_ids (the revocation mirror), revocable (connections to cut on
revocation), binding (certificate-bound tokens, RFC 8705), dpop and proofreplay (DPoP proofs, RFC 9449:
checked, and spent once across the fleet), discovery (OpenID Provider metadata), authorize (the route's roles), identity
and passport (who the caller is, as the upstream is told).

May import: store, config, errors and the top-level modules below them (logs, metrics, paths);
never forward, server, auth, admin, cli or dev. No aiohttp.web: errors are raised, answers.py
makes the HTTP answers.
"""
