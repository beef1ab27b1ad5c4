"""State file, storage seam and discovery on local dirs and the GCS emulator."""

from __future__ import annotations

import os

import pytest

from airflow_tf_ckpt.core.errors import StateFileError, StorageError
from airflow_tf_ckpt.core.formats.state import StateFile, format_state, parse_state, resolve_path, write_state
from airflow_tf_ckpt.core.steps.discovery import StepStatus, discover
from airflow_tf_ckpt.core.storage.location import Location

STATE = b"""model_checkpoint_path: "ckpt-3"
all_model_checkpoint_paths: "ckpt-2"
all_model_checkpoint_paths: "ckpt-3"
all_model_checkpoint_timestamps: 100.5
all_model_checkpoint_timestamps: 200.25
last_preserved_timestamp: 50.0
"""


def _fake_step(d, prefix, shards=1):
    (d / f"{prefix}.index").write_bytes(b"i" * 10)
    for k in range(shards):
        (d / f"{prefix}.data-{k:05d}-of-{shards:05d}").write_bytes(b"d" * 100)


def test_parse_roundtrip():
    s = parse_state(STATE)
    assert s.model_checkpoint_path == "ckpt-3"
    assert s.all_model_checkpoint_paths == ["ckpt-2", "ckpt-3"]
    assert s.all_model_checkpoint_timestamps == [100.5, 200.25]
    assert s.last_preserved_timestamp == 50.0
    assert parse_state(format_state(s)) == s


@pytest.mark.parametrize(
    "data,line",
    [
        (b'model_checkpoint_path: "a"\nbogus_field: 3\n', 2),
        (b'model_checkpoint_path: "a"\n\nall_model_checkpoint_paths: unquoted\n', 3),
    ],
)
def test_malformed_names_file_and_line(data, line):
    with pytest.raises(StateFileError) as ei:
        parse_state(data, "/x/checkpoint")
    assert ei.value.line == line
    assert f"/x/checkpoint:{line}" in str(ei.value)


def test_binary_state_file_is_refused():
    with pytest.raises(StateFileError, match="binary"):
        parse_state(b"\x00\x01\x02", "/x/checkpoint")
    with pytest.raises(StateFileError, match="UTF-8"):
        parse_state(b'model_checkpoint_path: "\xff"', "/x/checkpoint")


def test_resolve_paths(tmp_path):
    loc = Location.of(tmp_path)
    assert resolve_path(loc, "ckpt-1").how == "relative"
    assert resolve_path(loc, str(tmp_path / "ckpt-1")).how == "absolute"
    r = resolve_path(loc, "/other/host/dir/ckpt-1", {"ckpt-1.index"})
    assert (r.how, r.name) == ("moved", "ckpt-1") and "outside" in r.problem
    assert resolve_path(loc, "/other/host/dir/ckpt-1", set()).name is None
    assert resolve_path(loc, "../escape/ckpt-1").how == "refused"
    assert resolve_path(loc, "sub/ckpt-1").how == "refused"
    assert resolve_path(loc, "gs://other-bucket/dir/ckpt-1", set()).how == "refused"


def test_discover_statuses(tmp_path):
    _fake_step(tmp_path, "ckpt-1")
    _fake_step(tmp_path, "ckpt-2", shards=3)
    _fake_step(tmp_path, "ckpt-3", shards=2)
    (tmp_path / "ckpt-3.data-00001-of-00002").unlink()  # being written
    (tmp_path / "ckpt-4.data-00000-of-00001").write_bytes(b"x")  # shards, no index yet
    write_state(Location.of(tmp_path), StateFile("ckpt-2", ["ckpt-2"], [123.0], 0.0))
    d = discover(tmp_path)
    st = {s.prefix: s.status for s in d.steps}
    assert st == {
        "ckpt-1": StepStatus.ORPHAN,
        "ckpt-2": StepStatus.COMMITTED,
        "ckpt-3": StepStatus.INCOMPLETE,
        "ckpt-4": StepStatus.INCOMPLETE,
    }
    s2 = d.get(2)
    assert s2.timestamp == 123.0 and s2.timestamp_source == "state" and s2.num_shards == 3
    assert d.get(1).timestamp_source == "mtime"
    assert d.latest().prefix == "ckpt-2"
    assert "ckpt-3.data-00001-of-00002" in d.get(3).missing


