"""The retention plan as plain data: one decision per step (keep|delete, with every reason), the
sidecars left without a step, the state file to write. What a dry run prints and what
:func:`airflow_tf_ckpt.core.retention.executor.apply_plan` executes; nothing here does I/O.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_tf_ckpt.core.formats.state import StateFile
from airflow_tf_ckpt.core.retention.policies import RetentionPolicy
from airflow_tf_ckpt.core.storage.location import FileInfo, Location
from airflow_tf_ckpt.core.storage.safety import Refusal

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir

KEEP, DELETE = "keep", "delete"
NOT_KEPT = "not kept by any policy"


@dataclass(slots=True)
class StepDecision:
    """keep|delete for one step, with every reason, and the files that would go.

    ``files`` are the step's checkpoint files (index, data shards) as listed, and ``size`` is
    summed from them when read. A local listing reads file sizes lazily (see
    :class:`~airflow_tf_ckpt.core.storage.location.FileInfo`), and a plan of 100k steps must not
    stat 200k files for a figure that only reports show. Each FileInfo keeps what it read, so GC,
    which reads the sizes of the steps it deletes before deleting them, reports the same figure
    after the files are gone.
    """

    prefix: str
    base: str
    step: int | None
    status: str
    action: str
    reasons: list[str]
    in_state: bool
    timestamp: float | None
    files: Sequence[FileInfo]  # the step's checkpoint files (index, data shards): its size
    delete_files: tuple[str, ...] = ()  # names, deletion order
    kept_files: tuple[str, ...] = ()  # names that survive although the step goes

    @property
    def size(self) -> int:
        """Bytes of the step's checkpoint files (index, data)."""
        return sum(f.size for f in self.files)

    @property
    def keep(self) -> bool:
        return self.action == KEEP

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "base": self.base,
            "step": self.step,
            "status": self.status,
            "action": self.action,
            "reasons": self.reasons,
            "in_state": self.in_state,
            "timestamp": self.timestamp,
            "size": self.size,
            "delete_files": list(self.delete_files),
            "kept_files": list(self.kept_files),
        }


@dataclass(slots=True)
class SidecarDecision:
    """A sidecar whose step has no checkpoint files left (``.meta``, metrics, lease, quarantine)."""

    name: str
    prefix: str
    role: str
    action: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class RetentionPlan:
    """The result of :func:`~airflow_tf_ckpt.core.retention.planner.plan_retention`: data only;
    :func:`~airflow_tf_ckpt.core.retention.executor.apply_plan` executes it."""

    location: Location
    prefix: str | None
    state_filename: str
    now: float
    policies: tuple[RetentionPolicy, ...]
    decisions: list[StepDecision]
    sidecars: list[SidecarDecision]
    state_before: StateFile | None
    new_state: StateFile | None
    state_changed: bool
    drop_paths: list[str]  # raw state-file spellings that the new state file no longer names
    delete_files: list[str]  # exact filesystem paths, in deletion order
    protected_meta: dict[str, str]  # base -> the .meta name that is never deleted
    last_preserved_before: float | None
    last_preserved_after: float | None
    refused: list[Refusal]
    problems: list[str]
    purge_quarantined: bool = False
    meta_guard: str = "file"
    root_realpath: str | None = None
    # the listing the plan was made from: GC re-lists only the sidecars on object stores and
    # takes the step files from here (see executor.apply_plan)
    listing: Mapping[str, FileInfo] | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> dict[str, frozenset[str]]:
        """The file names each doomed step had at planning time (GC checks nothing new appeared)."""
        return {d.prefix: frozenset(d.delete_files) | frozenset(d.kept_files) for d in self.deleted}

    @property
    def kept(self) -> list[StepDecision]:
        return [d for d in self.decisions if d.action == KEEP]

    @property
    def deleted(self) -> list[StepDecision]:
        return [d for d in self.decisions if d.action == DELETE]

    def decision(self, prefix: str) -> StepDecision:
        for d in self.decisions:
            if d.prefix == prefix:
                return d
        raise KeyError(prefix)

    @property
    def bytes_to_free(self) -> int:
        return sum(d.size for d in self.deleted)

    def replan(
        self,
        now: float | None = None,
        target: CheckpointDir | Location | str | os.PathLike[str] | None = None,
    ) -> RetentionPlan:
        """The same request planned again against a fresh listing (or ``target``)."""
        from airflow_tf_ckpt.core.retention.planner import plan_retention

        return plan_retention(
            target if target is not None else self.location,
            self.policies,
            prefix=self.prefix,
            now=now,
            state_filename=self.state_filename,
            purge_quarantined=self.purge_quarantined,
            meta_guard=self.meta_guard,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.location.display(),
            "prefix": self.prefix,
            "now": self.now,
            "policies": [p.to_dict() for p in self.policies],
            "purge_quarantined": self.purge_quarantined,
            "meta_guard": self.meta_guard,
            "steps": [d.to_dict() for d in self.decisions],
            "sidecars": [s.to_dict() for s in self.sidecars],
            "state_file": {
                "name": self.state_filename,
                "changed": self.state_changed,
                "drop_paths": self.drop_paths,
                "new": _state_dict(self.new_state),
            },
            "last_preserved_timestamp": {
                "before": self.last_preserved_before,
                "after": self.last_preserved_after,
            },
            "delete_files": [self._display(p) for p in self.delete_files],
            "protected_meta": self.protected_meta,
            "refused": [r.to_dict() for r in self.refused],
            "problems": self.problems,
            "counts": {
                "steps": len(self.decisions),
                "keep": len(self.kept),
                "delete": len(self.deleted),
                "files": len(self.delete_files),
                "bytes": self.bytes_to_free,
            },
        }

    def _display(self, path: str) -> str:
        return path if self.location.local else self.location.display(path.rsplit("/", 1)[-1])

    def summary(self, limit: int = 10) -> str:
        dels = [d.prefix for d in self.deleted]
        shown = ", ".join(dels[:limit]) + (f", ... (+{len(dels) - limit} more)" if len(dels) > limit else "")
        parts = [
            f"{self.location.display()}: {len(self.decisions)} step(s): {len(self.kept)} kept, "
            f"{len(dels)} to delete" + (f" ({shown})" if dels else ""),
            f"{len(self.delete_files)} file(s), {self.bytes_to_free} bytes",
            "state file " + ("to be rewritten" if self.state_changed else "unchanged"),
        ]
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return "; ".join(parts)


def _state_dict(st: StateFile | None) -> dict[str, Any] | None:
    if st is None:
        return None
    return {
        "model_checkpoint_path": st.model_checkpoint_path,
        "all_model_checkpoint_paths": st.all_model_checkpoint_paths,
        "all_model_checkpoint_timestamps": st.all_model_checkpoint_timestamps,
        "last_preserved_timestamp": st.last_preserved_timestamp,
    }
