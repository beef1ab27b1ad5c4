"""V2 TensorBundle index (``PREFIX.index``): header, entries, and slice keys.

The ``.index`` is a leveldb table (see :mod:`airflow_tf_ckpt.core.formats.table`). Key ``""`` holds a ``BundleHeaderProto``;
every other key a ``BundleEntryProto`` (tensorflow/core/util/tensor_bundle/tensor_bundle.cc).

Slices: when a tensor is saved in pieces (``MaxShardSizePolicy`` splits large tensors; old
partitioned variables do the same), the full tensor's entry carries ``slices`` and no data, and
each piece is its own entry under ``EncodeTensorNameSlice(name, slice)``
(tensorflow/core/util/saved_tensor_slice_util.cc), built from OrderedCode
(tensorflow/core/lib/strings/ordered_code.cc)::

    WriteNumIncreasing(0)                 -> b"\\x00"  (so every slice key sorts before names)
    WriteString(name)                     -> name with \\x00 -> \\x00\\xff, \\xff -> \\xff\\x00,
                                             then the terminator \\x00\\x01
    WriteNumIncreasing(rank)              -> one length byte, then big-endian bytes, no leading 0s
    per dim: WriteSignedNumIncreasing(start), WriteSignedNumIncreasing(length)  (length -1 = all)

V1 tables (``.ckpt``) key their data the same way, so :func:`decode_slice_key` serves both.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from google.protobuf.message import DecodeError

from airflow_tf_ckpt.core.errors import TableError
from airflow_tf_ckpt.core.formats.crc import unmask
from airflow_tf_ckpt.core.formats.naming import v2_data_name
from airflow_tf_ckpt.core.formats.protos import BundleEntryProto, BundleHeaderProto, dtype_name
from airflow_tf_ckpt.core.formats.table import FOOTER_SIZE, Table, TableCorruption, TableScan
from airflow_tf_ckpt.core.storage.location import Location

HEADER_KEY = b""
# An index this big describes ~40M tensors (1M take 23 MB); a larger one is refused unread.
MAX_INDEX_BYTES = 1 << 30
INDEX_SUFFIX = ".index"
FULL_EXTENT = -1  # TensorSlice kFullExtent


def index_name(prefix: str) -> str:
    return prefix + INDEX_SUFFIX


def data_name(prefix: str, shard: int, num_shards: int) -> str:
    """``PREFIX.data-%05d-of-%05d``."""
    return v2_data_name(prefix, shard, num_shards)


def key_text(key: bytes) -> str:
    """A printable form of a raw key (tensor names are UTF-8; anything else is escaped)."""
    return key.decode("utf-8", "backslashreplace")


# ---------------------------------------------------------------------------------------------
# OrderedCode (the subset EncodeTensorNameSlice uses)


class SliceKeyError(ValueError):
    """A key that starts like a slice key (``\\x00``) but does not decode as one."""


def _read_num_increasing(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise SliceKeyError("missing number")
    n = key[pos]
    if n > 8 or pos + 1 + n > len(key):
        raise SliceKeyError("bad unsigned number")
    return int.from_bytes(key[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def _read_string(key: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    i = pos
    while i + 1 < len(key):
        c = key[i]
        if c == 0x00:
            nxt = key[i + 1]
            if nxt == 0x01:
                return bytes(out), i + 2
            if nxt != 0xFF:
                raise SliceKeyError("bad escape in name")
            out.append(0)
            i += 2
        elif c == 0xFF:
            if key[i + 1] != 0x00:
                raise SliceKeyError("bad escape in name")
            out.append(0xFF)
            i += 2
        else:
            out.append(c)
            i += 1
    raise SliceKeyError("unterminated name")


_LENGTH_TO_MASK = [
    0,
    0x80,
    0xC000,
    0xE00000,
    0xF0000000,
    0xF800000000,
    0xFC0000000000,
    0xFE000000000000,
    0xFF00000000000000,
    0x8000000000000000,
    0,
]


def _read_signed(key: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(key):
        raise SliceKeyError("missing signed number")
    xor = 0 if key[pos] & 0x80 else 0xFF
    first = key[pos] ^ xor
    if first != 0xFF:
        length = 7 - ((first ^ 0xFF).bit_length() - 1)
    else:
        if pos + 2 > len(key):
            raise SliceKeyError("truncated signed number")
        second = key[pos + 1] ^ xor
        length = 8
        if second >= 0x80:
            if second < 0xC0:
                length = 9
            else:
                if pos + 3 > len(key):
                    raise SliceKeyError("truncated signed number")
                third = key[pos + 2] ^ xor
                if second == 0xC0 and third < 0x80:
                    length = 10
                else:
                    raise SliceKeyError("signed number too long")
    if pos + length > len(key):
        raise SliceKeyError("truncated signed number")
    raw = int.from_bytes(key[pos : pos + length], "big")
    if xor:  # negative: sign-extend (the C++ code shifts ones in from the top)
        raw |= ((1 << 64) - 1) ^ ((1 << (8 * length)) - 1) if length < 8 else 0
    raw &= (1 << 64) - 1
    raw ^= _LENGTH_TO_MASK[length]
    value = raw - (1 << 64) if raw >> 63 else raw
    return value, pos + length


def _write_num_increasing(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


_LENGTH_TO_HEADER = [
    (0, 0),
    (0x80, 0),
    (0xC0, 0),
    (0xE0, 0),
    (0xF0, 0),
    (0xF8, 0),
    (0xFC, 0),
    (0xFE, 0),
    (0xFF, 0),
    (0xFF, 0x80),
    (0xFF, 0xC0),
]
_BITS_TO_LENGTH = [
    1,
    1,
    1,
    1,
    1,
    1,
    1,
    2,
    2,
    2,
    2,
    2,
    2,
    2,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    4,
    4,
    4,
    4,
    4,
    4,
    4,
    5,
    5,
    5,
    5,
    5,
    5,
    5,
    6,
    6,
    6,
    6,
    6,
    6,
    6,
    7,
    7,
    7,
    7,
    7,
    7,
    7,
    8,
    8,
    8,
    8,
    8,
    8,
    8,
    9,
    9,
    9,
    9,
    9,
    9,
    9,
    10,
]


def _write_signed(value: int) -> bytes:
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = _BITS_TO_LENGTH[x.bit_length()]
    buf = bytearray((value & ((1 << 80) - 1)).to_bytes(10, "big"))
    if value < 0:
        buf[0] = buf[1] = 0xFF
    begin = 10 - length
    buf[begin] ^= _LENGTH_TO_HEADER[length][0]
    buf[begin + 1] ^= _LENGTH_TO_HEADER[length][1]
    return bytes(buf[begin:])


@dataclass(frozen=True)
class SliceSpec:
    """A TensorSlice: per dim ``(start, length)``, ``length=None`` meaning the whole dim."""

    extents: tuple[tuple[int, int | None], ...]

    def __str__(self) -> str:
        """TensorSlice::DebugString: ``-`` for a full dim, else ``start,length``; ``:``-joined."""
        return ":".join("-" if ln is None else f"{st},{ln}" for st, ln in self.extents)

    @classmethod
    def from_proto(cls, proto: Any, rank: int | None = None) -> SliceSpec:
        ext = [(int(e.start), int(e.length) if e.HasField("length") else None) for e in proto.extent]
        if rank is not None and not ext:
            ext = [(0, None)] * rank
        return cls(tuple(ext))

    def shape(self, full_shape: Iterable[int]) -> tuple[int, ...]:
        return tuple(d if ln is None else ln for (_, ln), d in zip(self.extents, full_shape, strict=False))


def decode_slice_key(key: bytes) -> tuple[str, SliceSpec]:
    """Decode an ``EncodeTensorNameSlice`` key -> (tensor name, slice). Raises SliceKeyError."""
    num, pos = _read_num_increasing(key, 0)
    if num != 0:
        raise SliceKeyError(f"leading number is {num}, not 0")
    name, pos = _read_string(key, pos)
    rank, pos = _read_num_increasing(key, pos)
    if rank > 254:  # rank 0 is a scalar (V1 saves every scalar, e.g. global_step, so)
        raise SliceKeyError(f"implausible slice rank {rank}")
    extents: list[tuple[int, int | None]] = []
    for _ in range(rank):
        start, pos = _read_signed(key, pos)
        length, pos = _read_signed(key, pos)
        if length == FULL_EXTENT:
            extents.append((start, None))
        elif start < 0 or length < 0:
            raise SliceKeyError(f"bad extent {start},{length}")
        else:
            extents.append((start, length))
    if pos != len(key):
        raise SliceKeyError(f"{len(key) - pos} trailing bytes")
    return name.decode("utf-8", "backslashreplace"), SliceSpec(tuple(extents))


def encode_slice_key(name: str, spec: SliceSpec) -> bytes:
    """EncodeTensorNameSlice (used by tests, and to look up the entry of a listed slice)."""
    raw = bytearray()
    for b in name.encode("utf-8"):
        raw += b"\x00\xff" if b == 0 else (b"\xff\x00" if b == 0xFF else bytes([b]))
    out = bytearray(_write_num_increasing(0) + bytes(raw) + b"\x00\x01")
    out += _write_num_increasing(len(spec.extents))
    for start, length in spec.extents:
        out += _write_signed(0 if length is None else start)
        out += _write_signed(FULL_EXTENT if length is None else length)
    return bytes(out)


def is_slice_key(key: bytes) -> bool:
    return key[:1] == b"\x00"


# ---------------------------------------------------------------------------------------------
# entries: one table of columns, not an object per entry

_SHAPE_OK = 1  # the stored shape is fully defined
_SLICED = 2  # a full tensor stored as slices: no data of its own
_SLICE_KEY = 4  # a slice entry: the key encodes (parent name, slice)


class EntryTable(Sequence["BundleEntry"]):
    """The entries of an index, in index (key) order, one column per field.

    An index may list millions of tensors: a parsed protobuf message per entry costs ~800 bytes,
    a slotted object with its key and ints ~600. Here an entry costs its key bytes plus ~50: the
    keys are one blob cut by ``key_ends``, the numbers ``array`` columns, the shape dims one more
    column cut by ``dim_ends``. Only a sliced tensor (rare) keeps its serialized entry, for its
    slice list. ``table[i]`` is a :class:`BundleEntry` view of row ``i``; the verifier reads the
    columns directly.
    """

    def __init__(self) -> None:
        self._keys = bytearray()
        self.key_ends = array("Q")
        self.dtype = array("i")  # DataType enum (int32 on the wire)
        self.shard_id = array("i")
        self.offset = array("q")
        self.size = array("q")
        self.crc32c_masked = array("I")
        self.flags = bytearray()
        self.dims = array("q")
        self.dim_ends = array("Q")
        self.values: dict[int, bytes] = {}  # row -> serialized entry, sliced tensors only
        self.keys_sorted = True  # strictly increasing keys (always so from a checked table)
        self._last_key = b""

    # -- building

    def append(self, key: bytes, proto: Any, value: bytes, slice_key: bool) -> None:
        """Add one parsed entry (``proto``, serialized as ``value``) under ``key``."""
        if self.key_ends and key <= self._last_key:
            self.keys_sorted = False
        self._last_key = key
        shape = proto.shape
        dim = shape.dim
        n = len(dim)
        if n == 1:  # the common case, without a list
            d0 = dim[0].size
            self.dims.append(d0)
            shape_ok = d0 >= 0
        elif n:
            sizes = [d.size for d in dim]
            self.dims.extend(sizes)
            shape_ok = min(sizes) >= 0
        else:
            shape_ok = True
        shape_ok = shape_ok and not shape.unknown_rank
        sliced = len(proto.slices) > 0
        if sliced:
            self.values[len(self)] = value
        self._keys += key
        self.key_ends.append(len(self._keys))
        self.dim_ends.append(len(self.dims))
        self.dtype.append(proto.dtype)
        self.shard_id.append(proto.shard_id)
        self.offset.append(proto.offset)
        self.size.append(proto.size)
        self.crc32c_masked.append(proto.crc32c)
        self.flags.append(shape_ok * _SHAPE_OK | sliced * _SLICED | slice_key * _SLICE_KEY)

    # -- rows

    def __len__(self) -> int:
        return len(self.key_ends)

    @overload
    def __getitem__(self, i: int) -> BundleEntry: ...

    @overload
    def __getitem__(self, i: slice) -> list[BundleEntry]: ...

    def __getitem__(self, i: int | slice) -> BundleEntry | list[BundleEntry]:
        if isinstance(i, slice):
            return [BundleEntry(self, j) for j in range(len(self))[i]]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("entry index out of range")
        return BundleEntry(self, i % n)

    def __iter__(self) -> Iterator[BundleEntry]:
        return (BundleEntry(self, i) for i in range(len(self)))

    def key(self, i: int) -> bytes:
        return bytes(self._keys[self.key_ends[i - 1] if i else 0 : self.key_ends[i]])

    def find(self, key: bytes) -> int | None:
        """The row whose key is ``key`` (binary search over the sorted keys), or ``None``."""
        if not self.keys_sorted:
            return next((i for i in range(len(self)) if self.key(i) == key), None)
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.key(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self) and self.key(lo) == key else None

    def is_slice(self, i: int) -> bool:
        return bool(self.flags[i] & _SLICE_KEY)

    def is_sliced(self, i: int) -> bool:
        return bool(self.flags[i] & _SLICED)

    def shape_ok(self, i: int) -> bool:
        return bool(self.flags[i] & _SHAPE_OK)

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.dims[self.dim_ends[i - 1] if i else 0 : self.dim_ends[i]])

    def num_elements(self, i: int) -> int:
        start, end = self.dim_ends[i - 1] if i else 0, self.dim_ends[i]
        if end - start == 1:
            return self.dims[start]
        return math.prod(self.dims[start:end]) if end > start else 1

    def name(self, i: int) -> str:
        """The tensor name; for a slice entry, its parent's."""
        key = self.key(i)
        return decode_slice_key(key)[0] if self.flags[i] & _SLICE_KEY else key_text(key)

    def slice(self, i: int) -> SliceSpec | None:
        return decode_slice_key(self.key(i))[1] if self.flags[i] & _SLICE_KEY else None

    def display_name(self, i: int) -> str:
        """``name`` or ``name[slice spec]`` (TF's slice spec notation)."""
        key = self.key(i)
        if self.flags[i] & _SLICE_KEY:
            name, spec = decode_slice_key(key)
            return f"{name}[{spec}]"
        return key_text(key)


