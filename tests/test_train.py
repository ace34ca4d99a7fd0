"""train.py: learning, exact resume (paused, killed, damaged), the NaN guard, the schedules, the whole loop from
the command line and the notebook, XLA, mixed precision, batches in chunks and distribution strategies."""
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import data_utils
import devices
import checkpoints
import runs
import train
from conftest import REPO_ROOT, TINY_MODEL, error_line, write_corpus
from config import ModelConfig, RunOptions, TrainConfig
from costs import tail_shares

TINY_FLAGS = [f"--{name}={value}" for name, value in TINY_MODEL.items()] + ["--cutoffs=10,20"]  # cutoffs last.


def test_loss_falls_near_zero_on_a_repeating_pattern(tmp_path):
    pattern = [2, 7, 3, 9, 5, 4, 8]  # Period 7: each token is determined by the previous one.
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", pattern * 300, vocab_size=12, batch_size=4, seq_len=8)
    model_config = ModelConfig(vocab_size=12, cutoffs=(), **{**TINY_MODEL, "dropout_rate": 0.0})
    config = TrainConfig(epochs=4, max_lr=3e-3, warmup_steps=10, clip_norm=1.0)
    results = train.train_and_evaluate(model_config, config, data_dir, tmp_path / "run",
                                       RunOptions(log_every=20, checkpoint_every=1000))
    assert results["valid_loss"] < 0.05, results
    pi = [read_scalars(tmp_path / "run" / "train", f"pi/block_0/{name}") for name in ("attention", "dense", "identity")]
    assert pi[0] and all(abs(sum(p[step] for p in pi) - 1) < 1e-5 for step in pi[0])  # Logged per candidate, by name.


def read_scalars(event_dir, tag):
    """{step: value} of a TensorBoard scalar across every event file in the directory."""
    values = {}
    for path in sorted(event_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


# The search's options each add state: the held-out stream and its memory, a freeze, the cost term, single paths.
SEARCH_OPTIONS = dict(model=dict(single_path=True), train=dict(arch_holdout=0.2, arch_freeze_steps=3, cost_weight=0.5))


@pytest.mark.slow
@pytest.mark.parametrize("search, steps_per_epoch", [(dict(model={}, train={}), 37), (SEARCH_OPTIONS, 30),
                                                     (dict(model={}, train={}, batch_chunk=2), 37)],
                         ids=["supernet", "search_options", "batch_chunk"])
def test_paused_and_resumed_run_matches_uninterrupted_run(tmp_path, search, steps_per_epoch):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(0).integers(1, 30, 1200),
                                    vocab_size=30, batch_size=4, seq_len=8)  # 37 batches per epoch.
    model_config = ModelConfig(vocab_size=30, cutoffs=(8, 16), **TINY_MODEL, **search["model"])
    config = TrainConfig(epochs=2, max_lr=1e-3, warmup_steps=5, **search["train"])
    options = RunOptions(log_every=1, checkpoint_every=1000, batch_chunk=search.get("batch_chunk", 1))
    straight = train.train_and_evaluate(model_config, config, data_dir, tmp_path / "straight", options)
    paused = dict(options.__dict__, stop_after_steps=23)  # Mid-epoch: memory and data position must survive.
    assert train.train_and_evaluate(model_config, config, data_dir, tmp_path / "resumed", RunOptions(**paused)) == {}
    with open(tmp_path / "resumed" / "pi_history.jsonl", "a") as f:  # As if killed at step 25, after checkpoint 23.
        f.write(json.dumps(dict(step=24, tau=0.5, pi=[[1, 0, 0]] * 3)) + "\n")
    resumed = train.train_and_evaluate(model_config, config, data_dir, tmp_path / "resumed", options)
    pi_histories = [[json.loads(line) for line in runs.Run(tmp_path / run).pi_history_path.read_text().splitlines()]
                    for run in ("straight", "resumed")]
    assert [r["step"] for r in pi_histories[1]] == [r["step"] for r in pi_histories[0]] == list(range(1, 2 * steps_per_epoch + 1))
    np.testing.assert_allclose([r["pi"] for r in pi_histories[1]], [r["pi"] for r in pi_histories[0]], atol=1e-6)
    for tag in ("loss", "tau", "learning_rate"):
        expected = read_scalars(tmp_path / "straight" / "train", tag)
        actual = read_scalars(tmp_path / "resumed" / "train", tag)
        assert sorted(actual) == sorted(expected) == list(range(1, 2 * steps_per_epoch + 1))
        np.testing.assert_allclose([actual[s] for s in expected], list(expected.values()), rtol=1e-6, err_msg=tag)
    assert resumed["valid_perplexity"] == pytest.approx(straight["valid_perplexity"], rel=1e-6)
    assert len({json.dumps(r["pi"]) for r in pi_histories[0]}) > 1  # The logits moved.


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(600) % 20, vocab_size=20, batch_size=2, seq_len=8)
    trainer = train.Trainer(ModelConfig(vocab_size=20, cutoffs=(), **TINY_MODEL), TrainConfig(epochs=1), 37,
                            batch_size=2, seq_len=8)
    manager = tf.train.CheckpointManager(trainer.checkpoint, tmp_path / "checkpoints", max_to_keep=3)
    batches = iter(data_utils.make_dataset(data_dir, "train"))
    trainer.train_step(*next(batches))
    trainer.check_finite()
    good = manager.save(checkpoint_number=1)
    embedding = trainer.model.weight_variables[0]
    embedding.assign(tf.fill(embedding.shape, float("inf")))  # Injected overflow.
    trainer.train_step(*next(batches))
    with pytest.raises(train.NonFiniteLossError, match="at step 2"):
        trainer.check_finite()
    assert manager.latest_checkpoint == good


