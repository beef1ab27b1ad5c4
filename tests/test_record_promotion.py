"""PROMOTIONS.json under concurrent writers: no record is lost (flock locally, compare-and-swap on
GCS), and a writer that lost the race re-reads rather than overwrites."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

from airflow_tf_ckpt.core.sidecars.promotions import PROMOTIONS_FILENAME, read_promotions, record_promotion
from airflow_tf_ckpt.core.storage import gcs
from airflow_tf_ckpt.core.storage.location import Location

WRITERS, EACH = 6, 8


def _record_many(url: str, writer: int, barrier=None) -> None:
    loc = Location.of(url)
    if barrier is not None:
        barrier.wait()
    for i in range(EACH):
        record_promotion(loc, f"ckpt-{writer * 100 + i}", f"/serving/{writer}", alias=f"a{i}")


def _expect_all(loc: Location) -> None:
    got = {(r["prefix"], r["dest"], r["alias"]) for r in read_promotions(loc)}
    want = {(f"ckpt-{w * 100 + i}", f"/serving/{w}", f"a{i}") for w in range(WRITERS) for i in range(EACH)}
    assert got == want, f"lost {len(want - got)} of {len(want)} records"


def test_processes_on_one_host_lose_no_record(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), w, barrier)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    _expect_all(Location.of(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [PROMOTIONS_FILENAME]  # no temp files left


@pytest.mark.gcs
def test_concurrent_writers_on_gcs_lose_no_record(gcs_bucket):
    url = f"gs://{gcs_bucket}/run"
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            _record_many(url, w, barrier)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    _expect_all(Location.of(url))


@pytest.mark.gcs
def test_write_if_generation_is_a_compare_and_swap(gcs_emulator, gcs_bucket):
    fs = gcs_emulator.fs()
    path = f"{gcs_bucket}/run/x.json"
    assert gcs.read_with_generation(fs, path, 1 << 20, "a test object") == (None, 0)
    assert gcs.write_if_generation(fs, path, b"1", 0)  # create
    assert not gcs.write_if_generation(fs, path, b"2", 0)  # create-only: it exists now
    data, gen = gcs.read_with_generation(fs, path, 1 << 20, "a test object")
    assert data == b"1" and gen > 0
    assert gcs.write_if_generation(fs, path, b"3", gen)
    assert not gcs.write_if_generation(fs, path, b"4", gen)  # stale generation: refused
    assert gcs.read_with_generation(fs, path, 1 << 20, "a test object")[0] == b"3"
