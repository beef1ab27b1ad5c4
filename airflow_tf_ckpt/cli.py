"""``tf-ckpt``: list, validate, garbage-collect, promote and quarantine TensorFlow checkpoints.

Works on local dirs and on any fsspec URL (``gs://`` with gcsfs; ``STORAGE_EMULATOR_HOST`` points
it at an emulator). It imports neither TensorFlow nor Airflow, so it runs on any box.

Exit codes: 0 all good; 1 a problem was found (a corrupt or incomplete step, nothing to
promote); 2 usage or input error (bad option, a dir that does not exist, an unknown step). An
error is ONE line on stderr, never a traceback (set ``TF_CKPT_DEBUG=1`` to see one). With
``--json`` stdout holds one JSON document and nothing else; tables, progress bars and messages
for humans go to stdout only without ``--json`` (progress always goes to stderr).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.exceptions import Abort as TyperAbort
from typer.exceptions import TyperException

from .core.errors import CheckpointError, StepNotFoundError, StorageError

if TYPE_CHECKING:
    from rich.console import Console

    from .core.retention.planner import RetentionPlan
    from .core.steps.discovery import CheckpointDir, CheckpointStep
    from .core.storage.location import Location

# Start-up time matters (``tf-ckpt validate`` is a whole process): rich, fsspec and protobuf (the
# core's discovery) are imported by the commands that use them, not at import time.


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def Table(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for rich.table.Table
    from rich.table import Table as _Table

    return _Table(*args, **kwargs)


def _install_fast_coercion() -> None:
    """Coerce plain CLI values without pydantic (saves ~0.35 s of start-up per run).

    typer >= 0.2x converts every parameter value through a pydantic ``TypeAdapter``; importing
    pydantic costs more than the rest of a small ``tf-ckpt`` run. This CLI only has str, int, float
    and bool parameters (and lists of them): those are converted here with typer's semantics
    (min/max checks, the same messages as pydantic's). Anything else, or a typer without these
    internals, takes typer's own path.
    """
    try:
        import typer.core as tcore
        from typer._click.exceptions import BadParameter
        from typer._coercion import RuntimeParam
    except ImportError:  # pragma: no cover - another typer: its own (slower) path
        return
    original = getattr(tcore, "build_runtime_param", None)
    if original is None or getattr(original, "_tf_ckpt_fast", False):
        return
    import types
    import typing
    from dataclasses import dataclass

    plain = (str, int, float, bool)

    def leaf(annotation: Any) -> type | None:
        if annotation in plain:
            return annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) == 1 and args[0] in plain:
                return args[0]
        return None

    bools = {
        "1": True,
        "true": True,
        "t": True,
        "yes": True,
        "y": True,
        "on": True,
        "0": False,
        "false": False,
        "f": False,
        "no": False,
        "n": False,
        "off": False,
    }

    def convert(kind: type, value: Any, info: Any) -> Any:
        if kind is str:
            if value is None:
                raise ValueError("None is not a valid string")
            return value.decode() if isinstance(value, bytes) else str(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text == "":
                return False
            if text not in bools:
                raise ValueError("Input should be a valid boolean, unable to interpret input")
            return bools[text]
        if isinstance(value, bool):
            out: Any = kind(value)
        elif isinstance(value, (int, float)) and kind is float:
            out = float(value)
        elif isinstance(value, int):
            out = value
        else:
            text = str(value).strip()
            try:
                out = kind(text)
            except ValueError:
                if kind is int:
                    try:
                        f = float(text)
                    except ValueError:
                        f = None
                    if f is not None and f.is_integer():
                        out = int(f)
                    elif f is not None:
                        raise ValueError(
                            "Input should be a valid integer, got a number with a fractional part"
                        ) from None
                    else:
                        raise ValueError(
                            "Input should be a valid integer, unable to parse string as an integer"
                        ) from None
                else:
                    raise ValueError(
                        "Input should be a valid number, unable to parse string as a number"
                    ) from None
        lo, hi = getattr(info, "min", None), getattr(info, "max", None)
        if lo is not None and out < lo:
            raise ValueError(f"Input should be greater than or equal to {lo}")
        if hi is not None and out > hi:
            raise ValueError(f"Input should be less than or equal to {hi}")
        return out

    @dataclass(frozen=True)
    class _PlainParam(RuntimeParam):
        kind: type = str
        many: bool = False

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if self.many:
                    items = value if isinstance(value, (list, tuple)) else [value]
                    return [convert(self.kind, v, self.parameter_info) for v in items]
                return convert(self.kind, value, self.parameter_info)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None

    def build_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        ann = descriptor.annotation
        simple = (
            descriptor.file_annotation is None
            and getattr(info, "parser", None) is None
            and not getattr(info, "clamp", False)
        )
        if simple:
            many = typing.get_origin(ann) is list
            kind = leaf(typing.get_args(ann)[0]) if many and len(typing.get_args(ann)) == 1 else leaf(ann)
            if kind is not None:
                return _PlainParam(parameter_info=info, annotation=ann, kind=kind, many=many)
        return original(descriptor)

    build_runtime_param._tf_ckpt_fast = True  # type: ignore[attr-defined]
    tcore.build_runtime_param = build_runtime_param


_install_fast_coercion()

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="tf-ckpt",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Inspect, validate, garbage-collect, promote and quarantine TensorFlow checkpoints (local or gs://).",
)


class CliError(Exception):
    """Stop with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _out() -> Console:
    # piped (no terminal): a generous width, so paths in tables are not chopped at rich's default
    # of 80 columns; $COLUMNS still wins
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    from rich.console import Console

    return Console(width=width, highlight=False)


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=1, default=str) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# common options


