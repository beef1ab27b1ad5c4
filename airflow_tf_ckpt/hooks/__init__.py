"""Airflow hooks of airflow-tf-ckpt.

``storage``: :class:`CheckpointStorageHook` (a dir URL + a connection -> a core Location or an async
dir); ``credentials``: a connection's extras -> google-auth credentials; ``readers``: blocking and
async reads of one dir (the state file, prefix listings); ``sessions``: one async gcsfs session per
event loop and credentials.
"""

from airflow_tf_ckpt.hooks.readers import AsyncCheckpointDir
from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

__all__ = ["AsyncCheckpointDir", "CheckpointStorageHook"]
