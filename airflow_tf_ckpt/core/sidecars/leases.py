"""Evaluation leases: ``PREFIX.lease-TOKEN`` files that stop GC from deleting a step under a reader.

A lease is a small JSON file next to the step::

    {"prefix": "ckpt-500", "owner": "eval-1", "acquired": 1717.0, "expires": 2317.0,
     "host": "worker-3", "pid": 4242}

``TOKEN`` is 32 hex digits of the SHA-256 of the owner (:func:`lease_token`); the full owner is
only inside the file. So a lease name never ends like another role's file (``.meta``, ``.index``,
``.metrics.json``...), and two owners never share a file, however long or alike they are. A
release removes the file only when the owner inside is the releaser. Lease files of older
versions, ``PREFIX.lease-OWNER``, are still read and honoured (see :func:`naming.classify`).

GC never deletes a step with an unexpired lease (reason ``leased by OWNER until T``); expired
leases are deleted together with their step. Expiry is absolute unix time written by the lease
holder, so the holder's clock is the one that counts.

Handshake with GC (closes the race between "GC checked for leases" and "GC deleted"):

* GC first writes ``BASE.gc-intent.json`` naming the prefixes it is about to delete, THEN lists the
  dir for leases, and deletes only steps that have none.
* :func:`acquire_lease` first writes the lease, THEN reads ``BASE.gc-intent.json``: when a live
  intent names the step, it removes its lease again and raises :class:`LeaseConflictError`.

Whatever the interleaving, one side sees the other: either GC's listing shows the lease (GC keeps
the step) or the reader sees the intent (the reader backs off). An intent expires (GC refreshes it
while it works), so a GC that died does not block readers for long.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from airflow_tf_ckpt.core.display import iso_utc
from airflow_tf_ckpt.core.errors import CheckpointError, StorageError
from airflow_tf_ckpt.core.formats.naming import LEASE_INFIX, LEASE_RE, parse_prefix
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep
from airflow_tf_ckpt.core.storage.location import FileInfo, Location, loads_json

log = logging.getLogger(__name__)

GC_INTENT_SUFFIX = ".gc-intent.json"
# A lease file that cannot be read is honoured for this long after its mtime (it may be a foreign
# writer's; we never delete a step on the strength of an unreadable lease).
UNREADABLE_LEASE_TTL_S = 24 * 3600.0
MAX_LEASE_BYTES = 1 << 20  # a lease file is a few hundred bytes
MAX_INTENT_BYTES = 64 << 20  # a GC intent lists the steps it deletes
MAX_EXPIRY = 253402300799.0  # 9999-12-31T23:59:59Z: the last time that prints (and fits a datetime)


def _lease_time(d: Mapping[str, Any], key: str) -> float:
    """A lease file's time field, or ValueError: a number (not a string, a bool, NaN or
    infinite) between 1970 and 9999."""
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{key} is {v!r}, not a number of seconds")
    try:
        t = float(v)
    except OverflowError:
        t = float("inf")
    if not 0.0 <= t <= MAX_EXPIRY:
        raise ValueError(f"{key} {v!r} is not a time between 1970 and 9999")
    return t


class LeaseError(CheckpointError):
    """A lease could not be taken (bad owner name, bad TTL, storage error)."""


class LeaseConflictError(LeaseError):
    """The step is being deleted by a GC run: the lease was taken back."""


#: the longest owner name accepted (it is stored in the lease file, not in its name)
MAX_OWNER_CHARS = 4096
_OWNER_RE = re.compile(r"[A-Za-z0-9_.@-]+")


def lease_token(owner: str) -> str:
    """The owner's part of a lease file name: 32 hex digits of its SHA-256."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]


def lease_name(prefix: str, owner: str) -> str:
    """``PREFIX.lease-TOKEN`` (see the module docstring). An owner is 1 to :data:`MAX_OWNER_CHARS`
    letters, digits and ``_.@-``; it is never cut."""
    if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner) or len(owner) > MAX_OWNER_CHARS:
        raise LeaseError(
            f"lease owner {str(owner)[:80]!r} must be 1 to {MAX_OWNER_CHARS} letters, digits and _.@- only"
        )
    if not prefix or "/" in prefix or "\x00" in prefix or "\n" in prefix:
        raise LeaseError(f"cannot lease {prefix!r}: not a checkpoint prefix name")
    return f"{prefix}{LEASE_INFIX}{lease_token(owner)}"


