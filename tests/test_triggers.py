"""CheckpointTrigger / CheckpointEventTrigger and the storage hook, on local dirs and the GCS emulator.

Pure trigger logic uses synthetic step files (only names and the state file matter there); the
real-TF tests use the session's TensorFlow-written dirs (tests/fixtures/tf_checkpoints.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_tf_ckpt.core.formats.state import StateFile, write_state
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.hooks.credentials import GcsAuth, StorageCredentialsError, gcs_auth_from_extras
from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook
from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger, CheckpointTrigger
from tests.fixtures.gcs_emulator import upload_dir

pytestmark = pytest.mark.airflow


# ------------------------------------------------------------------------------------------ helpers


def make_step(d: Path, n: int, shards: int = 1, base: str = "ckpt", index: bool = True) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if index:
        (d / f"{base}-{n}.index").write_bytes(b"i" * 8)
    for k in range(shards):
        (d / f"{base}-{n}.data-{k:05d}-of-{shards:05d}").write_bytes(b"d" * 16)


def commit(d: Path, steps: list[int], base: str = "ckpt", ts: float | None = None) -> None:
    now = time.time() if ts is None else ts
    write_state(
        Location.of(d),
        StateFile(f"{base}-{steps[-1]}", [f"{base}-{s}" for s in steps], [now] * len(steps), 0.0),
    )


class Collector:
    """Drive a trigger's ``run()`` in the background (as the triggerer does) and keep its events."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger
        self.events: list[dict[str, Any]] = []
        self.times: list[float] = []
        self._task = asyncio.ensure_future(self._drive())

    async def _drive(self) -> None:
        async for ev in self.trigger.run():
            self.events.append(ev.payload)
            self.times.append(time.monotonic())

    @property
    def steps(self) -> list[int]:
        return [e["step"] for e in self.events]

    async def wait_for(self, n: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            if self._task.done():
                self._task.result()
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.events)} of {n} events after {timeout}s: {self.steps}")
            await asyncio.sleep(0.02)
        return self.events

    async def stop(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class FakeAssetStore:
    """What the triggerer injects as ``asset_state_store`` (aget/aset), backed by a dict."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def aset(self, key: str, value: Any) -> None:
        assert value is not None
        self.data[key] = json.loads(json.dumps(value))  # JSON only, as the real store


async def first_event(trigger: Any, timeout: float = 10) -> dict[str, Any]:
    return (await asyncio.wait_for(trigger.run().__anext__(), timeout)).payload


# ------------------------------------------------------------------------------------------ CheckpointTrigger


async def test_fires_on_new_committed_step(tmp_path):
    d = tmp_path / "run"
    trig = CheckpointTrigger(dir=str(d), poll_interval=0.05)
    c = Collector(trig)
    await asyncio.sleep(0.3)
    assert c.events == []  # dir does not even exist yet
    make_step(d, 100, shards=2)
    await asyncio.sleep(0.3)
    assert c.events == []  # files but no state file: not committed
    commit(d, [100])
    ev = (await c.wait_for(1))[0]
    assert ev["status"] == "success"
    assert (ev["dir"], ev["prefix"], ev["checkpoint"], ev["step"]) == (str(d), "ckpt", "ckpt-100", 100)
    assert ev["files"] == ["ckpt-100.index", "ckpt-100.data-00000-of-00002", "ckpt-100.data-00001-of-00002"]
    assert ev["path"] == str(d / "ckpt-100") and ev["format"] == "v2"
    assert ev["time"] == pytest.approx(time.time(), abs=30) and ev["time_source"] in ("state", "mtime")
    json.dumps(ev)  # an XCom / event payload must be plain JSON
    await c.stop()


async def test_silent_on_half_written_steps(tmp_path):
    d = tmp_path / "run"
    make_step(d, 1)
    commit(d, [1])
    trig = CheckpointTrigger(dir=str(d), after_step=1, poll_interval=0.05)
    c = Collector(trig)
    make_step(d, 2, shards=3, index=False)  # shards without an index
    await asyncio.sleep(0.3)
    make_step(d, 3)  # a complete step that the state file does not name (orphan / being saved)
    await asyncio.sleep(0.3)
    (d / "ckpt-4.index").write_bytes(b"i")  # the state file names step 4, one shard is missing
    (d / "ckpt-4.data-00000-of-00002").write_bytes(b"d")
    commit(d, [1, 4])
    await asyncio.sleep(0.4)
    assert c.events == []
    (d / "ckpt-4.data-00001-of-00002").write_bytes(b"d")  # now complete
    ev = (await c.wait_for(1))[0]
    assert ev["step"] == 4
    await c.stop()


async def test_watermark_prefix_and_pick(tmp_path):
    d = tmp_path / "run"
    for n in (1, 2, 3):
        make_step(d, n)
        make_step(d, n * 10, base="other")
    commit(d, [1, 2, 3])
    assert (await first_event(CheckpointTrigger(dir=str(d), poll_interval=0.05)))["step"] == 3
    assert (
        await first_event(CheckpointTrigger(dir=str(d), after_step=1, pick="oldest", poll_interval=0.05))
    )["step"] == 2
    c = Collector(CheckpointTrigger(dir=str(d), after_step=3, prefix="ckpt", poll_interval=0.05))
    await asyncio.sleep(0.3)
    assert c.events == []
    make_step(d, 4)
    commit(d, [2, 3, 4])
    assert (await c.wait_for(1))[0]["step"] == 4
    await c.stop()
    # a prefix filter: the state file names only "other" steps
    write_state(Location.of(d), StateFile("other-30", ["other-10", "other-30"], [], 0.0))
    ev = await first_event(CheckpointTrigger(dir=str(d), prefix="other", after_step=10, poll_interval=0.05))
    assert (ev["prefix"], ev["step"]) == ("other", 30)


def test_serialized_kwargs_roundtrip_and_stay_small(tmp_path):
    from airflow.serialization.serialized_objects import BaseSerialization

    d = tmp_path / "big"
    d.mkdir()
    commit(d, list(range(1, 10_001)))  # a state file naming 10k steps
    trig = CheckpointTrigger(
        dir=str(d),
        prefix="ckpt",
        after_step=9_999,
        settle_seconds=5,
        poll_interval=2,
        conn_id="google_cloud_default",
    )
    classpath, kwargs = trig.serialize()
    assert classpath == "airflow_tf_ckpt.triggers.checkpoint.CheckpointTrigger"
    blob = json.dumps(BaseSerialization.serialize(kwargs))
    assert len(blob) < 1000, blob
    again = CheckpointTrigger(**BaseSerialization.deserialize(json.loads(blob)))
    assert again.serialize() == (classpath, kwargs)
    ev_cls, ev_kwargs = CheckpointEventTrigger(dir=str(d), after_step=3).serialize()
    assert CheckpointEventTrigger(**ev_kwargs).serialize() == (ev_cls, ev_kwargs)
    assert "watermark" not in json.dumps(ev_kwargs)  # the hash of a watcher must not change


def test_parse_time_defaults_agree_with_the_core():
    """The trigger module repeats the state file's name so that importing it (at DAG parse) does
    not import core.state and protobuf; the default and the serialized kwargs are unchanged."""
    from airflow_tf_ckpt.core.formats import state
    from airflow_tf_ckpt.sensors import checkpoint as sensor_mod
    from airflow_tf_ckpt.triggers import checkpoint as trigger_mod

    assert trigger_mod.STATE_FILENAME == sensor_mod.STATE_FILENAME == state.STATE_FILENAME
    assert CheckpointTrigger(dir="/x").serialize() == (
        "airflow_tf_ckpt.triggers.checkpoint.CheckpointTrigger",
        {
            "dir": "/x",
            "prefix": None,
            "after_step": None,
            "require_complete": True,
            "settle_seconds": 0.0,
            "poll_interval": 30.0,
            "conn_id": None,
            "state_filename": "checkpoint",
            "max_errors": 10,
            "pick": "newest",
        },
    )


async def test_quiet_polls_read_only_the_state_file(tmp_path):
    d = tmp_path / "many"
    d.mkdir()
    for n in range(1, 301):
        make_step(d, n)
    commit(d, list(range(1, 301)))
    trig = CheckpointTrigger(dir=str(d), after_step=300, poll_interval=0.02)
    poller = trig.make_poller()
    hook = CheckpointStorageHook()
    async with hook.aopen(str(d)) as adir:
        for _ in range(10):
            assert await poller.apoll(adir, 300, "newest") == ([], None)
        assert poller.requests == 10  # one read per poll, no listing
        make_step(d, 301)
        commit(d, list(range(2, 302)))
        ready, _ = await poller.apoll(adir, 300, "newest")
        assert [c.candidate.step for c in ready] == [301] and ready[0].complete
        assert poller.requests == 12  # the state file + one listing of that step


async def test_settle_seconds(tmp_path):
    d = tmp_path / "run"
    make_step(d, 7)
    t0 = time.time()
    commit(d, [7], ts=t0)
    start = time.monotonic()
    ev = await first_event(CheckpointTrigger(dir=str(d), settle_seconds=1.0, poll_interval=0.05))
    assert ev["step"] == 7
    assert time.time() - t0 >= 1.0
    assert time.monotonic() - start < 3.0  # woke up when it settled, not a whole poll later
    # an old step (old state timestamp AND old files) is settled at once
    commit(d, [7], ts=t0 - 100)
    for f in d.glob("ckpt-7.*"):
        os.utime(f, (t0 - 100, t0 - 100))
    start = time.monotonic()
    await first_event(CheckpointTrigger(dir=str(d), settle_seconds=50, poll_interval=0.05))
    assert time.monotonic() - start < 1.0


async def test_storage_errors_are_retried_then_reported(tmp_path, caplog):
    d = tmp_path / "run"
    make_step(d, 1)
    (d / "checkpoint").write_text("this is { not a state file")
    ev = await first_event(CheckpointTrigger(dir=str(d), poll_interval=0.02, max_errors=3))
    assert ev["status"] == "error" and "3 consecutive" in ev["message"] and "checkpoint" in ev["message"]
    # transient: fixed before max_errors is reached -> success
    trig = CheckpointTrigger(dir=str(d), poll_interval=0.1, max_errors=50)
    c = Collector(trig)
    await asyncio.sleep(0.35)
    commit(d, [1])
    assert (await c.wait_for(1))[0]["status"] == "success"
    await c.stop()


async def test_tf1_absolute_paths_moved_dir(copy_variant, tf_checkpoints):
    """A real TF1 Saver dir (absolute paths in its state file) copied elsewhere still fires."""
    v = tf_checkpoints["tf1_saver"]
    d = copy_variant("tf1_saver")
    assert str(v.dir) in (d / "checkpoint").read_text()  # the state file points at the original dir
    ev = await first_event(CheckpointTrigger(dir=str(d), poll_interval=0.05))
    assert (ev["prefix"], ev["step"], ev["checkpoint"]) == (v.base, 600, v.latest)
    assert ev["path"] == str(d / v.latest)
    assert f"{v.latest}.index" in ev["files"]


async def test_real_tf2_dir_new_step(copy_variant, tf_checkpoints):
    d = copy_variant("tf2_manager")
    assert tf_checkpoints["tf2_manager"].prefixes == ["ckpt-3", "ckpt-4", "ckpt-5"]
    c = Collector(CheckpointTrigger(dir=str(d), after_step=5, poll_interval=0.05))
    await asyncio.sleep(0.3)
    assert c.events == []
    # what TF does on the next save: the data shard, the index, then the state file last
    for src in sorted(d.glob("ckpt-5.*")):
        if ".data-" in src.name:
            (d / src.name.replace("ckpt-5", "ckpt-6")).write_bytes(src.read_bytes())
    await asyncio.sleep(0.2)
    (d / "ckpt-6.index").write_bytes((d / "ckpt-5.index").read_bytes())
    await asyncio.sleep(0.2)
    assert c.events == []
    state = (d / "checkpoint").read_text()
    (d / "checkpoint").write_text(
        state.replace('"ckpt-5"', '"ckpt-6"', 1) + 'all_model_checkpoint_paths: "ckpt-6"\n'
    )
    ev = (await c.wait_for(1))[0]
    assert (ev["step"], ev["checkpoint"]) == (6, "ckpt-6")
    assert sorted(ev["files"]) == sorted(p.name for p in d.glob("ckpt-6.*"))
    await c.stop()


@pytest.mark.gcs
async def test_gcs_fires_and_stays_silent(gcs_emulator, gcs_bucket, copy_variant):
    fs = gcs_emulator.fs()
    url = f"gs://{gcs_bucket}/runs/a"
    c = Collector(CheckpointTrigger(dir=url, after_step=5, poll_interval=0.05))
    local = copy_variant("tf2_manager")  # real TF files, uploaded in an order TF would not use
    fs.pipe_file(f"{gcs_bucket}/runs/a/checkpoint", (local / "checkpoint").read_bytes())
    await asyncio.sleep(0.3)
    assert c.events == []  # steps 3..5 are not after the watermark
    fs.pipe_file(  # as TF's next save writes it: ckpt-6 is model_checkpoint_path and listed
        f"{gcs_bucket}/runs/a/checkpoint",
        (local / "checkpoint").read_bytes().replace(b'"ckpt-5"', b'"ckpt-6"', 1)
        + b'all_model_checkpoint_paths: "ckpt-6"\n',
    )
    await asyncio.sleep(0.3)
    assert c.events == []  # named, but no file of step 6 yet
    data = (local / "ckpt-5.data-00000-of-00001").read_bytes()
    fs.pipe_file(f"{gcs_bucket}/runs/a/ckpt-6.data-00000-of-00001", data)
    await asyncio.sleep(0.3)
    assert c.events == []  # no index yet
    fs.pipe_file(f"{gcs_bucket}/runs/a/ckpt-6.index", (local / "ckpt-5.index").read_bytes())
    ev = (await c.wait_for(1))[0]
    assert ev["step"] == 6 and ev["path"] == f"{url}/ckpt-6"
    assert ev["files"] == ["ckpt-6.index", "ckpt-6.data-00000-of-00001"]
    await c.stop()


@pytest.mark.gcs
async def test_gcs_real_dir_uploaded(gcs_emulator, gcs_bucket, tf_checkpoints):
    v = tf_checkpoints["sharded"]
    upload_dir(gcs_emulator.fs(), v.dir, f"{gcs_bucket}/sharded")
    ev = await first_event(CheckpointTrigger(dir=f"gs://{gcs_bucket}/sharded", poll_interval=0.05))
    assert ev["step"] == 1 and len([f for f in ev["files"] if ".data-" in f]) == 4


# ------------------------------------------------------------------------------------------ event trigger


async def test_event_trigger_one_event_per_step_in_order(tmp_path):
    d = tmp_path / "run"
    make_step(d, 1)
    commit(d, [1])
    trig = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
    trig.persist_delay = 0.05
    store = trig.asset_state_store = FakeAssetStore()
    c = Collector(trig)
    await c.wait_for(1)
    for n in (2, 3, 4):  # several steps committed between two polls: each one, oldest first
        make_step(d, n)
    commit(d, [1, 2, 3, 4])
    await c.wait_for(4)
    await asyncio.sleep(0.4)
    assert c.steps == [1, 2, 3, 4]  # and never again
    assert store.data[trig.watermark_key()]["step"] == 4
    make_step(d, 5)
    commit(d, [3, 4, 5])  # max_to_keep dropped old steps: nothing replayed
    await c.wait_for(5)
    await asyncio.sleep(0.3)
    assert c.steps == [1, 2, 3, 4, 5]
    await c.stop()


async def test_event_trigger_resumes_from_persisted_watermark(tmp_path):
    d = tmp_path / "run"
    for n in (10, 20):
        make_step(d, n)
    commit(d, [10, 20])
    store = FakeAssetStore()

    def new_trigger() -> CheckpointEventTrigger:
        t = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
        t.persist_delay = 0.05
        t.asset_state_store = store
        return t

    first = Collector(new_trigger())
    await first.wait_for(2)
    await asyncio.sleep(0.3)  # the watermark reaches the store
    await first.stop()  # triggerer restart
    assert store.data[new_trigger().watermark_key()]["step"] == 20
    make_step(d, 30)
    make_step(d, 40)
    commit(d, [10, 20, 30, 40])  # committed while no triggerer ran
    second = Collector(new_trigger())
    await second.wait_for(2)
    await asyncio.sleep(0.3)
    assert first.steps == [10, 20] and second.steps == [30, 40]  # no replay, no skip
    await second.stop()


async def test_event_trigger_replays_rather_than_skips_on_crash(tmp_path):
    """Killed before the watermark was persisted: the step comes again (never lost)."""
    d = tmp_path / "run"
    make_step(d, 1)
    commit(d, [1])
    store = FakeAssetStore()
    t1 = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
    t1.persist_delay = 60  # the crash happens before the write is due
    t1.asset_state_store = store
    c1 = Collector(t1)
    await c1.wait_for(1)
    await c1.stop()
    assert store.data == {}
    t2 = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
    t2.asset_state_store = store
    c2 = Collector(t2)
    assert [e["step"] for e in await c2.wait_for(1)] == [1]
    await c2.stop()


async def test_event_trigger_without_store_and_after_step(tmp_path):
    d = tmp_path / "run"
    for n in (1, 2, 3):
        make_step(d, n)
    commit(d, [1, 2, 3])
    trig = CheckpointEventTrigger(dir=str(d), after_step=2, poll_interval=0.05)  # no asset store
    c = Collector(trig)
    await c.wait_for(1)
    await asyncio.sleep(0.2)
    assert c.steps == [3] and trig.watermark == 3
    await c.stop()


async def test_event_trigger_passes_over_a_damaged_step(tmp_path):
    d = tmp_path / "run"
    make_step(d, 1)
    make_step(d, 3)
    (d / "ckpt-2.index").write_bytes(b"i")  # named, its shard never arrives
    commit(d, [1, 2])
    trig = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
    c = Collector(trig)
    await c.wait_for(1)
    await asyncio.sleep(0.3)
    assert c.steps == [1]  # step 2 may still be in flight: wait
    commit(d, [1, 2, 3])
    await c.wait_for(2)
    assert c.steps == [1, 3]
    await c.stop()


# ------------------------------------------------------------------------------------------ the loop


async def test_polling_a_big_dir_does_not_block_the_loop(tmp_path):
    """A ticker measures loop lag while triggers discover a 5000-step dir and a 5000-step state file.

    The process's start-up objects are frozen first, as a triggerer does with ``[tf_ckpt]
    triggerer_gc_freeze = True``: otherwise a full CPython collection over this pytest process's
    heap (Airflow imported: ~200k objects) lands in the window now and then and stalls every
    thread for 0.2-0.3 s whatever the triggers do (measured here on the old code as on the new).
    That pause is a property of the process, measured in ``bench/triggerer.py --no-gc-freeze``
    and reported in the README; this test is about the polling itself."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        await _poll_big_dir_and_measure_lag(tmp_path)
    finally:
        gc.unfreeze()


async def _poll_big_dir_and_measure_lag(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    for n in range(1, 5001):
        (d / f"ckpt-{n}.index").write_bytes(b"i")
        (d / f"ckpt-{n}.data-00000-of-00001").write_bytes(b"d")
    commit(d, list(range(1, 5001)))
    lags: list[float] = []
    stop = False

    async def ticker() -> None:
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    events = await asyncio.gather(
        *(
            first_event(
                CheckpointTrigger(dir=str(d), after_step=k, pick="oldest", poll_interval=0.05), timeout=60
            )
            for k in (0, 100, 4990)
        )
    )
    took = time.perf_counter() - started
    stop = True
    await tick
    assert [e["step"] for e in events] == [1, 101, 4991]
    # 0.2 s is where issue 8 calls a block a defect (the triggerer's own warning threshold); doing
    # this polling on the loop blocks it for most of `took`. Under load (other processes on 2
    # cores) the OS alone deschedules the loop for 0.1-0.12 s now and then.
    assert max(lags) < 0.2, f"loop blocked for {max(lags):.3f}s while polling took {took:.2f}s"


# ------------------------------------------------------------------------------------------ the hook


def _service_account_key(marker: str, token_uri: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "proj",
        "private_key_id": f"{marker}-kid",
        "private_key": pem,
        "client_email": f"{marker}@proj.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


def test_extras_are_read_like_the_google_provider(tmp_path):
    marker = "MkR7secret"
    info = _service_account_key(marker, "https://oauth2.googleapis.com/token")
    auth = gcs_auth_from_extras(
        {"extra__google_cloud_platform__keyfile_dict": json.dumps(info), "project": "p1"}, "gcp"
    )
    assert type(auth.token).__name__ == "Credentials" and auth.project == "p1"
    assert marker not in repr(auth) and info["private_key"] in auth.secrets
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(info))
    auth = gcs_auth_from_extras({"key_path": str(key_file)}, "gcp")
    assert auth.token.service_account_email == info["client_email"] and auth.project == "proj"
    assert gcs_auth_from_extras({"is_anonymous": True}).token == "anon"
    assert gcs_auth_from_extras({}).token is None  # -> google_default, or anon with an emulator
    assert gcs_auth_from_extras({"endpoint_url": "http://127.0.0.1:1"}).endpoint_url == "http://127.0.0.1:1"
    bad = {"keyfile_dict": '{"type": "service_account", "private_key": "' + marker + '"'}
    for extras, match in [
        (bad, "not valid JSON"),
        (
            {"keyfile_dict": json.dumps({"type": "service_account", "private_key": marker})},
            "not a usable Google credential",
        ),
        ({"key_path": str(tmp_path / "missing.json")}, "not a readable file"),
        ({"keyfile_dict": json.dumps({"type": "external_account", "x": marker})}, "expected service_account"),
        ({"key_path": str(key_file), "keyfile_dict": json.dumps(info)}, "only one"),
        ({"impersonation_chain": "x@y"}, "not supported"),
    ]:
        with pytest.raises(StorageCredentialsError, match=match) as ei:
            gcs_auth_from_extras(extras, "gcp")
        assert marker not in str(ei.value) and ei.value.__cause__ is None


def test_local_paths_need_no_connection(tmp_path):
    hook = CheckpointStorageHook(conn_id="does_not_exist")  # never looked up for local paths
    loc = hook.get_location(tmp_path)
    assert loc.local and loc.path == str(tmp_path)
    assert hook.get_location(f"file://{tmp_path}").local
    assert repr(hook) == "<CheckpointStorageHook conn_id='does_not_exist'>"


@pytest.mark.gcs
async def test_credentials_never_leak(gcs_emulator, gcs_bucket, monkeypatch, caplog, capfd):
    marker = "LEAKMARKER9f3"
    # the emulator is no token endpoint: every refresh fails (401), which is the error path we want
    info = _service_account_key(marker, f"{gcs_emulator.url}/token")
    monkeypatch.setenv(
        "AIRFLOW_CONN_LEAKY_GCP",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": json.dumps(info)}}),
    )
    caplog.set_level(logging.DEBUG)
    url = f"gs://{gcs_bucket}/run"
    trig = CheckpointTrigger(dir=url, conn_id="leaky_gcp", poll_interval=0.05, max_errors=2)
    ev = await first_event(trig, timeout=60)  # the token endpoint refuses the key: errors
    assert ev["status"] == "error" and "401" in ev["message"]
    hook = CheckpointStorageHook("leaky_gcp")
    loc = await hook.aget_location(url)
    texts = [
        json.dumps(ev),
        repr(trig),
        json.dumps(trig.serialize()),
        repr(hook),
        repr(loc),
        repr(hook._auth),
        str(loc.fs),
        hook.redact(json.dumps(info)),
    ]
    with pytest.raises(Exception) as ei:  # the sync path's refresh (gcsfs retries its requests for 30 s)
        await asyncio.to_thread(loc.fs.credentials.maybe_refresh)
    texts.append(hook.redact(f"{ei.value!r} {ei.value}"))
    out, err = capfd.readouterr()
    texts += [caplog.text, out, err]
    for text in texts:
        assert marker not in text
        assert "BEGIN PRIVATE KEY" not in text
    # and Airflow's secrets masker (task and triggerer logs) knows every string of the key
    from airflow.sdk._shared.secrets_masker.secrets_masker import redact

    assert marker not in str(redact(f"{info['client_email']} {info['private_key_id']} {info['private_key']}"))
    # the hook's own error paths name the field, never the value
    monkeypatch.setenv(
        "AIRFLOW_CONN_BROKEN_GCP",
        json.dumps(
            {"conn_type": "google_cloud_platform", "extra": {"keyfile_dict": '{"private_key": "' + marker}}
        ),
    )
    ev = await first_event(CheckpointTrigger(dir=url, conn_id="broken_gcp", poll_interval=0.05))
    assert ev["status"] == "error" and "not valid JSON" in ev["message"] and marker not in json.dumps(ev)


@pytest.mark.gcs
async def test_emulator_endpoint_from_connection_extras(gcs_emulator, gcs_bucket, monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_EMU",
        json.dumps(
            {
                "conn_type": "tf_ckpt_storage",
                "extra": {"endpoint_url": gcs_emulator.url, "is_anonymous": True},
            }
        ),
    )
    d = tmp_path / "run"
    make_step(d, 5)
    commit(d, [5])
    upload_dir(gcs_emulator.fs(), d, f"{gcs_bucket}/run")
    started = time.monotonic()
    ev = await first_event(CheckpointTrigger(dir=f"gs://{gcs_bucket}/run", conn_id="emu", poll_interval=0.05))
    assert ev["step"] == 5
    loc = CheckpointStorageHook("emu").get_location(f"gs://{gcs_bucket}/run")
    assert sorted(loc.listdir()) == ["checkpoint", "ckpt-5.data-00000-of-00001", "ckpt-5.index"]
    assert time.monotonic() - started < 10  # no minute-long gRPC bucket-type probe
    assert isinstance(GcsAuth(token="anon"), GcsAuth)
    assert os.environ.get("STORAGE_EMULATOR_HOST") is None


@pytest.mark.parametrize("on", [True, False])
async def test_triggerer_gc_freeze_option(on, tmp_path, monkeypatch):
    """``[tf_ckpt] triggerer_gc_freeze``: the first trigger to run in the process freezes the
    objects start-up loaded (once); off, the default, it leaves the collector alone."""
    import gc

    from airflow_tf_ckpt.triggers import checkpoint as mod

    monkeypatch.setenv("AIRFLOW__TF_CKPT__TRIGGERER_GC_FREEZE", str(on))
    monkeypatch.setattr(mod, "_GC_FROZEN", False)
    gc.unfreeze()
    d = tmp_path / "run"
    make_step(d, 1)
    commit(d, [1])
    try:
        for trig in (
            CheckpointTrigger(dir=str(d), poll_interval=0.05),
            CheckpointEventTrigger(dir=str(d), poll_interval=0.05),
        ):
            c = Collector(trig)
            await c.wait_for(1)
            await c.stop()
        frozen = gc.get_freeze_count()
        assert (frozen > 1000) if on else frozen == 0, frozen
        assert mod._GC_FROZEN is on
        assert mod.freeze_gc_once() is False  # once per process
    finally:
        gc.unfreeze()


def test_a_dir_that_does_not_exist_yet_is_waited_for_not_an_error(tmp_path):
    """The sensor (poke) and the triggers poll a dir the trainer has not created yet as empty."""
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    missing = str(tmp_path / "not" / "yet")
    poller = CheckpointTrigger(dir=missing, poll_interval=0.2).make_poller()
    assert poller.poll(CheckpointStorageHook(None).open(missing), None, "newest") == ([], None)

    async def apoll():
        async with CheckpointStorageHook(None).aopen(missing) as adir:
            return await poller.apoll(adir, None, "newest")

    assert asyncio.run(apoll()) == ([], None)


# ------------------------------------------------------------------------------------------ agreement with TF


async def test_latest_step_with_files_missing_waits_like_tf(copy_variant, tf_run, capfd, caplog):
    """The state file names ckpt-5 as latest but its files are gone: TF's latest_checkpoint says None
    (a trainer would start from scratch). The trigger and the sensor's poke must not quietly fire
    ckpt-4 instead: they wait, with one warning naming the missing file, and fire ckpt-5 once its
    files are back (a copy tool that uploaded ``checkpoint`` first)."""
    from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor

    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5, written by TF's CheckpointManager
    saved = {p.name: p.read_bytes() for p in d.glob("ckpt-5.*")}
    assert any(n.endswith(".index") for n in saved)
    for name in saved:
        (d / name).unlink()
    assert tf_run("latest_checkpoint", str(d)) is None  # the oracle
    caplog.set_level(logging.WARNING)
    c = Collector(CheckpointTrigger(dir=str(d), poll_interval=0.05))
    await asyncio.sleep(0.6)
    assert c.events == []  # today's code fired ckpt-4 here
    sensor = CheckpointSensor(task_id="wait", dir=str(d), settle_seconds=0)
    assert sensor.poke({}) is False
    out = capfd.readouterr().out + caplog.text
    warnings = [ln for ln in out.splitlines() if "ckpt-5.index" in ln and "latest" in ln]
    assert len(warnings) == 2, out  # one for the trigger (not one per poll), one for the poke
    assert str(d / "ckpt-5.index") in warnings[0]
    for name, data in saved.items():
        (d / name).write_bytes(data)
    assert (await c.wait_for(1))[0]["step"] == 5
    assert sensor.poke({}).xcom_value["step"] == 5
    await c.stop()


async def test_newest_never_fires_past_what_tf_calls_latest(copy_variant, tf_run, capfd, caplog):
    """A rollback with TF's own ``update_checkpoint_state``: ``model_checkpoint_path`` names ckpt-4
    while ``all_model_checkpoint_paths`` still lists ckpt-5. TF's ``latest_checkpoint`` returns
    ckpt-4 (a restarted trainer resumes there). Before: ``pick="newest"`` fired ckpt-5 (the highest
    listed step). Now the trigger and the poke fire ckpt-4, and say once why ckpt-5 does not fire."""
    from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor

    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5, written by TF's CheckpointManager
    latest = tf_run(
        "tf.compat.v1.train.update_checkpoint_state(args[0], 'ckpt-4', all_model_checkpoint_paths="
        "['ckpt-3', 'ckpt-4', 'ckpt-5']); result = tf.train.latest_checkpoint(args[0])",
        str(d),
    )
    assert latest == str(d / "ckpt-4")  # the oracle
    caplog.set_level(logging.WARNING)
    c = Collector(CheckpointTrigger(dir=str(d), after_step=3, poll_interval=0.05))
    assert (await c.wait_for(1))[0]["checkpoint"] == "ckpt-4"
    await asyncio.sleep(0.3)
    assert [e["checkpoint"] for e in c.events] == ["ckpt-4"]
    await c.stop()
    sensor = CheckpointSensor(task_id="wait", dir=str(d), settle_seconds=0)
    assert sensor.poke({}).xcom_value["checkpoint"] == "ckpt-4"
    out = capfd.readouterr().out + caplog.text
    assert "also lists newer ckpt-5" in out and "latest_checkpoint returns ckpt-4" in out, out


async def test_event_trigger_with_several_assets_keeps_the_watermark_in_memory(tmp_path, capfd, caplog):
    """Airflow's own store for two watched assets: its public aget/aset refuse to pick one, so the
    watermark lives in memory (said once); events still flow, in order."""
    from airflow.sdk import Asset
    from airflow.sdk.execution_time.context import AssetStateStoreAccessors

    d = tmp_path / "run"
    for n in (1, 2):
        make_step(d, n)
    commit(d, [1, 2])
    trig = CheckpointEventTrigger(dir=str(d), poll_interval=0.05)
    trig.persist_delay = 0.05
    trig.asset_state_store = AssetStateStoreAccessors(
        inlets=[Asset("a", uri="x-a://a"), Asset("b", uri="x-b://b")]
    )
    c = Collector(trig)
    await c.wait_for(2)
    await asyncio.sleep(0.3)
    assert c.steps == [1, 2] and trig.persisted == 2
    assert "asset state store cannot be used" in capfd.readouterr().out + caplog.text
    await c.stop()


# ------------------------------------------------------------------------------------------ hook API


def test_token_freshness_from_public_google_auth_fields():
    import datetime as dt

    from google.oauth2.credentials import Credentials

    from airflow_tf_ckpt.hooks.readers import token_fresh

    utcnow = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # google-auth: naive UTC
    assert token_fresh(Credentials(token="t", expiry=utcnow + dt.timedelta(hours=1)), 420)
    assert not token_fresh(Credentials(token="t", expiry=utcnow + dt.timedelta(seconds=200)), 420)
    assert not token_fresh(Credentials(token=None), 420)  # no token yet
    assert token_fresh(Credentials(token="t"), 420)  # no expiry


@pytest.mark.gcs
def test_get_conn_has_basehooks_signature(gcs_emulator, gcs_bucket, monkeypatch):
    import inspect

    from airflow.sdk import BaseHook

    assert (
        list(inspect.signature(CheckpointStorageHook.get_conn).parameters)
        == list(inspect.signature(BaseHook.get_conn).parameters)
        == ["self"]
    )
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_EMU_CONN",
        json.dumps(
            {
                "conn_type": "tf_ckpt_storage",
                "extra": {"endpoint_url": gcs_emulator.url, "is_anonymous": True},
            }
        ),
    )
    gcs_emulator.fs().pipe_file(f"{gcs_bucket}/run/checkpoint", b'model_checkpoint_path: "ckpt-1"\n')
    fs = CheckpointStorageHook("emu_conn").get_conn()  # the connection's gs://, no argument
    assert fs.cat_file(f"{gcs_bucket}/run/checkpoint").startswith(b"model_checkpoint_path")
