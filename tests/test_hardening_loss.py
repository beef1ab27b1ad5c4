"""Issue 9, data loss (items 1-5): lease names, two GC runs at once, quarantine during GC, the
state file's read-modify-write, and TF-preserved steps whose mtimes lie. Every test here failed
on the code before the fix (the reason is in each docstring); local disk and the GCS emulator."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_tf_ckpt.core.formats.state import StateFile, read_state, write_state
from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepEveryNHours, KeepLastN
from airflow_tf_ckpt.core.sidecars.leases import (
    GC_LOCK_NAME,
    GcBusyError,
    LeaseConflictError,
    acquire_gc_lock,
    acquire_lease,
    read_leases,
    release_lease,
)
from airflow_tf_ckpt.core.sidecars.quarantine import (
    QuarantineConflictError,
    quarantine_step,
    release_quarantine,
)
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location

KINDS = ["local", pytest.param("gcs", marks=pytest.mark.gcs)]
T0 = 1_700_000_000.0


def loc_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Location:
    if kind == "local":
        return Location.of(tmp_path / "run")
    return Location.of(f"gs://{request.getfixturevalue('gcs_bucket')}/run")


def tf_step_files(request: pytest.FixtureRequest) -> dict[str, bytes]:
    """The files of one step that TensorFlow wrote (CheckpointManager), by suffix."""
    v = request.getfixturevalue("tf_checkpoints")["tf2_manager"]
    src = Path(v.dir)
    prefix = v.prefixes[-1]
    return {p.name[len(prefix) :]: p.read_bytes() for p in src.iterdir() if p.name.startswith(prefix + ".")}


def save_step(loc: Location, files: dict[str, bytes], n: int, t: float | None = None) -> None:
    """A trainer's save of step ``n`` with real TF files: data, index, then the state file LAST."""
    for suffix in sorted(files, key=lambda s: s == ".index"):
        loc.fs.pipe_file(loc.join(f"ckpt-{n}{suffix}"), files[suffix])
    st = read_state(loc) or StateFile()
    paths = [p for p in st.all_model_checkpoint_paths if p != f"ckpt-{n}"] + [f"ckpt-{n}"]
    stamps = (st.all_model_checkpoint_timestamps + [t or time.time()])[-len(paths) :]
    write_state(loc, StateFile(f"ckpt-{n}", paths, stamps, st.last_preserved_timestamp or T0))


def tf_dir(loc: Location, request: pytest.FixtureRequest, steps: range) -> dict[str, bytes]:
    if loc.local:
        os.makedirs(loc.path, exist_ok=True)
    files = tf_step_files(request)
    for i, n in enumerate(steps):
        save_step(loc, files, n, T0 + i * 60)
    return files


def on_disk(loc: Location) -> set[str]:
    return {s.prefix for s in discover(loc).steps if s.files and not s.missing}


# --------------------------------------------------------------------------------------------
# 1. lease names


@pytest.mark.parametrize("kind", KINDS)
def test_lease_whose_owner_looks_like_another_role_keeps_its_step(kind, tmp_path, request):
    """Before: ``ckpt-1.lease-ev.meta`` was read back as a ``.meta`` (``.index``: an index...), so
    the lease was not seen and GC deleted the leased step. Now the name holds a hash of the owner,
    and an old-style name (written by an older version) is still a lease."""
    loc = loc_for(kind, tmp_path, request)
    tf_dir(loc, request, range(1, 5))
    owners = [
        "ev.meta",
        "ev.index",
        "ev.metrics.json",
        "ev.quarantine.json",
        "ev.data-00000-of-00001",
        "ev-00000-of-00001",
        "ev.ckpt",
    ]
    names = [acquire_lease(loc, "ckpt-1", owner, 3600).name for owner in owners]
    legacy = {
        "prefix": "ckpt-2",
        "owner": "old.index",
        "acquired": time.time(),
        "expires": time.time() + 3600,
    }
    loc.fs.pipe_file(loc.join("ckpt-2.lease-old.index"), json.dumps(legacy).encode())
    res = apply_plan(plan_retention(loc, [KeepLastN(1)]))
    assert res.deleted_steps == ["ckpt-3"], res.summary()
    assert {"ckpt-1", "ckpt-2", "ckpt-4"} <= on_disk(loc)
    held = {lease.owner for lease in read_leases(loc).values()}
    assert held == set(owners) | {"old.index"}
    assert all(n.startswith("ckpt-1.lease-") and not n.endswith(tuple(owners)) for n in names)
    assert release_lease(loc, "ckpt-2", "old.index") and not loc.exists("ckpt-2.lease-old.index")