class BundleEntry:
    """A view of one row of an :class:`EntryTable`. ``name`` is the tensor name; for a slice
    entry, its parent's name."""

    __slots__ = ("_i", "_t")

    def __init__(self, table: EntryTable, i: int) -> None:
        self._t = table
        self._i = i

    key = property(lambda self: self._t.key(self._i))
    name = property(lambda self: self._t.name(self._i))
    slice = property(lambda self: self._t.slice(self._i))
    display_name = property(lambda self: self._t.display_name(self._i), doc="``name[slice]`` or ``name``")
    shape = property(lambda self: self._t.shape(self._i))
    shape_ok = property(lambda self: self._t.shape_ok(self._i))
    num_elements = property(lambda self: self._t.num_elements(self._i))
    dtype = property(lambda self: self._t.dtype[self._i])
    shard_id = property(lambda self: self._t.shard_id[self._i])
    offset = property(lambda self: self._t.offset[self._i])
    size = property(lambda self: self._t.size[self._i])
    crc32c_masked = property(lambda self: self._t.crc32c_masked[self._i])
    is_slice = property(lambda self: self._t.is_slice(self._i))
    sliced = is_sliced = property(
        lambda self: self._t.is_sliced(self._i), doc="A full tensor stored as slices: no data of its own."
    )
    has_data = property(lambda self: not self._t.is_sliced(self._i))
    dtype_name = property(lambda self: dtype_name(self.dtype))

    @property
    def proto(self) -> Any:
        """The BundleEntryProto (re-parsed for a sliced entry, rebuilt from the fields otherwise)."""
        proto = BundleEntryProto()
        value = self._t.values.get(self._i)
        if value is not None:
            proto.ParseFromString(value)
            return proto
        proto.dtype, proto.shard_id, proto.offset = self.dtype, self.shard_id, self.offset
        proto.size, proto.crc32c = self.size, self.crc32c_masked
        shape = self.shape
        for d in shape:
            proto.shape.dim.add(size=d)
        proto.shape.unknown_rank = not self.shape_ok and not shape
        return proto

    def __repr__(self) -> str:
        return f"BundleEntry({self.display_name!r}, shard {self.shard_id}, {self.offset}+{self.size})"

    @property
    def crc32c(self) -> int:
        """The stored checksum, UNMASKED."""
        return unmask(self.crc32c_masked)

    @property
    def slices(self) -> list[SliceSpec]:
        """The slices a sliced full tensor lists."""
        if self._i not in self._t.values:
            return []
        proto = self.proto
        rank = len(proto.shape.dim)
        return [SliceSpec.from_proto(s, rank) for s in proto.slices]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype_name, "shape": list(self.shape)}
        spec = self.slice
        if spec is not None:
            d["slice"] = str(spec)
        if self.is_sliced:
            d["slices"] = [str(s) for s in self.slices]
        else:
            d.update(shard=self.shard_id, offset=self.offset, size=self.size)
        return d


