"""Retention planning: which checkpoint steps to keep, and why. Pure data; nothing is deleted here.

Policies (Orbax-style "preservation policies") each answer "keep this step, and why" over the
ordered candidate steps of one base name; they compose as a UNION of keeps::

    plan = plan_retention("gs://b/run", [KeepLastN(3), KeepEveryNHours(2), KeepBestK(2, "val_loss")])
    print(plan.summary()); gc.apply_plan(plan)

Candidates are the complete, unquarantined steps of the base that are committed (named by the
state file) or older than the newest committed step. Always-on guards, each with its reason:

* the newest committed step and the state file's ``model_checkpoint_path`` are kept;
* the newest ``.meta`` at or before the newest committed step is protected. With
  ``write_meta_graph=False`` only the first save has one, and later steps depend on it for
  ``import_meta_graph``. By default (``meta_guard="file"``) only that ``.meta`` FILE survives when
  its step is deleted: a MetaGraphDef is independent of the weights, so it serves every later step
  while the old step's data (a whole checkpoint) goes. ``meta_guard="step"`` keeps the whole step;
* steps with an unexpired lease (``leased by OWNER until T``) and quarantined steps are kept
  (quarantined ones are deleted only with ``purge_quarantined=True``);
* incomplete steps, and complete steps missing from the state file, that are NEWER than the newest
  committed step are not touched (a save or a commit may be in progress); older incomplete steps are
  debris of an interrupted save or delete and are deleted;
* only the chosen base name is touched (two jobs can share a dir), and nothing is ever deleted
  when the base has no committed step at all.

``KeepEveryNHours`` follows ``tf.train.CheckpointManager``'s ``keep_checkpoint_every_n_hours``
exactly (``_sweep``): walking oldest to newest from the state file's ``last_preserved_timestamp``,
a step whose ``timestamp - hours*3600 >= last_preserved`` is preserved and becomes the new
``last_preserved``. Steps saved at or before the recorded ``last_preserved_timestamp`` were already
judged by TF (which stops managing them) and are kept; so are steps missing from a state file that
records save times and ``last_preserved_timestamp`` and older than every step it names, whatever
their mtimes (:func:`judged_by_tf`). The timestamp written back only advances
through steps whose fate is settled (preserved or deleted now), never past a step that another
policy merely holds for now; so a TF trainer restarted on the rewritten state file makes the same
choices, and re-planning converges. (``tf.compat.v1.train.Saver`` records no timestamps and uses a
different, unrecorded clock; with no ``last_preserved_timestamp`` the walk starts at the oldest
step, which is preserved.)

Planning is I/O then pure computation: discovery (one listing), then one read per metrics sidecar,
lease file and ``PROMOTIONS.json`` that the listing shows, then an O(n log n) plan.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from itertools import islice
from operator import attrgetter, indexOf
from typing import Any, ClassVar

from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.formats.naming import classify, parse_prefix
from airflow_tf_ckpt.core.formats.state import STATE_FILENAME, StateFile
from airflow_tf_ckpt.core.sidecars.leases import LEASE_INFIX, Lease, read_leases
from airflow_tf_ckpt.core.steps.discovery import (
    CheckpointDir,
    CheckpointStep,
    StepStatus,
    discover,
    gc_paused,
)
from airflow_tf_ckpt.core.steps.order import step_order
from airflow_tf_ckpt.core.storage.location import FileInfo, Location, loads_json
from airflow_tf_ckpt.core.storage.safety import Refusal, name_problem, root_realpath, symlink_problem

PROMOTIONS_FILENAME = "PROMOTIONS.json"
KEEP, DELETE = "keep", "delete"


class RetentionError(CheckpointError, ValueError):
    """A retention request makes no sense (no policy, keep_best without a metric, N < 0, ...)."""


def _iso(t: float | None) -> str:
    if t is None:
        return "?"
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return repr(t)


# --------------------------------------------------------------------------------------------
# policies


@dataclass
class PolicyContext:
    """What a policy may look at besides the candidates (all gathered before planning)."""

    now: float
    state: StateFile | None
    last_preserved_timestamp: float | None  # from the state file; None when it records none
    metrics: Mapping[str, Mapping[str, float]]
    promotions: Mapping[str, list[dict[str, Any]]]
    all_steps: Sequence[CheckpointStep]  # every step of the base, oldest first
    problems: list[str] = field(default_factory=list)
    # {prefix: {evaluator: metrics record}} of the evaluators the policies name (None: default)
    evaluations: Mapping[str, Mapping[str | None, Mapping[str, Any]]] = field(default_factory=dict)

    def metrics_of(self, evaluator: str | None) -> Mapping[str, Mapping[str, float]]:
        """``{prefix: metrics}`` by ``evaluator`` (``None``: the default sidecars, ``metrics``)."""
        if evaluator is None and not self.evaluations:
            return self.metrics
        return {p: r["metrics"] for p, by_ev in self.evaluations.items() if (r := by_ev.get(evaluator))}


class RetentionPolicy(ABC):
    """A rule that keeps some steps. ``select`` returns ``{prefix: reason}`` for the steps it keeps."""

    name: ClassVar[str] = "policy"
    needs_metrics: ClassVar[bool] = False
    evaluators: tuple[str | None, ...] = ()  # whose metrics sidecars it reads (None: default)
    needs_promotions: ClassVar[bool] = False
    applies_to_all: ClassVar[bool] = False  # True: sees every step of the base, not just candidates

    @abstractmethod
    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        """Keep-reasons by prefix; ``candidates`` are ordered oldest to newest."""

    def describe(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        d = {"policy": self.name}
        d.update({k: (sorted(v, key=str) if isinstance(v, frozenset) else v) for k, v in vars(self).items()})
        return d


def _ordinal(n: int) -> str:
    return "newest" if n == 1 else f"{n}{'tsnrhtdd'[(n // 10 % 10 != 1) * (n % 10 < 4) * n % 10 :: 4]} newest"


@dataclass(frozen=True)
class KeepLastN(RetentionPolicy):
    """The ``n`` newest candidate steps (TF's ``max_to_keep``).

    Candidates are complete steps that are committed or older than the newest committed one. In a
    dir managed by ``CheckpointManager`` the newest ones are exactly the state file's (the steps TF
    preserved under ``keep_checkpoint_every_n_hours`` are older); ``Saver(max_to_keep=None)`` names
    only its latest step in the state file, and its older steps still count here.
    """

    n: int
    name: ClassVar[str] = "keep_last"

    def __post_init__(self) -> None:
        _check_int("keep_last", self.n, 0)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        if self.n == 0:
            return {}
        last = candidates[-self.n :]
        k = len(last)
        return {s.prefix: f"keep_last={self.n}: {_ordinal(k - i)}" for i, s in enumerate(last)}

    def describe(self) -> str:
        return f"keep the last {self.n}"


@dataclass(frozen=True)
class HoursWalk:
    keeps: dict[str, str]
    advance: dict[str, float]  # steps that moved last_preserved forward, with their timestamp
    earlier: frozenset[str]  # steps saved at or before the recorded last_preserved_timestamp
    start: float | None


@dataclass(frozen=True)
class KeepEveryNHours(RetentionPolicy):
    """TF's ``keep_checkpoint_every_n_hours`` (``CheckpointManager._sweep``), see the module doc.

    ``start`` overrides the state file's ``last_preserved_timestamp``. ``clock_skew_s`` is the
    slack for steps whose time comes from a file mtime rather than the state file (an object
    store's clock is not the trainer's): such a step up to that much after ``last_preserved``
    still counts as already preserved by TF.
    """

    hours: float
    start: float | None = None
    clock_skew_s: float = 120.0
    name: ClassVar[str] = "keep_every_hours"

    def __post_init__(self) -> None:
        h = self.hours
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise RetentionError(f"keep_every_hours must be a positive number of hours, not {h!r}")
        if self.clock_skew_s < 0:
            raise RetentionError(f"clock_skew_s must be >= 0, not {self.clock_skew_s!r}")

    def walk(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> HoursWalk:
        start = self.start if self.start is not None else ctx.last_preserved_timestamp
        if start is not None:
            start = min(start, ctx.now)  # TF: time went backwards -> clamp to now
        lp = start
        period = self.hours * 3600.0
        keeps: dict[str, str] = {}
        advance: dict[str, float] = {}
        earlier: set[str] = set()
        judged = judged_by_tf(ctx)
        for s in candidates:
            if s.prefix in judged:
                keeps[s.prefix] = (
                    f"every {self.hours:g}h: older than every step the state file names, which "
                    "records save times and a last_preserved_timestamp: TF's CheckpointManager "
                    "already judged it and left it (already preserved by TF)"
                )
                earlier.add(s.prefix)
                continue
            if s.timestamp is None:
                keeps[s.prefix] = f"every {self.hours:g}h: no timestamp, cannot be judged"
                continue
            ts = s.timestamp
            if ts > ctx.now:
                ts = ctx.now
            slack = self.clock_skew_s if s.timestamp_source != "state" else 0.0
            if start is not None and ts <= start + slack:
                keeps[s.prefix] = (
                    f"every {self.hours:g}h: saved {_iso(ts)}, at or before "
                    f"last_preserved_timestamp {_iso(start)} (already preserved by TF)"
                )
                earlier.add(s.prefix)
            elif lp is None or ts - period >= lp:
                keeps[s.prefix] = f"every {self.hours:g}h: saved {_iso(ts)}, " + (
                    "oldest step (no last_preserved_timestamp recorded)"
                    if lp is None
                    else f"{(ts - lp) / 3600:.2f}h after the last preserved"
                )
                advance[s.prefix] = ts
                lp = ts
        return HoursWalk(keeps, advance, frozenset(earlier), start)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        return self.walk(candidates, ctx).keeps

    def describe(self) -> str:
        return f"keep one every {self.hours:g} hours"


def judged_by_tf(ctx: PolicyContext) -> frozenset[str]:
    """Steps of the base that ``CheckpointManager`` already judged: not in the state file, and
    older (by step number) than every step it names, in a state file that records save times and
    a ``last_preserved_timestamp`` (as ``CheckpointManager`` writes it).

    TF drops a step from the state file only in its sweep, where it deletes the files or
    preserves the step for good (``keep_checkpoint_every_n_hours``); it never looks at such a step
    again. One that still has its files was preserved, whatever its file mtimes say (a dir copied
    with ``cp -r``, a storage clock ahead of the trainer's): the state file's times are the truth.
    """
    st = ctx.state
    if (
        st is None
        or not ctx.last_preserved_timestamp
        or not st.all_model_checkpoint_paths
        or len(st.all_model_checkpoint_timestamps) != len(st.all_model_checkpoint_paths)
    ):
        return frozenset()
    named = [s.step for s in ctx.all_steps if s.in_state and s.step is not None]
    if not named:
        return frozenset()
    oldest = min(named)
    return frozenset(
        s.prefix
        for s in ctx.all_steps
        if not s.in_state and s.step is not None and s.step < oldest and s.files
    )


@dataclass(frozen=True)
class KeepEveryNSteps(RetentionPolicy):
    """Steps whose number is a multiple of ``n``."""

    n: int
    name: ClassVar[str] = "keep_every_steps"

    def __post_init__(self) -> None:
        _check_int("keep_every_steps", self.n, 1)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        return {
            s.prefix: f"every {self.n} steps"
            for s in candidates
            if s.step is not None and s.step % self.n == 0
        }

    def describe(self) -> str:
        return f"keep every {self.n}th step"


@dataclass(frozen=True)
class KeepBestK(RetentionPolicy):
    """The ``k`` best steps by ``metric`` from the metrics sidecars (``mode`` min or max).

    Steps without the metric are kept as "unevaluated" (``unevaluated="keep"``, the default):
    never delete what has not been evaluated yet. ``"newer"`` keeps only the unevaluated steps
    newer than the newest evaluated one (for an evaluator that skips steps and never goes back,
    like ``checkpoints_iterator``); ``"drop"`` keeps none of them. Non-finite values (NaN, +-inf)
    count as evaluated and are never best. Ties go to the newer step. ``evaluator`` says whose
    sidecars hold the metric (``None``: the default ``PREFIX.metrics.json``).
    """

    k: int
    metric: str
    mode: str = "min"
    unevaluated: str = "keep"
    evaluator: str | None = None
    name: ClassVar[str] = "keep_best"
    needs_metrics: ClassVar[bool] = True

    @property
    def evaluators(self) -> tuple[str | None, ...]:  # type: ignore[override]
        return (self.evaluator,)

    def __post_init__(self) -> None:
        _check_int("keep_best", self.k, 0)
        if not isinstance(self.metric, str) or not self.metric:
            raise RetentionError("keep_best needs a metric name")
        from airflow_tf_ckpt.core.sidecars.metrics import metric_name_problem

        if problem := metric_name_problem(self.metric):
            raise RetentionError(problem)
        if self.mode not in ("min", "max"):
            raise RetentionError(f"mode must be 'min' or 'max', not {self.mode!r}")
        if self.unevaluated not in ("keep", "newer", "drop"):
            raise RetentionError(f"unevaluated must be 'keep', 'newer' or 'drop', not {self.unevaluated!r}")
        _check_evaluator(self.evaluator)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        scored: list[tuple[float, int, CheckpointStep]] = []
        pending: list[CheckpointStep] = []
        newest_eval = -1
        metrics = ctx.metrics_of(self.evaluator)
        for i, s in enumerate(candidates):
            m = metrics.get(s.prefix)
            v = None if m is None else m.get(self.metric)
            if v is None:
                pending.append(s)
                continue
            newest_eval = i
            if math.isfinite(v):  # NaN and +-inf: evaluated, never best
                scored.append((v if self.mode == "min" else -v, -i, s))
        scored.sort(key=lambda x: (x[0], x[1]))
        out = {}
        for rank, (v, _, s) in enumerate(scored[: self.k], 1):
            value = v if self.mode == "min" else -v
            out[s.prefix] = f"best {self.k} by {self.metric} ({self.mode}): #{rank}, {self.metric}={value:g}"
        if self.unevaluated != "drop":
            index = {s.prefix: i for i, s in enumerate(candidates)}
            for s in pending:
                if self.unevaluated == "keep" or index[s.prefix] > newest_eval:
                    out[s.prefix] = f"unevaluated: no {self.metric} metric yet"
        return out

    def describe(self) -> str:
        by = f" of {self.evaluator}" if self.evaluator else ""
        return f"keep the best {self.k} by {self.metric}{by} ({self.mode})"


def _check_evaluator(evaluator: str | None) -> None:
    from airflow_tf_ckpt.core.sidecars.metrics import MetricsError, check_evaluator

    try:
        check_evaluator(evaluator)
    except MetricsError as exc:
        raise RetentionError(str(exc)) from None


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{max(seconds, 0.0):.0f}s"


@dataclass(frozen=True)
class KeepUnevaluated(RetentionPolicy):
    """Steps that one of ``evaluators`` has not evaluated yet (no metrics sidecar of it), for at
    most ``max_age_s`` seconds after the step was saved (``None``: no bound).

    So GC and evaluation coexist: an evaluator that is behind (a burst of saves, a paused DAG)
    still finds its steps. The bound keeps a dead evaluator from holding every step forever; a
    step past it is reported in the plan's problems and left to the other policies. A step with
    no known save time is held (its age cannot be judged). ``None`` in ``evaluators`` is the
    default evaluator (``PREFIX.metrics.json``).
    """

    evaluators: tuple[str | None, ...]  # type: ignore[misc]
    max_age_s: float | None = 86400.0
    name: ClassVar[str] = "keep_unevaluated"
    needs_metrics: ClassVar[bool] = True

    def __init__(self, evaluators: Iterable[str | None], max_age_s: float | None = 86400.0) -> None:
        evs = tuple(dict.fromkeys([evaluators] if isinstance(evaluators, str) else evaluators))
        if not evs:
            raise RetentionError("keep_unevaluated needs at least one evaluator name")
        for ev in evs:
            _check_evaluator(ev)
        age = max_age_s
        if age is not None and (
            isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) or age <= 0
        ):
            raise RetentionError(f"unevaluated_max_age must be a positive number of seconds, not {age!r}")
        object.__setattr__(self, "evaluators", evs)
        object.__setattr__(self, "max_age_s", None if age is None else float(age))

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        out: dict[str, str] = {}
        bound = "no age bound" if self.max_age_s is None else f"held up to {_age(self.max_age_s)}"
        for s in candidates:
            done = ctx.evaluations.get(s.prefix, {})
            missing = [ev or "(default)" for ev in self.evaluators if ev not in done]
            if not missing:
                continue
            if s.timestamp is None:
                out[s.prefix] = f"unevaluated by {', '.join(missing)} (save time unknown)"
                continue
            age = ctx.now - s.timestamp
            if self.max_age_s is not None and age > self.max_age_s:
                ctx.problems.append(
                    f"{s.prefix}: not evaluated by {', '.join(missing)} "
                    f"{_age(age)} after its save; no longer held for it"
                )
                continue
            out[s.prefix] = f"unevaluated by {', '.join(missing)} (saved {_age(age)} ago, {bound})"
        return out

    def describe(self) -> str:
        return "keep steps not yet evaluated by " + ", ".join(ev or "(default)" for ev in self.evaluators)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "evaluators": list(self.evaluators), "max_age_s": self.max_age_s}


@dataclass(frozen=True)
class KeepPinned(RetentionPolicy):
    """Steps pinned by number or by prefix name (held even when incomplete)."""

    steps: frozenset[int | str]
    name: ClassVar[str] = "pinned"
    applies_to_all: ClassVar[bool] = True

    def __init__(self, steps: Iterable[int | str]) -> None:
        pins: set[int | str] = set()
        for p in steps:
            if isinstance(p, bool):
                raise RetentionError(f"pin {p!r} is not a step number or prefix")
            if isinstance(p, int):
                if p < 0:
                    raise RetentionError(f"pin {p} is negative")
                pins.add(p)
            elif isinstance(p, str) and p.strip():
                text = p.strip()
                pins.add(int(text) if text.isdigit() else text)
            else:
                raise RetentionError(f"pin {p!r} is not a step number or prefix")
        object.__setattr__(self, "steps", frozenset(pins))

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        return {s.prefix: "pinned" for s in candidates if s.prefix in self.steps or s.step in self.steps}

    def describe(self) -> str:
        return "pinned: " + ", ".join(sorted(map(str, self.steps)))


@dataclass(frozen=True)
class KeepPromoted(RetentionPolicy):
    """Steps recorded in the source dir's ``PROMOTIONS.json`` (see :func:`record_promotion`).

    Only the current holder of each destination (and of each destination alias) counts unless
    ``include_superseded``.
    """

    include_superseded: bool = False
    name: ClassVar[str] = "promoted"
    needs_promotions: ClassVar[bool] = True
    applies_to_all: ClassVar[bool] = True

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> dict[str, str]:
        out: dict[str, str] = {}
        if not ctx.promotions:
            return out
        for s in candidates:
            recs = ctx.promotions.get(s.prefix)
            if recs:
                where = "; ".join(
                    f"{r.get('dest')}" + (f" as {r['alias']!r}" if r.get("alias") else "") for r in recs
                )
                out[s.prefix] = f"promoted to {where}"
        return out

    def describe(self) -> str:
        return "keep promoted steps"


def _check_int(what: str, n: Any, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise RetentionError(f"{what} must be a whole number, not {n!r}")
    if n < minimum:
        raise RetentionError(f"{what} must be >= {minimum}, not {n}")


def policies_from_options(
    keep_last: int | None = None,
    keep_every_hours: float | None = None,
    keep_every_steps: int | None = None,
    keep_best: int | None = None,
    metric: str | None = None,
    mode: str = "min",
    pins: Iterable[int | str] = (),
    keep_promoted: bool = True,
    unevaluated: str = "keep",
    evaluator: str | None = None,
    keep_unevaluated: Iterable[str | None] = (),
    unevaluated_max_age: float | None = 86400.0,
) -> list[RetentionPolicy]:
    """Policies from CLI / operator options. Raises :class:`RetentionError` on nonsense.

    ``unevaluated`` is :class:`KeepBestK`'s mode for steps without the metric (keep|newer|drop);
    ``evaluator`` whose metric it ranks by. ``keep_unevaluated`` names the evaluators whose
    pending steps are held (:class:`KeepUnevaluated`), for ``unevaluated_max_age`` seconds.
    Returns ``[]`` when no retention option is given (``keep_promoted`` alone is not a retention
    policy: with it alone GC would delete every unpromoted step but the newest), so callers can
    refuse to run.
    """
    out: list[RetentionPolicy] = []
    if mode not in ("min", "max"):
        raise RetentionError(f"mode must be 'min' or 'max', not {mode!r}")
    if keep_last is not None:
        out.append(KeepLastN(keep_last))
    if keep_every_hours is not None:
        out.append(KeepEveryNHours(keep_every_hours))
    if keep_every_steps is not None:
        out.append(KeepEveryNSteps(keep_every_steps))
    if keep_best is not None:
        if not metric:
            raise RetentionError("keep_best needs a metric name (which metric ranks the steps?)")
        out.append(KeepBestK(keep_best, metric, mode, unevaluated, evaluator))
    elif metric:
        raise RetentionError(f"metric {metric!r} given without keep_best: it would have no effect")
    elif evaluator:
        raise RetentionError(
            f"evaluator {evaluator!r} given without keep_best: it would have no effect "
            "(keep_unevaluated names its own evaluators)"
        )
    keep_unevaluated = (
        [keep_unevaluated] if isinstance(keep_unevaluated, str) else list(keep_unevaluated or ())
    )
    if keep_unevaluated:
        out.append(KeepUnevaluated(keep_unevaluated, unevaluated_max_age))
    pins = list(pins or ())
    if pins:
        out.append(KeepPinned(pins))
    if out and keep_promoted:
        out.append(KeepPromoted())
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.I)


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"24h"`` or ``"2d"``; RetentionError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise RetentionError(f"{text!r} is not a duration (e.g. 90, 90s, 30m, 24h, 2d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2).lower()]


def _check_policies(policies: Iterable[RetentionPolicy]) -> tuple[RetentionPolicy, ...]:
    ps = tuple(policies)
    for p in ps:
        if not isinstance(p, RetentionPolicy):
            raise RetentionError(f"{p!r} is not a retention policy")
    if not ps or all(isinstance(p, KeepPromoted) for p in ps):
        raise RetentionError(
            "no retention policy: refusing to plan (guards alone would delete every step "
            "but the newest); give keep_last, keep_every_hours, keep_every_steps, "
            "keep_best or pins"
        )
    if sum(isinstance(p, KeepEveryNHours) for p in ps) > 1:
        raise RetentionError(
            "more than one keep_every_hours policy: the state file records a single last_preserved_timestamp"
        )
    return ps


# --------------------------------------------------------------------------------------------
# promotions (written by core.promote in the SOURCE dir)


MAX_PROMOTIONS_BYTES = 64 << 20  # ~200k promotions


def read_promotions(loc: Location) -> list[dict[str, Any]]:
    """The records of ``PROMOTIONS.json`` (oldest first); ``[]`` when there is none."""
    try:
        data = loc.read_capped(PROMOTIONS_FILENAME, MAX_PROMOTIONS_BYTES, "a promotions record")
    except FileNotFoundError:
        return []
    return _parse_promotions(data, loc.display(PROMOTIONS_FILENAME))


def _parse_promotions(data: bytes, where: str) -> list[dict[str, Any]]:
    try:
        doc = loads_json(data)
    except ValueError as exc:
        # GC must not run blind: an unreadable record could hide a promoted step.
        raise CheckpointError(f"is not valid JSON ({exc}); fix or remove it before GC", where) from exc
    recs = doc.get("promotions") if isinstance(doc, dict) else None
    if not isinstance(recs, list) or not all(
        isinstance(r, dict) and isinstance(r.get("prefix"), str) for r in recs
    ):
        raise CheckpointError('has no valid "promotions" list; fix or remove it before GC', where)
    return recs


def current_promotions(
    records: Sequence[Mapping[str, Any]],
    include_superseded: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """``{prefix: [records]}``: the latest record per destination and per (destination, alias)."""
    if include_superseded:
        chosen = list(records)
    else:
        latest: dict[tuple[str, str | None], Mapping[str, Any]] = {}
        for r in records:  # later records supersede earlier ones
            latest[(str(r.get("dest")), r.get("alias"))] = r
            latest[(str(r.get("dest")), None)] = r
        chosen = list({id(r): r for r in latest.values()}.values())
    out: dict[str, list[dict[str, Any]]] = {}
    for r in chosen:
        out.setdefault(str(r["prefix"]), []).append(dict(r))
    return out


def promoted_prefixes(loc: Location, *, include_superseded: bool = False) -> set[str]:
    """Prefixes that ``PROMOTIONS.json`` in the source dir records as promoted (current holders)."""
    return set(current_promotions(read_promotions(loc), include_superseded))


_RECORD_LOCK = threading.Lock()


@contextmanager
def _dir_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on a local dir (held by processes of this host, released on exit,
    also by a killed process), and this process's threads serialized."""
    import fcntl

    with _RECORD_LOCK:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def record_promotion(
    loc: Location, prefix: str, dest: str, alias: str | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """Append a promotion record to ``PROMOTIONS.json`` in the SOURCE dir.

    Called by the promotion code after a successful copy. A repeated (prefix, dest, alias) moves
    to the end with a new time. Two promotions of the same source recording at the same instant
    both land: the read-modify-write runs under an ``flock`` of the dir locally, and as a
    compare-and-swap on GCS (the write carries ``ifGenerationMatch`` of what was read, and is
    redone on a fresh read when another writer came first). Other object stores have neither:
    there it is serialized within this process only.
    """
    if not prefix or "/" in prefix:
        raise CheckpointError(
            f"cannot record promotion of {prefix!r}: not a prefix name", loc.display(PROMOTIONS_FILENAME)
        )
    rec = {
        "prefix": prefix,
        "step": parse_prefix(prefix).step,
        "dest": dest,
        "alias": alias,
        "time": time.time() if now is None else now,
    }
    where = loc.display(PROMOTIONS_FILENAME)

    def updated(records: list[dict[str, Any]]) -> bytes:
        keep = [
            r for r in records if (r.get("prefix"), r.get("dest"), r.get("alias")) != (prefix, dest, alias)
        ]
        return json.dumps({"version": 1, "promotions": keep + [rec]}, indent=1, sort_keys=True).encode(
            "utf-8"
        )

    from airflow_tf_ckpt.core.storage.gcs import is_gcs, read_with_generation, write_if_generation

    if is_gcs(loc.fs):
        path = loc.join(PROMOTIONS_FILENAME)
        for attempt in range(20):
            data, generation = read_with_generation(loc.fs, path, MAX_PROMOTIONS_BYTES, "a promotions record")
            records = _parse_promotions(data, where) if data is not None else []
            if write_if_generation(loc.fs, path, updated(records), generation):
                return rec
            time.sleep(random.uniform(0, 0.02 * (attempt + 1)))
        raise CheckpointError("kept changing under 20 attempts to add a record; not recorded", where)
    if loc.local:
        os.makedirs(loc.path, exist_ok=True)
        with _dir_lock(loc.path):
            loc.write_atomic(PROMOTIONS_FILENAME, updated(read_promotions(loc)))
        return rec
    with _RECORD_LOCK:
        loc.write_atomic(PROMOTIONS_FILENAME, updated(read_promotions(loc)))
    return rec


# --------------------------------------------------------------------------------------------
# the plan


@dataclass(slots=True)
class StepDecision:
    """keep|delete for one step, with every reason, and the files that would go."""

    prefix: str
    base: str
    step: int | None
    status: str
    action: str
    reasons: list[str]
    in_state: bool
    timestamp: float | None
    size: int  # bytes of its checkpoint files (index, data)
    delete_files: tuple[str, ...] = ()  # names, deletion order
    kept_files: tuple[str, ...] = ()  # names that survive although the step goes

    @property
    def keep(self) -> bool:
        return self.action == KEEP

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "base": self.base,
            "step": self.step,
            "status": self.status,
            "action": self.action,
            "reasons": self.reasons,
            "in_state": self.in_state,
            "timestamp": self.timestamp,
            "size": self.size,
            "delete_files": list(self.delete_files),
            "kept_files": list(self.kept_files),
        }


_SIZE_SLOT = StepDecision.size  # the slot's descriptor, shadowed in _Decision below


class _Decision(StepDecision):
    """The :class:`StepDecision` that planning makes: ``size`` is summed from the step's files on
    first read, not while planning. A local listing reads sizes lazily (see ``storage.FileInfo``),
    and a plan of 100k steps must not stat 200k files for a figure that only reports show. GC
    reads the sizes of the steps it deletes before deleting them. Equal to, and pickled and
    copied as, the plain StepDecision with the same fields.
    """

    __slots__ = ("_files",)

    def __init__(
        self,
        prefix: str,
        base: str,
        step: int | None,
        status: str,
        action: str,
        reasons: list[str],
        in_state: bool,
        timestamp: float | None,
        size: int | Sequence[FileInfo],
        delete_files: tuple[str, ...] = (),
        kept_files: tuple[str, ...] = (),
    ) -> None:
        # StepDecision's fields; ``size`` may be the step's files (compute_plan): summed when read
        self.prefix, self.base, self.step, self.status, self.action = prefix, base, step, status, action
        self.reasons, self.in_state, self.timestamp = reasons, in_state, timestamp
        self.delete_files, self.kept_files = delete_files, kept_files
        if isinstance(size, int):
            _SIZE_SLOT.__set__(self, size)
        else:
            self._files = size

    @property  # type: ignore[override]
    def size(self) -> int:
        try:
            return _SIZE_SLOT.__get__(self, StepDecision)
        except AttributeError:
            size = sum(map(_SIZE, self._files))
            _SIZE_SLOT.__set__(self, size)
            return size

    @size.setter
    def size(self, value: int | Sequence[FileInfo]) -> None:
        if isinstance(value, int):
            _SIZE_SLOT.__set__(self, value)
        else:  # the step's files (compute_plan): summed on first read
            self._files = value

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(StepDecision))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StepDecision):
            return self._fields() == tuple(getattr(other, f.name) for f in fields(StepDecision))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as StepDecision's

    def __repr__(self) -> str:
        return repr(StepDecision(*self._fields()))

    def __reduce__(self) -> tuple[Any, ...]:
        return StepDecision, self._fields()


