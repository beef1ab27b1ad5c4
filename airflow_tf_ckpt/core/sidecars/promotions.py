"""The ``PROMOTIONS.json`` record in a SOURCE checkpoint dir: which step was promoted where.

Written by :mod:`airflow_tf_ckpt.core.promote` after a successful copy, read by retention (the
``KeepPromoted`` policy keeps the current holder of each destination) and by the UI. GC must
never run blind: an unreadable record is an error, not an empty one.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.formats.naming import parse_prefix
from airflow_tf_ckpt.core.storage.location import Location, loads_json

PROMOTIONS_FILENAME = "PROMOTIONS.json"
MAX_PROMOTIONS_BYTES = 64 << 20  # ~200k promotions
_GCS_ATTEMPTS = 20

Record = dict[str, Any]


def read_promotions(loc: Location) -> list[Record]:
    """The records of ``PROMOTIONS.json`` (oldest first); ``[]`` when there is none."""
    try:
        data = loc.read_capped(PROMOTIONS_FILENAME, MAX_PROMOTIONS_BYTES, "a promotions record")
    except FileNotFoundError:
        return []
    return _parse_promotions(data, loc.display(PROMOTIONS_FILENAME))


def _parse_promotions(data: bytes, where: str) -> list[Record]:
    try:
        doc = loads_json(data)
    except ValueError as exc:
        # GC must not run blind: an unreadable record could hide a promoted step.
        raise CheckpointError(f"is not valid JSON ({exc}); fix or remove it before GC", where) from exc
    recs = doc.get("promotions") if isinstance(doc, dict) else None
    if not isinstance(recs, list) or not all(
        isinstance(r, dict) and isinstance(r.get("prefix"), str) for r in recs
    ):
        raise CheckpointError('has no valid "promotions" list; fix or remove it before GC', where)
    return recs


def current_promotions(
    records: Sequence[Mapping[str, Any]],
    include_superseded: bool = False,
) -> dict[str, list[Record]]:
    """``{prefix: [records]}``: the latest record per destination and per (destination, alias)."""
    if include_superseded:
        chosen = list(records)
    else:
        latest: dict[tuple[str, str | None], Mapping[str, Any]] = {}
        for r in records:  # later records supersede earlier ones
            latest[(str(r.get("dest")), r.get("alias"))] = r
            latest[(str(r.get("dest")), None)] = r
        chosen = list({id(r): r for r in latest.values()}.values())
    out: dict[str, list[Record]] = {}
    for r in chosen:
        out.setdefault(str(r["prefix"]), []).append(dict(r))
    return out


def promoted_prefixes(loc: Location, *, include_superseded: bool = False) -> set[str]:
    """Prefixes that ``PROMOTIONS.json`` in the source dir records as promoted (current holders)."""
    return set(current_promotions(read_promotions(loc), include_superseded))


_RECORD_LOCK = threading.Lock()


@contextmanager
def dir_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on a local dir (held by processes of this host, released on exit,
    also by a killed process), and this process's threads serialized. The metrics sidecars'
    writers take it too."""
    import fcntl

    with _RECORD_LOCK:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def record_promotion(
    loc: Location, prefix: str, dest: str, alias: str | None = None, *, now: float | None = None
) -> Record:
    """Append a promotion record to ``PROMOTIONS.json`` in the SOURCE dir.

    Called by the promotion code after a successful copy. A repeated (prefix, dest, alias) moves
    to the end with a new time. Two promotions of the same source recording at the same instant
    both land: the read-modify-write runs under an ``flock`` of the dir locally, and as a
    compare-and-swap on GCS (the write carries ``ifGenerationMatch`` of what was read, and is
    redone on a fresh read when another writer came first). Other object stores have neither:
    there it is serialized within this process only.
    """
    if not prefix or "/" in prefix:
        raise CheckpointError(
            f"cannot record promotion of {prefix!r}: not a prefix name", loc.display(PROMOTIONS_FILENAME)
        )
    rec: Record = {
        "prefix": prefix,
        "step": parse_prefix(prefix).step,
        "dest": dest,
        "alias": alias,
        "time": time.time() if now is None else now,
    }
    from airflow_tf_ckpt.core.storage.gcs import is_gcs

    if is_gcs(loc.fs):
        _record_on_gcs(loc, rec)
    elif loc.local:
        os.makedirs(loc.path, exist_ok=True)
        with dir_lock(loc.path):
            loc.write_atomic(PROMOTIONS_FILENAME, _with_record(read_promotions(loc), rec))
    else:
        with _RECORD_LOCK:
            loc.write_atomic(PROMOTIONS_FILENAME, _with_record(read_promotions(loc), rec))
    return rec


def _with_record(records: list[Record], rec: Record) -> bytes:
    """The file's new bytes: ``records`` without an older (prefix, dest, alias) twin, then ``rec``."""
    key = (rec["prefix"], rec["dest"], rec["alias"])
    keep = [r for r in records if (r.get("prefix"), r.get("dest"), r.get("alias")) != key]
    doc = {"version": 1, "promotions": [*keep, rec]}
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")


def _record_on_gcs(loc: Location, rec: Record) -> None:
    """Compare-and-swap on the object's generation, redone on a fresh read when another came first."""
    from airflow_tf_ckpt.core.storage.gcs import read_with_generation, write_if_generation

    path = loc.join(PROMOTIONS_FILENAME)
    where = loc.display(PROMOTIONS_FILENAME)
    for attempt in range(_GCS_ATTEMPTS):
        data, generation = read_with_generation(loc.fs, path, MAX_PROMOTIONS_BYTES, "a promotions record")
        records = _parse_promotions(data, where) if data is not None else []
        if write_if_generation(loc.fs, path, _with_record(records, rec), generation):
            return
        time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
    raise CheckpointError(
        f"kept changing under {_GCS_ATTEMPTS} attempts to add a record; not recorded", where
    )
