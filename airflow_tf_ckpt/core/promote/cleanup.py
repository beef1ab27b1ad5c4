"""Destination safety: what a promotion may write, and what of an earlier one it may delete.

The destination's manifest is input (anyone who can write DEST can edit it), so cleanup trusts no
name it lists: of a recorded prefix (the manifest's own, and each retained group's), only plain
files directly in DEST that parse as that prefix's checkpoint files are candidates, and one is
deleted only while its size AND CRC32C are still the ones recorded when a promotion wrote it. A
pointer file (state file, ``PROMOTED.json``, ``aliases/``, the lock) is never deleted, and neither
is a foreign file, a checkpoint file of another prefix, or one whose bytes changed since. No write
goes through a symlink (:func:`check_dest_writable`), so never outside DEST.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from airflow_tf_ckpt.core.formats.naming import classify
from airflow_tf_ckpt.core.formats.state import STATE_FILENAME
from airflow_tf_ckpt.core.promote.copy import crc_of
from airflow_tf_ckpt.core.promote.lock import LOCK_NAME
from airflow_tf_ckpt.core.promote.manifest import (
    ALIASES_DIR,
    MANIFEST_NAME,
    PromotedFile,
    PromotionError,
    PromotionManifest,
)
from airflow_tf_ckpt.core.storage.location import FileInfo, Location
from airflow_tf_ckpt.core.storage.safety import name_problem

#: the destination's own files: never deleted by cleanup, whatever a manifest lists
POINTER_NAMES = frozenset({STATE_FILENAME, MANIFEST_NAME, ALIASES_DIR, LOCK_NAME})
#: the roles of the files a promotion writes (a step's own files and its sidecars)
_STEP_ROLES = frozenset({"index", "data", "meta", "metrics", "v1", "v1_shard"})


def _is_step_file(name: str, prefix: str) -> bool:
    """``name`` is a file that a promotion of ``prefix`` writes: a plain name directly in DEST
    that parses as one of that prefix's checkpoint files (never a pointer file, never anything
    else, whatever a manifest says)."""
    if not isinstance(name, str) or name in POINTER_NAMES or name_problem(name, local=False):
        return False
    role = classify(name)
    return role is not None and role.role in _STEP_ROLES and role.prefix == prefix


def _group_prefix(files: list[PromotedFile]) -> str | None:
    """The one prefix whose checkpoint files a file list holds; ``None`` when not exactly one."""
    found = {r.prefix for f in files if (r := classify(f.name)) is not None and r.role in _STEP_ROLES}
    return found.pop() if len(found) == 1 else None


def step_files(prefix: str | None, files: list[PromotedFile]) -> list[PromotedFile]:
    return [f for f in files if prefix is not None and _is_step_file(f.name, prefix)]


def cleanup_candidates(m: PromotionManifest) -> dict[str, PromotedFile]:
    """The files of an earlier promotion that a later one may delete: for each prefix the
    manifest records (its own, and each retained group's), the files that parse as that prefix's
    checkpoint files. Everything else a (possibly hostile) manifest lists is ignored."""
    out = {f.name: f for f in step_files(m.prefix, m.files)}
    for key, files in m.retained.items():
        prefix = key.split(":", 1)[1] if key.startswith("previous:") else _group_prefix(files)
        out.update({f.name: f for f in step_files(prefix, files)})
    return out


def _still_recorded(dst: Location, info: FileInfo | None, rec: PromotedFile) -> bool:
    """The file in DEST is a plain file with the bytes a promotion recorded writing: its size,
    then its CRC32C (the server's on GCS; read locally). A file someone replaced, or one a
    manifest claims with a record it did not get from writing it, is not ours to delete."""
    if info is None or info.is_dir or info.is_link or info.size != rec.size:
        return False
    try:
        return crc_of(dst, rec.name) == rec.crc32c
    except OSError:
        return False


def remove_recorded(dst: Location, names: list[str], records: dict[str, PromotedFile]) -> list[str]:
    """Delete these files of earlier promotions, each only while it still holds the recorded
    bytes (:func:`_still_recorded`). A failure is not fatal: the promotion is already published,
    and the file is merely left behind."""
    listing = dst.listdir()
    gone = []
    for name in names:
        if not _still_recorded(dst, listing.get(name), records[name]):
            continue
        try:
            dst.fs.rm_file(dst.join(name))
            gone.append(name)
        except FileNotFoundError:
            pass
        except OSError:
            continue  # e.g. permission denied: left behind, the promotion stands
    return gone


def check_dest_writable(dst: Location, names: Iterable[str] = ()) -> None:
    """Refuse (:class:`PromotionError`) a local DEST that is a dangling symlink or not a dir, and
    any of ``names`` (paths relative to DEST that a promotion writes or removes) with a symlink
    on its way: a promotion never writes through a symlink, so never outside DEST. A symlink of
    DEST itself to a real dir is the user's choice of where DEST is, and is followed."""
    if not dst.local:
        return  # object stores have no symlinks, and every name is a plain name under DEST
    root = dst.path
    if os.path.islink(root) and not os.path.exists(root):
        raise PromotionError(f"is a symlink to {os.readlink(root)!r}, which does not exist", dst.display())
    if os.path.lexists(root) and not os.path.isdir(root):
        raise PromotionError("is not a directory", dst.display())
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            path = dst.join(rel)
            if os.path.islink(path):
                raise PromotionError(
                    f"is a symlink (to {os.readlink(path)!r}); a promotion never "
                    "writes through a symlink: remove it",
                    dst.display(rel),
                )
            if i < len(parts) and os.path.lexists(path) and not os.path.isdir(path):
                raise PromotionError("is not a directory", dst.display(rel))
