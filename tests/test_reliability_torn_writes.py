"""Torn writes: a writer lays down a step in TF's REAL order, interleaved at random (seeded) with
every poller we ship, and no poll may report a step as committed / fire for it before the state
file commits it complete.

The writer (real TF-written bytes, copied from the fixture variants):

1. the data shards, each in 1..4 appended chunks (a reader can see every prefix of a shard);
2. the ``.index``, in 1..4 appended chunks (a glob for ``*.index`` sees half an index);
3. the state file, the way TF's ``atomic_write_string_to_file`` does on a filesystem with an
   atomic move: a temp file ``checkpoint.tmp<hex>`` written in chunks (visible while written), then
   renamed over ``checkpoint``. On gs:// TF has no atomic move and writes the object directly (one
   upload: atomic);
4. ``CheckpointManager``'s sweep (``max_to_keep``): the oldest step's ``.index`` then its data are
   deleted while the state file still names it, then the state file is rewritten without it.

Pollers, each asked at random points: the core ``discover()`` (what everything builds on), the
``CheckpointTrigger``'s poll (``apoll`` of the trigger over the hook's async dir: what ``run()``
does each iteration, with its Poller and caches kept across polls like a live trigger), the
``CheckpointSensor``'s poke logic (``_check``, no DAG needed), and ``tf-ckpt ls --json`` (in
process; a few as a real subprocess).

Truth at a poll: a step is committed iff the CURRENT state file names it and every one of its files
is present with all of its bytes. A poll that reports a committed step (or fires) outside the truth
is a false fire; their count is printed and must be 0. At the end every poller must report the new
step (the test would otherwise pass with pollers that never fire).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airflow_tf_ckpt import cli
from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.state import StateFile, format_state
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from tests.reliability_helpers import step_files, variant_bytes

pytestmark = pytest.mark.tf

TF_CKPT = str(Path(sys.executable).with_name("tf-ckpt"))

# scenario: variant, steps present before, the step being written, max_to_keep (sweep) or None
SCENARIOS = [
    ("tf2_manager", ["ckpt-3", "ckpt-4"], "ckpt-5", 2),
    ("sharded", [], "ckpt-1", None),
]


@dataclass
class Op:
    kind: str  # append | rename | delete | put
    name: str
    data: bytes = b""
    dest: str = ""
    commits: list[str] | None = None  # the state this op makes current (rename/put of the state)


@dataclass
class Backend:
    """Write ops on one filesystem (local dir, memory://, gs://)."""

    url: str
    loc: Location
    local: bool
    content: dict[str, bytes] = field(default_factory=dict)

    def apply(self, op: Op) -> None:
        fs, path = self.loc.fs, self.loc.join(op.name)
        if op.kind == "append":
            if self.local:
                with open(path, "ab") as fh:
                    fh.write(op.data)
            else:  # object stores: the object is replaced by a longer prefix (a harsher view)
                fs.pipe_file(path, self.content.get(op.name, b"") + op.data)
            self.content[op.name] = self.content.get(op.name, b"") + op.data
        elif op.kind == "put":
            fs.pipe_file(path, op.data)
            self.content[op.name] = op.data
        elif op.kind == "rename":
            if self.local:
                os.replace(path, self.loc.join(op.dest))
            else:
                fs.mv(path, self.loc.join(op.dest))
            self.content[op.dest] = self.content.pop(op.name)
        elif op.kind == "delete":
            fs.rm(path)
            self.content.pop(op.name)
        else:
            raise AssertionError(op.kind)


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    n = rng.randint(1, 4)
    cuts = sorted(rng.sample(range(1, len(data)), min(n - 1, len(data) - 1)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _state(prefixes: list[str], t0: float = 1.7e9) -> bytes:
    return format_state(
        StateFile(
            prefixes[-1] if prefixes else "", list(prefixes), [t0 + i for i in range(len(prefixes))], 0.0
        )
    ).encode()


def writer_ops(
    rng: random.Random,
    files: dict[str, bytes],
    before: list[str],
    new: str,
    keep: int | None,
    atomic_move: bool,
) -> list[Op]:
    ops: list[Op] = []
    names = step_files(files, new)
    data_names = [n for n in names if ".data-" in n]
    order = data_names[:]
    rng.shuffle(order)  # shards are written concurrently by TF: any order
    for n in order:
        ops += [Op("append", n, c) for c in _chunks(rng, files[n])]
    ops += [Op("append", f"{new}.index", c) for c in _chunks(rng, files[f"{new}.index"])]

    def write_state(prefixes: list[str]) -> None:
        text = _state(prefixes)
        if atomic_move:
            tmp = f"checkpoint.tmp{rng.getrandbits(64):016x}"
            for c in _chunks(rng, text):
                ops.append(Op("append", tmp, c))
            ops.append(Op("rename", tmp, dest="checkpoint", commits=list(prefixes)))
        else:
            ops.append(Op("put", "checkpoint", text, commits=list(prefixes)))

    after = [*before, new]
    write_state(after)
    if keep is not None and len(after) > keep:
        doomed, kept = after[: len(after) - keep], after[len(after) - keep :]
        for d in doomed:
            ds = step_files(files, d)
            for n in [f"{d}.index"] + [x for x in ds if x != f"{d}.index"]:
                ops.append(Op("delete", n))
        write_state(kept)
    return ops


def _step_num(prefix: str) -> int:
    return int(prefix.rsplit("-", 1)[1])


class Interleaving:
    """One seeded run: writer ops with polls of random kinds between them."""

    def __init__(
        self,
        backend: Backend,
        files: dict[str, bytes],
        before: list[str],
        new: str,
        keep: int | None,
        rng: random.Random,
        kinds: list[str],
        counters: dict[str, int],
    ) -> None:
        self.b = backend
        self.files = files
        self.rng = rng
        self.kinds = kinds
        self.c = counters
        self.new = new
        self.after = _step_num(before[-1]) if before else None
        self.named: list[str] = list(before)
        self.ops = writer_ops(rng, files, before, new, keep, atomic_move=backend.local)
        self.expected = {p: step_files(files, p) for p in {*before, new}}
        self.failures: list[str] = []
        from airflow_tf_ckpt.sensors.checkpoint import CheckpointSensor
        from airflow_tf_ckpt.triggers.checkpoint import CheckpointTrigger

        self.trigger = CheckpointTrigger(
            dir=backend.url, after_step=self.after, settle_seconds=0, poll_interval=0.01, max_errors=0
        )
        self.poller = self.trigger.make_poller()
        self.sensor = CheckpointSensor(
            task_id=f"wait_{uuid.uuid4().hex[:6]}",
            dir=backend.url,
            after_step=self.after,
            settle_seconds=0,
            deferrable=False,
            max_errors=0,
        )

    def truth(self) -> set[str]:
        out = set()
        for p in self.named:
            if all(self.b.content.get(n) == self.files[n] for n in self.expected.get(p, [p])):
                out.add(p)
        return out

    def _report(self, kind: str, reported: set[str], where: str) -> None:
        self.c[f"polls_{kind}"] = self.c.get(f"polls_{kind}", 0) + 1
        bad = reported - self.truth()
        if bad:
            self.c["false_fires"] += 1
            self.failures.append(
                f"{kind} at {where}: reported {sorted(bad)} committed; truth "
                f"{sorted(self.truth())}; files {sorted(self.b.content)}"
            )

    async def poll(self, kind: str, adir, where: str) -> set[str]:
        if (
            kind in ("discover", "cli", "cli_subprocess")
            and not self.b.content
            and self.b.url.startswith("gs://")
        ):
            # an object store has no dir before its first object: "does not exist" is the answer
            with pytest.raises(StorageError):
                discover(self.b.loc)
            got: set[str] = set()
        elif kind == "discover":
            cdir = discover(Location.of(self.b.url) if self.b.local else self.b.loc)
            got = {s.prefix for s in cdir.steps if s.committed}
            latest = cdir.latest()
            if latest is not None:
                got.add(latest.prefix)
        elif kind == "trigger":
            fire, _ = await self.trigger.apoll(self.poller, adir, self.after)
            got = {p["checkpoint"] for p in fire}
        elif kind == "sensor":
            payload = self.sensor._check({})
            assert self.sensor._errors == 0, f"sensor poll failed at {where}"
            got = set() if payload is None else {payload["checkpoint"]}
        elif kind == "cli":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = cli.main(["ls", "--json", self.b.url])
            assert code == 0, f"tf-ckpt ls exited {code} at {where}"
            got = {s["prefix"] for s in json.loads(out.getvalue())["steps"] if s["status"] == "committed"}
        elif kind == "cli_subprocess":
            proc = subprocess.run(
                [TF_CKPT, "ls", "--json", self.b.url],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ},
            )
            assert proc.returncode == 0, proc.stderr
            got = {s["prefix"] for s in json.loads(proc.stdout)["steps"] if s["status"] == "committed"}
        else:
            raise AssertionError(kind)
        self._report(kind, got, where)
        return got

    async def run(self, poll_prob: float) -> None:
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        async with CheckpointStorageHook(None).aopen(self.b.url) as adir:
            for i, op in enumerate(self.ops):
                while self.rng.random() < poll_prob:
                    await self.poll(self.rng.choice(self.kinds), adir, f"before op {i} ({op.kind} {op.name})")
                self.b.apply(op)
                if op.commits is not None:
                    self.named = op.commits
            # liveness: everybody sees the new step now
            for kind in [k for k in ("discover", "trigger", "sensor") if k in self.kinds or k == "discover"]:
                got = await self.poll(kind, adir, "end")
                if self.new not in got:
                    self.failures.append(f"{kind} never reported {self.new} (got {sorted(got)})")


def _new_dir(backend: str, tmp_path: Path, gcs=None) -> Backend:
    tag = uuid.uuid4().hex[:10]
    if backend == "local":
        d = tmp_path / f"run-{tag}"
        d.mkdir()
        return Backend(str(d), Location.of(str(d)), True)
    if backend == "memory":
        url = f"memory://torn-{tag}/run"
        loc = Location.of(url)
        loc.fs.mkdir(loc.path)
        return Backend(url, loc, False)
    bucket = gcs.new_bucket("torn")
    url = f"gs://{bucket}/run"
    return Backend(url, Location.of(url), False)


async def run_torn(
    tf_checkpoints,
    tmp_path: Path,
    backend: str,
    runs: int,
    seed: int,
    kinds: list[str],
    poll_prob: float = 0.5,
    gcs=None,
) -> dict[str, int]:
    counters = {"false_fires": 0, "interleavings": 0, "ops": 0}
    failures: list[str] = []
    for r in range(runs):
        variant, before, new, keep = SCENARIOS[r % len(SCENARIOS)]
        files = variant_bytes(tf_checkpoints[variant].dir)
        rng = random.Random(seed * 100_003 + r)
        b = _new_dir(backend, tmp_path, gcs)
        for p in before:  # the steps already committed
            for n in step_files(files, p):
                b.apply(Op("put", n, files[n]))
        if before:
            b.apply(Op("put", "checkpoint", _state(before)))
        run = Interleaving(b, files, before, new, keep, rng, kinds, counters)
        await run.run(poll_prob)
        counters["interleavings"] += 1
        counters["ops"] += len(run.ops)
        failures += [f"run {r} ({variant}, seed {seed}): {f}" for f in run.failures]
        if backend == "memory":
            b.loc.fs.rm(b.loc.path.rsplit("/", 1)[0], recursive=True)
    polls = sum(v for k, v in counters.items() if k.startswith("polls_"))
    print(
        f"\ntorn writes on {backend}: {counters['interleavings']} interleavings, {counters['ops']} "
        f"writer ops, {polls} polls "
        f"({', '.join(f'{k[6:]}={v}' for k, v in sorted(counters.items()) if k.startswith('polls_'))}), "
        f"false fires: {counters['false_fires']}"
    )
    assert counters["false_fires"] == 0, "\n".join(failures[:20])
    assert not failures, "\n".join(failures[:20])
    for k in kinds:
        assert counters.get(f"polls_{k}", 0) > 0, f"no {k} poll ran"
    return counters


KINDS = ["discover", "trigger", "sensor", "cli"]


async def test_torn_writes_local_fast(tf_checkpoints, tmp_path) -> None:
    await run_torn(tf_checkpoints, tmp_path, "local", runs=150, seed=1, kinds=KINDS)


# memory://: the trigger is left out (see test_trigger_on_memory_url_fires below: it never fires there)
MEMORY_KINDS = ["discover", "sensor", "cli"]


async def test_torn_writes_memory_fast(tf_checkpoints, tmp_path) -> None:
    await run_torn(tf_checkpoints, tmp_path, "memory", runs=150, seed=2, kinds=MEMORY_KINDS)


async def test_torn_writes_cli_subprocess(tf_checkpoints, tmp_path) -> None:
    """The real console script, fewer interleavings (a process start per poll)."""
    await run_torn(
        tf_checkpoints, tmp_path, "local", runs=4, seed=3, kinds=["cli_subprocess", "discover"], poll_prob=0.4
    )


@pytest.mark.gcs
async def test_torn_writes_gcs_fast(tf_checkpoints, tmp_path, gcs_emulator) -> None:
    await run_torn(tf_checkpoints, tmp_path, "gcs", runs=8, seed=4, kinds=KINDS, gcs=gcs_emulator)


@pytest.mark.long
async def test_torn_writes_local_long(tf_checkpoints, tmp_path) -> None:
    await run_torn(tf_checkpoints, tmp_path, "local", runs=3000, seed=11, kinds=KINDS)


@pytest.mark.long
async def test_torn_writes_memory_long(tf_checkpoints, tmp_path) -> None:
    await run_torn(tf_checkpoints, tmp_path, "memory", runs=2500, seed=12, kinds=MEMORY_KINDS)


@pytest.mark.long
@pytest.mark.gcs
async def test_torn_writes_gcs_long(tf_checkpoints, tmp_path, gcs_emulator) -> None:
    await run_torn(tf_checkpoints, tmp_path, "gcs", runs=100, seed=14, kinds=KINDS, gcs=gcs_emulator)


def test_false_fire_detector_catches_a_premature_state_file(tf_checkpoints, tmp_path) -> None:
    """The harness itself: a writer that commits the state file BEFORE the index is complete must
    be caught (pollers then rightly say 'committed' while our truth says the files are not all
    there... unless they check completeness: discovery does, so we prove the detector by feeding
    it a poller that trusts the state file alone)."""
    files = variant_bytes(tf_checkpoints["sharded"].dir)
    b = _new_dir("local", tmp_path)
    counters = {"false_fires": 0}
    run = Interleaving(b, files, [], "ckpt-1", None, random.Random(0), ["discover"], counters)
    b.apply(Op("put", "checkpoint", _state(["ckpt-1"])))
    run.named = ["ckpt-1"]
    run._report("naive", {"ckpt-1"}, "state first")  # a poller that trusts the state file alone
    assert counters["false_fires"] == 1
    asyncio.run(run.poll("discover", None, "state first"))  # discovery checks the files: no fire
    assert counters["false_fires"] == 1


async def test_trigger_on_memory_url_fires(tf_checkpoints, tmp_path) -> None:
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook
    from airflow_tf_ckpt.triggers.checkpoint import CheckpointTrigger

    files = variant_bytes(tf_checkpoints["tf2_manager"].dir)
    b = _new_dir("memory", tmp_path)
    for n, data in files.items():
        b.apply(Op("put", n, data))
    trig = CheckpointTrigger(dir=b.url, settle_seconds=0, poll_interval=0.01)
    async with CheckpointStorageHook(None).aopen(b.url) as adir:
        fire, _ = await trig.apoll(trig.make_poller(), adir, None)
    assert [p["checkpoint"] for p in fire] == ["ckpt-5"]
