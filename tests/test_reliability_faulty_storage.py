"""Faulty storage: the GCS emulator behind ``tests/faulty_proxy.py``, which answers 503 or resets
the connection (before, or AFTER forwarding) on a seeded 10 % of requests.
``STORAGE_EMULATOR_HOST`` points at the proxy, so every gs:// call of the core goes through it.

The chain discover -> verify -> GC (keep-last 1) -> promote must end exactly where a fault-free run
of the same chain ends: the same files in the source and the destination, the same state files,
the same promoted step with the same CRCs, nothing wrongly deleted or promoted.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.formats.state import read_state
from airflow_tf_ckpt.core.promote.manifest import read_alias, read_manifest
from airflow_tf_ckpt.core.promote.promote import check_promotion, promote
from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import policies_from_options
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from tests.faulty_proxy import FaultyProxy
from tests.test_dags import example_dags  # noqa: F401 - the DAG-chain fixture, reused below

pytestmark = pytest.mark.gcs


@pytest.fixture
def proxy(gcs_emulator, monkeypatch):
    p = FaultyProxy(gcs_emulator.url, seed=7, rate=0.10).start()
    p.enabled = False
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", p.url)
    try:
        yield p
    finally:
        p.stop()


def upload(loc: Location, local: Path) -> None:
    for f in sorted(local.iterdir()):
        if f.is_file():
            loc.fs.pipe_file(loc.join(f.name), f.read_bytes())


def chain(src: str, dest: str, keep_last: int = 1) -> dict:
    """discover -> verify the latest -> GC -> promote the latest; what a DAG run does."""
    s = Location.of(src)
    cdir = discover(s)
    latest = cdir.latest()
    rep = verify_step(s, latest.prefix)
    assert rep.ok, rep.problems
    res = apply_plan(plan_retention(s, policies_from_options(keep_last=keep_last)))
    assert res.ok, res.errors
    pr = promote(s, dest, latest.step, alias="prod")
    return {"latest": latest.prefix, "deleted": res.deleted_steps, "promoted": pr.prefix}


def outcome(src: str, dest: str) -> dict:
    """Everything that must match the fault-free run (read with faults off)."""
    s, d = Location.of(src), Location.of(dest)
    m, a = read_manifest(d), read_alias(d, "prod")
    st = read_state(s)
    return {
        "src_files": sorted(n for n in s.listdir() if ".lease-" not in n),
        "src_state": (st.model_checkpoint_path, st.all_model_checkpoint_paths),
        "dest_files": sorted(d.listdir()),
        "dest_state": read_state(d).model_checkpoint_path,
        "manifest": (m.prefix, [f.to_dict() for f in m.files]),
        "alias": (a.prefix, [f.to_dict() for f in a.files]),
        "problems": check_promotion(d, deep=True),
    }


def _run(
    proxy: FaultyProxy,
    tf_checkpoints,
    gcs_emulator,
    kinds: tuple[str, ...],
    seed: int,
    targets: list[tuple[str, str, str]] = (),
) -> dict:
    # a fixed bucket name: the faults hang on request paths, so a seed always picks the same ones
    bucket = f"faulty-{'-'.join(k.replace('_', '') for k in kinds)}-{seed}-{len(targets)}"
    gcs_emulator.fs().mkdir(bucket)
    variant = tf_checkpoints["tf2_manager"]
    ref_src, ref_dest = f"gs://{bucket}/ref/ckpt", f"gs://{bucket}/ref/promoted"
    src, dest = f"gs://{bucket}/run/ckpt", f"gs://{bucket}/run/promoted"
    upload(Location.of(ref_src), variant.dir)
    upload(Location.of(src), variant.dir)
    want_chain = chain(ref_src, ref_dest)
    want = outcome(ref_src, ref_dest)
    assert want["problems"] == [] and want_chain["deleted"] == variant.prefixes[:-1]

    proxy.seed, proxy.kinds = seed, kinds
    proxy.weights = [1.0 / len(kinds)] * len(kinds)
    proxy.stats.clear()
    proxy.log.clear()
    proxy.targets = list(targets)
    proxy.enabled = True
    t0 = time.monotonic()
    try:
        got_chain = chain(src, dest)
    finally:
        proxy.enabled = False
    took = time.monotonic() - t0
    got = outcome(src, dest)
    assert got_chain == want_chain
    assert got == want, (got, want)
    faults = {k: v for k, v in proxy.stats.items() if k not in ("requests", "client_errors")}
    print(
        f"\n[faulty storage {'+'.join(kinds)} seed {seed}] {proxy.stats['requests']} requests, "
        f"faults {faults}, chain {took:.1f} s"
    )
    return faults


@pytest.mark.parametrize("kinds", [("503",), ("reset",), ("503", "reset")], ids="+".join)
def test_core_chain_through_faults(kinds, proxy, tf_checkpoints, gcs_emulator):
    faults = _run(proxy, tf_checkpoints, gcs_emulator, kinds, seed=7)
    assert sum(faults.values()) >= 1, "the seed injected no fault: pick another"


def test_core_chain_reset_after_the_request_took_effect(proxy, tf_checkpoints, gcs_emulator):
    faults = _run(proxy, tf_checkpoints, gcs_emulator, ("reset_after",), seed=7)
    assert faults.get("reset_after", 0) >= 1


def test_lost_answer_to_the_lock_create_is_not_someone_elses_lock(proxy, tf_checkpoints, gcs_emulator):
    """Regression: the create-only upload of ``.promote.lock`` took effect but its answer was lost;
    gcsfs retried, got 412 and the promotion refused ITSELF ("another promotion holds the lock",
    naming its own pid) for the lock's 6 h TTL. The lock token now tells our own lock apart."""
    faults = _run(
        proxy,
        tf_checkpoints,
        gcs_emulator,
        ("reset_after",),
        seed=7,
        targets=[("reset_after", "POST", ".promote.lock")],
    )
    assert proxy.targets == []  # the forced fault was used
    assert faults["reset_after"] >= 1


