"""``tf-ckpt gc``: plan retention (core ``plan_retention``), apply it (``apply_plan``), show both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, EXIT_PROBLEM, CliError, app

if TYPE_CHECKING:
    from rich.console import Console

    from airflow_tf_ckpt.core.retention.executor import GcResult
    from airflow_tf_ckpt.core.retention.plan import RetentionPlan

_NO_POLICY = (
    "no retention policy given: pass --keep-last/--keep-every-hours/--keep-every-steps/"
    "--keep-best/--keep-unevaluated/--pin (deleting everything is not an option)"
)


@app.command("gc")
@c.dir_options
@click.option("--keep-last", type=click.IntRange(min=0), default=None, help="Keep the N newest steps.")
@click.option(
    "--keep-every-hours",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Keep one step per H hours (like TF's keep_checkpoint_every_n_hours).",
)
@click.option(
    "--keep-every-steps", type=click.IntRange(min=1), default=None, help="Keep steps that are multiples of S."
)
@click.option("--keep-best", type=click.IntRange(min=0), default=None, help="Keep the K best by --metric.")
@click.option("--metric", default=None, help="Metric name for --keep-best.")
@c.mode_opt
@click.option("--pin", type=int, multiple=True, metavar="STEP", help="Never delete this step (repeatable).")
@c.evaluator_opt(
    "Whose metrics rank the steps (the evaluator named by the evaluating task, e.g. its dag_id); "
    "default: the default sidecar PREFIX.metrics.json."
)
@click.option(
    "--keep-unevaluated",
    multiple=True,
    metavar="EVALUATOR[,EVALUATOR...]",
    help="Keep steps these evaluators have not evaluated yet (repeatable).",
)
@click.option(
    "--unevaluated-max-age",
    default="24h",
    metavar="DURATION",
    help="How long after its save --keep-unevaluated holds a step (90s, 30m, 24h, 2d; 'none': no bound).",
)
@click.option("--dry-run", "-n", is_flag=True, help="Show the plan; delete nothing.")
def gc_cmd(
    directory: str,
    prefix: str | None,
    as_json: bool,
    storage_option: tuple[str, ...],
    dry_run: bool,
    **policy: Any,
) -> int:
    """Delete checkpoint steps that no retention policy keeps (the state file is rewritten first).

    DIR is the checkpoint dir (a path or URL). A dir that does not exist (yet) is nothing to do
    (exit 0)."""
    from airflow_tf_ckpt.core.errors import DirNotFoundError
    from airflow_tf_ckpt.core.retention.executor import apply_plan
    from airflow_tf_ckpt.core.retention.planner import plan_retention

    policies = _policies(**policy)
    loc = c.location(directory, storage_option)
    try:
        plan = plan_retention(loc, policies, prefix=prefix)
    except DirNotFoundError:
        if as_json:
            c.emit_json({"dry_run": dry_run, "missing_dir": True, "dir": loc.display()})
        else:
            c.out().print(f"{c.escape(loc.display())} does not exist yet: nothing to do")
        return EXIT_OK
    result = apply_plan(plan, dry_run=dry_run)
    if as_json:
        c.emit_json({"dry_run": dry_run, "plan": result.plan.to_dict(), "result": result.to_dict()})
    else:
        _print(c.out(), result, dry_run)
    return EXIT_OK if result.ok else EXIT_PROBLEM


def _policies(
    *,
    keep_last: int | None,
    keep_every_hours: float | None,
    keep_every_steps: int | None,
    keep_best: int | None,
    metric: str | None,
    mode: str,
    pin: tuple[int, ...],
    evaluator: str | None,
    keep_unevaluated: tuple[str, ...],
    unevaluated_max_age: str,
) -> list[Any]:
    """The retention policies the options name (core ``policies_from_options``); none: an error."""
    from airflow_tf_ckpt.core.retention.policies import parse_duration, policies_from_options

    c.check_mode(mode)
    if keep_best and not metric:
        raise CliError("--keep-best needs --metric NAME")
    max_age = unevaluated_max_age.strip().lower()
    policies = policies_from_options(
        keep_last=keep_last,
        keep_every_hours=keep_every_hours,
        keep_every_steps=keep_every_steps,
        keep_best=keep_best,
        metric=metric,
        mode=mode,
        pins=list(pin),
        evaluator=evaluator,
        keep_unevaluated=[n.strip() for v in keep_unevaluated for n in v.split(",") if n.strip()],
        unevaluated_max_age=None if max_age == "none" else parse_duration(unevaluated_max_age),
    )
    if not policies:
        raise CliError(_NO_POLICY)
    return list(policies)


def _print(out: Console, result: GcResult, dry_run: bool) -> None:
    _print_plan(out, result.plan)
    out.print(c.escape(result.plan.summary()), soft_wrap=True)
    for r in result.plan.refused:
        out.print(f"[yellow]refused:[/yellow] {c.escape(str(r.to_dict()))}", soft_wrap=True)
    for p in result.plan.problems:
        out.print(f"[yellow]warning:[/yellow] {c.escape(p)}", soft_wrap=True)
    if dry_run:
        out.print("[yellow]dry run: nothing deleted[/yellow]")
    else:
        out.print(c.escape(result.summary()), soft_wrap=True)


def _print_plan(out: Console, plan: RetentionPlan) -> None:
    from airflow_tf_ckpt.core.display import human_bytes

    if not plan.decisions:
        out.print(f"no checkpoints in {c.escape(plan.location.display())}")
        return
    cols = [(n, "right" if n in ("step", "size") else "left") for n in ("step", "prefix", "status", "size")]
    t = c.table(f"retention plan {plan.location.display()}", [*cols, ("action", "left"), ("why", "left")])
    for d in plan.decisions:
        style = "green" if d.keep else "red"
        t.add_row(
            c.step_label(d.step),
            c.escape(d.prefix),
            d.status,
            human_bytes(d.size),
            f"[{style}]{c.escape(d.action)}[/{style}]",
            c.escape("; ".join(d.reasons)),
        )
    out.print(t)
    for sc in plan.sidecars:  # files without a step of their own: orphaned sidecars, dead temp files
        if sc.action == "delete":
            out.print(f"  also delete {c.escape(sc.name)} ({c.escape(sc.role)}): {c.escape(sc.reason)}")
