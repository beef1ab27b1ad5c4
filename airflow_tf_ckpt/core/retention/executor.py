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
from typing import Any, NoReturn

from airflow_tf_ckpt.core.errors import CheckpointError, StorageError
from airflow_tf_ckpt.core.formats.naming import (
    EVALUATOR_METRICS_INFIX,
    LEASE_INFIX,
    METRICS_SUFFIX,
    QUARANTINE_SUFFIX,
)
from airflow_tf_ckpt.core.formats.state import StateChange, StateFile, resolve_path, update_state
from airflow_tf_ckpt.core.retention.plan import DELETE, RetentionPlan, StepDecision
from airflow_tf_ckpt.core.retention.planner import plan_retention, promotions_for
from airflow_tf_ckpt.core.retention.policies import tracks_last_preserved
from airflow_tf_ckpt.core.sidecars.leases import (
    GC_INTENT_SUFFIX,
    GcLock,
    Lease,
    acquire_gc_lock,
    clear_gc_intent,
    gc_intent_name,
    read_leases,
    write_gc_intent,
)
from airflow_tf_ckpt.core.sidecars.promotions import PROMOTIONS_FILENAME
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, discover
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
    out = _state_conflicts(plan, fresh)
    doomed = plan.deleted
    if not doomed:
        return out
    seen = _Fresh.of(plan, fresh, doomed)
    t = time.time() if now is None else now
    fingerprint = plan.fingerprint
    for d in doomed:
        s = seen.by_prefix.get(d.prefix)
        if s is not None:  # else gone already: nothing to do but drop it from the state file
            out += _step_conflicts(plan, d, s, seen, fingerprint.get(d.prefix, frozenset()), t)
    return out


def _state_conflicts(plan: RetentionPlan, fresh: CheckpointDir) -> list[str]:
    before, after = plan.state_before, fresh.state
    if (before is None) != (after is None):
        return ["the state file " + ("appeared" if after is not None else "disappeared") + " since planning"]
    if (
        tracks_last_preserved(plan.policies)
        and after is not None
        and before is not None
        and after.last_preserved_timestamp != before.last_preserved_timestamp
    ):
        return ["last_preserved_timestamp changed since planning"]
    return []


@dataclass
class _Fresh:
    """What the fresh listing says about the doomed steps."""

    by_prefix: dict[str, CheckpointStep]
    newest: dict[str, str]  # base -> its newest committed step
    leases: dict[str, Lease]
    promoted: set[str]

    @classmethod
    def of(cls, plan: RetentionPlan, fresh: CheckpointDir, doomed: list[StepDecision]) -> _Fresh:
        by_prefix = {s.prefix: s for s in fresh.steps}
        newest = {s.base: s.prefix for s in fresh.steps if s.committed}  # oldest first: the last wins
        lease_names = [f.name for d in doomed if (st := by_prefix.get(d.prefix)) for f in st.leases]
        leases = read_leases(fresh.location, lease_names, listing=fresh.listing) if lease_names else {}
        return cls(by_prefix, newest, leases, set(promotions_for(plan.policies, fresh)))


def _step_conflicts(
    plan: RetentionPlan, d: StepDecision, s: CheckpointStep, seen: _Fresh, files: frozenset[str], now: float
) -> list[str]:
    """Why doomed step ``d`` (``s`` in the fresh listing) must not go now."""
    p = d.prefix
    out = []
    new_files = {f.name for f in s.all_files} - files
    if new_files:
        out.append(f"{p} has new files since planning: {', '.join(sorted(new_files)[:3])}")
    if s.latest:
        out.append(f"{p} is now the state file's latest")
    if seen.newest.get(s.base) == p:
        out.append(f"{p} is now the newest committed step")
    if s.status.value != d.status:
        out.append(f"{p} changed from {d.status} to {s.status.value}")
    if s.quarantined and not plan.purge_quarantined:
        out.append(f"{p} was quarantined since planning")
    for f in s.leases:
        lease = seen.leases.get(f.name)
        if lease is not None and lease.active(now):
            out.append(f"{p} is now {lease.describe()}")
    if p in seen.promoted:
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
    lp = plan.last_preserved_after if tracks_last_preserved(plan.policies) else None

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
    run = _GcRun(plan, dry_run, batch_size, hook or _noop, on_conflict, max_replans, intent_ttl_s)
    if dry_run:
        return run.execute()
    run.lock = lock = acquire_gc_lock(plan.location, ttl_s=intent_ttl_s, wait_s=lock_wait_s)
    try:
        return run.execute()
    finally:
        lock.release()


