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
ever deleted, only directly inside ``DEST``, and only while they hold the recorded bytes
(:mod:`.cleanup`). No write goes through a symlink, and a malformed ``PROMOTIONS.json`` in the
source stops a recording promotion before anything is written.

Between steps 3 and 4 a TF reader (state file) already sees the new step while a manifest reader
still sees the old one: each sees one complete promotion.

The modules: :mod:`.manifest` (the records), :mod:`.copy` (checked copies), :mod:`.lock` (one
promotion per destination), :mod:`.cleanup` (destination safety), :mod:`.select` (the step); this
one is the workflow, in the phases of :data:`PHASES`.
"""

from __future__ import annotations

import datetime as _dt
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError, StorageError
from airflow_tf_ckpt.core.formats.naming import META_SUFFIX
from airflow_tf_ckpt.core.formats.state import (
    STATE_FILENAME,
    StateFile,
    read_state,
    resolve_path,
    write_state,
)
from airflow_tf_ckpt.core.promote.cleanup import (
    check_dest_writable,
    cleanup_candidates,
    remove_recorded,
    step_files,
)
from airflow_tf_ckpt.core.promote.copy import BytesFn, copy_files, copy_method, crc_of
from airflow_tf_ckpt.core.promote.lock import DEFAULT_LOCK_TTL, LOCK_NAME, destination_lock
from airflow_tf_ckpt.core.promote.manifest import (
    MANIFEST_NAME,
    PromotedFile,
    PromotionError,
    PromotionManifest,
    alias_name_ok,
    alias_path,
    list_aliases,
    read_manifest,
    write_alias,
    write_manifest,
)
from airflow_tf_ckpt.core.promote.select import metrics_by_prefix, select_step
from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep, StepStatus, discover
from airflow_tf_ckpt.core.storage.location import GCS_PROTOCOLS, FileInfo, Location

SOURCE_LEASE_TTL = 6 * 3600.0  # the lease on the source step (released at the end; a crash's expires)

# phase names passed to the ``hook`` callback (tests inspect the destination at each one)
PHASES = ("locked", "unpublished", "copied", "state_written", "manifest_written", "alias_written", "cleaned")

ProgressFn = Callable[[int, int, str], None]  # (bytes_done, bytes_total, current file name)
HookFn = Callable[[str, Location], None]  # (phase, destination)


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
# reading a promoted destination (what readers check)


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
            got = crc_of(loc, f.name)
            if got != f.crc32c:
                problems.append(f"{loc.display(f.name)}: crc32c {got}, manifest says {f.crc32c}")
    state = read_state(loc)
    if state is None or state.model_checkpoint_path != manifest.checkpoint_path:
        problems.append(f"{loc.display(STATE_FILENAME)}: does not name {manifest.checkpoint_path!r}")
    return problems


# --------------------------------------------------------------------------------------------
# the request: what promote() decided before it takes the destination lock


@dataclass(frozen=True)
class PromoteRequest:
    """One promotion, decided before the destination lock is taken: the chosen step, the files
    to write and how to report. ``plan`` holds (source name, DEST name) pairs in write order:
    data shards, then sidecars, the ``.index`` last (as TF saves)."""

    src: Location
    dst: Location
    chosen: CheckpointStep
    plan: list[tuple[str, str]]
    sizes: dict[str, int]  # source name -> bytes
    meta: str | None  # the source .meta shipped as the step's own (maybe an earlier step's)
    metrics: dict[str, Any]
    selector: str
    method: str  # see copy.copy_method
    alias: str | None = None
    keep_previous: bool = True
    lock_ttl: float = DEFAULT_LOCK_TTL
    progress: ProgressFn | None = None
    hook: HookFn | None = None

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def write_paths(self) -> list[str]:
        """Every path in DEST that this promotion writes (or removes to unpublish), relative to DEST."""
        return (
            [d for _, d in self.plan]
            + [STATE_FILENAME, MANIFEST_NAME, LOCK_NAME]
            + ([alias_path(self.alias)] if self.alias is not None else [])
        )

    def phase(self, name: str) -> None:
        """Tell the ``hook`` that phase ``name`` (one of :data:`PHASES`) is done."""
        if self.hook:
            self.hook(name, self.dst)


@dataclass
class _Dest:
    """What DEST holds when the lock is taken, and which of its files a reader can reach now."""

    old: PromotionManifest | None
    aliases: dict[str, PromotionManifest]
    listing: dict[str, FileInfo]
    known: dict[str, PromotedFile] = field(default_factory=dict)  # records of files in DEST
    reachable: set[str] = field(default_factory=set)  # named by the manifest, an alias, the state
    pinned: dict[str, str] = field(default_factory=dict)  # file -> another alias pointing at it


@dataclass
class _Published:
    """What the locked part of a promotion did."""

    manifest: PromotionManifest
    copied: list[PromotedFile]
    reused: list[PromotedFile]
    deleted: list[str]
    unpublished: bool
    alias_path: str | None


# --------------------------------------------------------------------------------------------
# promotion


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
    sidecar shipped to DEST under its own name). ``prefix`` restricts the source to one base
    name. ``alias`` also writes ``DEST/aliases/<alias>.json``. ``record`` calls
    :func:`retention.record_promotion` on the source so retention keeps promoted steps. ``lease``
    holds a lease on the source step while it is copied (GC does not delete a leased step; a
    read-only source is copied without one). ``progress(done, total, file)`` reports bytes;
    ``hook(phase, dest)`` is called after each phase in :data:`PHASES` (for tests and logs).
    """
    t0 = time.monotonic()
    src, dst = _locations(source, dest, storage_options, dest_storage_options)
    if alias is not None and not alias_name_ok(alias):
        raise PromotionError(f"invalid alias name {alias!r} (use letters, digits, '.', '_', '-')")
    if _same_dir(src, dst):
        raise PromotionError(
            "destination is the source dir itself; promote into a dedicated dir", dst.display()
        )
    cdir = discover(src, prefix)
    chosen = select_step(cdir, step, prefix=prefix, metric=metric, mode=mode, evaluator=evaluator)
    _check_shippable(src, chosen)
    plan, meta = _plan(cdir, chosen, evaluator)
    req = PromoteRequest(
        src=src,
        dst=dst,
        chosen=chosen,
        plan=plan,
        sizes={n: cdir.listing[n].size for n, _ in plan if n in cdir.listing},
        meta=meta,
        metrics=metrics_by_prefix(cdir, evaluator).get(chosen.prefix, {}),
        selector=_selector(step, metric, mode, evaluator),
        method=copy_method(src, dst),
        alias=alias,
        keep_previous=keep_previous,
        lock_ttl=lock_ttl,
        progress=progress,
        hook=hook,
    )
    check_dest_writable(dst, req.write_paths())
    if record:
        _check_source_record(src)
    return _promote_leased(req, record=record, lease=lease, t0=t0)


