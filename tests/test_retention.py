"""Retention planning: policies, guards, TF's every-N-hours semantics, properties and speed.

Fake checkpoint dirs (index + data shards of a few bytes, a real state file) are built on local
dirs, ``memory://`` and the GCS emulator. TF-backed tests build real checkpoints in a TF
subprocess and ask TF what it keeps and restores.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_tf_ckpt.core.formats.state import StateFile, read_state, write_state
from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import (
    KeepBestK,
    KeepEveryNHours,
    KeepEveryNSteps,
    KeepLastN,
    KeepPinned,
    KeepPromoted,
    KeepUnevaluated,
    RetentionError,
    parse_duration,
    policies_from_options,
)
from airflow_tf_ckpt.core.sidecars.leases import acquire_lease, lease_name
from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
from airflow_tf_ckpt.core.sidecars.promotions import promoted_prefixes, record_promotion
from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from airflow_tf_ckpt.core.storage.location import FileInfo, Location

T0 = 1_700_000_000.0
H = 3600.0


# --------------------------------------------------------------------------------------------
# builders (also used by tests/test_gc.py)


def mem_loc() -> Location:
    return Location.of(f"memory://ret-{uuid.uuid4().hex[:10]}/run")


def put(loc: Location, name: str, data: bytes = b"x") -> None:
    if loc.local:
        os.makedirs(loc.path, exist_ok=True)
    loc.fs.pipe_file(loc.join(name), data)


def set_mtime(loc: Location, name: str, t: float) -> None:
    """Back-date a file (local: utime; memory://: its creation time, which is its listed mtime)."""
    if loc.local:
        os.utime(loc.join(name), (t, t))
    else:
        loc.fs.store[loc.join(name)].created = datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc)


def make_step(
    loc: Location, prefix: str, shards: int = 1, meta: bool = False, mtime: float | None = None
) -> None:
    names = [f"{prefix}.index"] + [f"{prefix}.data-{k:05d}-of-{shards:05d}" for k in range(shards)]
    put(loc, names[0], b"I" * 8)
    for n in names[1:]:
        put(loc, n, b"D" * 32)
    if meta:
        put(loc, f"{prefix}.meta", b"M" * 4)
        names.append(f"{prefix}.meta")
    if mtime is not None:
        for n in names:
            set_mtime(loc, n, mtime)


def make_dir(
    loc: Location,
    steps: Sequence[int],
    *,
    base: str = "ckpt",
    in_state: Sequence[int] | None = None,
    times: Sequence[float] | None = None,
    lp: float = 0.0,
    shards: int = 1,
    meta_steps: Sequence[int] = (),
    absolute: bool = False,
    write: bool = True,
) -> StateFile:
    """Steps ``base-N`` with files; the state file names ``in_state`` (default: all) with times."""
    times = list(times) if times is not None else [T0 + i * H for i in range(len(steps))]
    named = list(steps) if in_state is None else list(in_state)
    for s in steps:
        make_step(loc, f"{base}-{s}", shards, meta=s in meta_steps)

    def spell(s: int) -> str:
        return loc.join(f"{base}-{s}") if absolute else f"{base}-{s}"

    paths = [spell(s) for s in steps if s in named]
    stamps = [times[i] for i, s in enumerate(steps) if s in named]
    state = StateFile(paths[-1] if paths else "", paths, stamps, lp)
    if write and paths:
        write_state(loc, state)
    return state


def kept_steps(plan) -> list[int | None]:
    return [d.step for d in plan.decisions if d.action == "keep"]


def deleted_steps(plan) -> list[int | None]:
    return [d.step for d in plan.decisions if d.action == "delete"]


# --------------------------------------------------------------------------------------------
# options and policies


def test_policies_from_options_validates():
    assert policies_from_options() == []
    assert policies_from_options(keep_promoted=True) == []  # promoted alone is no retention policy
    ps = policies_from_options(
        keep_last=3,
        keep_every_hours=2,
        keep_every_steps=1000,
        keep_best=2,
        metric="val_loss",
        mode="max",
        pins=[5, "ckpt-7"],
    )
    assert [type(p).__name__ for p in ps] == [
        "KeepLastN",
        "KeepEveryNHours",
        "KeepEveryNSteps",
        "KeepBestK",
        "KeepPinned",
        "KeepPromoted",
    ]
    assert ps[3].mode == "max" and ps[4].steps == frozenset({5, "ckpt-7"})
    assert not any(
        isinstance(p, KeepPromoted) for p in policies_from_options(keep_last=1, keep_promoted=False)
    )
    for kwargs, match in [
        ({"keep_best": 2}, "metric"),
        ({"keep_last": 2, "metric": "x"}, "without keep_best"),
        ({"keep_last": -1}, ">= 0"),
        ({"keep_last": 2.5}, "whole number"),
        ({"keep_last": True}, "whole number"),
        ({"keep_every_steps": 0}, ">= 1"),
        ({"keep_every_hours": -2}, "positive"),
        ({"keep_every_hours": 0}, "positive"),
        ({"keep_every_hours": float("nan")}, "positive"),
        ({"keep_best": 1, "metric": "m", "mode": "median"}, "min' or 'max"),
        ({"pins": [-3]}, "negative"),
        ({"pins": [None]}, "not a step"),
    ]:
        with pytest.raises(RetentionError, match=match):
            policies_from_options(**kwargs)
    assert issubclass(RetentionError, ValueError)


