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

--architectures takes fixed architectures (ADADAD, or par4 for --par_ratio=4 at --num_layers, which --par_ratio=4
also adds) and the search modes, SuperNets timed the same way:
  supernet             today's search step: every candidate of every block runs, mixed by Gumbel-softmax
  single_path          --single_path (GDAS): each block runs only its sampled candidate in training
  heldout              --arch_holdout=F (F = the flag's value, or 0.2 where it is 0): one timed call is
                       k = round((1 - F) / F) training steps (Trainer.train_step, the weights only), then
                       one held-out step (Trainer.heldout_step, the logits only), as train.py interleaves
                       them; its train figures are that call's time over k, per weight step
  single_path_heldout  both
A search mode's MFU counts the SuperNet's analytic FLOPs (every candidate), a held-out step as twice
the forward pass (the backward pass to the activations, with no weight gradients). A single-path
training step runs one sampled candidate per block, so its FLOPs depend on the sample: its train
FLOPs and MFU are left out (None); its evaluation mixes every candidate, as the SuperNet's does.
After the table, each search mode's train step is given as a ratio of each fixed architecture's.

The candidates' cost table, for train.py --cost_source=table --cost_table=A,D,I: when the run includes
the uniform architectures of --num_layers blocks (AAAAAA, DDDDDD and IIIIII for 6), each block's
cost is (t(XXXXXX) - t(IIIIII)) / num_layers for X = A, D, and 0 for the identity, in ms per step,
for the train step and for the eval step (at --eval_mem_len), printed as ready-to-paste flags and
kept in the JSON. A negative difference (attention or dense measured cheaper than identity, within
the noise) is clamped at 0 and said so. --eval_mem_len=N (default: --mem_len) times the eval step
with an N-position memory, as evaluate.py --mem_len evaluates a trained model.

Memory. --batch_chunk=N runs the train step as train.py --batch_chunk=N does: a batch's rows in N chunks,
their gradients summed. Each result's train_step_memory_mib is the memory one train call takes at its
peak above what was in use before it (every built model's weights, optimizer states and memory), as
TensorFlow's allocator counts it on the GPU, or without one on the CPU: get_memory_info's peak after
reset_memory_stats, less its current memory before the call. Memory outside that allocator (oneDNN's
scratch space, Python) is not in it; peak_host_memory_mib, the process' peak resident memory, has it all.
"""
import quiet_tensorflow  # noqa: F401  (first: keeps TensorFlow's start-up lines off the console)

import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

import checkpoints
import data_utils
import devices
import evaluate
import train
from config import CANDIDATES, TrainConfig, configs_from_flags, par_architecture
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


DEFAULT_HOLDOUT = 0.2  # The held-out share of the heldout modes where --arch_holdout is 0: the paper's fifth.


def search_modes(arch_holdout):
    """{search mode: (its ModelConfig changes, its TrainConfig changes)}: the SuperNets that --architectures
    names, the heldout ones with arch_holdout (or DEFAULT_HOLDOUT where it is 0)."""
    holdout = arch_holdout or DEFAULT_HOLDOUT
    return {"supernet": (dict(single_path=False), dict(arch_holdout=0.0)),
            "single_path": (dict(single_path=True), dict(arch_holdout=0.0)),
            "heldout": (dict(single_path=False), dict(arch_holdout=holdout)),
            "single_path_heldout": (dict(single_path=True), dict(arch_holdout=holdout))}


SEARCH_MODE_NAMES = tuple(search_modes(0.0))


def run_configs(names, model_config, train_config):
    """{name: (ModelConfig, TrainConfig)} for each of --architectures: a search mode's SuperNet, or a fixed
    architecture, given as its string or as par<P> (config.par_architecture of --num_layers, named by its string)."""
    modes, configs = search_modes(train_config.arch_holdout), {}
    for name in names:
        if re.fullmatch(r"par[0-9.]+", name):
            name = par_architecture(model_config.num_layers, float(name[3:]))
        if name in modes:
            model_changes, train_changes = modes[name]
            configs[name] = (dataclasses.replace(model_config, architecture=None, **model_changes),
                             dataclasses.replace(train_config, **train_changes))
        elif name and not set(name) - set(CANDIDATES):
            configs[name] = (dataclasses.replace(model_config, architecture=name), train_config)
        else:
            raise ValueError(f"--architectures: {name!r} is neither a search mode ({', '.join(modes)}) nor a fixed "
                             f"architecture, a string of A (attention), D (dense) and I (identity), or par<P> (--par_ratio=P).")
    return configs


def weight_steps_per_heldout_step(arch_holdout):
    """k: the training (weight) steps that a heldout mode's timed call takes before its one held-out step."""
    return max(1, round((1 - arch_holdout) / arch_holdout))


def evaluation_run(model, batches, batch_size, eval_mem_len, precision, jit_compile):
    """(a callable that runs one real eval step on the next of `batches`, waits for it and returns its NLL
    sum, the model it evaluates).

    That model is `model` itself at its own mem_len; at another eval_mem_len, a copy of it built with an
    eval_mem_len-position memory and given its weights, as evaluate.py --mem_len loads a trained model
    (relative attention has no weight that depends on the memory's length).
    """
    if eval_mem_len != model.config.mem_len:
        copy = checkpoints.build_model(dataclasses.replace(model.config, mem_len=eval_mem_len), precision)
        copy.set_weights(model.get_weights())
        model = copy
    eval_step = evaluate.evaluation_step(model, ("mix",), jit_compile)
    memories = [model.initial_memory(batch_size)]

    def evaluate_once():
        (nll,), _, memories[:] = eval_step(*next(batches), memories)
        return float(nll.numpy())

    evaluate_once.model = model  # evaluate.evaluation_step holds its model weakly; the run keeps it alive.
    return evaluate_once, model


def step_runs(model_config, train_config, data_dir, batch_size, seq_len, strategy, shares, eval_mem_len, batch_chunk):
    """(train, eval, weight steps per train call): callables that each run real steps on the next batches and
    wait for them. A train call is one training step, or for a SuperNet with arch_holdout k of them and one
    held-out step (weight_steps_per_heldout_step), so that its time over k is the cost of a weight step.

    shares: each adaptive softmax tail's share of tokens, which sizes its rows in an XLA step, as in train.py.
    eval_mem_len: the eval step's memory length (evaluation_run). batch_chunk: train.py's --batch_chunk. A
    SuperNet's search takes 1,000 batches an epoch.
    """
    trainer = train.Trainer(model_config, train_config, 1000, batch_size, seq_len, strategy, shares, batch_chunk)
    batches = iter(data_utils.make_dataset(data_dir, "train").repeat())
    evaluate_once, _ = evaluation_run(trainer.model, batches, batch_size, eval_mem_len, train_config.precision,
                                      devices.use_xla(train_config.jit_compile))
    heldout = trainer.search is not None and trainer.search.heldout_batches > 0
    weight_steps = weight_steps_per_heldout_step(train_config.arch_holdout) if heldout else 1

    def train_once():
        for _ in range(weight_steps):
            loss = trainer.train_step(*next(batches))
        if heldout:
            loss = trainer.heldout_step(*next(batches))
        loss.numpy()

    return train_once, evaluate_once, weight_steps


def step_memory_mib(run):
    """The memory, in MiB, that one run() takes at its peak above what was in use before it, on the GPU or,
    without one, the CPU, as TensorFlow's allocator counts it."""
    device = "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"
    tf.config.experimental.reset_memory_stats(device)
    in_use = tf.config.experimental.get_memory_info(device)["current"]
    run()
    return (tf.config.experimental.get_memory_info(device)["peak"] - in_use) / 2**20


def flops_per_step(model_config, seq_len, tokens, eval_mem_len, shares, weight_steps):
    """{"train": FLOPs of a weight step or None, "eval": FLOPs of an eval step}, from costs.flops_per_token.

    A SuperNet counts every candidate; a held-out step, one in weight_steps, twice the forward pass (the
    backward pass to the activations; no weight gradients). A single-path training step runs one sampled
    candidate per block, so its FLOPs depend on the sample: None.
    """
    train_flops = None
    if not (model_config.single_path and model_config.architecture is None):
        forward = flops_per_token(model_config, seq_len, tail_shares=shares)
        heldout = 2 * forward / weight_steps if weight_steps > 1 else 0.0
        train_flops = (flops_per_token(model_config, seq_len, training=True, tail_shares=shares) + heldout) * tokens
    eval_config = dataclasses.replace(model_config, mem_len=eval_mem_len)
    return {"train": train_flops, "eval": flops_per_token(eval_config, seq_len, tail_shares=shares) * tokens}


def figures(seconds, flops, peak, tokens):
    """ms/step, tokens/s, FLOPs per step and MFU of the train and eval steps from their median seconds and
    FLOPs per step (MFU None where the FLOPs are)."""
    result = {}
    for kind in ("train", "eval"):
        result.update({f"{kind}_ms_per_step": 1000 * seconds[kind], f"{kind}_tokens_per_second": tokens / seconds[kind],
                       f"{kind}_flops_per_step": flops[kind],
                       f"{kind}_mfu": None if flops[kind] is None else flops[kind] / seconds[kind] / peak})
    return result


def cost_tables(results, num_layers, eval_mem_len):
    """{precision: its candidates' cost table} from the uniform architectures of num_layers blocks among
    `results`, where all three were timed: for the train and the eval step, [A, D, I] in ms per step per
    block, (t(XX..X) - t(II..I)) / num_layers for X = A, D and 0 for I, a negative difference clamped at 0
    (and named in "clamped"), ready for train.py --cost_source=table --cost_table=A,D,I."""
    uniform = {kind: kind * num_layers for kind in CANDIDATES}
    tables = {}
    for precision in dict.fromkeys(r["precision"] for r in results):
        times = {r["architecture"]: r for r in results if r["precision"] == precision}
        if not all(name in times for name in uniform.values()):
            continue
        table = dict(architectures=list(uniform.values()), eval_mem_len=eval_mem_len, clamped=[])
        for kind in ("train", "eval"):
            identity = times[uniform["I"]][f"{kind}_ms_per_step"]
            costs = []
            for candidate in "AD":
                cost = (times[uniform[candidate]][f"{kind}_ms_per_step"] - identity) / num_layers
                if cost < 0:
                    table["clamped"].append(f"{kind} {candidate}: {cost:.4g} ms")
                costs.append(max(cost, 0.0))
            table[kind] = costs + [0.0]
        tables[precision] = table
    return tables


def search_ratios(results):
    """[{search mode, precision, its train step over each fixed architecture's}] within one run."""
    ratios = []
    for mode in (r for r in results if r["architecture"] in SEARCH_MODE_NAMES):
        fixed = {r["architecture"]: mode["train_ms_per_step"] / r["train_ms_per_step"] for r in results
                 if r["precision"] == mode["precision"] and r["architecture"] not in SEARCH_MODE_NAMES}
        if fixed:
            ratios.append(dict(mode=mode["architecture"], precision=mode["precision"], train_step_over=fixed))
    return ratios


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
    names = flag_values.architectures + ([f"par{flag_values.par_ratio:g}"] if flag_values.par_ratio is not None else [])
    try:
        model_config, train_config, run_options = configs_from_flags(flag_values, vocab_size)
        configs = run_configs(names, model_config, train_config)
    except ValueError as error:
        sys.exit(f"bench.py: error: {error}")
    eval_mem_len = model_config.mem_len if flag_values.eval_mem_len is None else flag_values.eval_mem_len
    devices.set_intra_op_threads(run_options.intra_op_threads)  # Before any TensorFlow op.
    if flag_values["precision"].present:
        precision, reason = devices.resolve_precision(train_config.precision, run_options.strategy)
        precisions, chosen_by = [precision], f"--precision={train_config.precision}" + (
            f" ({reason})" if train_config.precision == "auto" else "")
    else:
        precisions, chosen_by = flag_values.precisions, f"--precisions={','.join(flag_values.precisions)}"
    strategy = devices.make_strategy(run_options.strategy)
    try:
        devices.rows_per_replica(batch_size, strategy.num_replicas_in_sync, run_options.batch_chunk)
    except ValueError as error:
        sys.exit(f"bench.py: error: {error}")
    report = dict(
        provenance=provenance(precisions, chosen_by), cpu_count=os.cpu_count(),
        intra_op_threads=devices.intra_op_threads(),
        inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads() or "default",
        strategy=run_options.strategy, replicas=strategy.num_replicas_in_sync, batch_chunk=run_options.batch_chunk,
        jit_compile=train_config.jit_compile,
        xla_train=devices.use_xla(train_config.jit_compile), batch_size=batch_size, seq_len=seq_len,
        mem_len=model_config.mem_len, eval_mem_len=eval_mem_len, vocab_size=vocab_size, steps=flag_values.steps,
        parallel_matmuls=parallel_matmuls(), matmul_peak_flops={}, results=[],
    )
    with tempfile.TemporaryDirectory() as data_dir:
        stream = synthetic_dataset(data_dir, vocab_size, batch_size, seq_len,
                                   num_batches=flag_values.steps + flag_values.warmup_steps_bench + 2)
        report["tail_shares"] = tail_shares(np.bincount(stream, minlength=vocab_size) / len(stream), model_config.cutoffs)
        report["data_tokens_per_second"] = data_tokens_per_second(data_dir, batch_size * seq_len)
        runs, weight_steps = {}, {}
        for precision in precisions:
            runs[("matmul", precision)] = matmul_run(keras.DTypePolicy(devices.dtype_policy(precision)).compute_dtype,
                                                     report["parallel_matmuls"])
            for name, (config, name_train_config) in configs.items():
                name_train_config = dataclasses.replace(name_train_config, precision=precision)
                train_run, eval_run, weight_steps[name] = step_runs(config, name_train_config, data_dir, batch_size,
                                                                    seq_len, strategy, report["tail_shares"], eval_mem_len,
                                                                    run_options.batch_chunk)
                runs[(name, precision, "train")], runs[(name, precision, "eval")] = train_run, eval_run
        seconds = interleaved_median_seconds(runs, flag_values.steps, flag_values.warmup_steps_bench)
        memory = {key[:2]: step_memory_mib(run) for key, run in runs.items() if key[-1] == "train"}
    for precision in precisions:
        peak = report["matmul_peak_flops"][precision] = (report["parallel_matmuls"] * 2 * MATMUL_SIZE**3
                                                         / seconds[("matmul", precision)])
        for name, (config, name_train_config) in configs.items():
            step_seconds = {"train": seconds[(name, precision, "train")] / weight_steps[name],
                            "eval": seconds[(name, precision, "eval")]}
            flops = flops_per_step(config, seq_len, batch_size * seq_len, eval_mem_len, report["tail_shares"],
                                   weight_steps[name])
            search = dict(arch_holdout=name_train_config.arch_holdout, weight_steps_per_heldout_step=weight_steps[name]) \
                if weight_steps[name] > 1 else {}
            report["results"].append(dict(architecture=name, precision=precision, **search,
                                          **figures(step_seconds, flops, peak, batch_size * seq_len),
                                          train_step_memory_mib=memory[name, precision]))
    report["search_step_ratios"] = search_ratios(report["results"])
    report["cost_tables"] = cost_tables(report["results"], model_config.num_layers, eval_mem_len)
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
          f"(training with XLA: {report['xla_train']}), batch {report['batch_size']} x seq_len {report['seq_len']} "
          f"in {report['batch_chunk']} chunk(s), "
          f"memory {report['mem_len']} (eval {report['eval_mem_len']})")
    print(f"matmul peak GFLOP/s: {peaks}; input pipeline {report['data_tokens_per_second']:,.0f} tokens/s; "
          f"peak host memory {report['peak_host_memory_mib']:,.0f} MiB")
    print(f"{'architecture':>19} {'precision':>9} {'train ms':>9} {'train tok/s':>12} {'train MFU':>9} "
          f"{'eval ms':>8} {'eval tok/s':>11} {'eval MFU':>8} {'train/eval':>10} {'train MiB':>9}")

    def optional(value, width, decimals=2):  # MFU or memory, '-' where None.
        return f"{'-':>{width}}" if value is None else f"{value:{width}.{decimals}f}"

    for r in report["results"]:
        print(f"{r['architecture']:>19} {r['precision']:>9} {r['train_ms_per_step']:9.1f} "
              f"{r['train_tokens_per_second']:12,.0f} {optional(r['train_mfu'], 9)} {r['eval_ms_per_step']:8.1f} "
              f"{r['eval_tokens_per_second']:11,.0f} {optional(r['eval_mfu'], 8)} "
              f"{r['train_ms_per_step'] / r['eval_ms_per_step']:9.2f}x {optional(r['train_step_memory_mib'], 9, 0)}")
    heldout = {r["arch_holdout"]: r["weight_steps_per_heldout_step"] for r in report["results"] if "arch_holdout" in r}
    for fraction, steps in heldout.items():
        print(f"heldout modes: --arch_holdout={fraction:g}, timed as {steps} weight steps and 1 held-out step, "
              f"given per weight step")
    if any(r["train_mfu"] is None for r in report["results"]):
        print("train MFU '-': a single-path training step's FLOPs depend on the candidates it samples")
    float32 = {r["architecture"]: r for r in report["results"] if r["precision"] == "float32"}
    for r in report["results"]:
        if r["precision"] != "float32" and r["architecture"] in float32:
            print(f"{r['architecture']}: the {r['precision']} train step takes "
                  f"{r['train_ms_per_step'] / float32[r['architecture']]['train_ms_per_step']:.2f}x float32's time")
    for ratio in report["search_step_ratios"]:
        over = ", ".join(f"{value:.2f}x {name}'s" for name, value in ratio["train_step_over"].items())
        print(f"{ratio['mode']} ({ratio['precision']}): {over} train step")
    for precision, table in report["cost_tables"].items():
        print(f"{precision} candidates' costs, ms per block from {', '.join(table['architectures'])}:")
        print(f"  train step cost table: --cost_table={','.join(f'{cost:.4g}' for cost in table['train'])}")
        print(f"  inference cost table (eval memory {table['eval_mem_len']}): "
              f"--cost_table={','.join(f'{cost:.4g}' for cost in table['eval'])}")
        for clamped in table["clamped"]:
            print(f"  clamped at 0, measured below the identity's: {clamped}")
        for kind in ("train", "eval"):
            if not any(table[kind]):
                print(f"  the {kind} table is all 0, within the noise: train.py needs a positive cost; time more steps")


if __name__ == "__main__":
    FLAGS = train.define_flags()
    flags.DEFINE_integer("vocab_size", data_utils.DEFAULT_VOCAB_SIZE, "Vocabulary of the synthetic data.")
    flags.DEFINE_integer("batch_size", data_utils.DEFAULT_BATCH_SIZE, "Rows per batch.")
    flags.DEFINE_integer("seq_len", data_utils.DEFAULT_SEQ_LEN, "Tokens per segment.")
    flags.DEFINE_integer("steps", 60, "Timed calls per measurement (after warm-up), in 5 interleaved rounds: a call "
                         "is one step, or a heldout mode's k weight steps and one held-out step.")
    flags.DEFINE_integer("warmup_steps_bench", 5, "Untimed calls first (compilation happens here).")
    flags.DEFINE_list("architectures", ["supernet", "AADDDD", "AAAAAA"],
                      f"Search modes ({', '.join(SEARCH_MODE_NAMES)}; see the docstring) or fixed architecture strings.")
    flags.DEFINE_integer("eval_mem_len", None, "Memory length of the timed eval step (default: --mem_len).",
                         lower_bound=0)
    flags.DEFINE_list("precisions", ["float32", "bfloat16"], "Compute dtypes to compare; --precision=X sets just X.")
    flags.DEFINE_string("output", "bench.json", "Where the JSON report goes.")
    app.run(main)
