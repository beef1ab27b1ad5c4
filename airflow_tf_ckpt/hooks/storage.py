"""``CheckpointStorageHook``: a checkpoint dir URL plus an optional Airflow connection -> a core Location.

Local paths and ``file://`` need no connection. ``gs://`` authenticates from the connection's extras,
read the way the Google provider reads a "Google Cloud" connection (``key_path``, ``keyfile_dict``,
``project``, ``is_anonymous``; bare or prefixed ``extra__google_cloud_platform__`` /
``extra__tf_ckpt_storage__``), WITHOUT needing apache-airflow-providers-google: the key is turned into
google-auth credentials here and handed to gcsfs. With no connection (or one without a key) gs:// uses
Application Default Credentials, except where a GCS emulator is configured (``STORAGE_EMULATOR_HOST``
or an ``endpoint_url`` extra), where it goes anonymous. The core's ``filesystem_for`` handles the
gcsfs 2026 emulator trap.

Credentials never leave this module in clear text: the hook's ``repr`` names only the connection id;
errors about a key say which field is wrong, never its content (the underlying exception text is
dropped, since parsers and token endpoints may echo what they were given); every string of a keyfile
is registered with Airflow's secrets masker; and :meth:`CheckpointStorageHook.redact` scrubs them from
any text (the triggers run every storage error through it before logging it or putting it in an
event).

Triggers use :meth:`CheckpointStorageHook.aopen`, which yields an :class:`AsyncCheckpointDir`: gcsfs's
native async API on the running loop (one shared aiohttp session per loop and credentials) for gs://,
a worker thread for local disk. It never blocks the event loop, except that gcsfs refreshes an expired
OAuth token with a synchronous request about once an hour.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.storage.location import (
    GCS_PROTOCOLS,
    MAX_READ_BYTES,
    FileTooLargeError,
    Location,
    emulator_endpoint,
    range_not_satisfiable,
    read_local_bounded,
    read_ranged,
)

EXTRA_PREFIXES = ("", "extra__tf_ckpt_storage__", "extra__google_cloud_platform__")
# Google-connection features that would silently change identity if ignored: refuse them.
UNSUPPORTED_EXTRAS = ("key_secret_name", "credential_config_file", "impersonation_chain", "idp_issuer_url")
ACCESS_SCOPES = {
    "read_only": "https://www.googleapis.com/auth/devstorage.read_only",
    "read_write": "https://www.googleapis.com/auth/devstorage.read_write",
    "full_control": "https://www.googleapis.com/auth/devstorage.full_control",
}
REDACTED = "***"
_REFRESH_MARGIN = 420  # seconds; gcsfs refreshes inline at 300
_MIN_SECRET_LEN = 5  # shorter strings ("1", "true") would redact ordinary words


class StorageCredentialsError(StorageError):
    """A connection's credentials are missing, malformed or unsupported (the text never holds them)."""


def url_protocol(url: str | os.PathLike[str]) -> str:
    url = os.fspath(url)
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_gcs_url(url: str | os.PathLike[str]) -> bool:
    return url_protocol(url) in GCS_PROTOCOLS


def _extra(extras: Mapping[str, Any], name: str) -> Any:
    for prefix in EXTRA_PREFIXES:
        value = extras.get(prefix + name)
        if value not in (None, ""):
            return value
    return None


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"))


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


@dataclass
class GcsAuth:
    """What a connection resolves to for gcsfs. ``token`` may hold credentials: never log it."""

    token: Any = None  # google-auth Credentials, "anon", "google_default" or None (decided later)
    project: str | None = None
    endpoint_url: str | None = None
    access: str = "full_control"
    secrets: set[str] = field(default_factory=set)

    def __repr__(self) -> str:  # the dataclass default would print the credentials
        return (
            f"GcsAuth(token={type(self.token).__name__}, project={self.project!r}, "
            f"endpoint_url={self.endpoint_url!r}, access={self.access!r})"
        )


