"""Storage access over fsspec: one small seam between the core and local disk, memory:// or gs://.

Everything in the core takes a :class:`Location` (a filesystem plus a directory path) so that the
same code serves a local dir, ``file://``, ``memory://`` and ``gs://`` (gcsfs).

gcsfs 2026.x trap: ``gcsfs.GCSFileSystem`` is an experimental "extended" class that asks the
endpoint for the bucket type over gRPC and retries for about a minute. Against an emulator
(``STORAGE_EMULATOR_HOST`` or an ``endpoint_url`` storage option) every call would then take a
minute, so where an emulator endpoint is configured we build the plain
``gcsfs.core.GCSFileSystem`` ourselves. Real GCS keeps gcsfs's default class.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISLNK, S_ISREG, S_ISSOCK
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from airflow_tf_ckpt.core.errors import DirNotFoundError, StorageError

GCS_PROTOCOLS = ("gs", "gcs")

# The cap of a whole-file read that names none: more than any index we have seen (a 1M-tensor index
# is 23 MB), far less than a sparse file of terabytes.
MAX_READ_BYTES = 1 << 30


class NotRegularFileError(StorageError):
    """A file to read is a FIFO, a device, a socket or a directory: never read (it could block
    forever, or never end, as ``/dev/zero``)."""


class FileTooLargeError(StorageError):
    """A file is larger than the cap for its kind: refused before it is read."""


def _kind_of(mode: int) -> str:
    for test, kind in (
        (S_ISFIFO, "a FIFO"),
        (S_ISCHR, "a character device"),
        (S_ISBLK, "a block device"),
        (S_ISSOCK, "a socket"),
        (S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "a special file"


def open_regular(path: str, display: str | None = None) -> tuple[int, os.stat_result]:
    """Open a local file for reading, only if it is a regular file: ``(fd, fstat)``.

    ``O_NONBLOCK`` so that opening a FIFO never waits for a writer; the type check is on the open
    descriptor (``fstat``), so a file swapped between a check and the open cannot slip through.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError as exc:
        raise NotRegularFileError("not a regular file (a directory)", display or path) from exc
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise NotRegularFileError(f"not a regular file ({_kind_of(st.st_mode)})", display or path)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _too_large(size: int, cap: int, what: str, display: str) -> FileTooLargeError:
    return FileTooLargeError(f"is {size} bytes, too large for {what} (the limit is {cap} bytes)", display)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, min(length, 64 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def read_local_bounded(
    path: str,
    display: str,
    cap: int = MAX_READ_BYTES,
    what: str = "a file",
    start: int | None = None,
    end: int | None = None,
) -> bytes:
    """A regular local file's bytes (or the range ``start:end``), never more than ``cap`` + 1
    read: the size is checked on the open descriptor first, and a file growing meanwhile is cut
    at ``cap`` + 1 bytes and refused."""
    fd, st = open_regular(path, display)
    try:
        if start is None and end is None:
            if st.st_size > cap:
                raise _too_large(st.st_size, cap, what, display)
            data = _pread_all(fd, cap + 1, 0)
            if len(data) > cap:
                raise _too_large(len(data), cap, what, display)
            return data
        size = st.st_size
        lo = 0 if start is None else (max(0, size + start) if start < 0 else start)
        hi = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        if hi - lo > cap:
            raise _too_large(hi - lo, cap, f"one read of {what}", display)
        return _pread_all(fd, hi - lo, lo) if hi > lo else b""
    finally:
        os.close(fd)


def read_bounded(
    fs: fsspec.AbstractFileSystem,
    path: str,
    display: str,
    cap: int = MAX_READ_BYTES,
    what: str = "a file",
    size: int | None = None,
) -> bytes:
    """A whole file of any filesystem, at most ``cap`` bytes (:class:`FileTooLargeError` past it).

    Local: :func:`read_local_bounded` (regular files only). Object stores: the size (``size``
    when a listing gave it, else one ``info``), then one ranged read of at most ``cap`` + 1 bytes,
    so a huge object costs no more than the cap. Missing -> FileNotFoundError.
    """
    if is_local(fs):
        return read_local_bounded(path, display, cap, what)
    if size is None:  # the object's size first: a range on an empty object is refused (416)
        size = int(fs.info(path).get("size") or 0)
    if size > cap:
        raise _too_large(size, cap, what, display)
    if size == 0:
        return b""
    try:  # up to cap + 1 (not `size`: the object may have been replaced by a longer one since)
        data = fs.cat_file(path, start=0, end=cap + 1)
    except OSError as exc:
        if range_not_satisfiable(exc, path):  # emptied meanwhile
            return b""
        raise
    if len(data) > cap:
        raise _too_large(len(data), cap, what, display)
    return bytes(data)


def range_not_satisfiable(exc: BaseException, path: str) -> bool:
    """Whether a ranged read failed with HTTP 416 (a range on an empty object). Never for a missing
    file, and the status is looked for in the message, not in the path it names (a uuid-named dir
    can hold the digits "416")."""
    if isinstance(exc, FileNotFoundError) or not isinstance(exc, OSError):
        return False
    return getattr(exc, "errno", None) is None and "416" in str(exc).replace(path, "")


def read_ranged(fs: fsspec.AbstractFileSystem, path: str, display: str, cap: int, what: str) -> bytes:
    """An object store's whole object in ONE request (a poll's hot path): a ranged read of
    ``cap`` + 1 bytes. An empty object answers the range with 416, read as empty (gcsfs logs it)."""
    try:
        data = fs.cat_file(path, start=0, end=cap + 1)
    except OSError as exc:
        if range_not_satisfiable(exc, path):
            return b""
        raise
    if len(data) > cap:
        raise _too_large(len(data), cap, what, display)
    return bytes(data)


def loads_json(data: bytes | bytearray | memoryview) -> Any:
    """``json.loads`` of UTF-8 bytes, every failure a ValueError (UnicodeDecodeError and
    JSONDecodeError are ones): nesting too deep for the parser's recursion included."""
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def emulator_endpoint(storage_options: dict[str, Any] | None = None) -> str | None:
    """The GCS emulator endpoint in force, if any (storage option first, then the environment)."""
    opts = storage_options or {}
    endpoint = opts.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST", "")
    if endpoint in ("", "default", None):
        return None
    if not endpoint.startswith(("http://", "https://")):
        endpoint = f"http://{endpoint}"
    return endpoint


class _NoTracebacks(logging.Filter):
    """gcsfs logs each request it gives up on with ``logger.exception``: two chained tracebacks
    before the error that is raised (and that our CLI and tasks report in one line anyway). Keep
    gcsfs's one-line message, drop the traceback (``TF_CKPT_DEBUG=1`` keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and os.environ.get("TF_CKPT_DEBUG", "") in ("", "0"):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_gcsfs_tracebacks() -> None:
    """Install :class:`_NoTracebacks` on gcsfs's logger (once; a public logging API, not gcsfs's)."""
    logger = logging.getLogger("gcsfs")
    if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
        logger.addFilter(_NoTracebacks())


def filesystem_for(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Map a URL (or plain path) to ``(filesystem, path)`` with the emulator trap handled."""
    opts = dict(storage_options or {})
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol in GCS_PROTOCOLS:
        quiet_gcsfs_tracebacks()
        endpoint = emulator_endpoint(opts)
        if endpoint:
            from gcsfs.core import GCSFileSystem  # the plain class: no gRPC bucket-type probe

            opts["endpoint_url"] = endpoint
            opts.setdefault("token", "anon")
            opts.setdefault("project", "test")
            fs = GCSFileSystem(**opts)
            return fs, fsspec.core.strip_protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url, **opts)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open storage for this URL: {exc}", url) from exc
    return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


