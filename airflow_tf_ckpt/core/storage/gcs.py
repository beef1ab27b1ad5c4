"""GCS JSON API calls that gcsfs does not offer in a form this package can use.

* :func:`batch_delete`: object DELETEs sent as JSON API batch requests (up to 100 per request,
  several requests in flight). gcsfs batches only against Google and falls back to single DELETEs,
  5 at a time, against any other endpoint, because its batch parts end without the blank line that
  closes an HTTP request's headers: Google tolerates that, fake-gcs-server (Go's
  ``http.ReadRequest``) does not. The parts built here follow Google's documented layout
  (https://cloud.google.com/storage/docs/batch), which both accept, so production and the emulator
  run the same code.
* :func:`list_matching`: one object listing filtered server-side with ``matchGlob`` (gcsfs has no
  parameter for it). GC uses it to re-list only the small files that can make a plan unsafe
  (leases, quarantine markers, promotions, GC intents, the state file) instead of every shard of
  every step again.
* :func:`read_with_generation` / :func:`write_if_generation`: a compare-and-swap on one object
  (``ifGenerationMatch``), so that read-modify-write records (``PROMOTIONS.json``) written by two
  workers at once lose nothing.

All are called with a gcsfs ``GCSFileSystem``; nothing here imports gcsfs at module import.
Requests go through gcsfs's own request call, so its credentials, retries and error mapping
apply: the public ``fs.call`` from sync code and its coroutine ``fs._call`` from async code
(fsspec's convention: an async filesystem's coroutines are the public methods' names with a
leading underscore). The batch and upload endpoints are derived from gcsfs's public ``fs.base``.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import random
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from airflow_tf_ckpt.core.storage.location import (
    FileInfo,
    Location,
    _too_large,
    mtime_of,
    range_not_satisfiable,
)

#: GCS's maximum number of calls in one batch request.
BATCH_LIMIT = 100
#: Batch requests in flight at once.
BATCH_CONCURRENCY = 8
#: Tries per object before a retryable status (429, 5xx, 408) or a failed request is final.
MAX_TRIES = 5

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")
_CONTENT_ID = re.compile(rb"(?im)^content-id:\s*<response-([^>]+)>")
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]{},])")


def is_gcs(fs: Any) -> bool:
    """True for gcsfs filesystems (Google or an emulator)."""
    try:
        from gcsfs.core import GCSFileSystem
    except ImportError:
        return False
    return isinstance(fs, GCSFileSystem)


def _q(s: str) -> str:
    return quote(s, safe="")


def _service_root(fs: Any) -> str:
    """The service's root URL (Google, its mTLS endpoint or an emulator), from gcsfs's public
    ``base`` (``{root}/storage/v1/``): the batch and upload endpoints hang from it."""
    return str(fs.base).rstrip("/").removesuffix("/storage/v1")


def _body(boundary: str, calls: list[tuple[str, str]]) -> bytes:
    """A multipart/mixed body; each part an HTTP request ending with its blank line."""
    out = []
    for cid, path in calls:
        out.append(
            f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{cid}>\r\n\r\nDELETE {path} HTTP/1.1\r\nContent-Length: 0\r\n\r\n\r\n"
        )
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode()


def _parse(content_type: str, content: bytes) -> dict[str, tuple[int, str]]:
    """Content-ID -> (status, body excerpt) of a batch response."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        raise OSError(f"batch response without a multipart boundary (Content-Type {content_type!r})")
    out: dict[str, tuple[int, str]] = {}
    for part in content.split(b"--" + m.group(1).encode())[1:]:
        cid = _CONTENT_ID.search(part)
        status = _STATUS.search(part)
        if cid and status:
            body = part[status.end() :].strip().decode("utf-8", "replace")
            out[cid.group(1).decode()] = (int(status.group(1)), body[-300:])
    return out


async def _backoff(attempt: int) -> None:
    await asyncio.sleep(min(0.1 * 2**attempt + random.random() * 0.1, 5.0))


