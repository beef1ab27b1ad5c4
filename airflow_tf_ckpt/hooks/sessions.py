"""The session pool: one async gcsfs instance (one aiohttp session) per event loop and options.

A triggerer runs up to 1000 triggers in one loop: they share one aiohttp session (and connection
pool) per set of options instead of one each. Also the cache of sync filesystems that async callers
already built (their constructor may do I/O the first time, so the event loop asks here first).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow_tf_ckpt.core.storage.location import emulator_endpoint


@dataclass
class SharedFs:
    """One async gcsfs instance of one loop, and how many users hold it."""

    loop: asyncio.AbstractEventLoop
    key: str
    fs: Any
    refs: int = 0


class SharedAsyncFs:
    """Async gcsfs instances shared by every trigger of a loop that uses the same options.

    A triggerer runs up to 1000 triggers in one loop: one aiohttp session (and connection pool)
    for all of them, instead of one per trigger. fsspec's own instance cache is skipped because an
    async instance is bound to its loop, and ``dag.test()`` runs each trigger in a fresh loop.
    The session is closed when the last user of a loop releases it.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], SharedFs] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    @staticmethod
    def key(opts: Mapping[str, Any]) -> str:
        """A digest of fsspec options: credentials objects by identity, the rest by value (no secret kept)."""
        parts = {
            k: (f"{type(v).__name__}@{id(v)}" if k == "token" and not isinstance(v, str) else v)
            for k, v in opts.items()
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    async def acquire(self, loop: asyncio.AbstractEventLoop, opts: Mapping[str, Any]) -> SharedFs:
        key = (id(loop), self.key(opts))
        lock = self._locks.setdefault(id(loop), asyncio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if entry is None or entry.loop is not loop:
                fs = await asyncio.to_thread(make_async_gcsfs, loop, dict(opts))
                # gcsfs's coroutine that opens its aiohttp session (fsspec's async naming; gcsfs
                # asks for it to be awaited before the public ``fs.session`` is read): opened here,
                # on this loop, so release() can close it even if no request was made
                await fs._set_session()
                entry = SharedFs(loop=loop, key=key[1], fs=fs)
                self._entries[key] = entry
            entry.refs += 1
            return entry

    async def release(self, entry: SharedFs) -> None:
        entry.refs -= 1
        if entry.refs > 0:
            return
        key = (id(entry.loop), entry.key)
        if self._entries.get(key) is entry:
            del self._entries[key]
        session = entry.fs.session  # gcsfs's public view of the aiohttp session acquire() made
        if session is not None and not session.closed:
            try:
                await session.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


def make_async_gcsfs(loop: asyncio.AbstractEventLoop, opts: dict[str, Any]) -> Any:
    """The plain ``gcsfs.core.GCSFileSystem`` (no gRPC bucket-type probe) bound to ``loop``."""
    from gcsfs.core import GCSFileSystem

    endpoint = emulator_endpoint(opts)
    if endpoint:
        opts["endpoint_url"] = endpoint
        opts.setdefault("project", "test")
    return GCSFileSystem(asynchronous=True, loop=loop, skip_instance_cache=True, **opts)


SHARED = SharedAsyncFs()
# Sync filesystems already built for async callers, by options (fsspec caches them too, but its
# constructor may do I/O the first time, so the event loop asks here first).
SYNC_FS: dict[str, Any] = {}
