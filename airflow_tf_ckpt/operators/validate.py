"""``ValidateCheckpointOperator``: check a step's every checksum without TensorFlow.

It runs the core's TF-free verifier (``core.verify.verify_step``: index blocks, header, every
shard present, every tensor's crc32c), logs progress lines while it streams the shards, and
fails listing EVERY problem found, so one log tells the whole story.

``quarantine=True`` also quarantines a corrupt step (``core.quarantine.quarantine_step``): the
step is dropped from the ``checkpoint`` state file, so ``tf.train.latest_checkpoint`` (and a
trainer resuming from it) falls back to the last good step, and it is marked so retention keeps
its files for inspection instead of deleting them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from airflow_tf_ckpt.operators._common import BaseCheckpointOperator, StepArg, human_bytes


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
        from airflow_tf_ckpt.core.verify.engine import verify_step

        loc = self.get_location()
        cdir = self.discover(loc)
        step = self.resolve_step(cdir, allow_incomplete=True)  # missing files are problems to report
        url = loc.display(step.prefix)
        with self.hold(context, loc, step, self.lease_ttl, allow_incomplete=True) as step:
            self.log.info(
                "Validating %s (step %s, %s, %d file(s), %s)",
                url,
                step.step,
                step.format,
                len(step.files),
                human_bytes(step.size),
            )
            report = verify_step(
                loc,
                step.prefix,
                progress=_ProgressLog(self.log, step.prefix, self.progress_interval),
                concurrency=self.concurrency,
                format=step.format,
            )
            if report.ok:
                self.log.info(
                    "%s is valid: %d tensors, %s checked in %.2f s",
                    url,
                    report.tensors_checked,
                    human_bytes(report.bytes_checked),
                    report.seconds,
                )
                return {
                    "prefix": step.prefix,
                    "step": step.step,
                    "url": url,
                    "ok": True,
                    "tensors_checked": report.tensors_checked,
                    "bytes_checked": report.bytes_checked,
                    "seconds": round(report.seconds, 3),
                }
            problems = [str(p) for p in report.problems]
            for p in problems:
                self.log.error("problem: %s", p)
            quarantined = ""
            if _truthy(self.quarantine):
                # still under the lease: retention cannot delete the step before it is marked
                from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step

                q = quarantine_step(
                    loc, step.prefix, f"validation failed with {len(problems)} problem(s)", report.to_dict()
                )
                quarantined = (
                    f"\n{step.prefix} was QUARANTINED: dropped from the state file (TF's "
                    f"latest_checkpoint now names {q.new_latest or 'no step'}) and kept for "
                    "inspection; retention will not delete it."
                )
                self.log.warning("Quarantined %s; the state file's latest is now %s", url, q.new_latest)
        raise AirflowFailException(
            f"checkpoint {url} failed validation with {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + quarantined
        )


def _truthy(value: Any) -> bool:
    """``quarantine`` is templated, so it may arrive as the string ``"True"``/``"false"``."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
