"""Triggers that wait for committed TensorFlow checkpoint steps without blocking the triggerer.

**The state file is the commit signal.** TF writes the ``checkpoint`` state file last, atomically, so
a poll first reads only that file (one GET on gs://, O(1) whatever the number of steps). Only when it
names a step newer than the watermark does the poll list anything, and then only the files of that
step (a name-prefix listing; the whole dir only when more than four steps are new), and judges the
step with the core's ``discover`` over just those files. Network I/O is gcsfs's async API on the
triggerer's loop (one shared session); local disk I/O runs in threads; parsing a big state file and
judging many steps run on one dedicated CPU thread, so the loop is never stalled by them. A poll that
finds nothing new costs one request and no parsing (the parsed state file is cached by digest).
Polls start at a random phase of the interval, so that triggers created together don't poll
together.

A step is *ready* when the state file names it, it is newer than the watermark, all of its files are
there (``require_complete``; an index plus every ``.data-NNNNN-of-MMMMM`` shard, or the V1 files), and
it has *settled*: its state timestamp and its newest file's mtime are both at least
``settle_seconds`` old. A step named by the state file whose files are still missing (a copy tool
that uploaded ``checkpoint`` first) is waited for while it is the newest candidate; once a newer step
is ready, an incomplete older one is passed over with a warning (TF never completes a step after
naming it: such a step is damaged). Steps whose prefix has no ``-N`` suffix have no order and are
ignored by these triggers.

**Event payload** (both triggers)::

    {"status": "success", "dir": <dir as given>, "prefix": <base name, e.g. "ckpt">,
     "checkpoint": <checkpoint prefix in the dir, e.g. "ckpt-1200">,
     "path": <full path or URL of that prefix, for tf.train.load_checkpoint>,
     "step": 1200, "files": ["ckpt-1200.index", "ckpt-1200.data-00000-of-00001"],
     "time": <commit time, unix seconds>, "time_source": "state" | "mtime", "format": "v2" | "v1"}

**Storage errors** (network, HTTP 5xx, permission, a malformed state file) are logged -- with any
credential text redacted -- and retried at the poll interval. :class:`CheckpointTrigger` gives up
after ``max_errors`` consecutive failures (default 10; 0 = never) and fires
``{"status": "error", "dir", "prefix", "message"}``, so a deferred sensor fails with the cause instead
of hanging until its timeout; a connection that cannot be used at all (bad key) fails at once.
:class:`CheckpointEventTrigger` never fires errors (an event would start a DAG run): it keeps
retrying and logs every ``max_errors``-th consecutive failure at error level.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import posixpath
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.formats.state import StateFile
    from airflow_tf_ckpt.core.steps.discovery import CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location
    from airflow_tf_ckpt.hooks.storage import AsyncCheckpointDir, CheckpointStorageHook

# This module is imported when a DAG file is parsed (a CheckpointEventTrigger is built for its
# AssetWatcher; the sensor builds its CheckpointTrigger from here): it imports only Airflow's trigger
# base classes. The core (discovery, the state file and with it protobuf) and the storage hook are
# imported by the methods that poll, which run in the triggerer or the worker.

# = airflow_tf_ckpt.core.formats.state.STATE_FILENAME (TF's name for it), repeated so that the constructors'
# default does not import core.state and protobuf; tests/test_triggers.py checks that they agree.
STATE_FILENAME = "checkpoint"

log = logging.getLogger(__name__)

# CPU work (parsing big state files, discovery over many files) runs on ONE worker thread per
# process. The triggerer's loop must win the GIL back quickly; several CPU-bound threads competing
# with it stretched its ticks to 0.2 s in tests, one thread keeps them to a few switch intervals.
_CPU = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf-ckpt-cpu")


async def _on_cpu_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_CPU, functools.partial(fn, *args))


PICK_CHOICES = ("newest", "oldest")
# Above this many candidate steps one listing of the dir is cheaper than a listing per step.
MAX_PREFIX_LISTINGS = 4
# Parse state files and run discovery inline below these sizes; in a thread above them.
INLINE_STATE_BYTES = 64 << 10
INLINE_LISTING_ENTRIES = 200
# Candidates judged per discovery pass (a poll judges only as many chunks as it needs).
JUDGE_CHUNK = 64


@dataclass(frozen=True)
class Candidate:
    """A step the state file names: its prefix in the dir, step number and raw state-file path."""

    name: str
    step: int
    raw: str


@dataclass
class StepCheck:
    """What a poll found out about one candidate."""

    candidate: Candidate
    step: CheckpointStep | None
    complete: bool
    settled: bool
    wait_seconds: float  # until it settles (0 when settled)
    committed_at: float | None
    time_source: str | None


class Poller:
    """One dir's polling logic, shared by both triggers and the sensor's poke mode.

    The decisions are pure functions of what was fetched (state-file bytes, listing entries); only
    :meth:`apoll` / :meth:`poll` do I/O, async or blocking. Candidates are judged lazily, in chunks
    of :data:`JUDGE_CHUNK` steps, each by the core's ``discover`` over just that chunk's files and a
    state file naming just that chunk: the cost of a poll follows the steps it has to look at, not
    the size of the dir or of the state file. Per-dir caches are tiny: the digest of the last state
    file with its parsed candidates, and when each timeless step was first seen.
    """

    def __init__(
        self, *, prefix: str | None, require_complete: bool, settle_seconds: float, state_filename: str
    ) -> None:
        self.prefix = prefix
        self.require_complete = require_complete
        self.settle_seconds = max(0.0, float(settle_seconds or 0))
        self.state_filename = state_filename
        self._state_digest: bytes | None = None
        self._candidates: list[Candidate] = []
        self._stamps: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self.requests = 0  # storage calls made by this poller (tests)

    requests_total = 0  # by all pollers of the process (the benchmark)

    def _count(self, n: int) -> None:
        self.requests += n
        Poller.requests_total += n

    # ------------------------------------------------------------------ the state file

    def named_steps(self, location: Location, data: bytes) -> list[Candidate]:
        """The ordered steps the state file names (cached while the file is unchanged)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest != self._state_digest:
            from airflow_tf_ckpt.core.formats.state import parse_state

            state = parse_state(data, location.display(self.state_filename))
            self._candidates = self._named_steps(location, state)
            paths, stamps = state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
            self._stamps = dict(zip(paths, stamps, strict=True)) if len(paths) == len(stamps) else {}
            self._state_digest = digest
        return self._candidates

    def _named_steps(self, location: Location, state: StateFile) -> list[Candidate]:
        from airflow_tf_ckpt.core.formats.naming import parse_prefix
        from airflow_tf_ckpt.core.formats.state import resolve_path

        raws = list(
            dict.fromkeys(
                state.all_model_checkpoint_paths
                + ([state.model_checkpoint_path] if state.model_checkpoint_path else [])
            )
        )
        out: dict[str, Candidate] = {}
        for raw in raws:
            name = resolve_path(location, raw).name
            if name is None and (raw.startswith("/") or "://" in raw) and ".." not in raw.split("/"):
                # an absolute path of another host or bucket: discovery re-homes it by basename if
                # its files are here (it sees the listing; we have not listed yet)
                name = posixpath.basename(raw.rstrip("/")) or None
            if not name:
                continue
            pn = parse_prefix(name)
            if pn.step is None:
                continue
            if self.prefix is not None and pn.base != self.prefix and name != self.prefix:
                continue
            out.setdefault(name, Candidate(name=name, step=pn.step, raw=raw))
        return sorted(out.values(), key=lambda c: c.step)

    @staticmethod
    def listing_plan(cands: list[Candidate]) -> list[str]:
        """Name prefixes to list: one per candidate, or ``[""]`` (the whole dir) for many."""
        return [c.name for c in cands] if len(cands) <= MAX_PREFIX_LISTINGS else [""]

    # ------------------------------------------------------------------ judging (CPU only)

    def _group(
        self, location: Location, listings: list[list[dict[str, Any]]], names: set[str]
    ) -> dict[str, list[dict[str, Any]]]:
        """Listing entries by the checkpoint prefix they belong to (only candidates' prefixes)."""
        from airflow_tf_ckpt.core.formats.naming import classify

        groups: dict[str, list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for entries in listings:
            for e in entries:
                full = e["name"].rstrip("/")
                if full in seen or e.get("type") == "directory":
                    continue
                seen.add(full)
                base = posixpath.basename(full)
                role = classify(base)
                owner = role.prefix if role is not None else base
                if owner in names:
                    groups.setdefault(owner, []).append(e)
        return groups

    def _judge_chunk(
        self, reader: Any, groups: dict[str, list[dict[str, Any]]], chunk: list[Candidate]
    ) -> dict[str, StepCheck]:
        from airflow_tf_ckpt.core.formats.state import StateFile, format_state
        from airflow_tf_ckpt.core.steps.discovery import StepStatus, discover

        location: Location = reader.location
        raws = [c.raw for c in chunk]
        stamps = [self._stamps[r] for r in raws] if all(r in self._stamps for r in raws) else []
        state_text = format_state(StateFile(raws[-1], raws, stamps, 0.0)).encode()
        state_path = location.join(self.state_filename)
        entries = [e for c in chunk for e in groups.get(c.name, [])]
        entries.append({"name": state_path, "size": len(state_text), "type": "file"})
        cdir = discover(
            reader.snapshot(entries, {self.state_filename: state_text}),
            None,
            state_filename=self.state_filename,
        )
        by_prefix = {s.prefix: s for s in cdir.steps}
        now = time.time()
        out: dict[str, StepCheck] = {}
        for c in chunk:
            step = by_prefix.get(c.name)
            if step is None or not step.in_state:
                out[c.name] = StepCheck(c, step, False, False, 0.0, None, None)
                continue
            complete = step.status is StepStatus.COMMITTED
            times: list[tuple[float, str]] = []
            if step.timestamp_source == "state" and step.timestamp is not None:
                times.append((step.timestamp, "state"))
            mtimes = [f.mtime for f in step.files if f.mtime is not None]
            if mtimes:
                times.append((max(mtimes), "mtime"))
            if times:
                committed_at, source = max(times)
            else:  # the store reports no times: settle from when we first saw it named
                committed_at, source = self._first_seen.setdefault(c.name, now), "seen"
            wait = max(0.0, committed_at + self.settle_seconds - now) if self.settle_seconds else 0.0
            out[c.name] = StepCheck(c, step, complete, wait <= 0, wait, committed_at, source)
        return out

    def usable(self, check: StepCheck) -> bool:
        return (
            check.step is not None and check.step.in_state and (check.complete or not self.require_complete)
        )

    def select(
        self,
        reader: Any,
        listings: list[list[dict[str, Any]]],
        cands: list[Candidate],
        pick: str,
        warn: Any = None,
    ) -> tuple[list[StepCheck], float | None]:
        """The steps to fire now and, if a step is settling, the seconds until it settles.

        ``pick="newest"``: the newest usable and settled step (an older settled step fires while a
        newer one settles: saves more frequent than ``settle_seconds`` must not starve the
        sensor). ``"oldest"``/``"all"``: ready steps
        oldest first, stopping at the first one not ready (a step with missing files is passed
        over only once a newer step is ready: then it is damaged, not in flight).
        """
        groups = self._group(reader.location, listings, {c.name for c in cands})
        judged: dict[str, StepCheck] = {}

        def check(i: int) -> StepCheck:
            c = cands[i]
            if c.name not in judged:
                lo = (i // JUDGE_CHUNK) * JUDGE_CHUNK
                judged.update(self._judge_chunk(reader, groups, cands[lo : lo + JUDGE_CHUNK]))
            return judged[c.name]

        if pick == "newest":
            waits: list[float] = []
            for i in range(len(cands) - 1, -1, -1):
                ch = check(i)
                if self.usable(ch):
                    if ch.settled:
                        return [ch], None
                    waits.append(ch.wait_seconds)  # settling: an older settled step may fire
            return [], (min(waits) if waits else None)
        ready: list[StepCheck] = []
        for i in range(len(cands)):
            ch = check(i)
            if not self.usable(ch):
                later = next(
                    (j for j in range(i + 1, len(cands)) if self.usable(check(j)) and check(j).settled), None
                )
                if later is None:
                    return ready, None
                if warn is not None:
                    warn(cands[i])
                continue
            if not ch.settled:
                return ready, ch.wait_seconds
            ready.append(ch)
            if pick == "oldest":
                break
        return ready, None

    def payload(self, dir_: str, location: Location, check: StepCheck) -> dict[str, Any]:
        step = check.step
        assert step is not None
        return {
            "status": "success",
            "dir": dir_,
            "prefix": step.base,
            "checkpoint": step.prefix,
            "path": location.display(step.prefix),
            "step": step.step,
            "files": [f.name for f in step.files],
            "time": check.committed_at,
            "time_source": check.time_source,
            "format": step.format,
        }

    # ------------------------------------------------------------------ I/O

    async def apoll(
        self, adir: AsyncCheckpointDir, after: int | None, pick: str, warn: Any = None
    ) -> tuple[list[StepCheck], float | None]:
        """Async poll: the state file, then (only if it names steps after ``after``) their files."""
        from airflow_tf_ckpt.core.formats.state import MAX_STATE_BYTES

        self._count(1)
        data = await adir.read(self.state_filename, MAX_STATE_BYTES, "a checkpoint state file")
        if data is None:
            return [], None
        if (
            len(data) > INLINE_STATE_BYTES
            and hashlib.blake2b(data, digest_size=16).digest() != self._state_digest
        ):
            named = await _on_cpu_thread(self.named_steps, adir.location, data)
        else:
            named = self.named_steps(adir.location, data)
        cands = [c for c in named if after is None or c.step > after]
        if not cands:
            return [], None
        plan = self.listing_plan(cands)
        self._count(len(plan))
        listings = list(await asyncio.gather(*(adir.list(p) for p in plan)))
        if len(cands) > 2 * JUDGE_CHUNK or sum(len(x) for x in listings) > INLINE_LISTING_ENTRIES:
            return await _on_cpu_thread(self.select, adir, listings, cands, pick, warn)
        return self.select(adir, listings, cands, pick, warn)

    def poll(
        self, reader: Any, after: int | None, pick: str, warn: Any = None
    ) -> tuple[list[StepCheck], float | None]:
        """Blocking twin of :meth:`apoll` (for a sensor's ``poke``)."""
        from airflow_tf_ckpt.core.formats.state import MAX_STATE_BYTES

        self._count(1)
        data = reader.read(self.state_filename, MAX_STATE_BYTES, "a checkpoint state file")
        if data is None:
            return [], None
        cands = [c for c in self.named_steps(reader.location, data) if after is None or c.step > after]
        if not cands:
            return [], None
        plan = self.listing_plan(cands)
        self._count(len(plan))
        return self.select(reader, [reader.list(p) for p in plan], cands, pick, warn)


def _describe(exc: BaseException, hook: CheckpointStorageHook) -> str:
    return hook.redact(f"{type(exc).__name__}: {exc}")


class _Fatal(Exception):
    """Stop polling and report (a CheckpointTrigger that exhausted ``max_errors``)."""


_GC_FROZEN = False
_PRELOADED: set[bool] = set()  # True: gcsfs too


def _preload(gcs: bool) -> None:
    """Import what a poll needs: the storage hook (fsspec), the core (the state file's protobuf,
    discovery) and, for gs://, gcsfs. Done in a thread by :func:`preload`: a first import of these
    takes 0.3-1 s on a busy machine, which on the loop stalls every trigger of the triggerer."""
    import airflow_tf_ckpt.core.formats.naming  # noqa: F401
    import airflow_tf_ckpt.core.formats.state  # noqa: F401 - and protobuf
    import airflow_tf_ckpt.core.steps.discovery  # noqa: F401
    import airflow_tf_ckpt.hooks.storage  # noqa: F401

    if gcs:
        import gcsfs.core  # noqa: F401


async def preload(dir_: str) -> None:
    """:func:`_preload` once per process (and once more for the first gs:// dir), off the loop."""
    gcs = str(dir_).startswith(("gs://", "gcs://"))
    if gcs not in _PRELOADED and True not in _PRELOADED:
        await asyncio.to_thread(_preload, gcs)
        _PRELOADED.add(gcs)


def freeze_gc_once() -> bool:
    """``gc.freeze()`` once per process when ``[tf_ckpt] triggerer_gc_freeze`` is on; True if it did.

    In a triggerer, a full CPython collection walks every object of the process, ~200k after
    Airflow's start-up, and blocks the event loop that all triggers share for 0.1-0.3 s
    (``bench/triggerer.py --no-gc-freeze``). Freezing what exists when the first trigger starts
    moves those start-up objects out of the collector's way, as Airflow's dag processor does.
    """
    global _GC_FROZEN
    if _GC_FROZEN:
        return False
    from airflow_tf_ckpt import config

    if not config.triggerer_gc_freeze():
        return False
    import gc

    gc.freeze()
    _GC_FROZEN = True
    log.info(
        "gc.freeze(): %d start-up objects moved out of the collector's way ([tf_ckpt] triggerer_gc_freeze)",
        gc.get_freeze_count(),
    )
    return True


class _CheckpointTriggerBase:
    """Constructor, serialization and selection shared by both triggers."""

    pick = "newest"

    def _setup(
        self,
        *,
        dir: str,
        prefix: str | None,
        after_step: int | None,
        require_complete: bool,
        settle_seconds: float,
        poll_interval: float,
        conn_id: str | None,
        state_filename: str,
        max_errors: int,
    ) -> None:
        if not dir:
            raise ValueError("dir is required")
        if poll_interval is None or float(poll_interval) <= 0:
            raise ValueError("poll_interval must be > 0")
        self.dir = str(dir)
        self.prefix = prefix or None
        self.after_step = None if after_step is None else int(after_step)
        self.require_complete = bool(require_complete)
        self.settle_seconds = float(settle_seconds or 0)
        self.poll_interval = float(poll_interval)
        self.conn_id = conn_id or None
        self.state_filename = state_filename or STATE_FILENAME
        self.max_errors = int(max_errors or 0)

    def _common_kwargs(self) -> dict[str, Any]:
        return {
            "dir": self.dir,
            "prefix": self.prefix,
            "after_step": self.after_step,
            "require_complete": self.require_complete,
            "settle_seconds": self.settle_seconds,
            "poll_interval": self.poll_interval,
            "conn_id": self.conn_id,
            "state_filename": self.state_filename,
            "max_errors": self.max_errors,
        }

    def make_poller(self) -> Poller:
        return Poller(
            prefix=self.prefix,
            require_complete=self.require_complete,
            settle_seconds=self.settle_seconds,
            state_filename=self.state_filename,
        )

    def _warn_passed_over(self, cand: Candidate) -> None:
        log.warning(
            "%s: step %s is named by the state file but its files are missing while a newer "
            "step is complete: passing over it (damaged or deleted)",
            self.dir,
            cand.name,
        )

    async def apoll(
        self, poller: Poller, adir: AsyncCheckpointDir, after: int | None
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Payloads to fire now (by ``pick``) and the seconds until a settling step may be ready."""
        ready, wait = await poller.apoll(adir, after, self.pick, self._warn_passed_over)
        return [poller.payload(self.dir, adir.location, ch) for ch in ready], wait

    def next_sleep(self, wait: float | None) -> float:
        """Seconds to the next poll: the poll interval, shorter when a step is about to settle.

        The first sleep of a trigger is a random fraction of the interval: triggers deferred at
        the same moment (a triggerer restart, a backfill) would otherwise all poll in the same
        instant, in bursts of hundreds of requests, forever. The period stays ``poll_interval``.
        """
        interval = self.poll_interval
        if not getattr(self, "_phased", False):
            self._phased = True
            interval = random.uniform(0.0, interval)
        return interval if wait is None else max(0.01, min(interval, wait + 0.05))


class CheckpointTrigger(_CheckpointTriggerBase, BaseTrigger):
    """Fire once for a committed step newer than ``after_step`` (for deferrable sensors).

    :param dir: checkpoint dir (local path, ``file://`` or ``gs://``).
    :param prefix: only steps of this base name (``ckpt``, ``model.ckpt``); ``None`` = any.
    :param after_step: the watermark: only steps strictly greater fire; ``None`` = any step.
    :param require_complete: wait until every file of the step is there (default True).
    :param settle_seconds: the step's state timestamp and newest mtime must be this old.
    :param poll_interval: seconds between polls.
    :param conn_id: Airflow connection for gs:// credentials (see ``CheckpointStorageHook``).
    :param state_filename: name of the state file (``checkpoint``).
    :param pick: ``newest`` (default) fires the newest ready step; ``oldest`` the oldest one after
        the watermark (for a pipeline that must see every step, one per run).
    :param max_errors: consecutive storage errors before an error event (0 = retry forever).

    The serialized kwargs are these scalars only: their size does not grow with the number of steps.
    """

    def __init__(
        self,
        *,
        dir: str,
        prefix: str | None = None,
        after_step: int | None = None,
        require_complete: bool = True,
        settle_seconds: float = 0.0,
        poll_interval: float = 30.0,
        conn_id: str | None = None,
        state_filename: str = STATE_FILENAME,
        pick: str = "newest",
        max_errors: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._setup(
            dir=dir,
            prefix=prefix,
            after_step=after_step,
            require_complete=require_complete,
            settle_seconds=settle_seconds,
            poll_interval=poll_interval,
            conn_id=conn_id,
            state_filename=state_filename,
            max_errors=max_errors,
        )
        if pick not in PICK_CHOICES:
            raise ValueError(f"pick must be one of {PICK_CHOICES}, not {pick!r}")
        self.pick = pick

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {**self._common_kwargs(), "pick": self.pick},
        )

    async def _wait_for_event(self) -> dict[str, Any]:
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook, StorageCredentialsError

        hook = CheckpointStorageHook(self.conn_id)
        poller = self.make_poller()
        errors = 0
        try:
            async with hook.aopen(self.dir) as adir:
                while True:
                    wait: float | None = None
                    started = time.monotonic()
                    try:
                        fire, wait = await self.apoll(poller, adir, self.after_step)
                        errors = 0
                    except StorageCredentialsError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - storage errors are retried
                        errors += 1
                        msg = _describe(exc, hook)
                        self.log.warning("%s: poll failed (%d in a row): %s", self.dir, errors, msg)
                        if self.max_errors and errors >= self.max_errors:
                            raise _Fatal(f"{errors} consecutive storage errors; last: {msg}") from None
                        fire = []
                    if fire:
                        return fire[0]
                    # fixed rate: the time the poll took counts towards the interval
                    await asyncio.sleep(max(0.0, self.next_sleep(wait) - (time.monotonic() - started)))
        except _Fatal as exc:
            return {"status": "error", "dir": self.dir, "prefix": self.prefix, "message": str(exc)}
        except StorageCredentialsError as exc:
            return {
                "status": "error",
                "dir": self.dir,
                "prefix": self.prefix,
                "message": _describe(exc, hook),
            }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await preload(self.dir)  # before gc.freeze(): the imported modules are frozen too
        freeze_gc_once()
        payload = await self._wait_for_event()  # storage is released before the event leaves
        if payload["status"] == "success":
            self.log.info("%s: step %s is committed", self.dir, payload["step"])
        else:
            self.log.error("%s: giving up: %s", self.dir, payload["message"])
        yield TriggerEvent(payload)


class CheckpointEventTrigger(_CheckpointTriggerBase, BaseEventTrigger):
    """Edge-triggered watcher for ``Asset(..., watchers=[AssetWatcher(name, trigger=...)])``.

    Fires one event per new committed step, oldest first, never twice for the same step and never
    skipping one that exists (a step TF deleted under ``max_to_keep`` before we saw it cannot be
    reported). Same parameters and payload as :class:`CheckpointTrigger`, without ``pick``.

    **Watermark.** The last emitted step is kept in the watched asset's state store
    (``self.asset_state_store``, injected by the Airflow 3.3 triggerer; ``aget``/``aset``) under
    :meth:`watermark_key`, so that a triggerer restart resumes after it. It is written
    ``persist_delay`` seconds (3 s) after the event left ``run()``: by then the triggerer, which
    syncs its events every second, has handed the event to the supervisor. Writing it at once
    could, after a crash, record a step whose event was lost (a skip); writing it a little later
    means that a crash -- or a restart -- within those seconds re-emits the last steps once
    (at-least-once; each payload carries its step, so consumers can de-duplicate). ``after_step``
    is the watermark only while the store holds none. The watermark never moves back.

    The watermark is NOT in the serialized kwargs: the triggerer identifies a watcher by a hash of
    its kwargs, which must not change as steps go by.

    **Without an asset state store** (the trigger run outside a triggerer, as in unit tests), the
    watermark lives in memory only: after a restart it is ``after_step`` again, and the steps after
    it are replayed. A note is logged.

    When one trigger watches several assets (Airflow de-duplicates watchers with identical kwargs),
    the watermark is read as the minimum over them and written to all.
    """

    persist_delay: float = 3.0

    def __init__(
        self,
        *,
        dir: str,
        prefix: str | None = None,
        after_step: int | None = None,
        require_complete: bool = True,
        settle_seconds: float = 0.0,
        poll_interval: float = 30.0,
        conn_id: str | None = None,
        state_filename: str = STATE_FILENAME,
        max_errors: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._setup(
            dir=dir,
            prefix=prefix,
            after_step=after_step,
            require_complete=require_complete,
            settle_seconds=settle_seconds,
            poll_interval=poll_interval,
            conn_id=conn_id,
            state_filename=state_filename,
            max_errors=max_errors,
        )
        self.pick = "all"
        self.watermark: int | None = None  # in memory; the persisted copy is in the asset state store
        self.persisted: int | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", self._common_kwargs())

    def watermark_key(self) -> str:
        """This watcher's key in the asset state store (at most 512 characters)."""
        key = f"tf_ckpt.watermark|{self.state_filename}|{self.prefix or '*'}|{self.dir}"
        if len(key) > 512:
            key = "tf_ckpt.watermark|sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    # ------------------------------------------------------------------ the asset state store

    def _accessors(self) -> list[Any]:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return []
        by_name = getattr(store, "_by_name", None)
        by_uri = getattr(store, "_by_uri", None)
        if isinstance(by_name, dict) and isinstance(by_uri, dict):
            accessors = [*by_name.values(), *by_uri.values()]
            if len(accessors) > 1:  # the store's own get/set refuse to pick one
                return accessors
        return [store]

    @staticmethod
    def _as_step(raw: Any) -> int | None:
        if isinstance(raw, dict):
            raw = raw.get("step")
        if isinstance(raw, bool) or raw is None:
            return None
        try:
            return int(raw)
        except (TypeError, ValueError):
            return None

    async def _load_watermark(self) -> int | None:
        accessors = self._accessors()
        if not accessors:
            self.log.info(
                "%s: no asset state store: the watermark lives in memory only (from %s)",
                self.dir,
                self.after_step,
            )
            return self.after_step
        values = [self._as_step(await acc.aget(self.watermark_key())) for acc in accessors]
        if all(v is None for v in values):
            return self.after_step
        effective = [self.after_step if v is None else v for v in values]
        return None if any(v is None for v in effective) else min(v for v in effective if v is not None)

    async def _store_watermark(self, step: int) -> None:
        value = {"step": step, "dir": self.dir, "prefix": self.prefix, "updated": time.time()}
        for acc in self._accessors():
            await acc.aset(self.watermark_key(), value)
        self.persisted = step

    # ------------------------------------------------------------------ run

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await preload(self.dir)
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        freeze_gc_once()
        hook = CheckpointStorageHook(self.conn_id)
        poller = self.make_poller()
        self.watermark = await self._load_watermark()
        self.persisted = self.watermark
        self.log.info("%s: watching for steps after %s", self.dir, self.watermark)
        persist_at = math.inf  # when the in-memory watermark is due in the store
        next_poll = 0.0
        errors = 0
        async with hook.aopen(self.dir) as adir:
            while True:
                now = time.monotonic()
                if now >= persist_at and self.watermark is not None and self.watermark != self.persisted:
                    try:
                        await self._store_watermark(self.watermark)
                        persist_at = math.inf
                    except Exception as exc:  # noqa: BLE001 - retried at the next wake-up
                        self.log.warning(
                            "%s: could not persist watermark %s: %s",
                            self.dir,
                            self.watermark,
                            _describe(exc, hook),
                        )
                        persist_at = now + self.poll_interval
                if now >= next_poll:
                    started = now
                    fire: list[dict[str, Any]] = []
                    wait: float | None = None
                    try:
                        fire, wait = await self.apoll(poller, adir, self.watermark)
                        errors = 0
                    except Exception as exc:  # noqa: BLE001 - a watcher never gives up
                        errors += 1
                        level = (
                            logging.ERROR
                            if self.max_errors and errors % self.max_errors == 0
                            else logging.WARNING
                        )
                        self.log.log(
                            level, "%s: poll failed (%d in a row): %s", self.dir, errors, _describe(exc, hook)
                        )
                    for payload in fire:
                        if self.watermark is not None and payload["step"] <= self.watermark:
                            continue  # never twice, never backwards
                        yield TriggerEvent(payload)
                        self.watermark = payload["step"]
                        persist_at = time.monotonic() + self.persist_delay
                    next_poll = started + self.next_sleep(wait)  # fixed rate
                await asyncio.sleep(max(0.0, min(next_poll, persist_at) - time.monotonic()))
