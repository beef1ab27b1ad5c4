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
5. ``commit`` -- advances the watermark once the step is processed (also after a skipped promote).
   A run that fails before it (a transient error) gets the same step again: at-least-once. A
   quarantined step is no longer named by the state file, so the next run moves past it.

The watermark is kept per deployment, in the state store of the asset named after the default
``ckpt_dir`` (``$TF_CKPT_DEMO_DIR/checkpoints``). Point a deployment at another dir by setting
``TF_CKPT_DEMO_DIR`` (a ``gs://`` URL works unchanged) rather than overriding ``ckpt_dir`` per run.
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset, Param

from airflow_tf_ckpt.examples import settings
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
    dag_id="tf_ckpt_evaluate_each_step",
    description="Validate, evaluate and maybe promote every committed checkpoint step",
    schedule="@continuous",
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
        task_id="validate", ckpt_dir="{{ params.ckpt_dir }}", step=STEP, prefix=settings.BASE,
        quarantine=True, conn_id=settings.conn_id(),
    )
    evaluate = EvaluateCheckpointOperator(
        task_id="evaluate", ckpt_dir="{{ params.ckpt_dir }}", step=STEP, prefix=settings.BASE,
        build_fn=settings.BUILD_FN, eval_fn=settings.EVAL_FN, conn_id=settings.conn_id(),
        outlets=[METRICS_ASSET],  # queue: [tf_ckpt] gpu_queue by default
    )
    promote = PromoteCheckpointOperator(
        task_id="promote_if_best", ckpt_dir="{{ params.ckpt_dir }}", dest="{{ params.promoted_dir }}",
        step="best", metric=settings.METRIC, mode=settings.MODE, only_if_step=STEP, alias="best",
        prefix=settings.BASE, conn_id=settings.conn_id(), outlets=[PROMOTED_ASSET],
    )
    commit = wait.commit_task(task_id="commit", trigger_rule="none_failed")

    wait >> validate >> evaluate >> promote >> commit
