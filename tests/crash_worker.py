"""Subprocess entry points for the reliability suites (crash, concurrency).

Crash modes (core only, no TensorFlow import: a child starts in well under a second)::

    python tests/crash_worker.py gc DIR KILL_AT POLICY_JSON
    python tests/crash_worker.py promote SRC DEST STEP ALIAS KILL_AT

Every call of the operation's ``hook`` (and, for ``promote``, of its ``progress`` callback, which
runs between copied chunks) is one I/O point. When the ``KILL_AT``-th point is reached the child
SIGKILLs itself: no ``finally``, no cleanup, exactly like an OOM kill. ``KILL_AT=0`` runs to the
end and prints ``{"points": [labels...]}`` on stdout.

TensorFlow modes (for the live concurrency test)::

    python tests/crash_worker.py trainer DIR READY_FILE STOP_FILE INTERVAL_S
    python tests/crash_worker.py evaluator DIR READY_FILE STOP_FILE RESULT_JSON

``trainer``: a Keras-free ``tf.train.CheckpointManager(max_to_keep=None)`` that saves every
``INTERVAL_S`` until ``STOP_FILE`` exists; prints ``{"saves": n, "last": prefix, "error": ...}``.
``evaluator``: restores each new committed step under a lease (:func:`leased`) with
``tf.train.Checkpoint.restore(...).assert_consumed()``; writes a JSON report.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _killer(kill_at: int):
    points: list[str] = []

    def point(label: str) -> None:
        points.append(label)
        if kill_at and len(points) == kill_at:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # never reached

    return points, point


def run_gc(directory: str, kill_at: int, policy_json: str) -> list[str]:
    from airflow_tf_ckpt.core.retention.executor import apply_plan
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import policies_from_options
    from airflow_tf_ckpt.core.storage.location import Location

    points, point = _killer(kill_at)
    loc = Location.of(directory)
    plan = plan_retention(loc, policies_from_options(**json.loads(policy_json)))
    res = apply_plan(plan, batch_size=2, hook=lambda label, *a: point(f"{label}:{a[0] if a else ''}"))
    if not res.ok:
        raise SystemExit(f"gc failed: {res.errors}")
    return points


def run_promote(src: str, dest: str, step: str, alias: str, kill_at: int) -> list[str]:
    from airflow_tf_ckpt.core.promote.promote import promote

    points, point = _killer(kill_at)
    promote(
        src,
        dest,
        int(step) if step.isdigit() else step,
        alias=alias or None,
        hook=lambda phase, _d: point(phase),
        progress=lambda done, total, name: point(f"progress:{name}") if name else None,
    )
    return points


# ---------------------------------------------------------------------------------------------
# TensorFlow: the live trainer and the evaluator


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import tensorflow as tf

    return tf


def _model(tf):
    return tf.train.Checkpoint(
        w=tf.Variable(tf.zeros([64, 64])), b=tf.Variable(tf.zeros([64])), step=tf.Variable(0, dtype=tf.int64)
    )


def run_trainer(directory: str, ready: str, stop: str, interval: float) -> dict:
    tf = _tf()
    ckpt = _model(tf)
    manager = tf.train.CheckpointManager(ckpt, directory, max_to_keep=None)
    out: dict = {"saves": 0, "last": None, "error": None}
    try:
        open(ready, "w").close()
        while not os.path.exists(stop):
            t = time.monotonic()
            ckpt.step.assign_add(1)
            ckpt.w.assign_add(tf.ones([64, 64]))
            out["last"] = manager.save()
            out["saves"] += 1
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
    except Exception as exc:  # noqa: BLE001 - the error is the answer
        out["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return out


def run_evaluator(directory: str, ready: str, stop: str) -> dict:
    from airflow_tf_ckpt.core.errors import CheckpointError
    from airflow_tf_ckpt.core.sidecars.leases import LeaseConflictError, leased
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.core.storage.location import Location

    tf = _tf()
    loc = Location.of(directory)
    out: dict = {"evaluated": [], "skipped": [], "errors": [], "gone_before_lease": 0}
    open(ready, "w").close()
    done: set[str] = set()
    while not os.path.exists(stop):
        try:
            cdir = discover(loc)
        except CheckpointError as exc:
            out["errors"].append(f"discover: {exc}")
            continue
        latest = cdir.latest()
        if latest is None or latest.prefix in done:
            time.sleep(0.05)
            continue
        prefix = latest.prefix
        done.add(prefix)
        try:
            with leased(loc, prefix, f"eval-{os.getpid()}", 60):
                # under the lease: the step must still be complete before TF opens it
                fresh = {s.prefix: s for s in discover(loc).steps}
                s = fresh.get(prefix)
                if s is None or s.missing or not s.files:
                    out["gone_before_lease"] += 1
                    out["skipped"].append(prefix)
                    continue
                target = _model(tf)
                target.restore(os.path.join(directory, prefix)).assert_consumed()
                want = int(prefix.rsplit("-", 1)[1])
                got = int(target.step.numpy())
                if got != want or float(target.w.numpy()[0, 0]) != float(want):
                    out["errors"].append(f"{prefix}: restored step {got}, w {target.w.numpy()[0, 0]}")
                out["evaluated"].append(prefix)
        except LeaseConflictError:
            out["skipped"].append(prefix)  # GC announced it first: never opened
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            out["errors"].append(f"{prefix}: {type(exc).__name__}: {exc}")
    return out


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "gc":
        print(json.dumps({"points": run_gc(args[0], int(args[1]), args[2])}))
    elif mode == "promote":
        print(json.dumps({"points": run_promote(args[0], args[1], args[2], args[3], int(args[4]))}))
    elif mode == "trainer":
        print(json.dumps(run_trainer(args[0], args[1], args[2], float(args[3]))))
    elif mode == "evaluator":
        res = run_evaluator(args[0], args[1], args[2])
        with open(args[3], "w") as fh:
            json.dump(res, fh)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
