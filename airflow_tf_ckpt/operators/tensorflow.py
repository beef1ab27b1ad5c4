"""Operators that run TensorFlow: restore a step, and evaluate it.

TensorFlow is imported only inside ``execute`` (through :mod:`airflow_tf_ckpt.tf_runtime`), so a
DAG file using these operators parses on a scheduler or dag-processor without TF installed.

Routing: ``queue`` defaults to ``[tf_ckpt] gpu_queue`` (``gpu``), so with the CeleryExecutor these
tasks go to the worker started with ``airflow celery worker -q gpu`` on the GPU host. Pass
``queue=...`` to override it. ``require_gpu=True`` fails the task (without retries) when TF sees no
GPU, instead of silently evaluating on a CPU.

While :class:`EvaluateCheckpointOperator` evaluates, the step is LEASED (``core.leases``): a
retention run at the same time never deletes a leased step, so the files cannot vanish under the
evaluation (what happens to Keras' SidecarEvaluator when the trainer's ``max_to_keep`` sweeps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, StepArg, lease_owner, load_callable

if TYPE_CHECKING:  # discovery pulls in protobuf, storage the fsspec seam: not at DAG-parse time
    from airflow_tf_ckpt.core.steps.discovery import CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location

FORMATS = ("tf2", "tf1")


def _gpu_queue() -> str:
    from airflow_tf_ckpt.config import gpu_queue

    return gpu_queue()


class RestoreCheckpointOperator(BaseCheckpointOperator):
    """Restore one checkpoint step with TensorFlow (on the GPU queue), optionally run ``fn`` on it.

    :param ckpt_dir: checkpoint dir, local or ``gs://`` (templated). Non-local steps are staged
        to a local temp dir through fsspec first (see :mod:`airflow_tf_ckpt.tf_runtime`).
    :param step: step number, prefix name or ``latest`` (templated).
    :param build_fn: TF2: a callable (or dotted path) returning a ``tf.train.Checkpoint`` over the
        model/optimizer built as in training. TF1: optional; builds the graph's variables (and may
        return a Saver or var_list) instead of importing the ``.meta``.
    :param format: ``tf2`` (object-based, ``tf.train.Checkpoint``) or ``tf1`` (``Saver``; graph
        from the newest ``.meta`` at or before the step, as ``import_meta_graph`` in the seed code).
    :param match: TF2 matching: ``existing`` (default), ``consumed`` or ``partial``
        (see :func:`airflow_tf_ckpt.tf_runtime.restore_tf2`).
    :param meta_graph: TF1: an explicit ``.meta`` URL/path to import.
    :param fn: optional ``fn(restored, step)`` run after the restore; its return value (JSON-able)
        is returned in the XCom under ``result``.
    :param require_gpu: fail (no retry) when TensorFlow sees no GPU.
    :param lease_ttl: the step is leased while it is read (retention keeps it); seconds after
        which a lease left by a crashed worker expires.
    :param queue: defaults to ``[tf_ckpt] gpu_queue``.
    """

    template_fields: Sequence[str] = (*BaseCheckpointOperator.template_fields, "meta_graph")
    ui_color = "#ffb347"

    def __init__(
        self,
        *,
        ckpt_dir: str,
        step: StepArg = "latest",
        build_fn: Callable[[], Any] | str | None = None,
        format: str = "tf2",
        match: str = "existing",
        meta_graph: str | None = None,
        fn: Callable[[Any, int | None], Any] | str | None = None,
        require_gpu: bool = False,
        lease_ttl: float = 6 * 3600.0,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("queue") is None:
            kwargs["queue"] = _gpu_queue()
        super().__init__(ckpt_dir=ckpt_dir, step=step, **kwargs)
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, not {format!r}")
        if format == "tf2" and build_fn is None:
            raise ValueError(
                "format='tf2' needs build_fn (a callable returning a tf.train.Checkpoint "
                "over the model built as in training)"
            )
        self.build_fn = build_fn
        self.format = format
        self.match = match
        self.meta_graph = meta_graph
        self.fn = fn
        self.require_gpu = require_gpu
        self.lease_ttl = lease_ttl

    # -- the restore itself ------------------------------------------------------------------

    def restore(self, loc: Location, step: CheckpointStep) -> Any:
        """Restore ``step`` with tf_runtime; the caller closes the result."""
        restored = self._restore(loc, step)
        self.log.info("Restored %s on %s", loc.display(step.prefix), restored.device.device)
        return restored

    def _restore(self, loc: Location, step: CheckpointStep) -> Any:
        from airflow_tf_ckpt import tf_runtime

        url = loc.display(step.prefix)
        build = load_callable(self.build_fn, "build_fn") if self.build_fn is not None else None
        try:
            if self.format == "tf1":
                return tf_runtime.restore_tf1(
                    url,
                    build_graph=build,
                    meta_graph=self.meta_graph or None,
                    location=loc,
                    require_gpu=self.require_gpu,
                    logger=self.log,
                )
            assert build is not None
            return tf_runtime.restore_tf2(
                url, build, match=self.match, location=loc, require_gpu=self.require_gpu, logger=self.log
            )
        except tf_runtime.GpuNotAvailableError as exc:
            # retrying on the same CPU-only worker cannot help
            raise AirflowFailException(str(exc)) from exc
        except tf_runtime.CheckpointRestoreError as exc:
            raise AirflowFailException(str(exc)) from exc

    def _summary(self, loc: Location, step: CheckpointStep, restored: Any) -> dict[str, Any]:
        return {
            "prefix": step.prefix,
            "step": step.step,
            "url": loc.display(step.prefix),
            "format": self.format,
            "device": restored.device.device,
            "gpus": list(restored.device.gpus),
        }

    def execute(self, context: Any) -> dict[str, Any]:
        loc = self.get_location()
        step = self.resolve_step(self.discover(loc))
        with self.hold(context, loc, step, self.lease_ttl) as step:
            restored = self.restore(loc, step)
            try:
                out = self._summary(loc, step, restored)
                if self.fn is not None:
                    out["result"] = load_callable(self.fn, "fn")(restored, step.step)
            finally:
                restored.close()
        return out


def clean_metrics(raw: Any, where: str) -> dict[str, float]:
    """``eval_fn``'s return value as ``{name: float}``; anything else is a clear error.

    Non-finite values (a diverged loss) are kept: they are a result, and the sidecar records them
    (retention and promotion never pick a NaN as "best").
    """
    if not isinstance(raw, dict):
        raise AirflowFailException(
            f"eval_fn must return a dict of metric name -> number for {where}, got {type(raw).__name__}"
        )
    out: dict[str, float] = {}
    for k, v in raw.items():
        if hasattr(v, "item") and callable(v.item):  # numpy / TF scalars
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AirflowFailException(f"eval_fn returned a non-numeric metric {k!r}={v!r} for {where}")
        out[str(k)] = float(v)
    return out


def json_safe_metrics(metrics: dict[str, float]) -> dict[str, float | str]:
    """Metrics for XCom and Asset extras: NaN/inf spelled as strings (strict JSON, as the sidecar)."""
    return {
        k: v if math.isfinite(v) else ("NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity"))
        for k, v in metrics.items()
    }


def emit_asset_events(
    context: Any, outlets: Sequence[Any], extra: dict[str, Any], alias_uri: str | None = None
) -> int:
    """Attach ``extra`` to the outlet Asset events of this task.

    Classic operators cannot ``yield Metadata`` (Airflow only drains generators of ``@task``
    functions), so we write to ``context["outlet_events"]``: each :class:`Asset` in ``outlets``
    gets ``extra``; each :class:`AssetAlias` gets a new event for ``Asset(alias_uri)`` (a URI known
    only at run time, e.g. the promotion destination). Returns how many events were filled.
    """
    from airflow.sdk import Asset, AssetAlias

    events = context.get("outlet_events") if hasattr(context, "get") else None
    if events is None:
        return 0
    n = 0
    for outlet in outlets or ():
        if isinstance(outlet, Asset):
            events[outlet].extra.update(extra)
            n += 1
        elif isinstance(outlet, AssetAlias) and alias_uri:
            events[outlet].add(Asset(uri=alias_uri, name=alias_uri), extra=dict(extra))
            n += 1
    return n


class EvaluateCheckpointOperator(RestoreCheckpointOperator):
    """Restore a step, run ``eval_fn(restored, step) -> {metric: float}``, and publish the metrics.

    The metrics are written to the step's sidecar of ``evaluator`` (``PREFIX.metrics~EVALUATOR.json``;
    without one, the default ``PREFIX.metrics.json``), read by retention's ``keep_best`` and by
    ``PromoteCheckpointOperator(step="best")`` given the same ``evaluator``, returned as the XCom,
    and put in the ``extra`` of this task's outlet Asset events (pass ``outlets=[Asset(...)]``).
    The sidecar counts this evaluator's evaluations of the step (``evaluations``, ``history``).

    The step is leased for the whole evaluation (and re-checked once the lease is held), so a
    concurrent retention run cannot delete it.

    :param eval_fn: callable or dotted path; gets the restored object (``restored.model`` for
        ``tf.train.Checkpoint(model=...)``; a ``RestoredGraph`` with ``.session`` for TF1) and the
        step number.
    :param write_sidecar: write the metrics sidecar (default True).
    :param evaluator: the evaluator's name (templated; e.g. the DAG's dag_id): two evaluators of
        one dir keep separate records. ``None``: the default sidecar, as a single evaluator.

    Returns (XCom): ``prefix``, ``step``, ``url``, ``metrics``, ``device``, ``evaluator``,
    ``evaluations`` (this evaluator's count for the step, with this one; 0 without a sidecar).
    """

    template_fields: Sequence[str] = (*RestoreCheckpointOperator.template_fields, "evaluator")
    ui_color = "#ff9f40"

    def __init__(
        self,
        *,
        eval_fn: Callable[[Any, int | None], dict[str, float]] | str,
        write_sidecar: bool = True,
        evaluator: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.eval_fn = eval_fn
        self.write_sidecar = write_sidecar
        self.evaluator = evaluator
        if evaluator is not None and "{{" not in str(evaluator):
            # core.naming, not core.metrics: this runs at DAG parse, where the discovery core
            # (protobuf) and the storage seam must not be imported
            from airflow_tf_ckpt.core.formats.naming import EVALUATOR_RE

            if not isinstance(evaluator, str) or not EVALUATOR_RE.match(evaluator):
                raise ValueError(
                    f"invalid evaluator name {evaluator!r} (letters, digits, '_', '.', '-'; "
                    "at most 250; not starting with '.' or '-')"
                )

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_tf_ckpt.core.sidecars.metrics import check_evaluator

        evaluator = check_evaluator(None if self.evaluator in (None, "", "None") else str(self.evaluator))
        evaluate = load_callable(self.eval_fn, "eval_fn")
        loc = self.get_location()
        step = self.resolve_step(self.discover(loc))
        url = loc.display(step.prefix)
        with self.hold(context, loc, step, self.lease_ttl) as step:
            restored = self.restore(loc, step)
            try:
                raw = evaluate(restored, step.step)
                device = restored.device.device
            finally:
                restored.close()
            metrics = clean_metrics(raw, url)
            evaluations = (
                self._record(context, loc, step, metrics, device, evaluator) if self.write_sidecar else 0
            )
        self.log.info("Metrics of %s: %s", url, ", ".join(f"{k}={v:.6g}" for k, v in metrics.items()))
        if not all(math.isfinite(v) for v in metrics.values()):
            self.log.warning("Non-finite metric(s) for %s: %s", url, metrics)
        safe = json_safe_metrics(metrics)
        about = {"prefix": step.prefix, "step": step.step, "url": url, "metrics": safe}
        if n := emit_asset_events(context, self.outlets, {"ckpt_dir": loc.display(), **about}):
            self.log.info("Attached the metrics to %d outlet asset event(s)", n)
        return {**about, "device": device, "evaluator": evaluator, "evaluations": evaluations}

    def _record(
        self,
        context: Any,
        loc: Location,
        step: CheckpointStep,
        metrics: dict[str, float],
        device: str,
        evaluator: str | None,
    ) -> int:
        """Write the metrics sidecar (still under the lease); returns this evaluator's count."""
        from airflow_tf_ckpt.core.sidecars.metrics import write_metrics

        owner = lease_owner(context)
        extra = {"run": owner, "device": device} if evaluator else {"evaluator": owner, "device": device}
        record = write_metrics(loc, step.prefix, metrics, step=step.step, extra=extra, evaluator=evaluator)
        evaluations = int(record["evaluations"])
        if evaluations > 1:
            who = evaluator or "the default evaluator"
            self.log.warning(
                "%s has now been evaluated %d times by %s", loc.display(step.prefix), evaluations, who
            )
        return evaluations
