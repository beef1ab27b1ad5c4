"""Per-step metrics sidecars, written next to the step by an evaluator.

``PREFIX.metrics.json`` is the default evaluator's (no name: today's single-evaluator file);
``PREFIX.metrics~EVALUATOR.json`` is the named evaluator's (e.g. the evaluating DAG's dag_id), so
two evaluators of one step never write the same file. Layout (one JSON object)::

    {"prefix": "ckpt-500", "step": 500, "metrics": {"val_loss": 0.31, "acc": 0.9},
     "time": 1717171717.5, "evaluator": "dag_a", "evaluations": 2,
     "history": [{"time": ..., "metrics": {...}}, ...], ...extra keys...}

``evaluations`` counts the evaluations of the step by that evaluator, ``history`` holds the last
:data:`HISTORY_LEN` of them (oldest first; extra keys such as ``run`` included). Sidecars written
before these fields existed read as one evaluation.

Non-finite values (a diverged loss) are kept, spelled ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` so the file stays strict JSON; they read back as floats.

A write is a read-modify-write of that one file (for the count), serialized against other
writers: under an ``flock`` of the dir locally, as a compare-and-swap on GCS
(``ifGenerationMatch``), within this process on other stores. The file itself is replaced
atomically (temp + rename locally, one put on object stores): a reader sees the old record or the
new one. :func:`metrics_for` and :func:`evaluation_records` read the sidecars of a whole dir from
the discovery listing only (no existence check per step), concurrently on object stores.
"""

from __future__ import annotations

import json
import math
import numbers
import random
import re
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.asyn import AsyncFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_tf_ckpt.core.errors import CheckpointError, StorageError
from airflow_tf_ckpt.core.formats.naming import EVALUATOR_RE, METRICS_SUFFIX, classify, parse_prefix
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir
from airflow_tf_ckpt.core.storage.location import (
    FileTooLargeError,
    Location,
    NotRegularFileError,
    loads_json,
    range_not_satisfiable,
    read_bounded,
)

_NONFINITE_OUT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NONFINITE_IN = {
    "nan": math.nan,
    "infinity": math.inf,
    "inf": math.inf,
    "+infinity": math.inf,
    "-infinity": -math.inf,
    "-inf": -math.inf,
}
RESERVED_KEYS = ("prefix", "step", "metrics", "time", "evaluations", "history")
MAX_METRICS_BYTES = 4 << 20
HISTORY_LEN = 20  # evaluations kept in a record's history
_WRITE_LOCK = threading.Lock()  # stores with neither flock nor compare-and-swap
#: a metric name: 1-256 of ASCII letters, digits and ``_ . - /`` (what TF summary tags and Keras
#: metric names use; no spaces, newlines or control characters, so output stays one line a value)
METRIC_NAME_RE = re.compile(r"[A-Za-z0-9_.\-/]{1,256}")


class MetricsError(CheckpointError):
    """A metrics sidecar is malformed (bad JSON, non-numeric values, ...)."""


def check_evaluator(evaluator: str | None) -> str | None:
    """``evaluator`` when it is a valid name (or ``None``: the default); else MetricsError."""
    if evaluator is None:
        return None
    if not isinstance(evaluator, str) or not EVALUATOR_RE.match(evaluator):
        raise MetricsError(
            f"invalid evaluator name {evaluator!r} (letters, digits, '_', '.', '-'; "
            "at most 250; not starting with '.' or '-')"
        )
    return evaluator


def metrics_name(prefix: str, evaluator: str | None = None) -> str:
    """``PREFIX.metrics.json`` (default evaluator) or ``PREFIX.metrics~EVALUATOR.json``."""
    if evaluator is None:
        return f"{prefix}{METRICS_SUFFIX}"
    return f"{prefix}.metrics~{check_evaluator(evaluator)}.json"


def metric_name_problem(name: Any) -> str | None:
    """Why ``name`` is not a valid metric name (see :data:`METRIC_NAME_RE`), or ``None``."""
    if isinstance(name, str) and METRIC_NAME_RE.fullmatch(name):
        return None
    shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
    return (
        f"metric name {shown} is not valid: use 1-256 letters, digits and '_', '.', '-', '/' "
        "(like TF summary tags and Keras metric names)"
    )


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
        raise MetricsError(
            f"metrics must be a mapping of name -> number, not {type(metrics).__name__}", where
        )
    out: dict[str, float] = {}
    for k, v in metrics.items():
        problem = metric_name_problem(k)
        if problem:
            raise MetricsError(problem, where)
        out[k] = _to_float(k, v, where)
    return out


