"""TensorFlow at run time: device detection, staging and restoring checkpoints (TF2 and TF1).

This is the ONLY module of the package that imports TensorFlow, and it does so lazily, inside
functions: the scheduler, the dag-processor and the triggerer import the operators (to parse DAGs)
but never run them, and they must not pay TF's ~10 s import or need TF installed at all.

Object stores: TF 2.21 has a ``gs`` filesystem of its own, but it does not use the Airflow
connection's credentials, it ignores ``STORAGE_EMULATOR_HOST`` and it cannot read ``memory://`` or
other fsspec stores. So a checkpoint prefix on any NON-LOCAL URL is always staged first: its files
(index + data shards, or the V1 table files, plus the ``.meta`` that TF1 needs) are copied through
fsspec, with the same credentials the rest of the provider uses, into a local temp dir, and TF reads
the local copy. The copy lives as long as the restored object (``close()`` removes it), because
Keras restores some variables lazily (on first use) from the checkpoint file. Local paths (and
``file://`` URLs) are read in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from airflow_tf_ckpt.core.errors import CheckpointError, StepNotFoundError
from airflow_tf_ckpt.core.steps.discovery import discover
from airflow_tf_ckpt.core.steps.order import newest_meta
from airflow_tf_ckpt.core.storage.location import Location

log = logging.getLogger(__name__)

MATCH_MODES = ("existing", "consumed", "partial")


class GpuNotAvailableError(RuntimeError):
    """``require_gpu=True`` but TensorFlow sees no GPU on this worker."""


class CheckpointRestoreError(CheckpointError):
    """The checkpoint could not be restored into the object (or graph) the caller built."""

    def __init__(self, message: str, path: str | None = None, *, unmatched: list[str] | None = None) -> None:
        self.unmatched = list(unmatched or [])
        super().__init__(message, path)


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    started = time.perf_counter()
    log.info("Importing TensorFlow")  # the import is most of a fresh task's start-up: show where
    with native_stderr_to_log():  # TF's C++ start-up lines, at their own level (see below)
        import tensorflow as tf  # noqa: PLC0415 - lazy on purpose, see the module docstring

    log.info("Imported TensorFlow %s in %.1f s", tf.__version__, time.perf_counter() - started)
    return tf


# --------------------------------------------------------------------------------------------
# TensorFlow's native log lines
#
# TF's C++ code (absl logging) writes straight to file descriptor 2. Airflow's task supervisor
# reads a task's fd 2 as plain text and logs every line of it at ERROR ("task.stderr"), so a
# successful evaluation on a CPU-only worker showed "failed call to cuInit" and "Could not find
# cuda drivers" as errors. Around the calls that print them (the import, the first device
# listing) fd 2 goes to a temp file, and each line is then logged through Python logging at the
# level its own prefix gives (which Airflow forwards as is).

# absl: "E0000 00:00:1796159260.069097   29528 cuda_platform.cc:52] msg"; TF < 2.16:
# "2024-01-01 12:00:00.123456: E tensorflow/stream_executor/cuda/cuda_driver.cc:271] msg"
_ABSL_LINE = re.compile(r"^(?P<level>[IWEF])\d{4} \d\d:\d\d:[\d.]+\s+\d+ [^\]]*\] ")
_OLD_TF_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<level>[IWEF]) \S+\] ")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
#: errors TF prints on any host without a usable CUDA driver: expected on a CPU worker
_NO_GPU_NOISE = re.compile(
    r"failed call to cuInit|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) "
    r"factory|could not open file to read NUMA node|TF-TRT Warning|"
    r"cuda_diagnostics|kernel driver does not appear to be running",
    re.I,
)
_native_lock = threading.RLock()


def native_log_level(line: str) -> int:
    """The logging level of one line TF wrote to fd 2: its absl/TF level letter; an error that
    only says there is no usable GPU is a WARNING (the CPU is used); absl's "before InitializeLog"
    notice is DEBUG; anything else (e.g. a Python warning printed meanwhile) a WARNING."""
    m = _ABSL_LINE.match(line) or _OLD_TF_LINE.match(line)
    if m:
        level = _LEVELS[m.group("level")]
        if level >= logging.ERROR and level < logging.CRITICAL and _NO_GPU_NOISE.search(line):
            return logging.WARNING
        return level
    if line.startswith("WARNING: All log messages before absl::InitializeLog() is called"):
        return logging.DEBUG
    return logging.WARNING


@contextlib.contextmanager
def native_stderr_to_log(logger: logging.Logger | None = None) -> Iterator[None]:
    """Send what is written to fd 2 meanwhile (by C++ or Python) to ``logger``, line by line, at
    :func:`native_log_level`. A temp file, not a pipe: no reader thread, no full-buffer stall."""
    lg = logger or logging.getLogger("airflow_tf_ckpt.tf_native")
    with _native_lock, tempfile.TemporaryFile() as sink:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
        sink.seek(0)
        for raw in sink.read().decode("utf-8", errors="replace").splitlines():
            if raw.strip():
                lg.log(native_log_level(raw), "%s", raw.rstrip())


# --------------------------------------------------------------------------------------------
# devices


@dataclass(frozen=True)
class DeviceInfo:
    """What TensorFlow sees on this worker."""

    tf_version: str
    gpus: list[str]
    device: str  # the device ops run on by default: "/GPU:0" or "/CPU:0"

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {"tf_version": self.tf_version, "gpus": self.gpus, "device": self.device}


def detect_devices(*, require_gpu: bool = False, logger: logging.Logger | Any | None = None) -> DeviceInfo:
    """List the GPUs TF sees, turn on memory growth, log the device used.

    Memory growth lets several evaluation tasks share one GPU instead of the first one grabbing all
    of its memory. It must be set before TF initialises the GPU; a later call fails harmlessly.
    """
    tf = _tf()
    lg = logger or log
    with native_stderr_to_log():  # the first listing initialises CUDA: "failed call to cuInit"
        gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError, ValueError):
            tf.config.experimental.set_memory_growth(gpu, True)
    names = [g.name for g in gpus]
    info = DeviceInfo(tf_version=tf.__version__, gpus=names, device="/GPU:0" if gpus else "/CPU:0")
    if gpus:
        lg.info(
            "TensorFlow %s: %d GPU(s) visible %s; using %s", info.tf_version, len(gpus), names, info.device
        )
    else:
        lg.info(
            "TensorFlow %s: no GPU visible (CUDA_VISIBLE_DEVICES=%r); using %s",
            info.tf_version,
            os.environ.get("CUDA_VISIBLE_DEVICES"),
            info.device,
        )
    if require_gpu and not gpus:
        raise GpuNotAvailableError(
            "require_gpu=True but TensorFlow sees no GPU on this worker "
            f"(tensorflow {info.tf_version}; CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Route the task to a GPU worker "
            "(queue='gpu' and `airflow celery worker -q gpu` on a host with an NVIDIA GPU and "
            "tensorflow[and-cuda]), or set require_gpu=False to allow the CPU."
        )
    return info


# --------------------------------------------------------------------------------------------
# staging


def split_prefix_url(prefix_url: str) -> tuple[str, str]:
    """``gs://b/run/ckpt-5`` → (``gs://b/run``, ``ckpt-5``)."""
    url = prefix_url.rstrip("/")
    if "://" in url:
        scheme, rest = url.split("://", 1)
        head, _, name = rest.rpartition("/")
        return f"{scheme}://{head}", name
    head, name = os.path.split(url)
    return head or ".", name


