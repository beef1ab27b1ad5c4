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

import re
from typing import Any

from google.protobuf import descriptor_pool, message_factory

_pool = descriptor_pool.DescriptorPool()


# The messages, as ``.proto`` field lines: ``[repeated] TYPE NAME = NUMBER [oneof ONEOF]``, or
# ``map<string, TYPE> NAME = NUMBER``. A TYPE that is not a scalar is a message of this file
# (``Outer.Inner`` for a nested one, declared as ``Outer.Inner`` before ``Outer``'s fields).
_MESSAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # checkpoint_state.proto
    (
        "CheckpointState",
        (
            "string model_checkpoint_path = 1",
            "repeated string all_model_checkpoint_paths = 2",
            "repeated double all_model_checkpoint_timestamps = 3",
            "double last_preserved_timestamp = 4",
        ),
    ),
    # versions.proto
    ("VersionDef", ("int32 producer = 1", "int32 min_consumer = 2", "repeated int32 bad_consumers = 3")),
    # tensor_shape.proto
    ("TensorShapeProto.Dim", ("int64 size = 1", "string name = 2")),
    ("TensorShapeProto", ("repeated TensorShapeProto.Dim dim = 2", "bool unknown_rank = 3")),
    # tensor_slice.proto: Extent.length lives in a oneof (has_length); absent means "all".
    ("TensorSliceProto.Extent", ("int64 start = 1", "int64 length = 2 oneof has_length")),
    ("TensorSliceProto", ("repeated TensorSliceProto.Extent extent = 1",)),
    # tensor_bundle.proto
    ("BundleHeaderProto", ("int32 num_shards = 1", "int32 endianness = 2", "VersionDef version = 3")),
    (
        "BundleEntryProto",
        (
            "int32 dtype = 1",
            "TensorShapeProto shape = 2",
            "int32 shard_id = 3",
            "int64 offset = 4",
            "int64 size = 5",
            "fixed32 crc32c = 6",
            "repeated TensorSliceProto slices = 7",
        ),
    ),
    # saved_tensor_slice.proto (V1). SavedSlice.data is a TensorProto; we keep it as raw bytes
    # (same wire type) because V1 verification only needs the table's block checksums.
    (
        "SavedSliceMeta",
        (
            "string name = 1",
            "TensorShapeProto shape = 2",
            "int32 type = 3",
            "repeated TensorSliceProto slice = 4",
        ),
    ),
    ("SavedTensorSliceMeta", ("repeated SavedSliceMeta tensor = 1", "VersionDef versions = 2")),
    ("SavedSlice", ("string name = 1", "TensorSliceProto slice = 2", "bytes data = 3")),
    ("SavedTensorSlices", ("SavedTensorSliceMeta meta = 1", "SavedSlice data = 2")),
    # MetaGraphDef (meta_graph.proto, graph.proto, node_def.proto, attr_value.proto, saver.proto),
    # declared down to each node's attributes: enough to check that a ``.meta`` is well-formed
    # as TF1's ``import_meta_graph`` parses it. Sub-messages we do not need are declared
    # ``bytes`` (same wire type: their framing is still checked).
    (
        "AttrValue.ListValue",
        (
            "repeated bytes s = 2",
            "repeated int64 i = 3",
            "repeated float f = 4",
            "repeated bool b = 5",
            "repeated int32 type = 6",
            "repeated TensorShapeProto shape = 7",
            "repeated bytes tensor = 8",
            "repeated bytes func = 9",
        ),
    ),
    (
        "AttrValue",
        (
            "AttrValue.ListValue list = 1",
            "bytes s = 2",
            "int64 i = 3",
            "float f = 4",
            "bool b = 5",
            "int32 type = 6",
            "TensorShapeProto shape = 7",
            "bytes tensor = 8",
            "string placeholder = 9",
            "bytes func = 10",
        ),
    ),
    (
        "NodeDef",
        (
            "string name = 1",
            "string op = 2",
            "repeated string input = 3",
            "string device = 4",
            "map<string, AttrValue> attr = 5",
        ),
    ),
    (
        "GraphDef",
        ("repeated NodeDef node = 1", "bytes library = 2", "int32 version = 3", "VersionDef versions = 4"),
    ),
    (
        "SaverDef",
        (
            "string filename_tensor_name = 1",
            "string save_tensor_name = 2",
            "string restore_op_name = 3",
            "int32 max_to_keep = 4",
            "bool sharded = 5",
            "float keep_checkpoint_every_n_hours = 6",
            "int32 version = 7",
        ),
    ),
    (
        "MetaInfoDef",
        (
            "string meta_graph_version = 1",
            "bytes stripped_op_list = 2",
            "bytes any_info = 3",
            "repeated string tags = 4",
            "string tensorflow_version = 5",
            "string tensorflow_git_version = 6",
            "bool stripped_default_attrs = 7",
        ),
    ),
    (
        "MetaGraphDef",
        (
            "MetaInfoDef meta_info_def = 1",
            "GraphDef graph_def = 2",
            "SaverDef saver_def = 3",
            "map<string, bytes> collection_def = 4",
            "map<string, bytes> signature_def = 5",
            "repeated bytes asset_file_def = 6",
            "bytes object_graph_def = 7",
        ),
    ),
)

