"""Deletion safety: nothing outside the managed root is ever removed, whatever a state file says.

Every path that GC deletes comes from the dir's own listing, never from the state file, so ``..``,
absolute paths elsewhere and other buckets cannot even become candidates (``state.resolve_path``
refuses them and discovery reports them). This module is the last line: each path is checked again
right before it is removed.

* Every path must be a direct child of the root, with a plain file name (no ``/``, ``..``, NUL).
* Local: the root is resolved with ``os.path.realpath`` once per run and must not have changed
  since planning (a root symlink swapped to another dir between plan and apply refuses everything).
  Files are removed with ``os.unlink(name, dir_fd=ROOT_FD)`` on a descriptor of that resolved dir,
  so no path is re-resolved between the check and the removal. A symlink whose target resolves
  outside the root is never removed (nothing is removed "through" it, not even the link: the
  operator should see it); a directory is never removed.
* Object stores: the path must be ``ROOT/NAME``; names holding glob characters (``*?[``) are
  refused because fsspec's ``rm`` expands globs and could remove other objects.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_tf_ckpt.core.storage.gcs import batch_delete, is_gcs
from airflow_tf_ckpt.core.storage.location import Location

GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Refusal:
    """A path that was not deleted (or a state-file entry that was not followed), and why."""

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def root_realpath(loc: Location) -> str | None:
    """The resolved root of a local dir (``None`` for object stores)."""
    return os.path.realpath(loc.path) if loc.local else None


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def name_problem(name: str, local: bool) -> str | None:
    """Why a file name cannot be deleted from a root (``None`` when it is a plain name)."""
    if not name or name in (".", ".."):
        return "not a file name"
    if "/" in name or "\x00" in name or (os.sep != "/" and os.sep in name):
        return "name holds a path separator or NUL: not a direct child of the checkpoint dir"
    if not local and GLOB_CHARS.intersection(name):
        return "name holds glob characters (*?[); fsspec would expand them, so it is not removed"
    return None


def check_name(loc: Location, name: str) -> str | None:
    """Why a file name cannot be deleted from the root, or ``None`` when it is a plain name."""
    return name_problem(name, loc.local)


def check_path(loc: Location, path: str) -> str | None:
    """Why ``path`` must not be deleted, or ``None`` when it is a plain file directly in the root.

    Pure string checks (no I/O); local symlinks are checked by :func:`symlink_problem` and again
    by :class:`Deleter` at removal time.
    """
    root = loc.path.rstrip("/") or "/"
    if loc.local:
        parent = os.path.dirname(os.path.normpath(path))
        if os.path.normpath(parent) != os.path.normpath(root):
            return f"outside the checkpoint dir {root}"
        return check_name(loc, os.path.basename(path))
    norm = posixpath.normpath(path) if path else path
    if norm != path.rstrip("/") or posixpath.dirname(norm) != root:
        return f"outside the checkpoint dir {loc.display()}"
    return check_name(loc, posixpath.basename(norm))


def symlink_problem(loc: Location, name: str, real_root: str | None = None) -> str | None:
    """For a local symlink in the root: why nothing may be removed through it (else ``None``)."""
    if not loc.local:
        return None
    real_root = real_root or os.path.realpath(loc.path)
    path = os.path.join(real_root, name)
    try:
        if not os.path.islink(path):
            return None
        target = os.readlink(path)
    except OSError as exc:
        return f"cannot inspect symlink: {exc}"
    resolved = os.path.realpath(path)
    if not _inside(resolved, real_root) or resolved == real_root:
        return (
            f"is a symlink to {target!r} (resolves to {resolved}), outside the checkpoint dir "
            f"{real_root}: nothing is removed through it"
        )
    if os.path.isdir(resolved):
        return f"is a symlink to a directory ({resolved}): not removed"
    return None


Hook = Callable[..., Any]


class Deleter:
    """Removes files directly in one root, re-checking each path immediately before removal.

    ``delete(paths)`` returns ``(deleted, missing, refused)``. Local dirs unlink one file at a time
    through a descriptor of the resolved root; ``gs://`` (Google or an emulator) gets JSON API batch
    requests (:func:`airflow_tf_ckpt.core.storage.gcs.batch_delete`: 100 objects each, several in flight); other object stores
    one ``fs.rm(list)`` per call.
    """

    def __init__(
        self, loc: Location, expected_real_root: str | None = None, hook: Hook | None = None
    ) -> None:
        self.loc = loc
        self.hook = hook
        self._fd: int | None = None
        self.real_root: str | None = None
        self.root_problem: str | None = None
        if loc.local:
            self.real_root = os.path.realpath(loc.path)
            if expected_real_root is not None and self.real_root != expected_real_root:
                self.root_problem = (
                    f"the checkpoint dir now resolves to {self.real_root}, but the plan "
                    f"was made for {expected_real_root}: nothing is deleted"
                )

    def __enter__(self) -> Deleter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _root_fd(self) -> int:
        if self._fd is None:
            assert self.real_root is not None
            flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
            self._fd = os.open(self.real_root, flags)
        return self._fd

    def precheck(self, paths: Iterable[str]) -> list[Refusal]:
        """Refusals for a group of paths (a step is deleted entirely or not at all)."""
        out = []
        for p in paths:
            if self.root_problem:
                out.append(Refusal(self.loc.display(os.path.basename(p)), self.root_problem))
                continue
            why = check_path(self.loc, p)
            if why is None and self.loc.local:
                why = symlink_problem(self.loc, os.path.basename(p), self.real_root)
            if why:
                out.append(Refusal(self.display(p), why))
        return out

    def display(self, path: str) -> str:
        if self.loc.local:
            return path
        return self.loc.display(posixpath.basename(path))

    def delete(self, paths: list[str]) -> tuple[list[str], list[str], list[Refusal]]:
        deleted: list[str] = []
        missing: list[str] = []
        refused: list[Refusal] = []
        ok_paths = []
        for p in paths:
            bad = self.precheck([p])
            if bad:
                refused += bad
            else:
                ok_paths.append(p)
        if not ok_paths:
            return deleted, missing, refused
        if self.loc.local:
            fd = self._root_fd()
            for p in ok_paths:
                name = os.path.basename(p)
                if self.hook:
                    self.hook("delete", p)
                try:
                    st = os.lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    missing.append(p)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    refused.append(Refusal(p, "is a directory: not removed"))
                    continue
                if stat.S_ISLNK(st.st_mode):
                    why = symlink_problem(self.loc, name, self.real_root)
                    if why:
                        refused.append(Refusal(p, why))
                        continue
                try:
                    os.unlink(name, dir_fd=fd)
                    deleted.append(p)
                except FileNotFoundError:
                    missing.append(p)
            return deleted, missing, refused
        if self.hook:
            for p in ok_paths:
                self.hook("delete", p)
        fs = self.loc.fs
        if is_gcs(fs):
            errors: list[tuple[str, BaseException]] = []
            for p, r in zip(ok_paths, batch_delete(fs, ok_paths), strict=True):
                if r is None:
                    deleted.append(p)
                elif isinstance(r, FileNotFoundError):
                    missing.append(p)
                else:
                    errors.append((p, r))
            if errors:  # like fs.rm(list), a failure fails the call; each failed path is named
                shown = "; ".join(f"{self.display(p)}: {e}" for p, e in errors[:10])
                more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
                raise OSError(f"{len(errors)} of {len(ok_paths)} deletions failed: {shown}{more}")
            return [self.display(p) for p in deleted], [self.display(p) for p in missing], refused
        try:
            fs.rm(ok_paths)
            deleted += ok_paths
        except FileNotFoundError:
            # some implementations (memory://) stop at the first missing path: go one by one
            for p in ok_paths:
                try:
                    fs.rm_file(p)
                    deleted.append(p)
                except FileNotFoundError:
                    missing.append(p)
        return [self.display(p) for p in deleted], [self.display(p) for p in missing], refused
