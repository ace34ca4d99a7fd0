"""The faults a run meets on a shared or preemptible machine, each ending in one line and losing nothing.

    JSON files         read_json, read_json_lines: a syntax error names the file (and line).
    Writes             write_whole, write_json, append_line, written_whole (a folder): whole or not at all.
    A full disk        DiskFullError names the path and the space left; save_checkpoint keeps the previous
                       checkpoints as they were; naming_a_full_disk wraps any other write.
    An unwritable run  check_writable: a read-only or unwritable folder refused before any work.
    A stop signal      StopSignals turns SIGTERM and SIGINT into a request to stop at the next step
                       boundary (after a checkpoint) or evaluation batch, or at once in an abandoning
                       block; Interrupted carries the exit status, 128 + the signal. Under multi_worker,
                       ClusterStopSignals has every worker stop at one step (TensorFlow's
                       PreemptionCheckpointHandler).
    A second process   RunLock: one training process per run directory (an flock, which dies with its
                       process, so a killed run's lock is taken over).

A TFRecord damaged during a run is data_utils.batches_naming_damage's. This module imports no other
module of the project, and no TensorFlow (whose errors it recognises once TensorFlow is loaded; only
ClusterStopSignals loads it), so that every module can use it, runs.py and plot_arch.py among them.
"""
import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import sys
import tempfile


class RunError(RuntimeError):
    """A fault that ends a run in one line, naming the file or process at fault and what to do."""


# ---------------------------------------------------------------------------------------------
# JSON files, read with their name in the error and written whole.


def read_json(path):
    """The value in a JSON file; a syntax error (a hand edit gone wrong) is a ValueError naming the file."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a JSON text file ({error.reason} at byte {error.start}).") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}.") from None


def read_json_lines(path):
    """The values of a JSON-lines file (one value a line, blank lines skipped); an error names the file and line."""
    path = pathlib.Path(path)
    values = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not valid JSON: {error.msg} at column {error.colno}.") from None
    return values


def write_whole(path, content):
    """Writes `content` (str or bytes) into `path` whole or not at all: into a hidden file beside it, then renamed over it.

    Readers (evaluate.py, another worker) never see half of it, and a full disk leaves the old file.
    """
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with naming_a_full_disk(path):
            if isinstance(content, bytes):
                temporary.write_bytes(content)
            else:
                temporary.write_text(content)
            temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path, value, indent=None):
    write_whole(path, json.dumps(value, indent=indent))


def append_line(path, line):
    """Appends one line to a text file whole or not at all: after a failed write the file is cut back to
    its old length, so a full disk leaves no half line for the next reader to choke on."""
    path = pathlib.Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with naming_a_full_disk(path), open(path, "a") as file:
            file.write(line + "\n")
    except BaseException:
        if path.exists():
            os.truncate(path, size)
        raise


@contextlib.contextmanager
def written_whole(directory):
    """Yields a staging folder that replaces `directory` once the block completes, so that `directory` is
    always a complete one: after a failure (a full disk named in a DiskFullError) the staging folder is
    removed and `directory` stays as it was. One process at a time (the run lock) writes it."""
    directory = pathlib.Path(directory)
    staging = directory.with_name(f".{directory.name}-partial")
    shutil.rmtree(staging, ignore_errors=True)  # What a killed process left.
    try:
        with naming_a_full_disk(directory):
            staging.mkdir(parents=True)
            yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)


# ---------------------------------------------------------------------------------------------
# An unwritable run folder.


def check_writable(folder, flag):
    """Returns `folder`, or raises RunError naming it (set by `flag`) where this process cannot write in it or
    create it: a read-only filesystem, a folder it may not write, a path through a file.

    Tried by writing an unnamed file in it or its nearest existing folder, which leaves nothing behind:
    the permission bits alone cannot tell, as root ignores them.
    """
    folder = pathlib.Path(folder)
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        where = "" if existing == folder.absolute() else f" at {existing}"
        raise RunError(f"{flag}: cannot write in {folder} ({error.strerror}{where}); pass a {flag} this process "
                       f"can write in.") from None
    return folder


# ---------------------------------------------------------------------------------------------
# A full disk.

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# TensorFlow reports a full disk as a ResourceExhaustedError whose message names the file: "PATH; No space left on device".
TENSORFLOW_DISK_FULL = re.compile(r"(\S+); (?:No space left on device|Disk quota exceeded)")


class DiskFullError(RunError):
    """A full disk at `path`, with the space left; `then` says what is left of the work and what to do."""

    def __init__(self, path, then="the checkpoints saved so far are intact. Free some space and rerun the same "
                                  "command to resume."):
        free, total = free_space(path)
        super().__init__(f"{path}: the disk is full ({readable_size(free)} free of {readable_size(total)}); {then}")


def readable_size(size):
    """2.0 MiB, 512 bytes."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def free_space(path):
    """(bytes free to this user, bytes in all) of the filesystem that holds `path` (or its nearest existing folder)."""
    path = pathlib.Path(path).absolute()
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def disk_full_path(error):
    """The file that a full disk (or quota) refused, when `error` says it was one: TensorFlow's named file,
    an OSError's file, or "" where the error names none; None for any other error."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return error.filename or ""
    tf = sys.modules.get("tensorflow")  # A TensorFlow error comes only once TensorFlow is loaded.
    if tf is not None and isinstance(error, tf.errors.ResourceExhaustedError):  # Also out of memory, named no file.
        match = TENSORFLOW_DISK_FULL.search(error.message)
        return match[1] if match else None
    return None


@contextlib.contextmanager
def naming_a_full_disk(path):
    """Turns a write refused for lack of space (by Python, h5py or TensorFlow) into one DiskFullError naming the
    file the error names, else `path`, and the space left."""
    try:
        yield
    except Exception as error:  # An OSError, or TensorFlow's ResourceExhaustedError.
        refused = disk_full_path(error)
        if refused is None:
            raise
        raise DiskFullError(refused or path) from None


class LogFile(logging.FileHandler):
    """A log file that stops writing after its first failed write (a full disk), where logging would print a
    traceback for every line; the console handler beside it keeps every line."""

    failed = False

    def emit(self, record):
        if not self.failed:
            super().emit(record)

    def handleError(self, record):
        self.failed = True


# ---------------------------------------------------------------------------------------------
# Stopping on a signal.


class Interrupted(Exception):
    """A run stopped by a signal, after a checkpoint at `step`; the exit status is a shell's for that signal."""

    def __init__(self, signum, step):
        self.exit_status = 128 + signum  # 143 for SIGTERM, 130 for SIGINT, as a shell reports a process they stopped.
        super().__init__(f"Interrupted by {signal.Signals(signum).name}: stopped at step {step}, whose checkpoint is "
                         f"saved; rerun the same command to resume.")


