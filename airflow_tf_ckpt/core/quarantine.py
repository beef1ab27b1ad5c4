"""Quarantine a corrupt step: take it out of the state file, keep its files for inspection.

``quarantine_step`` does two writes, in this order:

1. ``PREFIX.quarantine.json`` (reason, time, the verifier's report). From here on GC keeps the
   step whatever its policies say, and promotion refuses it.
2. The state file, rewritten atomically WITHOUT the step, from a fresh read (a trainer may have
   saved since the caller looked). ``tf.train.latest_checkpoint`` then falls back to the previous
   good step: when the step was the latest, ``model_checkpoint_path`` becomes the newest remaining
   path of the same base (else the newest remaining path). When no path remains, the newest
   complete, unquarantined, older step of the same base that is on disk but not in the state file
   (a step TF preserved under ``keep_checkpoint_every_n_hours``) becomes the latest. When there is
   none, the state file is removed: TF's ``latest_checkpoint`` returns None for a dir without one,
   whereas a state file with an empty ``model_checkpoint_path`` makes it raise.

A crash between 1 and 2 leaves a quarantined step still named by the state file; calling
``quarantine_step`` again finishes the job (it is idempotent).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from .errors import StepNotFoundError, StorageError
from .naming import QUARANTINE_SUFFIX, parse_prefix
from .state import STATE_FILENAME, StateFile, read_state, resolve_path, write_state
from .storage import Location


def quarantine_name(prefix: str) -> str:
    return f"{prefix}{QUARANTINE_SUFFIX}"


@dataclass
class QuarantineResult:
    """What ``quarantine_step`` did."""

    prefix: str
    record_name: str
    record: dict[str, Any]
    state_before: StateFile | None
    state_after: StateFile | None
    state_removed: bool = False
    was_latest: bool = False
    new_latest: str | None = None  # raw state-file spelling of the new model_checkpoint_path
    removed_paths: list[str] = field(default_factory=list)  # raw spellings dropped from the state file

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "record": self.record_name, "state_removed": self.state_removed,
                "was_latest": self.was_latest, "new_latest": self.new_latest,
                "removed_paths": self.removed_paths}


def read_quarantine(loc: Location, prefix: str) -> dict[str, Any] | None:
    """The quarantine record of a step, or ``None`` when it is not quarantined."""
    try:
        data = loc.fs.cat_file(loc.join(quarantine_name(prefix)))
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"prefix": prefix, "reason": "unreadable quarantine record"}
    return record if isinstance(record, dict) else {"prefix": prefix, "reason": str(record)}


def _order(s: CheckpointStep) -> tuple[int, float, str]:
    return (-1 if s.step is None else s.step, s.timestamp or 0.0, s.prefix)


def quarantine_step(target: CheckpointDir | Location | str | os.PathLike[str],
                    prefix: str | int | CheckpointStep, reason: str,
                    report_dict: Mapping[str, Any] | None = None, *,
                    state_filename: str | None = None, now: float | None = None,
                    storage_options: dict[str, Any] | None = None,
                    hook: Callable[..., Any] | None = None) -> QuarantineResult:
    """Quarantine one step (see the module docstring). ``prefix`` may be a prefix, a step number
    or a :class:`CheckpointStep`. ``hook(label)`` runs before each write (crash tests)."""
    if isinstance(target, CheckpointDir):
        loc = target.location
        state_filename = state_filename or target.state_filename
    else:
        loc = target if isinstance(target, Location) else Location.of(target, storage_options)
        state_filename = state_filename or STATE_FILENAME
    # A fresh listing: the caller's CheckpointDir may be minutes old.
    cdir = discover(loc, state_filename=state_filename)
    if isinstance(prefix, CheckpointStep):
        name = prefix.prefix
    elif isinstance(prefix, int):
        name = cdir.get(prefix).prefix
    else:
        name = prefix
    names = set(cdir.listing)
    if not any(n == name or n.startswith(name + ".") for n in names) and not any(
            s.prefix == name for s in cdir.steps):
        raise StepNotFoundError(f"no checkpoint step {name!r}", loc.display())
    t = time.time() if now is None else now
    record = {"prefix": name, "step": parse_prefix(name).step, "reason": reason, "time": t,
              "report": dict(report_dict) if report_dict is not None else None}
    rec_name = quarantine_name(name)
    if hook:
        hook("write_quarantine", rec_name)
    loc.write_atomic(rec_name, json.dumps(record, sort_keys=True, default=str).encode("utf-8"))

    before = read_state(loc, state_filename)
    result = QuarantineResult(name, rec_name, record, before, before)
    if before is None:
        return result
    raws = list(dict.fromkeys(before.all_model_checkpoint_paths + [before.model_checkpoint_path]))
    # discovery's resolution first (it knows V1 shard patterns like ``model.ckpt-7-?????-of-00002``)
    known = {r.raw: r.name for r in cdir.resolved}
    resolved = {raw: known[raw] if raw in known else resolve_path(loc, raw, names).name for raw in raws if raw}
    drop = {raw for raw, n in resolved.items() if n == name}
    if not drop:
        return result
    result.removed_paths = sorted(drop)
    result.was_latest = before.model_checkpoint_path in drop
    keep = {raw for raw in raws if raw not in drop}
    after = before.retained(keep)
    base = parse_prefix(name).base
    if result.was_latest:
        same_base = [p for p in after.all_model_checkpoint_paths
                     if (n := resolved.get(p)) is not None and parse_prefix(n).base == base]
        if same_base:
            after.model_checkpoint_path = same_base[-1]
        elif not after.all_model_checkpoint_paths:
            q = next((s for s in cdir.steps if s.prefix == name), None)
            older = [s for s in cdir.steps
                     if s.base == base and s.status is StepStatus.ORPHAN and not s.quarantined
                     and s.prefix != name and (q is None or _order(s) < _order(q))]
            if older:
                fallback = max(older, key=_order)
                after.model_checkpoint_path = fallback.prefix
                after.all_model_checkpoint_paths = [fallback.prefix]
                aligned = bool(before.all_model_checkpoint_timestamps)
                after.all_model_checkpoint_timestamps = (
                    [fallback.timestamp or t] if aligned else [])
    result.new_latest = after.model_checkpoint_path or None
    if hook:
        hook("write_state", state_filename)
    if not after.model_checkpoint_path and not after.all_model_checkpoint_paths:
        try:
            loc.fs.rm_file(loc.join(state_filename))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove the state file: {exc}", loc.display(state_filename)) from exc
        result.state_after = None
        result.state_removed = True
        return result
    write_state(loc, after, state_filename)
    result.state_after = after
    return result
