"""Which checkpoint dirs the Checkpoints page shows: those the deployment's DAGs watch, plus
``[tf_ckpt] ui_dirs``.

The dirs come from the SERIALIZED DAGs (what the api-server already has in the metadata DB; no DAG
file is parsed or run here). A serialized task keeps its template fields, so these are read:

==============================  =========================================================
``CheckpointSensor``            ``dir`` (+ ``conn_id``, ``prefix``)
``CheckpointRetentionOperator`` ``ckpt_dir`` and its policy options (the GC plan's source)
other provider operators        ``ckpt_dir`` (validate, evaluate, promote, ...)
asset watchers                  a ``CheckpointEventTrigger``'s ``dir`` (+ ``conn_id``)
==============================  =========================================================

A templated value such as ``{{ params.ckpt_dir }}`` is rendered with the DAG's Param defaults only
(a sandboxed Jinja environment, strict undefined): a value that needs a run (``ti.xcom_pull``) is
left out, with a note. Operators do not serialize ``conn_id`` (it is no template field): a dir takes
the connection of a sensor or watcher of the same dir, else ``[tf_ckpt] ui_conn_id``.

Nothing here imports Airflow; :mod:`airflow_tf_ckpt.ui.app` feeds it the DB rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PROVIDER_MODULE = "airflow_tf_ckpt."
TRIGGER_CLASS = "airflow_tf_ckpt.triggers.checkpoint.CheckpointEventTrigger"
RETENTION_TYPE = "CheckpointRetentionOperator"
SENSOR_TYPE = "CheckpointSensor"
RETENTION_FIELDS = (
    "keep_last",
    "keep_every_hours",
    "keep_every_steps",
    "keep_best",
    "metric",
    "mode",
    "pins",
    "evaluator",
    "keep_unevaluated",
    "unevaluated_max_age",
)


@dataclass
class RetentionSpec:
    """The policies of one serialized ``CheckpointRetentionOperator`` (rendered from Param defaults)."""

    dag_id: str
    task_id: str
    prefix: str | None
    options: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.dag_id}.{self.task_id}"


@dataclass
class WatchedDir:
    """One dir the page may show. ``id`` is what requests name (never a path)."""

    url: str
    conn_id: str | None = None
    prefix: str | None = None
    used_by: list[str] = field(default_factory=list)  # "dag_id.task_id (CheckpointSensor)", "ui_dirs"
    retention: list[RetentionSpec] = field(default_factory=list)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        """What the page gets: the URL, who uses it, and the retention tasks (no connection extras)."""
        return {
            "id": self.id,
            "url": self.url,
            "conn_id": self.conn_id,
            "prefix": self.prefix,
            "used_by": self.used_by,
            "retention": [r.label for r in self.retention],
        }


@dataclass
class _Finding:
    url: str
    who: str
    conn_id: str | None = None
    prefix: str | None = None
    retention: RetentionSpec | None = None


def _unwrap(value: Any) -> Any:
    """A serialized value without its ``{"__type": ..., "__var": ...}`` wrappers (dicts, lists)."""
    if isinstance(value, dict):
        if "__var" in value and "__type" in value:
            return _unwrap(value["__var"])
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def param_defaults(dag: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: default}`` of a serialized DAG's Params (a list of ``[name, param]`` pairs)."""
    raw = dag.get("params") or []
    items = raw.items() if isinstance(raw, dict) else raw
    out: dict[str, Any] = {}
    for pair in items:
        try:
            name, p = pair
        except (TypeError, ValueError):
            continue
        p = _unwrap(p)
        out[str(name)] = p.get("default") if isinstance(p, dict) and "__class" in p else p
    return out


class Unresolved(ValueError):
    """A templated value that needs more than the DAG's Param defaults."""


def render(value: Any, params: Mapping[str, Any]) -> Any:
    """``value`` with ``{{ ... }}`` rendered from ``params`` only; :class:`Unresolved` otherwise.

    A value that is exactly one expression keeps the Param's type (``{{ params.keep_last }}`` -> 3).
    """
    if not isinstance(value, str) or "{{" not in value and "{%" not in value:
        return value
    from jinja2 import StrictUndefined
    from jinja2.exceptions import TemplateError
    from jinja2.nativetypes import NativeEnvironment
    from jinja2.sandbox import SandboxedEnvironment

    class _Native(SandboxedEnvironment, NativeEnvironment):
        pass

    try:
        return _Native(undefined=StrictUndefined).from_string(value).render(params=dict(params))
    except (TemplateError, TypeError, ValueError, AttributeError) as exc:
        raise Unresolved(f"{value!r}: {exc}") from None


