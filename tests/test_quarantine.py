"""Lifting a quarantine (``core.quarantine.release_quarantine``) and the CLI's quarantine commands.

Fake dirs (tests/test_retention.py's builders: a real state file, index and data files of a few
bytes) on local disk and ``memory://`` for the state-file logic, with ``verify=False`` since their
files are not checkpoints; real TF checkpoints (tests/fixtures/tf_checkpoints.py) for verification
and for what TF itself then restores; the ``tf-ckpt`` console script as a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.core.formats.state import StateFile, read_state, write_state
from airflow_tf_ckpt.core.promote.manifest import PromotionError
from airflow_tf_ckpt.core.promote.select import select_step
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepLastN
from airflow_tf_ckpt.core.sidecars.quarantine import (
    NotQuarantinedError,
    StillCorruptError,
    quarantine_name,
    quarantine_step,
    read_quarantine,
    release_quarantine,
)
from airflow_tf_ckpt.core.steps.discovery import StepStatus, discover
from airflow_tf_ckpt.core.storage.location import Location
from tests.test_cli import REPO, _flip_in_tensor, assert_one_line_error, run, run_json
from tests.test_retention import T0, H, make_dir, make_step, mem_loc, put, set_mtime

STATE = "checkpoint"
KERNEL = "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"  # a tensor of tf2_manager


def state_bytes(loc: Location) -> bytes:
    return loc.fs.cat_file(loc.join(STATE))


def new_loc(kind: str, tmp_path: Path) -> Location:
    return Location.of(tmp_path / "run") if kind == "local" else mem_loc()


def forget_entry(loc: Location, prefix: str) -> None:
    """Make the record look like one written before records kept the state entry."""
    rec = read_quarantine(loc, prefix)
    del rec["state_entry"]
    loc.write_atomic(quarantine_name(prefix), json.dumps(rec).encode())


def copy_to(src: Path, loc: Location) -> None:
    for f in sorted(src.iterdir()):
        put(loc, f.name, f.read_bytes())


# --------------------------------------------------------------------------------------------
# the state file, put back


@pytest.mark.parametrize("kind,absolute", [("local", False), ("local", True), ("memory", False)])
@pytest.mark.parametrize("which", [1, 2, 3])
def test_round_trip_restores_the_exact_state_file(kind, absolute, which, tmp_path):
    loc = new_loc(kind, tmp_path)
    make_dir(loc, [1, 2, 3], lp=T0 - 7, absolute=absolute)
    original = state_bytes(loc)
    quarantine_step(loc, f"ckpt-{which}", "crc mismatch")
    assert b'ckpt-%d"' % which not in state_bytes(loc)  # quarantine did drop it
    res = release_quarantine(loc, which, verify=False)
    assert state_bytes(loc) == original  # same spellings, order, timestamps, latest
    assert not loc.exists(quarantine_name(f"ckpt-{which}"))
    s = discover(loc).get(which)
    assert s.status is StepStatus.COMMITTED and not s.quarantined
    assert res.state_written and not res.state_created and not res.already_named
    assert res.made_latest == (which == 3) and res.record["reason"] == "crc mismatch"
    assert res.restored_path == (loc.join(f"ckpt-{which}") if absolute else f"ckpt-{which}")


def test_requarantining_keeps_what_the_release_needs(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    original = state_bytes(loc)
    quarantine_step(loc, "ckpt-2", "first")
    quarantine_step(loc, "ckpt-2", "again")  # idempotent rerun: the step is no longer named
    assert read_quarantine(loc, "ckpt-2")["state_entry"]["timestamp"] == T0 + H
    release_quarantine(loc, "ckpt-2", verify=False)
    assert state_bytes(loc) == original


def test_mixed_bases_keep_their_interleaving_and_their_own_latest(tmp_path):
    loc = Location.of(tmp_path)
    order = ["a-1", "b-1", "a-2", "b-2"]
    for p in order:
        make_step(loc, p)
    write_state(loc, StateFile("b-2", order, [T0 + i * H for i in range(4)], 0.0))
    original = state_bytes(loc)
    for p in ("a-2", "b-2", "a-1"):
        q = quarantine_step(loc, p, "bad")
        if p == "b-2":
            assert q.new_latest == "b-1"  # the same base's newest
        res = release_quarantine(loc, p, verify=False)
        assert state_bytes(loc) == original, p
        assert res.made_latest == (p == "b-2")  # a-2 is newer than a-1, but b-2 was saved last


def test_a_step_saved_since_stays_the_latest(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    quarantine_step(loc, "ckpt-3", "bad")  # it was the latest: ckpt-2 is now
    make_step(loc, "ckpt-4")  # the trainer saves on
    st = read_state(loc)
    write_state(
        loc,
        StateFile(
            "ckpt-4",
            [*st.all_model_checkpoint_paths, "ckpt-4"],
            [*st.all_model_checkpoint_timestamps, T0 + 10 * H],
            0.0,
        ),
    )
    res = release_quarantine(loc, "ckpt-3", verify=False)
    assert read_state(loc) == StateFile(
        "ckpt-4", ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4"], [T0, T0 + H, T0 + 2 * H, T0 + 10 * H], 0.0
    )
    assert not res.made_latest


def test_without_a_recorded_entry_the_mtime_and_the_files_spelling(tmp_path):
    # absolute, as a TF1 Saver given an absolute path writes: the new path is spelled alike
    loc = Location.of(tmp_path / "abs")
    make_dir(loc, [1, 2, 3], absolute=True)
    quarantine_step(loc, "ckpt-2", "bad")
    forget_entry(loc, "ckpt-2")
    for n in ("ckpt-2.index", "ckpt-2.data-00000-of-00001"):
        set_mtime(loc, n, T0 + 5)
    release_quarantine(loc, "ckpt-2", verify=False)
    assert read_state(loc) == StateFile(
        loc.join("ckpt-3"), [loc.join(f"ckpt-{i}") for i in (1, 2, 3)], [T0, T0 + 5, T0 + 2 * H], 0.0
    )
    # relative, on memory://; the released step is newer than the latest of its base
    mem = mem_loc()
    make_dir(mem, [1, 2])
    quarantine_step(mem, "ckpt-2", "bad")
    forget_entry(mem, "ckpt-2")
    for n in ("ckpt-2.index", "ckpt-2.data-00000-of-00001"):
        set_mtime(mem, n, T0 + 99)
    assert release_quarantine(mem, 2, verify=False).made_latest
    assert read_state(mem) == StateFile("ckpt-2", ["ckpt-1", "ckpt-2"], [T0, T0 + 99], 0.0)


def test_a_file_without_timestamps_gets_none(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2], write=False)
    write_state(loc, StateFile("ckpt-2", ["ckpt-1", "ckpt-2"], [], 0.0))  # as an old Saver writes
    original = state_bytes(loc)
    quarantine_step(loc, "ckpt-1", "bad")
    forget_entry(loc, "ckpt-1")  # the mtime is at hand, but the file keeps no timestamps
    release_quarantine(loc, "ckpt-1", verify=False)
    assert state_bytes(loc) == original


def test_no_state_file_gets_one_naming_the_step(tmp_path):
    loc = Location.of(tmp_path / "only")
    make_dir(loc, [1], lp=T0 - 3)
    original = state_bytes(loc)
    assert quarantine_step(loc, "ckpt-1", "bad").state_removed  # no step left to name
    res = release_quarantine(loc, "ckpt-1", verify=False)
    assert res.state_created and res.made_latest and state_bytes(loc) == original
    # a marker without an entry, in a dir whose state file is gone: the files' mtime
    other = Location.of(tmp_path / "bare")
    make_step(other, "ckpt-5", mtime=T0 + 42)
    quarantine_step(other, "ckpt-5", "bad")
    release_quarantine(other, 5, verify=False)
    assert read_state(other) == StateFile("ckpt-5", ["ckpt-5"], [T0 + 42], 0.0)


# --------------------------------------------------------------------------------------------
# refusals


def test_refuses_a_step_that_is_not_quarantined(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2])
    original = state_bytes(loc)
    for sel in ("ckpt-2", 2):
        with pytest.raises(NotQuarantinedError, match="not quarantined") as ei:
            release_quarantine(loc, sel, verify=False)
        assert str(tmp_path / "ckpt-2.quarantine.json") in str(ei.value)
    assert state_bytes(loc) == original


def test_refuses_a_step_that_does_not_exist(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2])
    for sel in ("ckpt-9", 9):
        with pytest.raises(StepNotFoundError, match="ckpt-9|9"):
            release_quarantine(loc, sel, verify=False)
    quarantine_step(loc, "ckpt-1", "bad")
    for n in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (tmp_path / n).unlink()  # the files went (by hand), the record stayed
    with pytest.raises(StepNotFoundError, match="quarantine record is still there") as ei:
        release_quarantine(loc, "ckpt-1", verify=False)
    assert str(tmp_path / "ckpt-1") in str(ei.value)
    assert read_quarantine(loc, "ckpt-1") is not None


def test_missing_files_are_refused_even_without_verify(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3], shards=2)
    quarantine_step(loc, "ckpt-2", "bad")
    (tmp_path / "ckpt-2.data-00001-of-00002").unlink()
    quarantined = state_bytes(loc)
    with pytest.raises(StillCorruptError, match="files are missing .*ckpt-2.data-00001-of-00002"):
        release_quarantine(loc, "ckpt-2", verify=False)
    assert state_bytes(loc) == quarantined and read_quarantine(loc, "ckpt-2") is not None
    # the operator's way out: lift the marker alone
    res = release_quarantine(loc, "ckpt-2", verify=False, restore_state=False)
    assert not res.state_written and state_bytes(loc) == quarantined
    assert read_quarantine(loc, "ckpt-2") is None


# --------------------------------------------------------------------------------------------
# crash safety: the state file first, the marker last


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_crash_before_the_marker_goes_leaves_a_safe_step_and_a_rerun_finishes(kind, tmp_path):
    loc = new_loc(kind, tmp_path)
    make_dir(loc, [1, 2, 3])
    original = state_bytes(loc)
    quarantine_step(loc, "ckpt-1", "bad")
    quarantined = state_bytes(loc)
    labels: list[str] = []

    def crash_at(where):
        def hook(label, *_):
            labels.append(label)
            if label == where:
                raise RuntimeError("killed")

        return hook

    # killed before the state write: nothing changed
    with pytest.raises(RuntimeError):
        release_quarantine(loc, "ckpt-1", verify=False, hook=crash_at("write_state"))
    assert state_bytes(loc) == quarantined and read_quarantine(loc, "ckpt-1") is not None
    # killed between the two writes: named AND still quarantined
    labels.clear()
    with pytest.raises(RuntimeError):
        release_quarantine(loc, "ckpt-1", verify=False, hook=crash_at("remove_quarantine"))
    assert labels == ["write_state", "remove_quarantine"]
    assert state_bytes(loc) == original and read_quarantine(loc, "ckpt-1") is not None
    s1 = discover(loc).get(1)
    assert s1.in_state and s1.quarantined
    # ...which the rest treats safely: GC keeps it (an old step KeepLastN(1) would delete), promotion refuses it
    d1 = plan_retention(loc, [KeepLastN(1)]).decision("ckpt-1")
    assert d1.action == "keep" and "quarantined" in d1.reasons
    with pytest.raises(PromotionError, match="quarantined"):
        select_step(discover(loc), 1)
    # the rerun finishes: the state file already names it, the marker goes
    res = release_quarantine(loc, "ckpt-1", verify=False)
    assert res.already_named and not res.state_written
    assert state_bytes(loc) == original and read_quarantine(loc, "ckpt-1") is None
    assert plan_retention(loc, [KeepLastN(1)]).decision("ckpt-1").action == "delete"


# --------------------------------------------------------------------------------------------
# real TF checkpoints: verification, and what TF restores afterwards


@pytest.mark.tf
def test_tf_round_trip_verified_local_and_memory_and_tf_restores_it(copy_variant, tf_checkpoints):
    from tests.fixtures.tf_checkpoints import tf_batch

    d = copy_variant("tf2_manager")  # ckpt-3..5, relative paths with timestamps
    loc = Location.of(d)
    mem = mem_loc()
    copy_to(d, mem)
    for where in (loc, mem):
        original = state_bytes(where)
        quarantine_step(where, "ckpt-5", "validation failed")
        assert read_state(where).model_checkpoint_path == "ckpt-4"
        res = release_quarantine(where, "ckpt-5")
        assert res.verified and res.tensors_checked > 10 and res.bytes_checked > 0
        assert res.made_latest and state_bytes(where) == original
    # TF1 Saver, absolute paths and no timestamps; pointed at this copy, as if saved here
    t = copy_variant("tf1_saver")
    src_dir = str(tf_checkpoints["tf1_saver"].dir)
    (t / STATE).write_text((t / STATE).read_text().replace(src_dir, str(t)))
    tloc = Location.of(t)
    original = state_bytes(tloc)
    for p in ("my_test_model-600", "my_test_model-400"):
        quarantine_step(tloc, p, "bad")
    for p in ("my_test_model-400", "my_test_model-600"):
        release_quarantine(tloc, p)
    assert state_bytes(tloc) == original
    latest, restored, t_latest, t_restored = tf_batch(
        [
            ("latest_checkpoint", [str(d)]),
            ("read_all", [str(d / "ckpt-5")]),
            ("latest_checkpoint", [str(t)]),
            ("read_all", [str(t / "my_test_model-400")]),
        ]
    )
    assert latest == str(d / "ckpt-5") and restored["ok"], restored
    assert t_latest == str(t / "my_test_model-600") and t_restored["ok"], t_restored


@pytest.mark.tf
def test_tf_refuses_a_step_that_still_fails_verification(copy_variant, tf_checkpoints):
    d = copy_variant("tf2_manager")
    loc = Location.of(d)
    original = state_bytes(loc)
    data_file = _flip_in_tensor(d, "ckpt-4", KERNEL)
    quarantine_step(loc, "ckpt-4", "validation failed")
    quarantined = state_bytes(loc)
    with pytest.raises(StillCorruptError) as ei:
        release_quarantine(loc, 4)
    msg = str(ei.value)
    assert "still fails verification" in msg and "checksum_mismatch" in msg
    assert str(d / data_file) in msg and KERNEL in msg  # the first problem, by file and tensor
    assert ei.value.problems and ei.value.report is not None and not ei.value.report.ok
    assert state_bytes(loc) == quarantined and read_quarantine(loc, "ckpt-4") is not None
    # the operator restores the shard from a backup: now it is released
    shutil.copy(tf_checkpoints["tf2_manager"].dir / data_file, d / data_file)
    assert release_quarantine(loc, 4).verified
    assert state_bytes(loc) == original and read_quarantine(loc, "ckpt-4") is None


@pytest.mark.gcs
@pytest.mark.tf
def test_tf_round_trip_on_gcs(tf_checkpoints, gcs_emulator):
    from tests.fixtures.gcs_emulator import upload_dir

    bucket = gcs_emulator.new_bucket()
    upload_dir(gcs_emulator.fs(), tf_checkpoints["tf2_manager"].dir, f"{bucket}/run")
    loc = Location.of(f"gs://{bucket}/run")
    original = state_bytes(loc)
    quarantine_step(loc, "ckpt-4", "bad")
    res = release_quarantine(loc, "ckpt-4")
    assert res.verified and not res.made_latest and state_bytes(loc) == original
    assert not discover(loc).get(4).quarantined


def test_the_core_imports_neither_airflow_nor_tensorflow(tmp_path):
    make_dir(Location.of(tmp_path), [1, 2])
    code = (
        "import sys\nfrom airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step, release_quarantine, "
        "StillCorruptError\n"
        f"quarantine_step({str(tmp_path)!r}, 'ckpt-2', 'bad')\n"
        "try:\n"
        f"    release_quarantine({str(tmp_path)!r}, 'ckpt-2')\n"  # verifies (the fake files fail)
        "except StillCorruptError:\n    pass\nelse:\n    sys.exit(3)\n"
        f"release_quarantine({str(tmp_path)!r}, 'ckpt-2', verify=False)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'airflow', 'keras')]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert read_state(Location.of(tmp_path)).model_checkpoint_path == "ckpt-2"


# --------------------------------------------------------------------------------------------
# the CLI: tf-ckpt quarantine / unquarantine / validate --quarantine (a real subprocess)


@pytest.mark.tf
def test_cli_quarantine_then_unquarantine_round_trip(copy_variant):
    d = copy_variant("tf2_manager")
    original = (d / STATE).read_bytes()
    p = run("quarantine", str(d), "5", "--reason", "loss went NaN after restore")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "quarantined" in p.stdout and str(d / "ckpt-5") in p.stdout and "latest is ckpt-4" in p.stdout
    assert str(d / "ckpt-5.quarantine.json") in p.stdout and "tf-ckpt unquarantine" in p.stdout
    assert json.loads((d / "ckpt-5.quarantine.json").read_text())["reason"] == "loss went NaN after restore"
    ls = run("ls", str(d))
    assert ls.returncode == 0 and "quarantined" in ls.stdout
    s5 = run_json("ls", str(d))["steps"][-1]
    assert (s5["prefix"], s5["quarantined"], s5["status"], s5["latest"]) == ("ckpt-5", True, "orphan", False)
    assert run_json("validate", str(d))["steps"][0]["prefix"] == "ckpt-4"  # latest fell back

    p = run("unquarantine", str(d), "ckpt-5")
    assert p.returncode == 0, p.stdout + p.stderr
    for word in ("released", "OK: 17 tensors", "names it again as ckpt-5", "ckpt-5 (this step)", "removed"):
        assert word in p.stdout, (word, p.stdout)
    assert (d / STATE).read_bytes() == original and not (d / "ckpt-5.quarantine.json").exists()
    assert run_json("ls", str(d))["steps"][-1]["quarantined"] is False

    # --json: one document; the same round trip by step number
    doc = run_json("quarantine", str(d), "4", "-r", "bad")
    assert (doc["prefix"], doc["step"], doc["was_latest"], doc["new_latest"]) == (
        "ckpt-4",
        4,
        False,
        "ckpt-5",
    )
    assert doc["removed_paths"] == ["ckpt-4"] and doc["record_url"] == str(d / "ckpt-4.quarantine.json")
    doc = run_json("unquarantine", str(d), "4")
    assert doc["ok"] and doc["released"] and doc["verified"] and doc["tensors_checked"] == 17
    assert doc["restored_path"] == "ckpt-4" and not doc["made_latest"] and doc["latest"] == "ckpt-5"
    assert (d / STATE).read_bytes() == original

    # a second release: nothing is quarantined any more -> exit 2, one line naming the record
    p = run("unquarantine", str(d), "4")
    assert_one_line_error(p, 2, "not quarantined", str(d / "ckpt-4.quarantine.json"))
    assert p.stdout == ""


@pytest.mark.tf
def test_cli_unquarantine_refuses_a_corrupt_step_with_exit_1(copy_variant):
    d = copy_variant("tf2_manager")
    data_file = _flip_in_tensor(d, "ckpt-4", KERNEL)
    assert run("quarantine", str(d), "ckpt-4", "--reason", "crc").returncode == 0
    quarantined = (d / STATE).read_bytes()
    p = run("unquarantine", str(d), "4")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "CORRUPT" in p.stdout and data_file in p.stdout and KERNEL in p.stdout
    assert "stays quarantined" in p.stdout and "Traceback" not in p.stdout + p.stderr
    doc = run_json("unquarantine", str(d), "4", code=1)
    assert doc["ok"] is False and doc["released"] is False and doc["prefix"] == "ckpt-4"
    prob = doc["report"]["problems"][0]
    assert (
        prob["kind"] == "checksum_mismatch" and prob["tensor"] == KERNEL and prob["file"].endswith(data_file)
    )
    assert (d / STATE).read_bytes() == quarantined and (d / "ckpt-4.quarantine.json").exists()
    # the operator overrides the verifier
    doc = run_json("unquarantine", str(d), "4", "--no-verify")
    assert doc["released"] and doc["verified"] is False and doc["restored_path"] == "ckpt-4"
    assert "ckpt-4" in (d / STATE).read_text() and not (d / "ckpt-4.quarantine.json").exists()


@pytest.mark.tf
def test_cli_unquarantine_no_restore_state_and_validate_quarantine(copy_variant):
    d = copy_variant("tf2_manager")
    assert run("quarantine", str(d), "3", "-r", "suspect").returncode == 0
    quarantined = (d / STATE).read_bytes()
    p = run("unquarantine", str(d), "3", "--no-restore-state")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "--no-restore-state" in p.stdout
    assert (d / STATE).read_bytes() == quarantined and not (d / "ckpt-3.quarantine.json").exists()
    s3 = run_json("ls", str(d))["steps"][0]
    assert (s3["prefix"], s3["status"], s3["quarantined"]) == ("ckpt-3", "orphan", False)

    # validate --quarantine: the corrupt latest goes, exit 1 still; TF would now restore ckpt-4
    data_file = _flip_in_tensor(d, "ckpt-5", KERNEL)
    p = run("validate", str(d), "--quarantine")
    assert p.returncode == 1, p.stdout + p.stderr
    assert data_file in p.stdout and "QUARANTINED" in p.stdout and "latest is now ckpt-4" in p.stdout
    record = json.loads((d / "ckpt-5.quarantine.json").read_text())
    assert record["report"]["problems"][0]["tensor"] == KERNEL and "quarantined" not in record["report"]
    assert (d / STATE).read_text().startswith('model_checkpoint_path: "ckpt-4"')
    doc = run_json("validate", str(d), "--step", "all", "--quarantine", code=1)
    bad = {s["prefix"]: s for s in doc["steps"] if not s["ok"]}
    assert list(bad) == ["ckpt-5"] and bad["ckpt-5"]["already_quarantined"] is True
    assert "already quarantined" in " ".join(doc["warnings"])
    # without --quarantine a failing validate leaves everything alone
    e = copy_variant("tf2_manager")
    _flip_in_tensor(e, "ckpt-5", KERNEL)
    assert run("validate", str(e)).returncode == 1 and not (e / "ckpt-5.quarantine.json").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (("quarantine", "DIR", "3"), "--reason"),
        (("quarantine", "DIR", "3", "--reason", "  "), "--reason must not be empty"),
        (("quarantine", "DIR", "42", "--reason", "x"), "no checkpoint step 42"),
        (("unquarantine", "DIR", "42"), "no checkpoint step 42"),
        (("unquarantine", "DIR", "ckpt-2"), "not quarantined"),
        (("unquarantine", "DIR"), "Missing argument"),
        (("quarantine", "/no/such/dir", "3", "-r", "x"), "does not exist"),
        (("unquarantine", "/no/such/dir", "3"), "does not exist"),
    ],
)
def test_cli_quarantine_input_errors_are_exit_2(args, needle, tmp_path):
    make_dir(Location.of(tmp_path), [1, 2, 3])
    before = sorted(p.name for p in tmp_path.iterdir())
    p = run(*[str(tmp_path) if a == "DIR" else a for a in args])
    assert_one_line_error(p, 2, needle)
    assert p.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.tf
def test_cli_validate_quarantine_leases_and_respects_a_running_gc(copy_variant):
    """validate --quarantine leases each step while it checks and marks it (a GC cannot delete it
    in between), leaves no lease behind, and skips a step that a GC run has announced it deletes."""
    from airflow_tf_ckpt.core.sidecars.leases import write_gc_intent

    d = copy_variant("tf2_manager")
    _flip_in_tensor(d, "ckpt-5", KERNEL)
    _flip_in_tensor(d, "ckpt-4", KERNEL)
    write_gc_intent(Location.of(d), "ckpt", {"ckpt-4"}, ttl_s=600, started=time.time())
    doc = run_json("validate", str(d), "--step", "all", "--quarantine", code=1)
    assert "ckpt-4: skipped: a GC run is deleting it" in doc["warnings"], doc["warnings"]
    assert "ckpt-4" not in {s["prefix"] for s in doc["steps"]}
    assert (d / "ckpt-5.quarantine.json").exists() and not (d / "ckpt-4.quarantine.json").exists()
    assert not list(d.glob("*.lease-*"))  # every lease released
