"""Benchmark: cost on large inputs (issue 9, item 13).

    .venv/bin/python bench/large_inputs.py [--entries 1000000] [--state-mb 36] [--polls 3]

1. **A 1M-entry index.** Builds (once; cached) a V2 checkpoint whose ``.index`` lists ``--entries``
   float32[1] tensors (23-32 MB, as a model with a million variables) and one data shard. A child
   interpreter runs ``verify_step`` on it and reports its peak RSS; the baseline child only reads
   the index bytes (imports + the index itself). Target: what verify adds beyond that baseline is
   within a small factor (8x) of the index size. Its time is reported (INFO).
2. **A big state file off TF's canonical spacing** (``--state-mb``, ``model_checkpoint_path:"x"``
   with no space: the slow, text_format path). One parse is timed (INFO); then one ``Poller`` (the
   sensor's poke and the trigger's poll share it) polls the unchanged file ``--polls`` times.
   Target: it is parsed exactly once.

Prints ``RESULT | ... | PASS/MISS`` lines (see ``_common.verdict``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import _common as C  # noqa: E402

MEMORY_FACTOR_TARGET = 8.0

_VERIFY_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from airflow_tf_ckpt.core.verify.engine import verify_step
mode, d = sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
if mode == "read":
    with open(d + "/ckpt-1.index", "rb") as fh:
        data = fh.read()
    ok, n = True, len(data)
else:
    r = verify_step(d, "ckpt-1")
    ok, n = r.ok, r.tensors_checked
# VmHWM, not ru_maxrss: Linux keeps the parent's peak from before exec in ru_maxrss
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(json.dumps({"ok": ok, "n": n, "secs": time.perf_counter() - t0, "rss_mb": hwm / 1024}))
"""


def build_index(entries: int) -> Path:
    """A V2 checkpoint ``ckpt-1`` with ``entries`` float32[1] tensors of zeros (cached)."""
    d = C.cache_dir(f"large-index-{entries}")
    if (d / "ckpt-1.index").exists():
        return d
    from airflow_tf_ckpt.core.formats import crc
    from airflow_tf_ckpt.core.formats.protos import BundleEntryProto, BundleHeaderProto
    from tests.reliability_helpers import write_table

    print(f"  building a {entries:,}-entry index (once) ...", flush=True)
    masked = crc.mask(crc.value(b"\0" * 4))
    pairs = [(b"", BundleHeaderProto(num_shards=1).SerializeToString())]
    for i in range(entries):
        e = BundleEntryProto(dtype=1, shard_id=0, offset=4 * i, size=4, crc32c=masked)
        e.shape.dim.add(size=1)
        pairs.append((b"model/layer_%07d/kernel/.ATTRIBUTES/VARIABLE_VALUE" % i, e.SerializeToString()))
    (d / "ckpt-1.data-00000-of-00001").write_bytes(b"\0" * (4 * entries))
    (d / "ckpt-1.index.tmp").write_bytes(write_table(pairs))
    os.replace(d / "ckpt-1.index.tmp", d / "ckpt-1.index")
    return d


def child(mode: str, d: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _VERIFY_CHILD, str(REPO), mode, str(d)],
        check=True,
        capture_output=True,
        text=True,
        env=C.child_env(),
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_index(entries: int) -> bool:
    d = build_index(entries)
    size_mb = (d / "ckpt-1.index").stat().st_size / C.MiB
    print(f"== verify a {entries:,}-entry index ({size_mb:.1f} MiB)")
    base = child("read", d)
    ours = child("verify", d)
    assert ours["ok"] and ours["n"] == entries, ours
    added = max(0.0, ours["rss_mb"] - base["rss_mb"])
    factor = added / size_mb
    ok = C.verdict(
        "validate of a 1M-entry index: memory within a small factor of the index size",
        f"{ours['rss_mb']:.0f} MB peak RSS ({added:.0f} MB beyond reading the index: {factor:.1f}x its size)",
        f"read the index: {base['rss_mb']:.0f} MB",
        factor,
        f"<= {MEMORY_FACTOR_TARGET:.0f}x the index size",
        factor <= MEMORY_FACTOR_TARGET,
    )
    C.verdict("validate of a 1M-entry index: time", C.fmt_s(ours["secs"]), "-", None, "-", None)
    return bool(ok)


