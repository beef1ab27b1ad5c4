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

import fcntl
import os
import posixpath
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import text_format

from airflow_tf_ckpt.core.errors import StateFileError
from airflow_tf_ckpt.core.formats.protos import CheckpointState
from airflow_tf_ckpt.core.storage.location import swap_in, write_atomic

if TYPE_CHECKING:
    from airflow_tf_ckpt.core.storage.location import Location

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
        latest = (
            self.model_checkpoint_path
            if self.model_checkpoint_path in keep_raw
            else (paths[-1] if paths else "")
        )
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
        raise StateFileError(
            "model_checkpoint_path is missing or empty: TensorFlow's "
            "get_checkpoint_state rejects this state file (ValueError: Invalid "
            "checkpoint state)",
            path,
        )
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
    from airflow_tf_ckpt.core.errors import StorageError

    try:
        data = loc.read_bytes(filename, cap=MAX_STATE_BYTES, what="a checkpoint state file")
    except StorageError:
        if not loc.exists(filename):
            return None
        raise
    return parse_state(data, loc.display(filename))


def write_state(loc: Location, state: StateFile, filename: str = STATE_FILENAME) -> None:
    """Atomically replace the state file (temp + rename locally, one put on object stores).

    Only for a state file written from scratch: a change to the one a trainer writes goes
    through :func:`update_state`, which loses no save that commits meanwhile.
    """
    loc.write_atomic(filename, format_state(state).encode("utf-8"))


#: ``change`` callbacks of :func:`update_state` get the state file as it is now (``None``: there
#: is none) and return the one to write (``None``: remove it; equal to the argument: no write).
StateChange = Callable[["StateFile | None"], "StateFile | None"]


@dataclass
class StateUpdate:
    """What :func:`update_state` did: the state file it changed and what it made of it."""

    before: StateFile | None
    after: StateFile | None
    written: bool = False  # replaced or removed
    attempts: int = 1


_STATE_LOCK = threading.Lock()
_HELD = threading.local()  # this thread holds the lock already (a hook that updates again)


