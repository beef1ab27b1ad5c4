"""``tf-ckpt``: list, validate, garbage-collect, promote and quarantine TensorFlow checkpoints.

Works on local dirs and on any fsspec URL (``gs://`` with gcsfs; ``STORAGE_EMULATOR_HOST`` points
it at an emulator). It imports neither TensorFlow nor Airflow, so it runs on any box.

Exit codes: 0 all good; 1 a problem was found (a corrupt or incomplete step, nothing to
promote); 2 usage or input error (bad option, a dir that does not exist, an unknown step). An
error is ONE line on stderr, never a traceback (set ``TF_CKPT_DEBUG=1`` to see one). With
``--json`` stdout holds one JSON document and nothing else; tables, progress bars and messages
for humans go to stdout only without ``--json`` (progress always goes to stderr).

Each command (one module in ``commands/``) calls one core function or workflow and formats its
result; start-up stays short because rich, fsspec and protobuf are imported inside the commands.
"""

from __future__ import annotations

from airflow_tf_ckpt.cli._app import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, CliError, app, main

__all__ = ["EXIT_OK", "EXIT_PROBLEM", "EXIT_USAGE", "CliError", "app", "main"]
