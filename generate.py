"""Samples text from a trained model, several samples at once, with the compiled sampler (sampler.py).

    python generate.py logs/base/export --prompt="the meaning of life is" --length=100 --top_k=40
    python generate.py logs/base --prompt="the history of" --num_samples=4 --stop_at_eol --seed=1

The prompt is read in one segment, then each new token is fed back alone with the memory of the
previous ones, as Transformer-XL evaluates: context reaches back mem_len positions per block.
--temperature=0 decodes greedily; the same --seed gives the same samples.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import pathlib
import sys

import tensorflow as tf
from absl import app, flags

import checkpoints
import data_utils
import export
from config import CHOICES, METADATA_FILE, define_verbose_flag

FLAGS = flags.FLAGS
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
define_verbose_flag()

SAMPLE_SEPARATOR = "-" * 15  # Printed between samples.


def flag_error(flag_values):
    """The first bad sampling flag, as "--flag=value: what it must be", or None."""
    bounds = [("length", flag_values.length >= 0, "must be 0 or more"),
              ("temperature", flag_values.temperature >= 0, "must be 0 (greedy) or more"),
              ("top_k", flag_values.top_k >= 0, "must be 0 (all tokens) or more"),
              ("top_p", 0 < flag_values.top_p <= 1, "must be in (0, 1]; --top_k=1 decodes greedily"),
              ("num_samples", flag_values.num_samples >= 1, "must be at least 1"),
              ("mem_len", flag_values.mem_len is None or flag_values.mem_len >= 0, "must be 0 or more")]
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
    if len(argv) != 2:
        raise app.UsageError("Usage: python generate.py CHECKPOINT --prompt=TEXT [--length=N] [--num_samples=N]")
    if error := flag_error(FLAGS):
        sys.exit(f"generate.py: error: {error}")
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


if __name__ == "__main__":
    app.run(main)
