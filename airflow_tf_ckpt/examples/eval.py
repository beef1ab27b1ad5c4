"""An example ``eval_fn`` for :class:`~airflow_tf_ckpt.operators.EvaluateCheckpointOperator`.

The operator restores the step into ``build_checkpoint()`` (from ``examples.train``) and calls
``evaluate(restored, step)``; the returned floats become the step's metrics sidecar, the task's
XCom and the Asset event's extra. Use them as dotted paths in a DAG::

    EvaluateCheckpointOperator(..., build_fn="airflow_tf_ckpt.examples.eval.build_checkpoint",
                               eval_fn="airflow_tf_ckpt.examples.eval.evaluate")
"""

from __future__ import annotations

from typing import Any

from airflow_tf_ckpt.examples.train import build_checkpoint as _build_checkpoint
from airflow_tf_ckpt.examples.train import synthetic_data

VALIDATION_SEED = 12345
VALIDATION_SIZE = 512


def build_checkpoint() -> Any:
    """What evaluation restores into: the model only (the optimizer's values are not needed)."""
    return _build_checkpoint(with_optimizer=False)


def evaluate(restored: Any, step: int | None) -> dict[str, float]:
    """Mean squared and absolute error on a fixed held-out synthetic set (lower is better)."""
    import numpy as np

    x, y = synthetic_data(VALIDATION_SIZE, VALIDATION_SEED)
    pred = np.asarray(restored.model(x, training=False))
    err = pred - y
    return {"loss": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}
