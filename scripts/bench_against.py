"""The benchmarks of this checkout and of an earlier revision, run side by side in one session.

    .venv/bin/python scripts/bench_against.py --ref REV [--rounds 2] [--only gc,parse]
                                               [--args "gc=--skip-gc"] [--noise 0.10]
    make bench-against REF=REV

``make bench`` compares each figure with a baseline inside one bench (a naive method, the code
before a fix). This answers another question: did a change make any bench figure worse than it
was at ``REV``? The machine is shared and its speed drifts, so figures from another day say
little: both checkouts run here, alternately (ours first in odd rounds, REV first in even ones),
so both see the same load.

REV is exported with ``git archive`` into the bench cache and gets its own venv (its own
``make install``; bytecode compiled, as ours is, so process start-up is timed the same way). Each
bench prints ``RESULT | promise | target | measured ...`` lines (``bench/_common.verdict``); a
promise both revisions print is compared by the number in its ``measured`` field (its median over
the rounds, the best of them: this VM's speed drifts by tens of percent from minute to minute, and
the best round is the one least disturbed): a time, a size or a count is better lower, a rate
(``/s``) or a factor (``x``) higher. A change beyond ``--noise`` (default 10%) either way is
flagged, except a time that moved by less than ``--floor`` seconds (default 0.05: the "extra over
a bare import" figures are differences near zero); the exit status is 1 when some figure got
worse.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import _common as C  # noqa: E402

_RESULT = re.compile(r"^RESULT \| (?P<promise>.*?) \| target .*? \| measured (?P<measured>.*?) \| baseline ")
_NUMBER = re.compile(r"(?P<num>[-+]?[0-9][0-9,]*(?:\.[0-9]+)?)\s*(?P<unit>[^\s,;()]*)")
_SCALE = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


@dataclass
class Tree:
    """One checkout and its interpreter; its RESULT figures by promise."""

    label: str
    root: Path
    results: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    failed: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.root / ".venv" / "bin" / "python"


# ---------------------------------------------------------------------------------------------
# the reference checkout


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def reference_tree(ref: str) -> Tree:
    """REV exported once into the bench cache, with its own venv (``make install`` there)."""
    sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    root = C.CACHE / "against" / sha[:12]
    if not (root / ".exported").exists():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "archive", sha], cwd=REPO, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(root)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise SystemExit(f"git archive {sha} failed")
        (root / ".exported").touch()
    tree = Tree(f"{ref} ({sha[:10]})", root)
    if not (root / ".venv" / ".against-ready").exists():
        print(f"installing {tree.label} into {root} (once)", flush=True)
        subprocess.run(["make", "-C", str(root), "install"], check=True)
        # a revision whose install wrote no bytecode would spend its child processes compiling
        subprocess.run([str(tree.python), "-m", "compileall", "-q", "-j0", str(root / ".venv" / "lib")])
        (root / ".venv" / ".against-ready").touch()
    return tree


# ---------------------------------------------------------------------------------------------
# running


def benches(tree: Tree, only: set[str]) -> list[str]:
    names = sorted(p.name for p in (tree.root / "bench").glob("[!_]*.py"))
    return [n for n in names if not only or n.removesuffix(".py") in only]


def run_bench(tree: Tree, name: str, args: list[str]) -> None:
    """One bench in ``tree``'s checkout with its interpreter; its RESULT lines are kept."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(tree.python), f"bench/{name}", *args],
        cwd=tree.root,
        env=C.child_env(bytecode_cache=False),
        capture_output=True,
        text=True,
    )
    found = 0
    for line in proc.stdout.splitlines():
        m = _RESULT.match(line)
        if m:
            tree.results[m["promise"]].append(m["measured"])
            found += 1
    state = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    print(
        f"  {tree.label:<28} {name:<16} {time.monotonic() - t0:6.0f} s  {found} figures  {state}", flush=True
    )
    if proc.returncode != 0 and not found:
        tree.failed.append(f"{name}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


def run_all(ours: Tree, ref: Tree, names: list[str], extra: dict[str, list[str]], rounds: int) -> None:
    for r in range(rounds):
        for name in names:
            pair = (ours, ref) if r % 2 == 0 else (ref, ours)
            for tree in pair:
                if (tree.root / "bench" / name).exists():
                    run_bench(tree, name, extra.get(name.removesuffix(".py"), []))


# ---------------------------------------------------------------------------------------------
# comparing


def value(measured: str) -> tuple[float, str] | None:
    """The first number of a ``measured`` field and its unit, times in seconds."""
    m = _NUMBER.search(measured)
    if not m:
        return None
    num, unit = float(m["num"].replace(",", "")), m["unit"]
    if unit in _SCALE:
        return num * _SCALE[unit], "s"
    return num, unit


def higher_is_better(unit: str) -> bool:
    return unit.endswith("/s") or unit == "x"


def compare(ours: Tree, ref: Tree, noise: float, floor: float) -> int:
    """The side-by-side table; the number of figures that got worse beyond ``noise``."""
    worse = 0
    print(f"\n{'figure':<78} {'at ' + ref.label:>24} {'now':>14}  change")
    for promise in sorted(set(ours.results) & set(ref.results)):
        a, b = ref.results[promise], ours.results[promise]
        va = [v for v in map(value, a) if v is not None]
        vb = [v for v in map(value, b) if v is not None]
        units = {u for _, u in va + vb}
        if len(va) != len(a) or len(vb) != len(b) or len(units) != 1:
            print(f"{promise[:78]:<78} {a[-1]:>24} {b[-1]:>14}  (not comparable)")
            continue
        unit = units.pop()
        best = max if higher_is_better(unit) else min
        ma, mb = best(v for v, _ in va), best(v for v, _ in vb)
        change = (mb - ma) / abs(ma) if ma else 0.0
        bad = -change if higher_is_better(unit) else change
        small = unit == "s" and abs(mb - ma) < floor
        word = "same (within noise)" if small or abs(bad) <= noise else "worse" if bad > 0 else "better"
        worse += word == "worse"
        print(f"{promise[:78]:<78} {a[-1]:>24} {b[-1]:>14}  {change:+.0%} {word}")
    for label, tree, other in (("only now", ours, ref), ("only at the reference", ref, ours)):
        for promise in sorted(set(tree.results) - set(other.results)):
            print(f"{promise[:78]:<78} ({label}: {tree.results[promise][-1]})")
    for tree in (ref, ours):
        for f in tree.failed:
            print(f"!! {tree.label}: {f}")
    return worse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the revision to compare with (a commit, tag or branch)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", default="", help="bench names, comma-separated (gc,parse,...)")
    ap.add_argument("--args", action="append", default=[], help='"NAME=ARGS" passed to that bench')
    ap.add_argument("--noise", type=float, default=0.10)
    ap.add_argument("--floor", type=float, default=0.05, help="seconds: a smaller change of a time is noise")
    opts = ap.parse_args()
    extra = {k: shlex.split(v) for k, _, v in (a.partition("=") for a in opts.args)}
    ours, ref = Tree("this checkout", REPO), reference_tree(opts.ref)
    only = {n.strip() for n in opts.only.split(",") if n.strip()}
    names = benches(ours, only)
    print(
        f"{len(names)} benches, {opts.rounds} round(s), alternating {ours.label} and {ref.label}", flush=True
    )
    run_all(ours, ref, names, extra, opts.rounds)
    worse = compare(ours, ref, opts.noise, opts.floor)
    failed = len(ours.failed)
    print(f"\n{worse} figure(s) worse beyond {opts.noise:.0%}; {failed} bench(es) here gave no figure")
    return 1 if worse or failed else 0


if __name__ == "__main__":
    sys.exit(main())
