"""Metrics sidecars, evaluation leases and quarantine."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.core.formats.naming import FileRole, classify
from airflow_tf_ckpt.core.formats.state import StateFile, read_state, write_state
from airflow_tf_ckpt.core.sidecars.leases import (
    LeaseConflictError,
    LeaseError,
    acquire_lease,
    active_leases,
    clear_gc_intent,
    lease_name,
    leased,
    read_leases,
    release_lease,
    write_gc_intent,
)
from airflow_tf_ckpt.core.sidecars.metrics import (
    MetricsError,
    evaluation_counts,
    metrics_for,
    read_metrics,
    read_metrics_record,
    write_metrics,
)
from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step, read_quarantine
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from tests.test_retention import T0, make_dir, mem_loc, put

# --------------------------------------------------------------------------------------------
# metrics


def test_metrics_roundtrip(tmp_path):
    np = pytest.importorskip("numpy")  # numpy scalars, as an evaluator records them
    loc = Location.of(tmp_path)
    rec = write_metrics(
        loc,
        "ckpt-500",
        {"val_loss": np.float32(0.25), "acc": 1, "div": float("nan"), "up": float("inf"), "down": -math.inf},
        extra={"evaluator": "eval-1", "dataset": {"name": "val", "n": 10}},
        now=T0,
    )
    assert rec["step"] == 500 and rec["time"] == T0
    raw = json.loads((tmp_path / "ckpt-500.metrics.json").read_text())  # strict JSON, no bare NaN
    assert (
        raw["metrics"]["div"] == "NaN" and raw["metrics"]["up"] == "Infinity" and raw["evaluator"] == "eval-1"
    )
    m = read_metrics(loc, "ckpt-500")
    assert m["val_loss"] == 0.25 and m["acc"] == 1.0 and math.isnan(m["div"])
    assert m["up"] == math.inf and m["down"] == -math.inf
    full = read_metrics_record(loc, "ckpt-500")
    assert full["dataset"] == {"name": "val", "n": 10} and full["prefix"] == "ckpt-500"
    assert read_metrics(loc, "ckpt-7") is None
    assert write_metrics(loc, "inception_v1.ckpt", {"a": 1}, step=3)["step"] == 3


@pytest.mark.parametrize(
    "metrics,match",
    [
        ({"loss": "low"}, "'loss' is 'low', not a number"),
        ({"loss": None}, "'loss' is NoneType, not a number"),
        ({"ok": True}, "'ok' is True, not a number"),
        ({"": 1.0}, "metric name '' is not valid"),
        ([("loss", 1.0)], "must be a mapping"),
    ],
)
def test_write_metrics_rejects_nonsense(tmp_path, metrics, match):
    loc = Location.of(tmp_path)
    with pytest.raises(MetricsError, match=match) as ei:
        write_metrics(loc, "ckpt-1", metrics)
    assert str(tmp_path / "ckpt-1.metrics.json") in str(ei.value)
    assert not (tmp_path / "ckpt-1.metrics.json").exists()
    with pytest.raises(MetricsError, match="clashes"):
        write_metrics(loc, "ckpt-1", {"a": 1}, extra={"metrics": 2})
    with pytest.raises(MetricsError, match="JSON-serialisable"):
        write_metrics(loc, "ckpt-1", {"a": 1}, extra={"x": object()})


@pytest.mark.parametrize(
    "data,match",
    [
        (b"{not json", "is not valid JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'{"metrics": {"loss": "low"}}', "'loss' is 'low', not a number"),
        (b'{"metrics": {"loss": true}}', "not a number"),
        (b'{"step": 3}', 'no "metrics" object'),
        (b"\xff\xfe", "is not valid JSON"),
    ],
)
def test_read_metrics_names_the_bad_file(tmp_path, data, match):
    loc = Location.of(tmp_path)
    (tmp_path / "ckpt-3.metrics.json").write_bytes(data)
    with pytest.raises(MetricsError, match=match) as ei:
        read_metrics(loc, "ckpt-3")
    assert ei.value.path == str(tmp_path / "ckpt-3.metrics.json")


def test_metrics_for_reads_only_listed_sidecars(monkeypatch):
    loc = mem_loc()
    make_dir(loc, [1, 2, 3, 4])
    write_metrics(loc, "ckpt-2", {"loss": 0.2})
    write_metrics(loc, "ckpt-4", {"loss": 0.4})
    cdir = discover(loc)
    reads: list[str] = []
    real = loc.fs.cat_file
    monkeypatch.setattr(loc.fs, "cat_file", lambda p, *a, **k: reads.append(p) or real(p, *a, **k))
    monkeypatch.setattr(loc.fs, "exists", lambda *a, **k: pytest.fail("no per-step existence checks"))
    assert metrics_for(cdir) == {"ckpt-2": {"loss": 0.2}, "ckpt-4": {"loss": 0.4}}
    assert sorted(reads) == [loc.join("ckpt-2.metrics.json"), loc.join("ckpt-4.metrics.json")]


def test_metrics_for_collects_problems(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    write_metrics(loc, "ckpt-1", {"loss": 1})
    put(loc, "ckpt-2.metrics.json", b'{"metrics": {"loss": "x"}}')
    write_metrics(loc, "ckpt-3", {"loss": 3})
    cdir = discover(loc)
    (tmp_path / "ckpt-3.metrics.json").unlink()  # gone since the listing: as if there were none
    with pytest.raises(MetricsError, match="ckpt-2.metrics.json"):
        metrics_for(cdir)
    problems: list[str] = []
    assert metrics_for(cdir, problems=problems) == {"ckpt-1": {"loss": 1.0}}
    assert len(problems) == 1 and "ckpt-2.metrics.json" in problems[0]


@pytest.mark.gcs
def test_metrics_for_on_gcs_is_concurrent_and_correct(gcs_bucket):
    loc = Location.of(f"gs://{gcs_bucket}/run")
    steps = list(range(1, 41))
    make_dir(loc, steps)
    for s in steps:
        write_metrics(loc, f"ckpt-{s}", {"loss": s / 100})
    cdir = discover(loc)
    loc.fs.rm_file(loc.join("ckpt-40.metrics.json"))  # vanished after the listing
    got = metrics_for(cdir)
    assert got == {f"ckpt-{s}": {"loss": s / 100} for s in steps[:-1]}
    assert read_metrics(loc, "ckpt-7") == {"loss": 0.07}


# --------------------------------------------------------------------------------------------
# leases


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_lease_acquire_renew_release(kind, tmp_path):
    loc = Location.of(tmp_path) if kind == "local" else mem_loc()
    make_dir(loc, [1, 2])
    lease = acquire_lease(loc, "ckpt-1", "eval-1", 60, now=T0)
    assert (lease.expires, lease.name) == (T0 + 60, lease_name("ckpt-1", "eval-1"))
    body = json.loads(loc.read_bytes(lease.name))
    assert body["owner"] == "eval-1" and body["expires"] == T0 + 60
    renewed = acquire_lease(loc, "ckpt-1", "eval-1", 600, now=T0 + 30)
    assert renewed.expires == T0 + 630
    step = discover(loc).get(1)
    assert [x.owner for x in active_leases(step, T0 + 100, loc)] == ["eval-1"]
    records = read_leases(discover(loc))
    assert active_leases(step, T0 + 700, records) == []  # expired by then
    assert "leased by eval-1 until" in records[lease.name].describe()
    assert release_lease(loc, "ckpt-1", "eval-1") and not release_lease(loc, "ckpt-1", "eval-1")
    assert discover(loc).get(1).leases == []


def test_lease_validation_and_context_manager(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1])
    for owner in ("", "a/b", "x y", "*"):
        with pytest.raises(LeaseError, match="owner"):
            acquire_lease(loc, "ckpt-1", owner, 10)
    for ttl in (0, -5, float("nan"), float("inf")):
        with pytest.raises(LeaseError, match="TTL"):
            acquire_lease(loc, "ckpt-1", "ev", ttl)
    with pytest.raises(RuntimeError, match="boom"):
        with leased(loc, "ckpt-1", "ev", 60) as lease:
            assert (tmp_path / lease.name).exists()
            raise RuntimeError("boom")
    assert not (tmp_path / lease_name("ckpt-1", "ev")).exists()


def test_unreadable_lease_is_honoured(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    (tmp_path / "ckpt-1.lease-mystery").write_bytes(b"\x00garbage")
    step = discover(loc).get(1)
    [lease] = active_leases(step, time.time(), loc)
    assert not lease.readable and "malformed" in lease.problem and "unreadable" in lease.describe()
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import KeepLastN

    assert plan_retention(loc, [KeepLastN(1)]).decision("ckpt-1").action == "keep"


def test_gc_intent_blocks_new_leases_until_it_expires(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    write_gc_intent(loc, "ckpt", ["ckpt-1"], ttl_s=60, started=T0, now=T0)
    with pytest.raises(LeaseConflictError, match="being deleted by a GC run"):
        acquire_lease(loc, "ckpt-1", "ev", 60, now=T0 + 1)
    assert not (tmp_path / lease_name("ckpt-1", "ev")).exists()  # taken back
    acquire_lease(loc, "ckpt-2", "ev", 60, now=T0 + 1)  # not named by the intent
    acquire_lease(loc, "ckpt-1", "ev", 60, now=T0 + 61)  # the intent has expired
    clear_gc_intent(loc, "ckpt")
    clear_gc_intent(loc, "ckpt")  # idempotent


# --------------------------------------------------------------------------------------------
# quarantine


def test_quarantine_latest_falls_back_to_previous(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3], lp=T0 - 1)
    res = quarantine_step(loc, "ckpt-3", "crc mismatch in w", {"tensor": "w", "ok": False}, now=T0)
    assert res.was_latest and res.new_latest == "ckpt-2" and res.removed_paths == ["ckpt-3"]
    st = read_state(loc)
    assert st == StateFile("ckpt-2", ["ckpt-1", "ckpt-2"], [T0, T0 + 3600], T0 - 1)
    rec = read_quarantine(loc, "ckpt-3")
    assert rec["reason"] == "crc mismatch in w" and rec["report"] == {"tensor": "w", "ok": False}
    assert rec["time"] == T0 and rec["step"] == 3
    s3 = discover(loc).get(3)
    assert s3.quarantined and not s3.in_state and s3.files  # files kept for inspection
    again = quarantine_step(loc, 3, "again")  # idempotent, by step number
    assert again.removed_paths == [] and read_state(loc) == st
    # not the latest: the latest stays
    res = quarantine_step(discover(loc), "ckpt-1", "bad")
    assert not res.was_latest and read_state(loc).model_checkpoint_path == "ckpt-2"
    with pytest.raises(StepNotFoundError):
        quarantine_step(loc, "ckpt-9", "nope")


def test_quarantine_the_only_step(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3], in_state=[3])  # 1, 2 on disk but not in the state file
    res = quarantine_step(loc, "ckpt-3", "corrupt")
    assert res.new_latest == "ckpt-2" and read_state(loc).all_model_checkpoint_paths == ["ckpt-2"]
    quarantine_step(loc, "ckpt-2", "corrupt")
    quarantine_step(loc, "ckpt-1", "corrupt")
    assert read_state(loc) is None and not (tmp_path / "checkpoint").exists()  # TF: latest -> None


def test_quarantine_absolute_spelling_and_crash_between_writes(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2], absolute=True)

    def crash(label, *_):
        if label == "write_state":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        quarantine_step(loc, "ckpt-2", "bad", hook=crash)
    assert read_quarantine(loc, "ckpt-2") is not None  # the record is written first...
    assert read_state(loc).model_checkpoint_path == str(tmp_path / "ckpt-2")  # ...state not yet
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import KeepLastN

    assert plan_retention(loc, [KeepLastN(1)]).decision("ckpt-2").action == "keep"  # GC keeps it anyway
    quarantine_step(loc, "ckpt-2", "bad")
    assert read_state(loc) == StateFile(str(tmp_path / "ckpt-1"), [str(tmp_path / "ckpt-1")], [T0], 0.0)


@pytest.mark.gcs
def test_quarantine_on_gcs(gcs_bucket):
    loc = Location.of(f"gs://{gcs_bucket}/run")
    make_dir(loc, [1, 2])
    assert quarantine_step(loc, "ckpt-2", "bad").new_latest == "ckpt-1"
    assert read_state(loc).model_checkpoint_path == "ckpt-1" and discover(loc).get(2).quarantined


@pytest.mark.tf
def test_tf_latest_checkpoint_follows_quarantine(copy_variant):
    from tests.fixtures.tf_checkpoints import tf_batch

    d = copy_variant("tf2_manager")  # ckpt-3..5
    e = copy_variant("tf2_manager")
    loc = Location.of(d)
    quarantine_step(loc, "ckpt-5", "verify failed")
    for p in ("ckpt-3", "ckpt-4", "ckpt-5"):
        quarantine_step(Location.of(e), p, "all bad")
    latest_d, latest_e, restored = tf_batch(
        [("latest_checkpoint", [str(d)]), ("latest_checkpoint", [str(e)]), ("read_all", [str(d / "ckpt-4")])]
    )
    assert Path(latest_d).name == "ckpt-4" and latest_e is None and restored["ok"]
    write_state(loc, read_state(loc))  # our writer round-trips TF's file


# --------------------------------------------------------------------------------------------
# per-evaluator metrics sidecars (issue 8: two evaluation DAGs on one dir)


def test_evaluator_sidecars_are_separate_files_and_the_default_is_unchanged(copy_variant):
    d = copy_variant("tf2_manager")
    loc = Location.of(d)
    prefix = discover(loc).latest().prefix
    write_metrics(loc, prefix, {"val_loss": 0.5})  # the default evaluator: today's file
    write_metrics(loc, prefix, {"val_loss": 0.4}, evaluator="tf_ckpt_evaluate_each_step")
    write_metrics(loc, prefix, {"val_loss": 0.3}, evaluator="tf_ckpt_event_driven")
    names = sorted(p.name for p in d.iterdir() if ".metrics" in p.name)
    assert names == [
        f"{prefix}.metrics.json",
        f"{prefix}.metrics~tf_ckpt_evaluate_each_step.json",
        f"{prefix}.metrics~tf_ckpt_event_driven.json",
    ]
    assert classify(f"{prefix}.metrics~tf_ckpt_event_driven.json") == FileRole(
        prefix, "metrics", evaluator="tf_ckpt_event_driven"
    )
    cdir = discover(loc)
    step = cdir.get(prefix)
    assert {f.name for f in step.sidecars} >= set(names) and step.committed and not step.problems
    assert metrics_for(cdir) == {prefix: {"val_loss": 0.5}}
    assert metrics_for(cdir, evaluator="tf_ckpt_event_driven") == {prefix: {"val_loss": 0.3}}
    assert read_metrics(loc, prefix, "tf_ckpt_evaluate_each_step") == {"val_loss": 0.4}
    assert read_metrics(loc, prefix, "nobody") is None
    assert evaluation_counts(cdir) == {
        prefix: {None: 1, "tf_ckpt_evaluate_each_step": 1, "tf_ckpt_event_driven": 1}
    }
    # TF still restores around our sidecars: no file of ours is mistaken for a checkpoint file
    assert all(classify(n).role == "metrics" for n in names)


def test_old_sidecars_read_as_one_evaluation(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1])
    (tmp_path / "ckpt-1.metrics.json").write_text(
        json.dumps(
            {"prefix": "ckpt-1", "step": 1, "metrics": {"loss": 0.2}, "time": T0, "evaluator": "dag/run/task"}
        )
    )
    rec = read_metrics_record(loc, "ckpt-1")
    assert rec["evaluations"] == 1 and rec["history"] == [] and rec["evaluator"] == "dag/run/task"
    assert evaluation_counts(discover(loc)) == {"ckpt-1": {None: 1}}
    # the next evaluation counts on from it
    assert write_metrics(loc, "ckpt-1", {"loss": 0.1})["evaluations"] == 2


def test_evaluations_are_counted_with_history_and_a_manual_edit_is_not(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [5])
    for i in range(3):
        rec = write_metrics(
            loc, "ckpt-5", {"loss": 1.0 - i / 10}, evaluator="dag_a", extra={"run": f"r{i}"}, now=T0 + i
        )
    assert rec["evaluations"] == 3 and rec["evaluator"] == "dag_a"
    full = read_metrics_record(loc, "ckpt-5", "dag_a")
    assert [h["run"] for h in full["history"]] == ["r0", "r1", "r2"] and full["metrics"] == {"loss": 0.8}
    write_metrics(loc, "ckpt-5", {"loss": 0.0}, evaluator="dag_a", count=False)
    full = read_metrics_record(loc, "ckpt-5", "dag_a")
    assert full["evaluations"] == 3 and len(full["history"]) == 3 and full["metrics"] == {"loss": 0.0}
    assert read_metrics_record(loc, "ckpt-5") is None  # the default sidecar was never written


@pytest.mark.parametrize("bad", ["", "a~b", "a/b", ".hidden", "-x", "a" * 251, "sp ace", "ä"])
def test_invalid_evaluator_names_are_refused(tmp_path, bad):
    with pytest.raises(MetricsError, match="invalid evaluator name"):
        write_metrics(Location.of(tmp_path), "ckpt-1", {"a": 1}, evaluator=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,role,prefix,evaluator",
    [
        ("ckpt-5.metrics~dag.v2.json", "metrics", "ckpt-5", "dag.v2"),
        ("ckpt-5.metrics~x.quarantine.json", "metrics", "ckpt-5", "x.quarantine"),
        ("ckpt-5.metrics.json", "metrics", "ckpt-5", None),
        ("ckpt-5.lease-host@1.metrics", "lease", "ckpt-5", None),  # a lease owner never holds '~'
        ("ckpt-5.metrics~.json", None, None, None),  # no evaluator name: not ours
    ],
)
def test_evaluator_sidecar_names_are_unambiguous(name, role, prefix, evaluator):
    r = classify(name)
    if role is None:
        assert r is None or r.role != "metrics" or r.evaluator is None
    else:
        assert (r.role, r.prefix, r.evaluator) == (role, prefix, evaluator)


def _evaluate_many(url: str, evaluator: str, barrier=None, times: int = 3) -> None:
    loc = Location.of(url)
    if barrier is not None:
        barrier.wait()
    for i in range(times):
        write_metrics(
            loc, "ckpt-1", {"loss": float(i)}, evaluator=evaluator, extra={"run": f"{os.getpid()}-{i}"}
        )


def test_two_evaluators_writing_one_step_at_once_lose_nothing_locally(tmp_path):
    """Two evaluators x 3 processes, all writing step 1 at once: each evaluator's record counts
    all 9 of its evaluations (flock-serialized read-modify-write), the other's is untouched."""
    import multiprocessing

    make_dir(Location.of(tmp_path), [1])
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [
        ctx.Process(target=_evaluate_many, args=(str(tmp_path), ev, barrier))
        for ev in ("dag_a", "dag_b")
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    cdir = discover(Location.of(tmp_path))
    assert evaluation_counts(cdir) == {"ckpt-1": {"dag_a": 9, "dag_b": 9}}
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.gcs
def test_two_evaluators_writing_one_step_at_once_lose_nothing_on_gcs(gcs_bucket):
    import threading

    url = f"gs://{gcs_bucket}/run"
    loc = Location.of(url)
    make_dir(loc, [1])
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(ev: str) -> None:
        try:
            _evaluate_many(url, ev, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ev,)) for ev in ("dag_a", "dag_b") for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert evaluation_counts(discover(Location.of(url))) == {"ckpt-1": {"dag_a": 6, "dag_b": 6}}
