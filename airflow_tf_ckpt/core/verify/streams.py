"""CRC streams: each data shard read once, in bounded chunks, and the crc32c of every entry's
byte range computed as the stream passes it (plain, DT_STRING and DT_VARIANT layouts)."""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from airflow_tf_ckpt.core.formats.bundle import EntryTable
from airflow_tf_ckpt.core.formats.crc import extend_buffer as _extend
from airflow_tf_ckpt.core.formats.crc import unmask
from airflow_tf_ckpt.core.storage.buffers import read_buffer
from airflow_tf_ckpt.core.storage.location import (
    Location,
    open_regular,
)

DT_VARIANT = 21


class RawCrc:
    """Plain dtypes: the crc is over the raw bytes of the range."""

    __slots__ = ("crc",)

    def __init__(self) -> None:
        self.crc = 0

    def feed(self, data: memoryview) -> None:
        self.crc = _extend(self.crc, data)

    def finish(self) -> str | None:
        return None


class StringCrc:
    """DT_STRING: [varint64 len]*n [4-byte masked crc of the lengths] [bytes...], streamed.

    The lengths enter the crc as fixed-width integers (uint32, or uint64 when > UINT32_MAX) in
    the byte order of the writer (the header's endianness), not as their varint bytes.
    """

    __slots__ = (
        "big_endian",
        "count",
        "crc",
        "error",
        "lengths_total",
        "num_elements",
        "raw_bytes",
        "varint_bytes",
        "_cksum",
        "_nbytes",
        "_packed",
        "_phase",
        "_remaining",
        "_shift",
        "_value",
    )

    def __init__(self, num_elements: int, big_endian: bool) -> None:
        self.num_elements = num_elements
        self.big_endian = big_endian
        self.crc = 0
        self.error: str | None = None
        self.count = 0  # lengths decoded
        self.lengths_total = 0
        self.varint_bytes = 0
        self.raw_bytes = 0
        self._remaining = num_elements
        self._phase = 0 if self._remaining > 0 else 1  # 0 lengths, 1 checksum, 2 bytes, 3 failed
        self._cksum = bytearray()
        self._packed = bytearray()
        self._shift = self._value = self._nbytes = 0

    def _flush(self) -> None:
        if self._packed:
            self.crc = _extend(self.crc, bytes(self._packed))
            self._packed.clear()

    def _fail(self, msg: str) -> None:
        self.error = msg
        self._phase = 3

    def feed(self, data: memoryview) -> None:
        i, n = 0, len(data)
        if self._phase == 0:
            i = self._feed_lengths(data)
            if self._phase != 1:  # more lengths to come, or failed
                return
        if self._phase == 1 and i < n:
            i = self._feed_checksum(data, i)
        if self._phase == 2 and i < n:
            self.crc = _extend(self.crc, data[i:] if i else data)
            self.raw_bytes += n - i

    def _feed_lengths(self, data: memoryview) -> int:
        """Decode varint lengths from the start of ``data``; returns where they stopped (phase 1
        once all are read)."""
        i, n = 0, len(data)
        fmt32, fmt64 = (">I", ">Q") if self.big_endian else ("<I", "<Q")
        shift, val, nbytes = self._shift, self._value, self._nbytes
        while i < n and self._remaining:
            b = data[i]
            i += 1
            val |= (b & 0x7F) << shift
            nbytes += 1
            if b & 0x80:
                shift += 7
                if nbytes >= 10:
                    self._fail(f"element {self.count}: length varint longer than 10 bytes")
                    return i
                continue
            if val >> 64:
                self._fail(f"element {self.count}: length does not fit in 64 bits")
                return i
            self._packed += struct.pack(fmt32 if val <= 0xFFFFFFFF else fmt64, val)
            if len(self._packed) >= 1 << 16:
                self._flush()
            self.lengths_total += val
            self.count += 1
            self._remaining -= 1
            shift = val = nbytes = 0
        self.varint_bytes += i
        self._shift, self._value, self._nbytes = shift, val, nbytes
        if not self._remaining:
            self._flush()
            self._phase = 1
        return i

    def _feed_checksum(self, data: memoryview, i: int) -> int:
        """Collect the 4-byte masked crc of the lengths from ``data[i:]`` (phase 2 once whole)."""
        take = min(4 - len(self._cksum), len(data) - i)
        self._cksum += data[i : i + take]
        if len(self._cksum) == 4:
            stored = unmask(struct.unpack(">I" if self.big_endian else "<I", self._cksum)[0])
            if stored != self.crc:
                self.error = (
                    f"the checksum of the string lengths does not match (stored "
                    f"0x{stored:08x}, computed 0x{self.crc:08x})"
                )
            self.crc = _extend(self.crc, bytes(self._cksum))
            self._phase = 2
        return i + take

    def finish(self) -> str | None:
        if self._phase == 3:
            return self.error
        if self._phase == 0:
            return f"the range ends inside the string lengths ({self.count} of {self.num_elements} decoded)"
        if self._phase == 1:
            return "the range ends inside the 4-byte checksum of the string lengths"
        if self.raw_bytes != self.lengths_total:
            return (
                f"string layout does not add up: the lengths sum to {self.lengths_total} bytes "
                f"but {self.raw_bytes} bytes follow them"
            )
        return self.error


