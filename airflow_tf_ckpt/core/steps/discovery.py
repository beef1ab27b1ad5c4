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

import gc
import os
import re
from bisect import insort
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from enum import Enum
from itertools import chain
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError, StepNotFoundError
from airflow_tf_ckpt.core.formats.naming import (
    LEASE_INFIX,
    FileRole,
    classify,
    parse_prefix,
    v1_shard_name,
    v2_data_name,
)
from airflow_tf_ckpt.core.formats.state import (
    STATE_FILENAME,
    ResolvedPath,
    StateFile,
    read_state,
    relative_paths,
    resolve_path,
)
from airflow_tf_ckpt.core.steps.order import listing_order
from airflow_tf_ckpt.core.storage.location import FileInfo, Location, lazy_infos, lazy_special_info

_V1_SHARD_PATTERN = re.compile(r"^(.+)-\?{5}-of-\d{5}$")


@contextmanager
def gc_paused() -> Iterator[None]:
    """CPython's cyclic GC held off meanwhile (and turned back on only if it was on).

    Discovery and planning of a big dir allocate ~1M objects, none of them in a cycle, and the
    generational GC traverses the growing heap again and again as they pile up: ~40% of the
    time of a 100k-step plan. Nothing cyclic is left behind uncollected for long: the next
    collection after this block finds it.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


class StepStatus(str, Enum):
    COMMITTED = "committed"
    ORPHAN = "orphan"
    INCOMPLETE = "incomplete"


#: what :attr:`CheckpointStep.shown_status` can be, in the order summaries list them
SHOWN_STATUSES = (*(s.value for s in StepStatus), "quarantined")


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
    def shown_status(self) -> str:
        """What a person is shown (``tf-ckpt ls``, the Checkpoints page): one of
        :data:`SHOWN_STATUSES`; a quarantine marker wins over the files' status."""
        return "quarantined" if self.quarantined else self.status.value

    @property
    def all_files(self) -> list[FileInfo]:
        return self.files + self.sidecars

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "base": self.base,
            "step": self.step,
            "format": self.format,
            "status": self.status.value,
            "size": self.size,
            "num_shards": self.num_shards,
            "timestamp": self.timestamp,
            "timestamp_source": self.timestamp_source,
            "in_state": self.in_state,
            "latest": self.latest,
            "has_meta": self.has_meta,
            "quarantined": self.quarantined,
            "leases": [f.name for f in self.leases],
            "files": [f.name for f in self.files],
            "sidecars": [f.name for f in self.sidecars],
            "missing": self.missing,
            "problems": self.problems,
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
    # True when discovery listed a local dir itself and found regular files only (no dir, no
    # symlink): planning then skips checking each file's type
    regular_files_only: bool = False

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
        return (
            max(with_step, key=lambda s: s.step or 0) if with_step else (committed[-1] if committed else None)
        )

    def latest_problem(self, prefix: str | None = None) -> str | None:
        """Why TF cannot restore the state file's latest step, or ``None``.

        :meth:`latest` falls back to the newest committed step; TF does not: with the latest's
        ``.index`` gone ``tf.train.latest_checkpoint`` returns None (a trainer restarts from
        scratch), and with a data shard gone its restore fails.
        """
        for s in self.select(prefix):
            if s.latest and not s.committed:
                indexed = any(f.name in (s.prefix + ".index", s.prefix) for f in s.files)
                what = (
                    "a restore of it fails"
                    if indexed
                    else "tf.train.latest_checkpoint returns None, so a trainer restarts from scratch"
                )
                missing = ", ".join(s.missing[:3]) or "all of them"
                return (
                    f"the state file's model_checkpoint_path {s.state_path!r} names a step whose "
                    f"files are missing ({missing}): {what}"
                )
        return None

    def get(self, step: int | str, prefix: str | None = None) -> CheckpointStep:
        """A step by number or by prefix name. Raises :class:`StepNotFoundError`."""
        matches = [
            s
            for s in self.select(prefix)
            if (isinstance(step, int) and s.step == step) or s.prefix == str(step)
        ]
        if not matches:
            raise StepNotFoundError(
                f"no checkpoint step {step!r}" + (f" with prefix {prefix!r}" if prefix else ""),
                self.location.display(),
            )
        if len(matches) > 1:
            bases = sorted({m.base for m in matches})
            raise StepNotFoundError(
                f"step {step} exists under several prefixes {bases}; pass --prefix", self.location.display()
            )
        return matches[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dir": self.location.display(),
            "state_file": None
            if self.state is None
            else {
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


def _resolve_state(
    loc: Location,
    state: StateFile | None,
    listing: dict[str, FileInfo],
    state_filename: str,
    problems: list[str],
    fast: bool = True,
) -> tuple[list[ResolvedPath], dict[str, ResolvedPath], str | None]:
    """The state file's paths resolved in the dir: all of them, by prefix name, and the latest's."""
    resolved: list[ResolvedPath] = []
    by_name: dict[str, ResolvedPath] = {}
    latest_name: str | None = None
    if state is None:
        return resolved, by_name, latest_name
    latest_raw = state.model_checkpoint_path
    raws = list(dict.fromkeys(state.all_model_checkpoint_paths + ([latest_raw] if latest_raw else [])))
    if fast and raws and all(map(_plain_name, raws)):
        # every path a plain name, as CheckpointManager writes them: what resolve_path says of
        # each, without its URL and path handling
        resolved = relative_paths(raws)
        return resolved, dict(zip(raws, resolved, strict=True)), latest_raw or None
    names: set[str] | None = None
    for raw in raws:
        if fast and _plain_name(raw):
            # a plain name: what resolve_path says of it (100k paths: ~0.1 s instead of ~0.7 s)
            r = ResolvedPath(raw, raw, "relative")
        else:
            if names is None:
                names = set(listing)
            r = resolve_path(loc, raw, names)
            m = _V1_SHARD_PATTERN.match(r.name or "")
            if m:  # a sharded V1 Saver names ``model.ckpt-7-?????-of-00002``: the prefix is before
                r = ResolvedPath(r.raw, m.group(1), r.how, r.problem)
            if r.problem:
                problems.append(f"{loc.display(state_filename)}: {raw!r}: {r.problem}")
        resolved.append(r)
        if r.name is not None:
            by_name.setdefault(r.name, r)
            if raw == latest_raw:
                latest_name = r.name
    return resolved, by_name, latest_name


def _plain_name(raw: str) -> bool:
    """Whether a state-file path is a plain name (as CheckpointManager writes): not "", "." or
    "..", and no "/", NUL or sharded-V1 pattern."""
    return (
        bool(raw) and raw not in (".", "..") and "/" not in raw and "\x00" not in raw and "?????" not in raw
    )


_INDEX, _DATA1 = ".index", ".data-00000-of-00001"


@dataclass
class _Split:
    """A listing split for the fast path. ``prefixes`` have exactly an ``.index`` and a
    ``.data-00000-of-00001`` ("pairs"), oldest first (see :func:`_order`), with their parsed
    ``bases`` and ``steps`` and, in ``infos``, their two files (index, data, index, data, ...).
    ``index``/``data1`` are the files of prefixes with only one of the two; ``rest`` is every
    other entry, judged by :func:`_group`; ``overflow`` the pairs whose step overflows int64."""

    prefixes: list[str]
    bases: list[str]
    steps: list[int | None]
    infos: list[FileInfo]
    index: dict[str, FileInfo]
    data1: dict[str, FileInfo]
    rest: dict[str, FileInfo]
    overflow: set[str]


def _split_names(names: Iterable[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """``{prefix: name}`` of the ``.index`` files and of the ``.data-00000-of-00001`` files (as
    classify() and V2_DATA_RE see them: a non-empty prefix without a newline), other names."""
    index: dict[str, str] = {}
    data1: dict[str, str] = {}
    rest: list[str] = []
    for name in names:
        if name.endswith(_INDEX):
            index[name[:-6]] = name
        elif name.endswith(_DATA1) and len(name) > 20 and "\n" not in name:
            data1[name[:-20]] = name
        else:
            rest.append(name)
    if any(LEASE_INFIX in p for p in index) or any(LEASE_INFIX in p for p in data1):
        # a lease name is a lease whatever it ends with (see naming.classify): classify() judges it
        for table in (index, data1):
            for p in [p for p in table if LEASE_INFIX in p]:
                rest.append(table.pop(p))
    return index, data1, rest


def _plain_step(prefix: str) -> tuple[str, int] | None:
    """``(base, step)`` of ``BASE-N`` with 1-18 ASCII digits (so no int64 overflow) and no
    newline: what :func:`parse_prefix` says of it, in the form most names take; else ``None``."""
    base, _, digits = prefix.rpartition("-")
    if base and 0 < len(digits) <= 18 and digits.isascii() and digits.isdigit() and "\n" not in base:
        return base, int(digits)
    return None


def _order(prefixes: list[str]) -> tuple[list[str], list[str], list[int | None], set[str]]:
    """``prefixes`` in :func:`~airflow_tf_ckpt.core.steps.order.listing_order` with their bases and steps, and the
    ones whose step overflows int64. Objects made in this order are visited in it by planning,
    which on a VM runs ~3x faster over memory laid out in order than over a listing's hash order.
    """
    n = len(prefixes)
    found = [_plain_step(p) for p in prefixes]
    if n and None not in found and len(bases := {f[0] for f in found if f}) == 1:
        # the common case, one base: order by the step number when they differ
        steps = [f[1] for f in found if f]
        if len(set(steps)) == n:
            order = sorted(range(n), key=steps.__getitem__)
            return (
                list(map(prefixes.__getitem__, order)),
                [bases.pop()] * n,
                list(map(steps.__getitem__, order)),
                set(),
            )
    parsed: list[tuple[str, str, int | None]] = []
    overflow: set[str] = set()
    for pfx in prefixes:
        pn = parse_prefix(pfx)
        if pn.step_overflow:
            overflow.add(pfx)
        parsed.append((pfx, pn.base, pn.step))
    parsed.sort(key=lambda t: (t[1], -1 if t[2] is None else t[2], t[0]))
    return [t[0] for t in parsed], [t[1] for t in parsed], [t[2] for t in parsed], overflow


def _pair(
    index: dict[str, str],
    data1: dict[str, str],
) -> tuple[list[str], list[str], list[int | None], set[str], list[str], list[str], list[str]]:
    """The pairs (see :class:`_Split`) in order, their file names (index, data, ...), and the
    lone ``.index`` and ``.data-00000-of-00001`` names."""
    both = list(filter(data1.__contains__, index))
    prefixes, bases, steps, overflow = _order(both)
    names = list(
        chain.from_iterable(
            zip(map(index.__getitem__, prefixes), map(data1.__getitem__, prefixes), strict=True)
        )
    )
    lone_i: list[str] = []
    lone_d: list[str] = []
    if len(both) != len(index) or len(both) != len(data1):
        lone_i = [n for p, n in index.items() if p not in data1]
        lone_d = [n for p, n in data1.items() if p not in index]
    return prefixes, bases, steps, overflow, names, lone_i, lone_d


def _split_listing(listing: dict[str, FileInfo]) -> _Split:
    """:class:`_Split` of a ready listing (any store)."""
    index, data1, rest = _split_names([n for n, i in listing.items() if not i.is_dir])
    prefixes, bases, steps, overflow, names, lone_i, lone_d = _pair(index, data1)
    get = listing.__getitem__
    return _Split(
        prefixes,
        bases,
        steps,
        list(map(get, names)),
        {n[:-6]: get(n) for n in lone_i},
        {n[:-20]: get(n) for n in lone_d},
        {n: get(n) for n in rest},
        overflow,
    )


def _scan_listing(loc: Location) -> tuple[dict[str, FileInfo], _Split, bool]:
    """A local dir's listing and its :class:`_Split` from one scan, with the FileInfos (lazy
    sizes: see ``storage.FileInfo``) made in step order (see :func:`_order`); and whether all
    entries are regular files."""
    files, special = loc.scan_local()
    index, data1, rest_n = _split_names(files)
    prefixes, bases, steps, overflow, names, lone_i, lone_d = _pair(index, data1)
    infos = lazy_infos(loc.path, names)
    listing = dict(zip(names, infos, strict=True))
    lone = lazy_infos(loc.path, lone_i + lone_d)
    listing.update(zip(lone_i + lone_d, lone, strict=True))
    rest = dict(zip(rest_n, lazy_infos(loc.path, rest_n), strict=True))
    dirs: dict[str, FileInfo] = {}
    for name, (is_dir, is_link) in special.items():
        # a symlink (or a fifo...) is judged by its name like a file, the general way; dirs not at all
        (dirs if is_dir else rest)[name] = lazy_special_info(loc.path, name, is_dir, is_link)
    listing.update(rest)
    listing.update(dirs)
    return (
        listing,
        _Split(
            prefixes,
            bases,
            steps,
            infos,
            {n[:-6]: i for n, i in zip(lone_i, lone[: len(lone_i)], strict=True)},
            {n[:-20]: i for n, i in zip(lone_d, lone[len(lone_i) :], strict=True)},
            rest,
            overflow,
        ),
        not special,
    )


def _steps(
    loc: Location,
    listing: dict[str, FileInfo],
    split: _Split | None,
    by_name: dict[str, ResolvedPath],
    latest_name: str | None,
    state: StateFile | None,
    state_times: dict[str, float],
    deep: bool,
    problems: list[str],
    fast: bool = True,
) -> list[CheckpointStep]:
    """Every step of the listing, in :func:`~airflow_tf_ckpt.core.steps.order.listing_order`.

    The common layout, a prefix with ``.index`` and ``.data-00000-of-00001`` and no other file
    (a "pair" of ``split``), is judged by :func:`_pair_steps`: a 100k-step dir in ~0.2 s instead
    of ~3 s. Every other prefix goes through :func:`_group` (a regex per file) and
    :func:`_general_step`, which judge any layout; tests check that both give the same steps.
    """
    if split is None:
        split = (
            _split_listing(listing) if fast and not deep else _Split([], [], [], [], {}, {}, listing, set())
        )
    groups = _general_groups(split, listing, by_name)
    steps, named = _pair_steps(split, groups, by_name, latest_name, state_times)
    if named + sum(1 for g in groups if g in by_name) < len(by_name):
        paired = set(split.prefixes)
        for name in by_name:  # named by the state file but with no file at all: gone or never written
            if name not in groups and name not in paired:
                groups[name] = {}
    overflow = (
        [p for p in split.prefixes if p in split.overflow and p not in groups] if split.overflow else []
    )
    others = [
        s
        for pfx, roles in groups.items()
        if (s := _general_step(loc, pfx, roles, by_name, latest_name, state, state_times, deep, overflow))
    ]
    problems += _overflow_problems(loc, listing, by_name, overflow)
    return _merged(steps, others)


def _general_groups(
    split: _Split, listing: dict[str, FileInfo], by_name: dict[str, ResolvedPath]
) -> dict[str, dict[str, list]]:
    """The prefixes the general way judges, with their files by role: every prefix of
    ``split.rest``, the lone ``.index`` / ``.data-00000-of-00001`` files, and the pairs with
    another file of their prefix (or named bare by the state file)."""
    index, data1 = split.index, split.data1
    groups = _group(split.rest, by_name) if split.rest else {}
    if groups:
        for p, iinfo, dinfo in zip(split.prefixes, split.infos[0::2], split.infos[1::2], strict=True):
            if p in groups:
                index[p], data1[p] = iinfo, dinfo
    for p, iinfo in index.items():
        groups.setdefault(p, {})["index"] = [(iinfo, FileRole(p, "index"))]
    for p, dinfo in data1.items():
        data = groups.setdefault(p, {}).setdefault("data", [])
        data.append((dinfo, FileRole(p, "data", 0, 1)))
        if any(r.shard == 0 for _, r in data[:-1]):  # shards are sorted by number: keep ties in
            at = {n: i for i, n in enumerate(listing)}  # listing order, as _group gives them
            data.sort(key=lambda x: at[x[0].name])
    return groups


def _pair_steps(
    split: _Split,
    groups: dict[str, dict[str, list]],
    by_name: dict[str, ResolvedPath],
    latest_name: str | None,
    state_times: dict[str, float],
) -> tuple[list[CheckpointStep], int]:
    """The steps of the pairs that no other file joins (in order already), and how many of them
    the state file names. Each is complete by construction: committed when named, else orphan."""
    steps: list[CheckpointStep] = []
    named = 0
    files = zip(split.infos[0::2], split.infos[1::2], strict=True)
    for pfx, base, step, (iinfo, dinfo) in zip(split.prefixes, split.bases, split.steps, files, strict=True):
        if pfx in groups:
            continue
        r = by_name.get(pfx)
        named += r is not None
        ts, source = _timestamp([iinfo, dinfo], None if r is None else state_times.get(r.raw))
        steps.append(
            CheckpointStep(  # by position (see the field check below): ~2x faster for 100k steps
                pfx,
                base,
                step,
                "v2",
                StepStatus.ORPHAN if r is None else StepStatus.COMMITTED,
                [iinfo, dinfo],
                [],
                [],
                [],
                1,
                ts,
                source,
                r is not None,
                None if r is None else r.raw,
                pfx == latest_name,
            )
        )
    return steps, named


def _overflow_problems(
    loc: Location, listing: dict[str, FileInfo], by_name: dict[str, ResolvedPath], overflow: list[str]
) -> list[str]:
    """One problem per prefix whose step overflows int64, in the order a pass over the listing
    meets them."""
    if len(overflow) > 1:
        full = _group(listing, by_name)
        full.update((n, {}) for n in by_name if n not in full)
        at = {p: i for i, p in enumerate(full)}
        overflow.sort(key=at.__getitem__)
    return [f"{loc.display(p)}: step suffix does not fit in int64; listed with no step" for p in overflow]


def _merged(ordered: list[CheckpointStep], others: list[CheckpointStep]) -> list[CheckpointStep]:
    """``ordered`` (in listing order already) with ``others`` put in their places."""
    if len(others) > 1000:
        return sorted(ordered + others, key=listing_order)
    for s in others:
        insort(ordered, s, key=listing_order)
    return ordered


# CheckpointStep's fields in order: the fast path above passes them by position
assert [f.name for f in fields(CheckpointStep)] == [
    "prefix",
    "base",
    "step",
    "format",
    "status",
    "files",
    "sidecars",
    "missing",
    "problems",
    "num_shards",
    "timestamp",
    "timestamp_source",
    "in_state",
    "state_path",
    "latest",
]


@dataclass
class _Files:
    """What one prefix's checkpoint files say: the format, the files in shard order, the shard
    count, the missing names and the problems."""

    format: str = "v2"
    files: list[FileInfo] = field(default_factory=list)
    num_shards: int | None = None
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _general_step(
    loc: Location,
    pfx: str,
    roles: dict[str, list],
    by_name: dict[str, ResolvedPath],
    latest_name: str | None,
    state: StateFile | None,
    state_times: dict[str, float],
    deep: bool,
    overflow: list[str],
) -> CheckpointStep | None:
    """One prefix's step from its files grouped by role (see :func:`_group`), whatever the layout:
    V1 or V2, sidecars, missing or stray shards. ``None`` for sidecars alone (not a step). A
    prefix whose step suffix overflows int64 is added to ``overflow``."""
    pn = parse_prefix(pfx)
    if pn.step_overflow:
        overflow.append(pfx)
    if "index" in roles or "data" in roles:
        found = _v2_files(loc, pfx, roles, deep)
    elif "v1" in roles or "v1_shard" in roles:
        found = _v1_files(pfx, roles)
    else:  # only sidecars (or nothing): a step whose checkpoint files are gone
        found = _Files(missing=[f"{pfx}.index"])
    r = by_name.get(pfx)
    if not found.files and r is None:
        return None  # sidecars alone (e.g. a .meta whose step was deleted): not a step
    sidecars = [i for kind in ("meta", "metrics", "quarantine", "lease") for i, _ in roles.get(kind, [])]
    status = _status(found, r is not None)
    ts, source = _timestamp(found.files, None if r is None or state is None else state_times.get(r.raw))
    return CheckpointStep(
        prefix=pfx,
        base=pn.base,
        step=pn.step,
        format=found.format,
        status=status,
        files=found.files,
        sidecars=sidecars,
        missing=found.missing,
        problems=found.problems,
        num_shards=found.num_shards,
        timestamp=ts,
        timestamp_source=source,
        in_state=r is not None,
        state_path=r.raw if r else None,
        latest=(pfx == latest_name),
    )


def _status(found: _Files, in_state: bool) -> StepStatus:
    """Incomplete when files are missing (a problem too when the state file names the step),
    else committed when the state file names it, else an orphan."""
    if not found.missing:
        return StepStatus.COMMITTED if in_state else StepStatus.ORPHAN
    if in_state:
        more = " ..." if len(found.missing) > 5 else ""
        found.problems.append(
            "the state file names this step but files are missing: " + ", ".join(found.missing[:5]) + more
        )
    return StepStatus.INCOMPLETE


def _timestamp(files: list[FileInfo], state_ts: float | None) -> tuple[float | None, str | None]:
    """The state file's timestamp of the step, else its newest file mtime, with its source."""
    if state_ts is not None:
        return state_ts, "state"
    mtimes = [f.mtime for f in files if f.mtime is not None]
    return (max(mtimes), "mtime") if mtimes else (None, None)


def _v2_files(loc: Location, pfx: str, roles: dict[str, list], deep: bool) -> _Files:
    """A V2 prefix's ``.index`` and data shards, judged by the shard count (the index header's
    with ``deep``, else the shards' names)."""
    found = _Files(files=[i for i, _ in roles.get("index", [])])
    if "index" not in roles:
        found.missing.append(f"{pfx}.index")
    data = roles.get("data", [])
    if deep and "index" in roles:
        try:
            from airflow_tf_ckpt.core.formats.bundle import read_bundle_header  # noqa: PLC0415 (optional, heavier path)

            found.num_shards = int(read_bundle_header(loc, pfx).num_shards)
        except CheckpointError as exc:
            found.problems.append(str(exc))
    have = {i.name for i, _ in data}
    if found.num_shards is None:
        found.num_shards = _shard_count(pfx, {r.num_shards for _, r in data}, have, found.problems)
    found.files += [i for i, _ in sorted(data, key=lambda x: x[1].shard or 0)]
    n = found.num_shards
    if n is None:
        found.missing.append(f"{pfx}.data-?????-of-?????")
        return found
    if n < 1:
        found.problems.append(f"shard count {n} is not a valid TensorBundle shard count")
    expected = [v2_data_name(pfx, k, n) for k in range(min(n, 100_000))]
    found.missing += [name for name in expected if name not in have]
    if stray := sorted(have - set(expected)):
        found.problems.append(f"data shards that the shard count does not cover: {stray}")
    return found


def _shard_count(pfx: str, counts: set[int], have: set[str], problems: list[str]) -> int | None:
    """The shard count the data shards' names say; where they disagree (a stray shard left by
    another save, or copied in by hand), one whose shards are all present, so a sound step does
    not look incomplete."""
    if len(counts) <= 1:
        return next(iter(counts), None)
    whole = [n for n in counts if 0 < n <= 100_000 and all(v2_data_name(pfx, k, n) in have for k in range(n))]
    num_shards = max(whole) if whole else max(counts)
    problems.append(f"data shards disagree on the shard count: {sorted(counts)}; judged by {num_shards}")
    return num_shards


def _v1_files(pfx: str, roles: dict[str, list]) -> _Files:
    """A V1 prefix's ``.ckpt`` file, or its ``-NNNNN-of-MMMMM`` shards and the missing ones."""
    found = _Files(format="v1", files=[i for i, _ in roles.get("v1", [])], num_shards=1)
    shards = roles.get("v1_shard", [])
    if shards:
        n = max(r.num_shards for _, r in shards)
        have = {i.name for i, _ in shards}
        found.num_shards = n
        found.files += [i for i, _ in sorted(shards, key=lambda x: x[1].shard or 0)]
        found.missing += [
            v1_shard_name(pfx, k, n) for k in range(min(n, 100_000)) if v1_shard_name(pfx, k, n) not in have
        ]
    return found


def discover(
    target: Location | str | os.PathLike[str],
    prefix: str | None = None,
    *,
    state_filename: str = STATE_FILENAME,
    storage_options: dict[str, Any] | None = None,
    deep: bool = False,
    listing: dict[str, FileInfo] | None = None,
    fast_paths: bool = True,
) -> CheckpointDir:
    """List the steps of a checkpoint dir with their status, sizes and timestamps.

    ``prefix`` keeps only one base name (e.g. ``ckpt``), so two jobs can share a dir.
    ``deep=True`` also reads each V2 index header to learn ``num_shards`` (one small read per
    step); the default judges completeness from file names alone.
    ``listing`` (name -> FileInfo) replaces the listing call: GC passes one it assembled itself.
    ``fast_paths=False`` judges every prefix and state-file path by the general rules, which the
    common layouts otherwise skip (tests check that both give the same dir).
    """
    loc = target if isinstance(target, Location) else Location.of(target, storage_options)
    with gc_paused():
        return _discover(loc, prefix, state_filename, deep, listing, fast_paths)


def _discover(
    loc: Location,
    prefix: str | None,
    state_filename: str,
    deep: bool,
    listing: dict[str, FileInfo] | None,
    fast: bool = True,
) -> CheckpointDir:
    split: _Split | None = None
    regular_only = False
    if listing is None:
        if fast and not deep and loc.local:
            listing, split, regular_only = _scan_listing(loc)
        else:
            listing = loc.listdir()
    problems: list[str] = []
    state: StateFile | None = None
    if state_filename in listing:
        state = read_state(loc, state_filename)  # a malformed file raises StateFileError
    resolved, by_name, latest_name = _resolve_state(loc, state, listing, state_filename, problems, fast)
    state_times = state.timestamps_by_path() if state is not None else {}
    steps = _steps(loc, listing, split, by_name, latest_name, state, state_times, deep, problems, fast)
    cdir = CheckpointDir(
        location=loc,
        state=state,
        steps=steps,
        resolved=resolved,
        problems=problems,
        state_filename=state_filename,
        listing=listing,
        regular_files_only=regular_only,
    )
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