def gcs_auth_from_extras(extras: Mapping[str, Any], conn_id: str | None = None) -> GcsAuth:
    """Turn a connection's extras into gcsfs credentials, as the Google provider would read them.

    Raises :class:`StorageCredentialsError` naming the field (never its value) when the key is
    malformed, when both ``key_path`` and ``keyfile_dict`` are set, or when an extra asks for a
    feature we do not implement (secret-manager keys, impersonation, workload identity federation
    files): silently falling back to default credentials would act as another identity.
    """
    who = f"connection {conn_id!r}" if conn_id else "the storage connection"
    auth = GcsAuth()
    for name in UNSUPPORTED_EXTRAS:
        if _extra(extras, name):
            raise StorageCredentialsError(
                f"{who}: extra {name!r} is not supported by airflow-tf-ckpt; use key_path, keyfile_dict "
                "or application default credentials"
            )
    access = _extra(extras, "access") or "full_control"
    if access not in ACCESS_SCOPES:
        raise StorageCredentialsError(f"{who}: extra 'access' must be one of {sorted(ACCESS_SCOPES)}")
    auth.access = access
    scopes = [ACCESS_SCOPES[access]]
    project = _extra(extras, "project")
    auth.project = str(project) if project else None
    endpoint = _extra(extras, "endpoint_url")
    auth.endpoint_url = str(endpoint) if endpoint else None
    if _truthy(_extra(extras, "is_anonymous")):
        auth.token = "anon"
        return auth
    key_path = _extra(extras, "key_path")
    keyfile = _extra(extras, "keyfile_dict")
    if key_path and keyfile:
        raise StorageCredentialsError(f"{who}: set only one of key_path and keyfile_dict")
    if keyfile:
        if isinstance(keyfile, str):
            auth.secrets.add(keyfile)
            try:
                info = json.loads(keyfile)
            except ValueError:
                raise StorageCredentialsError(f"{who}: keyfile_dict is not valid JSON") from None
        else:
            info = keyfile
        if not isinstance(info, Mapping):
            raise StorageCredentialsError(f"{who}: keyfile_dict must be a JSON object")
        auth.secrets.update(s for s in _strings(info) if len(s) >= _MIN_SECRET_LEN)
        auth.token, key_project = _credentials_from_info(info, scopes, f"{who}: keyfile_dict")
        auth.project = auth.project or key_project
    elif key_path:
        key_path = os.path.expanduser(str(key_path))
        # gcsfs would take a path that does not exist for a raw access token and send it to Google.
        if not os.path.isfile(key_path):
            raise StorageCredentialsError(f"{who}: key_path {key_path!r} is not a readable file")
        try:
            with open(key_path, encoding="utf-8") as fh:
                info = json.load(fh)
        except (OSError, ValueError):
            raise StorageCredentialsError(f"{who}: key_path {key_path!r} is not a JSON key file") from None
        if not isinstance(info, Mapping):
            raise StorageCredentialsError(f"{who}: key_path {key_path!r} is not a JSON key file")
        auth.secrets.update(s for s in _strings(info) if len(s) >= _MIN_SECRET_LEN)
        auth.token, key_project = _credentials_from_info(info, scopes, f"{who}: key_path {key_path!r}")
        auth.project = auth.project or key_project
    return auth


_AUTH_CACHE: dict[str, GcsAuth] = {}
_AUTH_LOCK = threading.Lock()


def _auth_key(conn_id: str | None, extras: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps([conn_id, extras], sort_keys=True, default=str).encode()).hexdigest()


def _peek_auth(conn_id: str | None, extras: Mapping[str, Any]) -> GcsAuth | None:
    """The cached :class:`GcsAuth` of this connection content, if already built (no I/O)."""
    with _AUTH_LOCK:
        return _AUTH_CACHE.get(_auth_key(conn_id, extras))


