"""Measures training and evaluation speed, memory and MFU on synthetic context-batched data.

    python bench.py                                  # base_model.sh's configuration: 3 architectures x 2 precisions
    python bench.py --architectures=AADDDD --precision=bfloat16 --steps=100

Every model flag of train.py is accepted (--precision=X limits the run to X). The data is a
Zipf-distributed token stream written to TFRecords and read back through the real input pipeline,
so the steps see what training sees. For each architecture and precision it times the real
training step (train.Trainer) and evaluation step one step at a time after warm-up, and reports
medians. The measurements are interleaved in rounds, the matmul peak among them, so that a slow
spell on a shared machine slows every figure alike and the ratios between them hold. MFU is the
analytic model FLOPs per second (costs.flops_per_token, each adaptive softmax tail counted for the
stream's share of tokens in it) over the dense matmul peak at the same dtype and threads.
The JSON report's provenance names what was measured: the commit (and whether tracked files differed
from it), the UTC date, the device, the CPU model and its bfloat16 instructions, TensorFlow's version
and the precisions timed, with the flag that chose them and what --precision=auto picks here and why.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import dataclasses
import datetime
import json
import math
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import data_utils
import devices
import evaluate
import train
from config import TrainConfig, configs_from_flags
from costs import flops_per_token, tail_shares


def zipf_stream(num_tokens, vocab_size, seed=0):
    """Ids with a Zipf(1) frequency profile, id 0 (padding) excluded: frequent ids are small, as ranked ids are."""
    ranks = np.arange(1, vocab_size)
    probs = 1.0 / ranks
    return np.random.default_rng(seed).choice(ranks, size=num_tokens, p=probs / probs.sum()).astype(np.int32)


def synthetic_dataset(directory, vocab_size, batch_size, seq_len, num_batches):
    """Context-batched TFRecords plus metadata for a Zipf stream, every split the same; returns the stream."""
    stream = zipf_stream(batch_size * (num_batches * seq_len + 1), vocab_size)
    data_utils.write_stream_dataset(directory, stream, vocab_size, batch_size, seq_len)
    return stream


def interleaved_median_seconds(runs, steps, warmup, rounds=5):
    """{name: median wall seconds of runs[name]()} over `steps` timed calls each, after `warmup` calls.

    The timed calls go in `rounds` slices, every run in turn within a round, so that a slow spell
    of a shared machine lands on all runs alike. Each run() must block until its work is done.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(math.ceil(steps / rounds)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(seconds)) for name, seconds in times.items()}


MATMUL_SIZE = 2048  # The peak's square matmuls: 2 * MATMUL_SIZE**3 FLOPs each.


def parallel_matmuls():
    """How many independent matmuls the peak runs at once: one per core on a CPU, where each op may
    use a single thread (--intra_op_threads=1); one on an accelerator."""
    return 1 if devices.accelerated() else os.cpu_count()


def matmul_run(dtype, copies):
    """`copies` independent square matmuls at `dtype`, the dense peak that MFU is measured against."""
    a = tf.random.normal([MATMUL_SIZE, MATMUL_SIZE], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmuls = tf.function(lambda x, y: tf.add_n([tf.reduce_sum(tf.cast(tf.matmul(x + i, y), tf.float32))
                                                 for i in range(copies)]))
    return lambda: matmuls(a, b).numpy()


def data_tokens_per_second(data_dir, tokens_per_batch):
    """The input pipeline alone: parsed batches per second, times their tokens."""
    start, batches = time.perf_counter(), 0
    for _ in data_utils.make_dataset(data_dir, "train"):
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start)


def step_runs(model_config, train_config, data_dir, batch_size, strategy, shares):
    """(train, eval) callables that each run one real step on the next batch and wait for it.

    shares: each adaptive softmax tail's share of tokens, which sizes its rows in an XLA step, as in train.py.
    """
    trainer = train.Trainer(model_config, train_config, steps_per_epoch=1000, batch_size=batch_size, strategy=strategy,
                            tail_shares=shares)
    batches = iter(data_utils.make_dataset(data_dir, "train").repeat())
    model = trainer.model
    eval_step = evaluate.evaluation_step(model, ("mix",), devices.use_xla(train_config.jit_compile))
    memories = [model.initial_memory(batch_size)]

    def evaluate_once():
        (nll,), _, memories[:] = eval_step(*next(batches), memories)
        nll.numpy()

    return (lambda: trainer.train_step(*next(batches)).numpy()), evaluate_once


