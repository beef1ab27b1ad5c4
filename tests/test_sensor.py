"""CheckpointSensor through ``dag.test()`` on the session's fresh SQLite AIRFLOW_HOME.

Every mode (poke, reschedule, deferrable) on a local dir and on gs:// (the emulator), the automatic
watermark across DAG runs (kept in the asset state store), and a pipeline failure that must not lose
the step. A step is committed by a timer thread while ``dag.test()`` waits, as TF would: data, index,
then the state file last.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_triggers import commit, make_step

pytestmark = pytest.mark.airflow

MODES = {
    "poke": 'mode="poke"',
    "reschedule": 'mode="reschedule"',
    "deferrable": "deferrable=True",
}


class Store:
    """A checkpoint dir the test writes to: local, or a gs:// prefix mirrored from a local dir."""

    def __init__(self, local: Path, fs: Any = None, remote: str | None = None) -> None:
        self.local = local
        self.fs = fs
        self.remote = remote

    @property
    def url(self) -> str:
        return f"gs://{self.remote}" if self.remote else str(self.local)

    def sync(self, names: list[str] | None = None) -> None:
        """Upload the given local files (all by default), the state file last."""
        if self.fs is None:
            return
        names = names if names is not None else sorted(p.name for p in self.local.iterdir())
        for name in sorted(names, key=lambda n: n == "checkpoint"):
            self.fs.pipe_file(f"{self.remote}/{name}", (self.local / name).read_bytes())

    def save(self, step: int, steps: list[int]) -> None:
        """Write step ``step`` like TF does and name ``steps`` in the state file."""
        make_step(self.local, step)
        self.sync([f"ckpt-{step}.data-00000-of-00001", f"ckpt-{step}.index"])
        commit(self.local, steps)
        self.sync(["checkpoint"])


def _sensor_tis(dag_id: str) -> list[tuple[str, str | None, str | None]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.run_id, TaskInstance.state, TaskInstance.next_method).where(
                TaskInstance.dag_id == dag_id, TaskInstance.task_id == "wait"
            )
        ).all()
    return [(r[0], None if r[1] is None else str(r[1]), r[2]) for r in rows]


def when_waiting(dag_id: str, fn: Callable[[], None], delay: float = 1.0) -> threading.Thread:
    """Run ``fn`` ``delay`` seconds after the next run's sensor has checked once and is waiting.

    Keyed on the task's state in the metadata DB, not on wall time (the first ``dag.test()`` of a
    process spends seconds starting the in-process API before any task runs): ``running`` (poke),
    ``up_for_reschedule``, ``deferred``, or queued again with a ``next_method`` (dag.test runs the
    trigger inline while the task instance is queued).
    """
    seen = {run_id for run_id, _, _ in _sensor_tis(dag_id)}

    def waiting() -> bool:
        return any(
            run_id not in seen and (state in ("running", "up_for_reschedule", "deferred") or nm)
            for run_id, state, nm in _sensor_tis(dag_id)
        )

    def _go() -> None:
        deadline = time.monotonic() + 300
        while not waiting() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        fn()

    thread = threading.Thread(target=_go, daemon=True)
    thread.start()
    return thread


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path) -> Iterator[Store]:
    local = tmp_path / "ckpts"
    local.mkdir()
    if request.param == "local":
        yield Store(local)
    else:
        emu = request.getfixturevalue("gcs_emulator")
        yield Store(local, emu.fs(), f"{emu.new_bucket()}/runs/exp1")


def sensor_dag(dag_id: str, url: str, sensor_args: str, body: str = "") -> str:
    return f"""
        import os
        from datetime import datetime
        from airflow.sdk import DAG, task
        from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor

        with DAG({dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1), max_active_runs=1):
            wait = CheckpointSensor(task_id="wait", dir={url!r}, poke_interval=0.3, timeout=120,
                                    {sensor_args})
{body}
    """


