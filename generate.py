"""Samples text from a trained model, carrying segment memory from token to token.

    python generate.py logs/base/export --prompt="the meaning of life is" --length=100 --top_k=40

The prompt is read in one segment, then each new token is fed back alone with the memory of the
previous ones, as Transformer-XL evaluates: context reaches back mem_len positions per block.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import pathlib
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

import checkpoints
import data_utils
from config import METADATA_FILE, define_verbose_flag

FLAGS = flags.FLAGS
flags.DEFINE_string("prompt", "", "Text to continue (lowercased if the tokenizer lowercases).")
flags.DEFINE_integer("length", 100, "Tokens to sample.", lower_bound=1)
flags.DEFINE_float("temperature", 1.0, "Softmax temperature; lower is more conservative.", lower_bound=1e-6)
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens; 0 = all.", lower_bound=0)
flags.DEFINE_float("top_p", 1.0, "Sample among the smallest set of tokens with this much probability.")
flags.register_validator("top_p", lambda top_p: 0 < top_p <= 1, "must be in (0, 1]; --top_k=1 decodes greedily.")
flags.DEFINE_integer("mem_len", None, "Memory length (default: the training one).", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
define_verbose_flag()


def filter_log_probs(log_probs, top_k=0, top_p=1.0):
    """Sets to -inf every token outside the top-k and outside the top-p nucleus; [V] -> [V]."""
    order = np.argsort(-log_probs)
    keep = np.zeros(len(log_probs), bool)
    probs = np.exp(log_probs[order] - log_probs[order[0]])
    cumulative = np.cumsum(probs / probs.sum())
    nucleus = int(np.searchsorted(cumulative, top_p)) + 1  # The token that crosses top_p is kept.
    keep[order[: min(nucleus, top_k or len(order))]] = True
    return np.where(keep, log_probs, -np.inf)


def sample(model, prompt_ids, length, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    """Returns `length` sampled ids following `prompt_ids` (at least one id)."""
    rng = np.random.default_rng(seed)
    memory = model.initial_memory(1)
    log_probs, memory = model.log_probs(tf.constant([prompt_ids], tf.int32), memory)
    sampled = []
    for _ in range(length):
        scores = filter_log_probs(log_probs.numpy()[0, -1] / temperature, top_k, top_p)
        probs = np.exp(scores - scores.max())
        sampled.append(int(rng.choice(len(probs), p=probs / probs.sum())))
        log_probs, memory = model.log_probs(tf.constant([[sampled[-1]]], tf.int32), memory)
    return sampled


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python generate.py CHECKPOINT --prompt=TEXT [--length=N]")
    quiet_tensorflow.hide_info_logs(FLAGS.verbose)
    with checkpoints.load_errors_in_one_line("generate.py", argv[1]):
        model, record = checkpoints.load_model(argv[1], mem_len=FLAGS.mem_len)
        if (pathlib.Path(argv[1]) / METADATA_FILE).is_file():  # An export carries its tokenizer.
            tokenizer = data_utils.load_tokenizer(argv[1])
        else:  # The training data's, unless that has been rebuilt with other settings since.
            data_utils.check_data_matches_model(record["data_dir"], record)
            tokenizer = data_utils.load_tokenizer(record["data_dir"])
    # An empty prompt starts a new line, as after any line of the corpus.
    try:
        prompt = tokenizer.encode(tf.constant([FLAGS.prompt])).flat_values.numpy().tolist()
    except data_utils.DataError as error:  # A character outside a character dataset's alphabet.
        sys.exit(f"generate.py: error: --prompt: {error}")
    prompt = prompt[:-1] if FLAGS.prompt else prompt  # Continue the prompt's line rather than ending it.
    ids = sample(model, prompt, FLAGS.length, FLAGS.temperature, FLAGS.top_k, FLAGS.top_p, FLAGS.seed)
    print(tokenizer.decode(tf.constant(prompt + ids)).numpy().decode(errors="replace"))  # Sampled bytes need not be UTF-8.


if __name__ == "__main__":
    app.run(main)
