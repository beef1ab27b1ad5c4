"""Callables the operator tests pass to the TF operators by dotted path (``tests.operator_helpers.X``).

They mirror the models that ``tests/tf_factory.py`` trains, and import TensorFlow lazily: only the
dag.test() process that runs a Restore/Evaluate task imports it.
"""

from __future__ import annotations

import os
from typing import Any

LEASES_SEEN: list[list[str]] = []  # what eval_with_lease_probe saw (same process as dag.test)


def build_manager_ckpt() -> Any:
    """The ``tf2_manager`` variant's objects: Dense(8, relu) -> Dense(2) on 4 inputs, and a step."""
    import keras
    import tensorflow as tf

    model = keras.Sequential(
        [keras.Input(shape=(4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)]
    )
    return tf.train.Checkpoint(model=model, step=tf.Variable(0, dtype=tf.int64))


def build_wrong_ckpt() -> Any:
    """A model with an extra layer: its variables have nothing to restore from."""
    import keras
    import tensorflow as tf

    model = keras.Sequential(
        [
            keras.Input(shape=(4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2),
            keras.layers.Dense(3, name="extra_head"),
        ]
    )
    return tf.train.Checkpoint(model=model)


def eval_manager(restored: Any, step: int | None) -> dict[str, float]:
    """A deterministic "evaluation" of the tf2_manager model, plus the restored step counter."""
    import numpy as np

    x = np.linspace(-1, 1, 32, dtype="float32").reshape(8, 4)
    out = np.asarray(restored.model(x))
    return {"loss": float(np.mean(out**2)), "restored_step": float(restored.root.step.numpy())}


def eval_tf1_saver(restored: Any, step: int | None) -> dict[str, float]:
    """TF1 (seed style): read tensors out of the restored session."""
    return {"global_step": float(restored.value("global_step")), "w1_sum": float(restored.value("w1").sum())}


def build_tf1_saver_graph() -> Any:
    """The seed's graph rebuilt in code (``tf1_saver`` has no ``.meta`` left)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.get_variable("w1", shape=[4, 3])
    v1.get_variable("b1", shape=[3])
    v1.get_variable("counter", shape=[], dtype=tf.int64)
    v1.train.get_or_create_global_step()
    return None


def eval_v1_graph(restored: Any, step: int | None) -> dict[str, float]:
    """The ``v1`` variant's graph (imported from a ``.meta``): conv1/biases were initialised to 0.5."""
    return {"biases_sum": float(restored.value("conv1/biases").sum())}


def eval_with_gc_probe(restored: Any, step: int | None) -> dict[str, float]:
    """While the step is being evaluated: which lease files exist, and what would GC decide for it?"""
    from airflow_tf_ckpt.core.retention.planner import plan_retention
    from airflow_tf_ckpt.core.retention.policies import policies_from_options
    from airflow_tf_ckpt.core.storage.location import Location

    directory, prefix = os.path.split(restored.staged.source)
    leases = sorted(n for n in os.listdir(directory) if n.startswith(prefix + ".lease-"))
    plan = plan_retention(Location.of(directory), policies_from_options(keep_last=1), prefix="ckpt")
    decision = plan.decision(prefix)
    LEASES_SEEN.append(leases)
    GC_DECISIONS.append({"action": decision.action, "reasons": list(decision.reasons)})
    metrics = eval_manager(restored, step)
    metrics["leases_seen"] = float(len(leases))
    return metrics


GC_DECISIONS: list[dict[str, Any]] = []
