"""verify_step on real TF checkpoints: passes on every variant, and names file + tensor on damage.

Damage is done to copies (``copy_variant``). Where it matters, TF itself (in a subprocess) is
asked the same question, so "our verifier says broken" is checked against "TF fails to restore".
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.bundle import read_bundle
from airflow_tf_ckpt.core.formats.protos import BundleEntryProto
from airflow_tf_ckpt.core.formats.table import Table
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from airflow_tf_ckpt.core.verify.report import Problem, VerifyReport
from tests.fixtures.tf_checkpoints import tf_batch
from tests.test_table import bundle_index

pytestmark = pytest.mark.tf

SPLIT = "big/.ATTRIBUTES/VARIABLE_VALUE"
WORDS = "words/.ATTRIBUTES/VARIABLE_VALUE"


def _all_prefixes(tf_checkpoints) -> Iterator[tuple[str, str]]:
    for v in tf_checkpoints:
        for p in v.prefixes:
            yield v.name, p


def _flip(path: Path, offset: int, bit: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= bit
    path.write_bytes(bytes(data))


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _only(report: VerifyReport, kind: str | None = None) -> list[Problem]:
    assert not report.ok, report.summary()
    probs = [p for p in report.problems if kind is None or p.kind == kind]
    assert probs, report.summary()
    return probs


def _entry(d: Path, prefix: str, display_name: str):
    b = read_bundle(Location.of(str(d)), prefix)
    return next(e for e in b.entries if e.display_name == display_name)


# ---------------------------------------------------------------------------------------------
# sound checkpoints


@pytest.mark.parametrize("chunk_size", [8 << 20, 3])
def test_every_variant_verifies(tf_checkpoints, chunk_size: int) -> None:
    for name, prefix in _all_prefixes(tf_checkpoints):
        v = tf_checkpoints[name]
        seen: list[tuple[int, int]] = []
        r = verify_step(
            str(v.dir), prefix, chunk_size=chunk_size, progress=lambda d, t, s=seen: s.append((d, t))
        )
        assert r.ok, r.summary()
        assert r.format == v.format and r.prefix == prefix
        assert r.tensors_checked > 0 and r.bytes_checked > 0
        json.dumps(r.to_dict())
        if v.format == "v2" and seen:
            assert seen[-1][0] == seen[-1][1] and all(
                a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False)
            )


def test_slices_and_strings_are_really_checked(tf_checkpoints) -> None:
    v = tf_checkpoints["sharded"]
    r = verify_step(str(v.dir), "ckpt-1")
    b = read_bundle(Location.of(str(v.dir)), "ckpt-1")
    slices = b.slice_entries(SPLIT)
    assert len(slices) >= 2 and len({s.shard_id for s in slices}) >= 2  # split across shards
    assert r.tensors_checked == len(b.data_entries())
    assert len(r.files) == 1 + 4  # index + 4 shards
    s = tf_checkpoints["strings"]
    words = _entry(s.dir, "ckpt-1", WORDS)
    assert words.dtype == 7 and words.shape == (3, 2)


def test_bundle_lists_what_tf_lists(tf_checkpoints) -> None:
    targets = [(n, p) for n, p in _all_prefixes(tf_checkpoints) if tf_checkpoints[n].format == "v2"]
    answers = tf_batch([("variable_map", [tf_checkpoints[n].prefix_path(p)]) for n, p in targets])
    for (name, prefix), tf_map in zip(targets, answers, strict=True):
        b = read_bundle(Location.of(str(tf_checkpoints[name].dir)), prefix)
        ours = {t.name: {"shape": list(t.shape), "dtype": t.dtype_name} for t in b.tensors().values()}
        assert ours == tf_map, (name, prefix)
    assert SPLIT in answers[[n for n, _ in targets].index("sharded")]
    varlist = answers[[n for n, _ in targets].index("tf1_varlist")]
    assert set(varlist) == {"encoder/kernel"}


# ---------------------------------------------------------------------------------------------
# damage: each names the right file (and tensor where there is one)


def test_byte_flip_in_shard_names_file_and_tensor(copy_variant) -> None:
    d = copy_variant("tf1_saver")
    w1 = _entry(d, "my_test_model-600", "w1")
    shard = d / "my_test_model-600.data-00000-of-00001"
    _flip(shard, w1.offset + w1.size // 2)
    r = verify_step(str(d), "my_test_model-600")
    (p,) = _only(r)
    assert (p.kind, p.tensor, p.file) == ("checksum_mismatch", "w1", str(shard))
    assert p.expected == f"0x{w1.crc32c:08x}" and p.actual != p.expected


def test_byte_flip_in_index(copy_variant) -> None:
    d = copy_variant("tf2_manager")
    index = d / "ckpt-5.index"
    _flip(index, 40)
    r = verify_step(str(d), "ckpt-5")
    p = _only(r, "checksum_mismatch")[0]
    assert p.file == str(index) and "crc32c" in p.message


def test_truncated_shard_names_tensors_past_the_end(copy_variant) -> None:
    d = copy_variant("tf2_manager")
    shard = d / "ckpt-5.data-00000-of-00001"
    size = shard.stat().st_size
    _truncate(shard, size // 2)
    b = read_bundle(Location.of(str(d)), "ckpt-5")
    past = {e.display_name for e in b.data_entries() if e.offset + e.size > size // 2}
    r = verify_step(str(d), "ckpt-5")
    probs = _only(r, "truncated")
    assert {p.tensor for p in probs} == past and all(p.file == str(shard) for p in probs)
    assert r.tensors_checked == len(b.data_entries()) - len(past)


@pytest.mark.parametrize("how", ["truncate_tail", "half_written", "wrong_magic", "empty"])
def test_broken_index(copy_variant, how: str) -> None:
    d = copy_variant("sharded")
    index = d / "ckpt-1.index"
    data = index.read_bytes()
    if how == "truncate_tail":
        index.write_bytes(data[:-5])
    elif how == "half_written":
        index.write_bytes(data[: len(data) // 2])
    elif how == "wrong_magic":
        index.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        index.write_bytes(b"")
    r = verify_step(str(d), "ckpt-1")
    (p,) = _only(r)
    assert p.file == str(index) and p.kind in ("bad_magic", "truncated")
    assert r.tensors_checked == 0


def test_missing_shard(copy_variant) -> None:
    d = copy_variant("sharded")
    b = read_bundle(Location.of(str(d)), "ckpt-1")
    in_shard2 = [e.display_name for e in b.data_entries() if e.shard_id == 2]
    (d / "ckpt-1.data-00002-of-00004").unlink()
    r = verify_step(str(d), "ckpt-1")
    (p,) = _only(r)
    assert p.kind == "missing_file" and p.file == str(d / "ckpt-1.data-00002-of-00004")
    assert in_shard2 and all(n in p.message for n in in_shard2)
    assert r.tensors_checked == len(b.data_entries()) - len(in_shard2)


def test_missing_index(copy_variant) -> None:
    d = copy_variant("sharded")
    (d / "ckpt-1.index").unlink()
    r = verify_step(str(d), "ckpt-1")
    (p,) = _only(r)
    assert (p.kind, p.file) == ("missing_file", str(d / "ckpt-1.index"))


def test_flip_inside_one_slice_names_that_slice(copy_variant) -> None:
    d = copy_variant("sharded")
    b = read_bundle(Location.of(str(d)), "ckpt-1")
    victim = [e for e in b.slice_entries(SPLIT) if e.shard_id == 1][-1]
    shard = d / f"ckpt-1.data-{victim.shard_id:05d}-of-00004"
    _flip(shard, victim.offset + 1)
    r = verify_step(str(d), "ckpt-1")
    (p,) = _only(r)
    assert p.kind == "checksum_mismatch" and p.file == str(shard)
    assert p.tensor == victim.display_name and p.tensor.startswith(SPLIT + "[")


@pytest.mark.parametrize("where", ["lengths", "length_checksum", "bytes"])
def test_flip_inside_string_tensor(copy_variant, where: str) -> None:
    d = copy_variant("strings")
    words = _entry(d, "ckpt-1", WORDS)
    # 6 elements: lengths 5, 0, 300 (2-byte varint), 14, 1, 3 -> 7 bytes of varints, then 4 bytes
    offset = {
        "lengths": words.offset,
        "length_checksum": words.offset + 8,
        "bytes": words.offset + words.size - 2,
    }[where]
    _flip(d / "ckpt-1.data-00000-of-00001", offset, 0x02 if where != "lengths" else 0x01)
    r = verify_step(str(d), "ckpt-1", chunk_size=5)
    probs = _only(r)
    assert {p.tensor for p in probs} == {WORDS}
    assert "checksum_mismatch" in {p.kind for p in probs}


def test_bad_protobuf_in_index_names_key(tmp_path: Path) -> None:
    good = BundleEntryProto(dtype=1, size=4, crc32c=0)
    good.shape.SetInParent()
    data = bundle_index({b"ok": good.SerializeToString(), b"layer/kernel": b"\xff\xff\xff\xff"})
    (tmp_path / "m-1.index").write_bytes(data)
    (tmp_path / "m-1.data-00000-of-00001").write_bytes(b"\0\0\0\0")
    r = verify_step(str(tmp_path), "m-1")
    bad = [p for p in r.problems if p.kind == "bad_entry"]
    assert bad and bad[0].tensor == "layer/kernel" and bad[0].file == str(tmp_path / "m-1.index")


def test_corruptions_agree_with_tf(copy_variant) -> None:
    """Every damage we flag, TF's own restore refuses too (one TF subprocess for all)."""
    cases = []
    d = copy_variant("tf1_saver")
    w1 = _entry(d, "my_test_model-600", "w1")
    _flip(d / "my_test_model-600.data-00000-of-00001", w1.offset + 3)
    cases.append((d, "my_test_model-600"))
    d = copy_variant("strings")
    words = _entry(d, "ckpt-1", WORDS)
    _flip(d / "ckpt-1.data-00000-of-00001", words.offset + words.size - 2)
    cases.append((d, "ckpt-1"))
    d = copy_variant("sharded")
    victim = read_bundle(Location.of(str(d)), "ckpt-1").slice_entries(SPLIT)[0]
    _flip(d / f"ckpt-1.data-{victim.shard_id:05d}-of-00004", victim.offset + 5)
    cases.append((d, "ckpt-1"))
    d = copy_variant("sharded")
    _truncate(d / "ckpt-1.data-00001-of-00004", 100)
    cases.append((d, "ckpt-1"))
    good = copy_variant("strings")
    answers = tf_batch([("read_all", [str(c / p)]) for c, p in [*cases, (good, "ckpt-1")]])
    for (c, p), tf_says in zip(cases, answers, strict=False):
        assert not verify_step(str(c), p).ok
        assert tf_says["ok"] is False, (c, tf_says)
    assert answers[-1]["ok"] is True and verify_step(str(good), "ckpt-1").ok