@pytest.mark.parametrize("mode", list(MODES))
def test_sensor_waits_for_a_new_step(dag_runner, store, mode, capfd, caplog):
    store.save(1, [1])
    dag_id = f"wait_{mode}_{'gcs' if store.remote else 'local'}"
    timer = when_waiting(dag_id, lambda: store.save(2, [1, 2]))
    res = dag_runner(sensor_dag(dag_id, store.url, f"after_step=1, {MODES[mode]}"), dag_id)
    timer.join()
    out = capfd.readouterr().out + caplog.text
    assert res.ok, res
    info = res.xcoms["wait"]
    assert (info["step"], info["checkpoint"], info["dir"]) == (2, "ckpt-2", store.url)
    assert info["files"] == ["ckpt-2.index", "ckpt-2.data-00000-of-00001"]
    assert info["path"] == (f"{store.url}/ckpt-2")
    assert ("running trigger in line" in out) == (mode == "deferrable")  # it really deferred
    assert (res.reschedules["wait"] > 0) == (mode == "reschedule")  # it really rescheduled


def test_sensor_returns_at_once_when_a_step_is_there(dag_runner, tmp_path, capfd):
    d = tmp_path / "run"
    make_step(d, 5)
    commit(d, [5])
    res = dag_runner(sensor_dag("at_once", str(d), "deferrable=True, settle_seconds=0"), "at_once")
    assert res.ok and res.xcoms["wait"]["step"] == 5
    assert "running trigger in line" not in capfd.readouterr().out  # checked before deferring


def test_deferrable_sensor_retries_by_default_and_keeps_what_the_user_sets():
    from datetime import timedelta

    from airflow.sdk import DAG

    from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor

    with DAG("race_defaults", schedule=None, default_args={"retries": 7}):
        by_dag = CheckpointSensor(task_id="by_dag", dir="/x", deferrable=True)
    with DAG("race_defaults_2", schedule=None):
        default = CheckpointSensor(task_id="default", dir="/x", deferrable=True)
        mine = CheckpointSensor(task_id="mine", dir="/x", deferrable=True, retries=0, retry_delay=60)
        poking = CheckpointSensor(task_id="poking", dir="/x", deferrable=False)
    assert (default.retries, default.retry_delay) == (2, timedelta(seconds=5))
    assert (by_dag.retries, by_dag.retry_delay) == (7, timedelta(seconds=5))
    assert (mine.retries, mine.retry_delay) == (0, timedelta(seconds=60))
    assert (poking.retries, poking.retry_delay) == (0, timedelta(seconds=300))  # Airflow's defaults


def test_the_scheduler_race_after_a_deferral_costs_a_retry_not_the_run(dag_runner, tmp_path):
    """Airflow 3.3's scheduler, fed what it sees when a trigger fires right after the deferral:
    the task back in QUEUED and the deferring process's "success" (same try) handled after it. It
    fails a task that has no retries (what made ``make demo`` fail 1 run in 2); our default retry
    turns that into up_for_retry, and the retry finds the step."""
    from airflow.executors.base_executor import BaseExecutor
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.dagbag import DBDagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    d = tmp_path / "run"
    make_step(d, 5)
    commit(d, [5])
    body = """
            CheckpointSensor(task_id="bare", dir=wait.dir, deferrable=True, retries=0, settle_seconds=0)
"""
    res = dag_runner(sensor_dag("race", str(d), "deferrable=True, settle_seconds=0", body), "race")
    assert res.ok, res
    job_id = 4242
    with create_session() as session:
        tis = {
            ti.task_id: ti
            for ti in session.scalars(
                select(TaskInstance).where(TaskInstance.dag_id == "race", TaskInstance.run_id == res.run_id)
            )
        }
        executor = BaseExecutor()
        for ti in tis.values():  # the trigger re-queued it; the deferral exit's success comes after
            ti.state, ti.queued_by_job_id, ti.next_method = TaskInstanceState.QUEUED, job_id, None
            executor.event_buffer[ti.key] = (TaskInstanceState.SUCCESS, None)
        session.flush()
        SchedulerJobRunner.process_executor_events(executor, job_id, DBDagBag(), session)
        session.flush()
        states = {task_id: ti.state for task_id, ti in tis.items()}
    assert states == {"wait": TaskInstanceState.UP_FOR_RETRY, "bare": TaskInstanceState.FAILED}


