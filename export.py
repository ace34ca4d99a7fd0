"""A trained model that takes and gives text: the TensorFlow SavedModel in a run's export/ folder, beside
the config, weights and tokenizer that checkpoints.load_model reads.

    python export.py logs/base --eval_mode=argmax     # rewrites logs/base/export (a finished run writes it)

It loads in a Python that has tensorflow and tensorflow-text, without this repository:

    import tensorflow as tf, tensorflow_text           # tensorflow_text registers the SentencePiece ops
    model = tf.saved_model.load("logs/base/export")
    model.generate(["the history of"], max_new_tokens=50, temperature=0.8, top_k=40, top_p=1.0, seed=0,
                   stop_at_eol=False)                  # [B] strings: each prompt and its continuation
    model.score(["some text"])                         # {"nll": [B] summed NLL, "tokens": [B] scored}

The tokenizer runs in the graph (SentencePiece's op, or a character dataset's byte table). A text's
lines each end with the end-of-line id, as the dataset's lines do; score reads the ids in segments
of the training seq_len with the memory carried through, as evaluate.py reads a split, so that
exp(nll / tokens) is the text's perplexity per token. A SuperNet runs in the eval_mode it was
exported in: "mix" (candidates mixed by pi, as a finished run exports) or "argmax".
"""
import quiet_tensorflow  # (first: keeps TensorFlow's start-up lines off the console)

import pathlib
import sys

import keras
import tensorflow as tf
from absl import app, flags

import data_utils
import reliability
import sampler
from config import CHOICES, define_verbose_flag
from data_utils import PAD_ID
from runs import EXPORT_WEIGHTS, Run


def encode_lines(tokenizer, texts):
    """[B] strings -> ragged [B, (ids)]: each text's lines, cut at line breaks, each followed by the end-of-line id."""
    lines = tf.strings.split(texts, "\n")  # [B, (lines)]
    return lines.with_flat_values(tokenizer.encode(lines.flat_values)).merge_dims(1, 2)


def prompt_ids(tokenizer, prompts):
    """[B] strings -> ragged [B, (ids)]: without the last line's end, so that a sample continues the
    prompt's last line; an empty prompt keeps it, and starts a new line as after any line of the corpus."""
    ids = encode_lines(tokenizer, prompts)
    return tf.RaggedTensor.from_tensor(ids.to_tensor(PAD_ID), lengths=tf.maximum(ids.row_lengths() - 1, 1))


def text_ids(tokenizer, texts):
    """[B] strings -> ragged [B, (ids)], as a dataset's files are read: a final line break ends the last
    line rather than opening an empty one."""
    return encode_lines(tokenizer, tf.strings.regex_replace(texts, "\n$", ""))


def score_ids(model, ids, seq_len, eval_mode="mix"):
    """The NLL of each row's ids after its first, read as evaluate.py reads a split: ids ragged [B, (N)],
    N >= 1 -> (summed NLL [B] float64, ids scored [B] int32).

    Segments of seq_len ids each see the memory of the ones before, from empty; the rows' ends and
    the last segment are padded, and padding scores nothing.
    """
    ids = ids.to_tensor(PAD_ID)  # [B, N]
    batch_size, num_targets = tf.shape(ids)[0], tf.shape(ids)[1] - 1
    num_segments = (num_targets + seq_len - 1) // seq_len

    def segments(ids):
        """[B, N - 1] -> [B, S, seq_len], padded."""
        padded = tf.pad(ids, [[0, 0], [0, num_segments * seq_len - num_targets]], constant_values=PAD_ID)
        return tf.reshape(padded, [batch_size, num_segments, seq_len])

    inputs, targets = segments(ids[:, :-1]), segments(ids[:, 1:])

    def score_segment(segment, memory, nll):
        segment_nll, memory = model.token_nll(inputs[:, segment], targets[:, segment], memory, eval_mode=eval_mode)
        return segment + 1, memory, nll + tf.reduce_sum(tf.cast(segment_nll, tf.float64), axis=1)

    _, _, nll = tf.while_loop(lambda segment, *_: segment < num_segments, score_segment,
                              (0, model.initial_memory(batch_size), tf.zeros([batch_size], tf.float64)))
    return nll, tf.reduce_sum(tf.cast(tf.not_equal(targets, PAD_ID), tf.int32), axis=[1, 2])


