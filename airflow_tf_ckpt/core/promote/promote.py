"""Promote one checkpoint step to a destination dir, so that readers see it atomically.

Destination layout (flat, so ``DEST`` is itself an ordinary checkpoint dir that TF and
``tf-ckpt ls/validate`` understand)::

    DEST/ckpt-500.data-00000-of-00001   the step's files, under the source prefix's name
    DEST/ckpt-500.index
    DEST/ckpt-500.meta                  the step's .meta, or the newest earlier one renamed
    DEST/ckpt-500.metrics.json          the metrics sidecar, when the step has one
    DEST/checkpoint                     state file naming ``ckpt-500`` (relative path)
    DEST/PROMOTED.json                  the manifest: the commit point of a promotion
    DEST/aliases/production.json        optional named pointers (``--alias``)
    DEST/.promote.lock                  held while a promotion runs (exclusive create; see below)

Order of writes (the same idea as TF's own saves, where the state file is the commit signal):

1. copy the data shards, then the sidecars, then the ``.index`` LAST;
2. verify every copied file (size + CRC32C) against the source;
3. write the state file (atomically), so ``tf.train.latest_checkpoint(DEST)`` names the step;
4. write ``PROMOTED.json`` (atomically), the commit point for readers that check it;
5. write the alias pointer, if any (atomically);
6. delete files of older promotions that nothing references any more.

Why a re-promotion is never a partial mix: the new step's files are written under names that no
published pointer (manifest, state file, alias) references, so nothing a reader can reach changes
until the single-object flips of steps 3-5. When the new files WOULD overwrite published ones
(the same prefix with different bytes, e.g. step 500 re-promoted from another run), the
promotion first UNPUBLISHES: it deletes ``PROMOTED.json`` and then the state file, so for a
while the destination is "not promoted" (absent for TF), never a mix. Re-promoting identical
bytes copies nothing and only rewrites the pointers. The previous promotion's files are kept for
one more promotion (a reader that read the old manifest a moment ago can finish), and files an
alias points at are kept until the alias moves. Only files that an earlier manifest recorded are
ever deleted, and only directly inside ``DEST``: the manifest is input, so of what it lists only
names that parse as checkpoint files of a prefix it records, with the recorded size, are deleted
(never the state file, ``PROMOTED.json``, ``aliases/`` or anything else; see
:func:`cleanup_candidates`). No write goes through a symlink (:func:`check_dest_writable`), and a
malformed ``PROMOTIONS.json`` in the source stops a recording promotion before anything is written.

Between steps 3 and 4 a TF reader (state file) already sees the new step while a manifest reader
still sees the old one: each sees one complete promotion.

The lock: created exclusively (``O_EXCL`` locally, ``ifGenerationMatch=0`` on GCS), holding the
holder's host, pid (and the pid's start time, so a reused pid is not mistaken for the holder) and a
``heartbeat`` time that a thread refreshes every ``lock_ttl / 5`` while the promotion runs. A lock
is broken when its holder is on this host and no longer running, or when its heartbeat is older
than its ``ttl`` (15 min by default): a promotion killed with SIGKILL, or on a worker that
vanished, no longer blocks the rerun that Airflow's retry makes.

Copies: gs→gs (even across buckets) is a server-side copy (``fs.copy``: GCS rewrite), with no
bytes through the worker, and the CRC32C comes from the server (``info()["crc32c"]``, base64
big-endian, which is also the manifest's format); the data shards are rewritten up to
``COPY_CONCURRENCY`` at a time, and all of them are copied and checked before the sidecars and
the ``.index``. Local→local and cross-store copies stream in
chunks and compute the CRC32C while copying, then re-check the written file.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import google_crc32c

from airflow_tf_ckpt.core.errors import CheckpointError, StepRefusedError, StorageError
from airflow_tf_ckpt.core.formats.naming import META_SUFFIX, classify, parse_prefix
from airflow_tf_ckpt.core.formats.state import (
    STATE_FILENAME,
    StateFile,
    read_state,
    resolve_path,
    write_state,
)
from airflow_tf_ckpt.core.steps import select as steps_select
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from airflow_tf_ckpt.core.steps.order import newest_meta
from airflow_tf_ckpt.core.storage.location import (
    GCS_PROTOCOLS,
    FileTooLargeError,
    Location,
    NotRegularFileError,
    loads_json,
    read_bounded,
    write_atomic,
)
from airflow_tf_ckpt.core.storage.safety import name_problem

MANIFEST_NAME = "PROMOTED.json"
ALIASES_DIR = "aliases"
LOCK_NAME = ".promote.lock"
MANIFEST_FORMAT = "airflow-tf-ckpt/promotion"
MANIFEST_VERSION = 1
CHUNK = 8 << 20  # google_crc32c releases the GIL for bytes >= 1 MiB
DEFAULT_LOCK_TTL = 15 * 60.0  # a lock whose heartbeat is this old is broken
SOURCE_LEASE_TTL = 6 * 3600.0  # the lease on the source step (released at the end; a crash's expires)

# phase names passed to the ``hook`` callback (tests inspect the destination at each one)
PHASES = ("locked", "unpublished", "copied", "state_written", "manifest_written", "alias_written", "cleaned")

ProgressFn = Callable[[int, int, str], None]  # (bytes_done, bytes_total, current file name)
HookFn = Callable[[str, Location], None]  # (phase, destination)


class PromotionError(CheckpointError):
    """A promotion cannot be done (bad selector, unusable destination, a copy that differs)."""


# --------------------------------------------------------------------------------------------
# small value types


def crc32c_b64(crc: int) -> str:
    """A CRC32C as GCS spells it: base64 of the 4 big-endian bytes."""
    return base64.b64encode((crc & 0xFFFFFFFF).to_bytes(4, "big")).decode("ascii")


@dataclass(frozen=True)
class PromotedFile:
    """One file of a promotion: its name in DEST, where it came from, size and CRC32C."""

    name: str
    size: int
    crc32c: str  # base64, big-endian (GCS format)
    source: str = ""  # the source file's name (differs for a .meta taken from an earlier step)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "crc32c": self.crc32c, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromotedFile:
        if not isinstance(d, dict):
            raise TypeError(f"a file record is a JSON {type(d).__name__}, not an object")
        name, size, crc = d["name"], d["size"], d["crc32c"]
        if not isinstance(name, str) or not name:
            raise TypeError(f"file name {name!r} is not a non-empty string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TypeError(f"size {size!r} of {name!r} is not a byte count")
        if not isinstance(crc, str):
            raise TypeError(f"crc32c {crc!r} of {name!r} is not a string")
        return cls(name=name, size=size, crc32c=crc, source=str(d.get("source", "")))


@dataclass
class PromotionManifest:
    """The content of ``PROMOTED.json`` (and, with ``alias`` set, of an alias pointer file)."""

    promotion_id: str
    source: str
    source_prefix: str
    prefix: str
    base: str
    step: int | None
    files: list[PromotedFile]
    promoted_at: str
    promoted_at_unix: float
    metrics: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None
    selector: str = ""
    meta_from: str | None = None
    # files of earlier promotions still kept in DEST (grace for readers, alias targets)
    retained: dict[str, list[PromotedFile]] = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> str:
        """The prefix relative to DEST, as TF wants it (``DEST/<checkpoint_path>``)."""
        return self.prefix

    def file_names(self) -> set[str]:
        return {f.name for f in self.files}

    def all_file_names(self) -> set[str]:
        names = self.file_names()
        for files in self.retained.values():
            names |= {f.name for f in files}
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "promotion_id": self.promotion_id,
            "source": self.source,
            "source_prefix": self.source_prefix,
            "prefix": self.prefix,
            "base": self.base,
            "step": self.step,
            "checkpoint_path": self.checkpoint_path,
            "files": [f.to_dict() for f in self.files],
            "promoted_at": self.promoted_at,
            "promoted_at_unix": self.promoted_at_unix,
            "metrics": self.metrics,
            "alias": self.alias,
            "selector": self.selector,
            "meta_from": self.meta_from,
            "retained": {k: [f.to_dict() for f in v] for k, v in sorted(self.retained.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromotionManifest:
        files, retained, metrics = d["files"], d.get("retained") or {}, d.get("metrics") or {}
        if not isinstance(files, list):
            raise TypeError(f'"files" is a JSON {type(files).__name__}, not a list')
        if not isinstance(retained, dict) or not all(isinstance(v, list) for v in retained.values()):
            raise TypeError('"retained" is not an object of file lists')
        if not isinstance(metrics, dict):
            raise TypeError(f'"metrics" is a JSON {type(metrics).__name__}, not an object')
        if not isinstance(d["prefix"], str) or not d["prefix"]:
            raise TypeError(f"prefix {d['prefix']!r} is not a non-empty string")
        return cls(
            promotion_id=str(d["promotion_id"]),
            source=str(d["source"]),
            source_prefix=str(d.get("source_prefix", d["prefix"])),
            prefix=str(d["prefix"]),
            base=str(d.get("base", parse_prefix(str(d["prefix"])).base)),
            step=None if d.get("step") is None else int(d["step"]),
            files=[PromotedFile.from_dict(f) for f in d["files"]],
            promoted_at=str(d.get("promoted_at", "")),
            promoted_at_unix=float(d.get("promoted_at_unix", 0.0)),
            metrics=dict(d.get("metrics") or {}),
            alias=d.get("alias"),
            selector=str(d.get("selector", "")),
            meta_from=d.get("meta_from"),
            retained={
                str(k): [PromotedFile.from_dict(f) for f in v] for k, v in (d.get("retained") or {}).items()
            },
        )


@dataclass
class PromotionResult:
    """What :func:`promote` did."""

    manifest: PromotionManifest
    destination: str
    copied: list[str]  # file names copied this time
    reused: list[str]  # file names already in DEST with identical bytes
    deleted: list[str]  # files of older promotions removed from DEST
    bytes_copied: int
    method: str  # "server-side" | "local" | "stream" | "none"
    unpublished: bool  # the destination was "not promoted" for a while (same names, new bytes)
    seconds: float
    alias_path: str | None = None
    recorded: bool = False  # the source dir's PROMOTIONS.json names it (retention keeps the step)
    record_problem: str | None = None  # why it was not recorded although asked to (a warning)

    @property
    def step(self) -> int | None:
        return self.manifest.step

    @property
    def prefix(self) -> str:
        return self.manifest.prefix

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "step": self.step,
            "prefix": self.prefix,
            "checkpoint_path": self.manifest.checkpoint_path,
            "alias": self.manifest.alias,
            "alias_path": self.alias_path,
            "source": self.manifest.source,
            "selector": self.manifest.selector,
            "metrics": self.manifest.metrics,
            "copied": self.copied,
            "reused": self.reused,
            "deleted": self.deleted,
            "bytes_copied": self.bytes_copied,
            "method": self.method,
            "unpublished": self.unpublished,
            "recorded": self.recorded,
            "record_problem": self.record_problem,
            "seconds": round(self.seconds, 3),
            "manifest": self.manifest.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# reading a destination (what readers do)


#: the most bytes of a manifest or alias file that are read (a promotion of 10,000 shards is ~2 MB)
MAX_MANIFEST_BYTES = 16 << 20
#: errors of a JSON document that has the wrong shape (types, missing keys, nesting)
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, RecursionError, OverflowError)


def _read_json(loc: Location, name: str) -> dict[str, Any] | None:
    if not loc.exists(name):
        return None
    try:  # bounded, regular files only: never the whole of a huge file, never a FIFO
        raw = loc.read_bytes(name, cap=MAX_MANIFEST_BYTES, what="a promotion manifest")
    except (NotRegularFileError, FileTooLargeError) as exc:
        raise PromotionError(exc.message, loc.display(name)) from exc
    try:
        data = loads_json(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except RecursionError as exc:
        raise PromotionError("malformed JSON: nested too deeply", loc.display(name)) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PromotionError(f"malformed JSON: {exc}", loc.display(name)) from exc
    return data


def read_manifest(
    dest: Location | str,
    storage_options: dict[str, Any] | None = None,
) -> PromotionManifest | None:
    """The destination's promotion, or ``None`` when it is not promoted (no ``PROMOTED.json``)."""
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    data = _read_json(loc, MANIFEST_NAME)
    if data is None:
        return None
    if data.get("format") != MANIFEST_FORMAT:
        raise PromotionError(
            f"not a promotion manifest (format={data.get('format')!r})", loc.display(MANIFEST_NAME)
        )
    try:
        return PromotionManifest.from_dict(data)
    except _SHAPE_ERRORS as exc:
        raise PromotionError(
            f"malformed promotion manifest: {_shape_error(exc)}", loc.display(MANIFEST_NAME)
        ) from exc