# ---------------------------------------------------------------------------------------------
# V1


def test_v1_damage(copy_variant) -> None:
    d = copy_variant("v1")
    f = d / "model.ckpt-2"
    t = Table.from_bytes(f.read_bytes(), str(f))
    _flip(f, t.index[0][1].offset + 50)
    r = verify_step(str(d), "model.ckpt-2")
    (p,) = _only(r)
    assert p.kind == "checksum_mismatch" and p.file == str(f) and r.format == "v1"
    assert verify_step(str(d), "model.ckpt-1").ok
    _truncate(d / "model.ckpt-1", 500)
    (p,) = _only(verify_step(str(d), "model.ckpt-1"))
    assert p.kind in ("bad_magic", "truncated") and p.file == str(d / "model.ckpt-1")


def test_v1_missing_shard(copy_variant) -> None:
    d = copy_variant("v1_sharded")
    (d / "model.ckpt-7-00000-of-00001").rename(d / "model.ckpt-7-00000-of-00002")
    r = verify_step(str(d), "model.ckpt-7")
    (p,) = _only(r, "missing_file")
    assert p.file == str(d / "model.ckpt-7-00001-of-00002")


# ---------------------------------------------------------------------------------------------
# any fsspec URL; storage errors


@pytest.fixture
def memdir() -> Iterator[tuple[fsspec.AbstractFileSystem, str]]:
    fs = fsspec.filesystem("memory")
    root = f"/verify-{uuid.uuid4().hex[:8]}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _to_memory(fs: fsspec.AbstractFileSystem, src: Path, root: str) -> str:
    for f in src.iterdir():
        fs.pipe(f"{root}/{f.name}", f.read_bytes())
    return f"memory://{root}"


