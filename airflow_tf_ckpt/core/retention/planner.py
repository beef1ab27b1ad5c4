"""Retention planning: which checkpoint steps to keep, and why. Nothing is deleted here.

Policies (:mod:`~airflow_tf_ckpt.core.retention.policies`) each answer "keep this step, and why"
over the ordered candidate steps of one base name; they compose as a UNION of keeps::

    plan = plan_retention("gs://b/run", [KeepLastN(3), KeepEveryNHours(2), KeepBestK(2, "val_loss")])
    print(plan.summary()); executor.apply_plan(plan)

Candidates are the complete, unquarantined steps of the base that are committed (named by the
state file) or older than the newest committed step. Always-on guards, each with its reason:

* the newest committed step and the state file's ``model_checkpoint_path`` are kept;
* the newest ``.meta`` at or before the newest committed step is protected. With
  ``write_meta_graph=False`` only the first save has one, and later steps depend on it for
  ``import_meta_graph``. By default (``meta_guard="file"``) only that ``.meta`` FILE survives when
  its step is deleted: a MetaGraphDef is independent of the weights, so it serves every later step
  while the old step's data (a whole checkpoint) goes. ``meta_guard="step"`` keeps the whole step;
* steps with an unexpired lease (``leased by OWNER until T``) and quarantined steps are kept
  (quarantined ones are deleted only with ``purge_quarantined=True``);
* incomplete steps, and complete steps missing from the state file, that are NEWER than the newest
  committed step are not touched (a save or a commit may be in progress); older incomplete steps are
  debris of an interrupted save or delete and are deleted;
* only the chosen base name is touched (two jobs can share a dir), and nothing is ever deleted
  when the base has no committed step at all.

A policy that walks ``last_preserved_timestamp`` (``KeepEveryNHours``, as TF's
``keep_checkpoint_every_n_hours``) reports its walk; the timestamp written back only advances
through steps whose fate is settled (preserved or deleted now), never past a step that another
policy merely holds for now; so a TF trainer restarted on the rewritten state file makes the same
choices, and re-planning converges.

Planning runs in phases: discovery (one listing) and one look at the listing's names; gathering
what the policies need (one read per metrics sidecar, lease file and ``PROMOTIONS.json`` that the
listing shows); then, per base, guards, policies, the ``.meta`` guard and the decisions; then the
temp files, the new state file and the plan (:mod:`~airflow_tf_ckpt.core.retention.plan`).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any, NamedTuple

from airflow_tf_ckpt.core.formats.naming import LEASE_INFIX, classify, parse_prefix
from airflow_tf_ckpt.core.formats.state import STATE_FILENAME, StateFile
from airflow_tf_ckpt.core.retention.plan import (
    DELETE,
    KEEP,
    NOT_KEPT,
    RetentionPlan,
    SidecarDecision,
    StepDecision,
)
from airflow_tf_ckpt.core.retention.policies import (
    PolicyContext,
    RetentionError,
    RetentionPolicy,
    check_policies,
    tracks_last_preserved,
)
from airflow_tf_ckpt.core.sidecars.leases import Lease, read_leases
from airflow_tf_ckpt.core.sidecars.promotions import PROMOTIONS_FILENAME, current_promotions, read_promotions
from airflow_tf_ckpt.core.steps.discovery import (
    CheckpointDir,
    CheckpointStep,
    StepStatus,
    discover,
    gc_paused,
)
from airflow_tf_ckpt.core.steps.order import step_order
from airflow_tf_ckpt.core.storage.location import FileInfo, Location
from airflow_tf_ckpt.core.storage.safety import Refusal, name_problem, root_realpath, symlink_problem

#: a temp file older than this belongs to a write that died (a write takes seconds)
TEMP_FILE_TTL_S = 3600.0

_COMMITTED, _INCOMPLETE, _ORPHAN = StepStatus.COMMITTED, StepStatus.INCOMPLETE, StepStatus.ORPHAN
_STATUS_VALUE = {st: st.value for st in StepStatus}
_META_REASON = "the newest MetaGraphDef, which later steps (saved without one) need for import_meta_graph"


# --------------------------------------------------------------------------------------------
# entry point and gathering


def plan_retention(
    target: CheckpointDir | Location | str | os.PathLike[str],
    policies: Iterable[RetentionPolicy],
    *,
    prefix: str | None = None,
    now: float | None = None,
    state_filename: str = STATE_FILENAME,
    purge_quarantined: bool = False,
    meta_guard: str = "file",
    storage_options: dict[str, Any] | None = None,
) -> RetentionPlan:
    """Plan retention for a dir (or a ``CheckpointDir`` already discovered). See the module doc.

    ``prefix`` is the base name to manage (``ckpt``, ``model.ckpt``); ``None`` manages every base
    in the dir, each with its own guards.
    """
    ps = check_policies(policies)
    if meta_guard not in ("file", "step"):
        raise RetentionError(f"meta_guard must be 'file' or 'step', not {meta_guard!r}")
    with gc_paused():  # see discovery.gc_paused: ~1M objects, no cycles
        if isinstance(target, CheckpointDir):
            cdir = target
        else:
            loc = target if isinstance(target, Location) else Location.of(target, storage_options)
            cdir = discover(loc, state_filename=state_filename)
        inputs = gather_inputs(cdir, ps, prefix, time.time() if now is None else float(now))
        return compute_plan(replace(inputs, purge_quarantined=purge_quarantined, meta_guard=meta_guard))


@dataclass
class PlanInputs:
    """Everything planning reads, gathered before it: the plan itself is computed without I/O
    (except ``realpath`` of local symlinks)."""

    cdir: CheckpointDir
    steps: list[CheckpointStep]  # the managed steps (of ``prefix``, or all)
    policies: tuple[RetentionPolicy, ...]
    now: float
    prefix: str | None
    names: ListingNames
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    evaluations: Mapping[str, Mapping[str | None, Mapping[str, Any]]] = field(default_factory=dict)
    promotions: Mapping[str, list[dict[str, Any]]] = field(default_factory=dict)
    leases: Mapping[str, Lease] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    purge_quarantined: bool = False
    meta_guard: str = "file"


def gather_inputs(
    cdir: CheckpointDir, policies: tuple[RetentionPolicy, ...], prefix: str | None, now: float
) -> PlanInputs:
    """The managed steps, and what the policies and guards need: metrics, promotions, leases."""
    steps = list(cdir.steps) if prefix is None else [s for s in cdir.steps if s.base == prefix]
    if prefix is not None and not steps and any(s.prefix == prefix for s in cdir.steps):
        raise RetentionError(
            f"{prefix!r} names one step; pass its base name "
            f"({parse_prefix(prefix).base!r}) to manage that job's steps"
        )
    names = ListingNames.of(cdir.listing)
    inputs = PlanInputs(cdir, steps, policies, now, prefix, names, problems=list(cdir.problems))
    wanted = {ev for p in policies for ev in p.needs.evaluators}
    if wanted:
        from airflow_tf_ckpt.core.sidecars.metrics import evaluation_records

        inputs.evaluations = records = evaluation_records(
            replace(cdir, steps=steps), evaluators=wanted, problems=inputs.problems
        )
        inputs.metrics = {p: r["metrics"] for p, by_ev in records.items() if (r := by_ev.get(None))}
    inputs.promotions = promotions_for(policies, cdir)
    lease_names = names.leases({s.base for s in steps})
    if lease_names:
        inputs.leases = read_leases(cdir.location, lease_names, listing=cdir.listing)
    return inputs


def promotions_for(
    policies: Iterable[RetentionPolicy], cdir: CheckpointDir
) -> dict[str, list[dict[str, Any]]]:
    """``{prefix: records}`` of the dir's ``PROMOTIONS.json`` when a policy reads it (else ``{}``)."""
    needs = [p.needs for p in policies if p.needs.promotions]
    if not needs or PROMOTIONS_FILENAME not in cdir.listing:
        return {}
    return current_promotions(read_promotions(cdir.location), any(n.include_superseded for n in needs))


