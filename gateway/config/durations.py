"""Parse the duration strings (``30s``, ``15m``, ``7d``), sizes (``64KiB``) and rates (``5/min``) of the config."""

from __future__ import annotations

import re
from typing import Any

_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*", re.ASCII)
_PER = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600,
        "d": 86400, "day": 86400}
MAX_DURATION_S = 3650 * 86400.0   # ten years; longer is a typo, and would overflow expiry arithmetic
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*", re.ASCII)
MAX_SIZE_BYTES = 1024**3   # a gibibyte: more is a typo for anything the gateway holds in memory
_RATE = re.compile(r"\s*(\d+)\s*/\s*([a-z]+)\s*", re.ASCII)


def parse_duration_s(value: Any) -> float:
    """``"15m"`` -> 900.0. Raises ValueError with a message meant for the config file's author."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is a string with a unit, like 30s, 15m or 7d (got {value!r})")
    m = _DURATION.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; write a number and a unit (ms, s, m, h, d, w), like 15m")
    seconds = float(m.group(1)) * _UNITS_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise ValueError(f"{value!r} is longer than ten years (3650d), the longest duration allowed")
    return seconds


def parse_size_bytes(value: Any) -> int:
    """``"64KiB"`` -> 65536 (also ``B``, ``kB``, ``MB``, ``MiB``, ``GiB`` ...; a bare integer is bytes).
    Raises ValueError with a message meant for the config file's author."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    m = _SIZE.fullmatch(value) if isinstance(value, str) else None
    unit = _SIZE_UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None or len(m.group(1)) > 12:
        raise ValueError(f"{value!r} is not a size; write a number and a unit (B, KiB, MiB, kB, MB), like 64KiB")
    size = int(m.group(1)) * unit
    if size > MAX_SIZE_BYTES:
        raise ValueError(f"{value!r} is larger than 1GiB, the largest size allowed")
    return size


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        if seconds >= _UNITS_S[unit] and seconds % _UNITS_S[unit] == 0:
            return f"{int(seconds // _UNITS_S[unit])}{unit}"
    return f"{seconds:g}s"


def parse_rate(value: Any) -> tuple[int, int]:
    """``"5/min"`` -> (5, 60): at most 5 events a 60-second window."""
    m = _RATE.fullmatch(value) if isinstance(value, str) else None
    count = int(m.group(1)) if m and len(m.group(1)) <= 7 else 0
    if not m or m.group(2) not in _PER or not 1 <= count <= 1_000_000:
        raise ValueError(f"{value!r} is not a rate; write a count and a period, like 5/min, 30/min or 3/h")
    return int(m.group(1)), _PER[m.group(2)]
