"""TensorFlow-side code for the agreement and differential tests (run in the TF subprocess).

Each constant is source for ``tf_batch`` (``tests/fixtures/tf_checkpoints.py``): it runs with
``tf``, ``args``, ``json`` and ``os`` in scope and assigns ``result``. The pytest process itself
never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# The TF1 graph of the V1 checkpoints: scalars (global_step, a float, a string), a string
# vector, a variable partitioned in 3, a matrix. ``v1_restore(prefix)`` restores a V1 step into it
# (``load_checkpoint(...).get_tensor`` cannot read a partitioned V1 variable: "Sliced checkpoints
# are not supported"; a Saver restore can, and is what a TF1 job does).
V1_GRAPH = r"""
v1 = tf.compat.v1

def v1_restore(prefix):
    try:
        g = tf.Graph()
        with g.as_default():
            v1_graph()
            saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
            with v1.Session(graph=g) as sess:
                saver.restore(sess, prefix)
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"

def v1_graph():
    gs = v1.train.get_or_create_global_step()
    v1.get_variable("lr", initializer=0.5)                        # float scalar
    v1.get_variable("name", initializer=tf.constant("hello"), dtype=tf.string)   # string scalar
    v1.get_variable("names", initializer=tf.constant(["a", "bb", "ccc"]), dtype=tf.string)
    v1.get_variable("part", shape=[10, 3], partitioner=v1.fixed_size_partitioner(3))  # partitioned
    v1.get_variable("dense/kernel", shape=[4, 2], initializer=v1.random_normal_initializer(seed=1))
    return gs
"""

# args: [out_dir]. Writes real checkpoints and records what TF itself says of them.
BUILD = (
    V1_GRAPH
    + r"""
out = args[0]
facts = {}

for name, sharded in (("v1", False), ("v1_sharded", True)):
    d = os.path.join(out, name)
    os.makedirs(d)
    g = tf.Graph()
    with g.as_default():
        gs = v1_graph()
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1, sharded=sharded)
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for step in (1, 2):
                sess.run(v1.assign(gs, step))
                saver.save(sess, os.path.join(d, "model.ckpt"), global_step=step)
    latest = tf.train.latest_checkpoint(d)
    reader = tf.train.load_checkpoint(latest)
    names = sorted(reader.get_variable_to_shape_map())
    facts[name] = {"latest": os.path.basename(latest), "tensors": names,
                   "global_step": int(reader.get_tensor("global_step")),
                   "restore": {p: v1_restore(os.path.join(d, p + ("-?????-of-00001" if sharded else "")))
                               for p in ("model.ckpt-1", "model.ckpt-2")}}

# V2, two steps by CheckpointManager (relative paths in the state file)
d = os.path.join(out, "v2")
ck = tf.train.Checkpoint(w=tf.Variable(tf.reshape(tf.range(64, dtype=tf.float32), [8, 8])),
                         s=tf.Variable("a string"), step=tf.Variable(0, dtype=tf.int64))
mgr = tf.train.CheckpointManager(ck, d, max_to_keep=5)
for _ in range(2):
    ck.step.assign_add(1)
    mgr.save()
facts["v2"] = {"latest": os.path.basename(tf.train.latest_checkpoint(d))}

# a string tensor split into slices by MaxShardSizePolicy
d = os.path.join(out, "sliced_strings")
big = tf.Variable(tf.constant(["x" * 1000] * 64))
ck = tf.train.Checkpoint(big=big, f=tf.Variable(tf.zeros([256])))
pol = tf.train.experimental.MaxShardSizePolicy(max_shard_size=4000)
path = ck.write(os.path.join(d, "ckpt-1"),
                options=tf.train.CheckpointOptions(experimental_sharding_callback=pol))
reader = tf.train.load_checkpoint(path)
reads = {}
for n in sorted(reader.get_variable_to_shape_map()):
    try:
        reader.get_tensor(n)
        reads[n] = None
    except Exception as exc:
        reads[n] = f"{type(exc).__name__}: {exc}"
try:
    tf.train.Checkpoint(big=tf.Variable(tf.constant([""] * 64)), f=tf.Variable(tf.zeros([256]))).read(
        path).assert_consumed()
    restore = None
except Exception as exc:
    restore = f"{type(exc).__name__}: {exc}"
facts["sliced_strings"] = {"prefix": "ckpt-1", "reads": reads, "restore": restore}