PrefixOpt = Annotated[
    str | None,
    typer.Option("--prefix", "-p", help="Only checkpoints of this base name (e.g. 'ckpt', 'model.ckpt')."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout, nothing else.")]
EvaluatorOpt = Annotated[
    str | None,
    typer.Option(
        "--evaluator",
        metavar="NAME",
        help="Whose metrics rank the steps (the evaluator named by the "
        "evaluating task, e.g. its dag_id); default: the default sidecar PREFIX.metrics.json.",
    ),
]
StorageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        "-o",
        metavar="KEY=VALUE",
        help="fsspec storage option (repeatable), e.g. -o project=my-proj -o token=anon.",
    ),
]


def _parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CliError(f"{what} {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise CliError(f"{what} {item!r} has an empty key")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value
    return out


def _location(url: str, storage_options: list[str] | None) -> Location:
    from .core.storage.location import Location

    return Location.of(url, _parse_kv(storage_options, "--storage-option") or None)


def _discover(url: str, prefix: str | None, storage_options: list[str] | None) -> CheckpointDir:
    loc = _location(url, storage_options)
    from .core.steps.discovery import discover

    return discover(loc, prefix)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _metrics(
    cdir: CheckpointDir,
    evaluator: str | None = None,
    *,
    every: bool = True,
) -> dict[str, dict[str, Any]]:
    """``{prefix: {label: value}}``: with ``every``, all evaluators' metrics, the default one's
    as ``metric`` and a named evaluator's as ``EVALUATOR:metric``; else ``evaluator``'s only."""
    from .core.sidecars.metrics import evaluation_records

    records = evaluation_records(cdir, evaluators=None if every else [evaluator])
    out: dict[str, dict[str, Any]] = {}
    for p, by_ev in records.items():
        row: dict[str, Any] = {}
        for ev in sorted(by_ev, key=lambda e: (e is not None, e or "")):
            for k, v in by_ev[ev]["metrics"].items():
                row[k if ev is None or not every else f"{ev}:{k}"] = v
        if row:
            out[p] = row
    return out


def _evaluations(cdir: CheckpointDir) -> dict[str, list[dict[str, Any]]]:
    """``{prefix: [{evaluator, evaluations, metrics, time}, ...]}`` (default evaluator first)."""
    from .core.sidecars.metrics import evaluation_records

    return {
        p: [
            {"evaluator": ev, "evaluations": r["evaluations"], "metrics": r["metrics"], "time": r.get("time")}
            for ev, r in sorted(by_ev.items(), key=lambda t: (t[0] is not None, t[0] or ""))
        ]
        for p, by_ev in evaluation_records(cdir).items()
    }


def _fmt_metrics(m: dict[str, Any]) -> str:
    parts = []
    for k, v in sorted(m.items()):
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Any]:
    """A rich progress bar on stderr (only on a terminal); yields ``update(done, total, name)``."""
    if not enabled or not sys.stderr.isatty():  # decided before rich is imported
        yield lambda done, total_=None, name="": None
        return
    console = _err()
    if not console.is_terminal:
        yield lambda done, total_=None, name="": None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
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
# ls


