"""The Airflow half of ``make demo``: the example DAGs on a REAL Airflow deployment.

1. ``scripts/deployment.py`` starts a scheduler, a dag-processor, a triggerer and an api-server
   (LocalExecutor, SQLite) under ``demo_output/airflow/``, everything on 127.0.0.1.
2. Like a user, through the REST API: unpause ``tf_ckpt_evaluate_each_step`` and
   ``tf_ckpt_event_driven`` (they wait for steps), then ``tf_ckpt_gc`` (every minute here; it keeps
   every step an evaluation DAG has not evaluated yet), then trigger ``tf_ckpt_train_demo`` once:
   a BURST of saves, then saves SPACED apart, one of which is corrupted right after its commit.
3. Waits (bounded) until each evaluation DAG has handled every committed step, then checks
   through the API and the dir: every committed step evaluated exactly once by each DAG, the
   corrupt one quarantined and never evaluated, no run failed, GC deleted no step before both DAGs
   had evaluated it, and the promoted step is the best. Exit status 1 otherwise.
4. Prints the summary, the triggerer's "async thread was blocked" figures, and stops every
   process it started (also on failure or Ctrl-C).

Run: ``.venv/bin/python scripts/airflow_demo.py`` (``make demo`` runs it after ``scripts/demo.py``).
``make up`` starts the same deployment and leaves it running.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from deployment import REPO, Deployment, Ledger, read_ledger, triggerer_blocks

OUT = REPO / "demo_output" / "airflow"
EVAL_DAGS = ("tf_ckpt_evaluate_each_step", "tf_ckpt_event_driven")
ALL_DAGS = ("tf_ckpt_train_demo", *EVAL_DAGS, "tf_ckpt_gc")
# one training run (one TensorFlow import): ckpt-2, -4, -6 within a second (a burst), then ckpt-8
# and -10 25 s apart; ckpt-8 gets a flipped byte right after its commit (bit rot). Modest on
# purpose: every evaluation is a task that imports TensorFlow (12-15 s of CPU each).
TRAIN = {"steps": 10, "save_every": 2, "burst": 3, "sleep_between_saves": 25, "corrupt_step": 8}
TIMEOUT = 1200.0  # generous: a 2-core machine shared with other work is many times slower


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def start(dep: Deployment) -> None:
    t0 = time.monotonic()
    dep.prepare()
    say(f"AIRFLOW_HOME={_rel(dep.home)} (SQLite, LocalExecutor); checkpoints in {_rel(dep.ckpt_dir)}")
    dep.start()
    dep.wait_dags(ALL_DAGS)
    say(f"scheduler, dag-processor, triggerer, api-server up; DAGs parsed [{time.monotonic() - t0:.0f} s]")
    say(
        f"UI: {dep.url}  (user admin, password {dep.password}) -- while the demo runs; the Checkpoints "
        f"page: {dep.url}/plugin/checkpoints (Browse > Checkpoints)"
    )


def drive(dep: Deployment) -> str:
    """Unpause in a safe order, trigger the training; returns the trainer's run id."""
    for dag in EVAL_DAGS:  # the evaluators first: they only wait
        dep.unpause(dag)
    dep.unpause("tf_ckpt_gc")  # keeps every step not yet evaluated; nothing to do before training
    dep.unpause("tf_ckpt_train_demo")
    say(f"unpaused {', '.join(EVAL_DAGS)}, tf_ckpt_gc (every minute), tf_ckpt_train_demo")
    t = time.monotonic()
    run_id = dep.trigger("tf_ckpt_train_demo", TRAIN)
    say(
        f"triggered tf_ckpt_train_demo {TRAIN}: a burst of 3 saves, then 2 saves 25 s apart, "
        "step 8 corrupted right after its commit"
    )
    run = dep.wait_run("tf_ckpt_train_demo", run_id, timeout=900)
    x = dep.xcom("tf_ckpt_train_demo", run_id, "train") if run["state"] == "success" else {}
    say(
        f"tf_ckpt_train_demo: {run['state']}, saved steps {x.get('steps')}"
        + (f", corrupted {x['corrupted']}" if x.get("corrupted") else "")
        + f" [{time.monotonic() - t:.0f} s]"
    )
    if run["state"] != "success":
        raise SystemExit("training failed; see " + _rel(dep.home / "logs"))
    return run_id