def test_mapped_task_instances_of_a_long_run_id_do_not_share_a_lease(tmp_path):
    """Before: owners were cut to 200 characters, so map indexes 0 and 1 of a long run_id had one
    lease file, and the first to finish removed the other's lease."""
    from airflow_tf_ckpt.operators._common import lease_owner

    loc = Location.of(tmp_path)
    run_id = "scheduled__" + "x" * 250

    def owner(i: int) -> str:
        ti = SimpleNamespace(dag_id="eval_dag", task_id="evaluate", run_id=run_id, map_index=i, try_number=1)
        return lease_owner({"ti": ti})

    a, b = owner(0), owner(1)
    assert a != b
    la, lb = acquire_lease(loc, "ckpt-1", a, 600), acquire_lease(loc, "ckpt-1", b, 600)
    assert la.name != lb.name
    assert release_lease(loc, "ckpt-1", a)
    assert {lease.owner for lease in read_leases(loc).values()} == {b}
    # an old-style lease name shared by two owners is removed only by the owner inside it
    loc.fs.pipe_file(
        loc.join("ckpt-1.lease-shared"),
        json.dumps({"owner": "someone-else", "expires": time.time() + 600}).encode(),
    )
    assert not release_lease(loc, "ckpt-1", "shared") and loc.exists("ckpt-1.lease-shared")


@pytest.mark.parametrize("kind", KINDS)
def test_a_retry_takes_over_the_lease_its_killed_try_left(kind, tmp_path, request):
    """Before: a try killed with ``kill -9`` (a dead Celery worker) left its lease, and the retry
    leased the step under its own owner name, so the dead try's lease held GC off the step until
    its TTL (6 h). Now the retry removes its own task instance's earlier-try leases; another task
    instance's lease stays."""
    from airflow_tf_ckpt.operators._common import lease_owner
    from airflow_tf_ckpt.operators.validate import ValidateCheckpointOperator

    loc = loc_for(kind, tmp_path, request)
    tf_dir(loc, request, range(1, 4))

    def ctx(run_id: str, try_number: int) -> dict[str, object]:
        ti = SimpleNamespace(
            dag_id="eval", task_id="evaluate", run_id=run_id, map_index=-1, try_number=try_number
        )
        return {"ti": ti}

    dead, other = lease_owner(ctx("r1", 1)), lease_owner(ctx("r2", 1))
    acquire_lease(loc, "ckpt-2", dead, 6 * 3600)
    acquire_lease(loc, "ckpt-1", other, 600)
    assert [d.prefix for d in plan_retention(loc, [KeepLastN(1)]).deleted] == []
    op = ValidateCheckpointOperator(task_id="evaluate", ckpt_dir=loc.display(""))
    with op.hold(ctx("r1", 2), loc, discover(loc).get("ckpt-2"), 600) as step:
        assert step.prefix == "ckpt-2"
        assert {le.owner for le in read_leases(loc).values()} == {lease_owner(ctx("r1", 2)), other}
    assert {le.owner for le in read_leases(loc).values()} == {other}
    assert [d.prefix for d in plan_retention(loc, [KeepLastN(1)]).deleted] == ["ckpt-2"]
    # the validate workflow (ValidateCheckpointOperator) takes over the same way
    from airflow_tf_ckpt.core.workflows.validate import validate_steps

    acquire_lease(loc, "ckpt-3", dead, 6 * 3600)
    validate_steps(
        loc, [discover(loc).get("ckpt-3")], lease_owner=lease_owner(ctx("r1", 2)), lease_supersedes=[dead]
    )
    assert {le.owner for le in read_leases(loc).values()} == {other}


# --------------------------------------------------------------------------------------------
# 2. two GC runs at once