@dataclass
class SidecarDecision:
    """A sidecar whose step has no checkpoint files left (``.meta``, metrics, lease, quarantine)."""

    name: str
    prefix: str
    role: str
    action: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prefix": self.prefix,
            "role": self.role,
            "action": self.action,
            "reason": self.reason,
        }


@dataclass
class RetentionPlan:
    """The result of :func:`plan_retention`: data only; :func:`gc.apply_plan` executes it."""

    location: Location
    prefix: str | None
    state_filename: str
    now: float
    policies: tuple[RetentionPolicy, ...]
    decisions: list[StepDecision]
    sidecars: list[SidecarDecision]
    state_before: StateFile | None
    new_state: StateFile | None
    state_changed: bool
    drop_paths: list[str]  # raw state-file spellings that the new state file no longer names
    delete_files: list[str]  # exact filesystem paths, in deletion order
    protected_meta: dict[str, str]  # base -> the .meta name that is never deleted
    last_preserved_before: float | None
    last_preserved_after: float | None
    refused: list[Refusal]
    problems: list[str]
    purge_quarantined: bool = False
    meta_guard: str = "file"
    root_realpath: str | None = None
    # the listing the plan was made from: GC re-lists only the sidecars on object stores and
    # takes the step files from here (see gc.apply_plan)
    listing: Mapping[str, FileInfo] | None = field(default=None, repr=False, compare=False)

    @property
    def fingerprint(self) -> dict[str, frozenset[str]]:
        """The file names each doomed step had at planning time (GC checks nothing new appeared)."""
        return {
            d.prefix: frozenset(d.delete_files) | frozenset(d.kept_files)
            for d in self.decisions
            if d.action == DELETE
        }

    @property
    def kept(self) -> list[StepDecision]:
        return [d for d in self.decisions if d.action == KEEP]

    @property
    def deleted(self) -> list[StepDecision]:
        return [d for d in self.decisions if d.action == DELETE]

    def decision(self, prefix: str) -> StepDecision:
        for d in self.decisions:
            if d.prefix == prefix:
                return d
        raise KeyError(prefix)

    @property
    def bytes_to_free(self) -> int:
        return sum(d.size for d in self.decisions if d.action == DELETE)

    def replan(self, now: float | None = None, target: CheckpointDir | None = None) -> RetentionPlan:
        """The same request planned again against a fresh listing (or ``target``)."""
        return plan_retention(
            target if target is not None else self.location,
            self.policies,
            prefix=self.prefix,
            now=now,
            state_filename=self.state_filename,
            purge_quarantined=self.purge_quarantined,
            meta_guard=self.meta_guard,
        )

    def to_dict(self) -> dict[str, Any]:
        st = self.new_state
        return {
            "dir": self.location.display(),
            "prefix": self.prefix,
            "now": self.now,
            "policies": [p.to_dict() for p in self.policies],
            "purge_quarantined": self.purge_quarantined,
            "meta_guard": self.meta_guard,
            "steps": [d.to_dict() for d in self.decisions],
            "sidecars": [s.to_dict() for s in self.sidecars],
            "state_file": {
                "name": self.state_filename,
                "changed": self.state_changed,
                "drop_paths": self.drop_paths,
                "new": None
                if st is None
                else {
                    "model_checkpoint_path": st.model_checkpoint_path,
                    "all_model_checkpoint_paths": st.all_model_checkpoint_paths,
                    "all_model_checkpoint_timestamps": st.all_model_checkpoint_timestamps,
                    "last_preserved_timestamp": st.last_preserved_timestamp,
                },
            },
            "last_preserved_timestamp": {
                "before": self.last_preserved_before,
                "after": self.last_preserved_after,
            },
            "delete_files": [self._display(p) for p in self.delete_files],
            "protected_meta": self.protected_meta,
            "refused": [r.to_dict() for r in self.refused],
            "problems": self.problems,
            "counts": {
                "steps": len(self.decisions),
                "keep": len(self.kept),
                "delete": len(self.deleted),
                "files": len(self.delete_files),
                "bytes": self.bytes_to_free,
            },
        }

    def _display(self, path: str) -> str:
        return path if self.location.local else self.location.display(path.rsplit("/", 1)[-1])

    def summary(self, limit: int = 10) -> str:
        dels = [d.prefix for d in self.deleted]
        shown = ", ".join(dels[:limit]) + (f", ... (+{len(dels) - limit} more)" if len(dels) > limit else "")
        parts = [
            f"{self.location.display()}: {len(self.decisions)} step(s): {len(self.kept)} kept, "
            f"{len(dels)} to delete" + (f" ({shown})" if dels else ""),
            f"{len(self.delete_files)} file(s), {self.bytes_to_free} bytes",
            "state file " + ("rewritten" if self.state_changed else "unchanged"),
        ]
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        if self.problems:
            parts.append(f"{len(self.problems)} problem(s)")
        return "; ".join(parts)