@pytest.mark.slow
def test_bad_flags_fail_before_training_with_one_line(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(600) % 20, vocab_size=20, batch_size=2, seq_len=8)
    cases = [(["--num_heads=3"], "num_heads"), (["--cutoffs=10,25"], "25"),
             ([f"--data_dir={tmp_path / 'missing'}"], "create_tfrecords"), (["--epochs=0"], "--epochs=0"),
             (["--tau_end=0"], "--tau_end=0"), (["--log_every=0"], "--log_every=0"),
             (["--checkpoint_every=0"], "--checkpoint_every=0"), (["--strategy=tpu"], "--strategy=tpu: no TPU found"),
             (["--batch_chunk=0"], "--batch_chunk=0: must be at least 1"),
             (["--batch_chunk=3"], "--batch_chunk=3 does not divide the 2 rows that each of 1 replica(s) takes")]
    for extra, fragment in cases:
        result = subprocess.run([sys.executable, "train.py", f"--data_dir={data_dir}", f"--logdir={tmp_path / 'logs'}",
                                 "--d_model=16", "--cutoffs=", *extra], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=120)
        assert fragment in error_line(result, "train.py")
        assert not list((tmp_path / "logs").glob("*/checkpoints")) and not list((tmp_path / "logs").glob("*/config.json"))


def test_a_diverging_finite_loss_stops_like_nan():
    trainer = train.Trainer(ModelConfig(vocab_size=20, cutoffs=(), **TINY_MODEL), TrainConfig(epochs=1), 5,
                            batch_size=2, seq_len=8)
    tokens = tf.constant(np.arange(16).reshape(2, 8) % 19 + 1, tf.int32)
    trainer.train_step(tokens, tokens)
    trainer.check_finite()  # About ln(20) = 3.0: a fresh model guesses uniformly.
    trainer.model.output_layer.head_bias.assign(tf.one_hot(0, 20) * 1e4)  # Every label but padding is now 1e4 nats away.
    trainer.train_step(tokens, tokens)
    with pytest.raises(train.NonFiniteLossError, match="diverged above 5.99 .* at step 2"):
        trainer.check_finite()