@dataclass
class StagedPrefix:
    """A checkpoint prefix readable by TF on local disk, and what it was staged from."""

    source: str  # the URL the user gave
    local_prefix: str  # a local path TF can open
    step: int | None
    meta_path: str | None = None  # the local ``.meta`` chosen for TF1, if any was asked for
    tmpdir: str | None = None  # set when we copied the files; removed by ``cleanup``
    files: list[str] = field(default_factory=list)

    @property
    def staged(self) -> bool:
        return self.tmpdir is not None

    def cleanup(self) -> None:
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def stage_prefix(
    prefix_url: str,
    *,
    location: Location | None = None,
    storage_options: dict[str, Any] | None = None,
    with_meta: bool = False,
    tmp_root: str | None = None,
) -> StagedPrefix:
    """Make one checkpoint step readable by TF on local disk (see the module docstring).

    ``location`` is the checkpoint dir when the caller already has one (with credentials, e.g.
    from ``CheckpointStorageHook``); otherwise it is built from the URL. ``with_meta`` also finds the
    newest ``.meta`` at or before the step. Raises :class:`StepNotFoundError` when the step is not
    there or is incomplete.
    """
    dir_url, name = split_prefix_url(prefix_url)
    loc = location or Location.of(dir_url, storage_options)
    cdir = discover(loc)
    try:
        step = cdir.get(name)
    except StepNotFoundError:
        raise StepNotFoundError(f"no checkpoint prefix {name!r} in this dir", loc.display()) from None
    if step.missing:
        raise StepNotFoundError(f"step {name!r} is incomplete; missing {step.missing}", loc.display())
    meta_name = newest_meta(cdir.listing, name, step.base, step.step) if with_meta else None
    if loc.local:
        return StagedPrefix(
            source=prefix_url,
            local_prefix=loc.join(name),
            step=step.step,
            meta_path=loc.join(meta_name) if meta_name else None,
            files=[f.name for f in step.files],
        )
    tmpdir = tempfile.mkdtemp(prefix="tf_ckpt_stage_", dir=tmp_root)
    try:
        wanted = [f.name for f in step.files] + ([meta_name] if meta_name else [])
        for fname in wanted:
            loc.fs.get_file(loc.join(fname), os.path.join(tmpdir, fname))
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    log.info("Staged %s (%d files) to %s", loc.display(name), len(wanted), tmpdir)
    return StagedPrefix(
        source=prefix_url,
        local_prefix=os.path.join(tmpdir, name),
        step=step.step,
        meta_path=os.path.join(tmpdir, meta_name) if meta_name else None,
        tmpdir=tmpdir,
        files=wanted,
    )


