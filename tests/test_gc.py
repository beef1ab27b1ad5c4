"""GC execution: state file first, then batched deletes; safety against hostile dirs; crash safety
(an exception at every labelled I/O point, then a rerun); re-planning when the dir changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.formats.state import StateFile, read_state, resolve_path, write_state
from airflow_tf_ckpt.core.retention.executor import PlanConflictError, apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepEveryNHours, KeepLastN, KeepPromoted
from airflow_tf_ckpt.core.sidecars.leases import (
    LeaseConflictError,
    acquire_lease,
    gc_intent_name,
    lease_name,
    read_gc_intent,
)
from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
from airflow_tf_ckpt.core.sidecars.promotions import record_promotion
from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from tests.test_retention import T0, H, make_dir, make_step, mem_loc, put


def names(loc: Location) -> set[str]:
    return set(loc.listdir())


def state_names_only_existing(loc: Location) -> None:
    """The crash invariant: every step the state file names (inside this dir) is complete here."""
    st = read_state(loc)
    if st is None:
        return
    listing = names(loc)
    complete = {s.prefix for s in discover(loc).steps if s.files and not s.missing}
    for raw in st.all_model_checkpoint_paths + [st.model_checkpoint_path]:
        r = resolve_path(loc, raw, listing)
        if r.name is not None:
            assert r.name in complete, f"state names {raw!r} but its files are gone: {sorted(listing)}"


def loc_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest, sub: str = "run") -> Location:
    """A fresh, empty dir ``sub`` on a local disk, memory:// or the GCS emulator."""
    if kind == "local":
        return Location.of(tmp_path / sub)
    if kind == "memory":
        return mem_loc()
    bucket = request.getfixturevalue("gcs_bucket")
    return Location.of(f"gs://{bucket}/{sub}")


