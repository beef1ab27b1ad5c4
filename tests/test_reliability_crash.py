"""Crash safety under a real SIGKILL: GC (``apply_plan``) and promotion run in a SUBPROCESS
(``tests/crash_worker.py``) that kills itself at the K-th call of the operation's hook, for every
K. After each kill:

* GC: every step the state file names exists and is complete (discovery), and restores with
  TensorFlow; the steps the policy keeps are untouched;
* promotion: the destination's manifest, alias and state file each name the old complete
  promotion or the new complete one (every file present, CRC32C as the manifest says, TF restores
  it), never a partial one;
* a rerun converges to exactly the state of an uninterrupted run.

All TF restores of a test go into ONE ``tf_batch`` call. Fast: local dirs, the real
``tf2_manager`` and ``tf1_saver`` checkpoints. ``long``: the same against the GCS emulator.

A promotion killed while it holds ``DEST/.promote.lock`` leaves the lock behind; the rerun sees
that the holder (this host, its pid) is gone, breaks the lock and converges with no manual step.
(A holder on another host is judged by its heartbeat: ``tests/test_promote.py``.)
"""

from __future__ import annotations

import json
import os
import posixpath
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_tf_ckpt.core.formats.state import read_state, resolve_path
from airflow_tf_ckpt.core.promote.lock import LOCK_NAME
from airflow_tf_ckpt.core.promote.manifest import read_alias, read_manifest
from airflow_tf_ckpt.core.promote.promote import promote
from airflow_tf_ckpt.core.retention.executor import apply_plan
from airflow_tf_ckpt.core.retention.planner import plan_retention
from airflow_tf_ckpt.core.retention.policies import policies_from_options
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.storage.location import Location
from airflow_tf_ckpt.core.verify.engine import verify_step
from tests.fixtures.tf_checkpoints import REPO_ROOT, _env, tf_batch

WORKER = REPO_ROOT / "tests" / "crash_worker.py"
POLICY = {"tf2_manager": {"keep_last": 1}, "tf1_saver": {"keep_last": 2}}


def run_worker(*args: str, kill_at: int) -> list[str] | None:
    """Run the worker; ``None`` when it died by SIGKILL (as asked), the hook labels otherwise."""
    proc = subprocess.run(
        [sys.executable, str(WORKER), *_with_kill(args, kill_at)],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if kill_at:
        assert proc.returncode == -9, (
            f"expected SIGKILL at point {kill_at}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
        )
        return None
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])["points"]


def _with_kill(args: tuple[str, ...], kill_at: int) -> list[str]:
    # the worker takes KILL_AT in a fixed position per mode
    mode = args[0]
    if mode == "gc":  # gc DIR KILL_AT POLICY
        return [mode, args[1], str(kill_at), args[2]]
    return [*args, str(kill_at)]  # promote SRC DEST STEP ALIAS KILL_AT


# ---------------------------------------------------------------------------------------------
# storage helpers: the same checks on a local dir and on gs://


class Store:
    """Make checkpoint dirs on a local disk or the GCS emulator; snapshot them locally for TF."""

    def __init__(self, tmp_path: Path, bucket: str | None = None) -> None:
        self.tmp, self.bucket = tmp_path, bucket

    def url(self, sub: str) -> str:
        return f"gs://{self.bucket}/{sub}" if self.bucket else str(self.tmp / sub)

    def put_dir(self, local: Path, sub: str) -> str:
        url = self.url(sub)
        if self.bucket is None:
            import shutil

            shutil.copytree(local, url)
        else:
            loc = Location.of(url)
            for p in sorted(Path(local).iterdir()):
                if p.is_file():
                    loc.fs.pipe_file(loc.join(p.name), p.read_bytes())
        return url

    def snapshot(self, url: str, name: str) -> Path:
        """A local copy of the dir as it is now (TF reads it at the end of the test)."""
        loc = Location.of(url)
        out = self.tmp / "snap" / name
        out.mkdir(parents=True)
        for fname, info in loc.listdir().items():
            if not info.is_dir:
                (out / fname).write_bytes(loc.read_bytes(fname))
        return out


