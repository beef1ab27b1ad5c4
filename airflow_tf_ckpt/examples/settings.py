"""Settings shared by the example DAGs in ``dags/``, read each time a DAG file is parsed.

Every example works on a local dir by default and on ``gs://`` unchanged: the checkpoint root comes
from the ``TF_CKPT_DEMO_DIR`` environment variable (default ``/tmp/tf_ckpt_demo``) and becomes the
default of the DAGs' Params. Set it to e.g. ``gs://my-bucket/tf-ckpt-demo`` on every Airflow
component to run the same DAGs on GCS. Credentials: ``TF_CKPT_CONN_ID`` names an Airflow connection;
unset means application default credentials (anonymous against ``STORAGE_EMULATOR_HOST``).

These are functions, not constants: a process that parses the DAGs again after the environment
changed (tests, the demo) must see the new values.
"""

from __future__ import annotations

import os

BASE = "ckpt"  # the trainer's checkpoint base name (ckpt-1, ckpt-2, ...)
METRIC = "loss"  # what "best" means: the lowest validation loss
MODE = "min"
BUILD_FN = "airflow_tf_ckpt.examples.eval.build_checkpoint"
EVAL_FN = "airflow_tf_ckpt.examples.eval.evaluate"
# The evaluation DAGs record their metrics under their own dag_id, so two of them never collide;
# GC keeps a step until each has evaluated it (up to UNEVALUATED_MAX_AGE after its save).
EACH_STEP_DAG = "tf_ckpt_evaluate_each_step"
EVENT_DAG = "tf_ckpt_event_driven"
EVALUATORS = (EACH_STEP_DAG, EVENT_DAG)
PROMOTING_EVALUATOR = EACH_STEP_DAG  # whose metric "best" (promotion, keep_best) means
UNEVALUATED_MAX_AGE = 24 * 3600.0


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def demo_root() -> str:
    return os.environ.get("TF_CKPT_DEMO_DIR") or "/tmp/tf_ckpt_demo"


def ckpt_dir() -> str:
    """Where the trainer saves its steps."""
    return _join(demo_root(), "checkpoints")


def promoted_dir() -> str:
    """Where the best step is published."""
    return _join(demo_root(), "promoted")


def gc_schedule() -> str:
    """``tf_ckpt_gc``'s schedule: ``TF_CKPT_DEMO_GC_SCHEDULE`` (a cron or preset), default hourly."""
    return os.environ.get("TF_CKPT_DEMO_GC_SCHEDULE") or "@hourly"


def conn_id() -> str | None:
    return os.environ.get("TF_CKPT_CONN_ID") or None
