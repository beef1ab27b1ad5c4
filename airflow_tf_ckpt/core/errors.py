"""Exceptions of the checkpoint core.

Every error names the file (URL or path) it is about, so that a CLI line, a task log or a test
assertion can say exactly what is wrong and where.
"""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class of every error the core raises on purpose."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        self.message = message  # without the path
        super().__init__(f"{path}: {message}" if path else message)


class StateFileError(CheckpointError):
    """The ``checkpoint`` state file cannot be parsed or names something unusable."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.line = line
        where = f"{path}:{line}" if path and line else path
        super().__init__(message, where)
        self.path = path


class TableError(CheckpointError):
    """A leveldb-format table (``.index`` or V1 ``.ckpt``) is malformed."""


class UnsafePathError(CheckpointError):
    """A path resolves outside the managed root (``..``, absolute elsewhere, symlink out)."""


class StepNotFoundError(CheckpointError):
    """The requested step does not exist (or no step matches the selector)."""


class StepRefusedError(StepNotFoundError):
    """The selected step exists but may not be used here (incomplete, quarantined, or the
    selector is not one step)."""


class LatestStepMissingError(StepNotFoundError):
    """The state file's latest step has missing files: ``tf.train.latest_checkpoint`` returns
    None (or the restore fails), so ``latest`` names no usable step."""


class StorageError(CheckpointError):
    """The directory or object store cannot be read or written."""


class DirNotFoundError(StorageError):
    """The directory does not exist (yet): for GC, nothing to do; for most else, an error."""
