"""Discovery: what steps a checkpoint dir holds, and which of them are committed.

One listing call per dir (plus one read of the state file), never one call per step, so a poll
stays cheap on an object store with thousands of steps.

Status of a step:

* ``committed``  the state file names it and all of its files are there;
* ``orphan``     all of its files are there but the state file does not name it (TF dropped it
                 from the proto under ``keep_checkpoint_every_n_hours``, a crash between the index
                 and the state file, or another job's files);
* ``incomplete`` files are missing: still being written, or damaged. A state file that names a
                 step whose files are missing also yields ``incomplete`` (with the problem).

Completeness is judged from names: every ``.data-NNNNN-of-MMMMM`` shard for ``MMMMM`` (the index
header's ``num_shards`` is checked by ``verify``; ``deep=True`` here reads it too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import CheckpointError, StepNotFoundError
from .naming import classify, parse_prefix, v1_shard_name, v2_data_name
from .state import STATE_FILENAME, ResolvedPath, StateFile, read_state, resolve_path
from .storage import FileInfo, Location

_V1_SHARD_PATTERN = re.compile(r"^(.+)-\?{5}-of-\d{5}$")


class StepStatus(str, Enum):
    COMMITTED = "committed"
    ORPHAN = "orphan"
    INCOMPLETE = "incomplete"


@dataclass
class CheckpointStep:
    """One checkpoint prefix in a dir, with everything a plan or a report needs."""

    prefix: str
    base: str
    step: int | None
    format: str  # "v2" | "v1"
    status: StepStatus
    files: list[FileInfo] = field(default_factory=list)  # checkpoint files (index, shards, v1)
    sidecars: list[FileInfo] = field(default_factory=list)  # .meta, .metrics.json, leases, ...
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    num_shards: int | None = None
    timestamp: float | None = None
    timestamp_source: str | None = None  # "state" | "mtime"
    in_state: bool = False
    state_path: str | None = None  # the raw path as the state file spells it
    latest: bool = False  # the state file's model_checkpoint_path

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def has_meta(self) -> bool:
        return any(f.name == f"{self.prefix}.meta" for f in self.sidecars)

    @property
    def quarantined(self) -> bool:
        return any(f.name == f"{self.prefix}.quarantine.json" for f in self.sidecars)

    @property
    def leases(self) -> list[FileInfo]:
        return [f for f in self.sidecars if ".lease-" in f.name]

    @property
    def committed(self) -> bool:
        return self.status is StepStatus.COMMITTED

    @property
    def all_files(self) -> list[FileInfo]:
        return self.files + self.sidecars

    def sort_key(self) -> tuple[str, int, str]:
        return (self.base, -1 if self.step is None else self.step, self.prefix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix, "base": self.base, "step": self.step, "format": self.format,
            "status": self.status.value, "size": self.size, "num_shards": self.num_shards,
            "timestamp": self.timestamp, "timestamp_source": self.timestamp_source,
            "in_state": self.in_state, "latest": self.latest, "has_meta": self.has_meta,
            "quarantined": self.quarantined, "leases": [f.name for f in self.leases],
            "files": [f.name for f in self.files], "sidecars": [f.name for f in self.sidecars],
            "missing": self.missing, "problems": self.problems,
        }


@dataclass
class CheckpointDir:
    """The result of :func:`discover`: the dir, its state file, its steps and its problems."""

    location: Location
    state: StateFile | None
    steps: list[CheckpointStep]
    resolved: list[ResolvedPath] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    state_filename: str = STATE_FILENAME
    listing: dict[str, FileInfo] = field(default_factory=dict)

    def select(self, prefix: str | None = None) -> list[CheckpointStep]:
        """Steps of one base name (``ckpt``, ``model.ckpt``), or all when ``prefix`` is None."""
        if prefix is None:
            return list(self.steps)
        return [s for s in self.steps if s.base == prefix or s.prefix == prefix]

    def committed(self, prefix: str | None = None) -> list[CheckpointStep]:
        return [s for s in self.select(prefix) if s.committed]

    def latest(self, prefix: str | None = None) -> CheckpointStep | None:
        """The newest committed step: the state file's latest where it is committed."""
        committed = self.committed(prefix)
        for s in committed:
            if s.latest:
                return s
        with_step = [s for s in committed if s.step is not None]
        return max(with_step, key=lambda s: s.step) if with_step else (committed[-1] if committed else None)

    def get(self, step: int | str, prefix: str | None = None) -> CheckpointStep:
        """A step by number or by prefix name. Raises :class:`StepNotFoundError`."""
        matches = [s for s in self.select(prefix)
                   if (isinstance(step, int) and s.step == step) or s.prefix == str(step)]
        if not matches:
            raise StepNotFoundError(f"no checkpoint step {step!r}"
                                    + (f" with prefix {prefix!r}" if prefix else ""),
                                    self.location.display())
        if len(matches) > 1:
            bases = sorted({m.base for m in matches})
            raise StepNotFoundError(f"step {step} exists under several prefixes {bases}; pass --prefix",
                                    self.location.display())
        return matches[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.location.display(),
            "state_file": None if self.state is None else {
                "model_checkpoint_path": self.state.model_checkpoint_path,
                "all_model_checkpoint_paths": self.state.all_model_checkpoint_paths,
                "last_preserved_timestamp": self.state.last_preserved_timestamp,
            },
            "steps": [s.to_dict() for s in self.steps],
            "problems": self.problems,
        }


