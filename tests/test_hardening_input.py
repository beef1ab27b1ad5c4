"""Bad input, read side (issue 9, items 9-11): every read is bounded in time and memory, and every
parse error is one line naming the file.

* **FIFOs and devices**: a FIFO, or a symlink to ``/dev/zero``, in place of the state file, an
  index, a data shard, or a metrics, lease, quarantine or ``PROMOTIONS.json`` sidecar. Before the
  fix ``ls``, ``validate`` and ``gc --dry-run`` (and the sensor's poke / the trigger's poll) blocked
  forever on the FIFO and read ``/dev/zero`` until MemoryError. Now: "not a regular file", no wait.
* **Size caps before reading**: a 3 GiB sparse file costs nothing (the cap is checked on the open
  descriptor, then at most cap + 1 bytes are read); on ``gs://`` one ranged read of cap + 1 bytes.
* **Unparseable values**: a lease expiry of 1e20, Infinity, NaN, -5 or a string is a one-line
  problem and a LIVE lease (the step is kept), never an OverflowError that fails every GC of the
  dir; JSON nested 100,000 deep is a one-line error naming the file, not a RecursionError.

The CLI runs in a child interpreter (``cli.main``, exactly the console script's entry) with a
timeout, so a regression that hangs fails instead of hanging the suite, under an address-space
limit (a regression that reads ``/dev/zero`` fails fast), and reports its peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.tf

GiB = 1 << 30
TIMEOUT_S = 90
RSS_LIMIT_MB = 400  # a CLI run reads nothing big: ~100 MB with gcsfs imported
NESTED = b"[" * 100_000 + b"]" * 100_000

# cli.main in ONE child for a batch of commands (a start-up each would cost seconds), under
# RLIMIT_AS: argv[1] is a JSON list of argument lists; it prints one JSON result per command, with
# the peak RSS so far (MB), as each command ends (a hang leaves the ones before it on record)
_CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from airflow_tf_ckpt import cli
    real = sys.stdout
    for args in json.loads(sys.argv[1]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except BaseException as exc:  # noqa: BLE001 - reported, as the console script would
                code, _ = 99, err.write(f"Traceback (escaped): {type(exc).__name__}: {exc}\\n")
        # VmHWM: ru_maxrss would count the parent's RSS from before exec (Linux keeps it)
        rss = next(int(ln.split()[1]) // 1024 for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
        real.write(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(), "rss": rss}) + "\\n")
        real.flush()
""")


@dataclass
class Run:
    code: int
    out: str
    err: str
    rss_mb: int

    @property
    def text(self) -> str:
        return self.out + self.err


def run_batch(commands: list[list[str]], timeout: float = TIMEOUT_S) -> list[Run]:
    """Run ``tf-ckpt`` commands in one child; a hang fails the test (naming the command)."""
    env = {**os.environ, "COLUMNS": "400", "MALLOC_ARENA_MAX": "2"}
    env.pop("TF_CKPT_DEBUG", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(commands)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        lines = proc.stdout.splitlines()
    except subprocess.TimeoutExpired as exc:
        done = (
            (exc.stdout or b"").decode(errors="replace").splitlines()
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "").splitlines()
        )
        pytest.fail(f"tf-ckpt {' '.join(commands[len(done)])} hung: no answer in {timeout} s")
    assert len(lines) == len(commands), proc.stderr[-3000:]
    return [Run(d["code"], d["out"], d["err"], d["rss"]) for d in map(json.loads, lines)]


def run_cli(args: list[str], timeout: float = TIMEOUT_S) -> Run:
    return run_batch([args], timeout)[0]


def assert_clear(r: Run, code: int | tuple[int, ...], *needles: str) -> None:
    """Exit code, no traceback, bounded memory, and the needles in the one-line error (exit 2) or
    in the output."""
    codes = (code,) if isinstance(code, int) else code
    assert "Traceback" not in r.text, r.text[-3000:]
    assert r.code in codes, (
        f"exit {r.code} (expected {codes})\nstdout: {r.out[-2000:]}\nstderr: {r.err[-2000:]}"
    )
    assert 0 < r.rss_mb < RSS_LIMIT_MB, f"peak RSS {r.rss_mb} MB"
    if r.code == 2:
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("tf-ckpt: error: "), r.err
        where = lines[0]
    else:
        where = " ".join(r.text.split())
    for n in needles:
        assert n in where, f"{n!r} not in:\n{where[-3000:]}"


