"""Hardening of the promotion destination (issue 9, items 6-8) and smaller leaks (item 14).

* A destination's ``PROMOTED.json`` is input: whatever it lists, cleanup deletes only checkpoint
  files of a recorded prefix, never the pointer files or anything else; a malformed one is a
  one-line error naming it, before anything is written.
* A symlink anywhere on a path that promotion writes is refused: nothing is written outside DEST.
* A malformed ``PROMOTIONS.json`` in the source stops the promotion before it publishes anything.

Each runs on local disk and on ``gs://`` (the emulator) where the class applies (symlinks are a
local-disk matter). Checkpoints are real TF ones (``tests/fixtures/tf_checkpoints.py``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pytest

from airflow_tf_ckpt.core.formats.state import read_state
from airflow_tf_ckpt.core.promote.lock import LOCK_NAME
from airflow_tf_ckpt.core.promote.manifest import ALIASES_DIR, MANIFEST_NAME, PromotionError, read_manifest
from airflow_tf_ckpt.core.promote.promote import check_promotion, promote
from airflow_tf_ckpt.core.sidecars.promotions import read_promotions
from airflow_tf_ckpt.core.storage.location import Location
from tests.fixtures.gcs_emulator import upload_dir


@dataclass
class Store:
    """A source checkpoint dir and a destination on one store, with raw access to both."""

    fs: Any
    src: str  # URL
    dest: str  # URL
    src_path: str  # fs path
    dest_path: str  # fs path
    outside_path: str  # a dir next to DEST (outside it)

    def put(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def get(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        try:
            self.fs.invalidate_cache()
        except Exception:  # noqa: BLE001 - local fs has no cache
            pass
        return self.fs.exists(path)


@pytest.fixture(params=["local", pytest.param("gs", marks=pytest.mark.gcs)])
def store(request, copy_variant, tmp_path) -> Store:
    src_dir = copy_variant("tf2_manager")
    if request.param == "local":
        fs = fsspec.filesystem("file")
        (tmp_path / "outside").mkdir()
        return Store(
            fs,
            str(src_dir),
            str(tmp_path / "dest"),
            str(src_dir),
            str(tmp_path / "dest"),
            str(tmp_path / "outside"),
        )
    emu = request.getfixturevalue("gcs_emulator")
    fs = emu.fs()
    bucket = emu.new_bucket()
    upload_dir(fs, src_dir, f"{bucket}/run")
    return Store(
        fs,
        f"gs://{bucket}/run",
        f"gs://{bucket}/serving",
        f"{bucket}/run",
        f"{bucket}/serving",
        f"{bucket}/outside",
    )


def _manifest(store: Store) -> dict[str, Any]:
    return json.loads(store.get(f"{store.dest_path}/{MANIFEST_NAME}"))


def _rec(store: Store, name: str) -> dict[str, Any]:
    """A file record that matches the file now in DEST (so only the name rules protect it)."""
    size = len(store.get(f"{store.dest_path}/{name}"))
    return {"name": name, "size": size, "crc32c": "AAAAAA==", "source": name}


# ---------------------------------------------------------------------------------------------
# 6. the destination's manifest is input


def test_a_hostile_manifest_never_makes_cleanup_delete_pointers_or_foreign_files(store):
    promote(store.src, store.dest, 3, alias="production")
    promote(store.src, store.dest, 4)
    d = store.dest_path
    store.put(f"{d}/foreign.txt", b"not ours")
    store.put(f"{d}/ckpt-9.index", b"a checkpoint file no promotion recorded")
    store.put(f"{store.outside_path}/outside.txt", b"outside DEST")
    doc = _manifest(store)
    hostile = [
        _rec(store, n)
        for n in (
            "checkpoint",
            MANIFEST_NAME,
            "foreign.txt",
            "ckpt-9.index",
            f"{ALIASES_DIR}/production.json",
        )
    ]
    hostile.append({"name": "../outside/outside.txt", "size": 12, "crc32c": "AAAAAA=="})
    doc["files"] += hostile
    doc["retained"]["previous:ckpt-3"] = doc["retained"].get("previous:ckpt-3", []) + hostile
    # a group of several prefixes names no one prefix: none of it is a cleanup candidate
    doc["retained"]["alias:x"] = [*hostile, _rec(store, "ckpt-3.index")]
    store.put(f"{d}/{MANIFEST_NAME}", json.dumps(doc).encode())

    r = promote(store.src, store.dest, 5)

    assert r.prefix == "ckpt-5"
    for name in (
        "checkpoint",
        MANIFEST_NAME,
        "foreign.txt",
        "ckpt-9.index",
        f"{ALIASES_DIR}/production.json",
    ):
        assert store.exists(f"{d}/{name}"), f"{name} was deleted"
    assert store.exists(f"{store.outside_path}/outside.txt")
    assert read_state(Location.of(store.dest)).model_checkpoint_path == "ckpt-5"
    assert read_manifest(store.dest).prefix == "ckpt-5"
    assert check_promotion(store.dest) == []
    # the step files of the recorded prefix ckpt-4 are kept one round (previous), ckpt-3 by the alias
    assert store.exists(f"{d}/ckpt-4.index") and store.exists(f"{d}/ckpt-3.index")
    # nothing hostile is carried into the new manifest
    new = _manifest(store)
    names = {f["name"] for files in new["retained"].values() for f in files}
    assert names and all(n.startswith(("ckpt-3.", "ckpt-4.")) for n in names), names


def test_cleanup_deletes_only_files_of_the_recorded_prefix_with_the_recorded_size(store):
    promote(store.src, store.dest, 3)
    promote(store.src, store.dest, 4)  # ckpt-3 is retained as previous
    d = store.dest_path
    doc = _manifest(store)
    # the retained group for ckpt-3 also claims ckpt-4's files: they are not ckpt-3's
    doc["retained"]["previous:ckpt-3"] += [_rec(store, "ckpt-4.index")]
    store.put(f"{d}/{MANIFEST_NAME}", json.dumps(doc).encode())
    store.put(f"{d}/ckpt-3.data-00000-of-00001", b"replaced by someone: not the recorded size")
    r = promote(store.src, store.dest, 5)
    assert r.deleted == ["ckpt-3.index"]
    assert store.exists(f"{d}/ckpt-3.data-00000-of-00001")  # not what we wrote: left alone
    assert store.exists(f"{d}/ckpt-4.index")  # kept one round as previous
    r = promote(store.src, store.dest, 3)
    assert sorted(r.deleted) == ["ckpt-4.data-00000-of-00001", "ckpt-4.index"]


def test_forged_retained_groups_never_make_cleanup_delete_files_no_promotion_wrote(store):
    """Issue 9 residual: a retained group's key does not prove its files are the tool's. A forged
    ``alias:`` group (its prefix read from its files) or ``previous:`` group naming foreign
    checkpoint files, with their real sizes, made the next promotion delete them; so did a
    recorded file replaced by other bytes of the same size. Cleanup deletes a file only while it
    holds the bytes (size and CRC32C) a promotion recorded writing."""
    promote(store.src, store.dest, 3, alias="production")
    promote(store.src, store.dest, 4)  # retained: previous:ckpt-3 (also alias:production's target)
    d = store.dest_path
    foreign = {
        "ckpt-9.index": b"a foreign checkpoint index",
        "ckpt-9.data-00000-of-00001": b"foreign data",
        "model-2.index": b"another foreign index",
    }
    for name, data in foreign.items():
        store.put(f"{d}/{name}", data)
    doc = _manifest(store)
    doc["retained"]["alias:x"] = [_rec(store, "ckpt-9.index"), _rec(store, "ckpt-9.data-00000-of-00001")]
    doc["retained"]["previous:model-2"] = [_rec(store, "model-2.index")]
    store.put(f"{d}/{MANIFEST_NAME}", json.dumps(doc).encode())
    # a file the manifest records (ckpt-4's index, deleted after the next round) replaced by
    # other bytes of the same length: not what a promotion wrote any more
    index4 = store.get(f"{d}/ckpt-4.index")
    store.put(f"{d}/ckpt-4.index", bytes(b ^ 0xFF for b in index4))

    r = promote(store.src, store.dest, 5)
    r = promote(store.src, store.dest, 3, alias="production")  # ckpt-4 (previous of 5) is due

    for name, data in foreign.items():
        assert store.exists(f"{d}/{name}") and store.get(f"{d}/{name}") == data, f"{name} was deleted"
    assert store.exists(f"{d}/ckpt-4.index"), "a replaced file was deleted"
    assert "ckpt-4.data-00000-of-00001" in r.deleted  # the untouched recorded file still goes
    assert check_promotion(store.dest) == []


def _deep(n: int) -> bytes:
    return b'{"format": "airflow-tf-ckpt/promotion", "x": ' + b"[" * n + b"]" * n + b"}"


HOSTILE_MANIFESTS = {
    "files-not-a-list": lambda doc: {**doc, "files": "ckpt-3.index"},
    "file-name-an-object": lambda doc: {**doc, "files": [{"name": {"a": 1}, "size": 1, "crc32c": "x"}]},
    "size-a-string": lambda doc: {**doc, "files": [{"name": "ckpt-3.index", "size": "9", "crc32c": "x"}]},
    "retained-a-list": lambda doc: {**doc, "retained": ["checkpoint"]},
    "retained-group-not-a-list": lambda doc: {**doc, "retained": {"previous:ckpt-2": "checkpoint"}},
    "metrics-a-list": lambda doc: {**doc, "metrics": [1, 2]},
    "prefix-a-number": lambda doc: {**doc, "prefix": 7},
    "no-files": lambda doc: {k: v for k, v in doc.items() if k != "files"},
}


@pytest.mark.parametrize("case", [*HOSTILE_MANIFESTS, "nested", "huge", "infinite-step"])
def test_a_malformed_manifest_is_a_one_line_error_before_anything_changes(case, copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    promote(src, dest, 3)
    doc = json.loads((dest / MANIFEST_NAME).read_text())
    if case == "nested":
        raw = _deep(200_000)
    elif case == "huge":
        raw = json.dumps({**doc, "pad": "x" * (17 << 20)}).encode()
    elif case == "infinite-step":
        raw = json.dumps(doc).replace('"step": 3', '"step": Infinity').encode()
    else:
        raw = json.dumps(HOSTILE_MANIFESTS[case](doc)).encode()
    (dest / MANIFEST_NAME).write_bytes(raw)
    before = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    with pytest.raises(PromotionError) as ei:
        promote(src, dest, 5)
    msg = str(ei.value)
    assert msg.startswith(str(dest / MANIFEST_NAME) + ": ") and "\n" not in msg and len(msg) < 600, msg
    after = {p.name: p.read_bytes() for p in dest.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.gcs
def test_a_malformed_manifest_on_gcs_is_refused_before_publishing(tf_checkpoints, gcs_emulator):
    fs = gcs_emulator.fs()
    b = gcs_emulator.new_bucket()
    upload_dir(fs, tf_checkpoints["tf2_manager"].dir, f"{b}/run")
    promote(f"gs://{b}/run", f"gs://{b}/serving", 3)
    fs.pipe_file(f"{b}/serving/{MANIFEST_NAME}", _deep(100_000))
    with pytest.raises(PromotionError, match=rf"gs://{b}/serving/{MANIFEST_NAME}: .*nested too deeply"):
        promote(f"gs://{b}/run", f"gs://{b}/serving", 5)
    fs.invalidate_cache()
    assert not fs.exists(f"{b}/serving/ckpt-5.index")
    assert read_state(Location.of(f"gs://{b}/serving")).model_checkpoint_path == "ckpt-3"


# ---------------------------------------------------------------------------------------------
# 7. symlinks in DEST (local disk)


@pytest.mark.parametrize(
    "link",
    [
        ALIASES_DIR,
        f"{ALIASES_DIR}/production.json",
        "checkpoint",
        MANIFEST_NAME,
        LOCK_NAME,
        "ckpt-5.index",
        "ckpt-5.data-00000-of-00001",
    ],
)
def test_a_symlink_on_a_write_path_is_refused(link, copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / ALIASES_DIR).mkdir()
    if link == ALIASES_DIR:
        (dest / ALIASES_DIR).rmdir()
        (dest / link).symlink_to(outside, target_is_directory=True)
    else:
        target = outside / "victim"
        # the same bytes as the file it stands for, so a reuse would not notice it
        target.write_bytes((src / link).read_bytes() if (src / link).exists() else b"victim")
        (dest / link).symlink_to(target)
    snapshot = {p.name: p.read_bytes() for p in outside.iterdir()}
    with pytest.raises(
        PromotionError, match=rf"{dest / link}: is a symlink .*never writes through a symlink"
    ):
        promote(src, dest, 5, alias="production")
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == snapshot
    assert not (dest / MANIFEST_NAME).exists() or link == MANIFEST_NAME


def test_an_unusable_dest_root_is_refused(copy_variant, tmp_path):
    src = copy_variant("tf2_manager")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    with pytest.raises(PromotionError, match=r"dangling: is a symlink to .*nowhere.*which does not exist"):
        promote(src, dangling, 5)
    assert not (tmp_path / "nowhere").exists()
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"x")
    with pytest.raises(PromotionError, match=r"a-file: is not a directory"):
        promote(src, a_file, 5)
    # DEST itself a symlink to a real dir: the user's choice of place, followed
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via-link").symlink_to(real, target_is_directory=True)
    assert promote(src, tmp_path / "via-link", 5).prefix == "ckpt-5"
    assert read_manifest(real).prefix == "ckpt-5"


# ---------------------------------------------------------------------------------------------
# 8. a malformed PROMOTIONS.json in the source


@pytest.mark.parametrize("raw", [b"{not json", b'{"promotions": 5}', b"[1, 2]"])
def test_a_malformed_source_record_stops_the_promotion_before_it_publishes(raw, store):
    store.put(f"{store.src_path}/PROMOTIONS.json", raw)
    with pytest.raises(PromotionError, match=r"PROMOTIONS.json: .*nothing was promoted") as ei:
        promote(store.src, store.dest, 5)
    assert "\n" not in str(ei.value)
    assert not store.exists(f"{store.dest_path}/{MANIFEST_NAME}")
    assert not store.exists(f"{store.dest_path}/checkpoint")
    assert not store.exists(f"{store.dest_path}/ckpt-5.index")
    assert store.get(f"{store.src_path}/PROMOTIONS.json") == raw
    # without recording, it promotes (the user's explicit choice)
    assert promote(store.src, store.dest, 5, record=False).recorded is False
    assert check_promotion(store.dest) == []


def test_a_source_record_broken_during_the_promotion_is_a_warning_not_a_failure(store):
    def break_record(phase: str, _dest: Location) -> None:
        if phase == "cleaned":
            store.put(f"{store.src_path}/PROMOTIONS.json", b"{broken")

    r = promote(store.src, store.dest, 5, hook=break_record)
    assert r.recorded is False
    assert r.record_problem and "PROMOTIONS.json" in r.record_problem and "promoted" in r.record_problem
    assert r.to_dict()["record_problem"] == r.record_problem
    assert check_promotion(store.dest) == []


def test_the_cli_exits_2_before_publishing_on_a_malformed_source_record(copy_variant, tmp_path, capsys):
    from airflow_tf_ckpt.cli import main

    src = copy_variant("tf2_manager")
    (src / "PROMOTIONS.json").write_bytes(b"{not json")
    dest = tmp_path / "dest"
    assert main(["promote", str(src), "--to", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PROMOTIONS.json" in err[0] and "nothing was promoted" in err[0]
    assert not dest.exists() or not any(dest.iterdir())
    with pytest.raises(Exception, match="not valid JSON"):
        read_promotions(Location.of(src))
    assert os.path.exists(src / "PROMOTIONS.json")


# ---------------------------------------------------------------------------------------------
# 14. smaller leaks


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    """An HTTP endpoint that answers every request with 409: gcsfs gives up at once (not
    retriable) and logs it with ``logger.exception``, as it does when retries run out."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            body = json.dumps({"error": {"code": 409, "message": "conflict"}}).encode()
            self.send_response(409)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _refuse

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "TF_CKPT_DEBUG"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "airflow_tf_ckpt.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
    )


