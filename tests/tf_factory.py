"""Build real TensorFlow checkpoints, and answer questions with TensorFlow, in a SUBPROCESS.

This script is the only place in the test suite that imports TensorFlow. The pytest process
never does (importing TF takes ~10 s and pulls in a lot of global state); it runs this file with
``python tests/tf_factory.py ...`` instead. See ``tests/fixtures/tf_checkpoints.py`` for the
fixtures and helpers that wrap it.

Commands::

    python tests/tf_factory.py build OUT_DIR [VARIANT ...]   # write variants, print a manifest
    python tests/tf_factory.py call RESULT_JSON REQUESTS_JSON  # run API functions, write results

``call`` reads a JSON list of ``[name, args]`` requests; ``name`` is a function of ``API`` below
or the literal ``"exec"`` with ``args = [source, bound_args]``: the source runs with ``tf`` and
``args`` in scope and must assign ``result`` (anything JSON-serialisable). Results (or
``{"error": "..."}`` per request) go to RESULT_JSON, so TF's chatter on stdout/stderr never
mixes with them.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

VARIANTS = (
    "tf1_saver",
    "tf1_varlist",
    "v1",
    "v1_nostep",
    "v1_sharded",
    "tf2_manager",
    "sharded",
    "strings",
    "big",
)


def _tf():
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------------------------
# builders: each writes one variant into its own (new) dir and returns facts for the manifest


def build_tf1_saver(out: str) -> dict[str, Any]:
    """The seed's TF1 code: graph mode, global_step, absolute save path, no .meta after step 1.

    ``max_to_keep=4`` with 6 saves: TF deletes the first two steps, and with them the only
    ``.meta`` (it was written by the first save only).
    """
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    steps = [100, 200, 300, 400, 500, 600]
    with graph.as_default():
        w1 = v1.get_variable("w1", shape=[4, 3], initializer=v1.random_normal_initializer(seed=1))
        b1 = v1.get_variable("b1", shape=[3], initializer=v1.zeros_initializer())
        counter = v1.get_variable("counter", shape=[], dtype=tf.int64, initializer=v1.zeros_initializer())
        global_step = v1.train.get_or_create_global_step()
        bump = v1.group(v1.assign_add(w1, tf.ones_like(w1)), v1.assign_add(counter, 1))
        saver = v1.train.Saver(max_to_keep=4, keep_checkpoint_every_n_hours=2)
        prefix = os.path.abspath(os.path.join(out, "my_test_model"))
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for i, step in enumerate(steps):
                sess.run(bump)
                sess.run(v1.assign(global_step, step))
                saver.save(sess, prefix, global_step=step, write_meta_graph=(i == 0))
            del b1
    return {
        "base": "my_test_model",
        "steps": steps,
        "kept": steps[-4:],
        "format": "v2",
        "absolute_paths": True,
    }


def build_tf1_varlist(out: str) -> dict[str, Any]:
    """A Saver over an explicit var_list: only those variables are in the checkpoint."""
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        enc = v1.get_variable(
            "encoder/kernel", shape=[8, 4], initializer=v1.random_normal_initializer(seed=2)
        )
        v1.get_variable("decoder/kernel", shape=[4, 8], initializer=v1.zeros_initializer())
        saver = v1.train.Saver(var_list=[enc], max_to_keep=2)
        prefix = os.path.abspath(os.path.join(out, "encoder"))
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for step in (10, 20):
                saver.save(sess, prefix, global_step=step)
    return {
        "base": "encoder",
        "steps": [10, 20],
        "kept": [10, 20],
        "format": "v2",
        "variables": ["encoder/kernel"],
    }


def _v1_graph(tf: Any, seed: int) -> None:
    v1 = tf.compat.v1
    v1.get_variable("conv1/weights", shape=[3, 3, 2, 4], initializer=v1.random_normal_initializer(seed=seed))
    v1.get_variable("conv1/biases", shape=[4], initializer=v1.constant_initializer(0.5))
    v1.get_variable("logits/weights", shape=[16, 5], initializer=v1.random_normal_initializer(seed=seed + 1))


def build_v1(out: str) -> dict[str, Any]:
    """Legacy V1 tables: ``model.ckpt-N`` single files + ``.meta`` + ``checkpoint``."""
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        _v1_graph(tf, 3)
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1, max_to_keep=5)
        prefix = os.path.abspath(os.path.join(out, "model.ckpt"))
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            for step in (1, 2):
                saver.save(sess, prefix, global_step=step)
    return {"base": "model.ckpt", "steps": [1, 2], "kept": [1, 2], "format": "v1"}


def build_v1_nostep(out: str) -> dict[str, Any]:
    """A V1 save with no step suffix, like the seed's ``inception_v1.ckpt``."""
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        _v1_graph(tf, 5)
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, os.path.abspath(os.path.join(out, "inception_v1.ckpt")))
    return {
        "base": "inception_v1.ckpt",
        "steps": [None],
        "kept": [None],
        "format": "v1",
        "prefixes": ["inception_v1.ckpt"],
    }


