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

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

_pool = descriptor_pool.DescriptorPool()


def _field(msg: descriptor_pb2.DescriptorProto, name: str, number: int, ftype: int,
           label: int = _OPT, type_name: str | None = None) -> None:
    f = msg.field.add(name=name, number=number, type=ftype, label=label)
    if type_name:
        f.type_name = type_name


def _build() -> None:
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

    _pool.Add(fdp)


_build()


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
