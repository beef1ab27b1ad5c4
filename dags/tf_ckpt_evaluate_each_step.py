"""Evaluate EVERY committed checkpoint step, one per run, and promote it when it is the best so far.

``tf_ckpt_evaluate_each_step`` runs continuously (``@continuous``, one run at a time):

1. ``wait`` -- :class:`CheckpointSensor` (deferrable) waits for the OLDEST committed step after its
   watermark (``pick="oldest"``, ``watermark="auto"``), so no step is ever skipped, unlike
   ``tf.train.checkpoints_iterator`` or Keras' SidecarEvaluator, which jump to the latest.
2. ``validate`` -- every checksum, without TensorFlow; a corrupt step is QUARANTINED, so TF's
   ``latest_checkpoint`` falls back to the last good step and the run fails with every problem listed.
3. ``evaluate`` -- restores the step on the GPU queue (``[tf_ckpt] gpu_queue``) and runs the example
   ``eval_fn``; the step is leased meanwhile (retention cannot delete it), the metrics go to the
   step's sidecar, the XCom and an event of the ``tf_ckpt_demo_metrics`` asset.
4. ``promote`` -- publishes the step to ``promoted_dir`` (alias ``best``) only if it is the best
   step by ``loss`` so far; otherwise it is skipped.
5. ``commit`` -- runs whatever happened upstream (``all_done``) and advances the watermark when
   the step is HANDLED: evaluated by this DAG (its metrics sidecar exists) or quarantined by
   ``validate`` (corrupt: it is never evaluated, the run still succeeds, the red ``validate`` box
   shows it). Otherwise (a transient error) it fails the run and the next run gets the same step
   again: at-least-once, never skipped.

``start_date`` is set: a ``@continuous`` DAG without one gets a zero-width first interval and the
scheduler never makes a second run ("run already exists; skipping dagrun creation"). A deployment
stuck that way needs its old run deleted once (see the README).

The watermark is kept per deployment, in the state store of the asset named after the default
``ckpt_dir`` (``$TF_CKPT_DEMO_DIR/checkpoints``). Point a deployment at another dir by setting
``TF_CKPT_DEMO_DIR`` (a ``gs://`` URL works unchanged) rather than overriding ``ckpt_dir`` per run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import DAG, Asset, Param, task
from airflow.sdk.exceptions import AirflowException

from airflow_tf_ckpt.examples import settings, work
from airflow_tf_ckpt.operators import (
    EvaluateCheckpointOperator,
    PromoteCheckpointOperator,
    ValidateCheckpointOperator,
)
from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor, watermark_asset_for

METRICS_ASSET = Asset(name="tf_ckpt_demo_metrics", uri="x-tf-ckpt-metrics://demo/evaluations")
PROMOTED_ASSET = Asset(name="tf_ckpt_demo_promoted", uri="x-tf-ckpt-promoted://demo/best")
STEP = "{{ ti.xcom_pull(task_ids='wait')['checkpoint'] }}"

with DAG(
    dag_id=settings.EACH_STEP_DAG,
    description="Validate, evaluate and maybe promote every committed checkpoint step",
    schedule="@continuous",
    start_date=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc),
    max_active_runs=1,
    catchup=False,
    tags=["tf_ckpt", "example"],
    params={
        "ckpt_dir": Param(settings.ckpt_dir(), type="string", description="checkpoint dir (local or gs://)"),
        "promoted_dir": Param(settings.promoted_dir(), type="string", description="where the best step goes"),
    },
    doc_md=__doc__,
) as dag:
    wait = CheckpointSensor(
        task_id="wait",
        dir="{{ params.ckpt_dir }}",
        prefix=settings.BASE,
        watermark="auto",
        watermark_asset=watermark_asset_for(settings.ckpt_dir()),
        pick="oldest",
        commit="downstream",
        conn_id=settings.conn_id(),
        deferrable=True,
        timeout=7 * 24 * 3600,
    )
    validate = ValidateCheckpointOperator(
        task_id="validate",
        ckpt_dir="{{ params.ckpt_dir }}",
        step=STEP,
        prefix=settings.BASE,
        quarantine=True,
        conn_id=settings.conn_id(),
    )
    evaluate = EvaluateCheckpointOperator(
        task_id="evaluate",
        ckpt_dir="{{ params.ckpt_dir }}",
        step=STEP,
        prefix=settings.BASE,
        build_fn=settings.BUILD_FN,
        eval_fn=settings.EVAL_FN,
        conn_id=settings.conn_id(),
        evaluator=settings.EACH_STEP_DAG,  # its own sidecar: never collides with the event-driven DAG
        outlets=[METRICS_ASSET],  # queue: [tf_ckpt] gpu_queue by default
    )
    promote = PromoteCheckpointOperator(
        task_id="promote_if_best",
        ckpt_dir="{{ params.ckpt_dir }}",
        dest="{{ params.promoted_dir }}",
        step="best",
        metric=settings.METRIC,
        mode=settings.MODE,
        evaluator=settings.EACH_STEP_DAG,
        only_if_step=STEP,
        alias="best",
        prefix=settings.BASE,
        conn_id=settings.conn_id(),
        outlets=[PROMOTED_ASSET],
    )

    @task(trigger_rule="all_done", inlets=[wait.watermark_asset])
    def commit(params: dict[str, Any] | None = None, **context: Any) -> int | None:
        """Advance the watermark over the sensor's step once it is evaluated or quarantined."""
        payload = context["ti"].xcom_pull(task_ids="wait")
        if not payload:
            raise AirflowException("the sensor returned no step")
        ckpt_dir = str((params or {}).get("ckpt_dir") or settings.ckpt_dir())
        mark, left = work.advance_over(ckpt_dir, [payload["checkpoint"]], dag.dag_id)
        if left:
            raise AirflowException(
                f"{payload['checkpoint']} was neither evaluated nor quarantined; "
                "the watermark stays, the next run gets it again"
            )
        committed = wait.commit_watermark(context, mark)
        if work.task_failed(context, "promote_if_best"):
            raise AirflowException("the step is evaluated and committed, but promote_if_best failed")
        return committed

    commit = commit()

    wait >> validate >> evaluate >> promote >> commit
