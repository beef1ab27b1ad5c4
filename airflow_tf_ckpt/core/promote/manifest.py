"""``PROMOTED.json`` and alias pointers: the records of a promotion, read bounded and validated
(the destination is input: a malformed record is a one-line error naming the file), and written
atomically.

``DEST/PROMOTED.json`` is the commit point of a promotion; ``DEST/aliases/<name>.json`` holds the
same record (without ``retained``) for a named pointer.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

from airflow_tf_ckpt.core.errors import CheckpointError
from airflow_tf_ckpt.core.formats.naming import parse_prefix
from airflow_tf_ckpt.core.storage.location import (
    FileTooLargeError,
    Location,
    NotRegularFileError,
    loads_json,
    write_atomic,
)

MANIFEST_NAME = "PROMOTED.json"
ALIASES_DIR = "aliases"
MANIFEST_FORMAT = "airflow-tf-ckpt/promotion"
MANIFEST_VERSION = 1


class PromotionError(CheckpointError):
    """A promotion cannot be done (bad selector, unusable destination, a copy that differs)."""


@dataclass(frozen=True)
class PromotedFile:
    """One file of a promotion: its name in DEST, where it came from, size and CRC32C."""

    name: str
    size: int
    crc32c: str  # base64, big-endian (GCS format)
    source: str = ""  # the source file's name (differs for a .meta taken from an earlier step)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "crc32c": self.crc32c, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromotedFile:
        if not isinstance(d, dict):
            raise TypeError(f"a file record is a JSON {type(d).__name__}, not an object")
        name, size, crc = d["name"], d["size"], d["crc32c"]
        if not isinstance(name, str) or not name:
            raise TypeError(f"file name {name!r} is not a non-empty string")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise TypeError(f"size {size!r} of {name!r} is not a byte count")
        if not isinstance(crc, str):
            raise TypeError(f"crc32c {crc!r} of {name!r} is not a string")
        return cls(name=name, size=size, crc32c=crc, source=str(d.get("source", "")))


@dataclass
class PromotionManifest:
    """The content of ``PROMOTED.json`` (and, with ``alias`` set, of an alias pointer file)."""

    promotion_id: str
    source: str
    source_prefix: str
    prefix: str
    base: str
    step: int | None
    files: list[PromotedFile]
    promoted_at: str
    promoted_at_unix: float
    metrics: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None
    selector: str = ""
    meta_from: str | None = None
    # files of earlier promotions still kept in DEST (grace for readers, alias targets)
    retained: dict[str, list[PromotedFile]] = field(default_factory=dict)

    @property
    def checkpoint_path(self) -> str:
        """The prefix relative to DEST, as TF wants it (``DEST/<checkpoint_path>``)."""
        return self.prefix

    def file_names(self) -> set[str]:
        return {f.name for f in self.files}

    def all_file_names(self) -> set[str]:
        names = self.file_names()
        for files in self.retained.values():
            names |= {f.name for f in files}
        return names

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "promotion_id": self.promotion_id,
            "source": self.source,
            "source_prefix": self.source_prefix,
            "prefix": self.prefix,
            "base": self.base,
            "step": self.step,
            "checkpoint_path": self.checkpoint_path,
            "files": [f.to_dict() for f in self.files],
            "promoted_at": self.promoted_at,
            "promoted_at_unix": self.promoted_at_unix,
            "metrics": self.metrics,
            "alias": self.alias,
            "selector": self.selector,
            "meta_from": self.meta_from,
            "retained": {k: [f.to_dict() for f in v] for k, v in sorted(self.retained.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromotionManifest:
        files, retained, metrics = d["files"], d.get("retained") or {}, d.get("metrics") or {}
        if not isinstance(files, list):
            raise TypeError(f'"files" is a JSON {type(files).__name__}, not a list')
        if not isinstance(retained, dict) or not all(isinstance(v, list) for v in retained.values()):
            raise TypeError('"retained" is not an object of file lists')
        if not isinstance(metrics, dict):
            raise TypeError(f'"metrics" is a JSON {type(metrics).__name__}, not an object')
        if not isinstance(d["prefix"], str) or not d["prefix"]:
            raise TypeError(f"prefix {d['prefix']!r} is not a non-empty string")
        return cls(
            promotion_id=str(d["promotion_id"]),
            source=str(d["source"]),
            source_prefix=str(d.get("source_prefix", d["prefix"])),
            prefix=str(d["prefix"]),
            base=str(d.get("base", parse_prefix(str(d["prefix"])).base)),
            step=None if d.get("step") is None else int(d["step"]),
            files=[PromotedFile.from_dict(f) for f in d["files"]],
            promoted_at=str(d.get("promoted_at", "")),
            promoted_at_unix=float(d.get("promoted_at_unix", 0.0)),
            metrics=dict(d.get("metrics") or {}),
            alias=d.get("alias"),
            selector=str(d.get("selector", "")),
            meta_from=d.get("meta_from"),
            retained={
                str(k): [PromotedFile.from_dict(f) for f in v] for k, v in (d.get("retained") or {}).items()
            },
        )


#: the most bytes of a manifest or alias file that are read (a promotion of 10,000 shards is ~2 MB)
MAX_MANIFEST_BYTES = 16 << 20
#: errors of a JSON document that has the wrong shape (types, missing keys, nesting)
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, RecursionError, OverflowError)


def _read_json(loc: Location, name: str) -> dict[str, Any] | None:
    if not loc.exists(name):
        return None
    try:  # bounded, regular files only: never the whole of a huge file, never a FIFO
        raw = loc.read_bytes(name, cap=MAX_MANIFEST_BYTES, what="a promotion manifest")
    except (NotRegularFileError, FileTooLargeError) as exc:
        raise PromotionError(exc.message, loc.display(name)) from exc
    try:
        data = loads_json(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except RecursionError as exc:
        raise PromotionError("malformed JSON: nested too deeply", loc.display(name)) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PromotionError(f"malformed JSON: {exc}", loc.display(name)) from exc
    return data


def read_manifest(
    dest: Location | str,
    storage_options: dict[str, Any] | None = None,
) -> PromotionManifest | None:
    """The destination's promotion, or ``None`` when it is not promoted (no ``PROMOTED.json``)."""
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    data = _read_json(loc, MANIFEST_NAME)
    if data is None:
        return None
    if data.get("format") != MANIFEST_FORMAT:
        raise PromotionError(
            f"not a promotion manifest (format={data.get('format')!r})", loc.display(MANIFEST_NAME)
        )
    try:
        return PromotionManifest.from_dict(data)
    except _SHAPE_ERRORS as exc:
        raise PromotionError(
            f"malformed promotion manifest: {_shape_error(exc)}", loc.display(MANIFEST_NAME)
        ) from exc


