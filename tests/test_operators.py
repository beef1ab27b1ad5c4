"""The operators through ``dag.test()`` on the session's fresh SQLite AIRFLOW_HOME, over REAL TF
checkpoints (``tests/tf_factory.py`` built them in a subprocess).

Validate / retention / promote never import TensorFlow. Restore and Evaluate do, in this process
(``dag.test()`` runs tasks in process): that is where TF is unavoidable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.airflow]

HELPERS = "tests.operator_helpers"


def _dag(dag_id: str, body: str) -> str:
    """DAG source with the usual imports; ``body`` is indented under ``with DAG(...)``."""
    lines = "\n".join("    " + line if line.strip() else "" for line in body.strip("\n").splitlines())
    return (
        "from airflow.sdk import DAG, Asset, AssetAlias\n"
        "from airflow_tf_ckpt.operators import (CheckpointRetentionOperator, EvaluateCheckpointOperator,\n"
        "    PromoteCheckpointOperator, RestoreCheckpointOperator, ValidateCheckpointOperator)\n"
        f"with DAG({dag_id!r}, schedule=None) as dag:\n{lines}\n"
    )


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _state_latest(d: Path) -> str:
    from airflow_tf_ckpt.core.formats.state import parse_state

    return parse_state((d / "checkpoint").read_bytes()).model_checkpoint_path


def _asset_events(name: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name)
            .order_by(AssetEvent.id)
        ).all()
        return [dict(r.extra or {}) | {"_uri": r.uri} for r in rows]


# ---------------------------------------------------------------------------------------------
# unit level: no DAG run


def test_step_argument_forms() -> None:
    from airflow_tf_ckpt.operators._common import parse_step_arg

    payload = {"status": "success", "prefix": "ckpt", "checkpoint": "ckpt-1200", "step": 1200}
    assert parse_step_arg(payload) == "ckpt-1200"  # "prefix" is the BASE name: never the step
    assert parse_step_arg(str(payload)) == "ckpt-1200"  # what Jinja renders from the dict
    assert parse_step_arg(json.dumps(payload)) == "ckpt-1200"
    assert parse_step_arg({"step": 7}) == 7
    assert parse_step_arg("42") == 42 and parse_step_arg(42) == 42
    assert parse_step_arg(" latest ") == "latest" and parse_step_arg(None) == "latest"
    assert parse_step_arg("None") == "latest" and parse_step_arg("best") == "best"
    assert parse_step_arg("gs://b/run/ckpt-9") == "ckpt-9"
    with pytest.raises(ValueError):
        parse_step_arg(True)


def test_tf_operators_default_to_the_gpu_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_tf_ckpt.operators import (
        EvaluateCheckpointOperator,
        RestoreCheckpointOperator,
        ValidateCheckpointOperator,
    )

    r = RestoreCheckpointOperator(task_id="r", ckpt_dir="/x", build_fn=f"{HELPERS}.build_manager_ckpt")
    e = EvaluateCheckpointOperator(task_id="e", ckpt_dir="/x", build_fn="a.b", eval_fn="a.c")
    assert r.queue == "gpu" and e.queue == "gpu"
    assert ValidateCheckpointOperator(task_id="v", ckpt_dir="/x").queue != "gpu"  # no TF: any worker
    monkeypatch.setenv("AIRFLOW__TF_CKPT__GPU_QUEUE", "a100")
    assert RestoreCheckpointOperator(task_id="r2", ckpt_dir="/x", build_fn="a.b").queue == "a100"
    assert RestoreCheckpointOperator(task_id="r3", ckpt_dir="/x", build_fn="a.b", queue="cpu").queue == "cpu"
    with pytest.raises(ValueError, match="build_fn"):
        RestoreCheckpointOperator(task_id="r4", ckpt_dir="/x")


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_passes_on_a_good_step(dag_runner, copy_variant) -> None:
    d = copy_variant("tf2_manager")
    sensor_xcom = "{'status': 'success', 'prefix': 'ckpt', 'checkpoint': 'ckpt-4', 'step': 4}"
    r = dag_runner(
        _dag(
            "op_validate_good",
            f"""