def _pipeline(dag_id: str, url: str, sensor_args: str, fail_flag: Path) -> str:
    body = f"""
            @task
            def process(info):
                if os.path.exists({str(fail_flag)!r}):
                    raise RuntimeError("processing failed")
                return info["step"]

            process(wait.output) >> wait.commit_task()
"""
    return sensor_dag(dag_id, url, f'watermark="auto", {sensor_args}', body)


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_auto_watermark_across_runs(dag_runner, store, mode, tmp_path):
    """Run 1 gets the newest step; a failed run keeps it; the next run waits for a NEWER step."""
    store.save(1, [1])
    store.save(2, [1, 2])
    flag = tmp_path / "fail"
    dag_id = f"pipeline_{mode}_{'gcs' if store.remote else 'local'}"
    source = _pipeline(dag_id, store.url, MODES[mode], flag)

    first = dag_runner(source, dag_id)
    assert first.ok and first.xcoms["wait"]["step"] == 2 and first.xcoms["process"] == 2
    assert first.task_states["wait_commit"] == "success" and first.xcoms["wait_commit"] == 2

    store.save(3, [1, 2, 3])
    flag.touch()  # the processing of step 3 fails: the watermark must stay at 2
    failed = dag_runner(source, dag_id)
    assert failed.state == "failed" and failed.xcoms["wait"]["step"] == 3
    assert failed.task_states["wait_commit"] == "upstream_failed"
    flag.unlink()

    again = dag_runner(source, dag_id)  # step 3 again, at once: not lost
    assert again.ok and again.xcoms["wait"]["step"] == 3 and again.xcoms["wait_commit"] == 3

    saved_at: list[float] = []
    timer = when_waiting(dag_id, lambda: (store.save(4, [2, 3, 4]), saved_at.append(time.time())))
    newer = dag_runner(source, dag_id)  # nothing after 3 yet: waits for step 4
    timer.join()
    assert newer.ok and newer.xcoms["wait"]["step"] == 4 and saved_at


def test_auto_watermark_on_success_and_pick_oldest_real_tf(dag_runner, copy_variant, tf_checkpoints):
    """A real TF2 CheckpointManager dir: with pick="oldest" and commit="on_success" every kept step
    comes once, in order, one per run."""
    d = copy_variant("tf2_manager")
    kept = [int(p.rsplit("-", 1)[1]) for p in tf_checkpoints["tf2_manager"].prefixes]
    source = sensor_dag("every_step", str(d), 'watermark="auto", commit="on_success", pick="oldest"')
    got = [dag_runner(source, "every_step").xcoms["wait"]["step"] for _ in kept]
    assert got == kept  # [3, 4, 5]

    # then it waits for a new one: TF's next save (copied from the real step 5)
    def save_six() -> None:
        for src in sorted(d.glob("ckpt-5.data-*")) + [d / "ckpt-5.index"]:
            shutil.copyfile(src, d / src.name.replace("ckpt-5", "ckpt-6"))
        text = (d / "checkpoint").read_text().replace('"ckpt-5"', '"ckpt-6"', 1)
        (d / "checkpoint").write_text(text + 'all_model_checkpoint_paths: "ckpt-6"\n')

    timer = when_waiting("every_step", save_six)
    res = dag_runner(source, "every_step")
    timer.join()
    assert res.ok and res.xcoms["wait"]["step"] == 6
    assert sorted(res.xcoms["wait"]["files"]) == sorted(p.name for p in d.glob("ckpt-6.*"))


@pytest.mark.parametrize("mode", list(MODES))
def test_sensor_fails_with_the_cause_after_storage_errors(dag_runner, tmp_path, mode, capfd, caplog):
    """A malformed state file is retried ``max_errors`` times (counted across reschedules in the
    task state store), then the task fails naming the file."""
    d = tmp_path / "run"
    make_step(d, 1)
    (d / "checkpoint").write_text("not { a state file")
    dag_id = f"broken_{mode}"
    res = dag_runner(sensor_dag(dag_id, str(d), f"max_errors=3, {MODES[mode]}"), dag_id)
    assert res.state == "failed" and res.task_states["wait"] == "failed"
    out = capfd.readouterr().out + caplog.text
    assert "3 consecutive storage errors" in out and str(d / "checkpoint") in out
    if mode == "reschedule":
        assert res.reschedules["wait"] == 2