def idle(dep: Deployment, ledger: Ledger) -> bool:
    """Every committed step handled by both DAGs, and no evaluation in flight."""
    if any(ledger.count(d, s) < 1 for d in EVAL_DAGS for s in ledger.committed()):
        return False
    event_runs = ledger.runs["tf_ckpt_event_driven"]
    if any(r["state"] not in ("success", "failed") for r in event_runs):
        return False
    cont = ledger.runs["tf_ckpt_evaluate_each_step"]
    # one successful run per committed step (the corrupt one may have been quarantined by the
    # other DAG first): the run of the last step has committed its watermark too
    if sum(r["state"] == "success" for r in cont) < len(ledger.committed()):
        return False
    return all(r["state"] in ("success", "failed") for r in cont[:-1])


def wait_done(dep: Deployment, deadline: float) -> Ledger:
    last = ""
    while True:
        ledger = read_ledger(dep)
        done = {d: sum(1 for s in ledger.committed() if ledger.count(d, s)) for d in EVAL_DAGS}
        line = ", ".join(f"{d}: {n}/{len(ledger.committed())}" for d, n in done.items())
        if line != last:
            say(f"  evaluated so far: {line}")
            last = line
        if idle(dep, ledger) or ledger.failed_runs():
            time.sleep(5)  # a follow-up run that is about to start
            return read_ledger(dep)
        if time.monotonic() > deadline:
            say("timed out waiting for the evaluations")
            return ledger
        time.sleep(5)


def final_gc(dep: Deployment) -> None:
    """One more GC run now that both DAGs have evaluated every step: it may delete what the runs
    during training had to keep (unevaluated, leased), so the summary shows GC at work."""
    banner("GC once more, now that every committed step is evaluated")
    run_id = dep.trigger("tf_ckpt_gc", {})
    run = dep.wait_run("tf_ckpt_gc", run_id, timeout=300)
    say(f"tf_ckpt_gc {run_id}: {run['state']}")


def summary(dep: Deployment, ledger: Ledger) -> list[str]:
    from airflow_tf_ckpt.core.promote.manifest import read_manifest
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.core.storage.location import Location

    banner("summary")
    on_disk = {
        s.step: s for s in discover(Location.of(str(dep.ckpt_dir)), "ckpt").steps if s.step is not None
    }
    quarantined = sorted(s for s, st in on_disk.items() if st.quarantined)
    deleted = sorted({s for _, steps in ledger.gc_deleted for s in steps})
    manifest = read_manifest(Location.of(str(dep.data_root / "promoted")))
    say(f"steps saved by the trainer : {ledger.saved} (corrupted on purpose: {ledger.corrupted})")
    say("metrics per step (held-out synthetic set; lower is better), per evaluation DAG:")
    for step in ledger.saved:
        cells = []
        for dag in EVAL_DAGS:
            ev = ledger.evaluations.get(dag, {}).get(step, [])
            m = ev[0][1] if ev else None
            cells.append(f"loss {float(m['loss']):7.4f} ({len(ev)}x)" if m else "-" * 19)
        note = (
            "quarantined (corrupt)" if step in quarantined else "deleted by GC" if step in deleted else "kept"
        )
        say(f"  ckpt-{step:<3} " + "   ".join(cells) + f"   {note}")
    say(f"                 ({' | '.join(EVAL_DAGS)})")
    say(
        f"kept on disk               : {sorted(s for s in on_disk if s not in quarantined)}"
        f" + quarantined {quarantined}"
    )
    say(f"deleted by tf_ckpt_gc      : {deleted} ({len(ledger.runs['tf_ckpt_gc'])} GC run(s))")
    if manifest is not None:
        say(
            f"promoted                   : ckpt-{manifest.step} -> {_rel(dep.data_root / 'promoted')} "
            "(alias best; " + ", ".join(f"{k} {v:.4f}" for k, v in manifest.metrics.items()) + ")"
        )
    say(
        "DAG runs                   : "
        + ", ".join(
            f"{d} {sum(r['state'] == 'success' for r in rs)} ok/{len(rs)}" for d, rs in ledger.runs.items()
        )
    )
    blocks = triggerer_blocks(dep)
    say(
        f"triggerer                  : {blocks['blocked']} 'async thread was blocked' warning(s), "
        f"{blocks['over_0_2s']} over 0.2 s, longest {blocks['max_s']:.2f} s; "
        f"{blocks['deadlocked']} 'deadlocked' warning(s)"
    )
    say(f"logs                       : {_rel(dep.logs)} (components), {_rel(dep.home / 'logs')} (tasks)")

    problems = ledger.problems(EVAL_DAGS)
    problems += _sidecar_problems(dep, ledger)
    if len(quarantined) != 1 or quarantined != sorted(ledger.corrupted):
        problems.append(f"expected the corrupted step(s) {ledger.corrupted} quarantined, got {quarantined}")
    problems += _promotion_problems(ledger, manifest)
    return problems


