"""Retention policies (Orbax-style "preservation policies"): small objects that each answer
"keep this step, and why" over the ordered candidate steps of one base name.

Every policy satisfies :class:`RetentionPolicy`: a :meth:`~RetentionPolicy.select` that returns
``{prefix: reason}``, and :attr:`~RetentionPolicy.needs`, the data it reads (metrics of which
evaluators, the promotions record, every step or only the candidates, whether it walks the state
file's ``last_preserved_timestamp``). The planner gathers what the policies need and takes the
UNION of their keeps; it knows no policy by name.

``KeepEveryNHours`` follows ``tf.train.CheckpointManager``'s ``keep_checkpoint_every_n_hours``
exactly (``_sweep``), see :class:`KeepEveryNHours` and :class:`Sweep`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from airflow_tf_ckpt.core.display import iso_utc
from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.formats.state import StateFile
from airflow_tf_ckpt.core.steps.discovery import CheckpointStep

Keeps = dict[str, str]  # prefix -> why a policy keeps it


class RetentionError(CheckpointError, ValueError):
    """A retention request makes no sense (no policy, keep_best without a metric, N < 0, ...)."""


@dataclass(frozen=True)
class PolicyNeeds:
    """What a policy reads besides the candidates; the planner gathers it once for all policies."""

    evaluators: tuple[str | None, ...] = ()  # whose metrics sidecars (None: the default one)
    promotions: bool = False  # the source dir's PROMOTIONS.json
    include_superseded: bool = False  # ...with the records of former holders too
    all_steps: bool = False  # sees every step of the base (incomplete ones too), not the candidates
    retains: bool = True  # False: a guard that is no retention policy on its own (keep promoted)
    last_preserved: bool = False  # walks and advances the state file's last_preserved_timestamp


@dataclass(frozen=True)
class Sweep:
    """How a ``last_preserved_timestamp`` walk went over one base's candidates (oldest first)."""

    advance: dict[str, float]  # steps that moved last_preserved forward, with their timestamp
    earlier: frozenset[str]  # steps saved at or before the recorded last_preserved_timestamp

    def settled(
        self, candidates: Sequence[CheckpointStep], keep: Mapping[str, Any], lp_known: float | None
    ) -> float | None:
        """How far ``last_preserved_timestamp`` may move: through the oldest-first run of
        candidates whose fate is final (preserved by the walk, or deleted now: nothing in
        ``keep``), never past one that another policy only holds for now (TF would still judge it
        later)."""
        lp = lp_known
        for s in candidates:
            if s.prefix in self.advance:
                lp = self.advance[s.prefix]
            elif s.prefix not in self.earlier and keep.get(s.prefix):
                break
        return lp


@dataclass
class PolicyContext:
    """What a policy may look at besides the candidates (all gathered before planning), and where
    it reports back: ``problems`` (for the plan) and ``sweep`` (a ``last_preserved`` walk)."""

    now: float
    state: StateFile | None
    last_preserved_timestamp: float | None  # from the state file; None when it records none
    metrics: Mapping[str, Mapping[str, float]]
    promotions: Mapping[str, list[dict[str, Any]]]
    all_steps: Sequence[CheckpointStep]  # every step of the base, oldest first
    problems: list[str] = field(default_factory=list)
    # {prefix: {evaluator: metrics record}} of the evaluators the policies name (None: default)
    evaluations: Mapping[str, Mapping[str | None, Mapping[str, Any]]] = field(default_factory=dict)
    sweep: Sweep | None = None

    def metrics_of(self, evaluator: str | None) -> Mapping[str, Mapping[str, float]]:
        """``{prefix: metrics}`` by ``evaluator`` (``None``: the default sidecars, ``metrics``)."""
        if evaluator is None and not self.evaluations:
            return self.metrics
        return {p: r["metrics"] for p, by_ev in self.evaluations.items() if (r := by_ev.get(evaluator))}