# a group: a step's files (or one sidecar) go together or not at all: (label, paths, bytes)
_Group = tuple[str, list[str], int]


@dataclass
class _GcRun:
    """One execution of a plan, phase by phase (see the module docstring for the order)."""

    plan: RetentionPlan
    dry_run: bool
    batch_size: int
    call: Hook
    on_conflict: str
    max_replans: int
    intent_ttl_s: float
    lock: GcLock | None = None
    started: float = field(default_factory=time.time)  # the intents' start time
    intents: set[str] = field(default_factory=set)  # bases whose intent this run wrote

    def execute(self) -> GcResult:
        t0 = time.monotonic()
        result = GcResult(dry_run=self.dry_run, plan=self.plan)
        current, fresh = self.settle(result)
        result.plan, result.refused = current, list(current.refused)
        result.new_state = state_to_write(current, fresh)
        state_changes = result.new_state is not None and result.new_state != fresh.state
        groups = self.groups(current, fresh, result)
        if self.dry_run:
            result.would_delete = [p for _, paths, _ in groups for p in paths]
        else:
            spared = self.rewrite_state(current, fresh, state_changes, result)
            self.delete(current, groups, spared, state_changes, result)
            self.clear_intents(current, fresh)
        result.seconds = time.monotonic() - t0
        return result

    # -- phase 1: intent, fresh listing, conflicts (re-planned up to max_replans times)

    def settle(self, result: GcResult) -> tuple[RetentionPlan, CheckpointDir]:
        """The plan to execute and the fresh listing it holds against: intents written first
        (unless a dry run), then the dir re-listed; a conflict re-plans or refuses."""
        loc, current = self.plan.location, self.plan
        for attempt in range(self.max_replans + 1):
            if not self.dry_run:
                self.write_intents(_doomed(current))
            self.call("relist")
            fresh = discover(loc, state_filename=current.state_filename, listing=_recheck_listing(current))
            conflicts = find_conflicts(current, fresh)
            if not conflicts:
                return current, fresh
            result.conflicts += conflicts
            if self.on_conflict == "refuse" or attempt == self.max_replans:
                self.refuse(conflicts)
            current = plan_retention(
                fresh,
                current.policies,
                prefix=current.prefix,
                now=time.time(),
                purge_quarantined=current.purge_quarantined,
                meta_guard=current.meta_guard,
            )
            result.replans += 1
        raise AssertionError("unreachable: the last attempt refuses")  # pragma: no cover

    def write_intents(self, doomed: dict[str, set[str]]) -> None:
        for base, prefixes in sorted(doomed.items()):
            self.call("write_intent", gc_intent_name(base))
            write_gc_intent(self.plan.location, base, prefixes, ttl_s=self.intent_ttl_s, started=self.started)
            self.intents.add(base)

    def refuse(self, conflicts: list[str]) -> NoReturn:
        loc = self.plan.location
        for base in sorted(self.intents):
            clear_gc_intent(loc, base)
        raise PlanConflictError(
            "the checkpoint dir changed since planning: " + "; ".join(conflicts), loc.display(), conflicts
        )

    # -- phase 2: what goes, group by group

    def groups(self, current: RetentionPlan, fresh: CheckpointDir, result: GcResult) -> list[_Group]:
        """The doomed steps' files, then the doomed sidecars (but those whose lease was renewed)."""
        loc = current.location
        groups: list[_Group] = [
            (d.prefix, [loc.join(n) for n in d.delete_files], d.size) for d in current.deleted
        ]
        doomed = [sc for sc in current.sidecars if sc.action == DELETE]
        lease_names = [sc.name for sc in doomed if sc.role == "lease"]
        leases = read_leases(loc, lease_names, listing=fresh.listing) if lease_names else {}
        for sc in doomed:
            lease = leases.get(sc.name)
            if lease is not None and lease.active():
                result.skipped[sc.name] = f"lease renewed since planning: {lease.describe()}"
            else:
                groups.append((sc.name, [loc.join(sc.name)], 0))
        return groups

    # -- phase 3: the state file, before any file goes

    def rewrite_state(
        self, current: RetentionPlan, fresh: CheckpointDir, state_changes: bool, result: GcResult
    ) -> set[str]:
        """Rewrite the state file (atomically, against the file as it is then); the doomed
        steps that became its latest meanwhile are spared."""
        spared: set[str] = set()
        if state_changes:
            change = state_change(current, fresh, spared)
            update = update_state(current.location, change, current.state_filename, hook=self.call)
            result.state_written, result.new_state = update.written, update.after
        for label in sorted(spared):
            result.skipped[label] = (
                "became the state file's latest while GC ran (a trainer rolled back to it)"
            )
        return spared

    # -- phase 4: the deletes, in batches

    def delete(
        self,
        current: RetentionPlan,
        groups: list[_Group],
        spared: set[str],
        state_changes: bool,
        result: GcResult,
    ) -> None:
        """Delete group by group in batches of about ``batch_size`` paths; each path is re-checked
        first, and a group with a refused path is skipped whole. Stops at a failed batch."""
        with Deleter(current.location, current.root_realpath, hook=self.call) as deleter:
            batches = _Batches(self, deleter, current, result)
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
                if not batches.add((label, paths, size)):
                    return
            batches.flush()

    def keep_intents_alive(self, doomed: dict[str, set[str]]) -> None:
        """Refresh the lock and the intents (the lease handshake) when half their TTL has passed."""
        if self.lock is not None:
            self.lock.refresh()
        for base in sorted(doomed):
            self.call("write_intent", gc_intent_name(base))
            write_gc_intent(
                self.plan.location, base, doomed[base], ttl_s=self.intent_ttl_s, started=self.started
            )

    # -- phase 5: release

    def clear_intents(self, current: RetentionPlan, fresh: CheckpointDir) -> None:
        """Ours, and any left by a GC run that died on this base (one GC per base at a time)."""
        leftovers = {d.base for d in current.decisions if gc_intent_name(d.base) in fresh.listing}
        for base in sorted(self.intents | leftovers):
            self.call("clear_intent", gc_intent_name(base))
            clear_gc_intent(current.location, base)