def _lease(expires: object) -> bytes:
    return json.dumps({"prefix": "ckpt-3", "owner": "alice", "acquired": 1.7e9, "expires": expires}).encode()


# ---------------------------------------------------------------------------------------------
# FIFOs and devices (local only: an object store has neither)

FIFO_TARGETS = {  # the file replaced, and the commands that must answer at once
    "state": ("checkpoint", [["ls"], ["validate"], ["gc", "--dry-run", "--keep-last", "1"]]),
    "index": ("ckpt-5.index", [["validate"], ["ls"]]),
    "shard": ("ckpt-5.data-00000-of-00001", [["validate"]]),
    "metrics": ("ckpt-5.metrics.json", [["ls"], ["gc", "--dry-run", "--keep-best", "1", "--metric", "loss"]]),
    "lease": ("ckpt-3.lease-alice", [["gc", "--dry-run", "--keep-last", "1"], ["ls"]]),
    "quarantine": ("ckpt-4.quarantine.json", [["gc", "--dry-run", "--keep-last", "1"], ["ls"]]),
    "promotions": ("PROMOTIONS.json", [["gc", "--dry-run", "--keep-last", "1"]]),
}


def _special(kind: str) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        if p.exists() or p.is_symlink():
            p.unlink()
        if kind == "fifo":
            os.mkfifo(p)
        else:
            p.symlink_to("/dev/zero")

    return make


@pytest.mark.parametrize("special", ["fifo", "devzero"])
def test_special_file_is_refused_at_once(special: str, copy_variant) -> None:
    """Every reader of every kind of file: at once, in bounded memory, the file named."""
    cases: list[tuple[str, str, list[str]]] = []
    for target, (name, commands) in sorted(FIFO_TARGETS.items()):
        d = copy_variant("tf2_manager")
        _special(special)(d / name)
        cases += [(target, name, [cmd[0], str(d), *cmd[1:]]) for cmd in commands]
    for (target, name, args), r in zip(cases, run_batch([c[2] for c in cases]), strict=True):
        assert "Traceback" not in r.text, (args, r.text[-3000:])
        assert 0 < r.rss_mb < RSS_LIMIT_MB, f"{args}: peak RSS {r.rss_mb} MB"
        if r.code == 0:
            continue  # a sidecar this command does not need (ls of a lease, say): never read
        # otherwise the file is named with its problem, in one line (exit 2) or in the report
        where = r.err if r.code == 2 else " ".join(r.text.split())
        assert name in where and "not a regular file" in where, (
            f"{target} {args} -> {r.code}\n{r.text[-3000:]}"
        )
        if r.code == 2:
            assert len([ln for ln in r.err.splitlines() if ln.strip()]) == 1, r.err


def test_special_files_exact_outcomes(copy_variant) -> None:
    """Exit codes: an unusable state file is exit 2; a FIFO index or a /dev/zero shard is a problem
    of the step (exit 1); a FIFO lease is honoured (GC keeps the step); a FIFO promotion lock is
    one that cannot be read (broken, the promotion goes on)."""
    dirs = [copy_variant("tf2_manager") for _ in range(5)]
    _special("fifo")(dirs[0] / "checkpoint")
    _special("fifo")(dirs[1] / "ckpt-5.index")
    _special("devzero")(dirs[2] / "ckpt-5.data-00000-of-00001")
    _special("fifo")(dirs[3] / "ckpt-3.lease-alice")
    dest = dirs[4].parent / f"{dirs[4].name}-dest"
    dest.mkdir()
    _special("fifo")(dest / ".promote.lock")  # unreadable: broken as a lock that cannot be read
    runs = run_batch(
        [
            ["validate", str(dirs[0])],
            ["validate", str(dirs[1]), "--step", "5"],
            ["validate", str(dirs[2]), "--step", "5"],
            ["gc", str(dirs[3]), "--keep-last", "1"],
            ["promote", str(dirs[4]), "--to", str(dest)],
        ]
    )
    assert_clear(runs[0], 2, "checkpoint", "not a regular file (a FIFO)")
    assert_clear(runs[1], 1, "ckpt-5.index", "not a regular file")
    assert_clear(runs[2], 1, "ckpt-5.data-00000-of-00001", "not a regular file")
    assert_clear(runs[3], (0, 1))
    assert (dirs[3] / "ckpt-3.index").exists() and not (dirs[3] / "ckpt-4.index").exists()
    assert_clear(runs[4], 0)
    assert (dest / "PROMOTED.json").is_file() and not (dest / ".promote.lock").exists()


