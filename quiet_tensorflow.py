"""Keeps TensorFlow's start-up lines off the console; every entry script imports this module first.

TensorFlow 2.21 writes its start-up lines (absl's "All log messages before absl::InitializeLog()"
warning, CUDA probing, CPU features), some of them twice, from C++ straight to file descriptor 2
before its log level applies, so TF_CPP_MIN_LOG_LEVEL cannot hide them
(tensorflow/tensorflow#100442) and Python's sys.stderr never sees them. So while TensorFlow is
imported and first lists its devices (which writes CUDA's cuInit line), descriptor 2 points at a
temporary file; then every line written there that is not one of those start-up lines goes to the
console, in order. The capture waits for a script's own first `import tensorflow`, so a script that
needs no TensorFlow loads none. TF_CPP_MIN_LOG_LEVEL=1 (unless set) also hides TensorFlow's later
C++ INFO lines, and hide_info_logs its Python ones. `--verbose` on the command line, or
TF_CPP_MIN_LOG_LEVEL=0, keeps every line.
"""
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

STARTUP_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog"
                          r"|[IWE]\d{4} [^]]*(port|cudart_stub|cpu_feature_guard|cuda_platform)\.cc:\d+\]"
                          r"|To enable the following instructions")


def verbose(argv, environ):
    """Whether the command line or the environment asks for TensorFlow's every line."""
    return (any(arg == "--verbose" or arg.lower() in ("--verbose=true", "--verbose=1") for arg in argv[1:])
            or environ.get("TF_CPP_MIN_LOG_LEVEL") == "0")


def hide_info_logs(verbose):
    """Unless verbose, TensorFlow's Python INFO lines stay off the console: tf.get_logger()'s, and those that some of
    its modules write through absl directly, such as functional_saver.py's "Sharding callback duration" at each
    checkpoint save. Call it once the flags are parsed: absl's app.run sets the levels from --verbosity then."""
    if not verbose:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


def without_startup_lines(text):
    return "".join(line for line in text.splitlines(keepends=True) if not STARTUP_LINE.match(line))


def run_with_stderr_filtered(function):
    """function(), with what it writes to file descriptor 2 replayed afterwards, start-up lines left out."""
    sys.stderr.flush()
    console = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            return function()
        finally:
            sys.stderr.flush()
            os.dup2(console, 2)
            os.close(console)
            capture.seek(0)
            sys.stderr.write(without_startup_lines(capture.read().decode(errors="replace")))
            sys.stderr.flush()


class FilteredLoader(importlib.abc.Loader):
    """TensorFlow's own loader, its import and first device listing run with descriptor 2 filtered."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        def import_and_list_devices():
            self.loader.exec_module(module)
            module.config.list_physical_devices()

        run_with_stderr_filtered(import_and_list_devices)

    def __getattr__(self, name):  # The rest of the loader's interface (is_package, resource readers).
        return getattr(self.loader, name)


class TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Hands the first `import tensorflow` the filtered loader, then leaves the import system as it was."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = FilteredLoader(spec.loader)
        return spec


if not verbose(sys.argv, os.environ) and "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.meta_path.insert(0, TensorFlowFinder())
