"""The Checkpoints page's data: core results (discovery, metrics, the retention plan as a dry run,
quarantine records, promotions) turned into small JSON-ready dicts. No Airflow import, no writes.

Each function takes a :class:`CheckpointDir` discovered once per request burst (the app caches it a
few seconds), so the summary, a page of steps, the plot and the plan share one listing. Only what a
view shows is read: a page of steps reads the leases of its own rows, not those of 10,000 steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.formats.naming import QUARANTINE_SUFFIX, classify
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import RetentionPolicy
from airflow_tf_ckpt.core.sidecars.leases import read_leases
from airflow_tf_ckpt.core.sidecars.metrics import evaluation_records, read_files
from airflow_tf_ckpt.core.sidecars.promotions import PROMOTIONS_FILENAME, current_promotions, read_promotions
from airflow_tf_ckpt.core.steps.discovery import SHOWN_STATUSES, CheckpointDir, CheckpointStep
from airflow_tf_ckpt.core.verify.report import problem_line

# PREFIX.metrics.json, the sidecar of evaluations that name no evaluator; parentheses are not
# allowed in evaluator names, so this label never clashes with one
DEFAULT_EVALUATOR = "(default)"
MAX_PAGE = 500


def _ordered(cdir: CheckpointDir) -> list[CheckpointStep]:
    """Newest first: by step number, then timestamp (unnumbered steps last)."""
    return sorted(
        cdir.steps,
        key=lambda s: (s.step is not None, s.step or 0, s.timestamp or 0.0, s.prefix),
        reverse=True,
    )


def promotions(cdir: CheckpointDir) -> dict[str, Any]:
    """``PROMOTIONS.json`` of the dir: every record, marked ``current`` where it still holds."""
    if PROMOTIONS_FILENAME not in cdir.listing:
        return {"records": [], "by_prefix": {}}
    records = read_promotions(cdir.location)
    current = current_promotions(records)
    now_ids = {
        (r["prefix"], r.get("dest"), r.get("alias"), r.get("time")) for rs in current.values() for r in rs
    }
    out = [
        {
            "prefix": r.get("prefix"),
            "step": r.get("step"),
            "dest": r.get("dest"),
            "alias": r.get("alias"),
            "time": r.get("time"),
            "current": (r.get("prefix"), r.get("dest"), r.get("alias"), r.get("time")) in now_ids,
        }
        for r in reversed(records)
    ]
    by_prefix = {p: sorted({r.get("alias") or "(no alias)" for r in rs}) for p, rs in current.items()}
    return {"records": out, "by_prefix": by_prefix}


def summary(cdir: CheckpointDir, prefix: str | None = None) -> dict[str, Any]:
    """Counts per status, total size, the latest step, the dir's problems (cheap: listing only)."""
    counts = dict.fromkeys(SHOWN_STATUSES, 0)
    size = 0
    for s in cdir.steps:
        counts[s.shown_status] += 1
        size += s.size
    latest = cdir.latest(prefix)
    return {
        "dir": cdir.location.display(),
        "steps": len(cdir.steps),
        "counts": counts,
        "bytes": size,
        "latest": latest.prefix if latest else None,
        "problems": cdir.problems[:50],
        "problem_count": len(cdir.problems),
    }


def step_rows(
    cdir: CheckpointDir, offset: int = 0, limit: int = 50, status: str | None = None, now: float | None = None
) -> dict[str, Any]:
    """One page of steps, newest first, with each row's leases and promotion aliases."""
    limit = max(1, min(int(limit), MAX_PAGE))
    steps = [s for s in _ordered(cdir) if status in (None, "", "all") or s.shown_status == status]
    page = steps[max(0, int(offset)) : max(0, int(offset)) + limit]
    lease_names = [f.name for s in page for f in s.leases]
    leases = read_leases(cdir, lease_names) if lease_names else {}
    promoted = promotions(cdir)["by_prefix"]
    t = time.time() if now is None else now
    rows = []
    for s in page:
        ls = [leases[f.name] for f in s.leases if f.name in leases]
        rows.append(
            {
                "prefix": s.prefix,
                "step": s.step,
                "status": s.shown_status,
                "size": s.size,
                "saved": s.timestamp,
                "latest": s.latest,
                "in_state": s.in_state,
                "leases": [
                    {"owner": lease.owner, "expires": lease.expires, "active": lease.active(t)}
                    for lease in ls
                ],
                "promoted": promoted.get(s.prefix, []),
                "missing": s.missing[:5],
                "problems": s.problems[:5],
                "has_metrics": any(_is_metrics(f.name) for f in s.sidecars),
            }
        )
    return {"total": len(steps), "offset": int(offset), "limit": limit, "rows": rows}