def test_plan_refuses_without_a_policy(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2])
    for policies in ([], [KeepPromoted()]):
        with pytest.raises(RetentionError, match="no retention policy"):
            plan_retention(loc, policies)
    with pytest.raises(RetentionError, match="more than one keep_every_hours"):
        plan_retention(loc, [KeepEveryNHours(1), KeepEveryNHours(2)])
    with pytest.raises(RetentionError, match="names one step"):
        plan_retention(loc, [KeepLastN(1)], prefix="ckpt-2")


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_keep_last_and_reasons(kind, tmp_path):
    loc = Location.of(tmp_path) if kind == "local" else mem_loc()
    make_dir(loc, [100, 200, 300, 400, 500])
    plan = plan_retention(loc, [KeepLastN(2)])
    assert kept_steps(plan) == [400, 500] and deleted_steps(plan) == [100, 200, 300]
    d500 = plan.decision("ckpt-500")
    assert d500.reasons[0] == "newest committed step" and "keep_last=2: newest" in d500.reasons
    assert plan.decision("ckpt-400").reasons == ["keep_last=2: 2nd newest"]
    assert plan.decision("ckpt-100").reasons == ["not kept by any policy"]
    assert plan.decision("ckpt-100").delete_files == ("ckpt-100.index", "ckpt-100.data-00000-of-00001")
    assert plan.new_state.all_model_checkpoint_paths == ["ckpt-400", "ckpt-500"]
    assert plan.new_state.all_model_checkpoint_timestamps == [T0 + 3 * H, T0 + 4 * H]
    assert plan.state_changed and plan.drop_paths == ["ckpt-100", "ckpt-200", "ckpt-300"]
    # the newest committed step survives even keep_last=0
    assert kept_steps(plan_retention(loc, [KeepLastN(0)])) == [500]
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["counts"] == {"steps": 5, "keep": 2, "delete": 3, "files": 6, "bytes": 120}
    assert d["state_file"]["new"]["all_model_checkpoint_paths"] == ["ckpt-400", "ckpt-500"]
    assert "3 to delete (ckpt-100, ckpt-200, ckpt-300)" in plan.summary()
    assert "state file to be rewritten" in plan.summary()


def test_keep_every_steps_and_pins(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [500, 1000, 1500, 2000, 2500])
    make_step(loc, "ckpt-300")  # an incomplete debris step...
    (tmp_path / "ckpt-300.index").unlink()
    plan = plan_retention(loc, [KeepEveryNSteps(1000), KeepPinned([500, "ckpt-300"])])
    assert kept_steps(plan) == [300, 500, 1000, 2000, 2500]
    assert plan.decision("ckpt-300").reasons == ["pinned"]  # ...held because it is pinned
    assert plan.decision("ckpt-1000").reasons == ["every 1000 steps"]
    assert deleted_steps(plan) == [1500]


def test_keep_best_k_with_unevaluated(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5, 6, 7])
    for s, v in {1: 0.5, 2: 0.2, 3: float("nan"), 4: 0.3, 5: 0.2}.items():
        write_metrics(loc, f"ckpt-{s}", {"val_loss": v, "acc": 1 - v if v == v else 0.0})
    put(loc, "ckpt-6.metrics.json", b"{not json")  # corrupt: unevaluated + a problem
    plan = plan_retention(loc, [KeepBestK(2, "val_loss")])
    assert kept_steps(plan) == [2, 5, 6, 7]
    assert plan.decision("ckpt-5").reasons == [
        "best 2 by val_loss (min): #1, val_loss=0.2"
    ]  # tie: newer wins
    assert plan.decision("ckpt-6").reasons == ["unevaluated: no val_loss metric yet"]
    assert any("ckpt-6.metrics.json" in p and "not valid JSON" in p for p in plan.problems)
    assert plan.decision("ckpt-1").delete_files[-1] == "ckpt-1.metrics.json"  # sidecar goes with it
    assert kept_steps(plan_retention(loc, [KeepBestK(1, "acc", mode="max")])) == [5, 6, 7]
    # unevaluated="newer": only steps newer than the newest evaluated one (5) stay unevaluated-kept
    plan = plan_retention(loc, [KeepBestK(1, "val_loss", unevaluated="newer")])
    assert kept_steps(plan) == [5, 6, 7]
    plan = plan_retention(loc, [KeepBestK(1, "val_loss", unevaluated="drop")])
    assert kept_steps(plan) == [5, 7]


def test_keep_best_k_ranks_by_the_named_evaluator(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4])
    for s, (default, a, b) in {1: (0.1, 0.9, 0.5), 2: (0.9, 0.1, 0.6), 3: (0.8, 0.8, 0.1)}.items():
        write_metrics(loc, f"ckpt-{s}", {"loss": default})
        write_metrics(loc, f"ckpt-{s}", {"loss": a}, evaluator="dag_a")
        write_metrics(loc, f"ckpt-{s}", {"loss": b}, evaluator="dag_b")
    assert kept_steps(plan_retention(loc, [KeepBestK(1, "loss", unevaluated="drop")])) == [1, 4]
    plan = plan_retention(loc, [KeepBestK(1, "loss", unevaluated="drop", evaluator="dag_a")])
    assert kept_steps(plan) == [2, 4]
    assert plan.decision("ckpt-2").reasons == ["best 1 by loss (min): #1, loss=0.1"]
    # a deleted step takes every evaluator's sidecar with it
    assert set(plan.decision("ckpt-1").delete_files) >= {
        "ckpt-1.metrics.json",
        "ckpt-1.metrics~dag_a.json",
        "ckpt-1.metrics~dag_b.json",
    }
    plan = plan_retention(loc, [KeepBestK(1, "loss", evaluator="dag_b")])
    assert kept_steps(plan) == [3, 4]  # 4: no metric of dag_b yet ("keep")
    apply_plan(plan)
    assert sorted(p.name for p in tmp_path.iterdir() if ".metrics" in p.name) == [
        "ckpt-3.metrics.json",
        "ckpt-3.metrics~dag_a.json",
        "ckpt-3.metrics~dag_b.json",
    ]
    with pytest.raises(RetentionError, match="invalid evaluator name"):
        KeepBestK(1, "loss", evaluator="a~b")