@pytest.mark.long
def test_core_chain_through_faults_many_seeds(proxy, tf_checkpoints, gcs_emulator):
    total: dict[str, int] = {}
    seeds = range(100, 112)
    for seed in seeds:
        for k, v in _run(proxy, tf_checkpoints, gcs_emulator, ("503", "reset", "reset_after"), seed).items():
            total[k] = total.get(k, 0) + v
    print(f"\n[faulty storage, {len(seeds)} seeds, all kinds] faults {total}")
    assert total.get("reset_after", 0) >= 5 and total.get("503", 0) >= 5 and total.get("reset", 0) >= 5


# ---------------------------------------------------------------------------------------------
# the full DAG chain (train -> sensor -> validate -> evaluate -> promote-if-best, then GC) via
# dag.test(), with every gs:// request of the run going through the proxy


@pytest.mark.long
@pytest.mark.airflow
def test_dag_chain_through_faults(proxy, gcs_emulator, request, monkeypatch, capfd):
    from tests.test_dags import _chain

    run = request.getfixturevalue("example_dags")
    bucket = "faulty-dag-chain"
    gcs_emulator.fs().mkdir(bucket)
    root = f"gs://{bucket}/demo"
    monkeypatch.setenv("TF_CKPT_DEMO_DIR", root)
    proxy.seed, proxy.rate = 11, 0.10
    proxy.stats.clear()
    proxy.enabled = True
    t0 = time.monotonic()
    try:
        # _chain asserts the fault-free expectation: every step evaluated once and in order, the
        # promoted step is the real argmin of the losses, GC keeps exactly {newest, best}
        out = _chain(run, root, capfd)
    finally:
        proxy.enabled = False
    faults = {k: v for k, v in proxy.stats.items() if k not in ("requests", "client_errors")}
    print(
        f"\n[faulty DAG chain seed 11] {proxy.stats['requests']} requests, faults {faults}, "
        f"{time.monotonic() - t0:.0f} s; losses {out['losses']}, promoted {out['promoted']}"
    )
    d = Location.of(f"{root}/promoted")
    assert check_promotion(d, deep=True) == []
    assert sum(faults.values()) >= 5
