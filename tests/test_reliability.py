"""reliability.py: hand-broken JSON, a full disk, stop signals, a second process on one run and a TFRecord
damaged during a run each end in one line and lose nothing; devices.resolve_precision under multi_worker.
The end-to-end tests run train.py, evaluate.py and generate.py as a user would."""
import errno
import fcntl
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import build_data
import checkpoints
import data_utils
import devices
import plot_arch
import reliability
import runs
import train
from config import METADATA_FILE, ModelConfig, TrainConfig
from conftest import REPO_ROOT, TINY_MODEL, error_line, fill, tmpfs, write_corpus

BROKEN_JSON = '{"model": {d_model: 16}}'  # A hand edit that forgot the quotes.


# ---------------------------------------------------------------------------------------------
# Hand-broken JSON.


def test_a_json_syntax_error_names_the_file_wherever_it_is_read(tmp_path):
    (tmp_path / "config.json").write_text(BROKEN_JSON)
    (tmp_path / METADATA_FILE).write_text(BROKEN_JSON)
    expected = "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 12"
    for read, argument, named in [(runs.read_record, tmp_path / "config.json", tmp_path / "config.json"),
                                  (data_utils.load_metadata, tmp_path, tmp_path / METADATA_FILE)]:
        with pytest.raises(ValueError) as error:
            read(argument)
        assert str(error.value) == f"{named}: {expected}."
    runs.Run(tmp_path).pi_history_path.write_text('{"step": 1}\n\n{"step": 2\n')
    with pytest.raises(ValueError, match=re.escape(f"{runs.Run(tmp_path).pi_history_path}: line 3 is not valid JSON")):
        runs.Run(tmp_path).read_pi_history()
    runs.Run(tmp_path).pi_history_path.write_text('{"step": 1}\n\n{"step": 2}\n')
    assert runs.Run(tmp_path).read_pi_history() == [{"step": 1}, {"step": 2}]


def test_evaluate_and_generate_name_a_broken_config_json_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text(BROKEN_JSON)
    for script in ("evaluate.py", "generate.py"):
        with pytest.raises(SystemExit) as stopped, checkpoints.load_errors_in_one_line(script, tmp_path):
            checkpoints.load_model(tmp_path)
        assert str(stopped.value) == (f"{script}: error: {tmp_path / 'config.json'}: not valid JSON: Expecting property "
                                      f"name enclosed in double quotes at line 1 column 12.")