@runtime_checkable
class RetentionPolicy(Protocol):
    """A rule that keeps some steps: "keep this step, and why"."""

    @property
    def needs(self) -> PolicyNeeds: ...

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        """Keep-reasons by prefix; ``candidates`` are ordered oldest to newest (every step of the
        base when ``needs.all_steps``)."""
        ...

    def describe(self) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class _Fields:
    """``to_dict`` of a policy dataclass: its name and fields (sets sorted, for JSON)."""

    name: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"policy": self.name}
        d.update({k: (sorted(v, key=str) if isinstance(v, frozenset) else v) for k, v in vars(self).items()})
        return d


# --------------------------------------------------------------------------------------------
# the policies


@dataclass(frozen=True)
class KeepLastN(_Fields):
    """The ``n`` newest candidate steps (TF's ``max_to_keep``).

    Candidates are complete steps that are committed or older than the newest committed one. In a
    dir managed by ``CheckpointManager`` the newest ones are exactly the state file's (the steps TF
    preserved under ``keep_checkpoint_every_n_hours`` are older); ``Saver(max_to_keep=None)`` names
    only its latest step in the state file, and its older steps still count here.
    """

    n: int
    name: ClassVar[str] = "keep_last"
    needs: ClassVar[PolicyNeeds] = PolicyNeeds()

    def __post_init__(self) -> None:
        _check_int("keep_last", self.n, 0)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        if self.n == 0:
            return {}
        last = candidates[-self.n :]
        k = len(last)
        return {s.prefix: f"keep_last={self.n}: {_ordinal(k - i)}" for i, s in enumerate(last)}

    def describe(self) -> str:
        return f"keep the last {self.n}"


@dataclass(frozen=True)
class KeepEveryNHours(_Fields):
    """TF's ``keep_checkpoint_every_n_hours`` (``CheckpointManager._sweep``).

    Walking oldest to newest from the state file's ``last_preserved_timestamp``, a step whose
    ``timestamp - hours*3600 >= last_preserved`` is preserved and becomes the new
    ``last_preserved``. Steps saved at or before the recorded ``last_preserved_timestamp`` were
    already judged by TF (which stops managing them) and are kept; so are steps that
    :func:`judged_by_tf` finds. The walk is reported in ``ctx.sweep``: the planner advances the
    timestamp only through steps whose fate is settled, so a TF trainer restarted on the rewritten
    state file makes the same choices. (``tf.compat.v1.train.Saver`` records no timestamps; with
    no ``last_preserved_timestamp`` the walk starts at the oldest step, which is preserved.)

    ``start`` overrides the state file's ``last_preserved_timestamp``. ``clock_skew_s`` is the
    slack for steps whose time comes from a file mtime rather than the state file (an object
    store's clock is not the trainer's): such a step up to that much after ``last_preserved``
    still counts as already preserved by TF.
    """

    hours: float
    start: float | None = None
    clock_skew_s: float = 120.0
    name: ClassVar[str] = "keep_every_hours"
    needs: ClassVar[PolicyNeeds] = PolicyNeeds(last_preserved=True)

    def __post_init__(self) -> None:
        h = self.hours
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise RetentionError(f"keep_every_hours must be a positive number of hours, not {h!r}")
        if self.clock_skew_s < 0:
            raise RetentionError(f"clock_skew_s must be >= 0, not {self.clock_skew_s!r}")

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        start = self.start if self.start is not None else ctx.last_preserved_timestamp
        if start is not None:
            start = min(start, ctx.now)  # TF: time went backwards -> clamp to now
        lp, period, every = start, self.hours * 3600.0, f"every {self.hours:g}h"
        keeps: Keeps = {}
        advance: dict[str, float] = {}
        earlier: set[str] = set()
        judged = judged_by_tf(ctx)
        for s in candidates:
            ts = None if s.timestamp is None else min(s.timestamp, ctx.now)
            if s.prefix in judged:
                keeps[s.prefix] = f"{every}: {_JUDGED}"
                earlier.add(s.prefix)
            elif ts is None:
                keeps[s.prefix] = f"{every}: no timestamp, cannot be judged"
            elif start is not None and ts <= start + (
                self.clock_skew_s if s.timestamp_source != "state" else 0.0
            ):
                keeps[s.prefix] = (
                    f"{every}: saved {iso_utc(ts)}, at or before "
                    f"last_preserved_timestamp {iso_utc(start)} (already preserved by TF)"
                )
                earlier.add(s.prefix)
            elif lp is None or ts - period >= lp:
                since = (
                    "oldest step (no last_preserved_timestamp recorded)"
                    if lp is None
                    else (f"{(ts - lp) / 3600:.2f}h after the last preserved")
                )
                keeps[s.prefix] = f"{every}: saved {iso_utc(ts)}, {since}"
                advance[s.prefix] = lp = ts
        ctx.sweep = Sweep(advance, frozenset(earlier))
        return keeps

    def describe(self) -> str:
        return f"keep one every {self.hours:g} hours"