def test_keep_unevaluated_holds_pending_steps_up_to_a_bound(tmp_path):
    """Steps 1-6 saved an hour apart; dag_a evaluated 1-3, dag_b 1, 2 and 4. Held: what one of
    them has not evaluated, up to 3.5 h after its save (step 3 is 4 h old: let go, reported)."""
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5, 6])
    for s in (1, 2, 3):
        write_metrics(loc, f"ckpt-{s}", {"loss": 0.1}, evaluator="dag_a")
    for s in (1, 2, 4):
        write_metrics(loc, f"ckpt-{s}", {"loss": 0.1}, evaluator="dag_b")
    policy = KeepUnevaluated(["dag_a", "dag_b"], max_age_s=3.5 * H)
    plan = plan_retention(loc, [KeepLastN(1), policy], now=T0 + 6 * H)
    assert kept_steps(plan) == [4, 5, 6] and deleted_steps(plan) == [1, 2, 3]
    assert plan.decision("ckpt-5").reasons == ["unevaluated by dag_a, dag_b (saved 2h ago, held up to 3.5h)"]
    assert plan.decision("ckpt-4").reasons == ["unevaluated by dag_a (saved 3h ago, held up to 3.5h)"]
    assert any(p.startswith("ckpt-3: not evaluated by dag_b 4h after its save") for p in plan.problems)
    # no bound: step 3 is held too; the default evaluator can be named as None
    assert kept_steps(
        plan_retention(loc, [KeepLastN(1), KeepUnevaluated(["dag_a", "dag_b"], None)], now=T0 + 6 * H)
    ) == [3, 4, 5, 6]
    assert kept_steps(plan_retention(loc, [KeepLastN(1), KeepUnevaluated([None])], now=T0 + 6 * H)) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    d = json.loads(json.dumps(plan.to_dict()))
    assert {"policy": "keep_unevaluated", "evaluators": ["dag_a", "dag_b"], "max_age_s": 3.5 * H} in d[
        "policies"
    ]
    apply_plan(plan)
    assert [s.step for s in discover(loc).steps] == [4, 5, 6]


def test_an_orphaned_evaluator_sidecar_is_deleted_with_the_other_orphans(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [2, 3])
    put(loc, "ckpt-1.metrics~dag_a.json", b"{}")  # its step is gone
    put(loc, "ckpt-1.metrics.json", b"{}")
    plan = plan_retention(loc, [KeepLastN(2)])
    assert sorted((sc.name, sc.role, sc.action) for sc in plan.sidecars) == [
        ("ckpt-1.metrics.json", "metrics", "delete"),
        ("ckpt-1.metrics~dag_a.json", "metrics", "delete"),
    ]
    apply_plan(plan)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("ckpt-1.")]


def test_keep_unevaluated_options():
    ps = policies_from_options(keep_unevaluated=["a", "b", "a"], unevaluated_max_age=60)
    assert ps == [KeepUnevaluated(["a", "b"], 60.0), KeepPromoted()]
    assert policies_from_options(keep_unevaluated="a")[0] == KeepUnevaluated(["a"], 86400.0)
    assert policies_from_options(keep_best=1, metric="m", evaluator="a")[0] == KeepBestK(
        1, "m", "min", "keep", "a"
    )
    for kwargs, match in [
        ({"keep_last": 1, "evaluator": "a"}, "without keep_best"),
        ({"keep_unevaluated": ["a/b"]}, "invalid evaluator name"),
        ({"keep_unevaluated": ["a"], "unevaluated_max_age": 0}, "positive"),
        ({"keep_unevaluated": ["a"], "unevaluated_max_age": float("inf")}, "positive"),
    ]:
        with pytest.raises(RetentionError, match=match):
            policies_from_options(**kwargs)
    with pytest.raises(RetentionError, match="at least one evaluator"):
        KeepUnevaluated([])
    assert [parse_duration(t) for t in ("90", "90s", "30m", "24h", "2d", "1.5h")] == [
        90,
        90,
        1800,
        86400,
        172800,
        5400,
    ]
    with pytest.raises(RetentionError, match="not a duration"):
        parse_duration("soon")


def test_missing_dir_is_its_own_error(tmp_path):
    from airflow_tf_ckpt.core.errors import DirNotFoundError, StorageError

    with pytest.raises(DirNotFoundError, match="directory does not exist"):
        plan_retention(Location.of(tmp_path / "not-yet"), [KeepLastN(1)])
    assert issubclass(DirNotFoundError, StorageError)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError) as err:
        plan_retention(Location.of(tmp_path / "a-file"), [KeepLastN(1)])
    assert not isinstance(err.value, DirNotFoundError)


def test_promotions_are_recorded_and_kept(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5])
    assert promoted_prefixes(loc) == set()
    record_promotion(loc, "ckpt-1", "gs://prod/model", "prod", now=T0)
    record_promotion(loc, "ckpt-2", "gs://prod/model", None, now=T0 + 1)
    # ckpt-2 now holds the destination, but ckpt-1 still holds its alias 'prod' there
    assert promoted_prefixes(loc) == {"ckpt-1", "ckpt-2"}
    record_promotion(loc, "ckpt-3", "gs://prod/model", "prod", now=T0 + 2)
    assert promoted_prefixes(loc) == {"ckpt-3"}  # destination and alias both moved on
    assert promoted_prefixes(loc, include_superseded=True) == {"ckpt-1", "ckpt-2", "ckpt-3"}
    record_promotion(loc, "ckpt-2", "gs://other/model", "canary", now=T0 + 3)
    assert promoted_prefixes(loc) == {"ckpt-2", "ckpt-3"}
    plan = plan_retention(loc, policies_from_options(keep_last=1))
    assert kept_steps(plan) == [2, 3, 5]
    assert plan.decision("ckpt-2").reasons == ["promoted to gs://other/model as 'canary'"]
    assert kept_steps(plan_retention(loc, [KeepLastN(1)])) == [5]  # no KeepPromoted: not kept
    put(loc, "PROMOTIONS.json", b"[[[")
    with pytest.raises(Exception, match="PROMOTIONS.json.*not valid JSON"):
        plan_retention(loc, policies_from_options(keep_last=1))


