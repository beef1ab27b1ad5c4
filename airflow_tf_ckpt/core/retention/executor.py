"""Crash-safe execution of a :class:`~airflow_tf_ckpt.core.retention.planner.RetentionPlan`.

Order of operations (``hook(label, ...)`` runs before each I/O step, so tests can crash there),
all under the dir's GC lock (:func:`airflow_tf_ckpt.core.sidecars.leases.acquire_gc_lock`: one deleting run per dir at a time):

1. ``write_intent``  ``BASE.gc-intent.json`` names the steps about to go (lease handshake, see
   :mod:`airflow_tf_ckpt.core.sidecars.leases`);
2. ``relist``        a fresh listing + state-file read. Anything that invalidates the plan (a
   doomed step is now the latest or the newest committed, newly leased, quarantined or promoted,
   changed files or status, another ``last_preserved_timestamp``) makes GC re-plan with the same
   policies (``on_conflict="replan"``, the default) or refuse (``"refuse"``).
   On ``gs://`` the fresh listing holds only the files that can make a plan unsafe (leases,
   quarantine markers, metrics, promotions, GC intents and the state file), fetched in one listing
   filtered by the server (``matchGlob``); step files are taken from the planning listing. Re-listing
   every shard of 10,000 steps again would cost more than deleting them. What that gives up: a doomed
   step that gained files after planning is not noticed (on local disk it is). Such a step is being
   rewritten by a trainer that restarted from an older step, and it only becomes safe to keep once
   the state file names it, which the re-read state file does show;
3. ``write_state``   the state file is rewritten ATOMICALLY through :func:`airflow_tf_ckpt.core.formats.state.update_state`:
   the file as it is at the moment of the write (re-read just before the rename locally, a
   generation precondition on ``gs://``: a save that commits meanwhile stays), minus every
   spelling of the doomed steps, with ``last_preserved_timestamp`` advanced as the every-N-hours
   policy settled it. Spellings (relative / absolute) and timestamps of the others are untouched,
   and its ``model_checkpoint_path`` is never dropped (such a step is spared, not deleted);
4. ``delete``        the files of doomed steps (index first) and their sidecars, in batches:
   ``fs.rm(list)`` once per batch on object stores, ``unlink`` through a descriptor of the root
   locally; every path is re-checked by :mod:`airflow_tf_ckpt.core.storage.safety` right before removal;
5. ``clear_intent``.

Invariant: the state file only ever loses names before files are deleted, so after a crash at any
point it names only steps that still exist. A rerun converges: half-deleted steps are incomplete
and older than the newest committed step, so the next plan deletes the rest; sidecars left
without a step are cleaned too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError, StorageError
from airflow_tf_ckpt.core.formats.naming import EVALUATOR_METRICS_INFIX, METRICS_SUFFIX, QUARANTINE_SUFFIX
from airflow_tf_ckpt.core.formats.state import StateChange, StateFile, resolve_path, update_state
from airflow_tf_ckpt.core.retention.planner import (
    DELETE,
    PROMOTIONS_FILENAME,
    KeepEveryNHours,
    KeepPromoted,
    RetentionPlan,
    current_promotions,
    plan_retention,
    read_promotions,
)
from airflow_tf_ckpt.core.sidecars.leases import (
    GC_INTENT_SUFFIX,
    LEASE_INFIX,
    GcLock,
    acquire_gc_lock,
    clear_gc_intent,
    gc_intent_name,
    read_leases,
    write_gc_intent,
)
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, discover
from airflow_tf_ckpt.core.storage.gcs import glob_escape, is_gcs, list_matching
from airflow_tf_ckpt.core.storage.location import FileInfo
from airflow_tf_ckpt.core.storage.safety import Deleter, Refusal

Hook = Callable[..., Any]
_RECHECK_SUFFIXES = (QUARANTINE_SUFFIX, METRICS_SUFFIX, GC_INTENT_SUFFIX)


class PlanConflictError(CheckpointError):
    """The dir changed since planning in a way that makes the plan unsafe, and re-planning was
    refused (or did not settle)."""

    def __init__(self, message: str, path: str | None = None, conflicts: list[str] | None = None) -> None:
        self.conflicts = list(conflicts or [])
        super().__init__(message, path)


@dataclass
class GcResult:
    """What :func:`apply_plan` did (or, with ``dry_run``, would do)."""

    dry_run: bool
    plan: RetentionPlan
    replans: int = 0
    conflicts: list[str] = field(default_factory=list)
    state_written: bool = False
    new_state: StateFile | None = None
    deleted: list[str] = field(default_factory=list)  # files removed (paths / URLs)
    deleted_steps: list[str] = field(default_factory=list)
    dropped_from_state: list[str] = field(default_factory=list)  # named by the state file, no files left
    would_delete: list[str] = field(default_factory=list)  # dry run
    missing: list[str] = field(default_factory=list)  # already gone when GC got there
    refused: list[Refusal] = field(default_factory=list)  # the plan's refusals, then apply-time ones
    skipped: dict[str, str] = field(default_factory=dict)  # prefix/name -> why it was not deleted
    errors: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        st = self.new_state
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "replans": self.replans,
            "conflicts": self.conflicts,
            "state_written": self.state_written,
            "new_state": None
            if st is None
            else {
                "model_checkpoint_path": st.model_checkpoint_path,
                "all_model_checkpoint_paths": st.all_model_checkpoint_paths,
                "last_preserved_timestamp": st.last_preserved_timestamp,
            },
            "deleted": self.deleted,
            "deleted_steps": self.deleted_steps,
            "dropped_from_state": self.dropped_from_state,
            "would_delete": self.would_delete,
            "missing": self.missing,
            "refused": [r.to_dict() for r in self.refused],
            "skipped": self.skipped,
            "errors": self.errors,
            "bytes_freed": self.bytes_freed,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        if self.dry_run:
            head = f"dry run: would delete {len(self.plan.deleted)} step(s), {len(self.would_delete)} file(s)"
        else:
            head = (
                f"deleted {len(self.deleted_steps)} step(s), {len(self.deleted)} file(s), "
                f"{self.bytes_freed} bytes"
            )
        parts = [head, "state file " + ("rewritten" if self.state_written else "unchanged")]
        if self.replans:
            parts.append(f"re-planned {self.replans}x ({'; '.join(self.conflicts[:3])})")
        if self.dropped_from_state:
            parts.append(f"{len(self.dropped_from_state)} missing step(s) dropped from the state file")
        if self.missing:
            parts.append(f"{len(self.missing)} already gone")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        if self.errors:
            parts.append(f"ERRORS: {'; '.join(self.errors[:3])}")
        return "; ".join(parts)


def _noop(*_: Any) -> None:
    return None


def _doomed(plan: RetentionPlan) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in plan.decisions:
        if d.action == DELETE:
            out.setdefault(d.base, set()).add(d.prefix)
    return out


def _rechecked(name: str, state_filename: str) -> bool:
    return (
        LEASE_INFIX in name
        or name.endswith(_RECHECK_SUFFIXES)
        or (EVALUATOR_METRICS_INFIX in name and name.endswith(".json"))
        or name in (PROMOTIONS_FILENAME, state_filename)
    )


def _recheck_listing(plan: RetentionPlan) -> dict[str, FileInfo] | None:
    """On ``gs://``: the planning listing with its sidecars and state file replaced by a fresh,
    server-filtered listing of those (see the module docstring). ``None`` elsewhere: list again."""
    loc = plan.location
    if plan.listing is None or not is_gcs(loc.fs):
        return None
    patterns = (
        [f"*{LEASE_INFIX}*", f"*{EVALUATOR_METRICS_INFIX}*.json"]
        + [f"*{s}" for s in _RECHECK_SUFFIXES]
        + [glob_escape(PROMOTIONS_FILENAME), glob_escape(plan.state_filename)]
    )
    fresh = list_matching(loc, patterns, keep=lambda n: _rechecked(n, plan.state_filename))
    merged = {n: i for n, i in plan.listing.items() if not _rechecked(n, plan.state_filename)}
    merged.update(fresh)
    return merged


def find_conflicts(plan: RetentionPlan, fresh: CheckpointDir, now: float | None = None) -> list[str]:
    """Why ``plan`` is no longer safe against the fresh listing ``fresh`` (``[]`` when it is)."""
    t = time.time() if now is None else now
    out: list[str] = []
    if (plan.state_before is None) != (fresh.state is None):
        out.append(
            "the state file " + ("appeared" if fresh.state is not None else "disappeared") + " since planning"
        )
    if (
        any(isinstance(p, KeepEveryNHours) for p in plan.policies)
        and fresh.state is not None
        and plan.state_before is not None
        and fresh.state.last_preserved_timestamp != plan.state_before.last_preserved_timestamp
    ):
        out.append("last_preserved_timestamp changed since planning")
    doomed = [d for d in plan.decisions if d.action == DELETE]
    if not doomed:
        return out
    by_prefix = {s.prefix: s for s in fresh.steps}
    newest: dict[str, str] = {}
    for s in fresh.steps:  # sorted oldest first, so the last committed of a base wins
        if s.committed:
            newest[s.base] = s.prefix
    lease_names = [f.name for d in doomed if (s := by_prefix.get(d.prefix)) is not None for f in s.leases]
    leases = read_leases(fresh.location, lease_names, listing=fresh.listing) if lease_names else {}
    promoted: set[str] = set()
    promo = [p for p in plan.policies if isinstance(p, KeepPromoted)]
    if promo and PROMOTIONS_FILENAME in fresh.listing:
        promoted = set(
            current_promotions(read_promotions(fresh.location), any(p.include_superseded for p in promo))
        )
    fingerprint = plan.fingerprint
    for d in doomed:
        s = by_prefix.get(d.prefix)
        if s is None:
            continue  # gone already: nothing to do but drop it from the state file
        p = d.prefix
        new_files = {f.name for f in s.all_files} - fingerprint.get(p, frozenset())
        if new_files:
            out.append(f"{p} has new files since planning: {', '.join(sorted(new_files)[:3])}")
        if s.latest:
            out.append(f"{p} is now the state file's latest")
        if newest.get(s.base) == p:
            out.append(f"{p} is now the newest committed step")
        if s.status.value != d.status:
            out.append(f"{p} changed from {d.status} to {s.status.value}")
        if s.quarantined and not plan.purge_quarantined:
            out.append(f"{p} was quarantined since planning")
        for f in s.leases:
            lease = leases.get(f.name)
            if lease is not None and lease.active(t):
                out.append(f"{p} is now {lease.describe()}")
        if p in promoted:
            out.append(f"{p} was promoted since planning")
    return out


def state_change(plan: RetentionPlan, fresh: CheckpointDir, spared: set[str]) -> StateChange:
    """GC's change to the state file (for :func:`state.update_state`, which applies it to the
    file as it is at the moment of the write): every spelling of the plan's doomed steps goes,
    ``last_preserved_timestamp`` advances as the plan settled it, everything else (a trainer's
    new saves included) stays. A doomed step that has become ``model_checkpoint_path`` since
    (a trainer rolled back to it) stays too, and is added to ``spared``: it is not deleted."""
    doomed = {d.prefix for d in plan.decisions if d.action == DELETE}
    known = {r.raw: r.name for r in fresh.resolved}
    names = set(fresh.listing)
    lp = plan.last_preserved_after if any(isinstance(p, KeepEveryNHours) for p in plan.policies) else None

    def name(raw: str) -> str | None:
        return known[raw] if raw in known else resolve_path(plan.location, raw, names).name

    def change(st: StateFile | None) -> StateFile | None:
        if st is None:
            return None
        latest = name(st.model_checkpoint_path) if st.model_checkpoint_path else None
        if latest in doomed:
            spared.add(latest)
        all_raw = set(st.all_model_checkpoint_paths)
        if st.model_checkpoint_path:
            all_raw.add(st.model_checkpoint_path)
        drop = {raw for raw in all_raw if (n := name(raw)) in doomed and n not in spared}
        new = st.retained(all_raw - drop)
        if lp is not None:
            new.last_preserved_timestamp = max(lp, st.last_preserved_timestamp)
        return new

    return change


def state_to_write(plan: RetentionPlan, fresh: CheckpointDir) -> StateFile | None:
    """The state file to write: the FRESH one minus every spelling of the plan's doomed steps."""
    return state_change(plan, fresh, set())(fresh.state)


