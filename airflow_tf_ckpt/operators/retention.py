"""``CheckpointRetentionOperator``: apply the core's retention policies to a checkpoint dir.

A thin adapter over ``core.retention`` (the plan: which steps each policy keeps, and why) and
``core.gc`` (the deletion: the state file is rewritten first, then the files go). Leased steps
(an evaluation in progress), quarantined steps, pinned and promoted steps are never deleted.

The full plan is logged as a table; the XCom stays SMALL (counts and the deleted step numbers),
because a dir with thousands of steps would otherwise push a huge value into the metadata DB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, format_table, human_bytes

MAX_XCOM_STEPS = 1000  # deleted step numbers listed in the XCom (the count is always exact)


def _as_dict(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {}


def _opt_int(value: Any) -> int | None:
    return None if value in (None, "", "None") else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value in (None, "", "None") else float(value)


class CheckpointRetentionOperator(BaseCheckpointOperator):
    """Delete the checkpoint steps that no retention policy keeps (or only plan it: ``dry_run``).

    :param ckpt_dir: checkpoint dir, local or ``gs://`` (templated).
    :param prefix: only steps of this base name (``ckpt``), for dirs shared by several jobs.
    :param keep_last: keep the N newest committed steps.
    :param keep_every_hours: keep one step per H hours (TF's ``keep_checkpoint_every_n_hours``).
    :param keep_every_steps: keep steps whose number is a multiple of S.
    :param keep_best: keep the K best steps by ``metric`` (from the metrics sidecars).
    :param metric: metric name for ``keep_best``; ``mode`` ``min`` or ``max`` says which is best.
    :param pins: step numbers never to delete.
    :param dry_run: log the plan, delete nothing.

    At least one policy is required: "delete everything" is never what a retention run means.
    Returns (XCom): ``dry_run``, ``kept``, ``deleted``, ``deleted_steps`` (at most 1000 numbers),
    ``bytes_freed``.
    """

    template_fields: Sequence[str] = ("ckpt_dir", "prefix", "keep_last", "keep_every_hours",
                                      "keep_every_steps", "keep_best", "metric", "mode", "pins", "dry_run")
    ui_color = "#b0c4de"

    def __init__(self, *, ckpt_dir: str, prefix: str | None = None, keep_last: int | None = None,
                 keep_every_hours: float | None = None, keep_every_steps: int | None = None,
                 keep_best: int | None = None, metric: str | None = None, mode: str = "min",
                 pins: Sequence[int] | None = None, dry_run: bool = False, **kwargs: Any) -> None:
        super().__init__(ckpt_dir=ckpt_dir, step=None, prefix=prefix, **kwargs)
        self.keep_last = keep_last
        self.keep_every_hours = keep_every_hours
        self.keep_every_steps = keep_every_steps
        self.keep_best = keep_best
        self.metric = metric
        self.mode = mode
        self.pins = list(pins or [])
        self.dry_run = dry_run
        if keep_best and not metric:
            raise ValueError("keep_best needs metric=NAME")
        if mode not in ("min", "max") and "{{" not in str(mode):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")

    def policies(self) -> list[Any]:
        from airflow_tf_ckpt.core.retention import policies_from_options

        pins = self.pins
        if isinstance(pins, str):  # a templated list renders to text
            pins = [p for p in pins.strip("[]() ").replace(",", " ").split() if p]
        policies = policies_from_options(
            keep_last=_opt_int(self.keep_last), keep_every_hours=_opt_float(self.keep_every_hours),
            keep_every_steps=_opt_int(self.keep_every_steps), keep_best=_opt_int(self.keep_best),
            metric=self.metric or None, mode=str(self.mode), pins=[int(p) for p in pins])
        if not policies:
            raise ValueError("no retention policy given: set keep_last, keep_every_hours, "
                             "keep_every_steps, keep_best or pins (deleting everything is not an option)")
        return policies

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_tf_ckpt.core.gc import apply_plan
        from airflow_tf_ckpt.core.retention import plan_retention

        dry_run = self.dry_run if isinstance(self.dry_run, bool) else \
            str(self.dry_run).strip().lower() in ("1", "true", "yes", "on")
        loc = self.get_location()
        plan = plan_retention(loc, self.policies(), prefix=self.prefix or None)
        self.log.info("Retention plan for %s:\n%s", loc.display(), self.plan_table(plan))
        self.log.info("%s", plan.summary())
        result = apply_plan(plan, dry_run=dry_run)
        out = self.small_result(plan, result, dry_run)
        if dry_run:
            self.log.info("DRY RUN: nothing deleted; %d step(s) would be deleted: %s", out["deleted"],
                          out["deleted_steps"])
        else:
            self.log.info("Deleted %d step(s) %s, freed %s; kept %d", out["deleted"], out["deleted_steps"],
                          human_bytes(out["bytes_freed"]), out["kept"])
        return out

    @staticmethod
    def plan_table(plan: Any) -> str:
        d = _as_dict(plan)
        rows = d.get("steps") or d.get("decisions") or []
        table_rows = []
        for r in rows:
            action = str(r.get("action") or ("keep" if r.get("keep") else "delete"))
            why = r.get("reasons") or r.get("why") or r.get("reason") or ""
            if isinstance(why, (list, tuple)):
                why = ", ".join(str(x) for x in why)
            table_rows.append(["-" if r.get("step") is None else r.get("step"), r.get("prefix", ""),
                               action, human_bytes(r.get("size") or 0), why])
        return format_table(["step", "prefix", "action", "size", "why"], table_rows) if table_rows \
            else "(no steps)"

    @staticmethod
    def small_result(plan: Any, result: Any, dry_run: bool) -> dict[str, Any]:
        d = _as_dict(plan)
        rows = d.get("steps") or d.get("decisions") or []
        deleted_rows = [r for r in rows
                        if not str(r.get("action") or ("keep" if r.get("keep") else "delete")).startswith("keep")]
        kept = len(rows) - len(deleted_rows)
        deleted_steps = [r.get("step") if r.get("step") is not None else r.get("prefix") for r in deleted_rows]
        bytes_freed = sum(int(r.get("size") or 0) for r in deleted_rows)
        return {"dry_run": dry_run, "kept": kept, "deleted": len(deleted_rows),
                "deleted_steps": deleted_steps[:MAX_XCOM_STEPS], "bytes_freed": 0 if dry_run else bytes_freed}