@pytest.mark.parametrize("kind", KINDS)
def test_second_gc_run_cannot_clear_the_first_runs_intent(kind, tmp_path, request):
    """Before: a second GC run (another thread here) overwrote the first's intent and removed it
    when it ended; a reader then leased a step the first run was deleting, and lost it. Now the
    second run finds the dir's GC lock taken, and the reader sees the first run's intent."""
    loc = loc_for(kind, tmp_path, request)
    tf_dir(loc, request, range(1, 7))
    first = plan_retention(loc, [KeepLastN(1)])  # deletes 1..5
    second = plan_retention(loc, [KeepLastN(5)])  # deletes 1
    seen: dict[str, object] = {}

    def hook(label, *args):
        if label != "delete" or seen:
            return
        out: list[object] = []
        t = threading.Thread(target=lambda: out.append(_run(second)))
        t.start()
        t.join()
        seen["second"] = out[0]
        try:
            acquire_lease(loc, "ckpt-4", "reader", 600)
            seen["lease"] = "taken"
        except LeaseConflictError:
            seen["lease"] = "refused"

    res = apply_plan(first, hook=hook)
    assert res.deleted_steps == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5"]
    assert seen["lease"] == "refused" and not read_leases(loc)  # no lease on a deleted step
    assert isinstance(seen["second"], GcBusyError) and "another GC run" in str(seen["second"])
    assert not loc.exists(GC_LOCK_NAME)
    assert apply_plan(plan_retention(loc, [KeepLastN(1)])).ok  # the lock is free again


def _run(plan):
    try:
        return apply_plan(plan, lock_wait_s=0)
    except GcBusyError as exc:
        return exc


