"""V2 TensorBundle verification: the index, the shard files, every tensor's crc32c."""

from __future__ import annotations

import os
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.bundle import (
    MAX_INDEX_BYTES,
    Bundle,
    BundleEntry,
    EntryTable,
    bundle_from_blocks,
    data_name,
    encode_slice_key,
    index_name,
)
from airflow_tf_ckpt.core.formats.crc import unmask
from airflow_tf_ckpt.core.formats.protos import (
    BUNDLE_BIG_ENDIAN,
    BUNDLE_LITTLE_ENDIAN,
    DT_STRING,
    dtype_name,
)
from airflow_tf_ckpt.core.formats.table import Table, TableCorruption, TableScan
from airflow_tf_ckpt.core.storage.location import (
    FileTooLargeError,
    Location,
    NotRegularFileError,
    open_regular,
)
from airflow_tf_ckpt.core.verify.report import Problem, ProblemList, ProgressFn, Tally, VerifyReport, finish
from airflow_tf_ckpt.core.verify.streams import (
    DT_VARIANT,
    RawCrc,
    ShardJob,
    ShardResult,
    ShardStream,
    StringCrc,
    VariantCrc,
    open_data,
)

MAX_SHARDS = 100_000  # far beyond any real checkpoint; a larger count is a corrupt header
TENSOR_BUNDLE_VERSION = 1  # kTensorBundleVersion: what TF 2.x reads and writes
_LOCAL_READ = 2 << 20

# Fixed element sizes (tensorflow/core/framework/types.proto): a plain entry's size must be
# num_elements * itemsize, or TF refuses it ("Invalid size in bundle entry").
_ITEMSIZE = {
    1: 4,
    2: 8,
    3: 4,
    4: 1,
    5: 2,
    6: 1,
    8: 8,
    9: 8,
    10: 1,
    11: 1,
    12: 1,
    13: 4,
    14: 2,
    15: 2,
    16: 2,
    17: 2,
    18: 16,
    19: 2,
    22: 4,
    23: 8,
    24: 1,
    25: 1,
}


def _entry_sanity(t: EntryTable, i: int, num_shards: int, index_display: str, problems: ProblemList) -> bool:
    """Checks that need no data; False when the entry cannot be streamed at all."""
    shard_id, offset, size = t.shard_id[i], t.offset[i], t.size[i]
    if not t.shape_ok(i):
        problems.add(index_display, t.display_name(i), "bad_entry", "the stored shape is not fully defined")
        return False
    if not 0 <= shard_id < num_shards:
        problems.add(
            index_display,
            t.display_name(i),
            "bad_entry",
            f"shard id {shard_id} is outside 0..{num_shards - 1}",
        )
        return False
    if offset < 0 or size < 0:
        problems.add(
            index_display, t.display_name(i), "bad_entry", f"negative offset/size ({offset}, {size})"
        )
        return False
    itemsize = _ITEMSIZE.get(t.dtype[i])
    if itemsize is not None and size != (need := t.num_elements(i) * itemsize):
        problems.add(
            index_display,
            t.display_name(i),
            "size_mismatch",
            f"{dtype_name(t.dtype[i])}{list(t.shape(i))} needs {need} bytes but the "
            f"entry says {size} (TF refuses to restore it)",
            need,
            size,
        )
    return True


def _acc_maker(t: EntryTable, big_endian: bool) -> Callable[[int], Any]:
    """``make_acc(row)``: the checksum accumulator of a row's dtype."""

    def make_acc(i: int) -> Any:
        dtype = t.dtype[i]
        if dtype == DT_STRING:
            return StringCrc(t.num_elements(i), big_endian)
        if dtype == DT_VARIANT:
            return VariantCrc(t.num_elements(i))
        return RawCrc()

    return make_acc


def verify_v2(
    location: Location,
    prefix: str,
    *,
    progress: ProgressFn | None = None,
    concurrency: int = 4,
    chunk_size: int = 8 << 20,
) -> VerifyReport:
    """Every check of a V2 step: the index (table, header, entries), then every shard streamed
    once with each entry's crc32c (see the package's ``engine`` docstring)."""
    t0 = time.monotonic()
    problems = ProblemList()
    report = VerifyReport(ok=False, prefix=prefix, format="v2", location=location.display())
    idisplay = location.display(index_name(prefix))
    report.files.append(idisplay)
    parsed = _parse_index(location, prefix, idisplay, problems, report)
    if parsed is None:
        return finish(report, problems, t0)
    bundle, scan, index_sound = parsed
    if not _header_ok(bundle.header, idisplay, problems):
        return finish(report, problems, t0)
    num_shards = int(bundle.header.num_shards)
    t = bundle.entries
    per_shard = _entries_by_shard(t, num_shards, bool(scan.bad_blocks), idisplay, problems)
    jobs = [
        ShardJob(
            data_name(prefix, k, num_shards),
            location.display(data_name(prefix, k, num_shards)),
            _sorted_by_range(t, per_shard.get(k, array("I"))),
            check_tail=index_sound,
        )
        for k in range(num_shards)
    ]
    del per_shard
    report.files.extend(j.display for j in jobs)
    big_endian = bundle.header.endianness == BUNDLE_BIG_ENDIAN
    _run_shards(location, t, jobs, big_endian, chunk_size, concurrency, problems, progress, report)
    return finish(report, problems, t0)