def names(loc: Location) -> set[str]:
    try:
        return {n for n, i in loc.listdir().items() if not i.is_dir}
    except Exception:  # noqa: BLE001 - a dir that does not exist yet
        return set()


def state_steps(loc: Location) -> list[str]:
    """The step names (basenames inside ``loc``) the state file lists, latest included."""
    st = read_state(loc)
    if st is None:
        return []
    listing = names(loc)
    out = []
    for raw in [*st.all_model_checkpoint_paths, st.model_checkpoint_path]:
        r = resolve_path(loc, raw, listing)
        if r.name is not None and r.name not in out:
            out.append(r.name)
    return out


def assert_state_names_only_complete_steps(loc: Location, where: str) -> list[str]:
    steps = {s.prefix: s for s in discover(loc).steps}
    named = state_steps(loc)
    for name in named:
        s = steps.get(name)
        assert s is not None and s.files and not s.missing, (
            f"{where}: the state file names {name} but it is incomplete: {sorted(names(loc))}"
        )
    for s in steps.values():
        if s.in_state:
            assert not s.missing, f"{where}: in-state step {s.prefix} is missing {s.missing}"
    return named


def store_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "local":
        return Store(tmp_path)
    return Store(tmp_path, request.getfixturevalue("gcs_bucket"))


# ---------------------------------------------------------------------------------------------
# GC


def _gc_crash_every_point(variant: str, kind: str, tf_checkpoints, tmp_path: Path, request) -> None:
    store = store_for(kind, tmp_path, request)
    src = tf_checkpoints[variant].dir
    policy = json.dumps(POLICY[variant])

    ref_url = store.put_dir(src, "ref")
    points = run_worker("gc", ref_url, policy, kill_at=0)
    ref = Location.of(ref_url)
    want_names, want_state = names(ref), read_state(ref)
    kept = state_steps(ref)
    assert [p.split(":")[0] for p in points[:3]] == ["write_intent", "relist", "write_state"], points
    assert sum(p.startswith("delete:") for p in points) >= 4 and points[-1].startswith("clear_intent")

    requests: list[tuple[str, list[str]]] = []
    for k in range(1, len(points) + 1):
        url = store.put_dir(src, f"k{k}")
        run_worker("gc", url, policy, kill_at=k)
        loc = Location.of(url)
        where = f"{variant}/{kind} killed at {k}/{len(points)} ({points[k - 1]})"
        named = assert_state_names_only_complete_steps(loc, where)
        assert set(kept) <= set(named), f"{where}: a kept step left the state file: {named}"
        snap = store.snapshot(url, f"k{k}")
        requests += [("read_all", [str(snap / n)]) for n in named]
        # rerun (in process): same final state as the uninterrupted run
        res = apply_plan(plan_retention(loc, policies_from_options(**POLICY[variant])))
        assert res.ok, (where, res.errors)
        assert names(loc) == want_names, (where, sorted(names(loc) ^ want_names))
        assert read_state(loc) == want_state, where
        final = plan_retention(loc, policies_from_options(**POLICY[variant]))
        assert not final.deleted, where
    results = tf_batch(requests)
    bad = [(r[1][0], res) for r, res in zip(requests, results, strict=True) if not res["ok"]]
    assert not bad, bad
    print(f"\n[crash gc {variant}/{kind}] {len(points)} kill points, {len(requests)} TF restores ok")


@pytest.mark.parametrize("variant", ["tf2_manager", "tf1_saver"])
def test_gc_sigkill_at_every_point(variant, tf_checkpoints, tmp_path, request):
    _gc_crash_every_point(variant, "local", tf_checkpoints, tmp_path, request)


@pytest.mark.long
@pytest.mark.gcs
@pytest.mark.parametrize("variant", ["tf2_manager", "tf1_saver"])
def test_gc_sigkill_at_every_point_gcs(variant, tf_checkpoints, tmp_path, request):
    _gc_crash_every_point(variant, "gcs", tf_checkpoints, tmp_path, request)