class StopSignals:
    """While entered (`with`), SIGTERM and SIGINT only set `requested` (the first one's number). The run
    reads it at each step boundary (at_step_boundary), where it saves a checkpoint and raises Interrupted,
    and between evaluation batches (check); in an `abandoning` block a signal raises Interrupted at once.

    Elsewhere further signals are recorded like the first, never raised, so nothing can break off a save:
    a run that must stop at once still can by SIGKILL, and resumes from its last checkpoint. Once a stop was
    requested the block leaves the signals ignored, as the process is on its way out; otherwise it restores
    them. Not entered, or with enabled=False, the signals keep their usual effect; requested stays None.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, enabled=True):
        self.enabled = enabled
        self.requested = None
        self._previous = {}
        self._abandon_at = None  # The step an Interrupted raised in an abandoning block names.

    def __enter__(self):
        if self.enabled:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if self.requested else handler)
        self._previous.clear()

    def _record(self, signum, frame):
        self.requested = self.requested or signum
        if self._abandon_at is not None:  # Only once: a second signal must not break off the cleanup.
            step, self._abandon_at = self._abandon_at, None
            raise Interrupted(self.requested, step)

    def at_step_boundary(self):
        """The signal to stop on after this training step (all workers alike), or None; called once a step."""
        return self.requested

    def check(self, step):
        """Raises Interrupted, naming `step` (whose checkpoint is saved), once a stop was requested."""
        if self.requested:
            raise Interrupted(self.requested, step)

    @contextlib.contextmanager
    def abandoning(self, step):
        """A block whose work a stop abandons at once, for the rerun to do again: a signal there raises
        Interrupted (naming `step`, whose checkpoint is saved), as does one already requested. Its writes
        must be whole or nothing (write_whole, written_whole), like the export's."""
        self.check(step)
        self._abandon_at = step
        try:
            yield
        finally:
            self._abandon_at = None