def build_v1_sharded(out: str) -> dict[str, Any]:
    """V1 with ``sharded=True``: ``PREFIX-00000-of-0000N`` table files."""
    tf = _tf()
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        _v1_graph(tf, 7)
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1, sharded=True)
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, os.path.abspath(os.path.join(out, "model.ckpt")), global_step=7)
    return {"base": "model.ckpt", "steps": [7], "kept": [7], "format": "v1"}


def build_tf2_manager(out: str) -> dict[str, Any]:
    """TF2: a tiny Keras model + optimizer under ``CheckpointManager(max_to_keep=3)``."""
    tf = _tf()
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [tf.keras.Input(shape=(4,)), tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(2)]
    )
    opt = tf.keras.optimizers.Adam(0.01)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=3)
    x = tf.random.stateless_normal((16, 4), seed=(1, 2))
    y = tf.random.stateless_normal((16, 2), seed=(3, 4))
    saved = []
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        ckpt.step.assign_add(1)
        saved.append(os.path.basename(manager.save(checkpoint_number=int(ckpt.step.numpy()))))
    return {
        "base": "ckpt",
        "steps": [1, 2, 3, 4, 5],
        "kept": [3, 4, 5],
        "format": "v2",
        "prefixes": saved[-3:],
    }


def build_sharded(out: str) -> dict[str, Any]:
    """Several data shards, with ``big`` SPLIT into slices, via ``MaxShardSizePolicy``."""
    tf = _tf()
    big = tf.Variable(tf.reshape(tf.range(64 * 128, dtype=tf.float32), (64, 128)), name="big")  # 32 KiB
    mid = tf.Variable(tf.ones((32, 32), tf.float32), name="mid")  # 4 KiB
    small = tf.Variable([1, 2, 3], dtype=tf.int32, name="small")
    ckpt = tf.train.Checkpoint(big=big, mid=mid, small=small)
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=10_000)
    )
    manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=2)
    path = manager.save(checkpoint_number=1, options=opts)
    return {
        "base": "ckpt",
        "steps": [1],
        "kept": [1],
        "format": "v2",
        "prefixes": [os.path.basename(path)],
        "split_tensor": "big/.ATTRIBUTES/VARIABLE_VALUE",
    }


def build_strings(out: str) -> dict[str, Any]:
    """A multi-element tf.string variable (incl. empty and >127-byte elements: 2-byte varints)."""
    tf = _tf()
    words = tf.Variable([["alpha", ""], ["b" * 300, "ünïcödé"], ["x", "end"]], dtype=tf.string, name="words")
    label = tf.Variable("a scalar string", dtype=tf.string)
    num = tf.Variable(3.5)
    ckpt = tf.train.Checkpoint(words=words, label=label, num=num)
    manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=1)
    path = manager.save(checkpoint_number=1)
    return {
        "base": "ckpt",
        "steps": [1],
        "kept": [1],
        "format": "v2",
        "prefixes": [os.path.basename(path)],
        "string_tensor": "words/.ATTRIBUTES/VARIABLE_VALUE",
    }


