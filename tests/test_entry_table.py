"""The column-per-field entry table of a V2 index (core/formats/bundle.py ``EntryTable``) and
the verifier's stream over it (core/verify): lookups, order, the views, and that lying or
garbled entries give the same one-line problems as before (no partial rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_tf_ckpt.core.errors import TableError
from airflow_tf_ckpt.core.formats.bundle import (
    EntryTable,
    SliceSpec,
    add_entry,
    bundle_from_scan,
    encode_slice_key,
    parse_bundle_index,
)
from airflow_tf_ckpt.core.formats.crc import mask, value
from airflow_tf_ckpt.core.formats.protos import BundleEntryProto, BundleHeaderProto
from airflow_tf_ckpt.core.formats.table import scan_table
from airflow_tf_ckpt.core.verify.engine import verify_step
from tests.reliability_helpers import write_table

PATH = "mem://x/test.index"


def _index(entries: dict[bytes, bytes], num_shards: int = 1) -> bytes:
    header = BundleHeaderProto(num_shards=num_shards)
    return write_table([(b"", header.SerializeToString()), *sorted(entries.items())], block_size=256)


def _proto(dims: tuple[int, ...] = (), **kw: object) -> BundleEntryProto:
    p = BundleEntryProto(**kw)
    p.shape.SetInParent()  # as TF writes it, even for a scalar
    for d in dims:
        p.shape.dim.add(size=d)
    return p


def test_rows_lookups_and_views() -> None:
    spec = SliceSpec(((0, 2), (0, None)))
    parent = _proto((4, 3), dtype=1)
    s = parent.slices.add()
    s.extent.add(start=0, length=2)
    s.extent.add()
    protos = {
        f"t/{i:03d}".encode(): _proto((i % 4,) * (i % 3), dtype=1 + i % 3, offset=8 * i, size=8, crc32c=i)
        for i in range(200)  # ranks 0, 1, 2; many blocks of 256 bytes
    }
    protos[b"w"] = parent
    protos[encode_slice_key("w", spec)] = _proto((2, 3), dtype=1, shard_id=0, offset=9000, size=24)
    b = parse_bundle_index(_index({k: p.SerializeToString() for k, p in protos.items()}), PATH)
    t = b.entries
    keys = sorted(protos)
    assert len(t) == len(keys) and [e.key for e in t] == keys  # index (key) order
    assert [t.find(k) for k in keys] == list(range(len(keys)))
    for absent in (b"", b"t/", b"t/0005", b"t/199~", b"zz", b"\x00"):
        assert t.find(absent) is None
    for i, k in enumerate(keys):
        e, p = t[i], protos[k]
        assert (e.dtype, e.shard_id, e.offset, e.size, e.crc32c_masked) == (
            p.dtype,
            p.shard_id,
            p.offset,
            p.size,
            p.crc32c,
        )
        assert e.shape == tuple(d.size for d in p.shape.dim) and e.shape_ok
        assert e.proto == p  # re-parsed (sliced) or rebuilt from the columns
    sl = t[0]  # the slice key sorts first (it starts with \x00)
    assert (sl.name, sl.slice, sl.display_name, sl.is_slice, sl.has_data) == (
        "w",
        spec,
        "w[0,2:-]",
        True,
        True,
    )
    w = t[t.find(b"w")]  # type: ignore[index]
    assert w.is_sliced and not w.has_data and w.slices == [spec] and w.slice is None
    assert t[-1].key == keys[-1] and [e.key for e in t[1:3]] == keys[1:3]
    with pytest.raises(IndexError):
        t[len(t)]
    three = t[t.find(b"t/005")]  # type: ignore[index]
    assert three.shape == (1, 1) and three.num_elements == 1 and t[t.find(b"t/003")].num_elements == 1  # type: ignore[index]
    assert [e.key for e in b.data_entries()] == [k for k in keys if k != b"w"]


def test_undefined_shapes_and_unsorted_rows() -> None:
    t = EntryTable()
    add_entry(t, b"b", _proto((3, -1)).SerializeToString(), PATH)
    unknown = BundleEntryProto()
    unknown.shape.unknown_rank = True
    add_entry(t, b"a", unknown.SerializeToString(), PATH)  # out of order: lookups still work
    add_entry(t, b"c", _proto((2, 5), dtype=2).SerializeToString(), PATH)
    assert [t.shape_ok(i) for i in range(3)] == [False, False, True]
    assert t[1].proto.shape.unknown_rank and t.num_elements(2) == 10
    assert [t.find(k) for k in (b"a", b"b", b"c", b"d")] == [1, 0, 2, None]


def test_garbled_entries_leave_no_row_and_name_their_key() -> None:
    good = _proto((1,), dtype=1, size=4).SerializeToString()
    data = _index(
        {
            b"a": good,
            b"broken/kernel": b"\xff\xff\xff",
            b"\x00bad-slice-key": good,
            b"z": good,
        }
    )
    with pytest.raises(TableError) as ei:
        parse_bundle_index(data, PATH)
    assert str(ei.value).startswith(PATH) and "\n" not in str(ei.value)
    bundle, problems = bundle_from_scan(scan_table(data, PATH), PATH)
    assert bundle is not None
    t = bundle.entries
    assert [e.key for e in t] == [b"a", b"z"]
    columns = (t.key_ends, t.dtype, t.shard_id, t.offset, t.size, t.crc32c_masked, t.flags, t.dim_ends)
    assert {len(c) for c in columns} == {2}  # a failed parse adds nothing, not half a row
    assert [(p.kind, p.key) for p in problems] == [
        ("bad_entry", b"\x00bad-slice-key"),
        ("bad_entry", b"broken/kernel"),
    ]
    assert "not a BundleEntryProto" in problems[1].detail and "does not decode" in problems[0].detail


def _write_step(d: Path, ranges: dict[bytes, tuple[int, int, bool]], data: bytes, dims: int = 0) -> None:
    """``ckpt-1`` with uint8 tensors ``key -> (offset, size, crc right?)`` over one shard ``data``."""
    entries = {}
    for key, (offset, size, right) in ranges.items():
        crc = mask(value(data[offset : offset + size])) ^ (0 if right else 1)
        entries[key] = _proto((size,), dtype=4, offset=offset, size=size, crc32c=crc).SerializeToString()
    (d / "ckpt-1.index").write_bytes(_index(entries))
    (d / "ckpt-1.data-00000-of-00001").write_bytes(data)


def test_stream_out_of_order_overlapping_and_empty_ranges(tmp_path: Path) -> None:
    # the index order is not the shard's; two entries share bytes; one is empty; one lies
    data = bytes(range(256)) * 4
    ranges = {
        b"a": (600, 100, True),
        b"b": (0, 300, True),
        b"c": (100, 50, False),  # inside b: the crc lies
        b"d": (300, 0, True),
        b"e": (0, 300, True),  # the same range as b
        b"f": (300, 300, True),
        b"g": (700, 324, True),
    }
    _write_step(tmp_path, ranges, data)
    r = verify_step(str(tmp_path), "ckpt-1", chunk_size=64)
    assert r.tensors_checked == len(ranges) and r.bytes_checked >= len(data)
    assert [(p.tensor, p.kind) for p in r.problems] == [("c", "checksum_mismatch")]
    assert r.problems[0].message == "crc32c of bytes 100..150 (uint8[50]) does not match the index"


def test_lying_entries_give_their_one_line_problems(tmp_path: Path) -> None:
    data = bytes(100)
    entries = {
        b"neg": _proto((4,), dtype=4, offset=-4, size=4).SerializeToString(),
        b"past": _proto((8,), dtype=4, offset=96, size=8).SerializeToString(),
        b"shard": _proto((4,), dtype=4, shard_id=3, size=4).SerializeToString(),
        b"size": _proto((2, 2), dtype=1, size=4, crc32c=mask(value(data[:4]))).SerializeToString(),
        b"undef": _proto((-1,), dtype=4).SerializeToString(),
    }
    (tmp_path / "ckpt-1.index").write_bytes(_index(entries))
    (tmp_path / "ckpt-1.data-00000-of-00001").write_bytes(data)
    r = verify_step(str(tmp_path), "ckpt-1")
    got = [(p.tensor, p.kind, p.message) for p in r.problems]
    assert got == [
        ("neg", "bad_entry", "negative offset/size (-4, 4)"),
        ("shard", "bad_entry", "shard id 3 is outside 0..0"),
        (
            "size",
            "size_mismatch",
            "float32[2, 2] needs 16 bytes but the entry says 4 (TF refuses to restore it)",
        ),
        ("undef", "bad_entry", "the stored shape is not fully defined"),
        ("past", "truncated", "bytes 96..104 are past the end of the shard (100 bytes): truncated"),
    ]
    assert all("\n" not in str(p) for p in r.problems)