# ---------------------------------------------------------------------------------------------
# promotion


def _view(dest: Location, old: str, new: str, where: str) -> dict[str, str | None]:
    """Check every pointer of ``dest`` names ``old`` or ``new``, complete; return who names what."""
    out: dict[str, str | None] = {}
    listing = names(dest)
    for label, m in (("manifest", read_manifest(dest)), ("alias", read_alias(dest, "prod"))):
        if m is None:
            out[label] = None
            continue
        assert m.prefix in (old, new), f"{where}: {label} names {m.prefix}"
        for f in m.files:
            assert f.name in listing, f"{where}: {label} {m.prefix} misses {f.name}"
        out[label] = m.prefix
    st = read_state(dest)
    out["state"] = None if st is None else posixpath.basename(st.model_checkpoint_path)
    if out["state"] is not None:
        assert out["state"] in (old, new), f"{where}: state names {out['state']}"
    for label in ("manifest", "alias", "state"):
        prefix = out[label]
        if prefix is not None:
            rep = verify_step(dest, prefix)
            assert rep.ok, f"{where}: {label} -> {prefix} does not verify: {rep.problems[:2]}"
    return out


def _promote_crash_every_point(
    variant: str, kind: str, tf_checkpoints, tmp_path: Path, request, first: bool = False
) -> None:
    """Re-promotion over an old promotion (``first``: into an empty destination)."""
    store = store_for(kind, tmp_path, request)
    v = tf_checkpoints[variant]
    old, new = v.prefixes[-2], v.prefixes[-1]
    step_of = {p: p.rsplit("-", 1)[1] for p in (old, new)}

    def setup(sub: str) -> tuple[str, str]:
        src = store.put_dir(v.dir, f"{sub}-src")
        dest = store.url(f"{sub}-dest")
        if not first:
            promote(src, dest, int(step_of[old]), alias="prod")
        return src, dest

    src, dest = setup("ref")
    points = run_worker("promote", src, dest, step_of[new], "prod", kill_at=0)
    assert points[0] == "locked" and points[-1] == "cleaned", points
    ref = Location.of(dest)
    want_names = names(ref)
    want_manifest = read_manifest(ref)
    assert want_manifest.prefix == new

    requests: list[tuple[str, list[str]]] = []
    seen: set[tuple] = set()
    locks_left = 0
    for k in range(1, len(points) + 1):
        src, dest = setup(f"k{k}")
        run_worker("promote", src, dest, step_of[new], "prod", kill_at=k)
        loc = Location.of(dest)
        where = f"{variant}/{kind} promotion killed at {k}/{len(points)} ({points[k - 1]})"
        view = _view(loc, old, new, where)
        if first:
            assert old not in view.values(), (where, view)
        else:
            assert view["manifest"] is not None and view["state"] is not None, (where, view)
        seen.add(tuple(view.values()))
        snap = store.snapshot(dest, f"p{k}")
        requests += [("read_all", [str(snap / p)]) for p in sorted({p for p in view.values() if p})]
        # rerun: a kill inside the lock leaves it behind; its holder (this host, a dead pid) is
        # gone, so the rerun breaks it and proceeds, with no one removing anything by hand
        locks_left += LOCK_NAME in names(loc)
        promote(src, dest, int(step_of[new]), alias="prod")
        assert LOCK_NAME not in names(loc), where
        m = read_manifest(loc)
        want, want_retained = want_names, sorted(want_manifest.retained)
        if view["manifest"] == new:
            # the manifest was already published: the rerun is a second promotion of the same
            # step, which (as designed) no longer keeps the previous one for "one more round"
            want = {n for n in want_names if not n.startswith(old + ".")}
            want_retained = []
        assert names(loc) == want, (where, sorted(names(loc) ^ want))
        assert (m.prefix, [f.to_dict() for f in m.files], sorted(m.retained)) == (
            want_manifest.prefix,
            [f.to_dict() for f in want_manifest.files],
            want_retained,
        ), where
        assert _view(loc, old, new, where) == {"manifest": new, "alias": new, "state": new}
    results = tf_batch(requests)
    bad = [(r[1][0], res) for r, res in zip(requests, results, strict=True) if not res["ok"]]
    assert not bad, bad
    # the kills really landed in between: readers saw the old view, a mixed-pointer view and the new one
    assert len(seen) >= 3, seen  # old, mixed pointers (each complete), new
    assert locks_left == len(points), locks_left  # every kill point is inside the lock
    print(
        f"\n[crash promote {variant}/{kind}] {len(points)} kill points {points}; views {sorted(seen, key=str)}; "
        f"{len(requests)} TF restores ok"
    )


