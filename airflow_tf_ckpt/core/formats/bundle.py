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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

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
# entries


class BundleEntry:
    """One index entry. ``name`` is the tensor name; for a slice entry, its parent's name.

    Compact on purpose: an index may hold millions of entries, and a parsed protobuf message costs
    ~800 bytes each (1.6 GB for a 1M-entry, 23 MB index). The fields are decoded once into slots;
    the serialized value is kept only for the rare sliced entry (its slice list), and ``proto``
    re-parses it on demand.
    """

    __slots__ = (
        "_name",
        "_value",
        "crc32c_masked",
        "dtype",
        "key",
        "offset",
        "shape",
        "shape_ok",
        "shard_id",
        "size",
        "slice",
        "sliced",
    )

    def __init__(
        self,
        key: bytes,
        name: str | None,
        proto: Any,
        slice: SliceSpec | None = None,
        value: bytes | None = None,
    ) -> None:
        self.key = key
        self._name = name  # None: the key's text (computed on use)
        self.slice = slice  # set on slice entries (the pieces that hold data)
        shape = proto.shape
        dim = shape.dim
        n = len(dim)  # (the common ranks without a generator: 2.7 us an entry otherwise)
        dims = (
            ()
            if n == 0
            else (dim[0].size,)
            if n == 1
            else (dim[0].size, dim[1].size)
            if n == 2
            else tuple([d.size for d in dim])
        )
        self.shape: tuple[int, ...] = dims
        self.shape_ok = not shape.unknown_rank and (n == 0 or min(dims) >= 0)
        self.dtype = proto.dtype
        self.shard_id = proto.shard_id
        self.offset = proto.offset
        self.size = proto.size
        self.crc32c_masked = proto.crc32c
        self.sliced = len(proto.slices) > 0  # a full tensor stored as slices: no data of its own
        self._value = (value if value is not None else proto.SerializeToString()) if self.sliced else None

    @property
    def name(self) -> str:
        return self._name if self._name is not None else key_text(self.key)

    @property
    def proto(self) -> Any:
        """The BundleEntryProto (re-parsed for a sliced entry, rebuilt from the fields otherwise)."""
        proto = BundleEntryProto()
        if self._value is not None:
            proto.ParseFromString(self._value)
            return proto
        proto.dtype, proto.shard_id, proto.offset = self.dtype, self.shard_id, self.offset
        proto.size, proto.crc32c = self.size, self.crc32c_masked
        for d in self.shape:
            proto.shape.dim.add(size=d)
        proto.shape.unknown_rank = not self.shape_ok and not self.shape
        return proto

    def __repr__(self) -> str:
        return f"BundleEntry({self.display_name!r}, shard {self.shard_id}, {self.offset}+{self.size})"

    @property
    def is_slice(self) -> bool:
        return self.slice is not None

    @property
    def is_sliced(self) -> bool:
        """A full tensor stored as slices: no data of its own."""
        return self.sliced

    @property
    def has_data(self) -> bool:
        return not self.sliced

    @property
    def display_name(self) -> str:
        """``name`` or ``name[slice spec]`` (TF's slice spec notation)."""
        return f"{self.name}[{self.slice}]" if self.slice is not None else self.name

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def crc32c(self) -> int:
        """The stored checksum, UNMASKED."""
        return unmask(self.crc32c_masked)

    @property
    def slices(self) -> list[SliceSpec]:
        """The slices a sliced full tensor lists."""
        if self._value is None:
            return []
        proto = self.proto
        rank = len(proto.shape.dim)
        return [SliceSpec.from_proto(s, rank) for s in proto.slices]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype_name, "shape": list(self.shape)}
        if self.slice is not None:
            d["slice"] = str(self.slice)
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


def parse_entry(key: bytes, value: bytes, path: str) -> BundleEntry:
    """Parse one tensor entry; slice keys are decoded to the parent name + slice spec."""
    proto = BundleEntryProto()
    try:
        proto.ParseFromString(value)
    except (DecodeError, ValueError) as exc:
        raise TableCorruption(
            f"entry for key {key_text(key)!r} is not a BundleEntryProto: {exc}", path, "bad_entry", key=key
        ) from None
    if is_slice_key(key):
        try:
            name, spec = decode_slice_key(key)
        except SliceKeyError as exc:
            raise TableCorruption(
                f"key {key!r} starts like a tensor slice key but does not decode: {exc}",
                path,
                "bad_entry",
                key=key,
            ) from None
        return BundleEntry(key, name, proto, spec, value)
    return BundleEntry(key, None, proto, None, value)


@dataclass
class Bundle:
    """A parsed ``.index``: header + entries in index (key) order, header excluded."""

    path: str
    header: Any  # BundleHeaderProto
    entries: list[BundleEntry] = field(default_factory=list)

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
    problems = list(scan.problems)
    header = None
    entries: list[BundleEntry] = []
    for key, value in scan.entries:
        if key == HEADER_KEY:
            try:
                header = parse_header(value, path)
            except TableCorruption as exc:
                problems.append(exc)
            continue
        try:
            entries.append(parse_entry(key, value, path))
        except TableCorruption as exc:
            problems.append(exc)
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
    entries: list[BundleEntry] = []
    for key, value in table:
        if key == HEADER_KEY:
            header = parse_header(value, path)
        else:
            entries.append(parse_entry(key, value, path))
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
    "SliceKeyError",
    "SliceSpec",
    "TableError",
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
