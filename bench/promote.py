"""Benchmark: promoting a 1 GiB checkpoint step, gs->gs (emulator) and local->local.

    .venv/bin/python bench/promote.py [--size-mib 1024] [--rounds 1]

The step is a real TensorFlow checkpoint (5 shards + index), built once by bench/verify.py's
builder (tests/tf_factory.py in a TF subprocess) and cached under /tmp/airflow_tf_ckpt_bench.

1. gs->gs: ``promote(src, dest, step)`` (server-side copy) against download + upload of the same
   files through the worker (``cat_file`` + ``pipe_file``). Bytes through the worker are the HTTP
   bodies sent and received, counted at gcsfs's ``_request``. Targets: 0 bytes, >= 5x. A third
   timing, the same server-side copies issued alone (``fs.copy``), shows the emulator's floor: its
   rewrite reads, hashes and writes every byte under one lock (real GCS rewrites within a location
   without moving data), so that floor, not the worker, bounds the ratio here.
2. local->local: ``promote`` against ``cp`` of the step's files (a subprocess).

Each round uses a fresh destination (promote would otherwise reuse identical files), removed after.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import _common as C

SRC_BUCKET, DST_BUCKET = "promsrc", "promdst"


class ByteCounter(C.RequestCounter):
    """Also sums the HTTP body bytes sent and received."""

    def __init__(self, fs: object) -> None:
        self.bytes = 0
        inner = fs._request  # type: ignore[attr-defined]

        async def sized(method: str, path: object, *args: object, **kwargs: object) -> object:
            data = kwargs.get("data")
            if isinstance(data, (bytes, bytearray, memoryview)):
                self.bytes += len(data)
            out = await inner(method, path, *args, **kwargs)
            if isinstance(out, tuple) and len(out) == 4 and isinstance(out[3], (bytes, bytearray)):
                self.bytes += len(out[3])
            return out

        fs._request = sized  # type: ignore[attr-defined]
        super().__init__(fs)

    def reset(self) -> int:
        self.bytes = 0
        return super().reset()


def source_step(size_mib: int) -> tuple[Path, str, list[Path]]:
    from verify import build, files_of

    d, prefix = build(C.cache_dir(), size_mib, 256)
    return d, prefix, files_of(d, prefix)


def gs_bench(src_dir: Path, prefix: str, files: list[Path], rounds: int) -> None:
    from airflow_tf_ckpt.core.promote.promote import promote
    from airflow_tf_ckpt.core.storage.location import Location

    total = sum(p.stat().st_size for p in files)
    root = C.CACHE / f"gcs-promote-{total}"
    marker = root / ".built"
    with C.emulator(root) as emu:
        if not marker.exists():
            print(
                f"seeding the {total / C.GiB:.2f} GiB step into the emulator root {root} (once) ...",
                flush=True,
            )
            C.ensure_bucket(emu, root, SRC_BUCKET)
            C.ensure_bucket(emu, root, DST_BUCKET)
            objs = {f"run/{p.name}": p.read_bytes() for p in files}
            objs["run/checkpoint"] = C.state_text([prefix])
            C.seed_objects(root, SRC_BUCKET, objs)
            del objs
            marker.write_text("ok")
        src = Location.of(f"gs://{SRC_BUCKET}/run")
        fs = src.fs
        counter = ByteCounter(fs)
        names = [p.name for p in files]
        tb: list[float] = []
        to: list[float] = []
        tf_: list[float] = []
        moved_b = moved_o = 0
        reqs_o = 0
        method = ""
        for r in range(rounds):

            def baseline(r: int = r) -> None:
                for n in names:
                    fs.pipe_file(f"{DST_BUCKET}/base-{r}/{n}", fs.cat_file(f"{SRC_BUCKET}/run/{n}"))

            def ours(r: int = r) -> object:
                dst = Location.of(f"gs://{DST_BUCKET}/ours-{r}", fs=fs)
                return promote(src, dst, "latest")

            def floor(r: int = r) -> None:  # the emulator's own copies, all at once, nothing else
                fs.copy(
                    [f"{SRC_BUCKET}/run/{n}" for n in names], [f"{DST_BUCKET}/floor-{r}/{n}" for n in names]
                )

            for name in ("b", "o", "f") if r % 2 == 0 else ("f", "o", "b"):
                counter.reset()
                if name == "f":
                    t, _ = C.timed(floor)
                    tf_.append(t)
                    fs.rm(f"{DST_BUCKET}/floor-{r}", recursive=True)
                elif name == "b":
                    t, _ = C.timed(baseline)
                    tb.append(t)
                    moved_b = counter.bytes
                    fs.rm(f"{DST_BUCKET}/base-{r}", recursive=True)
                else:
                    t, res = C.timed(ours)
                    to.append(t)
                    moved_o, reqs_o = counter.bytes, counter.count
                    method = res.method  # type: ignore[attr-defined]
                    assert res.bytes_copied == total, res  # type: ignore[attr-defined]
                    fs.rm(f"{DST_BUCKET}/ours-{r}", recursive=True)
    print(
        f"\ngs->gs promote of {prefix} ({total / C.GiB:.2f} GiB, {len(files)} files) on fake-gcs-server, "
        f"{rounds} rounds interleaved"
    )
    t_b = C.summary("baseline: download + upload (cat_file/pipe_file)", tb)
    t_o = C.summary(f"ours: promote ({method})", to)
    t_f = C.summary("floor: the same server-side copies alone (fs.copy)", tf_)
    print(
        f"  => the emulator copies every byte (its rewrite reads, hashes and writes them); the floor "
        f"alone is {t_b / t_f:.2f}x the baseline, promote adds {t_o - t_f:+.2f} s to it "
        "(listing, lease, lock, CRC checks from metadata, state file, manifest)"
    )
    print(f"  bytes through the worker: ours {moved_o:,} ({reqs_o} requests), baseline {moved_b:,}")
    C.verdict(
        "promote 1 GiB gs->gs: bytes through the worker",
        f"{moved_o:,} B",
        f"{moved_b:,} B",
        None,
        "0 B of tensor data",
        moved_o < 1 * C.MiB,
    )
    C.verdict("promote 1 GiB gs->gs: time", C.fmt_s(t_o), C.fmt_s(t_b), t_b / t_o, ">= 5x", t_b / t_o >= 5)


def local_bench(src_dir: Path, prefix: str, files: list[Path], rounds: int) -> None:
    from airflow_tf_ckpt.core.promote.promote import promote

    total = sum(p.stat().st_size for p in files)
    work = Path(tempfile.mkdtemp(prefix="promote-local-", dir=C.cache_dir()))
    src = work / "src"
    src.mkdir()
    for p in files:  # hard links: the cached step stays pristine (promote records into the source)
        (src / p.name).hardlink_to(p)
    (src / "checkpoint").write_bytes(C.state_text([prefix]))
    tb: list[float] = []
    ts: list[float] = []
    to: list[float] = []
    try:
        for r in range(rounds):

            def baseline(r: int = r) -> None:
                dst = work / f"cp-{r}"
                dst.mkdir()
                subprocess.run(["cp", *[str(src / p.name) for p in files], str(dst)], check=True)

            def durable(r: int = r) -> None:  # cp, then fsync the copies (promote fsyncs too)
                dst = work / f"cps-{r}"
                dst.mkdir()
                subprocess.run(["cp", *[str(src / p.name) for p in files], str(dst)], check=True)
                subprocess.run(["sync", *[str(dst / p.name) for p in files]], check=True)

            def ours(r: int = r) -> None:
                promote(str(src), str(work / f"ours-{r}"), "latest")

            order = [(baseline, tb), (durable, ts), (ours, to)]
            for fn, sink in order if r % 2 == 0 else order[::-1]:
                sink.append(C.timed(fn)[0])
            for d in ("cp", "cps", "ours"):
                shutil.rmtree(work / f"{d}-{r}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nlocal->local promote of {prefix} ({total / C.GiB:.2f} GiB), {rounds} rounds interleaved")
    t_b = C.summary("baseline: cp of the step's files", tb)
    t_s = C.summary("baseline: cp + sync of the copies", ts)
    t_o = C.summary("ours: promote (fsync'd, checked, manifest)", to)
    C.verdict(
        "promote 1 GiB local->local vs cp", C.fmt_s(t_o), C.fmt_s(t_b), t_b / t_o, "none (reported)", None
    )
    C.verdict(
        "promote 1 GiB local->local vs cp + sync",
        C.fmt_s(t_o),
        C.fmt_s(t_s),
        t_s / t_o,
        "none (reported)",
        None,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1, help="gs->gs rounds (local runs max(3, this))")
    ap.add_argument("--skip-gcs", action="store_true")
    ap.add_argument("--skip-local", action="store_true")
    args = ap.parse_args()
    t = time.perf_counter()
    src_dir, prefix, files = source_step(args.size_mib)
    if not args.skip_gcs:
        gs_bench(src_dir, prefix, files, args.rounds)
    if not args.skip_local:
        local_bench(src_dir, prefix, files, max(args.rounds, 3))
    print(f"\n(total {time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