def plan_retention(
    target: CheckpointDir | Location | str | os.PathLike[str],
    policies: Iterable[RetentionPolicy],
    *,
    prefix: str | None = None,
    now: float | None = None,
    state_filename: str = STATE_FILENAME,
    purge_quarantined: bool = False,
    meta_guard: str = "file",
    storage_options: dict[str, Any] | None = None,
) -> RetentionPlan:
    """Plan retention for a dir (or a ``CheckpointDir`` already discovered). See the module doc.

    ``prefix`` is the base name to manage (``ckpt``, ``model.ckpt``); ``None`` manages every base
    in the dir, each with its own guards.
    """
    ps = _check_policies(policies)
    if meta_guard not in ("file", "step"):
        raise RetentionError(f"meta_guard must be 'file' or 'step', not {meta_guard!r}")
    with gc_paused():  # see discovery.gc_paused: ~1M objects, no cycles
        return _plan_retention(
            target, ps, prefix, now, state_filename, purge_quarantined, meta_guard, storage_options
        )


def _plan_retention(
    target: CheckpointDir | Location | str | os.PathLike[str],
    ps: tuple[RetentionPolicy, ...],
    prefix: str | None,
    now: float | None,
    state_filename: str,
    purge_quarantined: bool,
    meta_guard: str,
    storage_options: dict[str, Any] | None,
) -> RetentionPlan:
    if isinstance(target, CheckpointDir):
        cdir = target
        state_filename = cdir.state_filename
    else:
        loc = target if isinstance(target, Location) else Location.of(target, storage_options)
        cdir = discover(loc, state_filename=state_filename)
    t = time.time() if now is None else float(now)
    steps = list(cdir.steps) if prefix is None else [s for s in cdir.steps if s.base == prefix]
    if prefix is not None and not steps and any(s.prefix == prefix for s in cdir.steps):
        raise RetentionError(
            f"{prefix!r} names one step; pass its base name "
            f"({parse_prefix(prefix).base!r}) to manage that job's steps"
        )
    problems = list(cdir.problems)

    metrics: dict[str, dict[str, float]] = {}
    evaluations: dict[str, dict[str | None, dict[str, Any]]] = {}
    if any(p.needs_metrics for p in ps):
        from airflow_tf_ckpt.core.sidecars.metrics import evaluation_records

        wanted = {ev for p in ps if p.needs_metrics for ev in p.evaluators}
        evaluations = evaluation_records(replace(cdir, steps=steps), evaluators=wanted, problems=problems)
        metrics = {p: r["metrics"] for p, by_ev in evaluations.items() if (r := by_ev.get(None))}
    promotions: dict[str, list[dict[str, Any]]] = {}
    promo_policies = [p for p in ps if isinstance(p, KeepPromoted)]
    if promo_policies and PROMOTIONS_FILENAME in cdir.listing:
        promotions = current_promotions(
            read_promotions(cdir.location), any(p.include_superseded for p in promo_policies)
        )
    lease_roles = (
        [
            (n, r)
            for n in cdir.listing
            if LEASE_INFIX in n and (r := classify(n)) is not None and r.role == "lease"
        ]
        if LEASE_INFIX in "\n".join(cdir.listing)
        else []
    )
    lease_names: list[str] = []
    if lease_roles:  # the managed bases are only needed when the dir holds leases at all
        bases = {s.base for s in steps}
        lease_names = [n for n, r in lease_roles if parse_prefix(r.prefix).base in bases]
    leases = read_leases(cdir.location, lease_names, listing=cdir.listing) if lease_names else {}
    return compute_plan(
        cdir,
        steps,
        ps,
        now=t,
        prefix=prefix,
        metrics=metrics,
        evaluations=evaluations,
        promotions=promotions,
        leases=leases,
        purge_quarantined=purge_quarantined,
        meta_guard=meta_guard,
        problems=problems,
    )


