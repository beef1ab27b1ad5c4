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
from typing import Any, Literal

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
        """Remove ``paths``; returns ``(deleted, missing, refused)``.

        Each path is checked again first (:meth:`precheck`): a refused one is never handed to a
        transport. Local paths are then re-checked once more, on the root's descriptor, right
        before each unlink; object-store paths go in one batch (``gs://``) or one ``fs.rm``.
        """
        ok_paths, refused = self._split_refused(paths)
        if not ok_paths:
            return [], [], refused
        if self.loc.local:
            deleted, missing, refused_now = self._delete_local(ok_paths)
            return deleted, missing, refused + refused_now
        if self.hook:
            for p in ok_paths:
                self.hook("delete", p)
        if is_gcs(self.loc.fs):
            deleted, missing = self._delete_gcs(ok_paths)
        else:
            deleted, missing = self._delete_fsspec(ok_paths)
        return [self.display(p) for p in deleted], [self.display(p) for p in missing], refused

    def _split_refused(self, paths: list[str]) -> tuple[list[str], list[Refusal]]:
        """The paths that pass :meth:`precheck` (in order), and the refusals of the others."""
        ok_paths: list[str] = []
        refused: list[Refusal] = []
        for p in paths:
            bad = self.precheck([p])
            if bad:
                refused += bad
            else:
                ok_paths.append(p)
        return ok_paths, refused

    def _delete_local(self, paths: list[str]) -> tuple[list[str], list[str], list[Refusal]]:
        """Unlink each path through the root's descriptor (the hook runs before each one)."""
        fd = self._root_fd()
        deleted: list[str] = []
        missing: list[str] = []
        refused: list[Refusal] = []
        for p in paths:
            if self.hook:
                self.hook("delete", p)
            outcome = self._unlink_one(fd, p)
            if isinstance(outcome, Refusal):
                refused.append(outcome)
            elif outcome == "missing":
                missing.append(p)
            else:
                deleted.append(p)
        return deleted, missing, refused

    def _unlink_one(self, fd: int, path: str) -> Refusal | Literal["deleted", "missing"]:
        """``lstat`` the name under the root's descriptor, refuse a dir or an escaping symlink,
        else unlink it: no path is resolved again between this check and the removal."""
        name = os.path.basename(path)
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return "missing"
        why = self._lstat_problem(st, name)
        if why:
            return Refusal(path, why)
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            return "missing"
        return "deleted"

    def _lstat_problem(self, st: os.stat_result, name: str) -> str | None:
        """Why the entry ``st`` of the root must not be unlinked (``None``: a plain file)."""
        if stat.S_ISDIR(st.st_mode):
            return "is a directory: not removed"
        if stat.S_ISLNK(st.st_mode):
            return symlink_problem(self.loc, name, self.real_root)
        return None

    def _delete_gcs(self, paths: list[str]) -> tuple[list[str], list[str]]:
        """JSON API batch deletes. Like ``fs.rm(list)``, any failure (other than a missing
        object) fails the call, after every batch ran; the error names each failed path."""
        deleted: list[str] = []
        missing: list[str] = []
        errors: list[tuple[str, BaseException]] = []
        for p, r in zip(paths, batch_delete(self.loc.fs, paths), strict=True):
            if r is None:
                deleted.append(p)
            elif isinstance(r, FileNotFoundError):
                missing.append(p)
            else:
                errors.append((p, r))
        if errors:
            shown = "; ".join(f"{self.display(p)}: {e}" for p, e in errors[:10])
            more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
            raise OSError(f"{len(errors)} of {len(paths)} deletions failed: {shown}{more}")
        return deleted, missing

    def _delete_fsspec(self, paths: list[str]) -> tuple[list[str], list[str]]:
        """One ``fs.rm(list)``; some stores (``memory://``) stop at the first missing path, so
        then go one by one and report the missing ones."""
        fs = self.loc.fs
        try:
            fs.rm(paths)
            return list(paths), []
        except FileNotFoundError:
            pass
        deleted: list[str] = []
        missing: list[str] = []
        for p in paths:
            try:
                fs.rm_file(p)
                deleted.append(p)
            except FileNotFoundError:
                missing.append(p)
        return deleted, missing
