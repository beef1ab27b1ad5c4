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

Handshake with GC (as a lease's, see :mod:`airflow_tf_ckpt.core.sidecars.leases`): the record is written, THEN GC's intent is
read; when a live intent names the step, or files the step had are gone (a GC run finished
meanwhile), the record is taken back and :class:`QuarantineConflictError` raised. GC lists the
dir after writing its intent, so it either sees the record (and keeps the step) or the
quarantine sees the intent: a step quarantined while GC runs is never deleted, and no record is
left with nothing behind it. The state-file rewrites (2, and a release's 1) go through
:func:`airflow_tf_ckpt.core.formats.state.update_state`: a save that commits meanwhile is kept.

A crash between 1 and 2 leaves a quarantined step still named by the state file; calling
``quarantine_step`` again finishes the job (it is idempotent). The record keeps how the state
file named the step (``state_entry``: raw spelling, timestamp, latest or not), so that a release
can put it back exactly; a rerun on an already dropped step carries that entry over.

``release_quarantine`` lifts a quarantine (the verifier was wrong, or the files were restored from
a backup). It refuses a step that does not exist or is not quarantined, and, unless told not to
verify, a step that still fails ``verify_step`` (the quarantine then stays). Then it does two
writes, in the REVERSE order of ``quarantine_step``:

1. The state file, rewritten atomically from a fresh read, naming the step again: with the
   record's spelling (else relative, as ``CheckpointManager`` writes, or in the dir form the
   file's other absolute paths use), in step order, with a timestamp when the file keeps them
   (the record's, else the newest mtime of the step's files). It becomes ``model_checkpoint_path``
   only when it is newer than the current latest of its base (it was the latest when it was
   quarantined, and no newer step was saved since). With no state file, one naming it is written.
   Skipped when the state file already names the step, or with ``restore_state=False``.
2. ``PREFIX.quarantine.json`` removed.

The order is what makes a crash harmless: between 1 and 2 the step is both named and still
quarantined, which every other part treats safely (GC keeps it, promotion refuses it), and calling
``release_quarantine`` again finishes the job. The reverse order would leave, after a crash, an
old step that the state file does not name and no marker protects: GC may delete it as an orphan.

After a release into a dir that ``tf.train.CheckpointManager`` still writes, TF's own
``max_to_keep`` applies to the restored step on the trainer's next save, as to any other.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_tf_ckpt.core.errors import CheckpointError, StepNotFoundError, StorageError
from airflow_tf_ckpt.core.formats.naming import QUARANTINE_SUFFIX, parse_prefix
from airflow_tf_ckpt.core.formats.state import (
    STATE_FILENAME,
    ResolvedPath,
    StateChange,
    StateFile,
    resolve_path,
    update_state,
)
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from airflow_tf_ckpt.core.steps.order import step_order
from airflow_tf_ckpt.core.storage.location import Location, loads_json

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.verify.report import ProgressFn, VerifyReport


def quarantine_name(prefix: str) -> str:
    return f"{prefix}{QUARANTINE_SUFFIX}"


class NotQuarantinedError(CheckpointError):
    """``release_quarantine`` on a step that has no quarantine record."""


class StillCorruptError(CheckpointError):
    """``release_quarantine`` refused: the step still fails verification (the quarantine stays).

    ``problems`` lists every finding as one line each (the message names the first);
    ``report`` is the verifier's :class:`~airflow_tf_ckpt.core.verify.report.VerifyReport` (``None`` when files are missing
    and verification was not asked for).
    """

    def __init__(
        self, message: str, path: str | None, problems: list[str], report: VerifyReport | None = None
    ) -> None:
        super().__init__(message, path)
        self.problems = problems
        self.report = report


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
        return {
            "prefix": self.prefix,
            "record": self.record_name,
            "state_removed": self.state_removed,
            "was_latest": self.was_latest,
            "new_latest": self.new_latest,
            "removed_paths": self.removed_paths,
        }


MAX_QUARANTINE_BYTES = 4 << 20


def read_quarantine(loc: Location, prefix: str) -> dict[str, Any] | None:
    """The quarantine record of a step, or ``None`` when it is not quarantined."""
    try:
        data = loc.read_capped(quarantine_name(prefix), MAX_QUARANTINE_BYTES, "a quarantine record")
    except FileNotFoundError:
        return None
    except StorageError as exc:  # not a regular file, too large: still a quarantine (kept aside)
        return {"prefix": prefix, "reason": f"unreadable quarantine record: {exc.message}"}
    try:
        record = loads_json(data)
    except ValueError:
        return {"prefix": prefix, "reason": "unreadable quarantine record"}
    return record if isinstance(record, dict) else {"prefix": prefix, "reason": str(record)}


def _state_entry(loc: Location, cdir: CheckpointDir, name: str) -> dict[str, Any] | None:
    """How the state file names the step (raw spelling, timestamp, latest or not), for
    :func:`release_quarantine` to put it back exactly; ``None`` when it does not name it.

    When the step is not named (a rerun after the state file was already rewritten), the
    previous record's entry is carried over: re-quarantining must not lose it.
    """
    s = next((x for x in cdir.steps if x.prefix == name), None)
    if s is not None and s.in_state and s.state_path and cdir.state is not None:
        return {
            "path": s.state_path,
            "timestamp": cdir.state.timestamp_of(s.state_path),
            "latest": s.latest,
            "last_preserved_timestamp": cdir.state.last_preserved_timestamp,
        }
    previous = read_quarantine(loc, name)
    entry = previous.get("state_entry") if previous else None
    return entry if isinstance(entry, dict) else None


def _fresh(
    target: CheckpointDir | Location | str | os.PathLike[str],
    state_filename: str | None,
    storage_options: dict[str, Any] | None,
) -> tuple[Location, str, CheckpointDir]:
    """The dir, its state file name and a FRESH listing (a caller's CheckpointDir may be minutes old)."""
    if isinstance(target, CheckpointDir):
        loc = target.location
        state_filename = state_filename or target.state_filename
    else:
        loc = target if isinstance(target, Location) else Location.of(target, storage_options)
        state_filename = state_filename or STATE_FILENAME
    return loc, state_filename, discover(loc, state_filename=state_filename)


def _step_name(cdir: CheckpointDir, step: str | int | CheckpointStep) -> str:
    if isinstance(step, CheckpointStep):
        return step.prefix
    if isinstance(step, int):
        return cdir.get(step).prefix
    return step


def quarantine_step(
    target: CheckpointDir | Location | str | os.PathLike[str],
    prefix: str | int | CheckpointStep,
    reason: str,
    report_dict: Mapping[str, Any] | None = None,
    *,
    state_filename: str | None = None,
    now: float | None = None,
    storage_options: dict[str, Any] | None = None,
    hook: Callable[..., Any] | None = None,
) -> QuarantineResult:
    """Quarantine one step (see the module docstring). ``prefix`` may be a prefix, a step number
    or a :class:`CheckpointStep`. ``hook(label)`` runs before each write (crash tests)."""
    loc, state_filename, cdir = _fresh(target, state_filename, storage_options)
    name = _step_name(cdir, prefix)
    if not any(n == name or n.startswith(name + ".") for n in cdir.listing) and not any(
        s.prefix == name for s in cdir.steps
    ):
        raise StepNotFoundError(f"no checkpoint step {name!r}", loc.display())
    t = time.time() if now is None else now
    record = {
        "prefix": name,
        "step": parse_prefix(name).step,
        "reason": reason,
        "time": t,
        "report": dict(report_dict) if report_dict is not None else None,
        "state_entry": _state_entry(loc, cdir, name),
    }
    rec_name = _write_record(loc, cdir, name, record, hook)
    result = QuarantineResult(name, rec_name, record, None, None)
    update = update_state(loc, _quarantine_change(loc, cdir, name, t, result), state_filename, hook=hook)
    result.state_before, result.state_after = update.before, update.after
    result.state_removed = update.before is not None and update.after is None
    return result


def _write_record(
    loc: Location, cdir: CheckpointDir, name: str, record: dict[str, Any], hook: Callable[..., Any] | None
) -> str:
    """Step 1 of a quarantine: write the record, in the handshake with GC (module docstring): a
    step a live GC intent names is refused before and after the write, and a step deleted
    meanwhile gets its previous record (or none) back. The record's name."""
    rec_name = quarantine_name(name)
    _refuse_if_doomed(loc, name)
    previous = _record_bytes(loc, rec_name)
    if hook:
        hook("write_quarantine", rec_name)
    loc.write_atomic(rec_name, json.dumps(record, sort_keys=True, default=str).encode("utf-8"))
    try:
        _refuse_if_doomed(loc, name)
        _refuse_if_deleted(loc, cdir, name)
    except CheckpointError:
        _put_back(loc, rec_name, previous)
        raise
    return rec_name


class QuarantineConflictError(CheckpointError):
    """The step is being deleted by a GC run: it was not quarantined (no record is left)."""


def _refuse_if_doomed(loc: Location, name: str) -> None:
    """Raise :class:`QuarantineConflictError` when a live GC intent names the step."""
    from airflow_tf_ckpt.core.sidecars.leases import read_gc_intent  # noqa: PLC0415 (leases imports discovery, as we do)

    intent = read_gc_intent(loc, parse_prefix(name).base)
    if intent is not None and name in intent.prefixes and intent.expires > time.time():
        raise QuarantineConflictError(
            f"step {name} is being deleted by a GC run (started "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(intent.started))});"
            " not quarantined",
            loc.display(name),
        )


