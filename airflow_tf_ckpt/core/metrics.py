"""Per-step metrics sidecar ``PREFIX.metrics.json``, written next to the step by an evaluator.

Layout (one JSON object)::

    {"prefix": "ckpt-500", "step": 500, "metrics": {"val_loss": 0.31, "acc": 0.9},
     "time": 1717171717.5, ...extra keys...}

Non-finite values (a diverged loss) are kept, spelled ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` so the file stays strict JSON; they read back as floats.

The file is written atomically (temp + rename locally, one put on object stores): a reader sees
the old record or the new one. :func:`metrics_for` reads the sidecars of a whole dir from the
discovery listing only (no existence check per step), concurrently on object stores.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from .discovery import CheckpointDir
from .errors import CheckpointError, StorageError
from .naming import METRICS_SUFFIX, parse_prefix
from .storage import FileTooLargeError, Location, NotRegularFileError, loads_json, read_bounded

_NONFINITE_OUT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NONFINITE_IN = {"nan": math.nan, "infinity": math.inf, "inf": math.inf, "+infinity": math.inf,
                 "-infinity": -math.inf, "-inf": -math.inf}
RESERVED_KEYS = ("prefix", "step", "metrics", "time")
MAX_METRICS_BYTES = 4 << 20


class MetricsError(CheckpointError):
    """A metrics sidecar is malformed (bad JSON, non-numeric values, ...)."""


def metrics_name(prefix: str) -> str:
    return f"{prefix}{METRICS_SUFFIX}"


def _to_float(name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise MetricsError(f"metric {name!r} is {value!r}, not a number", where)
    if isinstance(value, numbers.Real) or hasattr(value, "__float__"):
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise MetricsError(f"metric {name!r} is {value!r}, not a number", where) from exc
    raise MetricsError(f"metric {name!r} is {type(value).__name__}, not a number", where)


def _encode(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return _NONFINITE_OUT["nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")]


def _validate(metrics: Mapping[str, Any], where: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise MetricsError(f"metrics must be a mapping of name -> number, not {type(metrics).__name__}",
                           where)
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not k:
            raise MetricsError(f"metric name {k!r} is not a non-empty string", where)
        out[k] = _to_float(k, v, where)
    return out


def write_metrics(loc: Location, prefix: str, metrics: Mapping[str, Any], *, step: int | None = None,
                  extra: Mapping[str, Any] | None = None, now: float | None = None) -> dict[str, Any]:
    """Atomically write ``PREFIX.metrics.json`` and return the record written.

    ``step`` defaults to the prefix's ``-N`` suffix. ``extra`` keys (e.g. ``{"evaluator": "x"}``)
    are stored beside the standard ones and must be JSON-serialisable.
    """
    name = metrics_name(prefix)
    where = loc.display(name)
    values = _validate(metrics, where)
    record: dict[str, Any] = {
        "prefix": prefix,
        "step": step if step is not None else parse_prefix(prefix).step,
        "metrics": {k: _encode(v) for k, v in values.items()},
        "time": time.time() if now is None else float(now),
    }
    for k, v in (extra or {}).items():
        if k in RESERVED_KEYS:
            raise MetricsError(f"extra key {k!r} clashes with a standard field", where)
        record[k] = v
    try:
        data = json.dumps(record, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"extra fields are not JSON-serialisable: {exc}", where) from exc
    loc.write_atomic(name, data)
    return record


def parse_metrics_record(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check a sidecar's bytes; ``record["metrics"]`` becomes ``dict[str, float]``."""
    if len(data) > MAX_METRICS_BYTES:
        raise MetricsError(f"is {len(data)} bytes, too large for a metrics sidecar", where)
    try:
        record = loads_json(data)
    except ValueError as exc:
        raise MetricsError(f"is not valid JSON: {exc}", where) from exc
    if not isinstance(record, dict):
        raise MetricsError(f"holds a JSON {type(record).__name__}, not an object", where)
    raw = record.get("metrics")
    if not isinstance(raw, dict):
        raise MetricsError("has no \"metrics\" object", where)
    values: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, str) and v.strip().lower() in _NONFINITE_IN:
            values[k] = _NONFINITE_IN[v.strip().lower()]
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            values[k] = float(v)
        else:
            raise MetricsError(f"metric {k!r} is {v!r}, not a number", where)
    record["metrics"] = values
    return record