def _group(listing: dict[str, FileInfo], state_names: Iterable[str]) -> dict[str, dict[str, list]]:
    groups: dict[str, dict[str, list]] = {}
    state_names = set(state_names)
    for name, info in listing.items():
        if info.is_dir:
            continue
        role = classify(name)
        if role is None and name in state_names:
            role_prefix, role_kind = name, "v1"
        elif role is None:
            continue
        else:
            role_prefix, role_kind = role.prefix, role.role
        g = groups.setdefault(role_prefix, {})
        g.setdefault(role_kind, []).append((info, role))
    return groups


def discover(target: Location | str | os.PathLike[str], prefix: str | None = None, *,
             state_filename: str = STATE_FILENAME, storage_options: dict[str, Any] | None = None,
             deep: bool = False, listing: dict[str, FileInfo] | None = None) -> CheckpointDir:
    """List the steps of a checkpoint dir with their status, sizes and timestamps.

    ``prefix`` keeps only one base name (e.g. ``ckpt``), so two jobs can share a dir.
    ``deep=True`` also reads each V2 index header to learn ``num_shards`` (one small read per
    step); the default judges completeness from file names alone.
    ``listing`` (name -> FileInfo) replaces the listing call: GC passes one it assembled itself.
    """
    loc = target if isinstance(target, Location) else Location.of(target, storage_options)
    if listing is None:
        listing = loc.listdir()
    problems: list[str] = []
    state: StateFile | None = None
    if state_filename in listing:
        state = read_state(loc, state_filename)  # a malformed file raises StateFileError
    resolved: list[ResolvedPath] = []
    by_name: dict[str, ResolvedPath] = {}
    latest_name: str | None = None
    if state is not None:
        raws = list(dict.fromkeys(state.all_model_checkpoint_paths + (
            [state.model_checkpoint_path] if state.model_checkpoint_path else [])))
        names = set(listing)
        for raw in raws:
            r = resolve_path(loc, raw, names)
            m = _V1_SHARD_PATTERN.match(r.name or "")
            if m:  # a sharded V1 Saver names ``model.ckpt-7-?????-of-00002``: the prefix is before
                r = ResolvedPath(r.raw, m.group(1), r.how, r.problem)
            resolved.append(r)
            if r.problem:
                problems.append(f"{loc.display(state_filename)}: {raw!r}: {r.problem}")
            if r.name is not None:
                by_name.setdefault(r.name, r)
                if raw == state.model_checkpoint_path:
                    latest_name = r.name
    state_times = state.timestamps_by_path() if state is not None else {}
    groups = _group(listing, by_name)
    for name in by_name:  # named by the state file but with no file at all: gone or never written
        groups.setdefault(name, {})

    steps: list[CheckpointStep] = []
    for pfx, roles in groups.items():
        pn = parse_prefix(pfx)
        if pn.step_overflow:
            problems.append(f"{loc.display(pfx)}: step suffix does not fit in int64; listed with no step")
        files: list[FileInfo] = []
        sidecars: list[FileInfo] = []
        missing: list[str] = []
        step_problems: list[str] = []
        num_shards: int | None = None
        fmt = "v2"
        if "index" in roles or "data" in roles:
            files += [i for i, _ in roles.get("index", [])]
            if "index" not in roles:
                missing.append(f"{pfx}.index")
            data = roles.get("data", [])
            counts = {r.num_shards for _, r in data}
            if deep and "index" in roles:
                try:
                    from .bundle import read_bundle_header  # noqa: PLC0415 (optional, heavier path)

                    num_shards = int(read_bundle_header(loc, pfx).num_shards)
                except CheckpointError as exc:
                    step_problems.append(str(exc))
            have = {i.name for i, _ in data}
            if num_shards is None and len(counts) == 1:
                num_shards = counts.pop()
            elif num_shards is None and len(counts) > 1:
                # A stray shard (left by another save, or copied in by hand) must not make a sound
                # step look incomplete: prefer a shard count whose shards are all present.
                whole = [n for n in counts if 0 < n <= 100_000 and all(
                    v2_data_name(pfx, k, n) in have for k in range(n))]
                num_shards = max(whole) if whole else max(counts)
                step_problems.append(f"data shards disagree on the shard count: {sorted(counts)}; "
                                     f"judged by {num_shards}")
            files += [i for i, _ in sorted(data, key=lambda x: x[1].shard or 0)]
            if num_shards is None:
                missing.append(f"{pfx}.data-?????-of-?????")
            else:
                if num_shards < 1:
                    step_problems.append(f"shard count {num_shards} is not a valid TensorBundle shard count")
                for k in range(min(num_shards, 100_000)):
                    n = v2_data_name(pfx, k, num_shards)
                    if n not in have:
                        missing.append(n)
                stray = sorted(have - {v2_data_name(pfx, k, num_shards)
                                       for k in range(min(num_shards, 100_000))})
                if stray:
                    step_problems.append(f"data shards that the shard count does not cover: {stray}")
        elif "v1" in roles or "v1_shard" in roles:
            fmt = "v1"
            files += [i for i, _ in roles.get("v1", [])]
            shards = roles.get("v1_shard", [])
            if shards:
                counts = {r.num_shards for _, r in shards}
                num_shards = max(counts)
                have = {i.name for i, _ in shards}
                files += [i for i, _ in sorted(shards, key=lambda x: x[1].shard or 0)]
                missing += [v1_shard_name(pfx, k, num_shards) for k in range(min(num_shards, 100_000))
                            if v1_shard_name(pfx, k, num_shards) not in have]
            else:
                num_shards = 1
        else:
            # only sidecars (or nothing): a step whose checkpoint files are gone
            fmt = "v2"
            missing.append(f"{pfx}.index")
        for kind in ("meta", "metrics", "quarantine", "lease"):
            sidecars += [i for i, _ in roles.get(kind, [])]
        if not files and pfx not in by_name:
            # sidecars alone (e.g. a .meta whose step was deleted): not a step; keep them visible
            # only as problems when they are leases/quarantine leftovers, ignore plain .meta.
            continue
        r = by_name.get(pfx)
        in_state = r is not None
        if missing:
            status = StepStatus.INCOMPLETE
            if in_state:
                step_problems.append("the state file names this step but files are missing: "
                                     + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        else:
            status = StepStatus.COMMITTED if in_state else StepStatus.ORPHAN
        ts, source = None, None
        if in_state and state is not None:
            ts = state_times.get(r.raw)
            source = "state" if ts is not None else None
        if ts is None:
            mtimes = [f.mtime for f in files if f.mtime is not None]
            if mtimes:
                ts, source = max(mtimes), "mtime"
        steps.append(CheckpointStep(
            prefix=pfx, base=pn.base, step=pn.step, format=fmt, status=status, files=files,
            sidecars=sidecars, missing=missing, problems=step_problems, num_shards=num_shards,
            timestamp=ts, timestamp_source=source, in_state=in_state,
            state_path=r.raw if r else None, latest=(pfx == latest_name),
        ))
    steps.sort(key=CheckpointStep.sort_key)
    cdir = CheckpointDir(location=loc, state=state, steps=steps, resolved=resolved,
                         problems=problems, state_filename=state_filename, listing=listing)
    if prefix is not None:
        cdir.steps = cdir.select(prefix)
    return cdir


def orphan_sidecars(cdir: CheckpointDir) -> list[FileInfo]:
    """Sidecar files (``.meta``, metrics, leases) whose step has no checkpoint files left."""
    known = {s.prefix for s in cdir.steps}
    out = []
    for name, info in cdir.listing.items():
        role = classify(name)
        if role and role.role in ("meta", "metrics", "lease", "quarantine") and role.prefix not in known:
            out.append(info)
    return out
