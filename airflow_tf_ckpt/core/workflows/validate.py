"""Validate steps: lease → verify → quarantine, the ONE workflow of ``tf-ckpt validate`` and
``ValidateCheckpointOperator`` (they only choose the steps and format the result).

**The verdict** of a step (``StepValidation.ok``) is what TensorFlow's restore of it would meet:
every problem the TF-free verifier finds (``core.verify``), every file the layout says is missing,
and what discovery saw beside the files the index names (stray shards, a shard count the shards
disagree on): those are reported too, as ``layout`` problems, because a dir in that state is not
what TF wrote.

**The quarantine rule** (``quarantine=True``): a failed step is quarantined (dropped from the
state file, so ``tf.train.latest_checkpoint`` falls back to the last good step; marked, so GC
keeps it and promotion refuses it) only when a restore of it would fail AND quarantining changes
what TF restores. So a failed step is NOT quarantined when

* its only problems are ``layout`` ones: TF restores it all the same (it opens the shards its
  index names, nothing else), so marking it corrupt would be a lie;
* it is incomplete and the state file does not name it: ``latest_checkpoint`` never reaches it,
  and it may be a save in progress (the index and the state file are written last), which a
  quarantine would mark corrupt for good;
* it is quarantined already: its record, with the first report, is kept;
* a GC run is deleting it (``QuarantineConflictError``) or its files are gone.

Each "not quarantined" is a warning in the result; the step still fails.

**Leases** (``lease_owner``): each step is leased before it is verified, so a retention run
cannot delete it under the verifier (which would then report, and quarantine, "missing" files).
A step a GC run is deleting right now is skipped (``skipped``), as is one deleted before its
lease was held; the leased steps are looked up again, so what is verified is what is there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from airflow_tf_ckpt.core.verify.report import Problem, VerifyReport

#: ``progress(bytes_done, bytes_total, prefix)`` over all the steps of one call
ValidateProgress = Callable[[int, int, str], None]

SKIP_GC, SKIP_GONE = "gc", "gone"


@dataclass
class Quarantined:
    """What ``quarantine=True`` did to one failed step."""

    quarantined: bool  # the step carries a quarantine record now (new or kept)
    already: bool = False  # it had one before this run (kept, not replaced)
    new_latest: str | None = None  # the state file's latest after a new quarantine


@dataclass
class StepValidation:
    """One step's verdict: the verifier's report plus what the layout says about the step."""

    step: CheckpointStep
    report: VerifyReport
    layout: list[Problem] = field(default_factory=list)  # TF restores the step all the same
    quarantine: Quarantined | None = None  # None: quarantine was not asked for, or not needed

    @property
    def problems(self) -> list[Problem]:
        return [*self.report.problems, *self.layout]

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.layout

    @property
    def restore_fails(self) -> bool:
        """A TF restore of this step would fail (a layout problem alone does not fail it)."""
        return not self.report.ok

    def to_dict(self, *, with_quarantine: bool = True) -> dict[str, Any]:
        """The report's dict with the step's number, status and verdict (and, when asked, what
        quarantine did: the record itself keeps only the verdict)."""
        doc = self.report.to_dict()
        doc.update(
            step=self.step.step,
            status=self.step.status.value,
            ok=self.ok,
            problems=[p.to_dict() for p in self.problems],
        )
        if with_quarantine and self.quarantine is not None:
            doc.update(
                quarantined=self.quarantine.quarantined,
                already_quarantined=self.quarantine.already,
                new_latest=self.quarantine.new_latest,
            )
        return doc


@dataclass(frozen=True)
class Skipped:
    """A step that was not verified: ``why`` is ``SKIP_GC`` or ``SKIP_GONE``."""

    prefix: str
    why: str
    message: str  # also in the result's warnings
    detail: str = ""  # the lease's own words (which GC run, until when)


@dataclass
class ValidationResult:
    location: Location
    steps: list[StepValidation] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def problem_count(self) -> int:
        return sum(len(s.problems) for s in self.steps)


def validate_steps(
    loc: Location,
    steps: Sequence[CheckpointStep],
    *,
    state_filename: str = "checkpoint",
    lease_owner: str | None = None,
    lease_ttl: float = 3600.0,
    lease_supersedes: Sequence[str] = (),
    quarantine: bool = False,
    reason: str = "validation failed",
    progress: ValidateProgress | None = None,
    concurrency: int = 4,
) -> ValidationResult:
    """Verify ``steps`` of ``loc`` (see the module docstring for the rules); never raises for a
    damaged step. With ``lease_owner`` every step is leased for the verification and the
    quarantine; ``reason`` heads each quarantine record (the problem count is appended)."""
    result = ValidationResult(loc)
    with contextlib.ExitStack() as held:
        if lease_owner is not None:
            steps = _lease(loc, steps, held, lease_owner, lease_ttl, result, lease_supersedes)
        total = sum(s.size for s in steps)
        done_before = 0
        for s in steps:
            on_progress = _step_progress(progress, done_before, total, s.prefix)
            result.steps.append(_verify(loc, s, on_progress, concurrency, result.warnings))
            done_before += s.size
        if quarantine:
            for v in result.steps:
                _quarantine(loc, v, reason, state_filename, result.warnings)
    return result


# ---------------------------------------------------------------------------------------------
# phases


def _lease(
    loc: Location,
    steps: Sequence[CheckpointStep],
    held: contextlib.ExitStack,
    owner: str,
    ttl_s: float,
    result: ValidationResult,
    supersedes: Sequence[str] = (),
) -> list[CheckpointStep]:
    """Lease each step (taking over the ``supersedes`` owners' leases once held); return the
    leased ones as listed again once held (a GC run may have deleted one between the caller's
    listing and its lease)."""
    from airflow_tf_ckpt.core.sidecars.leases import LeaseConflictError, leased

    kept: list[str] = []
    for s in steps:
        try:
            held.enter_context(leased(loc, s.prefix, owner, float(ttl_s), supersedes=supersedes))
        except LeaseConflictError as exc:
            _skip(
                result, Skipped(s.prefix, SKIP_GC, f"{s.prefix}: skipped: a GC run is deleting it", str(exc))
            )
            continue
        kept.append(s.prefix)
    if not kept:
        return []
    fresh = discover(loc, None)
    out = []
    for prefix in kept:
        try:
            out.append(fresh.get(prefix))
        except StepNotFoundError:
            _skip(result, Skipped(prefix, SKIP_GONE, f"{prefix}: skipped: deleted before it could be leased"))
    return out


def _skip(result: ValidationResult, skipped: Skipped) -> None:
    result.skipped.append(skipped)
    result.warnings.append(skipped.message)


def _step_progress(
    progress: ValidateProgress | None, base: int, total: int, prefix: str
) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, _total: progress(base + done, total, prefix)


def _verify(
    loc: Location,
    s: CheckpointStep,
    progress: Callable[[int, int], None] | None,
    concurrency: int,
    warnings: list[str],
) -> StepValidation:
    """The step's report: the verifier's, or (an incomplete V2 step without an index, which
    has nothing to read) its missing files; plus missing files and layout findings beside it."""
    incomplete = s.status is StepStatus.INCOMPLETE
    if incomplete and s.format == "v2" and not any(f.name.endswith(".index") for f in s.files):
        report = VerifyReport(ok=False, prefix=s.prefix, format=s.format, location=loc.display(s.prefix))
        report.problems = [_missing(loc, m) for m in s.missing]
    else:
        report = verify_step(loc, s.prefix, progress=progress, concurrency=concurrency, format=s.format)
        warnings += report.warnings
        if incomplete:  # the files the verifier did not name already (a "?" name is a pattern)
            known = {p.file for p in report.problems}
            report.problems += [
                _missing(loc, m) for m in s.missing if loc.display(m) not in known and "?" not in m
            ]
    if incomplete:
        report.ok = False
    layout = [
        Problem(loc.display(s.prefix), None, "layout", p)
        for p in s.problems
        if not (incomplete and "files are missing" in p)
    ]
    return StepValidation(s, report, layout)


def _missing(loc: Location, name: str) -> Problem:
    return Problem(loc.display(name), None, "missing_file", "file is missing (step incomplete)")


def _quarantine(
    loc: Location, v: StepValidation, reason: str, state_filename: str, warnings: list[str]
) -> None:
    """Quarantine one failed step by the module's rule; anything not done is a warning."""
    from airflow_tf_ckpt.core.sidecars.quarantine import QuarantineConflictError, quarantine_step

    s = v.step
    if v.ok:
        return
    if s.quarantined:
        v.quarantine = Quarantined(True, already=True)
        warnings.append(f"{s.prefix}: already quarantined; its record is kept")
        return
    v.quarantine = Quarantined(False)
    if why_not := _not_quarantined_because(v):
        warnings.append(f"{s.prefix}: not quarantined: {why_not}")
        return
    try:
        q = quarantine_step(
            loc,
            s.prefix,
            f"{reason}: {len(v.problems)} problem(s)",
            v.to_dict(with_quarantine=False),
            state_filename=state_filename,
        )
    except StepNotFoundError:
        warnings.append(f"{s.prefix}: not quarantined: its files are gone")
        return
    except QuarantineConflictError:
        warnings.append(f"{s.prefix}: not quarantined: a GC run is deleting it")
        return
    v.quarantine = Quarantined(True, new_latest=q.new_latest)


def _not_quarantined_because(v: StepValidation) -> str | None:
    if not v.restore_fails:
        return "TF restores it all the same (only layout problems)"
    if v.step.status is StepStatus.INCOMPLETE and not v.step.in_state:
        return "incomplete and not named by the state file (a save may be in progress)"
    return None


def dir_findings(
    cdir: CheckpointDir, prefix: str | None, *, check_latest: bool
) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of the dir itself, beside its steps' verdicts.

    A state-file path that resolves to nothing here breaks TF's restore: a problem; one re-homed
    by basename (the dir was moved) is only a warning. With ``check_latest``, a state file whose
    latest is not the step a restore falls back to (``latest_problem``) is a problem too."""
    refused = {
        f"{cdir.location.display(cdir.state_filename)}: {r.raw!r}: {r.problem}"
        for r in cdir.resolved
        if r.how == "refused"
    }
    problems = [p for p in cdir.problems if p in refused]
    warnings = [p for p in cdir.problems if p not in refused]
    if check_latest and (lp := cdir.latest_problem(prefix)):
        problems.append(lp)
    return problems, warnings