# --------------------------------------------------------------------------------------------
# the listing's names, looked at once


_ODD_CHAR = re.compile(r"[/\x00*?\[]")
#: what ``storage.write_atomic`` (``tempfile.mkstemp``) and promotion's local copies name their
#: temp files: ``.TARGET.XXXXXXXX.tmp``
_TEMP_FILE = re.compile(r"^\.(?P<target>[^\n]+)\.[a-z0-9_]{8}\.tmp$", re.M)
_SIDECAR_END = re.compile(
    r"(?:\.meta|\.metrics\.json|\.metrics~[A-Za-z0-9_.-]+\.json|\.quarantine\.json"
    r"|\.lease-[A-Za-z0-9_.@-]+)$",
    re.M,
)
_ORPHAN_ROLES = ("meta", "metrics", "quarantine", "lease")


class Orphan(NamedTuple):
    """A sidecar whose step has no checkpoint files."""

    name: str
    prefix: str
    role: str
    step: int
    info: FileInfo


@dataclass(frozen=True)
class ListingNames:
    """The listing's names joined into one text, so the rare names planning looks for (odd
    names, sidecars without a step, leases, temp files) are found by one C-level regex scan
    each instead of a Python-level test of each of 300k names."""

    listing: Mapping[str, FileInfo]
    text: str

    @classmethod
    def of(cls, listing: Mapping[str, FileInfo]) -> ListingNames:
        return cls(listing, "\n".join(listing))

    def _line(self, pos: int) -> str:
        end = self.text.find("\n", pos)
        return self.text[self.text.rfind("\n", 0, pos) + 1 : None if end < 0 else end]

    def bad(self, local: bool) -> frozenset[str]:
        """Listed names that :func:`safety.name_problem` refuses (usually none at all). Names
        holding a newline cannot be scanned line-wise and are checked one by one."""
        found = {self._line(m.start()) for m in _ODD_CHAR.finditer(self.text)}
        found.update(n for n in (".", "..", "") if n in self.listing)
        if self.text.count("\n") != max(len(self.listing) - 1, 0):  # some name holds a newline
            found.update(n for n in self.listing if "\n" in n)
        return frozenset(n for n in found if n in self.listing and name_problem(n, local) is not None)

    def leases(self, bases: set[str]) -> list[str]:
        """The lease files of steps of ``bases``."""
        if LEASE_INFIX not in self.text:
            return []
        names = [n for n in self.listing if LEASE_INFIX in n]
        return [
            n
            for n in names
            if (r := classify(n)) is not None and r.role == "lease" and parse_prefix(r.prefix).base in bases
        ]

    def orphans(self, cdir: CheckpointDir, bases: set[str]) -> dict[str, list[Orphan]]:
        """Sidecars (``.meta``, metrics, leases, quarantine records) of ``bases`` whose step has no
        checkpoint files, by base."""
        known: set[str] | None = None  # built on the first sidecar found (most dirs have none)
        out: dict[str, list[Orphan]] = {}
        for m in _SIDECAR_END.finditer(self.text):
            name = self.text[self.text.rfind("\n", 0, m.start()) + 1 : m.end()]
            info = self.listing.get(name)
            if info is None or info.is_dir:
                continue
            role = classify(name)
            if role is None or role.role not in _ORPHAN_ROLES or not role.prefix:
                continue
            if known is None:
                known = {s.prefix for s in cdir.steps}
            pn = parse_prefix(role.prefix)
            if role.prefix not in known and pn.base in bases and pn.step is not None:
                out.setdefault(pn.base, []).append(Orphan(name, role.prefix, role.role, pn.step, info))
        return out

    def temp_files(self) -> Iterable[tuple[FileInfo, str]]:
        """Temp files of atomic writes, with the name their write was for."""
        for m in _TEMP_FILE.finditer(self.text):
            info = self.listing.get(m.group(0))
            if info is not None:
                yield info, m.group("target")