def compute_plan(
    cdir: CheckpointDir,
    steps: Sequence[CheckpointStep],
    policies: tuple[RetentionPolicy, ...],
    *,
    now: float,
    prefix: str | None,
    metrics: Mapping[str, Mapping[str, float]],
    promotions: Mapping[str, list[dict[str, Any]]],
    leases: Mapping[str, Lease],
    purge_quarantined: bool,
    meta_guard: str,
    problems: list[str],
    evaluations: Mapping[str, Mapping[str | None, Mapping[str, Any]]] | None = None,
) -> RetentionPlan:
    """The pure part of :func:`plan_retention`: no I/O except ``realpath`` of local symlinks.

    Written for 100k-step dirs: one sort, index arithmetic instead of key comparisons, and no
    per-step work beyond a dict entry and a decision object.
    """
    loc = cdir.location
    local = loc.local
    root = loc.path.rstrip("/")
    names_text = "\n".join(cdir.listing)  # scanned by regexes instead of 300k Python-level tests
    bad_names = _bad_names(cdir.listing, names_text, local)
    # per-file checks are only needed when some listed name is odd or (locally) a symlink/dir
    check_files = bool(bad_names) or (
        local
        and not cdir.regular_files_only
        and (any(map(_IS_LINK, cdir.listing.values())) or any(map(_IS_DIR, cdir.listing.values())))
    )
    state = cdir.state
    lp_before = state.last_preserved_timestamp if state is not None else None
    lp_known = lp_before if lp_before else None
    hours = next((p for p in policies if isinstance(p, KeepEveryNHours)), None)
    real_root = root_realpath(loc)
    by_base: dict[str, list[CheckpointStep]] = {}
    bases = set(map(_BASE, steps))
    if len(bases) == 1:
        by_base[bases.pop()] = list(steps)
    else:
        for s in steps:
            by_base.setdefault(s.base, []).append(s)
    for bsteps in by_base.values():
        try:  # step numbers are unique within a base: a C-level key suffices...
            bsteps.sort(key=_STEP)
        except TypeError:  # ...unless a prefix has no step number
            bsteps.sort(key=step_order)
    orphans_by_base = _orphan_sidecars(cdir, names_text, set(by_base))
    committed_status, incomplete_status = StepStatus.COMMITTED, StepStatus.INCOMPLETE

    decisions: list[StepDecision] = []
    sidecar_decisions: list[SidecarDecision] = []
    refused: list[Refusal] = []
    protected_meta: dict[str, str] = {}
    lp_candidates: list[float | None] = []
    deleted_in_state: set[str] = set()
    prefix_path = root + "/" if root else "/"
    delete_names: list[str] = []  # the step files, in decision order (sidecars appended at the end)
    deleted_orphans: set[str] = set()  # deleted steps outside the state file (see ``lost`` below)
    orphan_status = StepStatus.ORPHAN

    for base, bsteps in by_base.items():
        newest_i = -1
        for i in range(len(bsteps) - 1, -1, -1):
            if bsteps[i].status is committed_status:
                newest_i = i
                break
        keep: dict[str, list[str]] = {}  # prefix -> keep reasons (absent: nothing keeps it)
        if newest_i < 0:
            why = f"no committed step of {base!r} (the state file names none): nothing of it is touched"
            decisions += [_decision(s, KEEP, [why]) for s in bsteps]
            continue
        newest = bsteps[newest_i]
        drop_reason: dict[str, str] = {}
        candidates: list[CheckpointStep] = []
        for i, s in enumerate(bsteps):
            older = i < newest_i
            if s.sidecars and s.quarantined:  # whatever its status: set aside for inspection
                if purge_quarantined and older:
                    drop_reason[s.prefix] = "quarantined; purge requested"
                else:
                    keep.setdefault(s.prefix, []).append("quarantined")
            elif s.status is incomplete_status:
                if not older:
                    keep.setdefault(s.prefix, []).append(
                        "incomplete and newer than the newest committed step (possibly being written)"
                    )
                elif not s.files:
                    drop_reason[s.prefix] = "named by the state file but none of its files exist"
                else:
                    drop_reason[s.prefix] = (
                        "incomplete and older than the newest committed step "
                        "(debris of an interrupted save or delete)"
                    )
            elif older or s.status is committed_status:
                candidates.append(s)
            else:
                keep.setdefault(s.prefix, []).append(
                    "complete but not in the state file, and newer than the newest "
                    "committed step (possibly being committed)"
                )
        ctx = PolicyContext(
            now=now,
            state=state,
            last_preserved_timestamp=lp_known,
            metrics=metrics,
            promotions=promotions,
            all_steps=bsteps,
            problems=problems,
            evaluations=evaluations or {},
        )
        walk: HoursWalk | None = None
        for p in policies:
            if p is hours:
                walk = hours.walk(candidates, ctx)
                chosen = walk.keeps
            else:
                chosen = p.select(bsteps if p.applies_to_all else candidates, ctx)
            for pfx, why in chosen.items():
                keep.setdefault(pfx, []).append(why)
        keep.setdefault(newest.prefix, []).insert(0, "newest committed step")
        i = -1
        while True:  # the state file's latest (one step at most), found by C-level scans
            try:
                i += 1 + indexOf(map(_LATEST, islice(bsteps, i + 1, newest_i)), True)
            except ValueError:
                break
            if bsteps[i].status is committed_status:
                keep.setdefault(bsteps[i].prefix, []).insert(
                    0, "the state file's latest (model_checkpoint_path)"
                )
        if leases:
            for s in bsteps:
                if s.sidecars:
                    for lf in s.leases:
                        lease = leases.get(lf.name)
                        if lease is not None and lease.active(now):
                            keep.setdefault(s.prefix, []).append(lease.describe())

        # the newest .meta at or before the newest committed step (orphan .meta files included)
        metas: list[tuple[tuple[int, float, str], str, str]] = [
            (step_order(s), s.prefix, f"{s.prefix}.meta")
            for s in filter(_SIDECARS, islice(bsteps, newest_i + 1))
            if s.has_meta
        ]
        newest_no = newest.step if newest.step is not None else -1
        orphan_sidecars = [o for o in orphans_by_base.get(base, []) if o[3] < newest_no]
        for name, pfx, role, step_no, info in orphan_sidecars:
            if role == "meta":
                metas.append(((step_no, info.mtime or 0.0, pfx), pfx, name))
        pmeta: str | None = None
        if metas:
            _, meta_owner, pmeta = max(metas)
            protected_meta[base] = pmeta
            if (
                meta_guard == "step"
                and meta_owner != newest.prefix
                and any(s.prefix == meta_owner for s in bsteps)
            ):
                keep.setdefault(meta_owner, []).append(
                    "owns the newest .meta (MetaGraphDef); later steps were saved without one"
                )

        keep_get, drop_get, add_decision = keep.get, drop_reason.get, decisions.append
        for s in bsteps:
            pfx = s.prefix
            reasons = keep_get(pfx)
            if reasons:
                add_decision(_decision(s, KEEP, reasons))
                continue
            files = s.files
            if not (s.sidecars or check_files) and files and files[0].name.endswith(".index"):
                # the common case, a step of an index and data shards and nothing else
                names = (files[0].name, files[1].name) if len(files) == 2 else tuple(map(_NAME, files))
                add_decision(
                    _Decision(
                        pfx,
                        s.base,
                        s.step,
                        _STATUS_VALUE[s.status],
                        DELETE,
                        [drop_get(pfx) or _NOT_KEPT],
                        s.in_state,
                        s.timestamp,
                        files,
                        names,
                    )
                )
                delete_names += names
                if s.in_state:
                    deleted_in_state.add(pfx)
                elif s.status is orphan_status:
                    deleted_orphans.add(pfx)
                continue
            if s.sidecars or (s.files and not s.files[0].name.endswith(".index")):
                infos, kept_files = _files_to_delete(s, pmeta, leases, now)
            else:  # the common case: index first, data shards, no sidecar
                infos, kept_files = s.files, []
            bad_refusals = []
            if check_files:
                bad = [f for f in infos if f.is_dir or (f.is_link and local) or f.name in bad_names]
                bad_refusals = _refusals(loc, bad, real_root) if bad else []
            if bad_refusals:
                refused += bad_refusals
                keep[s.prefix] = [f"refused: {b.path} {b.reason}" for b in bad_refusals]  # unsettled
                decisions.append(_decision(s, KEEP, keep[s.prefix]))
                continue
            why = drop_reason.get(s.prefix)
            if kept_files:
                reasons = [
                    why or _NOT_KEPT,
                    f"keeps {kept_files[0]}: the newest MetaGraphDef, which "
                    "later steps (saved without one) need for import_meta_graph",
                ]
            else:
                reasons = [why or _NOT_KEPT]
            names = tuple(map(_NAME, infos))
            decisions.append(
                _Decision(
                    s.prefix,
                    s.base,
                    s.step,
                    _STATUS_VALUE[s.status],
                    DELETE,
                    reasons,
                    s.in_state,
                    s.timestamp,
                    s.files,
                    names,
                    tuple(kept_files) if kept_files else (),
                )
            )
            delete_names += names
            if s.in_state:
                deleted_in_state.add(s.prefix)
            elif s.status is orphan_status:
                deleted_orphans.add(s.prefix)

        for name, pfx, role, _, info in sorted(orphan_sidecars, key=lambda o: o[0]):
            action, reason = DELETE, "sidecar of a step whose checkpoint files are gone"
            if role == "meta" and pmeta == name:
                action, reason = (
                    KEEP,
                    (
                        "the newest MetaGraphDef, which later steps (saved without one) "
                        "need for import_meta_graph"
                    ),
                )
            elif role == "lease":
                lease = leases.get(name)
                if lease is None or lease.active(now):
                    action, reason = KEEP, (lease.describe() if lease else "lease (unread)")
                else:
                    reason = "expired lease of a step whose checkpoint files are gone"
            elif role == "quarantine" and not purge_quarantined:
                action, reason = KEEP, "quarantine record (purge not requested)"
            if action == DELETE:
                bad_refusals = _refusals(loc, [info], real_root)
                if bad_refusals:
                    refused += bad_refusals
                    action, reason = KEEP, f"refused: {bad_refusals[0].reason}"
            sidecar_decisions.append(SidecarDecision(name, pfx, role, action, reason))

        if walk is not None and candidates:
            lp_candidates.append(_settled_lp(candidates, walk, keep, lp_known))

    # temp files of atomic writes that died before their rename (ours: state file, manifests,
    # metrics, promotions; they are never read): gone once clearly abandoned
    if local and (prefix is None or prefix == ""):
        for m in _TEMP_FILE.finditer(names_text):
            info = cdir.listing.get(m.group(0))
            if (
                info is None
                or info.is_dir
                or info.is_link
                or info.mtime is None
                or now - info.mtime < TEMP_FILE_TTL_S
            ):
                continue
            bad_refusals = _refusals(loc, [info], real_root)
            if bad_refusals:
                refused += bad_refusals
                continue
            sidecar_decisions.append(
                SidecarDecision(
                    info.name,
                    m.group("target"),
                    "temp",
                    DELETE,
                    f"temp file of a write to {m.group('target')} that never finished "
                    f"({int((now - info.mtime) // 60)} min old)",
                )
            )

    # the state file: drop every spelling of a deleted step
    drop_paths: list[str] = []
    new_state: StateFile | None = None
    lp_after = lp_before
    if hours is not None and lp_candidates:
        advanced = [x for x in lp_candidates if x is not None]
        if len(advanced) == len(lp_candidates):
            lp_after = max(min(advanced), lp_before or 0.0)
    for r in cdir.resolved:  # one pass: the state-file spellings to drop and the paths not followed
        if r.how == "refused":
            refused.append(Refusal(r.raw, f"state-file path not followed: {r.problem}"))
        if state is not None and r.name is not None and r.name in deleted_in_state:
            drop_paths.append(r.raw)
    if state is not None:
        if drop_paths:
            all_raw = set(state.all_model_checkpoint_paths)
            if state.model_checkpoint_path:
                all_raw.add(state.model_checkpoint_path)
            new_state = state.retained(all_raw.difference(drop_paths))
        else:
            new_state = replace(
                state,
                all_model_checkpoint_paths=list(state.all_model_checkpoint_paths),
                all_model_checkpoint_timestamps=list(state.all_model_checkpoint_timestamps),
            )
        new_state.last_preserved_timestamp = lp_after if lp_after is not None else 0.0
    state_changed = new_state is not None and new_state != state

    if hours is None and lp_known is not None and deleted_orphans:
        lost = [
            s.prefix
            for s in steps
            if s.prefix in deleted_orphans
            and not s.in_state
            and s.status is StepStatus.ORPHAN
            and s.timestamp is not None
            and s.timestamp <= lp_known
        ]
        if lost:
            problems.append(
                f"{len(lost)} step(s) look preserved by TF's keep_checkpoint_every_n_hours "
                f"(saved at or before last_preserved_timestamp) and no keep_every_hours policy "
                f"keeps them: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}"
            )

    delete_names += [sc.name for sc in sidecar_decisions if sc.action == DELETE]
    delete_files = list(map(prefix_path.__add__, delete_names))

    return RetentionPlan(
        location=loc,
        prefix=prefix,
        state_filename=cdir.state_filename,
        now=now,
        policies=policies,
        decisions=decisions,
        sidecars=sidecar_decisions,
        state_before=state,
        new_state=new_state,
        state_changed=state_changed,
        drop_paths=drop_paths,
        delete_files=delete_files,
        protected_meta=protected_meta,
        last_preserved_before=lp_before,
        last_preserved_after=lp_after,
        refused=refused,
        problems=problems,
        purge_quarantined=purge_quarantined,
        meta_guard=meta_guard,
        root_realpath=real_root,
        listing=cdir.listing,
    )