class VariantCrc:
    """DT_VARIANT: per element [varint64 len][bytes][4-byte masked crc of everything so far]."""

    __slots__ = (
        "_buf",
        "_elem_left",
        "_phase",
        "_remaining",
        "_shift",
        "_value",
        "_nbytes",
        "crc",
        "error",
    )

    def __init__(self, num_elements: int) -> None:
        self.crc = 0
        self.error: str | None = None
        self._remaining = num_elements
        self._phase = 0  # 0 length varint, 1 element bytes, 2 checksum, 3 done/extra, 4 failed
        self._buf = bytearray()
        self._elem_left = 0
        self._shift = self._value = self._nbytes = 0
        if not self._remaining:
            self._phase = 3

    def feed(self, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._phase == 0:
                b = data[i]
                i += 1
                self._value |= (b & 0x7F) << self._shift
                self._nbytes += 1
                if b & 0x80:
                    self._shift += 7
                    if self._nbytes >= 10:
                        self.error, self._phase = "variant length varint longer than 10 bytes", 4
                        return
                    continue
                if self._value >> 64:
                    self.error, self._phase = "variant length does not fit in 64 bits", 4
                    return
                self.crc = _extend(self.crc, struct.pack("<Q", self._value))
                self._elem_left = self._value
                self._shift = self._value = self._nbytes = 0
                self._phase = 1 if self._elem_left else 2
            elif self._phase == 1:
                take = min(self._elem_left, n - i)
                self.crc = _extend(self.crc, data[i : i + take])
                i += take
                self._elem_left -= take
                if not self._elem_left:
                    self._phase = 2
            elif self._phase == 2:
                take = min(4 - len(self._buf), n - i)
                self._buf += data[i : i + take]
                i += take
                if len(self._buf) == 4:
                    stored = struct.unpack("<I", self._buf)[0]
                    if unmask(stored) != self.crc and self.error is None:
                        self.error = "a variant element's checksum does not match"
                    self.crc = _extend(self.crc, bytes(self._buf))
                    self._buf.clear()
                    self._remaining -= 1
                    self._phase = 0 if self._remaining else 3
            elif self._phase == 3:
                self.error, self._phase = "bytes after the last variant element", 4
                return
            else:
                return

    def finish(self) -> str | None:
        if self._phase in (0, 1, 2):
            return "the range ends inside a variant element"
        return self.error


# ---------------------------------------------------------------------------------------------
# streaming one shard


@dataclass
class ShardJob:
    name: str  # file name in the location
    display: str
    entries: Sequence[int]  # rows of the entry table, sorted by (offset, size)
    # the index was read whole: every tensor of the shard is known, so bytes past them are extra
    check_tail: bool = True


@dataclass
class ShardResult:
    tensors: int = 0
    bytes: int = 0


def open_data(location: Location, name: str, chunk_size: int) -> Any:
    path = location.join(name)
    if location.local:  # a regular file only, opened without blocking (a FIFO would hang us)
        fd, _ = open_regular(path, location.display(name))
        return os.fdopen(fd, "rb")
    try:  # object stores: one ranged request per read() of ours, no read-ahead copy
        return location.fs.open(path, "rb", block_size=chunk_size, cache_type="none")
    except TypeError:
        return location.fs.open(path, "rb")


def read_exact(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def readinto_exact(f: Any, view: memoryview) -> int:
    """Fill ``view`` from ``f``; returns the bytes read (less only at end of file)."""
    n = view.nbytes
    got = 0
    readinto = getattr(f, "readinto", None)
    while got < n:
        if readinto is not None:
            k = readinto(view[got:])
        else:
            chunk = f.read(n - got)
            k = len(chunk)
            view[got : got + k] = chunk
        if not k:
            break
        got += k
    return got


class ShardStream:
    """Streams one shard once, feeding each entry's accumulator the bytes of its range.

    The entries are ``rows`` of ``table``, sorted by (offset, size); they are named here by their
    position in ``rows``. The shard is read sequentially into ONE reusable buffer of
    ``chunk_size`` bytes; each entry being read gets ``memoryview`` slices of it (no copies; the
    CRC runs on the buffer in place). Gaps of at least a chunk between entries are skipped with a
    seek. An accumulator (``make_acc(row)``) lives only while its range is being read; what it
    found is left in columns: ``done`` (1: fully fed), ``crc``, and ``layout`` (its rare errors).
    An index of millions of entries costs ~40 bytes an entry here, not an object each.
    """

    def __init__(
        self,
        table: EntryTable,
        rows: Sequence[int],
        make_acc: Callable[[int], Any],
        chunk_size: int,
        on_bytes: Callable[[int], None],
    ) -> None:
        self.rows = rows
        self.make_acc = make_acc
        self.chunk_size = max(int(chunk_size), 1)
        self.on_bytes = on_bytes
        offset, size = table.offset, table.size
        self.starts = array("q", (offset[r] for r in rows))
        self.ends = array("q", (offset[r] + size[r] for r in rows))
        self.by_end = _order_by(self.ends)
        self.cuts = _merge_unique(self.starts, self.ends, self.by_end)
        self.done = bytearray(len(rows))
        self.crc = array("I", bytes(4 * len(rows)))
        self.layout: dict[int, str] = {}

    def _finish(self, p: int, acc: Any) -> None:
        self.done[p] = 1
        self.crc[p] = acc.crc
        msg = acc.finish()
        if msg:
            self.layout[p] = msg

    def run(self, f: Any) -> str | None:
        """Stream ``f``; returns an error text if the file ended early (``done`` says what was read)."""
        cuts, starts, ends, by_end = self.cuts, self.starts, self.ends, self.by_end
        active: dict[int, Any] = {}
        n = len(self.rows)
        nxt = [0, 0]  # the next position by start, by end (cuts are visited in order, each once)

        def at_cut(c: int) -> None:
            i = nxt[1]
            while i < n and ends[p := by_end[i]] == c:
                acc = active.pop(p, None)
                if acc is not None:
                    self._finish(p, acc)
                i += 1
            nxt[1] = i
            p = nxt[0]
            while p < n and starts[p] == c:
                acc = self.make_acc(self.rows[p])
                if ends[p] > c:
                    active[p] = acc
                else:  # nothing to read: done as it starts
                    self._finish(p, acc)
                p += 1
            nxt[0] = p

        return self._read(f, cuts, active, at_cut)

    def _read(
        self, f: Any, cuts: Sequence[int], active: dict[int, Any], at_cut: Callable[[int], None]
    ) -> str | None:
        at_cut(cuts[0])
        if len(cuts) < 2:
            return None
        last = len(cuts) - 1
        end_all = cuts[last]
        with read_buffer(min(self.chunk_size, end_all - cuts[0])) as view:
            pos = cuts[0]
            f.seek(pos)
            k = 0  # current segment: [cuts[k], cuts[k + 1])
            while k < last:
                if not active and cuts[k + 1] - pos >= self.chunk_size:
                    pos = cuts[k + 1]
                    f.seek(pos)
                    k += 1
                    at_cut(cuts[k])
                    continue
                n = min(self.chunk_size, end_all - pos)
                got = readinto_exact(f, view[:n])
                if got != n:
                    return f"file ended at byte {pos + got} while reading (truncated while verifying?)"
                cpos, end = pos, pos + n
                while cpos < end:
                    seg_end = cuts[k + 1]
                    stop = seg_end if seg_end < end else end
                    if active:
                        piece = view[cpos - pos : stop - pos]
                        for a in active.values():
                            a.feed(piece)
                        self.on_bytes(stop - cpos)
                    cpos = stop
                    if stop == seg_end:
                        k += 1
                        at_cut(cuts[k])
                pos = end
        return None


def _order_by(values: Sequence[int]) -> Sequence[int]:
    """Positions ``0..n-1`` sorted (stably) by ``values``: a range when they already are in
    order (TF writes a shard's tensors back to back, so ranges sorted by start are by end too)."""
    n = len(values)
    if all(values[p] <= values[p + 1] for p in range(n - 1)):
        return range(n)
    return array("I", sorted(range(n), key=values.__getitem__))


def _merge_unique(starts: Sequence[int], ends: Sequence[int], by_end: Sequence[int]) -> array[int]:
    """The sorted distinct values of ``starts`` (sorted) and ``ends`` (sorted by ``by_end``)."""
    out = array("q")
    i = j = 0
    n = len(starts)
    while i < n or j < n:
        if j >= n or (i < n and starts[i] <= ends[by_end[j]]):
            v = starts[i]
            i += 1
        else:
            v = ends[by_end[j]]
            j += 1
        if not out or out[-1] != v:
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------
# V2
