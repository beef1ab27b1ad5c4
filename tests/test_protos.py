"""The runtime descriptors: the serialized form the module loads is exactly what the builder makes."""

from __future__ import annotations

import subprocess
import sys

from airflow_tf_ckpt.core.formats import protos


def test_serialized_descriptor_matches_the_builder():
    assert protos.SERIALIZED_FILE_DESCRIPTOR == protos.build_file_descriptor().SerializeToString(), (
        "regenerate SERIALIZED_FILE_DESCRIPTOR with `python -m airflow_tf_ckpt.core.formats.protos`"
    )


def test_messages_round_trip():
    e = protos.BundleEntryProto(dtype=1, shard_id=2, offset=3, size=4, crc32c=0xFFFFFFFF)
    e.shape.dim.add(size=7)
    e.slices.add().extent.add(start=1, length=2)
    again = protos.BundleEntryProto.FromString(e.SerializeToString())
    assert again == e and again.slices[0].extent[0].HasField("length")
    s = protos.CheckpointState(model_checkpoint_path="ckpt-1", all_model_checkpoint_timestamps=[1.5])
    assert protos.CheckpointState.FromString(s.SerializeToString()) == s


def test_loading_the_protos_skips_descriptor_pb2():
    code = (
        "import sys, airflow_tf_ckpt.core.formats.protos; "
        "print('google.protobuf.descriptor_pb2' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