def _refuse_if_deleted(loc: Location, cdir: CheckpointDir, name: str) -> None:
    """Raise when files the step had at the start are gone (a GC run that finished, intent and
    all, while the record was written): a record must not be left with nothing behind it."""
    s = next((x for x in cdir.steps if x.prefix == name), None)
    had = {f.name for f in s.files} if s is not None else set()
    if had and not had <= set(loc.listdir()):
        raise QuarantineConflictError(
            f"step {name} was deleted while it was being quarantined; not quarantined", loc.display(name)
        )


def _record_bytes(loc: Location, rec_name: str) -> bytes | None:
    try:
        return loc.read_capped(rec_name, MAX_QUARANTINE_BYTES, "a quarantine record")
    except FileNotFoundError:
        return None


def _put_back(loc: Location, rec_name: str, previous: bytes | None) -> None:
    """Undo the record write: the previous record back, or none."""
    if previous is not None:
        loc.write_atomic(rec_name, previous)
        return
    try:
        loc.fs.rm_file(loc.join(rec_name))
    except FileNotFoundError:
        pass


def _quarantine_change(
    loc: Location, cdir: CheckpointDir, name: str, t: float, result: QuarantineResult
) -> StateChange:
    """Step 2 of a quarantine as a change to the state file as it is when written (see
    :func:`state.update_state`): without the step, latest falling back (module docstring)."""
    names = set(cdir.listing)
    # discovery's resolution first (it knows V1 shard patterns like ``model.ckpt-7-?????-of-00002``)
    known = {r.raw: r.name for r in cdir.resolved}

    def change(before: StateFile | None) -> StateFile | None:
        result.removed_paths, result.was_latest, result.new_latest = [], False, None
        if before is None:
            return None
        raws = list(dict.fromkeys(before.all_model_checkpoint_paths + [before.model_checkpoint_path]))
        resolved = {
            raw: known[raw] if raw in known else resolve_path(loc, raw, names).name for raw in raws if raw
        }
        drop = {raw for raw, n in resolved.items() if n == name}
        if not drop:
            return before
        result.removed_paths = sorted(drop)
        result.was_latest = before.model_checkpoint_path in drop
        after = before.retained({raw for raw in raws if raw not in drop})
        if result.was_latest:
            _fall_back(cdir, name, before, after, resolved, t)
        result.new_latest = after.model_checkpoint_path or None
        if not after.model_checkpoint_path and not after.all_model_checkpoint_paths:
            return None
        return after

    return change


