"""Airflow sensors of airflow-tf-ckpt."""

from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor, CheckpointWatermarkOperator

__all__ = ["CheckpointSensor", "CheckpointWatermarkOperator"]
