"""Benchmark: commit -> metrics latency on a REAL Airflow deployment vs a warm TF evaluation loop.

Side by side, on the same checkpoint dir and the same machine:

* **ours**: ``scripts/deployment.py`` (scheduler, dag-processor, triggerer, api-server,
  LocalExecutor, SQLite, 127.0.0.1) with only ``tf_ckpt_evaluate_each_step`` unpaused: a deferred
  :class:`CheckpointSensor` polls every ``--poll`` s; a run per step validates it, evaluates it in
  a fresh task process (TensorFlow imported per task) and writes the metrics sidecar;
* **baseline**: the Keras ``SidecarEvaluator`` pattern in one warm process: TF imported and the model
  built once, then ``tf.train.checkpoints_iterator`` (1 s poll), restore, evaluate.

This process saves ``--steps`` steps with ``tf.train.CheckpointManager``, ``--gap`` s apart (each
after a quiet period). Latency = metrics written - step committed (``checkpoint`` state file
written). Ours is broken down from the task instances (REST API) and the evaluate task's log:
waiting for the poll + the trigger firing + the sensor resuming, scheduling gaps between tasks,
the validate task, the evaluate task's start (until it imports TF), the TF import and device
listing, model build + staging, the restore, the evaluation + metrics sidecar (our own log lines
mark the phases: "Importing TensorFlow", "TensorFlow ...", "Restoring ...", "Restored ...").

Python bytecode matters here: each task is a fresh interpreter, and importing TF from a venv with
no ``.pyc`` files (``uv pip install`` writes none by default; ``PYTHONDONTWRITEBYTECODE`` keeps it
that way) compiles TF's Python modules in every task: about 8 s instead of 3 on 2 cores.
``make install`` therefore installs with ``--compile-bytecode`` (pip does it by default).

Target: ours <= the warm loop's + poll interval + 10 s (median over the steps). Exit status 1 if missed.

The floor, in the same run: a bare ``python -c "import tensorflow"`` (a fresh interpreter, as each
task process is), timed before the first save and after the last evaluation (never while a task
runs). Any design that evaluates in a fresh task process pays at least that; where the import alone
is over the 10 s allowed (2 shared cores under load), the target cannot be met by our code, and
the INFO line says by how much ours exceeds warm + poll + that floor.

    python bench/latency.py [--steps 3] [--gap 40] [--poll 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import REPO, child_env, verdict

sys.path.insert(0, str(REPO / "scripts"))
from deployment import Deployment  # noqa: E402

DAG = "tf_ckpt_evaluate_each_step"
WARM_LOOP = r"""
import json, os, sys, time
t0 = time.time()
import tensorflow as tf
from airflow_tf_ckpt.examples.eval import build_checkpoint, evaluate
ckpt = build_checkpoint()
print(json.dumps({"ready": time.time(), "import_s": time.time() - t0}), flush=True)
for path in tf.train.checkpoints_iterator(sys.argv[1], min_interval_secs=0, timeout=float(sys.argv[2])):
    seen = time.time()
    ckpt.restore(path).expect_partial()
    restored = time.time()
    metrics = evaluate(ckpt, None)
    done = time.time()
    print(json.dumps({"prefix": os.path.basename(path), "seen": seen, "restore_s": restored - seen,
                      "eval_s": done - restored, "done": done}), flush=True)
