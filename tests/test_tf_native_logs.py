"""TensorFlow's native (C++/absl) start-up lines reach the log at their own level, not on fd 2.

Airflow's task supervisor logs every line a task writes to fd 2 at ERROR ("task.stderr"), so the
lines TF prints on a CPU-only worker ("Could not find cuda drivers", "failed call to cuInit")
showed as errors in successful tasks. ``tf_runtime`` captures fd 2 around the import and the first
device listing and re-logs each line through Python logging at the level its prefix gives.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_tf_ckpt.tf_runtime import native_log_level, native_stderr_to_log

REPO = Path(__file__).resolve().parents[1]

# lines as TF 2.21 printed them on this (CPU-only) machine, and older/other forms
LINES = [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", logging.DEBUG),
    (
        "I0000 00:00:1796159182.346938   29528 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
        "GPU will not be used.",
        logging.INFO,
    ),
    (
        "E0000 00:00:1796159260.069097   29528 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
        "Failed call to cuInit: UNKNOWN ERROR (303)",
        logging.WARNING,
    ),
    (
        "E0000 00:00:1732000000.000001    1234 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to "
        "register factory for plugin cuDNN when one has already been registered",
        logging.WARNING,
    ),
    (
        "W0000 00:00:1732000000.000001    1234 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
        logging.WARNING,
    ),
    ("E0000 00:00:1732000000.000001    1234 some_op.cc:12] Out of memory while allocating", logging.ERROR),
    ("F0000 00:00:1732000000.000001    1234 check.cc:1] Check failed: x == y", logging.CRITICAL),
    (
        "2024-01-01 12:00:00.123456: I tensorflow/core/platform/cpu_feature_guard.cc:182] This TensorFlow "
        "binary is optimized to use available CPU instructions",
        logging.INFO,
    ),
    (
        "2024-01-01 12:00:00.123456: E tensorflow/compiler/xla/stream_executor/cuda/cuda_driver.cc:268] "
        "failed call to cuInit: CUDA_ERROR_NO_DEVICE",
        logging.WARNING,
    ),
    ("some/module.py:3: DeprecationWarning: x is deprecated", logging.WARNING),
    ("Error: bare text with no level prefix", logging.WARNING),
]


@pytest.mark.parametrize("line,level", LINES)
def test_native_line_levels(line, level):
    assert native_log_level(line) == level


def test_fd2_is_captured_relogged_and_restored(capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="airflow_tf_ckpt.tf_native")
    with native_stderr_to_log():
        os.write(2, LINES[2][0].encode() + b"\n" + LINES[1][0].encode() + b"\n")  # as C++ writes
        os.write(2, b"a python warning on sys.stderr\n")  # Python's stderr is fd 2 in a task
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == "after\n"  # nothing of the captured lines reached fd 2; fd 2 is back afterwards
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "airflow_tf_ckpt.tf_native"]
    assert got == [
        (logging.WARNING, LINES[2][0]),
        (logging.INFO, LINES[1][0]),
        (logging.WARNING, "a python warning on sys.stderr"),
    ]


def test_fd2_is_restored_when_the_body_raises(capfd):
    with pytest.raises(RuntimeError), native_stderr_to_log():
        raise RuntimeError("boom")
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


@pytest.mark.tf
def test_real_tensorflow_start_up_writes_nothing_to_fd2():
    """A real TF import and device detection in a fresh process (as a task does): fd 2 stays
    empty, and the start-up lines arrive as log records, none at ERROR."""
    code = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.DEBUG, format='%(levelname)s|%(name)s|%(message)s')\n"
        "from airflow_tf_ckpt.tf_runtime import detect_devices\n"
        "print('DEVICE', detect_devices().device)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr
    native = [ln for ln in p.stdout.splitlines() if "|airflow_tf_ckpt.tf_native|" in ln]
    assert not [ln for ln in p.stdout.splitlines() if ln.startswith(("ERROR|", "CRITICAL|"))], p.stdout
    if "DEVICE /CPU:0" in p.stdout:  # a CPU-only host: TF says so, and we log it as a warning
        assert any("cuInit" in ln or "cuda drivers" in ln for ln in native), p.stdout