_STATUS_VALUE = {st: st.value for st in StepStatus}
_ODD_CHAR = re.compile(r"[/\x00*?\[]")
#: what ``storage.write_atomic`` (``tempfile.mkstemp``) and promotion's local copies name their
#: temp files: ``.TARGET.XXXXXXXX.tmp``
_TEMP_FILE = re.compile(r"^\.(?P<target>[^\n]+)\.[a-z0-9_]{8}\.tmp$", re.M)
#: a temp file older than this belongs to a write that died (a write takes seconds)
TEMP_FILE_TTL_S = 3600.0


def _bad_names(listing: Mapping[str, FileInfo], text: str, local: bool) -> frozenset[str]:
    """Listed names that :func:`safety.name_problem` refuses, found with ONE regex scan over all
    names (no odd name at all, the common case, costs milliseconds for 300k names). Names holding
    a newline cannot be scanned line-wise and are checked one by one."""
    candidates = set()
    for m in _ODD_CHAR.finditer(text):  # usually no match at all: one C-level scan
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.start())
        candidates.add(text[start:] if end < 0 else text[start:end])
    candidates.update(n for n in (".", "..", "") if n in listing)
    if text.count("\n") != max(len(listing) - 1, 0):  # some name holds a newline itself
        candidates.update(n for n in listing if "\n" in n)
    return frozenset(n for n in candidates if n in listing and name_problem(n, local) is not None)


