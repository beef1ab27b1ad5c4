"""The Airflow half of ``make demo``: the example DAGs, run for real on a fresh Airflow.

1. A fresh ``AIRFLOW_HOME`` under ``demo_output/airflow/`` on SQLite, ``airflow db migrate``, and the
   repository's ``dags/`` as the dags folder; checkpoints under ``demo_output/airflow/run``.
2. Three rounds: ``tf_ckpt_train_demo`` trains a tiny Keras model and saves two more steps; then
   ``tf_ckpt_evaluate_each_step`` runs once per step the trainer committed (its sensor takes the
   OLDEST step after its watermark, so none is skipped): validate -> evaluate -> promote if best.
   In round 2 one step is corrupted before it is evaluated: validation fails, lists the problem
   and quarantines it (TF's ``latest_checkpoint`` never names it again); the next run moves on.
3. ``tf_ckpt_gc`` (dry run, then for real) deletes what the retention policies do not keep.
4. A summary: the steps the sensor saw, the metrics of each step, what GC kept and deleted, what
   is quarantined and which step is promoted. The script exits non-zero if any step the trainer
   saved was skipped, or anything else is not as expected.

Every DAG runs with ``dag.test()`` in THIS process (one TensorFlow import, about 2 minutes on
2 cores). Airflow's own task logs go to ``demo_output/airflow/dag_runs.log``. Nothing listens on
the network. Run: ``.venv/bin/python scripts/airflow_demo.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo_output" / "airflow"
HOME = OUT / "airflow_home"
ROOT = OUT / "run"  # TF_CKPT_DEMO_DIR: checkpoints/ and promoted/ below it
LOG = OUT / "dag_runs.log"

ROUNDS = 3
STEPS_PER_ROUND = 4
SAVE_EVERY = 2
CORRUPT_IN_ROUND = 2  # the OLDER of that round's two new steps gets a flipped byte


def _configure_env() -> None:
    """Point Airflow at the fresh home BEFORE anything imports it (it reads config at import)."""
    for key in [k for k in os.environ if k.startswith("AIRFLOW__") or k == "AIRFLOW_CONFIG"]:
        os.environ.pop(key)
    os.environ.update({
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(HOME / "logs"),
        "AIRFLOW__TF_CKPT__POLL_INTERVAL": "1",
        "TF_CKPT_DEMO_DIR": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    os.environ.pop("TF_CKPT_CONN_ID", None)
    os.environ.pop("STORAGE_EMULATOR_HOST", None)


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


@contextlib.contextmanager
def _to_log() -> Iterator[None]:
    """Send fds 1 and 2 (Airflow's structlog, TF's C++ logs) to the run log for a while."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(LOG, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _log_tail(n: int = 60) -> str:
    lines = LOG.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