# truncated .meta files: what import_meta_graph says of each
meta = os.path.join(out, "v1", "model.ckpt-2.meta")
data = open(meta, "rb").read()
cuts = sorted({0, 1, 10, len(data) // 3, len(data) // 2, len(data) - 7, len(data) - 1})
verdicts = {}
for cut in cuts:
    p = os.path.join(out, f"cut-{cut}.meta")
    with open(p, "wb") as fh:
        fh.write(data[:cut])
    try:
        with tf.Graph().as_default():
            saver = v1.train.import_meta_graph(p)
            with v1.Session() as sess:
                saver.restore(sess, os.path.join(out, "v1", "model.ckpt-2"))  # None: AttributeError
        verdicts[cut] = None
    except Exception as exc:
        verdicts[cut] = f"{type(exc).__name__}: {str(exc)[:200]}"
    os.remove(p)
facts["meta_cuts"] = {"size": len(data), "verdicts": verdicts}
result = facts
"""
)

# args: [[dir, ...]]. What TF's own readers say of each dir's state file.
STATE_VERDICTS = r"""
from tensorflow.python.checkpoint import checkpoint_management as cm
import logging as _logging
tf.get_logger().setLevel(_logging.CRITICAL)
out = []
for d in args[0]:
    v = {}
    try:
        st = cm.get_checkpoint_state(d)
        v["state"] = None if st is None else {"latest": st.model_checkpoint_path,
                                              "all": list(st.all_model_checkpoint_paths)}
    except Exception as exc:
        v["state_error"] = f"{type(exc).__name__}: {exc}"
    try:
        v["latest"] = tf.train.latest_checkpoint(d)
    except Exception as exc:
        v["latest_error"] = f"{type(exc).__name__}: {exc}"
    out.append(v)
result = out
"""

# args: [[prefix, ...]]. None when TF reads every tensor of the prefix, else TF's error.
READ_VERDICTS = r"""
out = []
for prefix in args[0]:
    try:
        reader = tf.train.load_checkpoint(prefix)
        for n in sorted(reader.get_variable_to_shape_map()):
            reader.get_tensor(n)
        out.append(None)
    except Exception as exc:
        out.append(f"{type(exc).__name__}: {str(exc)[:300]}")
result = out
"""

# args: [[v1 prefix, ...]]. None when a TF1 Saver restores the step, else TF's error.
V1_RESTORE_VERDICTS = (
    V1_GRAPH
    + r"""
result = [v1_restore(p) for p in args[0]]
"""
)


@pytest.fixture(scope="session")
def tf_built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(root, facts): the checkpoints :data:`BUILD` writes (one TF subprocess per session) and
    what TF said of them. Tests copy what they change."""
    from tests.fixtures.tf_checkpoints import tf_available, tf_batch

    if not tf_available():
        pytest.skip("TensorFlow is not installed")
    root = tmp_path_factory.mktemp("tf_oracle")
    facts = tf_batch([(BUILD, [str(root)])])[0]
    return root, facts


# args: [out_dir, cases]. Each case {"name", "keep", "hours", "gaps"} (gaps: hours between saves)
# saves one step per gap with TF's clock (time.time) under control, twice: into NAME/all with
# max_to_keep=None (every step kept: the input our planner sees) and into NAME/tf with the case's
# max_to_keep and keep_checkpoint_every_n_hours. Result: {name: [prefixes TF kept in NAME/tf]}.
RETENTION = r"""
from unittest import mock
out, cases = args
result = {}
for c in cases:
    clock = [1.7e9]
    with mock.patch("time.time", lambda: clock[0]):
        for variant, keep, hours in (("all", None, None), ("tf", c["keep"], c["hours"])):
            d = os.path.join(out, c["name"], variant)
            clock[0] = 1.7e9
            ck = tf.train.Checkpoint(v=tf.Variable(1.0))
            mgr = tf.train.CheckpointManager(ck, d, max_to_keep=keep, keep_checkpoint_every_n_hours=hours)
            for i, gap in enumerate(c["gaps"]):
                clock[0] += gap * 3600
                mgr.save(checkpoint_number=i + 1)
    tf_dir = os.path.join(out, c["name"], "tf")
    result[c["name"]] = sorted(f[:-len(".index")] for f in os.listdir(tf_dir) if f.endswith(".index"))
"""