def _fall_back(
    cdir: CheckpointDir,
    name: str,
    before: StateFile,
    after: StateFile,
    resolved: dict[str, str | None],
    t: float,
) -> None:
    """The new latest when the quarantined step was the latest (see the module docstring)."""
    base = parse_prefix(name).base
    same_base = [
        p
        for p in after.all_model_checkpoint_paths
        if (n := resolved.get(p)) is not None and parse_prefix(n).base == base
    ]
    if same_base:
        after.model_checkpoint_path = same_base[-1]
    elif not after.all_model_checkpoint_paths:
        q = next((s for s in cdir.steps if s.prefix == name), None)
        older = [
            s
            for s in cdir.steps
            if s.base == base
            and s.status is StepStatus.ORPHAN
            and not s.quarantined
            and s.prefix != name
            and (q is None or step_order(s) < step_order(q))
        ]
        if older:
            fallback = max(older, key=step_order)
            after.model_checkpoint_path = fallback.prefix
            after.all_model_checkpoint_paths = [fallback.prefix]
            aligned = bool(before.all_model_checkpoint_timestamps)
            after.all_model_checkpoint_timestamps = [fallback.timestamp or t] if aligned else []


@dataclass
class ReleaseResult:
    """What ``release_quarantine`` did."""

    prefix: str
    record_name: str
    record: dict[str, Any]  # the quarantine record that was removed
    verified: bool = False  # verify_step ran and passed (False: not asked for)
    tensors_checked: int = 0
    bytes_checked: int = 0
    state_before: StateFile | None = None
    state_after: StateFile | None = None  # None when the state file was not written
    state_written: bool = False
    state_created: bool = False  # there was no state file; one naming the step was written
    already_named: bool = False  # the state file named the step already (e.g. a rerun after a crash)
    restored_path: str | None = None  # the raw spelling added to the state file
    made_latest: bool = False  # the step became model_checkpoint_path

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "record": self.record_name,
            "reason": self.record.get("reason"),
            "verified": self.verified,
            "tensors_checked": self.tensors_checked,
            "bytes_checked": self.bytes_checked,
            "state_written": self.state_written,
            "state_created": self.state_created,
            "already_named": self.already_named,
            "restored_path": self.restored_path,
            "made_latest": self.made_latest,
            "latest": None if self.state_after is None else self.state_after.model_checkpoint_path,
        }