# --------------------------------------------------------------------------------------------
# the plan, phase by phase


@dataclass
class _Dir:
    """Facts of the dir worked out once for all bases."""

    loc: Location
    real_root: str | None
    bad_names: frozenset[str]
    check_files: bool  # some listed name is odd or (locally) a symlink or a dir: check each file
    orphans: dict[str, list[Orphan]]
    lp_known: float | None  # the state file's last_preserved_timestamp (None: records none)

    def refusals(self, infos: Iterable[FileInfo]) -> list[Refusal]:
        """Files that must not be deleted: odd names, directories, local symlinks leading out."""
        out = []
        for f in infos:
            why = name_problem(f.name, self.loc.local)
            if why is None and f.is_dir:
                why = "is a directory: not removed"
            if why is None and f.is_link and self.loc.local:
                why = symlink_problem(self.loc, f.name, self.real_root)
            if why:
                out.append(Refusal(self.loc.display(f.name), why))
        return out


@dataclass
class _Draft:
    """The plan as it is built, base by base."""

    decisions: list[StepDecision] = field(default_factory=list)
    sidecars: list[SidecarDecision] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    protected_meta: dict[str, str] = field(default_factory=dict)
    settled_lp: list[float | None] = field(default_factory=list)  # per base with a walk
    delete_names: list[str] = field(default_factory=list)  # step files, in decision order
    deleted_in_state: set[str] = field(default_factory=set)
    deleted_orphans: set[str] = field(default_factory=set)  # deleted steps outside the state file


