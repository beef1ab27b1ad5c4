"""``CheckpointSensor``: wait for a committed TensorFlow checkpoint step (poke, reschedule or deferrable).

The sensor succeeds with the step's payload as its XCom (see :mod:`airflow_tf_ckpt.triggers.checkpoint`:
``dir``, ``prefix``, ``checkpoint``, ``path``, ``step``, ``files``, ``time``, ...). All three modes
share the trigger's polling logic (read the state file; list only a newer step's files), so they
agree on what "committed, complete and settled" means.

**Watermark.** ``after_step`` is an explicit watermark (templated). ``watermark="auto"`` keeps one
ACROSS DAG RUNS, so that a pipeline processes each step once. What persists across runs in Airflow 3.3
is the *asset* state store (``context["asset_state_store"][asset]``, rows keyed by asset, readable by
any later run); the *task* state store lives only across the retries and reschedules of one task
instance, so the sensor uses it just for its consecutive-error count in reschedule mode. The sensor
adds a watermark asset to its ``inlets`` -- ``watermark_asset`` if given, else
``x-tf-ckpt://<scheme>/<path of dir>`` -- so the DAG processor registers it, and stores
``{"step": N, ...}`` under a key naming the DAG and the task (two pipelines on one dir keep separate
watermarks). The effective watermark is ``max(after_step, stored)``.

**When it advances** (``commit``):

* ``"downstream"`` (default): the sensor never advances it. The step is committed after the
  processing succeeded, by :meth:`CheckpointSensor.commit_task` (an operator to put at the end of
  the pipeline; it reads the step from the sensor's XCom) or by calling
  :meth:`CheckpointSensor.commit_watermark` from a ``@task``. A run that fails after the sensor
  leaves the watermark where it was, so the next run gets the step again: at-least-once, never lost.
* ``"on_success"``: the sensor advances it itself when it succeeds (at-most-once: a failure
  downstream loses the step). For pipelines that only care about "something newer".

The watermark only moves forward. Runs that overlap (``max_active_runs > 1``) can get the same
step; use ``max_active_runs=1`` for one-step-per-run pipelines. ``pick="oldest"`` returns the oldest
step after the watermark instead of the newest, so that every step is processed, one per run.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator, BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException

from airflow_tf_ckpt import config
from airflow_tf_ckpt.core.watch import PICK_CHOICES
from airflow_tf_ckpt.triggers.checkpoint import STATE_FILENAME, CheckpointTrigger

if TYPE_CHECKING:  # the hook and the Poller import the storage core: when the sensor runs, not at DAG parse
    from airflow_tf_ckpt.core.watch.poller import Poller
    from airflow_tf_ckpt.hooks.readers import CheckpointDirReader
    from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

COMMIT_CHOICES = ("downstream", "on_success")
ERRORS_KEY = "tf_ckpt.poll_errors"


def watermark_asset_for(dir: str) -> Asset:
    """The default watermark asset of a checkpoint dir: ``x-tf-ckpt://<scheme>/<path>``.

    An ``x-`` scheme is left alone by Airflow's URI normalisation and cannot clash with an asset a
    training DAG may already declare for the dir itself (``gs://...``).
    """
    dir = str(dir)
    if "://" in dir:  # the scheme as hooks.storage.url_protocol names it (not imported at parse time)
        scheme, path = dir.split("://", 1)
        scheme = scheme.lower()
    else:
        scheme, path = "file", os.path.abspath(os.path.expanduser(dir))
    uri = f"x-tf-ckpt://{scheme}/{path.strip('/')}"
    return Asset(name=uri, uri=uri)


def _as_int(value: Any, what: str) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if value in ("", "None", "none", "null"):
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AirflowException(f"{what} must be an integer step, not {value!r}") from None


def _step_of(value: Any) -> int | None:
    if isinstance(value, dict):
        value = value.get("step")
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _accessor(context: Any, asset: Asset) -> Any:
    """The asset-state-store accessor of ``asset`` in this task's context.

    Through ``context["asset_state_store"]`` when the task has the asset as an inlet/outlet; else
    an accessor by asset name (the Execution API checks that the asset exists, not that the task
    declares it), so a plain ``@task`` can commit a watermark too.
    """
    store = context.get("asset_state_store") if hasattr(context, "get") else None
    if store is not None:
        try:
            return store[asset]
        except KeyError:
            pass
    from airflow.sdk.execution_time.context import AssetStateStoreAccessor

    return AssetStateStoreAccessor(name=asset.name)


#: retries a deferrable sensor gets unless the task or its ``default_args`` say otherwise (below)
DEFERRAL_RACE_RETRIES = 2
DEFERRAL_RACE_RETRY_DELAY = timedelta(seconds=5)


def _deferral_race_retries(kwargs: dict[str, Any]) -> None:
    """Give a deferrable sensor a quick retry unless ``retries``/``retry_delay`` are set.

    Airflow 3.3's scheduler can fail a deferred task whose trigger fires within a scheduler loop of
    the deferral: the trigger has already re-queued the task (QUEUED) when the executor's "success"
    of the deferring process is handled, and the scheduler then reads the task as killed
    externally ("finished with state success, but the task instance's state attribute is queued")
    and fails it (it only tolerates SCHEDULED there; apache/airflow#71580, #72716). The step the
    trigger found is not lost (the watermark is not advanced), but the run fails. With a retry the
    same scheduler path marks the try up_for_retry, and the next try finds the step at once.
    """
    defaults = kwargs.get("default_args") or {}
    if "retries" not in kwargs and "retries" not in defaults:
        kwargs["retries"] = DEFERRAL_RACE_RETRIES
    if "retry_delay" not in kwargs and "retry_delay" not in defaults:
        kwargs["retry_delay"] = DEFERRAL_RACE_RETRY_DELAY


class CheckpointSensor(BaseSensorOperator):
    """Wait until ``dir`` holds a committed (complete, settled) step after the watermark.

    :param dir: checkpoint dir: local path, ``file://`` or ``gs://`` (templated).
    :param prefix: base name of the steps (``ckpt``, ``model.ckpt``); ``None`` = any (templated).
    :param after_step: explicit watermark: only steps strictly greater count (templated).
    :param watermark: ``"auto"`` to keep the watermark across DAG runs (see the module docs);
        ``None`` (default) to use ``after_step`` only.
    :param watermark_asset: the asset whose state store holds the automatic watermark (default
        :func:`watermark_asset_for` ``(dir)``; required when ``dir`` is templated).
    :param commit: ``"downstream"`` (default) or ``"on_success"``: who advances the watermark.
    :param pick: ``"newest"`` (default) or ``"oldest"`` step after the watermark.
    :param require_complete: wait for every file of the step (default True).
    :param settle_seconds: minimum age of the step (default ``[tf_ckpt] settle_seconds``).
    :param conn_id: Airflow connection for gs:// credentials.
    :param state_filename: the state file's name (``checkpoint``).
    :param max_errors: consecutive storage errors tolerated before failing (0 = never fail on them).
    :param deferrable: defer to the triggerer (default ``[operators] default_deferrable``). A
        deferrable sensor gets ``retries=2`` and ``retry_delay=5 s`` unless the task or its
        ``default_args`` set them: Airflow 3.3's scheduler can fail a deferred task whose trigger
        fires right after the deferral (see :func:`_deferral_race_retries`); a retry finds the step.
    :param poke_interval: seconds between polls (default ``[tf_ckpt] poll_interval``).
    """

    template_fields: Sequence[str] = ("dir", "prefix", "after_step", "conn_id")
    ui_color = "#ff8f00"

    def __init__(
        self,
        *,
        dir: str,
        prefix: str | None = None,
        after_step: int | str | None = None,
        watermark: str | None = None,
        watermark_asset: Asset | None = None,
        commit: str = "downstream",
        pick: str = "newest",
        require_complete: bool = True,
        settle_seconds: float | None = None,
        conn_id: str | None = None,
        state_filename: str = STATE_FILENAME,
        max_errors: int = 10,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", config.poll_interval())
        if deferrable:
            _deferral_race_retries(kwargs)
        if watermark not in (None, "auto"):
            raise ValueError(f"watermark must be None or 'auto', not {watermark!r}")
        if commit not in COMMIT_CHOICES:
            raise ValueError(f"commit must be one of {COMMIT_CHOICES}, not {commit!r}")
        if pick not in PICK_CHOICES:
            raise ValueError(f"pick must be one of {PICK_CHOICES}, not {pick!r}")
        if watermark == "auto" and watermark_asset is None:
            if "{{" in str(dir) or "{%" in str(dir):
                raise ValueError("dir is templated: pass watermark_asset=Asset(...) for watermark='auto'")
            watermark_asset = watermark_asset_for(dir)
        if watermark_asset is not None:
            inlets = kwargs.pop("inlets", None) or []
            inlets = list(inlets) if isinstance(inlets, (list, tuple)) else [inlets]
            if watermark_asset not in inlets:
                inlets.append(watermark_asset)
            kwargs["inlets"] = inlets
        super().__init__(**kwargs)
        self.dir = dir
        self.prefix = prefix
        self.after_step = after_step
        self.watermark = watermark
        self.watermark_asset = watermark_asset
        self.commit = commit
        self.pick = pick
        self.require_complete = require_complete
        self.settle_seconds = config.settle_seconds() if settle_seconds is None else float(settle_seconds)
        self.conn_id = conn_id
        self.state_filename = state_filename
        self.max_errors = int(max_errors or 0)
        self.deferrable = deferrable
        self._after: int | None = None
        self._poller: Poller | None = None
        self._reader: CheckpointDirReader | None = None
        self._hook: CheckpointStorageHook | None = None
        self._errors = 0

    # ------------------------------------------------------------------ the watermark

    def watermark_key(self) -> str:
        """This sensor's key in the watermark asset's state store.

        Made of the DAG and task ids only (never of templated fields, which a committing task
        sees unrendered); the asset already stands for the dir.
        """
        key = f"tf_ckpt.sensor|{self.dag_id}|{self.task_id}"
        if len(key) > 512:
            key = "tf_ckpt.sensor|sha256:" + hashlib.sha256(key.encode()).hexdigest()
        return key

    def stored_watermark(self, context: Any) -> int | None:
        if self.watermark != "auto" or self.watermark_asset is None:
            return None
        return _step_of(_accessor(context, self.watermark_asset).get(self.watermark_key()))

    def commit_watermark(self, context: Any, step: int | dict[str, Any] | None = None) -> int | None:
        """Advance this sensor's automatic watermark to ``step`` (never backwards); return it.

        Call it from any task of the same DAG once the step was processed, e.g.
        ``wait.commit_watermark(get_current_context(), info["step"])``; ``step`` may be the sensor's
        XCom dict, and defaults to it (pulled from the sensor's task).
        """
        if self.watermark != "auto" or self.watermark_asset is None:
            raise AirflowException(f"{self.task_id}: commit_watermark needs watermark='auto'")
        if step is None:
            step = context["ti"].xcom_pull(task_ids=self.task_id)
        new = _step_of(step)
        if new is None:
            raise AirflowException(f"{self.task_id}: no step to commit ({step!r})")
        acc = _accessor(context, self.watermark_asset)
        key = self.watermark_key()
        old = _step_of(acc.get(key))
        if old is not None and old >= new:
            self.log.info("Watermark of %s stays at %s (asked for %s)", self.dir, old, new)
            return old
        acc.set(
            key,
            {
                "step": new,
                "dir": str(self.dir),
                "prefix": self.prefix,
                "updated": time.time(),
                "run_id": context.get("run_id") if hasattr(context, "get") else None,
            },
        )
        self.log.info("Watermark of %s advanced from %s to %s", self.dir, old, new)
        return new

    def commit_task(self, task_id: str | None = None, **kwargs: Any) -> CheckpointWatermarkOperator:
        """An operator that commits the step this sensor returned (put it after the processing)."""
        if self.watermark != "auto" or self.watermark_asset is None:
            raise ValueError(f"{self.task_id} has no automatic watermark (watermark='auto')")
        if "dag" not in kwargs and self.has_dag():
            kwargs["dag"] = self.dag
        return CheckpointWatermarkOperator(sensor=self, task_id=task_id or f"{self.task_id}_commit", **kwargs)

    def _effective_after(self, context: Any) -> int | None:
        explicit = _as_int(self.after_step, "after_step")
        stored = self.stored_watermark(context)
        values = [v for v in (explicit, stored) if v is not None]
        return max(values) if values else None

    # ------------------------------------------------------------------ execution

    def _trigger(self, after: int | None) -> CheckpointTrigger:
        return CheckpointTrigger(
            dir=str(self.dir),
            prefix=self.prefix or None,
            after_step=after,
            require_complete=self.require_complete,
            settle_seconds=self.settle_seconds,
            poll_interval=float(self.poke_interval),
            conn_id=self.conn_id,
            state_filename=self.state_filename,
            pick=self.pick,
            max_errors=self.max_errors,
        )

    def execute(self, context: Any) -> Any:
        self._after = self._effective_after(context)
        self.log.info(
            "Waiting for a committed step of %s%s after %s",
            self.dir,
            f" (prefix {self.prefix})" if self.prefix else "",
            self._after,
        )
        if self.deferrable:
            payload = self._check(context)
            if payload is None:
                self.defer(
                    trigger=self._trigger(self._after),
                    method_name="execute_complete",
                    timeout=timedelta(seconds=float(self.timeout)),
                )
            return self._succeed(context, payload)
        payload = super().execute(context)
        return self._succeed(context, payload)

    def poke(self, context: Any) -> bool | PokeReturnValue:
        payload = self._check(context)
        return PokeReturnValue(is_done=True, xcom_value=payload) if payload is not None else False

    def _check(self, context: Any) -> dict[str, Any] | None:
        """One poll: the payload of the step to return, or None. Tolerates ``max_errors`` errors."""
        from airflow_tf_ckpt.hooks.credentials import StorageCredentialsError
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        if self._hook is None:
            self._hook = CheckpointStorageHook(self.conn_id)
        hook = self._hook  # the one that knows the connection's secrets, to redact them
        try:
            payload = self._poll_once(hook)
        except StorageCredentialsError as exc:
            raise AirflowException(hook.redact(exc)) from None
        except Exception as exc:  # noqa: BLE001 - storage errors are retried up to max_errors
            errors = self._count_error(context)
            msg = hook.redact(f"{type(exc).__name__}: {exc}")
            if self.max_errors and errors >= self.max_errors:
                raise AirflowException(
                    f"{self.dir}: {errors} consecutive storage errors; last: {msg}"
                ) from None
            self.log.warning("%s: poll failed (%d in a row): %s", self.dir, errors, msg)
            return None
        self._reset_errors(context)
        return payload

    def _poll_once(self, hook: CheckpointStorageHook) -> dict[str, Any] | None:
        """The Poller's blocking poll (poller and reader kept across pokes of this process)."""
        from airflow_tf_ckpt.core.watch.poller import Poller

        if self._poller is None:
            self._poller = Poller(
                prefix=self.prefix or None,
                require_complete=self.require_complete,
                settle_seconds=self.settle_seconds,
                state_filename=self.state_filename,
                warn=self.log.warning,
            )
        if self._reader is None:
            self._reader = hook.open(str(self.dir))
        ready, _ = self._poller.poll(self._reader, self._after, self.pick)
        return self._poller.payload(str(self.dir), self._reader.location, ready[0]) if ready else None

    def _task_store(self, context: Any) -> Any:
        return context.get("task_state_store") if self.reschedule and hasattr(context, "get") else None

    def _count_error(self, context: Any) -> int:
        store = self._task_store(context)
        if store is None:
            self._errors += 1
            return self._errors
        errors = int(store.get(ERRORS_KEY) or 0) + 1  # survives reschedules of this task instance
        store.set(ERRORS_KEY, errors)
        return errors

    def _reset_errors(self, context: Any) -> None:
        self._errors = 0
        store = self._task_store(context)
        if store is not None and store.get(ERRORS_KEY):
            store.delete(ERRORS_KEY)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        if not event or event.get("status") != "success":
            message = (event or {}).get("message", "the trigger returned no event")
            raise AirflowException(f"{self.task_id}: waiting for {self.dir} failed: {message}")
        return self._succeed(context, event)

    def _succeed(self, context: Any, payload: dict[str, Any]) -> dict[str, Any]:
        self.log.info("Step %s of %s is committed: %s", payload.get("step"), self.dir, payload.get("path"))
        if self.watermark == "auto" and self.commit == "on_success":
            self.commit_watermark(context, payload)
        return payload


class CheckpointWatermarkOperator(BaseOperator):
    """Commit the step a :class:`CheckpointSensor` returned to its automatic watermark.

    Put it downstream of the processing (default trigger rule: only when everything upstream
    succeeded). Build it with ``sensor.commit_task()``.
    """

    ui_color = "#ffcc80"

    def __init__(self, *, sensor: CheckpointSensor, **kwargs: Any) -> None:
        if sensor.watermark != "auto" or sensor.watermark_asset is None:
            raise ValueError(f"{sensor.task_id} has no automatic watermark (watermark='auto')")
        inlets = list(kwargs.pop("inlets", None) or [])
        if sensor.watermark_asset not in inlets:
            inlets.append(sensor.watermark_asset)
        super().__init__(inlets=inlets, **kwargs)
        self.sensor_task_id = sensor.task_id
        self._sensor = sensor

    def execute(self, context: Any) -> int | None:
        payload = context["ti"].xcom_pull(task_ids=self.sensor_task_id)
        if payload is None:
            raise AirflowException(f"{self.sensor_task_id} returned no step to commit")
        sensor = self.dag.get_task(self.sensor_task_id) if self.dag else self._sensor
        if not isinstance(sensor, CheckpointSensor):  # a mapped or replaced task of that id
            raise AirflowException(f"{self.sensor_task_id} is not a CheckpointSensor")
        return sensor.commit_watermark(context, payload)
