"""Copying a promotion's files, each checked (size + CRC32C) against its source.

gs->gs (even across buckets) is a server-side copy (``fs.cp_file``: a GCS rewrite), with no bytes
through the worker, and the CRC32C comes from the server (``info()["crc32c"]``, base64
big-endian, which is also the manifest's format); the data shards are rewritten up to
``COPY_CONCURRENCY`` at a time, and all of them are copied and checked before the sidecars and the
``.index``. Local->local and cross-store copies stream in chunks and compute the CRC32C while
copying, then re-check the written file.
"""

from __future__ import annotations

import base64
import functools
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import google_crc32c

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.formats.naming import classify
from airflow_tf_ckpt.core.promote.manifest import PromotedFile, PromotionError
from airflow_tf_ckpt.core.storage.location import GCS_PROTOCOLS, Location, emulator_endpoint

CHUNK = 8 << 20  # google_crc32c releases the GIL for bytes >= 1 MiB

#: a callback told the number of bytes just copied
BytesFn = Callable[[int], None]


def crc32c_b64(crc: int) -> str:
    """A CRC32C as GCS spells it: base64 of the 4 big-endian bytes."""
    return base64.b64encode((crc & 0xFFFFFFFF).to_bytes(4, "big")).decode("ascii")


def _same_gcs(src: Location, dst: Location) -> bool:
    if src.protocol not in GCS_PROTOCOLS or dst.protocol not in GCS_PROTOCOLS:
        return False
    # two gcsfs instances (e.g. other credentials) of the same service: a rewrite still works
    # when the destination's credentials may read the source
    return src.fs is dst.fs or _gcs_service(src.fs) == _gcs_service(dst.fs)


def _gcs_service(fs: object) -> str:
    """The GCS service a gcsfs filesystem talks to, from the options it was made with (fsspec's
    public ``storage_options``), as gcsfs resolves them: ``endpoint_url``, else the emulator in
    the environment, else Google's."""
    opts = getattr(fs, "storage_options", None)
    return (emulator_endpoint(opts if isinstance(opts, dict) else None) or "default").rstrip("/")


def copy_method(src: Location, dst: Location) -> str:
    if _same_gcs(src, dst):
        return "server-side"
    if src.local and dst.local:
        return "local"
    return "stream"


def _server_crc(loc: Location, name: str) -> tuple[int, str | None]:
    info = loc.fs.info(loc.join(name))
    return int(info.get("size") or 0), info.get("crc32c")


