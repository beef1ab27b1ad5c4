"""What the ``tf-ckpt`` commands share: the common options, reading a dir, and output.

Output: ``out()`` is the rich console on stdout (tables for people), ``emit_json`` the one JSON
document of ``--json``, ``progress`` a bar on stderr (only on a terminal). rich is imported by the
functions that print, never at import time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from airflow_tf_ckpt.cli._app import CliError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from airflow_tf_ckpt.core.steps.discovery import CheckpointDir, CheckpointStep
    from airflow_tf_ckpt.core.storage.location import Location

F = TypeVar("F", bound=Callable[..., Any])

# ---------------------------------------------------------------------------------------------
# common options

directory_arg = click.argument("directory", metavar="DIR")
prefix_opt = click.option(
    "--prefix", "-p", default=None, help="Only checkpoints of this base name (e.g. 'ckpt', 'model.ckpt')."
)
json_opt = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else."
)
storage_opt = click.option(
    "--storage-option",
    "-o",
    "storage_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="fsspec storage option (repeatable), e.g. -o project=my-proj -o token=anon.",
)
mode_opt = click.option("--mode", default="min", help="min or max: which metric values are best.")


def dir_options(fn: F) -> F:
    """``DIR`` and the options every command reading a dir takes: --prefix, --json, -o."""
    for deco in (storage_opt, json_opt, prefix_opt, directory_arg):
        fn = deco(fn)
    return fn


def evaluator_opt(help_text: str) -> Callable[[F], F]:
    return click.option("--evaluator", default=None, metavar="NAME", help=help_text)


def check_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise CliError(f"--mode must be 'min' or 'max', not {mode!r}")


# ---------------------------------------------------------------------------------------------
# reading a dir


def parse_kv(items: tuple[str, ...] | list[str] | None, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict; a VALUE that reads as JSON is that JSON value."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep:
            raise CliError(f"{what} {item!r} is not KEY=VALUE")
        if not key.strip():
            raise CliError(f"{what} {item!r} has an empty key")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def location(url: str, storage_options: tuple[str, ...] | None) -> Location:
    from airflow_tf_ckpt.core.storage.location import Location

    return Location.of(url, parse_kv(storage_options, "--storage-option") or None)


def discover_dir(url: str, prefix: str | None, storage_options: tuple[str, ...] | None) -> CheckpointDir:
    from airflow_tf_ckpt.core.steps.discovery import discover

    return discover(location(url, storage_options), prefix)


def select_steps(cdir: CheckpointDir, step: str, prefix: str | None) -> list[CheckpointStep]:
    """``--step all|latest|N|PREFIX`` of validate and metrics (the one selector in core/steps)."""
    from airflow_tf_ckpt.core.steps.select import select_steps as core_select_steps

    return core_select_steps(cdir, step, prefix)


def one_step(cdir: CheckpointDir, step: str, prefix: str | None, allow_latest: bool) -> CheckpointStep:
    """The STEP argument of quarantine/unquarantine: a number, a prefix (or ``latest``)."""
    from airflow_tf_ckpt.core.steps.select import parse_selector, select_step

    sel = parse_selector(step)
    if isinstance(sel, str) and sel in ("latest", "best", "all") and (sel != "latest" or not allow_latest):
        raise CliError(f"STEP must be a step number or a prefix here, not {step!r}")
    return select_step(cdir, step, prefix=prefix, allow_incomplete=True)


# ---------------------------------------------------------------------------------------------
# output


def out() -> Console:
    # piped (no terminal): a generous width, so paths in tables are not chopped at rich's default
    # of 80 columns; $COLUMNS still wins
    from rich.console import Console

    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(width=width, highlight=False)


def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def table(title: str, columns: list[tuple[str, str]], *, show_header: bool = True) -> Table:
    """A rich table titled ``title`` (escaped) with ``(name, justify)`` columns."""
    from rich.table import Table

    t = Table(title=escape(title), title_justify="left", show_header=show_header)
    for name, justify in columns:
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    return t


def key_value_table(title: str, rows: list[tuple[str, str]]) -> Table:
    t = table(title, [("key", "left"), ("value", "left")], show_header=False)
    for k, v in rows:
        t.add_row(k, escape(v))
    return t


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=1, default=str) + "\n")
    sys.stdout.flush()


def warn(message: str) -> None:
    """A warning on stderr that does not fail the command (the JSON document stays clean)."""
    from airflow_tf_ckpt.core.display import one_line

    sys.stderr.write(f"tf-ckpt: warning: {one_line(message)}\n")


def step_label(step: int | None) -> str:
    return "-" if step is None else str(step)


def fmt_metrics(m: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(m.items()))


ProgressUpdate = Callable[..., None]


def _no_progress(done: int, total: int | None = None, name: str = "") -> None:
    return None


@contextmanager
def progress(enabled: bool, description: str, total: int) -> Iterator[ProgressUpdate]:
    """A rich progress bar on stderr (only on a terminal); yields ``update(done, total, name)``."""
    if not enabled or not sys.stderr.isatty():  # decided before rich is imported
        yield _no_progress
        return
    console = err()
    if not console.is_terminal:
        yield _no_progress
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(
        *columns, TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task(description, total=total or None)

        def update(done: int, total_: int | None = None, name: str = "") -> None:
            kw: dict[str, Any] = {"completed": done}
            if total_:
                kw["total"] = total_
            if name:
                kw["description"] = f"{description} {name}"
            bar.update(task, **kw)

        yield update


# ---------------------------------------------------------------------------------------------
# metrics sidecars, as ls and metrics show them


def metrics_by_prefix(
    cdir: CheckpointDir, evaluator: str | None = None, *, every: bool = True
) -> dict[str, dict[str, Any]]:
    """``{prefix: {label: value}}``: with ``every``, all evaluators' metrics, the default one's
    as ``metric`` and a named evaluator's as ``EVALUATOR:metric``; else ``evaluator``'s only."""
    from airflow_tf_ckpt.core.sidecars.metrics import evaluation_records

    records = evaluation_records(cdir, evaluators=None if every else [evaluator])
    result: dict[str, dict[str, Any]] = {}
    for p, by_ev in records.items():
        row: dict[str, Any] = {}
        for ev in sorted(by_ev, key=_default_first):
            for k, v in by_ev[ev]["metrics"].items():
                row[k if ev is None or not every else f"{ev}:{k}"] = v
        if row:
            result[p] = row
    return result


def _default_first(ev: str | None) -> tuple[bool, str]:
    return (ev is not None, ev or "")


def evaluations(cdir: CheckpointDir) -> dict[str, list[dict[str, Any]]]:
    """``{prefix: [{evaluator, evaluations, metrics, time}, ...]}`` (default evaluator first)."""
    from airflow_tf_ckpt.core.sidecars.metrics import evaluation_records

    return {
        p: [
            {"evaluator": ev, "evaluations": r["evaluations"], "metrics": r["metrics"], "time": r.get("time")}
            for ev, r in sorted(by_ev.items(), key=lambda t: _default_first(t[0]))
        ]
        for p, by_ev in evaluation_records(cdir).items()
    }


def add_default_metrics(cdir: CheckpointDir, rows: list[dict[str, Any]]) -> None:
    """``--json`` rows get the default evaluator's ``metrics`` and every evaluator's record."""
    default = metrics_by_prefix(cdir, None, every=False)
    records = evaluations(cdir)
    for r in rows:
        r["metrics"] = default.get(r["prefix"], {})
        r["evaluations"] = records.get(r["prefix"], [])