def test_a_broken_best_valid_json_stops_the_resumed_run_naming_it(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(1, 30).repeat(2), vocab_size=30,
                                               batch_size=2, seq_len=8)
    best = runs.Run(tmp_path / "run").best_path
    best.parent.mkdir(parents=True)
    best.write_text('{"step": 3, "loss": 1.5,}')
    with pytest.raises(ValueError, match=re.escape(f"{best}: not valid JSON")):
        train.train_and_evaluate(ModelConfig(vocab_size=30, cutoffs=(), **TINY_MODEL), TrainConfig(epochs=1),
                                 data_dir, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# A full disk, on a small tmpfs that the test mounts (as root): conftest's small_disk.


def test_json_and_line_writes_on_a_full_disk_leave_the_old_file_whole(small_disk):
    path = small_disk / "best_valid.json"
    reliability.write_json(path, {"loss": 1.0})
    history = small_disk / "pi_history.jsonl"
    reliability.append_line(history, '{"step": 1}')
    fill(small_disk, leave=4096)
    free_line = r"the disk is full \(\d+ bytes free of 4.0 MiB\); the checkpoints saved so far are intact"
    with pytest.raises(reliability.DiskFullError, match=re.escape(str(path)) + ": " + free_line):
        reliability.write_json(path, {"loss": 0.5, "padding": "x" * 10_000})
    with pytest.raises(reliability.DiskFullError, match=re.escape(str(history))):
        reliability.append_line(history, '{"step": 2, "pi": "' + "x" * 10_000 + '"}')
    assert reliability.read_json(path) == {"loss": 1.0}
    assert reliability.read_json_lines(history) == [{"step": 1}]  # No half line.
    assert sorted(p.name for p in small_disk.iterdir()) == ["best_valid.json", "filler", "pi_history.jsonl"]


def test_the_pi_animation_on_a_full_disk_leaves_the_old_one_whole(small_disk):
    run = runs.Run(small_disk)
    for step in (100, 200):
        run.append_pi(step, 1.0 / step, [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    plot_arch.plot_history(small_disk)
    for step in range(300, 5000, 100):
        run.append_pi(step, 1.0 / step, np.random.default_rng(step).dirichlet(np.ones(3), size=2).tolist())
    fill(small_disk, leave=4096)
    with pytest.raises(reliability.DiskFullError, match=re.escape(str(run.pi_gif_path))):
        plot_arch.plot_history(small_disk)
    with Image.open(run.pi_gif_path) as gif:
        assert gif.n_frames == 2
    assert not list(small_disk.glob(".*.tmp"))


def test_a_checkpoint_save_on_a_full_disk_names_it_and_keeps_the_previous_one(small_disk):
    weights = tf.Variable(tf.range(60_000, dtype=tf.float32))  # 240 KB a checkpoint.
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(weights=weights), small_disk / "checkpoints", max_to_keep=1)
    checkpoints.save_checkpoint(manager, 1)
    fill(small_disk, leave=100_000)
    weights.assign(tf.zeros_like(weights))
    with pytest.raises(reliability.DiskFullError, match=re.escape(f"{small_disk / 'checkpoints' / 'ckpt-2'}: the disk is full")):
        checkpoints.save_checkpoint(manager, 2)
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]  # No ckpt-2_temp left.
    tf.train.Checkpoint(weights=weights).restore(manager.latest_checkpoint).assert_consumed()
    assert weights.numpy()[-1] == 59_999
    (small_disk / "filler").unlink()
    checkpoints.save_checkpoint(manager, 2)  # Once space is freed.
    assert manager.latest_checkpoint.endswith("ckpt-2")


def test_an_export_on_a_full_disk_leaves_the_old_export(small_disk):
    export = small_disk / "export"
    with reliability.written_whole(export) as directory:
        (directory / "config.json").write_text("{}")
    fill(small_disk, leave=8192)
    with pytest.raises(reliability.DiskFullError, match=re.escape(f"{export}: the disk is full")):
        with reliability.written_whole(export) as directory:
            (directory / "config.json").write_text('{"new": 1}')
            (directory / "model.weights.h5").write_bytes(b"\0" * 100_000)
    assert sorted(p.name for p in small_disk.iterdir()) == ["export", "filler"]
    assert [p.name for p in export.iterdir()] == ["config.json"] and (export / "config.json").read_text() == "{}"


def test_tensorboard_events_and_the_log_file_on_a_full_disk(small_disk, capfd):
    writer = tf.summary.create_file_writer(str(small_disk / "train"))
    log = reliability.LogFile(small_disk / "training_log.log")
    fill(small_disk)
    log.emit(logging.makeLogRecord(dict(msg="x" * 10_000)))  # Fails: once, silently, where logging
    log.emit(logging.makeLogRecord(dict(msg="y" * 10_000)))  # would print a traceback a line.
    assert log.failed and "Traceback" not in capfd.readouterr().err
    with pytest.raises(reliability.DiskFullError, match=re.escape(str(small_disk / "train")) + r"/events\.out\.\S+: the "
                       r"disk is full \(0 bytes free"):
        with reliability.naming_a_full_disk(small_disk), writer.as_default(step=1):
            for _ in range(100):
                tf.summary.scalar("loss", 1.0)
            writer.flush()


def test_only_a_full_disk_is_turned_into_a_disk_full_error(tmp_path):
    with pytest.raises(tf.errors.ResourceExhaustedError):  # Out of memory is another kind of exhaustion.
        with reliability.naming_a_full_disk(tmp_path):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [99999999999]")
    with pytest.raises(PermissionError):
        with reliability.naming_a_full_disk(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    with pytest.raises(reliability.DiskFullError, match=re.escape(f"{tmp_path / 'quota'}: the disk is full")):
        with reliability.naming_a_full_disk(tmp_path):
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(tmp_path / "quota"))
    assert reliability.readable_size(512) == "512 bytes" and reliability.readable_size(3 * 2**20) == "3.0 MiB"


# ---------------------------------------------------------------------------------------------
# An unwritable run folder. Tests run as root, whom permission bits do not stop: a read-only mount does.


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs."""
    with tmpfs(tmp_path / "read_only", "ro,size=1m") as disk:
        yield disk


def test_a_folder_under_a_file_is_unwritable_and_a_new_one_is_checked_without_a_trace(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(reliability.RunError, match=re.escape(
            f"--logdir: cannot write in {tmp_path / 'file' / 'logs'} (Not a directory at {tmp_path / 'file'}); pass a "
            f"--logdir this process can write in.")):
        reliability.check_writable(tmp_path / "file" / "logs", "--logdir")
    assert reliability.check_writable(tmp_path / "logs" / "base", "--logdir") == tmp_path / "logs" / "base"
    assert [path.name for path in tmp_path.iterdir()] == ["file"]  # Nothing created, nothing left.


def test_train_py_refuses_a_read_only_logdir_in_one_line_before_any_work(read_only_disk, tmp_path):
    result = subprocess.run([sys.executable, "train.py", f"--logdir={read_only_disk / 'logs'}",
                             f"--data_dir={tmp_path / 'not_read'}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert error_line(result, "train.py") == (
        f"train.py: error: --logdir: cannot write in {read_only_disk / 'logs' / 'base'} (Read-only file system at "
        f"{read_only_disk}); pass a --logdir this process can write in.")  # Before the data (absent) is read.


# ---------------------------------------------------------------------------------------------
# Stop signals.


@pytest.fixture
def signal_handlers():
    """Restores SIGTERM's and SIGINT's handlers after the test, which a requested stop leaves ignored."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_stop_signals_are_recorded_never_raised_and_then_ignored(signal_handlers):
    with reliability.StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # A second one, as during the save: recorded, nothing raised.
        time.sleep(0.01)
        assert stop.requested == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # On its way out.
    interrupted = reliability.Interrupted(stop.requested, 12)
    assert interrupted.exit_status == 143 and reliability.Interrupted(signal.SIGINT, 12).exit_status == 130
    assert str(interrupted) == ("Interrupted by SIGTERM: stopped at step 12, whose checkpoint is saved; rerun the same "
                                "command to resume.")


def test_stop_signals_without_a_stop_or_disabled_leave_the_handlers_as_they_were(signal_handlers):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # As in the foreground; a background job starts ignoring it.
    with reliability.StopSignals():
        assert signal.getsignal(signal.SIGINT) != signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    with reliability.StopSignals(enabled=False) as stop:
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert stop.requested is None


def test_a_stop_raises_at_the_next_check_or_at_once_in_an_abandoning_block_leaving_no_half_export(tmp_path,
                                                                                                   signal_handlers):
    export = tmp_path / "export"
    with reliability.written_whole(export) as directory:
        (directory / "config.json").write_text("{}")
    reached = []
    with reliability.StopSignals() as stop:
        stop.check(6)  # No stop requested: nothing raised.
        with pytest.raises(reliability.Interrupted, match="Interrupted by SIGTERM: stopped at step 7, whose checkpoint"):
            with stop.abandoning(7), reliability.written_whole(export) as directory:
                (directory / "config.json").write_text('{"new": 1}')
                os.kill(os.getpid(), signal.SIGTERM)
                reached.append("after the signal")
        assert not reached  # Broken off at once, within the block.
        os.kill(os.getpid(), signal.SIGINT)  # Outside the block: recorded only.
        with pytest.raises(reliability.Interrupted, match="by SIGTERM: stopped at step 8"):
            stop.check(8)
        with pytest.raises(reliability.Interrupted, match="by SIGTERM: stopped at step 9"):
            with stop.abandoning(9):  # A stop requested before: raised on entry.
                reached.append("in the block")
    assert not reached and stop.at_step_boundary() == signal.SIGTERM
    assert [path.name for path in tmp_path.iterdir()] == ["export"]  # No staging folder left.
    assert [path.name for path in export.iterdir()] == ["config.json"] and (export / "config.json").read_text() == "{}"


# ---------------------------------------------------------------------------------------------
# One training process per run directory.


def test_a_second_process_on_a_run_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "run"
    with reliability.RunLock(run_dir):
        assert (run_dir / reliability.LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        with pytest.raises(reliability.RunLockedError, match=re.escape(
                f"{run_dir} is in use by process {os.getpid()} on {socket.gethostname()}, which is training in it")):
            with reliability.RunLock(run_dir):  # Another open file: flock refuses it as it would another process.
                pass
    assert not run_dir.exists()  # Nothing was written in it: it goes with its lock file.
    run_dir.mkdir()
    with reliability.RunLock(run_dir):
        (run_dir / "config.json").write_text("{}")
    assert [path.name for path in run_dir.iterdir()] == ["config.json"]


def test_a_killed_runs_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / reliability.LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")  # As kill -9 leaves it.
    with reliability.RunLock(tmp_path):
        assert (tmp_path / reliability.LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_without_flock_a_live_pid_of_this_host_keeps_the_run(tmp_path, monkeypatch):
    def no_flock(file, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    alive, dead = subprocess.Popen(["sleep", "30"]), subprocess.Popen(["true"])
    dead.wait()
    try:
        (tmp_path / reliability.LOCK_FILE).write_text(f"{alive.pid} {socket.gethostname()}\n")
        with pytest.raises(reliability.RunLockedError, match=f"in use by process {alive.pid} on"):
            with reliability.RunLock(tmp_path):
                pass
    finally:
        alive.kill()
        alive.wait()
    (tmp_path / reliability.LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with reliability.RunLock(tmp_path):
        assert (tmp_path / reliability.LOCK_FILE).read_text().split()[0] == str(os.getpid())


# ---------------------------------------------------------------------------------------------
# A TFRecord damaged during a run.


def three_shard_dataset(directory):
    """12 batches of 2 x 8 tokens in three TFRecord files of 4 batches each."""
    stream = np.arange(1, 195) % 29 + 1  # Two rows of 97 tokens: 12 windows of 8 + 1.
    files = data_utils.write_tfrecords(stream, directory, "train", batch_size=2, seq_len=8, num_shards=3)["files"]
    metadata = dict(vocab_size=30, batch_size=2, seq_len=8, splits=dict(train=dict(files=files, batches=12, words=0)))
    (directory / METADATA_FILE).write_text(json.dumps(metadata))
    return [directory / name for name in files]


def test_a_damaged_tfrecord_names_the_file_and_the_step(tmp_path):
    files = three_shard_dataset(tmp_path)
    batch_files = data_utils.batch_files(tmp_path, "train")
    assert batch_files == [files[0]] * 4 + [files[1]] * 4 + [files[2]] * 4
    batches = lambda skip: data_utils.make_dataset(tmp_path, "train").skip(skip)
    assert len(list(data_utils.batches_naming_damage(batches(3), batch_files, 3, 20))) == 9
    record_size = files[1].stat().st_size // 4  # One record a batch, all of one size.
    files[1].write_bytes(files[1].read_bytes()[: record_size * 5 // 2])  # Mid-record, in its third batch.
    read = []
    with pytest.raises(data_utils.DamagedRecordError) as error:
        for batch in data_utils.batches_naming_damage(batches(3), batch_files, 3, 20):  # Steps 21, 22, ...
            read.append(batch)
    assert len(read) == 3  # Batches 4, 5 and 6: the damage is met reading batch 7, at step 24.
    assert str(error.value) == (f"{files[1]}: damaged at training step 24 (batch 7 of 12 does not read: truncated record "
                                f"at {2 * record_size}' failed with Read less bytes than requested); rebuild the data with "
                                f"./create_tfrecords.sh --overwrite. The checkpoints are intact.")


def test_a_tfrecord_cut_at_a_record_boundary_names_the_file_too(tmp_path):
    files = three_shard_dataset(tmp_path)
    files[2].write_bytes(files[2].read_bytes()[: files[2].stat().st_size // 2])  # Two whole records of four.
    with pytest.raises(data_utils.DamagedRecordError, match=re.escape(
            f"{files[2]}: damaged at training step 11 (it ends after batch 10 of 12)")):
        list(data_utils.batches_naming_damage(data_utils.make_dataset(tmp_path, "train"), data_utils.batch_files(
            tmp_path, "train"), 0, 0))


# ---------------------------------------------------------------------------------------------
# --precision=auto under --strategy=multi_worker.


def test_bfloat16_is_refused_for_multi_worker_on_cpus_only(monkeypatch):
    monkeypatch.setattr(devices, "accelerated", lambda: False)
    with pytest.raises(ValueError, match="--strategy=multi_worker with bfloat16 on CPUs.*pass --precision=float32"):
        devices.resolve_precision("bfloat16", "multi_worker")
    assert devices.resolve_precision("bfloat16", "default") == ("bfloat16", "as given")
    monkeypatch.setattr(devices, "accelerated", lambda: True)
    assert devices.resolve_precision("bfloat16", "multi_worker") == ("bfloat16", "as given")


@pytest.mark.parametrize("native, accelerated, strategy, expected", [
    ("CPU with amx_bf16", False, "multi_worker", "float32"),
    ("CPU with amx_bf16", False, "default", "bfloat16"),
    ("GPU of compute capability 8.0", True, "multi_worker", "bfloat16"),
    (None, False, "multi_worker", "float32")])
def test_auto_precision_takes_float32_for_multi_worker_on_cpus(monkeypatch, native, accelerated, strategy, expected):
    monkeypatch.setattr(devices, "native_bfloat16", lambda: native)
    monkeypatch.setattr(devices, "accelerated", lambda: accelerated)
    precision, reason = devices.resolve_precision("auto", strategy)
    assert precision == expected
    if native == "CPU with amx_bf16" and strategy == "multi_worker":
        assert reason == ("auto: CPU with amx_bf16, but --strategy=multi_worker on CPUs, whose collectives take no "
                          "bfloat16")
    assert devices.resolve_precision("float32", strategy) == ("float32", "as given")


# ---------------------------------------------------------------------------------------------
# End to end: train.py, evaluate.py and generate.py as a user runs them.

TINY_FLAGS = [f"--{name}={value}" for name, value in TINY_MODEL.items()] + ["--cutoffs=10,20"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 40-piece dataset of 30 training batches (with a tokenizer, for generate.py), the train.py command of a
    one-epoch run on it but --logdir, and that run's results uninterrupted."""
    root = tmp_path_factory.mktemp("tiny_run")
    corpus = write_corpus(root / "corpus", lines_per_split=(60, 15, 15))
    build_data.build_dataset(root / "data", data_utils.find_split_files(corpus), vocab_size=40, batch_size=4, seq_len=8)
    command = [sys.executable, "train.py", f"--data_dir={root / 'data'}", "--epochs=1", "--warmup_steps=5",
               "--log_every=5", *TINY_FLAGS]
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}  # As a user's console.
    straight = subprocess.run(command + [f"--logdir={root / 'straight'}"], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # Not --verbose: no TensorFlow INFO line, such as each checkpoint save's functional_saver.py line, on the console.
    assert not re.search(r"^I\d{4} |functional_saver", straight.stdout + straight.stderr, re.MULTILINE)
    return command, reliability.read_json(root / "straight" / "base" / "results.json")


def run_script(*args):
    result = subprocess.run([str(arg) for arg in args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def finished(process, timeout=300):
    output, errors = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, output, errors)


def printed_results(output):
    """The results dict train.py prints last, as indented JSON after its log lines."""
    return json.loads(output[output.rfind("\n{\n") + 1:])


def wait_for(condition, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_the_same_command_ends_as_an_uninterrupted_run(tiny_run, tmp_path):
    """While it trains: a second train.py is refused naming it, evaluate.py and generate.py read its last
    complete checkpoint. Then SIGTERM, and SIGINT on its heels: it saves, says so in one line and exits 143, or
    130 where both came before Python ran a handler (it runs them in signal order)."""
    command, straight = tiny_run
    command = command + [f"--logdir={tmp_path / 'logs'}", "--checkpoint_every=5"]
    run_dir = tmp_path / "logs" / "base"
    state = runs.Run(run_dir).checkpoint_dir / "checkpoint"
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        first = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=err)
    try:
        wait_for(lambda: state.is_file() and "ckpt-5" in state.read_text())
        first.send_signal(signal.SIGSTOP)  # Mid-run, holding its lock: still training, as far as others can tell.
        others = [subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for args in (command, [sys.executable, "evaluate.py", run_dir],
                               [sys.executable, "generate.py", run_dir, "--prompt=the", "--length=5"])]
        second, evaluation, generation = [finished(process) for process in others]
        first.send_signal(signal.SIGCONT)
        first.send_signal(signal.SIGTERM)
        time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert f"{run_dir} is in use by process {first.pid} on {socket.gethostname()}" in error_line(second, "train.py")
    assert evaluation.returncode == 0 and json.loads(evaluation.stdout.splitlines()[-1])["perplexity"] > 1
    assert generation.returncode == 0 and generation.stdout.startswith("the")

    output, errors = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    stopped = re.findall(r"Interrupted by (SIGTERM|SIGINT): stopped at step (\d+), whose checkpoint is saved; rerun the "
                         r"same command to resume\.$", output, re.MULTILINE)
    assert len(stopped) == 1 and 5 <= int(stopped[0][1]) < 30, output[-3000:]  # Mid-epoch, once it was woken.
    (name, step), = stopped
    assert first.returncode == 128 + signal.Signals[name] and "Traceback" not in errors, errors[-3000:]
    assert tf.train.latest_checkpoint(runs.Run(run_dir).checkpoint_dir).endswith(f"ckpt-{step}")
    assert not (run_dir / reliability.LOCK_FILE).exists()
    resumed = printed_results(run_script(*command))
    assert f"ckpt-{step} at step {step}." in (run_dir / "training_log.log").read_text()  # Resumed from there.
    assert resumed == straight


# train.py, with a SIGTERM sent to itself while the Nth evaluation pass reads its second batch: argv[1] is N.
SIGNALLED_IN_PASS = """
import os, runpy, signal, sys
import evaluate
signalled_pass, sys.argv = int(sys.argv[1]), ["train.py", *sys.argv[2:]]
passes, evaluate_modes = [0], evaluate.evaluate_modes

def signalled(batches):
    for number, batch in enumerate(batches):
        if number == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        yield batch

def evaluate_modes_signalled(model, dataset, *args):
    passes[0] += 1
    return evaluate_modes(model, signalled(dataset) if passes[0] == signalled_pass else dataset, *args)

evaluate.evaluate_modes = evaluate_modes_signalled
runpy.run_path("train.py", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("phase, signalled_pass", [("validation", 1), ("test", 2)])
def test_sigterm_in_the_last_validation_or_the_test_stops_within_a_batch_and_the_rerun_ends_as_uninterrupted(
        tiny_run, tmp_path, phase, signalled_pass):
    """The one epoch's 30 steps are taken, then SIGTERM mid-pass. In the validation, the run saves its 30 steps
    (the epoch not yet ended, so the rerun validates it again); in the test it needs no save (the epoch's is
    there). Either way nothing of the pass is logged, and the same command then ends as an uninterrupted run."""
    command, straight = tiny_run
    command = command + [f"--logdir={tmp_path / 'logs'}"]
    run = runs.Run(tmp_path / "logs" / "base")
    stopped = subprocess.run([sys.executable, "-c", SIGNALLED_IN_PASS, str(signalled_pass), *command[2:]], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert ("Interrupted by SIGTERM: stopped at step 30, whose checkpoint is saved; rerun the same command to resume."
            in stopped.stdout)
    assert tf.train.latest_checkpoint(run.checkpoint_dir).endswith("ckpt-30")
    log = run.log_path.read_text()
    assert log.count("step 30 validation:") == (phase == "test") and not re.search(r"\btest: \{", log)
    assert not run.results_path.exists() and not run.export_dir.exists()
    resumed = printed_results(run_script(*command))
    assert resumed == straight and reliability.read_json(run.results_path) == straight
    log = run.log_path.read_text()
    assert "Resumed from" in log and "ckpt-30 at step 30." in log and len(re.findall(r"\btest: \{", log)) == 1


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_keeps_the_checkpoints_and_the_same_command_resumes(tiny_run, small_disk):
    command, straight = tiny_run
    command = command + [f"--logdir={small_disk / 'logs'}", "--checkpoint_every=5"]
    checkpoint_dir = runs.Run(small_disk / "logs" / "base").checkpoint_dir
    run_script(*command, "--stop_after_steps=10")
    saved = {path: path.read_bytes() for path in checkpoint_dir.rglob("*") if path.is_file()}
    filler = fill(small_disk, leave=(checkpoint_dir / "ckpt-10.data-00000-of-00001").stat().st_size // 2)
    failed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert re.fullmatch(rf"train.py: error: {re.escape(str(small_disk / 'logs' / 'base'))}/\S+: the disk is full "
                        rf"\(\d+(\.\d)? \w+ free of 4.0 MiB\); the checkpoints saved so far are intact. Free some space "
                        rf"and rerun the same command to resume.", error_line(failed, "train.py"))
    assert {path: path.read_bytes() for path in checkpoint_dir.rglob("*") if path.is_file()} == saved
    filler.unlink()
    resumed = run_script(*command)
    assert "Resumed from" in resumed and printed_results(resumed) == straight