# ---------------------------------------------------------------------------------------------
# size caps before reading: 3 GiB sparse files cost nothing

SPARSE_TARGETS = {
    "state": ("checkpoint", ["validate"], 2),
    "state-ls": ("checkpoint", ["ls"], 2),
    "index": ("ckpt-5.index", ["validate", "--step", "5"], 1),
    # a metrics sidecar that cannot be used is a warning naming it; the step counts as unevaluated
    "metrics": (
        "ckpt-5.metrics.json",
        ["gc", "--dry-run", "--keep-best", "1", "--metric", "loss"],
        (0, 1, 2),
    ),
    "promotions": ("PROMOTIONS.json", ["gc", "--dry-run", "--keep-last", "1"], 2),
}


def _sparse(p: Path, size: int = 3 * GiB) -> None:
    p.unlink(missing_ok=True)
    with open(p, "wb") as fh:
        fh.truncate(size)


def test_sparse_3gib_files_are_too_large_unread(copy_variant) -> None:
    cases = []
    for target, (name, cmd, code) in sorted(SPARSE_TARGETS.items()):
        d = copy_variant("tf2_manager")
        _sparse(d / name)
        cases.append((target, name, code, [cmd[0], str(d), *cmd[1:]]))
    lease_dir = copy_variant("tf2_manager")
    _sparse(lease_dir / "ckpt-3.lease-alice")
    runs = run_batch([c[3] for c in cases] + [["gc", str(lease_dir), "--keep-last", "1"]])
    for (_target, name, code, _args), r in zip(cases, runs, strict=False):
        assert_clear(r, code, name, "too large")
    assert_clear(runs[-1], (0, 1))  # an unreadable lease: honoured, its step kept
    assert (lease_dir / "ckpt-3.index").exists()


# ---------------------------------------------------------------------------------------------
# unparseable values

BAD_EXPIRIES = {
    "1e20": b"1e20",
    "infinity": b"Infinity",
    "nan": b"NaN",
    "negative": b"-5",
    "string": b'"soon"',
    "bool": b"true",
    "huge-int": b"1" + b"0" * 400,
    "1e999": b"1e999",
}


def test_bad_lease_expiry_is_a_live_lease(copy_variant) -> None:
    """Before: OverflowError (1e20, Infinity) and every GC of the dir failed; now a one-line
    problem naming the lease file, and the lease is live: the step is kept."""
    dirs = {}
    for label, raw in BAD_EXPIRIES.items():
        d = dirs[label] = copy_variant("tf2_manager")
        (d / "ckpt-3.lease-alice").write_bytes(
            b'{"prefix": "ckpt-3", "owner": "alice", "acquired": 1.7e9, "expires": ' + raw + b"}"
        )
    cmds = [
        c
        for d in dirs.values()
        for c in (["gc", str(d), "--dry-run", "--keep-last", "1"], ["gc", str(d), "--keep-last", "1"])
    ]
    runs = run_batch(cmds)
    for i, (label, d) in enumerate(dirs.items()):
        dry, real = runs[2 * i], runs[2 * i + 1]
        assert_clear(dry, 0, "ckpt-3", "ckpt-3.lease-alice", "held as live")
        assert_clear(real, (0, 1))
        assert (d / "ckpt-3.index").exists(), (
            f"{label}: a lease whose expiry cannot be read must keep its step"
        )
        assert not (d / "ckpt-4.index").exists(), label


NESTED_TARGETS = {
    "metrics": (
        "ckpt-5.metrics.json",
        ["gc", "--dry-run", "--keep-best", "1", "--metric", "loss"],
        (0, 1, 2),
    ),
    "promotions": ("PROMOTIONS.json", ["gc", "--dry-run", "--keep-last", "1"], 2),
    "lease": ("ckpt-3.lease-alice", ["gc", "--dry-run", "--keep-last", "1"], 0),
    "quarantine": ("ckpt-3.quarantine.json", ["gc", "--dry-run", "--keep-last", "1"], 0),
    "metrics-ls": ("ckpt-5.metrics.json", ["ls"], (0, 2)),
}


