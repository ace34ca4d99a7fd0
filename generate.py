"""Samples text from a trained model, several samples at once, with the compiled sampler (sampler.py).

    python generate.py logs/base/export --prompt="the meaning of life is" --length=100 --top_k=40
    python generate.py logs/base --prompt="the history of" --num_samples=4 --stop_at_eol --seed=1
    python generate.py --benchmark=docs/runs/generation_bench.json     # tokens per second, see benchmark()

The prompt is read in one segment, then each new token is fed back alone with the memory of the
previous ones, as Transformer-XL evaluates: context reaches back mem_len positions per block.
--temperature=0 decodes greedily; the same --seed gives the same samples.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import functools
import json
import os
import pathlib
import sys

import tensorflow as tf
from absl import app, flags

import checkpoints
import data_utils
import devices
import export
import sampler
from config import CHOICES, METADATA_FILE, ModelConfig, RunOptions, define_dataclass_flags, define_verbose_flag


SAMPLE_SEPARATOR = "-" * 15  # Printed between samples.


def flag_error(flag_values):
    """The first bad sampling flag, as "--flag=value: what it must be", or None."""
    bounds = [("length", flag_values.length >= 0, "must be 0 or more"),
              ("temperature", flag_values.temperature >= 0, "must be 0 (greedy) or more"),
              ("top_k", flag_values.top_k >= 0, "must be 0 (all tokens) or more"),
              ("top_p", 0 < flag_values.top_p <= 1, "must be in (0, 1]; --top_k=1 decodes greedily"),
              ("num_samples", flag_values.num_samples >= 1, "must be at least 1"),
              ("mem_len", flag_values.mem_len is None or flag_values.mem_len >= 0, "must be 0 or more"),
              ("intra_op_threads", flag_values.intra_op_threads >= 0, "must be 0 (TensorFlow's choice) or more")]
    return next((f"--{name}={flag_values[name].value}: {rule}." for name, valid, rule in bounds if not valid), None)


def load_text_model(path, mem_len=None, eval_mode="mix"):
    """An export.TextModel of the model at `path` (an export, a run or a checkpoint), with the tokenizer of
    the export, or else of the training data, refused if it has been rebuilt with other settings since."""
    model, record = checkpoints.load_model(path, mem_len=mem_len)
    if (pathlib.Path(path) / METADATA_FILE).is_file():  # An export carries its tokenizer.
        tokenizer = data_utils.load_tokenizer(path)
    else:
        data_utils.check_data_matches_model(record["data_dir"], record)
        tokenizer = data_utils.load_tokenizer(record["data_dir"])
    return export.TextModel(model, tokenizer, record["data"]["seq_len"], eval_mode)


def main(argv):
    if error := flag_error(FLAGS):
        sys.exit(f"generate.py: error: {error}")
    devices.set_intra_op_threads(FLAGS.intra_op_threads)  # Before any TensorFlow op.
    if FLAGS.benchmark:
        if len(argv) != 1:
            raise app.UsageError("--benchmark times a model of the default size; give no CHECKPOINT.")
        return benchmark(FLAGS.benchmark)
    if len(argv) != 2:
        raise app.UsageError("Usage: python generate.py CHECKPOINT --prompt=TEXT [--length=N] [--num_samples=N]")
    quiet_tensorflow.hide_info_logs(FLAGS.verbose)
    with checkpoints.load_errors_in_one_line("generate.py", argv[1]):
        text_model = load_text_model(argv[1], FLAGS.mem_len, FLAGS.eval_mode)
    try:  # Eagerly, so that a byte outside a character dataset's alphabet is named.
        export.prompt_ids(text_model.tokenizer, tf.constant([FLAGS.prompt]))
    except data_utils.DataError as error:
        sys.exit(f"generate.py: error: --prompt: {error}")
    generate = tf.function(text_model.generate, input_signature=export.GENERATE_SIGNATURE)
    samples = generate([FLAGS.prompt] * FLAGS.num_samples, FLAGS.length, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p,
                       FLAGS.seed, FLAGS.stop_at_eol)
    # Sampled bytes of a character dataset need not be UTF-8.
    print(f"\n{SAMPLE_SEPARATOR}\n".join(sample.decode(errors="replace") for sample in samples.numpy()))


# ---------------------------------------------------------------------------------------------
# The benchmark.


def eager_sample_ids(model, prompt, length, temperature, top_k, top_p, seed):
    """The loop generate.py ran before the compiled sampler, the benchmark's baseline: the prompt ([P] ids)
    read in one segment, then one eager model call per token from Python (choosing each token with
    sampler.next_ids and its seeds, where the old loop filtered in numpy). Returns the `length` new ids."""
    log_probs, memory = model.log_probs(tf.constant([prompt], tf.int32), model.initial_memory(1))
    ids = []
    for position in range(len(prompt) - 1, len(prompt) - 1 + length):  # Of the id fed last.
        ids.append(int(sampler.next_ids(log_probs[:, -1], temperature, top_k, top_p, [seed, position])[0]))
        log_probs, memory = model.log_probs(tf.constant([[ids[-1]]], tf.int32), memory)
    return ids


def benchmark(output, prompt_length=16, length=100, repeats=3):
    """Times `length` new tokens after a prompt of `prompt_length` ids, at temperature 1 with no filtering,
    on an untrained model of the default size (config.ModelConfig: a SuperNet, mixing its candidates):
    the old eager loop for one sample, and the compiled sampler for 1 and for 8 samples, each the
    median of `repeats` calls after one untimed call, interleaved (bench.interleaved_median_seconds).
    Prints tokens per second, and writes them with the goals (compiled >= 5x eager for one sample, 8
    samples in <= 2x the time of one) and the provenance to `output` as JSON."""
    import bench  # Here: it imports train.py, which sampling does not need.

    model_config = ModelConfig(vocab_size=data_utils.DEFAULT_VOCAB_SIZE)
    model = checkpoints.build_model(model_config)
    prompt = bench.zipf_stream(prompt_length, model_config.vocab_size).tolist()
    settings = dict(temperature=1.0, top_k=0, top_p=1.0, seed=0)
    compiled = tf.function(functools.partial(sampler.sample_ids, model, max_new_tokens=length, **settings))

    def compiled_run(num_samples):
        prompts = tf.ragged.constant([prompt] * num_samples, tf.int32)
        return lambda: compiled(prompts).flat_values.numpy()

    runs = {"eager_1_sample": (1, lambda: eager_sample_ids(model, prompt, length, **settings)),
            "compiled_1_sample": (1, compiled_run(1)), "compiled_8_samples": (8, compiled_run(8))}
    seconds = bench.interleaved_median_seconds({name: run for name, (_, run) in runs.items()}, repeats, warmup=1,
                                               rounds=repeats)
    results = {name: dict(samples=samples, seconds=seconds[name], tokens_per_second=samples * length / seconds[name])
               for name, (samples, _) in runs.items()}
    speedup = seconds["eager_1_sample"] / seconds["compiled_1_sample"]
    batch_cost = seconds["compiled_8_samples"] / seconds["compiled_1_sample"]
    report = dict(provenance=bench.provenance(["float32"], "generate.py --benchmark times float32"),
                  cpu_count=os.cpu_count(), cpu_affinity=sorted(os.sched_getaffinity(0)),
                  intra_op_threads=devices.intra_op_threads(),
                  load_average_1min=os.getloadavg()[0], model=dict(vars(model_config), supernet_eval_mode="mix"),
                  prompt_length=prompt_length, new_tokens=length, sampling=settings, repeats=repeats, results=results,
                  compiled_over_eager_1_sample=speedup, time_of_8_over_1_samples=batch_cost,
                  goals=dict(compiled_at_least_5x_eager=speedup >= 5, samples_8_within_2x_of_1=batch_cost <= 2))
    for name, result in results.items():
        print(f"{name:>18}: {result['tokens_per_second']:8.1f} tokens/s ({result['seconds']:.3f} s)")
    print(f"compiled / eager, 1 sample: {speedup:.1f}x; 8 samples take {batch_cost:.2f}x the time of 1")
    pathlib.Path(output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"Wrote {output}")


def define_flags():
    flags.DEFINE_string("prompt", "", "Text to continue (lowercased if the tokenizer lowercases).")
    flags.DEFINE_integer("length", 100, "Tokens to sample after the prompt.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature; lower is more conservative, 0 decodes greedily.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 = all.")
    flags.DEFINE_float("top_p", 1.0, "Sample among the smallest set of tokens with this much probability, in (0, 1].")
    flags.DEFINE_integer("num_samples", 1, "Samples of the prompt, drawn at once.")
    flags.DEFINE_boolean("stop_at_eol", False, "End each sample at its first end of line.")
    flags.DEFINE_integer("mem_len", None, "Memory length (default: the training one).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_enum("eval_mode", "mix", CHOICES["eval_mode"],
                      "SuperNet only: mix candidates with pi, or take each argmax.")
    flags.DEFINE_string("benchmark", None, "Instead of sampling: time generation at the default model size and write "
                        "the JSON record here.")
    define_dataclass_flags(RunOptions, flags.FLAGS, only=("intra_op_threads",))
    return define_verbose_flag()


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
