"""``tf-ckpt validate``: the core's validate workflow over the chosen steps, as a table or JSON."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import click

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, EXIT_PROBLEM, app

if TYPE_CHECKING:
    from rich.console import Console

    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location

_COLUMNS = [
    ("step", "right"),
    ("prefix", "left"),
    ("status", "left"),
    ("result", "left"),
    ("tensors", "right"),
    ("checked", "right"),
    ("secs", "right"),
]


@app.command("validate")
@c.dir_options
@click.option("--step", "-s", default="latest", metavar="N|latest|all", help="Which step(s) to verify.")
@click.option(
    "--quarantine",
    is_flag=True,
    help="Quarantine each step that fails (as 'tf-ckpt quarantine' does); exit 1 still.",
)
def validate_cmd(
    directory: str,
    prefix: str | None,
    as_json: bool,
    storage_option: tuple[str, ...],
    step: str,
    quarantine: bool,
) -> int:
    """Verify every checksum TF checks on restore, without TF. Exit 1 names what is broken.

    DIR is the checkpoint dir (a path or URL)."""
    from airflow_tf_ckpt.core.workflows.validate import dir_findings, validate_steps

    cdir = c.discover_dir(directory, prefix, storage_option)
    loc = cdir.location
    problems, warnings = dir_findings(cdir, prefix, check_latest=step.strip().lower() in ("latest", "all"))
    chosen = _choose(cdir, step, prefix, problems)
    with c.progress(not as_json, "verifying", sum(s.size for s in chosen)) as update:
        result = validate_steps(
            loc,
            chosen,
            state_filename=cdir.state_filename,
            # leased only to quarantine: GC must not delete a step between its check and its mark
            lease_owner=f"validate-{socket.gethostname().split('.')[0]}-{os.getpid()}"
            if quarantine
            else None,
            quarantine=quarantine,
            reason="tf-ckpt validate",
            progress=update,
        )
    ok = result.ok and not problems
    doc = {
        "dir": loc.display(),
        "ok": ok,
        "steps": [v.to_dict() for v in result.steps],
        "problems": problems,
        "warnings": warnings + result.warnings,
    }
    if as_json:
        c.emit_json(doc)
    else:
        _print(c.out(), loc, directory, doc, result.problem_count)
    return EXIT_OK if ok else EXIT_PROBLEM


def _choose(cdir: CheckpointDir, step: str, prefix: str | None, problems: list[str]) -> list[CheckpointStep]:
    """The steps ``--step`` names; none committed: a problem, and the incomplete ones are checked
    (their report says what is missing)."""
    from airflow_tf_ckpt.core.steps.discovery import StepStatus

    chosen = c.select_steps(cdir, step, prefix)
    if chosen:
        return chosen
    incomplete = [s for s in cdir.steps if s.status is StepStatus.INCOMPLETE]
    problems.append(
        "no committed checkpoint step"
        + (f" with prefix {prefix!r}" if prefix else "")
        + (f" ({len(incomplete)} incomplete)" if incomplete else "")
    )
    return incomplete


def _print(out: Console, loc: Location, directory: str, doc: dict[str, Any], step_problems: int) -> None:
    from airflow_tf_ckpt.core.verify.report import problem_line

    steps, where = doc["steps"], c.escape(doc["dir"])
    if steps:
        out.print(_table(doc))
    for r in steps:
        for p in r["problems"]:
            out.print(f"[red]CORRUPT[/red] {c.escape(problem_line(p))}", soft_wrap=True)
    for p in doc["problems"]:
        out.print(f"[red]PROBLEM[/red] {where}: {c.escape(p)}", soft_wrap=True)
    for r in steps:
        if r.get("quarantined") and not r.get("already_quarantined"):
            out.print(
                f"[yellow]QUARANTINED[/yellow] {c.escape(loc.display(r['prefix']))}: the state file's latest is "
                f"now {c.escape(r['new_latest'] or '-')} (lift it with: tf-ckpt unquarantine "
                f"{c.escape(directory)} {c.escape(r['prefix'])})",
                soft_wrap=True,
            )
    for w in doc["warnings"]:
        out.print(f"[yellow]warning:[/yellow] {c.escape(w)}", soft_wrap=True)
    found = step_problems + len(doc["problems"])
    out.print("[green]all good[/green]" if doc["ok"] else f"[red]{found} problem(s) found[/red]")


def _table(doc: dict[str, Any]) -> Any:
    from airflow_tf_ckpt.core.display import human_bytes

    t = c.table(f"validate {doc['dir']}", _COLUMNS)
    for r in doc["steps"]:
        result = "[green]OK[/green]" if r["ok"] else f"[red]{len(r['problems'])} problem(s)[/red]"
        t.add_row(
            c.step_label(r["step"]),
            c.escape(r["prefix"]),
            r["status"],
            result,
            str(r["tensors_checked"]),
            human_bytes(r["bytes_checked"]),
            f"{r['seconds']:.2f}",
        )
    return t
