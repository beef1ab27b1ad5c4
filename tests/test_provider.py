"""Provider registration (entry point, schema, ``airflow providers list``) and the [tf_ckpt] config."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_tf_ckpt import __version__, config
from airflow_tf_ckpt.get_provider_info import get_provider_info

pytestmark = pytest.mark.airflow


def test_provider_info_matches_airflows_schema():
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    assert info["package-name"] == "airflow-tf-ckpt" and info["versions"] == [__version__]
    options = info["config"]["tf_ckpt"]["options"]
    assert {k: v["default"] for k, v in options.items()} == {
        "gpu_queue": "gpu",
        "poll_interval": "30",
        "settle_seconds": "0",
        "triggerer_gc_freeze": "False",
        "ui_dirs": "",
        "ui_conn_id": "",
    }


def test_registered_modules_and_classes_import():
    info = get_provider_info()
    mine = [
        "airflow_tf_ckpt.hooks.storage",
        "airflow_tf_ckpt.sensors.checkpoint",
        "airflow_tf_ckpt.triggers.checkpoint",
    ]
    listed = [
        m
        for key in ("hooks", "sensors", "triggers", "operators")
        for item in info[key]
        for m in item["python-modules"]
    ]
    assert set(mine) <= set(listed)
    for module in mine:  # the operator modules belong to colleagues; they may land later
        importlib.import_module(module)
    hook_path = info["connection-types"][0]["hook-class-name"]
    module, _, cls = hook_path.rpartition(".")
    hook = getattr(importlib.import_module(module), cls)
    assert hook.conn_type == info["connection-types"][0]["connection-type"]


def test_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = [
        ep for ep in entry_points(group="apache_airflow_provider") if ep.value.startswith("airflow_tf_ckpt")
    ]
    assert len(eps) == 1 and eps[0].load() is get_provider_info


def test_airflow_providers_list_shows_the_package(tmp_path):
    """``airflow providers list`` in a brand-new AIRFLOW_HOME (no DB needed) lists us, and the
    provider's config section reaches ``airflow config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow = str(Path(sys.executable).with_name("airflow"))
    out = subprocess.run(
        [airflow, "providers", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    rows = json.loads(out[out.index("[") :])
    row = next(r for r in rows if r["package_name"] == "airflow-tf-ckpt")
    assert row["version"] == __version__
    value = subprocess.run(
        [airflow, "config", "get-value", "tf_ckpt", "gpu_queue"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.strip()
    assert value.splitlines()[-1] == "gpu"


def test_config_accessors(monkeypatch):
    assert (config.gpu_queue(), config.poll_interval(), config.settle_seconds()) == ("gpu", 30.0, 0.0)
    monkeypatch.setenv("AIRFLOW__TF_CKPT__GPU_QUEUE", "a100")
    monkeypatch.setenv("AIRFLOW__TF_CKPT__POLL_INTERVAL", "2.5")
    monkeypatch.setenv("AIRFLOW__TF_CKPT__SETTLE_SECONDS", "60")
    assert (config.gpu_queue(), config.poll_interval(), config.settle_seconds()) == ("a100", 2.5, 60.0)
    monkeypatch.setenv("AIRFLOW__TF_CKPT__POLL_INTERVAL", "soon")  # malformed: the default, no crash
    monkeypatch.setenv("AIRFLOW__TF_CKPT__SETTLE_SECONDS", "-5")
    assert (config.poll_interval(), config.settle_seconds()) == (30.0, 0.0)


def test_core_and_provider_info_stay_airflow_free():
    """The core, the config accessors and get_provider_info import neither Airflow nor TF."""
    code = (
        "import sys; import airflow_tf_ckpt.get_provider_info, airflow_tf_ckpt.config, "
        "airflow_tf_ckpt.core.steps.discovery; "
        "bad = [m for m in ('airflow', 'tensorflow') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
    code = (
        "import sys; import airflow_tf_ckpt.sensors, airflow_tf_ckpt.triggers, airflow_tf_ckpt.hooks; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
