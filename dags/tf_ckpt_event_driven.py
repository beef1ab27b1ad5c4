"""Evaluate checkpoint steps as they are committed, scheduled on an Asset with an AssetWatcher.

``tf_ckpt_event_driven`` has no sensor and no polling DAG run: the triggerer runs a
:class:`CheckpointEventTrigger` for the ``tf_ckpt_demo_steps`` asset. The trigger is edge-triggered:
it emits one asset event per NEW committed step (oldest first, never twice, its watermark kept in
the asset's state store), and each event schedules a run of this DAG. When several events are
queued before a run starts, the run gets all of them: ``steps_from_events`` turns them into a list
and a ``validate >> evaluate`` task group is mapped over it, so no step is skipped.

A manual run (no triggering event) evaluates the ``step`` Param (default ``latest``).

The watched dir is fixed when the file is parsed (a watcher cannot read Params): it is
``$TF_CKPT_DEMO_DIR/checkpoints`` (default ``/tmp/tf_ckpt_demo/checkpoints``; ``gs://`` works unchanged).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, Param, task, task_group

from airflow_tf_ckpt import config
from airflow_tf_ckpt.examples import settings
from airflow_tf_ckpt.operators import EvaluateCheckpointOperator, ValidateCheckpointOperator
from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger

CKPT_DIR = settings.ckpt_dir()
STEPS_ASSET = Asset(
    name="tf_ckpt_demo_steps",
    uri="x-tf-ckpt-steps://demo/" + CKPT_DIR.replace("://", "/").lstrip("/"),
    watchers=[AssetWatcher(
        name="tf_ckpt_demo_steps_watcher",
        trigger=CheckpointEventTrigger(dir=CKPT_DIR, prefix=settings.BASE, conn_id=settings.conn_id(),
                                       poll_interval=config.poll_interval()),
    )],
)


def steps_from_events(events: Any) -> list[str]:
    """The checkpoint prefixes carried by triggering asset events, oldest first, de-duplicated.

    A watcher's event extra is ``{"from_trigger": True, "payload": <trigger payload>}``; the payload
    names the step (``checkpoint``: ``ckpt-500``; ``step``: 500).
    """
    seen: dict[str, int] = {}
    for event in events or []:
        extra = getattr(event, "extra", None) or (event.get("extra") if isinstance(event, dict) else None) or {}
        payload = extra.get("payload") if isinstance(extra, dict) else None
        if isinstance(payload, dict) and payload.get("checkpoint"):
            seen[str(payload["checkpoint"])] = int(payload.get("step") or 0)
    return sorted(seen, key=lambda p: (seen[p], p))


with DAG(
    dag_id="tf_ckpt_event_driven",
    description="Evaluate each new checkpoint step, driven by an AssetWatcher event",
    schedule=[STEPS_ASSET],
    catchup=False,
    tags=["tf_ckpt", "example"],
    params={"step": Param("latest", type="string", description="step for a manual run")},
    doc_md=__doc__,
) as dag:

    @task
    def new_steps(triggering_asset_events: Any = None, params: dict[str, Any] | None = None) -> list[str]:
        """Steps to evaluate: those of the triggering events, else the ``step`` Param."""
        events = triggering_asset_events[STEPS_ASSET] if triggering_asset_events else []
        steps = steps_from_events(events)
        if not steps:
            steps = [str((params or {}).get("step") or "latest")]
        print(f"steps to evaluate: {steps}")
        return steps

    @task_group
    def check_and_evaluate(step: str) -> None:
        """validate[i] >> evaluate[i]: a corrupt step stops only its own evaluation."""
        validate = ValidateCheckpointOperator(
            task_id="validate", ckpt_dir=CKPT_DIR, step=step, prefix=settings.BASE, quarantine=True,
            conn_id=settings.conn_id(),
        )
        evaluate = EvaluateCheckpointOperator(
            task_id="evaluate", ckpt_dir=CKPT_DIR, step=step, prefix=settings.BASE,
            build_fn=settings.BUILD_FN, eval_fn=settings.EVAL_FN, conn_id=settings.conn_id(),
        )
        validate >> evaluate

    check_and_evaluate.expand(step=new_steps())
