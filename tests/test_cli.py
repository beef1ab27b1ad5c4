"""The ``tf-ckpt`` console script, run as a real subprocess over real TF checkpoints.

Local dirs and gs:// (the fake-gcs-server emulator; ``STORAGE_EMULATOR_HOST`` is passed to the
child). Exit codes: 0 ok, 1 a problem found, 2 usage or input error with one stderr line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_tf_ckpt.core.formats.bundle import read_bundle
from airflow_tf_ckpt.core.storage.location import Location
from tests.fixtures.gcs_emulator import upload_dir
from tests.fixtures.tf_checkpoints import tf_batch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "tf-ckpt"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "airflow_tf_ckpt.cli"]
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.pop("TF_CKPT_DEBUG", None)
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, cwd=REPO, env=full_env, timeout=timeout
    )


def run_json(*args: str, code: int = 0, **kw: Any) -> Any:
    p = run(*args, "--json", **kw)
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)  # the WHOLE stdout is one JSON document


def assert_one_line_error(p: subprocess.CompletedProcess[str], code: int = 2, *needles: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("tf-ckpt: error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _flip_in_tensor(d: Path, prefix: str, tensor: str) -> str:
    """Flip one byte inside ``tensor``'s bytes; returns the data file's name."""
    entry = next(e for e in read_bundle(Location.of(d), prefix).entries if e.display_name == tensor)
    name = f"{prefix}.data-{entry.shard_id:05d}-of-{read_bundle(Location.of(d), prefix).num_shards:05d}"
    path = d / name
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return name


# ---------------------------------------------------------------------------------------------
# input errors: exit 2, one line, no traceback


@pytest.mark.parametrize(
    "args",
    [
        ("ls", "/no/such/dir"),
        ("validate", "/no/such/dir"),
        ("validate", "/no/such/dir", "--step", "all", "--json"),
        ("promote", "/no/such/dir", "--to", "/tmp/never-written"),
    ],
)
def test_missing_dir_is_exit_2_one_line(args):
    p = run(*args)
    assert_one_line_error(p, 2, "/no/such/dir", "does not exist")
    assert p.stdout == ""


@pytest.mark.parametrize(
    "args,needle",
    [
        (("ls",), "Missing argument"),
        (("ls", ".", "--bogus"), "--bogus"),
        (("frobnicate",), "No such command"),
        (("gc", ".", "--keep-last", "many"), "--keep-last"),
        (("gc", "."), "no retention policy"),
        (("promote", ".", "--to", "x", "--step", "best"), "--metric"),
        (("promote", ".", "--to", "x", "--mode", "sideways"), "--mode"),
        (("ls", ".", "-o", "novalue"), "KEY=VALUE"),
    ],
)
def test_usage_errors_are_exit_2(args, needle):
    assert_one_line_error(run(*args), 2, needle)


def test_no_args_prints_help_and_exit_2():
    p = run()
    assert p.returncode == 2 and "Usage" in p.stderr and "promote" in p.stderr and p.stdout == ""


def test_unknown_step_is_exit_2(copy_variant):
    d = copy_variant("tf2_manager")
    assert_one_line_error(run("validate", str(d), "--step", "42"), 2, "no checkpoint step 42")


# ---------------------------------------------------------------------------------------------
# ls / validate


def test_ls_local(copy_variant):
    d = copy_variant("tf2_manager")
    p = run("ls", str(d))
    assert p.returncode == 0, p.stderr
    for word in ("ckpt-3", "ckpt-5", "committed", "latest", "3 step(s)"):
        assert word in p.stdout
    doc = run_json("ls", str(d))
    assert [s["prefix"] for s in doc["steps"]] == ["ckpt-3", "ckpt-4", "ckpt-5"]
    assert all(s["status"] == "committed" for s in doc["steps"])
    assert doc["steps"][-1]["latest"] is True


def test_validate_clean_then_corrupt_names_file_and_tensor(copy_variant):
    d = copy_variant("tf2_manager")
    p = run("validate", str(d), "--step", "all")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all good" in p.stdout
    assert run_json("validate", str(d))["ok"] is True

    tensor = "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"  # the first kernel
    data_file = _flip_in_tensor(d, "ckpt-4", tensor)
    p = run("validate", str(d), "--step", "4")
    assert p.returncode == 1, p.stdout + p.stderr
    assert data_file in p.stdout and tensor in p.stdout and "checksum_mismatch" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    # latest (ckpt-5) is fine, all is not
    assert run("validate", str(d)).returncode == 0
    doc = run_json("validate", str(d), "--step", "all", code=1)
    bad = [s for s in doc["steps"] if not s["ok"]]
    assert [s["prefix"] for s in bad] == ["ckpt-4"]
    prob = bad[0]["problems"][0]
    assert prob["file"].endswith(data_file) and prob["tensor"] == tensor
    assert prob["expected"] and prob["actual"] and prob["expected"] != prob["actual"]


def test_validate_missing_shard_and_incomplete_step(copy_variant):
    d = copy_variant("sharded")
    (d / "ckpt-1.data-00002-of-00004").unlink()
    p = run("validate", str(d), "--step", "all")
    assert p.returncode == 1
    assert "ckpt-1.data-00002-of-00004" in p.stdout
    d2 = copy_variant("tf2_manager")
    (d2 / "ckpt-5.index").unlink()  # the state file names ckpt-5 but its index is gone
    doc = run_json("validate", str(d2), "--step", "all", code=1)
    bad = {s["prefix"]: s for s in doc["steps"] if not s["ok"]}
    assert list(bad) == ["ckpt-5"] and bad["ckpt-5"]["status"] == "incomplete"
    assert any(p["file"].endswith("ckpt-5.index") for p in bad["ckpt-5"]["problems"])


def test_validate_seed_tf1_and_v1_layouts(tf_checkpoints):
    # (v1_sharded is left out: its state file names a "-?????-of-00001" pattern that discovery
    # does not map to the V1 shard files yet)
    for name in ("tf1_saver", "v1", "v1_nostep", "strings"):
        doc = run_json("validate", str(tf_checkpoints[name].dir), "--step", "all")
        assert doc["ok"], (name, doc)


def test_malformed_state_file_is_one_line(copy_variant):
    d = copy_variant("tf2_manager")
    (d / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\nbogus: 1\n')
    assert_one_line_error(run("ls", str(d)), 2, "checkpoint:2")


# ---------------------------------------------------------------------------------------------
# metrics / gc


def _set_losses(d: Path, losses: dict[int, float]) -> None:
    for step, loss in losses.items():
        p = run("metrics", str(d), "--step", str(step), "--set", f"loss={loss}")
        assert p.returncode == 0, p.stderr


def test_metrics_set_and_show(copy_variant):
    d = copy_variant("tf2_manager")
    _set_losses(d, {3: 0.5, 4: 0.25})
    doc = run_json("metrics", str(d))
    assert {s["prefix"]: s["metrics"].get("loss") for s in doc["steps"]} == {
        "ckpt-3": 0.5,
        "ckpt-4": 0.25,
        "ckpt-5": None,
    }
    assert run_json("ls", str(d))["steps"][1]["metrics"] == {"loss": 0.25}
    assert_one_line_error(run("metrics", str(d), "--set", "loss=1"), 2, "--step")


def test_gc_dry_run_then_real(copy_variant):
    d = copy_variant("tf2_manager")
    _set_losses(d, {3: 0.1, 4: 0.9, 5: 0.5})
    before = sorted(os.listdir(d))
    args = ("gc", str(d), "--keep-last", "1", "--keep-best", "1", "--metric", "loss", "--mode", "min")
    p = run(*args, "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "dry run" in p.stdout and "ckpt-4" in p.stdout
    plan = run_json(*args, "--dry-run")
    assert sorted(os.listdir(d)) == before  # a dry run deletes nothing
    doc = run_json(*args)
    after = set(os.listdir(d))
    # ckpt-5 (last) and ckpt-3 (best loss) stay; ckpt-4 goes, as the plan said
    assert {"ckpt-3.index", "ckpt-5.index"} <= after and "ckpt-4.index" not in after
    assert not any(n.startswith("ckpt-4.") for n in after)
    assert json.dumps(plan["plan"]).count("ckpt-4") >= 1
    assert doc["dry_run"] is False
    state = (d / "checkpoint").read_text()
    assert "ckpt-4" not in state and "ckpt-5" in state


# ---------------------------------------------------------------------------------------------
# promote


def test_promote_best_local_and_tf_restores_it(copy_variant, tmp_path, gcs_emulator):
    d = copy_variant("tf2_manager")
    _set_losses(d, {3: 0.4, 4: 0.2, 5: 0.3})
    dest = tmp_path / "serving"
    p = run(
        "promote",
        str(d),
        "--step",
        "best",
        "--metric",
        "loss",
        "--mode",
        "min",
        "--to",
        str(dest),
        "--alias",
        "production",
    )
    assert p.returncode == 0, p.stderr
    assert "ckpt-4" in p.stdout and "production" in p.stdout
    doc = run_json("promote", str(d), "--step", "latest", "--to", str(tmp_path / "latest"))
    assert doc["prefix"] == "ckpt-5" and doc["method"] == "local"
    assert json.loads((dest / "PROMOTED.json").read_text())["metrics"] == {"loss": 0.2}
    assert json.loads((dest / "aliases" / "production.json").read_text())["prefix"] == "ckpt-4"
    err = run("promote", str(d), "--step", "best", "--metric", "acc", "--to", str(tmp_path / "x"))
    assert_one_line_error(err, 2, "no committed step has metric 'acc'")

    # gs -> gs (server-side) -> local, all through the CLI
    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket()
    upload_dir(fs, d, f"{bucket}/run")
    env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url}
    doc = run_json(
        "promote",
        f"gs://{bucket}/run",
        "--step",
        "best",
        "--metric",
        "loss",
        "--to",
        f"gs://{bucket}/serving",
        env=env,
    )
    assert doc["method"] == "server-side" and doc["prefix"] == "ckpt-4"
    assert run_json("validate", f"gs://{bucket}/serving", env=env)["ok"] is True
    pulled = tmp_path / "pulled"
    doc = run_json("promote", f"gs://{bucket}/serving", "--to", str(pulled), env=env)
    assert doc["method"] == "stream"

    out = tf_batch(
        [
            ("latest_checkpoint", [str(dest)]),
            ("read_all", [str(dest / "ckpt-4")]),
            ("latest_checkpoint", [str(pulled)]),
            ("read_all", [str(pulled / "ckpt-4")]),
        ]
    )
    assert out[0] == str(dest / "ckpt-4") and out[1]["ok"]
    assert out[2] == str(pulled / "ckpt-4") and out[3]["ok"]


# ---------------------------------------------------------------------------------------------
# gs://


@pytest.mark.gcs
def test_gs_ls_validate_corrupt(tf_checkpoints, gcs_emulator, copy_variant):
    d = copy_variant("sharded")
    tensor = "mid/.ATTRIBUTES/VARIABLE_VALUE"
    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket()
    upload_dir(fs, tf_checkpoints["sharded"].dir, f"{bucket}/good")
    data_file = _flip_in_tensor(d, "ckpt-1", tensor)
    upload_dir(fs, d, f"{bucket}/bad")
    env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url}
    doc = run_json("ls", f"gs://{bucket}/good", env=env)
    assert [s["prefix"] for s in doc["steps"]] == ["ckpt-1"] and doc["steps"][0]["num_shards"] == 4
    assert run("validate", f"gs://{bucket}/good", env=env).returncode == 0
    p = run("validate", f"gs://{bucket}/bad", env=env)
    assert p.returncode == 1
    assert f"gs://{bucket}/bad/{data_file}" in p.stdout and tensor in p.stdout
    assert_one_line_error(run("ls", f"gs://{bucket}/nothing-here", env=env), 2, "does not exist")


def test_empty_dir(tmp_path):
    assert "no checkpoints" in run("ls", str(tmp_path)).stdout
    p = run("validate", str(tmp_path))
    assert p.returncode == 1 and "no committed checkpoint step" in p.stdout


def test_cli_imports_neither_tensorflow_nor_airflow():
    code = (
        "import sys, airflow_tf_ckpt.cli, airflow_tf_ckpt.core.promote.promote, airflow_tf_ckpt.core.verify.engine, "
        "airflow_tf_ckpt.core.retention.executor; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'airflow', 'keras')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------
# evaluators (issue 8): per-evaluator metrics, gc --evaluator/--keep-unevaluated, a missing dir


def test_metrics_ls_gc_promote_per_evaluator(copy_variant, tmp_path):
    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5
    assert run("metrics", str(d), "--step", "3", "--set", "loss=0.5").returncode == 0  # default sidecar
    for step, loss in (("3", "0.9"), ("4", "0.1")):
        p = run("metrics", str(d), "--step", step, "--set", f"loss={loss}", "--evaluator", "dag_a")
        assert p.returncode == 0, p.stderr
    assert (d / "ckpt-4.metrics~dag_a.json").exists() and not (d / "ckpt-4.metrics.json").exists()
    doc = run_json("metrics", str(d))
    rows = {r["prefix"]: r for r in doc["steps"]}
    assert rows["ckpt-3"]["metrics"] == {"loss": 0.5}  # the default evaluator's, as before
    assert [(e["evaluator"], e["metrics"], e["evaluations"]) for e in rows["ckpt-3"]["evaluations"]] == [
        (None, {"loss": 0.5}, 1),
        ("dag_a", {"loss": 0.9}, 1),
    ]
    assert run_json("metrics", str(d), "--evaluator", "dag_a")["steps"][1]["metrics"] == {"loss": 0.1}
    p = run("metrics", str(d))
    assert p.returncode == 0 and "dag_a:loss" in p.stdout
    p = run("ls", str(d))
    assert p.returncode == 0 and "dag_a:loss=0.1" in p.stdout
    ls = run_json("ls", str(d))
    assert ls["steps"][1]["evaluations"][0]["evaluator"] == "dag_a"
    # gc: keep the best by dag_a's metric; keep what dag_b has not evaluated
    plan = run_json(
        "gc", str(d), "--keep-best", "1", "--metric", "loss", "--evaluator", "dag_a", "--dry-run"
    )["plan"]
    assert [s["prefix"] for s in plan["steps"] if s["action"] == "keep"] == ["ckpt-4", "ckpt-5"]
    plan = run_json(
        "gc",
        str(d),
        "--keep-last",
        "1",
        "--keep-unevaluated",
        "dag_b",
        "--dry-run",
        "--unevaluated-max-age",
        "none",
    )["plan"]
    assert [s["prefix"] for s in plan["steps"] if s["action"] == "keep"] == ["ckpt-3", "ckpt-4", "ckpt-5"]
    assert "unevaluated by dag_b" in plan["steps"][0]["reasons"][0]
    assert_one_line_error(
        run("gc", str(d), "--keep-last", "1", "--keep-unevaluated", "a~b"), 2, "invalid evaluator name"
    )
    assert_one_line_error(
        run("gc", str(d), "--keep-unevaluated", "dag_b", "--unevaluated-max-age", "soon"), 2, "not a duration"
    )
    # promote --step best by dag_a's metric; by the default evaluator's it is ckpt-3
    r = run_json(
        "promote",
        str(d),
        "--to",
        str(tmp_path / "serve"),
        "--step",
        "best",
        "--metric",
        "loss",
        "--evaluator",
        "dag_a",
    )
    assert r["prefix"] == "ckpt-4"
    r = run_json("promote", str(d), "--to", str(tmp_path / "serve2"), "--step", "best", "--metric", "loss")
    assert r["prefix"] == "ckpt-3"


def test_gc_of_a_dir_that_does_not_exist_yet_is_nothing_to_do(tmp_path):
    missing = tmp_path / "not-trained-yet"
    p = run("gc", str(missing), "--keep-last", "1")
    assert p.returncode == 0, p.stderr
    assert "does not exist yet: nothing to do" in p.stdout and not missing.exists()
    assert run_json("gc", str(missing), "--keep-last", "1")["missing_dir"] is True
    (tmp_path / "a-file").write_text("x")  # exists, but is no dir: still an error
    assert_one_line_error(run("gc", str(tmp_path / "a-file"), "--keep-last", "1"), 2, "not a directory")