def crc_of(loc: Location, name: str) -> str:
    """CRC32C (GCS base64) of a file: the server's where it keeps one, else by reading it."""
    if loc.protocol in GCS_PROTOCOLS:
        _, server = _server_crc(loc, name)
        if server:
            return server
    crc = 0
    with loc.fs.open(loc.join(name), "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            crc = google_crc32c.extend(crc, bytes(chunk))
    return crc32c_b64(crc)


def _stream_copy(src: Location, sname: str, dst: Location, dname: str, on_bytes: BytesFn) -> tuple[int, str]:
    """Copy in chunks, computing the CRC32C of the bytes as they pass; ``(size, crc)``.

    A local destination is written under a temp name and renamed into place, so a reader that
    has the old file open keeps reading the old bytes. Object stores publish an object only when
    its upload completes, so they are written in place.
    """
    crc = 0
    size = 0
    target = dst.join(dname)
    out = target
    if dst.local:
        os.makedirs(dst.path, exist_ok=True)
        out = dst.join(f".{dname}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with src.fs.open(src.join(sname), "rb") as fin, dst.fs.open(out, "wb") as fout:
            while True:
                chunk = fin.read(CHUNK)
                if not chunk:
                    break
                chunk = bytes(chunk)
                crc = google_crc32c.extend(crc, chunk)
                fout.write(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
            if dst.local:
                fout.flush()
                os.fsync(fout.fileno())
        if out != target:
            os.replace(out, target)
    except BaseException:
        if out != target:
            try:
                os.unlink(out)
            except OSError:
                pass
        raise
    return size, crc32c_b64(crc)


#: a way to move one file: ``(src, source name, dst, DEST name, on_bytes) -> (size, crc32c)``
Transport = Callable[[Location, str, Location, str, BytesFn], tuple[int, str]]


def _server_side_copy(
    src: Location, sname: str, dst: Location, dname: str, on_bytes: BytesFn
) -> tuple[int, str]:
    """A GCS rewrite (no bytes through the worker); size and CRC32C are the server's."""
    size, crc = _server_crc(src, sname)
    fs = src.fs if src.fs is dst.fs else dst.fs
    fs.cp_file(src.join(sname), dst.join(dname))  # GCS rewrite; no glob expansion
    on_bytes(size)
    if not crc:  # a store that keeps no CRC32C: read the source once to learn it
        crc = crc_of(src, sname)
    return size, crc


def _checked_stream_copy(
    src: Location, sname: str, dst: Location, dname: str, on_bytes: BytesFn
) -> tuple[int, str]:
    """:func:`_stream_copy`; a GCS source's own CRC32C must be what was read (corruption in transit)."""
    size, crc = _stream_copy(src, sname, dst, dname, on_bytes)
    if src.protocol in GCS_PROTOCOLS:
        _, server = _server_crc(src, sname)
        if server and server != crc:
            raise PromotionError(f"read {crc} but the server has crc32c {server}", src.display(sname))
    return size, crc


def _copy_one(
    method: str, src: Location, sname: str, dst: Location, dname: str, on_bytes: BytesFn
) -> PromotedFile:
    """Copy one file by ``method``'s transport and check the copy; the returned record holds the
    SOURCE's size and CRC."""
    transport: Transport = _server_side_copy if method == "server-side" else _checked_stream_copy
    try:
        size, crc = transport(src, sname, dst, dname, on_bytes)
    except FileNotFoundError as exc:
        raise StorageError(f"vanished while promoting: {exc}", src.display(sname)) from exc
    except PermissionError as exc:
        raise StorageError(f"permission denied: {exc}", dst.display(dname)) from exc
    _check_copy(dst, dname, size, crc)
    return PromotedFile(name=dname, size=size, crc32c=crc, source=sname)


#: at most this many server-side copies (GCS rewrites) of one promotion's data shards at a time
COPY_CONCURRENCY = 8


def _is_data_shard(name: str) -> bool:
    role = classify(name)
    return role is not None and role.role == "data"


def _run_concurrently(jobs: list[Callable[[], PromotedFile]]) -> list[PromotedFile]:
    """Run the copy ``jobs``, ``COPY_CONCURRENCY`` at a time; returns once every copy has been
    made AND checked (records in ``jobs`` order), or raises the first failure in ``jobs`` order
    (copies not yet started are cancelled)."""
    if len(jobs) <= 1:
        return [job() for job in jobs]
    pool = ThreadPoolExecutor(
        max_workers=min(COPY_CONCURRENCY, len(jobs)), thread_name_prefix="tf-ckpt-promote"
    )
    try:
        futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_copy(dst: Location, dname: str, size: int, crc: str) -> None:
    """The file in DEST has exactly ``size`` bytes with CRC32C ``crc`` (else PromotionError)."""
    where = dst.display(dname)
    got_size = int(dst.fs.info(dst.join(dname)).get("size") or 0)
    if got_size != size:
        raise PromotionError(f"copy has {got_size} bytes, source has {size}", where)
    got_crc = crc_of(dst, dname)
    if got_crc != crc:
        raise PromotionError(f"copy has crc32c {got_crc}, source has {crc}", where)


def copy_files(
    method: str,
    src: Location,
    dst: Location,
    pairs: list[tuple[str, str]],
    on_bytes_of: Callable[[str], BytesFn],
) -> list[PromotedFile]:
    """Copy ``(source name, DEST name)`` pairs, each checked, in ``pairs`` order, except that a
    server-side copy rewrites the data shards first, concurrently, and ALL of them are copied and
    checked before the sidecars and the ``.index`` (one by one after them, in ``pairs`` order)."""

    def job(pair: tuple[str, str]) -> Callable[[], PromotedFile]:
        sname, dname = pair
        return functools.partial(_copy_one, method, src, sname, dst, dname, on_bytes_of(dname))

    shards = [(s, d) for s, d in pairs if method == "server-side" and _is_data_shard(d)]
    copied = _run_concurrently([job(pair) for pair in shards])
    in_shards = set(shards)
    copied += [job(pair)() for pair in pairs if pair not in in_shards]
    return copied
