"""The ``tf-ckpt`` command group, its error type and the console-script entry point.

Built on click (no pydantic behind each parameter, so a short ``tf-ckpt`` run starts quickly);
every command module imports its heavy modules (rich, fsspec, protobuf) inside the command.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from airflow_tf_ckpt.core.display import one_line
from airflow_tf_ckpt.core.errors import CheckpointError

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """Stop with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@click.group(
    name="tf-ckpt",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def app() -> None:
    """Inspect, validate, garbage-collect, promote and quarantine TensorFlow checkpoints (local or gs://)."""


def _fail(msg: str, code: int = EXIT_USAGE) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"tf-ckpt: error: {one_line(msg)}\n")
    sys.stderr.flush()
    return code


def _quiet_library_logs() -> None:
    """The one-line error says it all: no library log lines before it on stderr."""
    import logging

    gcsfs_log = logging.getLogger("gcsfs")
    if not any(isinstance(h, logging.NullHandler) for h in gcsfs_log.handlers):
        gcsfs_log.addHandler(logging.NullHandler())


def _usage_error(exc: click.ClickException) -> int:
    ctx: Any = getattr(exc, "ctx", None)
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and ctx is not None:
        sys.stderr.write(ctx.get_help() + "\n")
        return EXIT_USAGE
    code = int(exc.exit_code or EXIT_USAGE)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return _fail(f"{exc.format_message()}{hint}", EXIT_USAGE if code == 1 else code)


def _input_error(exc: Exception) -> int:
    """A storage, checkpoint or OS error: the input is unusable as given (exit 2)."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, PermissionError)):
        return _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or exc}")
    if isinstance(exc, CheckpointError):  # StepNotFound, Storage, a malformed state file...
        return _fail(str(exc))
    return _fail(f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (0 ok, 1 problem found, 2 usage/input).

    An error is one line on stderr, never a traceback (``TF_CKPT_DEBUG=1`` raises it instead)."""
    from airflow_tf_ckpt.cli import commands  # noqa: F401 - registers the commands on ``app``

    debug = os.environ.get("TF_CKPT_DEBUG", "") not in ("", "0")
    if not debug:
        _quiet_library_logs()
    try:
        rv = app.main(args=argv, prog_name="tf-ckpt", standalone_mode=False)
    except click.ClickException as exc:  # usage errors
        return _usage_error(exc)
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (TF_CKPT_DEBUG=1 shows it)
        if debug:
            raise
        return _input_error(exc)
    return rv if isinstance(rv, int) else EXIT_OK