_JUDGED = (
    "older than every step the state file names, which records save times and a "
    "last_preserved_timestamp: TF's CheckpointManager already judged it and left it "
    "(already preserved by TF)"
)


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
class KeepEveryNSteps(_Fields):
    """Steps whose number is a multiple of ``n``."""

    n: int
    name: ClassVar[str] = "keep_every_steps"
    needs: ClassVar[PolicyNeeds] = PolicyNeeds()

    def __post_init__(self) -> None:
        _check_int("keep_every_steps", self.n, 1)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        why = f"every {self.n} steps"
        return {s.prefix: why for s in candidates if s.step is not None and s.step % self.n == 0}

    def describe(self) -> str:
        return f"keep every {self.n}th step"


@dataclass(frozen=True)
class KeepBestK(_Fields):
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

    @property
    def needs(self) -> PolicyNeeds:
        return PolicyNeeds(evaluators=(self.evaluator,))

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

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        sign = 1.0 if self.mode == "min" else -1.0
        metrics = ctx.metrics_of(self.evaluator)
        scored: list[tuple[float, int, CheckpointStep]] = []  # (signed value, -age rank, step)
        pending: list[tuple[int, CheckpointStep]] = []
        newest_eval = -1
        for i, s in enumerate(candidates):
            m = metrics.get(s.prefix)
            v = None if m is None else m.get(self.metric)
            if v is None:
                pending.append((i, s))
                continue
            newest_eval = i
            if math.isfinite(v):  # NaN and +-inf: evaluated, never best
                scored.append((sign * v, -i, s))
        scored.sort(key=lambda x: (x[0], x[1]))
        out: Keeps = {}
        for rank, (v, _, s) in enumerate(scored[: self.k], 1):
            out[s.prefix] = (
                f"best {self.k} by {self.metric} ({self.mode}): #{rank}, {self.metric}={sign * v:g}"
            )
        if self.unevaluated != "drop":
            for i, s in pending:
                if self.unevaluated == "keep" or i > newest_eval:
                    out[s.prefix] = f"unevaluated: no {self.metric} metric yet"
        return out

    def describe(self) -> str:
        by = f" of {self.evaluator}" if self.evaluator else ""
        return f"keep the best {self.k} by {self.metric}{by} ({self.mode})"


