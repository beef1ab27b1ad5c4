"""``tf-ckpt promote``: core ``promote`` of one step to a destination, shown as a summary."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, CliError, app

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.promote.promote import PromotionResult


@app.command("promote")
@c.dir_options
@click.option("--to", "to", required=True, metavar="DEST", help="Destination dir or URL.")
@click.option(
    "--step",
    "-s",
    default="latest",
    metavar="N|latest|best",
    help="Which step: a number, latest, or best by --metric.",
)
@click.option("--metric", default=None, help="Metric for --step best.")
@c.mode_opt
@click.option("--alias", default=None, help="Also point DEST/aliases/NAME.json at it.")
@c.evaluator_opt(
    "Whose metrics rank the steps (the evaluator named by the evaluating task, e.g. its dag_id); "
    "default: the default sidecar PREFIX.metrics.json."
)
@click.option(
    "--no-record",
    is_flag=True,
    help="Do not record the promotion in the source dir (retention then may delete the step).",
)
def promote_cmd(
    directory: str,
    prefix: str | None,
    as_json: bool,
    storage_option: tuple[str, ...],
    to: str,
    step: str,
    metric: str | None,
    mode: str,
    alias: str | None,
    evaluator: str | None,
    no_record: bool,
) -> int:
    """Copy one step of DIR to DEST atomically: data, index, state file, then PROMOTED.json last."""
    from airflow_tf_ckpt.core.promote.promote import promote

    c.check_mode(mode)
    if step == "best" and not metric:
        raise CliError("--step best needs --metric NAME")
    if not to.strip():
        raise CliError(f"--to {to!r} is an empty path: give the destination dir (a path or URL)")
    src, dst = c.location(directory, storage_option), c.location(to, storage_option)
    with c.progress(not as_json, "promoting", 0) as update:
        result = promote(
            src,
            dst,
            step,
            prefix=prefix,
            metric=metric,
            mode=mode,
            alias=alias,
            record=not no_record,
            progress=update,
            evaluator=evaluator,
        )
    if result.record_problem:  # published all the same: a warning, not a failure
        c.warn(result.record_problem)
    if as_json:
        c.emit_json(result.to_dict())
    else:
        c.out().print(c.key_value_table(f"promoted to {result.destination}", _rows(result)))
    return EXIT_OK


def _rows(result: PromotionResult) -> list[tuple[str, str]]:
    from airflow_tf_ckpt.core.display import human_bytes

    m = result.manifest
    return [
        ("step", c.step_label(m.step)),
        ("prefix", m.prefix),
        ("selected by", m.selector),
        ("source", m.source),
        ("metrics", c.fmt_metrics(m.metrics) or "-"),
        ("copied", f"{len(result.copied)} file(s), {human_bytes(result.bytes_copied)} ({result.method})"),
        ("reused", f"{len(result.reused)} file(s)"),
        ("deleted", ", ".join(result.deleted) or "-"),
        ("alias", f"{m.alias} -> {result.alias_path}" if m.alias else "-"),
        ("manifest", f"{result.destination}/PROMOTED.json"),
        ("time", f"{result.seconds:.2f} s"),
    ]
