"""Watching a checkpoint dir for newly committed steps: the pure polling logic.

``poller``: the :class:`~airflow_tf_ckpt.core.watch.poller.Poller` that the sensor (poke and
reschedule modes) and both triggers run; ``snapshot``: a Location over data a poll already
fetched, so that the core's ``discover`` judges steps without further I/O.

This package imports neither Airflow nor TensorFlow. This ``__init__`` imports nothing at all, so
that adapters may read :data:`PICK_CHOICES` when a DAG file is parsed; ``poller`` imports the
state-file parser (protobuf) and discovery, so adapters import it only where a poll runs.
"""

from __future__ import annotations

# Which step a one-shot wait returns: the newest ready step, or the oldest one after the watermark.
PICK_CHOICES = ("newest", "oldest")
