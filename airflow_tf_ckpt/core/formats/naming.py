"""File names of TensorFlow checkpoints: which file belongs to which prefix, and what step it is.

V2: ``PREFIX.index``, ``PREFIX.data-00000-of-00004``; ``PREFIX.meta`` (MetaGraphDef).
V1: ``NAME.ckpt`` or any single-file table named by the state file, or ``PREFIX-00000-of-00002``.
Ours: ``PREFIX.metrics.json`` (metrics sidecar), ``PREFIX.metrics~EVALUATOR.json`` (the metrics of
one named evaluator; ``~`` is in no evaluator name, lease owner or TF name), ``PREFIX.lease-*``
(evaluation leases; the infix ``.lease-`` is reserved: whatever follows it, such a name is a lease,
never another role),
``PREFIX.quarantine.json`` (a corrupt step kept for inspection).
The step is the ``-N`` suffix of the prefix (``model.ckpt-1000`` → base ``model.ckpt``, step 1000).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INT64_MAX = 2**63 - 1

STEP_RE = re.compile(r"^(?P<base>.+)-(?P<step>\d+)$")
V2_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<num>\d{5})$")
V1_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<shard>\d{5})-of-(?P<num>\d{5})$")
#: an evaluator's name: every Airflow dag_id fits; never ``~`` (the separator) nor ``/``
EVALUATOR_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}$")
EVALUATOR_METRICS_RE = re.compile(
    r"^(?P<prefix>.+)\.metrics~(?P<evaluator>[A-Za-z0-9_][A-Za-z0-9_.-]{0,249})\.json$"
)
LEASE_RE = re.compile(r"^(?P<prefix>.+)\.lease-(?P<owner>[A-Za-z0-9_.@-]+)$")
LEASE_INFIX = ".lease-"

# Suffixes that belong to a prefix (longest first so ``.metrics.json`` wins over ``.json``).
SIDECAR_SUFFIXES = (".metrics.json", ".quarantine.json", ".meta")
INDEX_SUFFIX = ".index"
METRICS_SUFFIX = ".metrics.json"
EVALUATOR_METRICS_INFIX = ".metrics~"
QUARANTINE_SUFFIX = ".quarantine.json"
META_SUFFIX = ".meta"


def v2_data_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def v1_shard_name(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}"


@dataclass(frozen=True)
class PrefixName:
    """A checkpoint prefix split into its base name and step (``None`` when it has no step)."""

    prefix: str
    base: str
    step: int | None
    step_overflow: bool = False  # digits that do not fit int64: not a step, reported


def parse_prefix(prefix: str) -> PrefixName:
    m = STEP_RE.match(prefix)
    if not m:
        return PrefixName(prefix, prefix, None)
    digits = m.group("step")
    step = int(digits) if len(digits) <= 19 else INT64_MAX + 1
    if step > INT64_MAX:
        return PrefixName(prefix, prefix, None, step_overflow=True)
    return PrefixName(prefix, m.group("base"), step)


@dataclass(frozen=True)
class FileRole:
    """What one file in a checkpoint dir is."""

    prefix: str
    role: str  # index | data | meta | metrics | quarantine | lease | v1 | v1_shard
    shard: int | None = None
    num_shards: int | None = None
    evaluator: str | None = None  # role metrics: whose (None: the default ``PREFIX.metrics.json``)


def classify(name: str) -> FileRole | None:
    """The role of a file name, or ``None`` when it is not (obviously) checkpoint-related.

    A bare V1 file (``NAME.ckpt`` or a prefix named only by the state file) is recognised by the
    ``.ckpt`` suffix here; discovery also treats any file the state file names as V1.
    """
    if LEASE_INFIX in name:
        # before every suffix test: a lease of an owner named ``x.meta`` or ``x.index`` (this
        # package wrote before lease names were hashed) is a lease, not a MetaGraphDef or an index
        m = LEASE_RE.match(name)
        if m:
            return FileRole(m.group("prefix"), "lease")
    if name.endswith(INDEX_SUFFIX):
        return FileRole(name[: -len(INDEX_SUFFIX)], "index")
    m = V2_DATA_RE.match(name)
    if m:
        return FileRole(m.group("prefix"), "data", int(m.group("shard")), int(m.group("num")))
    if EVALUATOR_METRICS_INFIX in name and (m := EVALUATOR_METRICS_RE.match(name)):
        return FileRole(m.group("prefix"), "metrics", evaluator=m.group("evaluator"))
    for suffix, role in (
        (METRICS_SUFFIX, "metrics"),
        (QUARANTINE_SUFFIX, "quarantine"),
        (META_SUFFIX, "meta"),
    ):
        if name.endswith(suffix) and len(name) > len(suffix):
            return FileRole(name[: -len(suffix)], role)
    m = V1_SHARD_RE.match(name)
    if m:
        return FileRole(m.group("prefix"), "v1_shard", int(m.group("shard")), int(m.group("num")))
    if name.endswith(".ckpt") or re.search(r"\.ckpt-\d+$", name):
        return FileRole(name, "v1")
    return None