# --------------------------------------------------------------------------------------------
# guards


def test_guards_lease_quarantine_incomplete_orphans(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5, 6], in_state=[1, 2, 4, 5, 6])
    make_step(loc, "ckpt-7")  # complete, not yet in the state file: a commit in progress
    make_step(loc, "ckpt-8", shards=2)
    (tmp_path / "ckpt-8.data-00001-of-00002").unlink()  # being written
    make_step(loc, "ckpt-0", shards=2)
    (tmp_path / "ckpt-0.data-00000-of-00002").unlink()  # debris, older than the newest
    acquire_lease(loc, "ckpt-2", "eval-1", 3600)
    acquire_lease(loc, "ckpt-1", "old-eval", 10, now=time.time() - 100)  # expired
    quarantine_step(loc, "ckpt-4", "bad crc", {"tensor": "w"})
    plan = plan_retention(loc, [KeepLastN(1)])
    why = {d.prefix: d.reasons for d in plan.decisions}
    assert plan.decision("ckpt-2").action == "keep" and why["ckpt-2"][0].startswith("leased by eval-1 until")
    assert why["ckpt-4"] == ["quarantined"]
    assert why["ckpt-7"][0].startswith("complete but not in the state file, and newer")
    assert why["ckpt-8"][0].startswith("incomplete and newer")
    assert plan.decision("ckpt-0").action == "delete" and "debris" in why["ckpt-0"][0]
    assert plan.decision("ckpt-3").action == "delete"  # orphan older than the newest: deletable
    d1 = plan.decision("ckpt-1")
    assert d1.action == "delete" and lease_name("ckpt-1", "old-eval") in d1.delete_files
    assert deleted_steps(plan) == [0, 1, 3, 5]
    # purge: the quarantined step and its record go
    plan = plan_retention(loc, [KeepLastN(1)], purge_quarantined=True)
    d4 = plan.decision("ckpt-4")
    assert d4.action == "delete" and d4.reasons == ["quarantined; purge requested"]
    assert "ckpt-4.quarantine.json" in d4.delete_files


def test_no_committed_step_means_nothing_is_touched(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3], in_state=[])  # no state file at all
    plan = plan_retention(loc, [KeepLastN(1)])
    assert deleted_steps(plan) == [] and plan.new_state is None and not plan.state_changed
    assert all("no committed step" in d.reasons[0] for d in plan.decisions)


def test_only_the_chosen_base_is_touched(tmp_path):
    loc = Location.of(tmp_path)
    a = make_dir(loc, [1, 2, 3], base="a", write=False)
    b = make_dir(loc, [10, 20, 30], base="b", write=False)
    write_state(
        loc,
        StateFile(
            "b-30",
            a.all_model_checkpoint_paths + b.all_model_checkpoint_paths,
            a.all_model_checkpoint_timestamps + b.all_model_checkpoint_timestamps,
            0.0,
        ),
    )
    put(loc, "b-5.metrics.json", b"{}")  # another job's stray sidecar: not ours
    plan = plan_retention(loc, [KeepLastN(1)], prefix="a")
    assert {d.base for d in plan.decisions} == {"a"} and deleted_steps(plan) == [1, 2]
    assert plan.decision("a-3").reasons[0] == "newest committed step"  # guards are per base
    assert plan.new_state.all_model_checkpoint_paths == ["a-3", "b-10", "b-20", "b-30"]
    assert plan.new_state.model_checkpoint_path == "b-30"
    assert all("/b-" not in p for p in plan.delete_files)
    both = plan_retention(loc, [KeepLastN(1)])
    assert deleted_steps(both) == [1, 2, 10, 20]


@pytest.mark.parametrize("meta_guard", ["file", "step"])
def test_newest_meta_is_protected(tmp_path, meta_guard):
    loc = Location.of(tmp_path)
    make_dir(loc, [100, 200, 300, 400, 500], meta_steps=[100])  # write_meta_graph only on the first save
    plan = plan_retention(loc, [KeepLastN(2)], meta_guard=meta_guard)
    assert plan.protected_meta == {"ckpt": "ckpt-100.meta"}
    d = plan.decision("ckpt-100")
    if meta_guard == "step":
        assert d.action == "keep" and "owns the newest .meta" in d.reasons[0]
    else:
        assert d.action == "delete" and d.kept_files == ("ckpt-100.meta",)
        assert "ckpt-100.meta" not in d.delete_files and "keeps ckpt-100.meta" in d.reasons[1]
        apply_plan(plan)
        assert (tmp_path / "ckpt-100.meta").exists() and not (tmp_path / "ckpt-100.index").exists()
        # the .meta now stands alone; it stays protected, while older lone sidecars are cleaned
        put(loc, "ckpt-50.meta", b"m")
        put(loc, "ckpt-50.metrics.json", b"{}")
        again = plan_retention(loc, [KeepLastN(2)])
        acts = {s.name: s.action for s in again.sidecars}
        assert acts == {"ckpt-100.meta": "keep", "ckpt-50.meta": "delete", "ckpt-50.metrics.json": "delete"}
        apply_plan(again)
        assert (tmp_path / "ckpt-100.meta").exists() and not (tmp_path / "ckpt-50.meta").exists()
    # a newer step with its own .meta takes over the protection
    make_step(loc, "ckpt-600", meta=True)
    st = read_state(loc)
    write_state(
        loc,
        StateFile(
            "ckpt-600",
            st.all_model_checkpoint_paths + ["ckpt-600"],
            st.all_model_checkpoint_timestamps + [T0 + 10 * H],
            0.0,
        ),
    )
    assert plan_retention(loc, [KeepLastN(2)]).protected_meta == {"ckpt": "ckpt-600.meta"}


