"""What the example evaluation DAGs owe: durable state, not Airflow's events, says which steps.

Under a real scheduler, asset events are batched, delayed or stranded (apache/airflow#56050,
#54659), so the example DAGs treat an event as a wake-up only. The work of a run is read from the
checkpoint dir and a watermark kept in an asset's state store (it survives runs and restarts):

* **pending** -- the committed steps after the watermark, oldest first;
* **handled** -- a step this evaluator has evaluated (its metrics sidecar exists) or one that
  validation quarantined (corrupt: never to be evaluated). The watermark only moves over a
  contiguous run of handled steps, so a step whose evaluation failed is offered again.

Nothing here imports TensorFlow; the storage core is imported inside the functions (task time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow_tf_ckpt.examples import settings


def location(ckpt_dir: str) -> Any:
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    return CheckpointStorageHook(settings.conn_id()).get_location(ckpt_dir)


def discover_or_none(loc: Any) -> Any:
    """The dir's steps, or ``None`` when the dir does not exist yet (nothing trained)."""
    from airflow_tf_ckpt.core.steps.discovery import discover

    if not loc.exists():
        return None
    return discover(loc, settings.BASE)


def evaluated(loc: Any, prefix: str, evaluator: str | None) -> bool:
    """Has ``evaluator`` recorded metrics for ``prefix``?"""
    from airflow_tf_ckpt.core.sidecars.metrics import read_metrics

    return read_metrics(loc, prefix, evaluator=evaluator) is not None


def pending_steps(ckpt_dir: str, after: int | None, limit: int | None = None) -> list[tuple[int, str]]:
    """``(step, prefix)`` of the committed steps after ``after``, oldest first, at most ``limit``."""
    cdir = discover_or_none(location(ckpt_dir))
    if cdir is None:
        return []
    steps = sorted(
        (s.step, s.prefix)
        for s in cdir.committed(settings.BASE)
        if s.step is not None and not s.quarantined and (after is None or s.step > after)
    )
    return steps[:limit] if limit else steps


def handled(loc: Any, cdir: Any, prefix: str, evaluator: str | None) -> bool:
    """Evaluated by ``evaluator``, or quarantined, or gone (then nothing can be done with it)."""
    step = next((s for s in cdir.steps if s.prefix == prefix), None) if cdir is not None else None
    if step is None or step.quarantined:
        return True
    return evaluated(loc, prefix, evaluator)


def advance_over(
    ckpt_dir: str, offered: Sequence[str], evaluator: str | None
) -> tuple[int | None, list[str]]:
    """The last step of the contiguous handled run of ``offered`` (oldest first), and the rest.

    Returns ``(new_watermark or None, not_handled_prefixes)``.
    """
    loc = location(ckpt_dir)
    cdir = discover_or_none(loc)
    mark: int | None = None
    left: list[str] = []
    for prefix in offered:
        if left or not handled(loc, cdir, prefix, evaluator):
            left.append(prefix)
            continue
        mark = _step_number(prefix)
    return mark, left


def _step_number(prefix: str) -> int:
    from airflow_tf_ckpt.core.formats.naming import parse_prefix

    step = parse_prefix(prefix).step
    if step is None:
        raise ValueError(f"{prefix}: no step number")
    return int(step)


def state_accessor(context: Any, asset: Any) -> Any:
    """The asset state store of ``asset`` (a watermark that outlives the run)."""
    from airflow_tf_ckpt.sensors.checkpoint import _accessor

    return _accessor(context, asset)


def read_mark(context: Any, asset: Any, key: str) -> int | None:
    value = state_accessor(context, asset).get(key)
    if isinstance(value, dict):
        value = value.get("step")
    return None if value is None else int(value)


def write_mark(context: Any, asset: Any, key: str, step: int) -> int:
    """Advance the watermark to ``step`` (never backwards); returns the stored value."""
    import time

    old = read_mark(context, asset, key)
    if old is not None and old >= step:
        return old
    state_accessor(context, asset).set(
        key, {"step": step, "updated": time.time(), "run_id": context.get("run_id")}
    )
    return step


def task_failed(context: Any, task_id: str) -> bool:
    """Did ``task_id`` fail in this run? (A leaf with ``all_done`` must not hide a failure.)"""
    ti = context["ti"]
    states = ti.get_task_states(dag_id=ti.dag_id, task_ids=[task_id], run_ids=[ti.run_id])
    per_run = states.get(ti.run_id, states) if isinstance(states, dict) else {}
    return (
        str(per_run.get(task_id) or "").lower().endswith("failed")
        and "upstream" not in str(per_run.get(task_id)).lower()
    )
