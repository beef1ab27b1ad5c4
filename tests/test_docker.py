"""docker/: the compose file's structure and the Dockerfile (Docker itself cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
AIRFLOW_SERVICES = {
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-worker-gpu",
    "airflow-init",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yaml").read_text())


def test_services_match_the_official_layout_plus_a_gpu_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert AIRFLOW_SERVICES | {"postgres", "redis"} <= set(services)
    assert services["postgres"]["image"] == "postgres:16"
    assert services["redis"]["image"].startswith("redis:")
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
        "airflow-worker-gpu": "celery worker -q gpu --concurrency 1",
    }
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert "postgres" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__TF_CKPT__GPU_QUEUE"] == "gpu"


def test_gpu_worker_takes_only_the_gpu_queue_and_reserves_a_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["airflow-worker-gpu"]
    args = gpu["command"].split()
    assert args[:2] == ["celery", "worker"]
    assert args[args.index("-q") + 1] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "tensorflow[and-cuda]" in gpu["build"]["args"]["TF_REQUIREMENT"]
    assert gpu["image"] != compose["services"]["airflow-worker"]["image"]  # its own image, with TF
    # the CPU worker has no TF and no GPU reservation
    cpu = compose["services"]["airflow-worker"]
    assert "deploy" not in cpu and "TF_REQUIREMENT" not in cpu["build"]["args"]


def test_dags_folder_and_checkpoint_volume_are_mounted_everywhere(compose: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        # "${AIRFLOW_PROJ_DIR:-..}/dags:/opt/airflow/dags": split on the LAST colon
        mounts = dict(reversed(v.rsplit(":", 1)) for v in service["volumes"])
        assert "/opt/airflow/dags" in mounts, name
        assert mounts["/opt/airflow/dags"] == "${AIRFLOW_PROJ_DIR:-..}/dags", name  # the repo's dags/
        assert "/opt/airflow/tf_ckpt" in mounts, name
        assert service["environment"]["TF_CKPT_DEMO_DIR"] == "/opt/airflow/tf_ckpt"
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert compose["services"]["airflow-apiserver"]["ports"] == ["8080:8080"]


def test_dockerfile_extends_the_official_image_with_our_package() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.\d+$", text, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11$", text, re.M)
    assert "FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in text
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text  # pip cannot change Airflow
    assert '"/opt/airflow-tf-ckpt[${EXTRAS}]"' in text
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert "tensorflow-cpu" not in code  # one TF distribution only
    assert "TF_REQUIREMENT" in code


def test_readme_says_it_was_not_run_here() -> None:
    text = (DOCKER / "README.md").read_text()
    assert "Not run here" in text and "celery worker -q gpu" in text
