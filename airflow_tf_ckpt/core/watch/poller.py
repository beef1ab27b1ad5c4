"""The :class:`Poller`: one checkpoint dir's polling logic, shared by the sensor and both triggers.

**The state file is the commit signal.** TF writes the ``checkpoint`` state file last, atomically, so
a poll first reads only that file (one GET on gs://, O(1) whatever the number of steps). Only when it
names a step newer than the watermark does the poll list anything, and then only the files of that
step (a name-prefix listing; the whole dir only when more than :data:`MAX_PREFIX_LISTINGS` steps are
new), and it judges the step with the core's ``discover`` over just those files.

A step is *ready* when the state file names it, it is newer than the watermark, all of its files are
there (``require_complete``), and it has *settled*: its state timestamp and its newest file's mtime
are both at least ``settle_seconds`` old.

**Agreement with TensorFlow.** ``tf.train.latest_checkpoint`` answers the state file's
``model_checkpoint_path``, and ``None`` when that step's files are missing (a trainer then starts
from scratch); it never falls back to an older step. So with ``pick="newest"`` a poll whose latest
named step is incomplete fires nothing and says so in one warning naming the missing file (once per
state-file content): it waits for that step (a copy tool that uploaded ``checkpoint`` first) instead
of firing an older one; nor does it fire past that step when ``all_model_checkpoint_paths`` lists
newer ones (a rollback with ``update_checkpoint_state``: TF answers the named step). With
``"oldest"``/``"all"`` every ready step fires in order; a step with
missing files is passed over, with a warning, only once a newer one is ready (TF never completes a
step after naming it: it is damaged). Steps whose prefix has no ``-N`` suffix have no order and are
ignored.

The decisions are pure functions of what was fetched; only :meth:`Poller.apoll` / :meth:`Poller.poll`
do I/O, through a reader with ``read(name, cap, what)``, ``list(prefix)`` and ``location`` (the
storage hook's readers). No Airflow and no TensorFlow here.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import posixpath
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from airflow_tf_ckpt.core.formats.naming import classify, parse_prefix
from airflow_tf_ckpt.core.formats.state import (
    MAX_STATE_BYTES,
    StateFile,
    format_state,
    parse_state,
    resolve_path,
)
from airflow_tf_ckpt.core.steps.discovery import StepStatus, discover
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.watch.snapshot import snapshot_location

log = logging.getLogger(__name__)

# Above this many candidate steps one listing of the dir is cheaper than a listing per step.
MAX_PREFIX_LISTINGS = 4
# Parse state files and run discovery inline below these sizes; on the CPU thread above them.
INLINE_STATE_BYTES = 64 << 10
INLINE_LISTING_ENTRIES = 200
# Candidates judged per discovery pass (a poll judges only as many chunks as it needs).
JUDGE_CHUNK = 64

Entries = list[dict[str, Any]]
Warn = Callable[[str], None]
T = TypeVar("T")

# CPU work (parsing big state files, discovery over many files) runs on ONE worker thread per
# process. A triggerer's loop must win the GIL back quickly; several CPU-bound threads competing
# with it stretched its ticks to 0.2 s in tests, one thread keeps them to a few switch intervals.
_CPU = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tf-ckpt-cpu")


async def on_cpu_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the process's one CPU worker thread, awaited from the running loop."""
    return await asyncio.get_running_loop().run_in_executor(_CPU, functools.partial(fn, *args))


class DirReader(Protocol):
    """Blocking reads of one dir (``CheckpointDirReader`` of the storage hook)."""

    location: Location

    def read(self, name: str, cap: int, what: str) -> bytes | None: ...

    def list(self, prefix: str = "") -> Entries: ...


class AsyncDirReader(Protocol):
    """Async reads of one dir (``AsyncCheckpointDir`` of the storage hook)."""

    location: Location

    def read(self, name: str, cap: int, what: str) -> Awaitable[bytes | None]: ...

    def list(self, prefix: str = "") -> Awaitable[Entries]: ...


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
    step: Any  # the core's CheckpointStep, or None when no file of it was listed
    complete: bool
    settled: bool
    wait_seconds: float  # until it settles (0 when settled)
    committed_at: float | None
    time_source: str | None