def legacy_lease_name(prefix: str, owner: str) -> str | None:
    """The name older versions gave ``owner``'s lease (``PREFIX.lease-OWNER``), where it had one."""
    name = f"{prefix}{LEASE_INFIX}{owner}"
    m = LEASE_RE.match(name)
    ok = m and m.group("owner") == owner and m.group("prefix") == prefix and len(name.encode()) <= 255
    return name if ok else None  # (a longer one was never written: no file system takes it)


@dataclass(frozen=True)
class Lease:
    """One lease file, as read back."""

    prefix: str
    owner: str
    acquired: float
    expires: float
    name: str
    host: str | None = None
    pid: int | None = None
    readable: bool = True
    problem: str | None = None

    def active(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires

    def describe(self) -> str:
        text = f"leased by {self.owner} until {iso_utc(self.expires)}"
        if self.readable:
            return text
        if self.expires >= MAX_EXPIRY:  # an expiry that cannot be read: held until removed
            return f"leased by {self.owner} ({self.problem})"
        return text + " (unreadable lease file, honoured for a day after its mtime)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "owner": self.owner,
            "acquired": self.acquired,
            "expires": self.expires,
            "name": self.name,
            "host": self.host,
            "pid": self.pid,
            "readable": self.readable,
            "problem": self.problem,
        }


def parse_lease(name: str, data: bytes | Exception | None, info: FileInfo | None = None) -> Lease:
    """A :class:`Lease` from a lease file's name and bytes; unreadable files yield a cautious one."""
    m = LEASE_RE.match(name)
    prefix, owner = (m.group("prefix"), m.group("owner")) if m else (name, "?")
    problem = None
    base = info.mtime if info is not None and info.mtime is not None else time.time()
    if isinstance(data, (bytes, bytearray)):
        try:
            d = loads_json(data)
            if not isinstance(d, dict):
                raise TypeError(f"holds a JSON {type(d).__name__}, not an object")
            if "expires" not in d:
                raise KeyError("expires")
            if isinstance(d.get("owner"), str) and d["owner"]:
                owner = d["owner"]  # the full owner: a hashed name holds only its token
            pid = d.get("pid")
            host = d.get("host") if isinstance(d.get("host"), str) else None
            try:
                expires = _lease_time(d, "expires")
            except ValueError as exc:
                # The holder meant a lease, and when it ends cannot be read: a live lease (never
                # "expired, delete") until someone removes the file.
                return Lease(
                    prefix,
                    owner,
                    base,
                    MAX_EXPIRY,
                    name,
                    host,
                    pid if isinstance(pid, int) else None,
                    readable=False,
                    problem=f"lease file {name}: {exc}: held as live until the file is removed",
                )
            try:
                acquired = _lease_time(d, "acquired") if "acquired" in d else expires
            except ValueError:
                acquired = base
            return Lease(prefix, owner, acquired, expires, name, host, pid if isinstance(pid, int) else None)
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"malformed lease file: {exc}"
    else:
        problem = f"unreadable lease file: {data}"
    return Lease(prefix, owner, base, base + UNREADABLE_LEASE_TTL_S, name, readable=False, problem=problem)