@app.command("ls")
def ls_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """List the steps of a checkpoint dir with status, size, time and metrics."""
    cdir = _discover(directory, prefix, storage_option)
    metrics = _metrics(cdir)
    if as_json:
        doc = cdir.to_dict()
        default = _metrics(cdir, None, every=False)
        evaluations = _evaluations(cdir)
        for s in doc["steps"]:
            s["metrics"] = default.get(s["prefix"], {})
            s["evaluations"] = evaluations.get(s["prefix"], [])
        doc["latest_problem"] = cdir.latest_problem(prefix)
        _emit_json(doc)
        return EXIT_OK
    out = _out()
    if not cdir.steps:
        out.print(
            f"no checkpoints in {escape(cdir.location.display())}"
            + (f" with prefix {prefix!r}" if prefix else "")
        )
    else:
        table = Table(title=escape(cdir.location.display()), title_justify="left")
        for col, kw in (
            ("step", {"justify": "right"}),
            ("prefix", {}),
            ("status", {}),
            ("fmt", {}),
            ("shards", {"justify": "right"}),
            ("size", {"justify": "right"}),
            ("saved (UTC)", {}),
            ("metrics", {}),
            ("notes", {}),
        ):
            table.add_column(col, **kw)
        for s in cdir.steps:
            notes = []
            if s.latest:
                notes.append("latest")
            if s.has_meta:
                notes.append("meta")
            if s.quarantined:
                notes.append("quarantined")
            if s.leases:
                notes.append(f"{len(s.leases)} lease(s)")
            style = {"committed": "green", "orphan": "yellow", "incomplete": "red"}[s.status.value]
            table.add_row(
                "-" if s.step is None else str(s.step),
                escape(s.prefix),
                f"[{style}]{s.status.value}[/{style}]",
                s.format,
                "-" if s.num_shards is None else str(s.num_shards),
                _size(s.size),
                _when(s.timestamp),
                escape(_fmt_metrics(metrics.get(s.prefix, {}))),
                ", ".join(notes),
            )
        out.print(table)
        total = sum(s.size for s in cdir.steps)
        committed = sum(1 for s in cdir.steps if s.committed)
        out.print(f"{len(cdir.steps)} step(s), {committed} committed, {_size(total)}")
    for p in cdir.problems + [f"{s.prefix}: {p}" for s in cdir.steps for p in s.problems]:
        out.print(f"[yellow]warning:[/yellow] {escape(p)}")
    if lp := cdir.latest_problem(prefix):
        out.print(f"[red]PROBLEM[/red] {escape(cdir.location.display())}: {escape(lp)}", soft_wrap=True)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# validate


def _select_for_validate(cdir: CheckpointDir, step: str, prefix: str | None) -> list[CheckpointStep]:
    from .core.steps.select import select_steps

    return select_steps(cdir, step, prefix)