def _promote_leased(req: PromoteRequest, *, record: bool, lease: bool, t0: float) -> PromotionResult:
    """Lease the source step, promote it under the destination lock, record it in the source
    (while the lease still holds), release the lease."""
    owner = _lease_source(req.src, req.chosen, SOURCE_LEASE_TTL) if lease else None
    try:
        done = _promote_locked(req)
        recorded, record_problem = _record(req) if record else (False, None)
    finally:
        if owner is not None:
            from airflow_tf_ckpt.core.sidecars.leases import release_lease

            try:
                release_lease(req.src, req.chosen.prefix, owner)
            except OSError:
                pass  # it expires on its own
    return PromotionResult(
        manifest=done.manifest,
        destination=req.dst.display(),
        copied=[f.name for f in done.copied],
        reused=sorted(f.name for f in done.reused),
        deleted=done.deleted,
        bytes_copied=sum(f.size for f in done.copied),
        method=req.method if done.copied else "none",
        unpublished=done.unpublished,
        seconds=time.monotonic() - t0,
        alias_path=done.alias_path,
        recorded=recorded,
        record_problem=record_problem,
    )


def _promote_locked(req: PromoteRequest) -> _Published:
    """The part of :func:`promote` that runs under the destination lock, phase by phase."""
    with destination_lock(req.dst, req.lock_ttl):
        dest = _read_dest(req)
        reused, differ = _match_existing(req, dest)
        unpublished = _unpublish(req, dest, differ)
        copied = _copy(req, reused)
        by_name = {f.name: f for f in reused + copied}
        manifest = _new_manifest(req, [by_name[d] for _, d in req.plan])
        _retain(req, manifest, None if unpublished else dest.old, dest.aliases)
        written_alias = _publish(req, manifest)
        deleted = _cleanup(req, dest.old, manifest)
    return _Published(manifest, copied, reused, deleted, unpublished, written_alias)