@dataclass(frozen=True, init=False)
class KeepUnevaluated(_Fields):
    """Steps that one of ``evaluators`` has not evaluated yet (no metrics sidecar of it), for at
    most ``max_age_s`` seconds after the step was saved (``None``: no bound).

    So GC and evaluation coexist: an evaluator that is behind (a burst of saves, a paused DAG)
    still finds its steps. The bound keeps a dead evaluator from holding every step forever; a
    step past it is reported in the plan's problems and left to the other policies. A step with
    no known save time is held (its age cannot be judged). ``None`` in ``evaluators`` is the
    default evaluator (``PREFIX.metrics.json``).
    """

    evaluators: tuple[str | None, ...]
    max_age_s: float | None = 86400.0
    name: ClassVar[str] = "keep_unevaluated"

    def __init__(self, evaluators: Iterable[str | None], max_age_s: float | None = 86400.0) -> None:
        evs = tuple(dict.fromkeys([evaluators] if isinstance(evaluators, str) else evaluators))
        if not evs:
            raise RetentionError("keep_unevaluated needs at least one evaluator name")
        for ev in evs:
            _check_evaluator(ev)
        object.__setattr__(self, "evaluators", evs)
        object.__setattr__(self, "max_age_s", _check_max_age(max_age_s))

    @property
    def needs(self) -> PolicyNeeds:
        return PolicyNeeds(evaluators=self.evaluators)

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        out: Keeps = {}
        bound = "no age bound" if self.max_age_s is None else f"held up to {_age(self.max_age_s)}"
        for s in candidates:
            done = ctx.evaluations.get(s.prefix, {})
            missing = ", ".join(ev or "(default)" for ev in self.evaluators if ev not in done)
            if not missing:
                continue
            if s.timestamp is None:
                out[s.prefix] = f"unevaluated by {missing} (save time unknown)"
                continue
            age = ctx.now - s.timestamp
            if self.max_age_s is not None and age > self.max_age_s:
                ctx.problems.append(
                    f"{s.prefix}: not evaluated by {missing} {_age(age)} after its save; no longer held for it"
                )
                continue
            out[s.prefix] = f"unevaluated by {missing} (saved {_age(age)} ago, {bound})"
        return out

    def describe(self) -> str:
        return "keep steps not yet evaluated by " + ", ".join(ev or "(default)" for ev in self.evaluators)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "evaluators": list(self.evaluators), "max_age_s": self.max_age_s}


@dataclass(frozen=True, init=False)
class KeepPinned(_Fields):
    """Steps pinned by number or by prefix name (held even when incomplete)."""

    steps: frozenset[int | str]
    name: ClassVar[str] = "pinned"
    needs: ClassVar[PolicyNeeds] = PolicyNeeds(all_steps=True)

    def __init__(self, steps: Iterable[int | str]) -> None:
        object.__setattr__(self, "steps", frozenset(map(_pin, steps)))

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        return {s.prefix: "pinned" for s in candidates if s.prefix in self.steps or s.step in self.steps}

    def describe(self) -> str:
        return "pinned: " + ", ".join(sorted(map(str, self.steps)))


def _pin(p: object) -> int | str:
    """A step number or a prefix name (digits in text are a step number)."""
    if isinstance(p, int) and not isinstance(p, bool):
        if p < 0:
            raise RetentionError(f"pin {p} is negative")
        return p
    if isinstance(p, str) and p.strip():
        text = p.strip()
        return int(text) if text.isdigit() else text
    raise RetentionError(f"pin {p!r} is not a step number or prefix")


@dataclass(frozen=True)
class KeepPromoted(_Fields):
    """Steps recorded in the source dir's ``PROMOTIONS.json`` (see
    :func:`~airflow_tf_ckpt.core.sidecars.promotions.record_promotion`).

    Only the current holder of each destination (and of each destination alias) counts unless
    ``include_superseded``. Not a retention policy on its own (``needs.retains`` is False): with
    it alone GC would delete every unpromoted step but the newest.
    """

    include_superseded: bool = False
    name: ClassVar[str] = "promoted"

    @property
    def needs(self) -> PolicyNeeds:
        return PolicyNeeds(
            promotions=True, include_superseded=self.include_superseded, all_steps=True, retains=False
        )

    def select(self, candidates: Sequence[CheckpointStep], ctx: PolicyContext) -> Keeps:
        out: Keeps = {}
        if not ctx.promotions:
            return out
        for s in candidates:
            recs = ctx.promotions.get(s.prefix)
            if recs:
                out[s.prefix] = "promoted to " + "; ".join(map(_promoted_to, recs))
        return out

    def describe(self) -> str:
        return "keep promoted steps"


def _promoted_to(record: Mapping[str, Any]) -> str:
    alias = record.get("alias")
    return f"{record.get('dest')}" + (f" as {alias!r}" if alias else "")