def acquire_lease(
    loc: Location, prefix: str, owner: str, ttl_s: float, *, now: float | None = None, check_gc: bool = True
) -> Lease:
    """Take (or renew) ``owner``'s lease on ``prefix`` for ``ttl_s`` seconds.

    With ``check_gc`` (the default), a live GC intent naming the step makes the lease be taken back
    and :class:`LeaseConflictError` raised: the step is about to disappear, pick another one.
    """
    if not (ttl_s > 0) or ttl_s == float("inf"):
        raise LeaseError(f"lease TTL must be a positive number of seconds, not {ttl_s!r}")
    name = lease_name(prefix, owner)
    t = time.time() if now is None else now
    lease = Lease(prefix, owner, t, t + float(ttl_s), name, socket.gethostname(), os.getpid())
    body = {
        "prefix": prefix,
        "owner": owner,
        "acquired": lease.acquired,
        "expires": lease.expires,
        "host": lease.host,
        "pid": lease.pid,
    }
    loc.write_atomic(name, json.dumps(body, sort_keys=True).encode("utf-8"))
    if check_gc:
        intent = read_gc_intent(loc, parse_prefix(prefix).base)
        if intent is not None and prefix in intent.prefixes and intent.expires > t:
            release_lease(loc, prefix, owner)
            raise LeaseConflictError(
                f"step {prefix} is being deleted by a GC run (started "
                f"{iso_utc(intent.started)}); lease not taken",
                loc.display(prefix),
            )
    return lease


def release_lease(loc: Location, prefix: str, owner: str) -> bool:
    """Remove ``owner``'s lease on ``prefix`` (and its lease under the older name, see the module
    docstring); ``False`` when there was none. A file that holds another owner's lease is left."""
    removed = False
    for name in (lease_name(prefix, owner), legacy_lease_name(prefix, owner)):
        if name is None:
            continue
        try:
            data = loc.read_capped(name, MAX_LEASE_BYTES, "a lease file")
        except FileNotFoundError:
            continue
        held = parse_lease(name, data)
        if held.readable and held.owner != owner:
            continue  # someone else's (an old name shared by owners cut to the same length)
        try:
            loc.fs.rm_file(loc.join(name))
            removed = True
        except FileNotFoundError:
            pass
    return removed


@contextmanager
def leased(
    loc: Location, prefix: str, owner: str, ttl_s: float, *, supersedes: Sequence[str] = ()
) -> Iterator[Lease]:
    """``with leased(loc, "ckpt-500", "eval-1", 3600): ...`` holds the step for the block.

    The TTL must cover the whole block: nothing renews it in the background (a holder that dies
    must not pin a step forever). Call :func:`acquire_lease` again to extend it. Once this lease is
    held, the leases of the ``supersedes`` owners (dead earlier tries of the same task) are removed,
    so the step is never unleased in between.
    """
    lease = acquire_lease(loc, prefix, owner, ttl_s)
    for old in supersedes:
        try:
            if release_lease(loc, prefix, old):
                log.info("took over the lease %r left on %s", old, prefix)
        except (OSError, StorageError) as exc:
            log.warning("could not remove the lease %r left on %s: %s", old, prefix, exc)
    try:
        yield lease
    finally:
        try:
            release_lease(loc, prefix, owner)
        except (OSError, StorageError):
            pass  # it expires on its own


def lease_files(cdir: CheckpointDir) -> list[FileInfo]:
    """Every lease file of the steps of ``cdir`` plus lease files whose step has no files left."""
    out: dict[str, FileInfo] = {}
    for s in cdir.steps:
        for f in s.leases:
            out[f.name] = f
    for name, info in cdir.listing.items():
        if LEASE_INFIX in name and LEASE_RE.match(name):
            out.setdefault(name, info)
    return list(out.values())


def read_leases(
    target: CheckpointDir | Location,
    names: Iterable[str] | None = None,
    listing: Mapping[str, FileInfo] | None = None,
) -> dict[str, Lease]:
    """``{lease file name: Lease}`` for the lease files of a dir (one concurrent read of each)."""
    from airflow_tf_ckpt.core.sidecars.metrics import read_files  # shared bulk reader

    if isinstance(target, CheckpointDir):
        loc = target.location
        infos = {f.name: f for f in lease_files(target)}
    else:
        loc = target
        listing = listing if listing is not None else loc.listdir()
        infos = {n: i for n, i in listing.items() if LEASE_INFIX in n and LEASE_RE.match(n)}
    if names is not None:
        wanted = set(names)
        infos = {n: i for n, i in infos.items() if n in wanted}
    sizes = {n: i.size for n, i in infos.items() if i is not None} if not loc.local else None
    raw = read_files(loc, sorted(infos), cap=MAX_LEASE_BYTES, what="a lease file", sizes=sizes)
    out: dict[str, Lease] = {}
    for n, data in raw.items():
        if isinstance(data, FileNotFoundError):
            continue  # released since the listing
        out[n] = parse_lease(n, data, infos.get(n))
    return out


