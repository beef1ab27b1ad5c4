"""docker/: the compose file's structure and the Dockerfile (Docker itself cannot run here).

The compose file is parsed by a compose implementation (Debian's ``docker-compose`` 1.29, which
needs no engine for ``config``) and its settings are checked against the ones the loopback Celery
stack (``scripts/stack.py``, ``tests/test_celery_stack.py``) ran with.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
        "airflow-worker": "celery worker -q default",
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


def test_compose_validates_with_a_compose_parser() -> None:
    """``docker-compose config -q``: the schema, the anchors and the variables resolve."""
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("TF_CKPT_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is missing (apt-get install -y docker-compose)")
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    proc = subprocess.run(
        [exe, "-f", str(DOCKER / "docker-compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DOCKER,
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_uses_the_settings_the_loopback_stack_ran_with(compose: dict[str, Any]) -> None:
    env = compose["services"]["airflow-worker"]["environment"]
    # SQLAlchemy 2.1 defaults postgresql:// to psycopg v3: workers die with "No module named 'psycopg'"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] and env["AIRFLOW__API__SECRET_KEY"]
    assert env["AIRFLOW__TF_CKPT__GPU_QUEUE"] == "gpu"
    # the broker-outage settings the stack's Redis restart test runs with, and a persistent queue
    import json
    import sys

    sys.path.insert(0, str(DOCKER.parent / "scripts"))
    from stack import BROKER_OUTAGE_ENV

    def parsed(env: dict[str, Any]) -> dict[str, Any]:
        return {k: json.loads(str(env[k])) for k in BROKER_OUTAGE_ENV}

    assert parsed(env) == parsed(BROKER_OUTAGE_ENV)
    assert "--appendonly" in compose["services"]["redis"]["command"]
    for name in ("airflow-worker", "airflow-worker-gpu"):
        assert "celery" in compose["services"][name]["build"]["args"]["EXTRAS"].split(","), name
    # the celery extra carries the pin (celery 5.7.0 kills the scheduler)
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    celery_extra = re.search(r"^celery = \[(.*?)^\]", pyproject, re.M | re.S)
    assert celery_extra is not None, "no celery extra in pyproject.toml"
    assert '"celery[redis]==5.6.3"' in celery_extra.group(1)
    assert '"psycopg2-binary' in celery_extra.group(1)


def test_readme_says_it_was_not_run_here() -> None:
    text = (DOCKER / "README.md").read_text()
    assert "Not run here" in text and "celery worker -q gpu" in text
