"""Shared helpers for bench/poll.py, gc.py, promote.py and parse.py.

* :func:`emulator` starts fake-gcs-server (filesystem backend) on 127.0.0.1 for the bench and
  points ``STORAGE_EMULATOR_HOST`` at it;
* :func:`seed_objects` writes objects straight into the emulator's filesystem-backend root (a
  file plus the ``user.metadata`` xattr the server keeps its metadata in): 20,000 objects in about a
  second instead of about a minute of uploads;
* :class:`RequestCounter` counts the HTTP requests a gcsfs filesystem sends;
* :func:`interleave` times a baseline and ours alternately, round after round (the machine is
  shared: both see the same load), and :func:`verdict` prints one result line with PASS/MISS.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CACHE = Path(
    os.environ.get("TF_CKPT_BENCH_CACHE", os.path.join(tempfile.gettempdir(), "airflow_tf_ckpt_bench"))
)
MiB = 1 << 20
GiB = 1 << 30


def cache_dir(*parts: str) -> Path:
    p = CACHE.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def child_env(base: Mapping[str, str] | None = None, *, bytecode_cache: bool = True) -> dict[str, str]:
    """Environment for a timed child interpreter. With ``bytecode_cache`` (the default),
    ``PYTHONDONTWRITEBYTECODE`` is dropped and bytecode goes to the bench cache
    (``PYTHONPYCACHEPREFIX``): where that variable is set (some build sandboxes) and the venv holds
    no .pyc files (uv does not compile by default), every child would otherwise compile every module
    it imports from source, and a comparison of two processes would mostly time the compiler."""
    env = dict(os.environ if base is None else base)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache_dir("pycache"))
    return env


def airflow_home() -> str:
    """A private AIRFLOW_HOME (importing the hook imports Airflow, which writes its config there)."""
    home = cache_dir("airflow_home")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return str(home)


# ---------------------------------------------------------------------------------------------
# the emulator


def emulator(root: Path) -> contextlib.AbstractContextManager[Any]:
    """fake-gcs-server on ``root`` (filesystem backend); ``STORAGE_EMULATOR_HOST`` set meanwhile."""
    from tests.fixtures.gcs_emulator import running_emulator

    return running_emulator(root)


def ensure_bucket(emu: Any, root: Path, bucket: str) -> None:
    if not (root / f"{bucket}.bucketMetadata").exists():
        emu.fs().mkdir(bucket)


def _crc32c_b64(data: bytes) -> str:
    from airflow_tf_ckpt.core.formats import crc

    return base64.b64encode(crc.value(data).to_bytes(4, "big")).decode()


def _metadata(data: bytes, when: _dt.datetime) -> bytes:
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # noqa: S324 - GCS's own md5Hash
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {
            "StorageClass": "STANDARD",
            "ContentType": "application/octet-stream",
            "ContentEncoding": "",
            "ContentDisposition": "",
            "ContentLanguage": "",
            "CacheControl": "",
            "Crc32c": _crc32c_b64(data),
            "Md5Hash": md5,
            "Etag": md5,
            "ACL": [
                {
                    "Entity": "projectOwner-test-project",
                    "EntityID": "",
                    "Role": "OWNER",
                    "Domain": "",
                    "Email": "",
                    "ProjectTeam": None,
                }
            ],
            "Metadata": None,
            "Created": stamp,
            "Deleted": "0001-01-01T00:00:00Z",
            "Updated": stamp,
            "CustomTime": "0001-01-01T00:00:00Z",
            "Generation": int(when.timestamp() * 1e6),
            "RetentionMode": "",
            "RetentionRetainUntil": "",
        },
        separators=(",", ":"),
    ).encode()


def seed_objects(root: Path, bucket: str, objects: Mapping[str, bytes], *, age_s: float = 3600.0) -> None:
    """Write ``{key: data}`` into the emulator's filesystem backend as if they had been uploaded.

    The bucket must exist (:func:`ensure_bucket`). Objects with the same content share one
    metadata blob, so this costs a few syscalls per object.
    """
    when = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=age_s)
    metas: dict[bytes, bytes] = {}
    made: set[Path] = set()
    base = root / bucket
    for key, data in objects.items():
        path = base / key
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        meta = metas.get(data) if len(data) <= 4096 else None
        if meta is None:
            meta = _metadata(data, when)
            if len(data) <= 4096:
                metas[data] = meta
        with open(path, "wb") as fh:
            fh.write(data)
        os.setxattr(path, "user.metadata", meta)


def state_text(prefixes: list[str], stamps: list[float] | None = None) -> bytes:
    """A TF ``checkpoint`` state file (text proto) naming ``prefixes``, the last one the latest."""
    lines = [f'model_checkpoint_path: "{prefixes[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{p}"' for p in prefixes]
    if stamps is not None:
        lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in stamps]
        lines.append(f"last_preserved_timestamp: {stamps[0] - 1!r}")
    return ("\n".join(lines) + "\n").encode()


def step_objects(prefix_dir: str, steps: range, *, base: str = "ckpt") -> dict[str, bytes]:
    """Tiny V2 checkpoint files (index + one data shard) for each step, keyed by object name."""
    out: dict[str, bytes] = {}
    for i in steps:
        out[f"{prefix_dir}/{base}-{i}.index"] = b"i"
        out[f"{prefix_dir}/{base}-{i}.data-00000-of-00001"] = b"d"
    return out


class DelayLine:
    """A TCP proxy on 127.0.0.1 that hands on every byte ``rtt_s / 2`` after it arrived, in each
    direction: the emulator behind a link with a fixed round-trip time, as a worker in the same
    region as its bucket sees GCS (tens of ms per request), where loopback gives ~0.1 ms.

    A delay line, not a per-chunk sleep: bytes keep their spacing, so a large body is not delayed
    once per chunk. ``url`` is what to point ``STORAGE_EMULATOR_HOST``/``endpoint_url`` at.
    """

    def __init__(self, upstream: str, rtt_s: float) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.delay = rtt_s / 2
        self.port = 0
        self._loop: Any = None
        self._thread: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: Any, writer: Any) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def rx() -> None:
            try:
                while data := await reader.read(1 << 16):
                    queue.put_nowait((loop.time() + self.delay, data))
            finally:
                queue.put_nowait((loop.time() + self.delay, b""))

        task = asyncio.ensure_future(rx())
        try:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            task.cancel()
            writer.close()

    async def _client(self, creader: Any, cwriter: Any) -> None:
        import asyncio

        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            cwriter.close()
            return
        try:
            await asyncio.gather(
                self._pipe(creader, uwriter), self._pipe(ureader, cwriter), return_exceptions=True
            )
        except asyncio.CancelledError:  # shutting down; a cancelled handler task makes asyncio log
            pass

    def __enter__(self) -> DelayLine:
        import asyncio
        import threading

        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            server.close()
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=serve, name="delay-line", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# ---------------------------------------------------------------------------------------------
# counting requests


class RequestCounter:
    """Counts HTTP requests of one gcsfs filesystem (its ``_request``, under every ``_call``)."""

    def __init__(self, fs: Any) -> None:
        self.fs = fs
        self.count = 0
        self.methods: dict[str, int] = {}
        inner = fs._request

        async def counted(method: str, path: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            self.methods[method] = self.methods.get(method, 0) + 1
            return await inner(method, path, *args, **kwargs)

        fs._request = counted

    def reset(self) -> int:
        n, self.count = self.count, 0
        self.methods = {}
        return n


# ---------------------------------------------------------------------------------------------
# timing and reporting


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def interleave(
    baseline: Callable[[], Any], ours: Callable[[], Any], rounds: int, setup: Callable[[], Any] | None = None
) -> tuple[list[float], list[float]]:
    """Run baseline and ours alternately (``rounds`` each; who goes first alternates too)."""
    tb: list[float] = []
    to: list[float] = []
    for r in range(rounds):
        order = [(baseline, tb), (ours, to)] if r % 2 == 0 else [(ours, to), (baseline, tb)]
        for fn, sink in order:
            if setup is not None:
                setup()
            sink.append(timed(fn)[0])
    return tb, to


def fmt_s(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def summary(name: str, times: list[float]) -> float:
    """Print min/median of ``times``; return the median (the figure used for ratios)."""
    med = statistics.median(times)
    print(f"  {name:46s} median {fmt_s(med):>10s}  min {fmt_s(min(times)):>10s}  (n={len(times)})")
    return med


def verdict(
    promise: str, measured: str, baseline: str, ratio: float | None, target: str, ok: bool | None
) -> bool | None:
    """One result line; ``ok=None`` for a figure with no target (reported only: INFO)."""
    r = "-" if ratio is None else f"{ratio:,.2f}x" if ratio < 10 else f"{ratio:,.0f}x"
    word = "INFO" if ok is None else "PASS" if ok else "MISS"
    print(
        f"RESULT | {promise} | target {target} | measured {measured} | baseline {baseline} | "
        f"ratio {r} | {word}",
        flush=True,
    )
    return ok