def test_deeply_nested_json_sidecars(copy_variant) -> None:
    """Before: RecursionError, naming no file. Now one line naming it (or, for a lease or a
    quarantine record, a step kept whatever the policy)."""
    cases = []
    for target, (name, cmd, code) in sorted(NESTED_TARGETS.items()):
        d = copy_variant("tf2_manager")
        (d / name).write_bytes(NESTED)
        cases.append((target, name, code, [cmd[0], str(d), *cmd[1:]]))
    for (target, name, code, _args), r in zip(cases, run_batch([c[3] for c in cases]), strict=True):
        assert "RecursionError" not in r.text, (target, r.text[-3000:])
        assert_clear(r, code, *((name,) if target not in ("lease", "quarantine") else ()))
        if target in ("lease", "quarantine"):  # unreadable: the step is kept whatever the policy
            kept = [ln for ln in r.text.splitlines() if "ckpt-3 " in ln or "ckpt-3" in ln.split()]
            assert kept and all("delete" not in ln.lower() or "keep" in ln.lower() for ln in kept), r.text
        if target == "metrics-ls":
            assert "nested too deeply" in r.text, r.text


# ---------------------------------------------------------------------------------------------
# gs:// (the emulator): size caps, nested JSON, bad expiries


def _gcs_run(gcs_emulator, copy_variant) -> tuple[object, str]:
    from tests.fixtures.gcs_emulator import upload_dir

    fs = gcs_emulator.fs()
    remote = f"{gcs_emulator.new_bucket('hard')}/run"
    upload_dir(fs, copy_variant("tf2_manager"), remote)
    return fs, remote


@pytest.mark.gcs
def test_gcs_reads_are_bounded(copy_variant, gcs_emulator) -> None:
    """A 320 MB lease and metrics sidecar (read whole before: 2-3x that in RSS), nested JSON, a bad
    lease expiry and an empty sidecar, on the emulator."""
    big = b" " * (320 << 20)
    (fs1, lease_dir), (fs2, metrics_dir), (fs3, nested_dir), (fs4, expiry_dir), (fs5, empty_dir) = (
        _gcs_run(gcs_emulator, copy_variant) for _ in range(5)
    )
    fs1.pipe_file(f"{lease_dir}/ckpt-3.lease-alice", big)
    fs2.pipe_file(f"{metrics_dir}/ckpt-5.metrics.json", big)
    fs3.pipe_file(f"{nested_dir}/PROMOTIONS.json", NESTED)
    fs4.pipe_file(f"{expiry_dir}/ckpt-3.lease-alice", _lease(1e20))
    fs5.pipe_file(f"{empty_dir}/ckpt-3.lease-alice", b"")
    runs = run_batch(
        [
            ["gc", f"gs://{lease_dir}", "--keep-last", "1"],
            ["gc", f"gs://{metrics_dir}", "--dry-run", "--keep-best", "1", "--metric", "loss"],
            ["gc", f"gs://{nested_dir}", "--dry-run", "--keep-last", "1"],
            ["gc", f"gs://{expiry_dir}", "--keep-last", "1"],
            ["gc", f"gs://{empty_dir}", "--keep-last", "1"],
        ],
        timeout=300,
    )
    assert_clear(runs[0], (0, 1))
    assert_clear(runs[1], (0, 1, 2), "ckpt-5.metrics.json", "too large")
    assert "RecursionError" not in runs[2].text
    assert_clear(runs[2], 2, "PROMOTIONS.json", "nested too deeply")
    assert_clear(runs[3], (0, 1))
    assert_clear(runs[4], (0, 1))
    fs1.invalidate_cache()
    for d in (lease_dir, expiry_dir, empty_dir):
        assert fs1.exists(f"{d}/ckpt-3.index"), d
    assert not fs1.exists(f"{expiry_dir}/ckpt-4.index")


