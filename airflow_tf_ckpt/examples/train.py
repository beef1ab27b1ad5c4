"""A tiny Keras regression model trained on synthetic data, saved with ``tf.train.CheckpointManager``.

``build_checkpoint`` builds the model (and optimizer) exactly as training does; the evaluator
(``airflow_tf_ckpt.examples.eval``) restores into it. The data are deterministic (fixed seeds), so
a run is reproducible and the loss goes down step after step.

Object stores: TF's own ``gs`` filesystem does not use our credentials or the GCS emulator, so for
a non-local ``ckpt_dir`` we train into a local dir and mirror every save to the remote dir through
fsspec in TF's commit order: data shards, then the ``.index``, then the ``checkpoint`` state file
LAST (the commit signal the sensors wait for), and deletions after that.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INPUT_DIM = 4
HIDDEN = 16
CKPT_BASE = "ckpt"


def synthetic_data(n: int, seed: int) -> tuple[Any, Any]:
    """``y = x · w + 0.3 + noise``, with fixed true weights and a seeded sample."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = np.array([[1.5], [-2.0], [0.5], [3.0]], dtype="float32")
    x = rng.normal(size=(n, INPUT_DIM)).astype("float32")
    y = (x @ w + 0.3 + 0.05 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def build_model() -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input(shape=(INPUT_DIM,)),
            keras.layers.Dense(HIDDEN, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="tiny_regressor",
    )
    return model


def build_checkpoint(with_optimizer: bool = False) -> Any:
    """The ``tf.train.Checkpoint`` the trainer saves; ``with_optimizer`` also builds Adam's slots.

    Evaluation only needs the model: with ``match="existing"`` the optimizer values in the
    checkpoint are simply not used.
    """
    import keras
    import tensorflow as tf

    model = build_model()
    objs: dict[str, Any] = {"model": model, "step": tf.Variable(0, dtype=tf.int64)}
    if with_optimizer:
        opt = keras.optimizers.Adam(0.05)
        opt.build(model.trainable_variables)
        objs["optimizer"] = opt
    return tf.train.Checkpoint(**objs)


@dataclass
class TrainResult:
    ckpt_dir: str
    steps: list[int] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    prefixes: list[str] = field(default_factory=list)


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _mirror(
    local_dir: str, remote_url: str, prefix: str, dropped: list[str], storage_options: dict[str, Any] | None
) -> None:
    """Copy one saved step to the remote dir in TF's commit order, then mirror TF's deletions.

    ``dropped`` are prefixes TF's ``max_to_keep`` dropped in this save; their remote files go only
    when TF really deleted the local ones (a step kept by ``keep_checkpoint_every_n_hours`` stays).
    """
    from airflow_tf_ckpt.core.storage.location import Location

    loc = Location.of(remote_url, storage_options)
    names = sorted(os.listdir(local_dir))
    data = [n for n in names if n.startswith(prefix + ".data-")]
    for name in data + [prefix + ".index"]:
        with open(os.path.join(local_dir, name), "rb") as fh:
            loc.fs.pipe_file(loc.join(name), fh.read())
    with open(os.path.join(local_dir, "checkpoint"), "rb") as fh:
        loc.write_atomic("checkpoint", fh.read())
    gone = [p for p in dropped if not os.path.exists(os.path.join(local_dir, p + ".index"))]
    if gone:
        for name in loc.listdir():
            if any(name == g + ".index" or name.startswith(g + ".data-") for g in gone):
                loc.fs.rm_file(loc.join(name))


def train(
    ckpt_dir: str,
    *,
    steps: int = 5,
    start: int | None = None,
    save_every: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    max_to_keep: int | None = None,
    sleep_between_saves: float = 0.0,
    storage_options: dict[str, Any] | None = None,
    on_save: Callable[[int, str, float], None] | None = None,
) -> TrainResult:
    """Train for ``steps`` more optimizer steps and save every ``save_every`` of them.

    Resumes from the latest checkpoint in ``ckpt_dir`` when there is one (so calling it again
    continues the same run). ``max_to_keep=None`` leaves deletion to the retention policy, which
    (unlike TF's ``max_to_keep``) never deletes a step that an evaluator holds a lease on.
    ``on_save(step, prefix_url, loss)`` is called after each save is committed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)  # same initial weights and batches on every machine
    local = _is_local(ckpt_dir)
    work_dir = ckpt_dir.removeprefix("file://") if local else tempfile.mkdtemp(prefix="tf_ckpt_train_")
    os.makedirs(work_dir, exist_ok=True)
    result = TrainResult(ckpt_dir=ckpt_dir)
    try:
        if not local:
            _pull_latest(ckpt_dir, work_dir, storage_options)
        ckpt, manager = _resume(tf, work_dir, max_to_keep, start)
        batches = _batches(tf, seed, batch_size)
        train_step = _train_step(tf, ckpt.model, ckpt.optimizer)
        for _ in range(steps):
            loss = float(train_step(*next(batches)))
            ckpt.step.assign_add(1)
            step = int(ckpt.step.numpy())
            if step % save_every:
                continue
            url = _save(manager, step, ckpt_dir, None if local else work_dir, storage_options)
            result.steps.append(step)
            result.losses[step] = loss
            result.prefixes.append(url)
            if on_save is not None:
                on_save(step, url, loss)
            if sleep_between_saves:
                time.sleep(sleep_between_saves)
    finally:
        if not local:
            shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _resume(tf: Any, work_dir: str, max_to_keep: int | None, start: int | None) -> tuple[Any, Any]:
    """The model and optimizer under a ``CheckpointManager`` of ``work_dir``, restored from its
    latest checkpoint when there is one; ``start`` overrides the step counter."""
    ckpt = build_checkpoint(with_optimizer=True)
    manager = tf.train.CheckpointManager(ckpt, work_dir, max_to_keep=max_to_keep, checkpoint_name=CKPT_BASE)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    if start is not None:
        ckpt.step.assign(start)
    return ckpt, manager


def _batches(tf: Any, seed: int, batch_size: int) -> Any:
    """Endless shuffled batches of the synthetic data (the same ones for the same seed)."""
    x, y = synthetic_data(2048, seed)
    return iter(
        tf.data.Dataset.from_tensor_slices((x, y)).shuffle(2048, seed=seed).repeat().batch(batch_size)
    )


def _train_step(tf: Any, model: Any, opt: Any) -> Callable[[Any, Any], Any]:
    """One optimizer step on a batch (mean squared error), compiled; returns the loss."""

    @tf.function
    def train_step(xb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb, training=True) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return train_step


def _save(
    manager: Any, step: int, ckpt_dir: str, work_dir: str | None, storage_options: dict[str, Any] | None
) -> str:
    """Save ``step``; for a remote ``ckpt_dir`` (trained in the local ``work_dir``) mirror it
    there, with the steps the manager dropped. Returns the step's URL."""
    before = {os.path.basename(p) for p in manager.checkpoints}
    prefix = os.path.basename(manager.save(checkpoint_number=step))
    if work_dir is not None:
        dropped = sorted(before - {os.path.basename(p) for p in manager.checkpoints})
        _mirror(work_dir, ckpt_dir, prefix, dropped, storage_options)
    return f"{ckpt_dir.rstrip('/')}/{prefix}"


def _pull_latest(remote_url: str, work_dir: str, storage_options: dict[str, Any] | None) -> None:
    """Fetch the remote state file and the latest step's files so that training resumes there.

    The state file is copied whole, so the next mirrored state file still names the older steps.
    """
    from airflow_tf_ckpt.core.errors import StorageError
    from airflow_tf_ckpt.core.formats.state import format_state
    from airflow_tf_ckpt.core.steps.discovery import discover
    from airflow_tf_ckpt.core.storage.location import Location

    loc = Location.of(remote_url, storage_options)
    try:
        cdir = discover(loc, CKPT_BASE)
    except StorageError:
        return
    latest = cdir.latest()
    if latest is None or cdir.state is None:
        return
    for f in latest.files:
        loc.fs.get_file(f.path, os.path.join(work_dir, f.name))
    with open(os.path.join(work_dir, "checkpoint"), "w") as fh:
        fh.write(format_state(cdir.state))
