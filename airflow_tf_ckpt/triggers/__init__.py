"""Airflow triggers of airflow-tf-ckpt."""

from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger, CheckpointTrigger

__all__ = ["CheckpointEventTrigger", "CheckpointTrigger"]