def _sidecar_problems(dep: Deployment, ledger: Ledger) -> list[str]:
    """The sidecars' own counts (``evaluations`` per evaluator) of the steps still on disk."""
    from airflow_tf_ckpt.core.sidecars.metrics import evaluation_counts
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.core.storage.location import Location

    cdir = discover(Location.of(str(dep.ckpt_dir)), "ckpt")
    counts = evaluation_counts(cdir)
    out = []
    for s in cdir.steps:
        if s.step in ledger.committed():
            got = {d: counts.get(s.prefix, {}).get(d, 0) for d in EVAL_DAGS}
            if any(n != 1 for n in got.values()):
                out.append(f"{s.prefix}: the sidecars count {got} evaluations")
    return out


def _promotion_problems(ledger: Ledger, manifest: Any) -> list[str]:
    losses = {s: float(ev[-1][1]["loss"]) for s, ev in ledger.evaluations.get(EVAL_DAGS[0], {}).items() if ev}
    if manifest is None:
        return ["nothing was promoted"]
    if not losses:
        return ["no evaluation to compare the promotion with"]
    best = min(losses, key=lambda s: (losses[s], -s))
    if manifest.step != best:
        return [f"promoted ckpt-{manifest.step} but the best evaluated step is ckpt-{best}"]
    return []


def main() -> int:
    t0 = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    dep = Deployment(root=OUT, poll_interval=2.0, extra_env={"TF_CKPT_DEMO_GC_SCHEDULE": "* * * * *"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    banner("a real Airflow: scheduler, dag-processor, triggerer, api-server on 127.0.0.1")
    try:
        start(dep)
        banner("unpause the DAGs; train: a burst of saves, then saves spaced apart (one corrupted)")
        drive(dep)
        banner("wait until both evaluation DAGs have handled every committed step")
        ledger = wait_done(dep, time.monotonic() + TIMEOUT)
        if not ledger.failed_runs():
            final_gc(dep)
            ledger = read_ledger(dep)
        problems = summary(dep, ledger)
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        say(f"\nstopping the deployment ({len(dep.procs)} process group(s)) ...")
        dep.stop()
    if problems:
        say("\nDEMO FAILED:\n  " + "\n  ".join(problems))
        say(f"component logs: {dep.logs}; task logs: {dep.home / 'logs'}")
        return 1
    say(
        "\nevery committed step was evaluated exactly once by each evaluation DAG; the corrupt one was "
        "quarantined; GC deleted nothing unevaluated; the best step is promoted."
    )
    say(
        f"Airflow demo took {time.monotonic() - t0:.0f} s. `make up` starts the same deployment and "
        "leaves it running, with the demo's dirs on the Checkpoints page (/plugin/checkpoints)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
