"""A real Airflow deployment on this machine: scheduler, triggerer, dag-processor and api-server.

Used by ``make demo`` (``scripts/airflow_demo.py``), ``make up`` / ``make down``, the end-to-end
tests (``tests/test_real_deployment.py``) and ``bench/latency.py``. It is what the README's
standalone recipe does, spelled out:

* one ``AIRFLOW_HOME`` with an embedded SQLite DB and the LocalExecutor;
* everything on 127.0.0.1: the api-server gets ``[api] host = 127.0.0.1`` and a free port; the
  scheduler's and the triggerer's log servers are not started (``--skip-serve-logs``: Airflow 3.3
  binds them to every interface whatever the config says, and with a LocalExecutor on one machine
  the api-server reads the task and trigger logs from the shared log folder anyway);
* the simple auth manager with one ``admin`` user and a generated password (in
  ``simple_auth_manager_passwords.json.generated``, as ``airflow standalone`` does);
* ``[tf_ckpt] triggerer_gc_freeze = True`` and a short ``poll_interval``.

Each component is started with ``start_new_session`` (its own process group) and stopped by
signalling the whole group, so the api-server's workers and the LocalExecutor's task processes go
with it. The REST API is driven with plain ``urllib`` (token from ``POST /auth/token``).

This module imports neither Airflow nor TensorFlow: the components are subprocesses with their
own environment, so a test session with another ``AIRFLOW_HOME`` can drive one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("scheduler", "dag-processor", "triggerer", "api-server")
TERMINAL = {"success", "failed"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def airflow_bin() -> str:
    return str(Path(sys.executable).with_name("airflow"))


@dataclass
class Deployment:
    """One deployment under ``root``: ``root/airflow_home`` and the demo data in ``root/data``.

    ``extra_env`` overrides any variable (e.g. ``AIRFLOW__TF_CKPT__POLL_INTERVAL``,
    ``TF_CKPT_DEMO_GC_SCHEDULE``).
    """

    root: Path
    dags_folder: Path = REPO / "dags"
    poll_interval: float = 2.0
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    password: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _token: str | None = None
    _token_time: float = 0.0

    # ------------------------------------------------------------------ layout

    @property
    def home(self) -> Path:
        return self.root / "airflow_home"

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def ckpt_dir(self) -> Path:
        return self.data_root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "component_logs"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment of every component (and of ``airflow`` CLI calls)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AIRFLOW")
            and k not in ("TF_CKPT_CONN_ID", "STORAGE_EMULATOR_HOST", "TF_CKPT_DEMO_DIR")
        }
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                    self.home / "simple_auth_manager_passwords.json.generated"
                ),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
                "AIRFLOW__API__SECRET_KEY": self._secret("secret_key"),
                # never started (--skip-serve-logs), but never the well-known ports either
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": self._secret("worker_log_port"),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": self._secret("trigger_log_port"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                # a busy 2-core machine: the api-server may answer a worker after more than 5 s
                "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
                "AIRFLOW__TF_CKPT__TRIGGERER_GC_FREEZE": "True",
                "AIRFLOW__TF_CKPT__POLL_INTERVAL": str(self.poll_interval),
                "TF_CKPT_DEMO_DIR": str(self.data_root),
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _secret(self, name: str) -> str:
        """Secrets and ports fixed at :meth:`prepare`, kept in ``root/deployment.json``."""
        return str(self._saved()[name])

    def _saved(self) -> dict[str, Any]:
        path = self.root / "deployment.json"
        return json.loads(path.read_text()) if path.exists() else {}

    @classmethod
    def attach(cls, root: Path, **kwargs: Any) -> Deployment:
        """The deployment :meth:`prepare` made under ``root`` (``make down``, a second driver)."""
        dep = cls(root=root, **kwargs)
        saved = dep._saved()
        if not saved:
            raise FileNotFoundError(f"no deployment under {root} (no deployment.json)")
        dep.port, dep.password = int(saved["port"]), str(saved["password"])
        return dep

    # ------------------------------------------------------------------ lifecycle

    def prepare(self) -> None:
        """A fresh home: ports, secrets, the admin password, ``airflow db migrate``."""
        self.port = self.port or free_port()
        self.password = self.password or secrets.token_urlsafe(12)
        for d in (self.home, self.logs, self.data_root):
            d.mkdir(parents=True, exist_ok=True)
        saved = {
            "port": self.port,
            "password": self.password,
            "jwt_secret": secrets.token_urlsafe(64),
            "secret_key": secrets.token_urlsafe(16),
            "worker_log_port": free_port(),
            "trigger_log_port": free_port(),
            "pgids": {},
        }
        (self.root / "deployment.json").write_text(json.dumps(saved, indent=1))
        (self.home / "simple_auth_manager_passwords.json.generated").write_text(
            json.dumps({"admin": self.password})
        )
        self.airflow("db", "migrate", timeout=300)

    def airflow(self, *args: str, timeout: float = 120) -> str:
        """One ``airflow`` CLI call (20 s or so each: use the REST API where it can)."""
        proc = subprocess.run(
            [airflow_bin(), *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout

    def start(self, components: Iterable[str] = COMPONENTS, timeout: float = 600) -> None:
        """Start the components (each in its own process group) and wait for the REST API."""
        env = self.env()
        for name in components:
            args = [airflow_bin(), name]
            if name in ("scheduler", "triggerer"):
                args.append("--skip-serve-logs")
            if name == "api-server":
                args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
            self.spawn(name, args, env)
        self._record_pgids()
        self.wait_api(timeout)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        """Start one component in its own process group, its output in ``LOGS/NAME.log``."""
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[name] = subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def _record_pgids(self) -> None:
        saved = self._saved()
        saved["pgids"] = {name: p.pid for name, p in self.procs.items()}
        saved["started"] = {name: _start_time(p.pid) for name, p in self.procs.items()}
        (self.root / "deployment.json").write_text(json.dumps(saved, indent=1))

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            tails = "\n".join(f"--- {n}.log\n{self.log_tail(n)}" for n in dead)
            raise RuntimeError(f"Airflow component(s) exited: {dead}\n{tails}")

    def log_tail(self, name: str, n: int = 40) -> str:
        path = self.logs / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(lines[-n:])

    def wait_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                self.token(refresh=True)
                self._warm_execution_api()
                return
            except (OSError, urllib.error.URLError, RuntimeError):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the api-server did not answer on {self.url} in {timeout:.0f} s:\n"
                        + self.log_tail("api-server")
                    ) from None
                time.sleep(1)

    def _warm_execution_api(self) -> None:
        """The api-server builds its versioned Execution API on first use (seconds of CPU, during
        which it answers nothing): pay that before any task starts."""
        req = urllib.request.Request(f"{self.url}/execution/health")
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()

    def saved_groups(self) -> list[int]:
        """The process groups ``deployment.json`` records that are still alive AND still ours.

        A leader that is still there must have the start time recorded with it: a recorded id the
        kernel has since given to an unrelated process is never signalled. A group whose leader has
        exited but whose members live on is ours: Linux does not reuse a pid still in use as a
        process group id.
        """
        saved = self._saved()
        started = saved.get("started", {})
        out = []
        for name, pid in saved.get("pgids", {}).items():
            now = _start_time(int(pid))
            if (now is not None and now == started.get(name)) or (now is None and _group_alive(int(pid))):
                out.append(int(pid))
        return out

    def stop(self, grace: float = 20) -> int:
        """SIGTERM every component's process group, then SIGKILL what is left after ``grace``;
        forget the recorded groups. Returns how many groups were signalled."""
        groups: list[Any] = list(self.procs.values()) or self.saved_groups()
        stop_groups(groups, grace)
        self.procs.clear()
        if self._saved().get("pgids"):
            self._record_pgids()  # none left
        return len(groups)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ REST API

    def token(self, refresh: bool = False) -> str:
        if refresh or self._token is None or time.monotonic() - self._token_time > 600:
            body = json.dumps({"username": "admin", "password": self.password}).encode()
            req = urllib.request.Request(
                f"{self.url}/auth/token",
                data=body,
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                self._token = str(json.load(resp)["access_token"])
            self._token_time = time.monotonic()
        return self._token

    def api(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        """``/api/v2`` + ``path``; JSON in, JSON out; an HTTP error raises with the server's answer."""
        q = ("?" + urllib.parse.urlencode(query, doseq=True)) if query else ""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/api/v2{path}{q}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token()}"},
        )
        for attempt in range(3 if method == "GET" else 1):  # only reads are retried
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from None
            except (TimeoutError, urllib.error.URLError):
                if attempt == 2 or method != "GET":
                    raise
                time.sleep(2)
        raise AssertionError("unreachable")

    def wait_dags(self, dag_ids: Iterable[str], timeout: float = 180) -> None:
        """Until the dag-processor has parsed every DAG (and none has an import error)."""
        want = set(dag_ids)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            errors = self.api("GET", "/importErrors").get("import_errors", [])
            if errors:
                raise RuntimeError("DAG import errors: " + json.dumps(errors)[:3000])
            have = {d["dag_id"] for d in self.api("GET", "/dags", limit=100).get("dags", [])}
            if want <= have:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"DAGs not parsed in {timeout:.0f} s: {sorted(want - have)}")
            time.sleep(2)

    def unpause(self, dag_id: str, paused: bool = False) -> None:
        self.api("PATCH", f"/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.api(
                "GET", f"/dags/{dag_id}/dagRuns", limit=100, offset=len(out), order_by="run_after"
            )
            out += page.get("dag_runs", [])
            if len(out) >= page.get("total_entries", 0) or not page.get("dag_runs"):
                return out

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return list(self.api("GET", path, limit=1000).get("task_instances", []))

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = (
            f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
            f"{task_id}/xcomEntries/return_value"
        )
        return self.api("GET", path, map_index=map_index, deserialize=True).get("value")

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")
            if run["state"] in TERMINAL:
                return dict(run)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(1)