@contextmanager
def _writers_serialized(loc: Location) -> Iterator[None]:
    """Our own state-file writers (GC, quarantine, release) one at a time: an ``flock`` of the
    dir locally (every process of this host), this process's threads elsewhere."""
    if getattr(_HELD, "on", False):
        yield
        return
    with _STATE_LOCK:
        _HELD.on = True
        try:
            if not loc.local or not os.path.isdir(loc.path):
                yield
                return
            fd = os.open(loc.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock
        finally:
            _HELD.on = False


def _read_raw(loc: Location, filename: str) -> tuple[bytes | None, int]:
    """The state file's bytes (``None``: absent) and, on ``gs://``, the generation they are of."""
    from airflow_tf_ckpt.core.errors import StorageError
    from airflow_tf_ckpt.core.storage.gcs import is_gcs, read_with_generation

    if is_gcs(loc.fs):
        return read_with_generation(loc.fs, loc.join(filename), MAX_STATE_BYTES, "a checkpoint state file")
    try:
        return loc.read_capped(filename, MAX_STATE_BYTES, "a checkpoint state file"), 0
    except FileNotFoundError:
        return None, 0
    except (PermissionError, IsADirectoryError) as exc:
        raise StorageError(f"cannot read the state file: {exc}", loc.display(filename)) from exc


def _write_if_unchanged(
    loc: Location, filename: str, seen: tuple[bytes | None, int], after: StateFile | None, gcs: bool
) -> bool:
    """Write ``after`` (``None``: remove the file) only while the state file still holds ``seen``
    (its bytes and, on ``gs://``, generation); False when it changed."""
    from airflow_tf_ckpt.core.storage.gcs import delete_if_generation, upload_if_generation

    path = loc.join(filename)

    def unchanged() -> bool:
        return _read_raw(loc, filename) == seen

    if gcs:  # the re-read narrows the window; the generation precondition closes it
        if not unchanged():
            return False
        if after is None:
            return seen[0] is None or delete_if_generation(loc.fs, path, seen[1])
        return (
            upload_if_generation(loc.fs, path, format_state(after).encode("utf-8"), seen[1], "text/plain")
            is not None
        )
    if after is None:
        if not unchanged():
            return False
        try:
            loc.fs.rm_file(path)
        except FileNotFoundError:
            pass
        return True
    data = format_state(after).encode("utf-8")
    if seen[0] is not None and loc.local:
        out = swap_in(path, data)
        if out is not None:
            return out == seen[0] or _put_back(loc.fs, path, out, data)
    return write_atomic(loc.fs, path, data, check=unchanged)


def _put_back(fs: Any, path: str, theirs: bytes, ours: bytes, attempts: int = 20) -> bool:
    """Another writer replaced the state file between our read and our exchange: put its file
    back (ours came out, or a still newer one that is put back in turn) and return False, so
    :func:`update_state` re-applies the change to it. Nothing anyone wrote is lost."""
    for _ in range(attempts):
        out = swap_in(path, theirs)
        if out is None:  # the exchange stopped working: put theirs back the plain way
            write_atomic(fs, path, theirs)
            return False
        if out == ours:
            return False
        theirs = out
    return False


def update_state(
    loc: Location,
    change: StateChange,
    filename: str = STATE_FILENAME,
    *,
    hook: Callable[..., Any] | None = None,
    attempts: int = 50,
) -> StateUpdate:
    """Read-modify-write of the state file that loses no update written meanwhile (a trainer's
    save, another GC run, a quarantine): TF writes the file without any lock, so the change is
    applied to what the file holds at the moment of the write.

    ``change`` (see :data:`StateChange`) may run several times: on ``gs://`` the write carries
    ``ifGenerationMatch`` of what was read (GCS's compare-and-swap) and, when someone else wrote
    first, the file is read again and ``change`` re-applied. Locally the new file is written to a
    temp file, then the state file is read again just before the rename; when it changed, the
    temp file is dropped and ``change`` re-applied to the new content. Other stores are re-read
    just before the write. Our own writers are serialized (see :func:`_writers_serialized`).
    ``hook("write_state", filename)`` runs after each read, before the write (crash tests).
    """
    from airflow_tf_ckpt.core.storage.gcs import is_gcs

    where = loc.display(filename)
    gcs = is_gcs(loc.fs)
    with _writers_serialized(loc):
        for attempt in range(1, attempts + 1):
            data, generation = _read_raw(loc, filename)
            before = parse_state(data, where) if data is not None else None
            after = change(before)
            if after == before:
                return StateUpdate(before, after, False, attempt)
            if hook:
                hook("write_state", filename)

            ok = _write_if_unchanged(loc, filename, (data, generation), after, gcs)
            if ok:
                return StateUpdate(before, after, True, attempt)
            time.sleep(random.uniform(0, 0.005 * attempt))
    raise StateFileError(f"kept changing under {attempts} attempts to update it; not written", where)


class ResolvedPath(NamedTuple):
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
    """``ResolvedPath(raw, raw, "relative")`` for each of ``raws``: plain names, which
    :func:`resolve_path` would resolve so (the caller checks), without its URL and path handling."""
    return [ResolvedPath(raw, raw, "relative") for raw in raws]


def _strip_scheme(p: str) -> tuple[str | None, str]:
    if "://" in p:
        scheme, rest = p.split("://", 1)
        return scheme, rest
    return None, p


def _has_twin(name: str, existing_names: set[str]) -> bool:
    """Some file of prefix ``name`` is in the listing (set lookups only: no scan per path)."""
    first_shard = name.replace("?????", "00000")  # sharded V1 state paths are glob patterns
    return any(
        c in existing_names
        for c in (name, f"{name}.index", f"{name}.meta", first_shard, f"{name}.data-00000-of-00001")
    )


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
        return ResolvedPath(
            raw, None, "refused", "path ends in '/': it names a directory, not a checkpoint prefix"
        )
    if not is_abs:
        if len(parts) != 1:
            return ResolvedPath(
                raw,
                None,
                "refused",
                "path points into a sub-directory; only prefixes directly in the checkpoint dir are managed",
            )
        return ResolvedPath(raw, parts[0], "relative")
    name = parts[-1] if parts else ""
    if not name:
        return ResolvedPath(raw, None, "refused", "path names a directory, not a checkpoint prefix")
    same_scheme = (scheme or "file") == (dir_scheme or "file") or ({scheme, dir_scheme} <= {"gs", "gcs"})
    here = posixpath.normpath("/" + dir_body.strip("/"))
    there = posixpath.normpath("/" + posixpath.dirname(body).strip("/"))
    if same_scheme and here == there:
        return ResolvedPath(raw, name, "absolute")
    if existing_names is not None and _has_twin(name, existing_names):
        return ResolvedPath(
            raw,
            name,
            "moved",
            f"absolute path points outside this dir ({posixpath.dirname(raw)}); "
            f"resolved by basename to {name!r} here",
        )
    return ResolvedPath(
        raw, None, "refused", f"absolute path points outside the checkpoint dir and no {name!r} exists here"
    )