def _cached_auth(conn_id: str | None, extras: Mapping[str, Any]) -> GcsAuth:
    """One :class:`GcsAuth` per connection content, shared by every hook of the process.

    A triggerer may run 1000 triggers on one connection: they then share one credentials object
    (one token refresh an hour, not 1000) and one aiohttp session. Keyed by a hash: no secret is
    kept in the key.
    """
    key = _auth_key(conn_id, extras)
    with _AUTH_LOCK:
        auth = _AUTH_CACHE.get(key)
    if auth is None:
        auth = gcs_auth_from_extras(extras, conn_id)
        with _AUTH_LOCK:
            auth = _AUTH_CACHE.setdefault(key, auth)
    return auth


def _credentials_from_info(info: Mapping[str, Any], scopes: list[str], what: str) -> tuple[Any, str | None]:
    """google-auth credentials of a service-account or authorized-user key (nothing else).

    Type-specific loaders only: google-auth's generic loaders also accept external-account
    configurations (which can run executables) and are deprecated for keys from elsewhere.
    """
    kind = info.get("type")
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            creds = service_account.Credentials.from_service_account_info(dict(info), scopes=scopes)
            return creds, info.get("project_id")
        if kind == "authorized_user":
            from google.oauth2.credentials import Credentials

            return Credentials.from_authorized_user_info(dict(info), scopes=scopes), info.get(
                "quota_project_id"
            )
    except Exception as exc:  # the message may quote the key: keep only the type
        raise StorageCredentialsError(
            f"{what} is not a usable Google credential ({type(exc).__name__})"
        ) from None
    raise StorageCredentialsError(
        f"{what} is not a usable Google credential (type {kind!r}; expected service_account or "
        "authorized_user)"
    )


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
                auth = _cached_auth(self.conn_id, extras)
                self._mask(auth)
                self._auth = auth
            return self._auth

    async def _agcs_auth(self) -> GcsAuth:
        if self._auth is None:
            extras: Mapping[str, Any] = {}
            if self.conn_id:
                conn = await self.aget_connection(self.conn_id)
                extras = await conn.aextra_dejson() if hasattr(conn, "aextra_dejson") else conn.extra_dejson
            auth = _peek_auth(self.conn_id, extras)
            if auth is None:  # google-auth may read a key file: not on the event loop
                auth = await asyncio.to_thread(_cached_auth, self.conn_id, extras)
                await self._amask(auth)
            self._auth = auth
        return self._auth

    def storage_options(self, url: str | os.PathLike[str]) -> dict[str, Any]:
        """fsspec options for ``url``. Holds credentials for gs://: never log or XCom the result."""
        if not is_gcs_url(url):
            return dict(self._storage_options)
        return self._finish(self._gcs_auth())

    # ---------------------------------------------------------------------------------- sync API

    def get_location(self, url: str | os.PathLike[str]) -> Location:
        """The core :class:`Location` of a checkpoint dir (blocking; for operators and sensors)."""
        opts = self.storage_options(url)
        try:
            return Location.of(url, opts)
        except StorageError as exc:
            raise StorageError(self.redact(exc.args[0])) from None

    def get_fs(self, url: str | os.PathLike[str]) -> Any:
        """The fsspec filesystem that serves ``url``."""
        return self.get_location(url).fs

    get_conn = get_fs

    def open(self, url: str | os.PathLike[str]) -> CheckpointDirReader:
        """A blocking reader of the dir's state file and listings (see :meth:`aopen`)."""
        return CheckpointDirReader(self.get_location(url), self)

    # ---------------------------------------------------------------------------------- async API

    async def aget_location(self, url: str | os.PathLike[str]) -> Location:
        """:meth:`get_location` without blocking the loop (connection fetched async, fs built in a thread)."""
        if is_gcs_url(url):
            opts = self._finish(await self._agcs_auth())
        else:
            opts = dict(self._storage_options)
        key = _SharedAsyncFs._key({"url-protocol": url_protocol(url), **opts})
        fs = _SYNC_FS.get(key)
        if fs is None:  # building one may do I/O (application default credentials): in a thread
            fs = (await asyncio.to_thread(Location.of, url, opts)).fs
            _SYNC_FS[key] = fs
        return Location.of(url, fs=fs)

    @asynccontextmanager
    async def aopen(self, url: str | os.PathLike[str]) -> AsyncIterator[AsyncCheckpointDir]:
        """An :class:`AsyncCheckpointDir` for ``url``, released on exit (for triggers)."""
        url = os.fspath(url)
        location = await self.aget_location(url)
        if location.local:
            yield _LocalAsyncDir(location, self)
            return
        if not is_gcs_url(url):
            # memory://, s3://, ... : any other fsspec scheme, its blocking calls kept off the loop
            yield _ThreadedAsyncDir(location, self)
            return
        opts = self._finish(await self._agcs_auth())
        loop = asyncio.get_running_loop()
        shared = await _SHARED.acquire(loop, opts)
        try:
            yield _GcsAsyncDir(location, self, shared.fs)
        finally:
            await _SHARED.release(shared)


