"""``tf-ckpt quarantine`` / ``unquarantine``: core ``quarantine_step`` / ``release_quarantine``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, EXIT_PROBLEM, CliError, app

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.sidecars.quarantine import QuarantineResult, ReleaseResult, StillCorruptError
    from airflow_tf_ckpt.core.steps.discovery import CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location


@app.command("quarantine")
@c.dir_options
@click.argument("step", metavar="STEP")
@click.option("--reason", "-r", required=True, help="Why (kept in PREFIX.quarantine.json).")
def quarantine_cmd(
    directory: str, prefix: str | None, as_json: bool, storage_option: tuple[str, ...], step: str, reason: str
) -> int:
    """Take a step out of the state file and mark it corrupt: GC keeps it, promotion refuses it.

    STEP is a step number, a prefix, or latest."""
    from airflow_tf_ckpt.core.sidecars.quarantine import quarantine_step

    if not reason.strip():
        raise CliError("--reason must not be empty")
    cdir = c.discover_dir(directory, prefix, storage_option)
    loc = cdir.location
    s = c.one_step(cdir, step, prefix, allow_latest=True)
    result = quarantine_step(loc, s.prefix, reason, state_filename=cdir.state_filename)
    if as_json:
        doc = {
            "dir": loc.display(),
            "step": s.step,
            "already_quarantined": s.quarantined,
            "record_url": loc.display(result.record_name),
        }
        c.emit_json({**doc, **result.to_dict()})
        return EXIT_OK
    out = c.out()
    again = " (it was already quarantined: record replaced)" if s.quarantined else ""
    where = c.escape(loc.display(s.prefix))
    out.print(f"[yellow]quarantined[/yellow] {where}{again}: {c.escape(reason)}", soft_wrap=True)
    out.print(c.escape(_state_line(result)), soft_wrap=True)
    out.print(
        f"record: {c.escape(loc.display(result.record_name))} (GC keeps the step, promotion refuses it; "
        f"lift it with: tf-ckpt unquarantine {c.escape(directory)} {c.escape(s.prefix)})",
        soft_wrap=True,
    )
    return EXIT_OK


def _state_line(result: QuarantineResult) -> str:
    if result.state_removed:
        return "state file removed: no step left to name (TF's latest_checkpoint now returns None)"
    if result.removed_paths:
        was = " (it was the latest)" if result.was_latest else ""
        return f"state file no longer names it; latest is {result.new_latest or '-'}{was}"
    return "state file did not name it; not rewritten"


@app.command("unquarantine")
@c.dir_options
@click.argument("step", metavar="STEP")
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not verify the step first (files must still all be there to name it again).",
)
@click.option(
    "--no-restore-state",
    is_flag=True,
    help="Only remove the record; leave the state file alone (GC may then delete the step as an orphan).",
)
def unquarantine_cmd(
    directory: str,
    prefix: str | None,
    as_json: bool,
    storage_option: tuple[str, ...],
    step: str,
    no_verify: bool,
    no_restore_state: bool,
) -> int:
    """Lift a quarantine: verify the step, name it in the state file again, then remove the record.

    STEP is a step number or a prefix (e.g. 5, ckpt-5)."""
    from airflow_tf_ckpt.core.sidecars.quarantine import StillCorruptError, release_quarantine

    cdir = c.discover_dir(directory, prefix, storage_option)
    loc = cdir.location
    s = c.one_step(cdir, step, prefix, allow_latest=False)
    try:
        with c.progress(not as_json and not no_verify, "verifying", s.size) as update:
            result = release_quarantine(
                loc,
                s.prefix,
                verify=not no_verify,
                restore_state=not no_restore_state,
                state_filename=cdir.state_filename,
                progress=lambda done, total: update(done, total, s.prefix),
            )
    except StillCorruptError as exc:
        return _still_corrupt(loc, s, exc, as_json)
    if as_json:
        c.emit_json({"dir": loc.display(), "step": s.step, "ok": True, "released": True, **result.to_dict()})
    else:
        rows = _release_rows(loc, s, result, no_restore_state)
        c.out().print(c.key_value_table(f"released {loc.display(s.prefix)}", rows))
    return EXIT_OK


def _still_corrupt(loc: Location, s: CheckpointStep, exc: StillCorruptError, as_json: bool) -> int:
    if as_json:
        doc: dict[str, Any] = {"dir": loc.display(), "prefix": s.prefix, "step": s.step, "ok": False}
        doc.update(
            released=False, problems=exc.problems, report=None if exc.report is None else exc.report.to_dict()
        )
        c.emit_json(doc)
        return EXIT_PROBLEM
    out = c.out()
    for p in exc.problems:
        out.print(f"[red]CORRUPT[/red] {c.escape(p)}", soft_wrap=True)
    out.print(
        f"[red]{c.escape(loc.display(s.prefix))} still fails verification "
        f"({len(exc.problems)} problem(s)): it stays quarantined[/red]",
        soft_wrap=True,
    )
    return EXIT_PROBLEM


def _release_rows(
    loc: Location, s: CheckpointStep, result: ReleaseResult, no_restore_state: bool
) -> list[tuple[str, str]]:
    from airflow_tf_ckpt.core.display import human_bytes

    if result.verified:
        verified = f"OK: {result.tensors_checked} tensors, {human_bytes(result.bytes_checked)} checked"
    else:
        verified = "skipped (--no-verify)"
    if no_restore_state:
        state = "not touched (--no-restore-state): the state file does not name the step"
    elif result.already_named:
        state = "already named the step; not rewritten"
    elif result.state_created:
        state = f"created, naming {result.restored_path}"
    else:
        state = f"names it again as {result.restored_path}"
    latest = "-" if result.state_after is None else result.state_after.model_checkpoint_path
    if result.made_latest:
        latest_row = f"{latest} (this step)"
    else:
        latest_row = f"{latest} (unchanged)" if result.state_written else "-"
    return [
        ("step", c.step_label(s.step)),
        ("prefix", s.prefix),
        ("quarantined for", str(result.record.get("reason") or "-")),
        ("verified", verified),
        ("state file", state),
        ("latest", latest_row),
        ("record", f"{loc.display(result.record_name)} removed"),
    ]