def write_metrics(
    loc: Location,
    prefix: str,
    metrics: Mapping[str, Any],
    *,
    step: int | None = None,
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
    evaluator: str | None = None,
    count: bool = True,
) -> dict[str, Any]:
    """Write the sidecar of ``evaluator`` (``None``: the default one) and return the record written.

    ``step`` defaults to the prefix's ``-N`` suffix. ``extra`` keys (e.g. ``{"run": "..."}``)
    are stored beside the standard ones and must be JSON-serialisable. ``count`` (an evaluation)
    adds one to ``evaluations`` and to the history; ``count=False`` (a manual edit) keeps both.
    """
    name = metrics_name(prefix, evaluator)
    where = loc.display(name)
    t = time.time() if now is None else float(now)
    record = _new_record(prefix, _validate(metrics, where), step, extra, t, evaluator, where)
    encoded = record["metrics"]

    def updated(old: bytes | None) -> bytes:
        prev = _previous(old, where)
        n, history = int(prev.get("evaluations", 1 if prev else 0)), list(prev.get("history") or [])
        if count or not prev:
            n += 1
            history = (history + [{"time": t, "metrics": encoded, **dict(extra or {})}])[-HISTORY_LEN:]
        record.update(evaluations=n, history=history)
        return json.dumps(record, sort_keys=True, allow_nan=False).encode("utf-8")

    _update_file(loc, name, updated, where)
    return record


def _new_record(
    prefix: str,
    values: Mapping[str, float],
    step: int | None,
    extra: Mapping[str, Any] | None,
    t: float,
    evaluator: str | None,
    where: str,
) -> dict[str, Any]:
    """The sidecar record (without ``evaluations``/``history``), checked to be strict JSON."""
    record: dict[str, Any] = {
        "prefix": prefix,
        "step": step if step is not None else parse_prefix(prefix).step,
        "metrics": {k: _encode(v) for k, v in values.items()},
        "time": t,
        "evaluator": evaluator,
    }
    for k, v in (extra or {}).items():
        # "evaluator" in extra: free text in the default sidecar (as before names existed)
        if k in RESERVED_KEYS or (k == "evaluator" and evaluator is not None and v != evaluator):
            raise MetricsError(f"extra key {k!r} clashes with a standard field", where)
        record[k] = v
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"extra fields are not JSON-serialisable: {exc}", where) from exc
    return record


