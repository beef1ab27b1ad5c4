"""Readers of one checkpoint dir: its state file and name-prefix listings, blocking or async.

The :class:`~airflow_tf_ckpt.core.watch.poller.Poller` polls through them. Blocking
(:class:`CheckpointDirReader`, for a sensor's poke) or async (:class:`AsyncCheckpointDir`, for
triggers): gcsfs's native async API on the running loop for gs://, a worker thread for local disk and
any other fsspec scheme. Reads are bounded as the core's are (``cap`` bytes, regular files only),
and a dir that does not exist yet lists as empty (a job that has not saved yet), not as an error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import posixpath
from typing import Any

from airflow_tf_ckpt.core.storage.location import (
    MAX_READ_BYTES,
    FileTooLargeError,
    Location,
    range_not_satisfiable,
    read_local_bounded,
    read_ranged,
)
from airflow_tf_ckpt.hooks.credentials import is_gcs_url

Entries = list[dict[str, Any]]
# Refresh an OAuth token this many seconds before it expires (gcsfs refreshes inline at 300).
REFRESH_MARGIN = 420


class CheckpointDirReader:
    """Blocking reads of one checkpoint dir (for sensors in poke/reschedule mode)."""

    def __init__(self, location: Location) -> None:
        self.location = location

    @property
    def url(self) -> str:
        return self.location.url

    def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        """The whole file ``name`` of the dir, or ``None`` when it does not exist.

        More than ``cap`` bytes raises FileTooLargeError (after reading at most ``cap`` + 1), and
        a local file that is not a regular file (a FIFO, a device) raises NotRegularFileError,
        without blocking.
        """
        path = self.location.join(name)
        try:
            if self.location.local:
                return read_local_bounded(path, self.location.display(name), cap, what)
            return read_ranged(self.location.fs, path, self.location.display(name), cap, what)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list(self, prefix: str = "") -> Entries:
        """fsspec ``ls(detail=True)`` entries of the dir's objects whose basename starts with ``prefix``."""
        fs, path = self.location.fs, self.location.path
        if self.location.local:
            return scan_local(path, prefix)
        try:
            if prefix and is_gcs_url(self.location.url):
                entries = fs.ls(path, detail=True, prefix=prefix, refresh=True)
            else:
                entries = fs.ls(path, detail=True, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [e for e in entries if posixpath.basename(e["name"].rstrip("/")).startswith(prefix)]


class AsyncCheckpointDir:
    """Async reads of one checkpoint dir: :meth:`read` and :meth:`list` as the blocking reader's.

    ``location`` is the sync core :class:`Location` of the same dir (for ``display`` and the core's
    path resolution; do not do I/O with it on the event loop). This base class runs the blocking
    reader in a worker thread: what local disk and fsspec schemes without an async API use.
    """

    def __init__(self, location: Location) -> None:
        self.location = location
        self._reader = CheckpointDirReader(location)

    @property
    def url(self) -> str:
        return self.location.url

    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        """See :meth:`CheckpointDirReader.read`; never blocks the loop."""
        return await asyncio.to_thread(self._reader.read, name, cap, what)

    async def list(self, prefix: str = "") -> Entries:
        """See :meth:`CheckpointDirReader.list`; never blocks the loop."""
        return await asyncio.to_thread(self._reader.list, prefix)


def scan_local(path: str, prefix: str = "") -> Entries:
    """``LocalFileSystem.ls(detail=True)``-shaped entries of ``path`` whose name starts with ``prefix``.

    ``os.scandir`` with the name filter applied before any ``stat``: a prefix listing of a dir of
    10k files stats only the matching ones, and costs far less Python time (GIL) than fsspec's ls.
    """
    out: Entries = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith(prefix):
                    info = _entry_info(path, entry)
                    if info is not None:
                        out.append(info)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return out


def _entry_info(path: str, entry: os.DirEntry[str]) -> dict[str, Any] | None:
    try:
        st = entry.stat()
        is_dir = entry.is_dir()
    except FileNotFoundError:  # deleted while we listed
        return None
    return {
        "name": posixpath.join(path, entry.name),
        "size": st.st_size,
        "type": "directory" if is_dir else "file",
        "mtime": st.st_mtime,
        "islink": entry.is_symlink(),
    }


class GcsAsyncDir(AsyncCheckpointDir):
    """gs:// through an async gcsfs instance bound to the running loop (see ``hooks.sessions``)."""

    def __init__(self, location: Location, afs: Any) -> None:
        super().__init__(location)
        self.afs = afs

    async def _fresh_credentials(self) -> None:
        """Refresh an expiring OAuth token in a thread, before gcsfs would do it on the loop.

        gcsfs refreshes credentials with a blocking ``requests`` call inside its async request
        path, and retries a failed refresh for half a minute. Refreshing here first, with a wider
        margin than gcsfs's own, keeps that off the event loop and lets a broken key fail at once.
        Whether a refresh is due is read from google-auth's public ``valid`` and ``expiry`` of the
        credentials gcsfs holds (``GCSFileSystem.credentials.credentials``), not from gcsfs's
        private ``_credentials_valid``; the refresh itself is gcsfs's public ``maybe_refresh``.
        """
        holder = getattr(self.afs, "credentials", None)
        creds = getattr(holder, "credentials", None)
        if holder is None or creds is None:  # anonymous
            return
        if token_fresh(creds, REFRESH_MARGIN):
            return
        await asyncio.to_thread(holder.maybe_refresh, REFRESH_MARGIN)

    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        await self._fresh_credentials()
        path = self.location.join(name)
        try:  # one ranged read of cap + 1 bytes: a huge object costs no more than the cap
            data = await self.afs._cat_file(path, start=0, end=cap + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if range_not_satisfiable(exc, path):  # a range past an empty object
                return b""
            raise
        if len(data) > cap:
            raise FileTooLargeError(
                f"is more than {cap} bytes, too large for {what}", self.location.display(name)
            )
        return data

    async def list(self, prefix: str = "") -> Entries:
        await self._fresh_credentials()
        try:
            # a prefixed listing is never cached by gcsfs; refresh the un-prefixed one
            entries = await self.afs._ls(self.location.path, detail=True, prefix=prefix, refresh=True)
        except FileNotFoundError:
            return []
        return list(entries)


def token_fresh(creds: Any, margin: float) -> bool:
    """google-auth credentials that are valid and will stay so for ``margin`` seconds.

    ``expiry`` is a naive UTC datetime in google-auth (``None``: the token does not expire).
    """
    if not getattr(creds, "valid", False):
        return False
    expiry = getattr(creds, "expiry", None)
    if expiry is None:
        return True
    now = dt.datetime.now(dt.timezone.utc)
    return (expiry.replace(tzinfo=dt.timezone.utc) - now).total_seconds() > margin
