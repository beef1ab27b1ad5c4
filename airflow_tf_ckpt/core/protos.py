"""Protobuf messages of TensorFlow checkpoints, built at runtime.

We do not depend on TensorFlow (schedulers must not need it) and we do not vendor generated
``_pb2`` modules (they pin a protobuf runtime version). Instead the few messages we need are
declared here as ``FileDescriptorProto`` objects, added to a private descriptor pool, and turned
into classes with ``message_factory``. Field numbers and types follow the TF sources:

* ``tensorflow/python/training/checkpoint_state.proto``   (CheckpointState)
* ``tensorflow/core/protobuf/tensor_bundle.proto``        (BundleHeaderProto, BundleEntryProto)
* ``tensorflow/core/framework/{tensor_shape,tensor_slice,versions}.proto``
* ``tensorflow/core/util/saved_tensor_slice.proto``        (V1 tables)

Enum-typed fields (dtype, endianness) are declared as ``int32``: the wire format is identical and
it keeps unknown values readable instead of failing.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

_pool = descriptor_pool.DescriptorPool()


def build_file_descriptor() -> Any:
    """The ``FileDescriptorProto`` of every message above, built field by field.

    This is the source of truth. Importing ``descriptor_pb2`` costs ~0.2 s (a third of a
    ``tf-ckpt validate`` start-up), so the module loads the serialized form of this descriptor,
    ``SERIALIZED_FILE_DESCRIPTOR``; ``tests/test_protos.py`` checks that the two are identical.
    Regenerate with ``python -m airflow_tf_ckpt.core.protos`` after changing this function.
    """
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    _OPT, _REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def _field(msg: Any, name: str, number: int, ftype: int, label: int = _OPT,
               type_name: str | None = None) -> None:
        f = msg.field.add(name=name, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = type_name

    _F = F
    fdp = descriptor_pb2.FileDescriptorProto(
        name="airflow_tf_ckpt/tf_checkpoint.proto", package="tensorflow", syntax="proto3"
    )

    # checkpoint_state.proto
    m = fdp.message_type.add(name="CheckpointState")
    _field(m, "model_checkpoint_path", 1, _F.TYPE_STRING)
    _field(m, "all_model_checkpoint_paths", 2, _F.TYPE_STRING, _REP)
    _field(m, "all_model_checkpoint_timestamps", 3, _F.TYPE_DOUBLE, _REP)
    _field(m, "last_preserved_timestamp", 4, _F.TYPE_DOUBLE)

    # versions.proto
    m = fdp.message_type.add(name="VersionDef")
    _field(m, "producer", 1, _F.TYPE_INT32)
    _field(m, "min_consumer", 2, _F.TYPE_INT32)
    _field(m, "bad_consumers", 3, _F.TYPE_INT32, _REP)

    # tensor_shape.proto
    m = fdp.message_type.add(name="TensorShapeProto")
    d = m.nested_type.add(name="Dim")
    _field(d, "size", 1, _F.TYPE_INT64)
    _field(d, "name", 2, _F.TYPE_STRING)
    _field(m, "dim", 2, _F.TYPE_MESSAGE, _REP, ".tensorflow.TensorShapeProto.Dim")
    _field(m, "unknown_rank", 3, _F.TYPE_BOOL)

    # tensor_slice.proto: Extent.length lives in a oneof (has_length); absent means "all".
    m = fdp.message_type.add(name="TensorSliceProto")
    e = m.nested_type.add(name="Extent")
    e.oneof_decl.add(name="has_length")
    _field(e, "start", 1, _F.TYPE_INT64)
    _field(e, "length", 2, _F.TYPE_INT64)
    e.field[1].oneof_index = 0
    _field(m, "extent", 1, _F.TYPE_MESSAGE, _REP, ".tensorflow.TensorSliceProto.Extent")

    # tensor_bundle.proto
    m = fdp.message_type.add(name="BundleHeaderProto")
    _field(m, "num_shards", 1, _F.TYPE_INT32)
    _field(m, "endianness", 2, _F.TYPE_INT32)
    _field(m, "version", 3, _F.TYPE_MESSAGE, type_name=".tensorflow.VersionDef")

    m = fdp.message_type.add(name="BundleEntryProto")
    _field(m, "dtype", 1, _F.TYPE_INT32)
    _field(m, "shape", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto")
    _field(m, "shard_id", 3, _F.TYPE_INT32)
    _field(m, "offset", 4, _F.TYPE_INT64)
    _field(m, "size", 5, _F.TYPE_INT64)
    _field(m, "crc32c", 6, _F.TYPE_FIXED32)
    _field(m, "slices", 7, _F.TYPE_MESSAGE, _REP, ".tensorflow.TensorSliceProto")

    # saved_tensor_slice.proto (V1). SavedSlice.data is a TensorProto; we keep it as raw bytes
    # (same wire type) because V1 verification only needs the table's block checksums.
    m = fdp.message_type.add(name="SavedSliceMeta")
    _field(m, "name", 1, _F.TYPE_STRING)
    _field(m, "shape", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto")
    _field(m, "type", 3, _F.TYPE_INT32)
    _field(m, "slice", 4, _F.TYPE_MESSAGE, _REP, ".tensorflow.TensorSliceProto")

    m = fdp.message_type.add(name="SavedTensorSliceMeta")
    _field(m, "tensor", 1, _F.TYPE_MESSAGE, _REP, ".tensorflow.SavedSliceMeta")
    _field(m, "versions", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.VersionDef")

    m = fdp.message_type.add(name="SavedSlice")
    _field(m, "name", 1, _F.TYPE_STRING)
    _field(m, "slice", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.TensorSliceProto")
    _field(m, "data", 3, _F.TYPE_BYTES)

    m = fdp.message_type.add(name="SavedTensorSlices")
    _field(m, "meta", 1, _F.TYPE_MESSAGE, type_name=".tensorflow.SavedTensorSliceMeta")
    _field(m, "data", 2, _F.TYPE_MESSAGE, type_name=".tensorflow.SavedSlice")

    return fdp


# generated by build_file_descriptor(); checked by tests/test_protos.py
SERIALIZED_FILE_DESCRIPTOR = (
    b'\n#airflow_tf_ckpt/tf_checkpoint.proto\x12\ntensorflow"\x9f\x01\n\x0fCheckpointState\x12'
    b'\x1d\n\x15model_checkpoint_path\x18\x01 \x01(\t\x12"\n\x1aall_model_checkpoint_paths\x18'
    b"\x02 \x03(\t\x12\'\n\x1fall_model_checkpoint_timestamps\x18\x03 \x03(\x01\x12 \n\x18last_p"
    b'reserved_timestamp\x18\x04 \x01(\x01"K\n\nVersionDef\x12\x10\n\x08producer\x18\x01 \x01('
    b"\x05\x12\x14\n\x0cmin_consumer\x18\x02 \x01(\x05\x12\x15\n\rbad_consumers\x18\x03 \x03("
    b'\x05"z\n\x10TensorShapeProto\x12-\n\x03dim\x18\x02 \x03(\x0b2 .tensorflow.TensorShapeProto'
    b".Dim\x12\x14\n\x0cunknown_rank\x18\x03 \x01(\x08\x1a!\n\x03Dim\x12\x0c\n\x04size\x18\x01 "
    b'\x01(\x03\x12\x0c\n\x04name\x18\x02 \x01(\t"\x80\x01\n\x10TensorSliceProto\x123\n\x06exten'
    b"t\x18\x01 \x03(\x0b2#.tensorflow.TensorSliceProto.Extent\x1a7\n\x06Extent\x12\r\n\x05start"
    b'\x18\x01 \x01(\x03\x12\x10\n\x06length\x18\x02 \x01(\x03H\x00B\x0c\n\nhas_length"d\n\x11Bu'
    b"ndleHeaderProto\x12\x12\n\nnum_shards\x18\x01 \x01(\x05\x12\x12\n\nendianness\x18\x02 \x01"
    b'(\x05\x12\'\n\x07version\x18\x03 \x01(\x0b2\x16.tensorflow.VersionDef"\xbc\x01\n\x10Bundle'
    b"EntryProto\x12\r\n\x05dtype\x18\x01 \x01(\x05\x12+\n\x05shape\x18\x02 \x01(\x0b2\x1c.tenso"
    b"rflow.TensorShapeProto\x12\x10\n\x08shard_id\x18\x03 \x01(\x05\x12\x0e\n\x06offset\x18\x04"
    b" \x01(\x03\x12\x0c\n\x04size\x18\x05 \x01(\x03\x12\x0e\n\x06crc32c\x18\x06 \x01(\x07\x12,"
    b'\n\x06slices\x18\x07 \x03(\x0b2\x1c.tensorflow.TensorSliceProto"\x86\x01\n\x0eSavedSliceMe'
    b"ta\x12\x0c\n\x04name\x18\x01 \x01(\t\x12+\n\x05shape\x18\x02 \x01(\x0b2\x1c.tensorflow.Ten"
    b"sorShapeProto\x12\x0c\n\x04type\x18\x03 \x01(\x05\x12+\n\x05slice\x18\x04 \x03(\x0b2\x1c.t"
    b'ensorflow.TensorSliceProto"l\n\x14SavedTensorSliceMeta\x12*\n\x06tensor\x18\x01 \x03(\x0b2'
    b"\x1a.tensorflow.SavedSliceMeta\x12(\n\x08versions\x18\x02 \x01(\x0b2\x16.tensorflow.Versio"
    b'nDef"U\n\nSavedSlice\x12\x0c\n\x04name\x18\x01 \x01(\t\x12+\n\x05slice\x18\x02 \x01(\x0b2'
    b'\x1c.tensorflow.TensorSliceProto\x12\x0c\n\x04data\x18\x03 \x01(\x0c"i\n\x11SavedTensorSli'
    b"ces\x12.\n\x04meta\x18\x01 \x01(\x0b2 .tensorflow.SavedTensorSliceMeta\x12$\n\x04data\x18"
    b"\x02 \x01(\x0b2\x16.tensorflow.SavedSliceb\x06proto3"
)

_pool.AddSerializedFile(SERIALIZED_FILE_DESCRIPTOR)


def _cls(name: str):
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"tensorflow.{name}"))


CheckpointState = _cls("CheckpointState")
VersionDef = _cls("VersionDef")
TensorShapeProto = _cls("TensorShapeProto")
TensorSliceProto = _cls("TensorSliceProto")
BundleHeaderProto = _cls("BundleHeaderProto")
BundleEntryProto = _cls("BundleEntryProto")
SavedSliceMeta = _cls("SavedSliceMeta")
SavedTensorSliceMeta = _cls("SavedTensorSliceMeta")
SavedSlice = _cls("SavedSlice")
SavedTensorSlices = _cls("SavedTensorSlices")

# tensorflow/core/framework/types.proto (the values we name in reports; others print as numbers)
DTYPE_NAMES: dict[int, str] = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 18: "complex128",
    19: "float16", 20: "resource", 21: "variant", 22: "uint32", 23: "uint64",
}
DT_STRING = 7

BUNDLE_LITTLE_ENDIAN = 0
BUNDLE_BIG_ENDIAN = 1


def dtype_name(dtype: int) -> str:
    return DTYPE_NAMES.get(dtype, f"dtype({dtype})")


if __name__ == "__main__":  # print the serialized descriptor to paste above
    print(repr(build_file_descriptor().SerializeToString()))