@pytest.mark.parametrize("kind", ["local", "memory", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_apply_rewrites_state_then_deletes(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3, 4, 5], shards=2, lp=T0 - 1)
    write_metrics(loc, "ckpt-1", {"loss": 1.0})
    acquire_lease(loc, "ckpt-2", "gone", 1, now=T0)  # long expired
    st = read_state(loc)
    write_state(
        loc,
        StateFile(
            "ckpt-5",
            ["ckpt-0"] + st.all_model_checkpoint_paths,  # ckpt-0: no files
            [T0 - H] + st.all_model_checkpoint_timestamps,
            T0 - 1,
        ),
    )
    plan = plan_retention(loc, [KeepLastN(2)])
    res = apply_plan(plan, batch_size=3)
    assert res.ok and res.state_written and not res.replans
    assert res.deleted_steps == ["ckpt-1", "ckpt-2", "ckpt-3"] and res.dropped_from_state == ["ckpt-0"]
    assert len(res.deleted) == 3 * 3 + 2 and res.bytes_freed == 3 * (8 + 64)
    assert names(loc) == {
        "checkpoint",
        "ckpt-4.index",
        "ckpt-4.data-00000-of-00002",
        "ckpt-4.data-00001-of-00002",
        "ckpt-5.index",
        "ckpt-5.data-00000-of-00002",
        "ckpt-5.data-00001-of-00002",
    }
    after = read_state(loc)
    assert after == StateFile("ckpt-5", ["ckpt-4", "ckpt-5"], [T0 + 3 * H, T0 + 4 * H], T0 - 1)
    if kind == "gcs":
        assert all(p.startswith("gs://") for p in res.deleted)
    again = apply_plan(plan_retention(loc, [KeepLastN(2)]))
    assert again.deleted == [] and not again.state_written  # converged
    assert "deleted 3 step(s), 11 file(s)" in res.summary()


def test_dry_run_changes_nothing(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    res = apply_plan(plan_retention(loc, [KeepLastN(1)]), dry_run=True)
    assert res.dry_run and not res.deleted and not res.state_written
    assert sorted(os.path.basename(p) for p in res.would_delete) == [
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ]
    assert res.new_state.all_model_checkpoint_paths == ["ckpt-3"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert res.summary().startswith("dry run: would delete 2 step(s), 4 file(s)")


def test_state_keeps_absolute_spelling_and_advances_last_preserved(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(
        loc, [1, 2, 3, 4, 5, 6], absolute=True, times=[T0 + x * H for x in (1, 1.5, 3, 3.2, 5, 5.1)], lp=T0
    )
    plan = plan_retention(loc, [KeepLastN(2), KeepEveryNHours(2)], now=T0 + 10 * H)
    assert [d.step for d in plan.deleted] == [1, 2, 4]
    apply_plan(plan)
    st = read_state(loc)
    assert st.all_model_checkpoint_paths == [str(tmp_path / f"ckpt-{s}") for s in (3, 5, 6)]
    assert st.all_model_checkpoint_timestamps == [T0 + x * H for x in (3, 5, 5.1)]
    assert st.last_preserved_timestamp == T0 + 5 * H  # 3 and 5 preserved; 6 is held by keep_last only


# --------------------------------------------------------------------------------------------
# safety: nothing outside the managed root, whatever the state file says


def test_hostile_state_file_and_symlinks_are_refused(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    other = tmp_path / "other"
    for d in (root, outside, other):
        d.mkdir()
    (outside / "ckpt-1.index").write_bytes(b"SENTINEL")
    (outside / "ckpt-1.data-00000-of-00001").write_bytes(b"SENTINEL")
    (other / "ckpt-7.index").write_bytes(b"SENTINEL")
    (outside / "target").write_bytes(b"SENTINEL")
    loc = Location.of(root)
    make_dir(loc, [2, 3, 4, 5], write=False)
    # ckpt-3's data shard is a symlink to a file outside; ckpt-4's is a symlink inside the root
    (root / "ckpt-3.data-00000-of-00001").unlink()
    os.symlink(outside / "target", root / "ckpt-3.data-00000-of-00001")
    (root / "real-shard").write_bytes(b"D")
    (root / "ckpt-4.data-00000-of-00001").unlink()
    os.symlink("real-shard", root / "ckpt-4.data-00000-of-00001")
    hostile = ["../outside/ckpt-1", str(other / "ckpt-7"), "gs://other-bucket/run/ckpt-1", str(outside)]
    write_state(loc, StateFile("ckpt-5", hostile + ["ckpt-2", "ckpt-3", "ckpt-4", "ckpt-5"], [], 0.0))

    plan = plan_retention(loc, [KeepLastN(1)])
    assert [d.prefix for d in plan.deleted] == ["ckpt-2", "ckpt-4"]
    d3 = plan.decision("ckpt-3")
    assert (
        d3.action == "keep" and "symlink" in d3.reasons[0] and "outside the checkpoint dir" in d3.reasons[0]
    )
    res = apply_plan(plan)
    refused = {r.path: r.reason for r in res.refused}
    for raw in hostile:
        assert raw in refused and "not followed" in refused[raw], raw
    assert "'..'" in refused["../outside/ckpt-1"]
    assert str(root / "ckpt-3.data-00000-of-00001") in refused
    # sentinels survive; nothing was removed through the outward link, not even the link
    for p in (
        outside / "ckpt-1.index",
        outside / "ckpt-1.data-00000-of-00001",
        other / "ckpt-7.index",
        outside / "target",
    ):
        assert p.read_bytes() == b"SENTINEL"
    assert (root / "ckpt-3.data-00000-of-00001").is_symlink()
    # the inward link itself went, its target (inside the root) did not
    assert not os.path.lexists(root / "ckpt-4.data-00000-of-00001") and (root / "real-shard").exists()
    assert sorted(read_state(loc).all_model_checkpoint_paths) == sorted(hostile + ["ckpt-3", "ckpt-5"])


def test_absolute_path_elsewhere_resolves_to_the_local_twin_only(tmp_path):
    """A moved dir: the state names /elsewhere/ckpt-1 and ckpt-1.* exists here too. GC deletes the
    local twin; the sentinel at the absolute path survives."""
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ckpt-1.index").write_bytes(b"SENTINEL")
    loc = Location.of(root)
    make_dir(loc, [1, 2], write=False)
    write_state(
        loc,
        StateFile(str(elsewhere / "ckpt-2"), [str(elsewhere / "ckpt-1"), str(elsewhere / "ckpt-2")], [], 0.0),
    )
    res = apply_plan(plan_retention(loc, [KeepLastN(1)]))
    assert res.deleted_steps == ["ckpt-1"] and not (root / "ckpt-1.index").exists()
    assert (elsewhere / "ckpt-1.index").read_bytes() == b"SENTINEL"
    assert read_state(loc).all_model_checkpoint_paths == [str(elsewhere / "ckpt-2")]


def test_glob_characters_are_refused_on_object_stores():
    loc = mem_loc()
    for p in ("m[1].ckpt-1", "m[1].ckpt-2"):
        put(loc, p, b"V1TABLE")
    put(loc, "m1.ckpt-1", b"SENTINEL")  # what the glob m[1].ckpt-1 would match
    write_state(loc, StateFile("m[1].ckpt-2", ["m[1].ckpt-1", "m[1].ckpt-2"], [], 0.0))
    plan = plan_retention(loc, [KeepLastN(1)])
    assert plan.decision("m[1].ckpt-1").action == "keep"
    res = apply_plan(plan)
    assert any("glob" in r.reason for r in res.refused) and not res.deleted
    assert loc.read_bytes("m1.ckpt-1") == b"SENTINEL" and loc.exists("m[1].ckpt-1")


def test_root_swapped_between_plan_and_apply(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_dir(Location.of(a), [1, 2, 3])
    make_dir(Location.of(b), [1, 2, 3])
    link = tmp_path / "run"
    os.symlink(a, link)
    plan = plan_retention(Location.of(link), [KeepLastN(1)])
    link.unlink()
    os.symlink(b, link)  # someone re-points the dir
    res = apply_plan(plan)
    assert not res.deleted and any("now resolves to" in r.reason for r in res.refused)
    assert {p.name for p in b.iterdir()} >= {"ckpt-1.index", "ckpt-2.index"}


# --------------------------------------------------------------------------------------------
# crash safety


class Crash(Exception):
    pass


def _crash_points(kind: str, tmp_path: Path, request) -> list[tuple[str, int]]:
    loc = loc_for(kind, tmp_path, request, "probe")
    _build_crash_dir(loc)
    labels: list[str] = []
    apply_plan(plan_retention(loc, [KeepLastN(2)]), batch_size=4, hook=lambda label, *a: labels.append(label))
    points, seen = [], {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        points.append((label, seen[label]))
    return points


def _build_crash_dir(loc: Location) -> None:
    make_dir(loc, [1, 2, 3, 4, 5, 6], shards=2, meta_steps=[1])
    write_metrics(loc, "ckpt-2", {"loss": 0.5})
    acquire_lease(loc, "ckpt-3", "old", 1, now=T0)


@pytest.mark.parametrize("kind", ["local", "memory", pytest.param("gcs", marks=pytest.mark.gcs)])
def test_crash_at_every_point_then_rerun_converges(kind, tmp_path, request):
    ref = loc_for(kind, tmp_path, request, "ref")
    _build_crash_dir(ref)
    apply_plan(plan_retention(ref, [KeepLastN(2)]))
    want_names, want_state = names(ref), read_state(ref)
    points = _crash_points(kind, tmp_path, request)
    assert [p[0] for p in points][:3] == ["write_intent", "relist", "write_state"]
    assert points[-1][0] == "clear_intent" and sum(p[0] == "delete" for p in points) == 14
    if kind == "gcs":  # the emulator is slow to fill: a representative subset
        points = [p for p in points if p[0] != "delete" or p[1] in (1, 5, 14)]
    for i, (label, nth) in enumerate(points):
        loc = loc_for(kind, tmp_path, request, f"c{i}")
        _build_crash_dir(loc)
        count = {"n": 0}

        def hook(lbl, *_a, label=label, nth=nth, count=count):
            if lbl == label:
                count["n"] += 1
                if count["n"] == nth:
                    raise Crash(f"{label}#{nth}")

        with pytest.raises(Crash):
            apply_plan(plan_retention(loc, [KeepLastN(2)]), batch_size=4, hook=hook)
        state_names_only_existing(loc)
        res = apply_plan(plan_retention(loc, [KeepLastN(2)]))
        assert res.ok and names(loc) == want_names, (label, nth, sorted(names(loc) ^ want_names))
        assert read_state(loc) == want_state
        assert read_gc_intent(loc, "ckpt") is None
        final = plan_retention(loc, [KeepLastN(2)])
        assert not final.deleted and not [s for s in final.sidecars if s.action == "delete"]


# --------------------------------------------------------------------------------------------
# the dir changes between planning and applying


CHANGING = ["local", pytest.param("gcs", marks=pytest.mark.gcs)]


@pytest.mark.parametrize("kind", CHANGING)
def test_newly_leased_step_is_replanned_and_kept(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3, 4])
    plan = plan_retention(loc, [KeepLastN(1)])
    acquire_lease(loc, "ckpt-2", "evaluator", 600)
    with pytest.raises(PlanConflictError, match="ckpt-2 is now leased by evaluator") as ei:
        apply_plan(plan, on_conflict="refuse")
    assert ei.value.conflicts and loc.exists("ckpt-1.index")
    assert read_gc_intent(loc, "ckpt") is None  # the refusal cleared its intent
    res = apply_plan(plan)
    assert res.replans == 1 and any("now leased by evaluator" in c for c in res.conflicts)
    assert res.deleted_steps == ["ckpt-1", "ckpt-3"] and loc.exists("ckpt-2.index")
    assert "ckpt-2" in read_state(loc).all_model_checkpoint_paths


@pytest.mark.parametrize("kind", CHANGING)
def test_quarantined_or_promoted_since_planning_is_kept(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3, 4])
    plan = plan_retention(loc, [KeepLastN(1), KeepPromoted()])
    quarantine_step(loc, "ckpt-1", "bad CRC")
    record_promotion(loc, "ckpt-2", "gs://elsewhere/serving", alias="prod")
    res = apply_plan(plan)
    assert res.replans == 1
    assert any("ckpt-1 was quarantined" in c for c in res.conflicts), res.conflicts
    assert any("ckpt-2 was promoted" in c for c in res.conflicts), res.conflicts
    assert res.deleted_steps == ["ckpt-3"] and loc.exists("ckpt-1.index") and loc.exists("ckpt-2.index")


@pytest.mark.parametrize("kind", CHANGING)
def test_trainer_saves_between_plan_and_apply(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3])
    plan = plan_retention(loc, [KeepLastN(2)])
    make_step(loc, "ckpt-4")  # the trainer saved and committed meanwhile
    st = read_state(loc)
    write_state(
        loc,
        StateFile(
            "ckpt-4",
            st.all_model_checkpoint_paths + ["ckpt-4"],
            st.all_model_checkpoint_timestamps + [T0 + 9 * H],
            0.0,
        ),
    )
    res = apply_plan(plan)
    assert res.replans == 0 and res.deleted_steps == ["ckpt-1"]  # still safe: no re-plan needed
    assert read_state(loc).all_model_checkpoint_paths == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert read_state(loc).model_checkpoint_path == "ckpt-4"  # the new step is not lost
    assert loc.exists("ckpt-4.index")


@pytest.mark.parametrize("kind", CHANGING)
def test_rolled_back_latest_is_not_deleted(kind, tmp_path, request):
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3])
    plan = plan_retention(loc, [KeepLastN(1)])
    st = read_state(loc)
    write_state(
        loc, StateFile("ckpt-2", st.all_model_checkpoint_paths, st.all_model_checkpoint_timestamps, 0.0)
    )
    res = apply_plan(plan)
    assert res.replans == 1 and any("latest" in c for c in res.conflicts)
    assert res.deleted_steps == ["ckpt-1"] and loc.exists("ckpt-2.index")


@pytest.mark.parametrize("kind", CHANGING)
def test_lease_handshake_with_a_running_gc(kind, tmp_path, request):
    """A reader that leases a step after GC wrote its intent backs off; a reader that leased it
    before GC listed the dir keeps it. No interleaving deletes a leased step."""
    loc = loc_for(kind, tmp_path, request)
    make_dir(loc, [1, 2, 3, 4])
    outcome: dict[str, object] = {}
    plan = plan_retention(loc, [KeepLastN(1)])
    acquire_lease(loc, "ckpt-3", "early-reader", 600)  # after planning, before GC's intent

    def hook(label, *args):
        if label == "relist" and "tried" not in outcome:  # GC's intent is written, listing is next
            outcome["tried"] = True
            intent = read_gc_intent(loc, "ckpt")
            outcome["intent"] = sorted(intent.prefixes)
            try:
                acquire_lease(loc, "ckpt-1", "late-reader", 600)
            except LeaseConflictError as exc:
                outcome["late"] = str(exc)

    res = apply_plan(plan, hook=hook)
    assert (
        outcome["intent"] == ["ckpt-1", "ckpt-2", "ckpt-3"] and "being deleted by a GC run" in outcome["late"]
    )
    assert res.deleted_steps == ["ckpt-1", "ckpt-2"] and not loc.exists(lease_name("ckpt-1", "late-reader"))
    assert loc.exists("ckpt-3.index") and loc.exists(lease_name("ckpt-3", "early-reader"))
    assert not loc.exists(gc_intent_name("ckpt"))
    # once GC is done, leasing works again
    acquire_lease(loc, "ckpt-4", "reader", 60)


def test_one_rm_call_per_batch_on_object_stores(monkeypatch):
    loc = mem_loc()
    make_dir(loc, list(range(1, 12)), shards=3)  # 10 doomed steps x 4 files
    calls: list[int] = []
    real_rm = loc.fs.rm

    def spy(paths, *a, **k):
        calls.append(len(paths))
        return real_rm(paths, *a, **k)

    monkeypatch.setattr(loc.fs, "rm", spy)
    res = apply_plan(plan_retention(loc, [KeepLastN(1)]), batch_size=10)
    assert calls == [12, 12, 12, 4]  # whole steps per batch, one call each
    assert len(res.deleted_steps) == 10


def test_files_already_gone_are_reported_not_fatal(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    plan = plan_retention(loc, [KeepLastN(1)])

    def hook(label, *args):
        if label == "delete" and args[0].endswith("ckpt-2.data-00000-of-00001"):
            os.unlink(args[0])  # TF's own sweep got there first

    res = apply_plan(plan, hook=hook)
    assert res.ok and res.missing == [str(tmp_path / "ckpt-2.data-00000-of-00001")]
    assert res.deleted_steps == ["ckpt-1", "ckpt-2"]


def test_abandoned_temp_files_of_atomic_writes_are_cleaned(tmp_path):
    """A write_atomic (or a local promotion copy) killed before its rename leaves
    ``.TARGET.XXXXXXXX.tmp``; GC removes those older than an hour, and nothing else that looks alike."""
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3])
    old = T0 - 2 * H
    names = {
        ".checkpoint.k3j_9x2a.tmp": old,  # a state-file write that died: goes
        ".PROMOTIONS.json.0a1b2c3d.tmp": old,  # goes
        ".checkpoint.fresh123.tmp": T0 - 60,  # a write in progress right now: stays
        ".notours.tmp": old,  # not our pattern: stays
        ".checkpoint.TOOLONG99.tmp": old,  # upper case: not mkstemp's alphabet: stays
    }
    for n, t in names.items():
        (tmp_path / n).write_bytes(b"partial")
        os.utime(tmp_path / n, (t, t))
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()  # a directory that looks like one: stays
    os.utime(tmp_path / ".dir.abcdefgh.tmp", (old, old))
    outside = tmp_path.parent / ".checkpoint.zzzzzzzz.tmp"  # a symlink out of the root: refused
    outside.write_bytes(b"sentinel")
    os.symlink(outside, tmp_path / ".checkpoint.symlink1.tmp")
    os.utime(tmp_path / ".checkpoint.symlink1.tmp", (old, old), follow_symlinks=False)

    plan = plan_retention(loc, [KeepLastN(3)], now=T0)
    temps = {s.name: s for s in plan.sidecars if s.role == "temp"}
    assert sorted(temps) == [".PROMOTIONS.json.0a1b2c3d.tmp", ".checkpoint.k3j_9x2a.tmp"]
    assert temps[".checkpoint.k3j_9x2a.tmp"].prefix == "checkpoint"
    assert "never finished (120 min old)" in temps[".checkpoint.k3j_9x2a.tmp"].reason
    assert sorted(apply_plan(plan, dry_run=True).would_delete) == sorted(str(tmp_path / n) for n in temps)
    res = apply_plan(plan)
    assert res.ok and not res.deleted_steps
    left = {p.name for p in tmp_path.iterdir()}
    assert (
        not left & set(temps)
        and {
            ".checkpoint.fresh123.tmp",
            ".notours.tmp",
            ".checkpoint.TOOLONG99.tmp",
            ".dir.abcdefgh.tmp",
            ".checkpoint.symlink1.tmp",
        }
        <= left
    )
    assert outside.read_bytes() == b"sentinel"
    # a plan for one base of a shared dir leaves temp files alone (they may be the other job's)
    (tmp_path / ".checkpoint.k3j_9x2a.tmp").write_bytes(b"partial")
    os.utime(tmp_path / ".checkpoint.k3j_9x2a.tmp", (old, old))
    assert not [
        s for s in plan_retention(loc, [KeepLastN(3)], prefix="ckpt", now=T0).sidecars if s.role == "temp"
    ]