# ---------------------------------------------------------------------------------------------
# async dirs


class AsyncCheckpointDir:
    """Async reads of one checkpoint dir: the state file, and listings (optionally by name prefix).

    ``location`` is the sync core :class:`Location` of the same dir (for ``display`` and the core's
    path resolution; do not do I/O with it on the event loop). :meth:`snapshot` returns a Location
    whose listing and files are the ones already fetched, so the core's ``discover`` can run on it
    (in a thread, since it is CPU work on big dirs) without any further I/O.
    """

    def __init__(self, location: Location, hook: CheckpointStorageHook) -> None:
        self.location = location
        self.hook = hook

    @property
    def url(self) -> str:
        return self.location.url

    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        """The whole file ``name`` of the dir, or ``None`` when it does not exist.

        Bounded as the core's reads are: more than ``cap`` bytes raises FileTooLargeError (after
        reading at most ``cap`` + 1), and a local file that is not a regular file (a FIFO, a
        device) raises NotRegularFileError, without blocking.
        """
        raise NotImplementedError

    async def list(self, prefix: str = "") -> list[dict[str, Any]]:
        """fsspec ``ls(detail=True)`` entries of the dir's objects whose basename starts with ``prefix``.

        A missing dir lists as empty (a job that has not saved yet), not as an error.
        """
        raise NotImplementedError

    def snapshot(self, entries: list[dict[str, Any]], files: Mapping[str, bytes]) -> Location:
        """A Location over an already fetched listing and file contents (no I/O)."""
        return snapshot_location(self.location, entries, files)


def snapshot_location(
    location: Location, entries: list[dict[str, Any]], files: Mapping[str, bytes]
) -> Location:
    """A Location whose ``listdir``/``read_bytes``/``exists`` answer from fetched data (no I/O)."""
    fs = _SnapshotFS(location.fs, location.path, entries, files)
    return Location(fs=fs, path=location.path, url=location.url)  # type: ignore[arg-type]


class CheckpointDirReader:
    """The blocking twin of :class:`AsyncCheckpointDir` (for sensors in poke/reschedule mode)."""

    def __init__(self, location: Location, hook: CheckpointStorageHook) -> None:
        self.location = location
        self.hook = hook

    @property
    def url(self) -> str:
        return self.location.url

    def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        path = self.location.join(name)
        try:
            if self.location.local:
                return read_local_bounded(path, self.location.display(name), cap, what)
            return read_ranged(self.location.fs, path, self.location.display(name), cap, what)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list(self, prefix: str = "") -> list[dict[str, Any]]:
        fs, path = self.location.fs, self.location.path
        if self.location.local:
            return _scan_local(path, prefix)
        try:
            if prefix and is_gcs_url(self.location.url):
                entries = fs.ls(path, detail=True, prefix=prefix, refresh=True)
            else:
                entries = fs.ls(path, detail=True, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [e for e in entries if posixpath.basename(e["name"].rstrip("/")).startswith(prefix)]

    def snapshot(self, entries: list[dict[str, Any]], files: Mapping[str, bytes]) -> Location:
        return snapshot_location(self.location, entries, files)


class _LocalAsyncDir(AsyncCheckpointDir):
    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        path, display = self.location.join(name), self.location.display(name)

        def _read() -> bytes | None:
            try:
                return read_local_bounded(path, display, cap, what)
            except (FileNotFoundError, NotADirectoryError):
                return None

        return await asyncio.to_thread(_read)

    async def list(self, prefix: str = "") -> list[dict[str, Any]]:
        return await asyncio.to_thread(_scan_local, self.location.path, prefix)


class _ThreadedAsyncDir(AsyncCheckpointDir):
    """Any fsspec filesystem without an async API we use: the blocking reader, in a thread."""

    def __init__(self, location: Location, hook: CheckpointStorageHook) -> None:
        super().__init__(location, hook)
        self._reader = CheckpointDirReader(location, hook)

    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        return await asyncio.to_thread(self._reader.read, name, cap, what)

    async def list(self, prefix: str = "") -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._reader.list, prefix)