def build_state(mb: int, d: Path) -> tuple[bytes, str]:
    """A state file of about ``mb`` MB off the canonical spacing, and its latest step (which has
    files in ``d``: the poll finds it complete and stops there)."""
    n = mb * C.MiB // 40
    lines = [f'model_checkpoint_path:"ckpt-{n}"'] + [
        f'all_model_checkpoint_paths:"ckpt-{i}"' for i in range(1, n + 1)
    ]
    data = ("\n".join(lines) + "\n").encode()
    from airflow_tf_ckpt.core.formats.protos import BundleHeaderProto
    from tests.reliability_helpers import write_table

    (d / f"ckpt-{n}.index").write_bytes(
        write_table([(b"", BundleHeaderProto(num_shards=1).SerializeToString())])
    )
    (d / f"ckpt-{n}.data-00000-of-00001").write_bytes(b"")
    return data, f"ckpt-{n}"


def bench_state(mb: int, polls: int) -> bool:
    C.airflow_home()
    import airflow_tf_ckpt.core.formats.state as state_mod
    import airflow_tf_ckpt.core.watch.poller as poller_mod
    from airflow_tf_ckpt.core.watch.poller import Poller
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

    d = C.cache_dir(f"large-state-{mb}")
    for p in d.iterdir():
        p.unlink()
    data, latest = build_state(mb, d)
    (d / "checkpoint").write_bytes(data)
    print(f"== poll an unchanged {len(data) / C.MiB:.0f} MiB state file off TF's canonical spacing")
    t0 = time.perf_counter()
    state_mod.parse_state(data, "checkpoint")
    one = time.perf_counter() - t0
    C.verdict("one parse of the state file (slow path)", C.fmt_s(one), "-", None, "-", None)

    real, calls = state_mod.parse_state, [0]

    def counted(text, *args, **kwargs):  # counts parses of THE file (not of a poll's synthetic
        if len(text) == len(data):  # one-chunk state, canonical and tiny); the real parser works
            calls[0] += 1
        return real(text, *args, **kwargs)

    # the poller imports the name: count the calls through its module too (patching only
    # state_mod counted 0 parses since the core moved into sub-packages)
    state_mod.parse_state = poller_mod.parse_state = counted  # type: ignore[assignment]
    try:
        poller = Poller(prefix=None, require_complete=True, settle_seconds=0, state_filename="checkpoint")
        reader = CheckpointStorageHook(None).open(str(d))
        times = []
        for _ in range(polls):
            t0 = time.perf_counter()
            ready, _wait = poller.poll(reader, None, "newest")
            times.append(time.perf_counter() - t0)
            assert ready and ready[0].step.prefix == latest, ready
    finally:
        state_mod.parse_state = poller_mod.parse_state = real
    ok = C.verdict(
        "an unchanged state file is parsed once by one poller",
        f"{calls[0]} parse(s) in {polls} polls "
        f"(first {C.fmt_s(times[0])}, then {C.fmt_s(min(times[1:]) if polls > 1 else 0)})",
        f"{polls} parses",
        None,
        "1 parse",
        calls[0] == 1,
    )
    return bool(ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--state-mb", type=int, default=36)
    ap.add_argument("--polls", type=int, default=3)
    args = ap.parse_args()
    ok = bench_index(args.entries)
    ok = bench_state(args.state_mb, max(2, args.polls)) and ok
    del ok  # MISS lines are the verdict; the run itself succeeded
    return 0


if __name__ == "__main__":
    sys.exit(main())