async def _one_batch(fs: Any, paths: list[str]) -> list[BaseException | None]:
    """Delete ``paths`` (at most BATCH_LIMIT) in one batch request, retrying what may succeed later.

    Per path: ``None`` (deleted), ``FileNotFoundError`` (404) or an ``OSError`` naming the status.
    """
    result: dict[int, BaseException | None] = {}
    pending = list(range(len(paths)))
    for attempt in range(1, MAX_TRIES + 1):
        tag = uuid.uuid4().hex
        calls = []
        for i in pending:
            bucket, key, generation = fs.split_path(paths[i])
            query = f"?generation={generation}" if generation else ""
            calls.append((f"{tag}+{i}", f"/storage/v1/b/{_q(bucket)}/o/{_q(key)}{query}"))
        boundary = f"tf-ckpt-{tag}"
        try:
            headers, content = await fs._call(
                "POST",
                f"{_service_root(fs)}/batch/storage/v1",
                data=_body(boundary, calls),
                headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'},
            )
            parts = _parse(headers.get("Content-Type", ""), content)
        except Exception as exc:  # noqa: BLE001 - the whole request failed (gcsfs retried 5xx already)
            if attempt == MAX_TRIES:
                for i in pending:
                    result[i] = OSError(f"batch delete failed after {MAX_TRIES} tries: {exc}")
                break
            await _backoff(attempt)
            continue
        retry = []
        for i in pending:
            status, body = parts.get(f"{tag}+{i}", (0, "no answer for this call in the batch response"))
            if status in (200, 204):
                result[i] = None
            elif status == 404:
                result[i] = FileNotFoundError(paths[i])
            elif (status in _RETRY_STATUS or status == 0) and attempt < MAX_TRIES:
                retry.append(i)
            else:
                result[i] = OSError(f"DELETE answered {status or 'nothing'}: {body}")
        pending = retry
        if not pending:
            break
        await _backoff(attempt)
    return [result[i] for i in range(len(paths))]


def batch_delete(fs: Any, paths: list[str]) -> list[BaseException | None]:
    """Delete objects with batch requests; per path, in order: ``None`` (deleted),
    ``FileNotFoundError`` (already gone) or an ``OSError`` (failed after retries)."""
    from fsspec.asyn import sync

    chunks = [paths[i : i + BATCH_LIMIT] for i in range(0, len(paths), BATCH_LIMIT)]

    async def run() -> list[Any]:
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(chunk: list[str]) -> list[BaseException | None]:
            async with gate:
                return await _one_batch(fs, chunk)

        return await asyncio.gather(*map(one, chunks), return_exceptions=True)

    out: list[BaseException | None] = []
    for chunk, res in zip(chunks, sync(fs.loop, run), strict=True):
        if isinstance(res, BaseException):
            out += [res] * len(chunk)
        else:
            out += res
    if out:
        fs.invalidate_cache(posixpath.dirname(paths[0]))
    return out