class Poller:
    """One dir's polling state: the parsed state file (cached by digest) and first-seen times.

    Candidates are judged lazily, in chunks of :data:`JUDGE_CHUNK` steps, each by the core's
    ``discover`` over just that chunk's files and a state file naming just that chunk: the cost of
    a poll follows the steps it has to look at, not the size of the dir or of the state file.

    :param warn: where one-line warnings go (a step passed over; the latest step's files missing).
        Adapters pass their own logger's ``warning``.
    """

    requests_total = 0  # storage calls made by all pollers of the process (the benchmark)

    def __init__(
        self,
        *,
        prefix: str | None,
        require_complete: bool,
        settle_seconds: float,
        state_filename: str,
        warn: Warn | None = None,
    ) -> None:
        self.prefix = prefix
        self.require_complete = require_complete
        self.settle_seconds = max(0.0, float(settle_seconds or 0))
        self.state_filename = state_filename
        self.warn: Warn = warn or log.warning
        self._state_digest: bytes | None = None
        self._candidates: list[Candidate] = []
        self._latest: Candidate | None = None  # the one model_checkpoint_path names
        self._stamps: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self._said: set[str] = set()  # what was warned about for this state file's content
        self.requests = 0  # storage calls made by this poller (tests)

    def _count(self, n: int) -> None:
        self.requests += n
        Poller.requests_total += n

    # ------------------------------------------------------------------ the state file

    def named_steps(self, location: Location, data: bytes) -> list[Candidate]:
        """The ordered steps the state file names (cached while the file is unchanged)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        if digest != self._state_digest:
            state = parse_state(data, location.display(self.state_filename))
            self._candidates, self._latest = self._named_steps(location, state)
            paths, stamps = state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
            self._stamps = dict(zip(paths, stamps, strict=True)) if len(paths) == len(stamps) else {}
            self._state_digest = digest
            self._said.clear()
        return self._candidates

    def _named_steps(self, location: Location, state: StateFile) -> tuple[list[Candidate], Candidate | None]:
        raws = list(
            dict.fromkeys(
                state.all_model_checkpoint_paths
                + ([state.model_checkpoint_path] if state.model_checkpoint_path else [])
            )
        )
        out: dict[str, Candidate] = {}
        latest: Candidate | None = None
        for raw in raws:
            cand = self._candidate(location, raw)
            if cand is not None:
                cand = out.setdefault(cand.name, cand)
                if raw == state.model_checkpoint_path:
                    latest = cand
        return sorted(out.values(), key=lambda c: c.step), latest

    def _candidate(self, location: Location, raw: str) -> Candidate | None:
        """The candidate a state-file path names, or None (no step number, another prefix, out of dir)."""
        name = resolve_path(location, raw).name
        if name is None and (raw.startswith("/") or "://" in raw) and ".." not in raw.split("/"):
            # an absolute path of another host or bucket: discovery re-homes it by basename if
            # its files are here (it sees the listing; we have not listed yet)
            name = posixpath.basename(raw.rstrip("/")) or None
        if not name:
            return None
        pn = parse_prefix(name)
        if pn.step is None:
            return None
        if self.prefix is not None and pn.base != self.prefix and name != self.prefix:
            return None
        return Candidate(name=name, step=pn.step, raw=raw)

    @staticmethod
    def listing_plan(cands: list[Candidate]) -> list[str]:
        """Name prefixes to list: one per candidate, or ``[""]`` (the whole dir) for many."""
        return [c.name for c in cands] if len(cands) <= MAX_PREFIX_LISTINGS else [""]

    # ------------------------------------------------------------------ judging (CPU only)

    @staticmethod
    def _group(listings: Iterable[Entries], names: set[str]) -> dict[str, Entries]:
        """Listing entries by the checkpoint prefix they belong to (only candidates' prefixes)."""
        groups: dict[str, Entries] = {}
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
        self, location: Location, groups: dict[str, Entries], chunk: list[Candidate]
    ) -> dict[str, StepCheck]:
        """Discovery over one chunk's files and a state file naming only that chunk."""
        raws = [c.raw for c in chunk]
        stamps = [self._stamps[r] for r in raws] if all(r in self._stamps for r in raws) else []
        state_text = format_state(StateFile(raws[-1], raws, stamps, 0.0)).encode()
        entries = [e for c in chunk for e in groups.get(c.name, [])]
        entries.append({"name": location.join(self.state_filename), "size": len(state_text), "type": "file"})
        snapshot = snapshot_location(location, entries, {self.state_filename: state_text})
        by_prefix = {s.prefix: s for s in discover(snapshot, None, state_filename=self.state_filename).steps}
        now = time.time()
        return {c.name: self._judge(c, by_prefix.get(c.name), now) for c in chunk}

    def _judge(self, cand: Candidate, step: Any, now: float) -> StepCheck:
        """Complete? Settled? When was it committed (state timestamp or newest mtime)?"""
        if step is None or not step.in_state:
            return StepCheck(cand, step, False, False, 0.0, None, None)
        times: list[tuple[float, str]] = []
        if step.timestamp_source == "state" and step.timestamp is not None:
            times.append((step.timestamp, "state"))
        mtimes = [f.mtime for f in step.files if f.mtime is not None]
        if mtimes:
            times.append((max(mtimes), "mtime"))
        if times:
            committed_at, source = max(times)
        else:  # the store reports no times: settle from when we first saw it named
            committed_at, source = self._first_seen.setdefault(cand.name, now), "seen"
        wait = max(0.0, committed_at + self.settle_seconds - now) if self.settle_seconds else 0.0
        complete = step.status is StepStatus.COMMITTED
        return StepCheck(cand, step, complete, wait <= 0, wait, committed_at, source)

    def usable(self, check: StepCheck) -> bool:
        return (
            check.step is not None and check.step.in_state and (check.complete or not self.require_complete)
        )

    def select(
        self, location: Location, listings: list[Entries], cands: list[Candidate], pick: str
    ) -> tuple[list[StepCheck], float | None]:
        """The steps to fire now and, if a step is settling, the seconds until it settles.

        ``pick="newest"``: the newest usable and settled step (an older settled step fires while a
        newer complete one settles: saves more frequent than ``settle_seconds`` must not starve
        the sensor), and nothing while the latest step the state file names is incomplete (as
        TF's ``latest_checkpoint``). ``"oldest"``/``"all"``: ready steps oldest first, stopping at
        the first one not ready (a step with missing files is passed over only once a newer step
        is ready: then it is damaged, not in flight).
        """
        judge = _LazyJudge(self, location, self._group(listings, {c.name for c in cands}), cands)
        latest = self._latest_incomplete(judge, location)
        if pick == "newest":
            return ([], None) if latest else self._select_newest(judge, self._tf_latest_step(judge, location))
        return self._select_in_order(judge, location, pick)

    def _tf_latest_step(self, judge: _LazyJudge, location: Location) -> int | None:
        """The step TF's ``latest_checkpoint`` answers: ``model_checkpoint_path``'s, even when
        ``all_model_checkpoint_paths`` lists newer steps (a rollback with
        ``update_checkpoint_state``). ``pick="newest"`` never fires past it, and says so once."""
        latest = self._latest
        if latest is None:
            return None
        beyond = [c.name for c in judge.cands if c.step > latest.step]
        if beyond:
            self._say(
                f"{location.display(self.state_filename)} names {latest.name} as the latest step but "
                f"also lists newer {', '.join(beyond[:3])}: TF's latest_checkpoint returns "
                f"{latest.name}, so no newer step fires",
                f"beyond:{latest.name}",
            )
        return latest.step

    def _latest_incomplete(self, judge: _LazyJudge, location: Location) -> bool:
        """Whether the step ``model_checkpoint_path`` names is a candidate whose files are missing.

        Says so once per state-file content, naming the first missing file.
        """
        latest = self._latest
        if latest is None or latest.name not in judge.index:
            return False
        check = judge(judge.index[latest.name])
        if self.usable(check):
            return False
        missing = check.step.missing[0] if check.step is not None and check.step.missing else None
        missing = missing or f"{latest.name}.index"
        tf_says = "returns None" if missing.endswith(".index") else "names a step TF cannot restore"
        self._say(
            f"{location.display(missing)}: missing, but the state file "
            f"{location.display(self.state_filename)} names {latest.name} as the latest step "
            f"(TF's latest_checkpoint {tf_says}): waiting for it, not firing an older step",
            latest.name,
        )
        return True

    def _say(self, message: str, about: str) -> None:
        if about not in self._said:
            self._said.add(about)
            self.warn(message)

    @staticmethod
    def _select_newest(judge: _LazyJudge, limit: int | None) -> tuple[list[StepCheck], float | None]:
        waits: list[float] = []
        for i in range(len(judge.cands) - 1, -1, -1):
            if limit is not None and judge.cands[i].step > limit:
                continue
            check = judge(i)
            if judge.poller.usable(check):
                if check.settled:
                    return [check], None
                waits.append(check.wait_seconds)  # settling: an older settled step may fire
        return [], (min(waits) if waits else None)

    def _select_in_order(
        self, judge: _LazyJudge, location: Location, pick: str
    ) -> tuple[list[StepCheck], float | None]:
        ready: list[StepCheck] = []
        for i, cand in enumerate(judge.cands):
            check = judge(i)
            if not self.usable(check):
                if not judge.ready_after(i):
                    return ready, None
                self._say(
                    f"{location.display(cand.name)}: named by the state file but its files are missing "
                    "while a newer step is complete: passing over it (damaged or deleted)",
                    cand.name,
                )
                continue
            if not check.settled:
                return ready, check.wait_seconds
            ready.append(check)
            if pick == "oldest":
                break
        return ready, None

    def payload(self, dir_: str, location: Location, check: StepCheck) -> dict[str, Any]:
        """The event / XCom payload of a ready step (see the trigger module's docs)."""
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

    def _after(self, named: list[Candidate], after: int | None) -> list[Candidate]:
        return [c for c in named if after is None or c.step > after]

    async def apoll(
        self, adir: AsyncDirReader, after: int | None, pick: str
    ) -> tuple[list[StepCheck], float | None]:
        """Async poll: the state file, then (only if it names steps after ``after``) their files.

        Network and disk I/O go through ``adir``; parsing a big state file and judging many steps
        run on the CPU thread, so the caller's loop is never stalled by them.
        """
        self._count(1)
        data = await adir.read(self.state_filename, MAX_STATE_BYTES, "a checkpoint state file")
        if data is None:
            return [], None
        if (
            len(data) > INLINE_STATE_BYTES
            and hashlib.blake2b(data, digest_size=16).digest() != self._state_digest
        ):
            named = await on_cpu_thread(self.named_steps, adir.location, data)
        else:
            named = self.named_steps(adir.location, data)
        cands = self._after(named, after)
        if not cands:
            return [], None
        plan = self.listing_plan(cands)
        self._count(len(plan))
        listings = list(await asyncio.gather(*(adir.list(p) for p in plan)))
        if len(cands) > 2 * JUDGE_CHUNK or sum(len(x) for x in listings) > INLINE_LISTING_ENTRIES:
            return await on_cpu_thread(self.select, adir.location, listings, cands, pick)
        return self.select(adir.location, listings, cands, pick)

    def poll(self, reader: DirReader, after: int | None, pick: str) -> tuple[list[StepCheck], float | None]:
        """Blocking twin of :meth:`apoll` (for a sensor's ``poke``)."""
        self._count(1)
        data = reader.read(self.state_filename, MAX_STATE_BYTES, "a checkpoint state file")
        if data is None:
            return [], None
        cands = self._after(self.named_steps(reader.location, data), after)
        if not cands:
            return [], None
        plan = self.listing_plan(cands)
        self._count(len(plan))
        return self.select(reader.location, [reader.list(p) for p in plan], cands, pick)


class _LazyJudge:
    """``judge(i)``: the :class:`StepCheck` of candidate ``i``, judging its chunk on first use."""

    def __init__(
        self, poller: Poller, location: Location, groups: dict[str, Entries], cands: list[Candidate]
    ) -> None:
        self.poller = poller
        self.location = location
        self.groups = groups
        self.cands = cands
        self.index = {c.name: i for i, c in enumerate(cands)}
        self._judged: dict[str, StepCheck] = {}

    def __call__(self, i: int) -> StepCheck:
        name = self.cands[i].name
        if name not in self._judged:
            lo = (i // JUDGE_CHUNK) * JUDGE_CHUNK
            chunk = self.cands[lo : lo + JUDGE_CHUNK]
            self._judged.update(self.poller._judge_chunk(self.location, self.groups, chunk))
        return self._judged[name]

    def ready_after(self, i: int) -> bool:
        """Whether a step newer than candidate ``i`` is usable and settled."""
        return any(self.poller.usable(self(j)) and self(j).settled for j in range(i + 1, len(self.cands)))