@pytest.mark.parametrize("variant", ["tf2_manager", "tf1_saver"])
def test_promote_sigkill_at_every_point(variant, tf_checkpoints, tmp_path, request):
    _promote_crash_every_point(variant, "local", tf_checkpoints, tmp_path, request)


def test_first_promotion_sigkill_at_every_point(tf_checkpoints, tmp_path, request):
    """Into an empty destination: not promoted at all, or the new promotion complete."""
    _promote_crash_every_point("tf2_manager", "local", tf_checkpoints, tmp_path, request, first=True)


@pytest.mark.long
@pytest.mark.gcs
@pytest.mark.parametrize("variant", ["tf2_manager", "tf1_saver"])
def test_promote_sigkill_at_every_point_gcs(variant, tf_checkpoints, tmp_path, request):
    _promote_crash_every_point(variant, "gcs", tf_checkpoints, tmp_path, request)


def test_worker_never_imports_tensorflow():
    """The crash children must start fast: the core path imports no TF."""
    code = (
        "import sys; sys.argv=['x']; import tests.crash_worker as w; "
        "import airflow_tf_ckpt.core.retention.executor, airflow_tf_ckpt.core.promote.promote; print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr
    assert os.path.exists(WORKER)


def test_promotion_cleans_temp_files_of_a_killed_copy(tf_checkpoints, tmp_path):
    """Regression: a promotion killed mid-copy left ``.NAME.XXXXXXXX.tmp`` in DEST for ever (the
    rerun copied under a new temp name). Under the lock, a rerun removes the temp files of the
    names it copies, and nothing else."""
    src = Store(tmp_path).put_dir(tf_checkpoints["tf2_manager"].dir, "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".ckpt-5.data-00000-of-00001.deadbeef.tmp").write_bytes(b"half")
    (dest / ".unrelated.deadbeef.tmp").write_bytes(b"not ours")
    promote(src, str(dest), 5)
    assert sorted(p.name for p in dest.glob(".*.tmp")) == [".unrelated.deadbeef.tmp"]


def test_rerun_after_a_crash_past_the_state_file_reuses_the_copy(tf_checkpoints, tmp_path):
    """Regression: killed after the state file named the new step but before the manifest, the
    rerun found the new step's files reachable but recorded by no manifest, so it UNPUBLISHED the
    destination (no manifest, no state file for a while) and dropped the previous promotion. The
    bytes are identical: it now reuses them, and the old promotion stays visible until the switch."""
    src = Store(tmp_path).put_dir(tf_checkpoints["tf2_manager"].dir, "src")
    dest = str(tmp_path / "dest")
    promote(src, dest, 4)

    class Crash(Exception):
        pass

    def boom(phase, _d):
        if phase == "state_written":
            raise Crash

    with pytest.raises(Crash):
        promote(src, dest, 5, hook=boom)
    phases: list[str] = []
    r = promote(src, dest, 5, hook=lambda p, _d: phases.append(p))
    assert not r.unpublished and "unpublished" not in phases and r.copied == []
    assert list(r.manifest.retained) == ["previous:ckpt-4"]
    assert (tmp_path / "dest" / "ckpt-4.index").exists()