def glob_escape(name: str) -> str:
    """``name`` as a literal in a GCS ``matchGlob`` pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", name)


def list_matching(loc: Location, patterns: Iterable[str], keep: Callable[[str], bool]) -> dict[str, FileInfo]:
    """The objects directly in ``loc`` whose names pass ``keep``, in one paginated listing that the
    server pre-filters with ``patterns`` (``matchGlob`` syntax, relative to the dir; they must
    match at least what ``keep`` accepts). A server that ignores ``matchGlob`` (the
    fake-gcs-server build the tests run does) answers with every object; ``keep`` still filters,
    it is just not cheaper there. Pages of 5,000 are asked for; Google caps them at 1,000."""
    from fsspec.asyn import sync

    fs = loc.fs
    bucket, key, _ = fs.split_path(loc.path)
    prefix = f"{key.rstrip('/')}/" if key else ""
    glob = glob_escape(prefix) + "{" + ",".join(patterns) + "}"

    async def run() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = await fs._call(
                "GET",
                "b/{}/o",
                bucket,
                json_out=True,
                prefix=prefix or None,
                delimiter="/",
                matchGlob=glob,
                maxResults=5000,
                pageToken=token,
            )
            items += page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return items

    out: dict[str, FileInfo] = {}
    for item in sync(fs.loop, run):
        name = item["name"][len(prefix) :]
        if not name or "/" in name or not keep(name):
            continue
        out[name] = FileInfo(
            name=name, path=f"{bucket}/{item['name']}", size=int(item.get("size") or 0), mtime=mtime_of(item)
        )
    return out


def read_with_generation(fs: Any, path: str, cap: int, what: str) -> tuple[bytes | None, int]:
    """An object's content and generation, bounded as the local reads are: its size is asked
    first and past ``cap`` it is refused (:class:`FileTooLargeError`) before any byte is
    downloaded; then that generation's bytes, at most ``cap`` + 1. ``(None, 0)`` when it does
    not exist (``ifGenerationMatch=0`` then means "create only")."""
    bucket, key, _ = fs.split_path(path)
    for _attempt in range(3):
        try:
            meta = _get_metadata(fs, bucket, key)
        except FileNotFoundError:
            return None, 0
        gen, size = int(meta["generation"]), int(meta.get("size") or 0)
        if size > cap:
            raise _too_large(size, cap, what, fs.unstrip_protocol(path))
        if size == 0:
            return b"", gen
        try:
            content = _get_media(fs, bucket, key, cap, generation=str(gen))
        except FileNotFoundError:
            continue  # replaced since the metadata (that generation is gone): ask again
        if len(content) > cap:
            raise _too_large(len(content), cap, what, fs.unstrip_protocol(path))
        return content, gen
    return None, 0


def _get_media(fs: Any, bucket: str, key: str, cap: int, **params: Any) -> bytes:
    """The first ``cap`` + 1 bytes at most of an object (one ranged GET); an empty one (a range
    on it answers 416) is ``b""``."""

    try:
        _headers, content = fs.call(
            "GET",
            "b/{}/o/{}",
            bucket,
            key,
            alt="media",
            headers={"Range": f"bytes=0-{cap}"},
            **params,
        )
    except OSError as exc:
        if range_not_satisfiable(exc, f"{bucket}/{key}"):
            return b""
        raise
    return bytes(content)


def _get_metadata(fs: Any, bucket: str, key: str) -> dict[str, Any]:
    """The object's resource (``generation``, ``size``...), fresh from the server (no cache)."""

    return fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)


def write_if_generation(
    fs: Any, path: str, data: bytes, generation: int, content_type: str = "application/json"
) -> bool:
    """Upload ``data`` to ``path`` only while the object is still at ``generation`` (0: absent),
    in one request (``ifGenerationMatch``): GCS's compare-and-swap. False when someone else wrote
    it first (412); the caller re-reads and tries again."""
    return upload_if_generation(fs, path, data, generation, content_type) is not None


def upload_if_generation(
    fs: Any, path: str, data: bytes, generation: int, content_type: str = "application/json"
) -> int | None:
    """:func:`write_if_generation` that returns the new object's generation (``None``: someone
    else wrote first; 0 where the server's answer names none)."""

    bucket, key, _ = fs.split_path(path)
    # a multipart upload, as gcsfs's own create-only write: fake-gcs-server checks preconditions
    # there and ignores them on uploadType=media
    boundary = f"tf-ckpt-{uuid.uuid4().hex}"
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': key})}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    try:
        _, content = fs.call(
            "POST",
            f"{_service_root(fs)}/upload/storage/v1/b/{_q(bucket)}/o",
            uploadType="multipart",
            ifGenerationMatch=str(generation),
            data=body,
            headers={"Content-Type": f'multipart/related; boundary="{boundary}"'},
        )
    except FileExistsError:  # gcsfs's spelling of 412 Precondition Failed
        return None
    fs.invalidate_cache(path)
    try:
        return int(json.loads(content)["generation"])
    except (ValueError, KeyError, TypeError):
        return 0


def delete_if_generation(fs: Any, path: str, generation: int) -> bool:
    """Delete ``path`` only while it is still at ``generation``. False when it changed (412) or
    is gone already."""

    bucket, key, _ = fs.split_path(path)
    try:
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(generation))
    except (FileExistsError, FileNotFoundError):
        return False
    fs.invalidate_cache(path)
    return True
