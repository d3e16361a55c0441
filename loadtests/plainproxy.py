"""The baseline: a naive pass-through proxy on the gateway's own stack (aiohttp + uvloop), no auth.

`python -m loadtests.plainproxy --upstream http://127.0.0.1:9001 --port P`. One catch-all route,
one pooled ClientSession; forwards method, path, query, headers (minus hop-by-hop) and body to the
one upstream, reads the answer whole and returns its status, headers and body. Written the way one
would write it in an afternoon: honest, neither tuned nor crippled (no access log, like the gateway).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"})
# aiohttp sets these itself from the URL and the body it sends or returns.
RECOMPUTED = frozenset({"host", "content-length"})
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def _copy(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in HOP_BY_HOP and name.lower() not in RECOMPUTED:
            out.add(name, value)
    return out


async def handle(request: web.Request) -> web.Response:
    session = request.app[SESSION]
    body = await request.read()
    url = request.app[UPSTREAM] + request.rel_url.raw_path_qs
    try:
        async with session.request(request.method, url, headers=_copy(request.headers), data=body or None,
                                   allow_redirects=False) as resp:
            payload = await resp.read()
            return web.Response(status=resp.status, headers=_copy(resp.headers), body=payload)
    except (aiohttp.ClientError, TimeoutError):
        return web.Response(status=502, text="upstream unavailable\n")


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        app[SESSION] = session
        yield


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.plainproxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the one upstream, like http://127.0.0.1:9001")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    import uvloop

    web.run_app(build_app(args.upstream), host=args.host, port=args.port, access_log=None,
                loop=uvloop.new_event_loop(), print=lambda _: print(
                    f"plain proxy on http://{args.host}:{args.port} -> {args.upstream}", flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