"""


TF_IMPORT = "import time; t = time.perf_counter(); import tensorflow; print(time.perf_counter() - t)"


def tf_import_floor() -> float:
    """Seconds a fresh interpreter spends in ``import tensorflow`` (whole process start not counted),
    in the environment the deployment's task processes get (this process's): no private bytecode
    cache, so a venv installed without bytecode (uv's default; ``make install`` compiles it) shows
    here what it costs every task."""
    out = subprocess.run(
        [sys.executable, "-c", TF_IMPORT],
        capture_output=True,
        text=True,
        env=child_env(bytecode_cache=False),
        cwd=REPO,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _ts(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


def train_steps(ckpt_dir: Path, steps: int, gap: float) -> dict[str, float]:
    """Save ``steps`` steps ``gap`` s apart (quiet periods); {prefix: commit time}."""
    from airflow_tf_ckpt.examples.train import train

    commits: dict[str, float] = {}

    def on_save(step: int, url: str, loss: float) -> None:
        commits[url.rsplit("/", 1)[-1]] = time.time()
        print(f"  saved {url.rsplit('/', 1)[-1]}", flush=True)

    time.sleep(gap)
    train(str(ckpt_dir), steps=steps, save_every=1, sleep_between_saves=gap, on_save=on_save)
    return commits


def metrics_time(ckpt_dir: Path, prefix: str) -> float | None:
    from airflow_tf_ckpt.core.sidecars import metrics
    from airflow_tf_ckpt.core.storage.location import Location

    loc = Location.of(str(ckpt_dir))
    try:
        rec = metrics.read_metrics_record(loc, prefix, evaluator=DAG)
    except TypeError:
        rec = metrics.read_metrics_record(loc, prefix)
    return None if rec is None else float(rec["time"])


#: our own lines in the evaluate task's log, in the order they come: (mark, how the message starts)
MARKS = (
    ("import", "Importing TensorFlow"),
    ("tf", "TensorFlow "),  # detect_devices: TF imported and the devices listed
    ("restore", "Restoring "),  # the model is built and the step staged
    ("restored", "Restored "),
)


def _log_marks(dep: Deployment, run_id: str) -> dict[str, float]:
    """Timestamps of our own lines in the evaluate task's log (:data:`MARKS`)."""
    marks: dict[str, float] = {}
    base = dep.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / "task_id=evaluate"
    for path in sorted(base.glob("attempt=*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            event, ts = str(rec.get("event", "")), rec.get("timestamp")
            for mark, start in MARKS:
                if ts and mark not in marks and event.startswith(start):
                    marks[mark] = _ts(ts)
    return marks


def breakdown(dep: Deployment, prefix: str, commit: float) -> dict[str, float] | None:
    for run in dep.runs(DAG):
        tis = {t["task_id"]: t for t in dep.task_instances(DAG, run["dag_run_id"])}
        wait = tis.get("wait")
        if wait is None or wait["state"] != "success":
            continue
        x = dep.xcom(DAG, run["dag_run_id"], "wait") or {}
        if x.get("checkpoint") != prefix:
            continue
        val, ev = tis["validate"], tis["evaluate"]
        marks = _log_marks(dep, run["dag_run_id"])
        done = metrics_time(dep.ckpt_dir, prefix) or _ts(ev["end_date"])
        started = _ts(ev["start_date"])
        imp = marks.get("import", started)
        tf_ready = marks.get("tf", imp)
        restore = marks.get("restore", tf_ready)
        restored = marks.get("restored", restore)
        return {
            "poll wait + trigger + sensor resume": _ts(wait["end_date"]) - commit,
            "scheduling (gaps between tasks)": (_ts(val["start_date"]) - _ts(wait["end_date"]))
            + (_ts(ev["start_date"]) - _ts(val["end_date"])),
            "validate task": _ts(val["end_date"]) - _ts(val["start_date"]),
            "evaluate task start (until TF import)": imp - started,
            "TF import + device listing": tf_ready - imp,
            "model build + staging": restore - tf_ready,
            "restore": restored - restore,
            "evaluation + metrics sidecar": done - restored,
            "total": done - commit,
        }
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--gap", type=float, default=40.0, help="seconds between saves (a quiet period)")
    ap.add_argument("--poll", type=float, default=2.0, help="the sensor's poll interval")
    ap.add_argument("--keep", action="store_true", help="keep the deployment's dir (logs) after a pass")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="tf_ckpt_latency_"))
    dep = Deployment(root=root, poll_interval=args.poll)
    warm: subprocess.Popen[str] | None = None
    try:
        print(f"starting the deployment under {root} ...", flush=True)
        dep.prepare()
        dep.ckpt_dir.mkdir(parents=True, exist_ok=True)
        dep.start()
        dep.wait_dags([DAG])
        dep.unpause(DAG)
        budget = args.gap * (args.steps + 3) + 120
        warm = subprocess.Popen(
            [sys.executable, "-c", WARM_LOOP, str(dep.ckpt_dir), str(budget)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=REPO,
        )
        ready = json.loads(warm.stdout.readline()) if warm.stdout else {}
        print(f"warm loop ready (TF import + model build {ready.get('import_s', 0):.1f} s)", flush=True)
        floor = [tf_import_floor()]
        print(f"floor: a bare `import tensorflow` in a fresh process took {floor[0]:.1f} s", flush=True)
        commits = train_steps(dep.ckpt_dir, args.steps, args.gap)
        ours = _wait_ours(dep, commits, timeout=args.gap + 900)
        warm_lat = _read_warm(warm, commits)
        floor.append(tf_import_floor())
        print(f"floor: a bare `import tensorflow` in a fresh process took {floor[1]:.1f} s", flush=True)
    finally:
        if warm is not None:
            warm.kill()
            warm.wait()
        dep.stop()
    return _report(args, commits, ours, warm_lat, root, statistics.median(floor))


def _wait_ours(dep: Deployment, commits: dict[str, float], timeout: float) -> dict[str, dict[str, float]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(metrics_time(dep.ckpt_dir, p) is None for p in commits):
        time.sleep(2)
    time.sleep(3)
    out = {}
    for prefix, t in commits.items():
        b = breakdown(dep, prefix, t)
        if b is not None:
            out[prefix] = b
    return out


def _read_warm(warm: subprocess.Popen[str], commits: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    deadline = time.monotonic() + 60
    assert warm.stdout is not None
    while len(out) < len(commits) and time.monotonic() < deadline:
        line = warm.stdout.readline()
        if not line:
            break
        rec = json.loads(line)
        if rec.get("prefix") in commits:
            c = commits[rec["prefix"]]
            out[rec["prefix"]] = {
                "poll wait": rec["seen"] - c,
                "restore": rec["restore_s"],
                "evaluation": rec["eval_s"],
                "total": rec["done"] - c,
            }
    return out


def _report(
    args: Any,
    commits: dict[str, float],
    ours: dict[str, dict[str, float]],
    warm: dict[str, dict[str, float]],
    root: Path,
    floor: float,
) -> int:
    print("\ncommit -> metrics, per step (seconds):")
    for prefix in commits:
        o, w = ours.get(prefix), warm.get(prefix)
        print(
            f"  {prefix}: ours {o['total'] if o else float('nan'):6.1f}   warm loop "
            f"{w['total'] if w else float('nan'):5.1f}"
        )
        for k, v in (o or {}).items():
            if k != "total":
                print(f"      ours  {k:38s} {v:6.2f}")
        for k, v in (w or {}).items():
            if k != "total":
                print(f"      warm  {k:38s} {v:6.2f}")
    if not ours or not warm:
        print(f"missing measurements (ours {len(ours)}, warm {len(warm)}); logs in {root}")
        return 1
    o_med = statistics.median(v["total"] for v in ours.values())
    w_med = statistics.median(v["total"] for v in warm.values())
    bound = w_med + args.poll + 10
    ok = o_med <= bound and len(ours) == len(commits)
    verdict(
        f"commit->metrics on a real deployment ({len(ours)} steps, poll {args.poll:g} s)",
        f"{o_med:.1f} s",
        f"warm TF loop {w_med:.1f} s",
        o_med / w_med if w_med else None,
        f"<= warm + poll + 10 s = {bound:.1f} s",
        ok,
    )
    tf_start = statistics.median(
        v["evaluate task start (until TF import)"] + v["TF import + device listing"] for v in ours.values()
    )
    verdict(
        "floor: `import tensorflow` in a fresh process, same run (what every task process pays)",
        f"{floor:.1f} s (ours: evaluate task start + TF import {tf_start:.1f} s)",
        f"warm + poll + floor = {w_med + args.poll + floor:.1f} s; ours exceeds it by "
        f"{o_med - (w_med + args.poll + floor):.1f} s",
        None,
        "- (the 10 s allowed above, against this floor)",
        None,
    )
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