def _is_metrics(name: str) -> bool:
    role = classify(name)
    return role is not None and role.role == "metrics"


def evaluator_records(
    cdir: CheckpointDir,
    problems: list[str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """THE adapter for "metrics of each step, per evaluator": ``{prefix: {evaluator: record}}``.

    A record has ``metrics`` (floats), ``evaluations`` and ``time``; the default sidecar
    (``PREFIX.metrics.json``) is shown as evaluator :data:`DEFAULT_EVALUATOR`, the others
    (``PREFIX.metrics~NAME.json``) under their names. Built on ``core.metrics.evaluation_records``.
    """
    return {
        p: {DEFAULT_EVALUATOR if ev is None else ev: r for ev, r in by_ev.items()}
        for p, by_ev in evaluation_records(cdir, problems=problems).items()
    }


def metrics_series(cdir: CheckpointDir) -> dict[str, Any]:
    """Series for the plot: ``{evaluator: {metric: [[step, value], ...]}}``, oldest step first."""
    problems: list[str] = []
    per = evaluator_records(cdir, problems)
    numbers = {s.prefix: s.step for s in cdir.steps}
    series: dict[str, dict[str, list[list[float]]]] = {}
    for prefix, by_eval in per.items():
        step = numbers.get(prefix)
        if step is None:
            continue
        for ev, record in by_eval.items():
            for name, v in record["metrics"].items():
                if v == v and abs(v) != float("inf"):  # JSON has no NaN: a diverged value is left out
                    series.setdefault(ev, {}).setdefault(name, []).append([step, v])
    for by_name in series.values():
        for pts in by_name.values():
            pts.sort()
    quarantined = sorted(s.step for s in cdir.steps if s.quarantined and s.step is not None)
    return {
        "evaluators": sorted(series),
        "series": series,
        "evaluated_steps": len(per),
        "quarantined": quarantined,
        "problems": problems[:50],
    }


def step_metrics(cdir: CheckpointDir, prefix: str) -> dict[str, dict[str, Any]]:
    """One step's metrics per evaluator, with how often each evaluated it (the drill-down)."""
    one = [s for s in cdir.steps if s.prefix == prefix]
    if not one:
        return {}
    sub = CheckpointDir(
        cdir.location, cdir.state, one, listing=cdir.listing, state_filename=cdir.state_filename
    )
    return {
        ev: {
            "metrics": {
                k: v if v == v and abs(v) != float("inf") else str(v) for k, v in r["metrics"].items()
            },
            "evaluations": r.get("evaluations"),
            "time": r.get("time"),
        }
        for ev, r in sorted(evaluator_records(sub, []).get(prefix, {}).items())
    }


def retention_plan(
    cdir: CheckpointDir, label: str, policies: Any, prefix: str | None, now: float | None = None
) -> dict[str, Any]:
    """A dry run of one retention task's policies: keep/delete per step and why. Deletes nothing.

    ``policies``: a list of core policies, or a zero-argument callable that builds them (its
    errors, such as a task with no policy, are reported in the result like the plan's own).
    """
    try:
        ps: list[RetentionPolicy] = list(policies() if callable(policies) else policies)
        plan = plan_retention(cdir, ps, prefix=prefix, now=now)
    except (CheckpointError, ValueError, TypeError) as exc:
        return {"task": label, "error": str(exc), "decisions": [], "counts": {}}
    decisions = sorted(plan.decisions, key=lambda d: (d.step is not None, d.step or 0), reverse=True)
    return {
        "task": label,
        "policies": [p.describe() for p in plan.policies],
        "counts": {"keep": len(plan.kept), "delete": len(plan.deleted), "bytes": plan.bytes_to_free},
        "decisions": [[d.step, d.prefix, d.action, "; ".join(d.reasons)] for d in decisions],
        "state_file_rewritten": plan.state_changed,
        "problems": plan.problems[:50],
    }


def quarantine_records(cdir: CheckpointDir) -> list[dict[str, Any]]:
    """The ``PREFIX.quarantine.json`` records of the dir, newest first, with their reasons."""
    names = sorted(n for n in cdir.listing if n.endswith(QUARANTINE_SUFFIX))
    out = []
    for name, data in read_files(cdir.location, names).items():
        rec: dict[str, Any] = {"file": name, "prefix": name[: -len(QUARANTINE_SUFFIX)]}
        try:
            if isinstance(data, Exception):
                raise ValueError(f"unreadable: {data}")
            d = json.loads(data.decode("utf-8"))
            rec.update(
                step=d.get("step"),
                reason=d.get("reason"),
                time=d.get("time"),
                report_problems=_report_problems(d.get("report")),
            )
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            rec.update(reason=None, error=f"{cdir.location.display(name)}: {exc}")
        out.append(rec)
    return sorted(out, key=lambda r: r.get("time") or 0, reverse=True)


def _report_problems(report: Any) -> list[str]:
    if not isinstance(report, dict):
        return []
    probs = report.get("problems") or report.get("errors") or []
    if not isinstance(probs, Sequence) or isinstance(probs, str):
        return []
    return [problem_line(p) for p in probs[:10]]


def destination_aliases(records: Sequence[Mapping[str, Any]], open_location: Any) -> list[dict[str, Any]]:
    """The aliases found at each destination of the current promotions (``DEST/aliases/*.json``).

    ``open_location(url)`` gives the destination's Location (through the same hook as the dir). A
    destination that cannot be read is reported with its error, not raised.
    """
    from airflow_tf_ckpt.core.promote.manifest import list_aliases

    out = []
    for dest in dict.fromkeys(str(r.get("dest")) for r in records if r.get("current") and r.get("dest")):
        try:
            aliases = list_aliases(open_location(dest))
            out.append(
                {
                    "dest": dest,
                    "aliases": {a: {"prefix": m.prefix, "step": m.step} for a, m in sorted(aliases.items())},
                }
            )
        except (CheckpointError, OSError, ValueError) as exc:
            out.append({"dest": dest, "aliases": {}, "error": f"{type(exc).__name__}: {exc}"[:500]})
    return out


def preliminary(state: Any, base: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """First paint before the listing is in: the summary and a page of rows from the state file alone.

    One small read, whatever the dir holds: the steps TF's state file names (committed in TF's
    view), newest first, with their timestamps. Sizes, leases, orphans, incomplete and quarantined
    steps need the listing, which the page fetches next (``preliminary`` tells it to).
    """
    import posixpath

    from airflow_tf_ckpt.core.formats.naming import parse_prefix

    paths = (
        []
        if state is None
        else list(dict.fromkeys(state.all_model_checkpoint_paths + [state.model_checkpoint_path]))
    )
    stamps = {} if state is None else state.timestamps_by_path()
    latest = None if state is None else posixpath.basename(state.model_checkpoint_path.rstrip("/"))
    # (step, name, raw) for every step, and a dict only for the page's rows: 10,000 row dicts cost
    # more than the whole state file's download and parse on a loaded machine
    found: list[tuple[int | None, str, str]] = []
    for raw in paths:
        name = raw.rstrip("/").rpartition("/")[2]
        parsed = parse_prefix(name)
        if name and (base is None or parsed.base == base):
            found.append((parsed.step, name, raw))
    found.sort(key=lambda f: (f[0] is not None, f[0] or 0), reverse=True)
    limit = max(1, min(int(limit), MAX_PAGE))
    rows: list[dict[str, Any]] = [
        {
            "prefix": name,
            "step": step,
            "status": "committed",
            "size": None,
            "saved": stamps.get(raw),
            "latest": name == latest,
            "in_state": True,
            "leases": [],
            "promoted": [],
            "missing": [],
            "problems": [],
            "has_metrics": False,
        }
        for step, name, raw in found[offset : offset + limit]
    ]
    return {
        "preliminary": True,
        "total": len(found),
        "offset": offset,
        "limit": limit,
        "rows": rows,
        "summary": {
            "steps": len(found),
            "counts": {"committed": len(found)},
            "bytes": None,
            "latest": latest if found else None,
            "problems": [],
            "problem_count": 0,
        },
    }