def run_script(*args):
    result = subprocess.run([str(arg) for arg in args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_shell_scripts_run_the_whole_loop(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    run_script("./create_tfrecords.sh", f"--input_text={corpus}", f"--output_dir={data_dir}", "--vocab_size=40",
               "--batch_size=4", "--seq_len=8")
    run_script("./base_model.sh", f"--data_dir={data_dir}", f"--logdir={log_dir}", "--epochs=2", *TINY_FLAGS,
               "--warmup_steps=5", "--log_every=5", "--checkpoint_every=20")
    run_dir = log_dir / "base"
    results = json.loads(runs.Run(run_dir).results_path.read_text())
    for key in ("valid_perplexity", "valid_word_perplexity", "valid_argmax_perplexity", "test_perplexity",
                "test_word_perplexity"):
        assert math.isfinite(results[key]) and results[key] > 1, key
    assert len(results["derived_architecture"]) == 3
    log = runs.Run(run_dir).log_path.read_text()
    assert "Parameters:" in log and "validation:" in log and "test:" in log and "tokens_per_second" in log
    assert list((run_dir / "train").glob("events.out.tfevents.*")) and list((run_dir / "valid").glob("events.*"))
    assert tf.train.latest_checkpoint(runs.Run(run_dir).checkpoint_dir) and tf.train.latest_checkpoint(runs.Run(run_dir).best_dir)
    history = runs.Run(run_dir).pi_history_path.read_text().splitlines()
    with Image.open(run_dir / "pi.gif") as gif:
        assert gif.n_frames == len(history) > 1
    assert (run_dir / "pi.png").is_file()

    # evaluate.py reproduces the loop's final validation perplexity, from the checkpoint and from the export.
    for source in (run_dir, run_dir / "export"):
        scored = json.loads(run_script(sys.executable, "evaluate.py", source, "--split=valid").splitlines()[-1])
        assert scored["perplexity"] == pytest.approx(results["valid_perplexity"], rel=1e-5)
    longer = json.loads(run_script(sys.executable, "evaluate.py", run_dir, "--split=test", "--mem_len=12").splitlines()[-1])
    assert longer["mem_len"] == 12 and math.isfinite(longer["perplexity"])
    text = run_script(sys.executable, "generate.py", run_dir / "export", "--prompt=the", "--length=10", "--top_k=5")
    assert text.strip().startswith("the")


@pytest.mark.slow
def test_notebook_runs_headless_with_a_tiny_configuration(tmp_path):
    import nbclient
    import nbformat

    corpus = write_corpus(tmp_path / "corpus")
    notebook = nbformat.read(REPO_ROOT / "colab.ipynb", as_version=4)
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    parameters.source += (
        f"\nDATA_DIR = '{tmp_path / 'data'}'\nLOG_DIR = '{tmp_path / 'logs'}'"
        f"\nDATA_FLAGS = '--input_text={corpus} --vocab_size=40 --batch_size=4 --seq_len=8'"
        f"\nTRAIN_FLAGS = '{' '.join(TINY_FLAGS)} --warmup_steps=5 --log_every=5'"
        "\nPRESET = 'wt2_t128'"  # Its flag files first; the flags above override all but its --max_lr.
        "\nSHOW_TENSORBOARD = False"
    )
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "Derived architecture" in outputs and "perplexity" in outputs
    assert json.loads((tmp_path / "logs" / "colab" / "config.json").read_text())["train"]["max_lr"] == 4e-3  # The preset's.


def interval_losses(data_dir, precision, steps):
    trainer = train.Trainer(ModelConfig(vocab_size=30, cutoffs=(8, 16), **{**TINY_MODEL, "dropout_rate": 0.0}),
                            TrainConfig(epochs=1, max_lr=3e-3, warmup_steps=10, precision=precision), steps,
                            batch_size=4, seq_len=8)
    losses = []
    for inputs, targets in data_utils.make_dataset(data_dir, "train").repeat().take(steps):
        losses.append(float(trainer.train_step(inputs, targets)))
    return np.array(losses)


def stream_losses(data_dir, steps, **trainer_options):
    """Training losses of the tiny model with cutoffs (8, 16), in float32 and without dropout."""
    trainer = train.Trainer(ModelConfig(vocab_size=30, cutoffs=(8, 16), **{**TINY_MODEL, "dropout_rate": 0.0}),
                            TrainConfig(epochs=1, max_lr=3e-3, warmup_steps=2, precision="float32"), steps,
                            batch_size=4, seq_len=8, **trainer_options)
    batches = list(data_utils.make_dataset(data_dir, "train").take(steps))
    losses = [float(trainer.train_step(inputs, targets)) for inputs, targets in batches]
    return np.array(losses), trainer.train_step.get_concrete_function(*batches[0])


def steps_taken(data_dir, batch_chunk, model_options, train_options, steps=3):
    """(the losses, then every variable of the model and the memory) after `steps` steps of the tiny model with
    cutoffs (8, 16), without dropout, each batch in `batch_chunk` chunks; a search with a held-out stream also
    takes a held-out step on each batch."""
    model_config = ModelConfig(vocab_size=30, cutoffs=(8, 16), **{**TINY_MODEL, "dropout_rate": 0.0}, **model_options)
    config = TrainConfig(epochs=1, max_lr=3e-3, warmup_steps=2, **{"precision": "float32", **train_options})
    trainer = train.Trainer(model_config, config, 30, batch_size=4, seq_len=8, batch_chunk=batch_chunk)
    losses = []
    for inputs, targets in data_utils.make_dataset(data_dir, "train").take(steps):
        losses.append(float(trainer.train_step(inputs, targets)))
        if trainer.search and trainer.search.heldout_batches:
            losses.append(float(trainer.heldout_step(inputs, targets)))
    return [np.array(losses)] + [variable.numpy() for variable in trainer.model.variables + list(trainer.streams["train"])]


# A cost term whose gradient weighs on the logits beside the NLL's, so that adding it once per chunk would show.
COSTLY_SEARCH = dict(cost_weight=0.05, arch_lr=1e-2)
CHUNKED_CASES = {
    "fixed_in_chunks_of_a_row": (dict(architecture="ADI"), {}, 4),
    "search": ({}, COSTLY_SEARCH, 2),  # The logits learn on the training stream; every chunk draws its one sample.
    "heldout_single_path_search": (dict(single_path=True), dict(arch_holdout=0.2, **COSTLY_SEARCH), 2),
    "float16_loss_scaled": (dict(architecture="ADI"), dict(precision="float16"), 2),
}


@pytest.mark.parametrize("model_options, train_options, batch_chunk", [
    pytest.param(*case, id=name, marks=[pytest.mark.slow] if name == "heldout_single_path_search" else [])
    for name, case in CHUNKED_CASES.items()])
def test_a_batch_in_chunks_trains_as_the_whole_batch(tmp_path, model_options, train_options, batch_chunk):
    """--batch_chunk: summed chunks' gradients make the whole batch's step; the losses, weights, logits, Gumbel
    seeds and memory after three steps match."""
    data_dir = distributed_data(tmp_path)
    whole = steps_taken(data_dir, 1, model_options, train_options)
    chunked = steps_taken(data_dir, batch_chunk, model_options, train_options)
    tolerance = 1e-4 if train_options.get("precision") == "float16" else 1e-5
    for actual, expected in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


@pytest.mark.slow  # Compiles four training steps with XLA.
def test_a_batch_in_chunks_trains_as_the_whole_batch_under_xla(tmp_path):
    data_dir = distributed_data(tmp_path)
    with mock.patch.object(devices, "use_xla", lambda jit_compile: True):
        whole, chunked = (steps_taken(data_dir, chunks, {}, COSTLY_SEARCH) for chunks in (1, 2))
    for actual, expected in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# 0.25 of the true shares gives the second tail the minimum 8 rows for its 17 or so a batch: it overflows.
@pytest.mark.slow  # Each compiles two training steps with XLA.
@pytest.mark.parametrize("share_scale", [1.0, 0.25])
def test_xla_step_with_tail_capacities_follows_every_row(tmp_path, share_scale):
    """Under XLA each tail scores a static number of rows, not every row; the losses stay the same."""
    stream = np.random.default_rng(0).integers(1, 30, 32 * 6)
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", stream, vocab_size=30, batch_size=4, seq_len=8)
    shares = [share_scale * share for share in tail_shares(np.bincount(stream, minlength=30) / len(stream), (8, 16))]
    with mock.patch.object(devices, "use_xla", lambda jit_compile: True):
        every_row, _ = stream_losses(data_dir, 5)
        capacity_rows, step = stream_losses(data_dir, 5, tail_shares=shares)
    graph = step.graph.as_graph_def()
    ops = {node.op for node in graph.node} | {node.op for function in graph.library.function for node in function.node_def}
    assert "TopKV2" in ops  # The capacity rows were used.
    np.testing.assert_allclose(capacity_rows, every_row, rtol=1e-5)


@pytest.mark.slow
def test_half_precision_training_tracks_float32(tmp_path):
    """A few hundred steps: bfloat16 (and loss-scaled float16) losses stay close to float32's."""
    stream = np.tile(np.random.default_rng(0).permutation(29) + 1, 140)  # Learnable: each id fixes the next.
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", stream, vocab_size=30, batch_size=4, seq_len=8)
    float32 = interval_losses(data_dir, "float32", 300)
    assert float32[-50:].mean() < 0.5 * float32[:10].mean()  # It learns, so tracking it means something.
    for precision in ("bfloat16", "float16"):
        half = interval_losses(data_dir, precision, 300)
        window = lambda x: x.reshape(-1, 25).mean(axis=1)  # Means over 25 steps.
        np.testing.assert_allclose(window(half), window(float32), rtol=0.05, atol=0.05, err_msg=precision)


DISTRIBUTED_RUN = """
import json, sys
import keras
import tensorflow as tf
if "mirrored" in sys.argv[2:]:  # Two logical CPUs, one for each replica.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import data_utils, devices, train
from config import ModelConfig, RunOptions, TrainConfig
strategies = {"single": tf.distribute.get_strategy, "multi_worker": lambda: devices.make_strategy("multi_worker"),
              "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}
strategies["mirrored_in_chunks"] = strategies["mirrored"]  # Each replica's 2 rows in chunks of one (--batch_chunk=2).
model_config = ModelConfig(vocab_size=30, cutoffs=(8, 16), d_model=16, num_heads=2, d_ffn=32, num_layers=3, mem_len=4,
                           dropout_rate=0.0)
losses = {}
for name in sys.argv[2:]:
    strategy = strategies[name]()
    trainer = train.Trainer(model_config, TrainConfig(epochs=1, max_lr=3e-3, warmup_steps=5, precision="float32"),
                            30, 4, 8, strategy, batch_chunk=2 if name.endswith("_in_chunks") else 1)
    losses[name + "_replicas"] = strategy.num_replicas_in_sync
    losses[name] = []
    for inputs, targets in data_utils.make_dataset(sys.argv[1], "train").take(30):
        losses[name].append(float(trainer.train_step(inputs, targets)))
        if len(losses[name]) == 1:  # Made by identical weights: every row's memory must match.
            losses[name + "_memory"] = trainer.memory_states.numpy().tolist()
print(json.dumps(losses))
"""


def distributed_data(tmp_path):
    return data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(1).integers(1, 30, 1200),
                                           vocab_size=30, batch_size=4, seq_len=8)


@pytest.mark.slow
def test_mirrored_strategy_over_two_devices_matches_one_device(tmp_path):
    """Each replica keeps its rows (and their memory); the summed metrics give the same loss trajectory."""
    result = subprocess.run([sys.executable, "-c", DISTRIBUTED_RUN, str(distributed_data(tmp_path)), "single",
                             "mirrored", "mirrored_in_chunks"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses["single"]) == 30
    for name in ("mirrored", "mirrored_in_chunks"):
        np.testing.assert_allclose(losses[f"{name}_memory"], losses["single_memory"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(losses[name][:2], losses["single"][:2], rtol=1e-5, err_msg=name)
        # Later steps drift by float summation order, which Adam's normalisation amplifies at first.
        np.testing.assert_allclose(losses[name], losses["single"], rtol=5e-3, err_msg=name)


@contextlib.contextmanager
def reserved_loopback_ports(count):
    """Free ports on 127.0.0.1, kept bound (not listening) until the block ends so that nothing else takes them.

    SO_REUSEADDR lets the workers' gRPC servers, which set it too, bind and listen on them meanwhile.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
        yield [sock.getsockname()[1] for sock in sockets]


def run_together(commands, log_dir, timeout=300):
    """Starts every (argv, env) command at once and returns their stdouts.

    At the first failure, or after `timeout` seconds, the others are killed (exit -9): a worker whose
    peer died would otherwise wait on its collectives. Nothing is left running, whatever happens.
    """
    logs = [log_dir / f"process_{i}" for i in range(len(commands))]
    processes = []
    try:
        for (argv, env), log in zip(commands, logs):
            with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
                processes.append(subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=err))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            codes = [process.poll() for process in processes]
            if None not in codes or any(codes):
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    failed = [f"process {i} exited {p.returncode}:\n" + pathlib.Path(f"{log}.err").read_text()[-2000:]
              for i, (p, log) in enumerate(zip(processes, logs)) if p.returncode]
    assert not failed, "\n".join(failed)
    return [pathlib.Path(f"{log}.out").read_text() for log in logs]


@pytest.mark.slow
def test_multi_worker_strategy_over_two_processes_matches_one_device(tmp_path):
    """--strategy=multi_worker: two worker processes on 127.0.0.1 exchange memory rows and metrics by collectives.

    Each worker's one replica takes its rows of the global batch, as under MirroredStrategy, so the loss
    trajectory must be the single-device one; both workers must report it.
    """
    script = [sys.executable, "-c", DISTRIBUTED_RUN, str(distributed_data(tmp_path))]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    with reserved_loopback_ports(2) as ports:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        workers = [(script + ["multi_worker"],
                    dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})))
                   for i in range(2)]
        outputs = run_together([(script + ["single"], env)] + workers, tmp_path)
    single, *reports = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    assert len(single["single"]) == 30
    assert [report["multi_worker_replicas"] for report in reports] == [2, 2]
    assert reports[1]["multi_worker"] == reports[0]["multi_worker"]
    losses = reports[0]
    np.testing.assert_allclose(losses["multi_worker_memory"], single["single_memory"], atol=1e-5)
    np.testing.assert_allclose(losses["multi_worker"][:2], single["single"][:2], rtol=1e-5)
    np.testing.assert_allclose(losses["multi_worker"], single["single"], rtol=5e-3)


def printed_results(output):
    """The results dict train.py prints last (indented JSON after the logs), or None if it printed none."""
    start = output.rfind("\n{\n")
    return json.loads(output[start + 1:]) if start >= 0 else None


@pytest.mark.slow
def test_multi_worker_train_py_writes_one_run_directory_and_resumes(tmp_path):
    """train.py --strategy=multi_worker as two workers sharing --logdir: only the chief (worker 0) writes the run;
    worker 1 saves its checkpoints into a directory of its own and deletes it. A planned pause mid-epoch, then the
    same command again: both workers resume from the chief's checkpoint and report the same results."""
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(2).integers(1, 30, 600),
                                               vocab_size=30, batch_size=4, seq_len=8)
    steps = data_utils.load_metadata(data_dir)["splits"]["train"]["batches"]
    run_dir = tmp_path / "logs" / "mw"
    command = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--logdir={tmp_path / 'logs'}", "--model_name=mw",
               "--strategy=multi_worker", "--precision=float32", "--epochs=1", *TINY_FLAGS, "--warmup_steps=2", "--log_every=3",
               "--checkpoint_every=4"]
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    with reserved_loopback_ports(2) as ports:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        workers = [dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
                   for i in range(2)]
        paused = run_together([(command + ["--stop_after_steps=6"], worker) for worker in workers], tmp_path)
        assert all("Stopped at step 6" in output and printed_results(output) is None for output in paused)
        assert sorted(path.name for path in run_dir.iterdir()) == [
            "checkpoints", "config.json", "pi_history.jsonl", "train", "training_log.log", "valid"]
        assert tf.train.latest_checkpoint(runs.Run(run_dir).checkpoint_dir).endswith("ckpt-6")
        outputs = run_together([(command, worker) for worker in workers], tmp_path)

    assert "Resumed from" in outputs[1] and "ckpt-6 at step 6" in outputs[1]
    chief, other = [printed_results(output) for output in outputs]
    assert other == chief
    assert math.isfinite(chief["valid_perplexity"]) and math.isfinite(chief["test_perplexity"])
    assert json.loads(runs.Run(run_dir).results_path.read_text()) == chief
    # One set of outputs, written once: no worker's temporary directory is left, and each record appears once.
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "checkpoints", "config.json", "export", "pi.gif", "pi.png", "pi_history.jsonl", "results.json", "train",
        "training_log.log", "valid"]
    assert sorted(path.name for path in runs.Run(run_dir).checkpoint_dir.iterdir() if path.is_dir()) == ["best"]
    assert tf.train.latest_checkpoint(runs.Run(run_dir).checkpoint_dir).endswith(f"ckpt-{steps}")
    assert tf.train.latest_checkpoint(runs.Run(run_dir).best_dir).endswith(f"ckpt-{steps}")
    assert [json.loads(line)["step"] for line in runs.Run(run_dir).pi_history_path.read_text().splitlines()] == list(
        range(3, steps + 1, 3))
    log = runs.Run(run_dir).log_path.read_text()
    assert log.count("Parameters:") == log.count("Resumed from") == log.count("test:") == 1
    assert len(list((run_dir / "train").glob("events.out.tfevents.*"))) == 2  # One per invocation of the chief.
    assert sorted(path.name for path in (run_dir / "export").iterdir()) == [
        "config.json", "metadata.json", "model.weights.h5"]


@pytest.mark.slow
def test_multi_worker_sigterm_to_one_worker_stops_both_at_one_step_and_the_rerun_ends_as_uninterrupted(tmp_path):
    """TensorFlow's PreemptionCheckpointHandler (reliability.ClusterStopSignals) under train.py: worker 1 alone gets
    SIGTERM mid-epoch; both workers agree on a step, save it (the chief into the run) and exit 143. The same
    command on both then resumes there and ends exactly as an uninterrupted pair of workers."""
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(3).integers(1, 30, 1200),
                                               vocab_size=30, batch_size=4, seq_len=8)  # 37 batches.
    flags = [sys.executable, "train.py", f"--data_dir={data_dir}", "--model_name=mw", "--strategy=multi_worker",
             "--precision=float32", "--epochs=1", *TINY_FLAGS, "--warmup_steps=2", "--log_every=3", "--checkpoint_every=4"]
    run = runs.Run(tmp_path / "stopped" / "mw")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    with reserved_loopback_ports(2) as ports:
        cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
        workers = [dict(env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
                   for i in range(2)]
        straight = run_together([(flags + [f"--logdir={tmp_path / 'straight'}"], worker) for worker in workers], tmp_path)
        command = flags + [f"--logdir={tmp_path / 'stopped'}"]
        processes = [subprocess.Popen(command, env=worker, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for worker in workers]
        try:
            deadline = time.monotonic() + 300
            while not (run.checkpoint_dir / "ckpt-4.index").is_file() and time.monotonic() < deadline:
                time.sleep(0.05)
            processes[1].send_signal(signal.SIGSTOP)  # Held mid-epoch (worker 0 waits on it) until the signal is in.
            processes[1].send_signal(signal.SIGTERM)
            processes[1].send_signal(signal.SIGCONT)
            stopped = [process.communicate(timeout=300) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        resumed = run_together([(command, worker) for worker in workers], tmp_path)

    assert [process.returncode for process in processes] == [143, 143], [errors[-2000:] for _, errors in stopped]
    steps = [re.findall(r"Interrupted by SIGTERM: stopped at step (\d+), whose checkpoint is saved", output)
             for output, _ in stopped]
    assert steps[0] == steps[1] and len(steps[0]) == 1 and 4 < int(steps[0][0]) < 37, [o[-2000:] for o, _ in stopped]
    assert not any("Traceback" in errors for _, errors in stopped)
    assert f"ckpt-{steps[0][0]} at step {steps[0][0]}." in resumed[1]  # Both resumed from the chief's save.
    assert [printed_results(output) for output in resumed] == [printed_results(output) for output in straight]
    assert json.loads(run.results_path.read_text()) == printed_results(straight[0])
    assert sorted(path.name for path in run.checkpoint_dir.iterdir() if path.is_dir()) == ["best"]  # No worker's own.


def test_the_first_step_uses_tau_start_and_the_last_tau_end(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(1, 30).repeat(4), vocab_size=30,
                                               batch_size=2, seq_len=8)
    config = TrainConfig(epochs=1, tau_start=1.0, tau_end=0.1)
    steps = data_utils.load_metadata(data_dir)["splits"]["train"]["batches"]
    trainer = train.Trainer(ModelConfig(vocab_size=30, cutoffs=(), **TINY_MODEL), config, steps, 2, 8)
    used = []
    token_nll = trainer.model.token_nll
    trainer.model.token_nll = lambda *args, tau, **kwargs: used.append(float(tau)) or token_nll(*args, tau=tau, **kwargs)
    for inputs, targets in data_utils.make_dataset(data_dir, "train"):
        trainer._train_step(inputs, targets)  # Eagerly, so that every step's tau is seen.
    expected = [0.1 ** (k / (steps - 1)) for k in range(steps)]  # Geometric from tau_start to tau_end.
    np.testing.assert_allclose(used, expected, rtol=1e-6)
    assert used[0] == 1.0 and used[-1] == float(np.float32(0.1))
    assert [float(trainer.tau_of_step(k + 1)) for k in range(steps)] == used  # As logged.


def test_a_fixed_architecture_logs_no_tau(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(1, 30).repeat(4), vocab_size=30,
                                               batch_size=2, seq_len=8)
    model_config = ModelConfig(vocab_size=30, cutoffs=(), architecture="ADI", **TINY_MODEL)
    train.train_and_evaluate(model_config, TrainConfig(epochs=1), data_dir, tmp_path / "run", RunOptions(log_every=2))
    step_lines = re.findall(r"step \d+ loss .*", (tmp_path / "run" / "training_log.log").read_text())
    assert step_lines and not any("tau" in line for line in step_lines)  # Nothing samples its blocks.
    assert read_scalars(tmp_path / "run" / "train", "loss") and not read_scalars(tmp_path / "run" / "train", "tau")


def test_a_search_logs_its_auto_precision_epoch_time_and_derived_architecture(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.arange(1, 30).repeat(4), vocab_size=30,
                                               batch_size=2, seq_len=8)
    config = TrainConfig(epochs=1, precision="auto")
    results = train.train_and_evaluate(ModelConfig(vocab_size=30, cutoffs=(), **TINY_MODEL), config, data_dir,
                                       tmp_path / "run")
    cpu_flags = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").is_file() else ""
    native = any(flag in cpu_flags.split() for flag in ("avx512_bf16", "amx_bf16"))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train"]["precision"]
    if not tf.config.list_physical_devices("GPU"):  # A CPU: its flags decide.
        assert recorded == ("bfloat16" if native else "float32")
    log = (tmp_path / "run" / "training_log.log").read_text()
    assert f"Precision {recorded} (auto: " in log
    assert "Epoch 1 time:" in log and "training steps took" in log
    derived = re.findall(r"step (\d+) derived architecture: --architecture=([ADI]{3}), held since step (\d+)\.", log)
    assert len(derived) == 1 and derived[0][1] == results["derived_architecture"]  # One epoch, one validation.
    assert 1 <= int(derived[0][2]) <= int(derived[0][0])


def tiny_stream_run(tmp_path):
    """A tiny dataset and configuration for the resume tests: 37 training batches an epoch."""
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(0).integers(1, 30, 1200),
                                               vocab_size=30, batch_size=4, seq_len=8)
    return data_dir, ModelConfig(vocab_size=30, cutoffs=(8, 16), **TINY_MODEL), TrainConfig(epochs=2, warmup_steps=5)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_keeps_both(tmp_path):
    data_dir, model_config, config = tiny_stream_run(tmp_path)
    run_dir, options = tmp_path / "run", dict(log_every=1, checkpoint_every=5)
    train.train_and_evaluate(model_config, config, data_dir, run_dir, RunOptions(stop_after_steps=12, **options))
    damaged = runs.Run(run_dir).checkpoint_dir / "ckpt-12.data-00000-of-00001"
    damaged.write_bytes(damaged.read_bytes()[:100])  # Truncated, as by a full disk.
    for unfinished in (runs.Run(run_dir).checkpoint_dir / "ckpt-15_temp", runs.Run(run_dir).best_dir / "ckpt-15_temp"):
        unfinished.mkdir(parents=True)  # What a save killed midway leaves.
        (unfinished / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    train.train_and_evaluate(model_config, config, data_dir, run_dir, RunOptions(stop_after_steps=13, **options))
    assert not list(run_dir.rglob("*_temp"))
    log = runs.Run(run_dir).log_path.read_text()
    assert re.search(r"Could not read \S*ckpt-12 .*; resuming from \S*ckpt-10 instead", log)
    assert "Resumed from" in log and "at step 10." in log
    assert (runs.Run(run_dir).checkpoint_dir / "ckpt-10.index").is_file()  # Still kept: the rotation dropped the damaged one.
    assert (runs.Run(run_dir).checkpoint_dir / "damaged-ckpt-12.index").is_file()
    for data_file in runs.Run(run_dir).checkpoint_dir.glob("ckpt-*.data-*"):
        data_file.write_bytes(b"\0" * 64)
    with pytest.raises(checkpoints.CheckpointError, match=r"No checkpoint in \S*checkpoints can be read: .*ckpt-13 .*ckpt-10"):
        train.train_and_evaluate(model_config, config, data_dir, run_dir, RunOptions(**options))


@pytest.mark.slow
def test_a_run_killed_between_the_end_of_epoch_saves_still_records_that_epochs_best(tmp_path, monkeypatch):
    data_dir, model_config, config = tiny_stream_run(tmp_path)
    options = RunOptions(log_every=10, checkpoint_every=20)
    straight = train.train_and_evaluate(model_config, config, data_dir, tmp_path / "straight", options)
    save = tf.train.CheckpointManager.save

    def killed_at_the_first_epoch_end(manager, checkpoint_number=None, **kwargs):
        if checkpoint_number == 37 and manager.directory.endswith("checkpoints"):  # The regular save, after the best.
            raise KeyboardInterrupt
        return save(manager, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", killed_at_the_first_epoch_end)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(model_config, config, data_dir, tmp_path / "killed", options)
    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    resumed = train.train_and_evaluate(model_config, config, data_dir, tmp_path / "killed", options)
    assert resumed == straight
    best = [json.loads(runs.Run(tmp_path / name).best_path.read_text())
            for name in ("straight", "killed")]
    assert best[0] == best[1]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_matches_an_uninterrupted_run(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(0).integers(1, 30, 1200),
                                               vocab_size=30, batch_size=4, seq_len=8)
    command = [sys.executable, "train.py", f"--data_dir={data_dir}", "--epochs=2", "--warmup_steps=5",
               "--log_every=1", "--checkpoint_every=5", "--cutoffs=8,16", *TINY_FLAGS[:-1]]
    straight = printed_results(run_script(*command, f"--logdir={tmp_path / 'straight'}"))
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([*command, f"--logdir={killed_dir}"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (runs.Run(killed_dir / "base").checkpoint_dir / "ckpt-20.index").is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = printed_results(run_script(*command, f"--logdir={killed_dir}"))
    assert resumed == straight


@pytest.mark.slow
def test_a_truncated_tfrecord_stops_training_with_one_line_and_keeps_the_checkpoints(tmp_path):
    data_dir = data_utils.write_stream_dataset(tmp_path / "data", np.random.default_rng(0).integers(1, 30, 1200),
                                               vocab_size=30, batch_size=4, seq_len=8)
    command = [sys.executable, "train.py", f"--data_dir={data_dir}", f"--logdir={tmp_path / 'logs'}", "--epochs=1",
               "--cutoffs=8,16", *TINY_FLAGS[:-1]]
    run_script(*command, "--checkpoint_every=5", "--stop_after_steps=10")
    saved = {path: path.read_bytes() for path in runs.Run(tmp_path / "logs" / "base").checkpoint_dir.rglob("*")
                   if path.is_file()}
    record = next(data_dir.glob("train-*.tfrecord"))
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])  # 18.5 of its 37 records.
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert error_line(result, "train.py").startswith(
        f"train.py: error: {record}: damaged at training step 19 (batch 19 of 37 does not read: truncated record")
    assert {path: path.read_bytes() for path in saved} == saved


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_truncated_valid_or_test_tfrecord_is_named_with_its_batch(tmp_path, split):
    data_dir, model_config, config = tiny_stream_run(tmp_path)
    record = data_dir / data_utils.load_metadata(data_dir)["splits"][split]["files"][0]
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])  # 18.5 of its 37 records.
    with pytest.raises(data_utils.DamagedRecordError, match=re.escape(
            f"{record}: damaged (batch 19 of 37 does not read: truncated record at ")):
        train.train_and_evaluate(model_config, dataclasses.replace(config, epochs=1), data_dir, tmp_path / "run")
    log = runs.Run(tmp_path / "run").log_path.read_text()
    assert ("step 37 validation:" in log) == (split == "test")  # The test split is read after the validation.

