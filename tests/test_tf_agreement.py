"""Agreement with TensorFlow (issue 9, items 12 and 15-18), on real TF-written checkpoints.

One TF subprocess (``tests/tf_oracle.py:BUILD``) writes the checkpoints and records what TF itself
says of them (a restore, ``get_tensor``, ``import_meta_graph``); the tests hold our verdicts to
those, on local disk and, where the class applies (state files, trailing bytes), on ``gs://``.

* 12: a shard with bytes after its last tensor (appended, or a sparse 10 TiB file) is a problem,
  found from the size alone, and promotion refuses it;
* 15: V1 checkpoints with scalars (``global_step``), strings and partitioned variables verify;
* 16: state files ``get_checkpoint_state`` rejects are refused (exit 2), a repeated singular
  field is merged as TF does (the last wins), a latest step whose files are missing is a problem;
* 17: a string tensor split into slices is reported: TF cannot restore it;
* 18: a truncated ``.meta`` is reported, as TF1's ``import_meta_graph`` fails on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_tf_ckpt import cli
from airflow_tf_ckpt.core.errors import LatestStepMissingError, StateFileError
from airflow_tf_ckpt.core.formats.state import parse_state
from airflow_tf_ckpt.core.promote.manifest import PromotionError
from airflow_tf_ckpt.core.promote.promote import promote
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.steps.select import select_step
from airflow_tf_ckpt.core.verify.engine import verify_step

pytestmark = pytest.mark.tf


@pytest.fixture
def built(tf_built) -> tuple[Path, dict[str, Any]]:
    """(root, facts): the checkpoints of ``tf_oracle.BUILD`` and what TF said of them."""
    return tf_built


def fresh(built, name: str, tmp_path: Path) -> Path:
    root, _ = built
    dest = tmp_path / name
    shutil.copytree(root / name, dest)
    return dest


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tf-ckpt: error: "), err
    for n in needles:
        assert n in lines[0], (n, err)


# ---------------------------------------------------------------------------------------------
# 15: V1 scalars, strings, partitioned variables


@pytest.mark.parametrize("name", ["v1", "v1_sharded"])
def test_v1_with_scalars_strings_and_partitions_verifies(built, name, tmp_path) -> None:
    """Failed before: every scalar's slice key (rank 0) was "implausible", so every V1 step of a
    TF1 job (it has global_step) was reported corrupt, and quarantined with --quarantine."""
    _, facts = built
    assert all(v is None for v in facts[name]["restore"].values())  # TF restores both steps
    d = fresh(built, name, tmp_path)
    for prefix in ("model.ckpt-1", "model.ckpt-2"):
        report = verify_step(str(d), prefix)
        assert report.ok, report.summary()
        assert report.format == "v1" and report.tensors_checked >= len(facts[name]["tensors"])
    code, out, _ = run_cli("validate", str(d), "--step", "all", "--quarantine")
    assert code == 0, out
    assert not list(d.glob("*.quarantine.json"))
    assert "global_step" in facts[name]["tensors"] and facts[name]["global_step"] == 2


# ---------------------------------------------------------------------------------------------
# 12: trailing bytes


def _shard(d: Path, prefix: str = "ckpt-2") -> Path:
    return next(iter(sorted(d.glob(f"{prefix}.data-*"))))


@pytest.mark.parametrize("how", ["appended", "sparse-10TiB"])
def test_trailing_bytes_are_a_problem_and_never_promoted(built, how, tmp_path) -> None:
    d = fresh(built, "v2", tmp_path)
    shard = _shard(d)
    if how == "appended":
        with open(shard, "ab") as fh:
            fh.write(b"\0" * 100)
    else:
        os.truncate(shard, 10 << 40)  # sparse: the size alone must give it away, nothing read
    t0 = time.monotonic()
    code, out, _ = run_cli("validate", str(d), "--json")
    assert time.monotonic() - t0 < 60  # reading 10 TiB would not end
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    kinds = [(p["kind"], p["file"]) for s in doc["steps"] for p in s["problems"]]
    assert ("trailing_bytes", str(shard)) in kinds, kinds
    dest = tmp_path / "dest"
    with pytest.raises(PromotionError, match=r"trailing_bytes.*after the end of the last tensor"):
        promote(str(d), str(dest), "latest")
    assert not (dest / "PROMOTED.json").exists() and not list(dest.glob("*.data-*"))
    code, _, err = run_cli("promote", str(d), "--to", str(dest))
    assert code == 2
    one_error_line(err, str(shard), "trailing_bytes")
    # the step before is intact: promotion of it still works
    assert promote(str(d), str(dest), 1).step == 1


@pytest.mark.gcs
def test_trailing_bytes_on_gcs(built, gcs_emulator, tmp_path) -> None:
    from tests.fixtures.gcs_emulator import upload_dir

    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket("trail")
    src = fresh(built, "v2", tmp_path)
    shard = _shard(src)
    shard.write_bytes(shard.read_bytes() + b"extra bytes")
    upload_dir(fs, src, f"{bucket}/run")
    url = f"gs://{bucket}/run"
    code, out, _ = run_cli("validate", url, "--json")
    assert code == 1
    kinds = {p["kind"] for s in json.loads(out)["steps"] for p in s["problems"]}
    assert kinds == {"trailing_bytes"}
    with pytest.raises(PromotionError, match="trailing_bytes"):
        promote(url, f"gs://{bucket}/serving", "latest")
    assert not fs.exists(f"{bucket}/serving/PROMOTED.json")


def test_a_clean_shard_has_no_trailing_bytes(built, tmp_path) -> None:
    d = fresh(built, "v2", tmp_path)
    assert verify_step(str(d), "ckpt-2").ok
    assert promote(str(d), str(tmp_path / "dest"), "latest").step == 2


# ---------------------------------------------------------------------------------------------
# 16: state files


REJECTED = {  # TF's get_checkpoint_state raises ValueError("Invalid checkpoint state ...") on each
    "empty": "",
    "whitespace": "  \n\t\n",
    "comments only": '# model_checkpoint_path: "ckpt-2"\n',
    "latest missing": 'all_model_checkpoint_paths: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-2"\n',
    "latest empty": 'model_checkpoint_path: ""\nall_model_checkpoint_paths: "ckpt-2"\n',
}


@pytest.mark.parametrize("case", list(REJECTED))
@pytest.mark.parametrize("cmd", [["ls"], ["validate", "--step", "all"], ["validate"]])
def test_state_files_tf_rejects_are_refused(built, case, cmd, tmp_path) -> None:
    """Failed before: each of these passed ls and validate --step all (exit 0)."""
    d = fresh(built, "v2", tmp_path)
    (d / "checkpoint").write_text(REJECTED[case])
    code, _, err = run_cli(cmd[0], str(d), *cmd[1:])
    assert code == 2
    one_error_line(err, str(d / "checkpoint"), "model_checkpoint_path is missing or empty")


@pytest.mark.gcs
def test_state_files_tf_rejects_are_refused_on_gcs(built, gcs_emulator, tmp_path) -> None:
    from tests.fixtures.gcs_emulator import upload_dir

    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket("state")
    upload_dir(fs, fresh(built, "v2", tmp_path), f"{bucket}/run")
    for case, text in REJECTED.items():
        fs.pipe_file(f"{bucket}/run/checkpoint", text.encode())
        for cmd in (["ls"], ["validate", "--step", "all"]):
            code, _, err = run_cli(cmd[0], f"gs://{bucket}/run", *cmd[1:])
            assert code == 2, (case, cmd)
            one_error_line(err, f"gs://{bucket}/run/checkpoint", "model_checkpoint_path")
    # and the latest naming a step whose files are missing
    fs.pipe_file(
        f"{bucket}/run/checkpoint",
        b'model_checkpoint_path: "ckpt-9"\n'
        b'all_model_checkpoint_paths: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-9"\n',
    )
    code, out, _ = run_cli("validate", f"gs://{bucket}/run")
    assert code == 1 and "latest_checkpoint returns None" in out


def test_repeated_singular_field_last_wins_as_in_tf(built, tmp_path) -> None:
    """Failed before: text_format.Parse refused it; TF's text_format.Merge takes the last one."""
    d = fresh(built, "v2", tmp_path)
    (d / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n'
        'all_model_checkpoint_paths: "ckpt-2"\nmodel_checkpoint_path: "ckpt-2"\n'
        "last_preserved_timestamp: 1\nlast_preserved_timestamp: 2.5\n"
    )
    state = parse_state((d / "checkpoint").read_bytes())
    assert state.model_checkpoint_path == "ckpt-2" and state.last_preserved_timestamp == 2.5
    code, out, _ = run_cli("ls", str(d), "--json")
    assert code == 0 and [s["prefix"] for s in json.loads(out)["steps"] if s["latest"]] == ["ckpt-2"]
    assert run_cli("validate", str(d))[0] == 0
    # spacing TF accepts too (the slow path), still last wins
    assert (
        parse_state('model_checkpoint_path:"a"\nmodel_checkpoint_path : "b" # c\n').model_checkpoint_path
        == "b"
    )
    with pytest.raises(StateFileError):
        parse_state('model_checkpoint_path: "a"\nmodel_checkpoint_path: ""\n')  # the last is empty


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_latest_with_missing_files_is_a_problem(built, fmt, tmp_path) -> None:
    """Failed before: validate fell back to the newest step whose files are there, exit 0, while
    TF's latest_checkpoint returns None (a trainer restarts from scratch)."""
    d = fresh(built, fmt, tmp_path)
    gone = "ckpt-2" if fmt == "v2" else "model.ckpt-2"
    for p in d.glob(gone + "*"):
        if not p.name.endswith(".meta"):
            p.unlink()
    code, out, _ = run_cli("validate", str(d), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    assert any(gone in p and "files are missing" in p for p in doc["problems"]), doc["problems"]
    code, out, _ = run_cli("validate", str(d))
    assert code == 1 and "names a step whose files are missing" in out
    code, out, _ = run_cli("ls", str(d), "--json")
    assert "latest_checkpoint returns None" in json.loads(out)["latest_problem"]
    # naming the step explicitly still validates it alone
    assert run_cli("validate", str(d), "--step", "1")[0] == 0
    # the one selector says so for every 'latest': promote (failed before: it promoted step 1)
    dest = tmp_path / "dest"
    code, out, err = run_cli("promote", str(d), "--to", str(dest), "--step", "latest")
    assert code == 2 and "names a step whose files are missing" in err and len(err.strip().splitlines()) == 1
    assert not dest.exists() or not any(dest.iterdir())
    with pytest.raises(LatestStepMissingError, match=r"checkpoint: .*names a step whose files are missing"):
        select_step(discover(d), "latest")
    # and the operators' step="latest" (failed before: ValidateCheckpointOperator validated step 1)
    pytest.importorskip("airflow")
    from airflow_tf_ckpt.operators.validate import ValidateCheckpointOperator

    op = ValidateCheckpointOperator(task_id="v", ckpt_dir=str(d), step="latest")
    with pytest.raises(LatestStepMissingError):
        op.resolve_step(discover(d), allow_incomplete=True)


# ---------------------------------------------------------------------------------------------
# 17: sliced strings


def test_sliced_string_tensor_is_reported_unrestorable(built, tmp_path) -> None:
    """Failed before: it validated as OK, but TF's get_tensor and restore both fail on it."""
    _, facts = built
    ss = facts["sliced_strings"]
    assert "Dtype string not supported" in ss["restore"]
    failing = [n for n, err in ss["reads"].items() if err]
    assert failing == ["big/.ATTRIBUTES/VARIABLE_VALUE"]
    report = verify_step(str(fresh(built, "sliced_strings", tmp_path)), ss["prefix"])
    assert not report.ok
    flagged = [(p.kind, p.tensor) for p in report.problems]
    assert flagged == [("unrestorable", n) for n in failing]  # exactly what TF cannot read
    assert "Dtype string not supported" in report.problems[0].message


# ---------------------------------------------------------------------------------------------
# 18: .meta files


def test_truncated_meta_is_reported_as_import_meta_graph_fails(built, tmp_path) -> None:
    """Failed before: a truncated .meta was never noticed. Every cut TF fails on, we report."""
    _, facts = built
    cuts = facts["meta_cuts"]
    d = fresh(built, "v1", tmp_path)
    meta = d / "model.ckpt-2.meta"
    data = meta.read_bytes()
    assert len(data) == cuts["size"]
    assert verify_step(str(d), "model.ckpt-2").ok
    for cut, tf_error in cuts["verdicts"].items():
        meta.write_bytes(data[: int(cut)])
        report = verify_step(str(d), "model.ckpt-2")
        bad = [p for p in report.problems if p.kind == "bad_meta"]
        assert bool(bad) == (tf_error is not None), (cut, tf_error, report.summary())
        if bad:
            assert bad[0].file == str(meta)
    code, out, _ = run_cli("validate", str(d))
    assert code == 1 and str(meta) in out and "bad_meta" in out
