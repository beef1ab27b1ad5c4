"""Operators of airflow-tf-ckpt: thin adapters over the core (and tf_runtime for TensorFlow).

Importing this package imports neither TensorFlow nor anything heavy: TF is loaded only inside
``RestoreCheckpointOperator.execute`` / ``EvaluateCheckpointOperator.execute``.
"""

from airflow_tf_ckpt.operators.promote import PromoteCheckpointOperator
from airflow_tf_ckpt.operators.retention import CheckpointRetentionOperator
from airflow_tf_ckpt.operators.tensorflow import EvaluateCheckpointOperator, RestoreCheckpointOperator
from airflow_tf_ckpt.operators.validate import ValidateCheckpointOperator

__all__ = [
    "CheckpointRetentionOperator",
    "EvaluateCheckpointOperator",
    "PromoteCheckpointOperator",
    "RestoreCheckpointOperator",
    "ValidateCheckpointOperator",
]
