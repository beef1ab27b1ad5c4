"""Helpers for the reliability suites (torn writes, corruption, hostile inputs).

* reading a fixture variant's real TF-written bytes;
* a minimal leveldb table writer (TF's TableBuilder minus filters), to craft hostile indexes by
  re-encoding real entries;
* where a table's bytes are never read by TF (footer padding, the metaindex block) and which
  tensor owns which byte range of a data shard (from the bundle index).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cramjam

from airflow_tf_ckpt.core.formats.bundle import parse_bundle_index
from airflow_tf_ckpt.core.formats.crc import mask, value
from airflow_tf_ckpt.core.formats.protos import BundleHeaderProto
from airflow_tf_ckpt.core.formats.table import FOOTER_SIZE, TABLE_MAGIC, BlockHandle, Table, encode_varint


def variant_bytes(dir_: Path, names: list[str] | None = None) -> dict[str, bytes]:
    """``{file name: bytes}`` of a fixture dir (every regular file, or only ``names``)."""
    out = {}
    for p in sorted(Path(dir_).iterdir()):
        if p.is_file() and (names is None or p.name in names):
            out[p.name] = p.read_bytes()
    return out


def step_files(files: dict[str, bytes], prefix: str) -> list[str]:
    """The checkpoint files of ``prefix`` (V2 index + shards, or V1 table(s)), sorted."""
    out = []
    for n in files:
        if n == f"{prefix}.index" or n.startswith(f"{prefix}.data-") or n == prefix:
            out.append(n)
        elif n.startswith(f"{prefix}-") and n[len(prefix) + 1 : len(prefix) + 6].isdigit() and "-of-" in n:
            out.append(n)  # V1 shard model.ckpt-7-00000-of-00001
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# a minimal leveldb table writer


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int = 16) -> bytes:
    out = bytearray()
    restarts = [0]
    last = b""
    for i, (k, v) in enumerate(entries):
        shared = 0
        if i and i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(last), len(k)) and last[shared] == k[shared]:
                shared += 1
        out += encode_varint(shared) + encode_varint(len(k) - shared) + encode_varint(len(v))
        out += k[shared:] + v
        last = k
    for r in restarts:
        out += struct.pack("<I", r)
    out += struct.pack("<I", len(restarts))
    return bytes(out)


def _trailer(contents: bytes, ctype: int = 0) -> bytes:
    return bytes([ctype]) + struct.pack("<I", mask(value(contents + bytes([ctype]))))


def footer(meta_handle: bytes, index_handle: bytes) -> bytes:
    return (meta_handle + index_handle).ljust(40, b"\0") + struct.pack(
        "<II", TABLE_MAGIC & 0xFFFFFFFF, TABLE_MAGIC >> 32
    )


def write_table(
    entries: list[tuple[bytes, bytes]],
    block_size: int = 4096,
    restart_interval: int = 16,
    snappy: bool = False,
    index_handles: list[bytes] | None = None,
) -> bytes:
    """Serialize sorted (key, value) pairs as a leveldb table (the tests' one table writer).

    ``snappy`` compresses the data blocks (type byte 1). ``index_handles`` replaces the encoded
    data-block handles of the index block (to craft loops, overlaps and handles past the end);
    blocks are still written as usual.
    """
    out = bytearray()
    index: list[tuple[bytes, bytes]] = []

    def flush(block_entries: list[tuple[bytes, bytes]]) -> None:
        contents = _block(block_entries, restart_interval)
        ctype = 0
        if snappy:
            contents, ctype = bytes(cramjam.snappy.compress_raw(contents)), 1
        handle = encode_varint(len(out)) + encode_varint(len(contents))
        out.extend(contents + _trailer(contents, ctype))
        index.append((block_entries[-1][0], handle))

    pending: list[tuple[bytes, bytes]] = []
    size = 0
    for k, v in entries:
        pending.append((k, v))
        size += len(k) + len(v) + 3
        if size >= block_size:
            flush(pending)
            pending, size = [], 0
    if pending:
        flush(pending)
    if index_handles is not None:
        keys = [k for k, _ in index] or [b"\xff"]
        index = [
            (keys[min(i, len(keys) - 1)] + (b"" if i < len(keys) else bytes([i])), h)
            for i, h in enumerate(index_handles)
        ]
    meta = _block([])
    meta_handle = encode_varint(len(out)) + encode_varint(len(meta))
    out += meta + _trailer(meta)
    idx = _block(index, 1)
    idx_handle = encode_varint(len(out)) + encode_varint(len(idx))
    out += idx + _trailer(idx)
    return bytes(out + footer(meta_handle, idx_handle))


def table_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    return list(Table.from_bytes(data, "<table>"))


def reencode_index(
    data: bytes,
    *,
    header: bytes | None = None,
    num_shards: int | None = None,
    replace: dict[bytes, bytes] | None = None,
    **kw: object,
) -> bytes:
    """Re-encode a real ``.index`` with its header or some entries replaced."""
    entries = table_entries(data)
    out = []
    for k, v in entries:
        if k == b"" and (header is not None or num_shards is not None):
            if header is None:
                h = BundleHeaderProto()
                h.ParseFromString(v)
                h.num_shards = num_shards
                header = h.SerializeToString()
            v = header
        elif replace and k in replace:
            v = replace[k]
        out.append((k, v))
    return write_table(out, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# what TF reads, and who owns which bytes


@dataclass(frozen=True)
class Layout:
    """Byte ranges of a table that TF never reads (half-open), and the file size."""

    size: int
    unread: tuple[tuple[int, int], ...]
    index_handle: BlockHandle

    def is_unread(self, offset: int) -> bool:
        return any(lo <= offset < hi for lo, hi in self.unread)


def table_layout(data: bytes) -> Layout:
    """TF's table reader (tensorflow/core/lib/io/table.cc ``Table::Open``) decodes the footer's two
    handles, then reads only the index block and data blocks: the metaindex block (and its trailer)
    and the footer's zero padding are never read, so flipping those bytes changes nothing TF sees."""
    size = len(data)
    foot = data[size - FOOTER_SIZE :]
    meta, pos = BlockHandle.decode(foot, 0, 40)
    index, pos = BlockHandle.decode(foot, pos, 40)
    base = size - FOOTER_SIZE
    unread = ((meta.offset, meta.offset + meta.size + 5), (base + pos, base + 40))
    return Layout(size, unread, index)


def footer_index_handle(data: bytes) -> BlockHandle | None:
    """The index handle the footer of ``data`` decodes to (None when it does not decode)."""
    try:
        foot = data[len(data) - FOOTER_SIZE :]
        _, pos = BlockHandle.decode(foot, 0, 40)
        index, _ = BlockHandle.decode(foot, pos, 40)
        return index
    except Exception:  # noqa: BLE001 - any malformation
        return None


@dataclass(frozen=True)
class EntryRange:
    shard: int
    offset: int
    size: int
    tensor: str  # display name: ``name`` or ``name[slice]``


def entry_ranges(index_data: bytes) -> tuple[int, list[EntryRange]]:
    """(num_shards, the data ranges of every entry that owns data)."""
    bundle = parse_bundle_index(index_data, "<index>")
    out = [
        EntryRange(e.shard_id, e.offset, e.size, e.display_name)
        for e in bundle.entries
        if e.has_data and e.size > 0
    ]
    return int(bundle.header.num_shards), out