# --------------------------------------------------------------------------------------------
# from options, and checks


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
    if mode not in ("min", "max"):
        raise RetentionError(f"mode must be 'min' or 'max', not {mode!r}")
    out: list[RetentionPolicy] = []
    if keep_last is not None:
        out.append(KeepLastN(keep_last))
    if keep_every_hours is not None:
        out.append(KeepEveryNHours(keep_every_hours))
    if keep_every_steps is not None:
        out.append(KeepEveryNSteps(keep_every_steps))
    out += _best_from_options(keep_best, metric, mode, unevaluated, evaluator)
    evaluators = [keep_unevaluated] if isinstance(keep_unevaluated, str) else list(keep_unevaluated or ())
    if evaluators:
        out.append(KeepUnevaluated(evaluators, unevaluated_max_age))
    pins = list(pins or ())
    if pins:
        out.append(KeepPinned(pins))
    if out and keep_promoted:
        out.append(KeepPromoted())
    return out


def _best_from_options(
    keep_best: int | None, metric: str | None, mode: str, unevaluated: str, evaluator: str | None
) -> list[RetentionPolicy]:
    if keep_best is not None:
        if not metric:
            raise RetentionError("keep_best needs a metric name (which metric ranks the steps?)")
        return [KeepBestK(keep_best, metric, mode, unevaluated, evaluator)]
    if metric:
        raise RetentionError(f"metric {metric!r} given without keep_best: it would have no effect")
    if evaluator:
        raise RetentionError(
            f"evaluator {evaluator!r} given without keep_best: it would have no effect "
            "(keep_unevaluated names its own evaluators)"
        )
    return []


def check_policies(policies: Iterable[RetentionPolicy]) -> tuple[RetentionPolicy, ...]:
    """The policies as a tuple, or :class:`RetentionError` when they make no retention request."""
    ps = tuple(policies)
    for p in ps:
        if not isinstance(p, RetentionPolicy):
            raise RetentionError(f"{p!r} is not a retention policy")
    if not any(p.needs.retains for p in ps):
        raise RetentionError(
            "no retention policy: refusing to plan (guards alone would delete every step "
            "but the newest); give keep_last, keep_every_hours, keep_every_steps, "
            "keep_best or pins"
        )
    if sum(p.needs.last_preserved for p in ps) > 1:
        raise RetentionError(
            "more than one keep_every_hours policy: the state file records a single last_preserved_timestamp"
        )
    return ps


def tracks_last_preserved(policies: Iterable[RetentionPolicy]) -> bool:
    """Whether one of ``policies`` walks (and so may advance) ``last_preserved_timestamp``."""
    return any(p.needs.last_preserved for p in policies)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.I)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"24h"`` or ``"2d"``; RetentionError otherwise."""
    m = _DURATION.match(text)
    if not m:
        raise RetentionError(f"{text!r} is not a duration (e.g. 90, 90s, 30m, 24h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2).lower()]


def _check_int(what: str, n: Any, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise RetentionError(f"{what} must be a whole number, not {n!r}")
    if n < minimum:
        raise RetentionError(f"{what} must be >= {minimum}, not {n}")


def _check_max_age(age: Any) -> float | None:
    if age is None:
        return None
    if isinstance(age, bool) or not isinstance(age, (int, float)) or not math.isfinite(age) or age <= 0:
        raise RetentionError(f"unevaluated_max_age must be a positive number of seconds, not {age!r}")
    return float(age)


def _check_evaluator(evaluator: str | None) -> None:
    from airflow_tf_ckpt.core.sidecars.metrics import MetricsError, check_evaluator

    try:
        check_evaluator(evaluator)
    except MetricsError as exc:
        raise RetentionError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# wording


def _ordinal(n: int) -> str:
    """``newest``, ``2nd newest``, ``3rd newest``, ``11th newest``, ``21st newest``..."""
    if n == 1:
        return "newest"
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} newest"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{max(seconds, 0.0):.0f}s"