def release_quarantine(
    target: CheckpointDir | Location | str | os.PathLike[str],
    prefix_or_step: str | int | CheckpointStep,
    *,
    verify: bool = True,
    restore_state: bool = True,
    state_filename: str | None = None,
    storage_options: dict[str, Any] | None = None,
    hook: Callable[..., Any] | None = None,
    progress: ProgressFn | None = None,
) -> ReleaseResult:
    """Lift the quarantine of one step (see the module docstring for the order of the writes).

    ``prefix_or_step`` is a prefix, a step number or a :class:`CheckpointStep`. Raises
    :class:`~airflow_tf_ckpt.core.errors.StepNotFoundError` when the step has no files here,
    :class:`NotQuarantinedError` when it has no quarantine record, and :class:`StillCorruptError`
    when ``verify`` finds a problem (or, with ``restore_state``, when files are missing: the state
    file must not name an incomplete step). ``hook(label, name)`` runs before each write (crash
    tests); ``progress(done, total)`` is passed to the verifier.
    """
    loc, state_filename, cdir = _fresh(target, state_filename, storage_options)
    step, record = _quarantined_step(loc, cdir, _step_name(cdir, prefix_or_step))
    result = ReleaseResult(step.prefix, quarantine_name(step.prefix), record)
    missing = [loc.display(m) for m in step.missing if "?" not in m]
    if verify:
        _verify_for_release(loc, step, missing, result, progress)
    elif restore_state and (missing or step.status is StepStatus.INCOMPLETE):
        _refuse_incomplete(loc, step, missing, result.record_name)
    if restore_state:
        _restore_entry(loc, cdir, step, record, state_filename, result, hook)
    _remove_record(loc, result.record_name, hook)  # LAST: until here a crash leaves it quarantined
    return result


def _quarantined_step(loc: Location, cdir: CheckpointDir, name: str) -> tuple[CheckpointStep, dict[str, Any]]:
    """The step ``name`` (with files here) and its quarantine record, else the error saying which
    is missing."""
    step = next((s for s in cdir.steps if s.prefix == name and s.files), None)
    record = read_quarantine(loc, name)
    if step is None:
        left = " (its quarantine record is still there)" if record is not None else ""
        raise StepNotFoundError(
            f"no checkpoint step {name!r}: no checkpoint files of it here{left}", loc.display(name)
        )
    if record is None:
        raise NotQuarantinedError(
            f"{name!r} is not quarantined: there is no quarantine record", loc.display(quarantine_name(name))
        )
    return step, record


