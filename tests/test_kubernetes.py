"""k8s/: the KubernetesExecutor pod template and the GPU ``pod_override``, checked against the
``kubernetes`` client's models (no cluster here), and Airflow applying the cluster policy to the
example DAGs: every gpu-queue task (training, every evaluate) gets the GPU pod, no other task does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

k8s_client = pytest.importorskip("kubernetes.client")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
sys.path.insert(0, str(K8S))
import airflow_local_settings as policy  # noqa: E402


class _Response:
    """What ``ApiClient.deserialize`` reads: a response with a JSON ``data``."""

    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj)


def _as_model(obj: dict[str, Any]) -> Any:
    return k8s_client.ApiClient().deserialize(_Response(obj), "V1Pod")


def _plain(model: Any) -> Any:
    return k8s_client.ApiClient().sanitize_for_serialization(model)


def test_pod_template_is_a_valid_pod_with_a_base_container() -> None:
    raw = yaml.safe_load((K8S / "pod_template.yaml").read_text())
    pod = _as_model(raw)
    # a key the models do not know (a typo) would be dropped: the round trip shows it
    assert _plain(pod) == raw
    base = [c for c in pod.spec.containers if c.name == "base"]
    assert len(base) == 1 and "nvidia.com/gpu" not in (base[0].resources.limits or {})
    mounts = {m.name: m.mount_path for m in base[0].volume_mounts}
    assert mounts["tf-ckpt"] == "/opt/airflow/tf_ckpt"
    assert {v.name for v in pod.spec.volumes} >= set(mounts)


@pytest.mark.parametrize("secret", [None, "tf-ckpt-gcs-key"])
def test_gpu_pod_override(secret: str | None) -> None:
    pod = policy.gpu_pod_override(secret)
    assert _plain(_as_model(_plain(pod))) == _plain(pod)  # survives the models both ways
    (base,) = pod.spec.containers
    assert base.name == "base" and base.image.endswith("-gpu:latest")
    assert base.resources.limits["nvidia.com/gpu"] == "1"
    assert {v.name for v in pod.spec.volumes} == {m.name for m in base.volume_mounts}
    env = {e.name: e.value for e in base.env}
    assert env["TF_CKPT_DEMO_DIR"] == "/opt/airflow/tf_ckpt"
    assert ("GOOGLE_APPLICATION_CREDENTIALS" in env) == bool(secret)


SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "tasks": {}}
for dag_id, dag in bag.dags.items():
    for t in dag.tasks:
        pod = (t.executor_config or {}).get("pod_override")
        out["tasks"][f"{dag_id}.{t.task_id}"] = [t.queue, pod is not None and
            pod.spec.containers[0].resources.limits.get("nvidia.com/gpu")]
print(json.dumps(out))
"""


@pytest.mark.airflow
def test_airflow_applies_the_policy_to_the_example_dags(tmp_path: Path) -> None:
    """Airflow loads ``airflow_local_settings`` from the path and runs its ``task_policy``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        PYTHONPATH=str(K8S),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path / 'airflow.db'}",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == {}
    tasks = out["tasks"]
    gpu = {t for t, (queue, _) in tasks.items() if queue == "gpu"}
    assert {"tf_ckpt_evaluate_each_step.evaluate", "tf_ckpt_train_demo.train"} <= gpu
    assert any(t.endswith("check_and_evaluate.evaluate") for t in gpu)
    for task, (queue, limit) in tasks.items():
        assert limit == ("1" if queue == "gpu" else False), task


@pytest.mark.airflow
def test_the_executor_merges_the_override_into_the_template() -> None:
    """What the KubernetesExecutor builds for an evaluate task: the template's pod with the GPU
    image, the GPU limit and the toleration, the template's dags and checkpoint mounts kept."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    template = PodGenerator.deserialize_model_file(str(K8S / "pod_template.yaml"))
    pod = PodGenerator.reconcile_pods(template, policy.gpu_pod_override("tf-ckpt-gcs-key"))
    (base,) = pod.spec.containers
    assert base.image.endswith("-gpu:latest") and base.resources.limits["nvidia.com/gpu"] == "1"
    assert {m.mount_path for m in base.volume_mounts} >= {
        "/opt/airflow/dags",
        "/opt/airflow/tf_ckpt",
        "/var/secrets/gcs",
    }
    assert {v.name for v in pod.spec.volumes} == {m.name for m in base.volume_mounts}
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert pod.spec.restart_policy == "Never" and pod.spec.security_context.run_as_user == 50000
