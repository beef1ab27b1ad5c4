"""The one step selector: ``latest``, ``best``, ``all``, a step number or a prefix name.

The CLI (``--step``), the operators (``step=``), promotion and quarantine all pick steps here, so
``latest`` means the same everywhere: what ``tf.train.latest_checkpoint`` returns. When the state
file's ``model_checkpoint_path`` names a step whose files are missing, TF returns None (a trainer
restarts from scratch) or fails to restore; ``latest`` then raises :class:`LatestStepMissingError`
with that one-line problem instead of quietly falling back to an older step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from airflow_tf_ckpt.core.errors import LatestStepMissingError, StepNotFoundError, StepRefusedError
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus
from airflow_tf_ckpt.core.steps.order import step_order

LATEST, BEST, ALL = "latest", "best", "all"


def parse_selector(value: int | str | None) -> int | str:
    """``latest``/``best``/``all`` (any case; ``None`` or ``""`` is ``latest``), an ``int`` for a
    step number, else the text itself (a prefix name such as ``ckpt-5``)."""
    if value is None:
        return LATEST
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in ("", LATEST, BEST, ALL):
        return text.lower() or LATEST
    try:
        return int(text)
    except ValueError:
        return text


def usable(s: CheckpointStep) -> bool:
    """Committed by the state file and not quarantined: a step ``latest`` and ``best`` may pick."""
    return s.status is StepStatus.COMMITTED and not s.quarantined


def latest_step(
    cdir: CheckpointDir, prefix: str | None = None, *, strict: bool = True
) -> CheckpointStep | None:
    """The step ``tf.train.latest_checkpoint`` returns (the state file's latest where it is
    committed, else the newest usable step), or ``None`` when there is none.

    ``strict``: when the state file's latest names a step whose files are missing, raise
    :class:`LatestStepMissingError` (TF would not fall back either); without it, fall back and
    leave the problem to the caller (``cdir.latest_problem``).
    """
    if strict and (problem := cdir.latest_problem(prefix)):
        raise LatestStepMissingError(problem, cdir.location.display(cdir.state_filename))
    latest = cdir.latest(prefix)
    if latest is not None and usable(latest):
        return latest
    steps = [s for s in cdir.select(prefix) if usable(s)]
    return max(steps, key=step_order) if steps else None


def best_step(
    steps: list[CheckpointStep], metrics: Mapping[str, Mapping[str, Any]], metric: str, mode: str = "min"
) -> CheckpointStep | None:
    """The step with the best finite ``metric`` (``mode`` ``min`` or ``max``); ties go to the newer
    step (it has seen more data). NaN and infinities never win. ``None`` when no step has it."""
    scored: list[tuple[float, CheckpointStep]] = []
    for s in steps:
        value = metrics.get(s.prefix, {}).get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        scored.append((float(value), s))
    if not scored:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(scored, key=lambda t: (sign * t[0], -(t[1].step or 0)))[1]


def select_step(
    cdir: CheckpointDir,
    selector: int | str | None,
    *,
    prefix: str | None = None,
    metric: str | None = None,
    mode: str = "min",
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    evaluator: str | None = None,
    allow_incomplete: bool = False,
    allow_quarantined: bool = True,
) -> CheckpointStep:
    """One step by ``selector`` (see :func:`parse_selector`).

    ``latest`` and ``best`` consider committed, unquarantined steps only; ``best`` ranks them by
    ``metric`` in ``metrics`` (``{prefix: {name: value}}``, loaded by the caller from
    ``evaluator``'s sidecars: named in the error when no step has the metric). A named step may
    be an orphan (complete files the state file no longer names); an incomplete one is refused
    unless ``allow_incomplete``, a quarantined one unless ``allow_quarantined``.
    Raises :class:`StepNotFoundError` (or its subclasses) with a one-line message.
    """
    sel = parse_selector(selector)
    where = cdir.location.display()
    on = f" with prefix {prefix!r}" if prefix else ""
    if sel == LATEST:
        latest = latest_step(cdir, prefix)
        if latest is None:
            raise StepNotFoundError(f"no committed checkpoint step{on}", where)
        return latest
    if sel == BEST:
        return _best(cdir, prefix, metric, mode, metrics or {}, evaluator)
    if sel == ALL:
        raise StepRefusedError("'all' names several steps; one is needed here", where)
    s = cdir.get(sel, prefix)
    if s.status is StepStatus.INCOMPLETE and not allow_incomplete:
        raise StepRefusedError(
            f"step {s.prefix} is incomplete (missing {', '.join(s.missing[:3])}); refusing", where
        )
    if s.quarantined and not allow_quarantined:
        raise StepRefusedError(f"step {s.prefix} is quarantined as corrupt; refusing", where)
    return s


def _best(
    cdir: CheckpointDir,
    prefix: str | None,
    metric: str | None,
    mode: str,
    metrics: Mapping[str, Mapping[str, Any]],
    evaluator: str | None,
) -> CheckpointStep:
    where = cdir.location.display()
    if not metric:
        raise StepRefusedError("step 'best' needs a metric name (--metric NAME)", where)
    steps = [s for s in cdir.select(prefix) if usable(s)]
    if not steps:
        raise StepNotFoundError("no committed checkpoint step", where)
    chosen = best_step(steps, metrics, metric, mode)
    if chosen is None:
        known = sorted({k for s in steps for k in metrics.get(s.prefix, {})})
        raise StepNotFoundError(
            f"no committed step has metric {metric!r}"
            + (f" from evaluator {evaluator!r}" if evaluator else "")
            + (f" (metrics found: {', '.join(known)})" if known else " (no metrics sidecars)"),
            where,
        )
    return chosen


def select_steps(
    cdir: CheckpointDir, selector: int | str | None, prefix: str | None = None
) -> list[CheckpointStep]:
    """The steps a ``validate``-like command checks: ``all`` of them, the latest (none when there
    is no committed step; a latest whose files are missing falls back, and the caller reports
    ``cdir.latest_problem``), or one named step, whatever its status."""
    sel = parse_selector(selector)
    if sel == ALL:
        return list(cdir.steps)
    if sel == LATEST:
        latest = latest_step(cdir, prefix, strict=False)
        return [latest] if latest is not None else []
    return [select_step(cdir, sel, prefix=prefix, allow_incomplete=True)]
