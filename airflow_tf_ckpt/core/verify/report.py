"""What a verification finds: :class:`Problem`, :class:`VerifyReport`, and the per-file tally."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.formats.bundle import (
    HEADER_KEY,
    decode_slice_key,
    is_slice_key,
    key_text,
)
from airflow_tf_ckpt.core.formats.table import TableCorruption

MAX_PROBLEMS_PER_FILE = 100


ProgressFn = Callable[[int, int], None]


@dataclass
class Problem:
    """One finding. ``file`` is a path or URL; ``tensor`` the tensor (or ``name[slice]``)."""

    file: str
    tensor: str | None
    kind: str
    message: str
    expected: str | None = None
    actual: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "tensor": self.tensor,
            "kind": self.kind,
            "message": self.message,
            "expected": self.expected,
            "actual": self.actual,
        }

    def __str__(self) -> str:
        return problem_line(self.to_dict())


def problem_line(p: Mapping[str, Any]) -> str:
    """One problem as one line: ``FILE: tensor T: [kind] message (expected X, got Y)``.

    ``p`` is :meth:`Problem.to_dict` output, or the same read back from a report (a quarantine
    record, ``--json``) that may lack fields or lie: what is there is shown, never a raw dict, and
    each field is bounded (:data:`FIELD_CHARS`) with its control characters escaped, so a hostile
    record (a tensor name with a newline, an ANSI escape, a megabyte of message) stays one line.
    """
    if not isinstance(p, Mapping):
        return _shown(p)
    file, tensor, kind = p.get("file") or "?", p.get("tensor"), p.get("kind") or "problem"
    where = f"{_shown(file)}: tensor {_shown(tensor)}" if tensor else _shown(file)
    exp, act = p.get("expected"), p.get("actual")
    extra = f" (expected {_shown(exp)}, got {_shown(act)})" if exp or act else ""
    return f"{where}: [{_shown(kind)}] {_shown(p.get('message') or '')}{extra}"


#: the most characters of one field :func:`problem_line` shows
FIELD_CHARS = 500


def _shown(value: Any) -> str:
    """``value`` as text for one line: at most :data:`FIELD_CHARS` characters (then "…"), each
    unprintable one escaped as Python writes it (``\\n``, ``\\x1b``)."""
    if isinstance(value, (dict, list, tuple)):  # not a field any problem has: its size, never its repr
        return f"<{type(value).__name__} of {len(value)} item(s)>"  # (a hostile one may nest 100k deep)
    text = value if isinstance(value, str) else str(value)
    cut = text[:FIELD_CHARS]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut + "…" if len(text) > FIELD_CHARS else cut


@dataclass
class VerifyReport:
    ok: bool
    prefix: str
    format: str  # "v2" | "v1"
    problems: list[Problem] = field(default_factory=list)
    tensors_checked: int = 0  # entries whose checksum (V2) or protobuf (V1) was checked
    bytes_checked: int = 0
    files: list[str] = field(default_factory=list)
    location: str = ""
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what was not checked, and why

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "prefix": self.prefix,
            "format": self.format,
            "location": self.location,
            "problems": [p.to_dict() for p in self.problems],
            "warnings": list(self.warnings),
            "tensors_checked": self.tensors_checked,
            "bytes_checked": self.bytes_checked,
            "files": list(self.files),
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        head = (
            f"{self.location}/{self.prefix} ({self.format}): "
            f"{'OK' if self.ok else f'{len(self.problems)} problem(s)'}, "
            f"{self.tensors_checked} tensors, {self.bytes_checked} bytes checked"
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


class ProblemList:
    """Collects problems, at most MAX_PROBLEMS_PER_FILE per file (then one summary line)."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._per_file: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def add(
        self,
        file: str,
        tensor: str | None,
        kind: str,
        message: str,
        expected: object = None,
        actual: object = None,
    ) -> None:
        with self._lock:
            n = self._per_file[file] = self._per_file[file] + 1
            if n <= MAX_PROBLEMS_PER_FILE:
                self.items.append(
                    Problem(
                        file,
                        tensor,
                        kind,
                        message,
                        None if expected is None else str(expected),
                        None if actual is None else str(actual),
                    )
                )

    def add_table(self, exc: TableCorruption, tensor: str | None = None) -> None:
        if tensor is None and exc.key is not None and exc.key != HEADER_KEY:
            tensor = key_display(exc.key)
        self.add(exc.path or "?", tensor, exc.kind, exc.detail, exc.expected, exc.actual)

    def finish(self) -> list[Problem]:
        out = list(self.items)
        for file, n in self._per_file.items():
            if n > MAX_PROBLEMS_PER_FILE:
                out.append(
                    Problem(
                        file,
                        None,
                        "more_problems",
                        f"{n - MAX_PROBLEMS_PER_FILE} more problem(s) in this file not listed",
                    )
                )
        return out


def key_display(key: bytes) -> str:
    if is_slice_key(key):
        try:
            name, spec = decode_slice_key(key)
            return f"{name}[{spec}]"
        except ValueError:
            pass
    return key_text(key)


# ---------------------------------------------------------------------------------------------
# per-entry checksum accumulators


def finish(report: VerifyReport, problems: ProblemList, t0: float) -> VerifyReport:
    report.problems = problems.finish()
    report.ok = not report.problems
    report.seconds = time.monotonic() - t0
    return report


# ---------------------------------------------------------------------------------------------
# V1


class Tally:
    """Bytes checked so far, reported to ``progress`` from any thread."""

    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if self.progress is None:
            return
        with self._lock:  # calls are serialized, so the callback sees a monotonic count
            self.done += n
            self.progress(self.done, self.total)
