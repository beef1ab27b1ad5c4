"""Promotion: selection, the copy, the destination's pointers, and what readers can see meanwhile.

Real TF checkpoints come from ``tests/fixtures/tf_checkpoints.py``; TensorFlow itself only runs in
a subprocess (one batch at the end of the module checks every promoted destination).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.core.formats.state import read_state
from airflow_tf_ckpt.core.promote import copy as copy_mod
from airflow_tf_ckpt.core.promote import lock as lock_mod
from airflow_tf_ckpt.core.promote.lock import LOCK_NAME
from airflow_tf_ckpt.core.promote.manifest import (
    ALIASES_DIR,
    MANIFEST_NAME,
    PromotionError,
    list_aliases,
    read_alias,
    read_manifest,
)
from airflow_tf_ckpt.core.promote.promote import check_promotion, promote
from airflow_tf_ckpt.core.promote.select import select_step
from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from tests.fixtures.gcs_emulator import upload_dir
from tests.fixtures.tf_checkpoints import tf_batch


def _crc(data: bytes) -> str:
    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _readers_view(dest: Path) -> dict[str, Any]:
    """What each kind of reader sees in ``dest`` right now; asserts that it is complete.

    A manifest reader follows PROMOTED.json: every file it lists must exist with the recorded
    size and CRC32C, and the step must verify. A TF reader follows the state file: the step it
    names must verify. Both may be absent ("not promoted"), never pointing at a partial step.
    """
    view: dict[str, Any] = {"manifest": None, "state": None}
    loc = Location.of(dest)
    if (dest / MANIFEST_NAME).exists():
        m = read_manifest(loc)
        assert m is not None
        for f in m.files:
            data = (dest / f.name).read_bytes()
            assert len(data) == f.size, f"{f.name}: size differs from the manifest"
            assert _crc(data) == f.crc32c, f"{f.name}: crc differs from the manifest"
        assert verify_step(loc, m.prefix).ok
        view["manifest"] = (m.prefix, tuple(sorted((f.name, f.crc32c) for f in m.files)))
    if (dest / "checkpoint").exists():
        st = read_state(loc)
        assert st is not None and st.model_checkpoint_path
        report = verify_step(loc, st.model_checkpoint_path)
        assert report.ok, report.summary()
        view["state"] = st.model_checkpoint_path
    return view


# ---------------------------------------------------------------------------------------------
# selection


def test_select_latest_number_and_best(copy_variant):
    d = copy_variant("tf2_manager")
    loc = Location.of(d)
    for prefix, loss in (("ckpt-3", 0.5), ("ckpt-4", 0.2), ("ckpt-5", 0.3)):
        write_metrics(loc, prefix, {"loss": loss, "acc": 1 - loss})
    cdir = discover(loc)
    assert select_step(cdir, "latest").prefix == "ckpt-5"
    assert select_step(cdir, 3).prefix == "ckpt-3"
    assert select_step(cdir, "4").prefix == "ckpt-4"
    assert select_step(cdir, "best", metric="loss", mode="min").prefix == "ckpt-4"
    assert select_step(cdir, "best", metric="acc", mode="max").prefix == "ckpt-4"
    assert select_step(cdir, "best", metric="loss", mode="max").prefix == "ckpt-3"
    with pytest.raises(StepNotFoundError, match="no committed step has metric 'f1'.*acc, loss"):
        select_step(cdir, "best", metric="f1")
    with pytest.raises(PromotionError, match="needs a metric"):
        select_step(cdir, "best")
    with pytest.raises(StepNotFoundError, match="no checkpoint step 9"):
        select_step(cdir, 9)


def test_select_refuses_incomplete_and_best_without_sidecars(copy_variant):
    d = copy_variant("tf2_manager")
    (d / "ckpt-4.data-00000-of-00001").unlink()
    cdir = discover(d)
    with pytest.raises(PromotionError, match="incomplete"):
        select_step(cdir, 4)
    with pytest.raises(StepNotFoundError, match="no metrics sidecars"):
        select_step(cdir, "best", metric="loss")


# ---------------------------------------------------------------------------------------------
# local promotion


def test_promote_latest_local(copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    phases: list[str] = []
    r = promote(src, dest, "latest", hook=lambda phase, _d: phases.append(phase))
    assert (r.step, r.prefix, r.method) == (5, "ckpt-5", "local")
    assert phases == ["locked", "copied", "state_written", "manifest_written", "cleaned"]
    assert sorted(r.copied) == ["ckpt-5.data-00000-of-00001", "ckpt-5.index"]
    # files are byte-identical and the manifest holds their size and crc32c
    m = read_manifest(dest)
    assert m is not None and m.prefix == "ckpt-5" and m.source == str(src) and m.selector == "latest"
    for f in m.files:
        data = (src / f.source).read_bytes()
        assert (dest / f.name).read_bytes() == data
        assert (f.size, f.crc32c) == (len(data), _crc(data))
    st = read_state(Location.of(dest))
    assert st.model_checkpoint_path == "ckpt-5" and st.all_model_checkpoint_paths == ["ckpt-5"]
    assert check_promotion(dest, deep=True) == []
    assert not (dest / LOCK_NAME).exists()
    d = r.to_dict()
    assert json.loads(json.dumps(d))["manifest"]["files"][0]["crc32c"]
    # the dest is an ordinary checkpoint dir for our own tools too
    assert discover(dest).latest().prefix == "ckpt-5"


def test_promote_writes_state_then_manifest_and_index_last(copy_variant, tmp_path, monkeypatch):
    src = copy_variant("sharded")
    dest = tmp_path / "dest"
    order: list[str] = []
    real = copy_mod._copy_one

    def spy(method, s, sname, d, dname, on_bytes):
        order.append(dname)
        return real(method, s, sname, d, dname, on_bytes)

    monkeypatch.setattr(copy_mod, "_copy_one", spy)
    phases: list[str] = []
    r = promote(src, dest, 1, hook=lambda p, _d: phases.append(p))
    assert order[-1] == "ckpt-1.index" and len([n for n in order if ".data-" in n]) == 4
    assert phases.index("state_written") < phases.index("manifest_written")
    assert verify_step(Location.of(dest), r.prefix).ok


def test_promote_refuses_source_dir_and_bad_alias(copy_variant):
    src = copy_variant("tf2_manager")
    with pytest.raises(PromotionError, match="source dir itself"):
        promote(src, src, "latest")
    with pytest.raises(PromotionError, match="invalid alias"):
        promote(src, src.parent / "dest", "latest", alias="../prod")


def test_promote_meta_from_an_earlier_step(copy_variant, tmp_path):
    """``write_meta_graph=False``: the newest .meta at or before the step, renamed to it."""
    src = copy_variant("v1")
    (src / "model.ckpt-2.meta").unlink()
    dest = tmp_path / "dest"
    r = promote(src, dest, 2)
    assert r.manifest.meta_from == "model.ckpt-1.meta"
    assert (dest / "model.ckpt-2.meta").read_bytes() == (src / "model.ckpt-1.meta").read_bytes()
    assert not (dest / "model.ckpt-1.meta").exists()


def _lock(dest: Path, **held: Any) -> None:
    (dest / LOCK_NAME).write_text(json.dumps({"token": "x", "ttl": 60, **held}))


def test_lock_is_exclusive_while_its_holder_lives(copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    dest.mkdir()
    now = time.time()
    # another host, heartbeat fresh: live whatever its pid
    _lock(dest, host="elsewhere", pid=1, created=now - 3600, heartbeat=now - 5)
    with pytest.raises(PromotionError, match="another promotion holds the lock .*host elsewhere"):
        promote(src, dest, "latest")
    # this host, a running process (ours) with the start time it really has
    _lock(
        dest,
        host=socket.gethostname(),
        pid=os.getpid(),
        pid_start=lock_mod._pid_start(os.getpid()),
        created=now,
        heartbeat=now,
    )
    with pytest.raises(PromotionError, match="another promotion holds the lock"):
        promote(src, dest, "latest")
    assert not (dest / MANIFEST_NAME).exists() and json.loads((dest / LOCK_NAME).read_text())["token"] == "x"


@pytest.mark.parametrize("why", ["old heartbeat", "dead pid", "reused pid", "unreadable"])
def test_a_lock_whose_holder_is_gone_is_broken(why, copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    dest.mkdir()
    now = time.time()
    if why == "old heartbeat":  # a worker on another host that vanished 2 minutes ago
        _lock(dest, host="elsewhere", pid=1, created=now - 3600, heartbeat=now - 120)
    elif why == "dead pid":
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        _lock(dest, host=socket.gethostname(), pid=dead.pid, created=now, heartbeat=now)
    elif why == "reused pid":
        _lock(dest, host=socket.gethostname(), pid=os.getpid(), pid_start="1", created=now, heartbeat=now)
    else:
        (dest / LOCK_NAME).write_bytes(b"\x00garbage")
    if why != "unreadable":
        assert lock_mod.lock_problem(json.loads((dest / LOCK_NAME).read_text()), 60) is not None
    promote(src, dest, "latest")
    assert not (dest / LOCK_NAME).exists() and (dest / MANIFEST_NAME).exists()


def test_heartbeat_keeps_a_long_promotion_locked(copy_variant, tmp_path):
    """A promotion that outlives its lock's ttl is not broken into: its heartbeat moves on."""
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    beats: list[float] = []
    refused: list[str] = []

    def hook(phase, _dst):
        if phase == "copied":
            for _ in range(6):  # 1.2 s, four times the ttl
                time.sleep(0.2)
                beats.append(json.loads((dest / LOCK_NAME).read_text())["heartbeat"])
            try:
                promote(src, dest, "latest", lock_ttl=0.3)
            except PromotionError as exc:
                refused.append(str(exc))

    promote(src, dest, "latest", lock_ttl=0.3, hook=hook)
    assert len(set(beats)) >= 3, beats  # refreshed every ttl/5 = 0.06 s
    assert refused and "another promotion holds the lock" in refused[0]
    assert not (dest / LOCK_NAME).exists()