# --------------------------------------------------------------------------------------------
# before the lock: where, which step, which files


def _locations(
    source: Location | str,
    dest: Location | str,
    storage_options: dict[str, Any] | None,
    dest_storage_options: dict[str, Any] | None,
) -> tuple[Location, Location]:
    src = source if isinstance(source, Location) else Location.of(source, storage_options)
    if isinstance(dest, Location):
        return src, dest
    return src, Location.of(
        dest, dest_storage_options if dest_storage_options is not None else storage_options
    )


def _same_dir(a: Location, b: Location) -> bool:
    if a.protocol != b.protocol and not ({a.protocol, b.protocol} <= set(GCS_PROTOCOLS)):
        return False
    if a.local:
        return os.path.realpath(a.path) == os.path.realpath(b.path)
    return a.path.strip("/") == b.path.strip("/")


def _selector(step: int | str, metric: str | None, mode: str, evaluator: str | None) -> str:
    """How the step was chosen, as the manifest records it."""
    if str(step) != "best":
        return str(step)
    return f"best:{metric}:{mode}" + (f":{evaluator}" if evaluator else "")


def _check_shippable(src: Location, chosen: CheckpointStep) -> None:
    """Refuse a step that must not be shipped: an orphan (complete by its file names but not
    committed by the state file: possibly a save still being written, its .index half there)
    that does not verify, or a V2 step whose shards do not match its index."""
    if chosen.status is StepStatus.ORPHAN:
        from airflow_tf_ckpt.core.verify.engine import verify_step

        report = verify_step(src, chosen.prefix, format=chosen.format)
        if not report.ok:
            raise PromotionError(
                "step is not named by the state file and does not verify: " + str(report.problems[0]),
                src.display(chosen.prefix),
            )
    elif chosen.format == "v2":
        _refuse_bad_shard_sizes(src, chosen)


def _refuse_bad_shard_sizes(src: Location, step: CheckpointStep) -> None:
    """Never ship a shard with bytes after its last tensor (TF writes none; a sparse 10 TiB
    file would be copied whole) or shorter than its tensors: one index read, no data read."""
    from airflow_tf_ckpt.core.verify.v2 import shard_size_problems

    problems = shard_size_problems(src, step.prefix)
    if problems:
        raise PromotionError(
            f"step does not match its index, refusing: {problems[0]}", src.display(step.prefix)
        )