def test_absolute_paths_keep_their_spelling(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3], absolute=True)
    plan = plan_retention(loc, [KeepLastN(1)])
    assert plan.new_state.all_model_checkpoint_paths == [str(tmp_path / "ckpt-3")]
    assert plan.new_state.model_checkpoint_path == str(tmp_path / "ckpt-3")


# --------------------------------------------------------------------------------------------
# keep_checkpoint_every_n_hours: TF's exact semantics


def tf_manager_reference(
    times: Sequence[float], max_to_keep: int, hours: float, init_clock: float
) -> set[int]:
    """A line-by-line model of ``CheckpointManager.save`` + ``_sweep`` (indices of kept saves)."""
    maybe: OrderedDict[int, float] = OrderedDict()
    lp = init_clock - 1.0
    preserved: set[int] = set()
    for i, t in enumerate(times):
        maybe[i] = t
        while len(maybe) > max_to_keep:
            j, ts = maybe.popitem(last=False)
            if hours and ts - hours * 3600.0 >= lp:
                lp = ts
                preserved.add(j)
    return set(maybe) | preserved


class KeepAllTrainer:
    """``CheckpointManager(max_to_keep=None)`` writing fake steps: it never deletes and rewrites
    the state file from memory on every save (naming steps GC deleted, as TF does)."""

    def __init__(self, loc: Location, clock: float) -> None:
        self.loc = loc
        st = read_state(loc)
        if st is None:
            self.lp = clock - 1.0
            self.maybe: OrderedDict[str, float] = OrderedDict()
        else:
            self.lp = min(st.last_preserved_timestamp, clock)
            stamps = st.all_model_checkpoint_timestamps or [self.lp] * len(st.all_model_checkpoint_paths)
            self.maybe = OrderedDict(
                (p, min(t, clock))
                for p, t in zip(st.all_model_checkpoint_paths, stamps, strict=True)
                if min(t, clock) > self.lp
            )

    def save(self, n: int, t: float) -> None:
        p = f"ckpt-{n}"
        make_step(self.loc, p, mtime=t - 0.5)  # files are written just before TF takes the time
        self.maybe[p] = t
        write_state(self.loc, StateFile(p, list(self.maybe), list(self.maybe.values()), self.lp))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.sampled_from([0.05, 0.2, 0.5, 0.9, 1.0, 1.3, 2.0, 2.5, 4.0]), min_size=1, max_size=24),
    n=st.integers(1, 5),
    hours=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    gc_every=st.integers(1, 8),
    restart=st.booleans(),
)
def test_every_n_hours_matches_tf_model(gaps, n, hours, gc_every, restart):
    """Our GC on a keep-everything trainer ends with exactly the steps TF's own sweep keeps,
    whether it runs once or every few saves, with or without trainer restarts in between."""
    times = list(T0 + 3600.0 * x for x in _cumsum(gaps))
    want = {i + 1 for i in tf_manager_reference(times, n, hours, T0)}
    loc = mem_loc()
    trainer = KeepAllTrainer(loc, T0)
    policies = [KeepLastN(n), KeepEveryNHours(hours)]
    for i, t in enumerate(times, 1):
        trainer.save(i, t)
        if i % gc_every == 0 or i == len(times):
            apply_plan(plan_retention(loc, policies, now=t + 1))
            if restart:
                trainer = KeepAllTrainer(loc, t + 1)
    assert {s.step for s in discover(loc).steps if s.files} == want


def _cumsum(xs: Sequence[float]) -> list[float]:
    out, acc = [], 0.0
    for x in xs:
        acc += x
        out.append(acc)
    return out


def test_every_n_hours_keeps_tf_preserved_orphans(tmp_path):
    """A TF trainer with its own keep_checkpoint_every_n_hours drops preserved steps from the state
    file; they are orphans whose mtime is at or before last_preserved_timestamp: kept."""
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5, 6], in_state=[5, 6], times=[T0 + i * H for i in range(6)], lp=T0 + 2 * H)
    for i, s in enumerate([1, 2, 3, 4, 5, 6]):
        for f in tmp_path.glob(f"ckpt-{s}.*"):
            os.utime(f, (T0 + i * H - 0.5, T0 + i * H - 0.5))
    plan = plan_retention(loc, [KeepLastN(2), KeepEveryNHours(1.5)], now=T0 + 10 * H)
    # 4 too: TF dropped it from the state file without deleting it, and never judges it again
    assert kept_steps(plan) == [1, 2, 3, 4, 5, 6] and deleted_steps(plan) == []
    assert "already preserved by TF" in plan.decision("ckpt-3").reasons[0]
    # without the hours policy they would go, and the plan says so
    plan = plan_retention(loc, [KeepLastN(2)], now=T0 + 10 * H)
    assert deleted_steps(plan) == [1, 2, 3, 4]
    assert any("keep_checkpoint_every_n_hours" in p for p in plan.problems)