class Demo:
    def __init__(self) -> None:
        from airflow.dag_processing.dagbag import DagBag

        with _to_log():
            bag = DagBag(dag_folder=str(REPO / "dags"))
        if bag.import_errors:
            raise SystemExit("DAG import errors:\n" + "\n".join(f"{k}: {v}" for k, v in bag.import_errors.items()))
        self.dags = bag.dags
        self.seen: list[tuple[int, str]] = []  # (step, outcome) as the sensor handed them out
        self.gc_results: list[dict[str, Any]] = []
        self.saved: list[int] = []
        self.metrics: dict[int, dict[str, float]] = {}  # from the evaluate tasks' XComs

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        with _to_log():
            print(f"\n######## {dag_id} {conf or {}}", flush=True)
            dr = self.dags[dag_id].test(run_conf=conf)
        out = _collect(dr)
        out["seconds"] = time.monotonic() - t0
        return out

    # ------------------------------------------------------------------------------------------

    def location(self, name: str = "checkpoints") -> Any:
        from airflow_tf_ckpt.core.storage import Location

        return Location.of(str(ROOT / name))

    def pending(self) -> list[int]:
        """Committed steps with no metrics yet and not quarantined: what the evaluator still owes."""
        from airflow_tf_ckpt.core.discovery import discover

        cdir = discover(self.location(), "ckpt")
        return sorted(s.step for s in cdir.committed("ckpt") if s.step is not None and not s.quarantined
                      and not any(f.name.endswith(".metrics.json") for f in s.sidecars))

    def train(self, rnd: int) -> list[int]:
        r = self.run("tf_ckpt_train_demo", {"steps": STEPS_PER_ROUND, "save_every": SAVE_EVERY})
        if r["state"] != "success":
            raise SystemExit(f"training failed:\n{_log_tail()}")
        steps = r["xcoms"]["train"]["steps"]
        losses = r["xcoms"]["train"]["losses"]
        self.saved += steps
        say(f"round {rnd}: trainer saved steps {steps} (train loss "
            + ", ".join(f"{k}: {v:.3f}" for k, v in losses.items()) + f") [{r['seconds']:.0f} s]")
        return steps

    def corrupt(self, step: int) -> None:
        shard = ROOT / "checkpoints" / f"ckpt-{step}.data-00000-of-00001"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
        say(f"round {CORRUPT_IN_ROUND}: flipped one byte in {shard.relative_to(REPO)} (bit rot / a bad copy)")

    def evaluate_pending(self) -> None:
        for _ in range(20):  # more than enough; guards against a loop that makes no progress
            pending = self.pending()
            if not pending:
                return
            r = self.run("tf_ckpt_evaluate_each_step")
            wait = r["xcoms"].get("wait") or {}
            step = wait.get("step")
            states = r["task_states"]
            if r["state"] == "success":
                metrics = r["xcoms"]["evaluate"]["metrics"]
                self.metrics[step] = metrics
                promoted = states.get("promote_if_best") == "success"
                outcome = f"loss {metrics['loss']:.4f}" + (" -> PROMOTED (best so far)" if promoted else "")
                self.seen.append((step, "evaluated" + (", promoted" if promoted else "")))
            elif states.get("validate") == "failed":
                outcome = "CORRUPT: validation failed, step quarantined"
                self.seen.append((step, "quarantined"))
            else:
                raise SystemExit(f"evaluation run failed unexpectedly ({states}):\n{_log_tail()}")
            say(f"  evaluate_each_step: sensor picked step {step}: {outcome} [{r['seconds']:.0f} s]")
        raise SystemExit(f"steps still pending after 20 runs: {self.pending()}")

    def gc(self, dry_run: bool) -> dict[str, Any]:
        conf = {"keep_last": 2, "keep_best": 1, "keep_every_steps": 10, "dry_run": dry_run}
        r = self.run("tf_ckpt_gc", conf)
        if r["state"] != "success":
            raise SystemExit(f"GC failed:\n{_log_tail()}")
        x = r["xcoms"]["retention"]
        what = "would delete" if dry_run else "deleted"
        say(f"  tf_ckpt_gc{' (dry run)' if dry_run else ''}: keep_last=2, keep_best=1 by loss, "
            f"keep_every_steps=10: {what} steps {x['deleted_steps']}, kept {x['kept']} "
            f"[{r['seconds']:.0f} s]")
        if not dry_run:
            self.gc_results.append(x)
        return x

    # ------------------------------------------------------------------------------------------

    def summary(self) -> int:
        from airflow_tf_ckpt.core.discovery import discover
        from airflow_tf_ckpt.core.promote import read_manifest

        banner("summary")
        cdir = discover(self.location(), "ckpt")
        on_disk = {s.step: s for s in cdir.steps if s.step is not None}
        deleted = sorted({s for g in self.gc_results for s in g["deleted_steps"]})
        quarantined = sorted(s for s, st in on_disk.items() if st.quarantined)
        manifest = read_manifest(self.location("promoted"))
        seen_steps = [s for s, _ in self.seen]

        say(f"steps saved by the trainer : {self.saved}")
        say(f"steps seen by the sensor   : {seen_steps}  (one DAG run each, oldest first)")
        say("metrics per step (held-out synthetic set; lower is better):")
        for step in self.saved:
            m = self.metrics.get(step)
            note = ("quarantined (corrupt)" if step in quarantined else
                    "deleted by GC" if step in deleted else "kept")
            shown = f"loss {m['loss']:8.4f}  mae {m['mae']:7.4f}" if m else "(no metrics: corrupt)"
            say(f"  ckpt-{step:<3} {shown:<32} {note}")
        say(f"kept on disk               : {sorted(s for s in on_disk if s not in quarantined)}"
            f" + quarantined {quarantined}")
        say(f"deleted by tf_ckpt_gc      : {deleted}")
        if manifest is not None:
            say(f"promoted                   : ckpt-{manifest.step} -> {(ROOT / 'promoted').relative_to(REPO)} "
                "(alias best; " + ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items()) + ")")
        say(f"Airflow home / run log     : {HOME.relative_to(REPO)} / {LOG.relative_to(REPO)}")

        problems = []
        missing = [s for s in self.saved if s not in seen_steps]
        if missing:
            problems.append(f"steps the sensor never handed out: {missing}")
        if sorted(seen_steps) != sorted(set(seen_steps)) or seen_steps != sorted(seen_steps):
            problems.append(f"steps seen out of order or twice: {seen_steps}")
        if len(quarantined) != 1:
            problems.append(f"expected exactly one quarantined step, got {quarantined}")
        if manifest is None:
            problems.append("nothing was promoted")
        else:
            evaluated = {s: m["loss"] for s, m in self.metrics.items()}
            best = min(evaluated, key=lambda s: (evaluated[s], -s))
            if manifest.step != best:
                problems.append(f"promoted ckpt-{manifest.step} but the best evaluated step is ckpt-{best}")
        unevaluated = [s for s in self.saved if s not in self.metrics and s not in quarantined]
        if unevaluated:
            problems.append(f"steps never evaluated: {unevaluated}")
        if not deleted:
            problems.append("GC deleted nothing")
        if problems:
            say("\nDEMO FAILED:\n  " + "\n  ".join(problems))
            return 1
        say("\nevery step was seen exactly once, in order; the corrupt one was quarantined; "
            "the best one is promoted.")
        return 0