def apply_plan(
    plan: RetentionPlan,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    hook: Hook | None = None,
    on_conflict: str = "replan",
    max_replans: int = 3,
    intent_ttl_s: float = 600.0,
    lock_wait_s: float = 30.0,
) -> GcResult:
    """Execute ``plan`` (see the module docstring). Returns a :class:`GcResult`.

    A run that deletes holds the dir's GC lock (:func:`leases.acquire_gc_lock`) from before its
    intent until after it is cleared, waiting up to ``lock_wait_s`` for another run to finish
    (then :class:`~airflow_tf_ckpt.core.sidecars.leases.GcBusyError`): two runs would overwrite each other's intent.

    ``hook(label)`` / ``hook(label, arg)`` runs before each I/O step: ``write_intent``, ``relist``,
    ``write_state``, ``delete`` (once per path), ``clear_intent``. An exception from the hook
    propagates as if the process died there (nothing is cleaned up but the lock).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if on_conflict not in ("replan", "refuse"):
        raise ValueError(f"on_conflict must be 'replan' or 'refuse', not {on_conflict!r}")
    if dry_run:
        return _apply_plan(plan, True, batch_size, hook, on_conflict, max_replans, intent_ttl_s, None)
    lock = acquire_gc_lock(plan.location, ttl_s=intent_ttl_s, wait_s=lock_wait_s)
    try:
        return _apply_plan(plan, False, batch_size, hook, on_conflict, max_replans, intent_ttl_s, lock)
    finally:
        lock.release()


def _apply_plan(
    plan: RetentionPlan,
    dry_run: bool,
    batch_size: int,
    hook: Hook | None,
    on_conflict: str,
    max_replans: int,
    intent_ttl_s: float,
    lock: GcLock | None,
) -> GcResult:
    t0 = time.monotonic()
    call: Hook = hook or _noop
    loc = plan.location
    result = GcResult(dry_run=dry_run, plan=plan)
    started = time.time()
    intents: set[str] = set()
    current = plan
    fresh: CheckpointDir | None = None
    for attempt in range(max_replans + 1):
        if not dry_run:
            for base, prefixes in sorted(_doomed(current).items()):
                call("write_intent", gc_intent_name(base))
                write_gc_intent(loc, base, prefixes, ttl_s=intent_ttl_s, started=started)
                intents.add(base)
        call("relist")
        fresh = discover(loc, state_filename=current.state_filename, listing=_recheck_listing(current))
        conflicts = find_conflicts(current, fresh)
        if not conflicts:
            break
        result.conflicts += conflicts
        if on_conflict == "refuse" or attempt == max_replans:
            for base in sorted(intents):
                clear_gc_intent(loc, base)
            raise PlanConflictError(
                "the checkpoint dir changed since planning: " + "; ".join(conflicts), loc.display(), conflicts
            )
        current = plan_retention(
            fresh,
            current.policies,
            prefix=current.prefix,
            now=time.time(),
            purge_quarantined=current.purge_quarantined,
            meta_guard=current.meta_guard,
        )
        result.replans += 1
    assert fresh is not None
    result.plan = current
    result.refused = list(current.refused)
    new_state = state_to_write(current, fresh)
    result.new_state = new_state
    state_changes = new_state is not None and new_state != fresh.state

    # groups: a step's files go together or not at all
    groups: list[tuple[str, list[str], int]] = []
    for d in current.decisions:
        if d.action == DELETE:
            groups.append((d.prefix, [loc.join(n) for n in d.delete_files], d.size))
    fresh_leases: dict[str, Any] = {}
    lease_sidecars = [s.name for s in current.sidecars if s.action == DELETE and s.role == "lease"]
    if lease_sidecars:
        fresh_leases = read_leases(loc, lease_sidecars, listing=fresh.listing)
    for sc in current.sidecars:
        if sc.action != DELETE:
            continue
        lease = fresh_leases.get(sc.name)
        if lease is not None and lease.active():
            result.skipped[sc.name] = f"lease renewed since planning: {lease.describe()}"
            continue
        groups.append((sc.name, [loc.join(sc.name)], 0))

    if dry_run:
        result.would_delete = [p for _, paths, _ in groups for p in paths]
        result.seconds = time.monotonic() - t0
        return result

    spared: set[str] = set()
    if state_changes:
        update = update_state(loc, state_change(current, fresh, spared), current.state_filename, hook=call)
        result.state_written, result.new_state = update.written, update.after
    for label in sorted(spared):
        result.skipped[label] = "became the state file's latest while GC ran (a trainer rolled back to it)"

    last_intent = time.time()
    doomed_all = _doomed(current)
    step_labels = set(current.fingerprint)
    with Deleter(loc, current.root_realpath, hook=call) as deleter:
        batch: list[tuple[str, list[str], int]] = []

        def flush() -> bool:
            nonlocal last_intent
            if not batch:
                return True
            if time.time() - last_intent > intent_ttl_s / 2:  # keep the handshake alive
                if lock is not None:
                    lock.refresh()
                for base in sorted(doomed_all):
                    call("write_intent", gc_intent_name(base))
                    write_gc_intent(loc, base, doomed_all[base], ttl_s=intent_ttl_s, started=started)
                last_intent = time.time()
            paths = [p for _, ps, _ in batch for p in ps]
            try:
                deleted, missing, refused = deleter.delete(paths)
            except (OSError, StorageError) as exc:
                result.errors.append(f"delete failed: {exc}")
                batch.clear()
                return False
            result.deleted += deleted
            result.missing += missing
            result.refused += refused
            bad = {r.path for r in refused}
            for label, ps, size in batch:
                shown = {deleter.display(p) for p in ps}
                if shown & bad:
                    result.skipped[label] = "some files were refused at deletion time"
                elif label in step_labels:
                    result.deleted_steps.append(label)
                    result.bytes_freed += size
            batch.clear()
            return True

        count = 0
        for label, paths, size in groups:
            if label in spared:
                continue
            if not paths:  # a state-file entry with no files: dropping it from the state was all
                if state_changes:
                    result.dropped_from_state.append(label)
                continue
            bad = deleter.precheck(paths)
            if bad:
                result.refused += bad
                result.skipped[label] = "; ".join(f"{b.path}: {b.reason}" for b in bad)
                continue
            batch.append((label, paths, size))
            count += len(paths)
            if count >= batch_size:
                count = 0
                if not flush():
                    break
        else:
            flush()

    # Ours, and any left by a GC run that died on this base (one GC per base at a time).
    leftovers = {d.base for d in current.decisions if gc_intent_name(d.base) in fresh.listing}
    for base in sorted(intents | leftovers):
        call("clear_intent", gc_intent_name(base))
        clear_gc_intent(loc, base)
    result.seconds = time.monotonic() - t0
    return result
