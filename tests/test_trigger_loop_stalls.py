"""The triggers never block the event loop, also on their first run in a fresh triggerer process.

A fresh interpreter (as a triggerer after start-up) imports the trigger module, then runs both
triggers over real TF checkpoints while a watchdog coroutine measures the longest stall of the
loop. First-use work (importing the storage hook, fsspec, the core and protobuf) must not run on
the loop's thread: an import spy records every such import made by the loop thread while the loop
runs. The real triggerer logged "async thread was blocked" (0.2-1.1 s) and a 33.7 s "deadlocked"
on its first trigger start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import asyncio, importlib.abc, json, sys, threading, time

WATCH = ("airflow_tf_ckpt.core", "airflow_tf_ckpt.hooks", "google.protobuf", "gcsfs", "fsspec")
state = {"running": False, "on_loop": []}

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if state["running"] and threading.current_thread() is threading.main_thread() \
                and name.startswith(WATCH):
            state["on_loop"].append(name)
        return None

sys.meta_path.insert(0, Spy())
from airflow_tf_ckpt.triggers.checkpoint import CheckpointEventTrigger, CheckpointTrigger

async def main(d):
    state["running"] = True
    worst, stop = [0.0], [False]

    async def watchdog():
        last = time.perf_counter()
        while not stop[0]:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            worst[0] = max(worst[0], now - last - 0.005)
            last = now

    w = asyncio.create_task(watchdog())
    await asyncio.sleep(0.05)
    async for ev in CheckpointTrigger(dir=d, poll_interval=0.5).run():
        first = ev.payload
        break
    steps = []
    agen = CheckpointEventTrigger(dir=d, poll_interval=0.5).run()
    async for ev in agen:
        steps.append(ev.payload["step"])
        if len(steps) == 3:
            break
    await agen.aclose()
    stop[0] = True
    await w
    print(json.dumps({"worst_stall_s": worst[0], "on_loop_imports": state["on_loop"],
                      "first": first["step"], "events": steps}))

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.airflow
def test_first_trigger_run_does_its_imports_off_the_loop(copy_variant):
    d = copy_variant("tf2_manager")  # ckpt-3, ckpt-4, ckpt-5
    env = dict(os.environ)
    env["AIRFLOW__TF_CKPT__TRIGGERER_GC_FREEZE"] = "False"
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(d)], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print("trigger first run:", out)
    assert out["first"] == 5 and out["events"] == [3, 4, 5]
    assert out["on_loop_imports"] == [], out
    # what is left on the loop is small; the bound leaves room for a loaded 2-core machine
    # (today's code, with its first-use imports on the loop: 0.84 s here; with them in a thread: 0.14 s)
    assert out["worst_stall_s"] < 0.5, out