def _shape_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} field"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def alias_name_ok(alias: str) -> bool:
    """Alias names are file names: letters, digits, ``._-``, not starting with a dot."""
    return (
        bool(alias)
        and len(alias) <= 128
        and not alias.startswith(".")
        and all(c.isalnum() or c in "._-" for c in alias)
    )


def read_alias(
    dest: Location | str,
    alias: str,
    storage_options: dict[str, Any] | None = None,
) -> PromotionManifest | None:
    """The promotion an alias points at (``DEST/aliases/<alias>.json``), or ``None``."""
    if not alias_name_ok(alias):
        raise PromotionError(f"invalid alias name {alias!r} (use letters, digits, '.', '_', '-')")
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    data = _read_json(loc, f"{ALIASES_DIR}/{alias}.json")
    if data is None:
        return None
    try:
        return PromotionManifest.from_dict(data)
    except _SHAPE_ERRORS as exc:
        raise PromotionError(
            f"malformed alias file: {_shape_error(exc)}", loc.display(f"{ALIASES_DIR}/{alias}.json")
        ) from exc


def list_aliases(
    dest: Location | str,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, PromotionManifest]:
    """Every alias of a destination, by name."""
    loc = dest if isinstance(dest, Location) else Location.of(dest, storage_options)
    try:
        names = loc.fs.ls(loc.join(ALIASES_DIR), detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    out: dict[str, PromotionManifest] = {}
    for full in names:
        base = posixpath.basename(str(full).rstrip("/"))
        if base.endswith(".json") and alias_name_ok(base[: -len(".json")]):
            m = read_alias(loc, base[: -len(".json")])
            if m is not None:
                out[base[: -len(".json")]] = m
    return out


def alias_path(alias: str) -> str:
    """Where alias ``alias`` lives, relative to DEST."""
    return f"{ALIASES_DIR}/{alias}.json"


def _encode(manifest: PromotionManifest) -> bytes:
    return (json.dumps(manifest.to_dict(), indent=1) + "\n").encode()


def write_manifest(dst: Location, manifest: PromotionManifest) -> None:
    """Write ``DEST/PROMOTED.json`` atomically (the commit point for manifest readers)."""
    dst.write_atomic(MANIFEST_NAME, _encode(manifest))


def write_alias(dst: Location, alias: str, manifest: PromotionManifest) -> str:
    """Point ``alias`` at ``manifest``'s promotion (atomically; no ``retained``); its display path."""
    pointer = PromotionManifest.from_dict(manifest.to_dict())
    pointer.retained = {}
    write_atomic(dst.fs, dst.join(alias_path(alias)), _encode(pointer))
    return dst.display(alias_path(alias))
