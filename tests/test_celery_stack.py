"""The example DAGs, unchanged, on a real CeleryExecutor stack; then faults on that stack.

``scripts/stack.py`` brings up Postgres, Redis, the api-server, scheduler, dag-processor,
triggerer, a ``default``-queue worker and a ``gpu``-queue worker, all on 127.0.0.1 (one stack for
the module: bring-up costs minutes). Each test drives the DAGs through the REST API and checks,
from the API: every task with queue ``gpu`` (training, every evaluate) ran on a gpu worker and
every other task on the default worker; every committed step evaluated exactly once by each
evaluation DAG; no run failed; GC deleted no step before both DAGs had evaluated it.

The faults (in this order, on the same stack, each after the previous one's steps are done):

* ``kill -9`` of the gpu worker (its whole process group and the task process) while an
  evaluation holds its lease; a new gpu worker (``gpu2``) is started. The scheduler fails the
  orphaned try on its heartbeat timeout and retries it on ``gpu2`` (deployment settings below:
  the DAGs are unchanged);
* a restart of the triggerer while the sensors are deferred;
* a restart of Redis (the broker) while tasks are queued.

Deployment settings the faults need (none of them is in the DAGs): ``[core]
default_task_retries = 1`` (a killed try is retried), ``[scheduler]
task_instance_heartbeat_timeout = 60`` (an orphaned try is noticed after a minute, not five). Not a
short ``task_queued_timeout``: it is also the lifetime of a queued task's Execution API token, and
with 180 s the evaluations waiting for the single gpu slot failed with "Invalid auth token"
(``scripts/stack.py`` sets 1800 s).

``make test-long`` (and the second step of ``.ci/run``) runs this module.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from deployment import Ledger, read_ledger  # noqa: E402
from stack import CeleryStack, bring_up  # noqa: E402

pytestmark = [pytest.mark.airflow, pytest.mark.tf, pytest.mark.real, pytest.mark.long]

EVAL_DAGS = ("tf_ckpt_evaluate_each_step", "tf_ckpt_event_driven")
ALL_DAGS = ("tf_ckpt_train_demo", *EVAL_DAGS, "tf_ckpt_gc")
FAULT_ENV = {
    "TF_CKPT_DEMO_GC_SCHEDULE": "* * * * *",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRIES": "1",
    "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "5",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryStack]:
    t0 = time.monotonic()
    st = bring_up(tmp_path_factory.mktemp("celery") / "stack", poll_interval=2.0, extra_env=FAULT_ENV)
    try:
        print(f"\nstack up in {time.monotonic() - t0:.0f} s; idle PSS {st.pss_mib():.0f} MiB")
        for dag in (*EVAL_DAGS, "tf_ckpt_gc", "tf_ckpt_train_demo"):  # evaluators and GC first
            st.unpause(dag)
        yield st
    finally:
        t1 = time.monotonic()
        st.stop()
        print(f"stack stopped in {time.monotonic() - t1:.0f} s")
        assert not st.procs


def _train(st: CeleryStack, conf: dict[str, Any], timeout: float = 900) -> None:
    run_id = st.trigger("tf_ckpt_train_demo", conf)
    run = st.wait_run("tf_ckpt_train_demo", run_id, timeout)
    assert run["state"] == "success", st.log_tail("scheduler")


def _wait_all_evaluated(st: CeleryStack, timeout: float) -> Ledger:
    """Until each evaluation DAG handled every committed step and nothing is in flight."""
    deadline = time.monotonic() + timeout
    while True:
        ledger = read_ledger(st)
        done = all(ledger.count(d, s) >= 1 for d in EVAL_DAGS for s in ledger.committed())
        event_idle = all(r["state"] in ("success", "failed") for r in ledger.runs["tf_ckpt_event_driven"])
        cont_ok = sum(r["state"] == "success" for r in ledger.runs["tf_ckpt_evaluate_each_step"])
        if (done and event_idle and cont_ok >= len(ledger.committed())) or ledger.failed_runs():
            time.sleep(5)  # a run about to start (a second evaluation) shows up
            return read_ledger(st)
        if time.monotonic() > deadline:
            missing = {d: [s for s in ledger.committed() if not ledger.count(d, s)] for d in EVAL_DAGS}
            pytest.fail(f"not evaluated after {timeout:.0f} s: {missing}\n{st.log_tail('scheduler')}")
        time.sleep(3)


def _check(st: CeleryStack, ledger: Ledger) -> dict[str, int]:
    assert ledger.problems(EVAL_DAGS) == []
    routing, seen = st.routing_problems(ALL_DAGS)
    assert routing == []
    print("task instances, queue -> worker:", seen)
    return seen


def _leases(st: CeleryStack) -> dict[str, Any]:
    from airflow_tf_ckpt.core.sidecars.leases import read_leases
    from airflow_tf_ckpt.core.storage.location import Location

    return read_leases(Location.of(str(st.ckpt_dir)))


@pytest.mark.timeout(2400)
def test_example_dags_route_to_the_right_workers(stack: CeleryStack) -> None:
    """A burst of 3 steps: training and every evaluation on the gpu worker, the rest on default."""
    t0 = time.monotonic()
    _train(stack, {"steps": 6, "save_every": 2})
    ledger = _wait_all_evaluated(stack, timeout=1800)
    assert ledger.saved == [2, 4, 6]
    seen = _check(stack, ledger)
    assert seen.get("gpu -> gpu", 0) >= 1 + 2 * 3  # the training + 3 steps x 2 evaluation DAGs
    assert seen.get("default -> default", 0) >= 3
    print(f"3 steps trained and evaluated by both DAGs in {time.monotonic() - t0:.0f} s")


@pytest.mark.timeout(2400)
def test_kill_9_gpu_worker_mid_evaluation(stack: CeleryStack) -> None:
    """The evaluation is retried on a new gpu worker; the step is evaluated exactly once in the
    end; GC never deletes it meanwhile; the retry takes over the dead try's lease (it does not
    hold GC off the step until its TTL)."""
    before = set(_leases(stack))
    _train(stack, {"steps": 2, "save_every": 2})  # one more step
    deadline = time.monotonic() + 900
    while not (held := {n: le for n, le in _leases(stack).items() if n not in before and _evaluating(le)}):
        assert time.monotonic() < deadline, "no evaluation took a lease"
        time.sleep(0.5)
    time.sleep(2)  # inside the evaluation (TensorFlow restoring)
    stack.kill_component("worker-gpu")
    print("killed worker-gpu while holding", [le.owner for le in held.values()])
    stack.start_worker("gpu", name="worker-gpu2")
    stack.wait_workers()

    ledger = _wait_all_evaluated(stack, timeout=1800)
    _check(stack, ledger)
    step = max(ledger.committed())
    for dag in EVAL_DAGS:
        assert ledger.count(dag, step) == 1
    retried = [
        ti
        for dag in EVAL_DAGS
        for r in stack.runs(dag)
        for ti in stack.task_instances(dag, r["dag_run_id"])
        if ti["task_id"].endswith("evaluate") and ti["try_number"] > 1
    ]
    assert retried, "no evaluate task was retried"
    assert all(str(ti["hostname"]).startswith("gpu2@") and ti["state"] == "success" for ti in retried), (
        retried
    )
    # the killed try never released its lease; its retry took it over (and released its own)
    stale = [le for n, le in _leases(stack).items() if n in held]
    assert not stale, f"the dead try's lease still holds GC off the step: {stale}"
    deleted = {s for _, steps in ledger.gc_deleted for s in steps}
    assert step not in deleted or all(ledger.count(d, step) == 1 for d in EVAL_DAGS)
    print(f"retried on gpu2: {[ti['task_id'] for ti in retried]}; the dead try's lease was taken over")


@pytest.mark.timeout(2400)
def test_restart_triggerer_while_sensors_deferred(stack: CeleryStack) -> None:
    """No step is skipped or evaluated twice across a triggerer restart."""
    deferred = _deferred(stack)
    assert deferred, "no deferred sensor to restart under"
    stack.kill_component("triggerer", sig=15)
    _train(stack, {"steps": 2, "save_every": 2})  # a step committed while no triggerer runs
    stack.start(components=("triggerer",))
    ledger = _wait_all_evaluated(stack, timeout=1800)
    _check(stack, ledger)


@pytest.mark.timeout(2400)
def test_restart_redis_while_tasks_queued(stack: CeleryStack) -> None:
    """Redis goes away while the gpu queue holds tasks, and a task is published while it is away;
    it comes back; everything gets done and no run fails (before: the scheduler failed every task
    it published during the outage, and their 5 s retry failed the same way)."""
    assert stack.servers is not None
    run_id = stack.trigger("tf_ckpt_train_demo", {"steps": 4, "save_every": 2})
    deadline = time.monotonic() + 600
    while not any(
        ti["state"] in ("queued", "running") for ti in stack.task_instances("tf_ckpt_train_demo", run_id)
    ):
        assert time.monotonic() < deadline, "the training task never got queued"
        time.sleep(0.5)
    stack.servers.stop_redis()
    gc_run = stack.trigger("tf_ckpt_gc", {})  # its task is published while the broker is down
    time.sleep(15)
    stack.servers.start_redis(stack.logs)
    run = stack.wait_run("tf_ckpt_train_demo", run_id, 900)
    assert run["state"] == "success"
    gc = stack.wait_run("tf_ckpt_gc", gc_run, 900)
    assert gc["state"] == "success", stack.log_tail("scheduler")
    ledger = _wait_all_evaluated(stack, timeout=1800)
    _check(stack, ledger)
    stack.check_alive()  # every component survived the broker's restart


def _deferred(st: CeleryStack) -> list[str]:
    out = []
    for dag in EVAL_DAGS:
        for r in st.runs(dag):
            if r["state"] == "running":
                out += [
                    ti["task_id"]
                    for ti in st.task_instances(dag, r["dag_run_id"])
                    if ti["state"] == "deferred"
                ]
    return out


def _evaluating(lease: Any) -> bool:
    """An active lease of an evaluate task (owner ``dag.task.run.map_index.try``)."""
    return bool(lease.active()) and "evaluate" in str(lease.owner).split(".")