def _collect(dr: Any) -> dict[str, Any]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dr.dag_id, DagRun.run_id == dr.run_id))
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id,
                                                         TaskInstance.run_id == dr.run_id)).all()
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id,
                                                  key="return_value")).all()
        return {"state": str(run.state) if run is not None else "unknown",
                "task_states": {ti.task_id: None if ti.state is None else str(ti.state) for ti in tis},
                "xcoms": {r.task_id: XComModel.deserialize_value(r) for r in rows if r.map_index < 0}}


def main() -> int:
    t0 = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    (HOME / "logs").mkdir(parents=True)
    ROOT.mkdir(parents=True)
    _configure_env()

    banner(f"fresh Airflow: AIRFLOW_HOME={HOME.relative_to(REPO)} (SQLite), dags folder dags/")
    airflow = Path(sys.executable).with_name("airflow")
    proc = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        say(proc.stdout[-3000:] + proc.stderr[-3000:])
        return 1
    say("airflow db migrate: ok")

    demo = Demo()
    say(f"DAGs: {', '.join(sorted(demo.dags))}")
    banner(f"train {ROUNDS} rounds; evaluate every committed step; GC after each round from round 2")
    for rnd in range(1, ROUNDS + 1):
        new = demo.train(rnd)
        if rnd == CORRUPT_IN_ROUND:
            demo.corrupt(new[0])
        demo.evaluate_pending()
        if rnd >= 2:
            if rnd == 2:
                demo.gc(dry_run=True)
            demo.gc(dry_run=False)
    rc = demo.summary()
    say(f"\nAirflow demo took {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
