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
        "sleep_between_saves": Param(
            0.0, type="number", minimum=0, description="seconds to wait after each save (to watch it live)"
        ),
        "burst": Param(
            0,
            type="integer",
            minimum=0,
            description="the first N saves come without the sleep (a burst), then spaced",
        ),
        "corrupt_step": Param(
            0,
            type="integer",
            minimum=0,
            description="demo only: flip one byte of this step's shard right after "
            "it is committed (bit rot); 0 = none",
        ),
    },
    doc_md=__doc__,
) as dag:

    @task(queue=gpu_queue())
    def train(params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train and save; returns the saved steps and their training losses (small)."""
        import time

        from airflow_tf_ckpt.examples.train import train as run_training
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook
        from airflow_tf_ckpt.tf_runtime import native_stderr_to_log

        assert params is not None
        ckpt_dir = str(params["ckpt_dir"])
        hook = CheckpointStorageHook(settings.conn_id())
        opts = hook.storage_options(ckpt_dir)
        corrupt = int(params.get("corrupt_step") or 0)
        corrupted: list[int] = []
        saved_at: dict[int, float] = {}

        burst, sleep = int(params.get("burst") or 0), float(params["sleep_between_saves"])

        def on_save(step: int, url: str, loss: float) -> None:
            saved_at[step] = time.time()
            print(f"saved and committed step {step} (train loss {loss:.4f}): {url}", flush=True)
            if step == corrupt:
                _flip_a_byte(hook.get_location(ckpt_dir), url.rsplit("/", 1)[-1])
                corrupted.append(step)
            if sleep and len(saved_at) >= burst:
                time.sleep(sleep)  # before the next save: the saves after the burst come spaced

        # TF's native start-up lines ("failed call to cuInit" on a machine without a GPU) go to
        # the task log at their own level, as in the provider's operators, not as stderr (ERROR)
        with native_stderr_to_log():
            result = run_training(
                ckpt_dir,
                steps=int(params["steps"]),
                save_every=int(params["save_every"]),
                storage_options=opts,
                on_save=on_save,
            )
        return {
            "ckpt_dir": ckpt_dir,
            "steps": result.steps,
            "corrupted": corrupted,
            "save_times": {str(s): t for s, t in saved_at.items()},
            "losses": {str(k): round(v, 6) for k, v in result.losses.items()},
        }

    def _flip_a_byte(loc: Any, prefix: str) -> None:
        """Bit rot in the middle of the step's first data shard (it stays committed)."""
        name = f"{prefix}.data-00000-of-00001"
        data = bytearray(loc.read_bytes(name))
        data[len(data) // 2] ^= 0xFF
        loc.write_atomic(name, bytes(data))
        print(f"demo: flipped one byte in {loc.display(name)}", flush=True)

    train()