def compute_plan(inputs: PlanInputs) -> RetentionPlan:
    """The pure part of :func:`plan_retention`: no I/O except ``realpath`` of local symlinks.

    Written for 100k-step dirs: one sort per base, and no per-step work beyond a dict entry and a
    decision object.
    """
    by_base = _by_base(inputs.steps)
    dir_ = _dir_facts(inputs, set(by_base))
    draft = _Draft()
    for base, bsteps in by_base.items():
        _plan_base(inputs, dir_, base, bsteps, draft)
    if dir_.loc.local and not inputs.prefix:
        _plan_temp_files(inputs, dir_, draft)
    return _finish(inputs, dir_, draft)


def _by_base(steps: Sequence[CheckpointStep]) -> dict[str, list[CheckpointStep]]:
    """The steps by base name, each list oldest first."""
    by_base: dict[str, list[CheckpointStep]] = {}
    for s in steps:
        by_base.setdefault(s.base, []).append(s)
    for bsteps in by_base.values():
        try:  # step numbers are unique within a base: they order it...
            bsteps.sort(key=attrgetter("step"))
        except TypeError:  # ...unless a prefix has no step number
            bsteps.sort(key=step_order)
    return by_base


def _dir_facts(inputs: PlanInputs, bases: set[str]) -> _Dir:
    cdir, loc = inputs.cdir, inputs.cdir.location
    bad_names = inputs.names.bad(loc.local)
    check_files = bool(bad_names) or (
        loc.local
        and not cdir.regular_files_only
        and any(f.is_link or f.is_dir for f in cdir.listing.values())
    )
    lp = cdir.state.last_preserved_timestamp if cdir.state is not None else None
    orphans = inputs.names.orphans(cdir, bases)
    return _Dir(loc, root_realpath(loc), bad_names, check_files, orphans, lp or None)


def _plan_base(
    inputs: PlanInputs, dir_: _Dir, base: str, bsteps: list[CheckpointStep], draft: _Draft
) -> None:
    """Guards, policies, the ``.meta`` guard and a decision for each step of one base."""
    newest_i = next((i for i in range(len(bsteps) - 1, -1, -1) if bsteps[i].status is _COMMITTED), -1)
    if newest_i < 0:
        why = f"no committed step of {base!r} (the state file names none): nothing of it is touched"
        draft.decisions += [_decision(s, KEEP, [why]) for s in bsteps]
        return
    newest = bsteps[newest_i]
    guards = _Guards.of(bsteps, newest_i, inputs.purge_quarantined)
    ctx = PolicyContext(
        now=inputs.now,
        state=inputs.cdir.state,
        last_preserved_timestamp=dir_.lp_known,
        metrics=inputs.metrics,
        promotions=inputs.promotions,
        all_steps=bsteps,
        problems=inputs.problems,
        evaluations=inputs.evaluations,
    )
    keep = guards.keep
    for p in inputs.policies:
        for pfx, why in p.select(bsteps if p.needs.all_steps else guards.candidates, ctx).items():
            keep.setdefault(pfx, []).append(why)
    keep.setdefault(newest.prefix, []).insert(0, "newest committed step")
    for s in guards.latest:
        keep.setdefault(s.prefix, []).insert(0, "the state file's latest (model_checkpoint_path)")
    if inputs.leases:
        _keep_leased(bsteps, inputs.leases, inputs.now, keep)
    newest_no = newest.step if newest.step is not None else -1
    orphans = [o for o in dir_.orphans.get(base, []) if o.step < newest_no]
    pmeta = _protect_meta(bsteps, newest_i, orphans, inputs.meta_guard, keep)
    if pmeta is not None:
        draft.protected_meta[base] = pmeta
    _decide_steps(inputs, dir_, bsteps, guards, pmeta, draft)
    _decide_orphans(inputs, dir_, orphans, pmeta, draft)
    if ctx.sweep is not None and guards.candidates:
        draft.settled_lp.append(ctx.sweep.settled(guards.candidates, keep, dir_.lp_known))