def _plan(
    cdir: CheckpointDir, chosen: CheckpointStep, evaluator: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """(source name, DEST name) in write order: data shards first, the ``.meta`` and metrics
    sidecars, the ``.index`` last (as TF saves); and the source ``.meta`` shipped, if any."""
    from airflow_tf_ckpt.core.sidecars.metrics import metrics_name

    index = [f.name for f in chosen.files if f.name.endswith(".index")]
    plan = [(f.name, f.name) for f in chosen.files if f.name not in index]
    meta = _meta_for(cdir, chosen)
    if meta is not None:
        plan.append((meta, f"{chosen.prefix}{META_SUFFIX}"))
    sidecar = metrics_name(chosen.prefix, evaluator)
    if sidecar in cdir.listing:
        plan.append((sidecar, sidecar))
    plan += [(n, n) for n in index]
    return plan, meta


def _meta_for(cdir: CheckpointDir, step: CheckpointStep) -> str | None:
    """The ``.meta`` to ship with a step (see :func:`airflow_tf_ckpt.core.steps.order.newest_meta`)."""
    from airflow_tf_ckpt.core.steps.order import newest_meta

    return newest_meta(cdir.listing, step.prefix, step.base, step.step)


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


def _record(req: PromoteRequest) -> tuple[bool, str | None]:
    """Record the promotion in the source's ``PROMOTIONS.json`` (retention keeps the step):
    ``(recorded, why not)``; a read-only source is no problem, a broken record is a warning."""
    from airflow_tf_ckpt.core.sidecars.promotions import record_promotion

    try:
        record_promotion(req.src, req.chosen.prefix, req.dst.display(), req.alias)
    except (OSError, StorageError):
        return False, None  # a read-only source: the promotion stands, retention there is not ours
    except CheckpointError as exc:  # e.g. PROMOTIONS.json broken since the check before copying
        return False, f"promoted, but not recorded in the source: {exc}"
    return True, None


# --------------------------------------------------------------------------------------------
# under the lock: the phases


def _read_dest(req: PromoteRequest) -> _Dest:
    """Phase "locked": what DEST holds now (another process may have promoted meanwhile)."""
    dst = req.dst
    try:
        dst.fs.invalidate_cache(dst.path)
    except (AttributeError, TypeError):
        pass
    req.phase("locked")
    check_dest_writable(dst, req.write_paths())  # again: it may have changed meanwhile
    dest = _Dest(old=read_manifest(dst), aliases=list_aliases(dst), listing=dst.listdir())
    state = read_state(dst) if STATE_FILENAME in dest.listing else None
    _remove_killed_temps(req, dest.listing)
    _index_reachable(dest, req.alias)
    if state is not None and state.model_checkpoint_path:
        r = resolve_path(dst, state.model_checkpoint_path)
        if r.name:
            dest.reachable |= {n for n in dest.listing if n == r.name or n.startswith(r.name + ".")}
    return dest


def _remove_killed_temps(req: PromoteRequest, listing: dict[str, FileInfo]) -> None:
    """Remove the temp files of a local copy that was killed, for the names this promotion
    writes (under the lock nobody else writes them), from DEST and from ``listing``."""
    if not req.dst.local:
        return
    targets = {d for _, d in req.plan}
    for n in [n for n in listing if n.startswith(".") and n.endswith(".tmp")]:
        if n[1:].rsplit(".", 2)[0] in targets:
            try:
                os.unlink(req.dst.join(n))
            except FileNotFoundError:
                pass
            listing.pop(n)


def _index_reachable(dest: _Dest, alias: str | None) -> None:
    """Fill in the records of files already in DEST, which of them the manifest and the aliases
    reach, and which another alias than ``alias`` pins."""
    if dest.old is not None:
        for files in dest.old.retained.values():
            dest.known.update({f.name: f for f in files})
        dest.known.update({f.name: f for f in dest.old.files})
        dest.reachable |= dest.old.file_names()
    for name, am in dest.aliases.items():
        for f in am.files:
            dest.known.setdefault(f.name, f)
            dest.reachable.add(f.name)
            if name != alias:
                dest.pinned.setdefault(f.name, name)


def _match_existing(req: PromoteRequest, dest: _Dest) -> tuple[list[PromotedFile], list[str]]:
    """The target names that exist already: those with identical bytes are reused; those with
    different bytes under a reachable name must not be overwritten while a pointer reaches them."""
    reused: list[PromotedFile] = []
    differ: list[str] = []
    for sname, dname in req.plan:
        info = dest.listing.get(dname)
        if info is None:
            continue
        same = _same_bytes(req, sname, dname, info.size, dest.known.get(dname))
        if same is not None:
            reused.append(same)
        elif dname in dest.reachable:
            differ.append(dname)
    return reused, differ


def _same_bytes(
    req: PromoteRequest, sname: str, dname: str, size: int, rec: PromotedFile | None
) -> PromotedFile | None:
    """The record of ``dname`` in DEST when it holds the bytes of ``sname``, else ``None``."""
    src_size = req.sizes.get(sname)
    if rec is not None:
        if rec.size == src_size == size and rec.crc32c == crc_of(req.src, sname) == crc_of(req.dst, dname):
            return PromotedFile(dname, rec.size, rec.crc32c, sname)
        return None
    # no manifest records it (a promotion killed after its copy or its state file): the same
    # bytes all the same, so reuse it rather than unpublish to overwrite it
    if src_size == size and (crc := crc_of(req.src, sname)) == crc_of(req.dst, dname):
        return PromotedFile(dname, size, crc, sname)
    return None


def _unpublish(req: PromoteRequest, dest: _Dest, differ: list[str]) -> bool:
    """Phase "unpublished", when new bytes must replace reachable ones: remove the manifest first
    (readers check it), then the alias being moved when it reaches these names, then the state
    file (TF). Refused when another alias points at one of them. True when it unpublished."""
    if not differ:
        return False
    held = [d for d in differ if d in dest.pinned]
    if held:
        raise PromotionError(
            f"{held[0]} in the destination has different bytes and alias "
            f"{dest.pinned[held[0]]!r} points at it; move or remove that alias first",
            req.dst.display(),
        )
    doomed = [MANIFEST_NAME]
    alias = req.alias
    if alias is not None and alias in dest.aliases and set(differ) & dest.aliases[alias].file_names():
        doomed.append(alias_path(alias))
        dest.aliases.pop(alias)
    doomed.append(STATE_FILENAME)
    for name in doomed:
        try:
            req.dst.fs.rm_file(req.dst.join(name))
        except FileNotFoundError:
            pass
    req.phase("unpublished")
    return True


def _copy(req: PromoteRequest, reused: list[PromotedFile]) -> list[PromotedFile]:
    """Phase "copied": every planned file not reused, copied and checked."""
    reused_names = {f.name for f in reused}
    on_bytes_of = _progress_of(req, sum(f.size for f in reused))
    todo = [(sname, dname) for sname, dname in req.plan if dname not in reused_names]
    copied = copy_files(req.method, req.src, req.dst, todo, on_bytes_of)
    req.phase("copied")
    return copied


def _progress_of(req: PromoteRequest, done: int) -> Callable[[str], BytesFn]:
    """Per-file byte callbacks that add up into ``progress(done, total, name)``; thread-safe
    (server-side copies of data shards report from threads)."""
    progress, total = req.progress, req.total
    if progress:
        progress(done, total, "")
    lock = threading.Lock()

    def on_bytes_of(name: str) -> BytesFn:
        def on_bytes(n: int) -> None:
            nonlocal done
            with lock:
                done += n
                if progress:
                    progress(done, total, name)

        return on_bytes

    return on_bytes_of


def _new_manifest(req: PromoteRequest, files: list[PromotedFile]) -> PromotionManifest:
    now = time.time()
    chosen, meta = req.chosen, req.meta
    return PromotionManifest(
        promotion_id=f"{_dt.datetime.fromtimestamp(now, _dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        source=req.src.display(),
        source_prefix=chosen.prefix,
        prefix=chosen.prefix,
        base=chosen.base,
        step=chosen.step,
        files=files,
        promoted_at=_now_iso(now),
        promoted_at_unix=now,
        metrics=req.metrics,
        alias=req.alias,
        selector=req.selector,
        meta_from=meta if meta and meta != f"{chosen.prefix}{META_SUFFIX}" else None,
    )


def _now_iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _retain(
    req: PromoteRequest,
    manifest: PromotionManifest,
    previous: PromotionManifest | None,
    aliases: dict[str, PromotionManifest],
) -> None:
    """Record in ``manifest`` the files of earlier promotions kept in DEST: the previous one for
    one more round (readers of the old manifest can finish), and every other alias's target."""
    new_names = manifest.file_names()
    if req.keep_previous and previous is not None and previous.prefix != manifest.prefix:
        kept = [f for f in step_files(previous.prefix, previous.files) if f.name not in new_names]
        if kept:
            manifest.retained[f"previous:{previous.prefix}"] = kept
    for name, am in aliases.items():
        if name != req.alias:
            kept = [f for f in step_files(am.prefix, am.files) if f.name not in new_names]
            if kept:
                manifest.retained[f"alias:{name}"] = kept


def _publish(req: PromoteRequest, manifest: PromotionManifest) -> str | None:
    """Phases "state_written", "manifest_written", "alias_written": the single-object flips that
    publish the promotion, TF's state file first. The alias file's path, if one was written."""
    chosen = req.chosen
    write_state(
        req.dst,
        StateFile(
            model_checkpoint_path=chosen.prefix,
            all_model_checkpoint_paths=[chosen.prefix],
            all_model_checkpoint_timestamps=[chosen.timestamp or manifest.promoted_at_unix],
            last_preserved_timestamp=0.0,
        ),
    )
    req.phase("state_written")
    write_manifest(req.dst, manifest)
    req.phase("manifest_written")
    if req.alias is None:
        return None
    path = write_alias(req.dst, req.alias, manifest)
    req.phase("alias_written")
    return path


def _cleanup(req: PromoteRequest, old: PromotionManifest | None, manifest: PromotionManifest) -> list[str]:
    """Phase "cleaned": delete what only older promotions referenced (never a file no manifest
    recorded, nor one whose bytes are not the recorded ones: :mod:`.cleanup`)."""
    candidates = cleanup_candidates(old) if old is not None else {}
    keep = manifest.all_file_names()
    for am in list_aliases(req.dst).values():
        keep |= am.file_names()
    deleted = remove_recorded(req.dst, sorted(set(candidates) - keep), candidates)
    req.phase("cleaned")
    return deleted