# --------------------------------------------------------------------------------------------
# TF2


@dataclass
class RestoredCheckpoint:
    """A TF2 checkpoint restored into the caller's objects.

    ``root`` is what ``build_fn`` returned; attributes not defined here are looked up on it, so
    ``restored.model`` works for ``tf.train.Checkpoint(model=...)`` (or a dict with ``"model"``).
    Names defined here win (``restored.step`` is the step NUMBER): reach a checkpoint child of the
    same name through ``restored.root.step``.
    Use it as a context manager, or call ``close()``, to drop the staged copy.
    """

    root: Any
    checkpoint: Any  # the tf.train.Checkpoint actually used
    prefix: str  # the URL restored from
    step: int | None
    device: DeviceInfo
    staged: StagedPrefix
    status: Any = None

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_") or item in ("root", "checkpoint"):
            raise AttributeError(item)
        root = self.__dict__.get("root")
        if isinstance(root, dict) and item in root:
            return root[item]
        return getattr(root, item)

    def close(self) -> None:
        self.staged.cleanup()

    def __enter__(self) -> RestoredCheckpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PATH_RE = re.compile(r"path=([^,>\s]+)")
_NAME_RE = re.compile(r"name=([^,>\s]+)")
_KEY_RE = re.compile(r'checkpoint_key: "([^"]+)"')


def _names_in(message: str) -> list[str]:
    """Variable paths / checkpoint keys named in one of TF's matching errors."""
    found = _PATH_RE.findall(message) or _NAME_RE.findall(message)
    found += _KEY_RE.findall(message)
    return list(dict.fromkeys(found))


def _as_checkpoint(tf: Any, built: Any) -> Any:
    if isinstance(built, tf.train.Checkpoint):
        return built
    if isinstance(built, dict):
        return tf.train.Checkpoint(**built)
    raise TypeError(
        "build_fn must return a tf.train.Checkpoint (e.g. tf.train.Checkpoint(model=m, "
        "optimizer=o)) or a dict of trackables with the names used when saving; got "
        f"{type(built).__name__}"
    )


