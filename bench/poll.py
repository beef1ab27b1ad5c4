"""Benchmark: one checkpoint poll on a gs:// dir of 10,000 steps, against a full prefix listing.

    .venv/bin/python bench/poll.py [--steps 10000] [--rounds 3] [--polls 20]

The baseline is what ``GCSUploadSessionTrigger`` does on every poke: list every object under the
dir's prefix. Ours is one poll of the trigger's ``Poller`` (the code ``CheckpointTrigger``,
``CheckpointEventTrigger`` and the sensor run) through the hook's async gcsfs, when nothing
changed: the watermark is the newest step. Requests are counted at gcsfs's ``_request``.

The dir (index + data shard per step, and a ``checkpoint`` state file naming all 10,000 steps with
timestamps, ~0.6 MB) is written straight into the emulator's filesystem root once and cached
under /tmp/airflow_tf_ckpt_bench. Targets: O(1) requests per unchanged poll, >= 100x faster.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import _common as C


def build(steps: int) -> tuple[C.Path, str, str]:
    root = C.CACHE / f"gcs-poll-{steps}"
    bucket, d = "pollbench", "run"
    marker = root / ".built"
    if not marker.exists():
        print(f"building {steps} steps in {root} (once) ...", flush=True)
        t = time.perf_counter()
        with C.emulator(root) as emu:
            C.ensure_bucket(emu, root, bucket)
        objs = C.step_objects(d, range(1, steps + 1))
        now = time.time()
        stamps = [now - 3600 - (steps - i) for i in range(1, steps + 1)]
        objs[f"{d}/checkpoint"] = C.state_text([f"ckpt-{i}" for i in range(1, steps + 1)], stamps)
        C.seed_objects(root, bucket, objs)
        marker.write_text("ok")
        print(f"  built in {time.perf_counter() - t:.1f} s", flush=True)
    return root, bucket, d


async def run(url: str, steps: int, rounds: int, polls: int) -> int:
    from airflow_tf_ckpt.core.watch.poller import Poller
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    hook = CheckpointStorageHook(None)
    async with hook.aopen(url) as adir:
        afs = adir.afs
        counter = C.RequestCounter(afs)
        poller = Poller(prefix=None, require_complete=True, settle_seconds=0.0, state_filename="checkpoint")

        async def baseline() -> int:
            entries = await afs._ls(adir.location.path, detail=True, refresh=True)
            return len(entries)

        async def ours(after: int) -> list:
            ready, _ = await poller.apoll(adir, after, "newest")
            return ready

        # request counts (the baseline's come from its first timed round: on the emulator one full
        # listing of 20,000 objects takes tens of seconds)
        counter.reset()
        t = time.perf_counter()
        assert await ours(steps) == []
        t_first = time.perf_counter() - t
        first_reqs = counter.reset()
        assert await ours(steps) == []
        ours_reqs = counter.reset()
        t = time.perf_counter()
        ready = await ours(steps - 1)  # one new step since the watermark
        t_new = time.perf_counter() - t
        new_reqs = counter.reset()
        assert ready and ready[0].step.step == steps, ready
        print(
            f"  ours, nothing changed: "
            f"{ours_reqs} request(s) (first poll, state file parsed: {first_reqs}, {C.fmt_s(t_first)}); "
            f"one new step: {new_reqs} request(s), {C.fmt_s(t_new)}"
        )

        tb: list[float] = []
        to: list[float] = []
        n = base_reqs = 0
        for r in range(rounds):

            async def b() -> None:
                nonlocal n, base_reqs
                counter.reset()
                t0 = time.perf_counter()
                n = await baseline()
                tb.append(time.perf_counter() - t0)
                base_reqs = counter.reset()
                assert n >= 2 * steps, n

            async def o() -> None:
                counter.reset()
                for _ in range(polls):
                    t0 = time.perf_counter()
                    await ours(steps)
                    to.append(time.perf_counter() - t0)

            for fn in (b, o) if r % 2 == 0 else (o, b):
                await fn()
        counter.reset()
    print(f"  baseline: {n} objects listed in {base_reqs} request(s)")
    print(
        f"\n{steps} steps ({n} objects) on fake-gcs-server; interleaved, {rounds} rounds "
        f"({polls} polls of ours per round)"
    )
    t_base = C.summary("baseline: full prefix listing (GCSUploadSession)", tb)
    t_ours = C.summary("ours: Poller.apoll, nothing changed", to)
    ratio = t_base / t_ours
    C.verdict(
        "poll, nothing changed, 10k steps: requests",
        f"{ours_reqs} req",
        f"{base_reqs} req",
        base_reqs / max(ours_reqs, 1),
        "O(1) (1-2 req)",
        ours_reqs <= 2,
    )
    C.verdict(
        f"poll, nothing changed, {steps} steps: time",
        C.fmt_s(t_ours),
        C.fmt_s(t_base),
        ratio,
        ">= 100x",
        ratio >= 100,
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--polls", type=int, default=20)
    args = ap.parse_args()
    C.airflow_home()
    root, bucket, d = build(args.steps)
    with C.emulator(root):
        return asyncio.run(run(f"gs://{bucket}/{d}", args.steps, args.rounds, args.polls))


if __name__ == "__main__":
    raise SystemExit(main())
