"""The destination lock, ``DEST/.promote.lock``: one promotion at a time per destination.

Created exclusively (``O_EXCL`` locally, ``ifGenerationMatch=0`` on GCS), holding the holder's
host, pid (and the pid's start time, so a reused pid is not mistaken for the holder) and a
``heartbeat`` time that a thread refreshes every ``lock_ttl / 5`` while the promotion runs. A lock
is broken when its holder is on this host and no longer running, or when its heartbeat is older
than its ``ttl`` (15 min by default): a promotion killed with SIGKILL, or on a worker that
vanished, no longer blocks the rerun that Airflow's retry makes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_tf_ckpt.core.errors import StorageError
from airflow_tf_ckpt.core.promote.manifest import PromotionError
from airflow_tf_ckpt.core.storage.location import (
    GCS_PROTOCOLS,
    Location,
    loads_json,
    read_bounded,
    write_atomic,
)

LOCK_NAME = ".promote.lock"
DEFAULT_LOCK_TTL = 15 * 60.0  # a lock whose heartbeat is this old is broken


def _lock_path(dst: Location) -> str:
    return dst.join(LOCK_NAME)


def _read_lock(dst: Location, path: str) -> Any:
    """The lock's JSON, read bounded (a FIFO or a huge file in its place is a ValueError:
    "cannot be read", as garbage is)."""
    try:
        return loads_json(read_bounded(dst.fs, path, dst.display(LOCK_NAME), 1 << 20, "a promotion lock"))
    except StorageError as exc:
        raise ValueError(str(exc)) from exc


def _pid_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _lock_body(token: str, ttl: float, created: float) -> bytes:
    return json.dumps(
        {
            "token": token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()),
            "created": created,
            "heartbeat": time.time(),
            "ttl": ttl,
        }
    ).encode()


def lock_problem(held: dict[str, Any], ttl: float, now: float | None = None) -> str | None:
    """Why the lock ``held`` is stale (its holder is gone), or ``None`` while it is live."""
    now = time.time() if now is None else now
    beat = float(held.get("heartbeat", held.get("created", 0)))
    limit = float(held.get("ttl", ttl))
    if now - beat > limit:
        return f"its heartbeat is {int(now - beat)} s old (ttl {int(limit)} s)"
    pid = held.get("pid")
    if held.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its holder, pid {pid} on this host, is no longer running"
        except PermissionError:
            return None  # alive, another user's
        start = _pid_start(pid)
        if held.get("pid_start") and start and start != held["pid_start"]:
            return f"its holder, pid {pid} on this host, is gone (the pid was reused)"
    return None


def _acquire_lock(dst: Location, ttl: float) -> str:
    """Create ``DEST/.promote.lock`` exclusively; break it when its holder is gone (see above)."""
    token = uuid.uuid4().hex
    body = _lock_body(token, ttl, time.time())
    path = _lock_path(dst)
    for _attempt in range(2):
        try:
            if dst.local:
                os.makedirs(dst.path, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
            elif dst.protocol in GCS_PROTOCOLS:
                dst.fs.pipe_file(path, body, mode="create")  # ifGenerationMatch=0
            else:
                if dst.fs.exists(path):
                    raise FileExistsError(path)
                dst.fs.pipe_file(path, body)
            return token
        except FileExistsError:
            try:
                held = _read_lock(dst, path)
                if held.get("token") == token:
                    # our own create: it took effect but the answer was lost, and the client's
                    # retry then found the object it had just written
                    return token
                stale = lock_problem(held, ttl)
            except (OSError, ValueError, TypeError, AttributeError):
                held, stale = {}, "it cannot be read"
            if stale is None:
                age = time.time() - float(held.get("created", 0))
                raise PromotionError(
                    f"another promotion holds the lock (host {held.get('host')}, pid {held.get('pid')}, "
                    f"started {int(age)} s ago, alive: heartbeat within {int(float(held.get('ttl', ttl)))} s); "
                    f"wait for it, or remove {LOCK_NAME} if you know it is dead",
                    dst.display(),
                ) from None
            try:
                dst.fs.rm_file(path)
            except FileNotFoundError:
                pass
    raise PromotionError("could not take the promotion lock", dst.display())


class _Heartbeat:
    """Refreshes the lock's ``heartbeat`` every ``ttl / 5`` until stopped (a daemon thread)."""

    def __init__(self, dst: Location, token: str, ttl: float) -> None:
        self.dst, self.token, self.ttl = dst, token, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promote-lock-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        path = _lock_path(self.dst)
        while not self._stop.wait(max(self.ttl / 5, 0.05)):
            try:
                held = _read_lock(self.dst, path)
                if held.get("token") != self.token:
                    return  # broken by someone who judged us dead: nothing of ours to refresh
                write_atomic(self.dst.fs, path, _lock_body(self.token, self.ttl, float(held["created"])))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # try again at the next beat; the ttl leaves room for a few misses


def _release_lock(dst: Location, token: str) -> None:
    path = _lock_path(dst)
    try:
        held = _read_lock(dst, path)
        if held.get("token") == token:
            dst.fs.rm_file(path)
    except (OSError, ValueError):
        pass


@contextmanager
def destination_lock(dst: Location, ttl: float) -> Iterator[None]:
    """Hold ``DEST/.promote.lock`` (with its heartbeat) for the body of the ``with``."""
    token = _acquire_lock(dst, ttl)
    heartbeat = _Heartbeat(dst, token, ttl)
    try:
        yield
    finally:
        heartbeat.stop()
        _release_lock(dst, token)