def test_every_n_hours_lp_stops_at_unsettled_step(tmp_path):
    loc = Location.of(tmp_path)
    make_dir(loc, [1, 2, 3, 4, 5], times=[T0 + x * H for x in (1, 2, 3.5, 4, 6)], lp=T0)
    plan = plan_retention(loc, [KeepLastN(3), KeepEveryNHours(1.0)], now=T0 + 7 * H)
    # chain: 1 (1h after T0), 2, 3, 5; 4 is held only by keep_last: the timestamp stops before it
    assert deleted_steps(plan) == []
    assert plan.last_preserved_after == T0 + 3.5 * H
    # with no recorded last_preserved_timestamp (a v1 Saver) the chain starts at the oldest step
    make_dir(loc, [1, 2, 3, 4, 5], times=[T0 + x * H for x in (1, 2, 3.5, 4, 6)], lp=0.0)
    plan = plan_retention(loc, [KeepLastN(1), KeepEveryNHours(2.0)], now=T0 + 7 * H)
    assert kept_steps(plan) == [1, 3, 5] and plan.last_preserved_after == T0 + 6 * H
    assert "oldest step" in plan.decision("ckpt-1").reasons[0]


# --------------------------------------------------------------------------------------------
# properties


@st.composite
def dirs(draw):
    n = draw(st.integers(1, 14))
    steps = sorted(draw(st.sets(st.integers(0, 60), min_size=n, max_size=n)))
    named = [s for s in steps if draw(st.booleans()) or s == steps[-1]]
    incomplete = [s for s in steps if draw(st.integers(0, 6)) == 0]
    return steps, named, incomplete


