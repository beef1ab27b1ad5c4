"""restore_tf1's check before restoring: every variable the Saver restores is in the checkpoint
with its shape, named all at once; what the Saver does not restore is not checked.

The Saver's variables are read from the graph (its ``RestoreV2`` ops), not from a private
attribute of ``tf.compat.v1.train.Saver``. One TF subprocess runs every case.
"""

from __future__ import annotations

import pytest

CASES = r"""
from airflow_tf_ckpt import tf_runtime as rt

v1 = tf.compat.v1
seed, varlist = args  # the tf1_saver prefix (w1 [4, 3], b1 [3], counter, global_step), tf1_varlist's


def seed_graph(w1_shape=(4, 3), resource=False):
    v1.get_variable("w1", shape=list(w1_shape), use_resource=resource)
    v1.get_variable("b1", shape=[3], use_resource=resource)
    v1.get_variable("counter", shape=[], dtype=tf.int64, use_resource=resource)
    v1.train.get_or_create_global_step()


def outcome(read="w1", **kwargs):
    try:
        with rt.restore_tf1(**kwargs) as r:
            return {"ok": float(r.value(read).sum())}
    except rt.CheckpointRestoreError as exc:
        return {"error": str(exc), "unmatched": exc.unmatched}


def extra_and_wrong(resource):
    def build():
        seed_graph(w1_shape=(4, 4), resource=resource)
        v1.get_variable("extra/kernel", shape=[2], use_resource=resource)

    return build


def renamed_subset():
    w = v1.get_variable("weights", shape=[4, 3])
    v1.get_variable("not_saved", shape=[7])  # in the graph, not in the checkpoint, not restored
    return v1.train.Saver(var_list={"w1": w})


def subset_list():
    seed_graph()
    v1.get_variable("not_saved", shape=[7])
    return [v for v in v1.global_variables() if v.op.name in ("w1", "b1")]


result = {
    "seed": outcome(ckpt_prefix_url=seed, build_graph=seed_graph),
    "ref": outcome(ckpt_prefix_url=seed, build_graph=extra_and_wrong(False)),
    "resource": outcome(ckpt_prefix_url=seed, build_graph=extra_and_wrong(True)),
    "saver": outcome(ckpt_prefix_url=seed, build_graph=renamed_subset, read="weights"),
    "list": outcome(ckpt_prefix_url=seed, build_graph=subset_list),
    "meta_subset": outcome(ckpt_prefix_url=varlist, read="encoder/kernel"),
    "w1_sum": float(tf.train.load_checkpoint(seed).get_tensor("w1").sum()),
    "encoder_sum": float(tf.train.load_checkpoint(varlist).get_tensor("encoder/kernel").sum()),
}
"""


@pytest.mark.tf
def test_tf1_check_names_what_the_saver_restores(tf_checkpoints, tf_run) -> None:
    seed, varlist = tf_checkpoints["tf1_saver"], tf_checkpoints["tf1_varlist"]
    got = tf_run(CASES, seed.prefix_path(), varlist.prefix_path())
    w1, encoder = got["w1_sum"], got["encoder_sum"]  # the saved values, as TF reads them
    assert got["seed"] == {"ok": w1}
    for kind in ("ref", "resource"):  # ONE error naming the missing variable and the wrong shape
        assert got[kind]["unmatched"] == ["extra/kernel", "w1 (graph [4, 4], checkpoint [4, 3])"], got[kind]
        assert "1 variable(s) of the graph are not in the checkpoint: extra/kernel" in got[kind]["error"]
    # a Saver (or var_list) over some variables: the others are neither checked nor restored
    assert got["saver"] == {"ok": w1} and got["list"] == {"ok": w1}
    # the .meta of Saver(var_list=[encoder/kernel]): decoder/kernel is in the graph, not restored
    assert got["meta_subset"] == {"ok": encoder} and encoder != 0


PARTITIONED = r"""
import os, tempfile
from airflow_tf_ckpt import tf_runtime as rt

v1 = tf.compat.v1


def partitioned(shape=(10, 4)):
    return v1.get_variable(
        "w", shape=list(shape), partitioner=v1.fixed_size_partitioner(2),
        initializer=v1.random_normal_initializer(seed=7),
    )


g = tf.Graph()
with g.as_default():
    w = partitioned()
    saver = v1.train.Saver()
    with v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        saved = float(sess.run(w.as_tensor()).sum())
        prefix = saver.save(sess, os.path.join(tempfile.mkdtemp(), "model.ckpt"), global_step=3)


def outcome(shape):
    try:
        with rt.restore_tf1(ckpt_prefix_url=prefix, build_graph=lambda: partitioned(shape)) as r:
            return {"ok": float(r.value("w/part_0").sum() + r.value("w/part_1").sum())}
    except rt.CheckpointRestoreError as exc:
        return {"error": str(exc), "unmatched": exc.unmatched}


result = {
    "saved": saved,
    "keys": sorted(tf.train.load_checkpoint(prefix).get_variable_to_shape_map()),
    "same": outcome((10, 4)),
    "other": outcome((12, 4)),
}
"""


@pytest.mark.tf
def test_tf1_partitioned_variables_are_checked_by_their_full_shape(tf_run) -> None:
    """A partitioned variable is saved as one key (its full shape, each part a slice of it): the
    check reads the full shape from the parts' slice specs, restores a graph that matches, and
    names the variable with both full shapes when the graph's is another."""
    got = tf_run(PARTITIONED)
    assert "w" in got["keys"] and not any("part_" in k for k in got["keys"]), got["keys"]
    assert got["same"] == {"ok": pytest.approx(got["saved"], rel=1e-6)}, got
    assert got["other"]["unmatched"] == ["w (graph [12, 4], checkpoint [10, 4])"], got["other"]
