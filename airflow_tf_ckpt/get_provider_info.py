"""Provider metadata for Airflow's ``apache_airflow_provider`` entry point (see pyproject.toml).

Airflow's ProvidersManager calls :func:`get_provider_info` and validates the dict against
``airflow/provider_info.schema.json``: ``name`` and ``description`` are required; ``triggers``
items must hold exactly ``integration-name`` and ``python-modules``; every ``config`` option needs
``description``, ``version_added``, ``type``, ``example`` and ``default`` (defaults are strings,
as in Airflow's own config templates). ``versions`` is not in the schema but extra keys are allowed
and it matches provider.yaml. This module must stay import-light: no Airflow, no TensorFlow.
"""

from __future__ import annotations

import copy
from typing import Any

from airflow_tf_ckpt import __version__

INTEGRATION = "TensorFlow Checkpoints"
CONN_TYPE = "tf_ckpt_storage"


# The connection form of a ``tf_ckpt_storage`` connection (gs:// credentials; see hooks.credentials).
CONNECTION_TYPES: list[dict[str, Any]] = [
    {
        "hook-class-name": "airflow_tf_ckpt.hooks.storage.CheckpointStorageHook",
        "hook-name": "TensorFlow checkpoint storage",
        "connection-type": CONN_TYPE,
        "ui-field-behaviour": {
            "hidden-fields": ["host", "schema", "login", "password", "port"],
            "relabeling": {},
            "placeholders": {},
        },
        "conn-fields": {
            "project": {"label": "Project Id", "schema": {"type": ["string", "null"]}},
            "key_path": {"label": "Keyfile Path", "schema": {"type": ["string", "null"]}},
            "keyfile_dict": {
                "label": "Keyfile JSON",
                "schema": {"type": ["string", "null"], "format": "password"},
            },
            "endpoint_url": {
                "label": "GCS endpoint URL (emulators only)",
                "schema": {"type": ["string", "null"]},
            },
        },
    }
]

# The ``[tf_ckpt]`` config section (read through airflow_tf_ckpt.config).
CONFIG: dict[str, Any] = {
    "tf_ckpt": {
        "description": "TensorFlow checkpoint provider (airflow-tf-ckpt).",
        "options": {
            "gpu_queue": {
                "description": "Executor queue that TensorFlow restore/evaluate tasks are sent to "
                "(a Celery worker started with ``-q`` this queue on a GPU host).",
                "version_added": "0.1.0",
                "type": "string",
                "example": "gpu",
                "default": "gpu",
            },
            "poll_interval": {
                "description": "Seconds between two polls of a checkpoint dir by sensors and "
                "triggers (each poll reads the state file; it lists the dir only "
                "when the state file names a new step).",
                "version_added": "0.1.0",
                "type": "float",
                "example": "30",
                "default": "30",
            },
            "settle_seconds": {
                "description": "A committed step counts only once its newest file and its state "
                "timestamp are at least this many seconds old.",
                "version_added": "0.1.0",
                "type": "float",
                "example": "60",
                "default": "0",
            },
            "triggerer_gc_freeze": {
                "description": "When True, the first checkpoint trigger to run in a triggerer "
                "process calls ``gc.freeze()``: CPython's full collections then skip "
                "the ~200k objects Airflow loaded at start-up, which otherwise stall "
                "the triggerer's event loop for 0.1-0.3 s each time (Airflow's own "
                "dag processor does the same). Costs nothing per poll; the objects "
                "frozen are never collected, which suits start-up objects.",
                "version_added": "0.1.0",
                "type": "boolean",
                "example": "True",
                "default": "False",
            },
            "ui_dirs": {
                "description": "More checkpoint dirs (local paths or gs:// URLs, separated by "
                "commas or newlines) for the Checkpoints page under Browse. The "
                "page already shows every dir the deployment's DAGs watch "
                "(sensors, asset watchers, retention and other provider tasks).",
                "version_added": "0.1.0",
                "type": "string",
                "example": "gs://my-bucket/run-7/checkpoints, /data/ckpt",
                "default": "",
            },
            "ui_conn_id": {
                "description": "Airflow connection the Checkpoints page uses for a gs:// dir "
                "when no sensor or asset watcher of that dir names one "
                "(operators do not keep their conn_id in the serialized DAG).",
                "version_added": "0.1.0",
                "type": "string",
                "example": "google_cloud_default",
                "default": "",
            },
        },
    }
}


def get_provider_info() -> dict[str, Any]:
    """The provider's metadata (what ``airflow providers list`` and the connection form show)."""
    return {
        "package-name": "airflow-tf-ckpt",
        "name": "TensorFlow Checkpoints",
        "description": "Watch, validate, evaluate, garbage-collect and promote TensorFlow checkpoints "
        "on local disk or gs:// from Apache Airflow 3.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": INTEGRATION,
                "external-doc-url": "https://www.tensorflow.org/guide/checkpoint",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_tf_ckpt.hooks.storage"]},
        ],
        "sensors": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_tf_ckpt.sensors.checkpoint"]},
        ],
        "triggers": [
            {"integration-name": INTEGRATION, "python-modules": ["airflow_tf_ckpt.triggers.checkpoint"]},
        ],
        "operators": [
            {
                "integration-name": INTEGRATION,
                "python-modules": [
                    "airflow_tf_ckpt.operators.validate",
                    "airflow_tf_ckpt.operators.tensorflow",
                    "airflow_tf_ckpt.operators.retention",
                    "airflow_tf_ckpt.operators.promote",
                ],
            }
        ],
        "connection-types": copy.deepcopy(CONNECTION_TYPES),  # callers may edit their copy
        "config": copy.deepcopy(CONFIG),
    }