def test_memory_filesystem(tf_checkpoints, memdir) -> None:
    fs, root = memdir
    url = _to_memory(fs, tf_checkpoints["sharded"].dir, root)
    r = verify_step(url, "ckpt-1", concurrency=4)
    assert r.ok, r.summary()
    assert all(f.startswith("memory://") for f in r.files)
    b = read_bundle(Location.of(url), "ckpt-1")
    victim = b.slice_entries(SPLIT)[-1]
    shard = f"{root}/ckpt-1.data-{victim.shard_id:05d}-of-00004"
    data = bytearray(fs.cat_file(shard))
    data[victim.offset] ^= 0x10
    fs.pipe(shard, bytes(data))
    (p,) = _only(verify_step(url, "ckpt-1"))
    assert p.tensor == victim.display_name and p.file == f"memory://{shard.lstrip('/')}"
    url1 = _to_memory(fs, tf_checkpoints["v1_nostep"].dir, root + "-v1")
    try:
        assert verify_step(url1, "inception_v1.ckpt").ok
    finally:
        fs.rm(root + "-v1", recursive=True)


def test_missing_dir_raises_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        verify_step(str(tmp_path / "nope"), "ckpt-1")


def test_progress_is_thread_safe_and_complete(tf_checkpoints) -> None:
    lock = threading.Lock()
    last = [0, 0]

    def progress(done: int, total: int) -> None:
        with lock:
            assert done >= last[0]
            last[:] = [done, total]

    r = verify_step(str(tf_checkpoints["sharded"].dir), "ckpt-1", progress=progress, chunk_size=100)
    assert r.ok and last[0] == last[1] > 30_000