ValidateCheckpointOperator(task_id="latest", ckpt_dir={str(d)!r})
ValidateCheckpointOperator(task_id="from_sensor", ckpt_dir={str(d)!r}, step={sensor_xcom!r})
""",
        ),
        "op_validate_good",
    )
    assert r.ok, r
    assert r.xcoms["latest"]["ok"] and r.xcoms["latest"]["prefix"] == "ckpt-5"
    assert r.xcoms["latest"]["tensors_checked"] > 0
    assert r.xcoms["from_sensor"]["prefix"] == "ckpt-4" and r.xcoms["from_sensor"]["step"] == 4


def test_validate_fails_listing_every_problem(dag_runner, copy_variant, capfd) -> None:
    from airflow_tf_ckpt.core.verify.engine import verify_step

    d = copy_variant("tf2_manager")
    shard = d / "ckpt-4.data-00000-of-00001"
    size = shard.stat().st_size
    _flip(shard, 40)
    _flip(shard, size - 5)  # a second tensor, far from the first
    expected = verify_step(str(d), "ckpt-4").problems
    assert len(expected) >= 2
    before = (d / "checkpoint").read_bytes()
    r = dag_runner(
        _dag(
            "op_validate_bad",
            f"""
ValidateCheckpointOperator(task_id="v", ckpt_dir={str(d)!r}, step=4)
""",
        ),
        "op_validate_bad",
    )
    out = capfd.readouterr().out
    assert r.task_states == {"v": "failed"}
    assert f"failed validation with {len(expected)} problem(s)" in out
    for p in expected:
        assert str(p) in out
    # without quarantine=True nothing is touched
    assert (d / "checkpoint").read_bytes() == before
    assert not (d / "ckpt-4.quarantine.json").exists()


def test_validate_quarantines_a_corrupt_latest_step(dag_runner, copy_variant, capfd, tf_run) -> None:
    d = copy_variant("tf2_manager")
    (d / "ckpt-5.data-00000-of-00001").unlink()  # the newest step lost a shard
    assert _state_latest(d) == "ckpt-5"
    r = dag_runner(
        _dag(
            "op_validate_quarantine",
            f"""
