"""``make demo``: the checkpoint core and the ``tf-ckpt`` CLI on real TensorFlow checkpoints.

1. trains a tiny Keras model on synthetic data with ``tf.train.CheckpointManager`` IN A
   SUBPROCESS (this process never imports TensorFlow), writing real checkpoints to
   ``demo_output/ckpts`` and a metrics sidecar (held-out ``loss``/``mae``) for every step;
2. runs ``tf-ckpt ls``, ``validate --step all``, ``gc --dry-run``, the real ``gc`` and
   ``promote --step best --metric loss`` into ``demo_output/promoted`` (alias ``production``);
3. a corruption drill on a copy: one flipped byte makes ``validate`` exit 1 and name the file
   and the tensor.

Every step checks its exit code; the script exits non-zero if anything is not as expected.
(The Airflow part of the demo builds on ``run_core_demo`` below.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "demo_output"
CKPTS = OUT / "ckpts"
PROMOTED = OUT / "promoted"
DRILL = OUT / "corrupt-drill"

TRAIN_STEPS = 60
SAVE_EVERY = 10


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def tf_ckpt(*args: str, expect: int = 0) -> int:
    """Run the CLI as a user would, output straight to the terminal; check the exit code."""
    script = Path(sys.executable).parent / "tf-ckpt"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "airflow_tf_ckpt.cli"]
    shown = " ".join(["tf-ckpt", *(os.path.relpath(a, REPO) if a.startswith(str(REPO)) else a for a in args)])
    print(f"$ {shown}", flush=True)
    rc = subprocess.run([*cmd, *args], cwd=REPO, env=_env()).returncode
    print(f"(exit {rc})", flush=True)
    if rc != expect:
        raise SystemExit(f"demo: '{shown}' exited {rc}, expected {expect}")
    return rc


# ---------------------------------------------------------------------------------------------
# the TensorFlow side, in a child process


def _train_child(ckpt_dir: str) -> None:
    """Runs in the child: train, save every SAVE_EVERY steps, write each step's eval metrics."""
    from airflow_tf_ckpt.core.sidecars.metrics import write_metrics
    from airflow_tf_ckpt.core.storage.location import Location
    from airflow_tf_ckpt.examples.eval import build_checkpoint, evaluate
    from airflow_tf_ckpt.examples.train import train

    loc = Location.of(ckpt_dir)

    def on_save(step: int, prefix_url: str, train_loss: float) -> None:
        restored = build_checkpoint()
        restored.restore(prefix_url).expect_partial()
        metrics = evaluate(restored, step)  # held-out loss and mae
        write_metrics(loc, os.path.basename(prefix_url), metrics, extra={"train_loss": train_loss})
        print(
            f"  saved {os.path.basename(prefix_url)}: train loss {train_loss:.4f}, "
            f"eval loss {metrics['loss']:.4f}, mae {metrics['mae']:.4f}",
            flush=True,
        )

    train(ckpt_dir, steps=TRAIN_STEPS, save_every=SAVE_EVERY, max_to_keep=None, on_save=on_save)


def train_checkpoints(ckpt_dir: Path = CKPTS) -> None:
    """Wipe ``ckpt_dir`` and train into it in a TF subprocess."""
    if ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    t0 = time.monotonic()
    # TF's C++ start-up chatter (CUDA probing) goes to stderr: shown only if training fails
    proc = subprocess.run(
        [sys.executable, __file__, "--train-child", str(ckpt_dir)],
        cwd=REPO,
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-8000:])
        raise SystemExit(f"demo: training failed (exit {proc.returncode})")
    print(f"  trained {TRAIN_STEPS} steps in {time.monotonic() - t0:.1f} s (TF import included)")


# ---------------------------------------------------------------------------------------------
# the core demo


def _flip_a_tensor_byte(ckpt_dir: Path, prefix: str) -> tuple[str, str]:
    """Flip one byte inside the largest tensor of ``prefix``; returns (data file, tensor)."""
    from airflow_tf_ckpt.core.formats.bundle import read_bundle
    from airflow_tf_ckpt.core.storage.location import Location

    bundle = read_bundle(Location.of(ckpt_dir), prefix)
    entry = max(
        (e for e in bundle.entries if e.has_data and not e.display_name.startswith("_")), key=lambda e: e.size
    )
    name = f"{prefix}.data-{entry.shard_id:05d}-of-{bundle.num_shards:05d}"
    path = ckpt_dir / name
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return name, entry.display_name


def run_core_demo() -> None:
    OUT.mkdir(exist_ok=True)
    for d in (PROMOTED, DRILL):
        if d.exists():
            shutil.rmtree(d)

    banner(
        f"1. train a tiny Keras model ({TRAIN_STEPS} steps, a checkpoint every {SAVE_EVERY}) "
        "in a TensorFlow subprocess"
    )
    train_checkpoints()

    banner("2. list the checkpoints (status, size, time, metrics sidecars)")
    tf_ckpt("ls", str(CKPTS))

    banner("3. validate every step without TensorFlow (every crc32c TF checks on restore)")
    tf_ckpt("validate", str(CKPTS), "--step", "all")

    gc_args = ("gc", str(CKPTS), "--keep-last", "2", "--keep-best", "1", "--metric", "loss", "--mode", "min")
    banner("4. retention plan: keep the last 2 and the best 1 by eval loss (dry run)")
    tf_ckpt(*gc_args, "--dry-run")
    banner("5. apply it (state file rewritten first, then the files deleted)")
    tf_ckpt(*gc_args)
    tf_ckpt("ls", str(CKPTS))

    banner("6. promote the best step by eval loss to a serving dir, alias 'production'")
    tf_ckpt(
        "promote",
        str(CKPTS),
        "--step",
        "best",
        "--metric",
        "loss",
        "--mode",
        "min",
        "--to",
        str(PROMOTED),
        "--alias",
        "production",
    )
    manifest = json.loads((PROMOTED / "PROMOTED.json").read_text())
    print(
        f"  {os.path.relpath(PROMOTED, REPO)}/PROMOTED.json: step {manifest['step']}, "
        f"{len(manifest['files'])} files, loss {manifest['metrics'].get('loss', float('nan')):.4f}"
    )
    print(
        f"  {os.path.relpath(PROMOTED, REPO)}/checkpoint: "
        f"{(PROMOTED / 'checkpoint').read_text().splitlines()[0]}"
    )
    tf_ckpt("validate", str(PROMOTED))

    banner("7. corruption drill: flip one byte of a tensor in a copy; validate names it, exit 1")
    shutil.copytree(CKPTS, DRILL)
    latest = sorted(
        (p.name[: -len(".index")] for p in DRILL.glob("*.index")), key=lambda n: int(n.rsplit("-", 1)[1])
    )[-1]
    data_file, tensor = _flip_a_tensor_byte(DRILL, latest)
    print(f"  flipped a byte of {tensor} in {data_file}")
    tf_ckpt("validate", str(DRILL), "--step", "latest", expect=1)

    banner("done: demo_output/ckpts (the run), demo_output/promoted (serving copy)")


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--train-child":
        _train_child(argv[1])
        return 0
    t0 = time.monotonic()
    run_core_demo()
    print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
