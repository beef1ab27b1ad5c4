"""A real CeleryExecutor deployment on loopback: Postgres, Redis and Airflow's components as processes.

``make stack`` / ``make stack-down`` / ``make stack-demo`` (``python scripts/stack.py up|down|demo``).
What it starts, everything on 127.0.0.1 on free ports:

* **Postgres** (Debian's ``postgresql`` package): a fresh cluster in a temp dir (``initdb``), a
  Unix socket in that dir and TCP on 127.0.0.1 only; run as the ``postgres`` user when we are root
  (Postgres refuses to run as root);
* **Redis** (Debian's ``redis-server``): ``--bind 127.0.0.1``, no persistence;
* Airflow's api-server, scheduler, dag-processor and triggerer (``scripts/deployment.py``), with
  ``CeleryExecutor``, the metadata DB and the Celery result backend on that Postgres
  (``postgresql+psycopg2``: SQLAlchemy 2.1 otherwise picks psycopg v3), the broker on that Redis;
* ``worker-default``: ``airflow celery worker -q default`` (validation, GC, promotion: no TF);
* ``worker-gpu``: ``airflow celery worker -q gpu --concurrency 1`` (restore, evaluate, training).

Every component can be told apart: each Celery worker has its own ``--celery-hostname``
(``default@HOST``, ``gpu@HOST``) and records that same name as the task instances' ``hostname``
(``[core] hostname_callable`` reads ``TF_CKPT_STACK_WORKER``), so the REST API says where each task
ran. Log servers are not started (``--skip-serve-logs``: Airflow 3.3 binds them to every interface);
the api-server reads task logs from the shared ``$AIRFLOW_HOME/logs``.

If ``initdb`` or ``redis-server`` is missing and we are root, ``apt-get install -y postgresql
redis-server`` runs once (a second run finds them and skips it).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployment import COMPONENTS, REPO, Deployment, _group_alive, airflow_bin, free_port, stop_groups

ROOT = REPO / "demo_output" / "stack"
APT_PACKAGES = ("postgresql", "redis-server")
WORKERS = {"default": ("-q", "default", "--concurrency", "2"), "gpu": ("-q", "gpu", "--concurrency", "1")}
HOSTNAME_MODULE = '''"""[core] hostname_callable of the loopback Celery stack: which worker ran a task."""
import os
import socket


def hostname() -> str:
    return os.environ.get("TF_CKPT_STACK_WORKER", "airflow") + "@" + socket.getfqdn()
'''


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------- Postgres and Redis


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def ensure_server_packages() -> None:
    """Debian's postgresql and redis-server, installed once (as root) if missing."""
    if pg_bindir() is not None and shutil.which("redis-server"):
        return
    cmd = "apt-get install -y " + " ".join(APT_PACKAGES)
    if os.geteuid() != 0:
        raise SystemExit(f"Postgres/Redis are missing; install them as root: {cmd}")
    say(f"installing {', '.join(APT_PACKAGES)} (apt, once) ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(cmd.split(), env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True, capture_output=True)
        subprocess.run(cmd.split(), env=env, check=True, capture_output=True)


@dataclass
class Servers:
    """A throw-away Postgres cluster and a Redis server, on 127.0.0.1 and free ports."""

    base: Path  # outside the deployment root: Postgres's user must reach it (pytest's tmp is 0700)
    pg_port: int = 0
    redis_port: int = 0
    redis: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.base / "pgdata"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    def _as_postgres(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)

    def start_postgres(self) -> None:
        bindir = pg_bindir()
        assert bindir is not None, "no Postgres (ensure_server_packages)"
        self.sockdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sockdir, "postgres")
        run = self._as_postgres
        subprocess.run(
            run(
                str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "-A", "trust", "-E", "UTF8"
            ),
            check=True,
            capture_output=True,
        )
        opts = f"-k {self.sockdir} -h 127.0.0.1 -p {self.pg_port} -c max_connections=200 -c fsync=off"
        logfile = self.base / "postgres.log"
        subprocess.run(
            run(
                str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(logfile), "-o", opts, "-w", "start"
            ),
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        subprocess.run(
            run(str(bindir / "createdb"), "-h", str(self.sockdir), "-p", str(self.pg_port), "airflow"),
            check=True,
            capture_output=True,
        )

    def start_redis(self, logs: Path) -> None:
        out = open(logs / "redis.log", "ab")  # noqa: SIM115 - the child keeps it
        self.redis = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.redis_port),
                # the queue survives a restart: without it the messages of queued tasks are lost
                # and those tasks wait out task_queued_timeout
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.base),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + 30
        while not self.redis_ping():
            if self.redis.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {logs / 'redis.log'}")
            time.sleep(0.1)

    def redis_ping(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop_redis(self) -> None:
        if self.redis is not None:
            stop_groups([self.redis], grace=10)
            self.redis = None

    def stop_postgres(self) -> None:
        bindir = pg_bindir()
        if bindir is not None and (self.pgdata / "postmaster.pid").exists():
            subprocess.run(
                self._as_postgres(str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )

    def stop(self) -> None:
        self.stop_redis()
        self.stop_postgres()
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------------- the Airflow deployment

# A broker restart must not fail the tasks the scheduler publishes meanwhile. By default a refused
# connection fails the task at once ("Error sending Celery task"; its retry, 5 s later, fails the
# same way: seen in CI with a 10 s Redis restart). With these, kombu keeps retrying the publish
# inside [celery] operation_timeout; a timeout is not a failure but a retry on the next scheduler
# loop, up to task_publish_max_retries (about 3 minutes of outage here). docker-compose.yaml sets
# the same three.
BROKER_OUTAGE_ENV = {
    "AIRFLOW__CELERY__OPERATION_TIMEOUT": "2",
    "AIRFLOW__CELERY__TASK_PUBLISH_MAX_RETRIES": "60",
    "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps(
        {
            "task_publish_retry_policy": {
                "max_retries": 100,
                "interval_start": 0.2,
                "interval_step": 0.2,
                "interval_max": 0.5,
            }
        }
    ),
}


@dataclass
class CeleryStack(Deployment):
    """``Deployment`` with the CeleryExecutor on Postgres + Redis and two Celery workers."""

    servers: Servers | None = None
    worker_procs: dict[str, str] = field(default_factory=dict)  # component name -> TF_CKPT_STACK_WORKER

    @property
    def pylib(self) -> Path:
        return self.root / "pylib"

    def _stack(self) -> dict[str, Any]:
        return dict(self._saved().get("stack", {}))

    def env(self) -> dict[str, str]:
        env = super().env()
        st = (
            self._stack()
            if self.servers is None
            else {
                "pg_port": self.servers.pg_port,
                "redis_port": self.servers.redis_port,
                "base": str(self.servers.base),
            }
        )
        db = f"postgresql+psycopg2://postgres@127.0.0.1:{st['pg_port']}/airflow"
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{st['redis_port']}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{db}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__TF_CKPT__GPU_QUEUE": "gpu",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
                # a queued task's Execution API token is valid for task_queued_timeout (600 s by
                # default): with one gpu slot on 2 busy cores, evaluations can wait longer than that
                # and then fail with "Invalid auth token" (seen with 180 s)
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1800",
                **BROKER_OUTAGE_ENV,
            }
        )
        return env

    def prepare(self) -> None:
        """Postgres and Redis first (``db migrate`` needs the DB), then the Deployment's home."""
        ensure_server_packages()
        self.servers = self.servers or Servers(base=Path(tempfile.mkdtemp(prefix="tf-ckpt-stack-")))
        self.servers.pg_port = self.servers.pg_port or free_port()
        self.servers.redis_port = self.servers.redis_port or free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.servers.start_postgres()
        self.servers.start_redis(self.logs)
        self.pylib.mkdir(parents=True, exist_ok=True)
        (self.pylib / "tf_ckpt_stack_host.py").write_text(HOSTNAME_MODULE)
        super().prepare()
        self._save_stack()

    def _save_stack(self) -> None:
        saved = self._saved()
        assert self.servers is not None
        saved["stack"] = {
            "pg_port": self.servers.pg_port,
            "redis_port": self.servers.redis_port,
            "base": str(self.servers.base),
            "redis_pid": self.servers.redis.pid if self.servers.redis else None,
            "workers": self.worker_procs,
        }
        (self.root / "deployment.json").write_text(json.dumps(saved, indent=1))

    def start(self, components: Iterable[str] = COMPONENTS, timeout: float = 600) -> None:
        """The components (and, for a whole deployment, the two workers); a restart of one
        component (``start(components=("triggerer",))``) starts only that one."""
        components = tuple(components)
        super().start(components, timeout)
        if components == COMPONENTS:
            for role in WORKERS:
                self.start_worker(role)

    def start_worker(self, role: str, name: str | None = None) -> str:
        """One Celery worker for ``role``'s queue; ``name`` (default ``worker-ROLE``) tells it apart."""
        name = name or f"worker-{role}"
        label = name.removeprefix("worker-")
        env = self.env()
        env.update(
            {
                "TF_CKPT_STACK_WORKER": label,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tf_ckpt_stack_host.hostname",
                "PYTHONPATH": str(self.pylib) + os.pathsep + env.get("PYTHONPATH", ""),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        args = [
            airflow_bin(),
            "celery",
            "worker",
            *WORKERS[role],
            "--celery-hostname",
            f"{label}@%h",
            "--skip-serve-logs",
        ]
        self.spawn(name, args, env)
        self.worker_procs[name] = label
        self._record_pgids()
        self._save_stack()
        return name

    def wait_workers(self, timeout: float = 300) -> None:
        """Until every worker logged Celery's ``ready.``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            pending = [n for n in self.worker_procs if n in self.procs and " ready." not in self._log(n)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready in {timeout:.0f} s: {pending}")
            time.sleep(1)

    def _log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_component(self, name: str, sig: int = signal.SIGKILL) -> None:
        """``kill -9`` (by default) one component's whole process group, its task processes too."""
        proc = self.procs.pop(name)
        stop_groups([proc], grace=0) if sig == signal.SIGKILL else os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
        self._record_pgids()

    def stop(self, grace: float = 20) -> int:
        """The Airflow components first, then Redis and Postgres; the temp dir goes too."""
        n = super().stop(grace)
        servers = self.servers or _attached_servers(self._stack())
        if servers is not None:
            servers.stop()
        return n

    # ------------------------------------------------------------------ where tasks ran

    def routing_problems(self, dag_ids: Iterable[str]) -> tuple[list[str], dict[str, int]]:
        """Every task that ran with queue ``gpu`` ran on a gpu worker, every other one on the default
        worker; every evaluate task had queue ``gpu``. Also returns the count per (queue, worker)."""
        from deployment import EVAL_TASKS

        problems: list[str] = []
        seen: dict[str, int] = {}
        for dag in dag_ids:
            for run in self.runs(dag):
                for ti in self.task_instances(dag, run["dag_run_id"]):
                    if ti["state"] not in ("success", "failed") or not ti.get("hostname"):
                        continue
                    worker = str(ti["hostname"]).split("@", 1)[0]
                    key = f"{ti['queue']} -> {worker}"
                    seen[key] = seen.get(key, 0) + 1
                    want = "gpu" if ti["queue"] == "gpu" else "default"
                    if worker.rstrip("0123456789") != want:
                        problems.append(
                            f"{dag} {run['dag_run_id']} {ti['task_id']}: queue {ti['queue']} ran on {worker}"
                        )
                    if ti["task_id"] == EVAL_TASKS.get(dag) and ti["queue"] != "gpu":
                        problems.append(f"{dag} {ti['task_id']} had queue {ti['queue']}, not gpu")
        return problems, seen

    def pss_mib(self) -> float:
        """Proportional set size of every process of the stack (Airflow, workers, Redis, Postgres)."""
        from deployment import _descendants, _proc_table

        roots = [p.pid for p in self.procs.values()]
        if self.servers and self.servers.redis:
            roots.append(self.servers.redis.pid)
        pids = set(roots) | set(_descendants(roots))
        pm = self.servers.pgdata / "postmaster.pid" if self.servers else None
        if pm is not None and pm.exists():
            post = int(pm.read_text().split()[0])
            pids |= {post} | {p for p, (pp, _, _) in _proc_table().items() if pp == post}
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
        return total / 1024


def _attached_servers(st: dict[str, Any]) -> Servers | None:
    if not st:
        return None
    servers = Servers(base=Path(st["base"]), pg_port=int(st["pg_port"]), redis_port=int(st["redis_port"]))
    if st.get("redis_pid"):
        stop_groups([int(st["redis_pid"])], grace=10)
    return servers


# ---------------------------------------------------------------------- commands


def bring_up(root: Path, **kwargs: Any) -> CeleryStack:
    """A fresh stack under ``root``, every component ready and the example DAGs parsed."""
    from airflow_demo import ALL_DAGS

    shutil.rmtree(root, ignore_errors=True)
    stack = CeleryStack(root=root, **kwargs)
    t0 = time.monotonic()
    try:
        stack.prepare()
        say(
            f"Postgres :{stack.servers.pg_port if stack.servers else '?'} and Redis up, db migrated "
            f"[{time.monotonic() - t0:.0f} s]"
        )
        stack.start()
        stack.wait_workers()
        stack.wait_dags(ALL_DAGS)
    except BaseException:
        stack.stop()
        raise
    say(f"stack up: {', '.join(stack.procs)} [{time.monotonic() - t0:.0f} s]")
    return stack


def up() -> int:
    stack = bring_up(ROOT, poll_interval=5.0)
    say(f"""
Airflow (CeleryExecutor) is up: {stack.url}   user admin, password {stack.password}
  Postgres 127.0.0.1:{stack.servers.pg_port if stack.servers else "?"}, Redis 127.0.0.1:\
{stack.servers.redis_port if stack.servers else "?"}; workers: default (queue default), gpu (queue gpu)
  AIRFLOW_HOME {stack.home}   component logs {stack.logs}
  the DAGs are paused: unpause them in the UI (or run `make stack-demo` for the checked run)
Stop everything with: make stack-down""")
    return 0


def down() -> int:
    try:
        stack = CeleryStack.attach(ROOT)
    except FileNotFoundError:
        say("nothing to stop")
        return 0
    pgids = stack.saved_groups()
    stack.stop()
    left = [p for p in pgids if _group_alive(p)]
    say(
        f"stopped {len(pgids)} Airflow process group(s), Redis and Postgres"
        + (f"; alive: {left}" if left else "")
    )
    return 1 if left else 0


def demo(root: Path = REPO / "demo_output" / "stack-demo") -> int:
    """The example DAGs, unchanged, on the stack; the demo's exactly-once checks plus the routing."""
    import airflow_demo

    t0 = time.monotonic()
    stack = bring_up(root, poll_interval=2.0, extra_env={"TF_CKPT_DEMO_GC_SCHEDULE": "* * * * *"})
    problems: list[str] = []
    try:
        say(f"idle PSS of the whole stack: {stack.pss_mib():.0f} MiB")
        airflow_demo.drive(stack)
        ledger = airflow_demo.wait_done(stack, time.monotonic() + airflow_demo.TIMEOUT)
        if not ledger.failed_runs():
            airflow_demo.final_gc(stack)
            ledger = airflow_demo.read_ledger(stack)
        problems = airflow_demo.summary(stack, ledger)
        routing, seen = stack.routing_problems(airflow_demo.ALL_DAGS)
        say(f"task instances per queue -> worker: {seen}")
        problems += routing
    finally:
        t1 = time.monotonic()
        stack.stop()
        say(f"stopped in {time.monotonic() - t1:.0f} s; total {time.monotonic() - t0:.0f} s")
    if problems:
        say("\nSTACK DEMO FAILED:\n  " + "\n  ".join(problems))
        return 1
    say(
        "every gpu-queue task ran on the gpu worker, every other task on the default worker; every committed "
        "step evaluated exactly once by each DAG; no run failed"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("up", "down", "demo"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    return {"up": up, "down": down, "demo": demo}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