@pytest.mark.parametrize("kind", KINDS)
def test_gc_lock_is_taken_over_only_when_stale(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    tf_dir(loc, request, range(1, 3))
    lock = acquire_gc_lock(loc)
    with pytest.raises(GcBusyError, match="another GC run is working on this dir"):
        acquire_gc_lock(loc, wait_s=0.3)
    lock.release()
    acquire_gc_lock(loc).release()
    if kind == "gcs":  # a lock left by a run that died elsewhere: honoured until it expires
        body = {"host": "elsewhere", "pid": 1, "acquired": time.time(), "expires": time.time() + 600}
        loc.fs.pipe_file(loc.join(GC_LOCK_NAME), json.dumps(body).encode())
        with pytest.raises(GcBusyError, match="elsewhere pid 1"):
            acquire_gc_lock(loc, wait_s=0)
        body["expires"] = time.time() - 1
        loc.fs.pipe_file(loc.join(GC_LOCK_NAME), json.dumps(body).encode())
        acquire_gc_lock(loc, wait_s=0).release()
        assert not loc.exists(GC_LOCK_NAME)


# --------------------------------------------------------------------------------------------
# 3. quarantine during GC


@pytest.mark.parametrize("kind", KINDS)
def test_quarantine_while_gc_deletes_leaves_no_record_without_files(kind, tmp_path, request):
    """Before: ``quarantine_step`` ignored GC's intent: the step was quarantined, then deleted,
    and its record stayed with nothing behind it. Now the quarantine backs off (or, quarantined
    before GC listed the dir, GC keeps the step)."""
    loc = loc_for(kind, tmp_path, request)
    tf_dir(loc, request, range(1, 5))
    errors: list[Exception] = []

    def hook(label, *args):
        if label == "delete" and not errors:
            try:
                quarantine_step(loc, "ckpt-2", "bad CRC")
            except QuarantineConflictError as exc:
                errors.append(exc)

    res = apply_plan(plan_retention(loc, [KeepLastN(1)]), hook=hook)
    assert errors and "being deleted by a GC run" in str(errors[0])
    assert "ckpt-2" in res.deleted_steps and not loc.exists("ckpt-2.quarantine.json")

    # a GC run that finished (intent cleared) while the record was being written
    def gc_now(label, *args):
        if label == "write_quarantine":
            apply_plan(plan_retention(loc, [KeepLastN(1)]))

    save_step(loc, tf_step_files(request), 5)
    with pytest.raises(QuarantineConflictError, match="deleted while it was being quarantined"):
        quarantine_step(loc, "ckpt-4", "bad CRC", hook=gc_now)
    assert not loc.exists("ckpt-4.quarantine.json") and "ckpt-4" not in on_disk(loc)


# --------------------------------------------------------------------------------------------
# 4. the state file's read-modify-write


@pytest.mark.parametrize("kind", KINDS)
def test_save_committed_during_gc_state_rewrite_is_kept(kind, tmp_path, request):
    """Before: GC wrote the state file it had read at its re-listing; a save that committed
    between that read and the write was lost and TF's latest went back a step. Now the change
    is applied to the file as it is at the write (re-read before the rename; a generation
    precondition on gs://)."""
    loc = loc_for(kind, tmp_path, request)
    files = tf_dir(loc, request, range(1, 4))
    done: list[int] = []

    def hook(label, *args):
        if label == "write_state" and not done:
            done.append(1)
            save_step(loc, files, 4)

    res = apply_plan(plan_retention(loc, [KeepLastN(1)]), hook=hook)
    st = read_state(loc)
    assert st.model_checkpoint_path == "ckpt-4" and st.all_model_checkpoint_paths == ["ckpt-3", "ckpt-4"]
    assert res.deleted_steps == ["ckpt-1", "ckpt-2"] and loc.exists("ckpt-4.index")


@pytest.mark.parametrize("kind", KINDS)
def test_quarantine_and_release_keep_a_save_committed_meanwhile(kind, tmp_path, request):
    """Before: quarantine and release rewrote the state file they had read; a save committed
    in between was lost. They now go through the same update as GC."""
    loc = loc_for(kind, tmp_path, request)
    files = tf_dir(loc, request, range(1, 4))

    def saving(n: int):
        pending = [n]

        def hook(label, *args):
            if label == "write_state" and pending:  # once: the update is then redone, and lands
                save_step(loc, files, pending.pop())

        return hook

    quarantine_step(loc, "ckpt-2", "suspect", hook=saving(4))
    st = read_state(loc)
    assert st.model_checkpoint_path == "ckpt-4" and st.all_model_checkpoint_paths == [
        "ckpt-1",
        "ckpt-3",
        "ckpt-4",
    ]
    release_quarantine(loc, "ckpt-2", verify=False, hook=saving(5))
    st = read_state(loc)
    assert st.model_checkpoint_path == "ckpt-5"
    assert st.all_model_checkpoint_paths == ["ckpt-1", "ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5"]


def test_latest_never_goes_back_under_a_live_trainer_and_concurrent_gc(tmp_path, request):
    """Real threads: a trainer commits a save every few ms while GC runs over and over. After
    every GC, the state file's latest is the newest committed save, never an older one."""
    loc = Location.of(tmp_path / "run")
    files = tf_dir(loc, request, range(1, 3))
    stop = threading.Event()
    committed = [2]

    def trainer():
        n = 3
        while not stop.is_set() and n < 400:
            save_step(loc, files, n)
            committed.append(n)
            n += 1
            time.sleep(0.002)

    t = threading.Thread(target=trainer)
    t.start()
    try:
        for _ in range(15):
            before = committed[-1]
            apply_plan(plan_retention(loc, [KeepLastN(2)]))
            latest = int(read_state(loc).model_checkpoint_path.rsplit("-", 1)[1])
            assert latest >= before, (latest, before)
    finally:
        stop.set()
        t.join()
    st = read_state(loc)
    assert st.model_checkpoint_path == f"ckpt-{committed[-1]}"


def test_a_save_renamed_in_at_the_instant_of_gc_s_own_rename_is_kept(tmp_path, request, monkeypatch):
    """The narrowest window of a local read-modify-write: a trainer's save renames its state file
    in AFTER GC's last re-read and BEFORE GC's own rename. A check-then-``os.replace`` loses that
    save (latest goes back a step, as the live-trainer test above saw under load); the atomic
    exchange hands the trainer's file back to GC, which re-applies its change to it."""
    import airflow_tf_ckpt.core.storage.location as location

    loc = Location.of(tmp_path / "run")
    files = tf_dir(loc, request, range(1, 4))
    plan = plan_retention(loc, [KeepLastN(2)])  # ckpt-1 goes
    landed: list[int] = []

    def a_save_lands() -> None:
        if not landed:
            landed.append(4)
            save_step(loc, files, 4)

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):  # the old code's last step
        if os.path.basename(dst) == "checkpoint":
            a_save_lands()
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    if location._RENAMEAT2 is not None:  # the new code's last step
        real_exchange = location._RENAMEAT2

        def exchange(*args):
            a_save_lands()
            return real_exchange(*args)

        monkeypatch.setattr(location, "_RENAMEAT2", exchange)
    apply_plan(plan)
    st = read_state(loc)
    assert landed == [4]
    assert st.model_checkpoint_path == "ckpt-4", st
    assert "ckpt-4" in st.all_model_checkpoint_paths and "ckpt-1" not in st.all_model_checkpoint_paths