def _build_random(loc: Location, steps: list[int], named: list[int], incomplete: list[int]) -> None:
    make_dir(loc, steps, in_state=named)
    for s in incomplete:
        if s not in named or s != named[-1]:
            loc.fs.rm_file(loc.join(f"ckpt-{s}.data-00000-of-00001"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=dirs(),
    n=st.integers(0, 5),
    every=st.sampled_from([None, 2, 5]),
    pins=st.sets(st.integers(0, 60)),
    lease=st.integers(0, 60),
    quarantine=st.integers(0, 60),
)
def test_plan_properties_and_convergence(d, n, every, pins, lease, quarantine):
    steps, named, incomplete = d
    loc = mem_loc()
    _build_random(loc, steps, named, incomplete)
    if lease in steps:
        acquire_lease(loc, f"ckpt-{lease}", "ev", 3600)
    if quarantine in steps:
        quarantine_step(loc, f"ckpt-{quarantine}", "corrupt")
    cdir = discover(loc)
    committed = [s for s in cdir.steps if s.committed]
    policies = [KeepLastN(n), KeepPinned(pins)] + ([KeepEveryNSteps(every)] if every else [])
    plan = plan_retention(cdir, policies)
    act = {dd.prefix: dd.action for dd in plan.decisions}
    if committed:
        assert act[committed[-1].prefix] == "keep"  # the newest committed step is never deleted
        if cdir.latest() is not None:
            assert act[cdir.latest().prefix] == "keep"
    for s in cdir.steps:
        if s.step in pins or s.quarantined or s.leases:
            assert act[s.prefix] == "keep", (s.prefix, plan.decision(s.prefix).reasons)
    if committed:
        newest = committed[-1].step
        for s in cdir.steps:  # nothing newer than the newest committed step is touched
            if s.step > newest:
                assert act[s.prefix] == "keep"
    apply_plan(plan)
    again = plan_retention(loc, policies)
    assert deleted_steps(again) == [] and not [s for s in again.sidecars if s.action == "delete"]
    assert not again.state_changed
    st_ = read_state(loc)
    if st_ is not None:  # the state file names only steps that exist
        have = {s.prefix for s in discover(loc).steps if s.files}
        assert set(st_.all_model_checkpoint_paths) <= have


@settings(max_examples=60, deadline=None)
@given(steps=st.sets(st.integers(0, 10_000), min_size=1, max_size=30), n=st.integers(0, 40))
def test_keep_last_keeps_exactly_n_committed(steps, n):
    """With nothing else holding a step, keep_last=N keeps exactly max(N, 1) committed steps."""
    cdir = synthetic_dir(sorted(steps))
    plan = plan_retention(cdir, [KeepLastN(n)])
    kept = [d for d in plan.decisions if d.action == "keep"]
    assert len(kept) == min(max(n, 1), len(steps))
    assert [d.step for d in kept] == sorted(steps)[-len(kept) :]


# --------------------------------------------------------------------------------------------
# speed: 100,000 steps planned in well under a second


def synthetic_dir(steps: Sequence[int], base: str = "ckpt") -> CheckpointDir:
    """A discovered-looking dir without I/O (memory location, nothing on it)."""
    loc = Location.of("memory://synthetic/run")
    out, listing, paths, stamps = [], {}, [], []
    for i, s in enumerate(steps):
        p = f"{base}-{s}"
        files = [
            FileInfo(f"{p}.index", loc.join(f"{p}.index"), 10, T0 + i),
            FileInfo(f"{p}.data-00000-of-00001", loc.join(f"{p}.data-00000-of-00001"), 100, T0 + i),
        ]
        for f in files:
            listing[f.name] = f
        out.append(
            CheckpointStep(
                prefix=p,
                base=base,
                step=s,
                format="v2",
                status=StepStatus.COMMITTED,
                files=files,
                num_shards=1,
                timestamp=T0 + i * 60.0,
                timestamp_source="state",
                in_state=True,
                state_path=p,
                latest=(i == len(steps) - 1),
            )
        )
        paths.append(p)
        stamps.append(T0 + i * 60.0)
    from airflow_tf_ckpt.core.formats.state import ResolvedPath

    state = StateFile(paths[-1], paths, stamps, T0 - 1)
    resolved = [ResolvedPath(p, p, "relative") for p in paths]
    return CheckpointDir(location=loc, state=state, steps=out, resolved=resolved, listing=listing)


def _calibration_s() -> float:
    """CPU seconds of a fixed pure-Python workload: how slow (or busy) this machine is."""
    best = math.inf
    for _ in range(3):
        t = time.process_time()
        sum(range(10**7))
        best = min(best, time.process_time() - t)
    return best


# ``sum(range(10**7))`` takes about this much CPU time on a current laptop/CI core (CPython 3.11).
REFERENCE_CALIBRATION_S = 0.12


def test_planning_100k_steps_is_fast():
    """100k steps planned in < 1 s of CPU on a reference core. The box the suite runs on may be
    slower or shared, so the budget scales with a calibration loop measured alongside."""
    cdir = synthetic_dir(range(100_000))
    policies = [KeepLastN(5), KeepEveryNHours(2), KeepEveryNSteps(1000), KeepPinned([17]), KeepPromoted()]
    best = math.inf
    for _ in range(3):
        t = time.process_time()
        plan = plan_retention(cdir, policies, now=T0 + 1e7)
        best = min(best, time.process_time() - t)
    assert len(plan.decisions) == 100_000
    kept = kept_steps(plan)
    assert 17 in kept and kept[-5:] == list(range(99_995, 100_000)) and 99_000 in kept
    assert len(plan.new_state.all_model_checkpoint_paths) == len(kept)
    assert len(plan.delete_files) == 2 * (100_000 - len(kept))
    slowdown = max(1.0, _calibration_s() / REFERENCE_CALIBRATION_S)
    assert best < 1.0 * slowdown, (
        f"planning 100k steps took {best:.2f}s CPU (machine slowdown {slowdown:.1f}x)"
    )


# --------------------------------------------------------------------------------------------
# gs:// (emulator)


@pytest.mark.gcs
def test_plan_on_gcs(gcs_bucket):
    loc = Location.of(f"gs://{gcs_bucket}/run")
    make_dir(loc, [1, 2, 3, 4])
    write_metrics(loc, "ckpt-1", {"loss": 0.1})
    write_metrics(loc, "ckpt-2", {"loss": 0.9})
    acquire_lease(loc, "ckpt-3", "ev", 600)
    plan = plan_retention(loc, [KeepLastN(1), KeepBestK(1, "loss")])
    assert kept_steps(plan) == [1, 3, 4] and deleted_steps(plan) == [2]
    assert plan.delete_files == [
        f"{gcs_bucket}/run/ckpt-2.index",
        f"{gcs_bucket}/run/ckpt-2.data-00000-of-00001",
        f"{gcs_bucket}/run/ckpt-2.metrics.json",
    ]
    res = apply_plan(plan)
    assert res.deleted_steps == ["ckpt-2"]
    assert kept_steps(plan_retention(loc, [KeepLastN(1), KeepBestK(1, "loss")])) == [1, 3, 4]


# --------------------------------------------------------------------------------------------
# real TensorFlow


TIMELINE_SRC = r"""
import os
from tensorflow.python.checkpoint import checkpoint_management as cm
from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepEveryNHours, KeepLastN

clock = [0.0]


class _FakeTime:  # CheckpointManager reads time.time() through its module's `time`
    def time(self):
        return clock[0]


cm.time = _FakeTime()
a = args[0]
out = {}
for name, (tf_keep, tf_hours, gc_every, restart) in a["scenarios"].items():
    d = os.path.join(a["root"], name)
    os.makedirs(d)
    v = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=v)
    clock[0] = a["t0"]
    mgr = tf.train.CheckpointManager(ckpt, d, max_to_keep=tf_keep, keep_checkpoint_every_n_hours=tf_hours)
    deleted = []
    for i, t in enumerate(a["times"], 1):
        clock[0] = t
        v.assign(float(i))
        base = os.path.basename(mgr.save(checkpoint_number=i))
        for f in os.listdir(d):  # file mtimes follow the fake clock, as they would for real
            if f.startswith(base + "."):
                os.utime(os.path.join(d, f), (t - 0.5, t - 0.5))
        if gc_every and (i % gc_every == 0 or i == len(a["times"])):
            res = apply_plan(plan_retention(d, [KeepLastN(a["n"]), KeepEveryNHours(a["h"])], now=t))
            deleted += res.deleted_steps
            if restart:
                mgr = tf.train.CheckpointManager(ckpt, d, max_to_keep=tf_keep,
                                                 keep_checkpoint_every_n_hours=tf_hours)
    kept = sorted(int(f[5:-6]) for f in os.listdir(d) if f.startswith("ckpt-") and f.endswith(".index"))
    out[name] = {"kept": kept, "deleted": deleted}
result = out
"""


@pytest.mark.tf
def test_every_n_hours_matches_real_tf_checkpoint_manager(tf_run, tmp_path):
    """TF's CheckpointManager(max_to_keep=4, keep_checkpoint_every_n_hours=2) under a controlled
    clock is the reference; our GC over a keep-everything manager must end with the same steps,
    run once, every 3 saves, with or without restarts, and on top of TF's own retention."""
    rng = random.Random(7)
    t0 = time.time() - 200 * H
    times, t = [], t0
    for _ in range(30):
        t += rng.choice([0.1, 0.3, 0.5, 0.9, 1.2, 1.7, 2.1, 2.6, 3.3]) * H
        times.append(t)
    scenarios = {
        "tf_reference": [4, 2, 0, False],
        "gc_once": [None, None, 30, False],
        "gc_every3": [None, None, 3, False],
        "gc_every3_restart": [None, None, 3, True],
        "tf_plus_gc": [4, 2, 3, True],
        "tf_plus_gc_no_restart": [4, 2, 5, False],
    }
    out = tf_run(
        TIMELINE_SRC,
        {"times": times, "n": 4, "h": 2, "root": str(tmp_path), "t0": t0, "scenarios": scenarios},
    )
    want = out["tf_reference"]["kept"]
    assert want == sorted({i + 1 for i in tf_manager_reference(times, 4, 2, t0)})  # the model is exact
    assert len(want) > 4  # the hours rule did preserve some steps
    for name in scenarios:
        assert out[name]["kept"] == want, name
    assert out["tf_plus_gc"]["deleted"] == [] and out["tf_plus_gc_no_restart"]["deleted"] == []


@pytest.mark.tf
def test_tf_restores_every_kept_step_after_gc(copy_variant, tf_checkpoints):
    from tests.fixtures.tf_checkpoints import tf_batch

    d2 = copy_variant("tf2_manager")  # ckpt-3..5, relative paths
    d1 = copy_variant("tf1_saver")  # my_test_model-300..600, ABSOLUTE paths to the original dir
    r2 = apply_plan(plan_retention(d2, [KeepLastN(2)]))
    r1 = apply_plan(plan_retention(d1, [KeepLastN(2)]))
    assert r2.deleted_steps == ["ckpt-3"] and r1.deleted_steps == ["my_test_model-300", "my_test_model-400"]
    st1 = read_state(Location.of(d1))
    orig = tf_checkpoints["tf1_saver"].dir
    assert st1.all_model_checkpoint_paths == [
        str(orig / "my_test_model-500"),
        str(orig / "my_test_model-600"),
    ]
    kept = [d2 / "ckpt-4", d2 / "ckpt-5", d1 / "my_test_model-500", d1 / "my_test_model-600"]
    reqs = [("read_all", [str(p)]) for p in kept] + [
        ("latest_checkpoint", [str(d2)]),
        ("latest_checkpoint", [str(d1)]),
    ]
    res = tf_batch(reqs)
    assert all(r["ok"] and r["count"] > 0 for r in res[:4]), res[:4]
    assert Path(res[4]).name == "ckpt-5" and Path(res[5]).name == "my_test_model-600"
    assert not list(d2.glob("ckpt-3.*")) and not list(d1.glob("my_test_model-400.*"))


META_SRC = r"""
import os
v1 = tf.compat.v1
d = args[0]
g = tf.Graph()
with g.as_default():
    w = v1.get_variable("w", shape=[3], initializer=v1.zeros_initializer())
    step = v1.train.get_or_create_global_step()
    bump = v1.assign_add(w, tf.ones_like(w))
    saver = v1.train.Saver(max_to_keep=None)
    with v1.Session(graph=g) as sess:
        sess.run(v1.global_variables_initializer())
        for i, s in enumerate([100, 200, 300, 400]):
            sess.run(bump)
            sess.run(v1.assign(step, s))
            saver.save(sess, os.path.join(d, "model"), global_step=s, write_meta_graph=(i == 0))
result = sorted(os.listdir(d))
"""

IMPORT_META_SRC = r"""
v1 = tf.compat.v1
meta, d = args
g = tf.Graph()
with g.as_default():
    saver = v1.train.import_meta_graph(meta)
    with v1.Session(graph=g) as sess:
        latest = tf.train.latest_checkpoint(d)
        saver.restore(sess, latest)
        w = [v for v in v1.global_variables() if v.op.name == "w"][0]
        result = {"latest": latest, "w": sess.run(w).tolist()}
"""


@pytest.mark.tf
def test_newest_meta_survives_for_import_meta_graph(tf_run, tmp_path):
    """The seed's trap: write_meta_graph=False after the first save. GC deletes the first step's
    data but keeps its .meta, so import_meta_graph + restore(latest) still works."""
    d = tmp_path / "run"
    d.mkdir()
    files = tf_run(META_SRC, str(d))
    assert [f for f in files if f.endswith(".meta")] == ["model-100.meta"]
    plan = plan_retention(d, [KeepLastN(2)])
    assert deleted_steps(plan) == [100, 200] and plan.protected_meta == {"model": "model-100.meta"}
    apply_plan(plan)
    assert sorted(p.name for p in d.glob("model-100*")) == ["model-100.meta"]
    out = tf_run(IMPORT_META_SRC, str(d / "model-100.meta"), str(d))
    assert Path(out["latest"]).name == "model-400" and out["w"] == [4.0, 4.0, 4.0]


# --------------------------------------------------------------------------------------------
# the operator's dry_run


@pytest.mark.airflow
def test_retention_operator_dry_run_does_not_shadow_base_operator_dry_run(tmp_path) -> None:
    """``dry_run=`` is still the constructor argument (and a template field, as ``plan_only``),
    but ``op.dry_run`` stays ``BaseOperator.dry_run()``: before, the bool shadowed the method."""
    pytest.importorskip("airflow.sdk")
    from airflow_tf_ckpt.operators.retention import CheckpointRetentionOperator

    op = CheckpointRetentionOperator(task_id="gc", ckpt_dir=str(tmp_path), keep_last=1, dry_run=True)
    assert op.plan_only is True and "plan_only" in op.template_fields
    assert callable(op.dry_run) and "dry_run" not in op.template_fields
    make_dir(Location.of(tmp_path), range(1, 4))
    out = op.execute({})
    assert out["dry_run"] is True and out["deleted"] == 2 and sorted(out["deleted_steps"]) == [1, 2]
    assert (tmp_path / "ckpt-1.index").exists()  # a dry run deletes nothing
    templated = CheckpointRetentionOperator(
        task_id="gc2", ckpt_dir=str(tmp_path), keep_last=1, dry_run="{{ x }}"
    )
    templated.plan_only = "false"  # what a rendered template gives
    assert templated.execute({})["deleted"] == 2 and not (tmp_path / "ckpt-1.index").exists()