def parse_header(value: bytes, path: str) -> Any:
    """Parse the ``""`` entry as BundleHeaderProto (TableError naming the file on failure)."""
    header = BundleHeaderProto()
    try:
        header.ParseFromString(value)
    except (DecodeError, ValueError) as exc:
        raise TableCorruption(
            f'header entry (key "") is not a BundleHeaderProto: {exc}', path, "bad_header", key=HEADER_KEY
        ) from None
    return header


def add_entry(table: EntryTable, key: bytes, value: bytes, path: str, proto: Any = None) -> None:
    """Parse one tensor entry into a row of ``table`` (nothing added when it does not parse).

    ``proto``: a BundleEntryProto to parse into (reused: one message for a whole index)."""
    proto = BundleEntryProto() if proto is None else proto
    try:
        proto.ParseFromString(value)
    except (DecodeError, ValueError) as exc:
        raise TableCorruption(
            f"entry for key {key_text(key)!r} is not a BundleEntryProto: {exc}", path, "bad_entry", key=key
        ) from None
    slice_key = is_slice_key(key)
    if slice_key:
        try:
            decode_slice_key(key)
        except SliceKeyError as exc:
            raise TableCorruption(
                f"key {key!r} starts like a tensor slice key but does not decode: {exc}",
                path,
                "bad_entry",
                key=key,
            ) from None
    table.append(key, proto, value, slice_key)