@pytest.mark.gcs
def test_gcs_generation_reads_are_bounded(gcs_emulator) -> None:
    """The reads that also take the generation (the GC lock, the state file GC and quarantine
    rewrite, PROMOTIONS.json, metrics) downloaded the whole object before: a 64 MiB GC lock cost
    64 MiB (and was then "an unreadable lock file"). Now the size is asked first and the object is
    refused, naming it, before a byte of it is read."""
    import tracemalloc

    from airflow_tf_ckpt.core.formats.state import MAX_STATE_BYTES
    from airflow_tf_ckpt.core.sidecars.leases import GC_LOCK_NAME, acquire_gc_lock
    from airflow_tf_ckpt.core.storage import gcs
    from airflow_tf_ckpt.core.storage.location import FileTooLargeError, Location

    fs = gcs_emulator.fs()
    run = f"{gcs_emulator.new_bucket('genread')}/run"
    fs.pipe_file(f"{run}/{GC_LOCK_NAME}", b" " * (64 << 20))
    fs.pipe_file(f"{run}/small.json", b'{"a": 1}')
    fs.pipe_file(f"{run}/empty.json", b"")
    tracemalloc.start()
    try:
        with pytest.raises(
            FileTooLargeError, match=rf"gs://{run}/{GC_LOCK_NAME}: .*too large|{GC_LOCK_NAME}"
        ):
            acquire_gc_lock(Location.of(f"gs://{run}"))
        with pytest.raises(FileTooLargeError):
            gcs.read_with_generation(fs, f"{run}/{GC_LOCK_NAME}", MAX_STATE_BYTES // 64, "a state file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"{peak / 2**20:.1f} MiB traced for a refused 64 MiB object"
    data, gen = gcs.read_with_generation(fs, f"{run}/small.json", 1 << 20, "a test object")
    assert data == b'{"a": 1}' and gen > 0
    assert gcs.read_with_generation(fs, f"{run}/empty.json", 1 << 20, "a test object")[0] == b""
    assert gcs.read_with_generation(fs, f"{run}/absent.json", 1 << 20, "a test object") == (None, 0)


# ---------------------------------------------------------------------------------------------
# the sensor's poke and the trigger's poll (the Poller both use), in a child with a timeout

_POLL = textwrap.dedent("""
    import asyncio, sys
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook
    from airflow_tf_ckpt.core.watch.poller import Poller

    def poller():
        return Poller(prefix=None, require_complete=True, settle_seconds=0, state_filename="checkpoint")

    hook = CheckpointStorageHook(None)
    for url in sys.argv[1:]:
        try:
            poller().poll(hook.open(url), None, "newest")
            print(url, "poke: no error", flush=True)
        except Exception as exc:
            print(url, "poke:", type(exc).__name__, exc, flush=True)

        async def main():
            async with hook.aopen(url) as adir:
                await poller().apoll(adir, None, "newest")
        try:
            asyncio.run(main())
            print(url, "poll: no error", flush=True)
        except Exception as exc:
            print(url, "poll:", type(exc).__name__, exc, flush=True)
""")


def _poll(urls: list[str]) -> dict[str, str]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _POLL, *urls],
            capture_output=True,
            text=True,
            timeout=3 * TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"a poll hung: {exc.stdout!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {u: "\n".join(ln for ln in proc.stdout.splitlines() if ln.startswith(u + " ")) for u in urls}


@pytest.mark.gcs
def test_poke_and_poll_are_bounded(copy_variant, gcs_emulator) -> None:
    """A FIFO, /dev/zero or a 3 GiB sparse state file (local) and an 80 MB one (gs://): the poke
    and the poll answer at once with the error naming the file."""
    fifo, zero, sparse = (copy_variant("tf2_manager") for _ in range(3))
    _special("fifo")(fifo / "checkpoint")
    _special("devzero")(zero / "checkpoint")
    _sparse(sparse / "checkpoint")
    fs, remote = _gcs_run(gcs_emulator, copy_variant)
    fs.pipe_file(f"{remote}/checkpoint", b"#" * (80 << 20))
    out = _poll([str(fifo), str(zero), str(sparse), f"gs://{remote}"])
    for d in (fifo, zero):
        assert out[str(d)].count("NotRegularFileError") == 2, out[str(d)]
        assert "checkpoint: not a regular file" in out[str(d)], out[str(d)]
    for u in (str(sparse), f"gs://{remote}"):
        assert out[u].count("FileTooLargeError") == 2, out[u]
        assert "too large for a checkpoint state file" in out[u], out[u]


def test_a_missing_file_whose_path_holds_416_is_missing_not_empty() -> None:
    """A poll reads a missing state file as "none yet"; the 416 ("range not satisfiable": an empty
    object) check looks at the status, never at the digits of a uuid-named dir (found as a flaky
    torn-writes run: ``memory://torn-41603ce850`` read as an empty, TF-rejected state file)."""
    import uuid

    from airflow_tf_ckpt.core.storage.location import Location, range_not_satisfiable, read_ranged

    loc = Location.of(f"memory://run-416-{uuid.uuid4().hex[:8]}/ckpts")
    loc.fs.mkdir(loc.path)
    path = loc.join("checkpoint")
    with pytest.raises(FileNotFoundError):
        read_ranged(loc.fs, path, loc.display("checkpoint"), 1 << 20, "a checkpoint state file")
    assert not range_not_satisfiable(FileNotFoundError(path), path)
    assert not range_not_satisfiable(OSError(f"Forbidden: {path}"), path)
    assert range_not_satisfiable(OSError("Requested range not satisfiable, 416"), path)
