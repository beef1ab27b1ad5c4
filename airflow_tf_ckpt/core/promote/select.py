"""Choosing the step to promote: a number or prefix name, ``latest``, or ``best`` by a metric."""

from __future__ import annotations

import math
from typing import Any

from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.core.promote.manifest import PromotionError
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus


def metrics_by_prefix(cdir: CheckpointDir, evaluator: str | None = None) -> dict[str, dict[str, Any]]:
    from airflow_tf_ckpt.core.sidecars.metrics import (
        metrics_for,  # helper module; imported here to keep this one light
    )

    return {k: dict(v) for k, v in metrics_for(cdir, evaluator=evaluator).items() if v}


def _usable(s: CheckpointStep) -> bool:
    return s.status is StepStatus.COMMITTED and not s.quarantined


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
    where = cdir.location.display()
    sel = str(selector).strip()
    if evaluator is not None:
        from airflow_tf_ckpt.core.sidecars.metrics import check_evaluator

        check_evaluator(evaluator)
    if sel == "latest":
        steps = [s for s in cdir.select(prefix) if _usable(s)]
        if not steps:
            raise StepNotFoundError(
                "no committed checkpoint step to promote" + (f" with prefix {prefix!r}" if prefix else ""),
                where,
            )
        latest = cdir.latest(prefix)
        if latest is not None and _usable(latest):
            return latest
        return max(steps, key=lambda s: (-1 if s.step is None else s.step, s.timestamp or 0.0))
    if sel == "best":
        if not metric:
            raise PromotionError("--step best needs a metric name (--metric NAME)")
        from airflow_tf_ckpt.core.sidecars.metrics import metric_name_problem

        if problem := metric_name_problem(metric):
            raise PromotionError(problem)
        if mode not in ("min", "max"):
            raise PromotionError(f"mode must be 'min' or 'max', not {mode!r}")
        steps = [s for s in cdir.select(prefix) if _usable(s)]
        if not steps:
            raise StepNotFoundError("no committed checkpoint step to promote", where)
        by_prefix = metrics_by_prefix(cdir, evaluator)
        scored: list[tuple[float, CheckpointStep]] = []
        for s in steps:
            value = by_prefix.get(s.prefix, {}).get(metric)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):  # NaN and +-inf never win (a diverged run is no best)
                continue
            scored.append((float(value), s))
        if not scored:
            known = sorted({k for s in steps for k in by_prefix.get(s.prefix, {})})
            raise StepNotFoundError(
                f"no committed step has metric {metric!r}"
                + (f" from evaluator {evaluator!r}" if evaluator else "")
                + (f" (metrics found: {', '.join(known)})" if known else " (no metrics sidecars)"),
                where,
            )
        sign = 1.0 if mode == "min" else -1.0
        # ties: the newer step wins (it has seen more data)
        return min(scored, key=lambda t: (sign * t[0], -(t[1].step or 0)))[1]
    try:
        number: int | str = int(sel)
    except ValueError:
        number = sel
    s = cdir.get(number, prefix)
    if s.status is StepStatus.INCOMPLETE:
        raise PromotionError(
            "step is incomplete (missing " + ", ".join(s.missing[:3]) + "); refusing",
            cdir.location.display(s.prefix),
        )
    if s.quarantined:
        raise PromotionError("step is quarantined as corrupt; refusing", cdir.location.display(s.prefix))
    return s
