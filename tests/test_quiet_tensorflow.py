"""quiet_tensorflow.py: TensorFlow's start-up and INFO lines stay off the console, every other line stays on it."""
import os
import subprocess
import sys

import pytest

import quiet_tensorflow
from conftest import REPO_ROOT

# What TensorFlow 2.21 wrote at start-up on a CPU-only machine, 2026-11-26.
STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796123472.541788    3537 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.\n",
    "I0000 00:00:1796123472.678462    3537 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.\n",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate "
    "compiler flags.\n",
    "E0000 00:00:1796123600.164324    4343 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)\n",
]
OTHER_LINES = ["E0000 00:00:1796123600.164324    4343 op_kernel.cc:1830] a real error\n", "UserWarning: kept\n"]


def test_only_the_startup_lines_are_left_out():
    text = "".join([OTHER_LINES[0], *STARTUP_LINES, OTHER_LINES[1]])
    assert quiet_tensorflow.without_startup_lines(text) == "".join(OTHER_LINES)


def test_what_descriptor_2_receives_is_replayed_in_order_without_startup_lines(capfd):
    def write():
        os.write(2, "".join([OTHER_LINES[0], *STARTUP_LINES, OTHER_LINES[1]]).encode())
        return 7

    assert quiet_tensorflow.run_with_stderr_filtered(write) == 7
    assert capfd.readouterr().err == "".join(OTHER_LINES)


def test_verbose_on_the_command_line_or_log_level_0_keeps_every_line():
    assert quiet_tensorflow.verbose(["train.py", "--verbose"], {})
    assert quiet_tensorflow.verbose(["train.py", "--verbose=True"], {})
    assert quiet_tensorflow.verbose(["evaluate.py"], {"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert not quiet_tensorflow.verbose(["train.py", "--noverbose", "--model_name=--verbose"], {"TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.slow
def test_train_help_prints_no_startup_line_unless_verbose():
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}

    def startup_lines(*args):
        result = subprocess.run([sys.executable, "train.py", "--help", *args], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert "--model_name" in result.stdout, result.stderr[-3000:]
        return [line for line in result.stderr.splitlines() if quiet_tensorflow.STARTUP_LINE.match(line)]

    verbose = startup_lines("--verbose")
    if not verbose:
        pytest.skip("TensorFlow writes no start-up line on this machine, so there is nothing to hide.")
    assert startup_lines() == []


# TensorFlow's INFO lines: C++ and absl ones start "I" and the date; a checkpoint save's names functional_saver.py.
