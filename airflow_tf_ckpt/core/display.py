"""How values are shown to people (sizes, UTC times) and read back from templated strings.

One home for these small rules, shared by the CLI, the operators' task logs and the core's own
messages. Pure functions: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

import time
from typing import Any

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: int | float | None) -> str:
    """``1536`` -> ``"1.5 KiB"`` (binary units; whole bytes below 1 KiB); ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns on its last unit


def iso_utc(t: float | None) -> str:
    """A POSIX time as ``2024-05-01T12:00:00Z``; ``None`` -> ``"?"``; a time no calendar holds
    (a hostile sidecar's ``1e300``) is shown as its ``repr`` instead of raising."""
    if t is None:
        return "?"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)


def utc_table_time(t: float | None) -> str:
    """A POSIX time for a table column: ``2024-05-01 12:00:00`` (UTC); ``None`` -> ``"-"``."""
    if t is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)


_TRUE = frozenset(("1", "true", "yes", "on"))


def truthy(value: Any) -> bool:
    """A templated flag: Jinja renders ``True`` as the string ``"True"``; ``"false"``/``"0"``/``""``
    are false. Non-strings follow Python's ``bool``."""
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines too) folded to one space."""
    return " ".join(str(message).split())