@dataclass(frozen=True)
class FileInfo:
    """One object of a directory listing.

    A local listing (:meth:`Location.listdir`) reads names and types only (``os.scandir``, no
    syscall per file); ``size`` and ``mtime`` are read on first use, by one ``lstat``, as fsspec
    reads them (a symlink's size is its target's, 0 when broken). Planning needs neither for most
    files, and stat'ing the 200k files of a 100k-step dir costs ~0.8 s on a VM. A file gone by
    then reads as size 0, mtime None. Pickling or copying one reads them first.
    """

    name: str  # basename
    path: str  # full path as the filesystem knows it
    size: int
    mtime: float | None  # unix seconds, where the store reports it
    is_dir: bool = False
    is_link: bool = False

    def __getattr__(self, attr: str) -> Any:
        # reached only for an attribute that is not set: size/mtime of a lazily listed file
        if attr in _LAZY_FIELDS and "path" in self.__dict__:
            _stat_into(self.__dict__)
            return self.__dict__[attr]
        raise AttributeError(attr)

    def __getstate__(self) -> dict[str, Any]:
        if "size" not in self.__dict__:
            _stat_into(self.__dict__)
        return self.__dict__


_LAZY_FIELDS = frozenset(("size", "mtime"))


def _stat_into(d: dict[str, Any]) -> None:
    """Fill ``size`` and ``mtime`` of a lazily listed local file (see :class:`FileInfo`)."""
    try:
        st = os.lstat(d["path"])
    except OSError:
        d["size"], d["mtime"] = 0, None
        return
    size = st.st_size
    if S_ISLNK(st.st_mode):
        try:
            size = os.stat(d["path"]).st_size
        except OSError:
            size = 0
    d["size"], d["mtime"] = size, float(st.st_mtime)