def _parse_index(
    location: Location, prefix: str, idisplay: str, problems: ProblemList, report: VerifyReport
) -> tuple[Bundle, TableScan, bool] | None:
    """The index read, scanned block by block into the entry table (the raw bytes are dropped
    once parsed), and whether it was read whole and sound; ``None`` when there is no bundle."""
    data = _read_index(location, prefix, idisplay, problems)
    if data is None:
        return None
    try:
        table = Table.from_bytes(data, idisplay)
    except TableCorruption as exc:
        problems.add_table(exc)
        return None
    report.bytes_checked += len(data)
    scan = TableScan(blocks=len(table.index))
    bundle, table_problems = bundle_from_blocks(table.scan_blocks(scan), scan, idisplay)
    del table, data
    for tp in table_problems:
        problems.add_table(tp)
    if bundle is None:
        return None
    return bundle, scan, scan.complete and not scan.bad_blocks and not table_problems


def _read_index(location: Location, prefix: str, idisplay: str, problems: ProblemList) -> bytes | None:
    """The index's bytes (bounded), or ``None`` with the problem recorded."""
    try:
        return location.read_bytes(index_name(prefix), cap=MAX_INDEX_BYTES, what="a TensorBundle index")
    except (NotRegularFileError, FileTooLargeError) as exc:
        problems.add(idisplay, None, "io_error", f"cannot read the index: {exc.message}")
    except StorageError as exc:
        if not location.exists():
            raise
        problems.add(idisplay, None, "missing_file", f"cannot read the index: {exc}")
    except OSError as exc:
        problems.add(idisplay, None, "io_error", f"cannot read the index: {exc}")
    return None


def _header_ok(header: Any, idisplay: str, problems: ProblemList) -> bool:
    """Record what is wrong with the bundle header; False when the shard count is unusable."""
    num_shards = int(header.num_shards)
    if not 1 <= num_shards <= MAX_SHARDS:
        problems.add(
            idisplay,
            None,
            "bad_header",
            f"header num_shards {num_shards} is not in 1..{MAX_SHARDS}",
            "1..100000",
            num_shards,
        )
        return False
    if header.endianness not in (BUNDLE_LITTLE_ENDIAN, BUNDLE_BIG_ENDIAN):
        problems.add(
            idisplay,
            None,
            "bad_header",
            f"header endianness {header.endianness} is neither LITTLE (0) nor BIG (1)",
        )
    version = header.version
    if version.min_consumer > TENSOR_BUNDLE_VERSION or TENSOR_BUNDLE_VERSION in version.bad_consumers:
        problems.add(
            idisplay,
            None,
            "unsupported_version",
            f"bundle version (producer {version.producer}, min_consumer {version.min_consumer}, "
            f"bad_consumers {list(version.bad_consumers)}) cannot be read by a version-"
            f"{TENSOR_BUNDLE_VERSION} reader",
        )
    return True


def _entries_by_shard(
    t: EntryTable, num_shards: int, bad_blocks: bool, idisplay: str, problems: ProblemList
) -> dict[int, array[int]]:
    """The rows that own data, by shard, once each is sane; a sliced entry's slices must
    have entries (and its slices are checked as entries of their own)."""
    per_shard: dict[int, array[int]] = {}
    for i in range(len(t)):
        if t.is_sliced(i):
            _check_sliced(t[i], t, bad_blocks, idisplay, problems)
        elif _entry_sanity(t, i, num_shards, idisplay, problems):
            rows = per_shard.get(t.shard_id[i])
            if rows is None:
                rows = per_shard[t.shard_id[i]] = array("I")
            rows.append(i)
    return per_shard


def _check_sliced(
    e: BundleEntry, t: EntryTable, bad_blocks: bool, idisplay: str, problems: ProblemList
) -> None:
    if e.dtype == DT_STRING:
        # TF reads slices only of fixed-size dtypes (tensor_bundle.cc GetSliceValue): both
        # get_tensor and a restore fail with "Dtype string not supported" (checked: TF 2.21)
        problems.add(
            idisplay,
            e.name,
            "unrestorable",
            f"string tensor saved in {len(e.proto.slices)} slice(s) (MaxShardSizePolicy "
            'split it): TensorFlow cannot restore it ("Dtype string not supported")',
        )
    # with an unreadable index block, absent slice entries are a consequence, not news
    for spec in e.slices if not bad_blocks else ():
        if t.find(encode_slice_key(e.name, spec)) is None:
            problems.add(
                idisplay,
                f"{e.name}[{spec}]",
                "missing_slice",
                f"{e.name} lists slice {spec} but the index has no entry for it",
            )


