"""The ``checkpoint`` state file (``CheckpointState`` in protobuf text format).

TF writes it LAST in a save, atomically, so it is the commit signal: a step is committed when the
state file names it. Paths in it may be relative (``CheckpointManager``) or absolute
(``tf.compat.v1.train.Saver`` given an absolute save path). TF joins a relative path onto the dir;
an absolute path that points into another host's or bucket's dir breaks TF (issues #9146, #12225),
so we resolve it by basename inside this dir when that file exists here, and say so.

Nothing here ever follows a path out of the managed dir: ``..``, sub-directories, absolute paths
elsewhere with no local twin, and URLs of other buckets are reported, never resolved.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf import text_format

from .errors import StateFileError
from .protos import CheckpointState

if TYPE_CHECKING:
    from .storage import Location

STATE_FILENAME = "checkpoint"
# A state file of 100k steps is ~10 MiB; anything far larger is not a state file.
MAX_STATE_BYTES = 64 << 20


@dataclass
class StateFile:
    """The four fields of ``CheckpointState``, as plain Python."""

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: list[str] = field(default_factory=list)
    all_model_checkpoint_timestamps: list[float] = field(default_factory=list)
    last_preserved_timestamp: float = 0.0

    def timestamp_of(self, raw_path: str) -> float | None:
        """The recorded save time of a path, where TF recorded one."""
        try:
            i = self.all_model_checkpoint_paths.index(raw_path)
        except ValueError:
            return None
        ts = self.all_model_checkpoint_timestamps
        # TF writes one timestamp per path; older files may have none.
        return ts[i] if len(ts) == len(self.all_model_checkpoint_paths) else None

    def timestamps_by_path(self) -> dict[str, float]:
        """Every recorded save time by raw path (one pass: discovery of 100k steps stays linear)."""
        if len(self.all_model_checkpoint_timestamps) != len(self.all_model_checkpoint_paths):
            return {}
        return dict(zip(self.all_model_checkpoint_paths, self.all_model_checkpoint_timestamps, strict=True))

    def retained(self, keep_raw: set[str]) -> StateFile:
        """A copy that names only ``keep_raw`` paths (order, timestamps and latest kept in step)."""
        paths, stamps = [], []
        aligned = len(self.all_model_checkpoint_timestamps) == len(self.all_model_checkpoint_paths)
        for i, p in enumerate(self.all_model_checkpoint_paths):
            if p in keep_raw:
                paths.append(p)
                if aligned:
                    stamps.append(self.all_model_checkpoint_timestamps[i])
        latest = self.model_checkpoint_path if self.model_checkpoint_path in keep_raw else (
            paths[-1] if paths else "")
        return StateFile(latest, paths, stamps, self.last_preserved_timestamp)


def parse_state(data: bytes | str, path: str = STATE_FILENAME) -> StateFile:
    """Parse state-file text. Raises :class:`StateFileError` naming the file and line."""
    if isinstance(data, bytes):
        if len(data) > MAX_STATE_BYTES:
            raise StateFileError(f"is {len(data)} bytes, too large for a checkpoint state file", path)
        if b"\x00" in data:
            raise StateFileError("holds binary data (NUL bytes), not a text-format CheckpointState", path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise StateFileError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", path, line) from exc
    else:
        text = data
    fast = _parse_canonical(text)
    return require_latest(fast if fast is not None else _parse_text_format(text, path), path)


def require_latest(state: StateFile, path: str = STATE_FILENAME) -> StateFile:
    """``state``, if TF would load it: ``get_checkpoint_state`` raises ``ValueError("Invalid
    checkpoint state loaded from ...")`` when ``model_checkpoint_path`` is missing or empty (an
    empty file, whitespace or comments only included), and a trainer's ``CheckpointManager``
    fails to start on such a dir. Raises :class:`StateFileError` then."""
    if not state.model_checkpoint_path:
        raise StateFileError("model_checkpoint_path is missing or empty: TensorFlow's "
                             "get_checkpoint_state rejects this state file (ValueError: Invalid "
                             "checkpoint state)", path)
    return state


# The canonical form, as TF writes it (``text_format.MessageToString``): one ``field: value`` per
# line, strings of printable ASCII with nothing to unescape, numbers as Python prints a float.
# A singular field given twice: the last one wins, as in TF (``text_format.Merge``).
# Anything else (escapes, other spacing, comments, unknown fields, inf/nan, bad input) is left to
# text_format, the reference parser, which also makes the errors.
_STR = r'"([ !#-\[\]-~]*)"(?=\n)'
_NUM = r"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)(?=\n)"
# each starts with a literal ("\n" + the field name), so the scan skips ahead in C (a ``^`` with
# re.M would be tried at every character: 5x slower)
_LATEST = re.compile(r"\nmodel_checkpoint_path: " + _STR)
_PATHS = re.compile(r"\nall_model_checkpoint_paths: " + _STR)
_STAMPS = re.compile(r"\nall_model_checkpoint_timestamps: " + _NUM)
_PRESERVED = re.compile(r"\nlast_preserved_timestamp: " + _NUM)


def _parse_canonical(text: str) -> StateFile | None:
    """The state file when ``text`` is in the canonical form, else ``None``.

    text_format costs ~30 µs a line in Python (3 s for a 100k-step file); these four C-level
    scans cost ~0.1 s. Every line must match one of them: the matches are counted against the
    lines, so nothing is skipped silently. tests/test_state_fastpath.py checks the result against
    text_format on generated input, bad input included.
    """
    text = "\n" + text if text.endswith("\n") or not text else "\n" + text + "\n"
    latest = _LATEST.findall(text)
    preserved = _PRESERVED.findall(text)
    paths = _PATHS.findall(text)
    stamps = _STAMPS.findall(text)
    if len(latest) + len(preserved) + len(paths) + len(stamps) != text.count("\n") - 1:
        return None
    return StateFile(
        model_checkpoint_path=latest[-1] if latest else "",
        all_model_checkpoint_paths=paths,
        all_model_checkpoint_timestamps=list(map(float, stamps)),
        last_preserved_timestamp=float(preserved[-1]) if preserved else 0.0,
    )


def _parse_text_format(text: str, path: str) -> StateFile:
    """The reference parser: protobuf ``text_format`` (any valid text, and the error messages).

    ``Merge``, not ``Parse``, as TF's ``get_checkpoint_state``: a singular field given twice is
    accepted and the last one wins."""
    msg = CheckpointState()
    try:
        text_format.Merge(text, msg)
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        raise StateFileError(f"malformed CheckpointState: {exc}", path, line) from exc
    return StateFile(
        model_checkpoint_path=msg.model_checkpoint_path,
        all_model_checkpoint_paths=list(msg.all_model_checkpoint_paths),
        all_model_checkpoint_timestamps=list(msg.all_model_checkpoint_timestamps),
        last_preserved_timestamp=msg.last_preserved_timestamp,
    )


def format_state(state: StateFile) -> str:
    """Text format exactly as TF's ``text_format.MessageToString(CheckpointState)``."""
    msg = CheckpointState(
        model_checkpoint_path=state.model_checkpoint_path,
        all_model_checkpoint_paths=state.all_model_checkpoint_paths,
        all_model_checkpoint_timestamps=state.all_model_checkpoint_timestamps,
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
    return text_format.MessageToString(msg)


def read_state(loc: Location, filename: str = STATE_FILENAME) -> StateFile | None:
    """Read the dir's state file; ``None`` when there is none yet."""
    from .errors import StorageError

    try:
        data = loc.read_bytes(filename, cap=MAX_STATE_BYTES, what="a checkpoint state file")
    except StorageError:
        if not loc.exists(filename):
            return None
        raise
    return parse_state(data, loc.display(filename))


def write_state(loc: Location, state: StateFile, filename: str = STATE_FILENAME) -> None:
    """Atomically replace the state file (temp + rename locally, one put on object stores)."""
    loc.write_atomic(filename, format_state(state).encode("utf-8"))


@dataclass(frozen=True)
class ResolvedPath:
    """Where a state-file path lands inside the managed dir.

    ``name`` is the checkpoint prefix's basename in this dir, or ``None`` when the path cannot be
    used; ``how`` is ``relative``, ``absolute``, ``moved`` (absolute elsewhere, resolved by
    basename) or ``refused``; ``problem`` says why when it is refused or moved.
    """

    raw: str
    name: str | None
    how: str
    problem: str | None = None


def relative_paths(raws: list[str]) -> list[ResolvedPath]:
    """``ResolvedPath(raw, raw, "relative")`` for each of ``raws``, plain names that
    :func:`resolve_path` would resolve so (the caller checks), made ~2x faster than by the
    frozen dataclass's ``__init__`` (100k of them for a 100k-step state file)."""
    out: list[ResolvedPath] = []
    add = out.append
    new = object.__new__
    for raw in raws:
        r = new(ResolvedPath)
        d = r.__dict__  # frozen: fill the instance dict directly (problem defaults to None)
        d["raw"] = d["name"] = raw
        d["how"] = "relative"
        add(r)
    return out


def _strip_scheme(p: str) -> tuple[str | None, str]:
    if "://" in p:
        scheme, rest = p.split("://", 1)
        return scheme, rest
    return None, p


def _has_twin(name: str, existing_names: set[str]) -> bool:
    """Some file of prefix ``name`` is in the listing (set lookups only: no scan per path)."""
    first_shard = name.replace("?????", "00000")  # sharded V1 state paths are glob patterns
    return any(c in existing_names for c in (
        name, f"{name}.index", f"{name}.meta", first_shard, f"{name}.data-00000-of-00001"))


def resolve_path(loc: Location, raw: str, existing_names: set[str] | None = None) -> ResolvedPath:
    """Resolve one state-file path against the dir, as TF would, but never out of it.

    ``existing_names`` is the set of basenames in the dir listing: an absolute path elsewhere is
    only re-homed by basename when some file of that prefix exists here.
    """
    if not raw:
        return ResolvedPath(raw, None, "refused", "empty path")
    if "\x00" in raw:
        return ResolvedPath(raw, None, "refused", "path holds a NUL byte")
    scheme, body = _strip_scheme(raw)
    dir_scheme, dir_body = _strip_scheme(loc.display())
    is_abs = scheme is not None or body.startswith("/")
    parts = [p for p in body.split("/") if p not in ("", ".")]
    if ".." in parts:
        return ResolvedPath(raw, None, "refused", "path climbs out of the checkpoint dir with '..'")
    if body.endswith("/"):  # TF looks for "DIR/ckpt-4/.index": nothing is there
        return ResolvedPath(raw, None, "refused", "path ends in '/': it names a directory, not a "
                            "checkpoint prefix")
    if not is_abs:
        if len(parts) != 1:
            return ResolvedPath(raw, None, "refused", "path points into a sub-directory; only prefixes "
                                "directly in the checkpoint dir are managed")
        return ResolvedPath(raw, parts[0], "relative")
    name = parts[-1] if parts else ""
    if not name:
        return ResolvedPath(raw, None, "refused", "path names a directory, not a checkpoint prefix")
    same_scheme = (scheme or "file") == (dir_scheme or "file") or (
        {scheme, dir_scheme} <= {"gs", "gcs"})
    here = posixpath.normpath("/" + dir_body.strip("/"))
    there = posixpath.normpath("/" + posixpath.dirname(body).strip("/"))
    if same_scheme and here == there:
        return ResolvedPath(raw, name, "absolute")
    if existing_names is not None and _has_twin(name, existing_names):
        return ResolvedPath(raw, name, "moved",
                            f"absolute path points outside this dir ({posixpath.dirname(raw)}); "
                            f"resolved by basename to {name!r} here")
    return ResolvedPath(raw, None, "refused",
                        f"absolute path points outside the checkpoint dir and no {name!r} exists here")