_FIELD_LINE = re.compile(
    r"(?:(?P<rep>repeated) )?(?:map<string, (?P<map>\w+)>|(?P<type>[\w.]+)) (?P<name>\w+) = "
    r"(?P<number>\d+)(?: oneof (?P<oneof>\w+))?"
)
_SCALARS = ("double", "float", "int64", "int32", "fixed32", "bool", "string", "bytes")


def build_file_descriptor() -> Any:
    """The ``FileDescriptorProto`` of ``_MESSAGES`` (the source of truth).

    Importing ``descriptor_pb2`` costs ~0.2 s (a third of a ``tf-ckpt validate`` start-up), so
    the module loads the serialized form of this descriptor, ``SERIALIZED_FILE_DESCRIPTOR``;
    ``tests/test_protos.py`` checks that the two are identical. Regenerate with
    ``python -m airflow_tf_ckpt.core.formats.protos`` after changing ``_MESSAGES``.
    """
    from google.protobuf import descriptor_pb2

    fdp = descriptor_pb2.FileDescriptorProto(
        name="airflow_tf_ckpt/tf_checkpoint.proto", package="tensorflow", syntax="proto3"
    )
    messages: dict[str, Any] = {}
    for path, lines in _MESSAGES:
        outer, _, inner = path.partition(".")
        if outer not in messages:
            messages[outer] = fdp.message_type.add(name=outer)
        msg = messages[outer] if not inner else messages[outer].nested_type.add(name=inner)
        for line in lines:
            _add_field(msg, line, descriptor_pb2.FieldDescriptorProto)
    return fdp


def _add_field(msg: Any, line: str, F: Any) -> None:
    """Declare the field of one ``_MESSAGES`` line in the DescriptorProto ``msg``."""
    m = _FIELD_LINE.fullmatch(line)
    if m is None:
        raise ValueError(f"bad field line {line!r}")
    name, number = m["name"], int(m["number"])
    if m["map"]:  # a repeated nested XxxEntry {key = 1; value = 2} with options.map_entry
        entry_name = "".join(w.capitalize() for w in name.split("_")) + "Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        _add_field(entry, "string key = 1", F)
        _add_field(entry, f"{m['map']} value = 2", F)
        type_, label = f"{msg.name}.{entry_name}", F.LABEL_REPEATED
    else:
        type_, label = m["type"], F.LABEL_REPEATED if m["rep"] else F.LABEL_OPTIONAL
    field = msg.field.add(name=name, number=number, label=label)
    if type_ in _SCALARS:
        field.type = getattr(F, f"TYPE_{type_.upper()}")
    else:
        field.type, field.type_name = F.TYPE_MESSAGE, f".tensorflow.{type_}"
    if m["oneof"]:
        decls = [d.name for d in msg.oneof_decl]
        if m["oneof"] not in decls:
            msg.oneof_decl.add(name=m["oneof"])
            decls.append(m["oneof"])
        field.oneof_index = decls.index(m["oneof"])


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
