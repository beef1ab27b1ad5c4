"""The ``tf-ckpt`` commands: importing this package registers each on ``cli.app``."""

from airflow_tf_ckpt.cli.commands import gc, ls, metrics, promote, quarantine, validate

__all__ = ["gc", "ls", "metrics", "promote", "quarantine", "validate"]
