"""Reader for leveldb-format immutable tables: TF's ``.index`` files and V1 ``.ckpt`` files.

The layout follows ``tensorflow/core/lib/io/{format,block,table}.cc`` (a fork of leveldb's)::

    [data block 1][trailer] ... [data block N][trailer]
    [metaindex block][trailer] [index block][trailer]
    [footer: metaindex handle, index handle (varint64 offset + varint64 size each),
             zero padding to 40 bytes, magic 0xdb4775248b80fb57 as two LE fixed32, low first]

* trailer = 1 compression-type byte (0 none, 1 snappy) + fixed32 masked crc32c of
  (block contents + type byte);
* a block = prefix-compressed entries (varint32 shared, non_shared, value_len; key delta; value),
  then the restart array (fixed32 offsets) and a fixed32 restart count;
* the index block maps a separator key (>= every key of a data block, < every key of the next)
  to that data block's handle. TF never reads the metaindex block (no filters), nor do we.

Every file is hostile input here: a checkpoint being written, a truncated upload, bit rot. Any
malformation raises :class:`TableCorruption` (a :class:`TableError`) naming the file, the
offset and the problem — never ``IndexError``, ``struct.error`` or ``MemoryError``. Sizes are
checked against the file size BEFORE anything is read or allocated, data blocks must not
overlap or run backwards (so repeated or looping handles cannot amplify work), and keys must be
strictly increasing (as every leveldb writer guarantees).

Two ways in: :class:`Table` over ``bytes`` already in memory (the usual ``.index``), or over a
``read_at(offset, length)`` callable for large files (V1 tables, or reading only the header of a
remote ``.index``: footer, index block, first data block).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cramjam

from airflow_tf_ckpt.core.errors import TableError
from airflow_tf_ckpt.core.formats import crc as _crc

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # 2 * BlockHandle::kMaxEncodedLength (2 * 10 each) + 8 bytes of magic
BLOCK_TRAILER_SIZE = 5
NO_COMPRESSION = 0
SNAPPY_COMPRESSION = 1
# A raw snappy stream cannot expand by more than ~21x (a 3-byte copy op emits at most 64 bytes).
# A declared length beyond this is a lie: refuse it instead of letting the decoder allocate it.
_SNAPPY_MAX_RATIO = 24

_U32 = struct.Struct("<I")

ReadAt = Callable[[int, int], bytes]


class TableCorruption(TableError):
    """A malformed table. ``kind`` is a short machine-readable tag, ``offset`` a byte position.

    Kinds: ``truncated`` (file shorter than its own structure says), ``bad_magic``, ``bad_footer``,
    ``bad_handle``, ``checksum_mismatch``, ``bad_compression``, ``bad_block``, ``bad_order``,
    ``io_error``.
    """

    def __init__(
        self,
        message: str,
        path: str | None,
        kind: str,
        offset: int | None = None,
        expected: str | None = None,
        actual: str | None = None,
        key: bytes | None = None,
    ) -> None:
        self.kind = kind
        self.offset = offset
        self.key = key  # the entry key concerned, where one is known
        self.expected = expected
        self.actual = actual
        self.detail = message
        super().__init__(message, path)


class _Malformed(Exception):
    """Internal: a decoding step failed; converted to TableCorruption with the context."""


def decode_varint(buf: bytes, pos: int, limit: int, max_bytes: int = 10) -> tuple[int, int]:
    """Decode a little-endian base-128 varint from ``buf[pos:limit]`` -> (value, new_pos).

    ``max_bytes`` is 5 for varint32 and 10 for varint64; a longer run or a value that overflows
    the width is malformed (leveldb's GetVarint32/64 reject both).
    """
    result = 0
    shift = 0
    for i in range(max_bytes):
        if pos + i >= limit:
            raise _Malformed("varint runs past the end of its buffer")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            bits = 32 if max_bytes == 5 else 64
            if result >> bits:
                raise _Malformed(f"varint does not fit in {bits} bits")
            return result, pos + i + 1
        shift += 7
    raise _Malformed(f"varint longer than {max_bytes} bytes")


def encode_varint(value: int) -> bytes:
    """Varint encoding (tests and writers of synthetic tables use it)."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


@dataclass(frozen=True)
class BlockHandle:
    """Where a block lives: ``size`` excludes the 5-byte trailer."""

    offset: int
    size: int

    @property
    def end(self) -> int:
        """One past the trailer."""
        return self.offset + self.size + BLOCK_TRAILER_SIZE

    @classmethod
    def decode(cls, buf: bytes, pos: int = 0, limit: int | None = None) -> tuple[BlockHandle, int]:
        limit = len(buf) if limit is None else limit
        offset, pos = decode_varint(buf, pos, limit)
        size, pos = decode_varint(buf, pos, limit)
        return cls(offset, size), pos


@dataclass(frozen=True)
class Footer:
    metaindex: BlockHandle
    index: BlockHandle


def parse_footer(footer: bytes, path: str, file_size: int) -> Footer:
    """Decode and check the 48-byte footer of a ``file_size``-byte table."""
    if file_size < FOOTER_SIZE or len(footer) != FOOTER_SIZE:
        raise TableCorruption(
            f"file is {file_size} bytes, shorter than the {FOOTER_SIZE}-byte table footer "
            "(truncated, or still being written)",
            path,
            "truncated",
            0,
        )
    lo, hi = struct.unpack_from("<II", footer, FOOTER_SIZE - 8)
    magic = (hi << 32) | lo
    if magic != TABLE_MAGIC:
        raise TableCorruption(
            f"bad table magic number 0x{magic:016x} (expected 0x{TABLE_MAGIC:016x}): not a "
            "leveldb table, or a truncated / half-written file",
            path,
            "bad_magic",
            file_size - 8,
            f"0x{TABLE_MAGIC:016x}",
            f"0x{magic:016x}",
        )
    try:
        metaindex, pos = BlockHandle.decode(footer, 0, FOOTER_SIZE - 8)
        index, _ = BlockHandle.decode(footer, pos, FOOTER_SIZE - 8)
    except _Malformed as exc:
        raise TableCorruption(
            f"bad block handle in the footer: {exc}", path, "bad_footer", file_size - FOOTER_SIZE
        ) from None
    body = file_size - FOOTER_SIZE
    # the metaindex handle is decoded (TF decodes it too) but not followed, by TF or by us: where
    # it points is none of a restore's business (a flip there leaves the step restorable)
    for what, h in (("index", index),):
        if h.end > body:
            raise TableCorruption(
                f"footer's {what} block handle (offset {h.offset}, size {h.size}) points past the "
                f"end of the table data ({body} bytes before the footer): truncated or corrupt",
                path,
                "truncated" if h.offset < body else "bad_handle",
                file_size - FOOTER_SIZE,
            )
    return Footer(metaindex, index)


def decode_block(
    raw: bytes, handle: BlockHandle, path: str, verify_checksum: bool = True, what: str = "block"
) -> bytes:
    """Check the trailer of ``raw`` (contents + 5-byte trailer) and return the contents."""
    n = handle.size
    if len(raw) != n + BLOCK_TRAILER_SIZE:
        raise TableCorruption(
            f"{what} at offset {handle.offset}: read {len(raw)} bytes, expected "
            f"{n + BLOCK_TRAILER_SIZE} (truncated)",
            path,
            "truncated",
            handle.offset,
        )
    ctype = raw[n]
    if verify_checksum:
        stored = _crc.unmask(_U32.unpack_from(raw, n + 1)[0])
        actual = _crc.value(raw[: n + 1])
        if stored != actual:
            raise TableCorruption(
                f"{what} at offset {handle.offset} (size {n}): crc32c mismatch",
                path,
                "checksum_mismatch",
                handle.offset,
                f"0x{stored:08x}",
                f"0x{actual:08x}",
            )
    contents = raw[:n]
    if ctype == NO_COMPRESSION:
        return contents
    if ctype == SNAPPY_COMPRESSION:
        return _snappy(contents, handle, path)
    raise TableCorruption(
        f"{what} at offset {handle.offset}: unknown compression type {ctype}",
        path,
        "bad_compression",
        handle.offset,
    )


def _snappy(contents: bytes, handle: BlockHandle, path: str) -> bytes:
    try:
        declared, _ = decode_varint(contents, 0, len(contents), 5)
    except _Malformed as exc:
        raise TableCorruption(
            f"snappy block at offset {handle.offset}: bad length preamble: {exc}",
            path,
            "bad_compression",
            handle.offset,
        ) from None
    if declared > _SNAPPY_MAX_RATIO * len(contents) + 64:
        raise TableCorruption(
            f"snappy block at offset {handle.offset} claims {declared} uncompressed bytes from "
            f"{len(contents)}: impossible",
            path,
            "bad_compression",
            handle.offset,
        )
    try:
        out = bytes(cramjam.snappy.decompress_raw(contents))
    except Exception as exc:  # cramjam.DecompressionError, ValueError... all mean "corrupt"
        raise TableCorruption(
            f"snappy block at offset {handle.offset}: {exc}", path, "bad_compression", handle.offset
        ) from None
    if len(out) != declared:
        raise TableCorruption(
            f"snappy block at offset {handle.offset}: decompressed to {len(out)} "
            f"bytes, preamble says {declared}",
            path,
            "bad_compression",
            handle.offset,
        )
    return out


def iter_block(
    contents: bytes, path: str, where: str, offset: int | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """Yield the (key, value) entries of one decoded block, checking its structure.

    ``where`` names the block in messages (e.g. ``"index block at offset 123"``).
    """

    def bad(msg: str) -> TableCorruption:
        return TableCorruption(f"{where}: {msg}", path, "bad_block", offset)

    restarts_at, restart_set = _restart_points(contents, bad)
    pos = 0
    key = b""
    first = True
    while pos < restarts_at:
        shared, non_shared, vlen, p = _entry_lengths(contents, pos, restarts_at, bad)
        if shared > len(key):
            raise bad(f"entry at block offset {pos} shares {shared} bytes of a {len(key)}-byte key")
        if (first or pos in restart_set) and shared:
            raise bad(f"entry at restart point {pos} has a shared key prefix ({shared} bytes)")
        if non_shared + vlen > restarts_at - p:
            raise bad(
                f"entry at block offset {pos} (key {non_shared} + value {vlen} bytes) runs "
                f"past the entries' end ({restarts_at})"
            )
        new_key = key[:shared] + contents[p : p + non_shared]
        if not first and new_key <= key:
            raise TableCorruption(
                f"{where}: keys out of order at block offset {pos}: {new_key!r} after {key!r}",
                path,
                "bad_order",
                offset,
            )
        key = new_key
        value = contents[p + non_shared : p + non_shared + vlen]
        pos = p + non_shared + vlen
        first = False
        yield key, value


def _restart_points(contents: bytes, bad: Callable[[str], TableCorruption]) -> tuple[int, set[int]]:
    """Where a block's entries end (its restart array begins) and its restart points, checked:
    the first is 0, they increase, and each lies inside the entries. ``(0, set())``: no entries."""
    size = len(contents)
    if size < 4:
        raise bad(f"{size} bytes is too short for a block (no restart count)")
    num_restarts = _U32.unpack_from(contents, size - 4)[0]
    if num_restarts > (size - 4) // 4:
        raise bad(f"restart count {num_restarts} does not fit in a {size}-byte block")
    restarts_at = size - 4 * (num_restarts + 1)
    if num_restarts == 0:
        # leveldb treats such a block as empty whatever precedes the count; so do we, but only
        # when nothing precedes it: bytes TF would silently ignore are a sign of damage.
        if restarts_at:
            raise bad("restart count 0 but the block holds entry bytes")
        return 0, set()
    restarts = struct.unpack_from(f"<{num_restarts}I", contents, restarts_at)
    if restarts[0] != 0:
        raise bad(f"first restart point is {restarts[0]}, not 0")
    prev_r = -1
    for r in restarts:
        if r >= max(restarts_at, 1) or r <= prev_r:
            raise bad(
                f"restart point {r} is out of order or outside the entries (entries end at {restarts_at})"
            )
        prev_r = r
    return restarts_at, set(restarts)


def _entry_lengths(
    contents: bytes, pos: int, limit: int, bad: Callable[[str], TableCorruption]
) -> tuple[int, int, int, int]:
    """(shared, non_shared, value length, where the key delta starts) of the entry at ``pos``."""
    try:
        if (
            limit - pos >= 3
            and contents[pos] < 0x80
            and contents[pos + 1] < 0x80
            and contents[pos + 2] < 0x80
        ):
            return contents[pos], contents[pos + 1], contents[pos + 2], pos + 3  # the common case
        shared, p = decode_varint(contents, pos, limit, 5)
        non_shared, p = decode_varint(contents, p, limit, 5)
        vlen, p = decode_varint(contents, p, limit, 5)
    except _Malformed as exc:
        raise bad(f"entry at block offset {pos}: {exc}") from None
    return shared, non_shared, vlen, p


@dataclass
class TableScan:
    """The result of a tolerant pass over a table: what could be read, and what could not."""

    entries: list[tuple[bytes, bytes]] = field(default_factory=list)
    problems: list[TableCorruption] = field(default_factory=list)
    blocks: int = 0  # data blocks in the index
    bad_blocks: int = 0  # data blocks whose entries are missing from ``entries``
    complete: bool = True  # False when the table's structure (footer/index) could not be read


class Table:
    """An open table: footer and index block read and checked; data blocks read on demand."""

    def __init__(self, read_at: ReadAt, size: int, path: str, *, verify_checksums: bool = True) -> None:
        self.path = path
        self.size = size
        self.verify_checksums = verify_checksums
        self._read_at = read_at
        self.footer = parse_footer(
            self._read(size - FOOTER_SIZE, FOOTER_SIZE) if size >= FOOTER_SIZE else b"", path, size
        )
        index_contents = self.read_block(self.footer.index, "index block")
        self.index: list[tuple[bytes, BlockHandle]] = []
        where = f"index block at offset {self.footer.index.offset}"
        data_limit = self.size - FOOTER_SIZE
        prev_end = 0
        for key, value in iter_block(index_contents, path, where, self.footer.index.offset):
            try:
                handle, _ = BlockHandle.decode(value)
            except _Malformed as exc:
                raise TableCorruption(
                    f"{where}: bad block handle for key {key!r}: {exc}",
                    path,
                    "bad_handle",
                    self.footer.index.offset,
                ) from None
            if handle.end > data_limit:
                raise TableCorruption(
                    f"{where}: data block handle (offset {handle.offset}, size {handle.size}) "
                    f"points past the end of the table data ({data_limit} bytes)",
                    path,
                    "truncated" if handle.offset < data_limit else "bad_handle",
                    handle.offset,
                )
            if handle.offset < prev_end:
                raise TableCorruption(
                    f"{where}: data block at offset {handle.offset} overlaps or precedes the "
                    f"previous one (ending at {prev_end}): looping or corrupt handles",
                    path,
                    "bad_handle",
                    handle.offset,
                )
            prev_end = handle.end
            self.index.append((key, handle))

    @classmethod
    def from_bytes(cls, data: bytes, path: str, *, verify_checksums: bool = True) -> Table:
        def read_at(offset: int, length: int) -> bytes:
            return data[offset : offset + length]

        return cls(read_at, len(data), path, verify_checksums=verify_checksums)

    def _read(self, offset: int, length: int) -> bytes:
        try:
            out = self._read_at(offset, length)
        except TableError:
            raise
        except (OSError, ValueError) as exc:
            raise TableCorruption(
                f"cannot read {length} bytes at offset {offset}: {exc}", self.path, "io_error", offset
            ) from exc
        if len(out) != length:
            raise TableCorruption(
                f"short read: {len(out)} of {length} bytes at offset {offset} "
                "(file truncated while reading?)",
                self.path,
                "truncated",
                offset,
            )
        return out

    def read_block(self, handle: BlockHandle, what: str = "data block") -> bytes:
        """Read, checksum and decompress one block; returns its contents."""
        if handle.end > self.size - FOOTER_SIZE:
            raise TableCorruption(
                f"{what} at offset {handle.offset} runs past the table data",
                self.path,
                "bad_handle",
                handle.offset,
            )
        raw = self._read(handle.offset, handle.size + BLOCK_TRAILER_SIZE)
        return decode_block(raw, handle, self.path, self.verify_checksums, what)

    def block_entries(self, handle: BlockHandle) -> list[tuple[bytes, bytes]]:
        contents = self.read_block(handle)
        return list(iter_block(contents, self.path, f"data block at offset {handle.offset}", handle.offset))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """All entries in key order; raises on the first problem."""
        last: bytes | None = None
        for _, handle in self.index:
            for key, value in self.block_entries(handle):
                if last is not None and key <= last:
                    raise TableCorruption(
                        f"keys out of order across data blocks at offset "
                        f"{handle.offset}: {key!r} after {last!r}",
                        self.path,
                        "bad_order",
                        handle.offset,
                    )
                last = key
                yield key, value

    def first_entry(self) -> tuple[bytes, bytes] | None:
        """The smallest key and its value, reading only the first non-empty data block."""
        for _, handle in self.index:
            entries = self.block_entries(handle)
            if entries:
                return entries[0]
        return None

    def scan(self) -> TableScan:
        """Read every data block, collecting problems instead of stopping at the first one.

        Entries of a bad block are left out (they cannot be trusted); the others are kept.
        """
        out = TableScan(blocks=len(self.index))
        for entries in self.scan_blocks(out):
            out.entries.extend(entries)
        return out

    def scan_blocks(self, out: TableScan) -> Iterator[list[tuple[bytes, bytes]]]:
        """:meth:`scan` one block at a time: yields the entries of each sound data block (kept by
        no one here: a caller can digest a big table block by block) and records the problems
        and counts in ``out`` (``out.entries`` is left alone)."""
        last: bytes | None = None
        for _, handle in self.index:
            try:
                entries = self.block_entries(handle)
                if entries and last is not None and entries[0][0] <= last:
                    raise TableCorruption(
                        f"keys out of order across data blocks at offset "
                        f"{handle.offset}: {entries[0][0]!r} after {last!r}",
                        self.path,
                        "bad_order",
                        handle.offset,
                    )
            except TableCorruption as exc:
                out.problems.append(exc)
                out.bad_blocks += 1
                continue
            if entries:
                last = entries[-1][0]
            yield entries


def read_table(data: bytes, path: str, *, verify_checksums: bool = True) -> Iterator[tuple[bytes, bytes]]:
    """Iterate the (key, value) entries of a whole table held in memory (every block CRC checked)."""
    return iter(Table.from_bytes(data, path, verify_checksums=verify_checksums))


def scan_table(source: bytes | Table, path: str | None = None) -> TableScan:
    """Tolerant pass: every readable entry plus every problem (see :meth:`Table.scan`)."""
    if isinstance(source, Table):
        table = source
    else:
        try:
            table = Table.from_bytes(source, path or "<table>")
        except TableCorruption as exc:
            return TableScan(problems=[exc], complete=False)
    return table.scan()


def verify_table_blocks(source: bytes | Table, path: str | None = None) -> list[TableCorruption]:
    """Problems found when checking every block (CRC, structure, key order); ``[]`` when sound."""
    return scan_table(source, path).problems
