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

from airflow_tf_ckpt.core.state import StateFile, format_state

pytestmark = pytest.mark.tf

GiB = 1 << 30
TIMEOUT_S = 90
RSS_LIMIT_MB = 400  # a CLI run reads nothing big: ~100 MB with gcsfs imported
NESTED = b"[" * 100_000 + b"]" * 100_000

# cli.main in a child, under RLIMIT_AS, writing its peak RSS (MB) to the file named by argv[1]
_CHILD = textwrap.dedent("""
    import os, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from airflow_tf_ckpt import cli
    try:
        code = cli.main(sys.argv[2:])
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        with open(sys.argv[1], "w") as fh:
            fh.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))
    sys.exit(code)
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


def run_cli(args: list[str], tmp: Path, timeout: float = TIMEOUT_S) -> Run:
    rss_file = tmp / f"rss-{os.getpid()}-{len(list(tmp.glob('rss-*')))}"
    env = {**os.environ, "COLUMNS": "400", "MALLOC_ARENA_MAX": "2"}
    env.pop("TF_CKPT_DEBUG", None)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(rss_file), *args], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tf-ckpt {' '.join(args)} hung: no answer in {timeout} s")
    rss = int(rss_file.read_text()) if rss_file.exists() else -1
    return Run(proc.returncode, proc.stdout, proc.stderr, rss)


def assert_clear(r: Run, code: int | tuple[int, ...], *needles: str) -> None:
    """Exit code, no traceback, bounded memory, and the needles in the one-line error (exit 2) or
    in the output."""
    codes = (code,) if isinstance(code, int) else code
    assert "Traceback" not in r.text, r.text[-3000:]
    assert r.code in codes, f"exit {r.code} (expected {codes})\nstdout: {r.out[-2000:]}\nstderr: {r.err[-2000:]}"
    assert 0 < r.rss_mb < RSS_LIMIT_MB, f"peak RSS {r.rss_mb} MB"
    if r.code == 2:
        lines = [ln for ln in r.err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("tf-ckpt: error: "), r.err
        where = lines[0]
    else:
        where = " ".join(r.text.split())
    for n in needles:
        assert n in where, f"{n!r} not in:\n{where[-3000:]}"


def _state(paths: list[str]) -> bytes:
    return format_state(StateFile(paths[-1], list(paths), [1.7e9 + i for i in range(len(paths))], 0.0)).encode()


def _lease(expires: object) -> bytes:
    return json.dumps({"prefix": "ckpt-3", "owner": "alice", "acquired": 1.7e9, "expires": expires}).encode()


def _metrics(step: int = 5) -> bytes:
    return json.dumps({"step": step, "metrics": {"loss": 0.5}, "time": 1.7e9}).encode()


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
        if p.exists():
            p.unlink()
        if kind == "fifo":
            os.mkfifo(p)
        else:
            p.symlink_to("/dev/zero")
    return make


@pytest.mark.parametrize("special", ["fifo", "devzero"])
@pytest.mark.parametrize("target", sorted(FIFO_TARGETS))
def test_special_file_is_refused_at_once(target: str, special: str, copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    name, commands = FIFO_TARGETS[target]
    _special(special)(d / name)
    for cmd in commands:
        r = run_cli([cmd[0], str(d), *cmd[1:]], tmp_path)
        assert "Traceback" not in r.text, r.text[-3000:]
        assert 0 < r.rss_mb < RSS_LIMIT_MB, f"{cmd}: peak RSS {r.rss_mb} MB"
        if r.code == 0:
            continue  # a sidecar this command does not need (ls of a lease, say): never read
        # otherwise the file is named with its problem, in one line (exit 2) or in the report
        where = r.err if r.code == 2 else " ".join(r.text.split())
        assert name in where and "not a regular file" in where, f"{cmd} -> {r.code}\n{r.text[-3000:]}"
        if r.code == 2:
            assert len([ln for ln in r.err.splitlines() if ln.strip()]) == 1, r.err


def test_fifo_state_file_validate_exits_2_naming_it(copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    _special("fifo")(d / "checkpoint")
    assert_clear(run_cli(["validate", str(d)], tmp_path), 2, "checkpoint", "not a regular file (a FIFO)")


def test_fifo_index_is_a_problem_of_the_step(copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    _special("fifo")(d / "ckpt-5.index")
    assert_clear(run_cli(["validate", str(d), "--step", "5"], tmp_path), 1, "ckpt-5.index", "not a regular file")


def test_devzero_shard_is_a_problem_of_the_step(copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    _special("devzero")(d / "ckpt-5.data-00000-of-00001")
    assert_clear(run_cli(["validate", str(d), "--step", "5"], tmp_path), 1, "ckpt-5.data-00000-of-00001",
                 "not a regular file")


def test_fifo_lease_keeps_its_step(copy_variant, tmp_path: Path) -> None:
    """An unreadable lease is honoured: GC keeps the step (and answers at once)."""
    d = copy_variant("tf2_manager")
    _special("fifo")(d / "ckpt-3.lease-alice")
    r = run_cli(["gc", str(d), "--keep-last", "1"], tmp_path)
    assert_clear(r, (0, 1))
    assert (d / "ckpt-3.index").exists() and not (d / "ckpt-4.index").exists()


# ---------------------------------------------------------------------------------------------
# size caps before reading: 3 GiB sparse files cost nothing

SPARSE_TARGETS = {
    "state": ("checkpoint", ["validate"], 2),
    "state-ls": ("checkpoint", ["ls"], 2),
    "index": ("ckpt-5.index", ["validate", "--step", "5"], 1),
    "metrics": ("ckpt-5.metrics.json", ["gc", "--dry-run", "--keep-best", "1", "--metric", "loss"], (1, 2)),
    "promotions": ("PROMOTIONS.json", ["gc", "--dry-run", "--keep-last", "1"], 2),
}


@pytest.mark.parametrize("target", sorted(SPARSE_TARGETS))
def test_sparse_3gib_file_is_too_large_unread(target: str, copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    name, cmd, code = SPARSE_TARGETS[target]
    p = d / name
    p.unlink(missing_ok=True)
    with open(p, "wb") as fh:
        fh.truncate(3 * GiB)
    assert_clear(run_cli([cmd[0], str(d), *cmd[1:]], tmp_path), code, name, "too large")


def test_sparse_3gib_lease_is_honoured_unread(copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    with open(d / "ckpt-3.lease-alice", "wb") as fh:
        fh.truncate(3 * GiB)
    assert_clear(run_cli(["gc", str(d), "--keep-last", "1"], tmp_path), (0, 1))
    assert (d / "ckpt-3.index").exists()


# ---------------------------------------------------------------------------------------------
# unparseable values

BAD_EXPIRIES = {"1e20": 1e20, "infinity": float("inf"), "nan": float("nan"), "negative": -5.0,
                "string": "soon", "bool": True, "huge-int": 10 ** 400}


@pytest.mark.parametrize("expiry", sorted(BAD_EXPIRIES))
def test_bad_lease_expiry_is_a_live_lease(expiry: str, copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    value = BAD_EXPIRIES[expiry]
    body = (b'{"prefix": "ckpt-3", "owner": "alice", "acquired": 1.7e9, "expires": ' + b"1" + b"0" * 400 + b"}"
            if expiry == "huge-int" else _lease(value))
    (d / "ckpt-3.lease-alice").write_bytes(body)
    r = run_cli(["gc", str(d), "--dry-run", "--keep-last", "1"], tmp_path)
    assert_clear(r, 0, "ckpt-3", "alice", "held as live")
    r = run_cli(["gc", str(d), "--keep-last", "1"], tmp_path)
    assert_clear(r, (0, 1))
    assert (d / "ckpt-3.index").exists(), "a lease whose expiry cannot be read must keep its step"
    assert not (d / "ckpt-4.index").exists()


NESTED_TARGETS = {
    "metrics": ("ckpt-5.metrics.json", ["gc", "--dry-run", "--keep-best", "1", "--metric", "loss"], (1, 2)),
    "promotions": ("PROMOTIONS.json", ["gc", "--dry-run", "--keep-last", "1"], 2),
    "lease": ("ckpt-3.lease-alice", ["gc", "--dry-run", "--keep-last", "1"], 0),
    "quarantine": ("ckpt-3.quarantine.json", ["gc", "--dry-run", "--keep-last", "1"], 0),
}


@pytest.mark.parametrize("target", sorted(NESTED_TARGETS))
def test_deeply_nested_json_sidecar(target: str, copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    name, cmd, code = NESTED_TARGETS[target]
    (d / name).write_bytes(NESTED)
    r = run_cli([cmd[0], str(d), *cmd[1:]], tmp_path)
    assert "RecursionError" not in r.text, r.text[-3000:]
    needles = (name,) if code != 0 else ()
    assert_clear(r, code, *needles)
    if target in ("lease", "quarantine"):  # unreadable: the step is kept whatever the policy
        assert "ckpt-3" in " ".join(r.text.split()) and "KEEP" in r.text.upper()


def test_nested_metrics_named_in_ls(copy_variant, tmp_path: Path) -> None:
    d = copy_variant("tf2_manager")
    (d / "ckpt-5.metrics.json").write_bytes(NESTED)
    r = run_cli(["ls", str(d)], tmp_path)
    assert "RecursionError" not in r.text and "Traceback" not in r.text, r.text[-3000:]
    assert "ckpt-5.metrics.json" in " ".join(r.text.split()) and "nested too deeply" in r.text


# ---------------------------------------------------------------------------------------------
# gs:// (the emulator): size caps and nested JSON


@pytest.fixture
def gcs_dir(copy_variant, gcs_emulator):
    from tests.fixtures.gcs_emulator import upload_dir

    fs = gcs_emulator.fs()
    bucket = gcs_emulator.new_bucket("hard")
    d = copy_variant("tf2_manager")
    upload_dir(fs, d, f"{bucket}/run")
    return fs, f"{bucket}/run"


@pytest.mark.gcs
def test_gcs_huge_lease_is_read_no_further_than_its_cap(gcs_dir, tmp_path: Path) -> None:
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/ckpt-3.lease-alice", b" " * (320 << 20))  # 320 MB: read whole, 2-3x that in RSS
    r = run_cli(["gc", f"gs://{remote}", "--keep-last", "1"], tmp_path, timeout=180)
    assert_clear(r, (0, 1))
    fs.invalidate_cache()
    assert fs.exists(f"{remote}/ckpt-3.index")


@pytest.mark.gcs
def test_gcs_huge_metrics_too_large(gcs_dir, tmp_path: Path) -> None:
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/ckpt-5.metrics.json", b" " * (320 << 20))
    r = run_cli(["gc", f"gs://{remote}", "--dry-run", "--keep-best", "1", "--metric", "loss"], tmp_path,
                timeout=180)
    assert_clear(r, (1, 2), "ckpt-5.metrics.json", "too large")


@pytest.mark.gcs
def test_gcs_nested_promotions_names_the_file(gcs_dir, tmp_path: Path) -> None:
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/PROMOTIONS.json", NESTED)
    r = run_cli(["gc", f"gs://{remote}", "--dry-run", "--keep-last", "1"], tmp_path)
    assert "RecursionError" not in r.text
    assert_clear(r, 2, "PROMOTIONS.json", "nested too deeply")


@pytest.mark.gcs
def test_gcs_bad_lease_expiry_is_live(gcs_dir, tmp_path: Path) -> None:
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/ckpt-3.lease-alice", _lease(1e20))
    assert_clear(run_cli(["gc", f"gs://{remote}", "--keep-last", "1"], tmp_path), (0, 1))
    fs.invalidate_cache()
    assert fs.exists(f"{remote}/ckpt-3.index") and not fs.exists(f"{remote}/ckpt-4.index")


@pytest.mark.gcs
def test_gcs_empty_sidecar_reads_as_empty(gcs_dir, tmp_path: Path) -> None:
    """The ranged read of cap + 1 bytes works on an empty object too (a malformed lease, honoured)."""
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/ckpt-3.lease-alice", b"")
    assert_clear(run_cli(["gc", f"gs://{remote}", "--keep-last", "1"], tmp_path), (0, 1))
    fs.invalidate_cache()
    assert fs.exists(f"{remote}/ckpt-3.index")


# ---------------------------------------------------------------------------------------------
# the sensor's poke and the trigger's poll (the Poller both use), in a child with a timeout

_POLL = textwrap.dedent("""
    import asyncio, sys
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook
    from airflow_tf_ckpt.triggers.checkpoint import Poller

    def poller():
        return Poller(prefix=None, require_complete=True, settle_seconds=0, state_filename="checkpoint")

    hook = CheckpointStorageHook(None)
    try:
        poller().poll(hook.open(sys.argv[1]), None, "newest")
        print("poke: no error")
    except Exception as exc:
        print("poke:", type(exc).__name__, exc)

    async def main():
        async with hook.aopen(sys.argv[1]) as adir:
            await poller().apoll(adir, None, "newest")
    try:
        asyncio.run(main())
        print("poll: no error")
    except Exception as exc:
        print("poll:", type(exc).__name__, exc)
""")


def _poll(url: str) -> str:
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    try:
        proc = subprocess.run([sys.executable, "-c", _POLL, url], capture_output=True, text=True, timeout=TIMEOUT_S,
                              env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a poll of {url} hung")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("special", ["fifo", "devzero"])
def test_poke_and_poll_refuse_a_special_state_file(special: str, copy_variant) -> None:
    d = copy_variant("tf2_manager")
    _special(special)(d / "checkpoint")
    out = _poll(str(d))
    for line in ("poke: NotRegularFileError", "poll: NotRegularFileError"):
        assert line in out and "checkpoint: not a regular file" in out, out


def test_poke_and_poll_refuse_a_sparse_state_file_unread(copy_variant) -> None:
    d = copy_variant("tf2_manager")
    (d / "checkpoint").unlink()
    with open(d / "checkpoint", "wb") as fh:
        fh.truncate(3 * GiB)
    out = _poll(str(d))
    assert out.count("FileTooLargeError") == 2 and "too large for a checkpoint state file" in out, out


@pytest.mark.gcs
def test_gcs_poll_reads_a_huge_state_file_no_further_than_its_cap(gcs_dir) -> None:
    fs, remote = gcs_dir
    fs.pipe_file(f"{remote}/checkpoint", b"#" * (80 << 20))
    out = _poll(f"gs://{remote}")
    assert out.count("FileTooLargeError") == 2 and "too large for a checkpoint state file" in out, out


def test_async_reader_is_bounded(tmp_path: Path) -> None:
    """The hook's local async reader: a FIFO answers at once (in a thread: would hang the test)."""
    os.mkfifo(tmp_path / "checkpoint")
    out = _poll(str(tmp_path))
    assert "poll: NotRegularFileError" in out, out