def parse_entry(key: bytes, value: bytes, path: str) -> BundleEntry:
    """Parse one tensor entry; slice keys are decoded to the parent name + slice spec."""
    table = EntryTable()
    add_entry(table, key, value, path)
    return table[0]


@dataclass
class Bundle:
    """A parsed ``.index``: header + entries in index (key) order, header excluded."""

    path: str
    header: Any  # BundleHeaderProto
    entries: EntryTable = field(default_factory=EntryTable)

    @property
    def num_shards(self) -> int:
        return int(self.header.num_shards)

    def tensors(self) -> dict[str, BundleEntry]:
        """Full tensors by name (what ``get_variable_to_shape_map`` lists): no slice entries."""
        return {e.name: e for e in self.entries if not e.is_slice}

    def slice_entries(self, name: str | None = None) -> list[BundleEntry]:
        return [e for e in self.entries if e.is_slice and (name is None or e.name == name)]

    def data_entries(self) -> list[BundleEntry]:
        """Entries that own bytes in a data shard (plain tensors and slices)."""
        return [e for e in self.entries if e.has_data]


def bundle_from_scan(scan: TableScan, path: str) -> tuple[Bundle | None, list[TableCorruption]]:
    """Build a Bundle from whatever a tolerant table scan could read, plus the problems.

    The bundle is ``None`` when there is no readable header. Entries that fail to parse are left
    out and reported (each naming its key).
    """
    return bundle_from_blocks([scan.entries], scan, path)