def test_state_names_missing_step(tmp_path):
    _fake_step(tmp_path, "ckpt-1")
    write_state(Location.of(tmp_path), StateFile("ckpt-2", ["ckpt-1", "ckpt-2"], [], 0.0))
    d = discover(tmp_path)
    assert d.get(2).status is StepStatus.INCOMPLETE
    assert "missing" in d.get(2).problems[0]
    assert d.latest().prefix == "ckpt-1"


def test_several_prefixes_and_no_step(tmp_path):
    _fake_step(tmp_path, "a-1")
    _fake_step(tmp_path, "b-1")
    (tmp_path / "inception_v1.ckpt").write_bytes(b"v1")
    d = discover(tmp_path)
    assert {s.base for s in d.steps} == {"a", "b", "inception_v1.ckpt"}
    assert d.get("inception_v1.ckpt").step is None
    assert [s.prefix for s in discover(tmp_path, prefix="a").steps] == ["a-1"]
    with pytest.raises(Exception, match="several prefixes"):
        d.get(1)


def test_step_overflow_is_reported(tmp_path):
    _fake_step(tmp_path, "ckpt-99999999999999999999999")
    d = discover(tmp_path)
    assert d.steps[0].step is None
    assert any("int64" in p for p in d.problems)


def test_missing_dir_is_clear_error(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        discover(tmp_path / "nope")


@pytest.mark.gcs
def test_discover_on_gcs(gcs_emulator, gcs_bucket, tmp_path):
    _fake_step(tmp_path, "ckpt-5", shards=2)
    write_state(Location.of(tmp_path), StateFile("ckpt-5", ["ckpt-5"], [1.0], 0.0))
    fs = gcs_emulator.fs()
    for p in tmp_path.iterdir():
        fs.pipe_file(f"{gcs_bucket}/run/{p.name}", p.read_bytes())
    loc = Location.of(f"gs://{gcs_bucket}/run")
    assert type(loc.fs).__name__ == "GCSFileSystem" and type(loc.fs).__module__ == "gcsfs.core"
    d = discover(loc)
    assert [(s.prefix, s.status) for s in d.steps] == [("ckpt-5", StepStatus.COMMITTED)]
    assert d.location.display("checkpoint") == f"gs://{gcs_bucket}/run/checkpoint"
    write_state(loc, StateFile("ckpt-5", ["ckpt-5"], [2.0], 0.0))
    assert discover(loc).get(5).timestamp == 2.0


@pytest.mark.tf
def test_discovery_matches_tf_on_real_variants(tf_checkpoints):
    """Every real TF layout (incl. the sharded V1 ``model.ckpt-7-?????-of-00001`` state path)
    is listed as committed, and the latest is what ``tf.train.latest_checkpoint`` says."""
    from tests.fixtures.tf_checkpoints import tf_batch

    names = sorted(tf_checkpoints.names())
    latest = tf_batch([("latest_checkpoint", [str(tf_checkpoints[n].dir)]) for n in names])
    for name, tf_latest in zip(names, latest, strict=True):
        v = tf_checkpoints[name]
        d = discover(v.dir)
        assert not d.problems, (name, d.problems)
        assert [s.prefix for s in d.steps] == list(v.prefixes), name
        assert all(s.status is StepStatus.COMMITTED for s in d.steps), name
        assert d.latest().prefix == os.path.basename(tf_latest).removesuffix("-?????-of-00001"), name


def test_atomic_write_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Location.of(tmp_path).write_atomic("checkpoint", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "checkpoint").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]