# ---------------------------------------------------------------------------------------------
# fuzz: damaged files never make verify_step raise


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    target=st.sampled_from(["index", "data0", "data3"]),
    cut=st.one_of(st.none(), st.integers(0, 12000)),
    flips=st.lists(st.tuples(st.integers(0, 12000), st.integers(1, 255)), max_size=4),
)
def test_fuzz_damage_never_raises(
    tf_checkpoints, target: str, cut: int | None, flips: list[tuple[int, int]]
) -> None:
    fs = fsspec.filesystem("memory")
    root = f"/fuzz-{uuid.uuid4().hex[:8]}"
    try:
        url = _to_memory(fs, tf_checkpoints["sharded"].dir, root)
        name = {
            "index": "ckpt-1.index",
            "data0": "ckpt-1.data-00000-of-00004",
            "data3": "ckpt-1.data-00003-of-00004",
        }[target]
        data = bytearray(fs.cat_file(f"{root}/{name}"))
        for pos, bit in flips:
            data[pos % len(data)] ^= bit
        if cut is not None:
            data = data[: cut % (len(data) + 1)]
        fs.pipe(f"{root}/{name}", bytes(data))
        r = verify_step(url, "ckpt-1", chunk_size=1000)
        json.dumps(r.to_dict())
        if r.problems:
            assert not r.ok and all(p.file.startswith("memory://") for p in r.problems)
    finally:
        fs.rm(root, recursive=True)


# ---------------------------------------------------------------------------------------------
# synthetic layouts TF does not write but a hostile or odd file may: overlaps, gaps, empties