def active_leases(
    step: CheckpointStep, now: float | None, source: Mapping[str, Lease] | Location
) -> list[Lease]:
    """The unexpired leases on ``step`` at ``now``.

    ``source`` is either the result of :func:`read_leases` (the fast path GC uses) or the step's
    :class:`Location`, in which case the step's lease files are read now.
    """
    t = time.time() if now is None else now
    names = [f.name for f in step.leases]
    if not names:
        return []
    if isinstance(source, Location):
        infos = {f.name: f for f in step.leases}
        source = read_leases(source, names, listing=infos)
    return [lease for n in names if (lease := source.get(n)) is not None and lease.active(t)]


# --------------------------------------------------------------------------------------------
# GC intent (the other half of the handshake)


@dataclass(frozen=True)
class GcIntent:
    base: str
    prefixes: frozenset[str]
    started: float
    expires: float


def gc_intent_name(base: str) -> str:
    return f"{base}{GC_INTENT_SUFFIX}"


def write_gc_intent(
    loc: Location,
    base: str,
    prefixes: Iterable[str],
    *,
    ttl_s: float,
    started: float,
    now: float | None = None,
) -> GcIntent:
    t = time.time() if now is None else now
    intent = GcIntent(base, frozenset(prefixes), started, t + ttl_s)
    body = {
        "base": base,
        "prefixes": sorted(intent.prefixes),
        "started": started,
        "expires": intent.expires,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    loc.write_atomic(gc_intent_name(base), json.dumps(body, sort_keys=True).encode("utf-8"))
    return intent


def read_gc_intent(loc: Location, base: str) -> GcIntent | None:
    """The GC intent for ``base`` (live or expired); ``None`` when there is none or it is garbage."""
    try:
        data = loc.read_capped(gc_intent_name(base), MAX_INTENT_BYTES, "a GC intent")
    except (FileNotFoundError, StorageError):
        return None  # not ours (we write regular files, atomically): it blocks nothing, as garbage
    try:
        d = loads_json(data)
        return GcIntent(
            base, frozenset(str(p) for p in d["prefixes"]), float(d["started"]), float(d["expires"])
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        # We write intents atomically, so garbage here is not ours (or not an intent at all); it
        # cannot say which steps are doomed, so it blocks nothing.
        return None


def clear_gc_intent(loc: Location, base: str) -> None:
    try:
        loc.fs.rm_file(loc.join(gc_intent_name(base)))
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------
# the GC lock: one GC run per dir at a time


GC_LOCK_NAME = "tf-ckpt.gc-lock.json"


class GcBusyError(CheckpointError):
    """Another GC run holds the dir's GC lock (or took it over from this one)."""


class GcLock:
    """The GC lock of one dir, held: see :func:`acquire_gc_lock`."""

    def __init__(self, loc: Location, ttl_s: float, fd: int | None = None, generation: int = 0) -> None:
        self.loc, self.ttl_s, self.fd, self.generation = loc, ttl_s, fd, generation

    def refresh(self) -> None:
        """Push the expiry on (``gs://``); raises :class:`GcBusyError` when the lock was lost."""
        from airflow_tf_ckpt.core.storage.gcs import is_gcs, upload_if_generation

        if self.fd is not None or not is_gcs(self.loc.fs):
            return
        gen = upload_if_generation(
            self.loc.fs, self.loc.join(GC_LOCK_NAME), _lock_body(self.ttl_s), self.generation
        )
        if gen is None:
            raise GcBusyError(
                "another GC run took over this dir's GC lock (this run was too slow to renew it); stopped",
                self.loc.display(GC_LOCK_NAME),
            )
        self.generation = gen

    def release(self) -> None:
        from airflow_tf_ckpt.core.storage.gcs import delete_if_generation, is_gcs

        if self.fd is not None:
            try:  # still ours (identity checked when taken), so removing it is safe
                os.unlink(self.loc.join(GC_LOCK_NAME))
            except FileNotFoundError:
                pass
            os.close(self.fd)  # releases the flock
            self.fd = None
        elif is_gcs(self.loc.fs):
            delete_if_generation(self.loc.fs, self.loc.join(GC_LOCK_NAME), self.generation)
        else:
            _PROCESS_LOCKS.pop(self.loc.join(GC_LOCK_NAME), None)


_PROCESS_LOCKS: dict[str, float] = {}


def _lock_body(ttl_s: float) -> bytes:
    t = time.time()
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "acquired": t, "expires": t + ttl_s},
        sort_keys=True,
    ).encode("utf-8")


