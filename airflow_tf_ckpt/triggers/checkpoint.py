"""Triggers that wait for committed TensorFlow checkpoint steps without blocking the triggerer.

Both triggers run the :class:`~airflow_tf_ckpt.core.watch.poller.Poller` (what "committed, complete
and settled" means, and how a poll stays O(1) while nothing changes: see its module). Network I/O is
gcsfs's async API on the triggerer's loop (one shared session); local disk I/O runs in threads;
parsing a big state file and judging many steps run on one dedicated CPU thread, so the loop is never
stalled by them. Polls start at a random phase of the interval, so that triggers created together
don't poll together. The serialized kwargs are scalars only: their size does not grow with the
number of steps.

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
import hashlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from airflow_tf_ckpt.core.watch import PICK_CHOICES

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.watch.poller import Poller
    from airflow_tf_ckpt.hooks.readers import AsyncCheckpointDir
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

# This module is imported when a DAG file is parsed (a CheckpointEventTrigger is built for its
# AssetWatcher; the sensor validates its arguments with it): it imports only Airflow's trigger base
# classes and the import-free ``core.watch`` package. The Poller (the state file's protobuf,
# discovery) and the storage hook are imported by the methods that poll, in the triggerer.

# = airflow_tf_ckpt.core.formats.state.STATE_FILENAME (TF's name for it), repeated so that the constructors'
# default does not import core.state and protobuf; tests/test_triggers.py checks that they agree.
STATE_FILENAME = "checkpoint"

log = logging.getLogger(__name__)


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
    import airflow_tf_ckpt.core.watch.poller  # noqa: F401
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
        """This trigger's Poller (imported here: not at DAG parse). Warnings go to the trigger's log."""
        from airflow_tf_ckpt.core.watch.poller import Poller

        return Poller(
            prefix=self.prefix,
            require_complete=self.require_complete,
            settle_seconds=self.settle_seconds,
            state_filename=self.state_filename,
            warn=self.log.warning,  # type: ignore[attr-defined]  # LoggingMixin of the trigger classes
        )

    async def apoll(
        self, poller: Poller, adir: AsyncCheckpointDir, after: int | None
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Payloads to fire now (by ``pick``) and the seconds until a settling step may be ready."""
        ready, wait = await poller.apoll(adir, after, self.pick)
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
        from airflow_tf_ckpt.hooks.credentials import StorageCredentialsError
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        hook = CheckpointStorageHook(self.conn_id)
        try:
            async with hook.aopen(self.dir) as adir:  # released before the event leaves
                return await self._poll_until_ready(self.make_poller(), adir, hook)
        except _Fatal as exc:
            return self._error(str(exc))
        except StorageCredentialsError as exc:  # a connection that cannot be used at all
            return self._error(_describe(exc, hook))

    def _error(self, message: str) -> dict[str, Any]:
        return {"status": "error", "dir": self.dir, "prefix": self.prefix, "message": message}

    async def _poll_until_ready(
        self, poller: Poller, adir: AsyncCheckpointDir, hook: CheckpointStorageHook
    ) -> dict[str, Any]:
        """Poll at a fixed rate until a step is ready; raise :class:`_Fatal` after ``max_errors``."""
        from airflow_tf_ckpt.hooks.credentials import StorageCredentialsError

        errors = 0
        while True:
            started = time.monotonic()
            fire: list[dict[str, Any]] = []
            wait: float | None = None
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
            if fire:
                return fire[0]
            # fixed rate: the time the poll took counts towards the interval
            await asyncio.sleep(max(0.0, self.next_sleep(wait) - (time.monotonic() - started)))

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
    the store's public API (``aget``/``aset`` of the single watched asset) refuses to pick one: the
    watermark then lives in memory only, with a warning. (This replaced reading the store's private
    per-asset dicts, ``_by_name``/``_by_uri``, which no public API exposes.)
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
        self._persist_at = math.inf
        self._errors = 0
        self._store_unusable = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", self._common_kwargs())

    def watermark_key(self) -> str:
        """This watcher's key in the asset state store (at most 512 characters)."""
        key = f"tf_ckpt.watermark|{self.state_filename}|{self.prefix or '*'}|{self.dir}"
        if len(key) > 512:
            key = "tf_ckpt.watermark|sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    # ------------------------------------------------------------------ the asset state store

    def _store(self) -> Any:
        """The asset state store the triggerer injected, or None (none, or unusable: see the class)."""
        return None if self._store_unusable else getattr(self, "asset_state_store", None)

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
        store = self._store()
        if store is not None:
            try:
                stored = self._as_step(await store.aget(self.watermark_key()))
                return self.after_step if stored is None else stored
            except ValueError as exc:  # several assets: the public single-asset API refuses
                self._store_unusable = True
                self.log.warning(
                    "%s: the asset state store cannot be used (%s): give each watcher of this dir "
                    "its own kwargs (e.g. a prefix) to persist its watermark",
                    self.dir,
                    exc,
                )
        self.log.info(
            "%s: no asset state store: the watermark lives in memory only (from %s)",
            self.dir,
            self.after_step,
        )
        return self.after_step

    async def _store_watermark(self, step: int) -> None:
        store = self._store()
        if store is not None:
            value = {"step": step, "dir": self.dir, "prefix": self.prefix, "updated": time.time()}
            await store.aset(self.watermark_key(), value)
        self.persisted = step

    async def _persist_if_due(self, hook: CheckpointStorageHook, now: float) -> None:
        """Write the in-memory watermark to the store once its delay is over (retried on failure)."""
        if now < self._persist_at:
            return
        if self.watermark is None or self.watermark == self.persisted:
            self._persist_at = math.inf
            return
        try:
            await self._store_watermark(self.watermark)
            self._persist_at = math.inf
        except Exception as exc:  # noqa: BLE001 - retried at the next wake-up
            self.log.warning(
                "%s: could not persist watermark %s: %s", self.dir, self.watermark, _describe(exc, hook)
            )
            self._persist_at = now + self.poll_interval

    async def _poll_logged(
        self, poller: Poller, adir: AsyncCheckpointDir, hook: CheckpointStorageHook
    ) -> tuple[list[dict[str, Any]], float | None]:
        """One poll; a failure is logged (every ``max_errors``-th in a row at error level), never raised."""
        try:
            fire, wait = await self.apoll(poller, adir, self.watermark)
        except Exception as exc:  # noqa: BLE001 - a watcher never gives up
            self._errors += 1
            every = self.max_errors and self._errors % self.max_errors == 0
            self.log.log(
                logging.ERROR if every else logging.WARNING,
                "%s: poll failed (%d in a row): %s",
                self.dir,
                self._errors,
                _describe(exc, hook),
            )
            return [], None
        self._errors = 0
        return fire, wait

    # ------------------------------------------------------------------ run

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await preload(self.dir)
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        freeze_gc_once()
        hook = CheckpointStorageHook(self.conn_id)
        poller = self.make_poller()
        self.watermark = self.persisted = await self._load_watermark()
        self.log.info("%s: watching for steps after %s", self.dir, self.watermark)
        self._persist_at = math.inf  # when the in-memory watermark is due in the store
        next_poll = 0.0
        async with hook.aopen(self.dir) as adir:
            while True:
                now = time.monotonic()
                await self._persist_if_due(hook, now)
                if now >= next_poll:
                    fire, wait = await self._poll_logged(poller, adir, hook)
                    for payload in fire:
                        if self.watermark is None or payload["step"] > self.watermark:  # never twice
                            yield TriggerEvent(payload)
                            self.watermark = payload["step"]
                            self._persist_at = time.monotonic() + self.persist_delay
                    next_poll = now + self.next_sleep(wait)  # fixed rate
                await asyncio.sleep(max(0.0, min(next_poll, self._persist_at) - time.monotonic()))
