"""``ValidateCheckpointOperator``: check a step's every checksum without TensorFlow.

It runs the core's validate workflow (``core.workflows.validate.validate_steps``, the one
``tf-ckpt validate`` runs: lease, the TF-free verifier's every check, quarantine by one rule),
logs progress lines while it streams the shards, and fails listing EVERY problem found, so one
log tells the whole story.

``quarantine=True`` also quarantines a corrupt step: the step is dropped from the ``checkpoint``
state file, so ``tf.train.latest_checkpoint`` (and a trainer resuming from it) falls back to the
last good step, and it is marked so retention keeps its files for inspection instead of deleting
them. The workflow's module docstring says when a failed step is NOT quarantined (only layout
problems; incomplete and not named by the state file: a save may be in progress).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_tf_ckpt.core.display import human_bytes, truthy
from airflow_tf_ckpt.core.errors import StepNotFoundError
from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, StepArg, earlier_try_owners, lease_owner

if TYPE_CHECKING:  # the workflow pulls discovery (protobuf): imported when a task runs, not at parse
    from airflow_tf_ckpt.core.workflows.validate import ValidationResult


class _ProgressLog:
    """Progress lines in the task log: at most one per ``every`` seconds or per 10%."""

    def __init__(self, log: Any, label: str, every: float) -> None:
        self.log, self.label, self.every = log, label, every
        self._lock = threading.Lock()
        self._last_t = time.monotonic()
        self._last_pct = -1

    def __call__(self, done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        now = time.monotonic()
        with self._lock:
            if pct // 10 == self._last_pct // 10 and now - self._last_t < self.every and done < total:
                return
            if pct == self._last_pct:
                return
            self._last_t, self._last_pct = now, pct
        self.log.info(
            "verifying %s: %3d%% (%s of %s)", self.label, pct, human_bytes(done), human_bytes(total)
        )


class ValidateCheckpointOperator(BaseCheckpointOperator):
    """Verify one checkpoint step's files and checksums (no TensorFlow); fail listing every problem.

    :param ckpt_dir: checkpoint dir, local or ``gs://`` (templated).
    :param step: step number, prefix name or ``latest`` (templated).
    :param quarantine: on failure, quarantine the step so TF's ``latest_checkpoint`` falls back to
        the last good step, and retention keeps it for inspection.
    :param progress_interval: seconds between progress lines (there is also one per 10%).
    :param concurrency: shards verified in parallel.
    :param lease_ttl: the step is leased while it is verified, so a concurrent retention run cannot
        delete it under the verifier (which would then report -- and quarantine -- "missing" files).

    Returns (XCom) a small dict: ``prefix``, ``step``, ``url``, ``ok``, ``tensors_checked``,
    ``bytes_checked``, ``seconds``.
    """

    template_fields: Sequence[str] = (*BaseCheckpointOperator.template_fields, "quarantine")
    ui_color = "#c1e1c1"

    def __init__(
        self,
        *,
        ckpt_dir: str,
        step: StepArg = "latest",
        quarantine: bool = False,
        progress_interval: float = 10.0,
        concurrency: int = 4,
        lease_ttl: float = 3600.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(ckpt_dir=ckpt_dir, step=step, **kwargs)
        self.quarantine = quarantine
        self.progress_interval = progress_interval
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_tf_ckpt.core.workflows.validate import validate_steps

        loc = self.get_location()
        cdir = self.discover(loc)
        step = self.resolve_step(cdir, allow_incomplete=True)  # missing files are problems to report
        self.log.info(
            "Validating %s (step %s, %s, %d file(s), %s)",
            loc.display(step.prefix),
            step.step,
            step.format,
            len(step.files),
            human_bytes(step.size),
        )
        plog = _ProgressLog(self.log, step.prefix, self.progress_interval)
        result = validate_steps(
            loc,
            [step],
            state_filename=cdir.state_filename,
            lease_owner=lease_owner(context),
            lease_supersedes=earlier_try_owners(context),  # a killed try's lease
            lease_ttl=self.lease_ttl,
            quarantine=truthy(self.quarantine),
            progress=lambda done, total, _prefix: plog(done, total),
            concurrency=self.concurrency,
        )
        return self._outcome(loc.display(step.prefix), result)

    def _outcome(self, url: str, result: ValidationResult) -> dict[str, Any]:
        """The XCom of a valid step; a skip for a step a GC run deletes; else fail listing all."""
        from airflow_tf_ckpt.core.workflows.validate import SKIP_GC

        for w in result.warnings:
            self.log.warning("%s", w)
        for skipped in result.skipped:
            if skipped.why == SKIP_GC:
                raise AirflowSkipException(f"{skipped.detail or skipped.message}; skipping")
            raise StepNotFoundError("step was deleted before it could be leased", url)
        v = result.steps[0]
        r = v.report
        if v.ok:
            self.log.info(
                "%s is valid: %d tensors, %s checked in %.2f s",
                url,
                r.tensors_checked,
                human_bytes(r.bytes_checked),
                r.seconds,
            )
            return {
                "prefix": v.step.prefix,
                "step": v.step.step,
                "url": url,
                "ok": True,
                "tensors_checked": r.tensors_checked,
                "bytes_checked": r.bytes_checked,
                "seconds": round(r.seconds, 3),
            }
        problems = [str(p) for p in v.problems]
        for p in problems:
            self.log.error("problem: %s", p)
        quarantined = ""
        if v.quarantine is not None and v.quarantine.quarantined and not v.quarantine.already:
            latest = v.quarantine.new_latest
            quarantined = (
                f"\n{v.step.prefix} was QUARANTINED: dropped from the state file (TF's "
                f"latest_checkpoint now names {latest or 'no step'}) and kept for "
                "inspection; retention will not delete it."
            )
            self.log.warning("Quarantined %s; the state file's latest is now %s", url, latest)
        raise AirflowFailException(
            f"checkpoint {url} failed validation with {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + quarantined
        )
