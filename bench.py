"""Measures training and evaluation speed, memory and MFU on synthetic context-batched data.

    python bench.py                                  # base_model.sh's configuration, 3 architectures
    python bench.py --architectures=AADDDD --precision=bfloat16 --steps=100

Every model flag of train.py is accepted. The data is a Zipf-distributed token stream written to
TFRecords and read back through the real input pipeline, so the steps see what training sees. For
each architecture it times the real compiled training step (train.Trainer) and evaluation step,
one step at a time after warm-up, and reports medians. MFU is the analytic model FLOPs per second
(model.flops_per_token, each adaptive softmax tail counted for the stream's share of tokens in it)
over a dense matmul peak measured in the same process, dtype and threads.
"""
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

import data_utils
import train
from model import flops_per_token


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


def tail_shares(stream, cutoffs, vocab_size):
    """The fraction of the stream's tokens in each adaptive softmax tail cluster."""
    bounds = list(cutoffs) + [vocab_size]
    return [float(np.mean((stream >= start) & (stream < stop))) for start, stop in zip(bounds[:-1], bounds[1:])]


def median_seconds(run, steps, warmup):
    """Median wall time of `run()` over `steps` calls after `warmup` calls; run() must block until done."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak_flops(dtype, size=2048, repeats=20):
    """FLOP/s of a square matmul chain, the dense peak MFU is measured against."""
    a = tf.random.normal([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
    seconds = median_seconds(lambda: matmul(a, b).numpy(), repeats, warmup=3)
    return 2 * size**3 / seconds


def data_tokens_per_second(data_dir, tokens_per_batch):
    """The input pipeline alone: parsed batches per second, times their tokens."""
    start, batches = time.perf_counter(), 0
    for _ in data_utils.make_dataset(data_dir, "train"):
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start)


def bench_architecture(model_config, train_config, data_dir, batch_size, seq_len, steps, warmup, strategy, shares):
    trainer = train.Trainer(model_config, train_config, steps_per_epoch=1000, batch_size=batch_size, strategy=strategy)
    batches = iter(data_utils.make_dataset(data_dir, "train").repeat())
    train_seconds = median_seconds(lambda: trainer.train_step(*next(batches)).numpy(), steps, warmup)
    model = trainer.model
    eval_step = train.evaluation_step(model, model.eval_mode, train.use_xla(train_config.jit_compile, "eval"))
    memory = [model.initial_memory(batch_size)]

    def evaluate_once():
        nll, _, memory[0] = eval_step(*next(batches), memory[0])
        nll.numpy()

    eval_seconds = median_seconds(evaluate_once, steps, warmup)
    tokens = batch_size * seq_len
    return dict(
        train_ms_per_step=1000 * train_seconds, train_tokens_per_second=tokens / train_seconds,
        eval_ms_per_step=1000 * eval_seconds, eval_tokens_per_second=tokens / eval_seconds,
        train_flops_per_step=flops_per_token(model_config, seq_len, training=True, tail_shares=shares) * tokens,
        eval_flops_per_step=flops_per_token(model_config, seq_len, tail_shares=shares) * tokens,
    )


def device_name():
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def main(argv):
    flag_values = FLAGS
    vocab_size = flag_values.vocab_size
    model_config, train_config, run_options = train.configs_from_flags(flag_values, vocab_size)
    strategy = train.make_strategy(run_options.strategy)
    compute_dtype = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}[train_config.precision]
    architectures = flag_values.architectures
    report = dict(
        tensorflow=tf.__version__, device=device_name(), cpu_count=os.cpu_count(),
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)",
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or "default",
        precision=train_config.precision, strategy=run_options.strategy, replicas=strategy.num_replicas_in_sync, jit_compile=train_config.jit_compile, batch_size=flag_values.batch_size,
        seq_len=flag_values.seq_len, vocab_size=vocab_size, steps=flag_values.steps, command=sys.argv, results={},
    )
    report["matmul_peak_flops"] = matmul_peak_flops(compute_dtype)
    with tempfile.TemporaryDirectory() as data_dir:
        stream = synthetic_dataset(data_dir, vocab_size, flag_values.batch_size, flag_values.seq_len,
                                   num_batches=flag_values.steps + flag_values.warmup_steps_bench + 2)
        report["tail_shares"] = tail_shares(stream, model_config.cutoffs, vocab_size)
        report["data_tokens_per_second"] = data_tokens_per_second(data_dir, flag_values.batch_size * flag_values.seq_len)
        for architecture in architectures:
            config = dataclasses.replace(model_config, architecture=None if architecture == "supernet" else architecture)
            result = bench_architecture(config, train_config, data_dir, flag_values.batch_size, flag_values.seq_len,
                                        flag_values.steps, flag_values.warmup_steps_bench, strategy,
                                        report["tail_shares"])
            for kind in ("train", "eval"):
                result[f"{kind}_mfu"] = result[f"{kind}_flops_per_step"] / (result[f"{kind}_ms_per_step"] / 1000) / report["matmul_peak_flops"]
            result["xla_train"] = train.use_xla(train_config.jit_compile, "train")
            report["results"][architecture] = result
    report["peak_host_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(report)
    with open(flag_values.output, "w") as f:
        json.dump(report, f, indent=1)
    print(f"Wrote {flag_values.output}")


def print_table(report):
    print(f"TensorFlow {report['tensorflow']} on {report['device']} ({report['cpu_count']} CPUs, "
          f"intra-op threads {report['intra_op_threads']}), {report['precision']}, --jit_compile={report['jit_compile']}, "
          f"batch {report['batch_size']} x seq_len {report['seq_len']}")
    print(f"matmul peak {report['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; input pipeline "
          f"{report['data_tokens_per_second']:,.0f} tokens/s; peak host memory {report['peak_host_memory_mib']:,.0f} MiB")
    print(f"{'architecture':>12} {'train ms':>9} {'train tok/s':>12} {'train MFU':>9} {'train XLA':>9} {'eval ms':>8} "
          f"{'eval tok/s':>11} {'eval MFU':>8}")
    for name, r in report["results"].items():
        print(f"{name:>12} {r['train_ms_per_step']:9.1f} {r['train_tokens_per_second']:12,.0f} {r['train_mfu']:9.2f} "
              f"{str(r['xla_train']):>9} {r['eval_ms_per_step']:8.1f} {r['eval_tokens_per_second']:11,.0f} {r['eval_mfu']:8.2f}")


if __name__ == "__main__":
    FLAGS = train.define_flags()
    flags.DEFINE_integer("vocab_size", 12000, "Vocabulary of the synthetic data (the default dataset's).")
    flags.DEFINE_integer("batch_size", 32, "Rows per batch.")
    flags.DEFINE_integer("seq_len", 32, "Tokens per segment.")
    flags.DEFINE_integer("steps", 60, "Timed steps per measurement (after warm-up).")
    flags.DEFINE_integer("warmup_steps_bench", 5, "Untimed steps first (compilation happens here).")
    flags.DEFINE_list("architectures", ["supernet", "AADDDD", "AAAAAA"], "'supernet' or fixed architecture strings.")
    flags.DEFINE_string("output", "bench.json", "Where the JSON report goes.")
    app.run(main)
