"""``PromoteCheckpointOperator``: publish one step to a destination dir, atomically for readers.

A thin adapter over ``core.promote.promote`` (copy data shards, sidecars, the ``.index`` last,
verify each copy's CRC32C, then flip the state file, the ``PROMOTED.json`` manifest and the alias).
The step is chosen by number/prefix, ``latest``, or ``best`` by a metric (from the metrics
sidecars that :class:`~airflow_tf_ckpt.operators.EvaluateCheckpointOperator` writes).

Asset events: for every :class:`Asset` in ``outlets`` the event's ``extra`` carries the destination
URI, the step, its prefix and metrics; for an :class:`AssetAlias` a new event is added for
``Asset(<destination URI>)``, whose URI is only known at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, StepArg, parse_step_arg, require_path
from airflow_tf_ckpt.operators.tensorflow import emit_asset_events

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.promote.promote import PromotionResult
    from airflow_tf_ckpt.core.steps.discovery import CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location


class PromoteCheckpointOperator(BaseCheckpointOperator):
    """Promote a step of ``ckpt_dir`` to ``dest`` (and optionally name it with ``alias``).

    :param ckpt_dir: source checkpoint dir (templated).
    :param dest: destination dir, local or ``gs://`` (templated); its own dir, not the source.
    :param step: step number, prefix name, ``latest`` or ``best`` (templated).
    :param metric: metric for ``step="best"``; ``mode`` ``min`` (default) or ``max``.
    :param evaluator: whose metrics ``step="best"`` (and so ``only_if_step``) ranks by: the
        ``evaluator`` that :class:`EvaluateCheckpointOperator` was given (templated; ``None``, the
        default, reads the default sidecar ``PREFIX.metrics.json``).
    :param alias: also write ``DEST/aliases/<alias>.json`` (e.g. ``production``).
    :param only_if_step: promote only when the selected step is this one (templated; e.g. the step
        just evaluated, with ``step="best"``: "promote it if it is the best so far"); otherwise the
        task is SKIPPED.
    :param dest_conn_id: connection for ``dest`` (defaults to ``conn_id``).
    :param record: record the promotion in the source dir so retention keeps the promoted step.

    Returns (XCom): ``destination``, ``uri``, ``step``, ``prefix``, ``metrics``, ``alias``,
    ``copied``, ``bytes_copied``, ``method``.
    """

    template_fields: Sequence[str] = (
        *BaseCheckpointOperator.template_fields,
        "dest",
        "metric",
        "mode",
        "alias",
        "only_if_step",
        "evaluator",
    )
    ui_color = "#dda0dd"

    def __init__(
        self,
        *,
        ckpt_dir: str,
        dest: str,
        step: StepArg = "latest",
        metric: str | None = None,
        mode: str = "min",
        alias: str | None = None,
        only_if_step: StepArg = None,
        dest_conn_id: str | None = None,
        record: bool = True,
        evaluator: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(ckpt_dir=ckpt_dir, step=step, **kwargs)
        require_path(dest, "dest")
        self.dest = dest
        self.metric = metric
        self.mode = mode
        self.alias = alias
        self.only_if_step = only_if_step
        self.dest_conn_id = dest_conn_id
        self.record = record
        self.evaluator = evaluator

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_tf_ckpt.core.promote.promote import promote
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        src = self.get_location()
        dst_hook = CheckpointStorageHook(conn_id=self.dest_conn_id) if self.dest_conn_id else self.get_hook()
        dst = dst_hook.get_location(str(self.dest))
        evaluator = None if self.evaluator in (None, "", "None") else str(self.evaluator)
        chosen = self._choose(src, evaluator)
        # promote the step we selected, by prefix name, so a newer step landing meanwhile
        # cannot change the decision
        result = promote(
            src,
            dst,
            chosen.prefix,
            prefix=self.prefix or None,
            alias=self.alias or None,
            record=self.record,
            evaluator=evaluator,
        )
        out = self._report(result, src)
        emit_asset_events(
            context,
            self.outlets,
            {k: out[k] for k in ("uri", "step", "prefix", "metrics", "alias", "source")},
            alias_uri=_asset_uri(out["uri"]),
        )
        return out

    def _choose(self, src: Location, evaluator: str | None) -> CheckpointStep:
        """The step to promote; skips the task when ``only_if_step`` names another one."""
        from airflow_tf_ckpt.core.promote.select import select_step

        sel = parse_step_arg(self.step)
        metric = self.metric or None
        if sel == "best" and not metric:
            raise ValueError("step='best' needs metric=NAME")
        chosen = select_step(
            self.discover(src),
            sel,
            prefix=self.prefix or None,
            metric=metric,
            mode=str(self.mode),
            evaluator=evaluator,
        )
        if self.only_if_step not in (None, "", "None"):
            want = parse_step_arg(self.only_if_step)
            if want not in (chosen.step, chosen.prefix):
                raise AirflowSkipException(
                    f"selected {chosen.prefix} ({sel}{':' + metric if metric else ''}"
                    f"{' of ' + evaluator if evaluator else ''}); not promoting "
                    f"because only_if_step={want!r}"
                )
        return chosen

    def _report(self, result: PromotionResult, src: Location) -> dict[str, Any]:
        """Log the promotion and return the task's XCom value."""
        r = result.to_dict()
        uri = result.destination
        if result.record_problem:  # published all the same: retention there may not know of it
            self.log.warning("%s", result.record_problem)
        self.log.info(
            "Promoted %s (step %s) to %s: copied %d file(s), %d bytes (%s)%s",
            src.display(result.prefix),
            result.step,
            uri,
            len(result.copied),
            result.bytes_copied,
            result.method,
            f"; alias {self.alias!r}" if self.alias else "",
        )
        return {
            "destination": uri,
            "uri": uri,
            "step": result.step,
            "prefix": result.prefix,
            "metrics": r.get("metrics") or {},
            "alias": r.get("alias"),
            "source": src.display(),
            "copied": len(result.copied),
            "bytes_copied": result.bytes_copied,
            "method": result.method,
            "checkpoint_path": r.get("checkpoint_path"),
        }


def _asset_uri(display: str) -> str:
    """An Asset URI for a destination: URLs as they are, local paths as ``file://`` URIs."""
    return display if "://" in display else "file://" + display
