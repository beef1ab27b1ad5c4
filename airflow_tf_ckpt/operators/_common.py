"""What every checkpoint operator shares: dir + connection → Location, and the ``step`` argument.

The operators are thin adapters over the core; everything that decides anything lives there.
``step`` is templated, so it usually comes from an upstream task, for example the sensor::

    step="{{ ti.xcom_pull(task_ids='wait')['checkpoint'] }}"  # the step's prefix, e.g. ckpt-500
    step="{{ ti.xcom_pull(task_ids='wait')['step'] }}"        # a step number
    step="latest"                                             # the newest committed step

(The sensor's ``prefix`` key is the BASE name, ``ckpt``; pass it as ``prefix=`` if you like.)

It also accepts the sensor's whole XCom dict (or its ``str()``, which is what Jinja renders
without ``render_template_as_native_obj``) and a full prefix URL/path.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from airflow_tf_ckpt.core.errors import StepNotFoundError

if TYPE_CHECKING:  # core.discovery pulls core.state and protobuf: imported when a task runs, not at parse
    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location

StepArg = int | str | dict[str, Any] | None


def parse_step_arg(value: StepArg) -> int | str:
    """Normalise the ``step`` argument to a step number, a prefix name, or ``"latest"``/``"best"``."""
    if value is None:
        return "latest"
    if isinstance(value, bool):
        raise ValueError(f"step must be a number, a prefix name, 'latest' or 'best', not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        # the sensor's payload: "checkpoint" is the step's prefix (ckpt-500); its "prefix" is the
        # BASE name (ckpt), so it is never used as a step here
        for key in ("checkpoint", "step", "path"):
            if value.get(key) not in (None, ""):
                return parse_step_arg(value[key])
        raise ValueError(f"step dict has none of 'checkpoint', 'step', 'path': {sorted(value)}")
    text = str(value).strip()
    if not text or text.lower() in ("none", "latest"):
        return "latest"
    if text.lower() == "best":
        return "best"
    if text[0] in "{[":
        parsed: Any = None
        for loader in (json.loads, ast.literal_eval):
            try:
                parsed = loader(text)
                break
            except (ValueError, SyntaxError):
                continue
        if isinstance(parsed, dict):
            return parse_step_arg(parsed)
        raise ValueError(f"cannot read a step from {text[:80]!r}")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if "/" in text:  # a prefix URL or path: its basename is the prefix
        return posixpath.basename(text.rstrip("/"))
    return text


def load_callable(ref: Callable[..., Any] | str, what: str) -> Callable[..., Any]:
    """A callable, or one named by a dotted path (``pkg.module.func`` or ``pkg.module:func``)."""
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise TypeError(f"{what} must be a callable or a dotted path string, not {type(ref).__name__}")
    text = ref.strip()
    module_name, sep, attr = text.partition(":") if ":" in text else text.rpartition(".")
    if not sep or not module_name or not attr:
        raise ImportError(f"{what} {ref!r} is not a dotted path like 'package.module.function'")
    try:
        fn: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"cannot import {what} {ref!r}: {exc}") from exc
    if not callable(fn):
        raise TypeError(f"{what} {ref!r} is not callable")
    return fn


_OWNER_BAD = re.compile(r"[^A-Za-z0-9_.@-]+")


def lease_owner(context: Any, try_number: int | None = None) -> str:
    """A lease owner name for this task try (``dag.task.run.map_index.try``), in full (the lease
    file's name holds only its hash, so a long ``run_id`` is never cut: mapped instances of one run
    never share a lease). ``try_number`` names another try of the same task instance."""
    ti = context.get("ti") if hasattr(context, "get") else None
    parts = [
        getattr(ti, "dag_id", None) or "dag",
        getattr(ti, "task_id", None) or "task",
        getattr(ti, "run_id", None) or "run",
        str(getattr(ti, "map_index", -1)),
        str(try_number if try_number is not None else (getattr(ti, "try_number", 0) or 0)),
    ]
    return ".".join(_OWNER_BAD.sub("_", str(p)) for p in parts)


def earlier_try_owners(context: Any) -> list[str]:
    """The lease owners of this task instance's earlier tries (none on the first try).

    Airflow starts try N only once try N-1 has ended or been declared dead (a killed worker is
    failed on its heartbeat timeout), so a lease an earlier try left behind protects nothing: the
    new try takes over from it instead of letting it hold GC off the step until its TTL."""
    ti = context.get("ti") if hasattr(context, "get") else None
    current = getattr(ti, "try_number", 0) or 0
    return [lease_owner(context, k) for k in range(1, int(current))]


class BaseCheckpointOperator(BaseOperator):
    """Base of the checkpoint operators: a dir URL (local path or ``gs://``), a connection, a step.

    :param ckpt_dir: the checkpoint dir (templated).
    :param step: which step to act on (templated); see the module docstring.
    :param prefix: the checkpoint base name (``ckpt``, ``model.ckpt``) when several jobs share a
        dir; ``None`` considers every base name.
    :param conn_id: Airflow connection with the gs:// credentials (see ``CheckpointStorageHook``);
        ``None`` means application default credentials, or anonymous against an emulator.
    """

    template_fields: Sequence[str] = ("ckpt_dir", "step", "prefix")
    ui_color = "#ffd8b1"

    def __init__(
        self,
        *,
        ckpt_dir: str,
        step: StepArg = "latest",
        prefix: str | None = None,
        conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_path(ckpt_dir, "ckpt_dir")
        self.ckpt_dir = ckpt_dir
        self.step = step
        self.prefix = prefix
        self.conn_id = conn_id

    def get_hook(self) -> Any:
        from airflow_tf_ckpt.hooks.storage import CheckpointStorageHook

        return CheckpointStorageHook(conn_id=self.conn_id)

    def get_location(self, url: str | None = None) -> Location:
        return self.get_hook().get_location(str(url or self.ckpt_dir))

    def discover(self, loc: Location) -> CheckpointDir:
        from airflow_tf_ckpt.core.steps.discovery import discover

        return discover(loc, self.prefix or None)

    def resolve_step(
        self, cdir: CheckpointDir, value: StepArg | None = None, *, allow_incomplete: bool = False
    ) -> CheckpointStep:
        """The step the ``step`` argument names; ``latest`` is the newest committed step.

        A named step with missing files is refused with what is missing (an evaluator must never
        act on a half-written step), unless ``allow_incomplete`` (the validator, whose job is to
        report exactly that).
        """
        from airflow_tf_ckpt.core.steps.select import select_step

        sel = parse_step_arg(self.step if value is None else value)
        if sel == "best":
            raise ValueError("step='best' is only meaningful for PromoteCheckpointOperator")
        return select_step(cdir, sel, prefix=self.prefix or None, allow_incomplete=allow_incomplete)

    @contextlib.contextmanager
    def hold(
        self,
        context: Any,
        loc: Location,
        step: CheckpointStep,
        ttl_s: float,
        *,
        allow_incomplete: bool = False,
    ) -> Iterator[CheckpointStep]:
        """Lease ``step`` for the block (retention never deletes a leased step) and yield it afresh.

        The step is looked up again once the lease is held: a retention run may have deleted it
        between our listing and the lease. When a retention run is deleting it right now (its
        intent names the step), the task is SKIPPED: the step is going away, nothing to do.
        """
        from airflow_tf_ckpt.core.sidecars.leases import LeaseConflictError, leased
        from airflow_tf_ckpt.core.steps.discovery import StepStatus

        owner = lease_owner(context)
        url = loc.display(step.prefix)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(
                    leased(loc, step.prefix, owner, float(ttl_s), supersedes=earlier_try_owners(context))
                )
            except LeaseConflictError as exc:
                raise AirflowSkipException(f"{exc}; skipping") from exc
            self.log.info("Leased %s as %r (GC keeps it until the lease is released)", url, owner)
            try:
                fresh = self.discover(loc).get(step.prefix)
            except StepNotFoundError:
                raise StepNotFoundError("step was deleted before it could be leased", url) from None
            if fresh.status is StepStatus.INCOMPLETE and not allow_incomplete:
                raise StepNotFoundError(
                    f"step lost files before it could be leased: {fresh.missing[:5]}", url
                )
            yield fresh


def require_path(value: Any, what: str) -> None:
    """A dir argument must not be empty (``""`` would mean the worker's working directory); a
    template that renders empty is refused at run time by the storage layer."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{what} must be a checkpoint dir (a path or URL), not {value!r}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table for task logs (no colour codes: logs are read in a browser)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