def scan_local(path: str) -> tuple[list[str], dict[str, tuple[bool, bool]]]:
    """One ``os.scandir`` pass over a local dir: the names of its regular files, and ``(is_dir,
    is_link)`` of every other entry, as fsspec reports them (``is_dir`` not following symlinks).

    The file type comes with the directory entry (``d_type``), so a regular file costs no
    syscall: fsspec's ``ls(detail=True)`` spends ~10 µs a file (an ``lstat``, a dict and a
    protocol strip). OSErrors propagate (see :meth:`Location.scan_local`).
    """
    files: list[str] = []
    special: dict[str, tuple[bool, bool]] = {}
    add = files.append
    with os.scandir(path) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                add(e.name)
            else:
                special[e.name] = (e.is_dir(follow_symlinks=False), e.is_symlink())
    return files, special


def lazy_infos(path: str, names: Iterable[str]) -> list[FileInfo]:
    """The FileInfos of regular files ``names`` in local dir ``path``, size and mtime read on
    first use (see :class:`FileInfo`)."""
    base = path + "/" if path != "/" else "/"
    out: list[FileInfo] = []
    add = out.append
    new = object.__new__
    for name in names:
        info = new(FileInfo)
        d = info.__dict__  # frozen: fill the instance dict directly (is_dir/is_link default False)
        d["name"] = name
        d["path"] = base + name
        add(info)
    return out


def lazy_special_info(path: str, name: str, is_dir: bool, is_link: bool) -> FileInfo:
    """:func:`lazy_infos` for an entry that is not a regular file (from :func:`scan_local`)."""
    info = lazy_infos(path, (name,))[0]
    info.__dict__.update(is_dir=is_dir, is_link=is_link)
    return info


def _listdir_local(path: str) -> dict[str, FileInfo]:
    files, special = scan_local(path)
    out = dict(zip(files, lazy_infos(path, files), strict=True))
    for name, (is_dir, is_link) in special.items():
        out[name] = lazy_special_info(path, name, is_dir, is_link)
    return out


