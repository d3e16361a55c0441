"""Which load driver a run uses (wrk or the built-in asyncio one), and the one call that loads a
URL with it and returns the report: `loader(args, pool, workdir)(url, tally)`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import report
from .driver import Plan, run_load
from .proofs import NO_PROOFS_IN_WRK, needs_proofs
from .wrkdriver import INSTALL_HINT, find_wrk, run_wrk


class DriverChoice(Exception):
    """--driver wrk cannot do what was asked (a message for people, exit 2)."""


def choose(wanted: str, rate: float | None, requests: int | None) -> str:
    """'wrk' or 'asyncio'; says on stderr why auto did not pick wrk."""
    if wanted == "asyncio":
        return "asyncio"
    why_not = None
    if rate is not None:
        why_not = "wrk cannot hold a fixed rate (--rate)"
    elif requests is not None:
        why_not = "wrk runs for a time, not a request count (--requests)"
    elif find_wrk() is None:
        why_not = INSTALL_HINT
    if why_not is None:
        return "wrk"
    if wanted == "wrk":
        raise DriverChoice(f"--driver wrk: {why_not}")
    print(f"note: {why_not}: using the asyncio driver", file=sys.stderr)
    return "asyncio"


def choose_for_pool(chosen: str, wanted: str, pool: Sequence[dict[str, Any]]) -> str:
    """``chosen`` (by ``choose``), unless the pool needs DPoP proofs, which only the asyncio driver
    signs: then 'asyncio' for auto (saying why on stderr), DriverChoice for --driver wrk."""
    if chosen != "wrk" or not needs_proofs(pool):
        return chosen
    if wanted == "wrk":
        raise DriverChoice(f"--driver wrk: {NO_PROOFS_IN_WRK}")
    print(f"note: {NO_PROOFS_IN_WRK}: using the asyncio driver", file=sys.stderr)
    return "asyncio"


def plan_for(args: Any, url: str) -> Plan:
    duration = args.duration if args.duration is not None or args.requests else 10.0
    progress = not args.no_progress and sys.stderr.isatty()
    return Plan(url, requests=args.requests, duration_s=duration, concurrency=args.concurrency,
                rate=args.rate, progress=progress, max_time_s=args.max_time)


def loader(args: Any, pool: Sequence[dict[str, Any]], workdir: Path) -> Callable[[str, bool], dict[str, Any]]:
    """load(url, tally) -> the report of one timed load of ``url`` (tallied against the pool when asked)."""
    expects = [int(row["expect"]) for row in pool]

    def load(url: str, tally: bool) -> dict[str, Any]:
        plan = plan_for(args, url)
        if args.driver == "wrk":
            return run_wrk(plan, pool, expects if tally else None, workdir)
        return report.build(run_load(plan, pool), expects if tally else None, url)

    return load