def read_metrics_record(loc: Location, prefix: str) -> dict[str, Any] | None:
    """The whole sidecar record (step, time, extra keys), or ``None`` when there is none."""
    name = metrics_name(prefix)
    try:
        data = loc.read_bytes(name, cap=MAX_METRICS_BYTES, what="a metrics sidecar")
    except (NotRegularFileError, FileTooLargeError) as exc:
        raise MetricsError(exc.message, loc.display(name)) from exc
    except StorageError:
        if not loc.exists(name):
            return None
        raise
    return parse_metrics_record(data, loc.display(name))


def read_metrics(loc: Location, prefix: str) -> dict[str, float] | None:
    """The metrics of one step, or ``None`` when it has no sidecar. Malformed -> MetricsError."""
    record = read_metrics_record(loc, prefix)
    return None if record is None else record["metrics"]


def read_files(loc: Location, names: Iterable[str], max_workers: int = 16, *, cap: int = MAX_METRICS_BYTES,
               what: str = "a sidecar", sizes: Mapping[str, int] | None = None) -> dict[str, bytes | Exception]:
    """Read several small files of one dir: concurrently on object stores, in order locally.

    Async filesystems (gcsfs) get one ``cat_ranges`` call, which gathers the reads on fsspec's
    event loop and, unlike ``cat(list)``, never glob-expands the names. Each read is bounded
    (:func:`~.storage.read_bounded`): at most ``cap`` + 1 bytes, locally regular files only; a file
    past the cap, or not a regular file, is its error in the result. ``sizes`` (from a listing)
    spare object stores the reads of empty or oversized objects.
    """
    names = list(names)
    if not names:
        return {}
    out: dict[str, bytes | Exception] = {}
    fs = loc.fs
    if isinstance(fs, AsyncFileSystem):
        known = sizes or {}
        for n in names:
            if known.get(n) == 0:
                out[n] = b""  # a ranged read of an empty object is refused (416): nothing to read
            elif (known.get(n) or 0) > cap:
                out[n] = FileTooLargeError(f"is {known[n]} bytes, too large for {what}", loc.display(n))
        todo = [n for n in names if n not in out]
        results = fs.cat_ranges([loc.join(n) for n in todo], [0] * len(todo), [cap + 1] * len(todo),
                                on_error="return", batch_size=max_workers) if todo else []
        for n, r in zip(todo, results, strict=True):
            if isinstance(r, Exception) and "416" in str(r):  # a range past the end of an empty object
                r = b""
            if not isinstance(r, Exception) and len(r) > cap:
                r = FileTooLargeError(f"is more than {cap} bytes, too large for {what}", loc.display(n))
            out[n] = r if isinstance(r, (bytes, Exception)) else bytes(r)
        return out

    def one(n: str) -> bytes | Exception:
        try:
            return read_bounded(fs, loc.join(n), loc.display(n), cap, what)
        except (OSError, StorageError) as exc:  # FileNotFoundError included: the caller decides
            return exc

    if loc.local or isinstance(fs, MemoryFileSystem) or len(names) == 1:
        return {n: one(n) for n in names}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def metrics_for(cdir: CheckpointDir, *, problems: list[str] | None = None,
                max_workers: int = 16) -> dict[str, dict[str, float]]:
    """``{prefix: metrics}`` for every step of ``cdir`` whose sidecar the listing shows.

    Steps with no sidecar are absent. A malformed sidecar raises :class:`MetricsError` unless a
    ``problems`` list is given, in which case the error text is appended and the step is skipped
    (retention then treats it as unevaluated).
    """
    wanted: dict[str, str] = {}
    for s in cdir.steps:
        name = metrics_name(s.prefix)
        if any(f.name == name for f in s.sidecars):
            wanted[name] = s.prefix
    sizes = {f.name: f.size for s in cdir.steps for f in s.sidecars if f.name in wanted} \
        if not cdir.location.local else None
    raw = read_files(cdir.location, wanted, max_workers=max_workers, sizes=sizes)
    out: dict[str, dict[str, float]] = {}
    for name, data in raw.items():
        where = cdir.location.display(name)
        try:
            if isinstance(data, FileNotFoundError):
                continue  # deleted since the listing: as if there were none
            if isinstance(data, Exception):
                raise MetricsError(f"cannot be read: {getattr(data, 'message', data)}", where)
            out[wanted[name]] = parse_metrics_record(data, where)["metrics"]
        except MetricsError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return out