def build_big(out: str, size_mib: int = 1024, shard_mib: int = 256) -> dict[str, Any]:
    """A large multi-shard checkpoint (for bench/verify.py): float32 variables of 32 MiB each."""
    tf = _tf()
    per_var = 32 << 20
    n = max(1, (size_mib << 20) // per_var)
    rows = per_var // 4 // 1024
    variables = {
        f"layer_{i:03d}": tf.Variable(tf.random.stateless_uniform((rows, 1024), seed=(i, 7)))
        for i in range(n)
    }
    ckpt = tf.train.Checkpoint(**variables)
    opts = tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(
            max_shard_size=shard_mib << 20
        )
    )
    manager = tf.train.CheckpointManager(ckpt, out, max_to_keep=1)
    path = manager.save(checkpoint_number=1, options=opts)
    return {"base": "ckpt", "steps": [1], "kept": [1], "format": "v2", "prefixes": [os.path.basename(path)]}


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "tf1_saver": build_tf1_saver,
    "tf1_varlist": build_tf1_varlist,
    "v1": build_v1,
    "v1_nostep": build_v1_nostep,
    "v1_sharded": build_v1_sharded,
    "tf2_manager": build_tf2_manager,
    "sharded": build_sharded,
    "strings": build_strings,
    "big": build_big,
}
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "big"]


def build(out_dir: str, names: list[str], **kwargs: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {}
    for name in names:
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        facts = BUILDERS[name](d, **kwargs) if name == "big" else BUILDERS[name](d)
        facts["dir"] = d
        facts.setdefault("prefixes", [f"{facts['base']}-{s}" for s in facts["kept"]])
        facts["files"] = sorted(os.listdir(d))
        manifest[name] = facts
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    return manifest


# --------------------------------------------------------------------------------------------
# API: questions answered with TensorFlow (called through ``call``)


def variable_map(prefix: str) -> dict[str, dict[str, Any]]:
    """``tf.train.load_checkpoint(prefix)``: {name: {"shape": [...], "dtype": "float32"}}."""
    tf = _tf()
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    return {k: {"shape": [int(d) for d in shapes[k]], "dtype": dtypes[k].name} for k in shapes}


def read_all(prefix: str) -> dict[str, Any]:
    """Read every tensor with ``load_checkpoint``; {"ok": bool, "error": str|None, "count": n}."""
    tf = _tf()
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        for name in names:
            reader.get_tensor(name)
        return {"ok": True, "error": None, "count": len(names)}
    except Exception as exc:  # noqa: BLE001 - the error text is the answer
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "count": 0}


def latest_checkpoint(directory: str) -> str | None:
    return _tf().train.latest_checkpoint(directory)


def tensor_values(prefix: str, names: list[str]) -> dict[str, Any]:
    """Values of some tensors as lists (bytes decoded as latin-1)."""
    tf = _tf()
    reader = tf.train.load_checkpoint(prefix)
    out: dict[str, Any] = {}
    for name in names:
        value = reader.get_tensor(name)
        if getattr(value, "dtype", None) is not None and value.dtype.kind in "OS":
            out[name] = json.loads(json.dumps(value.tolist(), default=lambda b: b.decode("latin-1")))
        elif isinstance(value, bytes):
            out[name] = value.decode("latin-1")
        else:
            out[name] = value.tolist()
    return out


API: dict[str, Callable[..., Any]] = {
    "variable_map": variable_map,
    "read_all": read_all,
    "latest_checkpoint": latest_checkpoint,
    "tensor_values": tensor_values,
}


def _exec(source: str, args: Any) -> Any:
    scope: dict[str, Any] = {"tf": _tf(), "args": args, "json": json, "os": os}
    exec(compile(source, "<tf_subprocess>", "exec"), scope)  # noqa: S102 - test helper by design
    return scope.get("result")


def call(result_path: str, requests_path: str) -> None:
    with open(requests_path) as fh:
        requests = json.load(fh)
    results = []
    for name, args in requests:
        try:
            if name == "exec":
                results.append({"value": _exec(args[0], args[1] if len(args) > 1 else None)})
            else:
                results.append({"value": API[name](*args)})
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            results.append({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
    with open(result_path, "w") as fh:
        json.dump(results, fh, default=str)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "build":
        kwargs: dict[str, Any] = {}
        names = []
        for a in argv[2:]:
            if a.startswith("--size-mib="):
                kwargs["size_mib"] = int(a.split("=", 1)[1])
            elif a.startswith("--shard-mib="):
                kwargs["shard_mib"] = int(a.split("=", 1)[1])
            else:
                names.append(a)
        manifest = build(argv[1], names or DEFAULT_VARIANTS, **kwargs)
        print(json.dumps(manifest))
        return 0
    if len(argv) == 3 and argv[0] == "call":
        call(argv[1], argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