def _sorted_by_range(t: EntryTable, rows: array[int]) -> array[int]:
    """``rows`` sorted (stably) by (offset, size): as they are when TF wrote the shard in key
    order, so that case costs no sort."""
    offset, size = t.offset, t.size
    if all((offset[a], size[a]) <= (offset[b], size[b]) for a, b in zip(rows, rows[1:], strict=False)):
        return rows
    return array("I", sorted(rows, key=lambda i: (offset[i], size[i])))


def _run_shards(
    location: Location,
    t: EntryTable,
    jobs: list[ShardJob],
    big_endian: bool,
    chunk_size: int,
    concurrency: int,
    problems: ProblemList,
    progress: ProgressFn | None,
    report: VerifyReport,
) -> None:
    """Stream every shard once (``concurrency`` threads), adding what was checked to ``report``."""
    tally = Tally(progress, sum(_union_length(t, j.entries) for j in jobs))
    shard = _ShardCheck(location, t, big_endian, chunk_size, problems, tally)
    workers = max(1, min(concurrency, len(jobs)))
    if workers == 1:
        results = [shard.verify(j) for j in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tf-ckpt-verify") as pool:
            results = list(pool.map(shard.verify, jobs))
    for r in results:
        report.tensors_checked += r.tensors
        report.bytes_checked += r.bytes


def _union_length(t: EntryTable, rows: Sequence[int]) -> int:
    """Bytes covered by the ranges of ``rows`` (sorted by offset), overlaps counted once."""
    offset, size = t.offset, t.size
    total, cur_end = 0, -1
    for i in rows:
        start, end = offset[i], offset[i] + size[i]
        if end <= cur_end:
            continue
        total += end - max(start, cur_end)
        cur_end = end
    return total


@dataclass
class _ShardCheck:
    """Verifies one data shard at a time (from any thread): its size, then its tensors' bytes."""

    location: Location
    t: EntryTable
    big_endian: bool
    chunk_size: int
    problems: ProblemList
    tally: Tally

    def verify(self, job: ShardJob) -> ShardResult:
        size = self._size(job)
        if size is None:
            return ShardResult()
        if job.check_tail:
            _check_tail(job.display, self.t, job.entries, size, self.problems)
        rows = self._within(job, size)
        if not rows:
            return ShardResult()
        return self._stream(job, rows)

    def _size(self, job: ShardJob) -> int | None:
        """The shard's size, or ``None`` with the problem recorded (and its bytes tallied)."""
        path = self.location.join(job.name)
        try:
            if self.location.local:  # a FIFO or a device reads as size 0: say what it is instead
                os.close(open_regular(path, job.display)[0])
            return int(self.location.fs.size(path))
        except NotRegularFileError as exc:
            self.problems.add(job.display, None, "io_error", f"cannot read the data shard: {exc.message}")
        except FileNotFoundError:
            names = [self.t.display_name(i) for i in job.entries[:11]]
            n = len(job.entries)
            shown = ", ".join(names[:10]) + (f", ... ({n} in all)" if n > 10 else "")
            self.problems.add(
                job.display,
                None,
                "missing_file",
                f"data shard is missing; tensors stored in it: {shown or 'none'}",
            )
        except OSError as exc:
            self.problems.add(job.display, None, "io_error", f"cannot stat the data shard: {exc}")
            return None
        self.tally.add(_union_length(self.t, job.entries))
        return None

    def _within(self, job: ShardJob, size: int) -> array[int]:
        """The rows whose bytes are inside the shard; the others are reported truncated."""
        t, rows = self.t, array("I")
        for i in job.entries:
            offset, end = t.offset[i], t.offset[i] + t.size[i]
            if end > size:
                self.problems.add(
                    job.display,
                    t.display_name(i),
                    "truncated",
                    f"bytes {offset}..{end} are past the end of the shard ({size} bytes): truncated",
                    f">= {end} bytes",
                    f"{size} bytes",
                )
            else:
                rows.append(i)
        skipped = _union_length(t, job.entries) - _union_length(t, rows)
        if skipped:
            self.tally.add(skipped)
        return rows

    def _stream(self, job: ShardJob, rows: array[int]) -> ShardResult:
        """Stream the shard once over ``rows``, then compare every checksum with the index."""
        res = ShardResult()
        counted = [0]

        def on_bytes(n: int) -> None:
            counted[0] += n
            self.tally.add(n)

        # Local files: reads of at most _LOCAL_READ so the CRC runs while the bytes are still in
        # the CPU cache (measured: 2 MiB reads verify ~1.6x faster than 16 MiB ones on a warm page
        # cache). Object stores: chunk_size per request (fewer, larger requests).
        chunk = min(self.chunk_size, _LOCAL_READ) if self.location.local else self.chunk_size
        stream = ShardStream(self.t, rows, _acc_maker(self.t, self.big_endian), chunk, on_bytes)
        problems = self.problems
        try:
            with open_data(self.location, job.name, self.chunk_size) as f:
                err = stream.run(f)
        except FileNotFoundError:
            problems.add(job.display, None, "missing_file", "data shard disappeared while verifying")
            return res
        except NotRegularFileError as exc:
            problems.add(job.display, None, "io_error", f"cannot read the data shard: {exc.message}")
            return res
        except OSError as exc:
            problems.add(job.display, None, "io_error", f"error reading the data shard: {exc}")
            return res
        res.bytes = counted[0]
        if err:
            problems.add(job.display, None, "truncated", err)
        res.tensors = self._compare(job, stream)
        return res

    def _compare(self, job: ShardJob, stream: ShardStream) -> int:
        """Record every row the stream did not finish, or whose layout or crc32c is wrong;
        returns how many it finished."""
        t, problems, checked = self.t, self.problems, 0
        for p, i in enumerate(stream.rows):
            if not stream.done[p]:
                problems.add(
                    job.display, t.display_name(i), "truncated", "the shard ended before this tensor's bytes"
                )
                continue
            checked += 1
            layout = stream.layout.get(p)
            if layout:
                problems.add(job.display, t.display_name(i), "bad_layout", layout)
            stored, crc = unmask(t.crc32c_masked[i]), stream.crc[p]
            if crc != stored:
                offset, size = t.offset[i], t.size[i]
                problems.add(
                    job.display,
                    t.display_name(i),
                    "checksum_mismatch",
                    f"crc32c of bytes {offset}..{offset + size} ({dtype_name(t.dtype[i])}"
                    f"{list(t.shape(i))}) does not match the index",
                    f"0x{stored:08x}",
                    f"0x{crc:08x}",
                )
        return checked


def _data_end(t: EntryTable, rows: Sequence[int]) -> int:
    offset, size = t.offset, t.size
    return max((offset[i] + size[i] for i in rows), default=0)


def _check_tail(display: str, t: EntryTable, rows: Sequence[int], size: int, problems: ProblemList) -> None:
    """Bytes past the last tensor of a shard are a problem: TF writes the tensors back to back
    and nothing after the last one. The size alone says so (nothing past the tensors is read: a
    sparse 10 TiB shard costs no more than its tensors)."""
    data_end = _data_end(t, rows)
    if size > data_end:
        problems.add(
            display,
            None,
            "trailing_bytes",
            f"{size - data_end} byte(s) after the end of the last tensor (byte {data_end}); "
            "TensorFlow writes none: bytes were appended or the file was extended",
            f"{data_end} bytes",
            f"{size} bytes",
        )


def shard_size_problems(location: Location, prefix: str) -> list[Problem]:
    """What the sizes of a V2 step's data shards show against its index, reading no data byte:
    trailing bytes, or a shard shorter than its tensors. Cheap enough to run before shipping a
    step (promotion). Raises TableError when the index itself does not parse."""
    from airflow_tf_ckpt.core.formats.bundle import read_bundle

    bundle = read_bundle(location, prefix)
    n = bundle.num_shards
    if not 1 <= n <= MAX_SHARDS:
        return [
            Problem(
                location.display(index_name(prefix)),
                None,
                "bad_header",
                f"header num_shards {n} is not in 1..{MAX_SHARDS}",
            )
        ]
    t = bundle.entries
    per_shard: dict[int, array[int]] = defaultdict(lambda: array("I"))
    for i in range(len(t)):
        if not t.is_sliced(i):
            per_shard[t.shard_id[i]].append(i)
    problems = ProblemList()
    for k in range(n):
        name = data_name(prefix, k, n)
        try:
            size = int(location.fs.size(location.join(name)))
        except OSError as exc:
            problems.add(location.display(name), None, "missing_file", f"cannot stat the data shard: {exc}")
            continue
        rows = per_shard.get(k, array("I"))
        _check_tail(location.display(name), t, rows, size, problems)
        end = _data_end(t, rows)
        if end > size:
            problems.add(
                location.display(name),
                None,
                "truncated",
                f"the tensors end at byte {end}, past the end of the shard ({size} bytes)",
            )
    return problems.finish()