_NAME = attrgetter("name")
_SIZE = attrgetter("size")
_STEP = attrgetter("step")
_BASE = attrgetter("base")
_LATEST = attrgetter("latest")
_SIDECARS = attrgetter("sidecars")
_IS_LINK = attrgetter("is_link")
_IS_DIR = attrgetter("is_dir")
_NOT_KEPT = "not kept by any policy"


def _decision(s: CheckpointStep, action: str, reasons: list[str]) -> StepDecision:
    return _Decision(
        s.prefix, s.base, s.step, _STATUS_VALUE[s.status], action, reasons, s.in_state, s.timestamp, s.files
    )


_SIDECAR_END = re.compile(
    r"(?:\.meta|\.metrics\.json|\.metrics~[A-Za-z0-9_.-]+\.json|\.quarantine\.json"
    r"|\.lease-[A-Za-z0-9_.@-]+)$",
    re.M,
)


def _orphan_sidecars(
    cdir: CheckpointDir,
    text: str,
    bases: set[str],
) -> dict[str, list[tuple[str, str, str, int, FileInfo]]]:
    """Sidecars (``.meta``, metrics, leases, quarantine records) whose step has no checkpoint
    files, by base: ``(name, prefix, role, step, info)``. One regex scan over the joined listing
    finds the sidecar names (a 100k-step dir lists 300k names, nearly all index/data files)."""
    known: set[str] | None = None  # built on the first sidecar found (most dirs have none)
    out: dict[str, list[tuple[str, str, str, int, FileInfo]]] = {}
    for m in _SIDECAR_END.finditer(text):
        name = text[text.rfind("\n", 0, m.start()) + 1 : m.end()]
        info = cdir.listing.get(name)
        if info is None or info.is_dir:
            continue
        role_info = classify(name)
        if role_info is None or role_info.role not in ("meta", "metrics", "quarantine", "lease"):
            continue
        pfx = role_info.prefix
        if known is None:
            known = {s.prefix for s in cdir.steps}
        if pfx in known or not pfx:
            continue
        pn = parse_prefix(pfx)
        if pn.base in bases and pn.step is not None:
            out.setdefault(pn.base, []).append((name, pfx, role_info.role, pn.step, info))
    return out