def test_sensor_parse_time_validation():
    from airflow.sdk import Asset

    from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor, watermark_asset_for

    s = CheckpointSensor(task_id="s", dir="gs://bucket/runs/a", watermark="auto")
    assert s.watermark_asset == watermark_asset_for("gs://bucket/runs/a")
    assert s.watermark_asset.uri == "x-tf-ckpt://gs/bucket/runs/a" and s.watermark_asset in s.inlets
    assert s.poke_interval == 30 and s.settle_seconds == 0  # [tf_ckpt] defaults
    with pytest.raises(ValueError, match="watermark_asset"):
        CheckpointSensor(task_id="t", dir="{{ params.dir }}", watermark="auto")
    mine = Asset(name="my-run")
    assert CheckpointSensor(
        task_id="u", dir="{{ params.dir }}", watermark="auto", watermark_asset=mine
    ).inlets == [mine]
    for bad in ({"watermark": "yes"}, {"commit": "later"}, {"pick": "random"}):
        with pytest.raises(ValueError):
            CheckpointSensor(task_id="v", dir="/x", **bad)
    with pytest.raises(ValueError, match="automatic watermark"):
        CheckpointSensor(task_id="w", dir="/x").commit_task()


def test_event_trigger_watermark_in_the_real_asset_state_store(dag_runner, tmp_path):
    """CheckpointEventTrigger with Airflow's own AssetStateStoreAccessors (what the triggerer
    injects), persisting through the Execution API into the metadata DB: a restarted trigger
    resumes after the stored watermark. (dag.test()'s in-process comms have no ``asend``; the test
    maps it onto ``send``. The triggerer's comms have it.)"""
    d = tmp_path / "run"
    for n in (1, 2):
        make_step(d, n)
    commit(d, [1, 2])
    source = f"""
        import asyncio
        from datetime import datetime
        from pathlib import Path
        from airflow.sdk import DAG, Asset, task
        from airflow.sdk.execution_time.context import AssetStateStoreAccessors
        from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger
        from tests.test_triggers import commit, make_step

        CKPTS = Asset(name="tf-ckpt-event-watermark", uri="x-tf-ckpt://file{d}")
        D = Path({str(d)!r})

        async def drive(n_events):
            trig = CheckpointEventTrigger(dir=str(D), poll_interval=0.05)
            trig.persist_delay = 0.05
            trig.asset_state_store = AssetStateStoreAccessors(inlets=[CKPTS])  # as the triggerer does
            steps = []
            gen = trig.run()
            while len(steps) < n_events:
                steps.append((await gen.__anext__()).payload["step"])
            await asyncio.sleep(0.5)  # let the watermark reach the store
            task = asyncio.ensure_future(gen.__anext__())
            await asyncio.sleep(0.3)
            task.cancel()
            return steps, trig.watermark_key()

        with DAG("event_watermark", schedule=None, start_date=datetime(2024, 1, 1)):
            @task(inlets=[CKPTS])
            def watch(asset_state_store=None):
                from airflow.sdk.execution_time import task_runner

                comms = task_runner.SUPERVISOR_COMMS
                if not hasattr(comms, "asend"):  # dag.test()'s in-process comms lack the async half
                    async def asend(self, msg):
                        return self.send(msg)

                    type(comms).asend = asend  # a slotted attrs class: patch the class
                first, key = asyncio.run(drive(2))
                stored = asset_state_store[CKPTS].get(key)
                make_step(D, 3)
                commit(D, [1, 2, 3])
                second, _ = asyncio.run(drive(1))  # a "restarted triggerer": resumes after 2
                return {{"first": first, "second": second, "stored": stored["step"],
                         "final": asset_state_store[CKPTS].get(key)["step"]}}

            watch()
    """
    res = dag_runner(source, "event_watermark")
    assert res.ok, res
    assert res.xcoms["watch"] == {"first": [1, 2], "second": [3], "stored": 2, "final": 3}
