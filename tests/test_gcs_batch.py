"""core.gcs on the emulator: batch deletes (chunking, odd names, already-gone objects, faults) and
the server-filtered listing GC re-checks a dir with."""

from __future__ import annotations

import dataclasses

import pytest

from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepLastN
from airflow_tf_ckpt.core.storage import gcs
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.storage.safety import Deleter
from tests.faulty_proxy import FaultyProxy
from tests.test_retention import make_dir

pytestmark = pytest.mark.gcs

ODD = [
    "ckpt-1.index",
    "with space.data-00000-of-00001",
    "hash#and%percent",
    "plus+amp&eq=",
    "ünïcödé-ß",
    "quote'dq\"",
    "semi;colon,comma",
]


def fill(fs, bucket: str, names: list[str]) -> list[str]:
    paths = [f"{bucket}/run/{n}" for n in names]
    for p in paths:
        fs.pipe_file(p, b"x")
    return paths


def test_batch_delete_chunks_and_reports_per_object(gcs_emulator, gcs_bucket):
    fs = gcs_emulator.fs()
    names = [f"obj-{i:04d}" for i in range(230)] + ODD  # three batch requests
    paths = fill(fs, gcs_bucket, names)
    fs.pipe_file(f"{gcs_bucket}/run/keep-me", b"k")
    gone = [f"{gcs_bucket}/run/never-existed-{i}" for i in range(3)]
    out = gcs.batch_delete(fs, paths[:5] + gone + paths[5:])
    assert [type(r) for r in out[5:8]] == [FileNotFoundError] * 3
    assert all(r is None for r in out[:5] + out[8:]), [r for r in out if r is not None][:3]
    assert fs.ls(f"{gcs_bucket}/run", refresh=True) == [f"{gcs_bucket}/run/keep-me"]
    assert gcs.batch_delete(fs, []) == []


def test_batch_delete_retries_through_503s_and_resets(gcs_emulator, gcs_bucket):
    """Every batch request fails once (503, reset before, or reset AFTER the server deleted): the
    retries finish the job, and an object deleted by a request whose answer was lost is reported
    as already gone, not as an error."""
    fs = gcs_emulator.fs()
    paths = fill(fs, gcs_bucket, [f"obj-{i:03d}" for i in range(300)])
    with FaultyProxy(gcs_emulator.url, seed=3, rate=0.0) as proxy:
        proxy.targets = [
            ("503", "POST", "obj-000"),
            ("reset", "POST", "obj-100"),
            ("reset_after", "POST", "obj-200"),
        ]
        pfs = type(fs)(endpoint_url=proxy.url, token="anon", project="test")  # noqa: S106 - the emulator
        out = gcs.batch_delete(pfs, paths)
        assert proxy.stats["503"] == proxy.stats["reset"] == proxy.stats["reset_after"] == 1, proxy.stats
    assert not any(isinstance(r, OSError) and not isinstance(r, FileNotFoundError) for r in out), out
    missing = [p for p, r in zip(paths, out, strict=True) if isinstance(r, FileNotFoundError)]
    assert missing and all(p.split("-")[-1] >= "200" for p in missing)  # only the reset_after batch
    fs.invalidate_cache()
    assert fs.find(f"{gcs_bucket}/run") == []


def test_deleter_refuses_before_any_request(gcs_bucket, gcs_emulator):
    fs = gcs_emulator.fs()
    fill(fs, gcs_bucket, ["a.index", "b.index"])
    loc = Location.of(f"gs://{gcs_bucket}/run")
    with Deleter(loc) as d:
        deleted, missing, refused = d.delete(
            [loc.join("a.index"), f"{gcs_bucket}/other/b.index", loc.join("x*.index"), loc.join("gone.index")]
        )
    assert deleted == [loc.display("a.index")] and missing == [loc.display("gone.index")]
    assert sorted(r.reason.split(" ")[0] for r in refused) == ["name", "outside"]
    assert fs.exists(f"{gcs_bucket}/run/b.index")


def test_list_matching_keeps_only_what_the_predicate_accepts(gcs_emulator, gcs_bucket):
    fs = gcs_emulator.fs()
    fill(
        fs,
        gcs_bucket,
        ["ckpt-1.index", "ckpt-1.lease-ev@1", "odd{,}[x].lease-a", "checkpoint", "sub/ckpt-2.lease-x"],
    )
    fs.pipe_file(f"{gcs_bucket}/runx.lease-y", b"x")  # a sibling dir's prefix, not ours
    loc = Location.of(f"gs://{gcs_bucket}/run")
    got = gcs.list_matching(
        loc, ["*.lease-*", "checkpoint"], keep=lambda n: ".lease-" in n or n == "checkpoint"
    )
    assert sorted(got) == ["checkpoint", "ckpt-1.lease-ev@1", "odd{,}[x].lease-a"]
    assert got["checkpoint"].size == 1 and got["checkpoint"].path == f"{gcs_bucket}/run/checkpoint"
    assert got["checkpoint"].mtime is not None


def test_glob_escape():
    assert gcs.glob_escape("a*b?c[d]{e,f}\\g") == "a\\*b\\?c\\[d\\]\\{e\\,f\\}\\\\g"
    assert gcs.glob_escape("checkpoint") == "checkpoint"


def test_gc_on_gcs_sends_batches_and_one_filtered_relisting(gcs_emulator, gcs_bucket):
    """The request shape GC promises on gs://: DELETEs in batch requests of up to 100, and the
    re-check lists the dir once more (not every page of every step again)."""
    loc = Location.of(f"gs://{gcs_bucket}/run")
    make_dir(loc, list(range(1, 131)))  # 129 doomed steps: 258 files
    plan = plan_retention(loc, [KeepLastN(1)])
    with FaultyProxy(gcs_emulator.url, rate=0.0) as proxy:
        ploc = Location.of(f"gs://{gcs_bucket}/run", storage_options={"endpoint_url": proxy.url})
        res = apply_plan(dataclasses.replace(plan, location=ploc))
        seen = list(proxy.requests)
    assert res.ok and len(res.deleted_steps) == 129
    batches = [r for r in seen if r[0] == "POST" and "/batch/storage/v1" in r[1]]
    # dir listings; gcsfs's info() of one object also probes "is it a dir?" with a one-result
    # listing of PATH/ (maxResults=1): that is a file lookup, not a re-listing of the steps
    lists = [
        r
        for r in seen
        if r[0] == "GET" and r[1].split("?")[0].endswith("/o") and "maxResults=1&" not in r[1] + "&"
    ]
    assert len(batches) == 3, seen  # 100 + 100 + 58
    assert len(lists) == 1 and "matchGlob=" in lists[0][1], lists
    # the only single DELETE clears GC's intent file
    # single DELETEs: the intent, then the run's GC lock (released only if still ours: a precondition)
    singles = [r[1].rsplit("%2F", 1)[-1].split("?")[0] for r in seen if r[0] == "DELETE"]
    assert singles == ["ckpt.gc-intent.json", "tf-ckpt.gc-lock.json"]