@dataclass
class _Guards:
    """One base's steps sorted by the always-on guards: held, doomed whatever the policies say,
    or candidates for the policies."""

    keep: dict[str, list[str]]  # prefix -> keep reasons (absent: nothing keeps it)
    drop: dict[str, str]  # prefix -> why it goes (absent: no policy keeps it)
    candidates: list[CheckpointStep]
    latest: list[CheckpointStep]  # the state file's latest, when committed and older than the newest

    @classmethod
    def of(cls, bsteps: Sequence[CheckpointStep], newest_i: int, purge_quarantined: bool) -> _Guards:
        g = cls({}, {}, [], [])
        for i, s in enumerate(bsteps):
            older = i < newest_i
            if s.latest and older and s.status is _COMMITTED:
                g.latest.append(s)
            if s.sidecars and s.quarantined:  # whatever its status: set aside for inspection
                if purge_quarantined and older:
                    g.drop[s.prefix] = "quarantined; purge requested"
                else:
                    g.keep[s.prefix] = ["quarantined"]
            elif s.status is _INCOMPLETE:
                g._incomplete(s, older)
            elif older or s.status is _COMMITTED:
                g.candidates.append(s)
            else:
                g.keep[s.prefix] = [
                    "complete but not in the state file, and newer than the newest "
                    "committed step (possibly being committed)"
                ]
        return g

    def _incomplete(self, s: CheckpointStep, older: bool) -> None:
        if not older:
            self.keep[s.prefix] = [
                "incomplete and newer than the newest committed step (possibly being written)"
            ]
        elif not s.files:
            self.drop[s.prefix] = "named by the state file but none of its files exist"
        else:
            self.drop[s.prefix] = (
                "incomplete and older than the newest committed step (debris of an interrupted save or delete)"
            )


def _keep_leased(
    bsteps: Sequence[CheckpointStep], leases: Mapping[str, Lease], now: float, keep: dict[str, list[str]]
) -> None:
    for s in bsteps:
        if s.sidecars:
            for lf in s.leases:
                lease = leases.get(lf.name)
                if lease is not None and lease.active(now):
                    keep.setdefault(s.prefix, []).append(lease.describe())


def _protect_meta(
    bsteps: Sequence[CheckpointStep],
    newest_i: int,
    orphans: Sequence[Orphan],
    meta_guard: str,
    keep: dict[str, list[str]],
) -> str | None:
    """The newest ``.meta`` at or before the newest committed step (orphan ``.meta`` files
    included): never deleted. With ``meta_guard="step"`` its whole step is kept."""
    metas = [
        (step_order(s), s.prefix, f"{s.prefix}.meta")
        for s in bsteps[: newest_i + 1]
        if s.sidecars and s.has_meta
    ]
    metas += [
        ((o.step, o.info.mtime or 0.0, o.prefix), o.prefix, o.name) for o in orphans if o.role == "meta"
    ]
    if not metas:
        return None
    _, owner, name = max(metas)
    if meta_guard == "step" and owner != bsteps[newest_i].prefix and any(s.prefix == owner for s in bsteps):
        keep.setdefault(owner, []).append(
            "owns the newest .meta (MetaGraphDef); later steps were saved without one"
        )
    return name


def _decide_steps(
    inputs: PlanInputs,
    dir_: _Dir,
    bsteps: Sequence[CheckpointStep],
    guards: _Guards,
    pmeta: str | None,
    draft: _Draft,
) -> None:
    """A decision for each step of the base; the doomed steps' files join the deletion list."""
    keep, drop, plain_ok = guards.keep, guards.drop, not dir_.check_files
    for s in bsteps:
        reasons = keep.get(s.prefix)
        if reasons:
            draft.decisions.append(_decision(s, KEEP, reasons))
            continue
        files = s.files
        if plain_ok and not s.sidecars and files and files[0].name.endswith(".index"):
            # the common case, a step of an index and data shards and nothing else
            d = _decision(s, DELETE, [drop.get(s.prefix) or NOT_KEPT], tuple([f.name for f in files]))
        else:
            d = _general_decision(s, inputs, dir_, guards, pmeta, draft)
        draft.decisions.append(d)
        if d.action == DELETE:
            draft.delete_names += d.delete_files
            if s.in_state:
                draft.deleted_in_state.add(s.prefix)
            elif s.status is _ORPHAN:
                draft.deleted_orphans.add(s.prefix)


