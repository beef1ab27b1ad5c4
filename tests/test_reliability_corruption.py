"""Corruption drill: flip random bytes and truncate at random offsets in EVERY checkpoint file of
real TF-written checkpoints, and require ``verify_step`` to detect each case, name the file, and,
where the damage lands inside a tensor's byte range of a data shard, name that tensor.

Checkpoints (the session's real TF fixtures): V2 single shard (``tf2_manager``, ``tf1_saver``),
V2 multi-shard with split tensors whose slices are separate entries (``sharded``), V2 string
tensors (``strings``), and the V1 tables (``v1``, ``v1_sharded``, ``v1_nostep``).

Files under test: each step's ``.index`` and ``.data-NNNNN-of-MMMMM`` shards, and each V1 table.
Not under test: the ``checkpoint`` state file (text; hostile state files are in
``test_reliability_hostile.py``) and ``.meta`` graphs (not part of what a restore checks).

Excluded bytes (bytes TF itself never reads, so a flip there changes nothing a restore sees and no
verifier can or should report it): in a leveldb table, the footer's zero padding after the two
block handles, the metaindex block and its trailer (TF's ``Table::Open`` never reads it: no filter
policy), and a flip inside the footer's metaindex handle that leaves the index handle decoding to
the same value. The data shards of these checkpoints have no gaps between entries (asserted), so
no data-shard byte is excluded. The test prints tried / excluded / detected and asserts
detected == tried - excluded.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

import pytest

from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from tests.reliability_helpers import (
    entry_ranges,
    footer_index_handle,
    step_files,
    table_layout,
    variant_bytes,
)

pytestmark = pytest.mark.tf

# variant -> prefixes whose files are corrupted
TARGETS = {
    "tf2_manager": ["ckpt-5"],
    "tf1_saver": ["my_test_model-600"],
    "sharded": ["ckpt-1"],
    "strings": ["ckpt-1"],
    "v1": ["model.ckpt-2"],
    "v1_sharded": ["model.ckpt-7"],
    "v1_nostep": ["inception_v1.ckpt"],
}


@dataclass
class Target:
    variant: str
    prefix: str
    loc: Location
    files: dict[str, bytes]  # every file of the variant's dir (pristine)
    names: list[str]  # the step's checkpoint files under test
    ranges: dict[str, list[tuple[int, int, str]]]  # data shard -> (lo, hi, tensor)
    tables: dict[str, object]  # table file -> Layout


def _targets(tf_checkpoints) -> list[Target]:
    out = []
    tag = uuid.uuid4().hex[:8]
    for variant, prefixes in TARGETS.items():
        v = tf_checkpoints[variant]
        files = variant_bytes(v.dir)
        loc = Location.of(f"memory://corruption-{tag}/{variant}")
        for name, data in files.items():
            loc.fs.pipe_file(loc.join(name), data)
        for prefix in prefixes:
            names = step_files(files, prefix)
            assert names, f"{variant}: no files for {prefix}"
            ranges: dict[str, list[tuple[int, int, str]]] = {}
            tables = {}
            if v.format == "v2":
                n, entries = entry_ranges(files[f"{prefix}.index"])
                for k in range(n):
                    shard = f"{prefix}.data-{k:05d}-of-{n:05d}"
                    rs = sorted((e.offset, e.offset + e.size, e.tensor) for e in entries if e.shard == k)
                    # no gaps: every data byte belongs to some tensor
                    pos = 0
                    for lo, hi, _ in rs:
                        assert lo <= pos, f"{shard}: gap at {pos}..{lo}"
                        pos = max(pos, hi)
                    assert pos == len(files[shard]), f"{shard}: {len(files[shard]) - pos} trailing bytes"
                    ranges[shard] = rs
                tables[f"{prefix}.index"] = table_layout(files[f"{prefix}.index"])
            else:
                for name in names:
                    tables[name] = table_layout(files[name])
            report = verify_step(loc, prefix)
            assert report.ok, f"pristine {variant}/{prefix} does not verify: {report.summary()}"
            out.append(Target(variant, prefix, loc, files, names, ranges, tables))
    return out


def _excluded(t: Target, name: str, damaged: bytes, op: str, offset: int) -> bool:
    layout = t.tables.get(name)
    if layout is None or op != "flip":
        return False
    if layout.is_unread(offset):
        return True
    foot = layout.size - 48
    if foot <= offset < foot + 40 and footer_index_handle(damaged) == layout.index_handle:
        return True  # inside the metaindex handle, the index handle unchanged: TF reads the same
    return False


def _check_damage(t, name: str, orig: bytes, damaged: bytes, offset: int) -> str | None:
    """Put ``damaged`` in place of file ``name``, verify, restore the file; ``None`` when the damage
    is detected with the file named (and the tensor whose byte range holds ``offset``, if any),
    else what was missed."""
    t.loc.fs.pipe_file(t.loc.join(name), damaged)
    try:
        report = verify_step(t.loc, t.prefix)
    finally:
        t.loc.fs.pipe_file(t.loc.join(name), orig)
    display = t.loc.display(name)
    problems = [str(p) for p in report.problems]
    if report.ok:
        return "not detected"
    if not any(p.file == display for p in report.problems):
        return f"file not named: {problems}"
    hit = [tensor for lo, hi, tensor in t.ranges.get(name, []) if lo <= offset < hi]
    if hit and not any(p.tensor in hit for p in report.problems if p.file == display):
        return f"tensor {hit} not named: {problems}"
    return None


def run_drill(tf_checkpoints, cases: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    targets = _targets(tf_checkpoints)
    # every file of every target gets cases in turn (round robin), then random ones
    plan = [(t, n) for t in targets for n in t.names]
    tried = excluded = detected = 0
    misses: list[str] = []
    per_file: dict[str, int] = {}
    for i in range(cases):
        t, name = plan[i % len(plan)]
        orig = t.files[name]
        op = rng.choice(("flip", "flip", "truncate"))
        offset = rng.randrange(len(orig))
        if op == "flip":
            damaged = bytearray(orig)
            damaged[offset] ^= rng.randrange(1, 256)
            damaged = bytes(damaged)
        else:
            damaged = orig[:offset]
        tried += 1
        what = f"{t.variant}/{name} {op}@{offset}"
        if _excluded(t, name, damaged, op, offset):
            excluded += 1
            continue
        miss = _check_damage(t, name, orig, damaged, offset)
        if miss:
            misses.append(f"{what}: {miss}")
            continue
        detected += 1
        per_file[f"{t.variant}/{name}"] = per_file.get(f"{t.variant}/{name}", 0) + 1
    figures = {
        "tried": tried,
        "excluded": excluded,
        "detected": detected,
        "files": len(plan),
        "files_hit": len(per_file),
    }
    print(
        f"\ncorruption drill (seed {seed}): tried {tried}, excluded (never read by TF) {excluded}, "
        f"detected {detected} over {len(plan)} files of {len(targets)} checkpoints"
    )
    assert not misses, f"{len(misses)} undetected/misreported cases:\n" + "\n".join(misses[:30])
    assert detected == tried - excluded
    assert len(per_file) == len(plan), "some file was never corrupted with a detectable case"
    return figures


def test_corruption_fast(tf_checkpoints) -> None:
    run_drill(tf_checkpoints, cases=200, seed=1234)


@pytest.mark.long
def test_corruption_long(tf_checkpoints) -> None:
    run_drill(tf_checkpoints, cases=3000, seed=98765)


def test_every_byte_of_a_small_shard_and_index(tf_checkpoints) -> None:
    """Exhaustive on the smallest V2 step (tf1_saver's last step): every byte of the data shard and
    of the index, flipped once each; every truncation length of the data shard."""
    targets = [t for t in _targets(tf_checkpoints) if t.variant == "tf1_saver"]
    t = targets[0]
    tried = detected = excluded = 0
    misses = []
    for name in t.names:
        orig = t.files[name]
        ops = [("flip", o) for o in range(len(orig))]
        if ".data-" in name:
            ops += [("truncate", o) for o in range(len(orig))]
        for op, offset in ops:
            damaged = (
                (orig[:offset] + bytes([orig[offset] ^ 0x40]) + orig[offset + 1 :])
                if op == "flip"
                else orig[:offset]
            )
            tried += 1
            if _excluded(t, name, damaged, op, offset):
                excluded += 1
                continue
            miss = _check_damage(t, name, orig, damaged, offset)
            if miss:
                misses.append(f"{name} {op}@{offset}: {miss}")
            else:
                detected += 1
    print(f"\nexhaustive tf1_saver: tried {tried}, excluded {excluded}, detected {detected}")
    assert not misses, "\n".join(misses[:20])
    assert detected == tried - excluded > 0