def _scan_local(path: str, prefix: str = "") -> list[dict[str, Any]]:
    """``LocalFileSystem.ls(detail=True)``-shaped entries of ``path`` whose name starts with ``prefix``.

    ``os.scandir`` with the name filter applied before any ``stat``: a prefix listing of a dir of
    10k files stats only the matching ones, and costs far less Python time (GIL) than fsspec's ls.
    """
    out: list[dict[str, Any]] = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if not entry.name.startswith(prefix):
                    continue
                try:
                    st = entry.stat()
                    is_dir = entry.is_dir()
                except FileNotFoundError:  # deleted while we listed
                    continue
                out.append(
                    {
                        "name": posixpath.join(path, entry.name),
                        "size": st.st_size,
                        "type": "directory" if is_dir else "file",
                        "mtime": st.st_mtime,
                        "islink": entry.is_symlink(),
                    }
                )
    except (FileNotFoundError, NotADirectoryError):
        return []
    return out


class _GcsAsyncDir(AsyncCheckpointDir):
    def __init__(self, location: Location, hook: CheckpointStorageHook, afs: Any) -> None:
        super().__init__(location, hook)
        self.afs = afs

    async def _fresh_credentials(self) -> None:
        """Refresh an expiring OAuth token in a thread, before gcsfs would do it on the loop.

        gcsfs refreshes credentials with a blocking ``requests`` call inside its async request
        path, and retries a failed refresh for half a minute. Refreshing here first, with a wider
        margin than gcsfs's own, keeps that off the event loop and lets a broken key fail at once.
        """
        creds = getattr(self.afs, "credentials", None)
        if creds is None or getattr(creds, "credentials", None) is None:  # anonymous
            return
        valid = getattr(creds, "_credentials_valid", None)
        if callable(valid) and valid(_REFRESH_MARGIN):
            return
        await asyncio.to_thread(creds.maybe_refresh, _REFRESH_MARGIN)

    async def read(self, name: str, cap: int = MAX_READ_BYTES, what: str = "a file") -> bytes | None:
        await self._fresh_credentials()
        try:  # one ranged read of cap + 1 bytes: a huge object costs no more than the cap
            data = await self.afs._cat_file(self.location.join(name), start=0, end=cap + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if range_not_satisfiable(exc, self.location.join(name)):  # a range past an empty object
                return b""
            raise
        if len(data) > cap:
            raise FileTooLargeError(
                f"is more than {cap} bytes, too large for {what}", self.location.display(name)
            )
        return data

    async def list(self, prefix: str = "") -> list[dict[str, Any]]:
        await self._fresh_credentials()
        try:
            # a prefixed listing is never cached by gcsfs; refresh the un-prefixed one
            entries = await self.afs._ls(self.location.path, detail=True, prefix=prefix, refresh=True)
        except FileNotFoundError:
            return []
        return list(entries)


class _SnapshotFS:
    """Just enough of an fsspec filesystem for ``Location.listdir`` / ``read_bytes`` / ``exists``."""

    def __init__(
        self, real: Any, path: str, entries: list[dict[str, Any]], files: Mapping[str, bytes]
    ) -> None:
        self._real = real
        self._path = path.rstrip("/")
        self._entries = entries
        self._files = dict(files)
        self.protocol = real.protocol

    def _strip_protocol(self, path: str) -> str:
        return self._real._strip_protocol(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
        return list(self._entries)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        name = posixpath.basename(path)
        if posixpath.dirname(path).rstrip("/") != self._path or name not in self._files:
            raise FileNotFoundError(path)
        return self._files[name][start:end]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        name = posixpath.basename(path)
        if posixpath.dirname(path).rstrip("/") != self._path or name not in self._files:
            raise FileNotFoundError(path)
        return {"name": path, "size": len(self._files[name]), "type": "file"}

    def exists(self, path: str, **kwargs: Any) -> bool:
        name = posixpath.basename(path)
        return name in self._files or any(
            posixpath.basename(e["name"].rstrip("/")) == name for e in self._entries
        )


# ---------------------------------------------------------------------------------------------
# one async gcsfs instance (one aiohttp session) per event loop and credentials


@dataclass
class _Shared:
    loop: asyncio.AbstractEventLoop
    key: str
    fs: Any
    refs: int = 0


class _SharedAsyncFs:
    """Async gcsfs instances shared by every trigger of a loop that uses the same options.

    A triggerer runs up to 1000 triggers in one loop: one aiohttp session (and connection pool)
    for all of them, instead of one per trigger. fsspec's own instance cache is skipped because an
    async instance is bound to its loop, and ``dag.test()`` runs each trigger in a fresh loop.
    The session is closed when the last user of a loop releases it.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], _Shared] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    @staticmethod
    def _key(opts: Mapping[str, Any]) -> str:
        # credentials objects hash by identity; everything else by value. Hashed: no secret kept.
        parts = {
            k: (f"{type(v).__name__}@{id(v)}" if k == "token" and not isinstance(v, str) else v)
            for k, v in opts.items()
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    async def acquire(self, loop: asyncio.AbstractEventLoop, opts: Mapping[str, Any]) -> _Shared:
        key = (id(loop), self._key(opts))
        lock = self._locks.setdefault(id(loop), asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is None or entry.loop is not loop:
                fs = await asyncio.to_thread(_make_async_gcsfs, loop, dict(opts))
                await fs._set_session()
                entry = _Shared(loop=loop, key=key[1], fs=fs)
                self._entries[key] = entry
            entry.refs += 1
            return entry

    async def release(self, entry: _Shared) -> None:
        entry.refs -= 1
        if entry.refs > 0:
            return
        key = (id(entry.loop), entry.key)
        if self._entries.get(key) is entry:
            del self._entries[key]
        session = getattr(entry.fs, "_session", None)
        if session is not None and not session.closed:
            try:
                await session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def _make_async_gcsfs(loop: asyncio.AbstractEventLoop, opts: dict[str, Any]) -> Any:
    """The plain ``gcsfs.core.GCSFileSystem`` (no gRPC bucket-type probe) bound to ``loop``."""
    from gcsfs.core import GCSFileSystem

    endpoint = emulator_endpoint(opts)
    if endpoint:
        opts["endpoint_url"] = endpoint
        opts.setdefault("project", "test")
    return GCSFileSystem(asynchronous=True, loop=loop, skip_instance_cache=True, **opts)


_SHARED = _SharedAsyncFs()
# Sync filesystems already built for async callers, by options (fsspec caches them too, but its
# constructor may do I/O the first time, so the event loop asks here first).
_SYNC_FS: dict[str, Any] = {}

__all__ = [
    "AsyncCheckpointDir",
    "CheckpointDirReader",
    "CheckpointStorageHook",
    "GcsAuth",
    "StorageCredentialsError",
    "snapshot_location",
    "gcs_auth_from_extras",
    "is_gcs_url",
]
