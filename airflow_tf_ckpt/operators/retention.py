"""``CheckpointRetentionOperator``: apply the core's retention policies to a checkpoint dir.

A thin adapter over ``core.retention.planner`` (the plan: which steps each policy keeps, and why)
and ``core.retention.executor`` (the deletion: the state file is rewritten first, then the files go). Leased steps
(an evaluation in progress), quarantined steps, pinned and promoted steps are never deleted.

The full plan is logged as a table; the XCom stays SMALL (counts and the deleted step numbers),
because a dir with thousands of steps would otherwise push a huge value into the metadata DB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_tf_ckpt.core.display import human_bytes
from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, format_table

MAX_XCOM_STEPS = 1000  # deleted step numbers listed in the XCom (the count is always exact)


def _opt_int(value: Any) -> int | None:
    return None if value in (None, "", "None") else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value in (None, "", "None") else float(value)


def _seconds(value: Any) -> float | None:
    """A duration: seconds, a ``timedelta``, or text (``"90"``, ``"30m"``, ``"24h"``, ``"2d"``)."""
    from datetime import timedelta

    if isinstance(value, timedelta):
        return value.total_seconds()
    if value in (None, "", "None"):
        return None
    from airflow_tf_ckpt.core.retention.policies import parse_duration

    return parse_duration(str(value)) if isinstance(value, str) else float(value)


def _names(value: Any) -> list[str]:
    """Evaluator names from a list, or from text (a templated list renders to ``"['a', 'b']"``)."""
    if value in (None, "", "None"):
        return []
    if isinstance(value, str):
        return [n.strip(" '\"") for n in value.strip("[]() ").replace(",", " ").split() if n.strip(" '\"")]
    return [str(n) for n in value]


class CheckpointRetentionOperator(BaseCheckpointOperator):
    """Delete the checkpoint steps that no retention policy keeps (or only plan it: ``dry_run``).

    :param ckpt_dir: checkpoint dir, local or ``gs://`` (templated).
    :param prefix: only steps of this base name (``ckpt``), for dirs shared by several jobs.
    :param keep_last: keep the N newest committed steps.
    :param keep_every_hours: keep one step per H hours (TF's ``keep_checkpoint_every_n_hours``).
    :param keep_every_steps: keep steps whose number is a multiple of S.
    :param keep_best: keep the K best steps by ``metric`` (from the metrics sidecars).
    :param metric: metric name for ``keep_best``; ``mode`` ``min`` or ``max`` says which is best.
    :param unevaluated: ``keep_best``'s treatment of steps with no metric yet: ``keep`` (default:
        an evaluator may still be coming), ``newer`` or ``drop``.
    :param evaluator: whose metrics ``keep_best`` ranks by (the ``evaluator`` given to
        ``EvaluateCheckpointOperator``; ``None``: the default sidecar).
    :param keep_unevaluated: evaluator names (e.g. the evaluating DAGs' dag_ids): keep every step
        one of them has not evaluated yet...
    :param unevaluated_max_age: ...for at most this long after its save (seconds, a
        ``timedelta`` or ``"24h"``; default 24 h; ``None``: no bound).
    :param pins: step numbers never to delete.
    :param keep_promoted: keep the steps recorded as promoted in the dir (default True).
    :param dry_run: log the plan, delete nothing (kept as the ``plan_only`` attribute, a
        template field: ``dry_run`` is ``BaseOperator.dry_run()``).

    A dir that does not exist (yet: nothing was trained) is nothing to do: the task succeeds and
    logs it (XCom ``missing_dir: True``). A dir that exists but cannot be read fails the task.

    At least one policy is required: "delete everything" is never what a retention run means.
    Returns (XCom): ``dry_run``, ``kept``, ``deleted`` (counts), ``deleted_steps`` (at most 1000 step
    numbers; with ``dry_run``, the steps that WOULD go), ``bytes_freed`` / ``bytes_to_free``,
    ``state_file_rewritten``.
    """

    template_fields: Sequence[str] = (
        "ckpt_dir",
        "prefix",
        "keep_last",
        "keep_every_hours",
        "keep_every_steps",
        "keep_best",
        "metric",
        "mode",
        "pins",
        "plan_only",
        "evaluator",
        "keep_unevaluated",
        "unevaluated_max_age",
    )
    ui_color = "#b0c4de"

    def __init__(
        self,
        *,
        ckpt_dir: str,
        prefix: str | None = None,
        keep_last: int | None = None,
        keep_every_hours: float | None = None,
        keep_every_steps: int | None = None,
        keep_best: int | None = None,
        metric: str | None = None,
        mode: str = "min",
        pins: Sequence[int] | None = None,
        unevaluated: str = "keep",
        keep_promoted: bool = True,
        dry_run: bool = False,
        evaluator: str | None = None,
        keep_unevaluated: Sequence[str] | None = None,
        unevaluated_max_age: Any = 86400.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(ckpt_dir=ckpt_dir, step=None, prefix=prefix, **kwargs)
        self.keep_last = keep_last
        self.keep_every_hours = keep_every_hours
        self.keep_every_steps = keep_every_steps
        self.keep_best = keep_best
        self.metric = metric
        self.mode = mode
        self.pins = list(pins or [])
        self.unevaluated = unevaluated
        self.keep_promoted = keep_promoted
        # not ``self.dry_run``: that would shadow ``BaseOperator.dry_run()``
        self.plan_only = dry_run
        self.evaluator = evaluator
        self.keep_unevaluated = keep_unevaluated
        self.unevaluated_max_age = unevaluated_max_age
        if keep_best and not metric:
            raise ValueError("keep_best needs metric=NAME")
        if mode not in ("min", "max") and "{{" not in str(mode):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")

    def policies(self) -> list[Any]:
        from airflow_tf_ckpt.core.retention.policies import policies_from_options

        pins = self.pins
        if isinstance(pins, str):  # a templated list renders to text
            pins = [p for p in pins.strip("[]() ").replace(",", " ").split() if p]
        keep_best = _opt_int(self.keep_best)
        policies = policies_from_options(
            keep_last=_opt_int(self.keep_last),
            keep_every_hours=_opt_float(self.keep_every_hours),
            keep_every_steps=_opt_int(self.keep_every_steps),
            keep_best=keep_best,
            # a metric only means something with keep_best (the core refuses it alone)
            metric=(self.metric or None) if keep_best is not None else None,
            mode=str(self.mode),
            pins=[int(p) for p in pins],
            keep_promoted=bool(self.keep_promoted),
            unevaluated=str(self.unevaluated),
            evaluator=None if self.evaluator in (None, "", "None") else str(self.evaluator),
            keep_unevaluated=_names(self.keep_unevaluated),
            unevaluated_max_age=_seconds(self.unevaluated_max_age),
        )
        if not policies:
            raise ValueError(
                "no retention policy given: set keep_last, keep_every_hours, "
                "keep_every_steps, keep_best, keep_unevaluated or pins "
                "(deleting everything is not an option)"
            )
        return policies

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_tf_ckpt.core.errors import DirNotFoundError
        from airflow_tf_ckpt.core.retention.executor import apply_plan
        from airflow_tf_ckpt.core.retention.planner import plan_retention

        dry_run = (
            self.plan_only
            if isinstance(self.plan_only, bool)
            else str(self.plan_only).strip().lower() in ("1", "true", "yes", "on")
        )
        loc = self.get_location()
        policies = self.policies()
        try:
            plan = plan_retention(loc, policies, prefix=self.prefix or None)
        except DirNotFoundError:
            self.log.info("%s does not exist yet: nothing to do", loc.display())
            return {
                "dry_run": dry_run,
                "kept": 0,
                "deleted": 0,
                "deleted_steps": [],
                "bytes_freed": 0,
                "bytes_to_free": 0,
                "state_file_rewritten": False,
                "missing_dir": True,
            }
        self.log.info("Retention plan for %s:\n%s", loc.display(), self.plan_table(plan))
        self.log.info("%s", plan.summary())
        for problem in plan.problems:
            self.log.warning("plan problem: %s", problem)
        result = apply_plan(plan, dry_run=dry_run)
        self.log.info("%s", result.summary())
        for name, why in result.skipped.items():
            self.log.info("not deleted: %s (%s)", name, why)
        out = self.small_result(plan, result, dry_run)
        if result.errors:
            from airflow.sdk.exceptions import AirflowException

            raise AirflowException(
                f"retention of {loc.display()} failed to delete "
                f"{len(result.errors)} file(s):\n" + "\n".join(result.errors[:50])
            )
        return out

    @staticmethod
    def plan_table(plan: Any) -> str:
        rows = [
            ["-" if d.step is None else d.step, d.prefix, d.action, human_bytes(d.size), "; ".join(d.reasons)]
            for d in plan.decisions
        ]
        return format_table(["step", "prefix", "action", "size", "why"], rows) if rows else "(no steps)"

    @staticmethod
    def small_result(plan: Any, result: Any, dry_run: bool) -> dict[str, Any]:
        """Counts and step numbers only (never the file lists: they can be huge)."""
        if dry_run:
            gone = [d.prefix for d in plan.deleted]
        else:
            gone = list(result.deleted_steps)
        numbers = {d.prefix: d.step for d in plan.decisions}
        deleted_steps = [numbers.get(p) if numbers.get(p) is not None else p for p in gone]
        return {
            "dry_run": dry_run,
            "kept": len(plan.decisions) - len(gone),
            "deleted": len(gone),
            "deleted_steps": deleted_steps[:MAX_XCOM_STEPS],
            "bytes_freed": 0 if dry_run else int(result.bytes_freed),
            "bytes_to_free": int(plan.bytes_to_free) if dry_run else 0,
            "state_file_rewritten": bool(result.state_written),
            "missing_dir": False,
        }