def bundle_from_blocks(
    blocks: Iterable[list[tuple[bytes, bytes]]], scan: TableScan, path: str
) -> tuple[Bundle | None, list[TableCorruption]]:
    """:func:`bundle_from_scan` over :meth:`Table.scan_blocks` (``scan`` is the one it fills):
    each block's entries go into the table as they are read, never all held as pairs."""
    header = None
    entries = EntryTable()
    entry_problems: list[TableCorruption] = []
    proto = BundleEntryProto()
    for block in blocks:
        for key, value in block:
            try:
                if key == HEADER_KEY:
                    header = parse_header(value, path)
                else:
                    add_entry(entries, key, value, path, proto)
            except TableCorruption as exc:
                entry_problems.append(exc)
    problems = [*scan.problems, *entry_problems]  # the table's problems first, as a scan lists them
    if header is None:
        if scan.complete and not any(p.kind in ("bad_header",) for p in problems) and not scan.bad_blocks:
            problems.append(
                TableCorruption('no header entry (key ""): not a TensorBundle index', path, "bad_header")
            )
        return None, problems
    return Bundle(path, header, entries), problems


def parse_bundle_index(data: bytes, path: str) -> Bundle:
    """Parse a whole ``.index`` strictly: the first problem raises TableError."""
    table = Table.from_bytes(data, path)
    header = None
    entries = EntryTable()
    proto = BundleEntryProto()
    for key, value in table:
        if key == HEADER_KEY:
            header = parse_header(value, path)
        else:
            add_entry(entries, key, value, path, proto)
    if header is None:
        raise TableCorruption('no header entry (key ""): not a TensorBundle index', path, "bad_header")
    return Bundle(path, header, entries)