def _general_decision(
    s: CheckpointStep,
    inputs: PlanInputs,
    dir_: _Dir,
    guards: _Guards,
    pmeta: str | None,
    draft: _Draft,
) -> StepDecision:
    """A step that no one keeps, with sidecars, odd files or files out of order: what goes (the
    protected ``.meta`` stays), or a keep when a file is refused."""
    infos, kept_files = _files_to_delete(s, pmeta, inputs.leases, inputs.now)
    if dir_.check_files:
        bad = [f for f in infos if f.is_dir or (f.is_link and dir_.loc.local) or f.name in dir_.bad_names]
        refusals = dir_.refusals(bad) if bad else []
        if refusals:
            draft.refused += refusals
            reasons = [f"refused: {b.path} {b.reason}" for b in refusals]
            guards.keep[s.prefix] = reasons  # held, and unsettled (see Sweep.settled)
            return _decision(s, KEEP, reasons)
    reasons = [guards.drop.get(s.prefix) or NOT_KEPT]
    if kept_files:
        reasons.append(f"keeps {kept_files[0]}: {_META_REASON}")
    return _decision(s, DELETE, reasons, tuple([f.name for f in infos]), tuple(kept_files))


def _decision(
    s: CheckpointStep,
    action: str,
    reasons: list[str],
    delete_files: tuple[str, ...] = (),
    kept_files: tuple[str, ...] = (),
) -> StepDecision:
    """The decision for ``s``; it holds the step's files, whose sizes are read only when asked."""
    return StepDecision(
        s.prefix,
        s.base,
        s.step,
        _STATUS_VALUE[s.status],
        action,
        reasons,
        s.in_state,
        s.timestamp,
        s.files,
        delete_files,
        kept_files,
    )


def _files_to_delete(
    s: CheckpointStep, protected_meta: str | None, leases: Mapping[str, Lease], now: float
) -> tuple[list[FileInfo], list[str]]:
    """Files to delete for a dropped step: the index first (no reader sees it complete after the
    first removal), then data files, then sidecars. The protected ``.meta`` survives."""
    files = s.files
    if files and not files[0].name.endswith(".index"):
        files = sorted(files, key=lambda f: not f.name.endswith(".index"))
    side: list[FileInfo] = []
    kept: list[str] = []
    for f in s.sidecars:
        if f.name == protected_meta:
            kept.append(f.name)
        elif LEASE_INFIX in f.name and (lease := leases.get(f.name)) is not None and lease.active(now):
            kept.append(f.name)  # cannot happen for a dropped step (a lease keeps it); belt and braces
        else:
            side.append(f)
    return [*files, *side], kept


def _decide_orphans(
    inputs: PlanInputs, dir_: _Dir, orphans: Sequence[Orphan], pmeta: str | None, draft: _Draft
) -> None:
    """Sidecars whose step has no checkpoint files left: gone, unless they still mean something."""
    for o in sorted(orphans, key=lambda o: o.name):
        action, reason = _orphan_fate(o, pmeta, inputs.leases, inputs.now, inputs.purge_quarantined)
        if action == DELETE:
            refusals = dir_.refusals([o.info])
            if refusals:
                draft.refused += refusals
                action, reason = KEEP, f"refused: {refusals[0].reason}"
        draft.sidecars.append(SidecarDecision(o.name, o.prefix, o.role, action, reason))


def _orphan_fate(
    o: Orphan, pmeta: str | None, leases: Mapping[str, Lease], now: float, purge_quarantined: bool
) -> tuple[str, str]:
    if o.role == "meta" and pmeta == o.name:
        return KEEP, _META_REASON
    if o.role == "lease":
        lease = leases.get(o.name)
        if lease is None or lease.active(now):
            return KEEP, (lease.describe() if lease else "lease (unread)")
        return DELETE, "expired lease of a step whose checkpoint files are gone"
    if o.role == "quarantine" and not purge_quarantined:
        return KEEP, "quarantine record (purge not requested)"
    return DELETE, "sidecar of a step whose checkpoint files are gone"


