"""Choosing the step to promote: :func:`airflow_tf_ckpt.core.steps.select.select_step` (the one
selector), with the checks a promotion adds: the metric, mode and evaluator names of ``best``,
and :class:`PromotionError` for a quarantined or incomplete step."""

from __future__ import annotations

from typing import Any

from airflow_tf_ckpt.core.errors import StepRefusedError
from airflow_tf_ckpt.core.promote.manifest import PromotionError
from airflow_tf_ckpt.core.steps import select as steps_select
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep


def metrics_by_prefix(cdir: CheckpointDir, evaluator: str | None = None) -> dict[str, dict[str, Any]]:
    """``{prefix: metrics}`` of ``evaluator``'s sidecars (``None``: the default one)."""
    from airflow_tf_ckpt.core.sidecars.metrics import metrics_for

    return {k: dict(v) for k, v in metrics_for(cdir, evaluator=evaluator).items() if v}


def select_step(
    cdir: CheckpointDir,
    selector: int | str,
    *,
    prefix: str | None = None,
    metric: str | None = None,
    mode: str = "min",
    evaluator: str | None = None,
) -> CheckpointStep:
    """Pick a step: a number (or prefix name), ``latest``, or ``best`` by ``metric`` (``mode``) of
    ``evaluator``'s sidecars (``None``: the default ``PREFIX.metrics.json``).

    ``latest`` and ``best`` consider committed, unquarantined steps only. An explicit step may
    also be an orphan (complete files that the state file no longer names, e.g. one TF kept with
    ``keep_checkpoint_every_n_hours``); an incomplete or quarantined step is refused.
    """
    metrics: dict[str, dict[str, Any]] | None = None
    if evaluator is not None:
        from airflow_tf_ckpt.core.sidecars.metrics import check_evaluator

        check_evaluator(evaluator)
    if str(selector).strip() == "best":
        metrics = _best_inputs(cdir, metric, mode, evaluator)
    try:
        return steps_select.select_step(
            cdir,
            selector,
            prefix=prefix,
            metric=metric,
            mode=mode,
            metrics=metrics,
            evaluator=evaluator,
            allow_quarantined=False,
        )
    except StepRefusedError as exc:
        raise PromotionError(exc.message, exc.path) from exc


def _best_inputs(
    cdir: CheckpointDir, metric: str | None, mode: str, evaluator: str | None
) -> dict[str, dict[str, Any]]:
    """The metrics ``best`` ranks by, once the metric, mode and evaluator names are checked."""
    from airflow_tf_ckpt.core.sidecars.metrics import metric_name_problem

    if not metric:
        raise PromotionError("--step best needs a metric name (--metric NAME)")
    if problem := metric_name_problem(metric):
        raise PromotionError(problem)
    if mode not in ("min", "max"):
        raise PromotionError(f"mode must be 'min' or 'max', not {mode!r}")
    return metrics_by_prefix(cdir, evaluator)