class ClusterStopSignals(StopSignals):
    """StopSignals under --strategy=multi_worker, whose workers must stop at one step, as their checkpoint
    saves are collective. TensorFlow's PreemptionCheckpointHandler watches SIGTERM on every worker and has
    them agree, through the cluster's coordination service, on the step after which all stop; there
    at_step_boundary returns SIGTERM on each, and the run saves its checkpoint as at any stop.

    The handler counts the steps from 0 in every process, in a checkpoint of its own that it never saves
    (save_fn), so that resumed workers agree whatever the run's checkpoint holds. No worker stops alone
    in an evaluation: a SIGTERM there takes effect at the next step boundary, so one after the last step
    is let pass. SIGINT keeps its usual effect. On a Google Cloud VM TensorFlow watches the VM's
    maintenance events instead, and on a CPU one nothing (as its warning says).
    """

    def __init__(self, strategy):
        import tensorflow as tf

        super().__init__(enabled=False)
        agreed = tf.distribute.experimental.TerminationConfig(exit_fn=self._stop_agreed, save_fn=lambda: None)
        with tempfile.TemporaryDirectory() as empty:  # Where its checkpoint would be restored from: nothing.
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                strategy.cluster_resolver, tf.train.CheckpointManager(tf.train.Checkpoint(), empty, max_to_keep=1),
                termination_config=agreed)
        # Its agreed step reads its own deprecated total_run_calls, which would warn at each stop.
        tf.get_logger().addFilter(lambda record: "total_run_calls" not in record.getMessage())

    def _stop_agreed(self):
        self.requested = signal.SIGTERM

    def at_step_boundary(self):
        self._handler.save_checkpoint_if_preempted()
        return self.requested


# ---------------------------------------------------------------------------------------------
# One training process per run directory.

LOCK_FILE = "train.lock"


class RunLockedError(RunError):
    pass


def process_alive(pid):
    """Whether process `pid` exists; a reused id only delays the cleanup of its folders."""
    try:
        os.kill(pid, 0)  # Signal 0 only asks whether the process exists.
    except ProcessLookupError:
        return False
    except PermissionError:  # It does, as another user's.
        pass
    return True


class RunLock:
    """Held (`with`) by the one process that trains in `run_dir`; another one is refused by RunLockedError,
    naming the holder's pid and host.

    The lock is an flock on run_dir/train.lock, which the kernel releases when its process dies however it
    dies: the file a killed run leaves is taken over. The file holds "pid host" for
    the message, and is removed on release. Where the filesystem takes no flock (some network ones) the pid
    alone decides: a live process of this host keeps the run.
    """

    def __init__(self, run_dir):
        self.run_dir = pathlib.Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._file = None
        self._made_run_dir = False

    def __enter__(self):
        self._made_run_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            file = open(self.path, "a+")  # Not truncated: the holder's pid stays readable.
            file.seek(0)
            holder = file.read().split()
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.close()
                self._refuse(holder)
            except OSError:  # No flock on this filesystem.
                if holder and holder[1:] == [socket.gethostname()] and int(holder[0]) != os.getpid() \
                        and process_alive(int(holder[0])):
                    file.close()
                    self._refuse(holder)
            # The holder removes the file on release: make sure the locked file is still the one at the path.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino:
                break
            file.close()
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        self._file = file
        return self

    def _refuse(self, holder):
        who = f"process {holder[0]} on {' '.join(holder[1:])}" if holder else "another process"
        raise RunLockedError(f"{self.run_dir} is in use by {who}, which is training in it; wait for it to end or "
                             f"stop it, or train under another --model_name.")

    def __exit__(self, *exc_info):
        self.path.unlink(missing_ok=True)  # Before unlocking, so that no one locks a file about to go.
        self._file.close()
        if self._made_run_dir:
            with contextlib.suppress(OSError):  # Only if it is empty: a run refused before it wrote anything.
                self.run_dir.rmdir()
