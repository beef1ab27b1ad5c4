"""The example DAGs in ``dags/``: they parse without TensorFlow, and the whole chain runs.

The chain (train -> evaluate every step -> GC -> promote the best) runs through ``dag.test()`` on
the session's fresh SQLite AIRFLOW_HOME, on a local dir AND on gs:// (fake-gcs-server on 127.0.0.1;
the sensor, the operators and the trainer all see ``STORAGE_EMULATOR_HOST``). The DAG files are
the repository's own, unchanged: only ``TF_CKPT_DEMO_DIR`` differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
DAG_IDS = {"tf_ckpt_train_demo", "tf_ckpt_evaluate_each_step", "tf_ckpt_gc", "tf_ckpt_event_driven"}

pytestmark = [pytest.mark.airflow]

PARSE_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
       "dag_ids": sorted(bag.dag_ids), "tensorflow_imported": "tensorflow" in sys.modules,
       "protobuf_imported": "google.protobuf" in sys.modules,
       "provider_modules": sorted(m for m in sys.modules if m.startswith("airflow_tf_ckpt")),
       "files": sorted({d.fileloc.rsplit("/", 1)[-1] for d in bag.dags.values()}), "dags": {}}
for dag in bag.dags.values():
    info = {"doc": bool(dag.doc_md or dag.description), "max_active_runs": dag.max_active_runs,
            "schedule": str(getattr(dag.timetable, "summary", dag.timetable)),
            "queues": {t.task_id: t.queue for t in dag.tasks},
            "params": sorted(dag.params.keys())}
    cond = getattr(dag.timetable, "asset_condition", None)
    if cond is not None:
        assets = list(getattr(cond, "objects", None) or [cond])
        info["watchers"] = [type(w.trigger).__module__ + "." + type(w.trigger).__qualname__
                            for asset in assets for w in (getattr(asset, "watchers", None) or [])]
    out["dags"][dag.dag_id] = info
print("RESULT" + json.dumps(out))
"""


