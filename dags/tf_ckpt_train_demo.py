"""Train a tiny Keras model on synthetic data and save a checkpoint every few steps.

``tf_ckpt_train_demo`` stands in for a real training job: one task runs
:func:`airflow_tf_ckpt.examples.train.train`, which saves with ``tf.train.CheckpointManager``
(``max_to_keep=None``: deleting old steps is the job of ``tf_ckpt_gc``, which never deletes a step
under evaluation). Each run resumes from the latest step in ``ckpt_dir``, so triggering it again
continues the same training run.

Params: ``ckpt_dir`` (default ``$TF_CKPT_DEMO_DIR/checkpoints``, or ``/tmp/tf_ckpt_demo/checkpoints``;
a ``gs://`` URL works unchanged), ``steps`` (optimizer steps this run), ``save_every``.

TensorFlow is imported only inside the task (on the GPU queue), never when the file is parsed.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import DAG, Param, task

from airflow_tf_ckpt.config import gpu_queue
from airflow_tf_ckpt.examples import settings

with DAG(
    dag_id="tf_ckpt_train_demo",
    description="Train a tiny Keras model, saving TensorFlow checkpoints",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["tf_ckpt", "example"],
    params={
        "ckpt_dir": Param(settings.ckpt_dir(), type="string", description="checkpoint dir (local or gs://)"),
        "steps": Param(10, type="integer", minimum=1, description="optimizer steps in this run"),
        "save_every": Param(2, type="integer", minimum=1, description="save a checkpoint every N steps"),
        "sleep_between_saves": Param(0.0, type="number", minimum=0,
                                     description="seconds to wait after each save (to watch it live)"),
    },
    doc_md=__doc__,
) as dag:

    @task(queue=gpu_queue())
    def train(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train and save; returns the saved steps and their training losses (small)."""
        from airflow_tf_ckpt.examples.train import train as run_training
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        assert params is not None
        ckpt_dir = str(params["ckpt_dir"])
        opts = CheckpointStorageHook(settings.conn_id()).storage_options(ckpt_dir)
        result = run_training(ckpt_dir, steps=int(params["steps"]), save_every=int(params["save_every"]),
                              sleep_between_saves=float(params["sleep_between_saves"]),
                              storage_options=opts)
        return {"ckpt_dir": ckpt_dir, "steps": result.steps,
                "losses": {str(k): round(v, 6) for k, v in result.losses.items()}}

    train()
