"""``make up`` / ``make down``: the demo's real Airflow deployment, left running to explore the UI.

``up`` starts the same deployment as ``make demo`` (``scripts/deployment.py``: scheduler,
dag-processor, triggerer, api-server, LocalExecutor, SQLite, all on 127.0.0.1) under
``demo_output/up/``, unpauses the DAGs in the safe order (the evaluation DAGs, then GC, then the
trainer), triggers the demo's training run (with its corrupt step), prints the URL, the user and the
password, and returns.
``down`` stops every process group it started (their ids are in ``demo_output/up/deployment.json``).

``up`` on a deployment that is still running says so and leaves it alone; ``up --fresh`` stops
it and starts over with empty dirs.
"""

from __future__ import annotations

import argparse
import shutil
import sys

from airflow_demo import TRAIN
from deployment import REPO, Deployment, _group_alive

ROOT = REPO / "demo_output" / "up"
DAGS = ("tf_ckpt_evaluate_each_step", "tf_ckpt_event_driven", "tf_ckpt_gc", "tf_ckpt_train_demo")


def running() -> Deployment | None:
    try:
        dep = Deployment.attach(ROOT)
    except FileNotFoundError:
        return None
    return dep if dep.saved_groups() else None


def up(fresh: bool) -> int:
    dep = running()
    if dep is not None and not fresh:
        print(f"already running: {dep.url} (user admin, password {dep.password}); stop it with `make down`")
        return 0
    if dep is not None:
        down()
    shutil.rmtree(ROOT, ignore_errors=True)
    dep = Deployment(root=ROOT, poll_interval=5.0)
    try:
        dep.prepare()
        dep.start()
        dep.wait_dags(DAGS)
        for dag in DAGS:
            dep.unpause(dag)
        # the demo's training run: a burst, then spaced saves, one corrupted (quarantined by validate),
        # so the Checkpoints page shows every marker
        dep.trigger("tf_ckpt_train_demo", TRAIN)
    except BaseException:
        dep.stop()
        raise
    print(f"""
Airflow is up: {dep.url}
  the Checkpoints page: {dep.url}/plugin/checkpoints (Browse > Checkpoints)
  user admin, password {dep.password}
  AIRFLOW_HOME {dep.home}   checkpoints {dep.ckpt_dir}
  component logs {dep.logs}
One training run was triggered, as in `make demo` ({TRAIN["steps"] // TRAIN["save_every"]} saves: a burst of {TRAIN["burst"]}, then
{TRAIN["sleep_between_saves"]:g} s apart; step {TRAIN["corrupt_step"]} is corrupted on purpose and gets quarantined); the steps,
their metrics, the quarantined step and the promoted best show on the Checkpoints page within a few
minutes. Trigger tf_ckpt_train_demo again for more.
Stop everything with: make down""")
    return 0


def down() -> int:
    try:
        dep = Deployment.attach(ROOT)
    except FileNotFoundError:
        print("nothing to stop")
        return 0
    groups = dep.saved_groups()
    if not groups:
        print(f"nothing to stop (no process of the deployment under {ROOT} is running)")
        return 0
    dep.stop()
    left = [p for p in groups if _group_alive(p)]
    print(f"stopped {len(groups)} process group(s)" + (f"; still alive: {left}" if left else ""))
    return 1 if left else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("up", "down"))
    ap.add_argument("--fresh", action="store_true", help="up: stop a running deployment and start over")
    args = ap.parse_args()
    return up(args.fresh) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
