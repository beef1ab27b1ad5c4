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
    Regenerate with ``python -m airflow_tf_ckpt.core.formats.protos`` after changing this function.
    """
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    _OPT, _REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED

    def _field(
        msg: Any, name: str, number: int, ftype: int, label: int = _OPT, type_name: str | None = None
    ) -> None:
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

    _meta_graph_messages(fdp, _field, F)
    return fdp


def _meta_graph_messages(fdp: Any, _field: Any, F: Any) -> None:
    """``MetaGraphDef`` (tensorflow/core/protobuf/meta_graph.proto, graph.proto, node_def.proto,
    attr_value.proto, saver.proto), declared down to each node's attributes: enough to check that
    a ``.meta`` is well-formed as TF1's ``import_meta_graph`` parses it. Sub-messages we do not
    need are declared ``bytes`` (same wire type: their framing is still checked)."""
    _REP = F.LABEL_REPEATED

    def _map(msg: Any, name: str, number: int, value_type: int, value_type_name: str | None = None) -> None:
        entry_name = "".join(w.capitalize() for w in name.split("_")) + "Entry"
        e = msg.nested_type.add(name=entry_name)
        e.options.map_entry = True
        _field(e, "key", 1, F.TYPE_STRING)
        _field(e, "value", 2, value_type, type_name=value_type_name)
        _field(msg, name, number, F.TYPE_MESSAGE, _REP, f".tensorflow.{msg.name}.{entry_name}")

    m = fdp.message_type.add(name="AttrValue")
    lv = m.nested_type.add(name="ListValue")
    _field(lv, "s", 2, F.TYPE_BYTES, _REP)
    _field(lv, "i", 3, F.TYPE_INT64, _REP)
    _field(lv, "f", 4, F.TYPE_FLOAT, _REP)
    _field(lv, "b", 5, F.TYPE_BOOL, _REP)
    _field(lv, "type", 6, F.TYPE_INT32, _REP)
    _field(lv, "shape", 7, F.TYPE_MESSAGE, _REP, ".tensorflow.TensorShapeProto")
    _field(lv, "tensor", 8, F.TYPE_BYTES, _REP)
    _field(lv, "func", 9, F.TYPE_BYTES, _REP)
    _field(m, "list", 1, F.TYPE_MESSAGE, type_name=".tensorflow.AttrValue.ListValue")
    _field(m, "s", 2, F.TYPE_BYTES)
    _field(m, "i", 3, F.TYPE_INT64)
    _field(m, "f", 4, F.TYPE_FLOAT)
    _field(m, "b", 5, F.TYPE_BOOL)
    _field(m, "type", 6, F.TYPE_INT32)
    _field(m, "shape", 7, F.TYPE_MESSAGE, type_name=".tensorflow.TensorShapeProto")
    _field(m, "tensor", 8, F.TYPE_BYTES)
    _field(m, "placeholder", 9, F.TYPE_STRING)
    _field(m, "func", 10, F.TYPE_BYTES)

    m = fdp.message_type.add(name="NodeDef")
    _field(m, "name", 1, F.TYPE_STRING)
    _field(m, "op", 2, F.TYPE_STRING)
    _field(m, "input", 3, F.TYPE_STRING, _REP)
    _field(m, "device", 4, F.TYPE_STRING)
    _map(m, "attr", 5, F.TYPE_MESSAGE, ".tensorflow.AttrValue")

    m = fdp.message_type.add(name="GraphDef")
    _field(m, "node", 1, F.TYPE_MESSAGE, _REP, ".tensorflow.NodeDef")
    _field(m, "library", 2, F.TYPE_BYTES)
    _field(m, "version", 3, F.TYPE_INT32)
    _field(m, "versions", 4, F.TYPE_MESSAGE, type_name=".tensorflow.VersionDef")

    m = fdp.message_type.add(name="SaverDef")
    _field(m, "filename_tensor_name", 1, F.TYPE_STRING)
    _field(m, "save_tensor_name", 2, F.TYPE_STRING)
    _field(m, "restore_op_name", 3, F.TYPE_STRING)
    _field(m, "max_to_keep", 4, F.TYPE_INT32)
    _field(m, "sharded", 5, F.TYPE_BOOL)
    _field(m, "keep_checkpoint_every_n_hours", 6, F.TYPE_FLOAT)
    _field(m, "version", 7, F.TYPE_INT32)

    m = fdp.message_type.add(name="MetaInfoDef")
    _field(m, "meta_graph_version", 1, F.TYPE_STRING)
    _field(m, "stripped_op_list", 2, F.TYPE_BYTES)
    _field(m, "any_info", 3, F.TYPE_BYTES)
    _field(m, "tags", 4, F.TYPE_STRING, _REP)
    _field(m, "tensorflow_version", 5, F.TYPE_STRING)
    _field(m, "tensorflow_git_version", 6, F.TYPE_STRING)
    _field(m, "stripped_default_attrs", 7, F.TYPE_BOOL)

    m = fdp.message_type.add(name="MetaGraphDef")
    _field(m, "meta_info_def", 1, F.TYPE_MESSAGE, type_name=".tensorflow.MetaInfoDef")
    _field(m, "graph_def", 2, F.TYPE_MESSAGE, type_name=".tensorflow.GraphDef")
    _field(m, "saver_def", 3, F.TYPE_MESSAGE, type_name=".tensorflow.SaverDef")
    _map(m, "collection_def", 4, F.TYPE_BYTES)
    _map(m, "signature_def", 5, F.TYPE_BYTES)
    _field(m, "asset_file_def", 6, F.TYPE_BYTES, _REP)
    _field(m, "object_graph_def", 7, F.TYPE_BYTES)


# generated by build_file_descriptor(); checked by tests/test_protos.py
SERIALIZED_FILE_DESCRIPTOR = (
    b'\n#airflow_tf_ckpt/tf_checkpoint.proto\x12\ntensorflow"\x9f\x01\n\x0fCheckpoint'
    b'State\x12\x1d\n\x15model_checkpoint_path\x18\x01 \x01(\t\x12"\n\x1aall_model_checkpoint_pat'
    b"hs\x18\x02 \x03(\t\x12'\n\x1fall_model_checkpoint_timestamps\x18\x03 \x03(\x01\x12 \n\x18last_preser"
    b'ved_timestamp\x18\x04 \x01(\x01"K\n\nVersionDef\x12\x10\n\x08producer\x18\x01 \x01(\x05\x12\x14\n\x0cmin_consu'
    b'mer\x18\x02 \x01(\x05\x12\x15\n\rbad_consumers\x18\x03 \x03(\x05"z\n\x10TensorShapeProto\x12-\n\x03dim\x18\x02 \x03('
    b"\x0b2 .tensorflow.TensorShapeProto.Dim\x12\x14\n\x0cunknown_rank\x18\x03 \x01(\x08\x1a!\n\x03Dim"
    b'\x12\x0c\n\x04size\x18\x01 \x01(\x03\x12\x0c\n\x04name\x18\x02 \x01(\t"\x80\x01\n\x10TensorSliceProto\x123\n\x06extent\x18\x01 \x03('
    b"\x0b2#.tensorflow.TensorSliceProto.Extent\x1a7\n\x06Extent\x12\r\n\x05start\x18\x01 \x01(\x03\x12"
    b'\x10\n\x06length\x18\x02 \x01(\x03H\x00B\x0c\n\nhas_length"d\n\x11BundleHeaderProto\x12\x12\n\nnum_shar'
    b"ds\x18\x01 \x01(\x05\x12\x12\n\nendianness\x18\x02 \x01(\x05\x12'\n\x07version\x18\x03 \x01(\x0b2\x16.tensorflow.Versi"
    b'onDef"\xbc\x01\n\x10BundleEntryProto\x12\r\n\x05dtype\x18\x01 \x01(\x05\x12+\n\x05shape\x18\x02 \x01(\x0b2\x1c.tenso'
    b"rflow.TensorShapeProto\x12\x10\n\x08shard_id\x18\x03 \x01(\x05\x12\x0e\n\x06offset\x18\x04 \x01(\x03\x12\x0c\n\x04size"
    b"\x18\x05 \x01(\x03\x12\x0e\n\x06crc32c\x18\x06 \x01(\x07\x12,\n\x06slices\x18\x07 \x03(\x0b2\x1c.tensorflow.TensorSliceP"
    b'roto"\x86\x01\n\x0eSavedSliceMeta\x12\x0c\n\x04name\x18\x01 \x01(\t\x12+\n\x05shape\x18\x02 \x01(\x0b2\x1c.tensorflo'
    b"w.TensorShapeProto\x12\x0c\n\x04type\x18\x03 \x01(\x05\x12+\n\x05slice\x18\x04 \x03(\x0b2\x1c.tensorflow.Ten"
    b'sorSliceProto"l\n\x14SavedTensorSliceMeta\x12*\n\x06tensor\x18\x01 \x03(\x0b2\x1a.tensorfl'
    b'ow.SavedSliceMeta\x12(\n\x08versions\x18\x02 \x01(\x0b2\x16.tensorflow.VersionDef"U\n\nS'
    b"avedSlice\x12\x0c\n\x04name\x18\x01 \x01(\t\x12+\n\x05slice\x18\x02 \x01(\x0b2\x1c.tensorflow.TensorSliceP"
    b'roto\x12\x0c\n\x04data\x18\x03 \x01(\x0c"i\n\x11SavedTensorSlices\x12.\n\x04meta\x18\x01 \x01(\x0b2 .tensorfl'
    b'ow.SavedTensorSliceMeta\x12$\n\x04data\x18\x02 \x01(\x0b2\x16.tensorflow.SavedSlice"\xe7\x02'
    b"\n\tAttrValue\x12-\n\x04list\x18\x01 \x01(\x0b2\x1f.tensorflow.AttrValue.ListValue\x12\t\n\x01s\x18"
    b"\x02 \x01(\x0c\x12\t\n\x01i\x18\x03 \x01(\x03\x12\t\n\x01f\x18\x04 \x01(\x02\x12\t\n\x01b\x18\x05 \x01(\x08\x12\x0c\n\x04type\x18\x06 \x01(\x05\x12+\n\x05shape\x18\x07 "
    b"\x01(\x0b2\x1c.tensorflow.TensorShapeProto\x12\x0e\n\x06tensor\x18\x08 \x01(\x0c\x12\x13\n\x0bplaceholder"
    b"\x18\t \x01(\t\x12\x0c\n\x04func\x18\n \x01(\x0c\x1a\x90\x01\n\tListValue\x12\t\n\x01s\x18\x02 \x03(\x0c\x12\t\n\x01i\x18\x03 \x03(\x03\x12\t\n\x01f\x18\x04 "
    b"\x03(\x02\x12\t\n\x01b\x18\x05 \x03(\x08\x12\x0c\n\x04type\x18\x06 \x03(\x05\x12+\n\x05shape\x18\x07 \x03(\x0b2\x1c.tensorflow.TensorS"
    b'hapeProto\x12\x0e\n\x06tensor\x18\x08 \x03(\x0c\x12\x0c\n\x04func\x18\t \x03(\x0c"\xb3\x01\n\x07NodeDef\x12\x0c\n\x04name\x18\x01 \x01('
    b"\t\x12\n\n\x02op\x18\x02 \x01(\t\x12\r\n\x05input\x18\x03 \x03(\t\x12\x0e\n\x06device\x18\x04 \x01(\t\x12+\n\x04attr\x18\x05 \x03(\x0b2\x1d.ten"
    b"sorflow.NodeDef.AttrEntry\x1aB\n\tAttrEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12$\n\x05value\x18\x02 \x01"
    b'(\x0b2\x15.tensorflow.AttrValue:\x028\x01"y\n\x08GraphDef\x12!\n\x04node\x18\x01 \x03(\x0b2\x13.tensor'
    b"flow.NodeDef\x12\x0f\n\x07library\x18\x02 \x01(\x0c\x12\x0f\n\x07version\x18\x03 \x01(\x05\x12(\n\x08versions\x18\x04 \x01(\x0b"
    b'2\x16.tensorflow.VersionDef"\xb9\x01\n\x08SaverDef\x12\x1c\n\x14filename_tensor_name\x18\x01 '
    b"\x01(\t\x12\x18\n\x10save_tensor_name\x18\x02 \x01(\t\x12\x17\n\x0frestore_op_name\x18\x03 \x01(\t\x12\x13\n\x0bmax_to"
    b"_keep\x18\x04 \x01(\x05\x12\x0f\n\x07sharded\x18\x05 \x01(\x08\x12%\n\x1dkeep_checkpoint_every_n_hours\x18\x06 "
    b'\x01(\x02\x12\x0f\n\x07version\x18\x07 \x01(\x05"\xbf\x01\n\x0bMetaInfoDef\x12\x1a\n\x12meta_graph_version\x18\x01 \x01(\t'
    b"\x12\x18\n\x10stripped_op_list\x18\x02 \x01(\x0c\x12\x10\n\x08any_info\x18\x03 \x01(\x0c\x12\x0c\n\x04tags\x18\x04 \x03(\t\x12\x1a\n\x12te"
    b"nsorflow_version\x18\x05 \x01(\t\x12\x1e\n\x16tensorflow_git_version\x18\x06 \x01(\t\x12\x1e\n\x16stripp"
    b'ed_default_attrs\x18\x07 \x01(\x08"\xb5\x03\n\x0cMetaGraphDef\x12.\n\rmeta_info_def\x18\x01 \x01(\x0b2\x17'
    b".tensorflow.MetaInfoDef\x12'\n\tgraph_def\x18\x02 \x01(\x0b2\x14.tensorflow.GraphDef"
    b"\x12'\n\tsaver_def\x18\x03 \x01(\x0b2\x14.tensorflow.SaverDef\x12C\n\x0ecollection_def\x18\x04 \x03("
    b"\x0b2+.tensorflow.MetaGraphDef.CollectionDefEntry\x12A\n\rsignature_def\x18"
    b"\x05 \x03(\x0b2*.tensorflow.MetaGraphDef.SignatureDefEntry\x12\x16\n\x0easset_file_"
    b"def\x18\x06 \x03(\x0c\x12\x18\n\x10object_graph_def\x18\x07 \x01(\x0c\x1a4\n\x12CollectionDefEntry\x12\x0b\n\x03key"
    b"\x18\x01 \x01(\t\x12\r\n\x05value\x18\x02 \x01(\x0c:\x028\x01\x1a3\n\x11SignatureDefEntry\x12\x0b\n\x03key\x18\x01 \x01(\t\x12\r\n\x05v"
    b"alue\x18\x02 \x01(\x0c:\x028\x01b\x06proto3"
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
MetaGraphDef = _cls("MetaGraphDef")

# tensorflow/core/framework/types.proto (the values we name in reports; others print as numbers)
DTYPE_NAMES: dict[int, str] = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    18: "complex128",
    19: "float16",
    20: "resource",
    21: "variant",
    22: "uint32",
    23: "uint64",
}
DT_STRING = 7

BUNDLE_LITTLE_ENDIAN = 0
BUNDLE_BIG_ENDIAN = 1


def dtype_name(dtype: int) -> str:
    return DTYPE_NAMES.get(dtype, f"dtype({dtype})")


if __name__ == "__main__":  # print the serialized descriptor to paste above
    print(repr(build_file_descriptor().SerializeToString()))