def _string_layout(elems: list[bytes]) -> tuple[bytes, int]:
    """DT_STRING bytes + unmasked tensor crc, per tensor_bundle.cc WriteStringTensor."""
    from airflow_tf_ckpt.core.formats.crc import extend, mask
    from airflow_tf_ckpt.core.formats.table import encode_varint

    crc = 0
    for e in elems:
        crc = extend(crc, len(e).to_bytes(4, "little"))
    cks = mask(crc).to_bytes(4, "little")
    crc = extend(crc, cks)
    for e in elems:
        crc = extend(crc, e)
    return b"".join(encode_varint(len(e)) for e in elems) + cks + b"".join(elems), crc


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096, 8 << 20])
def test_overlapping_gapped_and_empty_entries(tmp_path: Path, chunk_size: int) -> None:
    import os as _os

    from airflow_tf_ckpt.core.formats.crc import mask, value

    blob = bytearray(_os.urandom(20_000))
    sdata, scrc = _string_layout([b"a" * 200, b"", b"xyz" * 50])
    blob[12_000 : 12_000 + len(sdata)] = sdata
    spans = {
        b"a": (0, 400),
        b"b": (200, 800),
        b"c": (5_000, 5_040),
        b"d": (300, 300),
        b"e": (19_000, 20_000),
        b"same1": (6_000, 6_400),
        b"same2": (6_000, 6_400),
    }
    entries = {}
    for k, (s, e) in spans.items():
        p = BundleEntryProto(dtype=4, offset=s, size=e - s, crc32c=mask(value(bytes(blob[s:e]))))
        p.shape.dim.add(size=e - s)
        entries[k] = p.SerializeToString()
    ps = BundleEntryProto(dtype=7, offset=12_000, size=len(sdata), crc32c=mask(scrc))
    ps.shape.dim.add(size=3)
    entries[b"s"] = ps.SerializeToString()
    (tmp_path / "x-1.index").write_bytes(bundle_index(entries))
    (tmp_path / "x-1.data-00000-of-00001").write_bytes(bytes(blob))
    r = verify_step(str(tmp_path), "x-1", chunk_size=chunk_size)
    assert r.ok, r.summary()
    assert r.tensors_checked == len(entries)
    blob[6_100] ^= 4  # inside both same1 and same2
    blob[12_000 + len(sdata) - 1] ^= 4  # last byte of the string tensor
    blob[250] ^= 4  # inside a and b
    (tmp_path / "x-1.data-00000-of-00001").write_bytes(bytes(blob))
    r = verify_step(str(tmp_path), "x-1", chunk_size=chunk_size)
    assert {p.tensor for p in r.problems} == {"a", "b", "same1", "same2", "s"}


def test_problem_line_keeps_a_hostile_record_to_one_bounded_line() -> None:
    """A quarantine record or a ``--json`` report read back may lie: each field is shown escaped
    and bounded, a nested value by its size, and the line stays one line."""
    from airflow_tf_ckpt.core.verify.report import FIELD_CHARS, problem_line

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    line = problem_line(
        {
            "file": "ckpt-1.index\n[OK] everything fine",
            "tensor": "w\x1b[2J",
            "kind": {"nested": 1},
            "message": "x" * 1_000_000,
            "expected": deep,
            "actual": 3,
        }
    )
    assert "\n" not in line and "\x1b" not in line
    assert line.startswith("ckpt-1.index\\n[OK] everything fine: tensor w\\x1b[2J: [<dict of 1 item(s)>] ")
    assert "x" * FIELD_CHARS + "…" in line and len(line) < 3 * FIELD_CHARS
    assert line.endswith("(expected <list of 1 item(s)>, got 3)")
    # a genuine problem reads as before
    assert problem_line({"file": "a.index", "kind": "crc", "message": "bad", "tensor": "w"}) == (
        "a.index: tensor w: [crc] bad"
    )
    assert problem_line("not a mapping\r") == "not a mapping\\r"
