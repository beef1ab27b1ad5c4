"""A :class:`Location` whose listing and files are ones a poll already fetched (no I/O).

A poll reads the state file and lists a few name prefixes itself (async on a triggerer's loop, or
blocking in a sensor); the core's ``discover`` then judges the steps over this snapshot, in a
thread when the work is big, without touching storage again.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from airflow_tf_ckpt.core.storage.location import Location


def snapshot_location(
    location: Location, entries: list[dict[str, Any]], files: Mapping[str, bytes]
) -> Location:
    """A Location whose ``listdir``/``read_bytes``/``exists`` answer from fetched data (no I/O).

    ``entries`` are fsspec ``ls(detail=True)`` entries of the dir; ``files`` maps basenames of the
    dir to their contents.
    """
    fs = _SnapshotFS(location.fs, location.path, entries, files)
    return Location(fs=fs, path=location.path, url=location.url)


class _SnapshotFS:
    """Just enough of an fsspec filesystem for ``Location.listdir`` / ``read_bytes`` / ``exists``."""

    def __init__(
        self, real: Any, path: str, entries: list[dict[str, Any]], files: Mapping[str, bytes]
    ) -> None:
        self._path = path.rstrip("/")
        self._entries = entries
        self._files = dict(files)
        self.protocol = real.protocol

    def _fetched(self, path: str) -> bytes:
        name = posixpath.basename(path)
        if posixpath.dirname(path).rstrip("/") != self._path or name not in self._files:
            raise FileNotFoundError(path)
        return self._files[name]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[dict[str, Any]]:
        return list(self._entries)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        return self._fetched(path)[start:end]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return {"name": path, "size": len(self._fetched(path)), "type": "file"}

    def exists(self, path: str, **kwargs: Any) -> bool:
        name = posixpath.basename(path)
        return name in self._files or any(
            posixpath.basename(e["name"].rstrip("/")) == name for e in self._entries
        )