def _verify_for_release(
    loc: Location,
    step: CheckpointStep,
    missing: list[str],
    result: ReleaseResult,
    progress: ProgressFn | None,
) -> None:
    """Verify every checksum of the step; :class:`StillCorruptError` on any problem (a missing
    file and a layout problem included)."""
    from airflow_tf_ckpt.core.verify.engine import verify_step  # noqa: PLC0415 (the verifier is only needed here)

    name = step.prefix
    report = verify_step(loc, name, progress=progress, format=step.format)
    problems = [str(p) for p in report.problems]
    problems += [
        f"{m}: [missing_file] file is missing (step incomplete)"
        for m in missing
        if not any(p.startswith(m + ":") for p in problems)
    ]
    problems += [f"{loc.display(name)}: [layout] {p}" for p in step.problems]
    if problems:
        raise StillCorruptError(
            f"still fails verification with {len(problems)} problem(s), the quarantine stays; "
            f"first: {problems[0]}",
            loc.display(result.record_name),
            problems,
            report,
        )
    result.verified = True
    result.tensors_checked, result.bytes_checked = report.tensors_checked, report.bytes_checked


def _refuse_incomplete(loc: Location, step: CheckpointStep, missing: list[str], rec_name: str) -> None:
    """Unverified, the state file must still not name an incomplete step."""
    shown = missing or [loc.display(m) for m in step.missing]
    raise StillCorruptError(
        f"files are missing ({', '.join(shown[:3])}{' ...' if len(shown) > 3 else ''}): the state "
        "file must not name an incomplete step; the quarantine stays (restore_state=False lifts "
        "the quarantine alone)",
        loc.display(rec_name),
        [f"{m}: [missing_file] file is missing (step incomplete)" for m in shown],
    )


def _remove_record(loc: Location, rec_name: str, hook: Callable[..., Any] | None) -> None:
    """Remove the quarantine record (a record removed concurrently: the end state is the same)."""
    if hook:
        hook("remove_quarantine", rec_name)
    try:
        loc.fs.rm_file(loc.join(rec_name))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot remove the quarantine record: {exc}", loc.display(rec_name)) from exc


def _restore_entry(
    loc: Location,
    cdir: CheckpointDir,
    step: CheckpointStep,
    record: dict[str, Any],
    state_filename: str,
    result: ReleaseResult,
    hook: Callable[..., Any] | None,
) -> None:
    """Step 1 of a release: name the step in the state file again (see the module docstring),
    applied to the state file as it is when written (a trainer may have saved while we verified)."""
    update = update_state(loc, _release_change(loc, cdir, step, record, result), state_filename, hook=hook)
    result.state_before = update.before
    if update.written:
        result.state_after, result.state_written = update.after, True


def _release_change(
    loc: Location, cdir: CheckpointDir, step: CheckpointStep, record: dict[str, Any], result: ReleaseResult
) -> StateChange:
    """:func:`_restore_entry`'s change to the state file."""
    name = step.prefix
    raw_entry = record.get("state_entry")
    entry: dict[str, Any] = raw_entry if isinstance(raw_entry, dict) else {}
    names = set(cdir.listing)
    known = {r.raw: r for r in cdir.resolved}  # discovery's resolution (it knows V1 shard patterns)

    def where(raw: str) -> ResolvedPath:
        return known[raw] if raw in known else resolve_path(loc, raw, names)

    def change(before: StateFile | None) -> StateFile | None:
        result.already_named = result.state_created = result.made_latest = False
        result.restored_path = None
        if before is not None and any(
            where(raw).name == name
            for raw in [*before.all_model_checkpoint_paths, before.model_checkpoint_path]
            if raw
        ):
            result.already_named = True
            return before
        raw = _entry_path(entry, name, before, where)
        ts = _entry_time(entry, step)
        if before is None:
            after = StateFile(raw, [raw], [ts], _entry_last_preserved(entry))
            result.state_created = True
        else:
            after = _with_step(before, name, raw, ts, lambda p: where(p).name)
        result.made_latest = after.model_checkpoint_path == raw
        result.restored_path = raw
        return after

    return change