def figures(model_config, seconds, peak, batch_size, seq_len, shares):
    """ms/step, tokens/s and MFU of the train and eval steps from their median seconds."""
    tokens = batch_size * seq_len
    result = {}
    for kind in ("train", "eval"):
        flops = flops_per_token(model_config, seq_len, training=kind == "train", tail_shares=shares) * tokens
        result.update({f"{kind}_ms_per_step": 1000 * seconds[kind], f"{kind}_tokens_per_second": tokens / seconds[kind],
                       f"{kind}_flops_per_step": flops, f"{kind}_mfu": flops / seconds[kind] / peak})
    return result


def device_name():
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return devices.cpu_model()


def git_commit(directory):
    """(HEAD's commit, whether tracked files differ from it) of the checkout at `directory`; (None, None) outside one."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def provenance(precisions, chosen_by):
    """What a record was measured with: the code's commit, the date, the machine, TensorFlow and the precision.

    precisions: the precisions timed; chosen_by: the flag that chose them, and why where --precision=auto did.
    """
    commit, dirty = git_commit(pathlib.Path(__file__).resolve().parent)
    train_default, reason = devices.resolve_precision(TrainConfig().precision)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return dict(commit=commit, dirty=dirty, date_utc=date, command=sys.argv, device=device_name(), cpu=devices.cpu_model(),
                cpu_bfloat16_features=devices.cpu_bfloat16_features(), tensorflow=tf.__version__,
                precision=dict(timed=precisions, chosen_by=chosen_by, train_default=train_default,
                               train_default_reason=reason))


def main(argv):
    flag_values = FLAGS
    vocab_size, batch_size, seq_len = flag_values.vocab_size, flag_values.batch_size, flag_values.seq_len
    model_config, train_config, run_options = configs_from_flags(flag_values, vocab_size)
    devices.set_intra_op_threads(run_options.intra_op_threads)  # Before any TensorFlow op.
    if flag_values["precision"].present:
        precision, reason = devices.resolve_precision(train_config.precision, run_options.strategy)
        precisions, chosen_by = [precision], f"--precision={train_config.precision}" + (
            f" ({reason})" if train_config.precision == "auto" else "")
    else:
        precisions, chosen_by = flag_values.precisions, f"--precisions={','.join(flag_values.precisions)}"
    strategy = devices.make_strategy(run_options.strategy)
    report = dict(
        provenance=provenance(precisions, chosen_by), cpu_count=os.cpu_count(),
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)",
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or "default",
        strategy=run_options.strategy, replicas=strategy.num_replicas_in_sync, jit_compile=train_config.jit_compile,
        xla_train=devices.use_xla(train_config.jit_compile), batch_size=batch_size, seq_len=seq_len,
        vocab_size=vocab_size, steps=flag_values.steps, parallel_matmuls=parallel_matmuls(), matmul_peak_flops={},
        results=[],
    )
    with tempfile.TemporaryDirectory() as data_dir:
        stream = synthetic_dataset(data_dir, vocab_size, batch_size, seq_len,
                                   num_batches=flag_values.steps + flag_values.warmup_steps_bench + 2)
        report["tail_shares"] = tail_shares(np.bincount(stream, minlength=vocab_size) / len(stream), model_config.cutoffs)
        report["data_tokens_per_second"] = data_tokens_per_second(data_dir, batch_size * seq_len)
        configs = {architecture: dataclasses.replace(model_config, architecture=None if architecture == "supernet"
                                                     else architecture) for architecture in flag_values.architectures}
        runs = {}
        for precision in precisions:
            runs[("matmul", precision)] = matmul_run(keras.DTypePolicy(devices.dtype_policy(precision)).compute_dtype,
                                                     report["parallel_matmuls"])
            for architecture, config in configs.items():
                train_run, eval_run = step_runs(config, dataclasses.replace(train_config, precision=precision),
                                                data_dir, batch_size, strategy, report["tail_shares"])
                runs[(architecture, precision, "train")], runs[(architecture, precision, "eval")] = train_run, eval_run
        seconds = interleaved_median_seconds(runs, flag_values.steps, flag_values.warmup_steps_bench)
    for precision in precisions:
        peak = report["matmul_peak_flops"][precision] = (report["parallel_matmuls"] * 2 * MATMUL_SIZE**3
                                                         / seconds[("matmul", precision)])
        for architecture, config in configs.items():
            step_seconds = {kind: seconds[(architecture, precision, kind)] for kind in ("train", "eval")}
            report["results"].append(dict(architecture=architecture, precision=precision,
                                          **figures(config, step_seconds, peak, batch_size, seq_len, report["tail_shares"])))
    report["peak_host_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(report)
    with open(flag_values.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"Wrote {flag_values.output}")


def print_table(report):
    peaks = ", ".join(f"{precision} {flops / 1e9:.0f}" for precision, flops in report["matmul_peak_flops"].items())
    origin = report["provenance"]
    print(f"commit {origin['commit']}{' (with changes)' if origin['dirty'] else ''}, {origin['date_utc']}")
    print(f"TensorFlow {origin['tensorflow']} on {origin['device']} ({report['cpu_count']} CPUs, "
          f"intra-op threads {report['intra_op_threads']}), --jit_compile={report['jit_compile']} "
          f"(training with XLA: {report['xla_train']}), batch {report['batch_size']} x seq_len {report['seq_len']}")
    print(f"matmul peak GFLOP/s: {peaks}; input pipeline {report['data_tokens_per_second']:,.0f} tokens/s; "
          f"peak host memory {report['peak_host_memory_mib']:,.0f} MiB")
    print(f"{'architecture':>12} {'precision':>9} {'train ms':>9} {'train tok/s':>12} {'train MFU':>9} "
          f"{'eval ms':>8} {'eval tok/s':>11} {'eval MFU':>8} {'train/eval':>10}")
    for r in report["results"]:
        print(f"{r['architecture']:>12} {r['precision']:>9} {r['train_ms_per_step']:9.1f} "
              f"{r['train_tokens_per_second']:12,.0f} {r['train_mfu']:9.2f} {r['eval_ms_per_step']:8.1f} "
              f"{r['eval_tokens_per_second']:11,.0f} {r['eval_mfu']:8.2f} "
              f"{r['train_ms_per_step'] / r['eval_ms_per_step']:9.2f}x")
    float32 = {r["architecture"]: r for r in report["results"] if r["precision"] == "float32"}
    for r in report["results"]:
        if r["precision"] != "float32" and r["architecture"] in float32:
            print(f"{r['architecture']}: the {r['precision']} train step takes "
                  f"{r['train_ms_per_step'] / float32[r['architecture']]['train_ms_per_step']:.2f}x float32's time")


if __name__ == "__main__":
    FLAGS = train.define_flags()
    flags.DEFINE_integer("vocab_size", data_utils.DEFAULT_VOCAB_SIZE, "Vocabulary of the synthetic data.")
    flags.DEFINE_integer("batch_size", data_utils.DEFAULT_BATCH_SIZE, "Rows per batch.")
    flags.DEFINE_integer("seq_len", data_utils.DEFAULT_SEQ_LEN, "Tokens per segment.")
    flags.DEFINE_integer("steps", 60, "Timed steps per measurement (after warm-up), in 5 interleaved rounds.")
    flags.DEFINE_integer("warmup_steps_bench", 5, "Untimed steps first (compilation happens here).")
    flags.DEFINE_list("architectures", ["supernet", "AADDDD", "AAAAAA"], "'supernet' or fixed architecture strings.")
    flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Compute dtypes to compare; --precision=X sets just X.")
    flags.DEFINE_string("output", "bench.json", "Where the JSON report goes.")
    app.run(main)