def test_record_promotion_is_called(copy_variant, tmp_path, monkeypatch):
    import airflow_tf_ckpt.core.sidecars.promotions as retention

    calls = []
    monkeypatch.setattr(retention, "record_promotion", lambda *a, **k: calls.append(a))
    src = copy_variant("tf2_manager")
    promote(src, tmp_path / "dest", 4, alias="production")
    assert len(calls) == 1
    loc, prefix, dest, alias = calls[0]
    assert (loc.path, prefix, alias) == (str(src), "ckpt-4", "production")
    assert dest == str(tmp_path / "dest")
    promote(src, tmp_path / "dest2", 4, record=False)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------------
# re-promotion: never a partial mix


def _make_different_step5(copy_variant) -> Path:
    """A second run whose ckpt-5 is a valid checkpoint with different bytes (run A's ckpt-4)."""
    other = copy_variant("tf2_manager")
    for suffix in (".index", ".data-00000-of-00001"):
        (other / f"ckpt-5{suffix}").unlink()
        shutil.copyfile(other / f"ckpt-4{suffix}", other / f"ckpt-5{suffix}")
    return other


def test_repromotion_views_are_always_complete(copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    other = _make_different_step5(copy_variant)
    dest = tmp_path / "dest"
    seen: list[tuple[str, dict[str, Any]]] = []

    def hook(phase: str, _d: Location) -> None:
        seen.append((phase, _readers_view(dest)))

    promote(src, dest, 3, hook=hook)
    first = _readers_view(dest)
    seen.clear()
    r = promote(src, dest, 5, hook=hook)  # different names: no unpublish, old stays visible
    assert not r.unpublished and [p for p, _ in seen] == [
        "locked",
        "copied",
        "state_written",
        "manifest_written",
        "cleaned",
    ]
    views = dict(seen)
    assert views["copied"] == first  # the new files exist, but nothing points at them yet
    assert (
        views["state_written"]["state"] == "ckpt-5"
        and views["state_written"]["manifest"] == first["manifest"]
    )
    assert views["manifest_written"]["manifest"][0] == "ckpt-5"
    assert list(r.manifest.retained) == ["previous:ckpt-3"]
    assert (dest / "ckpt-3.index").exists()  # kept one more round for readers of the old manifest

    # the SAME names with different bytes: the dest is unpublished first, never mixed
    seen.clear()
    r2 = promote(other, dest, 5, hook=hook)
    assert r2.unpublished
    views = dict(seen)
    assert views["unpublished"] == {"manifest": None, "state": None}
    assert views["copied"] == {"manifest": None, "state": None}
    new = read_manifest(dest)
    assert new.source == str(other)
    assert (dest / "ckpt-5.index").read_bytes() == (other / "ckpt-5.index").read_bytes()
    assert not (dest / "ckpt-3.index").exists()  # the old previous is gone with the old manifest
    assert check_promotion(dest, deep=True) == []

    # identical bytes again: nothing copied, pointers rewritten
    seen.clear()
    r3 = promote(other, dest, 5, hook=hook)
    assert (r3.copied, r3.method, r3.unpublished) == ([], "none", False)
    assert sorted(r3.reused) == ["ckpt-5.data-00000-of-00001", "ckpt-5.index"]


def test_failed_copy_leaves_old_promotion_visible(copy_variant, tmp_path, monkeypatch):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    promote(src, dest, 3)
    before = _readers_view(dest)
    real = copy_mod._copy_one

    def boom(method, s, sname, d, dname, on_bytes):
        if dname.endswith(".index"):
            raise OSError("disk full")
        return real(method, s, sname, d, dname, on_bytes)

    monkeypatch.setattr(copy_mod, "_copy_one", boom)
    with pytest.raises(OSError, match="disk full"):
        promote(src, dest, 5)
    assert _readers_view(dest) == before
    assert not (dest / LOCK_NAME).exists()
    monkeypatch.setattr(copy_mod, "_copy_one", real)
    promote(src, dest, 5)  # the leftover shard of the failed attempt is simply overwritten
    assert _readers_view(dest)["manifest"][0] == "ckpt-5"


def test_corrupt_copy_is_not_published(copy_variant, tmp_path, monkeypatch):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    real = copy_mod._stream_copy

    def flip(s, sname, d, dname, on_bytes):
        out = real(s, sname, d, dname, on_bytes)
        p = Path(d.join(dname))
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF  # a bit flips on the way to disk
        p.write_bytes(bytes(data))
        return out

    monkeypatch.setattr(copy_mod, "_stream_copy", flip)
    with pytest.raises(PromotionError, match="crc32c"):
        promote(src, dest, 5)
    assert not (dest / MANIFEST_NAME).exists() and not (dest / "checkpoint").exists()


def test_aliases_keep_their_files(copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    promote(src, dest, 3, alias="production")
    promote(src, dest, 4, alias="best")
    r = promote(src, dest, 5)
    assert set(list_aliases(dest)) == {"production", "best"}
    assert read_alias(dest, "production").prefix == "ckpt-3"
    for step in (3, 4, 5):  # 3: alias production, 4: alias best (and previous), 5: current
        assert (dest / f"ckpt-{step}.index").exists()
    assert set(r.manifest.retained) == {"previous:ckpt-4", "alias:production", "alias:best"}
    # moving production to 5 frees ckpt-3 (no other pointer reaches it)
    r = promote(src, dest, 5, alias="production")
    assert "ckpt-3.index" in r.deleted and not (dest / "ckpt-3.index").exists()
    assert read_alias(dest, "production").prefix == "ckpt-5"
    assert (dest / ALIASES_DIR / "production.json").exists()
    # a different ckpt-4 may not overwrite the one alias "best" points at
    other = copy_variant("tf2_manager")
    for suffix in (".index", ".data-00000-of-00001"):
        (other / f"ckpt-4{suffix}").unlink()
        shutil.copyfile(other / f"ckpt-3{suffix}", other / f"ckpt-4{suffix}")
    with pytest.raises(PromotionError, match="alias 'best' points at it"):
        promote(other, dest, 4)
    assert read_alias(dest, "best").prefix == "ckpt-4" and verify_step(Location.of(dest), "ckpt-4").ok


# ---------------------------------------------------------------------------------------------
# gs://


@pytest.fixture
def counted_gcs(monkeypatch):
    """Count every byte the worker reads or writes through gcsfs, by object name."""
    from gcsfs.core import GCSFileSystem

    io: dict[str, list[str]] = {"read": [], "write": [], "copy": []}
    # fsspec binds an instance's sync methods (cp_file, cat_file...) to the async methods it had
    # when it was created, and caches instances: drop the ones earlier tests made so that the
    # filesystems this test gets are built after the spies are in place
    GCSFileSystem.clear_instance_cache()

    def wrap(name: str, kind: str, path_arg: int = 0):
        real = getattr(GCSFileSystem, name)

        async def spy(self, *args, **kwargs):
            io[kind].append(str(args[path_arg]))
            return await real(self, *args, **kwargs)

        monkeypatch.setattr(GCSFileSystem, name, spy)

    for name in ("_cat_file", "_get_file"):
        wrap(name, "read")
    for name in ("_pipe_file", "_put_file"):
        wrap(name, "write")
    wrap("_cp_file", "copy", 1)
    real_open = GCSFileSystem._open

    def open_spy(self, path, mode="rb", *args, **kwargs):
        io["read" if "r" in mode else "write"].append(str(path))
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(GCSFileSystem, "_open", open_spy)
    yield io
    GCSFileSystem.clear_instance_cache()  # no spied instance outlives the test


def _is_ckpt_data(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".index") or ".data-" in name or name.endswith(".meta")


@pytest.mark.gcs
def test_gs_to_gs_is_server_side(tf_checkpoints, gcs_emulator, counted_gcs):
    fs = gcs_emulator.fs()
    a, b = gcs_emulator.new_bucket("src"), gcs_emulator.new_bucket("dst")
    upload_dir(fs, tf_checkpoints["sharded"].dir, f"{a}/run")
    counted_gcs["read"].clear()
    counted_gcs["write"].clear()
    r = promote(f"gs://{a}/run", f"gs://{b}/serving", "latest", alias="production")
    assert r.method == "server-side" and r.prefix == "ckpt-1"
    through_worker = [p for p in counted_gcs["read"] + counted_gcs["write"] if _is_ckpt_data(p)]
    # only the source's index is read (shard sizes against it, so trailing bytes are never shipped)
    assert through_worker == [f"{a}/run/ckpt-1.index"]
    assert sorted(p.rsplit("/", 1)[-1] for p in counted_gcs["copy"]) == sorted(r.copied)
    assert len(r.copied) == 5  # 4 shards + index
    dest = Location.of(f"gs://{b}/serving")
    assert check_promotion(dest, deep=True) == []
    assert verify_step(dest, "ckpt-1").ok
    info = {f.name: f for f in read_manifest(dest).files}
    for name, f in info.items():
        assert fs.info(f"{b}/serving/{name}")["crc32c"] == f.crc32c
    assert read_alias(dest, "production").prefix == "ckpt-1"


@pytest.mark.gcs
def test_gs_repromotion_and_gs_to_local(tf_checkpoints, gcs_emulator, tmp_path):
    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket()
    upload_dir(fs, tf_checkpoints["tf2_manager"].dir, f"{bucket}/run")
    promote(f"gs://{bucket}/run", f"gs://{bucket}/serving", 3)
    r = promote(f"gs://{bucket}/run", f"gs://{bucket}/serving", 5)
    assert r.manifest.retained.keys() == {"previous:ckpt-3"}
    r = promote(f"gs://{bucket}/run", f"gs://{bucket}/serving", 4)
    assert sorted(r.deleted) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert not fs.exists(f"{bucket}/serving/ckpt-3.index")
    # cross-store: streamed in chunks, crc checked against the server's
    local = tmp_path / "pulled"
    r = promote(f"gs://{bucket}/serving", local, "latest")
    assert r.method == "stream" and r.prefix == "ckpt-4"
    assert check_promotion(local, deep=True) == []


# ---------------------------------------------------------------------------------------------
# TensorFlow reads what we promoted (one TF subprocess for the whole module)


@pytest.mark.tf
@pytest.mark.gcs
def test_tensorflow_restores_promoted_steps(tf_checkpoints, copy_variant, tmp_path, gcs_emulator):
    cases: dict[str, Path] = {}
    # TF2 CheckpointManager, latest (promotion writes a lease and a record into the source: copies)
    cases["tf2"] = tmp_path / "p_tf2"
    promote(copy_variant("tf2_manager"), cases["tf2"], "latest")
    # the seed's TF1 Saver with ABSOLUTE paths in its state file (pointing at the original dir,
    # as after a move): DEST's state file is relative
    cases["tf1"] = tmp_path / "p_tf1"
    promote(copy_variant("tf1_saver"), cases["tf1"], "latest")
    assert "/" not in (cases["tf1"] / "checkpoint").read_text().split('"')[1]
    # several shards with a split tensor
    cases["sharded"] = tmp_path / "p_sharded"
    promote(copy_variant("sharded"), cases["sharded"], 1)
    # V1 tables, with the .meta taken from an earlier step
    v1 = copy_variant("v1")
    (v1 / "model.ckpt-2.meta").unlink()
    cases["v1"] = tmp_path / "p_v1"
    promote(v1, cases["v1"], 2)
    # gs -> local
    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket()
    upload_dir(fs, tf_checkpoints["strings"].dir, f"{bucket}/run")
    cases["strings"] = tmp_path / "p_strings"
    promote(f"gs://{bucket}/run", cases["strings"], "latest")

    expected = {
        "tf2": "ckpt-5",
        "tf1": "my_test_model-600",
        "sharded": "ckpt-1",
        "v1": "model.ckpt-2",
        "strings": "ckpt-1",
    }
    reqs: list[tuple[str, list[Any]]] = []
    for name, d in cases.items():
        reqs.append(("latest_checkpoint", [str(d)]))
        reqs.append(("read_all", [str(d / expected[name])]))
    reqs.append(
        (
            """
sess_graph = tf.Graph()
with sess_graph.as_default():
    saver = tf.compat.v1.train.import_meta_graph(args[0] + ".meta")
    with tf.compat.v1.Session(graph=sess_graph) as sess:
        saver.restore(sess, tf.train.latest_checkpoint(args[1]))
        result = sorted(v.name for v in tf.compat.v1.global_variables())
""",
            [str(cases["v1"] / "model.ckpt-2"), str(cases["v1"])],
        )
    )
    reqs.append(
        (
            """
src = tf.train.load_checkpoint(args[0]); dst = tf.train.load_checkpoint(args[1])
names = src.get_variable_to_shape_map()
result = all((src.get_tensor(n) == dst.get_tensor(n)).all() if hasattr(src.get_tensor(n), 'all')
             else src.get_tensor(n) == dst.get_tensor(n) for n in names)
""",
            [tf_checkpoints["tf2_manager"].prefix_path("ckpt-5"), str(cases["tf2"] / "ckpt-5")],
        )
    )
    out = tf_batch(reqs)
    for i, name in enumerate(cases):
        latest, read = out[2 * i], out[2 * i + 1]
        assert latest == str(cases[name] / expected[name]), name
        assert read["ok"] and read["count"] > 0, (name, read)
    assert "conv1/weights:0" in out[-2]
    assert out[-1] is True


def test_source_step_is_leased_while_copied(copy_variant, tmp_path):
    from airflow_tf_ckpt.core.sidecars.leases import write_gc_intent

    src = copy_variant("tf2_manager")
    during: list[list[str]] = []
    promote(
        src,
        tmp_path / "dest",
        5,
        hook=lambda p, _d: (
            during.append(sorted(json.loads(n.read_bytes())["owner"] for n in src.glob("ckpt-5.lease-*")))
            if p == "copied"
            else None
        ),
    )
    assert len(during) == 1 and len(during[0]) == 1 and during[0][0].startswith("promote-")
    assert not list(src.glob("*.lease-*"))  # released afterwards
    # a GC run that is deleting the step wins: the promotion backs off
    write_gc_intent(Location.of(src), "ckpt", ["ckpt-4"], ttl_s=600, started=0.0)
    with pytest.raises(PromotionError, match="being deleted by a GC run"):
        promote(src, tmp_path / "dest2", 4)
    assert not (tmp_path / "dest2" / MANIFEST_NAME).exists()


def test_orphan_step_is_verified_before_promotion(copy_variant, tmp_path):
    """A step the state file does not name may be a save in progress: promote it only if it verifies."""
    src = copy_variant("tf2_manager")
    (src / "checkpoint").write_text('model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n')
    assert discover(src).get(5).status.value == "orphan"
    data = bytearray((src / "ckpt-5.index").read_bytes())
    (src / "ckpt-5.index").write_bytes(bytes(data[: len(data) // 2]))  # index half written
    with pytest.raises(PromotionError, match="does not verify"):
        promote(src, tmp_path / "dest", 5)
    assert not (tmp_path / "dest" / MANIFEST_NAME).exists()
    assert promote(src, tmp_path / "dest", 3).prefix == "ckpt-3"  # an orphan that verifies is fine


def test_copy_method_compares_the_gcs_service_not_the_instance(monkeypatch) -> None:
    """gs->gs is a server-side rewrite whenever both filesystems talk to the same service, also as
    two gcsfs instances (other options, e.g. credentials); another endpoint streams. Read from
    the options each was made with (no network: nothing here is called)."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)

    def at(url: str, **opts: Any) -> Location:
        return Location.of(url, {"token": "anon", **opts})

    emu, other = "http://127.0.0.1:9", "http://127.0.0.1:10"
    a, b = at("gs://a/run", endpoint_url=emu), at("gs://b/run", endpoint_url=emu, project="p2")
    assert a.fs is not b.fs and copy_mod.copy_method(a, b) == "server-side"
    assert copy_mod.copy_method(a, at("gs://b/run", endpoint_url="127.0.0.1:9/")) == "server-side"
    assert copy_mod.copy_method(a, at("gs://b/run", endpoint_url=other)) == "stream"
    google, google2 = at("gs://a/run"), at("gs://b/run", project="p2")
    assert google.fs is not google2.fs and copy_mod.copy_method(google, google2) == "server-side"
    assert copy_mod.copy_method(google, a) == "stream"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9")  # the environment's emulator
    assert copy_mod.copy_method(at("gs://c/run", project="p3"), a) == "server-side"