# The arguments of TextModel's functions: the export's signatures.
GENERATE_SIGNATURE = [
    tf.TensorSpec([None], tf.string, name="prompt"), tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"), tf.TensorSpec([], tf.int64, name="seed"),
    tf.TensorSpec([], tf.bool, name="stop_at_eol")]
SCORE_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]


class TextModel:
    """A trained model and its tokenizer, on text: what the export saves, and what generate.py samples from.
    Its functions run in a tf.function of GENERATE_SIGNATURE or SCORE_SIGNATURE.

    seq_len: the segment length score reads with (the training one); eval_mode: how a SuperNet runs.
    """

    def __init__(self, model, tokenizer, seq_len, eval_mode="mix"):
        self.model, self.tokenizer, self.seq_len, self.eval_mode = model, tokenizer, seq_len, eval_mode

    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eol):
        """[B] strings -> [B] strings, each prompt as its ids decode (lowercased if the tokenizer lowercases)
        followed by its sample (sampler.sample_ids)."""
        ids = sampler.sample_ids(self.model, prompt_ids(self.tokenizer, prompt), max_new_tokens, temperature, top_k,
                                 top_p, seed, stop_at_eol, self.eval_mode)
        return self.tokenizer.decode(ids)

    def score(self, text):
        """[B] strings -> {"nll": each text's summed NLL [B] float64, "tokens": its ids scored [B] int32}."""
        nll, tokens = score_ids(self.model, text_ids(self.tokenizer, text), self.seq_len, self.eval_mode)
        return {"nll": nll, "tokens": tokens}


def write_saved_model(model, tokenizer, seq_len, directory, eval_mode="mix"):
    """Saves TextModel(model, tokenizer) into `directory` as a SavedModel whose functions, and serving
    signatures, are generate and score (Keras' ExportArchive: it saves the model's variables, not its
    Python classes)."""
    text_model = TextModel(model, tokenizer, seq_len, eval_mode)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(tokenizer)  # Its SentencePiece model is a resource that no variable holds.
    archive.add_endpoint("generate", text_model.generate, GENERATE_SIGNATURE)
    archive.add_endpoint("score", text_model.score, SCORE_SIGNATURE)
    archive.write_out(str(directory), verbose=False)


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("Usage: python export.py RUN_DIR_OR_CHECKPOINT [--eval_mode=mix|argmax]")
    quiet_tensorflow.hide_info_logs(FLAGS.verbose)
    import checkpoints  # Here, not above: checkpoints.export writes the SavedModel with this module.

    path = pathlib.Path(argv[1])
    if (path / EXPORT_WEIGHTS).is_file():
        sys.exit(f"export.py: error: {path} is an export; give the run directory or a checkpoint to export from.")
    with checkpoints.load_errors_in_one_line("export.py", path):
        model, record = checkpoints.load_model(path)
        data_utils.check_data_matches_model(record["data_dir"], record)
        data_utils.load_tokenizer(record["data_dir"])  # Named here if damaged, not in the export's staging folder.
    run = Run.holding(path)
    try:
        checkpoints.export(model, run, record["data_dir"], FLAGS.eval_mode)
    except reliability.RunError as error:  # A full disk.
        sys.exit(f"export.py: error: {error}")
    print(f"Wrote {run.export_dir} (eval_mode {FLAGS.eval_mode})")


def define_flags():
    flags.DEFINE_enum("eval_mode", "mix", CHOICES["eval_mode"],
                      "SuperNet only: mix candidates with pi, or take each argmax.")
    return define_verbose_flag()


if __name__ == "__main__":
    FLAGS = define_flags()
    app.run(main)
