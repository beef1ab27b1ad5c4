"""``tf-ckpt metrics``: show the metrics sidecars of a dir, or write one step's (``--set``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, CliError, app

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir


@app.command("metrics")
@c.dir_options
@click.option("--step", "-s", default=None, metavar="N|latest", help="The step to show or set.")
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="NAME=VALUE",
    help="Write a numeric metric into the step's sidecar (repeatable).",
)
@c.evaluator_opt(
    "Only this evaluator's sidecars (and --set writes its sidecar); default: show every "
    "evaluator (a named one's metrics as NAME:metric), --set the default sidecar."
)
def metrics_cmd(
    directory: str,
    prefix: str | None,
    as_json: bool,
    storage_option: tuple[str, ...],
    step: str | None,
    set_: tuple[str, ...],
    evaluator: str | None,
) -> int:
    """Show the metrics sidecars of DIR, or write metrics for one step (--set loss=0.25)."""
    new = _new_metrics(set_)  # checked before anything is read or written
    cdir = c.discover_dir(directory, prefix, storage_option)
    if set_:
        return _set(cdir, step, prefix, evaluator, new, as_json)
    return _show(cdir, step, prefix, evaluator, as_json)


def _new_metrics(items: tuple[str, ...]) -> dict[str, Any]:
    from airflow_tf_ckpt.core.sidecars.metrics import metric_name_problem

    new = c.parse_kv(items, "--set")
    for k, v in new.items():
        if problem := metric_name_problem(k):
            raise CliError(f"--set: {problem}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CliError(f"--set {k}={v!r}: a metric value must be a number")
        if not math.isfinite(v):
            raise CliError(f"--set {k}={v!r}: a metric value must be a finite number")
    return new


def _set(
    cdir: CheckpointDir,
    step: str | None,
    prefix: str | None,
    evaluator: str | None,
    new: dict[str, Any],
    as_json: bool,
) -> int:
    from airflow_tf_ckpt.core.sidecars.metrics import read_metrics, write_metrics

    loc = cdir.location
    if step is None:
        raise CliError("--set needs --step N")
    target = c.select_steps(cdir, step, prefix)
    if not target:
        raise CliError(f"no committed step in {loc.display()}")
    s = target[0]
    merged = dict(read_metrics(loc, s.prefix, evaluator) or {})
    merged.update(new)
    write_metrics(loc, s.prefix, merged, evaluator=evaluator, count=False)
    if as_json:
        c.emit_json({"prefix": s.prefix, "step": s.step, "metrics": merged, "evaluator": evaluator})
    else:
        c.out().print(f"{c.escape(loc.display(s.prefix))}: {c.escape(c.fmt_metrics(merged))}")
    return EXIT_OK


def _show(
    cdir: CheckpointDir, step: str | None, prefix: str | None, evaluator: str | None, as_json: bool
) -> int:
    loc = cdir.location
    metrics = c.metrics_by_prefix(cdir, evaluator, every=evaluator is None)
    steps = c.select_steps(cdir, step, prefix) if step else cdir.steps
    rows: list[dict[str, Any]] = [
        {"prefix": s.prefix, "step": s.step, "metrics": metrics.get(s.prefix, {})} for s in steps
    ]
    if as_json:
        if evaluator is None:
            c.add_default_metrics(cdir, rows)
        c.emit_json({"dir": loc.display(), "evaluator": evaluator, "steps": rows})
        return EXIT_OK
    names = sorted({k for r in rows for k in r["metrics"]})
    t = c.table(f"metrics {loc.display()}", [("step", "right"), ("prefix", "left")])
    for n in names:
        t.add_column(c.escape(n), justify="right")
    for r in rows:
        t.add_row(
            c.step_label(r["step"]), c.escape(r["prefix"]), *[_cell(r["metrics"].get(n)) for n in names]
        )
    c.out().print(t)
    return EXIT_OK


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}" if isinstance(v, float) else c.escape(str(v))