def _plan_temp_files(inputs: PlanInputs, dir_: _Dir, draft: _Draft) -> None:
    """Temp files of atomic writes that died before their rename (ours: state file, manifests,
    metrics, promotions; they are never read): gone once clearly abandoned."""
    now = inputs.now
    for info, target in inputs.names.temp_files():
        if info.is_dir or info.is_link or info.mtime is None or now - info.mtime < TEMP_FILE_TTL_S:
            continue
        refusals = dir_.refusals([info])
        if refusals:
            draft.refused += refusals
            continue
        age_min = int((now - info.mtime) // 60)
        why = f"temp file of a write to {target} that never finished ({age_min} min old)"
        draft.sidecars.append(SidecarDecision(info.name, target, "temp", DELETE, why))


# --------------------------------------------------------------------------------------------
# the state file and the plan


def _last_preserved_after(inputs: PlanInputs, draft: _Draft, before: float | None) -> float | None:
    """Where ``last_preserved_timestamp`` goes: as far as every base's walk settled it."""
    settled = draft.settled_lp
    if not tracks_last_preserved(inputs.policies) or not settled or None in settled:
        return before
    return max(min(x for x in settled if x is not None), before or 0.0)


def _new_state(
    inputs: PlanInputs, draft: _Draft, lp_after: float | None
) -> tuple[list[str], StateFile | None]:
    """The state-file spellings to drop (every one of a deleted step) and the state file after;
    state-file paths that discovery did not follow join the refusals."""
    cdir, state = inputs.cdir, inputs.cdir.state
    drop_paths: list[str] = []
    for r in cdir.resolved:
        if r.how == "refused":
            draft.refused.append(Refusal(r.raw, f"state-file path not followed: {r.problem}"))
        if state is not None and r.name is not None and r.name in draft.deleted_in_state:
            drop_paths.append(r.raw)
    if state is None:
        return drop_paths, None
    if drop_paths:
        all_raw = set(state.all_model_checkpoint_paths)
        if state.model_checkpoint_path:
            all_raw.add(state.model_checkpoint_path)
        new_state = state.retained(all_raw.difference(drop_paths))
    else:
        new_state = replace(
            state,
            all_model_checkpoint_paths=list(state.all_model_checkpoint_paths),
            all_model_checkpoint_timestamps=list(state.all_model_checkpoint_timestamps),
        )
    new_state.last_preserved_timestamp = lp_after if lp_after is not None else 0.0
    return drop_paths, new_state


def _warn_unkept_preserved(inputs: PlanInputs, dir_: _Dir, draft: _Draft) -> None:
    """Steps TF seems to have preserved for good that no policy here keeps: worth a problem."""
    lp = dir_.lp_known
    if tracks_last_preserved(inputs.policies) or lp is None or not draft.deleted_orphans:
        return
    lost = [
        s.prefix
        for s in inputs.steps
        if s.prefix in draft.deleted_orphans
        and not s.in_state
        and s.status is _ORPHAN
        and s.timestamp is not None
        and s.timestamp <= lp
    ]
    if lost:
        inputs.problems.append(
            f"{len(lost)} step(s) look preserved by TF's keep_checkpoint_every_n_hours "
            f"(saved at or before last_preserved_timestamp) and no keep_every_hours policy "
            f"keeps them: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}"
        )


def _finish(inputs: PlanInputs, dir_: _Dir, draft: _Draft) -> RetentionPlan:
    cdir, state = inputs.cdir, inputs.cdir.state
    lp_before = state.last_preserved_timestamp if state is not None else None
    lp_after = _last_preserved_after(inputs, draft, lp_before)
    drop_paths, new_state = _new_state(inputs, draft, lp_after)
    _warn_unkept_preserved(inputs, dir_, draft)
    root = dir_.loc.path.rstrip("/")
    names = draft.delete_names + [sc.name for sc in draft.sidecars if sc.action == DELETE]
    return RetentionPlan(
        location=dir_.loc,
        prefix=inputs.prefix,
        state_filename=cdir.state_filename,
        now=inputs.now,
        policies=inputs.policies,
        decisions=draft.decisions,
        sidecars=draft.sidecars,
        state_before=state,
        new_state=new_state,
        state_changed=new_state is not None and new_state != state,
        drop_paths=drop_paths,
        delete_files=list(map((root + "/" if root else "/").__add__, names)),
        protected_meta=draft.protected_meta,
        last_preserved_before=lp_before,
        last_preserved_after=lp_after,
        refused=draft.refused,
        problems=inputs.problems,
        purge_quarantined=inputs.purge_quarantined,
        meta_guard=inputs.meta_guard,
        root_realpath=dir_.real_root,
        listing=cdir.listing,
    )
