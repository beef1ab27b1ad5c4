"""Evaluate checkpoint steps as they are committed, woken by an AssetWatcher event.

``tf_ckpt_event_driven`` has no sensor and no polling DAG run: the triggerer runs a
:class:`CheckpointEventTrigger` for the ``tf_ckpt_demo_steps`` asset, which emits one asset event
per new committed step, and each event schedules a run of this DAG.

The event is only a WAKE-UP. Under a real scheduler asset events are batched into one run,
delayed, or left queued until an unrelated later event (apache/airflow#56050, #54659), so a run
that trusted its ``triggering_asset_events`` would miss or delay steps. Each run instead takes
its work from durable state (:mod:`airflow_tf_ckpt.examples.work`):

1. ``pending_steps`` -- every committed step after this DAG's watermark (kept in the state store
   of the dir's watermark asset), oldest first, at most ``MAX_STEPS_PER_RUN``;
2. ``check_and_evaluate`` -- ``validate >> evaluate`` mapped over them (a corrupt step is
   quarantined and stops only its own evaluation);
3. ``advance`` (``all_done``) -- moves the watermark over the contiguous run of handled steps
   (evaluated by this DAG, or quarantined); a step whose evaluation failed stays pending and fails
   the run. When steps are still pending (they arrived during the run, or the batch was capped),
   ``follow_up`` triggers the next run at once instead of waiting for another save.

Also every ``SWEEP`` (a cron), a run sweeps up whatever is pending, should an event be lost.
A manual run does the same as an event-driven one. Metrics go to this DAG's own sidecar
(``evaluator="tf_ckpt_event_driven"``), so it never collides with ``tf_ckpt_evaluate_each_step``.

The watched dir is fixed when the file is parsed (a watcher cannot read Params): it is
``$TF_CKPT_DEMO_DIR/checkpoints`` (default ``/tmp/tf_ckpt_demo/checkpoints``; ``gs://`` works unchanged).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, task, task_group

from airflow_tf_ckpt import config
from airflow_tf_ckpt.examples import settings, work
from airflow_tf_ckpt.operators import EvaluateCheckpointOperator, ValidateCheckpointOperator
from airflow_tf_ckpt.sensors.checkpoint import watermark_asset_for
from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger

DAG_ID = settings.EVENT_DAG
CKPT_DIR = settings.ckpt_dir()
MAX_STEPS_PER_RUN = 4  # a burst of saves is spread over follow-up runs of this size
SWEEP = "*/10 * * * *"
STEPS_ASSET = Asset(
    name="tf_ckpt_demo_steps",
    uri="x-tf-ckpt-steps://demo/" + CKPT_DIR.replace("://", "/").lstrip("/"),
    watchers=[
        AssetWatcher(
            name="tf_ckpt_demo_steps_watcher",
            trigger=CheckpointEventTrigger(
                dir=CKPT_DIR,
                prefix=settings.BASE,
                conn_id=settings.conn_id(),
                poll_interval=config.poll_interval(),
            ),
        )
    ],
)
WATERMARK = watermark_asset_for(CKPT_DIR)
WATERMARK_KEY = f"tf_ckpt.event_driven|{DAG_ID}"


def steps_from_events(events: Any) -> list[str]:
    """The checkpoint prefixes carried by triggering asset events, oldest first, de-duplicated.

    Informational only (logged): the work of a run comes from :func:`work.pending_steps`. A
    watcher's event extra is ``{"from_trigger": True, "payload": <trigger payload>}``.
    """
    seen: dict[str, int] = {}
    for event in events or []:
        extra = (
            getattr(event, "extra", None) or (event.get("extra") if isinstance(event, dict) else None) or {}
        )
        payload = extra.get("payload") if isinstance(extra, dict) else None
        if isinstance(payload, dict) and payload.get("checkpoint"):
            seen[str(payload["checkpoint"])] = int(payload.get("step") or 0)
    return sorted(seen, key=lambda p: (seen[p], p))


with DAG(
    dag_id=DAG_ID,
    description="Evaluate every new checkpoint step, woken by an AssetWatcher event",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(SWEEP, timezone="UTC"), assets=[STEPS_ASSET]),
    catchup=False,
    max_active_runs=1,
    tags=["tf_ckpt", "example"],
    doc_md=__doc__,
) as dag:

    @task(inlets=[WATERMARK])
    def pending_steps(triggering_asset_events: Any = None, **context: Any) -> list[str]:
        """Every committed step after the watermark (oldest first, capped): this run's work."""
        mark = work.read_mark(context, WATERMARK, WATERMARK_KEY)
        events = triggering_asset_events[STEPS_ASSET] if triggering_asset_events else []
        steps = [p for _, p in work.pending_steps(CKPT_DIR, mark, MAX_STEPS_PER_RUN)]
        print(
            f"watermark {mark}; woken by events for {steps_from_events(events) or 'none'}; "
            f"steps to evaluate: {steps or 'none'}"
        )
        return steps

    @task_group
    def check_and_evaluate(step: str) -> None:
        """validate[i] >> evaluate[i]: a corrupt step stops only its own evaluation."""
        validate = ValidateCheckpointOperator(
            task_id="validate",
            ckpt_dir=CKPT_DIR,
            step=step,
            prefix=settings.BASE,
            quarantine=True,
            conn_id=settings.conn_id(),
        )
        evaluate = EvaluateCheckpointOperator(
            task_id="evaluate",
            ckpt_dir=CKPT_DIR,
            step=step,
            prefix=settings.BASE,
            build_fn=settings.BUILD_FN,
            eval_fn=settings.EVAL_FN,
            conn_id=settings.conn_id(),
            evaluator=DAG_ID,
            max_active_tis_per_dagrun=2,  # TF import per task: two at a time on a small worker
        )
        validate >> evaluate

    @task.short_circuit(trigger_rule="all_done", inlets=[WATERMARK])
    def advance(offered: list[str], **context: Any) -> int:
        """Move the watermark over the handled steps; >0 (follow up) when work remains."""
        offered = list(offered or [])
        mark, left = work.advance_over(CKPT_DIR, offered, DAG_ID)
        if mark is not None:
            work.write_mark(context, WATERMARK, WATERMARK_KEY, mark)
        stored = work.read_mark(context, WATERMARK, WATERMARK_KEY)
        remaining = work.pending_steps(CKPT_DIR, stored)
        print(
            f"watermark now {stored}; not handled in this run: {left or 'none'}; "
            f"still pending: {[p for _, p in remaining] or 'none'}"
        )
        if left:  # an evaluation failed: the run fails (visible), the next run retries the step
            raise RuntimeError(f"{left} neither evaluated nor quarantined; they stay pending")
        return len(remaining)

    offered = pending_steps()
    evaluations = check_and_evaluate.expand(step=offered)
    follow_up = TriggerDagRunOperator(
        task_id="follow_up", trigger_dag_id=DAG_ID, conf={"reason": "steps still pending"}
    )
    evaluations >> advance(offered) >> follow_up
