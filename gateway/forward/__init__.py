"""Step 6, forwarding: what the upstream receives and what comes back to the client.

forwarder (picks the path per request), headers (the one decision of the upstream request head),
request_id, request_body (the client's body: Expect, framing), seam (the request both clients take,
the answer both give back), lean (most requests: h1client on the keep-alive connections of pool),
general (aiohttp's client: HEAD, chunked bodies, WebSocket upgrades with websocket), answer_head
(the checks every upstream answer head passes), relay (times the exchange, sends the answer back to
the client), lifetime (a connection's token expiry and revocation), client_cert (the client certificate
a request came with: its TLS connection's, or a trusted proxy's header), dpop_request (the URL a request
was sent to, its DPoP proof checked for the token endpoints and for proxied requests).

May import: config, store, steps, errors and the top-level modules below them (logs, metrics, paths);
never server, auth, admin, cli or dev.
"""