def _files_to_delete(
    s: CheckpointStep, protected_meta: str | None, leases: Mapping[str, Lease], now: float
) -> tuple[list[FileInfo], list[str]]:
    """Files to delete for a dropped step: the index first (no reader sees it complete after the
    first removal), then data files, then sidecars. The protected ``.meta`` survives."""
    files = s.files
    if files and not files[0].name.endswith(".index"):
        files = sorted(files, key=lambda f: not f.name.endswith(".index"))
    if not s.sidecars:
        return files, []
    side: list[FileInfo] = []
    kept: list[str] = []
    for f in s.sidecars:
        if f.name == protected_meta:
            kept.append(f.name)
        elif LEASE_INFIX in f.name and (lease := leases.get(f.name)) is not None and lease.active(now):
            kept.append(f.name)  # cannot happen for a dropped step (a lease keeps it); belt and braces
        else:
            side.append(f)
    return [*files, *side], kept


def _refusals(loc: Location, infos: Iterable[FileInfo], real_root: str | None) -> list[Refusal]:
    """Files that must not be deleted: odd names, directories, local symlinks leading out."""
    out = []
    for f in infos:
        why = name_problem(f.name, loc.local)
        if why is None and f.is_dir:
            why = "is a directory: not removed"
        if why is None and f.is_link and loc.local:
            why = symlink_problem(loc, f.name, real_root)
        if why:
            out.append(Refusal(loc.display(f.name), why))
    return out


def _settled_lp(
    candidates: Sequence[CheckpointStep],
    walk: HoursWalk,
    keep: Mapping[str, list[str]],
    lp_known: float | None,
) -> float | None:
    """How far ``last_preserved_timestamp`` may move: through the oldest-first run of candidates
    whose fate is final (preserved by the hours rule, or deleted now), never past one that another
    policy only holds for now (TF would still judge it later)."""
    lp = lp_known
    for s in candidates:
        if s.prefix in walk.advance:
            lp = walk.advance[s.prefix]
        elif s.prefix in walk.earlier or not keep.get(s.prefix):
            continue
        else:
            break
    return lp