@app.command("validate")
def validate_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    step: Annotated[
        str, typer.Option("--step", "-s", metavar="N|latest|all", help="Which step(s) to verify.")
    ] = "latest",
    quarantine: Annotated[
        bool,
        typer.Option(
            "--quarantine",
            help="Quarantine each step that fails (as 'tf-ckpt quarantine' does); exit 1 still.",
        ),
    ] = False,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Verify every checksum TF checks on restore, without TF. Exit 1 names what is broken."""
    from .core.steps.discovery import StepStatus
    from .core.verify.engine import verify_step

    cdir = _discover(directory, prefix, storage_option)
    loc = cdir.location
    chosen = _select_for_validate(cdir, step, prefix)
    results: list[dict[str, Any]] = []
    problems_total = 0
    # a state-file path that resolves to nothing here breaks TF's restore: a problem; one that
    # was re-homed by basename (the dir was moved) is only a warning
    refused = {
        f"{loc.display(cdir.state_filename)}: {r.raw!r}: {r.problem}"
        for r in cdir.resolved
        if r.how == "refused"
    }
    dir_problems = [p for p in cdir.problems if p in refused]
    warnings = [p for p in cdir.problems if p not in refused]
    if step.strip().lower() in ("latest", "all") and (lp := cdir.latest_problem(prefix)):
        dir_problems.append(lp)  # TF's latest is not the step we fall back to: say so, exit 1
    if not chosen:
        incomplete = [s for s in cdir.steps if s.status is StepStatus.INCOMPLETE]
        dir_problems.append(
            "no committed checkpoint step"
            + (f" with prefix {prefix!r}" if prefix else "")
            + (f" ({len(incomplete)} incomplete)" if incomplete else "")
        )
        chosen = incomplete
    held = contextlib.ExitStack()
    if quarantine:  # as the operator does: GC must not delete a step between its check and its mark
        chosen = _lease_for_validate(loc, chosen, held, warnings)
    try:
        total_bytes = sum(s.size for s in chosen)
        done_before = 0
        with _progress(not as_json, "verifying", total_bytes) as update:
            for s in chosen:
                base = done_before

                def on_progress(done: int, _total: int, _base: int = base, _name: str = s.prefix) -> None:
                    update(_base + done, total_bytes, _name)

                if (
                    s.status is StepStatus.INCOMPLETE
                    and not any(f.name.endswith(".index") for f in s.files)
                    and s.format == "v2"
                ):
                    # no index to read: report the missing files directly
                    probs = [
                        {
                            "file": loc.display(m),
                            "tensor": None,
                            "kind": "missing_file",
                            "message": "file is missing (step incomplete)",
                            "expected": None,
                            "actual": None,
                        }
                        for m in s.missing
                    ]
                    entry = {
                        "prefix": s.prefix,
                        "step": s.step,
                        "status": s.status.value,
                        "ok": False,
                        "format": s.format,
                        "problems": probs,
                        "tensors_checked": 0,
                        "bytes_checked": 0,
                        "seconds": 0.0,
                    }
                else:
                    report = verify_step(loc, s.prefix, progress=on_progress, format=s.format)
                    warnings += report.warnings
                    entry = report.to_dict()
                    entry.update({"step": s.step, "status": s.status.value})
                    if s.status is StepStatus.INCOMPLETE:
                        known = {p["file"] for p in entry["problems"]}
                        for m in s.missing:
                            if loc.display(m) not in known and "?" not in m:
                                entry["problems"].append(
                                    {
                                        "file": loc.display(m),
                                        "tensor": None,
                                        "kind": "missing_file",
                                        "message": "file is missing (step incomplete)",
                                        "expected": None,
                                        "actual": None,
                                    }
                                )
                        entry["ok"] = False
                # what discovery saw beside the files the index names (stray shards, a state file
                # naming a step whose files are gone) is a problem of the step too
                entry["problems"] += [
                    {
                        "file": loc.display(s.prefix),
                        "tensor": None,
                        "kind": "layout",
                        "message": p,
                        "expected": None,
                        "actual": None,
                    }
                    for p in s.problems
                    if not (s.status is StepStatus.INCOMPLETE and "files are missing" in p)
                ]
                entry["ok"] = entry["ok"] and not entry["problems"]
                done_before += s.size
                problems_total += len(entry["problems"])
                results.append(entry)
        if quarantine:
            warnings += _quarantine_failed(loc, {s.prefix: s for s in chosen}, results, cdir.state_filename)
    finally:
        held.close()
    ok = problems_total == 0 and not dir_problems
    if as_json:
        _emit_json(
            {"dir": loc.display(), "ok": ok, "steps": results, "problems": dir_problems, "warnings": warnings}
        )
        return EXIT_OK if ok else EXIT_PROBLEM
    out = _out()
    table = Table(title=escape(f"validate {loc.display()}"), title_justify="left")
    for col, kw in (
        ("step", {"justify": "right"}),
        ("prefix", {}),
        ("status", {}),
        ("result", {}),
        ("tensors", {"justify": "right"}),
        ("checked", {"justify": "right"}),
        ("secs", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    for r in results:
        res = "[green]OK[/green]" if r["ok"] else f"[red]{len(r['problems'])} problem(s)[/red]"
        table.add_row(
            "-" if r["step"] is None else str(r["step"]),
            escape(r["prefix"]),
            r["status"],
            res,
            str(r["tensors_checked"]),
            _size(r["bytes_checked"]),
            f"{r['seconds']:.2f}",
        )
    if results:
        out.print(table)
    for r in results:
        for p in r["problems"]:
            where = f"{p['file']}: tensor {p['tensor']}" if p["tensor"] else p["file"]
            extra = (
                f" (expected {p['expected']}, got {p['actual']})"
                if p.get("expected") or p.get("actual")
                else ""
            )
            line = f"{where}: [{p['kind']}] {p['message']}{extra}"
            out.print(f"[red]CORRUPT[/red] {escape(line)}", soft_wrap=True)
    for p in dir_problems:
        out.print(f"[red]PROBLEM[/red] {escape(loc.display())}: {escape(p)}", soft_wrap=True)
    for r in results:
        if r.get("quarantined") and not r.get("already_quarantined"):
            out.print(
                f"[yellow]QUARANTINED[/yellow] {escape(loc.display(r['prefix']))}: the state file's "
                f"latest is now {escape(r['new_latest'] or '-')} (lift it with: tf-ckpt unquarantine "
                f"{escape(directory)} {escape(r['prefix'])})",
                soft_wrap=True,
            )
    for w in warnings:
        out.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    out.print(
        "[green]all good[/green]"
        if ok
        else f"[red]{problems_total + len(dir_problems)} problem(s) found[/red]"
    )
    return EXIT_OK if ok else EXIT_PROBLEM


def _lease_for_validate(
    loc: Location, steps: list[CheckpointStep], held: contextlib.ExitStack, warnings: list[str]
) -> list[CheckpointStep]:
    """Lease each step for ``validate --quarantine``; a step a GC run is deleting is skipped."""
    import socket

    from .core.sidecars.leases import LeaseConflictError, LeaseError, leased

    owner = f"validate-{socket.gethostname().split('.')[0]}-{os.getpid()}"
    out = []
    for s in steps:
        try:
            held.enter_context(leased(loc, s.prefix, owner, 3600.0))
        except LeaseConflictError:
            warnings.append(f"{s.prefix}: skipped: a GC run is deleting it")
            continue
        except (LeaseError, OSError) as exc:
            warnings.append(f"{s.prefix}: verified without a lease ({exc})")
        out.append(s)
    return out


def _quarantine_failed(
    loc: Location, steps: dict[str, CheckpointStep], results: list[dict[str, Any]], state_filename: str
) -> list[str]:
    """``validate --quarantine``: quarantine each failed step; returns warnings. A step that is
    incomplete and not named by the state file is left alone (it may be a save in progress), and
    so is one already quarantined (its record, with the first report, is kept)."""
    from .core.sidecars.quarantine import QuarantineConflictError, quarantine_step
    from .core.steps.discovery import StepStatus

    warnings: list[str] = []
    for r in results:
        if r["ok"]:
            continue
        s = steps[r["prefix"]]
        if s.quarantined:
            r.update(quarantined=True, already_quarantined=True, new_latest=None)
            warnings.append(f"{s.prefix}: already quarantined; its record is kept")
            continue
        r.update(quarantined=False, already_quarantined=False, new_latest=None)
        if s.status is StepStatus.INCOMPLETE and not s.in_state:
            warnings.append(
                f"{s.prefix}: not quarantined: incomplete and not named by the state file "
                "(a save may be in progress)"
            )
            continue
        report = {k: v for k, v in r.items() if k not in ("quarantined", "already_quarantined", "new_latest")}
        try:
            q = quarantine_step(
                loc,
                s.prefix,
                f"tf-ckpt validate: {len(r['problems'])} problem(s)",
                report,
                state_filename=state_filename,
            )
        except StepNotFoundError:
            warnings.append(f"{s.prefix}: not quarantined: its files are gone")
            continue
        except QuarantineConflictError:
            warnings.append(f"{s.prefix}: not quarantined: a GC run is deleting it")
            continue
        r["quarantined"], r["new_latest"] = True, q.new_latest
    return warnings


# ---------------------------------------------------------------------------------------------
# gc


@app.command("gc")
def gc_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    prefix: PrefixOpt = None,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", min=0, help="Keep the N newest steps.")
    ] = None,
    keep_every_hours: Annotated[
        float | None,
        typer.Option(
            "--keep-every-hours",
            min=0.0,
            help="Keep one step per H hours (like TF's keep_checkpoint_every_n_hours).",
        ),
    ] = None,
    keep_every_steps: Annotated[
        int | None, typer.Option("--keep-every-steps", min=1, help="Keep steps that are multiples of S.")
    ] = None,
    keep_best: Annotated[
        int | None, typer.Option("--keep-best", min=0, help="Keep the K best by --metric.")
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric name for --keep-best.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="min or max: which metric values are best.")] = "min",
    pin: Annotated[
        list[int] | None, typer.Option("--pin", metavar="STEP", help="Never delete this step (repeatable).")
    ] = None,
    evaluator: EvaluatorOpt = None,
    keep_unevaluated: Annotated[
        list[str] | None,
        typer.Option(
            "--keep-unevaluated",
            metavar="EVALUATOR[,EVALUATOR...]",
            help="Keep steps these evaluators have not evaluated yet (repeatable).",
        ),
    ] = None,
    unevaluated_max_age: Annotated[
        str,
        typer.Option(
            "--unevaluated-max-age",
            metavar="DURATION",
            help="How long after its save --keep-unevaluated holds a step (90s, 30m, 24h, 2d; 'none': no bound).",
        ),
    ] = "24h",
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Show the plan; delete nothing.")] = False,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Delete checkpoint steps that no retention policy keeps (the state file is rewritten first).

    A dir that does not exist (yet) is nothing to do (exit 0)."""
    from .core.errors import DirNotFoundError
    from .core.retention.executor import apply_plan
    from .core.retention.planner import parse_duration, plan_retention, policies_from_options

    if mode not in ("min", "max"):
        raise CliError(f"--mode must be 'min' or 'max', not {mode!r}")
    if keep_best and not metric:
        raise CliError("--keep-best needs --metric NAME")
    policies = policies_from_options(
        keep_last=keep_last,
        keep_every_hours=keep_every_hours,
        keep_every_steps=keep_every_steps,
        keep_best=keep_best,
        metric=metric,
        mode=mode,
        pins=list(pin or []),
        evaluator=evaluator,
        keep_unevaluated=[n.strip() for v in keep_unevaluated or [] for n in v.split(",") if n.strip()],
        unevaluated_max_age=None
        if unevaluated_max_age.strip().lower() == "none"
        else parse_duration(unevaluated_max_age),
    )
    if not policies:
        raise CliError(
            "no retention policy given: pass --keep-last/--keep-every-hours/--keep-every-steps/"
            "--keep-best/--keep-unevaluated/--pin (deleting everything is not an option)"
        )
    loc = _location(directory, storage_option)
    try:
        plan = plan_retention(loc, policies, prefix=prefix)
    except DirNotFoundError:
        if as_json:
            _emit_json({"dry_run": dry_run, "missing_dir": True, "dir": loc.display()})
        else:
            _out().print(f"{escape(loc.display())} does not exist yet: nothing to do")
        return EXIT_OK
    result = apply_plan(plan, dry_run=dry_run)
    code = EXIT_OK if result.ok else EXIT_PROBLEM
    if as_json:
        _emit_json({"dry_run": dry_run, "plan": result.plan.to_dict(), "result": result.to_dict()})
        return code
    out = _out()
    _print_plan(out, result.plan)
    out.print(escape(result.plan.summary()), soft_wrap=True)
    for r in result.plan.refused:
        out.print(f"[yellow]refused:[/yellow] {escape(str(r.to_dict()))}", soft_wrap=True)
    for p in result.plan.problems:
        out.print(f"[yellow]warning:[/yellow] {escape(p)}", soft_wrap=True)
    if dry_run:
        out.print("[yellow]dry run: nothing deleted[/yellow]")
    else:
        out.print(escape(result.summary()), soft_wrap=True)
    return code


