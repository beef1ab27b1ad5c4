"""The provider's ``[tf_ckpt]`` options, read from Airflow's config with safe fallbacks.

Airflow is imported inside each function, so importing this module (from the core, the CLI or a
test that never touches Airflow) stays cheap and works where Airflow is not installed at all.
Defaults are those declared in :mod:`airflow_tf_ckpt.get_provider_info`.
"""

from __future__ import annotations

SECTION = "tf_ckpt"
DEFAULT_GPU_QUEUE = "gpu"
DEFAULT_POLL_INTERVAL = 30.0
DEFAULT_SETTLE_SECONDS = 0.0


def _conf():  # -> airflow.configuration.AirflowConfigParser | None
    try:
        from airflow.configuration import conf
    except ImportError:
        return None
    return conf


def gpu_queue() -> str:
    """Queue for TensorFlow tasks (``[tf_ckpt] gpu_queue``, default ``gpu``)."""
    conf = _conf()
    if conf is None:
        return DEFAULT_GPU_QUEUE
    return conf.get(SECTION, "gpu_queue", fallback=DEFAULT_GPU_QUEUE) or DEFAULT_GPU_QUEUE


def _float(option: str, default: float) -> float:
    conf = _conf()
    if conf is None:
        return default
    try:
        value = conf.getfloat(SECTION, option, fallback=default)
    except Exception:  # noqa: BLE001 - AirflowConfigException & co: the default, not a DAG parse crash
        return default
    return value if value >= 0 else default


def poll_interval() -> float:
    """Seconds between polls (``[tf_ckpt] poll_interval``, default 30)."""
    return _float("poll_interval", DEFAULT_POLL_INTERVAL)


def settle_seconds() -> float:
    """Minimum age of a committed step (``[tf_ckpt] settle_seconds``, default 0)."""
    return _float("settle_seconds", DEFAULT_SETTLE_SECONDS)


def triggerer_gc_freeze() -> bool:
    """``[tf_ckpt] triggerer_gc_freeze`` (default False): see :func:`triggers.checkpoint.freeze_gc_once`."""
    conf = _conf()
    if conf is None:
        return False
    try:
        return conf.getboolean(SECTION, "triggerer_gc_freeze", fallback=False)
    except Exception:  # noqa: BLE001 - a bad value: the default, not a failed trigger
        return False


def ui_dirs() -> list[str]:
    """``[tf_ckpt] ui_dirs``: more checkpoint dirs for the Checkpoints page (comma or newline separated)."""
    conf = _conf()
    if conf is None:
        return []
    from airflow_tf_ckpt.ui.sources import split_dirs

    return split_dirs(conf.get(SECTION, "ui_dirs", fallback=""))


def ui_conn_id() -> str | None:
    """``[tf_ckpt] ui_conn_id``: the connection for page dirs no sensor or watcher names one for."""
    conf = _conf()
    if conf is None:
        return None
    return conf.get(SECTION, "ui_conn_id", fallback="") or None
