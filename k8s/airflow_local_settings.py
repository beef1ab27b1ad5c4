"""KubernetesExecutor: TensorFlow tasks in a GPU pod, with the example DAGs unchanged.

Put this file on the scheduler's ``PYTHONPATH`` (e.g. ``$AIRFLOW_HOME/config/``) as
``airflow_local_settings.py``. Its ``task_policy`` gives every task whose queue is
``[tf_ckpt] gpu_queue`` (``RestoreCheckpointOperator``, ``EvaluateCheckpointOperator``, the demo's
training task) ``executor_config={"pod_override": gpu_pod_override()}``: the TensorFlow image, an
``nvidia.com/gpu`` limit, a GPU node toleration, the checkpoint volume and, when
``TF_CKPT_GCS_SECRET`` names a Kubernetes secret, GCS credentials from it. Everything else runs in
``pod_template.yaml``'s CPU pod.

Checked in ``tests/test_kubernetes.py`` (the ``kubernetes`` client's models, and Airflow applying the
policy to the example DAGs); never run on a cluster here.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes.client import models as k8s

GPU_IMAGE = os.environ.get("TF_CKPT_GPU_IMAGE", "airflow-tf-ckpt-gpu:latest")  # tensorflow[and-cuda]
CKPT_MOUNT = "/opt/airflow/tf_ckpt"


def gpu_pod_override(gcs_secret: str | None = None) -> k8s.V1Pod:
    """The ``base`` container on the TF image with one GPU; merged into the pod template."""
    mounts = [k8s.V1VolumeMount(name="tf-ckpt", mount_path=CKPT_MOUNT)]
    volumes = [
        k8s.V1Volume(
            name="tf-ckpt", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource("tf-ckpt")
        )
    ]
    env = [k8s.V1EnvVar(name="TF_CKPT_DEMO_DIR", value=CKPT_MOUNT)]
    if gcs_secret:
        mounts.append(k8s.V1VolumeMount(name="gcs-key", mount_path="/var/secrets/gcs", read_only=True))
        volumes.append(k8s.V1Volume(name="gcs-key", secret=k8s.V1SecretVolumeSource(secret_name=gcs_secret)))
        env.append(k8s.V1EnvVar(name="GOOGLE_APPLICATION_CREDENTIALS", value="/var/secrets/gcs/key.json"))
    base = k8s.V1Container(
        name="base",
        image=GPU_IMAGE,
        env=env,
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "2", "memory": "8Gi"},
            limits={"nvidia.com/gpu": "1", "memory": "16Gi"},
        ),
        volume_mounts=mounts,
    )
    toleration = k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    return k8s.V1Pod(spec=k8s.V1PodSpec(containers=[base], volumes=volumes, tolerations=[toleration]))


def task_policy(task: Any) -> None:
    """Airflow's cluster policy hook: TensorFlow tasks (the gpu queue) get the GPU pod."""
    from airflow_tf_ckpt.config import gpu_queue

    if task.queue == gpu_queue() and "pod_override" not in (task.executor_config or {}):
        task.executor_config = {
            **(task.executor_config or {}),
            "pod_override": gpu_pod_override(os.environ.get("TF_CKPT_GCS_SECRET")),
        }