def stop_groups(procs: Iterable[Any], grace: float = 20) -> None:
    """Stop process groups (``Popen`` objects or saved group ids, for ``make down``) and every
    process they started: a task's process runs in a session of its own (Airflow's supervisor
    starts it so), so signalling the component's group would leave it running."""
    procs = list(procs)
    leaders = [p.pid if hasattr(p, "pid") else int(p) for p in procs]
    pgids = set(leaders)
    for pid in _descendants(leaders):
        pgids.add(_pgid(pid) or pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(_group_alive(g) for g in pgids):
            for p in procs:
                if hasattr(p, "poll"):
                    p.poll()
            time.sleep(0.2)
        if not any(_group_alive(g) for g in pgids):
            break
    for p in procs:  # reap our direct children
        if hasattr(p, "wait"):
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            table[int(entry)] = (int(fields[1]), int(fields[2]), fields[0])
    return table


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, ...); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(") ", 1)[1].split()
        int(fields[19])  # a whole line: through the start time
        return fields
    except (OSError, IndexError, ValueError):
        return None


def _descendants(roots: Iterable[int]) -> list[int]:
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    # the components' groups: leaders and their group members are roots too
    roots = set(roots) | {pid for pid, (_, pgid, _) in table.items() if pgid in set(roots)}
    out, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22); None if gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group whose leader is a zombie we have not reaped yet still "exists"
    try:
        with open(f"/proc/{pgid}/stat") as fh:
            if fh.read().split(") ", 1)[1].startswith("Z"):
                return _other_members(pgid)
    except (FileNotFoundError, IndexError):
        return _other_members(pgid)
    return True


