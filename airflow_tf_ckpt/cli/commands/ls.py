"""``tf-ckpt ls``: the steps of a dir (core ``discover``) with status, size, time and metrics."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from airflow_tf_ckpt.cli import _common as c
from airflow_tf_ckpt.cli._app import EXIT_OK, app

if TYPE_CHECKING:
    from rich.console import Console

    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep

_COLUMNS = [
    ("step", "right"),
    ("prefix", "left"),
    ("status", "left"),
    ("fmt", "left"),
    ("shards", "right"),
    ("size", "right"),
    ("saved (UTC)", "left"),
    ("metrics", "left"),
    ("notes", "left"),
]
_STYLE = {"committed": "green", "orphan": "yellow", "incomplete": "red", "quarantined": "red"}


@app.command("ls")
@c.dir_options
def ls_cmd(directory: str, prefix: str | None, as_json: bool, storage_option: tuple[str, ...]) -> int:
    """List the steps of a checkpoint dir DIR (a path or URL) with status, size, time and metrics."""
    cdir = c.discover_dir(directory, prefix, storage_option)
    if as_json:
        doc = cdir.to_dict()
        c.add_default_metrics(cdir, doc["steps"])
        doc["latest_problem"] = cdir.latest_problem(prefix)
        c.emit_json(doc)
        return EXIT_OK
    out = c.out()
    if not cdir.steps:
        where = c.escape(cdir.location.display())
        out.print(f"no checkpoints in {where}" + (f" with prefix {prefix!r}" if prefix else ""))
    else:
        _print_steps(out, cdir)
    for p in cdir.problems + [f"{s.prefix}: {p}" for s in cdir.steps for p in s.problems]:
        out.print(f"[yellow]warning:[/yellow] {c.escape(p)}")
    if lp := cdir.latest_problem(prefix):
        out.print(f"[red]PROBLEM[/red] {c.escape(cdir.location.display())}: {c.escape(lp)}", soft_wrap=True)
    return EXIT_OK


def _print_steps(out: Console, cdir: CheckpointDir) -> None:
    from airflow_tf_ckpt.core.display import human_bytes, utc_table_time
    from airflow_tf_ckpt.core.steps.discovery import SHOWN_STATUSES

    metrics = c.metrics_by_prefix(cdir)
    t = c.table(cdir.location.display(), _COLUMNS)
    for s in cdir.steps:
        style = _STYLE[s.shown_status]
        t.add_row(
            c.step_label(s.step),
            c.escape(s.prefix),
            f"[{style}]{s.shown_status}[/{style}]",
            s.format,
            "-" if s.num_shards is None else str(s.num_shards),
            human_bytes(s.size),
            utc_table_time(s.timestamp),
            c.escape(c.fmt_metrics(metrics.get(s.prefix, {}))),
            ", ".join(_notes(s)),
        )
    out.print(t)
    total = sum(s.size for s in cdir.steps)
    counts = Counter(s.shown_status for s in cdir.steps)
    shown = ", ".join(
        f"{counts[status]} {status}" for status in SHOWN_STATUSES if counts[status] or status == "committed"
    )
    out.print(f"{len(cdir.steps)} step(s), {shown}, {human_bytes(total)}")


def _notes(s: CheckpointStep) -> list[str]:
    notes: list[Any] = [n for n, on in (("latest", s.latest), ("meta", s.has_meta)) if on]
    if s.leases:
        notes.append(f"{len(s.leases)} lease(s)")
    return notes
