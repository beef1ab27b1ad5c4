"""Airflow hooks of airflow-tf-ckpt."""

from airflow_tf_ckpt.hooks.storage import AsyncCheckpointDir, CheckpointStorageHook

__all__ = ["AsyncCheckpointDir", "CheckpointStorageHook"]