def _entry_path(
    entry: dict[str, Any], name: str, before: StateFile | None, where: Callable[[str], ResolvedPath]
) -> str:
    """The spelling to restore: the record's, when it still names the step in this dir (an
    absolute path of the dir's old home is not kept), else :func:`_spelling`'s."""
    raw = entry.get("path") if isinstance(entry.get("path"), str) else None
    if raw is None or where(raw).name != name or where(raw).how not in ("relative", "absolute"):
        return _spelling(before, name, where)
    return raw


def _entry_time(entry: dict[str, Any], step: CheckpointStep) -> float:
    """The step's save time: the record's, else its newest file's mtime, else now."""
    ts = entry.get("timestamp")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return float(ts)
    mtimes = [f.mtime for f in step.files if f.mtime is not None]
    return float(max(mtimes)) if mtimes else time.time()


def _entry_last_preserved(entry: dict[str, Any]) -> float:
    lp = entry.get("last_preserved_timestamp")
    return float(lp) if isinstance(lp, (int, float)) and not isinstance(lp, bool) else 0.0


def _step_key(name: str) -> int:
    step = parse_prefix(name).step
    return -1 if step is None else step


def _with_step(
    before: StateFile, name: str, raw: str, ts: float, resolve: Callable[[str], str | None]
) -> StateFile:
    """``before`` with ``raw`` inserted in step order among the paths of its base (by time among
    other bases' paths, where the file keeps timestamps), latest when it is the newest."""
    paths = list(before.all_model_checkpoint_paths)
    stamps = list(before.all_model_checkpoint_timestamps)
    # the file keeps timestamps when it has one per path (an empty file: as TF writes, yes)
    keeps = len(stamps) == len(paths)
    lo, hi = _same_base_span(paths, name, resolve)
    at = next((i for i in range(lo, hi) if stamps[i] > ts), hi) if keeps else hi
    paths.insert(at, raw)
    if keeps:
        stamps.insert(at, ts)
    latest = before.model_checkpoint_path
    newer = _newer_than_latest(before, name, ts, resolve)
    return StateFile(raw if newer else latest, paths, stamps, before.last_preserved_timestamp)


def _same_base_span(paths: list[str], name: str, resolve: Callable[[str], str | None]) -> tuple[int, int]:
    """``(lo, hi)``: ``name`` goes after every path of its base with a lower step and before the
    first one with a higher step."""
    me = parse_prefix(name)
    mine = _step_key(name)
    lo, hi = 0, len(paths)
    for i, p in enumerate(paths):
        n = resolve(p)
        if n is None or parse_prefix(n).base != me.base:
            continue
        other = _step_key(n)
        if other < mine:
            lo = i + 1
        elif other > mine and hi == len(paths):
            hi = i
    return lo, max(hi, lo)


def _newer_than_latest(before: StateFile, name: str, ts: float, resolve: Callable[[str], str | None]) -> bool:
    """The released step is newer than the file's latest (of its base, by step then time); a
    latest we cannot resolve here is left as it is."""
    latest = before.model_checkpoint_path
    if not latest:
        return True
    latest_name = resolve(latest)
    if latest_name is None or parse_prefix(latest_name).base != parse_prefix(name).base:
        return False
    lt = before.timestamp_of(latest)
    return (_step_key(latest_name), ts if lt is None else lt) < (_step_key(name), ts)


def _spelling(state: StateFile | None, name: str, where: Callable[[str], ResolvedPath]) -> str:
    """How to spell a step the record has no (usable) spelling for: as the file's newest path
    does, absolute into this dir (as ``tf.compat.v1.train.Saver`` given an absolute path writes),
    else relative (as ``CheckpointManager`` writes)."""
    if state is not None:
        for p in [state.model_checkpoint_path, *reversed(state.all_model_checkpoint_paths)]:
            r = where(p) if p else None
            if r is not None and r.name is not None:
                if r.how == "absolute" and p.endswith("/" + r.name):
                    return p[: -len(r.name)] + name
                return name
    return name
