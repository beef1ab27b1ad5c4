"""V1 verification: every table block's crc32c, the ``SavedTensorSlices`` meta, every entry."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.bundle import (
    HEADER_KEY,
    decode_slice_key,
    key_text,
)
from airflow_tf_ckpt.core.formats.naming import v1_shard_name
from airflow_tf_ckpt.core.formats.protos import (
    SavedTensorSlices,
)
from airflow_tf_ckpt.core.formats.table import Table, TableCorruption
from airflow_tf_ckpt.core.storage.location import (
    Location,
    NotRegularFileError,
)
from airflow_tf_ckpt.core.verify.report import (
    ProblemList,
    ProgressFn,
    Tally,
    VerifyReport,
    finish,
    key_display,
)
from airflow_tf_ckpt.core.verify.streams import open_data, read_exact


def _v1_files(location: Location, prefix: str) -> tuple[list[str], list[str]]:
    """(files present, files missing) of a V1 checkpoint ``prefix``."""
    if location.exists(prefix):
        return [prefix], []
    pat = re.compile(re.escape(prefix) + r"-(\d{5})-of-(\d{5})$")
    found: dict[int, int] = {}
    for name in location.listdir():
        m = pat.match(name)
        if m:
            found[int(m.group(1))] = int(m.group(2))
    if not found:
        return [], [prefix]
    n = max(found.values())
    present = [v1_shard_name(prefix, k, n) for k in range(n) if found.get(k) == n]
    missing = [v1_shard_name(prefix, k, n) for k in range(n) if found.get(k) != n]
    return present, missing


def verify_v1(
    location: Location, prefix: str, *, progress: ProgressFn | None = None, chunk_size: int = 8 << 20
) -> VerifyReport:
    t0 = time.monotonic()
    problems = ProblemList()
    report = VerifyReport(ok=False, prefix=prefix, format="v1", location=location.display())
    if not location.exists():
        raise StorageError("directory does not exist", location.display())
    present, missing = _v1_files(location, prefix)
    for name in missing:
        problems.add(location.display(name), None, "missing_file", "V1 checkpoint file is missing")
    report.files = [location.display(n) for n in present + missing]
    sizes = {}
    for name in present:
        try:
            sizes[name] = int(location.fs.size(location.join(name)))
        except OSError as exc:
            problems.add(location.display(name), None, "io_error", f"cannot stat: {exc}")
    tally = Tally(progress, sum(sizes.values()))
    for name, size in sizes.items():
        tensors = _verify_v1_table(location, name, size, chunk_size, problems)
        report.tensors_checked += tensors
        report.bytes_checked += size
        tally.add(size)
    return finish(report, problems, t0)


def _verify_v1_table(location: Location, name: str, size: int, chunk_size: int, problems: ProblemList) -> int:
    """Every block and entry of one V1 table; the number of data entries checked."""
    display = location.display(name)
    try:
        f = open_data(location, name, chunk_size)
    except NotRegularFileError as exc:
        problems.add(display, None, "io_error", f"cannot open: {exc.message}")
        return 0
    except OSError as exc:
        problems.add(display, None, "io_error", f"cannot open: {exc}")
        return 0
    with f:

        def read_at(offset: int, length: int) -> bytes:
            f.seek(offset)
            return read_exact(f, length)

        try:
            table = Table(read_at, size, display)
        except TableCorruption as exc:
            problems.add_table(exc)
            return 0
        scan = _V1Scan(display, problems)
        bad_blocks = 0
        for entries in _v1_blocks(table, display, problems):
            if entries is None:
                bad_blocks += 1
                continue
            for key, value in entries:
                scan.entry(key, value)
    if not bad_blocks:  # what bad blocks held is unknown: listing "missing" data would be noise
        scan.cross_check()
    return scan.checked


def _v1_blocks(
    table: Table, display: str, problems: ProblemList
) -> Iterator[list[tuple[bytes, bytes]] | None]:
    """Each data block's entries in table order (``None`` for a block that cannot be read, its
    problem recorded); keys must increase across blocks."""
    last: bytes | None = None
    for _, handle in table.index:
        try:
            entries = table.block_entries(handle)
            if entries and last is not None and entries[0][0] <= last:
                raise TableCorruption(
                    f"keys out of order across data blocks at offset {handle.offset}",
                    display,
                    "bad_order",
                    handle.offset,
                )
        except TableCorruption as exc:
            problems.add_table(exc)
            yield None
            continue
        except OSError as exc:
            problems.add(display, None, "io_error", f"error reading block at {handle.offset}: {exc}")
            yield None
            continue
        if entries:
            last = entries[-1][0]
        yield entries


class _V1Scan:
    """What one V1 table's entries say: its meta (the tensors and slices it lists) and the
    slices that have data."""

    def __init__(self, display: str, problems: ProblemList) -> None:
        self.display = display
        self.problems = problems
        self.meta: Any = None
        self.listed: dict[str, set[str]] = {}
        self.seen: list[tuple[str, str]] = []
        self.checked = 0

    def entry(self, key: bytes, value: bytes) -> None:
        msg = SavedTensorSlices()
        try:
            msg.ParseFromString(value)
        except (DecodeError, ValueError) as exc:
            where = key_display(key) if key else None
            self.problems.add(self.display, where, "bad_entry", f"value is not a SavedTensorSlices: {exc}")
            return
        if key == HEADER_KEY:
            self._meta(msg)
            return
        try:
            tname, spec = decode_slice_key(key)
        except ValueError as exc:
            self.problems.add(
                self.display, key_text(key), "bad_entry", f"key is not a tensor slice key: {exc}"
            )
            return
        if not msg.HasField("data") or msg.data.name != tname:
            self.problems.add(
                self.display,
                f"{tname}[{spec}]",
                "bad_entry",
                f"the entry's SavedSlice names {msg.data.name!r}, not {tname!r}",
            )
            return
        self.checked += 1
        self.seen.append((tname, str(spec)))

    def _meta(self, msg: Any) -> None:
        if not msg.HasField("meta"):
            self.problems.add(self.display, None, "bad_header", 'the "" entry has no SavedTensorSliceMeta')
            return
        self.meta = msg.meta
        for t in self.meta.tensor:
            self.listed[t.name] = {_slice_text(s, len(t.shape.dim)) for s in t.slice}

    def cross_check(self) -> None:
        """The meta is there, every slice with data is listed, every listed slice has data."""
        display, problems = self.display, self.problems
        if self.meta is None:
            if not any(p.file == display and p.kind in ("bad_header",) for p in problems.items):
                problems.add(
                    display,
                    None,
                    "bad_header",
                    'no SavedTensorSlices meta under the "" key: not a V1 checkpoint',
                )
            return
        for tname, seen_spec in self.seen:
            if tname not in self.listed:
                problems.add(
                    display, f"{tname}[{seen_spec}]", "bad_entry", "data for a tensor the meta does not list"
                )
        have = set(self.seen)
        for tname, specs in self.listed.items():
            for listed_spec in specs:
                if (tname, listed_spec) not in have:
                    problems.add(
                        display,
                        tname,
                        "missing_slice",
                        f"the meta lists slice {listed_spec} but the table has no data for it",
                    )


def _slice_text(proto: Any, rank: int) -> str:
    from airflow_tf_ckpt.core.formats.bundle import SliceSpec

    return str(SliceSpec.from_proto(proto, rank))


# ---------------------------------------------------------------------------------------------
# entry point
