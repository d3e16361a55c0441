"""The hot-path benchmark's gateway config: one HS256 key, the revocation mirror on (memory://, or
Redis with --store), the route under load needing a role, and N routes in all (literal and
wildcard paths, as a large fleet's rule file has), so the figures are measured against a real
rule set rather than a single route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

LOAD_PATH = "/api/orders"
SECRET_VAR = "TOKENGATE_SECRET"


def bench_config(routes: int, workers: int = 1, store: str = "memory://", lean: bool = False) -> dict[str, Any]:
    """The config as plain data; the key's secret is read from ${TOKENGATE_SECRET} when it loads.
    ``lean``: no access log and no metrics (the auth work alone against the plain proxy)."""
    if routes < 1:
        raise ValueError("the config needs at least the one route under load")
    rules: list[dict[str, Any]] = [{"path": LOAD_PATH, "upstream": "up", "roles": ["user", "admin"]}]
    for n in range(routes - 1):
        path = f"/svc{n}/items/*/detail" if n % 2 else f"/svc{n}/orders"
        rules.append({"path": path, "upstream": "up", "roles": [f"team{n % 50}"]})
    return {
        "listen": {"host": "127.0.0.1", "port": 8080, "workers": workers},
        "admin": {"host": "127.0.0.1", "port": 9090, "metrics": not lean},
        "log": {"access": not lean},
        "store": {"url": store},
        "tokens": {"issuer": "https://auth.example.test", "audience": ["api"], "access_ttl": "1h",
                   "keys": [{"kid": "main", "alg": "HS256", "secret": "${" + SECRET_VAR + "}"}]},
        "upstreams": {"up": {"url": "http://127.0.0.1:9001", "max_connections": 256}},
        "routes": rules,
    }


def write_bench_config(out: Path, routes: int, workers: int = 1, store: str = "memory://",
                       lean: bool = False) -> None:
    out.write_text("# written by `python -m loadtests config`: the hot-path benchmark's gateway\n"
                   + yaml.safe_dump(bench_config(routes, workers, store, lean), sort_keys=False))