class _Batches:
    """Groups gathered into batches of about ``batch_size`` paths, each deleted in one call."""

    def __init__(self, run: _GcRun, deleter: Deleter, current: RetentionPlan, result: GcResult) -> None:
        self.run, self.deleter, self.result = run, deleter, result
        self.doomed = _doomed(current)
        self.step_labels = set(current.fingerprint)
        self.batch: list[_Group] = []
        self.count = 0
        self.last_intent = time.time()

    def add(self, group: _Group) -> bool:
        """Queue ``group``; a full batch is deleted. False when a delete failed (stop there)."""
        self.batch.append(group)
        self.count += len(group[1])
        if self.count < self.run.batch_size:
            return True
        self.count = 0
        return self.flush()

    def flush(self) -> bool:
        """Delete the queued groups. False when the delete failed (recorded in the result)."""
        if not self.batch:
            return True
        if time.time() - self.last_intent > self.run.intent_ttl_s / 2:
            self.run.keep_intents_alive(self.doomed)
            self.last_intent = time.time()
        batch, self.batch = self.batch, []
        try:
            deleted, missing, refused = self.deleter.delete([p for _, ps, _ in batch for p in ps])
        except (OSError, StorageError) as exc:
            self.result.errors.append(f"delete failed: {exc}")
            return False
        result = self.result
        result.deleted += deleted
        result.missing += missing
        result.refused += refused
        bad = {r.path for r in refused}
        for label, ps, size in batch:
            if {self.deleter.display(p) for p in ps} & bad:
                result.skipped[label] = "some files were refused at deletion time"
            elif label in self.step_labels:
                result.deleted_steps.append(label)
                result.bytes_freed += size
        return True