def restore_tf2(
    ckpt_prefix_url: str,
    build_fn: Callable[[], Any],
    *,
    match: str = "existing",
    location: Location | None = None,
    storage_options: dict[str, Any] | None = None,
    require_gpu: bool = False,
    logger: logging.Logger | Any | None = None,
) -> RestoredCheckpoint:
    """Restore a TF2 (object-based) checkpoint into what ``build_fn()`` builds.

    ``build_fn`` builds the model (and optimizer) exactly as training did and returns a
    ``tf.train.Checkpoint`` over them (or a dict turned into one). Build the variables first
    (e.g. ``model.build(...)`` / ``optimizer.build(model.trainable_variables)``): TF only checks
    objects that exist when it restores.

    ``match``:
    * ``existing`` (default): every variable that exists in the built objects must get a value from
      the checkpoint (``assert_existing_objects_matched``). Values in the checkpoint that the built
      objects do not use (e.g. optimizer slots when evaluating) are fine.
    * ``consumed``: also every value in the checkpoint must be used (``assert_consumed``).
    * ``partial``: no check (``expect_partial``); for loading a sub-model on purpose.

    Raises :class:`CheckpointRestoreError` naming the unmatched variables, and
    :class:`GpuNotAvailableError` when ``require_gpu`` and there is no GPU.
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, not {match!r}")
    tf = _tf()
    lg = logger or log
    device = detect_devices(require_gpu=require_gpu, logger=lg)
    staged = stage_prefix(ckpt_prefix_url, location=location, storage_options=storage_options)
    try:
        with tf.device(device.device):
            root = build_fn()
            ckpt = _as_checkpoint(tf, root)
            lg.info(
                "Restoring %s (step %s) from %s on %s",
                ckpt_prefix_url,
                staged.step,
                staged.local_prefix,
                device.device,
            )
            status = _restore_into(tf, ckpt, staged.local_prefix, ckpt_prefix_url)
            _assert_match(status, match, ckpt_prefix_url)
    except BaseException:
        staged.cleanup()
        raise
    return RestoredCheckpoint(
        root=root,
        checkpoint=ckpt,
        prefix=ckpt_prefix_url,
        step=staged.step,
        device=device,
        staged=staged,
        status=status,
    )


def _restore_into(tf: Any, ckpt: Any, local_prefix: str, ckpt_prefix_url: str) -> Any:
    """``ckpt.restore(local_prefix)``; TF's own refusal (a value of the wrong shape or dtype, an
    unreadable file) becomes a :class:`CheckpointRestoreError` naming the variables."""
    try:
        return ckpt.restore(local_prefix)
    except (ValueError, tf.errors.OpError) as exc:
        raise CheckpointRestoreError(
            f"cannot restore into the objects build_fn built: {exc}",
            ckpt_prefix_url,
            unmatched=_names_in(str(exc)),
        ) from exc


def _assert_match(status: Any, match: str, ckpt_prefix_url: str) -> None:
    """Apply the ``match`` mode to a restore status (see :func:`restore_tf2`)."""
    try:
        if match == "existing":
            status.assert_existing_objects_matched()
            # values in the checkpoint that nothing uses (optimizer slots at evaluation) are
            # fine here: silence TF's "could not be found in the restored object" warnings
            status.expect_partial()
        elif match == "consumed":
            status.assert_existing_objects_matched()
            status.assert_consumed()
        else:
            status.expect_partial()
    except AssertionError as exc:
        status.expect_partial()  # we report the mismatch; TF need not warn again at exit
        raise _mismatch_error(exc, match, ckpt_prefix_url) from exc


def _mismatch_error(exc: AssertionError, match: str, ckpt_prefix_url: str) -> CheckpointRestoreError:
    """One error naming what did not match, which side it is on, and what to do about it."""
    names = _names_in(str(exc))
    what = (
        "variables of the built objects got no value from the checkpoint"
        if match == "existing" or "Python objects" in str(exc)
        else "checkpoint values were not used by the built objects"
    )
    return CheckpointRestoreError(
        f"checkpoint does not match the objects build_fn built (match={match!r}): {what}: "
        + (", ".join(names) if names else str(exc).splitlines()[0])
        + ". Build the model/optimizer exactly as in training (shapes, layer order), or use "
        "match='partial' to load a subset on purpose.",
        ckpt_prefix_url,
        unmatched=names,
    )


# --------------------------------------------------------------------------------------------
# TF1


@dataclass
class RestoredGraph:
    """A TF1 (graph-mode) checkpoint restored into a ``tf.compat.v1.Session``.

    ``close()`` (or leaving the ``with`` block) closes the session and drops the staged copy.
    ``value("w1")`` reads a global variable by name (TF 2.x graphs hold resource variables, whose
    ``"w1:0"`` tensor is a handle, not the value); ``tensor("name:0")`` is
    ``graph.get_tensor_by_name``; ``run`` is ``session.run``.
    """

    graph: Any
    session: Any
    saver: Any
    prefix: str
    step: int | None
    device: DeviceInfo
    staged: StagedPrefix
    meta_graph: str | None = None  # the URL/path of the .meta imported, if any

    def tensor(self, name: str) -> Any:
        return self.graph.get_tensor_by_name(name)

    def variable(self, name: str) -> Any:
        """The global variable called ``name`` (with or without ``:0``)."""
        want = name.split(":", 1)[0]
        for var in self.graph.get_collection("variables"):
            if var.op.name == want:
                return var
        raise KeyError(f"no global variable {want!r} in the restored graph")

    def value(self, name: str) -> Any:
        """The restored value of the global variable ``name`` (a numpy array or scalar)."""
        return self.session.run(self.variable(name))

    def run(self, fetches: Any, feed_dict: dict[Any, Any] | None = None) -> Any:
        return self.session.run(fetches, feed_dict=feed_dict)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()
        self.staged.cleanup()

    def __enter__(self) -> RestoredGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore_tf1(
    ckpt_prefix_url: str,
    *,
    build_graph: Callable[[], Any] | None = None,
    meta_graph: str | None = None,
    location: Location | None = None,
    storage_options: dict[str, Any] | None = None,
    require_gpu: bool = False,
    session_config: Any = None,
    logger: logging.Logger | Any | None = None,
) -> RestoredGraph:
    """Restore a TF1 (name-based, ``tf.compat.v1.train.Saver``) checkpoint, as the seed code does::

        saver = tf.compat.v1.train.import_meta_graph("my_test_model-1000.meta")
        saver.restore(sess, tf.train.latest_checkpoint("./"))

    The graph comes from, in this order: ``build_graph`` (a callable that builds the variables in
    the current default graph and may return a ``Saver`` or a var_list), else ``meta_graph`` (an
    explicit ``.meta`` URL/path), else the step's own ``.meta``, else the newest ``.meta`` of the same
    base name at or before the step: ``saver.save(..., write_meta_graph=False)`` writes one only at
    the first save. When none is left (TF's ``max_to_keep`` deleted it with its step) the error says so.

    Before restoring we check that every variable the Saver restores is in the checkpoint, and name
    the missing ones (TF would only say "Key ... not found" for the first one).
    """
    tf = _tf()
    lg = logger or log
    device = detect_devices(require_gpu=require_gpu, logger=lg)
    staged = stage_prefix(
        ckpt_prefix_url,
        location=location,
        storage_options=storage_options,
        with_meta=build_graph is None and meta_graph is None,
    )
    meta: _Meta | None = None
    try:
        if build_graph is None:
            meta = _meta_to_import(ckpt_prefix_url, meta_graph, staged, storage_options)
        shapes = tf.train.load_checkpoint(staged.local_prefix).get_variable_to_shape_map()
        graph = tf.Graph()
        with graph.as_default(), graph.device(device.device):
            saver = _tf1_graph(tf, build_graph, meta, ckpt_prefix_url, lg)
            _check_graph_matches(_saver_variables(tf, saver, graph), shapes, ckpt_prefix_url)
            lg.info(
                "Restoring %s (step %s) into a TF1 session on %s", ckpt_prefix_url, staged.step, device.device
            )
            session = _tf1_session(tf, graph, saver, staged.local_prefix, session_config, ckpt_prefix_url)
    except BaseException:
        staged.cleanup()
        raise
    finally:
        if meta is not None and meta.tmp_dir:
            # the graph is imported; the .meta copy is no longer needed
            shutil.rmtree(meta.tmp_dir, ignore_errors=True)
    return RestoredGraph(
        graph=graph,
        session=session,
        saver=saver,
        prefix=ckpt_prefix_url,
        step=staged.step,
        device=device,
        staged=staged,
        meta_graph=meta.shown if meta is not None else None,
    )


def _tf1_graph(
    tf: Any,
    build_graph: Callable[[], Any] | None,
    meta: _Meta | None,
    ckpt_prefix_url: str,
    lg: logging.Logger | Any,
) -> Any:
    """In the current default graph: the variables and the Saver that restores them, built by
    ``build_graph`` or imported from the ``.meta`` (local path, shown name, temp dir)."""
    v1 = tf.compat.v1
    if build_graph is not None:
        return _saver_of(v1, build_graph())
    assert meta is not None  # restore_tf1 found one when there is no build_graph
    lg.info("Importing the graph from %s", meta.shown)
    saver = v1.train.import_meta_graph(meta.local, clear_devices=True)
    if saver is None:
        raise CheckpointRestoreError(f"{meta.shown} holds no variables to restore", ckpt_prefix_url)
    return saver


def _tf1_session(
    tf: Any, graph: Any, saver: Any, local_prefix: str, session_config: Any, ckpt_prefix_url: str
) -> Any:
    """A session on ``graph`` with the checkpoint restored into it (closed again if TF refuses)."""
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        saver.restore(session, local_prefix)
    except BaseException as exc:
        session.close()
        if isinstance(exc, tf.errors.OpError):
            raise CheckpointRestoreError(
                f"Saver.restore failed: {exc.message}", ckpt_prefix_url, unmatched=_names_in(str(exc))
            ) from exc
        raise
    return session


class _Meta(NamedTuple):
    """The ``.meta`` graph a TF1 restore imports."""

    local: str  # the path TF reads
    shown: str  # the URL/path to name in logs and in RestoredGraph.meta_graph
    tmp_dir: str | None  # a temp dir holding a fetched copy, removed once imported


def _meta_to_import(
    ckpt_prefix_url: str, meta_graph: str | None, staged: StagedPrefix, storage_options: dict[str, Any] | None
) -> _Meta:
    """The ``.meta`` a TF1 restore imports: ``meta_graph`` (fetched to a temp dir when remote),
    else the staged step's own or newest earlier one; a clear error when there is none."""
    if meta_graph is not None:
        if "://" in meta_graph and not meta_graph.startswith("file://"):
            extra_tmp = tempfile.mkdtemp(prefix="tf_ckpt_meta_")
            mdir, mname = split_prefix_url(meta_graph)
            mloc = Location.of(mdir, storage_options)
            meta_local = os.path.join(extra_tmp, mname)
            mloc.fs.get_file(mloc.join(mname), meta_local)
            return _Meta(meta_local, meta_graph, extra_tmp)
        return _Meta(meta_graph.removeprefix("file://"), meta_graph, None)
    if staged.meta_path is not None:
        dir_url, _ = split_prefix_url(ckpt_prefix_url)
        return _Meta(staged.meta_path, posixpath.join(dir_url, os.path.basename(staged.meta_path)), None)
    raise CheckpointRestoreError(
        "no .meta graph at or before this step to import (a Saver with "
        "write_meta_graph=False writes one only at its first save, and max_to_keep "
        "deletes it with that step; keep the newest .meta with the retention policy). "
        "Pass build_graph= to rebuild the graph in code, or meta_graph= to name one.",
        ckpt_prefix_url,
    )


def _saver_of(v1: Any, built: Any) -> Any:
    """What ``build_graph()`` returned: a ``Saver``, a var_list (list or dict), or anything else
    (then a Saver of every variable in the graph)."""
    if isinstance(built, v1.train.Saver):
        return built
    return v1.train.Saver(var_list=built if isinstance(built, (list, dict)) else None)


def _check_graph_matches(
    wanted: dict[str, list[int] | None], shapes: dict[str, Any], ckpt_prefix_url: str
) -> None:
    """Every variable the Saver restores is in the checkpoint with the same shape; otherwise ONE
    error naming all of them (TF would only say "Key ... not found" for the first)."""
    missing = sorted(n for n in wanted if n not in shapes)
    wrong = sorted(
        f"{n} (graph {wanted[n]}, checkpoint {list(shapes[n])})"
        for n in wanted
        if n in shapes and wanted[n] is not None and list(shapes[n]) != wanted[n]
    )
    if not (missing or wrong):
        return
    parts = []
    if missing:
        parts.append(
            f"{len(missing)} variable(s) of the graph are not in the checkpoint: " + ", ".join(missing)
        )
    if wrong:
        parts.append("shapes differ: " + ", ".join(wrong))
    raise CheckpointRestoreError(
        "checkpoint does not match the graph: " + "; ".join(parts), ckpt_prefix_url, unmatched=missing + wrong
    )


def _saver_variables(tf: Any, saver: Any, graph: Any) -> dict[str, list[int] | None]:
    """Checkpoint key -> static shape (``None`` when unknown) of what ``saver`` restores.

    Read from the graph, through public APIs: the ``RestoreV2`` ops under the Saver's name scope
    (``saver.saver_def``) name the keys; the shape is the full one of a slice spec (partitioned
    variables), else the ``shape`` attribute of the variable each restored value is assigned to.
    A graph without ``RestoreV2`` ops (made before TF 1.0) is checked against its global variables.
    """
    scope = saver.saver_def.restore_op_name.rpartition("/")[0] + "/"
    ops = [op for op in graph.get_operations() if op.type == "RestoreV2" and op.name.startswith(scope)]
    if not ops:
        return {v.op.name: _dims(v.shape) for v in tf.compat.v1.global_variables()}
    out: dict[str, list[int] | None] = {}
    for op in ops:
        names = tf.make_ndarray(op.inputs[1].op.get_attr("value"))
        specs = tf.make_ndarray(op.inputs[2].op.get_attr("value"))
        for value, name, spec in zip(op.outputs, names, specs, strict=True):
            full = spec.decode().split()[:-1]  # "10 2 0,5:0,2": the full shape, then the slice
            out[name.decode()] = [int(d) for d in full] if full else _assigned_shape(tf, value)
    return out


def _assigned_shape(tf: Any, value: Any) -> list[int] | None:
    """The static shape of the variable that the restored tensor ``value`` is assigned to (through
    ``Identity`` ops: resource variables), or ``None`` (``reshape=True``, an odd graph)."""
    op = _sole_consumer(value)
    while op is not None and op.type == "Identity":
        op = _sole_consumer(op.outputs[0])
    if op is None or op.type not in ("Assign", "AssignVariableOp"):
        return None
    try:
        return _dims(tf.TensorShape(op.inputs[0].op.get_attr("shape")))
    except ValueError:  # the target is not a variable op with a shape attribute
        return None


def _sole_consumer(tensor: Any) -> Any:
    consumers = tensor.consumers()
    return consumers[0] if len(consumers) == 1 else None


def _dims(shape: Any) -> list[int] | None:
    try:
        return None if shape is None or shape.rank is None else [int(d) for d in shape]
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def restored_tf2(
    ckpt_prefix_url: str, build_fn: Callable[[], Any], **kwargs: Any
) -> Iterator[RestoredCheckpoint]:
    """``with restored_tf2(url, build_fn) as r:`` — restores, then drops the staged copy."""
    restored = restore_tf2(ckpt_prefix_url, build_fn, **kwargs)
    try:
        yield restored
    finally:
        restored.close()