def _holder(data: bytes | None) -> tuple[str, bool]:
    """Who holds a lock (for the message) and whether the lock is stale (expired, or its process
    is gone on this host)."""
    try:
        d = json.loads((data or b"").decode("utf-8"))
        host, pid, expires = str(d["host"]), int(d["pid"]), float(d["expires"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return "an unreadable lock file", False
    dead = False
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead = True
        except PermissionError:
            pass
    return f"{host} pid {pid} until {iso_utc(expires)}", dead or not (time.time() < expires)


def _try_local(loc: Location) -> tuple[GcLock | None, str]:
    import fcntl

    path = loc.join(GC_LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:  # a symlink planted there, a dir, no permission
        raise StorageError(
            f"cannot open the GC lock file: {exc.strerror}", loc.display(GC_LOCK_NAME)
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            with open(path, "rb") as fh:
                return None, _holder(fh.read(4096))[0]
        except OSError:
            return None, "another process"
    try:
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # released (and removed) between our open and our flock: try again
        os.close(fd)
        return None, ""
    os.ftruncate(fd, 0)
    os.pwrite(fd, _lock_body(0.0), 0)
    return GcLock(loc, 0.0, fd=fd), ""


def _try_gcs(loc: Location, ttl_s: float) -> tuple[GcLock | None, str]:
    from airflow_tf_ckpt.core.storage.gcs import read_with_generation, upload_if_generation

    path = loc.join(GC_LOCK_NAME)
    gen = upload_if_generation(loc.fs, path, _lock_body(ttl_s), 0)  # create only
    if gen is not None:
        return GcLock(loc, ttl_s, generation=gen), ""
    data, current = read_with_generation(loc.fs, path, MAX_LEASE_BYTES, "the GC lock")
    if data is None:
        return None, ""  # released meanwhile: try again
    who, stale = _holder(data)
    if stale:  # a run that died: take over, unless someone else does first
        gen = upload_if_generation(loc.fs, path, _lock_body(ttl_s), current)
        if gen is not None:
            return GcLock(loc, ttl_s, generation=gen), ""
    return None, who


def acquire_gc_lock(loc: Location, *, ttl_s: float = 600.0, wait_s: float = 0.0) -> GcLock:
    """Take the dir's GC lock, waiting up to ``wait_s`` for a running GC to finish; raises
    :class:`GcBusyError` naming the holder.

    Locally it is an ``flock`` of ``tf-ckpt.gc-lock.json`` (freed by the kernel when its holder
    dies). On ``gs://`` the object is created with ``ifGenerationMatch=0``; it expires after
    ``ttl_s`` unless renewed (:meth:`GcLock.refresh`), and a lock whose holder died on this host,
    or expired, is taken over with a generation precondition. Other stores: within this process.
    """
    from airflow_tf_ckpt.core.storage.gcs import is_gcs

    deadline = time.monotonic() + wait_s
    while True:
        if loc.local:
            os.makedirs(loc.path, exist_ok=True)
            lock, who = _try_local(loc)
        elif is_gcs(loc.fs):
            lock, who = _try_gcs(loc, ttl_s)
        else:
            mark = time.time()
            mine = _PROCESS_LOCKS.setdefault(loc.join(GC_LOCK_NAME), mark) is mark  # atomic
            lock, who = (GcLock(loc, ttl_s), "") if mine else (None, "another thread of this process")
        if lock is not None:
            return lock
        if who and time.monotonic() >= deadline:
            raise GcBusyError(
                f"another GC run is working on this dir ({who}); try again when it is done",
                loc.display(GC_LOCK_NAME),
            )
        time.sleep(0.05 if not who else 0.2)