def test_gcsfs_error_logging_never_precedes_the_one_line_cli_error(refusing_endpoint):
    p = _cli("ls", "gs://bucket/run", env={"STORAGE_EMULATOR_HOST": refusing_endpoint})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tf-ckpt: error: "), p.stderr


@pytest.mark.long
def test_an_unreachable_endpoint_is_one_line_in_the_cli():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _cli("ls", "gs://bucket/run", env={"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}, timeout=300)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot connect" in lines[0], p.stderr


def test_gcsfs_errors_are_logged_without_tracebacks_in_tasks(refusing_endpoint):
    """Operators and sensors log through the root logger (Airflow's task log): gcsfs's record
    stays, as one line, its tracebacks do not."""
    import io
    import logging

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        loc = Location.of("gs://bucket/run", {"endpoint_url": refusing_endpoint})
        with pytest.raises(Exception, match="conflict"):
            loc.listdir()
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "non-retriable exception: conflict" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("value", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_metrics_set_refuses_non_finite_values(value, store, capsys):
    from airflow_tf_ckpt.cli import main

    assert main(["metrics", store.src, "--step", "5", "--set", f"loss={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finite number" in err[0], err
    assert not store.exists(f"{store.src_path}/ckpt-5.metrics.json")


@pytest.mark.parametrize("name", ["val loss", "a\nb", "tab\there", "bell\x07", "", "é", "x" * 257])
def test_metric_names_follow_one_rule_everywhere(name, copy_variant, capsys):
    from airflow_tf_ckpt.cli import main
    from airflow_tf_ckpt.core.retention.policies import KeepBestK, RetentionError
    from airflow_tf_ckpt.core.sidecars.metrics import MetricsError, write_metrics

    src = copy_variant("tf2_manager")
    assert main(["metrics", str(src), "--step", "5", "--set", f"{name}=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert ("metric name" in err[0] and repr(name)[:20] in err[0]) or (not name and "empty key" in err[0]), (
        err
    )
    assert not (src / "ckpt-5.metrics.json").exists()
    with pytest.raises(MetricsError, match="metric name .* is not valid"):
        write_metrics(Location.of(src), "ckpt-5", {name: 1.0})
    assert not (src / "ckpt-5.metrics.json").exists()
    with pytest.raises(RetentionError, match="metric name .* is not valid|needs a metric name"):
        KeepBestK(1, name)
    from airflow_tf_ckpt.core.promote.select import select_step
    from airflow_tf_ckpt.core.steps.discovery import discover

    with pytest.raises(PromotionError, match="metric name .* is not valid|needs a metric"):
        select_step(discover(src), "best", metric=name)


@pytest.mark.parametrize("names", [["loss", "val_loss", "val/accuracy", "top-5.acc"]])
def test_valid_metric_names_are_accepted(names, copy_variant):
    from airflow_tf_ckpt.cli import main

    src = copy_variant("tf2_manager")
    assert main(["metrics", str(src), "--step", "5", *[a for n in names for a in ("--set", f"{n}=0.5")]]) == 0
    assert set(json.loads((src / "ckpt-5.metrics.json").read_text())["metrics"]) == set(names)


def test_best_never_chooses_a_non_finite_value(store):
    import math

    from airflow_tf_ckpt.core.promote.select import select_step
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import policies_from_options
    from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
    from airflow_tf_ckpt.core.steps.discovery import discover

    loc = Location.of(store.src)
    # what an evaluator may record for a diverged run (the sidecar keeps it, spelled "Infinity")
    write_metrics(loc, "ckpt-3", {"loss": -math.inf, "acc": math.inf})
    write_metrics(loc, "ckpt-4", {"loss": 0.5, "acc": 0.7})
    write_metrics(loc, "ckpt-5", {"loss": 0.7, "acc": math.nan})
    cdir = discover(loc)
    assert select_step(cdir, "best", metric="loss", mode="min").prefix == "ckpt-4"
    assert select_step(cdir, "best", metric="acc", mode="max").prefix == "ckpt-4"
    assert select_step(cdir, "best", metric="loss", mode="max").prefix == "ckpt-5"
    plan = plan_retention(cdir, policies_from_options(keep_best=1, metric="loss", mode="min"))
    best = [d.prefix for d in plan.decisions if any(r.startswith("best ") for r in d.reasons)]
    assert best == ["ckpt-4"]
    plan = plan_retention(cdir, policies_from_options(keep_best=1, metric="acc", mode="max"))
    best = [d.prefix for d in plan.decisions if any(r.startswith("best ") for r in d.reasons)]
    assert best == ["ckpt-4"]


@pytest.mark.parametrize(
    "args",
    [
        ["ls", ""],
        ["ls", " "],
        ["validate", ""],
        ["metrics", ""],
        ["gc", "", "--keep-last", "1", "--dry-run"],
        ["ls", "gs://"],
        ["promote", "SRC", "--to", ""],
        ["promote", "", "--to", "DEST"],
    ],
)
def test_an_empty_dir_is_a_usage_error(args, copy_variant, tmp_path, monkeypatch, capsys):
    from airflow_tf_ckpt.cli import main

    src = copy_variant("tf2_manager")
    monkeypatch.chdir(src)  # the working directory IS a checkpoint dir: it must not be used
    args = [str(src) if a == "SRC" else str(tmp_path / "dest") if a == "DEST" else a for a in args]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "empty path" in err[0], err
    assert "ckpt-5" not in captured.out
    assert not (tmp_path / "dest").exists() and not (src / "PROMOTED.json").exists()


def test_an_empty_dir_is_refused_by_the_core_and_the_operators():
    from airflow_tf_ckpt.core.errors import StorageError

    for url in ("", "  ", "file://", "gs://"):
        with pytest.raises(StorageError, match="empty path"):
            Location.of(url)
    pytest.importorskip("airflow")
    from airflow_tf_ckpt.operators.promote import PromoteCheckpointOperator
    from airflow_tf_ckpt.operators.retention import CheckpointRetentionOperator

    with pytest.raises(ValueError, match="ckpt_dir must be a checkpoint dir"):
        CheckpointRetentionOperator(task_id="gc", ckpt_dir="", keep_last=1)
    with pytest.raises(ValueError, match="dest must be a checkpoint dir"):
        PromoteCheckpointOperator(task_id="p", ckpt_dir="/tmp/run", dest="")