def _other_members(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(") ", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
            continue
    return False


# ---------------------------------------------------------------------- what happened, from the API

EVAL_TASKS = {"tf_ckpt_evaluate_each_step": "evaluate", "tf_ckpt_event_driven": "check_and_evaluate.evaluate"}


@dataclass
class Ledger:
    """Everything the example DAGs did, read back through the REST API."""

    runs: dict[str, list[dict[str, Any]]]
    saved: list[int]  # every step the trainer committed, in order
    corrupted: list[int]
    save_times: dict[int, float]
    # evaluations[dag_id][step] = [(end_date, metrics), ...] of successful evaluate tasks
    evaluations: dict[str, dict[int, list[tuple[str, dict[str, Any]]]]]
    gc_deleted: list[tuple[str, list[int]]]  # (GC run start_date, deleted steps)
    failed_tasks: dict[str, list[str]] = field(default_factory=dict)  # run id -> its failed task ids

    def failed_runs(self) -> list[str]:
        return [
            f"{dag} {r['dag_run_id']} (failed task(s): {', '.join(self.failed_tasks.get(r['dag_run_id'], [])) or '?'})"
            for dag, rs in self.runs.items()
            for r in rs
            if r["state"] == "failed"
        ]

    def committed(self) -> list[int]:
        return [s for s in self.saved if s not in self.corrupted]

    def count(self, dag_id: str, step: int) -> int:
        return len(self.evaluations.get(dag_id, {}).get(step, []))

    def problems(self, eval_dags: Iterable[str] = tuple(EVAL_TASKS)) -> list[str]:
        """Each committed step evaluated exactly once by each DAG, the corrupt one never; no run
        failed; GC deleted no step before each DAG had evaluated it."""
        out = [f"run failed: {r}" for r in self.failed_runs()]
        for dag in eval_dags:
            wrong = {s: self.count(dag, s) for s in self.committed() if self.count(dag, s) != 1}
            if wrong:
                out.append(f"{dag}: steps not evaluated exactly once (step: times): {wrong}")
            bad = [s for s in self.corrupted if self.count(dag, s)]
            if bad:
                out.append(f"{dag} evaluated the corrupt step(s) {bad}")
        for started, steps in self.gc_deleted:
            for s in steps:
                for dag in eval_dags:
                    ends = [end for end, _ in self.evaluations.get(dag, {}).get(s, [])]
                    if not ends or min(ends) > started:
                        out.append(f"GC (run started {started}) deleted step {s} before {dag} evaluated it")
        return out


def read_ledger(
    dep: Deployment,
    train_dag: str = "tf_ckpt_train_demo",
    gc_dag: str = "tf_ckpt_gc",
    eval_dags: Iterable[str] = tuple(EVAL_TASKS),
) -> Ledger:
    runs = {d: dep.runs(d) for d in (train_dag, gc_dag, *eval_dags)}
    saved: list[int] = []
    corrupted: list[int] = []
    save_times: dict[int, float] = {}
    for r in runs[train_dag]:
        if r["state"] == "success":
            x = dep.xcom(train_dag, r["dag_run_id"], "train") or {}
            saved += x.get("steps", [])
            corrupted += x.get("corrupted", [])
            save_times.update({int(k): float(v) for k, v in (x.get("save_times") or {}).items()})
    evaluations: dict[str, dict[int, list[tuple[str, dict[str, Any]]]]] = {}
    for dag in eval_dags:
        per: dict[int, list[tuple[str, dict[str, Any]]]] = evaluations.setdefault(dag, {})
        for r in runs[dag]:
            for ti in dep.task_instances(dag, r["dag_run_id"]):
                if ti["task_id"] == EVAL_TASKS[dag] and ti["state"] == "success":
                    x = dep.xcom(dag, r["dag_run_id"], ti["task_id"], ti.get("map_index", -1)) or {}
                    per.setdefault(int(x["step"]), []).append((ti["end_date"], x.get("metrics", {})))
    gc_deleted = []
    for r in runs[gc_dag]:
        if r["state"] == "success":
            x = dep.xcom(gc_dag, r["dag_run_id"], "retention") or {}
            if x.get("deleted_steps") and not x.get("dry_run"):
                gc_deleted.append((r["start_date"], list(x["deleted_steps"])))
    failed_tasks = {
        r["dag_run_id"]: [
            ti["task_id"] for ti in dep.task_instances(dag, r["dag_run_id"]) if ti["state"] == "failed"
        ]
        for dag, rs in runs.items()
        for r in rs
        if r["state"] == "failed"
    }
    return Ledger(runs, saved, corrupted, save_times, evaluations, gc_deleted, failed_tasks)


def triggerer_blocks(dep: Deployment) -> dict[str, Any]:
    """The triggerer's "async thread was blocked" / "deadlocked" warnings, with their durations."""
    import re

    path = dep.logs / "triggerer.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    blocked = [line for line in text.splitlines() if "was blocked" in line]
    secs = []
    for line in blocked:
        m = re.search(r"blocked for ([0-9.]+)", line) or re.search(r"([0-9]+\.[0-9]+)\s*s", line)
        if m:
            secs.append(float(m.group(1)))
    deadlocked = [line for line in text.splitlines() if "deadlocked" in line]
    return {
        "blocked": len(blocked),
        "over_0_2s": sum(1 for s in secs if s > 0.2),
        "max_s": max(secs, default=0.0),
        "seconds": secs,
        "deadlocked": len(deadlocked),
        "lines": blocked[:20] + deadlocked[:5],
    }