def _print_plan(out: Console, plan: RetentionPlan) -> None:
    if not plan.decisions:
        out.print(f"no checkpoints in {escape(plan.location.display())}")
        return
    table = Table(title=escape(f"retention plan {plan.location.display()}"), title_justify="left")
    for col in ("step", "prefix", "status", "size", "action", "why"):
        table.add_column(col, justify="right" if col in ("step", "size") else "left")
    for d in plan.decisions:
        style = "green" if d.keep else "red"
        table.add_row(
            "-" if d.step is None else str(d.step),
            escape(d.prefix),
            d.status,
            _size(d.size),
            f"[{style}]{escape(d.action)}[/{style}]",
            escape("; ".join(d.reasons)),
        )
    out.print(table)
    for sc in plan.sidecars:  # files without a step of their own: orphaned sidecars, dead temp files
        if sc.action == "delete":
            out.print(f"  also delete {escape(sc.name)} ({escape(sc.role)}): {escape(sc.reason)}")


# ---------------------------------------------------------------------------------------------
# promote


@app.command("promote")
def promote_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Source checkpoint dir: a path or URL.")],
    to: Annotated[str, typer.Option("--to", metavar="DEST", help="Destination dir or URL.")],
    step: Annotated[
        str,
        typer.Option(
            "--step", "-s", metavar="N|latest|best", help="Which step: a number, latest, or best by --metric."
        ),
    ] = "latest",
    metric: Annotated[str | None, typer.Option("--metric", help="Metric for --step best.")] = None,
    mode: Annotated[str, typer.Option("--mode", help="min or max: which metric values are best.")] = "min",
    alias: Annotated[
        str | None, typer.Option("--alias", help="Also point DEST/aliases/NAME.json at it.")
    ] = None,
    prefix: PrefixOpt = None,
    evaluator: EvaluatorOpt = None,
    no_record: Annotated[
        bool,
        typer.Option(
            "--no-record",
            help="Do not record the promotion in the source dir (retention then may delete the step).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Copy one step to DEST atomically: data, index, state file, then PROMOTED.json last."""
    from .core.promote.promote import promote
    from .core.storage.location import Location

    if mode not in ("min", "max"):
        raise CliError(f"--mode must be 'min' or 'max', not {mode!r}")
    if step == "best" and not metric:
        raise CliError("--step best needs --metric NAME")
    if not to.strip():
        raise CliError(f"--to {to!r} is an empty path: give the destination dir (a path or URL)")
    opts = _parse_kv(storage_option, "--storage-option") or None
    src = Location.of(directory, opts)
    dst = Location.of(to, opts)
    with _progress(not as_json, "promoting", 0) as update:
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
        sys.stderr.write(f"tf-ckpt: warning: {_one_line(result.record_problem)}\n")
    if as_json:
        _emit_json(result.to_dict())
        return EXIT_OK
    out = _out()
    m = result.manifest
    table = Table(title=escape(f"promoted to {result.destination}"), title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("step", "-" if m.step is None else str(m.step)),
        ("prefix", m.prefix),
        ("selected by", m.selector),
        ("source", m.source),
        ("metrics", _fmt_metrics(m.metrics) or "-"),
        ("copied", f"{len(result.copied)} file(s), {_size(result.bytes_copied)} ({result.method})"),
        ("reused", f"{len(result.reused)} file(s)"),
        ("deleted", ", ".join(result.deleted) or "-"),
        ("alias", f"{m.alias} -> {result.alias_path}" if m.alias else "-"),
        ("manifest", f"{result.destination}/PROMOTED.json"),
        ("time", f"{result.seconds:.2f} s"),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# metrics


@app.command("metrics")
def metrics_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    step: Annotated[
        str | None, typer.Option("--step", "-s", metavar="N|latest", help="The step to show or set.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", metavar="NAME=VALUE", help="Write a numeric metric into the step's sidecar (repeatable)."
        ),
    ] = None,
    prefix: PrefixOpt = None,
    evaluator: Annotated[
        str | None,
        typer.Option(
            "--evaluator",
            metavar="NAME",
            help="Only this evaluator's sidecars (and --set writes its sidecar); default: show every "
            "evaluator (a named one's metrics as NAME:metric), --set the default sidecar.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Show the metrics sidecars of a dir, or write metrics for one step (--set loss=0.25)."""
    from .core.sidecars.metrics import metric_name_problem, read_metrics, write_metrics

    new = _parse_kv(set_, "--set")
    for k, v in new.items():  # checked before anything is read or written
        if problem := metric_name_problem(k):
            raise CliError(f"--set: {problem}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CliError(f"--set {k}={v!r}: a metric value must be a number")
        if not math.isfinite(v):
            raise CliError(f"--set {k}={v!r}: a metric value must be a finite number")
    cdir = _discover(directory, prefix, storage_option)
    loc = cdir.location
    if set_:
        if step is None:
            raise CliError("--set needs --step N")
        target = _select_for_validate(cdir, step, prefix)
        if not target:
            raise CliError(f"no committed step in {loc.display()}")
        s = target[0]
        merged = dict(read_metrics(loc, s.prefix, evaluator) or {})
        merged.update(new)
        write_metrics(loc, s.prefix, merged, evaluator=evaluator, count=False)
        doc: Any = {"prefix": s.prefix, "step": s.step, "metrics": merged, "evaluator": evaluator}
        if as_json:
            _emit_json(doc)
        else:
            _out().print(f"{escape(loc.display(s.prefix))}: {escape(_fmt_metrics(merged))}")
        return EXIT_OK
    metrics = _metrics(cdir, evaluator, every=evaluator is None)
    steps = _select_for_validate(cdir, step, prefix) if step else cdir.steps
    rows = [{"prefix": s.prefix, "step": s.step, "metrics": metrics.get(s.prefix, {})} for s in steps]
    if as_json:
        if evaluator is None:
            default = _metrics(cdir, None, every=False)
            evaluations = _evaluations(cdir)
            for r in rows:
                r["metrics"] = default.get(r["prefix"], {})
                r["evaluations"] = evaluations.get(r["prefix"], [])
        _emit_json({"dir": loc.display(), "evaluator": evaluator, "steps": rows})
        return EXIT_OK
    out = _out()
    names = sorted({k for r in rows for k in r["metrics"]})
    table = Table(title=escape(f"metrics {loc.display()}"), title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("prefix")
    for n in names:
        table.add_column(escape(n), justify="right")
    for r in rows:
        vals = [r["metrics"].get(n) for n in names]
        table.add_row(
            "-" if r["step"] is None else str(r["step"]),
            escape(r["prefix"]),
            *["-" if v is None else (f"{v:.6g}" if isinstance(v, float) else escape(str(v))) for v in vals],
        )
    out.print(table)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# quarantine / unquarantine


StepArg = Annotated[str, typer.Argument(metavar="STEP", help="A step number or a prefix (e.g. 5, ckpt-5).")]


def _one_step(cdir: CheckpointDir, step: str, prefix: str | None, allow_latest: bool) -> CheckpointStep:
    from .core.steps.select import parse_selector, select_step

    if (
        not allow_latest
        and isinstance(parse_selector(step), str)
        and parse_selector(step) in ("latest", "best", "all")
    ):
        raise CliError(f"STEP must be a step number or a prefix here, not {step!r}")
    return select_step(cdir, step, prefix=prefix, allow_incomplete=True)


@app.command("quarantine")
def quarantine_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    step: Annotated[str, typer.Argument(metavar="STEP", help="A step number, a prefix, or latest.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why (kept in PREFIX.quarantine.json).")],
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Take a step out of the state file and mark it corrupt: GC keeps it, promotion refuses it."""
    from .core.sidecars.quarantine import quarantine_step

    if not reason.strip():
        raise CliError("--reason must not be empty")
    cdir = _discover(directory, prefix, storage_option)
    loc = cdir.location
    s = _one_step(cdir, step, prefix, allow_latest=True)
    result = quarantine_step(loc, s.prefix, reason, state_filename=cdir.state_filename)
    if as_json:
        doc = {
            "dir": loc.display(),
            "step": s.step,
            "already_quarantined": s.quarantined,
            "record_url": loc.display(result.record_name),
        }
        doc.update(result.to_dict())
        _emit_json(doc)
        return EXIT_OK
    out = _out()
    again = " (it was already quarantined: record replaced)" if s.quarantined else ""
    out.print(
        f"[yellow]quarantined[/yellow] {escape(loc.display(s.prefix))}{again}: {escape(reason)}",
        soft_wrap=True,
    )
    if result.state_removed:
        state_line = "state file removed: no step left to name (TF's latest_checkpoint now returns None)"
    elif result.removed_paths:
        state_line = f"state file no longer names it; latest is {result.new_latest or '-'}" + (
            " (it was the latest)" if result.was_latest else ""
        )
    else:
        state_line = "state file did not name it; not rewritten"
    out.print(escape(state_line), soft_wrap=True)
    out.print(
        f"record: {escape(loc.display(result.record_name))} (GC keeps the step, promotion refuses it; "
        f"lift it with: tf-ckpt unquarantine {escape(directory)} {escape(s.prefix)})",
        soft_wrap=True,
    )
    return EXIT_OK


@app.command("unquarantine")
def unquarantine_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Checkpoint dir: a path or URL.")],
    step: StepArg,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            help="Do not verify the step first (files must still all be there to name it again).",
        ),
    ] = False,
    no_restore_state: Annotated[
        bool,
        typer.Option(
            "--no-restore-state",
            help="Only remove the record; "
            "leave the state file alone (GC may then delete the step "
            "as an orphan).",
        ),
    ] = False,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    storage_option: StorageOpt = None,
) -> int:
    """Lift a quarantine: verify the step, name it in the state file again, then remove the record."""
    from .core.sidecars.quarantine import StillCorruptError, release_quarantine

    cdir = _discover(directory, prefix, storage_option)
    loc = cdir.location
    s = _one_step(cdir, step, prefix, allow_latest=False)
    try:
        with _progress(not as_json and not no_verify, "verifying", s.size) as update:
            result = release_quarantine(
                loc,
                s.prefix,
                verify=not no_verify,
                restore_state=not no_restore_state,
                state_filename=cdir.state_filename,
                progress=lambda done, total: update(done, total, s.prefix),
            )
    except StillCorruptError as exc:
        if as_json:
            _emit_json(
                {
                    "dir": loc.display(),
                    "prefix": s.prefix,
                    "step": s.step,
                    "ok": False,
                    "released": False,
                    "problems": exc.problems,
                    "report": None if exc.report is None else exc.report.to_dict(),
                }
            )
            return EXIT_PROBLEM
        out = _out()
        for p in exc.problems:
            out.print(f"[red]CORRUPT[/red] {escape(p)}", soft_wrap=True)
        out.print(
            f"[red]{escape(loc.display(s.prefix))} still fails verification "
            f"({len(exc.problems)} problem(s)): it stays quarantined[/red]",
            soft_wrap=True,
        )
        return EXIT_PROBLEM
    if as_json:
        doc = {"dir": loc.display(), "step": s.step, "ok": True, "released": True}
        doc.update(result.to_dict())
        _emit_json(doc)
        return EXIT_OK
    out = _out()
    if result.verified:
        verified = f"OK: {result.tensors_checked} tensors, {_size(result.bytes_checked)} checked"
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
    table = Table(title=escape(f"released {loc.display(s.prefix)}"), title_justify="left", show_header=False)
    table.add_column("key")
    table.add_column("value")
    rows = [
        ("step", "-" if s.step is None else str(s.step)),
        ("prefix", s.prefix),
        ("quarantined for", str(result.record.get("reason") or "-")),
        ("verified", verified),
        ("state file", state),
        (
            "latest",
            f"{latest} (this step)"
            if result.made_latest
            else (f"{latest} (unchanged)" if result.state_written else "-"),
        ),
        ("record", f"{loc.display(result.record_name)} removed"),
    ]
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# entry point


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (0 ok, 1 problem found, 2 usage/input)."""

    def fail(msg: str, code: int = EXIT_USAGE) -> int:
        sys.stdout.flush()
        sys.stderr.write(f"tf-ckpt: error: {_one_line(msg)}\n")
        sys.stderr.flush()
        return code

    debug = os.environ.get("TF_CKPT_DEBUG", "") not in ("", "0")
    if not debug:  # the one-line error says it all: no library log lines before it on stderr
        import logging

        gcsfs_log = logging.getLogger("gcsfs")
        if not any(isinstance(h, logging.NullHandler) for h in gcsfs_log.handlers):
            gcsfs_log.addHandler(logging.NullHandler())
    try:
        rv = app(args=argv, prog_name="tf-ckpt", standalone_mode=False)
    except TyperException as exc:  # usage errors (typer vendors its own click)
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            sys.stderr.write(ctx.get_help() + "\n")
            return EXIT_USAGE
        code = int(getattr(exc, "exit_code", EXIT_USAGE) or EXIT_USAGE)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        return fail(f"{exc.format_message()}{hint}", EXIT_USAGE if code == 1 else code)
    except TyperAbort:
        return fail("aborted", 130)
    except CliError as exc:
        return fail(str(exc), exc.code)
    except (StepNotFoundError, StorageError) as exc:
        if debug:
            raise
        return fail(str(exc), EXIT_USAGE)
    except CheckpointError as exc:
        if debug:
            raise
        # a checkpoint that cannot be read (malformed state file, a bad promotion manifest):
        # the input is unusable as given
        return fail(str(exc), EXIT_USAGE)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if debug:
            raise
        return fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}", EXIT_USAGE)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (TF_CKPT_DEBUG=1 shows it)
        if debug:
            raise
        return fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE)
    if isinstance(rv, int):
        return rv
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