# --------------------------------------------------------------------------------------------
# 5. keep_checkpoint_every_n_hours when file mtimes are not save times

TF_MANAGER_WITH_CLOCK = """
import time as _time
from tensorflow.python.checkpoint import checkpoint_management as cm
clock = [args[1]]
class _Clock:
    def time(self):
        return clock[0]
    def __getattr__(self, name):
        return getattr(_time, name)
cm.time = _Clock()
ck = tf.train.Checkpoint(v=tf.Variable(1.0))
m = tf.train.CheckpointManager(ck, args[0], max_to_keep=args[2], keep_checkpoint_every_n_hours=args[3])
times = {}
for i in range(1, args[4] + 1):
    clock[0] += args[5] * 3600.0
    times[os.path.basename(m.save(checkpoint_number=i))] = clock[0]
result = {"times": times, "kept": sorted(n[:-6] for n in os.listdir(args[0]) if n.endswith(".index"))}
"""


@pytest.fixture(scope="module")
def tf_preserved(tmp_path_factory, tf_run):
    """A dir written by TF's CheckpointManager(max_to_keep=2, keep_checkpoint_every_n_hours=1)
    under a controlled clock: 20 saves 0.4 h apart; what TF left on disk, and the save times."""
    d = tmp_path_factory.mktemp("tf_preserved") / "run"
    d.mkdir()
    out = tf_run(TF_MANAGER_WITH_CLOCK, str(d), T0, 2, 1.0, 20, 0.4)
    return d, out


@pytest.mark.tf
@pytest.mark.parametrize(
    "case", ["cp -r", "clock 5 min ahead", pytest.param("gcs upload", marks=pytest.mark.gcs)]
)
def test_steps_tf_preserved_survive_when_mtimes_lie(case, tf_preserved, tmp_path, request):
    """Before: with mtimes that are not the save times, 7 of 8 steps TF preserved were planned
    for deletion (``cp -r``), or the newest preserved one (a storage clock 5 minutes ahead). The
    state file's timestamps and last_preserved_timestamp are the truth: retention with TF's own
    policy deletes nothing TF kept, exactly as CheckpointManager leaves the dir."""
    src, out = tf_preserved
    kept = set(out["kept"])
    assert len(kept) >= 8  # 2 managed + the steps TF preserved one hour apart
    if case == "gcs upload":
        from tests.fixtures.gcs_emulator import upload_dir

        loc = Location.of(f"gs://{request.getfixturevalue('gcs_bucket')}/run")
        upload_dir(loc.fs, src, loc.path)
    else:
        dst = tmp_path / "run"
        shutil.copytree(src, dst, copy_function=shutil.copy)  # cp -r: mtimes are the copy's
        if case == "clock 5 min ahead":
            for p in dst.iterdir():
                prefix = p.name.split(".")[0]
                if prefix in out["times"]:
                    t = out["times"][prefix] + 300.0
                    os.utime(p, (t, t))
        loc = Location.of(dst)
    now = max(out["times"].values()) + 60
    plan = plan_retention(loc, [KeepLastN(2), KeepEveryNHours(1.0)], now=now)
    assert [d.prefix for d in plan.deleted] == [], plan.summary()
    assert {d.prefix for d in plan.kept} == kept
    res = apply_plan(plan)
    assert on_disk(loc) == kept and res.deleted_steps == []
