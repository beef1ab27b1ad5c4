"""``CheckpointStorageHook``: a checkpoint dir URL plus an optional Airflow connection -> a core Location.

Local paths and ``file://`` need no connection. ``gs://`` authenticates from the connection's extras
(see :mod:`airflow_tf_ckpt.hooks.credentials`), WITHOUT needing apache-airflow-providers-google. With
no connection (or one without a key) gs:// uses Application Default Credentials, except where a GCS
emulator is configured (``STORAGE_EMULATOR_HOST`` or an ``endpoint_url`` extra), where it goes
anonymous. The core's ``filesystem_for`` handles the gcsfs 2026 emulator trap.

Credentials never leave the hook in clear text: its ``repr`` names only the connection id; every
string of a keyfile is registered with Airflow's secrets masker; and :meth:`CheckpointStorageHook.redact`
scrubs them from any text (the triggers and the sensor run every storage error through it before
logging it or putting it in an event).

Triggers use :meth:`CheckpointStorageHook.aopen`, which yields an
:class:`~airflow_tf_ckpt.hooks.readers.AsyncCheckpointDir`: gcsfs's native async API on the running
loop (one shared aiohttp session per loop and credentials, :mod:`airflow_tf_ckpt.hooks.sessions`) for
gs://, a worker thread for local disk. It never blocks the event loop, except that gcsfs refreshes an
expired OAuth token with a synchronous request about once an hour.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from airflow.sdk import BaseHook

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.storage.location import Location, emulator_endpoint, filesystem_for
from airflow_tf_ckpt.hooks.credentials import GcsAuth, cached_auth, is_gcs_url, peek_auth, url_protocol
from airflow_tf_ckpt.hooks.readers import AsyncCheckpointDir, CheckpointDirReader, GcsAsyncDir
from airflow_tf_ckpt.hooks.sessions import SHARED, SYNC_FS, SharedAsyncFs

REDACTED = "***"


class CheckpointStorageHook(BaseHook):
    """Resolve checkpoint dir URLs to core :class:`Location` objects (sync) or async dirs (triggers).

    :param conn_id: an Airflow connection (type ``google_cloud_platform`` or ``tf_ckpt_storage``)
        for gs:// credentials; ``None`` means application default credentials (or anonymous against
        an emulator). Ignored for local paths.
    :param storage_options: extra fsspec options (no credentials here: they would be logged with
        the task's arguments; use a connection).
    """

    conn_name_attr = "conn_id"
    default_conn_name = "google_cloud_default"
    conn_type = "tf_ckpt_storage"
    hook_name = "TensorFlow checkpoint storage"

    def __init__(
        self, conn_id: str | None = None, *, storage_options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id or None
        self._storage_options = dict(storage_options or {})
        self._auth: GcsAuth | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} conn_id={self.conn_id!r}>"

    # ---------------------------------------------------------------------------------- secrets

    def redact(self, text: object) -> str:
        """``str(text)`` with every known secret of this hook's connection replaced by ``***``."""
        out = str(text)
        auth = self._auth
        if auth is not None:
            for secret in sorted(auth.secrets, key=len, reverse=True):
                if secret in out:
                    out = out.replace(secret, REDACTED)
        return out

    @staticmethod
    def _mask(auth: GcsAuth) -> None:
        try:
            from airflow.sdk.log import mask_secret
        except ImportError:  # pragma: no cover - very old task SDK
            return
        for secret in auth.secrets:
            mask_secret(secret)

    @staticmethod
    async def _amask(auth: GcsAuth) -> None:
        try:
            from airflow.sdk.log import amask_secret
        except ImportError:  # pragma: no cover
            return
        for secret in auth.secrets:
            await amask_secret(secret)

    # ---------------------------------------------------------------------------------- options

    def _finish(self, auth: GcsAuth) -> dict[str, Any]:
        opts = dict(self._storage_options)
        if auth.endpoint_url:
            opts["endpoint_url"] = auth.endpoint_url
        token = auth.token
        if token is None:
            token = "anon" if emulator_endpoint(opts) else "google_default"
        opts["token"] = token
        if auth.project:
            opts["project"] = auth.project
        if auth.access != "full_control":
            opts["access"] = auth.access
        return opts

    def _gcs_auth(self) -> GcsAuth:
        with self._lock:
            if self._auth is None:
                extras: Mapping[str, Any] = {}
                if self.conn_id:
                    extras = self.get_connection(self.conn_id).extra_dejson
                auth = cached_auth(self.conn_id, extras)
                self._mask(auth)
                self._auth = auth
            return self._auth

    async def _agcs_auth(self) -> GcsAuth:
        if self._auth is None:
            extras: Mapping[str, Any] = {}
            if self.conn_id:
                conn = await self.aget_connection(self.conn_id)
                extras = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
            auth = peek_auth(self.conn_id, extras)
            if auth is None:  # google-auth may read a key file: not on the event loop
                auth = await asyncio.to_thread(cached_auth, self.conn_id, extras)
                await self._amask(auth)
            self._auth = auth
        return self._auth

    def storage_options(self, url: str | os.PathLike[str]) -> dict[str, Any]:
        """fsspec options for ``url``. Holds credentials for gs://: never log or XCom the result."""
        if not is_gcs_url(url):
            return dict(self._storage_options)
        return self._finish(self._gcs_auth())

    # ---------------------------------------------------------------------------------- sync API

    def get_conn(self) -> Any:
        """The gs:// filesystem (``gcsfs.GCSFileSystem``) authenticated from this hook's connection.

        BaseHook's signature (no arguments), as ``GCSHook.get_conn()`` returns its storage client.
        A checkpoint dir of any scheme: :meth:`get_fs` or :meth:`get_location`.
        """
        return self.get_fs("gs://")

    def get_location(self, url: str | os.PathLike[str]) -> Location:
        """The core :class:`Location` of a checkpoint dir (blocking; for operators and sensors)."""
        opts = self.storage_options(url)
        try:
            return Location.of(url, opts)
        except StorageError as exc:
            raise StorageError(self.redact(exc.args[0])) from None

    def get_fs(self, url: str | os.PathLike[str]) -> Any:
        """The fsspec filesystem that serves ``url`` (a dir, a bucket or a bare ``gs://``)."""
        url = os.fspath(url)
        try:
            return filesystem_for(url, self.storage_options(url))[0]
        except StorageError as exc:
            raise StorageError(self.redact(exc.args[0])) from None

    def open(self, url: str | os.PathLike[str]) -> CheckpointDirReader:
        """A blocking reader of the dir's state file and listings (see :meth:`aopen`)."""
        return CheckpointDirReader(self.get_location(url))

    # ---------------------------------------------------------------------------------- async API

    async def aget_location(self, url: str | os.PathLike[str]) -> Location:
        """:meth:`get_location` without blocking the loop (connection fetched async, fs built in a thread)."""
        if is_gcs_url(url):
            opts = self._finish(await self._agcs_auth())
        else:
            opts = dict(self._storage_options)
        key = SharedAsyncFs.key({"url-protocol": url_protocol(url), **opts})
        fs = SYNC_FS.get(key)
        if fs is None:  # building one may do I/O (application default credentials): in a thread
            fs = (await asyncio.to_thread(Location.of, url, opts)).fs
            SYNC_FS[key] = fs
        return Location.of(url, fs=fs)

    @asynccontextmanager
    async def aopen(self, url: str | os.PathLike[str]) -> AsyncIterator[AsyncCheckpointDir]:
        """An :class:`AsyncCheckpointDir` for ``url``, released on exit (for triggers).

        Local disk and fsspec schemes other than gs:// (memory://, s3://...) are read by the
        blocking reader in a worker thread; gs:// through an async gcsfs shared by the loop.
        """
        url = os.fspath(url)
        location = await self.aget_location(url)
        if location.local or not is_gcs_url(url):
            yield AsyncCheckpointDir(location)
            return
        opts = self._finish(await self._agcs_auth())
        shared = await SHARED.acquire(asyncio.get_running_loop(), opts)
        try:
            yield GcsAsyncDir(location, shared.fs)
        finally:
            await SHARED.release(shared)
