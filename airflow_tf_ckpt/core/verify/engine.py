"""Verify a checkpoint step WITHOUT TensorFlow: every checksum TF itself would check on restore.

V2 (``PREFIX.index`` + ``PREFIX.data-NNNNN-of-MMMMM``):

1. the index: footer, every block's masked crc32c, entry protobufs, the header (shard count,
   endianness, version);
2. every data shard: present, and long enough for every entry that lives in it;
3. every tensor's bytes: each shard is streamed ONCE, sequentially, in bounded chunks (memory
   stays flat whatever the checkpoint size), and the crc32c of each entry's byte range is
   computed as the stream passes it, then compared with the entry's (masked) ``crc32c``.
   Shards are read concurrently (threads; the CRC releases the GIL on large buffers).

   * DT_STRING: the stored crc is not over the raw bytes. The range holds varint64 lengths, a
     4-byte masked crc of the lengths, then the bytes; the crc is extended with each length as a
     fixed uint32 (uint64 when larger), the 4 checksum bytes, then the bytes (tensor_bundle.cc
     WriteStringTensor / ReadStringTensor). DT_VARIANT: per element varint64 length, bytes,
     4-byte masked checksum; crc over uint64 length, bytes, checksum.
   * A tensor saved as slices has no data of its own: its slice entries are checked instead
     (and each slice it lists must have an entry).

V1 (``NAME`` single table or ``NAME-NNNNN-of-MMMMM``): V1 has no per-tensor checksum; every
table block's crc32c is checked, the ``""`` entry must be a ``SavedTensorSlices`` meta, and every
data entry must parse and belong to a tensor the meta lists.

Nothing here raises for a damaged checkpoint: every finding is a :class:`Problem` naming the file
(and the tensor where one is concerned) in a :class:`VerifyReport`. Only storage errors that are
not about the checkpoint (the directory does not exist) raise :class:`~airflow_tf_ckpt.core.errors.StorageError`.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.message import DecodeError

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.bundle import (
    index_name,
)
from airflow_tf_ckpt.core.storage.location import (
    Location,
)
from airflow_tf_ckpt.core.verify.report import Problem, ProgressFn, VerifyReport
from airflow_tf_ckpt.core.verify.v1 import verify_v1
from airflow_tf_ckpt.core.verify.v2 import verify_v2


def detect_format(location: Location, prefix: str) -> str:
    """``"v2"`` if ``PREFIX.index`` (or a V2 data shard) exists, ``"v1"`` for V1 files."""
    if location.exists(index_name(prefix)):
        return "v2"
    if location.exists(prefix):
        return "v1"
    listing = location.listdir()  # StorageError when the dir does not exist
    if any(n.startswith(prefix + ".data-") for n in listing):
        return "v2"
    if any(re.fullmatch(re.escape(prefix) + r"-\d{5}-of-\d{5}", n) for n in listing):
        return "v1"
    return "v2"


def verify_step(
    location: Location | str,
    prefix: str,
    *,
    progress: ProgressFn | None = None,
    concurrency: int = 4,
    chunk_size: int = 8 << 20,
    format: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> VerifyReport:
    """Verify the checkpoint ``prefix`` (e.g. ``ckpt-500``) in ``location``; never raises for a
    damaged checkpoint (see the module docstring). ``format`` forces ``"v2"`` or ``"v1"``.

    ``progress(bytes_done, bytes_total)`` is called from worker threads as data is checked.
    """
    loc = location if isinstance(location, Location) else Location.of(location, storage_options)
    fmt = format or detect_format(loc, prefix)
    if fmt == "v1":
        report = verify_v1(loc, prefix, progress=progress, chunk_size=chunk_size)
    elif fmt == "v2":
        report = verify_v2(loc, prefix, progress=progress, concurrency=concurrency, chunk_size=chunk_size)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    _check_meta(loc, prefix, report)
    return report


# A MetaGraphDef is parsed whole in memory, by TF as by us; beyond this, it is not read.
MAX_META_BYTES = 256 << 20


def _check_meta(location: Location, prefix: str, report: VerifyReport) -> None:
    """``PREFIX.meta``, where there is one, must parse as the MetaGraphDef TF1's
    ``import_meta_graph`` reads (a truncated or damaged one fails there) and hold a graph."""
    from airflow_tf_ckpt.core.formats.protos import MetaGraphDef

    name = prefix + ".meta"
    display = location.display(name)
    try:
        info = location.fs.info(location.join(name))
    except FileNotFoundError:
        return
    except OSError as exc:
        report.problems.append(Problem(display, None, "io_error", f"cannot stat the .meta file: {exc}"))
        report.ok = False
        return
    if info.get("type") != "file":  # a FIFO or a device would block or never end: never opened
        report.problems.append(Problem(display, None, "bad_meta", f"not a regular file ({info.get('type')})"))
        report.ok = False
        return
    size = int(info.get("size") or 0)
    if size > MAX_META_BYTES:
        report.warnings.append(
            f"{display}: {size} bytes, over the {MAX_META_BYTES >> 20} MiB cap: "
            "not parsed, its graph is not checked"
        )
        return
    try:
        data = location.read_bytes(name)
    except (OSError, StorageError) as exc:
        report.problems.append(Problem(display, None, "io_error", f"cannot read the .meta file: {exc}"))
        report.ok = False
        return
    problem = None
    msg = MetaGraphDef()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        problem = f"not a well-formed MetaGraphDef ({size} bytes; truncated or damaged?): {exc}"
    else:
        if not msg.graph_def.node:
            problem = (
                f"MetaGraphDef holds no graph ({size} bytes): import_meta_graph restores nothing from it"
            )
    if problem:
        report.problems.append(Problem(display, None, "bad_meta", problem))
        report.ok = False