def _shape_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def alias_name_ok(alias: str) -> bool:
    """Alias names are file names: letters, digits, ``._-``, not starting with a dot."""
    return (
        bool(alias)
        and len(alias) <= 128
        and not alias.startswith(".")
        and all(c.isalnum() or c in "._-" for c in alias)
    )


def read_alias(
    dest: Location | str,
    alias: str,
    storage_options: dict[str, Any] | None = None,
) -> PromotionManifest | None:
    """The promotion an alias points at (``DEST/aliases/<alias>.json``), or ``None``."""
    if not alias_name_ok(alias):
        raise PromotionError(f"invalid alias name {alias!r} (use letters, digits, '.', '_', '-')")
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    data = _read_json(loc, f"{ALIASES_DIR}/{alias}.json")
    if data is None:
        return None
    try:
        return PromotionManifest.from_dict(data)
    except _SHAPE_ERRORS as exc:
        raise PromotionError(
            f"malformed alias file: {_shape_error(exc)}", loc.display(f"{ALIASES_DIR}/{alias}.json")
        ) from exc


def list_aliases(
    dest: Location | str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, PromotionManifest]:
    """Every alias of a destination, by name."""
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    try:
        names = loc.fs.ls(loc.join(ALIASES_DIR), detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: dict[str, PromotionManifest] = {}
    for full in names:
        base = posixpath.basename(str(full).rstrip("/"))
        if base.endswith(".json") and alias_name_ok(base[: -len(".json")]):
            m = read_alias(loc, base[: -len(".json")])
            if m is not None:
                out[base[: -len(".json")]] = m
    return out


def check_promotion(
    dest: Location | str, storage_options: dict[str, Any] | None = None, *, deep: bool = False
) -> list[str]:
    """Problems with a promoted destination ([] when it is complete). ``deep`` re-reads CRCs."""
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    manifest = read_manifest(loc)
    if manifest is None:
        return [f"{loc.display()}: not promoted (no {MANIFEST_NAME})"]
    listing = loc.listdir()
    problems: list[str] = []
    for f in manifest.files:
        info = listing.get(f.name)
        if info is None:
            problems.append(f"{loc.display(f.name)}: missing")
        elif info.size != f.size:
            problems.append(f"{loc.display(f.name)}: size {info.size}, manifest says {f.size}")
        elif deep:
            got = _crc_of(loc, f.name)
            if got != f.crc32c:
                problems.append(f"{loc.display(f.name)}: crc32c {got}, manifest says {f.crc32c}")
    state = read_state(loc)
    if state is None or state.model_checkpoint_path != manifest.checkpoint_path:
        problems.append(f"{loc.display(STATE_FILENAME)}: does not name {manifest.checkpoint_path!r}")
    return problems


# --------------------------------------------------------------------------------------------
# selecting the step


def _metrics_by_prefix(cdir: CheckpointDir, evaluator: str | None = None) -> dict[str, dict[str, Any]]:
    from airflow_tf_ckpt.core.sidecars.metrics import (
        metrics_for,  # helper module; imported here to keep this one light
    )

    return {k: dict(v) for k, v in metrics_for(cdir, evaluator=evaluator).items() if v}


def select_step(
    cdir: CheckpointDir,
    selector: int | str,
    *,
    prefix: str | None = None,
    metric: str | None = None,
    mode: str = "min",
    evaluator: str | None = None,
) -> CheckpointStep:
    """:func:`core.steps.select.select_step` for a promotion: ``best`` by ``metric`` (``mode``) of
    ``evaluator``'s sidecars (``None``: the default ``PREFIX.metrics.json``); a quarantined or
    incomplete step is refused with :class:`PromotionError`."""
    metrics: dict[str, dict[str, Any]] | None = None
    if evaluator is not None:
        from airflow_tf_ckpt.core.sidecars.metrics import check_evaluator

        check_evaluator(evaluator)
    if str(selector).strip() == "best":
        metrics = _best_inputs(cdir, metric, mode, evaluator)
    try:
        return steps_select.select_step(
            cdir,
            selector,
            prefix=prefix,
            metric=metric,
            mode=mode,
            metrics=metrics,
            evaluator=evaluator,
            allow_quarantined=False,
        )
    except StepRefusedError as exc:
        raise PromotionError(exc.message, exc.path) from exc


def _best_inputs(
    cdir: CheckpointDir, metric: str | None, mode: str, evaluator: str | None
) -> dict[str, dict[str, Any]]:
    """The metrics ``best`` ranks by, once the metric, mode and evaluator names are checked."""
    from airflow_tf_ckpt.core.sidecars.metrics import metric_name_problem

    if not metric:
        raise PromotionError("--step best needs a metric name (--metric NAME)")
    if problem := metric_name_problem(metric):
        raise PromotionError(problem)
    if mode not in ("min", "max"):
        raise PromotionError(f"mode must be 'min' or 'max', not {mode!r}")
    return _metrics_by_prefix(cdir, evaluator)


def _meta_for(cdir: CheckpointDir, step: CheckpointStep) -> str | None:
    """The ``.meta`` to ship with a step (see :func:`core.steps.order.newest_meta`)."""
    return newest_meta(cdir.listing, step.prefix, step.base, step.step)


# --------------------------------------------------------------------------------------------
# copying


def _same_gcs(src: Location, dst: Location) -> bool:
    if src.protocol not in GCS_PROTOCOLS or dst.protocol not in GCS_PROTOCOLS:
        return False
    if src.fs is dst.fs:
        return True
    # two gcsfs instances (e.g. other credentials) of the same service: a rewrite still works
    # when the destination's credentials may read the source
    ep = [getattr(fs, "_location", None) or getattr(fs, "_endpoint", None) for fs in (src.fs, dst.fs)]
    return ep[0] is not None and ep[0] == ep[1]


def copy_method(src: Location, dst: Location) -> str:
    if _same_gcs(src, dst):
        return "server-side"
    if src.local and dst.local:
        return "local"
    return "stream"


def _server_crc(loc: Location, name: str) -> tuple[int, str | None]:
    info = loc.fs.info(loc.join(name))
    return int(info.get("size") or 0), info.get("crc32c")


def _crc_of(loc: Location, name: str) -> str:
    """CRC32C (GCS base64) of a file: the server's where it keeps one, else by reading it."""
    if loc.protocol in GCS_PROTOCOLS:
        _, crc = _server_crc(loc, name)
        if crc:
            return crc
    crc = 0
    with loc.fs.open(loc.join(name), "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            crc = google_crc32c.extend(crc, bytes(chunk))
    return crc32c_b64(crc)


def _stream_copy(
    src: Location, sname: str, dst: Location, dname: str, on_bytes: Callable[[int], None]
) -> tuple[int, str]:
    """Copy in chunks, computing the CRC32C of the bytes as they pass; ``(size, crc)``.

    A local destination is written under a temp name and renamed into place, so a reader that
    has the old file open keeps reading the old bytes. Object stores publish an object only when
    its upload completes, so they are written in place.
    """
    crc = 0
    size = 0
    target = dst.join(dname)
    out = target
    if dst.local:
        os.makedirs(dst.path, exist_ok=True)
        out = dst.join(f".{dname}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with src.fs.open(src.join(sname), "rb") as fin, dst.fs.open(out, "wb") as fout:
            while True:
                chunk = fin.read(CHUNK)
                if not chunk:
                    break
                chunk = bytes(chunk)
                crc = google_crc32c.extend(crc, chunk)
                fout.write(chunk)
                size += len(chunk)
                on_bytes(len(chunk))
            if dst.local:
                fout.flush()
                os.fsync(fout.fileno())
        if out != target:
            os.replace(out, target)
    except BaseException:
        if out != target:
            try:
                os.unlink(out)
            except OSError:
                pass
        raise
    return size, crc32c_b64(crc)


def _copy_one(
    method: str, src: Location, sname: str, dst: Location, dname: str, on_bytes: Callable[[int], None]
) -> PromotedFile:
    """Copy one file and check the copy; the returned record holds the SOURCE's size and CRC."""
    where = dst.display(dname)
    try:
        if method == "server-side":
            size, crc = _server_crc(src, sname)
            fs = src.fs if src.fs is dst.fs else dst.fs
            fs.cp_file(src.join(sname), dst.join(dname))  # GCS rewrite; no glob expansion
            on_bytes(size)
            if not crc:  # a store that keeps no CRC32C: read the source once to learn it
                crc = _crc_of(src, sname)
        else:
            size, crc = _stream_copy(src, sname, dst, dname, on_bytes)
            if src.protocol in GCS_PROTOCOLS:  # catch corruption in transit
                _, server = _server_crc(src, sname)
                if server and server != crc:
                    raise PromotionError(f"read {crc} but the server has crc32c {server}", src.display(sname))
    except FileNotFoundError as exc:
        raise StorageError(f"vanished while promoting: {exc}", src.display(sname)) from exc
    except PermissionError as exc:
        raise StorageError(f"permission denied: {exc}", where) from exc
    _check_copy(dst, dname, size, crc)
    return PromotedFile(name=dname, size=size, crc32c=crc, source=sname)


#: at most this many server-side copies (GCS rewrites) of one promotion's data shards at a time
COPY_CONCURRENCY = 8


def _is_data_shard(name: str) -> bool:
    role = classify(name)
    return role is not None and role.role == "data"


def _copy_concurrently(
    method: str,
    src: Location,
    dst: Location,
    pairs: list[tuple[str, str]],
    on_bytes_of: Callable[[str], Callable[[int], None]],
) -> list[PromotedFile]:
    """:func:`_copy_one` for each pair, ``COPY_CONCURRENCY`` at a time; returns once every copy
    has been made AND checked (records in ``pairs`` order), or raises the first failure in
    ``pairs`` order (copies not yet started are cancelled)."""
    if len(pairs) <= 1:
        return [_copy_one(method, src, s, dst, d, on_bytes_of(d)) for s, d in pairs]
    pool = ThreadPoolExecutor(
        max_workers=min(COPY_CONCURRENCY, len(pairs)), thread_name_prefix="tf-ckpt-promote"
    )
    try:
        futures = [pool.submit(_copy_one, method, src, s, dst, d, on_bytes_of(d)) for s, d in pairs]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_copy(dst: Location, dname: str, size: int, crc: str) -> None:
    """The file in DEST has exactly ``size`` bytes with CRC32C ``crc`` (else PromotionError)."""
    where = dst.display(dname)
    got_size = int(dst.fs.info(dst.join(dname)).get("size") or 0)
    if got_size != size:
        raise PromotionError(f"copy has {got_size} bytes, source has {size}", where)
    got_crc = _crc_of(dst, dname)
    if got_crc != crc:
        raise PromotionError(f"copy has crc32c {got_crc}, source has {crc}", where)


# --------------------------------------------------------------------------------------------
# the destination lock


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


# --------------------------------------------------------------------------------------------
# promotion


def _same_dir(a: Location, b: Location) -> bool:
    if a.protocol != b.protocol and not ({a.protocol, b.protocol} <= set(GCS_PROTOCOLS)):
        return False
    if a.local:
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    return a.path.strip("/") == b.path.strip("/")


def _now_iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


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


def _step_files(prefix: str | None, files: list[PromotedFile]) -> list[PromotedFile]:
    return [f for f in files if prefix is not None and _is_step_file(f.name, prefix)]


def cleanup_candidates(m: PromotionManifest) -> dict[str, PromotedFile]:
    """The files of an earlier promotion that a later one may delete: for each prefix the
    manifest records (its own, and each retained group's), the files that parse as that prefix's
    checkpoint files. Everything else a (possibly hostile) manifest lists is ignored."""
    out = {f.name: f for f in _step_files(m.prefix, m.files)}
    for key, files in m.retained.items():
        prefix = key.split(":", 1)[1] if key.startswith("previous:") else _group_prefix(files)
        out.update({f.name: f for f in _step_files(prefix, files)})
    return out


def _rm(dst: Location, names: list[str], records: dict[str, PromotedFile]) -> list[str]:
    """Delete these files of earlier promotions: only plain files whose size is still the
    recorded one (a file someone replaced is not ours any more). A failure is not fatal: the
    promotion is already published, and the file is merely left behind."""
    listing = dst.listdir()
    gone = []
    for name in names:
        info = listing.get(name)
        if info is None or info.is_dir or info.is_link or info.size != records[name].size:
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


def _write_paths(plan: list[tuple[str, str]], alias: str | None) -> list[str]:
    """Every path in DEST that a promotion writes (or removes to unpublish), relative to DEST."""
    return (
        [d for _, d in plan]
        + [STATE_FILENAME, MANIFEST_NAME, LOCK_NAME]
        + ([f"{ALIASES_DIR}/{alias}.json"] if alias is not None else [])
    )


def _check_source_record(src: Location) -> None:
    """Refuse before anything is published when the source's ``PROMOTIONS.json`` is malformed:
    the promotion could not be recorded, and a task would fail after a published promotion."""
    from airflow_tf_ckpt.core.sidecars.promotions import read_promotions

    try:
        read_promotions(src)
    except (OSError, StorageError):
        return  # unreadable here (a read-only source): recording is then skipped, as before
    except CheckpointError as exc:
        raise PromotionError(
            f"{exc}; nothing was promoted (fix or remove it, or promote without "
            "recording: --no-record / record=False)"
        ) from exc


def promote(
    source: Location | str,
    dest: Location | str,
    step: int | str = "latest",
    *,
    prefix: str | None = None,
    metric: str | None = None,
    mode: str = "min",
    alias: str | None = None,
    storage_options: dict[str, Any] | None = None,
    dest_storage_options: dict[str, Any] | None = None,
    keep_previous: bool = True,
    record: bool = True,
    lease: bool = True,
    lock_ttl: float = DEFAULT_LOCK_TTL,
    progress: ProgressFn | None = None,
    hook: HookFn | None = None,
    evaluator: str | None = None,
) -> PromotionResult:
    """Promote one step of ``source`` to ``dest``; see the module docstring for the scheme.

    ``step``: a step number, a prefix name, ``"latest"`` or ``"best"`` (with ``metric`` and
    ``mode``; ``evaluator``: whose metrics sidecars, ``None`` the default one, which is also the
    sidecar shipped to DEST under its own name). ``prefix`` restricts the source to one base name. ``alias`` also writes
    ``DEST/aliases/<alias>.json``. ``record`` calls :func:`retention.record_promotion` on the
    source so retention keeps promoted steps. ``lease`` holds a lease on the source step while it
    is copied (GC does not delete a leased step; a read-only source is copied without one).
    ``progress(done, total, file)`` reports bytes;
    ``hook(phase, dest)`` is called after each phase in :data:`PHASES` (for tests and logs).
    """
    t0 = time.monotonic()
    src = source if isinstance(source, Location) else Location.of(source, storage_options)
    dst = (
        dest
        if isinstance(dest, Location)
        else Location.of(dest, dest_storage_options if dest_storage_options is not None else storage_options)
    )
    if alias is not None and not alias_name_ok(alias):
        raise PromotionError(f"invalid alias name {alias!r} (use letters, digits, '.', '_', '-')")
    if _same_dir(src, dst):
        raise PromotionError(
            "destination is the source dir itself; promote into a dedicated dir", dst.display()
        )

    cdir = discover(src, prefix)
    chosen = select_step(cdir, step, prefix=prefix, metric=metric, mode=mode, evaluator=evaluator)
    selector = f"best:{metric}:{mode}" if str(step) == "best" else str(step)
    if evaluator and str(step) == "best":
        selector += f":{evaluator}"
    if chosen.status is StepStatus.ORPHAN:
        # complete by its file names but not committed by the state file: possibly a save still
        # being written (its .index half there), so check every checksum before shipping it
        from airflow_tf_ckpt.core.verify.engine import verify_step

        report = verify_step(src, chosen.prefix, format=chosen.format)
        if not report.ok:
            raise PromotionError(
                "step is not named by the state file and does not verify: " + str(report.problems[0]),
                src.display(chosen.prefix),
            )
    elif chosen.format == "v2":
        _refuse_bad_shard_sizes(src, chosen)
    metrics: dict[str, Any] = _metrics_by_prefix(cdir, evaluator).get(chosen.prefix, {})

    # (source name, DEST name): data shards first, sidecars, the .index last (as TF saves)
    plan: list[tuple[str, str]] = []
    index = [f.name for f in chosen.files if f.name.endswith(".index")]
    plan += [(f.name, f.name) for f in chosen.files if f.name not in index]
    meta = _meta_for(cdir, chosen)
    if meta is not None:
        plan.append((meta, f"{chosen.prefix}{META_SUFFIX}"))
    from airflow_tf_ckpt.core.sidecars.metrics import metrics_name as _metrics_name

    metrics_name = _metrics_name(chosen.prefix, evaluator)
    if metrics_name in cdir.listing:
        plan.append((metrics_name, metrics_name))
    plan += [(n, n) for n in index]
    sizes = {n: cdir.listing[n].size for n, _ in plan if n in cdir.listing}
    total = sum(sizes.values())

    check_dest_writable(dst, _write_paths(plan, alias))
    if record:
        _check_source_record(src)
    method = copy_method(src, dst)
    owner = _lease_source(src, chosen, SOURCE_LEASE_TTL) if lease else None
    try:
        return _promote_locked(
            src,
            dst,
            chosen,
            plan,
            sizes,
            total,
            method,
            meta,
            metrics,
            selector,
            alias=alias,
            keep_previous=keep_previous,
            record=record,
            lock_ttl=lock_ttl,
            progress=progress,
            hook=hook,
            t0=t0,
        )
    finally:
        if owner is not None:
            from airflow_tf_ckpt.core.sidecars.leases import release_lease

            try:
                release_lease(src, chosen.prefix, owner)
            except OSError:
                pass  # it expires on its own


def _refuse_bad_shard_sizes(src: Location, step: CheckpointStep) -> None:
    """Never ship a shard with bytes after its last tensor (TF writes none; a sparse 10 TiB
    file would be copied whole) or shorter than its tensors: one index read, no data read."""
    from airflow_tf_ckpt.core.verify.v2 import shard_size_problems

    problems = shard_size_problems(src, step.prefix)
    if problems:
        raise PromotionError(
            f"step does not match its index, refusing: {problems[0]}", src.display(step.prefix)
        )


def _lease_source(src: Location, step: CheckpointStep, ttl: float) -> str | None:
    """Lease the source step so GC leaves it alone while it is copied; ``None`` if read-only."""
    from airflow_tf_ckpt.core.sidecars.leases import LeaseConflictError, LeaseError, acquire_lease

    owner = f"promote-{uuid.uuid4().hex[:8]}"
    try:
        acquire_lease(src, step.prefix, owner, ttl)
    except LeaseConflictError as exc:
        raise PromotionError(
            f"step is being deleted by a GC run; not promoted ({exc})", src.display(step.prefix)
        ) from exc
    except (OSError, LeaseError, StorageError):
        return None  # a source we may not write to: copy without a lease
    return owner


def _promote_locked(
    src: Location,
    dst: Location,
    chosen: CheckpointStep,
    plan: list[tuple[str, str]],
    sizes: dict[str, int],
    total: int,
    method: str,
    meta: str | None,
    metrics: dict[str, Any],
    selector: str,
    *,
    alias: str | None,
    keep_previous: bool,
    record: bool,
    lock_ttl: float,
    progress: ProgressFn | None,
    hook: HookFn | None,
    t0: float,
) -> PromotionResult:
    """The part of :func:`promote` that runs under the destination lock."""
    token = _acquire_lock(dst, lock_ttl)
    heartbeat = _Heartbeat(dst, token, lock_ttl)
    try:
        try:
            dst.fs.invalidate_cache(dst.path)  # another process may have promoted meanwhile
        except (AttributeError, TypeError):
            pass
        if hook:
            hook("locked", dst)
        check_dest_writable(dst, _write_paths(plan, alias))  # again: it may have changed meanwhile
        old = read_manifest(dst)
        aliases = list_aliases(dst)
        dest_listing = dst.listdir()
        dest_state = read_state(dst) if STATE_FILENAME in dest_listing else None
        if dst.local:  # temp files of a copy that was killed; under the lock nobody else writes them
            targets = {d for _, d in plan}
            for n in [n for n in dest_listing if n.startswith(".") and n.endswith(".tmp")]:
                if n[1:].rsplit(".", 2)[0] in targets:
                    try:
                        os.unlink(dst.join(n))
                    except FileNotFoundError:
                        pass
                    dest_listing.pop(n)

        # what we know about files already in DEST, and which of them a reader can reach now
        known: dict[str, PromotedFile] = {}
        reachable: set[str] = set()
        pinned: dict[str, str] = {}  # file -> another alias that points at it
        if old is not None:
            for files in old.retained.values():
                known.update({f.name: f for f in files})
            known.update({f.name: f for f in old.files})
            reachable |= old.file_names()
        for name, am in aliases.items():
            for f in am.files:
                known.setdefault(f.name, f)
                reachable.add(f.name)
                if name != alias:
                    pinned.setdefault(f.name, name)
        if dest_state is not None and dest_state.model_checkpoint_path:
            r = resolve_path(dst, dest_state.model_checkpoint_path)
            if r.name:
                reachable |= {n for n in dest_listing if n == r.name or n.startswith(r.name + ".")}

        # a target name that exists already: identical bytes are reused; different bytes under
        # a reachable name must not be overwritten while a pointer can reach them
        reused: list[PromotedFile] = []
        differ: list[str] = []
        for sname, dname in plan:
            if dname not in dest_listing:
                continue
            rec = known.get(dname)
            if (
                rec is not None
                and rec.size == sizes.get(sname) == dest_listing[dname].size
                and rec.crc32c == _crc_of(src, sname) == _crc_of(dst, dname)
            ):
                reused.append(PromotedFile(dname, rec.size, rec.crc32c, sname))
            elif (
                rec is None
                and sizes.get(sname) == dest_listing[dname].size
                and (crc := _crc_of(src, sname)) == _crc_of(dst, dname)
            ):
                # no manifest records it (a promotion killed after its copy or its state file):
                # the same bytes all the same, so reuse it rather than unpublish to overwrite it
                reused.append(PromotedFile(dname, dest_listing[dname].size, crc, sname))
            elif dname in reachable:
                differ.append(dname)
        unpublished = False
        old_for_cleanup = old
        if differ:
            held = [d for d in differ if d in pinned]
            if held:
                raise PromotionError(
                    f"{held[0]} in the destination has different bytes and alias "
                    f"{pinned[held[0]]!r} points at it; move or remove that alias first",
                    dst.display(),
                )
            # unpublish: the manifest first (readers check it), then the alias we are about to
            # move when it reaches these names, then the state file (TF)
            doomed = [MANIFEST_NAME]
            if alias is not None and alias in aliases and set(differ) & aliases[alias].file_names():
                doomed.append(f"{ALIASES_DIR}/{alias}.json")
                aliases.pop(alias)
            doomed.append(STATE_FILENAME)
            for name in doomed:
                try:
                    dst.fs.rm_file(dst.join(name))
                except FileNotFoundError:
                    pass
            unpublished = True
            old = None
            if hook:
                hook("unpublished", dst)

        reused_names = {f.name for f in reused}
        done = sum(f.size for f in reused)
        if progress:
            progress(done, total, "")
        progress_lock = threading.Lock()  # server-side copies of data shards report from threads

        def on_bytes_of(name: str) -> Callable[[int], None]:
            def on_bytes(n: int) -> None:
                nonlocal done
                with progress_lock:
                    done += n
                    if progress:
                        progress(done, total, name)

            return on_bytes

        todo = [(sname, dname) for sname, dname in plan if dname not in reused_names]
        # server-side: the data shards are rewritten concurrently, and ALL of them are copied and
        # checked before the sidecars and the .index (copied one by one after them, in plan order)
        shards = [(s, d) for s, d in todo if method == "server-side" and _is_data_shard(d)]
        copied = _copy_concurrently(method, src, dst, shards, on_bytes_of)
        in_shards = set(shards)
        for sname, dname in todo:
            if (sname, dname) not in in_shards:
                copied.append(_copy_one(method, src, sname, dst, dname, on_bytes_of(dname)))
        by_name = {f.name: f for f in reused + copied}
        files = [by_name[d] for _, d in plan]
        if hook:
            hook("copied", dst)

        now = time.time()
        manifest = PromotionManifest(
            promotion_id=f"{_dt.datetime.fromtimestamp(now, _dt.timezone.utc):%Y%m%dT%H%M%SZ}-"
            f"{uuid.uuid4().hex[:8]}",
            source=src.display(),
            source_prefix=chosen.prefix,
            prefix=chosen.prefix,
            base=chosen.base,
            step=chosen.step,
            files=files,
            promoted_at=_now_iso(now),
            promoted_at_unix=now,
            metrics=metrics,
            alias=alias,
            selector=selector,
            meta_from=meta if meta and meta != f"{chosen.prefix}{META_SUFFIX}" else None,
        )
        new_names = manifest.file_names()
        # kept in DEST: the previous promotion for one more round, and every other alias target
        if keep_previous and old is not None and old.prefix != chosen.prefix:
            kept = [f for f in _step_files(old.prefix, old.files) if f.name not in new_names]
            if kept:
                manifest.retained[f"previous:{old.prefix}"] = kept
        for name, am in aliases.items():
            if name != alias:
                kept = [f for f in _step_files(am.prefix, am.files) if f.name not in new_names]
                if kept:
                    manifest.retained[f"alias:{name}"] = kept

        write_state(
            dst,
            StateFile(
                model_checkpoint_path=chosen.prefix,
                all_model_checkpoint_paths=[chosen.prefix],
                all_model_checkpoint_timestamps=[chosen.timestamp or now],
                last_preserved_timestamp=0.0,
            ),
        )
        if hook:
            hook("state_written", dst)
        dst.write_atomic(MANIFEST_NAME, (json.dumps(manifest.to_dict(), indent=1) + "\n").encode())
        if hook:
            hook("manifest_written", dst)
        alias_path = None
        if alias is not None:
            pointer = PromotionManifest.from_dict(manifest.to_dict())
            pointer.retained = {}
            write_atomic(
                dst.fs,
                dst.join(f"{ALIASES_DIR}/{alias}.json"),
                (json.dumps(pointer.to_dict(), indent=1) + "\n").encode(),
            )
            alias_path = dst.display(f"{ALIASES_DIR}/{alias}.json")
            if hook:
                hook("alias_written", dst)

        # delete what only older promotions referenced (never a file no manifest recorded)
        candidates = cleanup_candidates(old_for_cleanup) if old_for_cleanup is not None else {}
        keep = manifest.all_file_names()
        for am in list_aliases(dst).values():
            keep |= am.file_names()
        deleted = _rm(dst, sorted(set(candidates) - keep), candidates)
        if hook:
            hook("cleaned", dst)
    finally:
        heartbeat.stop()
        _release_lock(dst, token)

    recorded = False
    record_problem: str | None = None
    if record:  # while the source lease still holds
        from airflow_tf_ckpt.core.sidecars.promotions import record_promotion

        try:
            record_promotion(src, chosen.prefix, dst.display(), alias)
            recorded = True
        except (OSError, StorageError):
            pass  # a read-only source: the promotion stands, retention there is not ours to run
        except CheckpointError as exc:  # e.g. PROMOTIONS.json broken since the check above
            record_problem = f"promoted, but not recorded in the source: {exc}"

    return PromotionResult(
        manifest=manifest,
        destination=dst.display(),
        copied=[f.name for f in copied],
        reused=sorted(reused_names),
        deleted=deleted,
        bytes_copied=sum(f.size for f in copied),
        method=method if copied else "none",
        unpublished=unpublished,
        seconds=time.monotonic() - t0,
        alias_path=alias_path,
        recorded=recorded,
        record_problem=record_problem,
    )
