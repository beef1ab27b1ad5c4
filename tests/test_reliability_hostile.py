"""Hostile inputs: every case must end in a CLEAR error, never a traceback, never a wrong answer.

CLI contract (``tf-ckpt``): exit 2 = the input is unusable (one ``tf-ckpt: error: ...`` line on
stderr naming the file / problem); exit 1 = a problem was found in a readable checkpoint (named in
the report); never ``Traceback``. The cases run ``cli.main`` in process (fast); a subset also runs
the real console script.

Defined behaviour for symlinks (local dirs):

* the checkpoint dir itself a symlink: it is followed once (it is what the user named) and works;
* a step file that is a symlink leading OUT of the root: reading it for ``validate`` is allowed
  (reading cannot harm), but GC never deletes through it: the target outside the root stays, byte
  for byte, with its mtime, and the refusal is reported;
* a dangling symlink: the file is reported as unreadable / missing.

GC (``tf-ckpt gc`` and the core ``plan_retention`` + ``apply_plan``): sentinel files OUTSIDE the
root (``../outside/ckpt-1.index``, ``/tmp/sentinel-*/ckpt-1.data-00000-of-00001``, a sentinel
bucket on the emulator) named by a hostile state file are never deleted: their bytes and mtimes
are asserted unchanged, and for local dirs the refusal is reported.

Permission errors: tests run as root here, where ``chmod 000`` does not deny reads; the chmod case
skips (stated reason) when running as root, and "a directory that is a file" covers the same
error path (the OS refuses the listing).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_tf_ckpt import cli
from airflow_tf_ckpt.core.formats.protos import BundleEntryProto, BundleHeaderProto
from airflow_tf_ckpt.core.formats.state import StateFile, format_state
from airflow_tf_ckpt.core.formats.table import encode_varint
from tests.reliability_helpers import reencode_index, table_entries, write_table

pytestmark = pytest.mark.tf

TF_CKPT = str(Path(sys.executable).with_name("tf-ckpt"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(args: list[str]) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return Outcome(code, out.getvalue(), err.getvalue())


def run_cli_subprocess(args: list[str]) -> Outcome:
    env = {**os.environ, "COLUMNS": "400"}
    env.pop("TF_CKPT_DEBUG", None)
    proc = subprocess.run([TF_CKPT, *args], capture_output=True, text=True, timeout=300, env=env)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_clear(o: Outcome, code: int, *needles: str) -> None:
    """The exit code, no traceback, and (exit 2) exactly one stderr line carrying the needles."""
    assert "Traceback" not in o.text, o.text[-3000:]
    assert o.code == code, (
        f"exit {o.code} (expected {code})\nstdout: {o.out[-2000:]}\nstderr: {o.err[-2000:]}"
    )
    lines = [ln for ln in o.err.splitlines() if ln.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("tf-ckpt: error: "), o.err
        where = lines[0]
    else:
        assert len(lines) <= 1, o.err
        where = " ".join(o.text.split())  # rich may wrap long lines of the report
    for n in needles:
        assert n in where, f"{n!r} not in:\n{where[-3000:]}"


# ---------------------------------------------------------------------------------------------
# building hostile dirs (each from a fresh copy of a real TF checkpoint)


def _state_text(paths: list[str]) -> bytes:
    return format_state(
        StateFile(paths[-1], list(paths), [1.7e9 + i for i in range(len(paths))], 0.0)
    ).encode()


def _set_state(d: Path, data: bytes) -> None:
    (d / "checkpoint").write_bytes(data)


def _index(d: Path) -> Path:
    return d / "ckpt-5.index"


def _entries(d: Path) -> list[tuple[bytes, bytes]]:
    return table_entries(_index(d).read_bytes())


@dataclass
class Case:
    id: str
    build: Callable[[Path, Path], list[str]]  # (dir, tmp) -> CLI args
    code: int
    needles: tuple[str, ...]


def _validate(d: Path, step: str = "5") -> list[str]:
    return ["validate", str(d), "--step", step]


def c_state(data: bytes, cmd: str = "validate") -> Callable[[Path, Path], list[str]]:
    def build(d: Path, tmp: Path) -> list[str]:
        _set_state(d, data)
        return ["ls", str(d)] if cmd == "ls" else ["validate", str(d)]

    return build


def c_index(make: Callable[[bytes], bytes], step: str = "5") -> Callable[[Path, Path], list[str]]:
    def build(d: Path, tmp: Path) -> list[str]:
        _index(d).write_bytes(make(_index(d).read_bytes()))
        return _validate(d, step)

    return build


def _bad_magic(b: bytes) -> bytes:
    return b[:-8] + b"\x00" * 8


def _handles(handles: list[tuple[int, int]]) -> Callable[[bytes], bytes]:
    def make(b: bytes) -> bytes:
        entries = table_entries(b)
        return write_table(
            entries, block_size=256, index_handles=[encode_varint(o) + encode_varint(s) for o, s in handles]
        )

    return make


def _header_bytes(raw: bytes) -> Callable[[bytes], bytes]:
    return lambda b: reencode_index(b, header=raw)


def _num_shards(n: int) -> Callable[[bytes], bytes]:
    return lambda b: reencode_index(b, num_shards=n)


def _bad_entry(b: bytes) -> bytes:
    entries = table_entries(b)
    key = next(k for k, _ in entries if k)
    return reencode_index(b, replace={key: b"\xff\xff\xff\xff\x0f garbage"})


def _entry_field(**fields: object) -> Callable[[bytes], bytes]:
    def make(b: bytes) -> bytes:
        entries = table_entries(b)
        key, val = next((k, v) for k, v in entries if k and b"OBJECT_GRAPH" not in k)
        e = BundleEntryProto()
        e.ParseFromString(val)
        for f, v in fields.items():
            setattr(e, f, v)
        return reencode_index(b, replace={key: e.SerializeToString()})

    return make


def _footer_varint_overflow(b: bytes) -> bytes:
    return b[:-48] + b"\xff" * 40 + b[-8:]


def _unsorted(b: bytes) -> bytes:
    entries = table_entries(b)
    entries = [entries[0], *reversed(entries[1:])]
    return write_table(entries)


def _snappy_bomb(b: bytes) -> bytes:
    """A data block that claims snappy compression with a huge declared length."""
    import struct

    from airflow_tf_ckpt.core.formats.crc import mask, value

    contents = encode_varint(1 << 40) + b"\x00" * 8
    trailer = bytes([1]) + struct.pack("<I", mask(value(contents + b"\x01")))
    blk = contents + trailer
    from tests.reliability_helpers import _block, _trailer, footer

    out = bytearray(blk)
    meta = _block([])
    mh = encode_varint(len(out)) + encode_varint(len(meta))
    out += meta + _trailer(meta)
    idx = _block([(b"\xff", encode_varint(0) + encode_varint(len(contents)))], 1)
    ih = encode_varint(len(out)) + encode_varint(len(idx))
    out += idx + _trailer(idx)
    return bytes(out + footer(mh, ih))


def c_sym_shard_dangling(d: Path, tmp: Path) -> list[str]:
    shard = d / "ckpt-5.data-00000-of-00001"
    shard.unlink()
    shard.symlink_to(tmp / "nowhere" / "gone.data")
    return _validate(d)


def c_sym_index_dangling(d: Path, tmp: Path) -> list[str]:
    _index(d).unlink()
    _index(d).symlink_to(tmp / "nowhere" / "gone.index")
    return _validate(d)


def c_step_overflow(d: Path, tmp: Path) -> list[str]:
    big = "ckpt-99999999999999999999999"
    for n in list(os.listdir(d)):
        if n.startswith("ckpt-5."):
            os.rename(d / n, d / n.replace("ckpt-5", big))
    _set_state(d, _state_text(["ckpt-3", "ckpt-4", big]))
    return ["validate", str(d), "--step", "99999999999999999999999"]


def c_missing_dir(d: Path, tmp: Path) -> list[str]:
    return ["ls", str(tmp / "does-not-exist")]


def c_missing_dir_validate(d: Path, tmp: Path) -> list[str]:
    return ["validate", str(tmp / "does-not-exist")]


def c_missing_dir_gc(d: Path, tmp: Path) -> list[str]:
    return ["gc", str(tmp / "does-not-exist"), "--keep-last", "1"]


def c_dir_is_file(d: Path, tmp: Path) -> list[str]:
    f = tmp / "a-file"
    f.write_bytes(b"not a dir")
    return ["ls", str(f)]


def c_dir_is_file_validate(d: Path, tmp: Path) -> list[str]:
    f = tmp / "a-file"
    f.write_bytes(b"not a dir")
    return ["validate", str(f)]


def c_empty_dir(d: Path, tmp: Path) -> list[str]:
    e = tmp / "empty"
    e.mkdir()
    return ["validate", str(e)]


def c_no_files_step(d: Path, tmp: Path) -> list[str]:
    _set_state(d, _state_text(["ckpt-3", "ckpt-4", "ckpt-5", "ckpt-77"]))
    return ["validate", str(d), "--step", "77"]


def c_unknown_step(d: Path, tmp: Path) -> list[str]:
    return ["validate", str(d), "--step", "12345"]


def c_bad_step_arg(d: Path, tmp: Path) -> list[str]:
    return ["validate", str(d), "--step", "-1"]


def c_unknown_scheme(d: Path, tmp: Path) -> list[str]:
    return ["ls", "nosuchscheme://bucket/dir"]


def c_state_is_dir(d: Path, tmp: Path) -> list[str]:
    (d / "checkpoint").unlink()
    (d / "checkpoint").mkdir()
    return ["validate", str(d)]


def c_index_is_dir(d: Path, tmp: Path) -> list[str]:
    _index(d).unlink()
    _index(d).mkdir()
    return _validate(d)


def c_shard_truncated_to_zero(d: Path, tmp: Path) -> list[str]:
    (d / "ckpt-5.data-00000-of-00001").write_bytes(b"")
    return _validate(d)


def c_stray_shard(d: Path, tmp: Path) -> list[str]:
    (d / "ckpt-5.data-00007-of-00009").write_bytes(b"x")
    return _validate(d)


def c_chmod(d: Path, tmp: Path) -> list[str]:
    if IS_ROOT:
        pytest.skip("running as root: chmod 000 does not deny reads (covered by 'dir is a file')")
    _index(d).chmod(0)
    return _validate(d)


HUGE = b'model_checkpoint_path: "ckpt-5"\n' + b"#" * (100 << 20)
S5 = _state_text(["ckpt-3", "ckpt-4", "ckpt-5"])

CASES: list[Case] = [
    # --- state files
    Case("state-dotdot", c_state(_state_text(["../outside/ckpt-5"])), 1, ("climbs out", "..")),
    Case("state-dotdot-mixed", c_state(_state_text(["ckpt-4", "../../etc/ckpt-5"])), 1, ("climbs out",)),
    Case(
        "state-abs-elsewhere",
        c_state(_state_text(["/elsewhere/nothing/ckpt-9"])),
        1,
        ("outside the checkpoint dir",),
    ),
    Case(
        "state-other-bucket",
        c_state(_state_text(["gs://other-bucket/run/ckpt-9"])),
        1,
        ("outside the checkpoint dir",),
    ),
    Case("state-subdir", c_state(_state_text(["sub/ckpt-5"])), 1, ("sub-directory",)),
    Case("state-huge", c_state(HUGE), 2, ("checkpoint", "too large")),
    Case("state-huge-ls", c_state(HUGE, "ls"), 2, ("checkpoint", "too large")),
    Case(
        "state-binary",
        c_state(bytes(random.Random(5).randrange(256) for _ in range(4096))),
        2,
        ("checkpoint",),
    ),
    Case("state-nul", c_state(S5[:10] + b"\x00" + S5[10:]), 2, ("checkpoint", "NUL")),
    Case("state-nul-ls", c_state(b"\x00" * 64, "ls"), 2, ("checkpoint", "NUL")),
    Case("state-bad-utf8", c_state(b'model_checkpoint_path: "ckpt-\xff\xfe5"\n'), 2, ("checkpoint", "UTF-8")),
    Case("state-unknown-field", c_state(S5 + b"frobnicate: 3\n"), 2, ("checkpoint", "frobnicate")),
    Case("state-wrong-type", c_state(b'all_model_checkpoint_timestamps: "soon"\n'), 2, ("checkpoint",)),
    Case("state-unterminated", c_state(b'model_checkpoint_path: "ckpt-5\n'), 2, ("checkpoint",)),
    Case("state-is-dir", c_state_is_dir, 2, ("checkpoint",)),
    Case("state-names-step-without-files", c_no_files_step, 1, ("ckpt-77",)),
    # --- symlinks
    Case("symlink-shard-dangling", c_sym_shard_dangling, 1, ("ckpt-5.data-00000-of-00001",)),
    Case("symlink-index-dangling", c_sym_index_dangling, 1, ("ckpt-5.index",)),
    # --- index files
    Case("index-bad-magic", c_index(_bad_magic), 1, ("ckpt-5.index", "magic")),
    Case("index-empty", c_index(lambda b: b""), 1, ("ckpt-5.index", "truncated")),
    Case("index-short", c_index(lambda b: b[:30]), 1, ("ckpt-5.index",)),
    Case(
        "index-random",
        c_index(lambda b: bytes(random.Random(1).randrange(256) for _ in range(5000))),
        1,
        ("ckpt-5.index",),
    ),
    Case("index-handle-loop", c_index(_handles([(0, 40), (0, 40), (0, 40)])), 1, ("ckpt-5.index", "overlap")),
    Case("index-handle-overlap", c_index(_handles([(0, 60), (30, 60)])), 1, ("ckpt-5.index", "overlap")),
    Case("index-handle-past-end", c_index(_handles([(0, 10**9)])), 1, ("ckpt-5.index", "past the end")),
    Case("index-handle-far-offset", c_index(_handles([(10**12, 5)])), 1, ("ckpt-5.index", "past the end")),
    Case("index-footer-varint-overflow", c_index(_footer_varint_overflow), 1, ("ckpt-5.index",)),
    # both handles past the end, back to back as in a footer (TF follows only the index handle)
    Case(
        "index-footer-past-end",
        c_index(
            lambda b: (
                b[:-48]
                + (encode_varint(0) + encode_varint(10**9) + encode_varint(0) + encode_varint(10**9)).ljust(
                    40, b"\0"
                )
                + b[-8:]
            )
        ),
        1,
        ("ckpt-5.index", "past the end"),
    ),
    Case("index-header-bad-proto", c_index(_header_bytes(b"\xff\xff\xff garbage")), 1, ("ckpt-5.index",)),
    Case("index-header-empty", c_index(_header_bytes(b"")), 1, ("ckpt-5.index", "num_shards 0")),
    Case("index-num-shards-0", c_index(_num_shards(0)), 1, ("ckpt-5.index", "num_shards 0")),
    Case("index-num-shards-1e9", c_index(_num_shards(10**9)), 1, ("ckpt-5.index", "1000000000")),
    Case("index-num-shards-negative", c_index(_num_shards(-1)), 1, ("ckpt-5.index", "num_shards -1")),
    Case("index-num-shards-2", c_index(_num_shards(2)), 1, ("ckpt-5.data-00001-of-00002",)),
    Case(
        "index-header-big-endian-version",
        c_index(
            lambda b: reencode_index(
                b, header=BundleHeaderProto(num_shards=1, endianness=7).SerializeToString()
            )
        ),
        1,
        ("ckpt-5.index", "endianness"),
    ),
    Case("index-entry-bad-proto", c_index(_bad_entry), 1, ("ckpt-5.index",)),
    Case("index-entry-offset-past-shard", c_index(_entry_field(offset=10**12)), 1, ("ckpt-5",)),
    Case("index-entry-shard-id-10e8", c_index(_entry_field(shard_id=10**8)), 1, ("ckpt-5.index", "shard id")),
    Case("index-entry-size-huge", c_index(_entry_field(size=1 << 60)), 1, ("ckpt-5",)),
    Case("index-unsorted-keys", c_index(_unsorted), 1, ("ckpt-5.index",)),
    Case("index-snappy-bomb", c_index(_snappy_bomb), 1, ("ckpt-5.index",)),
    Case("index-is-dir", c_index_is_dir, 1, ("ckpt-5.index",)),
    Case("shard-empty", c_shard_truncated_to_zero, 1, ("ckpt-5.data-00000-of-00001",)),
    Case("shard-stray", c_stray_shard, 1, ("ckpt-5.data-00007-of-00009",)),
    # --- steps and dirs
    Case("step-int64-overflow", c_step_overflow, 2, ("99999999999999999999999",)),
    Case("step-unknown", c_unknown_step, 2, ("12345",)),
    Case("step-negative", c_bad_step_arg, 2, ("-1",)),
    Case("dir-missing-ls", c_missing_dir, 2, ("does-not-exist", "does not exist")),
    Case("dir-missing-validate", c_missing_dir_validate, 2, ("does-not-exist", "does not exist")),
    # GC of a dir not trained into yet is nothing to do (exit 0, as the retention operator)
    Case("dir-missing-gc", c_missing_dir_gc, 0, ("does-not-exist", "does not exist yet: nothing to do")),
    Case("dir-is-file-ls", c_dir_is_file, 2, ("a-file",)),
    Case("dir-is-file-validate", c_dir_is_file_validate, 2, ("a-file",)),
    Case("dir-empty-validate", c_empty_dir, 1, ("no committed checkpoint step",)),
    Case("url-unknown-scheme", c_unknown_scheme, 2, ("nosuchscheme",)),
    Case("permission-denied", c_chmod, 1, ("ckpt-5.index",)),
]

SUBPROCESS_SUBSET = {
    "state-binary",
    "state-dotdot",
    "index-bad-magic",
    "index-num-shards-1e9",
    "dir-missing-validate",
    "step-int64-overflow",
    "state-huge",
}


@pytest.fixture
def hostile(copy_variant, tmp_path):
    def make(case: Case) -> list[str]:
        d = copy_variant("tf2_manager")
        return case.build(d, tmp_path)

    return make


# Known product bugs: the test states the right behaviour and is expected to fail until fixed.
XFAIL: dict[str, str] = {}


def _params(cases: list[Case]) -> list:
    return [
        pytest.param(
            c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=XFAIL[c.id])] if c.id in XFAIL else []
        )
        for c in cases
    ]


@pytest.mark.parametrize("case", _params(CASES))
def test_cli_hostile(case: Case, hostile) -> None:
    args = hostile(case)
    assert_clear(run_cli(args), case.code, *case.needles)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.id in SUBPROCESS_SUBSET],
    ids=[c.id for c in CASES if c.id in SUBPROCESS_SUBSET],
)
def test_cli_hostile_console_script(case: Case, hostile) -> None:
    args = hostile(case)
    assert_clear(run_cli_subprocess(args), case.code, *case.needles)


def test_case_count() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 40


def test_dir_that_is_a_symlink_works(copy_variant, tmp_path) -> None:
    """Defined: the dir the user names may itself be a symlink; it is followed and works."""
    d = copy_variant("tf2_manager")
    link = tmp_path / "link-to-run"
    link.symlink_to(d, target_is_directory=True)
    o = run_cli(["validate", str(link), "--step", "all"])
    assert_clear(o, 0)
    o = run_cli(["ls", "--json", str(link)])
    assert o.code == 0 and '"committed"' in o.out


def test_symlinked_shard_out_of_root_is_read_for_validate(copy_variant, tmp_path) -> None:
    """Defined: reading through a symlink that leads out of the root is allowed (harmless)."""
    d = copy_variant("tf2_manager")
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = d / "ckpt-5.data-00000-of-00001"
    shutil.move(shard, outside / shard.name)
    shard.symlink_to(outside / shard.name)
    assert_clear(run_cli(["validate", str(d), "--step", "5"]), 0)


@pytest.mark.parametrize("cmd", ["ls", "validate"])
def test_dir_that_is_an_object_memory(cmd: str) -> None:
    """Regression: fsspec lists a FILE as itself, which read as an empty dir (exit 0 'no
    checkpoints'); a DIR that is a file is now 'not a directory' (exit 2), on object stores too."""
    from airflow_tf_ckpt.core.storage.location import Location

    url = f"memory://hostile-{uuid.uuid4().hex[:8]}/a-file"
    loc = Location.of(url)
    loc.fs.pipe_file(loc.path, b"not a dir")
    assert_clear(run_cli([cmd, url]), 2, "a-file", "not a directory")


# ---------------------------------------------------------------------------------------------
# GC never touches anything outside the root


def _fingerprint(paths: list[Path]) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def _sentinels(where: Path, files: dict[str, bytes], prefix: str = "ckpt-1") -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for suffix in (".index", ".data-00000-of-00001"):
        p = where / f"{prefix}{suffix}"
        p.write_bytes(files[f"ckpt-5{suffix}"])
        os.utime(p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        out.append(p)
    return out


GC_LAYOUTS = ["dotdot", "absolute", "symlink-shard", "symlink-index", "symlink-both"]


def _gc_layout(layout: str, d: Path, tmp: Path) -> list[Path]:
    files = {n: (d / n).read_bytes() for n in os.listdir(d) if (d / n).is_file()}
    if layout == "dotdot":
        sent = _sentinels(d.parent / "outside", files)
        _set_state(d, _state_text(["../outside/ckpt-1", "ckpt-3", "ckpt-4", "ckpt-5"]))
        return sent
    if layout == "absolute":
        where = Path(f"/tmp/sentinel-{uuid.uuid4().hex[:8]}")
        sent = _sentinels(where, files)
        _set_state(d, _state_text([f"{where}/ckpt-1", "ckpt-3", "ckpt-4", "ckpt-5"]))
        return sent
    # symlinks in the root that lead out of it, for a step that retention deletes (ckpt-3)
    sent = _sentinels(tmp / "outside-target", files, prefix="ckpt-3")
    names = {
        "symlink-shard": [".data-00000-of-00001"],
        "symlink-index": [".index"],
        "symlink-both": [".index", ".data-00000-of-00001"],
    }[layout]
    for suffix in names:
        (d / f"ckpt-3{suffix}").unlink()
        (d / f"ckpt-3{suffix}").symlink_to(tmp / "outside-target" / f"ckpt-3{suffix}")
    return [s for s in sent if any(str(s).endswith(x) for x in names)]


@pytest.mark.parametrize("layout", GC_LAYOUTS)
@pytest.mark.parametrize("how", ["cli", "core"])
def test_gc_never_deletes_outside_the_root(layout: str, how: str, copy_variant, tmp_path) -> None:
    d = copy_variant("tf2_manager")
    sentinels = _gc_layout(layout, d, tmp_path)
    before = _fingerprint(sentinels)
    try:
        if how == "cli":
            o = run_cli(["gc", str(d), "--keep-last", "1"])
            assert "Traceback" not in o.text
            assert o.code in (0, 1), o.text
            report = " ".join(o.text.split())
        else:
            from airflow_tf_ckpt.core.retention.executor import apply_plan
            from airflow_tf_ckpt.core.retention.planner import plan_retention
            from airflow_tf_ckpt.core.retention.policies import policies_from_options

            result = apply_plan(plan_retention(str(d), policies_from_options(keep_last=1)))
            report = str(result.to_dict()) + " " + result.summary()
        assert _fingerprint(sentinels) == before, "a file outside the root changed"
        assert "refused" in report.lower() or "not followed" in report, report[-3000:]
        # the newest step is intact
        assert (d / "ckpt-5.index").is_file() and (d / "ckpt-5.data-00000-of-00001").is_file()
    finally:
        for s in sentinels:
            if str(s).startswith("/tmp/sentinel-"):
                shutil.rmtree(s.parent, ignore_errors=True)


@pytest.mark.gcs
def test_gc_never_touches_a_sentinel_bucket(copy_variant, gcs_emulator) -> None:
    from tests.fixtures.gcs_emulator import upload_dir

    fs = gcs_emulator.fs()
    run_bucket, sentinel_bucket = gcs_emulator.new_bucket("run"), gcs_emulator.new_bucket("sentinel")
    d = copy_variant("tf2_manager")
    files = {n: (d / n).read_bytes() for n in os.listdir(d)}
    for suffix in (".index", ".data-00000-of-00001"):
        fs.pipe_file(f"{sentinel_bucket}/run/ckpt-1{suffix}", files[f"ckpt-5{suffix}"])
    _set_state(d, _state_text([f"gs://{sentinel_bucket}/run/ckpt-1", "ckpt-3", "ckpt-4", "ckpt-5"]))
    upload_dir(fs, d, f"{run_bucket}/run")

    def snap() -> dict[str, tuple[bytes, str]]:
        fs.invalidate_cache()
        return {
            p: (fs.cat_file(p), str(fs.info(p).get("generation") or fs.info(p).get("updated")))
            for p in fs.find(sentinel_bucket)
        }

    before = snap()
    assert len(before) == 2
    o = run_cli(["gc", f"gs://{run_bucket}/run", "--keep-last", "1"])
    assert "Traceback" not in o.text and o.code in (0, 1), o.text
    assert snap() == before
    fs.invalidate_cache()
    left = {p.rsplit("/", 1)[1] for p in fs.find(f"{run_bucket}/run")}
    assert {"ckpt-5.index", "ckpt-5.data-00000-of-00001"} <= left


# ---------------------------------------------------------------------------------------------
# Airflow: a failed task whose log carries the message; DAG parsing unaffected


def _dag(dag_id: str, body: str) -> str:
    lines = "\n".join("    " + line if line.strip() else "" for line in body.strip("\n").splitlines())
    return (
        "from airflow.sdk import DAG\n"
        "from airflow_tf_ckpt.operators import CheckpointRetentionOperator, ValidateCheckpointOperator\n"
        f"with DAG({dag_id!r}, schedule=None) as dag:\n{lines}\n"
    )


@pytest.mark.airflow
def test_airflow_tasks_fail_with_the_message(dag_runner, copy_variant, tmp_path, capfd) -> None:
    bad_index = copy_variant("tf2_manager")
    _index(bad_index).write_bytes(_bad_magic(_index(bad_index).read_bytes()))
    binary_state = copy_variant("tf2_manager")
    _set_state(binary_state, b"\x00\x01binary\xff" * 100)
    shards = copy_variant("tf2_manager")
    _index(shards).write_bytes(_num_shards(10**9)(_index(shards).read_bytes()))
    dotdot = copy_variant("tf2_manager")
    sentinels = _gc_layout("dotdot", dotdot, tmp_path)
    before = _fingerprint(sentinels)
    missing = tmp_path / "no-such-dir"
    r = dag_runner(
        _dag(
            "hostile_tasks",
            f"""
ValidateCheckpointOperator(task_id="bad_magic", ckpt_dir={str(bad_index)!r}, step=5)
ValidateCheckpointOperator(task_id="binary_state", ckpt_dir={str(binary_state)!r})
ValidateCheckpointOperator(task_id="shards_1e9", ckpt_dir={str(shards)!r}, step=5)
ValidateCheckpointOperator(task_id="missing_dir", ckpt_dir={str(missing)!r})
CheckpointRetentionOperator(task_id="gc_dotdot", ckpt_dir={str(dotdot)!r}, keep_last=1)
CheckpointRetentionOperator(task_id="gc_missing_dir", ckpt_dir={str(missing)!r}, keep_last=1)
""",
        ),
        "hostile_tasks",
    )
    out = capfd.readouterr()
    text = " ".join((out.out + out.err).split())
    assert r.task_states["bad_magic"] == "failed"
    assert r.task_states["binary_state"] == "failed"
    assert r.task_states["shards_1e9"] == "failed"
    assert r.task_states["missing_dir"] == "failed"
    assert r.task_states["gc_missing_dir"] == "success"  # nothing to do yet: not a failure
    assert "bad table magic" in text and str(_index(bad_index)) in text
    assert f"{binary_state}/checkpoint" in text and "NUL" in text
    assert "num_shards 1000000000" in text
    assert f"{missing}: directory does not exist" in text
    # GC over a state file that climbs out: the sentinel is untouched, the refusal is in the log
    assert _fingerprint(sentinels) == before
    assert "climbs out" in text
    assert (dotdot / "ckpt-5.index").is_file()


PARSE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print("RESULT" + json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()},
                             "dag_ids": sorted(bag.dag_ids)}))
"""


@pytest.mark.airflow
def test_example_dags_parse_over_a_hostile_dir(copy_variant, tmp_path) -> None:
    """The example DAGs' checkpoint dir full of hostile files: parsing is unaffected (DAG files do
    no I/O on the checkpoint dir at parse time)."""
    import json

    root = tmp_path / "demo"
    root.mkdir()
    d = copy_variant("tf2_manager", root / "checkpoints")
    _set_state(d, b"\x00\xff" * 1000)
    _index(d).write_bytes(b"garbage")
    (d / "ckpt-4.index").unlink()
    (d / "ckpt-4.index").symlink_to("/nonexistent/elsewhere.index")
    (root / "promoted").write_bytes(b"a file where a dir should be")
    home = tmp_path / "home"
    home.mkdir()
    dags = Path(__file__).resolve().parents[1] / "dags"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        TF_CKPT_DEMO_DIR=str(root),
    )
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, str(dags)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[6:])
    assert res["errors"] == {}
    assert set(res["dag_ids"]) == {
        "tf_ckpt_train_demo",
        "tf_ckpt_evaluate_each_step",
        "tf_ckpt_gc",
        "tf_ckpt_event_driven",
    }