def _previous(old: bytes | None, where: str) -> dict[str, Any]:
    """The record being replaced, for its count and history; an unreadable one counts as one."""
    if old is None:
        return {}
    if len(old) > MAX_METRICS_BYTES:
        return {"evaluations": 1}
    try:
        prev = loads_json(old)
    except ValueError:  # bad UTF-8 or JSON, nested too deeply
        return {"evaluations": 1}
    if not isinstance(prev, dict):
        return {"evaluations": 1}
    n = prev.get("evaluations", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        prev["evaluations"] = 1
    if not isinstance(prev.get("history"), list):
        prev["history"] = []
    return prev


def _update_file(loc: Location, name: str, updated: Any, where: str) -> None:
    """Replace ``name`` with ``updated(old bytes or None)``, serialized against other writers."""
    from airflow_tf_ckpt.core.storage.gcs import is_gcs, read_with_generation, write_if_generation

    if is_gcs(loc.fs):
        path = loc.join(name)
        for attempt in range(20):
            data, generation = read_with_generation(loc.fs, path, MAX_METRICS_BYTES, "a metrics sidecar")
            if write_if_generation(loc.fs, path, updated(data), generation):
                return
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise MetricsError("kept changing under 20 attempts to write it; not written", where)

    def old() -> bytes | None:
        try:
            return loc.read_bytes(name, cap=MAX_METRICS_BYTES, what="a metrics sidecar")
        except StorageError:
            if not loc.exists(name):
                return None
            raise

    if loc.local:
        from airflow_tf_ckpt.core.sidecars.promotions import dir_lock  # PROMOTIONS.json's writers take it

        with dir_lock(loc.path):
            loc.write_atomic(name, updated(old()))
        return
    with _WRITE_LOCK:
        loc.write_atomic(name, updated(old()))


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
        raise MetricsError('has no "metrics" object', where)
    record["metrics"] = {k: _decode(k, v, where) for k, v in raw.items()}
    n = record.get("evaluations")
    record["evaluations"] = n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1
    if not isinstance(record.get("history"), list):
        record["history"] = []
    return record


def _decode(k: str, v: Any, where: str) -> float:
    """One stored metric value: a JSON number, or a non-finite one spelled as a string."""
    if isinstance(v, str) and v.strip().lower() in _NONFINITE_IN:
        return _NONFINITE_IN[v.strip().lower()]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise MetricsError(f"metric {k!r} is {v!r}, not a number", where)


def read_metrics_record(loc: Location, prefix: str, evaluator: str | None = None) -> dict[str, Any] | None:
    """The whole sidecar record of ``evaluator`` (step, time, evaluations, history, extra keys),
    or ``None`` when there is none."""
    name = metrics_name(prefix, evaluator)
    try:
        data = loc.read_bytes(name, cap=MAX_METRICS_BYTES, what="a metrics sidecar")
    except (NotRegularFileError, FileTooLargeError) as exc:
        raise MetricsError(exc.message, loc.display(name)) from exc
    except StorageError:
        if not loc.exists(name):
            return None
        raise
    return parse_metrics_record(data, loc.display(name))


def read_metrics(loc: Location, prefix: str, evaluator: str | None = None) -> dict[str, float] | None:
    """The metrics of one step by ``evaluator``, or ``None`` when it has no sidecar of it.
    Malformed -> MetricsError."""
    record = read_metrics_record(loc, prefix, evaluator)
    return None if record is None else record["metrics"]


def read_files(
    loc: Location,
    names: Iterable[str],
    max_workers: int = 16,
    *,
    cap: int = MAX_METRICS_BYTES,
    what: str = "a sidecar",
    sizes: Mapping[str, int] | None = None,
) -> dict[str, bytes | Exception]:
    """Read several small files of one dir: concurrently on object stores, in order locally.

    Async filesystems (gcsfs) get one ``cat_ranges`` call, which gathers the reads on fsspec's
    event loop and, unlike ``cat(list)``, never glob-expands the names. Each read is bounded
    (:func:`~airflow_tf_ckpt.core.storage.location.read_bounded`): at most ``cap`` + 1 bytes, locally regular files only; a file
    past the cap, or not a regular file, is its error in the result. ``sizes`` (from a listing)
    spare object stores the reads of empty or oversized objects.
    """
    names = list(names)
    if not names:
        return {}
    if isinstance(loc.fs, AsyncFileSystem):
        return _read_async(loc, names, max_workers, cap, what, sizes or {})
    return _read_sync(loc, names, max_workers, cap, what)


def _read_async(
    loc: Location, names: list[str], max_workers: int, cap: int, what: str, sizes: Mapping[str, int]
) -> dict[str, bytes | Exception]:
    """:func:`read_files` on an async filesystem: one ``cat_ranges`` of the first ``cap`` + 1
    bytes of each file that the listing's ``sizes`` do not already settle."""
    out: dict[str, bytes | Exception] = {}
    for n in names:
        if sizes.get(n) == 0:
            out[n] = b""  # a ranged read of an empty object is refused (416): nothing to read
        elif (sizes.get(n) or 0) > cap:
            out[n] = FileTooLargeError(f"is {sizes[n]} bytes, too large for {what}", loc.display(n))
    todo = [n for n in names if n not in out]
    if not todo:
        return out
    results = loc.fs.cat_ranges(
        [loc.join(n) for n in todo],
        [0] * len(todo),
        [cap + 1] * len(todo),
        on_error="return",
        batch_size=max_workers,
    )
    for n, r in zip(todo, results, strict=True):
        if isinstance(r, Exception) and range_not_satisfiable(r, loc.join(n)):  # an empty object
            r = b""
        if not isinstance(r, Exception) and len(r) > cap:
            r = FileTooLargeError(f"is more than {cap} bytes, too large for {what}", loc.display(n))
        out[n] = r if isinstance(r, (bytes, Exception)) else bytes(r)
    return out


def _read_sync(
    loc: Location, names: list[str], max_workers: int, cap: int, what: str
) -> dict[str, bytes | Exception]:
    """:func:`read_files` on a sync filesystem: in order locally, else in threads."""
    fs = loc.fs

    def one(n: str) -> bytes | Exception:
        try:
            return read_bounded(fs, loc.join(n), loc.display(n), cap, what)
        except (OSError, StorageError) as exc:  # FileNotFoundError included: the caller decides
            return exc

    if loc.local or isinstance(fs, MemoryFileSystem) or len(names) == 1:
        return {n: one(n) for n in names}
    with ThreadPoolExecutor(max_workers=min(max_workers, len(names))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def metrics_for(
    cdir: CheckpointDir,
    *,
    problems: list[str] | None = None,
    max_workers: int = 16,
    evaluator: str | None = None,
) -> dict[str, dict[str, float]]:
    """``{prefix: metrics}`` by ``evaluator`` (``None``: the default sidecar) for every step of
    ``cdir`` whose sidecar of that evaluator the listing shows.

    Steps with no sidecar are absent. A malformed sidecar raises :class:`MetricsError` unless a
    ``problems`` list is given, in which case the error text is appended and the step is skipped
    (retention then treats it as unevaluated).
    """
    records = evaluation_records(cdir, evaluators=[evaluator], problems=problems, max_workers=max_workers)
    return {p: by_ev[evaluator]["metrics"] for p, by_ev in records.items() if evaluator in by_ev}


def evaluation_records(
    cdir: CheckpointDir,
    *,
    evaluators: Iterable[str | None] | None = None,
    problems: list[str] | None = None,
    max_workers: int = 16,
) -> dict[str, dict[str | None, dict[str, Any]]]:
    """``{prefix: {evaluator: record}}`` of every metrics sidecar the listing shows (of only the
    named ``evaluators`` when given; ``None`` is the default sidecar). Each record has
    ``metrics`` (floats), ``evaluations`` (>= 1) and ``history``. Malformed: as :func:`metrics_for`.
    """
    wanted = _wanted_sidecars(cdir, None if evaluators is None else set(evaluators))
    sizes = (
        {f.name: f.size for s in cdir.steps for f in s.sidecars if f.name in wanted}
        if not cdir.location.local
        else None
    )
    raw = read_files(cdir.location, wanted, max_workers=max_workers, sizes=sizes)
    out: dict[str, dict[str | None, dict[str, Any]]] = {}
    for name, data in raw.items():
        if isinstance(data, FileNotFoundError):
            continue  # deleted since the listing: as if there were none
        where = cdir.location.display(name)
        try:
            if isinstance(data, Exception):
                raise MetricsError(f"cannot be read: {getattr(data, 'message', data)}", where)
            prefix, evaluator = wanted[name]
            out.setdefault(prefix, {})[evaluator] = parse_metrics_record(data, where)
        except MetricsError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    return out


def _wanted_sidecars(cdir: CheckpointDir, only: set[str | None] | None) -> dict[str, tuple[str, str | None]]:
    """``{sidecar name: (prefix, evaluator)}`` of the metrics sidecars the listing shows (of the
    evaluators in ``only``, when given)."""
    wanted: dict[str, tuple[str, str | None]] = {}
    for s in cdir.steps:
        for f in s.sidecars:
            if ".metrics" not in f.name:
                continue
            role = classify(f.name)
            if role is None or role.role != "metrics" or role.prefix != s.prefix:
                continue
            if only is None or role.evaluator in only:
                wanted[f.name] = (s.prefix, role.evaluator)
    return wanted


def evaluation_counts(
    cdir: CheckpointDir, *, evaluators: Iterable[str | None] | None = None, problems: list[str] | None = None
) -> dict[str, dict[str | None, int]]:
    """``{prefix: {evaluator: how many times it evaluated the step}}`` (see :func:`evaluation_records`)."""
    return {
        p: {ev: r["evaluations"] for ev, r in by_ev.items()}
        for p, by_ev in evaluation_records(cdir, evaluators=evaluators, problems=problems).items()
    }
