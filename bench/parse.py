"""Benchmark: what the provider adds to DAG parsing (dag-processor cost per file, per parse).

    .venv/bin/python bench/parse.py [--rounds 5]

Each variant runs in a fresh interpreter (as a dag-processor's parse subprocess would), round after
round, interleaved, with a private AIRFLOW_HOME:

* ``bare``:   ``import airflow.sdk`` (the floor any DAG file pays);
* ``dagbag``: ``import airflow.sdk`` + ``DagBag`` over an EMPTY folder (the parsing machinery alone);
* ``ours``:   ``import airflow.sdk``, ``import airflow_tf_ckpt`` and its operators/sensors/triggers,
  + ``DagBag`` over every example DAG in dags/; asserts no import error and no ``tensorflow`` in
  ``sys.modules``.

Figure (CPU time of the child, user + sys; wall time is printed too): ours - bare (the brief's "extra"), and ours - dagbag (what the provider and its DAG files
themselves cost). Target: < 0.3 s extra.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import _common as C

BARE = "import airflow.sdk\n"
DAGBAG = ("import sys, airflow.sdk\nfrom airflow.dag_processing.dagbag import DagBag\n"
          "bag = DagBag(dag_folder=sys.argv[1])\nassert not bag.dag_ids\n")
OURS = ("import json, sys, airflow.sdk\n"
        "import airflow_tf_ckpt.operators, airflow_tf_ckpt.sensors, airflow_tf_ckpt.triggers\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "print('RESULT' + json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "      'dags': sorted(bag.dag_ids), 'tf': 'tensorflow' in sys.modules}))\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="parse-home-", dir=C.cache_dir())
    empty = tempfile.mkdtemp(prefix="empty-dags-", dir=C.cache_dir())
    dags = str(C.REPO / "dags")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=dags,
               TF_CKPT_DEMO_DIR=os.path.join(home, "demo"), PYTHONPATH=str(C.REPO))

    def run(code: str, folder: str) -> str:
        proc = subprocess.run([sys.executable, "-c", code, folder], env=env, cwd=home,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise SystemExit(f"parse subprocess failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    out = run(OURS, dags)  # warm-up (bytecode caches, page cache) and the checks
    res = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT"))[6:])
    assert not res["errors"], res["errors"]
    assert not res["tf"], "tensorflow was imported while parsing the DAGs"
    print(f"  dags/: {len(res['dags'])} DAG(s) {res['dags']}, no import errors, tensorflow not imported")
    run(BARE, empty)
    run(DAGBAG, empty)

    # The figure is the child's CPU time (user + sys, from getrusage): on a shared 2-core box the
    # wall time of a parse swings by seconds with the load, its CPU time hardly at all.
    times: dict[str, list[float]] = {"bare": [], "dagbag": [], "ours": []}
    walls: dict[str, list[float]] = {"bare": [], "dagbag": [], "ours": []}
    variants = [("bare", BARE, empty), ("dagbag", DAGBAG, empty), ("ours", OURS, dags)]
    for r in range(args.rounds):
        for name, code, folder in (variants if r % 2 == 0 else variants[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            walls[name].append(C.timed(lambda c=code, f=folder: run(c, f))[0])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    print(f"\nfresh interpreter per parse, {args.rounds} rounds interleaved; wall time:")
    for name, label in (("bare", "bare"), ("dagbag", "DagBag(empty)"), ("ours", "provider + dags/")):
        C.summary(f"  {label}", walls[name])
    print("CPU time (user + sys) of the parse process:")
    t_bare = C.summary("bare: import airflow.sdk", times["bare"])
    t_bag = C.summary("airflow.sdk + DagBag(empty folder)", times["dagbag"])
    t_ours = C.summary(f"provider + DagBag(dags/: {len(res['dags'])} DAGs)", times["ours"])
    extra, extra_bag = t_ours - t_bare, t_ours - t_bag
    print(f"  extra over bare import: {extra:.3f} s; over the DagBag machinery alone: {extra_bag:.3f} s")
    C.verdict("DAG parse: provider + every example DAG, extra over bare airflow.sdk", f"+{extra:.2f} s",
              f"{t_bare:.2f} s", t_ours / t_bare, "< 0.3 s extra", extra < 0.3)
    C.verdict("DAG parse: extra over airflow.sdk + DagBag(empty)", f"+{extra_bag:.2f} s", f"{t_bag:.2f} s",
              t_ours / t_bag, "< 0.3 s extra", extra_bag < 0.3)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