def read_bundle(location: Location, prefix: str) -> Bundle:
    """Read and parse ``PREFIX.index`` (StorageError if absent, TableError if malformed)."""
    name = index_name(prefix)
    data = location.read_bytes(name, cap=MAX_INDEX_BYTES, what="a TensorBundle index")
    return parse_bundle_index(data, location.display(name))


# Files at most this big are read in one request: cheaper than three ranged ones.
_SMALL_INDEX = 256 << 10


def read_bundle_header(location: Location, prefix: str) -> Any:
    """Read just enough of ``PREFIX.index`` to return its BundleHeaderProto (num_shards...).

    Small files: one read. Larger ones: the footer, the index block and the first data block
    (the header is the first key, ``""``), three ranged reads whatever the index size.
    """
    name = index_name(prefix)
    display = location.display(name)
    try:
        size = int(location.fs.size(location.join(name)))
    except FileNotFoundError:
        location.read_bytes(name)  # raises the StorageError with the usual wording
        raise
    if size <= _SMALL_INDEX:
        data = location.read_bytes(name, cap=MAX_INDEX_BYTES, what="a TensorBundle index", size=size)
        table = Table.from_bytes(data, display)
    else:

        def read_at(offset: int, length: int) -> bytes:
            return location.read_bytes(name, offset, offset + length)

        table = Table(read_at, size, display)
    first = table.first_entry()
    if first is None or first[0] != HEADER_KEY:
        raise TableCorruption(
            'no header entry (key "") at the start of the index: not a TensorBundle index',
            display,
            "bad_header",
        )
    return parse_header(first[1], display)


__all__ = [
    "FOOTER_SIZE",
    "HEADER_KEY",
    "Bundle",
    "BundleEntry",
    "EntryTable",
    "SliceKeyError",
    "SliceSpec",
    "TableError",
    "add_entry",
    "bundle_from_blocks",
    "bundle_from_scan",
    "data_name",
    "decode_slice_key",
    "encode_slice_key",
    "index_name",
    "is_slice_key",
    "key_text",
    "parse_bundle_index",
    "parse_entry",
    "parse_header",
    "read_bundle",
    "read_bundle_header",
]
