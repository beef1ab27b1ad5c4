"""Evaluation leases: ``PREFIX.lease-OWNER`` files that stop GC from deleting a step under a reader.

A lease is a small JSON file next to the step::

    {"prefix": "ckpt-500", "owner": "eval-1", "acquired": 1717.0, "expires": 2317.0,
     "host": "worker-3", "pid": 4242}

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

import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .discovery import CheckpointDir, CheckpointStep
from .errors import CheckpointError, StorageError
from .naming import LEASE_RE, parse_prefix
from .storage import FileInfo, Location, loads_json

LEASE_INFIX = ".lease-"
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


def lease_name(prefix: str, owner: str) -> str:
    """``PREFIX.lease-OWNER``; the owner must match ``[A-Za-z0-9_.@-]+``."""
    name = f"{prefix}{LEASE_INFIX}{owner}"
    m = LEASE_RE.match(name)
    if not owner or not m or m.group("owner") != owner or m.group("prefix") != prefix:
        raise LeaseError(f"lease owner {owner!r} must be letters, digits and _.@- only")
    return name


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
        text = f"leased by {self.owner} until {_iso(self.expires)}"
        if self.readable:
            return text
        if self.expires >= MAX_EXPIRY:  # an expiry that cannot be read: held until removed
            return f"leased by {self.owner} ({self.problem})"
        return text + " (unreadable lease file, honoured for a day after its mtime)"

    def to_dict(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "owner": self.owner, "acquired": self.acquired,
                "expires": self.expires, "name": self.name, "host": self.host, "pid": self.pid,
                "readable": self.readable, "problem": self.problem}


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
            pid = d.get("pid")
            host = d.get("host") if isinstance(d.get("host"), str) else None
            try:
                expires = _lease_time(d, "expires")
            except ValueError as exc:
                # The holder meant a lease, and when it ends cannot be read: a live lease (never
                # "expired, delete") until someone removes the file.
                return Lease(prefix, owner, base, MAX_EXPIRY, name, host, pid if isinstance(pid, int) else None,
                             readable=False, problem=f"lease file {name}: {exc}: held as live until the "
                             "file is removed")
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


def acquire_lease(loc: Location, prefix: str, owner: str, ttl_s: float, *, now: float | None = None,
                  check_gc: bool = True) -> Lease:
    """Take (or renew) ``owner``'s lease on ``prefix`` for ``ttl_s`` seconds.

    With ``check_gc`` (the default), a live GC intent naming the step makes the lease be taken back
    and :class:`LeaseConflictError` raised: the step is about to disappear, pick another one.
    """
    if not (ttl_s > 0) or ttl_s == float("inf"):
        raise LeaseError(f"lease TTL must be a positive number of seconds, not {ttl_s!r}")
    name = lease_name(prefix, owner)
    t = time.time() if now is None else now
    lease = Lease(prefix, owner, t, t + float(ttl_s), name, socket.gethostname(), os.getpid())
    body = {"prefix": prefix, "owner": owner, "acquired": lease.acquired, "expires": lease.expires,
            "host": lease.host, "pid": lease.pid}
    loc.write_atomic(name, json.dumps(body, sort_keys=True).encode("utf-8"))
    if check_gc:
        intent = read_gc_intent(loc, parse_prefix(prefix).base)
        if intent is not None and prefix in intent.prefixes and intent.expires > t:
            release_lease(loc, prefix, owner)
            raise LeaseConflictError(f"step {prefix} is being deleted by a GC run (started "
                                     f"{_iso(intent.started)}); lease not taken", loc.display(prefix))
    return lease


def release_lease(loc: Location, prefix: str, owner: str) -> bool:
    """Remove ``owner``'s lease on ``prefix``; ``False`` when there was none."""
    name = lease_name(prefix, owner)
    try:
        loc.fs.rm_file(loc.join(name))
        return True
    except FileNotFoundError:
        return False


@contextmanager
def leased(loc: Location, prefix: str, owner: str, ttl_s: float) -> Iterator[Lease]:
    """``with leased(loc, "ckpt-500", "eval-1", 3600): ...`` holds the step for the block.

    The TTL must cover the whole block: nothing renews it in the background (a holder that dies
    must not pin a step forever). Call :func:`acquire_lease` again to extend it.
    """
    lease = acquire_lease(loc, prefix, owner, ttl_s)
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


def read_leases(target: CheckpointDir | Location, names: Iterable[str] | None = None,
                listing: Mapping[str, FileInfo] | None = None) -> dict[str, Lease]:
    """``{lease file name: Lease}`` for the lease files of a dir (one concurrent read of each)."""
    from .metrics import read_files  # shared bulk reader

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


def active_leases(step: CheckpointStep, now: float | None, source: Mapping[str, Lease] | Location) -> list[Lease]:
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


def write_gc_intent(loc: Location, base: str, prefixes: Iterable[str], *, ttl_s: float,
                    started: float, now: float | None = None) -> GcIntent:
    t = time.time() if now is None else now
    intent = GcIntent(base, frozenset(prefixes), started, t + ttl_s)
    body = {"base": base, "prefixes": sorted(intent.prefixes), "started": started,
            "expires": intent.expires, "host": socket.gethostname(), "pid": os.getpid()}
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
        return GcIntent(base, frozenset(str(p) for p in d["prefixes"]), float(d["started"]),
                        float(d["expires"]))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        # We write intents atomically, so garbage here is not ours (or not an intent at all); it
        # cannot say which steps are doomed, so it blocks nothing.
        return None


def clear_gc_intent(loc: Location, base: str) -> None:
    try:
        loc.fs.rm_file(loc.join(gc_intent_name(base)))
    except FileNotFoundError:
        pass