ValidateCheckpointOperator(task_id="v", ckpt_dir={str(d)!r}, step="ckpt-5", quarantine=True)
""",
        ),
        "op_validate_quarantine",
    )
    out = capfd.readouterr().out
    assert r.task_states == {"v": "failed"}
    assert "ckpt-5 was QUARANTINED" in out
    record = json.loads((d / "ckpt-5.quarantine.json").read_text())
    assert record["prefix"] == "ckpt-5" and record["report"]["problems"]
    assert _state_latest(d) == "ckpt-4"
    # TensorFlow itself now falls back to the last good step
    assert os.path.basename(tf_run("latest_checkpoint", str(d))) == "ckpt-4"
    assert (d / "ckpt-5.index").exists()  # kept for inspection


def _two_bad_steps(d: Path) -> None:
    """ckpt-4: named by the state file, one tensor's bytes flipped (a restore fails on its crc);
    ckpt-6: an index without its data shard that the state file does not name (what a save in
    progress looks like: TF's latest_checkpoint never reaches it)."""
    _flip(d / "ckpt-4.data-00000-of-00001", 40)
    (d / "ckpt-6.index").write_bytes((d / "ckpt-5.index").read_bytes())


def test_cli_and_operator_validate_agree(dag_runner, copy_variant, capfd, tf_run) -> None:
    """`tf-ckpt validate --quarantine` and ValidateCheckpointOperator(quarantine=True) run the one
    workflow: on the same real TF dir they find the same problems and quarantine the same steps.
    The corrupt named step is quarantined (TF then restores ckpt-5 as before); the incomplete
    unnamed one fails but is NOT quarantined (it may be a save in progress). Before, the operator
    quarantined it."""
    from tests.test_cli import run_json

    by_cli, by_op = copy_variant("tf2_manager"), copy_variant("tf2_manager")
    _two_bad_steps(by_cli)
    _two_bad_steps(by_op)
    cli = {n: run_json("validate", str(by_cli), "--step", str(n), "--quarantine", code=1) for n in (4, 6)}
    r = dag_runner(
        _dag(
            "op_validate_agree",
            f"""
ValidateCheckpointOperator(task_id="v4", ckpt_dir={str(by_op)!r}, step=4, quarantine=True)
ValidateCheckpointOperator(task_id="v6", ckpt_dir={str(by_op)!r}, step=6, quarantine=True)
""",
        ),
        "op_validate_agree",
    )
    out = capfd.readouterr().out
    assert r.task_states == {"v4": "failed", "v6": "failed"}, r
    for n, doc in cli.items():
        (step,) = doc["steps"]
        assert not doc["ok"] and step["problems"]
        lines = [_problem_str(p).replace(str(by_cli), str(by_op)) for p in step["problems"]]
        assert f"ckpt-{n} failed validation with {len(lines)} problem(s)" in out
        assert all(line in out for line in lines), (lines, out)
    assert cli[4]["steps"][0]["quarantined"] is True and cli[6]["steps"][0]["quarantined"] is False
    for d in (by_cli, by_op):
        assert (d / "ckpt-4.quarantine.json").exists() and not (d / "ckpt-6.quarantine.json").exists()
        assert _state_latest(d) == "ckpt-5"
        assert os.path.basename(tf_run("latest_checkpoint", str(d))) == "ckpt-5"
    assert (by_cli / "checkpoint").read_text() == (by_op / "checkpoint").read_text()


def _problem_str(p: dict[str, Any]) -> str:
    from airflow_tf_ckpt.core.verify.report import Problem

    return str(Problem(**p))


def test_validate_on_gcs(dag_runner, tf_checkpoints, gcs_emulator, gcs_bucket) -> None:
    from tests.fixtures.gcs_emulator import upload_dir

    upload_dir(gcs_emulator.fs(), tf_checkpoints["sharded"].dir, f"{gcs_bucket}/run")
    url = f"gs://{gcs_bucket}/run"
    r = dag_runner(
        _dag(
            "op_validate_gcs",
            f"""
ValidateCheckpointOperator(task_id="v", ckpt_dir={url!r}, step="latest")
""",
        ),
        "op_validate_gcs",
    )
    assert r.ok, r
    assert r.xcoms["v"]["url"] == f"{url}/ckpt-1" and r.xcoms["v"]["ok"]


# ---------------------------------------------------------------------------------------------
# restore (TF2 and TF1)


def test_restore_tf2(dag_runner, copy_variant, capfd) -> None:
    d = copy_variant("tf2_manager")
    r = dag_runner(
        _dag(
            "op_restore_tf2",
            f"""
RestoreCheckpointOperator(task_id="ok", ckpt_dir={str(d)!r}, step="latest",
                          build_fn="{HELPERS}.build_manager_ckpt", fn="{HELPERS}.eval_manager")
RestoreCheckpointOperator(task_id="wrong_model", ckpt_dir={str(d)!r}, step=4,
                          build_fn="{HELPERS}.build_wrong_ckpt")
RestoreCheckpointOperator(task_id="needs_gpu", ckpt_dir={str(d)!r}, require_gpu=True,
                          build_fn="{HELPERS}.build_manager_ckpt")
""",
        ),
        "op_restore_tf2",
    )
    out = capfd.readouterr().out
    assert r.task_states == {"ok": "success", "wrong_model": "failed", "needs_gpu": "failed"}
    ok = r.xcoms["ok"]
    assert ok["prefix"] == "ckpt-5" and ok["device"] == "/CPU:0" and ok["format"] == "tf2"
    assert ok["result"]["restored_step"] == 5.0  # the step counter came back from the checkpoint
    assert "checkpoint does not match the objects build_fn built" in out
    assert "extra_head/kernel" in out and "extra_head/bias" in out  # the unmatched variables, by name
    assert "require_gpu=True but TensorFlow sees no GPU" in out


def test_restore_tf1_seed_style(dag_runner, copy_variant, capfd) -> None:
    v1 = copy_variant("v1")  # model.ckpt-1 and -2, each with a .meta (V1 tables)
    (v1 / "model.ckpt-2.meta").unlink()  # as with write_meta_graph=False after the first save
    saver = copy_variant("tf1_saver")  # the seed: max_to_keep deleted the only .meta
    r = dag_runner(
        _dag(
            "op_restore_tf1",
            f"""
RestoreCheckpointOperator(task_id="meta_of_older_step", format="tf1", ckpt_dir={str(v1)!r}, step=2,
                          fn="{HELPERS}.eval_v1_graph")
RestoreCheckpointOperator(task_id="no_meta_left", format="tf1", ckpt_dir={str(saver)!r}, step="latest")
RestoreCheckpointOperator(task_id="graph_in_code", format="tf1", ckpt_dir={str(saver)!r}, step="latest",
                          build_fn="{HELPERS}.build_tf1_saver_graph", fn="{HELPERS}.eval_tf1_saver")
""",
        ),
        "op_restore_tf1",
    )
    out = capfd.readouterr().out
    assert r.task_states == {
        "meta_of_older_step": "success",
        "no_meta_left": "failed",
        "graph_in_code": "success",
    }, out[-3000:]
    assert r.xcoms["meta_of_older_step"]["result"] == {"biases_sum": 2.0}
    assert f"Importing the graph from {v1}/model.ckpt-1.meta" in out
    assert "no .meta graph at or before this step" in out
    assert r.xcoms["graph_in_code"]["prefix"] == "my_test_model-600"
    assert r.xcoms["graph_in_code"]["result"]["global_step"] == 600.0


# ---------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_writes_sidecar_xcom_asset_event_and_holds_a_lease(dag_runner, copy_variant) -> None:
    from tests import operator_helpers

    d = copy_variant("tf2_manager")
    operator_helpers.LEASES_SEEN.clear()
    operator_helpers.GC_DECISIONS.clear()
    r = dag_runner(
        _dag(
            "op_evaluate",
            f"""
EvaluateCheckpointOperator(task_id="evaluate", ckpt_dir={str(d)!r}, step="ckpt-4",
                           build_fn="{HELPERS}.build_manager_ckpt", eval_fn="{HELPERS}.eval_with_gc_probe",
                           outlets=[Asset("op_eval_metrics")])
""",
        ),
        "op_evaluate",
    )
    assert r.ok, r
    x = r.xcoms["evaluate"]
    assert x["prefix"] == "ckpt-4" and x["step"] == 4 and x["url"] == f"{d}/ckpt-4"
    assert x["metrics"]["restored_step"] == 4.0 and x["metrics"]["leases_seen"] == 1.0
    # the sidecar, as the core reads it
    from airflow_tf_ckpt.core.sidecars.metrics import read_metrics
    from airflow_tf_ckpt.core.storage.location import Location

    assert read_metrics(Location.of(str(d)), "ckpt-4") == pytest.approx(x["metrics"])
    # during the evaluation: one lease, and GC (keep_last=1) would have KEPT the step because of it
    assert len(operator_helpers.LEASES_SEEN) == 1 and len(operator_helpers.LEASES_SEEN[0]) == 1
    decision = operator_helpers.GC_DECISIONS[0]
    assert decision["action"] == "keep" and any("leased" in why for why in decision["reasons"])
    assert not [n for n in os.listdir(d) if ".lease-" in n]  # released afterwards
    events = _asset_events("op_eval_metrics")
    assert events and events[-1]["metrics"] == x["metrics"] and events[-1]["step"] == 4


# ---------------------------------------------------------------------------------------------
# retention


def test_retention_dry_run_then_real(dag_runner, copy_variant, capfd) -> None:
    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5
    files = sorted(os.listdir(d))
    r = dag_runner(
        _dag(
            "op_retention_dry",
            f"""
CheckpointRetentionOperator(task_id="gc", ckpt_dir={str(d)!r}, prefix="ckpt", keep_last=1, dry_run=True)
""",
        ),
        "op_retention_dry",
    )
    out = capfd.readouterr().out
    assert r.ok, r
    assert r.xcoms["gc"]["dry_run"] is True
    assert r.xcoms["gc"]["deleted"] == 2 and r.xcoms["gc"]["deleted_steps"] == [3, 4]
    assert sorted(os.listdir(d)) == files  # nothing deleted
    assert "step  prefix" in out and "DRY" in out.upper()

    r = dag_runner(
        _dag(
            "op_retention_real",
            f"""
CheckpointRetentionOperator(task_id="gc", ckpt_dir={str(d)!r}, prefix="ckpt", keep_last=1)
""",
        ),
        "op_retention_real",
    )
    assert r.ok, r
    x = r.xcoms["gc"]
    assert x["dry_run"] is False and x["deleted"] == 2 and sorted(x["deleted_steps"]) == [3, 4]
    assert x["kept"] == 1 and x["bytes_freed"] > 0
    assert set(x) == {
        "dry_run",
        "kept",
        "deleted",
        "deleted_steps",
        "bytes_freed",
        "bytes_to_free",
        "state_file_rewritten",
        "missing_dir",
    }  # small: no file lists
    left = set(os.listdir(d))
    assert not any(n.startswith(("ckpt-3.", "ckpt-4.")) for n in left)
    assert {"ckpt-5.index", "ckpt-5.data-00000-of-00001", "checkpoint"} <= left
    assert _state_latest(d) == "ckpt-5"


def test_retention_of_a_dir_not_created_yet_succeeds_and_an_unreadable_one_fails(
    dag_runner, tmp_path, capfd
) -> None:
    missing = tmp_path / "not-trained-yet"
    r = dag_runner(
        _dag(
            "op_retention_missing",
            f"""
CheckpointRetentionOperator(task_id="gc", ckpt_dir={str(missing)!r}, keep_last=1,
                            keep_unevaluated=["dag_a", "dag_b"], unevaluated_max_age="1h")
""",
        ),
        "op_retention_missing",
    )
    out = capfd.readouterr().out
    assert r.ok, r
    assert r.xcoms["gc"]["missing_dir"] is True and r.xcoms["gc"]["deleted"] == 0
    assert "does not exist yet: nothing to do" in out and not missing.exists()
    # a path that exists but is no readable dir (here a file: root reads any dir) still fails
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    r = dag_runner(
        _dag(
            "op_retention_not_a_dir",
            f"""
CheckpointRetentionOperator(task_id="gc", ckpt_dir={str(not_a_dir)!r}, keep_last=1)
""",
        ),
        "op_retention_not_a_dir",
    )
    assert r.task_states == {"gc": "failed"}, r


def test_two_evaluators_keep_separate_records_and_promote_uses_the_named_one(
    dag_runner, copy_variant, tmp_path
) -> None:
    from airflow_tf_ckpt.core.sidecars.metrics import evaluation_counts, write_metrics
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.core.storage.location import Location

    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5
    loc = Location.of(str(d))
    write_metrics(loc, "ckpt-3", {"restored_step": 1.0}, evaluator="dag_b")  # dag_b's best, by min
    dest = tmp_path / "promoted"
    r = dag_runner(
        _dag(
            "op_two_evaluators",
            f"""
a = EvaluateCheckpointOperator(task_id="eval_a", ckpt_dir={str(d)!r}, step="ckpt-4", evaluator="dag_a",
                               build_fn="{HELPERS}.build_manager_ckpt", eval_fn="{HELPERS}.eval_manager")
b = EvaluateCheckpointOperator(task_id="eval_b", ckpt_dir={str(d)!r}, step="ckpt-4", evaluator="dag_b",
                               build_fn="{HELPERS}.build_manager_ckpt", eval_fn="{HELPERS}.eval_manager")
a2 = EvaluateCheckpointOperator(task_id="eval_a_again", ckpt_dir={str(d)!r}, step="ckpt-4",
                                evaluator="{{{{ dag.dag_id.replace('op_two_evaluators', 'dag_a') }}}}",
                                build_fn="{HELPERS}.build_manager_ckpt", eval_fn="{HELPERS}.eval_manager")
best_a = PromoteCheckpointOperator(task_id="best_a", ckpt_dir={str(d)!r}, dest={str(dest)!r}, step="best",
                                   metric="restored_step", evaluator="dag_a", only_if_step="ckpt-4")
best_b = PromoteCheckpointOperator(task_id="best_b", ckpt_dir={str(d)!r}, dest={str(dest)!r}, step="best",
                                   metric="restored_step", evaluator="dag_b", only_if_step="ckpt-4")
gc = CheckpointRetentionOperator(task_id="gc", ckpt_dir={str(d)!r}, keep_last=1, keep_promoted=False,
                                 keep_unevaluated=["dag_a", "dag_b"], dry_run=True, trigger_rule="none_failed")
a >> b >> a2 >> best_a >> best_b >> gc
""",
        ),
        "op_two_evaluators",
    )
    assert r.task_states == {
        "eval_a": "success",
        "eval_b": "success",
        "eval_a_again": "success",
        "best_a": "success",
        "best_b": "skipped",
        "gc": "success",
    }, r
    assert r.xcoms["eval_a_again"]["evaluations"] == 2, r.xcoms
    assert r.xcoms["eval_a"]["evaluator"] == "dag_a" and r.xcoms["eval_a"]["evaluations"] == 1
    assert r.xcoms["eval_a_again"]["evaluations"] == 2
    counts = evaluation_counts(discover(loc))
    assert counts == {"ckpt-3": {"dag_b": 1}, "ckpt-4": {"dag_a": 2, "dag_b": 1}}
    assert not (d / "ckpt-4.metrics.json").exists()  # the default sidecar is not touched
    assert r.xcoms["best_a"]["prefix"] == "ckpt-4" and (dest / "ckpt-4.metrics~dag_a.json").exists()
    # ckpt-3 lacks dag_a's evaluation: held; ckpt-4 has both: not held (dry run: nothing deleted)
    assert r.xcoms["gc"]["deleted_steps"] == [4]


# ---------------------------------------------------------------------------------------------
# promote


def test_promote_best_with_asset_events(dag_runner, copy_variant, tmp_path) -> None:
    from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
    from airflow_tf_ckpt.core.storage.location import Location

    d = copy_variant("tf2_manager")
    loc = Location.of(str(d))
    for prefix, loss in (("ckpt-3", 0.5), ("ckpt-4", 0.2), ("ckpt-5", 0.3)):
        write_metrics(loc, prefix, {"loss": loss})
    dest = tmp_path / "promoted"
    r = dag_runner(
        _dag(
            "op_promote",
            f"""
best = PromoteCheckpointOperator(task_id="best", ckpt_dir={str(d)!r}, dest={str(dest)!r}, step="best",
                                 metric="loss", alias="production",
                                 outlets=[Asset("op_promoted"), AssetAlias("op_promoted_alias")])
not_best = PromoteCheckpointOperator(task_id="only_if_5", ckpt_dir={str(d)!r}, dest={str(dest)!r},
                                     step="best", metric="loss", only_if_step="ckpt-5")
best >> not_best
""",
        ),
        "op_promote",
    )
    assert r.task_states == {"best": "success", "only_if_5": "skipped"}, r
    x = r.xcoms["best"]
    assert x["step"] == 4 and x["prefix"] == "ckpt-4" and x["destination"] == str(dest)
    assert x["metrics"] == {"loss": 0.2} and x["alias"] == "production"
    assert (dest / "ckpt-4.index").exists() and (dest / "PROMOTED.json").exists()
    assert json.loads((dest / "aliases" / "production.json").read_text())["prefix"] == "ckpt-4"
    assert _state_latest(dest) == "ckpt-4"
    ev = _asset_events("op_promoted")[-1]
    assert ev["uri"] == str(dest) and ev["step"] == 4 and ev["metrics"] == {"loss": 0.2}
    # the alias produced an event for the destination itself (a URI known only at run time)
    alias_events = [e for e in _asset_events(f"file://{dest}")]
    assert alias_events and alias_events[-1]["step"] == 4


def test_a_step_being_deleted_by_gc_is_skipped_not_validated(dag_runner, copy_variant) -> None:
    """GC's intent names the step: the lease is refused, the task SKIPS (no quarantine of a step
    whose files are disappearing)."""
    import time

    from airflow_tf_ckpt.core.sidecars.leases import write_gc_intent
    from airflow_tf_ckpt.core.storage.location import Location

    d = copy_variant("tf2_manager")
    now = time.time()
    write_gc_intent(Location.of(str(d)), "ckpt", ["ckpt-3"], ttl_s=300, started=now, now=now)
    r = dag_runner(
        _dag(
            "op_lease_conflict",
            f"""
ValidateCheckpointOperator(task_id="v", ckpt_dir={str(d)!r}, step=3, quarantine=True)
""",
        ),
        "op_lease_conflict",
    )
    assert r.task_states == {"v": "skipped"}, r
    assert not (d / "ckpt-3.quarantine.json").exists()
    assert not [n for n in os.listdir(d) if ".lease-" in n]