def mtime_of(info: dict[str, Any]) -> float | None:
    """An fsspec info dict's (or a GCS object resource's) modification time, as epoch seconds,
    whichever of the names filesystems use for it is present."""
    for key in ("mtime", "updated", "LastModified", "last_modified", "created", "timeCreated"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class Location:
    """A directory on some filesystem. ``url`` is what users typed; ``path`` what fsspec wants."""

    fs: fsspec.AbstractFileSystem
    path: str
    url: str

    @classmethod
    def of(
        cls,
        url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        fs: fsspec.AbstractFileSystem | None = None,
    ) -> Location:
        url = os.fspath(url)
        if not url.strip() or url.strip() in ("file://", "gs://", "gcs://"):
            # "" would be the working directory, "gs://" every bucket: never what was meant
            raise StorageError(f"{url!r} is an empty path: give a checkpoint dir (a path or URL)")
        if fs is not None:  # one that serves url's protocol (fsspec's public mapping of the URL)
            path = fsspec.core.strip_protocol(url)
        else:
            fs, path = filesystem_for(url, storage_options)
        path = path.rstrip("/") or "/"
        return cls(fs=fs, path=path, url=url.rstrip("/") or url)

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    @property
    def protocol(self) -> str:
        return protocol_of(self.fs)

    def join(self, name: str) -> str:
        return posixpath.join(self.path, name) if self.path != "/" else "/" + name

    def display(self, name: str | None = None) -> str:
        """A user-facing name for the dir or one of its files (a URL for object stores)."""
        path = self.join(name) if name else self.path
        if self.local:
            return path
        proto = self.protocol
        return path if "://" in path else f"{proto}://{path.lstrip('/')}"

    def listdir(self) -> dict[str, FileInfo]:
        """All objects directly in the dir, in ONE listing call. Missing dir -> StorageError."""
        if self.local:
            with self._local_errors():
                return _listdir_local(self.path)
        try:
            entries = (
                self.fs.ls(self.path, detail=True, refresh=True)
                if not self.local
                else self.fs.ls(self.path, detail=True)
            )
        except FileNotFoundError as exc:
            raise DirNotFoundError("directory does not exist", self.display()) from exc
        except PermissionError as exc:
            raise StorageError(f"permission denied: {exc}", self.display()) from exc
        except NotADirectoryError as exc:
            raise StorageError("not a directory", self.display()) from exc
        except TypeError:
            # some implementations have no ``refresh`` keyword
            entries = self.fs.ls(self.path, detail=True)
        if (
            len(entries) == 1
            and entries[0].get("type") == "file"
            and entries[0]["name"].rstrip("/") == self.path.rstrip("/")
        ):
            # fsspec lists a FILE as itself: that is not an (empty) checkpoint dir
            raise StorageError("not a directory (it is a file)", self.display())
        out: dict[str, FileInfo] = {}
        for info in entries:
            full = info["name"].rstrip("/")
            name = posixpath.basename(full)
            if not name or full == self.path.rstrip("/"):
                continue
            out[name] = FileInfo(
                name=name,
                path=full,
                size=int(info.get("size") or 0),
                mtime=mtime_of(info),
                is_dir=info.get("type") == "directory",
                is_link=bool(info.get("islink")),
            )
        return out

    def scan_local(self) -> tuple[list[str], dict[str, tuple[bool, bool]]]:
        """A local dir's :func:`scan_local` (what :meth:`listdir` builds its listing from, for a
        caller that makes the FileInfos itself, with :func:`lazy_infos`)."""
        with self._local_errors():
            return scan_local(self.path)

    @contextmanager
    def _local_errors(self) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise DirNotFoundError("directory does not exist", self.display()) from exc
        except PermissionError as exc:
            raise StorageError(f"permission denied: {exc}", self.display()) from exc
        except NotADirectoryError as exc:
            what = "not a directory (it is a file)" if os.path.isfile(self.path) else "not a directory"
            raise StorageError(what, self.display()) from exc

    def exists(self, name: str | None = None) -> bool:
        return self.fs.exists(self.join(name) if name else self.path)

    def read_bytes(
        self,
        name: str,
        start: int | None = None,
        end: int | None = None,
        *,
        cap: int = MAX_READ_BYTES,
        what: str = "a file",
        size: int | None = None,
    ) -> bytes:
        """A file of the dir (or the range ``start:end``), bounded: at most ``cap`` bytes
        (:class:`FileTooLargeError`), and locally only a regular file (:class:`NotRegularFileError`),
        opened without blocking. ``size``: the object's size where a listing gave it (saves an
        object store the request that asks it)."""
        path = self.join(name)
        try:
            if self.local:
                return read_local_bounded(path, self.display(name), cap, what, start, end)
            if start is None and end is None:
                return read_bounded(self.fs, path, self.display(name), cap, what, size)
            return self.fs.cat_file(path, start=start, end=end)
        except FileNotFoundError as exc:
            raise StorageError("file does not exist", self.display(name)) from exc
        except PermissionError as exc:
            raise StorageError(f"permission denied: {exc}", self.display(name)) from exc
        except IsADirectoryError as exc:
            raise StorageError("is a directory, not a file", self.display(name)) from exc

    def read_capped(self, name: str, cap: int, what: str) -> bytes:
        """:func:`read_bounded` of a file of the dir: FileNotFoundError when it is missing (for
        the callers that treat that as "none"), NotRegularFileError / FileTooLargeError."""
        return read_bounded(self.fs, self.join(name), self.display(name), cap, what)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Write a whole file so readers see the old content or the new, never a mix.

        Local: a temp file in the same dir, fsync, then ``os.replace`` (as TF's
        ``atomic_write_string_to_file``). Object stores: one single-request put, which is atomic.
        """
        write_atomic(self.fs, self.join(name), data)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, check: Callable[[], bool] | None = None
) -> bool:
    """See :meth:`Location.write_atomic`. Locally, ``check()`` runs after the temp file is durable,
    just before the rename; when it returns False the temp file is removed and nothing replaced
    (returns False). Elsewhere it runs just before the upload. Returns True when written."""
    if check is not None and not is_local(fs) and not check():
        return False
    if is_local(fs):
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        tmp = _durable_temp(directory, path, data)
        try:
            if check is not None and not check():
                os.unlink(tmp)
                return False
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)  # make the rename itself durable
    else:
        fs.pipe_file(path, data)
    return True


# --------------------------------------------------------------------------------------------
# atomic exchange (Linux renameat2 RENAME_EXCHANGE)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    """libc's ``renameat2``, or ``None`` where there is none (not Linux/glibc, or too old)."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def swap_in(path: str, data: bytes) -> bytes | None:
    """Put ``data`` at the existing local file ``path`` in ONE atomic step that also hands back
    what the file held at that instant, so a writer that replaced the file a moment before is
    never silently overwritten: the caller compares what came out with what it last read.

    Python's ``os.replace`` cannot tell that: a check followed by a rename leaves a window in
    which another process's rename (TensorFlow's own save of the state file) is lost. The
    Linux ``renameat2(RENAME_EXCHANGE)`` call closes it. ``None`` where it is not available
    (another OS, a filesystem without it, ``path`` absent): the caller falls back to
    :func:`write_atomic` with a check.
    """
    if _RENAMEAT2 is None:
        return None

    directory = os.path.dirname(path) or "."
    tmp = _durable_temp(directory, path, data)
    try:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(tmp), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE) != 0:
            return None  # ENOENT, EINVAL (no support here), ...: nothing was exchanged
        _fsync_dir(directory)
        with open(tmp, "rb") as fh:  # what ``path`` held at the instant of the exchange
            return fh.read()
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: not every filesystem allows it)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _durable_temp(directory: str, path: str, data: bytes) -> str:
    """``data`` in a new fsynced temp file next to ``path`` (hidden, ``.NAME.*.tmp``); its path.

    mkstemp creates 0600; the file gets the mode a plain open() would (0666 & ~umask), so a
    serving process running as another user can read state files and manifests."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp
