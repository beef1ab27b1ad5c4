"""Discovery's fast paths against its general code, and the local listing against fsspec's.

discover() takes fast paths for what a 100k-step dir is made of (prefixes with exactly an
``.index`` and a ``.data-00000-of-00001``, state-file paths that are plain names, a local listing
from one ``os.scandir``). ``discover(..., fast_paths=False)`` turns them off; whatever the dir holds, the
two must give the same CheckpointDir.
"""

from __future__ import annotations

import os
import posixpath
import uuid

import fsspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_tf_ckpt.core.formats.state import StateFile, format_state
from airflow_tf_ckpt.core.steps import discovery
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import FileInfo, Location, mtime_of

PREFIXES = [
    "ckpt-1",
    "ckpt-2",
    "ckpt-3",
    "ckpt-01",
    "ckpt-10",
    "model.ckpt-3",
    "model.ckpt-12",
    "ckpt",
    "a-b-7",
    "x-" + "9" * 19,
    "y-" + "8" * 19,
    "z-" + "9" * 18,
    "ckpt-\u0663",
    "ckpt-5-",
    "-5",
    "",
]
SUFFIXES = [
    ".index",
    ".data-00000-of-00001",
    ".data-00000-of-00001",
    ".index",
    ".data-00000-of-00002",
    ".data-00001-of-00002",
    ".meta",
    ".metrics.json",
    ".lease-bob",
    ".lease-amy",
    ".quarantine.json",
    "",
    "-00000-of-00002",
    "-00001-of-00002",
    ".ckpt",
    ".data-00000-of-00001.index",
]
EXTRA = ["PROMOTIONS.json", "junk", "notes.txt"]
RAW_ODD = [
    "/elsewhere/run/ckpt-2",
    "sub/ckpt-1",
    "..",
    ".",
    "",
    "gs://other/run/ckpt-3",
    "model.ckpt-7-?????-of-00002",
    "ckpt-9",
    "x\x00y",
]


@st.composite
def _dir(draw) -> tuple[dict[str, tuple[bool, bool]], StateFile | None]:
    """A dir: ``{name: (is_dir, is_link)}``, and a state file (or none)."""
    pairs = draw(st.lists(st.tuples(st.sampled_from(PREFIXES), st.sampled_from(SUFFIXES)), max_size=25))
    names = {p + s: (False, False) for p, s in pairs if p + s}
    names.update((n, (False, False)) for n in draw(st.lists(st.sampled_from(EXTRA), max_size=2)))
    for n in draw(st.lists(st.sampled_from(sorted(names) or ["d"]), max_size=3)):
        names[n] = draw(st.sampled_from([(True, False), (False, True), (True, True)]))
    if not draw(st.integers(0, 4)):
        return names, None
    raws = draw(st.lists(st.sampled_from(PREFIXES + RAW_ODD), max_size=10))
    stamps = [float(i) for i in range(len(raws))] if draw(st.booleans()) else []
    # never empty: TF's get_checkpoint_state rejects such a file, and so does parse_state
    latest = draw(st.sampled_from([r for r in raws if r] or ["ckpt-1"]))
    return names, StateFile(latest, raws, stamps, draw(st.sampled_from([0.0, 2.5])))


def _both_ways(loc: Location, **kw) -> tuple[discovery.CheckpointDir, discovery.CheckpointDir]:
    return discover(loc, **kw), discover(loc, fast_paths=False, **kw)


def _same(fast: discovery.CheckpointDir, slow: discovery.CheckpointDir) -> None:
    assert fast.steps == slow.steps
    assert fast.resolved == slow.resolved
    assert fast.problems == slow.problems
    assert fast.listing == slow.listing
    assert fast.state == slow.state


def _pairs(*prefixes: str) -> dict[str, tuple[bool, bool]]:
    return {p + s: (False, False) for p in prefixes for s in (".index", ".data-00000-of-00001")}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dir())
@example((_pairs("x-" + "9" * 19), None))  # one base, but the step overflows int64
@example((_pairs("x-" + "9" * 19, "x-" + "9" * 20), None))
@example((_pairs("ckpt-1", "ckpt-01", "ckpt-2"), StateFile("ckpt-2", ["ckpt-01", "ckpt-2"], [1.0, 2.0])))
@example((_pairs("ckpt-3", "ckpt-1", "ckpt-2", "ckpt"), StateFile("ckpt-3", ["ckpt-3", "ckpt-9"])))
@example((_pairs("ckpt-\u0663", "ckpt-4"), StateFile("ckpt-4", ["ckpt-4", "/abs/ckpt-\u0663"])))
def test_fast_path_is_the_general_one_on_any_listing(d) -> None:
    names, state = d
    loc = Location.of(f"memory://fast-{uuid.uuid4().hex[:10]}/run")
    listing = {
        n: FileInfo(n, loc.join(n), len(n), 1000.0 + len(n), is_dir, is_link)
        for n, (is_dir, is_link) in names.items()
    }
    if state is not None:
        loc.write_atomic("checkpoint", format_state(state).encode())
        listing["checkpoint"] = FileInfo("checkpoint", loc.join("checkpoint"), 1, 1.0)
    try:
        _same(*_both_ways(loc, listing=listing))
        _same(*_both_ways(loc, listing=listing, prefix="ckpt"))
    finally:
        loc.fs.rm(loc.path, recursive=True) if loc.fs.exists(loc.path) else None


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_dir())
def test_fast_path_is_the_general_one_on_local_disk(tmp_path_factory, d) -> None:
    names, state = d
    root = tmp_path_factory.mktemp("fast")
    (root / "target").mkdir()
    for n, (is_dir, is_link) in names.items():
        if "\x00" in n or "/" in n:
            continue
        p = root / n
        if is_link:
            os.symlink("target" if is_dir else "missing-target", p)
        elif is_dir:
            p.mkdir()
        else:
            p.write_bytes(b"x" * len(n))
    if state is not None and "\x00" not in "".join(state.all_model_checkpoint_paths):
        (root / "checkpoint").write_text(format_state(state))
    loc = Location.of(str(root))
    fast = discover(loc)
    assert fast.listing == loc.listdir()
    assert fast.regular_files_only is not any(i.is_dir or i.is_link for i in fast.listing.values())
    # a listing's order is the store's (scandir's here), and a few things follow it (the files
    # of shard 0 under two shard counts, the order of overflow problems): same listing, same dir
    _same(fast, discover(loc, listing=fast.listing, fast_paths=False))


def _fsspec_listing(loc: Location) -> dict[str, FileInfo]:
    """What Location.listdir() gave before it scanned local dirs itself (fsspec's ls)."""
    out = {}
    for info in loc.fs.ls(loc.path, detail=True):
        full = info["name"].rstrip("/")
        name = posixpath.basename(full)
        out[name] = FileInfo(
            name=name,
            path=full,
            size=int(info.get("size") or 0),
            mtime=mtime_of(info),
            is_dir=info.get("type") == "directory",
            is_link=bool(info.get("islink")),
        )
    return out


def test_local_listing_is_what_fsspec_says(tmp_path) -> None:
    (tmp_path / "a.index").write_bytes(b"12345")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"1")
    os.symlink("a.index", tmp_path / "link-to-file")
    os.symlink("sub", tmp_path / "link-to-dir")
    os.symlink("nowhere", tmp_path / "broken-link")
    os.mkfifo(tmp_path / "fifo")
    loc = Location.of(str(tmp_path))
    ours = loc.listdir()
    assert ours == _fsspec_listing(loc)
    assert all(type(i) is FileInfo for i in ours.values())
    assert ours["link-to-file"].size == 5 and ours["broken-link"].size == 0


def test_lazy_sizes_and_mtimes(tmp_path) -> None:
    import copy
    import pickle

    (tmp_path / "f").write_bytes(b"123")
    os.utime(tmp_path / "f", (1000.0, 2000.0))
    info = Location.of(str(tmp_path)).listdir()["f"]
    assert "size" not in vars(info)  # nothing read yet
    assert (info.size, info.mtime) == (3, 2000.0)
    fresh = Location.of(str(tmp_path)).listdir()["f"]
    assert pickle.loads(pickle.dumps(fresh)) == info == copy.deepcopy(fresh)
    gone = Location.of(str(tmp_path)).listdir()["f"]
    (tmp_path / "f").unlink()
    assert (gone.size, gone.mtime) == (0, None)  # a file gone by then
    with pytest.raises(AttributeError):
        info.no_such_field  # noqa: B018


def test_listing_errors_are_storage_errors(tmp_path) -> None:
    from airflow_tf_ckpt.core.errors import StorageError

    (tmp_path / "file").write_bytes(b"")
    for path, what in (
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "file", "it is a file"),
        (tmp_path / "file" / "sub", "not a directory"),
    ):
        with pytest.raises(StorageError, match=what):
            Location.of(str(path)).listdir()
        with pytest.raises(StorageError, match=what):
            discover(str(path))


def test_memory_fs_is_left_alone() -> None:
    fs = fsspec.filesystem("memory")
    assert not Location.of("memory://x/y").local and fs is not None


def test_plan_sizes_are_read_lazily_and_survive_gc(tmp_path) -> None:
    """A plan's sizes come from lazily stat'ed local files: they must be read before GC deletes
    them, so the report after GC still says how many bytes went."""
    import pickle
    from dataclasses import replace

    from airflow_tf_ckpt.core.retention.executor import apply_plan
    from airflow_tf_ckpt.core.retention.plan import StepDecision
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import policies_from_options

    for i in range(1, 6):
        (tmp_path / f"ckpt-{i}.index").write_bytes(b"I" * 8)
        (tmp_path / f"ckpt-{i}.data-00000-of-00001").write_bytes(b"D" * (100 * i))
    (tmp_path / "checkpoint").write_text(
        format_state(StateFile("ckpt-5", [f"ckpt-{i}" for i in range(1, 6)], [float(i) for i in range(1, 6)]))
    )
    assert discover(tmp_path).regular_files_only
    plan = plan_retention(tmp_path, policies_from_options(keep_last=2), now=10.0)
    doomed = {d.prefix: d for d in plan.deleted}
    assert sorted(doomed) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    result = apply_plan(plan)
    assert result.ok and not list(tmp_path.glob("ckpt-1.*"))
    want = sum(8 + 100 * i for i in (1, 2, 3))
    assert result.bytes_freed == want == result.plan.bytes_to_free
    assert doomed["ckpt-2"].to_dict() == {
        "prefix": "ckpt-2",
        "base": "ckpt",
        "step": 2,
        "status": "committed",
        "action": "delete",
        "reasons": ["not kept by any policy"],
        "in_state": True,
        "timestamp": 2.0,
        "size": 208,  # read before the files went
        "delete_files": ["ckpt-2.index", "ckpt-2.data-00000-of-00001"],
        "kept_files": [],
    }
    # a decision is plain data: it pickles and compares by its fields, the files' sizes with them
    again = pickle.loads(pickle.dumps(doomed["ckpt-2"]))
    assert again == doomed["ckpt-2"] and again.size == 208 and isinstance(again, StepDecision)
    kept = result.plan.decision("ckpt-5")
    assert kept.size == 508 and kept.to_dict()["size"] == 508
    assert kept != replace(kept, files=kept.files[:1])
