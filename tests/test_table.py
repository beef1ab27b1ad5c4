"""leveldb table reader (core/formats/table.py), slice keys and bundle parsing (core/formats/bundle.py).

Hostile input must only ever raise TableError (naming the file); real TF files must parse.
Synthetic and fuzzed tables come from the tests' one leveldb table writer,
``tests.reliability_helpers.write_table``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_tf_ckpt.core.errors import CheckpointError, StorageError, TableError
from airflow_tf_ckpt.core.formats import bundle as bundle_mod
from airflow_tf_ckpt.core.formats.bundle import (
    SliceKeyError,
    SliceSpec,
    decode_slice_key,
    encode_slice_key,
    parse_bundle_index,
    read_bundle,
    read_bundle_header,
)
from airflow_tf_ckpt.core.formats.crc import mask, unmask, value
from airflow_tf_ckpt.core.formats.protos import BundleEntryProto, BundleHeaderProto
from airflow_tf_ckpt.core.formats.table import (
    FOOTER_SIZE,
    TABLE_MAGIC,
    BlockHandle,
    Table,
    TableCorruption,
    _Malformed,
    decode_varint,
    encode_varint,
    read_table,
    scan_table,
    verify_table_blocks,
)
from airflow_tf_ckpt.core.storage.location import Location
from tests.reliability_helpers import _block, _trailer, write_table

PATH = "mem://x/test.index"


# ---------------------------------------------------------------------------------------------
# a minimal leveldb table writer (what TF's TableBuilder does, minus filters)


def bundle_index(entries: dict[bytes, bytes], num_shards: int = 1, **kw: object) -> bytes:
    header = BundleHeaderProto(num_shards=num_shards)
    header.version.producer = 1
    items = [(b"", header.SerializeToString()), *sorted(entries.items())]
    return write_table(items, **kw)  # type: ignore[arg-type]


def _entries(n: int, vsize: int = 20) -> list[tuple[bytes, bytes]]:
    return [(f"tensor/{i:05d}".encode(), bytes([i % 251]) * vsize) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# crc and varints


def test_crc_mask_roundtrip_and_known_value() -> None:
    assert value(b"123456789") == 0xE3069283  # the CRC-32C check value
    for c in (0, 1, 0xFFFFFFFF, 0x12345678, 0xA282EAD8):
        assert unmask(mask(c)) == c
    assert mask(0) == 0xA282EAD8


def test_extend_buffer_matches_for_every_buffer_kind() -> None:
    import os

    from airflow_tf_ckpt.core.formats.crc import extend, extend_buffer

    raw = os.urandom(70_000)
    buf = bytearray(raw)
    for s, e in [(0, 0), (0, 10), (3, 5000), (100, 70_000)]:
        want = extend(5, raw[s:e])
        assert extend_buffer(5, raw[s:e]) == want
        assert extend_buffer(5, memoryview(buf)[s:e]) == want
        assert extend_buffer(5, memoryview(raw)[s:e]) == want  # read-only: copied, same answer
        assert extend_buffer(5, bytearray(raw[s:e])) == want


def test_varints() -> None:
    for v in (0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1):
        enc = encode_varint(v)
        assert decode_varint(enc, 0, len(enc)) == (v, len(enc))
    with pytest.raises(_Malformed):
        decode_varint(b"\x80\x80", 0, 2)  # runs off the end
    with pytest.raises(_Malformed):
        decode_varint(b"\xff" * 11, 0, 11)  # too long
    with pytest.raises(_Malformed):
        decode_varint(encode_varint(2**32), 0, 5, max_bytes=5)  # not a varint32


# ---------------------------------------------------------------------------------------------
# well-formed tables


@pytest.mark.parametrize("snappy", [False, True])
@pytest.mark.parametrize("n", [0, 1, 17, 500])
def test_roundtrip(n: int, snappy: bool) -> None:
    entries = _entries(n)
    data = write_table(entries, block_size=256, snappy=snappy)
    assert list(read_table(data, PATH)) == entries
    t = Table.from_bytes(data, PATH)
    assert (t.first_entry() or None) == (entries[0] if entries else None)
    assert verify_table_blocks(data, PATH) == []
    scan = scan_table(data, PATH)
    assert scan.entries == entries and scan.complete and not scan.bad_blocks


def test_ranged_reader_matches_bytes() -> None:
    data = write_table(_entries(300), block_size=512)
    reads: list[tuple[int, int]] = []

    def read_at(off: int, ln: int) -> bytes:
        reads.append((off, ln))
        return data[off : off + ln]

    t = Table(read_at, len(data), PATH)
    assert t.first_entry() == _entries(1)[0]
    assert len(reads) == 3  # footer, index block, first data block
    assert list(t) == _entries(300)


def test_real_indexes_parse(tf_checkpoints) -> None:
    for v in tf_checkpoints:
        for prefix in v.prefixes:
            if v.format == "v2":
                data = (v.dir / f"{prefix}.index").read_bytes()
                keys = [k for k, _ in read_table(data, prefix)]
                assert keys[0] == b"" and keys == sorted(keys)
            else:
                files = [f for f in v.files() if f == prefix or f.startswith(prefix + "-0")]
                assert files
                for f in files:
                    keys = [k for k, _ in read_table((v.dir / f).read_bytes(), f)]
                    assert keys[0] == b"" and all(k[:1] == b"\x00" for k in keys[1:])


# ---------------------------------------------------------------------------------------------
# hostile tables: each raises TableCorruption naming the file and the problem


def _raises(data: bytes, kind: str, fragment: str = "") -> TableCorruption:
    with pytest.raises(TableCorruption) as ei:
        list(read_table(data, PATH))
    exc = ei.value
    assert isinstance(exc, TableError)
    assert exc.kind == kind, (exc.kind, str(exc))
    assert str(exc).startswith(PATH + ": ")
    assert fragment in str(exc)
    return exc


GOOD = write_table(_entries(100), block_size=256)


def _footer_with(meta: BlockHandle, index: BlockHandle) -> bytes:
    f = (
        encode_varint(meta.offset)
        + encode_varint(meta.size)
        + encode_varint(index.offset)
        + encode_varint(index.size)
    ).ljust(40, b"\0")
    return f + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)


def test_wrong_magic() -> None:
    exc = _raises(GOOD[:-1] + bytes([GOOD[-1] ^ 1]), "bad_magic", "magic")
    assert exc.expected == f"0x{TABLE_MAGIC:016x}"


def test_empty_and_short_files() -> None:
    _raises(b"", "truncated", "shorter than the 48-byte")
    _raises(GOOD[-47:], "truncated")


@pytest.mark.parametrize("cut", [1, 7, 8, 49, 300, len(GOOD) // 2])
def test_truncated(cut: int) -> None:
    with pytest.raises(TableCorruption) as ei:
        list(read_table(GOOD[:-cut], PATH))
    assert ei.value.kind in ("bad_magic", "truncated")


def test_half_written_prefix_is_not_a_table() -> None:
    # what a reader sees while TF is still writing the index
    _raises(GOOD[: len(GOOD) // 2], "bad_magic", "half-written")


def test_footer_handle_past_end() -> None:
    body = GOOD[:-FOOTER_SIZE]
    t = Table.from_bytes(GOOD, PATH)
    bad = body + _footer_with(t.footer.metaindex, BlockHandle(t.footer.index.offset, 10**12))
    _raises(bad, "truncated", "past the end")
    bad = body + _footer_with(t.footer.metaindex, BlockHandle(10**15, 5))
    _raises(bad, "bad_handle", "past the end")


def test_footer_corrupt_varint() -> None:
    footer = (b"\xff" * 40) + struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)
    _raises(GOOD[:-FOOTER_SIZE] + footer, "bad_footer", "varint")


def _with_index(entries: list[tuple[bytes, bytes]], index_entries: list[tuple[bytes, bytes]]) -> bytes:
    """A table whose data blocks are those of ``entries`` but with a hand-made index block."""
    good = write_table(entries, block_size=1 << 20)
    t = Table.from_bytes(good, PATH)
    body = good[: t.footer.metaindex.end]
    idx = _block(index_entries, 1)
    idx_h = BlockHandle(len(body), len(idx))
    return body + idx + _trailer(idx, 0) + _footer_with(t.footer.metaindex, idx_h)


def test_index_handles_that_loop_or_overlap() -> None:
    entries = _entries(5)
    t = Table.from_bytes(write_table(entries, block_size=1 << 20), PATH)
    ((key, h),) = t.index
    enc = encode_varint(h.offset) + encode_varint(h.size)
    # the same block twice: a loop that would re-read it forever with a crafted index
    _raises(_with_index(entries, [(key, enc), (key + b"\x01", enc)]), "bad_handle", "overlaps")
    _raises(_with_index(entries, [(key, encode_varint(h.offset) + encode_varint(10**9))]), "truncated")
    _raises(_with_index(entries, [(key, encode_varint(2**62) + encode_varint(1))]), "bad_handle")
    _raises(_with_index(entries, [(key, b"\x80\x80\x80")]), "bad_handle", "varint")


def _single_block_table(contents: bytes, ctype: int = 0) -> bytes:
    data = contents + _trailer(contents, ctype)
    meta = _block([])
    out = data + meta + _trailer(meta, 0)
    idx = _block([(b"zzzz", encode_varint(0) + encode_varint(len(contents)))], 1)
    meta_h = BlockHandle(len(data), len(meta))
    idx_h = BlockHandle(len(out), len(idx))
    return out + idx + _trailer(idx, 0) + _footer_with(meta_h, idx_h)


def test_bad_restart_counts() -> None:
    good = _block(_entries(3))
    _raises(_single_block_table(good[:-4] + struct.pack("<I", 10**6)), "bad_block", "restart count")
    _raises(_single_block_table(good[:-4] + struct.pack("<I", 0)), "bad_block", "restart count 0")
    _raises(_single_block_table(b"\x01\x02"), "bad_block", "too short")
    # restart offset pointing past the entries
    bad = good[:-8] + struct.pack("<II", 10**5, 1)
    _raises(_single_block_table(bad), "bad_block", "restart point")


def test_bad_entries_in_block() -> None:
    # shared prefix longer than the previous key
    body = b"\x05\x01\x01ab" + struct.pack("<II", 0, 1)
    _raises(_single_block_table(body), "bad_block", "shares")
    # lengths past the end of the entries
    body = b"\x00\x50\x50abc" + struct.pack("<II", 0, 1)
    _raises(_single_block_table(body), "bad_block", "runs past")
    # unterminated varint
    body = b"\x00\xff\xff" + struct.pack("<II", 0, 1)
    _raises(_single_block_table(body), "bad_block", "varint")
    # keys out of order
    _raises(_single_block_table(_block([(b"b", b"1"), (b"a", b"2")])), "bad_order", "out of order")


def test_checksum_mismatch_and_compression() -> None:
    data = bytearray(GOOD)
    data[10] ^= 0x40
    exc = _raises(bytes(data), "checksum_mismatch", "crc32c mismatch")
    assert exc.expected and exc.actual and exc.expected != exc.actual
    _raises(_single_block_table(_block(_entries(2)), ctype=7), "bad_compression", "compression type 7")
    # snappy claiming a huge uncompressed size: refused before the decoder allocates it
    _raises(_single_block_table(encode_varint(2**31) + b"\x00" * 8, ctype=1), "bad_compression", "impossible")
    _raises(_single_block_table(b"\x10garbage", ctype=1), "bad_compression", "snappy")


def test_tolerant_scan_keeps_good_blocks() -> None:
    entries = _entries(200)
    data = bytearray(write_table(entries, block_size=256))
    t = Table.from_bytes(bytes(data), PATH)
    second = t.index[1][1]
    data[second.offset + 3] ^= 1
    scan = scan_table(bytes(data), PATH)
    assert scan.bad_blocks == 1 and len(scan.problems) == 1
    assert scan.problems[0].kind == "checksum_mismatch"
    assert str(second.offset) in str(scan.problems[0])
    assert 0 < len(scan.entries) < len(entries)
    assert verify_table_blocks(bytes(data), PATH)[0].kind == "checksum_mismatch"
    # a table that cannot be opened at all
    assert not scan_table(b"junk", PATH).complete


# ---------------------------------------------------------------------------------------------
# fuzzing: nothing but TableError, ever


def _consume(data: bytes, verify: bool = True) -> None:
    try:
        t = Table.from_bytes(data, PATH, verify_checksums=verify)
        list(t)
        t.scan()
    except TableError as exc:
        assert str(exc).startswith(PATH)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = write_table(_entries(40, 7), block_size=128, restart_interval=4)
SMALL_SNAPPY = write_table(_entries(40, 7), block_size=128, restart_interval=4, snappy=True)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    _consume(data)
    _consume(data, verify=False)
    magic = struct.pack("<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32)
    _consume(data + magic, verify=False)  # gets past the magic check: exercises the handles


@FUZZ
@given(st.integers(min_value=0, max_value=len(SMALL)))
def test_fuzz_truncation(n: int) -> None:
    _consume(SMALL[:n])
    _consume(SMALL[n:])


@FUZZ
@given(
    st.sampled_from([SMALL, SMALL_SNAPPY]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_mutations_without_crc(base: bytes, edits: list[tuple[int, int]]) -> None:
    # with checksums off, mutated bytes reach the block / entry / handle parsers themselves
    data = bytearray(base)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    _consume(bytes(data), verify=False)
    _consume(bytes(data), verify=True)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_bundle_parsing(value_bytes: bytes) -> None:
    data = bundle_index({b"t": value_bytes, b"\x00" + value_bytes: b"", b"u": b"\x08\x01"})
    try:
        b = parse_bundle_index(data, PATH)
        for e in b.entries:
            e.to_dict()
    except TableError as exc:
        assert str(exc).startswith(PATH)


# ---------------------------------------------------------------------------------------------
# slice keys (EncodeTensorNameSlice) and bundle entries


def test_slice_key_known_encoding() -> None:
    # conv1/biases in a V1 checkpoint written by TF: a full 1-D slice is "0,-1"
    assert (
        encode_slice_key("conv1/biases", SliceSpec(((0, None),)))
        == b"\x00conv1/biases\x00\x01\x01\x01\x80\x7f"
    )
    name, spec = decode_slice_key(b"\x00big\x00\x01\x01\x02\x80\x90\x80\xc0\x80")
    assert (name, str(spec)) == ("big", "0,16:0,128")
    assert str(SliceSpec(((0, None), (3, 4)))) == "-:3,4"


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=20) | st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.lists(
        st.tuples(st.integers(0, 2**62), st.one_of(st.none(), st.integers(0, 2**62))), min_size=1, max_size=5
    ),
)
def test_slice_key_roundtrip(name: str, extents: list[tuple[int, int | None]]) -> None:
    spec = SliceSpec(tuple((0 if ln is None else st_, ln) for st_, ln in extents))
    key = encode_slice_key(name, spec)
    assert decode_slice_key(key) == (name, spec)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_slice_key_garbage(tail: bytes) -> None:
    try:
        decode_slice_key(b"\x00" + tail)
    except SliceKeyError:
        pass


def _entry(**kw: object) -> bytes:
    return BundleEntryProto(**kw).SerializeToString()


def test_bundle_bad_protobuf_names_file_and_key() -> None:
    data = bundle_index({b"good": _entry(dtype=1, size=4), b"broken/kernel": b"\xff\xff\xff"})
    with pytest.raises(TableError) as ei:
        parse_bundle_index(data, PATH)
    assert "broken/kernel" in str(ei.value) and str(ei.value).startswith(PATH)
    assert ei.value.key == b"broken/kernel"  # type: ignore[attr-defined]


def test_bundle_slice_entries_report_parent_and_spec() -> None:
    spec = SliceSpec(((0, 2), (0, None)))
    parent = BundleEntryProto(dtype=1)
    parent.shape.dim.add(size=4)
    parent.shape.dim.add(size=3)
    s = parent.slices.add()
    s.extent.add(start=0, length=2)
    s.extent.add()
    data = bundle_index(
        {b"w": parent.SerializeToString(), encode_slice_key("w", spec): _entry(dtype=1, size=24)}
    )
    b = parse_bundle_index(data, PATH)
    (sl,) = b.slice_entries("w")
    assert sl.name == "w" and sl.slice == spec and sl.display_name == "w[0,2:-]"
    assert b.tensors()["w"].is_sliced and b.tensors()["w"].slices == [spec]
    assert [e.key for e in b.data_entries()] == [sl.key]


def test_bundle_no_header() -> None:
    with pytest.raises(TableError, match="no header"):
        parse_bundle_index(write_table([(b"a", b"")]), PATH)


def test_read_bundle_header_small_and_ranged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {f"v{i:04d}".encode(): _entry(dtype=1, offset=i * 4, size=4) + b"\0" * 0 for i in range(3000)}
    big = bundle_index(values, num_shards=7, block_size=4096)
    (tmp_path / "ckpt-9.index").write_bytes(big)
    loc = Location.of(str(tmp_path))
    assert read_bundle_header(loc, "ckpt-9").num_shards == 7
    monkeypatch.setattr(bundle_mod, "_SMALL_INDEX", 0)  # force the 3-ranged-reads path
    assert read_bundle_header(loc, "ckpt-9").num_shards == 7
    assert len(read_bundle(loc, "ckpt-9").entries) == 3000
    with pytest.raises(StorageError):
        read_bundle_header(loc, "ckpt-10")
    (tmp_path / "half.index").write_bytes(big[: len(big) // 2])
    with pytest.raises(TableError):
        read_bundle_header(loc, "half")


def test_read_bundle_header_memory_fs() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/tbl-hdr/ckpt-1.index", bundle_index({b"a": _entry(dtype=1)}, num_shards=3))
    try:
        loc = Location.of("memory://tbl-hdr")
        assert read_bundle_header(loc, "ckpt-1").num_shards == 3
        with pytest.raises(CheckpointError):
            read_bundle_header(loc, "nope")
    finally:
        fs.rm("/tbl-hdr", recursive=True)


def test_real_bundle_headers(tf_checkpoints) -> None:
    assert read_bundle_header(Location.of(str(tf_checkpoints["sharded"].dir)), "ckpt-1").num_shards == 4
    v = tf_checkpoints["tf2_manager"]
    assert read_bundle_header(Location.of(str(v.dir)), v.latest).num_shards == 1
