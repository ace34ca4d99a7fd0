"""Scores a model on a whole split: token-level perplexity, and word perplexity or bits per character.

    python evaluate.py logs/base --split=test --mem_len=64
    python evaluate.py logs/base --batch_size=10 --seq_len=64 --mem_len=640 --clamp_len=400

CHECKPOINT is a run directory (its latest checkpoint), a checkpoint prefix inside one
(logs/base/checkpoints/ckpt-2699) or an export directory (logs/base/export). --mem_len may be
longer than in training: relative positional attention has no learned positions. --batch_size and
--seq_len need no rebuild: the split's token stream is read back from its TFRecords and context-batched
anew, B contiguous streams in segments of L tokens, so that every token but the first of each stream
is scored once, whatever the setting. Each setting defaults to the training run's.

Perplexity is exp(total NLL / total scored tokens) over a whole split, never a mean of per-batch
perplexities. The same total NLL gives the units comparable with published results: on a word
corpus (WikiText), word perplexity exp(NLL / the split's words); on a character corpus (enwik8,
text8), bits per character NLL / (ln 2 x the split's characters). The memory is carried through
the split from empty, as in training.
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import itertools
import json
import math
import sys
import weakref

import tensorflow as tf
from absl import app, flags

import checkpoints
import data_utils
from config import CHOICES, define_verbose_flag
from devices import use_xla


_evaluation_steps = weakref.WeakKeyDictionary()  # model -> {(eval_modes, jit_compile): step}; dies with the model.


def evaluation_step(model, eval_modes, jit_compile):
    """A compiled step scoring one batch in each of eval_modes, each mode with its own memory:
    (memories) -> ([NLL summed over scored tokens, per mode], their count, [new memory, per mode]).

    The modes' graphs are independent, so the executor runs them side by side: a SuperNet's two
    validations in one pass take about 0.7x the time of two passes on 2 CPU cores. Kept per model,
    modes and jit_compile, so each compiles once per run, and freed with the model: the step
    reaches the model through a weak proxy, so the cache does not keep it alive.
    """
    steps = _evaluation_steps.setdefault(model, {})
    key = (tuple(eval_modes), jit_compile)
    if key not in steps:
        steps[key] = _compile_evaluation_step(weakref.proxy(model), key[0], jit_compile)
    return steps[key]


def _compile_evaluation_step(model, eval_modes, jit_compile):
    def step(inputs, targets, memories):
        nll_sums, new_memories = [], []
        for eval_mode, memory in zip(eval_modes, memories):
            nll, new_memory = model.token_nll(inputs, targets, memory, training=False, eval_mode=eval_mode,
                                              gather_rows=not jit_compile)
            nll_sums.append(tf.reduce_sum(tf.cast(nll, tf.float64)))
            new_memories.append(new_memory)
        scored = tf.reduce_sum(tf.cast(tf.not_equal(targets, data_utils.PAD_ID), tf.float64))
        return nll_sums, scored, new_memories

    return tf.function(step, jit_compile=jit_compile)


def evaluate_modes(model, dataset, counts, batch_size, jit_compile="auto", max_batches=0, eval_modes=("mix",),
                   stop_check=None):
    """{eval_mode: perplexities} over a split, all modes in one pass over it, each with its memory
    carried through the split from empty.

    dataset: the split's batches (a tf.data.Dataset, or any iterable of them); counts: the split's metadata
    (its "words" or "characters"). eval_modes: a SuperNet "mix"es its candidates with pi, or runs each
    block's "argmax" candidate. stop_check: called before each batch, it may raise to break off the pass
    (reliability.StopSignals.check), so that a long evaluation heeds a stop signal within a batch.
    """
    step = evaluation_step(model, eval_modes, use_xla(jit_compile))
    memories = [model.initial_memory(batch_size) for _ in eval_modes]
    total_nll = [tf.constant(0.0, tf.float64) for _ in eval_modes]
    total_tokens = tf.constant(0.0, tf.float64)
    for inputs, targets in itertools.islice(dataset, max_batches or None):
        if stop_check:
            stop_check()
        nll_sums, count, memories = step(inputs, targets, memories)
        total_nll = [total + nll for total, nll in zip(total_nll, nll_sums)]
        total_tokens += count
    return {mode: perplexities(float(nll), float(total_tokens), counts, max_batches)
            for mode, nll in zip(eval_modes, total_nll)}


def perplexities(total_nll, total_tokens, counts, max_batches):
    """Loss and perplexity per token; word perplexity if `counts` has the split's "words", bits per
    character if its "characters", both NaN when only max_batches of the split were scored."""
    scores = dict(loss=total_nll / total_tokens, perplexity=math.exp(total_nll / total_tokens))
    if "words" in counts:
        scores["word_perplexity"] = math.exp(total_nll / counts["words"]) if not max_batches else float("nan")
    if "characters" in counts:
        scores["bits_per_character"] = (total_nll / (math.log(2) * counts["characters"]) if not max_batches
                                        else float("nan"))
    return dict(scores, tokens=total_tokens)


def evaluate(model, dataset, counts, batch_size, jit_compile="auto", max_batches=0, eval_mode="mix"):
    """Perplexities over a split in one eval_mode (see evaluate_modes)."""
    return evaluate_modes(model, dataset, counts, batch_size, jit_compile, max_batches, (eval_mode,))[eval_mode]


def evaluate_both_ways(model, dataset, counts, batch_size, jit_compile, max_batches, stop_check=None):
    """A SuperNet is scored mixing with pi and with its argmax architecture, in one pass; their gap
    shows how settled it is. Keys of the argmax scores start with "argmax_"."""
    modes = ("mix", "argmax") if model.arch_variables else ("mix",)
    results = evaluate_modes(model, dataset, counts, batch_size, jit_compile, max_batches, modes, stop_check)
    prefixes = {"mix": "", "argmax": "argmax_"}
    return {prefixes[mode] + key: value for mode, result in results.items() for key, value in result.items()}


def define_flags():
    flags.DEFINE_enum("split", "valid", ["valid", "test"], "Split to score.")
    flags.DEFINE_integer("mem_len", None, "Memory length at evaluation (default: the training one).", lower_bound=0)
    flags.DEFINE_integer("clamp_len", None, "Distances beyond it share its encoding; -1: none (default: the training "
                         "one).", lower_bound=-1)
    flags.DEFINE_integer("seq_len", None, "Segment length at evaluation (default: the training one).", lower_bound=1)
    flags.DEFINE_integer("batch_size", None, "Contiguous streams per batch at evaluation (default: the training one).",
                         lower_bound=1)
    flags.DEFINE_string("data_dir", None, "Dataset directory (default: the one the model was trained on).")
    flags.DEFINE_enum("eval_mode", "mix", CHOICES["eval_mode"], "SuperNet only: mix candidates with pi, or take each argmax.")
    flags.DEFINE_enum("jit_compile", "auto", CHOICES["jit_compile"], "Compile the evaluation step with XLA "
                      "(auto: on a GPU or TPU).")
    return define_verbose_flag()


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python evaluate.py CHECKPOINT [--split=valid|test] [--mem_len=M] [--seq_len=L] "
                             "[--batch_size=B] [--clamp_len=C]")
    quiet_tensorflow.hide_info_logs(FLAGS.verbose)
    with checkpoints.load_errors_in_one_line("evaluate.py", argv[1]):
        model, record = checkpoints.load_model(argv[1], mem_len=FLAGS.mem_len, clamp_len=FLAGS.clamp_len)
        data_dir = FLAGS.data_dir or record["data_dir"]
        data_utils.check_data_matches_model(data_dir, record)
    batch_size = FLAGS.batch_size or record["data"]["batch_size"]
    seq_len = FLAGS.seq_len or record["data"]["seq_len"]
    try:  # A missing, damaged or truncated TFRecord file is named, as in training; so is a batch the split cannot fill.
        stream = data_utils.read_split_stream(data_dir, FLAGS.split)
        dataset = data_utils.context_batched_dataset(stream, batch_size, seq_len)
    except (data_utils.DataError, data_utils.DamagedRecordError) as error:
        sys.exit(f"evaluate.py: error: {error}")
    metadata = data_utils.load_metadata(data_dir)
    results = evaluate(model, dataset, metadata["splits"][FLAGS.split], batch_size, FLAGS.jit_compile,
                       eval_mode=FLAGS.eval_mode)
    print(json.dumps(dict(split=FLAGS.split, batch_size=batch_size, seq_len=seq_len, mem_len=model.config.mem_len,
                          clamp_len=model.config.clamp_len, eval_mode=FLAGS.eval_mode, **results)))


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