def _tasks(dag: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for t in dag.get("tasks") or []:
        t = t.get("__var", t) if isinstance(t, dict) else None
        if isinstance(t, dict):
            yield t


def _watchers(node: Any) -> Iterator[dict[str, Any]]:
    """Every asset watcher's trigger dict anywhere in a serialized timetable / asset tree."""
    if isinstance(node, dict):
        for w in node.get("watchers") or []:
            if isinstance(w, dict) and isinstance(w.get("trigger"), dict):
                yield w["trigger"]
        for v in node.values():
            if isinstance(v, (dict, list)):
                yield from _watchers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _watchers(v)


def _task_field(task: Mapping[str, Any], name: str) -> Any:
    if name in task:
        return _unwrap(task[name])
    partial = _unwrap(task.get("partial_kwargs") or {})  # a mapped operator
    return partial.get(name) if isinstance(partial, dict) else None


def _findings(dag_id: str, dag: Mapping[str, Any], notes: list[str]) -> Iterator[_Finding]:
    params = param_defaults(dag)

    def rendered(value: Any, where: str) -> Any:
        try:
            return render(value, params)
        except Unresolved as exc:
            notes.append(f"{where}: not shown, its value needs a DAG run: {exc}")
            return None

    for task in _tasks(dag):
        if not str(task.get("_task_module", "")).startswith(PROVIDER_MODULE):
            continue
        ttype, tid = str(task.get("task_type")), str(task.get("task_id"))
        who = f"{dag_id}.{tid} ({ttype})"
        field_name = "dir" if ttype == SENSOR_TYPE else "ckpt_dir"
        url = rendered(_task_field(task, field_name), who)
        if not url or not isinstance(url, str):
            continue
        prefix = rendered(_task_field(task, "prefix"), who) or None
        conn = rendered(_task_field(task, "conn_id"), who) if ttype == SENSOR_TYPE else None
        spec = None
        if ttype == RETENTION_TYPE:
            opts = {k: rendered(_task_field(task, k), who) for k in RETENTION_FIELDS}
            spec = RetentionSpec(dag_id, tid, prefix, {k: v for k, v in opts.items() if v not in (None, "")})
        yield _Finding(url, who, conn or None, prefix, spec)
    for trig in _watchers(_unwrap(dag.get("timetable"))):
        if trig.get("classpath") != TRIGGER_CLASS:
            continue
        kw = trig.get("kwargs") or {}
        if kw.get("dir"):
            yield _Finding(
                str(kw["dir"]),
                f"{dag_id} (asset watcher)",
                kw.get("conn_id") or None,
                kw.get("prefix") or None,
            )


def normalize(url: str) -> str:
    """One spelling per dir: no trailing slash (``gs://b/x/`` and ``gs://b/x`` are one dir)."""
    url = url.strip()
    return url.rstrip("/") if len(url.rstrip("/")) > len("gs://") or "://" not in url else url


def watched_dirs(
    dags: Iterable[tuple[str, Mapping[str, Any]]],
    extra: Iterable[str] = (),
    default_conn_id: str | None = None,
    notes: list[str] | None = None,
) -> list[WatchedDir]:
    """The dirs of serialized DAGs (``(dag_id, data["dag"])`` pairs) plus ``extra`` URLs, in order."""
    notes = notes if notes is not None else []
    out: dict[str, WatchedDir] = {}
    for dag_id, dag in dags:
        for f in _findings(dag_id, dag, notes):
            w = out.setdefault(normalize(f.url), WatchedDir(normalize(f.url)))
            w.used_by.append(f.who)
            w.conn_id = w.conn_id or f.conn_id
            w.prefix = w.prefix or f.prefix
            if f.retention is not None:
                w.retention.append(f.retention)
    for url in extra:
        if url.strip():
            out.setdefault(normalize(url), WatchedDir(normalize(url))).used_by.append("[tf_ckpt] ui_dirs")
    for w in out.values():
        w.conn_id = w.conn_id or default_conn_id
    return list(out.values())


def split_dirs(value: str | None) -> list[str]:
    """``[tf_ckpt] ui_dirs``: URLs separated by commas or newlines."""
    return [p.strip() for p in (value or "").replace("\n", ",").split(",") if p.strip()]