def test_every_dag_file_imports_without_tensorflow(tmp_path: Path) -> None:
    """DagBag over dags/ in a fresh process: no import errors, and TF never imported at parse time.

    Nor protobuf, the state-file/discovery core or the storage hook: they are imported by the
    methods that run in a task or the triggerer (a dag-processor imports our modules anew for
    every parse). fsspec is not checked: ``airflow.sdk`` imports it itself.
    """
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        TF_CKPT_DEMO_DIR=str(tmp_path / "demo"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(DAGS)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["import_errors"] == {}
    assert set(out["dag_ids"]) == DAG_IDS
    assert out["tensorflow_imported"] is False
    assert out["protobuf_imported"] is False
    task_time_only = {
        "airflow_tf_ckpt.core.formats.state",
        "airflow_tf_ckpt.core.formats.protos",
        "airflow_tf_ckpt.core.steps.discovery",
        "airflow_tf_ckpt.core.storage.location",
        "airflow_tf_ckpt.core.watch.poller",
        "airflow_tf_ckpt.hooks.credentials",
        "airflow_tf_ckpt.hooks.readers",
        "airflow_tf_ckpt.hooks.sessions",
        "airflow_tf_ckpt.hooks.storage",
        "airflow_tf_ckpt.tf_runtime",
    }
    assert task_time_only.isdisjoint(out["provider_modules"]), out["provider_modules"]
    py_files = sorted(p.name for p in DAGS.glob("*.py"))
    assert out["files"] == py_files  # every file in dags/ holds a DAG
    dags = out["dags"]
    assert all(d["doc"] for d in dags.values())
    assert dags["tf_ckpt_train_demo"]["queues"]["train"] == "gpu"
    assert dags["tf_ckpt_evaluate_each_step"]["queues"]["evaluate"] == "gpu"
    assert dags["tf_ckpt_evaluate_each_step"]["max_active_runs"] == 1
    assert dags["tf_ckpt_gc"]["max_active_runs"] == 1
    assert "hour" in dags["tf_ckpt_gc"]["schedule"].lower() or "0 * * * *" in dags["tf_ckpt_gc"]["schedule"]
    assert dags["tf_ckpt_event_driven"]["watchers"] == [
        "airflow_tf_ckpt.triggers.checkpoint.CheckpointEventTrigger"
    ]
    assert "ckpt_dir" in dags["tf_ckpt_train_demo"]["params"]


def test_steps_from_events_orders_and_dedups() -> None:
    sys.path.insert(0, str(DAGS))
    try:
        import importlib

        mod = importlib.import_module("tf_ckpt_event_driven")
    finally:
        sys.path.remove(str(DAGS))

    class Ev:
        def __init__(self, payload: Any) -> None:
            self.extra = {"from_trigger": True, "payload": payload}

    events = [
        Ev({"checkpoint": "ckpt-20", "step": 20}),
        Ev({"checkpoint": "ckpt-10", "step": 10}),
        Ev({"checkpoint": "ckpt-20", "step": 20}),
        Ev(None),
        {"extra": {"payload": {"checkpoint": "ckpt-5", "step": 5}}},
    ]
    assert mod.steps_from_events(events) == ["ckpt-5", "ckpt-10", "ckpt-20"]
    assert mod.steps_from_events([]) == []


# ---------------------------------------------------------------------------------------------
# the chain


@pytest.fixture
def example_dags(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``run(dag_id, conf)``: the repo's DAG file copied into the dags folder and run by dag.test()."""
    from tests.fixtures.airflow_env import _collect, dags_folder, load_dag

    monkeypatch.setenv("AIRFLOW__TF_CKPT__POLL_INTERVAL", "1")
    copied: list[Path] = []

    def run(dag_id: str, conf: dict[str, Any] | None = None) -> Any:
        dest = dags_folder() / f"{dag_id}.py"
        shutil.copy(DAGS / f"{dag_id}.py", dest)
        copied.append(dest)
        dag = load_dag(dest, dag_id)
        return _collect(dag.test(run_conf=conf))

    yield run
    for p in copied:
        p.unlink(missing_ok=True)


def _chain(run: Any, demo_root: str, capfd: Any) -> dict[str, Any]:
    """train 2 steps -> evaluate each (oldest first) -> event-driven eval -> GC -> checks."""
    from airflow_tf_ckpt.core.promote.manifest import read_manifest
    from airflow_tf_ckpt.core.sidecars.metrics import read_metrics
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    ckpt_dir, promoted = f"{demo_root}/checkpoints", f"{demo_root}/promoted"
    hook = CheckpointStorageHook()
    tr = run("tf_ckpt_train_demo", {"steps": 6, "save_every": 2})
    assert tr.ok, tr
    assert tr.xcoms["train"]["steps"] == [2, 4, 6]

    evaluated: list[int] = []
    for expected in (2, 4, 6):  # one step per run, oldest first: none is skipped
        ev = run("tf_ckpt_evaluate_each_step")
        assert ev.state == "success", (ev, capfd.readouterr().out[-5000:])
        assert ev.xcoms["wait"]["step"] == expected
        assert ev.xcoms["validate"]["ok"] is True
        assert ev.xcoms["evaluate"]["step"] == expected and "loss" in ev.xcoms["evaluate"]["metrics"]
        # promoted only when it is the best so far; the watermark is committed either way
        assert ev.task_states["promote_if_best"] in ("success", "skipped"), ev
        if ev.task_states["promote_if_best"] == "success":
            assert ev.xcoms["promote_if_best"]["step"] == expected
        assert ev.task_states["commit"] == "success"
        evaluated.append(ev.xcoms["wait"]["step"])
    assert evaluated == [2, 4, 6]

    loc = hook.get_location(ckpt_dir)
    losses = {
        s: read_metrics(loc, f"ckpt-{s}", evaluator="tf_ckpt_evaluate_each_step")["loss"] for s in (2, 4, 6)
    }
    best = min(losses, key=lambda s: (losses[s], -s))
    assert losses[6] < losses[2]  # it does learn

    # the event-driven DAG, run by hand: its work is every step after ITS watermark (the other
    # DAG's evaluations are not its own), through its mapped group; nothing is left to follow up
    ed = run("tf_ckpt_event_driven")
    assert ed.ok, ed
    assert ed.xcoms["pending_steps"] == ["ckpt-2", "ckpt-4", "ckpt-6"]
    assert ed.task_states["follow_up"] == "skipped", ed
    for s in (2, 4, 6):
        assert read_metrics(loc, f"ckpt-{s}", evaluator="tf_ckpt_event_driven") is not None
    again = run("tf_ckpt_event_driven")  # the watermark moved: nothing to do
    assert again.ok and again.xcoms["pending_steps"] == [], again

    gc = run("tf_ckpt_gc", {"keep_last": 1, "keep_best": 1, "keep_every_steps": 100})
    assert gc.ok, gc
    assert gc.xcoms["retention"]["dry_run"] is False
    kept = {6, best}  # the newest, and the best by loss (also the promoted one)
    assert gc.xcoms["retention"]["deleted_steps"] == sorted({2, 4, 6} - kept)

    left = {s.step for s in discover(loc, "ckpt").steps}
    assert left == kept
    manifest = read_manifest(hook.get_location(promoted))
    assert manifest is not None and manifest.step == best
    return {"losses": losses, "promoted": manifest.step, "best": best}


def test_chain_on_a_local_dir(example_dags, tmp_path, monkeypatch, capfd) -> None:
    root = str(tmp_path / "demo")
    monkeypatch.setenv("TF_CKPT_DEMO_DIR", root)
    out = _chain(example_dags, root, capfd)
    assert os.path.exists(f"{root}/promoted/ckpt-{out['best']}.index")


@pytest.mark.gcs
def test_chain_on_gcs(example_dags, gcs_emulator, gcs_bucket, monkeypatch, capfd) -> None:
    assert os.environ.get("STORAGE_EMULATOR_HOST") == gcs_emulator.url  # what the sensor uses
    root = f"gs://{gcs_bucket}/demo"
    monkeypatch.setenv("TF_CKPT_DEMO_DIR", root)
    out = _chain(example_dags, root, capfd)
    assert gcs_emulator.fs().exists(f"{gcs_bucket}/demo/promoted/ckpt-{out['best']}.index")
