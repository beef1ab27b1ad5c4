"""Live concurrency: a real TF trainer, our GC and an evaluator on one dir at the same time.

* trainer (subprocess, ``tests/crash_worker.py trainer``): ``tf.train.CheckpointManager(
  max_to_keep=None)``, a save every 100 ms;
* GC (a thread here): ``plan_retention`` + ``apply_plan`` with keep-last 3, in a loop;
* evaluator (subprocess, ``crash_worker.py evaluator``): takes each new latest step under a lease
  (:func:`leased`), re-checks it is complete, restores it with ``tf.train.Checkpoint`` and checks
  the values are the ones saved at that step;
* a poller (a thread here) reads and parses the ``checkpoint`` state file as fast as it can.

Asserted: the trainer never errors; the state file always exists (once written) and always
parses; the evaluator never fails to restore a step it leased (never opens a deleted or partial
step); GC never deletes the newest step, nor a leased one; the trainer's last step survives.

What really happens with two writers of the state file (measured and printed): TF's
``CheckpointManager`` keeps its own in-memory list of every step it saved (``max_to_keep=None``)
and rewrites the WHOLE state file from it on every save. So each save puts the steps our GC just
deleted back into ``all_model_checkpoint_paths``: the state file then names steps with no files
until the next GC pass drops them again. It always parses (both writers rename a complete temp
file into place), TF's ``latest_checkpoint`` only reads ``model_checkpoint_path`` (always the
trainer's newest, which GC never deletes), and the trainer never reads the file back, so nothing
breaks; but "the state file names only existing steps" cannot hold while a TF trainer with
``max_to_keep=None`` is running. The figure ``stale_polls`` below is how often a poll saw that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.formats.state import parse_state
from airflow_tf_ckpt.core.retention.executor import PlanConflictError, apply_plan
from airflow_tf_ckpt.core.retention.plan import DELETE
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import KeepLastN
from airflow_tf_ckpt.core.storage.location import Location
from tests.fixtures.tf_checkpoints import REPO_ROOT, _env, tf_available

WORKER = REPO_ROOT / "tests" / "crash_worker.py"


def _step(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker died before it was ready: {p.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{path.name} not ready after {timeout} s"
        time.sleep(0.1)


def live_run(tmp_path: Path, seconds: float) -> dict:
    d = tmp_path / "train"
    d.mkdir()
    stop, t_ready, e_ready, e_out = (tmp_path / n for n in ("stop", "t_ready", "e_ready", "eval.json"))
    trainer = subprocess.Popen(
        [sys.executable, str(WORKER), "trainer", str(d), str(t_ready), str(stop), "0.1"],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    evaluator = subprocess.Popen(
        [sys.executable, str(WORKER), "evaluator", str(d), str(e_ready), str(stop), str(e_out)],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs = [trainer, evaluator]
    try:
        _wait_for(t_ready, procs, 300)
        _wait_for(e_ready, procs, 300)
        loc = Location.of(d)
        done = threading.Event()
        poll = {"reads": 0, "parse_errors": [], "missing_after_seen": 0, "stale_polls": 0}
        gc = {"passes": 0, "conflicts": 0, "deleted": [], "errors": [], "violations": []}

        def poller() -> None:
            seen = False
            while not done.is_set():
                try:
                    data = (d / "checkpoint").read_bytes()
                except FileNotFoundError:
                    if seen:
                        poll["missing_after_seen"] += 1
                    continue
                seen = True
                poll["reads"] += 1
                try:
                    st = parse_state(data)
                    assert st.model_checkpoint_path, "empty model_checkpoint_path"
                except Exception as exc:  # noqa: BLE001 - every failure is a finding
                    poll["parse_errors"].append(f"{type(exc).__name__}: {exc}: {data[:200]!r}")
                    continue
                if poll["reads"] % 20 == 0:  # sample: does it name steps without files?
                    if any(
                        not (d / f"{os.path.basename(p)}.index").exists()
                        for p in st.all_model_checkpoint_paths
                    ):
                        poll["stale_polls"] += 1

        def collector() -> None:
            while not done.is_set():
                try:
                    plan = plan_retention(loc, [KeepLastN(3)])
                    kept = [d_.prefix for d_ in plan.decisions if d_.action != DELETE]
                    res = apply_plan(plan)
                except PlanConflictError:
                    gc["conflicts"] += 1
                    continue
                except Exception as exc:  # noqa: BLE001
                    gc["errors"].append(f"{type(exc).__name__}: {exc}")
                    continue
                gc["passes"] += 1
                if not res.ok:
                    gc["errors"] += res.errors
                final_kept = [d_.prefix for d_ in res.plan.decisions if d_.action != DELETE] or kept
                newest = max((_step(p) for p in final_kept), default=-1)
                for p in res.deleted_steps:
                    if _step(p) >= newest:
                        gc["violations"].append(f"deleted {p} but the newest kept is {newest}")
                gc["deleted"] += res.deleted_steps
                time.sleep(0.2)

        threads = [threading.Thread(target=poller), threading.Thread(target=collector)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.touch()
        t_out, t_err = trainer.communicate(timeout=120)
        evaluator.communicate(timeout=120)
        done.set()
        for t in threads:
            t.join(timeout=120)
        tr = json.loads(t_out.strip().splitlines()[-1]) if t_out.strip() else {"error": t_err[-3000:]}
        ev = json.loads(e_out.read_text())
        last = tr.get("last")
        return {
            "trainer": tr,
            "evaluator": ev,
            "poll": poll,
            "gc": gc,
            "dir": d,
            "last_exists": bool(last) and Path(f"{last}.index").exists(),
        }
    finally:
        stop.touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def check(r: dict, label: str, min_saves: int) -> None:
    tr, ev, poll, gc = r["trainer"], r["evaluator"], r["poll"], r["gc"]
    print(
        f"\n[{label}] trainer saves {tr.get('saves')}, last {os.path.basename(tr.get('last') or '')}; "
        f"GC passes {gc['passes']}, conflicts (re-plan refused) {gc['conflicts']}, steps deleted "
        f"{len(gc['deleted'])}; evaluator restored {len(ev['evaluated'])}, skipped {len(ev['skipped'])} "
        f"(gone before lease {ev['gone_before_lease']}); state polls {poll['reads']}, parse errors "
        f"{len(poll['parse_errors'])}, sampled polls naming deleted steps {poll['stale_polls']}"
    )
    assert tr.get("error") is None, tr
    assert tr["saves"] >= min_saves, tr
    assert poll["parse_errors"] == [] and poll["missing_after_seen"] == 0, poll
    assert poll["reads"] > 100
    assert ev["errors"] == [], ev["errors"][:5]
    assert len(ev["evaluated"]) >= 3, ev
    assert gc["errors"] == [] and gc["violations"] == [], gc
    assert gc["passes"] >= 3 and len(gc["deleted"]) >= 3, gc
    assert r["last_exists"], "the trainer's newest step was deleted"


pytestmark = pytest.mark.skipif(not tf_available(), reason="TensorFlow is not installed")


def test_live_trainer_gc_evaluator_short(tmp_path):
    check(live_run(tmp_path, 15), "live 15 s", min_saves=20)


@pytest.mark.long
def test_live_trainer_gc_evaluator_long(tmp_path):
    check(live_run(tmp_path, 120), "live 120 s", min_saves=200)
